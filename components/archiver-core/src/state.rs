//! The shared state in the key-value store: its key layout and its typed records.
//!
//! No path scans all keys (`get-keys` returns the whole store): explicit index keys list what
//! exists. Values stay small: large ones are split into chunks of at most [`CHUNK_BYTES`], read
//! through a pointer key written last, so a reader sees the old value or the new one, never a mix.
//!
//! | key | value |
//! | --- | --- |
//! | `connectors` | JSON list of connector ids |
//! | `connector/{id}` | the [`Connector`] |
//! | `connector/{id}/mapping` | [`MappingPointer`] to the mapping in effect |
//! | `connector/{id}/mapping/{version}/{n}` | chunk `n` of that version's CSV |
//! | `connector/{id}/runs` | JSON list of run ids, oldest first |
//! | `connector/{id}/health` | [`HealthRecord`] |
//! | `run/{id}/{run}` | the [`Run`] |
//! | `run/{id}/{run}/not-imported/{n}` | page `n` of the [`NotImported`] records of the run's fetch |
//! | `run/{id}/{run}/not-imported-at-import/{n}` | page `n` of those of its import |
//! | `run/{id}/{run}/items/{n}` | page `n` of the item keys the run works on |
//! | `connector/{id}/watermark` | end of the last window staged whole (RFC 3339) |
//! | `stage/{id}/{item}` | a [`StagedItem`] waiting for delivery, sealed (see [`Sealing`]) |
//! | `stage/{id}/{item}/{attachment}/{n}` | chunk `n` of an attachment's bytes, sealed |
//! | `archived/{id}/{item}` | an [`ArchivedItem`]: every copy delivered, staging purged |
//! | `connector/{id}/pending` | page count of the item keys kept staged for a later run |
//! | `connector/{id}/pending/{n}` | page `n` of those keys |
//! | `connector/{id}/folder/{account}` | the archive folder's mailbox id in a destination account |
//! | `connector/{id}/lease` | the [`crate::lease::Lease`] of the run working on the connector |
//! | `counted/{id}/{item}` | the [`CountedMark`] of a text no run could stage (invalid, or an attachment that did not match), or listed by another run than the one that staged it: who counted it in its day, where it was listed last |
//! | `destination/token` | the destination's access token, sealed (Graph) |
//! | `timer/last-failure` | the [`TimerFailure`] of the last timer event that could not reach the app |
//!
//! A page is a JSON array of at most [`CHUNK_BYTES`]. A run's pages are counted in the run's
//! [`crate::runs::Progress`]: a step writes its new pages past the count and then the run record
//! with the new count, so the run record is the step's one commit and a step done again after a
//! crash overwrites its own invisible pages instead of adding twice.
//!
//! A run's fetch steps and import steps go on at once, each committing the run record by
//! compare-and-swap with [`crate::merge`] ([`State::commit_run`]): each side writes only its own
//! checkpoint and its own lists (the fetch the item pages and its not-imported pages, the import
//! its not-imported pages), and the figures add up. The pending list is appended to by either
//! side (a page count reserved by compare-and-swap, then the pages), so its readers skip a page
//! a writer stopped before writing: what that page held is carried over again by the run that
//! takes over.

use crate::timer::{TIMER_FAILURE_KEY, TimerFailure};

/// Where the destination's access token is kept, sealed.
const DESTINATION_TOKEN_KEY: &str = "destination/token";
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::connector::Connector;
use crate::digest::sha256_hex;
use crate::mapping::{MappingTable, parse_mapping_csv};
use crate::merge::merge;
use crate::phone::Region;
use crate::pipeline::{ArchivedItem, CountedMark, StagedItem};
pub use crate::runs::Side;
use crate::runs::{HealthRecord, NotImported, Run};
use crate::secrets::{NONCE_BYTES, SEAL_OVERHEAD, SecretKey, open_bytes, seal_bytes};

/// Largest value written, so any backend (DynamoDB caps at 400 KB) takes it.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Plaintext bytes per staged chunk, so that the sealed chunk stays within [`CHUNK_BYTES`].
pub const STAGED_CHUNK_BYTES: usize = CHUNK_BYTES - SEAL_OVERHEAD;

/// Seals staged data at rest with the `staging_key`: every value is bound to its own key (as the
/// AEAD's associated data), so a value moved or swapped to another key does not open.
pub struct Sealing<'a> {
    pub key: &'a SecretKey,
    /// A fresh random nonce for every sealing.
    pub nonce: &'a dyn Fn() -> Result<[u8; NONCE_BYTES], String>,
}

impl Sealing<'_> {
    fn seal(&self, owner: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let nonce = (self.nonce)().map_err(|e| StoreError(format!("no nonce: {e}")))?;
        Ok(seal_bytes(self.key, nonce, owner, plaintext))
    }

    fn open(&self, owner: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        open_bytes(self.key, owner, sealed)
            .map_err(|e| StoreError(format!("staged value {owner}: {e}")))
    }
}

/// A failure of the store itself, or a record it holds that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key-value store: {0}")]
pub struct StoreError(pub String);

/// What [`KeyValue::update`] makes of a key's value (`None`: no value).
pub type Change<'a> = dyn FnMut(Option<&[u8]>) -> Result<Vec<u8>, StoreError> + 'a;

/// How [`KeyValue::update`] tells whether a value it swapped in landed, from the key read back
/// after a swap whose answer it cannot trust: `landed(read_back, written)`. It must hold when
/// the write landed, also when another writer has since changed the value over it.
pub type Landed<'a> = dyn Fn(Option<&[u8]>, &[u8]) -> bool + 'a;

/// How many write ids a record changed by compare-and-swap keeps (see [`KeyValue::update`]):
/// far more than the writers that can meet on one record between a swap and its read-back.
pub const WRITE_HISTORY: usize = 16;

/// The key-value operations the core needs; the component implements them on Spin's store.
pub trait KeyValue {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Sets many keys, in one round trip where the store can. Not atomic: a failure may leave
    /// some set.
    fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        entries
            .iter()
            .try_for_each(|(key, value)| self.set(key, value))
    }

    /// Deletes many keys, in one round trip where the store can. Not atomic either.
    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        keys.iter().try_for_each(|key| self.delete(key))
    }

    /// Sets `key` to what `change` makes of its value, by compare-and-swap: when another writer
    /// changed the value meanwhile, `change` is asked again with the new value. Answers the
    /// value written. A store whose swap may answer "failed" for a write that landed (Spin's
    /// Redis store answers so to every swap) reads the key back and asks `landed` instead of
    /// trying again blind. A store without other writers may read and write plainly (the
    /// default).
    fn update(
        &self,
        key: &str,
        change: &mut Change<'_>,
        landed: &Landed<'_>,
    ) -> Result<Vec<u8>, StoreError> {
        let _ = landed;
        let value = change(self.get(key)?.as_deref())?;
        self.set(key, &value)?;
        Ok(value)
    }

    /// An id no other write of any writer has, for [`Landed`] checks. The default is unique
    /// within this process, which is enough for a store only this process writes; a shared
    /// store's implementation gives a random one.
    fn write_id(&self) -> String {
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("local-{n:x}")
    }
}

/// `history` with `id` added last, the oldest dropped past [`WRITE_HISTORY`].
pub fn with_write(history: &[String], id: &str) -> Vec<String> {
    let keep = history.len().min(WRITE_HISTORY - 1);
    let mut writes = history[history.len() - keep..].to_vec();
    writes.push(id.to_string());
    writes
}

/// The pending list's page count as stored: with the ids of its last writes (a bare number
/// before they were kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PendingCountStored")]
struct PendingCount {
    pages: usize,
    writes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PendingCountStored {
    Bare(usize),
    Kept {
        pages: usize,
        #[serde(default)]
        writes: Vec<String>,
    },
}

impl From<PendingCountStored> for PendingCount {
    fn from(stored: PendingCountStored) -> PendingCount {
        match stored {
            PendingCountStored::Bare(pages) => PendingCount {
                pages,
                writes: Vec::new(),
            },
            PendingCountStored::Kept { pages, writes } => PendingCount { pages, writes },
        }
    }
}

/// Where the mapping in effect lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingPointer {
    pub version: u64,
    pub chunks: usize,
    pub sha256: String,
    pub entries: usize,
    pub uploaded_at: DateTime<Utc>,
}

/// `merge(base, mine, current)` of three run records.
fn merged_run(base: &Run, mine: &Run, current: &Run) -> Result<Run, StoreError> {
    let value = |run: &Run| {
        serde_json::to_value(run).map_err(|e| StoreError(format!("run {}: {e}", run.id)))
    };
    let merged = merge(&value(base)?, &value(mine)?, &value(current)?);
    serde_json::from_value(merged).map_err(|e| StoreError(format!("run {}: {e}", mine.id)))
}

/// `ended` with its items to carry over being those this writer listed since `base` (in `run`):
/// the writer that ended the run carried over the rest, and no one imports them now.
fn listed_since(base: &Run, run: &Run, ended: &Run) -> Run {
    let mut listed = ended.clone();
    listed.progress.imported_pages = base.progress.item_pages;
    listed.progress.imported_position = 0;
    listed.progress.item_pages = run.progress.item_pages;
    listed
}

/// `items` as JSON arrays of at most [`CHUNK_BYTES`] each (none for no items).
fn pages_of<T: Serialize>(items: &[T]) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut pages: Vec<Vec<u8>> = Vec::new();
    let mut page: Vec<u8> = b"[".to_vec();
    for item in items {
        let bytes = serde_json::to_vec(item).map_err(|e| StoreError(e.to_string()))?;
        if page.len() > 1 && page.len() + bytes.len() + 2 > CHUNK_BYTES {
            page.push(b']');
            pages.push(std::mem::replace(&mut page, b"[".to_vec()));
        }
        if page.len() > 1 {
            page.push(b',');
        }
        page.extend_from_slice(&bytes);
    }
    if page.len() > 1 {
        page.push(b']');
        pages.push(page);
    }
    Ok(pages)
}

/// Typed access to the state.
pub struct State<'a, K: KeyValue> {
    kv: &'a K,
}

const CONNECTORS: &str = "connectors";

fn connector_key(id: &str) -> String {
    format!("connector/{id}")
}

fn mapping_key(id: &str) -> String {
    format!("connector/{id}/mapping")
}

fn chunk_key(id: &str, version: u64, n: usize) -> String {
    format!("connector/{id}/mapping/{version}/{n}")
}

fn runs_key(id: &str) -> String {
    format!("connector/{id}/runs")
}

fn health_key(id: &str) -> String {
    format!("connector/{id}/health")
}

fn run_key(id: &str, run: &str) -> String {
    format!("run/{id}/{run}")
}

fn not_imported_key(id: &str, run: &str) -> String {
    format!("run/{id}/{run}/not-imported")
}

fn import_not_imported_key(id: &str, run: &str) -> String {
    format!("run/{id}/{run}/not-imported-at-import")
}

/// How a commit of the run record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The run goes on (or this commit ended it).
    Written,
    /// Another writer had ended the run meanwhile: this writer's figures are in, the end
    /// stands, and what it added to the run's items is carried over for the next run.
    EndedByAnother,
}

impl<'a, K: KeyValue> State<'a, K> {
    pub fn new(kv: &'a K) -> Self {
        State { kv }
    }

    fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.kv.get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError(format!("record {key} is unreadable: {e}"))),
        }
    }

    fn write<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError(e.to_string()))?;
        self.kv.set(key, &bytes)
    }

    /// Writes `items` as pages `{key}/{first}`, `{key}/{first + 1}`, ... and returns how many
    /// pages it wrote (none for no items). The caller commits the new count.
    fn write_pages<T: Serialize>(
        &self,
        key: &str,
        first: usize,
        items: &[T],
    ) -> Result<usize, StoreError> {
        let pages = pages_of(items)?;
        for (n, page) in pages.iter().enumerate() {
            self.kv.set(&format!("{key}/{}", first + n), page)?;
        }
        Ok(pages.len())
    }

    fn read_page<T: DeserializeOwned>(&self, key: &str, n: usize) -> Result<Vec<T>, StoreError> {
        self.read(&format!("{key}/{n}"))?
            .ok_or_else(|| StoreError(format!("list {key}: page {n} is missing")))
    }

    pub fn connector_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.read(CONNECTORS)?.unwrap_or_default())
    }

    pub fn connector(&self, id: &str) -> Result<Option<Connector>, StoreError> {
        self.read(&connector_key(id))
    }

    pub fn connectors(&self) -> Result<Vec<Connector>, StoreError> {
        let mut connectors = Vec::new();
        for id in self.connector_ids()? {
            if let Some(connector) = self.connector(&id)? {
                connectors.push(connector);
            }
        }
        Ok(connectors)
    }

    /// Saves the record first and lists it second: a crash between leaves an unlisted record
    /// that the next save of the same id lists, never a listed id without a record.
    pub fn put_connector(&self, connector: &Connector) -> Result<(), StoreError> {
        self.write(&connector_key(&connector.id), connector)?;
        let mut ids = self.connector_ids()?;
        if !ids.contains(&connector.id) {
            ids.push(connector.id.clone());
            self.write(CONNECTORS, &ids)?;
        }
        Ok(())
    }

    /// Unlists first, then removes the record and its mapping. Run history stays for audit.
    pub fn delete_connector(&self, id: &str) -> Result<bool, StoreError> {
        let mut ids = self.connector_ids()?;
        let listed = ids.iter().any(|known| known == id);
        ids.retain(|known| known != id);
        if listed {
            self.write(CONNECTORS, &ids)?;
        }
        let existed = self.kv.get(&connector_key(id))?.is_some();
        if let Some(pointer) = self.read::<MappingPointer>(&mapping_key(id))? {
            self.kv.delete(&mapping_key(id))?;
            self.delete_chunks(id, pointer.version, pointer.chunks)?;
        }
        self.kv.delete(&connector_key(id))?;
        Ok(listed || existed)
    }

    fn delete_chunks(&self, id: &str, version: u64, chunks: usize) -> Result<(), StoreError> {
        for n in 0..chunks {
            self.kv.delete(&chunk_key(id, version, n))?;
        }
        Ok(())
    }

    pub fn mapping_pointer(&self, id: &str) -> Result<Option<MappingPointer>, StoreError> {
        self.read(&mapping_key(id))
    }

    /// The mapping in effect as CSV, checked against its digest. A replacement racing this read
    /// makes it start again from the new pointer, so it returns the old or the new mapping whole.
    pub fn mapping_csv(&self, id: &str) -> Result<Option<String>, StoreError> {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            let Some(pointer) = self.mapping_pointer(id)? else {
                return Ok(None);
            };
            if let Some(bytes) = self.read_chunks(id, &pointer)? {
                return String::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| StoreError(format!("mapping of {id} is not UTF-8")));
            }
            if self.mapping_pointer(id)?.as_ref() == Some(&pointer) {
                return Err(StoreError(format!("mapping of {id} is damaged")));
            }
        }
        Err(StoreError(format!(
            "mapping of {id} kept changing while it was read"
        )))
    }

    /// The chunks of one version, or `None` if they are gone or do not match the pointer.
    fn read_chunks(
        &self,
        id: &str,
        pointer: &MappingPointer,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut bytes = Vec::new();
        for n in 0..pointer.chunks {
            match self.kv.get(&chunk_key(id, pointer.version, n))? {
                Some(chunk) => bytes.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
        Ok((sha256_hex(&bytes) == pointer.sha256).then_some(bytes))
    }

    /// The mapping in effect, parsed.
    pub fn mapping(&self, id: &str, region: Region) -> Result<MappingTable, StoreError> {
        match self.mapping_csv(id)? {
            None => Ok(MappingTable::default()),
            Some(csv) => match MappingTable::from_stored_csv(&csv) {
                Some(table) => Ok(table),
                None => parse_mapping_csv(csv.as_bytes(), region)
                    .map_err(|e| StoreError(format!("stored mapping of {id}: {e}"))),
            },
        }
    }

    /// Replaces the mapping: the new version's chunks first, then the pointer (the one write a
    /// reader sees switch), then the old chunks. A reader that still holds the old pointer when
    /// its chunks go finds them missing or mismatched, and reads again: never a mix.
    pub fn replace_mapping(
        &self,
        id: &str,
        table: &MappingTable,
        now: DateTime<Utc>,
    ) -> Result<MappingPointer, StoreError> {
        let csv = table.to_csv();
        let previous = self.mapping_pointer(id)?;
        let version = previous.as_ref().map_or(1, |p| p.version + 1);
        let chunks: Vec<&[u8]> = csv.as_bytes().chunks(CHUNK_BYTES).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            self.kv.set(&chunk_key(id, version, n), chunk)?;
        }
        let pointer = MappingPointer {
            version,
            chunks: chunks.len(),
            sha256: sha256_hex(csv.as_bytes()),
            entries: table.len(),
            uploaded_at: now,
        };
        self.write(&mapping_key(id), &pointer)?;
        if let Some(previous) = previous {
            self.delete_chunks(id, previous.version, previous.chunks)?;
        }
        Ok(pointer)
    }

    pub fn run_ids(&self, id: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.read(&runs_key(id))?.unwrap_or_default())
    }

    pub fn run(&self, id: &str, run: &str) -> Result<Option<Run>, StoreError> {
        self.read(&run_key(id, run))
    }

    pub fn runs(&self, id: &str) -> Result<Vec<Run>, StoreError> {
        let mut runs = Vec::new();
        for run in self.run_ids(id)? {
            if let Some(run) = self.run(id, &run)? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// Saves a run, listing it under its connector the first time.
    pub fn put_run(&self, run: &Run) -> Result<(), StoreError> {
        self.write(&run_key(&run.connector, &run.id), run)?;
        let mut ids = self.run_ids(&run.connector)?;
        if !ids.contains(&run.id) {
            ids.push(run.id.clone());
            self.write(&runs_key(&run.connector), &ids)?;
        }
        Ok(())
    }

    /// Commits `run`, changed by this writer from `base` (the record as it last read or wrote
    /// it), over whatever the other side of the run committed meanwhile (see [`crate::merge`]).
    /// Both `base` and `run` become the record written. A run another writer ended stays ended.
    pub fn commit_run(&self, base: &mut Run, run: &mut Run) -> Result<Commit, StoreError> {
        let mut ended_by_another = false;
        let written = self.merge_run(base, run, &mut |current| {
            ended_by_another = current.is_some_and(|c| c.state.is_terminal());
            Ok(())
        })?;
        let commit = match ended_by_another && !base.state.is_terminal() {
            true => {
                self.carry_over(&listed_since(base, run, &written))?;
                Commit::EndedByAnother
            }
            false => Commit::Written,
        };
        *base = written.clone();
        *run = written;
        Ok(commit)
    }

    /// Writes `merge(base, run, current)` by compare-and-swap, the end of a run ended meanwhile
    /// kept; `before` is told the current record before each attempt, and may write what must
    /// precede the record.
    fn merge_run(
        &self,
        base: &Run,
        run: &Run,
        before: &mut dyn FnMut(Option<&Run>) -> Result<(), StoreError>,
    ) -> Result<Run, StoreError> {
        let key = run_key(&run.connector, &run.id);
        let write = self.kv.write_id();
        let landed = |read_back: Option<&[u8]>, _: &[u8]| {
            read_back
                .and_then(|bytes| serde_json::from_slice::<Run>(bytes).ok())
                .is_some_and(|now| now.writes.contains(&write))
        };
        let written = self.kv.update(
            &key,
            &mut |current| {
                let current: Option<Run> = current
                    .map(serde_json::from_slice)
                    .transpose()
                    .map_err(|e| StoreError(format!("record {key} is unreadable: {e}")))?;
                before(current.as_ref())?;
                let mut merged = match &current {
                    None => run.clone(),
                    Some(current) => {
                        let mut merged = merged_run(base, run, current)?;
                        if current.state.is_terminal() {
                            merged.state = current.state;
                            merged.finished_at = current.finished_at;
                            merged.error = current.error.clone();
                            merged.progress.phase = current.progress.phase;
                        }
                        merged
                    }
                };
                merged.writes = with_write(current.as_ref().map_or(&[], |c| &c.writes), &write);
                serde_json::to_vec(&merged).map_err(|e| StoreError(e.to_string()))
            },
            &landed,
        )?;
        serde_json::from_slice(&written)
            .map_err(|e| StoreError(format!("record {key} as merged is unreadable: {e}")))
    }

    /// Every record of items the run did not import, its fetch's and its import's, in the
    /// order they were made.
    pub fn not_imported(&self, run: &Run) -> Result<Vec<NotImported>, StoreError> {
        let mut all = Vec::new();
        let lists = [
            (
                not_imported_key(&run.connector, &run.id),
                run.progress.not_imported_pages,
            ),
            (
                import_not_imported_key(&run.connector, &run.id),
                run.progress.import_not_imported_pages,
            ),
        ];
        for (key, pages) in lists {
            for n in 0..pages {
                all.extend(self.read_page::<NotImported>(&key, n)?);
            }
        }
        all.sort_by_key(|record| record.at);
        Ok(all)
    }

    /// Adds records to the list of the run's `side`: written past its page count, which the
    /// caller commits with the run record.
    pub fn append_not_imported(
        &self,
        run: &mut Run,
        side: Side,
        records: &[NotImported],
    ) -> Result<(), StoreError> {
        let (key, pages) = match side {
            Side::Fetch => (
                not_imported_key(&run.connector, &run.id),
                &mut run.progress.not_imported_pages,
            ),
            Side::Import => (
                import_not_imported_key(&run.connector, &run.id),
                &mut run.progress.import_not_imported_pages,
            ),
        };
        *pages += self.write_pages(&key, *pages, records)?;
        Ok(())
    }

    /// The mailbox id of the folder named `folder` in a destination account, as found before
    /// (a cache entry for another folder name, from before a rename, does not count).
    pub fn cached_folder(
        &self,
        id: &str,
        account: &str,
        folder: &str,
    ) -> Result<Option<String>, StoreError> {
        let cached: Option<(String, String)> = self.read(&folder_key(id, account))?;
        Ok(cached.and_then(|(name, mailbox)| (name == folder).then_some(mailbox)))
    }

    pub fn cache_folder(
        &self,
        id: &str,
        account: &str,
        folder: &str,
        mailbox: &str,
    ) -> Result<(), StoreError> {
        self.write(&folder_key(id, account), &(folder, mailbox))
    }

    pub fn forget_folder(&self, id: &str, account: &str) -> Result<(), StoreError> {
        self.kv.delete(&folder_key(id, account))
    }

    /// The destination's access token as kept between steps, if it opens with the key.
    pub fn destination_token<T: DeserializeOwned>(
        &self,
        sealing: &Sealing<'_>,
    ) -> Result<Option<T>, StoreError> {
        let Some(sealed) = self.kv.get(DESTINATION_TOKEN_KEY)? else {
            return Ok(None);
        };
        // A token sealed with an earlier key is fetched anew.
        let Ok(plain) = sealing.open(DESTINATION_TOKEN_KEY, &sealed) else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&plain).ok())
    }

    pub fn put_destination_token<T: Serialize>(
        &self,
        token: &T,
        sealing: &Sealing<'_>,
    ) -> Result<(), StoreError> {
        let plain = serde_json::to_vec(token).map_err(|e| StoreError(e.to_string()))?;
        self.kv.set(
            DESTINATION_TOKEN_KEY,
            &sealing.seal(DESTINATION_TOKEN_KEY, &plain)?,
        )
    }

    pub fn health(&self, id: &str) -> Result<HealthRecord, StoreError> {
        Ok(self.read(&health_key(id))?.unwrap_or_default())
    }

    pub fn put_health(&self, id: &str, health: &HealthRecord) -> Result<(), StoreError> {
        self.write(&health_key(id), health)
    }

    /// The [`CountedMark`] of a text: who counted it in its day and where a run listed it last,
    /// where the text's own staged or archived record cannot say.
    pub fn counted_mark(&self, id: &str, item: &str) -> Result<Option<CountedMark>, StoreError> {
        Ok(self
            .kv
            .get(&counted_key(id, item))?
            .map(|bytes| CountedMark::decode(&bytes)))
    }

    pub fn put_counted_mark(
        &self,
        id: &str,
        item: &str,
        mark: &CountedMark,
    ) -> Result<(), StoreError> {
        self.write(&counted_key(id, item), mark)
    }

    /// The last timer event that could not reach the app, if no event got through since.
    pub fn timer_failure(&self) -> Result<Option<TimerFailure>, StoreError> {
        self.read(TIMER_FAILURE_KEY)
    }

    pub fn put_timer_failure(&self, failure: &TimerFailure) -> Result<(), StoreError> {
        self.write(TIMER_FAILURE_KEY, failure)
    }

    pub fn clear_timer_failure(&self) -> Result<(), StoreError> {
        self.kv.delete(TIMER_FAILURE_KEY)
    }
}

fn folder_key(id: &str, account: &str) -> String {
    format!("connector/{id}/folder/{account}")
}

fn watermark_key(id: &str) -> String {
    format!("connector/{id}/watermark")
}

fn run_items_key(id: &str, run: &str) -> String {
    format!("run/{id}/{run}/items")
}

fn staged_key(id: &str, item: &str) -> String {
    format!("stage/{id}/{item}")
}

fn attachment_chunk_key(id: &str, item: &str, attachment: usize, n: usize) -> String {
    format!("stage/{id}/{item}/{attachment}/{n}")
}

fn pending_key(id: &str) -> String {
    format!("connector/{id}/pending")
}

fn counted_key(id: &str, item: &str) -> String {
    format!("counted/{id}/{item}")
}

fn archived_key(id: &str, item: &str) -> String {
    format!("archived/{id}/{item}")
}

impl<K: KeyValue> State<'_, K> {
    pub fn watermark(&self, id: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(&watermark_key(id))
    }

    pub fn set_watermark(&self, id: &str, until: DateTime<Utc>) -> Result<(), StoreError> {
        self.write(&watermark_key(id), &until)
    }

    /// Page `n` of the item keys the run works on.
    pub fn run_item_page(&self, run: &Run, n: usize) -> Result<Vec<String>, StoreError> {
        self.read_page(&run_items_key(&run.connector, &run.id), n)
    }

    /// Adds item keys to the run, past its page count, which the caller commits.
    pub fn append_run_items(&self, run: &mut Run, keys: &[String]) -> Result<(), StoreError> {
        let key = run_items_key(&run.connector, &run.id);
        run.progress.item_pages += self.write_pages(&key, run.progress.item_pages, keys)?;
        Ok(())
    }

    pub fn staged(
        &self,
        id: &str,
        item: &str,
        sealing: &Sealing<'_>,
    ) -> Result<Option<StagedItem>, StoreError> {
        let Some(sealed) = self.kv.get(&staged_key(id, item))? else {
            return Ok(None);
        };
        let plain = sealing.open(&format!("{id}/{item}"), &sealed)?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| StoreError(format!("staged item {item} is unreadable: {e}")))
    }

    /// Whether an item is staged (without opening it).
    pub fn is_staged(&self, id: &str, item: &str) -> Result<bool, StoreError> {
        Ok(self.kv.get(&staged_key(id, item))?.is_some())
    }

    /// Stages an item, sealed: its attachments' chunks first, the record last, so a record
    /// always has its bytes.
    pub fn stage(
        &self,
        id: &str,
        item: &StagedItem,
        attachments: &[Vec<u8>],
        sealing: &Sealing<'_>,
    ) -> Result<(), StoreError> {
        for (index, bytes) in attachments.iter().enumerate() {
            for (n, chunk) in bytes.chunks(STAGED_CHUNK_BYTES).enumerate() {
                self.stage_chunk(id, &item.key, index, n, chunk, sealing)?;
            }
        }
        self.update_staged(id, item, sealing)
    }

    /// Stages one chunk (at most [`STAGED_CHUNK_BYTES`]) of an item's attachment, for bytes
    /// that arrive piece by piece; the item's record is written last with [`Self::update_staged`].
    pub fn stage_chunk(
        &self,
        id: &str,
        item: &str,
        attachment: usize,
        n: usize,
        chunk: &[u8],
        sealing: &Sealing<'_>,
    ) -> Result<(), StoreError> {
        if chunk.len() > STAGED_CHUNK_BYTES {
            return Err(StoreError(format!(
                "chunk of {} bytes is too large",
                chunk.len()
            )));
        }
        let key = attachment_chunk_key(id, item, attachment, n);
        self.kv.set(&key, &sealing.seal(&key, chunk)?)
    }

    /// Items an import kept staged (the destination failed for a copy), for the next run to
    /// take over: a page count and pages, appended to and cleared as a whole, never rewritten.
    pub fn pending_pages(&self, id: &str) -> Result<usize, StoreError> {
        Ok(self
            .read::<PendingCount>(&pending_key(id))?
            .map_or(0, |count| count.pages))
    }

    /// Page `n` of the list; a page whose writer stopped before writing it reads as empty (its
    /// items are carried over again, see the layout).
    pub fn pending_page(&self, id: &str, n: usize) -> Result<Vec<String>, StoreError> {
        Ok(self
            .read(&format!("{}/{n}", pending_key(id)))?
            .unwrap_or_default())
    }

    /// Adds keys; a key may end up listed twice, which the run taking them over tolerates.
    /// Either side of a run may append at once: the pages' places are reserved first.
    pub fn append_pending(&self, id: &str, keys: &[String]) -> Result<(), StoreError> {
        let pages = pages_of(keys)?;
        if pages.is_empty() {
            return Ok(());
        }
        let key = pending_key(id);
        let write = self.kv.write_id();
        let read = |bytes: &[u8]| -> Result<PendingCount, StoreError> {
            serde_json::from_slice(bytes)
                .map_err(|e| StoreError(format!("record {key} is unreadable: {e}")))
        };
        let landed = |read_back: Option<&[u8]>, _: &[u8]| {
            read_back
                .and_then(|bytes| read(bytes).ok())
                .is_some_and(|now| now.writes.contains(&write))
        };
        let reserved = self.kv.update(
            &key,
            &mut |current| {
                let count = current.map(read).transpose()?.unwrap_or_default();
                let next = PendingCount {
                    pages: count.pages + pages.len(),
                    writes: with_write(&count.writes, &write),
                };
                serde_json::to_vec(&next).map_err(|e| StoreError(e.to_string()))
            },
            &landed,
        )?;
        let end = read(&reserved)?.pages;
        let first = end - pages.len();
        for (n, page) in pages.iter().enumerate() {
            self.kv.set(&format!("{key}/{}", first + n), page)?;
        }
        Ok(())
    }

    /// Adds the items of `run` its import has not reached to the pending list, a page at a
    /// time, for the next run to take over.
    pub fn carry_over(&self, run: &Run) -> Result<(), StoreError> {
        let progress = &run.progress;
        for n in progress.imported_pages..progress.item_pages {
            let page = self.run_item_page(run, n)?;
            let skip = if n == progress.imported_pages {
                progress.imported_position.min(page.len())
            } else {
                0
            };
            self.append_pending(&run.connector, &page[skip..])?;
        }
        Ok(())
    }

    /// Ends `run` (this writer's view, changed from `base`) as failed with `error`: what it had
    /// not imported joins the pending list for the next run, then the run record is written
    /// over what the other side committed meanwhile. A run already ended stays as it ended.
    pub fn fail_run(
        &self,
        base: &Run,
        run: &mut Run,
        error: String,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut failed = run.clone();
        failed.progress.phase = crate::runs::Phase::Done;
        failed.state = crate::runs::RunState::Failed;
        failed.finished_at = Some(at);
        failed.error = Some(error);
        // Item pages carried over so far: the other side may list more before the swap wins.
        let mut carried_to: Option<usize> = None;
        let written = self.merge_run(base, &failed, &mut |current| {
            let mut reach = match current {
                None => run.clone(),
                Some(current) if current.state.is_terminal() => listed_since(base, run, current),
                // The record as it is about to be written: both sides' checkpoints.
                Some(current) => merged_run(base, run, current)?,
            };
            if let Some(to) = carried_to {
                reach.progress.imported_pages = to;
                reach.progress.imported_position = 0;
            }
            self.carry_over(&reach)?;
            carried_to = Some(reach.progress.item_pages.max(carried_to.unwrap_or(0)));
            Ok(())
        })?;
        *run = written;
        Ok(())
    }

    /// Empties the list (count first, so a crash leaves it empty with some unread pages). Only
    /// the step that takes the list over clears it, before the run's import begins.
    pub fn clear_pending(&self, id: &str) -> Result<(), StoreError> {
        let pages = self.pending_pages(id)?;
        if pages == 0 {
            return Ok(());
        }
        self.write(&pending_key(id), &0usize)?;
        for n in 0..pages {
            self.kv.delete(&format!("{}/{n}", pending_key(id)))?;
        }
        Ok(())
    }

    pub fn update_staged(
        &self,
        id: &str,
        item: &StagedItem,
        sealing: &Sealing<'_>,
    ) -> Result<(), StoreError> {
        let plain = serde_json::to_vec(item).map_err(|e| StoreError(e.to_string()))?;
        let sealed = sealing.seal(&format!("{id}/{}", item.key), &plain)?;
        self.kv.set(&staged_key(id, &item.key), &sealed)
    }

    /// Chunk `n` of a staged item's attachment `attachment`.
    pub fn staged_chunk(
        &self,
        id: &str,
        item: &StagedItem,
        attachment: usize,
        n: usize,
        sealing: &Sealing<'_>,
    ) -> Result<Vec<u8>, StoreError> {
        let key = attachment_chunk_key(id, &item.key, attachment, n);
        let sealed = self.kv.get(&key)?.ok_or_else(|| {
            StoreError(format!(
                "staged item {}: chunk {attachment}/{n} missing",
                item.key
            ))
        })?;
        sealing.open(&key, &sealed)
    }

    /// The bytes of a staged item's attachments, in order (whole: for small items and tests).
    pub fn staged_attachments(
        &self,
        id: &str,
        item: &StagedItem,
        sealing: &Sealing<'_>,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut all = Vec::with_capacity(item.attachment_chunks.len());
        for (index, chunks) in item.attachment_chunks.iter().enumerate() {
            let mut bytes = Vec::new();
            for n in 0..*chunks {
                bytes.extend_from_slice(&self.staged_chunk(id, item, index, n, sealing)?);
            }
            all.push(bytes);
        }
        Ok(all)
    }

    /// Deletes attachment chunks of an item that will not be staged (its bytes were wrong):
    /// `chunks[n]` chunks of attachment `n`.
    pub fn discard_chunks(&self, id: &str, item: &str, chunks: &[usize]) -> Result<(), StoreError> {
        for (index, count) in chunks.iter().enumerate() {
            for n in 0..*count {
                self.kv.delete(&attachment_chunk_key(id, item, index, n))?;
            }
        }
        Ok(())
    }

    /// Marks an item archived, then purges its staging (record last, so a crash in between
    /// leaves it archived and at worst some unreferenced chunks).
    pub fn archive(
        &self,
        id: &str,
        item: &StagedItem,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.archive_many(id, &[item], at)
    }

    /// [`State::archive`] for many items at once: their archive records first, then their
    /// staged values, each in one batch. Stopped between the two, the items read as archived
    /// and still staged, which the import purges again.
    pub fn archive_many(
        &self,
        id: &str,
        items: &[&StagedItem],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut records = Vec::with_capacity(items.len());
        let mut staged = Vec::with_capacity(items.len());
        for item in items {
            let archived = ArchivedItem {
                run: item.run.clone(),
                at,
                listed: item.listed.clone(),
            };
            let value = serde_json::to_vec(&archived).map_err(|e| StoreError(e.to_string()))?;
            records.push((archived_key(id, &item.key), value));
            for (index, chunks) in item.attachment_chunks.iter().enumerate() {
                staged.extend((0..*chunks).map(|n| attachment_chunk_key(id, &item.key, index, n)));
            }
            staged.push(staged_key(id, &item.key));
        }
        self.kv.set_many(&records)?;
        self.kv.delete_many(&staged)
    }

    pub fn archived(&self, id: &str, item: &str) -> Result<Option<ArchivedItem>, StoreError> {
        self.read(&archived_key(id, item))
    }
}

/// A key-value store in memory, for tests and tools.
#[derive(Debug, Default)]
pub struct MemoryStore(std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>);

impl MemoryStore {
    pub fn keys(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl KeyValue for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let map = self.0.lock().map_err(|_| StoreError("poisoned".into()))?;
        Ok(map.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut map = self.0.lock().map_err(|_| StoreError("poisoned".into()))?;
        map.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut map = self.0.lock().map_err(|_| StoreError("poisoned".into()))?;
        map.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: usize) -> MappingTable {
        let mut csv = String::from("phone,email\n");
        for i in 0..rows {
            let mailbox =
                format!("user{i}.with.a.long.mailbox.name.for.chunking@subsidiary.acme.example");
            csv.push_str(&format!("+1202555{i:04},{mailbox}\n"));
        }
        parse_mapping_csv(csv.as_bytes(), Region::US).unwrap()
    }

    fn now() -> DateTime<Utc> {
        "2026-11-26T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_large_mapping_is_chunked_and_replaced_without_leftovers() {
        let store = MemoryStore::default();
        let state = State::new(&store);
        let big = table(4000);
        let pointer = state.replace_mapping("c", &big, now()).unwrap();
        assert!(pointer.chunks > 1, "{pointer:?}");
        assert!(
            store
                .keys()
                .iter()
                .all(|k| store.get(k).unwrap().unwrap().len() <= CHUNK_BYTES)
        );
        assert_eq!(state.mapping("c", Region::US).unwrap(), big);

        let small = table(3);
        state.replace_mapping("c", &small, now()).unwrap();
        assert_eq!(state.mapping("c", Region::US).unwrap(), small);
        let chunk_keys: Vec<String> = store
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("connector/c/mapping/"))
            .collect();
        assert_eq!(chunk_keys, ["connector/c/mapping/2/0"]);
    }

    #[test]
    fn a_reader_holding_an_old_pointer_never_gets_a_mix() {
        let store = MemoryStore::default();
        let state = State::new(&store);
        state.replace_mapping("c", &table(4000), now()).unwrap();
        let old = state.mapping_pointer("c").unwrap().unwrap();
        state.replace_mapping("c", &table(3900), now()).unwrap();
        // A chunk of the old version read now is gone; the reader must start again.
        assert_eq!(store.get(&chunk_key("c", old.version, 1)).unwrap(), None);
    }

    #[test]
    fn long_lists_are_paged_under_the_value_limit_and_committed_by_the_run() {
        let store = MemoryStore::default();
        let state = State::new(&store);
        let mut run = crate::testing::run("c", "r");
        let keys: Vec<String> = (0..20_000).map(|i| format!("{i:032x}")).collect();
        state.append_run_items(&mut run, &keys[..10]).unwrap();
        state.append_run_items(&mut run, &keys[10..]).unwrap();
        assert!(run.progress.item_pages > 3, "{:?}", run.progress);
        let mut read = Vec::new();
        for n in 0..run.progress.item_pages {
            read.extend(state.run_item_page(&run, n).unwrap());
        }
        assert_eq!(read, keys);
        assert!(
            store
                .keys()
                .iter()
                .all(|k| store.get(k).unwrap().unwrap().len() <= CHUNK_BYTES)
        );
        // Appending again from the committed count overwrites instead of adding.
        let committed = run.clone();
        let mut retried = committed.clone();
        state.append_run_items(&mut retried, &keys[..5]).unwrap();
        let mut again = committed.clone();
        state.append_run_items(&mut again, &keys[..5]).unwrap();
        assert_eq!(retried.progress, again.progress);
        assert_eq!(
            state
                .run_item_page(&again, again.progress.item_pages - 1)
                .unwrap(),
            keys[..5]
        );

        state.append_pending("c", &keys[..3]).unwrap();
        state.append_pending("c", &keys[1..5]).unwrap();
        assert_eq!(state.pending_pages("c").unwrap(), 2);
        assert_eq!(state.pending_page("c", 1).unwrap(), keys[1..5]);
        state.clear_pending("c").unwrap();
        assert_eq!(state.pending_pages("c").unwrap(), 0);
        assert!(
            !store
                .keys()
                .iter()
                .any(|k| k.starts_with("connector/c/pending/"))
        );
    }

    fn all_pending(state: &State<'_, impl KeyValue>) -> Vec<String> {
        let mut pending = Vec::new();
        for n in 0..state.pending_pages("c").unwrap() {
            pending.extend(state.pending_page("c", n).unwrap());
        }
        pending
    }

    #[test]
    fn the_fetch_and_the_import_commit_the_run_at_once_and_both_count() {
        let store = MemoryStore::default();
        let state = State::new(&store);
        let mut run = crate::testing::run("c", "r");
        run.state = crate::runs::RunState::Running;
        let keys: Vec<String> = (0..4).map(|i| format!("item-{i}")).collect();
        state.append_run_items(&mut run, &keys[..2]).unwrap();
        run.figures.fetched = 2;
        state.put_run(&run).unwrap();

        // Both read the record; the import imports the first page while the fetch lists more.
        let (mut fetch_base, mut import_base) = (run.clone(), run.clone());
        let (mut fetch, mut import) = (run.clone(), run.clone());
        state.append_run_items(&mut fetch, &keys[2..]).unwrap();
        fetch.figures.fetched += 2;
        fetch.progress.steps += 1;
        import.progress.imported_pages = 1;
        import.figures.imported += 2;
        import.progress.steps += 1;
        let record = |n: usize| NotImported {
            run: "r".into(),
            item_id: format!("m-{n}"),
            participant: None,
            target_user: None,
            reason: crate::runs::NotImportedReason::Unmapped,
            detail: String::new(),
            at: now() + chrono::Duration::seconds(n as i64),
        };
        state
            .append_not_imported(&mut fetch, Side::Fetch, &[record(2)])
            .unwrap();
        state
            .append_not_imported(&mut import, Side::Import, &[record(1)])
            .unwrap();

        assert_eq!(
            state.commit_run(&mut import_base, &mut import).unwrap(),
            Commit::Written
        );
        assert_eq!(
            state.commit_run(&mut fetch_base, &mut fetch).unwrap(),
            Commit::Written
        );
        let stored = state.run("c", "r").unwrap().unwrap();
        assert_eq!(stored, fetch, "the last writer holds the record as written");
        assert_eq!(fetch_base, fetch);
        assert_eq!(stored.progress.item_pages, 2);
        assert_eq!(stored.progress.imported_pages, 1);
        assert_eq!(stored.progress.steps, 2);
        assert_eq!((stored.figures.fetched, stored.figures.imported), (4, 2));
        let ids: Vec<String> = state
            .not_imported(&stored)
            .unwrap()
            .into_iter()
            .map(|r| r.item_id)
            .collect();
        assert_eq!(
            ids,
            ["m-1", "m-2"],
            "both sides' records, in the order made"
        );
    }

    #[test]
    fn on_a_store_that_answers_every_swap_failed_each_commit_counts_once() {
        use crate::swap::testing::TestSwap;
        let store = TestSwap::lying();
        let state = State::new(&store);
        let mut run = crate::testing::run("c", "r");
        run.state = crate::runs::RunState::Running;
        run.figures.fetched = 2;
        state.put_run(&run).unwrap();

        // The import commits between the fetch's read and its swap: the fetch's first write
        // does not land, and is made again over the import's.
        let (mut fetch_base, mut fetch) = (run.clone(), run.clone());
        fetch.figures.fetched += 2;
        let (mut import_base, mut import) = (run.clone(), run.clone());
        import.figures.imported += 2;
        *store.other.borrow_mut() = Some(Box::new(move |s: &MemoryStore| {
            let state = State::new(s);
            state.commit_run(&mut import_base, &mut import).unwrap();
        }));
        assert_eq!(
            state.commit_run(&mut fetch_base, &mut fetch).unwrap(),
            Commit::Written
        );
        let stored = state.run("c", "r").unwrap().unwrap();
        assert_eq!((stored.figures.fetched, stored.figures.imported), (4, 2));
        assert_eq!(stored.writes.len(), 2, "{:?}", stored.writes);
        assert_eq!(
            *store.swaps.borrow(),
            2,
            "the fetch's lost write made once more"
        );

        // Commits that land are never made again, however the store answers.
        for _ in 0..3 {
            fetch.figures.fetched += 1;
            state.commit_run(&mut fetch_base, &mut fetch).unwrap();
        }
        let stored = state.run("c", "r").unwrap().unwrap();
        assert_eq!(stored.figures.fetched, 7);
        assert_eq!(*store.swaps.borrow(), 5);

        state
            .append_pending("c", &["a".into(), "b".into()])
            .unwrap();
        state.append_pending("c", &["c".into()]).unwrap();
        assert_eq!(state.pending_pages("c").unwrap(), 2);
        assert_eq!(all_pending(&state), ["a", "b", "c"]);
    }

    #[test]
    fn a_pending_count_stored_as_a_bare_number_is_read() {
        let store = MemoryStore::default();
        store.set(&pending_key("c"), b"3").unwrap();
        assert_eq!(State::new(&store).pending_pages("c").unwrap(), 3);
    }

    #[test]
    fn a_run_the_import_fails_while_the_fetch_lists_more_loses_no_item() {
        let store = MemoryStore::default();
        let state = State::new(&store);
        let mut run = crate::testing::run("c", "r");
        run.state = crate::runs::RunState::Running;
        let keys: Vec<String> = (0..6).map(|i| format!("item-{i}")).collect();
        state.append_run_items(&mut run, &keys[..2]).unwrap();
        state.put_run(&run).unwrap();
        let (mut fetch_base, mut fetch) = (run.clone(), run.clone());
        let (import_base, mut import) = (run.clone(), run.clone());

        // The import fails the run having imported one item; the fetch, not knowing, lists
        // four more and commits.
        import.progress.imported_position = 1;
        state
            .fail_run(&import_base, &mut import, "mail server gone".into(), now())
            .unwrap();
        state.append_run_items(&mut fetch, &keys[2..]).unwrap();
        fetch.figures.fetched += 4;
        assert_eq!(
            state.commit_run(&mut fetch_base, &mut fetch).unwrap(),
            Commit::EndedByAnother
        );
        let stored = state.run("c", "r").unwrap().unwrap();
        assert_eq!(stored.state, crate::runs::RunState::Failed);
        assert_eq!(stored.error.as_deref(), Some("mail server gone"));
        assert_eq!(stored.figures.fetched, 4, "the fetch's figures are in");
        assert_eq!(
            all_pending(&state),
            keys[1..],
            "every item not imported is pending"
        );
    }

    #[test]
    fn a_failing_writer_carries_over_what_the_other_side_listed_before_its_swap() {
        let store = crate::swap::testing::TestSwap::truthful();
        let state = State::new(&store);
        let mut run = crate::testing::run("c", "r");
        run.state = crate::runs::RunState::Running;
        let keys: Vec<String> = (0..5).map(|i| format!("item-{i}")).collect();
        state.append_run_items(&mut run, &keys[..2]).unwrap();
        state.put_run(&run).unwrap();
        // Between the import's read and its swap, the fetch commits two more pages.
        let fetched = run.clone();
        *store.other.borrow_mut() = Some(Box::new(move |inner: &MemoryStore| {
            let state = State::new(inner);
            let (mut base, mut fetch) = (fetched.clone(), fetched);
            state
                .append_run_items(&mut fetch, &["item-2".to_string()])
                .unwrap();
            state
                .append_run_items(&mut fetch, &["item-3".to_string(), "item-4".to_string()])
                .unwrap();
            state.commit_run(&mut base, &mut fetch).unwrap();
        }));
        let (base, mut import) = (run.clone(), run.clone());
        state
            .fail_run(&base, &mut import, "mail server gone".into(), now())
            .unwrap();
        assert_eq!(import.progress.item_pages, 3);
        assert_eq!(import.state, crate::runs::RunState::Failed);
        assert_eq!(all_pending(&state), keys, "nothing listed is left out");
    }

    #[test]
    fn appends_to_the_pending_list_never_take_each_others_place() {
        let store = crate::swap::testing::TestSwap::truthful();
        let state = State::new(&store);
        state.append_pending("c", &["a".to_string()]).unwrap();
        // Another side appends between this one's read of the count and its swap.
        *store.other.borrow_mut() = Some(Box::new(|inner: &MemoryStore| {
            State::new(inner)
                .append_pending("c", &["b".to_string()])
                .unwrap()
        }));
        state.append_pending("c", &["c".to_string()]).unwrap();
        assert_eq!(all_pending(&state), ["a", "b", "c"]);
        // A page reserved but never written (its writer stopped) reads as empty.
        store.store.set("connector/c/pending", b"5").unwrap();
        state.append_pending("c", &["d".to_string()]).unwrap();
        assert_eq!(state.pending_pages("c").unwrap(), 6);
        assert_eq!(all_pending(&state), ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_failed_run_hands_what_it_had_not_imported_to_the_next() {
        let store = MemoryStore::default();
        let state = State::new(&store);
        let mut run = crate::testing::run("c", "r");
        let keys: Vec<String> = (0..5).map(|i| format!("item-{i}")).collect();
        state.append_run_items(&mut run, &keys).unwrap();
        run.progress.imported_position = 2;
        let base = run.clone();
        state
            .fail_run(&base, &mut run, "mail server down".into(), now())
            .unwrap();
        assert_eq!(run.state, crate::runs::RunState::Failed);
        assert_eq!(run.error.as_deref(), Some("mail server down"));
        assert_eq!(state.run("c", "r").unwrap().unwrap(), run, "recorded");
        let mut pending = Vec::new();
        for n in 0..state.pending_pages("c").unwrap() {
            pending.extend(state.pending_page("c", n).unwrap());
        }
        assert_eq!(pending, keys[2..]);
    }

    #[test]
    fn staged_items_are_sealed_at_rest_and_bound_to_their_keys() {
        use crate::testing::{message, sms_record};
        let store = MemoryStore::default();
        let state = State::new(&store);
        let key: SecretKey = "42".repeat(32).parse().unwrap();
        let counter = std::sync::atomic::AtomicU8::new(0);
        let nonce = || Ok([counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst); NONCE_BYTES]);
        let sealing = Sealing {
            key: &key,
            nonce: &nonce,
        };
        let attachment = b"SECRET-PHOTO-BYTES".repeat(20_000);
        let item = StagedItem {
            staged_at: None,
            listed: None,
            key: "k1".into(),
            run: "r1".into(),
            message: message(&sms_record()),
            attachment_chunks: vec![attachment.len().div_ceil(STAGED_CHUNK_BYTES)],
            delivered_to: vec![],
        };
        state
            .stage("c", &item, std::slice::from_ref(&attachment), &sealing)
            .unwrap();
        for k in store.keys() {
            let value = store.get(&k).unwrap().unwrap();
            assert!(value.len() <= CHUNK_BYTES, "{k}");
            let text = String::from_utf8_lossy(&value);
            assert!(
                !text.contains("Running 10 minutes late") && !text.contains("SECRET-PHOTO"),
                "{k}"
            );
        }
        assert_eq!(
            state.staged("c", "k1", &sealing).unwrap(),
            Some(item.clone())
        );
        assert_eq!(
            state.staged_attachments("c", &item, &sealing).unwrap(),
            [attachment]
        );

        // A chunk moved under another key does not open.
        let first = store.get("stage/c/k1/0/0").unwrap().unwrap();
        store.set("stage/c/k1/0/1", &first).unwrap();
        assert!(state.staged_attachments("c", &item, &sealing).is_err());
        let other: SecretKey = "43".repeat(32).parse().unwrap();
        let wrong = Sealing {
            key: &other,
            nonce: &nonce,
        };
        assert!(state.staged("c", "k1", &wrong).is_err());
    }

    #[test]
    fn deleting_a_connector_removes_it_and_its_mapping_but_keeps_runs() {
        let store = MemoryStore::default();
        let state = State::new(&store);
        let connector = Connector {
            id: "c".into(),
            display_name: "C".into(),
            network: "AT&T".into(),
            source_url: "https://a.example".into(),
            username: "u".into(),
            password_sealed: "sealed".into(),
            folder: "F".into(),
            automatic_mapping: true,
            enabled: true,
            account_id: "a".into(),
            organization: "o".into(),
            created_at: now(),
            updated_at: now(),
        };
        state.put_connector(&connector).unwrap();
        state.put_connector(&connector).unwrap();
        assert_eq!(state.connector_ids().unwrap(), ["c"]);
        state.replace_mapping("c", &table(2), now()).unwrap();
        assert!(state.delete_connector("c").unwrap());
        assert!(state.connectors().unwrap().is_empty());
        assert_eq!(store.keys(), ["connectors"]);
        assert_eq!(state.connector_ids().unwrap(), Vec::<String>::new());
        assert!(!state.delete_connector("c").unwrap());
    }
}
