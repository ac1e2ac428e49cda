#!/bin/sh
# Runs the Lambda function locally as Lambda runs it: the real conduit-lambda
# binary behind a Lambda Runtime API, with Function-URL-style HTTP in front.
#   AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:8000 CONDUIT_CONFIG="$(cat conduit.toml)" \
#   CONDUIT_MASTER_KEY=... sh scripts/lambda-local.sh [--debug] [--listen 127.0.0.1:9000] [--instances N]
# The function is the build that is deployed: `sam build`'s bootstrap
# (.aws-sam/build/ConduitFunction/bootstrap) when it is there, else the
# release build of conduit-lambda (the same profile). --debug runs a debug
# build instead. Tables are created when missing. Stop with Ctrl-C.
set -eu
cd "$(dirname "$0")/.."
: "${AWS_ENDPOINT_URL_DYNAMODB:?set AWS_ENDPOINT_URL_DYNAMODB to a DynamoDB endpoint (e.g. dynalite on 127.0.0.1)}"
: "${CONDUIT_CONFIG:?set CONDUIT_CONFIG to the TOML config text}"
export AWS_REGION="${AWS_REGION:-us-east-1}" AWS_EC2_METADATA_DISABLED=true
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-local}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-local}"
if [ "${1:-}" = "--debug" ]; then
  shift
  cargo build --quiet -p conduit-lambda
  exec target/debug/conduit-lambda-local "$@"
fi
cargo build --quiet --release -p conduit-lambda --bin conduit-lambda-local
function=.aws-sam/build/ConduitFunction/bootstrap
if [ ! -x "$function" ]; then
  cargo build --quiet --release -p conduit-lambda --bin conduit-lambda
  function=target/release/conduit-lambda
fi
echo "conduit-lambda-local: function $function" >&2
exec target/release/conduit-lambda-local --function "$function" "$@"
