//! Anthropic's Messages API (`kind = "anthropic"`).
//!
//! Conduit calls `POST {base_url}/v1/messages` with the headers `x-api-key`
//! and `anthropic-version: 2023-06-01`. Calls on the Messages API front door
//! ([`crate::frontdoors::messages`]) pass through untouched but for `model`
//! (the deployment's), streams included; `count_tokens` goes to
//! `POST {base_url}/v1/messages/count_tokens`. Chat completions translate both ways;
//! legacy completions go through chat ([`legacy`]); Anthropic has no
//! embeddings API, so `/v1/embeddings` is a 400 naming `model`.
//!
//! # Requests
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `system` / `developer` messages (anywhere) | top-level `system` (text, in order; one string, or text blocks when several) |
//! | `user` | `user` (content as blocks) |
//! | `assistant` (`content`, `refusal` parts, `tool_calls[]`) | `assistant`: `text` blocks, then `tool_use {id, name, input}` (`arguments` parsed: a JSON string becomes an object) |
//! | `tool` (`tool_call_id`, `content`) | a `user` message of `tool_result {tool_use_id, content}` blocks |
//! | consecutive messages of one role (after the rows above) | merged into one message (Anthropic requires alternation; parallel tool results land in ONE user message) |
//! | `text` part | `text` block (empty texts dropped: Anthropic refuses them); a `cache_control` on the part is kept |
//! | `image_url` with a `data:` URL | `image` with a `base64` source (jpeg, png, gif, webp) |
//! | `image_url` with an http(s) URL | `image` with a `url` source (Anthropic fetches it: no inlining by Conduit) |
//! | `file` part with a `data:application/pdf` `file_data` | `document` with a `base64` source |
//! | `max_completion_tokens`, else `max_tokens` | `max_tokens` (required by Anthropic: 4096 when absent; 16 on `/v1/completions`, the legacy API's own default) |
//! | `temperature` (0–2) | `temperature` (0–1: values above 1 are sent as 1, Anthropic's most random setting) |
//! | `top_p`, `stop` (string or list) | `top_p`, `stop_sequences` |
//! | `user`, `safety_identifier` | `metadata.user_id` |
//! | `tools[]` (`function`) | `tools[] {name, description, input_schema}` |
//! | `tool_choice` `auto` / `none` / `required` / `{function:{name}}` | `{type: auto}` / `{type: none}` / `{type: any}` / `{type: tool, name}` |
//! | `parallel_tool_calls: false` | `tool_choice.disable_parallel_tool_use: true` |
//! | `response_format` `json_schema` / `json_object` | a forced tool named `json_response` whose `input_schema` is the schema (`{"type":"object"}` for `json_object`); its input comes back as the message `content` (see below) |
//! | `stream: true` | `stream: true` (usage always arrives in the stream) |
//! | `seed`, `store`, `metadata`, `service_tier`, `stream_options` | ignored: no Anthropic equivalent, and none changes the answer's meaning (`seed` is best effort even at OpenAI) |
//! | `n > 1`, `logprobs`, `top_logprobs`, `presence_penalty`/`frequency_penalty` ≠ 0, `logit_bias`, `audio`, non-text `modalities`, `prediction`, `reasoning_effort`, `web_search_options`, `functions`/`function_call` | 400 naming the parameter, or dropped when the deployment sets `drop_unsupported_params = true` |
//!
//! The name `json_response` is reserved: a client tool of that name is refused
//! (400, `tools`), because the answer of the forced tool is recognised by its
//! name alone (the decoder does not see the request).
//!
//! # Answers
//!
//! Text blocks become `content` (concatenated), `tool_use` blocks become
//! `tool_calls` (`input` serialised as the `arguments` string), the
//! `json_response` tool's input becomes `content` text. Thinking and server
//! tool blocks are not shown. Streams: `message_start` gives the role chunk,
//! `content_block_start` of a `tool_use` gives the first tool-call delta
//! (`index`, `id`, `type`, `name`, `arguments: ""`), each `input_json_delta`
//! an `arguments` fragment (a call whose input stayed empty gets `"{}"` at its
//! `content_block_stop`, so that the SDK's assembled arguments parse), and
//! `message_stop` the finish chunk carrying `usage`, then the end. `ping` and
//! unknown event types are ignored; an `error` event (after HTTP 200, T9)
//! ends the stream with an error.
//!
//! ## Finish reasons (`stop_reason`)
//!
//! | Anthropic | OpenAI `finish_reason` |
//! |---|---|
//! | `end_turn`, `stop_sequence`, `pause_turn` | `stop` |
//! | `max_tokens`, `model_context_window_exceeded` | `length` |
//! | `tool_use` with client tool calls | `tool_calls` |
//! | `tool_use` for the `json_response` tool only (structured output) | `stop` |
//! | `refusal` | `content_filter` (content `null` when nothing was written) |
//! | missing or unknown | `stop` |
//!
//! ## Usage
//!
//! | OpenAI `usage` | Anthropic `usage` |
//! |---|---|
//! | `prompt_tokens` | `input_tokens + cache_read_input_tokens + cache_creation_input_tokens` (Anthropic counts the cache outside `input_tokens`) |
//! | `prompt_tokens_details.cached_tokens` | `cache_read_input_tokens` |
//! | `prompt_tokens_details.cache_write_tokens` | `cache_creation_input_tokens` (Conduit's extension) |
//! | `completion_tokens` | `output_tokens` (thinking included) |
//! | `completion_tokens_details.reasoning_tokens` | 0 (not reported apart; Conduit never enables thinking) |
//! | `total_tokens` | prompt + completion |
//!
//! In streams, `message_start.message.usage` is read first and every field of
//! `message_delta.usage` (cumulative, T7) replaces it: the final values win.
//!
//! ## Errors
//!
//! | Anthropic status / `error.type` | Conduit |
//! |---|---|
//! | 4xx (`invalid_request_error`, `authentication_error`, `permission_error`, `not_found_error`, `request_too_large`) | same status, `type` = Anthropic's `error.type`, its message |
//! | 429 `rate_limit_error` | 429, `retry-after` passed on |
//! | 529 `overloaded_error` | 503 `overloaded_error` (`retry-after` passed on if sent) |
//! | other 5xx (`api_error`), unreadable bodies | 502 `upstream_error` |
//! | `event: error` inside a 200 stream | the stream ends with that error (same table, by `error.type`) |

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

use super::legacy::{self, LegacyStream};
use super::{json_post, Call, Endpoint, Provider, StreamDecoder, StreamEvent};
use crate::wire::error::GatewayError;
use crate::wire::sse::{SseEvent, SseParser};

/// The API version Conduit speaks.
const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by Anthropic; this is sent when the client gives none.
const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The legacy completions API's own default for `max_tokens`.
const LEGACY_DEFAULT_MAX_TOKENS: u64 = 16;
/// The forced tool that carries `response_format` answers.
const JSON_TOOL: &str = "json_response";
/// Image types Anthropic accepts.
const IMAGE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// The `anthropic` kind.
pub struct Anthropic {
    base_url: String,
    api_key: String,
}

impl Anthropic {
    pub fn new(base_url: String, api_key: String) -> Self {
        Anthropic { base_url, api_key }
    }
}

impl Provider for Anthropic {
    fn build_request(
        &self,
        call: &Call<'_>,
        body: &mut Map<String, Value>,
    ) -> Result<http::Request<Bytes>, GatewayError> {
        let messages = match call.endpoint {
            Endpoint::Embeddings => {
                return Err(GatewayError::invalid(
                    "This model's provider (Anthropic) has no embeddings API: use a model served by a provider with embeddings for /v1/embeddings.",
                    Some("model"),
                ))
            }
            Endpoint::Completions => {
                // A copy: the client's body must stay intact for a fallback
                // deployment of another kind.
                let mut chat = body.clone();
                legacy::completions_to_chat(&mut chat, call.drop_unsupported_params)?;
                to_messages(call, &chat, LEGACY_DEFAULT_MAX_TOKENS)?
            }
            Endpoint::ChatCompletions => to_messages(call, body, DEFAULT_MAX_TOKENS)?,
            // The client speaks the Messages API: its body, with the deployment's model.
            Endpoint::Messages => {
                body.insert("model".into(), call.model.into());
                std::mem::take(body)
            }
            Endpoint::Responses => return Err(crate::frontdoors::not_spoken(call.endpoint)),
        };
        let bytes = serde_json::to_vec(&Value::Object(messages))
            .map_err(|e| GatewayError::Internal(format!("cannot encode the request: {e}")))?;
        json_post(
            &format!("{}/v1/messages", self.base_url),
            &[
                ("x-api-key", &self.api_key),
                ("anthropic-version", API_VERSION),
            ],
            bytes,
        )
    }

    fn translate_response(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<Map<String, Value>, GatewayError> {
        if call.endpoint == Endpoint::Messages {
            return passed_through(body);
        }
        let chat = to_chat_completion(call, body)?;
        Ok(match call.endpoint {
            Endpoint::Completions => legacy::chat_to_completion(chat),
            _ => chat,
        })
    }

    fn stream_decoder(&self, call: &Call<'_>) -> Box<dyn StreamDecoder> {
        if call.endpoint == Endpoint::Messages {
            return Box::new(crate::frontdoors::messages::native::NativeMessagesSse::new());
        }
        let decoder = Box::new(MessagesStream::new(call));
        match call.endpoint {
            Endpoint::Completions => Box::new(LegacyStream(decoder)),
            _ => decoder,
        }
    }

    fn map_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let (kind, message) = match parsed.as_ref().and_then(|v| v.get("error")) {
            Some(e) => error_fields(e),
            None => (None, None),
        };
        let message =
            message.unwrap_or_else(|| format!("the provider answered HTTP {}", status.as_u16()));
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if status.as_u16() == 529 || kind.as_deref() == Some("overloaded_error") {
            return overloaded(message, retry_after);
        }
        if !status.is_client_error() {
            let kind = kind.unwrap_or_else(|| "api_error".into());
            return GatewayError::Upstream(format!("HTTP {}: {kind}: {message}", status.as_u16()));
        }
        GatewayError::Provider {
            status,
            message,
            kind: kind.unwrap_or_else(|| default_type(status).to_owned()),
            code: None,
            param: None,
            retry_after,
        }
    }

    fn speaks(&self, call: &Call<'_>) -> bool {
        call.endpoint == Endpoint::Messages
    }

    fn count_tokens_request(
        &self,
        call: &Call<'_>,
        body: &Map<String, Value>,
    ) -> Option<Result<http::Request<Bytes>, GatewayError>> {
        // The fields count_tokens takes (it refuses `max_tokens`, `stream`, …).
        let mut count = Map::new();
        count.insert("model".into(), call.model.into());
        for k in [
            "messages",
            "system",
            "tools",
            "tool_choice",
            "thinking",
            "mcp_servers",
        ] {
            if let Some(v) = body.get(k).filter(|v| !v.is_null()) {
                count.insert(k.into(), v.clone());
            }
        }
        Some(
            serde_json::to_vec(&Value::Object(count))
                .map_err(|e| GatewayError::Internal(format!("cannot encode the request: {e}")))
                .and_then(|bytes| {
                    json_post(
                        &format!("{}/v1/messages/count_tokens", self.base_url),
                        &[
                            ("x-api-key", &self.api_key),
                            ("anthropic-version", API_VERSION),
                        ],
                        bytes,
                    )
                }),
        )
    }
}

/// A passed-through answer: Anthropic's message as it is (an `error`
/// object inside a 200 is an error).
fn passed_through(body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("error") => {
            Err(stream_error(&Value::Object(o)))
        }
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(not_readable()),
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid(message, Some(param))
}

/// Whether a present parameter asks for something Anthropic cannot do.
fn unsupported(name: &str, value: &Value) -> bool {
    if value.is_null() {
        return false;
    }
    match name {
        "n" => value.as_u64() != Some(1),
        "logprobs" => value != &Value::Bool(false),
        "presence_penalty" | "frequency_penalty" => value.as_f64() != Some(0.0),
        "logit_bias" => value.as_object().is_none_or(|o| !o.is_empty()),
        "modalities" => value
            .as_array()
            .is_none_or(|m| m.iter().any(|x| x != "text")),
        _ => true,
    }
}

const UNSUPPORTED: [&str; 13] = [
    "n",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    "functions",
    "function_call",
];

fn refuse_unsupported(name: &str) -> GatewayError {
    invalid(
        format!("`{name}` is not supported by this model's provider (Anthropic). Remove it, or set drop_unsupported_params = true on the deployment to ignore it."),
        name,
    )
}

/// The Messages API body for an OpenAI chat body.
fn to_messages(
    call: &Call<'_>,
    body: &Map<String, Value>,
    default_max_tokens: u64,
) -> Result<Map<String, Value>, GatewayError> {
    if !call.drop_unsupported_params {
        if let Some(name) = UNSUPPORTED
            .iter()
            .find(|n| body.get(**n).is_some_and(|v| unsupported(n, v)))
        {
            return Err(refuse_unsupported(name));
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), call.model.into());
    let (system, messages) = convert_messages(body.get("messages"))?;
    out.insert(
        "max_tokens".into(),
        max_tokens(body)?.unwrap_or(default_max_tokens).into(),
    );
    // One plain text is sent as a string, Anthropic's simplest form; several,
    // or one with a `cache_control` mark, as text blocks.
    match &system[..] {
        [] => {}
        [one] if one.get("cache_control").is_none() => {
            out.insert("system".into(), one["text"].clone());
        }
        _ => {
            out.insert("system".into(), Value::Array(system));
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(stop) = super::stop_sequences(body.get("stop"))? {
        out.insert("stop_sequences".into(), stop);
    }
    if let Some(t) = number(body, "temperature")? {
        // OpenAI's scale ends at 2, Anthropic's at 1.
        out.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = number(body, "top_p")? {
        out.insert("top_p".into(), json!(p));
    }
    for field in ["safety_identifier", "user"] {
        match body.get(field) {
            Some(Value::String(u)) if !u.is_empty() => {
                out.insert("metadata".into(), json!({ "user_id": u }));
                break;
            }
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(invalid(format!("`{field}` must be a string."), field)),
        }
    }
    let (tools, tool_choice) = tools_and_choice(call, body)?;
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
        if let Some(c) = tool_choice {
            out.insert("tool_choice".into(), c);
        }
    }
    if call.stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok(out)
}

fn max_tokens(body: &Map<String, Value>) -> Result<Option<u64>, GatewayError> {
    for field in ["max_completion_tokens", "max_tokens"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => {
                return match v.as_u64() {
                    Some(n) if n >= 1 => Ok(Some(n)),
                    _ => Err(invalid(
                        format!("`{field}` must be a positive integer."),
                        field,
                    )),
                }
            }
        }
    }
    Ok(None)
}

fn number(body: &Map<String, Value>, field: &str) -> Result<Option<f64>, GatewayError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| invalid(format!("`{field}` must be a number."), field)),
    }
}

/// `system` text blocks, and the alternating messages.
fn convert_messages(messages: Option<&Value>) -> Result<(Vec<Value>, Vec<Value>), GatewayError> {
    let Some(messages) = messages.and_then(Value::as_array) else {
        return Err(invalid("`messages` must be a list.", "messages"));
    };
    let mut system = Vec::new();
    // (role, blocks); consecutive messages of one role are merged as they come.
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Some(m) = m.as_object() else {
            return Err(invalid(format!("`{param}` must be an object."), &param));
        };
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(system_blocks(m.get("content"), &param)?);
                continue;
            }
            "user" => ("user", content_blocks(m.get("content"), &param)?),
            "assistant" => ("assistant", assistant_blocks(m, &param)?),
            "tool" => ("user", vec![tool_result(m, &param)?]),
            "function" => {
                return Err(invalid(
                    "`function` messages are deprecated and not supported by this model's provider: use `tool` messages.",
                    &format!("{param}.role"),
                ))
            }
            _ => {
                return Err(invalid(
                    format!("`{param}.role` must be one of system, developer, user, assistant, tool."),
                    &format!("{param}.role"),
                ))
            }
        };
        if blocks.is_empty() {
            // Anthropic refuses empty messages; an empty one carries nothing.
            continue;
        }
        match out.last_mut() {
            Some((last, prev)) if *last == role => prev.extend(blocks),
            _ => out.push((role, blocks)),
        }
    }
    let messages = out
        .into_iter()
        .map(|(role, blocks)| json!({ "role": role, "content": blocks }))
        .collect();
    Ok((system, messages))
}

fn text_block(text: &str, part: Option<&Map<String, Value>>) -> Value {
    let mut b = Map::new();
    b.insert("type".into(), "text".into());
    b.insert("text".into(), text.into());
    keep_cache_control(&mut b, part);
    Value::Object(b)
}

/// Prompt caching marks, as Anthropic-aware OpenAI clients put them on parts.
fn keep_cache_control(block: &mut Map<String, Value>, part: Option<&Map<String, Value>>) {
    if let Some(cc) = part
        .and_then(|p| p.get("cache_control"))
        .filter(|c| c.is_object())
    {
        block.insert("cache_control".into(), cc.clone());
    }
}

/// The text of a system or developer message.
fn system_blocks(content: Option<&Value>, param: &str) -> Result<Vec<Value>, GatewayError> {
    let blocks = content_blocks(content, param)?;
    if blocks.iter().any(|b| b["type"] != "text") {
        return Err(invalid(
            format!("`{param}.content` of a system message must be text."),
            &format!("{param}.content"),
        ));
    }
    Ok(blocks)
}

/// User (and tool result) content: a string or a list of parts.
fn content_blocks(content: Option<&Value>, param: &str) -> Result<Vec<Value>, GatewayError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![text_block(s, None)]),
        Some(Value::Array(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let pp = format!("{param}.content[{j}]");
                let Some(p) = part.as_object() else {
                    return Err(invalid(format!("`{pp}` must be an object."), &pp));
                };
                match p.get("type").and_then(Value::as_str) {
                    // `refusal` parts come back in assistant history.
                    Some(key @ ("text" | "refusal")) => {
                        let text = p.get(key).and_then(Value::as_str).ok_or_else(|| {
                            invalid(format!("`{pp}.{key}` must be a string."), &pp)
                        })?;
                        if !text.is_empty() {
                            blocks.push(text_block(text, Some(p)));
                        }
                    }
                    Some("image_url") => {
                        let url = match p.get("image_url") {
                            Some(Value::String(u)) => Some(u.as_str()),
                            Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
                            _ => None,
                        }
                        .ok_or_else(|| {
                            invalid(format!("`{pp}.image_url.url` must be a string."), &pp)
                        })?;
                        let mut b = image_block(url, &pp)?;
                        if let Some(o) = b.as_object_mut() {
                            keep_cache_control(o, Some(p));
                        }
                        blocks.push(b);
                    }
                    Some("file") => blocks.push(file_block(p, &pp)?),
                    Some(other) => {
                        return Err(invalid(
                            format!("content parts of type `{other}` are not supported by this model's provider (Anthropic)."),
                            &pp,
                        ))
                    }
                    None => return Err(invalid(format!("`{pp}.type` is required."), &pp)),
                }
            }
            Ok(blocks)
        }
        Some(_) => Err(invalid(
            format!("`{param}.content` must be a string or a list of parts."),
            &format!("{param}.content"),
        )),
    }
}

/// `data:<type>[;…];base64,<data>` → (type, data).
fn data_url(url: &str) -> Option<(&str, &str)> {
    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
    let mut fields = meta.split(';');
    let media = fields.next()?;
    fields
        .any(|f| f.eq_ignore_ascii_case("base64"))
        .then_some((media, data))
}

fn image_block(url: &str, param: &str) -> Result<Value, GatewayError> {
    if url.starts_with("data:") {
        let (media, data) = data_url(url).ok_or_else(|| {
            invalid(
                format!("`{param}`: only base64 `data:` image URLs are supported."),
                param,
            )
        })?;
        let media = media.to_ascii_lowercase();
        if !IMAGE_TYPES.contains(&media.as_str()) {
            return Err(invalid(
                format!("`{param}`: image type `{media}` is not supported by this model's provider (jpeg, png, gif, webp)."),
                param,
            ));
        }
        return Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}),
        );
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        // Anthropic fetches URLs itself.
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(invalid(
        format!("`{param}`: an image URL must be a `data:` or http(s) URL."),
        param,
    ))
}

fn file_block(part: &Map<String, Value>, param: &str) -> Result<Value, GatewayError> {
    let data = part
        .get("file")
        .and_then(|f| f.get("file_data"))
        .and_then(Value::as_str)
        .and_then(data_url);
    match data {
        Some((media, data)) if media.eq_ignore_ascii_case("application/pdf") => Ok(
            json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}}),
        ),
        _ => Err(invalid(
            format!("`{param}`: only PDF files sent inline as `file_data` (a base64 data: URL) are supported by this model's provider."),
            param,
        )),
    }
}

fn assistant_blocks(m: &Map<String, Value>, param: &str) -> Result<Vec<Value>, GatewayError> {
    let mut blocks = content_blocks(m.get("content"), param)?;
    if blocks.iter().any(|b| b["type"] != "text") {
        return Err(invalid(
            format!("`{param}.content` of an assistant message must be text."),
            &format!("{param}.content"),
        ));
    }
    let calls = match m.get("tool_calls") {
        None | Some(Value::Null) => return Ok(blocks),
        Some(Value::Array(calls)) => calls,
        Some(_) => {
            return Err(invalid(
                format!("`{param}.tool_calls` must be a list."),
                &format!("{param}.tool_calls"),
            ))
        }
    };
    for (j, call) in calls.iter().enumerate() {
        let cp = format!("{param}.tool_calls[{j}]");
        let id = call.get("id").and_then(Value::as_str);
        let function = call.get("function");
        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
        let (Some(id), Some(name)) = (id, name) else {
            return Err(invalid(
                format!("`{cp}` needs an `id` and a `function.name`."),
                &cp,
            ));
        };
        let input = match function.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => json!({}),
            Some(Value::String(s)) if s.trim().is_empty() => json!({}),
            Some(Value::String(s)) => serde_json::from_str(s).map_err(|_| {
                invalid(
                    format!("`{cp}.function.arguments` is not valid JSON."),
                    &format!("{cp}.function.arguments"),
                )
            })?,
            Some(v) => v.clone(),
        };
        if !input.is_object() {
            return Err(invalid(
                format!("`{cp}.function.arguments` must be a JSON object."),
                &format!("{cp}.function.arguments"),
            ));
        }
        blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(blocks)
}

fn tool_result(m: &Map<String, Value>, param: &str) -> Result<Value, GatewayError> {
    let id = m
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(
                format!("`{param}.tool_call_id` is required for a tool message."),
                &format!("{param}.tool_call_id"),
            )
        })?;
    let mut b = Map::new();
    b.insert("type".into(), "tool_result".into());
    b.insert("tool_use_id".into(), id.into());
    match m.get("content") {
        // A plain string stays a string: Anthropic's simplest form.
        Some(Value::String(s)) => {
            b.insert("content".into(), s.as_str().into());
        }
        other => {
            let blocks = content_blocks(other, param)?;
            if !blocks.is_empty() {
                b.insert("content".into(), Value::Array(blocks));
            }
        }
    }
    Ok(Value::Object(b))
}

/// `tools` and `tool_choice`, `response_format` included (a forced tool).
fn tools_and_choice(
    call: &Call<'_>,
    body: &Map<String, Value>,
) -> Result<(Vec<Value>, Option<Value>), GatewayError> {
    let mut tools = Vec::new();
    match body.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            for (k, t) in list.iter().enumerate() {
                let tp = format!("tools[{k}]");
                if t.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(invalid(
                        format!("`{tp}`: only tools of type `function` are supported by this model's provider."),
                        &tp,
                    ));
                }
                let f = t.get("function");
                let Some(name) = f.and_then(|f| f.get("name")).and_then(Value::as_str) else {
                    return Err(invalid(format!("`{tp}.function.name` is required."), &tp));
                };
                if name == JSON_TOOL {
                    return Err(invalid(
                        format!("`{tp}`: the tool name `{JSON_TOOL}` is reserved by Conduit on this provider (it carries `response_format`); rename the tool."),
                        &tp,
                    ));
                }
                let mut tool = Map::new();
                tool.insert("name".into(), name.into());
                if let Some(d) = f
                    .and_then(|f| f.get("description"))
                    .filter(|d| d.is_string())
                {
                    tool.insert("description".into(), d.clone());
                }
                let schema = f
                    .and_then(|f| f.get("parameters"))
                    .filter(|p| p.is_object())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                tool.insert("input_schema".into(), schema);
                tools.push(Value::Object(tool));
            }
        }
        Some(_) => return Err(invalid("`tools` must be a list.", "tools")),
    }
    let mut choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "none" => Some(json!({"type": "none"})),
            "required" => Some(json!({"type": "any"})),
            _ => {
                return Err(invalid(
                    "`tool_choice` must be auto, none, required or a named function.",
                    "tool_choice",
                ))
            }
        },
        Some(v) => match v
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => {
                Some(json!({"type": "tool", "name": name}))
            }
            _ => {
                return Err(invalid(
                    "`tool_choice` must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": …}}.",
                    "tool_choice",
                ))
            }
        },
    };
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if let Some(c) = c.as_object_mut().filter(|c| c["type"] != "none") {
            c.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
    }
    if let Some(schema) = response_schema(call, body)? {
        let has_client_tools = !tools.is_empty()
            && !choice
                .as_ref()
                .is_some_and(|c| c.get("type") == Some(&Value::from("none")));
        if has_client_tools {
            return Err(invalid(
                "`response_format` cannot be combined with `tools` on this model's provider (Anthropic answers structured output through a forced tool).",
                "response_format",
            ));
        }
        let description = body
            .get("response_format")
            .and_then(|r| r.get("json_schema"))
            .and_then(|j| j.get("description"))
            .and_then(Value::as_str)
            .unwrap_or("Give your answer to the user as the input of this tool, as JSON matching its schema.");
        tools =
            vec![json!({"name": JSON_TOOL, "description": description, "input_schema": schema})];
        choice = Some(json!({"type": "tool", "name": JSON_TOOL}));
    }
    Ok((tools, choice))
}

/// The schema asked for by `response_format`, if any.
fn response_schema(
    call: &Call<'_>,
    body: &Map<String, Value>,
) -> Result<Option<Value>, GatewayError> {
    let rf = match body.get("response_format") {
        None | Some(Value::Null) => return Ok(None),
        Some(rf) => rf,
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => {
            let schema = rf
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"}));
            if !schema.is_object()
                || schema
                    .get("type")
                    .is_some_and(|t| t != &Value::from("object"))
            {
                return Err(invalid(
                    "`response_format.json_schema.schema` must describe a JSON object on this model's provider.",
                    "response_format",
                ));
            }
            Ok(Some(schema))
        }
        _ if call.drop_unsupported_params => Ok(None),
        _ => Err(invalid(
            "`response_format.type` must be text, json_object or json_schema.",
            "response_format",
        )),
    }
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// Token counts as Anthropic reports them.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Usage {
    input: u64,
    cache_read: u64,
    cache_write: u64,
    output: u64,
}

impl Usage {
    /// Replaces every count the object carries (stream usage is cumulative).
    fn update(&mut self, u: Option<&Value>) {
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

    fn to_openai(self) -> Value {
        // Saturating: the counts are the provider's (fuzz/regressions).
        let prompt = self
            .input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_write);
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt.saturating_add(self.output),
            "prompt_tokens_details": {"cached_tokens": self.cache_read, "cache_write_tokens": self.cache_write},
            "completion_tokens_details": {"reasoning_tokens": 0},
        })
    }
}

fn finish_reason(stop_reason: Option<&str>, client_tool_calls: bool) -> &'static str {
    match stop_reason {
        Some("tool_use") if client_tool_calls => "tool_calls",
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, tool_use of the json_response
        // tool, and values added after this was written.
        _ => "stop",
    }
}

fn not_readable() -> GatewayError {
    GatewayError::Upstream("the provider's answer is not a Messages API message".into())
}

/// A whole Messages API answer as a `chat.completion`.
fn to_chat_completion(call: &Call<'_>, body: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| not_readable())?;
    let msg = v.as_object().ok_or_else(not_readable)?;
    if msg.get("type").and_then(Value::as_str) == Some("error") {
        return Err(stream_error(&v));
    }
    let mut text = String::new();
    let mut has_text = false;
    let mut tool_calls = Vec::new();
    for block in msg
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                has_text = true;
                text.push_str(block.get("text").and_then(Value::as_str).unwrap_or(""));
            }
            Some("tool_use") => {
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                let arguments = serde_json::to_string(&input).unwrap_or_else(|_| "{}".into());
                let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                if name == JSON_TOOL {
                    // The structured answer asked for by `response_format`.
                    has_text = true;
                    text.push_str(&arguments);
                } else {
                    tool_calls.push(json!({
                        "id": block.get("id").cloned().unwrap_or(Value::Null),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }));
                }
            }
            // thinking, redacted_thinking, server tool blocks: not shown.
            _ => {}
        }
    }
    let finish = finish_reason(
        msg.get("stop_reason").and_then(Value::as_str),
        !tool_calls.is_empty(),
    );
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if has_text { text.into() } else { Value::Null },
    );
    message.insert("refusal".into(), Value::Null);
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let mut usage = Usage::default();
    usage.update(msg.get("usage"));
    let mut out = Map::new();
    out.insert("id".into(), message_id(msg.get("id"), call));
    out.insert("object".into(), "chat.completion".into());
    out.insert("created".into(), call.now_secs.into());
    out.insert(
        "model".into(),
        msg.get("model")
            .filter(|m| m.is_string())
            .cloned()
            .unwrap_or_else(|| call.model.into()),
    );
    out.insert(
        "choices".into(),
        json!([{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}]),
    );
    out.insert("usage".into(), usage.to_openai());
    Ok(out)
}

fn message_id(id: Option<&Value>, call: &Call<'_>) -> Value {
    match id.and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.into(),
        _ => format!("chatcmpl-{}", call.request_id).into(),
    }
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// What a content block of the stream is, by its Anthropic `index`.
#[derive(Debug, Clone, Copy)]
enum Block {
    Text,
    /// A client tool call: its OpenAI `index`, and whether any argument
    /// fragment was sent.
    Tool {
        index: usize,
        sent: bool,
    },
    /// The `json_response` tool: its input is streamed as content.
    Json,
    /// Thinking, server tools, future kinds: not shown.
    Other,
}

/// Messages API events in, `chat.completion.chunk`s out.
struct MessagesStream {
    sse: SseParser,
    events: Vec<SseEvent>,
    id: Value,
    model: Value,
    created: u64,
    blocks: HashMap<u64, Block>,
    tool_calls: usize,
    usage: Usage,
    stop_reason: Option<String>,
    started: bool,
    /// A finish chunk went out.
    finished: bool,
    /// `Done` or an error went out: nothing more is read.
    ended: bool,
}

impl MessagesStream {
    fn new(call: &Call<'_>) -> Self {
        MessagesStream {
            sse: SseParser::new(),
            events: Vec::new(),
            id: format!("chatcmpl-{}", call.request_id).into(),
            model: call.model.into(),
            created: call.now_secs,
            blocks: HashMap::new(),
            tool_calls: 0,
            usage: Usage::default(),
            stop_reason: None,
            started: false,
            finished: false,
            ended: false,
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

    fn content(&self, text: &str, out: &mut Vec<StreamEvent>) {
        if !text.is_empty() {
            out.push(StreamEvent::Chunk(
                self.chunk(json!({ "content": text }), None),
            ));
        }
    }

    fn arguments(&self, index: usize, fragment: &str, out: &mut Vec<StreamEvent>) {
        out.push(StreamEvent::Chunk(self.chunk(
            json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
            None,
        )));
    }

    /// The finish chunk, carrying the final usage.
    fn finish_chunk(&mut self, out: &mut Vec<StreamEvent>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let reason = finish_reason(self.stop_reason.as_deref(), self.tool_calls > 0);
        let mut c = self.chunk(json!({}), Some(reason));
        c.insert("usage".into(), self.usage.to_openai());
        out.push(StreamEvent::Chunk(c));
    }

    fn fail(&mut self, e: GatewayError, out: &mut Vec<StreamEvent>) {
        self.ended = true;
        out.push(StreamEvent::Error(e));
    }

    fn event(&mut self, ev: &SseEvent, out: &mut Vec<StreamEvent>) {
        let data = ev.data.trim();
        if data.is_empty() {
            return;
        }
        let v: Value = match serde_json::from_str(data) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return self.fail(
                    GatewayError::Upstream("the provider sent an unreadable stream event".into()),
                    out,
                )
            }
        };
        // The payload's `type` decides (T8: parse, never string-match); the
        // SSE event name only stands in when it is missing.
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or(ev.event.as_deref())
            .unwrap_or("");
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "message_start" => {
                let m = v.get("message");
                if let Some(id) = m.and_then(|m| m.get("id")).filter(|i| i.is_string()) {
                    self.id = id.clone();
                }
                if let Some(model) = m.and_then(|m| m.get("model")).filter(|i| i.is_string()) {
                    self.model = model.clone();
                }
                self.usage.update(m.and_then(|m| m.get("usage")));
                if !self.started {
                    self.started = true;
                    out.push(StreamEvent::Chunk(
                        self.chunk(json!({"role": "assistant", "content": ""}), None),
                    ));
                }
            }
            "content_block_start" => {
                let b = v.get("content_block");
                let btype = b.and_then(|b| b.get("type")).and_then(Value::as_str);
                let block = match btype {
                    Some("text") => {
                        let t = b.and_then(|b| b.get("text")).and_then(Value::as_str);
                        self.content(t.unwrap_or(""), out);
                        Block::Text
                    }
                    Some("tool_use") => {
                        let name = b
                            .and_then(|b| b.get("name"))
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        if name == JSON_TOOL {
                            Block::Json
                        } else {
                            let i = self.tool_calls;
                            self.tool_calls += 1;
                            let id = b.and_then(|b| b.get("id")).cloned().unwrap_or(Value::Null);
                            out.push(StreamEvent::Chunk(self.chunk(
                                json!({"tool_calls": [{"index": i, "id": id, "type": "function",
                                    "function": {"name": name, "arguments": ""}}]}),
                                None,
                            )));
                            Block::Tool {
                                index: i,
                                sent: false,
                            }
                        }
                    }
                    _ => Block::Other,
                };
                self.blocks.insert(index, block);
            }
            "content_block_delta" => {
                let d = v.get("delta");
                let dtype = d.and_then(|d| d.get("type")).and_then(Value::as_str);
                let block = self.blocks.get(&index).copied().unwrap_or(Block::Other);
                match (dtype, block) {
                    (Some("text_delta"), Block::Text) => {
                        let t = d.and_then(|d| d.get("text")).and_then(Value::as_str);
                        self.content(t.unwrap_or(""), out);
                    }
                    (Some("input_json_delta"), Block::Tool { index: i, .. }) => {
                        let f = d
                            .and_then(|d| d.get("partial_json"))
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        // The first fragment is often "" (T6): nothing to send.
                        if !f.is_empty() {
                            self.arguments(i, f, out);
                            self.blocks.insert(
                                index,
                                Block::Tool {
                                    index: i,
                                    sent: true,
                                },
                            );
                        }
                    }
                    (Some("input_json_delta"), Block::Json) => {
                        let f = d
                            .and_then(|d| d.get("partial_json"))
                            .and_then(Value::as_str);
                        self.content(f.unwrap_or(""), out);
                    }
                    // thinking, signature, citations deltas: not shown.
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let Some(Block::Tool {
                    index: i,
                    sent: false,
                }) = self.blocks.get(&index).copied()
                {
                    // A call without arguments: "{}" so that the SDK's
                    // assembled `arguments` is valid JSON, as OpenAI sends.
                    self.arguments(i, "{}", out);
                    self.blocks.insert(
                        index,
                        Block::Tool {
                            index: i,
                            sent: true,
                        },
                    );
                }
            }
            "message_delta" => {
                if let Some(r) = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.stop_reason = Some(r.to_owned());
                }
                self.usage.update(v.get("usage"));
            }
            "message_stop" => {
                self.finish_chunk(out);
                self.ended = true;
                out.push(StreamEvent::Done);
            }
            "error" => self.fail(stream_error(&v), out),
            // `ping`, and event types added later (Anthropic's versioning
            // policy allows new ones).
            _ => {}
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

impl StreamDecoder for MessagesStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        self.sse.feed(bytes, &mut self.events);
        self.drain(out);
        if let Some(e) = self.sse.take_overflow() {
            out.push(StreamEvent::Error(e));
        }
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        self.sse.finish(&mut self.events);
        self.drain(out);
        // The body ended after `message_delta` but before `message_stop`:
        // the answer is whole, so it is finished (the core then completes).
        if !self.ended && self.stop_reason.is_some() {
            self.finish_chunk(out);
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// `error.type` and `error.message` of an Anthropic error object.
fn error_fields(e: &Value) -> (Option<String>, Option<String>) {
    let s = |k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    (s("type"), s("message"))
}

fn overloaded(message: String, retry_after: Option<String>) -> GatewayError {
    GatewayError::Provider {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message,
        kind: "overloaded_error".into(),
        code: None,
        param: None,
        retry_after,
    }
}

/// An error that arrived inside a 200 answer (an `error` event, T9): mapped
/// by its type, as [`Anthropic::map_error`] maps statuses.
fn stream_error(v: &Value) -> GatewayError {
    let (kind, message) = v.get("error").map(error_fields).unwrap_or((None, None));
    let message = message.unwrap_or_else(|| "the provider reported an error".into());
    let status = match kind.as_deref() {
        Some("overloaded_error") => return overloaded(message, None),
        Some("invalid_request_error") => StatusCode::BAD_REQUEST,
        Some("authentication_error") => StatusCode::UNAUTHORIZED,
        Some("permission_error") => StatusCode::FORBIDDEN,
        Some("not_found_error") => StatusCode::NOT_FOUND,
        Some("request_too_large") => StatusCode::PAYLOAD_TOO_LARGE,
        Some("rate_limit_error") => StatusCode::TOO_MANY_REQUESTS,
        other => {
            return GatewayError::Upstream(format!("{}: {message}", other.unwrap_or("api_error")))
        }
    };
    GatewayError::Provider {
        status,
        message,
        kind: kind.unwrap_or_default(),
        code: None,
        param: None,
        retry_after: None,
    }
}

fn default_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        _ => "invalid_request_error",
    }
}

#[cfg(test)]
mod tests;
