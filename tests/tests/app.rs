//! The product's own `spin.toml` and components on the test host.

use archiver_tests::App;

fn archiver() -> App {
    App::builder("spin.toml")
        .variable("admin_token", "test-admin-token")
        .variable("staging_key", "00".repeat(32))
        .variable("jmap_password", "test-jmap-password")
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
async fn the_admin_api_answers_under_api_and_nothing_else_is_routed() {
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
    assert_eq!(app.get("/").await.unwrap().status, 404);
    assert_eq!(app.route("/apix"), None);
    assert_eq!(app.route("/api").as_deref(), Some("archive-setup"));
    assert_eq!(
        app.route("/import").as_deref(),
        None,
        "the import step is private"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daily_timer_records_its_run() {
    let app = archiver();
    assert_eq!(
        app.fire_cron("archive-fetch", 1_764_122_400).await.unwrap(),
        Ok(())
    );
    assert_eq!(
        app.kv_get("default", "fetch/last-timer-event")
            .unwrap()
            .as_deref(),
        Some(&b"1764122400"[..])
    );
    assert!(
        app.fire_cron("archive-setup", 1).await.is_err(),
        "setup has no timer"
    );
}
