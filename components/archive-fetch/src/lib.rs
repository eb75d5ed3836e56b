//! The daily fetch: fired by Spin's cron trigger, pulls the last window of SMS and MMS from each
//! connector's archive source into staging.
//!
//! For now it records each timer event in the key-value store, which the status view reads as
//! the last time the fetch ran.

use anyhow::Context;
use spin_sdk::key_value::Store;

wit_bindgen::generate!({
    world: "spin-cron",
    path: "wit",
});

/// Key of the last timer event seen, seconds since the Unix epoch.
const LAST_TIMER_EVENT_KEY: &str = "fetch/last-timer-event";

struct Fetch;

impl Guest for Fetch {
    fn handle_cron_event(metadata: Metadata) -> Result<(), Error> {
        record_timer_event(metadata.timestamp).map_err(|e| Error::Other(format!("{e:#}")))
    }
}

fn record_timer_event(timestamp: u64) -> anyhow::Result<()> {
    let store = Store::open_default().context("opening the default key-value store")?;
    store
        .set(LAST_TIMER_EVENT_KEY, timestamp.to_string().as_bytes())
        .context("recording the timer event")?;
    Ok(())
}

export!(Fetch);
