//! The application-level tests: one binary, so each component is compiled once per run.

mod app;
mod console;
mod graph;
mod host;
mod manifest_checks;
mod pipeline;
mod setup;
mod spin_checks;
mod store;
mod util;
