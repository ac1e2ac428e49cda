//! Test helpers for the front doors: run an encoder over decoded events as
//! the relay does, and parse what it wrote.

use bytes::BytesMut;
use serde_json::Value;

use super::StreamEncoder;
use crate::metering::usage::TokenUsage;
use crate::providers::StreamEvent;
use crate::wire::sse::{SseEvent, SseParser};

/// What the relay would write for `events` (the output of a provider's
/// decoder): chunks with choices go to the encoder (usage taken out first),
/// native events as they are, then the end.
pub fn encode(encoder: &mut dyn StreamEncoder, events: Vec<StreamEvent>) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut usage: Option<Value> = None;
    for ev in events {
        match ev {
            StreamEvent::Chunk(mut c) => {
                if let Some(u) = c.remove("usage") {
                    if TokenUsage::from_openai(&u).is_some() {
                        usage = Some(u);
                    }
                }
                if c.get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(|c| !c.is_empty())
                {
                    encoder.chunk(&c, &mut out);
                }
            }
            StreamEvent::Native(n) => encoder.native(&n, &mut out),
            StreamEvent::Done => {
                encoder.complete(usage.as_ref(), &mut out);
                return out.to_vec();
            }
            StreamEvent::Error(e) => {
                encoder.fail(&e, &mut out);
                return out.to_vec();
            }
        }
    }
    encoder.complete(usage.as_ref(), &mut out);
    out.to_vec()
}

/// The SSE events of `bytes`, as (name, JSON payload).
pub fn events(bytes: &[u8]) -> Vec<(String, Value)> {
    let mut p = SseParser::new();
    let mut out: Vec<SseEvent> = Vec::new();
    p.feed(bytes, &mut out);
    p.finish(&mut out);
    out.into_iter()
        .map(|e| {
            let v: Value = serde_json::from_str(&e.data).expect("event data is JSON");
            (e.event.unwrap_or_default(), v)
        })
        .collect()
}

/// Feeds `bytes` through a fresh decoder and encoder whole, cut at every
/// byte boundary, and byte by byte: the client must get the same bytes each
/// time, which are returned.
pub fn assert_split_invariant(
    new_decoder: &dyn Fn() -> Box<dyn crate::providers::StreamDecoder>,
    new_encoder: &dyn Fn() -> Box<dyn StreamEncoder>,
    bytes: &[u8],
) -> Vec<u8> {
    use crate::providers::testing::decode;
    let run = |pieces: &[&[u8]]| {
        let events = decode(new_decoder().as_mut(), pieces);
        encode(new_encoder().as_mut(), events)
    };
    let whole = run(&[bytes]);
    for i in 0..=bytes.len() {
        assert_eq!(run(&[&bytes[..i], &bytes[i..]]), whole, "split at byte {i}");
    }
    let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(run(&bytewise), whole, "byte by byte");
    whole
}

/// A `Call` for tests.
pub fn call(endpoint: crate::providers::Endpoint) -> crate::providers::Call<'static> {
    crate::providers::Call {
        endpoint,
        model: "m",
        stream: false,
        now_secs: 1_700_000_000,
        request_id: "req_t1",
        drop_unsupported_params: false,
    }
}
