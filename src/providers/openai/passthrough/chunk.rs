//! The fast path of a stream chunk: an OpenAI chunk (one SSE event's `data`)
//! goes to the client as the provider wrote it, `model` spliced in and
//! `usage` cut out, when the decoder's normalisation would not change it.
//!
//! One pass of the [`Scanner`] over the chunk, no allocation (but for the
//! first chunk's `id`/`created`/`system_fingerprint`, when asked for, kept
//! as values for the usage chunk the relay writes at the end): the chunk is
//! checked, the spans of `model` and `usage` noted, the usage counts read off
//! the scan, and what the relay meters (a finish, content) read on the way.
//! Within a stream, the head every chunk repeats (`id` to `system_fingerprint`)
//! is scanned once ([`ChunkMemo`]).

use bytes::BufMut;
use serde_json::Value;

use super::scan::Scanner;
use super::whole::{self, UsageRead};
use crate::metering::usage::TokenUsage;
use crate::providers::openai::{decode_event, SERVICE_TIERS};
use crate::providers::{NativeEvent, StreamDecoder, StreamEvent};
use crate::wire::sse::SseParser;

/// A stream chunk passed through: what the relay meters from it, and where
/// the client's bytes differ from the provider's.
#[derive(Debug, Clone, PartialEq)]
pub struct PassedChunk {
    /// The chunk's `usage`, read, and the span of its value in the chunk
    /// (taken out of the client's chunk).
    pub usage: Option<(TokenUsage, (usize, usize))>,
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

/// What a stream's relay keeps from one chunk to the next: the bytes of the
/// last chunk up to the value of its `choices` (`id`, `object`, `created`,
/// `model`, `system_fingerprint`: the same in every chunk of a stream) and
/// the scan's state there. A chunk that begins with the very same bytes is
/// scanned from there on: the scan of those bytes would only reach the same
/// state again (about half of a chunk's scan).
#[derive(Debug, Default)]
pub struct ChunkMemo {
    /// Empty: nothing kept yet.
    head: Vec<u8>,
    /// The span of the key `choices`, right before the head's end.
    choices: (usize, usize),
    top: Top,
}

/// The state of a chunk's top-level scan before a member's value.
#[derive(Debug, Clone, Copy, Default)]
struct Top {
    /// The spans of the top-level keys so far (a repeated key: the tree
    /// keeps the last value at the first place, so the bytes would differ).
    keys: [(usize, usize); MAX_KEYS],
    count: usize,
    model: Option<(usize, usize)>,
    /// Where the last member's value ended.
    last_end: Option<usize>,
    head_spans: [Option<(usize, usize)>; 3],
}

const MAX_KEYS: usize = 16;

/// One OpenAI stream chunk (an SSE event's `data`, trimmed) passed through,
/// when the decoder's normalisation would not change it; `None`: decode it
/// the translating way.
pub fn pass_through_chunk(data: &str, want_head: bool) -> Option<PassedChunk> {
    scan_chunk(data, want_head, None)
}

/// [`pass_through_chunk`] for the next chunk of a stream: the same answer,
/// the head it shares with the chunk before it not scanned again.
pub fn pass_through_next_chunk(
    data: &str,
    want_head: bool,
    memo: &mut ChunkMemo,
) -> Option<PassedChunk> {
    scan_chunk(data, want_head, Some(memo))
}

fn scan_chunk(data: &str, want_head: bool, memo: Option<&mut ChunkMemo>) -> Option<PassedChunk> {
    // Data split over several lines: the translating path prints it on one.
    if memchr::memchr(b'\n', data.as_bytes()).is_some() {
        return None;
    }
    let mut s = Scanner::new(data);
    let resume = memo
        .as_deref()
        .filter(|m| !m.head.is_empty() && data.as_bytes().starts_with(&m.head))
        .map(|m| (m.head.len(), m.choices, m.top));
    let mut top = resume.map(|(_, _, top)| top).unwrap_or_default();
    // The state before the value of `choices`, to be kept (a chunk scanned
    // from its start): the position, the key's span, the state.
    let mut before_choices: Option<(usize, (usize, usize), Top)> = None;
    // `usage`: its span, and where the member before it ended.
    let mut usage: Option<((usize, usize), Option<usize>)> = None;
    let mut choices = 0u32;
    let mut finish = false;
    let mut content = 0u64;
    let mut member = |s: &mut Scanner<'_>, key: &str| {
        let key_start = s.offset_of(key);
        if key == "choices" && resume.is_none() && usage.is_none() {
            before_choices = Some((s.pos, (key_start, key_start + key.len()), top));
        }
        let Top {
            keys,
            count,
            model,
            last_end,
            head_spans,
        } = &mut top;
        if *count == MAX_KEYS || keys[..*count].iter().any(|&(a, b)| &data[a..b] == key) {
            return None;
        }
        keys[*count] = (key_start, key_start + key.len());
        *count += 1;
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
            "model" => *model = Some(span),
            "usage" => usage = Some((span, *last_end)),
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
        // Noted whether or not this chunk's head is wanted: a later chunk
        // may take up the scan from here.
        if let Some(i) = HEAD.iter().position(|h| *h == key) {
            head_spans[i] = Some(span);
        }
        *last_end = Some(span.1);
        Some(())
    };
    match resume {
        Some((pos, (a, b), _)) => s.object_from(pos, &data[a..b], &mut member)?,
        None => s.object(&mut member)?,
    }
    if !s.at_end() {
        return None;
    }
    if let (Some(memo), Some((pos, choices_key, state))) = (memo, before_choices) {
        memo.head.clear();
        memo.head.extend_from_slice(&data.as_bytes()[..pos]);
        memo.choices = choices_key;
        memo.top = state;
    }
    let Top {
        model, head_spans, ..
    } = top;
    let mut passed = PassedChunk {
        usage: None,
        body: None,
        finish,
        content,
        head: Vec::new(),
    };
    if let Some((span, _)) = usage {
        if let Some(t) = read_usage(&data[span.0..span.1]) {
            passed.usage = Some((t, span));
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

/// A `usage` value the scanner accepted, read as [`TokenUsage::from_openai`]
/// reads its tree, without building the tree: the whole answer's reader
/// ([`whole::usage`]) reads what it is sure of; the rest (`input_tokens`
/// usage, a count that is not a plain integer, a field given twice) goes
/// through the tree.
fn read_usage(text: &str) -> Option<TokenUsage> {
    if !text.starts_with('{') {
        // Not an object: no usage.
        return None;
    }
    match scanned_usage(text) {
        Some(usage) => Some(usage),
        None => TokenUsage::from_openai(&serde_json::from_str::<Value>(text).ok()?),
    }
}

/// The usage object read off the scan, when the scan is sure of it.
fn scanned_usage(text: &str) -> Option<TokenUsage> {
    let mut s = Scanner::new(text);
    match whole::usage(&mut s)? {
        UsageRead::Sure(usage) if s.at_end() => usage,
        _ => None,
    }
}

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
/// the relay, which reads them all, starting with the memo of the chunk head
/// this scan kept ([`FirstChunkProbe::into_memo`]): the first chunk's head is
/// scanned once, not once here and once in the relay.
pub(crate) struct FirstChunkProbe {
    sse: SseParser,
    decided: bool,
    memo: ChunkMemo,
}

impl FirstChunkProbe {
    pub(crate) fn new() -> Self {
        FirstChunkProbe {
            sse: SseParser::new(),
            decided: false,
            memo: ChunkMemo::default(),
        }
    }

    /// The head of the last chunk scanned, for the relay's first scan.
    pub(crate) fn into_memo(self) -> ChunkMemo {
        self.memo
    }

    fn event(decided: &mut bool, memo: &mut ChunkMemo, data: &str, out: &mut Vec<StreamEvent>) {
        if *decided {
            return;
        }
        let data = data.trim();
        let event = match pass_through_next_chunk(data, false, memo) {
            Some(chunk) if chunk.body.is_some() => {
                // A chunk with choices: the stream has begun, which the
                // attempt reads off a passed-through event as off a chunk
                // with choices (and no tree is built for it).
                *decided = true;
                out.push(StreamEvent::Native(NativeEvent {
                    event: String::new(),
                    data: String::new(),
                    usage: None,
                    content: true,
                    finish: chunk.finish,
                }));
                return;
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
        let (decided, memo) = (&mut self.decided, &mut self.memo);
        self.sse
            .feed_each(bytes, |ev| Self::event(decided, memo, ev.data, out));
        if let Some(e) = self.sse.take_overflow() {
            out.push(StreamEvent::Error(e));
        }
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        let (decided, memo) = (&mut self.decided, &mut self.memo);
        self.sse
            .finish_each(|ev| Self::event(decided, memo, ev.data, out));
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
    fn a_chunk_after_one_with_the_same_head_is_read_the_same() {
        let head = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","#;
        let tails = [
            r#""choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
            r#""choices":[{"index":0,"delta":{"content":" help"},"logprobs":null,"finish_reason":null}]}"#,
            r#""choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#,
            r#""choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            r#""choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}],"usage":null}"#,
            r#""choices" : [ ] , "usage" : null }"#,
            // What the scan declines after the head: a key of the head again,
            // `choices` again, an error, a broken or unfinished document.
            r#""choices":[],"model":"n"}"#,
            r#""choices":[],"choices":[]}"#,
            r#""choices":[],"error":{"message":"x"}}"#,
            r#""choices":[{"index":0,"delta":{"content":"a	b"},"finish_reason":null}]}"#,
            r#""choices":[]"#,
            r#""choices":[]} x"#,
            r#""choices":[1]}"#,
            r#""choices":null}"#,
        ];
        let mut chunks: Vec<String> = tails.iter().map(|t| format!("{head}{t}")).collect();
        // Heads that differ, or carry `usage` or `choices` elsewhere.
        chunks.extend(
            [
                r#"{"id":"d","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"y"},"finish_reason":null}]}"#,
                r#"{"choices":[{"index":0,"delta":{"content":"y"},"finish_reason":null}],"model":"m"}"#,
                r#"{"usage":null,"model":"m","choices":[{"index":0,"delta":{"content":"y"},"finish_reason":null}]}"#,
                r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"z"},"finish_reason":null}]}"#,
            ]
            .map(String::from),
        );
        // Every chunk after every other (and after itself), both wanting the head or not.
        for first in &chunks {
            for second in &chunks {
                for want_head in [false, true] {
                    let mut memo = ChunkMemo::default();
                    let a = pass_through_next_chunk(first, want_head, &mut memo);
                    assert_eq!(a, pass_through_chunk(first, want_head), "{first}");
                    let b = pass_through_next_chunk(second, want_head, &mut memo);
                    assert_eq!(
                        b,
                        pass_through_chunk(second, want_head),
                        "{second} after {first}"
                    );
                    if let Some(b) = b.and_then(|b| b.body) {
                        assert_eq!(b.to_vec(second, ALIAS), {
                            let c = pass_through_chunk(second, want_head).and_then(|c| c.body);
                            c.map(|c| c.to_vec(second, ALIAS)).unwrap_or_default()
                        });
                    }
                }
            }
        }
        // The head is kept, and taken up again.
        let mut memo = ChunkMemo::default();
        pass_through_next_chunk(&chunks[0], true, &mut memo).expect("passed");
        assert_eq!(memo.head, format!(r#"{head}"choices":"#).as_bytes());
    }

    #[test]
    fn usage_is_read_as_the_tree_reads_it() {
        let mut texts: Vec<String> = [
            "null",
            "1",
            "[1,2,3]",
            "{}",
            r#"{"prompt_tokens":24,"completion_tokens":9,"total_tokens":33,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#,
            r#"{ "prompt_tokens" : 1 , "completion_tokens" : 2 }"#,
            r#"{"input_tokens":5,"output_tokens":7,"input_tokens_details":{"cached_tokens":2}}"#,
            r#"{"prompt_tokens":null,"input_tokens":5,"output_tokens":7}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":3,"cached_tokens":4}}"#,
            r#"{"prompt_tokens_details":[1,2],"completion_tokens_details":[3]}"#,
            r#"{"prompt_tokens_details":{"cache_write_tokens":8,"reasoning_tokens":9},"completion_tokens_details":{"reasoning_tokens":5,"cached_tokens":6}}"#,
            r#"{"prompt_tokens":18446744073709551615,"completion_tokens":1}"#,
            r#"{"prompt_tokens":18446744073709551616,"completion_tokens":1}"#,
            r#"{"prompt_tok\u0065ns":3}"#,
            r#"{"extra":{"prompt_tokens":99},"prompt_tokens":1}"#,
        ]
        .map(String::from)
        .to_vec();
        // Every kind of count in every place.
        for count in [
            "7", "0", "-0", "-3", "2.0", "1e2", "null", "\"5\"", "true", "{}", "[]",
        ] {
            for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
                texts.push(format!(
                    r#"{{"prompt_tokens":10,"completion_tokens":20,"{key}":{count}}}"#
                ));
                texts.push(format!(r#"{{"{key}":{count}}}"#));
            }
            for (outer, inner) in [
                ("prompt_tokens_details", "cached_tokens"),
                ("prompt_tokens_details", "cache_write_tokens"),
                ("completion_tokens_details", "reasoning_tokens"),
            ] {
                texts.push(format!(
                    r#"{{"prompt_tokens":1,"{outer}":{{"{inner}":{count}}}}}"#
                ));
                texts.push(format!(r#"{{"prompt_tokens":1,"{outer}":{count}}}"#));
            }
        }
        for text in &texts {
            let tree = serde_json::from_str::<Value>(text).expect("JSON");
            assert_eq!(read_usage(text), TokenUsage::from_openai(&tree), "{text}");
        }
        // The plain ones are read off the scan.
        assert!(scanned_usage(&texts[4]).is_some());
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
    fn the_relay_takes_up_the_probes_scan_with_the_same_answers() {
        let first = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        let mut probe = FirstChunkProbe::new();
        let mut out = Vec::new();
        probe.feed(format!("data: {first}\n\n").as_bytes(), &mut out);
        assert_eq!(out.len(), 1);
        let mut memo = probe.into_memo();
        assert!(!memo.head.is_empty(), "the first chunk's head is kept");
        for want_head in [false, true] {
            assert_eq!(
                pass_through_next_chunk(first, want_head, &mut memo),
                pass_through_chunk(first, want_head)
            );
        }
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
        // Reported as a passed-through event with content, which the
        // attempt takes as the stream's beginning (`first_visible`).
        assert!(matches!(&out[0], StreamEvent::Native(e) if e.content && e.data.is_empty()));
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
