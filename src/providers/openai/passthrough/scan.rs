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
//! belong, nothing after the document but whitespace.

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
        self.eat(b'{')?;
        self.enter()?;
        if self.peek()? == b'}' {
            self.pos += 1;
            self.depth -= 1;
            return Some(());
        }
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
        loop {
            let (start, end, escaped) = self.string()?;
            if escaped {
                return None;
            }
            self.eat(b':')?;
            member(self, &self.text[start..end])?;
            if self.after_member()? {
                return Some(());
            }
        }
    }

    /// An array: `item` is called before each element, and must consume it.
    pub(crate) fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.enter()?;
        if self.peek()? == b']' {
            self.pos += 1;
            self.depth -= 1;
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
        self.eat(b'[')?;
        self.enter()?;
        if self.peek()? == b']' {
            self.pos += 1;
            self.depth -= 1;
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
    /// of 64 bytes are checked at once instead ([`skip_float_blocks`]); a
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

/// Past the float at `i` and its comma, when it is of the shape
/// `-?0\.[0-9]{1,15},` ([`Scanner::skip_floats`]).
#[inline(always)]
fn float_end(b: &[u8], i: usize) -> Option<usize> {
    const ZERO_DOT: u16 = u16::from_le_bytes(*b"0.");
    let p = i + usize::from(b.get(i) == Some(&b'-'));
    let window = b.get(p..p + 18)?;
    let (head, fraction) = window.split_at(2);
    let (low, high) = fraction.split_at(8);
    if u16::from_le_bytes([head[0], head[1]]) != ZERO_DOT {
        return None;
    }
    // The first non-digit of the sixteen bytes after "0." must be a comma,
    // and come after at least one digit.
    let first = match non_digits(word(low)?) {
        0 => match non_digits(word(high)?) {
            0 => return None,
            mask => 8 + mask.trailing_zeros() / 8,
        },
        mask => mask.trailing_zeros() / 8,
    } as usize;
    (first != 0 && fraction[first] == b',').then_some(p + 2 + first + 1)
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

/// The bytes [`skip_float_blocks`] checks at once.
const BLOCK: usize = 64;

/// From `i`, where an array element (or the whitespace before one) is
/// expected: past the last comma of the blocks of [`BLOCK`] bytes that hold
/// only floats of the shape `-?[0-9]\.[0-9]+`, each followed by a comma and
/// optional whitespace (`i` when the first block holds anything else). What
/// it skips is exactly what [`Scanner::number`], a comma and whitespace
/// accept.
///
/// Each block is checked on bit masks of its bytes (bit `j` is byte `j`; a
/// mask shifted left by one is "the byte before"), with the classes of the
/// block's last byte carried into the next. Blocks are taken at a fixed
/// stride, so the next one's loads and compares never wait for this one's
/// verdict.
#[inline]
fn skip_float_blocks(b: &[u8], mut i: usize) -> usize {
    // After the last comma of the blocks checked so far.
    let mut past = i;
    // The byte before the first block is (as good as) a comma.
    let mut before = Before {
        separator: 1,
        ..Before::default()
    };
    while let Some(block) = b
        .get(i..i + BLOCK)
        .and_then(|w| <&[u8; BLOCK]>::try_from(w).ok())
    {
        let Some(c) = classes(block) else {
            break;
        };
        let other = !(c.comma | c.minus | c.dot | c.digit | c.space);
        // Whitespace only after a comma or more whitespace.
        let separated = ((c.comma | c.space) << 1) | before.separator;
        let starts = separated & !c.space;
        // Each element: `-` only at its start, then one digit (its integer
        // part), `.` right after that digit and nowhere else, a digit after
        // the `.`, and every comma after a digit of the fraction. The rules
        // overlap (a byte of no class also breaks the fraction rule, the last
        // two each imply the other given the rest): each says one thing of
        // the grammar, and a few instructions buy that plainness.
        let integers = (starts & !c.minus) | (c.minus << 1) | before.minus;
        let fraction = c.digit & !integers;
        let ok = other == 0
            && c.space & !separated == 0
            && c.minus & !starts == 0
            && integers & !c.digit == 0
            && ((integers << 1) | before.integer) == c.dot
            && ((c.dot << 1) | before.dot) & !c.digit == 0
            // a fraction digit follows the `.` or another fraction digit
            && fraction & !(((c.dot | fraction) << 1) | before.dot_or_fraction) == 0
            && c.comma & !((fraction << 1) | before.fraction) == 0;
        if !ok {
            break;
        }
        if c.comma != 0 {
            past = i + BLOCK - c.comma.leading_zeros() as usize;
        }
        before = Before {
            separator: (c.comma | c.space) >> 63,
            minus: c.minus >> 63,
            integer: integers >> 63,
            dot: c.dot >> 63,
            dot_or_fraction: (c.dot | fraction) >> 63,
            fraction: fraction >> 63,
        };
        i += BLOCK;
    }
    past
}

/// What the last byte of a block was (1 or 0), for the next block's first.
#[derive(Default, Clone, Copy)]
struct Before {
    separator: u64,
    minus: u64,
    integer: u64,
    dot: u64,
    dot_or_fraction: u64,
    fraction: u64,
}

/// The bytes of a block in each class a float array has, a bit each.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Classes {
    comma: u64,
    minus: u64,
    dot: u64,
    digit: u64,
    space: u64,
}

/// Sixteen bytes compared at once: SSE2 is in every x86_64 CPU (part of the
/// target's baseline, which the compiler itself assumes).
#[cfg(target_arch = "x86_64")]
#[inline]
fn classes(block: &[u8; BLOCK]) -> Option<Classes> {
    // SAFETY: `classes_sse2` needs SSE2, which every x86_64 target has.
    Some(unsafe { classes_sse2(block) })
}

/// Elsewhere (wasm32, where vector instructions are optional, and other
/// targets) there is no block check: floats are read one at a time.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn classes(_block: &[u8; BLOCK]) -> Option<Classes> {
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn classes_sse2(block: &[u8; BLOCK]) -> Classes {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_set_epi64x, _mm_sub_epi8,
    };
    let mut c = Classes::default();
    for (k, part) in block.chunks_exact(16).enumerate() {
        let half = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&part[at..at + 8]);
            i64::from_le_bytes(w)
        };
        let v = _mm_set_epi64x(half(8), half(0));
        let eq = |b: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8));
        let bits = |m: __m128i| u64::from(_mm_movemask_epi8(m) as u16) << (16 * k);
        // A digit: its distance from `0`, as an unsigned byte, is at most 9.
        let from_zero = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
        let digit = _mm_cmpeq_epi8(_mm_min_epu8(from_zero, _mm_set1_epi8(9)), from_zero);
        c.comma |= bits(eq(b','));
        c.minus |= bits(eq(b'-'));
        c.dot |= bits(eq(b'.'));
        c.digit |= bits(digit);
        let space = _mm_or_si128(
            _mm_or_si128(eq(b' '), eq(b'\n')),
            _mm_or_si128(eq(b'\r'), eq(b'\t')),
        );
        c.space |= bits(space);
    }
    c
}

/// Whether `text` is one JSON document (what the scanner accepts).
#[cfg(test)]
pub(crate) fn is_json(text: &str) -> bool {
    let mut s = Scanner::new(text);
    s.value().is_some() && s.at_end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_serde_json_accepts() {
        for ok in [
            "{}",
            "[]",
            " {\"a\" : [1, -0.5, 1e3, 2E-7, 0, true, false, null, \"x\\n\\u00e9\\\"\"] } ",
            "\"h\u{e9}llo \u{1F600}\"",
            "-0",
            "[[[]]]",
            "\"\\ud83d\\ude00\"",
            "1e99",
            "{\"a\":{\"b\":{}}}",
        ] {
            assert!(is_json(ok), "{ok}");
            assert!(
                serde_json::from_str::<serde_json::Value>(ok).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for bad in [
            "",
            "{",
            "{\"a\"}",
            "{\"a\":1,}",
            "[1,]",
            "[1 2]",
            "01",
            "1.",
            ".5",
            "1e",
            "+1",
            "-",
            "tru",
            "nul",
            "\"a\tb\"",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"abc",
            "{} {}",
            "{'a':1}",
            "[1]x",
            "NaN",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "1e400",
        ] {
            assert!(!is_json(bad), "{bad:?}");
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad:?}"
            );
        }
        // Deeper than serde_json's recursion limit.
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(!is_json(&deep));
        let fine = "[".repeat(100) + &"]".repeat(100);
        assert!(is_json(&fine));
        // Right at serde's limit, on both sides of it.
        for depth in [126, 127, 128, 129] {
            let text = "[".repeat(depth) + &"]".repeat(depth);
            let serde = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            assert_eq!(is_json(&text), serde, "depth {depth}");
        }
    }

    #[test]
    fn number_arrays_agree_with_serde_json() {
        // Every array of up to six bytes of number characters: whatever the
        // scanner accepts, serde accepts; without an exponent (which the
        // scanner bounds), they agree. Then embedding-like floats.
        let alphabet = b"-01.e+,5";
        let mut texts = Vec::new();
        let mut stack = vec![Vec::new()];
        while let Some(t) = stack.pop() {
            if t.len() < 6 {
                for &c in alphabet {
                    let mut next = t.clone();
                    next.push(c);
                    stack.push(next);
                }
            }
            texts.push(t);
        }
        let floats: Vec<String> = (0..40)
            .map(|k| {
                format!(
                    "{}0.{}",
                    if k % 3 == 0 { "-" } else { "" },
                    "7".repeat(1 + k % 17)
                )
            })
            .collect();
        let joined = floats.join(",");
        let mut more = vec![
            joined.clone(),
            joined.clone() + ",",
            joined.clone() + ", 0.5",
        ];
        for (k, bad) in ["0.", "-0.", "0.1.", "0.1e", "00.1", "0.1-", "-", "0.1 ,0"]
            .iter()
            .enumerate()
        {
            let mut f = floats.clone();
            f[(k * 7) % 40] = (*bad).to_owned();
            more.push(f.join(","));
        }
        texts.extend(more.into_iter().map(String::into_bytes));
        for extra in [
            "-0.0123456789,0.5,-0.000001234",
            "0.06,-0.059999995,1.2345678e-5,-3.4e-7",
            "-0.01234567890123456789",
            "0.1234567",
            "-0.1234567e+1",
            "0.5E2",
            "-0.",
            "0.-1",
            "-0.5.5",
            "0.5e",
        ] {
            texts.push(extra.as_bytes().to_vec());
        }
        for t in texts {
            let text = format!("[{}]", String::from_utf8(t).unwrap());
            let ours = is_json(&text);
            let serde = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            if ours || !text.contains(['e', 'E']) {
                assert_eq!(ours, serde, "{text}");
            }
            // The same as the last value of an object, and at the end of
            // the input (where the fast path reads past nothing).
            let member = format!("{{\"a\":{}}}", &text[1..text.len() - 1]);
            if !text.contains(',') && text.len() > 2 {
                let ours = is_json(&member);
                let serde = serde_json::from_str::<serde_json::Value>(&member).is_ok();
                if ours || !text.contains(['e', 'E']) {
                    assert_eq!(ours, serde, "{member}");
                }
                let bare = &text[1..text.len() - 1];
                let ours = is_json(bare);
                let serde = serde_json::from_str::<serde_json::Value>(bare).is_ok();
                if ours || !bare.contains(['e', 'E']) {
                    assert_eq!(ours, serde, "{bare}");
                }
            }
        }
    }

    /// Long float arrays, checked 64 bytes at a time: with each separator
    /// an embedding is printed with, one element of another shape (valid
    /// or not) at every place; the whole array accepted exactly when serde
    /// accepts it, its end where it ends.
    #[test]
    fn float_arrays_checked_in_blocks_agree_with_serde_json() {
        let floats: Vec<String> = (0..150)
            .map(|k| {
                let digits = "01234567890123456789"
                    .get(..1 + (k * 7) % 19)
                    .unwrap_or("1");
                format!("{}0.{digits}", if k % 2 == 0 { "-" } else { "" })
            })
            .collect();
        let odd = [
            "0.",
            "1.5",
            "\"s,\"",
            "[0.1,0.2]",
            "{}",
            "1e5",
            "0.1e-3",
            "-0.0",
            "00.1",
            "0.1.2",
            "-",
            "--0.1",
            "-.5",
            ".5",
            "0..5",
            "0.5-",
            "0,5",
            "true",
            "0.1234567890123456789",
            " 0.5",
            "0.5 ",
            "\n0.5\t",
            "0.5\u{7f}",
            "0.5\u{e9}",
            "",
        ];
        for sep in [",", ", ", ",\n        ", ",\r\n\t"] {
            for token in odd {
                for at in 0..floats.len() {
                    let mut f = floats.clone();
                    f[at] = token.to_owned();
                    let text = format!("[{}]", f.join(sep));
                    let serde = serde_json::from_str::<serde_json::Value>(&text).is_ok();
                    let mut s = Scanner::new(&text);
                    let ours = s.value();
                    assert_eq!(
                        ours.is_some() && s.at_end(),
                        serde,
                        "{token:?} at {at}, {sep:?}"
                    );
                    if serde {
                        assert_eq!(ours, Some((0, text.len())), "{token:?} at {at}, {sep:?}");
                    }
                }
            }
        }
    }

    /// Arrays of floats with a byte changed, dropped or added at random
    /// (from the bytes a float array has, and a few it has not): accepted
    /// exactly when serde accepts them.
    #[test]
    fn mutated_float_arrays_agree_with_serde_json() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let alphabet = b"-0123456789.,eE+ \n]\"x";
        let seps = [",", ", ", ",\n  "];
        for case in 0..4000 {
            let sep = seps[case % seps.len()];
            let floats: Vec<String> = (0..40)
                .map(|_| {
                    let digits: String = (0..1 + next(12))
                        .map(|_| char::from(b'0' + next(10) as u8))
                        .collect();
                    format!("{}0.{digits}", if next(2) == 0 { "-" } else { "" })
                })
                .collect();
            let mut bytes = format!("[{}]", floats.join(sep)).into_bytes();
            for _ in 0..1 + next(2) {
                let at = 1 + next(bytes.len() - 2);
                let byte = alphabet[next(alphabet.len())];
                match next(3) {
                    0 => bytes[at] = byte,
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, byte),
                }
            }
            let text = String::from_utf8(bytes).unwrap();
            let serde = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            let mut s = Scanner::new(&text);
            let ours = s.value();
            let accepted = ours.is_some() && s.at_end();
            // Exponents the scanner bounds are left to serde (see `number`).
            if accepted || !text.contains(['e', 'E']) {
                assert_eq!(accepted, serde, "{text}");
            }
            if accepted {
                assert_eq!(ours, Some((0, text.len())), "{text}");
            }
        }
    }

    /// The vector compares classify every byte as one at a time would.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn block_classes_are_each_bytes_class() {
        let mut block = [0u8; BLOCK];
        for round in 0..64u8 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (j as u8)
                    .wrapping_mul(37)
                    .wrapping_add(round.wrapping_mul(64));
            }
            if round % 2 == 0 {
                block[..12].copy_from_slice(b"-0.5,\n\t\r 09/");
            }
            let mut want = Classes::default();
            for (j, &b) in block.iter().enumerate() {
                let bit = 1u64 << j;
                let set = |mask: &mut u64, yes: bool| *mask |= if yes { bit } else { 0 };
                set(&mut want.comma, b == b',');
                set(&mut want.minus, b == b'-');
                set(&mut want.dot, b == b'.');
                set(&mut want.digit, b.is_ascii_digit());
                set(&mut want.space, matches!(b, b' ' | b'\n' | b'\r' | b'\t'));
            }
            assert_eq!(classes(&block), Some(want), "round {round}");
        }
    }

    #[test]
    fn word_at_a_time_scans_agree_with_byte_at_a_time() {
        for i in 0..=255u8 {
            for at in 0..16 {
                for fill in [b'0', b'5', b'9'] {
                    let mut w = [fill; 16];
                    w[at] = i;
                    let slow = w.iter().position(|c| !c.is_ascii_digit()).unwrap_or(16);
                    let low = non_digits(word(&w[..8]).expect("8 bytes"));
                    let high = non_digits(word(&w[8..]).expect("8 bytes"));
                    let fast = match (low, high) {
                        (0, 0) => 16,
                        (0, high) => 8 + (high.trailing_zeros() / 8) as usize,
                        (low, _) => (low.trailing_zeros() / 8) as usize,
                    };
                    assert_eq!(fast, slow, "byte {i} at {at}");
                }
            }
        }
        for i in 0..=255u8 {
            for at in 0..12 {
                let mut text = vec![b'5'; 12];
                text[at] = i;
                let slow = text.iter().position(|c| !c.is_ascii_digit()).unwrap_or(12);
                assert_eq!(digits(&text, 0), slow, "byte {i} at {at}");
                let mut plain = vec![b'a'; 8];
                plain[7] = b'"';
                plain[at % 8] = i;
                let x = word(&plain).expect("8 bytes");
                let special = i == b'"' || i == b'\\' || i < 0x20;
                let first = (string_special(x).trailing_zeros() / 8) as usize;
                let expected = match (special, at % 8) {
                    (true, at) => at,
                    // The quote at 7 was overwritten: nothing is flagged.
                    (false, 7) => 8,
                    (false, _) => 7,
                };
                assert_eq!(first, expected, "byte {i} at {at}");
            }
        }
        let long = format!("\"{}\"", "x".repeat(37) + "\\n" + &"\u{e9}".repeat(9));
        assert!(is_json(&long));
        assert!(!is_json(&format!("\"{}\u{1}\"", "x".repeat(17))));
        assert!(is_json("[0.0123456789012345678,-1234567890123e-12,7]"));
    }

    #[test]
    fn spans_and_keys() {
        let text = r#"{"model": "m", "n": [1, 2]}"#;
        let mut s = Scanner::new(text);
        let mut seen = Vec::new();
        s.object(|s, key| {
            let (a, b) = s.value()?;
            seen.push((key, s.slice(a, b)));
            Some(())
        })
        .expect("object");
        assert_eq!(seen, [("model", "\"m\""), ("n", "[1, 2]")]);
        // An escaped key is left to serde.
        assert!(Scanner::new(r#"{"mod\u0065l":1}"#)
            .object(|s, _| s.value().map(drop))
            .is_none());
    }
}
