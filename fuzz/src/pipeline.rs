//! Whole requests through the gateway over in-memory ports (keys, usage,
//! a manual clock, the single-process limiter and a scripted upstream),
//! and what every answer must be: a documented status, OpenAI's error
//! envelope, a well-framed SSE stream that ends once, and exactly one
//! usage record per request.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use conduit::keys::{hash_secret, VirtualKey};
use conduit::memory::{
    ManualClock, MemoryKeyStore, MemoryUsageStore, QueueSpawner, ScriptedUpstream,
};
use conduit::metering::limits::LocalLimiter;
use conduit::ports::{KeyStore, UpstreamError};
use conduit::providers::Endpoint;
use conduit::{Gateway, Ports, ResponseBody};
use futures_executor::block_on;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::setup::config;

/// The virtual key every fuzzed request carries.
pub const SECRET: &str = "condt_fuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuzzfuz";

/// What the upstream is asked, and answers.
pub type Responder = dyn Fn(&http::Request<Bytes>) -> Result<http::Response<Vec<Bytes>>, UpstreamError>
    + Send
    + Sync;

/// An answer, with its body read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub streamed: bool,
    pub body: Vec<u8>,
    /// The usage records written for the request.
    pub records: Vec<conduit::UsageRecord>,
    /// Its `x-request-id`.
    pub request_id: String,
}

/// Serves one request to a fresh gateway (fresh key, limits and spend, so
/// that every input is judged alone) whose upstream answers with `responder`.
pub fn serve(endpoint: Endpoint, body: &[u8], responder: Arc<Responder>) -> Answer {
    let clock = Arc::new(ManualClock::new(1_780_000_000_000_000));
    let keys = Arc::new(MemoryKeyStore::default());
    let key = VirtualKey::from_create_body(
        &json!({"name": "fuzz", "limits": {"rpm": 1_000_000, "tpm": 1_000_000_000_000u64},
                "budget": {"max_usd": 1_000_000.0, "period": "monthly"}}),
        "key_fuzz".into(),
        1_780_000_000,
    )
    .expect("the fuzz key is valid");
    block_on(keys.insert(&key, &hash_secret(SECRET))).expect("the in-memory store takes the key");
    let usage = Arc::new(MemoryUsageStore::default());
    let spawner = Arc::new(QueueSpawner::default());
    let ports = Ports {
        keys,
        usage: usage.clone(),
        upstream: ScriptedUpstream::new(move |r| responder(r)),
        clock: clock.clone(),
        limiter: Arc::new(LocalLimiter::new(clock, None)),
        spawner: spawner.clone(),
    };
    let gateway = Gateway::new(config().clone(), ports, None);
    let request = http::Request::post(format!("/v1/{}", endpoint.path()))
        .header("authorization", format!("Bearer {SECRET}"))
        .header("content-type", "application/json")
        .body(Bytes::copy_from_slice(body))
        .expect("a valid request head");
    let response = block_on(gateway.handle(request));
    let status = response.status().as_u16();
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (streamed, body) = match response.into_body() {
        ResponseBody::Full(b) => (false, b.to_vec()),
        ResponseBody::Stream(s) => {
            let pieces: Vec<Bytes> = block_on(s.collect());
            (true, pieces.concat())
        }
    };
    let left = spawner.run_all();
    assert_eq!(left, 0, "{left} background tasks never finished");
    Answer {
        status,
        streamed,
        body,
        records: usage.all(),
        request_id,
    }
}

impl Answer {
    /// The answer and its record with the request's random id replaced, to
    /// compare two runs of the same request.
    pub fn normalised(&self) -> (u16, String, Vec<conduit::UsageRecord>) {
        let body = String::from_utf8_lossy(&self.body);
        let body = if self.request_id.is_empty() {
            body.into_owned()
        } else {
            body.replace(&self.request_id, "req_ID")
        };
        let records = self
            .records
            .iter()
            .cloned()
            .map(|mut r| {
                r.request_id = "req_ID".into();
                // A trace made for a request without one is random.
                r.trace_id = None;
                r.traceparent = None;
                r
            })
            .collect();
        (self.status, body, records)
    }
}

/// The statuses an inference request may be answered with.
const STATUSES: [u16; 16] = [
    200, 400, 401, 402, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504, 529,
];

/// Checks an answer to an inference request for `alias` (the body's
/// `model`, when the request named one).
pub fn check_answer(answer: &Answer, alias: Option<&str>) {
    assert!(
        STATUSES.contains(&answer.status),
        "undocumented status {}",
        answer.status
    );
    assert_eq!(
        answer.records.len(),
        1,
        "a request must be recorded exactly once: {:?}",
        answer.records
    );
    let record = &answer.records[0];
    if answer.streamed {
        assert_eq!(answer.status, 200);
        let ended_ok = check_sse(&answer.body, alias);
        if ended_ok {
            assert_eq!(
                record.status, 200,
                "a completed stream recorded as {}",
                record.status
            );
        } else {
            assert!(
                record.status >= 400,
                "a failed stream recorded as {}",
                record.status
            );
        }
        return;
    }
    let v: Value = serde_json::from_slice(&answer.body).unwrap_or_else(|e| {
        panic!(
            "the answer is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&answer.body)
        )
    });
    assert_eq!(
        record.status, answer.status,
        "recorded status differs from the answer's"
    );
    if answer.status >= 400 {
        check_error_body(&v);
        assert_ne!(
            v["error"]["code"], "internal_error",
            "input caused an internal error: {v}"
        );
    } else {
        assert!(v.is_object(), "{v}");
        assert!(
            v.get("error").is_none_or(Value::is_null),
            "a success carrying an error object: {v}"
        );
        if let Some(alias) = alias {
            assert_eq!(v["model"], alias, "the answer must name the alias");
        }
    }
}

/// OpenAI's error envelope.
fn check_error_body(v: &Value) {
    assert!(
        v["error"]["message"].is_string(),
        "not an OpenAI error: {v}"
    );
    assert!(v["error"]["type"].is_string(), "not an OpenAI error: {v}");
}

/// The relay's output: `data: …\n\n` events, each a JSON object or
/// `[DONE]`, ending exactly once (with `[DONE]` or an error event).
/// Returns whether it ended with `[DONE]`.
fn check_sse(body: &[u8], alias: Option<&str>) -> bool {
    let text = std::str::from_utf8(body).expect("the stream is UTF-8");
    assert!(
        text.ends_with("\n\n"),
        "the stream does not end an event: {text:?}"
    );
    let events: Vec<&str> = text[..text.len() - 2].split("\n\n").collect();
    let last = events.len() - 1;
    for (i, ev) in events.iter().enumerate() {
        let data = ev
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not a data event: {ev:?}"));
        assert!(
            !data.contains('\n'),
            "a data line with a line break: {ev:?}"
        );
        if data == "[DONE]" {
            assert_eq!(i, last, "[DONE] before the end");
            return true;
        }
        let v: Value =
            serde_json::from_str(data).unwrap_or_else(|e| panic!("event not JSON ({e}): {data:?}"));
        // An error event has a non-null `error` (what the OpenAI SDKs check):
        // a provider's chunk passed through may carry `"error": null`.
        if v.get("error").is_some_and(|e| !e.is_null()) {
            assert_eq!(i, last, "an error event before the end");
            check_error_body(&v);
            return false;
        }
        if let Some(alias) = alias {
            assert_eq!(v["model"], alias, "a chunk must name the alias");
        }
    }
    panic!("the stream ended without [DONE] or an error event: {text:?}");
}

/// The `model` of a JSON body, if it is a string.
pub fn body_model(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("model")?.as_str().map(str::to_owned)
}

// ---------------------------------------------------------------------------
// Recorded answers (tests/fixtures), for the request targets' upstream.
// ---------------------------------------------------------------------------

macro_rules! fixture {
    ($path:literal) => {
        include_bytes!(concat!("../../tests/fixtures/", $path)).as_slice()
    };
}

const OPENAI_CHAT: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"hi","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;

/// An SSE body from a file of one JSON event per line.
fn sse_of_jsonl(jsonl: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in jsonl.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.extend_from_slice(b"\n\n");
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn ok(content_type: &str, body: Vec<u8>) -> http::Response<Vec<Bytes>> {
    let mut r = http::Response::new(vec![Bytes::from(body)]);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// A recorded answer for whatever the gateway asks (by host, path and
/// `stream`): the request targets fuzz what the client sends, with real
/// provider answers behind.
pub fn recorded_answer(
    req: &http::Request<Bytes>,
) -> Result<http::Response<Vec<Bytes>>, UpstreamError> {
    if req.method() == http::Method::GET {
        // An image fetched for a provider that needs the bytes.
        return Ok(ok("image/png", b"\x89PNG\r\n\x1a\nfuzz".to_vec()));
    }
    let host = req.uri().host().unwrap_or_default().to_owned();
    let path = req.uri().path().to_owned();
    let body: Value = serde_json::from_slice(req.body()).unwrap_or(Value::Null);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let json = |b: &[u8]| Ok(ok("application/json", b.to_vec()));
    let sse = |b: Vec<u8>| Ok(ok("text/event-stream", b));
    match host.split('.').next().unwrap_or_default() {
        "openai" | "azure" | "compatible" => {
            if body["model"] == "broken" {
                let mut r = ok(
                    "application/json",
                    br#"{"error":{"message":"boom","type":"server_error"}}"#.to_vec(),
                );
                *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                return Ok(r);
            }
            if path.ends_with("/embeddings") {
                json(fixture!("openai/embeddings.float.json"))
            } else if path.ends_with("/chat/completions") {
                if stream {
                    sse(fixture!("openai/chat.completions.stream.text.include_usage.sse").to_vec())
                } else {
                    json(OPENAI_CHAT)
                }
            } else if stream {
                sse(sse_of_jsonl(fixture!(
                    "openai/completions.stream.include_usage.decoded.jsonl"
                )))
            } else {
                json(fixture!("openai/completions.text.length.json"))
            }
        }
        "anthropic" => {
            if stream {
                sse(fixture!("anthropic/messages.stream.text.recorded.sse").to_vec())
            } else {
                json(fixture!("anthropic/messages.text.json"))
            }
        }
        "gemini" => {
            if path.ends_with(":streamGenerateContent") {
                sse(fixture!("gemini/streamGenerateContent.text.alt-sse.recorded.sse").to_vec())
            } else if path.ends_with(":embedContent") {
                json(br#"{"embedding": {"values": [0.1, -0.2]}}"#)
            } else if path.ends_with(":batchEmbedContents") {
                json(br#"{"embeddings": [{"values": [1.0]}, {"values": [2.0]}], "usageMetadata": {"promptTokenCount": 4}}"#)
            } else {
                json(fixture!("gemini/generateContent.functionCall.json"))
            }
        }
        "bedrock" => {
            if path.ends_with("/converse-stream") {
                let b64: Vec<u8> =
                    fixture!("bedrock/converse-stream.tool_use.recorded.eventstream.b64")
                        .iter()
                        .copied()
                        .filter(|b| !b.is_ascii_whitespace())
                        .collect();
                let frames = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| UpstreamError(format!("bad fixture: {e}")))?;
                Ok(ok("application/vnd.amazon.eventstream", frames))
            } else if path.ends_with("/converse") {
                json(fixture!("bedrock/converse.text.json"))
            } else if path.contains("titan") {
                json(br#"{"embedding":[0.1,-0.2],"embeddingsByType":{"float":[0.1,-0.2]},"inputTextTokenCount":3}"#)
            } else {
                json(br#"{"embeddings":[[0.1],[0.2]],"id":"x","response_type":"embeddings_floats","texts":["a","b"]}"#)
            }
        }
        "cohere" => {
            if path.ends_with("/v2/embed") {
                json(fixture!("cohere/embed.v2.float.json"))
            } else if stream {
                sse(fixture!("cohere/chat.v2.stream.text.sse").to_vec())
            } else {
                json(fixture!("cohere/chat.v2.tool_calls.json"))
            }
        }
        _ => Err(UpstreamError(format!("no such host {host}"))),
    }
}

/// One client request body to `endpoint` through the whole pipeline, with
/// recorded provider answers behind it.
pub fn check_request(endpoint: Endpoint, body: &[u8]) {
    crate::scan::check_scan(body);
    let answer = serve(endpoint, body, Arc::new(recorded_answer));
    check_answer(&answer, body_model(body).as_deref());
}

/// The provider kinds [`check_upstream`] picks from.
const KINDS: [&str; 7] = [
    "openai",
    "azure",
    "anthropic",
    "gemini",
    "bedrock",
    "cohere",
    "compatible",
];
/// Read sizes the upstream body is cut into.
const PIECES: [usize; 16] = [
    1,
    2,
    3,
    4,
    5,
    7,
    11,
    16,
    31,
    64,
    100,
    256,
    1000,
    4096,
    65536,
    usize::MAX,
];
/// Upstream statuses: mostly success, then the errors providers send.
const UPSTREAM_STATUSES: [u16; 16] = [
    200, 200, 200, 200, 200, 200, 200, 200, 400, 401, 404, 429, 500, 503, 529, 302,
];

/// What `select` asks for: the provider kind, the endpoint, whether it streams.
pub fn upstream_case(select: u8) -> (&'static str, Endpoint, bool) {
    let kind = KINDS[select as usize % KINDS.len()];
    let endpoint = crate::setup::ENDPOINTS[(select as usize / KINDS.len()) % 3];
    let stream = (select as usize / (KINDS.len() * 3)) % 2 == 1 && endpoint != Endpoint::Embeddings;
    (kind, endpoint, stream)
}

/// A fixed client request (chosen by `select`) whose provider answers with
/// `body` (status and read size from `shape`): the answer, streamed or
/// whole, through the gateway's translation, relay and metering.
pub fn check_upstream(select: u8, shape: u8, body: &[u8]) {
    let (kind, endpoint, stream) = upstream_case(select);
    let alias = crate::setup::alias_for(kind, endpoint);
    let status = UPSTREAM_STATUSES[(shape >> 4) as usize];
    let request = match endpoint {
        Endpoint::ChatCompletions if stream => {
            json!({"model": alias, "messages": [{"role": "user", "content": "Hi"}],
            "stream": true, "stream_options": {"include_usage": true}})
        }
        Endpoint::ChatCompletions => {
            json!({"model": alias, "messages": [{"role": "user", "content": "Hi"}]})
        }
        Endpoint::Completions => {
            json!({"model": alias, "prompt": "Say hi", "max_tokens": 16, "stream": stream})
        }
        Endpoint::Embeddings => json!({"model": alias, "input": "hello"}),
        Endpoint::Responses => json!({"model": alias, "input": "Hi", "stream": stream}),
        Endpoint::Messages => json!({"model": alias, "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": "Hi"}]}),
    };
    let piece = PIECES[(shape & 15) as usize];
    let content_type = match (kind, stream && status == 200) {
        ("bedrock", true) => "application/vnd.amazon.eventstream",
        (_, true) => "text/event-stream",
        _ => "application/json",
    };
    let run = |piece: usize| {
        let pieces: Vec<Bytes> = body
            .chunks(piece.min(body.len().max(1)))
            .map(Bytes::copy_from_slice)
            .collect();
        serve(
            endpoint,
            request.to_string().as_bytes(),
            Arc::new(move |_req: &http::Request<Bytes>| {
                let mut r = http::Response::new(pieces.clone());
                *r.status_mut() =
                    http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(content_type),
                );
                Ok(r)
            }),
        )
    };
    let answer = run(piece);
    check_answer(&answer, Some(alias));
    if status == 200 && !stream && ["openai", "azure"].contains(&kind) && error_object(&body) {
        // A 200 carrying `{"error": …}` is the provider failing, never a success.
        assert_ne!(
            answer.status, 200,
            "a 200 with an error object passed as a success"
        );
    }
    if piece != usize::MAX {
        // Read boundaries change nothing: not the client's bytes, not the bill.
        let whole = run(usize::MAX);
        assert_eq!(
            answer.normalised(),
            whole.normalised(),
            "{piece}-byte reads answer otherwise than one read"
        );
    }
}

/// A JSON object with a non-null `error`.
fn error_object(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").map(|e| !e.is_null()))
        .unwrap_or(false)
}
