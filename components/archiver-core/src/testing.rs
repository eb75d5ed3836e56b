//! Builders for unit tests.

use serde_json::{Value, json};

use crate::phone::Region;
use crate::source::{Message, parse_message};

/// The contract's first example: Alice texts an outside number.
pub fn sms_record() -> Value {
    json!({
        "id": "m-7f3c9a10",
        "kind": "sms",
        "direction": "outbound",
        "sent_at": "2026-11-25T14:03:11Z",
        "archived_at": "2026-11-25T14:03:12Z",
        "from": { "phone": "+12025550101", "email": "alice@acme.example", "name": "Alice Ng" },
        "to": [ { "phone": "+13125550199", "email": null, "name": null } ],
        "subject": null,
        "body": "Running 10 minutes late, start without me",
        "attachments": []
    })
}

pub fn message(record: &Value) -> Message {
    parse_message(&record.to_string(), Region::US).expect("valid test record")
}

/// A queued manual run of connector `connector`.
pub fn run(connector: &str, id: &str) -> crate::runs::Run {
    use crate::runs::{Figures, Progress, Run, RunState, RunTrigger};
    Run {
        id: id.into(),
        connector: connector.into(),
        trigger: RunTrigger::Manual,
        since: None,
        until: None,
        state: RunState::Queued,
        requested_at: "2026-11-26T02:00:00Z".parse().unwrap(),
        started_at: None,
        finished_at: None,
        figures: Figures::default(),
        error: None,
        progress: Progress::default(),
        days: Some(Default::default()),
        writes: Vec::new(),
    }
}
