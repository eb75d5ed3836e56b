//! `GET /api/destination`: logs in to the deployment's destination and probes the mailboxes the
//! connectors map to, saying what is wrong in words an admin can act on. No secret is ever in
//! the answer.

use archive_host::SpinStore;
use archiver_core::api::ApiError;
use archiver_core::destination::{self, Check, Report};
use archiver_core::graph::token_roles;
use archiver_core::jmap::Session;
use archiver_core::source_client::{SourceRequest, basic_auth};
use archiver_core::state::State;
use spin_sdk::http::Response;

use crate::config::Config;
use crate::json;

/// Mailboxes probed at most per check: enough to show a scope or consent problem.
const PROBED_MAILBOXES: usize = 10;

/// The users the connectors' mappings deliver to (lowercase, each once), with the folder of the
/// connector that maps them.
fn mapped_users(config: &Config) -> Result<Vec<(String, String)>, ApiError> {
    let store = SpinStore::open()?;
    let state = State::new(&store);
    let mut users: Vec<(String, String)> = Vec::new();
    for connector in state.connectors()? {
        let table = state.mapping(&connector.id, config.default_region)?;
        for entry in table.entries() {
            let email = entry.email.to_lowercase();
            if !users.iter().any(|(user, _)| *user == email) {
                users.push((email, connector.folder.clone()));
            }
        }
    }
    users.sort();
    users.truncate(PROBED_MAILBOXES);
    Ok(users)
}

fn variable(name: &str) -> Result<String, ApiError> {
    archive_host::variable(name).map_err(ApiError::Config)
}

pub async fn check(config: &Config) -> Result<Response, ApiError> {
    let users = mapped_users(config)?;
    let timeout = archive_host::request_timeout().map_err(ApiError::Config)?;
    let kind = variable("destination")?.trim().to_ascii_lowercase();
    let checks = match kind.as_str() {
        "jmap" => jmap(&users, timeout).await?,
        "graph" => graph(&users, timeout).await?,
        other => {
            return Err(ApiError::Config(format!(
                "variable destination: jmap or graph, not {other:?}"
            )));
        }
    };
    let report = Report::new(&kind, checks);
    let body = serde_json::to_value(&report).map_err(|e| ApiError::Config(e.to_string()))?;
    Ok(json(200, &body))
}

async fn jmap(
    users: &[(String, String)],
    timeout: std::time::Duration,
) -> Result<Vec<Check>, ApiError> {
    let password = variable("jmap_password")?;
    if password.is_empty() {
        return Ok(vec![Check::failed(
            "login",
            "jmap_password is not set (SPIN_VARIABLE_JMAP_PASSWORD)",
        )]);
    }
    let url = variable("jmap_session_url")?;
    let request = SourceRequest {
        method: "GET",
        url: url.clone(),
        headers: vec![(
            "authorization",
            basic_auth(&variable("jmap_username")?, &password),
        )],
    };
    let answer = archive_host::send_within(&request, None, timeout).await;
    let login = destination::jmap_session(answer.as_ref().map(|a| a.status).map_err(Clone::clone));
    let session = match (&answer, login.ok) {
        (Ok(answer), true) => Session::parse(&answer.body, &url).ok(),
        _ => None,
    };
    let mut checks = vec![login];
    if let Some(session) = session {
        for (user, _) in users {
            checks.push(destination::jmap_mailbox(
                user,
                session.account_for(user).is_some(),
            ));
        }
    }
    Ok(checks)
}

async fn graph(
    users: &[(String, String)],
    timeout: std::time::Duration,
) -> Result<Vec<Check>, ApiError> {
    let settings = match archive_host::graph::settings() {
        Ok(settings) => settings,
        Err(e) => return Ok(vec![Check::failed("settings", e)]),
    };
    let secret = variable("graph_client_secret")?;
    if secret.is_empty() {
        return Ok(vec![Check::failed(
            "login",
            "graph_client_secret is not set (SPIN_VARIABLE_GRAPH_CLIENT_SECRET)",
        )]);
    }
    let token = match archive_host::graph::login(&settings, &secret, timeout).await {
        Ok(token) => token,
        Err(e) => return Ok(vec![destination::graph_login(&Err(e))]),
    };
    let mut mailboxes = Vec::new();
    for (user, folder) in users {
        let request = SourceRequest {
            method: "GET",
            url: settings.find_folder_url(user, folder),
            headers: vec![("authorization", token.bearer())],
        };
        mailboxes.push(
            match archive_host::send_within(&request, None, timeout).await {
                Ok(answer) => destination::graph_mailbox(user, answer.status, &answer.body),
                Err(e) => Check::failed(&format!("mailbox {user}"), e),
            },
        );
    }
    let reached = mailboxes.iter().any(|c| c.ok);
    let mut checks = vec![
        destination::graph_login(&Ok(())),
        destination::graph_permission(token_roles(&token.value), reached),
    ];
    checks.append(&mut mailboxes);
    Ok(checks)
}
