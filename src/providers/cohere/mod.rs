//! Cohere v2: `POST {base_url}/v2/chat` and `POST {base_url}/v2/embed`,
//! with `Authorization: Bearer KEY`.
//!
//! Cohere's v2 chat API is close to OpenAI's: messages stay messages (the
//! `system` role is allowed), tools are OpenAI-like and assistant tool calls
//! carry string arguments. What differs, and is translated here:
//!
//! # Requests
//!
//! | OpenAI                                   | Cohere v2                                            |
//! |------------------------------------------|------------------------------------------------------|
//! | `system`, `developer` message            | `system` message (text or text parts)                |
//! | `user` message, text / `image_url` parts | `user` message, `text` / `image_url {url, detail}` parts (data: and http(s) URLs alike, so `needs_image_bytes` is false) |
//! | `assistant` message + `tool_calls`       | `assistant` + `tool_calls` (string arguments); its text, if any, becomes `tool_plan` (Cohere keeps the plan apart from content) |
//! | `tool` message (`tool_call_id`)          | `tool` message (`tool_call_id`, content); several results of one turn stay consecutive `tool` messages, as Cohere takes them |
//! | `tools[].function{name,description,parameters}` | the same (`strict` is not forwarded)          |
//! | `tool_choice`: `auto` / `none` / `required` | omitted / `NONE` / `REQUIRED`                     |
//! | `tool_choice: {function: {name}}`        | only that tool in `tools`, `tool_choice: REQUIRED`   |
//! | `response_format` `json_object`          | `response_format {type: json_object}`                |
//! | `response_format` `json_schema`          | `response_format {type: json_object, json_schema: <schema>}` |
//! | `max_completion_tokens` / `max_tokens`   | `max_tokens` (none by default; legacy completions default to 16, the legacy API's own default) |
//! | `stop` (string or list)                  | `stop_sequences` (list)                              |
//! | `temperature`, `top_p`, `seed`, `frequency_penalty`, `presence_penalty` | `temperature`, `p`, `seed`, `frequency_penalty`, `presence_penalty` |
//! | `user`, `metadata`, `store`, `service_tier`, `stream_options`, `parallel_tool_calls: true`, `n: 1`, `logprobs: false` | not sent: they change nothing in the answer (usage is always reported) |
//! | `n > 1`, `logprobs: true`, `top_logprobs`, `logit_bias`, `audio`, non-text `modalities`, `prediction`, `web_search_options`, `parallel_tool_calls: false`, `reasoning_effort`, `functions`, `function_call` | 400 naming the parameter, or dropped with `drop_unsupported_params` |
//! | Cohere's own `k`, `safety_mode`, `documents`, `citation_options`, `thinking`, `strict_tools`, `priority` (via the SDK's `extra_body`) | passed through |
//!
//! `/v1/completions` goes through chat ([`super::legacy`]). `/v1/embeddings`
//! becomes `{model, texts, input_type: "search_document", embedding_types:
//! ["float"]}` (`input_type` and `truncate` may be given through
//! `extra_body`; `dimensions` becomes `output_dimension`). Token-array inputs
//! are refused (400): Cohere embeds text.
//!
//! # Answers
//!
//! | Cohere `finish_reason`     | OpenAI `finish_reason`                              |
//! |----------------------------|-----------------------------------------------------|
//! | `COMPLETE`, `STOP_SEQUENCE`| `stop`                                              |
//! | `MAX_TOKENS`               | `length`                                            |
//! | `TOOL_CALL`                | `tool_calls`                                        |
//! | `ERROR_TOXIC` (v1 value)   | `content_filter`                                    |
//! | `ERROR`, `TIMEOUT`, `ERROR_LIMIT` | no answer: 502 (non-stream) or a stream `error` event |
//! | missing or unknown         | `tool_calls` if the answer has tool calls, else `stop` |
//!
//! | OpenAI `usage`                              | Cohere `usage`                                |
//! |---------------------------------------------|-----------------------------------------------|
//! | `prompt_tokens`                             | `tokens.input_tokens` (includes the cached ones; `billed_units.input_tokens` only when `tokens` is absent) |
//! | `completion_tokens`                         | `tokens.output_tokens` (likewise)             |
//! | `total_tokens`                              | their sum (Cohere sends none)                 |
//! | `prompt_tokens_details.cached_tokens`       | `cached_tokens` (a subset of the input tokens, capped to them) |
//! | embeddings `prompt_tokens` = `total_tokens` | `meta.billed_units.input_tokens`              |
//!
//! Streams arrive once, in `message-end` (`delta.usage`), on the chunk that
//! carries the finish reason.
//!
//! `tool_plan` (the model's text about which tools it will call) is
//! **dropped**: OpenAI clients expect `content: null` beside tool calls and
//! would otherwise show the plan as the answer. A reasoning model's
//! `thinking` content parts are dropped likewise; `citations` are dropped.
//!
//! # Streams
//!
//! `event: <type>` + `data: {json}` (the type is also inside the JSON, which
//! is what is read). `message-start` → first chunk `{role: assistant,
//! content: ""}`; `content-delta` → `content`; `tool-call-start` → the
//! call's first delta (stable `index` counted by Conduit, `id`, `name`,
//! `arguments: ""`); `tool-call-delta` → argument fragments for that
//! `index`; `message-end` → the finish chunk with `usage`, then Done.
//! `tool-plan-delta`, `content-start`/`-end`, `tool-call-end`,
//! `citation-*` and unknown events produce nothing.
//!
//! # Errors
//!
//! Cohere answers `{"message": "..."}` with the status.
//!
//! | Cohere status | Conduit                                                             |
//! |---------------|---------------------------------------------------------------------|
//! | 400, 422      | same status, `invalid_request_error`                                |
//! | 401           | 401 `authentication_error`                                          |
//! | 402           | 402 `insufficient_quota`                                            |
//! | 403 / 404     | same status, `permission_error` / `not_found_error`                 |
//! | 429           | 429 `rate_limit_error`, code `rate_limit_exceeded`, `retry-after` passed on |
//! | 498 (unsafe request: prompt blocked) | 400 `invalid_request_error`, code `content_filter` |
//! | 499 (cancelled), 5xx, unreadable | 502 (`Upstream`, retryable on another deployment) |

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

use super::legacy::{chat_to_completion, completions_to_chat, LegacyStream};
use super::{json_post, Call, Endpoint, Provider, StreamDecoder, StreamEvent};
use crate::wire::error::GatewayError;
use crate::wire::sse::{SseEvent, SseParser};

/// The `cohere` kind.
pub struct Cohere {
    base_url: String,
    /// `Bearer …`, ready to send.
    authorization: String,
}

impl Cohere {
    pub fn new(base_url: String, api_key: String) -> Self {
        Cohere {
            base_url,
            authorization: format!("Bearer {api_key}"),
        }
    }
}

impl Provider for Cohere {
    fn build_request(
        &self,
        call: &Call<'_>,
        body: &mut Map<String, Value>,
    ) -> Result<http::Request<Bytes>, GatewayError> {
        let (path, out) = match call.endpoint {
            Endpoint::Embeddings => ("v2/embed", embed_body(call, body)?),
            Endpoint::ChatCompletions => ("v2/chat", chat_body(call, body)?),
            Endpoint::Completions => {
                // On a copy: the core hands the same body to the next
                // deployment if this one fails, and it must still hold `prompt`.
                let mut chat = body.clone();
                completions_to_chat(&mut chat, call.drop_unsupported_params)?;
                // The legacy API's own default; Cohere has none.
                if chat.get("max_tokens").is_none_or(Value::is_null) {
                    chat.insert("max_tokens".into(), 16.into());
                }
                ("v2/chat", chat_body(call, &mut chat)?)
            }
            Endpoint::Responses | Endpoint::Messages => {
                return Err(crate::frontdoors::not_spoken(call.endpoint))
            }
        };
        let bytes = serde_json::to_vec(&Value::Object(out))
            .map_err(|e| GatewayError::Internal(format!("cannot encode the request: {e}")))?;
        let url = format!("{}/{}", self.base_url, path);
        let mut headers: Vec<(&'static str, &str)> =
            vec![("authorization", self.authorization.as_str())];
        if call.stream {
            headers.push(("accept", "text/event-stream"));
        } else {
            headers.push(("accept", "application/json"));
        }
        json_post(&url, &headers, bytes)
    }

    fn translate_response(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<Map<String, Value>, GatewayError> {
        match call.endpoint {
            Endpoint::Embeddings => translate_embed(call, body),
            Endpoint::ChatCompletions => translate_chat(call, body),
            Endpoint::Completions => translate_chat(call, body).map(chat_to_completion),
            Endpoint::Responses | Endpoint::Messages => {
                Err(crate::frontdoors::not_spoken(call.endpoint))
            }
        }
    }

    fn stream_decoder(&self, call: &Call<'_>) -> Box<dyn StreamDecoder> {
        let inner = CohereStream::new(call);
        match call.endpoint {
            Endpoint::Completions => Box::new(LegacyStream(Box::new(inner))),
            _ => Box::new(inner),
        }
    }

    fn map_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        map_cohere_error(status, headers, body)
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid(message, Some(param))
}

/// Whether a parameter is set to something Cohere cannot honour.
fn cannot_honour(param: &str, v: &Value) -> bool {
    match param {
        "n" => !(v.is_null() || v.as_f64() == Some(1.0)),
        "logprobs" => !(v.is_null() || *v == Value::Bool(false)),
        "parallel_tool_calls" => *v == Value::Bool(false),
        "logit_bias" => match v {
            Value::Null => false,
            Value::Object(o) => !o.is_empty(),
            _ => true,
        },
        "modalities" => match v {
            Value::Null => false,
            Value::Array(a) => a.iter().any(|m| m.as_str() != Some("text")),
            _ => true,
        },
        _ => !v.is_null(),
    }
}

/// OpenAI parameters with no Cohere equivalent that would change the answer.
const UNSUPPORTED: [&str; 12] = [
    "n",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "parallel_tool_calls",
    "reasoning_effort",
    "functions",
    "function_call",
];

/// Cohere's own chat parameters, passed through when a client sends them.
const COHERE_NATIVE: [&str; 7] = [
    "k",
    "safety_mode",
    "documents",
    "citation_options",
    "thinking",
    "strict_tools",
    "priority",
];

fn refuse_unsupported(
    body: &mut Map<String, Value>,
    drop_unsupported: bool,
) -> Result<(), GatewayError> {
    for p in UNSUPPORTED {
        if body.get(p).is_some_and(|v| cannot_honour(p, v)) {
            if drop_unsupported {
                body.remove(p);
            } else {
                return Err(invalid(
                    format!("`{p}` is not supported for this model's provider (Cohere) (set drop_unsupported_params = true on the deployment to ignore it)."),
                    p,
                ));
            }
        }
    }
    Ok(())
}

/// The Cohere v2 chat body for an OpenAI chat body.
fn chat_body(
    call: &Call<'_>,
    body: &mut Map<String, Value>,
) -> Result<Map<String, Value>, GatewayError> {
    refuse_unsupported(body, call.drop_unsupported_params)?;
    let mut out = Map::new();
    out.insert("model".into(), call.model.into());
    let messages = match body.get("messages") {
        Some(Value::Array(ms)) if !ms.is_empty() => ms,
        _ => return Err(invalid("`messages` must be a non-empty array.", "messages")),
    };
    let mut translated = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        translated.push(message(i, m)?);
    }
    out.insert("messages".into(), Value::Array(translated));

    let (tools, tool_choice) = tools_and_choice(body)?;
    if let Some(t) = tools {
        out.insert("tools".into(), Value::Array(t));
    }
    if let Some(c) = tool_choice {
        out.insert("tool_choice".into(), c.into());
    }
    if let Some(rf) = response_format(body.get("response_format"))? {
        out.insert("response_format".into(), rf);
    }

    // `max_completion_tokens` is the current name, `max_tokens` the old one.
    let max = body
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .map(|v| ("max_completion_tokens", v))
        .or_else(|| {
            body.get("max_tokens")
                .filter(|v| !v.is_null())
                .map(|v| ("max_tokens", v))
        });
    if let Some((name, v)) = max {
        match v.as_u64() {
            Some(n) if n > 0 => {
                out.insert("max_tokens".into(), n.into());
            }
            _ => {
                return Err(invalid(
                    format!("`{name}` must be a positive integer."),
                    name,
                ))
            }
        }
    }
    if let Some(stop) = super::stop_sequences(body.get("stop"))? {
        out.insert("stop_sequences".into(), stop);
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "p"),
        ("seed", "seed"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
    ] {
        match body.get(from) {
            None | Some(Value::Null) => {}
            Some(v @ Value::Number(_)) => {
                out.insert(to.into(), v.clone());
            }
            Some(_) => return Err(invalid(format!("`{from}` must be a number."), from)),
        }
    }
    for k in COHERE_NATIVE {
        if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
            out.insert(k.into(), v.clone());
        }
    }
    if call.stream {
        out.insert("stream".into(), true.into());
    }
    Ok(out)
}

/// The text of a content value made of text parts only (system, assistant,
/// tool): parts are kept as Cohere `text` parts.
fn text_parts(i: usize, content: &Value, allow_refusal: bool) -> Result<Value, GatewayError> {
    match content {
        Value::Null => Ok(Value::String(String::new())),
        Value::String(_) => Ok(content.clone()),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let ty = p.get("type").and_then(Value::as_str);
                let text = match ty {
                    Some("text") => p.get("text").and_then(Value::as_str),
                    Some("refusal") if allow_refusal => p.get("refusal").and_then(Value::as_str),
                    _ => None,
                };
                match text {
                    Some(t) => out.push(json!({"type": "text", "text": t})),
                    None => return Err(invalid(
                        "This message may only hold text parts for this model's provider (Cohere).",
                        &format!("messages[{i}].content[{j}]"),
                    )),
                }
            }
            Ok(Value::Array(out))
        }
        _ => Err(invalid(
            "`content` must be a string or an array of content parts.",
            &format!("messages[{i}].content"),
        )),
    }
}

/// Plain text of a text-parts content (for `tool_plan`).
fn joined_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn user_content(i: usize, content: &Value) -> Result<Value, GatewayError> {
    let Value::Array(parts) = content else {
        return match content {
            Value::String(_) => Ok(content.clone()),
            _ => Err(invalid(
                "`content` must be a string or an array of content parts.",
                &format!("messages[{i}].content"),
            )),
        };
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let param = format!("messages[{i}].content[{j}]");
        match p.get("type").and_then(Value::as_str) {
            Some("text") => match p.get("text").and_then(Value::as_str) {
                Some(t) => out.push(json!({"type": "text", "text": t})),
                None => return Err(invalid("A text part needs a string `text`.", &param)),
            },
            Some("image_url") => {
                // `image_url` is `{url, detail?}` (some clients send the URL alone).
                let (url, detail) = match p.get("image_url") {
                    Some(Value::String(u)) => (Some(u.as_str()), None),
                    Some(Value::Object(o)) => (
                        o.get("url").and_then(Value::as_str),
                        o.get("detail").and_then(Value::as_str),
                    ),
                    _ => (None, None),
                };
                let Some(url) = url.filter(|u| !u.is_empty()) else {
                    return Err(invalid("An image_url part needs `image_url.url`.", &param));
                };
                let mut img = Map::new();
                img.insert("url".into(), url.into());
                if let Some(d) = detail {
                    img.insert("detail".into(), d.into());
                }
                out.push(json!({"type": "image_url", "image_url": img}));
            }
            Some(other) => {
                return Err(invalid(
                    format!("Content parts of type `{other}` are not supported for this model's provider (Cohere)."),
                    &param,
                ))
            }
            None => return Err(invalid("A content part needs a `type`.", &param)),
        }
    }
    Ok(Value::Array(out))
}

fn tool_call(i: usize, j: usize, tc: &Value) -> Result<Value, GatewayError> {
    let param = format!("messages[{i}].tool_calls[{j}]");
    let id = tc.get("id").and_then(Value::as_str);
    let f = tc.get("function");
    let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
    let (Some(id), Some(name)) = (id, name) else {
        return Err(invalid(
            "A tool call needs an `id` and a `function.name`.",
            &param,
        ));
    };
    let arguments = match f.and_then(|f| f.get("arguments")) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => "{}".to_owned(),
        // Lenient: an object is what the arguments mean.
        Some(other) => other.to_string(),
    };
    Ok(json!({
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }))
}

fn message(i: usize, m: &Value) -> Result<Value, GatewayError> {
    let Some(o) = m.as_object() else {
        return Err(invalid(
            "Each message must be an object.",
            &format!("messages[{i}]"),
        ));
    };
    let content = o.get("content").unwrap_or(&Value::Null);
    match o.get("role").and_then(Value::as_str) {
        Some("system") | Some("developer") => Ok(json!({
            "role": "system",
            "content": text_parts(i, content, false)?,
        })),
        Some("user") => Ok(json!({"role": "user", "content": user_content(i, content)?})),
        Some("assistant") => {
            let text = text_parts(i, content, true)?;
            let mut out = Map::new();
            out.insert("role".into(), "assistant".into());
            let calls = match o.get("tool_calls") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(calls)) => {
                    let mut out = Vec::with_capacity(calls.len());
                    for (j, tc) in calls.iter().enumerate() {
                        out.push(tool_call(i, j, tc)?);
                    }
                    out
                }
                Some(_) => {
                    return Err(invalid(
                        "`tool_calls` must be an array.",
                        &format!("messages[{i}].tool_calls"),
                    ))
                }
            };
            if calls.is_empty() {
                out.insert("content".into(), text);
            } else {
                // Cohere keeps the text said beside tool calls as the plan.
                let plan = joined_text(&text);
                if !plan.is_empty() {
                    out.insert("tool_plan".into(), plan.into());
                }
                out.insert("tool_calls".into(), Value::Array(calls));
            }
            Ok(Value::Object(out))
        }
        Some("tool") => {
            let Some(id) = o.get("tool_call_id").and_then(Value::as_str) else {
                return Err(invalid(
                    "A tool message needs a `tool_call_id`.",
                    &format!("messages[{i}].tool_call_id"),
                ));
            };
            Ok(json!({
                "role": "tool",
                "tool_call_id": id,
                "content": text_parts(i, content, false)?,
            }))
        }
        Some(other) => Err(invalid(
            format!("The role `{other}` is not supported for this model's provider (Cohere)."),
            &format!("messages[{i}].role"),
        )),
        None => Err(invalid(
            "Each message needs a string `role`.",
            &format!("messages[{i}].role"),
        )),
    }
}

/// `tools` (Cohere's shape) and `tool_choice` (`NONE`, `REQUIRED` or none).
fn tools_and_choice(
    body: &Map<String, Value>,
) -> Result<(Option<Vec<Value>>, Option<&'static str>), GatewayError> {
    let mut tools = Vec::new();
    match body.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ts)) => {
            for (i, t) in ts.iter().enumerate() {
                if t.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(invalid(
                        "Only `function` tools are supported for this model's provider (Cohere).",
                        &format!("tools[{i}].type"),
                    ));
                }
                let f = t.get("function");
                let Some(name) = f.and_then(|f| f.get("name")).and_then(Value::as_str) else {
                    return Err(invalid(
                        "A function tool needs a `name`.",
                        &format!("tools[{i}].function.name"),
                    ));
                };
                let mut func = Map::new();
                func.insert("name".into(), name.into());
                if let Some(d) = f
                    .and_then(|f| f.get("description"))
                    .filter(|d| d.is_string())
                {
                    func.insert("description".into(), d.clone());
                }
                // Cohere wants a parameters schema; OpenAI allows none.
                let params = f
                    .and_then(|f| f.get("parameters"))
                    .filter(|p| p.is_object())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                func.insert("parameters".into(), params);
                tools.push(json!({"type": "function", "function": func}));
            }
        }
        Some(_) => return Err(invalid("`tools` must be an array.", "tools")),
    }
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "auto" => None,
        Some(Value::String(s)) if s == "none" => Some("NONE"),
        Some(Value::String(s)) if s == "required" => Some("REQUIRED"),
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let Some(name) = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
            else {
                return Err(invalid(
                    "`tool_choice.function.name` is required.",
                    "tool_choice",
                ));
            };
            // Cohere cannot name a tool: send only that one and require a call.
            tools.retain(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name));
            if tools.is_empty() {
                return Err(invalid(
                    format!("`tool_choice` names the function `{name}`, which is not in `tools`."),
                    "tool_choice",
                ));
            }
            Some("REQUIRED")
        }
        Some(_) => {
            return Err(invalid(
                "`tool_choice` must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}.",
                "tool_choice",
            ))
        }
    };
    if tools.is_empty() {
        return match choice {
            Some("REQUIRED") => Err(invalid(
                "`tool_choice` \"required\" needs `tools`.",
                "tool_choice",
            )),
            _ => Ok((None, None)),
        };
    }
    Ok((Some(tools), choice))
}

fn response_format(rf: Option<&Value>) -> Result<Option<Value>, GatewayError> {
    let Some(rf) = rf.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut out = Map::new();
            out.insert("type".into(), "json_object".into());
            if let Some(schema) = rf
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .filter(|s| s.is_object())
            {
                out.insert("json_schema".into(), schema.clone());
            }
            Ok(Some(Value::Object(out)))
        }
        _ => Err(invalid(
            "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\".",
            "response_format",
        )),
    }
}

/// The Cohere v2 embed body for an OpenAI embeddings body.
fn embed_body(
    call: &Call<'_>,
    body: &Map<String, Value>,
) -> Result<Map<String, Value>, GatewayError> {
    let texts = match body.get("input") {
        Some(Value::String(s)) => vec![Value::String(s.clone())],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => a.clone(),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(invalid("`input` must not be empty.", "input"))
        }
        _ => {
            return Err(invalid(
                "This model's provider (Cohere) embeds text: send `input` as a string or an array of strings (token arrays are not supported).",
                "input",
            ))
        }
    };
    match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") | Some("base64") => {}
        Some(_) => {
            return Err(invalid(
                "`encoding_format` must be \"float\" or \"base64\".",
                "encoding_format",
            ))
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), call.model.into());
    out.insert("texts".into(), Value::Array(texts));
    let input_type = body
        .get("input_type")
        .and_then(Value::as_str)
        .unwrap_or("search_document");
    out.insert("input_type".into(), input_type.into());
    out.insert("embedding_types".into(), json!(["float"]));
    match body.get("dimensions") {
        None | Some(Value::Null) => {}
        Some(d) if d.as_u64().is_some() => {
            out.insert("output_dimension".into(), d.clone());
        }
        Some(_) => {
            return Err(invalid(
                "`dimensions` must be a positive integer.",
                "dimensions",
            ))
        }
    }
    if let Some(t) = body.get("truncate").filter(|v| v.is_string()) {
        out.insert("truncate".into(), t.clone());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// A token count (Cohere's schema types them as numbers, not integers).
fn count(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64))
}

/// OpenAI's `usage` for Cohere's (see the table in the module doc).
fn usage(u: Option<&Value>) -> Value {
    let side = |k: &str| {
        u.and_then(|u| count(u.pointer(&format!("/tokens/{k}"))))
            .or_else(|| u.and_then(|u| count(u.pointer(&format!("/billed_units/{k}")))))
            .unwrap_or(0)
    };
    let prompt = side("input_tokens");
    let completion = side("output_tokens");
    let cached = u
        .and_then(|u| count(u.get("cached_tokens")))
        .unwrap_or(0)
        .min(prompt);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        // Saturating: the counts are the provider's (fuzz/regressions).
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}

/// Cohere's finish reason as OpenAI's, or the error it stands for.
fn finish_reason(reason: Option<&str>, has_tool_calls: bool) -> Result<&'static str, String> {
    match reason {
        Some("MAX_TOKENS") => Ok("length"),
        Some("TOOL_CALL") => Ok("tool_calls"),
        Some("ERROR_TOXIC") => Ok("content_filter"),
        Some(r @ ("ERROR" | "TIMEOUT" | "ERROR_LIMIT")) => Err(r.to_owned()),
        _ if has_tool_calls => Ok("tool_calls"),
        // COMPLETE, STOP_SEQUENCE, and anything newer.
        _ => Ok("stop"),
    }
}

fn stopped_error(reason: &str, detail: Option<&str>) -> GatewayError {
    GatewayError::Upstream(match detail.filter(|d| !d.is_empty()) {
        Some(d) => format!("the provider stopped the generation ({reason}): {d}"),
        None => format!("the provider stopped the generation ({reason})"),
    })
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(GatewayError::Upstream(
            "the provider's answer is not a JSON object".into(),
        )),
    }
}

fn id_or(v: Option<&Value>, call: &Call<'_>) -> String {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("chatcmpl-{}", call.request_id))
}

/// Cohere's tool call as OpenAI's (arguments as a string).
fn openai_tool_call(tc: &Value, i: usize, call: &Call<'_>) -> Value {
    let f = tc.get("function");
    let arguments = match f.and_then(|f| f.get("arguments")) {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => "{}".to_owned(),
        Some(other) => other.to_string(),
    };
    json!({
        "id": tc.get("id").and_then(Value::as_str).map(str::to_owned)
            .unwrap_or_else(|| format!("call_{}_{i}", call.request_id)),
        "type": "function",
        "function": {
            "name": f.and_then(|f| f.get("name")).and_then(Value::as_str).unwrap_or_default(),
            "arguments": arguments,
        },
    })
}

fn translate_chat(call: &Call<'_>, body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    let v = parse_object(body)?;
    let message = v.get("message");
    let text: String = match message.and_then(|m| m.get("content")) {
        Some(Value::Array(parts)) => parts
            .iter()
            // Only `text` parts: `thinking` parts are not the answer.
            .filter(|p| p.get("type").and_then(Value::as_str).unwrap_or("text") == "text")
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let calls: Vec<Value> = message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .enumerate()
                .map(|(i, tc)| openai_tool_call(tc, i, call))
                .collect()
        })
        .unwrap_or_default();
    let finish = finish_reason(
        v.get("finish_reason").and_then(Value::as_str),
        !calls.is_empty(),
    )
    .map_err(|r| stopped_error(&r, v.get("error").and_then(Value::as_str)))?;
    let mut msg = Map::new();
    msg.insert("role".into(), "assistant".into());
    msg.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            text.into()
        },
    );
    msg.insert("refusal".into(), Value::Null);
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    let mut out = Map::new();
    out.insert("id".into(), id_or(v.get("id"), call).into());
    out.insert("object".into(), "chat.completion".into());
    out.insert("created".into(), call.now_secs.into());
    out.insert("model".into(), call.model.into());
    out.insert(
        "choices".into(),
        json!([{"index": 0, "message": msg, "logprobs": null, "finish_reason": finish}]),
    );
    out.insert("usage".into(), usage(v.get("usage")));
    Ok(out)
}

fn translate_embed(call: &Call<'_>, body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    let v = parse_object(body)?;
    // v2 with embedding_types: {"float": [[…]]}; v1-style answers: [[…]].
    let vectors = match v.get("embeddings") {
        Some(Value::Object(by_type)) => by_type.get("float").and_then(Value::as_array),
        Some(Value::Array(a)) => Some(a),
        _ => None,
    }
    .ok_or_else(|| {
        GatewayError::Upstream("the provider's answer has no float embeddings".into())
    })?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e}))
        .collect();
    let tokens = count(
        v.get("meta")
            .and_then(|m| m.pointer("/billed_units/input_tokens")),
    )
    .unwrap_or(0);
    let mut out = Map::new();
    out.insert("object".into(), "list".into());
    out.insert("data".into(), Value::Array(data));
    out.insert("model".into(), call.model.into());
    out.insert(
        "usage".into(),
        json!({"prompt_tokens": tokens, "total_tokens": tokens}),
    );
    Ok(out)
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// Cohere's v2 chat stream as OpenAI chunks.
pub(crate) struct CohereStream {
    sse: SseParser,
    events: Vec<SseEvent>,
    id: String,
    created: u64,
    model: String,
    /// Cohere's index of each tool call, in the order they started: the
    /// position is the OpenAI `index`.
    calls: Vec<i64>,
    /// Content blocks that are a reasoning model's thinking, not the answer.
    thinking: Vec<i64>,
    done: bool,
}

impl CohereStream {
    pub(crate) fn new(call: &Call<'_>) -> Self {
        CohereStream {
            sse: SseParser::new(),
            events: Vec::new(),
            id: format!("chatcmpl-{}", call.request_id),
            created: call.now_secs,
            model: call.model.to_owned(),
            calls: Vec::new(),
            thinking: Vec::new(),
            done: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Map<String, Value> {
        super::chat_chunk(
            self.id.clone(),
            self.created,
            self.model.clone(),
            vec![super::chunk_choice(0, delta, finish)],
        )
    }

    fn drain(&mut self, out: &mut Vec<StreamEvent>) {
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            if self.done {
                break;
            }
            self.event(ev, out);
        }
    }

    fn event(&mut self, ev: &SseEvent, out: &mut Vec<StreamEvent>) {
        let data = ev.data.trim();
        if data.is_empty() || data == "[DONE]" {
            return;
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                out.push(StreamEvent::Error(GatewayError::Upstream(
                    "the provider sent an unreadable stream event".into(),
                )));
                self.done = true;
                return;
            }
        };
        let ty = v
            .get("type")
            .and_then(Value::as_str)
            .or(ev.event.as_deref())
            .unwrap_or("");
        let index = v.get("index").and_then(Value::as_i64).unwrap_or(0);
        match ty {
            "message-start" => {
                if let Some(id) = v
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                {
                    self.id = id.to_owned();
                }
                out.push(StreamEvent::Chunk(
                    self.chunk(json!({"role": "assistant", "content": ""}), None),
                ));
            }
            "content-start" => {
                let content = v.pointer("/delta/message/content");
                if content.and_then(|c| c.get("type")).and_then(Value::as_str) == Some("thinking") {
                    self.thinking.push(index);
                } else if let Some(t) = content
                    .and_then(|c| c.get("text"))
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    out.push(StreamEvent::Chunk(self.chunk(json!({"content": t}), None)));
                }
            }
            "content-delta" => {
                if self.thinking.contains(&index) {
                    return;
                }
                if let Some(t) = v
                    .pointer("/delta/message/content/text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    out.push(StreamEvent::Chunk(self.chunk(json!({"content": t}), None)));
                }
            }
            "tool-call-start" => {
                let tc = tool_call_of(&v);
                let n = self.calls.len();
                self.calls.push(index);
                let f = tc.and_then(|t| t.get("function"));
                let args = f
                    .and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let id = tc
                    .and_then(|t| t.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("call_{}_{n}", self.id));
                let name = f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                out.push(StreamEvent::Chunk(self.chunk(
                    json!({"tool_calls": [{"index": n, "id": id, "type": "function",
                        "function": {"name": name, "arguments": args}}]}),
                    None,
                )));
            }
            "tool-call-delta" => {
                let Some(n) = self.calls.iter().position(|&c| c == index) else {
                    out.push(StreamEvent::Error(GatewayError::Upstream(
                        "the provider streamed arguments for a tool call it never started".into(),
                    )));
                    self.done = true;
                    return;
                };
                if let Some(frag) = tool_call_of(&v)
                    .and_then(|t| t.pointer("/function/arguments"))
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                {
                    out.push(StreamEvent::Chunk(self.chunk(
                        json!({"tool_calls": [{"index": n, "function": {"arguments": frag}}]}),
                        None,
                    )));
                }
            }
            "message-end" => {
                let delta = v.get("delta");
                let reason = delta
                    .and_then(|d| d.get("finish_reason"))
                    .and_then(Value::as_str);
                self.done = true;
                match finish_reason(reason, !self.calls.is_empty()) {
                    Ok(f) => {
                        let mut c = self.chunk(json!({}), Some(f));
                        c.insert("usage".into(), usage(delta.and_then(|d| d.get("usage"))));
                        out.push(StreamEvent::Chunk(c));
                        out.push(StreamEvent::Done);
                    }
                    Err(r) => out.push(StreamEvent::Error(stopped_error(
                        &r,
                        delta.and_then(|d| d.get("error")).and_then(Value::as_str),
                    ))),
                }
            }
            "error" => {
                let msg = v
                    .get("message")
                    .or_else(|| v.pointer("/delta/error"))
                    .and_then(Value::as_str)
                    .unwrap_or("the provider reported an error in the stream");
                out.push(StreamEvent::Error(GatewayError::Upstream(msg.to_owned())));
                self.done = true;
            }
            // content-end, tool-plan-delta (dropped, see the module doc),
            // tool-call-end, citation-start/-end, and anything newer.
            _ => {}
        }
    }
}

/// `delta.message.tool_calls` of a tool-call event (an object; an array of
/// one is accepted too).
fn tool_call_of(v: &Value) -> Option<&Value> {
    match v.pointer("/delta/message/tool_calls")? {
        Value::Array(a) => a.first(),
        other => Some(other),
    }
}

impl StreamDecoder for CohereStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) {
        self.sse.feed(bytes, &mut self.events);
        self.drain(out);
        if let Some(e) = self.sse.take_overflow() {
            out.push(StreamEvent::Error(e));
        }
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        self.sse.finish(&mut self.events);
        self.drain(out);
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Cohere's error answer in Conduit's terms (see the table in the module doc).
pub(crate) fn map_cohere_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> GatewayError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| {
            v.get("message")
                .and_then(Value::as_str)
                .or_else(|| v.get("error").and_then(Value::as_str))
                .or_else(|| v.pointer("/error/message").and_then(Value::as_str))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the provider answered HTTP {}", status.as_u16()));
    let provider = |status: StatusCode, kind: &str, code: Option<&str>| GatewayError::Provider {
        status,
        message: message.clone(),
        kind: kind.to_owned(),
        code: code.map(str::to_owned),
        param: None,
        retry_after: headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    match status.as_u16() {
        // "Unsafe request": the prompt was blocked by Cohere's safety checks.
        498 => provider(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("content_filter"),
        ),
        401 => provider(status, "authentication_error", None),
        402 => provider(status, "insufficient_quota", None),
        403 => provider(status, "permission_error", None),
        404 => provider(status, "not_found_error", None),
        429 => provider(status, "rate_limit_error", Some("rate_limit_exceeded")),
        // 499: the request was cancelled upstream; nothing the client did.
        s if (400..499).contains(&s) => provider(status, "invalid_request_error", None),
        s => GatewayError::Upstream(format!("HTTP {s}: {message}")),
    }
}

#[cfg(test)]
mod tests;
