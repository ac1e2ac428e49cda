//! `GET /metrics`: the core's request events as Prometheus series
//! (OpenMetrics text, by the `prometheus-client` crate).
//!
//! [`Metrics`] is the gateway's [`Observer`]: it only counts what the core
//! reports ([`RequestEvent`]); every rule (what a refusal is, how an attempt
//! failed, which alias a request is for) is the core's. Labels are bounded:
//! an alias or a provider is one of the config's (interned at start, so an
//! observation allocates nothing), anything else comes from a fixed
//! vocabulary; a key id or an unknown `model` never becomes a label.
//!
//! The endpoint is guarded: `Authorization: Bearer` with the master key
//! (`CONDUIT_MASTER_KEY`) or `[server] metrics_token`; 401 otherwise, and
//! 401 with a hint when neither is set.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use conduit::observe::{status_class, KeyCacheOutcome, Observer, Refusal, RequestEvent};
use conduit::{Config, FastMap};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use serde_json::json;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The endpoints of inference requests (a fixed set of label values).
const ENDPOINTS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    alias: Arc<str>,
    provider: Arc<str>,
    endpoint: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    alias: Arc<str>,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AliasLabels {
    alias: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    provider: Arc<str>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A configured alias: its label value and its series, made at start (so
/// they read 0 before the first request, and an observation is no lookup).
struct AliasSeries {
    name: Arc<str>,
    /// Prompt, completion, cached, reasoning.
    tokens: [Counter; 4],
    cost: Counter,
    /// The providers of the alias's deployments (their series' names), in
    /// [`requests`](Self::requests)' order.
    providers: Vec<Arc<str>>,
    /// `conduit_requests_total`'s series of this alias, by provider (as in
    /// `providers`, then none), endpoint ([`ENDPOINTS`], then `other`) and
    /// status class: each taken from the family at its first observation
    /// and kept, so a request skips the family's label hash and lock (about
    /// 700 instructions). A provider outside the list (a fallback alias's)
    /// goes through the family.
    requests: Box<[[OnceLock<Counter>; REQUEST_SLOTS]]>,
}

/// The status classes of [`status_class`], in the order of [`AliasSeries::requests`].
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Request series of one alias and provider: by endpoint, then status class.
const REQUEST_SLOTS: usize = (ENDPOINTS.len() + 1) * STATUS_CLASSES.len();

impl AliasSeries {
    /// The kept series for a provider (`None`: refused before routing),
    /// endpoint and status class, when the alias has a place for it.
    fn request_slot(
        &self,
        provider: Option<&ProviderSeries>,
        endpoint_index: usize,
        class: &str,
    ) -> Option<&OnceLock<Counter>> {
        let row = match provider {
            Some(p) => self
                .providers
                .iter()
                .position(|n| Arc::ptr_eq(n, &p.name))?,
            None => self.providers.len(),
        };
        let class_index = STATUS_CLASSES.iter().position(|c| *c == class)?;
        self.requests
            .get(row)?
            .get(endpoint_index * STATUS_CLASSES.len() + class_index)
    }
}

/// A configured provider: its label value and its series.
struct ProviderSeries {
    name: Arc<str>,
    attempts: Counter,
    latency: Histogram,
    first_event: Histogram,
}

const TOKEN_TYPES: [&str; 4] = ["prompt", "completion", "cached", "reasoning"];

/// Every series of `GET /metrics`.
pub struct Metrics {
    registry: Registry,
    aliases: FastMap<String, AliasSeries>,
    providers: FastMap<String, ProviderSeries>,
    none: Arc<str>,
    requests: Family<RequestLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    overhead: HistogramFamily<EndpointLabels>,
    /// `overhead`'s series by endpoint ([`ENDPOINTS`], then `other`), each
    /// taken from the family at its first observation and kept: a request
    /// then skips the family's label hash and lock (about 450 instructions).
    /// Not made at start, so a series still appears once observed.
    overhead_by_endpoint: [OnceLock<Histogram>; ENDPOINTS.len() + 1],
    failures: Family<FailureLabels, Counter>,
    in_flight: Gauge,
    /// `key_cache`'s two series (made at start): hit, miss.
    key_cache_by_result: [Counter; 2],
    /// `op="request"`: a request answered 503; `op="write"`: a record or
    /// settlement written after the response was lost.
    store_errors: Family<OpLabels, Counter>,
    /// SHA-256 (hex) of the secrets that may read `/metrics`.
    allowed: Vec<String>,
}

fn gateway_overhead() -> Histogram {
    // 50 µs … ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

fn upstream_seconds() -> Histogram {
    // 5 ms … ~164 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

impl Metrics {
    /// The series for `config`'s aliases and providers; readable with the
    /// master key or `metrics_token`.
    pub fn new(config: &Config, master_key: Option<&str>, metrics_token: Option<&str>) -> Metrics {
        let mut registry = Registry::with_prefix("conduit");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Inference requests by alias, answering provider, endpoint and status class",
            requests.clone(),
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests refused before going upstream, by reason",
            refusals.clone(),
        );
        let overhead: HistogramFamily<EndpointLabels> =
            Family::new_with_constructor(gateway_overhead);
        registry.register_with_unit(
            "gateway_overhead",
            "Time spent in the gateway (total minus upstream), by endpoint",
            Unit::Seconds,
            overhead.clone(),
        );
        let upstream_latency: HistogramFamily<ProviderLabels> =
            Family::new_with_constructor(upstream_seconds);
        registry.register_with_unit(
            "upstream_latency",
            "Time spent waiting on providers per request, by answering provider",
            Unit::Seconds,
            upstream_latency.clone(),
        );
        let first_event: HistogramFamily<ProviderLabels> =
            Family::new_with_constructor(upstream_seconds);
        registry.register_with_unit(
            "time_to_first_event",
            "Streams: from the request's arrival to the provider's first event, by provider",
            Unit::Seconds,
            first_event.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens by alias and type (prompt, completion, cached, reasoning)",
            tokens.clone(),
        );
        let cost = Family::<AliasLabels, Counter>::default();
        registry.register(
            "cost_nano_usd",
            "Cost in nano-USD (1e-9 USD) by alias",
            cost.clone(),
        );
        let attempts = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Upstream attempts by provider",
            attempts.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "upstream_failures",
            "Failed upstream attempts by provider and kind (timeout, connect, 5xx, 429, 4xx, broken)",
            failures.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Inference requests being served (streams until their end)",
            in_flight.clone(),
        );
        let key_cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "key_cache_lookups",
            "Virtual-key lookups by result (hit: from the cache, miss: from the store)",
            key_cache.clone(),
        );
        let store_errors = Family::<OpLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Store failures: requests answered 503 (op=request), usage records and settlements not written (op=write)",
            store_errors.clone(),
        );
        for op in ["request", "write"] {
            let _zero = store_errors.get_or_create(&OpLabels { op });
        }
        // Series that should read 0 rather than be absent before the first event.
        for reason in Refusal::ALL {
            let _zero = refusals.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        let key_cache_by_result = [KeyCacheOutcome::Hit, KeyCacheOutcome::Miss].map(|result| {
            key_cache.get_or_create_owned(&CacheLabels {
                result: result.as_str(),
            })
        });
        let allowed = [master_key, metrics_token]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .map(conduit::keys::hash_secret)
            .collect();
        let mut aliases = FastMap::default();
        let mut providers = FastMap::default();
        for route in config.models.values() {
            let alias: Arc<str> = Arc::from(route.alias.as_str());
            // The alias's providers are the series' own names, so a request's
            // provider (already looked up) is found by pointer.
            let mut alias_providers: Vec<Arc<str>> = Vec::new();
            for d in &route.deployments {
                let series = providers
                    .entry(d.provider_name.to_string())
                    .or_insert_with(|| {
                        let by = ProviderLabels {
                            provider: Arc::from(&*d.provider_name),
                        };
                        ProviderSeries {
                            attempts: attempts.get_or_create_owned(&by),
                            latency: upstream_latency.get_or_create_owned(&by),
                            first_event: first_event.get_or_create_owned(&by),
                            name: by.provider,
                        }
                    });
                if !alias_providers.iter().any(|p| Arc::ptr_eq(p, &series.name)) {
                    alias_providers.push(series.name.clone());
                }
            }
            let series = AliasSeries {
                tokens: TOKEN_TYPES.map(|t| {
                    tokens.get_or_create_owned(&TokenLabels {
                        alias: alias.clone(),
                        r#type: t,
                    })
                }),
                cost: cost.get_or_create_owned(&AliasLabels {
                    alias: alias.clone(),
                }),
                name: alias,
                requests: (0..=alias_providers.len())
                    .map(|_| std::array::from_fn(|_| OnceLock::new()))
                    .collect(),
                providers: alias_providers,
            };
            aliases.insert(route.alias.clone(), series);
        }
        Metrics {
            registry,
            aliases,
            providers,
            none: Arc::from(""),
            requests,
            refusals,
            overhead,
            overhead_by_endpoint: Default::default(),
            failures,
            in_flight,
            key_cache_by_result,
            store_errors,
            allowed,
        }
    }

    /// The exposition text (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            eprintln!("conduit: cannot encode the metrics: {e}");
        }
        text
    }

    /// `GET /metrics`, for a request with `headers`.
    pub fn answer(&self, method: &http::Method, headers: &http::HeaderMap) -> http::Response<Body> {
        if method != http::Method::GET && method != http::Method::HEAD {
            let mut r = error(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Use GET /metrics.".into(),
            );
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            return r;
        }
        if self.allowed.is_empty() {
            return error(
                http::StatusCode::UNAUTHORIZED,
                "metrics_disabled",
                "GET /metrics needs a token: set CONDUIT_MASTER_KEY or `[server] metrics_token`, and send it as `Authorization: Bearer …`.".into(),
            );
        }
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let ok = presented.is_some_and(|t| {
            let hash = conduit::keys::hash_secret(t);
            self.allowed.contains(&hash)
        });
        if !ok {
            return error(
                http::StatusCode::UNAUTHORIZED,
                "invalid_metrics_token",
                "GET /metrics needs `Authorization: Bearer` with the master key or `[server] metrics_token`.".into(),
            );
        }
        let mut r = http::Response::new(Full::new(Bytes::from(self.encode())).boxed_unsync());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        r
    }
}

fn error(status: http::StatusCode, code: &str, message: String) -> http::Response<Body> {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}});
    let mut r = http::Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The endpoint's label and its place in [`ENDPOINTS`] (`other` after them).
fn endpoint_label(endpoint: &str) -> (&'static str, usize) {
    match ENDPOINTS.iter().position(|e| *e == endpoint) {
        Some(i) => (ENDPOINTS[i], i),
        None => ("other", ENDPOINTS.len()),
    }
}

impl Observer for Metrics {
    fn started(&self) {
        self.in_flight.inc();
    }

    fn finished(&self, e: &RequestEvent<'_>) {
        self.in_flight.dec();
        let (endpoint, endpoint_index) = endpoint_label(e.endpoint);
        let alias = e.alias.and_then(|a| self.aliases.get(a));
        let provider = e.provider.and_then(|p| self.providers.get(p));
        let class = status_class(e.status);
        let labels = || RequestLabels {
            alias: alias.map_or(&self.none, |a| &a.name).clone(),
            provider: provider.map_or(&self.none, |p| &p.name).clone(),
            endpoint,
            status_class: class,
        };
        // A provider not configured is labelled as none, like no provider.
        match alias.and_then(|a| a.request_slot(provider, endpoint_index, class)) {
            Some(slot) => slot
                .get_or_init(|| self.requests.get_or_create_owned(&labels()))
                .inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
        if let Some(reason) = e.refusal {
            self.refusals
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .inc();
        }
        if let Some(result) = e.key_cache {
            let i = match result {
                KeyCacheOutcome::Hit => 0,
                KeyCacheOutcome::Miss => 1,
            };
            self.key_cache_by_result[i].inc();
        }
        if e.store_error {
            self.store_errors
                .get_or_create(&OpLabels { op: "request" })
                .inc();
        }
        self.overhead_by_endpoint[endpoint_index]
            .get_or_init(|| {
                self.overhead
                    .get_or_create_owned(&EndpointLabels { endpoint })
            })
            .observe(seconds(e.overhead_us()));
        if let Some(p) = provider {
            p.latency.observe(seconds(e.upstream_us));
            if let Some(us) = e.first_event_us {
                p.first_event.observe(seconds(us));
            }
            // The last attempt answered unless it is among the failed ones.
            if e.attempts as usize > e.failed_attempts.len() {
                p.attempts.inc();
            }
        }
        for f in e.failed_attempts {
            if let Some(p) = self.providers.get(&f.provider) {
                p.attempts.inc();
                self.failures
                    .get_or_create(&FailureLabels {
                        provider: p.name.clone(),
                        kind: f.kind.as_str(),
                    })
                    .inc();
            }
        }
        if let Some(a) = alias {
            let u = &e.usage;
            let counts = [
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens,
            ];
            for (counter, n) in a.tokens.iter().zip(counts) {
                if n > 0 {
                    counter.inc_by(n);
                }
            }
            if let Some(c) = e.cost_nanos.filter(|c| *c > 0) {
                a.cost.inc_by(c);
            }
        }
    }
}

fn seconds(us: u64) -> f64 {
    us as f64 / 1_000_000.0
}

/// The server's metrics, once `serve` has made them (none for the CLI's
/// in-process admin sessions).
static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();

/// Makes `metrics` the ones `GET /metrics` answers with.
pub fn install(metrics: Arc<Metrics>) {
    let _ = METRICS.set(metrics);
}

/// Counts `n` usage records or settlements a store could not write (off the
/// response path, so no request event reports them).
pub fn store_write_failed(n: u64) {
    if let Some(m) = METRICS.get() {
        m.store_errors
            .get_or_create(&OpLabels { op: "write" })
            .inc_by(n);
    }
}

/// `GET /metrics` if the server has metrics, else `None` (the gateway's 404).
pub fn serve(parts: &http::request::Parts) -> Option<http::Response<Body>> {
    if parts.uri.path() != "/metrics" {
        return None;
    }
    Some(METRICS.get()?.answer(&parts.method, &parts.headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use conduit::observe::RequestEvent;
    use conduit::GatewayError;

    const CONFIG: &str = r#"
[providers.openai]
kind = "openai-compatible"
base_url = "http://upstream.test/v1"
[models."m"]
deployments = [{ provider = "openai", model = "x" }]
"#;

    fn metrics(master: Option<&str>, token: Option<&str>) -> Metrics {
        let config = Config::parse(CONFIG, "test", &|_| None).unwrap();
        Metrics::new(&config, master, token)
    }

    fn get(m: &Metrics, auth: Option<&str>) -> http::StatusCode {
        let mut headers = http::HeaderMap::new();
        if let Some(a) = auth {
            headers.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        m.answer(&http::Method::GET, &headers).status()
    }

    #[test]
    fn guarded_by_the_master_key_or_the_token() {
        let m = metrics(Some("master"), Some("scrape"));
        assert_eq!(get(&m, None), 401);
        assert_eq!(get(&m, Some("Bearer nope")), 401);
        assert_eq!(get(&m, Some("Bearer master")), 200);
        assert_eq!(get(&m, Some("Bearer scrape")), 200);
        // Neither set: 401 saying what to set.
        assert_eq!(get(&metrics(None, None), Some("Bearer ")), 401);
    }

    #[test]
    fn an_unknown_model_is_no_label() {
        let m = metrics(Some("master"), None);
        m.started();
        let e = RequestEvent {
            alias: Some("client-made-this-up"),
            provider: Some("nor-this"),
            ..RequestEvent::unmetered(
                "req_1",
                "/v1/chat/completions",
                Some(&GatewayError::InvalidApiKey("x".into())),
                10,
                None,
                None,
            )
        };
        m.finished(&e);
        let text = m.encode();
        assert!(!text.contains("client-made-this-up") && !text.contains("nor-this"));
        assert!(text.contains(
            r#"conduit_requests_total{alias="",provider="",endpoint="/v1/chat/completions",status_class="4xx"} 1"#
        ), "{text}");
        assert!(text.contains(r#"conduit_refusals_total{reason="invalid_api_key"} 1"#));
        assert!(text.contains(r#"conduit_tokens_total{alias="m",type="prompt"} 0"#));
        assert!(text.contains("conduit_requests_in_flight 0"));
        assert!(text.ends_with("# EOF\n"));
    }

    /// The series kept per alias count what the family would: the same
    /// labels, one series per provider, endpoint and class, however the
    /// request was labelled (a kept slot, or the family for a provider
    /// outside the alias's deployments).
    #[test]
    fn request_series_kept_per_alias_count_as_the_family() {
        let config = Config::parse(
            r#"
[providers.a]
kind = "openai-compatible"
base_url = "http://a.test/v1"
[providers.b]
kind = "openai-compatible"
base_url = "http://b.test/v1"
[models."m"]
deployments = [{ provider = "a", model = "x" }]
[models."n"]
deployments = [{ provider = "b", model = "y" }]
"#,
            "test",
            &|_| None,
        )
        .unwrap();
        let m = Metrics::new(&config, Some("master"), None);
        let event = |provider: Option<&'static str>, endpoint: &'static str, status| {
            let mut e = RequestEvent::unmetered("req_1", endpoint, None, 10, None, None);
            e.alias = Some("m");
            e.provider = provider;
            e.status = status;
            e
        };
        for _ in 0..3 {
            m.finished(&event(Some("a"), "/v1/chat/completions", 200));
        }
        m.finished(&event(Some("a"), "/v1/embeddings", 200));
        m.finished(&event(Some("a"), "/v1/chat/completions", 503));
        m.finished(&event(Some("a"), "/elsewhere", 200));
        // Served by the fallback alias's provider: not one of m's deployments.
        m.finished(&event(Some("b"), "/v1/chat/completions", 200));
        m.finished(&event(Some("b"), "/v1/chat/completions", 200));
        // Refused before routing; a provider not configured reads as none.
        m.finished(&event(None, "/v1/chat/completions", 429));
        m.finished(&event(Some("gone"), "/v1/chat/completions", 429));
        let text = m.encode();
        for line in [
            r#"conduit_requests_total{alias="m",provider="a",endpoint="/v1/chat/completions",status_class="2xx"} 3"#,
            r#"conduit_requests_total{alias="m",provider="a",endpoint="/v1/embeddings",status_class="2xx"} 1"#,
            r#"conduit_requests_total{alias="m",provider="a",endpoint="/v1/chat/completions",status_class="5xx"} 1"#,
            r#"conduit_requests_total{alias="m",provider="a",endpoint="other",status_class="2xx"} 1"#,
            r#"conduit_requests_total{alias="m",provider="b",endpoint="/v1/chat/completions",status_class="2xx"} 2"#,
            r#"conduit_requests_total{alias="m",provider="",endpoint="/v1/chat/completions",status_class="4xx"} 2"#,
        ] {
            assert_eq!(text.matches(line).count(), 1, "{line} in\n{text}");
        }
        assert_eq!(text.matches("conduit_requests_total{").count(), 6, "{text}");
    }
}
