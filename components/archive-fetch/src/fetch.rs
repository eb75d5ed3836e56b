//! One run's fetch stage: I/O around the core's decisions.

use anyhow::{Context, bail};
use archive_host::{Answer, SpinStore, send, send_within};
use archiver_core::connector::Connector;
use archiver_core::digest::{StreamingSha256, sha256_hex};
use archiver_core::lease;
use archiver_core::phone::Region;
use archiver_core::pipeline::{
    self, CountedMark, Listing, ListingPlace, PartialDownload, StagedItem, StepBudget, StepLimits,
    attachment_range_request, item_key, listing_window, messages_request, ranges,
    read_messages_response, retry_wait, status_error, window,
};
use archiver_core::runs::{
    Figures, LoginFailure, Next, NotImported, NotImportedReason, Phase, Run, RunState, RunTrigger,
    run_id,
};
use archiver_core::secrets::{self, SecretKey};
use archiver_core::source::MessagePage;
use archiver_core::source_client::{
    SourceError, SourceRequest, account_request, basic_auth, read_account_response,
};
use archiver_core::state::{Commit, STAGED_CHUNK_BYTES, Sealing, Side, State};
use archiver_core::write_behind::{BatchLimit, WriteBehind};
use chrono::{DateTime, Utc};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Key of the last timer event seen, seconds since the Unix epoch.
const LAST_TIMER_EVENT_KEY: &str = "fetch/last-timer-event";
const IMPORT_URL: &str = "http://archive-import.spin.internal/import";
const STEP_URL: &str = "http://archive-fetch.spin.internal/steps";

struct Config {
    staging_key: SecretKey,
    region: Region,
    limits: StepLimits,
    timeout: std::time::Duration,
}

impl Config {
    fn load() -> anyhow::Result<Config> {
        Ok(Config {
            staging_key: archive_host::staging_key().map_err(anyhow::Error::msg)?,
            region: archive_host::default_region().map_err(anyhow::Error::msg)?,
            limits: archive_host::step_limits().map_err(anyhow::Error::msg)?,
            timeout: archive_host::request_timeout().map_err(anyhow::Error::msg)?,
        })
    }
}

/// The runs one timer event started, each holding its connector's lease.
pub struct StartedRuns {
    runs: Vec<(Connector, Run)>,
}

impl StartedRuns {
    /// The runs' ids, by connector.
    pub fn view(&self) -> serde_json::Value {
        self.runs
            .iter()
            .map(|(connector, run)| serde_json::json!({ "connector": connector.id, "run": run.id }))
            .collect()
    }

    /// Takes every run through its steps, one connector after another, each independent of the
    /// others' failures; then the runs queued meanwhile.
    pub async fn execute(self) {
        let Ok(store) = SpinStore::open() else {
            eprintln!("timer runs: the key-value store cannot be opened");
            return;
        };
        let state = State::new(&store);
        for (connector, mut run) in self.runs {
            if let Err(e) = drive_and_release(&state, &connector, &mut run).await {
                eprintln!("run {} of {}: {e:#}", run.id, connector.id);
            }
            after_run(&connector.id).await;
        }
    }
}

/// A timer event: records it, then starts a run for every enabled connector whose lease is free.
/// A connector another run holds is left to that run: the next event catches up from the
/// watermark, so every replica's timer may fire at once and one run per connector works.
pub async fn start_timer_runs(timestamp: u64) -> anyhow::Result<StartedRuns> {
    let store = SpinStore::open()?;
    store_timer_event(&store, timestamp)?;
    let state = State::new(&store);
    let until = DateTime::from_timestamp(timestamp as i64, 0).context("timer timestamp")?;
    let mut runs = Vec::new();
    for connector in state.connectors()?.into_iter().filter(|c| c.enabled) {
        // Unique even when the timer fires twice for one time: runs are history, never overwritten.
        let now = Utc::now();
        let nanos = now.timestamp_nanos_opt().unwrap_or_default();
        let seed = format!("{}/{timestamp}/{nanos}", connector.id);
        let suffix = sha256_hex(seed.as_bytes())[..8].to_string();
        let run = Run {
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
            progress: Default::default(),
            days: Some(Default::default()),
            writes: Vec::new(),
        };
        match archive_host::lease::take(&connector.id, &run.id, now) {
            Ok(Ok(())) => {
                state.put_run(&run)?;
                runs.push((connector, run));
            }
            Ok(Err(other)) => eprintln!(
                "timer event {timestamp}: connector {}: {}",
                connector.id,
                lease::busy_reason(&other)
            ),
            Err(e) => eprintln!(
                "timer event {timestamp}: connector {}: the lease could not be taken: {e}",
                connector.id
            ),
        }
    }
    Ok(StartedRuns { runs })
}

fn store_timer_event(store: &SpinStore, timestamp: u64) -> anyhow::Result<()> {
    use archiver_core::state::KeyValue;
    store
        .set(LAST_TIMER_EVENT_KEY, timestamp.to_string().as_bytes())
        .context("recording the timer event")?;
    Ok(())
}

/// Executes a run the admin API queued, if the connector's lease is free; otherwise the run
/// stays queued, and the run holding the connector executes it when it ends (see
/// [`after_run`]). Answers the run as it stands.
pub async fn run_queued(connector_id: &str, run_id: &str) -> anyhow::Result<serde_json::Value> {
    let store = SpinStore::open()?;
    let state = State::new(&store);
    let connector = state
        .connector(connector_id)?
        .context("no such connector")?;
    let run = state.run(connector_id, run_id)?.context("no such run")?;
    if run.state != RunState::Queued {
        bail!("run {run_id} is {:?}, not queued", run.state);
    }
    if let Some(mut run) = take_queued(&state, &connector, run)? {
        drive_and_release(&state, &connector, &mut run).await?;
    }
    let run = state.run(connector_id, run_id)?.context("run vanished")?;
    Ok(run.view())
}

/// The run, marked as started, if its connector's lease could be taken for it; `None` when
/// another run holds the connector (the run stays queued, saying so).
fn take_queued(
    state: &State<'_, SpinStore>,
    connector: &Connector,
    mut run: Run,
) -> anyhow::Result<Option<Run>> {
    let busy = match archive_host::lease::take(&connector.id, &run.id, Utc::now()) {
        Ok(Ok(())) => None,
        Ok(Err(other)) => Some(format!(
            "queued: run {} of this connector is in progress; this run starts when it ends",
            other.holder
        )),
        Err(e) => Some(format!(
            "queued: the connector's lease could not be taken ({e}); the next run that ends starts it"
        )),
    };
    if let Some(reason) = busy {
        run.error = Some(reason);
        state.put_run(&run)?;
        return Ok(None);
    }
    // Taken: a second invocation for the same run found the lease held and stopped, but one
    // that read the record before this one must not start it again.
    match state.run(&connector.id, &run.id)? {
        Some(current) if current.state == RunState::Queued => {}
        _ => {
            release_lease(&connector.id, &run.id);
            return Ok(None);
        }
    }
    run.error = None;
    if run.until.is_none() {
        run.until = Some(Utc::now());
    }
    Ok(Some(run))
}

/// After a run ends: the runs asked for while it held the connector, oldest first, each under
/// the lease again. Stops when another run holds the connector (that run goes on with them).
pub async fn after_run(connector_id: &str) {
    let result = async {
        let store = SpinStore::open()?;
        let state = State::new(&store);
        loop {
            let Some(connector) = state.connector(connector_id)? else {
                return Ok(());
            };
            let mut queued: Vec<Run> = state
                .runs(connector_id)?
                .into_iter()
                .filter(|run| run.state == RunState::Queued)
                .collect();
            queued.sort_by_key(|run| run.requested_at);
            let Some(next) = queued.into_iter().next() else {
                return Ok(());
            };
            let Some(mut run) = take_queued(&state, &connector, next)? else {
                return Ok(());
            };
            if let Err(e) = drive_and_release(&state, &connector, &mut run).await {
                eprintln!("run {} of {connector_id}: {e:#}", run.id);
            }
        }
    }
    .await;
    if let Err(e) = result {
        let e: anyhow::Error = e;
        eprintln!("the queued runs of {connector_id}: {e:#}");
    }
}

fn release_lease(connector: &str, run: &str) {
    if let Err(e) = archive_host::lease::release(connector, run, Utc::now()) {
        eprintln!("run {run}: releasing the lease: {e}");
    }
}

/// How long a run that stopped because the key-value store did not answer (a Redis restart or
/// failover) keeps trying to record why and to give its lease up.
const STORE_OUTAGE_WAIT: Duration = Duration::from_secs(60);

/// Does `write` until it succeeds or [`STORE_OUTAGE_WAIT`] has passed, waiting longer after
/// each failure; answers the last error.
async fn while_the_store_recovers<T>(
    mut write: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let mut wait = Duration::from_millis(200);
    loop {
        match write() {
            Ok(done) => return Ok(done),
            Err(e) if started.elapsed() + wait > STORE_OUTAGE_WAIT => return Err(e),
            Err(_) => {
                archive_host::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Drives a run whose lease is held, then gives the lease up. The run record says how it
/// ended; an `Err` means it failed or could not even be recorded. A run stopped by a store that
/// did not answer is recorded as failed with that reason once the store answers again, and its
/// lease is freed then, so no connector is held silently by a run that cannot go on.
async fn drive_and_release(
    state: &State<'_, SpinStore>,
    connector: &Connector,
    run: &mut Run,
) -> anyhow::Result<()> {
    let result = drive(state, connector, run).await;
    if let Err(error) = &result {
        let reason = format!("{error:#}");
        let recorded = while_the_store_recovers(|| {
            record_failure(state, &connector.id, &run.id, &reason).map_err(Into::into)
        })
        .await;
        if let Err(e) = recorded {
            eprintln!("run {}: recording why it stopped: {e:#}", run.id);
        }
    }
    let released = while_the_store_recovers(|| {
        archive_host::lease::release(&connector.id, &run.id, Utc::now()).map_err(anyhow::Error::msg)
    })
    .await;
    if let Err(e) = released {
        eprintln!("run {}: releasing the lease: {e:#}", run.id);
    }
    result
}

/// Marks the run failed with `reason`, unless its record says it ended already.
fn record_failure(
    state: &State<'_, SpinStore>,
    connector: &str,
    run: &str,
    reason: &str,
) -> Result<(), archiver_core::state::StoreError> {
    let Some(mut run) = state.run(connector, run)? else {
        return Ok(());
    };
    if run.state.is_terminal() {
        return Ok(());
    }
    let base = run.clone();
    let error = format!("{reason}; what it had not imported is left for the next run");
    state.fail_run(&base, &mut run, error, Utc::now())?;
    Ok(())
}

/// Takes the run through its steps, each a fresh invocation reached by chaining: fetch steps
/// until the window is staged and, once the first fetch step is done, import steps of what is
/// staged at the same time, until every item has an outcome. This loop holds nothing but the
/// run record; the steps do the work, bounded, and checkpoint it.
async fn drive(
    state: &State<'_, SpinStore>,
    connector: &Connector,
    run: &mut Run,
) -> anyhow::Result<()> {
    hand_over_abandoned_runs(state, &connector.id, &run.id)?;
    run.state = RunState::Running;
    run.started_at = Some(Utc::now());
    let watermark = state.watermark(&connector.id)?;
    let until = run.until.unwrap_or_else(Utc::now);
    if run.since.is_none() {
        run.since = Some(window(watermark, until, pipeline::DEFAULT_OVERLAP).0);
    }
    state.put_run(run)?;
    // The first fetch step takes over and clears the pending list; the import, which may add
    // to it, starts after.
    let fetch_begun = Cell::new(false);
    let fetch = async {
        let result = drive_side(state, connector, &run.id, Side::Fetch, &fetch_begun).await;
        fetch_begun.set(true);
        result
    };
    let import = drive_side(state, connector, &run.id, Side::Import, &fetch_begun);
    let (fetched, imported) = futures::future::join(fetch, import).await;
    *run = state
        .run(&connector.id, &run.id)?
        .context("the run record vanished")?;
    fetched?;
    imported?;
    match run.state {
        RunState::Failed => bail!(run.error.clone().unwrap_or_default()),
        _ => Ok(()),
    }
}

/// How long the import waits for the fetch to stage more before it looks again.
const IMPORT_WAIT: Duration = Duration::from_millis(500);

/// One side of a run: its steps, one after another, until the run ends or this side has
/// nothing more to do. A step that fails or makes no progress ends the run.
async fn drive_side(
    state: &State<'_, SpinStore>,
    connector: &Connector,
    run_id: &str,
    side: Side,
    fetch_begun: &Cell<bool>,
) -> anyhow::Result<()> {
    loop {
        let before = state
            .run(&connector.id, run_id)?
            .context("the run record vanished")?;
        let url = match before.next(side, fetch_begun.get()) {
            Next::Stop => return Ok(()),
            Next::Wait => {
                archive_host::sleep(IMPORT_WAIT).await;
                continue;
            }
            Next::Step => match side {
                Side::Fetch => format!("{STEP_URL}/{}/{run_id}", connector.id),
                Side::Import => format!("{IMPORT_URL}/{}/{run_id}", connector.id),
            },
        };
        let answer = send(
            &SourceRequest {
                method: "POST",
                url,
                headers: vec![],
            },
            None,
        )
        .await;
        if side == Side::Fetch {
            fetch_begun.set(true);
        }
        let mut after = state
            .run(&connector.id, run_id)?
            .context("the run record vanished")?;
        if after.state.is_terminal() {
            return Ok(());
        }
        let stopped = match answer {
            Err(e) => Some(format!("a step of the run could not be reached: {e}")),
            Ok(answer) if answer.status >= 300 => Some(format!(
                "a step of the run stopped ({}): {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )),
            Ok(_) if after.progress.same_place(side, &before.progress) => {
                Some("a step of the run made no progress".to_string())
            }
            Ok(_) => None,
        };
        if let Some(reason) = stopped {
            return give_up(state, &mut after, reason);
        }
        if let Err(e) = renew_lease(&connector.id, run_id) {
            return give_up(state, &mut after, e.to_string());
        }
    }
}

/// Ends a run that cannot go on: what it had not imported is kept for the next run.
fn give_up(state: &State<'_, SpinStore>, run: &mut Run, reason: String) -> anyhow::Result<()> {
    let error = format!("{reason}; what it had not imported is left for the next run");
    let base = run.clone();
    state.fail_run(&base, run, error, Utc::now())?;
    bail!(reason)
}

/// Runs of the connector still marked running when a run takes the lease were stopped (the
/// host was killed, or their lease ran out): they are marked failed, and the items they had
/// not imported are kept for the run taking over.
fn hand_over_abandoned_runs(
    state: &State<'_, SpinStore>,
    connector: &str,
    current: &str,
) -> anyhow::Result<()> {
    for mut run in state.runs(connector)? {
        if run.id == current || run.state != RunState::Running {
            continue;
        }
        let error =
            format!("stopped before it finished; run {current} took over what it had not imported");
        let base = run.clone();
        state.fail_run(&base, &mut run, error, Utc::now())?;
    }
    Ok(())
}

/// Why a fetch step stopped the run.
#[derive(Debug)]
enum StepError {
    Source(SourceError),
    Store(String),
    Lease(String),
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Source(e) => write!(f, "{e}"),
            StepError::Store(e) => write!(f, "the key-value store failed: {e}"),
            StepError::Lease(e) => f.write_str(e),
        }
    }
}

impl From<SourceError> for StepError {
    fn from(e: SourceError) -> Self {
        StepError::Source(e)
    }
}

impl From<archiver_core::state::StoreError> for StepError {
    fn from(e: archiver_core::state::StoreError) -> Self {
        StepError::Store(e.to_string())
    }
}

/// The store as a fetch step writes it: plain writes batched (see [`WriteBehind`]).
type StepState<'a> = State<'a, WriteBehind<'a, SpinStore>>;

/// One fetch step of a run: at most the step limits' worth of messages, from the run's
/// checkpoint on. Answers the run as the step left it.
pub async fn fetch_step(connector_id: &str, run_id: &str) -> anyhow::Result<serde_json::Value> {
    let store = SpinStore::open()?;
    // What the step stages goes to the store in batches, in order; each commit sends what
    // came before it.
    let batched = WriteBehind::new(&store, BatchLimit::STAGING);
    let state = State::new(&batched);
    let config = Config::load()?;
    let connector = state
        .connector(connector_id)?
        .context("no such connector")?;
    let mut run = state.run(connector_id, run_id)?.context("no such run")?;
    if run.progress.phase != Phase::Fetch || run.state != RunState::Running {
        return Ok(run.view());
    }
    let mut base = run.clone();
    run.progress.steps += 1;
    match stage_step(&state, &config, &connector, &mut base, &mut run).await {
        Ok(()) => {}
        Err(error) => {
            let mut health = state.health(&connector.id)?;
            if let StepError::Source(SourceError::BadCredentials | SourceError::Forbidden) = error {
                health.login_failure = Some(LoginFailure {
                    at: Utc::now(),
                    reason: error.to_string(),
                });
                state.put_health(&connector.id, &health)?;
            }
            let error = format!("{error}; the window is left for the next run");
            state.fail_run(&base, &mut run, error, Utc::now())?;
        }
    }
    batched.flush()?;
    Ok(run.view())
}

/// Stages messages from the checkpoint on until the window ends or the step's limits are
/// reached; each page's outcome is committed with the run record (over the import's commits
/// meanwhile: `base` is the record as this step last read or wrote it).
async fn stage_step(
    state: &StepState<'_>,
    config: &Config,
    connector: &Connector,
    base: &mut Run,
    run: &mut Run,
) -> Result<(), StepError> {
    let started = Instant::now();
    if take_pending(state, base, run)? == Commit::EndedByAnother {
        return Ok(());
    }
    let password = secrets::open(
        &config.staging_key,
        &connector.id,
        &connector.password_sealed,
    )
    .map_err(|e| StepError::Store(format!("stored password: {e}")))?;
    let password = String::from_utf8_lossy(&password).into_owned();
    let login = send_with_retry(
        &account_request(&connector.source_url, &connector.username, &password),
        config.timeout,
    )
    .await?;
    read_account_response(login.status, &login.body)?;
    let authorization = basic_auth(&connector.username, &password);
    // The login worked: an earlier refusal no longer stands, whatever happens next.
    let mut health = state.health(&connector.id)?;
    if health.login_failure.take().is_some() {
        state.put_health(&connector.id, &health)?;
    }

    let until = run.until.unwrap_or_else(Utc::now);
    let sealing = Sealing {
        key: &config.staging_key,
        nonce: &archive_host::random_bytes,
    };
    let mut budget = StepBudget::default();
    loop {
        // Renewed before every page: a step slowed by retries never outlives its lease.
        renew_lease(&connector.id, &run.id)?;
        let from = run
            .progress
            .listing_from
            .or(run.since)
            .unwrap_or_else(Utc::now);
        let (listing_since, listing_until) = listing_window(from, until);
        let request = messages_request(
            &connector.source_url,
            &authorization,
            listing_since,
            listing_until,
            run.progress.cursor.as_deref(),
        );
        let page = fetch_page(&request, config).await?;
        let (run_id, cursor) = (run.id.clone(), run.progress.cursor.clone());
        let place = |part: &str, index: usize| {
            ListingPlace::new(&run_id, listing_since, cursor.as_deref(), part, index)
        };
        let mut keys = Vec::new();
        let mut not_imported = Vec::new();
        if run.progress.position == 0 {
            for invalid in &page.invalid {
                let here = place("invalid", invalid.index);
                // Counted in its day once, though every fetch of the window lists it again,
                // and in its run once, though the archive may list it twice.
                let counted_in_day = match &invalid.id {
                    Some(id) => {
                        let key = item_key(id);
                        let mark = state.counted_mark(&connector.id, &key)?;
                        match Listing::classify(&here, None, None, mark.as_ref()) {
                            Listing::Again => continue,
                            Listing::First { day, .. } => {
                                if let Some(after) =
                                    CountedMark::changed(mark.as_ref(), &here, &run.id)
                                {
                                    state.put_counted_mark(&connector.id, &key, &after)?;
                                }
                                day
                            }
                        }
                    }
                    None => true,
                };
                run.figures.fetched += 1;
                run.figures.invalid += 1;
                if counted_in_day {
                    let day = run.day(listing_since.date_naive());
                    day.fetched += 1;
                    day.invalid += 1;
                }
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
        }
        let total = page.messages.len();
        let mut cut_short = false;
        let skip = run.progress.position;
        for (index, message) in page.messages.into_iter().enumerate().skip(skip) {
            if budget.exhausted(&config.limits, started.elapsed()) {
                cut_short = true;
                break;
            }
            let key = item_key(&message.id);
            let text_day = message.archived_at.date_naive();
            let here = place("messages", index);
            let archived = state.archived(&connector.id, &key)?;
            let staged = match archived {
                Some(_) => None,
                None => state.staged(&connector.id, &key, &sealing)?,
            };
            let mark = state.counted_mark(&connector.id, &key)?;
            let (counted_in_day, stage) =
                match Listing::classify(&here, archived.as_ref(), staged.as_ref(), mark.as_ref()) {
                    Listing::Again => {
                        // Listed by this run already: nothing counts, nothing is staged again.
                        run.progress.position += 1;
                        budget.spend(1, 0);
                        continue;
                    }
                    Listing::First { day, stage } => (day, stage),
                };
            // A text this run did not stage keeps where this run listed it in its mark.
            let staged_by =
                CountedMark::staged_by_another(&run.id, archived.as_ref(), staged.as_ref());
            if let Some(after) =
                staged_by.and_then(|by| CountedMark::changed(mark.as_ref(), &here, by))
            {
                state.put_counted_mark(&connector.id, &key, &after)?;
            }
            if stage {
                let resume = run.progress.partial.take().filter(|p| p.item == key);
                let download = Download {
                    state,
                    config,
                    connector,
                    authorization: &authorization,
                    sealing: &sealing,
                    started,
                };
                match download
                    .stage_attachments(&key, &message, resume, &mut budget)
                    .await?
                {
                    Staging::Staged(attachment_chunks) => {
                        let item = StagedItem {
                            key: key.clone(),
                            run: run.id.clone(),
                            attachment_chunks,
                            message,
                            delivered_to: Vec::new(),
                            staged_at: Some(Utc::now()),
                            listed: Some(here),
                        };
                        state.update_staged(&connector.id, &item, &sealing)?;
                    }
                    Staging::Mismatch(detail) => {
                        run.progress.incomplete = true;
                        let after = CountedMark::after(mark.as_ref(), &here, &run.id);
                        state.put_counted_mark(&connector.id, &key, &after)?;
                        if counted_in_day {
                            run.day(text_day).fetched += 1;
                        }
                        not_imported.push(NotImported {
                            run: run.id.clone(),
                            item_id: message.id.clone(),
                            participant: None,
                            target_user: None,
                            reason: NotImportedReason::AttachmentMismatch,
                            detail,
                            at: Utc::now(),
                        });
                        run.progress.position += 1;
                        run.figures.fetched += 1;
                        budget.spend(1, 0);
                        continue;
                    }
                    Staging::CutShort(partial) => {
                        // The next step goes on with this message's attachments where they
                        // stopped.
                        run.progress.partial = Some(partial);
                        cut_short = true;
                        break;
                    }
                }
            }
            run.progress.position += 1;
            run.figures.fetched += 1;
            budget.spend(1, 0);
            if counted_in_day {
                run.day(text_day).fetched += 1;
            }
            if archived.is_none() {
                keys.push(key);
            }
        }
        state.append_run_items(run, &keys)?;
        state.append_not_imported(run, Side::Fetch, &not_imported)?;
        let page_done = !cut_short && run.progress.position >= total;
        if page_done {
            run.progress.position = 0;
            match page.next_cursor {
                Some(next) => run.progress.cursor = Some(next),
                None if listing_until < until => {
                    run.progress.cursor = None;
                    run.progress.listing_from = Some(listing_until);
                }
                None => {
                    run.progress.cursor = None;
                    run.progress.phase = Phase::Import;
                    run.progress.fetched_at = Some(Utc::now());
                }
            }
        }
        if state.commit_run(base, run)? == Commit::EndedByAnother {
            // The import failed the run meanwhile; what this step listed is carried over.
            return Ok(());
        }
        if page_done && run.progress.cursor.is_none() {
            // A day (or the whole window) is staged and recorded with the run.
            advance_watermark(state, run, listing_until)?;
        }
        if run.progress.phase == Phase::Import {
            return Ok(());
        }
        if budget.exhausted(&config.limits, started.elapsed()) {
            return Ok(());
        }
    }
}

/// Takes over the items earlier runs kept staged: they join this run's items, committed with
/// the run record, and then leave the pending list. Only the run's first fetch step does, before
/// its import begins (and may add to the list); a step that stopped between the commit and the
/// clearing ended the run, whose failure lists them again: the next run finds them twice,
/// which it tolerates.
fn take_pending(state: &StepState<'_>, base: &mut Run, run: &mut Run) -> Result<Commit, StepError> {
    if run.progress.took_pending {
        return Ok(Commit::Written);
    }
    for n in 0..state.pending_pages(&run.connector)? {
        let page = state.pending_page(&run.connector, n)?;
        state.append_run_items(run, &page)?;
    }
    run.progress.took_pending = true;
    let commit = state.commit_run(base, run)?;
    // A run ended meanwhile has listed the pending items again: the list stays as it is.
    if commit == Commit::Written {
        state.clear_pending(&run.connector)?;
    }
    Ok(commit)
}

/// A timer run that has staged its window up to `until` moves the connector's watermark there
/// (after the run record holds every item, so no staged item is left out of every run). A run
/// that could not stage some item leaves the watermark where it was, so the item is retried.
fn advance_watermark(
    state: &StepState<'_>,
    run: &Run,
    until: DateTime<Utc>,
) -> Result<(), StepError> {
    if run.progress.incomplete || run.trigger != RunTrigger::Timer {
        return Ok(());
    }
    if state
        .watermark(&run.connector)?
        .is_none_or(|watermark| watermark < until)
    {
        state.set_watermark(&run.connector, until)?;
    }
    Ok(())
}

/// Extends the run's lease; a run that lost it (it ran past its expiry and another run took
/// over) stops before it writes anything more.
fn renew_lease(connector: &str, run: &str) -> Result<(), StepError> {
    archive_host::lease::renew(connector, run, Utc::now()).map_err(StepError::Lease)
}

/// Sends a request to the archive, retrying transient failures (a timeout among them) with
/// back-off.
async fn send_with_retry(
    request: &SourceRequest,
    timeout: std::time::Duration,
) -> Result<Answer, SourceError> {
    let mut attempt = 0;
    loop {
        let (error, retry_after) = match send_within(request, None, timeout).await {
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
async fn fetch_page(request: &SourceRequest, config: &Config) -> Result<MessagePage, SourceError> {
    let mut attempt = 0;
    loop {
        let answer = send_with_retry(request, config.timeout).await?;
        match read_messages_response(answer.status, &answer.body, config.region) {
            Ok(page) => return Ok(page),
            Err(error) => match retry_wait(&error, None, attempt) {
                Some(wait) => std::thread::sleep(wait),
                None => return Err(error),
            },
        }
        attempt += 1;
    }
}

/// What staging a message's attachments came to.
enum Staging {
    /// Every attachment staged and verified: the chunk count of each.
    Staged(Vec<usize>),
    /// Some attachment's bytes do not match what the archive announced; nothing is kept.
    Mismatch(String),
    /// The step's limits were reached mid-way; the next step goes on from here.
    CutShort(PartialDownload),
}

/// What downloading attachments needs, for one step.
struct Download<'a> {
    state: &'a StepState<'a>,
    config: &'a Config,
    connector: &'a Connector,
    authorization: &'a str,
    sealing: &'a Sealing<'a>,
    started: Instant,
}

impl Download<'_> {
    /// Downloads each attachment in ranges of at most one staged chunk and stages the chunks as
    /// they arrive, so memory holds one chunk whatever the size, checking size and SHA-256 as
    /// it goes. A download the step's limits cut short is resumed from `resume`, digest
    /// included, by a later step.
    async fn stage_attachments(
        &self,
        key: &str,
        message: &archiver_core::source::Message,
        resume: Option<PartialDownload>,
        budget: &mut StepBudget,
    ) -> Result<Staging, StepError> {
        let connector_id = &self.connector.id;
        let (mut counts, mut resumed, first) = match resume {
            Some(partial) if !partial.counts.is_empty() => {
                let first = partial.counts.len() - 1;
                (
                    partial.counts,
                    Some((partial.received, partial.digest)),
                    first,
                )
            }
            _ => (Vec::with_capacity(message.attachments.len()), None, 0),
        };
        for (index, meta) in message.attachments.iter().enumerate().skip(first) {
            let (mut received, mut digest) = match resumed.take() {
                Some(progress) => progress,
                None => {
                    counts.push(0);
                    (0, StreamingSha256::default())
                }
            };
            let pieces = ranges(meta.size, STAGED_CHUNK_BYTES as u64);
            for (n, (start, end)) in pieces.iter().enumerate().skip(counts[index]) {
                if budget.exhausted(&self.config.limits, self.started.elapsed()) {
                    return Ok(Staging::CutShort(PartialDownload {
                        item: key.to_string(),
                        counts,
                        received,
                        digest,
                    }));
                }
                let request = attachment_range_request(
                    &self.connector.source_url,
                    self.authorization,
                    &meta.id,
                    *start,
                    *end,
                );
                let answer = send_with_retry(&request, self.config.timeout).await?;
                // A server that ignores Range answers 200 with everything: only the asked part
                // counts.
                let piece = match answer.status {
                    206 => answer.body,
                    _ => answer
                        .body
                        .get(*start as usize..=(*end as usize))
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default(),
                };
                if piece.len() as u64 != end - start + 1 {
                    self.state.discard_chunks(connector_id, key, &counts)?;
                    return Ok(Staging::Mismatch(format!(
                        "attachment {} is shorter than announced",
                        meta.id
                    )));
                }
                digest.update(&piece);
                received += piece.len() as u64;
                budget.spend(0, piece.len() as u64);
                self.state
                    .stage_chunk(connector_id, key, index, n, &piece, self.sealing)?;
                counts[index] = n + 1;
            }
            if received != meta.size || digest.finish_hex() != meta.sha256 {
                self.state.discard_chunks(connector_id, key, &counts)?;
                return Ok(Staging::Mismatch(format!(
                    "attachment {} does not match the size and SHA-256 the archive announced",
                    meta.id
                )));
            }
        }
        Ok(Staging::Staged(counts))
    }
}
