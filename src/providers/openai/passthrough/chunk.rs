//! The fast path of a stream chunk: an OpenAI chunk (one SSE event's `data`)
//! goes to the client as the provider wrote it, `model` spliced in and
//! `usage` cut out, when the decoder's normalisation would not change it.
//!
//! One pass of the [`Scanner`] over the chunk, no allocation (but for the
//! first chunk's `id`/`created`/`system_fingerprint` and the usage chunk's
//! `usage`, kept as values for the usage chunk the relay writes at the end):
//! the chunk is checked, the spans of `model` and `usage` noted, and what the
//! relay meters (a finish, content) read on the way.

use bytes::BufMut;
use serde_json::{Map, Value};

use super::scan::Scanner;
use crate::metering::usage::TokenUsage;
use crate::providers::openai::{decode_event, SERVICE_TIERS};
use crate::providers::{StreamDecoder, StreamEvent};
use crate::wire::sse::SseParser;

/// A stream chunk passed through: what the relay meters from it, and where
/// the client's bytes differ from the provider's.
#[derive(Debug, Clone, PartialEq)]
pub struct PassedChunk {
    /// The chunk's `usage`, read (and taken out of the client's chunk).
    pub usage: Option<(TokenUsage, Value)>,
    /// The chunk has choices: the client gets it, [`Splice`]d; without
    /// choices the client gets nothing.
    pub body: Option<Splice>,
    /// A choice carries a `finish_reason`.
    pub finish: bool,
    /// Choices whose delta carries content (what a disconnect bills).
    pub content: u64,
    /// `id`, `created` and `system_fingerprint`, when asked for.
    pub head: Vec<(&'static str, Value)>,
}

/// The edits that make the client's chunk of the provider's: the span of
/// `model`'s value (replaced by the alias) and the span cut out with `usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Splice {
    model: (usize, usize),
    cut: Option<(usize, usize)>,
}

impl Splice {
    /// Appends the client's chunk: `data` with the edits, `alias_json` (the
    /// alias as a JSON string) in place of `model`'s value.
    pub fn write(&self, data: &str, alias_json: &[u8], out: &mut impl BufMut) {
        let data = data.as_bytes();
        let model = (self.model.0, self.model.1, alias_json);
        let mut edits = [Some(model), self.cut.map(|(a, b)| (a, b, &b""[..]))];
        if let [Some(a), Some(b)] = &edits {
            if b.0 < a.0 {
                edits.swap(0, 1);
            }
        }
        let mut at = 0;
        for (start, end, with) in edits.into_iter().flatten() {
            out.put_slice(&data[at..start]);
            out.put_slice(with);
            at = end;
        }
        out.put_slice(&data[at..]);
    }

    /// The client's chunk as a `Vec`.
    pub fn to_vec(&self, data: &str, alias: &str) -> Vec<u8> {
        let alias = serde_json::to_vec(alias).unwrap_or_default();
        let mut out = Vec::with_capacity(data.len() + alias.len());
        self.write(data, &alias, &mut out);
        out
    }
}

/// What the decoder and the relay look at in a choice (or its delta).
#[derive(Default)]
struct ChoiceSeen {
    index: bool,
    finish_reason: bool,
    delta: bool,
    /// `finish_reason` is not `null`.
    finish: bool,
    /// `content`, `text`, `tool_calls` or `reasoning_content` of the delta
    /// (or of the choice, without a delta) is neither `null` nor `""`.
    content: bool,
    /// The same, on the choice itself (legacy completions chunks).
    own_content: bool,
}

/// The fields that carry content, each its own bit (serde refused a field
/// seen twice).
fn content_bit(key: &str) -> Option<u8> {
    Some(match key {
        "content" => 8,
        "text" => 16,
        "tool_calls" => 32,
        "reasoning_content" => 64,
        _ => return None,
    })
}

fn carries_content(raw: &str) -> bool {
    raw != "null" && raw != "\"\""
}

/// One OpenAI stream chunk (an SSE event's `data`, trimmed) passed through,
/// when the decoder's normalisation would not change it; `None`: decode it
/// the translating way.
pub fn pass_through_chunk(data: &str, want_head: bool) -> Option<PassedChunk> {
    // Data split over several lines: the translating path prints it on one.
    if memchr::memchr(b'\n', data.as_bytes()).is_some() {
        return None;
    }
    let mut s = Scanner::new(data);
    // The top-level keys so far (a repeated key: the tree keeps the last
    // value at the first place, so the bytes would differ).
    let mut keys: [&str; 16] = [""; 16];
    let mut count = 0;
    let mut model = None;
    // `usage`: its span, and where the member before it ended.
    let mut usage: Option<((usize, usize), Option<usize>)> = None;
    let mut last_end = None;
    let mut choices = 0u32;
    let mut finish = false;
    let mut content = 0u64;
    let mut head_spans: [Option<(usize, usize)>; 3] = [None; 3];
    s.object(|s, key| {
        if count == keys.len() || keys[..count].contains(&key) {
            return None;
        }
        keys[count] = key;
        count += 1;
        let span = if key == "choices" && s.peek()? == b'[' {
            let start = s.pos;
            s.array(|s| {
                let c = choice(s)?;
                choices += 1;
                finish |= c.finish;
                content += u64::from(c.content);
                Some(())
            })?;
            (start, s.pos)
        } else {
            s.value()?
        };
        let text = s.slice(span.0, span.1);
        match key {
            "model" => model = Some(span),
            "usage" => usage = Some((span, last_end)),
            "error" if text != "null" => return None,
            "system_fingerprint" if text == "null" => return None,
            "service_tier" if text.starts_with('"') => {
                let tier = text.get(1..text.len() - 1)?;
                if !SERVICE_TIERS.contains(&tier) {
                    return None;
                }
            }
            // Groq's usage inside `x_groq`: the decoder edits it.
            "x_groq" => return None,
            _ => {}
        }
        if want_head {
            if let Some(i) = HEAD.iter().position(|h| *h == key) {
                head_spans[i] = Some(span);
            }
        }
        last_end = Some(span.1);
        Some(())
    })?;
    if !s.at_end() {
        return None;
    }
    let mut passed = PassedChunk {
        usage: None,
        body: None,
        finish,
        content,
        head: Vec::new(),
    };
    if let Some(((start, end), _)) = usage {
        let value: Value = serde_json::from_str(&data[start..end]).ok()?;
        if let Some(t) = TokenUsage::from_openai(&value) {
            passed.usage = Some((t, value));
        }
    }
    if choices == 0 {
        // The client gets nothing of this chunk: what it says of a finish
        // or content is not the relay's concern.
        passed.finish = false;
        passed.content = 0;
        return Some(passed);
    }
    if want_head {
        for (name, span) in HEAD.iter().zip(head_spans) {
            if let Some((a, b)) = span {
                passed
                    .head
                    .push((name, serde_json::from_str(&data[a..b]).ok()?));
            }
        }
    }
    let model = model?;
    let cut = match usage {
        // From the end of the previous value: `,"usage":…`.
        Some(((_, end), Some(previous_end))) => Some((previous_end, end)),
        // The first member: from after `{` through the comma after it.
        Some(((_, end), None)) => {
            let open = data.find('{')? + 1;
            let after = data[end..].trim_start();
            let cut_end = match after.strip_prefix(',') {
                Some(rest) => data.len() - rest.len(),
                None => end,
            };
            Some((open, cut_end))
        }
        None => None,
    };
    if let Some((a, b)) = cut {
        // The cut and `model` may not overlap (they cannot: two members).
        if a < model.1 && model.0 < b {
            return None;
        }
    }
    passed.body = Some(Splice { model, cut });
    Some(passed)
}

const HEAD: [&str; 3] = ["id", "created", "system_fingerprint"];

/// One choice of a chunk, checked as the decoder would normalise it: `None`
/// when it would (no `index`, no `finish_reason`, a tool call without its
/// `index`, or with an `id` but no `type`), or when it is not an object.
fn choice(s: &mut Scanner<'_>) -> Option<ChoiceSeen> {
    let mut c = ChoiceSeen::default();
    // Known fields seen twice: serde refused them (a duplicate field).
    let mut seen = 0u8;
    s.object(|s, key| {
        let bit = match key {
            "index" => 1,
            "finish_reason" => 2,
            "delta" => 4,
            _ => match content_bit(key) {
                Some(bit) => bit,
                None => return s.value().map(drop),
            },
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        match key {
            "index" => {
                s.value()?;
                c.index = true;
            }
            "finish_reason" => {
                let (a, b) = s.value()?;
                c.finish_reason = true;
                c.finish = s.slice(a, b) != "null";
            }
            "delta" => {
                c.delta = true;
                c.content = delta(s)?;
            }
            _ => {
                let (a, b) = s.value()?;
                c.own_content |= carries_content(s.slice(a, b));
            }
        }
        Some(())
    })?;
    if !c.index || !c.finish_reason {
        return None;
    }
    if !c.delta {
        c.content = c.own_content;
    }
    Some(c)
}

/// A choice's `delta` (an object): whether it carries content; `None` when
/// a tool call in it would be normalised.
fn delta(s: &mut Scanner<'_>) -> Option<bool> {
    let mut content = false;
    let mut seen = 0u8;
    s.object(|s, key| {
        let Some(bit) = content_bit(key) else {
            return s.value().map(drop);
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        let (a, b) = if key == "tool_calls" && s.peek()? == b'[' {
            let start = s.pos;
            s.array(tool_call)?;
            (start, s.pos)
        } else {
            s.value()?
        };
        content |= carries_content(s.slice(a, b));
        Some(())
    })?;
    Some(content)
}

/// A streamed tool call: `index` there, and `type` wherever `id` is.
fn tool_call(s: &mut Scanner<'_>) -> Option<()> {
    let (mut index, mut id, mut kind) = (false, false, false);
    s.object(|s, key| {
        let flag = match key {
            "index" => &mut index,
            "id" => &mut id,
            "type" => &mut kind,
            _ => return s.value().map(drop),
        };
        if *flag {
            return None;
        }
        *flag = true;
        s.value().map(drop)
    })?;
    (index && (!id || kind)).then_some(())
}

/// The attempt's look at a passed-through stream before it commits (is its
/// first event content, an error or the end?), told by the same scan
/// instead of a decoded tree per event; what the scan declines is decoded.
/// Only the first event that decides is reported: the bytes are replayed to
/// the relay, which reads them all.
pub(crate) struct FirstChunkProbe {
    sse: SseParser,
    decided: bool,
}

impl FirstChunkProbe {
    pub(crate) fn new() -> Self {
        FirstChunkProbe {
            sse: SseParser::new(),
            decided: false,
        }
    }

    fn event(decided: &mut bool, data: &str, out: &mut Vec<StreamEvent>) {
        if *decided {
            return;
        }
        let data = data.trim();
        let event = match pass_through_chunk(data, false) {
            Some(chunk) if chunk.body.is_some() => {
                // Content: what the attempt looks for is a chunk with choices.
                let mut visible = Map::new();
                visible.insert("choices".into(), Value::Array(vec![Value::Null]));
                StreamEvent::Chunk(visible)
            }
            // No choices: the client gets nothing of it.
            Some(_) => return,
            None => decode_event(data),
        };
        *decided = match &event {
            StreamEvent::Chunk(c) => c
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty()),
            _ => true,
        };
        out.push(event);
    }
}

impl StreamDecoder for FirstChunkProbe {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) {
        let decided = &mut self.decided;
        self.sse
            .feed_each(bytes, |ev| Self::event(decided, ev.data, out));
        if let Some(e) = self.sse.take_overflow() {
            out.push(StreamEvent::Error(e));
        }
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        let decided = &mut self.decided;
        self.sse
            .finish_each(|ev| Self::event(decided, ev.data, out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIAS: &str = "my-alias";

    /// The relay's translating way: decoded, `usage` out, `model` in, printed.
    fn decoded(data: &str) -> Option<Vec<u8>> {
        match decode_event(data) {
            StreamEvent::Chunk(mut chunk) => {
                chunk.remove("usage");
                let has_choices = chunk
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(|c| !c.is_empty());
                chunk.insert("model".into(), Value::String(ALIAS.into()));
                has_choices.then(|| serde_json::to_vec(&chunk).expect("prints"))
            }
            _ => None,
        }
    }

    #[test]
    fn what_passes_is_what_the_decoder_would_write() {
        let chunks = [
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"h\u00e9\"llo\n"},"finish_reason":null}],"usage":null}"#,
            r#"{ "model" : "m" , "usage" : null , "choices" : [ { "index" : 0 , "delta" : { "content" : "x" } , "finish_reason" : "stop" } ] }"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"model":"m","choices":[{"index":0,"text":"x","finish_reason":null}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop","extra":{"n\u0061me":[1.5e3,-0,true]}}]}"#,
            r#"{"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        ];
        for data in chunks {
            let c = pass_through_chunk(data, true).unwrap_or_else(|| panic!("fast: {data}"));
            let fast = c.body.map(|b| b.to_vec(data, ALIAS));
            let slow = decoded(data);
            match (&fast, &slow) {
                (Some(f), Some(s)) => {
                    let f: Value = serde_json::from_slice(f).expect("JSON");
                    let s: Value = serde_json::from_slice(s).expect("JSON");
                    assert_eq!(f, s, "{data}");
                }
                (None, None) => {}
                _ => panic!("{data}: {fast:?} against {slow:?}"),
            }
        }
        // Compact chunks: the very same bytes.
        let data = chunks[0];
        let fast = pass_through_chunk(data, false).and_then(|c| c.body);
        assert_eq!(fast.map(|b| b.to_vec(data, ALIAS)), decoded(data));
    }

    #[test]
    fn what_the_decoder_would_change_or_refuse_is_declined() {
        for data in [
            // Duplicates, at the top and in a choice or a delta.
            r#"{"model":"m","model":"n","choices":[]}"#,
            r#"{"model":"m","choices":[{"index":0,"index":1,"delta":{},"finish_reason":null}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"a","content":"b"},"finish_reason":null}]}"#,
            // Not what a chunk is.
            r#"{"model":"m","choices":[1]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":null,"finish_reason":null}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[1]},"finish_reason":null}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{},"finish_reason":null}]"#,
            r#"{"model":"m","choices":[]} x"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":"a	b"},"finish_reason":null}]}"#,
            // An escaped key (serde would decode it), Groq's `x_groq`.
            r#"{"mod\u0065l":"m","choices":[]}"#,
            r#"{"model":"m","x_groq":{},"choices":[]}"#,
            // No model beside choices.
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":null}]}"#,
            // A service tier outside OpenAI's enum.
            r#"{"model":"m","service_tier":"on_demand","choices":[]}"#,
        ] {
            assert!(pass_through_chunk(data, false).is_none(), "{data}");
        }
    }

    #[test]
    fn what_the_relay_meters() {
        let c = pass_through_chunk(
            r#"{"model":"m","choices":[{"index":0,"delta":{"content":""},"finish_reason":null},{"index":1,"delta":{"tool_calls":[]},"finish_reason":"tool_calls"}]}"#,
            false,
        )
        .expect("fast");
        assert_eq!((c.content, c.finish), (1, true));
        let c = pass_through_chunk(
            r#"{"model":"m","choices":[{"index":0,"text":"x","finish_reason":null}]}"#,
            false,
        )
        .expect("fast");
        assert_eq!((c.content, c.finish), (1, false));
    }

    #[test]
    fn the_probe_reports_the_first_event_that_decides() {
        let mut probe = FirstChunkProbe::new();
        let mut out = Vec::new();
        let body = b"data: {\"model\":\"m\",\"choices\":[],\"usage\":null}\n\ndata: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}\n\ndata: [DONE]\n\n";
        for piece in body.chunks(5) {
            probe.feed(piece, &mut out);
        }
        probe.finish(&mut out);
        assert_eq!(out.len(), 1, "the content chunk, nothing after it");
        assert!(
            matches!(&out[0], StreamEvent::Chunk(c) if c["choices"].as_array().is_some_and(|a| !a.is_empty()))
        );
        for (body, error) in [
            (
                &b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n"[..],
                true,
            ),
            (b"data: [DONE]\n\n", false),
        ] {
            let mut probe = FirstChunkProbe::new();
            let mut out = Vec::new();
            probe.feed(body, &mut out);
            assert_eq!(out.len(), 1);
            match &out[0] {
                StreamEvent::Error(_) => assert!(error),
                StreamEvent::Done => assert!(!error),
                _ => panic!("{body:?}"),
            }
        }
    }
}
