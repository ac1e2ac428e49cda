//! `bench-hyper-proxy`: the HTTP stack Conduit's server is built on, with nothing of the gateway:
//! a reverse proxy to one upstream over hyper's HTTP/1 server and client connections, laid out as
//! Conduit's `runtime = "per-core"` server is (one single-threaded tokio runtime per worker, the
//! first accepting and handing each connection to the next in turn; each worker keeps its own
//! upstream connections, used again once their previous answer has been read to the end). It
//! forwards the request (method, path, headers, body) and streams the answer back as it comes, so
//! `bench/run.sh` can show how much of Conduit's cost over nginx's is the stack itself.
//!
//! Usage: bench-hyper-proxy --upstream http://127.0.0.1:PORT [--listen 127.0.0.1:0] [--workers N]
//! Prints `listening on http://ADDR` once it accepts; stops on SIGTERM or SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conduit_bench::{err, Args, Result};
use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const USAGE: &str =
    "usage: bench-hyper-proxy --upstream http://HOST:PORT [--listen ADDR] [--workers N]";

type Body = BoxBody<bytes::Bytes, hyper::Error>;

/// One worker's upstream connections: those free to take a request, and
/// those still reading an answer (free again once it has been read).
struct Upstream {
    addr: SocketAddr,
    host: HeaderValue,
    senders: Mutex<Vec<SendRequest<Incoming>>>,
}

impl Upstream {
    async fn sender(&self) -> std::result::Result<SendRequest<Incoming>, String> {
        {
            let mut senders = self.senders.lock().unwrap_or_else(|p| p.into_inner());
            senders.retain(|s| !s.is_closed());
            if let Some(i) = senders.iter().position(|s| s.is_ready()) {
                return Ok(senders.swap_remove(i));
            }
        }
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn forward(&self, req: Request<Incoming>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or(PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
        parts.headers.insert(HOST, self.host.clone());
        let mut sender = match self.sender().await {
            Ok(s) => s,
            Err(e) => return bad_gateway(&e),
        };
        let answer = sender.send_request(Request::from_parts(parts, body)).await;
        // Free again once this answer's body has been read to the end.
        self.senders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sender);
        match answer {
            Ok(res) => res.map(BodyExt::boxed),
            Err(e) => bad_gateway(&e.to_string()),
        }
    }
}

fn bad_gateway(why: &str) -> Response<Body> {
    eprintln!("bench-hyper-proxy: upstream: {why}");
    let mut res = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

fn serve(stream: TcpStream, upstream: Arc<Upstream>) {
    let _ = stream.set_nodelay(true);
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |req| {
            let upstream = upstream.clone();
            async move { Ok::<_, std::convert::Infallible>(upstream.forward(req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bench-hyper-proxy: {e}");
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
    args.check_known(&["listen", "workers", "upstream"])?;
    let listen: SocketAddr = args.parse_or("listen", SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let workers: usize = args.parse_or(
        "workers",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )?;
    let upstream: Uri = args
        .get("upstream")
        .ok_or_else(|| err("--upstream is required"))?
        .parse()
        .map_err(|e| err(format!("--upstream: {e}")))?;
    let authority = upstream
        .authority()
        .ok_or_else(|| err("--upstream needs host:port"))?
        .clone();
    let addr: SocketAddr = authority
        .as_str()
        .parse()
        .map_err(|e| err(format!("--upstream must be an IP address and port: {e}")))?;
    let host = HeaderValue::from_str(authority.as_str()).map_err(|e| err(e.to_string()))?;
    let new_upstream = || {
        Arc::new(Upstream {
            addr,
            host: host.clone(),
            senders: Mutex::new(Vec::new()),
        })
    };

    // Workers other than the first: a runtime each, serving what they are handed.
    let mut inboxes = Vec::new();
    for _ in 1..workers.max(1) {
        let (tx, mut rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
        let upstream = new_upstream();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            runtime.block_on(async move {
                while let Some(stream) = rx.recv().await {
                    if let Ok(stream) = TcpStream::from_std(stream) {
                        serve(stream, upstream.clone());
                    }
                }
            })
        });
        inboxes.push(tx);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| err(format!("bind {listen}: {e}")))?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{}", listener.local_addr()?)?;
            out.flush()?;
        }
        let upstream = new_upstream();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut turn = 0usize;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        turn = (turn + 1) % (inboxes.len() + 1);
                        match turn.checked_sub(1).and_then(|i| inboxes.get(i)) {
                            None => serve(stream, upstream.clone()),
                            Some(inbox) => {
                                if let Ok(stream) = stream.into_std() {
                                    let _ = inbox.send(stream);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("bench-hyper-proxy: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
        }
        Ok(())
    })
}
