//! `cargo xtask bench [--only tc|wasm|e2e|join] [ARGS]`: every benchmark next
//! to its peer (`apitrace-bench`, then the join's criterion benchmark).

use std::process::Command;

use crate::{
    setup,
    shell::{self, cargo, step, workspace},
};

#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct Options {
    /// What `apitrace-bench` is given, as it is: `--only join` runs only the
    /// join's criterion benchmark, any other `--only` leaves it out.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// The benchmarks, built for release: each figure next to its peer's, printed
/// as the tables BENCHMARKS.md records, raw numbers in target/bench.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let args = &options.args;
    let only = args
        .iter()
        .position(|arg| arg == "--only")
        .and_then(|index| args.get(index + 1))
        .map(String::as_str);
    if only == Some("join") {
        return bench_join();
    }
    let installed = setup::run()?;
    step("bench", "building for release");
    shell::run(cargo().args([
        "build",
        "--release",
        "--package",
        "apitrace-probe",
        "--package",
        "apitrace-bench",
    ]))?;
    let release = workspace().join("target/release");
    shell::run(
        Command::new(release.join("apitrace-bench"))
            .arg("--probe")
            .arg(release.join("apitrace-probe"))
            .arg("--out")
            .arg(workspace().join("target/bench/results.json"))
            .arg("--envoy")
            .arg(&installed.envoy)
            .args(args),
    )?;
    if only.is_none() {
        bench_join()?;
    }
    Ok(())
}

/// The join's benchmark (criterion, one core, no root): its throughput next to
/// the group-by-key floor, and its memory over 10 million events.
fn bench_join() -> anyhow::Result<()> {
    step("bench", "the join (criterion)");
    shell::run(cargo().args(["bench", "--package", "apitrace-join"]))
}
