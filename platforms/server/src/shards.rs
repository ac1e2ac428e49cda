//! Which thread serves a connection, and shutdown. With one single-threaded
//! tokio runtime per worker (`[server] runtime = "per-core"`), the first
//! shard, on the main thread, accepts every connection and hands it to the
//! shard with the fewest open connections (in turn among equals); each other
//! shard serves its own on a thread and runtime of its own. A connection,
//! its requests, their timers and the upstream connections they borrow
//! (`HyperUpstream::per_thread`) stay on one thread, so a request's progress
//! never wakes another thread. With one shared runtime (`runtime =
//! "shared"`) there is one shard, whose runtime's workers share the tasks.
//!
//! Shutdown: SIGTERM or SIGINT stops accepting and lets every shard's open
//! requests and streams finish; a second signal stops at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use conduit::Gateway;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::http::{Acceptor, Serving};

/// Serves on `shards` runtimes, this task's (shard 0) and one per other
/// shard, until a shutdown signal; then waits for every shard's open
/// requests and streams, or stops at once on a second signal. One shard:
/// everything on this task's runtime (`runtime = "shared"`).
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>, serving: Serving, shards: usize) {
    // Set on a second signal: the shards stop without waiting.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let acceptor = Acceptor::new(gateway, serving);
    let mut inboxes = Vec::new();
    let mut threads = Vec::new();
    for shard in 1..shards.max(1) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, Open)>();
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
    // Open connections per shard, shard 0 first.
    let open: Vec<Arc<AtomicUsize>> = (0..=inboxes.len())
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    let mut turn = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    turn = turn.wrapping_add(1);
                    let shard = least_loaded(&open, turn);
                    let held = Open::new(&open[shard]);
                    let handed = match shard.checked_sub(1).and_then(|i| inboxes.get(i)) {
                        None => Some((stream, held)),
                        // A shard that is gone (its thread died) hands the
                        // connection back here.
                        Some(inbox) => match stream.into_std() {
                            Ok(stream) => inbox.send((stream, held)).err().and_then(|e| {
                                let (stream, held) = e.0;
                                TcpStream::from_std(stream).ok().map(|s| (s, held))
                            }),
                            Err(_) => None,
                        },
                    };
                    if let Some((stream, held)) = handed {
                        acceptor.accept(stream, &graceful, held);
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
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, Open)>,
    acceptor: Acceptor,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    // Ends when the first shard drops its end: the server is draining.
    while let Some((stream, held)) = inbox.recv().await {
        // Registered with this thread's runtime; a socket that cannot be is
        // dropped, which closes it.
        if let Ok(stream) = TcpStream::from_std(stream) {
            acceptor.accept(stream, &graceful, held);
        }
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = stop.wait_for(|stop| *stop) => {}
    }
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

/// After a failed `accept` (out of file descriptors, say): a short pause.
async fn accept_failed(e: std::io::Error) {
    eprintln!("conduit: accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// One open connection of a shard, counted while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Open {
        count.fetch_add(1, Ordering::Relaxed);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shard with the fewest open connections; among equals, the first
/// from `turn` on, so that a burst of new connections goes round.
fn least_loaded(open: &[Arc<AtomicUsize>], turn: usize) -> usize {
    let n = open.len().max(1);
    (0..n)
        .map(|i| (turn + i) % n)
        .min_by_key(|&shard| {
            open.get(shard)
                .map_or(usize::MAX, |c| c.load(Ordering::Relaxed))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(values: &[usize]) -> Vec<Arc<AtomicUsize>> {
        values
            .iter()
            .map(|&v| Arc::new(AtomicUsize::new(v)))
            .collect()
    }

    #[test]
    fn new_connections_go_to_the_least_loaded_shard() {
        assert_eq!(least_loaded(&counts(&[3, 1, 2]), 0), 1);
        assert_eq!(least_loaded(&counts(&[3, 1, 2]), 7), 1);
        assert_eq!(least_loaded(&counts(&[0, 5]), 1), 0);
    }

    #[test]
    fn equals_are_taken_in_turn() {
        let open = counts(&[2, 2, 2]);
        let picked: Vec<usize> = (0..6).map(|turn| least_loaded(&open, turn)).collect();
        assert_eq!(picked, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_burst_spreads_evenly_and_closing_frees_a_place() {
        let open = counts(&[0, 0]);
        let held: Vec<Open> = (0..8)
            .map(|turn| Open::new(&open[least_loaded(&open, turn)]))
            .collect();
        assert_eq!(open[0].load(Ordering::Relaxed), 4);
        assert_eq!(open[1].load(Ordering::Relaxed), 4);
        // The connections on shard 1 close: the next ones go there.
        let (on_one, on_zero): (Vec<Open>, Vec<Open>) =
            held.into_iter().partition(|o| Arc::ptr_eq(&o.0, &open[1]));
        drop(on_one);
        assert_eq!(least_loaded(&open, 0), 1);
        drop(on_zero);
        assert_eq!(open[0].load(Ordering::Relaxed), 0);
    }
}
