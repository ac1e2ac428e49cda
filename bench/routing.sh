#!/usr/bin/env bash
# Routing decision benchmark: the per-request cost of model routing (plan, the
# strategy's pick, the health update) for each strategy on an alias with 10
# deployments, in process. Target: ≤ 1 µs per request.
# Usage: bash bench/routing.sh [bench-routing options, e.g. --batches 9]
#   BENCH_SKIP_BUILD=1   use the binary already built
#   BENCH_STRICT=1       exit 1 when the target is missed
# Writes target/bench/routing-latest.md and target/bench/routing-<UTC timestamp>.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=${BENCH_BIN_DIR:-$TARGET_DIR/release}
OUT_DIR=$TARGET_DIR/bench
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

log() { printf '[bench] %s\n' "$*" >&2; }

cd "$ROOT"
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "building: cargo build --release -p conduit-bench --bin bench-routing"
  cargo build --release -p conduit-bench --bin bench-routing >&2
fi
BIN=$BIN_DIR/bench-routing
[[ -x $BIN ]] || { log "error: $BIN not found (build it or unset BENCH_SKIP_BUILD)"; exit 1; }

mkdir -p "$OUT_DIR"
args=(--out "$OUT_DIR/routing-$STAMP.md")
[[ ${BENCH_STRICT:-0} == 1 ]] && args+=(--strict)
rc=0
"$BIN" "${args[@]}" "$@" || rc=$?
if [[ -f $OUT_DIR/routing-$STAMP.md ]]; then
  cp "$OUT_DIR/routing-$STAMP.md" "$OUT_DIR/routing-latest.md"
  log "wrote $OUT_DIR/routing-latest.md (and routing-$STAMP.md)"
fi
exit "$rc"
