//! The fast path of a whole OpenAI-format answer: when the provider speaks
//! the client's dialect, the answer goes back as the provider wrote it, byte
//! for byte, with only the value of `model` replaced by the client's alias.
//!
//! [`translate_openai`](super::translate_openai) parses the answer into a
//! `serde_json` tree, normalises it and prints it again: for an embeddings
//! answer that is thousands of floats parsed to `f64` and printed back. Here
//! the top-level object is scanned once by the [`Scanner`] (the JSON is
//! validated, nothing is converted or built; an escaped key falls back to
//! serde's [`RawValue`]s), `usage` alone is parsed, and the new `model` is
//! written over the old in the answer's own buffer when nothing else holds
//! it (only the bytes after `model` move), else the answer is copied once
//! around it ([`PassedThrough::answer`]). Stream chunks take the same way,
//! one by one ([`chunk`]: [`pass_through_chunk`]).
//!
//! The fast path answers only when the translating path would not change
//! anything but `model` (and the whitespace it drops): no `error` object, a
//! `model` field, no duplicate keys, nothing the normalisation fills in or
//! takes out (`index`, `finish_reason`, `logprobs`, a message's `role`,
//! `content`, `refusal`, a tool call's `type`, a null `system_fingerprint`,
//! a `service_tier` outside OpenAI's enum), and for embeddings the encoding
//! the client asked for (float arrays become base64 only on the translating
//! path). Anything else returns `None`, and the caller translates.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

mod chunk;
mod scan;
mod whole;

pub(crate) use chunk::FirstChunkProbe;
pub use chunk::{pass_through_chunk, pass_through_next_chunk, ChunkMemo, PassedChunk, Splice};
use scan::Scanner;
use whole::UsageRead;

use super::SERVICE_TIERS;
use crate::metering::usage::TokenUsage;
use crate::providers::Endpoint;

/// An answer that passes through: where its `model` is, and the usage it
/// reports.
#[derive(Debug, Clone, PartialEq)]
pub struct PassedThrough {
    /// The bytes of the provider's `model` value (its JSON text) in the answer.
    pub model: Range<usize>,
    /// `usage` as [`TokenUsage::from_openai`] reads it (`None`: absent or not an object).
    pub usage: Option<TokenUsage>,
}

impl PassedThrough {
    /// What the client gets: `body`, the answer that was scanned, with
    /// `model` set to `alias` (a JSON string). When nothing else holds
    /// `body`'s buffer (an answer read in several pieces is gathered into
    /// one of its own) the alias is written in it and only the bytes after
    /// `model` move (for embeddings, `model` comes after the floats);
    /// otherwise the answer is copied once around it.
    pub fn answer(&self, body: Bytes, alias: &str) -> Bytes {
        let Range { start, end } = self.model.clone();
        if start > end || end > body.len() {
            debug_assert!(false, "a model span outside the answer");
            return body;
        }
        let mut quoted = Vec::with_capacity(alias.len() + 2);
        if serde_json::to_writer(&mut quoted, alias).is_err() {
            return body;
        }
        match body.try_into_mut() {
            Ok(mut own) => {
                let len = own.len();
                let new_len = len - (end - start) + quoted.len();
                if new_len > len {
                    own.resize(new_len, 0);
                }
                own.copy_within(end..len, start + quoted.len());
                own.truncate(new_len);
                own[start..start + quoted.len()].copy_from_slice(&quoted);
                own.freeze()
            }
            Err(shared) => {
                let mut out = BytesMut::with_capacity(shared.len() - (end - start) + quoted.len());
                out.extend_from_slice(&shared[..start]);
                out.extend_from_slice(&quoted);
                out.extend_from_slice(&shared[end..]);
                out.freeze()
            }
        }
    }
}

/// Whether `body` passes through (with `model` set to the client's alias,
/// [`PassedThrough::answer`]): nothing else would change.
pub fn pass_through(
    endpoint: Endpoint,
    body: &[u8],
    base64_embeddings: bool,
) -> Option<PassedThrough> {
    if !matches!(
        endpoint,
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings
    ) {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    let checked_choices = endpoint != Endpoint::Embeddings;
    let (fields, read) = match members(text, checked_choices) {
        Some((fields, read)) => (fields, Some(read)),
        // What the scanner leaves to serde (an escaped key, a number that
        // may be out of an f64's range): the answer must be one the
        // translation reads (serde's raw values do not check numbers).
        None => {
            serde_json::from_str::<Value>(text).ok()?;
            let Fields(fields) = serde_json::from_str(text).ok()?;
            let fields = fields.into_iter().map(|(k, v)| (k, v.get())).collect();
            (fields, None)
        }
    };
    // Read on the scan's way, or else the serde way.
    if let Some(Read {
        complete: false, ..
    }) = read
    {
        return None;
    }
    let mut model = None;
    let mut usage = None;
    for (i, (key, text)) in fields.iter().enumerate() {
        // A repeated key: the tree keeps the last value at the first place.
        if fields[..i].iter().any(|(k, _)| k == key) {
            return None;
        }
        let text = *text;
        match key.as_ref() {
            "model" => model = Some(text),
            "usage" => {
                usage = match read.map(|r| r.usage) {
                    Some(UsageRead::Sure(usage)) => usage,
                    _ => TokenUsage::from_openai(&serde_json::from_str::<Value>(text).ok()?),
                }
            }
            "error" if text != "null" => return None,
            "system_fingerprint" if text == "null" => return None,
            "service_tier" if text.starts_with('"') => {
                let tier = text.get(1..text.len() - 1)?;
                if !SERVICE_TIERS.contains(&tier) {
                    return None;
                }
            }
            "choices" if checked_choices && read.is_none() => {
                let choices: Vec<Choice> = serde_json::from_str(text).ok()?;
                if !choices.iter().all(Choice::complete) {
                    return None;
                }
            }
            "data" if endpoint == Endpoint::Embeddings && base64_embeddings => {
                let items: Vec<Embedding> = serde_json::from_str(text).ok()?;
                if items.iter().any(|e| e.embedding.array) {
                    return None;
                }
            }
            _ => {}
        }
    }
    // Where the tree would add `model` (at the end) the bytes would differ.
    let model = model?;
    let start = (model.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start + model.len();
    if body.get(start..end) != Some(model.as_bytes()) {
        return None;
    }
    Some(PassedThrough {
        model: start..end,
        usage,
    })
}

/// The top-level members in order: each key and its value's text.
type Members<'a> = Vec<(Cow<'a, str>, &'a str)>;

/// What the scan read on its way beside the members.
#[derive(Clone, Copy)]
struct Read {
    /// Every choice is one the normalisation leaves as it is (checked when asked).
    complete: bool,
    /// `usage` (the last one: a repeated key is declined anyway).
    usage: UsageRead,
}

/// The top-level members of `text` in order, values unparsed but checked,
/// by the [`Scanner`], and `usage` and (with `check_choices`) `choices`
/// read on the way ([`whole`]); `None`: not a JSON object, or one the
/// scanner leaves to serde.
fn members(text: &str, check_choices: bool) -> Option<(Members<'_>, Read)> {
    let mut s = Scanner::new(text);
    let mut out = Vec::with_capacity(8);
    let mut read = Read {
        complete: true,
        usage: UsageRead::Sure(None),
    };
    s.object(|s, key| {
        s.ws();
        let start = s.pos;
        match key {
            "choices" if check_choices => {
                if s.peek()? != b'[' {
                    return None;
                }
                s.array(|s| {
                    read.complete &= whole::choice(s)?;
                    Some(())
                })?;
            }
            "usage" => read.usage = whole::usage(s)?,
            _ => {
                s.value()?;
            }
        }
        out.push((Cow::Borrowed(key), s.slice(start, s.pos)));
        Some(())
    })?;
    s.at_end().then_some((out, read))
}

/// The top-level members in order, values unparsed (serde's way, escaped
/// keys decoded).
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(8);
                while let Some(Key(k)) = map.next_key()? {
                    out.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(Members)
    }
}

/// A key, borrowed from the input unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// A member that is there, whatever its value (`null` included).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(Present(true))
    }
}

/// What the normalisation of a choice looks at.
#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: Present,
    #[serde(default)]
    finish_reason: Present,
    #[serde(default)]
    logprobs: Present,
    #[serde(default)]
    message: Option<Message>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: Present,
    #[serde(default)]
    content: Present,
    #[serde(default)]
    refusal: Present,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Deserialize)]
struct ToolCall {
    #[serde(default, rename = "type")]
    kind: Present,
}

impl Choice {
    /// Whether the normalisation would leave this choice as it is.
    fn complete(&self) -> bool {
        self.index.0
            && self.finish_reason.0
            && self.logprobs.0
            && self.message.as_ref().is_none_or(|m| {
                m.role.0
                    && m.content.0
                    && m.refusal.0
                    && m.tool_calls
                        .as_ref()
                        .is_none_or(|calls| calls.iter().all(|c| c.kind.0))
            })
    }
}

/// An embedding item: whether its vector is a float array.
#[derive(Deserialize)]
struct Embedding {
    #[serde(default)]
    embedding: ArrayOrNot,
}

#[derive(Default)]
struct ArrayOrNot {
    array: bool,
}

impl<'de> Deserialize<'de> for ArrayOrNot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: &'de RawValue = Deserialize::deserialize(d)?;
        Ok(ArrayOrNot {
            array: raw.get().starts_with('['),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::openai::translate_openai;
    use serde_json::json;

    const ALIAS: &str = "my-alias";

    /// The fast path as the gateway takes it: the scan, then the answer
    /// (copied: the bytes here are the test's).
    struct Fast {
        body: Vec<u8>,
        usage: Option<TokenUsage>,
    }

    fn fast(endpoint: Endpoint, body: &[u8], alias: &str, base64: bool) -> Option<Fast> {
        let p = pass_through(endpoint, body, base64)?;
        Some(Fast {
            body: p.answer(Bytes::copy_from_slice(body), alias).to_vec(),
            usage: p.usage,
        })
    }

    /// The alias written in the answer's own buffer, longer, shorter or as
    /// long as the provider's `model`, gives the bytes of the copy; a
    /// buffer something else holds is copied and left as it was.
    #[test]
    fn the_alias_in_place_and_in_a_copy_agree() {
        let body = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-0.25]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":3,"total_tokens":3}}"#;
        let p = pass_through(Endpoint::Embeddings, body, false).expect("fast");
        for alias in [
            "e",
            "text-embedding-3-smal",
            "text-embedding-3-sma",
            "a-much-longer-alias-than-the-model\"quoted\"",
        ] {
            let copy = p.answer(Bytes::copy_from_slice(body), alias);
            let text = String::from_utf8_lossy(body).replace(
                "\"text-embedding-3-small\"",
                &serde_json::to_string(alias).unwrap(),
            );
            assert_eq!(copy, text.as_bytes(), "{alias}");
            // Gathered from pieces: a buffer of its own, with room to spare.
            let mut own = Vec::with_capacity(body.len() + 64);
            own.extend_from_slice(body);
            let at = own.as_ptr();
            let in_place = p.answer(Bytes::from(own), alias);
            assert_eq!(in_place, copy, "{alias}");
            assert_eq!(in_place.as_ptr(), at, "{alias}: written in place");
            // Held elsewhere too: copied, the other holder's bytes unchanged.
            let held = Bytes::copy_from_slice(body);
            let other = held.clone();
            assert_eq!(p.answer(held, alias), copy, "{alias}");
            assert_eq!(other, &body[..]);
        }
    }

    /// The translating path, as the gateway runs it: the normalised tree,
    /// `model` = the alias, printed; and the usage read from the tree.
    fn translated(endpoint: Endpoint, body: &[u8]) -> (Vec<u8>, Option<TokenUsage>) {
        let mut o = translate_openai(endpoint, body).expect("translates");
        let usage = o.get("usage").and_then(TokenUsage::from_openai);
        o.insert("model".into(), Value::String(ALIAS.into()));
        (serde_json::to_vec(&o).expect("prints"), usage)
    }

    /// A recorded answer as providers put it on the wire: compact JSON.
    fn compact(body: &[u8]) -> Vec<u8> {
        let v: Value = serde_json::from_slice(body).expect("fixture is JSON");
        serde_json::to_vec(&v).expect("prints")
    }

    /// A `chat.completion` assembled from a recorded OpenAI stream (deltas
    /// concatenated, usage from the usage chunk): no recorded non-streaming
    /// chat answer exists (tests/fixtures/SOURCES.md).
    fn chat_from_stream(sse: &str) -> Vec<u8> {
        let mut head = serde_json::Map::new();
        let mut content = String::new();
        let mut calls: Vec<Value> = Vec::new();
        let mut finish = Value::Null;
        let mut usage = Value::Null;
        for line in sse.lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if head.is_empty() {
                for k in [
                    "id",
                    "created",
                    "model",
                    "service_tier",
                    "system_fingerprint",
                ] {
                    head.insert(k.into(), chunk[k].clone());
                }
            }
            if !chunk["usage"].is_null() {
                usage = chunk["usage"].clone();
            }
            let Some(choice) = chunk["choices"].get(0) else {
                continue;
            };
            if !choice["finish_reason"].is_null() {
                finish = choice["finish_reason"].clone();
            }
            if let Some(t) = choice["delta"]["content"].as_str() {
                content.push_str(t);
            }
            for call in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let i = call["index"].as_u64().unwrap_or(0) as usize;
                if calls.len() <= i {
                    calls.push(json!({"id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}));
                }
                let args = calls[i]["function"]["arguments"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
                    + call["function"]["arguments"].as_str().unwrap_or("");
                calls[i]["function"]["arguments"] = Value::String(args);
            }
        }
        let mut message = json!({"role": "assistant", "content": null, "refusal": null});
        if calls.is_empty() {
            message["content"] = Value::String(content);
        } else {
            message["tool_calls"] = Value::Array(calls);
        }
        let answer = json!({
            "id": head["id"], "object": "chat.completion", "created": head["created"],
            "model": head["model"],
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage, "service_tier": head["service_tier"],
            "system_fingerprint": head["system_fingerprint"],
        });
        serde_json::to_vec_pretty(&answer).expect("prints")
    }

    fn recorded() -> Vec<(&'static str, Endpoint, Vec<u8>)> {
        vec![
            (
                "openai/embeddings.float.json",
                Endpoint::Embeddings,
                include_bytes!("../../../../tests/fixtures/openai/embeddings.float.json").to_vec(),
            ),
            (
                "openai/completions.text.length.json",
                Endpoint::Completions,
                include_bytes!("../../../../tests/fixtures/openai/completions.text.length.json")
                    .to_vec(),
            ),
            (
                "openai/chat.completions.stream.text.include_usage.sse, assembled",
                Endpoint::ChatCompletions,
                chat_from_stream(include_str!(
                    "../../../../tests/fixtures/openai/chat.completions.stream.text.include_usage.sse"
                )),
            ),
            (
                "openai/chat.completions.stream.tool_calls.include_usage.sse, assembled",
                Endpoint::ChatCompletions,
                chat_from_stream(include_str!(
                    "../../../../tests/fixtures/openai/chat.completions.stream.tool_calls.include_usage.sse"
                )),
            ),
        ]
    }

    #[test]
    fn recorded_answers_are_byte_identical_on_both_paths() {
        for (name, endpoint, body) in recorded() {
            // As providers send them (compact): the very same bytes.
            let wire = compact(&body);
            let passed = fast(endpoint, &wire, ALIAS, false)
                .unwrap_or_else(|| panic!("{name}: no fast path"));
            let (slow, slow_usage) = translated(endpoint, &wire);
            assert_eq!(
                String::from_utf8_lossy(&passed.body),
                String::from_utf8_lossy(&slow),
                "{name}"
            );
            assert_eq!(passed.usage, slow_usage, "{name}: usage");
            assert!(passed.usage.is_some_and(|u| u.total_tokens > 0), "{name}");

            // As recorded (pretty-printed): the provider's bytes but for
            // `model`, the same JSON as the translated answer.
            let passed = fast(endpoint, &body, ALIAS, false)
                .unwrap_or_else(|| panic!("{name}: no fast path (recorded)"));
            let (slow, slow_usage) = translated(endpoint, &body);
            let original: Value = serde_json::from_slice(&body).expect("JSON");
            let old_model = original["model"].to_string();
            let at = String::from_utf8_lossy(&body)
                .find(&format!("\"model\": {old_model}"))
                .expect("model in the fixture")
                + "\"model\": ".len();
            let mut expected = body[..at].to_vec();
            expected.extend_from_slice(format!("\"{ALIAS}\"").as_bytes());
            expected.extend_from_slice(&body[at + old_model.len()..]);
            assert_eq!(passed.body, expected, "{name}: byte for byte but model");
            let fast_v: Value = serde_json::from_slice(&passed.body).expect("JSON");
            let slow_v: Value = serde_json::from_slice(&slow).expect("JSON");
            assert_eq!(fast_v, slow_v, "{name}");
            assert_eq!(passed.usage, slow_usage, "{name}: usage");
        }
    }

    #[test]
    fn what_the_translation_would_change_goes_the_translating_way() {
        let ok = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": null},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
        let chat = |v: &Value| {
            fast(
                Endpoint::ChatCompletions,
                v.to_string().as_bytes(),
                ALIAS,
                false,
            )
        };
        assert!(chat(&ok).is_some());
        let with = |pointer: &str, value: Value| {
            let mut v = ok.clone();
            let (parent, key) = pointer.rsplit_once('/').expect("pointer");
            let target = if parent.is_empty() {
                &mut v
            } else {
                v.pointer_mut(parent).expect("parent")
            };
            match value {
                Value::Null if key == "-" => {}
                Value::Null => {
                    target.as_object_mut().expect("object").remove(key);
                }
                other => {
                    target[key] = other;
                }
            }
            v
        };
        for missing in [
            "/choices/0/index",
            "/choices/0/finish_reason",
            "/choices/0/logprobs",
            "/choices/0/message/role",
            "/choices/0/message/content",
            "/choices/0/message/refusal",
            "/model",
        ] {
            assert!(
                chat(&with(missing, Value::Null)).is_none(),
                "{missing} missing"
            );
        }
        assert!(chat(&with("/system_fingerprint", json!("fp"))).is_some());
        let mut v = ok.clone();
        v["system_fingerprint"] = Value::Null;
        assert!(chat(&v).is_none(), "null system_fingerprint");
        assert!(chat(&with("/service_tier", json!("default"))).is_some());
        assert!(chat(&with("/service_tier", json!("on_demand"))).is_none());
        assert!(chat(&with("/error", json!({"message": "x"}))).is_none());
        let mut v = ok.clone();
        v["error"] = Value::Null;
        assert!(chat(&v).is_some(), "`error: null` beside an answer");
        let call = json!([{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]);
        assert!(
            chat(&with("/choices/0/message/tool_calls", call)).is_none(),
            "tool call without type"
        );
        // A repeated key, a non-object, broken JSON.
        let dup = br#"{"model":"a","model":"b","choices":[]}"#;
        assert!(fast(Endpoint::ChatCompletions, dup, ALIAS, false).is_none());
        assert!(fast(Endpoint::ChatCompletions, b"[1]", ALIAS, false).is_none());
        assert!(fast(Endpoint::ChatCompletions, b"{\"model\":", ALIAS, false).is_none());
        // A number out of an f64's range: the translation refuses the answer.
        let big = br#"{"model":"m","object":"list","data":[],"created":-2e+308}"#;
        assert!(fast(Endpoint::Embeddings, big, ALIAS, false).is_none());
        // The front doors' own endpoints are not OpenAI's chat form.
        assert!(fast(Endpoint::Responses, ok.to_string().as_bytes(), ALIAS, false).is_none());
    }

    #[test]
    fn embeddings_pass_through_unless_the_encoding_differs() {
        let floats = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-1.25e-5]}],"model":"e","usage":{"prompt_tokens":3,"total_tokens":3}}"#;
        let b64 = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":"AAAAPw=="}],"model":"e","usage":{"prompt_tokens":3,"total_tokens":3}}"#;
        // Floats asked, floats sent: byte for byte.
        let p = fast(Endpoint::Embeddings, floats, ALIAS, false).expect("fast");
        assert_eq!(
            p.body,
            String::from_utf8_lossy(floats)
                .replace("\"e\"", "\"my-alias\"")
                .into_bytes()
        );
        assert_eq!(p.usage.map(|u| u.prompt_tokens), Some(3));
        // base64 asked, base64 sent: byte for byte; floats sent: the translating path encodes.
        assert!(fast(Endpoint::Embeddings, b64, ALIAS, true).is_some());
        assert!(fast(Endpoint::Embeddings, floats, ALIAS, true).is_none());
    }

    #[test]
    fn the_alias_is_written_as_a_json_string() {
        let body = br#"{"model":"m","object":"list","data":[]}"#;
        let p = fast(Endpoint::Embeddings, body, "a\"b\\c", false).expect("fast");
        assert_eq!(
            p.body,
            br#"{"model":"a\"b\\c","object":"list","data":[]}"#.to_vec()
        );
        assert_eq!(p.usage, None);
        // An escaped key is the same key.
        let body = br#"{"mod\u0065l":"m","object":"list","data":[]}"#;
        let p = fast(Endpoint::Embeddings, body, ALIAS, false).expect("fast");
        assert_eq!(
            p.body,
            br#"{"mod\u0065l":"my-alias","object":"list","data":[]}"#.to_vec()
        );
    }

    #[test]
    fn recorded_stream_chunks_pass_through() {
        let sse = include_str!(
            "../../../../tests/fixtures/openai/chat.completions.stream.text.include_usage.sse"
        );
        let mut events = 0;
        let mut usage = None;
        for data in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data == "[DONE]" {
                continue;
            }
            events += 1;
            let c = pass_through_chunk(data, true).expect("passed through");
            if let Some((u, _)) = c.usage {
                usage = Some(u);
                assert!(c.body.is_none(), "the usage-only chunk has no choices");
                continue;
            }
            let body = c.body.expect("a chunk with choices").to_vec(data, ALIAS);
            let body = String::from_utf8(body).expect("UTF-8");
            assert!(body.contains(r#""model":"my-alias""#), "{body}");
            assert!(!body.contains("usage"), "{body}");
            // The chunk is the provider's, but for `model` and `usage`.
            let mut expected: Value = serde_json::from_str(data).expect("JSON");
            expected.as_object_mut().expect("object").remove("usage");
            expected["model"] = json!(ALIAS);
            assert_eq!(
                serde_json::from_str::<Value>(&body).expect("JSON"),
                expected
            );
            assert_eq!(c.head.len(), 3, "id, created, system_fingerprint");
        }
        assert!(events > 5);
        assert!(usage.is_some_and(|u| u.total_tokens > 0));
        // The usage as the first member, or the only one.
        let data = r#"{"usage":null,"model":"m","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}"#;
        let c = pass_through_chunk(data, false).expect("fast");
        assert_eq!(c.body.map(|b| b.to_vec(data, ALIAS)).as_deref(), Some(&br#"{"model":"my-alias","choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}]}"#[..]));
        assert_eq!(c.content, 1);
        // What the decoder would normalise is declined.
        for declined in [
            r#"{"model":"m","choices":[{"delta":{"content":"x"},"finish_reason":null}]}"#,
            r#"{"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"id":"c","function":{}}]},"finish_reason":null}]}"#,
            r#"{"model":"m","system_fingerprint":null,"choices":[]}"#,
            r#"{"model":"m","error":{"message":"overloaded"}}"#,
            "{\"model\":\"m\",\n\"choices\":[]}",
        ] {
            assert!(pass_through_chunk(declined, false).is_none(), "{declined}");
        }
    }
}
