//! `bench-translate`: what translating to and from each provider's API costs,
//! against OpenAI pass-through, in process (no network, no server).
//!
//! Per provider (OpenAI pass-through first, as the baseline):
//!
//! - **per request**: `build_request` on a typical chat body (system + user
//!   message + 2 tools, ~1 KB, cloned outside the timed part) followed by
//!   `translate_response` on the provider's recorded non-stream answer;
//! - **per stream event**: a fresh `stream_decoder`, one `feed` per upstream
//!   event (the recorded stream cut at its event boundaries: SSE blank lines,
//!   eventstream frames), then `finish`; the time divided by the events fed;
//! - optionally the same through the whole core (`Gateway::handle` with
//!   in-memory ports and an upstream that answers the recorded bytes).
//!
//! Every measured job is warmed up, then timed in several batches with the
//! jobs interleaved (batch 1 of every job, then batch 2, …) so that a burst of
//! outside load hits every provider alike; the median batch is reported, with
//! the spread and the thread CPU time as quality checks. `--help` lists the
//! options; `bench/translate.sh` builds and runs it.

use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use conduit::memory::{ManualClock, MemoryKeyStore, QueueSpawner};
use conduit::metering::usage::{UsageQuery, UsageRecord};
use conduit::ports::{ByteStream, NoLimits, StoreError, Upstream, UpstreamError, UsageStore};
use conduit::providers::{Call, Endpoint, Provider, StreamEvent};
use conduit::{Config, Gateway, Ports, ResponseBody};
use conduit_bench::{err, Args, Result};
use serde_json::{json, Map, Value};

const HELP: &str = "\
bench-translate: per-request and per-stream-event translation cost of each provider
against OpenAI pass-through (in process, recorded payloads of tests/fixtures/).

Options:
  --iters N          requests per batch (default 20000)
  --stream-events N  stream events per batch, rounded up to whole streams (default 100000)
  --batches N        timed batches per job; the median is reported (default 7)
  --warmup-ms N      warm-up time per job before the batches (default 300)
  --relay-iters N    requests per batch through Gateway::handle (default 3000; 0: skip)
  --no-details       skip the per-fixture detail tables
  --strict           exit 1 when a target is missed
  --out FILE         also write the markdown report to FILE
  --help
";

// ---- recorded payloads ---------------------------------------------------------------

macro_rules! fixture {
    ($path:literal) => {
        include_bytes!(concat!("../../../../tests/fixtures/", $path)).as_slice()
    };
}

/// No recorded OpenAI non-stream chat answer exists in tests/fixtures: this one has
/// the shape gpt-4o-mini returns for a tool call (ids and counts made up).
const OPENAI_TOOL_ANSWER: &str = r#"{"id":"chatcmpl-BnchTr4nsl4t3AbCdEfGhIjKlMn","object":"chat.completion","created":1782955818,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_Qx7bV1mZk2N9pLs4Tt8wYc3D","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"celsius\"}"}},{"id":"call_R2vXh8kLm4Pq9sTz1WbN6yFe","type":"function","function":{"name":"get_local_time","arguments":"{\"city\":\"Paris\"}"}}],"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":183,"completion_tokens":52,"total_tokens":235,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_d0469e1700"}"#;
const OPENAI_TEXT_ANSWER: &str = r#"{"id":"chatcmpl-BnchTr4nsl4t3ZyXwVuTsRqPoNm","object":"chat.completion","created":1782955818,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Paris is mild today, around 18 °C with light rain expected in the afternoon, so pack a small umbrella. It is currently 09:40 local time.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":183,"completion_tokens":35,"total_tokens":218,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_d0469e1700"}"#;

/// The client's request: a system and a user message, two tools (~1 KB).
fn chat_body() -> Map<String, Value> {
    let v = json!({
        "model": "bench",
        "messages": [
            {"role": "system", "content": "You are a concise travel assistant. Answer in at most three sentences, use metric units, and call a tool whenever the answer depends on live data such as the weather or the local time."},
            {"role": "user", "content": "I land in Paris tomorrow morning. What is the weather like there right now, what time is it in Paris, and should I pack an umbrella?"}
        ],
        "tools": [
            {"type": "function", "function": {
                "name": "get_weather",
                "description": "Current weather conditions for a city.",
                "parameters": {"type": "object", "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Paris"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                    "required": ["city"], "additionalProperties": false}}},
            {"type": "function", "function": {
                "name": "get_local_time",
                "description": "Current local time in a city.",
                "parameters": {"type": "object", "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Paris"}},
                    "required": ["city"], "additionalProperties": false}}}
        ],
        "tool_choice": "auto",
        "temperature": 0.3,
        "max_tokens": 512,
        "user": "user-1234"
    });
    match v {
        Value::Object(o) => o,
        _ => unreachable!(),
    }
}

/// Compact JSON, as providers send it (the fixtures are pretty-printed for reading).
fn compact(bytes: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec()),
        Err(_) => bytes.to_vec(),
    }
}

/// An SSE body cut after each event (a blank line: `\n\n` or `\r\n\r\n`).
fn split_sse(body: &[u8]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < body.len() {
        let end = if body[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else if body[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else {
            None
        };
        match end {
            Some(e) => {
                pieces.push(body[start..e].to_vec());
                start = e;
                i = e;
            }
            None => i += 1,
        }
    }
    if start < body.len() {
        pieces.push(body[start..].to_vec());
    }
    pieces
}

/// An AWS eventstream body cut after each frame (the prelude's total length).
fn split_eventstream(body: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let len = body
            .get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .filter(|&l| l >= 16 && i + l <= body.len())
            .ok_or_else(|| err(format!("bad eventstream frame at byte {i}")))?;
        pieces.push(body[i..i + len].to_vec());
        i += len;
    }
    Ok(pieces)
}

fn b64(text: &[u8]) -> Result<Vec<u8>> {
    let clean: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .map_err(|e| err(format!("bad base64 fixture: {e}")))
}

// ---- the providers under test ----------------------------------------------------------

struct StreamFixture {
    name: &'static str,
    pieces: Vec<Vec<u8>>,
}

struct Answer {
    name: &'static str,
    body: Vec<u8>,
}

struct Case {
    label: &'static str,
    kind: &'static str,
    model: &'static str,
    content_type: &'static str,
    /// Bytes found in a text-delta event of the main stream (the first such
    /// event is repeated to measure the marginal cost of one more event).
    delta_marker: &'static str,
    /// Whether the issue sets targets for it (Cohere is reported without).
    targeted: bool,
    provider: Arc<dyn Provider>,
    /// The first one is the per-request answer of the main table.
    answers: Vec<Answer>,
    /// The first one is the stream of the main table.
    streams: Vec<StreamFixture>,
}

fn provider_table(kind: &str, base_url: Option<&str>) -> String {
    let mut t = format!("kind = \"{kind}\"\n");
    if let Some(u) = base_url {
        t.push_str(&format!("base_url = \"{u}\"\n"));
    }
    match kind {
        "bedrock" => t.push_str("region = \"us-east-1\"\n"),
        _ => t.push_str("api_key_env = \"BENCH_API_KEY\"\n"),
    }
    t
}

fn secret(var: &str) -> Option<String> {
    match var {
        "BENCH_API_KEY" => Some("bench-provider-key-0123456789abcdef".into()),
        "AWS_ACCESS_KEY_ID" => Some("AKIAIOSFODNN7EXAMPLE".into()),
        "AWS_SECRET_ACCESS_KEY" => Some("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
        _ => None,
    }
}

/// A config with one provider (`[providers.p]`) and one alias (`bench`).
fn config_for(kind: &str, model: &str, base_url: Option<&str>) -> Result<Config> {
    let text = format!(
        "[providers.p]\n{}\n[models.bench]\ndeployments = [{{ provider = \"p\", model = \"{model}\" }}]\n",
        provider_table(kind, base_url)
    );
    Config::parse(&text, "bench-translate", &secret).map_err(|e| err(e.to_string()))
}

fn provider_of(kind: &str, model: &str) -> Result<Arc<dyn Provider>> {
    let config = config_for(kind, model, None)?;
    Ok(config.models["bench"].deployments[0].provider.clone())
}

fn sse(name: &'static str, body: &[u8]) -> StreamFixture {
    StreamFixture {
        name,
        pieces: split_sse(body),
    }
}

fn answer(name: &'static str, body: &[u8]) -> Answer {
    Answer {
        name,
        body: compact(body),
    }
}

fn cases() -> Result<Vec<Case>> {
    let bedrock_tool = b64(fixture!(
        "bedrock/converse-stream.tool_use.recorded.eventstream.b64"
    ))?;
    Ok(vec![
        Case {
            label: "OpenAI (pass-through)",
            kind: "openai",
            model: "gpt-4o-mini",
            content_type: "text/event-stream",
            delta_marker: "\"delta\":{\"content\"",
            targeted: false,
            provider: provider_of("openai", "gpt-4o-mini")?,
            answers: vec![
                answer(
                    "tool_calls (synthetic, see notes)",
                    OPENAI_TOOL_ANSWER.as_bytes(),
                ),
                answer("text (synthetic)", OPENAI_TEXT_ANSWER.as_bytes()),
            ],
            streams: vec![
                sse(
                    "chat.completions.stream.text.include_usage.sse",
                    fixture!("openai/chat.completions.stream.text.include_usage.sse"),
                ),
                sse(
                    "chat.completions.stream.tool_calls.include_usage.sse",
                    fixture!("openai/chat.completions.stream.tool_calls.include_usage.sse"),
                ),
            ],
        },
        Case {
            label: "Anthropic",
            kind: "anthropic",
            model: "claude-sonnet-4-5-20250929",
            content_type: "text/event-stream",
            delta_marker: "content_block_delta",
            targeted: true,
            provider: provider_of("anthropic", "claude-sonnet-4-5-20250929")?,
            answers: vec![
                answer(
                    "messages.text_and_tool_use.no_args.json",
                    fixture!("anthropic/messages.text_and_tool_use.no_args.json"),
                ),
                answer(
                    "messages.text.json",
                    fixture!("anthropic/messages.text.json"),
                ),
                answer(
                    "messages.refusal.json",
                    fixture!("anthropic/messages.refusal.json"),
                ),
            ],
            streams: vec![
                sse(
                    "messages.stream.text.recorded.sse",
                    fixture!("anthropic/messages.stream.text.recorded.sse"),
                ),
                sse(
                    "messages.stream.tool_use.docs-example.sse",
                    fixture!("anthropic/messages.stream.tool_use.docs-example.sse"),
                ),
            ],
        },
        Case {
            label: "Gemini",
            kind: "gemini",
            model: "gemini-2.0-flash",
            content_type: "text/event-stream",
            delta_marker: "\"text\"",
            targeted: true,
            provider: provider_of("gemini", "gemini-2.0-flash")?,
            answers: vec![
                answer(
                    "generateContent.functionCall.json",
                    fixture!("gemini/generateContent.functionCall.json"),
                ),
                answer(
                    "generateContent.prompt-blocked.json",
                    fixture!("gemini/generateContent.prompt-blocked.json"),
                ),
            ],
            streams: vec![
                sse(
                    "streamGenerateContent.text.alt-sse.recorded.sse",
                    fixture!("gemini/streamGenerateContent.text.alt-sse.recorded.sse"),
                ),
                sse(
                    "streamGenerateContent.functionCall.alt-sse.recorded.sse",
                    fixture!("gemini/streamGenerateContent.functionCall.alt-sse.recorded.sse"),
                ),
            ],
        },
        Case {
            label: "Bedrock",
            kind: "bedrock",
            model: "anthropic.claude-3-5-sonnet-20240620-v1:0",
            content_type: "application/vnd.amazon.eventstream",
            delta_marker: "contentBlockDelta",
            targeted: true,
            provider: provider_of("bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0")?,
            answers: vec![
                answer("converse.text.json", fixture!("bedrock/converse.text.json")),
                answer(
                    "converse.guardrail_intervened.json",
                    fixture!("bedrock/converse.guardrail_intervened.json"),
                ),
            ],
            streams: vec![StreamFixture {
                name: "converse-stream.tool_use.recorded.eventstream.b64",
                pieces: split_eventstream(&bedrock_tool)?,
            }],
        },
        Case {
            label: "Cohere",
            kind: "cohere",
            model: "command-a-03-2025",
            content_type: "text/event-stream",
            delta_marker: "content-delta",
            targeted: false,
            provider: provider_of("cohere", "command-a-03-2025")?,
            answers: vec![
                answer(
                    "chat.v2.tool_calls.json",
                    fixture!("cohere/chat.v2.tool_calls.json"),
                ),
                answer(
                    "chat.v2.max_tokens.json",
                    fixture!("cohere/chat.v2.max_tokens.json"),
                ),
            ],
            streams: vec![
                sse(
                    "chat.v2.stream.text.sse",
                    fixture!("cohere/chat.v2.stream.text.sse"),
                ),
                sse(
                    "chat.v2.stream.tool_calls.sse",
                    fixture!("cohere/chat.v2.stream.tool_calls.sse"),
                ),
            ],
        },
    ])
}

fn call<'a>(model: &'a str, stream: bool) -> Call<'a> {
    Call {
        endpoint: Endpoint::ChatCompletions,
        model,
        stream,
        now_secs: 1_782_955_818,
        request_id: "req_bench0123456789abcdef",
        drop_unsupported_params: false,
    }
}

/// Runs every translation once and checks it succeeds, so that the timings
/// are of the real path and not of an early error.
fn check(case: &Case) -> Result<()> {
    let fail = |what: String| err(format!("{}: {what}", case.label));
    let c = call(case.model, false);
    let req = case
        .provider
        .build_request(&c, &mut chat_body())
        .map_err(|e| fail(format!("build_request: {e:?}")))?;
    if req.body().len() < 200 {
        return Err(fail("build_request: suspiciously small body".into()));
    }
    for a in &case.answers {
        let o = case
            .provider
            .translate_response(&c, &a.body)
            .map_err(|e| fail(format!("translate_response({}): {e:?}", a.name)))?;
        if !o.contains_key("choices") {
            return Err(fail(format!("translate_response({}): no choices", a.name)));
        }
    }
    let c = call(case.model, true);
    case.provider
        .build_request(&c, &mut chat_body())
        .map_err(|e| fail(format!("build_request(stream): {e:?}")))?;
    for s in &case.streams {
        let mut d = case.provider.stream_decoder(&c);
        let mut out = Vec::new();
        for p in &s.pieces {
            d.feed(p, &mut out);
        }
        d.finish(&mut out);
        let chunks = out
            .iter()
            .filter(|e| matches!(e, StreamEvent::Chunk(_)))
            .count();
        if let Some(StreamEvent::Error(e)) = out.iter().find(|e| matches!(e, StreamEvent::Error(_)))
        {
            return Err(fail(format!("stream {}: error event {e:?}", s.name)));
        }
        if chunks == 0 || out.last() != Some(&StreamEvent::Done) {
            return Err(fail(format!(
                "stream {}: {chunks} chunks, last event {:?}",
                s.name,
                out.last()
            )));
        }
    }
    Ok(())
}

/// Extra copies of one text-delta event inserted into the main stream, to get the
/// marginal cost of an event with the per-stream costs (decoder, first and last
/// events, `finish`) taken out.
const EXTRA_DELTAS: usize = 48;

fn extended(case: &Case) -> Result<StreamFixture> {
    let s = &case.streams[0];
    let marker = case.delta_marker.as_bytes();
    let at = s
        .pieces
        .iter()
        .position(|p| p.windows(marker.len()).any(|w| w == marker))
        .ok_or_else(|| err(format!("{}: no text-delta event in {}", case.label, s.name)))?;
    let mut pieces = s.pieces.clone();
    for _ in 0..EXTRA_DELTAS {
        pieces.insert(at + 1, s.pieces[at].clone());
    }
    let ext = StreamFixture {
        name: s.name,
        pieces,
    };
    let count = |f: &StreamFixture| {
        let c = call(case.model, true);
        let mut d = case.provider.stream_decoder(&c);
        let mut out = Vec::new();
        for p in &f.pieces {
            d.feed(p, &mut out);
        }
        d.finish(&mut out);
        let ok = out.last() == Some(&StreamEvent::Done)
            && !out.iter().any(|e| matches!(e, StreamEvent::Error(_)));
        (ok, out.len())
    };
    let ((ok0, n0), (ok1, n1)) = (count(s), count(&ext));
    if !(ok0 && ok1 && n1 >= n0 + EXTRA_DELTAS) {
        return Err(err(format!(
            "{}: the stream with {EXTRA_DELTAS} repeated delta events did not decode as expected ({n0} -> {n1} events)",
            case.label
        )));
    }
    Ok(ext)
}

// ---- measurement ---------------------------------------------------------------------

/// CPU time of the calling thread, in ns (excludes time the thread was not running).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall and thread-CPU time of a timed section, and how many units it covered.
#[derive(Default, Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu_ns: u64,
    units: u64,
}

impl Sample {
    fn add(&mut self, o: Sample) {
        self.wall += o.wall;
        self.cpu_ns += o.cpu_ns;
        self.units += o.units;
    }
}

/// Times `f` (which covers `units` units of work).
fn timed(units: u64, f: impl FnOnce()) -> Sample {
    let c0 = thread_cpu_ns();
    let t0 = Instant::now();
    f();
    let wall = t0.elapsed();
    Sample {
        wall,
        cpu_ns: thread_cpu_ns().saturating_sub(c0),
        units,
    }
}

type JobFn<'a> = Box<dyn FnMut() -> Result<Sample> + 'a>;

/// A measured piece of work: one call runs one batch and returns its timing.
struct Job<'a> {
    name: String,
    run: JobFn<'a>,
    samples: Vec<Sample>,
}

/// µs per unit: median, min and max over the batches; thread-CPU median.
#[derive(Clone, Copy, Default)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    cpu_median: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Job<'_> {
    fn stats(&self) -> Stats {
        let per = |s: &Sample, ns: f64| ns / 1000.0 / s.units.max(1) as f64;
        let wall: Vec<f64> = self
            .samples
            .iter()
            .map(|s| per(s, s.wall.as_nanos() as f64))
            .collect();
        let cpu: Vec<f64> = self
            .samples
            .iter()
            .map(|s| per(s, s.cpu_ns as f64))
            .collect();
        Stats {
            median: median(wall.clone()),
            min: wall.iter().copied().fold(f64::INFINITY, f64::min),
            max: wall.iter().copied().fold(0.0, f64::max),
            cpu_median: median(cpu),
        }
    }
}

/// Warms every job up for `warmup` (at least one batch), then runs `batches`
/// rounds of one batch per job, the jobs interleaved.
fn run_jobs(jobs: &mut [Job<'_>], batches: usize, warmup: Duration) -> Result<()> {
    for job in jobs.iter_mut() {
        let t0 = Instant::now();
        loop {
            (job.run)()?;
            if t0.elapsed() >= warmup {
                break;
            }
        }
    }
    for b in 0..batches {
        for job in jobs.iter_mut() {
            let s = (job.run)().map_err(|e| err(format!("{}: {e}", job.name)))?;
            job.samples.push(s);
        }
        eprint!("\r[bench-translate] batch {}/{batches}", b + 1);
    }
    eprintln!();
    Ok(())
}

/// Bodies cloned per timed chunk: the clone is the core's parse, not translation.
const CHUNK: usize = 1000;

/// `build_request` then `translate_response`, `iters` times. With `answer`
/// `None`, only `build_request`; with `build` false, only `translate_response`.
fn request_job<'a>(
    case: &'a Case,
    answer: Option<&'a [u8]>,
    build: bool,
    iters: usize,
) -> JobFn<'a> {
    let template = chat_body();
    Box::new(move || {
        let c = call(case.model, false);
        let mut total = Sample::default();
        let mut left = iters;
        while left > 0 {
            let n = left.min(CHUNK);
            left -= n;
            let mut bodies: Vec<Map<String, Value>> = if build {
                (0..n).map(|_| template.clone()).collect()
            } else {
                Vec::new()
            };
            let mut failed = 0usize;
            let s = timed(n as u64, || {
                let translate = |failed: &mut usize| {
                    if let Some(a) = answer {
                        match case.provider.translate_response(&c, black_box(a)) {
                            Ok(o) => drop(black_box(o)),
                            Err(_) => *failed += 1,
                        }
                    }
                };
                if build {
                    for body in bodies.iter_mut() {
                        match case.provider.build_request(&c, body) {
                            Ok(r) => drop(black_box(r)),
                            Err(_) => failed += 1,
                        }
                        translate(&mut failed);
                    }
                } else {
                    for _ in 0..n {
                        translate(&mut failed);
                    }
                }
            });
            drop(bodies);
            if failed > 0 {
                return Err(err("a translation failed"));
            }
            total.add(s);
        }
        Ok(total)
    })
}

/// A whole recorded stream through a fresh decoder, `reps` times; the unit is
/// one upstream event (one `feed`).
fn stream_job<'a>(case: &'a Case, stream: &'a StreamFixture, reps: usize) -> JobFn<'a> {
    Box::new(move || {
        let c = call(case.model, true);
        let mut out: Vec<StreamEvent> = Vec::with_capacity(16);
        let events = stream.pieces.len() as u64;
        Ok(timed(reps as u64 * events, || {
            for _ in 0..reps {
                let mut d = case.provider.stream_decoder(&c);
                for p in &stream.pieces {
                    d.feed(black_box(p), &mut out);
                    black_box(&out);
                    out.clear();
                }
                d.finish(&mut out);
                black_box(&out);
                out.clear();
            }
        }))
    })
}

// ---- the whole core: Gateway::handle with in-memory ports ----------------------------------

/// Usage records are dropped (a growing in-memory store would skew long runs).
struct NullUsage;

conduit::port! {
    impl UsageStore for NullUsage {
        async fn record(&self, record: UsageRecord) {
            black_box(record);
        }
        async fn query(&self, _query: &UsageQuery) -> std::result::Result<Vec<UsageRecord>, StoreError> {
            Ok(Vec::new())
        }
        async fn hours(&self, _query: &conduit::metering::summary::SummaryQuery) -> std::result::Result<Vec<conduit::metering::summary::HourRow>, StoreError> {
            Ok(Vec::new())
        }
        async fn last_used(&self, key_ids: &[String]) -> std::result::Result<Vec<Option<u64>>, StoreError> {
            Ok(vec![None; key_ids.len()])
        }
    }
}

/// Answers every request with the same recorded body, as the given pieces.
struct FixedUpstream {
    content_type: &'static str,
    pieces: Vec<Bytes>,
}

struct Pieces(std::vec::IntoIter<Bytes>);

impl futures_core::Stream for Pieces {
    type Item = std::result::Result<Bytes, UpstreamError>;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.0.next().map(Ok))
    }
}

conduit::port! {
    impl Upstream for FixedUpstream {
        async fn send(&self, request: http::Request<Bytes>) -> std::result::Result<http::Response<ByteStream>, UpstreamError> {
            black_box(request);
            let body: ByteStream = Box::pin(Pieces(self.pieces.clone().into_iter()));
            let mut r = http::Response::new(body);
            if let Ok(v) = http::HeaderValue::from_str(self.content_type) {
                r.headers_mut().insert(http::header::CONTENT_TYPE, v);
            }
            Ok(r)
        }
    }
}

/// Polls a future that never waits on outside wake-ups (every port here is ready at once).
fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..10_000 {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Ok(v);
        }
    }
    Err(err("a gateway future did not complete"))
}

fn collect_stream(mut s: conduit::compat::BoxStream<'static, Bytes>) -> Result<usize> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut n = 0;
    for _ in 0..100_000 {
        match s.as_mut().poll_next(&mut cx) {
            Poll::Ready(Some(b)) => n += black_box(b).len(),
            Poll::Ready(None) => return Ok(n),
            Poll::Pending => {}
        }
    }
    Err(err("a relayed stream did not end"))
}

struct Relay {
    gateway: Gateway,
    spawner: Arc<QueueSpawner>,
    key: String,
}

const MASTER: &str = "bench-translate-master";

fn relay_for(case: &Case, stream: bool) -> Result<Relay> {
    // Bedrock's `base_url` must not be `region`-derived https for the test to be local; any
    // URL does since the upstream port answers without a network.
    let config = config_for(case.kind, case.model, Some("http://upstream.invalid"))?;
    let pieces: Vec<Bytes> = if stream {
        case.streams[0]
            .pieces
            .iter()
            .map(|p| Bytes::from(p.clone()))
            .collect()
    } else {
        vec![Bytes::from(case.answers[0].body.clone())]
    };
    let spawner = Arc::new(QueueSpawner::default());
    let ports = Ports {
        keys: Arc::new(MemoryKeyStore::default()),
        usage: Arc::new(NullUsage),
        upstream: Arc::new(FixedUpstream {
            content_type: if stream {
                case.content_type
            } else {
                "application/json"
            },
            pieces,
        }),
        clock: Arc::new(ManualClock::new(1_782_955_818_000_000)),
        limiter: Arc::new(NoLimits),
        spawner: spawner.clone(),
    };
    let gateway = Gateway::new(config, ports, Some(MASTER));
    let created = block_on(
        gateway.handle(
            http::Request::post("/admin/keys")
                .header("authorization", format!("Bearer {MASTER}"))
                .body(Bytes::from_static(br#"{"name":"bench-translate"}"#))
                .map_err(|e| err(e.to_string()))?,
        ),
    )?;
    let key = match created.into_body() {
        ResponseBody::Full(b) => serde_json::from_slice::<Value>(&b)
            .ok()
            .and_then(|v| v["key"].as_str().map(str::to_owned))
            .ok_or_else(|| err("POST /admin/keys gave no key"))?,
        ResponseBody::Stream(_) => return Err(err("POST /admin/keys streamed")),
    };
    Ok(Relay {
        gateway,
        spawner,
        key,
    })
}

/// One request through `Gateway::handle`; returns the response body length.
fn relay_once(r: &Relay, body: &Bytes) -> Result<usize> {
    let req = http::Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {}", r.key))
        .header("content-type", "application/json")
        .body(body.clone())
        .map_err(|e| err(e.to_string()))?;
    let resp = block_on(r.gateway.handle(req))?;
    if !resp.status().is_success() {
        let body = match resp.into_body() {
            ResponseBody::Full(b) => String::from_utf8_lossy(&b).into_owned(),
            ResponseBody::Stream(_) => String::new(),
        };
        return Err(err(format!("gateway answered an error: {body}")));
    }
    let n = match resp.into_body() {
        ResponseBody::Full(b) => b.len(),
        ResponseBody::Stream(s) => collect_stream(s)?,
    };
    r.spawner.run_all();
    Ok(n)
}

fn relay_job<'a>(relay: &'a Relay, body: Bytes, iters: usize) -> JobFn<'a> {
    Box::new(move || {
        let mut failed = None;
        let s = timed(iters as u64, || {
            for _ in 0..iters {
                if let Err(e) = relay_once(relay, &body) {
                    failed = Some(e);
                    break;
                }
            }
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(s),
        }
    })
}

// ---- machine state ---------------------------------------------------------------------

/// (total, idle) clock ticks of all CPUs, from the first line of `/proc/stat`
/// (user nice system idle iowait irq softirq steal).
fn proc_stat_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((v.iter().sum(), idle))
}

fn cpu_busy_percent(sample: Duration) -> Option<f64> {
    let (t0, i0) = proc_stat_ticks()?;
    std::thread::sleep(sample);
    let (t1, i1) = proc_stat_ticks()?;
    let dt = t1.saturating_sub(t0);
    (dt > 0).then(|| 100.0 * (1.0 - (i1.saturating_sub(i0)) as f64 / dt as f64))
}

/// CPU time (user + system) of this process so far, in seconds.
fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we own; RUSAGE_SELF is a valid target.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// What the rest of the machine did while we measured.
struct OtherLoad {
    ticks: Option<(u64, u64)>,
    own: f64,
    at: Instant,
}

impl OtherLoad {
    fn start() -> Self {
        OtherLoad {
            ticks: proc_stat_ticks(),
            own: own_cpu_secs(),
            at: Instant::now(),
        }
    }

    /// Share of all CPUs' time used by other processes since `start`, in percent.
    fn percent(&self) -> Option<f64> {
        let (t0, i0) = self.ticks?;
        let (t1, i1) = proc_stat_ticks()?;
        let hz = conduit_bench::clock_ticks_per_second() as f64;
        let busy = (t1 - t0).saturating_sub(i1 - i0) as f64 / hz;
        let own = own_cpu_secs() - self.own;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let span = self.at.elapsed().as_secs_f64() * cpus;
        (span > 0.0).then(|| (100.0 * (busy - own) / span).max(0.0))
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

// ---- the report ----------------------------------------------------------------------

const TARGET_REQUEST_US: f64 = 20.0;
const TARGET_EVENT_US: f64 = 2.0;

fn f2(x: f64) -> String {
    format!("{x:.2}")
}

fn signed(x: f64) -> String {
    format!("{x:+.2}")
}

fn spread(s: &Stats) -> String {
    format!("{:.2}–{:.2}", s.min, s.max)
}

fn main() {
    let args = match Args::parse(std::env::args().skip(1), &["help", "no-details", "strict"]) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-translate: {e}\n\n{HELP}");
            std::process::exit(2);
        }
    };
    if args.flag("help") {
        print!("{HELP}");
        return;
    }
    if let Err(e) = run(&args) {
        eprintln!("bench-translate: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    args.check_known(&[
        "help",
        "no-details",
        "strict",
        "iters",
        "stream-events",
        "batches",
        "warmup-ms",
        "relay-iters",
        "out",
    ])?;
    let iters: usize = args.parse_or("iters", 20_000)?;
    let stream_events: usize = args.parse_or("stream-events", 100_000)?;
    let batches: usize = args.parse_or("batches", 7)?;
    let warmup = Duration::from_millis(args.parse_or("warmup-ms", 300)?);
    let relay_iters: usize = args.parse_or("relay-iters", 3_000)?;
    let details = !args.flag("no-details");
    if iters == 0 || stream_events == 0 || batches == 0 {
        return Err(err("--iters, --stream-events and --batches must be > 0"));
    }

    let busy_before = cpu_busy_percent(Duration::from_secs(1));
    let load_before = loadavg();
    let started = Instant::now();
    let others = OtherLoad::start();

    let cases = cases()?;
    for c in &cases {
        check(c)?;
    }
    let request_bytes = serde_json::to_vec(&chat_body())
        .map(|v| v.len())
        .unwrap_or(0);
    let reps_for = |s: &StreamFixture| stream_events.div_ceil(s.pieces.len().max(1));

    // Main jobs: per request (build + translate) and per event (main stream).
    eprintln!("[bench-translate] main: {iters} requests and ~{stream_events} stream events per batch, {batches} batches");
    let extended: Vec<StreamFixture> = cases.iter().map(extended).collect::<Result<_>>()?;
    let mut main_jobs: Vec<Job> = Vec::new();
    for (c, ext) in cases.iter().zip(&extended) {
        main_jobs.push(Job {
            name: format!("{} request", c.label),
            run: request_job(c, Some(&c.answers[0].body), true, iters),
            samples: Vec::new(),
        });
        main_jobs.push(Job {
            name: format!("{} stream", c.label),
            run: stream_job(c, &c.streams[0], reps_for(&c.streams[0])),
            samples: Vec::new(),
        });
        main_jobs.push(Job {
            name: format!("{} stream +{EXTRA_DELTAS} deltas", c.label),
            run: stream_job(c, ext, reps_for(ext)),
            samples: Vec::new(),
        });
    }
    run_jobs(&mut main_jobs, batches, warmup)?;
    let main_stats: Vec<Stats> = main_jobs.iter().map(Job::stats).collect();
    drop(main_jobs);
    let req_stats = |i: usize| main_stats[3 * i];
    let ev_stats = |i: usize| main_stats[3 * i + 1];
    // µs per extra delta event: (whole extended stream - whole stream) / extra events.
    let marginal = |i: usize| {
        let (n0, n1) = (
            cases[i].streams[0].pieces.len() as f64,
            extended[i].pieces.len() as f64,
        );
        (main_stats[3 * i + 2].median * n1 - main_stats[3 * i + 1].median * n0)
            / EXTRA_DELTAS as f64
    };

    // Details: build alone, each answer alone, each stream.
    let detail_iters = (iters / 4).max(1);
    let mut build_stats = Vec::new();
    let mut answer_stats: Vec<Vec<Stats>> = Vec::new();
    let mut stream_stats: Vec<Vec<Stats>> = Vec::new();
    if details {
        eprintln!("[bench-translate] details: {detail_iters} per batch");
        let mut jobs: Vec<Job> = Vec::new();
        for c in &cases {
            jobs.push(Job {
                name: format!("{} build", c.label),
                run: request_job(c, None, true, detail_iters),
                samples: Vec::new(),
            });
            for a in &c.answers {
                jobs.push(Job {
                    name: format!("{} {}", c.label, a.name),
                    run: request_job(c, Some(&a.body), false, detail_iters),
                    samples: Vec::new(),
                });
            }
            for s in &c.streams {
                jobs.push(Job {
                    name: format!("{} {}", c.label, s.name),
                    run: stream_job(c, s, reps_for(s).div_ceil(4)),
                    samples: Vec::new(),
                });
            }
        }
        run_jobs(&mut jobs, batches, warmup / 3)?;
        let mut it = jobs.iter().map(Job::stats);
        for c in &cases {
            build_stats.push(it.next().unwrap_or_default());
            answer_stats.push(
                c.answers
                    .iter()
                    .map(|_| it.next().unwrap_or_default())
                    .collect(),
            );
            stream_stats.push(
                c.streams
                    .iter()
                    .map(|_| it.next().unwrap_or_default())
                    .collect(),
            );
        }
    }

    // The whole core.
    let mut relay_stats: Vec<(Stats, Stats)> = Vec::new();
    if relay_iters > 0 {
        eprintln!(
            "[bench-translate] relay: {relay_iters} requests per batch through Gateway::handle"
        );
        let relays: Vec<(Relay, Relay)> = cases
            .iter()
            .map(|c| Ok((relay_for(c, false)?, relay_for(c, true)?)))
            .collect::<Result<_>>()?;
        let mut body = chat_body();
        body.insert("model".into(), Value::String("bench".into()));
        let whole = Bytes::from(serde_json::to_vec(&body).map_err(|e| err(e.to_string()))?);
        body.insert("stream".into(), Value::Bool(true));
        let streamed = Bytes::from(serde_json::to_vec(&body).map_err(|e| err(e.to_string()))?);
        for (r, s) in &relays {
            relay_once(r, &whole)?;
            relay_once(s, &streamed)?;
        }
        let mut jobs: Vec<Job> = Vec::new();
        for (c, (r, s)) in cases.iter().zip(&relays) {
            jobs.push(Job {
                name: format!("{} relay", c.label),
                run: relay_job(r, whole.clone(), relay_iters),
                samples: Vec::new(),
            });
            jobs.push(Job {
                name: format!("{} relay stream", c.label),
                run: relay_job(s, streamed.clone(), relay_iters),
                samples: Vec::new(),
            });
        }
        run_jobs(&mut jobs, batches, warmup)?;
        let st: Vec<Stats> = jobs.iter().map(Job::stats).collect();
        relay_stats = st.chunks(2).map(|p| (p[0], p[1])).collect();
    }

    let others_during = others.percent();
    let busy_after = cpu_busy_percent(Duration::from_millis(500));
    let elapsed = started.elapsed();

    // ---- markdown ----
    let mut md = String::new();
    let busy = |b: Option<f64>| b.map_or("?".into(), |b| format!("{b:.0} %"));
    md.push_str("## Provider translation cost (`bench-translate`)\n\n");
    md.push_str(&format!(
        "{} · {} logical CPUs · other processes: CPU busy {} in a 1 s sample before the run, {} of all CPU time during it (load average before: {load_before}) · run took {:.0} s · {batches} batches, median reported · {iters} requests / ~{stream_events} stream events per batch · chat body {request_bytes} bytes (system + user + 2 tools)\n\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        busy(busy_before),
        busy(others_during),
        elapsed.as_secs_f64(),
    ));
    md.push_str("| provider | request µs | added vs OpenAI | target ≤ 20 µs | per event µs | added vs OpenAI | target ≤ 2 µs | ok? |\n");
    md.push_str("|---|---:|---:|---|---:|---:|---|---|\n");
    let base_req = req_stats(0).median;
    let base_ev = ev_stats(0).median;
    let mut missed = 0;
    for (i, c) in cases.iter().enumerate() {
        let (r, e) = (req_stats(i), ev_stats(i));
        if i == 0 {
            md.push_str(&format!(
                "| {} | {} | (baseline) | | {} | (baseline) | | |\n",
                c.label,
                f2(r.median),
                f2(e.median)
            ));
            continue;
        }
        let (dr, de) = (r.median - base_req, e.median - base_ev);
        let (okr, oke) = (dr <= TARGET_REQUEST_US, de <= TARGET_EVENT_US);
        let mark = |ok: bool| if ok { "met" } else { "MISSED" };
        let (tr, te, ok) = if c.targeted {
            if !(okr && oke) {
                missed += 1;
            }
            (mark(okr), mark(oke), if okr && oke { "yes" } else { "no" })
        } else {
            ("no target", "no target", "—")
        };
        md.push_str(&format!(
            "| {} | {} | {} | {tr} | {} | {} | {te} | {ok} |\n",
            c.label,
            f2(r.median),
            signed(dr),
            f2(e.median),
            signed(de),
        ));
    }
    let above: Vec<String> = cases
        .iter()
        .enumerate()
        .filter(|(i, c)| c.targeted && ev_stats(*i).median > TARGET_EVENT_US)
        .map(|(i, c)| {
            format!(
                "{} ({} µs; {} µs per text-delta event, see below)",
                c.label,
                f2(ev_stats(i).median),
                f2(marginal(i))
            )
        })
        .collect();
    let absolute = if above.is_empty() {
        "are all ≤ 2 µs as well".to_owned()
    } else {
        format!("are ≤ 2 µs except {}", above.join(", "))
    };
    md.push_str(&format!(
        "\nRequest = `build_request` on the chat body + `translate_response` on the answer below. Per event = a fresh `stream_decoder`, one `feed` per upstream event, then `finish`, divided by the events fed. The targets apply to the cost added over OpenAI pass-through (Anthropic, Gemini, Bedrock; Cohere is reported without target). The absolute per-event figures of the targeted providers {absolute}; OpenAI pass-through itself costs {} µs per event. CPU busy {} in a 0.5 s sample right after the run.\n\n",
        f2(base_ev),
        busy(busy_after)
    ));

    md.push_str("| provider | answer (per request) | stream (per event) | events | µs per text-delta event (marginal) | added vs OpenAI | request spread µs (min–max batch) | event spread µs | request CPU µs | event CPU µs |\n");
    md.push_str("|---|---|---|---:|---:|---:|---|---|---:|---:|\n");
    for (i, c) in cases.iter().enumerate() {
        let (r, e) = (req_stats(i), ev_stats(i));
        md.push_str(&format!(
            "| {} | `{}` ({} B) | `{}` | {} | {} | {} | {} | {} | {} | {} |\n",
            c.label,
            c.answers[0].name,
            c.answers[0].body.len(),
            c.streams[0].name,
            c.streams[0].pieces.len(),
            f2(marginal(i)),
            if i == 0 {
                "(baseline)".to_owned()
            } else {
                signed(marginal(i) - marginal(0))
            },
            spread(&r),
            spread(&e),
            f2(r.cpu_median),
            f2(e.cpu_median),
        ));
    }
    md.push_str(&format!("\nMarginal: the main stream with its first text-delta event repeated {EXTRA_DELTAS} more times, minus the main stream, divided by {EXTRA_DELTAS}: the cost of one more event once the per-stream costs (decoder, first and last events, `finish`) are taken out. Spread: fastest and slowest batch; CPU: median thread CPU time (excludes time the thread was descheduled).\n"));

    if details {
        md.push_str("\n### Details\n\n`build_request` alone (non-stream) and `translate_response` alone on each recorded answer, µs per call:\n\n");
        md.push_str("| provider | build_request | answer | bytes | translate_response |\n|---|---:|---|---:|---:|\n");
        for (i, c) in cases.iter().enumerate() {
            for (j, a) in c.answers.iter().enumerate() {
                md.push_str(&format!(
                    "| {} | {} | `{}` | {} | {} |\n",
                    if j == 0 { c.label } else { "" },
                    if j == 0 {
                        f2(build_stats[i].median)
                    } else {
                        String::new()
                    },
                    a.name,
                    a.body.len(),
                    f2(answer_stats[i][j].median)
                ));
            }
        }
        md.push_str("\nEvery recorded stream, µs per upstream event (decoder creation and `finish` included):\n\n");
        md.push_str("| provider | stream | bytes | events | µs per event | µs per stream |\n|---|---|---:|---:|---:|---:|\n");
        for (i, c) in cases.iter().enumerate() {
            for (j, s) in c.streams.iter().enumerate() {
                let bytes: usize = s.pieces.iter().map(Vec::len).sum();
                let ev = stream_stats[i][j].median;
                md.push_str(&format!(
                    "| {} | `{}` | {bytes} | {} | {} | {} |\n",
                    if j == 0 { c.label } else { "" },
                    s.name,
                    s.pieces.len(),
                    f2(ev),
                    f2(ev * s.pieces.len() as f64)
                ));
            }
        }
    }

    if !relay_stats.is_empty() {
        md.push_str("\n### Through the whole core (`Gateway::handle`)\n\n");
        md.push_str("In-memory ports (key store, no limits, usage records dropped, an upstream that answers the recorded bytes at once): authentication, parsing, routing, translation, metering, the response's serialisation and, for streams, the SSE relay to the client. µs per request; the per-event column divides the whole streamed request (fixed costs included) by the upstream events.\n\n");
        md.push_str("| provider | request µs | added vs OpenAI | stream request µs | added vs OpenAI | events | stream µs per event |\n|---|---:|---:|---:|---:|---:|---:|\n");
        let (b_r, b_s) = (relay_stats[0].0.median, relay_stats[0].1.median);
        for (i, c) in cases.iter().enumerate() {
            let (r, s) = relay_stats[i];
            let n = c.streams[0].pieces.len();
            let added = |x: f64, b: f64| {
                if i == 0 {
                    "(baseline)".to_owned()
                } else {
                    signed(x - b)
                }
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {n} | {} |\n",
                c.label,
                f2(r.median),
                added(r.median, b_r),
                f2(s.median),
                added(s.median, b_s),
                f2(s.median / n as f64)
            ));
        }
    }

    md.push_str("\nNotes: the fixtures are those of `tests/fixtures/` (JSON answers re-serialised compactly, as providers send them). There is no recorded OpenAI non-stream chat answer: the baseline answer is a synthetic `chat.completion` of the same shape (two tool calls, ~0.9 KB). Bedrock has no recorded tool-use non-stream answer, so its per-request row uses its text answer; its only recorded stream is a tool-use one. Gemini sends few, large events (2 for the 11-token recorded answer, where OpenAI sends about one per token), so its per-event figure is the highest while its per-stream cost is among the lowest (details). Single-threaded, system allocator, release profile of the workspace.\n");

    print!("{md}");
    if let Some(path) = args.get("out") {
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, &md)?;
        eprintln!("[bench-translate] wrote {path}");
    }
    if missed > 0 {
        eprintln!("[bench-translate] {missed} provider(s) missed a target");
        if args.flag("strict") {
            return Err(err("a target was missed (--strict)"));
        }
    }
    Ok(())
}
