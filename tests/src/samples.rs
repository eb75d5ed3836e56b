//! The demo's sample day: a few texts the archive simulator serves, all inside the window the
//! demo's first run archives, and what that run must then show.

use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, TimeZone, Utc};
use serde_json::{Value, json};

/// The sample texts of one UTC day and what archiving that day yields.
#[derive(Debug, Clone)]
pub struct SampleDay {
    /// The window `[since, until)` the demo asks a run for: the whole UTC day.
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// The message records, as the archive's contract shows them.
    pub messages: Vec<Value>,
    /// Copies the run must import: one per text and mapped participant.
    pub copies: u64,
    /// The user whose folder holds every text, and how many.
    pub reader: &'static str,
    pub reader_texts: u64,
}

impl SampleDay {
    /// The texts of `day` (UTC), dated in its morning so they are inside its window whatever the
    /// hour the demo starts and whatever the machine's time zone.
    pub fn on(day: NaiveDate) -> SampleDay {
        let since = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default());
        let alice =
            json!({ "phone": "+12025550101", "email": "alice@acme.example", "name": "Alice Ng" });
        let bob =
            json!({ "phone": "+12025550102", "email": "bob@acme.example", "name": "Bob Ruiz" });
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
                outside,
                vec![alice.clone(), bob.clone()],
                "See you both at the site",
            ),
            ("demo-3", "outbound", bob, vec![alice], "Lunch at noon?"),
        ];
        let messages = samples
            .into_iter()
            .enumerate()
            .map(|(n, (id, direction, from, to, body))| {
                let at = (since + Duration::hours(9) + Duration::minutes(n as i64 * 7))
                    .to_rfc3339_opts(SecondsFormat::Secs, true);
                json!({ "id": id, "kind": "sms", "direction": direction, "sent_at": at,
                    "archived_at": at, "from": from, "to": to, "subject": null, "body": body,
                    "attachments": [] })
            })
            .collect();
        SampleDay {
            since,
            until: since + Duration::days(1),
            messages,
            // Alice's copy of demo-1; Alice's and Bob's of demo-2 and of demo-3.
            copies: 5,
            reader: "alice@acme.example",
            reader_texts: 3,
        }
    }

    /// The day before `now`'s UTC day: the demo's first run archives "yesterday" in UTC.
    pub fn before(now: DateTime<Utc>) -> SampleDay {
        SampleDay::on(now.date_naive() - Duration::days(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_is_inside_the_window_whatever_the_hour() {
        for now in [
            "2026-12-06T00:00:00Z",
            "2026-12-06T00:30:00Z",
            "2026-12-06T12:00:00Z",
            "2026-12-06T20:00:00Z",
            "2026-12-06T21:05:00Z",
            "2026-12-06T23:59:59Z",
        ] {
            let now: DateTime<Utc> = now.parse().unwrap();
            let day = SampleDay::before(now);
            assert_eq!(
                day.since,
                "2026-12-05T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
            );
            assert_eq!(
                day.until,
                "2026-12-06T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
            );
            assert_eq!(day.messages.len(), 3);
            for message in &day.messages {
                let at: DateTime<Utc> = message["archived_at"].as_str().unwrap().parse().unwrap();
                assert!(day.since <= at && at < day.until, "{at} at {now}");
                assert!(at < now, "{at} is not in the past at {now}");
            }
        }
    }
}
