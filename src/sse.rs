//! Server-sent events: an incremental parser and the encoder.
//!
//! The parser accepts bytes in pieces of any size: an event, a line, a
//! `\r\n` pair or a UTF-8 sequence may be split anywhere between two calls
//! to [`SseParser::feed`]. It follows the WHATWG rules that matter to LLM
//! streams: `\n`, `\r\n` and `\r` line ends, `data:` lines joined with `\n`,
//! one optional space after the colon, comments (`:`) ignored, an event
//! dispatched at a blank line.

use bytes::{BufMut, Bytes, BytesMut};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// An incremental SSE parser.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<u8>,
    has_data: bool,
    /// The last byte fed was a `\r`: a leading `\n` in the next piece belongs to it.
    skip_lf: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next piece of the body; complete events are pushed to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) {
        if self.skip_lf && !bytes.is_empty() {
            self.skip_lf = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        // Fast path: nothing buffered, work on the input directly.
        let mut start = 0;
        let owned;
        let input: &[u8] = if self.buf.is_empty() {
            bytes
        } else {
            self.buf.extend_from_slice(bytes);
            owned = std::mem::take(&mut self.buf);
            &owned
        };
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if b == b'\n' || b == b'\r' {
                self.line(&input[start..i], out);
                if b == b'\r' {
                    if i + 1 == input.len() {
                        self.skip_lf = true;
                    } else if input[i + 1] == b'\n' {
                        i += 1;
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
        self.buf.extend_from_slice(&input[start..]);
    }

    /// The body ended: a last event without its blank line is still dispatched.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            self.line(&line, out);
        }
        self.line(b"", out);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent {
                    event: self.event.take(),
                    data: String::from_utf8_lossy(&self.data).into_owned(),
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
}
