#!/bin/sh
# Builds the Worker (platforms/cloudflare/build/) offline: worker-build with
# the wasm-bindgen CLI from `cargo install` and wasm-opt/esbuild from npm.
set -eu
cd "$(dirname "$0")/.."
out=platforms/cloudflare/build
# wrangler dev runs [build] twice at start: skip when the build is newer than every input.
if [ -f $out/index.js ] && [ -f $out/index_bg.wasm ] && [ -z "$(find src platforms/cloudflare/src data \
     Cargo.toml Cargo.lock platforms/cloudflare/Cargo.toml -newer $out/index_bg.wasm -print -quit 2>/dev/null)" ]; then
  echo "worker build up to date"; exit 0
fi
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$HOME/.cargo/bin/wasm-bindgen}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$PWD/node_modules/.bin/wasm-opt}"
export ESBUILD_BIN="${ESBUILD_BIN:-$PWD/node_modules/.bin/esbuild}"
# Size over speed for the Worker only; the server keeps the workspace's release profile.
export CARGO_PROFILE_RELEASE_OPT_LEVEL=z CARGO_PROFILE_RELEASE_LTO=true CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
cd platforms/cloudflare && exec worker-build --release "$@"
