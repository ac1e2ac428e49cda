//! Google AI Studio (the Gemini API, `generativelanguage.googleapis.com`).
//!
//! | OpenAI endpoint        | Gemini call                                                        |
//! |------------------------|--------------------------------------------------------------------|
//! | `/v1/chat/completions` | `POST {base_url}/v1beta/models/{model}:generateContent`            |
//! | (stream)               | `POST …:streamGenerateContent?alt=sse` (SSE, CRLF, ends at EOF)    |
//! | `/v1/completions`      | the chat translation, through [`legacy`](super::legacy)            |
//! | `/v1/embeddings`       | `:embedContent` (one string), `:batchEmbedContents` (an array)     |
//!
//! The key travels in the `x-goog-api-key` header, never in the URL, so it
//! cannot end up in an access log. A model written `models/…` or
//! `tunedModels/…` in the config is used as the resource name as it is.
//!
//! # Requests (`request.rs`)
//!
//! | OpenAI                                   | Gemini                                                        |
//! |------------------------------------------|---------------------------------------------------------------|
//! | `system` / `developer` messages          | `systemInstruction.parts[].text` (all of them, in order)      |
//! | `user`                                   | `user` turn; text → `text`, `image_url` / `input_audio` / `file` data → `inlineData {mimeType, data}` |
//! | `assistant`                              | `model` turn; text → `text`, `tool_calls[]` → `functionCall {name, args: object}` |
//! | `tool` (`tool_call_id`)                  | `functionResponse {name, response}` in a `user` turn; the name is found from the assistant call with that id; several results of one turn share one `user` turn |
//! | consecutive turns of one role            | merged into one turn (Gemini wants alternation)               |
//! | `tools[].function`                       | `tools[0].functionDeclarations[] {name, description, parametersJsonSchema}` (JSON Schema as sent: OpenAI's `additionalProperties`/`strict` schemas are valid there, not in the older `parameters` subset) |
//! | `tool_choice` auto / none / required     | `toolConfig.functionCallingConfig.mode` AUTO / NONE / ANY     |
//! | `tool_choice` a named function           | mode ANY + `allowedFunctionNames: [name]`                     |
//! | `response_format` json_object            | `generationConfig.responseMimeType: application/json`        |
//! | `response_format` json_schema            | … + `responseJsonSchema` (the schema as sent)                 |
//! | `temperature`, `top_p`, `seed`, `n`      | `temperature`, `topP`, `seed`, `candidateCount`               |
//! | `max_completion_tokens` / `max_tokens`   | `maxOutputTokens` (no default: Gemini does not require one)   |
//! | `stop` (string or array)                 | `stopSequences`                                               |
//! | `presence_penalty`, `frequency_penalty`  | `presencePenalty`, `frequencyPenalty` (some models refuse them: Gemini's 400 is passed on) |
//! | `reasoning_effort` none/minimal, low, medium, high | `thinkingConfig.thinkingBudget` 0, 1024, 8192, 24576 (Google's own OpenAI-compatibility values) |
//! | `user`, `metadata`, `store`, `service_tier`, `stream_options`, `parallel_tool_calls: true` | nothing to send (identifiers and options with no effect on the answer) |
//! | `logprobs`, `top_logprobs`, `logit_bias`, `parallel_tool_calls: false`, `audio`, non-text `modalities`, `prediction`, `web_search_options`, `functions`, `function_call` | 400 naming the parameter, or dropped with `drop_unsupported_params` |
//!
//! Gemini's `functionCall` has no id, so Conduit mints one per call:
//! `call_{request_id}_{n}`. Gemini 3 also signs function calls
//! (`thoughtSignature`) and refuses a history whose calls lost their
//! signature; the signature is therefore carried inside the id
//! (`call_…~ts~{signature}`), and restored when the client sends the call
//! back in the next request. Tool results are matched to their call by id
//! within the request, and sent to Gemini by function name.
//!
//! # Finish reasons (`response.rs`)
//!
//! | Gemini `finishReason`                                          | OpenAI `finish_reason` |
//! |----------------------------------------------------------------|------------------------|
//! | `STOP`, no `functionCall` part                                 | `stop`                 |
//! | `STOP` with `functionCall` part(s) (in a stream: any so far)   | `tool_calls`           |
//! | `MAX_TOKENS`                                                   | `length`               |
//! | `SAFETY`, `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`, `IMAGE_SAFETY`, `IMAGE_PROHIBITED_CONTENT`, `IMAGE_RECITATION` | `content_filter` |
//! | no candidates, `promptFeedback.blockReason` set (prompt blocked) | `content_filter`, content `""` |
//! | `MALFORMED_FUNCTION_CALL`, `UNEXPECTED_TOOL_CALL`, `OTHER`, `LANGUAGE`, `FINISH_REASON_UNSPECIFIED`, anything else | `stop` (no OpenAI equivalent; whatever content came is kept) |
//! | absent (a stream chunk that is not the last)                   | `null`                 |
//!
//! # Usage
//!
//! | OpenAI                                      | Gemini `usageMetadata`                                  |
//! |---------------------------------------------|---------------------------------------------------------|
//! | `prompt_tokens`                             | `promptTokenCount` (already includes cached content) + `toolUsePromptTokenCount` |
//! | `prompt_tokens_details.cached_tokens`       | `cachedContentTokenCount`                               |
//! | `completion_tokens`                         | `candidatesTokenCount` + `thoughtsTokenCount`           |
//! | `completion_tokens_details.reasoning_tokens`| `thoughtsTokenCount`                                    |
//! | `total_tokens`                              | prompt + completion (equals `totalTokenCount`)          |
//!
//! In a stream every chunk repeats `usageMetadata` and the last one is
//! authoritative (the prompt count can even change, fixture T13): the
//! decoder keeps the latest and hands it over once, on a `choices: []`
//! chunk at the end. Embeddings: `usageMetadata.promptTokenCount` when
//! Gemini reports it, else 0.
//!
//! # Errors
//!
//! Gemini answers `{"error": {"code", "message", "status", "details"}}`.
//!
//! | HTTP | Gemini `status`                  | Conduit                                                       |
//! |------|----------------------------------|---------------------------------------------------------------|
//! | 400  | `INVALID_ARGUMENT`, `FAILED_PRECONDITION` | 400 `invalid_request_error`, code = status in lower case |
//! | 401 / 403 | `UNAUTHENTICATED` / `PERMISSION_DENIED` | same status, `authentication_error` / `permission_error` |
//! | 404  | `NOT_FOUND`                      | 404 `not_found_error`                                         |
//! | 429  | `RESOURCE_EXHAUSTED`             | 429 `rate_limit_error`, code `rate_limit_exceeded`; `Retry-After` from the header, else from `RetryInfo.retryDelay` rounded up ("34.4s" → "35") |
//! | 503  | `UNAVAILABLE` (model overloaded) | 503 `api_error`, code `unavailable` (retryable: the next deployment is tried) |
//! | other 5xx, unreadable bodies     |                                  | 502 `upstream_error`                                          |
//!
//! The same mapping applies to an `error` object sent inside a 200 stream.

mod request;
mod response;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::legacy::{chat_to_completion, completions_to_chat, LegacyStream};
use super::{json_post, Call, Endpoint, Provider, StreamDecoder};
use crate::wire::error::GatewayError;

/// The `gemini` kind.
pub struct Gemini {
    base_url: String,
    api_key: String,
}

impl Gemini {
    pub fn new(base_url: String, api_key: String) -> Self {
        Gemini { base_url, api_key }
    }

    /// `models/{model}`, unless the config already names a resource.
    fn resource(model: &str) -> String {
        if model.starts_with("models/") || model.starts_with("tunedModels/") {
            model.to_owned()
        } else {
            format!("models/{model}")
        }
    }
}

impl Provider for Gemini {
    fn build_request(
        &self,
        call: &Call<'_>,
        body: &mut Map<String, Value>,
    ) -> Result<http::Request<Bytes>, GatewayError> {
        let resource = Self::resource(call.model);
        let (method, payload) = match call.endpoint {
            Endpoint::ChatCompletions => (chat_method(call.stream), request::chat(call, body)?),
            Endpoint::Completions => {
                // On a copy: a later deployment of another kind may still
                // need the client's completions body.
                let mut chat = body.clone();
                completions_to_chat(&mut chat, call.drop_unsupported_params)?;
                (chat_method(call.stream), request::chat(call, &chat)?)
            }
            Endpoint::Embeddings => request::embeddings(&resource, body)?,
            Endpoint::Responses | Endpoint::Messages => {
                return Err(crate::frontdoors::not_spoken(call.endpoint))
            }
        };
        let url = format!("{}/v1beta/{resource}:{method}", self.base_url);
        let bytes = serde_json::to_vec(&payload)
            .map_err(|e| GatewayError::Internal(format!("cannot encode the request: {e}")))?;
        json_post(&url, &[("x-goog-api-key", &self.api_key)], bytes)
    }

    fn translate_response(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<Map<String, Value>, GatewayError> {
        match call.endpoint {
            Endpoint::ChatCompletions => response::chat(call, body),
            Endpoint::Completions => response::chat(call, body).map(chat_to_completion),
            Endpoint::Embeddings => response::embeddings(call, body),
            Endpoint::Responses | Endpoint::Messages => {
                Err(crate::frontdoors::not_spoken(call.endpoint))
            }
        }
    }

    fn stream_decoder(&self, call: &Call<'_>) -> Box<dyn StreamDecoder> {
        let chat = Box::new(response::GeminiStream::new(call));
        match call.endpoint {
            Endpoint::Completions => Box::new(LegacyStream(chat)),
            _ => chat,
        }
    }

    fn map_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        map_error(status, headers, body)
    }

    /// Gemini takes images as inline bytes only (`fileData` needs Google's
    /// own file URIs), so the core fetches http(s) images first.
    fn needs_image_bytes(&self) -> bool {
        true
    }
}

fn chat_method(stream: bool) -> &'static str {
    if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    }
}

/// A non-2xx answer (see the error table in the module doc).
pub(crate) fn map_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    // Some front ends answer a list holding the error object.
    let err = parsed.as_ref().and_then(|v| match v {
        Value::Array(items) => items.first().and_then(|i| i.get("error")),
        other => other.get("error"),
    });
    let header_retry = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    error_from(status, err, header_retry)
}

/// The error object of a Gemini answer (or stream event) in Conduit's terms.
pub(crate) fn error_from(
    status: StatusCode,
    err: Option<&Value>,
    header_retry: Option<String>,
) -> GatewayError {
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the provider answered HTTP {}", status.as_u16()));
    let google_status = err
        .and_then(|e| e.get("status"))
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    let overloaded = status == StatusCode::SERVICE_UNAVAILABLE;
    if !status.is_client_error() && !overloaded {
        return GatewayError::Upstream(format!("HTTP {}: {message}", status.as_u16()));
    }
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 => "api_error",
        _ => "invalid_request_error",
    };
    let code = if status == StatusCode::TOO_MANY_REQUESTS {
        Some("rate_limit_exceeded".to_owned())
    } else {
        google_status
    };
    GatewayError::Provider {
        status,
        message,
        kind: kind.to_owned(),
        code,
        param: None,
        retry_after: header_retry.or_else(|| err.and_then(retry_delay)),
    }
}

/// `google.rpc.RetryInfo.retryDelay` ("34.4s") as whole seconds, rounded up.
fn retry_delay(err: &Value) -> Option<String> {
    let details = err.get("details")?.as_array()?;
    let delay = details.iter().find_map(|d| {
        let t = d.get("@type")?.as_str()?;
        if t.ends_with("google.rpc.RetryInfo") {
            d.get("retryDelay")?.as_str()
        } else {
            None
        }
    })?;
    let secs: f64 = delay.trim().strip_suffix('s')?.parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some((secs.ceil() as u64).to_string())
}

/// Gemini's `usageMetadata` as an OpenAI `usage` object (table in the module doc).
pub(crate) fn usage(meta: &Value) -> Value {
    let n = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(0);
    // Saturating: the counts are the provider's (fuzz/regressions).
    let prompt = n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount"));
    let thoughts = n("thoughtsTokenCount");
    let completion = n("candidatesTokenCount").saturating_add(thoughts);
    serde_json::json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": {"cached_tokens": n("cachedContentTokenCount")},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    })
}

/// A Gemini `finishReason` in OpenAI's terms; `tool_calls` when the
/// candidate called a function (Gemini says `STOP` for that too).
pub(crate) fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => "content_filter",
        _ if called_tools => "tool_calls",
        _ => "stop",
    }
}

/// Separates the minted part of a tool call id from the carried signature.
pub(crate) const SIGNATURE_MARK: &str = "~ts~";

/// The id of the `n`th function call of a response, carrying Gemini's
/// `thoughtSignature` if the call had one.
pub(crate) fn call_id(request_id: &str, n: usize, signature: Option<&str>) -> String {
    match signature {
        Some(s) if !s.is_empty() => format!("call_{request_id}_{n}{SIGNATURE_MARK}{s}"),
        _ => format!("call_{request_id}_{n}"),
    }
}
