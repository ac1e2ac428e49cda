//! The HTTP front: hyper connections in, [`Gateway::handle`] per request,
//! graceful shutdown on SIGTERM/SIGINT that lets in-flight streams finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use conduit::{Gateway, GatewayError, ResponseBody};
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Reads the request (up to the body limit), runs the pipeline, converts the answer.
async fn serve(
    gateway: Arc<Gateway>,
    request: http::Request<Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    let limit = gateway.max_body_bytes();
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = if declared.is_some_and(|n| n > limit as u64) {
        gateway.refuse(&GatewayError::PayloadTooLarge { limit })
    } else {
        match Limited::new(body, limit).collect().await {
            Ok(collected) => {
                gateway
                    .handle(http::Request::from_parts(parts, collected.to_bytes()))
                    .await
            }
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                gateway.refuse(&GatewayError::PayloadTooLarge { limit })
            }
            Err(_) => gateway.refuse(&GatewayError::invalid(
                "The request body could not be read.",
                None,
            )),
        }
    };
    let (parts, body) = response.into_parts();
    let body: Body = match body {
        ResponseBody::Full(bytes) => Full::new(bytes).boxed_unsync(),
        ResponseBody::Stream(stream) => {
            StreamBody::new(stream.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync()
        }
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
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
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
                let service = service_fn(move |req| serve(gateway.clone(), req));
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
