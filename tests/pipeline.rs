//! The pipeline end to end, in process: the core with its in-memory ports
//! and a scripted upstream that answers from recorded OpenAI payloads.

use std::sync::Arc;

use bytes::Bytes;
use conduit::memory::{
    ManualClock, MemoryKeyStore, MemoryUsageStore, QueueSpawner, ScriptedUpstream,
};
use conduit::ports::{ByteStream, NoLimits, Upstream, UpstreamError};
use conduit::{Config, Gateway, Ports, ResponseBody};
use futures_executor::block_on;
use futures_util::StreamExt;
use serde_json::{json, Value};

const TEXT_SSE: &[u8] =
    include_bytes!("fixtures/openai/chat.completions.stream.text.include_usage.sse");
const TOOLS_SSE: &[u8] =
    include_bytes!("fixtures/openai/chat.completions.stream.tool_calls.include_usage.sse");
const MASTER: &str = "master-key-for-tests";

const CONFIG: &str = r#"
[providers.openai]
kind = "openai"
base_url = "http://upstream.test/v1"
api_key_env = "OPENAI_API_KEY"

[providers.backup]
kind = "openai-compatible"
base_url = "http://backup.test/v1"

[models."my-gpt4"]
deployments = [{ provider = "openai", model = "gpt-4o" }]

[models."fallback"]
deployments = [{ provider = "openai", model = "broken" }, { provider = "backup", model = "llama" }]

[models."stream-retry"]
deployments = [{ provider = "openai", model = "stream-error" }, { provider = "backup", model = "llama" }]

[models."broken-only"]
deployments = [{ provider = "openai", model = "broken" }]

[models."other"]
deployments = [{ provider = "openai", model = "gpt-4o-mini" }]

[gateway]
max_body_bytes = 2048
upstream_timeout_ms = 1000
"#;

fn chat_json() -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": null},
                     "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
                  "prompt_tokens_details": {"cached_tokens": 4}}})
}

/// Answers by the upstream model name: `broken` → 500, streams → the fixture
/// in one piece (or cut at `split` bytes), otherwise a chat completion.
fn responder(
    split: Option<usize>,
) -> impl Fn(&http::Request<Bytes>) -> Result<http::Response<Vec<Bytes>>, UpstreamError> {
    move |req| {
        let body: Value = serde_json::from_slice(req.body()).unwrap();
        if body["model"] == "broken" {
            return Ok(http::Response::builder()
                .status(500)
                .body(vec![Bytes::from_static(
                    b"{\"error\":{\"message\":\"boom\"}}",
                )])
                .unwrap());
        }
        if body["model"] == "stream-error" {
            // A 200 whose first event is an error: a failed attempt.
            return Ok(http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(vec![Bytes::from_static(
                    b"data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n",
                )])
                .unwrap());
        }
        if body["stream"] == true {
            let fixture = if body["tools"].is_array() {
                TOOLS_SSE
            } else {
                TEXT_SSE
            };
            let pieces = match split {
                Some(n) => fixture.chunks(n).map(Bytes::copy_from_slice).collect(),
                None => vec![Bytes::from_static(fixture)],
            };
            return Ok(http::Response::builder()
                .header("content-type", "text/event-stream")
                .body(pieces)
                .unwrap());
        }
        Ok(http::Response::new(vec![Bytes::from(
            chat_json().to_string(),
        )]))
    }
}

struct Harness {
    gateway: Gateway,
    usage: Arc<MemoryUsageStore>,
    scripted: Option<Arc<ScriptedUpstream>>,
    clock: Arc<ManualClock>,
}

fn harness_with(upstream: Arc<dyn Upstream>, scripted: Option<Arc<ScriptedUpstream>>) -> Harness {
    harness_on(
        upstream,
        scripted,
        Arc::new(ManualClock::new(1_780_000_000_000_000)),
    )
}

fn harness_on(
    upstream: Arc<dyn Upstream>,
    scripted: Option<Arc<ScriptedUpstream>>,
    clock: Arc<ManualClock>,
) -> Harness {
    let config = Config::parse(CONFIG, "test", &|v| {
        (v == "OPENAI_API_KEY").then(|| "sk-upstream".into())
    })
    .unwrap();
    let usage = Arc::new(MemoryUsageStore::default());
    let ports = Ports {
        keys: Arc::new(MemoryKeyStore::default()),
        usage: usage.clone(),
        upstream,
        clock: clock.clone(),
        limiter: Arc::new(NoLimits),
        spawner: Arc::new(QueueSpawner::default()),
    };
    Harness {
        gateway: Gateway::new(config, ports, Some(MASTER)),
        usage,
        scripted,
        clock,
    }
}

fn harness(split: Option<usize>) -> Harness {
    let s = ScriptedUpstream::new(responder(split));
    harness_with(s.clone(), Some(s))
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

impl Harness {
    fn call(&self, method: &str, path: &str, auth: Option<&str>, body: &str) -> Answer {
        let mut b = http::Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            b = b.header("authorization", format!("Bearer {a}"));
        }
        let resp = block_on(
            self.gateway
                .handle(b.body(Bytes::from(body.to_owned())).unwrap()),
        );
        let (parts, body) = resp.into_parts();
        let body = match body {
            ResponseBody::Full(b) => b.to_vec(),
            ResponseBody::Stream(s) => block_on(s.collect::<Vec<Bytes>>()).concat(),
        };
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    fn create_key(&self, body: Value) -> (String, String) {
        let a = self.call("POST", "/admin/keys", Some(MASTER), &body.to_string());
        assert_eq!(a.status, 201, "{}", a.text());
        let v = a.json();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }

    fn sent(&self) -> Vec<(String, Value, http::HeaderMap)> {
        self.scripted
            .as_ref()
            .unwrap()
            .requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.uri().to_string(),
                    serde_json::from_slice(r.body()).unwrap(),
                    r.headers().clone(),
                )
            })
            .collect()
    }
}

fn error_code(a: &Answer) -> String {
    let v = a.json();
    let e = v["error"].as_object().expect("error envelope");
    assert_eq!(e.len(), 4, "message, type, param, code: {e:?}");
    e["code"].as_str().unwrap_or_default().to_owned()
}

fn data_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn chat_is_proxied_with_alias_and_metered() {
    let h = harness(None);
    let (id, key) = h.create_key(json!({"name": "a"}));
    let a = h.call(
        "POST",
        "/v1/chat/completions",
        Some(&key),
        r#"{"model":"my-gpt4","messages":[{"role":"user","content":"hi"}],"foo_unknown":{"x":1}}"#,
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["model"], "my-gpt4");
    assert_eq!(v["choices"][0]["message"]["content"], "hi");
    assert!(
        a.headers.contains_key("x-request-id") && a.headers.contains_key("x-conduit-overhead-ms")
    );
    let sent = h.sent();
    assert_eq!(sent[0].0, "http://upstream.test/v1/chat/completions");
    assert_eq!(sent[0].1["model"], "gpt-4o");
    assert_eq!(sent[0].1["foo_unknown"], json!({"x": 1}));
    assert_eq!(sent[0].2["authorization"], "Bearer sk-upstream");
    let records = h.usage.all();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (r.key_id.as_str(), r.model.as_str(), r.status, r.streamed),
        (id.as_str(), "my-gpt4", 200, false)
    );
    assert_eq!(
        (
            r.usage.prompt_tokens,
            r.usage.completion_tokens,
            r.usage.cached_tokens
        ),
        (9, 2, 4)
    );
    assert_eq!(r.provider.as_deref(), Some("openai"));
    assert_eq!(r.request_id, a.headers["x-request-id"].to_str().unwrap());
}

#[test]
fn stream_relays_events_and_usage_only_when_asked() {
    for include_usage in [false, true] {
        let h = harness(None);
        let (_, key) = h.create_key(json!({"name": "s"}));
        let body = json!({"model": "my-gpt4", "messages": [], "stream": true,
            "stream_options": {"include_usage": include_usage}});
        let a = h.call(
            "POST",
            "/v1/chat/completions",
            Some(&key),
            &body.to_string(),
        );
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["content-type"], "text/event-stream");
        let events = data_events(&a.text());
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(chunks.iter().all(|c| c["model"] == "my-gpt4"));
        let usage_chunks: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"].as_array().unwrap().is_empty())
            .collect();
        assert_eq!(
            usage_chunks.len(),
            usize::from(include_usage),
            "usage chunk iff asked"
        );
        if include_usage {
            assert!(usage_chunks[0]["usage"]["total_tokens"].as_u64().unwrap() > 0);
            assert_eq!(
                chunks.last().unwrap(),
                usage_chunks[0],
                "usage chunk is last"
            );
        }
        assert!(chunks
            .iter()
            .filter(|c| !c["choices"].as_array().unwrap().is_empty())
            .all(|c| c.get("usage").is_none()));
        assert_eq!(
            h.sent()[0].1["stream_options"]["include_usage"],
            true,
            "always asked upstream"
        );
        let records = h.usage.all();
        assert_eq!(records.len(), 1);
        assert!(
            records[0].streamed && records[0].status == 200 && records[0].usage.total_tokens > 0
        );
    }
}

#[test]
fn stream_output_is_the_same_for_any_upstream_split() {
    let whole = {
        let h = harness(None);
        let (_, key) = h.create_key(json!({"name": "w"}));
        h.call("POST", "/v1/chat/completions", Some(&key),
            r#"{"model":"my-gpt4","messages":[],"stream":true,"tools":[],"stream_options":{"include_usage":true}}"#).text()
    };
    for split in [1, 2, 3, 7, 64, 333] {
        let h = harness(Some(split));
        let (_, key) = h.create_key(json!({"name": "p"}));
        let t = h.call("POST", "/v1/chat/completions", Some(&key),
            r#"{"model":"my-gpt4","messages":[],"stream":true,"tools":[],"stream_options":{"include_usage":true}}"#).text();
        assert_eq!(t, whole, "split {split}");
    }
    assert!(whole.contains("\"tool_calls\""));
}

#[test]
fn fallback_moves_to_the_next_deployment() {
    let h = harness(None);
    let (_, key) = h.create_key(json!({"name": "f"}));
    let a = h.call(
        "POST",
        "/v1/chat/completions",
        Some(&key),
        r#"{"model":"fallback","messages":[]}"#,
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let sent = h.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].0, "http://backup.test/v1/chat/completions");
    assert!(
        !sent[1].2.contains_key("authorization"),
        "no key configured for backup"
    );
    assert_eq!(h.usage.all()[0].provider.as_deref(), Some("backup"));
    assert_eq!(a.headers["x-conduit-deployment"], "backup/llama");
    assert_eq!(a.headers["x-conduit-attempts"], "2");
    let record = &h.usage.all()[0];
    assert_eq!(record.attempts, 2);
    assert_eq!(record.failed_attempts[0].provider, "openai");
    assert_eq!(record.failed_attempts[0].status, 500);
}

#[test]
fn a_stream_opening_with_an_error_event_is_retried_before_committing() {
    let h = harness(None);
    let (_, key) = h.create_key(json!({"name": "s"}));
    let a = h.call(
        "POST",
        "/v1/chat/completions",
        Some(&key),
        r#"{"model":"stream-retry","stream":true,"messages":[]}"#,
    );
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.headers["x-conduit-deployment"], "backup/llama");
    assert_eq!(a.headers["x-conduit-attempts"], "2");
    let events = data_events(&a.text());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events.iter().all(|e| !e.contains("\"error\"")),
        "the client sees one clean stream: {events:?}"
    );
    let record = &h.usage.all()[0];
    assert_eq!((record.attempts, record.failed_attempts.len()), (2, 1));
    assert_eq!(record.failed_attempts[0].model, "stream-error");
}

#[test]
fn error_table() {
    let h = harness(None);
    let (id, key) = h.create_key(json!({"name": "e", "allowed_models": ["my-*"]}));
    let chat = |auth: Option<&str>, body: &str| h.call("POST", "/v1/chat/completions", auth, body);
    let ok = r#"{"model":"my-gpt4","messages":[]}"#;

    let a = chat(None, ok);
    assert_eq!((a.status, error_code(&a)), (401, "invalid_api_key".into()));
    let a = chat(Some("condt_nope"), ok);
    assert_eq!((a.status, error_code(&a)), (401, "invalid_api_key".into()));
    let a = chat(Some(&key), "{not json");
    assert_eq!((a.status, error_code(&a)), (400, "invalid_request".into()));
    let a = chat(Some(&key), r#"{"messages":[]}"#);
    assert_eq!(
        (a.status, a.json()["error"]["param"].clone()),
        (400, json!("model"))
    );
    let a = chat(Some(&key), r#"{"model":"my-gpt4"}"#);
    assert_eq!(
        (a.status, a.json()["error"]["param"].clone()),
        (400, json!("messages"))
    );
    let a = chat(Some(&key), r#"{"model":"other","messages":[]}"#);
    assert_eq!(
        (a.status, error_code(&a)),
        (403, "model_not_allowed".into())
    );
    let a = chat(Some(&key), r#"{"model":"my-unknown","messages":[]}"#);
    assert_eq!((a.status, error_code(&a)), (404, "model_not_found".into()));
    let a = chat(
        Some(&key),
        &format!(
            r#"{{"model":"my-gpt4","messages":[],"pad":"{}"}}"#,
            "x".repeat(3000)
        ),
    );
    assert_eq!(
        (a.status, error_code(&a)),
        (413, "request_too_large".into())
    );
    let a = h.call("GET", "/v1/chat/completions", Some(&key), "");
    assert_eq!(
        (a.status, error_code(&a)),
        (405, "method_not_allowed".into())
    );
    let a = h.call("GET", "/v1/nothing", Some(&key), "");
    assert_eq!(a.status, 404);

    h.call(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(MASTER),
        r#"{"enabled":false}"#,
    );
    assert_eq!(chat(Some(&key), ok).status, 401);
    h.call(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(MASTER),
        r#"{"enabled":true,"expires_at":"2020-01-01T00:00:00Z"}"#,
    );
    let a = chat(Some(&key), ok);
    assert!(
        a.status == 401
            && a.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("expired")
    );
    // Every authenticated request is metered, refused ones included.
    assert!(h.usage.all().iter().any(|r| r.status == 403));
}

#[test]
fn upstream_5xx_is_502_and_timeout_is_504() {
    let h = harness(None);
    let (_, key) = h.create_key(json!({"name": "u"}));
    let a = h.call(
        "POST",
        "/v1/chat/completions",
        Some(&key),
        r#"{"model":"broken-only","messages":[]}"#,
    );
    assert_eq!((a.status, error_code(&a)), (502, "upstream_error".into()));
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("boom"));

    struct Hang;
    conduit::port! {
        impl Upstream for Hang {
            async fn send(&self, _r: http::Request<Bytes>) -> Result<http::Response<ByteStream>, UpstreamError> {
                std::future::pending().await
            }
        }
    }
    let h = harness_with(Arc::new(Hang), None);
    h.clock
        .instant_sleep
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (_, key) = h.create_key(json!({"name": "t"}));
    let a = h.call(
        "POST",
        "/v1/chat/completions",
        Some(&key),
        r#"{"model":"my-gpt4","messages":[]}"#,
    );
    assert_eq!((a.status, error_code(&a)), (504, "upstream_timeout".into()));
    assert_eq!(h.usage.all()[0].status, 504);
}

#[test]
fn broken_stream_ends_with_an_error_event_and_drop_still_meters() {
    struct Cut;
    conduit::port! {
        impl Upstream for Cut {
            async fn send(&self, _r: http::Request<Bytes>) -> Result<http::Response<ByteStream>, UpstreamError> {
                // The role chunk and the first content chunk, then a reset.
                let first = Bytes::from_static(&TEXT_SSE[..800]);
                let body: ByteStream = Box::pin(futures_util::stream::iter(vec![Ok(first), Err(UpstreamError("reset".into()))]));
                Ok(http::Response::new(body))
            }
        }
    }
    let h = harness_with(Arc::new(Cut), None);
    let (_, key) = h.create_key(json!({"name": "c"}));
    let a = h.call(
        "POST",
        "/v1/chat/completions",
        Some(&key),
        r#"{"model":"my-gpt4","messages":[],"stream":true}"#,
    );
    let events = data_events(&a.text());
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error");
    assert!(!a.text().contains("[DONE]"));
    let record = &h.usage.all()[0];
    assert_eq!(record.status, 502);
    // Content reached the client before the break: billed like a disconnect
    // (prompt estimate + the larger of the allowance and what was relayed).
    assert!(events.len() > 1, "content was relayed first");
    assert_eq!(record.usage.completion_tokens, 4_096);
    assert!(record.cost_nanos.unwrap_or(0) > 0, "{record:?}");

    // A client that goes away mid-stream: the record is still written, once.
    let h = harness(Some(50));
    let (_, key) = h.create_key(json!({"name": "d"}));
    let req = http::Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {key}"))
        .body(Bytes::from_static(
            br#"{"model":"my-gpt4","messages":[],"stream":true}"#,
        ))
        .unwrap();
    let resp = block_on(h.gateway.handle(req));
    let ResponseBody::Stream(mut s) = resp.into_body() else {
        panic!("not a stream")
    };
    assert!(block_on(s.next()).is_some());
    drop(s);
    let records = h.usage.all();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, 499);
}

#[test]
fn admin_api_lifecycle() {
    let h = harness(None);
    assert_eq!(h.call("GET", "/admin/keys", None, "").status, 401);
    assert_eq!(h.call("GET", "/admin/keys", Some("wrong"), "").status, 401);
    let a = h.call("POST", "/admin/keys", Some(MASTER), r#"{"enabled":true}"#);
    assert_eq!(a.status, 400);
    let (id, key) =
        h.create_key(json!({"name": "life", "metadata": {"team": "x"}, "limits": {"rpm": 3}}));
    let listed = h.call("GET", "/admin/keys", Some(MASTER), "").json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(
        !listed.to_string().contains(&key),
        "the secret is never listed"
    );
    let got = h
        .call("GET", &format!("/admin/keys/{id}"), Some(MASTER), "")
        .json();
    assert_eq!(got["metadata"]["team"], "x");
    assert_eq!(got["limits"]["rpm"], 3);
    let models = h.call("GET", "/v1/models", Some(&key), "").json();
    assert_eq!(models["data"].as_array().unwrap().len(), 5);
    h.call(
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(MASTER),
        r#"{"allowed_models":["other"]}"#,
    );
    let models = h.call("GET", "/v1/models", Some(&key), "").json();
    assert_eq!(models["data"][0]["id"], "other");
    assert_eq!(
        h.call("GET", "/v1/models/other", Some(&key), "").json()["object"],
        "model"
    );
    assert_eq!(
        h.call("GET", "/v1/models/my-gpt4", Some(&key), "").status,
        403
    );

    let rotated = h
        .call(
            "POST",
            &format!("/admin/keys/{id}/rotate"),
            Some(MASTER),
            "",
        )
        .json();
    let new_key = rotated["key"].as_str().unwrap();
    assert_eq!(h.call("GET", "/v1/models", Some(&key), "").status, 401);
    assert_eq!(h.call("GET", "/v1/models", Some(new_key), "").status, 200);
    assert_eq!(
        h.call("DELETE", &format!("/admin/keys/{id}"), Some(MASTER), "")
            .status,
        200
    );
    assert_eq!(h.call("GET", "/v1/models", Some(new_key), "").status, 401);
    assert_eq!(
        h.call("GET", &format!("/admin/keys/{id}"), Some(MASTER), "")
            .status,
        404
    );
}

#[test]
fn an_error_event_after_content_is_billed() {
    let h = harness_with(
        ScriptedUpstream::new(|_r| {
            let sse = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n\
                       data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
            Ok(http::Response::new(vec![Bytes::from(sse)]))
        }),
        None,
    );
    let (_, key) = h.create_key(json!({"name": "e"}));
    let a = h.call(
        "POST",
        "/v1/chat/completions",
        Some(&key),
        r#"{"model":"my-gpt4","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":50}"#,
    );
    assert!(a.text().contains("Hel"));
    assert!(a.text().contains("\"error\""));
    let record = &h.usage.all()[0];
    assert_eq!(record.status, 502);
    assert_eq!(record.usage.completion_tokens, 50);
    assert!(record.usage.prompt_tokens > 0);
    assert!(record.cost_nanos.unwrap_or(0) > 0);
}

#[test]
fn a_huge_max_tokens_is_a_400_naming_it() {
    let h = harness(None);
    let (_, key) = h.create_key(json!({"name": "m", "limits": {"tpm": 1000}}));
    for body in [
        r#"{"model":"my-gpt4","messages":[],"max_tokens":18446744073709551615}"#,
        r#"{"model":"my-gpt4","messages":[],"max_completion_tokens":18446744073709551000}"#,
    ] {
        let a = h.call("POST", "/v1/chat/completions", Some(&key), body);
        assert_eq!(a.status, 400, "{}", a.text());
        let param = a.json()["error"]["param"].as_str().unwrap().to_owned();
        assert!(param.starts_with("max_"), "{param}");
    }
    assert!(h.sent().is_empty(), "nothing went upstream");
}

#[test]
fn a_200_carrying_an_error_object_is_a_provider_failure() {
    let h = harness_with(
        ScriptedUpstream::new(|_r| {
            Ok(http::Response::new(vec![Bytes::from_static(
                br#"{"error":{"message":"quota gone","type":"insufficient_quota"}}"#,
            )]))
        }),
        None,
    );
    let (_, key) = h.create_key(json!({"name": "o"}));
    let a = h.call(
        "POST",
        "/v1/chat/completions",
        Some(&key),
        r#"{"model":"my-gpt4","messages":[]}"#,
    );
    assert_eq!((a.status, error_code(&a)), (502, "upstream_error".into()));
    assert!(a.text().contains("quota gone"));
    let record = &h.usage.all()[0];
    assert_eq!((record.status, record.cost_nanos), (502, Some(0)));
}

#[test]
fn a_provider_dripping_bytes_times_out_between_events() {
    // One content event, then an event that never ends, a byte at a time,
    // each byte 300 ms after the last (the clock moves as the bytes come).
    struct Drip(Arc<ManualClock>);
    conduit::port! {
        impl Upstream for Drip {
            async fn send(&self, _r: http::Request<Bytes>) -> Result<http::Response<ByteStream>, UpstreamError> {
                let clock = self.0.clone();
                let first = Bytes::from_static(&TEXT_SSE[..400]);
                let drip = futures_util::stream::iter(0..10_000).map(move |_| {
                    clock.advance(std::time::Duration::from_millis(300));
                    Ok(Bytes::from_static(b"x"))
                });
                let body: ByteStream = Box::pin(
                    futures_util::stream::iter(vec![Ok(first), Ok(Bytes::from_static(b"data: {"))]).chain(drip),
                );
                Ok(http::Response::new(body))
            }
        }
    }
    let clock = Arc::new(ManualClock::new(1_780_000_000_000_000));
    let h = harness_on(Arc::new(Drip(clock.clone())), None, clock);
    let (_, key) = h.create_key(json!({"name": "d"}));
    let a = h.call(
        "POST",
        "/v1/chat/completions",
        Some(&key),
        r#"{"model":"my-gpt4","messages":[],"stream":true}"#,
    );
    let events = data_events(&a.text());
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout");
    // Cut off after about the idle timeout (1 s), not after the whole drip.
    let record = &h.usage.all()[0];
    assert_eq!(record.status, 504);
    assert!(record.latency_us < 3_000_000, "{}", record.latency_us);
}

#[test]
fn an_endless_stream_event_ends_with_an_error_and_bounded_memory() {
    // A provider that sends one event of 8 MiB + 1 and more.
    let h = harness_with(
        ScriptedUpstream::new(|_r| {
            let mut pieces = vec![Bytes::from_static(b"data: {\"a\":\"")];
            let chunk = Bytes::from(vec![b'z'; 1024 * 1024]);
            for _ in 0..9 {
                pieces.push(chunk.clone());
            }
            Ok(http::Response::new(pieces))
        }),
        None,
    );
    let (_, key) = h.create_key(json!({"name": "big"}));
    let a = h.call(
        "POST",
        "/v1/chat/completions",
        Some(&key),
        r#"{"model":"my-gpt4","messages":[],"stream":true}"#,
    );
    let events = data_events(&a.text());
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error");
    assert!(last["error"]["message"].as_str().unwrap().contains("over"));
    assert_eq!(h.usage.all()[0].status, 502);
}

/// A request with extra headers (`call` sends only `authorization`).
fn call_with(h: &Harness, key: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("authorization", format!("Bearer {key}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = block_on(
        h.gateway
            .handle(b.body(Bytes::from(body.to_owned())).unwrap()),
    );
    let (parts, body) = resp.into_parts();
    let body = match body {
        ResponseBody::Full(b) => b.to_vec(),
        ResponseBody::Stream(s) => block_on(s.collect::<Vec<Bytes>>()).concat(),
    };
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

#[test]
fn the_clients_traceparent_reaches_every_attempt_and_the_record() {
    use conduit::observe::trace::parse_traceparent;
    let h = harness(None);
    let (_, key) = h.create_key(json!({"name": "t"}));
    let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let a = call_with(
        &h,
        &key,
        r#"{"model":"fallback","messages":[{"role":"user","content":"hi"}]}"#,
        &[("traceparent", client), ("tracestate", "congo=t61rcWkgMzE")],
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let sent = h.sent();
    assert_eq!(sent.len(), 2, "the 500, then the fallback");
    let record = &h.usage.all()[0];
    assert_eq!(
        record.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    for (_, _, headers) in &sent {
        let tp = headers["traceparent"].to_str().unwrap();
        let (trace, parent, flags) = parse_traceparent(tp.as_bytes()).expect("valid");
        assert_eq!(trace[..2], [0x4b, 0xf9]);
        // Conduit's own span is the provider's parent, not the client's.
        assert_ne!(parent, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(flags, 1);
        assert_eq!(headers["tracestate"], "congo=t61rcWkgMzE");
        assert_eq!(record.traceparent.as_deref(), Some(tp));
    }
    // The admin API returns it.
    let u = h.call("GET", "/admin/usage", Some(MASTER), "").json();
    assert_eq!(u["data"][0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        u["data"][0]["failed_attempts"][0]["kind"], "5xx",
        "{}",
        u["data"][0]
    );
}

#[test]
fn a_missing_or_invalid_traceparent_starts_a_new_trace() {
    use conduit::observe::trace::parse_traceparent;
    let h = harness(None);
    let (_, key) = h.create_key(json!({"name": "t"}));
    let body = r#"{"model":"my-gpt4","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    for headers in [
        vec![],
        vec![(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )],
    ] {
        let a = call_with(&h, &key, body, &headers);
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let sent = h.sent();
    let records = h.usage.all();
    assert_eq!((sent.len(), records.len()), (2, 2));
    let mut ids = Vec::new();
    for (_, _, headers) in &sent {
        let tp = headers["traceparent"].to_str().unwrap();
        assert!(!headers.contains_key("tracestate"));
        let (trace, _, _) = parse_traceparent(tp.as_bytes()).expect("a valid new one");
        assert_ne!(trace, [0; 16]);
        assert!(records.iter().any(|r| r.traceparent.as_deref() == Some(tp)
            && tp[3..35] == *r.trace_id.as_deref().unwrap()));
        ids.push(trace);
    }
    assert_ne!(ids[0], ids[1]);
}

/// Collects the observer's events as their log lines.
#[derive(Default)]
struct Recorder {
    started: std::sync::atomic::AtomicUsize,
    lines: std::sync::Mutex<Vec<Value>>,
}

impl conduit::observe::Observer for Recorder {
    fn started(&self) {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn finished(&self, event: &conduit::observe::RequestEvent<'_>) {
        let v = serde_json::from_str(&event.log_line()).unwrap();
        self.lines.lock().unwrap().push(v);
    }
}

#[test]
fn every_inference_request_reaches_the_observer_once() {
    let h = harness(None);
    let recorder = Arc::new(Recorder::default());
    let h = Harness {
        gateway: h.gateway.with_observer(recorder.clone()),
        ..h
    };
    let (key_id, key) =
        h.create_key(json!({"name": "o", "allowed_models": ["my-gpt4", "fallback", "nope"]}));
    let chat = |model: &str, stream: bool| {
        format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":{stream}}}"#
        )
    };
    assert_eq!(
        call_with(&h, &key, &chat("my-gpt4", false), &[]).status,
        200
    );
    assert_eq!(call_with(&h, &key, &chat("my-gpt4", true), &[]).status, 200);
    assert_eq!(
        call_with(&h, &key, &chat("fallback", false), &[]).status,
        200
    );
    assert_eq!(call_with(&h, &key, &chat("other", false), &[]).status, 403);
    assert_eq!(call_with(&h, &key, &chat("nope", false), &[]).status, 404);
    assert_eq!(
        call_with(&h, "condt_wrong", &chat("my-gpt4", false), &[]).status,
        401
    );
    // Not inference: not observed.
    assert_eq!(h.call("GET", "/v1/models", Some(&key), "").status, 200);
    let lines = recorder.lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 6);
    assert_eq!(
        recorder.started.load(std::sync::atomic::Ordering::Relaxed),
        6
    );
    let [whole, stream, fallback, not_allowed, unknown, bad_key] = &lines[..] else {
        unreachable!()
    };
    assert_eq!(whole["alias"], "my-gpt4");
    assert_eq!(whole["provider"], "openai");
    assert_eq!(whole["status_class"], "2xx");
    assert_eq!(whole["key_id"], key_id.as_str());
    assert_eq!(whole["prompt_tokens"], 9);
    assert_eq!(whole["cached_tokens"], 4);
    assert_eq!(whole["key_cache"], "miss");
    assert_eq!(whole["ttfe_ms"], Value::Null);
    assert_eq!(stream["streamed"], true);
    assert_eq!(stream["key_cache"], "hit");
    assert!(stream["ttfe_ms"].is_number(), "{stream}");
    assert_eq!(fallback["attempts"], 2);
    assert_eq!(fallback["provider"], "backup");
    assert_eq!(
        fallback["failures"],
        json!([{"provider": "openai", "kind": "5xx", "status": 500}])
    );
    assert_eq!(not_allowed["refusal"], "model_not_allowed");
    assert_eq!(not_allowed["alias"], "other");
    // An unknown `model` is no alias: it never becomes a label.
    assert_eq!(unknown["alias"], Value::Null);
    assert_eq!(unknown["status"], 404);
    assert_eq!(bad_key["refusal"], "invalid_api_key");
    assert_eq!(bad_key["key_id"], Value::Null);
    assert!(bad_key["trace_id"].as_str().is_some_and(|t| t.len() == 32));
    for line in &lines {
        let text = line.to_string();
        assert!(!text.contains(&key) && !text.contains("sk-upstream"));
    }
}

#[test]
fn a_request_dropped_while_its_key_is_looked_up_leaves_nothing_in_flight() {
    use conduit::ports::{KeyStore, StoreError};
    use conduit::VirtualKey;
    /// A key store that never answers a lookup.
    struct Stalled;
    conduit::port! {
        impl KeyStore for Stalled {
            async fn find_by_hash(&self, _hash: &str) -> Result<Option<VirtualKey>, StoreError> {
                std::future::pending().await
            }
            async fn get(&self, _id: &str) -> Result<Option<VirtualKey>, StoreError> { Ok(None) }
            async fn list(&self) -> Result<Vec<VirtualKey>, StoreError> { Ok(Vec::new()) }
            async fn insert(&self, _key: &VirtualKey, _hash: &str) -> Result<(), StoreError> { Ok(()) }
            async fn update(&self, _key: &VirtualKey) -> Result<bool, StoreError> { Ok(false) }
            async fn set_hash(&self, _id: &str, _hash: &str) -> Result<bool, StoreError> { Ok(false) }
            async fn delete(&self, _id: &str) -> Result<bool, StoreError> { Ok(false) }
        }
    }
    let config = Config::parse(CONFIG, "test", &|_| Some("sk".into())).unwrap();
    let ports = Ports {
        keys: Arc::new(Stalled),
        usage: Arc::new(MemoryUsageStore::default()),
        upstream: ScriptedUpstream::new(responder(None)),
        clock: Arc::new(ManualClock::new(1_780_000_000_000_000)),
        limiter: Arc::new(NoLimits),
        spawner: Arc::new(QueueSpawner::default()),
    };
    let recorder = Arc::new(Recorder::default());
    let gateway = Gateway::new(config, ports, None).with_observer(recorder.clone());
    let request = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("authorization", "Bearer condt_whatever")
        .body(Bytes::from_static(b"{}"))
        .unwrap();
    let mut pending = Box::pin(gateway.handle(request));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(std::future::Future::poll(pending.as_mut(), &mut cx).is_pending());
    assert!(recorder.lines.lock().unwrap().is_empty());
    drop(pending); // the client went away
    let lines = recorder.lines.lock().unwrap().clone();
    assert_eq!(
        recorder.started.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (lines[0]["status"].as_u64(), lines[0]["refusal"].as_str()),
        (Some(499), None)
    );
}
