//! The carrier archive simulator as a standalone server, for trying the archiver locally:
//! `cargo run -p archiver-tests --bin source-simulator [ADDRESS]` (default 127.0.0.1:8700).
//! It serves a few sample messages of yesterday under `http://ADDRESS/api` to the account
//! `demo` / `demo-password`.

use archiver_tests::SourceSimulator;
use chrono::{Duration, SecondsFormat, Utc};
use serde_json::json;

#[tokio::main]
async fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8700".into());
    let source = SourceSimulator::start_on(&address, "demo", "demo-password").await;
    let alice =
        json!({ "phone": "+12025550101", "email": "alice@acme.example", "name": "Alice Ng" });
    let bob = json!({ "phone": "+12025550102", "email": "bob@acme.example", "name": "Bob Ruiz" });
    let outside = json!({ "phone": "+13125550199", "email": null, "name": null });
    let samples = [
        (
            "demo-1",
            "outbound",
            alice.clone(),
            vec![outside.clone()],
            "Running 10 minutes late",
        ),
        (
            "demo-2",
            "inbound",
            outside.clone(),
            vec![alice.clone(), bob.clone()],
            "See you both at the site",
        ),
        ("demo-3", "outbound", bob, vec![alice], "Lunch at noon?"),
    ];
    for (n, (id, direction, from, to, body)) in samples.into_iter().enumerate() {
        let at = (Utc::now() - Duration::hours(20) + Duration::minutes(n as i64 * 7))
            .to_rfc3339_opts(SecondsFormat::Secs, true);
        source.add_message(json!({ "id": id, "kind": "sms", "direction": direction,
            "sent_at": at, "archived_at": at, "from": from, "to": to, "subject": null,
            "body": body, "attachments": [] }));
    }
    println!(
        "archive simulator at {} (account demo / demo-password); Ctrl-C stops it",
        source.base_url()
    );
    tokio::signal::ctrl_c().await.expect("waiting for Ctrl-C");
}
