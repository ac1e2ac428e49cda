#!/usr/bin/env bash
# Cloudflare Worker benchmark: bundle size, and the Worker served locally by `wrangler dev`
# (workerd) against the same calls made directly to the mock upstream; optionally Portkey's
# gateway under the same wrangler as a second workerd-based gateway.
# Usage: bash bench/worker.sh        (settings through BENCH_* variables, see bench/README.md)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_TAG=bench-worker
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=${BENCH_BIN_DIR:-$TARGET_DIR/release}
OUT=${BENCH_OUT:-$TARGET_DIR/bench/worker-$(date -u +%Y%m%dT%H%M%SZ)}
WRANGLER=$ROOT/node_modules/.bin/wrangler
BUNDLE_DIR=${BENCH_BUNDLE_DIR:-$ROOT/platforms/cloudflare/build}  # another build (a before/after pair)

RATE=${BENCH_RATE:-100}                   # req/s of the fixed-rate phase
RATE_DURATION=${BENCH_RATE_DURATION:-10}  # seconds
RATE_CONNS=${BENCH_RATE_CONNS:-32}        # connection pool of the fixed-rate phase
TTFE_REQUESTS=${BENCH_TTFE_REQUESTS:-200} # sequential streaming requests
WARMUP=${BENCH_WARMUP:-300}               # unmeasured requests before the fixed-rate phase
STREAM_DELAY_MS=${BENCH_STREAM_DELAY_MS:-1}
STREAM_CHUNKS=${BENCH_STREAM_CHUNKS:-10}
PASSTHROUGH=${BENCH_PASSTHROUGH:-1}       # 1: also measure a minimal JS pass-through Worker
PORTKEY=${BENCH_PORTKEY:-1}               # 1: try Portkey's gateway (npm) under the same wrangler
PORTKEY_VERSION=${BENCH_PORTKEY_VERSION:-1.15.2}
PORTKEY_DIR=${BENCH_PORTKEY_DIR:-${TMPDIR:-/tmp}/conduit-bench-portkey-$PORTKEY_VERSION}  # outside the repo
INSPECTOR=${BENCH_WORKER_INSPECTOR:-0}    # 1: keep wrangler's DevTools inspector attached (default: off)
STRICT=${BENCH_STRICT:-0}                 # 1: exit 1 when a target is missed
TRIPS_RATE=${BENCH_TRIPS_RATE:-100}       # req/s of each store-round-trip phase (one key each)
TRIPS_DURATION=${BENCH_TRIPS_DURATION:-3} # seconds per store-round-trip phase
# The key of the latency phases: no limits by default; e.g. generous limits and a budget (admitted
# from leases): BENCH_KEY_JSON='{"name":"bench","limits":{"rpm":100000000},"budget":{"max_usd":1000000,"period":"total"}}'
KEY_JSON=${BENCH_KEY_JSON:-'{"name":"bench"}'}
# Conduit's `[gateway] request_log` (all | failures | off): which requests write the JSON log line
# (under wrangler dev, relaying each line costs wrangler's node process CPU on the shared cores).
REQUEST_LOG=${BENCH_REQUEST_LOG:-all}
GZIP_TARGET_KIB=1024

UPSTREAM_KEY="bench-upstream-key"
MASTER_KEY="bench-master-$$-$RANDOM$RANDOM"
ALIAS="bench"
UPSTREAM_MODEL="gpt-4o-mini"

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# ---- prerequisites and build
command -v node >/dev/null || die "node is required (wrangler runs on it)"
command -v curl >/dev/null || die "curl is required"
[[ -x $WRANGLER ]] || die "missing $WRANGLER: run npm ci in $ROOT"
if [[ ${BENCH_SKIP_BUILD:-0} != 1 && -z ${BENCH_BUNDLE_DIR:-} ]]; then
  log "building: conduit-bench (release), the Worker (sh scripts/build-worker.sh)"
  (cd "$ROOT" && cargo build --release -p conduit-bench) >&2
  (cd "$ROOT" && sh scripts/build-worker.sh) >&2 || die "worker build failed (BENCH_SKIP_BUILD=1 benchmarks the bundle already built)"
fi
for b in bench-mock bench-load; do
  [[ -x $BIN_DIR/$b ]] || die "missing $BIN_DIR/$b (build with: cargo build --release -p conduit-bench)"
done
[[ -f $BUNDLE_DIR/index.js && -f $BUNDLE_DIR/index_bg.wasm ]] || die "missing Worker bundle in $BUNDLE_DIR (sh scripts/build-worker.sh)"

BUSY_START=$(cpu_busy_pct)
((BUSY_START < 20)) || log "warning: the machine is ${BUSY_START}% busy before the run; results will be noisy"

mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/conduit-bench-worker.XXXXXX")
trap 'cleanup; rm -rf "$WORK"' EXIT
log "results in $OUT"

export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false WRANGLER_HIDE_BANNER=true NO_COLOR=1 FORCE_COLOR=0
# wrangler dev always attaches its DevTools inspector proxy to the Worker's workerd; it then
# forwards every runtime event (Network.* for each subrequest) to wrangler's node process,
# which cost >3 ms of CPU per request and put p99 at ~70 ms instead of ~7 ms in a trial with
# Portkey at 100 req/s. Production has no
# such thing. wrangler 4.86 has no CLI switch for it; it turns it off when it believes it
# runs in a VS Code debug terminal (VSCODE_INSPECTOR_OPTIONS set). Without NODE_OPTIONS
# naming VS Code's bootloader, nothing else reads the variable.
if [[ $INSPECTOR != 1 ]]; then export VSCODE_INSPECTOR_OPTIONS=bench-no-inspector; fi

# ---- 1. bundle size
WASM=$BUNDLE_DIR/index_bg.wasm
WASM_RAW=$(wc -c <"$WASM")
WASM_GZ=$(gzip -9 -c "$WASM" | wc -c)
JS_RAW=$(wc -c <"$BUNDLE_DIR/index.js")
BUNDLE_MTIME=$(date -u -r "$WASM" +%Y-%m-%dT%H:%M:%SZ)

# conduit_wrangler_toml DIR : the root wrangler.toml with `main` at the built bundle and no
# [build] (as tests/blackbox/targets.py does), so neither dev nor the dry run rebuilds.
conduit_wrangler_toml() {
  sed -e "s|^main = \".*\"$|main = \"$BUNDLE_DIR/index.js\"|" "$ROOT/wrangler.toml" |
    awk '/^\[build\]$/ {skip = 1; next} /^\[/ {skip = 0} !skip' >"$1/wrangler.toml"
  grep -q "^main = \"$BUNDLE_DIR/index.js\"$" "$1/wrangler.toml" || die "could not point main at the bundle in $1/wrangler.toml"
}

# dry_run NAME CONFIG : wrangler's own size report, "Total Upload: X KiB / gzip: Y KiB"
dry_run() {
  local name=$1 config=$2 line
  rm -rf "$WORK/dist-$name"
  if ! (cd "$(dirname "$config")" && timeout 120 "$WRANGLER" deploy --dry-run --config "$config" \
        --outdir "$WORK/dist-$name") >"$OUT/$name-dry-run.log" 2>&1; then
    log "wrangler deploy --dry-run failed for $name (see $OUT/$name-dry-run.log)"
    return 0
  fi
  line=$(grep -m1 -o 'Total Upload: .*' "$OUT/$name-dry-run.log" || true)
  printf '%s\n' "$line" >"$OUT/$name-upload.txt"
}

mkdir -p "$WORK/conduit"
conduit_wrangler_toml "$WORK/conduit"
log "bundle: index_bg.wasm $WASM_RAW B (gzip -9: $WASM_GZ B); wrangler deploy --dry-run"
dry_run conduit "$WORK/conduit/wrangler.toml"

# ---- request bodies
chat_body() { # MODEL
  printf '{"model":"%s","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}' "$1"
}
stream_body() { # MODEL
  printf '{"model":"%s","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32,"stream":true}' "$1"
}

# run_phases DIR URL MODEL HEADER_ARGS_NAME PID_SPEC... : fixed rate, then streaming
run_phases() {
  local dir=$1 url=$2 model=$3 hname=$4
  shift 4
  local -n hdrs=$hname
  local pids=() spec
  for spec in "$@"; do pids+=(--pid "$spec"); done
  mkdir -p "$dir"
  chat_body "$model" >"$dir/body.json"
  stream_body "$model" >"$dir/stream-body.json"
  log "  fixed rate: $RATE req/s, ${RATE_DURATION}s (warm-up $WARMUP)"
  run_fg "$BIN_DIR/bench-load" rate --url "$url" "${hdrs[@]}" "${pids[@]}" --body-file "$dir/body.json" \
    --warmup "$WARMUP" --rate "$RATE" --duration-s "$RATE_DURATION" --connections "$RATE_CONNS" \
    --out "$dir/rate.json" >/dev/null
  log "  streaming: $TTFE_REQUESTS sequential requests"
  run_fg "$BIN_DIR/bench-load" ttfe --url "$url" "${hdrs[@]}" "${pids[@]}" --body-file "$dir/stream-body.json" \
    --requests "$TTFE_REQUESTS" --warmup 20 --out "$dir/ttfe.json" >/dev/null
}

# ---- wrangler dev
# start_wrangler NAME DIR : serves DIR/wrangler.toml; sets WR_PID (process group), WR_URL, WR_NODE
# (wrangler's node), WR_PROXY / WR_USER (the workerd running wrangler's proxy Worker on the
# public port / the one running the Worker).
start_wrangler() {
  local name=$1 dir=$2 port iport i code
  port=$(free_port)
  iport=$(free_port)
  start_bg WR_PID "$OUT/$name-wrangler.log" "$OUT/$name-wrangler.err" \
    env WRANGLER_LOG_PATH="$WORK/$name-logs" "$WRANGLER" dev --config "$dir/wrangler.toml" --local \
    --ip 127.0.0.1 --port "$port" --inspector-port "$iport" --show-interactive-dev-session=false \
    --persist-to "$WORK/$name-state" --log-level warn
  # --log-level warn also stops the per-request log lines (each one a loopback call from workerd
  # to node), so readiness is probed instead of read from "Ready on": wrangler's proxy Worker
  # holds requests until the Worker is up; any HTTP answer means it is.
  WR_URL="http://127.0.0.1:$port"
  for ((i = 0; i < 240; i++)); do
    kill -0 "$WR_PID" 2>/dev/null || { tail -n 30 "$OUT/$name-wrangler.log" "$OUT/$name-wrangler.err" >&2; die "wrangler dev ($name) exited"; }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 20 "$WR_URL/" 2>/dev/null || true)
    [[ $code != 000 && -n $code ]] && break
    sleep 0.5
  done
  [[ $code != 000 && -n $code ]] || die "wrangler dev ($name) not ready within 120 s"
  WR_PROXY="" WR_USER="" WR_NODE=""
  local p args
  WR_NODE=$(pgrep -g "$WR_PID" -f 'wrangler-dist/cli.js' | head -n1 || true)  # the node doing the work
  [[ -n $WR_NODE ]] || WR_NODE=$WR_PID
  for p in $(pgrep -g "$WR_PID" -x workerd || true); do
    args=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || true)
    if [[ $args == *"--socket-addr=entry=127.0.0.1:$port "* ]]; then WR_PROXY=$p; else WR_USER=$p; fi
  done
  [[ -n $WR_PROXY && -n $WR_USER ]] || die "could not find the two workerd processes of wrangler dev ($name)"
  log "$name: wrangler dev at $WR_URL (group $WR_PID; workerd: Worker $WR_USER, proxy $WR_PROXY)"
}
stop_wrangler() {
  stop_proc "$WR_PID"
  forget_pid "$WR_PID"
}

# probe URL HEADER_ARGS_NAME BODY_FILE OUT : one request, must answer 200
probe() {
  local url=$1 hname=$2 body=$3 out=$4 code
  local -n hp=$hname
  local curl_h=() i
  for ((i = 1; i < ${#hp[@]}; i += 2)); do curl_h+=(-H "${hp[$i]}"); done
  code=$(curl -sS -o "$out" -w '%{http_code}' --max-time 30 -X POST "$url" "${curl_h[@]}" \
    -H 'Content-Type: application/json' --data-binary "@$body") || return 1
  [[ $code == 200 ]] || { log "probe answered $code: $(head -c 400 "$out")"; return 1; }
}

# ---- mock upstream (shared by every run)
start_bg MOCK_PID "$WORK/mock.out" "$WORK/mock.err" "$BIN_DIR/bench-mock" \
  --listen 127.0.0.1:0 --require-key "$UPSTREAM_KEY" \
  --stream-delay-ms "$STREAM_DELAY_MS" --chunks "$STREAM_CHUNKS"
MOCK_URL=$(wait_url "$MOCK_PID" "$WORK/mock.out" "listening on " "$WORK/mock.err")
log "mock upstream at $MOCK_URL (pid $MOCK_PID)"

log "direct to the mock"
# shellcheck disable=SC2034  # used through local -n
H_DIRECT=(--header "Authorization: Bearer $UPSTREAM_KEY")
run_phases "$OUT/direct" "$MOCK_URL/v1/chat/completions" "$UPSTREAM_MODEL" H_DIRECT "mock=$MOCK_PID"

# ---- a: minimal pass-through Worker (the floor of wrangler dev + workerd on this machine)
if [[ $PASSTHROUGH == 1 ]]; then
  d=$WORK/passthrough
  mkdir -p "$d"
  cat >"$d/worker.mjs" <<'EOF'
// Forwards the request to UPSTREAM unchanged and returns the answer as is.
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    return fetch(env.UPSTREAM + url.pathname + url.search, {
      method: request.method, headers: request.headers, body: request.body,
    });
  },
};
EOF
  cat >"$d/wrangler.toml" <<EOF
name = "bench-passthrough"
main = "worker.mjs"
compatibility_date = "2026-04-20"
send_metrics = false
[vars]
UPSTREAM = "$MOCK_URL"
EOF
  start_wrangler passthrough "$d"
  # shellcheck disable=SC2034
  H_PASS=(--header "Authorization: Bearer $UPSTREAM_KEY")
  chat_body "$UPSTREAM_MODEL" >"$d/probe.json"
  probe "$WR_URL/v1/chat/completions" H_PASS "$d/probe.json" "$d/probe.out" || die "probe through the pass-through Worker failed"
  log "through the pass-through Worker"
  run_phases "$OUT/passthrough" "$WR_URL/v1/chat/completions" "$UPSTREAM_MODEL" H_PASS \
    "worker=$WR_USER" "proxy=$WR_PROXY" "wrangler=$WR_NODE" "mock=$MOCK_PID"
  stop_wrangler
fi

# ---- b: Conduit's Worker
d=$WORK/conduit
cat >"$d/conduit.toml" <<EOF
[providers.openai]
kind = "openai"
base_url = "$MOCK_URL/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[models."$ALIAS"]
deployments = [{ provider = "openai", model = "$UPSTREAM_MODEL" }]

[gateway]
request_log = "$REQUEST_LOG"
EOF
{
  printf "CONDUIT_CONFIG='%s'\n" "$(cat "$d/conduit.toml")"
  printf "CONDUIT_MASTER_KEY='%s'\n" "$MASTER_KEY"
  printf "BENCH_UPSTREAM_KEY='%s'\n" "$UPSTREAM_KEY"
  # x-conduit-store-trips on every answer: the isolate's store round trips so far (read below)
  printf "CONDUIT_COUNT_TRIPS='1'\n"
} >"$d/.dev.vars"
start_wrangler conduit "$d"
code=$(curl -sS -o "$d/key.json" -w '%{http_code}' --max-time 30 -X POST "$WR_URL/admin/keys" \
  -H "Authorization: Bearer $MASTER_KEY" -H 'Content-Type: application/json' -d "$KEY_JSON") ||
  die "POST /admin/keys failed"
[[ $code == 200 || $code == 201 ]] || die "POST /admin/keys answered $code: $(cat "$d/key.json")"
KEY=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).key||"")' "$d/key.json")
[[ -n $KEY ]] || die "no key in $(cat "$d/key.json")"
# shellcheck disable=SC2034
H_CONDUIT=(--header "Authorization: Bearer $KEY")
chat_body "$ALIAS" >"$d/probe.json"
probe "$WR_URL/v1/chat/completions" H_CONDUIT "$d/probe.json" "$d/probe.out" || die "probe through Conduit's Worker failed"
log "through Conduit's Worker"
run_phases "$OUT/conduit" "$WR_URL/v1/chat/completions" "$ALIAS" H_CONDUIT \
  "worker=$WR_USER" "proxy=$WR_PROXY" "wrangler=$WR_NODE" "mock=$MOCK_PID"

# ---- store round trips per request, by kind of key (issue 14): the x-conduit-store-trips
# header (CONDUIT_COUNT_TRIPS=1: the isolate's round trips so far; wrangler dev runs one
# isolate) read before and after a short fixed-rate phase of one key.
trips_of() { # KEY : the x-conduit-store-trips JSON of one request with KEY
  curl -sS -D - -o /dev/null --max-time 30 -X POST "$WR_URL/v1/chat/completions" -H "Authorization: Bearer $1" \
    -H 'Content-Type: application/json' --data-binary "@$d/probe.json" | tr -d '\r' |
    sed -n 's/^x-conduit-store-trips: //Ip'
}
trips_key() { # JSON : the secret of a new key made from JSON
  curl -sS --max-time 30 -X POST "$WR_URL/admin/keys" -H "Authorization: Bearer $MASTER_KEY" \
    -H 'Content-Type: application/json' -d "$1" |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).key||""))'
}
trips_n=$((TRIPS_RATE * TRIPS_DURATION))
: >"$OUT/trips.tsv"
for scenario in \
  "no limits|{\"name\":\"trips-plain\"}" \
  "generous limits|{\"name\":\"trips-generous\",\"limits\":{\"rpm\":100000000,\"tpm\":1000000000},\"budget\":{\"max_usd\":1000000,\"period\":\"total\"}}" \
  "near its limit|{\"name\":\"trips-near\",\"limits\":{\"rpm\":$((trips_n + 10))}}"; do
  label=${scenario%%|*}
  tkey=$(trips_key "${scenario#*|}")
  [[ -n $tkey ]] || die "could not create the $label key"
  trips_of "$tkey" >/dev/null
  sleep 0.5
  before=$(trips_of "$tkey")
  # shellcheck disable=SC2034
  H_TRIPS=(--header "Authorization: Bearer $tkey")
  log "store round trips: $label ($TRIPS_RATE req/s, ${TRIPS_DURATION}s)"
  run_fg "$BIN_DIR/bench-load" rate --url "$WR_URL/v1/chat/completions" "${H_TRIPS[@]}" --body-file "$d/probe.json" \
    --warmup 0 --rate "$TRIPS_RATE" --duration-s "$TRIPS_DURATION" --connections "$RATE_CONNS" \
    --out "$OUT/trips-${label// /-}.json" >/dev/null
  sleep 1 # the last answers' wait_until (settlement, usage records)
  after=$(trips_of "$tkey")
  printf '%s\t%s\t%s\n' "$label" "$before" "$after" >>"$OUT/trips.tsv"
done
stop_wrangler

# ---- c: Portkey's gateway (npm @portkey-ai/gateway) under the same wrangler
# The npm package ships only its Node build (build/start-server.js: the Hono app, then a Node
# HTTP server started at the end). Portkey's Worker entry (src/index.ts, `wrangler dev
# src/index.ts` in their repo, compatibility flag nodejs_compat) is that same app with
# `export default app`. So the Worker module is the bundle cut right before the Node server
# start, plus `export default <app>`; wrangler bundles it with esbuild as usual.
PORTKEY_STATUS="skipped (BENCH_PORTKEY=0)"
portkey_prepare() { # prints nothing; returns 1 with PORTKEY_STATUS set on failure
  local pkg=$PORTKEY_DIR/node_modules/@portkey-ai/gateway
  if [[ ! -f $pkg/build/start-server.js ]] || ! grep -q "\"version\": \"$PORTKEY_VERSION\"" "$pkg/package.json"; then
    command -v npm >/dev/null || { PORTKEY_STATUS="skipped: npm not found"; return 1; }
    log "installing @portkey-ai/gateway@$PORTKEY_VERSION into $PORTKEY_DIR (npm registry)"
    mkdir -p "$PORTKEY_DIR"
    [[ -f $PORTKEY_DIR/package.json ]] || echo '{"name":"conduit-bench-portkey","private":true}' >"$PORTKEY_DIR/package.json"
    if ! (cd "$PORTKEY_DIR" && timeout 300 npm install --no-audit --no-fund --ignore-scripts \
          "@portkey-ai/gateway@$PORTKEY_VERSION") >"$OUT/portkey-npm.log" 2>&1; then
      PORTKEY_STATUS="skipped: npm install @portkey-ai/gateway@$PORTKEY_VERSION failed (see portkey-npm.log)"
      return 1
    fi
  fi
  if ! node - "$pkg/build/start-server.js" "$PORTKEY_DIR/worker.mjs" >"$OUT/portkey-derive.log" 2>&1 <<'EOF'; then
const fs = require("fs");
const [src, out] = process.argv.slice(2);
let s = fs.readFileSync(src, "utf8").replace(/^#!.*\n/, "");
const app = /([A-Za-z_$][\w$]*)\.post\("\/v1\/chat\/completions"/.exec(s);
const cut = s.search(/const [A-Za-z_$][\w$]*=process\.argv\.slice\(2\)/);
if (!app || cut < 0) { console.error("layout of build/start-server.js not recognised"); process.exit(1); }
fs.writeFileSync(out, s.slice(0, cut) + `\nexport default ${app[1]};\n`);
console.log(`app=${app[1]} cut at ${cut} of ${s.length}`);
EOF
    PORTKEY_STATUS="skipped: could not derive a Worker module from build/start-server.js (see portkey-derive.log)"
    return 1
  fi
  cat >"$PORTKEY_DIR/wrangler.toml" <<'EOF'
name = "portkey-bench"
main = "worker.mjs"
compatibility_date = "2026-04-20"
compatibility_flags = ["nodejs_compat"]
send_metrics = false
EOF
}
if [[ $PORTKEY == 1 ]]; then
  if portkey_prepare; then
    dry_run portkey "$PORTKEY_DIR/wrangler.toml"
    start_wrangler portkey "$PORTKEY_DIR"
    # Portkey routes by headers: provider, and a custom base URL (127.0.0.1 is a trusted custom
    # host by default); the client's Authorization is passed to the provider.
    # shellcheck disable=SC2034
    H_PORTKEY=(--header "x-portkey-provider: openai" --header "x-portkey-custom-host: $MOCK_URL/v1"
      --header "Authorization: Bearer $UPSTREAM_KEY")
    chat_body "$UPSTREAM_MODEL" >"$WORK/portkey-probe.json"
    if probe "$WR_URL/v1/chat/completions" H_PORTKEY "$WORK/portkey-probe.json" "$WORK/portkey-probe.out"; then
      log "through Portkey's gateway"
      run_phases "$OUT/portkey" "$WR_URL/v1/chat/completions" "$UPSTREAM_MODEL" H_PORTKEY \
        "worker=$WR_USER" "proxy=$WR_PROXY" "wrangler=$WR_NODE" "mock=$MOCK_PID"
      PORTKEY_STATUS="ran"
    else
      PORTKEY_STATUS="skipped: a probe request through Portkey did not answer 200"
    fi
    stop_wrangler
  fi
  [[ $PORTKEY_STATUS == ran ]] || log "Portkey $PORTKEY_STATUS"
fi

stop_proc "$MOCK_PID"
forget_pid "$MOCK_PID"

# ---- report (node: it is there for wrangler anyway, and reads the JSON)
status=0
R_HEADER="$(date -u +%Y-%m-%dT%H:%M:%SZ) · $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')) · $(uname -sr) · wrangler $("$WRANGLER" --version 2>/dev/null | tail -n1) · node $(node --version)" \
R_OUT=$OUT R_PASSTHROUGH=$PASSTHROUGH R_PORTKEY_STATUS=$PORTKEY_STATUS R_PORTKEY_VERSION=$PORTKEY_VERSION \
R_WASM_RAW=$WASM_RAW R_WASM_GZ=$WASM_GZ R_JS_RAW=$JS_RAW R_GZIP_TARGET_KIB=$GZIP_TARGET_KIB R_BUNDLE_MTIME=$BUNDLE_MTIME \
R_RATE=$RATE R_RATE_DURATION=$RATE_DURATION R_RATE_CONNS=$RATE_CONNS R_WARMUP=$WARMUP R_TTFE_REQUESTS=$TTFE_REQUESTS \
R_STREAM_CHUNKS=$STREAM_CHUNKS R_STREAM_DELAY_MS=$STREAM_DELAY_MS R_INSPECTOR=$INSPECTOR R_BUSY=$BUSY_START R_STRICT=$STRICT \
  node - >"$OUT/table.md" <<'EOF' || status=$?
const fs = require("fs"), path = require("path");
const E = process.env, out = E.R_OUT, RATE = +E.R_RATE, DUR = +E.R_RATE_DURATION;
const load = (n, f) => { try { return JSON.parse(fs.readFileSync(path.join(out, n, f), "utf8")); } catch { return null; } };
const text = (f) => { try { return fs.readFileSync(path.join(out, f), "utf8").trim(); } catch { return ""; } };
const portkeyRan = E.R_PORTKEY_STATUS === "ran";
const cols = ["direct", ...(E.R_PASSTHROUGH === "1" ? ["passthrough"] : []), "conduit", "portkey"];
const head = { direct: "direct", passthrough: "pass-through Worker", conduit: "Conduit Worker",
  portkey: portkeyRan ? `Portkey ${E.R_PORTKEY_VERSION}` : "Portkey (skipped)" };
const R = {};
for (const c of cols) R[c] = { rate: load(c, "rate.json"), ttfe: load(c, "ttfe.json") };
const num = (o, p) => p.split("/").reduce((a, k) => (a == null ? a : a[k]), o);
const f1 = (x) => (x == null || !isFinite(x) ? null : x.toFixed(Math.abs(x) < 10 ? 2 : 1));
const kib = (b) => (b / 1024).toFixed(1) + " KiB";
const upload = (n) => {
  const m = /Total Upload: ([\d.]+ KiB) \/ gzip: ([\d.]+ KiB)/.exec(text(n + "-upload.txt"));
  return m ? { raw: m[1], gz: m[2], gzKiB: parseFloat(m[2]) } : null;
};
const up = { conduit: upload("conduit"), portkey: upload("portkey") };
const rows = [];
let missed = false;
// row(metric, value of a column, target, check of Conduit's value: true / false / null = n/a)
const row = (metric, fn, target = "–", check = null) => {
  let ok = "–";
  if (check) {
    const r = check();
    if (r != null) ok = r ? "✅" : "❌";
    if (r === false) missed = true;
  }
  rows.push([metric, ...cols.map((c) => fn(c) ?? "–"), target, ok]);
};
const ms = (x) => (x == null ? null : f1(x) + " ms");
const plus = (x) => (x == null ? null : (x >= 0 ? "+" : "") + f1(x) + " ms");
const lat = (src, p) => (c) => ms(num(R[c][src], p));
const added = (src, p) => (c) => {
  const d = num(R.direct[src], p), v = num(R[c][src], p);
  return c === "direct" || d == null || v == null ? null : plus(v - d);
};
const wasmRaw = +E.R_WASM_RAW, wasmGz = +E.R_WASM_GZ, gzTarget = +E.R_GZIP_TARGET_KIB;
row("bundle: index_bg.wasm, raw / gzip -9", (c) => (c === "conduit" ? `${kib(wasmRaw)} / ${kib(wasmGz)}` : null),
  "gzip ≤ 1 MiB", () => wasmGz <= gzTarget * 1024);
row("bundle: wrangler deploy --dry-run, Total Upload / gzip", (c) => (up[c] ? `${up[c].raw} / ${up[c].gz}` : null),
  "gzip ≤ 1 MiB", () => (up.conduit ? up.conduit.gzKiB <= gzTarget : null));
row(`latency p50 @ ${RATE} req/s`, lat("rate", "latency/p50_ms"));
row(`latency p99 @ ${RATE} req/s`, lat("rate", "latency/p99_ms"));
row("added latency p50 (vs direct)", added("rate", "latency/p50_ms"));
row("added latency p99 (vs direct)", added("rate", "latency/p99_ms"));
row("late starts (rate not kept up) / errors",
  (c) => (R[c].rate ? `${num(R[c].rate, "late_starts")} / ${num(R[c].rate, "error_count")}` : null), "0 / 0",
  () => (R.conduit.rate ? num(R.conduit.rate, "late_starts") === 0 && num(R.conduit.rate, "error_count") === 0 : null));
const cpu = (proc) => (c) => {
  const v = num(R[c].rate, `procs/${proc}/cpu_us_per_request`);
  return v == null ? null : `${Math.round(v)} µs`;
};
row("CPU per request: workerd running the Worker", cpu("worker"));
row("CPU per request: workerd running wrangler's dev proxy", cpu("proxy"));
row("CPU per request: wrangler (node)", cpu("wrangler"));
row("CPU per request: mock upstream", cpu("mock"));
row("peak RSS: workerd running the Worker", (c) => {
  const v = num(R[c].rate, "procs/worker/vm_hwm_kib");
  return v == null ? null : `${(v / 1024).toFixed(0)} MiB`;
});
row("streaming: time to first event p50", lat("ttfe", "ttfe/p50_ms"));
row("streaming: time to first event p99", lat("ttfe", "ttfe/p99_ms"));
row("streaming: added time to first event p50", added("ttfe", "ttfe/p50_ms"));
row("streaming: time to end of stream p50", lat("ttfe", "stream_total/p50_ms"));
row("streaming errors", (c) => (R[c].ttfe ? String(num(R[c].ttfe, "error_count")) : null), "0",
  () => (R.conduit.ttfe ? num(R.conduit.ttfe, "error_count") === 0 : null));
const L = [];
L.push("## Conduit on Cloudflare Workers: local benchmark (wrangler dev)", "");
L.push(`${E.R_HEADER}.`);
L.push("Load generator, mock upstream, wrangler and its two workerd processes share the machine (no CPU pinning); " +
  `CPU busy before the run (other processes, 1 s sample): ${E.R_BUSY}%.`);
L.push(`Worker bundle built ${E.R_BUNDLE_MTIME}. Fixed rate: ${RATE} req/s open loop for ${DUR}s over ${E.R_RATE_CONNS} ` +
  `keep-alive connections, after ${E.R_WARMUP} warm-up requests; streaming: ${E.R_TTFE_REQUESTS} sequential requests, ` +
  `${E.R_STREAM_CHUNKS} chunks, ${E.R_STREAM_DELAY_MS} ms between events. wrangler's DevTools inspector: ` +
  (E.R_INSPECTOR === "1" ? "attached." : "off."), "");
L.push(`| metric | ${cols.map((c) => head[c]).join(" | ")} | target | ok? |`);
L.push(`|---|${cols.map(() => "---:").join("|")}|---|---|`);
for (const r of rows) L.push(`| ${r.join(" | ")} |`);
L.push("");
L.push(`CPU per request: utime+stime of the process (all threads) over the fixed-rate phase, divided by the requests ` +
  `completed (10 ms clock ticks: ±${Math.round(10000 / Math.max(1, RATE * DUR))} µs per request). ` +
  `"workerd running the Worker" holds, besides the Worker's own code, workerd's HTTP handling in and out, Miniflare's ` +
  `entry Worker (a JS wrapper around every request), the Worker's Durable Objects and KV (same process) and V8's ` +
  `garbage collection; the pass-through column is that floor for a Worker that only forwards the request. ` +
  `wrangler's dev proxy (a second workerd in front of the Worker) and node are local-development overhead ` +
  `that a deployed Worker does not have; the latency columns include the proxy hop.`);
L.push(portkeyRan
  ? `Portkey: @portkey-ai/gateway ${E.R_PORTKEY_VERSION} from npm; its package ships only the Node build, cut into a ` +
    `Worker module that exports its Hono app (what its own src/index.ts does), flag nodejs_compat; routed with ` +
    `x-portkey-provider: openai and x-portkey-custom-host pointing at the mock.`
  : `Portkey: ${E.R_PORTKEY_STATUS}.`);
console.log(L.join("\n"));
process.exit(missed && E.R_STRICT === "1" ? 1 : 0);
EOF
# store round trips per request, from the before/after snapshots
printf '\nConduit key of the latency phases: `%s`; `[gateway] request_log = "%s"`.\n' "$KEY_JSON" "$REQUEST_LOG" >>"$OUT/table.md"
node - "$OUT/trips.tsv" >>"$OUT/table.md" <<'EOF' || true
const rows = require("fs").readFileSync(process.argv[2], "utf8").trim().split("\n").map((l) => l.split("\t"));
const kinds = ["kv_read", "admit", "settle", "usage", "other"];
const out = ["", "Store round trips per request (Conduit Worker, `x-conduit-store-trips`; before the upstream " +
  "call: KV reads and the Durable Object's admission; after the response, under `wait_until`: settlement and " +
  "usage record calls). Target for the first two rows: ≤ 0.1 in total before the upstream call.", "",
  `| key | requests | ${kinds.join(" | ")} | before upstream | total |`, `|---|---:|${kinds.map(() => "---:").join("|")}|---:|---:|`];
for (const [label, a, b] of rows) {
  try {
    const x = JSON.parse(a), y = JSON.parse(b), n = y.requests - x.requests;
    const per = (k) => (y.trips[k] - x.trips[k]) / n;
    const before = per("kv_read") + per("admit"), total = kinds.reduce((s, k) => s + per(k), 0);
    out.push(`| ${label} | ${n} | ${kinds.map((k) => per(k).toFixed(3)).join(" | ")} | ${before.toFixed(3)} | ${total.toFixed(3)} |`);
  } catch (e) { out.push(`| ${label} | (no x-conduit-store-trips header: ${e.message}) |`); }
}
console.log(out.join("\n"));
EOF
mkdir -p "$TARGET_DIR/bench"
cp "$OUT/table.md" "$TARGET_DIR/bench/worker-latest.md"
cat "$OUT/table.md"
[[ $PORTKEY_STATUS == ran || $PORTKEY != 1 ]] || echo "Portkey was $PORTKEY_STATUS"
log "table also in $TARGET_DIR/bench/worker-latest.md; raw JSON in $OUT"
exit "$status"
