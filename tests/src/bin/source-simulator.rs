//! The carrier archive simulator as a standalone server, for trying the archiver locally:
//! `cargo run -p archiver-tests --bin source-simulator [ADDRESS] [DAY]` (default 127.0.0.1:8700,
//! yesterday in UTC). It serves a few sample texts of `DAY` (`YYYY-MM-DD`) under
//! `http://ADDRESS/api` to the account `demo` / `demo-password`, and prints the window that
//! holds them and what archiving it yields, one `name=value` per line.

use archiver_tests::SourceSimulator;
use archiver_tests::samples::SampleDay;
use chrono::{NaiveDate, SecondsFormat, Utc};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8700".into());
    let day = match args.next() {
        Some(day) => match NaiveDate::parse_from_str(&day, "%Y-%m-%d") {
            Ok(day) => SampleDay::on(day),
            Err(e) => {
                eprintln!("source-simulator: DAY {day:?} is not YYYY-MM-DD: {e}");
                std::process::exit(2);
            }
        },
        None => SampleDay::before(Utc::now()),
    };
    let source = SourceSimulator::start_on(&address, "demo", "demo-password").await;
    for message in &day.messages {
        source.add_message(message.clone());
    }
    let instant = |at: chrono::DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::Secs, true);
    println!("since={}", instant(day.since));
    println!("until={}", instant(day.until));
    println!("texts={}", day.messages.len());
    println!("copies={}", day.copies);
    println!("reader={}", day.reader);
    println!("reader_texts={}", day.reader_texts);
    println!("base_url={}", source.base_url());
    eprintln!(
        "archive simulator at {} (account demo / demo-password); Ctrl-C stops it",
        source.base_url()
    );
    tokio::signal::ctrl_c().await.expect("waiting for Ctrl-C");
}
