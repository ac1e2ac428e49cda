//! Unit tests of the `cohere` provider on the recorded payloads (tests/fixtures/cohere/).

use super::*;
use crate::providers::testing::{self, chunks, obj};

const TEXT_JSONL: &str =
    include_str!("../../../tests/fixtures/cohere/chat.v2.stream.text.decoded.jsonl");
const TOOLS_JSONL: &str =
    include_str!("../../../tests/fixtures/cohere/chat.v2.stream.tool_calls.decoded.jsonl");
const TEXT_SSE: &[u8] = include_bytes!("../../../tests/fixtures/cohere/chat.v2.stream.text.sse");
const TOOLS_SSE: &[u8] =
    include_bytes!("../../../tests/fixtures/cohere/chat.v2.stream.tool_calls.sse");
const MAX_TOKENS: &[u8] = include_bytes!("../../../tests/fixtures/cohere/chat.v2.max_tokens.json");
const TOOL_CALLS: &[u8] = include_bytes!("../../../tests/fixtures/cohere/chat.v2.tool_calls.json");
const EMBED: &[u8] = include_bytes!("../../../tests/fixtures/cohere/embed.v2.float.json");

fn call(endpoint: Endpoint, stream: bool) -> Call<'static> {
    Call {
        endpoint,
        model: "command-a-03-2025",
        stream,
        now_secs: 1_700_000_000,
        request_id: "req_1",
        drop_unsupported_params: false,
    }
}

fn provider() -> Cohere {
    Cohere::new("http://h".into(), "co-key".into())
}

fn sent(call: &Call<'_>, body: Value) -> (http::Request<Bytes>, Value) {
    let req = provider().build_request(call, &mut obj(body)).unwrap();
    let v: Value = serde_json::from_slice(req.body()).unwrap();
    (req, v)
}

fn refused(call: &Call<'_>, body: Value) -> GatewayError {
    provider().build_request(call, &mut obj(body)).unwrap_err()
}

/// Runs a decoder over pieces of a body.
fn decode(call: &Call<'_>, pieces: &[&[u8]]) -> Vec<StreamEvent> {
    testing::decode(provider().stream_decoder(call).as_mut(), pieces)
}

/// The SSE framing of 3.5 over the decoded events.
fn frame(jsonl: &str) -> Vec<u8> {
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

#[test]
fn sse_fixtures_are_the_framed_jsonl() {
    assert_eq!(frame(TEXT_JSONL), TEXT_SSE);
    assert_eq!(frame(TOOLS_JSONL), TOOLS_SSE);
}

#[test]
fn chat_request_translation() {
    let c = call(Endpoint::ChatCompletions, false);
    let (req, v) = sent(
        &c,
        json!({
            "model": "alias",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "system", "content": [{"type": "text", "text": "Really."}]},
                {"role": "user", "name": "bob", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
                ]},
                {"role": "assistant", "content": "I will look it up.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"location\":\"Paris\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "noon"}]},
                {"role": "assistant", "content": "Sunny at noon."},
                {"role": "user", "content": "Thanks"}
            ],
            "max_tokens": 100,
            "max_completion_tokens": 50,
            "stop": "END",
            "temperature": 0.3,
            "top_p": 0.9,
            "seed": 7,
            "user": "u-1",
            "n": 1,
            "logprobs": false,
            "parallel_tool_calls": true,
            "stream_options": {"include_usage": true},
            "safety_mode": "STRICT",
        }),
    );
    assert_eq!(req.uri(), "http://h/v2/chat");
    assert_eq!(req.headers()["authorization"], "Bearer co-key");
    assert_eq!(req.headers()["content-type"], "application/json");
    assert_eq!(
        v,
        json!({
            "model": "command-a-03-2025",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "system", "content": [{"type": "text", "text": "Really."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
                ]},
                {"role": "assistant", "tool_plan": "I will look it up.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"location\":\"Paris\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "time", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "noon"}]},
                {"role": "assistant", "content": "Sunny at noon."},
                {"role": "user", "content": "Thanks"}
            ],
            "max_tokens": 50,
            "stop_sequences": ["END"],
            "temperature": 0.3,
            "p": 0.9,
            "seed": 7,
            "safety_mode": "STRICT",
        })
    );
    assert!(!provider().needs_image_bytes());
}

#[test]
fn streaming_request_says_so() {
    let (req, v) = sent(
        &call(Endpoint::ChatCompletions, true),
        json!({"model": "a", "messages": [{"role": "user", "content": "hi"}], "stream": true}),
    );
    assert_eq!(v["stream"], true);
    assert_eq!(req.headers()["accept"], "text/event-stream");
}

#[test]
fn tools_and_tool_choice() {
    let c = call(Endpoint::ChatCompletions, false);
    let tools = json!([
        {"type": "function", "function": {"name": "weather", "description": "Weather", "strict": true,
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "noargs"}}
    ]);
    let body = |choice: Value| json!({"model": "a", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": choice});
    let (_, v) = sent(&c, body(json!("auto")));
    assert!(v.get("tool_choice").is_none());
    assert_eq!(
        v["tools"],
        json!([
            {"type": "function", "function": {"name": "weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "noargs", "parameters": {"type": "object", "properties": {}}}}
        ])
    );
    assert_eq!(sent(&c, body(json!("none"))).1["tool_choice"], "NONE");
    assert_eq!(
        sent(&c, body(json!("required"))).1["tool_choice"],
        "REQUIRED"
    );
    let (_, v) = sent(
        &c,
        body(json!({"type": "function", "function": {"name": "noargs"}})),
    );
    assert_eq!(v["tool_choice"], "REQUIRED");
    assert_eq!(v["tools"].as_array().unwrap().len(), 1);
    assert_eq!(v["tools"][0]["function"]["name"], "noargs");
    let e = refused(
        &c,
        body(json!({"type": "function", "function": {"name": "nope"}})),
    );
    assert_eq!(e.param(), Some("tool_choice"));
    let e = refused(&c, body(json!("sometimes")));
    assert_eq!(e.param(), Some("tool_choice"));
    let e = refused(
        &c,
        json!({"model": "a", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"}),
    );
    assert_eq!(e.param(), Some("tool_choice"));
    // "none" without tools is simply nothing to send.
    let (_, v) = sent(
        &c,
        json!({"model": "a", "messages": [{"role": "user", "content": "hi"}], "tool_choice": "none"}),
    );
    assert!(v.get("tool_choice").is_none() && v.get("tools").is_none());
    let e = refused(
        &c,
        json!({"model": "a", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "web_search"}]}),
    );
    assert_eq!(e.param(), Some("tools[0].type"));
}

#[test]
fn response_formats() {
    let c = call(Endpoint::ChatCompletions, false);
    let body = |rf: Value| json!({"model": "a", "messages": [{"role": "user", "content": "hi"}], "response_format": rf});
    assert_eq!(
        sent(&c, body(json!({"type": "json_object"}))).1["response_format"],
        json!({"type": "json_object"})
    );
    let schema =
        json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
    assert_eq!(
        sent(&c, body(json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": schema}})))
            .1["response_format"],
        json!({"type": "json_object", "json_schema": schema})
    );
    assert!(sent(&c, body(json!({"type": "text"})))
        .1
        .get("response_format")
        .is_none());
    assert_eq!(
        refused(&c, body(json!({"type": "yaml"}))).param(),
        Some("response_format")
    );
}

#[test]
fn unsupported_parameters() {
    let mut c = call(Endpoint::ChatCompletions, false);
    for (p, v) in [
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(2)),
        ("logit_bias", json!({"50256": -100})),
        ("parallel_tool_calls", json!(false)),
        ("audio", json!({"voice": "alloy", "format": "wav"})),
        ("modalities", json!(["text", "audio"])),
    ] {
        let mut body = obj(json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]}));
        body.insert(p.into(), v);
        let e = provider().build_request(&c, &mut body.clone()).unwrap_err();
        assert_eq!(e.status(), 400, "{p}");
        assert_eq!(e.param(), Some(p));
        assert!(e.message().contains(p));
        c.drop_unsupported_params = true;
        let req = provider().build_request(&c, &mut body).unwrap();
        let v: Value = serde_json::from_slice(req.body()).unwrap();
        assert!(v.get(p).is_none(), "{p}");
        c.drop_unsupported_params = false;
    }
    // Bad content is always a 400 naming the part.
    let e = refused(
        &c,
        json!({"model": "a", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
    );
    assert_eq!(e.param(), Some("messages[0].content[0]"));
    let e = refused(
        &c,
        json!({"model": "a", "messages": [{"role": "tool", "content": "x"}]}),
    );
    assert_eq!(e.param(), Some("messages[0].tool_call_id"));
    let e = refused(
        &c,
        json!({"model": "a", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
    );
    assert_eq!(e.param(), Some("max_tokens"));
}

#[test]
fn non_streaming_text_answer() {
    let o = translate_chat(&call(Endpoint::ChatCompletions, false), MAX_TOKENS).unwrap();
    assert_eq!(
        Value::Object(o),
        json!({
            "id": "039584d9-7236-4ecb-9dd7-f1bed57888bc",
            "object": "chat.completion",
            "created": 1_700_000_000u64,
            "model": "command-a-03-2025",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "**The History of", "refusal": null},
                "logprobs": null, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 506, "completion_tokens": 5, "total_tokens": 511,
                "prompt_tokens_details": {"cached_tokens": 448},
                "completion_tokens_details": {"reasoning_tokens": 0}},
        })
    );
    let u = crate::metering::usage::TokenUsage::from_openai(&usage(
        serde_json::from_slice::<Value>(MAX_TOKENS)
            .unwrap()
            .get("usage"),
    ))
    .unwrap();
    assert_eq!(
        (u.prompt_tokens, u.cached_tokens, u.total_tokens),
        (506, 448, 511)
    );
}

#[test]
fn non_streaming_tool_calls() {
    let o = translate_chat(&call(Endpoint::ChatCompletions, false), TOOL_CALLS).unwrap();
    let choice = &o["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    // tool_plan is not the answer.
    assert!(choice["message"]["content"].is_null());
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([
            {"id": "weather_dqgshstja6p9", "type": "function",
                "function": {"name": "weather", "arguments": "{\"location\":\"San Francisco\"}"}},
            {"id": "cityAttractions_dcxfx4myvx68", "type": "function",
                "function": {"name": "cityAttractions", "arguments": "{\"city\":\"San Francisco\"}"}}
        ])
    );
    assert_eq!(o["usage"]["prompt_tokens"], 1549);
    assert_eq!(o["usage"]["completion_tokens"], 103);
    assert_eq!(o["usage"]["prompt_tokens_details"]["cached_tokens"], 992);
}

#[test]
fn finish_reasons() {
    let c = call(Endpoint::ChatCompletions, false);
    let answer = |fr: &str| {
        format!(
            r#"{{"id":"x","message":{{"role":"assistant","content":[{{"type":"text","text":"hi"}}]}},"finish_reason":"{fr}","usage":{{"tokens":{{"input_tokens":1,"output_tokens":1}}}}}}"#
        )
    };
    for (fr, want) in [
        ("COMPLETE", "stop"),
        ("STOP_SEQUENCE", "stop"),
        ("MAX_TOKENS", "length"),
        ("ERROR_TOXIC", "content_filter"),
        ("SOMETHING_NEW", "stop"),
    ] {
        let o = translate_chat(&c, answer(fr).as_bytes()).unwrap();
        assert_eq!(o["choices"][0]["finish_reason"], want, "{fr}");
    }
    for fr in ["ERROR", "TIMEOUT"] {
        let e = translate_chat(&c, answer(fr).as_bytes()).unwrap_err();
        assert_eq!(e.status(), 502);
        assert!(e.message().contains(fr));
    }
    assert_eq!(translate_chat(&c, b"not json").unwrap_err().status(), 502);
}

#[test]
fn legacy_completions() {
    let c = call(Endpoint::Completions, false);
    let (req, v) = sent(&c, json!({"model": "a", "prompt": "Say hi"}));
    // The body survives for a fallback deployment.
    let mut body = obj(json!({"model": "a", "prompt": "Say hi", "max_tokens": 5}));
    let first = provider().build_request(&c, &mut body).unwrap();
    let again = provider().build_request(&c, &mut body).unwrap();
    assert_eq!(first.body(), again.body());
    assert_eq!(req.uri(), "http://h/v2/chat");
    assert_eq!(
        v["messages"],
        json!([{"role": "user", "content": "Say hi"}])
    );
    assert_eq!(v["max_tokens"], 16);
    let e = refused(&c, json!({"model": "a", "prompt": "x", "echo": true}));
    assert_eq!(e.param(), Some("echo"));
    let o = provider().translate_response(&c, MAX_TOKENS).unwrap();
    assert_eq!(o["object"], "text_completion");
    assert_eq!(o["choices"][0]["text"], "**The History of");
    assert_eq!(o["choices"][0]["finish_reason"], "length");
    assert_eq!(o["usage"]["total_tokens"], 511);

    let sc = call(Endpoint::Completions, true);
    let events = decode(&sc, &[TEXT_SSE]);
    let cs = chunks(&events);
    assert!(cs.iter().all(|c| c["object"] == "text_completion"));
    let text: String = cs
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "The capital of France is Paris.");
    assert_eq!(events.last(), Some(&StreamEvent::Done));
}

#[test]
fn embeddings() {
    let c = call(Endpoint::Embeddings, false);
    let (req, v) = sent(
        &c,
        json!({"model": "e", "input": ["sunny day at the beach", "rainy day in the city"],
            "encoding_format": "float", "dimensions": 256, "user": "u"}),
    );
    assert_eq!(req.uri(), "http://h/v2/embed");
    assert_eq!(
        v,
        json!({"model": "command-a-03-2025", "texts": ["sunny day at the beach", "rainy day in the city"],
            "input_type": "search_document", "embedding_types": ["float"], "output_dimension": 256})
    );
    let (_, v) = sent(
        &c,
        json!({"model": "e", "input": "one", "input_type": "search_query"}),
    );
    assert_eq!(v["texts"], json!(["one"]));
    assert_eq!(v["input_type"], "search_query");
    assert_eq!(
        refused(&c, json!({"model": "e", "input": [[1, 2, 3]]})).param(),
        Some("input")
    );
    assert_eq!(
        refused(&c, json!({"model": "e", "input": []})).param(),
        Some("input")
    );

    let o = provider().translate_response(&c, EMBED).unwrap();
    assert_eq!(o["object"], "list");
    assert_eq!(o["data"].as_array().unwrap().len(), 2);
    assert_eq!(o["data"][1]["index"], 1);
    assert_eq!(o["data"][1]["object"], "embedding");
    assert_eq!(o["data"][0]["embedding"][0], 0.03302002);
    assert_eq!(o["usage"], json!({"prompt_tokens": 10, "total_tokens": 10}));
    assert_eq!(
        provider()
            .translate_response(&c, b"{}")
            .unwrap_err()
            .status(),
        502
    );
}

#[test]
fn stream_text() {
    let c = call(Endpoint::ChatCompletions, true);
    let events = decode(&c, &[TEXT_SSE]);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    let cs = chunks(&events);
    assert_eq!(
        cs[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(cs[0]["id"], "321d178c-2c12-44d3-ae42-2f5510f6b1cc");
    assert_eq!(cs[0]["object"], "chat.completion.chunk");
    let text: String = cs
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]
                .get("content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(text, "The capital of France is Paris.");
    let last = cs.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["usage"]["prompt_tokens"], 507);
    assert_eq!(last["usage"]["completion_tokens"], 10);
    assert_eq!(last["usage"]["total_tokens"], 517);
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 448);
    // Every chunk has the same id, and only the last a finish reason.
    assert!(cs.iter().all(|c| c["id"] == cs[0]["id"]));
    assert!(cs[..cs.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null() && c.get("usage").is_none()));
}

#[test]
fn stream_tool_calls() {
    let c = call(Endpoint::ChatCompletions, true);
    let events = decode(&c, &[TOOLS_SSE]);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    let cs = chunks(&events);
    // No tool plan in the content.
    assert!(cs.iter().all(|c| c["choices"][0]["delta"]
        .get("content")
        .is_none_or(|t| t == "")));
    let deltas: Vec<&Value> = cs
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(
        deltas[0],
        &json!([{"index": 0, "id": "weather_e8p4pn45zt0t", "type": "function",
            "function": {"name": "weather", "arguments": ""}}])
    );
    // Reassemble as the SDK does.
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for d in deltas {
        let d = &d[0];
        let i = d["index"].as_u64().unwrap() as usize;
        if let Some(id) = d.get("id") {
            assert_eq!(i, calls.len());
            calls.push((
                id.as_str().unwrap().into(),
                d["function"]["name"].as_str().unwrap().into(),
                String::new(),
            ));
        }
        calls[i]
            .2
            .push_str(d["function"]["arguments"].as_str().unwrap());
    }
    assert_eq!(
        calls,
        vec![
            (
                "weather_e8p4pn45zt0t".into(),
                "weather".into(),
                "{\"location\": \"San Francisco\"}".into()
            ),
            (
                "cityAttractions_pyxssbwnq9fq".into(),
                "cityAttractions".into(),
                "{\"city\": \"San Francisco\"}".into()
            ),
        ]
    );
    let last = cs.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(last["usage"]["prompt_tokens"], 1549);
    assert_eq!(last["usage"]["completion_tokens"], 95);
    assert_eq!(
        last["usage"]["prompt_tokens_details"]["cached_tokens"],
        1504
    );
}

#[test]
fn every_split_gives_the_same_events() {
    let c = call(Endpoint::ChatCompletions, true);
    let lc = call(Endpoint::Completions, true);
    for (name, body) in [("text", TEXT_SSE), ("tools", TOOLS_SSE)] {
        for c in [&c, &lc] {
            let whole = decode(c, &[body]);
            for i in 0..=body.len() {
                assert_eq!(
                    decode(c, &[&body[..i], &body[i..]]),
                    whole,
                    "{name} split at {i}"
                );
            }
        }
    }
    // CRLF framing and data-only framing (type read from the JSON) too.
    let crlf: Vec<u8> = String::from_utf8(TEXT_SSE.to_vec())
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    assert_eq!(decode(&c, &[&crlf]), decode(&c, &[TEXT_SSE]));
    let data_only: String = TEXT_JSONL
        .lines()
        .map(|l| format!("data: {l}\n\n"))
        .collect();
    assert_eq!(decode(&c, &[data_only.as_bytes()]), decode(&c, &[TEXT_SSE]));
}

#[test]
fn stream_errors() {
    let c = call(Endpoint::ChatCompletions, true);
    // message-end with ERROR: an error event, no Done.
    let body = b"event: message-start\ndata: {\"id\":\"x\",\"type\":\"message-start\",\"delta\":{\"message\":{\"role\":\"assistant\"}}}\n\nevent: message-end\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"ERROR\",\"error\":\"internal failure\"}}\n\n";
    let events = decode(&c, &[body]);
    match events.last() {
        Some(StreamEvent::Error(e)) => {
            assert_eq!(e.status(), 502);
            assert!(e.message().contains("internal failure"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!events.contains(&StreamEvent::Done));
    // An unreadable event.
    let events = decode(&c, &[b"data: {nope\n\n"]);
    assert!(matches!(events.as_slice(), [StreamEvent::Error(_)]));
    // Arguments for a call that never started.
    let events = decode(&c, &[b"data: {\"type\":\"tool-call-delta\",\"index\":3,\"delta\":{\"message\":{\"tool_calls\":{\"function\":{\"arguments\":\"{\"}}}}}\n\n"]);
    assert!(matches!(events.as_slice(), [StreamEvent::Error(_)]));
    // A stream cut between events: chunks, but no Done (the core
    // reports the cut); cut inside an event, the torn event is an error.
    let half = TEXT_SSE.len() / 2;
    let boundary = TEXT_SSE[..half]
        .windows(2)
        .rposition(|w| w == b"\n\n")
        .unwrap()
        + 2;
    let events = decode(&c, &[&TEXT_SSE[..boundary]]);
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| matches!(e, StreamEvent::Chunk(_))));
    let events = decode(&c, &[&TEXT_SSE[..boundary + 10]]);
    assert!(!events.contains(&StreamEvent::Done));
    // Nothing after message-end counts.
    let mut more = TEXT_SSE.to_vec();
    more.extend_from_slice(b"data: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"late\"}}}}\n\n");
    assert_eq!(decode(&c, &[&more]), decode(&c, &[TEXT_SSE]));
}

#[test]
fn stream_thinking_is_not_content() {
    let c = call(Endpoint::ChatCompletions, true);
    let body = concat!(
        "data: {\"id\":\"r\",\"type\":\"message-start\",\"delta\":{\"message\":{\"role\":\"assistant\"}}}\n\n",
        "data: {\"type\":\"content-start\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"type\":\"thinking\",\"thinking\":\"\"}}}}\n\n",
        "data: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"thinking\":\"hmm\"}}}}\n\n",
        "data: {\"type\":\"content-start\",\"index\":1,\"delta\":{\"message\":{\"content\":{\"type\":\"text\",\"text\":\"\"}}}}\n\n",
        "data: {\"type\":\"content-delta\",\"index\":1,\"delta\":{\"message\":{\"content\":{\"text\":\"Yes\"}}}}\n\n",
        "data: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\",\"usage\":{\"billed_units\":{\"input_tokens\":3,\"output_tokens\":4}}}}\n\n",
    );
    let events = decode(&c, &[body.as_bytes()]);
    let cs = chunks(&events);
    let text: String = cs
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]
                .get("content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(text, "Yes");
    // billed_units when `tokens` is absent.
    assert_eq!(cs.last().unwrap()["usage"]["total_tokens"], 7);
}

#[test]
fn errors() {
    let p = provider();
    let h = HeaderMap::new();
    let e = p.map_error(
        StatusCode::BAD_REQUEST,
        &h,
        br#"{"id":"x","message":"invalid request: messages must not be empty"}"#,
    );
    assert_eq!(e.status(), 400);
    assert_eq!(e.kind().1, "invalid_request_error");
    assert_eq!(e.message(), "invalid request: messages must not be empty");
    assert_eq!(
        p.map_error(
            StatusCode::UNAUTHORIZED,
            &h,
            br#"{"message":"invalid api token"}"#
        )
        .kind()
        .1,
        "authentication_error"
    );
    assert_eq!(
        p.map_error(
            StatusCode::NOT_FOUND,
            &h,
            br#"{"message":"model 'x' not found"}"#
        )
        .status(),
        404
    );
    assert_eq!(
        p.map_error(StatusCode::UNPROCESSABLE_ENTITY, &h, b"{}")
            .status(),
        422
    );
    let mut rh = HeaderMap::new();
    rh.insert("retry-after", "12".parse().unwrap());
    let e = p.map_error(
        StatusCode::TOO_MANY_REQUESTS,
        &rh,
        br#"{"message":"trial key rate limit"}"#,
    );
    assert_eq!(e.status(), 429);
    assert_eq!(e.retry_after().as_deref(), Some("12"));
    assert_eq!(e.kind().1, "rate_limit_error");
    assert!(e.is_retryable());
    // A blocked prompt.
    let e = p.map_error(
        StatusCode::from_u16(498).unwrap(),
        &h,
        br#"{"message":"blocked input: please adjust your prompt and try again"}"#,
    );
    assert_eq!(e.status(), 400);
    assert_eq!(e.kind().2, Some("content_filter"));
    assert!(e.message().contains("blocked input"));
    for s in [499, 500, 503] {
        let e = p.map_error(StatusCode::from_u16(s).unwrap(), &h, b"<html>oops</html>");
        assert_eq!(e.status(), 502, "{s}");
        assert!(e.is_retryable());
    }
    // The envelope has the four keys.
    let env = e.to_json();
    assert_eq!(env["error"].as_object().unwrap().len(), 4);
}

/// Found by fuzzing (`response_cohere`, input in fuzz/regressions): token
/// counts whose sum passes 2^64 overflowed (a panic in debug builds, a
/// wrapped, near-free count in release).
#[test]
fn huge_token_counts_saturate() {
    let found = include_bytes!("../../../fuzz/regressions/response_cohere/usage-sum-overflow");
    let _ = provider().translate_response(&call(Endpoint::ChatCompletions, false), found);
    let max = u64::MAX;
    let u = usage(Some(
        &json!({"tokens": {"input_tokens": max, "output_tokens": 1}}),
    ));
    assert_eq!(u["total_tokens"], json!(max));
}
