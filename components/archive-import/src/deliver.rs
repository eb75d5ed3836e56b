//! Delivery of one run's staged items: I/O around the core's conversion, mapping and JMAP.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use archive_host::{SpinStore, send};
use archiver_core::email::{EmailOptions, build_email, message_id};
use archiver_core::jmap::{
    self, ImportItem, ImportOutcome, Mailbox, Session, create_folder_request, find_folder,
};
use archiver_core::phone::Region;
use archiver_core::pipeline::StagedItem;
use archiver_core::resolve::MappingRules;
use archiver_core::runs::{NotImported, NotImportedReason, Run, RunState};
use archiver_core::source_client::{SourceRequest, basic_auth};
use archiver_core::state::State;
use chrono::Utc;

struct Config {
    region: Region,
    address_domain: String,
    session_url: String,
    authorization: String,
}

impl Config {
    fn load() -> anyhow::Result<Config> {
        let get =
            |name: &str| spin_sdk::variables::get(name).with_context(|| format!("variable {name}"));
        Ok(Config {
            region: get("default_region")?
                .parse()
                .map_err(|e: String| anyhow::anyhow!("variable default_region: {e}"))?,
            address_domain: get("address_domain")?,
            session_url: get("jmap_session_url")?,
            authorization: basic_auth(&get("jmap_username")?, &get("jmap_password")?),
        })
    }
}

/// A destination failure that may pass: the item stays staged for the next attempt.
struct Transient(String);

/// The JMAP destination as the service account sees it, with each account's folder once found.
struct Destination<'c> {
    config: &'c Config,
    session: Session,
    folders: BTreeMap<String, String>,
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
        let answer = send(&request, Some((content_type, body)))
            .await
            .map_err(Transient)?;
        if answer.status >= 300 {
            return Err(Transient(format!(
                "the mail server answered {}",
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
        self.folders.insert(account.to_string(), id.clone());
        Ok(id)
    }
}

/// What became of one user's copy.
enum Copy {
    Imported,
    Duplicate,
    Refused(NotImportedReason, String),
}

/// Imports every item the run staged; updates the run's figures and state.
pub async fn import_run(connector_id: &str, run_id: &str) -> anyhow::Result<serde_json::Value> {
    let config = Config::load()?;
    let store = SpinStore::open()?;
    let state = State::new(&store);
    let connector = state
        .connector(connector_id)?
        .context("no such connector")?;
    let mut run: Run = state.run(connector_id, run_id)?.context("no such run")?;
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
    let session_answer = match send(&session_request, None).await {
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
    let mut destination = Destination {
        config: &config,
        session: Session::parse(&session_answer.body, &config.session_url)?,
        folders: BTreeMap::new(),
    };

    let mut not_imported = state.not_imported(connector_id, run_id)?;
    let mut transient = None;
    for key in state.run_items(connector_id, run_id)? {
        let Some(mut item) = state.staged(connector_id, &key)? else {
            continue;
        };
        let delivery = rules.delivery(&item.message);
        if delivery.is_unmapped() {
            run.figures.unmapped += 1;
            for participant in &delivery.unmapped {
                not_imported.push(record(
                    &run,
                    &item,
                    Some(participant.address.clone()),
                    None,
                    NotImportedReason::Unmapped,
                    participant.reason.to_string(),
                ));
            }
            state.archive(connector_id, &item, Utc::now())?;
            continue;
        }
        let attachments = state.staged_attachments(connector_id, &item)?;
        let slices: Vec<&[u8]> = attachments.iter().map(Vec::as_slice).collect();
        let email = build_email(&item.message, &rules, &slices, &options);
        let mut item_transient = false;
        for recipient in &delivery.recipients {
            run.figures.available_for_import += 1;
            let outcome = match &email {
                Err(e) => Ok(Copy::Refused(
                    NotImportedReason::AttachmentMismatch,
                    e.to_string(),
                )),
                Ok(_)
                    if item
                        .delivered_to
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(&recipient.email)) =>
                {
                    Ok(Copy::Duplicate)
                }
                Ok(bytes) => {
                    deliver_copy(
                        &mut destination,
                        &connector.folder,
                        &recipient.email,
                        &item,
                        bytes.clone(),
                        &options,
                    )
                    .await
                }
            };
            match outcome {
                Ok(Copy::Imported) => {
                    run.figures.imported += 1;
                    item.delivered_to.push(recipient.email.clone());
                    state.update_staged(connector_id, &item)?;
                }
                Ok(Copy::Duplicate) => {
                    run.figures.skipped_duplicate += 1;
                    if !item.delivered_to.contains(&recipient.email) {
                        item.delivered_to.push(recipient.email.clone());
                        state.update_staged(connector_id, &item)?;
                    }
                }
                Ok(Copy::Refused(reason, detail)) => {
                    run.figures.failed += 1;
                    not_imported.push(record(
                        &run,
                        &item,
                        recipient.as_participants.first().cloned(),
                        Some(recipient.email.clone()),
                        reason,
                        detail,
                    ));
                }
                Err(Transient(detail)) => {
                    run.figures.failed += 1;
                    item_transient = true;
                    transient = Some(detail.clone());
                    not_imported.push(record(
                        &run,
                        &item,
                        recipient.as_participants.first().cloned(),
                        Some(recipient.email.clone()),
                        NotImportedReason::DestinationRefused,
                        format!("{detail}; kept for the next attempt"),
                    ));
                }
            }
        }
        if !item_transient {
            state.archive(connector_id, &item, Utc::now())?;
        }
    }
    state.put_not_imported(connector_id, run_id, &not_imported)?;
    match transient {
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

fn fail(
    state: &State<'_, SpinStore>,
    run: &mut Run,
    error: String,
) -> anyhow::Result<serde_json::Value> {
    run.state = RunState::Failed;
    run.finished_at = Some(Utc::now());
    run.error = Some(error.clone());
    state.put_run(run)?;
    bail!(error)
}

fn record(
    run: &Run,
    item: &StagedItem,
    participant: Option<String>,
    target_user: Option<String>,
    reason: NotImportedReason,
    detail: String,
) -> NotImported {
    NotImported {
        run: run.id.clone(),
        item_id: item.message.id.clone(),
        participant,
        target_user,
        reason,
        detail,
        at: Utc::now(),
    }
}

/// One copy into one user's folder: skipped if the mailbox already holds its Message-ID.
async fn deliver_copy(
    destination: &mut Destination<'_>,
    folder: &str,
    user: &str,
    item: &StagedItem,
    bytes: Vec<u8>,
    options: &EmailOptions<'_>,
) -> Result<Copy, Transient> {
    let Some(account) = destination.session.account_for(user).map(str::to_string) else {
        return Ok(Copy::Refused(
            NotImportedReason::NoSuchMailbox,
            format!("the mail server has no mailbox {user} the service account may write to"),
        ));
    };
    let id = message_id(
        options.connector_id,
        &item.message.id,
        options.address_domain,
    );
    let found = destination
        .call(jmap::find_message_request(&account, &id))
        .await?;
    if jmap::parse_find_message(&found).map_err(|e| Transient(e.to_string()))? {
        return Ok(Copy::Duplicate);
    }
    let mailbox = destination.folder(&account, folder).await?;
    let upload_url = destination.session.upload_url(&account);
    let uploaded = destination
        .post(&upload_url, "message/rfc822", bytes)
        .await?;
    let blob_id = jmap::parse_upload(&uploaded).map_err(|e| Transient(e.to_string()))?;
    let import = ImportItem {
        key: "e".into(),
        blob_id,
        received_at: item.message.sent_at,
    };
    let answer = destination
        .call(jmap::import_request(
            &account,
            &mailbox,
            std::slice::from_ref(&import),
        ))
        .await?;
    let outcomes = jmap::parse_import(&answer).map_err(|e| Transient(e.to_string()))?;
    Ok(match outcomes.get("e") {
        Some(ImportOutcome::Created(_)) => Copy::Imported,
        Some(ImportOutcome::AlreadyExists(_)) => Copy::Duplicate,
        Some(ImportOutcome::Refused(reason)) => {
            Copy::Refused(NotImportedReason::DestinationRefused, reason.clone())
        }
        None => {
            return Err(Transient(
                "the mail server did not answer for the email".into(),
            ));
        }
    })
}
