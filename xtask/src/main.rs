//! `cargo xtask`: the project's commands, so that a fresh machine needs nothing
//! but this repository and a Rust toolchain. Each command is a module with its
//! options and its `run` (the layout of aya's xtask), and the helpers every
//! command uses (the workspace, cargo, running a command) are in `shell`.
//!
//! - `setup`: install what the build, the demo and the tests need (Debian,
//!   root), each piece only when it is missing, so a second run does nothing.
//! - `build`: the CLI and the probe, with the probe's embedded eBPF object and
//!   WASM module.
//! - `demo [ARGS]`: setup, build, then `kubectl-apitrace demo ARGS`.
//! - `test`: setup, build, formatting, lints, and every test, including the
//!   ones that run Envoy, the filter and the TC program for real.
//! - `fixtures`: record the golden sessions in `tests/fixtures` from the real
//!   demo.
//! - `fuzz [SECONDS]`: each fuzz target in fuzz/ for SECONDS.
//! - `bench [--only tc|wasm|e2e|join] [ARGS]`: every benchmark next to its
//!   peer (`apitrace-bench`, then the join's criterion benchmark).
//! - `release [--platform OS/ARCH]`: the probe image (OCI, linux/amd64 and
//!   linux/arm64) and the CLI's archive for every platform, with the krew
//!   manifest over them, in `target/dist`.

mod bench;
mod build;
mod demo;
mod fixtures;
mod fuzz;
mod krew;
mod platforms;
mod release;
mod setup;
mod shell;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what the build, the demo and the tests need (Debian, root).
    Setup,
    /// Build the CLI and the probe.
    Build(build::Options),
    /// Set up, build and run `kubectl-apitrace demo ARGS`.
    Demo(demo::Options),
    /// Set up, build, and run formatting, lints and every test.
    Test,
    /// Set up, build for release, and run the benchmarks (root); results in target/bench.
    Bench(bench::Options),
    /// Record the golden sessions in tests/fixtures from the real demo (root).
    Fixtures,
    /// Build the probe image and every platform's archive into target/dist, and write krew/apitrace.yaml.
    Release(release::Options),
    /// Run each fuzz target for SECONDS.
    Fuzz(fuzz::Options),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::run().map(|_| ()),
        Command::Build(options) => build::run(&options),
        Command::Demo(options) => demo::run(&options),
        Command::Test => test::run(),
        Command::Bench(options) => bench::run(&options),
        Command::Fixtures => fixtures::run(),
        Command::Release(options) => release::run(&options, release::Manifest::CheckedIn),
        Command::Fuzz(options) => fuzz::run(&options),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `demo` and `bench` hand every argument on as it is, flags and `--help`
    /// among them, as the commands did before they were clap subcommands.
    #[test]
    fn demo_and_bench_pass_their_arguments_on() {
        let parsed = Cli::try_parse_from(["cargo xtask", "demo", "--requests", "3", "--help"])
            .expect("demo takes any arguments");
        let Command::Demo(options) = parsed.command else {
            panic!("parsed as {:?}", parsed.command);
        };
        assert_eq!(options.args, ["--requests", "3", "--help"]);
        let parsed = Cli::try_parse_from(["cargo xtask", "bench", "--only", "join"])
            .expect("bench takes any arguments");
        let Command::Bench(options) = parsed.command else {
            panic!("parsed as {:?}", parsed.command);
        };
        assert_eq!(options.args, ["--only", "join"]);
    }
}
