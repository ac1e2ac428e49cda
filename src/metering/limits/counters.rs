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
//! | `mr{s}`, `mt{s}` for a Unix second `s` | the requests admitted in second `s` and their (reserved, then settled) tokens; removed once `s` has left the window |
//! | `dn`, `dr` | the UTC day number and the requests admitted in it (`rpd`) |
//! | `bp`, `bc`, `bs` | the budget period's start, its committed nano-USD (settled spend plus outstanding estimates) and its settled spend |
//!
//! (Items written before this layout hold the window in `ws{i}`, `wr{i}`,
//! `wt{i}` for `i` = second mod 60: read as closed seconds, removed once
//! they leave the window.)
//!
//! ## Why the conditions give the serial result
//! Every admission is one `UpdateItem`: `SET whi = now`, `ADD mr{now}`,
//! `mt{now}` (an absent number counts as zero, so a new second needs no
//! reset and the first writer of a second does not differ from the
//! others), on these conditions:
//! - `whi <= now`: requests only ever go to the newest second. Once `whi`
//!   has passed a second, that second is *closed*: nothing is admitted in
//!   it any more (settlements and returned leases only lower its requests).
//! - The admission was decided on the counters as read (or as the
//!   previous write returned them, however old): the seconds before the
//!   `whi` read were closed then, so their counts can only have gone down.
//!   The seconds from that `whi` up to `now - 1` (*open*: they may have
//!   gained admissions since) and `now` itself may have grown. What the
//!   limit leaves after the read window and the request (`spare`) is split
//!   among them: each open second `s` is conditioned on `mr{s} <= read +
//!   share`, and `mr{now} <= read + the rest`. If all hold at write time,
//!   the window then holds at most the limit with this request: the serial
//!   decision. Concurrent admissions of one second each bound `mr{now}`
//!   by the same limit minus the others: they add to one number under one
//!   bound and do not collide below the limit. More than [`MAX_OPEN`] open
//!   seconds (an old read of a key idle for a while): `whi` is required to
//!   be what was read instead, so that only its second may have grown.
//! - Tokens (`mt`, `tpm`) the same way. Tokens in closed seconds change
//!   only by settlement, which is unconditional in the state machine as
//!   well: an admission that read before it is ordered before it.
//! - `rpd` and the budget are single counters: `dr <= rpd - 1`,
//!   `bc <= max_nanos - estimate`, each with its day or period unchanged (or
//!   reset by a `SET` conditioned on the old one).
//! - A reservation never settled stays in `mt` and `bc` at its estimate:
//!   "charged at its estimate", without any expiry bookkeeping. A late
//!   settlement still replaces the estimate (the state machine would drop
//!   it); it is never counted twice.
//!
//! A failed condition means the state moved (a new second at a clock
//! ahead, the limit in reach, the key changed): the adapter decides again
//! on the item as it is (DynamoDB returns it with the failure).

use std::collections::BTreeMap;

use super::lease::{lease_terms_spanning, Carry, Lease};
use super::state::{period_start, Ask, KeyLimitState, LimitStatus, Refusal, Reservation};
use crate::keys::{Budget, BudgetPeriod, Limits};

/// Width of the minute window, in seconds.
pub const WINDOW: u64 = 60;
/// At most this many open seconds are bounded one by one (else `whi`
/// must be as read).
pub const MAX_OPEN: usize = 3;
/// Attributes of seconds that left the window removed per write, at most.
const MAX_REMOVE: usize = 24;
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

/// The attribute names of second `sec`: its requests and tokens.
pub fn second_attrs(sec: u64) -> [String; 2] {
    [format!("mr{sec}"), format!("mt{sec}")]
}

/// One second of the minute window, as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    pub sec: u64,
    pub requests: u64,
    pub tokens: u64,
}

/// A key's counters as read from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyCounters {
    pub hi: Option<u64>,
    /// By second.
    pub slots: BTreeMap<u64, Slot>,
    /// The attributes of each second (both layouts), to remove once it has
    /// left the window.
    attrs: Vec<(u64, String)>,
    pub day: Option<u64>,
    pub day_requests: u64,
    pub period: Option<u64>,
    pub committed_nanos: u64,
    pub settled_nanos: u64,
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
    /// The attribute exists.
    Exists(String),
}

/// A change to one attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Set(String, u64),
    /// Adds a signed amount (an absent attribute counts as zero).
    Add(String, i64),
    Remove(String),
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
    /// Reads the counters from the item's numbers, by name.
    pub fn read<'a>(numbers: impl IntoIterator<Item = (&'a str, u64)>) -> Self {
        let mut c = KeyCounters::default();
        // The layout before: slot i = second mod 60 (ws{i}: its second).
        let mut legacy: BTreeMap<u64, (Option<u64>, u64, u64)> = BTreeMap::new();
        let index = |name: &str, prefix: &str| -> Option<u64> {
            let rest = name.strip_prefix(prefix)?;
            rest.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| rest.parse().ok())?
        };
        for (name, v) in numbers {
            match name {
                HI => c.hi = Some(v),
                DAY => c.day = Some(v),
                DAY_REQUESTS => c.day_requests = v,
                PERIOD => c.period = Some(v),
                COMMITTED => c.committed_nanos = v,
                SETTLED => c.settled_nanos = v,
                _ => {
                    if let Some(sec) = index(name, "mr") {
                        c.slots.entry(sec).or_default().requests += v;
                        c.attrs.push((sec, name.to_owned()));
                    } else if let Some(sec) = index(name, "mt") {
                        c.slots.entry(sec).or_default().tokens += v;
                        c.attrs.push((sec, name.to_owned()));
                    } else if let Some(i) = index(name, "ws") {
                        legacy.entry(i).or_default().0 = Some(v);
                    } else if let Some(i) = index(name, "wr") {
                        legacy.entry(i).or_default().1 = v;
                    } else if let Some(i) = index(name, "wt") {
                        legacy.entry(i).or_default().2 = v;
                    }
                }
            }
        }
        for (sec, slot) in c.slots.iter_mut() {
            slot.sec = *sec;
        }
        for (i, (sec, requests, tokens)) in legacy {
            let Some(sec) = sec else { continue };
            let slot = c.slots.entry(sec).or_insert(Slot {
                sec,
                ..Slot::default()
            });
            slot.requests += requests;
            slot.tokens += tokens;
            for n in ["ws", "wr", "wt"] {
                c.attrs.push((sec, format!("{n}{i}")));
            }
        }
        c
    }

    /// The second an admission at clock `now` counts in.
    pub fn effective_now(&self, now: u64) -> u64 {
        self.hi.map_or(now, |hi| hi.max(now))
    }

    /// The state machine's view at second `now`.
    fn view(&self, now: u64) -> KeyLimitState {
        let live = self
            .slots
            .values()
            .filter(|s| s.sec + WINDOW > now && s.sec <= now + 1)
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
        self.admit_many_in(ask, requests, false)
    }

    /// [`Self::admit_many`], counted in the second after the admission's
    /// when `next` (a spanning lease, [`super::lease::lease_terms_spanning`]).
    pub fn admit_many_in(
        &self,
        ask: &Ask<'_>,
        requests: u64,
        next: bool,
    ) -> (Result<(Reservation, CounterWrite), Refusal>, LimitStatus) {
        let requests = requests.max(1);
        let now = self.effective_now(ask.now_secs);
        let count = now + u64::from(next);
        let mut view = self.view(now);
        let (window_requests, window_tokens) = {
            let mut v = view.clone();
            v.status(now, ask.limits, ask.budget);
            v.window_totals()
        };
        let decided = view.admit_many_in(
            &Ask {
                now_secs: now,
                ..*ask
            },
            requests,
            count,
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
        // Open seconds: from the `whi` read to the one before `now`...
        let mut open: Vec<u64> = match self.hi {
            Some(hi) if hi < now => (hi.max(now + 1 - WINDOW)..now).collect(),
            _ => Vec::new(),
        };
        if open.len() > MAX_OPEN {
            // Nothing may have been admitted after the `whi` read.
            w.conditions.push(epoch_is(HI, self.hi));
            open.retain(|s| Some(*s) == self.hi);
        } else {
            w.conditions.push(Condition::AtMost(HI.into(), now));
        }
        // ...and `now` and the next second (spanning leases count there),
        // but for the one this admission counts in.
        open.extend([now, now + 1].into_iter().filter(|s| *s != count));
        let read = |s: u64| self.slots.get(&s).copied().unwrap_or_default();
        let own = read(count);
        let [r_attr, t_attr] = second_attrs(count);
        let mut bound =
            |max: u64, asked: u64, total: u64, mine: u64, of: &dyn Fn(&Slot) -> u64, k: usize| {
                // What the limit leaves after the window as read and this
                // admission, shared between the open seconds and this one.
                let spare = max.saturating_sub(asked).saturating_sub(total);
                let share = spare / (open.len() as u64 + 1);
                for s in &open {
                    w.conditions.push(Condition::AtMost(
                        second_attrs(*s)[k].clone(),
                        of(&read(*s)).saturating_add(share),
                    ));
                }
                w.conditions.push(Condition::AtMost(
                    second_attrs(count)[k].clone(),
                    mine.saturating_add(spare - share * open.len() as u64),
                ));
            };
        if let Some(max) = ask.limits.rpm {
            bound(
                max,
                requests,
                window_requests,
                own.requests,
                &|s| s.requests,
                0,
            );
        }
        if let Some(max) = ask.limits.tpm {
            bound(max, ask.tokens, window_tokens, own.tokens, &|s| s.tokens, 1);
        }
        w.updates.push(Update::Set(HI.into(), now));
        w.updates.push(Update::Add(r_attr, signed(requests)));
        w.updates.push(Update::Add(t_attr, signed(ask.tokens)));
        // Seconds that left every window: their attributes go.
        for (_, name) in self
            .attrs
            .iter()
            .filter(|(sec, _)| sec + WINDOW <= now)
            .take(MAX_REMOVE)
        {
            w.updates.push(Update::Remove(name.clone()));
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
        let slot = self.slots.entry(r.sec).or_insert(Slot {
            sec: r.sec,
            ..Slot::default()
        });
        slot.requests = slot.requests.saturating_add(requests);
        slot.tokens = slot.tokens.saturating_add(r.tokens);
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
        let [_, t_attr] = second_attrs(reservation.sec);
        writes.push(CounterWrite {
            conditions: vec![Condition::Exists(t_attr.clone())],
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
                    let sec: u64 = a.get(2..)?.parse().ok()?;
                    let slot = self.slots.get(&sec)?;
                    match a.get(..2)? {
                        "mr" => Some(slot.requests),
                        "mt" => Some(slot.tokens),
                        _ => None,
                    }
                }
            }
        };
        match c {
            Condition::Absent(a) => get(a).is_none(),
            Condition::Equals(a, v) => get(a) == Some(*v),
            Condition::AtMost(a, v) => get(a).is_none_or(|x| x <= *v),
            Condition::Exists(a) => get(a).is_some(),
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
        let [r_attr, t_attr] = second_attrs(*sec);
        let mut w = CounterWrite {
            conditions: vec![Condition::Exists(r_attr.clone())],
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
                Condition::Absent(a)
                | Condition::Equals(a, _)
                | Condition::AtMost(a, _)
                | Condition::Exists(a) => a,
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
                Update::Set(a, _) | Update::Add(a, _) | Update::Remove(a) => a,
            };
            let existing = merged.updates.iter_mut().find(|m| match m {
                Update::Set(a, _) | Update::Add(a, _) | Update::Remove(a) => a == attr,
            });
            match (existing, u) {
                (None, u) => merged.updates.push(u.clone()),
                (Some(Update::Add(_, d)), Update::Add(_, e)) => *d = d.saturating_add(*e),
                (Some(Update::Remove(_)), Update::Remove(_)) => {}
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
    /// with a lease when the rule allows one ([`lease_terms_spanning`]), alone
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
        let terms = lease_terms_spanning(
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
            if let (Ok((r, w)), status) = self.admit_many_in(&lease_ask, t.requests, true) {
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
