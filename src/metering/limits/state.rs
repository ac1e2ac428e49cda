//! The per-key admission state machine: sliding minute window, UTC day,
//! budget period, reservations (see the module doc of [`super`]).

use serde::{Deserialize, Serialize};

use crate::keys::{Budget, BudgetPeriod, Limits};
use crate::wire::time::{civil_from_days, days_from_civil};

/// Width of the per-minute window, in seconds.
const WINDOW_SECS: u64 = 60;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    sec: u64,
    requests: u64,
    tokens: u64,
}

/// An admitted request's hold on the key's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: u64,
    /// The second it was admitted in (its minute bucket).
    pub sec: u64,
    pub tokens: u64,
    pub cost_nanos: u64,
    /// Unix second after which an unsettled reservation is charged as is.
    pub expires_at: u64,
    /// Admitted locally from a lease ([`super::lease`]): `id` is the
    /// lease's, and its settlement goes to the lease's holder.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leased: bool,
}

/// Everything admission remembers about one key. Serializable, so that a
/// Durable Object or a DynamoDB item can hold it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimitState {
    minute: Vec<Bucket>,
    day: i64,
    day_requests: u64,
    /// Start (Unix seconds) of the budget period `spent_nanos` belongs to.
    period_start: u64,
    pub spent_nanos: u64,
    reservations: Vec<Reservation>,
    next_id: u64,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub now_secs: u64,
    pub limits: &'a Limits,
    pub budget: Option<&'a Budget>,
    pub tokens: u64,
    pub cost_nanos: u64,
    /// How long the reservation may stay unsettled.
    pub ttl_secs: u64,
}

/// Which limit refused, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Refusal {
    /// `rpm`, `rpd` or `tpm`.
    Rate {
        limit: &'static str,
        max: u64,
        retry_after_secs: u64,
    },
    Budget {
        max_nanos: u64,
        spent_nanos: u64,
        reserved_nanos: u64,
        asked_nanos: u64,
    },
}

/// Remaining capacity, for the `x-ratelimit-*` headers and the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitStatus {
    /// (limit, remaining, seconds until one more request fits)
    pub requests: Option<(u64, u64, u64)>,
    /// (limit, remaining, seconds until the window frees tokens)
    pub tokens: Option<(u64, u64, u64)>,
    /// `rpd` alone: (limit, remaining today, seconds until UTC midnight).
    #[serde(default)]
    pub daily_requests: Option<(u64, u64, u64)>,
    pub spent_nanos: u64,
    pub reserved_nanos: u64,
    pub period_start: Option<u64>,
}

/// Start of the budget period containing `now_secs`.
pub fn period_start(period: BudgetPeriod, now_secs: u64) -> u64 {
    let day = (now_secs / 86_400) as i64;
    let start_day = match period {
        BudgetPeriod::Daily => day,
        // 1970-01-01 was a Thursday: Monday is 3 days later.
        BudgetPeriod::Weekly => day - (day - 4).rem_euclid(7),
        BudgetPeriod::Monthly => {
            let (y, m, _) = civil_from_days(day);
            days_from_civil(y, m, 1)
        }
        BudgetPeriod::Total => 0,
    };
    (start_day.max(0) as u64) * 86_400
}

impl KeyLimitState {
    /// A state with the given minute buckets `(sec, requests, tokens)`, day
    /// count and spend, and no reservations: the view of a store that keeps
    /// the counters apart ([`super::counters`]), where outstanding
    /// reservations are already part of `spent_nanos`.
    pub(super) fn from_counters(
        minute: impl IntoIterator<Item = (u64, u64, u64)>,
        day: i64,
        day_requests: u64,
        period_start: u64,
        spent_nanos: u64,
    ) -> Self {
        let mut minute: Vec<Bucket> = minute
            .into_iter()
            .map(|(sec, requests, tokens)| Bucket {
                sec,
                requests,
                tokens,
            })
            .collect();
        minute.sort_by_key(|b| b.sec);
        KeyLimitState {
            minute,
            day,
            day_requests,
            period_start,
            spent_nanos,
            reservations: Vec::new(),
            next_id: 0,
        }
    }

    /// Requests and tokens in the minute window (after [`Self::status`] or an admission rolled it).
    pub(super) fn window_totals(&self) -> (u64, u64) {
        self.window()
    }

    fn roll(&mut self, now: u64, budget: Option<&Budget>) {
        self.minute.retain(|b| b.sec + WINDOW_SECS > now);
        let day = (now / 86_400) as i64;
        if day != self.day {
            self.day = day;
            self.day_requests = 0;
        }
        // Unsettled reservations past their time are charged at their estimate.
        let mut charged: u64 = 0;
        self.reservations.retain(|r| {
            if r.expires_at <= now {
                charged = charged.saturating_add(r.cost_nanos);
                false
            } else {
                true
            }
        });
        self.spent_nanos = self.spent_nanos.saturating_add(charged);
        if let Some(b) = budget {
            let start = period_start(b.period, now);
            if start != self.period_start {
                self.period_start = start;
                self.spent_nanos = 0;
            }
        }
    }

    fn window(&self) -> (u64, u64) {
        self.minute.iter().fold((0u64, 0u64), |(r, t), b| {
            (r.saturating_add(b.requests), t.saturating_add(b.tokens))
        })
    }

    /// Seconds until `need` more units fit under `max`, given per-bucket use.
    fn wait(&self, now: u64, used: u64, need: u64, max: u64, per: impl Fn(&Bucket) -> u64) -> u64 {
        if need > max {
            return WINDOW_SECS;
        }
        let mut left = used;
        for b in &self.minute {
            if left.saturating_add(need) <= max {
                break;
            }
            left = left.saturating_sub(per(b));
            if left.saturating_add(need) <= max {
                return (b.sec + WINDOW_SECS).saturating_sub(now).max(1);
            }
        }
        1
    }

    pub(crate) fn reserved_nanos(&self) -> u64 {
        self.reservations
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.cost_nanos))
    }

    /// Admits and reserves, or refuses and changes nothing.
    pub fn admit(&mut self, ask: &Ask<'_>) -> Result<Reservation, Refusal> {
        self.admit_many(ask, 1)
    }

    /// Admits `requests` requests at once (a lease, [`super::lease`]) with
    /// `ask.tokens` and `ask.cost_nanos` for all of them together: one
    /// reservation, `requests` requests in the second's bucket and the day.
    pub(super) fn admit_many(
        &mut self,
        ask: &Ask<'_>,
        requests: u64,
    ) -> Result<Reservation, Refusal> {
        self.admit_many_in(ask, requests, ask.now_secs)
    }

    /// [`Self::admit_many`], counted in second `count` (`ask.now_secs` or
    /// the next one: a spanning lease, [`super::lease::lease_terms_spanning`]).
    /// The window is every bucket from `now - 59` on, the next second's
    /// included, whatever second the admission counts in.
    pub(super) fn admit_many_in(
        &mut self,
        ask: &Ask<'_>,
        requests: u64,
        count: u64,
    ) -> Result<Reservation, Refusal> {
        self.admit_counted(ask, requests, count).0
    }

    /// Admits one request and tells the status it leaves: what
    /// [`Self::admit`] then [`Self::status`] at the same second give, with
    /// the windows rolled and the minute summed once, not twice (the
    /// single-process limiter's admission, once per request).
    pub fn admit_with_status(
        &mut self,
        ask: &Ask<'_>,
    ) -> (Result<Reservation, Refusal>, LimitStatus) {
        let (result, window) = self.admit_counted(ask, 1, ask.now_secs);
        let status = self.status_of(ask.now_secs, ask.limits, ask.budget, window);
        (result, status)
    }

    /// [`Self::admit_many_in`], and the minute window's totals (requests,
    /// tokens) it leaves: the sum before, plus what was admitted. (A
    /// saturating sum of counts with one count raised is the saturating sum
    /// raised, so this is what summing the buckets again gives.)
    fn admit_counted(
        &mut self,
        ask: &Ask<'_>,
        requests: u64,
        count: u64,
    ) -> (Result<Reservation, Refusal>, (u64, u64)) {
        let requests = requests.max(1);
        let now = ask.now_secs;
        let count = count.clamp(now, now.saturating_add(1));
        self.roll(now, ask.budget);
        let window = self.window();
        match self.admit_rolled(ask, requests, count, window) {
            Ok(r) => (
                Ok(r),
                (
                    window.0.saturating_add(requests),
                    window.1.saturating_add(ask.tokens),
                ),
            ),
            Err(refusal) => (Err(refusal), window),
        }
    }

    /// The admission proper, on a rolled state whose minute sums to `window`.
    fn admit_rolled(
        &mut self,
        ask: &Ask<'_>,
        requests: u64,
        count: u64,
        (window_requests, tokens): (u64, u64),
    ) -> Result<Reservation, Refusal> {
        let now = ask.now_secs;
        if let Some(max) = ask.limits.rpd {
            if self.day_requests.saturating_add(requests) > max {
                let next_midnight = (now / 86_400 + 1) * 86_400;
                return Err(Refusal::Rate {
                    limit: "rpd",
                    max,
                    retry_after_secs: (next_midnight - now).max(1),
                });
            }
        }
        if let Some(max) = ask.limits.rpm {
            if window_requests.saturating_add(requests) > max {
                return Err(Refusal::Rate {
                    limit: "rpm",
                    max,
                    retry_after_secs: self
                        .wait(now, window_requests, requests, max, |b| b.requests),
                });
            }
        }
        if let Some(max) = ask.limits.tpm {
            if tokens.saturating_add(ask.tokens) > max {
                return Err(Refusal::Rate {
                    limit: "tpm",
                    max,
                    retry_after_secs: self.wait(now, tokens, ask.tokens, max, |b| b.tokens),
                });
            }
        }
        if let Some(b) = ask.budget {
            let reserved = self.reserved_nanos();
            if self
                .spent_nanos
                .saturating_add(reserved)
                .saturating_add(ask.cost_nanos)
                > b.max_nanos
            {
                return Err(Refusal::Budget {
                    max_nanos: b.max_nanos,
                    spent_nanos: self.spent_nanos,
                    reserved_nanos: reserved,
                    asked_nanos: ask.cost_nanos,
                });
            }
        }
        self.day_requests = self.day_requests.saturating_add(requests);
        match self.minute.binary_search_by_key(&count, |b| b.sec) {
            Ok(i) => {
                let b = &mut self.minute[i];
                b.requests = b.requests.saturating_add(requests);
                b.tokens = b.tokens.saturating_add(ask.tokens);
            }
            Err(i) => self.minute.insert(
                i,
                Bucket {
                    sec: count,
                    requests,
                    tokens: ask.tokens,
                },
            ),
        }
        self.next_id += 1;
        let r = Reservation {
            id: self.next_id,
            sec: count,
            tokens: ask.tokens,
            cost_nanos: if ask.budget.is_some() {
                ask.cost_nanos
            } else {
                0
            },
            expires_at: now.saturating_add(ask.ttl_secs.max(1)),
            leased: false,
        };
        self.reservations.push(r);
        Ok(r)
    }

    /// Replaces a reservation's estimates with what was used. Settling an
    /// unknown (already expired, hence charged) reservation changes nothing.
    pub fn settle(
        &mut self,
        now_secs: u64,
        budget: Option<&Budget>,
        id: u64,
        tokens: u64,
        cost_nanos: u64,
    ) {
        self.roll(now_secs, budget);
        let Some(pos) = self.reservations.iter().position(|r| r.id == id) else {
            return;
        };
        let r = self.reservations.remove(pos);
        if let Some(b) = self.minute.iter_mut().find(|b| b.sec == r.sec) {
            b.tokens = b.tokens.saturating_sub(r.tokens).saturating_add(tokens);
        }
        if budget.is_some() {
            self.spent_nanos = self.spent_nanos.saturating_add(cost_nanos);
        }
    }

    /// Gives back what a lease did not use (or a correction of its
    /// settled requests): `requests` fewer in the bucket of `sec` and in
    /// the day (if still there), `tokens` (signed) in that bucket, and
    /// `cost_nanos` (signed) to the spend. Never below zero.
    pub(super) fn adjust(
        &mut self,
        now_secs: u64,
        budget: Option<&Budget>,
        sec: u64,
        unused_requests: u64,
        tokens: i64,
        cost_nanos: i64,
    ) {
        self.roll(now_secs, budget);
        if let Some(b) = self.minute.iter_mut().find(|b| b.sec == sec) {
            b.requests = b.requests.saturating_sub(unused_requests);
            b.tokens = b.tokens.saturating_add_signed(tokens);
        }
        if (sec / 86_400) as i64 == self.day {
            self.day_requests = self.day_requests.saturating_sub(unused_requests);
        }
        if let Some(b) = budget {
            if period_start(b.period, sec) == self.period_start {
                self.spent_nanos = self.spent_nanos.saturating_add_signed(cost_nanos);
            }
        }
    }

    /// Drops the reservation `id` without charging it (a returned lease:
    /// its use is charged through [`Self::adjust`]). `None` if unknown
    /// (already expired, hence charged at its estimate).
    pub(super) fn release_reservation(
        &mut self,
        now_secs: u64,
        budget: Option<&Budget>,
        id: u64,
    ) -> Option<Reservation> {
        self.roll(now_secs, budget);
        let pos = self.reservations.iter().position(|r| r.id == id)?;
        Some(self.reservations.remove(pos))
    }

    /// Remaining capacity at `now_secs` (rolls the windows first).
    pub fn status(
        &mut self,
        now_secs: u64,
        limits: &Limits,
        budget: Option<&Budget>,
    ) -> LimitStatus {
        self.roll(now_secs, budget);
        let window = self.window();
        self.status_of(now_secs, limits, budget, window)
    }

    /// The status of a state rolled to `now_secs` whose minute sums to
    /// `(requests, tokens)`.
    fn status_of(
        &self,
        now_secs: u64,
        limits: &Limits,
        budget: Option<&Budget>,
        (requests, tokens): (u64, u64),
    ) -> LimitStatus {
        let oldest_leaves = self
            .minute
            .first()
            .map_or(0, |b| (b.sec + WINDOW_SECS).saturating_sub(now_secs));
        let next_midnight = (now_secs / 86_400 + 1) * 86_400 - now_secs;
        let requests = match (limits.rpm, limits.rpd) {
            (Some(max), _) => Some((max, max.saturating_sub(requests), oldest_leaves)),
            (None, Some(max)) => Some((max, max.saturating_sub(self.day_requests), next_midnight)),
            (None, None) => None,
        };
        LimitStatus {
            requests,
            tokens: limits
                .tpm
                .map(|max| (max, max.saturating_sub(tokens), oldest_leaves)),
            daily_requests: limits
                .rpd
                .map(|max| (max, max.saturating_sub(self.day_requests), next_midnight)),
            spent_nanos: self.spent_nanos,
            reserved_nanos: self.reserved_nanos(),
            period_start: budget.map(|_| self.period_start),
        }
    }

    /// The part that must survive a restart: the period's spend.
    pub fn spend(&self) -> (u64, u64) {
        (self.period_start, self.spent_nanos)
    }

    /// Restores [`spend`](Self::spend) after a restart.
    pub fn restore_spend(&mut self, period_start: u64, spent_nanos: u64) {
        self.period_start = period_start;
        self.spent_nanos = spent_nanos;
    }
}
