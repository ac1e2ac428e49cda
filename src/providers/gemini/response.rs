//! Gemini answers → OpenAI objects: whole responses, streams, embeddings.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::{call_id, error_from, finish_reason, usage};
use crate::providers::{Call, StreamDecoder, StreamEvent};
use crate::wire::error::GatewayError;
use crate::wire::sse::{SseEvent, SseParser};

fn unreadable() -> GatewayError {
    GatewayError::Upstream("the provider's answer is not a JSON object".into())
}

/// `chatcmpl-{responseId}`, or Conduit's request id when Gemini gave none.
fn completion_id(v: &Value, request_id: &str) -> String {
    match v.get("responseId").and_then(Value::as_str) {
        Some(r) if !r.is_empty() => format!("chatcmpl-{r}"),
        _ => format!("chatcmpl-{request_id}"),
    }
}

/// The candidate's position: its `index`, else its place in the list.
fn candidate_index(c: &Value, pos: usize) -> u64 {
    c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64)
}

fn parts(c: &Value) -> &[Value] {
    c.get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The answer's text: every text part that is not a thought summary.
fn text_of(part: &Value) -> Option<&str> {
    if part.get("thought").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    part.get("text").and_then(Value::as_str)
}

/// A `functionCall` part as an OpenAI tool call (`arguments` is a JSON string).
fn tool_call(part: &Value, id: String) -> Option<(String, String, String)> {
    let f = part.get("functionCall")?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let args = match f.get("args") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(a) => a.to_string(),
    };
    Some((id, name, args))
}

fn signature(part: &Value) -> Option<&str> {
    part.get("thoughtSignature").and_then(Value::as_str)
}

/// A prompt Gemini refused to answer: no candidates, `promptFeedback.blockReason`.
fn blocked(v: &Value) -> bool {
    v.get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .is_some_and(|r| !r.is_null())
}

/// A whole `generateContent` answer as a `chat.completion`.
pub(super) fn chat(call: &Call<'_>, body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| unreadable())?;
    if !v.is_object() {
        return Err(unreadable());
    }
    let candidates = v
        .get("candidates")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut choices = Vec::new();
    let mut calls_made = 0;
    for (pos, c) in candidates.iter().enumerate() {
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        for part in parts(c) {
            if let Some(t) = text_of(part) {
                text.push_str(t);
            }
            let id = call_id(call.request_id, calls_made, signature(part));
            if let Some((id, name, args)) = tool_call(part, id) {
                calls_made += 1;
                tool_calls.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}));
            }
        }
        let reason = c
            .get("finishReason")
            .and_then(Value::as_str)
            .unwrap_or("STOP");
        let mut message = Map::new();
        message.insert("role".into(), "assistant".into());
        // OpenAI sends `content: null` beside tool calls when there is no text.
        message.insert(
            "content".into(),
            if text.is_empty() && !tool_calls.is_empty() {
                Value::Null
            } else {
                text.into()
            },
        );
        message.insert("refusal".into(), Value::Null);
        let called = !tool_calls.is_empty();
        if called {
            message.insert("tool_calls".into(), Value::Array(tool_calls));
        }
        choices.push(json!({
            "index": candidate_index(c, pos),
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(reason, called),
        }));
    }
    if choices.is_empty() {
        if !blocked(&v) {
            return Err(GatewayError::Upstream(
                "the provider's answer has no candidates".into(),
            ));
        }
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": "", "refusal": null},
            "logprobs": null,
            "finish_reason": "content_filter",
        }));
    }
    let mut out = Map::new();
    out.insert("id".into(), completion_id(&v, call.request_id).into());
    out.insert("object".into(), "chat.completion".into());
    out.insert("created".into(), call.now_secs.into());
    out.insert("model".into(), call.model.into());
    out.insert("choices".into(), Value::Array(choices));
    out.insert(
        "usage".into(),
        usage(v.get("usageMetadata").unwrap_or(&Value::Null)),
    );
    Ok(out)
}

/// An `embedContent` or `batchEmbedContents` answer as an embeddings `list`.
/// Vectors are floats (see the report on `encoding_format`).
pub(super) fn embeddings(call: &Call<'_>, body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| unreadable())?;
    let vectors: Vec<&Value> = if let Some(e) = v.get("embedding") {
        vec![e]
    } else if let Some(Value::Array(es)) = v.get("embeddings") {
        es.iter().collect()
    } else {
        return Err(GatewayError::Upstream(
            "the provider's answer has no embeddings".into(),
        ));
    };
    let mut data = Vec::with_capacity(vectors.len());
    for (i, e) in vectors.into_iter().enumerate() {
        let values = e
            .get("values")
            .filter(|v| v.is_array())
            .ok_or_else(|| GatewayError::Upstream("an embedding has no values".into()))?;
        data.push(json!({"object": "embedding", "index": i, "embedding": values}));
    }
    let prompt = v
        .get("usageMetadata")
        .and_then(|u| u.get("promptTokenCount"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let mut out = Map::new();
    out.insert("object".into(), "list".into());
    out.insert("data".into(), Value::Array(data));
    out.insert("model".into(), call.model.into());
    out.insert(
        "usage".into(),
        json!({"prompt_tokens": prompt, "total_tokens": prompt}),
    );
    Ok(out)
}

/// Per-candidate progress in a stream.
#[derive(Default)]
struct Candidate {
    /// The role delta was sent.
    started: bool,
    /// Tool calls sent so far (the next one's `index`).
    calls: usize,
    finished: bool,
}

/// `streamGenerateContent?alt=sse`: `data: {GenerateContentResponse}`
/// events separated by CRLF, no terminator. Each event becomes one or more
/// OpenAI chunks; the stream is complete when every candidate sent a
/// `finishReason` (or the prompt was blocked) and the body then ends.
pub(super) struct GeminiStream {
    sse: SseParser,
    events: Vec<SseEvent>,
    request_id: String,
    model: String,
    created: u64,
    /// Fixed by the first event, so that every chunk has the same id.
    id: Option<String>,
    candidates: BTreeMap<u64, Candidate>,
    /// The latest `usageMetadata` (each event repeats it; the last is right).
    usage: Option<Value>,
    /// Function calls so far, over all candidates (for their ids).
    calls_made: usize,
    blocked: bool,
    /// An error was reported: nothing more is decoded.
    failed: bool,
}

impl GeminiStream {
    pub(super) fn new(call: &Call<'_>) -> Self {
        GeminiStream {
            sse: SseParser::new(),
            events: Vec::new(),
            request_id: call.request_id.to_owned(),
            model: call.model.to_owned(),
            created: call.now_secs,
            id: None,
            candidates: BTreeMap::new(),
            usage: None,
            calls_made: 0,
            blocked: false,
            failed: false,
        }
    }

    fn chunk(&self, index: u64, delta: Map<String, Value>, finish: Option<&str>) -> StreamEvent {
        StreamEvent::Chunk(crate::providers::chat_chunk(
            self.id.clone().unwrap_or_default(),
            self.created,
            self.model.clone(),
            vec![crate::providers::chunk_choice(index, delta, finish)],
        ))
    }

    fn drain(&mut self, out: &mut Vec<StreamEvent>) {
        for ev in std::mem::take(&mut self.events) {
            if self.failed {
                break;
            }
            match serde_json::from_str::<Value>(ev.data.trim()) {
                Ok(v) if v.is_object() => self.event(&v, out),
                _ => {
                    self.failed = true;
                    out.push(StreamEvent::Error(GatewayError::Upstream(
                        "the provider sent an unreadable stream event".into(),
                    )));
                }
            }
        }
    }

    fn event(&mut self, v: &Value, out: &mut Vec<StreamEvent>) {
        if let Some(err) = v.get("error").filter(|e| e.is_object()) {
            let status = err
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            self.failed = true;
            out.push(StreamEvent::Error(error_from(status, Some(err), None)));
            return;
        }
        if self.id.is_none() {
            self.id = Some(completion_id(v, &self.request_id));
        }
        if let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let candidates = v
            .get("candidates")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if candidates.is_empty() {
            if blocked(v) && !self.blocked {
                self.blocked = true;
                let mut delta = Map::new();
                delta.insert("role".into(), "assistant".into());
                delta.insert("content".into(), "".into());
                out.push(self.chunk(0, delta, Some("content_filter")));
            }
            return;
        }
        for (pos, c) in candidates.iter().enumerate() {
            self.candidate(candidate_index(c, pos), c, out);
        }
    }

    fn candidate(&mut self, index: u64, c: &Value, out: &mut Vec<StreamEvent>) {
        let mut state = self.candidates.remove(&index).unwrap_or_default();
        let mut delta = Map::new();
        if !state.started {
            state.started = true;
            delta.insert("role".into(), "assistant".into());
        }
        let mut text = String::new();
        for part in parts(c) {
            if let Some(t) = text_of(part) {
                text.push_str(t);
            }
            if part.get("functionCall").is_none() {
                continue;
            }
            let id = call_id(&self.request_id, self.calls_made, signature(part));
            let Some((id, name, args)) = tool_call(part, id) else {
                continue;
            };
            self.calls_made += 1;
            // Text before the call goes first, in its own chunk.
            if !text.is_empty() {
                delta.insert("content".into(), std::mem::take(&mut text).into());
                out.push(self.chunk(index, std::mem::take(&mut delta), None));
            }
            // OpenAI's shape: the call's id and name with empty arguments,
            // then the arguments (Gemini sends them whole, in one piece).
            let n = state.calls;
            state.calls += 1;
            delta.insert(
                "tool_calls".into(),
                json!([{"index": n, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]),
            );
            out.push(self.chunk(index, std::mem::take(&mut delta), None));
            delta.insert(
                "tool_calls".into(),
                json!([{"index": n, "function": {"arguments": args}}]),
            );
            out.push(self.chunk(index, std::mem::take(&mut delta), None));
        }
        if !text.is_empty() {
            delta.insert("content".into(), text.into());
        }
        let finish = c
            .get("finishReason")
            .and_then(Value::as_str)
            .filter(|_| !state.finished)
            .map(|r| finish_reason(r, state.calls > 0));
        if finish.is_some() {
            state.finished = true;
        }
        if !delta.is_empty() || finish.is_some() {
            out.push(self.chunk(index, delta, finish));
        }
        self.candidates.insert(index, state);
    }

    fn complete(&self) -> bool {
        self.blocked
            || (!self.candidates.is_empty() && self.candidates.values().all(|c| c.finished))
    }
}

impl StreamDecoder for GeminiStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) {
        self.sse.feed(bytes, &mut self.events);
        self.drain(out);
        if let Some(e) = self.sse.take_overflow() {
            out.push(StreamEvent::Error(e));
        }
    }

    /// Gemini ends a stream by closing it: complete only if every candidate
    /// finished; otherwise the core reports the stream as cut.
    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        self.sse.finish(&mut self.events);
        self.drain(out);
        if self.failed || !self.complete() {
            return;
        }
        if let Some(u) = self.usage.take() {
            let mut c = crate::providers::chat_chunk(
                self.id.clone().unwrap_or_default(),
                self.created,
                self.model.clone(),
                Vec::new(),
            );
            c.insert("usage".into(), usage(&u));
            out.push(StreamEvent::Chunk(c));
        }
        out.push(StreamEvent::Done);
    }
}
