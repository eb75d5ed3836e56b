//! The daily timer, on a trigger that cannot chain: Spin's cron trigger runs a component that
//! may only call ordinary origins, so the timer sends one authenticated request per event to
//! the app's own HTTP listener (`app_origin`), whose route starts the due runs.
//!
//! This module builds that request, reads it on the receiving side, and decides how long the
//! timer keeps trying within one event; a timer that could not reach the app leaves a record
//! the connectors' health shows until a later event gets through.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::source_client::SourceRequest;

/// The route, under the app's origin, that takes timer events.
pub const TIMER_PATH: &str = "/api/timer";
/// Where the last timer failure is kept (deleted by the next event that gets through).
pub const TIMER_FAILURE_KEY: &str = "timer/last-failure";
/// The first wait between two tries of one event; each wait doubles.
const FIRST_RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest wait between two tries.
const MAX_RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a timer event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerEvent {
    /// When the event fired, seconds since the Unix epoch.
    pub timestamp: u64,
}

/// A timer event that did not reach the app, as the connectors' health shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerFailure {
    pub at: DateTime<Utc>,
    /// Why, in words an admin can act on; never a credential.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimerError {
    #[error(
        "variable app_origin: {0:?} is not an origin (scheme://host[:port], no path), such as http://127.0.0.1:3000"
    )]
    BadOrigin(String),
    #[error("the timer event is not valid: {0}")]
    BadEvent(String),
}

/// Checks `app_origin` and gives it without a trailing slash.
pub fn app_origin(value: &str) -> Result<String, TimerError> {
    let origin = value.trim().trim_end_matches('/');
    let bad = || TimerError::BadOrigin(value.to_string());
    let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#']) {
        return Err(bad());
    }
    Ok(origin.to_string())
}

/// The request that hands one event to the app: `POST {origin}/api/timer` with the timer's
/// token as a bearer token, and its JSON body.
pub fn timer_request(origin: &str, token: &str, timestamp: u64) -> (SourceRequest, Vec<u8>) {
    let request = SourceRequest {
        method: "POST",
        url: format!("{origin}{TIMER_PATH}"),
        headers: vec![("authorization", format!("Bearer {token}"))],
    };
    let body = serde_json::to_vec(&TimerEvent { timestamp }).unwrap_or_default();
    (request, body)
}

/// Reads the body of a timer request.
pub fn parse_timer_event(body: &[u8]) -> Result<TimerEvent, TimerError> {
    serde_json::from_slice(body).map_err(|e| TimerError::BadEvent(e.to_string()))
}

/// The waits between the tries of one event: doubling from a second, capped, until they would
/// add up to more than `budget`. A listener that comes up a few seconds after start-up, or a
/// replica restarting, is reached by a later try.
pub fn retry_waits(budget: std::time::Duration) -> Vec<std::time::Duration> {
    let mut waits = Vec::new();
    let mut total = std::time::Duration::ZERO;
    let mut wait = FIRST_RETRY_WAIT;
    while total + wait <= budget {
        waits.push(wait);
        total += wait;
        wait = (wait * 2).min(MAX_RETRY_WAIT);
    }
    waits
}

/// Whether an answer of the app to a timer request is worth another try: the listener or the
/// route may not be up yet, or be restarting. A refusal (`401`, `404`, `400`) is not: it will
/// answer the same until the deployment is corrected.
pub fn worth_retrying(status: u16) -> bool {
    status == 429 || status >= 500
}

/// The reason recorded when the app answered a timer request with `status`.
pub fn refusal_reason(origin: &str, status: u16, body: &[u8]) -> String {
    let detail = String::from_utf8_lossy(body);
    let detail: String = detail.chars().take(200).collect();
    let hint = match status {
        401 => "; the timer_token the timer sends is not the one the app expects",
        404 => "; app_origin may name another app, or the route is missing",
        _ => "",
    };
    format!("the app at {origin} answered {status} to the timer: {detail}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_has_a_scheme_and_a_host_and_no_path() {
        assert_eq!(
            app_origin("http://127.0.0.1:3000/").unwrap(),
            "http://127.0.0.1:3000"
        );
        assert_eq!(
            app_origin("https://archiver.svc.cluster.local").unwrap(),
            "https://archiver.svc.cluster.local"
        );
        for bad in [
            "",
            "127.0.0.1:3000",
            "ftp://x",
            "http://",
            "http://h/api",
            "http://h?x",
        ] {
            assert!(app_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_request_carries_the_token_and_the_time() {
        let (request, body) = timer_request("http://127.0.0.1:3000", "tt", 1_764_122_400);
        assert_eq!(request.method, "POST");
        assert_eq!(request.url, "http://127.0.0.1:3000/api/timer");
        assert_eq!(
            request.headers,
            vec![("authorization", "Bearer tt".to_string())]
        );
        assert_eq!(
            parse_timer_event(&body).unwrap(),
            TimerEvent {
                timestamp: 1_764_122_400
            }
        );
        assert!(parse_timer_event(b"{\"timestamp\":\"x\"}").is_err());
        assert!(parse_timer_event(b"{\"timestamp\":1,\"other\":2}").is_err());
    }

    #[test]
    fn waits_double_within_the_budget() {
        let secs = |waits: Vec<std::time::Duration>| -> Vec<u64> {
            waits.iter().map(|w| w.as_secs()).collect()
        };
        assert_eq!(
            secs(retry_waits(std::time::Duration::from_secs(60))),
            vec![1, 2, 4, 8, 16]
        );
        assert_eq!(
            secs(retry_waits(std::time::Duration::from_secs(200))),
            vec![1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
        );
        assert!(retry_waits(std::time::Duration::ZERO).is_empty());
    }

    #[test]
    fn only_passing_answers_are_tried_again() {
        assert!(worth_retrying(503) && worth_retrying(500) && worth_retrying(429));
        assert!(!worth_retrying(401) && !worth_retrying(404) && !worth_retrying(400));
        let reason = refusal_reason("http://a", 401, b"{\"error\":\"unauthorized\"}");
        assert!(
            reason.contains("401") && reason.contains("timer_token"),
            "{reason}"
        );
    }
}
