//! Claude on Bedrock for the Messages API front door: `InvokeModel` /
//! `InvokeModelWithResponseStream` with Anthropic's own Messages body, so a
//! `/v1/messages` call reaches Claude untranslated.
//!
//! | client body | Bedrock invoke body |
//! |---|---|
//! | `model` | the path's model id (the deployment's) |
//! | `stream` | the action: `invoke` or `invoke-with-response-stream` |
//! | (none) | `anthropic_version: "bedrock-2023-05-31"` added |
//! | everything else | as sent |
//!
//! A streamed answer is eventstream frames whose `chunk` events carry
//! `{"bytes": <base64 of one Messages API event>}`: each is decoded and
//! relayed as that SSE event, metered like Anthropic's own stream. Exception
//! frames end the stream with the same mapping as Converse's.

use base64::Engine;
use serde_json::{Map, Value};

use super::eventstream::{Frame, FrameParser};
use crate::frontdoors::messages::native::NativeMessages;
use crate::providers::{StreamDecoder, StreamEvent};
use crate::wire::error::GatewayError;
use http::StatusCode;

/// The Messages API version Bedrock's Claude models take in the body.
const BEDROCK_ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// Whether a Bedrock model id (or inference profile, or ARN) names a Claude model.
pub fn is_claude(model: &str) -> bool {
    model.contains("anthropic.claude")
}

/// The invoke body for a Messages API body.
pub fn invoke_body(body: &Map<String, Value>) -> Value {
    let mut out = Map::with_capacity(body.len() + 1);
    out.insert("anthropic_version".into(), BEDROCK_ANTHROPIC_VERSION.into());
    for (k, v) in body {
        if k != "model" && k != "stream" && k != "anthropic_version" {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// A whole invoke answer: the Messages API `message` as Claude wrote it.
pub fn translate(v: Value) -> Result<Map<String, Value>, GatewayError> {
    match v {
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("message") => Ok(o),
        _ => Err(GatewayError::Upstream(
            "the provider's answer is not a Messages API message".into(),
        )),
    }
}

/// `InvokeModelWithResponseStream`'s eventstream, as Messages API events.
#[derive(Default)]
pub struct InvokeStream {
    frames: FrameParser,
    parsed: Vec<Result<Frame, String>>,
    events: NativeMessages,
    ended: bool,
}

impl InvokeStream {
    pub fn new() -> Self {
        Self::default()
    }

    fn fail(&mut self, out: &mut Vec<StreamEvent>, e: GatewayError) {
        self.ended = true;
        out.push(StreamEvent::Error(e));
    }

    fn frame(&mut self, frame: Frame, out: &mut Vec<StreamEvent>) {
        match frame.header(":message-type").unwrap_or("event") {
            "exception" => {
                let kind = frame
                    .header(":exception-type")
                    .unwrap_or_default()
                    .to_owned();
                let payload: Value = serde_json::from_slice(&frame.payload).unwrap_or(Value::Null);
                let message = payload
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the provider reported an error in the stream")
                    .to_owned();
                let e = super::aws_error(&kind, StatusCode::INTERNAL_SERVER_ERROR, message, None);
                self.fail(out, e);
            }
            "event" if frame.header(":event-type") == Some("chunk") => {
                let bytes = serde_json::from_slice::<Value>(&frame.payload)
                    .ok()
                    .and_then(|p| p.get("bytes").and_then(Value::as_str).map(str::to_owned))
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
                match bytes.map(String::from_utf8) {
                    Some(Ok(json)) => {
                        let before = out.len();
                        self.events.event(None, &json, out);
                        if out[before..]
                            .iter()
                            .any(|e| matches!(e, StreamEvent::Done | StreamEvent::Error(_)))
                        {
                            self.ended = true;
                        }
                    }
                    _ => self.fail(
                        out,
                        GatewayError::Upstream(
                            "the provider sent an unreadable stream chunk".into(),
                        ),
                    ),
                }
            }
            // Other event types carry nothing to relay.
            _ => {}
        }
    }

    fn drain(&mut self, out: &mut Vec<StreamEvent>) {
        for f in std::mem::take(&mut self.parsed) {
            if self.ended {
                break;
            }
            match f {
                Ok(frame) => self.frame(frame, out),
                Err(why) => self.fail(
                    out,
                    GatewayError::Upstream(format!(
                        "the provider's event stream is corrupt: {why}"
                    )),
                ),
            }
        }
    }
}

impl StreamDecoder for InvokeStream {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<StreamEvent>) {
        if self.ended {
            return;
        }
        self.frames.feed(bytes, &mut self.parsed);
        self.drain(out);
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if !self.ended && self.frames.pending() > 0 {
            self.fail(
                out,
                GatewayError::Upstream("the provider's stream ended inside a frame".into()),
            );
        }
    }
}
