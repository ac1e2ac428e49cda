//! Chat chunks as the Responses API's stream events, and passed-through
//! events as they are.
//!
//! Every event carries a `sequence_number` (from 0). `response.created` and
//! `response.in_progress` open the stream; a text answer is an output
//! `message` item (`response.output_item.added`, `response.content_part.added`,
//! `response.output_text.delta`s, then `response.output_text.done`,
//! `response.content_part.done`, `response.output_item.done`); each tool call
//! a `function_call` item (`response.output_item.added`,
//! `response.function_call_arguments.delta`s, `…arguments.done`,
//! `response.output_item.done`). The end is `response.completed`, or
//! `response.incomplete` (length, content filter), with the whole response
//! and its usage; a failure after the first byte is `response.failed` (or,
//! in a passed-through stream, an `error` event).

use bytes::BytesMut;
use serde_json::{json, Map, Value};

use super::response::{function_call_item, id, message_item, skeleton, status, usage};
use crate::frontdoors::{write_event, write_json_event, write_json_str, StreamEncoder};
use crate::metering::usage::TokenUsage;
use crate::providers::NativeEvent;
use crate::wire::error::GatewayError;

/// One output item being streamed.
enum Item {
    Message {
        id: String,
        text: String,
        done: bool,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        chat_index: u64,
        done: bool,
    },
}

pub struct ResponsesEncoder {
    alias: Value,
    request_id: String,
    id: String,
    created_at: u64,
    seq: u64,
    started: bool,
    items: Vec<Item>,
    finish: Option<String>,
    /// Events of a passed-through stream were relayed: the provider ends it.
    native: bool,
}

impl ResponsesEncoder {
    pub fn new(alias: Value, request_id: &str, now_secs: u64) -> Self {
        ResponsesEncoder {
            alias,
            request_id: request_id.to_owned(),
            id: id("resp", request_id, None),
            created_at: now_secs,
            seq: 0,
            started: false,
            items: Vec::new(),
            finish: None,
            native: false,
        }
    }

    /// Writes `event` (an object without `sequence_number`) with the next one.
    fn emit(&mut self, mut event: Map<String, Value>, out: &mut BytesMut) {
        event.insert("sequence_number".into(), self.seq.into());
        self.seq += 1;
        let name = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        write_json_event(out, &name, &Value::Object(event));
    }

    fn event(kind: &str, fields: Value) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("type".into(), kind.into());
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        m
    }

    fn response(&self, status: &str) -> Map<String, Value> {
        skeleton(&self.id, self.created_at, self.alias.clone(), status)
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let r = Value::Object(self.response("in_progress"));
        self.emit(Self::event("response.created", json!({"response": r})), out);
        self.emit(
            Self::event("response.in_progress", json!({"response": r})),
            out,
        );
    }

    fn item_value(&self, item: &Item, status: &str) -> Value {
        let _ = self;
        match item {
            Item::Message { id, text, .. } => message_item(id, text, status),
            Item::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            } => function_call_item(id, call_id, name, arguments, status),
        }
    }

    /// Index of the open message item, if the last item is one.
    fn open_message(&self) -> Option<usize> {
        match self.items.last() {
            Some(Item::Message { done: false, .. }) => Some(self.items.len() - 1),
            _ => None,
        }
    }

    fn text(&mut self, delta: &str, out: &mut BytesMut) {
        if delta.is_empty() {
            return;
        }
        let index = match self.open_message() {
            Some(i) => i,
            None => {
                let index = self.items.len();
                let item_id = id("msg", &self.request_id, Some(index));
                self.emit(
                    Self::event(
                        "response.output_item.added",
                        json!({"output_index": index, "item": {"id": item_id, "type": "message",
                            "status": "in_progress", "role": "assistant", "content": []}}),
                    ),
                    out,
                );
                self.emit(
                    Self::event(
                        "response.content_part.added",
                        json!({"item_id": item_id, "output_index": index, "content_index": 0,
                            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
                    ),
                    out,
                );
                self.items.push(Item::Message {
                    id: item_id,
                    text: String::new(),
                    done: false,
                });
                index
            }
        };
        let seq = self.seq;
        self.seq += 1;
        if let Item::Message { id, text, .. } = &mut self.items[index] {
            text.push_str(delta);
            // The hot event: written directly.
            out.extend_from_slice(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":");
            write_json_str(out, id);
            out.extend_from_slice(b",\"output_index\":");
            out.extend_from_slice(index.to_string().as_bytes());
            out.extend_from_slice(b",\"content_index\":0,\"delta\":");
            write_json_str(out, delta);
            out.extend_from_slice(b",\"logprobs\":[],\"sequence_number\":");
            out.extend_from_slice(seq.to_string().as_bytes());
            out.extend_from_slice(b"}\n\n");
        }
    }

    fn tool_call(&mut self, tc: &Value, out: &mut BytesMut) {
        let chat_index = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = tc.get("function");
        let known = self.items.iter().position(
            |i| matches!(i, Item::Call { chat_index: c, done: false, .. } if *c == chat_index),
        );
        let index = match known {
            Some(i) => i,
            None => {
                if let Some(open) = self.open_message() {
                    self.close_item(open, "completed", out);
                }
                let index = self.items.len();
                let item = Item::Call {
                    id: id("fc", &self.request_id, Some(index)),
                    call_id: tc
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    name: f
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    arguments: String::new(),
                    chat_index,
                    done: false,
                };
                let value = self.item_value(&item, "in_progress");
                self.items.push(item);
                self.emit(
                    Self::event(
                        "response.output_item.added",
                        json!({"output_index": index, "item": value}),
                    ),
                    out,
                );
                index
            }
        };
        let Some(fragment) = f
            .and_then(|f| f.get("arguments"))
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        else {
            return;
        };
        let seq = self.seq;
        self.seq += 1;
        if let Item::Call { id, arguments, .. } = &mut self.items[index] {
            arguments.push_str(fragment);
            out.extend_from_slice(b"event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"item_id\":");
            write_json_str(out, id);
            out.extend_from_slice(b",\"output_index\":");
            out.extend_from_slice(index.to_string().as_bytes());
            out.extend_from_slice(b",\"delta\":");
            write_json_str(out, fragment);
            out.extend_from_slice(b",\"sequence_number\":");
            out.extend_from_slice(seq.to_string().as_bytes());
            out.extend_from_slice(b"}\n\n");
        }
    }

    fn close_item(&mut self, index: usize, status: &str, out: &mut BytesMut) {
        let value = self.item_value(&self.items[index], status);
        let events = match &mut self.items[index] {
            Item::Message { done: true, .. } | Item::Call { done: true, .. } => return,
            Item::Message { id, text, done } => {
                *done = true;
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                vec![
                    Self::event(
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0,
                            "text": text, "logprobs": []}),
                    ),
                    Self::event(
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                    ),
                ]
            }
            Item::Call {
                id,
                name,
                arguments,
                done,
                ..
            } => {
                *done = true;
                vec![Self::event(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments}),
                )]
            }
        };
        for e in events {
            self.emit(e, out);
        }
        self.emit(
            Self::event(
                "response.output_item.done",
                json!({"output_index": index, "item": value}),
            ),
            out,
        );
    }

    fn close_all(&mut self, status: &str, out: &mut BytesMut) {
        for i in 0..self.items.len() {
            self.close_item(i, status, out);
        }
    }

    fn output(&self, status: &str) -> Value {
        Value::Array(
            self.items
                .iter()
                .map(|i| self.item_value(i, status))
                .collect(),
        )
    }
}

impl StreamEncoder for ResponsesEncoder {
    fn chunk(&mut self, chunk: &Map<String, Value>, out: &mut BytesMut) {
        self.start(out);
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
            }
        }
    }

    fn native(&mut self, event: &NativeEvent, out: &mut BytesMut) {
        self.native = true;
        self.seq += 1;
        write_event(out, &event.event, event.data.as_bytes());
    }

    fn complete(&mut self, chat_usage: Option<&Value>, out: &mut BytesMut) {
        if self.native {
            return;
        }
        self.start(out);
        let (status, incomplete) = status(self.finish.as_deref());
        let item_status = if status == "completed" {
            "completed"
        } else {
            "incomplete"
        };
        self.close_all(item_status, out);
        let u = chat_usage
            .and_then(TokenUsage::from_openai)
            .unwrap_or_default();
        let mut r = self.response(status);
        r.insert("incomplete_details".into(), incomplete);
        r.insert("output".into(), self.output(item_status));
        r.insert("usage".into(), usage(&u));
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(Self::event(kind, json!({ "response": r })), out);
    }

    fn fail(&mut self, e: &GatewayError, out: &mut BytesMut) {
        let code = match e.status().as_u16() {
            429 => "rate_limit_exceeded",
            400 => "invalid_prompt",
            _ => "server_error",
        };
        if self.native {
            // The provider's own sequence continues.
            self.emit(
                Self::event(
                    "error",
                    json!({"code": code, "message": e.message(), "param": e.param()}),
                ),
                out,
            );
            return;
        }
        self.start(out);
        let mut r = self.response("failed");
        r.insert(
            "error".into(),
            json!({"code": code, "message": e.message()}),
        );
        r.insert("output".into(), self.output("incomplete"));
        self.emit(
            Self::event("response.failed", json!({ "response": r })),
            out,
        );
    }
}
