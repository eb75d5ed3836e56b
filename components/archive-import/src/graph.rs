//! Microsoft Graph (Exchange Online) as a destination: each copy is a message created in the
//! user's folder as a received item, its attachments inline when the request stays small, else
//! added after creation (an upload session for the large ones). A copy an earlier attempt may
//! have begun is looked up by `internetMessageId` first: found whole it is a duplicate, found
//! without all its attachments it is deleted and made again.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use archive_host::graph::{login, settings};
use archive_host::{Answer, send_within, sleep};
use archiver_core::digest::StreamingSha256;
use archiver_core::graph::{
    self, AccessToken, BatchItem, Failure, GraphError, GraphSettings, attachments_inline,
    content_range, message_json, parse_batch, parse_folder, parse_id, parse_ids, upload_ranges,
};
use archiver_core::ledger::CopyOutcome;
use archiver_core::runs::NotImportedReason;
use archiver_core::source_client::SourceRequest;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::step::{Context, Copy, OpenFailure, Outcomes, StepItems, hold_lease, required_secret};

/// Requests in flight at once: Exchange Online takes four at once per mailbox
/// (<https://learn.microsoft.com/en-us/graph/throttling-limits#outlook-service-limits>).
const CONCURRENT_COPIES: usize = 4;
/// How often one request is tried when throttled or unavailable.
const ATTEMPTS: u32 = 5;
/// The longest `Retry-After` waited inside a step; a longer one leaves the copy for later.
const LONGEST_WAIT: u64 = 60;

/// The Graph destination: the app's settings and its current token.
pub struct Graph {
    settings: GraphSettings,
    client_secret: String,
    timeout: Duration,
    token: RefCell<AccessToken>,
    /// User -> the folder's id, also kept between steps in the store.
    known_folders: BTreeMap<String, String>,
    /// Time spent waiting out throttling in this step.
    waited: std::cell::Cell<Duration>,
}

/// Why a Graph call did not succeed, with the detail an admin reads.
type Failed = Failure;

impl Graph {
    /// Loads the settings and a token (kept sealed between steps), or says why the run cannot
    /// go on.
    pub async fn open(context: &Context<'_>) -> anyhow::Result<Result<Graph, OpenFailure>> {
        let settings = settings().map_err(anyhow::Error::msg)?;
        let client_secret = required_secret("graph_client_secret")?;
        let timeout = context.config.timeout;
        let now = chrono::Utc::now();
        let token = match context
            .state
            .destination_token::<AccessToken>(context.sealing)?
        {
            Some(token) if token.is_fresh(now) => token,
            _ => match login(&settings, &client_secret, timeout).await {
                Ok(token) => {
                    context
                        .state
                        .put_destination_token(&token, context.sealing)?;
                    token
                }
                Err(e) => {
                    let reason = format!("Microsoft 365 login failed: {e}");
                    return Ok(Err(match e.is_transient() {
                        true => OpenFailure::Unavailable(reason),
                        false => OpenFailure::Login(reason),
                    }));
                }
            },
        };
        Ok(Ok(Graph {
            settings,
            client_secret,
            timeout,
            token: RefCell::new(token),
            known_folders: BTreeMap::new(),
            waited: std::cell::Cell::new(Duration::ZERO),
        }))
    }

    /// Delivers a step's copies, [`CONCURRENT_COPIES`] at a time, each user's folder found
    /// (or created) first.
    pub async fn deliver(
        &mut self,
        context: &Context<'_>,
        step: &StepItems,
        copies: Vec<Copy>,
        outcomes: &mut Outcomes,
    ) -> anyhow::Result<()> {
        let mut users: Vec<String> = copies.iter().map(|c| c.user.to_lowercase()).collect();
        users.sort_unstable();
        users.dedup();
        let mut folders = BTreeMap::new();
        for user in users {
            let folder = self.folder(context, &user).await?;
            folders.insert(user, folder);
        }
        let mut ready = Vec::new();
        for copy in copies {
            match &folders[&copy.user.to_lowercase()] {
                Ok(folder) => ready.push((copy, folder.clone())),
                Err(failure) => {
                    let outcome = outcome_of(failure.clone(), 0);
                    outcomes.settle(&step.items, &copy, outcome);
                }
            }
        }
        let mut stale = Vec::new();
        // First attempts of copies without attachments: created in batches, one request each.
        let (batched, ready): (Vec<_>, Vec<_>) = ready.into_iter().partition(|(copy, _)| {
            !copy.suspect && step.items[copy.item].message.attachments.is_empty()
        });
        self.create_batched(context, step, batched, outcomes, &mut stale)
            .await?;
        let mut waiting = ready.into_iter();
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < CONCURRENT_COPIES {
                let Some((copy, folder)) = waiting.next() else {
                    break;
                };
                let this = &*self;
                in_flight.push(async move {
                    let outcome = this.make_copy(context, step, &copy, &folder).await;
                    (copy, outcome)
                });
            }
            let Some((copy, outcome)) = in_flight.next().await else {
                break;
            };
            if let Err(Failure::FolderGone(_)) = &outcome {
                stale.push(copy.user.to_lowercase());
            }
            let size = message_size(&step.items[copy.item].message);
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(failure) => outcome_of(failure, size),
            };
            outcomes.settle(&step.items, &copy, outcome);
            // Renewed as copies complete: a step slowed by throttling never outlives its lease.
            hold_lease(&context.connector.id, context.run_id)?;
        }
        drop(in_flight);
        eprintln!(
            "graph: {:.2} s waited for throttling in this step",
            self.waited.get().as_secs_f64()
        );
        for user in stale {
            self.known_folders.remove(&user);
            context.state.forget_folder(&context.connector.id, &user)?;
        }
        Ok(())
    }

    /// Creates copies with JSON batches of up to [`graph::BATCH_LIMIT`] requests, at most
    /// [`CONCURRENT_COPIES`] per mailbox in one batch; a request of a batch that is throttled
    /// or fails on its own goes again in a later batch, after the longest `Retry-After` asked.
    async fn create_batched(
        &self,
        context: &Context<'_>,
        step: &StepItems,
        mut pending: Vec<(Copy, String)>,
        outcomes: &mut Outcomes,
        stale: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            let mut again = Vec::new();
            let mut wait = 0;
            let mut rest = pending;
            while !rest.is_empty() {
                // JSON escapes can make a text up to six times its bytes.
                let (batch, left) = take_batch(rest, |copy| {
                    step.items[copy.item].message.body.len() * 6 + 8 * 1024
                });
                rest = left;
                let items: Vec<BatchItem> = batch
                    .iter()
                    .enumerate()
                    .map(|(n, (copy, folder))| BatchItem {
                        id: n.to_string(),
                        method: "POST",
                        url: self
                            .settings
                            .create_message_url(&copy.user.to_lowercase(), folder),
                        body: Some(message_json(
                            &step.items[copy.item].message,
                            context.rules,
                            &context.options,
                            &[],
                        )),
                    })
                    .collect();
                let body = self.settings.batch_body(&items).to_string().into_bytes();
                let answers = match self
                    .call(
                        "POST",
                        &self.settings.batch_url(),
                        Some(("application/json", body)),
                    )
                    .await
                    .and_then(|a| parse_batch(&a.body).map_err(Failure::Transient))
                {
                    Ok(answers) => answers,
                    Err(failure) => {
                        for (copy, _) in batch {
                            let outcome = outcome_of(failure.clone(), 0);
                            outcomes.settle(&step.items, &copy, outcome);
                        }
                        continue;
                    }
                };
                for (n, (copy, folder)) in batch.into_iter().enumerate() {
                    let Some(answer) = answers.get(&n.to_string()) else {
                        again.push((copy, folder));
                        continue;
                    };
                    if answer.status < 300 {
                        outcomes.settle(&step.items, &copy, CopyOutcome::Imported);
                        continue;
                    }
                    if matches!(answer.status, 401 | 429 | 500 | 502 | 503 | 504) {
                        wait = wait.max(answer.retry_after.unwrap_or(1));
                        again.push((copy, folder));
                        continue;
                    }
                    let body = serde_json::to_vec(&answer.body).unwrap_or_default();
                    let failure = GraphError::of(answer.status, &body).meaning();
                    if let Failure::FolderGone(_) = &failure {
                        stale.push(copy.user.to_lowercase());
                    }
                    outcomes.settle(&step.items, &copy, outcome_of(failure, 0));
                }
                hold_lease(&context.connector.id, context.run_id)?;
            }
            if again.is_empty() {
                break;
            }
            if attempt >= ATTEMPTS || wait > LONGEST_WAIT {
                for (copy, _) in again {
                    let outcome = CopyOutcome::Transient(format!(
                        "Microsoft Graph kept throttling or failing the copy's creation \
                         ({attempt} attempts)"
                    ));
                    outcomes.settle(&step.items, &copy, outcome);
                }
                break;
            }
            self.wait(Duration::from_secs(wait)).await;
            pending = again;
        }
        Ok(())
    }

    /// The folder's id in `user`'s mailbox: remembered, found among the top-level folders, or
    /// created. Another step creating it at the same moment is taken as found.
    async fn folder(
        &mut self,
        context: &Context<'_>,
        user: &str,
    ) -> anyhow::Result<Result<String, Failed>> {
        let name = &context.connector.folder;
        if let Some(id) = self.known_folders.get(user) {
            return Ok(Ok(id.clone()));
        }
        if let Some(id) = context
            .state
            .cached_folder(&context.connector.id, user, name)?
        {
            self.known_folders.insert(user.to_string(), id.clone());
            return Ok(Ok(id));
        }
        let found = async {
            for _ in 0..2 {
                let list = self
                    .call("GET", &self.settings.find_folder_url(user, name), None)
                    .await?;
                if let Some(id) = parse_folder(&list.body, name).map_err(Failure::Transient)? {
                    return Ok(id);
                }
                let (url, body) = self.settings.create_folder(user, name);
                match self
                    .call("POST", &url, Some(("application/json", body)))
                    .await
                {
                    Ok(created) => return parse_id(&created.body).map_err(Failure::Transient),
                    // ErrorFolderExists: made meanwhile by another step; list again.
                    Err(Failure::Refused(detail)) if detail.contains("ErrorFolderExists") => {}
                    Err(failure) => return Err(failure),
                }
            }
            Err(Failure::Transient(format!(
                "the folder {name:?} could neither be found nor created"
            )))
        }
        .await;
        if let Ok(id) = &found {
            context
                .state
                .cache_folder(&context.connector.id, user, name, id)?;
            self.known_folders.insert(user.to_string(), id.clone());
        }
        Ok(found)
    }

    /// Makes one copy, or finds it made.
    async fn make_copy(
        &self,
        context: &Context<'_>,
        step: &StepItems,
        copy: &Copy,
        folder: &str,
    ) -> Result<CopyOutcome, Failed> {
        let item = &step.items[copy.item];
        let message = &item.message;
        let user = copy.user.to_lowercase();
        let options = &context.options;
        if copy.suspect {
            let id = archiver_core::email::message_id(
                options.connector_id,
                &message.id,
                options.address_domain,
            );
            let url = self.settings.find_message_url(&user, folder, &id);
            let found =
                parse_ids(&self.call("GET", &url, None).await?.body).map_err(Failure::Transient)?;
            let mut complete = false;
            for (found_id, _) in found {
                if !complete && self.is_whole(&user, &found_id, message).await? {
                    complete = true;
                    continue;
                }
                // Begun by an attempt that stopped before its attachments: made again.
                let url = self.settings.message_url(&user, &found_id, "");
                self.call("DELETE", &url, None).await?;
            }
            if complete {
                return Ok(CopyOutcome::Duplicate);
            }
        }
        let inline = attachments_inline(message);
        let attachments = match inline {
            true => match read_attachments(context, item) {
                Ok(bytes) => bytes,
                Err(refused) => return Ok(refused),
            },
            false => Vec::new(),
        };
        let body = message_json(message, context.rules, options, &attachments);
        drop(attachments);
        let url = self.settings.create_message_url(&user, folder);
        let created = self
            .call(
                "POST",
                &url,
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await?;
        let id = parse_id(&created.body).map_err(Failure::Transient)?;
        if inline || message.attachments.is_empty() {
            return Ok(CopyOutcome::Imported);
        }
        let attached = self.attach(context, item, &user, &id).await;
        if let Ok(None) = attached {
            return Ok(CopyOutcome::Imported);
        }
        // Never a partial copy left behind: deleted, and made again next time (a crash before
        // this leaves it to the lookup of the next attempt).
        let url = self.settings.message_url(&user, &id, "");
        let _ = self.call("DELETE", &url, None).await;
        match attached {
            Ok(Some(refused)) => Ok(refused),
            Ok(None) => Ok(CopyOutcome::Imported),
            Err(failure) => Err(failure),
        }
    }

    /// Whether a message found holds all the attachments the item has.
    async fn is_whole(
        &self,
        user: &str,
        id: &str,
        message: &archiver_core::source::Message,
    ) -> Result<bool, Failed> {
        if message.attachments.is_empty() {
            return Ok(true);
        }
        let url = self
            .settings
            .message_url(user, id, "/attachments?$select=id,name");
        let names = graph::parse_attachment_names(&self.call("GET", &url, None).await?.body)
            .map_err(Failure::Transient)?;
        Ok(names.len() == message.attachments.len())
    }

    /// Adds an item's attachments to message `id`, each streamed from staging: under 3 MB in
    /// one request, larger through an upload session. `Some` outcome: the staged bytes are not
    /// what the archive announced.
    async fn attach(
        &self,
        context: &Context<'_>,
        item: &archiver_core::pipeline::StagedItem,
        user: &str,
        id: &str,
    ) -> Result<Option<CopyOutcome>, Failed> {
        for (index, meta) in item.message.attachments.iter().enumerate() {
            if meta.size < graph::INLINE_ATTACHMENT_LIMIT {
                let bytes = match read_attachment(context, item, index) {
                    Ok(bytes) => bytes,
                    Err(refused) => return Ok(Some(refused)),
                };
                let body = serde_json::json!({
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    "name": graph::attachment_name(meta),
                    "contentType": meta.content_type,
                    "contentBytes": base64_of(&bytes),
                });
                let url = self.settings.message_url(user, id, "/attachments");
                self.call(
                    "POST",
                    &url,
                    Some(("application/json", body.to_string().into_bytes())),
                )
                .await?;
                continue;
            }
            if meta.size > graph::ATTACHMENT_LIMIT {
                return Ok(Some(CopyOutcome::Refused(
                    NotImportedReason::DestinationRefused,
                    format!(
                        "attachment {} is {} bytes, above the 150 MB Microsoft Graph takes",
                        meta.id, meta.size
                    ),
                )));
            }
            let url = self
                .settings
                .message_url(user, id, "/attachments/createUploadSession");
            let body = graph::upload_session_json(meta).to_string().into_bytes();
            let session = self
                .call("POST", &url, Some(("application/json", body)))
                .await?;
            let upload_url =
                graph::parse_upload_session(&session.body).map_err(Failure::Transient)?;
            if let Some(refused) = self.upload(context, item, index, &upload_url).await? {
                return Ok(Some(refused));
            }
        }
        Ok(None)
    }

    /// Uploads attachment `index` in its ranges, read from staging a chunk at a time and
    /// checked against its digest before the last range goes.
    async fn upload(
        &self,
        context: &Context<'_>,
        item: &archiver_core::pipeline::StagedItem,
        index: usize,
        upload_url: &str,
    ) -> Result<Option<CopyOutcome>, Failed> {
        let meta = &item.message.attachments[index];
        let chunks = item.attachment_chunks.get(index).copied().unwrap_or(0);
        let mut next_chunk = 0;
        let mut buffer: Vec<u8> = Vec::new();
        let mut digest = StreamingSha256::default();
        let mut read = 0u64;
        for range in upload_ranges(meta.size) {
            let length = (range.end - range.start) as usize;
            while buffer.len() < length && next_chunk < chunks {
                let chunk = context
                    .state
                    .staged_chunk(
                        &context.connector.id,
                        item,
                        index,
                        next_chunk,
                        context.sealing,
                    )
                    .map_err(|e| Failure::Transient(e.to_string()))?;
                next_chunk += 1;
                read += chunk.len() as u64;
                digest.update(&chunk);
                buffer.extend_from_slice(&chunk);
            }
            if range.end == meta.size
                && (read != meta.size || next_chunk != chunks || {
                    let done = std::mem::take(&mut digest);
                    done.finish_hex() != meta.sha256
                })
            {
                return Ok(Some(mismatch(&meta.id)));
            }
            if buffer.len() < length {
                return Ok(Some(mismatch(&meta.id)));
            }
            let rest = buffer.split_off(length);
            let piece = std::mem::replace(&mut buffer, rest);
            self.put_range(upload_url, &range, meta.size, piece).await?;
        }
        Ok(None)
    }

    /// One range of an upload session. The upload URL is pre-authenticated: it gets no
    /// `Authorization` header.
    async fn put_range(
        &self,
        upload_url: &str,
        range: &std::ops::Range<u64>,
        total: u64,
        piece: Vec<u8>,
    ) -> Result<(), Failed> {
        let request = SourceRequest {
            method: "PUT",
            url: upload_url.to_string(),
            headers: vec![("content-range", content_range(range, total))],
        };
        // Whatever stops an upload but the size limit (its session expired or gone included),
        // the copy is deleted and made again with a new session on a later attempt.
        self.send_retrying(&request, Some(("application/octet-stream", piece)))
            .await
            .map(|_| ())
            .map_err(|failure| match failure {
                Failure::TooLarge(_) => failure,
                _ => Failure::Transient(format!(
                    "uploading an attachment stopped: {}",
                    failure.detail()
                )),
            })
    }

    /// One Graph call with the current token; a token refused is renewed once.
    async fn call(
        &self,
        method: &'static str,
        url: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Answer, Failed> {
        let mut renewed = false;
        loop {
            let request = SourceRequest {
                method,
                url: url.to_string(),
                headers: vec![("authorization", self.token.borrow().bearer())],
            };
            match self.send_retrying(&request, body.clone()).await {
                Err(Failure::TokenRejected) if !renewed => {
                    renewed = true;
                    let token = login(&self.settings, &self.client_secret, self.timeout)
                        .await
                        .map_err(|e| Failure::Transient(format!("Microsoft 365 login: {e}")))?;
                    *self.token.borrow_mut() = token;
                }
                Err(Failure::TokenRejected) => {
                    return Err(Failure::Transient(
                        "Microsoft Graph refused a fresh token (401)".into(),
                    ));
                }
                answer => return answer,
            }
        }
    }

    /// Sends a request, waiting out `429` and `503` as their `Retry-After` asks.
    async fn send_retrying(
        &self,
        request: &SourceRequest,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Answer, Failed> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let answer = send_within(request, body.clone(), self.timeout)
                .await
                .map_err(Failure::Transient)?;
            if answer.status < 300 {
                return Ok(answer);
            }
            let failure = GraphError::of(answer.status, &answer.body).meaning();
            let wait =
                graph::retry_after(answer.retry_after.as_deref()).unwrap_or(1 << attempt.min(5));
            let retry = matches!(answer.status, 429 | 500 | 502 | 503 | 504);
            if !retry || attempt >= ATTEMPTS || wait > LONGEST_WAIT {
                return Err(failure);
            }
            self.wait(Duration::from_secs(wait)).await;
        }
    }

    /// Waits out throttling, counting the time.
    async fn wait(&self, duration: Duration) {
        sleep(duration).await;
        self.waited.set(self.waited.get() + duration);
    }
}

/// A copy with the id of the folder it goes in.
type InFolder = (Copy, String);

/// The request body bytes a batch of creates stays under, with room below the 4 MB limit.
const BATCH_BYTES: usize = 3 * 1024 * 1024;

/// The next batch from `copies`: at most [`graph::BATCH_LIMIT`] requests and
/// [`CONCURRENT_COPIES`] per mailbox, in order; the rest are returned for later batches.
/// A request's bytes are estimated by `size`; one alone may pass the estimate.
fn take_batch(
    copies: Vec<InFolder>,
    size: impl Fn(&Copy) -> usize,
) -> (Vec<InFolder>, Vec<InFolder>) {
    let (mut batch, mut rest) = (Vec::new(), Vec::new());
    let mut per_mailbox: BTreeMap<String, usize> = BTreeMap::new();
    let mut bytes = 0;
    for (copy, folder) in copies {
        let taken = per_mailbox.entry(copy.user.to_lowercase()).or_default();
        let more = size(&copy);
        if batch.len() < graph::BATCH_LIMIT
            && *taken < CONCURRENT_COPIES
            && (batch.is_empty() || bytes + more < BATCH_BYTES)
        {
            *taken += 1;
            bytes += more;
            batch.push((copy, folder));
        } else {
            rest.push((copy, folder));
        }
    }
    (batch, rest)
}

/// What a failure means for the copy's record.
fn outcome_of(failure: Failure, size: u64) -> CopyOutcome {
    match failure {
        Failure::NoSuchMailbox(detail) => CopyOutcome::Refused(
            NotImportedReason::NoSuchMailbox,
            format!("the tenant has no mailbox for this user ({detail})"),
        ),
        Failure::TooLarge(detail) => CopyOutcome::Refused(
            NotImportedReason::DestinationRefused,
            graph::too_large_reason(size, &detail),
        ),
        Failure::Refused(detail) => {
            CopyOutcome::Refused(NotImportedReason::DestinationRefused, detail)
        }
        Failure::Forbidden(detail) => CopyOutcome::Transient(format!(
            "the app may not write to this mailbox ({detail}): grant Mail.ReadWrite with admin \
             consent, and include the mailbox in the app's RBAC scope"
        )),
        Failure::FolderGone(detail) => {
            CopyOutcome::Transient(format!("the folder has gone ({detail})"))
        }
        Failure::Transient(detail) => CopyOutcome::Transient(detail),
        Failure::TokenRejected => {
            CopyOutcome::Transient("Microsoft Graph refused the token".into())
        }
    }
}

/// The message's size with its attachments.
fn message_size(message: &archiver_core::source::Message) -> u64 {
    message.body.len() as u64 + message.attachments.iter().map(|a| a.size).sum::<u64>()
}

fn mismatch(attachment: &str) -> CopyOutcome {
    CopyOutcome::Refused(
        NotImportedReason::AttachmentMismatch,
        format!(
            "attachment {attachment}: the staged bytes do not match the archive's size and SHA-256"
        ),
    )
}

/// Attachment `index` of a staged item, checked against its size and digest.
fn read_attachment(
    context: &Context<'_>,
    item: &archiver_core::pipeline::StagedItem,
    index: usize,
) -> Result<Vec<u8>, CopyOutcome> {
    let meta = &item.message.attachments[index];
    let chunks = item.attachment_chunks.get(index).copied().unwrap_or(0);
    let mut bytes = Vec::with_capacity(meta.size as usize);
    for n in 0..chunks {
        let chunk = context
            .state
            .staged_chunk(&context.connector.id, item, index, n, context.sealing)
            .map_err(|e| CopyOutcome::Transient(e.to_string()))?;
        bytes.extend_from_slice(&chunk);
    }
    match bytes.len() as u64 == meta.size
        && archiver_core::digest::sha256_hex(&bytes) == meta.sha256
    {
        true => Ok(bytes),
        false => Err(mismatch(&meta.id)),
    }
}

/// Every attachment of a staged item, checked.
fn read_attachments(
    context: &Context<'_>,
    item: &archiver_core::pipeline::StagedItem,
) -> Result<Vec<Vec<u8>>, CopyOutcome> {
    (0..item.message.attachments.len())
        .map(|index| read_attachment(context, item, index))
        .collect()
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
