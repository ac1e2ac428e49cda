//! Admission arithmetic: rate limits and budgets of one key, as a pure state
//! machine that every platform runs the same way.
//!
//! A platform only has to make [`KeyLimitState::admit`] and
//! [`KeyLimitState::settle`] atomic per key (a mutex on the server, the
//! single-threaded Durable Object on Workers, a conditional write on the
//! state's version in DynamoDB); the rules live here, once.
//!
//! ## Windows
//! - **Per minute** (`rpm`, `tpm`): a sliding window of 60 one-second
//!   buckets. A request is admitted when the requests (tokens) admitted in
//!   the current second and the 59 before it, plus its own, stay within the
//!   limit. So a key with `rpm = N` gets exactly N requests in any such
//!   window, bursts included. `Retry-After` is the number of seconds until
//!   enough of the oldest buckets leave the window for the request to fit.
//! - **Per day** (`rpd`): the UTC calendar day. `Retry-After` runs to the
//!   next UTC midnight.
//! - **Budget**: `daily`, `weekly` (Monday 00:00 UTC) and `monthly` (the 1st,
//!   00:00 UTC) periods, or `total` (never resets). A request is refused when
//!   spent + reserved + its own estimated cost would exceed `max_usd`.
//!
//! ## Reservations
//! Admission reserves one request, the estimated tokens (counted in the
//! bucket of the admission second) and the estimated cost. Settlement
//! replaces the estimates with the actual usage. A reservation that is never
//! settled (the process died mid-request) expires after `ttl` and is then
//! charged at its estimate: usage is never lost, and never counted twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::compat::MaybeSendSync;
use crate::keys::{Budget, BudgetPeriod, Limits, VirtualKey};
use crate::metering::pricing::usd;
use crate::ports::{Admission, Clock, Demand, Limiter, Settlement, StoreError};
use crate::wire::error::GatewayError;
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

    fn reserved_nanos(&self) -> u64 {
        self.reservations
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(r.cost_nanos))
    }

    /// Admits and reserves, or refuses and changes nothing.
    pub fn admit(&mut self, ask: &Ask<'_>) -> Result<Reservation, Refusal> {
        let now = ask.now_secs;
        self.roll(now, ask.budget);
        let (requests, tokens) = self.window();
        if let Some(max) = ask.limits.rpd {
            if self.day_requests.saturating_add(1) > max {
                let next_midnight = (now / 86_400 + 1) * 86_400;
                return Err(Refusal::Rate {
                    limit: "rpd",
                    max,
                    retry_after_secs: (next_midnight - now).max(1),
                });
            }
        }
        if let Some(max) = ask.limits.rpm {
            if requests.saturating_add(1) > max {
                return Err(Refusal::Rate {
                    limit: "rpm",
                    max,
                    retry_after_secs: self.wait(now, requests, 1, max, |b| b.requests),
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
        self.day_requests = self.day_requests.saturating_add(1);
        match self.minute.last_mut() {
            Some(b) if b.sec == now => {
                b.requests = b.requests.saturating_add(1);
                b.tokens = b.tokens.saturating_add(ask.tokens);
            }
            _ => self.minute.push(Bucket {
                sec: now,
                requests: 1,
                tokens: ask.tokens,
            }),
        }
        self.next_id += 1;
        let r = Reservation {
            id: self.next_id,
            sec: now,
            tokens: ask.tokens,
            cost_nanos: if ask.budget.is_some() {
                ask.cost_nanos
            } else {
                0
            },
            expires_at: now.saturating_add(ask.ttl_secs.max(1)),
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

    /// Remaining capacity at `now_secs` (rolls the windows first).
    pub fn status(
        &mut self,
        now_secs: u64,
        limits: &Limits,
        budget: Option<&Budget>,
    ) -> LimitStatus {
        self.roll(now_secs, budget);
        let (requests, tokens) = self.window();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_allowance_is_refused_not_wrapped() {
        let body = |v: Value| v.as_object().cloned().unwrap_or_default();
        for (field, v) in [
            ("max_tokens", serde_json::json!(u64::MAX)),
            ("max_tokens", serde_json::json!(18446744073709551000u64)),
            (
                "max_completion_tokens",
                serde_json::json!(MAX_COMPLETION_TOKENS + 1),
            ),
            ("max_tokens", serde_json::json!(-1)),
            ("max_tokens", serde_json::json!(1.5)),
            ("max_tokens", serde_json::json!("100")),
            ("n", serde_json::json!(0)),
            ("n", serde_json::json!(MAX_CHOICES + 1)),
        ] {
            let b = body(serde_json::json!({ field: v }));
            match completion_allowance(&b, 16) {
                Err(GatewayError::InvalidRequest { param, .. }) => {
                    assert_eq!(param.as_deref(), Some(field))
                }
                other => panic!("{field}={v}: {other:?}"),
            }
        }
        let b = body(serde_json::json!({"max_tokens": MAX_COMPLETION_TOKENS, "n": MAX_CHOICES}));
        assert_eq!(
            completion_allowance(&b, 16).unwrap(),
            MAX_COMPLETION_TOKENS * MAX_CHOICES
        );
        let b = body(serde_json::json!({"max_tokens": null, "max_completion_tokens": 7}));
        assert_eq!(completion_allowance(&b, 16).unwrap(), 7);
        assert_eq!(completion_allowance(&Map::new(), 16).unwrap(), 16);
    }

    #[test]
    fn huge_asks_saturate_and_are_refused_by_a_small_tpm() {
        let l = limits(None, None, Some(1000));
        let mut s = KeyLimitState::default();
        assert!(s.admit(&ask(1_000, &l, None, u64::MAX, 0)).is_err());
        assert!(s.admit(&ask(1_000, &l, None, 999, 0)).is_ok());
        assert!(s.admit(&ask(1_000, &l, None, u64::MAX - 10, 0)).is_err());
        let b = Budget {
            max_nanos: 1_000,
            period: BudgetPeriod::Total,
        };
        let mut s = KeyLimitState::default();
        assert!(s
            .admit(&ask(
                1_000,
                &limits(None, None, None),
                Some(&b),
                0,
                u64::MAX
            ))
            .is_err());
    }

    fn limits(rpm: Option<u64>, rpd: Option<u64>, tpm: Option<u64>) -> Limits {
        Limits { rpm, rpd, tpm }
    }

    fn ask<'a>(now: u64, l: &'a Limits, b: Option<&'a Budget>, tokens: u64, cost: u64) -> Ask<'a> {
        Ask {
            now_secs: now,
            limits: l,
            budget: b,
            tokens,
            cost_nanos: cost,
            ttl_secs: 600,
        }
    }

    #[test]
    fn rpm_exact_in_a_burst_and_truthful_retry_after() {
        let l = limits(Some(5), None, None);
        let mut s = KeyLimitState::default();
        let t0 = 1_000_000;
        for _ in 0..5 {
            assert!(s.admit(&ask(t0, &l, None, 0, 0)).is_ok());
        }
        let Err(Refusal::Rate {
            limit,
            retry_after_secs,
            ..
        }) = s.admit(&ask(t0 + 10, &l, None, 0, 0))
        else {
            panic!()
        };
        assert_eq!((limit, retry_after_secs), ("rpm", 50));
        assert!(s.admit(&ask(t0 + 59, &l, None, 0, 0)).is_err());
        assert!(
            s.admit(&ask(t0 + 60, &l, None, 0, 0)).is_ok(),
            "free exactly when Retry-After said"
        );
    }

    #[test]
    fn rpm_window_slides() {
        let l = limits(Some(2), None, None);
        let mut s = KeyLimitState::default();
        assert!(s.admit(&ask(100, &l, None, 0, 0)).is_ok());
        assert!(s.admit(&ask(130, &l, None, 0, 0)).is_ok());
        let Err(Refusal::Rate {
            retry_after_secs, ..
        }) = s.admit(&ask(140, &l, None, 0, 0))
        else {
            panic!()
        };
        assert_eq!(retry_after_secs, 20);
        assert!(s.admit(&ask(160, &l, None, 0, 0)).is_ok());
        assert!(s.admit(&ask(161, &l, None, 0, 0)).is_err());
    }

    #[test]
    fn rpd_is_the_utc_day() {
        let l = limits(None, Some(2), None);
        let mut s = KeyLimitState::default();
        let noon = 20_000 * 86_400 + 43_200;
        assert!(s.admit(&ask(noon, &l, None, 0, 0)).is_ok());
        assert!(s.admit(&ask(noon + 1, &l, None, 0, 0)).is_ok());
        let Err(Refusal::Rate {
            limit,
            retry_after_secs,
            ..
        }) = s.admit(&ask(noon + 2, &l, None, 0, 0))
        else {
            panic!()
        };
        assert_eq!((limit, retry_after_secs), ("rpd", 43_198));
        assert!(s.admit(&ask(noon + 43_200, &l, None, 0, 0)).is_ok());
    }

    #[test]
    fn tpm_reserves_then_settles_to_actual() {
        let l = limits(None, None, Some(1000));
        let mut s = KeyLimitState::default();
        let r = s.admit(&ask(50, &l, None, 600, 0)).unwrap();
        assert!(
            s.admit(&ask(50, &l, None, 600, 0)).is_err(),
            "estimate is held"
        );
        s.settle(51, None, r.id, 100, 0);
        assert!(
            s.admit(&ask(52, &l, None, 600, 0)).is_ok(),
            "settled to actual"
        );
        let Err(Refusal::Rate { limit, .. }) = s.admit(&ask(52, &l, None, 5000, 0)) else {
            panic!()
        };
        assert_eq!(limit, "tpm");
    }

    #[test]
    fn budget_counts_spent_reserved_and_own_estimate() {
        let l = Limits::default();
        let b = Budget {
            max_nanos: 1000,
            period: BudgetPeriod::Daily,
        };
        let mut s = KeyLimitState::default();
        let day = 20_000 * 86_400;
        let r1 = s.admit(&ask(day, &l, Some(&b), 0, 400)).unwrap();
        let r2 = s.admit(&ask(day, &l, Some(&b), 0, 400)).unwrap();
        assert!(matches!(
            s.admit(&ask(day, &l, Some(&b), 0, 400)),
            Err(Refusal::Budget { .. })
        ));
        s.settle(day + 1, Some(&b), r1.id, 0, 100);
        s.settle(day + 1, Some(&b), r2.id, 0, 100);
        assert_eq!(s.spent_nanos, 200);
        assert!(s.admit(&ask(day + 2, &l, Some(&b), 0, 800)).is_ok());
        // A new UTC day starts over.
        assert!(s.admit(&ask(day + 86_400, &l, Some(&b), 0, 1000)).is_ok());
        assert_eq!(s.spent_nanos, 0);
    }

    #[test]
    fn unsettled_reservations_expire_and_are_charged() {
        let l = Limits::default();
        let b = Budget {
            max_nanos: 1000,
            period: BudgetPeriod::Total,
        };
        let mut s = KeyLimitState::default();
        let r = s
            .admit(&Ask {
                ttl_secs: 10,
                ..ask(100, &l, Some(&b), 0, 300)
            })
            .unwrap();
        let st = s.status(111, &l, Some(&b));
        assert_eq!((st.spent_nanos, st.reserved_nanos), (300, 0));
        s.settle(112, Some(&b), r.id, 0, 50);
        assert_eq!(s.spent_nanos, 300, "a late settle does not count twice");
    }

    #[test]
    fn refusal_round_trips_through_json() {
        for r in [
            Refusal::Rate {
                limit: "tpm",
                max: 5,
                retry_after_secs: 7,
            },
            Refusal::Budget {
                max_nanos: 1,
                spent_nanos: 2,
                reserved_nanos: 3,
                asked_nanos: 4,
            },
        ] {
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(Refusal::from_json(&v), Some(r));
        }
    }

    #[test]
    fn periods() {
        // 2026-11-24 is a Tuesday.
        let t = crate::wire::time::parse_timestamp("2026-11-24T15:00:00Z").unwrap();
        let f = crate::wire::time::format_rfc3339;
        assert_eq!(
            f(period_start(BudgetPeriod::Daily, t)),
            "2026-11-24T00:00:00Z"
        );
        assert_eq!(
            f(period_start(BudgetPeriod::Weekly, t)),
            "2026-11-23T00:00:00Z"
        );
        assert_eq!(
            f(period_start(BudgetPeriod::Monthly, t)),
            "2026-11-01T00:00:00Z"
        );
        assert_eq!(period_start(BudgetPeriod::Total, t), 0);
    }
}

// ---------------------------------------------------------------------------
// Turning the arithmetic into answers: errors, headers, estimates.

/// A refusal, with the key's status for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub error: GatewayError,
    pub status: LimitStatus,
}

impl Refusal {
    /// Reads [`Refusal`]'s JSON form back (adapters that decide admission
    /// in another process, e.g. a Durable Object, pass it over the wire).
    pub fn from_json(v: &Value) -> Option<Refusal> {
        if let Some(r) = v.get("Rate") {
            let limit = match r.get("limit")?.as_str()? {
                "rpm" => "rpm",
                "rpd" => "rpd",
                "tpm" => "tpm",
                _ => return None,
            };
            return Some(Refusal::Rate {
                limit,
                max: r.get("max")?.as_u64()?,
                retry_after_secs: r.get("retry_after_secs")?.as_u64()?,
            });
        }
        let b = v.get("Budget")?;
        Some(Refusal::Budget {
            max_nanos: b.get("max_nanos")?.as_u64()?,
            spent_nanos: b.get("spent_nanos")?.as_u64()?,
            reserved_nanos: b.get("reserved_nanos")?.as_u64()?,
            asked_nanos: b.get("asked_nanos")?.as_u64()?,
        })
    }

    /// The 429 or 402 the client gets.
    pub fn to_error(&self, budget: Option<&Budget>) -> GatewayError {
        match self {
            Refusal::Rate { limit, max, retry_after_secs } => GatewayError::RateLimited {
                message: format!(
                    "Rate limit reached for this key: {limit} = {max}. Try again in {retry_after_secs} s."
                ),
                limit,
                retry_after_secs: *retry_after_secs,
            },
            Refusal::Budget { max_nanos, spent_nanos, reserved_nanos, asked_nanos } => {
                let period = budget.map_or("total", |b| match b.period {
                    BudgetPeriod::Daily => "daily",
                    BudgetPeriod::Weekly => "weekly",
                    BudgetPeriod::Monthly => "monthly",
                    BudgetPeriod::Total => "total",
                });
                GatewayError::BudgetExceeded(format!(
                    "Budget exceeded for this key: spent ${:.6} + reserved ${:.6} + this request's estimate ${:.6} would exceed the {period} budget of ${:.6}.",
                    usd(*spent_nanos),
                    usd(*reserved_nanos),
                    usd(*asked_nanos),
                    usd(*max_nanos)
                ))
            }
        }
    }
}

/// OpenAI's rate-limit headers for a status.
pub fn headers(status: &LimitStatus) -> Vec<(&'static str, String)> {
    let mut h = Vec::new();
    if let Some((limit, remaining, reset)) = status.requests {
        h.push(("x-ratelimit-limit-requests", limit.to_string()));
        h.push(("x-ratelimit-remaining-requests", remaining.to_string()));
        h.push(("x-ratelimit-reset-requests", format!("{reset}s")));
    }
    if let Some((limit, remaining, reset)) = status.tokens {
        h.push(("x-ratelimit-limit-tokens", limit.to_string()));
        h.push(("x-ratelimit-remaining-tokens", remaining.to_string()));
        h.push(("x-ratelimit-reset-tokens", format!("{reset}s")));
    }
    h
}

/// Tokens assumed per image part when estimating a prompt.
const IMAGE_TOKENS: u64 = 765;
/// Tokens assumed per chat message for its role and framing.
const MESSAGE_TOKENS: u64 = 4;

fn text_tokens(v: &Value, bytes: &mut u64, extra: &mut u64) {
    match v {
        Value::String(s) => *bytes = bytes.saturating_add(s.len() as u64),
        Value::Number(_) => *extra = extra.saturating_add(1),
        Value::Array(items) => items.iter().for_each(|i| text_tokens(i, bytes, extra)),
        Value::Object(o) => {
            if o.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t == "image_url" || t == "input_image" || t == "image")
            {
                *extra = extra.saturating_add(IMAGE_TOKENS);
                return;
            }
            o.iter()
                .filter(|(k, _)| k.as_str() != "type" && k.as_str() != "role")
                .for_each(|(_, v)| text_tokens(v, bytes, extra));
        }
        _ => {}
    }
}

/// A fast estimate of a request's prompt tokens, made before the upstream
/// call (no tokenizer): one token per 4 bytes of text in `messages`, `tools`,
/// `prompt` or `input`, and in the front doors' `system` (Messages) and
/// `instructions` (Responses) (rounded up), 4 more per chat message, 765 per
/// image, and one per token id when the prompt is given as token ids.
pub fn estimate_prompt_tokens(body: &Map<String, Value>) -> u64 {
    let (mut bytes, mut extra) = (0u64, 0u64);
    for field in [
        "messages",
        "tools",
        "functions",
        "prompt",
        "input",
        "suffix",
        "system",
        "instructions",
    ] {
        if let Some(v) = body.get(field) {
            text_tokens(v, &mut bytes, &mut extra);
        }
    }
    if let Some(Value::Array(messages)) = body.get("messages") {
        extra = extra.saturating_add(MESSAGE_TOKENS.saturating_mul(messages.len() as u64));
    }
    bytes.div_ceil(4).saturating_add(extra)
}

/// The largest completion allowance (`max_tokens`, `max_completion_tokens`)
/// a request may ask for. No model writes anywhere near this many tokens; a
/// larger number is a mistake or an attempt to overflow the estimate, and is
/// refused with a 400 rather than admitted.
pub const MAX_COMPLETION_TOKENS: u64 = 10_000_000;
/// The most choices (`n`) a request may ask for (OpenAI's own limit).
pub const MAX_CHOICES: u64 = 128;

/// The completion allowance: `max_completion_tokens`, else `max_tokens`
/// (`max_output_tokens` on the Responses API), else `default` (times `n` choices). A value that is not an integer from
/// 0 to [`MAX_COMPLETION_TOKENS`] (or an `n` outside 1 to [`MAX_CHOICES`])
/// is a 400 naming the parameter: the estimate that admission and budgets
/// rest on must never wrap or be cut short.
pub fn completion_allowance(body: &Map<String, Value>, default: u64) -> Result<u64, GatewayError> {
    let bounded = |name: &str, min: u64, max: u64| -> Result<Option<u64>, GatewayError> {
        match body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(GatewayError::invalid(
                    format!("`{name}` must be an integer from {min} to {max}."),
                    Some(name),
                )),
            },
        }
    };
    let completion = bounded("max_completion_tokens", 0, MAX_COMPLETION_TOKENS)?;
    let legacy = bounded("max_tokens", 0, MAX_COMPLETION_TOKENS)?;
    let output = bounded("max_output_tokens", 0, MAX_COMPLETION_TOKENS)?;
    let n = bounded("n", 1, MAX_CHOICES)?.unwrap_or(1);
    let max = completion.or(legacy).or(output).unwrap_or(default);
    Ok(max.saturating_mul(n))
}

/// Spend kept across restarts (and crashes) by a single-process limiter.
pub trait SpendStore: MaybeSendSync {
    /// The saved `(period_start, spent_nanos)` of a key, reservations left
    /// unsettled by a previous process included (charged at their estimate:
    /// the process that held them is gone).
    fn load(&self, key_id: &str) -> Option<(u64, u64)>;
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
    ) -> Option<T> {
        let mut states = self.states.lock().ok()?;
        let state = states.entry(key.id.clone()).or_insert_with(|| {
            let mut s = KeyLimitState::default();
            if let Some((start, spent)) = self.spend.as_ref().and_then(|p| p.load(&key.id)) {
                s.restore_spend(start, spent);
            }
            s
        });
        Some(f(state))
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
                .ok_or_else(|| Rejection {
                    error: GatewayError::Internal("limiter lock poisoned".into()),
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
            });
            if let (Some(store), Some(((start, spent), reserved)), true) = (&self.spend, spend, key.budget.is_some()) {
                store.save(&key.id, start, spent, reserved);
            }
        }

        async fn status(&self, key: &VirtualKey) -> Result<LimitStatus, StoreError> {
            let now = self.clock.now_micros() / 1_000_000;
            self.with_state(key, |s| s.status(now, &key.limits, key.budget.as_ref()))
                .ok_or_else(|| StoreError("limiter lock poisoned".into()))
        }
    }
}
