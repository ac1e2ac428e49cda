//! One attempt: a request to one deployment, up to the point where the
//! answer is committed to the client or the attempt has failed.
//!
//! A whole answer is read and translated before it counts as a success (an
//! unreadable one is a failure the plan may retry). A stream is peeked: its
//! bytes are read until the first event the client would see, so that a
//! stream that breaks, times out (`stream_first_event_timeout_ms`) or opens
//! with an error event is a failure too; once a content event is in, the
//! peeked bytes are replayed to a fresh decoder in front of the rest and
//! nothing after that is retried.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt;
use http::HeaderMap;
use serde_json::Value;

use crate::frontdoors::chat::ClientBody;
use crate::gateway::{Gateway, PendingRelay, Proxied, StreamHead, MAX_ERROR_BODY};
use crate::metering::meter::Meter;
use crate::observe::AttemptFailure;
use crate::ports::{ByteStream, UpstreamError};
use crate::providers::openai::passthrough::FirstChunkProbe;
use crate::providers::{Call, Endpoint, StreamDecoder, StreamEvent};
use crate::routing::health::InFlight;
use crate::routing::{Attempt, Failure};
use crate::stream::Reader;
use crate::wire::error::GatewayError;

/// Bytes of a stream read before committing, at most: past this the
/// stream is committed even without a visible event.
const MAX_PEEK_BYTES: usize = 1024 * 1024;

/// A `Retry-After` longer than this is taken as this.
const MAX_RETRY_AFTER_US: u64 = 3_600_000_000;

/// What every attempt of a request shares.
pub(crate) struct CallContext<'a> {
    pub endpoint: Endpoint,
    pub stream: bool,
    pub include_usage: bool,
    pub base64_embeddings: bool,
    pub alias: &'a str,
    pub request_id: &'a str,
    /// `traceparent` (Conduit's span) for every provider request.
    pub trace: &'a crate::observe::trace::TraceContext,
}

impl Gateway {
    /// Makes `attempt`. `keep_body`: another attempt may follow, so the
    /// provider gets a copy of the client's body to rewrite. Returns the
    /// answer and the latency to sample (to the first event for streams).
    pub(crate) async fn call_deployment(
        &self,
        attempt: &Attempt<'_>,
        request: &mut ClientBody<'_>,
        keep_body: bool,
        cx: &CallContext<'_>,
        deadline_us: u64,
        meter: &mut Meter,
    ) -> Result<(Proxied, u64), Failure> {
        let deployment = attempt.deployment;
        let provider = &deployment.provider;
        let call = Call {
            endpoint: cx.endpoint,
            model: &deployment.model,
            stream: cx.stream,
            now_secs: meter.now() / 1_000_000,
            request_id: cx.request_id,
            drop_unsupported_params: deployment.drop_unsupported_params,
        };
        // A provider that speaks the client's dialect gets the client's bytes
        // with `model` spliced in, without a tree.
        let spliced = match request.raw() {
            Some(raw) if !provider.needs_image_bytes() => provider.splice_request(&call, raw),
            _ => None,
        };
        let mut upstream_request = match spliced {
            Some(built) => built.map_err(Failure::new)?,
            None => {
                let request = request.tree().map_err(Failure::new)?;
                if provider.needs_image_bytes() {
                    self.inline_images(request).await.map_err(Failure::new)?;
                }
                // A provider may rewrite the body destructively (legacy
                // completions through chat): a later attempt gets the client's own.
                let mut copy;
                let body = if keep_body {
                    copy = request.clone();
                    &mut copy
                } else {
                    request
                };
                provider.build_request(&call, body).map_err(Failure::new)?
            }
        };
        cx.trace.add_to(upstream_request.headers_mut());
        let sent_us = meter.now();
        // An attempt may take what is left of the request's deadline, and
        // at most [gateway] upstream_timeout_ms; a stream's first event may
        // have a shorter limit.
        let mut attempt_deadline =
            deadline_us.min(sent_us + self.config().gateway.upstream_timeout_ms * 1000);
        if cx.stream {
            if let Some(ms) = attempt.route.policy.stream_first_event_timeout_ms {
                attempt_deadline = attempt_deadline.min(sent_us + ms * 1000);
            }
        }
        let left = Duration::from_micros(attempt_deadline.saturating_sub(sent_us));
        let response = match self
            .within(left, self.upstream().send(upstream_request))
            .await
        {
            Err(e) => return Err(Failure::new(e)),
            Ok(Err(e)) => return Err(Failure::new(crate::observe::unreachable(e))),
            Ok(Ok(response)) => response,
        };
        let (parts, mut body) = response.into_parts();
        if !parts.status.is_success() {
            let bytes = self
                .read_body(body, attempt_deadline, MAX_ERROR_BODY, None)
                .await;
            return Err(Failure {
                error: provider.map_error(parts.status, &parts.headers, &bytes.unwrap_or_default()),
                status: parts.status.as_u16(),
                retry_after_us: retry_after_us(&parts.headers),
                kind: AttemptFailure::of_status(parts.status.as_u16()),
            });
        }
        if cx.stream {
            // A passed-through stream (OpenAI chunks in the client's
            // dialect, no front door's encoder) is looked at the way the
            // relay will read it (a scan, no tree per event), and the relay
            // takes up the scan's memo; a translated one is decoded, and the
            // relay gets a fresh decoder, as it reads the peeked bytes again
            // from the start.
            let pass_through = provider.streams_openai_chunks(&call)
                && !crate::frontdoors::encodes_stream(cx.endpoint);
            let (peeked, reader) = if pass_through {
                let mut probe = FirstChunkProbe::new();
                let peeked = self
                    .peek_first_event(&mut body, &mut probe, attempt_deadline)
                    .await
                    .map_err(Failure::new)?;
                (peeked, Reader::PassThrough(probe.into_memo()))
            } else {
                let mut decoder = provider.stream_decoder(&call);
                let peeked = self
                    .peek_first_event(&mut body, decoder.as_mut(), attempt_deadline)
                    .await
                    .map_err(Failure::new)?;
                (peeked, Reader::Decode(provider.stream_decoder(&call)))
            };
            let latency = meter.now().saturating_sub(sent_us);
            meter.add_upstream(latency);
            meter.first_event();
            return Ok((
                Proxied::Stream(
                    StreamHead {
                        status: parts.status,
                        headers: {
                            let mut headers = http::HeaderMap::new();
                            meter.add_limit_headers(&mut headers);
                            headers
                        },
                    },
                    PendingRelay {
                        upstream: Replay {
                            peeked: peeked.into_iter(),
                            rest: body,
                            in_flight: None,
                        },
                        reader,
                        clock: self.ports().clock.clone(),
                        idle_timeout: Duration::from_millis(
                            self.config().gateway.upstream_timeout_ms,
                        ),
                        alias: Value::String(cx.alias.to_owned()),
                        endpoint: cx.endpoint,
                        include_usage: cx.include_usage,
                    },
                ),
                latency,
            ));
        }
        let bytes = self
            .read_body(
                body,
                attempt_deadline,
                self.config().gateway.max_response_bytes,
                crate::gateway::content_length(&parts.headers),
            )
            .await
            .map_err(Failure::new)?;
        let latency = meter.now().saturating_sub(sent_us);
        meter.add_upstream(latency);
        let answer = self
            .translate_whole(
                provider.as_ref(),
                &call,
                cx.base64_embeddings,
                parts.status,
                bytes,
                meter,
            )
            .map_err(Failure::new)?;
        Ok((answer, latency))
    }

    /// Reads a stream until the first event the client would see (a chunk
    /// with choices), by `deadline_us`. Returns the bytes read; fails if the
    /// stream breaks, ends, or opens with an error event first.
    async fn peek_first_event(
        &self,
        body: &mut ByteStream,
        decoder: &mut dyn StreamDecoder,
        deadline_us: u64,
    ) -> Result<Vec<Bytes>, GatewayError> {
        let mut peeked = Vec::new();
        let mut size = 0;
        let mut events = Vec::new();
        loop {
            let left = deadline_us.saturating_sub(self.now_micros());
            if left == 0 {
                return Err(GatewayError::UpstreamTimeout);
            }
            match self
                .within(Duration::from_micros(left), body.next())
                .await?
            {
                Some(Ok(bytes)) => {
                    decoder.feed(&bytes, &mut events);
                    size += bytes.len();
                    peeked.push(bytes);
                }
                Some(Err(e)) => {
                    return Err(GatewayError::Upstream(format!(
                        "the connection to the provider broke: {e}"
                    )))
                }
                None => {
                    decoder.finish(&mut events);
                    return match first_visible(&events) {
                        Some(Err(e)) => Err(e),
                        _ => Err(GatewayError::Upstream(
                            "the provider ended the stream before its first event".into(),
                        )),
                    };
                }
            }
            match first_visible(&events) {
                Some(Ok(())) => return Ok(peeked),
                Some(Err(e)) => return Err(e),
                None if size > MAX_PEEK_BYTES => return Ok(peeked),
                None => events.clear(),
            }
        }
    }
}

/// Whether `events` hold one the client would see: `Ok` for content,
/// `Err` for an error (or an end) that comes first.
fn first_visible(events: &[StreamEvent]) -> Option<Result<(), GatewayError>> {
    for event in events {
        match event {
            StreamEvent::Chunk(c) => {
                if c.get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
                {
                    return Some(Ok(()));
                }
            }
            StreamEvent::Done => {
                return Some(Err(GatewayError::Upstream(
                    "the provider ended the stream before its first event".into(),
                )))
            }
            StreamEvent::Error(e) => return Some(Err(e.clone())),
            // A passed-through event (front doors) that is not an error: the
            // provider's stream has begun as it should (`message_start`,
            // `response.created`); committing here lets the front door keep a
            // silent provider's client alive (the Messages API's pings).
            StreamEvent::Native(_) => return Some(Ok(())),
        }
    }
    None
}

/// A provider's `Retry-After` (seconds, or OpenAI's `retry-after-ms`), in µs.
pub(crate) fn retry_after_us(headers: &HeaderMap) -> Option<u64> {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let us = if let Some(ms) = value("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        ms * 1000.0
    } else {
        value("retry-after")?.trim().parse::<f64>().ok()? * 1_000_000.0
    };
    (us.is_finite() && us > 0.0).then(|| (us as u64).min(MAX_RETRY_AFTER_US))
}

/// The upstream body with the bytes peeked before committing in front. It
/// holds the deployment's in-flight count until the relay drops it.
pub(crate) struct Replay {
    peeked: std::vec::IntoIter<Bytes>,
    rest: ByteStream,
    in_flight: Option<InFlight>,
}

impl Replay {
    /// Counts the stream in flight on its deployment until it ends.
    pub fn hold(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
    }
}

impl Stream for Replay {
    type Item = Result<Bytes, UpstreamError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(bytes) = self.peeked.next() {
            return Poll::Ready(Some(Ok(bytes)));
        }
        let next = self.rest.as_mut().poll_next(cx);
        if let Poll::Ready(None) = next {
            self.in_flight = None;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after_us(&h), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after_us(&h), Some(2_000_000));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after_us(&h), Some(150_000));
        h.remove("retry-after-ms");
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_us(&h), None);
        h.insert("retry-after", "999999".parse().unwrap());
        assert_eq!(retry_after_us(&h), Some(MAX_RETRY_AFTER_US));
    }

    #[test]
    fn first_visible_event() {
        let chunk = |choices: Value| {
            let mut m = Map::new();
            m.insert("choices".into(), choices);
            StreamEvent::Chunk(m)
        };
        assert!(first_visible(&[chunk(Value::Array(vec![]))]).is_none());
        assert!(matches!(
            first_visible(&[
                chunk(Value::Array(vec![])),
                chunk(serde_json::json!([{"delta": {}}]))
            ]),
            Some(Ok(()))
        ));
        assert!(matches!(
            first_visible(&[StreamEvent::Error(GatewayError::UpstreamTimeout)]),
            Some(Err(GatewayError::UpstreamTimeout))
        ));
        assert!(matches!(first_visible(&[StreamEvent::Done]), Some(Err(_))));
    }
}
