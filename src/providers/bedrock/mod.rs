//! AWS Bedrock Runtime: `Converse` / `ConverseStream` for chat (and legacy
//! completions through chat), `InvokeModel` for Titan and Cohere
//! embeddings. Every request is signed with SigV4 ([`sigv4`]); streamed
//! answers arrive in AWS's binary eventstream framing ([`eventstream`]).
//!
//! ```toml
//! [providers.aws]
//! kind = "bedrock"
//! region = "us-east-1"                        # required (signing scope, default endpoint)
//! base_url = "https://bedrock-runtime.us-east-1.amazonaws.com"   # optional
//! access_key_id_env = "AWS_ACCESS_KEY_ID"     # defaults; required to be set
//! secret_access_key_env = "AWS_SECRET_ACCESS_KEY"
//! session_token_env = "AWS_SESSION_TOKEN"     # optional: sent as x-amz-security-token when set
//! ```
//!
//! | OpenAI endpoint | Bedrock call |
//! |---|---|
//! | `/v1/chat/completions` | `POST /model/{modelId}/converse` (`/converse-stream` when streaming) |
//! | `/v1/completions` | the same, the prompt as one user message ([`legacy`](super::legacy)); `max_tokens` defaults to 16 as in OpenAI's legacy API |
//! | `/v1/embeddings` | `POST /model/{modelId}/invoke`: `amazon.titan-embed-*` (`{inputText}`, one input per request) or `cohere.embed-*` (`{texts, input_type}`) |
//!
//! The model id is percent-encoded in the path (`…-v1:0` → `…-v1%3A0`, an
//! ARN's `/` → `%2F`).
//!
//! ## Messages and roles
//!
//! | OpenAI | Converse |
//! |---|---|
//! | `system` / `developer` messages (anywhere) | top-level `system: [{text}]`, in order |
//! | `user` (string or parts) | `user`, `content: [{text} \| {image: {format, source: {bytes}}}]` |
//! | `assistant` text, `refusal` parts | `assistant`, `[{text}]` |
//! | assistant `tool_calls[]` | `{toolUse: {toolUseId, name, input: object}}` (arguments parsed) |
//! | `tool` messages (`tool_call_id`) | `user` message with `{toolResult: {toolUseId, content: [{text}]}}`; consecutive results share one message |
//! | consecutive messages of one role | merged (Converse requires alternation) |
//! | `image_url` | `data:` URLs only (the core inlines http(s) images first: [`needs_image_bytes`](Provider::needs_image_bytes)); png, jpeg, gif, webp |
//! | `tools[].function` | `toolConfig.tools[].toolSpec{name, description, inputSchema: {json}}` |
//! | `tool_choice` `auto` / `required` / named | `toolChoice` `{auto:{}}` / `{any:{}}` / `{tool:{name}}` |
//! | `tool_choice: "none"`, or no `tools` | no `toolConfig`; tool calls and results in the history are sent as text (Converse refuses toolUse blocks without a toolConfig) |
//! | `response_format` `json_object` / `json_schema` | a forced tool `conduit_json_response` whose input schema is the requested one; its input comes back as the message `content` (and finish `stop`) |
//! | `max_completion_tokens` / `max_tokens`, `temperature`, `top_p`, `stop` | `inferenceConfig{maxTokens, temperature, topP, stopSequences}` (no default needed: Bedrock has one) |
//! | `user`, `metadata` | `requestMetadata` (entries AWS accepts; others left out) |
//! | `additionalModelRequestFields` (extra body) | passed through |
//! | `n > 1`, `logprobs`, `top_logprobs`, `frequency_penalty`, `presence_penalty`, `logit_bias`, `seed`, `parallel_tool_calls: false`, `audio`, non-text `modalities`, `prediction`, `store: true`, `reasoning_effort`, `web_search_options`, `functions`, `function_call`, `service_tier` other than `auto`/`default` | 400 naming the parameter, or dropped with `drop_unsupported_params` |
//!
//! ## Finish reasons (`stopReason`)
//!
//! | Bedrock | OpenAI `finish_reason` |
//! |---|---|
//! | `end_turn`, `stop_sequence` | `stop` |
//! | `max_tokens`, `model_context_window_exceeded` | `length` |
//! | `tool_use` | `tool_calls` (`stop` when the only tool used is the `response_format` tool) |
//! | `guardrail_intervened`, `content_filtered` | `content_filter` |
//! | `malformed_model_output`, `malformed_tool_use` | an error (502): the answer is not usable |
//! | anything else | `stop` |
//!
//! ## Usage
//!
//! Bedrock's `inputTokens` leaves out cache reads and writes (its
//! `totalTokens` adds them), so each prompt token is counted once as:
//!
//! | OpenAI | Bedrock |
//! |---|---|
//! | `prompt_tokens` | `inputTokens + cacheReadInputTokens + cacheWriteInputTokens` |
//! | `completion_tokens` | `outputTokens` (reasoning included) |
//! | `total_tokens` | `prompt_tokens + completion_tokens` |
//! | `prompt_tokens_details.cached_tokens` | `cacheReadInputTokens` (or `cacheReadInputTokenCount`) |
//! | `prompt_tokens_details.cache_write_tokens` | `cacheWriteInputTokens` (or `cacheWriteInputTokenCount`) |
//! | `completion_tokens_details.reasoning_tokens` | 0 (not reported apart) |
//! | embeddings `prompt_tokens` | Titan `inputTextTokenCount`; Cohere: 0 (its count is only in a response header) |
//!
//! When streaming, `stopReason` comes in `messageStop` and the usage only in
//! the `metadata` event after it (fixture T14): the finish chunk is held
//! until `metadata` and carries the usage; `Done` is sent at the end of the
//! body.
//!
//! ## Errors
//!
//! The type is the `x-amzn-ErrorType` header (before any `:`), else the
//! body's `__type` (after any `#`); the message is the body's `message`.
//!
//! | AWS type | HTTP | Conduit |
//! |---|---|---|
//! | `ValidationException` | 400 | 400 `invalid_request_error` |
//! | `AccessDeniedException` | 403 | 403 `permission_error` |
//! | `UnrecognizedClientException`, `InvalidSignatureException`, `ExpiredTokenException`, `IncompleteSignatureException`, `MissingAuthenticationTokenException` | 400/403 | the same status, `authentication_error` |
//! | `ResourceNotFoundException` | 404 | 404 `not_found_error` |
//! | `ThrottlingException`, `ServiceQuotaExceededException`, `TooManyRequestsException` | 429/400 | 429 `rate_limit_error`, `retry-after` passed on |
//! | `ServiceUnavailableException`, `ModelNotReadyException` | 503/429 | 503 `api_error` (retryable) |
//! | `ModelTimeoutException` | 408 | 504 (upstream timeout) |
//! | `InternalServerException`, `ModelErrorException`, `ModelStreamErrorException`, any 5xx | 5xx/424 | 502 `upstream_error` |
//! | any other 4xx | kept | kept, `invalid_request_error` |
//!
//! The AWS type is the error's `code`. In a stream, an exception frame
//! (`:message-type: exception`, type in `:exception-type`) ends the stream
//! with the same mapping (fixture T15).

pub mod eventstream;
pub mod messages;
pub mod sigv4;

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

use super::legacy::{chat_to_completion, completions_to_chat, LegacyStream};
use super::{required_secret, Call, Endpoint, Provider, StreamDecoder, StreamEvent};
use crate::config::RawProvider;
use crate::wire::error::GatewayError;
use eventstream::{Frame, FrameParser};
use sigv4::Credentials;

/// The tool that carries `response_format` (Converse has no JSON mode).
pub const JSON_TOOL: &str = "conduit_json_response";

/// The `bedrock` kind.
pub struct Bedrock {
    /// Without a trailing slash, e.g. `https://bedrock-runtime.us-east-1.amazonaws.com`.
    base_url: String,
    /// The `Host` header the HTTP client sends for `base_url`.
    host: String,
    /// The path of `base_url` (usually empty), as sent.
    base_path: String,
    region: String,
    creds: Credentials,
}

impl Bedrock {
    /// From a `[providers.NAME]` table: `region` is required; the credentials
    /// come from the environment variables the `*_env` fields name
    /// (defaults: the ones AWS Lambda sets).
    pub fn from_config(
        raw: &RawProvider,
        base_url: String,
        secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, (&'static str, String)> {
        let region = raw
            .region
            .as_ref()
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .ok_or((
                "region",
                "required for kind `bedrock` (e.g. \"us-east-1\"): it is part of every request's signature".to_owned(),
            ))?;
        if !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(("region", format!("`{region}` is not an AWS region name")));
        }
        let default = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_owned());
        let access_key_id = required_secret(
            Some(&default(&raw.access_key_id_env, "AWS_ACCESS_KEY_ID")),
            "access_key_id_env",
            secret,
        )?;
        let secret_access_key = required_secret(
            Some(&default(
                &raw.secret_access_key_env,
                "AWS_SECRET_ACCESS_KEY",
            )),
            "secret_access_key_env",
            secret,
        )?;
        let token_var = default(&raw.session_token_env, "AWS_SESSION_TOKEN");
        if token_var.trim().is_empty() {
            return Err((
                "session_token_env",
                "must name an environment variable".into(),
            ));
        }
        let session_token = secret(&token_var).filter(|t| !t.is_empty());
        let uri: http::Uri = base_url
            .parse()
            .map_err(|_| ("base_url", format!("`{base_url}` is not a URL")))?;
        let host = host_header(&uri).ok_or(("base_url", format!("`{base_url}` has no host")))?;
        if uri.query().is_some() {
            return Err(("base_url", "must not have a query string".into()));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Bedrock {
            base_url,
            host,
            base_path,
            region,
            creds: Credentials {
                access_key_id,
                secret_access_key,
                session_token,
            },
        })
    }

    /// The signed POST of `body` to `/model/{model}/{action}`.
    fn signed_post(
        &self,
        call: &Call<'_>,
        action: &str,
        body: &Value,
    ) -> Result<http::Request<Bytes>, GatewayError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| GatewayError::Internal(format!("cannot encode the request: {e}")))?;
        let model = sigv4::uri_encode(call.model);
        let path = format!("{}/model/{model}/{action}", self.base_path);
        let url = format!("{}/model/{model}/{action}", self.base_url);
        let signed = sigv4::sign_post(
            &self.creds,
            &self.region,
            &self.host,
            &path,
            "application/json",
            &body,
            call.now_secs,
        );
        let mut b = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::ACCEPT,
                if action.ends_with("stream") {
                    "application/vnd.amazon.eventstream"
                } else {
                    "application/json"
                },
            );
        for (k, v) in &signed.headers {
            b = b.header(*k, v.as_str());
        }
        b.body(Bytes::from(body))
            .map_err(|e| GatewayError::Internal(format!("cannot build the upstream request: {e}")))
    }
}

/// What an HTTP/1.1 client sends as `Host` for this URI: the host, and the
/// port only when it is not the scheme's default.
fn host_header(uri: &http::Uri) -> Option<String> {
    let host = uri.host()?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    Some(match uri.port_u16() {
        Some(p) if p != default_port => format!("{host}:{p}"),
        _ => host.to_owned(),
    })
}

impl Provider for Bedrock {
    fn build_request(
        &self,
        call: &Call<'_>,
        body: &mut Map<String, Value>,
    ) -> Result<http::Request<Bytes>, GatewayError> {
        match call.endpoint {
            Endpoint::Embeddings => {
                let invoke = embeddings_body(call.model, body, call.drop_unsupported_params)?;
                self.signed_post(call, "invoke", &invoke)
            }
            Endpoint::Completions | Endpoint::ChatCompletions => {
                if call.endpoint == Endpoint::Completions {
                    completions_to_chat(body, call.drop_unsupported_params)?;
                    // The legacy API's own default (and what admission reserved).
                    if ["max_tokens", "max_completion_tokens"]
                        .iter()
                        .all(|k| body.get(*k).is_none_or(Value::is_null))
                    {
                        body.insert("max_tokens".into(), 16.into());
                    }
                }
                let converse = converse_body(body, call.drop_unsupported_params)?;
                let action = if call.stream {
                    "converse-stream"
                } else {
                    "converse"
                };
                self.signed_post(call, action, &converse)
            }
            Endpoint::Messages if messages::is_claude(call.model) => {
                let action = if call.stream {
                    "invoke-with-response-stream"
                } else {
                    "invoke"
                };
                self.signed_post(call, action, &messages::invoke_body(body))
            }
            Endpoint::Messages | Endpoint::Responses => {
                Err(crate::frontdoors::not_spoken(call.endpoint))
            }
        }
    }

    fn translate_response(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<Map<String, Value>, GatewayError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|_| GatewayError::Upstream("the provider's answer is not JSON".into()))?;
        match call.endpoint {
            Endpoint::Embeddings => translate_embeddings(call, &v),
            Endpoint::ChatCompletions => translate_converse(call, &v),
            Endpoint::Completions => translate_converse(call, &v).map(chat_to_completion),
            Endpoint::Messages => messages::translate(v),
            Endpoint::Responses => Err(crate::frontdoors::not_spoken(call.endpoint)),
        }
    }

    fn stream_decoder(&self, call: &Call<'_>) -> Box<dyn StreamDecoder> {
        if call.endpoint == Endpoint::Messages {
            return Box::new(messages::InvokeStream::new());
        }
        let inner = ConverseStream::new(call);
        if call.endpoint == Endpoint::Completions {
            Box::new(LegacyStream(Box::new(inner)))
        } else {
            Box::new(inner)
        }
    }

    fn map_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let header_type = headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|t| t.split(':').next().unwrap_or(t).trim().to_owned())
            .filter(|t| !t.is_empty());
        let body_type = parsed
            .as_ref()
            .and_then(|v| v.get("__type").or_else(|| v.get("code")))
            .and_then(Value::as_str)
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned());
        let kind = header_type.or(body_type).unwrap_or_default();
        let message = parsed
            .as_ref()
            .and_then(|v| v.get("message").or_else(|| v.get("Message")))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| match std::str::from_utf8(body) {
                Ok(s) if !s.trim().is_empty() && s.len() < 500 => s.trim().to_owned(),
                _ => format!("the provider answered HTTP {}", status.as_u16()),
            });
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        aws_error(&kind, status, message, retry_after)
    }

    fn needs_image_bytes(&self) -> bool {
        true
    }

    /// Claude models take the Messages API body through `InvokeModel`.
    fn speaks(&self, call: &Call<'_>) -> bool {
        call.endpoint == Endpoint::Messages && messages::is_claude(call.model)
    }
}

/// The mapping table of the module doc, for HTTP errors and stream exceptions.
fn aws_error(
    kind: &str,
    status: StatusCode,
    message: String,
    retry_after: Option<String>,
) -> GatewayError {
    // Stream exceptions name the type in lower camel case (`throttlingException`).
    let mut chars = kind.chars();
    let normal: String = match chars.next() {
        Some(c) => c.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    };
    let provider = |status: StatusCode, type_: &str| GatewayError::Provider {
        status,
        message: message.clone(),
        kind: type_.to_owned(),
        code: (!normal.is_empty()).then(|| normal.clone()),
        param: None,
        retry_after: retry_after.clone(),
    };
    let client_status = |fallback: StatusCode| {
        if status.is_client_error() {
            status
        } else {
            fallback
        }
    };
    match normal.as_str() {
        "ValidationException" => provider(StatusCode::BAD_REQUEST, "invalid_request_error"),
        "AccessDeniedException" => provider(StatusCode::FORBIDDEN, "permission_error"),
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "IncompleteSignatureException"
        | "MissingAuthenticationTokenException" => {
            provider(client_status(StatusCode::FORBIDDEN), "authentication_error")
        }
        "ResourceNotFoundException" => provider(StatusCode::NOT_FOUND, "not_found_error"),
        "ThrottlingException" | "ServiceQuotaExceededException" | "TooManyRequestsException" => {
            provider(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error")
        }
        "ServiceUnavailableException" | "ModelNotReadyException" => {
            provider(StatusCode::SERVICE_UNAVAILABLE, "api_error")
        }
        "ModelTimeoutException" => GatewayError::UpstreamTimeout,
        "InternalServerException" | "ModelErrorException" | "ModelStreamErrorException" => {
            GatewayError::Upstream(format!("{normal}: {message}"))
        }
        _ if status.is_client_error() => {
            let type_ = match status.as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                _ => "invalid_request_error",
            };
            provider(status, type_)
        }
        _ if normal.is_empty() => {
            GatewayError::Upstream(format!("HTTP {}: {message}", status.as_u16()))
        }
        _ => GatewayError::Upstream(format!("{normal}: {message}")),
    }
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

fn unsupported_msg(p: &str) -> String {
    format!("`{p}` is not supported by this model's provider (AWS Bedrock); set drop_unsupported_params = true on the deployment to ignore it.")
}

/// Whether a parameter's value is one Converse cannot honour.
type Check = dyn Fn(&Value) -> bool;

/// Refuses (or, with `drop`, removes) what Converse cannot honour.
fn check_unsupported(body: &mut Map<String, Value>, drop: bool) -> Result<(), GatewayError> {
    let set = |v: &Value| !v.is_null();
    let nonzero =
        |v: &Value| v.as_f64().is_some_and(|x| x != 0.0) || (!v.is_null() && !v.is_number());
    let checks: [(&str, &Check); 17] = [
        ("n", &|v| v.as_u64() != Some(1) && !v.is_null()),
        ("logprobs", &|v| *v == Value::Bool(true)),
        ("top_logprobs", &set),
        ("frequency_penalty", &nonzero),
        ("presence_penalty", &nonzero),
        ("logit_bias", &|v| {
            v.as_object().is_some_and(|o| !o.is_empty())
        }),
        ("seed", &set),
        ("parallel_tool_calls", &|v| *v == Value::Bool(false)),
        ("audio", &set),
        ("modalities", &|v| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|m| m.as_str() != Some("text")))
        }),
        ("prediction", &set),
        ("store", &|v| *v == Value::Bool(true)),
        ("reasoning_effort", &set),
        ("web_search_options", &set),
        ("functions", &set),
        ("function_call", &set),
        ("service_tier", &|v| {
            !v.is_null() && !matches!(v.as_str(), Some("auto" | "default"))
        }),
    ];
    for (p, bad) in checks {
        if body.get(p).is_some_and(bad) {
            if drop {
                body.remove(p);
            } else {
                return Err(GatewayError::invalid(unsupported_msg(p), Some(p)));
            }
        }
    }
    Ok(())
}

fn invalid(msg: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid(msg, Some(param))
}

/// Converse's `inferenceConfig`.
fn inference_config(body: &Map<String, Value>) -> Result<Map<String, Value>, GatewayError> {
    let mut cfg = Map::new();
    for p in ["max_completion_tokens", "max_tokens"] {
        match body.get(p) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let n = v
                    .as_u64()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| invalid(format!("`{p}` must be a positive integer."), p))?;
                cfg.insert("maxTokens".into(), n.into());
                break;
            }
        }
    }
    for (p, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        match body.get(p) {
            None | Some(Value::Null) => {}
            Some(v) if v.is_number() => {
                cfg.insert(to.into(), v.clone());
            }
            Some(_) => return Err(invalid(format!("`{p}` must be a number."), p)),
        }
    }
    if let Some(stop) = super::stop_sequences(body.get("stop"))? {
        cfg.insert("stopSequences".into(), stop);
    }
    Ok(cfg)
}

/// `requestMetadata` from `user` and `metadata`: only what AWS accepts
/// (keys 1–256, values 0–256 characters of `[a-zA-Z0-9\s:_@$#=/+,.-]`).
fn request_metadata(body: &Map<String, Value>) -> Map<String, Value> {
    let ok = |s: &str, min: usize| {
        s.len() >= min
            && s.len() <= 256
            && s.chars().all(|c| {
                c.is_ascii_alphanumeric() || c.is_whitespace() || ":_@$#=/+,.-".contains(c)
            })
    };
    let mut meta = Map::new();
    if let Some(Value::Object(m)) = body.get("metadata") {
        for (k, v) in m {
            if let Some(s) = v.as_str() {
                if ok(k, 1) && ok(s, 0) {
                    meta.insert(k.clone(), s.into());
                }
            }
        }
    }
    if let Some(u) = body.get("user").and_then(Value::as_str) {
        if ok(u, 0) {
            meta.insert("user".into(), u.into());
        }
    }
    meta
}

/// `toolConfig`, or `None` when the model may not call tools.
fn tool_config(body: &Map<String, Value>) -> Result<Option<Value>, GatewayError> {
    let choice = body.get("tool_choice").filter(|v| !v.is_null());
    let none = choice.and_then(Value::as_str) == Some("none");
    let mut tools = Vec::new();
    if !none {
        match body.get("tools") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (i, t) in list.iter().enumerate() {
                    let param = format!("tools[{i}]");
                    if t.get("type").and_then(Value::as_str) != Some("function") {
                        return Err(invalid(
                            format!("`{param}`: only tools of type `function` are supported by this model's provider."),
                            &param,
                        ));
                    }
                    let f = t
                        .get("function")
                        .and_then(Value::as_object)
                        .ok_or_else(|| {
                            invalid(format!("`{param}.function` is required."), &param)
                        })?;
                    let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
                        invalid(
                            format!("`{param}.function.name` is required."),
                            &format!("{param}.function.name"),
                        )
                    })?;
                    let schema = f
                        .get("parameters")
                        .filter(|p| p.is_object())
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                    let mut spec = Map::new();
                    spec.insert("name".into(), name.into());
                    if let Some(d) = f.get("description").and_then(Value::as_str) {
                        if !d.is_empty() {
                            spec.insert("description".into(), d.into());
                        }
                    }
                    spec.insert("inputSchema".into(), json!({ "json": schema }));
                    tools.push(json!({ "toolSpec": spec }));
                }
            }
            Some(_) => return Err(invalid("`tools` must be an array.", "tools")),
        }
    }
    let client_tools = !tools.is_empty();
    let client_choice = match choice {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" | "none" => Some(json!({"auto": {}})),
            "required" => Some(json!({"any": {}})),
            _ => {
                return Err(invalid(
                    "`tool_choice` must be `none`, `auto`, `required` or a named function.",
                    "tool_choice",
                ))
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    invalid("`tool_choice.function.name` is required.", "tool_choice")
                })?;
            Some(json!({"tool": {"name": name}}))
        }
        Some(_) => return Err(invalid("`tool_choice` is malformed.", "tool_choice")),
    };

    // response_format: a tool whose input is the answer.
    let json_tool = match body.get("response_format").filter(|v| !v.is_null()) {
        None => None,
        Some(rf) => match rf.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_object") => Some((
                json!({"type": "object"}),
                "Give your answer as a JSON object by calling this tool.".to_owned(),
            )),
            Some("json_schema") => {
                let js = rf.get("json_schema");
                let schema = js
                    .and_then(|j| j.get("schema"))
                    .filter(|s| s.is_object())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"}));
                let mut desc =
                    "Give your answer by calling this tool with a value matching its schema."
                        .to_owned();
                if let Some(d) = js
                    .and_then(|j| j.get("description"))
                    .and_then(Value::as_str)
                {
                    desc.push(' ');
                    desc.push_str(d);
                }
                Some((schema, desc))
            }
            _ => {
                return Err(invalid(
                    "`response_format.type` must be `text`, `json_object` or `json_schema`.",
                    "response_format",
                ))
            }
        },
    };
    let tool_choice = match json_tool {
        Some((schema, description)) => {
            tools.push(json!({"toolSpec": {
                "name": JSON_TOOL,
                "description": description,
                "inputSchema": {"json": schema},
            }}));
            if client_tools {
                // The answer is either a call of the client's tools or the JSON.
                match client_choice {
                    Some(c) if c.get("tool").is_some() => c,
                    _ => json!({"any": {}}),
                }
            } else {
                json!({"tool": {"name": JSON_TOOL}})
            }
        }
        None if !client_tools => return Ok(None),
        None => client_choice.unwrap_or_else(|| json!({"auto": {}})),
    };
    Ok(Some(json!({"tools": tools, "toolChoice": tool_choice})))
}

/// `data:image/png;base64,…` → Converse's image block.
fn image_block(part: &Value, param: &str) -> Result<Value, GatewayError> {
    let url = match part.get("image_url") {
        Some(Value::String(s)) => s.as_str(),
        Some(v) => v.get("url").and_then(Value::as_str).unwrap_or_default(),
        None => "",
    };
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(invalid(
            format!("`{param}`: this model's provider takes images as data: URLs (base64)."),
            param,
        ));
    };
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| invalid(format!("`{param}` is not a valid data: URL."), param))?;
    let mut meta_parts = meta.split(';');
    let mime = meta_parts.next().unwrap_or_default().to_ascii_lowercase();
    if !meta_parts.any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(invalid(
            format!("`{param}`: the data: URL must be base64-encoded."),
            param,
        ));
    }
    let format = match mime.as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => {
            return Err(invalid(
                format!("`{param}`: image type `{mime}` is not supported (png, jpeg, gif, webp)."),
                param,
            ))
        }
    };
    let bytes: String = data.chars().filter(|c| !c.is_whitespace()).collect();
    Ok(json!({"image": {"format": format, "source": {"bytes": bytes}}}))
}

/// Content (string or parts) as Converse blocks. Blank text is left out:
/// Converse refuses blank text blocks.
fn content_blocks(
    content: Option<&Value>,
    param: &str,
    images: bool,
) -> Result<Vec<Value>, GatewayError> {
    let text = |s: &str| (!s.trim().is_empty()).then(|| json!({ "text": s }));
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(text(s).into_iter().collect()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                let pp = format!("{param}[{j}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => out.extend(text(p.get("text").and_then(Value::as_str).unwrap_or_default())),
                    Some("refusal") => out.extend(text(p.get("refusal").and_then(Value::as_str).unwrap_or_default())),
                    Some("image_url") if images => out.push(image_block(p, &pp)?),
                    other => {
                        return Err(invalid(
                            format!(
                                "`{pp}`: content parts of type `{}` are not supported here by this model's provider.",
                                other.unwrap_or("?")
                            ),
                            &pp,
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(invalid(
            format!("`{param}` must be a string or an array of parts."),
            param,
        )),
    }
}

/// Plain text of a content (for system prompts and tool results).
fn plain_text(content: Option<&Value>, param: &str) -> Result<String, GatewayError> {
    let blocks = content_blocks(content, param, false)?;
    Ok(blocks
        .iter()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `(system, messages)` in Converse's shape. With `tools_as_text`, tool
/// calls and results in the history become text (no `toolConfig` is sent).
fn convert_messages(
    messages: &[Value],
    tools_as_text: bool,
) -> Result<(Vec<Value>, Vec<Value>), GatewayError> {
    let mut system = Vec::new();
    let mut out: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = m.get("content");
        let (role, blocks): (&'static str, Vec<Value>) = match role {
            "system" | "developer" => {
                let t = plain_text(content, &format!("{param}.content"))?;
                if !t.trim().is_empty() {
                    system.push(json!({ "text": t }));
                }
                continue;
            }
            "user" => (
                "user",
                content_blocks(content, &format!("{param}.content"), true)?,
            ),
            "assistant" => {
                let mut blocks = content_blocks(content, &format!("{param}.content"), false)?;
                if let Some(Value::Array(calls)) = m.get("tool_calls") {
                    for (j, c) in calls.iter().enumerate() {
                        let cp = format!("{param}.tool_calls[{j}]");
                        let id = c
                            .get("id")
                            .and_then(Value::as_str)
                            .ok_or_else(|| invalid(format!("`{cp}.id` is required."), &cp))?;
                        let f = c.get("function");
                        let name = f
                            .and_then(|f| f.get("name"))
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                invalid(format!("`{cp}.function.name` is required."), &cp)
                            })?;
                        let args = f
                            .and_then(|f| f.get("arguments"))
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        if tools_as_text {
                            blocks
                                .push(json!({"text": format!("[tool call {id}: {name}({args})]")}));
                            continue;
                        }
                        let input: Value = if args.trim().is_empty() {
                            json!({})
                        } else {
                            serde_json::from_str(args).map_err(|_| {
                                invalid(
                                    format!("`{cp}.function.arguments` is not valid JSON."),
                                    &format!("{cp}.function.arguments"),
                                )
                            })?
                        };
                        blocks.push(
                            json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}),
                        );
                    }
                }
                ("assistant", blocks)
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        invalid(
                            format!("`{param}.tool_call_id` is required."),
                            &format!("{param}.tool_call_id"),
                        )
                    })?;
                let text = plain_text(content, &format!("{param}.content"))?;
                let block = if tools_as_text {
                    json!({"text": format!("[tool result {id}: {text}]")})
                } else {
                    let content = if text.is_empty() {
                        Vec::new()
                    } else {
                        vec![json!({ "text": text })]
                    };
                    json!({"toolResult": {"toolUseId": id, "content": content}})
                };
                ("user", vec![block])
            }
            other => {
                return Err(invalid(
                    format!("`{param}.role` `{other}` is not supported by this model's provider."),
                    &format!("{param}.role"),
                ))
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match out.last_mut() {
            // Converse wants user and assistant turns to alternate.
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => out.push((role, blocks)),
        }
    }
    let messages = out
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, messages))
}

/// An OpenAI chat body as a Converse body.
fn converse_body(body: &mut Map<String, Value>, drop: bool) -> Result<Value, GatewayError> {
    check_unsupported(body, drop)?;
    let tool_config = tool_config(body)?;
    let messages = match body.get("messages") {
        Some(Value::Array(m)) => m,
        _ => return Err(invalid("`messages` must be an array.", "messages")),
    };
    let (system, messages) = convert_messages(messages, tool_config.is_none())?;
    if messages.is_empty() {
        return Err(invalid(
            "`messages` must hold at least one user message with content.",
            "messages",
        ));
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let cfg = inference_config(body)?;
    if !cfg.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(cfg));
    }
    if let Some(tc) = tool_config {
        out.insert("toolConfig".into(), tc);
    }
    let meta = request_metadata(body);
    if !meta.is_empty() {
        out.insert("requestMetadata".into(), Value::Object(meta));
    }
    if let Some(extra @ Value::Object(_)) = body.get("additionalModelRequestFields") {
        out.insert("additionalModelRequestFields".into(), extra.clone());
    }
    Ok(Value::Object(out))
}

/// The embedding model families `InvokeModel` is spoken to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum EmbedFamily {
    Titan,
    Cohere,
}

fn embed_family(model: &str) -> Option<EmbedFamily> {
    // Also inside inference-profile ids and ARNs (`us.cohere.embed-…`, `…/amazon.titan-embed-…`).
    if model.contains("amazon.titan-embed") {
        Some(EmbedFamily::Titan)
    } else if model.contains("cohere.embed") {
        Some(EmbedFamily::Cohere)
    } else {
        None
    }
}

fn embeddings_body(
    model: &str,
    body: &mut Map<String, Value>,
    drop: bool,
) -> Result<Value, GatewayError> {
    let family = embed_family(model).ok_or_else(|| {
        GatewayError::invalid(
            format!("`{model}` is not an embedding model this gateway can call on Bedrock (amazon.titan-embed-*, cohere.embed-*)."),
            Some("model"),
        )
    })?;
    let texts: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => {
            return Err(invalid(
                "`input` must be a string or an array of strings for this model's provider (token arrays are not supported).",
                "input",
            ))
        }
    };
    // `encoding_format` is accepted and answered with floats: the OpenAI
    // SDKs ask for base64 by default and read floats as well.
    match family {
        EmbedFamily::Titan => {
            if texts.len() != 1 {
                return Err(invalid(
                    "Titan embedding models take one input per request: send `input` as one string.",
                    "input",
                ));
            }
            let mut out = json!({"inputText": texts[0]});
            if let Some(d) = body.get("dimensions").filter(|d| !d.is_null()) {
                out["dimensions"] = d.clone();
            }
            Ok(out)
        }
        EmbedFamily::Cohere => {
            if body.get("dimensions").is_some_and(|d| !d.is_null()) {
                if drop {
                    body.remove("dimensions");
                } else {
                    return Err(invalid(unsupported_msg("dimensions"), "dimensions"));
                }
            }
            let input_type = body
                .get("input_type")
                .and_then(Value::as_str)
                .unwrap_or("search_document");
            Ok(json!({"texts": texts, "input_type": input_type}))
        }
    }
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

fn n(v: &Value, keys: &[&str]) -> u64 {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64))
        .unwrap_or(0)
}

/// Bedrock `usage` → OpenAI `usage` (module doc, *Usage*).
fn openai_usage(u: &Value) -> Value {
    let input = n(u, &["inputTokens"]);
    let output = n(u, &["outputTokens"]);
    let cache_read = n(u, &["cacheReadInputTokens", "cacheReadInputTokenCount"]);
    let cache_write = n(u, &["cacheWriteInputTokens", "cacheWriteInputTokenCount"]);
    // Saturating: the counts are the provider's (fuzz/regressions).
    let prompt = input.saturating_add(cache_read).saturating_add(cache_write);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt.saturating_add(output),
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
        "completion_tokens_details": {"reasoning_tokens": 0},
    })
}

/// `stopReason` → `finish_reason`; `Err` for answers that are not usable.
fn finish_reason(stop: &str, client_tool_calls: bool) -> Result<&'static str, GatewayError> {
    Ok(match stop {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" if client_tool_calls => "tool_calls",
        "tool_use" => "stop",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        "malformed_model_output" | "malformed_tool_use" => {
            return Err(GatewayError::Upstream(format!(
                "the model's answer was malformed (stopReason `{stop}`)"
            )))
        }
        _ => "stop",
    })
}

fn chat_id(call: &Call<'_>) -> String {
    format!("chatcmpl-{}", call.request_id)
}

fn translate_converse(call: &Call<'_>, v: &Value) -> Result<Map<String, Value>, GatewayError> {
    let blocks = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            GatewayError::Upstream("the provider's answer has no output message".into())
        })?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        if let Some(t) = b.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(t) = b
            .pointer("/reasoningContent/reasoningText/text")
            .and_then(Value::as_str)
        {
            reasoning.push_str(t);
        } else if let Some(tu) = b.get("toolUse") {
            let input = tu.get("input").cloned().unwrap_or_else(|| json!({}));
            let args = serde_json::to_string(&input).unwrap_or_else(|_| "{}".into());
            let name = tu.get("name").and_then(Value::as_str).unwrap_or_default();
            if name == JSON_TOOL {
                text.push_str(&args);
                continue;
            }
            tool_calls.push(json!({
                "id": tu.get("toolUseId").and_then(Value::as_str).unwrap_or_default(),
                "type": "function",
                "function": {"name": name, "arguments": args},
            }));
        }
    }
    let stop = v
        .get("stopReason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let finish = finish_reason(stop, !tool_calls.is_empty())?;
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if text.is_empty() && !tool_calls.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        },
    );
    message.insert("refusal".into(), Value::Null);
    if !reasoning.is_empty() {
        message.insert("reasoning_content".into(), reasoning.into());
    }
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let mut out = Map::new();
    out.insert("id".into(), chat_id(call).into());
    out.insert("object".into(), "chat.completion".into());
    out.insert("created".into(), call.now_secs.into());
    out.insert("model".into(), call.model.into());
    out.insert(
        "choices".into(),
        json!([{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}]),
    );
    out.insert(
        "usage".into(),
        openai_usage(v.get("usage").unwrap_or(&Value::Null)),
    );
    Ok(out)
}

fn translate_embeddings(call: &Call<'_>, v: &Value) -> Result<Map<String, Value>, GatewayError> {
    let bad = || GatewayError::Upstream("the provider's embedding answer is not readable".into());
    let (vectors, tokens): (Vec<Value>, u64) = if let Some(e) = v.get("embedding") {
        // Titan: one vector.
        (vec![e.clone()], n(v, &["inputTextTokenCount"]))
    } else {
        // Cohere: a list of vectors, or vectors by type when `embedding_types` was sent.
        let list = match v.get("embeddings") {
            Some(Value::Array(a)) => a.clone(),
            Some(Value::Object(o)) => o
                .get("float")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        (list, 0)
    };
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e}))
        .collect();
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

/// What a content block of the stream is.
#[derive(Debug, Clone, Copy)]
enum Block {
    /// A client tool call: its OpenAI `index`.
    Tool(usize),
    /// The `response_format` tool: its input is streamed as content.
    Json,
}

/// ConverseStream's eventstream body as OpenAI chunks.
struct ConverseStream {
    frames: FrameParser,
    parsed: Vec<Result<Frame, String>>,
    id: String,
    created: u64,
    model: String,
    blocks: HashMap<u64, Block>,
    tools: usize,
    stop_reason: Option<String>,
    usage: Option<Value>,
    /// The finish chunk went out.
    finished: bool,
    /// An error (or Done) went out: nothing more.
    ended: bool,
}

impl ConverseStream {
    fn new(call: &Call<'_>) -> Self {
        ConverseStream {
            frames: FrameParser::new(),
            parsed: Vec::new(),
            id: chat_id(call),
            created: call.now_secs,
            model: call.model.to_owned(),
            blocks: HashMap::new(),
            tools: 0,
            stop_reason: None,
            usage: None,
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

    fn fail(&mut self, out: &mut Vec<StreamEvent>, e: GatewayError) {
        self.ended = true;
        out.push(StreamEvent::Error(e));
    }

    /// The finish chunk, with the usage when `metadata` came.
    fn emit_finish(&mut self, out: &mut Vec<StreamEvent>) {
        let Some(stop) = self.stop_reason.clone() else {
            return;
        };
        match finish_reason(&stop, self.tools > 0) {
            Ok(f) => {
                let mut c = self.chunk(json!({}), Some(f));
                if let Some(u) = self.usage.take() {
                    c.insert("usage".into(), u);
                }
                self.finished = true;
                out.push(StreamEvent::Chunk(c));
            }
            Err(e) => self.fail(out, e),
        }
    }

    fn frame(&mut self, frame: Frame, out: &mut Vec<StreamEvent>) {
        match frame.header(":message-type").unwrap_or("event") {
            "exception" => {
                let kind = frame
                    .header(":exception-type")
                    .unwrap_or_default()
                    .to_owned();
                let payload: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
                let mut message = payload
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the provider reported an error in the stream")
                    .to_owned();
                if let Some(orig) = payload.get("originalMessage").and_then(Value::as_str) {
                    message.push_str(&format!(" ({orig})"));
                }
                let e = aws_error(&kind, StatusCode::INTERNAL_SERVER_ERROR, message, None);
                self.fail(out, e);
            }
            "error" => {
                let code = frame.header(":error-code").unwrap_or("error").to_owned();
                let msg = frame
                    .header(":error-message")
                    .unwrap_or_default()
                    .to_owned();
                self.fail(out, GatewayError::Upstream(format!("{code}: {msg}")));
            }
            _ => {
                let Ok(payload) = serde_json::from_slice::<Value>(&frame.payload) else {
                    self.fail(
                        out,
                        GatewayError::Upstream(
                            "the provider sent an unreadable stream event".into(),
                        ),
                    );
                    return;
                };
                let event = frame.header(":event-type").unwrap_or_default().to_owned();
                self.event(&event, &payload, out);
            }
        }
    }

    fn event(&mut self, event: &str, p: &Value, out: &mut Vec<StreamEvent>) {
        let block_index = p
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match event {
            "messageStart" => {
                out.push(StreamEvent::Chunk(
                    self.chunk(json!({"role": "assistant", "content": ""}), None),
                ));
            }
            "contentBlockStart" => {
                let Some(tu) = p.pointer("/start/toolUse") else {
                    return;
                };
                let name = tu.get("name").and_then(Value::as_str).unwrap_or_default();
                if name == JSON_TOOL {
                    self.blocks.insert(block_index, Block::Json);
                    return;
                }
                let index = self.tools;
                self.tools += 1;
                self.blocks.insert(block_index, Block::Tool(index));
                let id = tu
                    .get("toolUseId")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                out.push(StreamEvent::Chunk(self.chunk(
                    json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    None,
                )));
            }
            "contentBlockDelta" => {
                let Some(d) = p.get("delta") else { return };
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    out.push(StreamEvent::Chunk(
                        self.chunk(json!({ "content": t }), None),
                    ));
                } else if let Some(frag) = d.pointer("/toolUse/input").and_then(Value::as_str) {
                    match self.blocks.get(&block_index) {
                        Some(Block::Json) => out.push(StreamEvent::Chunk(
                            self.chunk(json!({ "content": frag }), None),
                        )),
                        Some(Block::Tool(i)) => out.push(StreamEvent::Chunk(self.chunk(
                            json!({"tool_calls": [{"index": i, "function": {"arguments": frag}}]}),
                            None,
                        ))),
                        // A fragment of a call never announced: nothing to attach it to.
                        None => {}
                    }
                } else if let Some(t) = d.pointer("/reasoningContent/text").and_then(Value::as_str)
                {
                    out.push(StreamEvent::Chunk(
                        self.chunk(json!({ "reasoning_content": t }), None),
                    ));
                }
            }
            "messageStop" => {
                self.stop_reason = Some(
                    p.get("stopReason")
                        .and_then(Value::as_str)
                        .unwrap_or("end_turn")
                        .to_owned(),
                );
                // Usage comes after, in `metadata`: hold the finish chunk (T14).
            }
            "metadata" => {
                if let Some(u) = p.get("usage") {
                    self.usage = Some(openai_usage(u));
                }
                if !self.finished {
                    self.emit_finish(out);
                }
            }
            // contentBlockStop, and events this gateway has no use for.
            _ => {}
        }
    }

    fn drain(&mut self, out: &mut Vec<StreamEvent>) {
        let parsed = std::mem::take(&mut self.parsed);
        for f in parsed {
            if self.ended {
                break;
            }
            match f {
                Ok(frame) => self.frame(frame, out),
                Err(why) => self.fail(
                    out,
                    GatewayError::Upstream(format!(
                        "the provider's event stream is corrupt: {why}"
                    )),
                ),
            }
        }
    }
}

impl StreamDecoder for ConverseStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        self.frames.feed(bytes, &mut self.parsed);
        self.drain(out);
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        if self.frames.pending() > 0 {
            self.fail(
                out,
                GatewayError::Upstream("the provider's stream ended inside a frame".into()),
            );
            return;
        }
        if self.stop_reason.is_none() {
            self.fail(
                out,
                GatewayError::Upstream("the provider's stream ended before messageStop".into()),
            );
            return;
        }
        if !self.finished {
            self.emit_finish(out);
        }
        if !self.ended {
            self.ended = true;
            out.push(StreamEvent::Done);
        }
    }
}

#[cfg(test)]
mod tests;
