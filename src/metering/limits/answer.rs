//! Turning the arithmetic into answers: errors and `x-ratelimit-*` headers.

use serde_json::Value;

use super::state::{LimitStatus, Refusal};
use crate::keys::{Budget, BudgetPeriod};
use crate::metering::pricing::usd;
use crate::wire::error::GatewayError;

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
