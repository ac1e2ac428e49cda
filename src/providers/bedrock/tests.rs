//! Unit tests on the recorded payloads (tests/fixtures/bedrock/SOURCES.md).

use super::*;
use crate::providers::testing::{self, chunks, obj};
use base64::Engine;
use serde_json::json;

const TEXT_JSON: &str = include_str!("../../../tests/fixtures/bedrock/converse.text.json");
const GUARDRAIL_JSON: &str =
    include_str!("../../../tests/fixtures/bedrock/converse.guardrail_intervened.json");
const TEXT_STREAM_JSONL: &str =
    include_str!("../../../tests/fixtures/bedrock/converse-stream.text.decoded.jsonl");
const TOOL_STREAM_B64: &str = include_str!(
    "../../../tests/fixtures/bedrock/converse-stream.tool_use.recorded.eventstream.b64"
);
const TOOL_STREAM_DECODED: &str =
    include_str!("../../../tests/fixtures/bedrock/converse-stream.tool_use.recorded.decoded.jsonl");
const TOOL_STREAM_REQUEST: &str =
    include_str!("../../../tests/fixtures/bedrock/converse-stream.tool_use.recorded.request.json");
const EXCEPTION_B64: &str = include_str!(
    "../../../tests/fixtures/bedrock/converse-stream.modelStreamErrorException.eventstream.b64"
);

const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

fn b64(s: &str) -> Vec<u8> {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .unwrap()
}

fn raw(toml_src: &str) -> RawProvider {
    toml::from_str(toml_src).unwrap()
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

fn provider(token: bool) -> Bedrock {
    let mut vars = vec![
        ("AWS_ACCESS_KEY_ID", "AKID"),
        ("AWS_SECRET_ACCESS_KEY", "SECRET"),
    ];
    if token {
        vars.push(("AWS_SESSION_TOKEN", "TOKEN"));
    }
    Bedrock::from_config(
        &raw("kind = \"bedrock\"\nregion = \"us-east-1\"\n"),
        "https://bedrock-runtime.us-east-1.amazonaws.com".into(),
        &env(&vars),
    )
    .unwrap()
}

fn call(endpoint: Endpoint, model: &str, stream: bool) -> Call<'_> {
    Call {
        endpoint,
        model,
        stream,
        now_secs: 1_718_878_272, // 2024-06-20T10:11:12Z
        request_id: "req_1",
        drop_unsupported_params: false,
    }
}

fn sent(req: &http::Request<Bytes>) -> Value {
    serde_json::from_slice(req.body()).unwrap()
}

fn decode(dec: &mut dyn StreamDecoder, pieces: &[&[u8]]) -> Vec<StreamEvent> {
    testing::decode(dec, pieces)
}

fn assert_split_invariant(p: &Bedrock, c: &Call<'_>, bytes: &[u8]) -> Vec<StreamEvent> {
    testing::assert_split_invariant(&|| p.stream_decoder(c), bytes)
}

/// The text stream fixture (AWS SDK shape, one `{event: body}` per line) as eventstream bytes.
fn text_stream_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    for line in TEXT_STREAM_JSONL.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let (name, body) = v.as_object().unwrap().iter().next().unwrap();
        out.extend(eventstream::encode(
            &[
                (":event-type", name),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            serde_json::to_string(body).unwrap().as_bytes(),
        ));
    }
    out
}

// --- configuration -----------------------------------------------------------

#[test]
fn config_defaults_and_errors() {
    let p = provider(false);
    assert_eq!(p.host, "bedrock-runtime.us-east-1.amazonaws.com");
    assert_eq!(p.creds.session_token, None);
    assert_eq!(provider(true).creds.session_token.as_deref(), Some("TOKEN"));

    let e = Bedrock::from_config(
        &raw("kind = \"bedrock\"\n"),
        "http://127.0.0.1:9".into(),
        &env(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]),
    )
    .err()
    .unwrap();
    assert_eq!(e.0, "region");
    let e = Bedrock::from_config(
        &raw("kind = \"bedrock\"\nregion = \"eu-west-3\"\n"),
        "http://127.0.0.1:9".into(),
        &env(&[("AWS_SECRET_ACCESS_KEY", "b")]),
    )
    .err()
    .unwrap();
    assert_eq!(e.0, "access_key_id_env");
    assert!(e.1.contains("AWS_ACCESS_KEY_ID"), "{}", e.1);
    let e = Bedrock::from_config(
        &raw("kind = \"bedrock\"\nregion = \"eu-west-3\"\nsecret_access_key_env = \"MY_SECRET\"\n"),
        "http://127.0.0.1:9".into(),
        &env(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]),
    )
    .err()
    .unwrap();
    assert_eq!(e.0, "secret_access_key_env");
    assert!(e.1.contains("MY_SECRET"));
    // Custom names, a base URL with a port (kept in Host) and a path.
    let p = Bedrock::from_config(
        &raw("kind = \"bedrock\"\nregion = \"eu-west-3\"\naccess_key_id_env = \"K\"\nsecret_access_key_env = \"S\"\nsession_token_env = \"T\"\n"),
        "http://127.0.0.1:8080/aws".into(),
        &env(&[("K", "a"), ("S", "b"), ("T", "t")]),
    )
    .unwrap();
    assert_eq!(p.host, "127.0.0.1:8080");
    assert_eq!(p.base_path, "/aws");
    assert_eq!(p.creds.session_token.as_deref(), Some("t"));
}

#[test]
fn built_through_providers_build() {
    let r = raw("kind = \"bedrock\"\nregion = \"us-west-2\"\n");
    let vars = env(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]);
    assert!(super::super::build(super::super::ProviderKind::Bedrock, &r, &vars).is_ok());
}

// --- requests ----------------------------------------------------------------

#[test]
fn signed_request_url_and_headers() {
    let p = provider(true);
    let mut body = obj(json!({"model": "alias", "messages": []}));
    // An empty conversation is refused before signing.
    assert_eq!(
        p.build_request(&call(Endpoint::ChatCompletions, MODEL, false), &mut body)
            .unwrap_err()
            .param(),
        Some("messages")
    );
    let mut body = obj(json!({"model": "alias", "messages": [{"role": "user", "content": "Hi"}]}));
    let req = p
        .build_request(&call(Endpoint::ChatCompletions, MODEL, false), &mut body)
        .unwrap();
    assert_eq!(
        req.uri(),
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    );
    let h = req.headers();
    assert_eq!(h["x-amz-date"], "20240620T101112Z");
    assert_eq!(h["x-amz-security-token"], "TOKEN");
    assert_eq!(h["content-type"], "application/json");
    let auth = h["authorization"].to_str().unwrap();
    assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKID/20240620/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="), "{auth}");

    let req = p
        .build_request(&call(Endpoint::ChatCompletions, MODEL, true), &mut body)
        .unwrap();
    assert!(req.uri().path().ends_with("/converse-stream"));
    // No token: no header, not signed.
    let req = provider(false)
        .build_request(
            &call(
                Endpoint::ChatCompletions,
                "arn:aws:bedrock:us-east-1:1:inference-profile/us.x",
                false,
            ),
            &mut body,
        )
        .unwrap();
    assert!(req.headers().get("x-amz-security-token").is_none());
    assert_eq!(
        req.uri().path(),
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/converse"
    );
    assert!(req.headers()["authorization"]
        .to_str()
        .unwrap()
        .contains("SignedHeaders=content-type;host;x-amz-date,"));
}

#[test]
fn signature_matches_an_independent_computation() {
    // Computed with Python's hmac/hashlib from the SigV4 spec (double-encoded
    // path), for this exact body and time.
    let s = sigv4::sign_post(
        &Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "SECRET".into(),
            session_token: Some("TOKEN".into()),
        },
        "us-east-1",
        "bedrock-runtime.us-east-1.amazonaws.com",
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
        "application/json",
        br#"{"messages":[]}"#,
        1_718_878_272,
    );
    let auth = &s.headers.last().unwrap().1;
    assert!(
        auth.ends_with(
            "Signature=396dd7da0426c97e368f69733c3b554ecb7914ebbddfdd57584c093c99039f28"
        ),
        "{auth}"
    );
}

#[test]
fn request_matches_the_recorded_converse_stream_request() {
    let p = provider(false);
    let tool = |name: &str, desc: &str, arg: &str, arg_desc: &str| {
        json!({"type": "function", "function": {"name": name, "description": desc, "parameters":
            {"additionalProperties": false, "properties": {arg: {"description": arg_desc, "type": "string"}},
             "required": [arg], "type": "object"}}})
    };
    let mut body = obj(json!({
        "model": "alias",
        "messages": [
            {"role": "system", "content": "You are a helpful chatbot."},
            {"role": "user", "content": "What is the temperature of the capital of France?"}
        ],
        "top_p": 0.5,
        "stream": true,
        "tools": [
            tool("get_capital", "Get the capital of a country.", "country", "The country name."),
            tool("get_temperature", "Get the temperature in a city.", "city", "The city name."),
        ],
        "tool_choice": "auto",
    }));
    let req = p
        .build_request(&call(Endpoint::ChatCompletions, MODEL, true), &mut body)
        .unwrap();
    let recorded: Value = serde_json::from_str(TOOL_STREAM_REQUEST).unwrap();
    assert_eq!(sent(&req), recorded);
}

#[test]
fn messages_roles_tools_and_images() {
    let p = provider(false);
    let mut body = obj(json!({
        "model": "alias",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "user", "content": [
                {"type": "text", "text": "And this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
        ],
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "max_completion_tokens": 100,
        "temperature": 0.2,
        "stop": "END",
        "user": "user-42",
    }));
    let req = p
        .build_request(&call(Endpoint::ChatCompletions, MODEL, false), &mut body)
        .unwrap();
    let s = sent(&req);
    assert_eq!(s["system"], json!([{"text": "Be brief."}]));
    assert_eq!(
        s["messages"],
        json!([
            {"role": "user", "content": [
                {"text": "Weather in Paris and Rome?"},
                {"text": "And this picture?"},
                {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}
            ]},
            {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "call_1", "name": "weather", "input": {"city": "Paris"}}},
                {"toolUse": {"toolUseId": "call_2", "name": "weather", "input": {"city": "Rome"}}}
            ]},
            {"role": "user", "content": [
                {"toolResult": {"toolUseId": "call_1", "content": [{"text": "18C"}]}},
                {"toolResult": {"toolUseId": "call_2", "content": [{"text": "21C"}]}}
            ]}
        ])
    );
    assert_eq!(
        s["toolConfig"],
        json!({"tools": [{"toolSpec": {"name": "weather", "inputSchema": {"json": {"type": "object"}}}}],
               "toolChoice": {"tool": {"name": "weather"}}})
    );
    assert_eq!(
        s["inferenceConfig"],
        json!({"maxTokens": 100, "temperature": 0.2, "stopSequences": ["END"]})
    );
    assert_eq!(s["requestMetadata"], json!({"user": "user-42"}));

    // tool_choice none: no toolConfig, and the history's tool turns become text.
    body.insert("tool_choice".into(), "none".into());
    let s = sent(
        &p.build_request(&call(Endpoint::ChatCompletions, MODEL, false), &mut body)
            .unwrap(),
    );
    assert!(s.get("toolConfig").is_none());
    assert_eq!(
        s["messages"][1]["content"][0]["text"],
        "[tool call call_1: weather({\"city\":\"Paris\"})]"
    );
    assert_eq!(
        s["messages"][2]["content"][1]["text"],
        "[tool result call_2: 21C]"
    );
    // required -> any
    body.insert("tool_choice".into(), "required".into());
    let s = sent(
        &p.build_request(&call(Endpoint::ChatCompletions, MODEL, false), &mut body)
            .unwrap(),
    );
    assert_eq!(s["toolConfig"]["toolChoice"], json!({"any": {}}));

    // An http image (the core inlines them first) and an unknown type are 400s.
    let mut bad = obj(json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]}]}));
    let e = p
        .build_request(&call(Endpoint::ChatCompletions, MODEL, false), &mut bad)
        .unwrap_err();
    assert_eq!(e.param(), Some("messages[0].content[0]"));
    let mut bad = obj(json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]}));
    assert!(p
        .build_request(&call(Endpoint::ChatCompletions, MODEL, false), &mut bad)
        .is_err());
    assert!(p.needs_image_bytes());
}

#[test]
fn response_format_uses_a_forced_tool() {
    let p = provider(false);
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let mut body = obj(json!({"messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}}));
    let s = sent(
        &p.build_request(&call(Endpoint::ChatCompletions, MODEL, false), &mut body)
            .unwrap(),
    );
    assert_eq!(
        s["toolConfig"]["toolChoice"],
        json!({"tool": {"name": JSON_TOOL}})
    );
    assert_eq!(
        s["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
        schema
    );
    let mut body = obj(json!({"messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_object"}}));
    let s = sent(
        &p.build_request(&call(Endpoint::ChatCompletions, MODEL, false), &mut body)
            .unwrap(),
    );
    assert_eq!(
        s["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"],
        json!({"type": "object"})
    );

    // The answer: the tool's input is the content, finish `stop`.
    let answer = json!({"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "t1", "name": JSON_TOOL, "input": {"a": 1}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}});
    let r = p
        .translate_response(
            &call(Endpoint::ChatCompletions, MODEL, false),
            answer.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(r["choices"][0]["message"]["content"], "{\"a\":1}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(r["choices"][0]["message"].get("tool_calls").is_none());
}

#[test]
fn unsupported_parameters() {
    let p = provider(false);
    for (param, value) in [
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(2)),
        ("seed", json!(7)),
        ("presence_penalty", json!(0.5)),
        ("logit_bias", json!({"1": 2})),
        ("parallel_tool_calls", json!(false)),
    ] {
        let mut body = obj(json!({"messages": [{"role": "user", "content": "x"}]}));
        body.insert(param.into(), value);
        let e = p
            .build_request(&call(Endpoint::ChatCompletions, MODEL, false), &mut body)
            .unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.param(), Some(param));
        let mut c = call(Endpoint::ChatCompletions, MODEL, false);
        c.drop_unsupported_params = true;
        assert!(p.build_request(&c, &mut body).is_ok(), "{param} dropped");
        assert!(!body.contains_key(param));
    }
    // Harmless values pass.
    let mut body = obj(json!({"messages": [{"role": "user", "content": "x"}],
        "n": 1, "logprobs": false, "presence_penalty": 0, "parallel_tool_calls": true}));
    assert!(p
        .build_request(&call(Endpoint::ChatCompletions, MODEL, false), &mut body)
        .is_ok());
}

// --- whole answers ----------------------------------------------------------

#[test]
fn translates_the_recorded_text_answer() {
    let p = provider(false);
    let c = call(Endpoint::ChatCompletions, MODEL, false);
    let r = p.translate_response(&c, TEXT_JSON.as_bytes()).unwrap();
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["id"], "chatcmpl-req_1");
    assert_eq!(r["created"], 1_718_878_272u64);
    let choice = &r["choices"][0];
    assert!(choice["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("Let me count the \"r\"s"));
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(
        r["usage"],
        json!({"prompt_tokens": 22, "completion_tokens": 57, "total_tokens": 79,
               "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 0}})
    );
}

#[test]
fn guardrail_is_content_filter() {
    let p = provider(false);
    let r = p
        .translate_response(
            &call(Endpoint::ChatCompletions, MODEL, false),
            GUARDRAIL_JSON.as_bytes(),
        )
        .unwrap();
    assert_eq!(r["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(
        r["choices"][0]["message"]["content"],
        "Sorry, the model cannot answer this question."
    );
    assert_eq!(r["usage"]["total_tokens"], 30);
}

#[test]
fn tool_use_answer_and_cache_usage() {
    let p = provider(false);
    let answer = json!({"output": {"message": {"role": "assistant", "content": [
        {"text": "Let me check."},
        {"toolUse": {"toolUseId": "tooluse_1", "name": "get_capital", "input": {"country": "France"}}},
        {"toolUse": {"toolUseId": "tooluse_2", "name": "get_capital", "input": {"country": "Italy"}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 4, "outputTokens": 20, "totalTokens": 1128,
                  "cacheReadInputTokens": 100, "cacheWriteInputTokens": 1004}});
    let r = p
        .translate_response(
            &call(Endpoint::ChatCompletions, MODEL, false),
            answer.to_string().as_bytes(),
        )
        .unwrap();
    let m = &r["choices"][0]["message"];
    assert_eq!(r["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(m["tool_calls"][1]["id"], "tooluse_2");
    assert_eq!(m["tool_calls"][0]["type"], "function");
    assert_eq!(
        m["tool_calls"][0]["function"]["arguments"],
        "{\"country\":\"France\"}"
    );
    // Cache reads and writes are inside prompt_tokens, once; total matches Bedrock's.
    assert_eq!(r["usage"]["prompt_tokens"], 1108);
    assert_eq!(r["usage"]["total_tokens"], 1128);
    assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
    assert_eq!(
        r["usage"]["prompt_tokens_details"]["cache_write_tokens"],
        1004
    );
    let u = crate::metering::usage::TokenUsage::from_openai(&r["usage"]).unwrap();
    assert_eq!(
        (u.prompt_tokens, u.cached_tokens, u.cache_write_tokens),
        (1108, 100, 1004)
    );

    // Malformed answers are errors, not silent stops.
    let bad = json!({"output": {"message": {"role": "assistant", "content": []}}, "stopReason": "malformed_tool_use"});
    assert_eq!(
        p.translate_response(
            &call(Endpoint::ChatCompletions, MODEL, false),
            bad.to_string().as_bytes()
        )
        .unwrap_err()
        .status(),
        502
    );
    assert_eq!(
        p.translate_response(&call(Endpoint::ChatCompletions, MODEL, false), b"<html>")
            .unwrap_err()
            .status(),
        502
    );
}

// --- streams -----------------------------------------------------------------

#[test]
fn recorded_tool_use_stream() {
    let p = provider(false);
    let c = call(Endpoint::ChatCompletions, MODEL, true);
    let bytes = b64(TOOL_STREAM_B64);
    // The decoder reads the same frames as the decoded fixture lists.
    let mut frames = Vec::new();
    eventstream::FrameParser::new().feed(&bytes, &mut frames);
    let decoded: Vec<Value> = TOOL_STREAM_DECODED
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), decoded.len());
    for (f, d) in frames.iter().zip(&decoded) {
        let f = f.as_ref().unwrap();
        assert_eq!(
            f.header(":event-type"),
            d["headers"][":event-type"].as_str()
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&f.payload).unwrap(),
            d["payload"]
        );
    }

    let events = assert_split_invariant(&p, &c, &bytes);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    let cs = chunks(&events);
    assert_eq!(
        cs[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = cs
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]
                .get("content")
                .and_then(Value::as_str)
        })
        .collect();
    assert!(text.starts_with("<thinking> To find the temperature"));
    // The first delta of the call has index, id, type and name; then fragments.
    let calls: Vec<&Value> = cs
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(
        calls[0],
        &json!([{"index": 0, "id": "tooluse_QjQX34XORLu0wJVplWWHGQ", "type": "function",
                 "function": {"name": "get_capital", "arguments": ""}}])
    );
    assert_eq!(
        calls[1],
        &json!([{"index": 0, "function": {"arguments": "{\"country\":\"France\"}"}}])
    );
    // T14: the finish chunk waited for `metadata` and carries the usage.
    let last = cs.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(last["usage"]["prompt_tokens"], 489);
    assert_eq!(last["usage"]["completion_tokens"], 59);
    assert_eq!(last["usage"]["total_tokens"], 548);
    assert_eq!(last["object"], "chat.completion.chunk");
    // Every chunk is well formed.
    for c in &cs {
        assert_eq!(c["id"], "chatcmpl-req_1");
        assert_eq!(c["choices"][0]["index"], 0);
        assert!(c["choices"][0].get("logprobs").is_some());
    }
}

#[test]
fn recorded_text_stream() {
    let p = provider(false);
    let c = call(Endpoint::ChatCompletions, MODEL, true);
    let bytes = text_stream_bytes();
    let events = assert_split_invariant(&p, &c, &bytes);
    let cs = chunks(&events);
    let text: String = cs
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]
                .get("content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(
        text,
        "Let me count the \"r\"s in \"strawberry\":\n\ns-t-**r**-a-w-b-e-**r**-**r**-y\n\nThere are **3** r's in \"strawberry.\""
    );
    let last = cs.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["total_tokens"], 77);
    assert_eq!(events.last(), Some(&StreamEvent::Done));
    // Only one finish chunk.
    assert_eq!(
        cs.iter()
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .count(),
        1
    );

    // Legacy completions over the same stream.
    let lc = call(Endpoint::Completions, MODEL, true);
    let events = assert_split_invariant(&p, &lc, &bytes);
    let cs = chunks(&events);
    assert!(cs.iter().all(|c| c["object"] == "text_completion"));
    let text: String = cs
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert!(text.ends_with("in \"strawberry.\""));
    assert_eq!(cs.last().unwrap()["usage"]["total_tokens"], 77);
}

#[test]
fn stream_without_metadata_still_finishes() {
    // messageStop and then the end of the body: the finish chunk goes out at the end.
    let p = provider(false);
    let c = call(Endpoint::ChatCompletions, MODEL, true);
    let mut bytes = Vec::new();
    for (ev, body) in [
        ("messageStart", json!({"role": "assistant"})),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        ),
        ("messageStop", json!({"stopReason": "max_tokens"})),
    ] {
        bytes.extend(eventstream::encode(
            &[(":event-type", ev), (":message-type", "event")],
            body.to_string().as_bytes(),
        ));
    }
    let events = assert_split_invariant(&p, &c, &bytes);
    let cs = chunks(&events);
    assert_eq!(cs.last().unwrap()["choices"][0]["finish_reason"], "length");
    assert_eq!(events.last(), Some(&StreamEvent::Done));

    // Cut before messageStop: an error, not a clean end.
    let cut = &bytes[..bytes.len() - 10];
    let events = decode(p.stream_decoder(&c).as_mut(), &[cut]);
    assert!(matches!(events.last(), Some(StreamEvent::Error(_))));
}

#[test]
fn exception_frame_ends_the_stream_with_an_error() {
    let p = provider(false);
    let c = call(Endpoint::ChatCompletions, MODEL, true);
    let exc = b64(EXCEPTION_B64);
    let events = assert_split_invariant(&p, &c, &exc);
    assert_eq!(events.len(), 1);
    match &events[0] {
        StreamEvent::Error(e) => {
            assert_eq!(e.status(), 502);
            assert!(
                e.message().contains("Model Stream Error"),
                "{}",
                e.message()
            );
        }
        other => panic!("{other:?}"),
    }
    // After some text: the text, then the error, then nothing (no Done).
    let mut frames = Vec::new();
    let mut fp = eventstream::FrameParser::new();
    fp.feed(&text_stream_bytes(), &mut frames);
    let mut bytes2: Vec<u8> = Vec::new();
    for f in frames.iter().take(3) {
        let f = f.as_ref().unwrap();
        let hs: Vec<(&str, &str)> = f
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        bytes2.extend(eventstream::encode(&hs, &f.payload));
    }
    bytes2.extend(&exc);
    bytes2.extend(eventstream::encode(
        &[(":event-type", "messageStop"), (":message-type", "event")],
        br#"{"stopReason":"end_turn"}"#,
    ));
    let events = assert_split_invariant(&p, &c, &bytes2);
    assert_eq!(chunks(&events).len(), 3);
    assert!(matches!(events.last(), Some(StreamEvent::Error(_))));

    // A throttling exception in the stream is a 429.
    let t = eventstream::encode(
        &[
            (":message-type", "exception"),
            (":exception-type", "throttlingException"),
        ],
        br#"{"message":"slow down"}"#,
    );
    let events = decode(p.stream_decoder(&c).as_mut(), &[&t]);
    match &events[0] {
        StreamEvent::Error(e) => assert_eq!(e.status(), 429),
        other => panic!("{other:?}"),
    }
    // Corrupt bytes: an error.
    let mut bad = text_stream_bytes();
    bad[20] ^= 0xff;
    let events = decode(p.stream_decoder(&c).as_mut(), &[&bad]);
    assert!(matches!(events.last(), Some(StreamEvent::Error(_))));
}

#[test]
fn json_tool_streams_as_content() {
    let p = provider(false);
    let c = call(Endpoint::ChatCompletions, MODEL, true);
    let mut bytes = Vec::new();
    for (ev, body) in [
        ("messageStart", json!({"role": "assistant"})),
        (
            "contentBlockStart",
            json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t", "name": JSON_TOOL}}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"a\":"}}}),
        ),
        (
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "1}"}}}),
        ),
        ("contentBlockStop", json!({"contentBlockIndex": 0})),
        ("messageStop", json!({"stopReason": "tool_use"})),
        (
            "metadata",
            json!({"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}}),
        ),
    ] {
        bytes.extend(eventstream::encode(
            &[(":event-type", ev), (":message-type", "event")],
            body.to_string().as_bytes(),
        ));
    }
    let events = assert_split_invariant(&p, &c, &bytes);
    let cs = chunks(&events);
    let text: String = cs
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]
                .get("content")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(text, "{\"a\":1}");
    assert!(cs
        .iter()
        .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
    assert_eq!(cs.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

// --- errors ------------------------------------------------------------------

#[test]
fn errors_by_type() {
    let p = provider(false);
    let h = |t: &str| {
        let mut h = HeaderMap::new();
        h.insert("x-amzn-errortype", t.parse().unwrap());
        h
    };
    let e = p.map_error(
        StatusCode::BAD_REQUEST,
        &h("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        br#"{"message":"The provided model identifier is invalid."}"#,
    );
    assert_eq!(e.status(), 400);
    assert_eq!(e.kind().1, "invalid_request_error");
    assert_eq!(e.kind().2, Some("ValidationException"));
    assert_eq!(e.message(), "The provided model identifier is invalid.");

    let mut th = h("ThrottlingException");
    th.insert("retry-after", "3".parse().unwrap());
    let e = p.map_error(
        StatusCode::TOO_MANY_REQUESTS,
        &th,
        br#"{"message":"Too many requests"}"#,
    );
    assert_eq!(e.status(), 429);
    assert_eq!(e.retry_after().as_deref(), Some("3"));
    assert!(e.is_retryable());

    // The type from the body's __type when the header is missing.
    let e = p.map_error(
        StatusCode::FORBIDDEN,
        &HeaderMap::new(),
        br#"{"__type":"com.amazon.coral.service#AccessDeniedException","message":"no"}"#,
    );
    assert_eq!((e.status().as_u16(), e.kind().1), (403, "permission_error"));
    let e = p.map_error(
        StatusCode::NOT_FOUND,
        &h("ResourceNotFoundException"),
        b"{}",
    );
    assert_eq!(e.status(), 404);
    let e = p.map_error(
        StatusCode::SERVICE_UNAVAILABLE,
        &h("ServiceUnavailableException"),
        b"{}",
    );
    assert_eq!(e.status(), 503);
    assert!(e.is_retryable());
    let e = p.map_error(
        StatusCode::TOO_MANY_REQUESTS,
        &h("ModelNotReadyException"),
        b"{}",
    );
    assert_eq!(e.status(), 503);
    let e = p.map_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &h("InternalServerException"),
        b"{\"message\":\"x\"}",
    );
    assert_eq!(e.status(), 502);
    let e = p.map_error(
        StatusCode::REQUEST_TIMEOUT,
        &h("ModelTimeoutException"),
        b"{}",
    );
    assert_eq!(e.status(), 504);
    let e = p.map_error(
        StatusCode::FORBIDDEN,
        &h("InvalidSignatureException"),
        b"{\"message\":\"sig\"}",
    );
    assert_eq!(
        (e.status().as_u16(), e.kind().1),
        (403, "authentication_error")
    );
    let e = p.map_error(
        StatusCode::BAD_GATEWAY,
        &HeaderMap::new(),
        b"<html>bad gateway</html>",
    );
    assert_eq!(e.status(), 502);
}

// --- embeddings and legacy completions ------------------------------------------

#[test]
fn embeddings_titan_and_cohere() {
    let p = provider(false);
    let titan = "amazon.titan-embed-text-v2:0";
    let c = call(Endpoint::Embeddings, titan, false);
    let mut body = obj(
        json!({"model": "e", "input": "hello", "dimensions": 256, "encoding_format": "base64"}),
    );
    let req = p.build_request(&c, &mut body).unwrap();
    assert_eq!(
        req.uri().path(),
        "/model/amazon.titan-embed-text-v2%3A0/invoke"
    );
    assert_eq!(sent(&req), json!({"inputText": "hello", "dimensions": 256}));
    let r = p
        .translate_response(&c, br#"{"embedding":[0.1,-0.2],"embeddingsByType":{"float":[0.1,-0.2]},"inputTextTokenCount":3}"#)
        .unwrap();
    assert_eq!(
        Value::Object(r),
        json!({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
               "model": titan, "usage": {"prompt_tokens": 3, "total_tokens": 3}})
    );
    let mut two = obj(json!({"input": ["a", "b"]}));
    assert_eq!(
        p.build_request(&c, &mut two).unwrap_err().param(),
        Some("input")
    );

    let cohere = "cohere.embed-english-v3";
    let c = call(Endpoint::Embeddings, cohere, false);
    let mut body = obj(json!({"input": ["a", "b"]}));
    let req = p.build_request(&c, &mut body).unwrap();
    assert_eq!(
        sent(&req),
        json!({"texts": ["a", "b"], "input_type": "search_document"})
    );
    let r = p
        .translate_response(&c, br#"{"embeddings":[[0.1],[0.2]],"id":"x","response_type":"embeddings_floats","texts":["a","b"]}"#)
        .unwrap();
    assert_eq!(r["data"][1]["embedding"], json!([0.2]));
    assert_eq!(r["data"][1]["index"], 1);

    let c = call(Endpoint::Embeddings, MODEL, false);
    assert_eq!(
        p.build_request(&c, &mut obj(json!({"input": "x"})))
            .unwrap_err()
            .param(),
        Some("model")
    );
}

#[test]
fn legacy_completions_through_converse() {
    let p = provider(false);
    let c = call(Endpoint::Completions, MODEL, false);
    let mut body = obj(json!({"model": "m", "prompt": "Say hi", "max_tokens": 5}));
    let req = p.build_request(&c, &mut body).unwrap();
    assert!(req.uri().path().ends_with("/converse"));
    assert_eq!(
        sent(&req),
        json!({"messages": [{"role": "user", "content": [{"text": "Say hi"}]}], "inferenceConfig": {"maxTokens": 5}})
    );
    let mut body = obj(json!({"model": "m", "prompt": "Say hi"}));
    let req = p.build_request(&c, &mut body).unwrap();
    assert_eq!(sent(&req)["inferenceConfig"], json!({"maxTokens": 16}));
    let r = p.translate_response(&c, TEXT_JSON.as_bytes()).unwrap();
    assert_eq!(r["object"], "text_completion");
    assert!(r["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Let me count"));
    assert_eq!(r["usage"]["total_tokens"], 79);
}

/// Found by fuzzing (`response_bedrock`, input in fuzz/regressions): token
/// counts whose sum passes 2^64 overflowed (a panic in debug builds, a
/// wrapped, near-free count in release).
#[test]
fn huge_token_counts_saturate() {
    let found = include_bytes!("../../../fuzz/regressions/response_bedrock/usage-sum-overflow");
    let _ =
        provider(false).translate_response(&call(Endpoint::ChatCompletions, MODEL, false), found);
    let max = u64::MAX;
    let u = openai_usage(&json!({"inputTokens": max, "cacheReadInputTokens": 1,
        "cacheWriteInputTokens": 1, "outputTokens": max}));
    assert_eq!(
        (&u["prompt_tokens"], &u["total_tokens"]),
        (&json!(max), &json!(max))
    );
}
