//! `cargo xtask test`: set up, build, and run formatting, lints, the release
//! (every platform's archive and the probe image, which the integration tests
//! run under qemu, wine and runc), every unit and integration test (the ones
//! that run Envoy, the filter and the TC program for real among them), and the
//! fuzz targets for 10 s each.

use crate::{
    build, fuzz, release, setup,
    shell::{self, cargo, step},
};

pub fn run() -> anyhow::Result<()> {
    let installed = setup::run()?;
    build::run(&build::Options { release: false })?;
    step("test", "formatting");
    shell::run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // The fuzz targets are a workspace of their own, which `--all` leaves out.
    shell::run(cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"]))?;
    step("test", "lints");
    shell::run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    release::run(&release::Options::default(), release::Manifest::DistOnly)?;
    step("test", "unit and integration tests");
    shell::run(
        cargo()
            .args(["test", "--workspace"])
            .env("APITRACE_ENVOY", &installed.envoy)
            .env("APITRACE_ISTIO_CRDS", &installed.istio_crds),
    )?;
    step("test", "fuzz targets, 10 s each");
    fuzz::run(&fuzz::Options { seconds: 10 })
}
