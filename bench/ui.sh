#!/usr/bin/env bash
# Web UI numbers: first load of /ui/ (bytes, time to interactive) and the usage summary over
# 100,000 records, on the native server (see bench/ui.py).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release -p conduit-server
venv="${CONDUIT_TEST_VENV:-$PWD/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
mkdir -p target/bench
"$venv/bin/python" bench/ui.py | tee target/bench/ui.md
