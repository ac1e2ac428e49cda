//! `bench-load`: an HTTP/1.1 keep-alive load generator for the Conduit benchmark.
//!
//! Modes (first positional argument):
//! - `saturate`: `--connections N` closed-loop workers for `--duration-s` seconds (or
//!   `--max-requests`) → throughput and latency at saturation.
//! - `rate`: open loop at `--rate R` requests/s for `--duration-s` seconds. Request `i` is
//!   scheduled at `start + i/R`; a worker that picks a slot after its scheduled time
//!   (every connection was busy) measures latency from the scheduled time, so queueing
//!   is not hidden (no coordinated omission). A worker that had to wait for its slot
//!   measures from when it woke up, so timer slack of the generator is not counted.
//! - `ttfe`: `--requests M` sequential streaming requests on one connection → time to
//!   first SSE event (`data:` bytes received) and time to the end of the stream.
//! - `streams`: `--connections N` closed-loop workers, each sending streaming requests
//!   one after the other for `--duration-s` seconds → streams completed per second, time
//!   to first byte of the stream (first `data:` bytes) and time to its end.
//!
//! Every mode first sends `--warmup` requests (not measured). `--pid NAME=PID` (repeatable)
//! samples the CPU time (utime+stime from `/proc/PID/stat`) of that process right before
//! and right after the measured phase, and its `VmHWM`/`VmRSS` at the end;
//! `--pid NAME=group:PGID` sums them over every process of that process group (nginx's
//! master and workers). Results are one
//! JSON object on stdout (and in `--out FILE` when given).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conduit_bench::{
    clock_ticks_per_second, err, percentile, process_cpu_ticks, process_group_members,
    process_status_kib, Args, Result,
};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;

const USAGE: &str = "usage: bench-load MODE --url URL [options]
modes:
  saturate  [--connections 16] [--duration-s 10] [--max-requests 2000000]
  rate      --rate 200 [--duration-s 10] [--connections 32]
  ttfe      [--requests 200]
  streams   [--connections 32] [--duration-s 10] (streaming requests, closed loop)
common options:
  --url URL                 http://HOST:PORT/path (required)
  --header 'Name: value'    repeatable
  --body JSON | --body-file FILE   request body (POST); default: a small chat request
  --warmup N                unmeasured requests first (default 200; ttfe: 20)
  --timeout-ms 10000        per-request timeout
  --pid NAME=PID            repeatable: CPU time and peak RSS of that process
                            (NAME=group:PGID: summed over a process group)
  --threads 1               runtime worker threads (1 = current-thread runtime)
  --label TEXT              copied into the output
  --out FILE                also write the JSON there";

const DEFAULT_BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}"#;

/// A worker gives up after this many consecutive failures.
const MAX_CONSECUTIVE_ERRORS: u32 = 100;

fn main() {
    let args = match Args::parse(std::env::args().skip(1), &["help"]) {
        Ok(a) => a,
        Err(e) => fail(&e.to_string()),
    };
    if args.flag("help") {
        println!("{USAGE}");
        return;
    }
    let threads: usize = match args.parse_or("threads", 1) {
        Ok(t) => t,
        Err(e) => fail(&e.to_string()),
    };
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => fail(&format!("runtime: {e}")),
    };
    match rt.block_on(run(args)) {
        Ok(v) => println!("{v}"),
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-load: {msg}");
    eprintln!("{USAGE}");
    std::process::exit(2);
}

async fn run(args: Args) -> Result<String> {
    args.check_known(&[
        "url",
        "header",
        "body",
        "body-file",
        "warmup",
        "timeout-ms",
        "pid",
        "threads",
        "label",
        "out",
        "connections",
        "duration-s",
        "max-requests",
        "rate",
        "requests",
    ])?;
    let mode = args
        .positional()
        .first()
        .ok_or_else(|| err("missing MODE (saturate | rate | ttfe | streams)"))?
        .clone();
    let target = Arc::new(Target::from_args(
        &args,
        mode == "ttfe" || mode == "streams",
    )?);
    let mut watches = Watches::from_args(&args)?;
    let mut out = match mode.as_str() {
        "saturate" => saturate(&args, &target, &mut watches).await?,
        "rate" => rate(&args, &target, &mut watches).await?,
        "ttfe" => ttfe(&args, &target, &mut watches).await?,
        "streams" => streams(&args, &target, &mut watches).await?,
        other => return Err(err(format!("unknown mode {other:?}"))),
    };
    out.insert("mode".into(), json!(mode));
    out.insert("url".into(), json!(target.url));
    if let Some(label) = args.get("label") {
        out.insert("label".into(), json!(label));
    }
    out.insert("procs".into(), watches.report());
    let text = Value::Object(out).to_string();
    if let Some(path) = args.get("out") {
        std::fs::write(path, format!("{text}\n")).map_err(|e| err(format!("write {path}: {e}")))?;
    }
    Ok(text)
}

/// What to send, parsed once.
struct Target {
    url: String,
    authority: String,
    host: HeaderValue,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
    timeout: Duration,
}

impl Target {
    fn from_args(args: &Args, stream: bool) -> Result<Target> {
        let url = args.get("url").ok_or_else(|| err("--url is required"))?;
        let uri: Uri = url
            .parse()
            .map_err(|e| err(format!("bad --url {url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(err("--url must be http://HOST:PORT/..."));
        }
        let auth = uri
            .authority()
            .ok_or_else(|| err("--url has no host"))?
            .clone();
        let authority = if auth.port().is_some() {
            auth.as_str().to_string()
        } else {
            format!("{}:80", auth.host())
        };
        let host = HeaderValue::from_str(auth.as_str()).map_err(|_| err("bad host in --url"))?;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let mut headers = Vec::new();
        for h in args.get_all("header") {
            let (n, v) = h
                .split_once(':')
                .ok_or_else(|| err(format!("--header must be 'Name: value', got {h:?}")))?;
            let name = HeaderName::from_bytes(n.trim().as_bytes())
                .map_err(|_| err(format!("bad header name {n:?}")))?;
            let value = HeaderValue::from_str(v.trim())
                .map_err(|_| err(format!("bad header value for {n:?}")))?;
            headers.push((name, value));
        }
        if !headers.iter().any(|(n, _)| n == CONTENT_TYPE) {
            headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        }
        let body = match (args.get("body"), args.get("body-file")) {
            (Some(_), Some(_)) => return Err(err("give --body or --body-file, not both")),
            (Some(b), None) => Bytes::from(b.to_string()),
            (None, Some(f)) => Bytes::from(
                std::fs::read(f).map_err(|e| err(format!("read --body-file {f}: {e}")))?,
            ),
            (None, None) if stream => {
                let mut v: Value = serde_json::from_str(DEFAULT_BODY)
                    .map_err(|e| err(format!("default body: {e}")))?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("stream".into(), json!(true));
                }
                Bytes::from(v.to_string())
            }
            (None, None) => Bytes::from_static(DEFAULT_BODY.as_bytes()),
        };
        let timeout_ms: u64 = args.parse_or("timeout-ms", 10_000)?;
        Ok(Target {
            url: url.to_string(),
            authority,
            host,
            path,
            headers,
            body,
            timeout: Duration::from_millis(timeout_ms.max(1)),
        })
    }

    fn request(&self) -> Result<Request<Full<Bytes>>> {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .header(HOST, self.host.clone());
        for (n, v) in &self.headers {
            b = b.header(n, v);
        }
        b.body(Full::new(self.body.clone()))
            .map_err(|e| err(format!("build request: {e}")))
    }
}

/// One keep-alive HTTP/1.1 connection, re-opened after a failure.
struct Client {
    target: Arc<Target>,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// Size of the last whole body read.
    last_body_len: usize,
}

/// How one request ended.
enum Outcome {
    Ok,
    Status(u16),
    Failed(&'static str),
}

impl Client {
    fn new(target: Arc<Target>) -> Client {
        Client {
            target,
            sender: None,
            last_body_len: 0,
        }
    }

    async fn connect(&mut self) -> std::result::Result<(), &'static str> {
        if self.sender.as_ref().is_some_and(|s| !s.is_closed()) {
            return Ok(());
        }
        self.sender = None;
        let stream = TcpStream::connect(self.target.authority.as_str())
            .await
            .map_err(|_| "connect")?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| "handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    async fn send(
        &mut self,
    ) -> std::result::Result<hyper::Response<hyper::body::Incoming>, &'static str> {
        self.connect().await?;
        let req = self.target.request().map_err(|_| "request")?;
        let sender = self.sender.as_mut().ok_or("connect")?;
        if sender.ready().await.is_err() {
            self.sender = None;
            return Err("connection");
        }
        match sender.send_request(req).await {
            Ok(r) => Ok(r),
            Err(_) => {
                self.sender = None;
                Err("connection")
            }
        }
    }

    /// A whole request: send, read the full body.
    async fn call(&mut self) -> Outcome {
        let timeout = self.target.timeout;
        let res = tokio::time::timeout(timeout, async {
            let resp = self.send().await?;
            let status = resp.status();
            match resp.into_body().collect().await {
                Ok(b) => self.last_body_len = b.to_bytes().len(),
                Err(_) => {
                    self.sender = None;
                    return Err("body");
                }
            }
            Ok(status)
        })
        .await;
        match res {
            Ok(Ok(s)) if s.is_success() => Outcome::Ok,
            Ok(Ok(s)) => Outcome::Status(s.as_u16()),
            Ok(Err(e)) => Outcome::Failed(e),
            Err(_) => {
                self.sender = None;
                Outcome::Failed("timeout")
            }
        }
    }

    /// A streaming request: (time to first `data:` bytes, time to end of stream).
    async fn call_stream(&mut self) -> (Outcome, Duration, Duration) {
        let timeout = self.target.timeout;
        let t0 = Instant::now();
        let res = tokio::time::timeout(timeout, async {
            let resp = self.send().await?;
            let status = resp.status();
            let mut body = resp.into_body();
            let mut first: Option<Duration> = None;
            let mut seen = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(f) => f,
                    Err(_) => {
                        self.sender = None;
                        return Err("body");
                    }
                };
                if let Some(d) = frame.data_ref() {
                    seen.extend_from_slice(d);
                    if first.is_none() && contains(&seen, b"data:") {
                        first = Some(t0.elapsed());
                    }
                }
            }
            let total = t0.elapsed();
            Ok((status, first, total, contains(&seen, b"data: [DONE]")))
        })
        .await;
        match res {
            Ok(Ok((s, Some(first), total, true))) if s.is_success() => (Outcome::Ok, first, total),
            Ok(Ok((s, _, total, _))) if !s.is_success() => {
                (Outcome::Status(s.as_u16()), total, total)
            }
            Ok(Ok((_, _, total, _))) => (Outcome::Failed("no_done"), total, total),
            Ok(Err(e)) => (Outcome::Failed(e), t0.elapsed(), t0.elapsed()),
            Err(_) => {
                self.sender = None;
                (Outcome::Failed("timeout"), timeout, timeout)
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Per-worker results.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: BTreeMap<String, u64>,
    late: u64,
}

impl Tally {
    fn record(&mut self, outcome: Outcome, latency: Duration) -> bool {
        match outcome {
            Outcome::Ok => {
                self.latencies_us.push(latency.as_micros() as u64);
                true
            }
            Outcome::Status(s) => {
                *self.errors.entry(format!("status_{s}")).or_default() += 1;
                false
            }
            Outcome::Failed(e) => {
                *self.errors.entry(e.to_string()).or_default() += 1;
                false
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.late += other.late;
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

fn latency_summary(samples: &mut [u64]) -> Value {
    samples.sort_unstable();
    let ms = |us: u64| (us as f64) / 1000.0;
    let mean = if samples.is_empty() {
        0.0
    } else {
        samples.iter().sum::<u64>() as f64 / samples.len() as f64 / 1000.0
    };
    json!({
        "count": samples.len(),
        "mean_ms": mean,
        "p50_ms": ms(percentile(samples, 50.0)),
        "p90_ms": ms(percentile(samples, 90.0)),
        "p99_ms": ms(percentile(samples, 99.0)),
        "p999_ms": ms(percentile(samples, 99.9)),
        "max_ms": ms(samples.last().copied().unwrap_or(0)),
    })
}

/// Processes whose CPU time is sampled around the measured phase.
struct Watches {
    ticks_per_s: u64,
    procs: Vec<Watch>,
    completed: u64,
}

struct Watch {
    name: String,
    pid: u32,
    /// `pid` is a process group: sum over its members.
    group: bool,
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
}

impl Watches {
    fn from_args(args: &Args) -> Result<Watches> {
        let mut procs = Vec::new();
        for p in args.get_all("pid") {
            let (name, pid) = p
                .split_once('=')
                .ok_or_else(|| err(format!("--pid must be NAME=PID, got {p:?}")))?;
            let (group, pid) = match pid.trim().strip_prefix("group:") {
                Some(g) => (true, g),
                None => (false, pid.trim()),
            };
            let pid: u32 = pid.parse().map_err(|_| err(format!("bad pid in {p:?}")))?;
            procs.push(Watch {
                name: name.to_string(),
                pid,
                group,
                before: None,
                after: None,
            });
        }
        Ok(Watches {
            ticks_per_s: clock_ticks_per_second(),
            procs,
            completed: 0,
        })
    }

    fn start(&mut self) {
        for w in &mut self.procs {
            w.before = w.cpu_ticks();
        }
    }

    fn stop(&mut self, completed: u64) {
        for w in &mut self.procs {
            w.after = w.cpu_ticks();
        }
        self.completed = completed;
    }

    fn report(&self) -> Value {
        let mut m = Map::new();
        for w in &self.procs {
            let us = |ticks: u64| ticks as f64 * 1e6 / self.ticks_per_s as f64;
            let (user_us, system_us) = match (w.before, w.after) {
                (Some(b), Some(a)) => (
                    Some(us(a.0.saturating_sub(b.0))),
                    Some(us(a.1.saturating_sub(b.1))),
                ),
                _ => (None, None),
            };
            let cpu_us = user_us.zip(system_us).map(|(u, s)| u + s);
            let per_req =
                cpu_us.and_then(|c| (self.completed > 0).then(|| c / self.completed as f64));
            m.insert(
                w.name.clone(),
                json!({
                    "pid": w.pid,
                    "cpu_ms": cpu_us.map(|c| c / 1000.0),
                    "cpu_user_ms": user_us.map(|c| c / 1000.0),
                    "cpu_system_ms": system_us.map(|c| c / 1000.0),
                    "cpu_us_per_request": per_req,
                    "vm_hwm_kib": w.status_kib("VmHWM"),
                    "vm_rss_kib": w.status_kib("VmRSS"),
                    "group": w.group,
                    "clock_ticks_per_s": self.ticks_per_s,
                }),
            );
        }
        Value::Object(m)
    }
}

impl Watch {
    /// The processes watched: `pid`, or every member of its group.
    fn pids(&self) -> Vec<u32> {
        if self.group {
            process_group_members(self.pid)
        } else {
            vec![self.pid]
        }
    }

    fn cpu_ticks(&self) -> Option<(u64, u64)> {
        let mut sum = None;
        for pid in self.pids() {
            if let Ok((u, s)) = process_cpu_ticks(pid) {
                let (su, ss) = sum.unwrap_or((0, 0));
                sum = Some((su + u, ss + s));
            }
        }
        sum
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let mut sum = None;
        for pid in self.pids() {
            if let Ok(k) = process_status_kib(pid, field) {
                sum = Some(sum.unwrap_or(0) + k);
            }
        }
        sum
    }
}

/// Open `n` connections (all must succeed), then send `warmup` requests over them.
async fn open_and_warm(target: &Arc<Target>, n: usize, warmup: u64) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = Client::new(target.clone());
        c.connect()
            .await
            .map_err(|e| err(format!("{e} to {} failed", target.authority)))?;
        clients.push(c);
    }
    let per = warmup.div_ceil(n as u64);
    let mut handles = Vec::with_capacity(n);
    for mut c in clients {
        handles.push(tokio::spawn(async move {
            let mut failed = 0u64;
            for _ in 0..per {
                if !matches!(c.call().await, Outcome::Ok) {
                    failed += 1;
                }
            }
            (c, failed)
        }));
    }
    let mut clients = Vec::with_capacity(n);
    let mut failed = 0;
    for h in handles {
        let (c, f) = h.await.map_err(|e| err(format!("warmup task: {e}")))?;
        failed += f;
        clients.push(c);
    }
    if per > 0 && failed == per * n as u64 {
        eprintln!("bench-load: warning: every warmup request failed");
    }
    Ok(clients)
}

async fn saturate(
    args: &Args,
    target: &Arc<Target>,
    watches: &mut Watches,
) -> Result<Map<String, Value>> {
    let conns: usize = args.parse_or("connections", 16)?;
    let duration_s: f64 = args.parse_or("duration-s", 10.0)?;
    let max_requests: u64 = args.parse_or("max-requests", 2_000_000)?;
    let warmup: u64 = args.parse_or("warmup", 200)?;
    if conns == 0 || conns > 1024 {
        return Err(err("--connections must be 1..=1024"));
    }
    if !(0.1..=600.0).contains(&duration_s) {
        return Err(err("--duration-s must be 0.1..=600"));
    }
    let clients = open_and_warm(target, conns, warmup).await?;
    let counter = Arc::new(AtomicU64::new(0));
    watches.start();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration_s);
    let mut handles = Vec::with_capacity(conns);
    for mut c in clients {
        let counter = counter.clone();
        handles.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut consecutive = 0;
            while Instant::now() < deadline
                && counter.fetch_add(1, Ordering::Relaxed) < max_requests
            {
                let t0 = Instant::now();
                let outcome = c.call().await;
                if tally.record(outcome, t0.elapsed()) {
                    consecutive = 0;
                } else {
                    consecutive += 1;
                    if consecutive >= MAX_CONSECUTIVE_ERRORS {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            (tally, c.last_body_len)
        }));
    }
    let mut tally = Tally::default();
    let mut body_len = 0;
    for h in handles {
        let (t, len) = h.await.map_err(|e| err(format!("worker: {e}")))?;
        tally.merge(t);
        body_len = body_len.max(len);
    }
    let elapsed = start.elapsed();
    let ok = tally.latencies_us.len() as u64;
    watches.stop(ok);
    let mut out = Map::new();
    out.insert("connections".into(), json!(conns));
    out.insert("response_bytes".into(), json!(body_len));
    out.insert("requests_ok".into(), json!(ok));
    out.insert("error_count".into(), json!(tally.error_count()));
    out.insert("errors".into(), json!(tally.errors));
    out.insert("elapsed_s".into(), json!(elapsed.as_secs_f64()));
    out.insert(
        "throughput_rps".into(),
        json!(ok as f64 / elapsed.as_secs_f64().max(1e-9)),
    );
    out.insert("latency".into(), latency_summary(&mut tally.latencies_us));
    Ok(out)
}

async fn rate(
    args: &Args,
    target: &Arc<Target>,
    watches: &mut Watches,
) -> Result<Map<String, Value>> {
    let rate: f64 = args.parse_or("rate", 200.0)?;
    let duration_s: f64 = args.parse_or("duration-s", 10.0)?;
    let conns: usize = args.parse_or("connections", 32)?;
    let warmup: u64 = args.parse_or("warmup", 200)?;
    if !(0.1..=100_000.0).contains(&rate) {
        return Err(err("--rate must be 0.1..=100000"));
    }
    if !(0.1..=600.0).contains(&duration_s) {
        return Err(err("--duration-s must be 0.1..=600"));
    }
    if conns == 0 || conns > 1024 {
        return Err(err("--connections must be 1..=1024"));
    }
    let total = (rate * duration_s).round().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let clients = open_and_warm(target, conns, warmup).await?;
    let counter = Arc::new(AtomicU64::new(0));
    watches.start();
    let start = Instant::now() + Duration::from_millis(5);
    // Hard stop: the schedule plus one request timeout.
    let hard_deadline = start + Duration::from_secs_f64(duration_s) + target.timeout;
    let mut handles = Vec::with_capacity(conns);
    for mut c in clients {
        let counter = counter.clone();
        handles.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let scheduled = start + interval.mul_f64(i as f64);
                let now = Instant::now();
                if now >= hard_deadline {
                    *tally.errors.entry("not_sent".into()).or_default() += 1;
                    continue;
                }
                let from = if now < scheduled {
                    tokio::time::sleep_until(scheduled.into()).await;
                    Instant::now()
                } else {
                    tally.late += 1;
                    scheduled
                };
                let outcome = c.call().await;
                tally.record(outcome, from.elapsed());
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for h in handles {
        tally.merge(h.await.map_err(|e| err(format!("worker: {e}")))?);
    }
    let elapsed = start.elapsed();
    let ok = tally.latencies_us.len() as u64;
    watches.stop(ok);
    let mut out = Map::new();
    out.insert("connections".into(), json!(conns));
    out.insert("target_rps".into(), json!(rate));
    out.insert("scheduled".into(), json!(total));
    out.insert("requests_ok".into(), json!(ok));
    out.insert("late_starts".into(), json!(tally.late));
    out.insert("error_count".into(), json!(tally.error_count()));
    out.insert("errors".into(), json!(tally.errors));
    out.insert("elapsed_s".into(), json!(elapsed.as_secs_f64()));
    out.insert(
        "throughput_rps".into(),
        json!(ok as f64 / elapsed.as_secs_f64().max(1e-9)),
    );
    out.insert("latency".into(), latency_summary(&mut tally.latencies_us));
    Ok(out)
}

async fn ttfe(
    args: &Args,
    target: &Arc<Target>,
    watches: &mut Watches,
) -> Result<Map<String, Value>> {
    let requests: u64 = args.parse_or("requests", 200)?;
    let warmup: u64 = args.parse_or("warmup", 20)?;
    if requests == 0 || requests > 1_000_000 {
        return Err(err("--requests must be 1..=1000000"));
    }
    let mut c = Client::new(target.clone());
    c.connect()
        .await
        .map_err(|e| err(format!("{e} to {} failed", target.authority)))?;
    for _ in 0..warmup {
        let _ = c.call_stream().await;
    }
    let mut first = Tally::default();
    let mut totals = Vec::with_capacity(requests as usize);
    let mut consecutive = 0;
    watches.start();
    let start = Instant::now();
    for _ in 0..requests {
        let (outcome, ttfe, total) = c.call_stream().await;
        if first.record(outcome, ttfe) {
            totals.push(total.as_micros() as u64);
            consecutive = 0;
        } else {
            consecutive += 1;
            if consecutive >= MAX_CONSECUTIVE_ERRORS {
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    let ok = first.latencies_us.len() as u64;
    watches.stop(ok);
    let mut out = Map::new();
    out.insert("connections".into(), json!(1));
    out.insert("requests_ok".into(), json!(ok));
    out.insert("error_count".into(), json!(first.error_count()));
    out.insert("errors".into(), json!(first.errors));
    out.insert("elapsed_s".into(), json!(elapsed.as_secs_f64()));
    out.insert("ttfe".into(), latency_summary(&mut first.latencies_us));
    out.insert("stream_total".into(), latency_summary(&mut totals));
    Ok(out)
}

async fn streams(
    args: &Args,
    target: &Arc<Target>,
    watches: &mut Watches,
) -> Result<Map<String, Value>> {
    let conns: usize = args.parse_or("connections", 32)?;
    let duration_s: f64 = args.parse_or("duration-s", 10.0)?;
    let warmup: u64 = args.parse_or("warmup", 200)?;
    if conns == 0 || conns > 1024 {
        return Err(err("--connections must be 1..=1024"));
    }
    if !(0.1..=600.0).contains(&duration_s) {
        return Err(err("--duration-s must be 0.1..=600"));
    }
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut c = Client::new(target.clone());
        c.connect()
            .await
            .map_err(|e| err(format!("{e} to {} failed", target.authority)))?;
        clients.push(c);
    }
    let per = warmup.div_ceil(conns as u64);
    let mut warm = Vec::with_capacity(conns);
    for mut c in clients {
        warm.push(tokio::spawn(async move {
            for _ in 0..per {
                let _ = c.call_stream().await;
            }
            c
        }));
    }
    let mut clients = Vec::with_capacity(conns);
    for h in warm {
        clients.push(h.await.map_err(|e| err(format!("warmup task: {e}")))?);
    }
    watches.start();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration_s);
    let mut handles = Vec::with_capacity(conns);
    for mut c in clients {
        handles.push(tokio::spawn(async move {
            let mut first = Tally::default();
            let mut totals = Vec::new();
            let mut consecutive = 0;
            while Instant::now() < deadline {
                let (outcome, ttfb, total) = c.call_stream().await;
                if first.record(outcome, ttfb) {
                    totals.push(total.as_micros() as u64);
                    consecutive = 0;
                } else {
                    consecutive += 1;
                    if consecutive >= MAX_CONSECUTIVE_ERRORS {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            (first, totals)
        }));
    }
    let mut first = Tally::default();
    let mut totals = Vec::new();
    for h in handles {
        let (f, t) = h.await.map_err(|e| err(format!("worker: {e}")))?;
        first.merge(f);
        totals.extend(t);
    }
    let elapsed = start.elapsed();
    let ok = first.latencies_us.len() as u64;
    watches.stop(ok);
    let mut out = Map::new();
    out.insert("connections".into(), json!(conns));
    out.insert("requests_ok".into(), json!(ok));
    out.insert("error_count".into(), json!(first.error_count()));
    out.insert("errors".into(), json!(first.errors));
    out.insert("elapsed_s".into(), json!(elapsed.as_secs_f64()));
    out.insert(
        "throughput_rps".into(),
        json!(ok as f64 / elapsed.as_secs_f64().max(1e-9)),
    );
    out.insert("ttfe".into(), latency_summary(&mut first.latencies_us));
    out.insert("stream_total".into(), latency_summary(&mut totals));
    Ok(out)
}
