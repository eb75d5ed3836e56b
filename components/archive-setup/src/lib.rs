//! The admin's HTTP API under `/api`: connectors, mapping upload, runs and status; the
//! daily timer's `POST /api/timer`, which starts the due runs; and the admin console (`/`) on
//! the same API, signed in with a session cookie.
//!
//! One path: authenticate, route, call the core, write the key-value store, answer. Errors are
//! mapped to a status and body once, by the core's `ApiError`.

mod config;
mod console;
mod destination;
mod handlers;

use archiver_core::api::ApiError;
use archiver_core::secrets::bearer_matches;
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::http_component;

use crate::config::Config;

#[http_component]
async fn handle_setup(request: Request) -> Response {
    match route(&request).await {
        Ok(response) => response,
        Err(error) => {
            if error.status() >= 500 {
                eprintln!("setup: {} {}: {error}", request.method(), request.path());
            }
            json(error.status(), &error.body())
        }
    }
}

async fn route(request: &Request) -> Result<Response, ApiError> {
    let config = Config::load().map_err(ApiError::Config)?;
    let authorization = request.header("authorization").and_then(|v| v.as_str());
    let path = request.path();
    // The daily timer's route takes the timer's token, and only that.
    if path.trim_end_matches('/') == archiver_core::timer::TIMER_PATH {
        if !bearer_matches(authorization, &config.timer_token) {
            return Err(ApiError::Unauthorized);
        }
        return match request.method() {
            Method::Post => handlers::timer_event(request).await,
            method => Err(ApiError::MethodNotAllowed(method.to_string())),
        };
    }
    let Some(rest) = path
        .strip_prefix("/api")
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    else {
        return console::page(request);
    };
    let rest = rest.trim_end_matches('/');
    if rest == "/session" {
        return console::session(request, &config);
    }
    console::admit(request, &config)?;
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let method = request.method();
    let not_allowed = || Err(ApiError::MethodNotAllowed(method.to_string()));
    match segments.as_slice() {
        ["health"] => match method {
            Method::Get => Ok(json(200, &serde_json::json!({ "status": "ok" }))),
            _ => not_allowed(),
        },
        ["mapping", "check"] => match method {
            Method::Post => console::check_mapping(request, &config),
            _ => not_allowed(),
        },
        ["source", "check"] => match method {
            Method::Post => console::check_source(request, &config).await,
            _ => not_allowed(),
        },
        ["destination"] => match method {
            Method::Get => destination::check(&config).await,
            _ => not_allowed(),
        },
        ["connectors"] => match method {
            Method::Get => handlers::list_connectors(),
            _ => not_allowed(),
        },
        ["connectors", id] => match method {
            Method::Get => handlers::get_connector(id),
            Method::Put => handlers::put_connector(&config, id, request).await,
            Method::Delete => handlers::delete_connector(id),
            _ => not_allowed(),
        },
        ["connectors", id, "mapping"] => match method {
            Method::Get => handlers::get_mapping(&config, id),
            Method::Put => handlers::put_mapping(&config, id, request),
            _ => not_allowed(),
        },
        ["connectors", id, "runs"] => match method {
            Method::Get => handlers::list_runs(id),
            Method::Post => handlers::start_run(id, request).await,
            _ => not_allowed(),
        },
        ["connectors", id, "runs", run] => match method {
            Method::Get => handlers::get_run(id, run),
            _ => not_allowed(),
        },
        ["connectors", id, "status"] => match method {
            Method::Get => handlers::status(id, request.query()),
            _ => not_allowed(),
        },
        _ => Err(ApiError::NoRoute(format!("{method} {path}"))),
    }
}

pub(crate) fn json(status: u16, body: &serde_json::Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(body.to_string())
        .build()
}
