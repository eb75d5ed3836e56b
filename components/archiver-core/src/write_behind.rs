//! Plain writes held back and sent to the store in batches, in the order they were made.
//!
//! Spin's SQLite store runs each `set` as its own transaction (and its own `fsync`s) while one
//! `set_many` is one transaction for all its pairs, so a fetch step that stages a page's
//! messages and attachment chunks one `set` at a time spends most of its time syncing the disk.
//! [`WriteBehind`] gathers a step's plain `set`s and sends them with one `set_many` per batch
//! (bounded in entries and bytes, so memory holds a few chunks at most).
//!
//! Order is what makes a step safe to redo after a crash, so it is kept exactly: every
//! operation other than a plain `set` (a delete, a compare-and-swap such as the page's item list
//! or the run record's commit) first sends everything held, and a key set twice is sent once, at
//! the place of its last `set`. The store therefore sees the same writes in the same order as
//! without batching, only grouped: a crash lands a prefix of them, as it would anyway. What was
//! never sent (a step that stopped before its next batch or commit) is as if never written, which
//! a step already survives. Reads see the held writes, so a text listed twice in one step is
//! known on its second listing.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::state::{Change, KeyValue, Landed, StoreError};

/// How much a batch may hold before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimit {
    pub entries: usize,
    pub bytes: usize,
}

impl BatchLimit {
    /// A few staged chunks (256 KiB each) or a page's worth of text records per transaction:
    /// large enough that syncing is paid once per batch, small enough for a component's memory
    /// and for one SQLite transaction.
    pub const STAGING: BatchLimit = BatchLimit {
        entries: 512,
        bytes: 4 << 20,
    };
}

/// A [`KeyValue`] over `store` that holds plain writes back and sends them in batches.
pub struct WriteBehind<'a, K: KeyValue> {
    store: &'a K,
    limit: BatchLimit,
    held: RefCell<Held>,
}

/// The writes not sent yet: in order, each key at the place of its last `set`.
#[derive(Default)]
struct Held {
    entries: Vec<Option<(String, Vec<u8>)>>,
    place: HashMap<String, usize>,
    count: usize,
    bytes: usize,
}

impl Held {
    fn hold(&mut self, key: &str, value: &[u8]) {
        if let Some(earlier) = self.place.remove(key)
            && let Some((key, value)) = self.entries[earlier].take()
        {
            self.count -= 1;
            self.bytes -= key.len() + value.len();
        }
        self.place.insert(key.to_string(), self.entries.len());
        self.entries.push(Some((key.to_string(), value.to_vec())));
        self.count += 1;
        self.bytes += key.len() + value.len();
    }

    fn get(&self, key: &str) -> Option<&[u8]> {
        let place = *self.place.get(key)?;
        self.entries[place]
            .as_ref()
            .map(|(_, value)| value.as_slice())
    }

    fn take(&mut self) -> Vec<(String, Vec<u8>)> {
        self.place.clear();
        self.count = 0;
        self.bytes = 0;
        std::mem::take(&mut self.entries)
            .into_iter()
            .flatten()
            .collect()
    }
}

impl<'a, K: KeyValue> WriteBehind<'a, K> {
    pub fn new(store: &'a K, limit: BatchLimit) -> WriteBehind<'a, K> {
        WriteBehind {
            store,
            limit,
            held: RefCell::default(),
        }
    }

    /// Sends every held write, in order, as one batch.
    pub fn flush(&self) -> Result<(), StoreError> {
        let entries = self.held.borrow_mut().take();
        if entries.is_empty() {
            return Ok(());
        }
        self.store.set_many(&entries)
    }

    /// How many writes are held, not sent yet.
    pub fn held(&self) -> usize {
        self.held.borrow().count
    }
}

impl<K: KeyValue> KeyValue for WriteBehind<'_, K> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = self.held.borrow().get(key) {
            return Ok(Some(value.to_vec()));
        }
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let full = {
            let mut held = self.held.borrow_mut();
            held.hold(key, value);
            held.count >= self.limit.entries || held.bytes >= self.limit.bytes
        };
        if full { self.flush() } else { Ok(()) }
    }

    fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        entries
            .iter()
            .try_for_each(|(key, value)| self.set(key, value))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.flush()?;
        self.store.delete(key)
    }

    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        self.flush()?;
        self.store.delete_many(keys)
    }

    fn update(
        &self,
        key: &str,
        change: &mut Change<'_>,
        landed: &Landed<'_>,
    ) -> Result<Vec<u8>, StoreError> {
        self.flush()?;
        self.store.update(key, change, landed)
    }

    fn write_id(&self) -> String {
        self.store.write_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;
    use std::cell::RefCell;

    /// A store that records each operation it is asked for.
    #[derive(Default)]
    struct Recording {
        store: MemoryStore,
        calls: RefCell<Vec<String>>,
    }

    impl KeyValue for Recording {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.store.get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.calls.borrow_mut().push(format!("set {key}"));
            self.store.set(key, value)
        }
        fn set_many(&self, entries: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
            let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
            self.calls
                .borrow_mut()
                .push(format!("set_many {}", keys.join(",")));
            entries.iter().try_for_each(|(k, v)| self.store.set(k, v))
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.calls.borrow_mut().push(format!("delete {key}"));
            self.store.delete(key)
        }
        fn update(
            &self,
            key: &str,
            change: &mut Change<'_>,
            _landed: &Landed<'_>,
        ) -> Result<Vec<u8>, StoreError> {
            self.calls.borrow_mut().push(format!("update {key}"));
            let value = change(self.store.get(key)?.as_deref())?;
            self.store.set(key, &value)?;
            Ok(value)
        }
    }

    const ROOMY: BatchLimit = BatchLimit {
        entries: 100,
        bytes: 1 << 20,
    };

    #[test]
    fn plain_writes_go_out_in_one_batch_in_their_order_before_the_commit() {
        let store = Recording::default();
        let batched = WriteBehind::new(&store, ROOMY);
        batched.set("chunk/1", b"c1").unwrap();
        batched.set("chunk/2", b"c2").unwrap();
        batched.set("record", b"r").unwrap();
        assert!(store.calls.borrow().is_empty(), "nothing is sent yet");
        assert_eq!(batched.held(), 3);
        // Held writes are read back before they are sent.
        assert_eq!(batched.get("record").unwrap().as_deref(), Some(&b"r"[..]));
        assert_eq!(store.get("record").unwrap(), None);
        batched
            .update("run", &mut |_| Ok(b"committed".to_vec()), &|_, _| true)
            .unwrap();
        assert_eq!(
            *store.calls.borrow(),
            ["set_many chunk/1,chunk/2,record", "update run"]
        );
        assert_eq!(batched.held(), 0);
    }

    #[test]
    fn a_key_set_again_is_sent_once_where_it_was_set_last() {
        let store = Recording::default();
        let batched = WriteBehind::new(&store, ROOMY);
        batched.set("record", b"first").unwrap();
        batched.set("chunk", b"c").unwrap();
        batched.set("record", b"second").unwrap();
        assert_eq!(batched.held(), 2);
        batched.flush().unwrap();
        // The later value must not land before the chunk it may refer to.
        assert_eq!(*store.calls.borrow(), ["set_many chunk,record"]);
        assert_eq!(
            store.get("record").unwrap().as_deref(),
            Some(&b"second"[..])
        );
    }

    #[test]
    fn a_delete_sends_what_was_held_before_it() {
        let store = Recording::default();
        let batched = WriteBehind::new(&store, ROOMY);
        batched.set("chunk", b"c").unwrap();
        batched.delete("chunk").unwrap();
        assert_eq!(*store.calls.borrow(), ["set_many chunk", "delete chunk"]);
        assert_eq!(batched.get("chunk").unwrap(), None);
    }

    #[test]
    fn a_full_batch_is_sent_at_once_by_entries_or_by_bytes() {
        let store = Recording::default();
        let by_entries = WriteBehind::new(
            &store,
            BatchLimit {
                entries: 2,
                bytes: 1 << 20,
            },
        );
        for key in ["a", "b", "c"] {
            by_entries.set(key, b"v").unwrap();
        }
        assert_eq!(*store.calls.borrow(), ["set_many a,b"]);
        assert_eq!(by_entries.held(), 1);

        let store = Recording::default();
        let by_bytes = WriteBehind::new(
            &store,
            BatchLimit {
                entries: 100,
                bytes: 10,
            },
        );
        by_bytes.set("k1", b"1234").unwrap();
        by_bytes.set("k2", b"12345678").unwrap();
        assert_eq!(*store.calls.borrow(), ["set_many k1,k2"]);
    }

    #[test]
    fn what_was_never_sent_is_not_in_the_store() {
        let store = Recording::default();
        {
            let batched = WriteBehind::new(&store, ROOMY);
            batched.set("chunk", b"c").unwrap();
        }
        assert_eq!(store.get("chunk").unwrap(), None);
        assert!(store.calls.borrow().is_empty());
    }
}
