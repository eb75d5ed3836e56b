//! The import step, reachable only by local service chaining from the fetch and setup
//! components: converts staged messages into email and delivers them to users' mailboxes.

use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;

#[http_component]
fn handle_import(request: Request) -> Response {
    let error = format!("import of {} is not available yet", request.path());
    Response::builder()
        .status(501)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "error": error }).to_string())
        .build()
}
