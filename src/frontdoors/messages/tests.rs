//! The Messages API front door: translations both ways, the stream encoder
//! and the pass-through decoders, on recorded payloads, split at every byte.

use bytes::BytesMut;
use serde_json::{json, Value};

use super::errors::error_body;
use super::native::{NativeMessages, NativeMessagesSse};
use super::request::to_chat;
use super::response::from_chat;
use super::stream::MessagesEncoder;
use crate::frontdoors::testing::{assert_split_invariant, call, events};
use crate::frontdoors::StreamEncoder;
use crate::metering::usage::TokenUsage;
use crate::providers::openai::OpenAiStream;
use crate::providers::testing::{decode, obj};
use crate::providers::{Endpoint, StreamEvent};
use crate::wire::error::GatewayError;

const OPENAI_TEXT_SSE: &[u8] =
    include_bytes!("../../../tests/fixtures/openai/chat.completions.stream.text.include_usage.sse");
const OPENAI_TOOLS_SSE: &[u8] = include_bytes!(
    "../../../tests/fixtures/openai/chat.completions.stream.tool_calls.include_usage.sse"
);
const ANTHROPIC_TEXT_SSE: &[u8] =
    include_bytes!("../../../tests/fixtures/anthropic/messages.stream.text.recorded.sse");
const ANTHROPIC_TOOL_SSE: &[u8] =
    include_bytes!("../../../tests/fixtures/anthropic/messages.stream.tool_use.docs-example.sse");
const ANTHROPIC_ERROR_SSE: &[u8] = include_bytes!(
    "../../../tests/fixtures/anthropic/stream.error-event.overloaded.docs-example.sse"
);
const ANTHROPIC_TEXT_JSONL: &str =
    include_str!("../../../tests/fixtures/anthropic/messages.stream.text.decoded.jsonl");

fn messages_call() -> crate::providers::Call<'static> {
    call(Endpoint::Messages)
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

#[test]
fn request_to_chat_every_block() {
    let body = obj(json!({
        "model": "alias", "max_tokens": 300, "stream": true,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "Be kind."}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "tu_1", "content": [{"type": "text", "text": "18C"}]},
                {"type": "tool_result", "tool_use_id": "tu_2", "content": "boom", "is_error": true},
                {"type": "text", "text": "And this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}}]},
        ],
        "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
        "stop_sequences": ["END"], "temperature": 0.2, "top_p": 0.9,
        "metadata": {"user_id": "u1"}, "thinking": {"type": "enabled", "budget_tokens": 100},
    }));
    let chat = to_chat(&messages_call(), &body).unwrap();
    assert_eq!(
        Value::Object(chat),
        json!({
            "model": "alias",
            "messages": [
                {"role": "system", "content": [
                    {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "Be kind."}]},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "tu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "tu_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "tu_2", "content": "Error: boom"},
                {"role": "user", "content": [
                    {"type": "text", "text": "And this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}}]},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "max_tokens": 300, "temperature": 0.2, "top_p": 0.9, "stop": ["END"], "user": "u1", "stream": true,
        })
    );
}

#[test]
fn request_tool_choice_forms_and_refusals() {
    let base = |extra: Value| {
        let mut b = obj(
            json!({"model": "a", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}]}),
        );
        b.extend(obj(extra));
        b
    };
    for (choice, want) in [
        (json!({"type": "auto"}), json!("auto")),
        (json!({"type": "any"}), json!("required")),
        (json!({"type": "none"}), json!("none")),
    ] {
        let chat = to_chat(&messages_call(), &base(json!({ "tool_choice": choice }))).unwrap();
        assert_eq!(chat["tool_choice"], want);
    }
    let refused = |extra: Value, param: &str| {
        let e = to_chat(&messages_call(), &base(extra)).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.param(), Some(param), "{e}");
    };
    refused(json!({"top_k": 5}), "top_k");
    refused(json!({"max_tokens": 0}), "max_tokens");
    refused(
        json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        "tools[0].type",
    );
    refused(
        json!({"tool_choice": {"type": "sometimes"}}),
        "tool_choice.type",
    );
    refused(
        json!({"messages": [{"role": "system", "content": "x"}]}),
        "messages[0].role",
    );
    let mut no_max = base(json!({}));
    no_max.remove("max_tokens");
    assert_eq!(
        to_chat(&messages_call(), &no_max).unwrap_err().param(),
        Some("max_tokens")
    );
    // Dropped when the deployment says so.
    let mut dropping = messages_call();
    dropping.drop_unsupported_params = true;
    assert!(to_chat(&dropping, &base(json!({"top_k": 5}))).is_ok());
}

#[test]
fn output_config_format_becomes_response_format() {
    let body = obj(
        json!({"model": "a", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
        "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": {"type": "object"}}}}),
    );
    let chat = to_chat(&messages_call(), &body).unwrap();
    assert_eq!(
        chat["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"}}})
    );
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

#[test]
fn answer_from_chat() {
    let chat = obj(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                           {"id": "call_2", "type": "function", "function": {"name": "noop", "arguments": ""}}]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                  "prompt_tokens_details": {"cached_tokens": 60}},
    }));
    let msg = from_chat(&messages_call(), &chat);
    assert_eq!(
        Value::Object(msg.clone()),
        json!({
            "id": "msg_t1", "type": "message", "role": "assistant", "model": "gpt",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "noop", "input": {}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 40, "output_tokens": 20, "cache_read_input_tokens": 60, "cache_creation_input_tokens": 0},
        })
    );
    // Metered back exactly: every prompt token once.
    let u = TokenUsage::from_openai(&msg["usage"]).unwrap();
    assert_eq!(
        (u.prompt_tokens, u.cached_tokens, u.completion_tokens),
        (100, 60, 20)
    );
    for (finish, stop) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
    ] {
        let chat =
            obj(json!({"choices": [{"finish_reason": finish, "message": {"content": null}}]}));
        let m = from_chat(&messages_call(), &chat);
        assert_eq!(m["stop_reason"], stop);
        assert_eq!(m["content"], json!([]));
    }
}

#[test]
fn errors_in_anthropic_shape() {
    let cases = [
        (
            GatewayError::invalid("bad", Some("x")),
            400,
            "invalid_request_error",
        ),
        (
            GatewayError::InvalidApiKey("no".into()),
            401,
            "authentication_error",
        ),
        (
            GatewayError::BudgetExceeded("spent".into()),
            402,
            "billing_error",
        ),
        (
            GatewayError::ModelNotAllowed { model: "m".into() },
            403,
            "permission_error",
        ),
        (
            GatewayError::ModelNotFound { model: "m".into() },
            404,
            "not_found_error",
        ),
        (
            GatewayError::PayloadTooLarge { limit: 1 },
            413,
            "request_too_large",
        ),
        (
            GatewayError::RateLimited {
                message: "slow".into(),
                limit: "rpm",
                retry_after_secs: 3,
            },
            429,
            "rate_limit_error",
        ),
        (GatewayError::Upstream("x".into()), 502, "api_error"),
        (GatewayError::UpstreamTimeout, 504, "api_error"),
        (
            GatewayError::Provider {
                status: http::StatusCode::SERVICE_UNAVAILABLE,
                message: "Overloaded".into(),
                kind: "overloaded_error".into(),
                code: None,
                param: None,
                retry_after: None,
            },
            529,
            "overloaded_error",
        ),
        (
            GatewayError::Provider {
                status: http::StatusCode::TOO_MANY_REQUESTS,
                message: "quota".into(),
                kind: "insufficient_quota".into(),
                code: None,
                param: None,
                retry_after: None,
            },
            429,
            "rate_limit_error",
        ),
    ];
    for (e, status, kind) in cases {
        let (s, body) = error_body(&e);
        assert_eq!(s.as_u16(), status, "{e}");
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": kind, "message": e.message()}})
        );
    }
}

// ---------------------------------------------------------------------------
// Streams: translated (chat chunks -> Anthropic events)
// ---------------------------------------------------------------------------

fn encoder() -> Box<dyn StreamEncoder> {
    Box::new(MessagesEncoder::new(json!("alias"), "req_t1"))
}

#[test]
fn text_stream_encodes_anthropic_events_at_any_split() {
    let out = assert_split_invariant(&|| Box::new(OpenAiStream::new()), &encoder, OPENAI_TEXT_SSE);
    let evs = events(&out);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta"
        ]
    );
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    for (name, payload) in &evs {
        assert_eq!(payload["type"], name.as_str());
    }
    assert_eq!(evs[0].1["message"]["model"], "alias");
    let text: String = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, p)| p["delta"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "The capital of the UK is London.");
    let delta = &evs[evs.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(delta["usage"]["input_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn tool_stream_encodes_tool_use_blocks_at_any_split() {
    let out = assert_split_invariant(
        &|| Box::new(OpenAiStream::new()),
        &encoder,
        OPENAI_TOOLS_SSE,
    );
    let evs = events(&out);
    let start = evs
        .iter()
        .find(|(n, _)| n == "content_block_start")
        .unwrap();
    assert_eq!(start.1["content_block"]["type"], "tool_use");
    assert_eq!(start.1["content_block"]["name"], "get_capital");
    assert_eq!(start.1["content_block"]["input"], json!({}));
    let args: String = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, p)| {
            assert_eq!(p["delta"]["type"], "input_json_delta");
            p["delta"]["partial_json"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"country": "UK"})
    );
    assert_eq!(evs[evs.len() - 2].1["delta"]["stop_reason"], "tool_use");
}

#[test]
fn failure_is_an_error_event() {
    let mut enc = MessagesEncoder::new(json!("alias"), "req_t1");
    let mut out = BytesMut::new();
    enc.fail(&GatewayError::UpstreamTimeout, &mut out);
    let evs = events(&out);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].0, "error");
    assert_eq!(evs[0].1["error"]["type"], "api_error");
}

// ---------------------------------------------------------------------------
// Streams: passed through (Anthropic SSE, Bedrock invoke frames)
// ---------------------------------------------------------------------------

fn natives(events: &[StreamEvent]) -> Vec<&crate::providers::NativeEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Native(n) => Some(n),
            _ => None,
        })
        .collect()
}

#[test]
fn passed_through_stream_is_relayed_as_it_came_and_metered() {
    let out = assert_split_invariant(
        &|| Box::new(NativeMessagesSse::new()),
        &encoder,
        ANTHROPIC_TEXT_SSE,
    );
    // Every event of the recording, in order, untouched.
    assert_eq!(events(&out), events(ANTHROPIC_TEXT_SSE));
    let evs = decode(&mut NativeMessagesSse::new(), &[ANTHROPIC_TEXT_SSE]);
    assert_eq!(evs.last(), Some(&StreamEvent::Done));
    let last_usage = natives(&evs).iter().rev().find_map(|n| n.usage).unwrap();
    assert_eq!(
        (last_usage.prompt_tokens, last_usage.completion_tokens),
        (20, 5)
    );
    assert!(natives(&evs).iter().any(|n| n.content));
    assert!(natives(&evs).last().unwrap().finish);
}

#[test]
fn passed_through_tool_stream_and_error_event() {
    let evs = decode(&mut NativeMessagesSse::new(), &[ANTHROPIC_TOOL_SSE]);
    assert_eq!(evs.last(), Some(&StreamEvent::Done));
    let evs = decode(&mut NativeMessagesSse::new(), &[ANTHROPIC_ERROR_SSE]);
    match evs.last() {
        Some(StreamEvent::Error(e)) => assert_eq!(e.kind().1, "overloaded_error"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bedrock_invoke_frames_relay_the_messages_events_at_any_split() {
    use crate::providers::bedrock::eventstream::encode as frame;
    use crate::providers::bedrock::messages::InvokeStream;
    use base64::Engine;
    let mut body = Vec::new();
    for line in ANTHROPIC_TEXT_JSONL
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let b64 = base64::engine::general_purpose::STANDARD.encode(line);
        body.extend(frame(
            &[
                (":event-type", "chunk"),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            json!({ "bytes": b64 }).to_string().as_bytes(),
        ));
    }
    let out = assert_split_invariant(&|| Box::new(InvokeStream::new()), &encoder, &body);
    let got: Vec<Value> = events(&out).into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        got.len(),
        ANTHROPIC_TEXT_JSONL
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    );
    assert_eq!(got.last().unwrap()["type"], "message_stop");
}

#[test]
fn native_events_from_json_alone() {
    let mut n = NativeMessages::new();
    let mut out = Vec::new();
    n.event(None, r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#, &mut out);
    n.event(None, "not json", &mut out);
    assert!(matches!(out.last(), Some(StreamEvent::Error(_))));
    assert_eq!(natives(&out)[0].usage.unwrap().completion_tokens, 7);
}
