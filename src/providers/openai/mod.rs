//! OpenAI, and every host that speaks its API (`openai-compatible`: Mistral,
//! Groq, Together, DeepSeek, Fireworks, OpenRouter, Ollama, vLLM…).
//!
//! The body passes through untouched except `model` (the deployment's model)
//! and, for streams, `stream_options.include_usage = true` so that every
//! stream is metered. For `openai-compatible` hosts, answers are normalised
//! to what OpenAI's schema promises (fixtures T5/T18: Mistral omits `index`,
//! `type`, `content`; Groq sends a `service_tier` outside OpenAI's enum).
//!
//! The `openai` kind also speaks the Responses API: `/v1/responses` calls
//! go to `{base_url}/responses` untouched but for `model`, streams included
//! ([`crate::frontdoors::responses`]); `openai-compatible` hosts get them
//! through chat.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

pub mod passthrough;

use super::{json_post, Call, Endpoint, Provider, StreamDecoder, StreamEvent};
use crate::frontdoors::chat::RawRequest;
use crate::wire::error::GatewayError;
use crate::wire::sse::SseParser;

/// The `openai` and `openai-compatible` kinds.
pub struct OpenAi {
    base_url: String,
    /// `Bearer …`, ready to send.
    authorization: Option<String>,
    /// The host serves `/responses` (OpenAI itself).
    responses_api: bool,
    /// The parts of a spliced request that do not change between calls.
    spliced: Option<SplicedTarget>,
}

/// The URLs of the spliceable endpoints and the `Authorization` header,
/// parsed once: a request then costs reference-count increments, not a URL
/// parse and header validation.
struct SplicedTarget {
    /// `chat/completions`, `completions`, `embeddings`, in that order.
    uris: [http::Uri; 3],
    authorization: Option<http::HeaderValue>,
}

impl SplicedTarget {
    fn new(base_url: &str, authorization: Option<&str>) -> Option<Self> {
        let uri = |e: Endpoint| http::Uri::try_from(format!("{base_url}/{}", e.path())).ok();
        let authorization = match authorization {
            Some(a) => {
                let mut v = http::HeaderValue::from_str(a).ok()?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Some(SplicedTarget {
            uris: [
                uri(Endpoint::ChatCompletions)?,
                uri(Endpoint::Completions)?,
                uri(Endpoint::Embeddings)?,
            ],
            authorization,
        })
    }

    /// The request for a spliceable `endpoint`, with `body`.
    fn request(&self, endpoint: Endpoint, body: Vec<u8>) -> Option<http::Request<Bytes>> {
        let uri = match endpoint {
            Endpoint::ChatCompletions => &self.uris[0],
            Endpoint::Completions => &self.uris[1],
            Endpoint::Embeddings => &self.uris[2],
            Endpoint::Responses | Endpoint::Messages => return None,
        };
        let mut request = http::Request::new(Bytes::from(body));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some(auth) = &self.authorization {
            headers.insert(http::header::AUTHORIZATION, auth.clone());
        }
        Some(request)
    }
}

impl OpenAi {
    pub fn new(base_url: String, api_key: Option<String>) -> Self {
        let authorization = api_key.map(|k| format!("Bearer {k}"));
        OpenAi {
            spliced: SplicedTarget::new(&base_url, authorization.as_deref()),
            base_url,
            authorization,
            responses_api: false,
        }
    }

    /// The same, for a host that serves the Responses API.
    pub fn with_responses_api(mut self) -> Self {
        self.responses_api = true;
        self
    }
}

impl Provider for OpenAi {
    fn build_request(
        &self,
        call: &Call<'_>,
        body: &mut Map<String, Value>,
    ) -> Result<http::Request<Bytes>, GatewayError> {
        if call.endpoint == Endpoint::Messages {
            return Err(crate::frontdoors::not_spoken(call.endpoint));
        }
        let body = prepare_body(
            body,
            call.model,
            call.stream && call.endpoint != Endpoint::Responses,
        )?;
        let url = format!("{}/{}", self.base_url, call.endpoint.path());
        match &self.authorization {
            Some(auth) => json_post(&url, &[("authorization", auth)], body),
            None => json_post(&url, &[], body),
        }
    }

    fn splice_request(
        &self,
        call: &Call<'_>,
        body: &RawRequest<'_>,
    ) -> Option<Result<http::Request<Bytes>, GatewayError>> {
        if !spliceable(call.endpoint) {
            return None;
        }
        let body = splice_body(body, call.model, call.stream);
        if let Some(target) = &self.spliced {
            return target.request(call.endpoint, body).map(Ok);
        }
        // A base URL or key that does not parse: the error names it.
        let url = format!("{}/{}", self.base_url, call.endpoint.path());
        Some(match &self.authorization {
            Some(auth) => json_post(&url, &[("authorization", auth)], body),
            None => json_post(&url, &[], body),
        })
    }

    // Answers and streams are OpenAI's: the trait's defaults read them
    // (translate_response, pass_through, stream_decoder, streams_openai_chunks).
    fn speaks_openai(&self) -> bool {
        true
    }

    fn map_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        map_openai_error(status, headers, body)
    }

    fn speaks(&self, call: &Call<'_>) -> bool {
        self.responses_api && call.endpoint == Endpoint::Responses
    }

    fn stored_response_request(
        &self,
        id: &str,
    ) -> Option<Result<http::Request<Bytes>, GatewayError>> {
        if !self.responses_api {
            return None;
        }
        let url = format!(
            "{}/responses/{}",
            self.base_url,
            crate::frontdoors::segment(id)
        );
        Some(match &self.authorization {
            Some(auth) => crate::frontdoors::get(&url, &[("authorization", auth)]),
            None => crate::frontdoors::get(&url, &[]),
        })
    }
}

/// The decoder of an OpenAI-format stream: chat (or legacy) chunks, or the
/// Responses API's events passed through.
pub(crate) fn openai_stream(call: &Call<'_>) -> Box<dyn StreamDecoder> {
    if call.endpoint == Endpoint::Responses {
        Box::new(crate::frontdoors::responses::native::NativeResponses::new())
    } else {
        Box::new(OpenAiStream::new())
    }
}

/// Sets the deployment's model and, for streams, forces usage reporting;
/// everything else passes through as the client sent it.
pub(crate) fn prepare_body(
    body: &mut Map<String, Value>,
    model: &str,
    stream: bool,
) -> Result<Vec<u8>, GatewayError> {
    body.insert("model".into(), Value::String(model.to_owned()));
    if stream {
        match body.get_mut("stream_options") {
            Some(Value::Object(o)) => {
                o.insert("include_usage".into(), Value::Bool(true));
            }
            _ => {
                let mut o = Map::new();
                o.insert("include_usage".into(), Value::Bool(true));
                body.insert("stream_options".into(), Value::Object(o));
            }
        }
    }
    serde_json::to_vec(body)
        .map_err(|e| GatewayError::Internal(format!("cannot encode the request: {e}")))
}

/// Whether a call to `endpoint` goes upstream as the client's bytes with
/// `model` spliced in ([`splice_body`]).
pub fn spliceable(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings
    )
}

/// [`prepare_body`] without a tree: the client's raw values in their order,
/// `model` replaced by the deployment's, and for a stream `stream_options`
/// with `include_usage: true` (added last when the client sent none). The
/// upstream reads the same JSON as [`prepare_body`] prints; the bytes are
/// the same too when the client's body was compact and canonical.
pub fn splice_body(body: &RawRequest<'_>, model: &str, stream: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.bytes().len() + model.len() + 40);
    let (mut has_model, mut has_options) = (false, false);
    out.push(b'{');
    for (key, value) in body.fields() {
        if out.len() > 1 {
            out.push(b',');
        }
        // The scan gave only unescaped keys: they print as they were written.
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        match *key {
            "model" => {
                has_model = true;
                write_json_string(&mut out, model);
            }
            "stream_options" if stream => {
                has_options = true;
                match serde_json::from_str::<Value>(value.get()) {
                    Ok(Value::Object(mut o)) => {
                        o.insert("include_usage".into(), Value::Bool(true));
                        // A map of JSON values always prints.
                        let _ = serde_json::to_writer(&mut out, &o);
                    }
                    _ => out.extend_from_slice(INCLUDE_USAGE),
                }
            }
            _ => out.extend_from_slice(value.get().as_bytes()),
        }
    }
    if !has_model {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"model\":");
        write_json_string(&mut out, model);
    }
    if stream && !has_options {
        out.extend_from_slice(b",\"stream_options\":");
        out.extend_from_slice(INCLUDE_USAGE);
    }
    out.push(b'}');
    out
}

const INCLUDE_USAGE: &[u8] = b"{\"include_usage\":true}";

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A whole OpenAI-format answer, normalised.
pub(crate) fn translate_openai(
    endpoint: Endpoint,
    body: &[u8],
) -> Result<Map<String, Value>, GatewayError> {
    match serde_json::from_slice::<Value>(body) {
        // A 200 that carries an error object (some compatible hosts and
        // proxies do this) is the provider failing, not an answer.
        Ok(Value::Object(o)) if o.get("error").is_some_and(|e| !e.is_null()) => {
            Err(GatewayError::Upstream(format!(
                "the provider answered 200 with an error: {}",
                o.get("error").map(error_message).unwrap_or_default()
            )))
        }
        Ok(Value::Object(mut o)) => {
            normalise_response(endpoint, &mut o);
            Ok(o)
        }
        _ => Err(GatewayError::Upstream(
            "the provider's answer is not a JSON object".into(),
        )),
    }
}

/// An OpenAI-format SSE body: `data: {chunk}` events, then `data: [DONE]`.
pub(crate) struct OpenAiStream {
    sse: SseParser,
}

impl OpenAiStream {
    pub(crate) fn new() -> Self {
        OpenAiStream {
            sse: SseParser::new(),
        }
    }
}

/// One SSE event's `data` of an OpenAI-format stream: the chunk
/// (normalised), the end, or the provider's error.
pub(crate) fn decode_event(data: &str) -> StreamEvent {
    let data = data.trim();
    if data == "[DONE]" {
        return StreamEvent::Done;
    }
    match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(mut chunk)) => {
            if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
                return StreamEvent::Error(GatewayError::Upstream(error_message(err)));
            }
            normalise_chunk(&mut chunk);
            StreamEvent::Chunk(chunk)
        }
        _ => StreamEvent::Error(GatewayError::Upstream(
            "the provider sent an unreadable stream event".into(),
        )),
    }
}

impl StreamDecoder for OpenAiStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) {
        self.sse
            .feed_each(bytes, |ev| out.push(decode_event(ev.data)));
        if let Some(e) = self.sse.take_overflow() {
            out.push(StreamEvent::Error(e));
        }
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        self.sse.finish_each(|ev| out.push(decode_event(ev.data)));
    }
}

fn error_message(err: &Value) -> String {
    match err {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the provider reported an error")
            .to_owned(),
        _ => "the provider reported an error".to_owned(),
    }
}

/// Maps an OpenAI-style error answer: 4xx keep their status, type, code and
/// message; 5xx become 502.
pub(crate) fn map_openai_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> GatewayError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |k: &str| {
        err.and_then(|e| e.get(k)).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let message = match err {
        Some(e) => error_message(e),
        // Some compatible hosts answer `{"message": …}` or `{"detail": …}`.
        None => parsed
            .as_ref()
            .and_then(|v| v.get("message").or_else(|| v.get("detail")))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the provider answered HTTP {}", status.as_u16())),
    };
    if status.is_server_error() || !status.is_client_error() {
        return GatewayError::Upstream(format!("HTTP {}: {message}", status.as_u16()));
    }
    GatewayError::Provider {
        status,
        message,
        kind: field("type").unwrap_or_else(|| default_type(status).to_owned()),
        code: field("code"),
        param: field("param"),
        retry_after: headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

fn default_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        _ => "invalid_request_error",
    }
}

pub(crate) const SERVICE_TIERS: [&str; 5] = ["auto", "default", "flex", "scale", "priority"];

fn normalise_common(obj: &mut Map<String, Value>) {
    if obj.get("system_fingerprint").is_some_and(Value::is_null) {
        obj.remove("system_fingerprint");
    }
    if obj
        .get("service_tier")
        .and_then(Value::as_str)
        .is_some_and(|t| !SERVICE_TIERS.contains(&t))
    {
        obj.remove("service_tier");
    }
}

fn normalise_tool_calls(calls: &mut Value, streaming: bool) {
    if let Some(calls) = calls.as_array_mut() {
        for (i, call) in calls.iter_mut().enumerate() {
            if let Some(c) = call.as_object_mut() {
                if streaming && !c.contains_key("index") {
                    c.insert("index".into(), i.into());
                }
                if (!streaming || c.contains_key("id")) && !c.contains_key("type") {
                    c.insert("type".into(), "function".into());
                }
            }
        }
    }
}

/// Fills in what OpenAI's schema requires and compatible hosts omit.
fn normalise_response(endpoint: Endpoint, obj: &mut Map<String, Value>) {
    normalise_common(obj);
    if matches!(endpoint, Endpoint::Embeddings | Endpoint::Responses) {
        return;
    }
    if let Some(choices) = obj.get_mut("choices").and_then(Value::as_array_mut) {
        for (i, choice) in choices.iter_mut().enumerate() {
            let Some(c) = choice.as_object_mut() else {
                continue;
            };
            c.entry("index").or_insert(i.into());
            c.entry("finish_reason").or_insert(Value::Null);
            c.entry("logprobs").or_insert(Value::Null);
            if let Some(m) = c.get_mut("message").and_then(Value::as_object_mut) {
                m.entry("role").or_insert("assistant".into());
                m.entry("content").or_insert(Value::Null);
                m.entry("refusal").or_insert(Value::Null);
                if let Some(calls) = m.get_mut("tool_calls") {
                    normalise_tool_calls(calls, false);
                }
            }
        }
    }
}

fn normalise_chunk(obj: &mut Map<String, Value>) {
    normalise_common(obj);
    if let Some(Value::Object(x)) = obj.get("x_groq") {
        // Groq repeats the usage inside `x_groq`; the top-level one is enough.
        if x.contains_key("usage") && obj.contains_key("usage") {
            if let Some(Value::Object(x)) = obj.get_mut("x_groq") {
                x.remove("usage");
            }
        }
    }
    if let Some(choices) = obj.get_mut("choices").and_then(Value::as_array_mut) {
        for (i, choice) in choices.iter_mut().enumerate() {
            let Some(c) = choice.as_object_mut() else {
                continue;
            };
            c.entry("index").or_insert(i.into());
            c.entry("finish_reason").or_insert(Value::Null);
            if let Some(calls) = c
                .get_mut("delta")
                .and_then(Value::as_object_mut)
                .and_then(|d| d.get_mut("tool_calls"))
            {
                normalise_tool_calls(calls, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_200_with_an_error_object_is_an_error() {
        let e = translate_openai(
            Endpoint::ChatCompletions,
            br#"{"error":{"message":"rate limited upstream","code":429}}"#,
        )
        .unwrap_err();
        assert!(matches!(&e, GatewayError::Upstream(m) if m.contains("rate limited upstream")));
        assert!(e.is_retryable());
        // `"error": null` beside a real answer is not an error.
        let ok = translate_openai(
            Endpoint::ChatCompletions,
            br#"{"id":"x","object":"chat.completion","choices":[],"error":null}"#,
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn request_rewrites_model_and_forces_usage() {
        let p = OpenAi::new("http://h/v1".into(), Some("sk".into()));
        let mut body = json!({"model": "alias", "messages": [], "foo": 1, "stream": true,
            "stream_options": {"include_usage": false, "x": 1}})
        .as_object()
        .unwrap()
        .clone();
        let call = Call {
            endpoint: Endpoint::ChatCompletions,
            model: "gpt-4o",
            stream: true,
            now_secs: 0,
            request_id: "req_1",
            drop_unsupported_params: false,
        };
        let req = p.build_request(&call, &mut body).unwrap();
        assert_eq!(req.uri(), "http://h/v1/chat/completions");
        assert_eq!(req.headers()["authorization"], "Bearer sk");
        let sent: Value = serde_json::from_slice(req.body()).unwrap();
        assert_eq!(sent["model"], "gpt-4o");
        assert_eq!(sent["foo"], 1);
        assert_eq!(
            sent["stream_options"],
            json!({"include_usage": true, "x": 1})
        );
        // Field order is kept.
        let keys: Vec<_> = sent.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            ["model", "messages", "foo", "stream", "stream_options"]
        );
    }

    #[test]
    fn errors() {
        let body = br#"{"error":{"message":"bad","type":"invalid_request_error","param":"max_tokens","code":"unsupported_parameter"}}"#;
        let e = map_openai_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), body);
        assert_eq!(e.status(), 400);
        assert_eq!(e.param(), Some("max_tokens"));
        assert_eq!(e.kind().2, Some("unsupported_parameter"));
        let e = map_openai_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &HeaderMap::new(),
            b"oops",
        );
        assert_eq!(e.status(), 502);
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        let e = map_openai_error(StatusCode::TOO_MANY_REQUESTS, &h, b"{}");
        assert_eq!(e.retry_after().as_deref(), Some("7"));
        assert_eq!(e.kind().1, "rate_limit_error");
    }

    #[test]
    fn normalises_mistral_chunks() {
        let mut c = json!({"choices":[{"delta":{"tool_calls":[{"id":"abc","function":{"name":"f","arguments":"{}"}}]}}]})
            .as_object()
            .unwrap()
            .clone();
        normalise_chunk(&mut c);
        let tc = &c["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(tc["index"], 0);
        assert_eq!(tc["type"], "function");
        assert_eq!(c["choices"][0]["index"], 0);
    }
}
