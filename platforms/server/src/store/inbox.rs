//! The writer thread's inbox: a queue that wakes the writer only when it
//! must.
//!
//! A channel wakes a sleeping receiver on every send. The writer sleeps
//! most of the time, gathering usage records for a batch window, so a
//! channel woke it for nearly every request for nothing: at saturation
//! (22,000 chat requests a second) it switched 11,000 times a second and
//! used 30 % of the server's CPU; with this inbox 1,200 times and 24 %, and
//! the server's CPU per request fell by about 8 % (`perf stat
//! --per-thread`). Here a write wakes the writer only when the writer waits
//! with no deadline (nothing gathered yet), when a request waits for the
//! write (a spend write: group commit), when the queue reaches a batch's
//! size, or when the
//! inbox closes; everything else is picked up when the writer's deadline
//! comes.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use super::writer::Write;

/// Writes queued for the writer thread.
#[derive(Default)]
pub(super) struct Inbox {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    writes: VecDeque<Write>,
    /// No more writes come: the writer drains what is left and stops.
    closed: bool,
    /// The writer is asleep until a deadline of its own: only urgent
    /// writes wake it.
    until_deadline: bool,
    /// A write that must not wait for the writer's deadline is queued.
    urgent: bool,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a queue that is
        // still consistent (pushes and drains are single calls).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a write; gives it back when the inbox is closed.
    pub(super) fn send(&self, write: Write, batch_max: usize) -> Result<(), Write> {
        let mut state = self.lock();
        if state.closed {
            return Err(write);
        }
        let urgent = write.waited() || !state.until_deadline || state.writes.len() + 1 >= batch_max;
        state.writes.push_back(write);
        if urgent && !state.urgent {
            state.urgent = true;
            drop(state);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// No more writes: wakes the writer to drain what is queued.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Waits until a write comes (`due` = `None`), or until `due` unless an
    /// urgent write comes first; then hands over every queued write, and
    /// whether the inbox is closed.
    pub(super) fn take(&self, due: Option<Instant>) -> (Vec<Write>, bool) {
        let mut state = self.lock();
        loop {
            if state.closed || state.urgent {
                break;
            }
            match due {
                None if !state.writes.is_empty() => break,
                None => {
                    state.until_deadline = false;
                    state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                Some(at) => {
                    let now = Instant::now();
                    if now >= at {
                        break;
                    }
                    state.until_deadline = true;
                    state = self
                        .wake
                        .wait_timeout(state, at - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        state.urgent = false;
        // Until the writer waits again it is busy: a write queued meanwhile
        // is seen when it comes back, without a wake-up.
        state.until_deadline = true;
        (state.writes.drain(..).collect(), state.closed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::store::writer::SpendWrite;

    fn spend(waited: bool) -> (Write, Option<tokio::sync::oneshot::Receiver<()>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let w = Write::Spend(SpendWrite {
            key_id: "k".into(),
            period_start: 0,
            spent_nanos: 1,
            reserved_nanos: 0,
            committed: waited.then_some(tx),
        });
        (w, waited.then_some(rx))
    }

    /// A writer waiting on a deadline is not woken by a write nobody waits
    /// for, and is woken at once by one a request waits for.
    #[test]
    fn only_urgent_writes_wake_a_writer_with_a_deadline() {
        let inbox = Arc::new(Inbox::default());
        let far = Instant::now() + Duration::from_secs(30);
        // The writer is busy (it took a batch): a plain write waits for it.
        let (got, closed) = {
            inbox.send(spend(false).0, 1024).ok().unwrap();
            inbox.take(None)
        };
        assert_eq!((got.len(), closed), (1, false));
        let waiter = {
            let inbox = inbox.clone();
            std::thread::spawn(move || {
                let (got, _) = inbox.take(Some(far));
                (got.len(), Instant::now())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        inbox.send(spend(false).0, 1024).ok().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // Compared with when the writer woke, not with a duration: on a busy
        // machine the writer's thread may start late, even after both sends.
        let urgent_sent = Instant::now();
        inbox.send(spend(true).0, 1024).ok().unwrap();
        let (n, woke) = waiter.join().unwrap();
        assert_eq!(
            n, 2,
            "both writes handed over together (not woken by the first)"
        );
        assert!(woke >= urgent_sent, "woken by the waited write");
        assert!(
            woke < urgent_sent + Duration::from_secs(10),
            "woken at once"
        );
    }

    /// Closing hands back later writes and wakes the writer.
    #[test]
    fn closing_wakes_the_writer_and_refuses_writes() {
        let inbox = Arc::new(Inbox::default());
        let waiter = {
            let inbox = inbox.clone();
            std::thread::spawn(move || inbox.take(None).1)
        };
        std::thread::sleep(Duration::from_millis(20));
        inbox.close();
        assert!(waiter.join().unwrap());
        assert!(inbox.send(spend(false).0, 1024).is_err());
    }
}
