//! The daily timer, fired by Spin's cron trigger. The cron trigger cannot chain to other
//! components, so each event is one request to the app's own HTTP listener
//! (`POST {app_origin}/api/timer`, with the `timer_token`), whose route starts the due runs and
//! answers at once. A listener that is not up yet (right after start-up) or a restarting replica
//! is tried again within the event; an event that never gets through is logged with its reason
//! and left in the store for the connectors' health, and the next good event catches up from
//! the watermark.

use archiver_core::state::State;
use archiver_core::timer::{self, TimerFailure};
use chrono::Utc;

wit_bindgen::generate!({
    world: "spin-cron",
    path: "wit",
});

struct Timer;

impl Guest for Timer {
    fn handle_cron_event(metadata: Metadata) -> Result<(), Error> {
        spin_executor::run(on_event(metadata.timestamp)).map_err(Error::Other)
    }
}

export!(Timer);

async fn on_event(timestamp: u64) -> Result<(), String> {
    let outcome = hand_over(timestamp).await;
    let store = archive_host::SpinStore::open().map_err(|e| e.to_string())?;
    let state = State::new(&store);
    let recorded = match &outcome {
        Ok(()) => state.clear_timer_failure(),
        Err(reason) => {
            eprintln!("timer event {timestamp}: {reason}");
            state.put_timer_failure(&TimerFailure {
                at: Utc::now(),
                reason: reason.clone(),
            })
        }
    };
    if let Err(e) = recorded {
        eprintln!("timer event {timestamp}: recording its outcome: {e}");
    }
    outcome
}

/// Sends the event to the app, trying again while the app cannot be reached or answers with a
/// passing error, within `timer_retry_seconds`.
async fn hand_over(timestamp: u64) -> Result<(), String> {
    let origin =
        timer::app_origin(&archive_host::variable("app_origin")?).map_err(|e| e.to_string())?;
    let token = archive_host::variable("timer_token")?;
    let budget = archive_host::variable("timer_retry_seconds")?
        .trim()
        .parse::<u64>()
        .map_err(|_| "variable timer_retry_seconds: a whole number of seconds".to_string())?;
    let timeout = archive_host::request_timeout()?;
    let (request, body) = timer::timer_request(&origin, &token, timestamp);
    let mut waits = timer::retry_waits(std::time::Duration::from_secs(budget)).into_iter();
    loop {
        let answer =
            archive_host::send_within(&request, Some(("application/json", body.clone())), timeout)
                .await;
        let reason = match answer {
            Ok(answer) if answer.status == 202 => return Ok(()),
            Ok(answer) if !timer::worth_retrying(answer.status) => {
                let reason = timer::refusal_reason(&origin, answer.status, &answer.body);
                return Err(format!("the timer could not start runs: {reason}"));
            }
            Ok(answer) => timer::refusal_reason(&origin, answer.status, &answer.body),
            Err(e) => format!("the app at {origin} could not be reached: {e}"),
        };
        match waits.next() {
            Some(wait) => archive_host::sleep(wait).await,
            None => return Err(format!("the timer could not start runs: {reason}")),
        }
    }
}
