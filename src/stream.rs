//! The stream relay: provider events in, OpenAI SSE out, one event at a time.
//!
//! Nothing is buffered beyond what one upstream read brought in. For each
//! decoded chunk the relay takes `usage` out (for metering), drops chunks
//! with no choices (usage-only chunks, Azure's prompt-filter chunk), sets
//! `model` to the client's alias and writes `data: {…}`. At the provider's
//! end it emits the usage-only chunk if, and only if, the client asked for
//! it (`stream_options.include_usage`), then `data: [DONE]`. A failure after
//! the first byte (broken connection, provider `error` event, idle timeout,
//! a stream cut short) ends the stream with an OpenAI `error` event, and is
//! billed like a disconnect once content has reached the client.
//!
//! When the provider speaks the client's dialect (OpenAI chunks, no front
//! door), each chunk is passed through as the provider wrote it, `model`
//! spliced in and `usage` cut out, with no `serde_json` tree
//! ([`pass_through_chunk`]); a chunk the decoder would normalise goes the
//! decoding way ([`decode_event`]), so the client's bytes are the same.
//!
//! On the front doors ([`crate::frontdoors`]) a [`StreamEncoder`] writes the
//! client's API instead: the chunks of a translated stream, the events of a
//! passed-through one ([`StreamEvent::Native`], metered as they pass), the
//! end and the failure. Metering is the relay's either way. An encoder may
//! ask for keep-alive events while the provider is silent (the Messages API's
//! `ping`); the idle timer still runs between the provider's events.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use serde_json::{Map, Value};

use crate::compat::BoxStream;
use crate::frontdoors::StreamEncoder;
use crate::metering::meter::Meter;
use crate::metering::usage::TokenUsage;
use crate::ports::{ByteStream, Clock};
use crate::providers::openai::decode_event;
use crate::providers::openai::passthrough::{pass_through_next_chunk, ChunkMemo};
use crate::providers::{Endpoint, NativeEvent, StreamDecoder, StreamEvent};
use crate::wire::error::GatewayError;
use crate::wire::sse::{encode_data, SseParser, DONE};

pub(crate) struct Relay {
    pub upstream: ByteStream,
    /// How the provider's events are read: decoded, or passed through.
    pub reader: Reader,
    pub clock: Arc<dyn Clock>,
    pub idle_timeout: Duration,
    pub alias: Value,
    pub endpoint: Endpoint,
    pub include_usage: bool,
    pub meter: Meter,
    /// The front door's writer; `None`: OpenAI chunks.
    pub encoder: Option<Box<dyn StreamEncoder>>,
}

/// How the relay reads the provider's stream, decided by the attempt (which
/// peeked at it the same way).
// The memo is a few hundred bytes, moved a few times a stream until the
// relay's state (boxed) holds it: cheaper than an allocation to box it.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Reader {
    /// The provider's decoder, built only for a stream that is translated.
    Decode(Box<dyn StreamDecoder>),
    /// OpenAI chunks in the client's dialect (no front door's encoder):
    /// passed through, not decoded. The memo holds the head of the chunk the
    /// attempt's probe scanned last, so the first chunk's head, replayed
    /// from the peeked bytes, is not scanned a second time.
    PassThrough(ChunkMemo),
}

/// The SSE parser of a passed-through stream: each event is relayed as the
/// parser completes it, borrowed (no `String` per event).
struct Raw {
    sse: SseParser,
    /// The alias as a JSON string, spliced into every chunk.
    alias_json: Vec<u8>,
    /// The head the chunks share, scanned once.
    memo: ChunkMemo,
}

struct State {
    relay: Relay,
    events: Vec<StreamEvent>,
    usage_raw: Option<Value>,
    /// `id`, `created` and `system_fingerprint` of the first chunk, for the usage chunk.
    head: Map<String, Value>,
    saw_finish: bool,
    ended: bool,
    /// When the provider must have sent its next event (µs): the idle timer
    /// runs between events, not reads, so a provider dripping bytes without
    /// ever completing an event cannot hold the stream open.
    event_deadline_us: u64,
    /// How often the encoder writes a keep-alive into a silent stream.
    keepalive: Option<Duration>,
    /// Set when the relay passes chunks through (instead of `decoder`).
    raw: Option<Raw>,
    /// Set when the relay decodes the provider's events.
    decoder: Option<Box<dyn StreamDecoder>>,
    /// The last upstream read or keep-alive (µs): keep-alives are written
    /// after `keepalive` of silence.
    quiet_since_us: u64,
    /// The idle (or keep-alive) timer, while one is armed.
    timer: Option<Timer>,
    /// Where the client's frames are written, split off as each goes out:
    /// once the server has written and dropped a frame, the next one reuses
    /// its memory (one allocation a stream, not one a read).
    buf: BytesMut,
}

/// The relay's one timer. It is armed for the earliest moment something is
/// due (the event deadline, or the next keep-alive) and not re-armed when an
/// event comes in and moves that moment later: when it fires, the relay
/// checks what is due by then and arms it again for the rest. So a stream
/// arms a timer once per idle timeout, not once per event (each one a boxed
/// future and a timer-wheel insert and removal).
struct Timer {
    /// What it was armed for (µs).
    due_us: u64,
    sleep: crate::compat::BoxFuture<'static, ()>,
}

impl Relay {
    /// Runs the relay as a stream of SSE bytes.
    pub fn into_stream(mut self) -> BoxStream<'static, Bytes> {
        let event_deadline_us = self
            .clock
            .now_micros()
            .saturating_add(self.idle_timeout.as_micros() as u64);
        let keepalive = self
            .encoder
            .as_ref()
            .and_then(|e| e.keepalive_every(self.idle_timeout));
        // An empty memo in its place holds no memory.
        let (raw, decoder) =
            match std::mem::replace(&mut self.reader, Reader::PassThrough(ChunkMemo::default())) {
                Reader::PassThrough(memo) => (
                    Some(Raw {
                        sse: SseParser::new(),
                        alias_json: serde_json::to_vec(&self.alias).unwrap_or_default(),
                        memo,
                    }),
                    None,
                ),
                Reader::Decode(decoder) => (None, Some(decoder)),
            };
        let quiet_since_us = self.clock.now_micros();
        let state = State {
            raw,
            decoder,
            quiet_since_us,
            timer: None,
            buf: BytesMut::new(),
            event_deadline_us,
            keepalive,
            relay: self,
            events: Vec::new(),
            usage_raw: None,
            head: Map::new(),
            saw_finish: false,
            ended: false,
        };
        // Boxed: `unfold` moves its state into each item's future and back
        // out with the item; a pointer moves, not the whole relay.
        let state = Box::new(state);
        Box::pin(futures_util::stream::unfold(state, |mut s| async move {
            loop {
                if s.ended {
                    return None;
                }
                let waited_from = s.relay.clock.now_micros();
                let next = if waited_from >= s.event_deadline_us {
                    None
                } else {
                    // Armed once and kept while events come in; see `Timer`.
                    let due = s.due_us();
                    let timer = s.timer.get_or_insert_with(|| Timer {
                        due_us: due,
                        sleep: s
                            .relay
                            .clock
                            .sleep(Duration::from_micros(due.saturating_sub(waited_from))),
                    });
                    match select(s.relay.upstream.next(), &mut timer.sleep).await {
                        Either::Left((item, _)) => Some(item),
                        Either::Right(_) => {
                            let armed_for = timer.due_us;
                            s.timer = None;
                            // Events or reads came in since it was armed: the
                            // silence it was armed for did not happen.
                            let due = s.due_us();
                            let now = s.relay.clock.now_micros();
                            if due > armed_for && due > now {
                                // The wait was the provider's all the same.
                                s.relay.meter.add_upstream(now.saturating_sub(waited_from));
                                continue;
                            }
                            None
                        }
                    }
                };
                let now = s.relay.clock.now_micros();
                s.relay.meter.add_upstream(now.saturating_sub(waited_from));
                let mut out = std::mem::take(&mut s.buf);
                match next {
                    Some(Some(Ok(bytes))) => {
                        s.quiet_since_us = now;
                        let decoded = match s.raw.take() {
                            Some(mut raw) => {
                                // The client's frame is about the read's size
                                // (`model` swapped, `usage` cut): one allocation.
                                out.reserve(bytes.len() + 4 * raw.alias_json.len() + 64);
                                let mut decoded = false;
                                raw.sse.feed_each(&bytes, |ev| {
                                    decoded = true;
                                    s.raw_event(&mut out, ev.data, &raw.alias_json, &mut raw.memo);
                                });
                                s.raw = Some(raw);
                                decoded
                            }
                            None => {
                                if let Some(decoder) = s.decoder.as_mut() {
                                    decoder.feed(&bytes, &mut s.events);
                                }
                                !s.events.is_empty()
                            }
                        };
                        if decoded {
                            s.event_deadline_us =
                                now.saturating_add(s.relay.idle_timeout.as_micros() as u64);
                        }
                        s.process(&mut out);
                    }
                    Some(Some(Err(e))) => {
                        s.process(&mut out);
                        s.fail(
                            &mut out,
                            GatewayError::Upstream(format!(
                                "the connection to the provider broke: {e}"
                            )),
                        );
                    }
                    Some(None) => {
                        match s.raw.take() {
                            Some(mut raw) => {
                                raw.sse.finish_each(|ev| {
                                    s.raw_event(&mut out, ev.data, &raw.alias_json, &mut raw.memo)
                                });
                                s.raw = Some(raw);
                            }
                            None => {
                                if let Some(decoder) = s.decoder.as_mut() {
                                    decoder.finish(&mut s.events);
                                }
                            }
                        }
                        s.process(&mut out);
                        if !s.ended {
                            if s.saw_finish {
                                s.complete(&mut out);
                            } else {
                                s.fail(
                                    &mut out,
                                    GatewayError::Upstream(
                                        "the provider ended the stream before it was complete"
                                            .into(),
                                    ),
                                );
                            }
                        }
                    }
                    None => {
                        let silent_too_long = now >= s.event_deadline_us;
                        match s.relay.encoder.as_mut() {
                            Some(encoder) if s.keepalive.is_some() && !silent_too_long => {
                                s.quiet_since_us = now;
                                encoder.keepalive(&mut out)
                            }
                            _ => s.fail(&mut out, GatewayError::UpstreamTimeout),
                        }
                    }
                }
                let frame = (!out.is_empty()).then(|| out.split().freeze());
                s.buf = out;
                if let Some(frame) = frame {
                    return Some((frame, s));
                }
            }
        }))
    }
}

impl State {
    /// When the relay must next wake without an upstream read (µs): the
    /// event deadline, or the next keep-alive if sooner.
    fn due_us(&self) -> u64 {
        match self.keepalive {
            Some(k) => self
                .event_deadline_us
                .min(self.quiet_since_us.saturating_add(k.as_micros() as u64)),
            None => self.event_deadline_us,
        }
    }

    fn process(&mut self, out: &mut BytesMut) {
        if let Some(mut raw) = self.raw.take() {
            // The events were relayed as the parser completed them.
            if let Some(e) = raw.sse.take_overflow() {
                if !self.ended {
                    self.fail(out, e);
                }
            }
            self.raw = Some(raw);
            return;
        }
        let mut events = std::mem::take(&mut self.events);
        for ev in events.drain(..) {
            if self.ended {
                break;
            }
            match ev {
                StreamEvent::Chunk(chunk) => self.chunk(out, chunk),
                StreamEvent::Done => self.complete(out),
                StreamEvent::Error(e) => self.fail(out, e),
                StreamEvent::Native(ev) => self.native(out, ev),
            }
        }
        self.events = events;
    }

    /// One event of a passed-through stream: the chunk as it came but for
    /// `model` and `usage`, or decoded when that would change it.
    fn raw_event(
        &mut self,
        out: &mut BytesMut,
        data: &str,
        alias_json: &[u8],
        memo: &mut ChunkMemo,
    ) {
        if self.ended {
            return;
        }
        let data = data.trim();
        if data == "[DONE]" {
            return self.complete(out);
        }
        // The head and the usage as values only for the usage chunk the
        // client asked for.
        let want_head = self.relay.include_usage && self.head.is_empty();
        let Some(chunk) = pass_through_next_chunk(data, want_head, memo) else {
            return match decode_event(data) {
                StreamEvent::Chunk(chunk) => self.chunk(out, chunk),
                StreamEvent::Done => self.complete(out),
                StreamEvent::Error(e) => self.fail(out, e),
                StreamEvent::Native(ev) => self.native(out, ev),
            };
        };
        if let Some((usage, (a, b))) = chunk.usage {
            self.relay.meter.report(usage);
            self.usage_raw = None;
            if self.relay.include_usage {
                self.usage_raw = serde_json::from_str(&data[a..b]).ok();
            }
        }
        let Some(body) = chunk.body else {
            return;
        };
        self.saw_finish |= chunk.finish;
        self.relay.meter.seen_completion += chunk.content;
        for (k, v) in chunk.head {
            self.head.insert(k.into(), v);
        }
        out.reserve(data.len() + alias_json.len() + 8);
        out.put_slice(b"data: ");
        body.write(data, alias_json, out);
        out.put_slice(b"\n\n");
    }

    fn chunk(&mut self, out: &mut BytesMut, mut chunk: Map<String, Value>) {
        if let Some(u) = chunk.remove("usage") {
            if let Some(t) = TokenUsage::from_openai(&u) {
                self.relay.meter.report(t);
                self.usage_raw = Some(u);
            }
        }
        let Some(choices) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
        else {
            return;
        };
        for c in choices {
            if c.get("finish_reason").is_some_and(|f| !f.is_null()) {
                self.saw_finish = true;
            }
            let delta = c.get("delta").unwrap_or(c);
            if ["content", "text", "tool_calls", "reasoning_content"]
                .iter()
                .any(|k| delta.get(k).is_some_and(|v| !v.is_null() && v != ""))
            {
                self.relay.meter.seen_completion += 1;
            }
        }
        if self.head.is_empty() {
            for k in ["id", "created", "system_fingerprint"] {
                if let Some(v) = chunk.get(k) {
                    self.head.insert(k.into(), v.clone());
                }
            }
        }
        chunk.insert("model".into(), self.relay.alias.clone());
        if let Some(encoder) = self.relay.encoder.as_mut() {
            encoder.chunk(&chunk, out);
            return;
        }
        match serde_json::to_vec(&chunk) {
            Ok(json) => encode_data(out, &json),
            Err(e) => self.fail(
                out,
                GatewayError::Internal(format!("cannot encode a chunk: {e}")),
            ),
        }
    }

    /// A passed-through event: metered, then written as it came.
    fn native(&mut self, out: &mut BytesMut, ev: NativeEvent) {
        if let Some(u) = ev.usage {
            self.relay.meter.report(u);
        }
        if ev.content {
            self.relay.meter.seen_completion += 1;
        }
        self.saw_finish |= ev.finish;
        match self.relay.encoder.as_mut() {
            Some(encoder) => encoder.native(&ev, out),
            None => encode_data(out, ev.data.as_bytes()),
        }
    }

    /// The provider finished: usage chunk (if asked for), `[DONE]`, record.
    fn complete(&mut self, out: &mut BytesMut) {
        if let Some(encoder) = self.relay.encoder.as_mut() {
            encoder.complete(self.usage_raw.as_ref(), out);
            self.end(200);
            return;
        }
        if self.relay.include_usage {
            if let Some(usage) = self.usage_raw.take() {
                let mut c = Map::new();
                c.insert(
                    "id".into(),
                    self.head
                        .get("id")
                        .cloned()
                        .unwrap_or(Value::String(String::new())),
                );
                c.insert("object".into(), self.relay.endpoint.chunk_object().into());
                c.insert(
                    "created".into(),
                    self.head.get("created").cloned().unwrap_or(0.into()),
                );
                c.insert("model".into(), self.relay.alias.clone());
                if let Some(fp) = self.head.get("system_fingerprint") {
                    c.insert("system_fingerprint".into(), fp.clone());
                }
                c.insert("choices".into(), Value::Array(Vec::new()));
                c.insert("usage".into(), usage);
                if let Ok(json) = serde_json::to_vec(&c) {
                    encode_data(out, &json);
                }
            }
        }
        out.extend_from_slice(&DONE);
        self.end(200);
    }

    fn fail(&mut self, out: &mut BytesMut, e: GatewayError) {
        if let Some(encoder) = self.relay.encoder.as_mut() {
            encoder.fail(&e, out);
        } else if let Ok(json) = serde_json::to_vec(&e.to_json()) {
            encode_data(out, &json);
        }
        // Content reached the client: the provider bills for it, so do we
        // (its usage if it sent one, else the estimate, as for a disconnect).
        if self.relay.meter.seen_completion > 0 {
            self.relay.meter.charge_estimate();
        }
        self.end(e.status().as_u16());
    }

    fn end(&mut self, status: u16) {
        self.ended = true;
        self.relay.meter.finish(status);
    }
}
