//! The HTTP head parser the probe runs on what the TC program copied off the
//! wire: any bytes, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = apitrace_probe::http_head::parse(bytes);
});
