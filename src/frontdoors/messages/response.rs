//! A chat completion as a Messages API `message`.

use serde_json::{json, Map, Value};

use crate::metering::usage::TokenUsage;
use crate::providers::Call;

/// `stop_reason` for a chat `finish_reason`.
pub fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        // `stop`, and anything a provider adds later.
        _ => "end_turn",
    }
}

/// Anthropic's `usage` for chat usage: `input_tokens` leaves the cache out,
/// as Anthropic counts it.
pub fn usage(u: &TokenUsage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens.saturating_sub(u.cached_tokens + u.cache_write_tokens),
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
    })
}

/// The message id: the provider's when it is Anthropic-shaped, else one from the request id.
pub fn message_id(chat_id: Option<&str>, request_id: &str) -> String {
    match chat_id {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        _ => format!("msg_{}", request_id.trim_start_matches("req_")),
    }
}

/// A tool call's `arguments` string as the `input` object.
pub fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        // Not an object (or not JSON): kept, so nothing the model wrote is lost.
        Ok(other) if !arguments.trim().is_empty() => json!({ "input": other }),
        _ if arguments.trim().is_empty() => json!({}),
        _ => json!({ "arguments": arguments }),
    }
}

/// The `message` for a whole chat completion.
pub fn from_chat(call: &Call<'_>, chat: &Map<String, Value>) -> Map<String, Value> {
    let choice = chat
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    let message = choice.and_then(|c| c.get("message"));
    let mut content = Vec::new();
    for key in ["content", "refusal"] {
        if let Some(text) = message
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            content.push(json!({"type": "text", "text": text}));
            break;
        }
    }
    for tc in message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = tc.get("function");
        content.push(json!({
            "type": "tool_use",
            "id": tc.get("id").cloned().unwrap_or(Value::Null),
            "name": f.and_then(|f| f.get("name")).cloned().unwrap_or_else(|| "".into()),
            "input": tool_input(f.and_then(|f| f.get("arguments")).and_then(Value::as_str).unwrap_or("")),
        }));
    }
    let finish = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str);
    let u = chat
        .get("usage")
        .and_then(TokenUsage::from_openai)
        .unwrap_or_default();
    let mut out = Map::new();
    out.insert(
        "id".into(),
        message_id(chat.get("id").and_then(Value::as_str), call.request_id).into(),
    );
    out.insert("type".into(), "message".into());
    out.insert("role".into(), "assistant".into());
    out.insert(
        "model".into(),
        chat.get("model")
            .cloned()
            .unwrap_or_else(|| call.model.into()),
    );
    out.insert("content".into(), Value::Array(content));
    out.insert("stop_reason".into(), stop_reason(finish).into());
    out.insert("stop_sequence".into(), Value::Null);
    out.insert("usage".into(), usage(&u));
    out
}
