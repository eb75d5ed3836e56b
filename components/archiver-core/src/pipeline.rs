//! The daily pipeline's decisions, without I/O: which window to fetch, the archive's requests and
//! answers, when to retry, and what is staged.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::digest::fields_sha256_hex;
use crate::phone::Region;
use crate::source::{Message, MessagePage, PageError, parse_page};
use crate::source_client::{SourceError, SourceRequest};

/// Late re-deliveries are caught by starting each window this long before the last one ended.
pub const DEFAULT_OVERLAP: Duration = Duration::hours(2);
/// The first run of a connector fetches this far back.
pub const FIRST_WINDOW: Duration = Duration::days(1);
/// Messages asked for per page (the archive may cap it lower).
pub const PAGE_LIMIT: usize = 500;
/// Attempts of one request before the run gives the window up to the next run.
pub const MAX_ATTEMPTS: u32 = 4;
/// The longest wait between attempts, whatever `Retry-After` asks.
pub const MAX_RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How much one step of a run may do before it checkpoints and hands over to the next step:
/// items, bytes of attachments, and time. A step always does at least one item, so a run
/// advances whatever the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepLimits {
    pub items: usize,
    pub bytes: u64,
    pub time: std::time::Duration,
}

impl Default for StepLimits {
    fn default() -> Self {
        StepLimits {
            items: 1000,
            bytes: 64 << 20,
            time: std::time::Duration::from_secs(60),
        }
    }
}

impl StepLimits {
    /// From the `step_max_items`, `step_max_bytes` and `step_max_seconds` settings.
    pub fn parse(items: &str, bytes: &str, seconds: &str) -> Result<StepLimits, String> {
        fn positive(name: &str, value: &str) -> Result<u64, String> {
            match value.trim().parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "{name} must be a whole number above 0, not {value:?}"
                )),
            }
        }
        Ok(StepLimits {
            items: positive("step_max_items", items)? as usize,
            bytes: positive("step_max_bytes", bytes)?,
            time: std::time::Duration::from_secs(positive("step_max_seconds", seconds)?),
        })
    }
}

/// What a step has done so far against its [`StepLimits`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StepBudget {
    items: usize,
    bytes: u64,
}

impl StepBudget {
    pub fn spend(&mut self, items: usize, bytes: u64) {
        self.items += items;
        self.bytes += bytes;
    }

    /// Whether the step must stop before its next item or chunk (never before it has done
    /// some work, so every step advances).
    pub fn exhausted(&self, limits: &StepLimits, elapsed: std::time::Duration) -> bool {
        (self.items > 0 || self.bytes > 0)
            && (self.items >= limits.items || self.bytes >= limits.bytes || elapsed >= limits.time)
    }
}

/// Work grouped by key (a mailbox) and handed out one item per key at a time: as much at once
/// as the caller likes, but never two items of one key at once. A key's items go one after
/// another, so each key is finished as early as it can be, and the keys with the most items
/// go first, so the work's end is not one key's items one at a time.
///
/// Items belong to groups (an item's copies in several mailboxes): a group's members in other
/// keys free at the time are taken together with the one whose turn it is.
#[derive(Debug)]
pub struct Lanes<T, K, G> {
    queues: BTreeMap<K, VecDeque<(G, T)>>,
    /// Keys with work and none in flight, in the order they get their next turn.
    ready: VecDeque<K>,
    /// The keys of each group with items in more than one key.
    keys_of: BTreeMap<G, Vec<K>>,
}

impl<T, K: Ord + Clone, G: Ord + Clone> Lanes<T, K, G> {
    pub fn new(
        items: impl IntoIterator<Item = T>,
        key: impl Fn(&T) -> K,
        group: impl Fn(&T) -> G,
    ) -> Lanes<T, K, G> {
        let mut queues: BTreeMap<K, VecDeque<(G, T)>> = BTreeMap::new();
        for item in items {
            queues
                .entry(key(&item))
                .or_default()
                .push_back((group(&item), item));
        }
        let mut keys_of: BTreeMap<G, Vec<K>> = BTreeMap::new();
        for (key, queue) in &queues {
            for (group, _) in queue {
                let keys = keys_of.entry(group.clone()).or_default();
                if keys.last() != Some(key) {
                    keys.push(key.clone());
                }
            }
        }
        keys_of.retain(|_, keys| keys.len() > 1);
        let mut keys: Vec<&K> = queues.keys().collect();
        // Stable: keys with as many items keep their order.
        keys.sort_by_key(|key| std::cmp::Reverse(queues[*key].len()));
        let ready = keys.into_iter().cloned().collect();
        Lanes {
            queues,
            ready,
            keys_of,
        }
    }

    /// The next item of the next key with none in flight, with the items of its group in every
    /// other key that has none in flight, taken out of their turn: work that can be done for
    /// several keys at once (an item's copies in several mailboxes) is done once. Every key
    /// returned is busy until [`Lanes::release`]d; the first is the one whose turn it was.
    pub fn take(&mut self) -> Option<Vec<(K, T)>> {
        let key = self.ready.pop_front()?;
        let (group, item) = self.queues.get_mut(&key)?.pop_front()?;
        let mut taken = vec![(key.clone(), item)];
        for other in self.keys_of.get(&group).into_iter().flatten() {
            let Some(turn) = self.ready.iter().position(|k| k == other) else {
                continue; // in flight, or finished
            };
            let Some(queue) = self.queues.get_mut(other) else {
                continue;
            };
            if let Some(at) = queue.iter().position(|(g, _)| *g == group)
                && let Some((_, item)) = queue.remove(at)
            {
                self.ready.remove(turn);
                taken.push((other.clone(), item));
            }
        }
        Some(taken)
    }

    /// `key`'s item is done: the key's next item, if any, goes next, so a key's items go one
    /// after another and the key is finished early. Returns whether the key is finished.
    pub fn release(&mut self, key: &K) -> bool {
        match self.queues.get(key) {
            Some(queue) if !queue.is_empty() => {
                self.ready.push_front(key.clone());
                false
            }
            Some(_) => {
                self.queues.remove(key);
                true
            }
            None => true,
        }
    }

    /// Whether every item has been taken (some may still be in flight).
    pub fn all_taken(&self) -> bool {
        self.queues.values().all(|queue| queue.is_empty())
    }

    /// Whether an item may be taken now.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }
}

/// Copies grouped into `Email/import` calls: one target (account and folder) per call, at
/// most `per_call` copies each, in target order.
pub fn import_calls<T, K: Ord + Clone>(
    copies: Vec<T>,
    target: impl Fn(&T) -> K,
    per_call: usize,
) -> Vec<(K, Vec<T>)> {
    let mut by_target: BTreeMap<K, Vec<T>> = BTreeMap::new();
    for copy in copies {
        by_target.entry(target(&copy)).or_default().push(copy);
    }
    let mut calls = Vec::new();
    for (target, copies) in by_target {
        let mut copies = copies.into_iter().peekable();
        while copies.peek().is_some() {
            calls.push((
                target.clone(),
                copies.by_ref().take(per_call.max(1)).collect(),
            ));
        }
    }
    calls
}

/// Whether a copy of an item may be in its mailbox already, so it is looked up before it is
/// uploaded: the item came from an earlier run (kept for a later attempt, or carried over from
/// a run that stopped), or sits before `delivering`, where a step of this run began uploading
/// (a step redone after it stopped). Any other item is met for the first time.
pub fn may_be_delivered(
    item: &StagedItem,
    run_id: &str,
    position: (usize, usize),
    delivering: Option<(usize, usize)>,
) -> bool {
    item.run != run_id || delivering.is_some_and(|end| position < end)
}

/// The `[since, until)` window of a run: from the watermark (minus the overlap) to `until`.
pub fn window(
    watermark: Option<DateTime<Utc>>,
    until: DateTime<Utc>,
    overlap: Duration,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let since = match watermark {
        Some(watermark) => (watermark - overlap).min(until),
        None => until - FIRST_WINDOW,
    };
    (since, until)
}

/// The longest window one listing of the archive covers: a run over a longer window (after an
/// outage of several days) fetches it day by day, and each finished day moves the watermark.
pub const MAX_LISTING_WINDOW: Duration = Duration::days(1);

/// The part of the run's `[since, until)` window to list next, starting at `from` (the end of
/// the part before, or `since`).
pub fn listing_window(from: DateTime<Utc>, until: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (from, (from + MAX_LISTING_WINDOW).min(until))
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `GET {base}/v1/messages?since&until&limit[&cursor]`.
pub fn messages_request(
    base: &str,
    authorization: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    cursor: Option<&str>,
) -> SourceRequest {
    let mut url = format!(
        "{}/v1/messages?since={}&until={}&limit={PAGE_LIMIT}",
        base.trim_end_matches('/'),
        instant(since),
        instant(until)
    );
    if let Some(cursor) = cursor {
        url.push_str("&cursor=");
        url.push_str(&percent_encode(cursor));
    }
    get(url, authorization)
}

/// `GET {base}/v1/attachments/{id}`.
pub fn attachment_request(base: &str, authorization: &str, id: &str) -> SourceRequest {
    get(
        format!(
            "{}/v1/attachments/{}",
            base.trim_end_matches('/'),
            percent_encode(id)
        ),
        authorization,
    )
}

/// The attachment's bytes `start..=end` (`Range`), so a large one is read piece by piece.
pub fn attachment_range_request(
    base: &str,
    authorization: &str,
    id: &str,
    start: u64,
    end: u64,
) -> SourceRequest {
    let mut request = attachment_request(base, authorization, id);
    request
        .headers
        .push(("range", format!("bytes={start}-{end}")));
    request
}

/// The ranges of at most `piece` bytes that cover `size` bytes, in order.
pub fn ranges(size: u64, piece: u64) -> Vec<(u64, u64)> {
    let piece = piece.max(1);
    (0..size.div_ceil(piece))
        .map(|n| (n * piece, ((n + 1) * piece).min(size) - 1))
        .collect()
}

fn get(url: String, authorization: &str) -> SourceRequest {
    SourceRequest {
        method: "GET",
        url,
        headers: vec![("authorization", authorization.to_string())],
    }
}

/// Escapes everything but unreserved characters, for ids and cursors in a URL.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Reads one page of messages; an error status is never read as "no messages".
pub fn read_messages_response(
    status: u16,
    body: &[u8],
    region: Region,
) -> Result<MessagePage, SourceError> {
    match status {
        200 => parse_page(body, region).map_err(|PageError(e)| SourceError::BadAnswer(e)),
        other => Err(status_error(other)),
    }
}

/// The error an unsuccessful status stands for.
pub fn status_error(status: u16) -> SourceError {
    match status {
        401 => SourceError::BadCredentials,
        403 => SourceError::Forbidden,
        404 | 405 => SourceError::NotFound(status),
        429 | 500..=599 => SourceError::Unavailable(status),
        other => SourceError::UnexpectedStatus(other),
    }
}

/// How long to wait before attempt `attempt + 1` after a transient failure, or `None` when the
/// failure is not transient or the attempts are used up. `Retry-After` (seconds) is honoured.
pub fn retry_wait(
    error: &SourceError,
    retry_after: Option<&str>,
    attempt: u32,
) -> Option<std::time::Duration> {
    let transient = matches!(
        error,
        SourceError::Unavailable(_) | SourceError::Unreachable(_) | SourceError::BadAnswer(_)
    );
    if !transient || attempt + 1 >= MAX_ATTEMPTS {
        return None;
    }
    let backoff = std::time::Duration::from_millis(200 * 2u64.pow(attempt));
    let asked = retry_after
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    Some(asked.unwrap_or(backoff).min(MAX_RETRY_WAIT))
}

/// The key under which a source message is staged and remembered: a digest, since source ids
/// may hold any character.
pub fn item_key(source_id: &str) -> String {
    fields_sha256_hex(&["item", source_id])[..32].to_string()
}

/// A message waiting in staging for delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedItem {
    pub key: String,
    pub run: String,
    pub message: Message,
    /// Chunks each attachment's bytes are stored in, in the message's order.
    pub attachment_chunks: Vec<usize>,
    /// Users whose copy the destination has accepted.
    pub delivered_to: Vec<String>,
    /// When it was staged; an item still undelivered past the retention is purged, reported.
    #[serde(default)]
    pub staged_at: Option<DateTime<Utc>>,
    /// Where the listing that staged it showed it (`None`: staged before places were kept).
    #[serde(default)]
    pub listed: Option<ListingPlace>,
}

/// A message whose attachments a fetch step had begun to stage when it reached its limits:
/// the next step goes on from the next chunk, with the digest so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialDownload {
    /// The item's key.
    pub item: String,
    /// Chunks staged of each attachment begun; the last one is the one in progress.
    pub counts: Vec<usize>,
    /// Bytes of the attachment in progress received so far, and their digest.
    pub received: u64,
    pub digest: crate::digest::StreamingSha256,
}

impl StagedItem {
    /// Whether the item has stayed in staging longer than `retention`.
    pub fn expired(&self, now: DateTime<Utc>, retention: Duration) -> bool {
        self.staged_at.is_some_and(|at| now - at > retention)
    }
}

/// Where a run's listing of the archive showed a text: the page (the listing window's start and
/// the cursor that asked for it) and the position on it. A step done again after a crash lists
/// the same text at the same place; the same text at another place of the same run is the
/// archive listing it again (a re-delivery on a later page), which counts for nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingPlace {
    pub run: String,
    /// Empty for a mark written before places were kept: where it was listed is not known.
    #[serde(default)]
    pub page: String,
    #[serde(default)]
    pub index: usize,
}

impl ListingPlace {
    /// The place of the `index`-th record of the page that `cursor` asked for in the listing
    /// window from `since`; `part` keeps apart positions counted over different lists of the
    /// page (its readable messages and its unreadable records).
    pub fn new(
        run: &str,
        since: DateTime<Utc>,
        cursor: Option<&str>,
        part: &str,
        index: usize,
    ) -> ListingPlace {
        ListingPlace {
            run: run.to_string(),
            page: format!("{}|{part}|{}", since.to_rfc3339(), cursor.unwrap_or("")),
            index,
        }
    }

    /// Whether `earlier`, a place where a text was listed, shows that this run listed the text
    /// already somewhere else.
    fn listed_elsewhere_by_this_run(&self, earlier: &ListingPlace) -> bool {
        earlier.run == self.run
            && !earlier.page.is_empty()
            && (earlier.page.as_str(), earlier.index) != (self.page.as_str(), self.index)
    }
}

/// The mark kept of a text where its own record cannot say: the run that counted it in its day
/// and where a run listed it last, for a text no run could stage (an invalid one, one whose
/// attachment did not match) and for one listed by a run other than the one that staged it. The
/// fetch never rewrites a staged or archived record for this, as the import writes those.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountedMark {
    pub counted_by: String,
    pub listed: ListingPlace,
}

impl CountedMark {
    /// Reads a stored mark: JSON, or (written before places were kept) the counting run's id.
    pub fn decode(bytes: &[u8]) -> CountedMark {
        serde_json::from_slice(bytes).unwrap_or_else(|_| {
            let run = String::from_utf8_lossy(bytes).into_owned();
            CountedMark {
                counted_by: run.clone(),
                listed: ListingPlace {
                    run,
                    page: String::new(),
                    index: 0,
                },
            }
        })
    }

    /// The mark after the listing at `here`: counted by whoever counted it first, else by
    /// `counted_by`.
    pub fn after(
        earlier: Option<&CountedMark>,
        here: &ListingPlace,
        counted_by: &str,
    ) -> CountedMark {
        CountedMark {
            counted_by: earlier.map_or_else(|| counted_by.to_string(), |m| m.counted_by.clone()),
            listed: here.clone(),
        }
    }

    /// The mark to write after the listing at `here`, or `None` when the stored one says it
    /// already: a listing that changes nothing costs no write.
    pub fn changed(
        earlier: Option<&CountedMark>,
        here: &ListingPlace,
        counted_by: &str,
    ) -> Option<CountedMark> {
        let after = CountedMark::after(earlier, here, counted_by);
        (earlier != Some(&after)).then_some(after)
    }

    /// Which run staged a text listed by `run` that this run will not stage itself: the run
    /// that archived it, or another run whose staged record holds it. Such a text keeps where
    /// `run` listed it in its mark, since no record of `run`'s own does.
    pub fn staged_by_another<'a>(
        run: &str,
        archived: Option<&'a ArchivedItem>,
        staged: Option<&'a StagedItem>,
    ) -> Option<&'a str> {
        match (archived, staged) {
            (Some(archived), _) => Some(&archived.run),
            (None, Some(staged)) if staged.run != run => Some(&staged.run),
            _ => None,
        }
    }
}

/// What one listing of a text adds to its run, from what the store holds of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// The run's first listing of the text (or a listing done again because its step was lost):
    /// it counts in the run's figures; in its day's too when `day` (no other run counted it and
    /// it is not archived already); and it is staged when `stage`. Where it was listed is then
    /// kept with the text's record, so that a later listing by the same run is known.
    First { day: bool, stage: bool },
    /// The run has listed this text at another place already: nothing counts again and nothing
    /// is staged again. A day's figures are what an admin reconciles against the carrier's
    /// count, so each text is in them once, however often the archive lists it.
    Again,
}

impl Listing {
    /// Classifies the listing at `here` of a text that is `archived`, `staged` or `counted`, or
    /// none of these.
    pub fn classify(
        here: &ListingPlace,
        archived: Option<&ArchivedItem>,
        staged: Option<&StagedItem>,
        counted: Option<&CountedMark>,
    ) -> Listing {
        let elsewhere = |place: Option<&ListingPlace>| {
            place.is_some_and(|place| here.listed_elsewhere_by_this_run(place))
        };
        if elsewhere(archived.and_then(|a| a.listed.as_ref()))
            || elsewhere(staged.and_then(|s| s.listed.as_ref()))
            || elsewhere(counted.map(|c| &c.listed))
        {
            return Listing::Again;
        }
        if let Some(archived) = archived {
            // Archived before places were kept, from this run's staging: this run listed it
            // before (a page is imported only once its step is committed, and a committed page
            // is never listed again).
            if archived.listed.is_none() && archived.run == here.run {
                return Listing::Again;
            }
            return Listing::First {
                day: false,
                stage: false,
            };
        }
        let counted_by_another = counted.is_some_and(|c| c.counted_by != here.run);
        match staged {
            Some(staged) => Listing::First {
                day: staged.run == here.run && !counted_by_another,
                stage: false,
            },
            None => Listing::First {
                day: !counted_by_another,
                stage: true,
            },
        }
    }
}

/// What is remembered of an archived item, so a later window does not stage it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedItem {
    pub run: String,
    pub at: DateTime<Utc>,
    /// Where a run listed it last (`None`: archived before places were kept).
    #[serde(default)]
    pub listed: Option<ListingPlace>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> DateTime<Utc> {
        t.parse().unwrap()
    }

    #[test]
    fn windows_start_at_the_watermark_minus_the_overlap() {
        let until = at("2026-11-26T02:00:00Z");
        assert_eq!(
            window(None, until, DEFAULT_OVERLAP).0,
            at("2026-11-25T02:00:00Z")
        );
        let watermark = Some(at("2026-11-25T02:00:00Z"));
        assert_eq!(
            window(watermark, until, DEFAULT_OVERLAP).0,
            at("2026-11-25T00:00:00Z")
        );
        let outage = Some(at("2026-11-20T02:00:00Z"));
        assert_eq!(
            window(outage, until, DEFAULT_OVERLAP).0,
            at("2026-11-20T00:00:00Z")
        );
    }

    #[test]
    fn builds_page_and_attachment_urls_with_escaping() {
        let request = messages_request(
            "http://127.0.0.1:1/api/",
            "Basic x",
            at("2026-11-25T00:00:00Z"),
            at("2026-11-26T00:00:00Z"),
            Some("b2Zm+/=="),
        );
        assert_eq!(
            request.url,
            "http://127.0.0.1:1/api/v1/messages?since=2026-11-25T00:00:00Z&until=2026-11-26T00:00:00Z&limit=500&cursor=b2Zm%2B%2F%3D%3D"
        );
        assert_eq!(
            attachment_request("https://a/api", "Basic x", "a/19").url,
            "https://a/api/v1/attachments/a%2F19"
        );
    }

    #[test]
    fn ranges_cover_the_bytes_in_pieces() {
        assert_eq!(ranges(0, 10), []);
        assert_eq!(ranges(10, 10), [(0, 9)]);
        assert_eq!(ranges(25, 10), [(0, 9), (10, 19), (20, 24)]);
        let request = attachment_range_request("https://a/api", "Basic x", "a-1", 10, 19);
        assert!(
            request
                .headers
                .contains(&("range", "bytes=10-19".to_string()))
        );
    }

    #[test]
    fn error_statuses_are_never_an_empty_page() {
        assert_eq!(
            read_messages_response(401, b"", Region::US),
            Err(SourceError::BadCredentials)
        );
        assert_eq!(
            read_messages_response(503, b"", Region::US),
            Err(SourceError::Unavailable(503))
        );
        assert!(matches!(
            read_messages_response(200, b"{\"messages\":[", Region::US),
            Err(SourceError::BadAnswer(_))
        ));
        let empty =
            read_messages_response(200, br#"{"messages":[],"next_cursor":null}"#, Region::US)
                .unwrap();
        assert!(empty.messages.is_empty());
    }

    #[test]
    fn retries_transient_failures_with_backoff_and_retry_after() {
        let busy = SourceError::Unavailable(429);
        assert_eq!(
            retry_wait(&busy, Some("3"), 0),
            Some(std::time::Duration::from_secs(3))
        );
        assert_eq!(retry_wait(&busy, Some("3600"), 0), Some(MAX_RETRY_WAIT));
        assert_eq!(
            retry_wait(&busy, None, 1),
            Some(std::time::Duration::from_millis(400))
        );
        assert_eq!(retry_wait(&busy, None, MAX_ATTEMPTS - 1), None);
        assert_eq!(retry_wait(&SourceError::BadCredentials, None, 0), None);
    }

    #[test]
    fn a_step_stops_at_its_first_limit_but_never_before_its_first_item() {
        let limits = StepLimits::parse("3", "1000", "5").unwrap();
        let second = std::time::Duration::from_secs(1);
        let mut budget = StepBudget::default();
        assert!(!budget.exhausted(&limits, 10 * second), "no item done yet");
        budget.spend(1, 10);
        assert!(!budget.exhausted(&limits, second));
        assert!(budget.exhausted(&limits, 5 * second));
        budget.spend(1, 990);
        assert!(budget.exhausted(&limits, second), "bytes");
        let mut budget = StepBudget::default();
        budget.spend(3, 0);
        assert!(budget.exhausted(&limits, second), "items");
        assert!(
            StepLimits::parse("0", "1", "1")
                .unwrap_err()
                .contains("step_max_items")
        );
        assert!(
            StepLimits::parse("1", "x", "1")
                .unwrap_err()
                .contains("step_max_bytes")
        );
    }

    #[test]
    fn an_item_expires_only_past_the_retention() {
        let mut item = StagedItem {
            key: "k".into(),
            run: "r".into(),
            message: crate::testing::message(&crate::testing::sms_record()),
            attachment_chunks: vec![],
            delivered_to: vec![],
            staged_at: None,
            listed: None,
        };
        let now: DateTime<Utc> = "2026-11-26T02:00:00Z".parse().unwrap();
        assert!(!item.expired(now, Duration::days(30)), "unknown age");
        item.staged_at = Some(now - Duration::days(30));
        assert!(!item.expired(now, Duration::days(30)));
        item.staged_at = Some(now - Duration::days(30) - Duration::seconds(1));
        assert!(item.expired(now, Duration::days(30)));
    }

    #[test]
    fn a_text_counts_once_however_often_its_run_lists_it() {
        let since = at("2026-11-25T00:00:00Z");
        let place = |run: &str, cursor: Option<&str>, index| {
            ListingPlace::new(run, since, cursor, "messages", index)
        };
        let staged = |run: &str, listed: Option<ListingPlace>| StagedItem {
            key: "k".into(),
            run: run.into(),
            message: crate::testing::message(&crate::testing::sms_record()),
            attachment_chunks: Vec::new(),
            delivered_to: Vec::new(),
            staged_at: None,
            listed,
        };
        let here = place("r2", Some("page-2"), 0);
        let new = Listing::First {
            day: true,
            stage: true,
        };
        assert_eq!(Listing::classify(&here, None, None, None), new);

        // Staged by this run on page 1 and listed again on page 2: a re-delivery.
        let first = staged("r2", Some(place("r2", None, 3)));
        assert_eq!(
            Listing::classify(&here, None, Some(&first), None),
            Listing::Again
        );
        // The same place again is the step done again after a crash: its count was lost.
        let redo = staged("r2", Some(here.clone()));
        let counted_here = Listing::First {
            day: true,
            stage: false,
        };
        assert_eq!(
            Listing::classify(&here, None, Some(&redo), None),
            counted_here
        );
        // Twice on one page, at two positions, is listed again too.
        let same_page = staged("r2", Some(place("r2", Some("page-2"), 7)));
        assert_eq!(
            Listing::classify(&here, None, Some(&same_page), None),
            Listing::Again
        );
        // Staged before places were kept: counted as it was.
        assert_eq!(
            Listing::classify(&here, None, Some(&staged("r2", None)), None),
            counted_here
        );
        // Staged by an earlier run (kept for another attempt): that run counted it.
        let earlier = staged("r1", Some(place("r1", None, 3)));
        let not_in_day = Listing::First {
            day: false,
            stage: false,
        };
        assert_eq!(
            Listing::classify(&here, None, Some(&earlier), None),
            not_in_day
        );

        // Archived, and listed by this run elsewhere, here, or (before places were kept)
        // archived from this run's staging.
        let archived = |run: &str, listed: Option<ListingPlace>| ArchivedItem {
            run: run.into(),
            at: since,
            listed,
        };
        let listed_before = archived("r1", Some(place("r2", None, 3)));
        assert_eq!(
            Listing::classify(&here, Some(&listed_before), None, None),
            Listing::Again
        );
        let by_earlier = archived("r1", Some(place("r1", None, 3)));
        for record in [
            by_earlier.clone(),
            archived("r1", Some(here.clone())),
            archived("r1", None),
        ] {
            assert_eq!(
                Listing::classify(&here, Some(&record), None, None),
                not_in_day,
                "{record:?}"
            );
        }
        assert_eq!(
            Listing::classify(&here, Some(&archived("r2", None)), None, None),
            Listing::Again
        );

        // Counted as unreadable or mismatched: listed by this run elsewhere, here, by another.
        let mark = |counted_by: &str, listed: ListingPlace| CountedMark {
            counted_by: counted_by.into(),
            listed,
        };
        assert_eq!(
            Listing::classify(&here, None, None, Some(&mark("r1", place("r2", None, 1)))),
            Listing::Again
        );
        assert_eq!(
            Listing::classify(&here, None, None, Some(&mark("r2", here.clone()))),
            new
        );
        let legacy = CountedMark::decode(b"r2");
        assert_eq!(legacy.counted_by, "r2");
        assert_eq!(Listing::classify(&here, None, None, Some(&legacy)), new);
        let another =
            CountedMark::decode(&serde_json::to_vec(&mark("r1", place("r1", None, 1))).unwrap());
        assert_eq!(another.counted_by, "r1");
        assert_eq!(
            Listing::classify(&here, None, None, Some(&another)),
            Listing::First {
                day: false,
                stage: true
            }
        );
        assert_eq!(
            Listing::classify(&here, None, Some(&staged("r2", None)), Some(&another)),
            not_in_day
        );
        // A mark keeps who counted the text first and where it was listed last.
        let after = CountedMark::after(Some(&another), &here, "r2");
        assert_eq!((after.counted_by.as_str(), &after.listed), ("r1", &here));
        assert_eq!(CountedMark::after(None, &here, "r2").counted_by, "r2");
        // A listing that changes nothing in the mark writes nothing.
        assert_eq!(CountedMark::changed(Some(&after), &here, "r2"), None);
        assert_eq!(
            CountedMark::changed(Some(&another), &here, "r2"),
            Some(after.clone())
        );
        // Only a text another run staged or archived keeps this run's listing in its mark.
        let own = staged("r2", None);
        let others = staged("r1", None);
        assert_eq!(CountedMark::staged_by_another("r2", None, Some(&own)), None);
        assert_eq!(
            CountedMark::staged_by_another("r2", None, Some(&others)),
            Some("r1")
        );
        assert_eq!(
            CountedMark::staged_by_another("r2", Some(&by_earlier), None),
            Some(by_earlier.run.as_str())
        );
        assert_eq!(CountedMark::staged_by_another("r2", None, None), None);
        // Archived or staged by an earlier run, listed by this one elsewhere: known by the mark.
        let relisted = mark("r1", place("r2", None, 1));
        assert_eq!(
            Listing::classify(&here, Some(&by_earlier), None, Some(&relisted)),
            Listing::Again
        );
        assert_eq!(
            Listing::classify(&here, None, Some(&earlier), Some(&relisted)),
            Listing::Again
        );
    }

    #[test]
    fn a_long_window_is_listed_a_day_at_a_time() {
        let at = |t: &str| t.parse::<DateTime<Utc>>().unwrap();
        let until = at("2026-11-29T02:00:00Z");
        let mut from = at("2026-11-26T00:00:00Z");
        let mut parts = Vec::new();
        while from < until {
            let (start, end) = listing_window(from, until);
            assert!(end - start <= MAX_LISTING_WINDOW);
            parts.push((start, end));
            from = end;
        }
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0].0, at("2026-11-26T00:00:00Z"));
        assert_eq!(parts[3], (at("2026-11-29T00:00:00Z"), until));
    }

    #[test]
    fn import_calls_hold_one_target_and_at_most_the_batch() {
        let copies: Vec<(char, u32)> = "abababa".chars().zip(0..).collect();
        let calls = import_calls(copies, |c| c.0, 3);
        let shape: Vec<(char, Vec<u32>)> = calls
            .into_iter()
            .map(|(target, copies)| (target, copies.into_iter().map(|c| c.1).collect()))
            .collect();
        assert_eq!(
            shape,
            [('a', vec![0, 2, 4]), ('a', vec![6]), ('b', vec![1, 3, 5])]
        );
        assert!(import_calls(Vec::<u8>::new(), |c| *c, 50).is_empty());
    }

    #[test]
    fn only_items_an_earlier_attempt_had_are_looked_up() {
        let item = StagedItem {
            key: "k".into(),
            run: "r2".into(),
            message: crate::testing::message(&crate::testing::sms_record()),
            attachment_chunks: Vec::new(),
            delivered_to: Vec::new(),
            staged_at: None,
            listed: None,
        };
        assert!(!may_be_delivered(&item, "r2", (0, 5), None));
        assert!(
            may_be_delivered(&item, "r3", (0, 5), None),
            "an earlier run's"
        );
        // A step of r2 began uploading the items before page 1, position 2.
        assert!(may_be_delivered(&item, "r2", (0, 900), Some((1, 2))));
        assert!(may_be_delivered(&item, "r2", (1, 1), Some((1, 2))));
        assert!(!may_be_delivered(&item, "r2", (1, 2), Some((1, 2))));
        assert!(!may_be_delivered(&item, "r2", (2, 0), Some((1, 2))));
    }

    #[test]
    fn lanes_never_hand_out_one_key_twice_at_once_and_lose_nothing() {
        let items: Vec<(char, u32)> = "aaaaabbbcd"
            .chars()
            .enumerate()
            .map(|(n, c)| (c, n as u32))
            .collect();
        // Every item its own group: one at a time.
        let mut lanes = Lanes::new(items.clone(), |item| item.0, |item| item.1);
        let mut in_flight: Vec<(char, (char, u32))> = Vec::new();
        let mut done = Vec::new();
        let mut round = 0;
        loop {
            while in_flight.len() < 3 {
                let Some(mut group) = lanes.take() else { break };
                assert_eq!(group.len(), 1, "{group:?}");
                let taken = group.remove(0);
                assert!(
                    in_flight.iter().all(|(key, _)| *key != taken.0),
                    "{taken:?} while {in_flight:?}"
                );
                in_flight.push(taken);
            }
            if in_flight.is_empty() {
                break;
            }
            // Finish the oldest, or the newest every other round: out of order.
            round += 1;
            let (key, item) = in_flight.remove(if round % 2 == 0 {
                0
            } else {
                in_flight.len() - 1
            });
            let finished = lanes.release(&key);
            done.push(item);
            // Finished exactly when its last item is done.
            let left = items.iter().filter(|i| i.0 == key).count();
            let seen = done.iter().filter(|i| i.0 == key).count();
            assert_eq!(finished, seen == left, "{key}");
        }
        assert!(!lanes.has_ready());
        // Each key's items in their order.
        let a: Vec<u32> = done.iter().filter(|i| i.0 == 'a').map(|i| i.1).collect();
        assert_eq!(a, [0, 1, 2, 3, 4]);
        done.sort_by_key(|i| i.1);
        assert_eq!(done, items);
        let mut empty = Lanes::new(Vec::<u8>::new(), |i| *i, |i| *i);
        assert!(empty.take().is_none());
    }

    #[test]
    fn lanes_start_with_the_keys_that_have_the_most_items() {
        let items = [
            ('a', 1),
            ('b', 2),
            ('b', 3),
            ('c', 4),
            ('c', 5),
            ('c', 6),
            ('d', 7),
        ];
        let mut lanes = Lanes::new(items, |item| item.0, |item| item.1);
        let first: Vec<char> =
            std::iter::from_fn(|| lanes.take().map(|group| group[0].0)).collect();
        assert_eq!(first, ['c', 'b', 'a', 'd']);
    }

    #[test]
    fn a_group_is_taken_together_from_the_keys_with_none_in_flight() {
        // (mailbox, item): item 7 has a copy in a, b and c; item 8 in b and d.
        let copies = [
            ('a', 1),
            ('a', 7),
            ('b', 2),
            ('b', 7),
            ('b', 8),
            ('c', 7),
            ('d', 8),
            ('d', 3),
        ];
        let mut lanes = Lanes::new(copies, |copy| copy.0, |copy| copy.1);
        // b has the most copies: its turn first. Its 2 is in no other mailbox.
        assert_eq!(lanes.take(), Some(vec![('b', ('b', 2))]));
        // a's 1 alone; a is busy now.
        assert_eq!(lanes.take(), Some(vec![('a', ('a', 1))]));
        // d's 8 has a copy in b, busy: d's goes alone.
        assert_eq!(lanes.take(), Some(vec![('d', ('d', 8))]));
        // c's 7 has copies in a and b, both busy: alone.
        assert_eq!(lanes.take(), Some(vec![('c', ('c', 7))]));
        assert_eq!(lanes.take(), None);
        // a and b free again, a first: a's 7 goes with b's 7, taken out of b's turn; b's 8
        // waits for b.
        assert!(!lanes.release(&'b'));
        assert!(!lanes.release(&'a'));
        assert!(lanes.release(&'c'));
        assert_eq!(lanes.take(), Some(vec![('a', ('a', 7)), ('b', ('b', 7))]));
        assert_eq!(lanes.take(), None, "a and b busy, c finished, d busy");
        assert!(!lanes.release(&'d'));
        assert_eq!(lanes.take(), Some(vec![('d', ('d', 3))]));
        assert!(!lanes.all_taken());
        assert!(lanes.release(&'a'));
        assert!(!lanes.release(&'b'));
        assert_eq!(lanes.take(), Some(vec![('b', ('b', 8))]));
        assert!(lanes.all_taken());
        assert!(lanes.release(&'b'));
        assert!(lanes.release(&'d'));
        assert!(!lanes.has_ready());
    }
}
