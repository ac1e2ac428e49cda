//! SQLite storage for the native server: virtual keys, usage records and
//! the spend of keys with a budget.
//!
//! Keys are read and written on one connection behind a mutex (lookups are
//! a primary-key probe of a few microseconds, and the core caches them).
//! Usage records and budget spend are queued in an inbox ([`inbox`]) and written by a
//! dedicated thread in batches, one transaction per batch ([`writer`]), so
//! no request's thread runs SQLite for them. The database runs in WAL mode
//! so the writer and readers do not block each other. Records are stored
//! as JSON in their stored form (`UsageRecord::write_stored_json`: the
//! admin API's fields less the derived ones and those at their default,
//! a third fewer bytes; a row written whole by an older version reads the
//! same), in a table keyed by the page order
//! (`created_at_ms`, `request_id`: no rowid), with one index for a key's
//! pages; a database from before that layout is migrated at open. The same transaction adds the batch's
//! records to their rows of `usage_hourly` (one row per hour, key and model
//! alias) and of `usage_daily` (per UTC day), which
//! `GET /admin/usage/summary` reads instead of the records.
//!
//! Money is written through, not behind ([`spend`]): a request of a key
//! with a budget goes upstream only once the spend and reservations its
//! admission left are covered by a committed high-water mark (the limiter
//! writes a new mark, with headroom, only when they would pass the last
//! one: a WAL append, no fsync, in a batch shared with every request
//! waiting at that moment), and a settlement that passed the mark is
//! committed before the answer's last byte. A crash
//! (`kill -9`) loses at most the usage records still in the writer's queue
//! ([`BATCH_WINDOW`](writer::BATCH_WINDOW) plus one commit); on restart the
//! reservations the dead process held are charged at their estimate.
//!
//! Files: `mod.rs` (schema, keys, reads), `writer.rs` (the writer thread,
//! batches), `inbox.rs` (its queue), `checkpoint.rs` (the WAL checkpoints),
//! `spend.rs` (the budget spend).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use conduit::keys::VirtualKey;
use conduit::metering::summary::{hour_of_ms, Bucket, Counters, HourRow, SummaryQuery, DAY};
use conduit::metering::usage::{StatusFilter, UsageQuery, UsageRecord};
use conduit::port;
use conduit::ports::{KeyStore, StoreError, UsageStore};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

mod checkpoint;
mod inbox;
mod spend;
mod writer;

use inbox::Inbox;
use writer::{write_loop, Write, BATCH_MAX};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS virtual_keys (
    id         TEXT PRIMARY KEY,
    key_hash   TEXT NOT NULL UNIQUE,
    record     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
-- Records are kept in the page order, (created_at_ms, request_id), which is
-- also what makes a record written twice (a retried batch) count once: no
-- rowid, no separate index for the page order nor for request_id, so a
-- record is two B-tree inserts (this table, the key's pages), not four.
CREATE TABLE IF NOT EXISTS usage_records (
    created_at_ms INTEGER NOT NULL,
    request_id    TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    record        TEXT NOT NULL,
    PRIMARY KEY (created_at_ms, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_page_by_key ON usage_records (key_id, created_at_ms, request_id);
CREATE TABLE IF NOT EXISTS key_spend (
    key_id       TEXT PRIMARY KEY,
    period_start INTEGER NOT NULL,
    spent_nanos  INTEGER NOT NULL
);
";

/// The counters of one hour (`usage_hourly`); `usage_daily` has the same
/// columns, per UTC day ([`counter_tables`]).
const HOURLY_TABLE: &str = "
CREATE TABLE IF NOT EXISTS usage_hourly (
    hour              INTEGER NOT NULL,
    key_id            TEXT NOT NULL,
    model             TEXT NOT NULL,
    requests          INTEGER NOT NULL DEFAULT 0,
    errors            INTEGER NOT NULL DEFAULT 0,
    rate_limited      INTEGER NOT NULL DEFAULT 0,
    budget_refused    INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens      INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    cost_nanos        INTEGER NOT NULL DEFAULT 0,
    unpriced          INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, key_id, model)
) WITHOUT ROWID;
";

/// Both counter tables' definitions: hourly, and the same columns per day.
fn counter_tables() -> String {
    format!(
        "{HOURLY_TABLE}{}",
        HOURLY_TABLE.replace("usage_hourly", "usage_daily")
    )
}

/// Moves the records of a database written before `usage_records` was kept
/// in the page order (a rowid table keyed by `request_id`, with page indexes
/// beside it) into the table [`SCHEMA`] defines, in one transaction, at
/// open: every record is kept, and listed as before.
const MIGRATE_RECORDS: &str = "
BEGIN;
CREATE TABLE usage_records_paged (
    created_at_ms INTEGER NOT NULL,
    request_id    TEXT NOT NULL,
    key_id        TEXT NOT NULL,
    record        TEXT NOT NULL,
    PRIMARY KEY (created_at_ms, request_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO usage_records_paged (created_at_ms, request_id, key_id, record)
    SELECT created_at_ms, request_id, key_id, record FROM usage_records;
DROP TABLE usage_records;
ALTER TABLE usage_records_paged RENAME TO usage_records;
COMMIT;
";

/// Whether `usage_records` is there in its older form (a rowid table).
fn records_need_migration(conn: &Connection) -> rusqlite::Result<bool> {
    let sql: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'usage_records'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(sql.is_some_and(|sql| !sql.to_ascii_uppercase().contains("WITHOUT ROWID")))
}

/// Reservations held when the spend was last saved (added after the table).
const ADD_RESERVED: &str =
    "ALTER TABLE key_spend ADD COLUMN reserved_nanos INTEGER NOT NULL DEFAULT 0";

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
    writes: Arc<Inbox>,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: checkpoint::Checkpointer,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Arc<SqliteStore>, StoreError> {
        let conn = open(path)?;
        // This connection writes on request threads (keys, spend): it leaves
        // WAL checkpoints, which fsync, to the writer thread's connection.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(err)?;
        if records_need_migration(&conn).map_err(err)? {
            conn.execute_batch(MIGRATE_RECORDS).map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                err(e)
            })?;
        }
        conn.execute_batch(SCHEMA).map_err(err)?;
        conn.execute_batch(&counter_tables()).map_err(err)?;
        let has_reserved: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('key_spend') WHERE name = 'reserved_nanos')",
                [],
                |r| r.get(0),
            )
            .map_err(err)?;
        if !has_reserved {
            conn.execute_batch(ADD_RESERVED).map_err(err)?;
        }
        backfill_hourly(&conn).map_err(err)?;
        let writer_conn = open(path)?;
        // Checkpoints (the fsync of a WAL mode database) run on a thread of
        // their own, so that no commit a request waits for waits behind one.
        writer_conn
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(err)?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let checkpointer = checkpoint::Checkpointer::start(open(path)?, wal.into()).map_err(err)?;
        let writes = Arc::new(Inbox::default());
        let inbox = writes.clone();
        let writer = std::thread::Builder::new()
            .name("conduit-usage-writer".into())
            .spawn(move || write_loop(writer_conn, &inbox))
            .map_err(err)?;
        Ok(Arc::new(SqliteStore {
            conn: Mutex::new(conn),
            writes,
            writer: Mutex::new(Some(writer)),
            checkpointer,
        }))
    }

    /// Flushes queued usage records and stops the writer.
    pub fn close(&self) {
        self.writes.close();
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
        self.checkpointer.stop();
    }

    /// Hands a write to the writer thread (dropped once it is closed: a
    /// request waiting on it is then released).
    fn queue(&self, write: Write) {
        // Refused once closed: dropped, which lets a waiting request go.
        let _ = self.writes.send(write, BATCH_MAX);
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| StoreError("sqlite connection lock poisoned".into()))?;
        f(&conn).map_err(err)
    }
}

/// A store dropped without [`SqliteStore::close`] still has its queue
/// written: the writer drains it and ends (not waited for), as does the
/// checkpointer.
impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.writes.close();
        self.checkpointer.signal_stop();
    }
}

/// The upsert adding one record to its hour row (and, with the table
/// renamed, to its day row).
const ADD_HOURLY: &str = "INSERT INTO usage_hourly (hour, key_id, model, requests, errors, rate_limited,
        budget_refused, prompt_tokens, completion_tokens, total_tokens, cached_tokens, cost_nanos, unpriced)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
     ON CONFLICT (hour, key_id, model) DO UPDATE SET
        requests = requests + excluded.requests, errors = errors + excluded.errors,
        rate_limited = rate_limited + excluded.rate_limited, budget_refused = budget_refused + excluded.budget_refused,
        prompt_tokens = prompt_tokens + excluded.prompt_tokens, completion_tokens = completion_tokens + excluded.completion_tokens,
        total_tokens = total_tokens + excluded.total_tokens, cached_tokens = cached_tokens + excluded.cached_tokens,
        cost_nanos = cost_nanos + excluded.cost_nanos, unpriced = unpriced + excluded.unpriced";

fn add_daily_sql() -> String {
    ADD_HOURLY.replace("usage_hourly", "usage_daily")
}

fn add_hourly(
    hourly: &mut rusqlite::CachedStatement<'_>,
    daily: &mut rusqlite::CachedStatement<'_>,
    r: &UsageRecord,
) -> rusqlite::Result<()> {
    let (hour, c) = (hour_of_ms(r.created_at_ms), Counters::of(r));
    add_row(hourly, hour, &r.key_id, &r.model, &c)?;
    add_row(daily, hour / DAY * DAY, &r.key_id, &r.model, &c)
}

/// Adds `c` to the row of (`start`, `key_id`, `model`).
fn add_row(
    stmt: &mut rusqlite::CachedStatement<'_>,
    start: u64,
    key_id: &str,
    model: &str,
    c: &Counters,
) -> rusqlite::Result<()> {
    stmt.execute(params![
        start as i64,
        key_id,
        model,
        c.requests as i64,
        c.errors as i64,
        c.rate_limited as i64,
        c.budget_refused as i64,
        c.prompt_tokens as i64,
        c.completion_tokens as i64,
        c.total_tokens as i64,
        c.cached_tokens as i64,
        c.cost_nanos as i64,
        c.unpriced as i64,
    ])
    .map(|_| ())
}

/// A database written before the counter tables existed gets their rows
/// once, from the records it holds.
fn backfill_hourly(conn: &Connection) -> rusqlite::Result<()> {
    let empty: bool =
        conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM usage_hourly)", [], |r| {
            r.get(0)
        })?;
    let has_records: bool =
        conn.query_row("SELECT EXISTS (SELECT 1 FROM usage_records)", [], |r| {
            r.get(0)
        })?;
    if !(empty && has_records) {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch("DELETE FROM usage_hourly; DELETE FROM usage_daily;")?;
    {
        let mut read = tx.prepare("SELECT record FROM usage_records")?;
        let mut add = tx.prepare_cached(ADD_HOURLY)?;
        let mut add_day = tx.prepare_cached(&add_daily_sql())?;
        let mut rows = read.query([])?;
        while let Some(row) = rows.next()? {
            let text: String = row.get(0)?;
            if let Some(r) = serde_json::from_str::<Value>(&text)
                .ok()
                .as_ref()
                .and_then(UsageRecord::from_json)
            {
                add_hourly(&mut add, &mut add_day, &r)?;
            }
        }
    }
    tx.commit()
}

fn parse_key(record: String) -> rusqlite::Result<Option<VirtualKey>> {
    let v: Value = serde_json::from_str(&record).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(VirtualKey::from_storage_json(&v))
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
            // Newest first along the (created_at_ms, request_id) index; the
            // model and status filters look into the record's JSON.
            let (status_kind, status_code) = match query.status {
                None => (None, None),
                Some(StatusFilter::Ok) => (Some("ok"), None),
                Some(StatusFilter::Error) => (Some("error"), None),
                Some(StatusFilter::Refused) => (Some("refused"), None),
                Some(StatusFilter::Code(c)) => (Some("code"), Some(i64::from(c))),
            };
            let (before_ms, before_id) = match &query.before {
                Some((ms, id)) => (Some(*ms as i64), Some(id.clone())),
                None => (None, None),
            };
            self.with(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT record FROM usage_records
                     WHERE (?1 IS NULL OR key_id = ?1) AND (?2 IS NULL OR created_at_ms >= ?2)
                       AND (?3 IS NULL OR created_at_ms < ?3)
                       AND (?4 IS NULL OR (created_at_ms, request_id) < (?4, ?5))
                       AND (?6 IS NULL OR json_extract(record, '$.model') = ?6)
                       AND (?7 IS NULL
                            OR (?7 = 'ok' AND json_extract(record, '$.status') < 400)
                            OR (?7 = 'error' AND json_extract(record, '$.status') >= 400 AND json_extract(record, '$.refused_by') IS NULL)
                            OR (?7 = 'refused' AND json_extract(record, '$.refused_by') IS NOT NULL)
                            OR (?7 = 'code' AND json_extract(record, '$.status') = ?8))
                     ORDER BY created_at_ms DESC, request_id DESC LIMIT ?9",
                )?;
                let rows = stmt.query_map(
                    params![
                        query.key_id,
                        query.since_ms.map(|v| v as i64),
                        query.until_ms.map(|v| v as i64),
                        before_ms,
                        before_id,
                        query.model,
                        status_kind,
                        status_code,
                        query.limit as i64,
                    ],
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

        async fn hours(&self, query: &SummaryQuery) -> Result<Vec<HourRow>, StoreError> {
            // Day buckets read the day rows: a month is 30 rows per key and
            // model, however the requests spread over the hours.
            let table = match query.bucket {
                Bucket::Day => "usage_daily",
                Bucket::Hour => "usage_hourly",
            };
            self.with(|c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT hour, key_id, model, requests, errors, rate_limited, budget_refused, prompt_tokens,
                            completion_tokens, total_tokens, cached_tokens, cost_nanos, unpriced
                     FROM {table}
                     WHERE hour >= ?1 AND hour < ?2 AND (?3 IS NULL OR key_id = ?3) AND (?4 IS NULL OR model = ?4)"
                ))?;
                let rows = stmt.query_map(
                    params![query.since as i64, query.until as i64, query.key_id, query.model],
                    |r| {
                        let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                        Ok(HourRow {
                            hour: n(0)?,
                            key_id: r.get(1)?,
                            model: r.get(2)?,
                            counters: Counters {
                                requests: n(3)?,
                                errors: n(4)?,
                                rate_limited: n(5)?,
                                budget_refused: n(6)?,
                                prompt_tokens: n(7)?,
                                completion_tokens: n(8)?,
                                total_tokens: n(9)?,
                                cached_tokens: n(10)?,
                                cost_nanos: n(11)?,
                                unpriced: n(12)?,
                            },
                        })
                    },
                )?;
                rows.collect()
            })
        }

        async fn last_used(&self, key_ids: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
            self.with(|c| {
                let mut stmt = c.prepare_cached("SELECT MAX(created_at_ms) FROM usage_records WHERE key_id = ?1")?;
                key_ids
                    .iter()
                    .map(|id| stmt.query_row([id], |r| r.get::<_, Option<i64>>(0)).map(|v| v.map(|ms| ms as u64)))
                    .collect()
            })
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use conduit::metering::summary::{Bucket, SummaryQuery, DAY, HOUR};
    use conduit::metering::usage::{StatusFilter, TokenUsage};

    pub(super) fn record(n: u64, key: &str, at_ms: u64, status: u16) -> UsageRecord {
        UsageRecord {
            request_id: format!("req_{n:04}"),
            key_id: key.into(),
            model: if n.is_multiple_of(2) { "a" } else { "b" }.into(),
            provider: None,
            provider_model: None,
            endpoint: "/v1/chat/completions".into(),
            status,
            streamed: false,
            usage: TokenUsage {
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
                ..Default::default()
            },
            estimated_prompt_tokens: 0,
            estimated_completion_tokens: 0,
            cost_nanos: Some(100),
            refused_by: (status == 429).then(|| "rpm".to_owned()),
            latency_us: 0,
            upstream_latency_us: 0,
            created_at_ms: at_ms,
            attempts: 1,
            failed_attempts: Vec::new(),
            served_alias: None,
            trace_id: None,
            traceparent: None,
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn pages_counters_last_use_and_backfill() {
        let path =
            std::env::temp_dir().join(format!("conduit-store-test-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let day0 = 1_767_225_600u64; // 2026-01-01T00:00:00Z
        let store = SqliteStore::open(&path).unwrap();
        run(async {
            for n in 0..10u64 {
                let status = if n == 9 { 429 } else { 200 };
                store
                    .record(record(n, "k1", (day0 + n * 1800) * 1000, status))
                    .await;
            }
            store
                .record(record(10, "k2", (day0 + DAY) * 1000, 200))
                .await;
            // The same record twice is counted once.
            store
                .record(record(10, "k2", (day0 + DAY) * 1000, 200))
                .await;
        });
        store.close();
        let store = SqliteStore::open(&path).unwrap();
        run(async {
            let mut q = UsageQuery {
                limit: 4,
                ..Default::default()
            };
            let mut seen = Vec::new();
            loop {
                let page = store.query(&q).await.unwrap();
                if page.is_empty() {
                    break;
                }
                let last = page.last().unwrap();
                q.before = Some((last.created_at_ms, last.request_id.clone()));
                seen.extend(page.into_iter().map(|r| r.request_id));
            }
            let expected: Vec<String> = (0..=10).rev().map(|n| format!("req_{n:04}")).collect();
            assert_eq!(seen, expected);
            // A record reads back as it was written (kept in its stored form).
            let k2 = UsageQuery {
                key_id: Some("k2".into()),
                ..Default::default()
            };
            assert_eq!(
                store.query(&k2).await.unwrap(),
                vec![record(10, "k2", (day0 + DAY) * 1000, 200)]
            );
            let refused = UsageQuery {
                status: Some(StatusFilter::Refused),
                ..Default::default()
            };
            assert_eq!(store.query(&refused).await.unwrap().len(), 1);
            let model_a = UsageQuery {
                model: Some("a".into()),
                key_id: Some("k1".into()),
                ..Default::default()
            };
            assert_eq!(store.query(&model_a).await.unwrap().len(), 5);

            let hours = SummaryQuery {
                since: day0,
                until: day0 + 2 * DAY,
                key_id: None,
                model: None,
                bucket: Bucket::Hour,
            };
            let rows = store.hours(&hours).await.unwrap();
            assert_eq!(rows.iter().map(|r| r.counters.requests).sum::<u64>(), 11);
            assert!(rows.iter().all(|r| r.hour % HOUR == 0));
            let days = store
                .hours(&SummaryQuery {
                    bucket: Bucket::Day,
                    ..hours.clone()
                })
                .await
                .unwrap();
            assert_eq!(
                days.len(),
                3,
                "k1/a, k1/b on day 0; k2/a on day 1: {days:?}"
            );
            assert_eq!(days.iter().map(|r| r.counters.rate_limited).sum::<u64>(), 1);
            assert_eq!(
                days.iter().map(|r| r.counters.cost_nanos).sum::<u64>(),
                1100
            );

            let used = store
                .last_used(&["k1".into(), "k2".into(), "k3".into()])
                .await
                .unwrap();
            assert_eq!(
                used,
                vec![
                    Some((day0 + 9 * 1800) * 1000),
                    Some((day0 + DAY) * 1000),
                    None
                ]
            );
        });
        // An older database (records, no counters) gets them on open.
        store
            .with(|c| c.execute_batch("DELETE FROM usage_hourly; DELETE FROM usage_daily;"))
            .unwrap();
        store.close();
        let store = SqliteStore::open(&path).unwrap();
        run(async {
            let q = SummaryQuery {
                since: day0,
                until: day0 + 2 * DAY,
                key_id: None,
                model: None,
                bucket: Bucket::Day,
            };
            let rows = store.hours(&q).await.unwrap();
            assert_eq!(rows.iter().map(|r| r.counters.requests).sum::<u64>(), 11);
        });
        store.close();
        let _ = std::fs::remove_file(&path);
    }

    /// A database written by an earlier version (records in a rowid table
    /// keyed by request_id, page indexes beside it, no counter tables)
    /// opens with its records kept in the page-ordered table, listed and
    /// counted as before, and new records go in beside them.
    #[test]
    fn an_older_database_is_migrated_and_still_listed() {
        let path =
            std::env::temp_dir().join(format!("conduit-migrate-test-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let day0 = 1_767_225_600_000u64;
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE usage_records (
                    request_id    TEXT PRIMARY KEY,
                    key_id        TEXT NOT NULL,
                    created_at_ms INTEGER NOT NULL,
                    record        TEXT NOT NULL
                );
                CREATE INDEX usage_page ON usage_records (created_at_ms, request_id);
                CREATE INDEX usage_page_by_key ON usage_records (key_id, created_at_ms, request_id);
                CREATE INDEX usage_by_time ON usage_records (created_at_ms);",
            )
            .unwrap();
            for n in 0..6u64 {
                // Two records in the same millisecond: ordered by request_id.
                let r = record(n, if n < 4 { "k1" } else { "k2" }, day0 + n / 2 * 1000, 200);
                let mut json = Vec::new();
                r.write_json(&mut json).unwrap();
                c.execute(
                    "INSERT INTO usage_records (request_id, key_id, created_at_ms, record) VALUES (?1, ?2, ?3, ?4)",
                    params![r.request_id, r.key_id, r.created_at_ms as i64, String::from_utf8(json).unwrap()],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path).unwrap();
        let sql: String = store
            .with(|c| {
                c.query_row(
                    "SELECT sql FROM sqlite_master WHERE name = 'usage_records'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert!(sql.contains("WITHOUT ROWID"), "{sql}");
        run(async {
            store.record(record(6, "k1", day0 + 10_000, 200)).await;
        });
        store.close();
        // Opened again: no second migration, everything listed in page order.
        let store = SqliteStore::open(&path).unwrap();
        run(async {
            let all = store
                .query(&UsageQuery {
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap();
            let ids: Vec<&str> = all.iter().map(|r| r.request_id.as_str()).collect();
            assert_eq!(
                ids,
                [
                    "req_0006", "req_0005", "req_0004", "req_0003", "req_0002", "req_0001",
                    "req_0000"
                ]
            );
            let page = store
                .query(&UsageQuery {
                    key_id: Some("k1".into()),
                    before: Some((day0 + 1000, "req_0003".into())),
                    limit: 2,
                    ..Default::default()
                })
                .await
                .unwrap();
            let ids: Vec<&str> = page.iter().map(|r| r.request_id.as_str()).collect();
            assert_eq!(ids, ["req_0002", "req_0001"]);
            let days = store
                .hours(&SummaryQuery {
                    since: day0 / 1000,
                    until: day0 / 1000 + DAY,
                    key_id: None,
                    model: None,
                    bucket: Bucket::Day,
                })
                .await
                .unwrap();
            assert_eq!(days.iter().map(|r| r.counters.requests).sum::<u64>(), 7);
            let used = store.last_used(&["k2".into()]).await.unwrap();
            assert_eq!(used, vec![Some(day0 + 2000)]);
        });
        store.close();
        let _ = std::fs::remove_file(&path);
    }
}
