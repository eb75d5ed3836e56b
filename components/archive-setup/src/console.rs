//! The admin console: its pages (built into the component), the session it signs in with, and
//! the checks the wizard makes before anything is saved.

use archiver_core::api::{ApiError, MAX_CSV_BYTES, MAX_JSON_BYTES};
use archiver_core::console::{self, Admitted, DoorError, Knock};
use archiver_core::mapping::parse_mapping_csv;
use archiver_core::secrets::{NONCE_BYTES, bearer_matches};
use chrono::Utc;
use spin_sdk::http::{Method, Request, Response};

use crate::config::Config;
use crate::handlers::{self, body};
use crate::json;

const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_JS: &str = include_str!("../console/console.js");
const CONSOLE_CSS: &str = include_str!("../console/console.css");
/// Rows of a checked mapping file the wizard shows.
const PREVIEW_ROWS: usize = 50;

/// Only the console's own script and style run; nothing is fetched from elsewhere, and no other
/// site may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// The console's files, for `GET` of a path outside `/api/`.
pub fn page(request: &Request) -> Result<Response, ApiError> {
    if !matches!(request.method(), Method::Get | Method::Head) {
        return Err(ApiError::MethodNotAllowed(request.method().to_string()));
    }
    let (content_type, text) = match request.path() {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX_HTML),
        "/console.js" => ("text/javascript; charset=utf-8", CONSOLE_JS),
        "/console.css" => ("text/css; charset=utf-8", CONSOLE_CSS),
        path => return Err(ApiError::NoRoute(format!("GET {path}"))),
    };
    Ok(Response::builder()
        .status(200)
        .header("content-type", content_type)
        .header("content-security-policy", CONTENT_SECURITY_POLICY)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-cache")
        .body(text)
        .build())
}

fn header<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request.header(name).and_then(|v| v.as_str())
}

/// The authority the browser addressed: that of `spin-full-url`, which Spin builds from the
/// `Host` header (a component does not see `Host` itself).
fn host(request: &Request) -> Option<&str> {
    let from_spin = header(request, "spin-full-url").and_then(|url| {
        let rest = url.split_once("://")?.1;
        Some(rest.split('/').next().unwrap_or(rest))
    });
    from_spin.or_else(|| header(request, "host"))
}

fn knock(request: &Request) -> Knock<'_> {
    Knock {
        method: match request.method() {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
            _ => "CHANGE",
        },
        authorization: header(request, "authorization"),
        cookie: header(request, "cookie"),
        csrf: header(request, console::CSRF_HEADER),
        origin: header(request, "origin"),
        fetch_site: header(request, "sec-fetch-site"),
        host: host(request),
    }
}

fn door_error(error: DoorError) -> ApiError {
    match error {
        DoorError::Unauthorized => ApiError::Unauthorized,
        DoorError::CrossSite(why) => ApiError::CrossSite(why),
    }
}

/// Lets a request to the API in by the admin's bearer token or a console session.
pub fn admit(request: &Request, config: &Config) -> Result<Admitted, ApiError> {
    console::admit(
        &knock(request),
        &config.staging_key,
        &config.admin_token,
        Utc::now(),
    )
    .map_err(door_error)
}

fn secure(request: &Request) -> bool {
    !host(request).is_some_and(console::is_loopback)
}

/// `/api/session`: `POST {"token"}` signs in (sets the cookie), `GET` tells the console its
/// session and CSRF token, `DELETE` signs out.
pub fn session(request: &Request, config: &Config) -> Result<Response, ApiError> {
    match request.method() {
        Method::Post => {
            console::check_same_origin(&knock(request)).map_err(door_error)?;
            let token = console::parse_sign_in(body(request, "application/json", MAX_JSON_BYTES)?)?;
            if !bearer_matches(Some(&format!("Bearer {token}")), &config.admin_token) {
                return Err(ApiError::Unauthorized);
            }
            let (cookie, session) = console::issue(
                &config.staging_key,
                &config.admin_token,
                Utc::now(),
                handlers::random_bytes::<NONCE_BYTES>()?,
                handlers::random_bytes::<16>()?,
            );
            Ok(session_answer(200, &session)
                .header("set-cookie", console::set_cookie(&cookie, secure(request)))
                .build())
        }
        Method::Get => match admit(request, config)? {
            Admitted::Session(session) => Ok(session_answer(200, &session).build()),
            Admitted::Bearer => Err(ApiError::BadBody(
                "a bearer request has no console session".to_string(),
            )),
        },
        Method::Delete => {
            admit(request, config)?;
            Ok(Response::builder()
                .status(204)
                .header("set-cookie", console::clear_cookie(secure(request)))
                .header("cache-control", "no-store")
                .build())
        }
        method => Err(ApiError::MethodNotAllowed(method.to_string())),
    }
}

fn session_answer(status: u16, session: &console::Session) -> spin_sdk::http::ResponseBuilder {
    let mut builder = Response::builder();
    builder
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(
            serde_json::json!({
                "csrf": session.csrf,
                "expires_at": session.expires(),
            })
            .to_string(),
        );
    builder
}

/// `POST /api/mapping/check`: a mapping file checked as `PUT .../mapping` checks it, saving
/// nothing: the rows that would apply (the first 50) and their count, or every bad row.
pub fn check_mapping(request: &Request, config: &Config) -> Result<Response, ApiError> {
    let csv = body(request, "text/csv", MAX_CSV_BYTES)?;
    let table = parse_mapping_csv(csv, config.default_region).map_err(ApiError::Mapping)?;
    Ok(json(200, &table.preview(PREVIEW_ROWS)))
}

/// `POST /api/source/check` `{"source_url", "username", "password"}`: the wizard's "log in to
/// the archive", checked live as creating a connector checks it, saving nothing.
pub async fn check_source(request: &Request, config: &Config) -> Result<Response, ApiError> {
    let login = console::parse_source_login(body(request, "application/json", MAX_JSON_BYTES)?)?;
    let (_, account) =
        handlers::check_login(config, &login.source_url, &login.username, &login.password).await?;
    Ok(json(
        200,
        &serde_json::json!({
            "account_id": account.account_id,
            "organization": account.organization,
        }),
    ))
}
