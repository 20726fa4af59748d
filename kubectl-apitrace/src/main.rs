//! `kubectl apitrace`: a time-boxed, per-request view of API traffic in an Istio
//! mesh. `main` parses the command line, runs it, and prints the error chain
//! once; everything else lives in the modules.

use std::process::ExitCode;

use apitrace_cluster::error_text::error_chain;
use kubectl_apitrace::{
    args::{self, ClusterArgs, Command},
    cluster, demo, output, replay,
};

/// The join holds each call's events for about a second (until the sidecar
/// flushes its access log) and frees them when the call is printed, long after
/// they left the cache. glibc's free pays for that in cache misses on every
/// chunk header and neighbour it consolidates with; mimalloc frees into a
/// per-page list and keeps the join faster (BENCHMARKS.md, the join). Only
/// over glibc: elsewhere the system's allocator is not glibc's, and
/// mimalloc's macOS build needs the SDK's CommonCrypto headers, which a cross
/// build from Linux does not have.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = args::parse();
    let result = match cli.command {
        Some(command) => run(command, cli.cluster),
        None => cluster::trace(cli.trace, cli.cluster),
    };
    match result {
        Ok(code) => code,
        // A reader that went away (`| head`) is not an error of ours.
        Err(error) if output::is_closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, on: ClusterArgs) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo(args) => demo::run(args),
        Command::Join(args) => replay::run(args),
        Command::Check(args) => cluster::check(args, on),
        Command::Cleanup(args) => cluster::cleanup(args, on),
        Command::Version(args) => cluster::version(args, on),
        Command::Completion(args) => {
            args::completion(args.shell, &mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
