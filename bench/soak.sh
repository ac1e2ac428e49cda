#!/usr/bin/env bash
# Soak: the release server at a fixed rate for minutes (default 10 at 200 req/s, a third
# streamed, some streams dropped by the client); RSS, open fds and p99 per minute must stay
# flat. Prints a table; exit 1 on a violation (see bench/soak.py and bench/README.md).
# Usage: bash bench/soak.sh [--minutes 10] [--rate 200] [--drop 0.1] [--connections 128] ...
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_TAG=soak
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CONDUIT_BIN=${CONDUIT_BIN:-$TARGET_DIR/release/conduit}
BIN_DIR=${BENCH_BIN_DIR:-$TARGET_DIR/release}
PYTHON=${SOAK_PYTHON:-$ROOT/.venv/bin/python}

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "building (release): conduit-server, conduit-bench"
  (cd "$ROOT" && nice cargo build --release -p conduit-server -p conduit-bench) >&2
fi
[[ -x $CONDUIT_BIN ]] || die "missing $CONDUIT_BIN"
for b in bench-mock bench-load; do [[ -x $BIN_DIR/$b ]] || die "missing $BIN_DIR/$b (cargo build --release -p conduit-bench)"; done
[[ -x $PYTHON ]] || die "missing $PYTHON (python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt)"
log "machine $(cpu_busy_pct)% busy before the run; load average $(cut -d' ' -f1-3 /proc/loadavg)"
run_fg "$PYTHON" "$ROOT/bench/soak.py" --bin "$CONDUIT_BIN" --mock-bin "$BIN_DIR/bench-mock" --load-bin "$BIN_DIR/bench-load" "$@"
