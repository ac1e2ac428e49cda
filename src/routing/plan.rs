//! The attempt plan of one request: which deployment next, after what wait,
//! and when to stop.
//!
//! ```text
//!  next() ──► Try(attempt: deployment, wait) ──► the gateway calls it ──► succeeded() / failed()
//!    ▲                                                                          │
//!    └──────────────────────────────────────────────────────────────────────────┘
//!  next() ──► Fail(error): a failure not worth retrying, the attempts spent, or the deadline
//! ```
//!
//! - Attempts: `1 + retries` per alias. Each picks, by the alias's strategy,
//!   among the available deployments not yet tried in this round; when every
//!   available one has been tried a new round starts (so the same deployment
//!   is retried when it is the only one left).
//! - Unavailable: cooling down, or inside a provider's `Retry-After`. When
//!   no deployment is available, the one ready first is tried (a cooldown may
//!   be cut short, a `Retry-After` is waited out), unless its wait cannot fit
//!   before the deadline: then the plan moves on at once.
//! - Retries wait a backoff (exponential, full jitter) first; a retry whose
//!   wait cannot fit before the deadline is not made (the last failure stands).
//! - Once an alias's attempts are spent, its `fallbacks` follow in order
//!   (each with its own strategy and retries); a context-window error
//!   switches to `context_window_fallbacks` instead. Fallbacks are not
//!   followed transitively: only the asked alias's lists count.
//! - The deadline (`timeout_ms` of the asked alias, from the moment the
//!   request was admitted and routing began) ends everything with 504
//!   `upstream_timeout` naming the attempts.

use std::sync::Arc;

use http::StatusCode;

use super::backoff::full_jitter_us;
use super::health::{InFlight, RouteState};
use super::policy::Strategy;
use super::strategy::{pick, EXPLORE_EVERY};
use super::Router;
use crate::config::{Config, Deployment, ModelRoute};
use crate::metering::usage::{FailedAttempt, TokenUsage};
use crate::observe::AttemptFailure;
use crate::wire::error::GatewayError;

/// What a failure means for the rest of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// 5xx, 408, 429, timeouts, connection failures, unreadable answers,
    /// a stream that failed before anything reached the client.
    Retryable,
    /// The provider says the prompt is too long for the model.
    ContextWindow,
    /// Anything else (other 4xx): goes back to the client.
    Final,
}

/// Phrases providers use for a prompt over the model's context window
/// (OpenAI's `context_length_exceeded` code aside).
const CONTEXT_PHRASES: [&str; 8] = [
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "prompt is too long",
    "input is too long",
    "too many input tokens",
    "input token count",
];

/// Classifies an attempt's failure.
pub fn classify(error: &GatewayError) -> FailureKind {
    match error {
        GatewayError::Upstream(_) | GatewayError::UpstreamTimeout => FailureKind::Retryable,
        GatewayError::Provider { status, .. }
            if *status == StatusCode::REQUEST_TIMEOUT
                || *status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error() =>
        {
            FailureKind::Retryable
        }
        GatewayError::Provider {
            status,
            code,
            message,
            ..
        } if status.is_client_error() => {
            let lower = message.to_ascii_lowercase();
            if code.as_deref() == Some("context_length_exceeded")
                || CONTEXT_PHRASES.iter().any(|p| lower.contains(p))
            {
                FailureKind::ContextWindow
            } else {
                FailureKind::Final
            }
        }
        _ => FailureKind::Final,
    }
}

/// One attempt to make: wait `wait_us`, then call `deployment`.
#[derive(Debug)]
pub struct Attempt<'a> {
    /// The alias the deployment belongs to (the asked one or a fallback).
    pub route: &'a ModelRoute,
    pub deployment: &'a Deployment,
    pub index: usize,
    pub wait_us: u64,
    /// Counts the request in flight on the deployment until dropped.
    pub in_flight: InFlight,
}

/// How an attempt failed.
#[derive(Debug)]
pub struct Failure {
    pub error: GatewayError,
    /// The provider's HTTP status, else the status the error maps to.
    pub status: u16,
    /// The provider's `Retry-After`, in µs.
    pub retry_after_us: Option<u64>,
    /// For the metrics: timeout, connect, the provider's 5xx/429/4xx, broken.
    pub kind: AttemptFailure,
}

impl Failure {
    pub fn new(error: GatewayError) -> Failure {
        Failure {
            status: error.status().as_u16(),
            kind: AttemptFailure::of(&error),
            error,
            retry_after_us: None,
        }
    }
}

/// What to do next.
#[derive(Debug)]
pub enum Step<'a> {
    Try(Attempt<'a>),
    Fail(GatewayError),
}

/// The plan of one request (see the module doc).
pub struct AttemptPlan<'a> {
    router: &'a Router,
    config: &'a Config,
    asked: &'a ModelRoute,
    route: &'a ModelRoute,
    state: &'a Arc<RouteState>,
    /// The list being followed once the current alias is spent.
    fallbacks: &'a [String],
    next_fallback: usize,
    context_fallbacks: bool,
    attempts_left: u32,
    /// Deployments of the current alias not yet tried in this round.
    untried: u64,
    attempts: u32,
    failed: Vec<FailedAttempt>,
    deadline_us: u64,
    estimate: TokenUsage,
    last_error: Option<GatewayError>,
    stop: Option<GatewayError>,
    /// Until when every deployment was waiting out a `Retry-After`, when
    /// the plan moved on because of it.
    blocked_until_us: u64,
}

fn all(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

impl<'a> AttemptPlan<'a> {
    pub(super) fn new(
        router: &'a Router,
        config: &'a Config,
        asked: &'a ModelRoute,
        state: &'a Arc<RouteState>,
        started_us: u64,
        estimate: TokenUsage,
    ) -> Self {
        AttemptPlan {
            router,
            config,
            asked,
            route: asked,
            state,
            fallbacks: &asked.policy.fallbacks,
            next_fallback: 0,
            context_fallbacks: false,
            attempts_left: 1 + asked.policy.retries,
            untried: all(asked.deployments.len()),
            attempts: 0,
            failed: Vec::new(),
            deadline_us: started_us + asked.policy.timeout_ms * 1000,
            estimate,
            last_error: None,
            stop: None,
            blocked_until_us: 0,
        }
    }

    /// Unix µs by which the whole request must be answered.
    pub fn deadline_us(&self) -> u64 {
        self.deadline_us
    }

    /// Whether another attempt may follow the current one (its retries, or
    /// fallbacks to go to).
    pub fn may_continue(&self) -> bool {
        self.attempts_left > 0
            || self.next_fallback < self.fallbacks.len()
            || (!self.context_fallbacks && !self.asked.policy.context_window_fallbacks.is_empty())
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The failed attempts so far, in order.
    pub fn take_failed(&mut self) -> Vec<FailedAttempt> {
        std::mem::take(&mut self.failed)
    }

    /// Moves to the next fallback alias; `false` when there is none.
    fn advance(&mut self) -> bool {
        while let Some(name) = self.fallbacks.get(self.next_fallback) {
            self.next_fallback += 1;
            if let (Some(route), Some(state)) =
                (self.config.models.get(name), self.router.state(name))
            {
                self.route = route;
                self.state = state;
                self.attempts_left = 1 + route.policy.retries;
                self.untried = all(route.deployments.len());
                return true;
            }
        }
        false
    }

    /// The next attempt, or the answer to give up with.
    pub fn next(&mut self, now_us: u64) -> Step<'a> {
        if let Some(e) = self.stop.take() {
            return Step::Fail(e);
        }
        loop {
            if now_us >= self.deadline_us {
                return Step::Fail(self.deadline_error());
            }
            if self.attempts_left == 0 && !self.advance() {
                return Step::Fail(self.exhausted(now_us));
            }
            let (route, state) = (self.route, self.state);
            let n = route.deployments.len();
            let mut available = 0u64;
            for (i, h) in state.deployments.iter().enumerate() {
                if h.available(now_us) {
                    available |= 1 << i;
                }
            }
            let mut candidates = self.untried & available;
            if candidates == 0 && available != 0 {
                // Every available deployment was tried: a new round.
                self.untried = all(n);
                candidates = available;
            }
            let (index, ready_us, in_flight) = if candidates != 0 {
                let (index, guard) = self.pick(candidates);
                (index, now_us, guard)
            } else {
                // Every deployment is cooling down or waiting out a
                // Retry-After: the one ready first.
                let index = (0..n)
                    .min_by_key(|&i| {
                        let h = &state.deployments[i];
                        (h.ready_at(now_us), h.cooling_until_us(), i)
                    })
                    .unwrap_or(0);
                let ready = state.deployments[index].ready_at(now_us);
                if ready >= self.deadline_us {
                    // The wait cannot fit before the deadline: move on at once.
                    self.blocked_until_us = self.blocked_until_us.max(ready);
                    self.attempts_left = 0;
                    continue;
                }
                (index, ready, InFlight::claim(state, index, None))
            };
            let backoff_us = if self.attempts > 0 && route.policy.retry_backoff_ms > 0 {
                full_jitter_us(
                    route.policy.retry_backoff_ms,
                    route.policy.retry_backoff_max_ms,
                    self.attempts,
                    self.router.rng.next_u64(),
                )
            } else {
                0
            };
            let start_us = ready_us.max(now_us + backoff_us);
            if start_us >= self.deadline_us {
                // No time left for this retry: the last failure stands.
                return Step::Fail(self.exhausted(now_us));
            }
            let Some(in_flight) = in_flight else {
                return Step::Fail(GatewayError::Internal("no deployment claimed".into()));
            };
            self.untried &= !(1 << index);
            self.attempts_left -= 1;
            self.attempts += 1;
            return Step::Try(Attempt {
                route,
                deployment: &route.deployments[index],
                index,
                wait_us: start_us - now_us,
                in_flight,
            });
        }
    }

    /// The strategy's choice among `candidates`, counted in flight.
    fn pick(&self, candidates: u64) -> (usize, Option<InFlight>) {
        let (route, state) = (self.route, self.state);
        let explore = route.policy.strategy == Strategy::LeastLatency
            && self.attempts == 0
            && state
                .requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                % EXPLORE_EVERY
                == EXPLORE_EVERY - 1;
        // Least-busy claims its choice with a compare-and-swap; another
        // request may have taken it first, then it looks again.
        for _ in 0..4 {
            let p = pick(
                route.policy.strategy,
                &route.deployments,
                state,
                candidates,
                &self.router.rng,
                &self.estimate,
                explore,
            );
            if let Some(guard) = InFlight::claim(state, p.index, p.in_flight_seen) {
                return (p.index, Some(guard));
            }
        }
        let index = candidates.trailing_zeros() as usize;
        (index, InFlight::claim(state, index, None))
    }

    /// The attempt answered: its deployment is healthy, its latency sampled.
    pub fn succeeded(&mut self, attempt: &Attempt<'_>, latency_us: u64, now_us: u64) {
        self.state_of(attempt).deployments[attempt.index].record_success(latency_us, now_us);
    }

    fn state_of(&self, attempt: &Attempt<'_>) -> &'a RouteState {
        if std::ptr::eq(attempt.route, self.route) {
            self.state
        } else {
            self.router
                .state(&attempt.route.alias)
                .map_or(self.state.as_ref(), Arc::as_ref)
        }
    }

    /// The attempt failed: health, the record of attempts, what comes next.
    pub fn failed(&mut self, attempt: &Attempt<'_>, failure: Failure, now_us: u64) {
        let d = attempt.deployment;
        self.failed.push(FailedAttempt {
            alias: attempt.route.alias.clone(),
            provider: d.provider_name.to_string(),
            model: d.model.clone(),
            status: failure.status,
            code: failure.error.kind().2.map(str::to_owned),
            kind: failure.kind,
        });
        match classify(&failure.error) {
            FailureKind::Retryable => {
                let health = &self.state_of(attempt).deployments[attempt.index];
                health.record_failure(&attempt.route.policy, now_us);
                if let Some(wait) = failure.retry_after_us {
                    health.block_until(now_us + wait);
                }
                self.last_error = Some(failure.error);
            }
            FailureKind::ContextWindow if self.context_fallbacks => {
                // This context-window fallback is too small as well: the next one.
                self.attempts_left = 0;
                self.last_error = Some(failure.error);
            }
            FailureKind::ContextWindow
                if !self.asked.policy.context_window_fallbacks.is_empty() =>
            {
                self.context_fallbacks = true;
                self.fallbacks = &self.asked.policy.context_window_fallbacks;
                self.next_fallback = 0;
                self.attempts_left = 0;
                self.last_error = Some(failure.error);
            }
            FailureKind::ContextWindow | FailureKind::Final => self.stop = Some(failure.error),
        }
    }

    /// The answer when no attempt is left.
    fn exhausted(&mut self, now_us: u64) -> GatewayError {
        if let Some(e) = self.last_error.take() {
            return e;
        }
        // Nothing was tried: every deployment is inside a provider's Retry-After.
        let secs = self
            .blocked_until_us
            .saturating_sub(now_us)
            .div_ceil(1_000_000);
        GatewayError::Provider {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "Every deployment of `{}` is rate limited by its provider for another {secs} s.",
                self.asked.alias
            ),
            kind: "rate_limit_error".into(),
            code: Some("rate_limit_exceeded".into()),
            param: None,
            retry_after: Some(secs.max(1).to_string()),
        }
    }

    fn deadline_error(&self) -> GatewayError {
        let attempts = self
            .failed
            .iter()
            .map(|f| {
                format!(
                    "{}/{} ({} {})",
                    f.provider,
                    f.model,
                    f.status,
                    f.code.as_deref().unwrap_or("error")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        GatewayError::DeadlineExceeded {
            model: self.asked.alias.clone(),
            timeout_ms: self.asked.policy.timeout_ms,
            attempts: self.attempts,
            detail: attempts,
        }
    }
}
