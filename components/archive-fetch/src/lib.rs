//! The fetch stage, reachable only by local service chaining:
//! - `POST /timer/{timestamp}` (from the admin API's timer route, which the daily timer calls)
//!   starts a run for every enabled connector whose lease is free, answers at once with the runs
//!   it started, and then takes them through their steps;
//! - `POST /runs/{connector}/{run}` (from the admin API) executes a queued run now, or leaves it
//!   queued while another run holds the connector: that run takes it up when it ends;
//! - `POST /steps/{connector}/{run}` is one fetch step of a run: log in to the archive, page
//!   through the window and stage every valid message with its attachments.
//!
//! After a run ends, the queued runs of its connector are executed in the order they were asked
//! for, after the answer is sent.

mod fetch;

use spin_sdk::http::{IncomingRequest, Method, ResponseOutparam};
use spin_sdk::http_component;

#[http_component]
async fn handle_fetch_request(request: IncomingRequest, out: ResponseOutparam) {
    let path = request.path_with_query().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let post = matches!(request.method(), Method::Post);
    match (post, segments.as_slice()) {
        (true, ["timer", timestamp]) => {
            let Ok(timestamp) = timestamp.parse::<u64>() else {
                return archive_host::answer(out, 400, "the timer timestamp is not a number").await;
            };
            match fetch::start_timer_runs(timestamp).await {
                Ok(started) => {
                    let view = serde_json::json!({ "started": started.view() });
                    archive_host::answer(out, 202, &view.to_string()).await;
                    started.execute().await;
                }
                Err(e) => {
                    eprintln!("timer event {timestamp}: {e:#}");
                    archive_host::answer(out, 500, &format!("{e:#}")).await;
                }
            }
        }
        (true, ["runs", connector, run]) => {
            let context = format!("run {connector}/{run}");
            let result = fetch::run_queued(connector, run).await;
            let answer = result.as_ref().map(|view| view.to_string());
            archive_host::answer_run(out, answer.map_err(|e| format!("{e:#}")), &context).await;
            fetch::after_run(connector).await;
        }
        (true, ["steps", connector, run]) => {
            let result = fetch::fetch_step(connector, run).await;
            let answer = result.map(|view| view.to_string());
            let context = format!("fetch step {connector}/{run}");
            archive_host::answer_run(out, answer.map_err(|e| format!("{e:#}")), &context).await;
        }
        _ => archive_host::answer(out, 404, "no such route").await,
    }
}
