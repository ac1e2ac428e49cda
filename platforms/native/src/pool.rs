//! Upstream connections kept per thread, over hyper's connection API, for a
//! server that runs one single-threaded runtime per core.
//!
//! hyper-util's pooled client is made for a work-stealing runtime: its pool
//! sits behind a lock and a hash of each request's origin, it clones itself
//! into every request, and once an HTTP/1 answer has been read it spawns a
//! task that waits for the connection to be free before giving it back.
//! That was about 9,600 instructions a request (callgrind, non-streaming
//! chat), more than the dispatch to the connection it wraps. Here a thread's
//! connections are a list per origin, used by that thread only: a request
//! takes the newest free HTTP/1 connection (or shares an HTTP/2 one), and
//! the answer's body gives its connection back when it has been read to the
//! end. A connection whose body was dropped midway is not given back:
//! hyper closes it, as HTTP/1 cannot abandon an answer and keep the
//! connection.
//!
//! What the pooled client did that this keeps: the connector's settings
//! (`TCP_NODELAY`, the connect timeout, rustls with ALPN for HTTP/2), at
//! most [`MAX_IDLE_PER_ORIGIN`] idle connections to an origin, idle ones
//! closed after [`IDLE_TIMEOUT`] (by a task per thread that looks them over
//! every [`REAP_EVERY`], not by every request), `Host` and origin-form for HTTP/1, and one
//! retry on a new connection for a request a kept connection could not take
//! (closed by the upstream between two requests).

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use conduit::ports::UpstreamError;
use futures_util::Stream;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

use crate::{connector, describe, Https};

/// Idle connections kept to one origin, per thread.
const MAX_IDLE_PER_ORIGIN: usize = 256;
/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a thread's idle connections are looked over.
const REAP_EVERY: Duration = Duration::from_secs(15);

type RequestBody = Full<Bytes>;

thread_local! {
    static POOL: RefCell<Option<ThreadPool>> = const { RefCell::new(None) };
}

/// This thread's connections, by origin.
struct ThreadPool {
    connector: Https,
    origins: Vec<Origin>,
}

/// `scheme://authority`, as the request's URI writes it.
#[derive(Clone, PartialEq, Eq)]
struct OriginKey {
    https: bool,
    authority: http::uri::Authority,
}

struct Origin {
    key: OriginKey,
    /// Free HTTP/1 connections, oldest first.
    idle: Vec<(http1::SendRequest<RequestBody>, Instant)>,
    /// The HTTP/2 connection requests share, once one was negotiated.
    shared: Option<http2::SendRequest<RequestBody>>,
}

/// A connection a request holds.
enum Conn {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

/// Runs `f` on this thread's pool, made (with its reaper task) on first use.
fn with_pool<R>(f: impl FnOnce(&mut ThreadPool) -> R) -> R {
    POOL.with(|cell| {
        let mut slot = cell.borrow_mut();
        let pool = slot.get_or_insert_with(|| {
            // On a thread without a runtime (never the case for a request)
            // the pool is still usable; idle connections are then only
            // dropped as requests pass.
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(reap_forever());
            }
            ThreadPool {
                connector: connector(),
                origins: Vec::new(),
            }
        });
        f(pool)
    })
}

/// This thread's pool with `connector` (tests: a TLS upstream whose
/// certificate is signed by a test authority).
#[cfg(test)]
fn use_connector(connector: Https) {
    POOL.with(|cell| {
        *cell.borrow_mut() = Some(ThreadPool {
            connector,
            origins: Vec::new(),
        })
    });
}

/// Closes this thread's connections idle for longer than [`IDLE_TIMEOUT`].
async fn reap_forever() {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let now = Instant::now();
        POOL.with(|cell| {
            if let Some(pool) = cell.borrow_mut().as_mut() {
                for origin in &mut pool.origins {
                    origin.idle.retain(|(conn, since)| {
                        !conn.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT
                    });
                    if origin.shared.as_ref().is_some_and(|c| c.is_closed()) {
                        origin.shared = None;
                    }
                }
                pool.origins
                    .retain(|o| !o.idle.is_empty() || o.shared.is_some());
            }
        });
    }
}

impl ThreadPool {
    fn origin(&mut self, key: &OriginKey) -> Option<&mut Origin> {
        self.origins.iter_mut().find(|o| o.key == *key)
    }

    /// A kept connection to `key` that can take a request now.
    fn checkout(&mut self, key: &OriginKey) -> Option<Conn> {
        let origin = self.origin(key)?;
        if let Some(shared) = &origin.shared {
            // An HTTP/2 connection takes requests side by side until it is
            // closed (a request beyond its stream limit waits its turn).
            if !shared.is_closed() {
                return Some(Conn::H2(shared.clone()));
            }
            origin.shared = None;
        }
        // The newest free one (its socket the warmest); closed ones go.
        let mut i = origin.idle.len();
        while i > 0 {
            i -= 1;
            let (conn, _) = &origin.idle[i];
            if conn.is_closed() {
                origin.idle.remove(i);
            } else if conn.is_ready() {
                return Some(Conn::H1(origin.idle.remove(i).0));
            }
            // Not ready yet: its last answer ended but the connection's task
            // has not run since; it stays for a later request.
        }
        None
    }

    /// `key`'s entry, made when there is none.
    fn origin_or_new(&mut self, key: &OriginKey) -> &mut Origin {
        let i = match self.origins.iter().position(|o| o.key == *key) {
            Some(i) => i,
            None => {
                self.origins.push(Origin {
                    key: key.clone(),
                    idle: Vec::new(),
                    shared: None,
                });
                self.origins.len() - 1
            }
        };
        &mut self.origins[i]
    }

    fn give_back(&mut self, key: &OriginKey, conn: http1::SendRequest<RequestBody>) {
        let origin = self.origin_or_new(key);
        if origin.idle.len() >= MAX_IDLE_PER_ORIGIN {
            origin.idle.remove(0);
        }
        origin.idle.push((conn, Instant::now()));
    }

    fn share(&mut self, key: &OriginKey, conn: http2::SendRequest<RequestBody>) {
        self.origin_or_new(key).shared = Some(conn);
    }
}

/// Sends `request` (absolute URI, `http` or `https`) on a connection of this
/// thread's pool, or a new one.
pub(crate) async fn send(
    request: http::Request<Bytes>,
) -> Result<http::Response<ReturningBody>, UpstreamError> {
    let key = origin_key(request.uri())
        .ok_or_else(|| UpstreamError(format!("not an http(s) URL: {}", request.uri())))?;
    let (parts, body) = request.into_parts();
    let mut request = http::Request::from_parts(parts, Full::new(body));
    // A kept connection first; when it could not take the request (closed
    // by the upstream since), once more on a new one.
    if let Some(conn) = with_pool(|p| p.checkout(&key)) {
        match send_on(conn, &key, request).await {
            Ok(response) => return Ok(response),
            Err(Unsent::Back(r)) => request = r,
            Err(Unsent::Failed(e)) => return Err(e),
        }
    }
    // Boxed: connecting (TLS, the handshakes) is a future of some kilobytes,
    // which every request's future would otherwise carry and copy.
    let conn = Box::pin(connect(&key)).await?;
    match send_on(conn, &key, request).await {
        Ok(response) => Ok(response),
        Err(Unsent::Back(_)) => Err(UpstreamError(
            "the new connection closed before the request was sent".into(),
        )),
        Err(Unsent::Failed(e)) => Err(e),
    }
}

/// Why a request has no answer: not sent at all (it is given back), or
/// failed. Only ever a function's result, never stored: not boxed.
#[allow(clippy::large_enum_variant)]
enum Unsent {
    Back(http::Request<RequestBody>),
    Failed(UpstreamError),
}

async fn send_on(
    conn: Conn,
    key: &OriginKey,
    mut request: http::Request<RequestBody>,
) -> Result<http::Response<ReturningBody>, Unsent> {
    match conn {
        Conn::H1(mut sender) => {
            to_origin_form(&mut request, key);
            match sender.try_send_request(request).await {
                Ok(response) => Ok(response.map(|body| ReturningBody {
                    body,
                    conn: Some((sender, key.clone())),
                })),
                Err(mut e) => match e.take_message() {
                    Some(mut request) => {
                        from_origin_form(&mut request, key);
                        Err(Unsent::Back(request))
                    }
                    None => Err(Unsent::Failed(UpstreamError(describe(e.error())))),
                },
            }
        }
        Conn::H2(mut sender) => match sender.try_send_request(request).await {
            Ok(response) => Ok(response.map(|body| ReturningBody { body, conn: None })),
            Err(mut e) => match e.take_message() {
                Some(request) => Err(Unsent::Back(request)),
                None => Err(Unsent::Failed(UpstreamError(describe(e.error())))),
            },
        },
    }
}

/// Opens a connection to `key`: HTTP/2 when TLS negotiated it, else HTTP/1.
async fn connect(key: &OriginKey) -> Result<Conn, UpstreamError> {
    let uri = http::Uri::builder()
        .scheme(if key.https { "https" } else { "http" })
        .authority(key.authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| UpstreamError(e.to_string()))?;
    let mut connector = with_pool(|p| p.connector.clone());
    std::future::poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(|e| UpstreamError(describe(&*e)))?;
    let io = connector
        .call(uri)
        .await
        .map_err(|e| UpstreamError(describe(&*e)))?;
    if io.connected().is_negotiated_h2() {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| UpstreamError(describe(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        with_pool(|p| p.share(key, sender.clone()));
        Ok(Conn::H2(sender))
    } else {
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|e| UpstreamError(describe(&e)))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn::H1(sender))
    }
}

fn origin_key(uri: &http::Uri) -> Option<OriginKey> {
    let https = match uri.scheme_str()? {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    Some(OriginKey {
        https,
        authority: uri.authority()?.clone(),
    })
}

/// HTTP/1 wants `/path?query` and a `Host` header (`host[:port]`, without
/// user info or the scheme's default port), as hyper-util's client writes.
fn to_origin_form(request: &mut http::Request<RequestBody>, key: &OriginKey) {
    if !request.headers().contains_key(http::header::HOST) {
        if let Some(host) = host_value(key) {
            request.headers_mut().insert(http::header::HOST, host);
        }
    }
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *request.uri_mut() = http::Uri::from(path);
}

/// The absolute URI back, for a request to be sent on another connection.
fn from_origin_form(request: &mut http::Request<RequestBody>, key: &OriginKey) {
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(if key.https {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = Some(key.authority.clone());
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// `Host` for an origin: the authority as written, less user info and the
/// scheme's default port.
fn host_value(key: &OriginKey) -> Option<http::HeaderValue> {
    let authority = key.authority.as_str();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default = if key.https { ":443" } else { ":80" };
    let host = authority.strip_suffix(default).unwrap_or(authority);
    http::HeaderValue::from_str(host).ok()
}

/// An answer's body; read to its end, it gives its HTTP/1 connection back to
/// the thread's pool.
pub(crate) struct ReturningBody {
    body: Incoming,
    conn: Option<(http1::SendRequest<RequestBody>, OriginKey)>,
}

impl ReturningBody {
    fn give_back(&mut self) {
        if let Some((sender, key)) = self.conn.take() {
            if !sender.is_closed() {
                with_pool(|p| p.give_back(&key, sender));
            }
        }
    }
}

impl Stream for ReturningBody {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.give_back();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    // A broken answer: its connection is not given back.
                    self.conn = None;
                    return Poll::Ready(Some(Err(UpstreamError(describe(&e)))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        // The last frame: the connection is free before the
                        // reader asks for the end (a whole answer's reader
                        // may stop at its length).
                        if self.body.is_end_stream() {
                            self.give_back();
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                    // Trailers: not part of the data.
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(uri: &str) -> OriginKey {
        origin_key(&uri.parse().expect("uri")).expect("http(s)")
    }

    /// `Host` is what hyper-util's client writes: the default port and user
    /// info left out.
    #[test]
    fn host_is_the_authority_without_default_port_or_user_info() {
        for (uri, host) in [
            ("http://127.0.0.1:8080/v1", "127.0.0.1:8080"),
            ("http://localhost/v1", "localhost"),
            ("http://example.com:80/x", "example.com"),
            ("https://api.openai.com/v1/embeddings", "api.openai.com"),
            ("https://example.com:443/x", "example.com"),
            ("https://example.com:8443/x", "example.com:8443"),
            ("http://user:pw@example.com:81/x", "example.com:81"),
            ("http://[::1]:9000/v1", "[::1]:9000"),
        ] {
            let got = host_value(&key(uri));
            assert_eq!(
                got.as_ref().and_then(|v| v.to_str().ok()),
                Some(host),
                "{uri}"
            );
        }
        assert!(origin_key(&"ftp://x/y".parse().expect("uri")).is_none());
        assert!(origin_key(&"/relative".parse().expect("uri")).is_none());
    }

    /// An upstream on 127.0.0.1 that answers every request on a connection
    /// with `body` (and a `Content-Length`), closing the connection after
    /// each answer when `close` is set; it counts the connections it took.
    async fn upstream(
        body: &'static [u8],
        close: bool,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/v1/x", listener.local_addr().expect("addr"));
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = 0;
                    loop {
                        let Ok(n) = socket.read(&mut buf[have..]).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        have += n;
                        // Requests without a body: the head ends the request.
                        if !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                            continue;
                        }
                        have = 0;
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if socket.write_all(head.as_bytes()).await.is_err()
                            || socket.write_all(body).await.is_err()
                        {
                            return;
                        }
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    async fn get(url: &str) -> Result<Vec<u8>, UpstreamError> {
        use futures_util::StreamExt;
        let mut request = http::Request::new(Bytes::new());
        *request.uri_mut() = url.parse().expect("uri");
        let mut body = send(request).await?.into_body();
        let mut all = Vec::new();
        while let Some(piece) = body.next().await {
            all.extend_from_slice(&piece?);
        }
        Ok(all)
    }

    /// Answers read to their end give their connection back: requests one
    /// after the other use one connection.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_is_kept_and_used_again() {
        let (url, accepted) = upstream(b"{\"ok\":true}", false).await;
        for _ in 0..5 {
            assert_eq!(get(&url).await.expect("answer"), b"{\"ok\":true}");
            // The connection's task marks it free on its next turn.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A kept connection the upstream closed is not used: the next request
    /// goes on a new one and gets its answer.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_closed_by_the_upstream_is_replaced() {
        let (url, accepted) = upstream(b"{}", true).await;
        for _ in 0..3 {
            assert_eq!(get(&url).await.expect("answer"), b"{}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    /// A body dropped before its end does not give its connection back
    /// (HTTP/1 cannot skip the rest of an answer): the next request opens
    /// another connection, and is answered.
    #[tokio::test(flavor = "current_thread")]
    async fn a_body_dropped_midway_does_not_give_its_connection_back() {
        static BIG: [u8; 256 * 1024] = [b'x'; 256 * 1024];
        let (url, accepted) = upstream(&BIG, false).await;
        let mut request = http::Request::new(Bytes::new());
        *request.uri_mut() = url.parse().expect("uri");
        let response = send(request).await.expect("answer");
        drop(response);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(get(&url).await.expect("answer").len(), BIG.len());
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A refused connection is an upstream error, not a panic or a hang.
    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_connection_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/v1/x", listener.local_addr().expect("addr"));
        drop(listener);
        assert!(get(&url).await.is_err());
    }

    /// A TLS upstream on 127.0.0.1 offering `alpn`, its certificate signed by
    /// the test authority in `testdata/`; it answers each request with its
    /// HTTP version, URI and `Host`, and counts the connections it took. The
    /// thread's pool connects with that authority as its only root.
    async fn tls_upstream(
        alpn: &'static [u8],
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let leaf = rustls::pki_types::CertificateDer::from(
            include_bytes!("../testdata/localhost.der").to_vec(),
        );
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            include_bytes!("../testdata/localhost.key.der")
                .to_vec()
                .into(),
        );
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf], key)
            .expect("server config");
        server.alpn_protocols = vec![alpn.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                include_bytes!("../testdata/ca.der").to_vec(),
            ))
            .expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        use_connector(
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(client)
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http),
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("https://{}/v1/x", listener.local_addr().expect("addr"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let answer =
                        hyper::service::service_fn(|r: http::Request<Incoming>| async move {
                            let host = r
                                .headers()
                                .get(http::header::HOST)
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("-")
                                .to_string();
                            let text = format!("{:?} {} {host}", r.version(), r.uri());
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from(text),
                            )))
                        });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    if alpn == b"h2" {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, answer)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, answer)
                            .await;
                    }
                });
            }
        });
        (url, accepted)
    }

    /// HTTP/2 negotiated by ALPN: the request goes in absolute form (hyper
    /// sends `:authority`), and requests share the one connection.
    #[tokio::test(flavor = "current_thread")]
    async fn https_with_http2_shares_one_connection() {
        let (url, accepted) = tls_upstream(b"h2").await;
        for _ in 0..3 {
            let text = String::from_utf8(get(&url).await.expect("answer")).expect("text");
            assert_eq!(text, format!("HTTP/2.0 {url} -"));
        }
        // Side by side on the same connection.
        let answers = futures_util::future::join_all((0..8).map(|_| get(&url))).await;
        for answer in answers {
            let text = String::from_utf8(answer.expect("answer")).expect("text");
            assert_eq!(text, format!("HTTP/2.0 {url} -"));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// HTTP/1.1 over TLS: origin-form, `Host` without the port when it is
    /// the default (here it is not), and the connection kept.
    #[tokio::test(flavor = "current_thread")]
    async fn https_with_http1_keeps_its_connection() {
        let (url, accepted) = tls_upstream(b"http/1.1").await;
        let authority = url
            .trim_start_matches("https://")
            .trim_end_matches("/v1/x")
            .to_string();
        for _ in 0..3 {
            let text = String::from_utf8(get(&url).await.expect("answer")).expect("text");
            assert_eq!(text, format!("HTTP/1.1 /v1/x {authority}"));
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A request turned to origin-form and back is the request it was.
    #[test]
    fn origin_form_and_back() {
        for uri in [
            "http://127.0.0.1:8080/v1/chat/completions?x=1",
            "https://api.openai.com/v1/embeddings",
            "http://h:1",
        ] {
            let k = key(uri);
            let mut request = http::Request::new(Full::new(Bytes::new()));
            *request.uri_mut() = uri.parse().expect("uri");
            let before = request.uri().clone();
            to_origin_form(&mut request, &k);
            assert!(request.uri().scheme().is_none(), "{uri}");
            assert!(request.headers().contains_key(http::header::HOST));
            from_origin_form(&mut request, &k);
            assert_eq!(
                request.uri().path_and_query(),
                Some(before.path_and_query().map_or("/", |p| p.as_str()))
                    .map(|p| p.parse().expect("path"))
                    .as_ref(),
                "{uri}"
            );
            assert_eq!(request.uri().authority(), before.authority(), "{uri}");
        }
    }
}
