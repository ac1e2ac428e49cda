//! On the recorded payloads in tests/fixtures/gemini (see its SOURCES.md).

use super::*;
use crate::providers::testing::{self, chunks, obj};
use crate::providers::StreamEvent;
use serde_json::json;

const FN_CALL: &str =
    include_str!("../../../tests/fixtures/gemini/generateContent.functionCall.json");
const BLOCKED: &str =
    include_str!("../../../tests/fixtures/gemini/generateContent.prompt-blocked.json");
const ERR_400: &str =
    include_str!("../../../tests/fixtures/gemini/error.400-invalid-argument.json");
const ERR_429: &str =
    include_str!("../../../tests/fixtures/gemini/error.429-resource-exhausted.json");
const SSE_TEXT: &[u8] = include_bytes!(
    "../../../tests/fixtures/gemini/streamGenerateContent.text.alt-sse.recorded.sse"
);
const SSE_FN: &[u8] = include_bytes!(
    "../../../tests/fixtures/gemini/streamGenerateContent.functionCall.alt-sse.recorded.sse"
);
const JSONL_FN: &str =
    include_str!("../../../tests/fixtures/gemini/streamGenerateContent.functionCall.decoded.jsonl");
const JSONL_BLOCKED: &str = include_str!(
    "../../../tests/fixtures/gemini/streamGenerateContent.prompt-blocked.decoded.jsonl"
);

fn call(endpoint: Endpoint, stream: bool) -> Call<'static> {
    Call {
        endpoint,
        model: "gemini-2.5-flash",
        stream,
        now_secs: 1_700_000_000,
        request_id: "req_abc",
        drop_unsupported_params: false,
    }
}

fn provider() -> Gemini {
    Gemini::new(
        "https://generativelanguage.googleapis.com".into(),
        "g-key".into(),
    )
}

/// Builds the request and returns (url, body sent).
fn build(c: &Call<'_>, body: Value) -> Result<(String, Value), GatewayError> {
    let req = provider().build_request(c, &mut obj(body))?;
    assert_eq!(req.headers()["x-goog-api-key"], "g-key");
    assert_eq!(req.headers()["content-type"], "application/json");
    assert!(!req.uri().to_string().contains("g-key"));
    Ok((
        req.uri().to_string(),
        serde_json::from_slice(req.body()).unwrap(),
    ))
}

/// A decoded .jsonl fixture as the SSE body Gemini sends (CRLF framing).
fn sse_of(jsonl: &str) -> Vec<u8> {
    jsonl
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("data: {l}\r\n\r\n"))
        .collect::<String>()
        .into_bytes()
}

fn decode(c: &Call<'_>, pieces: &[&[u8]]) -> Vec<StreamEvent> {
    testing::decode(provider().stream_decoder(c).as_mut(), pieces)
}

fn assert_split_invariant(c: &Call<'_>, body: &[u8]) {
    testing::assert_split_invariant(&|| provider().stream_decoder(c), body);
}

#[test]
fn chat_request_translation() {
    let body = json!({
        "model": "alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "user", "content": [
                {"type": "text", "text": "Also this:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_req_x_0~ts~c2lnbmF0dXJl", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_req_x_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_req_x_0~ts~c2lnbmF0dXJl", "content": "{\"temp\": 30}"},
            {"role": "tool", "tool_call_id": "call_req_x_1", "content": "sunny"},
            {"role": "assistant", "content": "Paris 30, Rome sunny."},
            {"role": "user", "content": "Thanks"}
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "temperature": 0.2, "top_p": 0.9, "max_tokens": 100, "max_completion_tokens": 50,
        "stop": "END", "seed": 7, "user": "u-1", "parallel_tool_calls": true,
        "stream_options": {"include_usage": true},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true,
            "schema": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}}}
    });
    let (url, sent) = build(&call(Endpoint::ChatCompletions, false), body).unwrap();
    assert_eq!(
        url,
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}, {"text": "Use tools."}]})
    );
    let contents = sent["contents"].as_array().unwrap();
    let roles: Vec<_> = contents
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "model", "user", "model", "user"]);
    // Two user messages merged into one turn.
    assert_eq!(
        contents[0]["parts"],
        json!([{"text": "Weather in Paris and Rome?"}, {"text": "Also this:"},
               {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}])
    );
    // Calls with object args; the signature carried in the id is handed back.
    assert_eq!(
        contents[1]["parts"],
        json!([{"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2lnbmF0dXJl"},
               {"functionCall": {"name": "weather", "args": {"city": "Rome"}}}])
    );
    // Both results in one user turn, by name.
    assert_eq!(
        contents[2]["parts"],
        json!([{"functionResponse": {"name": "weather", "response": {"temp": 30}}},
               {"functionResponse": {"name": "weather", "response": {"result": "sunny"}}}])
    );
    assert_eq!(
        sent["tools"],
        json!([{"functionDeclarations": [{"name": "weather", "description": "Weather",
            "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}}]}])
    );
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}})
    );
    assert_eq!(
        sent["generationConfig"],
        json!({"temperature": 0.2, "topP": 0.9, "maxOutputTokens": 50, "seed": 7,
            "stopSequences": ["END"], "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false}})
    );
    assert!(sent.get("model").is_none());
}

#[test]
fn stream_url_resources_and_small_options() {
    let body = json!({"model": "a", "messages": [{"role": "user", "content": "hi"}],
        "tool_choice": "required", "response_format": {"type": "json_object"}, "n": 2,
        "stop": ["a", "b"], "reasoning_effort": "low"});
    let (url, sent) = build(&call(Endpoint::ChatCompletions, true), body).unwrap();
    assert!(url.ends_with("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"));
    assert_eq!(
        sent["toolConfig"]["functionCallingConfig"],
        json!({"mode": "ANY"})
    );
    assert_eq!(
        sent["generationConfig"],
        json!({"candidateCount": 2, "stopSequences": ["a", "b"], "responseMimeType": "application/json",
            "thinkingConfig": {"thinkingBudget": 1024}})
    );
    for (choice, mode) in [("auto", "AUTO"), ("none", "NONE")] {
        let (_, sent) = build(
            &call(Endpoint::ChatCompletions, false),
            json!({"model": "a", "messages": [{"role": "user", "content": "hi"}], "tool_choice": choice}),
        )
        .unwrap();
        assert_eq!(sent["toolConfig"]["functionCallingConfig"]["mode"], mode);
    }
    let mut c = call(Endpoint::ChatCompletions, false);
    c.model = "tunedModels/my-model";
    let (url, _) = build(&c, json!({"model": "a", "messages": []})).unwrap();
    assert!(url.ends_with("/v1beta/tunedModels/my-model:generateContent"));
}

#[test]
fn unsupported_and_invalid_parameters() {
    let base = || json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in [
        ("logprobs", json!(true)),
        ("top_logprobs", json!(3)),
        ("logit_bias", json!({"1": 2})),
        ("parallel_tool_calls", json!(false)),
        ("modalities", json!(["text", "audio"])),
    ] {
        let mut b = base();
        b[k] = v;
        let e = build(&call(Endpoint::ChatCompletions, false), b.clone()).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.param(), Some(k), "{k}");
        let mut c = call(Endpoint::ChatCompletions, false);
        c.drop_unsupported_params = true;
        let (_, sent) = build(&c, b).unwrap();
        assert!(sent.get("generationConfig").is_none());
    }
    // Off or default values are not refused.
    let mut b = base();
    b["logprobs"] = json!(false);
    b["parallel_tool_calls"] = json!(true);
    b["n"] = json!(1);
    assert!(build(&call(Endpoint::ChatCompletions, false), b).is_ok());
    let cases = [
        (json!({"temperature": "hot"}), "temperature"),
        (json!({"stop": 3}), "stop"),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format",
        ),
        (json!({"tool_choice": "sometimes"}), "tool_choice"),
        (
            json!({"tools": [{"type": "custom", "custom": {}}]}),
            "tools[0]",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
            "messages[0].tool_call_id",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "i", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}),
            "messages[0].tool_calls[0]",
        ),
    ];
    for (patch, param) in cases {
        let mut b = base();
        for (k, v) in patch.as_object().unwrap() {
            b[k] = v.clone();
        }
        let e = build(&call(Endpoint::ChatCompletions, false), b).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.param(), Some(param));
    }
}

#[test]
fn whole_function_call_answer() {
    let c = call(Endpoint::ChatCompletions, false);
    let r = provider()
        .translate_response(&c, FN_CALL.as_bytes())
        .unwrap();
    assert_eq!(r["id"], "chatcmpl-m36LaZGyCLz1xs0PtNSB-QU");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["created"], 1_700_000_000);
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let tc = &choice["message"]["tool_calls"][0];
    assert_eq!(tc["type"], "function");
    assert_eq!(tc["function"]["name"], "weather");
    assert_eq!(
        tc["function"]["arguments"],
        "{\"location\":\"San Francisco\"}"
    );
    let id = tc["id"].as_str().unwrap();
    assert!(id.starts_with("call_req_abc_0~ts~EskgCsYgAb4"), "{id}");
    // T13: total 937 = 29 + 15 + 893 thoughts.
    assert_eq!(
        r["usage"],
        json!({"prompt_tokens": 29, "completion_tokens": 908, "total_tokens": 937,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 893}})
    );
    // The id, sent back, restores the call and its signature.
    let (_, sent) = build(
        &c,
        json!({"model": "a", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [tc.clone()]},
            {"role": "tool", "tool_call_id": id, "content": "sunny"}]}),
    )
    .unwrap();
    assert_eq!(
        sent["contents"][1]["parts"][0]["thoughtSignature"]
            .as_str()
            .unwrap()
            .len(),
        100
    );
    assert_eq!(
        sent["contents"][2]["parts"][0]["functionResponse"]["name"],
        "weather"
    );
}

#[test]
fn whole_text_cached_and_safety_answers() {
    let c = call(Endpoint::ChatCompletions, false);
    let body = json!({"candidates": [{"content": {"parts": [{"text": "thinking…", "thought": true}, {"text": "Hello"}, {"text": " there"}], "role": "model"}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 100, "cachedContentTokenCount": 60, "candidatesTokenCount": 5, "thoughtsTokenCount": 7, "totalTokenCount": 112}});
    let r = provider()
        .translate_response(&c, body.to_string().as_bytes())
        .unwrap();
    assert_eq!(r["id"], "chatcmpl-req_abc");
    assert_eq!(r["choices"][0]["message"]["content"], "Hello there");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(r["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(r["usage"]["prompt_tokens"], 100);
    assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 60);
    assert_eq!(r["usage"]["completion_tokens"], 12);
    assert_eq!(r["usage"]["total_tokens"], 112);
    // T12: an output block has `content: {}`.
    let body = json!({"candidates": [{"content": {}, "finishReason": "SAFETY", "index": 0}]});
    let r = provider()
        .translate_response(&c, body.to_string().as_bytes())
        .unwrap();
    assert_eq!(r["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(r["choices"][0]["message"]["content"], "");
    for (reason, want) in [
        ("MAX_TOKENS", "length"),
        ("RECITATION", "content_filter"),
        ("OTHER", "stop"),
    ] {
        let body = json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]});
        let r = provider()
            .translate_response(&c, body.to_string().as_bytes())
            .unwrap();
        assert_eq!(r["choices"][0]["finish_reason"], want);
    }
    assert_eq!(
        provider()
            .translate_response(&c, b"not json")
            .unwrap_err()
            .status(),
        502
    );
}

#[test]
fn whole_prompt_blocked() {
    let c = call(Endpoint::ChatCompletions, false);
    let r = provider()
        .translate_response(&c, BLOCKED.as_bytes())
        .unwrap();
    assert_eq!(r["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(r["choices"][0]["message"]["content"], "");
    assert_eq!(r["usage"]["prompt_tokens"], 9);
    assert_eq!(r["usage"]["completion_tokens"], 0);
}

#[test]
fn stream_text() {
    let c = call(Endpoint::ChatCompletions, true);
    let events = decode(&c, &[SSE_TEXT]);
    let cs = chunks(&events);
    assert_eq!(cs.len(), 3);
    assert_eq!(
        cs[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": "The temperature in"})
    );
    assert_eq!(cs[0]["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(cs[0]["object"], "chat.completion.chunk");
    assert_eq!(
        cs[1]["choices"][0]["delta"],
        json!({"content": " Paris is 30°C."})
    );
    assert_eq!(cs[1]["choices"][0]["finish_reason"], "stop");
    for ch in &cs {
        assert_eq!(ch["id"], "chatcmpl-ylR8adSIJtii6MEP8OKEyQM");
    }
    // T13: the last usage wins (the prompt count went 169 → 63).
    assert_eq!(cs[2]["choices"], json!([]));
    assert_eq!(cs[2]["usage"]["prompt_tokens"], 63);
    assert_eq!(cs[2]["usage"]["completion_tokens"], 11);
    assert_eq!(cs[2]["usage"]["total_tokens"], 74);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    assert_split_invariant(&c, SSE_TEXT);
}

#[test]
fn stream_function_call_recorded() {
    let c = call(Endpoint::ChatCompletions, true);
    let events = decode(&c, &[SSE_FN]);
    let cs = chunks(&events);
    assert_eq!(
        cs[0]["choices"][0]["delta"],
        json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_req_abc_0", "type": "function",
            "function": {"name": "get_capital", "arguments": ""}}]})
    );
    assert_eq!(
        cs[1]["choices"][0]["delta"],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"country\":\"France\"}"}}]})
    );
    assert_eq!(cs[2]["choices"][0]["delta"], json!({}));
    assert_eq!(cs[2]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(cs[3]["usage"]["total_tokens"], 41);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    assert_split_invariant(&c, SSE_FN);
}

#[test]
fn stream_function_call_then_late_finish() {
    // T11: the finish reason comes on a later chunk holding only empty text.
    let c = call(Endpoint::ChatCompletions, true);
    let body = sse_of(JSONL_FN);
    let events = decode(&c, &[&body]);
    let cs = chunks(&events);
    let first = &cs[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first["function"]["name"], "weather");
    assert!(first["id"]
        .as_str()
        .unwrap()
        .starts_with("call_req_abc_0~ts~EqUCCqIC"));
    assert_eq!(
        cs[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        "{\"location\":\"San Francisco\"}"
    );
    assert_eq!(cs[2]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(cs[3]["usage"]["completion_tokens"], 60);
    assert_eq!(
        cs[3]["usage"]["completion_tokens_details"]["reasoning_tokens"],
        45
    );
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    assert_split_invariant(&c, &body);
}

#[test]
fn stream_prompt_blocked() {
    let c = call(Endpoint::ChatCompletions, true);
    let body = sse_of(JSONL_BLOCKED);
    let events = decode(&c, &[&body]);
    let cs = chunks(&events);
    assert_eq!(cs[0]["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(cs[0]["choices"][0]["delta"]["content"], "");
    assert_eq!(cs[1]["usage"]["prompt_tokens"], 9);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    assert_split_invariant(&c, &body);
}

#[test]
fn stream_cut_short_and_errors() {
    let c = call(Endpoint::ChatCompletions, true);
    // Only the first event of the text stream: no finishReason, no Done.
    let first_event_end = SSE_TEXT.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let events = decode(&c, &[&SSE_TEXT[..first_event_end]]);
    assert!(!events.contains(&StreamEvent::Done));
    assert_eq!(chunks(&events).len(), 1);
    // An error inside a 200 stream.
    let body = format!(
        "{}data: {}\r\n\r\n",
        std::str::from_utf8(&SSE_TEXT[..first_event_end]).unwrap(),
        json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
    );
    let events = decode(&c, &[body.as_bytes()]);
    match events.last() {
        Some(StreamEvent::Error(e)) => {
            assert_eq!(e.status(), 503);
            assert_eq!(e.message(), "The model is overloaded.");
        }
        other => panic!("{other:?}"),
    }
    assert_split_invariant(&c, body.as_bytes());
    let events = decode(&c, &[b"data: {oops\r\n\r\n"]);
    assert!(matches!(events.last(), Some(StreamEvent::Error(e)) if e.status() == 502));
}

#[test]
fn errors() {
    let h = HeaderMap::new();
    let e = provider().map_error(StatusCode::BAD_REQUEST, &h, ERR_400.as_bytes());
    assert_eq!(e.status(), 400);
    assert_eq!(e.kind().1, "invalid_request_error");
    assert_eq!(e.kind().2, Some("invalid_argument"));
    assert_eq!(
        e.message(),
        "Penalty is not enabled for models/gemini-2.5-flash"
    );
    let e = provider().map_error(StatusCode::TOO_MANY_REQUESTS, &h, ERR_429.as_bytes());
    assert_eq!(e.status(), 429);
    assert_eq!(e.kind().1, "rate_limit_error");
    assert_eq!(e.kind().2, Some("rate_limit_exceeded"));
    assert_eq!(e.retry_after().as_deref(), Some("35"));
    assert!(e.is_retryable());
    let mut with_header = HeaderMap::new();
    with_header.insert("retry-after", "3".parse().unwrap());
    let e = provider().map_error(
        StatusCode::TOO_MANY_REQUESTS,
        &with_header,
        ERR_429.as_bytes(),
    );
    assert_eq!(e.retry_after().as_deref(), Some("3"));
    let e = provider().map_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &h,
        b"{\"error\":{\"code\":500,\"message\":\"Internal\",\"status\":\"INTERNAL\"}}",
    );
    assert_eq!(e.status(), 502);
    let e = provider().map_error(StatusCode::SERVICE_UNAVAILABLE, &h, b"<html>");
    assert_eq!(e.status(), 503);
    assert!(e.is_retryable());
    let e = provider().map_error(StatusCode::FORBIDDEN, &h, b"");
    assert_eq!(e.kind().1, "permission_error");
    assert_eq!(e.to_json()["error"].as_object().unwrap().len(), 4);
}

#[test]
fn embeddings() {
    let c = call(Endpoint::Embeddings, false);
    let (url, sent) = build(
        &c,
        json!({"model": "e", "input": "hello", "dimensions": 8, "encoding_format": "float"}),
    )
    .unwrap();
    assert!(url.ends_with("/v1beta/models/gemini-2.5-flash:embedContent"));
    assert_eq!(
        sent,
        json!({"model": "models/gemini-2.5-flash", "content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 8})
    );
    let (url, sent) = build(&c, json!({"model": "e", "input": ["a", "b"]})).unwrap();
    assert!(url.ends_with(":batchEmbedContents"));
    assert_eq!(sent["requests"][1]["content"]["parts"][0]["text"], "b");
    assert_eq!(
        build(&c, json!({"model": "e", "input": [1, 2]}))
            .unwrap_err()
            .param(),
        Some("input")
    );
    let r = provider()
        .translate_response(&c, br#"{"embedding": {"values": [0.1, -0.2]}}"#)
        .unwrap();
    assert_eq!(r["object"], "list");
    assert_eq!(
        r["data"],
        json!([{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}])
    );
    assert_eq!(r["usage"], json!({"prompt_tokens": 0, "total_tokens": 0}));
    let r = provider()
        .translate_response(
            &c,
            br#"{"embeddings": [{"values": [1.0]}, {"values": [2.0]}], "usageMetadata": {"promptTokenCount": 4}}"#,
        )
        .unwrap();
    assert_eq!(r["data"][1]["index"], 1);
    assert_eq!(r["usage"]["prompt_tokens"], 4);
}

#[test]
fn legacy_completions() {
    let c = call(Endpoint::Completions, false);
    let mut body = obj(json!({"model": "a", "prompt": "Say hi", "max_tokens": 5}));
    let req = provider().build_request(&c, &mut body).unwrap();
    let sent: Value = serde_json::from_slice(req.body()).unwrap();
    assert_eq!(
        sent["contents"],
        json!([{"role": "user", "parts": [{"text": "Say hi"}]}])
    );
    assert_eq!(sent["generationConfig"]["maxOutputTokens"], 5);
    // The client's body is left as it was (another deployment may need it).
    assert_eq!(body["prompt"], "Say hi");
    assert!(provider()
        .build_request(
            &c,
            &mut obj(json!({"model": "a", "prompt": "x", "echo": true}))
        )
        .is_err());
    let r = provider()
        .translate_response(&c, BLOCKED.as_bytes())
        .unwrap();
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["choices"][0]["text"], "");
    assert_eq!(r["choices"][0]["finish_reason"], "content_filter");
    let sc = call(Endpoint::Completions, true);
    let events = decode(&sc, &[SSE_TEXT]);
    let cs = chunks(&events);
    assert_eq!(cs[0]["object"], "text_completion");
    assert_eq!(cs[0]["choices"][0]["text"], "The temperature in");
    assert_eq!(cs[1]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    assert_split_invariant(&sc, SSE_TEXT);
}

/// Found by fuzzing (`response_gemini`, input in fuzz/regressions): token
/// counts whose sum passes 2^64 overflowed (a panic in debug builds, a
/// wrapped, near-free count in release).
#[test]
fn huge_token_counts_saturate() {
    let found = include_bytes!("../../../fuzz/regressions/response_gemini/usage-sum-overflow");
    let _ = provider().translate_response(&call(Endpoint::ChatCompletions, false), found);
    let max = u64::MAX;
    let u = usage(
        &json!({"promptTokenCount": max, "toolUsePromptTokenCount": 1,
        "candidatesTokenCount": max, "thoughtsTokenCount": 1}),
    );
    assert_eq!(
        (
            &u["prompt_tokens"],
            &u["completion_tokens"],
            &u["total_tokens"]
        ),
        (&json!(max), &json!(max), &json!(max))
    );
}
