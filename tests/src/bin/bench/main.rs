//! The pipeline's benchmark: a generated day through the real components on the test host,
//! against a real mail server, beside that server's own ingest rate. Run it with
//! `scripts/bench` (which starts a mail server with the day's users) or, with one running:
//!
//! ```text
//! cargo run --profile bench-host -p archiver-tests --bin bench -- [--sizes 2000,20000] [--users 500]
//!     [--seed 7] [--workers 4] [--mail http://127.0.0.1:18180] [--domain bench.example]
//! ```
//!
//! For each size it prints where the time went (fetch and staging, conversion in wasm and
//! natively, delivery), the ceiling, the ratio of the two, and each component's peak memory.

mod ceiling;
mod day;

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

struct Options {
    sizes: Vec<usize>,
    users: usize,
    seed: u64,
    workers: usize,
    mail: String,
    domain: String,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        sizes: vec![2_000, 20_000],
        users: 500,
        seed: 7,
        workers: 4,
        mail: "http://127.0.0.1:18180".into(),
        domain: "bench.example".into(),
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
    import: Duration,
    total: Duration,
    native_conversion: Duration,
    wasm_conversion: Duration,
    email_mb: f64,
    ceiling: ceiling::Ceiling,
    peaks: Vec<(String, usize)>,
    steps: u64,
    /// How long each import step took, in order.
    step_seconds: Vec<f64>,
}

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
    let app = App::builder("spin.toml")
        .listening("app_origin")?
        .variable("admin_token", TOKEN)
        .variable("timer_token", "bench-timer-token")
        .variable("staging_key", "5a".repeat(32))
        .variable("source_origin", source.origin())
        .variable("jmap_origin", &options.mail)
        .variable("jmap_session_url", &session_url)
        .variable("jmap_username", &service_user)
        .variable("jmap_password", SERVICE_PASSWORD)
        .build()?;
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
    let (Some(begun), Some(fetched), Some(finished)) = (
        at(&run["started_at"]),
        at(&run["progress"]["fetched_at"]),
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

    eprintln!("[bench] ceiling: {} workers", options.workers);
    let authorization = archiver_core::source_client::basic_auth(&service_user, SERVICE_PASSWORD);
    let ceiling = ceiling::measure(
        &options.mail,
        &session_url,
        &authorization,
        &format!("Ceiling {connector}"),
        per_user,
        options.workers,
    )
    .await?;
    let peaks = ["archive-fetch", "archive-import", "archive-setup"]
        .iter()
        .map(|c| (c.to_string(), app.peak_memory(c)))
        .collect();
    Ok(Figures {
        messages,
        copies,
        attachment_mb: day.attachment_bytes as f64 / 1e6,
        fetch: (fetched - begun).to_std().unwrap_or_default(),
        import: (finished - fetched).to_std().unwrap_or_default(),
        total,
        native_conversion,
        wasm_conversion,
        email_mb: email_bytes as f64 / 1e6,
        ceiling,
        peaks,
        steps: run["progress"]["steps"].as_u64().unwrap_or(0),
        step_seconds,
    })
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

fn rate(count: f64, time: Duration) -> f64 {
    count / time.as_secs_f64().max(1e-9)
}

fn print(all: &[Figures]) {
    println!();
    for f in all {
        let delivery = rate(f.copies as f64, f.import);
        let ceiling = rate(f.ceiling.copies as f64, f.ceiling.elapsed);
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
        println!(
            "| import (conversion in wasm + delivery) | {:.1} s | {:.0} copies/s |",
            f.import.as_secs_f64(),
            delivery
        );
        println!(
            "| ceiling: direct upload + Email/import | {:.1} s | {:.0} copies/s, {:.1} MB/s |",
            f.ceiling.elapsed.as_secs_f64(),
            ceiling,
            rate(f.ceiling.bytes as f64 / 1e6, f.ceiling.elapsed)
        );
        println!(
            "| whole run (timer to last import) | {:.1} s | {:.0} messages/s |",
            f.total.as_secs_f64(),
            rate(f.messages as f64, f.total)
        );
        println!();
        println!("delivery / ceiling = {:.2}", delivery / ceiling.max(1e-9));
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
    if let [small, .., large] = all {
        let growth = large.total.as_secs_f64() / small.total.as_secs_f64().max(1e-9);
        let size = large.messages as f64 / small.messages as f64;
        println!("N x{size:.0}: time x{growth:.1} (linear would be x{size:.0})");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let mut all = Vec::new();
    for &size in &options.sizes {
        all.push(run_size(&options, size).await?);
    }
    print(&all);
    Ok(())
}
