//! `bench-frontdoors`: what the front doors (`/v1/responses`, `/v1/messages`)
//! add per request and per stream event over chat-completions pass-through,
//! in process (no network, no server), on recorded payloads.
//!
//! Baseline: a chat body to an OpenAI-wire provider (`build_request` +
//! `translate_response`) and its recorded stream (decoder `feed` per event +
//! what the relay writes for each chunk: `model` set, serialised, framed).
//! Translated front doors run the same provider (an OpenAI-compatible host,
//! so the provider's own translation is nil and only the front door's shows):
//! the client's body through the chat form and the answer back, the stream's
//! chunks through the front door's encoder. Passed-through front doors run
//! their own provider (OpenAI for Responses, Anthropic for Messages) on their
//! recorded answers and streams. Median of interleaved batches; `--help`.

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use conduit::frontdoors::messages::stream::MessagesEncoder;
use conduit::frontdoors::responses::stream::ResponsesEncoder;
use conduit::frontdoors::StreamEncoder;
use conduit::providers::{Call, Endpoint, Provider, StreamEvent};
use conduit::wire::sse::encode_data;
use conduit::Config;
use conduit_bench::{err, Args, Result};
use serde_json::{json, Map, Value};

const HELP: &str = "\
bench-frontdoors: per-request and per-stream-event cost the Responses and Messages front doors
add over chat-completions pass-through (in process, recorded payloads of tests/fixtures/).

Options:
  --iters N      requests per batch (default 20000)
  --streams N    whole streams per batch (default 5000)
  --batches N    timed batches per job; the median is reported (default 7)
  --out FILE     also write the markdown report to FILE
  --help
";

macro_rules! fixture {
    ($path:literal) => {
        include_bytes!(concat!("../../../../tests/fixtures/", $path)).as_slice()
    };
}

/// Targets over pass-through, µs.
const TARGET_REQUEST_US: f64 = 20.0;
const TARGET_EVENT_US: f64 = 2.0;

/// A chat answer of gpt-4o-mini's shape (no recorded non-stream one exists).
const CHAT_ANSWER: &str = r#"{"id":"chatcmpl-BnchFr0ntD00rsAbCdEfGhIjKl","object":"chat.completion","created":1782955818,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Paris is mild today, around 18 °C with light rain expected in the afternoon, so pack a small umbrella.","tool_calls":[{"id":"call_Qx7bV1mZk2N9pLs4Tt8wYc3D","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"celsius\"}"}}],"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":183,"completion_tokens":52,"total_tokens":235,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_d0469e1700"}"#;

const SYSTEM: &str = "You are a concise travel assistant. Answer in at most three sentences, use metric units, and call a tool whenever the answer depends on live data such as the weather or the local time.";
const USER: &str = "I land in Paris tomorrow morning. What is the weather like there right now, what time is it in Paris, and should I pack an umbrella?";

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(o) => o,
        _ => Map::new(),
    }
}

fn weather_schema() -> Value {
    json!({"type": "object", "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"], "additionalProperties": false})
}

fn time_schema() -> Value {
    json!({"type": "object", "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}},
        "required": ["city"], "additionalProperties": false})
}

/// The same request in the three APIs: a system prompt, a user message, two tools (~1 KB).
fn chat_body() -> Map<String, Value> {
    object(json!({"model": "bench",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Current weather conditions for a city.", "parameters": weather_schema()}},
            {"type": "function", "function": {"name": "get_local_time", "description": "Current local time in a city.", "parameters": time_schema()}}],
        "tool_choice": "auto", "temperature": 0.3, "max_tokens": 512, "user": "user-1234"}))
}

fn responses_body() -> Map<String, Value> {
    object(json!({"model": "bench", "instructions": SYSTEM,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": USER}]}],
        "tools": [
            {"type": "function", "name": "get_weather", "description": "Current weather conditions for a city.", "parameters": weather_schema()},
            {"type": "function", "name": "get_local_time", "description": "Current local time in a city.", "parameters": time_schema()}],
        "tool_choice": "auto", "temperature": 0.3, "max_output_tokens": 512, "user": "user-1234"}))
}

fn messages_body() -> Map<String, Value> {
    object(
        json!({"model": "bench", "system": SYSTEM, "max_tokens": 512,
        "messages": [{"role": "user", "content": [{"type": "text", "text": USER}]}],
        "tools": [
            {"name": "get_weather", "description": "Current weather conditions for a city.", "input_schema": weather_schema()},
            {"name": "get_local_time", "description": "Current local time in a city.", "input_schema": time_schema()}],
        "tool_choice": {"type": "auto"}, "temperature": 0.3, "metadata": {"user_id": "user-1234"}}),
    )
}

/// An SSE body cut after each event.
fn split_sse(body: &[u8]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i + 1 < body.len() {
        if body[i] == b'\n' && body[i + 1] == b'\n' {
            pieces.push(body[start..i + 2].to_vec());
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    if start < body.len() {
        pieces.push(body[start..].to_vec());
    }
    pieces
}

/// One recorded event a line, framed as OpenAI sends Responses events.
fn responses_sse(jsonl: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in jsonl.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let kind = serde_json::from_slice::<Value>(line)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        out.extend_from_slice(format!("event: {kind}\ndata: ").as_bytes());
        out.extend_from_slice(line);
        out.extend_from_slice(b"\n\n");
    }
    out
}

fn secret(var: &str) -> Option<String> {
    (var == "BENCH_API_KEY").then(|| "bench-provider-key-0123456789abcdef".to_owned())
}

/// The configured provider (wrapped behind the front doors, as the gateway has it).
fn provider(kind: &str, base_url: &str, model: &str) -> Result<std::sync::Arc<dyn Provider>> {
    let key = if kind == "openai-compatible" {
        String::new()
    } else {
        "api_key_env = \"BENCH_API_KEY\"\n".to_owned()
    };
    let text = format!(
        "[providers.p]\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\n{key}\n[models.bench]\ndeployments = [{{ provider = \"p\", model = \"{model}\" }}]\n"
    );
    let config =
        Config::parse(&text, "bench-frontdoors", &secret).map_err(|e| err(e.to_string()))?;
    Ok(config.models["bench"].deployments[0].provider.clone())
}

fn call(endpoint: Endpoint, stream: bool) -> Call<'static> {
    Call {
        endpoint,
        model: "m",
        stream,
        now_secs: 1_782_955_818,
        request_id: "req_bench0123456789abcdef",
        drop_unsupported_params: false,
    }
}

/// What the relay writes for a passed-through or translated stream.
enum Writer {
    /// OpenAI chunks: `model` set, serialised, `data:` framed.
    Chat,
    Responses,
    Messages,
}

struct Case {
    label: &'static str,
    endpoint: Endpoint,
    provider: std::sync::Arc<dyn Provider>,
    body: fn() -> Map<String, Value>,
    answer: Vec<u8>,
    stream: Vec<Vec<u8>>,
    writer: Writer,
}

impl Case {
    fn request(&self, iters: usize) -> Result<f64> {
        let c = call(self.endpoint, false);
        let bodies: Vec<Map<String, Value>> = (0..iters).map(|_| (self.body)()).collect();
        let t0 = Instant::now();
        for mut body in bodies {
            let r = self
                .provider
                .build_request(&c, &mut body)
                .map_err(|e| err(format!("{}: build_request: {e}", self.label)))?;
            black_box(r);
            let o = self
                .provider
                .translate_response(&c, black_box(&self.answer))
                .map_err(|e| err(format!("{}: translate_response: {e}", self.label)))?;
            black_box(o);
        }
        Ok(t0.elapsed().as_secs_f64() * 1e6 / iters as f64)
    }

    /// µs per upstream event, and the bytes written for one whole stream.
    fn stream(&self, streams: usize) -> Result<(f64, usize)> {
        let c = call(self.endpoint, true);
        let alias = Value::String("bench".into());
        let mut written = 0;
        let t0 = Instant::now();
        for _ in 0..streams {
            let mut decoder = self.provider.stream_decoder(&c);
            let mut encoder: Option<Box<dyn StreamEncoder>> = match self.writer {
                Writer::Chat => None,
                Writer::Responses => Some(Box::new(ResponsesEncoder::new(
                    alias.clone(),
                    c.request_id,
                    c.now_secs,
                ))),
                Writer::Messages => {
                    Some(Box::new(MessagesEncoder::new(alias.clone(), c.request_id)))
                }
            };
            let mut events = Vec::with_capacity(8);
            let mut out = BytesMut::with_capacity(1024);
            let mut usage = None;
            for piece in &self.stream {
                decoder.feed(black_box(piece), &mut events);
                for ev in events.drain(..) {
                    match ev {
                        StreamEvent::Chunk(mut chunk) => {
                            if let Some(u) = chunk.remove("usage") {
                                usage = Some(u);
                            }
                            if chunk
                                .get("choices")
                                .and_then(Value::as_array)
                                .is_none_or(|c| c.is_empty())
                            {
                                continue;
                            }
                            chunk.insert("model".into(), alias.clone());
                            match encoder.as_mut() {
                                Some(e) => e.chunk(&chunk, &mut out),
                                None => {
                                    let json = serde_json::to_vec(&chunk).unwrap_or_default();
                                    encode_data(&mut out, &json);
                                }
                            }
                        }
                        StreamEvent::Native(n) => match encoder.as_mut() {
                            Some(e) => e.native(&n, &mut out),
                            None => encode_data(&mut out, n.data.as_bytes()),
                        },
                        StreamEvent::Done => {
                            if let Some(e) = encoder.as_mut() {
                                e.complete(usage.as_ref(), &mut out);
                            }
                        }
                        StreamEvent::Error(e) => return Err(err(format!("{}: {e}", self.label))),
                    }
                }
            }
            decoder.finish(&mut events);
            written = out.len();
            black_box(out);
        }
        let per_event = t0.elapsed().as_secs_f64() * 1e6 / (streams * self.stream.len()) as f64;
        Ok((per_event, written))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse(std::env::args().skip(1), &["help"])?;
    if args.flag("help") {
        print!("{HELP}");
        return Ok(());
    }
    let iters: usize = args.parse_or("iters", 20_000)?;
    let streams: usize = args.parse_or("streams", 5_000)?;
    let batches: usize = args.parse_or("batches", 7)?.max(1);
    let openai_text = split_sse(fixture!(
        "openai/chat.completions.stream.text.include_usage.sse"
    ));
    let chat_answer = CHAT_ANSWER.as_bytes().to_vec();
    let compact = |b: &[u8]| {
        serde_json::from_slice::<Value>(b)
            .and_then(|v| serde_json::to_vec(&v))
            .unwrap_or_default()
    };
    let cases = vec![
        Case {
            label: "chat completions, OpenAI-wire (pass-through baseline)",
            endpoint: Endpoint::ChatCompletions,
            provider: provider("openai-compatible", "http://h/v1", "m")?,
            body: chat_body,
            answer: chat_answer.clone(),
            stream: openai_text.clone(),
            writer: Writer::Chat,
        },
        Case {
            label: "/v1/responses translated (to an OpenAI-wire chat provider)",
            endpoint: Endpoint::Responses,
            provider: provider("openai-compatible", "http://h/v1", "m")?,
            body: responses_body,
            answer: chat_answer.clone(),
            stream: openai_text.clone(),
            writer: Writer::Responses,
        },
        Case {
            label: "/v1/responses passed through (OpenAI)",
            endpoint: Endpoint::Responses,
            provider: provider("openai", "http://h/v1", "m")?,
            body: responses_body,
            answer: compact(fixture!(
                "openai-responses/issue-20047-openai-responses.json"
            )),
            stream: split_sse(&responses_sse(fixture!(
                "openai-responses/issue-20047-openai-responses.chunks.txt"
            ))),
            writer: Writer::Responses,
        },
        Case {
            label: "/v1/messages translated (to an OpenAI-wire chat provider)",
            endpoint: Endpoint::Messages,
            provider: provider("openai-compatible", "http://h/v1", "m")?,
            body: messages_body,
            answer: chat_answer,
            stream: openai_text,
            writer: Writer::Messages,
        },
        Case {
            label: "/v1/messages passed through (Anthropic)",
            endpoint: Endpoint::Messages,
            provider: provider("anthropic", "http://h", "m")?,
            body: messages_body,
            answer: compact(fixture!("anthropic/messages.text.json")),
            stream: split_sse(fixture!("anthropic/messages.stream.text.recorded.sse")),
            writer: Writer::Messages,
        },
    ];
    // Warm-up, and a check that every path succeeds.
    for c in &cases {
        c.request(iters / 10 + 1)?;
        c.stream(streams / 10 + 1)?;
    }
    let mut req: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut ev: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut bytes = vec![0; cases.len()];
    for b in 0..batches {
        for (i, c) in cases.iter().enumerate() {
            req[i].push(c.request(iters)?);
            let (e, n) = c.stream(streams)?;
            ev[i].push(e);
            bytes[i] = n;
        }
        eprint!("\r[bench-frontdoors] batch {}/{batches}", b + 1);
    }
    eprintln!();
    let req: Vec<f64> = req.into_iter().map(median).collect();
    let ev: Vec<f64> = ev.into_iter().map(median).collect();
    let mut md = String::from("## Front-door translation cost (`bench-frontdoors`)\n\n");
    md.push_str(&format!("{batches} batches of {iters} requests and {streams} whole streams each, median reported; release build, single thread.\n\n"));
    md.push_str("| path | request µs | added vs chat pass-through | target ≤ 20 µs | per event µs | added vs chat pass-through | target ≤ 2 µs | events | bytes written per stream |\n|---|---:|---:|---|---:|---:|---|---:|---:|\n");
    let mut missed = 0;
    for (i, c) in cases.iter().enumerate() {
        let (dr, de) = (req[i] - req[0], ev[i] - ev[0]);
        let mark = |ok: bool| if ok { "met" } else { "MISSED" };
        let (tr, te) = if i == 0 {
            ("", "")
        } else {
            if dr > TARGET_REQUEST_US || de > TARGET_EVENT_US {
                missed += 1;
            }
            (mark(dr <= TARGET_REQUEST_US), mark(de <= TARGET_EVENT_US))
        };
        let added = |d: f64| {
            if i == 0 {
                "(baseline)".to_owned()
            } else {
                format!("{d:+.2}")
            }
        };
        md.push_str(&format!(
            "| {} | {:.2} | {} | {tr} | {:.2} | {} | {te} | {} | {} |\n",
            c.label,
            req[i],
            added(dr),
            ev[i],
            added(de),
            c.stream.len(),
            bytes[i]
        ));
    }
    md.push_str("\nRequest: `build_request` on the client's body (system + user + 2 tools, the same request in each API) + `translate_response` on the answer (translated rows: the same chat answer; passed-through rows: the provider's recorded answer). Per event: a fresh decoder, one `feed` per upstream event, and what the relay writes for it (chat: `model` set, serialised, `data:` framed; front doors: their encoder), divided by the upstream events; the front doors' closing events are included.\n");
    print!("{md}");
    if let Some(path) = args.get("out") {
        std::fs::write(path, &md)?;
    }
    if missed > 0 {
        eprintln!("[bench-frontdoors] {missed} path(s) missed a target");
    }
    Ok(())
}
