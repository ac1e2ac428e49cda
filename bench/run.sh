#!/usr/bin/env bash
# Conduit benchmark driver: mock upstream, direct-to-mock vs through Conduit.
# Usage: bash bench/run.sh        (settings through BENCH_* variables, see bench/README.md)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_TAG=bench
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=${BENCH_BIN_DIR:-$TARGET_DIR/release}
CONDUIT_BIN=${CONDUIT_BIN:-$TARGET_DIR/release/conduit}
OUT=${BENCH_OUT:-$TARGET_DIR/bench/$(date -u +%Y%m%dT%H%M%SZ)}

SAT_CONNS=${BENCH_SAT_CONNS:-16}          # closed-loop connections at saturation
SAT_DURATION=${BENCH_SAT_DURATION:-10}    # seconds
RATE=${BENCH_RATE:-200}                   # req/s of the fixed-rate phase
RATE_DURATION=${BENCH_RATE_DURATION:-10}  # seconds
RATE_CONNS=${BENCH_RATE_CONNS:-32}        # connection pool of the fixed-rate phase
TTFE_REQUESTS=${BENCH_TTFE_REQUESTS:-200} # sequential streaming requests
WARMUP=${BENCH_WARMUP:-500}               # unmeasured requests before each phase
STREAM_DELAY_MS=${BENCH_STREAM_DELAY_MS:-1}
STREAM_CHUNKS=${BENCH_STREAM_CHUNKS:-10}
STRICT=${BENCH_STRICT:-0}                 # 1: exit 1 when a target is missed
STORE=${BENCH_STORE:-sqlite}              # sqlite | postgres (a throwaway local PostgreSQL)

# Scenarios through Conduit: name -> body of POST /admin/keys for the key used.
# To add one, add an entry here and its name to BENCH_SCENARIOS' default below.
# `limited` sets rpm/rpd/tpm and a budget far above what the run can reach, so it
# measures the cost of the checks, not rejections.
declare -A KEY_BODY=(
  [plain]='{"name":"bench-plain"}'
  [limited]='{"name":"bench-limited","limits":{"rpm":100000000,"rpd":1000000000,"tpm":1000000000},"budget":{"max_usd":1000000,"period":"total"}}'
)
SCENARIOS=${BENCH_SCENARIOS-plain}

UPSTREAM_KEY="bench-upstream-key"
MASTER_KEY="bench-master-$$-$RANDOM$RANDOM"
ALIAS="bench-model"
UPSTREAM_MODEL="gpt-4o-mini"

# ---- build
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "building (release): conduit-server, conduit-bench"
  (cd "$ROOT" && cargo build --release -p conduit-server -p conduit-bench) >&2
fi
for b in bench-mock bench-load bench-report; do
  [[ -x $BIN_DIR/$b ]] || die "missing $BIN_DIR/$b (build with: cargo build --release -p conduit-bench)"
done
if [[ -n $SCENARIOS ]]; then
  [[ -x $CONDUIT_BIN ]] || die "missing gateway binary $CONDUIT_BIN"
fi
command -v curl >/dev/null || die "curl is required"

BUSY_START=$(cpu_busy_pct)
((BUSY_START < 20)) || log "warning: the machine is ${BUSY_START}% busy before the run; results will be noisy"
mkdir -p "$OUT/direct"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/conduit-bench.XXXXXX")
trap 'cleanup; rm -rf "$WORK"' EXIT
log "results in $OUT"

# ---- request bodies
chat_body() { # MODEL
  printf '{"model":"%s","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}' "$1"
}
stream_body() { # MODEL
  printf '{"model":"%s","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32,"stream":true}' "$1"
}

# run_phases OUT_DIR BASE_URL(/v1) AUTH_TOKEN MODEL PID_SPEC...
run_phases() {
  local dir=$1 base=$2 token=$3 model=$4
  shift 4
  local pids=() spec
  for spec in "$@"; do pids+=(--pid "$spec"); done
  mkdir -p "$dir"
  chat_body "$model" >"$dir/body.json"
  stream_body "$model" >"$dir/stream-body.json"
  local common=(--url "$base/chat/completions" --header "Authorization: Bearer $token" --warmup "$WARMUP" "${pids[@]}")

  log "  saturation: $SAT_CONNS connections, ${SAT_DURATION}s"
  run_fg "$BIN_DIR/bench-load" saturate "${common[@]}" --body-file "$dir/body.json" \
    --connections "$SAT_CONNS" --duration-s "$SAT_DURATION" --out "$dir/saturate.json" >/dev/null
  log "  fixed rate: $RATE req/s, ${RATE_DURATION}s"
  run_fg "$BIN_DIR/bench-load" rate "${common[@]}" --body-file "$dir/body.json" \
    --rate "$RATE" --duration-s "$RATE_DURATION" --connections "$RATE_CONNS" --out "$dir/rate.json" >/dev/null
  log "  streaming: $TTFE_REQUESTS sequential requests"
  run_fg "$BIN_DIR/bench-load" ttfe "${common[@]}" --body-file "$dir/stream-body.json" \
    --requests "$TTFE_REQUESTS" --warmup 20 --out "$dir/ttfe.json" >/dev/null
}

# ---- mock upstream (shared by every run)
start_bg MOCK_PID "$WORK/mock.out" "$WORK/mock.err" "$BIN_DIR/bench-mock" \
  --listen 127.0.0.1:0 --require-key "$UPSTREAM_KEY" \
  --stream-delay-ms "$STREAM_DELAY_MS" --chunks "$STREAM_CHUNKS"
MOCK_URL=$(wait_url "$MOCK_PID" "$WORK/mock.out" "listening on " "$WORK/mock.err")
log "mock upstream at $MOCK_URL (pid $MOCK_PID)"

log "direct to the mock"
run_phases "$OUT/direct" "$MOCK_URL/v1" "$UPSTREAM_KEY" "$UPSTREAM_MODEL" "mock=$MOCK_PID"

# ---- the store: SQLite (a file per scenario) or one throwaway PostgreSQL
STORE_LINE=""
if [[ $STORE == postgres ]]; then
  start_postgres   # bench/lib.sh: sets PG_URL, stopped by cleanup
  STORE_LINE='store = "postgres"'
  export BENCH_PG_URL=$PG_URL
fi

# ---- one gateway per scenario (fresh database, fresh process => its own peak RSS)
run_scenario() {
  local name=$1 body=${KEY_BODY[$1]:-}
  [[ -n $body ]] || die "unknown scenario '$name' (known: ${!KEY_BODY[*]})"
  local sdir="$WORK/$name"
  mkdir -p "$sdir"
  cat >"$sdir/conduit.toml" <<EOF
[server]
listen = "127.0.0.1:0"
database = "$sdir/conduit.db"
$STORE_LINE
postgres_url_env = "BENCH_PG_URL"

[providers.openai]
kind = "openai"
base_url = "$MOCK_URL/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[models."$ALIAS"]
deployments = [{ provider = "openai", model = "$UPSTREAM_MODEL" }]
EOF
  local gw_pid gw_url code key
  start_bg gw_pid "$sdir/conduit.out" "$OUT/$name-conduit.log" \
    env CONDUIT_MASTER_KEY="$MASTER_KEY" BENCH_UPSTREAM_KEY="$UPSTREAM_KEY" \
    "$CONDUIT_BIN" serve --config "$sdir/conduit.toml" --listen 127.0.0.1:0 --database "$sdir/conduit.db"
  gw_url=$(wait_url "$gw_pid" "$sdir/conduit.out" "conduit listening on " "$OUT/$name-conduit.log")
  log "scenario '$name': Conduit at $gw_url (pid $gw_pid)"

  code=$(curl -sS -o "$sdir/key.json" -w '%{http_code}' -X POST "$gw_url/admin/keys" \
    -H "Authorization: Bearer $MASTER_KEY" -H 'Content-Type: application/json' -d "$body") ||
    die "POST /admin/keys failed"
  [[ $code == 200 || $code == 201 ]] || die "POST /admin/keys answered $code: $(cat "$sdir/key.json")"
  key=$("$BIN_DIR/bench-report" get "$sdir/key.json" /key) || die "no key in $(cat "$sdir/key.json")"

  chat_body "$ALIAS" >"$sdir/probe.json"
  code=$(curl -sS -o "$sdir/probe.out" -w '%{http_code}' -X POST "$gw_url/v1/chat/completions" \
    -H "Authorization: Bearer $key" -H 'Content-Type: application/json' --data-binary "@$sdir/probe.json") ||
    die "probe request failed"
  [[ $code == 200 ]] || die "probe through Conduit answered $code: $(cat "$sdir/probe.out")"

  log "through Conduit ($name)"
  run_phases "$OUT/$name" "$gw_url/v1" "$key" "$ALIAS" "conduit=$gw_pid" "mock=$MOCK_PID"
  stop_proc "$gw_pid"
  forget_pid "$gw_pid"
}

for s in $SCENARIOS; do run_scenario "$s"; done

# ---- report
{
  echo "## Conduit benchmark"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) · $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')) · $(uname -sr)"
  echo "Load generator, mock upstream and gateway share the machine (no CPU pinning);" \
    "CPU busy before the run (other processes, 1 s sample): ${BUSY_START}%."
  echo "Non-streaming chat; saturation: $SAT_CONNS keep-alive connections for ${SAT_DURATION}s;" \
    "fixed rate: $RATE req/s open loop for ${RATE_DURATION}s; streaming: $TTFE_REQUESTS sequential" \
    "requests, $STREAM_CHUNKS chunks, ${STREAM_DELAY_MS} ms between events."
  echo
} >"$OUT/table.md"
status=0
if [[ -z $SCENARIOS ]]; then
  "$BIN_DIR/bench-report" table --direct "$OUT/direct" --conduit "$OUT/none" --title "direct only" >>"$OUT/table.md" || true
fi
for s in $SCENARIOS; do
  strict=()
  [[ $STRICT == 1 ]] && strict=(--strict)
  "$BIN_DIR/bench-report" table --direct "$OUT/direct" --conduit "$OUT/$s" \
    --title "scenario: $s (key: ${KEY_BODY[$s]})" "${strict[@]}" >>"$OUT/table.md" || status=1
  echo >>"$OUT/table.md"
done
mkdir -p "$TARGET_DIR/bench"
cp "$OUT/table.md" "$TARGET_DIR/bench/latest.md"
cat "$OUT/table.md"
log "table also in $TARGET_DIR/bench/latest.md; raw JSON in $OUT"
exit "$status"
