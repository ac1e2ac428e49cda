//! Usage: what one request consumed, as recorded for monitoring and billing.

use serde_json::{json, Map, Value};

use crate::time::format_rfc3339;

/// Token counts in OpenAI's terms. Cached prompt tokens are a subset of
/// `prompt_tokens`, reasoning tokens a subset of `completion_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
}

impl TokenUsage {
    /// Reads an OpenAI `usage` object (chat, completions or embeddings).
    pub fn from_openai(v: &Value) -> Option<TokenUsage> {
        let o = v.as_object()?;
        let n = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_u64).unwrap_or(0);
        let prompt = n(o, "prompt_tokens");
        let completion = n(o, "completion_tokens");
        let detail = |outer: &str, inner: &str| {
            o.get(outer)
                .and_then(Value::as_object)
                .map(|d| n(d, inner))
                .unwrap_or(0)
        };
        Some(TokenUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: o
                .get("total_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(prompt + completion),
            cached_tokens: detail("prompt_tokens_details", "cached_tokens"),
            reasoning_tokens: detail("completion_tokens_details", "reasoning_tokens"),
        })
    }

    /// OpenAI's `usage` object for these counts.
    pub fn to_openai(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        })
    }
}

/// One request's record. Written once, after the response (or stream) ends.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    pub request_id: String,
    pub key_id: String,
    /// The alias the client asked for.
    pub model: String,
    /// The configured provider that served it (none when refused before routing).
    pub provider: Option<String>,
    /// The provider's own model name.
    pub provider_model: Option<String>,
    /// `/v1/chat/completions`, `/v1/completions` or `/v1/embeddings`.
    pub endpoint: String,
    /// The HTTP status the client got (499 when it went away first).
    pub status: u16,
    pub streamed: bool,
    pub usage: TokenUsage,
    /// From the request's arrival to the last byte sent, in µs.
    pub latency_us: u64,
    /// Time spent waiting on the provider, in µs.
    pub upstream_latency_us: u64,
    /// Unix milliseconds when the request arrived.
    pub created_at_ms: u64,
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

impl UsageRecord {
    /// Gateway time: total minus upstream.
    pub fn overhead_us(&self) -> u64 {
        self.latency_us.saturating_sub(self.upstream_latency_us)
    }

    /// The admin API's JSON view.
    pub fn to_json(&self) -> Value {
        json!({
            "request_id": self.request_id,
            "key_id": self.key_id,
            "model": self.model,
            "provider": self.provider,
            "provider_model": self.provider_model,
            "endpoint": self.endpoint,
            "status": self.status,
            "streamed": self.streamed,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "cached_tokens": self.usage.cached_tokens,
            "reasoning_tokens": self.usage.reasoning_tokens,
            "total_tokens": self.usage.total_tokens,
            "latency_ms": ms(self.latency_us),
            "upstream_latency_ms": ms(self.upstream_latency_us),
            "overhead_ms": ms(self.overhead_us()),
            "created_at": format_rfc3339(self.created_at_ms / 1000),
            "created_at_ms": self.created_at_ms,
        })
    }

    /// Storage form (also used for log lines): the JSON view.
    pub fn from_json(v: &Value) -> Option<UsageRecord> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let us =
            |k: &str| (v.get(k).and_then(Value::as_f64).unwrap_or(0.0) * 1000.0).round() as u64;
        Some(UsageRecord {
            request_id: s("request_id")?,
            key_id: s("key_id")?,
            model: s("model")?,
            provider: s("provider"),
            provider_model: s("provider_model"),
            endpoint: s("endpoint")?,
            status: u16::try_from(n("status")).ok()?,
            streamed: v.get("streamed").and_then(Value::as_bool).unwrap_or(false),
            usage: TokenUsage {
                prompt_tokens: n("prompt_tokens"),
                completion_tokens: n("completion_tokens"),
                total_tokens: n("total_tokens"),
                cached_tokens: n("cached_tokens"),
                reasoning_tokens: n("reasoning_tokens"),
            },
            latency_us: us("latency_ms"),
            upstream_latency_us: us("upstream_latency_ms"),
            created_at_ms: v.get("created_at_ms").and_then(Value::as_u64)?,
        })
    }
}

/// A filter for `GET /admin/usage`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    pub key_id: Option<String>,
    /// Inclusive, Unix ms.
    pub since_ms: Option<u64>,
    /// Exclusive, Unix ms.
    pub until_ms: Option<u64>,
}

impl UsageQuery {
    /// Does `r` pass this filter?
    pub fn matches(&self, r: &UsageRecord) -> bool {
        self.key_id.as_ref().is_none_or(|k| *k == r.key_id)
            && self.since_ms.is_none_or(|s| r.created_at_ms >= s)
            && self.until_ms.is_none_or(|u| r.created_at_ms < u)
    }
}

/// Sums over a set of records.
pub fn totals(records: &[UsageRecord]) -> Value {
    let mut t = TokenUsage::default();
    let mut errors = 0u64;
    for r in records {
        t.prompt_tokens += r.usage.prompt_tokens;
        t.completion_tokens += r.usage.completion_tokens;
        t.total_tokens += r.usage.total_tokens;
        t.cached_tokens += r.usage.cached_tokens;
        t.reasoning_tokens += r.usage.reasoning_tokens;
        if r.status >= 400 {
            errors += 1;
        }
    }
    json!({
        "requests": records.len(),
        "errors": errors,
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.completion_tokens,
        "cached_tokens": t.cached_tokens,
        "reasoning_tokens": t.reasoning_tokens,
        "total_tokens": t.total_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openai_usage() {
        let u = TokenUsage::from_openai(&json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}))
        .unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (10, 5, 15, 4, 2)
        );
        assert!(TokenUsage::from_openai(&Value::Null).is_none());
        let e = TokenUsage::from_openai(&json!({"prompt_tokens": 8, "total_tokens": 8})).unwrap();
        assert_eq!(e.completion_tokens, 0);
    }

    #[test]
    fn record_round_trip() {
        let r = UsageRecord {
            request_id: "req_1".into(),
            key_id: "key_1".into(),
            model: "m".into(),
            provider: Some("p".into()),
            provider_model: None,
            endpoint: "/v1/chat/completions".into(),
            status: 200,
            streamed: true,
            usage: TokenUsage {
                prompt_tokens: 1,
                completion_tokens: 2,
                total_tokens: 3,
                cached_tokens: 0,
                reasoning_tokens: 0,
            },
            latency_us: 12_345,
            upstream_latency_us: 12_000,
            created_at_ms: 1_700_000_000_123,
        };
        assert_eq!(UsageRecord::from_json(&r.to_json()).unwrap(), r);
        assert_eq!(r.to_json()["overhead_ms"], 0.345);
    }
}
