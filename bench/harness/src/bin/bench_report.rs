//! `bench-report`: turns `bench-load` JSON results into the markdown table of the benchmark.
//!
//! - `bench-report table --direct DIR [--floor DIR] --conduit DIR [--baseline DIR] [--title T]
//!   [--strict] [targets…]` reads `saturate.json`, `rate.json`, `ttfe.json`, `embeddings.json`
//!   and `streams.json` from each directory (direct to the mock / through the floor, nginx
//!   as a plain reverse proxy / through Conduit) and prints the comparison table: every
//!   Conduit figure beside the direct one and as a ratio to the floor's. `--baseline` is
//!   another Conduit scenario (`plain`) whose CPU per request this one is compared with.
//!   With `--strict` the exit code is 1 when a target is missed.
//! - `bench-report get FILE /json/pointer` prints one value of a JSON file (strings raw),
//!   exit code 1 when absent; the driver script uses it to read the created key.

use std::path::Path;

use conduit_bench::{err, Args, Result};
use serde_json::Value;

const USAGE: &str = "usage:
  bench-report table --direct DIR [--floor DIR] --conduit DIR [--baseline DIR]
                     [--baseline-name plain] [--title TEXT] [--strict]
                     [--gateway-proc conduit] [--floor-proc nginx] [--mock-proc mock]
                     [--target-rps-ratio 0.8] [--target-cpu-ratio 1.5]
                     [--target-added-p99-ms 0.3] [--target-rss-mib 30]
                     [--target-embeddings-ratio 0.8] [--target-streams-ratio 0.7]
                     [--target-ttfb-ratio 2] [--target-baseline-cpu-ratio 1.05]
  bench-report get FILE /json/pointer";

fn main() {
    let args = match Args::parse(std::env::args().skip(1), &["help", "strict"]) {
        Ok(a) => a,
        Err(e) => fail(&e.to_string()),
    };
    if args.flag("help") {
        println!("{USAGE}");
        return;
    }
    let res = match args.positional().first().map(String::as_str) {
        Some("table") => table(&args),
        Some("get") => get(&args),
        _ => Err(err("missing command (table | get)")),
    };
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-report: {msg}");
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn get(args: &Args) -> Result<i32> {
    args.check_known(&[])?;
    let (file, pointer) = match args.positional() {
        [_, f, p] => (f, p),
        _ => return Err(err("get needs FILE and POINTER")),
    };
    let text = std::fs::read_to_string(file).map_err(|e| err(format!("read {file}: {e}")))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| err(format!("{file} is not JSON: {e}")))?;
    match v.pointer(pointer) {
        Some(Value::String(s)) => {
            println!("{s}");
            Ok(0)
        }
        Some(Value::Null) | None => Ok(1),
        Some(other) => {
            println!("{other}");
            Ok(0)
        }
    }
}

fn load(dir: &str, name: &str) -> Value {
    let path = Path::new(dir).join(name);
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "n/a".into(),
    }
}

/// A row of the table.
struct Row {
    metric: String,
    direct: String,
    floor: String,
    conduit: String,
    delta: String,
    vs_floor: String,
    target: String,
    ok: String,
}

impl Row {
    fn new(metric: impl Into<String>) -> Row {
        Row {
            metric: metric.into(),
            direct: "—".into(),
            floor: "—".into(),
            conduit: "—".into(),
            delta: "—".into(),
            vs_floor: "—".into(),
            target: "—".into(),
            ok: "—".into(),
        }
    }
}

fn verdict(ok: Option<bool>, failures: &mut u32) -> String {
    match ok {
        Some(true) => "yes".into(),
        Some(false) => {
            *failures += 1;
            "**NO**".into()
        }
        None => {
            *failures += 1;
            "n/a".into()
        }
    }
}

fn ratio(c: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (c, base) {
        (Some(c), Some(b)) if b > 0.0 => Some(c / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r < 0.1 => format!("×{r:.3}"),
        Some(r) => format!("×{r:.2}"),
        None => "n/a".into(),
    }
}

/// The phases of one run (direct, floor or a Conduit scenario).
struct Run {
    saturate: Value,
    rate: Value,
    ttfe: Value,
    embeddings: Value,
    streams: Value,
}

impl Run {
    fn load(dir: Option<&str>) -> Run {
        let get = |name: &str| dir.map_or(Value::Null, |d| load(d, name));
        Run {
            saturate: get("saturate.json"),
            rate: get("rate.json"),
            ttfe: get("ttfe.json"),
            embeddings: get("embeddings.json"),
            streams: get("streams.json"),
        }
    }

    fn all(&self) -> [&Value; 5] {
        [
            &self.saturate,
            &self.rate,
            &self.ttfe,
            &self.embeddings,
            &self.streams,
        ]
    }

    /// The largest `VmHWM` of `proc_name` at the end of any phase, MiB.
    fn peak_rss(&self, proc_name: &str) -> Option<f64> {
        self.all()
            .iter()
            .filter_map(|v| num(v, &format!("/procs/{proc_name}/vm_hwm_kib")))
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
            .map(|k| k / 1024.0)
    }

    /// Errors over every phase that ran (`None` when none did).
    fn errors(&self) -> Option<f64> {
        let counts: Vec<f64> = self
            .all()
            .iter()
            .filter(|v| !v.is_null())
            .filter_map(|v| num(v, "/error_count"))
            .collect();
        (!counts.is_empty()).then(|| counts.iter().sum())
    }
}

/// A throughput row: direct, floor, Conduit, ×direct, ×floor, the target on ×floor.
fn throughput_row(
    metric: String,
    ptr: &str,
    dv: &Value,
    fv: &Value,
    cv: &Value,
    target: Option<f64>,
    failures: &mut u32,
) -> Row {
    let (dn, fnum, cn) = (num(dv, ptr), num(fv, ptr), num(cv, ptr));
    let mut r = Row::new(metric);
    r.direct = fmt_num(dn, 0);
    r.floor = fmt_num(fnum, 0);
    r.conduit = fmt_num(cn, 0);
    r.delta = fmt_ratio(ratio(cn, dn));
    r.vs_floor = fmt_ratio(ratio(cn, fnum));
    if let Some(t) = target {
        r.target = format!("≥ {t}× floor");
        r.ok = verdict(ratio(cn, fnum).map(|x| x >= t), failures);
    }
    r
}

fn table(args: &Args) -> Result<i32> {
    args.check_known(&[
        "direct",
        "floor",
        "conduit",
        "baseline",
        "baseline-name",
        "title",
        "strict",
        "gateway-proc",
        "floor-proc",
        "mock-proc",
        "target-rps-ratio",
        "target-cpu-ratio",
        "target-added-p99-ms",
        "target-rss-mib",
        "target-embeddings-ratio",
        "target-streams-ratio",
        "target-ttfb-ratio",
        "target-baseline-cpu-ratio",
    ])?;
    let ddir = args
        .get("direct")
        .ok_or_else(|| err("--direct is required"))?;
    let cdir = args
        .get("conduit")
        .ok_or_else(|| err("--conduit is required"))?;
    let gw = args.get("gateway-proc").unwrap_or("conduit");
    let fp = args.get("floor-proc").unwrap_or("nginx");
    let mock = args.get("mock-proc").unwrap_or("mock");
    let t_rps: f64 = args.parse_or("target-rps-ratio", 0.8)?;
    let t_cpu: f64 = args.parse_or("target-cpu-ratio", 1.5)?;
    let t_p99: f64 = args.parse_or("target-added-p99-ms", 0.3)?;
    let t_rss: f64 = args.parse_or("target-rss-mib", 30.0)?;
    let t_emb: f64 = args.parse_or("target-embeddings-ratio", 0.8)?;
    let t_streams: f64 = args.parse_or("target-streams-ratio", 0.7)?;
    let t_ttfb: f64 = args.parse_or("target-ttfb-ratio", 2.0)?;
    let t_base: f64 = args.parse_or("target-baseline-cpu-ratio", 1.05)?;

    let d = Run::load(Some(ddir));
    let f = Run::load(args.get("floor"));
    let c = Run::load(Some(cdir));
    let has_floor = args.get("floor").is_some();
    let conns = num(&c.saturate, "/connections").or(num(&d.saturate, "/connections"));
    let rate = num(&c.rate, "/target_rps").or(num(&d.rate, "/target_rps"));
    let rate_s = fmt_num(rate, 0);
    let mut failures = 0u32;
    let mut rows = Vec::new();

    rows.push(throughput_row(
        format!(
            "throughput at saturation ({} conns), req/s",
            fmt_num(conns, 0)
        ),
        "/throughput_rps",
        &d.saturate,
        &f.saturate,
        &c.saturate,
        has_floor.then_some(t_rps),
        &mut failures,
    ));

    // Fixed-rate latency: added over direct, for the floor and for Conduit.
    for (p, target) in [("p50", None), ("p90", None), ("p99", Some(t_p99))] {
        let ptr = format!("/latency/{p}_ms");
        let (dn, fnum, cn) = (num(&d.rate, &ptr), num(&f.rate, &ptr), num(&c.rate, &ptr));
        let added = dn.zip(cn).map(|(d, c)| c - d);
        let floor_added = dn.zip(fnum).map(|(d, f)| f - d);
        let mut r = Row::new(format!("{p} latency at {rate_s} req/s, ms"));
        r.direct = fmt_num(dn, 3);
        r.floor = fmt_num(fnum, 3);
        r.conduit = fmt_num(cn, 3);
        r.delta = added.map_or("n/a".into(), |a| format!("{a:+.3} ms"));
        r.vs_floor = floor_added.map_or("—".into(), |fa| format!("{fa:+.3} ms floor"));
        if let Some(t) = target {
            r.target = format!("added ≤ {t} ms");
            r.ok = verdict(added.map(|a| a <= t), &mut failures);
        }
        rows.push(r);
    }

    // CPU per request: Conduit against the floor's proxy.
    for (label, cv, fv, target) in [
        (
            "saturation".to_string(),
            &c.saturate,
            &f.saturate,
            Some(t_cpu),
        ),
        (format!("{rate_s} req/s"), &c.rate, &f.rate, None),
        (
            "embeddings saturation".to_string(),
            &c.embeddings,
            &f.embeddings,
            None,
        ),
        (
            "concurrent streams".to_string(),
            &c.streams,
            &f.streams,
            None,
        ),
    ] {
        let cn = num(cv, &format!("/procs/{gw}/cpu_us_per_request"));
        let fnum = num(fv, &format!("/procs/{fp}/cpu_us_per_request"));
        if cv.is_null() && fv.is_null() {
            continue;
        }
        let mut r = Row::new(format!("gateway CPU time per request ({label}), µs"));
        r.floor = fmt_num(fnum, 1);
        r.conduit = fmt_num(cn, 1);
        r.vs_floor = fmt_ratio(ratio(cn, fnum));
        if let (Some(t), true) = (target, has_floor) {
            r.target = format!("≤ {t}× floor");
            r.ok = verdict(ratio(cn, fnum).map(|x| x <= t), &mut failures);
        }
        rows.push(r);
    }
    if let Some(bdir) = args.get("baseline") {
        let b = Run::load(Some(bdir));
        let name = args.get("baseline-name").unwrap_or("plain");
        let ptr = format!("/procs/{gw}/cpu_us_per_request");
        let (bn, cn) = (num(&b.saturate, &ptr), num(&c.saturate, &ptr));
        let mut r = Row::new(format!(
            "gateway CPU time per request (saturation) against scenario {name}, µs"
        ));
        r.direct = format!("{} ({name})", fmt_num(bn, 1));
        r.conduit = fmt_num(cn, 1);
        r.delta = fmt_ratio(ratio(cn, bn));
        r.target = format!("≤ {t_base}× {name}");
        r.ok = verdict(ratio(cn, bn).map(|x| x <= t_base), &mut failures);
        rows.push(r);
    }

    // Peak RSS.
    let rss = c.peak_rss(gw);
    let mut r = Row::new("gateway peak RSS (VmHWM), MiB");
    r.floor = fmt_num(f.peak_rss(fp), 1);
    r.conduit = fmt_num(rss, 1);
    r.vs_floor = fmt_ratio(ratio(rss, f.peak_rss(fp)));
    r.target = format!("≤ {t_rss} MiB");
    r.ok = verdict(rss.map(|r| r <= t_rss), &mut failures);
    rows.push(r);

    // Sequential streaming.
    for (metric, ptr) in [
        ("streaming time to first event p50, ms", "/ttfe/p50_ms"),
        ("streaming time to first event p99, ms", "/ttfe/p99_ms"),
        (
            "streaming time to last event p50, ms",
            "/stream_total/p50_ms",
        ),
    ] {
        let (dn, fnum, cn) = (num(&d.ttfe, ptr), num(&f.ttfe, ptr), num(&c.ttfe, ptr));
        let mut r = Row::new(metric);
        r.direct = fmt_num(dn, 3);
        r.floor = fmt_num(fnum, 3);
        r.conduit = fmt_num(cn, 3);
        r.delta = dn
            .zip(cn)
            .map_or("n/a".into(), |(d, c)| format!("{:+.3} ms", c - d));
        r.vs_floor = fnum
            .zip(cn)
            .map_or("n/a".into(), |(f, c)| format!("{:+.3} ms", c - f));
        rows.push(r);
    }

    // Embeddings at saturation.
    if !c.embeddings.is_null() {
        rows.push(throughput_row(
            format!(
                "embeddings at saturation ({} conns, {} B answer), req/s",
                fmt_num(num(&c.embeddings, "/connections"), 0),
                fmt_num(
                    num(&c.embeddings, "/response_bytes").or(num(&d.embeddings, "/response_bytes")),
                    0
                )
            ),
            "/throughput_rps",
            &d.embeddings,
            &f.embeddings,
            &c.embeddings,
            has_floor.then_some(t_emb),
            &mut failures,
        ));
    }

    // Concurrent streams.
    if !c.streams.is_null() {
        rows.push(throughput_row(
            format!(
                "concurrent streams ({} conns), streams/s",
                fmt_num(num(&c.streams, "/connections"), 0)
            ),
            "/throughput_rps",
            &d.streams,
            &f.streams,
            &c.streams,
            has_floor.then_some(t_streams),
            &mut failures,
        ));
        for (p, target) in [("p50", None), ("p99", Some(t_ttfb))] {
            let ptr = format!("/ttfe/{p}_ms");
            let (dn, fnum, cn) = (
                num(&d.streams, &ptr),
                num(&f.streams, &ptr),
                num(&c.streams, &ptr),
            );
            let mut r = Row::new(format!("concurrent streams: time to first byte {p}, ms"));
            r.direct = fmt_num(dn, 3);
            r.floor = fmt_num(fnum, 3);
            r.conduit = fmt_num(cn, 3);
            r.delta = dn
                .zip(cn)
                .map_or("n/a".into(), |(d, c)| format!("{:+.3} ms", c - d));
            r.vs_floor = fmt_ratio(ratio(cn, fnum));
            if let (Some(t), true) = (target, has_floor) {
                r.target = format!("≤ {t}× floor");
                r.ok = verdict(ratio(cn, fnum).map(|x| x <= t), &mut failures);
            }
            rows.push(r);
        }
    }

    // Errors over all phases.
    let (de, fe, ce) = (d.errors(), f.errors(), c.errors());
    let mut r = Row::new("failed requests (all phases)");
    r.direct = fmt_num(de, 0);
    r.floor = fmt_num(fe, 0);
    r.conduit = fmt_num(ce, 0);
    r.target = "0".into();
    r.ok = verdict(
        de.zip(ce)
            .map(|(d, c)| d == 0.0 && c == 0.0 && fe.unwrap_or(0.0) == 0.0),
        &mut failures,
    );
    rows.push(r);

    if let Some(title) = args.get("title") {
        println!("### {title}\n");
    }
    println!(
        "| metric | direct | nginx (floor) | through Conduit | added / ratio | against the floor | target | ok? |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.metric, r.direct, r.floor, r.conduit, r.delta, r.vs_floor, r.target, r.ok
        );
    }
    println!();
    let mock_cpu = |v: &Value| num(v, &format!("/procs/{mock}/cpu_us_per_request"));
    println!(
        "Notes: mock CPU per request at saturation: {} µs direct, {} µs through the floor, {} µs \
through Conduit; mock peak RSS {} MiB. Requests measured: saturation {} / {} / {}, fixed rate \
{} / {} / {} (late starts {} / {} / {}), streaming {} / {} / {}, embeddings {} / {} / {}, \
concurrent streams {} / {} / {} (direct / floor / through Conduit).",
        fmt_num(mock_cpu(&d.saturate), 1),
        fmt_num(mock_cpu(&f.saturate), 1),
        fmt_num(mock_cpu(&c.saturate), 1),
        fmt_num(d.peak_rss(mock), 1),
        fmt_num(num(&d.saturate, "/requests_ok"), 0),
        fmt_num(num(&f.saturate, "/requests_ok"), 0),
        fmt_num(num(&c.saturate, "/requests_ok"), 0),
        fmt_num(num(&d.rate, "/requests_ok"), 0),
        fmt_num(num(&f.rate, "/requests_ok"), 0),
        fmt_num(num(&c.rate, "/requests_ok"), 0),
        fmt_num(num(&d.rate, "/late_starts"), 0),
        fmt_num(num(&f.rate, "/late_starts"), 0),
        fmt_num(num(&c.rate, "/late_starts"), 0),
        fmt_num(num(&d.ttfe, "/requests_ok"), 0),
        fmt_num(num(&f.ttfe, "/requests_ok"), 0),
        fmt_num(num(&c.ttfe, "/requests_ok"), 0),
        fmt_num(num(&d.embeddings, "/requests_ok"), 0),
        fmt_num(num(&f.embeddings, "/requests_ok"), 0),
        fmt_num(num(&c.embeddings, "/requests_ok"), 0),
        fmt_num(num(&d.streams, "/requests_ok"), 0),
        fmt_num(num(&f.streams, "/requests_ok"), 0),
        fmt_num(num(&c.streams, "/requests_ok"), 0),
    );
    if failures > 0 {
        println!("\n{failures} target(s) missed or not measured.");
    }
    Ok(if args.flag("strict") && failures > 0 {
        1
    } else {
        0
    })
}
