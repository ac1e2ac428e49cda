//! Passed-through Messages API streams (Anthropic, Claude on Bedrock):
//! every event is relayed as it came, and read only for what the core
//! meters: the usage of `message_start` and `message_delta` (cumulative:
//! the last value of each field wins), content deltas, and `message_stop`,
//! which completes the answer. An `error` event ends the stream with that
//! error (mapped as Anthropic's HTTP errors are).

use serde_json::Value;

use crate::metering::usage::TokenUsage;
use crate::providers::{NativeEvent, StreamDecoder, StreamEvent};
use crate::wire::error::GatewayError;
use crate::wire::sse::{SseEvent, SseParser};

/// Anthropic's usage counts, kept across the events of a stream.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    input: u64,
    cache_read: u64,
    cache_write: u64,
    output: u64,
}

impl Usage {
    /// Takes every count `u` carries.
    pub fn update(&mut self, u: Option<&Value>) {
        let Some(u) = u else { return };
        let n = |k: &str| u.get(k).and_then(Value::as_u64);
        if let Some(v) = n("input_tokens") {
            self.input = v;
        }
        if let Some(v) = n("cache_read_input_tokens") {
            self.cache_read = v;
        }
        if let Some(v) = n("cache_creation_input_tokens") {
            self.cache_write = v;
        }
        if let Some(v) = n("output_tokens") {
            self.output = v;
        }
    }

    /// In Conduit's terms: every prompt token once, the cache included.
    pub fn tokens(&self) -> TokenUsage {
        let prompt = self.input + self.cache_read + self.cache_write;
        TokenUsage {
            prompt_tokens: prompt,
            completion_tokens: self.output,
            total_tokens: prompt + self.output,
            cached_tokens: self.cache_read,
            cache_write_tokens: self.cache_write,
            reasoning_tokens: 0,
        }
    }
}

/// Reads passed-through Messages events (whatever framed them).
#[derive(Debug, Default)]
pub struct NativeMessages {
    usage: Usage,
    ended: bool,
}

impl NativeMessages {
    pub fn new() -> Self {
        Self::default()
    }

    /// One event's JSON payload (`name` is the SSE event name, if any).
    pub fn event(&mut self, name: Option<&str>, data: &str, out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        let data = data.trim();
        if data.is_empty() {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            self.ended = true;
            out.push(StreamEvent::Error(GatewayError::Upstream(
                "the provider sent an unreadable stream event".into(),
            )));
            return;
        };
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or(name)
            .unwrap_or("")
            .to_owned();
        let mut usage = None;
        let (mut content, mut finish) = (false, false);
        match kind.as_str() {
            "message_start" => {
                self.usage
                    .update(v.get("message").and_then(|m| m.get("usage")));
                usage = Some(self.usage.tokens());
            }
            "message_delta" => {
                self.usage.update(v.get("usage"));
                usage = Some(self.usage.tokens());
            }
            "content_block_delta" => content = true,
            "message_stop" => finish = true,
            "error" => {
                self.ended = true;
                out.push(StreamEvent::Error(stream_error(&v)));
                return;
            }
            _ => {}
        }
        out.push(StreamEvent::Native(NativeEvent {
            event: kind,
            data: data.to_owned(),
            usage,
            content,
            finish,
        }));
        if finish {
            self.ended = true;
            out.push(StreamEvent::Done);
        }
    }
}

/// An `error` event's error, in Conduit's terms (Anthropic's status for its type).
fn stream_error(v: &Value) -> GatewayError {
    let e = v.get("error");
    let s = |k: &str| e.and_then(|e| e.get(k)).and_then(Value::as_str);
    let message = s("message")
        .unwrap_or("the provider reported an error")
        .to_owned();
    let kind = s("type").unwrap_or("api_error").to_owned();
    let status = match kind.as_str() {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "overloaded_error" => 503,
        _ => return GatewayError::Upstream(format!("{kind}: {message}")),
    };
    GatewayError::Provider {
        status: http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY),
        message,
        kind,
        code: None,
        param: None,
        retry_after: None,
    }
}

/// An Anthropic SSE body, passed through.
#[derive(Debug, Default)]
pub struct NativeMessagesSse {
    sse: SseParser,
    events: Vec<SseEvent>,
    inner: NativeMessages,
}

impl NativeMessagesSse {
    pub fn new() -> Self {
        Self::default()
    }

    fn drain(&mut self, out: &mut Vec<StreamEvent>) {
        for ev in self.events.drain(..) {
            self.inner.event(ev.event.as_deref(), &ev.data, out);
        }
    }
}

impl StreamDecoder for NativeMessagesSse {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) {
        self.sse.feed(bytes, &mut self.events);
        self.drain(out);
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        self.sse.finish(&mut self.events);
        self.drain(out);
    }
}
