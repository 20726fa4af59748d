//! `--where EXPR`, on any text a user can type: it must parse or be refused
//! with an error naming where it went wrong, never panic, and a predicate
//! that parses must evaluate on a real record (the golden gRPC session's
//! first call) without panicking.
#![no_main]

use std::sync::LazyLock;

use apitrace_join::{CallRecord, predicate::Predicate};

static RECORD: LazyLock<CallRecord> = LazyLock::new(|| {
    let golden = include_str!("../../tests/fixtures/grpc.ndjson");
    serde_json::from_str(golden.lines().next().expect("a record")).expect("a call record")
});

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match Predicate::parse(text) {
        Ok(predicate) => {
            predicate.matches(&RECORD);
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
