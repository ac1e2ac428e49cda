//! Serving with one single-threaded tokio runtime per worker (`[server]
//! runtime = "per-core"`): the first shard, on the main thread, accepts every
//! connection and hands them out in turn; each other shard serves its own on
//! a thread and runtime of its own. A connection, its requests, their timers
//! and the upstream connections they borrow (`HyperUpstream::per_thread`)
//! stay on one thread, so a request's progress never wakes another thread.
//! Shutdown is [`crate::http::run`]'s, for every shard.

use std::sync::Arc;
use std::time::Duration;

use conduit::Gateway;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::http::{accept_failed, shutdown_signal, Acceptor, Serving};

/// Serves on `shards` runtimes, this task's (shard 0) and one per other
/// shard, until a shutdown signal; then waits for every shard's open
/// requests and streams, or stops at once on a second signal.
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>, serving: Serving, shards: usize) {
    // Set on a second signal: the shards stop without waiting.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let acceptor = Acceptor::new(gateway, serving);
    let mut inboxes = Vec::new();
    let mut threads = Vec::new();
    for shard in 1..shards.max(1) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("conduit-shard-{shard}"))
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => {
                        runtime.block_on(shard_loop(rx, acceptor, stop));
                        runtime.shutdown_timeout(Duration::from_secs(1));
                    }
                    Err(e) => eprintln!("conduit: cannot start shard {shard}'s runtime: {e}"),
                }
            });
        match thread {
            Ok(thread) => {
                inboxes.push(tx);
                threads.push(thread);
            }
            Err(e) => eprintln!("conduit: cannot start shard {shard}: {e}"),
        }
    }

    let graceful = GracefulShutdown::new();
    let mut signal = std::pin::pin!(shutdown_signal());
    let mut turn = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    turn = (turn + 1) % (inboxes.len() + 1);
                    let handed = match turn.checked_sub(1).and_then(|i| inboxes.get(i)) {
                        None => Some(stream),
                        // A shard that is gone (its thread died) hands the
                        // connection back here.
                        Some(inbox) => match stream.into_std() {
                            Ok(stream) => inbox
                                .send(stream)
                                .err()
                                .and_then(|e| TcpStream::from_std(e.0).ok()),
                            Err(_) => None,
                        },
                    };
                    if let Some(stream) = handed {
                        acceptor.accept(stream, &graceful);
                    }
                }
                Err(e) => accept_failed(e).await,
            },
            _ = &mut signal => {
                eprintln!("conduit: shutting down, letting open requests finish");
                break;
            }
        }
    }
    drop(listener);
    drop(inboxes);
    let all_done = async {
        graceful.shutdown().await;
        // The other shards' threads end once their connections have.
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    };
    tokio::select! {
        _ = all_done => {}
        _ = shutdown_signal() => {
            eprintln!("conduit: second signal, stopping without waiting");
            let _ = stop_tx.send(true);
        }
    }
}

/// A shard other than the first: serves the connections handed to it until
/// the server drains, then waits for them (or stops, on a second signal).
async fn shard_loop(
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    acceptor: Acceptor,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    // Ends when the first shard drops its end: the server is draining.
    while let Some(stream) = inbox.recv().await {
        // Registered with this thread's runtime; a socket that cannot be is
        // dropped, which closes it.
        if let Ok(stream) = TcpStream::from_std(stream) {
            acceptor.accept(stream, &graceful);
        }
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = stop.wait_for(|stop| *stop) => {}
    }
}
