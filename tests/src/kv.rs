//! Spin's key-value stores: on SQLite, in Spin's own table layout, so state written by one
//! invocation or component is read by the next exactly as with `spin up`'s default store; and on
//! Redis, for a label a runtime config file gives `type = "redis"`, as Spin 3.5's
//! `crates/key-value-redis` has it, faults included (see [`RedisKv`]).

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};

const UPSERT: &str = "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
     ON CONFLICT (store, key) DO UPDATE SET value = excluded.value";
const DELETE: &str = "DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2";

/// The store behind every label of one app (Spin's `.spin/sqlite_key_value.db`), but the labels
/// the runtime config puts on Redis.
pub struct KvBackend {
    connection: Mutex<Connection>,
    /// Keys read under a watched prefix, in order (see [`KvBackend::watch_reads`]).
    watched: Mutex<Option<(String, Vec<String>)>>,
    /// Labels on Redis, and their server.
    redis: std::collections::BTreeMap<String, RedisKv>,
}

/// The host side of an open `store` (fermyon) or `bucket` (wasi) resource.
pub struct StoreHandle {
    pub label: String,
}

/// The host side of a `wasi:keyvalue/atomics.cas`: the key and what it held when made (SQLite),
/// or the connection of its own it watches the key on (Redis).
pub struct CasHandle {
    pub label: String,
    pub key: String,
    pub seen: Option<Vec<u8>>,
    pub redis: Option<redis::Connection>,
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
            redis: Default::default(),
        })
    }

    /// Puts `label` on the Redis server at `url`, as a runtime config's
    /// `[key_value_store.<label>] type = "redis"` does.
    pub fn use_redis(&mut self, label: &str, url: &str) -> anyhow::Result<()> {
        self.redis.insert(label.to_string(), RedisKv::open(url)?);
        Ok(())
    }

    /// The Redis store of `label`, if the runtime config put it there.
    pub fn redis(&self, label: &str) -> Option<&RedisKv> {
        self.redis.get(label)
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
        if let Some(redis) = self.redis(store) {
            return redis.get(key);
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
        if let Some(redis) = self.redis(store) {
            return redis.set(key, value);
        }
        self.with(|c| c.execute(UPSERT, params![store, key, value]).map(drop))
    }

    pub fn delete(&self, store: &str, key: &str) -> anyhow::Result<()> {
        if let Some(redis) = self.redis(store) {
            return redis.delete(&[key.to_string()]);
        }
        self.with(|c| c.execute(DELETE, params![store, key]).map(drop))
    }

    /// Sets many keys in one transaction, as Spin's SQLite store does a `wasi:keyvalue` batch.
    pub fn set_many(&self, store: &str, entries: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        if let Some(redis) = self.redis(store) {
            return redis.set_many(entries);
        }
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
        if let Some(redis) = self.redis(store) {
            return redis.delete(keys);
        }
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
        if let Some(redis) = self.redis(store) {
            let mut keys = redis.keys()?;
            keys.sort();
            return Ok(keys);
        }
        self.with(|c| {
            let mut statement =
                c.prepare("SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key")?;
            let keys = statement.query_map(params![store], |row| row.get(0))?;
            keys.collect()
        })
    }
}

/// A label on Redis, as Spin 3.5's `crates/key-value-redis/src/store.rs` serves it (the same at
/// 4.0.1), through the same `redis` crate and commands:
/// - keys carry no prefix of the label: every label on one server shares its keys, and
///   `get-keys` is `KEYS *`;
/// - `get-many` sends `KEYS k1 k2 ...` (not `MGET`), which fails, or answers wrongly for one key;
/// - `set-many` is `MSET`, `delete-many` `DEL k1 k2 ...`, `increment` `INCRBY` on decimal text;
/// - a compare-and-swap takes a connection of its own; `current` is `WATCH key` then `GET key`;
///   `swap` is `MULTI`/`SET`/`EXEC`, then `UNWATCH key`, which Redis refuses (it takes no
///   argument), so every swap answers "failed", whether it wrote or not; and as Spin's host
///   does on a failed swap, a new compare-and-swap is made, watched and handed back.
pub struct RedisKv {
    client: redis::Client,
    /// The shared connection, opened again after a failure (as a connection manager does).
    connection: Mutex<Option<redis::Connection>>,
}

impl RedisKv {
    pub fn open(url: &str) -> anyhow::Result<RedisKv> {
        let client = redis::Client::open(url).with_context(|| format!("Redis URL {url}"))?;
        Ok(RedisKv {
            client,
            connection: Mutex::new(None),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> anyhow::Result<T> {
        let mut slot = self
            .connection
            .lock()
            .map_err(|_| anyhow::anyhow!("Redis connection lock poisoned"))?;
        let connection = match slot.as_mut() {
            Some(connection) => connection,
            None => slot.insert(self.client.get_connection()?),
        };
        let result = f(connection);
        if let Err(e) = &result
            && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
        {
            *slot = None;
        }
        Ok(result?)
    }

    pub fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.with(|c| redis::cmd("GET").arg(key).query(c))
    }

    pub fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.with(|c| redis::cmd("SET").arg(key).arg(value).query(c))
    }

    pub fn delete(&self, keys: &[String]) -> anyhow::Result<()> {
        self.with(|c| redis::cmd("DEL").arg(keys).query(c))
    }

    pub fn set_many(&self, entries: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
        self.with(|c| {
            let mut command = redis::cmd("MSET");
            for (key, value) in entries {
                command.arg(key).arg(value);
            }
            command.query(c)
        })
    }

    pub fn keys(&self) -> anyhow::Result<Vec<String>> {
        self.with(|c| redis::cmd("KEYS").arg("*").query(c))
    }

    /// `get-many` as Spin sends it: `KEYS` with the keys as patterns.
    pub fn get_many(&self, keys: &[String]) -> anyhow::Result<Vec<(String, Option<Vec<u8>>)>> {
        self.with(|c| redis::cmd("KEYS").arg(keys).query(c))
    }

    pub fn increment(&self, key: &str, delta: i64) -> anyhow::Result<i64> {
        self.with(|c| redis::cmd("INCRBY").arg(key).arg(delta).query(c))
    }

    /// A compare-and-swap's own connection.
    pub fn cas_connection(&self) -> anyhow::Result<redis::Connection> {
        Ok(self.client.get_connection()?)
    }

    /// `current`: watch the key, then read it.
    pub fn cas_current(
        connection: &mut redis::Connection,
        key: &str,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        redis::cmd("WATCH").arg(key).exec(connection)?;
        Ok(redis::cmd("GET").arg(key).query(connection)?)
    }

    /// `swap`: the transaction, then the `UNWATCH` whose refusal is the answer.
    pub fn cas_swap(
        connection: &mut redis::Connection,
        key: &str,
        value: &[u8],
    ) -> Result<(), String> {
        let written: redis::RedisResult<()> =
            redis::pipe().atomic().set(key, value).query(connection);
        redis::cmd("UNWATCH")
            .arg(key)
            .exec(connection)
            .map_err(|e| format!("{e:?}"))?;
        written.map_err(|e| format!("{e:?}"))
    }
}
