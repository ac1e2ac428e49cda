//! Unit tests on the recorded payloads in `tests/fixtures/anthropic/`.

use super::*;
use crate::providers::testing::{self, chunks, obj};
use serde_json::json;

const TEXT_JSON: &str = include_str!("../../../tests/fixtures/anthropic/messages.text.json");
const TOOL_JSON: &str =
    include_str!("../../../tests/fixtures/anthropic/messages.text_and_tool_use.no_args.json");
const REFUSAL_JSON: &str = include_str!("../../../tests/fixtures/anthropic/messages.refusal.json");
const ERROR_400: &[u8] =
    include_bytes!("../../../tests/fixtures/anthropic/error.400-invalid_request_error.json");
const TEXT_SSE: &[u8] =
    include_bytes!("../../../tests/fixtures/anthropic/messages.stream.text.recorded.sse");
const TOOL_SSE: &[u8] =
    include_bytes!("../../../tests/fixtures/anthropic/messages.stream.tool_use.docs-example.sse");
const ERROR_SSE: &[u8] = include_bytes!(
    "../../../tests/fixtures/anthropic/stream.error-event.overloaded.docs-example.sse"
);
const TEXT_JSONL: &str =
    include_str!("../../../tests/fixtures/anthropic/messages.stream.text.decoded.jsonl");
const TEXT_TOOL_JSONL: &str = include_str!(
    "../../../tests/fixtures/anthropic/messages.stream.text_then_tool_use.decoded.jsonl"
);
const DELTA_INPUT_JSONL: &str = include_str!(
    "../../../tests/fixtures/anthropic/messages.stream.message_delta_input_tokens.decoded.jsonl"
);

fn call(endpoint: Endpoint, stream: bool) -> Call<'static> {
    Call {
        endpoint,
        model: "claude-sonnet-4-5",
        stream,
        now_secs: 1_700_000_000,
        request_id: "req_1",
        drop_unsupported_params: false,
    }
}

fn chat() -> Call<'static> {
    call(Endpoint::ChatCompletions, false)
}

fn provider() -> Anthropic {
    Anthropic::new("http://mock".into(), "sk-ant".into())
}

/// The JSON body sent upstream.
fn sent(call: &Call<'_>, body: Value) -> Value {
    let req = provider().build_request(call, &mut obj(body)).unwrap();
    serde_json::from_slice(req.body()).unwrap()
}

fn refused(call: &Call<'_>, body: Value) -> GatewayError {
    provider().build_request(call, &mut obj(body)).unwrap_err()
}

/// Decoded `.jsonl` fixtures back into SSE bytes, as Anthropic frames them.
fn jsonl_to_sse(jsonl: &str) -> Vec<u8> {
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

/// Decodes the whole body, and checks that every split gives the same events.
fn decode(call: &Call<'_>, body: &[u8]) -> Vec<StreamEvent> {
    testing::assert_split_invariant(&|| provider().stream_decoder(call), body)
}

fn streamed_text(events: &[StreamEvent]) -> String {
    chunks(events)
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// Tool calls reassembled as the OpenAI SDK does: by `index`.
fn streamed_tool_calls(events: &[StreamEvent]) -> Vec<(String, String, String)> {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for c in chunks(events) {
        for tc in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = tc["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                assert!(tc["id"].is_string() && tc["function"]["name"].is_string());
                assert_eq!(tc["type"], "function");
                calls.push((
                    tc["id"].as_str().unwrap().into(),
                    tc["function"]["name"].as_str().unwrap().into(),
                    String::new(),
                ));
            } else {
                assert!(tc.get("id").is_none(), "id only in the first delta");
            }
            calls[i].2 += tc["function"]["arguments"].as_str().unwrap();
        }
    }
    calls
}

fn last_usage(events: &[StreamEvent]) -> Value {
    chunks(events)
        .iter()
        .rev()
        .find_map(|c| c.get("usage").cloned())
        .unwrap()
}

fn finish_of(events: &[StreamEvent]) -> Vec<String> {
    chunks(events)
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------- requests

#[test]
fn request_url_headers_and_defaults() {
    let p = provider();
    let mut body = obj(json!({"model": "alias", "messages": [{"role": "user", "content": "Hi"}]}));
    let req = p.build_request(&chat(), &mut body).unwrap();
    assert_eq!(req.uri(), "http://mock/v1/messages");
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(req.headers()["x-api-key"], "sk-ant");
    assert_eq!(req.headers()["anthropic-version"], "2023-06-01");
    assert_eq!(req.headers()["content-type"], "application/json");
    assert!(req.headers().get("authorization").is_none());
    let v: Value = serde_json::from_slice(req.body()).unwrap();
    assert_eq!(
        v,
        json!({"model": "claude-sonnet-4-5", "max_tokens": 4096,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
    );
    // The client's body is left as it was.
    assert_eq!(body["model"], "alias");
}

#[test]
fn request_translates_roles_tools_and_params() {
    let body = json!({
        "model": "alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "user", "content": [
                {"type": "text", "text": "And this:", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "22C"}]},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "required",
        "parallel_tool_calls": false,
        "max_completion_tokens": 300,
        "max_tokens": 10,
        "temperature": 1.5,
        "top_p": 0.9,
        "stop": "END",
        "seed": 7,
        "user": "u-42",
        "stream_options": {"include_usage": true},
        "stream": true
    });
    let v = sent(&call(Endpoint::ChatCompletions, true), body);
    assert_eq!(
        v,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 300,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather in Paris and Rome?"},
                    {"type": "text", "text": "And this:", "cache_control": {"type": "ephemeral"}},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "22C"}]},
                    {"type": "text", "text": "Thanks"}
                ]}
            ],
            "stop_sequences": ["END"],
            "temperature": 1.0,
            "top_p": 0.9,
            "metadata": {"user_id": "u-42"},
            "tools": [{"name": "get_weather", "description": "Weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stream": true
        })
    );
}

#[test]
fn request_single_system_is_a_string_and_tool_choice_forms() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    for (choice, want) in [
        (json!("auto"), json!({"type": "auto"})),
        (json!("none"), json!({"type": "none"})),
        (json!("required"), json!({"type": "any"})),
        (
            json!({"type": "function", "function": {"name": "f"}}),
            json!({"type": "tool", "name": "f"}),
        ),
    ] {
        let v = sent(
            &chat(),
            json!({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "x"}],
                "tools": tools, "tool_choice": choice}),
        );
        assert_eq!(v["system"], "S");
        assert_eq!(v["tool_choice"], want);
        assert_eq!(
            v["tools"][0]["input_schema"],
            json!({"type": "object", "properties": {}})
        );
    }
    // A cache mark keeps the block form.
    let v = sent(
        &chat(),
        json!({"messages": [{"role": "system", "content": [{"type": "text", "text": "Long rules",
            "cache_control": {"type": "ephemeral"}}]}, {"role": "user", "content": "x"}]}),
    );
    assert_eq!(
        v["system"],
        json!([{"type": "text", "text": "Long rules", "cache_control": {"type": "ephemeral"}}])
    );
    let e = refused(
        &chat(),
        json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "sometimes"}),
    );
    assert_eq!(e.param(), Some("tool_choice"));
}

#[test]
fn request_unsupported_params_are_named_or_dropped() {
    for (name, value) in [
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(3)),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(-1)),
        ("logit_bias", json!({"50256": -100})),
        ("audio", json!({"voice": "alloy", "format": "wav"})),
        ("modalities", json!(["text", "audio"])),
        ("reasoning_effort", json!("high")),
    ] {
        let mut body = json!({"messages": [{"role": "user", "content": "x"}]});
        body[name] = value;
        let e = refused(&chat(), body.clone());
        assert_eq!(e.status(), 400, "{name}");
        assert_eq!(e.param(), Some(name));
        assert!(e.message().contains(name), "{}", e.message());
        let dropping = Call {
            drop_unsupported_params: true,
            ..chat()
        };
        let v = sent(&dropping, body);
        assert!(v.get(name).is_none());
    }
    // Values that ask for nothing special pass.
    let v = sent(
        &chat(),
        json!({"messages": [{"role": "user", "content": "x"}], "n": 1, "logprobs": false,
            "presence_penalty": 0, "logit_bias": {}, "modalities": ["text"], "top_logprobs": null}),
    );
    assert!(v.get("n").is_none());
}

#[test]
fn request_bad_inputs_are_400_naming_the_part() {
    let cases = [
        (
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}}]}]),
            "messages[0].content[0]",
        ),
        (
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]),
            "messages[0].content[0]",
        ),
        (
            json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]),
            "messages[0].content[0]",
        ),
        (
            json!([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            json!([{"role": "tool", "content": "r"}]),
            "messages[0].tool_call_id",
        ),
        (
            json!([{"role": "wizard", "content": "x"}]),
            "messages[0].role",
        ),
    ];
    for (messages, param) in cases {
        let e = refused(&chat(), json!({ "messages": messages }));
        assert_eq!(e.status(), 400);
        assert_eq!(e.param(), Some(param), "{}", e.message());
    }
    let e = refused(
        &chat(),
        json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "json_response"}}]}),
    );
    assert_eq!(e.param(), Some("tools[0]"));
}

#[test]
fn request_assistant_text_merges_and_empty_arguments() {
    let v = sent(
        &chat(),
        json!({"messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "assistant", "content": [{"type": "text", "text": "c"}], "tool_calls": [
                {"id": "t", "type": "function", "function": {"name": "f", "arguments": ""}}]},
            {"role": "assistant", "content": ""}
        ]}),
    );
    assert_eq!(
        v["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "a"}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "b"}, {"type": "text", "text": "c"},
                {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}
        ])
    );
}

#[test]
fn request_response_format_is_a_forced_tool() {
    let schema =
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let v = sent(
        &chat(),
        json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": true}}}),
    );
    assert_eq!(v["tools"][0]["name"], "json_response");
    assert_eq!(v["tools"][0]["input_schema"], schema);
    assert_eq!(
        v["tool_choice"],
        json!({"type": "tool", "name": "json_response"})
    );
    let v = sent(
        &chat(),
        json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}),
    );
    assert_eq!(v["tools"][0]["input_schema"], json!({"type": "object"}));
    let v = sent(
        &chat(),
        json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "text"}}),
    );
    assert!(v.get("tools").is_none());
    let e = refused(
        &chat(),
        json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f"}}]}),
    );
    assert_eq!(e.param(), Some("response_format"));
}

#[test]
fn embeddings_are_refused_and_legacy_goes_through_chat() {
    let p = provider();
    let e = p
        .build_request(
            &call(Endpoint::Embeddings, false),
            &mut obj(json!({"model": "m", "input": "x"})),
        )
        .unwrap_err();
    assert_eq!(e.status(), 400);
    assert_eq!(e.param(), Some("model"));
    assert!(e.message().contains("embeddings"));

    let legacy = call(Endpoint::Completions, false);
    let mut body = obj(json!({"model": "m", "prompt": "Say hi", "stop": ["\n\n"]}));
    let req = p.build_request(&legacy, &mut body).unwrap();
    let v: Value = serde_json::from_slice(req.body()).unwrap();
    assert_eq!(
        v["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}])
    );
    assert_eq!(v["max_tokens"], 16);
    assert_eq!(v["stop_sequences"], json!(["\n\n"]));
    // The client's body is untouched (a fallback deployment may need it).
    assert_eq!(body["prompt"], "Say hi");
    let e = p
        .build_request(
            &legacy,
            &mut obj(json!({"model": "m", "prompt": "x", "echo": true})),
        )
        .unwrap_err();
    assert_eq!(e.param(), Some("echo"));

    let c = p.translate_response(&legacy, TEXT_JSON.as_bytes()).unwrap();
    assert_eq!(c["object"], "text_completion");
    assert_eq!(
        c["choices"][0]["text"],
        "Hello! I'm doing well, thanks for asking. How are you doing today? Is there anything I can help you with?"
    );
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert_eq!(c["usage"]["total_tokens"], 41);

    let events = decode(&call(Endpoint::Completions, true), TEXT_SSE);
    let cs = chunks(&events);
    assert!(cs.iter().all(|c| c["object"] == "text_completion"));
    let text: String = cs
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "2");
    assert_eq!(events.last(), Some(&StreamEvent::Done));
}

// ------------------------------------------------------------ whole answers

#[test]
fn text_answer() {
    let c = provider()
        .translate_response(&chat(), TEXT_JSON.as_bytes())
        .unwrap();
    assert_eq!(
        Value::Object(c),
        json!({
            "id": "msg_01VdEjxAP5ahtHKrrRdNBteQ",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "claude-sonnet-4-5-20250929",
            "choices": [{"index": 0, "message": {"role": "assistant",
                "content": "Hello! I'm doing well, thanks for asking. How are you doing today? Is there anything I can help you with?",
                "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 29, "total_tokens": 41,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0}}
        })
    );
}

#[test]
fn tool_use_answer_without_arguments() {
    let c = provider()
        .translate_response(&chat(), TOOL_JSON.as_bytes())
        .unwrap();
    let m = &c["choices"][0]["message"];
    assert!(m["content"]
        .as_str()
        .unwrap()
        .ends_with("Okay, I will update the current issue list:"));
    assert_eq!(
        m["tool_calls"],
        json!([{"id": "toolu_01LRmxn9vGM1d2DZSDBowdZ1", "type": "function",
            "function": {"name": "updateIssueList", "arguments": "{}"}}])
    );
    assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(c["usage"]["prompt_tokens"], 602);
    assert_eq!(c["usage"]["completion_tokens"], 93);
}

#[test]
fn refusal_is_content_filter() {
    let c = provider()
        .translate_response(&chat(), REFUSAL_JSON.as_bytes())
        .unwrap();
    assert_eq!(c["choices"][0]["finish_reason"], "content_filter");
    assert!(c["choices"][0]["message"]["content"].is_null());
    assert_eq!(c["usage"]["total_tokens"], 23);
}

#[test]
fn usage_counts_cache_reads_and_writes_once() {
    let mut msg: Value = serde_json::from_str(TEXT_JSON).unwrap();
    msg["usage"]["cache_read_input_tokens"] = json!(100);
    msg["usage"]["cache_creation_input_tokens"] = json!(50);
    let c = provider()
        .translate_response(&chat(), &serde_json::to_vec(&msg).unwrap())
        .unwrap();
    let u = crate::metering::usage::TokenUsage::from_openai(&c["usage"]).unwrap();
    assert_eq!(u.prompt_tokens, 162);
    assert_eq!(u.cached_tokens, 100);
    assert_eq!(u.cache_write_tokens, 50);
    assert_eq!(u.completion_tokens, 29);
    assert_eq!(u.total_tokens, 191);
}

#[test]
fn json_response_tool_becomes_content() {
    let msg = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "tool_use", "id": "toolu_9", "name": "json_response", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 7}});
    let c = provider()
        .translate_response(&chat(), &serde_json::to_vec(&msg).unwrap())
        .unwrap();
    assert_eq!(
        c["choices"][0]["message"]["content"],
        "{\"city\":\"Paris\"}"
    );
    assert!(c["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
}

#[test]
fn unreadable_answers_are_upstream_errors() {
    let p = provider();
    assert_eq!(
        p.translate_response(&chat(), b"<html>")
            .unwrap_err()
            .status(),
        502
    );
    assert_eq!(
        p.translate_response(&chat(), b"[]").unwrap_err().status(),
        502
    );
    let e = p
        .translate_response(
            &chat(),
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap_err();
    assert_eq!(e.status(), 503);
}

#[test]
fn finish_reason_table() {
    for (stop, tools, want) in [
        (Some("end_turn"), false, "stop"),
        (Some("stop_sequence"), false, "stop"),
        (Some("pause_turn"), false, "stop"),
        (Some("max_tokens"), false, "length"),
        (Some("model_context_window_exceeded"), false, "length"),
        (Some("tool_use"), true, "tool_calls"),
        (Some("tool_use"), false, "stop"),
        (Some("refusal"), false, "content_filter"),
        (Some("something_new"), false, "stop"),
        (None, false, "stop"),
    ] {
        assert_eq!(finish_reason(stop, tools), want, "{stop:?}");
    }
}

// ------------------------------------------------------------------ streams

#[test]
fn stream_recorded_text() {
    let events = decode(&call(Endpoint::ChatCompletions, true), TEXT_SSE);
    let cs = chunks(&events);
    assert_eq!(
        cs[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for c in &cs {
        assert_eq!(c["id"], "msg_018E1hg8GoVTGEKQY3ovMcSJ");
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["created"], 1_700_000_000);
        assert!(c["choices"][0]["logprobs"].is_null());
    }
    assert_eq!(streamed_text(&events), "2");
    assert_eq!(finish_of(&events), ["stop"]);
    assert_eq!(last_usage(&events)["prompt_tokens"], 20);
    assert_eq!(last_usage(&events)["completion_tokens"], 5);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, StreamEvent::Done))
            .count(),
        1
    );
}

#[test]
fn stream_tool_use_docs_example() {
    let events = decode(&call(Endpoint::ChatCompletions, true), TOOL_SSE);
    assert_eq!(
        streamed_text(&events),
        "Okay, let's check the weather for San Francisco, CA:"
    );
    let calls = streamed_tool_calls(&events);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!(calls[0].1, "get_weather");
    let args: Value = serde_json::from_str(&calls[0].2).unwrap();
    assert_eq!(
        args,
        json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
    );
    // The first delta of the call: index, id, type, name, empty arguments.
    let first = chunks(&events)
        .into_iter()
        .find(|c| c["choices"][0]["delta"].get("tool_calls").is_some())
        .unwrap();
    assert_eq!(
        first["choices"][0]["delta"]["tool_calls"],
        json!([{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}])
    );
    assert_eq!(finish_of(&events), ["tool_calls"]);
    // message_delta has only output_tokens: input from message_start stays.
    assert_eq!(last_usage(&events)["prompt_tokens"], 472);
    assert_eq!(last_usage(&events)["completion_tokens"], 89);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
}

#[test]
fn stream_text_then_tool_use_decoded() {
    let events = decode(
        &call(Endpoint::ChatCompletions, true),
        &jsonl_to_sse(TEXT_TOOL_JSONL),
    );
    assert_eq!(
        streamed_text(&events),
        "I'll invoke the JSON response tool."
    );
    let calls = streamed_tool_calls(&events);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1, "json");
    let args: Value = serde_json::from_str(&calls[0].2).unwrap();
    assert_eq!(args["elements"][0]["temperature"], 58);
    assert_eq!(finish_of(&events), ["tool_calls"]);
    assert_eq!(last_usage(&events)["total_tokens"], 849 + 47);
}

#[test]
fn stream_text_decoded_and_cumulative_usage() {
    let events = decode(
        &call(Endpoint::ChatCompletions, true),
        &jsonl_to_sse(TEXT_JSONL),
    );
    assert_eq!(
        streamed_text(&events),
        "Hello! I'm doing well, thank you for asking. How are you doing today? Is there anything I can help you with?"
    );
    assert_eq!(last_usage(&events)["completion_tokens"], 30);

    // T7: message_delta's input_tokens (61) replaces message_start's (43).
    let events = decode(
        &call(Endpoint::ChatCompletions, true),
        &jsonl_to_sse(DELTA_INPUT_JSONL),
    );
    assert_eq!(streamed_text(&events), "pong");
    let u = last_usage(&events);
    assert_eq!(u["prompt_tokens"], 61);
    assert_eq!(u["completion_tokens"], 2);
    assert_eq!(u["total_tokens"], 63);
    // Exactly one chunk carries usage.
    assert_eq!(
        chunks(&events)
            .iter()
            .filter(|c| c.contains_key("usage"))
            .count(),
        1
    );
}

#[test]
fn stream_error_event_after_200() {
    let events = decode(&call(Endpoint::ChatCompletions, true), ERROR_SSE);
    assert_eq!(events.len(), 1);
    let StreamEvent::Error(e) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(e.status(), 503);
    assert_eq!(e.kind().1, "overloaded_error");
    assert_eq!(e.message(), "Overloaded");

    // After some text: the text, then the error, and nothing after it.
    let mut body = TOOL_SSE[..TOOL_SSE.len() / 2].to_vec();
    let cut = body.windows(2).rposition(|w| w == b"\n\n").unwrap() + 2;
    body.truncate(cut);
    body.extend_from_slice(ERROR_SSE);
    body.extend_from_slice(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    let events = decode(&call(Endpoint::ChatCompletions, true), &body);
    assert!(matches!(events.last(), Some(StreamEvent::Error(_))));
    assert!(!events.contains(&StreamEvent::Done));
    assert!(streamed_text(&events).starts_with("Okay"));
}

#[test]
fn stream_cut_short() {
    // Cut before message_delta: no finish, no Done (the core reports the cut).
    let pos = TEXT_SSE
        .windows(b"event: message_delta".len())
        .position(|w| w == b"event: message_delta")
        .unwrap();
    let events = decode(&call(Endpoint::ChatCompletions, true), &TEXT_SSE[..pos]);
    assert!(finish_of(&events).is_empty());
    assert!(!events.contains(&StreamEvent::Done));
    // Cut after message_delta: finished, with usage, without Done.
    let pos = TEXT_SSE
        .windows(b"event: message_stop".len())
        .position(|w| w == b"event: message_stop")
        .unwrap();
    let events = decode(&call(Endpoint::ChatCompletions, true), &TEXT_SSE[..pos]);
    assert_eq!(finish_of(&events), ["stop"]);
    assert_eq!(last_usage(&events)["completion_tokens"], 5);
    assert!(!events.contains(&StreamEvent::Done));
    // Garbage is an error.
    let events = decode(
        &call(Endpoint::ChatCompletions, true),
        b"event: message_start\ndata: {not json\n\n",
    );
    assert!(matches!(events[..], [StreamEvent::Error(_)]));
}

#[test]
fn stream_json_response_and_empty_arguments() {
    let body = jsonl_to_sse(concat!(
        r#"{"type":"message_start","message":{"id":"msg_x","model":"claude","usage":{"input_tokens":9,"output_tokens":1}}}"#,
        "\n",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_j","name":"json_response","input":{}}}"#,
        "\n",
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        "\n",
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Par"}}"#,
        "\n",
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"is\"}"}}"#,
        "\n",
        r#"{"type":"content_block_stop","index":0}"#,
        "\n",
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":12}}"#,
        "\n",
        r#"{"type":"message_stop"}"#,
        "\n",
    ));
    let events = decode(&call(Endpoint::ChatCompletions, true), &body);
    assert_eq!(streamed_text(&events), "{\"city\": \"Paris\"}");
    assert!(streamed_tool_calls(&events).is_empty());
    assert_eq!(finish_of(&events), ["stop"]);

    // Two parallel calls, the first without arguments.
    let body = jsonl_to_sse(concat!(
        r#"{"type":"message_start","message":{"id":"msg_y","model":"claude","usage":{"input_tokens":9,"output_tokens":1}}}"#,
        "\n",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_a","name":"now","input":{}}}"#,
        "\n",
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        "\n",
        r#"{"type":"content_block_stop","index":0}"#,
        "\n",
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_b","name":"weather","input":{}}}"#,
        "\n",
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}"#,
        "\n",
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Rome\"}"}}"#,
        "\n",
        r#"{"type":"content_block_stop","index":1}"#,
        "\n",
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":30}}"#,
        "\n",
        r#"{"type":"message_stop"}"#,
        "\n",
    ));
    let events = decode(&call(Endpoint::ChatCompletions, true), &body);
    assert_eq!(
        streamed_tool_calls(&events),
        [
            ("toolu_a".into(), "now".into(), "{}".into()),
            (
                "toolu_b".into(),
                "weather".into(),
                "{\"city\":\"Rome\"}".into()
            )
        ]
    );
    assert_eq!(finish_of(&events), ["tool_calls"]);
}

// ------------------------------------------------------------------- errors

#[test]
fn errors_map_by_status() {
    let p = provider();
    let e = p.map_error(StatusCode::BAD_REQUEST, &HeaderMap::new(), ERROR_400);
    assert_eq!(e.status(), 400);
    assert_eq!(e.kind().1, "invalid_request_error");
    assert_eq!(
        e.message(),
        "tools.0.custom.input_schema.type: Field required"
    );
    assert!(!e.is_retryable());

    let mut h = HeaderMap::new();
    h.insert("retry-after", "12".parse().unwrap());
    let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"},"request_id":"req_1"}"#;
    let e = p.map_error(StatusCode::TOO_MANY_REQUESTS, &h, body);
    assert_eq!(e.status(), 429);
    assert_eq!(e.kind().1, "rate_limit_error");
    assert_eq!(e.retry_after().as_deref(), Some("12"));
    assert!(e.is_retryable());

    let body = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let e = p.map_error(StatusCode::from_u16(529).unwrap(), &h, body);
    assert_eq!(e.status(), 503);
    assert_eq!(e.kind().1, "overloaded_error");
    assert_eq!(e.retry_after().as_deref(), Some("12"));
    assert!(e.is_retryable());

    let body =
        br#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#;
    let e = p.map_error(StatusCode::INTERNAL_SERVER_ERROR, &HeaderMap::new(), body);
    assert_eq!(e.status(), 502);
    assert!(e.message().contains("Internal server error"));

    let e = p.map_error(StatusCode::UNAUTHORIZED, &HeaderMap::new(), b"nope");
    assert_eq!(e.status(), 401);
    assert_eq!(e.kind().1, "authentication_error");
    let env = e.to_json();
    assert_eq!(env["error"].as_object().unwrap().len(), 4);
}

/// Found by fuzzing (`response_anthropic`, input in fuzz/regressions): token
/// counts whose sum passes 2^64 overflowed (a panic in debug builds, a
/// wrapped, near-free count in release).
#[test]
fn huge_token_counts_saturate() {
    let found = include_bytes!("../../../fuzz/regressions/response_anthropic/usage-sum-overflow");
    let r = provider().translate_response(&chat(), found).unwrap();
    assert_eq!(r["usage"]["total_tokens"], json!(u64::MAX));
    let max = u64::MAX;
    let mut u = Usage::default();
    u.update(Some(
        &json!({"input_tokens": max, "cache_read_input_tokens": 1,
        "cache_creation_input_tokens": 1, "output_tokens": max}),
    ));
    assert_eq!(u.to_openai()["prompt_tokens"], json!(max));
}
