//! The pipeline's benchmark: a generated day through the real components on the test host,
//! against a real mail server, beside that server's own ingest rate. Run it with
//! `scripts/bench` (which starts a mail server with the day's users) or, with one running:
//!
//! ```text
//! cargo run --profile bench-host -p archiver-tests --bin bench -- [--sizes 2000,20000] [--users 500]
//!     [--seed 7] [--workers 4] [--mail http://127.0.0.1:18180] [--domain bench.example]
//!     [--destination jmap|graph] [--pipeline-only yes] [--store sqlite|redis] [--disk-load yes]
//! ```
//!
//! For each size it prints where the time went (fetch and staging, conversion in wasm and
//! natively, delivery), the ceiling, the ratio of the two, and each component's peak memory.
//! With `BENCH_FRESH_STORE=1` (set by `scripts/bench`) the mail store is made anew before the
//! pipeline and before the ceiling, each then given the same day before, so both measure a
//! server in the same state. With `--destination graph` the day goes to the Graph contract
//! server instead, and the figures are copies per second, Graph requests per copy (SMS and MMS
//! apart) and the share of the import spent waiting out throttling.
//! With `--pipeline-only yes` only the pipeline is measured (no conversion alone, no ceiling,
//! which hold every email of the day in memory at once): how the run grows with the day.
//! Each size also measures the fetch's ceiling (see `fetch_ceiling`): the same day downloaded
//! and staged natively into SQLite, one transaction per batch; `fetch / ceiling` compares.
//! With `--store redis` the app's store is a `redis-server` (Debian's) the benchmark starts, put
//! there by a runtime config file as `spin up --runtime-config-file` does. With
//! `--disk-load yes` each size is run a second time (pipeline and fetch ceiling) beside a
//! writer that writes and syncs a file on the same disk as the store, and the slowdown is
//! printed: a real host shares its disk.

mod ceiling;
mod day;
mod fetch_ceiling;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use archiver_core::email::{EmailOptions, build_email};
use archiver_core::mapping::parse_mapping_csv;
use archiver_core::phone::Region;
use archiver_core::resolve::MappingRules;
use archiver_core::source::parse_message;
use archiver_tests::{App, SourceSimulator};
use bytes::Bytes;
use serde_json::{Value, json};

const TOKEN: &str = "bench-admin-token";
/// 2026-11-26T02:00:00Z: the timer; the day is the 24 hours before it.
const TIMER: u64 = 1_795_658_400;
const SERVICE_PASSWORD: &str = "archiverpw";
/// Messages per user on the day before the measured one.
const WARM_UP_PER_USER: usize = 4;

#[derive(Clone)]
struct Options {
    sizes: Vec<usize>,
    users: usize,
    seed: u64,
    workers: usize,
    mail: String,
    domain: String,
    graph: bool,
    /// Only the pipeline: no conversion alone and no ceiling (which hold every email of the
    /// day in memory at once).
    pipeline_only: bool,
    /// The app's store on a Redis server rather than a SQLite file.
    redis: bool,
    disk_load: bool,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        sizes: vec![2_000, 20_000],
        users: 500,
        seed: 7,
        workers: 4,
        mail: "http://127.0.0.1:18180".into(),
        domain: "bench.example".into(),
        graph: false,
        pipeline_only: false,
        redis: false,
        disk_load: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--sizes" => {
                options.sizes = value
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--sizes: numbers separated by commas")?
            }
            "--users" => options.users = value.parse().context("--users")?,
            "--seed" => options.seed = value.parse().context("--seed")?,
            "--workers" => options.workers = value.parse().context("--workers")?,
            "--mail" => options.mail = value,
            "--domain" => options.domain = value,
            "--destination" => {
                options.graph = match value.as_str() {
                    "graph" => true,
                    "jmap" => false,
                    other => bail!("--destination: jmap or graph, not {other}"),
                }
            }
            "--pipeline-only" => {
                options.pipeline_only = match value.as_str() {
                    "yes" => true,
                    "no" => false,
                    other => bail!("--pipeline-only: yes or no, not {other}"),
                }
            }
            "--store" => {
                options.redis = match value.as_str() {
                    "redis" => true,
                    "sqlite" => false,
                    other => bail!("--store: sqlite or redis, not {other}"),
                }
            }
            "--disk-load" => {
                options.disk_load = match value.as_str() {
                    "yes" => true,
                    "no" => false,
                    other => bail!("--disk-load: yes or no, not {other}"),
                }
            }
            other => bail!("unknown option {other}"),
        }
    }
    Ok(options)
}

/// One size's figures.
struct Figures {
    messages: usize,
    copies: u64,
    attachment_mb: f64,
    fetch: Duration,
    /// From the first import step to the run's end: it begins while the fetch goes on.
    import: Duration,
    /// How long the two went on together.
    overlap: Duration,
    total: Duration,
    native_conversion: Duration,
    wasm_conversion: Duration,
    email_mb: f64,
    /// The mail server's own ingest rate (JMAP only).
    ceiling: Option<ceiling::Ceiling>,
    fetch_ceiling: fetch_ceiling::FetchCeiling,
    graph: Option<GraphFigures>,
    peaks: Vec<(String, usize)>,
    steps: u64,
    /// How long each import step took, in order.
    step_seconds: Vec<f64>,
}

/// What the Graph destination cost.
struct GraphFigures {
    sms_copies: u64,
    mms_copies: u64,
    /// `$batch` requests, and the requests inside them (creates of copies without attachments).
    batches: usize,
    batched: usize,
    /// Requests made for copies with attachments: creates, attachments, upload sessions and
    /// their ranges, lookups, deletes.
    mms_requests: usize,
    /// Logins and folder lookups.
    overhead: usize,
    throttled: usize,
    waited: f64,
}

/// Makes the mail store anew (with `BENCH_FRESH_STORE=1`): stops the mail server `scripts/bench`
/// started and starts it again with an empty store and the same users.
fn fresh_mail_store() -> anyhow::Result<bool> {
    if std::env::var("BENCH_FRESH_STORE").as_deref() != Ok("1") {
        return Ok(false);
    }
    eprintln!("[bench] a fresh mail store");
    let stop = std::process::Command::new("scripts/mail-server/stop").status()?;
    let start = std::process::Command::new("scripts/mail-server/start")
        .env("MAIL_RESET", "1")
        .stdout(std::process::Stdio::null())
        .status()?;
    if !stop.success() || !start.success() {
        bail!("the mail server could not be made anew");
    }
    Ok(true)
}

const GRAPH_TENANT: &str = "bench.onmicrosoft.com";
const GRAPH_CLIENT: &str = "bench-client";
const GRAPH_SECRET: &str = "bench-secret";

async fn admin(
    app: &App,
    method: &str,
    path: &str,
    content_type: &str,
    body: String,
) -> anyhow::Result<Value> {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", content_type)
        .body(Bytes::from(body))?;
    let response = app.send(request).await?;
    if response.status >= 300 {
        bail!("{method} {path}: {} {}", response.status, response.text());
    }
    Ok(response.json().unwrap_or(Value::Null))
}

async fn run_size(options: &Options, messages: usize) -> anyhow::Result<Figures> {
    let seed = options.seed + messages as u64;
    let since = TIMER as i64 - 86_400;
    eprintln!(
        "[bench] generating {messages} messages over {} users",
        options.users
    );
    let day = day::generate(messages, options.users, seed, &options.domain, since);
    // The day before, archived first: the measured run is a day like any after the first,
    // with the users' folders made and their mailboxes used to uploads (so is the ceiling's).
    let day_before = day::generate(
        WARM_UP_PER_USER * options.users,
        options.users,
        seed ^ 0x5eed,
        &options.domain,
        since - 86_400,
    );

    let source = SourceSimulator::start("bench", "bench-password").await;
    for message in day.messages.iter().chain(&day_before.messages) {
        source.add_message(message.clone());
    }
    for attachment in day.attachments.iter().chain(&day_before.attachments) {
        source.add_attachment(
            &attachment.id,
            attachment.content_type,
            attachment.bytes.clone(),
        );
    }
    let session_url = format!("{}/jmap/", options.mail);
    let service_user = format!("archiver@{}", options.domain);
    let builder = App::builder("spin.toml")
        .listening("app_origin")?
        .variable("admin_token", TOKEN)
        .variable("timer_token", "bench-timer-token")
        .variable("staging_key", "5a".repeat(32))
        .variable("source_origin", source.origin());
    // Kept until the size is measured: dropping it stops the server.
    let redis = match options.redis {
        true => Some(std::sync::Arc::new(archiver_tests::RedisServer::start()?)),
        false => None,
    };
    let builder = match &redis {
        Some(server) => builder.redis(server.clone())?,
        None => builder,
    };
    let (app, graph) = if options.graph {
        let users: Vec<String> = (0..options.users)
            .map(|n| day::user_email(n, &options.domain))
            .collect();
        let users: Vec<&str> = users.iter().map(String::as_str).collect();
        let graph =
            archiver_tests::GraphServer::start(GRAPH_TENANT, GRAPH_CLIENT, GRAPH_SECRET, &users)
                .await;
        // The day's largest MMS are above the default 35 MB; the tenant allows 150 MB.
        graph.set_message_limit(150 << 20);
        let app = builder
            .variable("destination", "graph")
            .variable("graph_origin", graph.origin())
            .variable("graph_login_origin", graph.origin())
            .variable("graph_upload_origin", graph.upload_origin())
            .variable("graph_tenant", GRAPH_TENANT)
            .variable("graph_client_id", GRAPH_CLIENT)
            .variable("graph_client_secret", GRAPH_SECRET)
            .build()?;
        (app, Some(graph))
    } else {
        fresh_mail_store()?;
        let app = builder
            .variable("jmap_origin", &options.mail)
            .variable("jmap_session_url", &session_url)
            .variable("jmap_username", &service_user)
            .variable("jmap_password", SERVICE_PASSWORD)
            .build()?;
        (app, None)
    };
    app.set_deadline(Duration::from_secs(6 * 3600));
    let connector = format!("bench-{messages}");
    let body = json!({ "display_name": "AT&T", "network": "AT&T", "source_url": source.base_url(),
        "username": "bench", "password": "bench-password", "automatic_mapping": true });
    admin(
        &app,
        "PUT",
        &format!("/api/connectors/{connector}"),
        "application/json",
        body.to_string(),
    )
    .await?;
    admin(
        &app,
        "PUT",
        &format!("/api/connectors/{connector}/mapping"),
        "text/csv",
        day.mapping_csv.clone(),
    )
    .await?;

    eprintln!(
        "[bench] the day before: {} messages",
        day_before.messages.len()
    );
    app.fire_cron("archive-timer", TIMER - 86_400)
        .await?
        .map_err(|e| anyhow::anyhow!("the day before failed: {e}\n{}", app.logs()))?;
    app.settle().await;
    eprintln!("[bench] pipeline: timer run of {messages} messages");
    let requests_before = graph.as_ref().map(|g| g.requests().len()).unwrap_or(0);
    let throttled_before = graph.as_ref().map(|g| g.throttled()).unwrap_or(0);
    let logs_before = app.logs().len();
    let started = Instant::now();
    app.fire_cron("archive-timer", TIMER)
        .await?
        .map_err(|e| anyhow::anyhow!("the run failed: {e}\n{}", app.logs()))?;
    // The timer's runs go on after the app accepted the event.
    app.settle().await;
    let total = started.elapsed();
    let status = admin(
        &app,
        "GET",
        &format!("/api/connectors/{connector}/runs"),
        "application/json",
        String::new(),
    )
    .await?;
    let run = &status["runs"][0];
    let at = |field: &Value| {
        field
            .as_str()
            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
    };
    let (Some(begun), Some(fetched), Some(import_begun), Some(finished)) = (
        at(&run["started_at"]),
        at(&run["progress"]["fetched_at"]),
        at(&run["progress"]["import_started_at"]),
        at(&run["finished_at"]),
    ) else {
        bail!("the run has no phase times: {run}");
    };
    if run["state"] != "succeeded" || run["invariant_holds"] != true {
        bail!("the run did not succeed: {run}");
    }
    // The import steps' durations, from the import's log line per step.
    let marker = format!(
        "run {}: import step ",
        run["id"].as_str().unwrap_or_default()
    );
    let step_seconds: Vec<f64> = app
        .logs()
        .lines()
        .filter_map(|line| line.split_once(marker.as_str()))
        .filter_map(|(_, rest)| rest.split(" items in ").nth(1)?.strip_suffix(" s"))
        .filter_map(|seconds| seconds.trim().parse().ok())
        .collect();
    let figures = &run["figures"];
    let copies = figures["imported"].as_u64().unwrap_or(0)
        + figures["skipped_duplicate"].as_u64().unwrap_or(0);
    let peaks: Vec<(String, usize)> = ["archive-fetch", "archive-import", "archive-setup"]
        .iter()
        .map(|c| (c.to_string(), app.peak_memory(c)))
        .collect();
    eprintln!("[bench] fetch ceiling");
    let window = (
        chrono::DateTime::from_timestamp(since, 0).context("the day's start")?,
        chrono::DateTime::from_timestamp(TIMER as i64, 0).context("the day's end")?,
    );
    let fetch_ceiling = fetch_ceiling::measure(
        &source.origin(),
        &source.base_url(),
        ("bench", "bench-password"),
        window,
        &store_folder().join("bench-fetch-ceiling.db"),
    )
    .await?;
    if fetch_ceiling.messages != messages {
        bail!(
            "the fetch ceiling staged {} messages of {messages}",
            fetch_ceiling.messages
        );
    }
    let pipeline = Figures {
        messages,
        copies,
        attachment_mb: day.attachment_bytes as f64 / 1e6,
        fetch: (fetched - begun).to_std().unwrap_or_default(),
        import: (finished - import_begun).to_std().unwrap_or_default(),
        overlap: (fetched - import_begun).to_std().unwrap_or_default(),
        total,
        native_conversion: Duration::ZERO,
        wasm_conversion: Duration::ZERO,
        email_mb: 0.0,
        ceiling: None,
        fetch_ceiling,
        graph: None,
        peaks,
        steps: run["progress"]["steps"].as_u64().unwrap_or(0),
        step_seconds,
    };
    if options.pipeline_only {
        return Ok(pipeline);
    }

    // Conversion alone, natively: the same messages and bytes, every email built whole.
    eprintln!("[bench] conversion, native");
    let table = parse_mapping_csv(day.mapping_csv.as_bytes(), Region::US)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let rules = MappingRules {
        table: &table,
        automatic_mapping: true,
    };
    let email_options = EmailOptions {
        connector_id: &connector,
        network: "AT&T",
        address_domain: "sms.archive.invalid",
    };
    let bytes_of: BTreeMap<&str, &[u8]> = day
        .attachments
        .iter()
        .map(|a| (a.id.as_str(), a.bytes.as_slice()))
        .collect();
    let parsed: Vec<_> = day
        .messages
        .iter()
        .map(|m| parse_message(&m.to_string(), Region::US))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut native_conversion = Duration::ZERO;
    let mut per_user: BTreeMap<String, Vec<Bytes>> = BTreeMap::new();
    let mut email_bytes = 0u64;
    let (mut sms_copies, mut mms_copies) = (0u64, 0u64);
    for message in &parsed {
        let attachments: Vec<&[u8]> = message
            .attachments
            .iter()
            .map(|a| bytes_of[a.id.as_str()])
            .collect();
        let building = Instant::now();
        let email = build_email(message, &rules, &attachments, &email_options)?;
        native_conversion += building.elapsed();
        email_bytes += email.len() as u64;
        let delivery = rules.delivery(message);
        match message.attachments.is_empty() {
            true => sms_copies += delivery.recipients.len() as u64,
            false => mms_copies += delivery.recipients.len() as u64,
        }
        // The ceiling's copies: the same emails, one header apart so the server stores them anew.
        let mut copy = b"X-Bench-Ceiling: 1\r\n".to_vec();
        copy.extend_from_slice(&email);
        let copy = Bytes::from(copy);
        for recipient in &delivery.recipients {
            per_user
                .entry(recipient.email.clone())
                .or_default()
                .push(copy.clone());
        }
    }
    eprintln!("[bench] conversion, wasm");
    let wasm_conversion = convert_in_wasm(&day)?.await?;

    let graph_figures = graph.as_ref().map(|graph| {
        let requests = graph.requests();
        let measured = &requests[requests_before.min(requests.len())..];
        let count =
            |f: &dyn Fn(&str, &str) -> bool| measured.iter().filter(|(m, p)| f(m, p)).count();
        let overhead = count(&|_, p| {
            p.contains("/oauth2/") || (p.contains("/mailFolders") && !p.contains("/messages"))
        });
        let batches = count(&|m, p| m == "POST" && p.ends_with("/$batch"));
        let batched = count(&|m, _| m.starts_with("BATCH "));
        let waited = app.logs()[logs_before.min(app.logs().len())..]
            .lines()
            .filter_map(|line| {
                line.split_once("graph: ")?
                    .1
                    .split(" s waited")
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .sum();
        GraphFigures {
            sms_copies,
            mms_copies,
            batches,
            batched,
            mms_requests: measured.len() - overhead - batches - batched,
            overhead,
            throttled: graph.throttled() - throttled_before,
            waited,
        }
    });
    let ceiling = match graph {
        Some(_) => None,
        None => Some(
            measure_ceiling(
                options,
                &connector,
                &day_before,
                &rules,
                &email_options,
                per_user,
            )
            .await?,
        ),
    };
    Ok(Figures {
        native_conversion,
        wasm_conversion,
        email_mb: email_bytes as f64 / 1e6,
        ceiling,
        graph: graph_figures,
        ..pipeline
    })
}

/// The mail server's own ingest rate for the day's copies. On a fresh store the day before is
/// imported first, unmeasured, so the server is in the state the pipeline met.
async fn measure_ceiling(
    options: &Options,
    connector: &str,
    day_before: &day::Day,
    rules: &MappingRules<'_>,
    email_options: &EmailOptions<'_>,
    per_user: BTreeMap<String, Vec<Bytes>>,
) -> anyhow::Result<ceiling::Ceiling> {
    let session_url = format!("{}/jmap/", options.mail);
    let service_user = format!("archiver@{}", options.domain);
    let authorization = archiver_core::source_client::basic_auth(&service_user, SERVICE_PASSWORD);
    let folder = format!("Ceiling {connector}");
    if fresh_mail_store()? {
        eprintln!("[bench] ceiling: the day before");
        let bytes_of: BTreeMap<&str, &[u8]> = day_before
            .attachments
            .iter()
            .map(|a| (a.id.as_str(), a.bytes.as_slice()))
            .collect();
        let mut before: BTreeMap<String, Vec<Bytes>> = BTreeMap::new();
        for record in &day_before.messages {
            let message = parse_message(&record.to_string(), Region::US)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let attachments: Vec<&[u8]> = message
                .attachments
                .iter()
                .map(|a| bytes_of[a.id.as_str()])
                .collect();
            let email = Bytes::from(build_email(&message, rules, &attachments, email_options)?);
            for recipient in &rules.delivery(&message).recipients {
                before
                    .entry(recipient.email.clone())
                    .or_default()
                    .push(email.clone());
            }
        }
        ceiling::measure(
            &options.mail,
            &session_url,
            &authorization,
            &folder,
            before,
            options.workers,
        )
        .await?;
    }
    eprintln!("[bench] ceiling: {} workers", options.workers);
    ceiling::measure(
        &options.mail,
        &session_url,
        &authorization,
        &folder,
        per_user,
        options.workers,
    )
    .await
}

/// The day's emails built inside wasm (the bench guest on the test host), in batches; the
/// guest times the building alone.
fn convert_in_wasm(
    day: &day::Day,
) -> anyhow::Result<impl Future<Output = anyhow::Result<Duration>> + '_> {
    let guest = App::builder("tests/bench-guest/spin.toml").build()?;
    guest.set_deadline(Duration::from_secs(3600));
    let attachments: BTreeMap<&str, &day::Attachment> =
        day.attachments.iter().map(|a| (a.id.as_str(), a)).collect();
    Ok(async move {
        let mut total = Duration::ZERO;
        let mut start = 0;
        while start < day.messages.len() {
            // Batches of at most 200 messages or 32 MB of attachments.
            let (mut end, mut blob, mut spans) = (start, Vec::new(), serde_json::Map::new());
            while end < day.messages.len() && end - start < 200 && blob.len() < 32 << 20 {
                for meta in day.messages[end]["attachments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let id = meta["id"].as_str().unwrap_or_default();
                    let bytes = &attachments[id].bytes;
                    spans.insert(id.to_string(), json!([blob.len(), bytes.len()]));
                    blob.extend_from_slice(bytes);
                }
                end += 1;
            }
            let spec = json!({ "messages": &day.messages[start..end],
                "mapping_csv": day.mapping_csv, "attachments": spans })
            .to_string();
            let mut body = (spec.len() as u64).to_le_bytes().to_vec();
            body.extend_from_slice(spec.as_bytes());
            body.extend_from_slice(&blob);
            let request = http::Request::post("/convert").body(Bytes::from(body))?;
            let answer = guest.send(request).await?;
            if answer.status != 200 {
                bail!(
                    "the bench guest answered {}: {}",
                    answer.status,
                    answer.text()
                );
            }
            let figures = answer.json()?;
            total += Duration::from_nanos(figures["nanos"].as_u64().unwrap_or(0));
            start = end;
        }
        Ok(total)
    })
}

/// Where the test host keeps its SQLite stores (the app's, and the fetch ceiling's).
fn store_folder() -> std::path::PathBuf {
    std::path::PathBuf::from("target/test-host-kv")
}

/// A writer beside the benchmark that writes and syncs a file on the store's disk until
/// dropped, as another service of the same host would.
struct DiskLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writer: Option<std::thread::JoinHandle<anyhow::Result<u64>>>,
}

impl DiskLoad {
    fn start(folder: &std::path::Path) -> anyhow::Result<DiskLoad> {
        use std::io::{Seek, Write};
        std::fs::create_dir_all(folder)?;
        let path = folder.join("bench-disk-load.bin");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut file = std::fs::File::create(&path)?;
            let block = vec![0x5au8; 1 << 20];
            let mut written = 0u64;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                file.write_all(&block)?;
                file.sync_data()?;
                written += block.len() as u64;
                // Kept to 256 MiB: the load is the syncing, not the space.
                if written.is_multiple_of(256 << 20) {
                    file.rewind()?;
                }
            }
            drop(file);
            std::fs::remove_file(&path)?;
            Ok(written)
        });
        Ok(DiskLoad {
            stop,
            writer: Some(writer),
        })
    }

    /// Stops the writer; answers how many bytes it wrote and synced.
    fn stop(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(written)) => written,
            _ => bail!("the disk writer stopped"),
        }
    }
}

impl Drop for DiskLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn rate(count: f64, time: Duration) -> f64 {
    count / time.as_secs_f64().max(1e-9)
}

/// One size's figures, printed as soon as they are measured.
fn print_size(f: &Figures) {
    println!();
    {
        let delivery = rate(f.copies as f64, f.import);
        println!(
            "N = {} messages ({} copies delivered, {:.0} MB of attachments, {} steps)",
            f.messages, f.copies, f.attachment_mb, f.steps
        );
        println!("| stage | time | rate |");
        println!("| --- | ---: | ---: |");
        println!(
            "| fetch + staging | {:.1} s | {:.0} messages/s, {:.1} MB/s |",
            f.fetch.as_secs_f64(),
            rate(f.messages as f64, f.fetch),
            rate(f.attachment_mb, f.fetch)
        );
        if !f.native_conversion.is_zero() {
            println!(
                "| conversion, native | {:.1} s | {:.0} messages/s, {:.1} MB/s |",
                f.native_conversion.as_secs_f64(),
                rate(f.messages as f64, f.native_conversion),
                rate(f.email_mb, f.native_conversion)
            );
            println!(
                "| conversion, wasm | {:.1} s | {:.0} messages/s, {:.1} MB/s |",
                f.wasm_conversion.as_secs_f64(),
                rate(f.messages as f64, f.wasm_conversion),
                rate(f.email_mb, f.wasm_conversion)
            );
        }
        println!(
            "| import (conversion in wasm + delivery) | {:.1} s | {:.0} copies/s |",
            f.import.as_secs_f64(),
            delivery
        );
        println!(
            "| fetch ceiling: native download + sealed staging in SQLite | {:.1} s | {:.0} messages/s, {:.1} MB/s |",
            f.fetch_ceiling.elapsed.as_secs_f64(),
            rate(f.fetch_ceiling.messages as f64, f.fetch_ceiling.elapsed),
            rate(
                f.fetch_ceiling.attachment_bytes as f64 / 1e6,
                f.fetch_ceiling.elapsed
            )
        );
        if let Some(c) = &f.ceiling {
            println!(
                "| ceiling: direct upload + Email/import | {:.1} s | {:.0} copies/s, {:.1} MB/s |",
                c.elapsed.as_secs_f64(),
                rate(c.copies as f64, c.elapsed),
                rate(c.bytes as f64 / 1e6, c.elapsed)
            );
        }
        println!(
            "| whole run (timer to last import) | {:.1} s | {:.0} messages/s |",
            f.total.as_secs_f64(),
            rate(f.messages as f64, f.total)
        );
        println!();
        println!(
            "the import began {:.1} s into the run and went on with the fetch for {:.1} s",
            (f.fetch.saturating_sub(f.overlap)).as_secs_f64(),
            f.overlap.as_secs_f64()
        );
        println!(
            "fetch / fetch ceiling = {:.2}",
            f.fetch_ceiling.elapsed.as_secs_f64() / f.fetch.as_secs_f64().max(1e-9)
        );
        if let Some(c) = &f.ceiling {
            let ceiling = rate(c.copies as f64, c.elapsed);
            println!("delivery / ceiling = {:.2}", delivery / ceiling.max(1e-9));
        }
        let slower = f.fetch.max(f.import);
        println!(
            "whole run / slower side = {:.2}",
            f.total.as_secs_f64() / slower.as_secs_f64().max(1e-9)
        );
        if let Some(g) = &f.graph {
            let per = |n: usize, copies: u64| n as f64 / (copies as f64).max(1.0);
            println!(
                "Graph: {:.0} copies/s; copies without attachments: {} in {} $batch requests, \
                 {:.2} requests inside a batch per copy (1.00 is one create each); copies with \
                 attachments: {}, {:.2} requests each; {} logins and folder requests; {} requests \
                 throttled (429), {:.1} s waited, {:.1}% of the import",
                delivery,
                g.sms_copies,
                g.batches,
                per(g.batched, g.sms_copies),
                g.mms_copies,
                per(g.mms_requests, g.mms_copies),
                g.overhead,
                g.throttled,
                g.waited,
                100.0 * g.waited / f.import.as_secs_f64().max(1e-9)
            );
        }
        let quarter = f.step_seconds.len() / 4;
        if quarter > 0 {
            let mean = |steps: &[f64]| steps.iter().sum::<f64>() / steps.len() as f64;
            println!(
                "import steps: {}, the first quarter {:.2} s each on average, the last quarter \
                 {:.2} s (a step that grew with the day would show here)",
                f.step_seconds.len(),
                mean(&f.step_seconds[..quarter]),
                mean(&f.step_seconds[f.step_seconds.len() - quarter..])
            );
        }
        for (component, peak) in &f.peaks {
            println!(
                "peak linear memory of one {component} invocation: {:.1} MiB",
                *peak as f64 / (1 << 20) as f64
            );
        }
        println!();
    }
}

/// The sizes side by side.
fn print(all: &[Figures]) {
    if let [small, .., large] = all {
        let growth = large.total.as_secs_f64() / small.total.as_secs_f64().max(1e-9);
        let size = large.messages as f64 / small.messages as f64;
        println!("N x{size:.0}: time x{growth:.1} (linear would be x{size:.0})");
    }
    print_per_message(all);
}

/// Every phase's time per message at each size, so growth shows at a glance: a linear
/// pipeline keeps each column flat.
fn print_per_message(all: &[Figures]) {
    let per =
        |time: Duration, messages: usize| 1000.0 * time.as_secs_f64() / (messages as f64).max(1.0);
    println!();
    println!(
        "| N | fetch + staging, ms per message | import, ms per message | whole run, ms per message |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    for f in all {
        println!(
            "| {} | {:.2} | {:.2} | {:.2} |",
            f.messages,
            per(f.fetch, f.messages),
            per(f.import, f.messages),
            per(f.total, f.messages)
        );
    }
    // Each size against every smaller one: 1.00 is linear.
    for (n, large) in all.iter().enumerate() {
        for small in &all[..n] {
            let ratio = |phase: fn(&Figures) -> Duration| {
                per(phase(large), large.messages) / per(phase(small), small.messages).max(1e-9)
            };
            println!(
                "per message at N = {} / at N = {}: fetch {:.2}, import {:.2}, whole run {:.2}",
                large.messages,
                small.messages,
                ratio(|f| f.fetch),
                ratio(|f| f.import),
                ratio(|f| f.total)
            );
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let mut all = Vec::new();
    for &size in &options.sizes {
        let figures = run_size(&options, size).await?;
        print_size(&figures);
        if options.disk_load {
            eprintln!("[bench] again, beside a writer syncing to the same disk");
            let quieter = Options {
                pipeline_only: true,
                ..options.clone()
            };
            let load = DiskLoad::start(&store_folder())?;
            let loaded = run_size(&quieter, size).await;
            let written = load.stop()?;
            let loaded = loaded?;
            println!(
                "N = {size} beside a disk writer ({} MB written and synced meanwhile):",
                written / 1_000_000
            );
            print_size(&loaded);
            let slowdown = |quiet: Duration, busy: Duration| {
                busy.as_secs_f64() / quiet.as_secs_f64().max(1e-9)
            };
            println!(
                "disk load slowdown: fetch + staging x{:.2}, fetch ceiling x{:.2}, whole run x{:.2}",
                slowdown(figures.fetch, loaded.fetch),
                slowdown(figures.fetch_ceiling.elapsed, loaded.fetch_ceiling.elapsed),
                slowdown(figures.total, loaded.total)
            );
        }
        all.push(figures);
    }
    print(&all);
    Ok(())
}
