//! One client connection's life: its place under `[server] max_connections`,
//! and the timers that close it when the client holds it without using it.
//!
//! hyper's own header-read timer starts when the server starts waiting for a
//! request head, which on a kept-alive connection is the end of the previous
//! response: an idle connection and a slow head would share one timeout.
//! [`Watched`] wraps the socket and tells them apart from what it sees:
//!
//! | phase | begins | ends the connection after |
//! |---|---|---|
//! | head | the connection opens, or the first byte after an idle spell | `header_read_timeout` |
//! | busy | a request reaches the service ([`InFlight`] held) | never here (the body has `body_read_timeout`, the upstream its own) |
//! | idle | the last response of the connection ended | `keep_alive_timeout` |
//!
//! Closing is an end of file handed to hyper, which then drops the
//! connection as if the client had gone. On an HTTP/2 connection (it opens
//! with `PRI`), frames between streams (pings, settings) are not request
//! heads: any byte restarts the idle timer there.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

/// What the service and the socket of one connection share.
#[derive(Default)]
pub struct ConnState {
    in_flight: AtomicUsize,
    /// The connection task, woken when its last request ends so the idle
    /// timer starts then rather than at the next unrelated wake-up.
    waker: AtomicWaker,
}

/// Held by a request from the service's call until its response body is
/// dropped (sent or abandoned): the connection is busy meanwhile.
pub struct InFlight(Arc<ConnState>);

impl InFlight {
    pub fn new(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.waker.wake();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Busy,
    Idle,
}

/// The timeouts [`Watched`] applies.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub head: Duration,
    pub idle: Duration,
}

/// A client socket under the connection's timers; it also holds the
/// connection's permit, released when hyper drops it.
pub struct Watched<T> {
    inner: T,
    state: Arc<ConnState>,
    timeouts: Timeouts,
    phase: Phase,
    timer: Pin<Box<Sleep>>,
    /// Decided by the connection's first bytes.
    http2: Option<bool>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<T> Watched<T> {
    pub fn new(
        inner: T,
        state: Arc<ConnState>,
        timeouts: Timeouts,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        Watched {
            inner,
            state,
            timeouts,
            phase: Phase::Head,
            timer: Box::pin(tokio::time::sleep(timeouts.head)),
            http2: None,
            _permit: permit,
        }
    }

    fn restart(&mut self, after: Duration) {
        self.timer.as_mut().reset(Instant::now() + after);
    }

    /// Bytes arrived while no request is in the service.
    fn on_bytes(&mut self, bytes: &[u8]) {
        let http2 = *self
            .http2
            .get_or_insert_with(|| bytes.len() >= 3 && bytes.starts_with(b"PRI"));
        if http2 {
            self.phase = Phase::Idle;
            self.restart(self.timeouts.idle);
        } else if self.phase != Phase::Head {
            self.phase = Phase::Head;
            self.restart(self.timeouts.head);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        this.state.waker.register(cx.waker());
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        let busy = this.state.in_flight.load(Ordering::Acquire) > 0;
        match read {
            Poll::Ready(Ok(())) => {
                if !busy && buf.filled().len() > before {
                    this.on_bytes(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if busy => {
                this.phase = Phase::Busy;
                Poll::Pending
            }
            Poll::Pending => {
                if this.phase == Phase::Busy {
                    this.phase = Phase::Idle;
                    this.restart(this.timeouts.idle);
                }
                match this.timer.as_mut().poll(cx) {
                    // End of file: hyper closes the connection.
                    Poll::Ready(()) => Poll::Ready(Ok(())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Binds the listening socket. With `reuse_address` (`SO_REUSEADDR`), a
/// restarted server binds its port at once even while connections of the
/// previous process linger in `TIME_WAIT` (up to a minute on Linux).
pub fn bind(
    addr: std::net::SocketAddr,
    reuse_address: bool,
    backlog: i32,
) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(reuse_address)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    tokio::net::TcpListener::from_std(socket.into())
}
