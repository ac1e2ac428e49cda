//! The admission state of one key as separate counters, for a store that
//! can update one item atomically under a condition but not serialise a
//! read-modify-write cheaply (DynamoDB: `UpdateItem` with `ADD`/`SET` and a
//! `ConditionExpression`).
//!
//! The rules are [`KeyLimitState`]'s: the counters are read, turned into a
//! `KeyLimitState` view and admitted there, so the decision, the refusal and
//! its `Retry-After` are the state machine's. What this module adds is the
//! write: instead of "replace the state if nobody wrote since I read"
//! (which collides on every concurrent admission of a hot key), each counter
//! is `ADD`ed under a condition that keeps the decision true at write time.
//! Concurrent admissions of one key in the same second do not collide; they
//! only fail (and are re-read) when the limit would be crossed, or once per
//! second, when the first admission of a new second resets its slot.
//!
//! ## Layout (attribute names, all numbers)
//!
//! | attributes | what |
//! |------------|------|
//! | `whi` | the newest second anything was admitted in; an admission counts in `max(clock, whi)`, so no write goes to an older second |
//! | `ws{i}`, `wr{i}`, `wt{i}` for `i` = second mod 60 | the second slot `i` holds, its admitted requests and (reserved, then settled) tokens |
//! | `dn`, `dr` | the UTC day number and the requests admitted in it (`rpd`) |
//! | `bp`, `bc`, `bs` | the budget period's start, its committed nano-USD (settled spend plus outstanding estimates) and its settled spend |
//!
//! ## Why the conditions give the serial result
//! - Requests only ever go to the slot of `whi`. A write in the same second
//!   is conditioned on `whi` being unchanged (so no other slot gained
//!   requests) and on the slot's own count staying within what the limit
//!   leaves after the other slots as read: `wr{i} <= rpm - 1 - others`.
//!   Writers of that second add to one number under one bound, exactly as a
//!   serial admitter would see it.
//! - The first admission of a new second `SET`s `whi` and its slot, on the
//!   condition that `whi` is still what was read and (with `rpm`, `tpm`)
//!   that the slot of `whi` has not grown since: admissions of that second
//!   may still be adding to it.
//! - Tokens in older slots change only by settlement, which is
//!   unconditional in the state machine as well: an admission that read
//!   before it is ordered before it.
//! - `rpd` and the budget are single counters: `dr <= rpd - 1`,
//!   `bc <= max_nanos - estimate`, each with its day or period unchanged (or
//!   reset by a `SET` conditioned on the old one).
//! - A reservation never settled stays in `wt` and `bc` at its estimate:
//!   "charged at its estimate", without any expiry bookkeeping. A late
//!   settlement still replaces the estimate (the state machine would drop
//!   it); it is never counted twice.

use std::collections::BTreeMap;

use super::lease::{lease_terms, Carry, Lease};
use super::state::{period_start, Ask, KeyLimitState, LimitStatus, Refusal, Reservation};
use crate::keys::{Budget, BudgetPeriod, Limits};

/// Slots of the minute window: one per second.
pub const SLOTS: u64 = 60;
/// The newest second admitted in.
pub const HI: &str = "whi";
/// The UTC day of `dr`.
pub const DAY: &str = "dn";
/// Requests admitted in the day `dn`.
pub const DAY_REQUESTS: &str = "dr";
/// Start of the budget period of `bc` and `bs`.
pub const PERIOD: &str = "bp";
/// Settled spend plus outstanding estimates, in the period `bp`.
pub const COMMITTED: &str = "bc";
/// Settled spend in the period `bp`.
pub const SETTLED: &str = "bs";

/// The attribute names of slot `i`: its second, requests and tokens.
pub fn slot_attrs(i: u64) -> [String; 3] {
    [format!("ws{i}"), format!("wr{i}"), format!("wt{i}")]
}

/// One slot of the minute window, as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    pub sec: u64,
    pub requests: u64,
    pub tokens: u64,
}

/// A key's counters as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCounters {
    pub hi: Option<u64>,
    /// Indexed by second mod 60; `None` where the slot was never written.
    pub slots: Vec<Option<Slot>>,
    pub day: Option<u64>,
    pub day_requests: u64,
    pub period: Option<u64>,
    pub committed_nanos: u64,
    pub settled_nanos: u64,
}

impl Default for KeyCounters {
    fn default() -> Self {
        KeyCounters {
            hi: None,
            slots: vec![None; SLOTS as usize],
            day: None,
            day_requests: 0,
            period: None,
            committed_nanos: 0,
            settled_nanos: 0,
        }
    }
}

/// A condition on one attribute of the item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The attribute does not exist.
    Absent(String),
    /// The attribute equals the number.
    Equals(String, u64),
    /// The attribute is absent (zero) or at most the number.
    AtMost(String, u64),
}

/// A change to one attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Set(String, u64),
    /// Adds a signed amount (an absent attribute counts as zero).
    Add(String, i64),
}

/// One conditional update of the key's item: all conditions hold, then all
/// updates apply, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CounterWrite {
    pub conditions: Vec<Condition>,
    pub updates: Vec<Update>,
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn epoch_is(attr: &str, read: Option<u64>) -> Condition {
    match read {
        Some(v) => Condition::Equals(attr.to_owned(), v),
        None => Condition::Absent(attr.to_owned()),
    }
}

impl KeyCounters {
    /// Reads the counters through `get` (the number stored under a name).
    pub fn read(get: impl Fn(&str) -> Option<u64>) -> Self {
        let slots = (0..SLOTS)
            .map(|i| {
                let [s, r, t] = slot_attrs(i);
                get(&s).map(|sec| Slot {
                    sec,
                    requests: get(&r).unwrap_or(0),
                    tokens: get(&t).unwrap_or(0),
                })
            })
            .collect();
        KeyCounters {
            hi: get(HI),
            slots,
            day: get(DAY),
            day_requests: get(DAY_REQUESTS).unwrap_or(0),
            period: get(PERIOD),
            committed_nanos: get(COMMITTED).unwrap_or(0),
            settled_nanos: get(SETTLED).unwrap_or(0),
        }
    }

    /// The second an admission at clock `now` counts in.
    pub fn effective_now(&self, now: u64) -> u64 {
        self.hi.map_or(now, |hi| hi.max(now))
    }

    /// The state machine's view at second `now`.
    fn view(&self, now: u64) -> KeyLimitState {
        let live = self
            .slots
            .iter()
            .flatten()
            .filter(|s| s.sec + SLOTS > now && s.sec <= now)
            .map(|s| (s.sec, s.requests, s.tokens));
        KeyLimitState::from_counters(
            live,
            self.day.map_or(-1, |d| d as i64),
            self.day_requests,
            self.period.unwrap_or(0),
            self.committed_nanos,
        )
    }

    fn patch_spend(&self, status: &mut LimitStatus, budget: Option<&Budget>, now: u64) {
        if let Some(b) = budget {
            if self.period == Some(period_start(b.period, now)) {
                status.spent_nanos = self.settled_nanos.min(self.committed_nanos);
                status.reserved_nanos = self.committed_nanos.saturating_sub(self.settled_nanos);
            }
        }
    }

    /// Remaining capacity at clock `now`.
    pub fn status(&self, now: u64, limits: &Limits, budget: Option<&Budget>) -> LimitStatus {
        let now = self.effective_now(now);
        let mut status = self.view(now).status(now, limits, budget);
        self.patch_spend(&mut status, budget, now);
        status
    }

    /// Admits `ask` (its `now_secs` is the clock) as the state machine
    /// would, and says how to write it: the reservation and the conditional
    /// update; or the refusal. The status is the key's after admission.
    pub fn admit(
        &self,
        ask: &Ask<'_>,
    ) -> (Result<(Reservation, CounterWrite), Refusal>, LimitStatus) {
        self.admit_many(ask, 1)
    }

    /// [`Self::admit`] for `requests` requests at once (a lease,
    /// [`super::lease`]); `ask.tokens` and `ask.cost_nanos` are for all.
    pub fn admit_many(
        &self,
        ask: &Ask<'_>,
        requests: u64,
    ) -> (Result<(Reservation, CounterWrite), Refusal>, LimitStatus) {
        let requests = requests.max(1);
        let now = self.effective_now(ask.now_secs);
        let mut view = self.view(now);
        let (window_requests, window_tokens) = {
            let mut v = view.clone();
            v.status(now, ask.limits, ask.budget);
            v.window_totals()
        };
        let decided = view.admit_many(
            &Ask {
                now_secs: now,
                ..*ask
            },
            requests,
        );
        let mut status = view.status(now, ask.limits, ask.budget);
        let reservation = match decided {
            Err(refusal) => {
                self.patch_spend(&mut status, ask.budget, now);
                return (Err(refusal), status);
            }
            Ok(r) => r,
        };
        let mut w = CounterWrite::default();
        let i = now % SLOTS;
        let [s_attr, r_attr, t_attr] = slot_attrs(i);
        if self.hi == Some(now) {
            // The same second as the newest admission: add under a bound.
            let own = self.slots[i as usize].unwrap_or_default();
            w.conditions.push(Condition::Equals(HI.into(), now));
            if let Some(max) = ask.limits.rpm {
                let others = window_requests.saturating_sub(own.requests);
                w.conditions.push(Condition::AtMost(
                    r_attr.clone(),
                    max.saturating_sub(requests).saturating_sub(others),
                ));
            }
            if let Some(max) = ask.limits.tpm {
                let others = window_tokens.saturating_sub(own.tokens);
                w.conditions.push(Condition::AtMost(
                    t_attr.clone(),
                    max.saturating_sub(ask.tokens).saturating_sub(others),
                ));
            }
            w.updates.push(Update::Add(r_attr, signed(requests)));
            w.updates.push(Update::Add(t_attr, signed(ask.tokens)));
        } else {
            // A new second: its slot starts over (what it held left the window).
            w.conditions.push(epoch_is(HI, self.hi));
            // Admissions in the second `whi` may still add to its slot while
            // `whi` stays: the decision holds only if that slot has not grown
            // since it was read (else re-read, as for a changed `whi`).
            if let Some(hi) = self.hi.filter(|hi| hi + SLOTS > now) {
                let [_, hi_requests, hi_tokens] = slot_attrs(hi % SLOTS);
                let read = self.slots[(hi % SLOTS) as usize]
                    .filter(|s| s.sec == hi)
                    .unwrap_or_default();
                if ask.limits.rpm.is_some() {
                    w.conditions
                        .push(Condition::AtMost(hi_requests, read.requests));
                }
                if ask.limits.tpm.is_some() {
                    w.conditions.push(Condition::AtMost(hi_tokens, read.tokens));
                }
            }
            w.updates.push(Update::Set(HI.into(), now));
            w.updates.push(Update::Set(s_attr, now));
            w.updates.push(Update::Set(r_attr, requests));
            w.updates.push(Update::Set(t_attr, ask.tokens));
        }
        let today = now / 86_400;
        if self.day == Some(today) {
            w.conditions.push(Condition::Equals(DAY.into(), today));
            if let Some(max) = ask.limits.rpd {
                w.conditions.push(Condition::AtMost(
                    DAY_REQUESTS.into(),
                    max.saturating_sub(requests),
                ));
            }
            w.updates
                .push(Update::Add(DAY_REQUESTS.into(), signed(requests)));
        } else {
            w.conditions.push(epoch_is(DAY, self.day));
            w.updates.push(Update::Set(DAY.into(), today));
            w.updates.push(Update::Set(DAY_REQUESTS.into(), requests));
        }
        if let Some(b) = ask.budget {
            let period = period_start(b.period, now);
            if self.period == Some(period) {
                w.conditions.push(Condition::Equals(PERIOD.into(), period));
                w.conditions.push(Condition::AtMost(
                    COMMITTED.into(),
                    b.max_nanos.saturating_sub(reservation.cost_nanos),
                ));
                w.updates.push(Update::Add(
                    COMMITTED.into(),
                    signed(reservation.cost_nanos),
                ));
            } else {
                w.conditions.push(epoch_is(PERIOD, self.period));
                w.updates.push(Update::Set(PERIOD.into(), period));
                w.updates
                    .push(Update::Set(COMMITTED.into(), reservation.cost_nanos));
                w.updates.push(Update::Set(SETTLED.into(), 0));
            }
        }
        let mut after = self.clone();
        after.apply_admission(now, requests, &reservation, ask.budget);
        let mut status = after.view(now).status(now, ask.limits, ask.budget);
        after.patch_spend(&mut status, ask.budget, now);
        (Ok((reservation, w)), status)
    }

    /// The counters after this admission (for the status it answers with).
    fn apply_admission(
        &mut self,
        now: u64,
        requests: u64,
        r: &Reservation,
        budget: Option<&Budget>,
    ) {
        let i = (now % SLOTS) as usize;
        let slot = match self.slots[i] {
            Some(s) if s.sec == now => s,
            _ => Slot {
                sec: now,
                ..Slot::default()
            },
        };
        self.slots[i] = Some(Slot {
            sec: now,
            requests: slot.requests.saturating_add(requests),
            tokens: slot.tokens.saturating_add(r.tokens),
        });
        self.hi = Some(now);
        let today = now / 86_400;
        if self.day != Some(today) {
            self.day = Some(today);
            self.day_requests = 0;
        }
        self.day_requests = self.day_requests.saturating_add(requests);
        if let Some(b) = budget {
            let p = period_start(b.period, now);
            if self.period != Some(p) {
                self.period = Some(p);
                self.committed_nanos = 0;
                self.settled_nanos = 0;
            }
            self.committed_nanos = self.committed_nanos.saturating_add(r.cost_nanos);
        }
    }
}

/// The writes that settle `reservation` with what was used, without a
/// read: the tokens in its second's slot (if the slot still holds that
/// second) and the budget of its period (if still current). Each is
/// separate, so that one whose condition no longer holds does not stop the
/// other.
pub fn settlement_writes(
    reservation: &Reservation,
    budget: Option<&Budget>,
    tokens: u64,
    cost_nanos: u64,
) -> Vec<CounterWrite> {
    let mut writes = Vec::new();
    if tokens != reservation.tokens {
        let [s_attr, _, t_attr] = slot_attrs(reservation.sec % SLOTS);
        writes.push(CounterWrite {
            conditions: vec![Condition::Equals(s_attr, reservation.sec)],
            updates: vec![Update::Add(
                t_attr,
                signed(tokens).saturating_sub(signed(reservation.tokens)),
            )],
        });
    }
    if let Some(b) = budget {
        writes.push(CounterWrite {
            conditions: vec![Condition::Equals(
                PERIOD.into(),
                period_start(b.period, reservation.sec),
            )],
            updates: vec![
                Update::Add(
                    COMMITTED.into(),
                    signed(cost_nanos).saturating_sub(signed(reservation.cost_nanos)),
                ),
                Update::Add(SETTLED.into(), signed(cost_nanos)),
            ],
        });
    }
    writes
}

impl KeyCounters {
    /// Whether `c` holds on the counters as read.
    pub fn holds(&self, c: &Condition) -> bool {
        let get = |a: &str| -> Option<u64> {
            match a {
                HI => self.hi,
                DAY => self.day,
                DAY_REQUESTS => Some(self.day_requests),
                PERIOD => self.period,
                COMMITTED => Some(self.committed_nanos),
                SETTLED => Some(self.settled_nanos),
                _ => {
                    let i: u64 = a.get(2..)?.parse().ok()?;
                    let slot = self.slots.get(usize::try_from(i).ok()?)?.as_ref()?;
                    match a.get(..2)? {
                        "ws" => Some(slot.sec),
                        "wr" => Some(slot.requests),
                        "wt" => Some(slot.tokens),
                        _ => None,
                    }
                }
            }
        };
        match c {
            Condition::Absent(a) => get(a).is_none(),
            Condition::Equals(a, v) => get(a) == Some(*v),
            Condition::AtMost(a, v) => get(a).is_none_or(|x| x <= *v),
        }
    }
}

/// The writes that deliver a holder's [`Carry`] (returned leases, settled
/// leased requests): per second, its slot's requests and tokens (if the
/// slot still holds that second); per day, the day's requests; per budget
/// period, the committed and settled spend (if still current). Like
/// [`settlement_writes`], each is conditioned on its own second, day or
/// period: a correction for one that moved on has nothing left to correct.
pub fn carry_writes(carry: &Carry, period: Option<BudgetPeriod>) -> Vec<CounterWrite> {
    let mut writes = Vec::new();
    let mut days: BTreeMap<u64, u64> = BTreeMap::new();
    let mut periods: BTreeMap<u64, (i64, u64)> = BTreeMap::new();
    for (sec, c) in &carry.slots {
        let [s_attr, r_attr, t_attr] = slot_attrs(sec % SLOTS);
        let mut w = CounterWrite {
            conditions: vec![Condition::Equals(s_attr, *sec)],
            updates: Vec::new(),
        };
        if c.unused_requests > 0 {
            w.updates
                .push(Update::Add(r_attr, -signed(c.unused_requests)));
            *days.entry(sec / 86_400).or_default() += c.unused_requests;
        }
        if c.tokens != 0 {
            w.updates.push(Update::Add(t_attr, c.tokens));
        }
        if !w.updates.is_empty() {
            writes.push(w);
        }
        if let Some(p) = period {
            let e = periods.entry(period_start(p, *sec)).or_default();
            e.0 = e.0.saturating_add(c.cost_nanos);
            e.1 = e.1.saturating_add(c.settled_nanos);
        }
    }
    for (day, unused) in days {
        writes.push(CounterWrite {
            conditions: vec![Condition::Equals(DAY.into(), day)],
            updates: vec![Update::Add(DAY_REQUESTS.into(), -signed(unused))],
        });
    }
    for (start, (committed, settled)) in periods {
        let mut updates = Vec::new();
        if committed != 0 {
            updates.push(Update::Add(COMMITTED.into(), committed));
        }
        if settled != 0 {
            updates.push(Update::Add(SETTLED.into(), signed(settled)));
        }
        if !updates.is_empty() {
            writes.push(CounterWrite {
                conditions: vec![Condition::Equals(PERIOD.into(), start)],
                updates,
            });
        }
    }
    writes
}

/// The writes as one (one round trip): conditions together, additions to
/// the same attribute summed. `None` when they cannot be one update (an
/// attribute both set and added to, or two conditions that contradict).
pub fn merge_writes(writes: &[CounterWrite]) -> Option<CounterWrite> {
    let mut merged = CounterWrite::default();
    for w in writes {
        for c in &w.conditions {
            if merged.conditions.contains(c) {
                continue;
            }
            let attr = match c {
                Condition::Absent(a) | Condition::Equals(a, _) | Condition::AtMost(a, _) => a,
            };
            let clash = merged.conditions.iter().any(|m| {
                matches!((m, c), (Condition::Absent(x) | Condition::Equals(x, _), Condition::Absent(_) | Condition::Equals(_, _)) if x == attr)
            });
            if clash {
                return None;
            }
            merged.conditions.push(c.clone());
        }
        for u in &w.updates {
            let attr = match u {
                Update::Set(a, _) | Update::Add(a, _) => a,
            };
            let existing = merged.updates.iter_mut().find(|m| match m {
                Update::Set(a, _) | Update::Add(a, _) => a == attr,
            });
            match (existing, u) {
                (None, u) => merged.updates.push(u.clone()),
                (Some(Update::Add(_, d)), Update::Add(_, e)) => *d = d.saturating_add(*e),
                _ => return None,
            }
        }
    }
    Some(merged)
}

/// A holder's admission at the item (its lease could not admit): the
/// writes to make, and what they grant.
#[derive(Debug, Clone)]
pub struct ItemAdmission {
    /// The request's reservation (`leased` when it comes out of `lease`).
    pub reservation: Reservation,
    /// The lease granted with it, already spent by this request.
    pub lease: Option<Lease>,
    /// The admission and the delivery of the holder's carry as one write,
    /// when they can be one.
    pub merged: Option<CounterWrite>,
    /// Otherwise: the carry's writes (each may fail alone), then the admission.
    pub carry: Vec<CounterWrite>,
    pub admission: CounterWrite,
}

impl KeyCounters {
    /// Admits one request of a holder observing `rate` requests a second:
    /// with a lease when the rule allows one ([`lease_terms`]), alone
    /// otherwise; and delivers the holder's `carry` with it (the parts
    /// whose second, day or period the item still holds). `now_ms` is the
    /// clock (`ask.now_secs` must be its second).
    pub fn admit_leasing(
        &self,
        ask: &Ask<'_>,
        now_ms: u64,
        rate: u64,
        key_hash: &str,
        carry: &Carry,
    ) -> (Result<ItemAdmission, Refusal>, LimitStatus) {
        let sec = self.effective_now(ask.now_secs);
        let before = self.status(ask.now_secs, ask.limits, ask.budget);
        let terms = lease_terms(
            now_ms,
            sec,
            ask.limits,
            ask.budget,
            &before,
            ask.tokens,
            ask.cost_nanos,
            rate,
        );
        let mut decided = None;
        if let Some(t) = &terms {
            let lease_ask = Ask {
                tokens: t.tokens,
                cost_nanos: t.cost_nanos,
                ..*ask
            };
            if let (Ok((r, w)), status) = self.admit_many(&lease_ask, t.requests) {
                let mut lease = Lease::new(&r, t, key_hash, status.clone());
                lease.id = 0;
                let cost = if ask.budget.is_some() {
                    ask.cost_nanos
                } else {
                    0
                };
                if let Some(mine) = lease.spend(now_ms, key_hash, ask.tokens, cost) {
                    decided = Some((mine, Some(lease), w, status));
                }
            }
        }
        let (reservation, lease, admission, status) = match decided {
            Some(d) => d,
            None => match self.admit(ask) {
                (Ok((r, w)), status) => (r, None, w, status),
                (Err(refusal), status) => return (Err(refusal), status),
            },
        };
        let carry: Vec<CounterWrite> = carry_writes(carry, ask.budget.map(|b| b.period))
            .into_iter()
            .filter(|w| w.conditions.iter().all(|c| self.holds(c)))
            .collect();
        let mut all = carry.clone();
        all.push(admission.clone());
        let merged = merge_writes(&all);
        (
            Ok(ItemAdmission {
                reservation,
                lease,
                merged,
                carry,
                admission,
            }),
            status,
        )
    }
}
