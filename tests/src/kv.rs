//! Spin's key-value store on SQLite, in Spin's own table layout, so state written by one
//! invocation or component is read by the next exactly as with `spin up`'s default store.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};

const UPSERT: &str = "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
     ON CONFLICT (store, key) DO UPDATE SET value = excluded.value";
const DELETE: &str = "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2";

/// The store behind every label of one app (Spin's `.spin/sqlite_key_value.db`).
pub struct KvBackend {
    connection: Mutex<Connection>,
    /// Keys read under a watched prefix, in order (see [`KvBackend::watch_reads`]).
    watched: Mutex<Option<(String, Vec<String>)>>,
}

/// The host side of an open `store` (fermyon) or `bucket` (wasi) resource.
pub struct StoreHandle {
    pub label: String,
}

/// The host side of a `wasi:keyvalue/atomics.cas`: the key and what it held when made.
pub struct CasHandle {
    pub label: String,
    pub key: String,
    pub seen: Option<Vec<u8>>,
}

impl KvBackend {
    pub fn open(path: &Path) -> anyhow::Result<KvBackend> {
        let connection = Connection::open(path)
            .with_context(|| format!("opening key-value database {}", path.display()))?;
        // As Spin 3.5's `crates/key-value-spin` opens it: one connection, SQLite's default
        // journal (a rollback journal) and synchronous settings, rusqlite's busy timeout.
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS spin_key_value (
                 store TEXT NOT NULL,
                 key   TEXT NOT NULL,
                 value BLOB NOT NULL,
                 PRIMARY KEY (store, key)
             );",
        )?;
        Ok(KvBackend {
            connection: Mutex::new(connection),
            watched: Mutex::new(None),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> anyhow::Result<T> {
        let connection = self
            .connection
            .lock()
            .map_err(|_| anyhow::anyhow!("key-value database lock poisoned"))?;
        Ok(f(&connection)?)
    }

    /// From now on, records every read of a key starting with `prefix` (replacing what was
    /// recorded before).
    pub fn watch_reads(&self, prefix: &str) {
        if let Ok(mut watched) = self.watched.lock() {
            *watched = Some((prefix.to_string(), Vec::new()));
        }
    }

    /// The keys read under the watched prefix, in order.
    pub fn watched_reads(&self) -> Vec<String> {
        match self.watched.lock() {
            Ok(watched) => watched
                .as_ref()
                .map(|(_, keys)| keys.clone())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    pub fn get(&self, store: &str, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        if let Ok(mut watched) = self.watched.lock()
            && let Some((prefix, keys)) = watched.as_mut()
            && key.starts_with(prefix.as_str())
        {
            keys.push(key.to_string());
        }
        self.with(|c| {
            c.query_row(
                "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2",
                params![store, key],
                |row| row.get(0),
            )
            .optional()
        })
    }

    pub fn set(&self, store: &str, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.with(|c| c.execute(UPSERT, params![store, key, value]).map(drop))
    }

    pub fn delete(&self, store: &str, key: &str) -> anyhow::Result<()> {
        self.with(|c| c.execute(DELETE, params![store, key]).map(drop))
    }

    /// Sets many keys in one transaction, as Spin's SQLite store does a `wasi:keyvalue` batch.
    pub fn set_many(&self, store: &str, entries: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        self.in_transaction(|t| {
            let mut statement = t.prepare_cached(UPSERT)?;
            for (key, value) in entries {
                statement.execute(params![store, key, value])?;
            }
            Ok(())
        })
    }

    /// Deletes many keys in one transaction.
    pub fn delete_many(&self, store: &str, keys: &[String]) -> anyhow::Result<()> {
        self.in_transaction(|t| {
            let mut statement = t.prepare_cached(DELETE)?;
            for key in keys {
                statement.execute(params![store, key])?;
            }
            Ok(())
        })
    }

    fn in_transaction(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    ) -> anyhow::Result<()> {
        let mut connection = self
            .connection
            .lock()
            .map_err(|_| anyhow::anyhow!("key-value database lock poisoned"))?;
        let transaction = connection.transaction()?;
        f(&transaction)?;
        transaction.commit()?;
        Ok(())
    }

    /// Sets `key` to `value` if it still holds `expected` (`None`: absent), atomically.
    pub fn compare_and_swap(
        &self,
        store: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> anyhow::Result<bool> {
        let mut connection = self
            .connection
            .lock()
            .map_err(|_| anyhow::anyhow!("key-value database lock poisoned"))?;
        let transaction =
            connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: Option<Vec<u8>> = transaction
            .query_row(
                "SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2",
                params![store, key],
                |row| row.get(0),
            )
            .optional()?;
        if current.as_deref() != expected {
            return Ok(false);
        }
        transaction.execute(UPSERT, params![store, key, value])?;
        transaction.commit()?;
        Ok(true)
    }

    pub fn keys(&self, store: &str) -> anyhow::Result<Vec<String>> {
        self.with(|c| {
            let mut statement =
                c.prepare("SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key")?;
            let keys = statement.query_map(params![store], |row| row.get(0))?;
            keys.collect()
        })
    }
}
