//! Chat chunks as Anthropic's stream events, and passed-through events as
//! they are.
//!
//! `message_start` (with the first chunk), then per content block
//! `content_block_start`, its `content_block_delta`s (`text_delta`,
//! `input_json_delta`) and `content_block_stop`; a `ping` after the first
//! block starts, as Anthropic sends; at the end `message_delta` (stop reason
//! and usage, input tokens included: the chat form reports them last) and
//! `message_stop`. A failure after the first byte is an `error` event. While
//! the provider is silent, a `ping` every [`PING_EVERY`] (at most a fifth of
//! the idle timeout), passed-through streams included, as Anthropic does.

use std::time::Duration;

use bytes::BytesMut;
use serde_json::{json, Map, Value};

use super::errors;
use super::response::{message_id, stop_reason, usage};
use crate::frontdoors::{write_event, write_json_event, write_json_str, StreamEncoder};
use crate::metering::usage::TokenUsage;
use crate::providers::NativeEvent;
use crate::wire::error::GatewayError;

/// The longest silence before a `ping`.
pub const PING_EVERY: Duration = Duration::from_secs(5);

const PING: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";

/// What the open content block is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    None,
    Text,
    /// A tool call, by its chat `index`.
    Tool(u64),
}

pub struct MessagesEncoder {
    alias: Value,
    request_id: String,
    started: bool,
    /// Blocks started so far (the next block's `index`).
    blocks: u64,
    open: Open,
    /// Anthropic block index of each chat tool-call index, in order of appearance.
    tools: Vec<(u64, u64)>,
    finish: Option<String>,
    pinged: bool,
    /// Events of a passed-through stream were relayed: the provider ends it.
    native: bool,
}

impl MessagesEncoder {
    pub fn new(alias: Value, request_id: &str) -> Self {
        MessagesEncoder {
            alias,
            request_id: request_id.to_owned(),
            started: false,
            blocks: 0,
            open: Open::None,
            tools: Vec::new(),
            finish: None,
            pinged: false,
            native: false,
        }
    }

    fn start(&mut self, chunk_id: Option<&str>, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        write_json_event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": message_id(chunk_id, &self.request_id),
                "type": "message", "role": "assistant", "model": self.alias,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if self.open == Open::None {
            return;
        }
        let index = self.blocks - 1;
        write_json_event(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
        self.open = Open::None;
    }

    fn open_block(&mut self, open: Open, block: Value, out: &mut BytesMut) -> u64 {
        self.close_block(out);
        let index = self.blocks;
        self.blocks += 1;
        self.open = open;
        write_json_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        if !self.pinged {
            self.pinged = true;
            out.extend_from_slice(PING);
        }
        index
    }

    /// A `content_block_delta` (the hot event: written directly).
    fn delta(out: &mut BytesMut, index: u64, kind: &str, field: &str, value: &str) {
        out.extend_from_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
        );
        out.extend_from_slice(index.to_string().as_bytes());
        out.extend_from_slice(b",\"delta\":{\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"");
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":");
        write_json_str(out, value);
        out.extend_from_slice(b"}}\n\n");
    }

    fn text(&mut self, text: &str, out: &mut BytesMut) {
        if text.is_empty() {
            return;
        }
        let index = if self.open == Open::Text {
            self.blocks - 1
        } else {
            self.open_block(Open::Text, json!({"type": "text", "text": ""}), out)
        };
        Self::delta(out, index, "text_delta", "text", text);
    }

    fn tool_call(&mut self, tc: &Value, out: &mut BytesMut) {
        let chat_index = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = tc.get("function");
        let known = self
            .tools
            .iter()
            .find(|(c, _)| *c == chat_index)
            .map(|t| t.1);
        let index = match known {
            Some(i) => i,
            None => {
                let id = tc.get("id").and_then(Value::as_str).unwrap_or("");
                let name = f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let i = self.open_block(
                    Open::Tool(chat_index),
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    out,
                );
                self.tools.push((chat_index, i));
                i
            }
        };
        if let Some(args) = f
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            Self::delta(out, index, "input_json_delta", "partial_json", args);
        }
    }
}

impl StreamEncoder for MessagesEncoder {
    fn chunk(&mut self, chunk: &Map<String, Value>, out: &mut BytesMut) {
        self.start(chunk.get("id").and_then(Value::as_str), out);
        for choice in chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(delta) = choice.get("delta") {
                for key in ["content", "refusal"] {
                    if let Some(t) = delta.get(key).and_then(Value::as_str) {
                        self.text(t, out);
                    }
                }
                for tc in delta
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    self.tool_call(tc, out);
                }
            }
            if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish = Some(f.to_owned());
                self.close_block(out);
            }
        }
    }

    fn native(&mut self, event: &NativeEvent, out: &mut BytesMut) {
        self.native = true;
        write_event(out, &event.event, event.data.as_bytes());
    }

    fn complete(&mut self, chat_usage: Option<&Value>, out: &mut BytesMut) {
        if self.native {
            return;
        }
        self.start(None, out);
        self.close_block(out);
        let u = chat_usage
            .and_then(TokenUsage::from_openai)
            .unwrap_or_default();
        write_json_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": null},
                "usage": usage(&u)}),
        );
        write_json_event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    fn fail(&mut self, e: &GatewayError, out: &mut BytesMut) {
        let (_, body) = errors::error_body(e);
        write_json_event(out, "error", &body);
    }

    fn keepalive_every(&self, idle_timeout: Duration) -> Option<Duration> {
        Some(
            PING_EVERY
                .min(idle_timeout / 5)
                .max(Duration::from_millis(100)),
        )
    }

    fn keepalive(&mut self, out: &mut BytesMut) {
        // A translated stream's `message_start` waits for the first chunk (its
        // id): pings come after it, as in Anthropic's own streams.
        if self.native || self.started {
            out.extend_from_slice(PING);
        }
    }
}
