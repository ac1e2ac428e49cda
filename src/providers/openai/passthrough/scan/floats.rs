//! Arrays of floats (an embedding's 1,536), skipped without reading each
//! number the long way: a float at a time when it has the common shape
//! (`float_end`), and on x86_64 64 bytes at a time (`skip_float_blocks`).
//! What either skips is exactly what [`super::Scanner::number`],
//! a comma and whitespace accept.

use super::{non_digits, word};

/// Past the float at `i` and its comma, when it is of the shape
/// `-?0\.[0-9]{1,15},` ([`super::Scanner::skip_floats`]).
#[inline(always)]
pub(super) fn float_end(b: &[u8], i: usize) -> Option<usize> {
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

/// The bytes [`skip_float_blocks`] checks at once.
pub(super) const BLOCK: usize = 64;

/// From `i`, where an array element (or the whitespace before one) is
/// expected: past the last comma of the blocks of [`BLOCK`] bytes that hold
/// only floats of the shape `-?[0-9]\.[0-9]+`, each followed by a comma and
/// optional whitespace (`i` when the first block holds anything else). What
/// it skips is exactly what [`super::Scanner::number`], a comma and whitespace
/// accept.
///
/// Each block is checked on bit masks of its bytes (bit `j` is byte `j`; a
/// mask shifted left by one is "the byte before"), with the classes of the
/// block's last byte carried into the next. Blocks are taken at a fixed
/// stride, so the next one's loads and compares never wait for this one's
/// verdict.
#[inline]
pub(super) fn skip_float_blocks(b: &[u8], mut i: usize) -> usize {
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
pub(super) struct Classes {
    pub(super) comma: u64,
    pub(super) minus: u64,
    pub(super) dot: u64,
    pub(super) digit: u64,
    pub(super) space: u64,
}

/// Sixteen bytes compared at once: SSE2 is in every x86_64 CPU (part of the
/// target's baseline, which the compiler itself assumes).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(super) fn classes(block: &[u8; BLOCK]) -> Option<Classes> {
    // SAFETY: `classes_sse2` needs SSE2, which every x86_64 target has.
    Some(unsafe { classes_sse2(block) })
}

/// Elsewhere (wasm32, where vector instructions are optional, and other
/// targets) there is no block check: floats are read one at a time.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub(super) fn classes(_block: &[u8; BLOCK]) -> Option<Classes> {
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
