//! The probe's reading of a batch the WASM filter posts: any bytes, never a
//! panic, and every event of a batch it accepts reported by the sender's pod,
//! whatever the payload claims.
#![no_main]

use apitrace_probe::ingest::read_batch;
use apitrace_proto::PodRef;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let sender = PodRef {
        namespace: "shop".into(),
        name: "web".into(),
    };
    if let Ok(batch) = read_batch(bytes, Some(&sender)) {
        assert!(
            batch
                .events
                .iter()
                .all(|event| event.reporter.as_ref() == Some(&sender))
        );
    }
});
