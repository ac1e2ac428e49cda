//! The HTTP front: hyper connections in, [`Gateway::handle`] per request
//! (which thread serves a connection, and shutdown: [`crate::shards`]).
//!
//! A client cannot hold a connection or a task forever: the request head
//! must arrive within `header_read_timeout_ms` (else the connection is
//! closed), the body within `body_read_timeout_ms` (else 408, also for a
//! `Content-Length` larger than what is sent), and a head over
//! `max_header_bytes` is refused with 431.
//!
//! Connections ([`ConnectionLimits`], see [`crate::connection`]): at most
//! `max_connections` at once (one more is answered 503 `server_overloaded`
//! and closed), an idle kept-alive connection is closed after
//! `keep_alive_timeout_ms`, HTTP/2 over cleartext (h2c, prior knowledge)
//! beside HTTP/1.1 unless `http2 = false`, and the listener binds with
//! `SO_REUSEADDR` unless `reuse_address = false`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conduit::ports::Spawner;
use conduit::{Gateway, GatewayError, ResponseBody};
use conduit_native::RequestTasks;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::connection::{self, ConnState, InFlight, Timeouts, Watched};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How long and how much a client may take to send its request (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// The whole request head, from the connection's first byte (or the end
    /// of the previous request on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// The whole request body, once the head is in.
    pub body_read_timeout: Duration,
    /// The request head (request line and headers); larger: 431.
    pub max_header_bytes: usize,
}

/// How many connections, for how long, in which protocols (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open client connections at once; one more gets 503 and is closed.
    pub max_connections: usize,
    /// A kept-alive connection with no request in progress is closed after this.
    pub keep_alive_timeout: Duration,
    /// HTTP/2 with prior knowledge (h2c) beside HTTP/1.1.
    pub http2: bool,
    /// `SO_REUSEADDR` on the listener.
    pub reuse_address: bool,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            keep_alive_timeout: Duration::from_secs(30),
            http2: true,
            reuse_address: true,
        }
    }
}

/// How the server runs each request.
#[derive(Clone, Copy, Debug)]
pub struct Serving {
    pub limits: ClientLimits,
    pub connections: ConnectionLimits,
    /// The response ends only after its settlement and usage write: set when
    /// the store is shared with other servers (see [`RequestTasks`]).
    pub settle_before_end: bool,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Reads the request (up to the body limit), runs the pipeline, converts the answer.
async fn serve(
    gateway: Arc<Gateway>,
    serving: Serving,
    request: http::Request<Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    let limits = serving.limits;
    let tasks = serving
        .settle_before_end
        .then(|| Arc::new(RequestTasks::default()));
    let limit = gateway.max_body_bytes();
    let (parts, body) = request.into_parts();
    if let Some(answer) = crate::metrics::serve(&parts) {
        return Ok(answer);
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = if declared.is_some_and(|n| n > limit as u64) {
        gateway.refuse(&GatewayError::PayloadTooLarge { limit })
    } else {
        let read = tokio::time::timeout(
            limits.body_read_timeout,
            Limited::new(body, limit).collect(),
        );
        let body = match read.await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(GatewayError::PayloadTooLarge { limit })
            }
            Ok(Err(_)) => Err(GatewayError::invalid(
                "The request body could not be read.",
                None,
            )),
            Err(_elapsed) => Err(GatewayError::RequestTimeout),
        };
        match body {
            Ok(body) => {
                let request = http::Request::from_parts(parts, body);
                match &tasks {
                    Some(tasks) => {
                        let spawner: Arc<dyn Spawner> = tasks.clone();
                        gateway.handle_with(request, &spawner).await
                    }
                    None => gateway.handle(request).await,
                }
            }
            Err(e) => gateway.refuse(&e),
        }
    };
    let (parts, body) = response.into_parts();
    let body: Body = match (body, tasks) {
        (ResponseBody::Full(bytes), None) => Full::new(bytes).boxed_unsync(),
        (ResponseBody::Full(bytes), Some(tasks)) => {
            tasks.join().await;
            Full::new(bytes).boxed_unsync()
        }
        (ResponseBody::Stream(stream), None) => {
            StreamBody::new(stream.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync()
        }
        (ResponseBody::Stream(stream), Some(tasks)) => StreamBody::new(
            stream
                .map(|b| Ok::<_, Infallible>(Frame::data(b)))
                .chain(tasks.joined()),
        )
        .boxed_unsync(),
    };
    Ok(http::Response::from_parts(parts, body))
}

/// Binds `listen` (a socket address or `host:port`) as `[server]` says.
pub async fn listen(listen: &str, connections: &ConnectionLimits) -> Result<TcpListener, String> {
    let addr = tokio::net::lookup_host(listen)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("cannot listen on {listen}: not a host:port"))?;
    connection::bind(addr, connections.reuse_address, 1024)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))
}

/// The connection builder: HTTP/1.1, and HTTP/2 (h2c) unless turned off.
fn builder(serving: &Serving) -> auto::Builder<TokioExecutor> {
    let limits = serving.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if !serving.connections.http2 {
        builder = builder.http1_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        // [`Watched`] times heads and idle spells apart; hyper's timer (which
        // runs from the end of the previous response) is only a backstop.
        .header_read_timeout(limits.header_read_timeout + serving.connections.keep_alive_timeout)
        // hyper refuses a head that does not fit its read buffer with 431.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// The answer on a connection over `max_connections`: 503 and close.
fn overloaded(gateway: &Gateway, max_connections: usize) -> http::Response<Body> {
    let (mut parts, body) = gateway
        .refuse(&GatewayError::Overloaded { max_connections })
        .into_parts();
    parts.headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    let bytes = match body {
        ResponseBody::Full(bytes) => bytes,
        ResponseBody::Stream(_) => Bytes::new(),
    };
    http::Response::from_parts(parts, Full::new(bytes).boxed_unsync())
}

/// A response body that keeps its connection busy until it is dropped.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Where an accepted connection goes.
#[derive(Clone)]
pub(crate) struct Acceptor {
    gateway: Arc<Gateway>,
    serving: Serving,
    builder: auto::Builder<TokioExecutor>,
    /// One permit per open connection.
    permits: Arc<Semaphore>,
    /// Connections being refused (each for at most the header-read timeout);
    /// beyond as many again they are closed without an answer.
    refusing: Arc<Semaphore>,
}

impl Acceptor {
    pub(crate) fn new(gateway: Arc<Gateway>, serving: Serving) -> Acceptor {
        let max = serving.connections.max_connections;
        Acceptor {
            gateway,
            serving,
            builder: builder(&serving),
            permits: Arc::new(Semaphore::new(max)),
            refusing: Arc::new(Semaphore::new(max)),
        }
    }

    /// Serves `stream`; `held` is dropped when the connection ends (its
    /// shard's count of open connections).
    pub(crate) fn accept<H: Send + 'static>(
        &self,
        stream: TcpStream,
        graceful: &GracefulShutdown,
        held: H,
    ) {
        let _ = stream.set_nodelay(true);
        let serving = self.serving;
        let timeouts = Timeouts {
            head: serving.limits.header_read_timeout,
            idle: serving.connections.keep_alive_timeout,
        };
        let state = Arc::new(ConnState::default());
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let gateway = self.gateway.clone();
                let in_flight = state.clone();
                let service = service_fn(move |req| {
                    let guard = InFlight::new(&in_flight);
                    let answer = serve(gateway.clone(), serving, req);
                    async move {
                        let response = answer.await?;
                        Ok::<_, Infallible>(response.map(|body| Tracked {
                            body,
                            _in_flight: guard,
                        }))
                    }
                });
                let io = TokioIo::new(Watched::new(stream, state, timeouts, Some(permit)));
                if serving.connections.http2 {
                    let conn = self.builder.serve_connection_with_upgrades(io, service);
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        let _ = conn.await;
                        drop(held);
                    });
                } else {
                    let conn = self.builder.serve_connection(io, service);
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        let _ = conn.await;
                        drop(held);
                    });
                }
            }
            Err(_) => {
                let Ok(refusing) = self.refusing.clone().try_acquire_owned() else {
                    return; // dropped: closed at once
                };
                let gateway = self.gateway.clone();
                let max = serving.connections.max_connections;
                let service = service_fn(move |_req| {
                    let response = overloaded(&gateway, max);
                    async move { Ok::<_, Infallible>(response) }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().keep_alive(false);
                let io = TokioIo::new(Watched::new(stream, state, timeouts, None));
                let limit = serving.limits.header_read_timeout;
                tokio::spawn(async move {
                    let conn = builder.serve_connection(io, service);
                    let _ = tokio::time::timeout(limit, conn).await;
                    drop(refusing);
                    drop(held);
                });
            }
        }
    }
}
