//! Issue 15: the fast path (an OpenAI-format answer passed through with
//! `model` spliced in, streams chunk by chunk) and the translating path (a
//! `serde_json` tree, normalised and printed) give the client the same bytes
//! and meter the same usage, on the recorded OpenAI payloads of
//! `tests/fixtures/`. The translating gateway is the same config with every
//! provider wrapped so that it declines the fast path.

use std::sync::Arc;

use bytes::Bytes;
use conduit::memory::{
    ManualClock, MemoryKeyStore, MemoryUsageStore, QueueSpawner, ScriptedUpstream,
};
use conduit::metering::usage::UsageRecord;
use conduit::ports::NoLimits;
use conduit::providers::openai::passthrough::PassedThrough;
use conduit::providers::{Call, Provider, StreamDecoder};
use conduit::{Config, Gateway, GatewayError, Ports, ResponseBody};
use futures_executor::block_on;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

const MASTER: &str = "master-key-for-tests";

const CONFIG: &str = r#"
[providers.openai]
kind = "openai"
base_url = "http://upstream.test/v1"
api_key_env = "OPENAI_API_KEY"

[providers.compatible]
kind = "openai-compatible"
base_url = "http://compatible.test/v1"

[models.chat]
deployments = [{ provider = "openai", model = "gpt-4o-mini" }]

[models.compatible]
deployments = [{ provider = "compatible", model = "mistral-small" }]
"#;

/// Every call of the inner provider, but the fast paths declined.
struct Translating(Arc<dyn Provider>);

impl Provider for Translating {
    fn build_request(
        &self,
        call: &Call<'_>,
        body: &mut Map<String, Value>,
    ) -> Result<http::Request<Bytes>, GatewayError> {
        self.0.build_request(call, body)
    }
    fn translate_response(
        &self,
        call: &Call<'_>,
        body: &[u8],
    ) -> Result<Map<String, Value>, GatewayError> {
        self.0.translate_response(call, body)
    }
    fn pass_through(&self, _: &Call<'_>, _: &[u8], _: bool) -> Option<PassedThrough> {
        None
    }
    fn streams_openai_chunks(&self, _: &Call<'_>) -> bool {
        false
    }
    fn stream_decoder(&self, call: &Call<'_>) -> Box<dyn StreamDecoder> {
        self.0.stream_decoder(call)
    }
    fn map_error(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GatewayError {
        self.0.map_error(status, headers, body)
    }
}

/// What the upstream answers: a whole body, or a stream cut into pieces.
#[derive(Clone)]
enum Answer {
    Whole(Vec<u8>),
    Stream(Vec<u8>, usize),
}

struct Rig {
    gateway: Gateway,
    usage: Arc<MemoryUsageStore>,
    spawner: Arc<QueueSpawner>,
    key: String,
}

fn rig(answer: Answer, translating: bool) -> Rig {
    let mut config = Config::parse(CONFIG, "test", &|v| {
        (v == "OPENAI_API_KEY").then(|| "sk-upstream".into())
    })
    .unwrap();
    if translating {
        for route in config.models.values_mut() {
            for d in &mut route.deployments {
                d.provider = Arc::new(Translating(d.provider.clone()));
            }
        }
    }
    let upstream = ScriptedUpstream::new(move |_req| {
        Ok(match &answer {
            Answer::Whole(b) => http::Response::builder()
                .header("content-type", "application/json")
                .body(vec![Bytes::from(b.clone())])
                .unwrap(),
            Answer::Stream(b, n) => http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(b.chunks(*n).map(Bytes::copy_from_slice).collect())
                .unwrap(),
        })
    });
    let usage = Arc::new(MemoryUsageStore::default());
    let spawner = Arc::new(QueueSpawner::default());
    let ports = Ports {
        keys: Arc::new(MemoryKeyStore::default()),
        usage: usage.clone(),
        upstream,
        clock: Arc::new(ManualClock::new(1_780_000_000_000_000)),
        limiter: Arc::new(NoLimits),
        spawner: spawner.clone(),
    };
    let gateway = Gateway::new(config, ports, Some(MASTER));
    let created = block_on(
        gateway.handle(
            http::Request::post("/admin/keys")
                .header("authorization", format!("Bearer {MASTER}"))
                .body(Bytes::from_static(br#"{"name":"t"}"#))
                .unwrap(),
        ),
    );
    let ResponseBody::Full(b) = created.into_body() else {
        panic!("key")
    };
    let key = serde_json::from_slice::<Value>(&b).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    Rig {
        gateway,
        usage,
        spawner,
        key,
    }
}

/// The client's status and bytes, and the usage record.
fn call(
    answer: &Answer,
    translating: bool,
    path: &str,
    body: &Value,
) -> (u16, Vec<u8>, UsageRecord) {
    let rig = rig(answer.clone(), translating);
    let resp = block_on(
        rig.gateway.handle(
            http::Request::post(path)
                .header("authorization", format!("Bearer {}", rig.key))
                .body(Bytes::from(body.to_string()))
                .unwrap(),
        ),
    );
    let status = resp.status().as_u16();
    let bytes = match resp.into_body() {
        ResponseBody::Full(b) => b.to_vec(),
        ResponseBody::Stream(s) => block_on(s.collect::<Vec<Bytes>>()).concat(),
    };
    rig.spawner.run_all();
    let records = rig.usage.all();
    assert_eq!(records.len(), 1, "one usage record");
    (status, bytes, records[0].clone())
}

fn same_on_both_paths(name: &str, answer: Answer, path: &str, body: Value) -> Vec<u8> {
    let (fs, fast, frec) = call(&answer, false, path, &body);
    let (ss, slow, srec) = call(&answer, true, path, &body);
    assert_eq!(fs, 200, "{name}: {}", String::from_utf8_lossy(&fast));
    assert_eq!(fs, ss, "{name}: status");
    assert_eq!(
        String::from_utf8_lossy(&fast),
        String::from_utf8_lossy(&slow),
        "{name}: the client's bytes"
    );
    assert_eq!(frec.usage, srec.usage, "{name}: usage");
    assert_eq!(frec.cost_nanos, srec.cost_nanos, "{name}: cost");
    assert_eq!(frec.status, srec.status, "{name}: status recorded");
    assert!(frec.usage.total_tokens > 0, "{name}: metered");
    fast
}

fn compact(bytes: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::from_slice::<Value>(bytes).unwrap()).unwrap()
}

/// A stream recorded as decoded `data` lines (`.jsonl`), as SSE.
fn sse_of_jsonl(jsonl: &str) -> Vec<u8> {
    let mut out = String::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str("data: ");
        out.push_str(line.trim());
        out.push_str("\n\n");
    }
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

const TEXT_SSE: &[u8] =
    include_bytes!("fixtures/openai/chat.completions.stream.text.include_usage.sse");
const TOOLS_SSE: &[u8] =
    include_bytes!("fixtures/openai/chat.completions.stream.tool_calls.include_usage.sse");

fn chat_body(model: &str, stream: bool, include_usage: bool) -> Value {
    let mut b =
        json!({"model": model, "messages": [{"role": "user", "content": "Capital of France?"}]});
    if stream {
        b["stream"] = json!(true);
        if include_usage {
            b["stream_options"] = json!({"include_usage": true});
        }
    }
    b
}

#[test]
fn whole_answers_are_the_same_bytes_on_both_paths() {
    let embeddings = compact(include_bytes!("fixtures/openai/embeddings.float.json"));
    let out = same_on_both_paths(
        "embeddings",
        Answer::Whole(embeddings.clone()),
        "/v1/embeddings",
        json!({"model": "chat", "input": ["a", "b"]}),
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["model"], "chat");
    assert_eq!(v["data"][1]["embedding"][4], json!(-0.0035253682));
    // The client asked base64, the provider sent floats: both translate.
    let out = same_on_both_paths(
        "embeddings, base64 asked",
        Answer::Whole(embeddings),
        "/v1/embeddings",
        json!({"model": "chat", "input": ["a", "b"], "encoding_format": "base64"}),
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert!(v["data"][0]["embedding"].is_string());

    same_on_both_paths(
        "completions",
        Answer::Whole(compact(include_bytes!(
            "fixtures/openai/completions.text.length.json"
        ))),
        "/v1/completions",
        json!({"model": "chat", "prompt": "Invent a holiday"}),
    );
    let chat = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris \"FR\" é\u{1F600}", "refusal": null},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
                  "prompt_tokens_details": {"cached_tokens": 4}},
        "service_tier": "default", "system_fingerprint": "fp_1"});
    for model in ["chat", "compatible"] {
        same_on_both_paths(
            model,
            Answer::Whole(chat.to_string().into_bytes()),
            "/v1/chat/completions",
            chat_body(model, false, false),
        );
    }
    // What the normalisation fills in (a compatible host's answer): the
    // fast path declines, the bytes are still the same.
    let mut sparse = chat.clone();
    sparse["choices"][0]
        .as_object_mut()
        .unwrap()
        .remove("logprobs");
    sparse["system_fingerprint"] = Value::Null;
    same_on_both_paths(
        "sparse",
        Answer::Whole(sparse.to_string().into_bytes()),
        "/v1/chat/completions",
        chat_body("compatible", false, false),
    );
}

#[test]
fn streams_are_the_same_bytes_on_both_paths() {
    let completions = sse_of_jsonl(include_str!(
        "fixtures/openai/completions.stream.include_usage.decoded.jsonl"
    ));
    let azure = sse_of_jsonl(include_str!(
        "fixtures/azure/chat.completions.stream.model-router.content_filter_results.decoded.jsonl"
    ));
    let mistral = sse_of_jsonl(include_str!(
        "fixtures/mistral/chat.completion.chunks.tool_calls.decoded.jsonl"
    ));
    let cases: [(&str, &[u8], &str, &str); 5] = [
        ("text", TEXT_SSE, "/v1/chat/completions", "chat"),
        ("tool calls", TOOLS_SSE, "/v1/chat/completions", "chat"),
        ("completions", &completions, "/v1/completions", "chat"),
        ("azure", &azure, "/v1/chat/completions", "compatible"),
        ("mistral", &mistral, "/v1/chat/completions", "compatible"),
    ];
    for (name, sse, path, model) in cases {
        for include_usage in [false, true] {
            let mut body = chat_body(model, true, include_usage);
            if path == "/v1/completions" {
                let o = body.as_object_mut().unwrap();
                o.remove("messages");
                o.insert("prompt".into(), json!("Invent a holiday"));
            }
            // Whole events, and cut at every few bytes.
            for piece in [sse.len(), 7] {
                let out = same_on_both_paths(
                    &format!("{name}, include_usage {include_usage}, pieces of {piece}"),
                    Answer::Stream(sse.to_vec(), piece),
                    path,
                    body.clone(),
                );
                let text = String::from_utf8(out).unwrap();
                assert!(text.ends_with("data: [DONE]\n\n"), "{name}");
                assert_eq!(
                    text.contains("\"usage\":{"),
                    include_usage,
                    "{name}: {text}"
                );
                assert!(!text.contains("\"usage\":null"), "{name}");
                assert!(text.contains(&format!("\"model\":\"{model}\"")), "{name}");
            }
        }
    }
}
