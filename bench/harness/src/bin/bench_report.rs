//! `bench-report`: turns `bench-load` JSON results into the markdown table of the benchmark.
//!
//! - `bench-report table --direct DIR --conduit DIR [--title T] [--strict] [targets…]`
//!   reads `saturate.json`, `rate.json` and `ttfe.json` from both directories (direct to
//!   the mock / through Conduit) and prints the comparison table. With `--strict` the exit
//!   code is 1 when a target is missed.
//! - `bench-report get FILE /json/pointer` prints one value of a JSON file (strings raw),
//!   exit code 1 when absent; the driver script uses it to read the created key.

use std::path::Path;

use conduit_bench::{err, Args, Result};
use serde_json::Value;

const USAGE: &str = "usage:
  bench-report table --direct DIR --conduit DIR [--title TEXT] [--strict]
                     [--gateway-proc conduit] [--mock-proc mock]
                     [--target-cpu-us 100] [--target-added-p99-ms 1] [--target-rss-mib 50]
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
    conduit: String,
    delta: String,
    target: String,
    ok: String,
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

fn table(args: &Args) -> Result<i32> {
    args.check_known(&[
        "direct",
        "conduit",
        "title",
        "strict",
        "gateway-proc",
        "mock-proc",
        "target-cpu-us",
        "target-added-p99-ms",
        "target-rss-mib",
    ])?;
    let ddir = args
        .get("direct")
        .ok_or_else(|| err("--direct is required"))?;
    let cdir = args
        .get("conduit")
        .ok_or_else(|| err("--conduit is required"))?;
    let gw = args.get("gateway-proc").unwrap_or("conduit");
    let mock = args.get("mock-proc").unwrap_or("mock");
    let t_cpu: f64 = args.parse_or("target-cpu-us", 100.0)?;
    let t_p99: f64 = args.parse_or("target-added-p99-ms", 1.0)?;
    let t_rss: f64 = args.parse_or("target-rss-mib", 50.0)?;

    let (ds, dr, dt) = (
        load(ddir, "saturate.json"),
        load(ddir, "rate.json"),
        load(ddir, "ttfe.json"),
    );
    let (cs, cr, ct) = (
        load(cdir, "saturate.json"),
        load(cdir, "rate.json"),
        load(cdir, "ttfe.json"),
    );
    let conns = num(&cs, "/connections").or(num(&ds, "/connections"));
    let rate = num(&cr, "/target_rps").or(num(&dr, "/target_rps"));
    let rate_s = fmt_num(rate, 0);
    let mut failures = 0u32;
    let mut rows = Vec::new();

    // Throughput at saturation.
    let (d, c) = (num(&ds, "/throughput_rps"), num(&cs, "/throughput_rps"));
    rows.push(Row {
        metric: format!(
            "throughput at saturation ({} conns), req/s",
            fmt_num(conns, 0)
        ),
        direct: fmt_num(d, 0),
        conduit: fmt_num(c, 0),
        delta: match (d, c) {
            (Some(d), Some(c)) if d > 0.0 && c / d < 0.1 => format!("×{:.3}", c / d),
            (Some(d), Some(c)) if d > 0.0 => format!("×{:.2}", c / d),
            _ => "n/a".into(),
        },
        target: "—".into(),
        ok: "—".into(),
    });

    // Fixed-rate latency.
    for (p, name, target) in [
        ("p50", "p50", None),
        ("p90", "p90", None),
        ("p99", "p99", Some(t_p99)),
    ] {
        let ptr = format!("/latency/{p}_ms");
        let (d, c) = (num(&dr, &ptr), num(&cr, &ptr));
        let added = d.zip(c).map(|(d, c)| c - d);
        rows.push(Row {
            metric: format!("{name} latency at {rate_s} req/s, ms"),
            direct: fmt_num(d, 3),
            conduit: fmt_num(c, 3),
            delta: added.map_or("n/a".into(), |a| format!("{a:+.3} ms")),
            target: target.map_or("—".into(), |t| format!("added ≤ {t} ms")),
            ok: match target {
                Some(t) => verdict(added.map(|a| a <= t), &mut failures),
                None => "—".into(),
            },
        });
    }

    // Gateway CPU per request.
    for (label, v) in [
        ("saturation".to_string(), &cs),
        (format!("{rate_s} req/s"), &cr),
    ] {
        let c = num(v, &format!("/procs/{gw}/cpu_us_per_request"));
        rows.push(Row {
            metric: format!("gateway CPU time per request ({label}), µs"),
            direct: "—".into(),
            conduit: fmt_num(c, 1),
            delta: "—".into(),
            target: format!("≤ {t_cpu} µs"),
            ok: verdict(c.map(|c| c <= t_cpu), &mut failures),
        });
    }

    // Peak RSS: the largest VmHWM seen at the end of any phase.
    let peak = |vals: [&Value; 3], proc_name: &str| {
        vals.iter()
            .filter_map(|v| num(v, &format!("/procs/{proc_name}/vm_hwm_kib")))
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
            .map(|k| k / 1024.0)
    };
    let rss = peak([&cs, &cr, &ct], gw);
    rows.push(Row {
        metric: "gateway peak RSS (VmHWM), MiB".into(),
        direct: "—".into(),
        conduit: fmt_num(rss, 1),
        delta: "—".into(),
        target: format!("≤ {t_rss} MiB"),
        ok: verdict(rss.map(|r| r <= t_rss), &mut failures),
    });

    // Streaming.
    for (p, ptr) in [
        ("p50", "/ttfe/p50_ms"),
        ("p99", "/ttfe/p99_ms"),
        ("p50 stream total", "/stream_total/p50_ms"),
    ] {
        let (d, c) = (num(&dt, ptr), num(&ct, ptr));
        let metric = if p.contains("total") {
            "streaming time to last event p50, ms".to_string()
        } else {
            format!("streaming time to first event {p}, ms")
        };
        rows.push(Row {
            metric,
            direct: fmt_num(d, 3),
            conduit: fmt_num(c, 3),
            delta: d
                .zip(c)
                .map_or("n/a".into(), |(d, c)| format!("{:+.3} ms", c - d)),
            target: "—".into(),
            ok: "—".into(),
        });
    }

    // Errors over all phases.
    let errors = |vals: [&Value; 3]| -> Option<f64> {
        let mut sum = 0.0;
        for v in vals {
            sum += num(v, "/error_count")?;
        }
        Some(sum)
    };
    let (de, ce) = (errors([&ds, &dr, &dt]), errors([&cs, &cr, &ct]));
    rows.push(Row {
        metric: "failed requests (all phases)".into(),
        direct: fmt_num(de, 0),
        conduit: fmt_num(ce, 0),
        delta: "—".into(),
        target: "0".into(),
        ok: verdict(de.zip(ce).map(|(d, c)| d == 0.0 && c == 0.0), &mut failures),
    });

    if let Some(title) = args.get("title") {
        println!("### {title}\n");
    }
    println!("| metric | direct | through Conduit | added / ratio | target | ok? |");
    println!("|---|---:|---:|---:|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.metric, r.direct, r.conduit, r.delta, r.target, r.ok
        );
    }
    println!();
    let mock_cpu = |v: &Value| num(v, &format!("/procs/{mock}/cpu_us_per_request"));
    println!(
        "Notes: mock CPU per request at saturation: {} µs direct, {} µs through Conduit; \
mock peak RSS {} MiB. Requests measured: saturation {} / {}, fixed rate {} / {} \
(late starts {} / {}), streaming {} / {} (direct / through Conduit).",
        fmt_num(mock_cpu(&ds), 1),
        fmt_num(mock_cpu(&cs), 1),
        fmt_num(peak([&ds, &dr, &dt], mock), 1),
        fmt_num(num(&ds, "/requests_ok"), 0),
        fmt_num(num(&cs, "/requests_ok"), 0),
        fmt_num(num(&dr, "/requests_ok"), 0),
        fmt_num(num(&cr, "/requests_ok"), 0),
        fmt_num(num(&dr, "/late_starts"), 0),
        fmt_num(num(&cr, "/late_starts"), 0),
        fmt_num(num(&dt, "/requests_ok"), 0),
        fmt_num(num(&ct, "/requests_ok"), 0),
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
