//! AWS Signature Version 4 for one JSON POST, on `sha2` alone (so that the
//! core still builds for wasm: no AWS SDK, no `ring`).
//!
//! What is signed: `content-type`, `host`, `x-amz-date` and, with temporary
//! credentials, `x-amz-security-token`. The path is sent percent-encoded
//! once (the model id's `:` is `%3A`) and, as every AWS service but S3
//! expects, encoded a second time in the canonical request (`%253A`).

use sha2::{Digest, Sha256};

/// The service name in the credential scope: Bedrock Runtime signs as `bedrock`.
pub const SERVICE: &str = "bedrock";

/// The credentials a provider signs with.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    // Never print the secret or the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA256 (RFC 2104) over `sha2`: 64-byte blocks.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Percent-encodes everything but RFC 3986's unreserved characters
/// (`A-Z a-z 0-9 - _ . ~`), as SigV4's `UriEncode` does.
pub fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical URI of a path as sent (already encoded once): each segment
/// encoded again, slashes kept.
pub fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.split('/')
        .map(uri_encode)
        .collect::<Vec<_>>()
        .join("/")
}

/// `20240620T101112Z` and `20240620` for Unix seconds.
pub fn amz_dates(now_secs: u64) -> (String, String) {
    let secs = now_secs as i64;
    let (y, m, d) = crate::wire::time::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let date = format!("{y:04}{m:02}{d:02}");
    let stamp = format!(
        "{date}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    (stamp, date)
}

/// What a signed request must carry besides its body.
pub struct Signed {
    /// `(name, value)`: `x-amz-date`, maybe `x-amz-security-token`, `authorization`.
    pub headers: Vec<(&'static str, String)>,
}

/// Signs `POST {path}` to `host` with a JSON body. `host` is the `Host`
/// header the HTTP client will send (the authority, default port omitted).
pub fn sign_post(
    creds: &Credentials,
    region: &str,
    host: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
    now_secs: u64,
) -> Signed {
    let (amz_date, date) = amz_dates(now_secs);
    // Canonical headers: lower-case names, sorted, one `name:value\n` each.
    let mut canonical_headers = vec![
        ("content-type", content_type.trim().to_owned()),
        ("host", host.trim().to_owned()),
        ("x-amz-date", amz_date.clone()),
    ];
    if let Some(t) = &creds.session_token {
        canonical_headers.push(("x-amz-security-token", t.trim().to_owned()));
    }
    canonical_headers.sort_by(|a, b| a.0.cmp(b.0));
    let signed_headers = canonical_headers
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(";");
    let mut canonical = format!("POST\n{}\n\n", canonical_uri(path));
    for (k, v) in &canonical_headers {
        canonical.push_str(k);
        canonical.push(':');
        canonical.push_str(v);
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&signed_headers);
    canonical.push('\n');
    canonical.push_str(&hex(&Sha256::digest(body)));

    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let k_date = hmac_sha256(
        format!("AWS4{}", creds.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, SERVICE.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    let signature = hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()));

    let mut headers = vec![("x-amz-date", amz_date)];
    if let Some(t) = &creds.session_token {
        headers.push(("x-amz-security-token", t.clone()));
    }
    headers.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    Signed { headers }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_rfc4231_case_2() {
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn dates_and_encoding() {
        assert_eq!(
            amz_dates(1_440_938_160),
            ("20150830T123600Z".into(), "20150830".into())
        );
        assert_eq!(
            canonical_uri("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"),
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/converse"
        );
        assert_eq!(uri_encode("a:b/c d"), "a%3Ab%2Fc%20d");
    }

    /// AWS's published example (sigv4 test suite, `post-x-www-form-urlencoded`
    /// shape): the signing key derivation and signature for the
    /// documentation credentials.
    #[test]
    fn signing_key_matches_aws_example() {
        // From the SigV4 documentation: secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,
        // date 20150830, us-east-1, iam -> this signing key.
        let k_date = hmac_sha256(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20150830");
        let k_region = hmac_sha256(&k_date, b"us-east-1");
        let k_service = hmac_sha256(&k_region, b"iam");
        let k_signing = hmac_sha256(&k_service, b"aws4_request");
        assert_eq!(
            hex(&k_signing),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn authorization_shape() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            session_token: Some("tok".into()),
        };
        let s = sign_post(
            &creds,
            "us-east-1",
            "bedrock-runtime.us-east-1.amazonaws.com",
            "/model/m%3A0/converse",
            "application/json",
            b"{}",
            1_440_938_160,
        );
        let auth = &s.headers.last().unwrap().1;
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="));
        assert_eq!(auth.rsplit('=').next().unwrap().len(), 64);
        assert!(s
            .headers
            .iter()
            .any(|(k, v)| *k == "x-amz-security-token" && v == "tok"));
    }
}
