//! A validating JSON scanner that builds nothing: it walks a document once,
//! checks it against RFC 8259 (the grammar `serde_json` accepts), and hands
//! back the byte spans of the members the fast path looks at.
//!
//! Why not `serde_json` with `RawValue`s: skipping a value through serde's
//! `ignore_*` costs ~15 instructions a byte (half the instructions of an
//! embeddings request went to its 17 KB of floats), and the borrowed-field
//! visitors of a stream chunk took three passes and five allocations per
//! event (callgrind, `bench/profile.sh`: ~9,000 instructions per chunk).
//! This scanner takes one pass and no allocation; whatever it does not
//! accept (an escaped key, a document nested deeper than `serde_json`
//! allows) the caller declines, and the translating path decides.
//!
//! The input is a `&str`, so strings are valid UTF-8 already; what is left
//! to check is the grammar: no control character inside a string, only the
//! escapes JSON has, numbers in JSON's form, commas and colons where they
//! belong, nothing after the document but whitespace. Arrays of floats
//! (an embedding) are skipped by [`floats`], a block at a time where the
//! CPU allows.

mod floats;

use floats::{float_end, skip_float_blocks, BLOCK};

/// How deep `serde_json` lets a document nest (it refuses the 128th level).
const MAX_DEPTH: u32 = 127;

/// A position in the document being scanned.
pub(crate) struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pub(crate) pos: usize,
    depth: u32,
}

/// A member's key: its text between the quotes, when it has no escape.
pub(crate) type Key<'a> = &'a str;

impl<'a> Scanner<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Scanner {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            depth: 0,
        }
    }

    /// Where `part`, a slice of the document (a key handed to a member
    /// closure), begins in it.
    pub(crate) fn offset_of(&self, part: &str) -> usize {
        (part.as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize)
    }

    /// The document's text from `start` to `end`.
    pub(crate) fn slice(&self, start: usize, end: usize) -> &'a str {
        &self.text[start..end]
    }

    pub(crate) fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.pos += 1)
    }

    /// Nothing but whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// Skips one value of any kind, checked; returns its span.
    pub(crate) fn value(&mut self) -> Option<(usize, usize)> {
        let start = {
            self.ws();
            self.pos
        };
        match *self.bytes.get(self.pos)? {
            b'"' => {
                self.string()?;
            }
            b'{' => self.members(true, |s, _| s.value().map(drop))?,
            b'[' => self.skip_array()?,
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => self.number()?,
        }
        Some((start, self.pos))
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        let b = self.bytes;
        let mut i = self.pos;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                let end = digits(b, i + 1);
                // Big enough to overflow an f64 with its exponent (serde's
                // "number out of range"): left to serde.
                if end - i > MAX_INTEGER_DIGITS {
                    return None;
                }
                i = end;
            }
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            let end = digits(b, i + 1);
            if end == i + 1 {
                return None;
            }
            i = end;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let end = digits(b, i);
            if end == i || end - i > MAX_EXPONENT_DIGITS {
                return None;
            }
            i = end;
        }
        self.pos = i;
        Some(())
    }

    /// A string at the position, checked; returns the span of its text
    /// between the quotes and whether it has escapes.
    pub(crate) fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.eat(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        let b = self.bytes;
        let mut i = start;
        loop {
            // Eight bytes at a time to the next quote, backslash or
            // control character.
            while let Some(x) = b.get(i..i + 8).and_then(word) {
                let special = string_special(x);
                if special != 0 {
                    i += (special.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            match *b.get(i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match *b.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                        b'u' => {
                            let unit = hex4(b.get(i + 2..i + 6)?)?;
                            i += 6;
                            match unit {
                                // A leading surrogate: serde refuses it
                                // without its trailing half.
                                0xd800..=0xdbff => {
                                    if b.get(i..i + 2)? != b"\\u" {
                                        return None;
                                    }
                                    let low = hex4(b.get(i + 2..i + 6)?)?;
                                    if !(0xdc00..=0xdfff).contains(&low) {
                                        return None;
                                    }
                                    i += 6;
                                }
                                0xdc00..=0xdfff => return None,
                                _ => {}
                            }
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => i += 1,
            }
        }
        self.pos = i + 1;
        Some((start, i, escaped))
    }

    /// An object: `member` is called with each key, the scanner before the
    /// value, and must consume the value.
    pub(crate) fn object(
        &mut self,
        member: impl FnMut(&mut Self, Key<'a>) -> Option<()>,
    ) -> Option<()> {
        self.members(false, member)
    }

    /// An object; with `any_key`, keys with escapes too (their text is then
    /// what is written, not what it means: for skipping only).
    fn members(
        &mut self,
        any_key: bool,
        mut member: impl FnMut(&mut Self, Key<'a>) -> Option<()>,
    ) -> Option<()> {
        if self.open(b'{', b'}')? {
            return Some(());
        }
        self.more_members(any_key, &mut member)
    }

    /// Past `open`: `true` when `close` follows at once (an empty object or
    /// array, read whole), `false` when an element follows (one level deeper).
    #[inline]
    fn open(&mut self, open: u8, close: u8) -> Option<bool> {
        self.eat(open)?;
        self.enter()?;
        if self.peek()? == close {
            self.pos += 1;
            self.depth -= 1;
            return Some(true);
        }
        Some(false)
    }

    /// Members up to the object's end, where a key is next.
    #[inline]
    fn more_members(
        &mut self,
        any_key: bool,
        member: &mut impl FnMut(&mut Self, Key<'a>) -> Option<()>,
    ) -> Option<()> {
        loop {
            let (start, end, escaped) = self.string()?;
            if escaped && !any_key {
                // The key's text is not what is written: the caller cannot
                // compare it; serde decides.
                return None;
            }
            self.eat(b':')?;
            member(self, &self.text[start..end])?;
            if self.after_member()? {
                return Some(());
            }
        }
    }

    /// After a member's value: a comma (`false`: another member follows) or
    /// the object's end (`true`).
    fn after_member(&mut self) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.pos += 1;
                Some(false)
            }
            b'}' => {
                self.pos += 1;
                self.depth -= 1;
                Some(true)
            }
            _ => None,
        }
    }

    /// The top-level object of a document scanned up to `pos`, the position
    /// right after the colon of member `key` (its value is next), taken up
    /// again there: `member` is called with `key`, then as by
    /// [`object`](Self::object) for the members after it. Given the same
    /// bytes up to `pos`, the scan from the start would have reached this
    /// very state, so the outcome is the same as a scan from the start.
    pub(crate) fn object_from(
        &mut self,
        pos: usize,
        key: Key<'a>,
        mut member: impl FnMut(&mut Self, Key<'a>) -> Option<()>,
    ) -> Option<()> {
        self.pos = pos;
        self.depth = 1;
        member(self, key)?;
        if self.after_member()? {
            return Some(());
        }
        self.more_members(false, &mut member)
    }

    /// An array: `item` is called before each element, and must consume it.
    pub(crate) fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if self.open(b'[', b']')? {
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array skipped: numbers (an embedding's thousands of floats) read
    /// without the detour through [`value`](Self::value).
    fn skip_array(&mut self) -> Option<()> {
        if self.open(b'[', b']')? {
            return Some(());
        }
        loop {
            self.skip_floats();
            match *self.bytes.get(self.pos)? {
                b'-' | b'0'..=b'9' => self.number()?,
                _ => {
                    self.value()?;
                }
            }
            // The usual separator, a bare comma, without the whitespace loop.
            if self.bytes.get(self.pos) == Some(&b',') {
                self.pos += 1;
                if let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
                    self.ws();
                }
                continue;
            }
            match self.peek()? {
                b',' => {
                    self.pos += 1;
                    self.ws();
                }
                b']' => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Where an array element is expected: skips the elements of the shape
    /// of nearly every float of an embedding, `-?[0-9]\.[0-9]+` followed by a
    /// comma (and whitespace after it). It stops before the first element of
    /// another shape (or the last, before `]`), which
    /// [`skip_array`](Self::skip_array) reads the long way: what it skips is
    /// exactly what [`number`](Self::number), a comma and whitespace accept.
    ///
    /// Read a float at a time, each float's end depends on the one before
    /// (a chain of loads, about 20 cycles a float). On x86_64 whole blocks
    /// of 64 bytes are checked at once instead ([`floats`]); a
    /// block holding another shape is walked a float at a time.
    #[inline]
    fn skip_floats(&mut self) {
        let b = self.bytes;
        let mut i = self.pos;
        loop {
            i = skip_float_blocks(b, i);
            // Past the block the check declined, a float at a time.
            let end = i + BLOCK;
            while i < end {
                match float_end(b, i) {
                    Some(next) => i = next,
                    None => {
                        self.pos = i;
                        return;
                    }
                }
            }
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }
}

/// What the scanner takes of a number, so that no number it accepts is
/// out of an f64's range (below 1e200 × 1e99); longer ones are left to serde.
const MAX_INTEGER_DIGITS: usize = 200;
const MAX_EXPONENT_DIGITS: usize = 2;

/// Four hex digits.
fn hex4(hex: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(hex).ok()?;
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u16::from_str_radix(text, 16).ok()
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;
const NIBBLES: u64 = 0xf0f0_f0f0_f0f0_f0f0;

/// The eight bytes as one word, the first in the lowest byte.
#[inline]
fn word(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The bytes of eight that end a plain run of string text (`"`, `\` or a
/// control character), flagged by their high bit (the classic has-zero-byte
/// and has-less-than word tricks). A borrow only runs upwards from a flagged
/// byte: the lowest flag is exact.
#[inline]
fn string_special(x: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = zero(x ^ (ONES * u64::from(b'"')));
    let backslash = zero(x ^ (ONES * u64::from(b'\\')));
    let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    quote | backslash | control
}

/// The bytes of eight (the first in the lowest byte) that are not ASCII
/// digits, flagged in their high nibble: a byte is a digit when its high
/// nibble is 3 and adding 6 keeps it so. A carry out of a byte only starts
/// at a non-digit and runs upwards, past the first non-digit: the lowest
/// flag is exact (those above it need not be).
#[inline]
fn non_digits(x: u64) -> u64 {
    let high = (x & NIBBLES) ^ (ONES * 0x30);
    let plus6 = (x.wrapping_add(ONES * 6) & NIBBLES) ^ (ONES * 0x30);
    high | plus6
}

/// The end of the run of ASCII digits from `i`, eight bytes at a time.
#[inline]
fn digits(b: &[u8], mut i: usize) -> usize {
    while let Some(x) = b.get(i..i + 8).and_then(word) {
        let non_digit = non_digits(x);
        if non_digit != 0 {
            return i + (non_digit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// Whether `text` is one JSON document (what the scanner accepts).
#[cfg(test)]
pub(crate) fn is_json(text: &str) -> bool {
    let mut s = Scanner::new(text);
    s.value().is_some() && s.at_end()
}

#[cfg(test)]
mod tests;
