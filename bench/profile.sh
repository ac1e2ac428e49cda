#!/usr/bin/env bash
# Where the native server's time goes, in figures that do not depend on the machine's
# load: instructions per request under callgrind (valgrind), for a fixed number of
# chat, embeddings and streamed requests through the release server, and allocations
# per request (bench-alloc, in process). With `--flame`, also a flame graph of the
# saturated server (perf sampling cpu-clock, folded and drawn by inferno).
#
# Usage: bash bench/profile.sh [--flame SVG] [--requests N]
# Output: a markdown table on stdout and in target/bench/profile-latest.md; the callgrind
# dumps in target/bench/profile-<timestamp>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_TAG=profile
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=${BENCH_BIN_DIR:-$TARGET_DIR/release}
CONDUIT_BIN=${CONDUIT_BIN:-$TARGET_DIR/release/conduit}
REQUESTS=2000
FLAME=""
while (($#)); do
  case $1 in
    --flame) FLAME=$2; shift 2 ;;
    --requests) REQUESTS=$2; shift 2 ;;
    *) die "unknown argument $1 (--flame SVG, --requests N)" ;;
  esac
done
command -v valgrind >/dev/null || die "valgrind is required (apt-get install valgrind)"
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "building (release): conduit-server, conduit-bench"
  (cd "$ROOT" && cargo build --release -p conduit-server -p conduit-bench) >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/conduit-profile.XXXXXX")
# The callgrind dumps are kept here (callgrind_annotate FILE shows where the instructions go).
OUT_DIR=${BENCH_OUT:-$TARGET_DIR/bench/profile-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT_DIR"
trap 'cleanup; rm -rf "$WORK"' EXIT
UPSTREAM_KEY=profile-upstream-key
MASTER_KEY="profile-master-$$-$RANDOM"

start_bg MOCK_PID "$WORK/mock.out" "$WORK/mock.err" "$BIN_DIR/bench-mock" --listen 127.0.0.1:0 \
  --require-key "$UPSTREAM_KEY" --chunks 10 --embedding-dims 1536
MOCK_URL=$(wait_url "$MOCK_PID" "$WORK/mock.out" "listening on " "$WORK/mock.err")

cat >"$WORK/conduit.toml" <<EOF
[server]
listen = "127.0.0.1:0"
database = "$WORK/conduit.db"

[providers.openai]
kind = "openai"
base_url = "$MOCK_URL/v1"
api_key_env = "PROFILE_UPSTREAM_KEY"

[models.chat]
deployments = [{ provider = "openai", model = "gpt-4o-mini" }]

[models.embeddings]
deployments = [{ provider = "openai", model = "text-embedding-3-small" }]
EOF

# start_gateway PREFIX... : Conduit (under PREFIX, e.g. valgrind); sets GW_PID, GW_URL, KEY
start_gateway() {
  start_bg GW_PID "$WORK/gw.out" "$WORK/gw.err" env CONDUIT_MASTER_KEY="$MASTER_KEY" \
    PROFILE_UPSTREAM_KEY="$UPSTREAM_KEY" "$@" "$CONDUIT_BIN" serve --config "$WORK/conduit.toml"
  GW_URL=$(wait_url "$GW_PID" "$WORK/gw.out" "conduit listening on " "$WORK/gw.err" 3000)
  KEY=$(curl -sS -X POST "$GW_URL/admin/keys" -H "Authorization: Bearer $MASTER_KEY" \
    -H 'Content-Type: application/json' -d '{"name":"profile"}' | "$BIN_DIR/bench-report" get /dev/stdin /key)
  # The `limited` scenario's key (bench/run.sh): limits and a budget the run cannot reach.
  LIMITED_KEY=$(curl -sS -X POST "$GW_URL/admin/keys" -H "Authorization: Bearer $MASTER_KEY" \
    -H 'Content-Type: application/json' \
    -d '{"name":"profile-limited","limits":{"rpm":100000000,"rpd":1000000000,"tpm":1000000000},"budget":{"max_usd":1000000,"period":"total"}}' |
    "$BIN_DIR/bench-report" get /dev/stdin /key)
}

chat='{"model":"chat","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32}'
stream='{"model":"chat","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32,"stream":true}'
emb='{"model":"embeddings","input":"The food was delicious and the waiter was friendly."}'

# ---- callgrind: instructions per request
start_gateway valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" --dump-instr=no
VG_PID=$GW_PID
log "callgrind: Conduit at $GW_URL (pid $VG_PID), $REQUESTS requests per case"
table="| case (through the release server under callgrind) | instructions / request |
|---|---:|
"
measure() { # NAME SLUG PATH BODY MODE [KEY]
  local name=$1 slug=$2 path=$3 body=$4 mode=$5 key=${6:-$KEY}
  local load=("$BIN_DIR/bench-load" "$mode" --url "$GW_URL$path" --header "Authorization: Bearer $key" --body "$body" --timeout-ms 60000)
  if [[ $mode == saturate ]]; then
    run_fg "${load[@]}" --connections 4 --warmup 50 --max-requests 10 --duration-s 60 >/dev/null
  else
    run_fg "${load[@]}" --requests 5 --warmup 20 >/dev/null
  fi
  callgrind_control -z "$VG_PID" >/dev/null
  if [[ $mode == saturate ]]; then
    run_fg "${load[@]}" --connections 4 --warmup 0 --max-requests "$REQUESTS" --duration-s 600 >"$WORK/$name.json"
  else
    run_fg "${load[@]}" --requests "$REQUESTS" --warmup 0 >"$WORK/$name.json"
  fi
  local file ir ok dumps=("$WORK"/callgrind."$VG_PID".*) now
  local n=${#dumps[@]}
  callgrind_control -d "$VG_PID" >/dev/null
  # The dump is written asynchronously: wait for the new file.
  for ((i = 0; i < 100; i++)); do
    now=("$WORK"/callgrind."$VG_PID".*)
    ((${#now[@]} > n)) && break
    sleep 0.1
  done
  sleep 0.3
  file=$(ls -t "$WORK"/callgrind."$VG_PID".* | head -1)
  cp "$file" "$OUT_DIR/callgrind.$slug"
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$file")
  ok=$("$BIN_DIR/bench-report" get "$WORK/$name.json" /requests_ok)
  table+="| $name | $((ir / ok)) |
"
  log "  $name: $((ir / ok)) instructions per request ($ok requests)"
}
measure "chat" chat /v1/chat/completions "$chat" saturate
measure "chat, limited key (limits and a budget)" chat-limited /v1/chat/completions "$chat" saturate "$LIMITED_KEY"
measure "embeddings (1536 floats)" embeddings /v1/embeddings "$emb" saturate
measure "stream (13 events)" stream /v1/chat/completions "$stream" ttfe
stop_proc "$VG_PID"
forget_pid "$VG_PID"

# ---- allocations per request
log "allocations per request (bench-alloc)"
alloc=$("$BIN_DIR/bench-alloc" --requests 1000)

# ---- flame graph of the saturated server
if [[ -n $FLAME ]]; then
  command -v perf >/dev/null || die "perf is required for --flame"
  command -v inferno-collapse-perf >/dev/null || die "inferno is required for --flame (cargo install inferno)"
  start_gateway
  log "flame graph: saturating $GW_URL (pid $GW_PID) for 10 s under perf"
  run_fg "$BIN_DIR/bench-load" saturate --url "$GW_URL/v1/chat/completions" --header "Authorization: Bearer $KEY" \
    --body "$chat" --connections 16 --duration-s 12 --warmup 500 >/dev/null &
  LOAD_PID=$!
  sleep 2
  perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$GW_PID" -o "$WORK/perf.data" -- sleep 8 2>/dev/null >&2
  # The load only: a bare `wait` would also wait for the mock and the gateway.
  wait "$LOAD_PID" || true
  perf script -i "$WORK/perf.data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph \
    --title "conduit serve, saturated non-streaming chat ($(git -C "$ROOT" rev-parse --short HEAD))" >"$FLAME"
  log "flame graph in $FLAME"
  stop_proc "$GW_PID"
  forget_pid "$GW_PID"
fi

mkdir -p "$TARGET_DIR/bench"
{
  echo "## Where the time goes ($(git -C "$ROOT" rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  printf '%s' "$table"
  echo
  echo "Allocations per request (bench-alloc, in process, counting allocator):"
  echo
  printf '%s\n' "$alloc"
} | tee "$TARGET_DIR/bench/profile-latest.md"
