//! Leases: a slice of a key's remaining capacity granted to one isolate or
//! container, so that a hot key's admissions are decided locally and its
//! authority (the Durable Object, the DynamoDB item) is asked about once a
//! second instead of twice a request.
//!
//! ## The rule
//! - **What a lease is.** `requests` requests, `tokens` tokens and
//!   `cost_nanos` nano-USD, admitted at the authority in one go, like one
//!   reservation of that size ([`KeyLimitState::admit_many`], or
//!   [`super::counters::KeyCounters::admit_many`]): the requests count in
//!   the minute bucket of the second `sec` it is granted in (and in the
//!   day), the tokens in that bucket, the cost in the budget's reserved
//!   spend. So the authority's arithmetic is unchanged: it admits a lease
//!   only if every request of it would have been admitted.
//! - **Validity.** A lease is spent only during the second it counts in,
//!   and for at most [`LEASE_MAX_MS`]: `expires_at_ms = min(granted +
//!   LEASE_MAX_MS, (sec + 1) * 1000)`. A request admitted from it is
//!   therefore counted in the very second it was admitted in (or a later
//!   one, where the authority's newest second is ahead of the holder's
//!   clock, as for any admission on DynamoDB): "`rpm = N`: never more
//!   than N in any window" holds exactly as without leases.
//!   On DynamoDB a lease is counted in the second *after* the one it is
//!   granted in ([`lease_terms_spanning`]) and spent until that second is
//!   over (at most [`SPANNING_MAX_MS`]): a request from it counts no
//!   earlier than admitted, and the item's window at second `t` sums the
//!   buckets `t - 59 ..= t + 1`, which keeps the same guarantee (proof in
//!   `lease_tests.rs`) with about half the grants.
//! - **When.** Only while the key is well below every limit: each lease is
//!   at most [`SHARE`] (a tenth) of what is left in the minute window, the
//!   day, the token window and the budget, and is only granted when that
//!   leaves room for at least [`MIN_LEASE_REQUESTS`] requests. Never for a
//!   small limit (`rpm` or `rpd` ≤ [`MIN_LIMIT`]): such keys, and any key
//!   near a limit, are admitted by the authority request by request,
//!   exactly as before.
//! - **Size.** From the rate the holder observes (its own admissions of
//!   the key in the current and the previous second, [`RateMeter`]):
//!   [`HEADROOM`] times what that rate needs for the lease's validity, at most
//!   [`MAX_LEASE_REQUESTS`]; under [`MIN_LEASE_REQUESTS`] a second, no
//!   lease. Tokens and cost are the asking request's estimates times the
//!   requests.
//! - **Spending.** A request is admitted from the lease if the lease is
//!   still valid, was granted to the same presented secret, and still
//!   holds a request and the request's estimated tokens and cost.
//!   Otherwise it goes to the authority (which may grant a new lease).
//! - **Settlement.** A leased request's settlement corrects the lease
//!   (what it did not use goes back into the lease while it is valid);
//!   what it used beyond its estimate, or anything once the lease is
//!   over, is carried ([`Carry`]) to the authority with
//!   the next call: one call carries many settlements.
//! - **Return.** A lease that is over (expired, or replaced) gives back
//!   its unused requests, tokens and cost with the next call (or the
//!   flush at the end of the request). A lease that is never returned (the
//!   holder was killed) is charged in full, exactly like an unsettled
//!   reservation: its requests count in their second until it leaves the
//!   window, its cost is spent. Nothing of it can be used after its
//!   validity, so the key's other holders go on at once; the authority
//!   never waits for a holder.
//!
//! The holder's side of all this is [`LeaseBook`] (one per key per
//! isolate/container); the authority's is [`KeyLimitState::grant_lease`] /
//! [`KeyLimitState::take_back`] (Durable Object) or the counter writes of
//! [`super::counters`] (DynamoDB).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::{Ask, KeyLimitState, LimitStatus, Refusal, Reservation};
use crate::keys::{Budget, Limits};

/// A lease is valid for at most this long (and never past its second).
pub const LEASE_MAX_MS: u64 = 1_000;
/// A lease counted in the second after the one it is granted in
/// ([`lease_terms_spanning`]) is valid for at most this long (and never
/// past that second).
pub const SPANNING_MAX_MS: u64 = 2_000;
/// A lease is at most `1 / SHARE` of what is left of each limit.
pub const SHARE: u64 = 10;
/// No leases for a key whose `rpm` or `rpd` is at most this.
pub const MIN_LIMIT: u64 = 100;
/// The smallest lease worth granting (and the rate, per second, under
/// which a holder asks for none).
pub const MIN_LEASE_REQUESTS: u64 = 2;
/// A lease is sized for this many times the observed rate.
pub const HEADROOM: u64 = 2;
/// The largest lease, in requests.
pub const MAX_LEASE_REQUESTS: u64 = 64;
/// A lease shorter than this is not granted (the end of a second).
pub const MIN_VALIDITY_MS: u64 = 50;
/// Carried settlements are flushed once there are this many...
pub const FLUSH_COUNT: u64 = 32;
/// ...or the oldest is this old.
pub const FLUSH_AFTER_MS: u64 = 1_000;

/// What a lease grants: the `Ask` and request count to admit it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTerms {
    /// The second its requests count in (0: the second it is granted in).
    #[serde(default)]
    pub sec: u64,
    pub requests: u64,
    /// For all requests together.
    pub tokens: u64,
    /// For all requests together (0 without a budget).
    pub cost_nanos: u64,
    pub expires_at_ms: u64,
}

/// The lease to grant at `now_ms`, counted in second `sec` (the
/// authority's), to a holder observing `rate` requests a second, given the
/// key's status before it and the asking request's estimates; `None` when
/// the rule says to admit the request alone.
#[allow(clippy::too_many_arguments)]
pub fn lease_terms(
    now_ms: u64,
    sec: u64,
    limits: &Limits,
    budget: Option<&Budget>,
    status: &LimitStatus,
    tokens: u64,
    cost_nanos: u64,
    rate: u64,
) -> Option<LeaseTerms> {
    terms(
        now_ms,
        sec,
        LEASE_MAX_MS,
        limits,
        budget,
        status,
        tokens,
        cost_nanos,
        rate,
    )
}

/// [`lease_terms`] for a lease granted in second `sec` but counted in
/// `sec + 1`, and so valid until that second is over (at most
/// [`SPANNING_MAX_MS`]): about half as many grants for the same rate.
///
/// Exact only where the authority's window, at second `t`, also sums the
/// bucket of `t + 1` (which [`KeyLimitState`] and the counters do): a
/// request admitted at `t` from such a lease is counted in `t` or `t + 1`,
/// i.e. no earlier than admitted, so it stays in every window at least as
/// long as it should; and each grant at `g` was checked against the
/// buckets `g - 59 ..= g + 1`, which hold everything admitted before it
/// that a window containing `g` can hold (proof in `lease_tests.rs`).
#[allow(clippy::too_many_arguments)]
pub fn lease_terms_spanning(
    now_ms: u64,
    sec: u64,
    limits: &Limits,
    budget: Option<&Budget>,
    status: &LimitStatus,
    tokens: u64,
    cost_nanos: u64,
    rate: u64,
) -> Option<LeaseTerms> {
    terms(
        now_ms,
        sec.saturating_add(1),
        SPANNING_MAX_MS,
        limits,
        budget,
        status,
        tokens,
        cost_nanos,
        rate,
    )
}

#[allow(clippy::too_many_arguments)]
fn terms(
    now_ms: u64,
    sec: u64,
    max_ms: u64,
    limits: &Limits,
    budget: Option<&Budget>,
    status: &LimitStatus,
    tokens: u64,
    cost_nanos: u64,
    rate: u64,
) -> Option<LeaseTerms> {
    if limits.rpm.is_some_and(|n| n <= MIN_LIMIT) || limits.rpd.is_some_and(|n| n <= MIN_LIMIT) {
        return None;
    }
    if rate < MIN_LEASE_REQUESTS {
        return None;
    }
    let expires_at_ms = now_ms
        .saturating_add(max_ms)
        .min(sec.saturating_add(1).saturating_mul(1_000));
    let validity = expires_at_ms.saturating_sub(now_ms);
    if validity < MIN_VALIDITY_MS {
        return None;
    }
    // Twice what the rate needs: the rate is a guess from the last second,
    // and what is not used goes back.
    let mut n = rate
        .saturating_mul(validity)
        .saturating_mul(HEADROOM)
        .div_ceil(1_000)
        .min(MAX_LEASE_REQUESTS);
    if limits.rpm.is_some() {
        let left = status.requests.map_or(0, |(_, left, _)| left);
        n = n.min(left / SHARE);
    }
    if limits.rpd.is_some() {
        let left = status.daily_requests.map_or(0, |(_, left, _)| left);
        n = n.min(left / SHARE);
    }
    if limits.tpm.is_some() {
        let left = status.tokens.map_or(0, |(_, left, _)| left);
        n = n.min((left / SHARE).checked_div(tokens).unwrap_or(n));
    }
    let cost_nanos = if budget.is_some() { cost_nanos } else { 0 };
    if let Some(b) = budget {
        let left = b
            .max_nanos
            .saturating_sub(status.spent_nanos)
            .saturating_sub(status.reserved_nanos);
        n = n.min((left / SHARE).checked_div(cost_nanos).unwrap_or(n));
    }
    if n < MIN_LEASE_REQUESTS {
        return None;
    }
    Some(LeaseTerms {
        sec,
        requests: n,
        tokens: tokens.saturating_mul(n),
        cost_nanos: cost_nanos.saturating_mul(n),
        expires_at_ms,
    })
}

/// A holder's count of its own admissions of one key, by second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateMeter {
    sec: u64,
    this: u64,
    last: u64,
}

impl RateMeter {
    /// One more admission wanted at `now_ms`.
    pub fn observe(&mut self, now_ms: u64) {
        let sec = now_ms / 1_000;
        if sec != self.sec {
            self.last = if sec == self.sec + 1 { self.this } else { 0 };
            self.sec = sec;
            self.this = 0;
        }
        self.this += 1;
    }

    /// Requests a second: the previous second's, or this one's if more.
    pub fn per_sec(&self, now_ms: u64) -> u64 {
        let sec = now_ms / 1_000;
        if sec == self.sec {
            self.last.max(self.this)
        } else if sec == self.sec + 1 {
            self.this
        } else {
            0
        }
    }
}

/// A lease as its holder keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The authority's reservation id (the Durable Object's; 0 on DynamoDB).
    pub id: u64,
    /// The second its requests count in.
    pub sec: u64,
    pub expires_at_ms: u64,
    /// SHA-256 of the secret the key was presented with when granted.
    pub key_hash: String,
    pub requests_left: u64,
    pub tokens_left: u64,
    pub cost_left: u64,
    /// The key's status after the grant (for `x-ratelimit-*`).
    pub status: LimitStatus,
}

impl Lease {
    /// The lease granted as `reservation` on `terms`.
    pub fn new(
        reservation: &Reservation,
        terms: &LeaseTerms,
        key_hash: &str,
        status: LimitStatus,
    ) -> Lease {
        Lease {
            id: reservation.id,
            sec: reservation.sec,
            expires_at_ms: terms.expires_at_ms,
            key_hash: key_hash.to_owned(),
            requests_left: terms.requests,
            tokens_left: reservation.tokens,
            cost_left: reservation.cost_nanos,
            status,
        }
    }

    pub fn valid(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms && now_ms / 1_000 <= self.sec
    }

    /// Admits one request locally, or says no (and changes nothing).
    pub fn spend(
        &mut self,
        now_ms: u64,
        key_hash: &str,
        tokens: u64,
        cost_nanos: u64,
    ) -> Option<Reservation> {
        if !self.valid(now_ms)
            || self.key_hash != key_hash
            || self.requests_left == 0
            || self.tokens_left < tokens
            || self.cost_left < cost_nanos
        {
            return None;
        }
        self.requests_left -= 1;
        self.tokens_left -= tokens;
        self.cost_left -= cost_nanos;
        Some(Reservation {
            id: self.id,
            sec: self.sec,
            tokens,
            cost_nanos,
            expires_at: self.expires_at_ms / 1_000 + 1,
            leased: true,
        })
    }
}

/// What one second's slot of the key gets back or is corrected by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotCarry {
    /// Requests of a lease never used: they leave the slot and the day.
    pub unused_requests: u64,
    /// Added to the slot's tokens (negative: given back).
    pub tokens: i64,
    /// Added to the committed spend of the period of this second.
    pub cost_nanos: i64,
    /// Actual spend settled (the budget's `spent`).
    pub settled_nanos: u64,
}

/// Corrections on their way to the authority, by the second they belong
/// to: returned leases and the settlements of leased requests. Additive,
/// so one call carries any number of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carry {
    /// On the wire as `[[sec, slot], ...]` (a JSON object's keys are
    /// strings, which not every deserializer turns into numbers).
    #[serde(with = "slots_as_pairs")]
    pub slots: BTreeMap<u64, SlotCarry>,
    /// Settlements and returns carried.
    pub count: u64,
    /// When the oldest was added.
    pub since_ms: Option<u64>,
    /// Leases to release at a Durable Object (their reservation ids).
    pub released: Vec<u64>,
}

mod slots_as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::SlotCarry;

    pub fn serialize<S: Serializer>(m: &BTreeMap<u64, SlotCarry>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u64, SlotCarry>, D::Error> {
        Ok(Vec::<(u64, SlotCarry)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Carry {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn slot(&mut self, now_ms: u64, sec: u64) -> &mut SlotCarry {
        self.count += 1;
        self.since_ms.get_or_insert(now_ms);
        self.slots.entry(sec).or_default()
    }

    /// Adds `other` (carried earlier, not delivered) back in.
    pub fn absorb(&mut self, other: Carry) {
        for (sec, c) in other.slots {
            let s = self.slots.entry(sec).or_default();
            s.unused_requests += c.unused_requests;
            s.tokens = s.tokens.saturating_add(c.tokens);
            s.cost_nanos = s.cost_nanos.saturating_add(c.cost_nanos);
            s.settled_nanos = s.settled_nanos.saturating_add(c.settled_nanos);
        }
        self.count += other.count;
        self.since_ms = match (self.since_ms, other.since_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.released.extend(other.released);
    }

    /// Time to deliver: by count or by age.
    pub fn due(&self, now_ms: u64) -> bool {
        self.count >= FLUSH_COUNT
            || self
                .since_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= FLUSH_AFTER_MS)
    }
}

/// Books kept per holder before idle ones (no lease, nothing carried)
/// are dropped.
pub const MAX_BOOKS: usize = 10_000;

/// The book of `key_id` in a holder's `books`, made if missing. Past
/// [`MAX_BOOKS`], the books that hold nothing are dropped first (only
/// their rate is lost).
pub fn book_of<'a>(
    books: &'a mut std::collections::HashMap<String, LeaseBook>,
    key_id: &str,
) -> &'a mut LeaseBook {
    // Looked up first: the key id is only copied when a book is made, not
    // on every leased admission (`entry` would need the owned key up front).
    if !books.contains_key(key_id) {
        if books.len() >= MAX_BOOKS {
            books.retain(|_, b| b.lease.is_some() || !b.carry.is_empty());
        }
        books.insert(key_id.to_owned(), LeaseBook::default());
    }
    match books.get_mut(key_id) {
        Some(book) => book,
        // Inserted just above when missing.
        None => unreachable!("book inserted above"),
    }
}

/// One holder's (isolate's, container's) leasing of one key.
#[derive(Debug, Clone, Default)]
pub struct LeaseBook {
    pub rate: RateMeter,
    pub lease: Option<Lease>,
    pub carry: Carry,
}

impl LeaseBook {
    /// Admits locally from the lease, counting the request for the rate.
    pub fn admit(
        &mut self,
        now_ms: u64,
        key_hash: &str,
        tokens: u64,
        cost_nanos: u64,
    ) -> Option<(Reservation, LimitStatus)> {
        self.rate.observe(now_ms);
        let lease = self.lease.as_mut()?;
        let r = lease.spend(now_ms, key_hash, tokens, cost_nanos)?;
        Some((r, lease.status.clone()))
    }

    /// Ends the lease if it is over at `now_ms` (or `always`): its unused
    /// part goes into the carry.
    pub fn close(&mut self, now_ms: u64, always: bool) {
        let over = self
            .lease
            .as_ref()
            .is_some_and(|l| always || !l.valid(now_ms));
        if !over {
            return;
        }
        if let Some(l) = self.lease.take() {
            if l.id != 0 {
                self.carry.released.push(l.id);
            }
            let s = self.carry.slot(now_ms, l.sec);
            s.unused_requests += l.requests_left;
            s.tokens = s.tokens.saturating_sub(signed(l.tokens_left));
            s.cost_nanos = s.cost_nanos.saturating_sub(signed(l.cost_left));
        }
    }

    /// Settles a leased request: what it did not use goes back into the
    /// lease while it runs; anything else is carried.
    pub fn settle(
        &mut self,
        now_ms: u64,
        r: &Reservation,
        tokens: u64,
        cost_nanos: u64,
        budget: bool,
    ) {
        let mut token_delta = signed(tokens).saturating_sub(signed(r.tokens));
        let cost_nanos = if budget { cost_nanos } else { 0 };
        let mut cost_delta = signed(cost_nanos).saturating_sub(signed(r.cost_nanos));
        if let Some(l) = self
            .lease
            .as_mut()
            .filter(|l| l.valid(now_ms) && l.id == r.id && l.sec == r.sec)
        {
            // Less than estimated: the lease gets it back. More: carried
            // to the key as any settlement's excess (the lease is for
            // admissions still to come).
            if token_delta < 0 {
                l.tokens_left = l.tokens_left.saturating_add(token_delta.unsigned_abs());
                token_delta = 0;
            }
            if cost_delta < 0 {
                l.cost_left = l.cost_left.saturating_add(cost_delta.unsigned_abs());
                cost_delta = 0;
            }
        }
        if token_delta != 0 || cost_delta != 0 || cost_nanos != 0 {
            let s = self.carry.slot(now_ms, r.sec);
            s.tokens = s.tokens.saturating_add(token_delta);
            s.cost_nanos = s.cost_nanos.saturating_add(cost_delta);
            s.settled_nanos = s.settled_nanos.saturating_add(cost_nanos);
        }
    }

    /// A leased request's settlement as every holder does it: settled into
    /// the book, the lease closed if it is over, and the carry handed out
    /// when it is due for delivery (some of it is old or large enough, or
    /// no lease runs that a later call could carry it with).
    pub fn settle_leased(
        &mut self,
        now_ms: u64,
        r: &Reservation,
        tokens: u64,
        cost_nanos: u64,
        budget: bool,
    ) -> Option<Carry> {
        self.settle(now_ms, r, tokens, cost_nanos, budget);
        self.close(now_ms, false);
        let due = !self.carry.is_empty() && (self.lease.is_none() || self.carry.due(now_ms));
        due.then(|| self.take_carry())
    }

    /// Takes the carry to deliver (give it back with [`Carry::absorb`] if
    /// the delivery fails).
    pub fn take_carry(&mut self) -> Carry {
        std::mem::take(&mut self.carry)
    }
}

impl KeyLimitState {
    /// Grants a lease on `terms` (the `ask` gives the clock, the limits,
    /// the budget and the reservation's time to live): an admission of
    /// `terms.requests` requests with all their tokens and cost, or the
    /// refusal the first of them would get.
    pub fn grant_lease(
        &mut self,
        ask: &Ask<'_>,
        terms: &LeaseTerms,
    ) -> Result<Reservation, Refusal> {
        self.admit_many_in(
            &Ask {
                tokens: terms.tokens,
                cost_nanos: terms.cost_nanos,
                ..*ask
            },
            terms.requests,
            terms.sec.max(ask.now_secs),
        )
    }

    /// Applies what a holder carried: leases released (their reservations
    /// dropped: the carry says what they used), unused requests, tokens
    /// and cost given back, leased requests settled.
    pub fn take_back(&mut self, now_secs: u64, budget: Option<&Budget>, carry: &Carry) {
        let mut released_cost: BTreeMap<u64, i64> = BTreeMap::new();
        for id in &carry.released {
            if let Some(r) = self.release_reservation(now_secs, budget, *id) {
                // The reservation's estimate becomes spend; the carry
                // corrects it to what was used.
                *released_cost.entry(r.sec).or_default() += signed(r.cost_nanos);
            } else {
                // Already expired, hence charged at its estimate: the
                // carry's correction applies to the charge.
            }
        }
        for (sec, c) in &carry.slots {
            let extra = released_cost.remove(sec).unwrap_or(0);
            self.adjust(
                now_secs,
                budget,
                *sec,
                c.unused_requests,
                c.tokens,
                c.cost_nanos.saturating_add(extra),
            );
        }
        for (sec, extra) in released_cost {
            self.adjust(now_secs, budget, sec, 0, 0, extra);
        }
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
