//! Images by URL, for providers that need the bytes (Gemini, Bedrock).
//!
//! OpenAI clients send `image_url` parts with either a `data:` URL or an
//! http(s) URL. Providers that take only inline bytes get every http(s)
//! image fetched by Conduit and inlined as a `data:` URL before translation.
//! The fetch is guarded:
//! - only `http` and `https`;
//! - no loopback, private, link-local or unspecified addresses (IP literals
//!   by range; `localhost`, `*.localhost`, `*.local`, `*.internal` by name),
//!   unless `[gateway] image_fetch_allow_private = true`. Host names are not
//!   resolved here (the core has no resolver), so a public name that
//!   resolves to a private address is not caught: keep the gateway's egress
//!   restricted if that matters;
//! - at most `[gateway] image_max_bytes` (20 MiB by default), answered
//!   within the upstream timeout, with an `image/*` content type.
//!
//! A failed fetch is a 400 naming the message part.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::gateway::Gateway;
use crate::wire::error::GatewayError;

fn private_v4(ip: Ipv4Addr) -> bool {
    ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified() || ip.is_broadcast()
        // 100.64.0.0/10 (carrier-grade NAT)
        || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
}

fn private_v6(ip: Ipv6Addr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || (ip.segments()[0] & 0xfe00) == 0xfc00 // unique local
        || (ip.segments()[0] & 0xffc0) == 0xfe80 // link local
        || ip.to_ipv4_mapped().is_some_and(private_v4)
}

/// Whether `host` (from a URL) names a loopback, private or local address.
pub fn is_private_host(host: &str) -> bool {
    let h = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    match h.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => private_v4(ip),
        Ok(IpAddr::V6(ip)) => private_v6(ip),
        Err(_) => {
            h == "localhost"
                || h.ends_with(".localhost")
                || h.ends_with(".local")
                || h.ends_with(".internal")
                || h.is_empty()
        }
    }
}

fn bad(param: &str, why: String) -> GatewayError {
    GatewayError::invalid(
        format!("Cannot use the image at {param}: {why}"),
        Some(param),
    )
}

impl Gateway {
    /// Replaces every http(s) `image_url` in `messages` by a `data:` URL.
    pub(crate) async fn inline_images(
        &self,
        body: &mut Map<String, Value>,
    ) -> Result<(), GatewayError> {
        let Some(Value::Array(messages)) = body.get_mut("messages") else {
            return Ok(());
        };
        for (m, message) in messages.iter_mut().enumerate() {
            let Some(Value::Array(parts)) = message.get_mut("content") else {
                continue;
            };
            for (p, part) in parts.iter_mut().enumerate() {
                if part.get("type").and_then(Value::as_str) != Some("image_url") {
                    continue;
                }
                let Some(url_slot) = part.get_mut("image_url").and_then(|i| i.get_mut("url"))
                else {
                    continue;
                };
                let Some(url) = url_slot.as_str() else {
                    continue;
                };
                if url.starts_with("data:") {
                    continue;
                }
                let param = format!("messages[{m}].content[{p}].image_url.url");
                let data_url = self.fetch_image(url, &param).await?;
                *url_slot = Value::String(data_url);
            }
        }
        Ok(())
    }

    async fn fetch_image(&self, url: &str, param: &str) -> Result<String, GatewayError> {
        let settings = &self.config().gateway;
        let uri: http::Uri = url
            .parse()
            .map_err(|_| bad(param, "not a valid URL".into()))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(bad(
                    param,
                    "only http, https and data: URLs are accepted".into(),
                ))
            }
        }
        let host = uri.host().unwrap_or_default();
        if !settings.image_fetch_allow_private && is_private_host(host) {
            return Err(bad(
                param,
                "private, loopback and local addresses are not fetched".into(),
            ));
        }
        let request = http::Request::get(url)
            .header(http::header::ACCEPT, "image/*")
            .body(Bytes::new())
            .map_err(|e| bad(param, e.to_string()))?;
        let timeout = Duration::from_millis(settings.upstream_timeout_ms);
        let deadline = self.now_micros() + timeout.as_micros() as u64;
        let response = self
            .within(timeout, self.upstream().send(request))
            .await?
            .map_err(|e| bad(param, format!("fetch failed: {e}")))?;
        if !response.status().is_success() {
            return Err(bad(
                param,
                format!(
                    "the image server answered HTTP {}",
                    response.status().as_u16()
                ),
            ));
        }
        let mime = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        if !mime.starts_with("image/") {
            return Err(bad(param, format!("not an image (content type `{mime}`)")));
        }
        let body = self
            .read_body(
                response.into_body(),
                deadline,
                settings.image_max_bytes,
                None,
            )
            .await
            .map_err(|e| match e {
                GatewayError::Upstream(m) => bad(param, m),
                other => other,
            })?;
        Ok(format!(
            "data:{mime};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&body)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_hosts() {
        for h in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "[::1]",
            "localhost",
            "foo.internal",
            "100.64.0.1",
            "[fd00::1]",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_private_host(h), "{h}");
        }
        for h in [
            "8.8.8.8",
            "example.com",
            "[2606:4700::1]",
            "upload.wikimedia.org",
        ] {
            assert!(!is_private_host(h), "{h}");
        }
    }
}
