//! The Responses API front door: translations both ways, the stream encoder
//! and the pass-through decoder, on recorded payloads, split at every byte.

use bytes::BytesMut;
use serde_json::{json, Value};

use super::native::NativeResponses;
use super::request::to_chat;
use super::response::from_chat;
use super::stream::ResponsesEncoder;
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
const RESPONSES_TEXT: &str = include_str!(
    "../../../tests/fixtures/openai-responses/issue-20047-openai-responses.chunks.txt"
);
const RESPONSES_TOOL: &str = include_str!(
    "../../../tests/fixtures/openai-responses/issue-19493-gpt-5.1-tool-call.chunks.txt"
);

fn responses_call() -> crate::providers::Call<'static> {
    call(Endpoint::Responses)
}

/// A recorded event list (one JSON object a line) framed as OpenAI sends it.
fn sse(jsonl: &str) -> Vec<u8> {
    let mut out = String::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        out.push_str(&format!(
            "event: {}\ndata: {}\n\n",
            v["type"].as_str().unwrap(),
            line
        ));
    }
    out.into_bytes()
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

#[test]
fn request_to_chat_every_item() {
    let body = obj(json!({
        "model": "alias", "instructions": "Be brief.", "stream": true,
        "input": [
            {"role": "developer", "content": "Use metric units."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Weather here?"},
                {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "low"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "noon"}]},
        ],
        "tools": [{"type": "function", "name": "get_weather", "description": "d", "parameters": {"type": "object"}, "strict": true}],
        "tool_choice": {"type": "function", "name": "get_weather"}, "parallel_tool_calls": false,
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
        "max_output_tokens": 200, "temperature": 0.3, "top_p": 0.8, "metadata": {"k": "v"},
        "safety_identifier": "u1", "reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"],
        "store": false,
    }));
    let chat = to_chat(&responses_call(), &body).unwrap();
    assert_eq!(
        Value::Object(chat),
        json!({
            "model": "alias",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "system", "content": "Use metric units."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."}], "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}, "strict": true}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": true}},
            "max_tokens": 200, "temperature": 0.3, "top_p": 0.8, "metadata": {"k": "v"}, "user": "u1", "stream": true,
        })
    );
}

#[test]
fn request_state_and_builtin_tools_are_refused() {
    let refused = |extra: Value, param: &str| {
        let mut body = obj(json!({"model": "a", "input": "x"}));
        body.extend(obj(extra));
        let e = to_chat(&responses_call(), &body).unwrap_err();
        assert_eq!((e.status().as_u16(), e.param()), (400, Some(param)), "{e}");
    };
    refused(
        json!({"previous_response_id": "resp_1"}),
        "previous_response_id",
    );
    refused(json!({"conversation": "conv_1"}), "conversation");
    refused(json!({"store": true}), "store");
    refused(json!({"background": true}), "background");
    refused(json!({"tools": [{"type": "web_search"}]}), "tools[0].type");
    refused(
        json!({"tools": [{"type": "file_search", "vector_store_ids": []}]}),
        "tools[0].type",
    );
    refused(
        json!({"input": [{"type": "item_reference", "id": "msg_1"}]}),
        "input[0]",
    );
    refused(json!({"input": 5}), "input");
    refused(
        json!({"text": {"format": {"type": "grammar"}}}),
        "text.format",
    );
    let body =
        obj(json!({"model": "a", "input": "x", "text": {"format": {"type": "json_object"}}}));
    assert_eq!(
        to_chat(&responses_call(), &body).unwrap()["response_format"],
        json!({"type": "json_object"})
    );
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

#[test]
fn answer_from_chat() {
    let chat = obj(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000001, "model": "claude",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me check.",
            "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                  "prompt_tokens_details": {"cached_tokens": 60}, "completion_tokens_details": {"reasoning_tokens": 5}},
    }));
    let r = from_chat(&responses_call(), &chat);
    assert_eq!(r["id"], "resp_t1");
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["created_at"], 1700000001);
    assert_eq!(
        r["output"],
        json!([
            {"id": "msg_t1", "type": "message", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Let me check.", "annotations": [], "logprobs": []}]},
            {"id": "fc_t1_0", "type": "function_call", "status": "completed", "call_id": "toolu_1",
             "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
        ])
    );
    assert_eq!(
        r["usage"],
        json!({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 0},
               "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 5}, "total_tokens": 120})
    );
    let u = TokenUsage::from_openai(&r["usage"]).unwrap();
    assert_eq!(
        (
            u.prompt_tokens,
            u.cached_tokens,
            u.completion_tokens,
            u.reasoning_tokens
        ),
        (100, 60, 20, 5)
    );
    for (finish, reason) in [
        ("length", "max_output_tokens"),
        ("content_filter", "content_filter"),
    ] {
        let chat =
            obj(json!({"choices": [{"finish_reason": finish, "message": {"content": "par"}}]}));
        let r = from_chat(&responses_call(), &chat);
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"], json!({ "reason": reason }));
    }
}

// ---------------------------------------------------------------------------
// Streams: translated (chat chunks -> Responses events)
// ---------------------------------------------------------------------------

fn encoder() -> Box<dyn StreamEncoder> {
    Box::new(ResponsesEncoder::new(
        json!("alias"),
        "req_t1",
        1_700_000_000,
    ))
}

fn check_sequence(evs: &[(String, Value)]) {
    for (i, (name, p)) in evs.iter().enumerate() {
        assert_eq!(p["type"], name.as_str());
        assert_eq!(p["sequence_number"], i, "{name}");
    }
}

#[test]
fn text_stream_encodes_responses_events_at_any_split() {
    let out = assert_split_invariant(&|| Box::new(OpenAiStream::new()), &encoder, OPENAI_TEXT_SSE);
    let evs = events(&out);
    check_sequence(&evs);
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        names[names.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let text: String = evs
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, p)| p["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "The capital of the UK is London.");
    let done = &evs.last().unwrap().1["response"];
    assert_eq!(done["model"], "alias");
    assert_eq!(done["output"][0]["content"][0]["text"], text.as_str());
    assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(evs[0].1["response"].get("usage").is_none());
}

#[test]
fn tool_stream_encodes_function_call_items_at_any_split() {
    let out = assert_split_invariant(
        &|| Box::new(OpenAiStream::new()),
        &encoder,
        OPENAI_TOOLS_SSE,
    );
    let evs = events(&out);
    check_sequence(&evs);
    let added = evs
        .iter()
        .find(|(n, _)| n == "response.output_item.added")
        .unwrap();
    assert_eq!(added.1["item"]["type"], "function_call");
    assert_eq!(added.1["item"]["name"], "get_capital");
    assert_eq!(added.1["item"]["call_id"], "call_ZR5UUuTt3pf61kjwAJIYdVMj");
    let args_done = evs
        .iter()
        .find(|(n, _)| n == "response.function_call_arguments.done")
        .unwrap();
    let args: String = evs
        .iter()
        .filter(|(n, _)| n == "response.function_call_arguments.delta")
        .map(|(_, p)| p["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args_done.1["arguments"], args.as_str());
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"country": "UK"})
    );
    let done = &evs.last().unwrap().1;
    assert_eq!(done["type"], "response.completed");
    assert_eq!(done["response"]["output"][0]["arguments"], args.as_str());
}

#[test]
fn length_is_incomplete_and_failure_is_response_failed() {
    let mut enc = ResponsesEncoder::new(json!("alias"), "req_t1", 1);
    let mut out = BytesMut::new();
    let chunk = |delta: Value, finish: Value| {
        obj(json!({"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
    };
    enc.chunk(&chunk(json!({"content": "Hel"}), Value::Null), &mut out);
    enc.chunk(&chunk(json!({}), json!("length")), &mut out);
    enc.complete(
        Some(&json!({"prompt_tokens": 3, "completion_tokens": 1})),
        &mut out,
    );
    let evs = events(&out);
    check_sequence(&evs);
    let last = &evs.last().unwrap().1;
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );

    let mut enc = ResponsesEncoder::new(json!("alias"), "req_t1", 1);
    let mut out = BytesMut::new();
    enc.chunk(&chunk(json!({"content": "Hel"}), Value::Null), &mut out);
    enc.fail(&GatewayError::UpstreamTimeout, &mut out);
    let evs = events(&out);
    check_sequence(&evs);
    let last = &evs.last().unwrap().1;
    assert_eq!(last["type"], "response.failed");
    assert_eq!(last["response"]["status"], "failed");
    assert_eq!(last["response"]["error"]["code"], "server_error");
}

// ---------------------------------------------------------------------------
// Streams: passed through (OpenAI's own Responses events)
// ---------------------------------------------------------------------------

#[test]
fn passed_through_stream_is_relayed_as_it_came_and_metered() {
    for recording in [RESPONSES_TEXT, RESPONSES_TOOL] {
        let body = sse(recording);
        let out = assert_split_invariant(&|| Box::new(NativeResponses::new()), &encoder, &body);
        assert_eq!(events(&out), events(&body));
        let evs = decode(&mut NativeResponses::new(), &[&body]);
        assert_eq!(evs.last(), Some(&StreamEvent::Done));
    }
    let evs = decode(&mut NativeResponses::new(), &[&sse(RESPONSES_TOOL)]);
    let usage = evs
        .iter()
        .find_map(|e| match e {
            StreamEvent::Native(n) => n.usage,
            _ => None,
        })
        .unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (45, 25));
}

#[test]
fn passed_through_failure_continues_the_sequence() {
    let body = sse(RESPONSES_TEXT);
    let cut = body.len() / 2;
    let mut dec = NativeResponses::new();
    let mut evs = Vec::new();
    crate::providers::StreamDecoder::feed(&mut dec, &body[..cut], &mut evs);
    let mut enc = ResponsesEncoder::new(json!("alias"), "req_t1", 1);
    let mut out = BytesMut::new();
    let mut n = 0;
    for e in evs {
        if let StreamEvent::Native(ev) = e {
            enc.native(&ev, &mut out);
            n += 1;
        }
    }
    enc.fail(&GatewayError::Upstream("cut".into()), &mut out);
    let evs = events(&out);
    let last = &evs.last().unwrap().1;
    assert_eq!(last["type"], "error");
    assert_eq!(last["sequence_number"], n);
}
