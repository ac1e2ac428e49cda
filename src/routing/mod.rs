//! Model routing: which deployment of an alias serves each attempt of a
//! request, and what this instance knows about each deployment's health.
//!
//! | part          | what                                                                 |
//! |---------------|----------------------------------------------------------------------|
//! | [`policy`]    | an alias's routing keys (strategy, retries, backoff, timeouts, cooldown, fallbacks) |
//! | [`strategy`]  | ordered, weighted, round-robin, least-latency, least-cost, least-busy |
//! | [`health`]    | per deployment: consecutive failures, cooldown, `Retry-After`, latency, in flight |
//! | [`backoff`]   | exponential backoff with full jitter; the random numbers             |
//! | [`plan`]      | one request's attempts: next deployment, wait, fallbacks, deadline    |
//!
//! Pure code: no clock (times come in as Unix µs), no I/O, no threads. The
//! [`Router`] is built with the [`Gateway`](crate::Gateway) and shared by
//! every request it serves, so health lives where the gateway lives: the
//! process (server), the isolate (Worker), the container (Lambda).

pub mod backoff;
pub mod health;
pub mod plan;
pub mod policy;
pub mod strategy;

use std::sync::Arc;

use serde_json::{json, Value};

use crate::config::{Config, ModelRoute};
use crate::metering::usage::TokenUsage;
use crate::wire::time::format_rfc3339;
use crate::FastMap;
use backoff::Rng;
use health::RouteState;
pub use plan::{classify, Attempt, AttemptPlan, Failure, FailureKind, Step};
pub use policy::{RoutePolicy, Strategy};

/// The health of every alias's deployments on this instance, and the
/// router's random numbers.
pub struct Router {
    routes: FastMap<String, Arc<RouteState>>,
    rng: Rng,
}

impl Router {
    /// A router for `config`'s aliases, seeded from the platform's randomness.
    pub fn new(config: &Config) -> Router {
        Router::with_rng(config, Rng::from_os())
    }

    /// A router with a given random generator (tests, benchmarks).
    pub fn with_rng(config: &Config, rng: Rng) -> Router {
        let routes = config
            .models
            .values()
            .map(|r| {
                let start = rng.next_u64();
                (
                    r.alias.clone(),
                    Arc::new(RouteState::new(r.deployments.len(), start)),
                )
            })
            .collect();
        Router { routes, rng }
    }

    pub(crate) fn state(&self, alias: &str) -> Option<&Arc<RouteState>> {
        self.routes.get(alias)
    }

    /// The attempt plan of a request for `route` (an alias of `config`) that
    /// began routing at `started_us` (after admission); `estimate` is its token estimate (least-cost).
    pub fn plan<'a>(
        &'a self,
        config: &'a Config,
        route: &'a ModelRoute,
        started_us: u64,
        estimate: TokenUsage,
    ) -> Option<AttemptPlan<'a>> {
        let state = self.routes.get(&route.alias)?;
        Some(AttemptPlan::new(
            self, config, route, state, started_us, estimate,
        ))
    }

    /// `GET /admin/routes`: every alias, its policy and its deployments'
    /// health on this instance.
    pub fn to_json(&self, config: &Config, now_us: u64) -> Value {
        let time = |us: u64| (us > now_us).then(|| format_rfc3339(us.div_ceil(1_000_000)));
        let data: Vec<Value> = config
            .models
            .values()
            .filter_map(|route| {
                let state = self.routes.get(&route.alias)?;
                let p = &route.policy;
                let deployments: Vec<Value> = route
                    .deployments
                    .iter()
                    .zip(state.deployments.iter())
                    .map(|(d, h)| {
                        let (successes, failures) = h.totals();
                        let latency = h.latency_us();
                        json!({
                            "deployment": format!("{}/{}", d.provider_name, d.model),
                            "provider": &*d.provider_name,
                            "model": d.model,
                            "weight": d.weight,
                            "available": h.available(now_us),
                            "cooling_until": time(h.cooling_until_us()),
                            "retry_after_until": time(h.retry_after_until_us()),
                            "consecutive_failures": h.consecutive_failures(),
                            "latency_ms": (latency > 0).then(|| (latency as f64 / 1000.0 * 1000.0).round() / 1000.0),
                            "in_flight": h.in_flight(),
                            "successes": successes,
                            "failures": failures,
                        })
                    })
                    .collect();
                Some(json!({
                    "alias": route.alias,
                    "strategy": p.strategy.name(),
                    "retries": p.retries,
                    "retry_backoff_ms": p.retry_backoff_ms,
                    "retry_backoff_max_ms": p.retry_backoff_max_ms,
                    "timeout_ms": p.timeout_ms,
                    "stream_first_event_timeout_ms": p.stream_first_event_timeout_ms,
                    "cooldown_after_failures": p.cooldown_after_failures,
                    "cooldown_ms": p.cooldown_ms,
                    "fallbacks": p.fallbacks,
                    "context_window_fallbacks": p.context_window_fallbacks,
                    "deployments": deployments,
                }))
            })
            .collect();
        json!({"object": "list", "data": data})
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use crate::config::{Config, Deployment};

    /// A config from the `[models.*]` tables given, over two providers.
    pub fn config(models: &str) -> Config {
        let text = format!(
            "[providers.a]\nkind = \"openai-compatible\"\nbase_url = \"http://a.test/v1\"\n\
             [providers.b]\nkind = \"openai-compatible\"\nbase_url = \"http://b.test/v1\"\n{models}"
        );
        Config::parse(&text, "test", &|_| None).expect("test config")
    }

    /// `n` deployments `a/m0` … of weight 1, without prices.
    pub fn deployments(n: usize) -> Vec<Deployment> {
        let list: Vec<String> = (0..n)
            .map(|i| format!("{{ provider = \"a\", model = \"m{i}\" }}"))
            .collect();
        let c = config(&format!(
            "[models.x]\ndeployments = [{}]\n",
            list.join(", ")
        ));
        c.models["x"].deployments.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::error::GatewayError;
    use http::StatusCode;

    const MS: u64 = 1000;

    fn provider_error(status: u16, code: Option<&str>, message: &str) -> GatewayError {
        GatewayError::Provider {
            status: StatusCode::from_u16(status).unwrap(),
            message: message.into(),
            kind: "invalid_request_error".into(),
            code: code.map(str::to_owned),
            param: None,
            retry_after: None,
        }
    }

    fn try_next<'a>(plan: &mut AttemptPlan<'a>, now: u64) -> Attempt<'a> {
        match plan.next(now) {
            Step::Try(a) => a,
            Step::Fail(e) => panic!("expected an attempt, got {e}"),
        }
    }

    fn fail_with(plan: &mut AttemptPlan<'_>, now: u64) -> GatewayError {
        match plan.next(now) {
            Step::Fail(e) => e,
            Step::Try(a) => panic!("expected the end, got {}", a.deployment.model),
        }
    }

    fn five_hundred() -> Failure {
        Failure::new(GatewayError::Upstream("HTTP 500".into()))
    }

    #[test]
    fn classification() {
        assert_eq!(
            classify(&GatewayError::UpstreamTimeout),
            FailureKind::Retryable
        );
        assert_eq!(
            classify(&provider_error(429, None, "slow down")),
            FailureKind::Retryable
        );
        assert_eq!(
            classify(&provider_error(408, None, "timeout")),
            FailureKind::Retryable
        );
        assert_eq!(
            classify(&provider_error(400, None, "bad")),
            FailureKind::Final
        );
        assert_eq!(
            classify(&provider_error(
                400,
                Some("context_length_exceeded"),
                "This model's maximum context length is 128000 tokens."
            )),
            FailureKind::ContextWindow
        );
        assert_eq!(
            classify(&provider_error(
                400,
                None,
                "prompt is too long: 210000 tokens > 200000 maximum"
            )),
            FailureKind::ContextWindow
        );
        assert_eq!(
            classify(&GatewayError::invalid("n", Some("n"))),
            FailureKind::Final
        );
    }

    #[test]
    fn ordered_fails_over_then_gives_the_last_error() {
        let c = testing::config(
            "[models.x]\ndeployments = [{ provider = \"a\", model = \"m0\" }, { provider = \"b\", model = \"m1\" }]\n",
        );
        let r = Router::with_rng(&c, Rng::new(1));
        let mut p = r
            .plan(&c, &c.models["x"], 0, TokenUsage::default())
            .unwrap();
        let a = try_next(&mut p, 0);
        assert_eq!((a.index, a.wait_us), (0, 0));
        p.failed(&a, five_hundred(), 1);
        let b = try_next(&mut p, 1);
        assert_eq!(b.index, 1);
        p.failed(&b, Failure::new(GatewayError::UpstreamTimeout), 2);
        assert_eq!(fail_with(&mut p, 2), GatewayError::UpstreamTimeout);
        assert_eq!(p.attempts(), 2);
        let failed = p.take_failed();
        assert_eq!(failed.len(), 2);
        assert_eq!((failed[0].provider.as_str(), failed[0].status), ("a", 502));
        assert_eq!(failed[1].code.as_deref(), Some("upstream_timeout"));
    }

    #[test]
    fn a_client_error_is_not_retried() {
        let c = testing::config(
            "[models.x]\ndeployments = [{ provider = \"a\", model = \"m0\" }, { provider = \"b\", model = \"m1\" }]\n",
        );
        let r = Router::with_rng(&c, Rng::new(1));
        let mut p = r
            .plan(&c, &c.models["x"], 0, TokenUsage::default())
            .unwrap();
        let a = try_next(&mut p, 0);
        p.failed(&a, Failure::new(provider_error(400, None, "bad")), 1);
        assert_eq!(fail_with(&mut p, 1).status(), 400);
        assert_eq!(
            r.routes["x"].deployments[0].consecutive_failures(),
            0,
            "not the deployment's fault"
        );
    }

    #[test]
    fn retries_the_only_deployment_with_growing_backoff() {
        let c = testing::config(
            "[models.x]\nretries = 3\nretry_backoff_ms = 100\nretry_backoff_max_ms = 250\n\
             deployments = [{ provider = \"a\", model = \"m0\" }]\n",
        );
        let r = Router::with_rng(&c, Rng::new(3));
        let mut caps = Vec::new();
        for _ in 0..200 {
            let mut p = r
                .plan(&c, &c.models["x"], 0, TokenUsage::default())
                .unwrap();
            let mut waits = Vec::new();
            let mut now = 0;
            for _ in 0..4 {
                let a = try_next(&mut p, now);
                assert_eq!(a.index, 0);
                waits.push(a.wait_us);
                now += a.wait_us;
                p.failed(&a, five_hundred(), now);
            }
            assert!(matches!(p.next(now), Step::Fail(GatewayError::Upstream(_))));
            caps.push(waits);
        }
        for (k, cap) in [(0, 0), (1, 100 * MS), (2, 200 * MS), (3, 250 * MS)] {
            let max = caps.iter().map(|w| w[k]).max().unwrap();
            let mean = caps.iter().map(|w| w[k]).sum::<u64>() / caps.len() as u64;
            assert!(max <= cap, "retry {k}: {max} > {cap}");
            if cap > 0 {
                assert!(
                    mean > cap * 35 / 100 && mean < cap * 65 / 100,
                    "retry {k}: mean {mean}"
                );
            }
        }
    }

    #[test]
    fn cooldown_skips_then_brings_back() {
        let c = testing::config(
            "[models.x]\ncooldown_after_failures = 2\ncooldown_ms = 100\n\
             deployments = [{ provider = \"a\", model = \"m0\" }, { provider = \"b\", model = \"m1\" }]\n",
        );
        let r = Router::with_rng(&c, Rng::new(1));
        let route = &c.models["x"];
        for t in 0..2 {
            let mut p = r.plan(&c, route, t, TokenUsage::default()).unwrap();
            let a = try_next(&mut p, t);
            assert_eq!(a.index, 0);
            p.failed(&a, five_hundred(), t);
            let b = try_next(&mut p, t);
            assert_eq!(b.index, 1);
            p.succeeded(&b, 10, t);
        }
        // m0 is cooling: skipped
        let mut p = r.plan(&c, route, 10 * MS, TokenUsage::default()).unwrap();
        assert_eq!(try_next(&mut p, 10 * MS).index, 1);
        // after the cooldown it is back
        let mut p = r.plan(&c, route, 101 * MS, TokenUsage::default()).unwrap();
        assert_eq!(try_next(&mut p, 101 * MS).index, 0);
    }

    #[test]
    fn every_deployment_cooling_tries_the_one_ending_first() {
        let c = testing::config(
            "[models.x]\ncooldown_after_failures = 1\ncooldown_ms = 100\nretries = 0\n\
             deployments = [{ provider = \"a\", model = \"m0\" }, { provider = \"b\", model = \"m1\" }]\n",
        );
        let r = Router::with_rng(&c, Rng::new(1));
        let s = &r.routes["x"];
        s.deployments[0].record_failure(&c.models["x"].policy, 50 * MS);
        s.deployments[1].record_failure(&c.models["x"].policy, 10 * MS);
        let mut p = r
            .plan(&c, &c.models["x"], 60 * MS, TokenUsage::default())
            .unwrap();
        let a = try_next(&mut p, 60 * MS);
        assert_eq!((a.index, a.wait_us), (1, 0));
    }

    #[test]
    fn retry_after_is_waited_out_or_moved_past() {
        let c = testing::config(
            "[models.x]\nretries = 1\ntimeout_ms = 3000\ndeployments = [{ provider = \"a\", model = \"m0\" }]\n\
             [models.y]\nretries = 1\ntimeout_ms = 1000\nfallbacks = [\"z\"]\ndeployments = [{ provider = \"a\", model = \"m0\" }]\n\
             [models.z]\ndeployments = [{ provider = \"b\", model = \"m1\" }]\n",
        );
        let r = Router::with_rng(&c, Rng::new(1));
        let ra = |p: &mut AttemptPlan<'_>, a: &Attempt<'_>, secs: u64| {
            let mut f = Failure::new(provider_error(429, Some("rate_limit_exceeded"), "slow"));
            f.retry_after_us = Some(secs * 1_000_000);
            p.failed(a, f, 0);
        };
        // fits in the deadline: waited out
        let mut p = r
            .plan(&c, &c.models["x"], 0, TokenUsage::default())
            .unwrap();
        let a = try_next(&mut p, 0);
        ra(&mut p, &a, 1);
        let b = try_next(&mut p, 0);
        assert_eq!((b.index, b.wait_us), (0, 1_000_000));
        // does not fit: the fallback at once
        let mut p = r
            .plan(&c, &c.models["y"], 0, TokenUsage::default())
            .unwrap();
        let a = try_next(&mut p, 0);
        ra(&mut p, &a, 2);
        let b = try_next(&mut p, 0);
        assert_eq!((b.route.alias.as_str(), b.wait_us), ("z", 0));
        // a later request to y while it is blocked: straight to z
        let mut p = r
            .plan(&c, &c.models["y"], 500 * MS, TokenUsage::default())
            .unwrap();
        assert_eq!(try_next(&mut p, 500 * MS).route.alias, "z");
    }

    #[test]
    fn context_window_errors_switch_to_their_fallbacks() {
        let c = testing::config(
            "[models.x]\nfallbacks = [\"f\"]\ncontext_window_fallbacks = [\"long\"]\n\
             deployments = [{ provider = \"a\", model = \"m0\" }, { provider = \"a\", model = \"m1\" }]\n\
             [models.f]\ndeployments = [{ provider = \"b\", model = \"f0\" }]\n\
             [models.long]\ndeployments = [{ provider = \"b\", model = \"l0\" }]\n",
        );
        let r = Router::with_rng(&c, Rng::new(1));
        let mut p = r
            .plan(&c, &c.models["x"], 0, TokenUsage::default())
            .unwrap();
        let a = try_next(&mut p, 0);
        p.failed(
            &a,
            Failure::new(provider_error(
                400,
                Some("context_length_exceeded"),
                "too long",
            )),
            0,
        );
        let b = try_next(&mut p, 0);
        assert_eq!(b.deployment.model, "l0", "not m1, not f");
        // ordinary failures go to the ordinary fallbacks
        let mut p = r
            .plan(&c, &c.models["x"], 0, TokenUsage::default())
            .unwrap();
        for _ in 0..2 {
            let a = try_next(&mut p, 0);
            p.failed(&a, five_hundred(), 0);
        }
        assert_eq!(try_next(&mut p, 0).deployment.model, "f0");
    }

    #[test]
    fn deadline_names_the_attempts() {
        let c = testing::config(
            "[models.x]\ntimeout_ms = 100\ndeployments = [{ provider = \"a\", model = \"m0\" }, { provider = \"b\", model = \"m1\" }]\n",
        );
        let r = Router::with_rng(&c, Rng::new(1));
        let mut p = r
            .plan(&c, &c.models["x"], 0, TokenUsage::default())
            .unwrap();
        let a = try_next(&mut p, 0);
        p.failed(&a, Failure::new(GatewayError::UpstreamTimeout), 100 * MS);
        let e = fail_with(&mut p, 100 * MS);
        assert_eq!(e.status(), 504);
        assert_eq!(e.to_json()["error"]["code"], "upstream_timeout");
        let msg = e.message();
        assert!(
            msg.contains("a/m0 (504 upstream_timeout)") && msg.contains("100 ms"),
            "{msg}"
        );
    }

    #[test]
    fn admin_view_lists_health() {
        let c = testing::config(
            "[models.x]\nstrategy = \"least-busy\"\ncooldown_after_failures = 1\n\
             deployments = [{ provider = \"a\", model = \"m0\", weight = 2 }]\n",
        );
        let r = Router::with_rng(&c, Rng::new(1));
        r.routes["x"].deployments[0].record_failure(&c.models["x"].policy, 0);
        let v = r.to_json(&c, 1);
        let d = &v["data"][0]["deployments"][0];
        assert_eq!(v["data"][0]["strategy"], "least-busy");
        assert_eq!(d["deployment"], "a/m0");
        assert_eq!(d["weight"], 2);
        assert_eq!(d["available"], false);
        assert_eq!(d["consecutive_failures"], 1);
        assert!(d["cooling_until"].is_string());
    }
}
