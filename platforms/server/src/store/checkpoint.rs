//! WAL checkpoints on a thread of their own.
//!
//! In WAL mode a commit appends to the log without an fsync (`synchronous =
//! NORMAL`); the checkpoint that copies the log back into the database is
//! what fsyncs. SQLite runs it inside whichever commit crosses
//! `wal_autocheckpoint`, so a group commit of spend that a request waits
//! for would now and then wait for an fsync too (the `limited` benchmark's
//! p99 at 200 requests/s was 2.4 ms against 0.4 ms without a budget). Both
//! writing connections turn automatic checkpoints off; this thread runs a
//! passive checkpoint (one that never blocks a writer or a reader) every
//! [`PERIOD`] once the log file has reached [`THRESHOLD`] (SQLite's own
//! automatic threshold: below it the log just grows, as it would without
//! this thread), whatever writes the log, admin writes included.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// How often the log is checkpointed. At the server's saturation the log
/// grows by a few MiB in this time, and a checkpoint with nothing to copy
/// costs a few microseconds.
const PERIOD: Duration = Duration::from_millis(250);
/// The log's size from which it is checkpointed: SQLite's default
/// `wal_autocheckpoint` of 1,000 pages of 4 KiB. A checkpointed log is
/// written again from its start, so its file stays about this size.
const THRESHOLD: u64 = 1000 * 4096;

/// The checkpointing thread; [`stop`](Self::stop) ends it after a last
/// checkpoint.
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Starts checkpointing, on `conn`, the database whose log is `wal`.
    pub(super) fn start(conn: Connection, wal: PathBuf) -> std::io::Result<Checkpointer> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("conduit-checkpoint".into())
            .spawn(move || run(conn, &wal, &flag))?;
        Ok(Checkpointer {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Tells the thread to end after a last checkpoint, without waiting.
    pub(super) fn signal_stop(&self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_one();
    }

    /// Ends the thread (after the writer has stopped: its last commit is
    /// checkpointed too).
    pub(super) fn stop(&self) {
        self.signal_stop();
        if let Some(handle) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = handle.join();
        }
    }
}

fn run(conn: Connection, wal: &Path, stop: &(Mutex<bool>, Condvar)) {
    let (flag, wake) = stop;
    let mut stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let done = *stopped;
        drop(stopped);
        // A failure (the disk full, the file read-only) is the writer's to
        // report and retry; the log keeps the data meanwhile.
        let grown = std::fs::metadata(wal).is_ok_and(|m| m.len() >= THRESHOLD);
        if grown || done {
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        }
        if done {
            return;
        }
        stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
        if !*stopped {
            stopped = wake
                .wait_timeout(stopped, PERIOD)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
