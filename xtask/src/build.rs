//! `cargo xtask build [--release]`: the CLI and the probe, with the probe's
//! embedded eBPF object and WASM module.

use crate::shell::{self, cargo, step};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Build for release (the probe image and the e2e run use these).
    #[arg(long)]
    pub release: bool,
}

/// The CLI and the probe; `--release` for the probe image and the e2e run.
pub fn run(options: &Options) -> anyhow::Result<()> {
    step(
        "build",
        "kubectl-apitrace and apitrace-probe (with its eBPF object and WASM module)",
    );
    let mut command = cargo();
    command.args([
        "build",
        "--package",
        "kubectl-apitrace",
        "--package",
        "apitrace-probe",
    ]);
    if options.release {
        command.arg("--release");
    }
    shell::run(&mut command)
}
