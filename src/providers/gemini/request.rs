//! OpenAI request bodies → Gemini `generateContent` and embedding bodies.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::SIGNATURE_MARK;
use crate::providers::Call;
use crate::wire::error::GatewayError;

fn invalid(message: impl Into<String>, param: &str) -> GatewayError {
    GatewayError::invalid(message, Some(param))
}

/// Whether a parameter is set to something that asks for behaviour.
fn is_set(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

/// Refuses (or, with `drop_unsupported_params`, ignores) what Gemini cannot honour.
fn check_unsupported(call: &Call<'_>, body: &Map<String, Value>) -> Result<(), GatewayError> {
    let mut refused: Vec<&str> = [
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "audio",
        "prediction",
        "web_search_options",
        "functions",
        "function_call",
    ]
    .into_iter()
    .filter(|p| is_set(body.get(*p)))
    .collect();
    // Gemini has no switch to forbid parallel calls.
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        refused.push("parallel_tool_calls");
    }
    if let Some(Value::Array(m)) = body.get("modalities") {
        if m.iter().any(|x| x.as_str() != Some("text")) {
            refused.push("modalities");
        }
    }
    match refused.first() {
        Some(p) if !call.drop_unsupported_params => Err(invalid(
            format!("`{p}` is not supported for this model's provider (Gemini) (set drop_unsupported_params = true on the deployment to ignore it)."),
            p,
        )),
        _ => Ok(()),
    }
}

/// A number parameter, copied as sent.
fn number(body: &Map<String, Value>, key: &str) -> Result<Option<Value>, GatewayError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(_)) => Ok(Some(v.clone())),
        Some(_) => Err(invalid(format!("`{key}` must be a number."), key)),
    }
}

fn integer(body: &Map<String, Value>, key: &str) -> Result<Option<Value>, GatewayError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) if v.is_i64() || v.is_u64() => Ok(Some(v.clone())),
        Some(_) => Err(invalid(format!("`{key}` must be an integer."), key)),
    }
}

/// The `generateContent` body for an OpenAI chat body.
pub(super) fn chat(call: &Call<'_>, body: &Map<String, Value>) -> Result<Value, GatewayError> {
    check_unsupported(call, body)?;
    let (contents, system) = messages(body.get("messages"))?;
    let mut out = Map::new();
    out.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    if let Some(decls) = tools(body.get("tools"))? {
        out.insert("tools".into(), json!([{ "functionDeclarations": decls }]));
    }
    if let Some(config) = tool_choice(body.get("tool_choice"))? {
        out.insert(
            "toolConfig".into(),
            json!({ "functionCallingConfig": config }),
        );
    }
    let config = generation_config(body)?;
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(out))
}

fn generation_config(body: &Map<String, Value>) -> Result<Map<String, Value>, GatewayError> {
    let mut g = Map::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = number(body, from)? {
            g.insert(to.into(), v);
        }
    }
    // `max_completion_tokens` replaces the deprecated `max_tokens`.
    let max = match integer(body, "max_completion_tokens")? {
        Some(v) => Some(v),
        None => integer(body, "max_tokens")?,
    };
    if let Some(v) = max {
        g.insert("maxOutputTokens".into(), v);
    }
    if let Some(v) = integer(body, "seed")? {
        g.insert("seed".into(), v);
    }
    match integer(body, "n")? {
        Some(n) if n.as_u64() != Some(1) => {
            g.insert("candidateCount".into(), n);
        }
        _ => {}
    }
    if let Some(stop) = crate::providers::stop_sequences(body.get("stop"))? {
        g.insert("stopSequences".into(), stop);
    }
    match body.get("response_format") {
        None | Some(Value::Null) => {}
        Some(rf) => match rf.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                g.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                g.insert("responseMimeType".into(), "application/json".into());
                // `responseJsonSchema` takes JSON Schema as OpenAI clients
                // write it (`additionalProperties`, `$defs`…), unlike the
                // older OpenAPI-subset `responseSchema`.
                if let Some(schema) = rf
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .filter(|s| s.is_object())
                {
                    g.insert("responseJsonSchema".into(), schema.clone());
                }
            }
            _ => {
                return Err(invalid(
                    "`response_format.type` must be `text`, `json_object` or `json_schema`.",
                    "response_format",
                ))
            }
        },
    }
    match body.get("reasoning_effort") {
        None | Some(Value::Null) => {}
        Some(Value::String(e)) => {
            let budget = match e.as_str() {
                "none" | "minimal" => 0,
                "low" => 1024,
                "medium" => 8192,
                "high" => 24576,
                _ => {
                    return Err(invalid(
                        "`reasoning_effort` must be one of none, minimal, low, medium, high.",
                        "reasoning_effort",
                    ))
                }
            };
            g.insert("thinkingConfig".into(), json!({ "thinkingBudget": budget }));
        }
        Some(_) => {
            return Err(invalid(
                "`reasoning_effort` must be a string.",
                "reasoning_effort",
            ))
        }
    }
    Ok(g)
}

fn tools(tools: Option<&Value>) -> Result<Option<Vec<Value>>, GatewayError> {
    let items = match tools {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) if items.is_empty() => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("`tools` must be an array.", "tools")),
    };
    let mut decls = Vec::with_capacity(items.len());
    for (i, tool) in items.iter().enumerate() {
        let param = format!("tools[{i}]");
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid(
                format!("`{param}.type`: only `function` tools can be sent to this model's provider (Gemini)."),
                &param,
            ));
        }
        let f = tool.get("function").and_then(Value::as_object);
        let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
        let (Some(f), Some(name)) = (f, name) else {
            return Err(invalid(
                format!("`{param}.function.name` is required."),
                &param,
            ));
        };
        let mut d = Map::new();
        d.insert("name".into(), name.into());
        if let Some(desc) = f.get("description").and_then(Value::as_str) {
            d.insert("description".into(), desc.into());
        }
        if let Some(p) = f.get("parameters").filter(|p| p.is_object()) {
            d.insert("parametersJsonSchema".into(), p.clone());
        }
        decls.push(Value::Object(d));
    }
    Ok(Some(decls))
}

fn tool_choice(choice: Option<&Value>) -> Result<Option<Value>, GatewayError> {
    let bad = || {
        invalid(
            "`tool_choice` must be `auto`, `none`, `required` or {\"type\": \"function\", \"function\": {\"name\": …}}.",
            "tool_choice",
        )
    };
    Ok(Some(match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => json!({"mode": "AUTO"}),
            "none" => json!({"mode": "NONE"}),
            "required" => json!({"mode": "ANY"}),
            _ => return Err(bad()),
        },
        Some(Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(bad)?;
                json!({"mode": "ANY", "allowedFunctionNames": [name]})
            }
            // {"type": "allowed_tools", "allowed_tools": {"mode", "tools": [{"type": "function", "function": {"name"}}]}}
            Some("allowed_tools") => {
                let at = o.get("allowed_tools").ok_or_else(bad)?;
                let mode = match at.get("mode").and_then(Value::as_str) {
                    Some("required") => "ANY",
                    _ => "AUTO",
                };
                let names: Vec<Value> = at
                    .get("tools")
                    .and_then(Value::as_array)
                    .map(|ts| {
                        ts.iter()
                            .filter_map(|t| t.get("function")?.get("name").cloned())
                            .collect()
                    })
                    .unwrap_or_default();
                json!({"mode": mode, "allowedFunctionNames": names})
            }
            _ => return Err(bad()),
        },
        Some(_) => return Err(bad()),
    }))
}

/// Appends parts to the last turn when it has the same role (Gemini wants
/// user and model turns to alternate), else starts a turn.
fn push_turn(contents: &mut Vec<Value>, role: &str, mut parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    if let Some(last) = contents.last_mut() {
        if last.get("role").and_then(Value::as_str) == Some(role) {
            if let Some(Value::Array(p)) = last.get_mut("parts") {
                p.append(&mut parts);
                return;
            }
        }
    }
    contents.push(json!({ "role": role, "parts": parts }));
}

/// `(contents, systemInstruction parts)` for the OpenAI `messages`.
fn messages(messages: Option<&Value>) -> Result<(Vec<Value>, Vec<Value>), GatewayError> {
    let Some(Value::Array(messages)) = messages else {
        return Err(invalid("`messages` must be an array.", "messages"));
    };
    let mut contents = Vec::new();
    let mut system = Vec::new();
    // tool_call_id → function name, from the assistant turns seen so far.
    let mut call_names: HashMap<String, String> = HashMap::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("`{at}.role` is required."), &format!("{at}.role")))?;
        match role {
            "system" | "developer" => system.extend(text_parts(m.get("content"), &at)?),
            "user" => push_turn(&mut contents, "user", user_parts(m.get("content"), &at)?),
            "assistant" => {
                let mut parts = text_parts(m.get("content"), &at)?;
                if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                    for (j, c) in calls.iter().enumerate() {
                        parts.push(function_call(
                            c,
                            &format!("{at}.tool_calls[{j}]"),
                            &mut call_names,
                        )?);
                    }
                }
                push_turn(&mut contents, "model", parts);
            }
            "tool" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                let name = call_names.get(id).ok_or_else(|| {
                    invalid(
                        format!("`{at}.tool_call_id` does not match a tool call of an earlier assistant message."),
                        &format!("{at}.tool_call_id"),
                    )
                })?;
                let part = function_response(name, m.get("content"), &at)?;
                push_turn(&mut contents, "user", vec![part]);
            }
            // The deprecated `function` role names its function itself.
            "function" => {
                let name = m.get("name").and_then(Value::as_str).ok_or_else(|| {
                    invalid(format!("`{at}.name` is required."), &format!("{at}.name"))
                })?;
                let part = function_response(name, m.get("content"), &at)?;
                push_turn(&mut contents, "user", vec![part]);
            }
            other => {
                return Err(invalid(
                    format!("`{at}.role`: unknown role `{other}`."),
                    &format!("{at}.role"),
                ))
            }
        }
    }
    Ok((contents, system))
}

/// The text of a system or assistant message (a string or text parts).
fn text_parts(content: Option<&Value>, at: &str) -> Result<Vec<Value>, GatewayError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({ "text": s })]),
        Some(Value::Array(items)) => {
            let mut parts = Vec::new();
            for (j, p) in items.iter().enumerate() {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") | Some("refusal") => {
                        let key = if p.get("text").is_some() {
                            "text"
                        } else {
                            "refusal"
                        };
                        if let Some(t) =
                            p.get(key).and_then(Value::as_str).filter(|t| !t.is_empty())
                        {
                            parts.push(json!({ "text": t }));
                        }
                    }
                    _ => {
                        let param = format!("{at}.content[{j}]");
                        return Err(invalid(
                            format!("`{param}`: only text parts are accepted in this message."),
                            &param,
                        ));
                    }
                }
            }
            Ok(parts)
        }
        Some(_) => Err(invalid(
            format!("`{at}.content` must be a string or an array of parts."),
            &format!("{at}.content"),
        )),
    }
}

/// A user message: text, images, audio and files.
fn user_parts(content: Option<&Value>, at: &str) -> Result<Vec<Value>, GatewayError> {
    let Some(Value::Array(items)) = content else {
        return text_parts(content, at);
    };
    let mut parts = Vec::new();
    for (j, p) in items.iter().enumerate() {
        let param = format!("{at}.content[{j}]");
        match p.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = p
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    parts.push(json!({ "text": t }));
                }
            }
            Some("image_url") => {
                let url = match p.get("image_url") {
                    Some(Value::String(u)) => Some(u.as_str()),
                    Some(o) => o.get("url").and_then(Value::as_str),
                    None => None,
                };
                let url = url.ok_or_else(|| {
                    invalid(format!("`{param}.image_url.url` is required."), &param)
                })?;
                // http(s) images were fetched and inlined by the core
                // (needs_image_bytes), so only data: URLs remain.
                parts.push(inline_data(url, None, &param)?);
            }
            Some("input_audio") => {
                let a = p.get("input_audio");
                let data = a.and_then(|a| a.get("data")).and_then(Value::as_str);
                let format = a.and_then(|a| a.get("format")).and_then(Value::as_str);
                let (Some(data), Some(format)) = (data, format) else {
                    return Err(invalid(
                        format!("`{param}.input_audio` needs `data` and `format`."),
                        &param,
                    ));
                };
                parts.push(
                    json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}}),
                );
            }
            Some("file") => {
                let data = p
                    .get("file")
                    .and_then(|f| f.get("file_data"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        invalid(
                            format!("`{param}.file.file_data` is required: this model's provider (Gemini) cannot read OpenAI file ids."),
                            &param,
                        )
                    })?;
                parts.push(inline_data(data, Some("application/pdf"), &param)?);
            }
            _ => {
                return Err(invalid(
                    format!("`{param}.type` must be text, image_url, input_audio or file."),
                    &param,
                ))
            }
        }
    }
    Ok(parts)
}

/// `data:{mime};base64,{data}` → `inlineData`. A bare base64 string is
/// accepted where OpenAI accepts one (files), with `bare_mime`.
fn inline_data(url: &str, bare_mime: Option<&str>, param: &str) -> Result<Value, GatewayError> {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((meta, data)) = rest.split_once(',') {
            if let Some(mime) = meta.strip_suffix(";base64").filter(|m| !m.is_empty()) {
                return Ok(json!({"inlineData": {"mimeType": mime, "data": data}}));
            }
        }
        return Err(invalid(
            format!("`{param}`: a data: URL must read data:<media type>;base64,<data>."),
            param,
        ));
    }
    match bare_mime {
        Some(mime) => Ok(json!({"inlineData": {"mimeType": mime, "data": url}})),
        None => Err(invalid(
            format!("`{param}`: only data: and http(s) image URLs are accepted."),
            param,
        )),
    }
}

/// An assistant `tool_calls[]` entry as a `functionCall` part; records its
/// name under its id for the tool results that follow.
fn function_call(
    c: &Value,
    at: &str,
    names: &mut HashMap<String, String>,
) -> Result<Value, GatewayError> {
    let f = c.get("function");
    let name = f
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("`{at}.function.name` is required."), at))?;
    let args = match f.and_then(|f| f.get("arguments")) {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return Err(invalid(
                    format!("`{at}.function.arguments` must be a JSON object."),
                    at,
                ))
            }
        },
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(invalid(
                format!("`{at}.function.arguments` must be a JSON object."),
                at,
            ))
        }
    };
    let id = c.get("id").and_then(Value::as_str).unwrap_or("");
    if !id.is_empty() {
        names.insert(id.to_owned(), name.to_owned());
    }
    let mut part = Map::new();
    part.insert("functionCall".into(), json!({"name": name, "args": args}));
    // Hand Gemini back the signature its call carried (see call_id).
    if let Some((_, sig)) = id.split_once(SIGNATURE_MARK) {
        if !sig.is_empty() {
            part.insert("thoughtSignature".into(), sig.into());
        }
    }
    Ok(Value::Object(part))
}

/// A tool result as a `functionResponse` part. Gemini wants an object: a
/// JSON object result is sent as it is, anything else as `{"result": …}`.
fn function_response(name: &str, content: Option<&Value>, at: &str) -> Result<Value, GatewayError> {
    let text = match content {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        Some(_) => {
            return Err(invalid(
                format!("`{at}.content` must be a string or an array of text parts."),
                &format!("{at}.content"),
            ))
        }
    };
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({ "result": text }),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

/// `(method, body)` for `/v1/embeddings`: `embedContent` for one string,
/// `batchEmbedContents` for an array of strings.
pub(super) fn embeddings(
    resource: &str,
    body: &Map<String, Value>,
) -> Result<(&'static str, Value), GatewayError> {
    let dims = integer(body, "dimensions")?;
    let request = |text: &str| {
        let mut r = Map::new();
        r.insert("model".into(), resource.into());
        r.insert("content".into(), json!({"parts": [{"text": text}]}));
        if let Some(d) = &dims {
            r.insert("outputDimensionality".into(), d.clone());
        }
        Value::Object(r)
    };
    let tokens = || {
        invalid(
            "`input` must be a string or an array of strings: this model's provider (Gemini) does not take token arrays.",
            "input",
        )
    };
    match body.get("input") {
        Some(Value::String(s)) => Ok(("embedContent", request(s))),
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut requests = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => requests.push(request(s)),
                    _ => return Err(tokens()),
                }
            }
            Ok(("batchEmbedContents", json!({ "requests": requests })))
        }
        Some(Value::Array(_)) => Err(invalid("`input` must not be empty.", "input")),
        _ => Err(tokens()),
    }
}
