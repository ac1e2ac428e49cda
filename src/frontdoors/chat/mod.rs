//! The OpenAI client API's request body (chat, completions, embeddings),
//! read without a `serde_json` tree when it can be.
//!
//! The body's top level is scanned once into raw values ([`RawValue`],
//! borrowed from the client's bytes). Each value is then walked once by a
//! visitor ([`scan`]) that accepts exactly what the tree parse accepts and
//! tallies what the prompt estimate needs, without allocating; `model`,
//! `stream`, `stream_options`, `encoding_format` and the completion
//! allowance's fields are parsed on their own. A provider that speaks the
//! client's dialect (OpenAI, OpenAI-compatible, Azure) builds its upstream
//! body from the raw values: the client's bytes with `model` (and, for a
//! stream, `stream_options.include_usage`) spliced in
//! ([`crate::providers::openai::splice_body`]); every other provider, and a
//! provider that needs the images' bytes, gets the tree, built on demand.
//! Where the body's `model` names an alias none of whose providers would
//! splice it ([`ClientBody::parse_for`]), the scan stops after the top level
//! and the tree is parsed at once, instead of walking every value first.
//!
//! Whatever the scan is not sure of (a top-level key written twice, an
//! escaped key, nesting deeper than [`scan::MAX_DEPTH`], any syntax error, a
//! front door's endpoint) falls back to the tree parse, which then decides
//! the outcome: every 400 keeps its exact message, and the estimate is the
//! one [`estimate_prompt_tokens`] makes of the tree.

pub mod scan;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::metering::limits::{
    completion_allowance, completion_allowance_of, estimate_prompt_tokens,
};
use crate::providers::Endpoint;
use crate::wire::error::GatewayError;

/// A client's JSON object, as raw values in the order the client sent them
/// (no key twice), with the prompt estimate made while it was validated.
#[derive(Debug)]
pub struct RawRequest<'a> {
    bytes: &'a [u8],
    fields: Vec<(&'a str, &'a RawValue)>,
    prompt_estimate: u64,
}

impl<'a> RawRequest<'a> {
    /// Scans `bytes`; `None` when the tree must decide (see the module doc).
    pub fn scan(bytes: &'a [u8]) -> Option<Self> {
        Self::scan_for(bytes, |_| true)
    }

    /// [`scan`](Self::scan), `None` also when `keeps_raw` refuses the
    /// body's `model` (a plain string; any other `model` is kept for the
    /// gateway's own 400): asked between the top level and the walk, the
    /// longer of the two.
    pub fn scan_for(bytes: &'a [u8], keeps_raw: impl FnOnce(&str) -> bool) -> Option<Self> {
        let fields = scan::top_level(bytes)?;
        let model = fields
            .iter()
            .find(|(k, _)| *k == "model")
            .and_then(|(_, v)| serde_json::from_str::<&str>(v.get()).ok());
        if model.is_some_and(|m| !keeps_raw(m)) {
            return None;
        }
        let prompt_estimate = scan::prompt_estimate(&fields)?;
        Some(RawRequest {
            bytes,
            fields,
            prompt_estimate,
        })
    }

    /// [`estimate_prompt_tokens`] of the body, tallied by the scan.
    pub fn prompt_estimate(&self) -> u64 {
        self.prompt_estimate
    }

    /// The fields, in the client's order.
    pub fn fields(&self) -> &[(&'a str, &'a RawValue)] {
        &self.fields
    }

    /// The client's body, whole.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The raw value of `name`.
    pub fn raw(&self, name: &str) -> Option<&'a RawValue> {
        self.fields
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    }

    /// The value of `name`, parsed alone (it was validated by the scan).
    pub fn get(&self, name: &str) -> Option<Value> {
        self.raw(name)
            .and_then(|v| serde_json::from_str(v.get()).ok())
    }
}

/// The client's body: raw values where the scan was sure of them, else the tree.
#[derive(Debug)]
pub enum ClientBody<'a> {
    Raw(RawRequest<'a>),
    Tree(Map<String, Value>),
}

impl<'a> ClientBody<'a> {
    /// Stage *parse*: the body of a request to `endpoint`, a JSON object
    /// (400 otherwise, with serde_json's message).
    pub fn parse(endpoint: Endpoint, bytes: &'a [u8]) -> Result<Self, GatewayError> {
        Self::parse_for(endpoint, bytes, |_| true)
    }

    /// [`parse`](Self::parse), keeping the raw values only where
    /// `keeps_raw(model)` says a provider of the body's `model` would send
    /// them on: otherwise the walk that validates them is skipped and the
    /// tree, which every provider can take, is parsed at once (the same
    /// 400s: the tree decides them either way).
    pub fn parse_for(
        endpoint: Endpoint,
        bytes: &'a [u8],
        keeps_raw: impl FnOnce(&str) -> bool,
    ) -> Result<Self, GatewayError> {
        let scannable = matches!(
            endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings
        );
        if scannable {
            if let Some(raw) = RawRequest::scan_for(bytes, keeps_raw) {
                return Ok(ClientBody::Raw(raw));
            }
        }
        parse_tree(bytes).map(ClientBody::Tree)
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<Cow<'_, Value>> {
        match self {
            ClientBody::Raw(raw) => raw.get(name).map(Cow::Owned),
            ClientBody::Tree(tree) => tree.get(name).map(Cow::Borrowed),
        }
    }

    /// Whether `name` is there and not `null`.
    pub fn has(&self, name: &str) -> bool {
        match self {
            ClientBody::Raw(raw) => raw.raw(name).is_some_and(|v| v.get() != "null"),
            ClientBody::Tree(tree) => tree.get(name).is_some_and(|v| !v.is_null()),
        }
    }

    /// [`estimate_prompt_tokens`] of the body.
    pub fn prompt_estimate(&self) -> u64 {
        match self {
            ClientBody::Raw(raw) => raw.prompt_estimate,
            ClientBody::Tree(tree) => estimate_prompt_tokens(tree),
        }
    }

    /// [`completion_allowance`] of the body.
    pub fn completion_allowance(&self, default: u64) -> Result<u64, GatewayError> {
        match self {
            ClientBody::Raw(raw) => {
                completion_allowance_of(|name| raw.get(name).map(Cow::Owned), default)
            }
            ClientBody::Tree(tree) => completion_allowance(tree, default),
        }
    }

    /// The raw values, while the body has not become a tree.
    pub fn raw(&self) -> Option<&RawRequest<'a>> {
        match self {
            ClientBody::Raw(raw) => Some(raw),
            ClientBody::Tree(_) => None,
        }
    }

    /// The tree (built from the raw body the first time it is asked for).
    pub fn tree(&mut self) -> Result<&mut Map<String, Value>, GatewayError> {
        if let ClientBody::Raw(raw) = self {
            *self = ClientBody::Tree(parse_tree(raw.bytes)?);
        }
        match self {
            ClientBody::Tree(tree) => Ok(tree),
            ClientBody::Raw(_) => Err(GatewayError::Internal(
                "the request body is not a tree".into(),
            )),
        }
    }
}

/// The whole body as a tree, or the 400 that says why not.
pub fn parse_tree(bytes: &[u8]) -> Result<Map<String, Value>, GatewayError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(GatewayError::invalid(
            "The request body must be a JSON object.",
            None,
        )),
        Err(e) => Err(GatewayError::invalid(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )),
    }
}
