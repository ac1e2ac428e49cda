//! SQLite storage for the native server: virtual keys and usage records.
//!
//! Keys are read and written on one connection behind a mutex (lookups are
//! a primary-key probe of a few microseconds, and the core caches them).
//! Usage records and budget spend are queued on a channel and written by a dedicated thread
//! in batches, one transaction per batch, so the request path never waits
//! for the disk. The database runs in WAL mode so the writer and readers do
//! not block each other. Records are stored as the same JSON the admin API
//! shows, beside indexed columns for the filters and the page order. The
//! same transaction adds each record to its row of `usage_hourly` (one row
//! per hour, key and model alias) and of `usage_daily` (per UTC day), which
//! `GET /admin/usage/summary` reads instead of the records.
//!
//! Money is written through, not behind: the spend of a key with a budget,
//! and the estimate its unsettled reservations hold, are written on the
//! calling thread at admission and at settlement (a WAL append, no fsync:
//! tens of microseconds), so they are on disk before the answer leaves. A
//! crash (`kill -9`) loses at most the usage records still in the writer's
//! queue ([`BATCH_WINDOW`] plus one commit); on restart the reservations
//! the dead process held are charged at their estimate.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conduit::keys::VirtualKey;
use conduit::metering::limits::SpendStore;
use conduit::metering::summary::{Bucket, Counters, HourRow, SummaryQuery, DAY};
use conduit::metering::usage::{StatusFilter, UsageQuery, UsageRecord};
use conduit::port;
use conduit::ports::{KeyStore, StoreError, UsageStore};
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
CREATE INDEX IF NOT EXISTS usage_page ON usage_records (created_at_ms, request_id);
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

/// Reservations held when the spend was last saved (added after the table).
const ADD_RESERVED: &str =
    "ALTER TABLE key_spend ADD COLUMN reserved_nanos INTEGER NOT NULL DEFAULT 0";

/// Saves a key's spend: a new period replaces the row; within a period the
/// larger spend stays (writes of concurrent requests may come out of order).
const SAVE_SPEND: &str = "INSERT INTO key_spend (key_id, period_start, spent_nanos, reserved_nanos)
     VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (key_id) DO UPDATE SET
        spent_nanos = CASE WHEN excluded.period_start = period_start
                           THEN MAX(spent_nanos, excluded.spent_nanos) ELSE excluded.spent_nanos END,
        reserved_nanos = excluded.reserved_nanos,
        period_start = excluded.period_start";

/// What the writer thread writes.
enum Write {
    Usage(Box<UsageRecord>),
    /// A spend the write-through could not write (the file read-only, the
    /// disk full): held by the writer and written when the file takes
    /// writes again ([`SAVE_SPEND`] never lowers a period's spend, so an
    /// older one written late changes nothing).
    Spend {
        key_id: String,
        period_start: u64,
        spent_nanos: u64,
        reserved_nanos: u64,
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
        // This connection writes on request threads (keys, spend): it leaves
        // WAL checkpoints, which fsync, to the writer thread's connection.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(err)?;
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
    let row = HourRow::of(r);
    add_row(hourly, &row, row.hour)?;
    add_row(daily, &row, row.hour / DAY * DAY)
}

fn add_row(
    stmt: &mut rusqlite::CachedStatement<'_>,
    row: &HourRow,
    start: u64,
) -> rusqlite::Result<()> {
    let c = row.counters;
    stmt.execute(params![
        start as i64,
        row.key_id,
        row.model,
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

/// How long the writer gathers writes into one transaction. Bounds how
/// late a record shows in `GET /admin/usage`; amortises the commit.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
const BATCH_MAX: usize = 1024;

/// Writes held while the file cannot be written (read-only, disk full):
/// beyond this many, the oldest usage records are dropped, and counted in
/// the log. Of the spend writes only each key's last is held (each is the
/// key's whole spend), and none is dropped: see [`hold`].
const HELD_MAX: usize = 100_000;
/// The first wait before a failed batch is tried again; it doubles up to
/// [`RETRY_MAX`] while the store stays unwritable.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The writer thread: waits for a write, gathers what else comes within
/// [`BATCH_WINDOW`], and applies the batch in one transaction. A batch that
/// fails (the file read-only, the disk full) is not lost: it is held in
/// memory (up to [`HELD_MAX`] writes) and tried again, with what came
/// since, until the store takes it; nothing of a failed batch was written
/// (one transaction), and a record written twice is counted once.
fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Write>) {
    let mut held: Vec<Write> = Vec::new();
    let mut retry = RETRY_FIRST;
    let mut open = true;
    while open || !held.is_empty() {
        let mut batch = std::mem::take(&mut held);
        if batch.is_empty() {
            match rx.recv() {
                Ok(first) => batch.push(first),
                Err(_) => break,
            }
        } else if open {
            // Wait before trying the held writes again, taking new ones meanwhile.
            let until = Instant::now() + retry;
            loop {
                match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(w) => batch.push(w),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        let deadline = Instant::now() + BATCH_WINDOW;
        while open && batch.len() < BATCH_MAX {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(w) => batch.push(w),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
        }
        match write_batch(&mut conn, &batch) {
            Ok(()) => {
                if retry > RETRY_FIRST {
                    eprintln!(
                        "conduit: the database takes writes again; {} held writes written",
                        batch.len()
                    );
                }
                retry = RETRY_FIRST;
            }
            Err(e) if open => {
                if retry == RETRY_FIRST {
                    eprintln!(
                        "conduit: could not write {} records ({e}); held in memory and retried",
                        batch.len()
                    );
                    crate::metrics::store_write_failed(batch.len() as u64);
                }
                let dropped;
                (held, dropped) = hold(batch);
                if dropped > 0 {
                    eprintln!("conduit: {dropped} usage records dropped: more than {HELD_MAX} writes held while the database is unwritable");
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
            Err(e) => {
                // Shutting down with the store still unwritable: say what is lost.
                eprintln!(
                    "conduit: could not write {} records at shutdown: {e}",
                    batch.len()
                );
                crate::metrics::store_write_failed(batch.len() as u64);
                break;
            }
        }
    }
}

/// What is kept of a failed batch: the last spend write of each key (each
/// carries the key's whole spend, so the earlier ones say nothing more),
/// and the usage records, the oldest dropped beyond [`HELD_MAX`]. Returns
/// the writes kept, in order, and how many records were dropped.
fn hold(batch: Vec<Write>) -> (Vec<Write>, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut keep: Vec<bool> = batch
        .iter()
        .rev()
        .map(|w| match w {
            Write::Spend { key_id, .. } => seen.insert(key_id.clone()),
            Write::Usage(_) => true,
        })
        .collect();
    keep.reverse();
    let kept = keep.iter().filter(|k| **k).count();
    let mut over = kept.saturating_sub(HELD_MAX);
    let mut dropped = 0;
    let held = batch
        .into_iter()
        .zip(keep)
        .filter(|(w, keep)| {
            if !keep {
                return false;
            }
            if over > 0 && matches!(w, Write::Usage(_)) {
                over -= 1;
                dropped += 1;
                return false;
            }
            true
        })
        .map(|(w, _)| w)
        .collect();
    (held, dropped)
}

/// One batch in one transaction: all of it is written, or none.
fn write_batch(conn: &mut Connection, batch: &[Write]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut usage = tx.prepare_cached(
            "INSERT OR IGNORE INTO usage_records (request_id, key_id, created_at_ms, record) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut hourly = tx.prepare_cached(ADD_HOURLY)?;
        let mut daily = tx.prepare_cached(&add_daily_sql())?;
        let mut spend = tx.prepare_cached(SAVE_SPEND)?;
        for w in batch {
            match w {
                Write::Usage(r) => {
                    // A record is counted once, even if written twice.
                    let inserted = usage.execute(params![
                        r.request_id,
                        r.key_id,
                        r.created_at_ms as i64,
                        r.to_json().to_string()
                    ])?;
                    if inserted > 0 {
                        add_hourly(&mut hourly, &mut daily, r)?;
                    }
                }
                Write::Spend {
                    key_id,
                    period_start,
                    spent_nanos,
                    reserved_nanos,
                } => {
                    spend.execute(params![
                        key_id,
                        *period_start as i64,
                        *spent_nanos as i64,
                        *reserved_nanos as i64
                    ])?;
                }
            }
        }
    }
    tx.commit()
}

impl SpendStore for SqliteStore {
    fn load(&self, key_id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        self.with(|c| {
            c.prepare_cached("SELECT period_start, spent_nanos + reserved_nanos FROM key_spend WHERE key_id = ?1")?
                .query_row([key_id], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
                })
                .optional()
        })
    }

    fn save(&self, key_id: &str, period_start: u64, spent_nanos: u64, reserved_nanos: u64) {
        let saved = self.with(|c| {
            c.prepare_cached(SAVE_SPEND)?
                .execute(params![
                    key_id,
                    period_start as i64,
                    spent_nanos as i64,
                    reserved_nanos as i64
                ])
                .map(|_| ())
        });
        if let Err(e) = saved {
            // Not lost: the writer thread holds it and writes it when the
            // file takes writes again.
            eprintln!("conduit: could not save the spend of key {key_id}: {e}; held and retried");
            self.queue(Write::Spend {
                key_id: key_id.to_owned(),
                period_start,
                spent_nanos,
                reserved_nanos,
            });
        }
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
mod tests {
    use super::*;
    use conduit::metering::summary::{Bucket, SummaryQuery, DAY, HOUR};
    use conduit::metering::usage::{StatusFilter, TokenUsage};

    fn record(n: u64, key: &str, at_ms: u64, status: u16) -> UsageRecord {
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

    /// A failed batch is held whole, except earlier spend writes of a key
    /// (the last one is its spend) and, past HELD_MAX, the oldest records.
    #[test]
    fn held_writes_keep_each_keys_last_spend_and_the_newest_records() {
        let spend = |key: &str, n: u64| Write::Spend {
            key_id: key.into(),
            period_start: 0,
            spent_nanos: n,
            reserved_nanos: 0,
        };
        let mut batch = vec![spend("k1", 1), spend("k2", 5)];
        batch.extend(
            (0..HELD_MAX as u64 + 3).map(|n| Write::Usage(Box::new(record(n, "k1", n, 200)))),
        );
        batch.push(spend("k1", 2));
        let (held, dropped) = hold(batch);
        // HELD_MAX + 5 writes kept by the spend rule: the 5 oldest records go.
        assert_eq!(dropped, 5);
        assert_eq!(held.len(), HELD_MAX);
        let spends: Vec<(String, u64)> = held
            .iter()
            .filter_map(|w| match w {
                Write::Spend {
                    key_id,
                    spent_nanos,
                    ..
                } => Some((key_id.clone(), *spent_nanos)),
                Write::Usage(_) => None,
            })
            .collect();
        assert_eq!(spends, [("k2".to_owned(), 5), ("k1".to_owned(), 2)]);
        match &held[1] {
            Write::Usage(r) => assert_eq!(r.request_id, "req_0005"),
            Write::Spend { .. } => panic!("expected the oldest record kept"),
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn spend_is_written_through_and_reservations_are_charged_after_a_crash() {
        let path =
            std::env::temp_dir().join(format!("conduit-spend-test-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let store = SqliteStore::open(&path).unwrap();
        store.save("k", 100, 50, 30);
        // A late write of an older state does not lower the spend.
        store.save("k", 100, 40, 0);
        assert_eq!(store.load("k").unwrap(), Some((100, 50)));
        // No close: what a killed process leaves is read by the next one.
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(again.load("k").unwrap(), Some((100, 50)));
        again.save("k", 100, 60, 25);
        assert_eq!(
            again.load("k").unwrap(),
            Some((100, 85)),
            "spent + the reservations held"
        );
        // A new period starts over.
        again.save("k", 200, 5, 0);
        assert_eq!(again.load("k").unwrap(), Some((200, 5)));
        again.close();
        store.close();
        let _ = std::fs::remove_file(&path);
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
}
