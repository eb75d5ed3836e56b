//! The product's own `spin.toml` and components on the test host.

use archiver_tests::App;

/// The archiver with its required variables, its timer calling `app_origin` as set after.
fn builder() -> archiver_tests::AppBuilder {
    App::builder("spin.toml")
        .variable("admin_token", "test-admin-token")
        .variable("timer_token", "test-timer-token")
        .variable("staging_key", "00".repeat(32))
        .variable("jmap_password", "test-jmap-password")
}

fn archiver() -> App {
    builder()
        .listening("app_origin")
        .unwrap()
        .build()
        .expect("the archiver app loads")
}

async fn admin_get(app: &App, path: &str) -> archiver_tests::TestResponse {
    let request = http::Request::get(path)
        .header("authorization", "Bearer test-admin-token")
        .body(bytes::Bytes::new())
        .unwrap();
    app.send(request).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_answers_under_api_and_the_console_everywhere_else() {
    let app = archiver();
    let health = admin_get(&app, "/api/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json().unwrap()["status"], "ok");
    assert_eq!(app.get("/api/health").await.unwrap().status, 401);
    let unknown = admin_get(&app, "/api/no-such-thing").await;
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.json().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("/api/no-such-thing")
    );
    // Outside /api/ the console's files, and nothing else: a path it has no file for is 404.
    let console = app.get("/").await.unwrap();
    assert_eq!(console.status, 200);
    assert!(
        console
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        console
            .header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(console.text().contains("/console.js"));
    assert_eq!(app.get("/console.js").await.unwrap().status, 200);
    assert_eq!(app.get("/no-such-page").await.unwrap().status, 404);
    assert_eq!(app.get("/apix").await.unwrap().status, 404);
    let post = http::Request::post("/").body(bytes::Bytes::new()).unwrap();
    assert_eq!(app.send(post).await.unwrap().status, 405);
    assert_eq!(app.route("/api").as_deref(), Some("archive-setup"));
    assert_eq!(
        app.route("/import").as_deref(),
        Some("archive-setup"),
        "the import step is private: the console's catch-all answers there"
    );
    assert_eq!(app.get("/import").await.unwrap().status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daily_timer_reaches_the_app_through_its_listener_and_records_the_event() {
    let app = archiver();
    assert_eq!(
        app.fire_cron("archive-timer", 1_764_122_400).await.unwrap(),
        Ok(())
    );
    app.settle().await;
    assert_eq!(
        app.kv_get("default", "fetch/last-timer-event")
            .unwrap()
            .as_deref(),
        Some(&b"1764122400"[..])
    );
    assert_eq!(app.kv_get("default", "timer/last-failure").unwrap(), None);
    assert!(
        app.fire_cron("archive-setup", 1).await.is_err(),
        "setup has no timer"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_timer_route_takes_the_timers_token_only() {
    let app = archiver();
    let event = |token: &str| {
        http::Request::post("/api/timer")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(bytes::Bytes::from_static(b"{\"timestamp\": 1764122400}"))
            .unwrap()
    };
    for wrong in ["test-admin-token", "", "test-timer-tokenx"] {
        let refused = app.send(event(wrong)).await.unwrap();
        assert_eq!(refused.status, 401, "{wrong}");
    }
    assert_eq!(
        app.kv_get("default", "fetch/last-timer-event").unwrap(),
        None
    );
    let accepted = app.send(event("test-timer-token")).await.unwrap();
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    assert_eq!(accepted.json().unwrap()["started"], serde_json::json!([]));
    let bad = http::Request::post("/api/timer")
        .header("authorization", "Bearer test-timer-token")
        .header("content-type", "application/json")
        .body(bytes::Bytes::from_static(b"{\"when\": 1}"))
        .unwrap();
    assert_eq!(app.send(bad).await.unwrap().status, 400);
    app.settle().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timer_that_cannot_reach_the_app_retries_then_says_why_and_the_next_event_clears_it() {
    // A listener that is not up at the event's start is reached by a later try of the event:
    // the port refuses connections for the first second and a half.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = builder()
        .variable("app_origin", format!("http://127.0.0.1:{port}"))
        .variable("timer_retry_seconds", "8")
        .build()
        .unwrap();
    let late = async {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        app.serve(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap())
            .unwrap();
    };
    // Without a retry the event would fail at once: the first try meets a refused connection.
    let (fired, ()) = tokio::join!(app.fire_cron("archive-timer", 1_764_122_400), late);
    assert_eq!(fired.unwrap(), Ok(()), "{}", app.logs());
    app.settle().await;
    assert_eq!(
        app.kv_get("default", "fetch/last-timer-event")
            .unwrap()
            .as_deref(),
        Some(&b"1764122400"[..])
    );

    // A wrong app_origin: tried within the budget, then logged and recorded with its reason.
    let unreachable = builder()
        .kv_file(app.kv_path())
        .variable("app_origin", "http://127.0.0.1:9")
        .variable("timer_retry_seconds", "1")
        .build()
        .unwrap();
    let fired = unreachable
        .fire_cron("archive-timer", 1_764_208_800)
        .await
        .unwrap();
    let reason = fired.unwrap_err();
    assert!(
        reason.contains("the timer could not start runs")
            && reason.contains("http://127.0.0.1:9")
            && reason.contains("could not be reached"),
        "{reason}"
    );
    assert!(!reason.contains("test-timer-token"), "{reason}");
    let recorded = app
        .kv_get("default", "timer/last-failure")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&recorded).contains("could not be reached"));

    // The next event that gets through clears the record.
    assert_eq!(
        app.fire_cron("archive-timer", 1_764_295_200).await.unwrap(),
        Ok(())
    );
    app.settle().await;
    assert_eq!(app.kv_get("default", "timer/last-failure").unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timer_whose_token_the_app_refuses_says_so_without_trying_again() {
    let app = builder().build().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let served_at = format!("http://{}", listener.local_addr().unwrap());
    app.serve(listener).unwrap();
    // Another deployment's timer, with its own token, pointed at this app.
    let stranger = builder()
        .variable("timer_token", "another-timer-token")
        .variable("app_origin", served_at)
        .variable("timer_retry_seconds", "60")
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let reason = stranger
        .fire_cron("archive-timer", 1_764_122_400)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        reason.contains("401") && reason.contains("timer_token"),
        "{reason}"
    );
    assert!(!reason.contains("another-timer-token"), "{reason}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "a refusal is not retried for the whole budget"
    );
    assert_eq!(
        app.kv_get("default", "fetch/last-timer-event").unwrap(),
        None
    );
}
