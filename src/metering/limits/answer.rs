//! Turning the arithmetic into answers: errors and `x-ratelimit-*` headers.

use http::{HeaderMap, HeaderName, HeaderValue};
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

/// Adds OpenAI's `x-ratelimit-*` headers for a status, written straight
/// into header values under names built at compile time (a `&'static str`
/// name is parsed at each insert, about 900 instructions, and a value
/// through a `String` cost an allocation: callgrind, six per answer of a key
/// with limits). The values are written into one buffer and each header
/// holds its slice of it: two allocations for the six, not six.
pub fn add_rate_limit_headers(headers: &mut HeaderMap, status: &LimitStatus) {
    static REQUESTS: [HeaderName; 3] = [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ];
    static TOKENS: [HeaderName; 3] = [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ];
    let groups = [(&REQUESTS, status.requests), (&TOKENS, status.tokens)];
    // Each value's end in the buffer; a u64 is at most 20 digits, 21 with `s`.
    let mut text = Vec::with_capacity(6 * 21);
    let mut ends = [0usize; 6];
    for (i, (_, value)) in groups.iter().enumerate() {
        let Some((limit, remaining, reset)) = value else {
            continue;
        };
        let mut decimal = itoa::Buffer::new();
        text.extend_from_slice(decimal.format(*limit).as_bytes());
        ends[3 * i] = text.len();
        text.extend_from_slice(decimal.format(*remaining).as_bytes());
        ends[3 * i + 1] = text.len();
        // "<seconds>s", without a format string.
        text.extend_from_slice(decimal.format(*reset).as_bytes());
        text.push(b's');
        ends[3 * i + 2] = text.len();
    }
    if text.is_empty() {
        return;
    }
    let text = bytes::Bytes::from(text);
    let mut start = 0;
    for (i, (names, value)) in groups.iter().enumerate() {
        if value.is_none() {
            continue;
        }
        for (name, end) in names.iter().zip(&ends[3 * i..3 * i + 3]) {
            if let Ok(v) = HeaderValue::from_maybe_shared(text.slice(start..*end)) {
                headers.insert(name.clone(), v);
            }
            start = *end;
        }
    }
}

/// The headers written straight are OpenAI's text for each value.
#[cfg(test)]
#[test]
fn rate_limit_headers_are_the_values_as_text() {
    for (requests, tokens) in [
        (None, None),
        (Some((100, 99, 0)), None),
        (Some((u64::MAX, 0, 59)), Some((1_000_000, 12_345, u64::MAX))),
        (None, Some((5, 5, 10))),
    ] {
        let status = LimitStatus {
            requests,
            tokens,
            ..LimitStatus::default()
        };
        let mut expected = HeaderMap::new();
        for (kind, value) in [("requests", requests), ("tokens", tokens)] {
            if let Some((limit, remaining, reset)) = value {
                for (name, text) in [
                    ("limit", limit.to_string()),
                    ("remaining", remaining.to_string()),
                    ("reset", format!("{reset}s")),
                ] {
                    let name = HeaderName::try_from(format!("x-ratelimit-{name}-{kind}")).unwrap();
                    expected.insert(name, HeaderValue::from_str(&text).unwrap());
                }
            }
        }
        let mut straight = HeaderMap::new();
        add_rate_limit_headers(&mut straight, &status);
        assert_eq!(straight, expected, "{status:?}");
    }
}
