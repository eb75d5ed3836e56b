//! JMAP (RFC 8620/8621) as a destination: each item's email is uploaded as a blob, streamed
//! from staging, into every account that gets a copy, then imported into the account's folder
//! with `Email/import`, many emails per call.

use std::collections::BTreeMap;

use archive_host::{SpinStore, send_stream, send_within};
use archiver_core::email::{EmailLayout, EmailStream, StreamError, message_id};
use archiver_core::jmap::{self, ImportItem, Mailbox, Session, create_folder_request, find_folder};
use archiver_core::ledger::CopyOutcome;
use archiver_core::pipeline::{Lanes, StagedItem, import_calls};
use archiver_core::runs::NotImportedReason;
use archiver_core::source_client::{SourceRequest, basic_auth};
use archiver_core::state::{Sealing, State};
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::step::{
    Context, Copy, OpenFailure, Outcomes, StepItems, Transient, hold_lease, required_secret,
    variable,
};

/// The JMAP destination as the service account sees it, with each account's folder once found.
pub struct Jmap {
    session: Session,
    authorization: String,
    timeout: std::time::Duration,
    /// Account -> the folder's mailbox id, also kept between steps in the store.
    known_folders: BTreeMap<String, String>,
}

impl Jmap {
    /// Reads the JMAP session, or says why the run cannot go on.
    pub async fn open(context: &Context<'_>) -> anyhow::Result<Result<Jmap, OpenFailure>> {
        let session_url = variable("jmap_session_url")?;
        let authorization = basic_auth(
            &variable("jmap_username")?,
            &required_secret("jmap_password")?,
        );
        let session_request = SourceRequest {
            method: "GET",
            url: session_url.clone(),
            headers: vec![("authorization", authorization.clone())],
        };
        let timeout = context.config.timeout;
        let answer = match send_within(&session_request, None, timeout).await {
            Ok(answer) if answer.status == 200 => answer,
            Ok(answer) if matches!(answer.status, 401 | 403) => {
                return Ok(Err(OpenFailure::Login(format!(
                    "the mail server refused the service account jmap_username ({}): check \
                     jmap_username and jmap_password",
                    answer.status
                ))));
            }
            Ok(answer) => {
                return Ok(Err(OpenFailure::Unavailable(format!(
                    "the mail server's JMAP session answered {}",
                    answer.status
                ))));
            }
            Err(e) => {
                return Ok(Err(OpenFailure::Unavailable(format!(
                    "the mail server is unreachable: {e}"
                ))));
            }
        };
        Ok(Ok(Jmap {
            session: Session::parse(&answer.body, &session_url)?,
            authorization,
            timeout,
            known_folders: BTreeMap::new(),
        }))
    }

    /// Delivers a step's copies: those an earlier attempt may have made are looked up by
    /// Message-ID, many per request; the others are uploaded and imported into each account's
    /// folder.
    pub async fn deliver(
        &mut self,
        context: &Context<'_>,
        step: &StepItems,
        copies: Vec<Copy>,
        outcomes: &mut Outcomes,
    ) -> anyhow::Result<()> {
        let (mut suspect, mut to_upload) = (Vec::new(), Vec::new());
        for mut copy in copies {
            match self.session.account_for(&copy.user) {
                Some(account) => {
                    copy.account = account.to_string();
                    match copy.suspect {
                        true => suspect.push(copy),
                        false => to_upload.push(copy),
                    }
                }
                None => {
                    let refused = CopyOutcome::Refused(
                        NotImportedReason::NoSuchMailbox,
                        format!(
                            "the mail server has no mailbox {} the service account may write to",
                            copy.user
                        ),
                    );
                    outcomes.settle(&step.items, &copy, refused);
                }
            }
        }
        let options = &context.options;
        let per_request = LOOKUP_BATCH.min(self.session.max_calls_in_request.max(1));
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
            let found = match self.call(jmap::find_messages_request(&lookups)).await {
                Ok(body) => {
                    jmap::parse_find_messages(&body, lookups.len()).map_err(|e| e.to_string())
                }
                Err(Transient(detail)) => Err(detail),
            };
            for (n, copy) in batch.iter().enumerate() {
                match &found {
                    Ok(found) if found[n] => {
                        outcomes.settle(&step.items, copy, CopyOutcome::Duplicate)
                    }
                    Ok(_) => to_upload.push(copy.clone()),
                    Err(detail) => {
                        outcomes.settle(&step.items, copy, CopyOutcome::Transient(detail.clone()))
                    }
                }
            }
        }

        // Each account's folder, then uploads and imports overlapped.
        let mut accounts: Vec<&str> = to_upload.iter().map(|c| c.account.as_str()).collect();
        accounts.sort_unstable();
        accounts.dedup();
        let folders = self
            .folders(context, &accounts, &context.connector.folder)
            .await?;
        let stale = deliver(self, context, step, &folders, to_upload, outcomes).await?;
        for account in stale {
            self.forget_folder(context, &account)?;
        }
        Ok(())
    }

    async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, Transient> {
        let request = SourceRequest {
            method: "POST",
            url: url.to_string(),
            headers: vec![("authorization", self.authorization.clone())],
        };
        let answer = send_within(&request, Some((content_type, body)), self.timeout)
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
                headers: vec![("authorization", self.authorization.clone())],
            })
            .collect();
        let answers = send_stream(&requests, content_type, length, pieces, self.timeout);
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
        context: &Context<'_>,
        accounts: &[&str],
        folder: &str,
    ) -> anyhow::Result<BTreeMap<String, Result<String, String>>> {
        let mut found = BTreeMap::new();
        let mut unknown = Vec::new();
        for &account in accounts {
            if let Some(id) = self.known_folders.get(account) {
                found.insert(account.to_string(), Ok(id.clone()));
            } else if let Some(id) =
                context
                    .state
                    .cached_folder(&context.connector.id, account, folder)?
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
                        self.remember(context, account, folder, &id)?;
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
                        self.remember(context, account, folder, &id)?;
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
                self.remember(context, account, folder, &id)?;
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

    fn remember(
        &mut self,
        context: &Context<'_>,
        account: &str,
        folder: &str,
        id: &str,
    ) -> anyhow::Result<()> {
        context
            .state
            .cache_folder(&context.connector.id, account, folder, id)?;
        self.known_folders
            .insert(account.to_string(), id.to_string());
        Ok(())
    }

    fn forget_folder(&mut self, context: &Context<'_>, account: &str) -> anyhow::Result<()> {
        self.known_folders.remove(account);
        Ok(context
            .state
            .forget_folder(&context.connector.id, account)?)
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
/// A copy uploaded and waiting for an `Email/import`.
struct Queued {
    copy: Copy,
    blob_id: String,
    mailbox: String,
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
/// Imports uploaded copies: `Email/import` calls of up to [`IMPORT_BATCH`] emails for one
/// account's folder, as many calls per request as the server takes.
async fn import(destination: &Jmap, step: &StepItems, queued: Vec<Queued>) -> Done {
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
/// Uploads the copies, never two into one account at once (a server may serialise an
/// account's uploads, and Cyrus answers 404 to one of two first uploads racing to create the
/// account's upload area), each streaming its attachments from staging, while what is uploaded
/// is imported: [`CONCURRENT_REQUESTS`] requests in flight. Returns the accounts whose folder
/// has gone.
async fn deliver(
    destination: &Jmap,
    context: &Context<'_>,
    step: &StepItems,
    folders: &BTreeMap<String, Result<String, String>>,
    copies: Vec<Copy>,
    outcomes: &mut Outcomes,
) -> anyhow::Result<Vec<String>> {
    let (state, sealing) = (context.state, context.sealing);
    let (connector_id, run_id) = (context.connector.id.as_str(), context.run_id);
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
async fn upload(destination: &Jmap, accounts: &[&str], email: StagedEmail<'_>) -> Vec<Uploaded> {
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
