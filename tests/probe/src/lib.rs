//! Does what each request's query asks, whatever route brought it, so the test host's tests can
//! observe Spin's behaviour (the query must start with `op=`; `url=` must come last):
//! - `op=kv-get|kv-set|kv-delete&store=S&key=K`: key-value access (403 with the error on refusal);
//! - `op=var&name=N`: a component variable (404 with the error when refused);
//! - `op=fetch&url=U`: an outbound GET (502 with the error when refused);
//! - `op=post&url=U`, `op=post-sized&url=U`: the request's body POSTed to U, without and with a
//!   `Content-Length` (answered as `op=fetch` is);
//! - `op=cas-add&key=K`: adds 1 to the number at K (default store) by `wasi:keyvalue/atomics`
//!   compare-and-swap, trying again on every "failed" answer, at most 5 times, as a client that
//!   trusts the answer does: `swaps N, ok|failed, value V`;
//! - `op=get-many&key=K`: `wasi:keyvalue/batch` `get-many` of K and `K-other`;
//! - `op=count`: how many requests this instance has served (always 1 on a fresh instance);
//! - `op=spin`: loops forever, for interruption tests;
//! - no `op`: who answered (the `component_name` variable), the path and the `spin-*` headers.

use std::sync::atomic::{AtomicU64, Ordering};

use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;

static SERVED: AtomicU64 = AtomicU64::new(0);

#[http_component]
async fn handle_probe(request: Request) -> Response {
    let served = SERVED.fetch_add(1, Ordering::SeqCst) + 1;
    let query = request.query().to_string();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_default()
            .to_string()
    };
    match param("op").as_str() {
        "kv-get" | "kv-set" | "kv-delete" => {
            key_value(&param("op"), &param("store"), &param("key"), request.body())
        }
        "var" => variable(&param("name")),
        "fetch" => fetch(query.split_once("url=").map_or("", |(_, url)| url)).await,
        "post" | "post-sized" => {
            let url = query.split_once("url=").map_or("", |(_, url)| url);
            post(url, request.body().to_vec(), param("op") == "post-sized").await
        }
        "cas-add" => cas_add(&param("key")),
        "get-many" => get_many(&param("key")),
        "count" => respond(200, served.to_string()),
        "spin" => spin_forever(),
        _ => who_answered(&request),
    }
}

fn respond(status: u16, body: impl Into<Vec<u8>>) -> Response {
    Response::new(status, body.into())
}

fn key_value(op: &str, label: &str, key: &str, body: &[u8]) -> Response {
    let store = match Store::open(label) {
        Ok(store) => store,
        Err(e) => return respond(403, format!("{e:?}")),
    };
    let result = match op {
        "kv-get" => store.get(key).map(|value| match value {
            Some(value) => respond(200, value),
            None => respond(404, "no such key"),
        }),
        "kv-set" => store.set(key, body).map(|()| respond(204, "")),
        _ => store.delete(key).map(|()| respond(204, "")),
    };
    result.unwrap_or_else(|e| respond(500, format!("{e:?}")))
}

fn cas_add(key: &str) -> Response {
    use spin_sdk::wit::wasi::keyvalue::{atomics, store};
    let bucket = match store::open("default") {
        Ok(bucket) => bucket,
        Err(e) => return respond(403, format!("{e:?}")),
    };
    let number = |bytes: Option<Vec<u8>>| -> u64 {
        bytes
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    };
    let mut swaps = 0;
    let mut swapped = false;
    while swaps < 5 && !swapped {
        let cas = match atomics::Cas::new(&bucket, key) {
            Ok(cas) => cas,
            Err(e) => return respond(500, format!("{e:?}")),
        };
        let current = match cas.current() {
            Ok(current) => number(current),
            Err(e) => return respond(500, format!("{e:?}")),
        };
        swaps += 1;
        match atomics::swap(cas, (current + 1).to_string().as_bytes()) {
            Ok(()) => swapped = true,
            Err(atomics::CasError::CasFailed(_)) => {}
            Err(atomics::CasError::StoreError(e)) => return respond(500, format!("{e:?}")),
        }
    }
    let value = number(bucket.get(key).ok().flatten());
    let answer = if swapped { "ok" } else { "failed" };
    respond(200, format!("swaps {swaps}, {answer}, value {value}"))
}

fn get_many(key: &str) -> Response {
    use spin_sdk::wit::wasi::keyvalue::{batch, store};
    let found = store::open("default")
        .and_then(|bucket| batch::get_many(&bucket, &[key.to_string(), format!("{key}-other")]));
    match found {
        Ok(pairs) => {
            let values: Vec<String> = pairs
                .into_iter()
                .map(|(k, v)| {
                    format!(
                        "{k}={}",
                        v.map(|v| String::from_utf8_lossy(&v).into_owned())
                            .unwrap_or_default()
                    )
                })
                .collect();
            respond(200, values.join(","))
        }
        Err(e) => respond(500, format!("{e:?}")),
    }
}

fn variable(name: &str) -> Response {
    match spin_sdk::variables::get(name) {
        Ok(value) => respond(200, value),
        Err(e) => respond(404, format!("{e:?}")),
    }
}

async fn fetch(url: &str) -> Response {
    let outbound = Request::get(url).build();
    relay(spin_sdk::http::send::<_, Response>(outbound).await)
}

async fn post(url: &str, body: Vec<u8>, sized: bool) -> Response {
    let mut outbound = Request::builder();
    outbound.method(spin_sdk::http::Method::Post).uri(url);
    if sized {
        outbound.header("content-length", body.len().to_string());
    }
    outbound.body(body);
    relay(spin_sdk::http::send::<_, Response>(outbound.build()).await)
}

fn relay(answer: Result<Response, spin_sdk::http::SendError>) -> Response {
    match answer {
        Ok(upstream) => {
            let mut body = format!("{} ", upstream.status()).into_bytes();
            body.extend_from_slice(upstream.body());
            respond(200, body)
        }
        Err(e) => respond(502, format!("{e:?}")),
    }
}

fn spin_forever() -> Response {
    let mut counter: u64 = 0;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

fn who_answered(request: &Request) -> Response {
    let name = spin_sdk::variables::get("component_name").unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for (header, value) in request.headers() {
        if header.starts_with("spin-") {
            let value = value.as_str().unwrap_or_default().to_string();
            headers.insert(header.to_string(), value.into());
        }
    }
    let body = serde_json::json!({ "component": name, "path": request.path(), "headers": headers });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(body.to_string())
        .build()
}
