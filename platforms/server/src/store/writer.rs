//! The writer thread: usage records and budget spend, in batches, one
//! transaction per batch, on its own connection.
//!
//! Usage records are written behind: the writer gathers them for up to
//! [`BATCH_WINDOW`] and commits them together. A spend write that a request
//! waits for (a group commit) ends the gathering: what is already queued
//! joins the batch and the batch is committed at once, so the requests of a
//! busy key share one transaction, and each waits about one commit, never
//! the window. A batch writes each key's spend once (its latest state: a
//! key's writes arrive in the order of the states they carry), each record
//! once, and one counter upsert per hour row and per day row it touches.

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use conduit::metering::summary::{hour_of_ms, Counters, DAY};
use conduit::metering::usage::UsageRecord;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection};
use tokio::sync::oneshot;

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
    fn waited(&self) -> bool {
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
const BATCH_MAX: usize = 1024;

/// Writes held while the file cannot be written (read-only, disk full):
/// beyond this many, the oldest usage records are dropped, and counted in
/// the log. Of the spend writes only each key's last is held (each is the
/// key's whole spend), and none is dropped: see [`hold`].
pub(super) const HELD_MAX: usize = 100_000;
/// The first wait before a failed batch is tried again; it doubles up to
/// [`RETRY_MAX`] while the store stays unwritable.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The writer thread: waits for a write, gathers the batch ([`gather`]),
/// and applies it in one transaction. A batch that fails (the file
/// read-only, the disk full) is not lost: it is held in memory (up to
/// [`HELD_MAX`] writes) and tried again, with what came since, until the
/// store takes it; nothing of a failed batch was written (one transaction),
/// and a record written twice is counted once.
pub(super) fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Write>) {
    let mut held: Vec<Write> = Vec::new();
    let mut retry = RETRY_FIRST;
    let mut open = true;
    // One buffer for every record's JSON text.
    let mut json = Vec::with_capacity(2048);
    while open || !held.is_empty() {
        let mut batch = std::mem::take(&mut held);
        if batch.is_empty() {
            match rx.recv() {
                Ok(first) => batch.push(first),
                Err(_) => break,
            }
        } else if open {
            // Wait before trying the held writes again, taking new ones
            // meanwhile. A request does not wait out the unwritable file: its
            // spend is held with the others, as a failed batch's is.
            let until = Instant::now() + retry;
            loop {
                match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(mut w) => {
                        w.release();
                        batch.push(w);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
        }
        if open {
            open = gather(&rx, &mut batch);
        }
        let written = write_batch(&mut conn, &batch, &mut json);
        for w in &mut batch {
            w.release();
        }
        match written {
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

/// Adds to `batch` what comes within [`BATCH_WINDOW`] (up to [`BATCH_MAX`]
/// writes), or, once a write a request waits for is in, only what is
/// already queued: the waiting requests share the commit and wait for
/// nothing else. Returns whether the channel is still open.
fn gather(rx: &mpsc::Receiver<Write>, batch: &mut Vec<Write>) -> bool {
    let deadline = Instant::now() + BATCH_WINDOW;
    let mut waited = batch.iter().any(Write::waited);
    while batch.len() < BATCH_MAX {
        let next = if waited {
            match rx.try_recv() {
                Ok(w) => w,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        } else {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(w) => w,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            }
        };
        waited |= next.waited();
        batch.push(next);
    }
    true
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

const INSERT_RECORD: &str = "INSERT OR IGNORE INTO usage_records (request_id, key_id, created_at_ms, record) VALUES (?1, ?2, ?3, ?4)";

/// The counters a batch adds, per (hour or day start, key, model alias).
type CounterRows<'a> = HashMap<(u64, &'a str, &'a str), Counters>;

/// The batch's writes, as written: each key's last spend write (in the
/// batch's order of first appearance), and every record.
pub(super) fn coalesce(batch: &[Write]) -> (Vec<&SpendWrite>, Vec<&UsageRecord>) {
    let mut spends: Vec<&SpendWrite> = Vec::new();
    let mut slot: HashMap<&str, usize> = HashMap::new();
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

/// One batch in one transaction: all of it is written, or none.
pub(super) fn write_batch(
    conn: &mut Connection,
    batch: &[Write],
    json: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    let (spends, records) = coalesce(batch);
    let tx = conn.transaction()?;
    {
        let mut spend = tx.prepare_cached(SAVE_SPEND)?;
        for s in spends {
            spend.execute(params![
                s.key_id,
                s.period_start as i64,
                s.spent_nanos as i64,
                s.reserved_nanos as i64
            ])?;
        }
        if !records.is_empty() {
            let mut usage = tx.prepare_cached(INSERT_RECORD)?;
            let mut hours = CounterRows::new();
            for r in records {
                json.clear();
                r.write_json(json)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                // A record is counted once, even if written twice.
                let inserted = usage.execute(params![
                    r.request_id,
                    r.key_id,
                    r.created_at_ms as i64,
                    ToSqlOutput::Borrowed(ValueRef::Text(json)),
                ])?;
                if inserted > 0 {
                    hours
                        .entry((hour_of_ms(r.created_at_ms), &r.key_id, &r.model))
                        .or_default()
                        .add(&Counters::of(r));
                }
            }
            let mut days = CounterRows::new();
            let mut add = tx.prepare_cached(ADD_HOURLY)?;
            for ((hour, key_id, model), c) in &hours {
                add_row(&mut add, *hour, key_id, model, c)?;
                days.entry((hour / DAY * DAY, key_id, model))
                    .or_default()
                    .add(c);
            }
            let mut add = tx.prepare_cached(&add_daily_sql())?;
            for ((day, key_id, model), c) in &days {
                add_row(&mut add, *day, key_id, model, c)?;
            }
        }
    }
    tx.commit()
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

    /// Waiting requests share one commit and wait for nothing else; records
    /// alone wait for the window.
    #[test]
    fn a_waited_write_ends_the_gathering() {
        let (tx, rx) = mpsc::channel();
        let (done, _wait) = oneshot::channel();
        let mut first = vec![Write::Usage(Box::new(record(1, "k", 1, 200)))];
        tx.send(spend("k", 1)).unwrap();
        tx.send(Write::Spend(SpendWrite {
            key_id: "k".into(),
            period_start: 0,
            spent_nanos: 2,
            reserved_nanos: 0,
            committed: Some(done),
        }))
        .unwrap();
        tx.send(spend("k", 3)).unwrap();
        let started = Instant::now();
        assert!(gather(&rx, &mut first));
        assert!(started.elapsed() < BATCH_WINDOW, "waited for the window");
        assert_eq!(first.len(), 4, "what was queued joins the commit");
        let mut records = vec![Write::Usage(Box::new(record(2, "k", 2, 200)))];
        let started = Instant::now();
        assert!(gather(&rx, &mut records));
        assert!(started.elapsed() >= BATCH_WINDOW);
        drop(tx);
        assert!(!gather(&rx, &mut records), "closed");
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
