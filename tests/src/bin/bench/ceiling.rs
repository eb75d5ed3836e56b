//! The mail server's own ingest rate: a minimal JMAP client that uploads prebuilt emails and
//! imports them 50 per `Email/import` call, with several connections at once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use archiver_core::jmap::{self, ImportItem, Session};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// A JMAP client over one kept-alive HTTP/1.1 connection.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authorization: String,
    authority: String,
}

impl Connection {
    pub async fn open(origin: &str, authorization: &str) -> anyhow::Result<Connection> {
        let authority = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .trim_end_matches('/')
            .to_string();
        let stream = tokio::net::TcpStream::connect(&authority).await?;
        let io = wasmtime_wasi_http::io::TokioIo::new(stream);
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        Ok(Connection {
            sender,
            authorization: authorization.to_string(),
            authority,
        })
    }

    pub async fn send(
        &mut self,
        method: &str,
        url: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<Bytes> {
        let path = url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|at| rest[at..].to_string()))
            .unwrap_or_else(|| "/".into());
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("authorization", &self.authorization)
            .header("content-type", content_type)
            .body(Full::new(body))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{method} {url}: {status}");
        }
        Ok(body)
    }

    pub async fn call(&mut self, api: &str, request: serde_json::Value) -> anyhow::Result<Bytes> {
        self.send(
            "POST",
            api,
            "application/json",
            Bytes::from(request.to_string()),
        )
        .await
    }
}

/// How fast the server took the emails.
pub struct Ceiling {
    pub copies: usize,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Imports `emails` (account address -> email bytes) into the folder `folder` of each account,
/// `workers` connections at once (each working through its own accounts).
pub async fn measure(
    origin: &str,
    session_url: &str,
    authorization: &str,
    folder: &str,
    emails: BTreeMap<String, Vec<Bytes>>,
    workers: usize,
) -> anyhow::Result<Ceiling> {
    let expected: usize = emails.values().map(Vec::len).sum();
    let mut connection = Connection::open(origin, authorization).await?;
    let session = connection
        .send("GET", session_url, "application/json", Bytes::new())
        .await?;
    let session = Session::parse(&session, session_url)?;
    // Folders first: the measurement is of uploads and imports only.
    let mut work: Vec<Vec<(String, String, Vec<Bytes>)>> = vec![Vec::new(); workers.max(1)];
    let mut accounts = Vec::new();
    for (user, copies) in emails {
        let account = session
            .account_for(&user)
            .with_context(|| format!("no mailbox {user}"))?
            .to_string();
        accounts.push((account, copies));
    }
    let mut n = 0;
    for batch in accounts.chunks(session.max_calls_in_request) {
        let names: Vec<&str> = batch.iter().map(|(account, _)| account.as_str()).collect();
        let lists = jmap::parse_mailboxes(
            &connection
                .call(&session.api_url, jmap::mailboxes_request(&names))
                .await?,
            names.len(),
        )?;
        let lists = lists.into_iter().collect::<Result<Vec<_>, _>>()?;
        // A folder made by an earlier pass (the warm-up day) is used as it is.
        let mut found = BTreeMap::new();
        let mut targets: Vec<(&str, &[jmap::Mailbox])> = Vec::new();
        for (name, list) in names.iter().zip(&lists) {
            match jmap::find_folder(list, folder) {
                Some(id) => {
                    found.insert(*name, id);
                }
                None => targets.push((*name, list.as_slice())),
            }
        }
        if !targets.is_empty() {
            let created = jmap::parse_create_folder(
                &connection
                    .call(
                        &session.api_url,
                        jmap::create_folder_request(&targets, folder, false),
                    )
                    .await?,
                targets.len(),
            )?;
            for ((name, _), created) in targets.iter().zip(created) {
                found.insert(*name, created?.map_err(anyhow::Error::msg)?);
            }
        }
        for (account, copies) in batch {
            let mailbox = found
                .remove(account.as_str())
                .with_context(|| format!("no folder for {account}"))?;
            work[n % workers.max(1)].push((account.clone(), mailbox, copies.clone()));
            n += 1;
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for accounts in work {
        let (origin, authorization, session) = (
            origin.to_string(),
            authorization.to_string(),
            session.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::open(&origin, &authorization).await?;
            let (mut copies, mut bytes) = (0usize, 0u64);
            for (account, mailbox, emails) in accounts {
                for batch in emails.chunks(50) {
                    let mut items = Vec::with_capacity(batch.len());
                    for (n, email) in batch.iter().enumerate() {
                        bytes += email.len() as u64;
                        let uploaded = connection
                            .send(
                                "POST",
                                &session.upload_url(&account),
                                "message/rfc822",
                                email.clone(),
                            )
                            .await?;
                        items.push(ImportItem {
                            key: format!("e{n}"),
                            blob_id: jmap::parse_upload(&uploaded)?,
                            received_at: chrono::Utc::now(),
                        });
                    }
                    let answer = connection
                        .call(
                            &session.api_url,
                            jmap::import_request(&account, &mailbox, &items),
                        )
                        .await?;
                    let outcomes = jmap::parse_import(&answer)?;
                    copies += outcomes
                        .values()
                        .filter(|o| matches!(o, jmap::ImportOutcome::Created(_)))
                        .count();
                }
            }
            anyhow::Ok((copies, bytes))
        }));
    }
    let (mut copies, mut bytes) = (0, 0);
    for task in tasks {
        let (c, b) = task.await??;
        copies += c;
        bytes += b;
    }
    if copies != expected {
        bail!(
            "the server created {copies} of {expected} emails (it held the others already): \
             measure on an empty mail server, as scripts/bench starts one"
        );
    }
    Ok(Ceiling {
        copies,
        bytes,
        elapsed: started.elapsed(),
    })
}
