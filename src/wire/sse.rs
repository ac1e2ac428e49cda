//! Server-sent events: an incremental parser and the encoder.
//!
//! The parser accepts bytes in pieces of any size: an event, a line, a
//! `\r\n` pair or a UTF-8 sequence may be split anywhere between two calls
//! to [`SseParser::feed`]. It follows the WHATWG rules that matter to LLM
//! streams: `\n`, `\r\n` and `\r` line ends, `data:` lines joined with `\n`,
//! one optional space after the colon, comments (`:`) ignored, an event
//! dispatched at a blank line.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// One dispatched event, borrowed from the parser ([`SseParser::feed_each`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub event: Option<&'a str>,
    pub data: &'a str,
}

impl EventRef<'_> {
    pub fn to_owned(self) -> SseEvent {
        SseEvent {
            event: self.event.map(str::to_owned),
            data: self.data.to_owned(),
        }
    }
}

/// The largest event a provider may send: the bytes of one line, or of one
/// event's joined `data` lines. A stream with a larger one ends with an error
/// ([`SseParser::take_overflow`]) rather than holding memory without bound.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// An incremental SSE parser. Work is linear in the bytes fed: every byte is
/// scanned once, and only an unfinished line is kept between calls.
#[derive(Debug)]
pub struct SseParser {
    /// The unfinished last line.
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<u8>,
    has_data: bool,
    /// The last byte fed was a `\r`: a leading `\n` in the next piece belongs to it.
    skip_lf: bool,
    max_event_bytes: usize,
    /// An event went over the bound: everything after it is ignored.
    overflowed: bool,
    /// The overflow was not reported yet.
    overflow_unreported: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser whose events may be at most `max_event_bytes` long.
    pub fn with_limit(max_event_bytes: usize) -> Self {
        SseParser {
            buf: Vec::new(),
            event: None,
            data: Vec::new(),
            has_data: false,
            skip_lf: false,
            max_event_bytes,
            overflowed: false,
            overflow_unreported: false,
        }
    }

    /// Feeds the next piece of the body; complete events are pushed to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        self.feed_each(bytes, |ev| out.push(ev.to_owned()));
    }

    /// Feeds the next piece of the body; `each` is called with every event
    /// it completes, borrowed from the parser (no allocation per event).
    pub fn feed_each(&mut self, mut bytes: &[u8], mut each: impl FnMut(EventRef<'_>)) {
        if self.overflowed {
            return;
        }
        if self.skip_lf && !bytes.is_empty() {
            self.skip_lf = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        let mut start = 0;
        while let Some(at) = memchr::memchr2(b'\n', b'\r', &bytes[start..]) {
            let i = start + at;
            // The usual event, one `data:` line and a blank one, whole in
            // this piece: handed out from the piece itself, not copied into
            // `data` first (what `line` would do with the two lines).
            if self.buf.is_empty()
                && !self.has_data
                && bytes[i] == b'\n'
                && bytes.get(i + 1) == Some(&b'\n')
                && i - start < self.max_event_bytes
            {
                if let Some(value) = bytes[start..i].strip_prefix(b"data:") {
                    let value = value.strip_prefix(b" ").unwrap_or(value);
                    let data = match std::str::from_utf8(value) {
                        Ok(text) => Cow::Borrowed(text),
                        Err(_) => String::from_utf8_lossy(value),
                    };
                    each(EventRef {
                        event: self.event.as_deref(),
                        data: &data,
                    });
                    self.event = None;
                    start = i + 2;
                    continue;
                }
            }
            if self.buf.is_empty() {
                self.line(&bytes[start..i], &mut each);
            } else {
                // The line began in an earlier piece.
                let mut line = std::mem::take(&mut self.buf);
                line.extend_from_slice(&bytes[start..i]);
                self.line(&line, &mut each);
                line.clear();
                self.buf = line;
            }
            if self.overflowed {
                return;
            }
            start = i + 1;
            if bytes[i] == b'\r' {
                if start == bytes.len() {
                    self.skip_lf = true;
                } else if bytes[start] == b'\n' {
                    start += 1;
                }
            }
        }
        let rest = &bytes[start..];
        if self.buf.len() + rest.len() + self.data.len() > self.max_event_bytes {
            self.overflow();
            return;
        }
        self.buf.extend_from_slice(rest);
    }

    /// The body ended: a last event without its blank line is still dispatched.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        self.finish_each(|ev| out.push(ev.to_owned()));
    }

    /// [`finish`](Self::finish), the events borrowed.
    pub fn finish_each(&mut self, mut each: impl FnMut(EventRef<'_>)) {
        if self.overflowed {
            return;
        }
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.line(&line, &mut each);
        }
        self.line(b"", &mut each);
    }

    /// Once, after an event went over the bound: the error that ends the stream.
    pub fn take_overflow(&mut self) -> Option<crate::wire::error::GatewayError> {
        if !std::mem::take(&mut self.overflow_unreported) {
            return None;
        }
        Some(crate::wire::error::GatewayError::Upstream(format!(
            "the provider sent a stream event over {} bytes",
            self.max_event_bytes
        )))
    }

    fn overflow(&mut self) {
        self.overflowed = true;
        self.overflow_unreported = true;
        self.buf = Vec::new();
        self.data = Vec::new();
        self.event = None;
        self.has_data = false;
    }

    fn line(&mut self, line: &[u8], each: &mut impl FnMut(EventRef<'_>)) {
        if line.len() > self.max_event_bytes {
            self.overflow();
            return;
        }
        if line.is_empty() {
            if self.has_data {
                // The UTF-8 check, once per event (all of it ASCII: a word
                // at a time); invalid bytes become U+FFFD, as they would in
                // a browser.
                let data = match std::str::from_utf8(&self.data) {
                    Ok(text) => Cow::Borrowed(text),
                    Err(_) => String::from_utf8_lossy(&self.data),
                };
                each(EventRef {
                    event: self.event.as_deref(),
                    data: &data,
                });
            }
            self.event = None;
            self.data.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(p) => {
                let v = &line[p + 1..];
                (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_event_bytes {
                    self.overflow();
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
    }
}

/// `data: <payload>\n\n` appended to `out`.
pub fn encode_data(out: &mut BytesMut, payload: &[u8]) {
    out.reserve(payload.len() + 8);
    out.put_slice(b"data: ");
    out.put_slice(payload);
    out.put_slice(b"\n\n");
}

/// The OpenAI stream terminator.
pub const DONE: Bytes = Bytes::from_static(b"data: [DONE]\n\n");

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(pieces: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            p.feed(piece, &mut out);
        }
        p.finish(&mut out);
        out
    }

    #[test]
    fn basic_and_multiline() {
        let ev = parse_all(&[
            b"event: a\ndata: 1\ndata:2\n\n: comment\ndata: x\r\n\r\ndata: y\r\rdata: z",
        ]);
        assert_eq!(ev.len(), 4);
        assert_eq!(
            ev[0],
            SseEvent {
                event: Some("a".into()),
                data: "1\n2".into()
            }
        );
        assert_eq!(ev[1].data, "x");
        assert_eq!(ev[2].data, "y");
        assert_eq!(ev[3].data, "z");
    }

    #[test]
    fn an_endless_event_is_bounded_and_reported_once() {
        let mut p = SseParser::with_limit(64);
        let mut out = Vec::new();
        p.feed(b"data: ok\n\n", &mut out);
        assert_eq!(out.len(), 1);
        // A line that never ends, a byte at a time.
        for _ in 0..100 {
            p.feed(b"x", &mut out);
        }
        assert!(p.buf.len() <= 64);
        assert!(p.take_overflow().is_some());
        assert!(p.take_overflow().is_none());
        p.feed(b"\n\ndata: later\n\n", &mut out);
        p.finish(&mut out);
        assert_eq!(out.len(), 1, "nothing is parsed after an overflow");
        // Many short data lines that make one huge event.
        let mut p = SseParser::with_limit(64);
        for _ in 0..40 {
            p.feed(b"data: abc\n", &mut out);
        }
        assert!(p.data.len() <= 64);
        assert!(p.take_overflow().is_some());
        // An event right at the bound still passes.
        let mut p = SseParser::with_limit(64);
        let mut out = Vec::new();
        let body = format!("data: {}\n\n", "y".repeat(58));
        p.feed(body.as_bytes(), &mut out);
        assert_eq!(out.len(), 1);
        assert!(p.take_overflow().is_none());
    }

    #[test]
    fn a_long_line_fed_in_pieces_is_scanned_once() {
        // A line split over many reads is kept once and scanned once (rescanning
        // the buffer on every read made this quadratic: hours, not milliseconds).
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(b"data: ", &mut out);
        let piece = [b'z'; 16];
        for _ in 0..(MAX_EVENT_BYTES / 2 / piece.len()) {
            p.feed(&piece, &mut out);
        }
        p.feed(b"\n\n", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data.len(), MAX_EVENT_BYTES / 2);
    }

    #[test]
    fn survives_every_split() {
        let body = "event: message_start\r\ndata: {\"a\": \"h\u{e9}llo \u{1F600}\"}\r\n\r\n: ping\n\ndata: [DONE]\n\n".as_bytes();
        let whole = parse_all(&[body]);
        assert_eq!(whole.len(), 2);
        for i in 0..=body.len() {
            for j in i..=body.len() {
                assert_eq!(
                    parse_all(&[&body[..i], &body[i..j], &body[j..]]),
                    whole,
                    "split at {i},{j}"
                );
            }
        }
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(parse_all(&bytewise), whole);
    }

    #[test]
    fn one_line_events_read_from_the_piece_are_the_same() {
        // Whole one-line events (handed out from the piece) among the
        // others, against the same bytes fed one at a time (each line
        // through `data`).
        let body: &[u8] = b"data: {\"a\":1}\n\ndata:{\"b\":2}\n\nevent: e\ndata: x\n\ndata: \xff\xfe\n\ndata: a\ndata: b\n\n: c\n\ndata\n\ndatax: y\n\ndata: \n\nid: 1\ndata: z\n\ndata: [DONE]\n\n";
        let whole = parse_all(&[body]);
        let bytewise: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(parse_all(&bytewise), whole);
        assert_eq!(whole.len(), 9);
        assert_eq!(whole[2].event.as_deref(), Some("e"));
        assert_eq!(whole[3].data, "\u{fffd}\u{fffd}");
        // An event over the bound is refused either way.
        let mut p = SseParser::with_limit(8);
        let mut out = Vec::new();
        p.feed(b"data: 0123456789\n\n", &mut out);
        assert!(out.is_empty());
        assert!(p.take_overflow().is_some());
    }
}
