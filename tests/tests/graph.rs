//! The pipeline with `destination = "graph"`, against the Graph contract server: the day lands
//! in each user's Exchange folder once, as received items with the evidence, through the
//! service's faults.

use std::collections::BTreeMap;
use std::time::Duration;

use archiver_core::digest::sha256_hex;
use archiver_core::email::message_id;
use archiver_tests::graph::StoredMessage;
use archiver_tests::{App, GraphServer, SourceSimulator};
use serde_json::Value;

use crate::pipeline::{
    CONNECTOR, DOMAIN, FOLDER, MAPPING, TIMER, TIMER_TOKEN, TOKEN, admin, attachment,
    create_connector, expire_lease, fire_timer, message, person, the_day,
};

const TENANT: &str = "acme.onmicrosoft.com";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT_SECRET: &str = "graph~client~secret";
/// The day's users with an Exchange mailbox (frank has none).
const USERS: [&str; 5] = [
    "alice@acme.example",
    "bob@acme.example",
    "carol@acme.example",
    "dave@acme.example",
    "erin@acme.example",
];

fn archiver(source: &SourceSimulator, graph: &GraphServer, variables: &[(&str, &str)]) -> App {
    let mut builder = App::builder("spin.toml")
        .listening("app_origin")
        .unwrap()
        .variable("admin_token", TOKEN)
        .variable("timer_token", TIMER_TOKEN)
        .variable("timer_retry_seconds", "2")
        .variable("staging_key", "6b".repeat(32))
        .variable("source_origin", source.origin())
        .variable("destination", "graph")
        .variable("graph_origin", graph.origin())
        .variable("graph_login_origin", graph.origin())
        .variable("graph_upload_origin", graph.upload_origin())
        .variable("graph_tenant", TENANT)
        .variable("graph_client_id", CLIENT_ID)
        .variable("graph_client_secret", CLIENT_SECRET);
    for (name, value) in variables {
        builder = builder.variable(name, *value);
    }
    crate::util::on_store(builder).build().unwrap()
}

async fn set_up(app: &App, source: &SourceSimulator) {
    create_connector(app, source, CONNECTOR).await;
    admin(
        app,
        "PUT",
        &format!("/api/connectors/{CONNECTOR}/mapping"),
        "text/csv",
        MAPPING.into(),
    )
    .await;
}

/// Each message of `user`'s folder by its source id; a source id twice fails the test.
fn folder(graph: &GraphServer, user: &str) -> BTreeMap<String, StoredMessage> {
    let mut found = BTreeMap::new();
    for message in graph.messages(user, FOLDER) {
        let id = message
            .header("x-archive-source-id")
            .expect("the source id header");
        assert!(
            found.insert(id.clone(), message).is_none(),
            "{id} twice in {user}'s folder"
        );
    }
    found
}

async fn status(app: &App) -> Value {
    admin(
        app,
        "GET",
        &format!("/api/connectors/{CONNECTOR}/status"),
        "application/json",
        String::new(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_day_lands_in_each_users_exchange_folder_once_as_received_items() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let graph = GraphServer::start(TENANT, CLIENT_ID, CLIENT_SECRET, &USERS).await;
    let expected = the_day(&source);
    source.set_page_cap(4);
    let app = archiver(&source, &graph, &[("step_max_items", "3")]);
    set_up(&app, &source).await;

    assert_eq!(
        fire_timer(&app, TIMER).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );

    let sent_at: BTreeMap<&str, &str> = [
        ("m01", "2026-11-25T10:00:00Z"),
        ("m02", "2026-11-25T11:00:00Z"),
        ("m03", "2026-11-25T11:05:00Z"),
        ("m04", "2026-11-25T12:00:00Z"),
        ("m05", "2026-11-25T13:00:00Z"),
        ("m06", "2026-11-25T14:00:00Z"),
        ("m07", "2026-11-25T15:00:00Z"),
        ("m08", "2026-11-25T16:00:00Z"),
        ("m09", "2026-11-24T23:30:00Z"),
        ("m12", "2026-11-25T19:00:00Z"),
        ("m13", "2026-11-25T20:00:00Z"),
    ]
    .into();
    let mut before = BTreeMap::new();
    for (user, ids) in &expected {
        let contents = folder(&graph, user);
        let found: Vec<&str> = contents.keys().map(String::as_str).collect();
        assert_eq!(&found, ids, "{user}'s folder");
        for (id, m) in &contents {
            assert!(!m.is_draft, "{user} {id} is a draft");
            assert_eq!(
                m.received.as_deref(),
                Some(sent_at[id.as_str()]),
                "{user} {id}"
            );
            assert_eq!(m.sent, m.received, "{user} {id}");
            assert_eq!(
                m.json["internetMessageId"],
                format!("<{}>", message_id(CONNECTOR, id, DOMAIN))
            );
            assert_eq!(m.header("x-archive-connector").as_deref(), Some(CONNECTOR));
            assert_eq!(m.header("x-archive-network").as_deref(), Some("AT&T"));
            let body = m.json["body"]["content"].as_str().unwrap();
            assert!(body.contains("X-Archive-Record-SHA256: "), "{body}");
            assert!(body.contains("X-Archive-Sent-At: "), "{body}");
        }
        before.insert(*user, contents.keys().cloned().collect::<Vec<_>>());
    }
    let alice = folder(&graph, "alice@acme.example");
    assert_eq!(alice["m02"].attachments.len(), 1);
    assert_eq!(alice["m02"].attachments[0].name, "IMG_0042.jpg");
    assert_eq!(alice["m02"].attachments[0].size, 30_000);
    assert_eq!(
        alice["m02"].json["subject"],
        "Texts with +12025550101, +12025550102, +13125550199"
    );
    let bob = folder(&graph, "bob@acme.example");
    let video = &bob["m12"].attachments[0];
    assert_eq!(video.size, 12 * 1024 * 1024, "the 12 MB video whole");
    let given: Vec<u8> = (0..12usize * 1024 * 1024)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    assert_eq!(
        video.sha256,
        sha256_hex(&given),
        "the video's bytes as the archive gave them"
    );
    let ranges = graph
        .requests()
        .iter()
        .filter(|(method, path)| method == "PUT" && path.starts_with("upload:"))
        .count();
    assert_eq!(ranges, 4, "12 MB in ranges of 3.75 MB");
    let requests = graph.requests();
    let direct_creates = requests
        .iter()
        .filter(|(method, path)| method == "POST" && path.ends_with("/messages"))
        .count();
    assert_eq!(
        direct_creates, 3,
        "only the copies with attachments are created alone (m02 twice, m12): {requests:?}"
    );
    assert!(
        requests.iter().any(|(method, _)| method == "BATCH POST"),
        "the SMS copies are created in batches"
    );
    assert!(
        requests
            .iter()
            .all(|(method, path)| method == "PUT" || !path.contains("$filter=internetMessageId")),
        "a first attempt looks nothing up"
    );

    let status = status(&app).await;
    let run = &status["runs"][0];
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["figures"]["failed"], 1, "frank has no mailbox: {run}");
    assert_eq!(run["invariant_holds"], true, "{run}");
    let frank = status["not_imported"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["item_id"] == "m14")
        .cloned()
        .unwrap_or_default();
    assert_eq!(frank["reason"], "no_such_mailbox", "{status}");

    // The next timer event re-reads the overlap: nothing is added.
    assert_eq!(
        fire_timer(&app, TIMER + 3600).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    for (user, ids) in &before {
        let after: Vec<String> = folder(&graph, user).keys().cloned().collect();
        assert_eq!(&after, ids, "{user}");
    }
}

/// A day of one MMS with a large attachment and a few SMS, for the fault scenarios.
fn small_day(source: &SourceSimulator, video_bytes: usize) {
    let alice = person("+12025550101", Some("alice@acme.example"), Some("Alice Ng"));
    let outside = person("+13125550199", None, None);
    let video = attachment(source, "a-big", "site.mp4", "video/mp4", video_bytes);
    let day = |t: &str| format!("2026-11-25T{t}Z");
    source.add_message(message(
        "g01",
        "mms",
        "inbound",
        &day("09:00:00"),
        &day("09:00:01"),
        outside.clone(),
        vec![alice.clone()],
        Some("Video"),
        "the site",
        vec![video],
    ));
    for n in 2..=6 {
        source.add_message(message(
            &format!("g0{n}"),
            "sms",
            "inbound",
            &day(&format!("1{n}:00:00")),
            &day(&format!("1{n}:00:01")),
            outside.clone(),
            vec![alice.clone()],
            None,
            &format!("text {n}"),
            vec![],
        ));
    }
}

fn ids(graph: &GraphServer) -> Vec<String> {
    folder(graph, "alice@acme.example").into_keys().collect()
}

const SMALL_DAY: [&str; 6] = ["g01", "g02", "g03", "g04", "g05", "g06"];

#[tokio::test(flavor = "multi_thread")]
async fn throttling_an_expiring_token_and_a_failed_upload_lose_nothing_and_add_nothing() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let graph = GraphServer::start(TENANT, CLIENT_ID, CLIENT_SECRET, &USERS).await;
    small_day(&source, 5 * 1024 * 1024);
    // Tokens that expire within the run; steps of two items.
    graph.set_token_lifetime(Duration::from_secs(1));
    let app = archiver(&source, &graph, &[("step_max_items", "2")]);
    set_up(&app, &source).await;
    // A 429 storm with Retry-After on message creation, a 503 on a folder lookup, and an
    // upload range that keeps failing: that copy is left, not half made.
    graph.fail("/messages", &[429, 429, 503]);
    graph.fail("/mailFolders", &[503]);
    graph.fail("upload:", &[500, 500, 500, 500, 500]);

    let first = fire_timer(&app, TIMER).await.unwrap();
    assert!(first.is_err(), "the failed upload fails the run: {first:?}");
    let landed = ids(&graph);
    assert_eq!(landed, &SMALL_DAY[1..], "every SMS, and no half-made MMS");
    let status = status(&app).await;
    assert!(
        status["runs"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("undelivered items stay staged"),
        "{status}"
    );

    // The next run delivers what was left, once; the token expired meanwhile.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        fire_timer(&app, TIMER + 3600).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    assert_eq!(ids(&graph), SMALL_DAY);
    let video = &folder(&graph, "alice@acme.example")["g01"];
    assert_eq!(video.attachments[0].size, 5 * 1024 * 1024);
    assert!(!video.is_draft);
    let logins = graph
        .requests()
        .iter()
        .filter(|(_, path)| path.contains("/oauth2/v2.0/token"))
        .count();
    assert!(
        logins >= 2,
        "the expired token was renewed ({logins} logins)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_60_mb_attachment_is_refused_under_the_default_limit_and_archived_under_150_mb() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let graph = GraphServer::start(TENANT, CLIENT_ID, CLIENT_SECRET, &USERS).await;
    small_day(&source, 60 * 1024 * 1024);
    let app = archiver(&source, &graph, &[]);
    set_up(&app, &source).await;

    assert_eq!(
        fire_timer(&app, TIMER).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    assert_eq!(
        ids(&graph),
        &SMALL_DAY[1..],
        "no partial copy of the 60 MB MMS"
    );
    let status = status(&app).await;
    let refused = status["not_imported"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["item_id"] == "g01")
        .cloned()
        .unwrap_or_default();
    assert_eq!(refused["reason"], "destination_refused", "{status}");
    let detail = refused["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("maximum message size") && detail.contains("150 MB"),
        "the limit named and what the admin can do: {refused}"
    );

    // The admin raises the limit: the next 60 MB text is archived whole.
    graph.set_message_limit(150 * 1024 * 1024);
    let video = attachment(&source, "a-next", "next.mp4", "video/mp4", 60 * 1024 * 1024);
    source.add_message(message(
        "g07",
        "mms",
        "inbound",
        "2026-11-26T02:40:00Z",
        "2026-11-26T02:40:01Z",
        person("+13125550199", None, None),
        vec![person("+12025550101", Some("alice@acme.example"), None)],
        None,
        "the next one",
        vec![video],
    ));
    assert_eq!(
        fire_timer(&app, TIMER + 3600).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    let folder = folder(&graph, "alice@acme.example");
    assert!(!folder.contains_key("g01"));
    assert_eq!(folder["g07"].attachments[0].size, 60 * 1024 * 1024);
    assert!(!folder["g07"].is_draft);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_client_secret_fails_the_run_saying_so_and_never_shows_the_secret() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let graph = GraphServer::start(TENANT, CLIENT_ID, "the-real-secret", &USERS).await;
    small_day(&source, 1000);
    let app = archiver(&source, &graph, &[]);
    set_up(&app, &source).await;

    let outcome = fire_timer(&app, TIMER).await.unwrap();
    let error = outcome.expect_err("the run fails");
    assert!(error.contains("refused the client secret"), "{error}");
    assert!(ids(&graph).is_empty());
    let status = status(&app).await;
    let flag = &status["health"]["destination_login_failure"]["reason"];
    assert!(
        flag.as_str().unwrap_or_default().contains("client secret"),
        "the connector's health says the destination refused the login: {status}"
    );
    assert!(!status.to_string().contains(CLIENT_SECRET), "{status}");
    assert!(!app.logs().contains(CLIENT_SECRET));
}

async fn destination_check(app: &App) -> Value {
    admin(
        app,
        "GET",
        "/api/destination",
        "application/json",
        String::new(),
    )
    .await
}

fn check<'v>(report: &'v Value, name: &str) -> &'v Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_destination_check_names_a_wrong_secret_missing_consent_and_a_mailbox_out_of_scope() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;

    // A wrong secret: the login check says so, and nothing echoes the secret.
    let graph = GraphServer::start(TENANT, CLIENT_ID, "the-real-secret", &USERS).await;
    let app = archiver(&source, &graph, &[]);
    set_up(&app, &source).await;
    let report = destination_check(&app).await;
    assert_eq!(report["destination"], "graph");
    assert_eq!(report["ok"], false);
    let login = check(&report, "login");
    assert_eq!(login["ok"], false);
    assert!(
        login["detail"]
            .as_str()
            .unwrap()
            .contains("refused the client secret"),
        "{report}"
    );
    assert!(!report.to_string().contains(CLIENT_SECRET));

    // Consent not granted: the token carries no Mail.ReadWrite.
    let graph = GraphServer::start(TENANT, CLIENT_ID, CLIENT_SECRET, &USERS).await;
    graph.set_roles(&[]);
    let app = archiver(&source, &graph, &[]);
    set_up(&app, &source).await;
    let report = destination_check(&app).await;
    assert_eq!(check(&report, "login")["ok"], true, "{report}");
    let permission = check(&report, "permission");
    assert_eq!(permission["ok"], false);
    assert!(
        permission["detail"]
            .as_str()
            .unwrap()
            .contains("grant admin consent"),
        "{report}"
    );

    // Granted, but one mailbox out of the app's scope, one user the tenant lacks.
    graph.set_roles(&["Mail.ReadWrite"]);
    graph.leave_out_of_scope("carol@acme.example");
    let report = destination_check(&app).await;
    assert_eq!(check(&report, "permission")["ok"], true, "{report}");
    assert_eq!(
        check(&report, "mailbox dave@acme.example")["ok"],
        true,
        "{report}"
    );
    let carol = check(&report, "mailbox carol@acme.example");
    assert_eq!(carol["ok"], false);
    assert!(
        carol["detail"].as_str().unwrap().contains("RBAC"),
        "{report}"
    );
    let frank = check(&report, "mailbox frank@acme.example");
    assert!(
        frank["detail"].as_str().unwrap().contains("no mailbox"),
        "{report}"
    );
    assert_eq!(report["ok"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_made_copy_an_expired_upload_session_and_a_racing_folder_end_in_one_whole_copy() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let graph = GraphServer::start(TENANT, CLIENT_ID, CLIENT_SECRET, &USERS).await;
    small_day(&source, 4 * 1024 * 1024);
    let app = archiver(&source, &graph, &[]);
    set_up(&app, &source).await;
    // Another step creates the folder just after this one listed the folders.
    graph.create_folder_behind("alice@acme.example", FOLDER);
    // One request of a batch fails alone; the upload session expires at once; the partial
    // message cannot be deleted: the copy is left half made, as a crash would leave it.
    graph.fail_method("POST", "/mailFolders/", &[503]);
    graph.set_session_lifetime(Duration::ZERO);
    graph.fail_method("DELETE", "/messages/", &[500, 500, 500, 500, 500]);

    let first = fire_timer(&app, TIMER).await.unwrap();
    assert!(first.is_err(), "the MMS failed: {first:?}");
    assert_eq!(graph.folders("alice@acme.example"), [FOLDER], "one folder");
    let left = folder(&graph, "alice@acme.example");
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        SMALL_DAY.iter().collect::<Vec<_>>()
    );
    assert!(left["g01"].attachments.is_empty(), "half made");

    // The next run finds the half-made copy by its Message-ID, deletes it and makes it whole.
    graph.set_session_lifetime(Duration::from_secs(900));
    assert_eq!(
        fire_timer(&app, TIMER + 3600).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    let done = folder(&graph, "alice@acme.example");
    assert_eq!(
        done.keys().collect::<Vec<_>>(),
        SMALL_DAY.iter().collect::<Vec<_>>()
    );
    assert_eq!(done["g01"].attachments.len(), 1);
    assert_eq!(done["g01"].attachments[0].size, 4 * 1024 * 1024);
    assert!(
        graph
            .requests()
            .iter()
            .any(|(method, path)| method == "GET" && path.contains("internetMessageId")),
        "the copy was looked up before it was made again"
    );
    let status = status(&app).await;
    assert_eq!(status["runs"][0]["state"], "succeeded", "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_creating_a_copy_and_uploading_its_attachment_is_made_whole_once() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let graph = GraphServer::start(TENANT, CLIENT_ID, CLIENT_SECRET, &USERS).await;
    small_day(&source, 4 * 1024 * 1024);
    let app = archiver(&source, &graph, &[]);
    set_up(&app, &source).await;
    // The host stops every invocation that runs past 8 s (when it next runs code); the first
    // range of the MMS's attachment is answered only after 12 s, so the import is stopped
    // after it created the message and before the attachment is whole: a crash at that
    // moment.
    app.set_deadline(Duration::from_secs(8));
    graph.set_upload_delay(Duration::from_secs(12));
    let _ = fire_timer(&app, TIMER).await;
    let left = folder(&graph, "alice@acme.example");
    assert!(
        left.get("g01").is_some_and(|m| m.attachments.is_empty()),
        "the crash left the MMS half made: {:?}",
        left.keys()
    );

    // The host comes back; the stopped run's lease runs out; the next run takes over.
    app.set_deadline(Duration::from_secs(600));
    graph.set_upload_delay(Duration::ZERO);
    expire_lease(&app, CONNECTOR);
    assert_eq!(
        fire_timer(&app, TIMER + 3600).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    let done = folder(&graph, "alice@acme.example");
    assert_eq!(
        done.keys().collect::<Vec<_>>(),
        SMALL_DAY.iter().collect::<Vec<_>>()
    );
    assert_eq!(done["g01"].attachments.len(), 1, "made whole, once");
    assert_eq!(done["g01"].attachments[0].size, 4 * 1024 * 1024);
}
