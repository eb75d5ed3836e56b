//! Delivery of one run's staged items: I/O around the core's conversion, mapping and JMAP.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use archive_host::{SpinStore, send_stream, send_within};
use archiver_core::email::{
    EmailLayout, EmailOptions, EmailStream, StreamError, email_layout, message_id,
};
use archiver_core::jmap::{self, ImportItem, Mailbox, Session, create_folder_request, find_folder};
use archiver_core::ledger::{CopyOutcome, Ledger};
use archiver_core::phone::Region;
use archiver_core::pipeline::{
    Lanes, StagedItem, StepBudget, StepLimits, import_calls, may_be_delivered,
};
use archiver_core::resolve::MappingRules;
use archiver_core::runs::{NotImportedReason, Phase, Run, RunState};
use archiver_core::secrets::SecretKey;
use archiver_core::source_client::{SourceRequest, basic_auth};
use archiver_core::state::{Sealing, State};
use chrono::Utc;
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use std::time::Instant;

struct Config {
    staging_key: SecretKey,
    region: Region,
    address_domain: String,
    session_url: String,
    authorization: String,
    limits: StepLimits,
    timeout: std::time::Duration,
    retention: chrono::Duration,
}

impl Config {
    fn load() -> anyhow::Result<Config> {
        let get = |name: &str| archive_host::variable(name).map_err(anyhow::Error::msg);
        Ok(Config {
            staging_key: archive_host::staging_key().map_err(anyhow::Error::msg)?,
            region: archive_host::default_region().map_err(anyhow::Error::msg)?,
            address_domain: get("address_domain")?,
            session_url: get("jmap_session_url")?,
            authorization: basic_auth(&get("jmap_username")?, &get("jmap_password")?),
            limits: archive_host::step_limits().map_err(anyhow::Error::msg)?,
            timeout: archive_host::request_timeout().map_err(anyhow::Error::msg)?,
            retention: retention(&get("staging_retention_days")?)?,
        })
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
struct Transient(String);

/// The JMAP destination as the service account sees it, with each account's folder once found.
struct Destination<'c> {
    config: &'c Config,
    session: Session,
    /// Account -> the folder's mailbox id, also kept between steps in the store.
    known_folders: BTreeMap<String, String>,
    state: &'c State<'c, SpinStore>,
    connector_id: &'c str,
}

impl Destination<'_> {
    async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, Transient> {
        let request = SourceRequest {
            method: "POST",
            url: url.to_string(),
            headers: vec![("authorization", self.config.authorization.clone())],
        };
        let answer = send_within(&request, Some((content_type, body)), self.config.timeout)
            .await
            .map_err(Transient)?;
        if answer.status >= 300 {
            return Err(Transient(format!(
                "the mail server answered {} to POST {url}",
                answer.status
            )));
        }
        Ok(answer.body)
    }

    /// POSTs one body, made piece by piece, to each of `urls` (see
    /// [`archive_host::send_stream`]): one answer per URL.
    async fn post_stream(
        &self,
        urls: &[String],
        content_type: &str,
        length: u64,
        pieces: impl Iterator<Item = Result<Vec<u8>, String>>,
    ) -> Vec<Result<Vec<u8>, Transient>> {
        let requests: Vec<SourceRequest> = urls
            .iter()
            .map(|url| SourceRequest {
                method: "POST",
                url: url.clone(),
                headers: vec![("authorization", self.config.authorization.clone())],
            })
            .collect();
        let answers = send_stream(&requests, content_type, length, pieces, self.config.timeout);
        answers
            .await
            .into_iter()
            .zip(urls)
            .map(|(answer, url)| match answer {
                Err(detail) => Err(Transient(detail)),
                Ok(answer) if answer.status >= 300 => Err(Transient(format!(
                    "the mail server answered {} to POST {url}",
                    answer.status
                ))),
                Ok(answer) => Ok(answer.body),
            })
            .collect()
    }

    async fn call(&self, request: serde_json::Value) -> Result<Vec<u8>, Transient> {
        let api = self.session.api_url.clone();
        self.post(&api, "application/json", request.to_string().into_bytes())
            .await
    }

    /// The folder's mailbox in each of `accounts`: remembered (in memory or in the store),
    /// else found or created on the server, many accounts per request. An account whose
    /// folder could not be had gets why.
    async fn folders(
        &mut self,
        accounts: &[&str],
        folder: &str,
    ) -> anyhow::Result<BTreeMap<String, Result<String, String>>> {
        let mut found = BTreeMap::new();
        let mut unknown = Vec::new();
        for &account in accounts {
            if let Some(id) = self.known_folders.get(account) {
                found.insert(account.to_string(), Ok(id.clone()));
            } else if let Some(id) = self
                .state
                .cached_folder(self.connector_id, account, folder)?
            {
                self.known_folders.insert(account.to_string(), id.clone());
                found.insert(account.to_string(), Ok(id));
            } else {
                unknown.push(account);
            }
        }
        for batch in unknown.chunks(self.session.max_calls_in_request.max(1)) {
            let lists = match self.call(jmap::mailboxes_request(batch)).await {
                Ok(body) => jmap::parse_mailboxes(&body, batch.len()).map_err(|e| e.to_string()),
                Err(Transient(detail)) => Err(detail),
            };
            let mut missing = Vec::new();
            for (n, &account) in batch.iter().enumerate() {
                let mailboxes = match &lists {
                    Err(detail) => Err(detail.clone()),
                    Ok(lists) => lists[n].clone().map_err(|e| e.to_string()),
                };
                match mailboxes.map(|m| (find_folder(&m, folder), m)) {
                    Err(detail) => {
                        found.insert(account.to_string(), Err(detail));
                    }
                    Ok((Some(id), _)) => {
                        self.remember(account, folder, &id)?;
                        found.insert(account.to_string(), Ok(id));
                    }
                    Ok((None, mailboxes)) => missing.push((account, mailboxes)),
                }
            }
            // Created as one mailbox where the server takes the name, else as the hierarchy
            // its `/` describes.
            let mut refused = Vec::new();
            let flat = self.create_folders(&missing, folder, false).await;
            for ((account, mailboxes), outcome) in missing.into_iter().zip(flat) {
                match outcome {
                    Ok(Ok(id)) => {
                        self.remember(account, folder, &id)?;
                        found.insert(account.to_string(), Ok(id));
                    }
                    Ok(Err(_refused)) => refused.push((account, mailboxes)),
                    Err(detail) => {
                        found.insert(account.to_string(), Err(detail));
                    }
                }
            }
            let nested = self.create_folders(&refused, folder, true).await;
            for ((account, _), outcome) in refused.into_iter().zip(nested) {
                let id = match outcome {
                    Ok(Ok(id)) => id,
                    Ok(Err(refusal)) | Err(refusal) => {
                        let detail = format!("creating folder {folder:?}: {refusal}");
                        found.insert(account.to_string(), Err(detail));
                        continue;
                    }
                };
                self.remember(account, folder, &id)?;
                found.insert(account.to_string(), Ok(id));
            }
        }
        Ok(found)
    }

    /// Creates the folder in each account: per account, the new mailbox's id, the server's
    /// refusal, or (outer error) why the call failed.
    async fn create_folders(
        &self,
        accounts: &[(&str, Vec<Mailbox>)],
        folder: &str,
        as_hierarchy: bool,
    ) -> Vec<Result<Result<String, String>, String>> {
        if accounts.is_empty() {
            return Vec::new();
        }
        let targets: Vec<(&str, &[Mailbox])> = accounts
            .iter()
            .map(|(account, mailboxes)| (*account, mailboxes.as_slice()))
            .collect();
        let answer = match self
            .call(create_folder_request(&targets, folder, as_hierarchy))
            .await
        {
            Ok(body) => jmap::parse_create_folder(&body, targets.len()).map_err(|e| e.to_string()),
            Err(Transient(detail)) => Err(detail),
        };
        match answer {
            Ok(outcomes) => outcomes
                .into_iter()
                .map(|outcome| outcome.map_err(|e| e.to_string()))
                .collect(),
            Err(detail) => vec![Err(detail); targets.len()],
        }
    }

    fn remember(&mut self, account: &str, folder: &str, id: &str) -> anyhow::Result<()> {
        self.state
            .cache_folder(self.connector_id, account, folder, id)?;
        self.known_folders
            .insert(account.to_string(), id.to_string());
        Ok(())
    }

    fn forget_folder(&mut self, account: &str) -> anyhow::Result<()> {
        self.known_folders.remove(account);
        Ok(self.state.forget_folder(self.connector_id, account)?)
    }
}

/// Emails per `Email/import` call.
const IMPORT_BATCH: usize = 50;
/// `Message-ID` lookups per request.
const LOOKUP_BATCH: usize = 50;
/// Requests to the mail server in flight at once, uploads and imports together (Cyrus takes
/// five at once per user).
const CONCURRENT_REQUESTS: usize = 4;
/// `Email/import` requests in flight at once, of the requests above.
const CONCURRENT_IMPORTS: usize = 2;
/// Uploaded copies worth an `Email/import` request while uploads go on.
const IMPORT_READY: usize = 50;

/// A copy to deliver: an item for one user, in the user's account.
#[derive(Clone)]
struct Copy {
    item: usize,
    account: String,
    user: String,
    participant: Option<String>,
}

/// A copy uploaded and waiting for an `Email/import`.
struct Queued {
    copy: Copy,
    blob_id: String,
    mailbox: String,
}

/// What became of a step's copies: the ledger, and the users each item reached in this step.
struct Outcomes {
    ledger: Ledger,
    delivered: Vec<Vec<String>>,
}

impl Outcomes {
    fn settle(&mut self, items: &[StagedItem], copy: &Copy, outcome: CopyOutcome) {
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

/// What an upload gave: the blob id, what became of the copy, or a failure worth a retry.
type Uploaded = Result<Result<String, CopyOutcome>, Transient>;

/// A request to the mail server finished.
enum Done {
    /// An item's copies, each with its folder and its upload's blob id or outcome.
    Uploaded(Vec<(Copy, String, Uploaded)>),
    /// Each copy's outcome, and whether its folder has gone.
    Imported(Vec<(Copy, CopyOutcome, bool)>),
}

/// The step's items, each with its email's layout (none for an item with no one to deliver to).
struct StepItems {
    items: Vec<StagedItem>,
    layouts: Vec<Option<EmailLayout>>,
}

/// Imports uploaded copies: `Email/import` calls of up to [`IMPORT_BATCH`] emails for one
/// account's folder, as many calls per request as the server takes.
async fn import(destination: &Destination<'_>, step: &StepItems, queued: Vec<Queued>) -> Done {
    let mut calls = import_calls(
        queued,
        |copy| (copy.copy.account.clone(), copy.mailbox.clone()),
        IMPORT_BATCH,
    );
    let per_request = destination.session.max_calls_in_request.max(1);
    let mut settled = Vec::new();
    while !calls.is_empty() {
        let rest = calls.split_off(calls.len().min(per_request));
        let request: Vec<(String, String, Vec<ImportItem>)> = calls
            .iter()
            .map(|((account, mailbox), copies)| {
                let items = copies
                    .iter()
                    .enumerate()
                    .map(|(n, queued)| ImportItem {
                        key: format!("e{n}"),
                        blob_id: queued.blob_id.clone(),
                        received_at: step.items[queued.copy.item].message.sent_at,
                    })
                    .collect();
                (account.clone(), mailbox.clone(), items)
            })
            .collect();
        let answer = match destination.call(jmap::import_calls_request(&request)).await {
            Ok(body) => jmap::parse_import_calls(&body, request.len()).map_err(|e| e.to_string()),
            Err(Transient(detail)) => Err(detail),
        };
        for (call, (_, copies)) in calls.into_iter().enumerate() {
            for (n, queued) in copies.into_iter().enumerate() {
                let (outcome, folder_gone) = match &answer {
                    Err(detail) => (CopyOutcome::Transient(detail.clone()), false),
                    Ok(outcomes) => CopyOutcome::of_import(outcomes[call].get(&format!("e{n}"))),
                };
                settled.push((queued.copy, outcome, folder_gone));
            }
        }
        calls = rest;
    }
    Done::Imported(settled)
}

/// One import step of a run: the run's next items, at most the step limits' worth, delivered
/// in batches per account; the step's outcomes are committed with the run record. The last step
/// ends the run. Copies that failed transiently leave their item staged for the next run.
pub async fn import_step(connector_id: &str, run_id: &str) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let config = Config::load()?;
    let store = SpinStore::open()?;
    let state = State::new(&store);
    let connector = state
        .connector(connector_id)?
        .context("no such connector")?;
    let mut run: Run = state.run(connector_id, run_id)?.context("no such run")?;
    if run.progress.phase != Phase::Import || run.state != RunState::Running {
        return Ok(run.view());
    }
    hold_lease(connector_id, run_id)?;
    run.progress.steps += 1;
    let table = state.mapping(connector_id, config.region)?;
    let rules = MappingRules {
        table: &table,
        automatic_mapping: connector.automatic_mapping,
    };
    let options = EmailOptions {
        connector_id,
        network: &connector.network,
        address_domain: &config.address_domain,
    };
    let session_request = SourceRequest {
        method: "GET",
        url: config.session_url.clone(),
        headers: vec![("authorization", config.authorization.clone())],
    };
    let session_answer = match send_within(&session_request, None, config.timeout).await {
        Ok(answer) if answer.status == 200 => answer,
        Ok(answer) => {
            let error = format!("the mail server's JMAP session answered {}", answer.status);
            return fail(&state, &mut run, error);
        }
        Err(e) => {
            return fail(
                &state,
                &mut run,
                format!("the mail server is unreachable: {e}"),
            );
        }
    };
    let sealing = Sealing {
        key: &config.staging_key,
        nonce: &archive_host::random_bytes,
    };

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
    let mut destination = Destination {
        config: &config,
        session: Session::parse(&session_answer.body, &config.session_url)?,
        known_folders: BTreeMap::new(),
        state: &state,
        connector_id,
    };

    // 1. Which copies to deliver: settle at once what needs no mail server.
    let now = Utc::now();
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
            .push(Some(email_layout(&item.message, &rules, &options)));
        for recipient in &delivery.recipients {
            outcomes.ledger.expect_copy();
            let user = recipient.email.clone();
            let mut copy = Copy {
                item: index,
                account: String::new(),
                user: user.clone(),
                participant: recipient.as_participants.first().cloned(),
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
            } else if let Some(account) = destination.session.account_for(&user) {
                copy.account = account.to_string();
                copies.push(copy);
                continue;
            } else {
                CopyOutcome::Refused(
                    NotImportedReason::NoSuchMailbox,
                    format!(
                        "the mail server has no mailbox {user} the service account may write to"
                    ),
                )
            };
            outcomes.settle(&items, &copy, settled);
        }
    }
    step.items = items;

    // 2. Copies a mailbox may hold already: those of items an earlier run had (kept for a
    //    later attempt or carried over from a run that stopped) and of items this run began
    //    to deliver in a step that stopped before it recorded them. Looked up by Message-ID,
    //    many per request; the others are uploaded at once.
    let begun = run.progress.delivering;
    let (suspect, mut to_upload): (Vec<Copy>, Vec<Copy>) = copies
        .into_iter()
        .partition(|c| may_be_delivered(&step.items[c.item], run_id, positions[c.item], begun));
    let per_request = LOOKUP_BATCH.min(destination.session.max_calls_in_request.max(1));
    for batch in suspect.chunks(per_request) {
        let lookups: Vec<(String, String)> = batch
            .iter()
            .map(|c| {
                let id = message_id(
                    options.connector_id,
                    &step.items[c.item].message.id,
                    options.address_domain,
                );
                (c.account.clone(), id)
            })
            .collect();
        let found = match destination
            .call(jmap::find_messages_request(&lookups))
            .await
        {
            Ok(body) => jmap::parse_find_messages(&body, lookups.len()).map_err(|e| e.to_string()),
            Err(Transient(detail)) => Err(detail),
        };
        for (n, copy) in batch.iter().enumerate() {
            match &found {
                Ok(found) if found[n] => outcomes.settle(&step.items, copy, CopyOutcome::Duplicate),
                Ok(_) => to_upload.push(copy.clone()),
                Err(detail) => {
                    outcomes.settle(&step.items, copy, CopyOutcome::Transient(detail.clone()))
                }
            }
        }
    }

    // 3. Each account's folder, then uploads and imports overlapped.
    let mut accounts: Vec<&str> = to_upload.iter().map(|c| c.account.as_str()).collect();
    accounts.sort_unstable();
    accounts.dedup();
    let folders = destination.folders(&accounts, &connector.folder).await?;
    if !to_upload.is_empty() {
        run.progress.delivering = Some((page_n, position)).max(run.progress.delivering);
        state.put_run(&run)?;
    }
    let stale = deliver(
        &destination,
        &step,
        &folders,
        to_upload,
        &mut outcomes,
        (&state, &sealing, connector_id, run_id),
    )
    .await?;
    for account in stale {
        destination.forget_folder(&account)?;
    }

    // 4. Delivered items leave staging; the others wait for the next run, with the users they
    //    reached recorded.
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
    state.append_not_imported(&mut run, &ledger.not_imported)?;
    run.figures = ledger.figures;
    run.days = Some(ledger.days);
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
    if page_n < run.progress.item_pages {
        state.put_run(&run)?;
        return Ok(run.view());
    }
    run.progress.phase = Phase::Done;
    match run.progress.transient.clone() {
        Some(detail) => fail(
            &state,
            &mut run,
            format!("the mail server failed ({detail}); undelivered items stay staged"),
        ),
        None => {
            run.state = RunState::Succeeded;
            run.finished_at = Some(Utc::now());
            state.put_run(&run)?;
            Ok(run.view())
        }
    }
}

/// Uploads the copies, never two into one account at once (a server may serialise an
/// account's uploads, and Cyrus answers 404 to one of two first uploads racing to create the
/// account's upload area), each streaming its attachments from staging, while what is uploaded
/// is imported: [`CONCURRENT_REQUESTS`] requests in flight. Returns the accounts whose folder
/// has gone.
async fn deliver(
    destination: &Destination<'_>,
    step: &StepItems,
    folders: &BTreeMap<String, Result<String, String>>,
    copies: Vec<Copy>,
    outcomes: &mut Outcomes,
    (state, sealing, connector_id, run_id): (&State<'_, SpinStore>, &Sealing<'_>, &str, &str),
) -> anyhow::Result<Vec<String>> {
    // An item's copies in several accounts are a group, uploaded together.
    let mut lanes = Lanes::new(copies, |copy: &Copy| copy.account.clone(), |copy| copy.item);
    let mut in_flight = FuturesUnordered::new();
    let mut importing = 0;
    // Uploaded copies of the accounts being uploaded to, and of the accounts finished: an
    // account's copies are imported together, in as few calls as can be.
    let mut uploaded: BTreeMap<String, Vec<Queued>> = BTreeMap::new();
    let mut ready: Vec<Queued> = Vec::new();
    let mut stale = Vec::new();
    loop {
        // An import once enough copies wait for one, or as soon as they can once no upload is
        // left to start: the step's last import then holds only its last uploads.
        if importing < CONCURRENT_IMPORTS
            && !ready.is_empty()
            && (ready.len() >= IMPORT_READY || lanes.all_taken())
        {
            // Renewed before importing: a step slowed by retries never outlives its lease,
            // and a run that lost it imports nothing.
            hold_lease(connector_id, run_id)?;
            let batch = std::mem::take(&mut ready);
            in_flight.push(import(destination, step, batch).boxed_local());
            importing += 1;
        }
        while in_flight.len() < CONCURRENT_REQUESTS {
            // The item's copies in other accounts free now go along: its staged attachments
            // are read, checked and encoded once for all of them.
            let Some(group) = lanes.take() else {
                break;
            };
            let item = group[0].1.item;
            let mut targets = Vec::with_capacity(group.len());
            for (_, copy) in group {
                match folders.get(&copy.account) {
                    Some(Ok(mailbox)) => targets.push((copy, mailbox.clone())),
                    failed => {
                        let detail = match failed {
                            Some(Err(detail)) => detail.clone(),
                            _ => format!("no folder looked up for account {}", copy.account),
                        };
                        outcomes.settle(&step.items, &copy, CopyOutcome::Transient(detail));
                        if lanes.release(&copy.account) {
                            ready.extend(uploaded.remove(&copy.account).unwrap_or_default());
                        }
                    }
                }
            }
            if targets.is_empty() {
                continue;
            }
            let email = StagedEmail {
                layout: step.layouts[item]
                    .as_ref()
                    .expect("a delivered item has its layout"),
                item: &step.items[item],
                state,
                sealing,
                connector_id,
            };
            in_flight.push(
                async move {
                    let accounts: Vec<&str> = targets
                        .iter()
                        .map(|(copy, _)| copy.account.as_str())
                        .collect();
                    let results = upload(destination, &accounts, email).await;
                    Done::Uploaded(
                        targets
                            .into_iter()
                            .zip(results)
                            .map(|((copy, mailbox), result)| (copy, mailbox, result))
                            .collect(),
                    )
                }
                .boxed_local(),
            );
        }
        let Some(done) = in_flight.next().await else {
            break;
        };
        match done {
            Done::Uploaded(copies) => {
                for (copy, mailbox, result) in copies {
                    let account = copy.account.clone();
                    match result {
                        Ok(Ok(blob_id)) => {
                            uploaded.entry(account.clone()).or_default().push(Queued {
                                copy,
                                blob_id,
                                mailbox,
                            })
                        }
                        Ok(Err(outcome)) => outcomes.settle(&step.items, &copy, outcome),
                        Err(Transient(detail)) => {
                            outcomes.settle(&step.items, &copy, CopyOutcome::Transient(detail))
                        }
                    }
                    if lanes.release(&account) {
                        ready.extend(uploaded.remove(&account).unwrap_or_default());
                    }
                }
            }
            Done::Imported(settled) => {
                importing -= 1;
                for (copy, outcome, folder_gone) in settled {
                    if folder_gone && !stale.contains(&copy.account) {
                        stale.push(copy.account.clone());
                    }
                    outcomes.settle(&step.items, &copy, outcome);
                }
            }
        }
    }
    Ok(stale)
}

/// Renews the run's lease, or stops: another run holds the connector now.
fn hold_lease(connector_id: &str, run_id: &str) -> anyhow::Result<()> {
    archive_host::lease::renew(connector_id, run_id, Utc::now()).map_err(anyhow::Error::msg)
}

/// Ends the run as failed. Whatever it had not imported joins the pending list for the next
/// run (items a failing destination kept are there already).
fn fail(
    state: &State<'_, SpinStore>,
    run: &mut Run,
    error: String,
) -> anyhow::Result<serde_json::Value> {
    state.fail_run(run, error.clone(), Utc::now())?;
    bail!(error)
}

/// A staged item's email: its layout, and the staged chunks its attachments stream from.
struct StagedEmail<'a> {
    layout: &'a EmailLayout,
    item: &'a StagedItem,
    state: &'a State<'a, SpinStore>,
    sealing: &'a Sealing<'a>,
    connector_id: &'a str,
}

/// Uploads an item's email into each of `accounts` at once, its attachments streamed from
/// staging once for all: per account the blob id, or what became of the copy when the staged
/// bytes are not what the archive announced.
async fn upload(
    destination: &Destination<'_>,
    accounts: &[&str],
    email: StagedEmail<'_>,
) -> Vec<Uploaded> {
    let upload_urls: Vec<String> = accounts
        .iter()
        .map(|account| destination.session.upload_url(account))
        .collect();
    // The stream's own failure, if it stops the upload, says whether trying again can help.
    let stream_error = std::cell::RefCell::new(None);
    let pieces = EmailStream::new(email.layout, |attachment, chunk| {
        email
            .state
            .staged_chunk(
                email.connector_id,
                email.item,
                attachment,
                chunk,
                email.sealing,
            )
            .map_err(|e| e.to_string())
    })
    .map(|piece| {
        piece.map_err(|e| {
            let detail = e.to_string();
            *stream_error.borrow_mut() = Some(e);
            detail
        })
    });
    let uploaded = destination
        .post_stream(&upload_urls, "message/rfc822", email.layout.len(), pieces)
        .await;
    if let Some(StreamError::Conversion(e)) = stream_error.into_inner() {
        let refused = CopyOutcome::Refused(NotImportedReason::AttachmentMismatch, e.to_string());
        return accounts.iter().map(|_| Ok(Err(refused.clone()))).collect();
    }
    uploaded
        .into_iter()
        .map(|answer| {
            let blob_id = jmap::parse_upload(&answer?).map_err(|e| Transient(e.to_string()))?;
            Ok(Ok(blob_id))
        })
        .collect()
}
