//! Conduit as a Cloudflare Worker.
//!
//! A thin adapter: it maps the Worker's request, response and bindings onto
//! the core's ports and hands every request to [`conduit::Gateway`].
//!
//! | port      | on Workers                                                     |
//! |-----------|----------------------------------------------------------------|
//! | keys      | KV namespace `KEYS` (by SHA-256), with the core's cache in front |
//! | limiter   | Durable Object `KEY_OBJECT`, one per key: admission, settlement, and the authority on revocation |
//! | usage     | the same Durable Object (queryable), records batched per key   |
//! | observer  | one JSON log line per request ([`conduit::observe`]), for Workers Logs |
//! | upstream  | `fetch`, streamed both ways, aborted when the client goes away |
//! | clock     | `Date.now()`, `setTimeout`                                     |
//! | spawner   | `ctx.wait_until` (settlement and usage after the response)     |
//!
//! Configuration: the TOML document in the var or secret `CONDUIT_CONFIG`
//! (the same as the server's, `[server]` ignored), the admin master key in
//! `CONDUIT_MASTER_KEY`, provider keys in the secrets named by `api_key_env`.

mod key_object;
mod ports;

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use conduit::compat::BoxStream;
use conduit::ports::Spawner;
use conduit::{Config, Gateway, GatewayError, Ports, ResponseBody};
use futures_util::future::{select, Either};
use futures_util::{Stream, StreamExt};
use serde_json::json;
use wasm_bindgen::JsValue;
use worker::{event, Context, Env};

pub use key_object::KeyObject;
use ports::{
    ContextSpawner, FetchUpstream, KvKeyStore, ObjectLimiter, ObjectUsageStore, WorkerClock,
};

thread_local! {
    /// The gateway of this isolate, built on its first request.
    static GATEWAY: RefCell<Option<Rc<Gateway>>> = const { RefCell::new(None) };
    /// Requests this isolate served, and its name in the round-trip log.
    static SERVED: RefCell<(u64, u64)> = const { RefCell::new((0, 0)) };
    /// Whether `CONDUIT_COUNT_TRIPS` is on.
    static COUNT_TRIPS: std::cell::OnceCell<bool> = const { std::cell::OnceCell::new() };
}

/// With the var `CONDUIT_COUNT_TRIPS = "1"` (benchmarks): the header
/// `x-conduit-store-trips` on every answer, this isolate's requests and
/// store round trips so far as JSON (`bench/worker.sh` reads it after a run;
/// `wrangler dev` runs one isolate).
fn trips_header(env: &Env) -> Option<http::HeaderValue> {
    // Read once per isolate: a var does not change under a running isolate.
    let counting = COUNT_TRIPS
        .with(|c| *c.get_or_init(|| binding(env, "CONDUIT_COUNT_TRIPS").as_deref() == Some("1")));
    if !counting {
        return None;
    }
    let (isolate, requests) = SERVED.with(|s| {
        let mut s = s.borrow_mut();
        if s.0 == 0 {
            s.0 = (js_sys::Math::random() * 1e15) as u64 + 1;
        }
        s.1 += 1;
        *s
    });
    let v = json!({ "instance": isolate, "requests": requests, "trips": ports::trips_json() });
    http::HeaderValue::from_str(&v.to_string()).ok()
}

/// A secret or a plain var, whichever the deployment used.
fn binding(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
        .filter(|v| !v.is_empty())
}

fn build(env: &Env) -> Result<Gateway, String> {
    let text = binding(env, "CONDUIT_CONFIG").ok_or(
        "CONDUIT_CONFIG is not set: put the TOML config in a var or secret (locally: .dev.vars)",
    )?;
    let config = Config::parse(&text, "CONDUIT_CONFIG", &|name| binding(env, name))
        .map_err(|e| e.to_string())?;
    let keys = Arc::new(KvKeyStore { env: env.clone() });
    let ports = Ports {
        keys: keys.clone(),
        usage: Arc::new(ObjectUsageStore::new(env.clone(), keys)),
        upstream: Arc::new(FetchUpstream),
        clock: Arc::new(WorkerClock),
        // Hot keys are admitted from leases unless every request must ask (README, "Limits").
        limiter: Arc::new(ObjectLimiter::new(
            env.clone(),
            config.gateway.revocation_delay_ms > 0,
        )),
        // Replaced per request by one bound to the request's context.
        spawner: Arc::new(LocalSpawner),
    };
    // Workers Logs: one JSON line per request (and per failed attempt), for
    // the requests `[gateway] request_log` keeps.
    let log = conduit::observe::LogLines::new(config.gateway.request_log, |line: &str| {
        console_log_str(line)
    });
    Ok(
        Gateway::new(config, ports, binding(env, "CONDUIT_MASTER_KEY").as_deref())
            .with_observer(Arc::new(log)),
    )
}

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// `console.log` of a `&str` as it is (`console_log!` formats a copy first).
    #[wasm_bindgen(js_namespace = console, js_name = log)]
    fn console_log_str(line: &str);
}

/// Runs work on the isolate's event loop (used only outside a request).
struct LocalSpawner;

impl Spawner for LocalSpawner {
    fn spawn(&self, task: conduit::compat::BoxFuture<'static, ()>) {
        wasm_bindgen_futures::spawn_local(task);
    }
}

fn gateway(env: &Env) -> Result<Rc<Gateway>, String> {
    GATEWAY.with(|slot| {
        if let Some(g) = slot.borrow().as_ref() {
            return Ok(g.clone());
        }
        let g = Rc::new(build(env)?);
        *slot.borrow_mut() = Some(g.clone());
        Ok(g)
    })
}

/// Bytes a refused body is read (and dropped) up to, so that the client's
/// connection stays usable; past this it is simply abandoned.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Reads the request body, refusing it past `limit` bytes. An oversized
/// body is still read to its end (up to [`DRAIN_LIMIT`]) before the 413: an
/// unread body breaks the client's keep-alive connection in local dev.
async fn read_body(
    body: Option<web_sys::ReadableStream>,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let Some(body) = body else {
        return Ok(Bytes::new());
    };
    let mut body = ports::JsByteStream::new(&body, None);
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = body.next().await {
        let data = chunk
            .map_err(|_| GatewayError::invalid("The request body could not be read.", None))?;
        seen += data.len();
        if seen <= limit {
            buf.extend_from_slice(&data);
        } else if seen > DRAIN_LIMIT {
            break;
        }
    }
    if seen > limit {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    Ok(buf.freeze())
}

/// The request's head as the core's `http` types (what workers-rs's
/// `HttpRequest` does, without turning the body into a stream of its own).
fn request_head(request: &web_sys::Request) -> Result<http::request::Parts, String> {
    let mut head = http::Request::builder()
        .method(request.method().as_str())
        .uri(request.url())
        .body(())
        .map_err(|e| e.to_string())?;
    let headers = head.headers_mut();
    for (name, value) in worker::Headers(request.headers()).entries() {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
        let value = http::HeaderValue::from_str(&value).map_err(|e| e.to_string())?;
        headers.append(name, value);
    }
    Ok(head.into_parts().0)
}

/// The core's response as the Worker's. A whole body goes out as one
/// buffer (workerd sets its length); a stream as one `ReadableStream` over
/// the Rust stream. (Not through `http::Response<worker::Body>`: workers-rs
/// turns that body into a JS stream, back into a Rust stream and into a JS
/// stream again, every chunk crossing three times.)
fn to_worker(
    response: conduit::Response,
    signal: Option<web_sys::AbortSignal>,
    ctx: Arc<Context>,
) -> worker::Result<worker::Response> {
    let (parts, body) = response.into_parts();
    let mut builder = worker::ResponseBuilder::new()
        .with_status(parts.status.as_u16())
        .with_headers(worker::Headers::from(&parts.headers));
    // Precompressed bodies (the web UI's assets) go out as they are: without
    // this, workerd would compress them again per their Content-Encoding.
    if parts.headers.contains_key(http::header::CONTENT_ENCODING) {
        builder = builder.with_encode_body(worker::EncodeBody::Manual);
    }
    match body {
        // A 304 (and an empty answer) must have no body at all.
        ResponseBody::Full(bytes) if bytes.is_empty() => Ok(builder.empty()),
        ResponseBody::Full(bytes) => Ok(builder.fixed(bytes.into())),
        ResponseBody::Stream(stream) => {
            let stream = match signal {
                Some(signal) => watch_disconnect(stream, signal, ctx),
                None => stream,
            };
            builder.from_stream(stream.map(|b: Bytes| Ok::<Vec<u8>, worker::Error>(b.into())))
        }
    }
}

type SharedStream = Rc<RefCell<Option<BoxStream<'static, Bytes>>>>;

/// The response stream, shared with the disconnect watchdog.
struct Watched {
    shared: SharedStream,
    done: Option<js_sys::Function>,
}

impl Watched {
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.call0(&JsValue::NULL);
        }
    }
}

impl Stream for Watched {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Bytes>> {
        let next = match self.shared.borrow_mut().as_mut() {
            Some(s) => s.as_mut().poll_next(cx),
            None => Poll::Ready(None),
        };
        if let Poll::Ready(None) = next {
            self.shared.borrow_mut().take();
            self.finish();
        }
        next
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.finish();
    }
}

/// When the client goes away mid-stream, workerd stops pulling the body
/// without dropping it, so the stream's metering would never run. The
/// request's abort signal (`enable_request_signal`) tells us: a watchdog
/// under `ctx.wait_until` then drops the stream, whose meter settles and
/// records the request (billed as seen plus the estimate for the rest).
fn watch_disconnect(
    stream: BoxStream<'static, Bytes>,
    signal: web_sys::AbortSignal,
    ctx: Arc<Context>,
) -> BoxStream<'static, Bytes> {
    let shared: SharedStream = Rc::new(RefCell::new(Some(stream)));
    let mut done_fn = None;
    let done = js_sys::Promise::new(&mut |resolve, _| done_fn = Some(resolve));
    let inner = signal;
    let aborted = js_sys::Promise::new(&mut |resolve, _| {
        if inner.aborted() {
            let _ = resolve.call0(&JsValue::NULL);
        } else {
            inner.set_onabort(Some(&resolve));
        }
    });
    let watched = shared.clone();
    ctx.wait_until(async move {
        let aborted = wasm_bindgen_futures::JsFuture::from(aborted);
        let done = wasm_bindgen_futures::JsFuture::from(done);
        if let Either::Left(_) = select(aborted, done).await {
            // Dropping the relay runs its meter's settlement (through wait_until).
            let stream = watched.borrow_mut().take();
            drop(stream);
        }
    });
    Box::pin(Watched {
        shared,
        done: done_fn,
    })
}

#[event(fetch)]
pub async fn fetch(
    request: web_sys::Request,
    env: Env,
    ctx: Context,
) -> worker::Result<worker::Response> {
    let gateway = match gateway(&env) {
        Ok(g) => g,
        Err(message) => {
            worker::console_error!("conduit: {message}");
            let body = json!({"error": {"message": message, "type": "api_error", "param": null, "code": "config_error"}});
            return Ok(worker::Response::from_json(&body)?.with_status(500));
        }
    };
    let ctx = Arc::new(ctx);
    let spawner: Arc<dyn Spawner> = Arc::new(ContextSpawner(ctx.clone()));
    let limit = gateway.max_body_bytes();
    let signal = Some(request.signal());
    let response = match request_head(&request) {
        Ok(parts) => match read_body(request.body(), limit).await {
            Ok(bytes) => {
                gateway
                    .handle_with(http::Request::from_parts(parts, bytes), &spawner)
                    .await
            }
            Err(e) => gateway.refuse(&e),
        },
        Err(e) => gateway.refuse(&GatewayError::invalid(
            format!("The request could not be read: {e}"),
            None,
        )),
    };
    let mut response = response;
    if let Some(v) = trips_header(&env) {
        response.headers_mut().insert("x-conduit-store-trips", v);
    }
    to_worker(response, signal, ctx)
}
