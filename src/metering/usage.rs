//! Usage: what one request consumed, as recorded for monitoring and billing.

use serde_json::{json, Map, Value};

use crate::observe::AttemptFailure;
use crate::wire::time::format_rfc3339;

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

impl FailedAttempt {
    fn to_json(&self) -> Value {
        json!({
            "alias": self.alias,
            "provider": self.provider,
            "model": self.model,
            "status": self.status,
            "code": self.code,
            "kind": self.kind.as_str(),
        })
    }

    fn from_json(v: &Value) -> Option<FailedAttempt> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(FailedAttempt {
            alias: s("alias").unwrap_or_default(),
            provider: s("provider")?,
            model: s("model").unwrap_or_default(),
            status: u16::try_from(v.get("status").and_then(Value::as_u64)?).ok()?,
            code: s("code"),
            kind: v
                .get("kind")
                .and_then(Value::as_str)
                .and_then(AttemptFailure::parse)
                .unwrap_or_default(),
        })
    }
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
            "cache_write_tokens": self.usage.cache_write_tokens,
            "estimated_prompt_tokens": self.estimated_prompt_tokens,
            "estimated_completion_tokens": self.estimated_completion_tokens,
            "estimated_tokens": self.estimated_prompt_tokens.saturating_add(self.estimated_completion_tokens),
            "cost_nano_usd": self.cost_nanos,
            "cost_usd": self.cost_nanos.map(crate::metering::pricing::usd),
            "price_known": self.cost_nanos.is_some(),
            "refused_by": self.refused_by,
            "latency_ms": ms(self.latency_us),
            "upstream_latency_ms": ms(self.upstream_latency_us),
            "overhead_ms": ms(self.overhead_us()),
            "created_at": format_rfc3339(self.created_at_ms / 1000),
            "created_at_ms": self.created_at_ms,
            "deployment": self.provider.as_ref().zip(self.provider_model.as_ref()).map(|(p, m)| format!("{p}/{m}")),
            "served_alias": self.served_alias,
            "attempts": self.attempts,
            "failed_attempts": self.failed_attempts.iter().map(FailedAttempt::to_json).collect::<Vec<_>>(),
            "trace_id": self.trace_id,
            "traceparent": self.traceparent,
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
                cache_write_tokens: n("cache_write_tokens"),
                reasoning_tokens: n("reasoning_tokens"),
            },
            estimated_prompt_tokens: n("estimated_prompt_tokens"),
            estimated_completion_tokens: n("estimated_completion_tokens"),
            cost_nanos: v.get("cost_nano_usd").and_then(Value::as_u64),
            refused_by: s("refused_by"),
            latency_us: us("latency_ms"),
            upstream_latency_us: us("upstream_latency_ms"),
            created_at_ms: v.get("created_at_ms").and_then(Value::as_u64)?,
            attempts: u32::try_from(n("attempts")).unwrap_or(u32::MAX),
            failed_attempts: v
                .get("failed_attempts")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(FailedAttempt::from_json).collect())
                .unwrap_or_default(),
            served_alias: s("served_alias"),
            trace_id: s("trace_id"),
            traceparent: s("traceparent"),
        })
    }

    /// Appends [`to_json`](Self::to_json)'s text to `out`, byte for byte,
    /// without building the tree: the store writes every record this way,
    /// into one buffer reused across a batch. Written by hand: through
    /// serde's derived `Serialize` (every key escaped at run time, the date
    /// formatted into a `String`) it took 15,700 instructions a record,
    /// 10 % of a chat request's (callgrind); `tests::written_json_is_the_views_text`
    /// holds the two to the same bytes.
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let u = &self.usage;
        let mut o = JsonWriter::open(out);
        o.str("request_id", &self.request_id)?;
        o.str("key_id", &self.key_id)?;
        o.str("model", &self.model)?;
        o.opt_str("provider", self.provider.as_deref())?;
        o.opt_str("provider_model", self.provider_model.as_deref())?;
        o.str("endpoint", &self.endpoint)?;
        o.uint("status", self.status.into());
        o.bool("streamed", self.streamed);
        o.uint("prompt_tokens", u.prompt_tokens);
        o.uint("completion_tokens", u.completion_tokens);
        o.uint("cached_tokens", u.cached_tokens);
        o.uint("reasoning_tokens", u.reasoning_tokens);
        o.uint("total_tokens", u.total_tokens);
        o.uint("cache_write_tokens", u.cache_write_tokens);
        o.uint("estimated_prompt_tokens", self.estimated_prompt_tokens);
        o.uint(
            "estimated_completion_tokens",
            self.estimated_completion_tokens,
        );
        o.uint(
            "estimated_tokens",
            self.estimated_prompt_tokens
                .saturating_add(self.estimated_completion_tokens),
        );
        match self.cost_nanos {
            Some(nanos) => {
                o.uint("cost_nano_usd", nanos);
                o.float("cost_usd", crate::metering::pricing::usd(nanos))?;
            }
            None => {
                o.null("cost_nano_usd");
                o.null("cost_usd");
            }
        }
        o.bool("price_known", self.cost_nanos.is_some());
        o.opt_str("refused_by", self.refused_by.as_deref())?;
        o.float("latency_ms", ms(self.latency_us))?;
        o.float("upstream_latency_ms", ms(self.upstream_latency_us))?;
        o.float("overhead_ms", ms(self.overhead_us()))?;
        o.key("created_at");
        write_rfc3339(o.out, self.created_at_ms / 1000);
        o.uint("created_at_ms", self.created_at_ms);
        o.key("deployment");
        match (&self.provider, &self.provider_model) {
            (Some(p), Some(m)) if is_plain(p) && is_plain(m) => {
                o.out.push(b'"');
                o.out.extend_from_slice(p.as_bytes());
                o.out.push(b'/');
                o.out.extend_from_slice(m.as_bytes());
                o.out.push(b'"');
            }
            (Some(p), Some(m)) => write_json_str(o.out, &format!("{p}/{m}"))?,
            _ => o.out.extend_from_slice(b"null"),
        }
        o.opt_str("served_alias", self.served_alias.as_deref())?;
        o.uint("attempts", self.attempts.into());
        o.key("failed_attempts");
        o.out.push(b'[');
        for (i, f) in self.failed_attempts.iter().enumerate() {
            if i > 0 {
                o.out.push(b',');
            }
            let mut a = JsonWriter::open(o.out);
            a.str("alias", &f.alias)?;
            a.str("provider", &f.provider)?;
            a.str("model", &f.model)?;
            a.uint("status", f.status.into());
            a.opt_str("code", f.code.as_deref())?;
            a.str("kind", f.kind.as_str())?;
            a.close();
        }
        o.out.push(b']');
        o.opt_str("trace_id", self.trace_id.as_deref())?;
        o.opt_str("traceparent", self.traceparent.as_deref())?;
        o.close();
        Ok(())
    }
}

/// A JSON object written field by field into a buffer, as `serde_json`
/// prints it (compact; keys are the caller's literals, never escaped).
struct JsonWriter<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> JsonWriter<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        JsonWriter { out, first: true }
    }

    fn key(&mut self, name: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, name: &str, value: &str) -> Result<(), serde_json::Error> {
        self.key(name);
        write_json_str(self.out, value)
    }

    fn opt_str(&mut self, name: &str, value: Option<&str>) -> Result<(), serde_json::Error> {
        match value {
            Some(v) => self.str(name, v),
            None => {
                self.null(name);
                Ok(())
            }
        }
    }

    fn uint(&mut self, name: &str, value: u64) {
        self.key(name);
        write_uint(self.out, value, 1);
    }

    fn float(&mut self, name: &str, value: f64) -> Result<(), serde_json::Error> {
        self.key(name);
        // serde_json's own float printing (shortest round trip, `null` when not finite).
        serde_json::to_writer(&mut *self.out, &value)
    }

    fn bool(&mut self, name: &str, value: bool) {
        self.key(name);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn null(&mut self, name: &str) {
        self.key(name);
        self.out.extend_from_slice(b"null");
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// Whether `s` is its own JSON string's content (nothing to escape),
/// eight bytes at a time: a record's strings (ids, names, the trace) are
/// ~200 bytes, a byte at a time a sixth of its JSON's instructions.
fn is_plain(s: &str) -> bool {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    let mut words = s.as_bytes().chunks_exact(8);
    for word in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let x = u64::from_le_bytes(eight);
        // A byte that is zero (after the XOR) or below 0x20 sets its high
        // bit; a borrow only carries above a byte that does, so any flag
        // means some byte is special.
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        let quote = zero(x ^ (ONES * u64::from(b'"')));
        let backslash = zero(x ^ (ONES * u64::from(b'\\')));
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        if quote | backslash | control != 0 {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// Eight bytes at a time, [`is_plain`] says what a byte at a time says.
#[cfg(test)]
#[test]
fn is_plain_is_the_bytewise_rule() {
    let bytewise = |s: &str| s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    let mut cases: Vec<String> = vec![String::new(), "req_01HZX".into(), "é€😀 ok".into()];
    for special in ['"', '\\', '\n', '\u{1f}', '\0', ' ', '~', '\u{7f}', 'é'] {
        for len in 0..20 {
            for at in 0..len {
                let mut text: Vec<char> = "abcdefghijklmnopqrstuvwxyz".chars().take(len).collect();
                text[at] = special;
                cases.push(text.into_iter().collect());
            }
        }
    }
    for case in cases {
        assert_eq!(is_plain(&case), bytewise(&case), "{case:?}");
    }
}

/// A JSON string: the bytes as they are when nothing needs escaping (ids,
/// names), else `serde_json`'s escaping.
fn write_json_str(out: &mut Vec<u8>, s: &str) -> Result<(), serde_json::Error> {
    if is_plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
}

/// `n` in decimal, zero-padded to `width` digits.
fn write_uint(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut decimal = itoa::Buffer::new();
    let digits = decimal.format(n).as_bytes();
    for _ in digits.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(digits);
}

/// [`format_rfc3339`] as a JSON string, without a `String` in between.
fn write_rfc3339(out: &mut Vec<u8>, secs: u64) {
    let (y, m, d) = crate::wire::time::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    out.push(b'"');
    write_uint(out, y.max(0) as u64, 4);
    out.push(b'-');
    write_uint(out, m.into(), 2);
    out.push(b'-');
    write_uint(out, d.into(), 2);
    out.push(b'T');
    write_uint(out, rem / 3600, 2);
    out.push(b':');
    write_uint(out, (rem / 60) % 60, 2);
    out.push(b':');
    write_uint(out, rem % 60, 2);
    out.extend_from_slice(b"Z\"");
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
mod tests {
    use super::*;

    /// The store's direct serialisation is the admin view's text, byte for
    /// byte, with every optional field set and unset.
    #[test]
    fn written_json_is_the_views_text() {
        let full = UsageRecord {
            request_id: "req_\"1".into(),
            key_id: "key_1".into(),
            model: "chat".into(),
            provider: Some("openai".into()),
            provider_model: Some("gpt-4o-mini".into()),
            endpoint: "/v1/chat/completions".into(),
            status: 200,
            streamed: true,
            usage: TokenUsage {
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
                cached_tokens: 3,
                cache_write_tokens: 2,
                reasoning_tokens: 1,
            },
            estimated_prompt_tokens: 12,
            estimated_completion_tokens: u64::MAX,
            cost_nanos: Some(123_456_789),
            refused_by: Some("tpm".into()),
            latency_us: 1_234_567,
            upstream_latency_us: 1_000_001,
            created_at_ms: 1_767_225_600_123,
            attempts: 2,
            failed_attempts: vec![FailedAttempt {
                alias: "chat".into(),
                provider: "anthropic".into(),
                model: "claude".into(),
                status: 529,
                code: Some("overloaded".into()),
                kind: AttemptFailure::default(),
            }],
            served_alias: Some("fallback".into()),
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        let bare = UsageRecord {
            key_id: "k".into(),
            ..UsageRecord::default()
        };
        // Strings to escape (quotes, backslashes, control characters,
        // non-ASCII), a deployment among them, a date past 9999.
        let escaped = UsageRecord {
            request_id: "req_\"1\"".into(),
            key_id: "k\\1".into(),
            model: "m\n\u{1}é✓".into(),
            provider: Some("p\"".into()),
            provider_model: Some("x/\t".into()),
            cost_nanos: Some(0),
            created_at_ms: 253_402_300_800_000,
            failed_attempts: vec![FailedAttempt {
                alias: "a\u{1f}".into(),
                provider: "p".into(),
                model: "m".into(),
                status: 0,
                code: None,
                kind: AttemptFailure::Timeout,
            }],
            ..UsageRecord::default()
        };
        for r in [full, bare, escaped] {
            let mut out = b"prefix".to_vec();
            r.write_json(&mut out).unwrap();
            assert_eq!(
                std::str::from_utf8(&out[6..]).unwrap(),
                r.to_json().to_string()
            );
        }
    }

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

    /// Found by fuzzing (`response_openai`): counts whose sum passes 2^64
    /// overflowed (a panic in debug builds), even with `total_tokens` given.
    #[test]
    fn huge_counts_saturate() {
        let max = u64::MAX;
        let u = TokenUsage::from_openai(&json!({"prompt_tokens": max, "completion_tokens": 1}))
            .unwrap();
        assert_eq!(u.total_tokens, max);
        let u = TokenUsage::from_openai(
            &json!({"prompt_tokens": max, "completion_tokens": max, "total_tokens": 7}),
        )
        .unwrap();
        assert_eq!(u.total_tokens, 7);
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
                ..Default::default()
            },
            estimated_prompt_tokens: 5,
            estimated_completion_tokens: 7,
            cost_nanos: Some(1234),
            refused_by: None,
            latency_us: 12_345,
            upstream_latency_us: 12_000,
            created_at_ms: 1_700_000_000_123,
            attempts: 2,
            failed_attempts: vec![FailedAttempt {
                alias: "m".into(),
                provider: "q".into(),
                model: "x".into(),
                status: 503,
                code: Some("upstream_error".into()),
                kind: AttemptFailure::Status5xx,
            }],
            served_alias: Some("m-backup".into()),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        };
        assert_eq!(UsageRecord::from_json(&r.to_json()).unwrap(), r);
        assert_eq!(r.to_json()["overhead_ms"], 0.345);
    }
}
