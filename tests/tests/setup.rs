//! The admin API (setup component) through the test host, against the source simulator.

use std::collections::BTreeMap;

use archiver_tests::{App, SourceSimulator, TestResponse};
use bytes::Bytes;
use serde_json::{Value, json};

const TOKEN: &str = "admin-token-for-tests";
const PASSWORD: &str = "correct-horse-battery";

struct Setup {
    app: App,
    source: SourceSimulator,
}

async fn setup() -> Setup {
    let source = SourceSimulator::start("att-admin", PASSWORD).await;
    let app = App::builder("spin.toml")
        .variable("admin_token", TOKEN)
        .variable("timer_token", "timer-token-for-tests")
        .variable("staging_key", "5a".repeat(32))
        .variable("jmap_password", "jmap-secret")
        .variable("source_origin", source.origin())
        .build()
        .expect("the archiver app loads");
    Setup { app, source }
}

impl Setup {
    async fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> TestResponse {
        self.call_as(
            Some(&format!("Bearer {TOKEN}")),
            method,
            path,
            content_type,
            body,
        )
        .await
    }

    async fn call_as(
        &self,
        authorization: Option<&str>,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let mut request = http::Request::builder().method(method).uri(path);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = self.app.send(request.body(body.into()).unwrap()).await;
        response.unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
    }

    fn connector_body(&self, extra: Value) -> Bytes {
        let mut body = json!({
            "display_name": "AT&T Network",
            "network": "AT&T",
            "source_url": self.source.base_url(),
            "username": "att-admin",
            "automatic_mapping": true,
        });
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        Bytes::from(body.to_string())
    }

    async fn create(&self, id: &str) -> TestResponse {
        let body = self.connector_body(json!({ "password": PASSWORD }));
        self.call(
            "PUT",
            &format!("/api/connectors/{id}"),
            Some("application/json"),
            body,
        )
        .await
    }

    /// Every key and value of the store, to prove a request changed nothing.
    fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        self.app
            .kv_keys("default")
            .unwrap()
            .into_iter()
            .map(|k| {
                let v = self.app.kv_get("default", &k).unwrap().unwrap();
                (k, v)
            })
            .collect()
    }

    fn assert_no_secret_anywhere(&self) {
        for (key, value) in self.snapshot() {
            let text = String::from_utf8_lossy(&value);
            assert!(
                !text.contains(PASSWORD),
                "{key} holds the password in clear"
            );
            assert!(!text.contains(TOKEN), "{key} holds the admin token");
        }
        let logs = self.app.logs();
        assert!(
            !logs.contains(PASSWORD) && !logs.contains(TOKEN),
            "a secret reached the logs"
        );
    }
}

/// Method, path, content type, body, expected status, and a phrase the error must contain.
type BadInput = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Bytes,
    u16,
    &'static str,
);

const MAPPING: &str =
    "phone,email\n+12025550101,alice@acme.example\n12025550102,bob@acme.example\n";

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_wizard_flow() {
    let s = setup().await;
    // Log in to the archive and create the connector.
    let created = s.create("att-main").await;
    assert_eq!(created.status, 201, "{}", created.text());
    let view = created.json().unwrap();
    assert_eq!(view["id"], "att-main");
    assert_eq!(view["folder"], "AT&T SMS/MMS Network Archiver");
    assert_eq!(view["enabled"], true);
    assert_eq!(view["password_set"], true);
    assert_eq!(view["organization"], "Acme Corp");
    assert!(view.get("password").is_none() && view.get("password_sealed").is_none());
    assert!(!created.text().contains(PASSWORD));
    let checks = s.source.requests();
    assert_eq!(checks.len(), 1);
    assert_eq!((checks[0].1.as_str(), checks[0].2), ("/v1/account?", true));

    // Upload the mapping, read it back.
    let uploaded = s
        .call(
            "PUT",
            "/api/connectors/att-main/mapping",
            Some("text/csv"),
            MAPPING,
        )
        .await;
    assert_eq!(uploaded.status, 200, "{}", uploaded.text());
    assert_eq!(uploaded.json().unwrap()["entries"], 2);
    let mapping = s
        .call("GET", "/api/connectors/att-main/mapping", None, "")
        .await;
    assert_eq!(
        mapping.header("content-type"),
        Some("text/csv; charset=utf-8")
    );
    assert!(
        mapping.text().contains("+12025550102,bob@acme.example"),
        "{}",
        mapping.text()
    );

    // Turn automatic mapping off and disable it: no credentials change, the archive is not
    // asked.
    let body = s.connector_body(json!({ "automatic_mapping": false, "enabled": false }));
    let updated = s
        .call(
            "PUT",
            "/api/connectors/att-main",
            Some("application/json"),
            body,
        )
        .await;
    assert_eq!(updated.status, 200, "{}", updated.text());
    assert_eq!(updated.json().unwrap()["automatic_mapping"], false);
    assert_eq!(updated.json().unwrap()["created_at"], view["created_at"]);
    assert_eq!(s.source.requests().len(), 1, "only the creation's login");

    // Another address of the archive is checked again, with the stored password.
    let body = s.connector_body(
        json!({ "automatic_mapping": false, "enabled": false, "source_url": s.source.origin() }),
    );
    let moved = s
        .call(
            "PUT",
            "/api/connectors/att-main",
            Some("application/json"),
            body,
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.text());
    assert_eq!(moved.json().unwrap()["source_url"], s.source.origin());
    assert!(
        s.source.requests()[1].2,
        "the update logged in with the stored password"
    );

    // Start runs now: the next window, and a backfill.
    let run = s
        .call(
            "POST",
            "/api/connectors/att-main/runs",
            Some("application/json"),
            "{}",
        )
        .await;
    assert_eq!(run.status, 202, "{}", run.text());
    // The run was executed at once; with no mail server in this scenario, delivery fails.
    let started = run.json().unwrap();
    assert_eq!(started["state"], "failed", "{started}");
    assert!(
        started["error"].as_str().unwrap().contains("mail server"),
        "{started}"
    );
    let window = json!({ "since": "2026-11-01T00:00:00Z", "until": "2026-11-02T00:00:00Z" });
    let backfill = s
        .call(
            "POST",
            "/api/connectors/att-main/runs",
            Some("application/json"),
            window.to_string(),
        )
        .await;
    assert_eq!(backfill.status, 202);
    assert_eq!(backfill.json().unwrap()["since"], "2026-11-01T00:00:00Z");
    let runs = s
        .call("GET", "/api/connectors/att-main/runs", None, "")
        .await
        .json()
        .unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);
    let run_id = run.json().unwrap()["id"].as_str().unwrap().to_string();
    let one = s
        .call(
            "GET",
            &format!("/api/connectors/att-main/runs/{run_id}"),
            None,
            "",
        )
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json().unwrap()["not_imported"], json!([]));

    // Watch progress.
    let status = s
        .call("GET", "/api/connectors/att-main/status", None, "")
        .await;
    assert_eq!(status.status, 200, "{}", status.text());
    let status = status.json().unwrap();
    assert_eq!(status["runs"].as_array().unwrap().len(), 2);
    // Days are days of texts: the archive had none in these windows, so no day has figures
    // (the runs themselves are listed above).
    assert_eq!(status["days"], json!([]), "{status}");
    assert_eq!(status["health"]["source_login_failure"], Value::Null);

    let list = s
        .call("GET", "/api/connectors", None, "")
        .await
        .json()
        .unwrap();
    assert_eq!(list["connectors"].as_array().unwrap().len(), 1);
    s.assert_no_secret_anywhere();

    assert_eq!(
        s.call("DELETE", "/api/connectors/att-main", None, "")
            .await
            .status,
        204
    );
    assert_eq!(
        s.call("GET", "/api/connectors/att-main", None, "")
            .await
            .status,
        404
    );
    assert_eq!(
        s.call("DELETE", "/api/connectors/att-main", None, "")
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_checked_before_anything_is_saved() {
    let s = setup().await;
    let before = s.snapshot();
    let wrong = s.connector_body(json!({ "password": "wrong-password" }));
    let refused = s
        .call(
            "PUT",
            "/api/connectors/att-main",
            Some("application/json"),
            wrong,
        )
        .await;
    assert_eq!(refused.status, 422);
    assert!(
        refused.text().contains("refused the username or password"),
        "{}",
        refused.text()
    );
    assert!(!refused.text().contains("wrong-password"));

    // An archive that stays unavailable through the check's retries is reported as such.
    s.source.fail_next("/v1/account", 503, 50);
    let down = s.create("att-main").await;
    assert_eq!(down.status, 502, "{}", down.text());
    assert!(down.text().contains("unavailable"), "{}", down.text());

    let elsewhere = s.connector_body(
        json!({ "password": PASSWORD, "source_url": "https://archive.example.org/api" }),
    );
    let not_allowed = s
        .call(
            "PUT",
            "/api/connectors/att-main",
            Some("application/json"),
            elsewhere,
        )
        .await;
    assert_eq!(not_allowed.status, 422);
    assert!(
        not_allowed.text().contains("source_origin"),
        "{}",
        not_allowed.text()
    );

    let no_password = s.connector_body(json!({}));
    let missing = s
        .call(
            "PUT",
            "/api/connectors/att-main",
            Some("application/json"),
            no_password,
        )
        .await;
    assert_eq!(missing.status, 422);
    assert!(missing.text().contains("password"), "{}", missing.text());
    assert_eq!(s.snapshot(), before, "nothing may be saved");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_requires_the_admin_token_and_changes_nothing_without_it() {
    let s = setup().await;
    assert_eq!(s.create("att-main").await.status, 201);
    let before = s.snapshot();
    let connector = s.connector_body(json!({ "password": PASSWORD }));
    let routes: Vec<(&str, &str, Option<&str>, Bytes)> = vec![
        ("GET", "/api/health", None, Bytes::new()),
        ("GET", "/api/connectors", None, Bytes::new()),
        ("GET", "/api/connectors/att-main", None, Bytes::new()),
        (
            "PUT",
            "/api/connectors/att-main",
            Some("application/json"),
            connector.clone(),
        ),
        (
            "PUT",
            "/api/connectors/other",
            Some("application/json"),
            connector,
        ),
        ("DELETE", "/api/connectors/att-main", None, Bytes::new()),
        (
            "GET",
            "/api/connectors/att-main/mapping",
            None,
            Bytes::new(),
        ),
        (
            "PUT",
            "/api/connectors/att-main/mapping",
            Some("text/csv"),
            Bytes::from(MAPPING),
        ),
        ("GET", "/api/connectors/att-main/runs", None, Bytes::new()),
        (
            "POST",
            "/api/connectors/att-main/runs",
            Some("application/json"),
            Bytes::from("{}"),
        ),
        (
            "GET",
            "/api/connectors/att-main/runs/r-1",
            None,
            Bytes::new(),
        ),
        ("GET", "/api/connectors/att-main/status", None, Bytes::new()),
        ("GET", "/api/nowhere", None, Bytes::new()),
    ];
    let wrong_token = format!("Bearer {TOKEN}x");
    let short_token = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let lowercase = format!("bearer {TOKEN}");
    let basic = format!("Basic {TOKEN}");
    let credentials = [
        None,
        Some(wrong_token.as_str()),
        Some(short_token.as_str()),
        Some(lowercase.as_str()),
        Some(basic.as_str()),
        Some("Bearer "),
    ];
    for (method, path, content_type, body) in routes {
        for authorization in credentials {
            let response = s
                .call_as(authorization, method, path, content_type, body.clone())
                .await;
            assert_eq!(
                response.status, 401,
                "{method} {path} with {authorization:?}"
            );
            assert!(!response.text().contains(TOKEN));
        }
    }
    assert_eq!(s.snapshot(), before);
    assert_eq!(
        s.source.requests().len(),
        1,
        "no unauthenticated request reached the archive"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_precise_4xx_and_leaves_state_untouched() {
    let s = setup().await;
    assert_eq!(s.create("att-main").await.status, 201);
    assert_eq!(
        s.call(
            "PUT",
            "/api/connectors/att-main/mapping",
            Some("text/csv"),
            MAPPING
        )
        .await
        .status,
        200
    );
    let before = s.snapshot();
    let json_type = Some("application/json");
    let mut latin1 = b"phone,email\n+12025550101,ren".to_vec();
    latin1.extend_from_slice(b"\xe9@acme.example\n");
    let huge = Bytes::from(vec![b'a'; 50 * 1024 * 1024]);
    let cases: Vec<BadInput> = vec![
        (
            "PUT",
            "/api/connectors/att-main",
            json_type,
            Bytes::from("{\"display_name\": "),
            400,
            "EOF",
        ),
        (
            "PUT",
            "/api/connectors/att-main",
            json_type,
            s.connector_body(json!({ "colour": "red" })),
            400,
            "unknown field `colour`",
        ),
        (
            "PUT",
            "/api/connectors/att-main",
            json_type,
            s.connector_body(json!({ "enabled": "yes" })),
            400,
            "invalid type",
        ),
        (
            "PUT",
            "/api/connectors/att-main",
            Some("text/plain"),
            s.connector_body(json!({})),
            415,
            "application/json",
        ),
        (
            "PUT",
            "/api/connectors/att-main",
            None,
            s.connector_body(json!({})),
            415,
            "application/json",
        ),
        (
            "PUT",
            "/api/connectors/att-main/mapping",
            Some("text/csv"),
            huge,
            413,
            "larger than",
        ),
        (
            "PUT",
            "/api/connectors/att-main/mapping",
            Some("application/json"),
            Bytes::from(MAPPING),
            415,
            "text/csv",
        ),
        (
            "PUT",
            "/api/connectors/att-main/mapping",
            Some("text/csv"),
            Bytes::from(latin1),
            422,
            "UTF-8",
        ),
        (
            "PUT",
            "/api/connectors/UPPER",
            json_type,
            s.connector_body(json!({})),
            400,
            "a-z",
        ),
        (
            "PUT",
            "/api/connectors/a%2Fb",
            json_type,
            s.connector_body(json!({})),
            400,
            "a-z",
        ),
        ("GET", "/api/connectors/..", None, Bytes::new(), 400, "a-z"),
        (
            "GET",
            "/api/connectors/a/b",
            None,
            Bytes::new(),
            404,
            "no route",
        ),
        (
            "PUT",
            "/api/connectors/ghost/mapping",
            Some("text/csv"),
            Bytes::from(MAPPING),
            404,
            "no connector",
        ),
        (
            "POST",
            "/api/connectors/att-main/runs",
            json_type,
            Bytes::from(r#"{"since":"2026-11-02T00:00:00Z"}"#),
            422,
            "both",
        ),
        (
            "POST",
            "/api/connectors/att-main/runs",
            json_type,
            Bytes::from(r#"{"window":1}"#),
            400,
            "unknown field",
        ),
        (
            "PATCH",
            "/api/connectors/att-main",
            json_type,
            Bytes::from("{}"),
            405,
            "PATCH",
        ),
    ];
    for (method, path, content_type, body, status, needle) in cases {
        let response = s.call(method, path, content_type, body).await;
        assert_eq!(
            response.status,
            status,
            "{method} {path}: {}",
            response.text()
        );
        assert!(
            response.text().contains(needle),
            "{method} {path}: {needle:?} not in {}",
            response.text()
        );
    }
    assert_eq!(s.snapshot(), before);
    s.assert_no_secret_anywhere();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_mapping_lists_every_bad_row_and_keeps_the_old_one() {
    let s = setup().await;
    assert_eq!(s.create("att-main").await.status, 201);
    s.call(
        "PUT",
        "/api/connectors/att-main/mapping",
        Some("text/csv"),
        MAPPING,
    )
    .await;
    let bad = "phone,email\n+12025550101,alice@acme.example\nnot-a-phone,bob@acme.example\n+12025550103,carol at acme\n";
    let rejected = s
        .call(
            "PUT",
            "/api/connectors/att-main/mapping",
            Some("text/csv"),
            bad,
        )
        .await;
    assert_eq!(rejected.status, 422);
    let rows = rejected.json().unwrap()["rows"].clone();
    let places: Vec<(u64, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["column"].as_u64().unwrap()))
        .collect();
    assert_eq!(places, [(3, 1), (4, 2)]);
    let mapping = s
        .call("GET", "/api/connectors/att-main/mapping", None, "")
        .await
        .text();
    assert!(
        mapping.contains("bob@acme.example"),
        "the old mapping is still in effect"
    );
}

fn big_mapping(domain: &str) -> String {
    let mut csv = String::from("phone,email\n");
    for i in 0..5000 {
        csv.push_str(&format!(
            "+1312555{i:04},someone.with.a.long.mailbox{i}@{domain}\n"
        ));
    }
    csv
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_sees_the_old_mapping_or_the_new_one_never_a_mix() {
    let s = setup().await;
    assert_eq!(s.create("att-main").await.status, 201);
    let (old, new) = (big_mapping("old.example"), big_mapping("new.example"));
    let put = |csv: String| {
        s.call(
            "PUT",
            "/api/connectors/att-main/mapping",
            Some("text/csv"),
            csv,
        )
    };
    assert_eq!(put(old.clone()).await.status, 200);
    let canonical_old = s
        .call("GET", "/api/connectors/att-main/mapping", None, "")
        .await
        .text();
    assert!(
        canonical_old.len() > 256 * 1024,
        "the mapping spans several chunks"
    );

    let writer = async {
        for round in 0..6 {
            let csv = if round % 2 == 0 {
                new.clone()
            } else {
                old.clone()
            };
            assert_eq!(put(csv).await.status, 200);
        }
    };
    let reader = async {
        let mut seen = Vec::new();
        for _ in 0..12 {
            let response = s
                .call("GET", "/api/connectors/att-main/mapping", None, "")
                .await;
            assert_eq!(response.status, 200, "{}", response.text());
            seen.push(response.text());
        }
        seen
    };
    let ((), seen) = tokio::join!(writer, reader);
    let canonical_new = canonical_old.replace("old.example", "new.example");
    for text in seen {
        assert!(
            text == canonical_old || text == canonical_new,
            "a reader saw a mixed mapping"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passing_archive_error_during_the_credential_check_is_asked_again() {
    let s = setup().await;
    // One 503 with Retry-After: 1, then the archive answers: the connector is created.
    s.source.fail_next("/v1/account", 503, 1);
    let created = s.create("att-retry").await;
    assert_eq!(created.status, 201, "{}", created.text());
    let logins = s
        .source
        .requests()
        .iter()
        .filter(|r| r.1.starts_with("/v1/account"))
        .count();
    assert_eq!(logins, 2, "asked once more after the 503");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connector_is_disabled_and_enabled_while_its_archive_is_down() {
    let s = setup().await;
    assert_eq!(s.create("att-main").await.status, 201);
    let created = s
        .call("GET", "/api/connectors/att-main", None, "")
        .await
        .json()
        .unwrap();
    let logins = || {
        s.source
            .requests()
            .iter()
            .filter(|r| r.1.starts_with("/v1/account"))
            .count()
    };
    let logins_before = logins();

    // The archive is down for everything the app asks of it from now on.
    s.app.fail_outbound(&s.source.origin(), 503, 1000);
    let put = |extra: Value| {
        s.call(
            "PUT",
            "/api/connectors/att-main",
            Some("application/json"),
            s.connector_body(extra),
        )
    };
    let disabled = put(json!({ "enabled": false })).await;
    assert_eq!(disabled.status, 200, "{}", disabled.text());
    assert_eq!(disabled.json().unwrap()["enabled"], false);
    let stored = s
        .call("GET", "/api/connectors/att-main", None, "")
        .await
        .json()
        .unwrap();
    assert_eq!(stored["enabled"], false);
    // What the archive confirmed is kept as it was.
    for field in ["account_id", "organization", "source_url", "password_set"] {
        assert_eq!(stored[field], created[field], "{field}");
    }

    let enabled = put(json!({ "enabled": true, "display_name": "AT&T (main)" })).await;
    assert_eq!(enabled.status, 200, "{}", enabled.text());
    assert_eq!(enabled.json().unwrap()["enabled"], true);
    assert_eq!(enabled.json().unwrap()["display_name"], "AT&T (main)");
    assert_eq!(logins(), logins_before, "the archive was never asked");

    // A new password still needs the archive, and nothing is saved while it cannot answer.
    let before = s.snapshot();
    let new_password = put(json!({ "password": "another-password" })).await;
    assert_eq!(new_password.status, 502, "{}", new_password.text());
    let other_user = put(json!({ "username": "att-other" })).await;
    assert_eq!(other_user.status, 502, "{}", other_user.text());
    assert_eq!(s.snapshot(), before, "nothing may be saved");
    s.assert_no_secret_anywhere();
}
