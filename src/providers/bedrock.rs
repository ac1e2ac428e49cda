//! PLACEHOLDER: the `bedrock` provider is being written; it answers 400 until then.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::{Call, Provider, StreamDecoder, StreamEvent};
use crate::config::RawProvider;
use crate::error::GatewayError;

pub struct Bedrock;

impl Bedrock {
    pub fn from_config(
        _raw: &RawProvider,
        _base_url: String,
        _secret: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, (&'static str, String)> {
        Ok(Bedrock)
    }
}

struct Nothing;

impl StreamDecoder for Nothing {
    fn feed(&mut self, _bytes: &[u8], _out: &mut Vec<StreamEvent>) {}
    fn finish(&mut self, _out: &mut Vec<StreamEvent>) {}
}

impl Provider for Bedrock {
    fn build_request(
        &self,
        _call: &Call<'_>,
        _body: &mut Map<String, Value>,
    ) -> Result<http::Request<Bytes>, GatewayError> {
        Err(GatewayError::invalid(
            "provider kind `bedrock` is not available yet",
            None,
        ))
    }
    fn translate_response(
        &self,
        _call: &Call<'_>,
        _body: &[u8],
    ) -> Result<Map<String, Value>, GatewayError> {
        Err(GatewayError::invalid(
            "provider kind `bedrock` is not available yet",
            None,
        ))
    }
    fn stream_decoder(&self, _call: &Call<'_>) -> Box<dyn StreamDecoder> {
        Box::new(Nothing)
    }
    fn map_error(&self, _status: StatusCode, _headers: &HeaderMap, _body: &[u8]) -> GatewayError {
        GatewayError::invalid("provider kind `bedrock` is not available yet", None)
    }
}
