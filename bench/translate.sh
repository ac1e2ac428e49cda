#!/usr/bin/env bash
# Provider translation benchmark: per-request and per-stream-event cost of each
# provider's translation against OpenAI pass-through (in process, recorded payloads),
# then what the front doors (/v1/responses, /v1/messages) add over chat pass-through
# (bench-frontdoors; BENCH_FRONTDOORS_ARGS passes it options, e.g. "--batches 9").
# Usage: bash bench/translate.sh [bench-translate options, e.g. --batches 9]
#   BENCH_SKIP_BUILD=1   use the binary already built
#   BENCH_WAIT_IDLE=600  first wait up to 600 s for an idle machine (see below)
#   BENCH_STRICT=1       exit 1 when a target is missed
# Writes target/bench/translate-latest.md and target/bench/translate-<UTC timestamp>.md,
# and target/bench/frontdoors-latest.md (and frontdoors-<UTC timestamp>.md).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=${BENCH_BIN_DIR:-$TARGET_DIR/release}
OUT_DIR=$TARGET_DIR/bench
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

log() { printf '[bench] %s\n' "$*" >&2; }

cd "$ROOT"
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "building: cargo build --release -p conduit-bench"
  cargo build --release -p conduit-bench >&2
fi
BIN=$BIN_DIR/bench-translate
[[ -x $BIN ]] || { log "error: $BIN not found (build it or unset BENCH_SKIP_BUILD)"; exit 1; }

# The figures are CPU-bound: builds, test runs or anything else busy on the same
# cores skew them. BENCH_WAIT_IDLE=SECONDS first waits (polling every 30 s) for no
# cargo/rustc/pytest process and CPUs under 25 % busy (1 s sample).
busy_procs() {
  echo $(( $(pgrep -c -f '^([^ ]*/)?(cargo|rustc|clippy-driver)( |$)' || true) \
         + $(pgrep -c -f '[p]ytest' || true) ))
}
cpu_busy() { # percent busy over 1 s, all CPUs
  local a b
  read -ra a < <(head -1 /proc/stat)
  sleep 1
  read -ra b < <(head -1 /proc/stat)
  local t0=0 t1=0 i
  for i in 1 2 3 4 5 6 7 8; do t0=$((t0 + a[i])); t1=$((t1 + b[i])); done
  local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) dt=$((t1 - t0))
  echo $(( dt > 0 ? 100 - 100 * idle / dt : 0 ))
}
wait_left=${BENCH_WAIT_IDLE:-0}
while :; do
  procs=$(busy_procs) busy=$(cpu_busy)
  [[ $procs -eq 0 && $busy -lt 25 ]] && break
  if [[ $wait_left -le 0 ]]; then
    log "warning: $procs cargo/rustc/pytest process(es), CPU ${busy} % busy: numbers will be noisy"
    break
  fi
  log "not idle ($procs cargo/rustc/pytest process(es), CPU ${busy} % busy); waiting (${wait_left} s left)"
  sleep 30
  wait_left=$((wait_left - 30))
done

mkdir -p "$OUT_DIR"
args=(--out "$OUT_DIR/translate-$STAMP.md")
[[ ${BENCH_STRICT:-0} == 1 ]] && args+=(--strict)
rc=0
"$BIN" "${args[@]}" "$@" || rc=$?
if [[ -f $OUT_DIR/translate-$STAMP.md ]]; then
  cp "$OUT_DIR/translate-$STAMP.md" "$OUT_DIR/translate-latest.md"
  log "wrote $OUT_DIR/translate-latest.md (and translate-$STAMP.md)"
fi

# The front doors: added per request and per event over chat pass-through.
FD_BIN=$BIN_DIR/bench-frontdoors
[[ -x $FD_BIN ]] || { log "error: $FD_BIN not found"; exit 1; }
# shellcheck disable=SC2086
"$FD_BIN" --out "$OUT_DIR/frontdoors-$STAMP.md" ${BENCH_FRONTDOORS_ARGS:-} || rc=$?
if [[ -f $OUT_DIR/frontdoors-$STAMP.md ]]; then
  cp "$OUT_DIR/frontdoors-$STAMP.md" "$OUT_DIR/frontdoors-latest.md"
  log "wrote $OUT_DIR/frontdoors-latest.md (and frontdoors-$STAMP.md)"
fi
exit "$rc"
