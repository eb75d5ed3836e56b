//! The fetch's ceiling: a native client that lists the same day from the same archive
//! simulator, downloads every attachment in the same ranges, seals each message record and
//! chunk as staging does, and writes those bytes into a SQLite file opened as Spin opens its
//! key-value store, one transaction per batch (the same batches a fetch step sends). What the
//! fetch component does beyond this (its checkpoints, the run record, the lease, the wasm and
//! the host between) is what `fetch / ceiling` measures.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use archiver_core::digest::StreamingSha256;
use archiver_core::phone::Region;
use archiver_core::pipeline::{
    StagedItem, attachment_range_request, item_key, messages_request, ranges,
    read_messages_response,
};
use archiver_core::secrets::SecretKey;
use archiver_core::source_client::{SourceRequest, account_request, basic_auth};
use archiver_core::state::{KeyValue, STAGED_CHUNK_BYTES, Sealing, State, StoreError};
use archiver_core::write_behind::{BatchLimit, WriteBehind};
use archiver_tests::KvBackend;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Empty};

/// What the ceiling did.
pub struct FetchCeiling {
    pub messages: usize,
    pub attachment_bytes: u64,
    pub elapsed: Duration,
}

/// The `default` store of a SQLite file, opened as the test host (and Spin) opens it.
struct SqliteFile(KvBackend);

const LABEL: &str = "default";

impl KeyValue for SqliteFile {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0
            .get(LABEL, key)
            .map_err(|e| StoreError(e.to_string()))
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0
            .set(LABEL, key, value)
            .map_err(|e| StoreError(e.to_string()))
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0
            .delete(LABEL, key)
            .map_err(|e| StoreError(e.to_string()))
    }
    fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        self.0
            .set_many(LABEL, entries)
            .map_err(|e| StoreError(e.to_string()))
    }
}

/// One kept-alive HTTP/1.1 connection to the archive simulator, as the component's outbound
/// HTTP keeps one.
struct Archive {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    authority: String,
}

impl Archive {
    async fn open(origin: &str) -> anyhow::Result<Archive> {
        let authority = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .trim_end_matches('/')
            .to_string();
        let stream = tokio::net::TcpStream::connect(&authority).await?;
        let io = wasmtime_wasi_http::io::TokioIo::new(stream);
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        Ok(Archive { sender, authority })
    }

    async fn send(&mut self, request: &SourceRequest) -> anyhow::Result<(u16, Vec<u8>)> {
        let path = request
            .url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|at| rest[at..].to_string()))
            .unwrap_or_else(|| "/".into());
        let mut builder = http::Request::builder()
            .method(request.method)
            .uri(path)
            .header("host", &self.authority);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        self.sender.ready().await?;
        let response = self
            .sender
            .send_request(builder.body(Empty::new())?)
            .await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes().to_vec();
        Ok((status, body))
    }
}

/// Stages the day `[since, until)` of the archive at `source_url` into a new SQLite file at
/// `path`.
pub async fn measure(
    origin: &str,
    source_url: &str,
    (username, password): (&str, &str),
    (since, until): (DateTime<Utc>, DateTime<Utc>),
    path: &Path,
) -> anyhow::Result<FetchCeiling> {
    for suffix in ["", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let store = SqliteFile(KvBackend::open(path)?);
    let key: SecretKey = "5a"
        .repeat(32)
        .parse()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Nonces need only differ here: a counter.
    let counter = std::cell::Cell::new(0u64);
    let next_nonce = || {
        counter.set(counter.get() + 1);
        let mut nonce = [0u8; archiver_core::secrets::NONCE_BYTES];
        nonce[..8].copy_from_slice(&counter.get().to_le_bytes());
        Ok(nonce)
    };
    let sealing = Sealing {
        key: &key,
        nonce: &next_nonce,
    };
    let mut archive = Archive::open(origin).await?;
    let started = Instant::now();
    let (status, _) = archive
        .send(&account_request(source_url, username, password))
        .await?;
    if status != 200 {
        bail!("the archive refused the login: {status}");
    }
    let authorization = basic_auth(username, password);
    let (mut messages, mut attachment_bytes, mut cursor) = (0, 0u64, None::<String>);
    loop {
        let request = messages_request(source_url, &authorization, since, until, cursor.as_deref());
        let (status, body) = archive.send(&request).await?;
        let page = read_messages_response(status, &body, Region::US)
            .map_err(|e| anyhow::anyhow!("a page: {e}"))?;
        // A page's writes, batched as a fetch step batches them, sent before the next page
        // (where a step commits).
        let batched = WriteBehind::new(&store, BatchLimit::STAGING);
        let state = State::new(&batched);
        for message in page.messages {
            let item = item_key(&message.id);
            let mut counts = Vec::with_capacity(message.attachments.len());
            for (index, meta) in message.attachments.iter().enumerate() {
                let mut digest = StreamingSha256::default();
                let pieces = ranges(meta.size, STAGED_CHUNK_BYTES as u64);
                for (n, (start, end)) in pieces.iter().enumerate() {
                    let request = attachment_range_request(
                        source_url,
                        &authorization,
                        &meta.id,
                        *start,
                        *end,
                    );
                    let (status, piece) = archive.send(&request).await?;
                    if status != 206 || piece.len() as u64 != end - start + 1 {
                        bail!("attachment {}: range answered {status}", meta.id);
                    }
                    digest.update(&piece);
                    attachment_bytes += piece.len() as u64;
                    state.stage_chunk("ceiling", &item, index, n, &piece, &sealing)?;
                }
                if digest.finish_hex() != meta.sha256 {
                    bail!("attachment {} does not match its SHA-256", meta.id);
                }
                counts.push(pieces.len());
            }
            let staged = StagedItem {
                key: item,
                run: "ceiling".into(),
                attachment_chunks: counts,
                message,
                delivered_to: Vec::new(),
                staged_at: Some(Utc::now()),
                listed: None,
            };
            state.update_staged("ceiling", &staged, &sealing)?;
            messages += 1;
        }
        batched.flush()?;
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(FetchCeiling {
        messages,
        attachment_bytes,
        elapsed: started.elapsed(),
    })
}
