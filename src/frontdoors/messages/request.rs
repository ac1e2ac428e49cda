//! A Messages API request as a chat-completions request (the table in
//! [`super`]'s doc).

use serde_json::{json, Map, Value};

use crate::frontdoors::{number, positive_int};
use crate::providers::Call;
use crate::wire::error::GatewayError;

fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid(message, Some(param))
}

/// Fields of the Messages API that the chat form cannot carry: a 400
/// naming them, or dropped with `drop_unsupported_params`.
const UNSUPPORTED: [&str; 3] = ["top_k", "container", "mcp_servers"];

/// The chat body for a Messages body. `max_tokens` is required, as the
/// Messages API requires it.
pub fn to_chat(
    call: &Call<'_>,
    body: &Map<String, Value>,
) -> Result<Map<String, Value>, GatewayError> {
    let mut chat = prompt_to_chat(body)?;
    let max_tokens = positive_int(body, "max_tokens")?
        .ok_or_else(|| invalid("max_tokens: Field required", "max_tokens"))?;
    chat.insert("max_tokens".into(), max_tokens.into());
    for name in UNSUPPORTED {
        if body.get(name).is_some_and(|v| !v.is_null()) && !call.drop_unsupported_params {
            return Err(invalid(
                format!("`{name}` is not supported by this model's provider. Remove it, or set drop_unsupported_params = true on the deployment to ignore it."),
                name,
            ));
        }
    }
    for field in ["temperature", "top_p"] {
        if let Some(v) = number(body, field)? {
            chat.insert(field.into(), v);
        }
    }
    match body.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(s)) if s.iter().all(Value::is_string) => {
            if !s.is_empty() {
                chat.insert("stop".into(), Value::Array(s.clone()));
            }
        }
        Some(_) => {
            return Err(invalid(
                "`stop_sequences` must be a list of strings.",
                "stop_sequences",
            ))
        }
    }
    match body.get("metadata").and_then(|m| m.get("user_id")) {
        None | Some(Value::Null) => {}
        Some(Value::String(u)) => {
            chat.insert("user".into(), u.as_str().into());
        }
        Some(_) => {
            return Err(invalid(
                "`metadata.user_id` must be a string.",
                "metadata.user_id",
            ))
        }
    }
    if let Some(format) = body
        .get("output_config")
        .and_then(|o| o.get("format"))
        .filter(|f| !f.is_null())
    {
        match (
            format.get("type").and_then(Value::as_str),
            format.get("schema"),
        ) {
            (Some("json_schema"), Some(schema)) if schema.is_object() => {
                chat.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}),
                );
            }
            _ => {
                return Err(invalid(
                    "`output_config.format` must be {\"type\": \"json_schema\", \"schema\": {…}}.",
                    "output_config.format",
                ))
            }
        }
    }
    match body.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            chat.insert("stream".into(), true.into());
        }
        Some(_) => return Err(invalid("`stream` must be a boolean.", "stream")),
    }
    Ok(chat)
}

/// `model`, `system`, `messages`, `tools` and `tool_choice` as chat: what
/// both `/v1/messages` and `count_tokens` carry.
pub fn prompt_to_chat(body: &Map<String, Value>) -> Result<Map<String, Value>, GatewayError> {
    let mut chat = Map::new();
    if let Some(m) = body.get("model") {
        chat.insert("model".into(), m.clone());
    }
    let mut messages = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                let text = b
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|_| b.get("type").and_then(Value::as_str) == Some("text"));
                let Some(text) = text else {
                    return Err(invalid(
                        format!("`system[{i}]` must be a text block."),
                        &format!("system[{i}]"),
                    ));
                };
                parts.push(text_part(text, b));
            }
            if !parts.is_empty() {
                messages.push(json!({"role": "system", "content": parts}));
            }
        }
        Some(_) => {
            return Err(invalid(
                "`system` must be a string or a list of text blocks.",
                "system",
            ))
        }
    }
    let Some(list) = body.get("messages").and_then(Value::as_array) else {
        return Err(invalid("messages: Field required (a list)", "messages"));
    };
    for (i, m) in list.iter().enumerate() {
        let param = format!("messages[{i}]");
        match m.get("role").and_then(Value::as_str) {
            Some("user") => user_message(m.get("content"), &param, &mut messages)?,
            Some("assistant") => messages.push(assistant_message(m.get("content"), &param)?),
            _ => {
                return Err(invalid(
                    format!("`{param}.role` must be `user` or `assistant`."),
                    &format!("{param}.role"),
                ))
            }
        }
    }
    chat.insert("messages".into(), Value::Array(messages));
    let (tools, choice, parallel) = tools(body)?;
    if let Some(t) = tools {
        chat.insert("tools".into(), t);
    }
    if let Some(c) = choice {
        chat.insert("tool_choice".into(), c);
    }
    if let Some(p) = parallel {
        chat.insert("parallel_tool_calls".into(), p.into());
    }
    Ok(chat)
}

fn text_part(text: &str, block: &Value) -> Value {
    let mut p = Map::new();
    p.insert("type".into(), "text".into());
    p.insert("text".into(), text.into());
    // Prompt caching marks reach providers that honour them (Anthropic via chat).
    if let Some(cc) = block.get("cache_control").filter(|c| c.is_object()) {
        p.insert("cache_control".into(), cc.clone());
    }
    Value::Object(p)
}

/// An `image` block as an `image_url` part.
fn image_part(block: &Value, param: &str) -> Result<Value, GatewayError> {
    let source = block.get("source");
    let kind = source.and_then(|s| s.get("type")).and_then(Value::as_str);
    let url = match kind {
        Some("base64") => {
            let media = source
                .and_then(|s| s.get("media_type"))
                .and_then(Value::as_str);
            let data = source.and_then(|s| s.get("data")).and_then(Value::as_str);
            match (media, data) {
                (Some(m), Some(d)) => format!("data:{m};base64,{d}"),
                _ => {
                    return Err(invalid(
                        format!("`{param}.source` needs `media_type` and `data`."),
                        &format!("{param}.source"),
                    ))
                }
            }
        }
        Some("url") => match source.and_then(|s| s.get("url")).and_then(Value::as_str) {
            Some(u) => u.to_owned(),
            None => {
                return Err(invalid(
                    format!("`{param}.source.url` must be a string."),
                    &format!("{param}.source.url"),
                ))
            }
        },
        _ => {
            return Err(invalid(
                format!(
                    "`{param}.source.type` must be `base64` or `url` on this model's provider."
                ),
                &format!("{param}.source.type"),
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A `document` block (a base64 PDF) as a `file` part.
fn document_part(block: &Value, param: &str) -> Result<Value, GatewayError> {
    let source = block.get("source");
    let media = source
        .and_then(|s| s.get("media_type"))
        .and_then(Value::as_str);
    let data = source.and_then(|s| s.get("data")).and_then(Value::as_str);
    match (
        source.and_then(|s| s.get("type")).and_then(Value::as_str),
        media,
        data,
    ) {
        (Some("base64"), Some(m), Some(d)) => Ok(json!({"type": "file", "file": {
            "filename": block.get("title").and_then(Value::as_str).unwrap_or("document.pdf"),
            "file_data": format!("data:{m};base64,{d}")}})),
        _ => Err(invalid(
            format!("`{param}`: only base64 documents are supported by this model's provider."),
            param,
        )),
    }
}

/// A user message: `tool_result` blocks become `tool` messages (in order,
/// before the rest), the other blocks one user message.
fn user_message(
    content: Option<&Value>,
    param: &str,
    messages: &mut Vec<Value>,
) -> Result<(), GatewayError> {
    let blocks = match content {
        Some(Value::String(s)) => {
            messages.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(invalid(
                format!("`{param}.content` must be a string or a list of blocks."),
                &format!("{param}.content"),
            ))
        }
    };
    let mut parts = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bp = format!("{param}.content[{j}]");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = b
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("`{bp}.text` must be a string."), &bp))?;
                parts.push(text_part(text, b));
            }
            Some("image") => parts.push(image_part(b, &bp)?),
            Some("document") => parts.push(document_part(b, &bp)?),
            Some("tool_result") => {
                // A tool result answers a call of the previous turn: it goes
                // before whatever text this turn adds, as Anthropic requires.
                let id = b
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("`{bp}.tool_use_id` is required."), &bp))?;
                let mut content = tool_result_content(b.get("content"), &bp)?;
                if b.get("is_error") == Some(&Value::Bool(true)) {
                    content = match content {
                        Value::String(s) => Value::String(format!("Error: {s}")),
                        other => other,
                    };
                }
                if !parts.is_empty() {
                    messages.push(json!({"role": "user", "content": std::mem::take(&mut parts)}));
                }
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": content}));
            }
            Some("thinking") | Some("redacted_thinking") => {}
            Some(other) => {
                return Err(invalid(
                    format!(
                    "`{bp}`: blocks of type `{other}` are not supported by this model's provider."
                ),
                    &bp,
                ))
            }
            None => return Err(invalid(format!("`{bp}.type` is required."), &bp)),
        }
    }
    if !parts.is_empty() {
        messages.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// A `tool_result`'s content: a string stays a string; text (and image)
/// blocks become parts.
fn tool_result_content(content: Option<&Value>, param: &str) -> Result<Value, GatewayError> {
    match content {
        None | Some(Value::Null) => Ok(Value::String(String::new())),
        Some(Value::String(s)) => Ok(Value::String(s.clone())),
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (k, b) in blocks.iter().enumerate() {
                let bp = format!("{param}.content[{k}]");
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => parts.push(text_part(
                        b.get("text").and_then(Value::as_str).unwrap_or(""),
                        b,
                    )),
                    Some("image") => parts.push(image_part(b, &bp)?),
                    _ => {
                        return Err(invalid(
                            format!("`{bp}`: a tool result holds text or image blocks."),
                            &bp,
                        ))
                    }
                }
            }
            // One text part is sent as a string: every provider takes that.
            if let [one] = &parts[..] {
                if one["type"] == "text" && one.get("cache_control").is_none() {
                    return Ok(one["text"].clone());
                }
            }
            Ok(Value::Array(parts))
        }
        Some(_) => Err(invalid(
            format!("`{param}.content` must be a string or a list of blocks."),
            &format!("{param}.content"),
        )),
    }
}

/// An assistant turn: text blocks as `content`, `tool_use` blocks as `tool_calls`.
fn assistant_message(content: Option<&Value>, param: &str) -> Result<Value, GatewayError> {
    let blocks = match content {
        Some(Value::String(s)) => return Ok(json!({"role": "assistant", "content": s})),
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(invalid(
                format!("`{param}.content` must be a string or a list of blocks."),
                &format!("{param}.content"),
            ))
        }
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bp = format!("{param}.content[{j}]");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let (Some(id), Some(name)) = (
                    b.get("id").and_then(Value::as_str),
                    b.get("name").and_then(Value::as_str),
                ) else {
                    return Err(invalid(format!("`{bp}` needs an `id` and a `name`."), &bp));
                };
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({"id": id, "type": "function", "function": {
                    "name": name,
                    "arguments": serde_json::to_string(&input).unwrap_or_else(|_| "{}".into()),
                }}));
            }
            // Reasoning of an earlier turn: the chat form has no place for it.
            Some("thinking") | Some("redacted_thinking") => {}
            Some(other) => {
                return Err(invalid(
                    format!(
                    "`{bp}`: blocks of type `{other}` are not supported by this model's provider."
                ),
                    &bp,
                ))
            }
            None => return Err(invalid(format!("`{bp}.type` is required."), &bp)),
        }
    }
    let mut m = Map::new();
    m.insert("role".into(), "assistant".into());
    m.insert(
        "content".into(),
        if text.is_empty() && !calls.is_empty() {
            Value::Null
        } else {
            text.into()
        },
    );
    if !calls.is_empty() {
        m.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(m))
}

/// `tools`, `tool_choice` and (from `disable_parallel_tool_use`) `parallel_tool_calls`.
#[allow(clippy::type_complexity)]
fn tools(
    body: &Map<String, Value>,
) -> Result<(Option<Value>, Option<Value>, Option<bool>), GatewayError> {
    let tools = match body.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => {
            let mut out = Vec::with_capacity(list.len());
            for (k, t) in list.iter().enumerate() {
                let tp = format!("tools[{k}]");
                match t.get("type").and_then(Value::as_str) {
                    None | Some("custom") => {}
                    Some(other) => {
                        return Err(invalid(
                            format!("`{tp}`: the server tool `{other}` is not supported by this model's provider; only client tools (name, input_schema) are."),
                            &format!("{tp}.type"),
                        ))
                    }
                }
                let Some(name) = t.get("name").and_then(Value::as_str) else {
                    return Err(invalid(format!("`{tp}.name` is required."), &tp));
                };
                let mut f = Map::new();
                f.insert("name".into(), name.into());
                if let Some(d) = t.get("description").filter(|d| d.is_string()) {
                    f.insert("description".into(), d.clone());
                }
                f.insert(
                    "parameters".into(),
                    t.get("input_schema")
                        .filter(|s| s.is_object())
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                );
                out.push(json!({"type": "function", "function": f}));
            }
            Some(Value::Array(out))
        }
        Some(_) => return Err(invalid("`tools` must be a list.", "tools")),
    };
    let choice = body.get("tool_choice").filter(|c| !c.is_null());
    let Some(choice) = choice else {
        return Ok((tools, None, None));
    };
    let parallel =
        (choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true))).then_some(false);
    let mapped = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice.get("name").and_then(Value::as_str) {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => {
                return Err(invalid(
                    "`tool_choice.name` is required.",
                    "tool_choice.name",
                ))
            }
        },
        _ => {
            return Err(invalid(
                "`tool_choice.type` must be auto, any, tool or none.",
                "tool_choice.type",
            ))
        }
    };
    if tools.is_none() {
        // Chat refuses a tool_choice without tools; with none there is nothing to choose.
        return Ok((None, None, None));
    }
    Ok((tools, Some(mapped), parallel))
}
