//! The WASM filter's reading of an `Authorization` header, on any text: never
//! a panic, and without `--show-secrets` never the token nor its signature in
//! anything the filter sends.
#![no_main]

use apitrace_wasm_filter::auth::describe;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let header = String::from_utf8_lossy(bytes);
    let _ = describe(&header, true);
    let redacted = describe(&header, false);
    assert!(
        redacted.token.is_empty(),
        "the token was kept: {redacted:?}"
    );
    // A signature long enough not to turn up by chance elsewhere, and not
    // also part of the header or claims it signs.
    if let Some((signed, signature)) = header.trim().rsplit_once('.')
        && signature.len() >= 16
        && !signed.contains(signature)
    {
        // Not `decode_error`: it is always one of the filter's fixed messages
        // (a `&'static str`), which a crafted "signature" can quote but never
        // leak (fuzz/regressions/jwt holds the input that did).
        for field in [
            &redacted.scheme,
            &redacted.jwt_header_json,
            &redacted.jwt_claims_json,
            &redacted.fingerprint,
        ] {
            assert!(
                !field.contains(signature),
                "the signature leaked: {redacted:?}"
            );
        }
    }
});
