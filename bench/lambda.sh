#!/usr/bin/env bash
# AWS Lambda benchmark: the function's size as deployed (bootstrap.zip), its cold start, peak
# RSS, and the latency it adds, run locally as Lambda runs it (`conduit-lambda-local`: the real
# `conduit-lambda` binary behind a Runtime API and a Function-URL front) against dynalite and the
# bench mock upstream, next to the same calls made directly to the mock.
# Usage: bash bench/lambda.sh        (settings through BENCH_* variables, see bench/README.md)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_TAG=bench-lambda
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=${BENCH_BIN_DIR:-$TARGET_DIR/release}                   # bench-mock, bench-load, bench-report
SIZE_TARGET_DIR=${BENCH_LAMBDA_TARGET_DIR:-$TARGET_DIR/lambda-size} # the deployable (size profile) build
FUNCTION=${BENCH_LAMBDA_FUNCTION:-$SIZE_TARGET_DIR/release/conduit-lambda}
RUNNER=${CONDUIT_LAMBDA_LOCAL:-$SIZE_TARGET_DIR/release/conduit-lambda-local}
OUT=${BENCH_OUT:-$TARGET_DIR/bench/lambda-$(date -u +%Y%m%dT%H%M%SZ)}
DYNALITE=$ROOT/node_modules/dynalite/cli.js

RATE=${BENCH_RATE:-50}                    # req/s of the fixed-rate phase (one function instance)
RATE_DURATION=${BENCH_RATE_DURATION:-10}  # seconds
RATE_CONNS=${BENCH_RATE_CONNS:-8}         # connection pool of the fixed-rate phase
WARMUP=${BENCH_WARMUP:-200}               # unmeasured requests before the fixed-rate phase
TTFE_REQUESTS=${BENCH_TTFE_REQUESTS:-200} # sequential streaming requests
STREAM_DELAY_MS=${BENCH_STREAM_DELAY_MS:-1}
STREAM_CHUNKS=${BENCH_STREAM_CHUNKS:-10}
COLD_RUNS=${BENCH_COLD_RUNS:-15}          # cold starts measured per kind (>= 10)
COLD_KINDS=${BENCH_COLD_KINDS-health-runner health chat}
STRICT=${BENCH_STRICT:-0}                 # 1: exit 1 when a target is missed
HOT_INSTANCES=${BENCH_HOT_INSTANCES:-8}   # instances of the hot-key and round-trip phases
HOT_RATE=${BENCH_HOT_RATE:-200}           # req/s offered by one key in the hot-key phase
HOT_DURATION=${BENCH_HOT_DURATION:-10}    # seconds of the hot-key phase
TRIPS_RATE=${BENCH_TRIPS_RATE:-50}        # req/s of each store-round-trip phase (one key each)
TRIPS_DURATION=${BENCH_TRIPS_DURATION:-3} # seconds per store-round-trip phase
TRIPS_ONLY=${BENCH_TRIPS_ONLY:-0}         # 1: only the round-trip and hot-key phases (no warm, cold or size table)
ZIP_TARGET_MIB=8
COLD_TARGET_MS=30

# The size profile (the workspace's [profile.release] stays untouched): opt-level s, fat LTO,
# one codegen unit, panic=abort, stripped. Separate target dir: the normal release build keeps
# its artifacts.
SIZE_PROFILE=(CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
  CARGO_PROFILE_RELEASE_PANIC=abort CARGO_PROFILE_RELEASE_STRIP=true)

UPSTREAM_KEY="bench-upstream-key"
MASTER_KEY="bench-master-$$-$RANDOM$RANDOM"
ALIAS="bench"
SLOW_ALIAS="bench-slow"
UPSTREAM_MODEL="gpt-4o-mini"

stop_and_forget() { stop_proc "$1"; forget_pid "$1"; }

busy_procs() { # cargo / rustc / pytest processes running now (by command name, not ours)
  ps -eo comm=,args= 2>/dev/null | awk '$1 == "cargo" || $1 == "rustc" || ($1 ~ /^(python|pytest)/ && /pytest/)' | wc -l
}

# ---- prerequisites and builds
command -v node >/dev/null || die "node is required (dynalite runs on it)"
command -v python3 >/dev/null || die "python3 is required (cold-start probe and report)"
command -v curl >/dev/null || die "curl is required"
[[ -f $DYNALITE ]] || die "missing $DYNALITE: run npm ci in $ROOT"

newer_than() { # FILE PATH... : true when FILE is missing or a file under PATH... is newer
  local f=$1
  shift
  [[ -e $f ]] || return 0
  [[ -n $(find "$@" -type f -newer "$f" -print -quit 2>/dev/null) ]]
}
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  if newer_than "$BIN_DIR/bench-load" "$ROOT/bench/harness" "$ROOT/Cargo.lock"; then
    log "building: conduit-bench (release)"
    (cd "$ROOT" && cargo build --release -p conduit-bench) >&2
  fi
  if [[ -n ${BENCH_LAMBDA_FUNCTION:-}${CONDUIT_LAMBDA_LOCAL:-} ]]; then
    log "using the given binaries; not building conduit-lambda"
  elif [[ ${BENCH_FORCE_BUILD:-0} == 1 ]] ||
    newer_than "$FUNCTION" "$ROOT/src" "$ROOT/platforms/aws-lambda" "$ROOT/platforms/native" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock"; then
    log "building conduit-lambda with the size profile into $SIZE_TARGET_DIR (about 5 min on 2 cores)"
    (cd "$ROOT" && env CARGO_TARGET_DIR="$SIZE_TARGET_DIR" "${SIZE_PROFILE[@]}" \
      cargo build --release -p conduit-lambda) >&2
  else
    log "$FUNCTION is newer than its sources: not rebuilding (BENCH_FORCE_BUILD=1 to force)"
  fi
fi
for b in bench-mock bench-load; do
  [[ -x $BIN_DIR/$b ]] || die "missing $BIN_DIR/$b (build with: cargo build --release -p conduit-bench)"
done
[[ -x $FUNCTION ]] || die "missing $FUNCTION"
[[ -x $RUNNER ]] || die "missing $RUNNER"

BUSY_PROCS=$(busy_procs)
BUSY_START=$(cpu_busy_pct)
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
((BUSY_START < 20)) || log "warning: the machine is ${BUSY_START}% busy before the run; results will be noisy"
((BUSY_PROCS == 0)) || log "warning: $BUSY_PROCS cargo/rustc/pytest process(es) running; results will be noisy"

mkdir -p "$OUT/direct" "$OUT/lambda" "$OUT/cold"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/conduit-bench-lambda.XXXXXX")
BENCH_SESSIONS="$WORK/sessions" # our sessions, for the load sampler
trap 'cleanup; rm -rf "$WORK"' EXIT
log "results in $OUT"

# ---- helper: the cold-start probe, warm /health probe and the report (python3, stdlib only)
cat >"$WORK/lambda_bench.py" <<'PY'
import http.client, json, math, os, sys, time
from urllib.parse import urlsplit

def conn(base):
    u = urlsplit(base)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)

def hdrs(token, body):
    h = {"Authorization": "Bearer " + token}
    if body is not None:
        h["Content-Type"] = "application/json"
    return h

def cold(base, token, hold_body_file, method, path, body_file, spawn_log):
    # 1. Keep the runner's first instance busy: a slow stream, read until its first event.
    hold = conn(base)
    hold_body = open(hold_body_file, "rb").read()
    hold.request("POST", "/v1/chat/completions", body=hold_body, headers=hdrs(token, hold_body))
    r = hold.getresponse()
    if r.status != 200 or not r.read1(65536):
        sys.exit(f"holding request answered {r.status}")
    # 2. The measured request: no idle instance, so the runner starts a fresh one for it.
    body = open(body_file, "rb").read() if body_file else None
    c = conn(base)
    c.connect()
    t_send = time.time()
    c.request(method, path, body=body, headers=hdrs(token, body))
    resp = c.getresponse()
    t_head = time.time()
    data = resp.read()
    t_end = time.time()
    if resp.status != 200:
        sys.exit(f"{method} {path} answered {resp.status}: {data[:300]!r}")
    # 3. When the fresh instance's binary was exec'd (the wrapper's $EPOCHREALTIME, line 2).
    lines = []
    for _ in range(100):
        lines = [l for l in open(spawn_log).read().split() if l]
        if len(lines) >= 2:
            break
        time.sleep(0.01)
    if len(lines) != 2:
        sys.exit(f"expected 2 instance starts, saw {len(lines)}")
    t_exec = float(lines[1])
    print(json.dumps({
        "cold_ms": (t_end - t_exec) * 1e3,          # exec of conduit-lambda -> response received
        "cold_head_ms": (t_head - t_exec) * 1e3,    # ... -> status line and headers received
        "client_ms": (t_end - t_send) * 1e3,        # request sent -> response received
        "exec_after_send_ms": (t_exec - t_send) * 1e3,
        "status": resp.status,
    }))
    hold.close()

def warm_health(base, n):
    c = conn(base)
    lat = []
    for i in range(n + 20):
        t = time.perf_counter()
        c.request("GET", "/health")
        r = c.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"GET /health answered {r.status}")
        if i >= 20:
            lat.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"count": len(lat), "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99)}))

def others(our_pid, sessions_file, out_file):
    """Until killed: CPU time of the processes that are not ours (not in the script's session
    nor in one of the sessions it started), per 1 s sample; the summary goes to out_file."""
    hz = os.sysconf("SC_CLK_TCK")
    ours = {os.getsid(int(our_pid))}

    def snap():
        cur = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as fh:
                    st = fh.read()
            except OSError:
                continue
            comm = st[st.index("(") + 1:st.rindex(")")]
            f = st[st.rindex(")") + 2:].split()
            cur[int(d)] = (int(f[3]), comm, int(f[11]) + int(f[12]))
        return cur

    prev, t0, t_prev = snap(), time.time(), time.time()
    total, peak, by_comm = 0, 0.0, {}
    while True:
        time.sleep(1)
        try:
            ours |= {int(l) for l in open(sessions_file).read().split()}
        except (OSError, ValueError):
            pass
        cur, now = snap(), time.time()
        tick = 0
        for pid, (sid, comm, t) in cur.items():
            if sid in ours or sid == 0 or pid not in prev or prev[pid][0] != sid:
                continue
            d = t - prev[pid][2]
            if d > 0:
                tick += d
                by_comm[comm] = by_comm.get(comm, 0) + d
        total += tick
        peak = max(peak, 100.0 * tick / hz / (now - t_prev))
        prev, t_prev = cur, now
        el = now - t0
        top = sorted(by_comm.items(), key=lambda kv: -kv[1])[:3]
        with open(out_file + ".tmp", "w") as fh:
            json.dump({"elapsed_s": el, "avg_pct": 100.0 * total / hz / el, "peak_pct": peak,
                       "top": [[c, 100.0 * t / hz / el] for c, t in top]}, fh)
        os.replace(out_file + ".tmp", out_file)

def others_summary(path):
    d = load(path)
    if not d:
        return "(not measured)"
    top = ", ".join(f"{c} {p:.0f}%" for c, p in d["top"] if p >= 1) or "none above 1%"
    return f"{d['avg_pct']:.0f}% of one core on average, {d['peak_pct']:.0f}% in the busiest second (top: {top})"

def pct(xs, p):  # nearest rank
    xs = sorted(xs)
    if not xs:
        return None
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d

def report(out):
    E = os.environ
    D = {n: load(f"{out}/direct/{n}.json") for n in ("rate", "ttfe")}
    L = {n: load(f"{out}/lambda/{n}.json") for n in ("rate", "ttfe")}
    rows, missed = [], []

    def f(v, unit="ms", nd=2):
        return "–" if v is None else f"{v:.{nd}f} {unit}".strip()

    def ok(cond, what):
        if cond is None:
            missed.append(what + " (not measured)")
            return "❌"
        if not cond:
            missed.append(what)
        return "✅" if cond else "❌"

    mib = 1024 * 1024
    size, zsize = int(E["R_BIN_BYTES"]), int(E["R_ZIP_BYTES"])
    rows.append(["function binary `conduit-lambda` (x86_64, size profile, stripped)", "–",
                 f"{size / mib:.2f} MiB ({size:,} B)", "–", "–"])
    rows.append([f"`bootstrap.zip` ({E['R_ZIP_TOOL']})", "–", f"{zsize / mib:.2f} MiB ({zsize:,} B)",
                 f"≤ {E['R_ZIP_TARGET_MIB']} MiB", ok(zsize <= int(E["R_ZIP_TARGET_MIB"]) * mib, "zip size")])

    cold_desc = {
        "health-runner": "cold start → first `GET /health`, as the runner runs it (CONDUIT_CREATE_TABLES=1: 2 DescribeTable, tables present)",
        "health": "cold start → first `GET /health`, as deployed (no table check)",
        "chat": "cold start → first chat completion, as deployed (key lookup, upstream call, usage write)",
    }
    cold_stats = {}
    for kind in E.get("R_COLD_KINDS", "").split():
        runs = []
        try:
            with open(f"{out}/cold/{kind}.jsonl") as fh:
                runs = [json.loads(l) for l in fh if l.strip()]
        except OSError:
            pass
        xs = [r["cold_ms"] for r in runs]
        fails = int(E.get(f"R_COLD_FAIL_{kind.replace('-', '_')}", "0"))
        med, p90 = pct(xs, 50), pct(xs, 90)
        cold_stats[kind] = (xs, runs, fails)
        target = "–"
        good = "–"
        if kind.startswith("health"):
            target = f"median ≤ {E['R_COLD_TARGET_MS']} ms"
            good = ok(None if med is None else med <= float(E["R_COLD_TARGET_MS"]), f"cold start ({kind})")
        rows.append([f"{cold_desc.get(kind, kind)}: median / p90 (n={len(xs)}{', failed ' + str(fails) if fails else ''})",
                     "–", "–" if med is None else f"{med:.1f} / {p90:.1f} ms", target, good])

    # VmHWM only grows: read from /proc at the end of the warm phases.
    fn_rss = int(E["R_FN_HWM_KIB"]) if E.get("R_FN_HWM_KIB") else get(L["ttfe"], "procs", "function", "vm_hwm_kib")
    rows.append(["peak RSS (VmHWM) of the function process, after all warm phases", "–",
                 f(None if fn_rss is None else fn_rss / 1024, "MiB", 1), "< 128 MiB (smallest Lambda memory size)",
                 ok(None if fn_rss is None else fn_rss / 1024 < 128, "peak RSS")])

    rate, dur = E["R_RATE"], E["R_RATE_DURATION"]
    for p in ("p50", "p90", "p99"):
        d, l = get(D["rate"], "latency", p + "_ms"), get(L["rate"], "latency", p + "_ms")
        rows.append([f"latency {p} @ {rate} req/s (non-streaming chat)", f(d, nd=3), f(l, nd=3), "–", "–"])
    for p in ("p50", "p99"):
        d, l = get(D["rate"], "latency", p + "_ms"), get(L["rate"], "latency", p + "_ms")
        rows.append([f"added latency {p} (vs direct)", "–", "–" if d is None or l is None else f"+{l - d:.3f} ms", "–", "–"])
    errs = lambda j: (get(j, "late_starts"), get(j, "error_count"))
    dl, de = errs(D["rate"])
    ll, le = errs(L["rate"])
    rows.append(["late starts (rate not kept up) / errors", f"{dl} / {de}", f"{ll} / {le}", "0 / 0",
                 ok(None if ll is None else (ll == 0 and le == 0 and dl == 0 and de == 0), "rate phase errors")])
    for who, label in (("function", "function (conduit-lambda)"), ("runner", "runner (conduit-lambda-local)"), ("mock", "mock upstream"),
                       ("dynalite", "dynalite (local DynamoDB, node)")):
        d = get(D["rate"], "procs", who, "cpu_us_per_request")
        l = get(L["rate"], "procs", who, "cpu_us_per_request")
        rows.append([f"CPU per request @ {rate} req/s: {label}", f(d, "µs", 0), f(l, "µs", 0), "–", "–"])
    for p in ("p50", "p99"):
        d, l = get(D["ttfe"], "ttfe", p + "_ms"), get(L["ttfe"], "ttfe", p + "_ms")
        rows.append([f"streaming: time to first event {p}", f(d, nd=3), f(l, nd=3), "–", "–"])
    d, l = get(D["ttfe"], "ttfe", "p50_ms"), get(L["ttfe"], "ttfe", "p50_ms")
    rows.append(["streaming: added time to first event p50", "–", "–" if d is None or l is None else f"+{l - d:.3f} ms", "–", "–"])
    d, l = get(D["ttfe"], "stream_total", "p50_ms"), get(L["ttfe"], "stream_total", "p50_ms")
    rows.append(["streaming: time to end of stream p50", f(d, nd=2), f(l, nd=2), "–", "–"])
    de, le = get(D["ttfe"], "error_count"), get(L["ttfe"], "error_count")
    rows.append(["streaming errors", str(de), str(le), "0", ok(None if le is None else (le == 0 and de == 0), "streaming errors")])

    wh = load(f"{out}/lambda/warm-health.json")
    notes = []
    first = cold_stats.get("health", cold_stats.get("health-runner"))
    if first and first[0]:
        xs, runs, _ = first
        notes.append(
            f"Cold start: {E['R_COLD_RUNS']} fresh `conduit-lambda` processes per row, each started by the runner for a request that "
            f"found its only other instance busy (a slow stream); timed from the `exec` of the binary (timestamp taken by a "
            f"wrapper right before it) to the whole response received by the client through the runner's Function-URL front. "
            f"Range {min(xs):.1f}–{max(xs):.1f} ms; status line and headers at median {pct([r['cold_head_ms'] for r in runs], 50):.1f} ms; "
            f"the runner started the process a median {pct([r['exec_after_send_ms'] for r in runs], 50):.1f} ms after the request was sent "
            f"(fork + wrapper, not counted)."
            + (f" The same `GET /health` to a warm instance through the runner takes p50 {wh['p50_ms']:.2f} ms "
               f"(p90 {wh['p90_ms']:.2f} ms, {wh['count']} sequential requests): that much of the cold figure is the "
               f"steady-state request path (runner relay included), the rest is process start, init and the first invocation."
               if wh else ""))
    notes.append(
        f"Warm: one function instance (`--instances 1`); fixed rate {rate} req/s open loop for {dur} s over "
        f"{E['R_RATE_CONNS']} keep-alive connections after {E['R_WARMUP']} warm-up requests; streaming: "
        f"{E['R_TTFE_REQUESTS']} sequential `\"stream\": true` requests, {E['R_STREAM_CHUNKS']} chunks, "
        f"{E['R_STREAM_DELAY_MS']} ms between events. The Lambda column goes client → runner front → Runtime API → "
        f"function → mock and back; the function's DynamoDB calls (key lookup, admission, usage write: the response "
        f"ends after the usage write) go to dynalite, a JS emulator on this machine. CPU per request: utime+stime over the fixed-rate phase / requests "
        f"(10 ms clock ticks: ±{10000 / max(1, float(rate) * float(dur)):.0f} µs per request).")
    head = [
        "## Conduit on AWS Lambda: local benchmark (conduit-lambda-local)",
        "",
        f"{E['R_DATE']} · {E['R_CPUS']} · {E['R_KERNEL']} · function built {E['R_BIN_MTIME']} "
        f"(opt-level s, fat LTO, 1 CGU, panic=abort, strip).",
        f"Load before the run: CPU busy {E['R_BUSY']}% (1 s sample), load average {E['R_LOADAVG']}, "
        f"{E['R_BUSY_PROCS']} cargo/rustc/pytest process(es) running. During the run, other processes used "
        f"{E['R_OTHERS']}. Load generator, mocks, dynalite, runner and function share the machine (no CPU pinning).",
        "",
        "| metric | direct | Conduit Lambda (local) | target | ok? |",
        "|---|---:|---:|---|---|",
    ]
    lines = head + [f"| {' | '.join(r)} |" for r in rows] + [""] + notes
    if missed:
        lines += ["", f"{len(missed)} target(s) missed or not measured: {', '.join(missed)}."]
    print("\n".join(lines))
    sys.exit(1 if missed and E.get("R_STRICT") == "1" else 0)

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "cold":
        cold(*sys.argv[2:9])
    elif cmd == "warm-health":
        warm_health(sys.argv[2], int(sys.argv[3]))
    elif cmd == "others":
        others(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "others-summary":
        print(others_summary(sys.argv[2]))
    elif cmd == "report":
        report(sys.argv[2])
    elif cmd == "free-port":
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
        s.close()
    else:
        sys.exit(f"unknown command {cmd}")
PY
PYB=(python3 "$WORK/lambda_bench.py")
# CPU used by other processes while we run (other builds, tests, benchmarks skew every number).
start_bg LOAD_PID "$WORK/others.out" "$WORK/others.err" "${PYB[@]}" others "$$" "$WORK/sessions" "$OUT/others.json"

# ---- 1. size as deployed: the binary renamed `bootstrap`, zipped
BIN_BYTES=$(stat -c %s "$FUNCTION")
BIN_MTIME=$(date -u -r "$FUNCTION" +%Y-%m-%dT%H:%M:%SZ)
mkdir -p "$WORK/zip"
cp "$FUNCTION" "$WORK/zip/bootstrap"
if command -v zip >/dev/null; then
  (cd "$WORK/zip" && zip -q -9 -X bootstrap.zip bootstrap)
  ZIP_TOOL="zip -9"
else
  # Same deflate at level 9, without the zip package.
  python3 -c 'import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    z.write(sys.argv[2], "bootstrap")' "$WORK/zip/bootstrap.zip" "$WORK/zip/bootstrap"
  ZIP_TOOL="python zipfile, deflate level 9 (zip not installed)"
fi
ZIP_BYTES=$(stat -c %s "$WORK/zip/bootstrap.zip")
log "function: $BIN_BYTES B; bootstrap.zip: $ZIP_BYTES B"

# ---- 2. mocks (fast one for the measured calls, slow one to keep an instance busy), dynalite
start_bg MOCK_PID "$WORK/mock.out" "$WORK/mock.err" "$BIN_DIR/bench-mock" \
  --listen 127.0.0.1:0 --require-key "$UPSTREAM_KEY" --stream-delay-ms "$STREAM_DELAY_MS" --chunks "$STREAM_CHUNKS"
MOCK_URL=$(wait_url "$MOCK_PID" "$WORK/mock.out" "listening on " "$WORK/mock.err")
start_bg SLOW_PID "$WORK/slow.out" "$WORK/slow.err" "$BIN_DIR/bench-mock" \
  --listen 127.0.0.1:0 --require-key "$UPSTREAM_KEY" --stream-delay-ms 5000 --chunks 2
SLOW_URL=$(wait_url "$SLOW_PID" "$WORK/slow.out" "listening on " "$WORK/slow.err")
log "mock upstream at $MOCK_URL (pid $MOCK_PID), slow mock at $SLOW_URL"

DDB_PORT=$("${PYB[@]}" free-port)
start_bg DDB_PID "$WORK/dynalite.out" "$OUT/dynalite.log" node "$DYNALITE" --host 127.0.0.1 --port "$DDB_PORT" \
  --createTableMs 0 --deleteTableMs 0 --updateTableMs 0
ddb_probe() {
  curl -sf -o /dev/null --max-time 2 -X POST "http://127.0.0.1:$DDB_PORT/" -d '{}' \
    -H 'X-Amz-Target: DynamoDB_20120810.ListTables' -H 'Content-Type: application/x-amz-json-1.0' \
    -H 'X-Amz-Date: 20250101T000000Z' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=x/20250101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0'
}
for ((i = 0; i < 300; i++)); do
  ddb_probe && break
  kill -0 "$DDB_PID" 2>/dev/null || die "dynalite exited: $(tail -n 5 "$OUT/dynalite.log")"
  sleep 0.05
done
ddb_probe || die "dynalite did not answer within 15 s"
log "dynalite at 127.0.0.1:$DDB_PORT (pid $DDB_PID)"

# ---- the runner and its function, with a clean environment (no ~/.aws, no IMDS)
CONFIG=$(
  cat <<EOF
[providers.openai]
kind = "openai"
base_url = "$MOCK_URL/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[providers.slow]
kind = "openai"
base_url = "$SLOW_URL/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[models."$ALIAS"]
deployments = [{ provider = "openai", model = "$UPSTREAM_MODEL" }]

[models."$SLOW_ALIAS"]
deployments = [{ provider = "slow", model = "$UPSTREAM_MODEL" }]
EOF
)
mkdir -p "$WORK/home"
RUNNER_ENV=(env -i PATH="$PATH" HOME="$WORK/home" LC_ALL=C
  AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$DDB_PORT" AWS_REGION=us-east-1
  AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_EC2_METADATA_DISABLED=true
  CONDUIT_CONFIG="$CONFIG" CONDUIT_MASTER_KEY="$MASTER_KEY" BENCH_UPSTREAM_KEY="$UPSTREAM_KEY")

# The cold-start wrapper: the runner starts it as the function; it notes the time and execs the
# real binary (same pid), so the measurement starts at the binary's exec.
cat >"$WORK/wrap.sh" <<'SH'
#!/bin/bash
[[ ${BENCH_DEPLOYED:-0} == 1 ]] && unset CONDUIT_CREATE_TABLES
printf '%s\n' "$EPOCHREALTIME" >>"$BENCH_SPAWN_LOG"
exec "$BENCH_FUNCTION"
SH
chmod +x "$WORK/wrap.sh"

start_runner() { # PID_VAR URL_VAR NAME INSTANCES FUNCTION [VAR=value...]
  local pv=$1 uv=$2 name=$3 n=$4 fn=$5 runner_pid url
  shift 5
  start_bg runner_pid "$WORK/$name.out" "$WORK/$name.err" "${RUNNER_ENV[@]}" "$@" \
    "$RUNNER" --listen 127.0.0.1:0 --instances "$n" --function "$fn"
  url=$(wait_url "$runner_pid" "$WORK/$name.out" "conduit-lambda-local listening on " "$WORK/$name.err" 1500)
  printf -v "$pv" '%s' "$runner_pid"
  printf -v "$uv" '%s' "$url"
}
function_pid() { # RUNNER_PID : the runner's only child
  local kids
  kids=$(cat /proc/"$1"/task/*/children 2>/dev/null | tr -s ' ' '\n' | sed '/^$/d')
  [[ $(wc -l <<<"$kids") == 1 && -n $kids ]] || die "expected one function process under the runner, got: $kids"
  [[ $(cat /proc/"$kids"/comm) == conduit-lambda ]] || die "child $kids of the runner is $(cat /proc/"$kids"/comm)"
  echo "$kids"
}

chat_body() { # MODEL [STREAM]
  printf '{"model":"%s","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32%s}' \
    "$1" "${2:+,\"stream\":true}"
}
chat_body "$UPSTREAM_MODEL" >"$OUT/direct/body.json"
chat_body "$UPSTREAM_MODEL" 1 >"$OUT/direct/stream-body.json"
chat_body "$ALIAS" >"$OUT/lambda/body.json"
chat_body "$ALIAS" 1 >"$OUT/lambda/stream-body.json"
chat_body "$SLOW_ALIAS" 1 >"$WORK/hold-body.json"

# ---- 3. preparation: a first runner creates the tables (its instance's cold start) and the key
start_runner PREP_PID PREP_URL prep 1 "$FUNCTION"
code=$(curl -sS --max-time 10 -o "$WORK/key.json" -w '%{http_code}' -X POST "$PREP_URL/admin/keys" \
  -H "Authorization: Bearer $MASTER_KEY" -H 'Content-Type: application/json' -d '{"name":"bench-lambda"}') ||
  die "POST /admin/keys failed"
[[ $code == 200 || $code == 201 ]] || die "POST /admin/keys answered $code: $(cat "$WORK/key.json")"
KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$WORK/key.json") ||
  die "no key in $(cat "$WORK/key.json")"
code=$(curl -sS --max-time 10 -o "$WORK/probe.out" -w '%{http_code}' -X POST "$PREP_URL/v1/chat/completions" \
  -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' --data-binary "@$OUT/lambda/body.json") ||
  die "probe request failed"
[[ $code == 200 ]] || die "probe through the function answered $code: $(cat "$WORK/probe.out")"
cp "$WORK/prep.err" "$OUT/prep-runner.log"
stop_and_forget "$PREP_PID"
log "tables and virtual key ready"

if [[ $TRIPS_ONLY != 1 ]]; then
# ---- 4. warm: direct to the mock, then through the runner with one instance
run_load() { # DIR TOKEN PID_SPEC...
  local dir=$1 token=$2 url
  shift 2
  local pids=() spec
  for spec in "$@"; do pids+=(--pid "$spec"); done
  [[ $dir == */direct ]] && url=$MOCK_URL || url=$LAMBDA_URL
  log "  fixed rate: $RATE req/s, ${RATE_DURATION}s"
  run_fg "$BIN_DIR/bench-load" rate --url "$url/v1/chat/completions" --header "Authorization: Bearer $token" \
    --body-file "$dir/body.json" --warmup "$WARMUP" --rate "$RATE" --duration-s "$RATE_DURATION" \
    --connections "$RATE_CONNS" "${pids[@]}" --out "$dir/rate.json" >/dev/null
  log "  streaming: $TTFE_REQUESTS sequential requests"
  run_fg "$BIN_DIR/bench-load" ttfe --url "$url/v1/chat/completions" --header "Authorization: Bearer $token" \
    --body-file "$dir/stream-body.json" --requests "$TTFE_REQUESTS" --warmup 20 "${pids[@]}" \
    --out "$dir/ttfe.json" >/dev/null
}
LAMBDA_URL=
log "direct to the mock"
run_load "$OUT/direct" "$UPSTREAM_KEY" "mock=$MOCK_PID"

start_runner WARM_PID LAMBDA_URL warm 1 "$FUNCTION"
FN_PID=$(function_pid "$WARM_PID")
log "through the function: runner at $LAMBDA_URL (pid $WARM_PID), function pid $FN_PID"
run_load "$OUT/lambda" "$KEY" "function=$FN_PID" "runner=$WARM_PID" "mock=$MOCK_PID" "dynalite=$DDB_PID"
run_fg "${PYB[@]}" warm-health "$LAMBDA_URL" 200 >"$OUT/lambda/warm-health.json"
[[ $(function_pid "$WARM_PID") == "$FN_PID" ]] || die "the function instance changed during the warm phases"
FN_HWM=$(awk '/^VmHWM/ {print $2}' /proc/"$FN_PID"/status)
log "function VmHWM ${FN_HWM} kB"
cp "$WORK/warm.err" "$OUT/warm-runner.log"
stop_and_forget "$WARM_PID"

fi

# ---- 4b. one hot key on several instances (issue 14): DynamoDB round trips per request by kind
# of key (CONDUIT_COUNT_TRIPS=1: each instance logs its counts after every request; the last
# line of each instance is summed), then the hot-key load: 503s, achieved rate, latency.
start_runner HOT_PID HOT_URL hot "$HOT_INSTANCES" "$FUNCTION" CONDUIT_COUNT_TRIPS=1
hot_key() { # JSON : the secret of a new key made from JSON
  curl -sS --max-time 10 -X POST "$HOT_URL/admin/keys" -H "Authorization: Bearer $MASTER_KEY" \
    -H 'Content-Type: application/json' -d "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("key",""))'
}
trips_sum() { # the summed last trip line of every instance so far
  python3 - "$WORK/hot.out" "$WORK/hot.err" <<'PY'
import json, sys
last = {}
for f in sys.argv[1:]:
    for line in open(f, errors="replace"):
        i = line.find('{"conduit_store_trips"')
        if i >= 0:
            try:
                t = json.loads(line[i:])["conduit_store_trips"]
            except ValueError:
                continue
            last[t["instance"]] = t
total = {"requests": sum(t["requests"] for t in last.values()), "trips": {}}
for t in last.values():
    for k, v in t["trips"].items():
        total["trips"][k] = total["trips"].get(k, 0) + v
print(json.dumps(total))
PY
}
: >"$OUT/trips.tsv"
trips_n=$((TRIPS_RATE * TRIPS_DURATION))
for scenario in \
  "no limits|{\"name\":\"trips-plain\"}" \
  "generous limits|{\"name\":\"trips-generous\",\"limits\":{\"rpm\":100000000,\"tpm\":1000000000},\"budget\":{\"max_usd\":1000000,\"period\":\"total\"}}" \
  "near its limit|{\"name\":\"trips-near\",\"limits\":{\"rpm\":$((trips_n + 10))}}"; do
  label=${scenario%%|*}
  tkey=$(hot_key "${scenario#*|}")
  [[ -n $tkey ]] || die "could not create the $label key"
  sleep 1
  before=$(trips_sum)
  log "store round trips: $label ($TRIPS_RATE req/s, ${TRIPS_DURATION}s, $HOT_INSTANCES instances)"
  run_fg "$BIN_DIR/bench-load" rate --url "$HOT_URL/v1/chat/completions" --header "Authorization: Bearer $tkey" \
    --body-file "$OUT/lambda/body.json" --warmup 0 --rate "$TRIPS_RATE" --duration-s "$TRIPS_DURATION" \
    --connections "$HOT_INSTANCES" --out "$OUT/trips-${label// /-}.json" >/dev/null
  sleep 1
  printf '%s\t%s\t%s\n' "$label" "$before" "$(trips_sum)" >>"$OUT/trips.tsv"
done
HKEY=$(hot_key '{"name":"hot","limits":{"rpm":100000000,"tpm":1000000000},"budget":{"max_usd":1000000,"period":"total"}}')
log "hot key: $HOT_RATE req/s offered for ${HOT_DURATION}s, $HOT_INSTANCES instances"
sleep 1
before=$(trips_sum)
run_fg "$BIN_DIR/bench-load" rate --url "$HOT_URL/v1/chat/completions" --header "Authorization: Bearer $HKEY" \
  --body-file "$OUT/lambda/body.json" --warmup 0 --rate "$HOT_RATE" --duration-s "$HOT_DURATION" \
  --connections 64 --out "$OUT/hot.json" >/dev/null || log "hot-key load failed"
sleep 1
printf '%s\t%s\t%s\n' "hot key, generous limits ($HOT_RATE req/s)" "$before" "$(trips_sum)" >>"$OUT/trips.tsv"
cp "$WORK/hot.err" "$OUT/hot-runner.log" 2>/dev/null || true
stop_and_forget "$HOT_PID"

declare -A COLD_FAIL=()
if [[ $TRIPS_ONLY != 1 ]]; then
# ---- 5. cold starts: per run, a fresh runner whose first instance is kept busy by a slow
# ---- stream; the measured request makes the runner start a second, fresh instance for it.
for kind in $COLD_KINDS; do
  case $kind in
    health-runner) deployed=0 method=GET path=/health body= ;;
    health) deployed=1 method=GET path=/health body= ;;
    chat) deployed=1 method=POST path=/v1/chat/completions body=$OUT/lambda/body.json ;;
    *) die "unknown cold-start kind '$kind' (known: health-runner health chat)" ;;
  esac
  log "cold starts: $kind, $COLD_RUNS runs"
  : >"$OUT/cold/$kind.jsonl"
  fails=0
  for ((run = 1; run <= COLD_RUNS; run++)); do
    spawn_log="$WORK/spawn-$kind-$run.log"
    : >"$spawn_log"
    start_runner CPID CURL "cold-$kind-$run" 2 "$WORK/wrap.sh" \
      BENCH_SPAWN_LOG="$spawn_log" BENCH_FUNCTION="$FUNCTION" BENCH_DEPLOYED="$deployed"
    if ! run_fg "${PYB[@]}" cold "$CURL" "$KEY" "$WORK/hold-body.json" "$method" "$path" "$body" "$spawn_log" \
      >>"$OUT/cold/$kind.jsonl" 2>"$WORK/cold-$kind-$run.py.err"; then
      fails=$((fails + 1))
      log "  run $run failed: $(tail -n 3 "$WORK/cold-$kind-$run.py.err")"
      cat "$WORK/cold-$kind-$run.err" >>"$OUT/cold/$kind-failures.log" 2>/dev/null || true
    fi
    stop_and_forget "$CPID"
    ((fails < 3)) || {
      log "  3 failures: giving up on $kind"
      break
    }
  done
  COLD_FAIL[$kind]=$fails
done

fi

# ---- report
stop_and_forget "$LOAD_PID"
OTHERS=$("${PYB[@]}" others-summary "$OUT/others.json")
log "other processes during the run: $OTHERS"
[[ $OTHERS == [0-9]%* ]] || log "warning: other processes were busy (>= 10% of a core) during the run; results are noisy"
export R_DATE R_CPUS R_KERNEL R_BIN_MTIME R_BUSY R_LOADAVG R_BUSY_PROCS R_BIN_BYTES R_ZIP_BYTES R_ZIP_TOOL \
  R_ZIP_TARGET_MIB R_COLD_TARGET_MS R_COLD_KINDS R_COLD_RUNS R_RATE R_RATE_DURATION R_RATE_CONNS R_WARMUP \
  R_TTFE_REQUESTS R_STREAM_CHUNKS R_STREAM_DELAY_MS R_STRICT R_FN_HWM_KIB R_OTHERS
R_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
R_CPUS="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))"
R_KERNEL=$(uname -sr)
R_OTHERS=$OTHERS R_FN_HWM_KIB=${FN_HWM:-} R_BIN_MTIME=$BIN_MTIME R_BUSY=$BUSY_START R_LOADAVG=$LOADAVG R_BUSY_PROCS=$BUSY_PROCS
R_BIN_BYTES=$BIN_BYTES R_ZIP_BYTES=$ZIP_BYTES R_ZIP_TOOL=$ZIP_TOOL R_ZIP_TARGET_MIB=$ZIP_TARGET_MIB
R_COLD_TARGET_MS=$COLD_TARGET_MS R_COLD_KINDS=$COLD_KINDS R_COLD_RUNS=$COLD_RUNS
R_RATE=$RATE R_RATE_DURATION=$RATE_DURATION R_RATE_CONNS=$RATE_CONNS R_WARMUP=$WARMUP
R_TTFE_REQUESTS=$TTFE_REQUESTS R_STREAM_CHUNKS=$STREAM_CHUNKS R_STREAM_DELAY_MS=$STREAM_DELAY_MS R_STRICT=$STRICT
for kind in "${!COLD_FAIL[@]}"; do export "R_COLD_FAIL_${kind//-/_}=${COLD_FAIL[$kind]}"; done
status=0
if [[ $TRIPS_ONLY == 1 ]]; then
  echo "Round trips only (BENCH_TRIPS_ONLY=1), load average $LOADAVG at the start, $R_DATE." >"$OUT/table.md"
else
  "${PYB[@]}" report "$OUT" >"$OUT/table.md" || status=$?
fi
python3 - "$OUT" "$HOT_RATE" "$HOT_DURATION" "$HOT_INSTANCES" >>"$OUT/table.md" <<'PY' || true
import json, sys
out, rate, dur, inst = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
kinds = ["hash_read", "key_read", "admit_write", "settle_write", "carry_write", "usage_write", "key_touch"]
L = ["", f"Store round trips per request ({inst} instances, DynamoDB calls counted in the function; before the "
     "upstream call: hash and key reads, the admission write (a lease's grant, with the carry it takes along); "
     "after it, before the invocation ends: settlement, carry (returned leases, settled leased requests) and usage writes). Target for the first two rows: ≤ 0.1 before the upstream call.", "",
     "| key | requests | " + " | ".join(kinds) + " | before upstream | total |",
     "|---|---:|" + "|".join("---:" for _ in kinds) + "|---:|---:|"]
for line in open(f"{out}/trips.tsv"):
    label, a, b = line.rstrip("\n").split("\t")
    x, y = json.loads(a), json.loads(b)
    n = y["requests"] - x["requests"]
    per = {k: (y["trips"].get(k, 0) - x["trips"].get(k, 0)) / max(1, n) for k in kinds}
    before = per["hash_read"] + per["key_read"] + per["admit_write"]
    L.append(f"| {label} | {n} | " + " | ".join(f"{per[k]:.3f}" for k in kinds) + f" | {before:.3f} | {sum(per.values()):.3f} |")
try:
    h = json.load(open(f"{out}/hot.json"))
    lat = h.get("latency", {})
    L += ["", f"Hot key (generous limits), {rate} req/s offered for {dur} s over {inst} instances: "
          f"{h.get('requests_ok')} of {h.get('scheduled')} answered 200; errors {h.get('error_count')} {h.get('errors')}; "
          f"late starts {h.get('late_starts')}; achieved {h.get('throughput_rps', 0):.1f} req/s in {h.get('elapsed_s', 0):.1f} s; "
          f"latency p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms."]
except (OSError, ValueError) as e:
    L.append(f"Hot key: no result ({e}).")
print("\n".join(L))
PY
mkdir -p "$TARGET_DIR/bench"
cp "$OUT/table.md" "$TARGET_DIR/bench/lambda-latest.md"
cat "$OUT/table.md"
log "table also in $TARGET_DIR/bench/lambda-latest.md; raw JSON in $OUT"
exit "$status"
