#!/usr/bin/env bash
# Runs Conduit's fuzz targets (fuzz/, cargo-fuzz + libFuzzer) one after the
# other, each for a set time, and reports executions, coverage and findings.
#
# Usage: bash bench/fuzz.sh [--time SECONDS] [--targets "sse eventstream ..."]
#                           [--sanitizer none|address] [--seed-only] [--no-build] [--strict]
#   --time SECONDS  per target (default 60; FUZZ_TIME overrides the default)
#   --targets LIST  a subset (default: every target in fuzz/Cargo.toml)
#   --sanitizer S   none (default: Conduit's core has no `unsafe`, and without
#                   AddressSanitizer the targets run about 5x faster) or address
#   --seed-only     build the seed corpora (fuzz/corpus/<target>/) and stop
#   --no-build      skip the separate build step (`cargo fuzz run` still builds what is stale)
#   --strict        exit 1 when a target found a crash (the test command uses it)
#
# Seeds come from tests/fixtures (recorded provider answers) and fuzz/seeds
# (request bodies, header lines, admin bodies, configs), plus every
# regression input in fuzz/regressions/<target>/. Corpora grow in
# fuzz/corpus/ and crash inputs land in fuzz/artifacts/<target>/ (both
# ignored by git). The summary goes to stdout and to
# target/fuzz/<UTC timestamp>.md.
#
# Stable toolchain only: libFuzzer's coverage instrumentation (sancov) takes
# stable -C flags; AddressSanitizer (-Zsanitizer=address) needs
# RUSTC_BOOTSTRAP=1, which the script sets only for --sanitizer address.
# Targets are built with debug assertions and overflow checks (cargo-fuzz's
# default), so an arithmetic overflow is a crash.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_TAG=fuzz
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

TIME=${FUZZ_TIME:-60}
TARGETS=""
SEED_ONLY=0
BUILD=1
STRICT=0
SANITIZER=none
while [[ $# -gt 0 ]]; do
  case $1 in
    --time) TIME=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --seed-only) SEED_ONLY=1; shift ;;
    --no-build) BUILD=0; shift ;;
    --strict) STRICT=1; shift ;;
    --sanitizer) SANITIZER=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ $TIME =~ ^[0-9]+$ && $TIME -gt 0 ]] || die "--time takes a positive number of seconds"

FUZZ=$ROOT/fuzz
FIX=$ROOT/tests/fixtures
CORPUS=$FUZZ/corpus
ARTIFACTS=$FUZZ/artifacts
CARGO_FUZZ_VERSION=0.13.2
case $SANITIZER in
  none) FUZZ_FLAGS=(--sanitizer none) ;;
  # Its own target directory, so switching back and forth rebuilds nothing.
  address) FUZZ_FLAGS=(--sanitizer address --target-dir "$FUZZ/target/asan"); export RUSTC_BOOTSTRAP=1 ;;
  *) die "--sanitizer takes none or address" ;;
esac

# The [[bin]] sections of fuzz/Cargo.toml.
ALL_TARGETS=$(sed -n '/^\[\[bin\]\]/{n;s/^name = "\([a-z_]*\)"$/\1/p}' "$FUZZ/Cargo.toml")
[[ -n $TARGETS ]] || TARGETS=$ALL_TARGETS
for t in $TARGETS; do
  grep -qx "$t" <<<"$ALL_TARGETS" || die "no fuzz target $t (targets: $(echo $ALL_TARGETS))"
done

# --- seeds ------------------------------------------------------------------

put() { # TARGET NAME < bytes : one seed file
  mkdir -p "$CORPUS/$1"
  cat >"$CORPUS/$1/$2"
}
sse_of_jsonl() { # FILE : one `data:` event per JSON line, then [DONE]
  grep -v '^$' "$1" | sed 's/^/data: /; s/$/\n/'
  printf 'data: [DONE]\n\n'
}
b64() { tr -d ' \n\r' <"$1" | base64 -d; }
prefixed() { # SELECT SHAPE : the gateway_upstream header (see fuzz/src/pipeline.rs)
  printf "\\x$(printf %02x "$1")\\x$(printf %02x "$2")"
  cat
}

seed() {
  local f n a kind
  # SSE: every recorded stream, and the decoded ones as SSE.
  for f in "$FIX"/*/*.sse; do put sse "$(basename "$f")" <"$f"; done
  for f in "$FIX"/*/*.jsonl; do sse_of_jsonl "$f" | put sse "$(basename "$f").sse"; done
  for f in "$FIX"/bedrock/*.b64; do b64 "$f" | put eventstream "$(basename "$f" .b64)"; done
  # Stream decoders: each provider's own streams (Azure and OpenAI-compatible hosts speak OpenAI's).
  for kind in openai anthropic gemini cohere; do
    for f in "$FIX/$kind"/*.sse; do [[ -e $f ]] && put "stream_$kind" "$(basename "$f")" <"$f"; done
    for f in "$FIX/$kind"/*.jsonl; do [[ -e $f ]] && sse_of_jsonl "$f" | put "stream_$kind" "$(basename "$f").sse"; done
  done
  for f in "$FIX"/openai/*.sse; do put stream_azure "$(basename "$f")" <"$f"; done
  for f in "$FIX"/azure/*.jsonl "$FIX"/mistral/*.jsonl; do
    sse_of_jsonl "$f" | put stream_azure "$(basename "$f").sse"
    sse_of_jsonl "$f" | put stream_openai "$(basename "$f").sse"
  done
  for f in "$FIX"/bedrock/*.b64; do b64 "$f" | put stream_bedrock "$(basename "$f" .b64)"; done
  # Whole answers and error bodies.
  for kind in openai anthropic gemini bedrock cohere; do
    for f in "$FIX/$kind"/*.json; do [[ -e $f ]] && put "response_$kind" "$(basename "$f")" <"$f"; done
  done
  for f in "$FIX"/openai/*.json; do put response_azure "$(basename "$f")" <"$f"; done
  # Client bodies: each template for each alias of the fuzz configuration.
  for f in "$FUZZ"/seeds/chat/*.json "$FUZZ"/seeds/completions/*.json; do
    n=$(basename "$(dirname "$f")")
    for a in openai azure anthropic gemini bedrock cohere compatible fallback; do
      sed "s/\"MODEL\"/\"$a\"/" "$f" | put "gateway_$n" "$a.$(basename "$f")"
    done
  done
  for f in "$FUZZ"/seeds/embeddings/*.json; do
    for a in openai azure gemini bedrock-titan bedrock-cohere cohere-embed compatible anthropic; do
      sed "s/\"MODEL\"/\"$a\"/" "$f" | put gateway_embeddings "$a.$(basename "$f")"
    done
  done
  # Provider answers behind a fixed request: select = kind + 7*endpoint + 21*stream
  # (kinds: openai azure anthropic gemini bedrock cohere compatible; endpoints:
  # chat completions embeddings); shape 0x0d = one 4096-byte read, status 200;
  # 0x05 = 7-byte reads.
  for f in "$FIX"/openai/chat*.sse; do prefixed 21 13 <"$f" | put gateway_upstream "openai.$(basename "$f")"; done
  sse_of_jsonl "$FIX"/openai/completions.stream.include_usage.decoded.jsonl | prefixed 28 5 | put gateway_upstream openai.completions.sse
  prefixed 7 13 <"$FIX"/openai/completions.text.length.json | put gateway_upstream openai.completions.json
  prefixed 14 13 <"$FIX"/openai/embeddings.float.json | put gateway_upstream openai.embeddings.json
  prefixed 0 $((0x8d)) <"$FIX"/openai/error.400-invalid_request_error.unsupported_parameter.json | put gateway_upstream openai.error400.json
  for f in "$FIX"/azure/*.jsonl; do sse_of_jsonl "$f" | prefixed 22 5 | put gateway_upstream "azure.$(basename "$f")"; done
  for f in "$FIX"/anthropic/*.sse; do prefixed 23 13 <"$f" | put gateway_upstream "anthropic.$(basename "$f")"; done
  prefixed 30 5 <"$FIX"/anthropic/messages.stream.text.recorded.sse | put gateway_upstream anthropic.completions.sse
  for f in "$FIX"/anthropic/messages.*.json; do prefixed 2 13 <"$f" | put gateway_upstream "anthropic.$(basename "$f")"; done
  for f in "$FIX"/gemini/*.sse; do prefixed 24 13 <"$f" | put gateway_upstream "gemini.$(basename "$f")"; done
  for f in "$FIX"/gemini/generateContent.*.json; do prefixed 3 13 <"$f" | put gateway_upstream "gemini.$(basename "$f")"; done
  for f in "$FIX"/bedrock/*.b64; do b64 "$f" | prefixed 25 5 | put gateway_upstream "bedrock.$(basename "$f" .b64)"; done
  for f in "$FIX"/bedrock/converse.*.json; do prefixed 4 13 <"$f" | put gateway_upstream "bedrock.$(basename "$f")"; done
  for f in "$FIX"/cohere/*.sse; do prefixed 26 13 <"$f" | put gateway_upstream "cohere.$(basename "$f")"; done
  for f in "$FIX"/cohere/chat.*.json; do prefixed 5 13 <"$f" | put gateway_upstream "cohere.$(basename "$f")"; done
  prefixed 19 13 <"$FIX"/cohere/embed.v2.float.json | put gateway_upstream cohere.embed.json
  sse_of_jsonl "$FIX"/mistral/chat.completion.chunks.tool_calls.decoded.jsonl | prefixed 27 5 | put gateway_upstream compatible.mistral.sse
  # Keys, admin bodies, configs.
  for f in "$FUZZ"/seeds/keys/*; do put keys "$(basename "$f")" <"$f"; done
  for f in "$FUZZ"/seeds/config/*; do put config "$(basename "$f")" <"$f"; done
  # Every input that once failed, for its own target.
  for d in "$FUZZ"/regressions/*/; do
    [[ -d $d ]] || continue
    for f in "$d"*; do [[ -f $f ]] && put "$(basename "$d")" "regression.$(basename "$f")" <"$f"; done
  done
}

dict_for() { # TARGET : the libFuzzer dictionary that fits it
  case $1 in
    gateway_*|keys|response_*) echo "$FUZZ/dicts/json.dict" ;;
    config) echo "$FUZZ/dicts/toml.dict" ;;
    *) echo "$FUZZ/dicts/stream.dict" ;;
  esac
}

# --- build --------------------------------------------------------------------

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  t0=$(date +%s)
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" >&2
  log "cargo-fuzz installed in $(($(date +%s) - t0)) s"
fi

seed
log "seeded $(find "$CORPUS" -type f | wc -l) corpus files under fuzz/corpus/"
[[ $SEED_ONLY == 1 ]] && exit 0

cd "$FUZZ"
if [[ $BUILD == 1 ]]; then
  t0=$(date +%s)
  run_fg cargo fuzz build "${FUZZ_FLAGS[@]}" >&2
  log "fuzz targets built in $(($(date +%s) - t0)) s"
fi

# --- run ----------------------------------------------------------------------

OUT_DIR=$ROOT/target/fuzz
mkdir -p "$OUT_DIR"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
REPORT=$OUT_DIR/$STAMP.md
{
  echo "# Fuzzing, $STAMP: $TIME s per target, sanitizer: $SANITIZER"
  echo
  echo "| target | seconds | executions | exec/s | coverage (edges) | corpus | result |"
  echo "|---|---:|---:|---:|---:|---:|---|"
} >"$REPORT"

found=0
total_execs=0
for t in $TARGETS; do
  mkdir -p "$CORPUS/$t" "$ARTIFACTS/$t"
  log "$t: ${TIME}s"
  flog=$OUT_DIR/$STAMP.$t.log
  t0=$(date +%s)
  rc=0
  # One process, bounded in time (-max_total_time) and memory (inputs up to the
  # largest seed or 4 KiB, libFuzzer's default); a single slow
  # input over 10 s is a finding too.
  run_fg cargo fuzz run "${FUZZ_FLAGS[@]}" "$t" "$CORPUS/$t" -- \
    -max_total_time="$TIME" -timeout=10 -rss_limit_mb=2048 \
    -dict="$(dict_for "$t")" -artifact_prefix="$ARTIFACTS/$t/" -print_final_stats=1 \
    >"$flog" 2>&1 || rc=$?
  secs=$(($(date +%s) - t0))
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$flog" | tail -1)
  [[ -n $execs ]] || execs=$({ grep -o '^#[0-9]*' "$flog" || true; } | tail -1 | tr -d '#')
  execs=${execs:-0}
  rate=$(sed -n 's/^stat::average_exec_per_sec: *\([0-9]*\).*/\1/p' "$flog" | tail -1)
  cov=$({ grep -o 'cov: [0-9]*' "$flog" || true; } | tail -1 | cut -d' ' -f2)
  files=$(find "$CORPUS/$t" -type f | wc -l)
  if [[ $rc == 0 ]]; then
    result=ok
  else
    found=$((found + 1))
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$flog" | tail -1)
    why=$({ grep -m1 -A1 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$flog" || true; } | tr '\n' ' ' | cut -c1-200)
    result="FOUND: ${why:-exit $rc} (input: ${crash:-see log}; log: $flog)"
    log "$t: $result"
    grep -m1 -A3 "panicked at" "$flog" >&2 || true
  fi
  total_execs=$((total_execs + execs))
  echo "| $t | $secs | $execs | ${rate:-?} | ${cov:-?} | $files | $result |" >>"$REPORT"
done
{
  echo
  echo "$total_execs executions in all; $found target(s) with a finding."
} >>"$REPORT"
cat "$REPORT"
log "report: $REPORT"
[[ $STRICT == 1 && $found -gt 0 ]] && exit 1
exit 0
