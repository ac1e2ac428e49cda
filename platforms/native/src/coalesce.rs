//! One upstream read, one piece: the body of a streamed answer as the
//! provider's socket reads brought it in, not one piece per HTTP chunk.
//!
//! hyper's HTTP/1 client decodes the body on the connection's own task and
//! hands it over through a one-slot channel, one chunk of the chunked
//! encoding at a time: an SSE provider writes one chunk per event, so a read
//! that brought ten events in reached the relay as ten pieces, each relayed
//! as its own body frame, each frame a `writev` to the client (and a read for
//! it). nginx, for the same stream, writes once per upstream read.
//!
//! [`ReadCoalescer`] takes what the connection's task has already read. Once
//! a piece is in, it yields (wakes itself and returns `Pending`), which lets
//! the connection's task (just woken by the taken slot) decode the next chunk
//! from the bytes it already holds; a piece that came in meanwhile is
//! appended and the coalescer yields again; when, after its yields, nothing
//! more is there, what it holds goes out as one piece. It never waits for
//! bytes the socket has not delivered: the connection's task only decodes
//! what it read, or tries one read that does not block.
//!
//! The first piece is held like the others: when the provider's first read
//! brought the whole answer in (a short answer, or a fast provider), the
//! response's head, its first event and the rest go to the client in one
//! `writev`, not two (concurrent streams through the benchmark: 3 → 2
//! `writev` a stream, 10 % less CPU). When only the first event is in, it
//! waits for two yields, two turns of its task, a few microseconds: on a
//! runtime per core the connection's task runs on the same thread.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

/// The most bytes held back for the next piece: more go out at once.
pub const MAX_COALESCED_BYTES: usize = 64 * 1024;

/// Yields before what is held goes out. Two, because a body's reader may
/// poll again within the same turn of its task (hyper's HTTP/1 writer polls
/// a body that was not ready a second time before it lets its task sleep):
/// that second poll comes before the connection's task could run. Each
/// yield wakes the task, so what is held always goes out.
const YIELDS: u8 = 2;

/// Pieces of a byte stream that are ready one after the other, as one.
pub struct ReadCoalescer<S, E> {
    inner: S,
    /// The first piece held (not copied while it is alone).
    held: Option<Bytes>,
    /// The held pieces once there are two or more.
    joined: BytesMut,
    /// Yields made since the last piece came in.
    yields: u8,
    /// What came after the held pieces: the end or an error, given next.
    after: Option<Option<E>>,
    done: bool,
}

impl<S, E> ReadCoalescer<S, E> {
    pub fn new(inner: S) -> Self {
        ReadCoalescer {
            inner,
            held: None,
            joined: BytesMut::new(),
            yields: 0,
            after: None,
            done: false,
        }
    }

    fn held_len(&self) -> usize {
        self.held.as_ref().map_or(0, Bytes::len) + self.joined.len()
    }

    fn hold(&mut self, piece: Bytes) {
        if self.joined.is_empty() {
            match self.held.take() {
                None => {
                    self.held = Some(piece);
                    return;
                }
                Some(first) => {
                    self.joined.reserve(first.len() + piece.len());
                    self.joined.extend_from_slice(&first);
                }
            }
        }
        self.joined.extend_from_slice(&piece);
    }

    fn take_held(&mut self) -> Option<Bytes> {
        if !self.joined.is_empty() {
            return Some(self.joined.split().freeze());
        }
        self.held.take()
    }
}

impl<S, E> Stream for ReadCoalescer<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(after) = this.after.take() {
            this.done = true;
            return Poll::Ready(after.map(Err));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(piece))) => {
                    if piece.is_empty() {
                        continue;
                    }
                    this.hold(piece);
                    this.yields = 0;
                    if this.held_len() >= MAX_COALESCED_BYTES {
                        return Poll::Ready(this.take_held().map(Ok));
                    }
                }
                Poll::Ready(end) => {
                    let error = end.and_then(Result::err);
                    return match this.take_held() {
                        Some(held) => {
                            this.after = Some(error);
                            Poll::Ready(Some(Ok(held)))
                        }
                        None => {
                            this.done = true;
                            Poll::Ready(error.map(Err))
                        }
                    };
                }
                Poll::Pending => {
                    if this.held.is_none() && this.joined.is_empty() {
                        return Poll::Pending;
                    }
                    if this.yields < YIELDS {
                        // Let the connection's task decode what it has read.
                        this.yields += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    this.yields = 0;
                    return Poll::Ready(this.take_held().map(Ok));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// A script of what the inner stream answers, poll by poll.
    enum Step {
        Piece(&'static [u8]),
        Pending,
        Fail,
    }

    struct Scripted(VecDeque<Step>);

    impl Stream for Scripted {
        type Item = Result<Bytes, &'static str>;
        fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            match self.0.pop_front() {
                None => Poll::Ready(None),
                Some(Step::Piece(b)) => Poll::Ready(Some(Ok(Bytes::from_static(b)))),
                Some(Step::Pending) => Poll::Pending,
                Some(Step::Fail) => Poll::Ready(Some(Err("broken"))),
            }
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);
    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// What each poll gave: `None` for `Pending`.
    type Polls = Vec<Option<Result<Vec<u8>, &'static str>>>;

    /// Polls until the end; also returns how often the task was woken.
    fn run(steps: Vec<Step>) -> (Polls, usize) {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut s = ReadCoalescer::new(Scripted(steps.into()));
        let mut polls = Vec::new();
        for _ in 0..1000 {
            match Pin::new(&mut s).poll_next(&mut cx) {
                Poll::Ready(None) => return (polls, wakes.0.load(Ordering::SeqCst)),
                Poll::Ready(Some(r)) => polls.push(Some(r.map(|b| b.to_vec()))),
                Poll::Pending => polls.push(None),
            }
        }
        panic!("the coalescer did not end");
    }

    fn piece(b: &[u8]) -> Option<Result<Vec<u8>, &'static str>> {
        Some(Ok(b.to_vec()))
    }

    #[test]
    fn what_one_read_brought_goes_out_as_one_piece_the_first_too() {
        use Step::*;
        let (polls, wakes) = run(vec![
            Piece(b"a"),
            Piece(b"b"),
            Pending, // a yield: the connection's task decodes what it read
            Piece(b"c"),
            Piece(b"d"),
            Pending, // a yield
            Pending, // the second: the reader polled again in the same turn
            Pending, // nothing more: out
            Pending, // waiting for the socket
            Piece(b"e"),
            Pending,
            Pending,
            Pending,
        ]);
        assert_eq!(
            polls,
            vec![
                None,
                None,
                None,
                piece(b"abcd"),
                None,
                None,
                None,
                piece(b"e")
            ]
        );
        assert_eq!(wakes, 5, "each yield wakes the task");
    }

    #[test]
    fn a_first_event_alone_waits_two_yields() {
        use Step::*;
        let (polls, wakes) = run(vec![Piece(b"a"), Pending, Pending, Pending]);
        assert_eq!(polls, vec![None, None, piece(b"a")]);
        assert_eq!(wakes, 2);
    }

    #[test]
    fn the_end_and_an_error_come_after_what_is_held() {
        use Step::*;
        let (polls, _) = run(vec![Piece(b"a"), Piece(b"b"), Piece(b"c")]);
        assert_eq!(polls, vec![piece(b"abc")]);
        let (polls, _) = run(vec![Piece(b"a"), Piece(b"b"), Fail]);
        assert_eq!(polls, vec![piece(b"ab"), Some(Err("broken"))]);
        let (polls, _) = run(vec![Fail]);
        assert_eq!(polls, vec![Some(Err("broken"))]);
        let (polls, _) = run(vec![Piece(b"a"), Pending, Fail]);
        assert_eq!(polls, vec![None, piece(b"a"), Some(Err("broken"))]);
        let (polls, _) = run(vec![Piece(b"a"), Piece(b"b"), Pending, Fail]);
        assert_eq!(polls, vec![None, piece(b"ab"), Some(Err("broken"))]);
    }

    #[test]
    fn a_large_read_goes_out_without_a_yield_past_the_bound() {
        static BIG: [u8; MAX_COALESCED_BYTES] = [b'x'; MAX_COALESCED_BYTES];
        use Step::*;
        let (polls, wakes) = run(vec![Piece(b"a"), Piece(b"b"), Piece(&BIG), Piece(b"c")]);
        let mut first = b"ab".to_vec();
        first.extend_from_slice(&BIG);
        assert_eq!(polls, vec![piece(&first), piece(b"c")]);
        assert_eq!(wakes, 0);
    }

    #[test]
    fn any_split_and_any_timing_give_the_same_bytes() {
        let body: &[u8] = b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
        // Every split into pieces at every byte (one piece per byte, and
        // pairs of pieces at each cut), with a Pending after every piece,
        // after every other piece, or never.
        let mut cases: Vec<Vec<&'static [u8]>> = Vec::new();
        let leaked: &'static [u8] = Box::leak(body.to_vec().into_boxed_slice());
        cases.push(leaked.chunks(1).collect());
        for cut in 1..leaked.len() {
            cases.push(vec![&leaked[..cut], &leaked[cut..]]);
        }
        for pieces in cases {
            for every in [1, 2, usize::MAX] {
                let mut steps = Vec::new();
                for (i, p) in pieces.iter().enumerate() {
                    steps.push(Step::Piece(p));
                    if (i + 1) % every == 0 {
                        steps.push(Step::Pending);
                    }
                }
                let (polls, _) = run(steps);
                let mut got = Vec::new();
                for p in polls.into_iter().flatten() {
                    got.extend(p.unwrap());
                }
                assert_eq!(got, body);
            }
        }
    }
}
