//! Builds the TC program and the WASM filter and embeds them: the probe is the
//! one artefact a node needs, and the module it serves to sidecars always
//! matches the probe that receives its events.

use std::{fs, path::Path, process::ExitCode};

use apitrace_guest_build::{Guest, GuestKind, build};
use sha2::{Digest as _, Sha256};

const TC_PROGRAM: Guest = Guest {
    package: "apitrace-probe-ebpf",
    artefact: "apitrace-tc",
    kind: GuestKind::Ebpf,
    sources: &["probe-ebpf", "crates/tc-event"],
};

const WASM_FILTER: Guest = Guest {
    package: "apitrace-wasm-filter",
    artefact: "apitrace_wasm_filter.wasm",
    kind: GuestKind::Wasm,
    sources: &["wasm-filter", "crates/proto"],
};

fn main() -> ExitCode {
    match embed() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn embed() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::env::var("OUT_DIR")?;
    let out_dir = Path::new(&out_dir);
    let tc = build(TC_PROGRAM)?;
    fs::copy(&tc, out_dir.join("apitrace-tc.o"))?;
    let wasm = build(WASM_FILTER)?;
    let module = fs::read(&wasm)?;
    fs::write(out_dir.join("apitrace-filter.wasm"), &module)?;
    // The module's URL carries its digest, so that a sidecar's cache (keyed by
    // URL) never serves a module of another build.
    let digest = Sha256::digest(&module);
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    println!("cargo:rustc-env=APITRACE_WASM_SHA256={hex}");
    Ok(())
}
