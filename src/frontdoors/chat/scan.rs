//! The scan behind [`super::RawRequest`]: the top level into raw values, and
//! a visitor that walks a value as the tree parse would read it (the same
//! syntax, strings, escapes and numbers accepted) while tallying what
//! [`estimate_prompt_tokens`](crate::metering::limits::estimate_prompt_tokens)
//! counts, with no allocation for an object of up to [`INLINE_KEYS`] keys.
//! Any error means "let the tree decide".

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

// The estimate's own constants: the scan tallies exactly what it counts.
use crate::metering::limits::{ESTIMATED_FIELDS as ESTIMATED, IMAGE_TOKENS, MESSAGE_TOKENS};

/// Nesting the scan follows (serde_json's tree parse stops at 128 levels;
/// anything near that goes to the tree, which gives its own error).
pub const MAX_DEPTH: u32 = 100;
/// Keys of an object kept on the stack; a wider object is sorted to find its
/// repeated keys.
pub const INLINE_KEYS: usize = 16;
/// Top-level keys at most (a wider body goes to the tree).
const MAX_TOP_LEVEL: usize = 64;

/// The top level of `bytes`: a JSON object's fields in order, or `None`
/// (not an object, a key written twice or escaped, too many keys, invalid).
pub fn top_level(bytes: &[u8]) -> Option<Vec<(&str, &RawValue)>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let fields = de.deserialize_map(TopLevel).ok()?;
    de.end().ok()?;
    for (i, (k, _)) in fields.iter().enumerate() {
        if fields[i + 1..].iter().any(|(other, _)| other == k) {
            return None;
        }
    }
    Some(fields)
}

/// Validates every field as the tree parse would and returns the prompt
/// estimate; `None` when the tree must decide.
pub fn prompt_estimate(fields: &[(&str, &RawValue)]) -> Option<u64> {
    let (mut bytes, mut extra) = (0u64, 0u64);
    for (key, value) in fields {
        let tally = walk(value.get())?;
        if ESTIMATED.contains(key) {
            bytes = bytes.saturating_add(tally.bytes);
            extra = extra.saturating_add(tally.extra);
            if *key == "messages" {
                extra = extra.saturating_add(MESSAGE_TOKENS.saturating_mul(tally.items));
            }
        }
    }
    Some(bytes.div_ceil(4).saturating_add(extra))
}

/// Walks one JSON value (a field's raw text).
pub fn walk(text: &str) -> Option<Tally> {
    let mut de = serde_json::Deserializer::from_str(text);
    let tally = Walk { depth: 1 }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(tally)
}

/// What the estimate counts in one value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Bytes of text.
    pub bytes: u64,
    /// Tokens counted otherwise (numbers, images).
    pub extra: u64,
    /// Elements, when the value is an array.
    pub items: u64,
    /// The value is one of the strings that make an object an image part.
    image_type: bool,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.extra = self.extra.saturating_add(other.extra);
    }
}

struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = Vec<(&'de str, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(12);
        while let Some(key) = map.next_key_seed(Key)? {
            if fields.len() == MAX_TOP_LEVEL {
                return Err(A::Error::custom("too many keys"));
            }
            let value: &'de RawValue = map.next_value()?;
            fields.push((key, value));
        }
        Ok(fields)
    }
}

/// A key as the client wrote it; an escaped key is an error (the tree decides).
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = &'de str;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'de str, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = &'de str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an unescaped key")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<&'de str, E> {
        Ok(v)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<&'de str, E> {
        Err(E::custom("escaped key"))
    }
}

/// The visitor: one value at `depth` (1: a top-level field's value).
struct Walk {
    depth: u32,
}

impl<'de> DeserializeSeed<'de> for Walk {
    type Value = Tally;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Tally, D::Error> {
        d.deserialize_any(self)
    }
}

impl Walk {
    fn deeper<E: serde::de::Error>(&self) -> Result<Walk, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom("too deep"));
        }
        Ok(Walk {
            depth: self.depth + 1,
        })
    }
}

fn number() -> Tally {
    Tally {
        extra: 1,
        ..Tally::default()
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = Tally;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Tally, E> {
        Ok(Tally::default())
    }

    fn visit_i64<E>(self, _: i64) -> Result<Tally, E> {
        Ok(number())
    }

    fn visit_u64<E>(self, _: u64) -> Result<Tally, E> {
        Ok(number())
    }

    fn visit_f64<E>(self, _: f64) -> Result<Tally, E> {
        Ok(number())
    }

    fn visit_str<E>(self, v: &str) -> Result<Tally, E> {
        Ok(Tally {
            bytes: v.len() as u64,
            image_type: matches!(v, "image_url" | "input_image" | "image"),
            ..Tally::default()
        })
    }

    fn visit_unit<E>(self) -> Result<Tally, E> {
        Ok(Tally::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tally, A::Error> {
        let inner = self.deeper()?;
        let mut tally = Tally::default();
        while let Some(item) = seq.next_element_seed(Walk { depth: inner.depth })? {
            tally.add(item);
            tally.items += 1;
        }
        Ok(tally)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tally, A::Error> {
        let inner = self.deeper()?;
        // The tree keeps the last value of a key written twice (at the first
        // one's place): so does the tally.
        let mut inline = [("", Tally::default()); INLINE_KEYS];
        let mut len = 0;
        let mut wide: Vec<(&'de str, Tally)> = Vec::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let value = map.next_value_seed(Walk { depth: inner.depth })?;
            if len < INLINE_KEYS {
                inline[len] = (key, value);
                len += 1;
            } else {
                if wide.is_empty() {
                    wide.extend_from_slice(&inline);
                }
                wide.push((key, value));
            }
        }
        let entries: &mut [(&str, Tally)] = if wide.is_empty() {
            &mut inline[..len]
        } else {
            // Stable: the last of equal keys stays last.
            wide.sort_by(|a, b| a.0.cmp(b.0));
            &mut wide
        };
        let last = |entries: &[(&str, Tally)], i: usize| {
            let key = entries[i].0;
            if entries.len() > INLINE_KEYS {
                entries.get(i + 1).is_none_or(|(next, _)| *next != key)
            } else {
                !entries[i + 1..].iter().any(|(other, _)| *other == key)
            }
        };
        let image = (0..entries.len())
            .any(|i| entries[i].0 == "type" && last(entries, i) && entries[i].1.image_type);
        if image {
            return Ok(Tally {
                extra: IMAGE_TOKENS,
                ..Tally::default()
            });
        }
        let mut tally = Tally::default();
        for i in 0..entries.len() {
            let (key, value) = entries[i];
            if key != "type" && key != "role" && last(entries, i) {
                tally.add(value);
            }
        }
        Ok(tally)
    }
}
