//! Observability: what one request tells the operator, and the trace it
//! belongs to.
//!
//! Every inference request (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/responses`, `/v1/messages`) reaches the
//! gateway's [`Observer`] twice: [`Observer::started`] when it arrives and
//! [`Observer::finished`] once, with a [`RequestEvent`], when its outcome is
//! known (the answer sent, the stream ended, the client gone, or a refusal).
//! The adapters only map the event: the server onto Prometheus series
//! (`GET /metrics`), the Worker and Lambda onto one JSON log line
//! ([`RequestEvent::log_line`]) plus one per failed upstream attempt
//! ([`RequestEvent::failure_lines`]). The vocabularies that label them
//! ([`Refusal`], [`AttemptFailure`], [`KeyCacheOutcome`]) are fixed here, so
//! no client-controlled string becomes a label: an alias or a provider is
//! one of the config's or absent.
//!
//! [`trace`] holds the W3C `traceparent` handling.

pub mod trace;

use serde_json::{json, Value};

use crate::compat::MaybeSendSync;
use crate::metering::usage::{FailedAttempt, TokenUsage, UsageRecord};
use crate::wire::error::GatewayError;

/// Why a request was refused before it went upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    Rpm,
    Rpd,
    Tpm,
    Budget,
    ModelNotAllowed,
    InvalidApiKey,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::Rpm,
        Refusal::Rpd,
        Refusal::Tpm,
        Refusal::Budget,
        Refusal::ModelNotAllowed,
        Refusal::InvalidApiKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Rpm => "rpm",
            Refusal::Rpd => "rpd",
            Refusal::Tpm => "tpm",
            Refusal::Budget => "budget",
            Refusal::ModelNotAllowed => "model_not_allowed",
            Refusal::InvalidApiKey => "invalid_api_key",
        }
    }

    /// The refusal of a usage record's `refused_by` (a limit or the budget).
    pub fn of_limit(limit: &str) -> Option<Refusal> {
        Some(match limit {
            "rpm" => Refusal::Rpm,
            "rpd" => Refusal::Rpd,
            "tpm" => Refusal::Tpm,
            "budget" => Refusal::Budget,
            _ => return None,
        })
    }

    /// The refusal an error before admission stands for, if any.
    pub fn of_error(e: &GatewayError) -> Option<Refusal> {
        match e {
            GatewayError::InvalidApiKey(_) => Some(Refusal::InvalidApiKey),
            GatewayError::ModelNotAllowed { .. } => Some(Refusal::ModelNotAllowed),
            _ => None,
        }
    }
}

/// How an upstream attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttemptFailure {
    /// No answer in time (the attempt's or the request's deadline, a
    /// stream's first event).
    Timeout,
    /// The provider could not be reached (DNS, refused, TLS).
    Connect,
    /// The provider answered 5xx.
    Status5xx,
    /// The provider answered 429.
    Status429,
    /// The provider answered another 4xx (408, a context window, a bad request).
    Status4xx,
    /// The connection broke, or the answer was unreadable or too large.
    #[default]
    Broken,
}

/// The start of the message of [`GatewayError::Upstream`] when the
/// provider could not be reached at all ([`unreachable`]).
const UNREACHABLE: &str = "cannot reach the provider: ";

/// The error of an attempt whose provider could not be reached.
pub(crate) fn unreachable(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::Upstream(format!("{UNREACHABLE}{e}"))
}

impl AttemptFailure {
    pub const ALL: [AttemptFailure; 6] = [
        AttemptFailure::Timeout,
        AttemptFailure::Connect,
        AttemptFailure::Status5xx,
        AttemptFailure::Status429,
        AttemptFailure::Status4xx,
        AttemptFailure::Broken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptFailure::Timeout => "timeout",
            AttemptFailure::Connect => "connect",
            AttemptFailure::Status5xx => "5xx",
            AttemptFailure::Status429 => "429",
            AttemptFailure::Status4xx => "4xx",
            AttemptFailure::Broken => "broken",
        }
    }

    pub fn parse(s: &str) -> Option<AttemptFailure> {
        AttemptFailure::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind of an attempt that failed with `error` before the provider
    /// answered (or whose answer could not be read).
    pub fn of(error: &GatewayError) -> AttemptFailure {
        match error {
            GatewayError::UpstreamTimeout | GatewayError::DeadlineExceeded { .. } => {
                AttemptFailure::Timeout
            }
            GatewayError::Upstream(m) if m.starts_with(UNREACHABLE) => AttemptFailure::Connect,
            _ => AttemptFailure::Broken,
        }
    }

    /// The kind of an attempt the provider answered with `status` (not 2xx).
    pub fn of_status(status: u16) -> AttemptFailure {
        match status {
            429 => AttemptFailure::Status429,
            500.. => AttemptFailure::Status5xx,
            400..=499 => AttemptFailure::Status4xx,
            _ => AttemptFailure::Broken,
        }
    }
}

/// Whether the key was found in the gateway's key cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyCacheOutcome {
    Hit,
    Miss,
}

impl KeyCacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyCacheOutcome::Hit => "hit",
            KeyCacheOutcome::Miss => "miss",
        }
    }
}

/// `2xx` … `5xx`: the class of an HTTP status (`499`: the client went away).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// What one request tells the operator, when its outcome is known.
/// Borrowed from the request's usage record: building one allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestEvent<'a> {
    pub request_id: &'a str,
    /// The key's id (log lines only, never a metric label); none when
    /// the request was refused before a key was found.
    pub key_id: Option<&'a str>,
    /// `/v1/chat/completions`, … (a fixed set).
    pub endpoint: &'a str,
    /// The asked alias, when the config has it (an unknown `model` is none).
    pub alias: Option<&'a str>,
    /// The configured provider of the deployment that answered (or was tried last).
    pub provider: Option<&'a str>,
    /// The provider's model name of that deployment (from the config).
    pub provider_model: Option<&'a str>,
    /// The HTTP status the client got (499: it went away first).
    pub status: u16,
    pub streamed: bool,
    pub refusal: Option<Refusal>,
    pub usage: TokenUsage,
    /// Nano-USD; `None` when the deployment has no price.
    pub cost_nanos: Option<u64>,
    pub attempts: u32,
    pub failed_attempts: &'a [FailedAttempt],
    /// From arrival to the end of the answer (the last byte of a stream).
    pub latency_us: u64,
    /// Time spent waiting on providers.
    pub upstream_us: u64,
    /// Time to first event: from arrival until a stream's first event was in.
    pub first_event_us: Option<u64>,
    pub key_cache: Option<KeyCacheOutcome>,
    /// A store (keys, limits) failed this request (503 `store_unavailable`).
    pub store_error: bool,
    pub trace_id: Option<&'a str>,
}

impl<'a> RequestEvent<'a> {
    /// A request that ended before it had a usage record: with `error` (no
    /// key, or the key store failed), or without (the client went away
    /// while its key was looked up: 499).
    pub fn unmetered(
        request_id: &'a str,
        endpoint: &'a str,
        error: Option<&GatewayError>,
        latency_us: u64,
        key_cache: Option<KeyCacheOutcome>,
        trace_id: Option<&'a str>,
    ) -> RequestEvent<'a> {
        RequestEvent {
            request_id,
            key_id: None,
            endpoint,
            alias: None,
            provider: None,
            provider_model: None,
            status: error.map_or(499, |e| e.status().as_u16()),
            streamed: false,
            refusal: error.and_then(Refusal::of_error),
            usage: TokenUsage::default(),
            cost_nanos: Some(0),
            attempts: 0,
            failed_attempts: &[],
            latency_us,
            upstream_us: 0,
            first_event_us: None,
            key_cache,
            store_error: matches!(error, Some(GatewayError::Store(_))),
            trace_id,
        }
    }

    /// The event of a metered request's record.
    pub fn of_record(record: &'a UsageRecord, facts: &RequestFacts) -> RequestEvent<'a> {
        RequestEvent {
            request_id: &record.request_id,
            key_id: Some(&record.key_id),
            endpoint: &record.endpoint,
            alias: facts.alias_known.then_some(record.model.as_str()),
            provider: record.provider.as_deref(),
            provider_model: record.provider_model.as_deref(),
            status: record.status,
            streamed: record.streamed,
            refusal: facts
                .refusal
                .or_else(|| record.refused_by.as_deref().and_then(Refusal::of_limit)),
            usage: record.usage,
            cost_nanos: record.cost_nanos,
            attempts: record.attempts,
            failed_attempts: &record.failed_attempts,
            latency_us: record.latency_us,
            upstream_us: record.upstream_latency_us,
            first_event_us: facts.first_event_us,
            key_cache: facts.key_cache,
            store_error: facts.store_error,
            trace_id: record.trace_id.as_deref(),
        }
    }

    /// Gateway time: total minus upstream.
    pub fn overhead_us(&self) -> u64 {
        self.latency_us.saturating_sub(self.upstream_us)
    }

    /// The per-request JSON log line (Worker, Lambda): every field of the
    /// event, flat, times in ms; never a secret, a prompt or an answer.
    pub fn log_line(&self) -> String {
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        json!({
            "conduit": "request",
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "key_id": self.key_id,
            "endpoint": self.endpoint,
            "alias": self.alias,
            "provider": self.provider,
            "provider_model": self.provider_model,
            "status": self.status,
            "status_class": status_class(self.status),
            "streamed": self.streamed,
            "refusal": self.refusal.map(Refusal::as_str),
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "cached_tokens": self.usage.cached_tokens,
            "reasoning_tokens": self.usage.reasoning_tokens,
            "total_tokens": self.usage.total_tokens,
            "cost_nano_usd": self.cost_nanos,
            "cost_usd": self.cost_nanos.map(crate::metering::pricing::usd),
            "attempts": self.attempts,
            "failed_attempts": self.failed_attempts.len(),
            "failures": self.failed_attempts.iter().map(|f| json!({
                "provider": f.provider, "kind": f.kind.as_str(), "status": f.status,
            })).collect::<Value>(),
            "latency_ms": ms(self.latency_us),
            "overhead_ms": ms(self.overhead_us()),
            "upstream_ms": ms(self.upstream_us),
            "ttfe_ms": self.first_event_us.map(ms),
            "key_cache": self.key_cache.map(KeyCacheOutcome::as_str),
            "store_error": self.store_error,
        })
        .to_string()
    }

    /// One JSON log line per failed upstream attempt (`"conduit":
    /// "upstream_failure"`), so that failures by provider and kind are one
    /// query away in log tools that do not unnest arrays.
    pub fn failure_lines(&self) -> impl Iterator<Item = String> + '_ {
        self.failed_attempts.iter().map(move |f| {
            json!({
                "conduit": "upstream_failure",
                "request_id": self.request_id,
                "trace_id": self.trace_id,
                "alias": f.alias,
                "provider": f.provider,
                "provider_model": f.model,
                "kind": f.kind.as_str(),
                "status": f.status,
            })
            .to_string()
        })
    }
}

/// What the meter learns about a request beside its usage record.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts {
    /// The asked `model` is one of the config's aliases.
    pub alias_known: bool,
    pub refusal: Option<Refusal>,
    pub first_event_us: Option<u64>,
    pub key_cache: Option<KeyCacheOutcome>,
    pub store_error: bool,
}

/// Where requests are reported. Called on the request's path: an
/// implementation only counts or writes a line, never waits.
pub trait Observer: MaybeSendSync {
    /// An inference request arrived (requests in flight: one more).
    fn started(&self) {}
    /// Its outcome is known (requests in flight: one fewer). Called exactly
    /// once per [`Observer::started`].
    fn finished(&self, event: &RequestEvent<'_>);
}

/// The observer of a gateway that reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn finished(&self, _event: &RequestEvent<'_>) {}
}

/// Which requests get the JSON log lines (`[gateway] request_log`). Log
/// pipelines bill by the line (Workers Logs by the event, CloudWatch by the
/// byte ingested), so a busy deployment can keep only what goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestLog {
    /// Every request's line, and one per failed upstream attempt.
    #[default]
    All,
    /// The lines of a request that went wrong: answered 4xx or 5xx (a
    /// refusal, 499 for a client gone), a failed upstream attempt (even when
    /// a retry or a fallback then answered), or a store error.
    Failures,
    /// No line.
    Off,
}

impl RequestLog {
    pub const ALL: [RequestLog; 3] = [RequestLog::All, RequestLog::Failures, RequestLog::Off];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestLog::All => "all",
            RequestLog::Failures => "failures",
            RequestLog::Off => "off",
        }
    }

    pub fn parse(text: &str) -> Option<RequestLog> {
        RequestLog::ALL.into_iter().find(|l| l.as_str() == text)
    }

    /// Whether `event`'s lines are written.
    pub fn keeps(self, event: &RequestEvent<'_>) -> bool {
        match self {
            RequestLog::All => true,
            RequestLog::Failures => {
                event.status >= 400 || !event.failed_attempts.is_empty() || event.store_error
            }
            RequestLog::Off => false,
        }
    }
}

/// The Worker's and Lambda's observer: the event's JSON log lines, through
/// the platform's logger (`console.log`, stdout), for the requests
/// `[gateway] request_log` keeps.
pub struct LogLines<F> {
    which: RequestLog,
    write: F,
}

impl<F: Fn(&str) + MaybeSendSync> LogLines<F> {
    pub fn new(which: RequestLog, write: F) -> LogLines<F> {
        LogLines { which, write }
    }
}

impl<F: Fn(&str) + MaybeSendSync> Observer for LogLines<F> {
    fn finished(&self, event: &RequestEvent<'_>) {
        if !self.which.keeps(event) {
            return;
        }
        (self.write)(&event.log_line());
        for line in event.failure_lines() {
            (self.write)(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_failure_kinds() {
        assert_eq!(
            AttemptFailure::of(&GatewayError::UpstreamTimeout),
            AttemptFailure::Timeout
        );
        assert_eq!(
            AttemptFailure::of(&unreachable("connection refused")),
            AttemptFailure::Connect
        );
        assert_eq!(
            AttemptFailure::of(&GatewayError::Upstream("the connection broke".into())),
            AttemptFailure::Broken
        );
        assert_eq!(AttemptFailure::of_status(503), AttemptFailure::Status5xx);
        assert_eq!(AttemptFailure::of_status(429), AttemptFailure::Status429);
        assert_eq!(AttemptFailure::of_status(400), AttemptFailure::Status4xx);
        for k in AttemptFailure::ALL {
            assert_eq!(AttemptFailure::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn refusal_vocabulary() {
        for r in Refusal::ALL {
            if let Some(l) = Refusal::of_limit(r.as_str()) {
                assert_eq!(l, r);
            }
        }
        assert_eq!(
            Refusal::of_error(&GatewayError::InvalidApiKey("x".into())),
            Some(Refusal::InvalidApiKey)
        );
        assert_eq!(status_class(499), "4xx");
        assert_eq!(status_class(200), "2xx");
    }

    #[test]
    fn request_log_keeps_what_it_says() {
        use std::sync::Mutex;
        for l in RequestLog::ALL {
            assert_eq!(RequestLog::parse(l.as_str()), Some(l));
        }
        assert_eq!(RequestLog::parse("errors"), None);
        let mut ok = RequestEvent::unmetered("req_ok", "/v1/chat/completions", None, 1, None, None);
        ok.status = 200;
        let refused = RequestEvent::unmetered(
            "req_401",
            "/v1/chat/completions",
            Some(&GatewayError::InvalidApiKey("x".into())),
            1,
            None,
            None,
        );
        let failed = [FailedAttempt {
            alias: "chat".into(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            status: 500,
            code: None,
            kind: AttemptFailure::Status5xx,
        }];
        let mut retried = ok;
        retried.request_id = "req_retried";
        retried.failed_attempts = &failed;
        let mut store = ok;
        store.request_id = "req_store";
        store.store_error = true;
        let events = [ok, refused, retried, store];
        for (which, want) in [
            (
                RequestLog::All,
                vec!["req_ok", "req_401", "req_retried", "req_store"],
            ),
            (
                RequestLog::Failures,
                vec!["req_401", "req_retried", "req_store"],
            ),
            (RequestLog::Off, vec![]),
        ] {
            let lines = Mutex::new(Vec::new());
            let log = LogLines::new(which, |line: &str| {
                let v: Value = serde_json::from_str(line).unwrap();
                if v["conduit"] == "request" {
                    let id = v["request_id"].as_str().unwrap().to_owned();
                    lines.lock().unwrap().push(id);
                }
            });
            for e in &events {
                log.finished(e);
            }
            assert_eq!(*lines.lock().unwrap(), want, "{which:?}");
        }
    }

    #[test]
    fn log_line_has_the_fields_and_no_secret() {
        let e = RequestEvent::unmetered(
            "req_1",
            "/v1/chat/completions",
            Some(&GatewayError::InvalidApiKey(
                "Incorrect API key provided.".into(),
            )),
            1500,
            Some(KeyCacheOutcome::Miss),
            Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        );
        let v: Value = serde_json::from_str(&e.log_line()).unwrap();
        assert_eq!(v["conduit"], "request");
        assert_eq!(v["status"], 401);
        assert_eq!(v["status_class"], "4xx");
        assert_eq!(v["refusal"], "invalid_api_key");
        assert_eq!(v["key_cache"], "miss");
        assert_eq!(v["overhead_ms"], 1.5);
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(e.failure_lines().count(), 0);
    }
}
