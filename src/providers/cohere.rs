//! PLACEHOLDER: the `cohere` provider is being written; it answers 501 until then.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use super::{Call, Provider, StreamDecoder, StreamEvent};
use crate::error::GatewayError;

pub struct Cohere {
    #[allow(dead_code)]
    base_url: String,
    #[allow(dead_code)]
    api_key: String,
}

impl Cohere {
    pub fn new(base_url: String, api_key: String) -> Self {
        Cohere { base_url, api_key }
    }
}

struct Nothing;

impl StreamDecoder for Nothing {
    fn feed(&mut self, _bytes: &[u8], _out: &mut Vec<StreamEvent>) {}
    fn finish(&mut self, _out: &mut Vec<StreamEvent>) {}
}

impl Provider for Cohere {
    fn build_request(
        &self,
        _call: &Call<'_>,
        _body: &mut Map<String, Value>,
    ) -> Result<http::Request<Bytes>, GatewayError> {
        Err(GatewayError::invalid(
            "provider kind `cohere` is not available yet",
            None,
        ))
    }
    fn translate_response(
        &self,
        _call: &Call<'_>,
        _body: &[u8],
    ) -> Result<Map<String, Value>, GatewayError> {
        Err(GatewayError::invalid(
            "provider kind `cohere` is not available yet",
            None,
        ))
    }
    fn stream_decoder(&self, _call: &Call<'_>) -> Box<dyn StreamDecoder> {
        Box::new(Nothing)
    }
    fn map_error(&self, _status: StatusCode, _headers: &HeaderMap, _body: &[u8]) -> GatewayError {
        GatewayError::invalid("provider kind `cohere` is not available yet", None)
    }
}
