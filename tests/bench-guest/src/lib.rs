//! Conversion inside wasm, timed by the guest itself. `POST /convert` takes an 8-byte
//! little-endian length, that many bytes of JSON (`messages`: source records, `mapping_csv`,
//! `attachments`: id -> `[offset, length]` in what follows), then the attachments' bytes; it
//! builds every message's email as the import does and answers
//! `{"emails", "bytes", "nanos"}` for the building alone.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, bail};
use archiver_core::email::{EmailOptions, build_email};
use archiver_core::mapping::parse_mapping_csv;
use archiver_core::phone::Region;
use archiver_core::resolve::MappingRules;
use archiver_core::source::parse_message;
use serde_json::{Value, json};
use spin_sdk::http::{Request, Response};
use spin_sdk::http_component;

#[http_component]
fn convert(request: Request) -> anyhow::Result<Response> {
    let body = request.body();
    let length = body
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .context("no length prefix")? as usize;
    let spec: Value = serde_json::from_slice(body.get(8..8 + length).context("short body")?)?;
    let blob = &body[8 + length..];
    let csv = spec["mapping_csv"].as_str().unwrap_or_default();
    let table = match parse_mapping_csv(csv.as_bytes(), Region::US) {
        Ok(table) => table,
        Err(errors) => bail!("mapping: {errors:?}"),
    };
    let rules = MappingRules {
        table: &table,
        automatic_mapping: true,
    };
    let options = EmailOptions {
        connector_id: "bench",
        network: "AT&T",
        address_domain: "sms.archive.invalid",
    };
    let mut messages = Vec::new();
    for record in spec["messages"].as_array().context("no messages")? {
        messages.push(
            parse_message(&record.to_string(), Region::US).map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
    }
    let mut spans: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for (id, span) in spec["attachments"].as_object().context("no attachments")? {
        let (offset, length) = (
            span[0].as_u64().unwrap_or(0) as usize,
            span[1].as_u64().unwrap_or(0) as usize,
        );
        spans.insert(
            id,
            blob.get(offset..offset + length)
                .context("attachment out of range")?,
        );
    }
    let started = Instant::now();
    let mut bytes = 0usize;
    for message in &messages {
        let attachments: Vec<&[u8]> = message
            .attachments
            .iter()
            .map(|a| spans.get(a.id.as_str()).copied().unwrap_or_default())
            .collect();
        bytes += build_email(message, &rules, &attachments, &options)?.len();
    }
    let nanos = started.elapsed().as_nanos() as u64;
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(json!({ "emails": messages.len(), "bytes": bytes, "nanos": nanos }).to_string())
        .build())
}
