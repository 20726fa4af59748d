//! What an `Authorization` header says about the caller, without the secret.

use apitrace_proto::AuthInfo;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// Credentials longer than this are fingerprinted but not decoded: a JWT this
/// large is not one a client sends, and decoding it would cost unbounded memory
/// inside Envoy.
pub const MAX_DECODED_TOKEN_LEN: usize = 16 * 1024;

/// Describes the value of an `Authorization` header. `show_secret` adds the raw
/// credentials; without it, nothing from which the token (or its signature)
/// could be rebuilt is included.
pub fn describe(header_value: &str, show_secret: bool) -> AuthInfo {
    let header_value = header_value.trim();
    let (scheme, credentials) = match header_value.split_once(char::is_whitespace) {
        Some((scheme, rest)) => (scheme, rest.trim_start()),
        None => ("", header_value),
    };
    let mut info = AuthInfo {
        scheme: scheme.to_owned(),
        fingerprint: fingerprint(credentials),
        ..AuthInfo::default()
    };
    if show_secret {
        info.token = credentials.to_owned();
    }
    if scheme.eq_ignore_ascii_case("bearer") || looks_like_jws(credentials) {
        match decode_jwt(credentials) {
            Ok(Some((header, claims))) => {
                info.jwt_header_json = header;
                info.jwt_claims_json = claims;
            }
            Ok(None) => {}
            Err(error) => info.decode_error = error.to_owned(),
        }
    }
    info
}

/// `sha256:<hex>` of the credentials.
pub fn fingerprint(credentials: &str) -> String {
    let digest = Sha256::digest(credentials.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest {
        out.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(byte & 0x0f), 16).unwrap_or('0'));
    }
    out
}

fn looks_like_jws(credentials: &str) -> bool {
    credentials.starts_with("eyJ") && credentials.matches('.').count() == 2
}

/// The decoded header and claims of a compact JWS, re-serialised as compact
/// JSON. `Ok(None)` for opaque bearer tokens (no dots), which are not JWTs.
fn decode_jwt(token: &str) -> Result<Option<(String, String)>, &'static str> {
    if !token.contains('.') {
        return Ok(None);
    }
    if token.len() > MAX_DECODED_TOKEN_LEN {
        return Err("token too long to decode");
    }
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => return Err("encrypted JWT (JWE): claims are not readable"),
        _ => return Err("not a JWT: expected three dot-separated parts"),
    }
    let header = decode_json_object(parts[0]).map_err(|e| match e {
        SegmentError::Base64 => "JWT header is not base64url",
        SegmentError::Json => "JWT header is not a JSON object",
    })?;
    let claims = decode_json_object(parts[1]).map_err(|e| match e {
        SegmentError::Base64 => "JWT claims are not base64url",
        SegmentError::Json => "JWT claims are not a JSON object",
    })?;
    Ok(Some((header, claims)))
}

enum SegmentError {
    Base64,
    Json,
}

fn decode_json_object(segment: &str) -> Result<String, SegmentError> {
    // RFC 7515 says unpadded base64url; some issuers pad anyway.
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment.trim_end_matches('='))
        .map_err(|_| SegmentError::Base64)?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| SegmentError::Json)?;
    if !value.is_object() {
        return Err(SegmentError::Json);
    }
    serde_json::to_string(&value).map_err(|_| SegmentError::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn jwt() -> String {
        format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#),
            b64(
                r#"{"iss":"https://issuer.example","sub":"alice","aud":["orders"],"exp":1900000000,"scope":"orders.read"}"#
            ),
            "c2lnbmF0dXJlLWJ5dGVz"
        )
    }

    #[test]
    fn bearer_jwt_is_decoded_and_the_secret_stays_out() {
        let token = jwt();
        let info = describe(&format!("Bearer {token}"), false);
        assert_eq!(info.scheme, "Bearer");
        let claims: serde_json::Value = serde_json::from_str(&info.jwt_claims_json).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"][0], "orders");
        let header: serde_json::Value = serde_json::from_str(&info.jwt_header_json).unwrap();
        assert_eq!(header["kid"], "k1");
        assert_eq!(info.token, "");
        assert_eq!(info.fingerprint, fingerprint(&token));
        assert!(info.decode_error.is_empty());
        let everything = format!("{info:?}");
        assert!(!everything.contains("c2lnbmF0dXJlLWJ5dGVz"));
        assert!(!everything.contains(&token));
    }

    #[test]
    fn opting_in_carries_the_raw_credentials() {
        let token = jwt();
        assert_eq!(describe(&format!("Bearer {token}"), true).token, token);
    }

    #[test]
    fn fingerprint_is_sha256_hex() {
        // sha256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            fingerprint("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn bad_base64_is_reported_not_fatal() {
        let info = describe("Bearer eyJ!!!.eyJhbGciOiJub25lIn0.sig", false);
        assert_eq!(info.decode_error, "JWT header is not base64url");
        assert!(info.jwt_claims_json.is_empty());
        assert!(info.fingerprint.starts_with("sha256:"));
    }

    #[test]
    fn claims_that_are_not_an_object_are_reported() {
        let token = format!("{}.{}.x", b64(r#"{"alg":"none"}"#), b64("[1,2]"));
        let info = describe(&format!("Bearer {token}"), false);
        assert_eq!(info.decode_error, "JWT claims are not a JSON object");
    }

    #[test]
    fn opaque_bearer_and_basic_are_fingerprinted_only() {
        let opaque = describe("Bearer 8f2a1c", false);
        assert_eq!(opaque.scheme, "Bearer");
        assert!(opaque.decode_error.is_empty() && opaque.jwt_claims_json.is_empty());
        let basic = describe("Basic YWxhZGRpbjpvcGVuc2VzYW1l", false);
        assert_eq!(basic.scheme, "Basic");
        assert!(basic.jwt_claims_json.is_empty() && basic.decode_error.is_empty());
        assert_eq!(basic.fingerprint, fingerprint("YWxhZGRpbjpvcGVuc2VzYW1l"));
    }

    #[test]
    fn jwe_and_oversized_tokens_are_not_decoded() {
        let jwe = describe("Bearer a.b.c.d.e", false);
        assert_eq!(
            jwe.decode_error,
            "encrypted JWT (JWE): claims are not readable"
        );
        let huge = format!("eyJ{}.e30.x", "A".repeat(MAX_DECODED_TOKEN_LEN));
        assert_eq!(
            describe(&format!("Bearer {huge}"), false).decode_error,
            "token too long to decode"
        );
    }

    #[test]
    fn padded_segments_are_accepted() {
        let token = format!("{}==.{}.x", b64(r#"{"alg":"none"}"#), b64(r#"{"a":1}"#));
        assert_eq!(
            describe(&format!("Bearer {token}"), false).jwt_claims_json,
            r#"{"a":1}"#
        );
    }
}
