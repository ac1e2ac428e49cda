//! The single-process limiter (the native server), over [`KeyLimitState`].
//!
//! Crash safety of a key with a budget: after `kill -9` at any moment, the
//! saved spend is never below what clients were billed. What is saved is a
//! **high-water mark**, not the spend itself: an amount at least the key's
//! spent + reserved (every open reservation counted at its estimate), with
//! some headroom above it. The rule that keeps it with few writes:
//! - an admission whose spent + reserved stays within the mark already on
//!   disk goes upstream at once; one that would pass it saves a new mark,
//!   spent + reserved + [`headroom`], and waits until that is durable (the
//!   store commits the writes of many requests in one transaction); one
//!   that stays within a mark still being written waits for that write;
//! - a settlement does the same with the settled spent + reserved (it
//!   passes the mark only when a request cost more than its estimate, or a
//!   new period began). The gateway does not send a response's last byte
//!   before its settlement is done.
//!
//! So a key writes once per [`headroom`] of spend, not once per request.
//! After a crash the key restarts from its mark: its spend reads up to one
//! headroom high (the reservations then open are charged at their estimate,
//! as before), never low. A clean shutdown ([`LocalLimiter::flush`]) saves
//! each key's exact spend and open estimate instead, so a restart without a
//! crash reads the spend exactly.

use std::sync::{Arc, Mutex};

use futures_util::future::{FutureExt, Shared};

use super::answer::Rejection;
use super::state::{Ask, KeyLimitState, LimitStatus};
use crate::compat::{BoxFuture, MaybeSendSync};
use crate::keys::{Budget, VirtualKey};
use crate::ports::{Admission, Clock, Demand, Limiter, Settlement, StoreError};
use crate::FastMap;

/// Spend kept across restarts (and crashes) by a single-process limiter.
pub trait SpendStore: MaybeSendSync {
    /// The saved `(period_start, spent_nanos)` of a key: its saved spend
    /// plus what was saved beside it as covered (reservations left
    /// unsettled by a previous process, charged at their estimate: the
    /// process that held them is gone; or the headroom of a high-water
    /// mark). An error (the store cannot be read) refuses the key's
    /// admission with 503 rather than starting its spend from zero.
    fn load(&self, key_id: &str) -> Result<Option<(u64, u64)>, StoreError>;
    /// Saves a key's spend and the amount covered beyond it
    /// (`reserved_nanos`: the estimate its open reservations hold, and, for
    /// a high-water mark, the headroom above that); [`load`](Self::load)
    /// gives back their sum.
    ///
    /// The write is handed over when this is called, not when the future is
    /// polled: the limiter calls it under its lock, so a key's writes reach
    /// the store in the order of the states they carry, and the latest one
    /// is the key's spend. With `durable`, the future completes once the
    /// write is on disk (or has failed and is held to be retried: requests
    /// go on while the file is unwritable); without, at once, the write
    /// going to disk with the next batch. Within a period the store never
    /// lowers a saved `spent_nanos`; `reserved_nanos` is replaced.
    fn save(
        &self,
        key_id: &str,
        period_start: u64,
        spent_nanos: u64,
        reserved_nanos: u64,
        durable: bool,
    ) -> BoxFuture<'static, ()>;
}

/// The most a high-water mark runs ahead of the spend it covers: 1 USD.
pub const HEADROOM_MAX_NANOS: u64 = 1_000_000_000;

/// How far above a key's spent + reserved its saved mark is set: 1 % of
/// the budget, at most [`HEADROOM_MAX_NANOS`] (1 USD). It bounds what a
/// crash costs (the key's spend reads at most this much high afterwards)
/// and sets how often a busy key writes: a request estimated at 20
/// micro-USD (a short `gpt-4o-mini` chat) writes once every 50,000
/// requests under a budget of 100 USD or more, once every 500 under 1 USD.
pub fn headroom(budget: &Budget) -> u64 {
    (budget.max_nanos / 100).min(HEADROOM_MAX_NANOS)
}

/// The mark saved for a key whose spent + reserved is `total`: the
/// [`headroom`] above it, but not past the budget (a key near its budget
/// reads at most fully spent after a crash; admission keeps spent +
/// reserved within the budget, so such a mark is rarely passed), and never
/// below `total`.
fn mark_for(total: u64, budget: &Budget) -> u64 {
    total
        .saturating_add(headroom(budget))
        .min(budget.max_nanos)
        .max(total)
}

/// A key's high-water mark, as this process has saved it.
#[derive(Default)]
struct Mark {
    /// The budget period the mark belongs to; `None` while nothing is saved
    /// (a key never written, and not read back with a spend).
    period_start: Option<u64>,
    /// The highest mark handed to the store for the period.
    nanos: u64,
    /// The mark known to be on disk (at most `nanos`).
    durable: u64,
    /// The write of `nanos` until it is known to be on disk; the requests
    /// that need it meanwhile wait for it together.
    pending: Option<Shared<BoxFuture<'static, ()>>>,
}

/// What the limiter keeps per key.
struct KeyEntry {
    state: KeyLimitState,
    mark: Mark,
}

impl KeyEntry {
    /// What a request must wait for before the key's spent + reserved
    /// (`spent` + `reserved` in the period `start`) counts as saved:
    /// nothing within the durable mark; the write in flight within the mark
    /// being written; past the mark, a new mark, saved now.
    fn cover(
        &mut self,
        store: &dyn SpendStore,
        key_id: &str,
        budget: &Budget,
        (start, spent, reserved): (u64, u64, u64),
    ) -> Option<Shared<BoxFuture<'static, ()>>> {
        let total = spent.saturating_add(reserved);
        let mark = &mut self.mark;
        if mark.period_start == Some(start) {
            if total <= mark.durable {
                return None;
            }
            if total <= mark.nanos {
                if let Some(pending) = &mark.pending {
                    if pending.peek().is_none() {
                        return Some(pending.clone());
                    }
                    // The write is done: the mark is on disk.
                    mark.durable = mark.nanos;
                    mark.pending = None;
                    return None;
                }
            }
        } else {
            // A new period (or the first write): nothing of it is saved yet.
            mark.durable = 0;
        }
        let nanos = mark_for(total, budget);
        let write = store
            .save(key_id, start, spent, nanos - spent, true)
            .shared();
        mark.period_start = Some(start);
        mark.nanos = nanos;
        mark.pending = Some(write.clone());
        Some(write)
    }
}

/// The limiter of a single process (the native server): every key's state
/// in memory behind one mutex, which makes admission atomic; the spend of
/// the current period saved through a [`SpendStore`] as a high-water mark
/// (see the module doc).
pub struct LocalLimiter {
    clock: Arc<dyn Clock>,
    states: Mutex<FastMap<String, KeyEntry>>,
    spend: Option<Arc<dyn SpendStore>>,
}

impl LocalLimiter {
    pub fn new(clock: Arc<dyn Clock>, spend: Option<Arc<dyn SpendStore>>) -> Self {
        LocalLimiter {
            clock,
            states: Mutex::default(),
            spend,
        }
    }

    fn with_state<T>(
        &self,
        key: &VirtualKey,
        f: impl FnOnce(&mut KeyEntry) -> T,
    ) -> Result<T, StoreError> {
        let mut states = self
            .states
            .lock()
            .map_err(|_| StoreError("limiter lock poisoned".into()))?;
        // A key seen before is found without copying its id.
        if let Some(entry) = states.get_mut(&key.id) {
            return Ok(f(entry));
        }
        let mut entry = KeyEntry {
            state: KeyLimitState::default(),
            mark: Mark::default(),
        };
        // The saved spend is read before the key's first admission; a read
        // that fails is an error, not a key that has spent nothing.
        let saved = match &self.spend {
            Some(p) => p.load(&key.id)?,
            None => None,
        };
        if let Some((start, spent)) = saved {
            entry.state.restore_spend(start, spent);
            // What was read is on disk: the key's mark until it passes it.
            entry.mark = Mark {
                period_start: Some(start),
                nanos: spent,
                durable: spent,
                pending: None,
            };
        }
        Ok(f(states.entry(key.id.clone()).or_insert(entry)))
    }

    /// Saves every key's exact spend and open estimate in place of its
    /// high-water mark: a clean shutdown, after the last request, so that
    /// the next process reads the spend exactly rather than up to a
    /// headroom high. The writes are handed to the store (which writes them
    /// when it closes); nothing is waited for.
    pub fn flush(&self) {
        let Some(store) = &self.spend else { return };
        let Ok(mut states) = self.states.lock() else {
            return;
        };
        for (key_id, entry) in states.iter_mut() {
            let Some(mark_start) = entry.mark.period_start else {
                continue;
            };
            let ((start, spent), reserved) = (entry.state.spend(), entry.state.reserved_nanos());
            let total = spent.saturating_add(reserved);
            if start == mark_start && total == entry.mark.nanos {
                continue;
            }
            drop(store.save(key_id, start, spent, reserved, false));
            entry.mark = Mark {
                period_start: Some(start),
                nanos: total,
                durable: total,
                pending: None,
            };
        }
    }
}

/// Releases an admission's reservation unless forgotten: the admission was
/// dropped before it returned, and the request never went upstream. The
/// saved mark still covers the key (it only ever errs high): nothing is
/// written.
struct Unwind<'a> {
    limiter: &'a LocalLimiter,
    key: &'a VirtualKey,
    reservation: Option<u64>,
}

impl Drop for Unwind<'_> {
    fn drop(&mut self) {
        let Some(id) = self.reservation else { return };
        let (limiter, key) = (self.limiter, self.key);
        let now = limiter.clock.now_micros() / 1_000_000;
        let _ = limiter.with_state(key, |e| e.state.settle(now, key.budget.as_ref(), id, 0, 0));
    }
}

fn limited(key: &VirtualKey) -> bool {
    !key.limits.is_empty() || key.budget.is_some()
}

crate::port! {
    impl Limiter for LocalLimiter {
        async fn admit(&self, key: &VirtualKey, demand: &Demand) -> Result<Admission, Rejection> {
            if !limited(key) {
                return Ok(Admission::default());
            }
            let now = self.clock.now_micros() / 1_000_000;
            let ask = Ask {
                now_secs: now,
                limits: &key.limits,
                budget: key.budget.as_ref(),
                tokens: demand.tokens,
                cost_nanos: demand.cost_nanos,
                ttl_secs: demand.ttl_secs,
            };
            let (result, saved) = self
                .with_state(key, |e| {
                    let (r, status) = e.state.admit_with_status(&ask);
                    // Handed over under the lock (see SpendStore::save); the
                    // request goes upstream once its reservation is covered
                    // by a mark on disk.
                    let saved = match (&self.spend, &r, &key.budget, status.period_start) {
                        (Some(store), Ok(_), Some(budget), Some(start)) => e.cover(
                            store.as_ref(),
                            &key.id,
                            budget,
                            (start, status.spent_nanos, status.reserved_nanos),
                        ),
                        _ => None,
                    };
                    ((r, status), saved)
                })
                .map_err(|e| Rejection {
                    error: e.into(),
                    status: LimitStatus::default(),
                })?;
            if let Some(saved) = saved {
                // Dropped while waiting (the client left): the reservation is
                // released, not left to expire and be charged at its estimate.
                let unwind = Unwind {
                    limiter: self,
                    key,
                    reservation: result.0.as_ref().ok().map(|r| r.id),
                };
                saved.await;
                std::mem::forget(unwind);
            }
            match result {
                (Ok(reservation), status) => Ok(Admission { reservation: Some(reservation), status, key: None }),
                (Err(refusal), status) => Err(Rejection { error: refusal.to_error(key.budget.as_ref()), status }),
            }
        }

        async fn settle(&self, key: &VirtualKey, admission: &Admission, settlement: Settlement) {
            let Some(reservation) = admission.reservation else { return };
            let now = self.clock.now_micros() / 1_000_000;
            let saved = self.with_state(key, |e| {
                e.state.settle(now, key.budget.as_ref(), reservation.id, settlement.tokens, settlement.cost_nanos);
                let (Some(store), Some(budget)) = (&self.spend, &key.budget) else { return None };
                let ((start, spent), reserved) = (e.state.spend(), e.state.reserved_nanos());
                e.cover(store.as_ref(), &key.id, budget, (start, spent, reserved))
            });
            if let Ok(Some(saved)) = saved {
                saved.await;
            }
        }

        async fn status(&self, key: &VirtualKey) -> Result<LimitStatus, StoreError> {
            let now = self.clock.now_micros() / 1_000_000;
            self.with_state(key, |e| e.state.status(now, &key.limits, key.budget.as_ref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::memory::ManualClock;

    /// A store with a disk and a queue: a write is handed over into the
    /// queue, and reaches the disk (the state a crash leaves) at `commit`.
    /// A durable write's future completes once it is on the disk.
    #[derive(Default)]
    struct Disk {
        inner: Mutex<DiskState>,
    }

    #[derive(Default)]
    struct DiskState {
        /// key -> (period_start, spent, reserved), as SQLite keeps the row.
        rows: HashMap<String, (u64, u64, u64)>,
        queue: VecDeque<(u64, String, u64, u64, u64)>,
        handed: u64,
        committed: u64,
        /// (durable?) of every write handed over, in order.
        log: Vec<bool>,
    }

    impl Disk {
        fn commit(&self) {
            let mut d = self.inner.lock().unwrap();
            while let Some((seq, key, start, spent, reserved)) = d.queue.pop_front() {
                let row = d.rows.entry(key).or_insert((start, 0, 0));
                // The store's rule: within a period, `spent` never goes down.
                *row = if row.0 == start {
                    (start, row.1.max(spent), reserved)
                } else {
                    (start, spent, reserved)
                };
                d.committed = seq;
            }
        }

        /// A crash: what was not committed is lost.
        fn crash(&self) {
            self.inner.lock().unwrap().queue.clear();
        }

        fn writes(&self) -> Vec<bool> {
            self.inner.lock().unwrap().log.clone()
        }
    }

    impl SpendStore for Arc<Disk> {
        fn load(&self, key_id: &str) -> Result<Option<(u64, u64)>, StoreError> {
            let d = self.inner.lock().unwrap();
            Ok(d.rows.get(key_id).map(|(s, spent, res)| (*s, spent + res)))
        }

        fn save(
            &self,
            key_id: &str,
            period_start: u64,
            spent_nanos: u64,
            reserved_nanos: u64,
            durable: bool,
        ) -> BoxFuture<'static, ()> {
            let mut d = self.inner.lock().unwrap();
            d.handed += 1;
            let seq = d.handed;
            d.queue.push_back((
                seq,
                key_id.to_owned(),
                period_start,
                spent_nanos,
                reserved_nanos,
            ));
            d.log.push(durable);
            let disk = self.clone();
            Box::pin(std::future::poll_fn(move |_| {
                if !durable || disk.inner.lock().unwrap().committed >= seq {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }))
        }
    }

    fn poll<F: Future + ?Sized>(f: &mut Pin<&mut F>) -> Poll<F::Output> {
        f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    fn key(max_usd: f64) -> VirtualKey {
        VirtualKey::from_create_body(
            &serde_json::json!({"name": "k", "budget": {"max_usd": max_usd, "period": "total"}}),
            "key_1".into(),
            1,
        )
        .unwrap()
    }

    fn demand(cost_nanos: u64) -> Demand {
        Demand {
            key_hash: String::new(),
            model: "m".into(),
            tokens: 10,
            cost_nanos,
            ttl_secs: 60,
        }
    }

    fn limiter(disk: &Arc<Disk>) -> LocalLimiter {
        let store: Arc<dyn SpendStore> = Arc::new(disk.clone());
        LocalLimiter::new(Arc::new(ManualClock::new(1_000_000)), Some(store))
    }

    /// Admits at once, or panics.
    fn admit_now(l: &LocalLimiter, key: &VirtualKey, cost: u64) -> Admission {
        match poll(&mut std::pin::pin!(l.admit(key, &demand(cost)))) {
            Poll::Ready(Ok(a)) => a,
            Poll::Ready(Err(_)) => panic!("refused"),
            Poll::Pending => panic!("waited"),
        }
    }

    #[test]
    fn headroom_is_a_percent_of_the_budget_up_to_a_dollar() {
        let b = |usd: f64| key(usd).budget.unwrap();
        assert_eq!(headroom(&b(0.01)), 100_000);
        assert_eq!(headroom(&b(10.0)), 100_000_000);
        assert_eq!(headroom(&b(1_000_000.0)), HEADROOM_MAX_NANOS);
        // Never past the budget, never below what it covers.
        assert_eq!(mark_for(9_950_000, &b(0.01)), 10_000_000);
        assert_eq!(mark_for(10_500_000, &b(0.01)), 10_500_000);
    }

    /// Only the admission that passes the mark on disk writes and waits;
    /// those within it go upstream at once, those within a mark still
    /// being written wait for that write (and write nothing).
    #[test]
    fn admissions_wait_only_when_they_pass_the_mark() {
        let disk = Arc::new(Disk::default());
        let l = limiter(&disk);
        // 1 USD: a headroom of 10,000,000 nano-USD, fifty 200,000 requests.
        let k = key(1.0);
        let d = demand(200_000);
        let first = l.admit(&k, &d);
        let mut first = std::pin::pin!(first);
        assert!(
            poll(&mut first).is_pending(),
            "admitted before its mark is on disk"
        );
        // Within the mark being written: waits for the same write.
        let second = l.admit(&k, &d);
        let mut second = std::pin::pin!(second);
        assert!(poll(&mut second).is_pending());
        assert_eq!(disk.writes(), [true]);
        disk.commit();
        assert!(matches!(poll(&mut first), Poll::Ready(Ok(_))));
        assert!(matches!(poll(&mut second), Poll::Ready(Ok(_))));
        // The mark is 200,000 + 10,000,000: spent + reserved up to
        // 10,200,000 (51 requests) is within it, without a write.
        for _ in 2..51 {
            let a = admit_now(&l, &k, 200_000);
            assert!(a.reservation.is_some());
        }
        assert_eq!(disk.writes(), [true]);
        // The 52nd passes it: a new mark, waited for.
        let past = l.admit(&k, &d);
        let mut past = std::pin::pin!(past);
        assert!(poll(&mut past).is_pending());
        assert_eq!(disk.writes(), [true, true]);
        disk.commit();
        assert!(matches!(poll(&mut past), Poll::Ready(Ok(_))));
        assert_eq!(disk.load("key_1").unwrap(), Some((0, 20_400_000)));
    }

    /// Settlements within the mark write nothing and do not wait, whatever
    /// they cost; one past it waits for a new mark.
    #[test]
    fn settlements_wait_only_when_they_pass_the_mark() {
        let disk = Arc::new(Disk::default());
        let l = limiter(&disk);
        let k = key(1.0);
        disk.commit();
        let d = demand(200_000);
        let a = l.admit(&k, &d);
        let mut a = std::pin::pin!(a);
        assert!(poll(&mut a).is_pending());
        disk.commit();
        let Poll::Ready(Ok(a)) = poll(&mut a) else {
            panic!("not admitted")
        };
        let dearer = Settlement {
            tokens: 50,
            cost_nanos: 5_000_000,
        };
        assert!(poll(&mut std::pin::pin!(l.settle(&k, &a, dearer))).is_ready());
        assert_eq!(disk.writes(), [true]);
        let b = admit_now(&l, &k, 200_000);
        let past = Settlement {
            tokens: 50,
            cost_nanos: 6_000_000,
        };
        let settle = l.settle(&k, &b, past);
        let mut settle = std::pin::pin!(settle);
        assert!(
            poll(&mut settle).is_pending(),
            "a settlement past the mark went on"
        );
        disk.commit();
        assert!(poll(&mut settle).is_ready());
        assert_eq!(disk.load("key_1").unwrap(), Some((0, 21_000_000)));
    }

    /// A clean shutdown saves the exact spend and open estimate, below the
    /// mark: the next process reads it exactly.
    #[test]
    fn flush_saves_the_exact_spend() {
        let disk = Arc::new(Disk::default());
        let l = limiter(&disk);
        let k = key(1.0);
        let d = demand(200_000);
        let a = l.admit(&k, &d);
        let mut a = std::pin::pin!(a);
        assert!(poll(&mut a).is_pending());
        disk.commit();
        let Poll::Ready(Ok(a)) = poll(&mut a) else {
            panic!("not admitted")
        };
        let _open = admit_now(&l, &k, 300_000);
        let settled = Settlement {
            tokens: 5,
            cost_nanos: 150_000,
        };
        assert!(poll(&mut std::pin::pin!(l.settle(&k, &a, settled))).is_ready());
        assert_eq!(disk.load("key_1").unwrap(), Some((0, 10_200_000)));
        l.flush();
        disk.commit();
        // 150,000 spent and the open 300,000 estimate (charged: its process is gone).
        assert_eq!(disk.load("key_1").unwrap(), Some((0, 450_000)));
        let again = limiter(&disk);
        assert_eq!(
            poll(&mut std::pin::pin!(again.status(&k))),
            Poll::Ready(Ok(LimitStatus {
                spent_nanos: 450_000,
                period_start: Some(0),
                ..LimitStatus::default()
            }))
        );
        // Nothing more to flush: no write.
        let n = disk.writes().len();
        again.flush();
        assert_eq!(disk.writes().len(), n);
    }

    /// Random admissions, settlements (cheaper and dearer than estimated),
    /// abandoned admissions and commits, with crashes at random moments:
    /// after each crash the next process's spend is never below what was
    /// billed (every settlement that completed), and never more than one
    /// headroom (plus the estimates then open) above it.
    #[test]
    fn a_restart_after_a_crash_never_reads_below_what_was_billed() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let disk = Arc::new(Disk::default());
        let k = key(5.0); // headroom 50,000,000
        let headroom = headroom(k.budget.as_ref().unwrap());
        let mut billed: u64 = 0;
        let mut writes = 0;
        for _crash in 0..40 {
            let l = limiter(&disk);
            let mut open: Vec<(Admission, u64)> = Vec::new();
            let mut waiting: Vec<BoxFuture<'_, Result<Admission, Rejection>>> = Vec::new();
            let mut settling: Vec<(BoxFuture<'_, ()>, u64)> = Vec::new();
            for _step in 0..rand(200) {
                match rand(10) {
                    0..=3 => {
                        let (l, k, d) = (&l, &k, demand(100_000 + rand(2_000_000)));
                        waiting.push(Box::pin(async move { l.admit(k, &d).await }));
                    }
                    4..=6 if !open.is_empty() => {
                        let (a, estimate) = open.swap_remove(rand(open.len() as u64) as usize);
                        let cost = estimate / 2 + rand(estimate * 2);
                        let (l, k, s) = (
                            &l,
                            &k,
                            Settlement {
                                tokens: 1,
                                cost_nanos: cost,
                            },
                        );
                        settling.push((Box::pin(async move { l.settle(k, &a, s).await }), cost));
                    }
                    7 => disk.commit(),
                    8 if !waiting.is_empty() => {
                        // The client left while its admission waited.
                        drop(waiting.swap_remove(rand(waiting.len() as u64) as usize));
                    }
                    _ => {}
                }
                // What has completed: admissions go upstream, settlements are billed.
                let mut i = 0;
                while i < waiting.len() {
                    match poll(&mut waiting[i].as_mut()) {
                        Poll::Ready(Ok(a)) => {
                            let estimate = a.reservation.map_or(0, |r| r.cost_nanos);
                            open.push((a, estimate));
                            drop(waiting.swap_remove(i));
                        }
                        Poll::Ready(Err(_)) => drop(waiting.swap_remove(i)),
                        Poll::Pending => i += 1,
                    }
                }
                settling.retain_mut(|(s, cost)| match poll(&mut s.as_mut()) {
                    Poll::Ready(()) => {
                        billed += *cost;
                        false
                    }
                    Poll::Pending => true,
                });
            }
            let open_estimates: u64 = open.iter().map(|(_, e)| e).sum();
            drop((waiting, settling, open));
            // kill -9: the queue is lost; the next process reads the disk.
            disk.crash();
            drop(l);
            let saved = disk.load("key_1").unwrap().map_or(0, |(_, s)| s);
            assert!(saved >= billed, "saved {saved} below billed {billed}");
            let in_flight = open_estimates + 2 * 4_200_000 * 200;
            assert!(
                saved <= billed + headroom + in_flight,
                "saved {saved}, billed {billed}"
            );
            writes = disk.writes().len();
        }
        // A write per crossing, not per request.
        assert!(billed > 0 && writes > 0);
    }
}
