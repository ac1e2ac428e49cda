//! A whole answer's `choices` and `usage`, read by the [`Scanner`] on its
//! one pass over the answer instead of by serde afterwards.
//!
//! Before, the fast path scanned the answer, then handed the text of
//! `choices` to serde's derived [`Choice`](super::Choice) visitors and the
//! text of `usage` to a `serde_json` tree for [`TokenUsage::from_openai`]:
//! ~12,000 of a chat request's ~136,000 instructions (callgrind,
//! `bench/profile.sh`), for a few hundred bytes. Here both are read where
//! the scan passes them.
//!
//! Each reader decides only what it is sure of, and says so: a choice or a
//! usage it cannot read the way serde would (a sequence for a struct, a
//! duplicate field, a count that is not a plain non-negative integer,
//! `input_tokens` usage) is left to the serde way, which gives the answer
//! it always gave. Tests hold both readers to the serde way.

use super::scan::Scanner;
use crate::metering::usage::TokenUsage;

/// One choice of a whole answer, as [`Choice::complete`](super::Choice)
/// judges it: `Some(true)` when the normalisation leaves it as it is,
/// `Some(false)` when it would change it; `None` when the scan declines
/// (the serde way decides).
pub(super) fn choice(s: &mut Scanner<'_>) -> Option<bool> {
    if s.peek()? != b'{' {
        return None;
    }
    // Known fields seen (serde refuses one seen twice: a duplicate field).
    let mut seen = 0u8;
    let mut message_complete = true;
    s.object(|s, key| {
        let bit = match key {
            "index" => 1,
            "finish_reason" => 2,
            "logprobs" => 4,
            "message" => 8,
            _ => return s.value().map(drop),
        };
        first_sight(&mut seen, bit)?;
        if bit == 8 {
            message_complete = match s.peek()? {
                b'n' => s.value().map(|_| true)?,
                b'{' => message(s)?,
                _ => return None,
            };
            return Some(());
        }
        s.value().map(drop)
    })?;
    Some(seen & 7 == 7 && message_complete)
}

/// A choice's `message` (an object): whether `role`, `content` and
/// `refusal` are there and every tool call has its `type`.
fn message(s: &mut Scanner<'_>) -> Option<bool> {
    let mut seen = 0u8;
    let mut calls_complete = true;
    s.object(|s, key| {
        let bit = match key {
            "role" => 1,
            "content" => 2,
            "refusal" => 4,
            "tool_calls" => 8,
            _ => return s.value().map(drop),
        };
        first_sight(&mut seen, bit)?;
        if bit == 8 {
            match s.peek()? {
                b'n' => {
                    s.value()?;
                }
                b'[' => s.array(|s| {
                    calls_complete &= tool_call(s)?;
                    Some(())
                })?,
                _ => return None,
            }
            return Some(());
        }
        s.value().map(drop)
    })?;
    Some(seen & 7 == 7 && calls_complete)
}

/// Notes field `bit` in `seen`: `None` when it was seen before, as serde
/// refuses a duplicate field (the serde way then decides).
fn first_sight(seen: &mut u8, bit: u8) -> Option<()> {
    if *seen & bit != 0 {
        return None;
    }
    *seen |= bit;
    Some(())
}

/// A tool call (an object): whether it has its `type`.
fn tool_call(s: &mut Scanner<'_>) -> Option<bool> {
    if s.peek()? != b'{' {
        return None;
    }
    let mut kind = false;
    s.object(|s, key| {
        if key == "type" {
            if kind {
                return None;
            }
            kind = true;
        }
        s.value().map(drop)
    })?;
    Some(kind)
}

/// What the scan made of `usage`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum UsageRead {
    /// What [`TokenUsage::from_openai`] reads from its tree (`None`: not an object).
    Sure(Option<TokenUsage>),
    /// Left to the tree.
    Unsure,
}

/// The counts [`TokenUsage::from_openai`] reads, by where they go.
#[derive(Default)]
struct Counts {
    /// prompt, completion, total, cached, cache write, reasoning.
    values: [Option<u64>; 6],
    /// The fields seen, each its own bit.
    seen: u16,
    sure: bool,
}

impl Counts {
    /// Notes field `bit`; a field seen twice (the tree keeps the last) is
    /// left to the tree.
    fn first(&mut self, bit: u16) -> bool {
        if self.seen & bit != 0 {
            self.sure = false;
            return false;
        }
        self.seen |= bit;
        true
    }

    /// The count at the scanner into slot `slot`, as `Value::as_u64` reads it.
    fn read(&mut self, s: &mut Scanner<'_>, slot: usize) -> Option<()> {
        let (a, b) = s.value()?;
        match count(s.slice(a, b)) {
            Some(n) => self.values[slot] = n,
            None => self.sure = false,
        }
        Some(())
    }
}

/// A value's text as `Value::as_u64` reads it: `Some(Some(n))` for a plain
/// integer that fits, `Some(None)` for what is not a number (read as 0);
/// `None` (unsure) for a negative, fractional or exponent number, or one
/// over `u64::MAX`.
fn count(text: &str) -> Option<Option<u64>> {
    match text.as_bytes().first()? {
        b'0'..=b'9' => {
            if !text.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            text.parse().ok().map(Some)
        }
        b'-' => None,
        _ => Some(None),
    }
}

/// `usage` at the scanner, consumed, read as [`TokenUsage::from_openai`]
/// reads its tree where the scan is sure.
pub(super) fn usage(s: &mut Scanner<'_>) -> Option<UsageRead> {
    if s.peek()? != b'{' {
        s.value()?;
        return Some(UsageRead::Sure(None));
    }
    let mut c = Counts {
        sure: true,
        ..Counts::default()
    };
    let mut input_tokens = false;
    s.object(|s, key| {
        let (bit, slot) = match key {
            "prompt_tokens" => (1, Some(0)),
            "completion_tokens" => (2, Some(1)),
            "total_tokens" => (4, Some(2)),
            "prompt_tokens_details" => (8, None),
            "completion_tokens_details" => (16, None),
            "input_tokens" => {
                input_tokens = true;
                return s.value().map(drop);
            }
            _ => return s.value().map(drop),
        };
        if !c.first(bit) {
            return s.value().map(drop);
        }
        match slot {
            Some(slot) => c.read(s, slot),
            // Details that are not an object count 0.
            None if s.peek()? != b'{' => s.value().map(drop),
            None if bit == 8 => details(
                s,
                &mut c,
                &[("cached_tokens", 3), ("cache_write_tokens", 4)],
            ),
            None => details(s, &mut c, &[("reasoning_tokens", 5)]),
        }
    })?;
    // `input_tokens` usage without `prompt_tokens` is read another way.
    if !c.sure || (input_tokens && c.seen & 1 == 0) {
        return Some(UsageRead::Unsure);
    }
    let [prompt, completion, total, cached, cache_write, reasoning] =
        c.values.map(|v| v.unwrap_or(0));
    Some(UsageRead::Sure(Some(TokenUsage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: c.values[2].map_or(prompt.saturating_add(completion), |_| total),
        cached_tokens: cached,
        cache_write_tokens: cache_write,
        reasoning_tokens: reasoning,
    })))
}

/// A `…_details` object: the counts named in `wanted`, each into its slot.
fn details(s: &mut Scanner<'_>, c: &mut Counts, wanted: &[(&str, usize)]) -> Option<()> {
    let mut seen = 0u8;
    s.object(
        |s, key| match wanted.iter().position(|(name, _)| *name == key) {
            Some(i) => {
                if seen & (1 << i) != 0 {
                    c.sure = false;
                }
                seen |= 1 << i;
                c.read(s, wanted[i].1)
            }
            None => s.value().map(drop),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn scanned_usage(text: &str) -> Option<UsageRead> {
        let mut s = Scanner::new(text);
        let read = usage(&mut s)?;
        s.at_end().then_some(read)
    }

    /// Where the scan is sure, it reads what the tree reads.
    #[test]
    fn usage_as_the_tree_reads_it() {
        let cases = [
            json!({"prompt_tokens": 24, "completion_tokens": 9, "total_tokens": 33,
                "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 2, "accepted_prediction_tokens": 0}}),
            json!({"prompt_tokens": 8, "total_tokens": 8}),
            json!({"prompt_tokens": 1, "completion_tokens": 2}),
            json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": null}),
            json!({"prompt_tokens": "7", "completion_tokens": true, "total_tokens": [1]}),
            json!({"prompt_tokens_details": null, "completion_tokens_details": 3}),
            json!({"prompt_tokens_details": {"cached_tokens": 1, "cache_write_tokens": 2}}),
            json!({"prompt_tokens": 18446744073709551615u64, "completion_tokens": 1}),
            json!({"prompt_tokens": 0, "input_tokens": 5}),
            json!({}),
            json!(null),
            json!(3),
            json!("usage"),
            json!([1, 2]),
        ];
        for v in cases {
            let text = v.to_string();
            assert_eq!(
                scanned_usage(&text),
                Some(UsageRead::Sure(TokenUsage::from_openai(&v))),
                "{text}"
            );
        }
    }

    /// What the scan is not sure of is left to the tree, and every valid
    /// text is either read as the tree reads it or left to it.
    #[test]
    fn usage_the_scan_leaves_to_the_tree() {
        for text in [
            r#"{"input_tokens":5,"output_tokens":2}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{"prompt_tokens":-1}"#,
            r#"{"prompt_tokens":1.0}"#,
            r#"{"prompt_tokens":1e3}"#,
            r#"{"prompt_tokens":18446744073709551616}"#,
            r#"{"total_tokens":99999999999999999999}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":2}}"#,
            r#"{"completion_tokens_details":{},"completion_tokens_details":{}}"#,
        ] {
            assert_eq!(scanned_usage(text), Some(UsageRead::Unsure), "{text}");
        }
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let pieces = [
            "\"prompt_tokens\"",
            "\"completion_tokens\"",
            "\"total_tokens\"",
            "\"input_tokens\"",
            "\"prompt_tokens_details\"",
            "\"completion_tokens_details\"",
            "\"cached_tokens\"",
            "\"reasoning_tokens\"",
            "\"cache_write_tokens\"",
            "\"x\"",
        ];
        let values = [
            "0",
            "7",
            "-3",
            "2.5",
            "1e2",
            "null",
            "\"4\"",
            "true",
            "{}",
            "[]",
            "99999999999999999999",
        ];
        for _ in 0..3000 {
            let mut next = |n: usize| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % n as u64) as usize
            };
            let mut text = String::from("{");
            for i in 0..next(6) {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(pieces[next(pieces.len())]);
                text.push(':');
                if next(3) == 0 {
                    text.push('{');
                    for j in 0..next(3) {
                        if j > 0 {
                            text.push(',');
                        }
                        text.push_str(pieces[next(pieces.len())]);
                        text.push(':');
                        text.push_str(values[next(values.len())]);
                    }
                    text.push('}');
                } else {
                    text.push_str(values[next(values.len())]);
                }
            }
            text.push('}');
            let tree: Value = serde_json::from_str(&text).expect("valid JSON");
            match scanned_usage(&text) {
                Some(UsageRead::Sure(u)) => {
                    assert_eq!(u, TokenUsage::from_openai(&tree), "{text}")
                }
                Some(UsageRead::Unsure) => {}
                None => panic!("the scan refused valid JSON: {text}"),
            }
        }
    }

    /// The serde way: every choice read by the derived visitors, complete.
    fn serde_way(choices: &str) -> Option<bool> {
        let choices: Vec<super::super::Choice> = serde_json::from_str(choices).ok()?;
        Some(choices.iter().all(super::super::Choice::complete))
    }

    fn scan_way(choices: &str) -> Option<bool> {
        let mut s = Scanner::new(choices);
        let mut complete = true;
        s.array(|s| {
            complete &= choice(s)?;
            Some(())
        })?;
        s.at_end().then_some(complete)
    }

    /// Where the scan decides a choice, it decides as serde and
    /// `Choice::complete` do.
    #[test]
    fn choices_as_serde_reads_them() {
        let full = json!({"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": null},
            "logprobs": null, "finish_reason": "stop"});
        let mut cases = vec![json!([full]), json!([]), json!([full, full])];
        for (pointer, key) in [
            ("", "index"),
            ("", "finish_reason"),
            ("", "logprobs"),
            ("/message", "role"),
            ("/message", "content"),
            ("/message", "refusal"),
        ] {
            let mut c = full.clone();
            c.pointer_mut(pointer)
                .and_then(Value::as_object_mut)
                .expect("object")
                .remove(key);
            cases.push(json!([full, c]));
        }
        let mut c = full.clone();
        c["message"] = Value::Null;
        cases.push(json!([c]));
        let mut c = full.clone();
        c.as_object_mut().expect("object").remove("message");
        cases.push(json!([c]));
        for calls in [
            json!([{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]),
            json!([{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]),
            json!([]),
            Value::Null,
        ] {
            let mut c = full.clone();
            c["message"]["tool_calls"] = calls;
            cases.push(json!([c]));
        }
        for v in cases {
            let text = v.to_string();
            assert_eq!(scan_way(&text), serde_way(&text), "{text}");
        }
        // What the scan declines (serde decides): a message or tool call
        // that is not an object, a field seen twice, a choice that is not an object.
        for text in [
            r#"[{"index":0,"index":1,"finish_reason":null,"logprobs":null}]"#,
            r#"[{"index":0,"finish_reason":null,"logprobs":null,"message":"x"}]"#,
            r#"[{"index":0,"finish_reason":null,"logprobs":null,"message":{"role":"a","content":"","refusal":null,"tool_calls":[1]}}]"#,
            r#"[{"index":0,"finish_reason":null,"logprobs":null,"message":{"role":"a","role":"b","content":"","refusal":null}}]"#,
            r#"[[0,null,null,null]]"#,
            r#"[3]"#,
        ] {
            assert_eq!(scan_way(text), None, "{text}");
        }
    }
}
