#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, starts
# and stops what its tests use.
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
if command -v rustup >/dev/null 2>&1; then
  rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || rustup target add wasm32-unknown-unknown
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the core builds for wasm32-unknown-unknown"
cargo build --locked -p conduit --lib --target wasm32-unknown-unknown

step "unit and in-process tests"
cargo test --workspace --locked

step "release build of the server"
cargo build --locked --release -p conduit-server

step "python venv for the black-box suite"
venv="${CONDUIT_TEST_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

step "black-box suite (official openai SDK) against the native server"
export CONDUIT_BIN="$root/target/release/conduit"
export CONDUIT_TARGET="${CONDUIT_TARGET:-server}"
"$venv/bin/python" -m pytest tests/blackbox -q -p no:cacheprovider
