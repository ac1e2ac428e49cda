//! The single-process limiter (the native server), over [`KeyLimitState`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::answer::Rejection;
use super::state::{Ask, KeyLimitState, LimitStatus};
use crate::compat::MaybeSendSync;
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
    /// Saves a key's spend and the estimate it holds in reservations, at
    /// admission and at settlement of a key with a budget. Writes from
    /// concurrent requests of one key may arrive out of order: within a
    /// period the store keeps the larger spend.
    fn save(&self, key_id: &str, period_start: u64, spent_nanos: u64, reserved_nanos: u64);
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
            let result = self
                .with_state(key, |s| {
                    let r = s.admit(&ask);
                    (r, s.status(now, &key.limits, key.budget.as_ref()))
                })
                .map_err(|e| Rejection {
                    error: e.into(),
                    status: LimitStatus::default(),
                })?;
            if let (Some(store), (Ok(_), status), Some(_)) = (&self.spend, &result, &key.budget) {
                if let Some(start) = status.period_start {
                    store.save(&key.id, start, status.spent_nanos, status.reserved_nanos);
                }
            }
            match result {
                (Ok(reservation), status) => Ok(Admission { reservation: Some(reservation), status, key: None }),
                (Err(refusal), status) => Err(Rejection { error: refusal.to_error(key.budget.as_ref()), status }),
            }
        }

        async fn settle(&self, key: &VirtualKey, admission: &Admission, settlement: Settlement) {
            let Some(reservation) = admission.reservation else { return };
            let now = self.clock.now_micros() / 1_000_000;
            let spend = self.with_state(key, |s| {
                s.settle(now, key.budget.as_ref(), reservation.id, settlement.tokens, settlement.cost_nanos);
                (s.spend(), s.reserved_nanos())
            }).ok();
            if let (Some(store), Some(((start, spent), reserved)), true) = (&self.spend, spend, key.budget.is_some()) {
                store.save(&key.id, start, spent, reserved);
            }
        }

        async fn status(&self, key: &VirtualKey) -> Result<LimitStatus, StoreError> {
            let now = self.clock.now_micros() / 1_000_000;
            self.with_state(key, |s| s.status(now, &key.limits, key.budget.as_ref()))
        }
    }
}
