//! The request pipeline: every request to Conduit, stage by stage.
//!
//! ```text
//!  request ─► route ─► authenticate ─► parse ─► authorize ─► select alias ─► estimate ─► admit
//!                                                                                          │
//!              ┌──────── attempt by attempt (retries, fallbacks, deadline) ◄──────────────┘
//!              ▼
//!  pick deployment ─► translate request ─► call upstream ─► translate response ─► meter ─► respond
//!        ▲                                       │ retryable failure before the first byte
//!        └───────────────────────────────────────┘ reached the client
//! ```
//!
//! | stage               | reads                                          | adds                                        |
//! |---------------------|------------------------------------------------|---------------------------------------------|
//! | route               | method, path                                   | the [`Route`] (405/404 otherwise)           |
//! | authenticate        | `Authorization`/`X-API-Key`/`api-key`, [`KeyStore`] via [`KeyCache`] | the [`VirtualKey`] and the secret's hash (401: missing, unknown, disabled, expired) |
//! | parse               | the body (≤ `max_body_bytes`, else 413)        | the JSON object, `model`, `stream` (400): raw values without a tree where the scan is sure, which OpenAI-dialect providers send on with `model` spliced in; the tree at once for an alias with no such provider ([`crate::frontdoors::chat`]) |
//! | authorize           | the key's `allowed_models` (the limiter's record when the cache says no) | — (403 `model_not_allowed`) |
//! | select alias        | `[models.ALIAS]`                               | the [`ModelRoute`] (404 `model_not_found`)  |
//! | estimate            | the body, the prices of the alias's deployments and of its fallbacks' | the [`Demand`]: tokens and cost (403 `model_price_unknown` for a budget without a price) |
//! | admit               | [`Limiter`] with the key and the [`Demand`] (skipped for a key without limits or budget that the limiter vouched for within `revocation_delay_ms`, [`KeyCache`]; on the edge, answered from the isolate's or container's lease while the key is well below its limits, `metering::limits::lease`) | an [`Admission`] (once per request, whatever the attempts): reservation, `x-ratelimit-*`, the authoritative key (429/402/401) |
//! | pick deployment     | the [`Router`]'s [`AttemptPlan`]: strategy, health, retries, backoff, fallbacks, deadline ([`crate::routing`]) | the next [`Attempt`] and its wait ([`Clock`]); or the final error (504 `upstream_timeout` naming the attempts when `timeout_ms` ran out) |
//! | translate request   | the deployment's [`Provider`], a [`Call`], the client's `traceparent` | the upstream `http::Request`, with Conduit's `traceparent` ([`crate::observe::trace`]) |
//! | call upstream       | [`Upstream`], [`Clock`] for the timeouts       | the answer read whole, or a stream peeked up to its first event ([`crate::attempt`]); a retryable failure (5xx, 408, 429, timeout, connection, unreadable, a stream failing before its first event) goes back to *pick deployment* |
//! | translate response  | the provider's body or stream decoder          | an OpenAI object with `model` = the alias, or the [`Relay`]; an answer already in the client's dialect passes through with `model` spliced in, no tree ([`crate::providers::openai::passthrough`]) |
//! | meter               | the usage the provider reported, timings, the answering deployment's price | the cost, the settlement, one [`UsageRecord`] with the attempts and the failed ones, handed to the [`Spawner`] unless done at once (from the stream's end, or its `Drop`); the [`RequestEvent`] to the [`Observer`] (metrics, log lines; also for a request refused before it had a key) |
//! | respond             | —                                              | `x-request-id`, `x-conduit-overhead-ms`, `x-ratelimit-*`, `x-conduit-deployment`, `x-conduit-attempts` |
//!
//! The front doors ([`crate::frontdoors`]: `/v1/responses`, `/v1/messages`)
//! run the same stages: every provider is wrapped to translate their calls
//! through the chat form or pass them through, their streams are written by
//! the front door's encoder, and their errors take the client API's shape.
//! `/v1/messages/count_tokens` only authenticates, authorizes and routes.
//!
//! Admin routes (`/admin/…`) go to [`crate::admin`] after the master-key check;
//! `/` and `/ui/…` to the web UI ([`crate::ui`]).

use std::borrow::Cow;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::admin::{self, AdminRoute};
use crate::attempt::{CallContext, Replay};
use crate::compat::BoxStream;
use crate::config::{Config, ModelRoute};
use crate::frontdoors::chat::ClientBody;
use crate::keys::cache::KeyCache;
use crate::keys::{extract_secret, hash_secret, random_id, VirtualKey};
use crate::metering::meter::Meter;
use crate::metering::usage::{TokenUsage, UsageRecord};
use crate::observe::trace::TraceContext;
use crate::observe::{KeyCacheOutcome, NoObserver, Observer, Refusal, RequestEvent};
use crate::ports::{
    Admission, ByteStream, Clock, Demand, KeyStore, Limiter, Spawner, Upstream, UsageStore,
};
use crate::providers::{Call, Endpoint, Provider};
use crate::routing::{Attempt, AttemptPlan, Router, Step};
use crate::stream::{Reader, Relay};
use crate::wire::error::GatewayError;

/// The adapters' implementations of the ports.
#[derive(Clone)]
pub struct Ports {
    pub keys: Arc<dyn KeyStore>,
    pub usage: Arc<dyn UsageStore>,
    pub upstream: Arc<dyn Upstream>,
    pub clock: Arc<dyn Clock>,
    pub limiter: Arc<dyn Limiter>,
    /// Where work after the response goes, unless a request brings its own.
    pub spawner: Arc<dyn Spawner>,
}

/// A response body: whole, or a stream of SSE bytes.
pub enum ResponseBody {
    Full(Bytes),
    Stream(BoxStream<'static, Bytes>),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBody::Full(b) => write!(f, "Full({} bytes)", b.len()),
            ResponseBody::Stream(_) => f.write_str("Stream"),
        }
    }
}

pub type Response = http::Response<ResponseBody>;

/// What a path and method ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Models,
    Model(String),
    Inference(Endpoint),
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// `GET /v1/responses/{id}`: a response the provider stored.
    StoredResponse(String),
    Admin(AdminRoute),
    Ui(crate::ui::UiRoute),
}

impl Route {
    /// The endpoint whose error shape this route answers in.
    fn endpoint(&self) -> Option<Endpoint> {
        match self {
            Route::Inference(e) => Some(*e),
            Route::CountTokens => Some(Endpoint::Messages),
            _ => None,
        }
    }
}

/// The gateway: the config, the ports, and the pipeline over them.
pub struct Gateway {
    config: Arc<Config>,
    ports: Ports,
    key_cache: KeyCache,
    master_key_hash: Option<[u8; 32]>,
    created_secs: u64,
    /// Deployment health on this instance (process, isolate, container).
    router: Router,
    /// Where each inference request is reported ([`crate::observe`]).
    observer: Arc<dyn Observer>,
}

/// Body bytes read from an upstream error answer, at most.
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

/// Header names on every answer, built at compile time.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
const X_CONDUIT_OVERHEAD_MS: http::HeaderName =
    http::HeaderName::from_static("x-conduit-overhead-ms");

impl Gateway {
    /// `master_key` enables the admin API; without it, admin routes answer 401.
    pub fn new(config: Config, ports: Ports, master_key: Option<&str>) -> Self {
        let trust_ms = if ports.limiter.trust_for_revocation_delay() {
            config.gateway.revocation_delay_ms
        } else {
            0
        };
        let key_cache = KeyCache::with_trust(config.gateway.key_cache_ttl_ms, trust_ms);
        let created_secs = ports.clock.now_micros() / 1_000_000;
        let router = Router::new(&config);
        Gateway {
            router,
            config: Arc::new(config),
            ports,
            key_cache,
            master_key_hash: master_key
                .filter(|k| !k.is_empty())
                .map(|k| Sha256::digest(k.as_bytes()).into()),
            created_secs,
            observer: Arc::new(NoObserver),
        }
    }

    /// Reports every inference request to `observer` (metrics, log lines).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// The deployments' health on this instance.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Largest accepted request body; adapters stop reading past it and
    /// answer [`Gateway::error_response`] with [`GatewayError::PayloadTooLarge`].
    pub fn max_body_bytes(&self) -> usize {
        self.config.gateway.max_body_bytes
    }

    /// Whether a request for `alias` keeps its raw values: some deployment
    /// of the alias or of its fallbacks speaks OpenAI's dialect and may
    /// splice them. An unknown alias keeps them (it is refused before its
    /// body is read again).
    fn keeps_raw(&self, alias: &str) -> bool {
        let Some(route) = self.config.models.get(alias) else {
            return true;
        };
        let speaks = |r: &ModelRoute| r.deployments.iter().any(|d| d.provider.speaks_openai());
        speaks(route)
            || route
                .policy
                .fallbacks
                .iter()
                .chain(&route.policy.context_window_fallbacks)
                .filter_map(|a| self.config.models.get(a))
                .any(speaks)
    }

    pub(crate) fn master_key_hash(&self) -> Option<&[u8; 32]> {
        self.master_key_hash.as_ref()
    }

    pub(crate) fn key_cache(&self) -> &KeyCache {
        &self.key_cache
    }

    pub(crate) fn upstream(&self) -> &dyn Upstream {
        self.ports.upstream.as_ref()
    }

    pub(crate) fn now_micros(&self) -> u64 {
        self.ports.clock.now_micros()
    }

    pub(crate) fn now_secs(&self) -> u64 {
        self.ports.clock.now_micros() / 1_000_000
    }

    /// Serves one request. Never fails: every failure is an OpenAI error answer.
    pub async fn handle(&self, request: http::Request<Bytes>) -> Response {
        self.handle_with(request, &self.ports.spawner).await
    }

    /// [`handle`](Self::handle), with a spawner bound to this request
    /// (Workers: one that calls `ctx.wait_until`).
    pub async fn handle_with(
        &self,
        request: http::Request<Bytes>,
        spawner: &Arc<dyn Spawner>,
    ) -> Response {
        let started_us = self.ports.clock.now_micros();
        let request_id = random_id("req_");
        let (parts, body) = request.into_parts();
        let routed = route(&parts.method, parts.uri.path());
        let endpoint = match &routed {
            Ok(r) => r.endpoint(),
            Err(_) => crate::frontdoors::endpoint_of_path(parts.uri.path()),
        };
        let result = match routed {
            Ok(Route::Health) => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
            Ok(Route::Models) => self.list_models(&parts.headers).await,
            Ok(Route::Model(id)) => self.get_model(&parts.headers, &id).await,
            Ok(Route::Inference(endpoint)) => {
                self.observer.started();
                self.inference(
                    endpoint,
                    &parts.headers,
                    body,
                    &request_id,
                    started_us,
                    spawner,
                )
                .await
            }
            Ok(Route::CountTokens) => self.count_tokens(&parts.headers, body).await,
            Ok(Route::StoredResponse(id)) => self.stored_response(&parts.headers, &id).await,
            Ok(Route::Admin(r)) => admin::handle(self, r, &parts, body).await,
            Ok(Route::Ui(r)) => Ok(crate::ui::serve(r, &parts.method, &parts.headers)),
            Err(e) => Err(e),
        };
        let mut response = result.unwrap_or_else(|e| self.error_response_on(endpoint, &e));
        let headers = response.headers_mut();
        // The id's own bytes become the value (no copy), under a name built
        // at compile time (a `&str` name is parsed and copied per insert).
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(request_id)) {
            headers.insert(X_REQUEST_ID, v);
        }
        if !headers.contains_key(X_CONDUIT_OVERHEAD_MS) {
            let overhead = self.ports.clock.now_micros().saturating_sub(started_us);
            headers.insert(X_CONDUIT_OVERHEAD_MS, overhead_header(overhead));
        }
        response
    }

    /// Answers `e` for a request the adapter refused before [`Gateway::handle`]
    /// (e.g. a body over `max_body_bytes`), with the usual headers.
    pub fn refuse(&self, e: &GatewayError) -> Response {
        let mut response = self.error_response(e);
        if let Ok(v) = HeaderValue::from_str(&random_id("req_")) {
            response.headers_mut().insert("x-request-id", v);
        }
        response
            .headers_mut()
            .insert("x-conduit-overhead-ms", HeaderValue::from_static("0.000"));
        response
    }

    /// The OpenAI error answer for `e`.
    pub fn error_response(&self, e: &GatewayError) -> Response {
        self.error_response_on(None, e)
    }

    /// The error answer for `e` in the shape of `endpoint`'s API (OpenAI's
    /// envelope unless a front door has its own: [`crate::frontdoors::error_body`]).
    pub fn error_response_on(&self, endpoint: Option<Endpoint>, e: &GatewayError) -> Response {
        let mut r = match crate::frontdoors::error_body(endpoint, e) {
            Some((status, body)) => json_response(status, &body),
            None => json_response(e.status(), &e.to_json()),
        };
        if let Some(v) = e.retry_after().and_then(|v| HeaderValue::from_str(&v).ok()) {
            r.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        if e.status() == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut().insert(
                http::header::ALLOW,
                HeaderValue::from_static("GET, POST, PATCH, DELETE"),
            );
        }
        r
    }

    /// Stage *authenticate*: the key from the headers, through the cache,
    /// and the SHA-256 of the secret it was presented with.
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<(Arc<VirtualKey>, String), GatewayError> {
        self.authenticate_noting(headers, &mut None).await
    }

    /// [`authenticate`](Self::authenticate), noting whether the key cache had the key.
    async fn authenticate_noting(
        &self,
        headers: &HeaderMap,
        cache: &mut Option<KeyCacheOutcome>,
    ) -> Result<(Arc<VirtualKey>, String), GatewayError> {
        let secret = extract_secret(headers).ok_or_else(|| {
            GatewayError::InvalidApiKey(
                "Missing API key: send it as `Authorization: Bearer condt_…`, `X-API-Key` or `api-key`.".into(),
            )
        })?;
        let hash = hash_secret(secret);
        let now_us = self.ports.clock.now_micros();
        if let Some(k) = self.key_cache.get(&hash, now_us) {
            if k.check_usable(now_us / 1_000_000).is_ok() {
                *cache = Some(KeyCacheOutcome::Hit);
                return Ok((k, hash));
            }
            // A cached refusal may be stale (re-enabled elsewhere): ask the store.
        }
        *cache = Some(KeyCacheOutcome::Miss);
        let key =
            Arc::new(self.ports.keys.find_by_hash(&hash).await?.ok_or_else(|| {
                GatewayError::InvalidApiKey("Incorrect API key provided.".into())
            })?);
        self.key_cache.put(&hash, key.clone(), now_us);
        key.check_usable(now_us / 1_000_000)?;
        Ok((key, hash))
    }

    /// Authenticates a request that does not go through admission, with the
    /// limiter's word on the key (authoritative where the store may lag).
    pub(crate) async fn authenticate_and_verify(
        &self,
        headers: &HeaderMap,
    ) -> Result<Arc<VirtualKey>, GatewayError> {
        let (key, hash) = self.authenticate(headers).await?;
        if self
            .key_cache
            .trusted(&hash, self.ports.clock.now_micros())
            .is_some()
        {
            return Ok(key);
        }
        match self.ports.limiter.verify(&key, &hash).await? {
            Some(fresh) => {
                let fresh = Arc::new(fresh);
                self.key_cache
                    .vouch(&hash, fresh.clone(), self.ports.clock.now_micros());
                Ok(fresh)
            }
            None => Ok(key),
        }
    }

    fn model_object(&self, route: &ModelRoute) -> Value {
        json!({
            "id": route.alias,
            "object": "model",
            "created": self.created_secs,
            "owned_by": route.deployments.first().map(|d| &*d.provider_name).unwrap_or("conduit"),
        })
    }

    async fn list_models(&self, headers: &HeaderMap) -> Result<Response, GatewayError> {
        let key = self.authenticate_and_verify(headers).await?;
        let data: Vec<Value> = self
            .config
            .models
            .values()
            .filter(|r| key.allows_model(&r.alias))
            .map(|r| self.model_object(r))
            .collect();
        let mut response = json_response(StatusCode::OK, &json!({"object": "list", "data": data}));
        self.add_limit_status(&key, response.headers_mut()).await;
        Ok(response)
    }

    async fn get_model(&self, headers: &HeaderMap, id: &str) -> Result<Response, GatewayError> {
        let key = self.authenticate_and_verify(headers).await?;
        if !key.allows_model(id) {
            return Err(GatewayError::ModelNotAllowed {
                model: id.to_owned(),
            });
        }
        let route = self
            .config
            .models
            .get(id)
            .ok_or_else(|| GatewayError::ModelNotFound {
                model: id.to_owned(),
            })?;
        let mut response = json_response(StatusCode::OK, &self.model_object(route));
        self.add_limit_status(&key, response.headers_mut()).await;
        Ok(response)
    }

    /// `x-ratelimit-*` for answers that do not go through admission.
    pub(crate) async fn add_limit_status(&self, key: &VirtualKey, headers: &mut HeaderMap) {
        if key.limits.is_empty() {
            return;
        }
        if let Ok(status) = self.ports.limiter.status(key).await {
            crate::metering::limits::add_rate_limit_headers(headers, &status);
        }
    }

    /// Stages *authenticate* to *respond* for the three inference endpoints.
    async fn inference(
        &self,
        endpoint: Endpoint,
        headers: &HeaderMap,
        body: Bytes,
        request_id: &str,
        started_us: u64,
        spawner: &Arc<dyn Spawner>,
    ) -> Result<Response, GatewayError> {
        let trace = TraceContext::from_headers(headers);
        let mut key_cache = None;
        let mut unmetered = Unmetered {
            gateway: self,
            request_id,
            endpoint,
            started_us,
            trace: &trace,
            pending: true,
        };
        let (key, key_hash) = match self.authenticate_noting(headers, &mut key_cache).await {
            Ok(found) => {
                unmetered.pending = false;
                found
            }
            Err(e) => {
                unmetered.pending = false;
                unmetered.report(Some(&e), key_cache);
                return Err(e);
            }
        };
        // From here on, every outcome is metered exactly once.
        let mut meter = Meter::new(
            self.ports.usage.clone(),
            self.ports.limiter.clone(),
            self.ports.clock.clone(),
            spawner.clone(),
            key.clone(),
            UsageRecord {
                request_id: request_id.to_owned(),
                key_id: key.id.clone(),
                model: String::new(),
                provider: None,
                provider_model: None,
                endpoint: endpoint.route().to_owned(),
                status: 0,
                streamed: false,
                usage: TokenUsage::default(),
                estimated_prompt_tokens: 0,
                estimated_completion_tokens: 0,
                cost_nanos: None,
                refused_by: None,
                latency_us: 0,
                upstream_latency_us: 0,
                created_at_ms: started_us / 1000,
                attempts: 0,
                failed_attempts: Vec::new(),
                served_alias: None,
                trace_id: Some(trace.trace_id_hex()),
                traceparent: Some(trace.traceparent()),
            },
            started_us,
        );
        meter.observed_by(self.observer.clone());
        meter.facts.key_cache = key_cache;
        match self
            .proxy(
                endpoint, &key, key_hash, body, &trace, request_id, &mut meter,
            )
            .await
        {
            Ok(Proxied::Full(mut response, usage)) => {
                meter.add_limit_headers(response.headers_mut());
                add_route_headers(response.headers_mut(), &meter.record);
                response
                    .headers_mut()
                    .insert(X_CONDUIT_OVERHEAD_MS, overhead_header(meter.overhead_us()));
                meter.report(usage);
                meter.finish(response.status().as_u16());
                Ok(response)
            }
            Ok(Proxied::Stream(mut head, relay)) => {
                add_route_headers(&mut head.headers, &meter.record);
                let overhead = meter.overhead_us();
                let mut response = stream_response(head, relay.into_relay(meter));
                response
                    .headers_mut()
                    .insert(X_CONDUIT_OVERHEAD_MS, overhead_header(overhead));
                Ok(response)
            }
            Err(e) => {
                meter.facts.refusal = Refusal::of_error(&e);
                meter.facts.store_error = matches!(e, GatewayError::Store(_));
                meter.finish(e.status().as_u16());
                let mut response = self.error_response_on(Some(endpoint), &e);
                add_route_headers(response.headers_mut(), &meter.record);
                if meter.admission.is_some() {
                    meter.add_limit_headers(response.headers_mut());
                } else {
                    self.add_limit_status(&key, response.headers_mut()).await;
                }
                response.headers_mut().insert(
                    "x-conduit-overhead-ms",
                    overhead_header(meter.overhead_us()),
                );
                Ok(response)
            }
        }
    }

    /// Stage *admit* through the limiter: the admission goes to the meter,
    /// the authority's record of the key (where it has one) to the cache.
    async fn admit(
        &self,
        key: &VirtualKey,
        alias: &str,
        demand: &Demand,
        meter: &mut Meter,
    ) -> Result<(), GatewayError> {
        match self.ports.limiter.admit(key, demand).await {
            Ok(mut admission) => {
                let fresh = admission.key.take();
                meter.admission = Some(admission);
                // The limiter's record is authoritative: a change made through
                // another instance (allowed models) applies at once.
                if let Some(fresh) = fresh {
                    let allowed = fresh.allows_model(alias);
                    self.key_cache.vouch(
                        &demand.key_hash,
                        Arc::new(fresh),
                        self.ports.clock.now_micros(),
                    );
                    if !allowed {
                        return Err(GatewayError::ModelNotAllowed {
                            model: alias.to_owned(),
                        });
                    }
                }
            }
            Err(rejection) => {
                meter.record.refused_by = Some(
                    match &rejection.error {
                        GatewayError::RateLimited { limit, .. } => limit,
                        _ => "budget",
                    }
                    .to_owned(),
                );
                meter.admission = Some(Admission {
                    reservation: None,
                    status: rejection.status,
                    key: None,
                });
                return Err(rejection.error);
            }
        }
        Ok(())
    }

    /// Parse, authorize, admit, route, call: the part of the pipeline that
    /// talks to the provider. Returns a whole answer or a stream to relay.
    #[allow(clippy::too_many_arguments)] // borrowed parts of the request: no copies
    async fn proxy(
        &self,
        endpoint: Endpoint,
        key: &VirtualKey,
        key_hash: String,
        body: Bytes,
        trace: &TraceContext,
        request_id: &str,
        meter: &mut Meter,
    ) -> Result<Proxied, GatewayError> {
        // Stage *parse*.
        if body.len() > self.max_body_bytes() {
            return Err(GatewayError::PayloadTooLarge {
                limit: self.max_body_bytes(),
            });
        }
        // Raw values only for an alias that may send them on (spliced by an
        // OpenAI-dialect provider); others take the tree, parsed once.
        let mut request = ClientBody::parse_for(endpoint, &body, |alias| self.keeps_raw(alias))?;
        let alias = match request.get("model").map(Cow::into_owned) {
            Some(Value::String(m)) if !m.is_empty() => m,
            Some(_) => {
                return Err(GatewayError::invalid(
                    "`model` must be a non-empty string.",
                    Some("model"),
                ))
            }
            None => {
                return Err(GatewayError::invalid(
                    "Missing required parameter: 'model'.",
                    Some("model"),
                ))
            }
        };
        meter.record.model = alias.clone();
        // Only a configured alias may label a metric (an unknown `model` must not).
        meter.facts.alias_known = self.config.models.contains_key(&alias);
        let required = endpoint.required_field();
        if !request.has(required) {
            return Err(GatewayError::invalid(
                format!("Missing required parameter: '{required}'."),
                Some(required),
            ));
        }
        let stream = endpoint != Endpoint::Embeddings
            && match request.get("stream").as_deref() {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(GatewayError::invalid(
                        "`stream` must be a boolean.",
                        Some("stream"),
                    ))
                }
            };
        let include_usage = request
            .get("stream_options")
            .as_deref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        meter.record.streamed = stream;

        // Stage *authorize*. The cached record may lag a change made through
        // another instance; where the limiter is the authority, ask it before refusing.
        let mut key = key;
        let refreshed;
        if !key.allows_model(&alias) {
            match self.ports.limiter.verify(key, &key_hash).await? {
                Some(fresh) if fresh.allows_model(&alias) => {
                    refreshed = fresh;
                    key = &refreshed;
                }
                _ => return Err(GatewayError::ModelNotAllowed { model: alias }),
            }
        }
        // Stage *select deployment* (before admission: an unknown alias costs nothing).
        let route = self
            .config
            .models
            .get(&alias)
            .ok_or_else(|| GatewayError::ModelNotFound {
                model: alias.clone(),
            })?;
        // Stage *admit*.
        let prompt_estimate = request.prompt_estimate();
        let completion_estimate = match endpoint {
            Endpoint::Embeddings => 0,
            // The legacy API's own default for `max_tokens` is 16.
            Endpoint::Completions => request.completion_allowance(16)?,
            Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => {
                request.completion_allowance(self.config.gateway.default_max_tokens)?
            }
        };
        meter.record.estimated_prompt_tokens = prompt_estimate;
        meter.record.estimated_completion_tokens = completion_estimate;
        let estimate = TokenUsage {
            prompt_tokens: prompt_estimate,
            completion_tokens: completion_estimate,
            total_tokens: prompt_estimate.saturating_add(completion_estimate),
            ..TokenUsage::default()
        };
        // A budget needs a price for every deployment the request may use,
        // fallbacks included.
        let mut cost_estimate = 0;
        if key.budget.is_some() {
            let fallbacks = route
                .policy
                .fallbacks
                .iter()
                .chain(&route.policy.context_window_fallbacks)
                .filter_map(|a| self.config.models.get(a));
            for d in std::iter::once(route)
                .chain(fallbacks)
                .flat_map(|r| &r.deployments)
            {
                let price = d.price.ok_or_else(|| GatewayError::PriceUnknown {
                    model: alias.clone(),
                    provider_model: d.model.clone(),
                })?;
                cost_estimate = cost_estimate.max(price.cost_nanos(&estimate));
            }
        }
        let demand = Demand {
            key_hash,
            model: alias.clone(),
            tokens: estimate.total_tokens,
            cost_nanos: cost_estimate,
            ttl_secs: self
                .config
                .gateway
                .upstream_timeout_ms
                .max(route.policy.timeout_ms)
                / 1000
                * 2
                + 60,
        };
        // A key without limits or budget whose authority vouched for it
        // less than `revocation_delay_ms` ago goes on without asking again.
        let now_us = self.ports.clock.now_micros();
        if key.limits.is_empty()
            && key.budget.is_none()
            && self.key_cache.trusted(&demand.key_hash, now_us).is_some()
        {
            meter.admission = Some(Admission::default());
        } else {
            self.admit(key, &alias, &demand, meter).await?;
        }

        // The OpenAI SDKs ask for base64 embeddings; providers that answer
        // with float arrays get them encoded (little-endian float32).
        let base64_embeddings = endpoint == Endpoint::Embeddings
            && request
                .get("encoding_format")
                .as_deref()
                .and_then(Value::as_str)
                == Some("base64");
        // Stages *pick deployment* to *translate response*, attempt by attempt.
        let Some(mut plan) = self.router.plan(&self.config, route, meter.now(), estimate) else {
            return Err(GatewayError::Internal(format!(
                "no route state for `{alias}`"
            )));
        };
        let cx = CallContext {
            endpoint,
            stream,
            include_usage,
            base64_embeddings,
            alias: &alias,
            request_id,
            trace,
        };
        loop {
            let attempt = match plan.next(meter.now()) {
                Step::Try(attempt) => attempt,
                Step::Fail(e) => {
                    record_attempts(meter, &mut plan);
                    return Err(e);
                }
            };
            if attempt.wait_us > 0 {
                // A backoff or a provider's Retry-After: time spent on the
                // providers' account, not the gateway's.
                let wait = Duration::from_micros(attempt.wait_us);
                self.ports.clock.sleep(wait).await;
                meter.add_upstream(attempt.wait_us);
            }
            note_deployment(meter, &attempt, &alias);
            let started_us = meter.now();
            let keep_body = plan.may_continue();
            let deadline_us = plan.deadline_us();
            match self
                .call_deployment(&attempt, &mut request, keep_body, &cx, deadline_us, meter)
                .await
            {
                Ok((answer, latency_us)) => {
                    plan.succeeded(&attempt, latency_us, meter.now());
                    record_attempts(meter, &mut plan);
                    return Ok(match answer {
                        Proxied::Stream(head, mut relay) => {
                            relay.upstream.hold(attempt.in_flight);
                            Proxied::Stream(head, relay)
                        }
                        full => full,
                    });
                }
                Err(failure) => {
                    meter.add_upstream(meter.now().saturating_sub(started_us));
                    plan.failed(&attempt, failure, meter.now());
                }
            }
        }
    }

    /// Stage *translate response* for a whole answer.
    pub(crate) fn translate_whole(
        &self,
        provider: &dyn Provider,
        call: &Call<'_>,
        base64_embeddings: bool,
        status: StatusCode,
        bytes: Bytes,
        meter: &Meter,
    ) -> Result<Proxied, GatewayError> {
        // The provider's own bytes, `model` spliced in, when the translation
        // would change nothing else; else the translated tree, printed.
        let (body, mut usage) = match provider.pass_through(call, &bytes, base64_embeddings) {
            Some(passed) => (
                passed.answer(bytes, &meter.record.model),
                passed.usage.unwrap_or_default(),
            ),
            None => {
                let (body, usage) =
                    translate_and_print(provider, call, base64_embeddings, &bytes, meter)?;
                (Bytes::from(body), usage)
            }
        };
        if call.endpoint == Endpoint::Embeddings && usage.total_tokens == 0 {
            // Some providers do not count embedding tokens: meter the estimate
            // rather than record the request as free.
            usage.prompt_tokens = meter.record.estimated_prompt_tokens;
            usage.total_tokens = usage.prompt_tokens;
        }
        let mut response = http::Response::new(ResponseBody::Full(body));
        *response.status_mut() = status;
        // Room for the headers added on the way out (the route's, the
        // overhead, a key's six `x-ratelimit-*`): the map is not grown and
        // rehashed midway.
        *response.headers_mut() = HeaderMap::with_capacity(12);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let _ = meter;
        Ok(Proxied::Full(response, usage))
    }

    /// Runs `fut`, or fails with 504 after `timeout`.
    pub(crate) async fn within<F: std::future::Future>(
        &self,
        timeout: Duration,
        fut: F,
    ) -> Result<F::Output, GatewayError> {
        let mut fut = pin!(fut);
        // Ready at once (the rest of a body already read): no timer is
        // made, boxed and dropped for it (twice per whole answer).
        if let std::task::Poll::Ready(v) = futures_util::poll!(fut.as_mut()) {
            return Ok(v);
        }
        match select(fut, self.ports.clock.sleep(timeout)).await {
            Either::Left((v, _)) => Ok(v),
            Either::Right(_) => Err(GatewayError::UpstreamTimeout),
        }
    }

    /// Reads a whole upstream body by `deadline_us`, at most `limit` bytes.
    /// `announced`: its `content-length`, if any. A body that comes in one
    /// piece is that piece; one in several is gathered into a buffer of its
    /// own, sized for the announced length (up to [`RESERVE_MAX`]) and a
    /// little more, so that it is not grown and copied on the way, and the
    /// pass-through can write the alias over `model` in it.
    pub(crate) async fn read_body(
        &self,
        mut body: ByteStream,
        deadline_us: u64,
        limit: usize,
        announced: Option<usize>,
    ) -> Result<Bytes, GatewayError> {
        let mut first: Option<Bytes> = None;
        let mut rest: Vec<u8> = Vec::new();
        loop {
            let left = deadline_us.saturating_sub(self.ports.clock.now_micros());
            if left == 0 {
                return Err(GatewayError::UpstreamTimeout);
            }
            match self
                .within(Duration::from_micros(left), body.next())
                .await?
            {
                None => break,
                Some(Err(e)) => {
                    return Err(GatewayError::Upstream(format!(
                        "the connection to the provider broke: {e}"
                    )))
                }
                Some(Ok(chunk)) => {
                    let have = first.as_ref().map_or(0, Bytes::len) + rest.len();
                    if have + chunk.len() > limit {
                        return Err(GatewayError::Upstream(format!(
                            "the provider's answer is over {limit} bytes"
                        )));
                    }
                    match &first {
                        None => first = Some(chunk),
                        Some(f) => {
                            if rest.is_empty() {
                                let whole = announced
                                    .unwrap_or(0)
                                    .min(limit)
                                    .min(RESERVE_MAX)
                                    .max(f.len() + chunk.len());
                                rest.reserve_exact(whole + ALIAS_ROOM);
                                rest.extend_from_slice(f);
                            }
                            rest.extend_from_slice(&chunk);
                        }
                    }
                }
            }
        }
        Ok(if rest.is_empty() {
            first.unwrap_or_default()
        } else {
            Bytes::from(rest)
        })
    }
}

/// The most [`Gateway::read_body`] sets aside for a body in pieces on its
/// `content-length` alone (the provider's word): a larger one grows as it comes.
const RESERVE_MAX: usize = 1 << 20;
/// Room past a gathered body for an alias longer than the provider's `model`.
const ALIAS_ROOM: usize = 64;

/// A response's `content-length`, when it has one that reads.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reports an inference request that ends before it has a [`Meter`]: refused
/// by authentication, or dropped while its key was looked up (the client went
/// away), so that every [`Observer::started`] has its `finished`.
struct Unmetered<'a> {
    gateway: &'a Gateway,
    request_id: &'a str,
    endpoint: Endpoint,
    started_us: u64,
    trace: &'a TraceContext,
    /// Not reported yet, and no meter took over.
    pending: bool,
}

impl Unmetered<'_> {
    fn report(&self, error: Option<&GatewayError>, key_cache: Option<KeyCacheOutcome>) {
        let trace_id = self.trace.trace_id_hex();
        let now = self.gateway.ports.clock.now_micros();
        self.gateway.observer.finished(&RequestEvent::unmetered(
            self.request_id,
            self.endpoint.route(),
            error,
            now.saturating_sub(self.started_us),
            key_cache,
            Some(&trace_id),
        ));
    }
}

impl Drop for Unmetered<'_> {
    fn drop(&mut self) {
        if self.pending {
            self.report(None, None);
        }
    }
}

/// What [`Gateway::proxy`] hands back.
// A stream's relay carries the first chunk's memo ([`Reader`]): moved once
// or twice a request, cheaper than an allocation to box it.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Proxied {
    Full(Response, TokenUsage),
    Stream(StreamHead, PendingRelay),
}

pub(crate) struct StreamHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Everything a [`Relay`] needs except the meter, which stays with the
/// request until the response is built.
pub(crate) struct PendingRelay {
    /// The peeked bytes, then the rest of the upstream body.
    pub upstream: Replay,
    pub reader: Reader,
    pub clock: Arc<dyn Clock>,
    pub idle_timeout: Duration,
    pub alias: Value,
    pub endpoint: Endpoint,
    pub include_usage: bool,
}

impl PendingRelay {
    fn into_relay(self, meter: Meter) -> Relay {
        let upstream: ByteStream = Box::pin(self.upstream);
        let encoder = crate::frontdoors::stream_encoder(
            self.endpoint,
            &self.alias,
            &meter.record.request_id,
            self.clock.now_micros() / 1_000_000,
        );
        Relay {
            reader: self.reader,
            upstream,
            clock: self.clock,
            idle_timeout: self.idle_timeout,
            alias: self.alias,
            endpoint: self.endpoint,
            include_usage: self.include_usage,
            meter,
            encoder,
        }
    }
}

/// The translating path of a whole answer: the provider's answer as an
/// OpenAI tree, `model` = the alias the client sent, printed; and its usage.
fn translate_and_print(
    provider: &dyn Provider,
    call: &Call<'_>,
    base64_embeddings: bool,
    bytes: &[u8],
    meter: &Meter,
) -> Result<(Vec<u8>, TokenUsage), GatewayError> {
    let mut object = provider.translate_response(call, bytes)?;
    if base64_embeddings {
        encode_embeddings(&mut object);
    }
    let usage = object
        .get("usage")
        .and_then(TokenUsage::from_openai)
        .unwrap_or_default();
    object.insert("model".into(), Value::String(meter.record.model.clone()));
    let body = serde_json::to_vec(&object)
        .map_err(|e| GatewayError::Internal(format!("cannot encode the response: {e}")))?;
    Ok((body, usage))
}

/// Float-array embeddings as OpenAI's base64 form (little-endian float32).
fn encode_embeddings(object: &mut Map<String, Value>) {
    use base64::Engine;
    let Some(Value::Array(data)) = object.get_mut("data") else {
        return;
    };
    for item in data {
        let Some(slot) = item.get_mut("embedding") else {
            continue;
        };
        let Value::Array(numbers) = slot else {
            continue;
        };
        let mut bytes = Vec::with_capacity(numbers.len() * 4);
        for n in numbers.iter() {
            bytes.extend_from_slice(&(n.as_f64().unwrap_or(0.0) as f32).to_le_bytes());
        }
        *slot = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
}

/// The answering deployment on the usage record.
fn note_deployment(meter: &mut Meter, attempt: &Attempt<'_>, alias: &str) {
    let d = attempt.deployment;
    meter.record.provider = Some(String::from(&*d.provider_name));
    meter.record.provider_model = Some(d.model.clone());
    meter.record.served_alias = (attempt.route.alias != alias).then(|| attempt.route.alias.clone());
    meter.price = d.price;
}

/// The attempts and the failed ones on the usage record.
fn record_attempts(meter: &mut Meter, plan: &mut AttemptPlan<'_>) {
    meter.record.attempts = plan.attempts();
    meter.record.failed_attempts = plan.take_failed();
}

/// Adds `x-conduit-deployment` (the one that answered, or was tried last)
/// and `x-conduit-attempts`, once the request went upstream, under names
/// built at compile time. The deployment's value is written into the one
/// allocation it keeps (not through `format!` and a copy), and a count of
/// attempts up to 3 is a static value (~900 instructions and two
/// allocations less per request, callgrind).
fn add_route_headers(headers: &mut HeaderMap, record: &UsageRecord) {
    const DEPLOYMENT: http::HeaderName = http::HeaderName::from_static("x-conduit-deployment");
    const ATTEMPTS: http::HeaderName = http::HeaderName::from_static("x-conduit-attempts");
    static FEW: [HeaderValue; 4] = [
        HeaderValue::from_static("0"),
        HeaderValue::from_static("1"),
        HeaderValue::from_static("2"),
        HeaderValue::from_static("3"),
    ];
    if record.attempts == 0 {
        return;
    }
    if let (Some(p), Some(m)) = (&record.provider, &record.provider_model) {
        let mut text = Vec::with_capacity(p.len() + 1 + m.len());
        text.extend_from_slice(p.as_bytes());
        text.push(b'/');
        text.extend_from_slice(m.as_bytes());
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(text)) {
            headers.insert(DEPLOYMENT, v);
        }
    }
    let attempts = usize::try_from(record.attempts)
        .ok()
        .and_then(|n| FEW.get(n).cloned())
        .unwrap_or_else(|| HeaderValue::from(record.attempts));
    headers.insert(ATTEMPTS, attempts);
}

fn stream_response(head: StreamHead, relay: Relay) -> Response {
    let mut response = http::Response::new(ResponseBody::Stream(relay.into_stream()));
    *response.status_mut() = head.status;
    let h = response.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.extend(head.headers);
    response
}

fn overhead_header(us: u64) -> HeaderValue {
    // `{ms}.{µs:03}` written on the stack: the value is the one allocation.
    let (mut whole, mut part) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (ms, frac) = (
        whole.format(us / 1000).as_bytes(),
        part.format(us % 1000).as_bytes(),
    );
    let mut text = [b'0'; 24];
    text[..ms.len()].copy_from_slice(ms);
    text[ms.len()] = b'.';
    let end = ms.len() + 4;
    text[end - frac.len()..end].copy_from_slice(frac);
    HeaderValue::from_bytes(&text[..end]).unwrap_or(HeaderValue::from_static("0"))
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = http::Response::new(ResponseBody::Full(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Stage *route*: what the method and path ask for. `/v1` is optional, so
/// clients with either base URL work.
pub fn route(method: &Method, path: &str) -> Result<Route, GatewayError> {
    // The web UI tells `/ui` from `/ui/`, so it sees the path as it came.
    if let Some(r) = crate::ui::route(method, path)? {
        return Ok(Route::Ui(r));
    }
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let api = match path.strip_prefix("/v1") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    };
    let only = |allowed: &[Method], r: Route| {
        if allowed.contains(method) {
            Ok(r)
        } else {
            Err(GatewayError::MethodNotAllowed)
        }
    };
    match api {
        "/health" => only(&[Method::GET, Method::HEAD], Route::Health),
        "/chat/completions" => only(&[Method::POST], Route::Inference(Endpoint::ChatCompletions)),
        "/completions" => only(&[Method::POST], Route::Inference(Endpoint::Completions)),
        "/embeddings" => only(&[Method::POST], Route::Inference(Endpoint::Embeddings)),
        "/responses" => only(&[Method::POST], Route::Inference(Endpoint::Responses)),
        "/messages" => only(&[Method::POST], Route::Inference(Endpoint::Messages)),
        "/messages/count_tokens" => only(&[Method::POST], Route::CountTokens),
        "/models" => only(&[Method::GET], Route::Models),
        _ => {
            if let Some(id) = api.strip_prefix("/models/").filter(|id| !id.is_empty()) {
                return only(&[Method::GET], Route::Model(percent_decode(id)));
            }
            if let Some(id) = api
                .strip_prefix("/responses/")
                .filter(|id| !id.is_empty() && !id.contains('/'))
            {
                return only(&[Method::GET], Route::StoredResponse(percent_decode(id)));
            }
            if let Some(r) = admin::route(method, path)? {
                return Ok(Route::Admin(r));
            }
            Err(GatewayError::NotFound(format!("Unknown route: {path}")))
        }
    }
}

/// Decodes `%XX` escapes (and leaves anything malformed as it is).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The route's headers are the deployment and the count as text.
#[cfg(test)]
#[test]
fn route_headers_are_the_texts() {
    for (attempts, provider, model) in [
        (1, "openai", "gpt-4o-mini"),
        (3, "a", "b/c"),
        (4, "p", "m"),
        (17, "x", "y"),
    ] {
        let record = UsageRecord {
            attempts,
            provider: Some(provider.into()),
            provider_model: Some(model.into()),
            ..UsageRecord::default()
        };
        let mut headers = HeaderMap::new();
        add_route_headers(&mut headers, &record);
        let deployment = format!("{provider}/{model}");
        assert_eq!(
            headers
                .get("x-conduit-deployment")
                .and_then(|v| v.to_str().ok()),
            Some(&*deployment)
        );
        assert_eq!(
            headers
                .get("x-conduit-attempts")
                .and_then(|v| v.to_str().ok()),
            Some(&*attempts.to_string())
        );
    }
    let mut headers = HeaderMap::new();
    add_route_headers(&mut headers, &UsageRecord::default());
    assert!(headers.is_empty());
}

/// `x-conduit-overhead-ms` written digit by digit is what `format!` wrote.
#[cfg(test)]
#[test]
fn overhead_header_is_the_formatted_text() {
    let mut cases = vec![0, 1, 9, 10, 99, 100, 999, 1000, 1001, 1_234_567, u64::MAX];
    cases.extend((0..5000).map(|i| i * 37));
    for us in cases {
        let expected = format!("{}.{:03}", us / 1000, us % 1000);
        assert_eq!(overhead_header(us).to_str().ok(), Some(&*expected), "{us}");
    }
}
