//! The HTTP front: hyper connections in, [`Gateway::handle`] per request,
//! graceful shutdown on SIGTERM/SIGINT that lets in-flight streams finish.
//!
//! A client cannot hold a connection or a task forever: the request head
//! must arrive within `header_read_timeout_ms` (else the connection is
//! closed), the body within `body_read_timeout_ms` (else 408, also for a
//! `Content-Length` larger than what is sent), and a head over
//! `max_header_bytes` is refused with 431.

use std::convert::Infallible;
use std::net::SocketAddr;
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
use tokio::net::TcpListener;

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

/// How the server runs each request.
#[derive(Clone, Copy, Debug)]
pub struct Serving {
    pub limits: ClientLimits,
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

/// Waits for SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Serves until a shutdown signal, then waits for open requests and streams
/// to finish; a second signal stops at once.
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>, serving: Serving) {
    let limits = serving.limits;
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper refuses a head that does not fit its read buffer with 431.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let mut signal = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer): (_, SocketAddr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("conduit: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gateway = gateway.clone();
                let service = service_fn(move |req| serve(gateway.clone(), serving, req));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut signal => {
                eprintln!("conduit: shutting down, letting open requests finish");
                break;
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = shutdown_signal() => eprintln!("conduit: second signal, stopping without waiting"),
    }
}
