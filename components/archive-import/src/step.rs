//! One import step of a run, whatever the destination: the run's next staged items, the copies
//! their mapped users get, what needs no mail server settled at once, the rest handed to the
//! destination, and every outcome committed with the run record.

use anyhow::{Context as _, bail};
use archive_host::SpinStore;
use archiver_core::connector::Connector;
use archiver_core::email::{EmailLayout, EmailOptions, email_layout};
use archiver_core::ledger::{CopyOutcome, Ledger};
use archiver_core::phone::Region;
use archiver_core::pipeline::{StagedItem, StepBudget, StepLimits, may_be_delivered};
use archiver_core::resolve::MappingRules;
use archiver_core::runs::{LoginFailure, NotImportedReason, Phase, Run, RunState};
use archiver_core::secrets::SecretKey;
use archiver_core::state::{Commit, Sealing, Side, State};
use chrono::Utc;
use std::time::Instant;

use crate::{graph, jmap};

/// Settings every destination shares.
pub struct Config {
    pub staging_key: SecretKey,
    pub region: Region,
    pub address_domain: String,
    pub limits: StepLimits,
    pub timeout: std::time::Duration,
    pub retention: chrono::Duration,
    pub destination: String,
}

impl Config {
    fn load() -> anyhow::Result<Config> {
        Ok(Config {
            staging_key: archive_host::staging_key().map_err(anyhow::Error::msg)?,
            region: archive_host::default_region().map_err(anyhow::Error::msg)?,
            address_domain: variable("address_domain")?,
            limits: archive_host::step_limits().map_err(anyhow::Error::msg)?,
            timeout: archive_host::request_timeout().map_err(anyhow::Error::msg)?,
            retention: retention(&variable("staging_retention_days")?)?,
            destination: variable("destination")?.trim().to_ascii_lowercase(),
        })
    }
}

/// A variable of the component.
pub fn variable(name: &str) -> anyhow::Result<String> {
    archive_host::variable(name).map_err(anyhow::Error::msg)
}

/// A secret variable that the chosen destination needs: empty means not set.
pub fn required_secret(name: &str) -> anyhow::Result<String> {
    match variable(name)? {
        value if value.is_empty() => {
            bail!(
                "variable {name} is not set: the destination needs it (SPIN_VARIABLE_{})",
                name.to_ascii_uppercase()
            )
        }
        value => Ok(value),
    }
}

/// The `staging_retention_days` setting: how long an undelivered item may stay staged.
fn retention(days: &str) -> anyhow::Result<chrono::Duration> {
    match days.trim().parse::<u32>() {
        Ok(days) => Ok(chrono::Duration::days(days.into())),
        Err(_) => bail!("variable staging_retention_days: a whole number of days, not {days:?}"),
    }
}

/// A destination failure that may pass: the item stays staged for the next attempt.
pub struct Transient(pub String);

/// What a destination works with during a step.
pub struct Context<'a> {
    pub config: &'a Config,
    pub state: &'a State<'a, SpinStore>,
    pub sealing: &'a Sealing<'a>,
    pub connector: &'a Connector,
    pub run_id: &'a str,
    pub rules: &'a MappingRules<'a>,
    pub options: EmailOptions<'a>,
}

/// A copy to deliver: an item for one user. `account` is where the destination puts it (the
/// user's address until the destination says otherwise).
#[derive(Clone)]
pub struct Copy {
    pub item: usize,
    pub account: String,
    pub user: String,
    pub participant: Option<String>,
    /// Whether an earlier attempt may have delivered it: it is looked up before it is made.
    pub suspect: bool,
}

/// The step's items, each with its email's layout (none for an item with no one to deliver to).
pub struct StepItems {
    pub items: Vec<StagedItem>,
    pub layouts: Vec<Option<EmailLayout>>,
}

/// What became of a step's copies: the ledger, and the users each item reached in this step.
pub struct Outcomes {
    pub ledger: Ledger,
    pub delivered: Vec<Vec<String>>,
}

impl Outcomes {
    pub fn settle(&mut self, items: &[StagedItem], copy: &Copy, outcome: CopyOutcome) {
        let item = &items[copy.item];
        let id = &item.message.id;
        let participant = copy.participant.clone();
        // A copy an earlier run delivered counted in its day then.
        let earlier = item
            .delivered_to
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&copy.user));
        let day = (!earlier).then(|| item.message.archived_at.date_naive());
        if self
            .ledger
            .settle(copy.item, id, &copy.user, participant, outcome, day)
        {
            self.delivered[copy.item].push(copy.user.clone());
        }
    }
}

/// Why a destination could not be opened for a step.
pub enum OpenFailure {
    /// It refused the credentials: an admin must fix them (a health flag says so).
    Login(String),
    /// Unreachable or failing: the next run tries again.
    Unavailable(String),
}

/// The destination the deployment archives into (the `destination` variable).
enum Destination {
    Jmap(jmap::Jmap),
    Graph(graph::Graph),
}

impl Destination {
    /// Connects, or says why the run cannot go on.
    async fn open(context: &Context<'_>) -> anyhow::Result<Result<Destination, OpenFailure>> {
        Ok(match context.config.destination.as_str() {
            "jmap" => jmap::Jmap::open(context).await?.map(Destination::Jmap),
            "graph" => graph::Graph::open(context).await?.map(Destination::Graph),
            other => bail!("variable destination: jmap or graph, not {other:?}"),
        })
    }

    /// Delivers `copies`, settling each in `outcomes`.
    async fn deliver(
        &mut self,
        context: &Context<'_>,
        step: &StepItems,
        copies: Vec<Copy>,
        outcomes: &mut Outcomes,
    ) -> anyhow::Result<()> {
        match self {
            Destination::Jmap(jmap) => jmap.deliver(context, step, copies, outcomes).await,
            Destination::Graph(graph) => graph.deliver(context, step, copies, outcomes).await,
        }
    }
}

/// One import step of a run: the run's next items, at most the step limits' worth, delivered
/// by the destination; the step's outcomes are committed with the run record, over what the
/// fetch (still staging, perhaps) committed meanwhile. The step that imports the last item
/// once the fetch is done ends the run. Copies that failed transiently leave their item staged
/// for the next run.
pub async fn import_step(connector_id: &str, run_id: &str) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let config = Config::load()?;
    let store = SpinStore::open()?;
    let state = State::new(&store);
    let connector = state
        .connector(connector_id)?
        .context("no such connector")?;
    let mut run: Run = state.run(connector_id, run_id)?.context("no such run")?;
    if run.progress.phase == Phase::Done || run.state != RunState::Running {
        return Ok(run.view());
    }
    hold_lease(connector_id, run_id)?;
    // The record as this step last read or wrote it: its commits merge over the fetch's.
    let mut base = run.clone();
    run.progress.steps += 1;
    run.progress.import_started_at.get_or_insert_with(Utc::now);
    let table = state.mapping(connector_id, config.region)?;
    let rules = MappingRules {
        table: &table,
        automatic_mapping: connector.automatic_mapping,
    };
    let sealing = Sealing {
        key: &config.staging_key,
        nonce: &archive_host::random_bytes,
    };
    let context = Context {
        config: &config,
        state: &state,
        sealing: &sealing,
        connector: &connector,
        run_id,
        rules: &rules,
        options: EmailOptions {
            connector_id,
            network: &connector.network,
            address_domain: &config.address_domain,
        },
    };
    let mut health = state.health(connector_id)?;
    let mut destination = match Destination::open(&context).await? {
        Ok(destination) => destination,
        Err(OpenFailure::Login(reason)) => {
            health.destination_login_failure = Some(LoginFailure {
                at: Utc::now(),
                reason: reason.clone(),
            });
            state.put_health(connector_id, &health)?;
            return fail(&state, &base, &mut run, reason);
        }
        Err(OpenFailure::Unavailable(reason)) => return fail(&state, &base, &mut run, reason),
    };
    if health.destination_login_failure.take().is_some() {
        state.put_health(connector_id, &health)?;
    }

    // The step's items: from the checkpoint on, as many as the limits allow.
    let mut items = Vec::new();
    // Where each item is in the run's list, and the keys taken (a key listed twice is taken
    // once).
    let mut positions = Vec::new();
    let mut taken = std::collections::BTreeSet::new();
    // Keys no longer staged, or archived by an attempt that stopped while purging them, are
    // done (their leftovers are purged again).
    let mut budget = StepBudget::default();
    let (mut page_n, mut position) = (run.progress.imported_pages, run.progress.imported_position);
    'pages: while page_n < run.progress.item_pages {
        let page = state.run_item_page(&run, page_n)?;
        while position < page.len() {
            if budget.exhausted(&config.limits, started.elapsed()) {
                break 'pages;
            }
            let key = &page[position];
            position += 1;
            if !taken.insert(key.clone()) {
                continue;
            }
            let archived = state.archived(connector_id, key)?.is_some();
            match state.staged(connector_id, key, &sealing)? {
                Some(item) if archived => {
                    state.archive(connector_id, &item, Utc::now())?;
                    budget.spend(1, 0);
                }
                Some(item) => {
                    let bytes = item.message.attachments.iter().map(|a| a.size).sum();
                    budget.spend(1, bytes);
                    positions.push((page_n, position - 1));
                    items.push(item);
                }
                None => budget.spend(1, 0),
            }
        }
        page_n += 1;
        position = 0;
    }
    let mut outcomes = Outcomes {
        ledger: Ledger::new(
            run_id,
            items.len(),
            run.figures,
            run.days.clone().unwrap_or_default(),
            Vec::new(),
            Utc::now(),
        ),
        delivered: vec![Vec::new(); items.len()],
    };

    // Which copies to deliver: settle at once what needs no mail server.
    let now = Utc::now();
    let begun = run.progress.delivering;
    let mut step = StepItems {
        layouts: Vec::with_capacity(items.len()),
        items: Vec::new(),
    };
    let mut copies: Vec<Copy> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let delivery = rules.delivery(&item.message);
        if delivery.is_unmapped() {
            let day = item.message.archived_at.date_naive();
            outcomes.ledger.unmapped(&item.message.id, &delivery, day);
            step.layouts.push(None);
            continue;
        }
        // Only the email's headers and text are built; attachments are streamed from staging
        // into each upload, a chunk at a time.
        step.layouts
            .push(Some(email_layout(&item.message, &rules, &context.options)));
        // Those of items an earlier run had (kept for a later attempt or carried over from a
        // run that stopped), and of items this run began to deliver in a step that stopped
        // before it recorded them, may be in a mailbox already.
        let suspect = may_be_delivered(item, run_id, positions[index], begun);
        for recipient in &delivery.recipients {
            outcomes.ledger.expect_copy();
            let user = recipient.email.clone();
            let copy = Copy {
                item: index,
                account: user.clone(),
                user: user.clone(),
                participant: recipient.as_participants.first().cloned(),
                suspect,
            };
            let settled = if item
                .delivered_to
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&user))
            {
                CopyOutcome::Duplicate
            } else if item.expired(now, config.retention) {
                CopyOutcome::Refused(
                    NotImportedReason::StagingExpired,
                    format!(
                        "staged since {} and undelivered for longer than the {}-day retention; \
                         purged",
                        item.staged_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        config.retention.num_days()
                    ),
                )
            } else {
                copies.push(copy);
                continue;
            };
            outcomes.settle(&items, &copy, settled);
        }
    }
    step.items = items;

    if !copies.is_empty() {
        run.progress.delivering = Some((page_n, position)).max(run.progress.delivering);
        // A run the fetch ended meanwhile: this step's items are listed for the next run, and
        // what it delivers now is recorded all the same.
        state.commit_run(&mut base, &mut run)?;
    }
    destination
        .deliver(&context, &step, copies, &mut outcomes)
        .await?;

    // Delivered items leave staging; the others wait for the next run, with the users they
    // reached recorded.
    let (mut kept, mut delivered) = (Vec::new(), Vec::new());
    for (index, item) in step.items.iter().enumerate() {
        if !outcomes.ledger.is_kept(index) {
            delivered.push(item);
            continue;
        }
        if !outcomes.delivered[index].is_empty() {
            let mut item = item.clone();
            item.delivered_to.append(&mut outcomes.delivered[index]);
            state.update_staged(connector_id, &item, &sealing)?;
        }
        kept.push(item.key.clone());
    }
    state.archive_many(connector_id, &delivered, Utc::now())?;
    state.append_pending(connector_id, &kept)?;
    let ledger = outcomes.ledger;
    state.append_not_imported(&mut run, Side::Import, &ledger.not_imported)?;
    ledger.apply_to(&mut run);
    eprintln!(
        "run {run_id}: import step {}: {} items in {:.2} s",
        run.progress.steps,
        step.items.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(detail) = ledger.transient {
        run.progress.transient = Some(detail);
    }
    run.progress.imported_pages = page_n;
    run.progress.imported_position = position;
    if state.commit_run(&mut base, &mut run)? == Commit::EndedByAnother {
        return Ok(run.view());
    }
    // The last item imported with the fetch done: the run ends.
    let fetch_done = run.progress.phase == Phase::Import;
    if !fetch_done || run.progress.imported_pages < run.progress.item_pages {
        return Ok(run.view());
    }
    run.progress.phase = Phase::Done;
    match run.progress.transient.clone() {
        Some(detail) => fail(
            &state,
            &base,
            &mut run,
            format!("the mail server failed ({detail}); undelivered items stay staged"),
        ),
        None => {
            run.state = RunState::Succeeded;
            run.finished_at = Some(Utc::now());
            state.commit_run(&mut base, &mut run)?;
            Ok(run.view())
        }
    }
}

/// Renews the run's lease, or stops: another run holds the connector now.
pub fn hold_lease(connector_id: &str, run_id: &str) -> anyhow::Result<()> {
    archive_host::lease::renew(connector_id, run_id, Utc::now()).map_err(anyhow::Error::msg)
}

/// Ends the run as failed. Whatever it had not imported joins the pending list for the next
/// run (items a failing destination kept are there already).
fn fail(
    state: &State<'_, SpinStore>,
    base: &Run,
    run: &mut Run,
    error: String,
) -> anyhow::Result<serde_json::Value> {
    state.fail_run(base, run, error.clone(), Utc::now())?;
    bail!(error)
}
