//! Delivery of one run's staged items: I/O around the core's conversion, mapping and JMAP.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use archive_host::{SpinStore, send_stream, send_within};
use archiver_core::email::{
    EmailLayout, EmailOptions, EmailStream, StreamError, email_layout, message_id,
};
use archiver_core::jmap::{
    self, ImportItem, ImportOutcome, Mailbox, Session, create_folder_request, find_folder,
};
use archiver_core::ledger::{CopyOutcome, Ledger};
use archiver_core::phone::Region;
use archiver_core::pipeline::{StagedItem, StepBudget, StepLimits, waves};
use archiver_core::resolve::MappingRules;
use archiver_core::runs::{NotImportedReason, Phase, Run, RunState};
use archiver_core::secrets::SecretKey;
use archiver_core::source_client::{SourceRequest, basic_auth};
use archiver_core::state::{Sealing, State};
use chrono::Utc;
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
    folders: BTreeMap<String, String>,
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

    /// POSTs a body made piece by piece (see [`archive_host::send_stream`]).
    async fn post_stream(
        &self,
        url: &str,
        content_type: &str,
        length: u64,
        pieces: impl Iterator<Item = Result<Vec<u8>, String>>,
    ) -> Result<Vec<u8>, Transient> {
        let request = SourceRequest {
            method: "POST",
            url: url.to_string(),
            headers: vec![("authorization", self.config.authorization.clone())],
        };
        let answer = send_stream(&request, content_type, length, pieces, self.config.timeout)
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

    async fn call(&self, request: serde_json::Value) -> Result<Vec<u8>, Transient> {
        let api = self.session.api_url.clone();
        self.post(&api, "application/json", request.to_string().into_bytes())
            .await
    }

    /// The folder's mailbox in `account`, found or created.
    async fn folder(&mut self, account: &str, folder: &str) -> Result<String, Transient> {
        if let Some(id) = self.folders.get(account) {
            return Ok(id.clone());
        }
        let cached = self
            .state
            .cached_folder(self.connector_id, account, folder)
            .map_err(|e| Transient(e.to_string()))?;
        if let Some(id) = cached {
            self.folders.insert(account.to_string(), id.clone());
            return Ok(id);
        }
        let answer = self.call(jmap::mailboxes_request(account)).await?;
        let mailboxes: Vec<Mailbox> =
            jmap::parse_mailboxes(&answer).map_err(|e| Transient(e.to_string()))?;
        let id = match find_folder(&mailboxes, folder) {
            Some(id) => id,
            None => {
                let flat = self
                    .call(create_folder_request(account, &mailboxes, folder, false))
                    .await?;
                match jmap::parse_create_folder(&flat).map_err(|e| Transient(e.to_string()))? {
                    Ok(id) => id,
                    Err(_refused) => {
                        let nested = self
                            .call(create_folder_request(account, &mailboxes, folder, true))
                            .await?;
                        jmap::parse_create_folder(&nested)
                            .map_err(|e| Transient(e.to_string()))?
                            .map_err(|refused| {
                                Transient(format!("creating folder {folder:?}: {refused}"))
                            })?
                    }
                }
            }
        };
        self.state
            .cache_folder(self.connector_id, account, folder, &id)
            .map_err(|e| Transient(e.to_string()))?;
        self.folders.insert(account.to_string(), id.clone());
        Ok(id)
    }

    fn forget_folder(&mut self, account: &str) -> anyhow::Result<()> {
        self.folders.remove(account);
        Ok(self.state.forget_folder(self.connector_id, account)?)
    }
}

/// Emails per `Email/import` call.
const IMPORT_BATCH: usize = 50;
/// `Message-ID` lookups per request.
const LOOKUP_BATCH: usize = 50;
/// Uploads in flight at once.
const CONCURRENT_UPLOADS: usize = 4;

/// A copy to deliver: an item for one user, in the user's account.
#[derive(Clone)]
struct Copy {
    item: usize,
    account: String,
    user: String,
    participant: Option<String>,
}

/// A copy uploaded and waiting for its account's next `Email/import`.
struct Queued {
    item: usize,
    user: String,
    participant: Option<String>,
    blob_id: String,
    mailbox: String,
}

/// One run's delivery: the items, the ledger of outcomes, and the copies queued per account.
struct Importer<'a, 'c> {
    state: &'a State<'a, SpinStore>,
    run_id: String,
    sealing: &'a Sealing<'a>,
    connector_id: &'a str,
    destination: Destination<'c>,
    items: Vec<StagedItem>,
    ledger: Ledger,
    queued: BTreeMap<String, Vec<Queued>>,
}

impl Importer<'_, '_> {
    /// Records an outcome; a copy the user now holds goes into the item's delivery record
    /// at once, so a crash later never delivers it twice.
    fn settle(
        &mut self,
        item: usize,
        user: &str,
        participant: Option<String>,
        outcome: CopyOutcome,
    ) -> anyhow::Result<()> {
        let staged = &mut self.items[item];
        if self
            .ledger
            .settle(item, &staged.message.id, user, participant, outcome)
            && !staged
                .delivered_to
                .iter()
                .any(|d| d.eq_ignore_ascii_case(user))
        {
            staged.delivered_to.push(user.to_string());
            self.state
                .update_staged(self.connector_id, staged, self.sealing)?;
        }
        Ok(())
    }

    /// Imports every queued copy: `Email/import` calls of up to [`IMPORT_BATCH`] emails for one
    /// account's folder, as many calls per request as the server takes.
    async fn flush(&mut self) -> anyhow::Result<()> {
        // Renewed before importing: a step slowed by retries never outlives its lease, and a
        // run that lost it imports nothing.
        hold_lease(self.connector_id, &self.run_id)?;
        let mut calls: Vec<(String, String, Vec<Queued>)> = Vec::new();
        for (account, queued) in std::mem::take(&mut self.queued) {
            let mut by_mailbox: BTreeMap<String, Vec<Queued>> = BTreeMap::new();
            for copy in queued {
                by_mailbox
                    .entry(copy.mailbox.clone())
                    .or_default()
                    .push(copy);
            }
            for (mailbox, mut copies) in by_mailbox {
                while !copies.is_empty() {
                    let rest = copies.split_off(copies.len().min(IMPORT_BATCH));
                    calls.push((account.clone(), mailbox.clone(), copies));
                    copies = rest;
                }
            }
        }
        let per_request = self.destination.session.max_calls_in_request.max(1);
        while !calls.is_empty() {
            let rest = calls.split_off(calls.len().min(per_request));
            let request: Vec<(String, String, Vec<ImportItem>)> = calls
                .iter()
                .map(|(account, mailbox, copies)| {
                    let items = copies
                        .iter()
                        .enumerate()
                        .map(|(n, copy)| ImportItem {
                            key: format!("e{n}"),
                            blob_id: copy.blob_id.clone(),
                            received_at: self.items[copy.item].message.sent_at,
                        })
                        .collect();
                    (account.clone(), mailbox.clone(), items)
                })
                .collect();
            let answer = match self
                .destination
                .call(jmap::import_calls_request(&request))
                .await
            {
                Ok(body) => {
                    jmap::parse_import_calls(&body, request.len()).map_err(|e| e.to_string())
                }
                Err(Transient(detail)) => Err(detail),
            };
            for (call, (account, _mailbox, copies)) in calls.into_iter().enumerate() {
                for (n, copy) in copies.into_iter().enumerate() {
                    let outcome = match &answer {
                        Err(detail) => CopyOutcome::Transient(detail.clone()),
                        Ok(outcomes) => match outcomes[call].get(&format!("e{n}")) {
                            Some(ImportOutcome::Created(_)) => CopyOutcome::Imported,
                            Some(ImportOutcome::AlreadyExists(_)) => CopyOutcome::Duplicate,
                            Some(ImportOutcome::Refused(reason)) => CopyOutcome::Refused(
                                NotImportedReason::DestinationRefused,
                                reason.clone(),
                            ),
                            Some(ImportOutcome::Failed(reason)) => {
                                if reason.contains("mailboxIds") {
                                    // The folder is gone: found again next time.
                                    self.destination.forget_folder(&account)?;
                                }
                                CopyOutcome::Transient(format!(
                                    "the mail server did not import an email: {reason}"
                                ))
                            }
                            None => CopyOutcome::Transient(
                                "the mail server did not answer for an email".into(),
                            ),
                        },
                    };
                    self.settle(copy.item, &copy.user, copy.participant, outcome)?;
                }
            }
            calls = rest;
        }
        Ok(())
    }
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
            let archived = state.archived(connector_id, key)?.is_some();
            match state.staged(connector_id, key, &sealing)? {
                Some(item) if archived => {
                    state.archive(connector_id, &item, Utc::now())?;
                    budget.spend(1, 0);
                }
                Some(item) => {
                    let bytes = item.message.attachments.iter().map(|a| a.size).sum();
                    budget.spend(1, bytes);
                    items.push(item);
                }
                None => budget.spend(1, 0),
            }
        }
        page_n += 1;
        position = 0;
    }
    let ledger = Ledger::new(run_id, items.len(), run.figures, Vec::new(), Utc::now());
    let mut importer = Importer {
        state: &state,
        run_id: run_id.to_string(),
        sealing: &sealing,
        connector_id,
        destination: Destination {
            config: &config,
            session: Session::parse(&session_answer.body, &config.session_url)?,
            folders: BTreeMap::new(),
            state: &state,
            connector_id,
        },
        items,
        ledger,
        queued: BTreeMap::new(),
    };

    // 1. Which copies to deliver: settle at once what needs no mail server.
    let now = Utc::now();
    let mut layouts: Vec<Option<EmailLayout>> = Vec::with_capacity(importer.items.len());
    let mut copies: Vec<Copy> = Vec::new();
    for index in 0..importer.items.len() {
        let delivery = rules.delivery(&importer.items[index].message);
        if delivery.is_unmapped() {
            let id = importer.items[index].message.id.clone();
            importer.ledger.unmapped(&id, &delivery);
            layouts.push(None);
            continue;
        }
        // Only the email's headers and text are built; attachments are streamed from staging
        // into each upload, a chunk at a time.
        layouts.push(Some(email_layout(
            &importer.items[index].message,
            &rules,
            &options,
        )));
        for recipient in &delivery.recipients {
            importer.ledger.expect_copy();
            let participant = recipient.as_participants.first().cloned();
            let item = &importer.items[index];
            let user = recipient.email.clone();
            let settled = if item
                .delivered_to
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&user))
            {
                Some(CopyOutcome::Duplicate)
            } else if item.expired(now, config.retention) {
                Some(CopyOutcome::Refused(
                    NotImportedReason::StagingExpired,
                    format!(
                        "staged since {} and undelivered for longer than the {}-day retention; \
                         purged",
                        item.staged_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        config.retention.num_days()
                    ),
                ))
            } else {
                match importer.destination.session.account_for(&user) {
                    Some(account) => {
                        copies.push(Copy {
                            item: index,
                            account: account.to_string(),
                            user,
                            participant,
                        });
                        continue;
                    }
                    None => Some(CopyOutcome::Refused(
                        NotImportedReason::NoSuchMailbox,
                        format!(
                            "the mail server has no mailbox {user} the service account may write to"
                        ),
                    )),
                }
            };
            if let Some(outcome) = settled {
                importer.settle(index, &user, participant, outcome)?;
            }
        }
    }

    // 2. Copies a mailbox already holds (an earlier attempt stopped before it was recorded, or
    //    a replayed window): looked up by Message-ID, many per request.
    let mut to_upload = Vec::with_capacity(copies.len());
    let per_request = LOOKUP_BATCH.min(importer.destination.session.max_calls_in_request.max(1));
    for batch in copies.chunks(per_request) {
        let lookups: Vec<(String, String)> = batch
            .iter()
            .map(|c| {
                let id = message_id(
                    options.connector_id,
                    &importer.items[c.item].message.id,
                    options.address_domain,
                );
                (c.account.clone(), id)
            })
            .collect();
        let found = match importer
            .destination
            .call(jmap::find_messages_request(&lookups))
            .await
        {
            Ok(body) => jmap::parse_find_messages(&body, lookups.len()).map_err(|e| e.to_string()),
            Err(Transient(detail)) => Err(detail),
        };
        for (n, copy) in batch.iter().enumerate() {
            match &found {
                Ok(found) if found[n] => importer.settle(
                    copy.item,
                    &copy.user,
                    copy.participant.clone(),
                    CopyOutcome::Duplicate,
                )?,
                Ok(_) => to_upload.push(copy.clone()),
                Err(detail) => importer.settle(
                    copy.item,
                    &copy.user,
                    copy.participant.clone(),
                    CopyOutcome::Transient(detail.clone()),
                )?,
            }
        }
    }

    // 3. Uploads, several at once but never two into one account (a server may serialise an
    //    account's uploads, and Cyrus answers 404 to one of two first uploads racing to create
    //    the account's upload area), each streaming its attachments from staging; imported by
    //    `Email/import` per account as they add up.
    for wave in waves(to_upload, |copy| copy.account.clone(), CONCURRENT_UPLOADS) {
        let wave = wave.as_slice();
        let mut mailboxes = Vec::with_capacity(wave.len());
        for copy in wave {
            mailboxes.push(
                importer
                    .destination
                    .folder(&copy.account, &connector.folder)
                    .await,
            );
        }
        let uploads = wave.iter().map(|copy| {
            let email = StagedEmail {
                layout: layouts[copy.item]
                    .as_ref()
                    .expect("a delivered item has its layout"),
                item: &importer.items[copy.item],
                state: &state,
                sealing: &sealing,
                connector_id,
            };
            upload(&importer.destination, &copy.account, email)
        });
        let uploaded = futures::future::join_all(uploads).await;
        for ((copy, mailbox), uploaded) in wave.iter().zip(mailboxes).zip(uploaded) {
            let prepared = match (mailbox, uploaded) {
                (Err(Transient(detail)), _) | (_, Err(Transient(detail))) => {
                    Err(CopyOutcome::Transient(detail))
                }
                (_, Ok(Err(outcome))) => Err(outcome),
                (Ok(mailbox), Ok(Ok(blob_id))) => Ok((mailbox, blob_id)),
            };
            match prepared {
                Err(outcome) => {
                    importer.settle(copy.item, &copy.user, copy.participant.clone(), outcome)?
                }
                Ok((mailbox, blob_id)) => {
                    let queue = importer.queued.entry(copy.account.clone()).or_default();
                    queue.push(Queued {
                        item: copy.item,
                        user: copy.user.clone(),
                        participant: copy.participant.clone(),
                        blob_id,
                        mailbox,
                    });
                }
            }
        }
    }
    importer.flush().await?;
    let mut kept = Vec::new();
    for (index, item) in importer.items.iter().enumerate() {
        if importer.ledger.is_kept(index) {
            kept.push(item.key.clone());
        } else {
            state.archive(connector_id, item, Utc::now())?;
        }
    }
    state.append_pending(connector_id, &kept)?;
    let ledger = importer.ledger;
    state.append_not_imported(&mut run, &ledger.not_imported)?;
    run.figures = ledger.figures;
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

/// Uploads one copy, its attachments streamed from staging: the blob id, or what became of it
/// when the staged bytes are not what the archive announced.
async fn upload(
    destination: &Destination<'_>,
    account: &str,
    email: StagedEmail<'_>,
) -> Result<Result<String, CopyOutcome>, Transient> {
    let upload_url = destination.session.upload_url(account);
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
        .post_stream(&upload_url, "message/rfc822", email.layout.len(), pieces)
        .await;
    let uploaded = match (uploaded, stream_error.into_inner()) {
        (_, Some(StreamError::Conversion(e))) => {
            return Ok(Err(CopyOutcome::Refused(
                NotImportedReason::AttachmentMismatch,
                e.to_string(),
            )));
        }
        (uploaded, _) => uploaded?,
    };
    Ok(Ok(
        jmap::parse_upload(&uploaded).map_err(|e| Transient(e.to_string()))?
    ))
}
