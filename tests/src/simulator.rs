//! The carrier archive, simulated: the source API (version 1) on loopback, for tests and demos.
//!
//! It serves `/v1/account`, `/v1/subscribers`, `/v1/messages` (window, paging with opaque
//! cursors, `limit` capped at 1000) and `/v1/attachments/{id}` (with `Range`), behind HTTP Basic
//! authentication, and can be told to fail the next requests to a path with a given status.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const PAGE_DEFAULT: usize = 500;
const PAGE_MAX: usize = 1000;

/// A fault the simulator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status (with `Retry-After: 1` for 429 and 503).
    Status(u16),
    /// Answer 200 with a body cut in the middle of its JSON.
    Truncated,
    /// Answer 200 with an HTML error page, as a misconfigured proxy in front of the API would.
    NotJson,
}

#[derive(Default)]
struct Inner {
    username: String,
    password: String,
    account: Value,
    subscribers: Vec<Value>,
    /// Message records as the contract shows them, in any order.
    messages: Vec<Value>,
    /// The messages with a readable `archived_at`, as (instant, index) in listing order; made
    /// again after messages are added, so a page costs its own size, not the day's.
    listing: Option<Vec<(chrono::DateTime<chrono::FixedOffset>, usize)>>,
    /// Messages listed a second time, as (where in the listing, index in `messages`).
    relisted: Vec<(chrono::DateTime<chrono::FixedOffset>, usize)>,
    attachments: BTreeMap<String, (String, Vec<u8>)>,
    /// Path prefix -> faults to answer with, one per request, before serving normally.
    failures: Vec<(String, VecDeque<Fault>)>,
    /// Every request seen: method, path and query, whether it carried valid credentials.
    requests: Vec<(String, String, bool)>,
    /// The most items a page holds, whatever `limit` asks (the contract lets the server cap it).
    page_cap: usize,
    /// How long every answer takes, as a slow archive's would.
    delay: std::time::Duration,
    /// Path prefix -> (answers left, how long each hangs before it is sent).
    stalls: Vec<(String, usize, std::time::Duration)>,
    /// Requests that were made to hang.
    stalled: usize,
}

/// A running simulator; it stops when the test's runtime ends.
#[derive(Clone)]
pub struct SourceSimulator {
    inner: Arc<Mutex<Inner>>,
    address: SocketAddr,
}

impl SourceSimulator {
    /// Starts on a free loopback port with the given credentials.
    pub async fn start(username: &str, password: &str) -> SourceSimulator {
        Self::start_on("127.0.0.1:0", username, password).await
    }

    /// Starts on `address` (a loopback address and port) with the given credentials.
    pub async fn start_on(address: &str, username: &str, password: &str) -> SourceSimulator {
        let inner = Arc::new(Mutex::new(Inner {
            username: username.to_string(),
            password: password.to_string(),
            account: json!({ "account_id": "acme-att-01", "organization": "Acme Corp",
                "network": "AT&T", "time_zone": "America/New_York" }),
            page_cap: PAGE_MAX,
            ..Inner::default()
        }));
        let listener = tokio::net::TcpListener::bind(address).await.expect("bind");
        let address = listener.local_addr().expect("address");
        let served = inner.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let inner = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let inner = inner.clone();
                            async move {
                                let path = request.uri().path().to_string();
                                let delay = inner
                                    .lock()
                                    .map(|mut i| i.delay + i.stall(&path))
                                    .unwrap_or_default();
                                tokio::time::sleep(delay).await;
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                Ok::<_, std::convert::Infallible>(respond(&inner, parts, body))
                            }
                        },
                    );
                    let io = wasmtime_wasi_http::io::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        SourceSimulator { inner, address }
    }

    /// The base URL a connector is configured with.
    pub fn base_url(&self) -> String {
        format!("http://{}/api", self.address)
    }

    /// `scheme://host:port`, for the `source_origin` variable.
    pub fn origin(&self) -> String {
        format!("http://{}", self.address)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("simulator lock"))
    }

    /// Caps pages at `items`, so a small day still spans several pages.
    pub fn set_page_cap(&self, items: usize) {
        self.with(|i| i.page_cap = items.max(1));
    }

    /// Makes the next `times` answers to paths starting with `path_prefix` hang for `duration`
    /// before they are sent, as an archive that accepted the request and stalled.
    pub fn stall(&self, path_prefix: &str, duration: std::time::Duration, times: usize) {
        self.inner.lock().expect("simulator lock").stalls.push((
            format!("/api{path_prefix}"),
            times,
            duration,
        ));
    }

    /// How many requests were made to hang so far.
    pub fn stalled(&self) -> usize {
        self.inner.lock().expect("simulator lock").stalled
    }

    /// Makes every answer take `delay`.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.inner.lock().expect("simulator lock").delay = delay;
    }

    pub fn set_password(&self, password: &str) {
        self.with(|i| i.password = password.to_string());
    }

    pub fn add_subscriber(&self, subscriber: Value) {
        self.with(|i| i.subscribers.push(subscriber));
    }

    pub fn add_message(&self, message: Value) {
        self.with(|i| {
            i.messages.push(message);
            i.listing = None;
        });
    }

    /// Lists the message `id` (added already) a second time, where a message archived at `at`
    /// is listed: a re-delivery the archive makes on a later page of the same window, the
    /// record unchanged. The contract does not rule it out, so a client must take it.
    pub fn relist(&self, id: &str, at: &str) {
        let at = chrono::DateTime::parse_from_rfc3339(at).expect("an RFC 3339 instant");
        self.with(|i| {
            let index = i
                .messages
                .iter()
                .position(|m| m["id"] == id)
                .expect("a message added before");
            i.relisted.push((at, index));
            i.listing = None;
        });
    }

    pub fn add_attachment(&self, id: &str, content_type: &str, bytes: Vec<u8>) {
        self.with(|i| {
            i.attachments
                .insert(id.to_string(), (content_type.to_string(), bytes))
        });
    }

    /// Answers the next `times` requests whose path starts with `path_prefix` (after the base,
    /// e.g. `/v1/messages`) with `status`.
    pub fn fail_next(&self, path_prefix: &str, status: u16, times: usize) {
        self.inject(path_prefix, Fault::Status(status), times);
    }

    /// Answers the next `times` requests under `path_prefix` with `fault`.
    pub fn inject(&self, path_prefix: &str, fault: Fault, times: usize) {
        self.with(|i| {
            i.failures.push((
                path_prefix.to_string(),
                std::iter::repeat_n(fault, times).collect(),
            ))
        });
    }

    /// The requests seen so far: method, path with query, and whether they were authenticated.
    pub fn requests(&self) -> Vec<(String, String, bool)> {
        self.with(|i| i.requests.clone())
    }
}

impl Inner {
    /// The stall to apply to a request for `path`, counting it.
    fn stall(&mut self, path: &str) -> std::time::Duration {
        for (prefix, left, duration) in self.stalls.iter_mut() {
            if *left > 0 && path.starts_with(prefix.as_str()) {
                *left -= 1;
                self.stalled += 1;
                return *duration;
            }
        }
        std::time::Duration::ZERO
    }
}

fn response(
    status: u16,
    content_type: &str,
    body: impl Into<Bytes>,
) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

fn json_response(status: u16, body: &Value) -> hyper::Response<Full<Bytes>> {
    response(status, "application/json; charset=utf-8", body.to_string())
}

fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn respond(
    inner: &Mutex<Inner>,
    parts: http::request::Parts,
    _body: Bytes,
) -> hyper::Response<Full<Bytes>> {
    let mut inner = inner.lock().expect("simulator lock");
    let path = parts
        .uri
        .path()
        .strip_prefix("/api")
        .unwrap_or(parts.uri.path())
        .to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let expected = format!(
        "Basic {}",
        BASE64.encode(format!("{}:{}", inner.username, inner.password))
    );
    let authenticated = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    inner.requests.push((
        parts.method.to_string(),
        format!("{path}?{query}"),
        authenticated,
    ));

    for (prefix, faults) in inner.failures.iter_mut() {
        if path.starts_with(prefix.as_str())
            && let Some(fault) = faults.pop_front()
        {
            return match fault {
                Fault::Truncated => response(
                    200,
                    "application/json; charset=utf-8",
                    r#"{"messages": [{"id": "m-cut", "kind": "sms", "dir"#,
                ),
                Fault::NotJson => response(
                    200,
                    "text/html",
                    "<html><body>Service temporarily unavailable</body></html>",
                ),
                Fault::Status(status) => {
                    let mut failed = json_response(status, &json!({ "error": "injected failure" }));
                    if status == 429 || status == 503 {
                        failed
                            .headers_mut()
                            .insert("retry-after", http::HeaderValue::from_static("1"));
                    }
                    failed
                }
            };
        }
    }
    if !authenticated {
        return json_response(401, &json!({ "error": "bad credentials" }));
    }
    if parts.method != http::Method::GET {
        return json_response(405, &json!({ "error": "method not allowed" }));
    }
    match path.as_str() {
        "/v1/account" => json_response(200, &inner.account),
        "/v1/subscribers" => {
            let (page, next) = paginate(&inner.subscribers, &query, inner.page_cap);
            json_response(200, &json!({ "subscribers": page, "next_cursor": next }))
        }
        "/v1/messages" => messages(&mut inner, &query),
        _ => match path.strip_prefix("/v1/attachments/") {
            Some(id) => attachment(&inner.attachments, id, &parts.headers),
            None => json_response(404, &json!({ "error": "no such endpoint" })),
        },
    }
}

/// Pages through `items` with an opaque cursor (a base64 offset).
fn paginate(items: &[Value], query: &str, cap: usize) -> (Vec<Value>, Option<String>) {
    let (range, next) = page_range(items.len(), query, cap);
    (items[range].to_vec(), next)
}

/// The part of a list of `len` items the query's cursor and limit ask for, and the cursor of
/// the rest.
fn page_range(len: usize, query: &str, cap: usize) -> (std::ops::Range<usize>, Option<String>) {
    let limit = query_param(query, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(PAGE_DEFAULT)
        .clamp(1, cap);
    let offset = query_param(query, "cursor")
        .and_then(|c| BASE64.decode(c.replace("%3D", "=")).ok())
        .and_then(|c| String::from_utf8(c).ok())
        .and_then(|c| c.strip_prefix("o").and_then(|n| n.parse().ok()))
        .unwrap_or(0usize)
        .min(len);
    let end = offset.saturating_add(limit).min(len);
    let next = (end < len).then(|| BASE64.encode(format!("o{end}")));
    (offset..end, next)
}

fn messages(inner: &mut Inner, query: &str) -> hyper::Response<Full<Bytes>> {
    let instant = |name: &str| {
        query_param(query, name)
            .map(|t| t.replace("%3A", ":").replace("%2B", "+"))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
    };
    let (Some(since), Some(until)) = (instant("since"), instant("until")) else {
        return json_response(
            400,
            &json!({ "error": "since and until are required RFC 3339 instants" }),
        );
    };
    let all = &inner.messages;
    let relisted = &inner.relisted;
    let listing = inner.listing.get_or_insert_with(|| {
        let mut listing: Vec<_> = all
            .iter()
            .enumerate()
            .filter_map(|(index, m)| {
                let at = m["archived_at"].as_str()?;
                Some((chrono::DateTime::parse_from_rfc3339(at).ok()?, index))
            })
            .chain(relisted.iter().copied())
            .collect();
        listing.sort();
        listing
    });
    let first = listing.partition_point(|(at, _)| *at < since);
    let end = listing.partition_point(|(at, _)| *at < until).max(first);
    let window = &listing[first..end];
    let (range, next) = page_range(window.len(), query, inner.page_cap);
    let page: Vec<&Value> = window[range]
        .iter()
        .map(|(_, index)| &inner.messages[*index])
        .collect();
    json_response(200, &json!({ "messages": page, "next_cursor": next }))
}

fn attachment(
    attachments: &BTreeMap<String, (String, Vec<u8>)>,
    id: &str,
    headers: &http::HeaderMap,
) -> hyper::Response<Full<Bytes>> {
    let Some((content_type, bytes)) = attachments.get(id) else {
        return json_response(404, &json!({ "error": "no such attachment" }));
    };
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| {
            let start: usize = a.parse().ok()?;
            let end: usize = if b.is_empty() {
                bytes.len().checked_sub(1)?
            } else {
                b.parse().ok()?
            };
            (start <= end && start < bytes.len()).then(|| (start, end.min(bytes.len() - 1)))
        });
    match range {
        None => response(200, content_type, bytes.clone()),
        Some((start, end)) => {
            let mut partial = response(206, content_type, bytes[start..=end].to_vec());
            let content_range = format!("bytes {start}-{end}/{}", bytes.len());
            partial.headers_mut().insert(
                "content-range",
                http::HeaderValue::from_str(&content_range).expect("ascii"),
            );
            partial
        }
    }
}
