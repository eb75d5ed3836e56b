//! The app on the project's test host, for a person or a browser, where the Spin CLI is not
//! installed: `cargo run -p archiver-tests --bin app-host -- [--listen ADDRESS] [--kv FILE]`.
//!
//! It listens on a real socket as `spin up` does (default `127.0.0.1:3000`, which becomes the
//! `app_origin` variable), takes variables from `SPIN_VARIABLE_<NAME>` as `spin up` does,
//! fires the cron trigger on its schedule, and prints the components' logs. The key-value store
//! is a SQLite file in Spin's layout (default `.spin/sqlite_key_value.db`, as `spin up`
//! keeps it). Ctrl-C stops it.

use std::time::Duration;

use anyhow::Context;
use archiver_tests::App;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:3000".to_string();
    let mut kv = archiver_tests::project_root().join(".spin/sqlite_key_value.db");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "--kv" => kv = args.next().context("--kv needs a file")?.into(),
            other => anyhow::bail!("unknown argument {other:?} (--listen ADDRESS, --kv FILE)"),
        }
    }
    if let Some(folder) = kv.parent() {
        std::fs::create_dir_all(folder)?;
    }
    // The listener's origin is the app's origin unless the environment sets `app_origin`:
    // variables from the environment come last and win.
    let mut builder = App::builder("spin.toml")
        .kv_file(&kv)
        .listening_at(&listen, "app_origin")?;
    for (name, value) in std::env::vars() {
        if let Some(variable) = name.strip_prefix("SPIN_VARIABLE_") {
            builder = builder.variable(&variable.to_ascii_lowercase(), value);
        }
    }
    let app = builder.build()?;
    println!("Serving http://{listen}/ (the admin API under /api/); Ctrl-C stops.");

    let logs = async {
        let mut printed = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let all = app.logs();
            if let Some(new) = all.get(printed..).filter(|new| !new.is_empty()) {
                eprint!("{new}");
                printed = all.len();
            }
        }
    };
    tokio::select! {
        result = app.run_cron_schedules(None) => {
            result?;
        }
        () = logs => {}
        _ = tokio::signal::ctrl_c() => println!("Stopped."),
    }
    Ok(())
}
