//! A Responses API request as a chat-completions request (the table in
//! [`super`]'s doc).

use serde_json::{json, Map, Value};

use crate::frontdoors::{number, positive_int};
use crate::providers::Call;
use crate::wire::error::GatewayError;

fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid(message, Some(param))
}

/// What needs state kept by the provider: refused for translated providers.
fn stateful(param: &str) -> GatewayError {
    invalid(
        format!("`{param}` needs state kept by the provider, which this model's provider does not keep: send the whole conversation in `input` instead."),
        param,
    )
}

/// The chat body for a Responses body.
pub fn to_chat(
    call: &Call<'_>,
    body: &Map<String, Value>,
) -> Result<Map<String, Value>, GatewayError> {
    for param in ["previous_response_id", "conversation", "prompt"] {
        if body.get(param).is_some_and(|v| !v.is_null()) {
            return Err(stateful(param));
        }
    }
    if body.get("store") == Some(&Value::Bool(true)) {
        return Err(stateful("store"));
    }
    if body.get("background") == Some(&Value::Bool(true)) {
        return Err(stateful("background"));
    }
    let mut chat = Map::new();
    if let Some(m) = body.get("model") {
        chat.insert("model".into(), m.clone());
    }
    let mut messages = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(_) => return Err(invalid("`instructions` must be a string.", "instructions")),
    }
    match body.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => input_items(items, &mut messages)?,
        _ => {
            return Err(invalid(
                "`input` must be a string or a list of input items.",
                "input",
            ))
        }
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = tools(body)? {
        chat.insert("tools".into(), tools);
        if let Some(choice) = tool_choice(body)? {
            chat.insert("tool_choice".into(), choice);
        }
        if let Some(p) = body.get("parallel_tool_calls").filter(|p| p.is_boolean()) {
            chat.insert("parallel_tool_calls".into(), p.clone());
        }
    }
    if let Some(format) = response_format(call, body)? {
        chat.insert("response_format".into(), format);
    }
    if let Some(n) = positive_int(body, "max_output_tokens")? {
        chat.insert("max_tokens".into(), n.into());
    }
    for field in ["temperature", "top_p"] {
        if let Some(v) = number(body, field)? {
            chat.insert(field.into(), v);
        }
    }
    if let Some(m) = body.get("metadata").filter(|m| m.is_object()) {
        chat.insert("metadata".into(), m.clone());
    }
    for field in ["safety_identifier", "user"] {
        if let Some(u) = body.get(field).and_then(Value::as_str) {
            chat.insert("user".into(), u.into());
            break;
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

/// Input items in order: messages, function calls (grouped into one
/// assistant turn) and their outputs (`tool` messages).
fn input_items(items: &[Value], messages: &mut Vec<Value>) -> Result<(), GatewayError> {
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let kind = item.get("type").and_then(Value::as_str);
        match kind {
            // An easy input message has a role and no type.
            None | Some("message") => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or("");
                let role = match role {
                    "user" | "assistant" | "system" => role,
                    "developer" => "system",
                    _ => {
                        return Err(invalid(
                            format!("`{param}.role` must be user, assistant, system or developer."),
                            &format!("{param}.role"),
                        ))
                    }
                };
                let content = message_content(item.get("content"), &param)?;
                messages.push(json!({"role": role, "content": content}));
            }
            Some("function_call") => {
                let (Some(call_id), Some(name)) = (
                    item.get("call_id").and_then(Value::as_str),
                    item.get("name").and_then(Value::as_str),
                ) else {
                    return Err(invalid(
                        format!("`{param}` needs a `call_id` and a `name`."),
                        &param,
                    ));
                };
                let arguments = item.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                let call = json!({"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": arguments}});
                // Calls of one turn (and the text before them) form one assistant message.
                match messages.last_mut() {
                    Some(Value::Object(last))
                        if last.get("role") == Some(&Value::from("assistant")) =>
                    {
                        match last.get_mut("tool_calls") {
                            Some(Value::Array(calls)) => calls.push(call),
                            _ => {
                                last.insert("tool_calls".into(), Value::Array(vec![call]));
                            }
                        }
                    }
                    _ => messages.push(
                        json!({"role": "assistant", "content": null, "tool_calls": [call]}),
                    ),
                }
            }
            Some("function_call_output") => {
                let Some(call_id) = item.get("call_id").and_then(Value::as_str) else {
                    return Err(invalid(
                        format!("`{param}.call_id` is required."),
                        &format!("{param}.call_id"),
                    ));
                };
                let output = match item.get("output") {
                    Some(Value::String(s)) => Value::String(s.clone()),
                    Some(Value::Array(parts)) => content_parts(parts, &format!("{param}.output"))?,
                    _ => {
                        return Err(invalid(
                            format!("`{param}.output` must be a string or a list of parts."),
                            &format!("{param}.output"),
                        ))
                    }
                };
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            // Reasoning of an earlier turn: the chat form has no place for it.
            Some("reasoning") => {}
            Some("item_reference") => return Err(stateful(&param)),
            Some(other) => {
                return Err(invalid(
                    format!("`{param}`: input items of type `{other}` are not supported by this model's provider."),
                    &format!("{param}.type"),
                ))
            }
        }
    }
    Ok(())
}

fn message_content(content: Option<&Value>, param: &str) -> Result<Value, GatewayError> {
    match content {
        Some(Value::String(s)) => Ok(Value::String(s.clone())),
        Some(Value::Array(parts)) => content_parts(parts, &format!("{param}.content")),
        _ => Err(invalid(
            format!("`{param}.content` must be a string or a list of parts."),
            &format!("{param}.content"),
        )),
    }
}

/// Content parts: `input_text` / `output_text` / `refusal` as text,
/// `input_image` as `image_url`, `input_file` (inline data) as `file`.
fn content_parts(parts: &[Value], param: &str) -> Result<Value, GatewayError> {
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let pp = format!("{param}[{j}]");
        match p.get("type").and_then(Value::as_str) {
            Some("input_text") | Some("output_text") | Some("text") => {
                let text = p
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("`{pp}.text` must be a string."), &pp))?;
                out.push(json!({"type": "text", "text": text}));
            }
            Some("refusal") => {
                let text = p.get("refusal").and_then(Value::as_str).unwrap_or("");
                out.push(json!({"type": "text", "text": text}));
            }
            Some("input_image") => {
                let Some(url) = p.get("image_url").and_then(Value::as_str) else {
                    return Err(invalid(
                        format!("`{pp}`: images must be given as `image_url` (a URL or a data: URL) on this model's provider; `file_id` needs OpenAI's file store."),
                        &pp,
                    ));
                };
                let mut image = Map::new();
                image.insert("url".into(), url.into());
                if let Some(d) = p.get("detail").and_then(Value::as_str) {
                    image.insert("detail".into(), d.into());
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            Some("input_file") => match p.get("file_data").and_then(Value::as_str) {
                Some(data) => {
                    let mut file = Map::new();
                    file.insert("file_data".into(), data.into());
                    if let Some(n) = p.get("filename").and_then(Value::as_str) {
                        file.insert("filename".into(), n.into());
                    }
                    out.push(json!({"type": "file", "file": file}));
                }
                None => {
                    return Err(invalid(
                        format!("`{pp}`: files must be sent inline as `file_data` on this model's provider."),
                        &pp,
                    ))
                }
            },
            Some(other) => {
                return Err(invalid(
                    format!("`{pp}`: content parts of type `{other}` are not supported by this model's provider."),
                    &pp,
                ))
            }
            None => return Err(invalid(format!("`{pp}.type` is required."), &pp)),
        }
    }
    Ok(Value::Array(out))
}

/// Function tools as chat tools; built-in tools are refused.
fn tools(body: &Map<String, Value>) -> Result<Option<Value>, GatewayError> {
    let list = match body.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(list)) if list.is_empty() => return Ok(None),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(invalid("`tools` must be a list.", "tools")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (k, t) in list.iter().enumerate() {
        let tp = format!("tools[{k}]");
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(invalid(
                    format!("`{tp}`: the built-in tool `{other}` is only available where the provider runs it (OpenAI); this model's provider takes function tools."),
                    &format!("{tp}.type"),
                ))
            }
            None => return Err(invalid(format!("`{tp}.type` is required."), &tp)),
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
            t.get("parameters")
                .filter(|p| p.is_object())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        );
        if let Some(s) = t.get("strict").filter(|s| s.is_boolean()) {
            f.insert("strict".into(), s.clone());
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(Some(Value::Array(out)))
}

fn tool_choice(body: &Map<String, Value>) -> Result<Option<Value>, GatewayError> {
    match body.get("tool_choice") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if ["auto", "none", "required"].contains(&s.as_str()) => {
            Ok(Some(Value::String(s.clone())))
        }
        Some(c) if c.get("type").and_then(Value::as_str) == Some("function") => {
            match c.get("name").and_then(Value::as_str) {
                Some(name) => Ok(Some(json!({"type": "function", "function": {"name": name}}))),
                None => Err(invalid("`tool_choice.name` is required.", "tool_choice.name")),
            }
        }
        Some(_) => Err(invalid(
            "`tool_choice` must be auto, none, required or {\"type\": \"function\", \"name\": …} on this model's provider.",
            "tool_choice",
        )),
    }
}

/// `text.format` as `response_format`.
fn response_format(
    call: &Call<'_>,
    body: &Map<String, Value>,
) -> Result<Option<Value>, GatewayError> {
    let Some(format) = body
        .get("text")
        .and_then(|t| t.get("format"))
        .filter(|f| !f.is_null())
    else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut js = Map::new();
            js.insert(
                "name".into(),
                format
                    .get("name")
                    .cloned()
                    .unwrap_or_else(|| "response".into()),
            );
            for k in ["schema", "strict", "description"] {
                if let Some(v) = format.get(k).filter(|v| !v.is_null()) {
                    js.insert(k.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": js})))
        }
        _ if call.drop_unsupported_params => Ok(None),
        _ => Err(invalid(
            "`text.format.type` must be text, json_object or json_schema.",
            "text.format",
        )),
    }
}
