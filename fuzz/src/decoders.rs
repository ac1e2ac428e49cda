//! Provider answers, whole and streamed, through each provider's own
//! translation, with the invariants the core relies on.

use conduit::providers::openai::passthrough::pass_through_chunk;
use conduit::providers::{Endpoint, StreamDecoder, StreamEvent};
use conduit::{GatewayError, TokenUsage};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Map, Value};

use crate::cuts::cuts;
use crate::setup::{alias_for, call, provider, ENDPOINTS};

/// Runs a fresh decoder over `pieces`, then `finish`.
pub fn decode(decoder: &mut dyn StreamDecoder, pieces: &[&[u8]]) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    for p in pieces {
        decoder.feed(p, &mut out);
    }
    decoder.finish(&mut out);
    out
}

/// An error as a client sees it: a 4xx or 5xx with OpenAI's envelope.
pub fn check_error(e: &GatewayError) {
    let status = e.status();
    assert!(
        status.is_client_error() || status.is_server_error(),
        "an error with status {status}: {e:?}"
    );
    assert!(
        !matches!(e, GatewayError::Internal(_)),
        "input caused an internal error: {e:?}"
    );
    let body = e.to_json();
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
}

/// A `usage` object, as the core reads it for metering.
fn check_usage(usage: Option<&Value>) {
    if let Some(u) = usage {
        if let Some(t) = TokenUsage::from_openai(u) {
            // Money comes from these: cost must be computable.
            let _ = t.to_openai();
        }
    }
}

/// The `object` a translated answer on `endpoint` carries.
fn response_object(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "chat.completion",
        Endpoint::Completions => "text_completion",
        Endpoint::Embeddings => "list",
        Endpoint::Responses => "response",
        Endpoint::Messages => "message",
    }
}

/// Providers whose answers are OpenAI's own, passed through (normalised):
/// their shape is whatever the provider sent.
fn passthrough(kind: &str) -> bool {
    matches!(kind, "openai" | "azure" | "compatible")
}

/// Feeds `data` to `kind`'s stream decoder (chat and legacy completions),
/// cut in several ways: every cut gives the same events, and translated
/// chunks are well-formed OpenAI chunks.
pub fn check_stream(kind: &'static str, data: &[u8]) {
    for endpoint in [Endpoint::ChatCompletions, Endpoint::Completions] {
        let c = call(alias_for(kind, endpoint), endpoint, true);
        let p = provider(alias_for(kind, endpoint));
        let ways = cuts(data);
        let whole = decode(p.stream_decoder(&c).as_mut(), &ways[0]);
        for way in &ways[1..] {
            let events = decode(p.stream_decoder(&c).as_mut(), way);
            assert_eq!(
                events,
                whole,
                "{kind} {endpoint:?}: cut into {} reads gives other events",
                way.len()
            );
        }
        if passthrough(kind) && p.streams_openai_chunks(&c) {
            check_chunks_pass_through(data);
        }
        for ev in &whole {
            match ev {
                StreamEvent::Chunk(chunk) => check_chunk(kind, endpoint, chunk),
                StreamEvent::Error(e) => check_error(e),
                // Passed-through front-door events: the provider's own bytes.
                StreamEvent::Done | StreamEvent::Native(_) => {}
            }
        }
    }
}

/// The relay's fast path against its decoding way, event by event: a chunk
/// the scan passes is one the decoder reads, and the client gets the same
/// JSON (`model` = the alias, no `usage`), the same usage and finish.
fn check_chunks_pass_through(data: &[u8]) {
    const ALIAS: &str = "fuzz-alias";
    let mut sse = conduit::wire::sse::SseParser::new();
    let mut events = Vec::new();
    sse.feed(data, &mut events);
    sse.finish(&mut events);
    for ev in events {
        let text = ev.data.trim();
        let Some(fast) = pass_through_chunk(text, true) else {
            continue;
        };
        let StreamEvent::Chunk(mut chunk) = decode_event_for_fuzz(text) else {
            panic!("the scan passed what the decoder refuses: {text:?}");
        };
        let usage = chunk.remove("usage");
        let usage = usage.as_ref().and_then(TokenUsage::from_openai);
        assert_eq!(fast.usage.map(|(u, _)| u), usage, "{text:?}");
        let choices = chunk
            .get("choices")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty());
        assert_eq!(fast.body.is_some(), choices.is_some(), "{text:?}");
        let Some(body) = fast.body else { continue };
        let finish = choices
            .into_iter()
            .flatten()
            .any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()));
        assert_eq!(fast.finish, finish, "{text:?}");
        let content = choices
            .into_iter()
            .flatten()
            .filter(|c| {
                let delta = c.get("delta").unwrap_or(c);
                ["content", "text", "tool_calls", "reasoning_content"]
                    .iter()
                    .any(|k| delta.get(k).is_some_and(|v| !v.is_null() && v != ""))
            })
            .count();
        assert_eq!(fast.content, content as u64, "{text:?}");
        chunk.insert("model".into(), Value::String(ALIAS.into()));
        let client: Value = serde_json::from_slice(&body.to_vec(text, ALIAS))
            .unwrap_or_else(|e| panic!("the fast path wrote broken JSON ({e}): {text:?}"));
        assert_eq!(client, Value::Object(chunk), "{text:?}");
    }
}

/// The OpenAI decoder's reading of one event.
fn decode_event_for_fuzz(text: &str) -> StreamEvent {
    let mut decoder =
        provider(alias_for("openai", Endpoint::ChatCompletions)).stream_decoder(&call(
            alias_for("openai", Endpoint::ChatCompletions),
            Endpoint::ChatCompletions,
            true,
        ));
    let mut out = Vec::new();
    decoder.feed(format!("data: {text}\n\n").as_bytes(), &mut out);
    out.into_iter().next().unwrap_or(StreamEvent::Done)
}

/// The whole-answer fast path against the translation: what passes is what
/// the translation writes (but for `model`), with the same usage.
fn check_answer_pass_through(kind: &'static str, endpoint: Endpoint, data: &[u8]) {
    const ALIAS: &str = "fuzz-alias";
    let alias = alias_for(kind, endpoint);
    let c = call(alias, endpoint, false);
    let p = provider(alias);
    let Some(fast) = p.pass_through(&c, data, false) else {
        return;
    };
    let mut object = p.translate_response(&c, data).unwrap_or_else(|e| {
        panic!("{kind} {endpoint:?}: passed, but the translation refuses: {e:?}")
    });
    let usage = object.get("usage").and_then(TokenUsage::from_openai);
    assert_eq!(fast.usage, usage, "{kind} {endpoint:?}");
    object.insert("model".into(), Value::String(ALIAS.into()));
    let client: Value =
        serde_json::from_slice(&fast.answer(bytes::Bytes::copy_from_slice(data), ALIAS))
            .unwrap_or_else(|e| {
                panic!("{kind} {endpoint:?}: the fast path wrote broken JSON ({e})")
            });
    assert_eq!(client, Value::Object(object), "{kind} {endpoint:?}");
}

fn check_chunk(kind: &str, endpoint: Endpoint, chunk: &Map<String, Value>) {
    check_usage(chunk.get("usage"));
    assert!(
        serde_json::to_vec(chunk).is_ok(),
        "a chunk that cannot be encoded"
    );
    if passthrough(kind) {
        return;
    }
    assert_eq!(
        chunk.get("object").and_then(Value::as_str),
        Some(endpoint.chunk_object()),
        "{kind}: {chunk:?}"
    );
    assert!(
        chunk.get("choices").is_some_and(Value::is_array),
        "{kind}: a chunk without choices: {chunk:?}"
    );
}

/// Whether `kind` serves `/v1/embeddings` at all.
fn has_embeddings(kind: &str) -> bool {
    kind != "anthropic"
}

/// Statuses a provider's error answer is mapped from.
const ERROR_STATUSES: [u16; 12] = [400, 401, 403, 404, 408, 413, 422, 429, 500, 502, 503, 529];

/// Translates `data` as `kind`'s whole answer on every endpoint, and maps
/// it as an error answer: a translated answer is the endpoint's OpenAI
/// object, a failure a client-visible error with OpenAI's envelope.
pub fn check_response(kind: &'static str, data: &[u8]) {
    for endpoint in ENDPOINTS {
        if endpoint == Endpoint::Embeddings && !has_embeddings(kind) {
            // Refused when the request is built: its answer is never read.
            continue;
        }
        let alias = alias_for(kind, endpoint);
        let c = call(alias, endpoint, false);
        if passthrough(kind) {
            check_answer_pass_through(kind, endpoint, data);
        }
        match provider(alias).translate_response(&c, data) {
            Ok(object) => {
                check_usage(object.get("usage"));
                assert!(serde_json::to_vec(&object).is_ok());
                if !passthrough(kind) {
                    assert_eq!(
                        object.get("object").and_then(Value::as_str),
                        Some(response_object(endpoint)),
                        "{kind} {endpoint:?}: {object:?}"
                    );
                }
            }
            Err(e) => check_error(&e),
        }
    }
    let status = ERROR_STATUSES[data.first().map_or(0, |b| *b as usize) % ERROR_STATUSES.len()];
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("7"));
    headers.insert(
        "x-amzn-errortype",
        HeaderValue::from_static("ThrottlingException:http://internal.amazon.com/"),
    );
    for h in [HeaderMap::new(), headers] {
        let e = provider(kind).map_error(status, &h, data);
        check_error(&e);
    }
}
