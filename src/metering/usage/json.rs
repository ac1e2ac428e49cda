//! A usage record's JSON: the admin API's view (`to_json`, and
//! `write_json`, its text written straight), the stored form
//! (`write_stored_json`) and the reader of both (`from_json`).

use serde_json::{json, Value};

use super::{FailedAttempt, TokenUsage, UsageRecord};
use crate::observe::AttemptFailure;
use crate::wire::time::format_rfc3339;

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
        self.write_form::<false>(out)
    }

    /// A record as a store keeps it: [`to_json`](Self::to_json)'s fields
    /// less those derived from others (`estimated_tokens`, `cost_usd`,
    /// `price_known`, `overhead_ms`, `created_at`, `deployment`) and those
    /// at their default (`null`, a zero count, `false`, no failed attempt),
    /// which [`from_json`](Self::from_json) reads back as they were. The
    /// ids, `model`, `endpoint`, `status` and `created_at_ms` are always
    /// there (a store's filters read `model` and `status` in the text).
    /// A third fewer bytes than the view (a chat request's record: 548
    /// against 835), so fewer pages for a store to write and read, and no
    /// date or cost to format: with it the SQLite store's writer spends
    /// about 4,500 fewer instructions a record (callgrind).
    pub fn write_stored_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        self.write_form::<true>(out)
    }

    /// Both forms, in the view's order: `STORED` leaves out the derived
    /// fields here and, through [`JsonWriter`], the fields at their default.
    fn write_form<const STORED: bool>(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let u = &self.usage;
        let mut o = JsonWriter::<STORED>::open(out);
        o.str("request_id", &self.request_id)?;
        o.str("key_id", &self.key_id)?;
        o.str("model", &self.model)?;
        o.opt_str("provider", self.provider.as_deref())?;
        o.opt_str("provider_model", self.provider_model.as_deref())?;
        o.str("endpoint", &self.endpoint)?;
        o.uint("status", self.status.into());
        o.flag("streamed", self.streamed);
        o.count("prompt_tokens", u.prompt_tokens);
        o.count("completion_tokens", u.completion_tokens);
        o.count("cached_tokens", u.cached_tokens);
        o.count("reasoning_tokens", u.reasoning_tokens);
        o.count("total_tokens", u.total_tokens);
        o.count("cache_write_tokens", u.cache_write_tokens);
        o.count("estimated_prompt_tokens", self.estimated_prompt_tokens);
        o.count(
            "estimated_completion_tokens",
            self.estimated_completion_tokens,
        );
        if !STORED {
            o.uint(
                "estimated_tokens",
                self.estimated_prompt_tokens
                    .saturating_add(self.estimated_completion_tokens),
            );
        }
        o.opt_uint("cost_nano_usd", self.cost_nanos);
        if !STORED {
            match self.cost_nanos {
                Some(nanos) => o.float("cost_usd", crate::metering::pricing::usd(nanos))?,
                None => o.null("cost_usd"),
            }
            o.bool("price_known", self.cost_nanos.is_some());
        }
        o.opt_str("refused_by", self.refused_by.as_deref())?;
        o.ms("latency_ms", self.latency_us)?;
        o.ms("upstream_latency_ms", self.upstream_latency_us)?;
        if !STORED {
            o.float("overhead_ms", ms(self.overhead_us()))?;
            o.key("created_at");
            write_rfc3339(o.out, self.created_at_ms / 1000);
        }
        o.uint("created_at_ms", self.created_at_ms);
        if !STORED {
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
        }
        o.opt_str("served_alias", self.served_alias.as_deref())?;
        o.count("attempts", self.attempts.into());
        if !STORED || !self.failed_attempts.is_empty() {
            o.key("failed_attempts");
            write_failed_attempts(o.out, &self.failed_attempts)?;
        }
        o.opt_str("trace_id", self.trace_id.as_deref())?;
        o.opt_str("traceparent", self.traceparent.as_deref())?;
        o.close();
        Ok(())
    }
}

/// The `failed_attempts` array, as [`FailedAttempt::to_json`] gives each.
fn write_failed_attempts(
    out: &mut Vec<u8>,
    attempts: &[FailedAttempt],
) -> Result<(), serde_json::Error> {
    out.push(b'[');
    for (i, f) in attempts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut a = JsonWriter::<false>::open(out);
        a.str("alias", &f.alias)?;
        a.str("provider", &f.provider)?;
        a.str("model", &f.model)?;
        a.uint("status", f.status.into());
        a.opt_str("code", f.code.as_deref())?;
        a.str("kind", f.kind.as_str())?;
        a.close();
    }
    out.push(b']');
    Ok(())
}

/// A JSON object written field by field into a buffer, as `serde_json`
/// prints it (compact; keys are the caller's literals, never escaped).
/// `SPARSE` leaves out what the `opt_`, `count`, `flag` and `ms` fields
/// hold at their default (`None`, zero, `false`), as the stored form does.
struct JsonWriter<'a, const SPARSE: bool> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a, const SPARSE: bool> JsonWriter<'a, SPARSE> {
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
            None if SPARSE => Ok(()),
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

    fn opt_uint(&mut self, name: &str, value: Option<u64>) {
        match value {
            Some(v) => self.uint(name, v),
            None if SPARSE => {}
            None => self.null(name),
        }
    }

    fn count(&mut self, name: &str, value: u64) {
        if !SPARSE || value != 0 {
            self.uint(name, value);
        }
    }

    fn float(&mut self, name: &str, value: f64) -> Result<(), serde_json::Error> {
        self.key(name);
        // serde_json's own float printing (shortest round trip, `null` when not finite).
        serde_json::to_writer(&mut *self.out, &value)
    }

    /// Microseconds as milliseconds.
    fn ms(&mut self, name: &str, us: u64) -> Result<(), serde_json::Error> {
        if !SPARSE || us != 0 {
            self.float(name, ms(us))?;
        }
        Ok(())
    }

    fn bool(&mut self, name: &str, value: bool) {
        self.key(name);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn flag(&mut self, name: &str, value: bool) {
        if !SPARSE || value {
            self.bool(name, value);
        }
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
