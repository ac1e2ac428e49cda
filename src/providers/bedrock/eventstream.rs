//! `application/vnd.amazon.eventstream`: AWS's binary framing of streamed
//! answers, parsed incrementally (a frame may be split anywhere between
//! two reads).
//!
//! One frame (message), all integers big-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | total length (the whole frame, these 4 bytes included) |
//! | 4 | headers length |
//! | 4 | CRC32 of the 8 bytes above |
//! | headers length | headers: name length (1), name, value type (1), value |
//! | total − headers − 16 | payload (here: one JSON object) |
//! | 4 | CRC32 of everything before it |
//!
//! Both CRCs are checked: a corrupt frame ends the stream with an error
//! rather than letting a damaged payload through.

/// The largest frame accepted (AWS's own limit is 16 MiB).
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320): the one eventstream uses.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for b in bytes {
        c = CRC_TABLE[((c ^ *b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

/// One decoded frame: its string headers (other header types are skipped)
/// and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An incremental frame parser.
#[derive(Debug, Default)]
pub struct FrameParser {
    buf: Vec<u8>,
    /// A framing error was seen: everything after it is ignored.
    broken: bool,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

impl FrameParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; pushes complete frames, or `Err` once for corrupt data.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Result<Frame, String>>) {
        if self.broken {
            return;
        }
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            let rest = &self.buf[start..];
            if rest.len() < 12 {
                break;
            }
            let (Some(total), Some(headers_len), Some(prelude_crc)) =
                (be32(rest, 0), be32(rest, 4), be32(rest, 8))
            else {
                break;
            };
            let (total, headers_len) = (total as usize, headers_len as usize);
            if crc32(&rest[..8]) != prelude_crc {
                self.fail(out, "a frame's prelude checksum does not match");
                return;
            }
            if !(16..=MAX_FRAME).contains(&total) || headers_len > total - 16 {
                self.fail(out, "a frame has an impossible length");
                return;
            }
            if rest.len() < total {
                break;
            }
            let frame = &rest[..total];
            if Some(crc32(&frame[..total - 4])) != be32(frame, total - 4) {
                self.fail(out, "a frame's checksum does not match");
                return;
            }
            match parse_headers(&frame[12..12 + headers_len]) {
                Some(headers) => out.push(Ok(Frame {
                    headers,
                    payload: frame[12 + headers_len..total - 4].to_vec(),
                })),
                None => {
                    self.fail(out, "a frame's headers are malformed");
                    return;
                }
            }
            start += total;
        }
        self.buf.drain(..start);
    }

    /// Bytes left over that do not make a whole frame.
    pub fn pending(&self) -> usize {
        if self.broken {
            0
        } else {
            self.buf.len()
        }
    }

    fn fail(&mut self, out: &mut Vec<Result<Frame, String>>, why: &str) {
        self.broken = true;
        self.buf.clear();
        out.push(Err(why.to_owned()));
    }
}

fn parse_headers(mut b: &[u8]) -> Option<Vec<(String, String)>> {
    let mut headers = Vec::new();
    while !b.is_empty() {
        let name_len = *b.first()? as usize;
        let name = std::str::from_utf8(b.get(1..1 + name_len)?)
            .ok()?
            .to_owned();
        b = b.get(1 + name_len..)?;
        let kind = *b.first()?;
        b = b.get(1..)?;
        // Value sizes by type: 0/1 bool (none), 2 byte, 3 short, 4 int,
        // 5 long, 6 bytes, 7 string (both u16 length-prefixed), 8 timestamp, 9 uuid.
        let skip = match kind {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                let len = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
                let value = b.get(2..2 + len)?;
                if kind == 7 {
                    headers.push((name, std::str::from_utf8(value).ok()?.to_owned()));
                }
                b = b.get(2 + len..)?;
                continue;
            }
            _ => return None,
        };
        b = b.get(skip..)?;
    }
    Some(headers)
}

/// Encodes one frame with string headers (for tests and mocks).
#[cfg(test)]
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (k, v) in headers {
        h.push(k.len() as u8);
        h.extend_from_slice(k.as_bytes());
        h.push(7);
        h.extend_from_slice(&(v.len() as u16).to_be_bytes());
        h.extend_from_slice(v.as_bytes());
    }
    let total = 16 + h.len() + payload.len();
    let mut f = Vec::with_capacity(total);
    f.extend_from_slice(&(total as u32).to_be_bytes());
    f.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let c = crc32(&f);
    f.extend_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(payload);
    let c = crc32(&f);
    f.extend_from_slice(&c.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_and_corruption() {
        let f = encode(
            &[(":event-type", "messageStart")],
            br#"{"role":"assistant"}"#,
        );
        let mut p = FrameParser::new();
        let mut out = Vec::new();
        p.feed(&f[..5], &mut out);
        assert!(out.is_empty());
        p.feed(&f[5..], &mut out);
        let frame = out.pop().unwrap().unwrap();
        assert_eq!(frame.header(":event-type"), Some("messageStart"));
        assert_eq!(frame.payload, br#"{"role":"assistant"}"#);
        assert_eq!(p.pending(), 0);

        let mut bad = f.clone();
        let n = bad.len();
        bad[n - 6] ^= 1;
        let mut p = FrameParser::new();
        p.feed(&bad, &mut out);
        assert!(out.pop().unwrap().is_err());
        p.feed(&f, &mut out);
        assert!(out.is_empty(), "nothing after a broken frame");
    }
}
