//! A chat completion as a Responses API `response` object.

use serde_json::{json, Map, Value};

use crate::metering::usage::TokenUsage;
use crate::providers::Call;

/// The `usage` of a response.
pub fn usage(u: &TokenUsage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": u.cache_write_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// `status` and `incomplete_details` for a chat `finish_reason`.
pub fn status(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// Ids derived from Conduit's request id (`resp_…`, `msg_…`, `fc_…`).
pub fn id(prefix: &str, request_id: &str, n: Option<usize>) -> String {
    let base = request_id.trim_start_matches("req_");
    match n {
        Some(n) => format!("{prefix}_{base}_{n}"),
        None => format!("{prefix}_{base}"),
    }
}

/// A response object with the request's settings at their defaults (the
/// translated path does not echo the request). `usage` is left out until
/// it is known (OpenAI sends `null`, which its own schema does not allow).
pub fn skeleton(id: &str, created_at: u64, model: Value, status: &str) -> Map<String, Value> {
    let mut r = Map::new();
    r.insert("id".into(), id.into());
    r.insert("object".into(), "response".into());
    r.insert("created_at".into(), created_at.into());
    r.insert("status".into(), status.into());
    r.insert("error".into(), Value::Null);
    r.insert("incomplete_details".into(), Value::Null);
    r.insert("instructions".into(), Value::Null);
    r.insert("max_output_tokens".into(), Value::Null);
    r.insert("model".into(), model);
    r.insert("output".into(), Value::Array(Vec::new()));
    r.insert("parallel_tool_calls".into(), true.into());
    r.insert("previous_response_id".into(), Value::Null);
    r.insert("reasoning".into(), json!({"effort": null, "summary": null}));
    r.insert("store".into(), false.into());
    r.insert("temperature".into(), json!(1.0));
    r.insert("text".into(), json!({"format": {"type": "text"}}));
    r.insert("tool_choice".into(), "auto".into());
    r.insert("tools".into(), Value::Array(Vec::new()));
    r.insert("top_p".into(), json!(1.0));
    r.insert("truncation".into(), "disabled".into());
    r.insert("metadata".into(), json!({}));
    r
}

/// An output `message` item holding one `output_text` part.
pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "type": "message", "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

/// An output `function_call` item.
pub fn function_call_item(
    id: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call_id,
        "name": name, "arguments": arguments})
}

/// The `response` for a whole chat completion.
pub fn from_chat(call: &Call<'_>, chat: &Map<String, Value>) -> Map<String, Value> {
    let choice = chat
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    let message = choice.and_then(|c| c.get("message"));
    let finish = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str);
    let (status, incomplete) = status(finish);
    let mut output = Vec::new();
    let text = ["content", "refusal"].iter().find_map(|k| {
        message
            .and_then(|m| m.get(*k))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
    });
    if let Some(text) = text {
        output.push(message_item(
            &id("msg", call.request_id, None),
            text,
            "completed",
        ));
    }
    for (n, tc) in message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = tc.get("function");
        let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_owned();
        output.push(function_call_item(
            &id("fc", call.request_id, Some(n)),
            &s(tc.get("id")),
            &s(f.and_then(|f| f.get("name"))),
            &s(f.and_then(|f| f.get("arguments"))),
            "completed",
        ));
    }
    let u = chat
        .get("usage")
        .and_then(TokenUsage::from_openai)
        .unwrap_or_default();
    let mut r = skeleton(
        &id("resp", call.request_id, None),
        chat.get("created")
            .and_then(Value::as_u64)
            .unwrap_or(call.now_secs),
        chat.get("model")
            .cloned()
            .unwrap_or_else(|| call.model.into()),
        status,
    );
    r.insert("incomplete_details".into(), incomplete);
    r.insert("output".into(), Value::Array(output));
    r.insert("usage".into(), usage(&u));
    r
}
