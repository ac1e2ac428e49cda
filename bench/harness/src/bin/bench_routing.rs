//! `bench-routing`: what the routing decision costs per request, in process.
//!
//! For each strategy, on an alias with 10 deployments (and, as the floor, an
//! `ordered` alias with one): the work the gateway does per request to route
//! it when the first attempt answers, i.e. `Router::plan`, `AttemptPlan::next`
//! (availability of every deployment, the strategy's pick, the in-flight
//! claim) and `AttemptPlan::succeeded` (health and latency update), then the
//! in-flight count dropped. A second figure adds one failed attempt first
//! (failure recorded, the retry picked), the cost of a retried request
//! excluding its upstream calls and waits (backoff is 0 here).
//!
//! Every job is warmed up, then timed in several batches interleaved across
//! jobs; the median batch is reported. `bash bench/routing.sh` builds and runs it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use conduit::metering::usage::TokenUsage;
use conduit::routing::backoff::Rng;
use conduit::routing::{Failure, Router, Step};
use conduit::{Config, GatewayError};
use conduit_bench::{err, Args, Result};

const HELP: &str = "\
bench-routing: the routing decision per request (plan, pick, health update), per strategy,
on an alias with 10 deployments, in process.

Options:
  --iters N       requests per batch (default 200000)
  --batches N     timed batches per job; the median is reported (default 7)
  --warmup-ms N   warm-up time per job (default 200)
  --target-ns N   the target per request (default 1000)
  --strict        exit 1 when a target is missed
  --out FILE      also write the markdown report to FILE
  --help
";

const STRATEGIES: [&str; 6] = [
    "ordered",
    "weighted",
    "round-robin",
    "least-latency",
    "least-cost",
    "least-busy",
];

fn config() -> Result<Config> {
    let mut text = String::from(
        "[providers.a]\nkind = \"openai-compatible\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         [models.single]\ndeployments = [{ provider = \"a\", model = \"m\" }]\n",
    );
    for s in STRATEGIES {
        let deployments: Vec<String> = (0..10)
            .map(|i| {
                format!(
                    "{{ provider = \"a\", model = \"m{i}\", weight = {}, price = {{ input = {}.0, output = {}.0 }} }}",
                    i + 1,
                    10 - i,
                    20 - i
                )
            })
            .collect();
        text.push_str(&format!(
            "[models.\"{s}\"]\nstrategy = \"{s}\"\ndeployments = [{}]\n",
            deployments.join(", ")
        ));
    }
    Config::parse(&text, "bench", &|_| None).map_err(|e| err(e.to_string()))
}

struct Job {
    alias: &'static str,
    fail_first: bool,
    samples: Vec<f64>,
}

/// `iters` routed requests on `alias`; ns per request.
fn run(router: &Router, config: &Config, alias: &str, fail_first: bool, iters: usize) -> f64 {
    let route = &config.models[alias];
    let estimate = TokenUsage {
        prompt_tokens: 1_000,
        completion_tokens: 256,
        total_tokens: 1_256,
        ..TokenUsage::default()
    };
    let start = Instant::now();
    let mut now_us = 1_800_000_000_000_000u64;
    for _ in 0..iters {
        now_us += 7;
        let Some(mut plan) = router.plan(config, route, now_us, estimate) else {
            continue;
        };
        if fail_first {
            if let Step::Try(a) = plan.next(now_us) {
                plan.failed(
                    &a,
                    Failure::new(GatewayError::Upstream("HTTP 500".into())),
                    now_us,
                );
            }
        }
        if let Step::Try(a) = plan.next(now_us) {
            plan.succeeded(&a, 1_000 + (now_us & 1023), now_us);
            black_box(a.index);
        }
        black_box(plan.attempts());
    }
    start.elapsed().as_nanos() as f64 / iters as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bench-routing: {e}");
        std::process::exit(2);
    }
}

fn real_main() -> Result<()> {
    let args = Args::parse(std::env::args().skip(1), &["help", "strict"])?;
    if args.flag("help") {
        print!("{HELP}");
        return Ok(());
    }
    args.check_known(&["iters", "batches", "warmup-ms", "target-ns", "out"])?;
    let iters: usize = args.parse_or("iters", 200_000)?;
    let batches: usize = args.parse_or("batches", 7)?.max(1);
    let warmup = Duration::from_millis(args.parse_or("warmup-ms", 200)?);
    let target_ns: f64 = args.parse_or("target-ns", 1000.0)?;
    let config = config()?;
    let router = Router::with_rng(&config, Rng::new(0x5eed));

    let mut jobs: Vec<Job> = std::iter::once(("single", false))
        .chain(STRATEGIES.iter().map(|s| (*s, false)))
        .chain(STRATEGIES.iter().map(|s| (*s, true)))
        .map(|(alias, fail_first)| Job {
            alias,
            fail_first,
            samples: Vec::new(),
        })
        .collect();
    for job in &jobs {
        let until = Instant::now() + warmup;
        while Instant::now() < until {
            run(&router, &config, job.alias, job.fail_first, iters / 20 + 1);
        }
    }
    for _ in 0..batches {
        for job in &mut jobs {
            let ns = run(&router, &config, job.alias, job.fail_first, iters);
            job.samples.push(ns);
        }
    }

    let mut report = String::new();
    report.push_str(&format!(
        "Routing decision per request, in process, median of {batches} batches of {iters} requests.\n\n\
         | alias | deployments | first attempt answers, ns | one failed attempt first, ns | target ≤ {target_ns:.0} ns | ok? |\n\
         |---|---:|---:|---:|---|---|\n"
    ));
    let mut missed = false;
    let single = median(&mut jobs[0].samples.clone());
    report.push_str(&format!(
        "| `single` (ordered) | 1 | {single:.0} | – | {} | {} |\n",
        if single <= target_ns { "met" } else { "missed" },
        if single <= target_ns { "yes" } else { "**NO**" }
    ));
    missed |= single > target_ns;
    for s in STRATEGIES {
        let first = jobs
            .iter()
            .find(|j| j.alias == s && !j.fail_first)
            .map(|j| median(&mut j.samples.clone()))
            .unwrap_or(f64::NAN);
        let retried = jobs
            .iter()
            .find(|j| j.alias == s && j.fail_first)
            .map(|j| median(&mut j.samples.clone()))
            .unwrap_or(f64::NAN);
        let ok = first <= target_ns;
        missed |= !ok;
        report.push_str(&format!(
            "| `{s}` | 10 | {first:.0} | {retried:.0} | {} | {} |\n",
            if ok { "met" } else { "missed" },
            if ok { "yes" } else { "**NO**" }
        ));
    }
    print!("{report}");
    if let Some(path) = args.get("out") {
        std::fs::write(path, &report)?;
    }
    if missed && args.flag("strict") {
        std::process::exit(1);
    }
    Ok(())
}
