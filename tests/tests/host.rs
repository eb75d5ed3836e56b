//! The test host behaves as Spin does.

use std::time::Duration;

use archiver_tests::manifest::Manifest;
use archiver_tests::{App, is_interrupted, is_simulated_crash};
use bytes::Bytes;

use crate::util::{probe_app, unlisted, upstream};

async fn who(app: &App, path: &str) -> serde_json::Value {
    let response = app.get(path).await.unwrap();
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    response.json().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_exact_wildcard_and_catch_all_as_spin_does() {
    let app = probe_app(unlisted());
    let exact = who(&app, "/exact").await;
    assert_eq!(exact["component"], "probe-exact");
    assert_eq!(exact["headers"]["spin-matched-route"], "/exact");
    assert_eq!(exact["headers"]["spin-path-info"], "");

    // An exact route does not match below itself: the catch-all takes it.
    assert_eq!(
        who(&app, "/exact/more").await["component"],
        "probe-fallback"
    );
    assert_eq!(who(&app, "/elsewhere").await["component"], "probe-fallback");

    let wild = who(&app, "/probe/a/b?x=1").await;
    assert_eq!(wild["component"], "probe");
    assert_eq!(wild["path"], "/probe/a/b");
    assert_eq!(wild["headers"]["spin-path-info"], "/a/b");
    assert_eq!(wild["headers"]["spin-matched-route"], "/probe/...");
    assert_eq!(wild["headers"]["spin-component-route"], "/probe");
    assert_eq!(
        wild["headers"]["spin-full-url"],
        "http://127.0.0.1:3000/probe/a/b?x=1"
    );
    assert_eq!(who(&app, "/probe").await["component"], "probe");
    assert_eq!(who(&app, "/probex").await["component"], "probe-fallback");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_component_is_reachable_only_by_chaining() {
    let app = probe_app(unlisted());
    for path in ["/", "/probe-private", "/probe-private/x", "/inner"] {
        assert_ne!(app.route(path).as_deref(), Some("probe-private"), "{path}");
    }
    let chained = app
        .get("/probe/x?op=fetch&url=http://probe-private.spin.internal/inner?y=2")
        .await
        .unwrap();
    assert_eq!(chained.status, 200, "{}", chained.text());
    let body = chained.text();
    let json: serde_json::Value = serde_json::from_str(body.strip_prefix("200 ").unwrap()).unwrap();
    assert_eq!(json["component"], "probe-private");
    assert_eq!(json["path"], "/inner");
    assert_eq!(json["headers"]["spin-path-info"], "/inner");

    // The catch-all probe does not list the private one among its hosts.
    let denied = app
        .get("/other?op=fetch&url=http://probe-private.spin.internal/inner")
        .await
        .unwrap();
    assert_eq!(denied.status, 502);
    assert!(
        denied.text().contains("HttpRequestDenied"),
        "{}",
        denied.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_requests_reach_only_listed_hosts() {
    let server = upstream().await;
    let app = probe_app(server);
    let allowed = app
        .get(&format!("/probe/x?op=fetch&url=http://{server}/hello"))
        .await
        .unwrap();
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(allowed.text(), "200 upstream says hi");

    let other_port = format!(
        "/probe/x?op=fetch&url=http://127.0.0.1:{}/",
        server.port() + 1
    );
    let by_name = format!("/probe/x?op=fetch&url=http://localhost:{}/", server.port());
    let https = format!("/probe/x?op=fetch&url=https://{server}/");
    let from_exact = format!("/exact?op=fetch&url=http://{server}/hello");
    for path in [other_port, by_name, https, from_exact] {
        let denied = app.get(&path).await.unwrap();
        assert_eq!(denied.status, 502, "{path}: {}", denied.text());
        assert!(
            denied.text().contains("HttpRequestDenied"),
            "{path}: {}",
            denied.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_body_without_a_length_goes_out_chunked_as_spin_sends_it() {
    let server = upstream().await;
    let app = probe_app(server);
    let post = |op: &str| {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("/probe/x?op={op}&url=http://{server}/framing"))
            .body(Bytes::from_static(b"12345"))
            .unwrap();
        app.send(request)
    };
    // Spin 3.5 hands the guest's body to hyper as a stream of unknown size: without a
    // Content-Length it is sent with Transfer-Encoding: chunked.
    let without_length = post("post").await.unwrap();
    assert_eq!(without_length.text(), "200 chunked 5");
    let sized = post("post-sized").await.unwrap();
    assert_eq!(sized.text(), "200 length 5");

    // A body a test rewrites keeps the framing the guest gave it.
    let rewrite = |body: &[u8]| Some(archiver_tests::Rewrite::Body([body, b"678"].concat()));
    app.rewrite_outbound(&format!("http://{server}/framing"), 2, rewrite);
    assert_eq!(post("post").await.unwrap().text(), "200 chunked 8");
    assert_eq!(post("post-sized").await.unwrap().text(), "200 length 8");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_to_self_reaches_the_apps_routes_only_with_http_self_listed() {
    let app = probe_app(unlisted());
    // The probe lists `http://self`: a relative URL goes to the app's own public routes.
    let answered = app.get("/probe/x?op=fetch&url=/exact").await.unwrap();
    assert_eq!(answered.status, 200, "{}", answered.text());
    assert!(
        answered.text().starts_with("200 ") && answered.text().contains("probe-exact"),
        "{}",
        answered.text()
    );
    // The fallback lists nothing: refused.
    let refused = app.get("/other?op=fetch&url=/exact").await.unwrap();
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert!(
        refused.text().contains("HttpRequestDenied"),
        "{}",
        refused.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_the_component_does_not_list_is_refused() {
    let app = probe_app(unlisted());
    let listed = app
        .get("/probe/x?op=kv-get&store=default&key=k")
        .await
        .unwrap();
    assert_eq!(
        listed.status,
        404,
        "listed store, missing key: {}",
        listed.text()
    );
    for path in [
        "/exact?op=kv-get&store=default&key=k",
        "/other?op=kv-get&store=default&key=k",
        "/probe/x?op=kv-get&store=archive&key=k",
    ] {
        let refused = app.get(path).await.unwrap();
        assert_eq!(refused.status, 403, "{path}");
        assert!(
            refused.text().contains("AccessDenied"),
            "{path}: {}",
            refused.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn key_value_state_written_by_one_component_is_read_by_others_and_survives_a_restart() {
    let app = probe_app(unlisted());
    // The timer (a cron component) cannot reach its app origin: it says so, and records it
    // where the HTTP components read it.
    let fired = app.fire_cron("archive-timer", 1_764_122_400).await.unwrap();
    assert!(
        fired
            .as_ref()
            .is_err_and(|e| e.contains("could not be reached")),
        "{fired:?}"
    );
    let read = app
        .get("/probe/x?op=kv-get&store=default&key=timer/last-failure")
        .await
        .unwrap();
    assert_eq!(read.status, 200);
    assert!(
        read.text().contains("could not be reached"),
        "{}",
        read.text()
    );

    let put = http::Request::put("/probe/x?op=kv-set&store=default&key=greeting")
        .body(Bytes::from_static(b"written by probe"))
        .unwrap();
    assert_eq!(app.send(put).await.unwrap().status, 204);
    let chained = app
        .get("/probe/x?op=fetch&url=http://probe-private.spin.internal/?op=kv-get&store=default&key=greeting")
        .await
        .unwrap();
    assert_eq!(chained.text(), "200 written by probe");

    let restarted = App::builder("tests/probe/spin.toml")
        .variable("probe_secret", "s3cret-probe")
        .kv_file(app.kv_path())
        .build()
        .unwrap();
    assert_eq!(
        restarted.kv_get("default", "greeting").unwrap().as_deref(),
        Some(&b"written by probe"[..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_follow_defaults_templates_and_overrides() {
    let app = probe_app(unlisted());
    let var = |name: &str| format!("/probe/x?op=var&name={name}");
    assert_eq!(
        app.get(&var("greeting")).await.unwrap().text(),
        "hello, from hello"
    );
    assert_eq!(
        app.get(&var("probe_secret")).await.unwrap().text(),
        "s3cret-probe"
    );
    let undefined = app.get(&var("admin_token")).await.unwrap();
    assert_eq!(undefined.status, 404);
    assert!(
        undefined.text().contains("Undefined"),
        "{}",
        undefined.text()
    );
    let invalid = app.get(&var("Bad-Name")).await.unwrap();
    assert!(invalid.text().contains("InvalidName"), "{}", invalid.text());
    // Only the component's own bindings are visible: the exact probe binds no greeting.
    let other = app.get("/exact?op=var&name=greeting").await.unwrap();
    assert!(other.text().contains("Undefined"), "{}", other.text());

    let overridden = App::builder("tests/probe/spin.toml")
        .variable("probe_secret", "x")
        .variable("greeting", "hi")
        .build()
        .unwrap();
    assert_eq!(
        overridden.get(&var("greeting")).await.unwrap().text(),
        "hi, from hi"
    );
}

#[test]
fn a_missing_required_variable_or_an_unknown_one_stops_the_app() {
    let error = App::builder("tests/probe/spin.toml")
        .build()
        .err()
        .expect("must fail");
    let message = format!("{error:#}");
    assert!(message.contains("probe_secret"), "{message}");
    assert!(message.contains("SPIN_VARIABLE_PROBE_SECRET"), "{message}");
    let error = App::builder("tests/probe/spin.toml")
        .variable("probe_secret", "x")
        .variable("no_such_variable", "y")
        .build()
        .err()
        .expect("must fail");
    assert!(format!("{error:#}").contains("no_such_variable"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_invocation_gets_a_fresh_instance() {
    let app = probe_app(unlisted());
    for _ in 0..3 {
        assert_eq!(app.get("/probe/x?op=count").await.unwrap().text(), "1");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invocation_past_its_deadline_is_interrupted() {
    let app = probe_app(unlisted());
    app.set_deadline(Duration::from_millis(300));
    let error = app
        .get("/probe/x?op=spin")
        .await
        .expect_err("must be interrupted");
    assert!(is_interrupted(&error), "{error:?}");
    assert!(!is_simulated_crash(&error));
    // The next invocation is a fresh instance and runs normally.
    assert_eq!(app.get("/probe/x?op=count").await.unwrap().text(), "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_a_key_value_write_stops_the_invocation_before_the_write() {
    let app = probe_app(unlisted());
    let put = |key: &str| {
        http::Request::put(format!("/probe/x?op=kv-set&store=default&key={key}"))
            .body(Bytes::from_static(b"v"))
            .unwrap()
    };
    app.crash_after_kv_writes(Some(1));
    assert_eq!(app.send(put("first")).await.unwrap().status, 204);
    let error = app.send(put("second")).await.expect_err("must crash");
    assert!(is_simulated_crash(&error), "{error:?}");
    assert!(app.kv_get("default", "first").unwrap().is_some());
    assert!(app.kv_get("default", "second").unwrap().is_none());
    app.crash_after_kv_writes(None);
    assert_eq!(app.send(put("second")).await.unwrap().status, 204);
}

fn parse(text: &str) -> anyhow::Result<Manifest> {
    Manifest::parse(text, std::path::Path::new("."))
}

const HEAD: &str = "spin_manifest_version = 2\n[application]\nname = \"t\"\n";

#[test]
fn a_malformed_or_inconsistent_manifest_is_a_clear_error() {
    let component = "[component.a]\nsource = \"a.wasm\"\n";
    let cases = [
        (
            "spin_manifest_version = 1\n[application]\nname = \"t\"\n".to_string(),
            "must be 2",
        ),
        (
            format!("{HEAD}[[trigger.http]]\nroute = \"/x\"\ncomponent = \"nope\"\n"),
            "\"nope\"",
        ),
        (
            format!("{HEAD}{component}[[trigger.http]]\nroute = \"x\"\ncomponent = \"a\"\n"),
            "must start with `/`",
        ),
        (
            format!(
                "{HEAD}{component}[[trigger.http]]\nroute = \"/x\"\ncomponent = \"a\"\n[[trigger.http]]\nroute = \"/x\"\ncomponent = \"a\"\n"
            ),
            "declared twice",
        ),
        (
            format!(
                "{HEAD}{component}[[trigger.cron]]\ncomponent = \"a\"\ncron_expression = \"0 2 * * *\"\n"
            ),
            "six fields, seconds first",
        ),
        (
            format!("{HEAD}{component}[component.a.variables]\nx = \"{{{{ undeclared }}}}\"\n"),
            "\"undeclared\"",
        ),
        (
            format!("{HEAD}[variables]\nv = {{ required = true, default = \"d\" }}\n"),
            "either a default",
        ),
        (
            format!("{HEAD}[component.a]\nkey_value_stores = [\"default\"]\n"),
            "`source`",
        ),
        (
            format!("{HEAD}{component}[[trigger.mqtt]]\ncomponent = \"a\"\n"),
            "not supported",
        ),
        (format!("{HEAD}[[trigger.http]\n"), "not valid TOML"),
    ];
    for (text, expected) in cases {
        let error = parse(&text)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"));
        let message = format!("{error:#}");
        assert!(
            message.contains(expected),
            "{expected:?} not in {message:?}"
        );
    }
    let fine = format!(
        "{HEAD}{component}[[trigger.http]]\nroute = {{ private = true }}\ncomponent = \"a\"\n"
    );
    assert!(parse(&fine).is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_triggers_fire_on_their_schedule() {
    // The probe app with its timer every second, its sources where the probe's manifest has them.
    let root = archiver_tests::project_root();
    let manifest = std::fs::read_to_string(root.join("tests/probe/spin.toml"))
        .unwrap()
        .replace(
            "cron_expression = \"0 0 2 * * *\"",
            "cron_expression = \"* * * * * *\"",
        )
        .replace("\"../../target/", &format!("\"{}/target/", root.display()));
    assert!(manifest.contains("\"* * * * * *\""));
    let path = root.join(format!(
        "target/cron-every-second-{}.toml",
        std::process::id()
    ));
    std::fs::write(&path, manifest).unwrap();
    let app = App::builder(&path)
        .variable("probe_secret", "s3cret-probe")
        .build()
        .unwrap();
    let started = chrono::Utc::now().timestamp() as u64;
    let fired = tokio::time::timeout(Duration::from_secs(120), app.run_cron_schedules(Some(2)))
        .await
        .expect("two events within 120 s")
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert!(
        fired
            .iter()
            .all(|(component, _)| component == "archive-timer")
    );
    assert!(fired[0].1 >= started, "{fired:?} from {started}");
    assert!(fired[1].1 > fired[0].1, "{fired:?}");
}

/// The probe app with its `default` store on a Redis server of its own.
fn probe_on_redis(server: std::net::SocketAddr) -> App {
    let redis = std::sync::Arc::new(archiver_tests::RedisServer::start().unwrap());
    archiver_tests::App::builder("tests/probe/spin.toml")
        .variable("probe_secret", "s3cret-probe")
        .variable("upstream_origin", format!("http://{server}"))
        .redis(redis)
        .unwrap()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn spins_redis_store_answers_every_swap_failed_even_when_it_wrote() {
    let server = upstream().await;
    // On SQLite a swap's answer is true: one swap, written.
    let sqlite = probe_app(server);
    let added = sqlite.get("/probe/x?op=cas-add&key=n").await.unwrap();
    assert_eq!(added.text(), "swaps 1, ok, value 1");

    // On Spin 3.5's Redis store the swap writes, then answers "failed" (its UNWATCH takes an
    // argument Redis refuses): a client that trusts the answer adds 1 on every try.
    let redis = probe_on_redis(server);
    let added = redis.get("/probe/x?op=cas-add&key=n").await.unwrap();
    assert_eq!(added.text(), "swaps 5, failed, value 5");
    assert_eq!(redis.kv_get("default", "n").unwrap().unwrap(), b"5");

    // get-many is `KEYS k1 k2`: refused by Redis.
    redis.kv_set("default", "k", b"v").unwrap();
    let many = redis.get("/probe/x?op=get-many&key=k").await.unwrap();
    assert_eq!(many.status, 500, "{}", many.text());
    let many = sqlite.get("/probe/x?op=get-many&key=k").await.unwrap();
    assert_eq!((many.status, many.text().as_str()), (200, "k=,k-other="));

    // Keys carry no prefix of the label: they are the Redis keys themselves.
    let server = redis.redis_server().unwrap();
    let mut direct = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let raw: Option<Vec<u8>> = redis::cmd("GET").arg("n").query(&mut direct).unwrap();
    assert_eq!(raw.as_deref(), Some(&b"5"[..]));
}

#[test]
fn the_redis_runtime_config_in_the_repository_is_one_spin_up_takes() {
    let path = archiver_tests::project_root().join("runtime-config/redis.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config: toml::Table = toml::from_str(&text).unwrap();
    let store = &config["key_value_store"]["default"];
    assert_eq!(store["type"].as_str(), Some("redis"));
    assert!(
        store["url"]
            .as_str()
            .is_some_and(|url| url.starts_with("redis://")),
        "{store}"
    );
    // The test host reads it as `spin up --runtime-config-file` does.
    archiver_tests::App::builder("spin.toml")
        .runtime_config(&path)
        .unwrap();
}
