#!/bin/sh
# Runs the Lambda function locally as Lambda runs it: the real conduit-lambda
# binary behind a Lambda Runtime API, with Function-URL-style HTTP in front.
#   AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:8000 CONDUIT_CONFIG="$(cat conduit.toml)" \
#   CONDUIT_MASTER_KEY=... sh scripts/lambda-local.sh [--listen 127.0.0.1:9000] [--instances N]
# Tables are created when missing. Stop with Ctrl-C.
set -eu
cd "$(dirname "$0")/.."
: "${AWS_ENDPOINT_URL_DYNAMODB:?set AWS_ENDPOINT_URL_DYNAMODB to a DynamoDB endpoint (e.g. dynalite on 127.0.0.1)}"
: "${CONDUIT_CONFIG:?set CONDUIT_CONFIG to the TOML config text}"
export AWS_REGION="${AWS_REGION:-us-east-1}" AWS_EC2_METADATA_DISABLED=true
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-local}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-local}"
cargo build --quiet -p conduit-lambda
exec target/debug/conduit-lambda-local "$@"
