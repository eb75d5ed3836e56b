//! Runs (one fetch-and-import of a window) and the progress figures the admin watches.
//!
//! The figures follow the seed's admin log, with one invariant:
//! `available_for_import = imported + partially_imported + skipped_duplicate + failed`, where
//! "available for import" counts items after fan-out to every mapped participant. Items that
//! reach no one (unmapped) or cannot be read (invalid) are counted apart and listed with their
//! reason, never dropped.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunTrigger {
    Timer,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl RunState {
    /// Whether the run has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed)
    }
}

/// The counts of one run, or of several added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// Messages the archive returned for the window.
    pub fetched: u64,
    /// Messages rejected as unreadable (each listed with its reason).
    pub invalid: u64,
    /// Messages that map to no user (each listed with its reason).
    pub unmapped: u64,
    /// Copies to deliver: one per message and mapped user.
    pub available_for_import: u64,
    pub imported: u64,
    pub partially_imported: u64,
    pub skipped_duplicate: u64,
    pub failed: u64,
}

impl Figures {
    pub fn add(&mut self, other: &Figures) {
        self.fetched += other.fetched;
        self.invalid += other.invalid;
        self.unmapped += other.unmapped;
        self.available_for_import += other.available_for_import;
        self.imported += other.imported;
        self.partially_imported += other.partially_imported;
        self.skipped_duplicate += other.skipped_duplicate;
        self.failed += other.failed;
    }

    /// What `self` counts beyond `earlier` (each count less the earlier one, never below 0).
    pub fn since(&self, earlier: &Figures) -> Figures {
        Figures {
            fetched: self.fetched.saturating_sub(earlier.fetched),
            invalid: self.invalid.saturating_sub(earlier.invalid),
            unmapped: self.unmapped.saturating_sub(earlier.unmapped),
            available_for_import: self
                .available_for_import
                .saturating_sub(earlier.available_for_import),
            imported: self.imported.saturating_sub(earlier.imported),
            partially_imported: self
                .partially_imported
                .saturating_sub(earlier.partially_imported),
            skipped_duplicate: self
                .skipped_duplicate
                .saturating_sub(earlier.skipped_duplicate),
            failed: self.failed.saturating_sub(earlier.failed),
        }
    }

    /// Every copy available for import has exactly one outcome.
    pub fn invariant_holds(&self) -> bool {
        self.available_for_import
            == self.imported + self.partially_imported + self.skipped_duplicate + self.failed
    }
}

/// One run of a connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub connector: String,
    pub trigger: RunTrigger,
    /// The window of `archived_at` times: `[since, until)`. `None` for a timer run until it
    /// computes its window from the watermark.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub state: RunState,
    pub requested_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub figures: Figures,
    /// Why a failed run failed, in words an admin can act on.
    pub error: Option<String>,
    /// Where the run's steps have got to.
    #[serde(default)]
    pub progress: Progress,
    /// What this run added to the figures of each day of texts (the day a text was archived
    /// by the source): a text counts in its day once, in the run that first fetched it, and a
    /// copy once, in the run that settled it for good. Committed with the run record, so a
    /// step done again never counts twice. `None`: a run recorded before days were counted so.
    #[serde(default)]
    pub days: Option<BTreeMap<NaiveDate, Figures>>,
    /// The ids of the last compare-and-swap writes of this record, newest last: a writer whose
    /// swap got an answer it cannot trust reads the record back and finds its id here if its
    /// write landed (see [`crate::state::KeyValue::update`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<String>,
}

/// A run's stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Fetch,
    Import,
    Done,
}

/// The two sides of a run, which go on at once: the fetch stages the window, the import
/// delivers what is staged. Each writes its own checkpoint and lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Fetch,
    Import,
}

/// What one side of a run does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send it a step.
    Step,
    /// Nothing for it yet: look again in a moment (the import, while the fetch stages).
    Wait,
    /// This side is done (or the run ended).
    Stop,
}

impl Run {
    /// What `side` does next. The import waits for the first fetch step (`fetch_begun`: it takes
    /// over and clears the pending list, to which the import adds), then takes each item page
    /// staged, and once the fetch is done takes a last step that ends the run.
    pub fn next(&self, side: Side, fetch_begun: bool) -> Next {
        if self.state.is_terminal() {
            return Next::Stop;
        }
        let progress = &self.progress;
        match (side, progress.phase) {
            (_, Phase::Done) | (Side::Fetch, Phase::Import) => Next::Stop,
            (Side::Fetch, Phase::Fetch) => Next::Step,
            (Side::Import, _) if !fetch_begun => Next::Wait,
            (Side::Import, Phase::Fetch) if progress.imported_pages >= progress.item_pages => {
                Next::Wait
            }
            (Side::Import, _) => Next::Step,
        }
    }
}

impl Progress {
    /// Whether `side`'s checkpoint is where it was in `before`: the import's is its place in
    /// the run's items, the fetch's everything else (the step count and the import's own fields
    /// aside). A step that leaves it so made no progress.
    pub fn same_place(&self, side: Side, before: &Progress) -> bool {
        let import_place = |p: &Progress| {
            (
                p.imported_pages,
                p.imported_position,
                p.delivering,
                p.transient.clone(),
                p.import_not_imported_pages,
            )
        };
        let fetch_place = |p: &Progress| Progress {
            steps: 0,
            imported_pages: 0,
            imported_position: 0,
            delivering: None,
            transient: None,
            import_not_imported_pages: 0,
            import_started_at: None,
            ..p.clone()
        };
        match side {
            Side::Import => import_place(before) == import_place(self),
            Side::Fetch => fetch_place(before) == fetch_place(self),
        }
    }
}

/// A run's checkpoint: a run is done in steps of bounded work, each of which continues from
/// here and ends by writing the run record, so a step cut short is done again from its start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    /// Items kept staged by earlier runs were added to this run's items.
    pub took_pending: bool,
    /// Start of the part of the window being listed (`None`: the window's start); a window
    /// longer than a day is listed a day at a time.
    #[serde(default)]
    pub listing_from: Option<DateTime<Utc>>,
    /// The cursor of the archive page being fetched (`None`: the first page).
    pub cursor: Option<String>,
    /// Valid messages of that page already handled.
    pub position: usize,
    /// The message at `position` whose attachments were being staged when a step stopped.
    #[serde(default)]
    pub partial: Option<crate::pipeline::PartialDownload>,
    /// Some message of the window could not be staged (its attachment did not match).
    pub incomplete: bool,
    /// Pages of the run's item keys and of its fetch's and its import's not-imported records
    /// (see the state layout).
    pub item_pages: usize,
    pub not_imported_pages: usize,
    #[serde(default)]
    pub import_not_imported_pages: usize,
    /// Item pages whose import is finished, and items of the next page imported.
    pub imported_pages: usize,
    pub imported_position: usize,
    /// Where the items end (page, position) whose copies an import step began to upload:
    /// one of the items before may be in its mailbox already (the step stopped before it
    /// recorded it), so their copies are looked up before they are uploaded again.
    #[serde(default)]
    pub delivering: Option<(usize, usize)>,
    /// The last destination failure of the run, if any copy failed transiently.
    pub transient: Option<String>,
    /// Steps taken, fetch and import together.
    pub steps: u64,
    /// When the fetch finished (the import goes on with what is left).
    #[serde(default)]
    pub fetched_at: Option<DateTime<Utc>>,
    /// When the first import step began (while the fetch went on).
    #[serde(default)]
    pub import_started_at: Option<DateTime<Utc>>,
}

impl Run {
    /// The figures this run adds to the texts of `day`.
    pub fn day(&mut self, day: NaiveDate) -> &mut Figures {
        self.days
            .get_or_insert_with(BTreeMap::new)
            .entry(day)
            .or_default()
    }

    pub fn view(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        value["invariant_holds"] = self.figures.invariant_holds().into();
        value
    }
}

/// An item (or one user's copy of it) that was not imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotImported {
    pub run: String,
    pub item_id: String,
    /// The participant the reason is about (normalised number), when there is one.
    pub participant: Option<String>,
    pub target_user: Option<String>,
    pub reason: NotImportedReason,
    pub detail: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotImportedReason {
    Unmapped,
    InvalidSourceRecord,
    NoSuchMailbox,
    DestinationRefused,
    AttachmentMismatch,
    /// Staged longer than the retention without being delivered: purged, never imported.
    StagingExpired,
}

/// The body of `POST /api/connectors/{id}/runs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunRequestError {
    #[error("the run request is not valid: {0}")]
    BadBody(String),
    #[error("give both `since` and `until`, or neither")]
    HalfWindow,
    #[error("`since` must be before `until`")]
    EmptyWindow,
    #[error("`until` is in the future")]
    FutureWindow,
}

/// Reads a run request; an empty body means "the next window, now".
pub fn parse_run_request(body: &[u8], now: DateTime<Utc>) -> Result<RunRequest, RunRequestError> {
    let request: RunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RunRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| RunRequestError::BadBody(e.to_string()))?
    };
    match (request.since, request.until) {
        (None, None) => {}
        (Some(since), Some(until)) => {
            if since >= until {
                return Err(RunRequestError::EmptyWindow);
            }
            if until > now + Duration::minutes(5) {
                return Err(RunRequestError::FutureWindow);
            }
        }
        _ => return Err(RunRequestError::HalfWindow),
    }
    Ok(request)
}

/// A run id that sorts by request time: `r-20261126T020000Z-<suffix>`.
pub fn run_id(requested_at: DateTime<Utc>, suffix: &str) -> String {
    format!("r-{}-{suffix}", requested_at.format("%Y%m%dT%H%M%SZ"))
}

/// What the pipeline records about a connector's health between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// Set when the archive refused the credentials; cleared by the next successful login.
    pub login_failure: Option<LoginFailure>,
    /// Set when the destination refused the app's or service account's credentials; cleared
    /// by the next step that logs in.
    #[serde(default)]
    pub destination_login_failure: Option<LoginFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginFailure {
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// Flags an operator can alert on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub last_successful_run: Option<DateTime<Utc>>,
    pub source_login_failure: Option<LoginFailure>,
    /// The destination refused its credentials at the last attempt (see
    /// `GET /api/destination` for what to fix).
    pub destination_login_failure: Option<LoginFailure>,
    /// The last timer event could not start runs (the app unreachable from its timer, or the
    /// timer's token refused); cleared by the next event that gets through.
    pub timer_failure: Option<crate::timer::TimerFailure>,
    /// The connector's last run that ended failed, when no run has succeeded since: why it
    /// stopped (an archive or mail server error, or a key-value store that did not answer).
    pub last_run_failure: Option<RunFailure>,
    /// Whole days since a run last fetched any message (since the first run if none ever did).
    pub days_without_items: Option<i64>,
    /// `days_without_items` reached the alert threshold.
    pub no_items_alert: bool,
}

/// A failed run, as the health shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunFailure {
    pub run: String,
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// The status of a connector: per run, per day, the items not imported, and health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub connector: String,
    pub health: Health,
    pub runs: Vec<serde_json::Value>,
    pub days: Vec<DayFigures>,
    pub not_imported: Vec<NotImported>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayFigures {
    /// A day of texts (when the source archived them).
    pub day: NaiveDate,
    /// How many runs counted texts or copies of the day.
    pub runs: usize,
    #[serde(flatten)]
    pub figures: Figures,
    pub invariant_holds: bool,
}

/// How long status figures are kept and shown.
pub const STATUS_RETENTION_DAYS: i64 = 90;

/// Builds the status from the runs (any order), the items not imported and the health record.
pub fn status(
    connector: &str,
    runs: &[Run],
    not_imported: Vec<NotImported>,
    health: &HealthRecord,
    timer_failure: Option<crate::timer::TimerFailure>,
    now: DateTime<Utc>,
    alert_after_days: i64,
) -> Status {
    let horizon = now - Duration::days(STATUS_RETENTION_DAYS);
    let mut recent: Vec<&Run> = runs.iter().filter(|r| r.requested_at >= horizon).collect();
    recent.sort_by_key(|r| r.requested_at);

    // Per day of texts: each run's share, so a day fetched twice (a backfill run again) counts
    // its texts once. A run recorded before days were counted so counts on its own day.
    let mut days: BTreeMap<NaiveDate, (usize, Figures)> = BTreeMap::new();
    for run in &recent {
        let legacy = BTreeMap::from([(run.requested_at.date_naive(), run.figures)]);
        for (date, figures) in run.days.as_ref().unwrap_or(&legacy) {
            let day = days.entry(*date).or_default();
            day.0 += 1;
            day.1.add(figures);
        }
    }
    let days = days
        .into_iter()
        .map(|(day, (runs, figures))| DayFigures {
            day,
            runs,
            figures,
            invariant_holds: figures.invariant_holds(),
        })
        .collect();

    let last_successful_run = recent
        .iter()
        .filter(|r| r.state == RunState::Succeeded)
        .filter_map(|r| r.finished_at)
        .max();
    let last_ended = recent
        .iter()
        .filter(|r| r.state.is_terminal())
        .filter_map(|r| r.finished_at.map(|at| (at, r)))
        .max_by_key(|(at, _)| *at);
    let last_run_failure = match last_ended {
        Some((at, run)) if run.state == RunState::Failed => Some(RunFailure {
            run: run.id.clone(),
            at,
            reason: run.error.clone().unwrap_or_default(),
        }),
        _ => None,
    };
    let last_items = recent
        .iter()
        .filter(|r| r.figures.fetched > 0)
        .map(|r| r.requested_at)
        .max()
        .or_else(|| recent.first().map(|r| r.requested_at));
    let days_without_items = last_items.map(|t| (now - t).num_days());
    Status {
        connector: connector.to_string(),
        health: Health {
            last_successful_run,
            source_login_failure: health.login_failure.clone(),
            destination_login_failure: health.destination_login_failure.clone(),
            timer_failure,
            last_run_failure,
            days_without_items,
            no_items_alert: days_without_items.is_some_and(|d| d >= alert_after_days),
        },
        runs: recent.iter().rev().map(|r| r.view()).collect(),
        days,
        not_imported: not_imported
            .into_iter()
            .filter(|item| item.at >= horizon)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_import_waits_for_the_first_fetch_step_and_then_for_staged_pages() {
        use super::{Next, Phase, RunState, Side};
        let mut run = crate::testing::run("c", "r");
        run.state = RunState::Running;
        assert_eq!(run.next(Side::Fetch, false), Next::Step);
        assert_eq!(run.next(Side::Import, false), Next::Wait);
        run.progress.item_pages = 2;
        assert_eq!(
            run.next(Side::Import, false),
            Next::Wait,
            "before the first fetch step"
        );
        assert_eq!(run.next(Side::Import, true), Next::Step);
        run.progress.imported_pages = 2;
        assert_eq!(
            run.next(Side::Import, true),
            Next::Wait,
            "all staged is imported"
        );
        run.progress.phase = Phase::Import;
        assert_eq!(run.next(Side::Fetch, true), Next::Stop);
        assert_eq!(
            run.next(Side::Import, true),
            Next::Step,
            "the step that ends the run"
        );
        run.state = RunState::Failed;
        assert_eq!(run.next(Side::Import, true), Next::Stop);
    }

    #[test]
    fn each_side_is_judged_on_its_own_checkpoint() {
        use super::{Progress, Side};
        let before = Progress::default();
        let imported = Progress {
            imported_position: 3,
            steps: 1,
            ..before.clone()
        };
        assert!(!imported.same_place(Side::Import, &before));
        assert!(
            imported.same_place(Side::Fetch, &before),
            "the fetch did nothing"
        );
        let fetched = Progress {
            position: 5,
            steps: 1,
            ..before.clone()
        };
        assert!(!fetched.same_place(Side::Fetch, &before));
        assert!(
            fetched.same_place(Side::Import, &before),
            "the import did nothing"
        );
    }

    use super::*;

    fn at(t: &str) -> DateTime<Utc> {
        t.parse().unwrap()
    }

    fn run(id: &str, requested: &str, state: RunState, figures: Figures) -> Run {
        Run {
            id: id.into(),
            connector: "c".into(),
            trigger: RunTrigger::Timer,
            since: None,
            until: None,
            state,
            requested_at: at(requested),
            started_at: Some(at(requested)),
            finished_at: Some(at(requested) + Duration::minutes(5)),
            figures,
            error: None,
            progress: Progress::default(),
            days: None,
            writes: Vec::new(),
        }
    }

    fn figures(fetched: u64, available: u64, imported: u64, failed: u64) -> Figures {
        Figures {
            fetched,
            available_for_import: available,
            imported,
            failed,
            ..Figures::default()
        }
    }

    /// The status on 2026-11-26 at 03:00, alerting after 3 quiet days.
    fn status_on_26th(runs: &[Run]) -> Status {
        status(
            "c",
            runs,
            vec![],
            &HealthRecord::default(),
            None,
            at("2026-11-26T03:00:00Z"),
            3,
        )
    }

    #[test]
    fn groups_runs_by_day_and_checks_the_invariant() {
        let runs = vec![
            run(
                "r1",
                "2026-11-24T02:00:00Z",
                RunState::Succeeded,
                figures(10, 12, 12, 0),
            ),
            run(
                "r2",
                "2026-11-25T02:00:00Z",
                RunState::Succeeded,
                figures(5, 6, 5, 1),
            ),
            run(
                "r3",
                "2026-11-25T09:00:00Z",
                RunState::Failed,
                figures(1, 2, 0, 2),
            ),
        ];
        let s = status_on_26th(&runs);
        assert_eq!(s.days.len(), 2);
        assert_eq!(s.days[1].runs, 2);
        assert_eq!(s.days[1].figures.available_for_import, 8);
        assert_eq!(s.days[1].figures.failed, 3);
        assert!(s.days.iter().all(|d| d.invariant_holds));
        assert_eq!(s.runs[0]["id"], "r3", "newest first");
        assert_eq!(
            s.health.last_successful_run,
            Some(at("2026-11-25T02:05:00Z"))
        );
        assert_eq!(s.health.days_without_items, Some(0));
        assert!(!s.health.no_items_alert);

        let broken = vec![run(
            "r4",
            "2026-11-25T02:00:00Z",
            RunState::Succeeded,
            figures(5, 6, 4, 1),
        )];
        let s = status_on_26th(&broken);
        assert!(!s.days[0].invariant_holds);
        assert_eq!(s.runs[0]["invariant_holds"], false);
    }

    #[test]
    fn a_day_of_texts_fetched_by_two_runs_counts_each_text_once_on_its_own_day() {
        let mut first = run(
            "r1",
            "2026-12-01T09:00:00Z",
            RunState::Succeeded,
            figures(18, 20, 20, 0),
        );
        let day = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        *first.day(day) = figures(18, 20, 20, 0);
        // The same backfill again: every text was archived already, so it adds nothing to the
        // day, though the run itself saw 18 texts.
        let mut second = run(
            "r2",
            "2026-12-01T10:00:00Z",
            RunState::Succeeded,
            figures(18, 0, 0, 0),
        );
        second.days = Some(BTreeMap::new());
        let s = status(
            "c",
            &[first, second],
            vec![],
            &HealthRecord::default(),
            None,
            at("2026-12-01T11:00:00Z"),
            3,
        );
        assert_eq!(s.days.len(), 1, "{:?}", s.days);
        assert_eq!(s.days[0].day, day);
        assert_eq!(s.days[0].figures.fetched, 18);
        assert_eq!(s.days[0].figures.imported, 20);
        assert_eq!(s.days[0].runs, 1);
        assert_eq!(s.runs.len(), 2, "the runs are shown apart");
    }

    #[test]
    fn the_health_shows_why_the_last_run_failed_until_a_run_succeeds() {
        let ok = run(
            "a",
            "2026-11-20T02:00:00Z",
            RunState::Succeeded,
            figures(1, 1, 1, 0),
        );
        let mut failed = run(
            "b",
            "2026-11-21T02:00:00Z",
            RunState::Failed,
            figures(0, 0, 0, 0),
        );
        failed.error = Some("the key-value store failed: connection refused".into());
        // Still running: it does not hide the failure before it.
        let mut running = run(
            "c",
            "2026-11-22T02:00:00Z",
            RunState::Running,
            figures(0, 0, 0, 0),
        );
        running.finished_at = None;
        let health = |runs: &[Run]| {
            status(
                "c",
                runs,
                vec![],
                &HealthRecord::default(),
                None,
                at("2026-11-22T03:00:00Z"),
                3,
            )
            .health
            .last_run_failure
        };
        assert_eq!(health(std::slice::from_ref(&ok)), None);
        let shown = health(&[ok.clone(), failed.clone(), running]).unwrap();
        assert_eq!(shown.run, "b");
        assert_eq!(shown.at, at("2026-11-21T02:05:00Z"));
        assert!(shown.reason.contains("key-value store"), "{}", shown.reason);
        let mut later = ok;
        later.id = "d".into();
        later.requested_at = at("2026-11-22T02:00:00Z");
        later.finished_at = Some(at("2026-11-22T02:05:00Z"));
        assert_eq!(health(&[failed, later]), None, "a run succeeded since");
    }

    #[test]
    fn raises_the_no_items_flag_and_drops_what_is_older_than_90_days() {
        let runs = vec![
            run(
                "old",
                "2026-07-01T02:00:00Z",
                RunState::Succeeded,
                figures(9, 9, 9, 0),
            ),
            run(
                "a",
                "2026-11-20T02:00:00Z",
                RunState::Succeeded,
                figures(3, 3, 3, 0),
            ),
            run(
                "b",
                "2026-11-21T02:00:00Z",
                RunState::Succeeded,
                figures(0, 0, 0, 0),
            ),
        ];
        let s = status_on_26th(&runs);
        assert_eq!(s.runs.len(), 2);
        assert_eq!(s.health.days_without_items, Some(6));
        assert!(s.health.no_items_alert);
    }

    #[test]
    fn run_requests_are_empty_or_a_whole_past_window() {
        let now = at("2026-11-26T12:00:00Z");
        assert!(parse_run_request(b"", now).unwrap().since.is_none());
        assert!(parse_run_request(b"{}", now).unwrap().since.is_none());
        let window = br#"{"since":"2026-11-20T00:00:00Z","until":"2026-11-21T00:00:00Z"}"#;
        assert_eq!(
            parse_run_request(window, now).unwrap().until,
            Some(at("2026-11-21T00:00:00Z"))
        );
        assert_eq!(
            parse_run_request(br#"{"since":"2026-11-20T00:00:00Z"}"#, now).unwrap_err(),
            RunRequestError::HalfWindow
        );
        let reversed = br#"{"since":"2026-11-21T00:00:00Z","until":"2026-11-20T00:00:00Z"}"#;
        assert_eq!(
            parse_run_request(reversed, now).unwrap_err(),
            RunRequestError::EmptyWindow
        );
        let future = br#"{"since":"2026-11-26T00:00:00Z","until":"2026-11-27T00:00:00Z"}"#;
        assert_eq!(
            parse_run_request(future, now).unwrap_err(),
            RunRequestError::FutureWindow
        );
        assert!(matches!(
            parse_run_request(br#"{"from":"x"}"#, now),
            Err(RunRequestError::BadBody(_))
        ));
        assert!(matches!(
            parse_run_request(br#"{"since":"yesterday","until":"today"}"#, now),
            Err(RunRequestError::BadBody(_))
        ));
    }

    #[test]
    fn run_ids_sort_by_time() {
        let a = run_id(at("2026-11-25T02:00:00Z"), "x9");
        let b = run_id(at("2026-11-26T02:00:00Z"), "a0");
        assert!(a < b);
        assert_eq!(a, "r-20261125T020000Z-x9");
    }
}
