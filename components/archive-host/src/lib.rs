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
    if let Some((content_type, bytes)) = body {
        builder.header("content-type", content_type).body(bytes);
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
