//! The admin web UI, served by the core itself at `/ui/` on every platform.
//!
//! The UI is a small single-page app (sources in the top-level `ui/`,
//! built by `ui/build.mjs` into `ui/dist/`, committed) whose files are
//! compiled into the core by [`assets`], each as it is, gzip and brotli.
//! It talks to the admin API with the session cookie of [`session`].
//!
//! | path               | answer |
//! |--------------------|--------|
//! | `/`                | 308 to `/ui/` |
//! | `/ui`              | 308 to `/ui/` |
//! | `/ui/`             | the entry HTML: `Cache-Control: no-cache`, `ETag` (304 on `If-None-Match`) |
//! | `/ui/assets/NAME`  | a content-hashed asset: `Cache-Control: public, max-age=31536000, immutable` |
//!
//! Every UI answer carries [`SECURITY_HEADERS`]: a strict CSP (scripts,
//! styles, images and requests only from the gateway's own origin; no
//! inline script; no framing), `nosniff` and `no-referrer`. Bodies are
//! sent brotli or gzip when the client accepts it (`Vary: Accept-Encoding`).

pub mod assets;
pub mod session;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::gateway::{Response, ResponseBody};
use crate::wire::error::GatewayError;

/// What a `/` or `/ui…` path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UiRoute {
    /// `/` and `/ui`: redirect to `/ui/`.
    Redirect,
    /// `/ui/…`: an asset by path (unknown ones are a 404).
    Asset(String),
}

/// The headers every UI answer carries.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
];

/// Matches the UI's paths; `Ok(None)` for any other path.
pub fn route(method: &Method, path: &str) -> Result<Option<UiRoute>, GatewayError> {
    let r = if path == "/" || path == "/ui" {
        UiRoute::Redirect
    } else if path.starts_with("/ui/") {
        UiRoute::Asset(path.to_owned())
    } else {
        return Ok(None);
    };
    if *method == Method::GET || *method == Method::HEAD {
        Ok(Some(r))
    } else {
        Err(GatewayError::MethodNotAllowed)
    }
}

/// Which stored encoding to send for this `Accept-Encoding`.
fn pick_encoding(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| {
            let mut it = part.split(';');
            let name = it.next()?.trim().to_ascii_lowercase();
            let refused = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (!refused).then_some(name)
        })
        .collect::<Vec<_>>();
    let has = |n: &str| accept.iter().any(|a| a == n);
    if has("br") {
        Some("br")
    } else if has("gzip") || has("*") {
        Some("gzip")
    } else {
        None
    }
}

fn with_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut r = http::Response::new(ResponseBody::Full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    with_headers(r)
}

/// Serves a UI route.
pub fn serve(route: UiRoute, method: &Method, headers: &HeaderMap) -> Response {
    let path = match route {
        UiRoute::Redirect => {
            let mut r = plain(StatusCode::PERMANENT_REDIRECT, "");
            r.headers_mut()
                .insert(http::header::LOCATION, HeaderValue::from_static("/ui/"));
            return r;
        }
        UiRoute::Asset(path) => path,
    };
    let Some(asset) = assets::ASSETS.iter().find(|a| a.path == path) else {
        return plain(StatusCode::NOT_FOUND, "Not found.\n");
    };
    let etag = HeaderValue::from_static(asset.etag);
    let cache = if asset.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let not_modified = headers
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == asset.etag
        });
    let (status, body, encoding) = if not_modified {
        (StatusCode::NOT_MODIFIED, &[][..], None)
    } else {
        match pick_encoding(headers) {
            Some("br") => (StatusCode::OK, asset.brotli, Some("br")),
            Some(_) => (StatusCode::OK, asset.gzip, Some("gzip")),
            None => (StatusCode::OK, asset.raw, None),
        }
    };
    let len = body.len();
    let body = if *method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(body)
    };
    let mut r = http::Response::new(ResponseBody::Full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(http::header::ETAG, etag);
    h.insert(
        http::header::VARY,
        HeaderValue::from_static("Accept-Encoding"),
    );
    if let Some(e) = encoding {
        h.insert(http::header::CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    if *method == Method::HEAD && status == StatusCode::OK {
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    with_headers(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(&Method::GET, "/").unwrap(), Some(UiRoute::Redirect));
        assert_eq!(
            route(&Method::GET, "/ui/").unwrap(),
            Some(UiRoute::Asset("/ui/".into()))
        );
        assert!(route(&Method::POST, "/ui/").is_err());
        assert_eq!(route(&Method::GET, "/v1/models").unwrap(), None);
    }

    #[test]
    fn entry_and_assets() {
        let mut h = HeaderMap::new();
        h.insert("accept-encoding", "gzip, deflate, br".parse().unwrap());
        let r = serve(UiRoute::Asset("/ui/".into()), &Method::GET, &h);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-encoding"], "br");
        assert_eq!(r.headers()["cache-control"], "no-cache");
        assert!(r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'"));
        let etag = r.headers()["etag"].clone();
        h.insert("if-none-match", etag);
        assert_eq!(
            serve(UiRoute::Asset("/ui/".into()), &Method::GET, &h).status(),
            StatusCode::NOT_MODIFIED
        );
        for a in assets::ASSETS.iter().filter(|a| a.immutable) {
            let r = serve(
                UiRoute::Asset(a.path.into()),
                &Method::GET,
                &HeaderMap::new(),
            );
            assert_eq!(
                r.headers()["cache-control"],
                "public, max-age=31536000, immutable"
            );
            assert!(r.headers().get("content-encoding").is_none());
        }
        let missing = serve(UiRoute::Asset("/ui/nope".into()), &Method::GET, &h);
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(missing.headers().contains_key("content-security-policy"));
    }

    #[test]
    fn encodings() {
        let mut h = HeaderMap::new();
        assert_eq!(pick_encoding(&h), None);
        h.insert("accept-encoding", "gzip;q=1, br;q=0".parse().unwrap());
        assert_eq!(pick_encoding(&h), Some("gzip"));
    }
}
