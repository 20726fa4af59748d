//! The client pod's credentials: a JWT shaped like one an identity provider
//! issues. The demo has no issuer, so the signature is random bytes; what
//! matters is that the filter decodes the claims and never lets the signature
//! out.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

pub fn demo_token(now_unix: u64) -> String {
    let header = r#"{"alg":"RS256","kid":"apitrace-demo","typ":"JWT"}"#;
    let claims = serde_json::json!({
        "iss": "https://issuer.apitrace.demo",
        "sub": "alice",
        "aud": "orders",
        "scope": "orders.read orders.write",
        "iat": now_unix,
        "exp": now_unix + 3600,
    });
    let mut signature = [0u8; 64];
    // Without randomness the signature is zeros, which serves the demo as well.
    let _ = getrandom::fill(&mut signature);
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_a_compact_jws_with_readable_claims() {
        let token = demo_token(1_700_000_000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["exp"], 1_700_003_600);
    }
}
