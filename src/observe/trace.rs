//! W3C Trace Context (`traceparent`, `tracestate`): Conduit as one hop.
//!
//! A valid `traceparent` from the client keeps its trace id and flags;
//! an absent or invalid one starts a new trace (random trace id, sampled).
//! Either way Conduit is a participating intermediary: it makes a span id
//! of its own for the request and sends `00-{trace id}-{Conduit's span
//! id}-{flags}` to the provider on every attempt, so the provider's spans
//! are children of Conduit's, and Conduit's of the client's. `tracestate`
//! goes along unchanged with a valid `traceparent` (dropped otherwise, as
//! the spec says).
//!
//! Parsing follows the spec's rules: lowercase hex only, version `ff`
//! invalid, version `00` exactly 55 characters, a later version at least 55
//! with a `-` after them (its extra fields ignored), trace and parent ids
//! not all zeros; a header sent twice is invalid.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Flag bit: the caller may have recorded the trace.
const SAMPLED: u8 = 0x01;

/// Longest `tracestate` passed on (the spec lets a hop drop longer ones).
const MAX_TRACESTATE: usize = 512;

/// The header names, built at compile time (a `&str` name is parsed at each
/// lookup, and parsed and copied at each insert).
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The trace context of one request, as Conduit passes it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The client's span (its `traceparent`'s parent id), when it sent one.
    pub client_span_id: Option<[u8; 8]>,
    /// Conduit's span: the parent id of the upstream calls.
    pub span_id: [u8; 8],
    pub flags: u8,
    /// The `traceparent` sent to the provider.
    pub header: HeaderValue,
    /// The client's `tracestate`, passed on with its valid `traceparent`.
    pub tracestate: Option<HeaderValue>,
}

/// A parsed `traceparent`: trace id, parent id, flags.
pub fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_byte(&value[0..2])?;
    if version == 0xff || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    match version {
        0 if value.len() != 55 => return None,
        0 => {}
        // A later version may add fields after a `-`.
        _ if value.len() > 55 && value[55] != b'-' => return None,
        _ => {}
    }
    let mut trace_id = [0u8; 16];
    hex_into(&value[3..35], &mut trace_id)?;
    let mut parent_id = [0u8; 8];
    hex_into(&value[36..52], &mut parent_id)?;
    let flags = hex_byte(&value[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some((trace_id, parent_id, flags))
}

impl TraceContext {
    /// The context of a request with `headers`: the client's trace, or a new one.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let client = match (values.next(), values.next()) {
            (Some(v), None) => parse_traceparent(v.as_bytes()),
            _ => None,
        };
        // One draw for the new ids: a trace id (when needed) and a span id.
        let mut random = [0u8; 24];
        crate::wire::random::fill(&mut random);
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&random[16..]);
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        let (trace_id, client_span_id, flags, tracestate) = match client {
            Some((trace_id, parent, flags)) => {
                let state = headers
                    .get(TRACESTATE)
                    .filter(|v| v.len() <= MAX_TRACESTATE && !v.is_empty())
                    .cloned();
                // Only the sampled bit is defined in version 00.
                (trace_id, Some(parent), flags & SAMPLED, state)
            }
            None => {
                let mut trace_id = [0u8; 16];
                trace_id.copy_from_slice(&random[..16]);
                if trace_id == [0; 16] {
                    trace_id[15] = 1;
                }
                (trace_id, None, SAMPLED, None)
            }
        };
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        hex_write(&trace_id, &mut text[3..35]);
        text[35] = b'-';
        hex_write(&span_id, &mut text[36..52]);
        text[52] = b'-';
        hex_write(&[flags], &mut text[53..55]);
        TraceContext {
            trace_id,
            client_span_id,
            span_id,
            flags,
            // Lowercase hex and dashes: always a valid header value.
            header: HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("")),
            tracestate,
        }
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        let mut out = [0u8; 32];
        hex_write(&self.trace_id, &mut out);
        ascii_string(&out)
    }

    /// The `traceparent` sent to the provider, as text.
    pub fn traceparent(&self) -> String {
        ascii_string(self.header.as_bytes())
    }

    /// Adds `traceparent` (and `tracestate`) to a request for the provider.
    pub fn add_to(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.header.clone());
        // A provider's request is built from the body, never from the
        // client's headers: there is no other `tracestate` to replace.
        if let Some(state) = &self.tracestate {
            headers.insert(TRACESTATE, state.clone());
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Hex digits and dashes as a `String`, in one allocation and without the
/// UTF-8 check and copy of `from_utf8_lossy` (anything else is dropped).
/// ASCII (always, in practice) is copied whole: pushed a `char` at a time,
/// the trace id and `traceparent` cost ~1,200 instructions a request.
fn ascii_string(bytes: &[u8]) -> String {
    if let Some(text) = bytes
        .is_ascii()
        .then(|| std::str::from_utf8(bytes).ok())
        .flatten()
    {
        return text.to_owned();
    }
    let mut text = String::with_capacity(bytes.len());
    for &b in bytes.iter().filter(|b| b.is_ascii()) {
        text.push(char::from(b));
    }
    text
}

fn hex_write(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
}

/// A lowercase hex digit's value (uppercase is invalid in `traceparent`).
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(nibble(two[0])? << 4 | nibble(two[1])?)
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = hex_byte(&text[2 * i..2 * i + 2])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn is_valid_new(t: &TraceContext) {
        let text = t.traceparent();
        let (trace, parent, flags) = parse_traceparent(text.as_bytes()).expect("valid");
        assert!(text.starts_with("00-"));
        assert_eq!(trace, t.trace_id);
        assert_eq!(parent, t.span_id);
        assert_eq!(flags, t.flags);
        assert_eq!(text, text.to_ascii_lowercase());
    }

    #[test]
    fn parses_the_spec_example() {
        let (trace, parent, flags) = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(trace[0], 0x4b);
        assert_eq!(trace[15], 0x36);
        assert_eq!(parent, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(flags, 1);
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad:?}");
        }
        // A later version with more fields is read for what version 00 has.
        assert!(parse_traceparent(
            b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"
        )
        .is_some());
    }

    #[test]
    fn keeps_the_clients_trace_with_a_span_of_its_own() {
        let t = TraceContext::from_headers(&headers(&[
            ("traceparent", VALID),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]));
        is_valid_new(&t);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.client_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_ne!(t.span_id, t.client_span_id.unwrap());
        assert!(t.traceparent().ends_with("-01"));
        let mut out = HeaderMap::new();
        out.insert("tracestate", HeaderValue::from_static("stale"));
        t.add_to(&mut out);
        assert_eq!(out["traceparent"], t.header);
        assert_eq!(out["tracestate"], "congo=t61rcWkgMzE");
        // Unsampled stays unsampled; unknown flag bits are not passed on.
        let t = TraceContext::from_headers(&headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe",
        )]));
        assert!(t.traceparent().ends_with("-00"));
    }

    #[test]
    fn starts_a_trace_when_absent_invalid_or_doubled() {
        for h in [
            headers(&[]),
            headers(&[("traceparent", "garbage"), ("tracestate", "a=b")]),
            headers(&[("traceparent", VALID), ("traceparent", VALID)]),
        ] {
            let t = TraceContext::from_headers(&h);
            is_valid_new(&t);
            assert_eq!(t.client_span_id, None);
            assert_eq!(t.flags, SAMPLED);
            assert_eq!(t.tracestate, None);
            assert_ne!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(t.trace_id, [0; 16]);
            assert_ne!(t.span_id, [0; 8]);
        }
        let a = TraceContext::from_headers(&HeaderMap::new());
        let b = TraceContext::from_headers(&HeaderMap::new());
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.span_id, b.span_id);
    }
}
