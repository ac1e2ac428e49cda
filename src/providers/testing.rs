//! Test helpers shared by the provider modules' unit tests.

use serde_json::{Map, Value};

use super::{StreamDecoder, StreamEvent};

/// A JSON object literal as a map.
pub fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// Runs `decoder` over `pieces` of a body, then `finish`.
pub fn decode(decoder: &mut dyn StreamDecoder, pieces: &[&[u8]]) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    for p in pieces {
        decoder.feed(p, &mut out);
    }
    decoder.finish(&mut out);
    out
}

/// The chunks among `events`.
pub fn chunks(events: &[StreamEvent]) -> Vec<&Map<String, Value>> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Chunk(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// Feeds `bytes` whole, cut at every byte boundary, and byte by byte, each
/// time into a fresh decoder: all must give the same events, which are returned.
pub fn assert_split_invariant(
    new_decoder: &dyn Fn() -> Box<dyn StreamDecoder>,
    bytes: &[u8],
) -> Vec<StreamEvent> {
    let whole = decode(new_decoder().as_mut(), &[bytes]);
    for i in 0..=bytes.len() {
        let split = decode(new_decoder().as_mut(), &[&bytes[..i], &bytes[i..]]);
        assert_eq!(split, whole, "split at byte {i}");
    }
    let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(
        decode(new_decoder().as_mut(), &bytewise),
        whole,
        "byte by byte"
    );
    whole
}
