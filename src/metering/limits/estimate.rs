//! Estimates made before the upstream call: prompt tokens and the completion
//! allowance that admission reserves.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::wire::error::GatewayError;

/// Tokens assumed per image part when estimating a prompt.
pub const IMAGE_TOKENS: u64 = 765;
/// Tokens assumed per chat message for its role and framing.
pub const MESSAGE_TOKENS: u64 = 4;
/// The request fields whose text the prompt estimate counts.
pub const ESTIMATED_FIELDS: [&str; 8] = [
    "messages",
    "tools",
    "functions",
    "prompt",
    "input",
    "suffix",
    "system",
    "instructions",
];

fn text_tokens(v: &Value, bytes: &mut u64, extra: &mut u64) {
    match v {
        Value::String(s) => *bytes = bytes.saturating_add(s.len() as u64),
        Value::Number(_) => *extra = extra.saturating_add(1),
        Value::Array(items) => items.iter().for_each(|i| text_tokens(i, bytes, extra)),
        Value::Object(o) => {
            if o.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t == "image_url" || t == "input_image" || t == "image")
            {
                *extra = extra.saturating_add(IMAGE_TOKENS);
                return;
            }
            o.iter()
                .filter(|(k, _)| k.as_str() != "type" && k.as_str() != "role")
                .for_each(|(_, v)| text_tokens(v, bytes, extra));
        }
        _ => {}
    }
}

/// A fast estimate of a request's prompt tokens, made before the upstream
/// call (no tokenizer): one token per 4 bytes of text in `messages`, `tools`,
/// `prompt` or `input`, and in the front doors' `system` (Messages) and
/// `instructions` (Responses) (rounded up), 4 more per chat message, 765 per
/// image, and one per token id when the prompt is given as token ids.
pub fn estimate_prompt_tokens(body: &Map<String, Value>) -> u64 {
    let (mut bytes, mut extra) = (0u64, 0u64);
    for field in ESTIMATED_FIELDS {
        if let Some(v) = body.get(field) {
            text_tokens(v, &mut bytes, &mut extra);
        }
    }
    if let Some(Value::Array(messages)) = body.get("messages") {
        extra = extra.saturating_add(MESSAGE_TOKENS.saturating_mul(messages.len() as u64));
    }
    bytes.div_ceil(4).saturating_add(extra)
}

/// The largest completion allowance (`max_tokens`, `max_completion_tokens`)
/// a request may ask for. No model writes anywhere near this many tokens; a
/// larger number is a mistake or an attempt to overflow the estimate, and is
/// refused with a 400 rather than admitted.
pub const MAX_COMPLETION_TOKENS: u64 = 10_000_000;
/// The most choices (`n`) a request may ask for (OpenAI's own limit).
pub const MAX_CHOICES: u64 = 128;

/// The completion allowance: `max_completion_tokens`, else `max_tokens`
/// (`max_output_tokens` on the Responses API), else `default` (times `n` choices). A value that is not an integer from
/// 0 to [`MAX_COMPLETION_TOKENS`] (or an `n` outside 1 to [`MAX_CHOICES`])
/// is a 400 naming the parameter: the estimate that admission and budgets
/// rest on must never wrap or be cut short.
pub fn completion_allowance(body: &Map<String, Value>, default: u64) -> Result<u64, GatewayError> {
    completion_allowance_of(|name| body.get(name).map(Cow::Borrowed), default)
}

/// [`completion_allowance`] of a body read field by field through `field`
/// (a scanned body's raw values: no map built to look them up).
pub fn completion_allowance_of<'a>(
    field: impl Fn(&str) -> Option<Cow<'a, Value>>,
    default: u64,
) -> Result<u64, GatewayError> {
    let bounded = |name: &str, min: u64, max: u64| -> Result<Option<u64>, GatewayError> {
        match field(name).as_deref() {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(GatewayError::invalid(
                    format!("`{name}` must be an integer from {min} to {max}."),
                    Some(name),
                )),
            },
        }
    };
    let completion = bounded("max_completion_tokens", 0, MAX_COMPLETION_TOKENS)?;
    let legacy = bounded("max_tokens", 0, MAX_COMPLETION_TOKENS)?;
    let output = bounded("max_output_tokens", 0, MAX_COMPLETION_TOKENS)?;
    let n = bounded("n", 1, MAX_CHOICES)?.unwrap_or(1);
    let max = completion.or(legacy).or(output).unwrap_or(default);
    Ok(max.saturating_mul(n))
}
