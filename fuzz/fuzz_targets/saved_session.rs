//! The saved-session reader (`kubectl apitrace join FILE`), on any file: every
//! entry is read or refused with an error, and reading stops after an error.
#![no_main]

use kubectl_apitrace::saved::SavedReader;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(reader) = SavedReader::new(std::path::Path::new("fuzzed.apitrace"), bytes) else {
        return;
    };
    let mut failed = false;
    for entry in reader {
        assert!(!failed, "an entry came after an error");
        failed = entry.is_err();
    }
});
