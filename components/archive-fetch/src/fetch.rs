//! One run's fetch stage: I/O around the core's decisions.

use anyhow::{Context, bail};
use archive_host::{Answer, SpinStore, send};
use archiver_core::connector::Connector;
use archiver_core::digest::{StreamingSha256, sha256_hex};
use archiver_core::phone::Region;
use archiver_core::pipeline::{
    self, StagedItem, attachment_range_request, item_key, messages_request, ranges,
    read_messages_response, retry_wait, status_error, window,
};
use archiver_core::runs::{
    Figures, LoginFailure, NotImported, NotImportedReason, Run, RunState, RunTrigger, run_id,
};
use archiver_core::secrets::{self, SecretKey};
use archiver_core::source::MessagePage;
use archiver_core::source_client::{
    SourceError, SourceRequest, account_request, basic_auth, read_account_response,
};
use archiver_core::state::{STAGED_CHUNK_BYTES, Sealing, State};
use chrono::{DateTime, Utc};

/// Key of the last timer event seen, seconds since the Unix epoch.
const LAST_TIMER_EVENT_KEY: &str = "fetch/last-timer-event";
const IMPORT_URL: &str = "http://archive-import.spin.internal/import";

struct Config {
    staging_key: SecretKey,
    region: Region,
}

impl Config {
    fn load() -> anyhow::Result<Config> {
        Ok(Config {
            staging_key: archive_host::staging_key().map_err(anyhow::Error::msg)?,
            region: archive_host::default_region().map_err(anyhow::Error::msg)?,
        })
    }
}

/// The timer: one run per enabled connector, each independent of the others' failures.
pub async fn on_timer(timestamp: u64) -> anyhow::Result<()> {
    let store = SpinStore::open()?;
    store_timer_event(&store, timestamp)?;
    let state = State::new(&store);
    let connectors: Vec<Connector> = state
        .connectors()?
        .into_iter()
        .filter(|c| c.enabled)
        .collect();
    if connectors.is_empty() {
        return Ok(());
    }
    let config = Config::load()?;
    let until = DateTime::from_timestamp(timestamp as i64, 0).context("timer timestamp")?;
    let mut failures = Vec::new();
    for connector in connectors {
        // Unique even when the timer fires twice for one time: runs are history, never overwritten.
        let now = Utc::now();
        let nanos = now.timestamp_nanos_opt().unwrap_or_default();
        let seed = format!("{}/{timestamp}/{nanos}", connector.id);
        let suffix = sha256_hex(seed.as_bytes())[..8].to_string();
        let mut run = Run {
            id: run_id(until, &suffix),
            connector: connector.id.clone(),
            trigger: RunTrigger::Timer,
            since: None,
            until: Some(until),
            state: RunState::Queued,
            requested_at: now,
            started_at: None,
            finished_at: None,
            figures: Figures::default(),
            error: None,
        };
        if let Err(e) = execute(&state, &config, &connector, &mut run).await {
            failures.push(format!("{}: {e:#}", connector.id));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("runs failed: {}", failures.join("; "))
    }
}

fn store_timer_event(store: &SpinStore, timestamp: u64) -> anyhow::Result<()> {
    use archiver_core::state::KeyValue;
    store
        .set(LAST_TIMER_EVENT_KEY, timestamp.to_string().as_bytes())
        .context("recording the timer event")?;
    Ok(())
}

/// Executes a run the admin API queued.
pub async fn run_queued(connector_id: &str, run_id: &str) -> anyhow::Result<serde_json::Value> {
    let store = SpinStore::open()?;
    let state = State::new(&store);
    let config = Config::load()?;
    let connector = state
        .connector(connector_id)?
        .context("no such connector")?;
    let mut run = state.run(connector_id, run_id)?.context("no such run")?;
    if run.state != RunState::Queued {
        bail!("run {run_id} is {:?}, not queued", run.state);
    }
    if run.until.is_none() {
        run.until = Some(Utc::now());
    }
    execute(&state, &config, &connector, &mut run).await?;
    let run = state.run(connector_id, run_id)?.context("run vanished")?;
    Ok(run.view())
}

/// Fetches and stages the run's window, then hands the run to the import step. The run record
/// says how it ended; an `Err` means the run could not even be recorded.
async fn execute(
    state: &State<'_, SpinStore>,
    config: &Config,
    connector: &Connector,
    run: &mut Run,
) -> anyhow::Result<()> {
    run.state = RunState::Running;
    run.started_at = Some(Utc::now());
    let watermark = state.watermark(&connector.id)?;
    let until = run.until.unwrap_or_else(Utc::now);
    if run.since.is_none() {
        run.since = Some(window(watermark, until, pipeline::DEFAULT_OVERLAP).0);
    }
    state.put_run(run)?;

    let staged = stage_window(state, config, connector, run).await;
    let mut health = state.health(&connector.id)?;
    match staged {
        Ok(complete) => {
            health.login_failure = None;
            if complete && run.trigger == RunTrigger::Timer && watermark.is_none_or(|w| w < until) {
                state.set_watermark(&connector.id, until)?;
            }
            state.put_health(&connector.id, &health)?;
            state.put_run(run)?;
            let answer = send(
                &SourceRequest {
                    method: "POST",
                    url: format!("{IMPORT_URL}/{}/{}", connector.id, run.id),
                    headers: vec![],
                },
                None,
            )
            .await
            .map_err(anyhow::Error::msg)?;
            if answer.status >= 300 {
                bail!("the import step answered {}", answer.status);
            }
            Ok(())
        }
        Err(error) => {
            if error == SourceError::BadCredentials || error == SourceError::Forbidden {
                health.login_failure = Some(LoginFailure {
                    at: Utc::now(),
                    reason: error.to_string(),
                });
            }
            state.put_health(&connector.id, &health)?;
            run.state = RunState::Failed;
            run.finished_at = Some(Utc::now());
            run.error = Some(format!("{error}; the window is left for the next run"));
            state.put_run(run)?;
            bail!("{error}")
        }
    }
}

/// Sends a request to the archive, retrying transient failures with back-off.
async fn send_with_retry(request: &SourceRequest) -> Result<Answer, SourceError> {
    let mut attempt = 0;
    loop {
        let (error, retry_after) = match send(request, None).await {
            Ok(answer) if answer.status < 300 => return Ok(answer),
            Ok(answer) => (status_error(answer.status), answer.retry_after),
            Err(e) => (SourceError::Unreachable(e), None),
        };
        match retry_wait(&error, retry_after.as_deref(), attempt) {
            Some(wait) => std::thread::sleep(wait),
            None => return Err(error),
        }
        attempt += 1;
    }
}

/// One page of messages; a page that cannot be read (cut short, not JSON) is asked for again,
/// with the same back-off as a transient HTTP failure.
async fn fetch_page(request: &SourceRequest, region: Region) -> Result<MessagePage, SourceError> {
    let mut attempt = 0;
    loop {
        let answer = send_with_retry(request).await?;
        match read_messages_response(answer.status, &answer.body, region) {
            Ok(page) => return Ok(page),
            Err(error) => match retry_wait(&error, None, attempt) {
                Some(wait) => std::thread::sleep(wait),
                None => return Err(error),
            },
        }
        attempt += 1;
    }
}

/// Stages every message of the run's window. `Ok(true)` when the whole window is staged.
async fn stage_window(
    state: &State<'_, SpinStore>,
    config: &Config,
    connector: &Connector,
    run: &mut Run,
) -> Result<bool, SourceError> {
    let password = secrets::open(
        &config.staging_key,
        &connector.id,
        &connector.password_sealed,
    )
    .map_err(|e| SourceError::Unreachable(format!("stored password: {e}")))?;
    let password = String::from_utf8_lossy(&password).into_owned();
    let login = send_with_retry(&account_request(
        &connector.source_url,
        &connector.username,
        &password,
    ))
    .await?;
    read_account_response(login.status, &login.body)?;
    let authorization = basic_auth(&connector.username, &password);
    let store_error = |e: archiver_core::state::StoreError| SourceError::Unreachable(e.to_string());
    // The login worked: an earlier refusal no longer stands, whatever happens next.
    let mut health = state.health(&connector.id).map_err(store_error)?;
    if health.login_failure.take().is_some() {
        state
            .put_health(&connector.id, &health)
            .map_err(store_error)?;
    }

    let (since, until) = (
        run.since.unwrap_or_else(Utc::now),
        run.until.unwrap_or_else(Utc::now),
    );
    let mut items = state
        .run_items(&connector.id, &run.id)
        .map_err(store_error)?;
    for key in state.pending(&connector.id).map_err(store_error)? {
        if !items.contains(&key) {
            items.push(key);
        }
    }
    let mut not_imported = state
        .not_imported(&connector.id, &run.id)
        .map_err(store_error)?;
    let sealing = Sealing {
        key: &config.staging_key,
        nonce: &archive_host::random_bytes,
    };
    let mut complete = true;
    let mut cursor: Option<String> = None;
    loop {
        let request = messages_request(
            &connector.source_url,
            &authorization,
            since,
            until,
            cursor.as_deref(),
        );
        let page = fetch_page(&request, config.region).await?;
        for invalid in &page.invalid {
            run.figures.fetched += 1;
            run.figures.invalid += 1;
            not_imported.push(NotImported {
                run: run.id.clone(),
                item_id: invalid
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("#{}", invalid.index)),
                participant: None,
                target_user: None,
                reason: NotImportedReason::InvalidSourceRecord,
                detail: invalid.reason.clone(),
                at: Utc::now(),
            });
        }
        for message in page.messages {
            run.figures.fetched += 1;
            let key = item_key(&message.id);
            if state
                .archived(&connector.id, &key)
                .map_err(store_error)?
                .is_some()
            {
                continue;
            }
            if !state.is_staged(&connector.id, &key).map_err(store_error)? {
                match stage_attachments(state, connector, &authorization, &key, &message, &sealing)
                    .await?
                {
                    Ok(attachment_chunks) => {
                        let item = StagedItem {
                            key: key.clone(),
                            run: run.id.clone(),
                            attachment_chunks,
                            message,
                            delivered_to: Vec::new(),
                        };
                        state
                            .update_staged(&connector.id, &item, &sealing)
                            .map_err(store_error)?;
                    }
                    Err(detail) => {
                        complete = false;
                        not_imported.push(NotImported {
                            run: run.id.clone(),
                            item_id: message.id.clone(),
                            participant: None,
                            target_user: None,
                            reason: NotImportedReason::AttachmentMismatch,
                            detail,
                            at: Utc::now(),
                        });
                        continue;
                    }
                }
            }
            if !items.contains(&key) {
                items.push(key);
            }
        }
        state
            .put_run_items(&connector.id, &run.id, &items)
            .map_err(store_error)?;
        state
            .add_pending(&connector.id, &items)
            .map_err(store_error)?;
        state
            .put_not_imported(&connector.id, &run.id, &not_imported)
            .map_err(store_error)?;
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(complete)
}

/// Downloads each attachment in ranges of at most one staged chunk and stages the chunks as they
/// arrive, so memory holds one chunk whatever the size. Returns the chunk count of each
/// attachment, or `Ok(Err(reason))` when the bytes do not match the size and SHA-256 the archive
/// announced: the item is then reported and never staged as if it were right.
async fn stage_attachments(
    state: &State<'_, SpinStore>,
    connector: &Connector,
    authorization: &str,
    key: &str,
    message: &archiver_core::source::Message,
    sealing: &Sealing<'_>,
) -> Result<Result<Vec<usize>, String>, SourceError> {
    let store_error = |e: archiver_core::state::StoreError| SourceError::Unreachable(e.to_string());
    let mut counts = Vec::with_capacity(message.attachments.len());
    for (index, meta) in message.attachments.iter().enumerate() {
        let mut digest = StreamingSha256::default();
        let mut received: u64 = 0;
        let pieces = ranges(meta.size, STAGED_CHUNK_BYTES as u64);
        for (n, (start, end)) in pieces.iter().enumerate() {
            let request = attachment_range_request(
                &connector.source_url,
                authorization,
                &meta.id,
                *start,
                *end,
            );
            let answer = send_with_retry(&request).await?;
            // A server that ignores Range answers 200 with everything: only the asked part counts.
            let piece = match answer.status {
                206 => answer.body,
                _ => answer
                    .body
                    .get(*start as usize..=(*end as usize))
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default(),
            };
            if piece.len() as u64 != end - start + 1 {
                return Ok(Err(format!(
                    "attachment {} is shorter than announced",
                    meta.id
                )));
            }
            digest.update(&piece);
            received += piece.len() as u64;
            state
                .stage_chunk(&connector.id, key, index, n, &piece, sealing)
                .map_err(store_error)?;
        }
        if received != meta.size || digest.finish_hex() != meta.sha256 {
            return Ok(Err(format!(
                "attachment {} does not match the size and SHA-256 the archive announced",
                meta.id
            )));
        }
        counts.push(pieces.len());
    }
    Ok(Ok(counts))
}
