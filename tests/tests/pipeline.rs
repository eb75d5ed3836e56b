//! The daily pipeline end to end: the source simulator, the components on the test host, and a
//! real Cyrus IMAP server over JMAP (started by the test command).

use std::collections::BTreeMap;

use archiver_core::digest::sha256_hex;
use archiver_core::email::message_id;
use archiver_core::jmap::{Mailbox, find_folder};
use archiver_tests::{App, Fault, Rewrite, SourceSimulator};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::util::{JMAP_PASSWORD, JMAP_SESSION_URL, JMAP_USER, Jmap, on_store};

pub(crate) const TOKEN: &str = "pipeline-admin-token";
pub(crate) const CONNECTOR: &str = "att-pipeline";
pub(crate) const DOMAIN: &str = "sms.archive.invalid";
pub(crate) const FOLDER: &str = "AT&T SMS/MMS Network Archiver";
/// 2026-11-26T02:00:00Z, the timer of the day after the messages.
pub(crate) const TIMER: u64 = 1_795_658_400;
/// The token the daily timer sends to the app's `POST /api/timer`.
pub(crate) const TIMER_TOKEN: &str = "pipeline-timer-token";

pub(crate) fn person(phone: &str, email: Option<&str>, name: Option<&str>) -> Value {
    json!({ "phone": phone, "email": email, "name": name })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn message(
    id: &str,
    kind: &str,
    direction: &str,
    sent_at: &str,
    archived_at: &str,
    from: Value,
    to: Vec<Value>,
    subject: Option<&str>,
    body: &str,
    attachments: Vec<Value>,
) -> Value {
    json!({ "id": id, "kind": kind, "direction": direction, "sent_at": sent_at,
        "archived_at": archived_at, "from": from, "to": to, "subject": subject, "body": body,
        "attachments": attachments, "carrier_extra": { "cell": "x" } })
}

pub(crate) fn attachment(
    source: &SourceSimulator,
    id: &str,
    name: &str,
    content_type: &str,
    size: usize,
) -> Value {
    let bytes: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let digest = sha256_hex(&bytes);
    source.add_attachment(id, content_type, bytes);
    json!({ "id": id, "filename": name, "content_type": content_type, "size": size, "sha256": digest })
}

/// The day: who gets which message (by source id).
pub(crate) fn the_day(source: &SourceSimulator) -> BTreeMap<&'static str, Vec<&'static str>> {
    let alice = person("+12025550101", Some("alice@acme.example"), Some("Alice Ng"));
    let bob = person("+12025550102", Some("bob@acme.example"), Some("Bob Ruiz"));
    let carol = person("+12025550103", None, Some("Carol Diaz"));
    let dave = person("+12025550104", Some("dave@acme.example"), Some("Dave Kim"));
    let outside = person("+13125550199", None, None);
    let reassigned = person("+12025550150", None, None);
    let photo = attachment(source, "a-photo", "IMG_0042.jpg", "image/jpeg", 30_000);
    let video = attachment(source, "a-video", "site.mp4", "video/mp4", 12 * 1024 * 1024);
    let day = |t: &str| format!("2026-11-25T{t}Z");
    let messages = [
        message(
            "m01",
            "sms",
            "outbound",
            &day("10:00:00"),
            &day("10:00:01"),
            alice.clone(),
            vec![outside.clone()],
            None,
            "Running late",
            vec![],
        ),
        message(
            "m02",
            "mms",
            "inbound",
            &day("11:00:00"),
            &day("11:00:02"),
            outside.clone(),
            vec![alice.clone(), bob.clone()],
            Some("Site photos"),
            "Here is the damage",
            vec![photo],
        ),
        message(
            "m03",
            "mms",
            "outbound",
            &day("11:05:00"),
            &day("11:05:01"),
            bob.clone(),
            vec![outside.clone(), alice.clone()],
            // A reply in the group without the MMS subject: still the same thread.
            None,
            "Thanks",
            vec![],
        ),
        message(
            "m04",
            "sms",
            "inbound",
            &day("12:00:00"),
            &day("12:00:01"),
            outside.clone(),
            vec![alice.clone()],
            None,
            "On my way",
            vec![],
        ),
        message(
            "m05",
            "sms",
            "outbound",
            &day("13:00:00"),
            &day("13:00:01"),
            alice.clone(),
            vec![bob.clone()],
            None,
            "Lunch?",
            vec![],
        ),
        message(
            "m06",
            "sms",
            "inbound",
            &day("14:00:00"),
            &day("14:00:01"),
            person("24273", None, None),
            vec![carol.clone()],
            None,
            "Your code is 123456",
            vec![],
        ),
        message(
            "m07",
            "sms",
            "inbound",
            &day("15:00:00"),
            &day("15:00:01"),
            person("ACMEBANK", None, None),
            vec![dave.clone()],
            None,
            "Payment received",
            vec![],
        ),
        message(
            "m08",
            "sms",
            "inbound",
            &day("16:00:00"),
            &day("16:00:01"),
            outside.clone(),
            vec![reassigned.clone()],
            None,
            "Hi, new owner?",
            vec![],
        ),
        message(
            "m09",
            "sms",
            "inbound",
            "2026-11-24T23:30:00Z",
            &day("03:00:00"),
            outside.clone(),
            vec![reassigned],
            None,
            "Message for the old owner",
            vec![],
        ),
        message(
            "m10",
            "sms",
            "inbound",
            &day("17:00:00"),
            &day("17:00:01"),
            person("+13125550100", None, None),
            vec![person("+12025550199", None, None)],
            None,
            "Nobody's phone",
            vec![],
        ),
        message(
            "m11",
            "fax",
            "inbound",
            &day("18:00:00"),
            &day("18:00:01"),
            outside.clone(),
            vec![alice.clone()],
            None,
            "Not a kind we know",
            vec![],
        ),
        message(
            "m12",
            "mms",
            "inbound",
            &day("19:00:00"),
            &day("19:00:01"),
            outside.clone(),
            vec![bob.clone()],
            Some("Big video"),
            "12 MB",
            vec![video],
        ),
        message(
            "m13",
            "sms",
            "inbound",
            &day("20:00:00"),
            &day("20:00:01"),
            outside.clone(),
            vec![carol],
            None,
            "שלום 👋 مرحبا بك — 你好",
            vec![],
        ),
        message(
            "m14",
            "sms",
            "inbound",
            &day("21:00:00"),
            &day("21:00:01"),
            outside.clone(),
            vec![person("+12025550105", None, None)],
            None,
            "For a user without a mailbox",
            vec![],
        ),
        // A late re-delivery of m05 in the next window: archived once only.
        message(
            "m05",
            "sms",
            "outbound",
            &day("13:00:00"),
            "2026-11-26T02:30:00Z",
            alice,
            vec![bob],
            None,
            "Lunch?",
            vec![],
        ),
    ];
    for m in messages {
        source.add_message(m);
    }
    BTreeMap::from([
        (
            "alice@acme.example",
            vec!["m01", "m02", "m03", "m04", "m05"],
        ),
        ("bob@acme.example", vec!["m02", "m03", "m05", "m12"]),
        ("carol@acme.example", vec!["m06", "m13"]),
        ("dave@acme.example", vec!["m07", "m08"]),
        ("erin@acme.example", vec!["m09"]),
    ])
}

pub(crate) const MAPPING: &str = "phone,email,valid_from,valid_to\n\
    12025550103,carol@acme.example,,\n\
    +12025550150,erin@acme.example,,2026-11-24\n\
    +12025550150,dave@acme.example,2026-11-25,\n\
    +12025550105,frank@acme.example,,\n";

pub(crate) async fn admin(
    app: &App,
    method: &str,
    path: &str,
    content_type: &str,
    body: String,
) -> Value {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", content_type)
        .body(Bytes::from(body))
        .unwrap();
    let response = app.send(request).await.unwrap();
    assert!(
        response.status < 300,
        "{method} {path}: {} {}",
        response.status,
        response.text()
    );
    response.json().unwrap_or(Value::Null)
}

/// Each user's archived emails: source id -> (Message-ID, receivedAt, subject, thread, sizes).
pub(crate) async fn folder_contents(jmap: &Jmap, account: &str) -> BTreeMap<String, Value> {
    let mailboxes = jmap
        .call(
            "Mailbox/get",
            json!({ "accountId": account, "ids": null, "properties": ["id", "name", "parentId"] }),
        )
        .await;
    let mailboxes: Vec<Mailbox> = serde_json::from_value(mailboxes["list"].clone()).unwrap();
    let Some(folder) = find_folder(&mailboxes, FOLDER) else {
        return BTreeMap::new();
    };
    let parent = mailboxes
        .iter()
        .find(|m| m.id == folder)
        .unwrap()
        .parent_id
        .clone();
    let parent_name = mailboxes
        .iter()
        .find(|m| Some(&m.id) == parent.as_ref())
        .map(|m| m.name.as_str());
    assert_eq!(
        parent_name,
        Some("AT&T SMS"),
        "Cyrus holds the folder as a hierarchy"
    );
    // The tests share one mail server, so a folder holds every other test's copies too: it is
    // read page by page to its end, never only its first page. Tests running meanwhile only add
    // emails, which moves an email to a later page but never past the reader: an email met on
    // two pages is one email (the same JMAP id), read once.
    const PAGE: usize = 200;
    let mut seen = std::collections::BTreeSet::new();
    let mut contents = BTreeMap::new();
    for position in (0..).step_by(PAGE) {
        let ids = jmap
            .call(
                "Email/query",
                json!({ "accountId": account, "filter": { "inMailbox": folder },
                        "sort": [{ "property": "receivedAt" }],
                        "position": position, "limit": PAGE }),
            )
            .await;
        let page = ids["ids"].as_array().unwrap().len();
        let emails = jmap
            .call(
                "Email/get",
                json!({ "accountId": account, "ids": ids["ids"], "properties": [
                    "id", "messageId", "receivedAt", "subject", "threadId", "attachments", "keywords",
                    "header:X-Archive-Source-Id:asText"
                ], "bodyProperties": ["size", "name", "type"] }),
            )
            .await;
        for email in emails["list"].as_array().unwrap() {
            if !seen.insert(email["id"].as_str().unwrap().to_string()) {
                continue;
            }
            let source_id = email["header:X-Archive-Source-Id:asText"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                contents.insert(source_id.clone(), email.clone()).is_none(),
                "{source_id} twice in {account}"
            );
        }
        if page < PAGE {
            break;
        }
    }
    contents
}

#[tokio::test(flavor = "multi_thread")]
async fn a_day_of_texts_lands_in_each_users_folder_once() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let expected = the_day(&source);
    source.set_page_cap(4);
    // Steps of 3 messages, pages of 4: steps stop in the middle of pages and go on from there.
    let app = archiver_in_steps(&source, 3);
    create_connector(&app, &source, CONNECTOR).await;
    admin(
        &app,
        "PUT",
        &format!("/api/connectors/{CONNECTOR}/mapping"),
        "text/csv",
        MAPPING.into(),
    )
    .await;

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
        let contents = folder_contents(&jmap, user).await;
        let found: Vec<&str> = contents.keys().map(String::as_str).collect();
        assert_eq!(&found, ids, "{user}'s folder");
        for (id, email) in &contents {
            assert_eq!(
                email["messageId"][0],
                message_id(CONNECTOR, id, DOMAIN),
                "{user} {id}"
            );
            assert_eq!(email["receivedAt"], sent_at[id.as_str()], "{user} {id}");
            assert_eq!(email["keywords"].get("$draft"), None, "{user} {id}");
        }
        before.insert(*user, contents);
    }
    let alice = &before["alice@acme.example"];
    assert_eq!(
        alice["m02"]["threadId"], alice["m03"]["threadId"],
        "a group conversation is one thread, though its MMS subjects change"
    );
    assert_eq!(
        alice["m01"]["threadId"], alice["m04"]["threadId"],
        "both directions thread"
    );
    assert_ne!(alice["m01"]["threadId"], alice["m02"]["threadId"]);
    assert_eq!(
        alice["m02"]["subject"],
        "Texts with +12025550101, +12025550102, +13125550199"
    );
    assert_eq!(alice["m03"]["subject"], alice["m02"]["subject"]);
    assert_eq!(
        alice["m01"]["subject"],
        "Texts with +12025550101, +13125550199"
    );
    assert_eq!(alice["m02"]["attachments"][0]["size"], 30_000);
    assert_eq!(alice["m02"]["attachments"][0]["name"], "IMG_0042.jpg");
    let bob = &before["bob@acme.example"];
    assert_eq!(bob["m12"]["attachments"][0]["size"], 12 * 1024 * 1024);
    assert_eq!(
        before["carol@acme.example"]["m13"]["subject"],
        "Texts with +12025550103, +13125550199"
    );

    let status = admin(
        &app,
        "GET",
        &format!("/api/connectors/{CONNECTOR}/status"),
        "application/json",
        String::new(),
    )
    .await;
    let run = &status["runs"][0];
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["figures"]["fetched"], 14, "{run}");
    assert_eq!(run["figures"]["invalid"], 1);
    assert_eq!(run["figures"]["unmapped"], 1);
    assert_eq!(run["figures"]["available_for_import"], 15);
    assert_eq!(run["figures"]["failed"], 1, "frank has no mailbox");
    assert_eq!(run["invariant_holds"], true);
    assert!(
        run["progress"]["steps"].as_u64().unwrap() >= 8,
        "14 messages in steps of 3, fetch and import: {run}"
    );
    let pages = source
        .requests()
        .iter()
        .filter(|r| r.1.starts_with("/v1/messages") && r.2)
        .count();
    assert!(
        pages >= 4,
        "the window spans several pages ({pages} requests)"
    );
    let video_pieces = source
        .requests()
        .iter()
        .filter(|r| r.1.starts_with("/v1/attachments/a-video"))
        .count();
    assert!(
        video_pieces >= 48,
        "12 MB read in pieces of at most 256 KiB ({video_pieces} requests)"
    );
    let reasons: Vec<(String, String)> = status["not_imported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["item_id"].as_str().unwrap().to_string(),
                n["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&("m10".into(), "unmapped".into())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("m11".into(), "invalid_source_record".into())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("m14".into(), "no_such_mailbox".into())),
        "{reasons:?}"
    );

    // The next timer event re-reads the overlap (and m05's late re-delivery): nothing is added.
    assert_eq!(
        fire_timer(&app, TIMER + 3600).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    for (user, contents) in &before {
        let after = folder_contents(&jmap, user).await;
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            contents.keys().collect::<Vec<_>>(),
            "{user}"
        );
    }
    assert!(
        app.kv_keys("default")
            .unwrap()
            .iter()
            .all(|k| !k.starts_with("stage/")),
        "staging is purged"
    );
}

/// An id no earlier run used, so a scenario holds on a mail server that kept earlier runs.
pub(crate) fn unique(prefix: &str) -> String {
    let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    format!("{prefix}-{nanos}")
}

/// Users the day's scenario does not use, free for the fault scenarios.
pub(crate) fn grace() -> Value {
    person(
        "+12025550107",
        Some("grace@acme.example"),
        Some("Grace Lee"),
    )
}

pub(crate) fn heidi() -> Value {
    person(
        "+12025550108",
        Some("heidi@acme.example"),
        Some("Heidi Roth"),
    )
}

/// Creates connector `id` for `source` through the admin API, automatic mapping on.
pub(crate) async fn create_connector(app: &App, source: &SourceSimulator, id: &str) {
    let body = json!({ "display_name": "AT&T", "network": "AT&T", "source_url": source.base_url(),
        "username": "att-admin", "password": "archive-password", "automatic_mapping": true });
    admin(
        app,
        "PUT",
        &format!("/api/connectors/{id}"),
        "application/json",
        body.to_string(),
    )
    .await;
}

/// The archiver on the test host, reading `source` and delivering to the test mail server.
fn archiver(source: &SourceSimulator) -> App {
    archiver_at(source, "http://127.0.0.1:18080", JMAP_SESSION_URL, None)
}

/// The archiver with runs cut into steps of at most `items` messages each.
fn archiver_in_steps(source: &SourceSimulator, items: usize) -> App {
    archiver_with(source, &[("step_max_items", &items.to_string())])
}

/// The archiver with some variables set.
fn archiver_with(source: &SourceSimulator, variables: &[(&str, &str)]) -> App {
    let mut builder = builder(source, "http://127.0.0.1:18080", JMAP_SESSION_URL);
    for (name, value) in variables {
        builder = builder.variable(name, *value);
    }
    on_store(builder).build().unwrap()
}

pub(crate) fn builder(
    source: &SourceSimulator,
    origin: &str,
    session_url: &str,
) -> archiver_tests::AppBuilder {
    App::builder("spin.toml")
        .listening("app_origin")
        .unwrap()
        .variable("admin_token", TOKEN)
        .variable("timer_token", TIMER_TOKEN)
        .variable("timer_retry_seconds", "2")
        .variable("staging_key", "6b".repeat(32))
        .variable("source_origin", source.origin())
        .variable("jmap_origin", origin)
        .variable("jmap_session_url", session_url)
        .variable("jmap_username", JMAP_USER)
        .variable("jmap_password", JMAP_PASSWORD)
}

/// The archiver on the test host, reading `source` and delivering to `session_url`; on the
/// store of `same_store_as` when given (another deployment on the same state).
fn archiver_at(
    source: &SourceSimulator,
    origin: &str,
    session_url: &str,
    same_store_as: Option<&App>,
) -> App {
    let builder = builder(source, origin, session_url);
    match same_store_as {
        Some(app) => builder.same_store_as(app).unwrap(),
        None => on_store(builder),
    }
    .build()
    .unwrap()
}

/// The daily timer fires as Spin's cron trigger fires it: the timer component hands the event to
/// the app's listener, whose route starts the due runs. Waits until every invocation is done,
/// then answers like the timer's result, and with the errors of every timer run it started
/// that failed.
pub(crate) async fn fire_timer(app: &App, timestamp: u64) -> anyhow::Result<Result<(), String>> {
    let started = chrono::Utc::now();
    let fired = app.fire_cron("archive-timer", timestamp).await?;
    app.settle().await;
    if let Err(reason) = fired {
        return Ok(Err(reason));
    }
    let connectors = admin(
        app,
        "GET",
        "/api/connectors",
        "application/json",
        String::new(),
    )
    .await;
    let mut errors = Vec::new();
    for connector in connectors["connectors"].as_array().into_iter().flatten() {
        let id = connector["id"].as_str().unwrap_or_default();
        let runs = admin(
            app,
            "GET",
            &format!("/api/connectors/{id}/runs"),
            "application/json",
            String::new(),
        )
        .await;
        for run in runs["runs"].as_array().into_iter().flatten() {
            let requested: chrono::DateTime<chrono::Utc> =
                run["requested_at"].as_str().unwrap_or_default().parse()?;
            if run["trigger"] == "timer" && requested >= started && run["state"] != "succeeded" {
                errors.push(format!("{id}: {}: {}", run["state"], run["error"]));
            }
        }
    }
    Ok(match errors.is_empty() {
        true => Ok(()),
        false => Err(errors.join("; ")),
    })
}

/// Lets the connector's lease run out, as time passing after a stopped run would.
pub(crate) fn expire_lease(app: &App, connector: &str) {
    let key = archiver_core::lease::lease_key(connector);
    if let Some(mut lease) =
        archiver_core::lease::decode(app.kv_get("default", &key).unwrap().as_deref())
    {
        lease.expires_at = "2000-01-01T00:00:00Z".parse().unwrap();
        app.kv_set("default", &key, &serde_json::to_vec(&lease).unwrap())
            .unwrap();
    }
}

pub(crate) async fn status_of(app: &App, connector: &str) -> Value {
    admin(
        app,
        "GET",
        &format!("/api/connectors/{connector}/status"),
        "application/json",
        String::new(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn source_and_destination_failures_lose_nothing_and_are_caught_up() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let item = unique("g");
    let grace = grace();
    let outside = person("+13125550177", None, None);
    source.add_message(message(
        &item,
        "sms",
        "inbound",
        "2026-11-25T09:00:00Z",
        "2026-11-25T09:00:01Z",
        outside,
        vec![grace],
        None,
        "Kept safe through outages",
        vec![],
    ));
    // The mail server is down at first: nothing listens on port 9.
    let app = archiver_at(
        &source,
        "http://127.0.0.1:9",
        "http://127.0.0.1:9/jmap/",
        None,
    );
    let connector = "att-outages";
    create_connector(&app, &source, connector).await;

    // The archive stays unavailable through every retry: the run fails, the window is kept.
    source.fail_next("/v1/messages", 503, 4);
    assert!(fire_timer(&app, TIMER).await.unwrap().is_err());
    let status = status_of(&app, connector).await;
    assert_eq!(status["runs"][0]["state"], "failed");
    assert!(
        status["runs"][0]["error"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{status}"
    );
    assert!(
        app.kv_get("default", &format!("connector/{connector}/watermark"))
            .unwrap()
            .is_none()
    );
    let requests = source
        .requests()
        .iter()
        .filter(|r| r.1.starts_with("/v1/messages"))
        .count();
    assert_eq!(requests, 4, "retried with back-off before giving up");

    // Refused credentials raise the health flag.
    source.set_password("rotated");
    assert!(fire_timer(&app, TIMER).await.unwrap().is_err());
    let status = status_of(&app, connector).await;
    assert!(
        status["health"]["source_login_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("401"),
        "{status}"
    );
    source.set_password("archive-password");

    // A 429 with Retry-After and a page cut short are retried; the item is staged, but the mail
    // server is down.
    source.fail_next("/v1/messages", 429, 1);
    source.inject("/v1/messages", Fault::Truncated, 1);
    assert!(fire_timer(&app, TIMER).await.unwrap().is_err());
    let status = status_of(&app, connector).await;
    assert_eq!(
        status["health"]["source_login_failure"],
        Value::Null,
        "cleared by a good login"
    );
    assert!(
        status["runs"][0]["error"]
            .as_str()
            .unwrap()
            .contains("mail server"),
        "{status}"
    );
    assert!(
        app.kv_keys("default")
            .unwrap()
            .iter()
            .any(|k| k.starts_with(&format!("stage/{connector}/")))
    );
    assert!(
        !folder_contents(&jmap, "grace@acme.example")
            .await
            .contains_key(&item)
    );
    for key in app.kv_keys("default").unwrap() {
        let value = app.kv_get("default", &key).unwrap().unwrap();
        let text = String::from_utf8_lossy(&value);
        assert!(
            !text.contains("Kept safe through outages"),
            "{key} holds a message in clear"
        );
    }

    // The next day, with the mail server back, the staged item is delivered exactly once.
    let recovered = archiver_at(
        &source,
        "http://127.0.0.1:18080",
        JMAP_SESSION_URL,
        Some(&app),
    );
    assert_eq!(
        fire_timer(&recovered, TIMER + 86_400).await.unwrap(),
        Ok(()),
        "{}",
        recovered.logs()
    );
    let delivered = folder_contents(&jmap, "grace@acme.example").await;
    assert!(
        delivered.contains_key(&item),
        "delivered once (folder_contents rejects twins)"
    );
    assert_eq!(
        status_of(&recovered, connector).await["runs"][0]["state"],
        "succeeded"
    );
    assert!(
        recovered
            .kv_keys("default")
            .unwrap()
            .iter()
            .all(|k| !k.starts_with("stage/"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_attachment_with_wrong_bytes_is_reported_and_retried_never_archived_wrong() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let item = unique("w");
    let right: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let mut wrong = right.clone();
    wrong[123_456] ^= 0xff;
    source.add_attachment("a-doc", "application/pdf", wrong);
    let meta = json!({ "id": "a-doc", "filename": "contract.pdf", "content_type": "application/pdf",
        "size": right.len(), "sha256": sha256_hex(&right) });
    let grace = grace();
    let outside = person("+13125550166", None, None);
    source.add_message(message(
        &item,
        "mms",
        "inbound",
        "2026-11-25T08:00:00Z",
        "2026-11-25T08:00:01Z",
        outside,
        vec![grace],
        Some("Signed contract"),
        "Attached",
        vec![meta],
    ));
    let app = archiver(&source);
    let connector = "att-damaged";
    create_connector(&app, &source, connector).await;

    assert_eq!(fire_timer(&app, TIMER).await.unwrap(), Ok(()));
    let status = status_of(&app, connector).await;
    let reasons: Vec<&str> = status["not_imported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["attachment_mismatch"], "{status}");
    assert!(
        !folder_contents(&jmap, "grace@acme.example")
            .await
            .contains_key(&item)
    );
    assert!(
        app.kv_get("default", &format!("connector/{connector}/watermark"))
            .unwrap()
            .is_none(),
        "the window stays open for a retry"
    );
    assert!(
        app.kv_keys("default")
            .unwrap()
            .iter()
            .all(|k| !k.starts_with("stage/")),
        "the wrong bytes are not kept"
    );

    // The archive serves the right bytes now: the next run takes the same window again.
    source.add_attachment("a-doc", "application/pdf", right);
    assert_eq!(fire_timer(&app, TIMER + 3600).await.unwrap(), Ok(()));
    let delivered = folder_contents(&jmap, "grace@acme.example").await;
    assert_eq!(delivered[&item]["attachments"][0]["size"], 300_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_any_key_value_write_loses_nothing_and_duplicates_nothing() {
    let jmap = Jmap::connect().await;
    let (mut crash_points, mut redone_steps, mut redone_after_delivery) = (0, 0, 0);
    for writes_before_crash in 0.. {
        let source = SourceSimulator::start("att-admin", "archive-password").await;
        let item = unique(&format!("c{writes_before_crash}"));
        let photo = attachment(&source, "a-crash", "crash.jpg", "image/jpeg", 300_000);
        let grace = grace();
        source.add_message(message(
            &item,
            "mms",
            "inbound",
            "2026-11-25T07:00:00Z",
            "2026-11-25T07:00:01Z",
            person("+13125550155", None, None),
            vec![grace],
            Some("Crash test"),
            "Exactly once",
            vec![photo],
        ));
        let app = archiver(&source);
        create_connector(&app, &source, "att-crash").await;

        app.crash_after_kv_writes(Some(writes_before_crash));
        let first = fire_timer(&app, TIMER).await;
        app.crash_after_kv_writes(None);
        if matches!(first, Ok(Ok(()))) {
            break; // past the last write: every crash point was tried
        }
        crash_points += 1;
        // A stopped import step may be sent again within its run (as a driver retrying it
        // would): it must not deliver again what it delivered before it stopped.
        let runs = admin(
            &app,
            "GET",
            "/api/connectors/att-crash/runs",
            "application/json",
            String::new(),
        )
        .await;
        let run = &runs["runs"][0];
        if run["state"] == "running" && run["progress"]["phase"] == "import" {
            redone_steps += 1;
            let held = folder_contents(&jmap, "grace@acme.example")
                .await
                .contains_key(&item);
            let uploads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counted = uploads.clone();
            app.rewrite_outbound("http://127.0.0.1:18080/jmap/upload/", 1, move |_| {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                None
            });
            let step =
                http::Request::post(format!("/import/att-crash/{}", run["id"].as_str().unwrap()))
                    .body(Bytes::new())
                    .unwrap();
            let answer = app.send_internal("archive-import", step).await.unwrap();
            assert_eq!(answer.status, 200, "{}", answer.text());
            if held {
                redone_after_delivery += 1;
                assert_eq!(
                    uploads.load(std::sync::atomic::Ordering::SeqCst),
                    0,
                    "the step redone after a crash at write {writes_before_crash} uploaded \
                     again a copy the mailbox held"
                );
            }
        }
        // The stopped run's lease runs out before the next run.
        expire_lease(&app, "att-crash");
        let second = fire_timer(&app, TIMER + 3600).await.unwrap();
        assert_eq!(
            second,
            Ok(()),
            "after a crash at write {writes_before_crash}: {}",
            app.logs()
        );
        let delivered = folder_contents(&jmap, "grace@acme.example").await;
        assert!(
            delivered.contains_key(&item),
            "a crash at write {writes_before_crash} lost the message"
        );
        let status = status_of(&app, "att-crash").await;
        for run in status["runs"].as_array().unwrap() {
            assert_eq!(
                run["invariant_holds"], true,
                "after a crash at write {writes_before_crash}: {run}"
            );
        }
    }
    assert!(
        crash_points >= 10,
        "only {crash_points} crash points were tried"
    );
    assert!(redone_steps >= 3, "only {redone_steps} import steps redone");
    assert!(
        redone_after_delivery >= 1,
        "no step was redone after its copy was delivered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mail_server_error_keeps_the_item_staged_until_it_is_delivered_once() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let item = unique("u");
    let grace = grace();
    let heidi = heidi();
    source.add_message(message(
        &item,
        "sms",
        "inbound",
        "2026-11-25T06:00:00Z",
        "2026-11-25T06:00:01Z",
        heidi,
        vec![grace],
        None,
        "The upload of this one fails once",
        vec![],
    ));
    let app = archiver(&source);
    create_connector(&app, &source, "att-5xx").await;

    // Heidi's copy uploads; Grace's upload meets a 503 (the order is the message's).
    app.fail_outbound("http://127.0.0.1:18080/jmap/upload/grace", 503, 1);
    assert!(fire_timer(&app, TIMER).await.unwrap().is_err());
    let status = status_of(&app, "att-5xx").await;
    assert!(
        status["runs"][0]["error"].as_str().unwrap().contains("503"),
        "{status}"
    );
    assert_eq!(status["runs"][0]["invariant_holds"], true);
    assert!(
        !folder_contents(&jmap, "grace@acme.example")
            .await
            .contains_key(&item)
    );
    assert!(
        folder_contents(&jmap, "heidi@acme.example")
            .await
            .contains_key(&item)
    );

    assert_eq!(fire_timer(&app, TIMER + 3600).await.unwrap(), Ok(()));
    assert!(
        folder_contents(&jmap, "grace@acme.example")
            .await
            .contains_key(&item)
    );
    assert!(
        folder_contents(&jmap, "heidi@acme.example")
            .await
            .contains_key(&item),
        "and still once"
    );
    let status = status_of(&app, "att-5xx").await;
    assert_eq!(status["runs"][0]["state"], "succeeded", "{status}");
    assert_eq!(
        status["runs"][0]["figures"]["skipped_duplicate"], 1,
        "heidi's copy is not sent twice"
    );
    // The text's day counts it once, with both copies imported: the first run's failure was
    // not final, and the second run's skip of heidi's copy is not a second outcome.
    let days = status["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{status}");
    assert_eq!(days[0]["day"], "2026-11-25");
    assert_eq!(
        (
            &days[0]["fetched"],
            &days[0]["available_for_import"],
            &days[0]["imported"],
            &days[0]["skipped_duplicate"],
            &days[0]["failed"]
        ),
        (&json!(1), &json!(2), &json!(2), &json!(0), &json!(0)),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_day_backfilled_twice_counts_its_texts_once_on_their_own_day() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    three_texts(&source, "b");
    let app = archiver(&source);
    create_connector(&app, &source, "att-backfill").await;
    let backfill = json!({ "since": "2026-11-25T00:00:00Z", "until": "2026-11-26T00:00:00Z" });
    for _ in 0..2 {
        let run = admin(
            &app,
            "POST",
            "/api/connectors/att-backfill/runs",
            "application/json",
            backfill.to_string(),
        )
        .await;
        app.settle().await;
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_eq!(run["figures"]["fetched"], 3, "{run}");
    }
    let status = status_of(&app, "att-backfill").await;
    assert_eq!(status["runs"].as_array().unwrap().len(), 2, "runs apart");
    let days = status["days"].as_array().unwrap();
    assert_eq!(
        days.len(),
        1,
        "only the texts' day, not the day of the runs: {status}"
    );
    assert_eq!(days[0]["day"], "2026-11-25");
    assert_eq!(days[0]["fetched"], 3, "{status}");
    // Each text has two users, Grace and Heidi.
    assert_eq!(days[0]["available_for_import"], 6, "{status}");
    assert_eq!(days[0]["imported"], 6, "{status}");
    assert_eq!(days[0]["invariant_holds"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_text_the_archive_lists_twice_in_a_window_counts_once() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let texts = (0..5)
        .map(|n| {
            let id = unique(&format!("twice{n}"));
            source.add_message(message(
                &id,
                "sms",
                "inbound",
                &format!("2026-11-25T1{n}:00:00Z"),
                &format!("2026-11-25T1{n}:00:01Z"),
                heidi(),
                vec![grace()],
                None,
                "Listed twice",
                vec![],
            ));
            id
        })
        .collect::<Vec<_>>();
    let unreadable = unique("twice-fax");
    source.add_message(message(
        &unreadable,
        "fax",
        "inbound",
        "2026-11-25T09:00:00Z",
        "2026-11-25T09:00:01Z",
        heidi(),
        vec![grace()],
        None,
        "Not a kind we know",
        vec![],
    ));
    // Pages of three: [fax, 0, 1] [2, 3, 3 again] [4, 0 again, fax again].
    source.set_page_cap(3);
    source.relist(&texts[3], "2026-11-25T13:00:01Z");
    source.relist(&texts[0], "2026-11-25T14:30:00Z");
    source.relist(&unreadable, "2026-11-25T14:40:00Z");
    // Steps of two messages, so the import may deliver text 0 before its second listing.
    let app = archiver_in_steps(&source, 2);
    let connector = "att-twice";
    create_connector(&app, &source, connector).await;
    let backfill = json!({ "since": "2026-11-25T00:00:00Z", "until": "2026-11-26T00:00:00Z" });
    for attempt in 0..2 {
        let run = admin(
            &app,
            "POST",
            &format!("/api/connectors/{connector}/runs"),
            "application/json",
            backfill.to_string(),
        )
        .await;
        app.settle().await;
        let run = admin(
            &app,
            "GET",
            &format!(
                "/api/connectors/{connector}/runs/{}",
                run["id"].as_str().unwrap()
            ),
            "application/json",
            String::new(),
        )
        .await;
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_eq!(
            run["figures"]["fetched"], 6,
            "each text once in its run: {run}"
        );
        assert_eq!(run["figures"]["invalid"], 1, "{run}");
        if attempt == 0 {
            assert_eq!(run["figures"]["available_for_import"], 10, "{run}");
            assert_eq!(run["figures"]["imported"], 10, "{run}");
        }
    }
    let status = status_of(&app, connector).await;
    let days = status["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{status}");
    assert_eq!(days[0]["fetched"], 6, "each text once in its day: {status}");
    assert_eq!(days[0]["invalid"], 1, "{status}");
    assert_eq!(days[0]["available_for_import"], 10, "{status}");
    assert_eq!(days[0]["imported"], 10, "{status}");
    assert_eq!(days[0]["invariant_holds"], true);
    for user in ["heidi@acme.example", "grace@acme.example"] {
        for text in &texts {
            let found = jmap
                .call(
                    "Email/query",
                    json!({ "accountId": user,
                        "filter": { "header": ["X-Archive-Source-Id", text] } }),
                )
                .await;
            let ids = found["ids"].as_array().cloned().unwrap_or_default();
            assert_eq!(ids.len(), 1, "{user}'s copies of {text}: {found}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_mms_is_read_from_staging_once_for_all_its_copies() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let item = unique("g");
    // Three staged chunks of 256 KiB.
    let photo = attachment(&source, "g-photo", "photo.jpg", "image/jpeg", 700_000);
    source.add_message(message(
        &item,
        "mms",
        "outbound",
        "2026-11-25T07:00:00Z",
        "2026-11-25T07:00:01Z",
        heidi(),
        vec![grace()],
        None,
        "Photo for the two of us",
        vec![photo],
    ));
    let app = archiver(&source);
    let connector = "att-group";
    create_connector(&app, &source, connector).await;
    app.watch_kv_reads(&format!("stage/{connector}/"));

    assert_eq!(fire_timer(&app, TIMER).await.unwrap(), Ok(()));
    for user in ["heidi@acme.example", "grace@acme.example"] {
        assert!(
            folder_contents(&jmap, user).await.contains_key(&item),
            "{user} has no copy"
        );
    }
    // Each chunk was read once, for both uploads together.
    let chunk_reads: Vec<String> = app
        .kv_reads()
        .into_iter()
        .filter(|key| key.split('/').count() == 5)
        .collect();
    assert_eq!(chunk_reads.len(), 3, "{chunk_reads:?}");
    let mut distinct = chunk_reads.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "a chunk read twice: {chunk_reads:?}");
    let status = status_of(&app, connector).await;
    assert_eq!(status["runs"][0]["figures"]["imported"], 2, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_60_mb_attachment_is_archived_whole() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let item = unique("big");
    let video = attachment(
        &source,
        "a-60mb",
        "drone.mp4",
        "video/mp4",
        60 * 1024 * 1024,
    );
    let heidi = heidi();
    source.add_message(message(
        &item,
        "mms",
        "inbound",
        "2026-11-25T05:00:00Z",
        "2026-11-25T05:00:01Z",
        person("+13125550144", None, None),
        vec![heidi],
        Some("Survey footage"),
        "60 MB",
        vec![video],
    ));
    let app = archiver(&source);
    create_connector(&app, &source, "att-big").await;
    assert_eq!(
        fire_timer(&app, TIMER).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    let delivered = folder_contents(&jmap, "heidi@acme.example").await;
    assert_eq!(delivered[&item]["attachments"][0]["size"], 60 * 1024 * 1024);
    assert!(
        app.kv_keys("default")
            .unwrap()
            .iter()
            .all(|k| !k.starts_with("stage/"))
    );
    // The bytes go through a chunk at a time: no invocation holds the attachment.
    for component in ["archive-fetch", "archive-import"] {
        let peak = app.peak_memory(component);
        println!("{component}: peak linear memory {} KiB", peak >> 10);
        assert!(
            peak > 0 && peak < MEMORY_BOUND,
            "{component} used {peak} bytes for a 60 MB attachment"
        );
    }
}

/// The most linear memory one invocation may use, whatever the size of the items: a step's
/// records and one staged chunk in its several forms fit well within it.
const MEMORY_BOUND: usize = 16 << 20;

/// Three texts from heidi to grace (a copy each) in the timer's first window, ids made unique
/// by `prefix`.
pub(crate) fn three_texts(source: &SourceSimulator, prefix: &str) -> Vec<String> {
    (0..3)
        .map(|n| {
            let id = unique(&format!("{prefix}{n}"));
            source.add_message(message(
                &id,
                "sms",
                "inbound",
                &format!("2026-11-25T1{n}:00:00Z"),
                &format!("2026-11-25T1{n}:00:01Z"),
                heidi(),
                vec![grace()],
                None,
                "Overlap",
                vec![],
            ));
            id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_asked_for_while_another_holds_the_connector_is_queued_and_runs_after_it() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let ids = three_texts(&source, "l");
    let app = archiver(&source);
    create_connector(&app, &source, "att-leased").await;
    // Another host's run holds the connector.
    let key = archiver_core::lease::lease_key("att-leased");
    let foreign = json!({ "holder": "run-on-another-host", "expires_at": "2999-01-01T00:00:00Z" });
    app.kv_set("default", &key, foreign.to_string().as_bytes())
        .unwrap();

    // The timer leaves the connector to the run holding it: no run, nothing fetched.
    assert_eq!(fire_timer(&app, TIMER).await.unwrap(), Ok(()));
    assert_eq!(status_of(&app, "att-leased").await["runs"], json!([]));
    // The admin's backfill waits for the connector, queued, saying why.
    let queued = admin(
        &app,
        "POST",
        "/api/connectors/att-leased/runs",
        "application/json",
        json!({ "since": "2026-11-24T00:00:00Z", "until": "2026-11-26T00:00:00Z" }).to_string(),
    )
    .await;
    assert_eq!(queued["state"], "queued", "{queued}");
    assert!(
        queued["error"]
            .as_str()
            .is_some_and(|e| e.contains("run-on-another-host")),
        "{queued}"
    );
    app.settle().await;
    assert!(
        !source
            .requests()
            .iter()
            .any(|r| r.1.starts_with("/v1/messages")),
        "nothing fetched while the other run holds the connector"
    );
    assert_eq!(
        app.kv_get("default", &key).unwrap().unwrap(),
        foreign.to_string().as_bytes(),
        "the other run's lease is untouched"
    );

    // When the connector is free, the next run takes it and then runs the queued backfill.
    expire_lease(&app, "att-leased");
    assert_eq!(
        fire_timer(&app, TIMER + 60).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    let runs = status_of(&app, "att-leased").await["runs"].clone();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r["state"] == "succeeded"), "{runs:?}");
    let backfill = runs.iter().find(|r| r["trigger"] == "manual").unwrap();
    assert_eq!(backfill["id"], queued["id"]);
    let delivered = folder_contents(&jmap, "grace@acme.example").await;
    assert!(ids.iter().all(|id| delivered.contains_key(id)));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_import_begins_on_what_is_staged_while_the_fetch_goes_on() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let ids: Vec<String> = (0..12)
        .map(|n| {
            let id = unique(&format!("p{n:02}"));
            source.add_message(message(
                &id,
                "sms",
                "inbound",
                &format!("2026-11-25T10:{n:02}:00Z"),
                &format!("2026-11-25T10:{n:02}:01Z"),
                person("+13125550177", None, None),
                vec![grace()],
                None,
                "Imported while the rest is fetched",
                vec![],
            ));
            id
        })
        .collect();
    // A slow archive, pages of 2 and steps of 2: the fetch takes a dozen seconds.
    source.set_page_cap(2);
    source.set_delay(std::time::Duration::from_millis(400));
    let app = archiver_in_steps(&source, 2);
    create_connector(&app, &source, "att-pipelined").await;

    assert_eq!(
        fire_timer(&app, TIMER).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    let runs = status_of(&app, "att-pipelined").await["runs"].clone();
    let run = &runs[0];
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["invariant_holds"], true, "{run}");
    assert_eq!(run["figures"]["fetched"], 12, "{run}");
    assert_eq!(run["figures"]["imported"], 12, "{run}");
    let at = |field: &Value| {
        field
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
            .unwrap_or_else(|| panic!("no time in {run}"))
    };
    let (import_began, fetched) = (
        at(&run["progress"]["import_started_at"]),
        at(&run["progress"]["fetched_at"]),
    );
    assert!(
        import_began < fetched - chrono::Duration::seconds(3),
        "the import began at {import_began}, the fetch ended at {fetched}"
    );
    // Each text once in the user's folder, the run's figures as the days' figures.
    let delivered = folder_contents(&jmap, "grace@acme.example").await;
    for id in &ids {
        assert!(delivered.contains_key(id), "{id} delivered");
    }
    let day = &run["days"]["2026-11-25"];
    assert_eq!(
        (&day["fetched"], &day["imported"]),
        (&json!(12), &json!(12)),
        "{run}"
    );
    // The lease is free for the next run.
    assert_eq!(fire_timer(&app, TIMER + 60).await.unwrap(), Ok(()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_timer_and_a_manual_run_at_once_deliver_each_text_once() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let ids = three_texts(&source, "o");
    let app = archiver_in_steps(&source, 1);
    create_connector(&app, &source, "att-overlap").await;
    // A slow archive: each run takes seconds, so the two overlap.
    source.set_delay(std::time::Duration::from_millis(150));

    let manual = async {
        let request = http::Request::post("/api/connectors/att-overlap/runs")
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Bytes::from(
                json!({ "since": "2026-11-24T00:00:00Z", "until": "2026-11-26T00:00:00Z" })
                    .to_string(),
            ))
            .unwrap();
        app.send(request).await.unwrap()
    };
    let (timer, manual) = tokio::join!(fire_timer(&app, TIMER), manual);
    assert_eq!(timer.unwrap(), Ok(()));
    assert_eq!(manual.status, 202, "{}", manual.text());
    app.settle().await;

    // The backfill ran, at once or queued after the timer's run; the timer's run either ran or
    // left the connector to the backfill. Never both at once.
    let status = status_of(&app, "att-overlap").await;
    let runs = status["runs"].as_array().unwrap();
    let backfill: Vec<&Value> = runs.iter().filter(|r| r["trigger"] == "manual").collect();
    assert_eq!(backfill.len(), 1, "{status}");
    assert_eq!(backfill[0]["state"], "succeeded", "{status}");
    assert!(runs.iter().all(|r| r["state"] == "succeeded"), "{status}");
    let fetched: u64 = runs
        .iter()
        .map(|r| r["figures"]["fetched"].as_u64().unwrap())
        .sum();
    let imported: u64 = runs
        .iter()
        .map(|r| r["figures"]["imported"].as_u64().unwrap())
        .sum();
    assert!(fetched >= 3, "{status}");
    assert_eq!(
        imported, 6,
        "each text once for each of its two users: {status}"
    );
    for user in ["grace@acme.example", "heidi@acme.example"] {
        let delivered = folder_contents(&jmap, user).await;
        assert!(ids.iter().all(|id| delivered.contains_key(id)), "{user}");
    }
}

/// The JMAP API endpoint of the test mail server.
const JMAP_API: &str = "http://127.0.0.1:18080/jmap/";

/// A request body's `Email/import` calls into an account of `user`: the request, and the
/// indices of those calls (none: `None`).
fn email_imports_for(body: &[u8], user: &str) -> Option<(Value, Vec<usize>)> {
    let request: Value = serde_json::from_slice(body).ok()?;
    let calls: Vec<usize> = request["methodCalls"]
        .as_array()?
        .iter()
        .enumerate()
        .filter(|(_, call)| {
            call[0] == "Email/import"
                && call[1]["accountId"]
                    .as_str()
                    .is_some_and(|a| a.contains(user))
        })
        .map(|(n, _)| n)
        .collect();
    (!calls.is_empty()).then_some((request, calls))
}

#[tokio::test(flavor = "multi_thread")]
async fn one_email_failing_inside_a_batch_is_retried_and_the_others_land_once() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let ids = three_texts(&source, "p");
    let app = archiver(&source);
    create_connector(&app, &source, "att-partial").await;
    // The mail server itself refuses one email of grace's batch: its blob is unknown to it.
    app.rewrite_outbound(JMAP_API, 1, |body| {
        let (mut request, calls) = email_imports_for(body, "grace")?;
        let emails = &mut request["methodCalls"][calls[0]][1]["emails"];
        let first = emails.as_object()?.keys().next()?.clone();
        emails[&first]["blobId"] = json!("Gnotablob");
        Some(Rewrite::Body(request.to_string().into_bytes()))
    });

    let first = fire_timer(&app, TIMER).await.unwrap();
    assert!(first.is_err(), "a copy failed: the run says so");
    let status = status_of(&app, "att-partial").await;
    let run = &status["runs"][0];
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("did not import an email"),
        "{run}"
    );
    assert_eq!(run["figures"]["imported"], 5, "{run}");
    assert_eq!(run["figures"]["failed"], 1, "{run}");
    assert_eq!(run["invariant_holds"], true);
    assert_eq!(
        folder_contents(&jmap, "grace@acme.example")
            .await
            .keys()
            .filter(|k| ids.contains(k))
            .count(),
        2
    );

    assert_eq!(
        fire_timer(&app, TIMER + 3600).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    for user in ["grace@acme.example", "heidi@acme.example"] {
        let delivered = folder_contents(&jmap, user).await;
        assert!(ids.iter().all(|id| delivered.contains_key(id)), "{user}");
    }
    let status = status_of(&app, "att-partial").await;
    let retry = &status["runs"][0];
    assert_eq!(retry["state"], "succeeded", "{retry}");
    assert_eq!(retry["figures"]["imported"], 1, "{retry}");
    assert_eq!(
        retry["figures"]["skipped_duplicate"], 1,
        "heidi's copy of the kept item is not sent twice: {retry}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_the_mail_server_refuses_is_reported_with_its_reason_and_not_retried() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let ids = three_texts(&source, "r");
    let app = archiver(&source);
    create_connector(&app, &source, "att-refused").await;
    // Grace's mailbox refuses every email (the real server, given a keyword it does not take);
    // nothing reaches it.
    app.rewrite_outbound(JMAP_API, usize::MAX, |body| {
        let (mut request, calls) = email_imports_for(body, "grace")?;
        for call in calls {
            for email in request["methodCalls"][call][1]["emails"]
                .as_object_mut()?
                .values_mut()
            {
                email["keywords"] = json!({ "not a keyword": true });
            }
        }
        Some(Rewrite::Body(request.to_string().into_bytes()))
    });

    assert_eq!(
        fire_timer(&app, TIMER).await.unwrap(),
        Ok(()),
        "a refusal is an outcome, not a failure of the run"
    );
    let status = status_of(&app, "att-refused").await;
    let run = &status["runs"][0];
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["figures"]["imported"], 3, "{run}");
    assert_eq!(run["figures"]["failed"], 3, "{run}");
    assert_eq!(run["invariant_holds"], true);
    let refusals: Vec<&Value> = status["not_imported"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["reason"] == "destination_refused")
        .collect();
    assert_eq!(refusals.len(), 3, "{status}");
    for refusal in refusals {
        assert_eq!(refusal["target_user"], "grace@acme.example");
        assert!(
            refusal["detail"]
                .as_str()
                .unwrap()
                .contains("invalidProperties"),
            "{refusal}"
        );
    }
    let grace = folder_contents(&jmap, "grace@acme.example").await;
    assert!(ids.iter().all(|id| !grace.contains_key(id)));

    // The next run does not try again: the items are settled, and staging is purged.
    assert_eq!(fire_timer(&app, TIMER + 3600).await.unwrap(), Ok(()));
    let again = &status_of(&app, "att-refused").await["runs"][0];
    assert_eq!(again["figures"]["available_for_import"], 0, "{again}");
    assert!(
        app.kv_keys("default")
            .unwrap()
            .iter()
            .all(|k| !k.starts_with("stage/")),
        "staging is purged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_archive_error_500_or_a_page_that_is_not_json_is_asked_for_again() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let ids = three_texts(&source, "j");
    let app = archiver(&source);
    create_connector(&app, &source, "att-html").await;
    source.fail_next("/v1/messages", 500, 1);
    source.inject("/v1/messages", Fault::NotJson, 2);

    assert_eq!(
        fire_timer(&app, TIMER).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    let asked = source
        .requests()
        .iter()
        .filter(|r| r.1.starts_with("/v1/messages"))
        .count();
    assert_eq!(asked, 4, "a 500, two HTML pages, then the page");
    let run = &status_of(&app, "att-html").await["runs"][0];
    assert_eq!(run["figures"]["fetched"], 3, "{run}");
    assert_eq!(run["figures"]["invalid"], 0, "{run}");
    let delivered = folder_contents(&jmap, "grace@acme.example").await;
    assert!(ids.iter().all(|id| delivered.contains_key(id)));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_archive_that_stalls_is_given_up_on_after_the_timeout_and_asked_again() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let ids = three_texts(&source, "t");
    let app = archiver_with(&source, &[("request_timeout_seconds", "1")]);
    create_connector(&app, &source, "att-stall").await;
    // The first page hangs far longer than the timeout; the second attempt is answered.
    source.stall("/v1/messages", std::time::Duration::from_secs(30), 1);

    let started = std::time::Instant::now();
    assert_eq!(
        fire_timer(&app, TIMER).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "the run did not wait for the stalled answer"
    );
    let pages = source
        .requests()
        .iter()
        .filter(|r| r.1.starts_with("/v1/messages"))
        .count();
    assert_eq!(source.stalled(), 1, "the first ask hung");
    assert_eq!(
        pages, 1,
        "and the second was answered (the hung one never was)"
    );
    let delivered = folder_contents(&jmap, "grace@acme.example").await;
    assert!(ids.iter().all(|id| delivered.contains_key(id)));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_undelivered_past_the_retention_is_purged_and_reported() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let ids = three_texts(&source, "e");
    let app = archiver(&source);
    create_connector(&app, &source, "att-expiry").await;
    // Grace's mailbox fails the whole first run: her copies stay staged.
    app.fail_outbound("http://127.0.0.1:18080/jmap/upload/grace", 503, 3);
    assert!(fire_timer(&app, TIMER).await.unwrap().is_err());
    assert!(
        app.kv_keys("default")
            .unwrap()
            .iter()
            .any(|k| k.starts_with("stage/att-expiry/")),
        "grace's copies are kept staged"
    );

    // Later, with a retention the staged items have outlived, the next run purges them.
    let later = builder(&source, "http://127.0.0.1:18080", JMAP_SESSION_URL)
        .same_store_as(&app)
        .unwrap()
        .variable("staging_retention_days", "0")
        .build()
        .unwrap();
    assert_eq!(
        fire_timer(&later, TIMER + 3600).await.unwrap(),
        Ok(()),
        "{}",
        later.logs()
    );
    let status = status_of(&later, "att-expiry").await;
    let run = &status["runs"][0];
    assert_eq!(run["figures"]["failed"], 3, "{run}");
    assert_eq!(
        run["figures"]["skipped_duplicate"], 3,
        "heidi's copies: {run}"
    );
    assert_eq!(run["invariant_holds"], true);
    let expired: Vec<&Value> = status["not_imported"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["reason"] == "staging_expired")
        .collect();
    assert_eq!(expired.len(), 3, "{status}");
    assert!(
        expired
            .iter()
            .all(|n| n["target_user"] == "grace@acme.example")
    );
    assert!(
        later
            .kv_keys("default")
            .unwrap()
            .iter()
            .all(|k| !k.starts_with("stage/att-expiry/")),
        "nothing lingers in staging"
    );
    let grace = folder_contents(&jmap, "grace@acme.example").await;
    assert!(ids.iter().all(|id| !grace.contains_key(id)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_day_outage_is_caught_up_day_by_day_with_no_gap() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let day = 86_400u64;
    // One text in each of the days the archive was down, and one just before.
    let times = [
        "2026-11-25T20:00:00Z",
        "2026-11-26T12:00:00Z",
        "2026-11-27T12:00:00Z",
        "2026-11-28T12:00:00Z",
        "2026-11-29T01:00:00Z",
    ];
    let ids: Vec<String> = times
        .iter()
        .map(|t| {
            let id = unique("d");
            let archived = t.replace(":00Z", ":01Z");
            source.add_message(message(
                &id,
                "sms",
                "inbound",
                t,
                &archived,
                heidi(),
                vec![grace()],
                None,
                "During the outage",
                vec![],
            ));
            id
        })
        .collect();
    let app = archiver(&source);
    create_connector(&app, &source, "att-days").await;

    assert_eq!(fire_timer(&app, TIMER).await.unwrap(), Ok(()));
    // The archive is down for the next two daily runs.
    source.fail_next("/v1/", 503, 8);
    for n in 1..=2 {
        assert!(fire_timer(&app, TIMER + n * day).await.unwrap().is_err());
    }
    let before = source.requests().len();
    assert_eq!(
        fire_timer(&app, TIMER + 3 * day).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );

    // The catch-up listed its three-day window a day at a time, with no gap between the days.
    let windows: Vec<(String, String)> = source.requests()[before..]
        .iter()
        .filter(|r| r.1.starts_with("/v1/messages"))
        .map(|r| {
            let param = |name: &str| {
                r.1.split(['?', '&'])
                    .find_map(|p| p.strip_prefix(&format!("{name}=")))
                    .unwrap()
                    .replace("%3A", ":")
            };
            (param("since"), param("until"))
        })
        .collect();
    assert_eq!(windows.len(), 4, "{windows:?}");
    for pair in windows.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "{windows:?}");
    }
    let instant = |t: &str| t.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    for (since, until) in &windows {
        assert!(instant(until) - instant(since) <= chrono::Duration::days(1));
    }
    assert_eq!(windows[3].1, "2026-11-29T02:00:00Z");
    let watermark = app
        .kv_get("default", "connector/att-days/watermark")
        .unwrap()
        .unwrap();
    assert_eq!(watermark, br#""2026-11-29T02:00:00Z""#);
    for user in ["grace@acme.example", "heidi@acme.example"] {
        let delivered = folder_contents(&jmap, user).await;
        assert!(ids.iter().all(|id| delivered.contains_key(id)), "{user}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_attachment_is_fetched_across_steps_each_range_once() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let item = unique("s");
    let size = 12 * 1024 * 1024;
    let video = attachment(&source, "a-steps", "site.mp4", "video/mp4", size);
    source.add_message(message(
        &item,
        "mms",
        "inbound",
        "2026-11-25T04:00:00Z",
        "2026-11-25T04:00:01Z",
        person("+13125550133", None, None),
        vec![grace()],
        Some("In steps"),
        "12 MB over several steps",
        vec![video],
    ));
    // Steps of at most 4 MiB: the attachment is staged over at least three fetch steps.
    let app = archiver_with(&source, &[("step_max_bytes", "4194304")]);
    create_connector(&app, &source, "att-steps").await;
    assert_eq!(
        fire_timer(&app, TIMER).await.unwrap(),
        Ok(()),
        "{}",
        app.logs()
    );
    let run = &status_of(&app, "att-steps").await["runs"][0];
    assert_eq!(run["state"], "succeeded", "{run}");
    assert_eq!(run["figures"]["fetched"], 1, "{run}");
    assert!(
        run["progress"]["steps"].as_u64().unwrap() >= 4,
        "three fetch steps and an import step: {run}"
    );
    let chunk = archiver_core::state::STAGED_CHUNK_BYTES;
    let ranges = source
        .requests()
        .iter()
        .filter(|r| r.1.starts_with("/v1/attachments/a-steps"))
        .count();
    assert_eq!(ranges, size.div_ceil(chunk), "each range read once");
    let delivered = folder_contents(&jmap, "grace@acme.example").await;
    assert_eq!(delivered[&item]["attachments"][0]["size"], size);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timer_that_cannot_reach_the_app_shows_in_the_connectors_health_until_one_gets_through() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    three_texts(&source, "t");
    let app = archiver(&source);
    create_connector(&app, &source, "att-timer").await;
    // The same deployment, its timer pointed at an origin nothing listens on.
    let misdirected = builder(&source, "http://127.0.0.1:18080", JMAP_SESSION_URL)
        .same_store_as(&app)
        .unwrap()
        .variable("app_origin", "http://127.0.0.1:9")
        .variable("timer_retry_seconds", "1")
        .build()
        .unwrap();
    let fired = fire_timer(&misdirected, TIMER).await.unwrap();
    assert!(fired.is_err(), "{fired:?}");
    let health = status_of(&app, "att-timer").await["health"].clone();
    let reason = health["timer_failure"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("the timer could not start runs") && reason.contains("127.0.0.1:9"),
        "{health}"
    );
    assert_eq!(status_of(&app, "att-timer").await["runs"], json!([]));

    // The next good event (the same day's, retried by hand here) starts the run and clears the
    // flag.
    assert_eq!(fire_timer(&app, TIMER).await.unwrap(), Ok(()));
    let status = status_of(&app, "att-timer").await;
    assert_eq!(status["health"]["timer_failure"], Value::Null, "{status}");
    assert_eq!(status["runs"][0]["figures"]["fetched"], 3, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replicas_timer_firing_at_once_starts_one_run_per_connector() {
    let jmap = Jmap::connect().await;
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let ids = three_texts(&source, "r");
    let app = archiver_in_steps(&source, 1);
    create_connector(&app, &source, "att-replicas").await;
    source.set_delay(std::time::Duration::from_millis(100));
    // Three replicas' timers fire for the same time.
    let (a, b, c) = tokio::join!(
        app.fire_cron("archive-timer", TIMER),
        app.fire_cron("archive-timer", TIMER),
        app.fire_cron("archive-timer", TIMER)
    );
    for fired in [a, b, c] {
        assert_eq!(fired.unwrap(), Ok(()));
    }
    app.settle().await;
    let status = status_of(&app, "att-replicas").await;
    let runs = status["runs"].as_array().unwrap();
    assert_eq!(
        runs.len(),
        1,
        "one run works, the others leave it: {status}"
    );
    assert_eq!(runs[0]["state"], "succeeded", "{status}");
    assert_eq!(runs[0]["figures"]["imported"], 6, "{status}");
    for user in ["grace@acme.example", "heidi@acme.example"] {
        let delivered = folder_contents(&jmap, user).await;
        assert!(ids.iter().all(|id| delivered.contains_key(id)), "{user}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_destination_check_reports_the_jmap_login_and_each_mapped_mailbox() {
    let source = SourceSimulator::start("att-admin", "archive-password").await;
    let app = archiver(&source);
    create_connector(&app, &source, CONNECTOR).await;
    admin(
        &app,
        "PUT",
        &format!("/api/connectors/{CONNECTOR}/mapping"),
        "text/csv",
        MAPPING.into(),
    )
    .await;
    let report = admin(
        &app,
        "GET",
        "/api/destination",
        "application/json",
        String::new(),
    )
    .await;
    assert_eq!(report["destination"], "jmap", "{report}");
    let checks = report["checks"].as_array().unwrap();
    let named = |name: &str| checks.iter().find(|c| c["check"] == name).cloned();
    assert_eq!(named("login").unwrap()["ok"], true, "{report}");
    assert_eq!(
        named("mailbox carol@acme.example").unwrap()["ok"],
        true,
        "{report}"
    );
    let frank = named("mailbox frank@acme.example").unwrap();
    assert_eq!(frank["ok"], false, "frank has no mailbox: {report}");
    assert_eq!(report["ok"], false);

    let wrong = archiver_with(&source, &[("jmap_password", "not-the-password")]);
    let report = admin(
        &wrong,
        "GET",
        "/api/destination",
        "application/json",
        String::new(),
    )
    .await;
    let login = &report["checks"][0];
    assert_eq!(login["ok"], false, "{report}");
    assert!(
        login["detail"]
            .as_str()
            .unwrap()
            .contains("refused the service account"),
        "{report}"
    );
    assert!(!report.to_string().contains("not-the-password"));
}
