//! Front doors: client APIs besides OpenAI's chat completions.
//!
//! | route | client API | module |
//! |---|---|---|
//! | `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings` | OpenAI (the canonical form; its body read without a tree where it can be: [`chat`]) | [`crate::providers`] |
//! | `POST /v1/responses` | OpenAI Responses | [`responses`] |
//! | `POST /v1/messages`, `POST /v1/messages/count_tokens` | Anthropic Messages | [`messages`] |
//!
//! Dialects meet in one canonical form, the chat-completions form the core
//! already speaks: a front door translates between its client API and that
//! form, as a provider module translates between that form and its upstream
//! API, so N front doors and M providers cost N + M modules. Every provider
//! is wrapped in [`Fronted`] when the config is loaded: a call on a front
//! door reaches the provider untranslated when the provider speaks that API
//! itself ([`Provider::speaks`]: OpenAI and Azure for Responses, Anthropic
//! and Claude on Bedrock for Messages), else as chat, and the chat answer
//! (whole, or the chunks of a stream, through a [`StreamEncoder`]) goes back
//! in the client's API. Everything else (keys, limits, routing, fallbacks,
//! metering) is the one pipeline of [`crate::gateway`].

pub mod chat;
pub mod messages;
pub mod responses;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use crate::compat::MaybeSend;
use crate::providers::{Call, Endpoint, NativeEvent, Provider, StreamDecoder};
use crate::wire::error::GatewayError;

/// Wraps a configured provider so that it serves the front doors.
pub fn behind_front_doors(inner: Arc<dyn Provider>) -> Arc<dyn Provider> {
    Arc::new(Fronted { inner })
}

/// A provider behind the front doors (see the module doc).
pub struct Fronted {
    inner: Arc<dyn Provider>,
}

/// `call`, on the canonical chat endpoint.
fn as_chat<'a>(call: &Call<'a>) -> Call<'a> {
    Call {
        endpoint: Endpoint::ChatCompletions,
        ..*call
    }
}

/// Whether `call` goes through the chat form on `provider`.
fn translated(provider: &dyn Provider, call: &Call<'_>) -> bool {
    matches!(call.endpoint, Endpoint::Responses | Endpoint::Messages) && !provider.speaks(call)
}

impl Provider for Fronted {
    fn build_request(
        &self,
        call: &Call<'_>,
        body: &mut Map<String, Value>,
    ) -> Result<http::Request<Bytes>, GatewayError> {
        if !translated(self.inner.as_ref(), call) {
            return self.inner.build_request(call, body);
        }
        let mut chat = match call.endpoint {
            Endpoint::Responses => responses::request::to_chat(call, body)?,
            _ => messages::request::to_chat(call, body)?,
        };
        self.inner.build_request(&as_chat(call), &mut chat)
    }

    fn splice_request(
        &self,
        call: &Call<'_>,
        body: &chat::RawRequest<'_>,
    ) -> Option<Result<http::Request<Bytes>, GatewayError>> {
        if translated(self.inner.as_ref(), call) {
            return None;
        }
        self.inner.splice_request(call, body)
    }

    fn translate_response(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<Map<String, Value>, GatewayError> {
        if !translated(self.inner.as_ref(), call) {
            return self.inner.translate_response(call, body);
        }
        let chat = self.inner.translate_response(&as_chat(call), body)?;
        Ok(match call.endpoint {
            Endpoint::Responses => responses::response::from_chat(call, &chat),
            _ => messages::response::from_chat(call, &chat),
        })
    }

    fn pass_through(
        &self,
        call: &Call<'_>,
        body: &[u8],
        base64_embeddings: bool,
    ) -> Option<crate::providers::openai::passthrough::PassedThrough> {
        if translated(self.inner.as_ref(), call) {
            return None;
        }
        self.inner.pass_through(call, body, base64_embeddings)
    }

    fn streams_openai_chunks(&self, call: &Call<'_>) -> bool {
        !translated(self.inner.as_ref(), call) && self.inner.streams_openai_chunks(call)
    }

    fn stream_decoder(&self, call: &Call<'_>) -> Box<dyn StreamDecoder> {
        if translated(self.inner.as_ref(), call) {
            // Chat chunks; the relay's [`StreamEncoder`] writes them in the client's API.
            self.inner.stream_decoder(&as_chat(call))
        } else {
            self.inner.stream_decoder(call)
        }
    }

    fn map_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        self.inner.map_error(status, headers, body)
    }

    fn needs_image_bytes(&self) -> bool {
        self.inner.needs_image_bytes()
    }

    fn speaks(&self, call: &Call<'_>) -> bool {
        self.inner.speaks(call)
    }

    fn speaks_openai(&self) -> bool {
        self.inner.speaks_openai()
    }

    fn count_tokens_request(
        &self,
        call: &Call<'_>,
        body: &Map<String, Value>,
    ) -> Option<Result<http::Request<Bytes>, GatewayError>> {
        self.inner.count_tokens_request(call, body)
    }

    fn stored_response_request(
        &self,
        id: &str,
    ) -> Option<Result<http::Request<Bytes>, GatewayError>> {
        self.inner.stored_response_request(id)
    }
}

/// A GET with the given headers (stored responses).
pub(crate) fn get(
    url: &str,
    headers: &[(&'static str, &str)],
) -> Result<http::Request<Bytes>, GatewayError> {
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Bytes::new())
        .map_err(|e| GatewayError::Internal(format!("cannot build the upstream request: {e}")))
}

/// A path segment as sent (ids are plain; anything else is percent-encoded).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The error a provider module answers for a front-door endpoint it does
/// not speak: [`Fronted`] never sends it one, so this is a bug if seen.
pub fn not_spoken(endpoint: Endpoint) -> GatewayError {
    GatewayError::Internal(format!(
        "{} reached a provider that does not speak it",
        endpoint.route()
    ))
}

/// Writes a stream's events in a front door's API. The relay meters; the
/// encoder only writes. Built per stream by [`stream_encoder`].
pub trait StreamEncoder: MaybeSend {
    /// A chat chunk of a translated stream (`usage` already taken out, `model` = the alias).
    fn chunk(&mut self, chunk: &Map<String, Value>, out: &mut BytesMut);
    /// An event of a passed-through stream.
    fn native(&mut self, event: &NativeEvent, out: &mut BytesMut);
    /// The stream is complete; `usage` is the chat usage the provider reported.
    fn complete(&mut self, usage: Option<&Value>, out: &mut BytesMut);
    /// The stream failed after its first byte.
    fn fail(&mut self, e: &GatewayError, out: &mut BytesMut);
    /// How long a silent provider may leave the client without an event
    /// before [`keepalive`](Self::keepalive) writes one; `None`: never.
    fn keepalive_every(&self, idle_timeout: std::time::Duration) -> Option<std::time::Duration> {
        let _ = idle_timeout;
        None
    }
    /// Writes a keep-alive event (the provider has been silent).
    fn keepalive(&mut self, out: &mut BytesMut) {
        let _ = out;
    }
}

/// Whether `endpoint`'s streams are written by a front door's encoder
/// ([`stream_encoder`] gives one): such a stream is never passed through.
pub(crate) fn encodes_stream(endpoint: Endpoint) -> bool {
    matches!(endpoint, Endpoint::Responses | Endpoint::Messages)
}

/// The encoder of `endpoint`'s streams, or `None` for OpenAI's own
/// endpoints (the relay writes chat chunks itself).
pub(crate) fn stream_encoder(
    endpoint: Endpoint,
    alias: &Value,
    request_id: &str,
    now_secs: u64,
) -> Option<Box<dyn StreamEncoder>> {
    match endpoint {
        Endpoint::Responses => Some(Box::new(responses::stream::ResponsesEncoder::new(
            alias.clone(),
            request_id,
            now_secs,
        ))),
        Endpoint::Messages => Some(Box::new(messages::stream::MessagesEncoder::new(
            alias.clone(),
            request_id,
        ))),
        _ => None,
    }
}

/// The error answer for `e` on `endpoint`: Anthropic's shape and statuses
/// on the Messages API, OpenAI's envelope everywhere else (`None`).
pub fn error_body(endpoint: Option<Endpoint>, e: &GatewayError) -> Option<(StatusCode, Value)> {
    match endpoint {
        Some(Endpoint::Messages) => Some(messages::errors::error_body(e)),
        _ => None,
    }
}

/// The front door a path belongs to, for errors answered before routing
/// (a wrong method, an unknown route below `/v1/messages`).
pub fn endpoint_of_path(path: &str) -> Option<Endpoint> {
    let api = path.strip_prefix("/v1").unwrap_or(path);
    (api == "/messages" || api.starts_with("/messages/")).then_some(Endpoint::Messages)
}

/// `event: <name>\ndata: <payload>\n\n`.
pub(crate) fn write_event(out: &mut BytesMut, name: &str, payload: &[u8]) {
    out.reserve(name.len() + payload.len() + 16);
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(payload);
    out.put_slice(b"\n\n");
}

/// `s` as a JSON string (the hot events are written without building a `Value`).
pub(crate) fn write_json_str(out: &mut BytesMut, s: &str) {
    let _ = serde_json::to_writer(out.writer(), s);
}

/// A JSON value as an event (serialising a `Value` cannot fail).
pub(crate) fn write_json_event(out: &mut BytesMut, name: &str, payload: &Value) {
    let bytes = serde_json::to_vec(payload).unwrap_or_default();
    write_event(out, name, &bytes);
}

/// A required-looking field of a request as a non-negative integer.
pub(crate) fn positive_int(
    body: &Map<String, Value>,
    field: &str,
) -> Result<Option<u64>, GatewayError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(GatewayError::invalid(
                format!("`{field}` must be a positive integer."),
                Some(field),
            )),
        },
    }
}

/// `field` as a number, if present.
pub(crate) fn number(
    body: &Map<String, Value>,
    field: &str,
) -> Result<Option<Value>, GatewayError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v.clone())),
        Some(_) => Err(GatewayError::invalid(
            format!("`{field}` must be a number."),
            Some(field),
        )),
    }
}

#[cfg(test)]
pub(crate) mod testing;
