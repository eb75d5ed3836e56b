//! Runs a Spin application's components on Wasmtime with Spin's semantics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::kv::{CasHandle, KvBackend, StoreHandle};
use crate::manifest::{Manifest, Route};
use crate::outbound::{AllowedHost, chained_component, origin_of};
use crate::variables::{AppVariables, is_valid_name};

mod spin_bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "fermyon:spin/host",
        imports: { default: trappable },
        with: {
            "fermyon:spin/key-value.store": crate::kv::StoreHandle,
            "wasi:keyvalue/store.bucket": crate::kv::StoreHandle,
            "wasi:keyvalue/atomics.cas": crate::kv::CasHandle,
        },
    });
}

mod cron_bindings {
    wasmtime::component::bindgen!({
        path: "../components/archive-timer/wit",
        world: "fermyon:spin-cron/spin-cron",
        exports: { default: async },
    });
}

use spin_bindings::fermyon::spin::{key_value, variables};
use spin_bindings::wasi::keyvalue::{atomics, batch, store as wasi_store};

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// The deadline of an invocation unless a test sets another. Spin sets none: this one only
/// ends a hung invocation, far above what a whole run takes on a loaded machine (the fetch's
/// invocation that drives a run lasts as long as the run).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
/// Chained requests deeper than this are refused (a loop between components).
const MAX_CHAIN_DEPTH: u32 = 8;
/// The authority external requests are addressed to, as if `spin up` listened there.
const LISTEN_AUTHORITY: &str = "127.0.0.1:3000";

/// The one engine of the test run, with a thread that advances its epoch.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).expect("engine configuration is valid");
        let ticker = engine.weak();
        std::thread::spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
        engine
    })
}

/// Compiles each `.wasm` once per test run, and once per content across runs through a cache
/// of precompiled components under `target/test-host-cache`.
fn compile(path: &Path) -> anyhow::Result<Component> {
    static COMPILED: OnceLock<Mutex<BTreeMap<PathBuf, Component>>> = OnceLock::new();
    let compiled = COMPILED.get_or_init(Default::default);
    let path = path.canonicalize().with_context(|| {
        format!(
            "component {} does not exist; build it first",
            path.display()
        )
    })?;
    let mut compiled = compiled
        .lock()
        .map_err(|_| anyhow::anyhow!("component cache poisoned"))?;
    if let Some(component) = compiled.get(&path) {
        return Ok(component.clone());
    }
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let cache_dir = crate::project_root().join("target/test-host-cache");
    let cached = cache_dir.join(format!("{digest}-wasmtime-48.0.8.cwasm"));
    // SAFETY: the file was written by `Component::serialize` of this same engine configuration
    // in an earlier run; wasmtime checks its header and refuses a mismatched one.
    let component = match unsafe { Component::deserialize_file(engine(), &cached) } {
        Ok(component) => component,
        Err(_) => {
            let component = Component::new(engine(), &bytes)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("compiling {}", path.display()))?;
            std::fs::create_dir_all(&cache_dir)?;
            let serialized = component.serialize().map_err(anyhow::Error::from)?;
            let partial = cached.with_extension("partial");
            std::fs::write(&partial, serialized)?;
            std::fs::rename(&partial, &cached)?;
            component
        }
    };
    compiled.insert(path, component.clone());
    Ok(component)
}

/// What one component may do, resolved from the manifest and variables.
struct Guest {
    id: String,
    stores: Vec<String>,
    variables: BTreeMap<String, String>,
    allowed_hosts: Vec<AllowedHost>,
    /// The route written for it, for the `spin-*` headers of chained requests.
    route: Option<Route>,
    http: Option<ProxyPre<State>>,
    cron: Option<cron_bindings::SpinCronPre<State>>,
}

/// What all invocations of one app share.
struct Shared {
    guests: BTreeMap<String, Arc<Guest>>,
    routes: Vec<(Route, String)>,
    kv: KvBackend,
    /// Labels of the stores that exist (Spin's runtime config; `default` unless a test adds).
    known_stores: Vec<String>,
    deadline_ticks: AtomicU64,
    /// Writes to the key-value store still allowed before a simulated crash; -1: no crash.
    writes_before_crash: AtomicI64,
    logs: Mutex<Vec<u8>>,
    /// Outbound URL prefix -> statuses to answer with instead of sending, one per request.
    outbound_faults: Mutex<Vec<(String, u16, usize)>>,
    /// Outbound URL prefix -> rewrites of requests, each for as many requests as it applies to.
    outbound_rewrites: Mutex<Vec<(String, usize, RewriteFn)>>,
    /// The largest linear memory any instance of each component reached, in bytes.
    peak_memory: Mutex<BTreeMap<String, usize>>,
    /// Plain-HTTP outbound connections, kept alive and shared by all instances of the app, as
    /// Spin keeps them (TLS goes through a fresh connection each time).
    http_client: PooledClient,
    /// Invocations still running, answered or not (a component may work on after its answer).
    in_flight: AtomicUsize,
}

/// Counts an invocation as running while it lives.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: &Arc<Shared>) -> InFlight {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The trigger an invocation came from: only the HTTP trigger gives a component an origin for
/// requests to itself (`http://self`), as in Spin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Http,
    Cron,
}

type PooledClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    HyperOutgoingBody,
>;

/// How long an idle connection stays pooled. Without a timer the pool never closes one, and
/// a server with one process per connection (Cyrus' httpd) runs out of processes for the
/// connections that apps long finished with still hold open.
const POOL_IDLE: Duration = Duration::from_secs(5);

fn pooled_client() -> PooledClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(connector)
}

/// A crash the test asked for: the invocation was stopped at a key-value write.
#[derive(Debug)]
pub struct SimulatedCrash;

impl std::fmt::Display for SimulatedCrash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated crash at a key-value write")
    }
}

impl std::error::Error for SimulatedCrash {}

/// The state of one invocation's store.
struct State {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Outbound,
    guest: Arc<Guest>,
    shared: Arc<Shared>,
}

/// Records how far each instance's memory grows (never refusing), for the tests' memory bounds.
impl wasmtime::ResourceLimiter for State {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if let Ok(mut peaks) = self.shared.peak_memory.lock() {
            let peak = peaks.entry(self.guest.id.clone()).or_default();
            *peak = (*peak).max(desired);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outbound HTTP as Spin does it: `allowed_outbound_hosts` enforced, `*.spin.internal` served
/// in-process by the named component.
struct Outbound {
    guest: Arc<Guest>,
    shared: Arc<Shared>,
    depth: u32,
    trigger: Trigger,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<HyperOutgoingBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<HyperOutgoingBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        if is_self_request(request.uri()) {
            // Spin: allowed by an `http://self` (or `*`) entry, and sent to the app's own
            // listener; outside the HTTP trigger no origin is set and the request is invalid.
            if !self
                .guest
                .allowed_hosts
                .iter()
                .any(AllowedHost::allows_self)
            {
                return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
            }
            if self.trigger != Trigger::Http {
                return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestUriInvalid) });
            }
            let shared = self.shared.clone();
            return Box::new(async move {
                let response = serve_public(&shared, request).await.map_err(|e| {
                    wasmtime_wasi_http::Error::InternalError(Some(format!("{e:#}")))
                })?;
                let done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                    Box::new(async { Ok(()) });
                Ok((response, done))
            });
        }
        let Some((scheme, host, port)) = origin_of(request.uri()) else {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestUriInvalid) });
        };
        let allowed = self
            .guest
            .allowed_hosts
            .iter()
            .any(|entry| entry.allows(&scheme, &host, port));
        if !allowed {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        if let Some(status) = self.shared.outbound_fault(&request.uri().to_string()) {
            return Box::new(async move {
                // Read the request as a server would before it answers with the fault; a body
                // the guest stops sending changes nothing about the answer.
                let _drained = request.into_body().collect().await;
                let body = Full::new(Bytes::from_static(b"injected by the test host"))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                let response = http::Response::builder()
                    .status(status)
                    .body(body)
                    .map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))?;
                let done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                    Box::new(async { Ok(()) });
                Ok((response, done))
            });
        }
        if let Some(target) = chained_component(&host) {
            let target = target.to_string();
            let shared = self.shared.clone();
            let depth = self.depth + 1;
            return Box::new(async move {
                if depth > MAX_CHAIN_DEPTH {
                    return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
                }
                let guest = shared
                    .guests
                    .get(&target)
                    .cloned()
                    .ok_or(wasmtime_wasi_http::Error::DestinationNotFound)?;
                let mut request = request;
                request.headers_mut().remove(http::header::HOST);
                let response = invoke_http(&shared, &guest, request, depth)
                    .await
                    .map_err(|e| {
                        wasmtime_wasi_http::Error::InternalError(Some(format!("{e:#}")))
                    })?;
                let done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                    Box::new(async { Ok(()) });
                Ok((response, done))
            });
        }
        let shared = self.shared.clone();
        Box::new(async move {
            let url = request.uri().to_string();
            let request = match shared.has_rewrite(&url) {
                false => request,
                true => {
                    let (parts, body) = request.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map_err(|e| {
                            wasmtime_wasi_http::Error::InternalError(Some(format!("{e:?}")))
                        })?
                        .to_bytes();
                    let body = match shared.rewrite(&url, &body) {
                        None => body,
                        Some(Rewrite::Body(replaced)) => Bytes::from(replaced),
                        Some(Rewrite::Answer(status, answer)) => {
                            let response = http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(full_body(answer))
                                .map_err(|e| {
                                    wasmtime_wasi_http::Error::InternalError(Some(e.to_string()))
                                })?;
                            let done: Box<
                                dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send,
                            > = Box::new(async { Ok(()) });
                            return Ok((response, done));
                        }
                    };
                    // Sent as the guest framed it: with a Content-Length (the new one) when it
                    // gave one, else chunked, as Spin sends a body of no given length.
                    let mut parts = parts;
                    let body = match parts.headers.contains_key(http::header::CONTENT_LENGTH) {
                        true => {
                            parts
                                .headers
                                .insert(http::header::CONTENT_LENGTH, body.len().into());
                            full_body(body.to_vec())
                        }
                        false => unsized_body(body),
                    };
                    http::Request::from_parts(parts, body)
                }
            };
            if request.uri().scheme() != Some(&http::uri::Scheme::HTTP) {
                let (response, io) =
                    wasmtime_wasi_http::default_send_request(request, options).await?;
                let io: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                    Box::new(io);
                return Ok((response.map(BodyExt::boxed_unsync), io));
            }
            let response =
                shared
                    .http_client
                    .request(request)
                    .await
                    .map_err(|e| match e.is_connect() {
                        true => wasmtime_wasi_http::Error::Connect(std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            e.to_string(),
                        )),
                        false => wasmtime_wasi_http::Error::InternalError(Some(e.to_string())),
                    })?;
            let response =
                response.map(|body| body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync());
            let done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }
}

/// A body whose length is not known beforehand, as a guest's `wasi:http` body without a
/// `Content-Length` is: hyper sends it chunked.
fn unsized_body(bytes: Bytes) -> HyperOutgoingBody {
    UnsizedBody(Some(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// One chunk of bytes that tells no size (the default `size_hint`) and no end until it is read.
struct UnsizedBody(Option<Bytes>);

impl http_body::Body for UnsizedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|bytes| Ok(http_body::Frame::data(bytes))))
    }
}

fn full_body(bytes: Vec<u8>) -> HyperOutgoingBody {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What a test's rewrite does to one outbound request (see [`App::rewrite_outbound`]).
pub enum Rewrite {
    /// Send this body instead of the guest's.
    Body(Vec<u8>),
    /// Answer with this status and JSON body without sending anything.
    Answer(u16, Vec<u8>),
}

/// A test's rewrite: given a request body, what to do instead (`None`: leave it alone).
pub type RewriteFn = Box<dyn Fn(&[u8]) -> Option<Rewrite> + Send + Sync>;

impl key_value::Host for State {}

impl key_value::HostStore for State {
    fn open(
        &mut self,
        label: String,
    ) -> wasmtime::Result<Result<Resource<StoreHandle>, key_value::Error>> {
        if !self.guest.stores.contains(&label) {
            return Ok(Err(key_value::Error::AccessDenied));
        }
        if !self.shared.known_stores.contains(&label) {
            return Ok(Err(key_value::Error::NoSuchStore));
        }
        Ok(Ok(self.table.push(StoreHandle { label })?))
    }

    fn get(
        &mut self,
        store: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, key_value::Error>> {
        let label = &self.table.get(&store)?.label;
        Ok(self.shared.kv.get(label, &key).map_err(other))
    }

    fn set(
        &mut self,
        store: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        self.shared.before_write()?;
        let label = &self.table.get(&store)?.label;
        Ok(self.shared.kv.set(label, &key, &value).map_err(other))
    }

    fn delete(
        &mut self,
        store: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), key_value::Error>> {
        self.shared.before_write()?;
        let label = &self.table.get(&store)?.label;
        Ok(self.shared.kv.delete(label, &key).map_err(other))
    }

    fn exists(
        &mut self,
        store: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, key_value::Error>> {
        let label = &self.table.get(&store)?.label;
        Ok(self
            .shared
            .kv
            .get(label, &key)
            .map(|v| v.is_some())
            .map_err(other))
    }

    fn get_keys(
        &mut self,
        store: Resource<StoreHandle>,
    ) -> wasmtime::Result<Result<Vec<String>, key_value::Error>> {
        let label = &self.table.get(&store)?.label;
        Ok(self.shared.kv.keys(label).map_err(other))
    }

    fn drop(&mut self, store: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

fn other(error: anyhow::Error) -> key_value::Error {
    key_value::Error::Other(format!("{error:#}"))
}

// `wasi:keyvalue`, on the same stores and rows as `fermyon:spin/key-value`, as in Spin.

fn wasi_other(error: anyhow::Error) -> wasi_store::Error {
    wasi_store::Error::Other(format!("{error:#}"))
}

impl State {
    fn bucket_label(&self, bucket: &Resource<StoreHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(bucket)?.label.clone())
    }
}

impl wasi_store::Host for State {
    fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<StoreHandle>, wasi_store::Error>> {
        if !self.guest.stores.contains(&identifier) {
            return Ok(Err(wasi_store::Error::AccessDenied));
        }
        if !self.shared.known_stores.contains(&identifier) {
            return Ok(Err(wasi_store::Error::NoSuchStore));
        }
        Ok(Ok(self.table.push(StoreHandle { label: identifier })?))
    }
}

impl wasi_store::HostBucket for State {
    fn get(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_store::Error>> {
        let label = self.bucket_label(&bucket)?;
        Ok(self.shared.kv.get(&label, &key).map_err(wasi_other))
    }

    fn set(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        self.shared.before_write()?;
        let label = self.bucket_label(&bucket)?;
        Ok(self.shared.kv.set(&label, &key, &value).map_err(wasi_other))
    }

    fn delete(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        self.shared.before_write()?;
        let label = self.bucket_label(&bucket)?;
        Ok(self.shared.kv.delete(&label, &key).map_err(wasi_other))
    }

    fn exists(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<bool, wasi_store::Error>> {
        let label = self.bucket_label(&bucket)?;
        Ok(self
            .shared
            .kv
            .get(&label, &key)
            .map(|v| v.is_some())
            .map_err(wasi_other))
    }

    fn list_keys(
        &mut self,
        bucket: Resource<StoreHandle>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<wasi_store::KeyResponse, wasi_store::Error>> {
        let label = self.bucket_label(&bucket)?;
        Ok(self
            .shared
            .kv
            .keys(&label)
            .map(|keys| wasi_store::KeyResponse { keys, cursor: None })
            .map_err(wasi_other))
    }

    fn drop(&mut self, bucket: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for State {
    fn increment(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, wasi_store::Error>> {
        let label = self.bucket_label(&bucket)?;
        match self.shared.kv.redis(&label) {
            Some(redis) => {
                self.shared.before_write()?;
                Ok(redis.increment(&key, delta).map_err(wasi_other))
            }
            None => Ok(Err(wasi_store::Error::Other(
                "increment is not provided by the test host on SQLite".into(),
            ))),
        }
    }

    fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        self.shared.before_write()?;
        if self.table.get(&cas)?.redis.is_some() {
            return self.redis_swap(cas, &value);
        }
        let handle = self.table.get(&cas)?;
        let swapped = self.shared.kv.compare_and_swap(
            &handle.label,
            &handle.key,
            handle.seen.as_deref(),
            &value,
        );
        Ok(match swapped {
            Ok(true) => {
                self.table.delete(cas)?;
                Ok(())
            }
            Ok(false) => Err(atomics::CasError::CasFailed(cas)),
            Err(e) => {
                self.table.delete(cas)?;
                Err(atomics::CasError::StoreError(wasi_other(e)))
            }
        })
    }
}

impl State {
    /// Spin's Redis swap: the transaction, then the `UNWATCH <key>` Redis refuses; on that
    /// "failure" (always) a new compare-and-swap on the key, watched, is handed back, as Spin's
    /// host does.
    fn redis_swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: &[u8],
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let handle = self.table.get_mut(&cas)?;
        let key = handle.key.clone();
        let label = handle.label.clone();
        let answer = match handle.redis.as_mut() {
            Some(connection) => crate::kv::RedisKv::cas_swap(connection, &key, value),
            None => Err("no connection".into()),
        };
        self.table.delete(cas)?;
        if answer.is_ok() {
            return Ok(Ok(()));
        }
        let renewed = self.redis_cas(label, key);
        Ok(match renewed {
            Ok(mut handle) => {
                let key = handle.key.clone();
                let watched = match handle.redis.as_mut() {
                    Some(connection) => crate::kv::RedisKv::cas_current(connection, &key),
                    None => Err(anyhow::anyhow!("no connection")),
                };
                match watched {
                    Ok(seen) => {
                        handle.seen = seen;
                        Err(atomics::CasError::CasFailed(self.table.push(handle)?))
                    }
                    Err(e) => Err(atomics::CasError::StoreError(wasi_other(e))),
                }
            }
            Err(e) => Err(atomics::CasError::StoreError(wasi_other(e))),
        })
    }

    /// A compare-and-swap on a Redis label, with a connection of its own.
    fn redis_cas(&self, label: String, key: String) -> anyhow::Result<CasHandle> {
        let redis = self
            .shared
            .kv
            .redis(&label)
            .context("the label is not on Redis")?;
        Ok(CasHandle {
            redis: Some(redis.cas_connection()?),
            label,
            key,
            seen: None,
        })
    }
}

impl atomics::HostCas for State {
    fn new(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<CasHandle>, wasi_store::Error>> {
        let label = self.bucket_label(&bucket)?;
        if self.shared.kv.redis(&label).is_some() {
            return Ok(match self.redis_cas(label, key) {
                Ok(handle) => Ok(self.table.push(handle)?),
                Err(e) => Err(wasi_other(e)),
            });
        }
        let seen = match self.shared.kv.get(&label, &key) {
            Ok(seen) => seen,
            Err(e) => return Ok(Err(wasi_other(e))),
        };
        Ok(Ok(self.table.push(CasHandle {
            label,
            key,
            seen,
            redis: None,
        })?))
    }

    fn current(
        &mut self,
        cas: Resource<CasHandle>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wasi_store::Error>> {
        let handle = self.table.get_mut(&cas)?;
        let key = handle.key.clone();
        match handle.redis.as_mut() {
            Some(connection) => {
                Ok(crate::kv::RedisKv::cas_current(connection, &key).map_err(wasi_other))
            }
            None => Ok(Ok(handle.seen.clone())),
        }
    }

    fn drop(&mut self, cas: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for State {
    fn get_many(
        &mut self,
        bucket: Resource<StoreHandle>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, wasi_store::Error>> {
        let label = self.bucket_label(&bucket)?;
        if keys.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        if let Some(redis) = self.shared.kv.redis(&label) {
            return Ok(redis.get_many(&keys).map_err(wasi_other));
        }
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            match self.shared.kv.get(&label, &key) {
                Ok(value) => found.push((key, value)),
                Err(e) => return Ok(Err(wasi_other(e))),
            }
        }
        Ok(Ok(found))
    }

    fn set_many(
        &mut self,
        bucket: Resource<StoreHandle>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        let label = self.bucket_label(&bucket)?;
        // A crash at the nth write of a batch leaves the writes before it (a batch is not
        // atomic); Spin writes a batch in one transaction, and so does this host.
        let allowed = self.shared.writes_allowed(key_values.len());
        let written = self.shared.kv.set_many(&label, &key_values[..allowed]);
        self.batch_outcome(allowed, key_values.len(), written)
    }

    fn delete_many(
        &mut self,
        bucket: Resource<StoreHandle>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        let label = self.bucket_label(&bucket)?;
        let allowed = self.shared.writes_allowed(keys.len());
        let deleted = self.shared.kv.delete_many(&label, &keys[..allowed]);
        self.batch_outcome(allowed, keys.len(), deleted)
    }
}

impl State {
    fn batch_outcome(
        &self,
        allowed: usize,
        asked: usize,
        done: anyhow::Result<()>,
    ) -> wasmtime::Result<Result<(), wasi_store::Error>> {
        if let Err(e) = done {
            return Ok(Err(wasi_other(e)));
        }
        if allowed < asked {
            return Err(wasmtime::Error::new(SimulatedCrash));
        }
        Ok(Ok(()))
    }
}

impl variables::Host for State {
    fn get(&mut self, name: String) -> wasmtime::Result<Result<String, variables::Error>> {
        if !is_valid_name(&name) {
            return Ok(Err(variables::Error::InvalidName(name)));
        }
        Ok(match self.guest.variables.get(&name) {
            Some(value) => Ok(value.clone()),
            None => Err(variables::Error::Undefined(format!(
                "no variable for {name:?}"
            ))),
        })
    }
}

impl Shared {
    /// The component Spin would route `path` to: an exact route first, then the longest
    /// wildcard prefix. Private routes never match.
    pub fn route(&self, path: &str) -> Option<String> {
        let path = path.trim_end_matches('/');
        let exact = self
            .routes
            .iter()
            .find(|(route, _)| matches!(route, Route::Exact(exact) if exact == path));
        if let Some((_, component)) = exact {
            return Some(component.clone());
        }
        self.routes
            .iter()
            .filter_map(|(route, component)| match route {
                Route::Wildcard(prefix)
                    if path == prefix
                        || path.starts_with(prefix.as_str())
                            && path[prefix.len()..].starts_with('/')
                        || prefix.is_empty() =>
                {
                    Some((prefix.len(), component))
                }
                _ => None,
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, component)| component.clone())
    }

    /// The status to answer `url` with, if a test injected a fault for it.
    fn outbound_fault(&self, url: &str) -> Option<u16> {
        let mut faults = self.outbound_faults.lock().ok()?;
        let fault = faults
            .iter_mut()
            .find(|(prefix, _, left)| *left > 0 && url.starts_with(prefix.as_str()))?;
        fault.2 -= 1;
        Some(fault.1)
    }

    fn has_rewrite(&self, url: &str) -> bool {
        self.outbound_rewrites.lock().is_ok_and(|rewrites| {
            rewrites
                .iter()
                .any(|(prefix, left, _)| *left > 0 && url.starts_with(prefix.as_str()))
        })
    }

    fn rewrite(&self, url: &str, body: &[u8]) -> Option<Rewrite> {
        let mut rewrites = self.outbound_rewrites.lock().ok()?;
        for (prefix, left, rewrite) in rewrites.iter_mut() {
            if *left > 0
                && url.starts_with(prefix.as_str())
                && let Some(done) = rewrite(body)
            {
                *left -= 1;
                return Some(done);
            }
        }
        None
    }

    /// How many of `writes` may happen before the simulated crash (all when none is set).
    fn writes_allowed(&self, writes: usize) -> usize {
        (0..writes)
            .take_while(|_| self.before_write().is_ok())
            .count()
    }

    fn before_write(&self) -> wasmtime::Result<()> {
        let left = self.writes_before_crash.load(Ordering::SeqCst);
        if left == 0 {
            return Err(wasmtime::Error::new(SimulatedCrash));
        }
        if left > 0 {
            self.writes_before_crash.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn new_store(
        self: &Arc<Self>,
        guest: &Arc<Guest>,
        depth: u32,
        trigger: Trigger,
    ) -> (Store<State>, [MemoryOutputPipe; 2]) {
        let stdout = MemoryOutputPipe::new(1 << 20);
        let stderr = MemoryOutputPipe::new(1 << 20);
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let state = State {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: Outbound {
                guest: guest.clone(),
                shared: self.clone(),
                depth,
                trigger,
            },
            guest: guest.clone(),
            shared: self.clone(),
        };
        let mut store = Store::new(engine(), state);
        store.limiter(|state| state);
        store.set_epoch_deadline(self.deadline_ticks.load(Ordering::SeqCst));
        store.epoch_deadline_trap();
        (store, [stdout, stderr])
    }

    fn keep_logs(&self, guest: &Guest, pipes: &[MemoryOutputPipe; 2]) {
        if let Ok(mut logs) = self.logs.lock() {
            for pipe in pipes {
                let contents = pipe.contents();
                if !contents.is_empty() {
                    logs.extend_from_slice(format!("[{}] ", guest.id).as_bytes());
                    logs.extend_from_slice(&contents);
                    if !contents.ends_with(b"\n") {
                        logs.push(b'\n');
                    }
                }
            }
        }
    }
}

/// The `spin-*` headers Spin adds for a request matched by `route`.
fn spin_headers(uri: &http::Uri, route: Option<&Route>) -> Vec<(&'static str, String)> {
    let path = uri.path();
    let (matched, component_route, path_info) = match route {
        Some(Route::Exact(exact)) => (route.unwrap().as_written(), exact.clone(), String::new()),
        Some(Route::Wildcard(prefix)) => (
            route.unwrap().as_written(),
            prefix.clone(),
            path.strip_prefix(prefix.as_str())
                .unwrap_or(path)
                .to_string(),
        ),
        Some(Route::Private) | None => ("/...".to_string(), String::new(), path.to_string()),
    };
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(LISTEN_AUTHORITY, |a| a.as_str());
    vec![
        ("spin-path-info", path_info),
        (
            "spin-full-url",
            format!("http://{authority}{path_and_query}"),
        ),
        ("spin-matched-route", matched.clone()),
        ("spin-base-path", "/".into()),
        ("spin-raw-component-route", matched),
        ("spin-component-route", component_route),
        ("spin-client-addr", "127.0.0.1:0".into()),
    ]
}

/// Whether a request is to the app itself: a relative URL (wasi-http gives it an empty host) or
/// Spin's `self.alt` authority.
fn is_self_request(uri: &http::Uri) -> bool {
    uri.host()
        .is_none_or(|host| host.is_empty() || host == "self.alt")
}

/// A request as the app's listener takes it: the public route for its path, or Spin's 404.
async fn serve_public<B>(
    shared: &Arc<Shared>,
    request: http::Request<B>,
) -> anyhow::Result<http::Response<HyperOutgoingBody>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let Some(component) = shared.route(request.uri().path()) else {
        return Ok(http::Response::builder()
            .status(404)
            .body(full_body(b"Not Found".to_vec()))?);
    };
    let guest = shared.guests[&component].clone();
    invoke_http(shared, &guest, request, 0).await
}

/// One request to the listener, its body read whole first.
async fn answer_listener(
    shared: &Arc<Shared>,
    request: http::Request<hyper::body::Incoming>,
) -> anyhow::Result<http::Response<Full<Bytes>>> {
    let (mut parts, body) = request.into_parts();
    // As Spin's HTTP trigger does, the request's authority is its `Host` header, so the
    // component's URI and `spin-full-url` name the address the client used.
    if parts.uri.authority().is_none()
        && let Some(host) = parts.headers.get(http::header::HOST)
    {
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("http://{}{path_and_query}", host.to_str()?).parse()?;
    }
    let body = body.collect().await?.to_bytes();
    let response = serve_public(shared, http::Request::from_parts(parts, Full::new(body))).await?;
    let (parts, body) = read_whole(response).await?;
    Ok(http::Response::from_parts(parts, Full::new(body)))
}

/// A component's response, its body read whole.
async fn read_whole(
    response: http::Response<HyperOutgoingBody>,
) -> anyhow::Result<(http::response::Parts, Bytes)> {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the response body: {e:?}"))?
        .to_bytes();
    Ok((parts, body))
}

/// Runs one HTTP invocation of `guest` in a fresh instance.
async fn invoke_http<B>(
    shared: &Arc<Shared>,
    guest: &Arc<Guest>,
    request: http::Request<B>,
    depth: u32,
) -> anyhow::Result<http::Response<HyperOutgoingBody>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let proxy = guest
        .http
        .clone()
        .with_context(|| format!("component {} has no HTTP trigger", guest.id))?;
    let (mut parts, body) = request.into_parts();
    for (name, value) in spin_headers(&parts.uri, guest.route.as_ref()) {
        parts
            .headers
            .insert(name, http::HeaderValue::from_str(&value)?);
    }
    if parts.uri.authority().is_none() {
        let path_and_query = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = format!("http://{LISTEN_AUTHORITY}{path_and_query}").parse()?;
    }
    let request = http::Request::from_parts(parts, body);

    let (mut store, pipes) = shared.new_store(guest, depth, Trigger::Http);
    let running = InFlight::new(shared);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let incoming = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)?;
    let outparam = store.data_mut().http().new_response_outparam(sender)?;
    let task_shared = shared.clone();
    let task_guest = guest.clone();
    let task = tokio::task::spawn(async move {
        let result = async {
            let instance = proxy.instantiate_async(&mut store).await?;
            instance
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
        }
        .await;
        task_shared.keep_logs(&task_guest, &pipes);
        drop(running);
        result.map_err(anyhow::Error::from)
    });
    match receiver.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => Err(anyhow::anyhow!(
            "component {} answered with error {code:?}",
            guest.id
        )),
        Err(_) => match task.await? {
            Ok(()) => bail!("component {} never set a response", guest.id),
            Err(e) => Err(e.context(format!("component {} failed", guest.id))),
        },
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response is not JSON: {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Builds an [`App`].
pub struct AppBuilder {
    manifest: PathBuf,
    variables: BTreeMap<String, String>,
    /// A listener bound for the app, served once it is built.
    listener: Option<std::net::TcpListener>,
    kv_path: Option<PathBuf>,
    extra_stores: Vec<String>,
    /// `[key_value_store.<label>]` tables of a runtime config file: label, type, url.
    runtime_stores: Vec<(String, String, String)>,
    redis: Option<Arc<crate::RedisServer>>,
}

impl AppBuilder {
    /// Puts the `default` store on `server` through its runtime config file, as
    /// `spin up --runtime-config-file runtime-config/redis.toml` does; the app keeps the server
    /// running.
    pub fn redis(mut self, server: Arc<crate::RedisServer>) -> anyhow::Result<Self> {
        self = self.runtime_config(server.runtime_config())?;
        self.redis = Some(server);
        Ok(self)
    }

    /// Uses the key-value store `app` uses (its SQLite file, or its Redis server): another
    /// deployment of the same app on the same state.
    pub fn same_store_as(self, app: &App) -> anyhow::Result<Self> {
        match &app.redis {
            Some(server) => self.redis(server.clone()),
            None => Ok(self.kv_file(app.kv_path())),
        }
    }

    /// Reads a runtime config file as `spin up --runtime-config-file` does, for its
    /// `[key_value_store.<label>]` tables: `type = "redis"` with `url` puts the label on that
    /// Redis server (Spin 3.5's Redis store, see the crate documentation); `type = "spin"` keeps
    /// it on SQLite. Any other type, or a table without what its type needs, is refused.
    pub fn runtime_config(mut self, path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading runtime config {}", path.display()))?;
        let config: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let stores = match config.get("key_value_store") {
            None => return Ok(self),
            Some(toml::Value::Table(stores)) => stores,
            Some(_) => bail!("{}: key_value_store must be a table", path.display()),
        };
        for (label, store) in stores {
            let kind = store
                .get("type")
                .and_then(toml::Value::as_str)
                .unwrap_or("");
            match kind {
                "redis" => {
                    let url = store
                        .get("url")
                        .and_then(toml::Value::as_str)
                        .with_context(|| {
                            format!("key_value_store.{label}: a redis store needs `url`")
                        })?;
                    self.runtime_stores
                        .push((label.clone(), kind.to_string(), url.to_string()));
                }
                "spin" => {
                    self.runtime_stores
                        .push((label.clone(), kind.to_string(), String::new()))
                }
                other => bail!("key_value_store.{label}: type {other:?} is not supported here"),
            }
        }
        Ok(self)
    }

    /// Sets an app variable, as `SPIN_VARIABLE_<NAME>` does for `spin up`.
    pub fn variable(mut self, name: &str, value: impl Into<String>) -> Self {
        self.variables.insert(name.to_string(), value.into());
        self
    }

    /// Binds a loopback port for the app's listener, sets the variable `name` to its origin
    /// (`http://127.0.0.1:<port>`), and serves the app there once built (see [`App::serve`]).
    pub fn listening(mut self, name: &str) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let origin = format!("http://{}", listener.local_addr()?);
        self.listener = Some(listener);
        Ok(self.variable(name, origin))
    }

    /// Listens at `address` (`127.0.0.1:3000`, as `spin up --listen` does) and sets the
    /// variable `name` to its origin.
    pub fn listening_at(mut self, address: &str, name: &str) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(address)
            .with_context(|| format!("listening at {address}"))?;
        let origin = format!("http://{}", listener.local_addr()?);
        self.listener = Some(listener);
        Ok(self.variable(name, origin))
    }

    /// Uses this SQLite file for the key-value store (shared with other apps on it).
    pub fn kv_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.kv_path = Some(path.into());
        self
    }

    /// Declares another store label, as a runtime config file would.
    pub fn store(mut self, label: &str) -> Self {
        self.extra_stores.push(label.to_string());
        self
    }

    pub fn build(self) -> anyhow::Result<App> {
        let manifest = Manifest::load(&self.manifest)?;
        let values = AppVariables::resolve(&manifest, &self.variables)?;
        let owns_kv = self.kv_path.is_none();
        let kv_path = match self.kv_path {
            Some(path) => path,
            None => fresh_kv_path()?,
        };
        let mut linker: Linker<State> = Linker::new(engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        spin_bindings::Host_::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |state: &mut State| state,
        )?;

        let mut known_stores = vec!["default".to_string()];
        known_stores.extend(self.extra_stores);
        known_stores.extend(self.runtime_stores.iter().map(|(label, ..)| label.clone()));
        for (id, spec) in &manifest.components {
            for label in &spec.key_value_stores {
                // Spin refuses at start-up a store no runtime config defines.
                if !known_stores.contains(label) {
                    bail!("unknown key_value_stores label {label:?} for component {id:?}");
                }
            }
        }
        let mut guests = BTreeMap::new();
        for (id, spec) in &manifest.components {
            let route = manifest
                .http_triggers
                .iter()
                .find(|t| &t.component == id)
                .map(|t| t.route.clone());
            let has_cron = manifest.cron_triggers.iter().any(|t| &t.component == id);
            let component = compile(&spec.source).with_context(|| format!("component {id}"))?;
            let pre = linker
                .instantiate_pre(&component)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("linking component {id}"))?;
            let http = match route {
                Some(_) => Some(
                    ProxyPre::new(pre.clone())
                        .map_err(anyhow::Error::from)
                        .with_context(|| {
                            format!("component {id} has an HTTP trigger but no wasi:http handler")
                        })?,
                ),
                None => None,
            };
            let cron = match has_cron {
                true => Some(
                    cron_bindings::SpinCronPre::new(pre)
                        .map_err(anyhow::Error::from)
                        .with_context(|| {
                            format!("component {id} has a cron trigger but no handle-cron-event")
                        })?,
                ),
                false => None,
            };
            let mut variables = BTreeMap::new();
            for (name, template) in &spec.variables {
                variables.insert(name.clone(), values.expand(template)?);
            }
            let allowed_hosts = spec
                .allowed_outbound_hosts
                .iter()
                .map(|entry| AllowedHost::parse(&values.expand(entry)?))
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("allowed_outbound_hosts of {id}"))?;
            for host in &spec.allowed_outbound_hosts {
                let expanded = values.expand(host)?;
                if let Some(target) = url_host(&expanded).and_then(chained_component)
                    && !manifest.components.contains_key(target)
                {
                    bail!("component {id} may chain to {target:?}, which is not in the app");
                }
            }
            guests.insert(
                id.clone(),
                Arc::new(Guest {
                    id: id.clone(),
                    stores: spec.key_value_stores.clone(),
                    variables,
                    allowed_hosts,
                    route: manifest
                        .http_triggers
                        .iter()
                        .find(|t| &t.component == id)
                        .map(|t| t.route.clone()),
                    http,
                    cron,
                }),
            );
        }
        let routes = manifest
            .http_triggers
            .iter()
            .map(|t| (t.route.clone(), t.component.clone()))
            .collect();
        let mut kv = KvBackend::open(&kv_path)?;
        for (label, kind, url) in &self.runtime_stores {
            if kind == "redis" {
                kv.use_redis(label, url)?;
            }
        }
        let shared = Arc::new(Shared {
            guests,
            routes,
            kv,
            known_stores,
            deadline_ticks: AtomicU64::new(ticks(DEFAULT_DEADLINE)),
            writes_before_crash: AtomicI64::new(-1),
            logs: Mutex::new(Vec::new()),
            outbound_faults: Mutex::new(Vec::new()),
            outbound_rewrites: Mutex::new(Vec::new()),
            peak_memory: Mutex::new(BTreeMap::new()),
            http_client: pooled_client(),
            in_flight: AtomicUsize::new(0),
        });
        let listen_origin = match &self.listener {
            Some(listener) => Some(format!("http://{}", listener.local_addr()?)),
            None => None,
        };
        let app = App {
            manifest,
            listen_origin,
            shared,
            kv_path,
            owns_kv,
            redis: self.redis,
        };
        if let Some(listener) = self.listener {
            app.serve(listener)?;
        }
        Ok(app)
    }
}

fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(rest.split([':', '/']).next().unwrap_or(rest))
}

fn ticks(duration: Duration) -> u64 {
    (duration.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
}

fn fresh_kv_path() -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = crate::project_root().join("target/test-host-kv");
    std::fs::create_dir_all(&dir)?;
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let path = dir.join(format!("{}-{n}.db", std::process::id()));
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(path)
}

/// A running application: send it requests, fire its timers, look at its state.
pub struct App {
    manifest: Manifest,
    /// Where the app listens, when it does.
    listen_origin: Option<String>,
    shared: Arc<Shared>,
    kv_path: PathBuf,
    /// The store file was made for this app (not given by the test): it goes with the app.
    owns_kv: bool,
    /// The Redis server the app's store is on, kept running while the app is.
    redis: Option<Arc<crate::RedisServer>>,
}

impl Drop for App {
    fn drop(&mut self) {
        if self.owns_kv {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                // Already gone or never written: nothing to clean.
                let _gone = std::fs::remove_file(format!("{}{suffix}", self.kv_path.display()));
            }
        }
    }
}

impl App {
    /// The Redis server the app's store is on, when [`AppBuilder::redis`] put it there.
    pub fn redis_server(&self) -> Option<&crate::RedisServer> {
        self.redis.as_deref()
    }

    /// An app from the manifest at `path` (relative to the project root if not absolute).
    pub fn builder(manifest: impl AsRef<Path>) -> AppBuilder {
        let manifest = manifest.as_ref();
        let manifest = if manifest.is_absolute() {
            manifest.to_path_buf()
        } else {
            crate::project_root().join(manifest)
        };
        AppBuilder {
            manifest,
            variables: BTreeMap::new(),
            listener: None,
            kv_path: None,
            extra_stores: Vec::new(),
            runtime_stores: Vec::new(),
            redis: None,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The origin the app listens at (`http://127.0.0.1:<port>`), if it listens.
    pub fn listen_origin(&self) -> Option<&str> {
        self.listen_origin.as_deref()
    }

    /// The SQLite file of the key-value store.
    pub fn kv_path(&self) -> &Path {
        &self.kv_path
    }

    /// Sends a request to the app's routes, as a client of `spin up` would. A path no route
    /// matches gets Spin's 404.
    pub async fn send(&self, request: http::Request<Bytes>) -> anyhow::Result<TestResponse> {
        let path = request.uri().path().to_string();
        let Some(component) = self.route(&path) else {
            return Ok(TestResponse {
                status: 404,
                headers: http::HeaderMap::new(),
                body: Bytes::from_static(b"Not Found"),
            });
        };
        self.invoke(&component, request).await
    }

    /// Sends `request` to `component` as another component of the app does, through
    /// `http://{component}.spin.internal`: its private routes too.
    pub async fn send_internal(
        &self,
        component: &str,
        request: http::Request<Bytes>,
    ) -> anyhow::Result<TestResponse> {
        if !self.shared.guests.contains_key(component) {
            anyhow::bail!("no component {component}");
        }
        self.invoke(component, request).await
    }

    async fn invoke(
        &self,
        component: &str,
        request: http::Request<Bytes>,
    ) -> anyhow::Result<TestResponse> {
        let guest = self.shared.guests[component].clone();
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(body));
        let response = invoke_http(&self.shared, &guest, request, 0).await?;
        let (parts, body) = read_whole(response).await?;
        Ok(TestResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<TestResponse> {
        self.send(http::Request::get(path).body(Bytes::new())?)
            .await
    }

    /// The component Spin would route `path` to: an exact route first, then the longest
    /// wildcard prefix. Private routes never match.
    pub fn route(&self, path: &str) -> Option<String> {
        self.shared.route(path)
    }

    /// Serves the app's public routes on `listener`, as `spin up` does on its address, until
    /// the app is dropped; a timer's request to `app_origin` then reaches the app.
    pub fn serve(&self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Some(app) = shared.upgrade() else { break };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let app = app.clone();
                        async move { answer_listener(&app, request).await }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    // A client that goes away mid-request ends only its own connection.
                    let _closed = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Ok(())
    }

    /// Waits until no invocation of the app is running: components that answered and work on
    /// (the timer's runs) have finished too.
    pub async fn settle(&self) {
        while self.shared.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fires `component`'s cron trigger as the cron plugin does, with `timestamp` (seconds since
    /// the Unix epoch). `Ok(Err(reason))` is the component's own error result.
    pub async fn fire_cron(
        &self,
        component: &str,
        timestamp: u64,
    ) -> anyhow::Result<Result<(), String>> {
        let guest = self
            .shared
            .guests
            .get(component)
            .with_context(|| format!("the app has no component {component:?}"))?
            .clone();
        let pre = guest
            .cron
            .clone()
            .with_context(|| format!("component {component} has no cron trigger"))?;
        let (mut store, pipes) = self.shared.new_store(&guest, 0, Trigger::Cron);
        let _running = InFlight::new(&self.shared);
        let result = async {
            let instance = pre.instantiate_async(&mut store).await?;
            instance
                .call_handle_cron_event(&mut store, cron_bindings::Metadata { timestamp })
                .await
        }
        .await;
        self.shared.keep_logs(&guest, &pipes);
        Ok(result?.map_err(|cron_bindings::Error::Other(reason)| reason))
    }

    /// Fires every cron trigger on its schedule, as the cron trigger does, for as long as it is
    /// awaited, or until `limit` events were fired: then it answers with them (component and
    /// timestamp). An event's failure is printed and the schedule goes on.
    pub async fn run_cron_schedules(
        &self,
        limit: Option<usize>,
    ) -> anyhow::Result<Vec<(String, u64)>> {
        let mut schedules = Vec::new();
        for trigger in &self.manifest.cron_triggers {
            let schedule = croner::Cron::new(&trigger.cron_expression)
                .with_seconds_required()
                .with_dom_and_dow()
                .parse()
                .with_context(|| format!("cron expression of {}", trigger.component))?;
            schedules.push((trigger.component.clone(), schedule));
        }
        let mut fired = Vec::new();
        while limit.is_none_or(|limit| fired.len() < limit) {
            let now = chrono::Utc::now();
            let next = schedules
                .iter()
                .filter_map(|(component, schedule)| {
                    Some((schedule.find_next_occurrence(&now, false).ok()?, component))
                })
                .min();
            let Some((at, component)) = next else {
                break;
            };
            tokio::time::sleep((at - now).to_std().unwrap_or_default()).await;
            let timestamp = u64::try_from(at.timestamp()).unwrap_or_default();
            match self.fire_cron(component, timestamp).await {
                Ok(Ok(())) => eprintln!("{component}: cron event {timestamp} handled"),
                Ok(Err(reason)) => {
                    eprintln!("{component}: cron event {timestamp} failed: {reason}")
                }
                Err(e) => eprintln!("{component}: cron event {timestamp} failed: {e:#}"),
            }
            fired.push((component.clone(), timestamp));
        }
        Ok(fired)
    }

    /// Reads a key of the store `label` directly, as a test's assertion.
    pub fn kv_get(&self, label: &str, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.shared.kv.get(label, key)
    }

    /// Writes a key of the store `label` directly, to seed state.
    pub fn kv_set(&self, label: &str, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.shared.kv.set(label, key, value)
    }

    /// Every key of the store `label`.
    pub fn kv_keys(&self, label: &str) -> anyhow::Result<Vec<String>> {
        self.shared.kv.keys(label)
    }

    /// Stops every later invocation that runs longer than `deadline` (an epoch interrupt).
    pub fn set_deadline(&self, deadline: Duration) {
        self.shared
            .deadline_ticks
            .store(ticks(deadline), Ordering::SeqCst);
    }

    /// Records from now on every key-value read of a key starting with `prefix`, by any
    /// component; [`App::kv_reads`] tells them.
    pub fn watch_kv_reads(&self, prefix: &str) {
        self.shared.kv.watch_reads(prefix);
    }

    /// The keys read under the prefix given to [`App::watch_kv_reads`], in order.
    pub fn kv_reads(&self) -> Vec<String> {
        self.shared.kv.watched_reads()
    }

    /// Lets `writes` more key-value writes (sets and deletes) succeed, then traps the invocation
    /// that attempts the next one, as a process killed at that point. `None` disarms.
    pub fn crash_after_kv_writes(&self, writes: Option<u64>) {
        let value = writes.map_or(-1, |w| w as i64);
        self.shared
            .writes_before_crash
            .store(value, Ordering::SeqCst);
    }

    /// Answers the next `times` outbound requests of any component whose URL starts with
    /// `url_prefix` with `status`, instead of sending them: a fault of the server behind it.
    pub fn fail_outbound(&self, url_prefix: &str, status: u16, times: usize) {
        if let Ok(mut faults) = self.shared.outbound_faults.lock() {
            faults.push((url_prefix.to_string(), status, times));
        }
    }

    /// Passes the body of each outbound request whose URL starts with `url_prefix` to `rewrite`,
    /// for the next `times` requests it rewrites: a fault inside an answer (one email of a
    /// batch failing, a message refused) rather than of the whole server.
    pub fn rewrite_outbound(
        &self,
        url_prefix: &str,
        times: usize,
        rewrite: impl Fn(&[u8]) -> Option<Rewrite> + Send + Sync + 'static,
    ) {
        if let Ok(mut rewrites) = self.shared.outbound_rewrites.lock() {
            rewrites.push((url_prefix.to_string(), times, Box::new(rewrite)));
        }
    }

    /// The largest linear memory (bytes) any one invocation of `component` has used so far.
    pub fn peak_memory(&self, component: &str) -> usize {
        self.shared
            .peak_memory
            .lock()
            .map(|peaks| peaks.get(component).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Everything the components wrote to stdout and stderr, each line prefixed by its component.
    pub fn logs(&self) -> String {
        self.shared
            .logs
            .lock()
            .map(|logs| String::from_utf8_lossy(&logs).into_owned())
            .unwrap_or_default()
    }
}

/// Whether an invocation error is an interrupt at the deadline.
pub fn is_interrupted(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<wasmtime::Trap>()
            .is_some_and(|trap| *trap == wasmtime::Trap::Interrupt)
    })
}

/// Whether an invocation error is a crash asked for by [`App::crash_after_kv_writes`].
pub fn is_simulated_crash(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<SimulatedCrash>().is_some())
}
