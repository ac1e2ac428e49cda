//! `conduit-lambda`: Conduit as an AWS Lambda function behind a Function URL
//! with response streaming (`InvokeMode: RESPONSE_STREAM`).
//!
//! A thin adapter: the Function URL's request becomes an `http::Request`
//! for [`conduit::Gateway`], whose answer is streamed back. Ports: keys,
//! admission and usage on DynamoDB (`conduit-dynamodb`), the hyper upstream and the
//! clock from `conduit-native`, and a spawner whose tasks (settlement, usage
//! writes) the response waits for before it ends, since Lambda may freeze
//! the sandbox as soon as the invocation returns.
//!
//! Environment: `CONDUIT_CONFIG` (the TOML document; `[server]` is ignored),
//! `CONDUIT_MASTER_KEY`, the provider secrets named by `api_key_env`,
//! `CONDUIT_KEYS_TABLE` / `CONDUIT_USAGE_TABLE` (default `conduit-keys`,
//! `conduit-usage`), `CONDUIT_USAGE_TTL_DAYS` (90), and
//! `CONDUIT_CREATE_TABLES=1` to create missing tables at start (local runs),
//! `CONDUIT_COUNT_TRIPS=1` to log the DynamoDB round trips after each request (benchmarks).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use conduit::ports::Spawner;
use conduit::{Config, Gateway, GatewayError, Ports, ResponseBody};
use conduit_native::{HyperUpstream, RequestTasks, SystemClock};
use futures_util::StreamExt;
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use lambda_http::{service_fn, Error, Request};

use conduit_dynamodb::{Dynamo, Tables};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Requests served by this instance (for the round-trip log line).
static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// With `CONDUIT_COUNT_TRIPS=1`, one line after each request: this
/// instance's requests and DynamoDB round trips so far, by kind
/// (`bench/lambda.sh` sums the last line of each instance).
fn log_trips(dynamo: &Dynamo) {
    let requests = REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    println!(
        "{}",
        serde_json::json!({ "conduit_store_trips": {
            "instance": std::process::id(),
            "requests": requests,
            "trips": dynamo.trips.to_json(),
        }})
    );
}

async fn handle(
    gateway: Arc<Gateway>,
    dynamo: Option<Arc<Dynamo>>,
    request: Request,
) -> Result<http::Response<Body>, Error> {
    let tasks = Arc::new(RequestTasks::default());
    let spawner: Arc<dyn Spawner> = tasks.clone();
    let (parts, body) = request.into_parts();
    let bytes = match body {
        lambda_http::Body::Empty => Bytes::new(),
        lambda_http::Body::Text(t) => Bytes::from(t),
        lambda_http::Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    let response = if bytes.len() > gateway.max_body_bytes() {
        gateway.refuse(&GatewayError::PayloadTooLarge {
            limit: gateway.max_body_bytes(),
        })
    } else {
        gateway
            .handle_with(http::Request::from_parts(parts, bytes), &spawner)
            .await
    };
    let (parts, body) = response.into_parts();
    let stream = match body {
        ResponseBody::Full(b) => futures_util::stream::once(async move { b }).boxed(),
        ResponseBody::Stream(s) => s,
    };
    let frames = stream
        .map(|b| Ok::<_, Infallible>(Frame::data(b)))
        .chain(tasks.joined())
        .chain(
            futures_util::stream::once(async move {
                if let Some(d) = dynamo {
                    log_trips(&d);
                }
            })
            .filter_map(|()| async { None }),
        );
    Ok(http::Response::from_parts(
        parts,
        StreamBody::new(frames).boxed_unsync(),
    ))
}

async fn gateway() -> Result<(Gateway, Arc<Dynamo>), String> {
    let text =
        std::env::var("CONDUIT_CONFIG").map_err(|_| "CONDUIT_CONFIG is not set".to_owned())?;
    let config = Config::parse(&text, "CONDUIT_CONFIG", &|v| std::env::var(v).ok())
        .map_err(|e| e.to_string())?;
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let mut dynamo = Dynamo::new(
        conduit_dynamodb::client(aws_sdk_dynamodb::config::Builder::from(&aws)),
        Tables::from_env(),
    );
    // The key item's record is trusted for `revocation_delay_ms` (README, "Limits").
    dynamo.edge = true;
    // Hot keys with limits or a budget are admitted from leases (README,
    // "Limits"); `revocation_delay_ms = 0` asks the item on every request.
    dynamo.leasing = config.gateway.revocation_delay_ms > 0;
    let dynamo = Arc::new(dynamo);
    if std::env::var("CONDUIT_CREATE_TABLES").is_ok_and(|v| v == "1" || v == "true") {
        dynamo
            .create_tables()
            .await
            .map_err(|e| format!("cannot create the tables: {e}"))?;
    }
    let ports = Ports {
        keys: dynamo.clone(),
        usage: dynamo.clone(),
        upstream: Arc::new(HyperUpstream::new()),
        clock: Arc::new(SystemClock),
        limiter: dynamo.clone(),
        spawner: Arc::new(conduit_native::TokioSpawner),
    };
    let master = std::env::var("CONDUIT_MASTER_KEY").ok();
    // CloudWatch Logs: one JSON line per request (and per failed attempt) on
    // stdout, for the requests `[gateway] request_log` keeps.
    let log = conduit::observe::LogLines::new(config.gateway.request_log, |line: &str| {
        println!("{line}")
    });
    Ok((
        Gateway::new(config, ports, master.as_deref()).with_observer(Arc::new(log)),
        dynamo,
    ))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (gateway, dynamo) = match gateway().await {
        Ok((g, d)) => (Arc::new(g), d),
        Err(message) => {
            // An init error: Lambda reports it and retries the cold start.
            eprintln!("conduit: {message}");
            return Err(message.into());
        }
    };
    let count_trips = std::env::var("CONDUIT_COUNT_TRIPS").is_ok_and(|v| v == "1");
    lambda_http::run_with_streaming_response(service_fn(move |request: Request| {
        let gateway = gateway.clone();
        let dynamo = count_trips.then(|| dynamo.clone());
        async move { handle(gateway, dynamo, request).await }
    }))
    .await
}
