//! The admin's HTTP API under `/api`: connectors, mapping upload, runs and status.

use spin_sdk::http::{IntoResponse, Params, Request, Response, Router};
use spin_sdk::http_component;

#[http_component]
fn handle_setup(request: Request) -> Response {
    let mut router = Router::new();
    router.get("/api/health", health);
    router.any("/api/*", not_found);
    router.handle(request)
}

fn health(_request: Request, _params: Params) -> anyhow::Result<impl IntoResponse> {
    Ok(json(200, &serde_json::json!({ "status": "ok" })))
}

fn not_found(request: Request, _params: Params) -> anyhow::Result<impl IntoResponse> {
    let error = format!("no route for {} {}", request.method(), request.path());
    Ok(json(404, &serde_json::json!({ "error": error })))
}

fn json(status: u16, body: &serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string())
        .build()
}
