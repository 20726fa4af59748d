//! The raw event decoder, on ring-buffer bytes: a record that announces more
//! payload than it carries must be refused, never read past.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if let Some(event) = apitrace_tc_event::TcEvent::decode(bytes) {
        assert!(event.head.len() <= bytes.len());
    }
});
