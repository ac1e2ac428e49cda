//! `conduit-lambda-local`: runs the function as Lambda runs it, on one machine.
//!
//! ```text
//! client ──HTTP──► Function-URL front (127.0.0.1:PORT)
//!                      │ event (HTTP API v2 payload, body base64)
//!                      ▼
//!                  Runtime API (127.0.0.1:random) ◄── GET /next, POST /response (streamed)
//!                      ▲
//!                      └── conduit-lambda processes (the real binary), 1..=N instances
//! ```
//!
//! Like Lambda, one instance serves one invocation at a time; a request
//! that finds every instance busy starts another, up to `--instances`
//! (default 10). Responses are streamed: the function's prelude
//! (`{"statusCode","headers","cookies"}` then eight NUL bytes) becomes the
//! HTTP status and headers, the rest is relayed chunk by chunk.
//!
//! `conduit-lambda-local [--listen 127.0.0.1:9000] [--function PATH] [--instances N]`
//!
//! The function inherits this process's environment (`CONDUIT_CONFIG`,
//! `CONDUIT_MASTER_KEY`, provider secrets, `AWS_ENDPOINT_URL_DYNAMODB`, …),
//! plus the Lambda variables and `CONDUIT_CREATE_TABLES=1`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, Mutex as AsyncMutex};

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

/// An accepted Runtime API socket that re-arms TCP_QUICKACK before every
/// read: the Rust runtime client's requests are small writes without
/// TCP_NODELAY, and delayed ACKs would stall each streamed response ~40 ms.
struct QuickAck(TcpStream);

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a valid pointer and length.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A response head: status and headers.
type Head = (u16, Vec<(String, String)>);

/// What the front waits for: the response head, then body chunks.
struct Waiting {
    head: Option<oneshot::Sender<Head>>,
    chunks: mpsc::Sender<Bytes>,
}

struct Invocation {
    id: String,
    event: String,
}

struct Shared {
    queue_tx: mpsc::UnboundedSender<Invocation>,
    queue_rx: AsyncMutex<mpsc::UnboundedReceiver<Invocation>>,
    waiting: Mutex<HashMap<String, Waiting>>,
    /// Instances waiting in `GET /next`.
    idle: AtomicUsize,
    /// Invocations queued and not yet taken by an instance.
    queued: AtomicUsize,
    instances: AtomicUsize,
    max_instances: usize,
    function: String,
    runtime_addr: String,
    children: Mutex<Vec<Child>>,
    next_id: AtomicUsize,
}

impl Shared {
    fn spawn_instance(&self) -> io::Result<()> {
        let n = self.instances.fetch_add(1, Ordering::SeqCst) + 1;
        let mut cmd = Command::new(&self.function);
        cmd.env("AWS_LAMBDA_RUNTIME_API", &self.runtime_addr)
            .env("AWS_LAMBDA_FUNCTION_NAME", "conduit")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/conduit")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", format!("local/{n}"))
            .env("CONDUIT_CREATE_TABLES", "1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .kill_on_drop(true);
        for (k, v) in [
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "local"),
            ("AWS_SECRET_ACCESS_KEY", "local"),
        ] {
            if std::env::var_os(k).is_none() {
                cmd.env(k, v);
            }
        }
        let child = cmd.spawn()?;
        if let Ok(mut c) = self.children.lock() {
            c.push(child);
        }
        Ok(())
    }

    fn invocation_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!(
            "{:08x}-{:04x}-4000-8000-{:012x}",
            (t >> 32) as u32,
            n & 0xffff,
            t as u64 & 0xffff_ffff_ffff
        )
    }
}

/// The Function URL event for an HTTP request.
fn event(
    id: &str,
    method: &str,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    body: &[u8],
    host: &str,
) -> String {
    let mut h = serde_json::Map::new();
    // As Function URLs do: cookies travel in their own list, not as a header.
    let cookies: Vec<Value> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(|c| Value::String(c.trim().to_owned()))
        .filter(|c| c.as_str().is_some_and(|c| !c.is_empty()))
        .collect();
    for (k, v) in headers {
        if k == http::header::COOKIE {
            continue;
        }
        let v = v.to_str().unwrap_or_default();
        h.entry(k.as_str().to_owned())
            .and_modify(|e| {
                if let Value::String(s) = e {
                    s.push(',');
                    s.push_str(v);
                }
            })
            .or_insert(Value::String(v.to_owned()));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": uri.path(),
        "rawQueryString": uri.query().unwrap_or(""),
        "headers": h,
        "cookies": cookies,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "local",
            "domainName": host,
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": uri.path(),
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or(""),
            },
            "requestId": id,
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": now,
        },
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "isBase64Encoded": true,
    })
    .to_string()
}

fn error_body(status: u16, message: &str) -> http::Response<Body> {
    let body = json!({"error": {"message": message, "type": "api_error", "param": null, "code": "lambda_error"}});
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap_or_else(|_| http::Response::new(full("")))
}

/// The Function URL front: one invocation per request.
async fn front(
    shared: Arc<Shared>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return Ok(error_body(400, "cannot read the request body")),
    };
    let host = parts
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let id = shared.invocation_id();
    let ev = event(
        &id,
        parts.method.as_str(),
        &parts.uri,
        &parts.headers,
        &bytes,
        &host,
    );
    let (head_tx, head_rx) = oneshot::channel();
    let (chunk_tx, chunk_rx) = mpsc::channel::<Bytes>(64);
    if let Ok(mut w) = shared.waiting.lock() {
        w.insert(
            id.clone(),
            Waiting {
                head: Some(head_tx),
                chunks: chunk_tx,
            },
        );
    }
    // Like Lambda: an invocation that no idle instance will take starts a new one.
    let queued = shared.queued.fetch_add(1, Ordering::SeqCst) + 1;
    if queued > shared.idle.load(Ordering::SeqCst)
        && shared.instances.load(Ordering::SeqCst) < shared.max_instances
    {
        if let Err(e) = shared.spawn_instance() {
            eprintln!("conduit-lambda-local: cannot start the function: {e}");
        }
    }
    let _ = shared.queue_tx.send(Invocation {
        id: id.clone(),
        event: ev,
    });
    let Ok((status, headers)) = head_rx.await else {
        return Ok(error_body(502, "the function failed before answering"));
    };
    let mut builder = http::Response::builder().status(status);
    for (k, v) in headers {
        builder = builder.header(k, v);
    }
    let stream = tokio_stream(chunk_rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Ok(builder
        .body(StreamBody::new(stream).boxed_unsync())
        .unwrap_or_else(|_| error_body(502, "the function sent an invalid response head")))
}

fn tokio_stream(mut rx: mpsc::Receiver<Bytes>) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Parses the streaming prelude: `{"statusCode", "headers", "cookies"}`.
fn prelude(json: &[u8]) -> Head {
    let v: Value = serde_json::from_slice(json).unwrap_or(Value::Null);
    let status = v.get("statusCode").and_then(Value::as_u64).unwrap_or(200) as u16;
    let mut headers: Vec<(String, String)> = v
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(cookies) = v.get("cookies").and_then(Value::as_array) {
        headers.extend(
            cookies
                .iter()
                .filter_map(Value::as_str)
                .map(|c| ("set-cookie".to_owned(), c.to_owned())),
        );
    }
    (status, headers)
}

/// Counts an instance out of `idle` when its poll ends, however it ends.
struct IdleGuard<'a>(&'a AtomicUsize);

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The socket of a Runtime API connection, for [`peer_closed`].
#[derive(Clone, Copy)]
struct PeerFd(std::os::fd::RawFd);

/// Completes once the peer closed the connection (a killed instance).
async fn peer_closed(peer: Option<PeerFd>) {
    let Some(PeerFd(fd)) = peer else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut byte = 0u8;
        // SAFETY: a non-blocking peek of one byte into a valid buffer, on the
        // connection's socket, which outlives this request.
        let n = unsafe {
            libc::recv(
                fd,
                &mut byte as *mut u8 as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return;
        }
    }
}

/// The Runtime API the function instances poll.
async fn runtime(
    shared: Arc<Shared>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/2018-06-01/runtime/invocation/next" {
        let peer = req.extensions().get::<PeerFd>().copied();
        shared.idle.fetch_add(1, Ordering::SeqCst);
        let idle = IdleGuard(&shared.idle);
        // An instance killed while it polls must not take the next invocation
        // with it: its closed connection ends the poll (the invocation stays queued).
        let next = tokio::select! {
            next = async { shared.queue_rx.lock().await.recv().await } => next,
            () = peer_closed(peer) => return Ok(error_body(500, "the instance is gone")),
        };
        drop(idle);
        if next.is_some() {
            shared.queued.fetch_sub(1, Ordering::SeqCst);
        }
        let Some(inv) = next else {
            return Ok(error_body(500, "shutting down"));
        };
        let deadline = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
            + 900_000;
        let resp = http::Response::builder()
            .header("content-type", "application/json")
            .header("lambda-runtime-aws-request-id", &inv.id)
            .header("lambda-runtime-deadline-ms", deadline.to_string())
            .header(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:000000000000:function:conduit",
            )
            .header(
                "lambda-runtime-trace-id",
                format!("Root=1-00000000-{}", inv.id.replace('-', "")),
            )
            .body(full(inv.event))
            .unwrap_or_else(|_| error_body(500, "bad event"));
        return Ok(resp);
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["2018-06-01", "runtime", "invocation", id, what] = segments.as_slice() {
        let id = (*id).to_owned();
        let entry = shared.waiting.lock().ok().and_then(|mut w| w.remove(&id));
        let Some(mut waiting) = entry else {
            return Ok(error_body(404, "unknown invocation"));
        };
        if *what == "error" {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            eprintln!(
                "conduit-lambda-local: invocation {id} failed: {}",
                String::from_utf8_lossy(&body)
            );
            drop(waiting.head.take());
            return Ok(http::Response::builder()
                .status(202)
                .body(full(""))
                .unwrap_or_else(|_| http::Response::new(full(""))));
        }
        // The streamed response: prelude, eight NUL bytes, then the body.
        let mut body = req.into_body();
        let mut head = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if let Some(tx) = waiting.head.take() {
                head.extend_from_slice(&data);
                match head.windows(8).position(|w| w == [0u8; 8]) {
                    Some(at) => {
                        let _ = tx.send(prelude(&head[..at]));
                        let rest = Bytes::copy_from_slice(&head[at + 8..]);
                        if !rest.is_empty() {
                            let _ = waiting.chunks.send(rest).await;
                        }
                    }
                    None => waiting.head = Some(tx),
                }
            } else if waiting.chunks.send(data).await.is_err() {
                break; // the client went away
            }
        }
        if let Some(tx) = waiting.head.take() {
            // A buffered (non-streaming) answer: the whole body is the API Gateway JSON.
            let v: Value = serde_json::from_slice(&head).unwrap_or(Value::Null);
            let _ = tx.send(prelude(&head));
            if let Some(b) = v.get("body").and_then(Value::as_str) {
                let _ = waiting.chunks.send(Bytes::from(b.to_owned())).await;
            }
        }
        return Ok(http::Response::builder()
            .status(202)
            .body(full(""))
            .unwrap_or_else(|_| http::Response::new(full(""))));
    }
    if path == "/2018-06-01/runtime/init/error" {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        eprintln!(
            "conduit-lambda-local: the function failed to start: {}",
            String::from_utf8_lossy(&body)
        );
        return Ok(http::Response::builder()
            .status(202)
            .body(full(""))
            .unwrap_or_else(|_| http::Response::new(full(""))));
    }
    Ok(error_body(404, "unknown runtime API path"))
}

async fn serve<F, Fut, S>(
    listener: TcpListener,
    shared: Arc<Shared>,
    wrap: fn(TcpStream) -> S,
    handler: F,
) where
    F: Fn(Arc<Shared>, http::Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let fd = PeerFd(stream.as_raw_fd());
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(fd);
                handler(shared.clone(), req)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(wrap(stream)), svc)
                .await;
        });
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let listen = arg(&args, "--listen").unwrap_or_else(|| "127.0.0.1:9000".into());
    let max_instances = arg(&args, "--instances")
        .and_then(|n| n.parse().ok())
        .unwrap_or(10usize)
        .max(1);
    let function = arg(&args, "--function").unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| {
                p.parent()
                    .map(|d| d.join("conduit-lambda").display().to_string())
            })
            .unwrap_or_else(|| "conduit-lambda".into())
    });
    let front_listener = match TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("conduit-lambda-local: cannot listen on {listen}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime_listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("conduit-lambda-local: cannot start the Runtime API: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime_addr = runtime_listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (queue_tx, queue_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queue_tx,
        queue_rx: AsyncMutex::new(queue_rx),
        waiting: Mutex::new(HashMap::new()),
        idle: AtomicUsize::new(0),
        queued: AtomicUsize::new(0),
        instances: AtomicUsize::new(0),
        max_instances,
        function,
        runtime_addr,
        children: Mutex::new(Vec::new()),
        next_id: AtomicUsize::new(1),
    });
    tokio::spawn(serve(runtime_listener, shared.clone(), QuickAck, runtime));
    // One instance up front (a cold start: it creates the tables), ready once it polls.
    if let Err(e) = shared.spawn_instance() {
        eprintln!(
            "conduit-lambda-local: cannot start {}: {e}",
            shared.function
        );
        return std::process::ExitCode::from(2);
    }
    for _ in 0..600 {
        if shared.idle.load(Ordering::SeqCst) > 0 {
            break;
        }
        let exited = shared
            .children
            .lock()
            .ok()
            .is_some_and(|mut c| c.iter_mut().any(|ch| matches!(ch.try_wait(), Ok(Some(_)))));
        if exited {
            eprintln!(
                "conduit-lambda-local: the function exited during its init (see its error above)"
            );
            return std::process::ExitCode::from(1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let local = front_listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(listen);
    println!("conduit-lambda-local listening on http://{local}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::spawn(serve(front_listener, shared.clone(), |s| s, front));
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("conduit-lambda-local: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // Stop the function instances we started.
    if let Ok(mut children) = shared.children.lock() {
        for c in children.iter_mut() {
            let _ = c.start_kill();
        }
    }
    std::process::ExitCode::SUCCESS
}
