//! SQLite storage for the native server: virtual keys and usage records.
//!
//! Keys are read and written on one connection behind a mutex (lookups are
//! a primary-key probe of a few microseconds, and the core caches them).
//! Usage records and budget spend are queued on a channel and written by a dedicated thread
//! in batches, one transaction per batch, so the request path never waits
//! for the disk. The database runs in WAL mode so the writer and readers do
//! not block each other. Records are stored as the same JSON the admin API
//! shows, beside indexed columns for the filters.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conduit::keys::VirtualKey;
use conduit::limits::SpendStore;
use conduit::port;
use conduit::ports::{KeyStore, StoreError, UsageStore};
use conduit::usage::{UsageQuery, UsageRecord};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS virtual_keys (
    id         TEXT PRIMARY KEY,
    key_hash   TEXT NOT NULL UNIQUE,
    record     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS usage_records (
    request_id    TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    record        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_key_time ON usage_records (key_id, created_at_ms);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage_records (created_at_ms);
CREATE TABLE IF NOT EXISTS key_spend (
    key_id       TEXT PRIMARY KEY,
    period_start INTEGER NOT NULL,
    spent_nanos  INTEGER NOT NULL
);
";

/// What the writer thread writes.
enum Write {
    Usage(Box<UsageRecord>),
    Spend {
        key_id: String,
        period_start: u64,
        spent_nanos: u64,
    },
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("sqlite: {e}"))
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    Ok(conn)
}

/// The database: keys on one connection, usage written by a background thread.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    writes: Mutex<Option<mpsc::Sender<Write>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Arc<SqliteStore>, StoreError> {
        let conn = open(path)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let writer_conn = open(path)?;
        let (tx, rx) = mpsc::channel::<Write>();
        let writer = std::thread::Builder::new()
            .name("conduit-usage-writer".into())
            .spawn(move || write_loop(writer_conn, rx))
            .map_err(err)?;
        Ok(Arc::new(SqliteStore {
            conn: Mutex::new(conn),
            writes: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        }))
    }

    /// Flushes queued usage records and stops the writer.
    pub fn close(&self) {
        if let Ok(mut tx) = self.writes.lock() {
            tx.take();
        }
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }

    fn queue(&self, write: Write) {
        if let Ok(guard) = self.writes.lock() {
            if let Some(tx) = guard.as_ref() {
                let _ = tx.send(write);
            }
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| StoreError("sqlite connection lock poisoned".into()))?;
        f(&conn).map_err(err)
    }
}

fn parse_key(record: String) -> rusqlite::Result<Option<VirtualKey>> {
    let v: Value = serde_json::from_str(&record).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(VirtualKey::from_storage_json(&v))
}

/// How long the writer gathers writes into one transaction. Bounds how
/// late a record shows in `GET /admin/usage`; amortises the commit.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
const BATCH_MAX: usize = 1024;

/// The writer thread: waits for a write, gathers what else comes within
/// [`BATCH_WINDOW`], and applies the batch in one transaction.
fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + BATCH_WINDOW;
        while batch.len() < BATCH_MAX {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut usage = tx.prepare_cached(
                    "INSERT OR REPLACE INTO usage_records (request_id, key_id, created_at_ms, record) VALUES (?1, ?2, ?3, ?4)",
                )?;
                let mut spend = tx.prepare_cached(
                    "INSERT INTO key_spend (key_id, period_start, spent_nanos) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key_id) DO UPDATE SET period_start = excluded.period_start, spent_nanos = excluded.spent_nanos",
                )?;
                for w in &batch {
                    match w {
                        Write::Usage(r) => {
                            usage.execute(params![
                                r.request_id,
                                r.key_id,
                                r.created_at_ms as i64,
                                r.to_json().to_string()
                            ])?;
                        }
                        Write::Spend {
                            key_id,
                            period_start,
                            spent_nanos,
                        } => {
                            spend.execute(params![
                                key_id,
                                *period_start as i64,
                                *spent_nanos as i64
                            ])?;
                        }
                    }
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            eprintln!("conduit: could not write {} records: {e}", batch.len());
        }
    }
}

impl SpendStore for SqliteStore {
    fn load(&self, key_id: &str) -> Option<(u64, u64)> {
        self.with(|c| {
            c.prepare_cached("SELECT period_start, spent_nanos FROM key_spend WHERE key_id = ?1")?
                .query_row([key_id], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
                .optional()
        })
        .ok()
        .flatten()
    }

    fn save(&self, key_id: &str, period_start: u64, spent_nanos: u64) {
        self.queue(Write::Spend {
            key_id: key_id.to_owned(),
            period_start,
            spent_nanos,
        });
    }
}

port! {
    impl KeyStore for SqliteStore {
        async fn find_by_hash(&self, hash: &str) -> Result<Option<VirtualKey>, StoreError> {
            self.with(|c| {
                c.prepare_cached("SELECT record FROM virtual_keys WHERE key_hash = ?1")?
                    .query_row([hash], |r| r.get::<_, String>(0))
                    .optional()?
                    .map_or(Ok(None), parse_key)
            })
        }

        async fn get(&self, id: &str) -> Result<Option<VirtualKey>, StoreError> {
            self.with(|c| {
                c.prepare_cached("SELECT record FROM virtual_keys WHERE id = ?1")?
                    .query_row([id], |r| r.get::<_, String>(0))
                    .optional()?
                    .map_or(Ok(None), parse_key)
            })
        }

        async fn list(&self) -> Result<Vec<VirtualKey>, StoreError> {
            self.with(|c| {
                let mut stmt = c.prepare_cached("SELECT record FROM virtual_keys ORDER BY created_at, rowid")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                let mut out = Vec::new();
                for row in rows {
                    if let Some(k) = parse_key(row?)? {
                        out.push(k);
                    }
                }
                Ok(out)
            })
        }

        async fn insert(&self, key: &VirtualKey, hash: &str) -> Result<(), StoreError> {
            self.with(|c| {
                c.prepare_cached("INSERT INTO virtual_keys (id, key_hash, record, created_at) VALUES (?1, ?2, ?3, ?4)")?
                    .execute(params![key.id, hash, key.to_storage_json().to_string(), key.created_at as i64])
                    .map(|_| ())
            })
        }

        async fn update(&self, key: &VirtualKey) -> Result<bool, StoreError> {
            self.with(|c| {
                c.prepare_cached("UPDATE virtual_keys SET record = ?2 WHERE id = ?1")?
                    .execute(params![key.id, key.to_storage_json().to_string()])
                    .map(|n| n > 0)
            })
        }

        async fn set_hash(&self, id: &str, hash: &str) -> Result<bool, StoreError> {
            self.with(|c| {
                c.prepare_cached("UPDATE virtual_keys SET key_hash = ?2 WHERE id = ?1")?
                    .execute(params![id, hash])
                    .map(|n| n > 0)
            })
        }

        async fn delete(&self, id: &str) -> Result<bool, StoreError> {
            self.with(|c| {
                c.prepare_cached("DELETE FROM virtual_keys WHERE id = ?1")?
                    .execute([id])
                    .map(|n| n > 0)
            })
        }
    }
}

port! {
    impl UsageStore for SqliteStore {
        async fn record(&self, record: UsageRecord) {
            self.queue(Write::Usage(Box::new(record)));
        }

        async fn query(&self, query: &UsageQuery) -> Result<Vec<UsageRecord>, StoreError> {
            self.with(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT record FROM usage_records
                     WHERE (?1 IS NULL OR key_id = ?1) AND (?2 IS NULL OR created_at_ms >= ?2)
                       AND (?3 IS NULL OR created_at_ms < ?3)
                     ORDER BY created_at_ms, rowid LIMIT 100000",
                )?;
                let rows = stmt.query_map(
                    params![query.key_id, query.since_ms.map(|v| v as i64), query.until_ms.map(|v| v as i64)],
                    |r| r.get::<_, String>(0),
                )?;
                let mut out = Vec::new();
                for row in rows {
                    if let Some(rec) = serde_json::from_str::<Value>(&row?).ok().as_ref().and_then(UsageRecord::from_json) {
                        out.push(rec);
                    }
                }
                Ok(out)
            })
        }
    }
}
