//! The daily fetch. Fired by Spin's cron trigger, it starts a run for every enabled connector;
//! a private HTTP route (`POST /runs/{connector}/{run}`, reached by chaining from the admin API)
//! executes a queued run now. Either way the run takes the connector's lease and goes through
//! steps, each a fresh invocation of bounded work reached by chaining: fetch steps
//! (`POST /steps/{connector}/{run}` here) log in to the archive, page through the window and
//! stage every valid message with its attachments; then the import component's steps deliver.

mod fetch;

use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

wit_bindgen::generate!({
    world: "spin-cron",
    path: "wit",
});

struct Fetch;

impl Guest for Fetch {
    fn handle_cron_event(metadata: Metadata) -> Result<(), Error> {
        spin_executor::run(fetch::on_timer(metadata.timestamp))
            .map_err(|e| Error::Other(format!("{e:#}")))
    }
}

export!(Fetch);

#[http_component]
async fn handle_run_request(request: Request) -> Response {
    let path = request.path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let answer = |result: anyhow::Result<serde_json::Value>| {
        result
            .map(|view| view.to_string())
            .map_err(|e| format!("{e:#}"))
    };
    match (request.method(), segments.as_slice()) {
        (Method::Post, ["runs", connector, run]) => archive_host::run_answer(
            answer(fetch::run_queued(connector, run).await),
            &format!("run {connector}/{run}"),
        ),
        (Method::Post, ["steps", connector, run]) => archive_host::run_answer(
            answer(fetch::fetch_step(connector, run).await),
            &format!("fetch step {connector}/{run}"),
        ),
        _ => Response::new(404, "no such route"),
    }
}
