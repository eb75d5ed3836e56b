//! One function per route: read the request, call the core, write the state, answer.

use archiver_core::api::{ApiError, MAX_CSV_BYTES, MAX_JSON_BYTES};
use archiver_core::connector::{self, Connector, DEFAULT_FOLDER, check_id};
use archiver_core::mapping::parse_mapping_csv;
use archiver_core::runs::{self, Run, RunState, RunTrigger, parse_run_request, run_id};
use archiver_core::secrets::{self, NONCE_BYTES};
use archiver_core::source_client::{
    SourceError, SourceRequest, account_request, read_account_response,
};
use archiver_core::state::State;
use chrono::Utc;
use spin_sdk::http::{Request, Response};

use crate::config::Config;
use crate::json;
use archive_host::SpinStore;

/// Days without any fetched item after which the status raises its alert, unless the request
/// says `?quiet_days=N`.
const DEFAULT_QUIET_DAYS: i64 = 3;
/// The fetch component's private route that executes a queued run.
const FETCH_URL: &str = "http://archive-fetch.spin.internal/runs";
/// The fetch component's private route that starts the runs of a timer event.
const FETCH_TIMER_URL: &str = "http://archive-fetch.spin.internal/timer";

fn with_state<T>(f: impl FnOnce(&State<SpinStore>) -> Result<T, ApiError>) -> Result<T, ApiError> {
    let store = SpinStore::open()?;
    f(&State::new(&store))
}

fn existing(state: &State<SpinStore>, id: &str) -> Result<Connector, ApiError> {
    check_id(id)?;
    state
        .connector(id)?
        .ok_or_else(|| ApiError::NoSuchConnector(id.to_string()))
}

/// The body, if its content type and size are what the route takes.
pub(crate) fn body<'r>(
    request: &'r Request,
    expected: &'static str,
    limit: usize,
) -> Result<&'r [u8], ApiError> {
    let content_type = request
        .header("content-type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(expected) {
        return Err(ApiError::UnsupportedMediaType {
            expected,
            got: content_type.to_string(),
        });
    }
    let declared = request
        .header("content-length")
        .and_then(|v| v.as_str())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.unwrap_or(0) > limit || request.body().len() > limit {
        return Err(ApiError::TooLarge { limit });
    }
    Ok(request.body())
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    archive_host::random_bytes().map_err(ApiError::Config)
}

pub fn list_connectors() -> Result<Response, ApiError> {
    with_state(|state| {
        let views: Vec<_> = state.connectors()?.iter().map(Connector::view).collect();
        Ok(json(200, &serde_json::json!({ "connectors": views })))
    })
}

pub fn get_connector(id: &str) -> Result<Response, ApiError> {
    with_state(|state| Ok(json(200, &existing(state, id)?.view())))
}

pub fn delete_connector(id: &str) -> Result<Response, ApiError> {
    check_id(id)?;
    with_state(|state| {
        if state.delete_connector(id)? {
            Ok(Response::new(204, ()))
        } else {
            Err(ApiError::NoSuchConnector(id.to_string()))
        }
    })
}

/// Creates or updates a connector. A change of credentials or archive is saved only after the
/// archive confirmed it; any other change (enabling, disabling, the name, the folder) keeps the
/// confirmed credentials and needs no archive at all.
pub async fn put_connector(
    config: &Config,
    id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    check_id(id)?;
    let input = connector::parse_input(body(request, "application/json", MAX_JSON_BYTES)?)?;
    let store = SpinStore::open()?;
    let state = State::new(&store);
    let previous = state.connector(id)?;
    let confirmed = match &previous {
        Some(previous) if !connector::needs_credential_check(&input, Some(previous)) => Confirmed {
            source_url: previous.source_url.clone(),
            password_sealed: previous.password_sealed.clone(),
            account_id: previous.account_id.clone(),
            organization: previous.organization.clone(),
        },
        _ => confirm_credentials(config, id, &input, previous.as_ref()).await?,
    };

    let now = Utc::now();
    let saved = Connector {
        id: id.to_string(),
        display_name: input.display_name,
        network: input.network,
        source_url: confirmed.source_url,
        username: input.username,
        password_sealed: confirmed.password_sealed,
        folder: input
            .folder
            .or_else(|| previous.as_ref().map(|p| p.folder.clone()))
            .unwrap_or_else(|| DEFAULT_FOLDER.to_string()),
        automatic_mapping: input.automatic_mapping,
        enabled: input
            .enabled
            .or_else(|| previous.as_ref().map(|p| p.enabled))
            .unwrap_or(true),
        account_id: confirmed.account_id,
        organization: confirmed.organization,
        created_at: previous.as_ref().map_or(now, |p| p.created_at),
        updated_at: now,
    };
    state.put_connector(&saved)?;
    let status = if previous.is_some() { 200 } else { 201 };
    Ok(json(status, &saved.view()))
}

/// What the archive confirmed of a connector's credentials, as it is stored.
struct Confirmed {
    source_url: String,
    password_sealed: String,
    account_id: String,
    organization: String,
}

/// Asks the archive whether the input's credentials (its password, else the stored one) log in,
/// and seals the password for storing.
async fn confirm_credentials(
    config: &Config,
    id: &str,
    input: &connector::ConnectorInput,
    previous: Option<&Connector>,
) -> Result<Confirmed, ApiError> {
    let password = match (&input.password, previous) {
        (Some(password), _) => password.clone(),
        (None, Some(previous)) => {
            let opened = secrets::open(&config.staging_key, id, &previous.password_sealed)
                .map_err(|_| ApiError::NoStoredPassword)?;
            String::from_utf8(opened).map_err(|_| ApiError::NoStoredPassword)?
        }
        (None, None) => return Err(connector::ConnectorError::PasswordRequired.into()),
    };
    let (base, account) =
        check_login(config, &input.source_url, &input.username, &password).await?;
    Ok(Confirmed {
        source_url: base,
        password_sealed: secrets::seal(
            &config.staging_key,
            random_bytes::<NONCE_BYTES>()?,
            id,
            password.as_bytes(),
        ),
        account_id: account.account_id,
        organization: account.organization,
    })
}

/// The archive's base URL and account for these credentials, if the archive takes them; the
/// URL must be on the one origin the manifest lets this component call.
pub(crate) async fn check_login(
    config: &Config,
    source_url: &str,
    username: &str,
    password: &str,
) -> Result<(String, archiver_core::source::Account), ApiError> {
    let base = connector::source_base(source_url)?;
    if connector::origin(&base).to_ascii_lowercase() != config.source_origin {
        return Err(ApiError::SourceNotAllowed {
            allowed: config.source_origin.clone(),
        });
    }
    let account = check_account(&base, username, password).await?;
    Ok((base, account))
}

/// `GET /v1/account` with the credentials: the wizard's "Login to the archive" step.
async fn check_account(
    base: &str,
    username: &str,
    password: &str,
) -> Result<archiver_core::source::Account, ApiError> {
    let timeout = archive_host::request_timeout().map_err(ApiError::Config)?;
    let request = account_request(base, username, password);
    let started = std::time::Instant::now();
    let mut attempt = 0;
    loop {
        // A passing answer (503 with Retry-After, a 429, a dropped connection) is asked again
        // with the fetch's back-off, within a budget an admin waits for; only then concluded.
        let (error, retry_after) = match archive_host::send_within(&request, None, timeout).await {
            Ok(answer) => match read_account_response(answer.status, &answer.body) {
                Ok(account) => return Ok(account),
                Err(error) => (error, answer.retry_after),
            },
            Err(e) => (SourceError::Unreachable(e), None),
        };
        let wait = archiver_core::pipeline::retry_wait(&error, retry_after.as_deref(), attempt)
            .filter(|wait| started.elapsed() + *wait <= CHECK_RETRY_BUDGET);
        match wait {
            Some(wait) => archive_host::sleep(wait).await,
            None => return Err(ApiError::Source(error)),
        }
        attempt += 1;
    }
}

/// How long the credential check of a connector may keep asking an archive that answers with a
/// passing error before it reports the archive unreachable.
const CHECK_RETRY_BUDGET: std::time::Duration = std::time::Duration::from_secs(15);

pub fn get_mapping(config: &Config, id: &str) -> Result<Response, ApiError> {
    with_state(|state| {
        existing(state, id)?;
        let table = state.mapping(id, config.default_region)?;
        Ok(Response::builder()
            .status(200)
            .header("content-type", "text/csv; charset=utf-8")
            .header("cache-control", "no-store")
            .body(table.to_csv())
            .build())
    })
}

pub fn put_mapping(config: &Config, id: &str, request: &Request) -> Result<Response, ApiError> {
    with_state(|state| {
        existing(state, id)?;
        let csv = body(request, "text/csv", MAX_CSV_BYTES)?;
        let table = parse_mapping_csv(csv, config.default_region).map_err(ApiError::Mapping)?;
        let pointer = state.replace_mapping(id, &table, Utc::now())?;
        Ok(json(
            200,
            &serde_json::to_value(pointer).unwrap_or_default(),
        ))
    })
}

/// Queues a run and has the fetch component execute it now (it hands over to the import step).
/// The answer is `202` with the run as it stands when the chained execution returns.
pub async fn start_run(id: &str, request: &Request) -> Result<Response, ApiError> {
    let store = SpinStore::open()?;
    let state = State::new(&store);
    existing(&state, id)?;
    let now = Utc::now();
    let body = if request.body().is_empty() {
        &[][..]
    } else {
        body(request, "application/json", MAX_JSON_BYTES)?
    };
    let window = parse_run_request(body, now)?;
    let run = Run {
        id: run_id(now, &hex::encode(random_bytes::<4>()?)),
        connector: id.to_string(),
        trigger: RunTrigger::Manual,
        since: window.since,
        until: window.until,
        state: RunState::Queued,
        requested_at: now,
        started_at: None,
        finished_at: None,
        figures: runs::Figures::default(),
        error: None,
        progress: Default::default(),
        days: Some(Default::default()),
        writes: Vec::new(),
    };
    state.put_run(&run)?;
    let start = SourceRequest {
        method: "POST",
        url: format!("{FETCH_URL}/{id}/{}", run.id),
        headers: vec![],
    };
    if let Err(e) = archive_host::send(&start, None).await {
        eprintln!("setup: starting run {} of {id}: {e}", run.id);
    }
    let current = state.run(id, &run.id)?.unwrap_or(run);
    Ok(json(202, &current.view()))
}

/// A timer event: the fetch component starts the due runs and answers at once (it goes on with
/// them after its answer), so the timer's request is short however long the runs take.
pub async fn timer_event(request: &Request) -> Result<Response, ApiError> {
    let event = archiver_core::timer::parse_timer_event(body(
        request,
        "application/json",
        MAX_JSON_BYTES,
    )?)?;
    let start = SourceRequest {
        method: "POST",
        url: format!("{FETCH_TIMER_URL}/{}", event.timestamp),
        headers: vec![],
    };
    let answer = archive_host::send(&start, None)
        .await
        .map_err(ApiError::TimerNotStarted)?;
    if answer.status != 202 {
        return Err(ApiError::TimerNotStarted(format!(
            "the fetch component answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )));
    }
    let started: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    Ok(json(202, &started))
}

pub fn list_runs(id: &str) -> Result<Response, ApiError> {
    with_state(|state| {
        existing(state, id)?;
        let mut runs = state.runs(id)?;
        runs.sort_by_key(|run| std::cmp::Reverse(run.requested_at));
        let views: Vec<_> = runs.iter().map(Run::view).collect();
        Ok(json(200, &serde_json::json!({ "runs": views })))
    })
}

pub fn get_run(id: &str, run_id: &str) -> Result<Response, ApiError> {
    with_state(|state| {
        existing(state, id)?;
        let run = state
            .run(id, run_id)?
            .ok_or_else(|| ApiError::NoSuchRun(run_id.to_string()))?;
        let mut view = run.view();
        view["not_imported"] = serde_json::to_value(state.not_imported(&run)?).unwrap_or_default();
        Ok(json(200, &view))
    })
}

pub fn status(id: &str, query: &str) -> Result<Response, ApiError> {
    let quiet_days = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("quiet_days="))
        .and_then(|days| days.parse().ok())
        .unwrap_or(DEFAULT_QUIET_DAYS);
    with_state(|state| {
        existing(state, id)?;
        let runs = state.runs(id)?;
        let mut not_imported = Vec::new();
        for run in &runs {
            not_imported.extend(state.not_imported(run)?);
        }
        let status = runs::status(
            id,
            &runs,
            not_imported,
            &state.health(id)?,
            state.timer_failure()?,
            Utc::now(),
            quiet_days,
        );
        Ok(json(200, &serde_json::to_value(status).unwrap_or_default()))
    })
}
