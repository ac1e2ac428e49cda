//! The writer thread: usage records and budget spend, in batches, one
//! transaction per batch, on its own connection.
//!
//! Usage records are written behind: the writer gathers them for up to
//! [`BATCH_WINDOW`] and commits them together. A spend write that a request
//! waits for does not wait for the window: it is committed at once (under
//! load, at most [`COMMIT_SPACING`] after the previous such commit), with
//! every spend write queued by then (a group commit: the requests of a busy
//! key share one transaction). A batch
//! writes each key's spend once (its latest state: a key's writes arrive in
//! the order of the states they carry), each record once, and one counter
//! upsert per hour row and per day row it touches.

use std::time::{Duration, Instant};

use conduit::metering::summary::{hour_of_ms, Counters, DAY};
use conduit::metering::usage::UsageRecord;
use conduit::FastMap;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use super::inbox::Inbox;
use super::{add_daily_sql, add_row, ADD_HOURLY};

/// What the writer thread writes.
pub(super) enum Write {
    Usage(Box<UsageRecord>),
    Spend(SpendWrite),
}

/// A key's spend and the estimate its reservations hold (the key's whole
/// state: a later one supersedes an earlier one).
pub(super) struct SpendWrite {
    pub key_id: String,
    pub period_start: u64,
    pub spent_nanos: u64,
    pub reserved_nanos: u64,
    /// The request waiting for this write, told once the batch carrying it
    /// is committed, or has failed (the write is then held and retried, and
    /// the request goes on: the file being unwritable stops no request).
    pub committed: Option<oneshot::Sender<()>>,
}

impl Write {
    /// A request waits for this write.
    pub(super) fn waited(&self) -> bool {
        matches!(
            self,
            Write::Spend(SpendWrite {
                committed: Some(_),
                ..
            })
        )
    }

    /// Lets the request waiting for this write go on.
    fn release(&mut self) {
        if let Write::Spend(SpendWrite { committed, .. }) = self {
            if let Some(tx) = committed.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// How long the writer gathers usage records into one transaction. Bounds
/// how late a record shows in `GET /admin/usage`; amortises the commit.
pub(super) const BATCH_WINDOW: Duration = Duration::from_millis(100);
pub(super) const BATCH_MAX: usize = 1024;
/// The least time between two group commits of spend writes. A request
/// that waits for its spend right after one waits for the next at most this
/// long (when requests come further apart, its commit starts at once), so
/// that under load one commit carries many requests' spend.
const COMMIT_SPACING: Duration = Duration::from_micros(250);

/// Writes held while the file cannot be written (read-only, disk full):
/// beyond this many, the oldest usage records are dropped, and counted in
/// the log. Of the spend writes only each key's last is held (each is the
/// key's whole spend), and none is dropped: see [`hold`].
pub(super) const HELD_MAX: usize = 100_000;
/// The first wait before a failed batch is tried again; it doubles up to
/// [`RETRY_MAX`] while the store stays unwritable.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The writer thread. Writes arrive on two lanes: spend writes, committed
/// as soon as one of them is waited for, or [`COMMIT_SPACING`] after the
/// last such commit (with every spend write queued by then, in order: a
/// group commit that carries no record, so the commit is a page or two),
/// and usage records (with spend writes nobody waits for),
/// gathered for [`BATCH_WINDOW`] and committed together. A commit that
/// fails (the file read-only, the disk full) loses nothing: its writes are
/// held in memory (up to [`HELD_MAX`] records) and tried again, with what
/// came since, until the store takes them; a request waiting for a spend
/// write is let go at once meanwhile. Nothing of a failed commit was
/// written (one transaction), and a record written twice is counted once.
pub(super) fn write_loop(conn: Connection, inbox: &Inbox) {
    let mut spends: Vec<Write> = Vec::new();
    let mut records: Vec<Write> = Vec::new();
    // When the records gathered so far are due.
    let mut window: Option<Instant> = None;
    // When the spend writes a request waits for are due, and when the last
    // of them were committed.
    let mut spends_due: Option<Instant> = None;
    let mut last_spends: Option<Instant> = None;
    // While the store fails: when to try again, and the wait after that.
    let mut failing: Option<(Instant, Duration)> = None;
    let mut open = true;
    // One buffer for every record's JSON text.
    let mut json = Vec::with_capacity(2048);
    while open || !spends.is_empty() || !records.is_empty() {
        let due = match failing {
            Some((at, _)) => Some(at),
            None => [window, spends_due].into_iter().flatten().min(),
        };
        let (incoming, closed) = inbox.take(due);
        if closed {
            open = false;
        }
        for mut w in incoming {
            if failing.is_some() {
                // The file is unwritable: the request does not wait it out.
                w.release();
            }
            if w.waited() {
                // At once, or, right after the last group commit, at most
                // COMMIT_SPACING after it: the requests waiting by then share it.
                spends_due.get_or_insert_with(|| {
                    let now = Instant::now();
                    last_spends.map_or(now, |at| now.max(at + COMMIT_SPACING))
                });
            } else {
                window.get_or_insert_with(|| Instant::now() + BATCH_WINDOW);
            }
            match w {
                Write::Spend(_) => spends.push(w),
                Write::Usage(_) => records.push(w),
            }
        }
        let now = Instant::now();
        let records_due = match failing {
            Some((at, _)) => now >= at,
            None => window.is_some_and(|at| now >= at),
        };
        let all = !open || records_due || records.len() >= BATCH_MAX;
        // Spend writes alone, once a request waits for one (while the store
        // fails, every write waits for the retry instead).
        let spends_now = failing.is_none() && spends_due.is_some_and(|at| now >= at);
        if !(all || spends_now) {
            continue;
        }
        spends_due = None;
        if !spends.is_empty() {
            last_spends = Some(now);
        }
        let mut batch = std::mem::take(&mut spends);
        if all {
            batch.append(&mut records);
            window = None;
        }
        if batch.is_empty() {
            continue;
        }
        let written = write_batch(&conn, &batch, &mut json);
        for w in &mut batch {
            w.release();
        }
        match written {
            Ok(()) => {
                if failing.take().is_some() {
                    eprintln!(
                        "conduit: the database takes writes again; {} held writes written",
                        batch.len()
                    );
                }
            }
            Err(e) if open => {
                let retry = match failing {
                    None => {
                        eprintln!(
                            "conduit: could not write {} records ({e}); held in memory and retried",
                            batch.len()
                        );
                        crate::metrics::store_write_failed(batch.len() as u64);
                        RETRY_FIRST
                    }
                    Some((_, wait)) => wait,
                };
                failing = Some((Instant::now() + retry, (retry * 2).min(RETRY_MAX)));
                // Back in their lanes, before what came since (in order).
                batch.append(&mut records);
                let (held, dropped) = hold(batch);
                (spends, records) = held.into_iter().partition(|w| matches!(w, Write::Spend(_)));
                if dropped > 0 {
                    eprintln!("conduit: {dropped} usage records dropped: more than {HELD_MAX} writes held while the database is unwritable");
                }
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
pub(super) fn hold(batch: Vec<Write>) -> (Vec<Write>, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut keep: Vec<bool> = batch
        .iter()
        .rev()
        .map(|w| match w {
            Write::Spend(s) => seen.insert(s.key_id.clone()),
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

/// Saves a key's spend: a new period replaces the row; within a period the
/// larger spend stays (a write held from a failed batch may come after a
/// newer one, and a restarted process's first write after the last one of
/// the process before).
pub(super) const SAVE_SPEND: &str = "INSERT INTO key_spend (key_id, period_start, spent_nanos, reserved_nanos)
     VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (key_id) DO UPDATE SET
        spent_nanos = CASE WHEN excluded.period_start = period_start
                           THEN MAX(spent_nanos, excluded.spent_nanos) ELSE excluded.spent_nanos END,
        reserved_nanos = excluded.reserved_nanos,
        period_start = excluded.period_start";

const INSERT_RECORD: &str = "INSERT OR IGNORE INTO usage_records (created_at_ms, request_id, key_id, record) VALUES (?1, ?2, ?3, ?4)";

/// The counters a batch adds, per (hour or day start, key, model alias).
type CounterRows<'a> = FastMap<(u64, &'a str, &'a str), Counters>;

/// The batch's writes, as written: each key's last spend write (in the
/// batch's order of first appearance), and every record.
pub(super) fn coalesce(batch: &[Write]) -> (Vec<&SpendWrite>, Vec<&UsageRecord>) {
    let mut spends: Vec<&SpendWrite> = Vec::new();
    let mut slot: FastMap<&str, usize> = FastMap::default();
    let mut records = Vec::with_capacity(batch.len());
    for w in batch {
        match w {
            Write::Usage(r) => records.push(&**r),
            Write::Spend(s) => match slot.get(s.key_id.as_str()) {
                Some(&i) => spends[i] = s,
                None => {
                    slot.insert(&s.key_id, spends.len());
                    spends.push(s);
                }
            },
        }
    }
    (spends, records)
}

/// One batch in one transaction: all of it is written, or none. A batch
/// of one key's spend alone (a busy key's group commit) is one statement,
/// its own transaction; otherwise `BEGIN` and `COMMIT` are prepared once
/// and reused, like every statement here.
pub(super) fn write_batch(
    conn: &Connection,
    batch: &[Write],
    json: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    let (spends, records) = coalesce(batch);
    if spends.len() == 1 && records.is_empty() {
        return save_spends(conn, &spends);
    }
    conn.prepare_cached("BEGIN")?.execute([])?;
    let written = save_spends(conn, &spends)
        .and_then(|()| insert_records(conn, &records, json))
        .and_then(|()| conn.prepare_cached("COMMIT")?.execute([]).map(|_| ()));
    if written.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    written
}

fn save_spends(conn: &Connection, spends: &[&SpendWrite]) -> rusqlite::Result<()> {
    let mut spend = conn.prepare_cached(SAVE_SPEND)?;
    for s in spends {
        spend.execute(params![
            s.key_id,
            s.period_start as i64,
            s.spent_nanos as i64,
            s.reserved_nanos as i64
        ])?;
    }
    Ok(())
}

/// The records, and what they add to their hour and day rows: one upsert
/// per row, however many of the batch's records it counts.
fn insert_records(
    conn: &Connection,
    records: &[&UsageRecord],
    json: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut usage = conn.prepare_cached(INSERT_RECORD)?;
    let mut hours = CounterRows::default();
    for r in records {
        json.clear();
        r.write_stored_json(json)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        // A record is counted once, even if written twice.
        let inserted = usage.execute(params![
            r.created_at_ms as i64,
            r.request_id,
            r.key_id,
            ToSqlOutput::Borrowed(ValueRef::Text(json)),
        ])?;
        if inserted > 0 {
            hours
                .entry((hour_of_ms(r.created_at_ms), &r.key_id, &r.model))
                .or_default()
                .add(&Counters::of(r));
        }
    }
    let mut days = CounterRows::default();
    let mut add = conn.prepare_cached(ADD_HOURLY)?;
    for ((hour, key_id, model), c) in &hours {
        add_row(&mut add, *hour, key_id, model, c)?;
        days.entry((hour / DAY * DAY, key_id, model))
            .or_default()
            .add(c);
    }
    let mut add = conn.prepare_cached(&add_daily_sql())?;
    for ((day, key_id, model), c) in &days {
        add_row(&mut add, *day, key_id, model, c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::record;
    use super::*;

    fn spend(key: &str, n: u64) -> Write {
        Write::Spend(SpendWrite {
            key_id: key.into(),
            period_start: 0,
            spent_nanos: n,
            reserved_nanos: 0,
            committed: None,
        })
    }

    fn spends(writes: &[Write]) -> Vec<(String, u64)> {
        writes
            .iter()
            .filter_map(|w| match w {
                Write::Spend(s) => Some((s.key_id.clone(), s.spent_nanos)),
                Write::Usage(_) => None,
            })
            .collect()
    }

    /// A failed batch is held whole, except earlier spend writes of a key
    /// (the last one is its spend) and, past HELD_MAX, the oldest records.
    #[test]
    fn held_writes_keep_each_keys_last_spend_and_the_newest_records() {
        let mut batch = vec![spend("k1", 1), spend("k2", 5)];
        batch.extend(
            (0..HELD_MAX as u64 + 3).map(|n| Write::Usage(Box::new(record(n, "k1", n, 200)))),
        );
        batch.push(spend("k1", 2));
        let (held, dropped) = hold(batch);
        // HELD_MAX + 5 writes kept by the spend rule: the 5 oldest records go.
        assert_eq!(dropped, 5);
        assert_eq!(held.len(), HELD_MAX);
        assert_eq!(spends(&held), [("k2".to_owned(), 5), ("k1".to_owned(), 2)]);
        match &held[1] {
            Write::Usage(r) => assert_eq!(r.request_id, "req_0005"),
            Write::Spend { .. } => panic!("expected the oldest record kept"),
        }
    }

    /// A batch writes each key's spend once: its latest state.
    #[test]
    fn a_batch_writes_each_keys_latest_spend_and_every_record() {
        let batch = vec![
            spend("k1", 1),
            Write::Usage(Box::new(record(1, "k1", 1, 200))),
            spend("k2", 7),
            spend("k1", 3),
            Write::Usage(Box::new(record(2, "k1", 2, 200))),
            spend("k1", 4),
        ];
        let (spends, records) = coalesce(&batch);
        let spends: Vec<(&str, u64)> = spends
            .iter()
            .map(|s| (s.key_id.as_str(), s.spent_nanos))
            .collect();
        assert_eq!(spends, [("k1", 4), ("k2", 7)]);
        assert_eq!(records.len(), 2);
    }

    /// A spend write a request waits for is committed at once, without
    /// the records gathered meanwhile (they wait for the window), and its
    /// key's earlier write not waited for goes with it.
    #[test]
    fn a_waited_spend_is_committed_without_waiting_for_the_records() {
        use conduit::metering::limits::SpendStore;
        use conduit::ports::UsageStore;
        let path =
            std::env::temp_dir().join(format!("conduit-lanes-test-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let store = super::super::SqliteStore::open(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let records = |store: &super::super::SqliteStore| {
            store
                .with(|c| {
                    c.query_row("SELECT COUNT(*) FROM usage_records", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .unwrap()
        };
        let started = Instant::now();
        rt.block_on(async {
            store.record(record(1, "k", 1, 200)).await;
            drop(store.save("k", 0, 5, 0, false));
            store.save("j", 0, 7, 3, true).await;
        });
        // Unless this thread stalled for the whole window, the record is not in yet.
        assert!(records(&store) == 0 || started.elapsed() >= BATCH_WINDOW);
        assert_eq!(store.load("j").unwrap(), Some((0, 10)));
        assert_eq!(store.load("k").unwrap(), Some((0, 5)));
        store.close();
        assert_eq!(records(&store), 1, "written at close");
        let _ = std::fs::remove_file(&path);
    }

    /// A batch's counters, one upsert per hour and day row, are the rows
    /// one upsert per record gives (the backfill's way), a record sent
    /// twice counted once.
    #[test]
    fn batched_counters_are_the_per_record_ones() {
        let path =
            std::env::temp_dir().join(format!("conduit-counters-test-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let store = super::super::SqliteStore::open(&path).unwrap();
        let day0 = 1_767_225_600u64;
        let mut batch: Vec<Write> = (0..40u64)
            .map(|n| {
                let key = if n % 3 == 0 { "k1" } else { "k2" };
                let status = if n % 7 == 0 { 429 } else { 200 };
                Write::Usage(Box::new(record(n, key, (day0 + n * 5000) * 1000, status)))
            })
            .collect();
        batch.push(Write::Usage(Box::new(record(
            5,
            "k2",
            (day0 + 5 * 5000) * 1000,
            200,
        ))));
        let rows = |c: &Connection| -> rusqlite::Result<Vec<String>> {
            let mut out = Vec::new();
            for table in ["usage_hourly", "usage_daily"] {
                let mut stmt = c.prepare(&format!(
                    "SELECT * FROM {table} ORDER BY hour, key_id, model"
                ))?;
                let n = stmt.column_count();
                let mut q = stmt.query([])?;
                while let Some(r) = q.next()? {
                    let cells: Vec<String> = (0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect();
                    out.push(format!("{table}: {}", cells.join(" ")));
                }
            }
            Ok(out)
        };
        let mut json = Vec::new();
        let batched = store
            .with(|c| {
                write_batch(c, &batch, &mut json)?;
                rows(c)
            })
            .unwrap();
        assert!(batched.len() > 10, "{batched:?}");
        let per_record = store
            .with(|c| {
                c.execute_batch("DELETE FROM usage_hourly; DELETE FROM usage_daily;")?;
                super::super::backfill_hourly(c)?;
                rows(c)
            })
            .unwrap();
        assert_eq!(batched, per_record);
        store.close();
        let _ = std::fs::remove_file(&path);
    }

    /// A request waiting on a write is released when its batch is done,
    /// and when the writer goes away without writing it.
    #[test]
    fn release_tells_the_waiting_request() {
        let (done, mut wait) = oneshot::channel();
        let mut w = Write::Spend(SpendWrite {
            key_id: "k".into(),
            period_start: 0,
            spent_nanos: 1,
            reserved_nanos: 0,
            committed: Some(done),
        });
        assert!(w.waited());
        assert!(wait.try_recv().is_err());
        w.release();
        assert!(!w.waited());
        assert_eq!(wait.try_recv(), Ok(()));
    }
}
