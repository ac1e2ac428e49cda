//! The single-process limiter (the native server), over [`KeyLimitState`].
//!
//! Crash safety of a key with a budget: after `kill -9` at any moment, the
//! saved spend (spent plus the reservations then held, charged at their
//! estimate on restart) is never below what clients were billed. The rule
//! that keeps it without a write on the request thread:
//! - admission waits until the state with its reservation is durable (the
//!   store commits the writes of many requests in one transaction), so every
//!   request that goes upstream is covered at its estimate;
//! - settlement hands the settled state over at once, and waits for it to be
//!   durable only when it raised the key's spent + reserved (the request cost
//!   more than its estimate, or a new period began): otherwise the state
//!   saved at admission, or any later one, already covers it. The gateway
//!   does not send a response's last byte before its settlement is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::answer::Rejection;
use super::state::{Ask, KeyLimitState, LimitStatus};
use crate::compat::{BoxFuture, MaybeSendSync};
use crate::keys::VirtualKey;
use crate::ports::{Admission, Clock, Demand, Limiter, Settlement, StoreError};

/// Spend kept across restarts (and crashes) by a single-process limiter.
pub trait SpendStore: MaybeSendSync {
    /// The saved `(period_start, spent_nanos)` of a key, reservations left
    /// unsettled by a previous process included (charged at their estimate:
    /// the process that held them is gone). An error (the store cannot be
    /// read) refuses the key's admission with 503 rather than starting its
    /// spend from zero.
    fn load(&self, key_id: &str) -> Result<Option<(u64, u64)>, StoreError>;
    /// Saves a key's spend and the estimate it holds in reservations.
    ///
    /// The write is handed over when this is called, not when the future is
    /// polled: the limiter calls it under its lock, so a key's writes reach
    /// the store in the order of the states they carry, and the latest one
    /// is the key's spend. With `durable`, the future completes once the
    /// write is on disk (or has failed and is held to be retried: requests
    /// go on while the file is unwritable); without, at once, the write
    /// going to disk with the next batch. Within a period the store never
    /// lowers a saved spend.
    fn save(
        &self,
        key_id: &str,
        period_start: u64,
        spent_nanos: u64,
        reserved_nanos: u64,
        durable: bool,
    ) -> BoxFuture<'static, ()>;
}

/// The limiter of a single process (the native server): every key's state
/// in memory behind one mutex, which makes admission atomic; the spend of
/// the current period saved through a [`SpendStore`].
pub struct LocalLimiter {
    clock: Arc<dyn Clock>,
    states: Mutex<HashMap<String, KeyLimitState>>,
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
        f: impl FnOnce(&mut KeyLimitState) -> T,
    ) -> Result<T, StoreError> {
        let mut states = self
            .states
            .lock()
            .map_err(|_| StoreError("limiter lock poisoned".into()))?;
        let state = match states.entry(key.id.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut s = KeyLimitState::default();
                // The saved spend is read before the key's first admission; a read
                // that fails is an error, not a key that has spent nothing.
                let saved = match &self.spend {
                    Some(p) => p.load(&key.id)?,
                    None => None,
                };
                if let Some((start, spent)) = saved {
                    s.restore_spend(start, spent);
                }
                e.insert(s)
            }
        };
        Ok(f(state))
    }
}

/// Releases an admission's reservation unless forgotten: the admission was
/// dropped before it returned, and the request never went upstream.
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
        let _ = limiter.with_state(key, |s| {
            s.settle(now, key.budget.as_ref(), id, 0, 0);
            if let Some(store) = &limiter.spend {
                let (start, spent) = s.spend();
                // Lowers the saved estimate: nothing to wait for.
                drop(store.save(&key.id, start, spent, s.reserved_nanos(), false));
            }
        });
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
                .with_state(key, |s| {
                    let r = s.admit(&ask);
                    let status = s.status(now, &key.limits, key.budget.as_ref());
                    // Handed over under the lock (see SpendStore::save); the
                    // request goes upstream once its reservation is durable.
                    let saved = match (&self.spend, &r, &key.budget, status.period_start) {
                        (Some(store), Ok(_), Some(_), Some(start)) => Some(store.save(
                            &key.id,
                            start,
                            status.spent_nanos,
                            status.reserved_nanos,
                            true,
                        )),
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
            let store = self.spend.as_ref().filter(|_| key.budget.is_some());
            let saved = self.with_state(key, |s| {
                let ((start, spent), reserved) = (s.spend(), s.reserved_nanos());
                s.settle(now, key.budget.as_ref(), reservation.id, settlement.tokens, settlement.cost_nanos);
                let ((new_start, new_spent), new_reserved) = (s.spend(), s.reserved_nanos());
                let raised = new_start != start
                    || new_spent.saturating_add(new_reserved) > spent.saturating_add(reserved);
                store.map(|store| store.save(&key.id, new_start, new_spent, new_reserved, raised))
            });
            if let Ok(Some(saved)) = saved {
                saved.await;
            }
        }

        async fn status(&self, key: &VirtualKey) -> Result<LimitStatus, StoreError> {
            let now = self.clock.now_micros() / 1_000_000;
            self.with_state(key, |s| s.status(now, &key.limits, key.budget.as_ref()))
        }
    }
}
