//! Support for the application-level tests, above all a Spin-compatible test host.
//!
//! The Spin CLI is not on any package registry, so the tests run the built components on
//! Wasmtime, the engine Spin embeds, with Spin's semantics:
//! - [`manifest`]: `spin.toml` (manifest v2) read and checked as `spin up` does;
//! - key-value (`fermyon:spin/key-value@2.0.0`, and `wasi:keyvalue@0.2.0-draft2` store, atomics
//!   and batch on the same rows) on SQLite in Spin's table layout, opened as Spin opens it
//!   (default journal and synchronous settings), one file per app shared by all its components,
//!   stores limited to those a component lists; compare-and-swap is a SQLite transaction, so it
//!   holds between concurrent invocations; or, for a label a runtime config file puts there
//!   ([`AppBuilder::runtime_config`]), on a real Redis server as Spin 3.5's Redis store serves it,
//!   its faults included (every swap answered "failed", `get-many` as `KEYS`, no key prefix,
//!   `increment` as `INCRBY`: see `kv::RedisKv`), with [`RedisServer`] to start one;
//! - variables (`fermyon:spin/variables@2.0.0`): defaults, `required`, `{{ template }}` bindings,
//!   overrides as `SPIN_VARIABLE_*` would give them;
//! - outbound HTTP through `wasmtime-wasi-http` with `allowed_outbound_hosts` enforced, plain-HTTP
//!   connections kept alive and reused across instances as current Spin does, and
//!   `http://<component>.spin.internal` served in-process (local service chaining); a guest's
//!   request body framed as Spin 3.5 frames it (`crates/factor-outbound-http/src/wasi.rs` hands
//!   wasmtime-wasi-http's body, a stream of unknown size, to a hyper client): with the guest's
//!   `Content-Length` when it set one, otherwise `Transfer-Encoding: chunked` (a GET with no
//!   length goes with no body), so a server that needs the length refuses it here too; requests to
//!   `http://self` go to the app's routes from HTTP-triggered invocations only (elsewhere they
//!   are invalid, as Spin sets no origin for them);
//! - a listener on a real loopback socket ([`App::serve`], [`AppBuilder::listening`]) serving
//!   the public routes, and [`App::settle`] to wait for invocations that work on after they
//!   answered, as Spin lets them;
//! - the HTTP trigger with Spin's routing (exact, then longest wildcard; private routes only by
//!   chaining) and its `spin-*` headers; the cron trigger's `handle-cron-event`;
//! - a fresh instance for every invocation; interruption at a deadline (epochs) or at the Nth
//!   key-value write, to simulate a crash.
//!
//! Where it knowingly differs from Spin:
//! - Spin's other interfaces (SQLite, outbound Redis, LLM, MQTT...) are not provided, nor
//!   `wasi:keyvalue` `increment` on SQLite (it answers an error); a component importing them
//!   fails to link, loudly;
//! - a Redis label uses a plain connection, opened again after a failure, where Spin keeps a
//!   connection manager that reconnects in the background: the same commands and answers;
//! - `wasi:keyvalue` `list-keys` answers every key at once, with no cursor;
//! - routes with `:name` segments are not supported, and `spin-path-match-*` headers are not set;
//! - the `spin-client-addr` header is always `127.0.0.1:0`;
//! - a chained request's `spin-*` headers describe the target's own route (`/...` if private);
//! - variables come only from defaults and the test's overrides (no Vault or Key Vault provider);
//! - component sources must be local files; `files`, `environment` and `build` are ignored;
//! - `static_response` HTTP triggers, component dependencies and the `targets` of
//!   `[application]` are accepted as fields but not served or checked;
//! - the cron trigger fires only when a test calls [`App::fire_cron`], not on its schedule.

use std::path::{Path, PathBuf};

pub mod graph;
mod host;
mod kv;
pub mod manifest;
mod outbound;
mod redis_server;
pub mod samples;
mod simulator;
mod variables;

pub use graph::GraphServer;
pub use host::{
    App, AppBuilder, Rewrite, RewriteFn, SimulatedCrash, TestResponse, is_interrupted,
    is_simulated_crash,
};
pub use kv::KvBackend;
pub use redis_server::RedisServer;
pub use simulator::{Fault, SourceSimulator};

use anyhow::Context;

/// The repository root (this crate lives in `tests/`).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Reads and parses a TOML file of the project, relative to the root.
pub fn read_toml(relative: &str) -> anyhow::Result<toml::Table> {
    let path = project_root().join(relative);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.parse::<toml::Table>()
        .with_context(|| format!("parsing {}", path.display()))
}

/// The names inside every `{{ name }}` template of `text`.
pub fn template_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        names.push(after[..end].trim().to_string());
        rest = &after[end + 2..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_template_name() {
        assert_eq!(
            template_names("{{ a }}://x/{{b}} and {{ c"),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(template_names("plain").is_empty());
    }
}
