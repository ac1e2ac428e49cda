//! Passed-through Responses API streams (OpenAI, Azure): every event is
//! relayed as it came, and read only for what the core meters: the usage of
//! the final `response.completed` / `response.incomplete` / `response.failed`
//! (which end the answer), and content deltas. An `error` event ends the
//! stream with that error.

use serde_json::Value;

use crate::metering::usage::TokenUsage;
use crate::providers::{NativeEvent, StreamDecoder, StreamEvent};
use crate::wire::error::GatewayError;
use crate::wire::sse::{SseEvent, SseParser};

/// The events that end a response.
const FINAL: [&str; 3] = [
    "response.completed",
    "response.incomplete",
    "response.failed",
];

/// An OpenAI Responses SSE body, passed through.
#[derive(Debug, Default)]
pub struct NativeResponses {
    sse: SseParser,
    events: Vec<SseEvent>,
    ended: bool,
}

impl NativeResponses {
    pub fn new() -> Self {
        Self::default()
    }

    fn event(&mut self, ev: &SseEvent, out: &mut Vec<StreamEvent>) {
        let data = ev.data.trim();
        if data.is_empty() || data == "[DONE]" {
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
            .or(ev.event.as_deref())
            .unwrap_or("")
            .to_owned();
        if kind == "error" {
            self.ended = true;
            let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            out.push(StreamEvent::Error(GatewayError::Upstream(
                s("message").unwrap_or_else(|| "the provider reported an error".into()),
            )));
            return;
        }
        let finish = FINAL.contains(&kind.as_str());
        let usage = if finish {
            v.get("response")
                .and_then(|r| r.get("usage"))
                .and_then(TokenUsage::from_openai)
        } else {
            None
        };
        let content = kind == "response.output_text.delta"
            || kind == "response.function_call_arguments.delta"
            || kind == "response.refusal.delta";
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

    fn drain(&mut self, out: &mut Vec<StreamEvent>) {
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            if self.ended {
                break;
            }
            self.event(ev, out);
        }
    }
}

impl StreamDecoder for NativeResponses {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        self.sse.feed(bytes, &mut self.events);
        self.drain(out);
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        self.sse.finish(&mut self.events);
        self.drain(out);
    }
}
