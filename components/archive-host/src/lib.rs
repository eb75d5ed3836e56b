//! Host glue shared by the components, and nothing else: the core's `KeyValue` on Spin's
//! `default` store, and sending a request the core built.

use archiver_core::phone::Region;
use archiver_core::secrets::SecretKey;
use archiver_core::source_client::SourceRequest;
use archiver_core::state::{KeyValue, StoreError};
use spin_sdk::http::{Method, Request, Response};
use spin_sdk::key_value::Store;

/// Spin's `default` key-value store.
pub struct SpinStore(Store);

impl SpinStore {
    pub fn open() -> Result<SpinStore, StoreError> {
        Store::open_default()
            .map(SpinStore)
            .map_err(|e| StoreError(format!("opening the default store: {e}")))
    }
}

impl KeyValue for SpinStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0
            .get(key)
            .map_err(|e| StoreError(format!("get {key}: {e}")))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0
            .set(key, value)
            .map_err(|e| StoreError(format!("set {key}: {e}")))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0
            .delete(key)
            .map_err(|e| StoreError(format!("delete {key}: {e}")))
    }

    /// One `wasi:keyvalue` batch on the same store: one transaction on Spin's SQLite store.
    fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let bucket = wasi_bucket()?;
        spin_sdk::wit::wasi::keyvalue::batch::set_many(&bucket, entries)
            .map_err(|e| StoreError(format!("set {} keys: {e:?}", entries.len())))
    }

    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let bucket = wasi_bucket()?;
        spin_sdk::wit::wasi::keyvalue::batch::delete_many(&bucket, keys)
            .map_err(|e| StoreError(format!("delete {} keys: {e:?}", keys.len())))
    }

    /// `wasi:keyvalue/atomics` compare-and-swap, asked again while another writer gets in
    /// between (a run's fetch and import steps write its record at the same time); a swap
    /// answered "failed" is read back first, as Spin's Redis store answers so to every swap
    /// (see [`archiver_core::swap`]).
    fn update(
        &self,
        key: &str,
        change: &mut archiver_core::state::Change<'_>,
        landed: &archiver_core::state::Landed<'_>,
    ) -> Result<Vec<u8>, StoreError> {
        archiver_core::swap::update(&WasiSwap::open()?, key, UPDATE_ATTEMPTS, change, landed)
    }

    fn write_id(&self) -> String {
        // Without randomness (never seen on Spin) the clock tells writes apart well enough.
        match random_bytes::<16>() {
            Ok(bytes) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            Err(_) => format!(
                "t{}",
                chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
            ),
        }
    }
}

/// How often [`SpinStore::update`] tries before it gives up: two writers (a run's fetch and
/// import) meet now and then, never for long.
const UPDATE_ATTEMPTS: usize = 20;

/// `wasi:keyvalue/atomics` on the `default` store, for [`archiver_core::swap`].
pub struct WasiSwap {
    bucket: spin_sdk::wit::wasi::keyvalue::store::Bucket,
}

impl WasiSwap {
    pub fn open() -> Result<WasiSwap, StoreError> {
        Ok(WasiSwap {
            bucket: wasi_bucket()?,
        })
    }
}

impl archiver_core::swap::Swap for WasiSwap {
    type Handle = spin_sdk::wit::wasi::keyvalue::atomics::Cas;

    fn begin(&self, key: &str) -> Result<(Self::Handle, Option<Vec<u8>>), StoreError> {
        use spin_sdk::wit::wasi::keyvalue::atomics::Cas;
        let cas = Cas::new(&self.bucket, key).map_err(|e| StoreError(format!("{key}: {e:?}")))?;
        let current = cas
            .current()
            .map_err(|e| StoreError(format!("{key}: {e:?}")))?;
        Ok((cas, current))
    }

    fn swap(&self, cas: Self::Handle, value: &[u8]) -> Result<bool, StoreError> {
        use spin_sdk::wit::wasi::keyvalue::atomics;
        match atomics::swap(cas, value) {
            Ok(()) => Ok(true),
            Err(atomics::CasError::CasFailed(_)) => Ok(false),
            Err(atomics::CasError::StoreError(e)) => Err(StoreError(format!("swap: {e:?}"))),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.bucket
            .get(key)
            .map_err(|e| StoreError(format!("get {key}: {e:?}")))
    }
}

/// The `default` store as a `wasi:keyvalue` bucket (the same data as [`SpinStore`]).
fn wasi_bucket() -> Result<spin_sdk::wit::wasi::keyvalue::store::Bucket, StoreError> {
    spin_sdk::wit::wasi::keyvalue::store::open("default")
        .map_err(|e| StoreError(format!("opening the default store: {e:?}")))
}

/// The answer of a private route that runs a step or a run: the run's view as JSON, or a 500
/// with the error (logged, with `context`).
pub fn run_answer(result: Result<String, String>, context: &str) -> Response {
    match result {
        Ok(view) => Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(view)
            .build(),
        Err(e) => {
            eprintln!("{context}: {e}");
            Response::new(500, e)
        }
    }
}

/// Answers `out` with `status` and a body (JSON if it starts with `{`, else text), and ends the
/// response, so the caller has its whole answer while this invocation may go on working.
pub async fn answer(out: spin_sdk::http::ResponseOutparam, status: u16, body: &str) {
    use futures::SinkExt;
    use spin_sdk::http::{Fields, OutgoingResponse};
    let content_type = match body.starts_with('{') {
        true => "application/json",
        false => "text/plain; charset=utf-8",
    };
    let headers = Fields::from_list(&[("content-type".to_string(), content_type.into())])
        .unwrap_or_else(|_| Fields::new());
    let response = OutgoingResponse::new(headers);
    if response.set_status_code(status).is_err() {
        eprintln!("answering with status {status}: not a status");
    }
    let mut sink = response.take_body();
    out.set(response);
    let sent = async {
        sink.send(body.as_bytes().to_vec()).await?;
        sink.flush().await?;
        sink.close().await
    };
    if let Err(e) = sent.await {
        eprintln!("answering with status {status}: the caller went away: {e:?}");
    }
}

/// [`run_answer`] through a response outparam, ended before the invocation goes on.
pub async fn answer_run(
    out: spin_sdk::http::ResponseOutparam,
    result: Result<String, String>,
    context: &str,
) {
    match result {
        Ok(view) => answer(out, 200, &view).await,
        Err(e) => {
            eprintln!("{context}: {e}");
            answer(out, 500, &e).await
        }
    }
}

/// A Spin variable of this component; the error names the variable, never a value.
pub fn variable(name: &str) -> Result<String, String> {
    spin_sdk::variables::get(name).map_err(|e| format!("variable {name}: {e}"))
}

/// The `staging_key` variable: the AEAD key of passwords and staged data.
pub fn staging_key() -> Result<SecretKey, String> {
    variable("staging_key")?
        .parse()
        .map_err(|e| format!("variable staging_key: {e}"))
}

/// The `default_region` variable: where bare national numbers are read.
pub fn default_region() -> Result<Region, String> {
    variable("default_region")?
        .parse()
        .map_err(|e| format!("variable default_region: {e}"))
}

/// Random bytes from the host (`wasi:random`), for nonces and ids.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(bytes)
}

/// An answer read whole.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// Sends `request` like [`send`], giving up after `timeout` (the request is then dropped, which
/// cancels it): a server that accepts a connection and never answers costs one timeout, not a
/// run stuck for ever.
pub async fn send_within(
    request: &SourceRequest,
    body: Option<(&str, Vec<u8>)>,
    timeout: std::time::Duration,
) -> Result<Answer, String> {
    let sending = std::pin::pin!(send(request, body));
    let waiting = std::pin::pin!(sleep(timeout));
    match first_of(sending, waiting).await {
        Either::Left(answer) => answer,
        Either::Right(()) => Err(format!(
            "{} {}: no answer within {} s",
            request.method,
            request.url,
            timeout.as_secs()
        )),
    }
}

/// POSTs one body, given piece by piece (each piece sent before the next is made), to each of
/// `requests` at once: the body is made once however many receive it, and a large upload never
/// sits whole in memory. `content_length` must be the body's exact length: a body that ends
/// early (a piece failed) is then refused by the HTTP layer, never taken as whole. A piece that
/// fails ends every request with its error; a request that fails alone ends alone. The timeout
/// covers the exchange, plus a second per MiB of body. One answer per request, in order.
pub async fn send_stream(
    requests: &[SourceRequest],
    content_type: &str,
    content_length: u64,
    pieces: impl Iterator<Item = Result<Vec<u8>, String>>,
    timeout: std::time::Duration,
) -> Vec<Result<Answer, String>> {
    use futures::SinkExt;
    use futures::future::LocalBoxFuture;

    let failed = |n: usize, e: &dyn std::fmt::Display| {
        format!("{} {}: {e}", requests[n].method, requests[n].url)
    };
    let mut answers: Vec<Option<Result<Answer, String>>> = Vec::new();
    let mut sinks = Vec::new();
    let mut exchanges: Vec<Option<LocalBoxFuture<'static, Result<Answer, String>>>> = Vec::new();
    for (n, request) in requests.iter().enumerate() {
        match outgoing_request(request, content_type, content_length) {
            Ok(outgoing) => {
                sinks.push(Some(outgoing.take_body()));
                exchanges.push(Some(Box::pin(exchange(outgoing))));
                answers.push(None);
            }
            Err(e) => {
                sinks.push(None);
                exchanges.push(None);
                answers.push(Some(Err(failed(n, &e))));
            }
        }
    }
    let mut writing = std::pin::pin!(async move {
        for piece in pieces {
            let mut piece = piece?;
            let receivers: Vec<usize> = (0..sinks.len()).filter(|&n| sinks[n].is_some()).collect();
            if receivers.is_empty() {
                break; // every request failed: no one is left to make the body for
            }
            for (i, &n) in receivers.iter().enumerate() {
                // The last receiver takes the piece itself; the others a copy.
                let body = if i + 1 == receivers.len() {
                    std::mem::take(&mut piece)
                } else {
                    piece.clone()
                };
                let sent = match sinks[n].as_mut() {
                    Some(sink) => sink.send(body).await.is_ok(),
                    None => false,
                };
                if !sent {
                    // Its request fails on its own: the body it got is short of its length.
                    sinks[n] = None;
                }
            }
        }
        // Dropping the sinks finishes the bodies.
        drop(sinks);
        Ok::<(), String>(())
    });
    let mut written = false;
    let all = std::pin::pin!(std::future::poll_fn(|context| {
        if !written && let std::task::Poll::Ready(outcome) = writing.as_mut().poll(context) {
            if let Err(e) = outcome {
                return std::task::Poll::Ready(Err(e));
            }
            written = true;
        }
        let mut waiting = false;
        for (n, slot) in exchanges.iter_mut().enumerate() {
            let Some(exchange) = slot else { continue };
            match exchange.as_mut().poll(context) {
                std::task::Poll::Ready(answer) => {
                    answers[n] = Some(answer.map_err(|e| failed(n, &e)));
                    *slot = None;
                }
                std::task::Poll::Pending => waiting = true,
            }
        }
        if waiting {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Ok(()))
        }
    }));
    let allowed = timeout + std::time::Duration::from_secs(content_length >> 20);
    let stream_error = match first_of(all, std::pin::pin!(sleep(allowed))).await {
        Either::Left(Ok(())) => None,
        Either::Left(Err(e)) => Some(e),
        Either::Right(()) => Some(format!("no answer within {} s", allowed.as_secs())),
    };
    answers
        .into_iter()
        .enumerate()
        .map(|(n, answer)| match (answer, &stream_error) {
            (Some(answer), _) => answer,
            (None, Some(e)) => Err(failed(n, e)),
            (None, None) => Err(failed(n, &"no answer")),
        })
        .collect()
}

/// A POST of `request` with a body of `content_length` bytes still to be written.
fn outgoing_request(
    request: &SourceRequest,
    content_type: &str,
    content_length: u64,
) -> Result<spin_sdk::http::OutgoingRequest, String> {
    use spin_sdk::http::{Headers, OutgoingRequest, Scheme};

    let (scheme, rest) = request.url.split_once("://").ok_or("not an absolute URL")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let mut entries: Vec<(String, Vec<u8>)> = vec![
        ("content-type".into(), content_type.as_bytes().to_vec()),
        (
            "content-length".into(),
            content_length.to_string().into_bytes(),
        ),
    ];
    for (name, value) in &request.headers {
        entries.push((name.to_string(), value.as_bytes().to_vec()));
    }
    let headers = Headers::from_list(&entries).map_err(|e| format!("{e:?}"))?;
    let outgoing = OutgoingRequest::new(headers);
    outgoing
        .set_method(&spin_sdk::http::Method::Post)
        .and(outgoing.set_scheme(Some(&match scheme {
            "https" => Scheme::Https,
            _ => Scheme::Http,
        })))
        .and(outgoing.set_authority(Some(authority)))
        .and(outgoing.set_path_with_query(Some(path)))
        .map_err(|()| "the request could not be built".to_string())?;
    Ok(outgoing)
}

/// Sends a request whose body is written elsewhere, and reads its answer whole.
async fn exchange(outgoing: spin_sdk::http::OutgoingRequest) -> Result<Answer, String> {
    use spin_sdk::http::IncomingResponse;

    let response = spin_sdk::http::send::<_, IncomingResponse>(outgoing)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let body = response.into_body().await.map_err(|e| format!("{e:?}"))?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// The `request_timeout_seconds` variable: how long an archive or mail server request may take.
pub fn request_timeout() -> Result<std::time::Duration, String> {
    let value = variable("request_timeout_seconds")?;
    match value.trim().parse::<u64>() {
        Ok(seconds) if seconds > 0 => Ok(std::time::Duration::from_secs(seconds)),
        _ => Err(format!(
            "variable request_timeout_seconds: a whole number above 0, not {value:?}"
        )),
    }
}

enum Either<L, R> {
    Left(L),
    Right(R),
}

/// Whichever of two futures finishes first.
async fn first_of<L: std::future::Future, R: std::future::Future>(
    mut left: std::pin::Pin<&mut L>,
    mut right: std::pin::Pin<&mut R>,
) -> Either<L::Output, R::Output> {
    std::future::poll_fn(|context| {
        if let std::task::Poll::Ready(value) = left.as_mut().poll(context) {
            return std::task::Poll::Ready(Either::Left(value));
        }
        if let std::task::Poll::Ready(value) = right.as_mut().poll(context) {
            return std::task::Poll::Ready(Either::Right(value));
        }
        std::task::Poll::Pending
    })
    .await
}

/// Waits `duration` on the host's monotonic clock, yielding to the executor meanwhile.
pub async fn sleep(duration: std::time::Duration) {
    use wasi::clocks::monotonic_clock;
    let deadline = monotonic_clock::now().saturating_add(duration.as_nanos() as u64);
    let mut token = None;
    std::future::poll_fn(|context| {
        if monotonic_clock::now() >= deadline {
            drop(token.take());
            return std::task::Poll::Ready(());
        }
        let pollable = monotonic_clock::subscribe_instant(deadline);
        token = Some(spin_executor::CancelOnDropToken::from(
            spin_executor::push_waker_and_get_token(pollable, context.waker().clone()),
        ));
        std::task::Poll::Pending
    })
    .await
}

/// Sends `request` with an optional body. A failure to connect is `Err` with a description that
/// holds no header (headers carry credentials).
pub async fn send(
    request: &SourceRequest,
    body: Option<(&str, Vec<u8>)>,
) -> Result<Answer, String> {
    let method = match request.method {
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        _ => Method::Get,
    };
    let mut builder = Request::builder();
    builder.method(method).uri(request.url.clone());
    for (name, value) in &request.headers {
        builder.header(*name, value.clone());
    }
    // Spin sends a `wasi:http` body that has no `Content-Length` with `Transfer-Encoding:
    // chunked`, which some servers refuse (Graph's upload ranges answer 411): every body's
    // length is known here, so it is always given, `0` for a POST or PUT without one. A GET
    // without a length goes out with no body at all.
    match body {
        Some((content_type, bytes)) => {
            builder
                .header("content-type", content_type)
                .header("content-length", bytes.len().to_string())
                .body(bytes);
        }
        None if request.method != "GET" => {
            builder.header("content-length", "0");
        }
        None => {}
    }
    let response: Response = spin_sdk::http::send(builder.build())
        .await
        .map_err(|e| format!("{} {}: {e}", request.method, request.url))?;
    Ok(Answer {
        status: *response.status(),
        retry_after: response
            .header("retry-after")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        body: response.into_body(),
    })
}

/// Microsoft Graph's settings and login, for the import and the destination check.
pub mod graph {
    use archiver_core::graph::{AccessToken, GraphSettings, LoginError, parse_token};
    use std::time::Duration;

    /// The Graph settings of the deployment; an unset one is named.
    pub fn settings() -> Result<GraphSettings, String> {
        let set = |name: &str| -> Result<String, String> {
            match super::variable(name)?.trim() {
                "" => Err(format!(
                    "variable {name} is not set: the graph destination needs it"
                )),
                value => Ok(value.trim_end_matches('/').to_string()),
            }
        };
        Ok(GraphSettings {
            graph_origin: set("graph_origin")?,
            login_origin: set("graph_login_origin")?,
            tenant: set("graph_tenant")?,
            client_id: set("graph_client_id")?,
        })
    }

    /// Gets a token with the client credentials, asking again when the service is briefly
    /// unavailable.
    pub async fn login(
        settings: &GraphSettings,
        client_secret: &str,
        timeout: Duration,
    ) -> Result<AccessToken, LoginError> {
        let (request, form) = settings.token_request(client_secret);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let body = Some((
                "application/x-www-form-urlencoded",
                form.clone().into_bytes(),
            ));
            let answer = match super::send_within(&request, body, timeout).await {
                Ok(answer) => parse_token(
                    answer.status,
                    &answer.body,
                    &settings.tenant,
                    chrono::Utc::now(),
                ),
                // Not the transport's text: it is about the request, whose form holds the
                // secret.
                Err(_) => Err(LoginError::Unreachable),
            };
            match answer {
                Err(e) if e.is_transient() && attempt < 3 => {
                    super::sleep(Duration::from_secs(1)).await
                }
                answer => return answer,
            }
        }
    }
}

/// The connector's lease, through `wasi:keyvalue` compare-and-swap on the `default` store (a
/// swap answered "failed" read back, see [`archiver_core::lease::swap_lease`]).
pub mod lease {
    use archiver_core::lease::{self, Lease, LeaseSwap};
    use chrono::{DateTime, Utc};

    fn store() -> Result<super::WasiSwap, String> {
        super::WasiSwap::open().map_err(|e| format!("lease: {e}"))
    }

    /// Takes or renews the lease of `connector` for `holder`: `Ok(Err(lease))` when another run
    /// holds it (also when that run took it between our read and our swap).
    pub fn acquire(
        connector: &str,
        holder: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<(), Lease>, String> {
        lease::swap_lease(&store()?, connector, holder, now, LeaseSwap::Acquire)
            .map_err(|e| format!("lease: {e}"))
    }

    /// Takes the lease of `connector` for a run starting now: `Ok(Err(lease))` when any run
    /// holds it, a run of the same id included.
    pub fn take(
        connector: &str,
        holder: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<(), Lease>, String> {
        lease::swap_lease(&store()?, connector, holder, now, LeaseSwap::Take)
            .map_err(|e| format!("lease: {e}"))
    }

    /// Renews the lease `holder` holds; an error when it cannot, above all when another run
    /// has taken it: the holder must then stop writing.
    pub fn renew(connector: &str, holder: &str, now: DateTime<Utc>) -> Result<(), String> {
        match acquire(connector, holder, now)? {
            Ok(()) => Ok(()),
            Err(other) => Err(format!("the run lost its lease to run {}", other.holder)),
        }
    }

    /// Gives the lease up if `holder` holds it; someone else holding it now is no error.
    pub fn release(connector: &str, holder: &str, now: DateTime<Utc>) -> Result<(), String> {
        lease::swap_release(&store()?, connector, holder, now).map_err(|e| format!("lease: {e}"))
    }
}

/// The `step_max_items`, `step_max_bytes` and `step_max_seconds` variables: how much one step
/// of a run does before it checkpoints.
pub fn step_limits() -> Result<archiver_core::pipeline::StepLimits, String> {
    archiver_core::pipeline::StepLimits::parse(
        &variable("step_max_items")?,
        &variable("step_max_bytes")?,
        &variable("step_max_seconds")?,
    )
}
