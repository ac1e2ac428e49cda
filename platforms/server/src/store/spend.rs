//! The spend of keys with a budget, kept across restarts and crashes: the
//! [`SpendStore`] of the server's [`LocalLimiter`](conduit::metering::limits::LocalLimiter).
//!
//! A save is handed to the writer thread (a channel send, no SQLite on the
//! request's thread) and, when the limiter waits for it, committed in the
//! next batch, shared with every other save queued by then (a group
//! commit). The row holds the spend and what is covered beyond it (the
//! reservations' estimate and the headroom of the limiter's high-water
//! mark, or, after a clean shutdown, the reservations alone); a read after
//! a crash charges all of it (the process that held them is gone).

use conduit::compat::BoxFuture;
use conduit::metering::limits::SpendStore;
use conduit::ports::StoreError;
use rusqlite::OptionalExtension;
use tokio::sync::oneshot;

use super::writer::{SpendWrite, Write};
use super::SqliteStore;

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

    fn save(
        &self,
        key_id: &str,
        period_start: u64,
        spent_nanos: u64,
        reserved_nanos: u64,
        durable: bool,
    ) -> BoxFuture<'static, ()> {
        let (committed, done) = match durable {
            true => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        self.queue(Write::Spend(SpendWrite {
            key_id: key_id.to_owned(),
            period_start,
            spent_nanos,
            reserved_nanos,
            committed,
        }));
        Box::pin(async move {
            if let Some(done) = done {
                // An error is a writer gone (shut down): nothing to wait for.
                let _ = done.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_is_written_through_and_reservations_are_charged_after_a_crash() {
        let path =
            std::env::temp_dir().join(format!("conduit-spend-test-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        rt.block_on(store.save("k", 100, 50, 30, true));
        // A late write of an older state does not lower the spend.
        rt.block_on(store.save("k", 100, 40, 0, true));
        assert_eq!(store.load("k").unwrap(), Some((100, 50)));
        // No close: what a killed process leaves is read by the next one.
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(again.load("k").unwrap(), Some((100, 50)));
        rt.block_on(again.save("k", 100, 60, 25, true));
        assert_eq!(
            again.load("k").unwrap(),
            Some((100, 85)),
            "spent + the reservations held"
        );
        // A new period starts over.
        rt.block_on(again.save("k", 200, 5, 0, true));
        assert_eq!(again.load("k").unwrap(), Some((200, 5)));
        again.close();
        store.close();
        let _ = std::fs::remove_file(&path);
    }

    /// Saves of many keys, waited for and not, from many requests at once:
    /// each key ends at its latest state; a save not waited for is written
    /// with the next batch (or at close).
    #[test]
    fn concurrent_saves_share_commits_and_keep_the_latest_state() {
        let path =
            std::env::temp_dir().join(format!("conduit-spend-group-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let store = SqliteStore::open(&path).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for key in 0..8u64 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    for n in 1..=50u64 {
                        let id = format!("k{key}");
                        store.save(&id, 7, n * 10, 5, n % 3 != 0).await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        // Every key's last save (500 + 5) was waited for (50 % 3 != 0).
        for key in 0..8 {
            assert_eq!(store.load(&format!("k{key}")).unwrap(), Some((7, 505)));
        }
        // A save not waited for is on disk at close.
        drop(store.save("late", 7, 1, 0, false));
        store.close();
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(again.load("late").unwrap(), Some((7, 1)));
        again.close();
        let _ = std::fs::remove_file(&path);
    }
}
