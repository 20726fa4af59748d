//! The probe's handling of what a sidecar streams to its access-log service:
//! any bytes as a `StreamAccessLogsMessage`, then its entries normalised, as
//! the first message of a stream and as a later one. Never a panic.
#![no_main]

use apitrace_probe::als::{Reporter, entries};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use prost::Message as _;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(message) = StreamAccessLogsMessage::decode(bytes) else {
        return;
    };
    let mut reporter = Reporter::default();
    let first = entries(&message, &mut reporter).count();
    let again = entries(&message, &mut reporter).count();
    assert_eq!(first, again);
});
