//! Conduit's ports on native tokio platforms (the server and the Lambda
//! function share them): the upstream HTTP client (hyper, rustls with
//! webpki roots), the wall clock and tokio timers, and the spawners: one
//! that lets work run on, and one whose work a response waits for.

pub mod coalesce;
mod pool;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use coalesce::ReadCoalescer;
use conduit::compat::BoxFuture;
use conduit::port;
use conduit::ports::{ByteStream, Clock, Spawner, Upstream, UpstreamError};
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pooled HTTP/1.1 and HTTP/2 client for `http://` and `https://` providers.
///
/// A connection's task lives on the runtime that opened it, so a request
/// that borrows a connection opened by another runtime wakes that runtime's
/// thread for every read. [`per_thread`](Self::per_thread) gives each thread
/// its own connections (`pool`), for a server that runs one single-threaded
/// runtime per core.
pub struct HyperUpstream {
    /// The one pool, unless pools are per thread.
    shared: Option<HttpsClient>,
}

type HttpsClient = Client<Https, Full<Bytes>>;

impl Default for HyperUpstream {
    fn default() -> Self {
        Self::new()
    }
}

impl HyperUpstream {
    /// One pool for every thread.
    pub fn new() -> Self {
        HyperUpstream {
            shared: Some(client()),
        }
    }

    /// One pool per thread, each made at the thread's first request.
    pub fn per_thread() -> Self {
        HyperUpstream { shared: None }
    }
}

/// A client with the pool and connector settings every provider gets.
fn client() -> HttpsClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector())
}

/// How every provider is connected to: `TCP_NODELAY`, a 10 s connect
/// timeout, rustls with webpki roots and ALPN for HTTP/2 and HTTP/1.1.
fn connector() -> Https {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    // The crypto provider is named, not left to crate features: a binary
    // that also links the AWS SDK has both ring and aws-lc-rs.
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder =
        match builder.with_provider_and_webpki_roots(rustls::crypto::ring::default_provider()) {
            Ok(b) => b,
            // Only fails for a provider without safe defaults, which ring is not.
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
        };
    builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

port! {
    impl Upstream for HyperUpstream {
        async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<ByteStream>, UpstreamError> {
            let Some(client) = &self.shared else {
                let (parts, body) = pool::send(request).await?.into_parts();
                let stream = body_stream(&parts.headers, body);
                return Ok(http::Response::from_parts(parts, stream));
            };
            let (mut parts, body) = request.into_parts();
            if !parts.headers.contains_key(http::header::HOST) {
                if let Some(host) = host_header(&parts.uri) {
                    parts.headers.insert(http::header::HOST, host);
                }
            }
            let response = client
                .request(http::Request::from_parts(parts, Full::new(body)))
                .await
                .map_err(|e| UpstreamError(describe(&e)))?;
            let (parts, body) = response.into_parts();
            let body = body
                .into_data_stream()
                .map_err(|e| UpstreamError(e.to_string()));
            let stream = body_stream(&parts.headers, body);
            Ok(http::Response::from_parts(parts, stream))
        }
    }
}

/// An answer's body for the gateway: an event stream reaches the relay read
/// by read, not chunk by chunk (see `coalesce`); a whole answer is read to
/// its end anyway.
fn body_stream<S>(headers: &http::HeaderMap, body: S) -> ByteStream
where
    S: futures_util::Stream<Item = Result<Bytes, UpstreamError>> + Send + Unpin + 'static,
{
    if is_event_stream(headers) {
        Box::pin(ReadCoalescer::new(body))
    } else {
        Box::pin(body)
    }
}

/// The `Host` header hyper's client would add to a plain-`http` request,
/// `host[:port]` (the port unless it is 80): the URI's authority as it is
/// written, copied into a header value. The client builds the same value
/// through `format!` and its URI accessors, ~2,300 instructions a request
/// (callgrind). Only for `http://`, which this client always speaks
/// HTTP/1.1 to: an `https://` connection may turn out HTTP/2, where the
/// client sends `:authority` and no `Host`. `None` (another scheme, user
/// info, the default port written out) leaves it to the client.
fn host_header(uri: &http::Uri) -> Option<http::HeaderValue> {
    let authority = uri.authority()?;
    if uri.scheme_str() != Some("http")
        || authority.port_u16() == Some(80)
        || authority.as_str().contains('@')
    {
        return None;
    }
    http::HeaderValue::from_str(authority.as_str()).ok()
}

/// `Content-Type: text/event-stream` (parameters allowed).
fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// The error and its causes, one line (no URLs with secrets are in there:
/// provider keys travel in headers).
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Work after the response, on the tokio runtime.
pub struct TokioSpawner;

impl Spawner for TokioSpawner {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        tokio::spawn(task);
    }
}

/// How long a response waits, after its last byte, for its settlement and
/// usage write.
const TASKS_GRACE: Duration = Duration::from_secs(10);

/// The tasks one request started (settlement, usage write), for a response
/// that must not end before them: on Lambda, which may freeze the sandbox as
/// soon as the invocation returns; on a server sharing its store with
/// others, so that the key's next request, wherever it lands, sees this one
/// settled (exactly as a single process, whose settlement is immediate).
#[derive(Default)]
pub struct RequestTasks(std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>);

impl Spawner for RequestTasks {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        let handle = tokio::spawn(task);
        if let Ok(mut tasks) = self.0.lock() {
            tasks.push(handle);
        }
    }
}

impl RequestTasks {
    /// Waits for every task started so far (each for at most 10 s).
    pub async fn join(&self) {
        let handles = self
            .0
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for h in handles {
            let _ = tokio::time::timeout(TASKS_GRACE, h).await;
        }
    }

    /// A stream of no items that ends once [`join`](Self::join) does: chained
    /// after a response body, it holds the body's end until the tasks are done.
    pub fn joined<T>(self: std::sync::Arc<Self>) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::once(async move {
            self.join().await;
        })
        .filter_map(|()| async { None })
    }
}

/// Wall-clock time and tokio timers.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

#[cfg(test)]
mod tests {
    use super::host_header;

    /// The header is what hyper's client writes to an `http://` URI: the
    /// host, and the port unless it is 80 (then the client writes it).
    #[test]
    fn host_header_is_what_the_client_would_write() {
        for (uri, host) in [
            (
                "http://127.0.0.1:8080/v1/chat/completions",
                Some("127.0.0.1:8080"),
            ),
            ("http://localhost/v1/embeddings", Some("localhost")),
            ("http://[::1]:9000/v1", Some("[::1]:9000")),
            ("http://example.com:80/x", None),
            ("https://api.openai.com/v1/embeddings", None),
            ("https://example.com:8443/x", None),
            ("http://user:pw@example.com/x", None),
            ("/relative", None),
        ] {
            let uri: http::Uri = uri.parse().expect("uri");
            let got = host_header(&uri);
            assert_eq!(got.as_ref().and_then(|v| v.to_str().ok()), host, "{uri}");
        }
    }
}
