//! The client pod's credentials: a JWT shaped like one an identity provider
//! (Keycloak, Entra ID, Okta) issues, about 1.3 KB with its groups and roles.
//! Its size matters: on the hop from the sidecar to the app, the
//! `x-request-id` Envoy added comes after it, well past the first KiB of the
//! request. The demo has no issuer, so the signature is random bytes; what
//! matters is that the filter decodes the claims and never lets the signature
//! out.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

pub fn demo_token(now_unix: u64) -> String {
    let header = r#"{"alg":"RS256","kid":"apitrace-demo","typ":"JWT"}"#;
    let claims = serde_json::json!({
        "iss": "https://issuer.apitrace.demo/realms/shop",
        "sub": "alice",
        "aud": ["orders", "account"],
        "azp": "storefront",
        "scope": "openid profile email orders.read orders.write",
        "iat": now_unix,
        "exp": now_unix + 3600,
        "jti": "b6c5d9f1-3c1e-4e0f-9a57-5c0f2d7d1e44",
        "sid": "2f6b1d7e-8a0c-4d1b-b0b8-1d0c8f4e9a21",
        "email": "alice@example.com",
        "email_verified": true,
        "name": "Alice Example",
        "preferred_username": "alice",
        "groups": ["/shop/customers", "/shop/beta-testers", "/shop/region-eu"],
        "realm_access": { "roles": ["offline_access", "uma_authorization", "customer"] },
        "resource_access": {
            "orders": { "roles": ["orders:read", "orders:write", "orders:cancel"] },
            "account": { "roles": ["manage-account", "view-profile"] },
        },
    });
    let mut signature = [0u8; 256];
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
        // Large enough to push the sidecar's x-request-id past the first KiB.
        assert!(token.len() > 1024, "{}", token.len());
    }
}
