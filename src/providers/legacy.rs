//! The legacy completions API (`/v1/completions`) through a chat API, for
//! providers that have no completions endpoint of their own.
//!
//! `prompt` (one string, or an array holding one string) becomes one user
//! message; the chat answer becomes a `text_completion` (the message text is
//! the completion's `text`), and stream chunks likewise. Parameters that only
//! the legacy API has (`suffix`, `echo`, `best_of`, `logprobs`) cannot be
//! honoured: 400 naming them, or dropped when the deployment says
//! `drop_unsupported_params = true`.

use serde_json::{Map, Value};

use super::{StreamDecoder, StreamEvent};
use crate::wire::error::GatewayError;

/// Rewrites a completions body into a chat body, in place.
pub fn completions_to_chat(
    body: &mut Map<String, Value>,
    drop_unsupported: bool,
) -> Result<(), GatewayError> {
    for p in ["suffix", "echo", "best_of", "logprobs"] {
        if body
            .get(p)
            .is_some_and(|v| !v.is_null() && *v != Value::Bool(false))
        {
            if drop_unsupported {
                body.remove(p);
            } else {
                return Err(GatewayError::invalid(
                    format!("`{p}` is not supported for this model's provider (set drop_unsupported_params = true on the deployment to ignore it)."),
                    Some(p),
                ));
            }
        }
    }
    let prompt = match body.remove("prompt") {
        Some(Value::String(s)) => s,
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_owned()
        }
        Some(Value::Array(_)) => return Err(GatewayError::invalid(
            "This model's provider takes one text prompt per request: send `prompt` as a string.",
            Some("prompt"),
        )),
        _ => {
            return Err(GatewayError::invalid(
                "`prompt` must be a string.",
                Some("prompt"),
            ))
        }
    };
    body.insert(
        "messages".into(),
        serde_json::json!([{ "role": "user", "content": prompt }]),
    );
    Ok(())
}

fn text_of(message: Option<&Value>) -> Value {
    match message.and_then(|m| m.get("content")) {
        Some(Value::String(s)) => Value::String(s.clone()),
        _ => Value::String(String::new()),
    }
}

fn choices(obj: &Map<String, Value>, field: &str) -> Vec<Value> {
    obj.get("choices")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .enumerate()
                .map(|(i, c)| {
                    serde_json::json!({
                        "text": text_of(c.get(field)),
                        "index": c.get("index").cloned().unwrap_or(i.into()),
                        "logprobs": null,
                        "finish_reason": match c.get("finish_reason") {
                            Some(Value::String(f)) if f == "tool_calls" => Value::String("stop".into()),
                            Some(f) => f.clone(),
                            None => Value::Null,
                        },
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn convert(mut obj: Map<String, Value>, field: &str) -> Map<String, Value> {
    let choices = choices(&obj, field);
    obj.insert("object".into(), "text_completion".into());
    obj.insert("choices".into(), Value::Array(choices));
    obj
}

/// A `chat.completion` as a `text_completion`.
pub fn chat_to_completion(obj: Map<String, Value>) -> Map<String, Value> {
    convert(obj, "message")
}

/// A `chat.completion.chunk` as a `text_completion` chunk.
pub fn chunk_to_completion(chunk: Map<String, Value>) -> Map<String, Value> {
    convert(chunk, "delta")
}

/// Wraps a chat stream decoder so that it yields completion chunks.
pub struct LegacyStream(pub Box<dyn StreamDecoder>);

impl LegacyStream {
    fn map(out: &mut [StreamEvent], from: usize) {
        for ev in &mut out[from..] {
            if let StreamEvent::Chunk(c) = ev {
                *c = chunk_to_completion(std::mem::take(c));
            }
        }
    }
}

impl StreamDecoder for LegacyStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) {
        let from = out.len();
        self.0.feed(bytes, out);
        Self::map(out, from);
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        let from = out.len();
        self.0.finish(out);
        Self::map(out, from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let mut body = json!({"model": "m", "prompt": ["Say hi"], "max_tokens": 5})
            .as_object()
            .unwrap()
            .clone();
        completions_to_chat(&mut body, false).unwrap();
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "Say hi"}])
        );
        assert_eq!(body["max_tokens"], 5);
        let mut bad = json!({"prompt": "x", "echo": true})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            completions_to_chat(&mut bad, false).unwrap_err().param(),
            Some("echo")
        );
        assert!(completions_to_chat(&mut bad, true).is_ok());

        let chat = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
        let c = chat_to_completion(chat.as_object().unwrap().clone());
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["choices"][0]["text"], "hi");
        assert_eq!(c["usage"]["total_tokens"], 2);
        let chunk = json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "h"}, "finish_reason": null}]});
        let k = chunk_to_completion(chunk.as_object().unwrap().clone());
        assert_eq!(k["choices"][0]["text"], "h");
        assert!(k["choices"][0]["finish_reason"].is_null());
    }
}
