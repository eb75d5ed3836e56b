//! The import step, reachable only by local service chaining from the fetch component:
//! `POST /import/{connector}/{run}` is one step of a run's import: it converts the run's next
//! staged items into email and delivers one copy to each mapped user's mailbox at the
//! deployment's destination (JMAP or Microsoft Graph), recording every outcome and
//! checkpointing in the run record.

mod graph;
mod jmap;
mod step;

use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

#[http_component]
async fn handle_import(request: Request) -> Response {
    let path = request.path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (request.method(), segments.as_slice()) {
        (Method::Post, ["import", connector, run]) => archive_host::run_answer(
            step::import_step(connector, run)
                .await
                .map(|view| view.to_string())
                .map_err(|e| format!("{e:#}")),
            &format!("import {connector}/{run}"),
        ),
        _ => Response::new(404, "no such route"),
    }
}
