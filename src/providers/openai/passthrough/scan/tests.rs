//! The scanner against `serde_json`: what each accepts (float arrays read
//! in blocks among them), the spans and keys it hands back.

use super::floats::{classes, Classes, BLOCK};
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
