//! `bench-alloc`: heap allocations per request through the core, counted by a
//! counting global allocator, split into the request path (from
//! `Gateway::handle` until the upstream port is called: authentication,
//! parsing, admission, routing, the upstream request) and the response path
//! (from the upstream's answer until the client's body is fully produced and
//! the work after the response, settlement and usage record, has run).
//!
//! The ports are in memory (`conduit::memory`): a key store, a usage store
//! that keeps the records, no limits or the single-process limiter (`limited`
//! key: rpm, rpd, tpm and a budget), and an upstream that answers at once
//! with the bench mock's answers: a chat completion, a 1,536-dimension
//! embedding (float JSON), and a stream of 10 content chunks with the
//! usage-only chunk. Allocation counts do not depend on the machine's load.

use std::alloc::{GlobalAlloc, Layout, System};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use conduit::memory::{ManualClock, MemoryKeyStore, MemoryUsageStore, QueueSpawner};
use conduit::metering::limits::LocalLimiter;
use conduit::ports::{ByteStream, Limiter, NoLimits, Upstream, UpstreamError};
use conduit::{Config, Gateway, Ports, ResponseBody};
use conduit_bench::{err, Args, Result};
use serde_json::{json, Value};

const HELP: &str = "\
bench-alloc: heap allocations per request through Gateway::handle (in process)

Options:
  --requests N   measured requests per case (default 1000)
  --warmup N     unmeasured requests first (default 200)
  --out FILE     also write the markdown table to FILE
  --json FILE    also write the figures as JSON to FILE
  --help
";

/// Counts every allocation (and reallocation) and its bytes.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counters() -> (u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

/// Answers every request with the same body, and notes the counters when called.
struct FixedUpstream {
    content_type: &'static str,
    pieces: Vec<Bytes>,
    at_send: std::sync::Mutex<(u64, u64)>,
}

struct Pieces(std::vec::IntoIter<Bytes>);

impl futures_core::Stream for Pieces {
    type Item = std::result::Result<Bytes, UpstreamError>;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.0.next().map(Ok))
    }
}

conduit::port! {
    impl Upstream for FixedUpstream {
        async fn send(&self, request: http::Request<Bytes>) -> std::result::Result<http::Response<ByteStream>, UpstreamError> {
            if let Ok(mut at) = self.at_send.lock() {
                *at = counters();
            }
            drop(request);
            let body: ByteStream = Box::pin(Pieces(self.pieces.clone().into_iter()));
            let mut r = http::Response::new(body);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(self.content_type),
            );
            Ok(r)
        }
    }
}

/// Polls a future whose ports are all ready at once.
fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..10_000 {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Ok(v);
        }
    }
    Err(err("a gateway future did not complete"))
}

const CREATED: u64 = 1_700_000_000;

fn chat_answer() -> Bytes {
    Bytes::from(
        json!({
            "id": "chatcmpl-mock0001", "object": "chat.completion", "created": CREATED,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?", "refusal": null},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 24, "completion_tokens": 9, "total_tokens": 33,
                "prompt_tokens_details": {"cached_tokens": 0}},
            "system_fingerprint": "fp_mock",
        })
        .to_string(),
    )
}

fn embeddings_answer() -> Bytes {
    let (vector, _) = conduit_bench::payloads::embedding_vector(1536);
    Bytes::from(format!(
        r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":{vector}}}],"model":"text-embedding-3-small","usage":{{"prompt_tokens":8,"total_tokens":8}}}}"#
    ))
}

/// The mock's stream: role chunk, 10 content chunks, finish chunk, usage chunk, `[DONE]`;
/// one upstream read per event.
fn stream_answer() -> Vec<Bytes> {
    let chunk = |delta: Value, finish: Value| {
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-mock0001", "object": "chat.completion.chunk", "created": CREATED,
                "model": "gpt-4o-mini", "system_fingerprint": "fp_mock",
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        ))
    };
    let words = [
        "Hello", "!", " How", " can", " I", " help", " you", " today?",
    ];
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for i in 0..10 {
        out.push(chunk(
            json!({ "content": words[i % words.len()] }),
            Value::Null,
        ));
    }
    out.push(chunk(json!({}), json!("stop")));
    out.push(Bytes::from(format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-mock0001", "object": "chat.completion.chunk", "created": CREATED,
            "model": "gpt-4o-mini", "system_fingerprint": "fp_mock", "choices": [],
            "usage": {"prompt_tokens": 24, "completion_tokens": 10, "total_tokens": 34,
                "prompt_tokens_details": {"cached_tokens": 0}}})
    )));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

const MASTER: &str = "bench-alloc-master";

struct Case {
    name: &'static str,
    path: &'static str,
    body: Bytes,
    content_type: &'static str,
    pieces: Vec<Bytes>,
}

struct Rig {
    gateway: Gateway,
    upstream: Arc<FixedUpstream>,
    spawner: Arc<QueueSpawner>,
    key: String,
}

fn rig(case: &Case, key_body: &'static str, limited: bool) -> Result<Rig> {
    let text = "[providers.p]\nkind = \"openai\"\nbase_url = \"http://upstream.invalid/v1\"\n\
        api_key_env = \"BENCH_API_KEY\"\n\n[models.bench]\n\
        deployments = [{ provider = \"p\", model = \"gpt-4o-mini\" }]\n";
    let config = Config::parse(text, "bench-alloc", &|v| {
        (v == "BENCH_API_KEY").then(|| "bench-provider-key".to_owned())
    })
    .map_err(|e| err(e.to_string()))?;
    let clock = Arc::new(ManualClock::new(1_782_955_818_000_000));
    let spawner = Arc::new(QueueSpawner::default());
    let upstream = Arc::new(FixedUpstream {
        content_type: case.content_type,
        pieces: case.pieces.clone(),
        at_send: std::sync::Mutex::new((0, 0)),
    });
    let limiter: Arc<dyn Limiter> = if limited {
        Arc::new(LocalLimiter::new(clock.clone(), None))
    } else {
        Arc::new(NoLimits)
    };
    let ports = Ports {
        keys: Arc::new(MemoryKeyStore::default()),
        usage: Arc::new(MemoryUsageStore::default()),
        upstream: upstream.clone(),
        clock,
        limiter,
        spawner: spawner.clone(),
    };
    let gateway = Gateway::new(config, ports, Some(MASTER));
    let created = block_on(
        gateway.handle(
            http::Request::post("/admin/keys")
                .header("authorization", format!("Bearer {MASTER}"))
                .body(Bytes::from_static(key_body.as_bytes()))
                .map_err(|e| err(e.to_string()))?,
        ),
    )?;
    let key = match created.into_body() {
        ResponseBody::Full(b) => serde_json::from_slice::<Value>(&b)
            .ok()
            .and_then(|v| v["key"].as_str().map(str::to_owned))
            .ok_or_else(|| err("POST /admin/keys gave no key"))?,
        ResponseBody::Stream(_) => return Err(err("POST /admin/keys streamed")),
    };
    Ok(Rig {
        gateway,
        upstream,
        spawner,
        key,
    })
}

/// One request; (allocations, bytes) of the request path and of the response path.
fn once(rig: &Rig, case: &Case, auth: &str) -> Result<[(u64, u64); 2]> {
    let req = http::Request::post(case.path)
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(case.body.clone())
        .map_err(|e| err(e.to_string()))?;
    let start = counters();
    let resp = block_on(rig.gateway.handle(req))?;
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let mut len = 0;
    match body {
        ResponseBody::Full(b) => len += b.len(),
        ResponseBody::Stream(mut s) => {
            let mut cx = Context::from_waker(Waker::noop());
            loop {
                match s.as_mut().poll_next(&mut cx) {
                    Poll::Ready(Some(b)) => len += b.len(),
                    Poll::Ready(None) => break,
                    Poll::Pending => {}
                }
            }
        }
    }
    drop(parts);
    rig.spawner.run_all();
    let end = counters();
    if !status.is_success() || len == 0 {
        return Err(err(format!("{}: the gateway answered {status}", case.name)));
    }
    let sent = rig.upstream.at_send.lock().map(|a| *a).unwrap_or(end);
    Ok([
        (sent.0 - start.0, sent.1 - start.1),
        (end.0 - sent.0, end.1 - sent.1),
    ])
}

fn main() {
    if let Err(e) = run() {
        eprintln!("bench-alloc: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let args = Args::parse(std::env::args().skip(1), &["help"])?;
    if args.flag("help") {
        print!("{HELP}");
        return Ok(());
    }
    args.check_known(&["requests", "warmup", "out", "json"])?;
    let requests: u64 = args.parse_or("requests", 1000)?;
    let warmup: u64 = args.parse_or("warmup", 200)?;
    if requests == 0 {
        return Err(err("--requests must be at least 1"));
    }
    let chat_body = r#"{"model":"bench","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}"#;
    let stream_body = r#"{"model":"bench","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32,"stream":true}"#;
    let emb_body =
        r#"{"model":"bench","input":"The food was delicious and the waiter was friendly."}"#;
    let cases = [
        Case {
            name: "chat",
            path: "/v1/chat/completions",
            body: Bytes::from_static(chat_body.as_bytes()),
            content_type: "application/json",
            pieces: vec![chat_answer()],
        },
        Case {
            name: "embeddings (1536 floats)",
            path: "/v1/embeddings",
            body: Bytes::from_static(emb_body.as_bytes()),
            content_type: "application/json",
            pieces: vec![embeddings_answer()],
        },
        Case {
            name: "stream (13 events)",
            path: "/v1/chat/completions",
            body: Bytes::from_static(stream_body.as_bytes()),
            content_type: "text/event-stream",
            pieces: stream_answer(),
        },
    ];
    let keys: [(&str, &'static str, bool); 2] = [
        ("plain", r#"{"name":"bench-alloc"}"#, false),
        (
            "limited",
            r#"{"name":"bench-alloc-limited","limits":{"rpm":100000000,"rpd":1000000000,"tpm":1000000000},"budget":{"max_usd":1000000,"period":"total"}}"#,
            true,
        ),
    ];
    let mut table = String::from(
        "| case | key | allocations / request | request path | response path | bytes allocated / request |\n|---|---|---:|---:|---:|---:|\n",
    );
    let mut figures = serde_json::Map::new();
    for case in &cases {
        for (key_name, key_body, limited) in keys {
            let rig = rig(case, key_body, limited)?;
            let auth = format!("Bearer {}", rig.key);
            for _ in 0..warmup {
                once(&rig, case, &auth)?;
            }
            let mut sum = [(0u64, 0u64); 2];
            for _ in 0..requests {
                let [a, b] = once(&rig, case, &auth)?;
                sum[0].0 += a.0;
                sum[0].1 += a.1;
                sum[1].0 += b.0;
                sum[1].1 += b.1;
            }
            let per = |x: u64| x as f64 / requests as f64;
            let (req, resp) = (per(sum[0].0), per(sum[1].0));
            let bytes = per(sum[0].1 + sum[1].1);
            table.push_str(&format!(
                "| {} | {key_name} | {:.1} | {req:.1} | {resp:.1} | {bytes:.0} |\n",
                case.name,
                req + resp
            ));
            figures.insert(
                format!("{} / {key_name}", case.name),
                json!({"allocations": req + resp, "request_path": req, "response_path": resp, "bytes": bytes}),
            );
        }
    }
    print!("{table}");
    if let Some(path) = args.get("out") {
        std::fs::write(path, &table).map_err(|e| err(format!("write {path}: {e}")))?;
    }
    if let Some(path) = args.get("json") {
        std::fs::write(path, Value::Object(figures).to_string())
            .map_err(|e| err(format!("write {path}: {e}")))?;
    }
    Ok(())
}
