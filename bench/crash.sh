#!/usr/bin/env bash
# Crash test: the release server on SQLite under mixed load, killed with SIGKILL at random
# moments and restarted; checks that no answered admin change, no billed spend and no usage
# record outside the write-behind window is lost (see bench/crash.py and bench/README.md).
# Usage: bash bench/crash.sh [--iterations 5] [--seed N] [--window-ms 250] [--keep] ...
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_TAG=crash
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CONDUIT_BIN=${CONDUIT_BIN:-$TARGET_DIR/release/conduit}
PYTHON=${CRASH_PYTHON:-$ROOT/.venv/bin/python}

if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
  log "building (release): conduit-server"
  (cd "$ROOT" && nice cargo build --release -p conduit-server) >&2
fi
[[ -x $CONDUIT_BIN ]] || die "missing $CONDUIT_BIN"
[[ -x $PYTHON ]] || die "missing $PYTHON (python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt)"
log "machine $(cpu_busy_pct)% busy before the run; load average $(cut -d' ' -f1-3 /proc/loadavg)"
run_fg "$PYTHON" "$ROOT/bench/crash.py" --bin "$CONDUIT_BIN" "$@"
