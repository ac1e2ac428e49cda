//! Usage: what one request consumed, as recorded for monitoring and billing.
//!
//! Files: `mod.rs` (the record, token counts, the admin API's queries and
//! totals), `json.rs` (the record's JSON: the view, the stored form, the
//! reader), `tests.rs`.

use serde_json::{json, Map, Value};

use crate::observe::AttemptFailure;

mod json;

/// Token counts in OpenAI's terms. Cached prompt tokens are a subset of
/// `prompt_tokens`, reasoning tokens a subset of `completion_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    /// Prompt tokens written to a provider cache (Anthropic), a subset of `prompt_tokens`.
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

impl TokenUsage {
    /// Reads an OpenAI `usage` object (chat, completions or embeddings), or
    /// the `usage` of the front doors' answers: a Responses API `response`
    /// and an Anthropic `message` (see [`TokenUsage::from_input_output`]).
    pub fn from_openai(v: &Value) -> Option<TokenUsage> {
        let o = v.as_object()?;
        if !o.contains_key("prompt_tokens") && o.contains_key("input_tokens") {
            return Some(Self::from_input_output(o));
        }
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
                // Saturating: a provider's counts are outside input (fuzz/regressions).
                .unwrap_or(prompt.saturating_add(completion)),
            cached_tokens: detail("prompt_tokens_details", "cached_tokens"),
            // Conduit's extension for providers that bill cache writes (Anthropic).
            cache_write_tokens: detail("prompt_tokens_details", "cache_write_tokens"),
            reasoning_tokens: detail("completion_tokens_details", "reasoning_tokens"),
        })
    }

    /// `input_tokens`/`output_tokens` usage: OpenAI's Responses API (cached
    /// tokens inside `input_tokens`, in `input_tokens_details`) and
    /// Anthropic's Messages API (cache reads and writes outside
    /// `input_tokens`, in `cache_read_input_tokens` and
    /// `cache_creation_input_tokens`). Each prompt token is counted once.
    pub fn from_input_output(o: &Map<String, Value>) -> TokenUsage {
        let n = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_u64).unwrap_or(0);
        let detail = |outer: &str, inner: &str| {
            o.get(outer)
                .and_then(Value::as_object)
                .map(|d| n(d, inner))
                .unwrap_or(0)
        };
        let cache_read = n(o, "cache_read_input_tokens");
        let cache_write = n(o, "cache_creation_input_tokens");
        let prompt = n(o, "input_tokens") + cache_read + cache_write;
        let completion = n(o, "output_tokens");
        TokenUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            cached_tokens: cache_read.max(detail("input_tokens_details", "cached_tokens")),
            cache_write_tokens: cache_write
                .max(detail("input_tokens_details", "cache_write_tokens")),
            reasoning_tokens: detail("output_tokens_details", "reasoning_tokens"),
        }
    }

    /// OpenAI's `usage` object for these counts.
    pub fn to_openai(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "cache_write_tokens": self.cache_write_tokens},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        })
    }
}

/// One request's record. Written once, after the response (or stream) ends.
#[derive(Debug, Clone, PartialEq, Default)]
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
    /// Admission's estimate: prompt tokens (approximated) and the completion allowance.
    pub estimated_prompt_tokens: u64,
    pub estimated_completion_tokens: u64,
    /// Cost in nano-USD; `None` when the deployment has no price.
    pub cost_nanos: Option<u64>,
    /// The limit that refused the request (`rpm`, `rpd`, `tpm`, `budget`).
    pub refused_by: Option<String>,
    /// From the request's arrival to the last byte sent, in µs.
    pub latency_us: u64,
    /// Time spent waiting on the provider, in µs.
    pub upstream_latency_us: u64,
    /// Unix milliseconds when the request arrived.
    pub created_at_ms: u64,
    /// Upstream attempts made (0 when refused before routing).
    pub attempts: u32,
    /// Every attempt that failed, in order.
    pub failed_attempts: Vec<FailedAttempt>,
    /// The alias whose deployment answered, when it is a fallback of `model`.
    pub served_alias: Option<String>,
    /// The W3C trace id (32 hex digits): the client's `traceparent`'s, or a new one.
    pub trace_id: Option<String>,
    /// The `traceparent` sent to the provider (Conduit's span as the parent).
    pub traceparent: Option<String>,
}

/// One failed upstream attempt of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    /// The alias the deployment belongs to (the asked one or a fallback).
    pub alias: String,
    pub provider: String,
    pub model: String,
    /// The provider's HTTP status, else the one the failure maps to (502, 504).
    pub status: u16,
    /// The error code (the provider's, or `upstream_error`, `upstream_timeout`).
    pub code: Option<String>,
    /// `timeout`, `connect`, `5xx`, `429`, `4xx` or `broken`.
    pub kind: AttemptFailure,
}

impl UsageRecord {
    /// Gateway time: total minus upstream.
    pub fn overhead_us(&self) -> u64 {
        self.latency_us.saturating_sub(self.upstream_latency_us)
    }
}

/// Which outcomes `GET /admin/usage?status=` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusFilter {
    /// Answered below 400.
    Ok,
    /// 400 and above, refusals by a limit excluded.
    Error,
    /// Refused by a rate limit or the budget.
    Refused,
    /// Exactly this HTTP status.
    Code(u16),
}

impl StatusFilter {
    pub fn parse(s: &str) -> Option<StatusFilter> {
        match s {
            "ok" => Some(StatusFilter::Ok),
            "error" => Some(StatusFilter::Error),
            "refused" => Some(StatusFilter::Refused),
            _ => s
                .parse::<u16>()
                .ok()
                .filter(|c| (100..600).contains(c))
                .map(StatusFilter::Code),
        }
    }

    pub fn matches(&self, r: &UsageRecord) -> bool {
        match self {
            StatusFilter::Ok => r.status < 400,
            StatusFilter::Error => r.status >= 400 && r.refused_by.is_none(),
            StatusFilter::Refused => r.refused_by.is_some(),
            StatusFilter::Code(c) => r.status == *c,
        }
    }
}

/// Records per page of `GET /admin/usage`, by default and at most.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// A filter and a page for `GET /admin/usage`: records newest first
/// (by arrival time, then request id), at most `limit`, strictly older
/// than `before`. (Serialized for the Workers' Durable Objects.)
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UsageQuery {
    pub key_id: Option<String>,
    /// The model alias.
    pub model: Option<String>,
    pub status: Option<StatusFilter>,
    /// Inclusive, Unix ms.
    pub since_ms: Option<u64>,
    /// Exclusive, Unix ms.
    pub until_ms: Option<u64>,
    /// Page size.
    pub limit: usize,
    /// The position after which this page starts: `(created_at_ms, request_id)`
    /// of the last record of the previous page.
    pub before: Option<(u64, String)>,
}

impl Default for UsageQuery {
    fn default() -> Self {
        UsageQuery {
            key_id: None,
            model: None,
            status: None,
            since_ms: None,
            until_ms: None,
            limit: DEFAULT_PAGE,
            before: None,
        }
    }
}

impl UsageQuery {
    /// Does `r` pass this filter (the page position included)?
    pub fn matches(&self, r: &UsageRecord) -> bool {
        self.key_id.as_ref().is_none_or(|k| *k == r.key_id)
            && self.model.as_ref().is_none_or(|m| *m == r.model)
            && self.status.is_none_or(|s| s.matches(r))
            && self.since_ms.is_none_or(|s| r.created_at_ms >= s)
            && self.until_ms.is_none_or(|u| r.created_at_ms < u)
            && self.before.as_ref().is_none_or(|(ms, id)| {
                (r.created_at_ms, r.request_id.as_str()) < (*ms, id.as_str())
            })
    }

    /// The sort key, newest first: `(created_at_ms, request_id)`, descending.
    pub fn order(a: &UsageRecord, b: &UsageRecord) -> std::cmp::Ordering {
        (b.created_at_ms, &b.request_id).cmp(&(a.created_at_ms, &a.request_id))
    }

    /// Sorts `records` newest first and keeps the page.
    pub fn page(&self, mut records: Vec<UsageRecord>) -> Vec<UsageRecord> {
        records.retain(|r| self.matches(r));
        records.sort_by(Self::order);
        records.truncate(self.limit);
        records
    }
}

/// The opaque `cursor` of `GET /admin/usage`: the page position, base64url.
pub fn encode_cursor(r: &UsageRecord) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}#{}", r.created_at_ms, r.request_id))
}

/// Reads [`encode_cursor`]'s form back.
pub fn decode_cursor(s: &str) -> Option<(u64, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (ms, id) = text.split_once('#')?;
    Some((ms.parse().ok()?, id.to_owned()))
}

#[derive(Default)]
struct Sum {
    requests: u64,
    errors: u64,
    refused: u64,
    tokens: TokenUsage,
    cost_nanos: u64,
    unpriced_requests: u64,
}

impl Sum {
    fn add(&mut self, r: &UsageRecord) {
        self.requests += 1;
        self.errors += u64::from(r.status >= 400);
        self.refused += u64::from(r.refused_by.is_some());
        self.tokens.prompt_tokens += r.usage.prompt_tokens;
        self.tokens.completion_tokens += r.usage.completion_tokens;
        self.tokens.total_tokens += r.usage.total_tokens;
        self.tokens.cached_tokens += r.usage.cached_tokens;
        self.tokens.cache_write_tokens += r.usage.cache_write_tokens;
        self.tokens.reasoning_tokens += r.usage.reasoning_tokens;
        match r.cost_nanos {
            Some(c) => self.cost_nanos += c,
            None => self.unpriced_requests += u64::from(r.usage.total_tokens > 0),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "refused": self.refused,
            "prompt_tokens": self.tokens.prompt_tokens,
            "completion_tokens": self.tokens.completion_tokens,
            "cached_tokens": self.tokens.cached_tokens,
            "cache_write_tokens": self.tokens.cache_write_tokens,
            "reasoning_tokens": self.tokens.reasoning_tokens,
            "total_tokens": self.tokens.total_tokens,
            "cost_nano_usd": self.cost_nanos,
            "cost_usd": crate::metering::pricing::usd(self.cost_nanos),
            "unpriced_requests": self.unpriced_requests,
        })
    }
}

/// Sums over a set of records: overall, by key and by model alias.
pub fn totals(records: &[UsageRecord]) -> Value {
    let mut all = Sum::default();
    let mut by_key: std::collections::BTreeMap<&str, Sum> = Default::default();
    let mut by_model: std::collections::BTreeMap<&str, Sum> = Default::default();
    for r in records {
        all.add(r);
        by_key.entry(&r.key_id).or_default().add(r);
        by_model.entry(&r.model).or_default().add(r);
    }
    let mut v = all.to_json();
    let group = |m: std::collections::BTreeMap<&str, Sum>| {
        Value::Object(
            m.into_iter()
                .map(|(k, s)| (k.to_owned(), s.to_json()))
                .collect(),
        )
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("by_key".into(), group(by_key));
        o.insert("by_model".into(), group(by_model));
    }
    v
}

#[cfg(test)]
mod tests;
