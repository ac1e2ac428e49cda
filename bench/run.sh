#!/usr/bin/env bash
# Conduit benchmark driver: mock upstream, direct-to-mock vs through Conduit.
# Usage: bash bench/run.sh [--quick]   (settings through BENCH_* variables, see bench/README.md)
# The floor: nginx as a plain reverse proxy to the same mock, measured in the same run;
# every Conduit figure is also printed as a ratio to it.
set -euo pipefail

QUICK=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    -h | --help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown argument $arg (--quick)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_TAG=bench
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=${BENCH_BIN_DIR:-$TARGET_DIR/release}
CONDUIT_BIN=${CONDUIT_BIN:-$TARGET_DIR/release/conduit}
OUT=${BENCH_OUT:-$TARGET_DIR/bench/$(date -u +%Y%m%dT%H%M%SZ)}

# --quick: short phases (a smoke run of the whole script, not numbers to quote).
if ((QUICK)); then Q_DUR=2 Q_TTFE=50 Q_WARM=100; else Q_DUR=10 Q_TTFE=200 Q_WARM=500; fi
SAT_CONNS=${BENCH_SAT_CONNS:-16}          # closed-loop connections at saturation
SAT_DURATION=${BENCH_SAT_DURATION:-$Q_DUR}    # seconds
RATE=${BENCH_RATE:-200}                   # req/s of the fixed-rate phase
RATE_DURATION=${BENCH_RATE_DURATION:-$Q_DUR}  # seconds
RATE_CONNS=${BENCH_RATE_CONNS:-32}        # connection pool of the fixed-rate phase
TTFE_REQUESTS=${BENCH_TTFE_REQUESTS:-$Q_TTFE} # sequential streaming requests
WARMUP=${BENCH_WARMUP:-$Q_WARM}           # unmeasured requests before each phase
EMB_DURATION=${BENCH_EMB_DURATION:-$Q_DUR}    # embeddings at saturation, seconds
EMB_DIMS=${BENCH_EMB_DIMS:-1536}          # dimensions of the mock's embedding
STREAMS_CONNS=${BENCH_STREAMS_CONNS:-32}  # concurrent streams (closed loop)
STREAMS_DURATION=${BENCH_STREAMS_DURATION:-$Q_DUR} # seconds
FLOOR=${BENCH_FLOOR:-1}                   # 0: no nginx floor
STACK=${BENCH_STACK:-1}                   # 0: no bare hyper proxy (the HTTP stack alone)
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
SCENARIOS=${BENCH_SCENARIOS-plain limited}

UPSTREAM_KEY="bench-upstream-key"
MASTER_KEY="bench-master-$$-$RANDOM$RANDOM"
ALIAS="bench-model"
UPSTREAM_MODEL="gpt-4o-mini"
UPSTREAM_EMB_MODEL="text-embedding-3-small"

# ---- build
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "building (release): conduit-server, conduit-bench"
  (cd "$ROOT" && cargo build --release -p conduit-server -p conduit-bench) >&2
fi
for b in bench-mock bench-load bench-report bench-hyper-proxy; do
  [[ -x $BIN_DIR/$b ]] || die "missing $BIN_DIR/$b (build with: cargo build --release -p conduit-bench)"
done
if [[ -n $SCENARIOS ]]; then
  [[ -x $CONDUIT_BIN ]] || die "missing gateway binary $CONDUIT_BIN"
fi
command -v curl >/dev/null || die "curl is required"
NGINX_BIN=${BENCH_NGINX:-/usr/sbin/nginx}
if ((FLOOR)) && [[ ! -x $NGINX_BIN ]]; then
  # Debian's nginx-light, as the tests install postgresql: as root, with apt-get.
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing nginx-light (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >&2 ||
      { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >&2; } ||
      die "cannot install nginx-light"
  else
    die "nginx is missing: apt-get install nginx-light (or BENCH_FLOOR=0 to run without the floor)"
  fi
fi

BUSY_START=$(cpu_busy_pct)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
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
embeddings_body() { # MODEL
  printf '{"model":"%s","input":"The food was delicious and the waiter was friendly."}' "$1"
}

# run_phases OUT_DIR BASE_URL(/v1) AUTH_TOKEN MODEL EMB_MODEL FAST_BASE_URL FAST_MODEL PID_SPEC...
# FAST_BASE_URL and FAST_MODEL reach the mock's unpaced streams (its `/fast/` paths),
# for the concurrent-streams phase.
run_phases() {
  local dir=$1 base=$2 token=$3 model=$4 emb_model=$5 fast=$6 fast_model=$7
  shift 7
  local pids=() spec
  for spec in "$@"; do pids+=(--pid "$spec"); done
  mkdir -p "$dir"
  chat_body "$model" >"$dir/body.json"
  stream_body "$model" >"$dir/stream-body.json"
  embeddings_body "$emb_model" >"$dir/embeddings-body.json"
  stream_body "$fast_model" >"$dir/streams-body.json"
  local auth=(--header "Authorization: Bearer $token")
  local common=(--url "$base/chat/completions" "${auth[@]}" --warmup "$WARMUP" "${pids[@]}")

  log "  saturation: $SAT_CONNS connections, ${SAT_DURATION}s"
  run_fg "$BIN_DIR/bench-load" saturate "${common[@]}" --body-file "$dir/body.json" \
    --connections "$SAT_CONNS" --duration-s "$SAT_DURATION" --out "$dir/saturate.json" >/dev/null
  log "  fixed rate: $RATE req/s, ${RATE_DURATION}s"
  run_fg "$BIN_DIR/bench-load" rate "${common[@]}" --body-file "$dir/body.json" \
    --rate "$RATE" --duration-s "$RATE_DURATION" --connections "$RATE_CONNS" --out "$dir/rate.json" >/dev/null
  log "  streaming: $TTFE_REQUESTS sequential requests"
  run_fg "$BIN_DIR/bench-load" ttfe "${common[@]}" --body-file "$dir/stream-body.json" \
    --requests "$TTFE_REQUESTS" --warmup 20 --out "$dir/ttfe.json" >/dev/null
  log "  embeddings ($EMB_DIMS dimensions): $SAT_CONNS connections, ${EMB_DURATION}s"
  run_fg "$BIN_DIR/bench-load" saturate --url "$base/embeddings" "${auth[@]}" --warmup "$WARMUP" "${pids[@]}" \
    --body-file "$dir/embeddings-body.json" --connections "$SAT_CONNS" --duration-s "$EMB_DURATION" \
    --out "$dir/embeddings.json" >/dev/null
  log "  concurrent streams: $STREAMS_CONNS connections, ${STREAMS_DURATION}s"
  run_fg "$BIN_DIR/bench-load" streams --url "$fast/chat/completions" "${auth[@]}" --warmup "$WARMUP" "${pids[@]}" \
    --body-file "$dir/streams-body.json" --connections "$STREAMS_CONNS" --duration-s "$STREAMS_DURATION" \
    --out "$dir/streams.json" >/dev/null
}

# ---- mock upstream (shared by every run)
start_bg MOCK_PID "$WORK/mock.out" "$WORK/mock.err" "$BIN_DIR/bench-mock" \
  --listen 127.0.0.1:0 --require-key "$UPSTREAM_KEY" \
  --stream-delay-ms "$STREAM_DELAY_MS" --chunks "$STREAM_CHUNKS" --embedding-dims "$EMB_DIMS"
MOCK_URL=$(wait_url "$MOCK_PID" "$WORK/mock.out" "listening on " "$WORK/mock.err")
log "mock upstream at $MOCK_URL (pid $MOCK_PID)"

log "direct to the mock"
run_phases "$OUT/direct" "$MOCK_URL/v1" "$UPSTREAM_KEY" "$UPSTREAM_MODEL" "$UPSTREAM_EMB_MODEL" \
  "$MOCK_URL/fast/v1" "$UPSTREAM_MODEL" "mock=$MOCK_PID"

# ---- the floor: nginx as a plain reverse proxy to the same mock (keep-alive upstream
# connections, no response buffering), its own prefix and temp dirs, in the foreground
# (`daemon off`) of its own session, stopped with its process group.
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
if ((FLOOR)); then
  NGX=$WORK/nginx
  mkdir -p "$NGX/logs" "$NGX/tmp/body" "$NGX/tmp/proxy" "$NGX/tmp/fastcgi" "$NGX/tmp/uwsgi" "$NGX/tmp/scgi"
  NGX_USER=""
  if [[ $(id -u) == 0 ]]; then
    # The workers of a root master run as nobody: they need the temp dirs.
    chmod 755 "$WORK" "$NGX"
    chown -R nobody "$NGX/tmp"
    NGX_USER="user nobody $(id -gn nobody 2>/dev/null || echo nogroup);"
  fi
  NGX_PORT=$(free_port)
  cat >"$NGX/nginx.conf" <<NGINX_CONF
$NGX_USER
worker_processes auto;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $NGX/tmp/body;
  proxy_temp_path $NGX/tmp/proxy;
  fastcgi_temp_path $NGX/tmp/fastcgi;
  uwsgi_temp_path $NGX/tmp/uwsgi;
  scgi_temp_path $NGX/tmp/scgi;
  keepalive_requests 10000000;
  upstream mock {
    server ${MOCK_URL#http://};
    keepalive 64;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX_CONF
  start_bg NGX_PID "$NGX/out" "$NGX/err" "$NGINX_BIN" -p "$NGX" -c "$NGX/nginx.conf" -g 'daemon off;'
  NGX_URL="http://127.0.0.1:$NGX_PORT"
  for ((i = 0; ; i++)); do
    curl -s -o /dev/null "$NGX_URL/health" && break
    kill -0 "$NGX_PID" 2>/dev/null && ((i < 250)) ||
      { cat "$NGX/err" "$NGX/logs/error.log" >&2 2>/dev/null || true; die "nginx did not start"; }
    sleep 0.02
  done
  log "floor: $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //') at $NGX_URL (process group $NGX_PID)"
  log "through the floor (nginx)"
  run_phases "$OUT/floor" "$NGX_URL/v1" "$UPSTREAM_KEY" "$UPSTREAM_MODEL" "$UPSTREAM_EMB_MODEL" \
    "$NGX_URL/fast/v1" "$UPSTREAM_MODEL" "nginx=group:$NGX_PID" "mock=$MOCK_PID"
  stop_proc "$NGX_PID"
  forget_pid "$NGX_PID"
fi

# ---- the stack: bench-hyper-proxy, the hyper server and client connections Conduit's server is
# built on, laid out as it is (a runtime per core, upstream connections per thread), with nothing
# of the gateway: how much of Conduit's cost over the floor is the stack itself.
if ((STACK)); then
  start_bg HP_PID "$WORK/hyper.out" "$WORK/hyper.err" "$BIN_DIR/bench-hyper-proxy" --upstream "$MOCK_URL"
  HP_URL=$(wait_url "$HP_PID" "$WORK/hyper.out" "listening on " "$WORK/hyper.err")
  log "through the stack alone (bench-hyper-proxy at $HP_URL, pid $HP_PID)"
  run_phases "$OUT/stack" "$HP_URL/v1" "$UPSTREAM_KEY" "$UPSTREAM_MODEL" "$UPSTREAM_EMB_MODEL" \
    "$HP_URL/fast/v1" "$UPSTREAM_MODEL" "hyper=$HP_PID" "mock=$MOCK_PID"
  stop_proc "$HP_PID"
  forget_pid "$HP_PID"
fi

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

[providers.openai-fast]
kind = "openai"
base_url = "$MOCK_URL/fast/v1"
api_key_env = "BENCH_UPSTREAM_KEY"

[models."$ALIAS"]
deployments = [{ provider = "openai", model = "$UPSTREAM_MODEL" }]

[models."$ALIAS-fast"]
deployments = [{ provider = "openai-fast", model = "$UPSTREAM_MODEL" }]

[models."$ALIAS-embeddings"]
deployments = [{ provider = "openai", model = "$UPSTREAM_EMB_MODEL" }]
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
  run_phases "$OUT/$name" "$gw_url/v1" "$key" "$ALIAS" "$ALIAS-embeddings" \
    "$gw_url/v1" "$ALIAS-fast" "conduit=$gw_pid" "mock=$MOCK_PID"
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
    "CPU busy before the run (other processes, 1 s sample): ${BUSY_START}%; load average $LOAD_START."
  echo "Non-streaming chat; saturation: $SAT_CONNS keep-alive connections for ${SAT_DURATION}s;" \
    "fixed rate: $RATE req/s open loop for ${RATE_DURATION}s; streaming: $TTFE_REQUESTS sequential" \
    "requests, $STREAM_CHUNKS chunks, ${STREAM_DELAY_MS} ms between events; embeddings ($EMB_DIMS" \
    "dimensions, float) at saturation for ${EMB_DURATION}s; concurrent streams: $STREAMS_CONNS" \
    "connections for ${STREAMS_DURATION}s, no delay between events."
  if ((FLOOR)); then
    echo "Floor: $("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //') as a reverse proxy to the same mock" \
      "(worker_processes auto, keep-alive upstream connections, proxy_buffering off)."
  fi
  ((QUICK)) && echo "**--quick run: short phases, not figures to quote.**"
  echo
} >"$OUT/table.md"
status=0
floor=()
((FLOOR)) && floor=(--floor "$OUT/floor")
if [[ -z $SCENARIOS ]]; then
  "$BIN_DIR/bench-report" table --direct "$OUT/direct" "${floor[@]}" --conduit "$OUT/none" --title "direct only" >>"$OUT/table.md" || true
fi
if ((STACK)); then
  # For reference, not a target: the targets are Conduit's.
  "$BIN_DIR/bench-report" table --direct "$OUT/direct" "${floor[@]}" --conduit "$OUT/stack" --gateway-proc hyper \
    --title "the HTTP stack alone: bench-hyper-proxy (hyper's server and client, no gateway; for reference, the targets are Conduit's)" \
    >>"$OUT/table.md" || true
  echo >>"$OUT/table.md"
fi
for s in $SCENARIOS; do
  strict=()
  [[ $STRICT == 1 ]] && strict=(--strict)
  baseline=()
  # Every other scenario is also compared with `plain` (CPU per request).
  [[ $s != plain && " $SCENARIOS " == *" plain "* ]] && baseline=(--baseline "$OUT/plain" --baseline-name plain)
  "$BIN_DIR/bench-report" table --direct "$OUT/direct" "${floor[@]}" --conduit "$OUT/$s" "${baseline[@]}" \
    --title "scenario: $s (key: ${KEY_BODY[$s]})" "${strict[@]}" >>"$OUT/table.md" || status=1
  echo >>"$OUT/table.md"
done
mkdir -p "$TARGET_DIR/bench"
cp "$OUT/table.md" "$TARGET_DIR/bench/latest.md"
cat "$OUT/table.md"
log "table also in $TARGET_DIR/bench/latest.md; raw JSON in $OUT"
exit "$status"
