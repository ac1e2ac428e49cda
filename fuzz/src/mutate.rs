//! A JSON-aware mutator for the targets whose input is, or carries, JSON
//! (request bodies, provider answers, SSE `data:` lines).
//!
//! libFuzzer's byte mutations mostly break JSON, so values deep inside a
//! valid document (a token count of `2^64 - 1`, a string where a number
//! goes, a missing key) are seldom reached. Half of the mutations here
//! parse the JSON, change one value in it and write it back; the other half
//! (and every input that holds no JSON) go to libFuzzer's own mutator.

use serde_json::{Map, Value};

/// A small deterministic generator (xorshift64*), seeded by libFuzzer.
struct Rng(u64);

impl Rng {
    fn new(seed: u32) -> Self {
        Rng(u64::from(seed) ^ 0x9e37_79b9_7f4a_7c15)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Numbers at the edges of what the gateway's arithmetic and JSON's
/// integer types hold.
fn edge_number(rng: &mut Rng) -> Value {
    match rng.below(14) {
        0 => 0.into(),
        1 => 1.into(),
        2 => (-1).into(),
        3 => u64::MAX.into(),
        4 => (u64::MAX - 1).into(),
        5 => i64::MAX.into(),
        6 => i64::MIN.into(),
        7 => (1u64 << 53).into(),
        8 => (1u64 << 32).into(),
        9 => 0.5.into(),
        10 => 1e308.into(),
        11 => (-1e308).into(),
        12 => 1e-9.into(),
        _ => (rng.next() >> rng.below(64)).into(),
    }
}

fn edge_string(rng: &mut Rng, strings: &[String]) -> Value {
    match rng.below(7) {
        0 => "".into(),
        1 => "x".repeat(1 + rng.below(3000)).into(),
        2 => "\u{0}\r\n\"\\".into(),
        3 => "h\u{e9}llo \u{1F600}".into(),
        4 => "18446744073709551615".into(),
        _ if !strings.is_empty() => strings[rng.below(strings.len())].clone().into(),
        _ => "data:image/png;base64,iVBORw0KGgo=".into(),
    }
}

fn any_value(rng: &mut Rng, strings: &[String]) -> Value {
    match rng.below(7) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => edge_number(rng),
        3 => edge_string(rng, strings),
        4 => Value::Array(Vec::new()),
        5 => Value::Object(Map::new()),
        _ => Value::Array(vec![edge_string(rng, strings)]),
    }
}

/// Every string in the document (keys included), to reuse as values.
fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.len() < 200 => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|i| collect_strings(i, out)),
        Value::Object(o) => o.iter().for_each(|(k, i)| {
            out.push(k.clone());
            collect_strings(i, out)
        }),
        _ => {}
    }
}

fn count_nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count_nodes).sum(),
        Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// The `n`th node in pre-order.
fn nth_node<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
    if *n == 0 {
        return Some(v);
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter_mut().find_map(|i| nth_node(i, n)),
        Value::Object(o) => o.values_mut().find_map(|i| nth_node(i, n)),
        _ => None,
    }
}

/// Changes one value of `doc`.
fn mutate_value(doc: &mut Value, rng: &mut Rng) {
    let mut strings = Vec::new();
    collect_strings(doc, &mut strings);
    let mut n = rng.below(count_nodes(doc));
    let Some(node) = nth_node(doc, &mut n) else {
        return;
    };
    match node {
        Value::Number(_) if rng.below(4) != 0 => *node = edge_number(rng),
        Value::String(_) if rng.below(3) != 0 => *node = edge_string(rng, &strings),
        Value::Object(o) if !o.is_empty() && rng.below(2) == 0 => {
            let k = o
                .keys()
                .nth(rng.below(o.len()))
                .cloned()
                .unwrap_or_default();
            if rng.below(2) == 0 {
                o.remove(&k);
            } else if let Some(s) = strings.get(rng.below(strings.len())) {
                let v = any_value(rng, &strings);
                o.insert(s.clone(), v);
            }
        }
        Value::Array(a) if !a.is_empty() && rng.below(2) == 0 => {
            let i = rng.below(a.len());
            if rng.below(2) == 0 {
                a.remove(i);
            } else {
                let copy = a[i].clone();
                a.insert(i, copy);
            }
        }
        _ => *node = any_value(rng, &strings),
    }
}

/// `bytes` as JSON, mutated and written back; `None` if it is not JSON.
fn mutate_json(bytes: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(bytes).ok()?;
    if !(doc.is_object() || doc.is_array()) {
        return None;
    }
    mutate_value(&mut doc, rng);
    serde_json::to_vec(&doc).ok()
}

/// The input with one JSON value changed: the input from its first `{` or
/// `[` (a prefix such as `gateway_upstream`'s two bytes is kept), or one
/// SSE `data:` line.
fn mutate_structured(input: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let start = input.iter().position(|b| *b == b'{' || *b == b'[')?;
    if let Some(json) = mutate_json(&input[start..], rng) {
        let mut out = input[..start].to_vec();
        out.extend_from_slice(&json);
        return Some(out);
    }
    // SSE: pick one `data:` line holding JSON.
    let lines: Vec<(usize, usize)> = {
        let mut v = Vec::new();
        let mut at = 0;
        for line in input.split(|b| *b == b'\n') {
            if line.starts_with(b"data:") {
                v.push((at, at + line.len()));
            }
            at += line.len() + 1;
        }
        v
    };
    if lines.is_empty() {
        return None;
    }
    let (from, to) = lines[rng.below(lines.len())];
    let line = &input[from..to];
    let json_at = line.iter().position(|b| *b == b'{' || *b == b'[')?;
    let json = mutate_json(
        line[json_at..]
            .strip_suffix(b"\r")
            .unwrap_or(&line[json_at..]),
        rng,
    )?;
    let mut out = input[..from + json_at].to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&input[to..]);
    Some(out)
}

/// The body of a `fuzz_mutator!`: half structured, half libFuzzer's own.
pub fn mutate(data: &mut [u8], size: usize, max_size: usize, seed: u32) -> usize {
    let mut rng = Rng::new(seed);
    if rng.below(2) == 0 {
        if let Some(out) = mutate_structured(&data[..size], &mut rng) {
            if out.len() <= max_size && out.len() <= data.len() {
                data[..out.len()].copy_from_slice(&out);
                return out.len();
            }
        }
    }
    libfuzzer_sys::fuzzer_mutate(data, size, max_size)
}
