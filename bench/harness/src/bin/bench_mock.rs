//! `bench-mock`: a fast mock OpenAI upstream for benchmarks.
//!
//! - `POST …/chat/completions`: a canned `chat.completion` JSON, or with `"stream": true`
//!   an SSE stream of `--chunks` content chunks (plus a role chunk, a finish chunk, the
//!   usage-only chunk when `stream_options.include_usage` is true, and `data: [DONE]`),
//!   with `--stream-delay-ms` (fractions allowed) between events.
//! - `POST …/completions`: a canned answer.
//! - `POST …/embeddings`: one `--embedding-dims` (default 1,536) vector per input, in the
//!   shape OpenAI answers (compact JSON, floats printed as float32, about 17 KB for one
//!   1,536-dimension vector), or base64 (little-endian float32) when the request asks for
//!   `encoding_format: "base64"`, as OpenAI does. The vectors are made once at start.
//! - A path under `/fast/` (e.g. `/fast/v1/chat/completions`) streams without the
//!   `--stream-delay-ms` pause: the concurrent-streams phase of the benchmark uses it.
//! - `GET /health`: `{"status":"ok"}`.
//!
//! Prints `listening on http://127.0.0.1:PORT` on stdout once bound.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use conduit_bench::{err, Args, Result};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::time::Sleep;

const USAGE: &str = "usage: bench-mock [--listen 127.0.0.1:0] [--workers 1] [--chunks 10] \
[--stream-delay-ms 0] [--require-key KEY] [--max-body-bytes 1048576] [--embedding-dims 1536]";

/// The largest request body the mock reads.
const DEFAULT_MAX_BODY: usize = 1 << 20;

struct Config {
    chunks: usize,
    delay: Duration,
    require_key: Option<String>,
    max_body: usize,
    served: AtomicU64,
    /// The embedding vector: as JSON numbers (`[…]`) and as base64.
    embedding_json: String,
    embedding_base64: String,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bench-mock: {e}");
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
}

fn real_main() -> Result<()> {
    let args = Args::parse(std::env::args().skip(1), &["help"])?;
    if args.flag("help") {
        println!("{USAGE}");
        return Ok(());
    }
    args.check_known(&[
        "listen",
        "workers",
        "chunks",
        "stream-delay-ms",
        "require-key",
        "max-body-bytes",
        "embedding-dims",
    ])?;
    let listen: SocketAddr = args.parse_or("listen", SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let workers: usize = args.parse_or("workers", 1)?;
    let delay_ms: f64 = args.parse_or("stream-delay-ms", 0.0)?;
    if !(0.0..=60_000.0).contains(&delay_ms) {
        return Err(err("--stream-delay-ms must be between 0 and 60000"));
    }
    let dims: usize = args.parse_or("embedding-dims", 1536)?;
    if !(1..=65_536).contains(&dims) {
        return Err(err("--embedding-dims must be 1..=65536"));
    }
    let (embedding_json, embedding_base64) = conduit_bench::payloads::embedding_vector(dims);
    let cfg = Arc::new(Config {
        embedding_json,
        embedding_base64,
        chunks: args.parse_or("chunks", 10)?,
        delay: Duration::from_secs_f64(delay_ms / 1000.0),
        require_key: args.get("require-key").map(str::to_string),
        max_body: args.parse_or("max-body-bytes", DEFAULT_MAX_BODY)?,
        served: AtomicU64::new(0),
    });

    let rt = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    rt.block_on(serve(listen, cfg))
}

async fn serve(listen: SocketAddr, cfg: Arc<Config>) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| err(format!("bind {listen}: {e}")))?;
    let local = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{local}")?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(v) => v,
                    Err(e) => {
                        eprintln!("bench-mock: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, cfg.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    eprintln!(
        "bench-mock: served {} requests",
        cfg.served.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Response body of the mock: a whole buffer or a paced SSE stream.
enum MockBody {
    Full(Option<Bytes>),
    Sse(SseBody),
}

struct SseBody {
    events: VecDeque<Bytes>,
    delay: Duration,
    wait_before_next: bool,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Sse(s) => {
                if s.events.is_empty() {
                    return Poll::Ready(None);
                }
                if s.wait_before_next && !s.delay.is_zero() {
                    let delay = s.delay;
                    let sleep = s
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    s.sleep = None;
                }
                s.wait_before_next = true;
                Poll::Ready(s.events.pop_front().map(|b| Ok(Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(b) => b.is_none(),
            MockBody::Sse(s) => s.events.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Sse(_) => SizeHint::default(),
        }
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response<MockBody> {
    let body = Bytes::from(v.to_string());
    let mut resp = Response::new(MockBody::Full(Some(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(status: StatusCode, message: &str, kind: &str, code: &str) -> Response<MockBody> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

async fn handle(
    req: Request<Incoming>,
    cfg: Arc<Config>,
) -> std::result::Result<Response<MockBody>, Infallible> {
    cfg.served.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    if req.method() == Method::GET && (path == "/health" || path == "/v1/health") {
        return Ok(json_response(StatusCode::OK, &json!({"status": "ok"})));
    }
    let endpoint = if path.ends_with("/chat/completions") {
        Endpoint::Chat
    } else if path.ends_with("/completions") {
        Endpoint::Completions
    } else if path.ends_with("/embeddings") {
        Endpoint::Embeddings
    } else {
        return Ok(error_response(
            StatusCode::NOT_FOUND,
            "unknown path",
            "invalid_request_error",
            "not_found",
        ));
    };
    if req.method() != Method::POST {
        return Ok(error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST",
            "invalid_request_error",
            "method_not_allowed",
        ));
    }
    if let Some(want) = &cfg.require_key {
        let ok = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|k| k == want);
        if !ok {
            return Ok(error_response(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided.",
                "invalid_request_error",
                "invalid_api_key",
            ));
        }
    }
    let body = match Limited::new(req.into_body(), cfg.max_body).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Ok(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large or unreadable",
                "invalid_request_error",
                "request_too_large",
            ))
        }
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Ok(error_response(
                StatusCode::BAD_REQUEST,
                "request body is not a JSON object",
                "invalid_request_error",
                "invalid_request",
            ))
        }
    };
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_string();
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let base64 = v.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let inputs = match v.get("input") {
        Some(Value::Array(a)) if !a.is_empty() && !a[0].is_number() => a.len(),
        _ => 1,
    };
    let fast = path.starts_with("/fast/");
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(match endpoint {
        Endpoint::Chat if stream => sse_chat(&cfg, &model, include_usage, fast),
        Endpoint::Chat => json_response(StatusCode::OK, &chat_completion(&model)),
        Endpoint::Completions => json_response(StatusCode::OK, &text_completion(&model)),
        Endpoint::Embeddings => embeddings(&cfg, &model, inputs, base64),
    })
}

enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

const CREATED: u64 = 1_700_000_000;
const PROMPT_TOKENS: u64 = 24;

fn usage(completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
    })
}

fn chat_completion(model: &str) -> Value {
    json!({
        "id": "chatcmpl-mock0001",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?", "refusal": null},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": usage(9),
        "system_fingerprint": "fp_mock",
    })
}

fn text_completion(model: &str) -> Value {
    json!({
        "id": "cmpl-mock0001",
        "object": "text_completion",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "text": " Hello there.", "logprobs": null, "finish_reason": "stop"}],
        "usage": usage(3),
    })
}

/// `inputs` vectors, written as text (a `serde_json` tree would print the
/// floats as f64, unlike OpenAI).
fn embeddings(cfg: &Config, model: &str, inputs: usize, base64: bool) -> Response<MockBody> {
    let vector = if base64 {
        &cfg.embedding_base64
    } else {
        &cfg.embedding_json
    };
    let mut body = String::with_capacity(inputs * (vector.len() + 48) + 160);
    body.push_str(r#"{"object":"list","data":["#);
    for i in 0..inputs.min(2048) {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"object":"embedding","index":{i},"embedding":{vector}}}"#
        ));
    }
    let tokens = 8 * inputs as u64;
    body.push_str(&format!(
        r#"],"model":{},"usage":{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}}}"#,
        Value::String(model.to_owned())
    ));
    let mut resp = Response::new(MockBody::Full(Some(Bytes::from(body))));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn sse_event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn chunk(model: &str, delta: Value, finish: Value) -> Value {
    json!({
        "id": "chatcmpl-mock0001",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}

const WORDS: [&str; 8] = [
    "Hello", "!", " How", " can", " I", " help", " you", " today?",
];

fn sse_chat(cfg: &Config, model: &str, include_usage: bool, fast: bool) -> Response<MockBody> {
    let mut events = VecDeque::with_capacity(cfg.chunks + 4);
    events.push_back(sse_event(&chunk(
        model,
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )));
    for i in 0..cfg.chunks {
        let word = WORDS[i % WORDS.len()];
        events.push_back(sse_event(&chunk(
            model,
            json!({ "content": word }),
            Value::Null,
        )));
    }
    events.push_back(sse_event(&chunk(model, json!({}), json!("stop"))));
    if include_usage {
        events.push_back(sse_event(&json!({
            "id": "chatcmpl-mock0001",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": usage(cfg.chunks as u64),
        })));
    }
    events.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
    let mut resp = Response::new(MockBody::Sse(SseBody {
        events,
        delay: if fast { Duration::ZERO } else { cfg.delay },
        wait_before_next: false,
        sleep: None,
    }));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    resp
}
