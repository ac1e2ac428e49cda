//! The two framings providers stream in: server-sent events and AWS's
//! binary eventstream.

use conduit::providers::bedrock::eventstream::{crc32, Frame, FrameParser};
use conduit::wire::sse::{SseEvent, SseParser};

use crate::cuts::cuts;

/// The SSE parser over `pieces`, then `finish`.
pub fn sse_events(pieces: &[&[u8]]) -> Vec<SseEvent> {
    let mut p = SseParser::new();
    let mut out = Vec::new();
    for piece in pieces {
        p.feed(piece, &mut out);
    }
    p.finish(&mut out);
    out
}

/// A whole-body SSE parser written straight from the WHATWG rules the
/// module documents (`\n`, `\r\n`, `\r` line ends; `data:` lines joined by
/// `\n`; one optional space after the colon; `:` comments; dispatch at a
/// blank line, and at the end of the body), to compare the incremental
/// parser with.
pub fn sse_reference(body: &[u8]) -> Vec<SseEvent> {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\n' => {
                lines.push(&body[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&body[start..i]);
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < body.len() {
        lines.push(&body[start..]);
    }
    lines.push(b"");
    let mut out = Vec::new();
    let (mut event, mut data, mut has_data): (Option<String>, Vec<u8>, bool) =
        (None, Vec::new(), false);
    for line in lines {
        if line.is_empty() {
            if has_data {
                out.push(SseEvent {
                    event: event.take(),
                    data: String::from_utf8_lossy(&data).into_owned(),
                });
            }
            event = None;
            data.clear();
            has_data = false;
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(p) => (
                &line[..p],
                line[p + 1..].strip_prefix(b" ").unwrap_or(&line[p + 1..]),
            ),
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if has_data {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                has_data = true;
            }
            b"event" => event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {}
        }
    }
    out
}

/// SSE: the same events whatever the cut, the same as the reference
/// parser, and events re-encoded then parsed again come back the same.
pub fn check_sse(data: &[u8]) {
    let ways = cuts(data);
    let whole = sse_events(&ways[0]);
    for way in &ways[1..] {
        assert_eq!(sse_events(way), whole, "cut into {} reads", way.len());
    }
    assert_eq!(
        whole,
        sse_reference(data),
        "differs from the reference parser"
    );
    let mut encoded = Vec::new();
    let mut expected = Vec::new();
    for ev in &whole {
        // Line ends inside a value cannot be written back as one field.
        if ev.data.contains('\r')
            || ev
                .event
                .as_deref()
                .is_some_and(|e| e.contains(['\r', '\n']))
        {
            continue;
        }
        if let Some(name) = &ev.event {
            encoded.extend_from_slice(format!("event: {name}\n").as_bytes());
        }
        for line in ev.data.split('\n') {
            let mut b = bytes::BytesMut::new();
            conduit::wire::sse::encode_data(&mut b, line.as_bytes());
            // `data: line\n\n` minus the blank line, which ends the event.
            encoded.extend_from_slice(&b[..b.len() - 1]);
        }
        encoded.push(b'\n');
        expected.push(ev.clone());
    }
    assert_eq!(
        sse_events(&[&encoded]),
        expected,
        "re-encoded events differ"
    );
}

/// The largest frame the decoder accepts, as its module documents.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Frames and the one error, for `pieces`, and the most bytes ever held.
fn frames(pieces: &[&[u8]]) -> (Vec<Result<Frame, String>>, usize) {
    let mut p = FrameParser::new();
    let mut out = Vec::new();
    let mut most = 0;
    for piece in pieces {
        p.feed(piece, &mut out);
        most = most.max(p.pending());
    }
    (out, most)
}

/// `data` with every frame's two checksums made right, so that the fuzzer
/// reaches the header and payload parsing behind them.
pub fn repair_checksums(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    let mut at = 0;
    while at + 16 <= b.len() {
        let total = u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
        if total < 16 || at + total > b.len() {
            break;
        }
        let prelude = crc32(&b[at..at + 8]);
        b[at + 8..at + 12].copy_from_slice(&prelude.to_be_bytes());
        let message = crc32(&b[at..at + total - 4]);
        b[at + total - 4..at + total].copy_from_slice(&message.to_be_bytes());
        at += total;
    }
    b
}

/// One frame with string headers, as AWS encodes it.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let mut h = Vec::new();
    for (k, v) in &frame.headers {
        h.push(k.len() as u8);
        h.extend_from_slice(k.as_bytes());
        h.push(7);
        h.extend_from_slice(&(v.len() as u16).to_be_bytes());
        h.extend_from_slice(v.as_bytes());
    }
    let total = 16 + h.len() + frame.payload.len();
    let mut f = Vec::with_capacity(total);
    f.extend_from_slice(&(total as u32).to_be_bytes());
    f.extend_from_slice(&(h.len() as u32).to_be_bytes());
    f.extend_from_slice(&crc32(&f).to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&frame.payload);
    let c = crc32(&f);
    f.extend_from_slice(&c.to_be_bytes());
    f
}

/// Eventstream: the same frames whatever the cut, never more than one
/// frame's worth of bytes held, at most one error and nothing after it,
/// and decoded frames encode back to frames that decode the same.
pub fn check_eventstream(data: &[u8]) {
    for input in [data.to_vec(), repair_checksums(data)] {
        let ways = cuts(&input);
        let (whole, _) = frames(&ways[0]);
        for way in &ways {
            let (got, most) = frames(way);
            assert_eq!(got, whole, "cut into {} reads", way.len());
            assert!(most < MAX_FRAME, "held {most} bytes, over one frame");
        }
        if let Some(i) = whole.iter().position(Result::is_err) {
            assert_eq!(i, whole.len() - 1, "frames after an error");
        }
        let good: Vec<Frame> = whole.into_iter().filter_map(Result::ok).collect();
        let reencoded: Vec<u8> = good.iter().flat_map(encode_frame).collect();
        let (again, _) = frames(&[&reencoded]);
        let again: Vec<Frame> = again
            .into_iter()
            .map(|r| r.expect("a re-encoded frame is valid"))
            .collect();
        assert_eq!(again, good, "re-encoded frames differ");
    }
}
