//! `apitrace-bench`: each of the project's performance figures measured next to
//! its peer's, in one run, on this host (root, Linux). `cargo xtask bench`
//! builds it for release and runs it.
//!
//! Every measurement repeats and reports the median and the spread (lowest to
//! highest). The tables go to stdout as Markdown (they are what BENCHMARKS.md
//! records) and the raw numbers to a JSON file.

mod e2e;
mod pods;
mod report;
mod sidecar;
mod stats;
mod tc;
mod wasm;

use std::{path::PathBuf, process::ExitCode};

use report::Report;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("apitrace-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let option = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let probe = option("--probe").map(PathBuf::from).ok_or_else(|| {
        anyhow::anyhow!("--probe PATH is required: the apitrace-probe binary to measure")
    })?;
    let out =
        option("--out").map_or_else(|| PathBuf::from("target/bench/results.json"), PathBuf::from);
    let repeats: usize = option("--repeats").map_or(Ok(3), |n| n.parse())?;
    let seconds: u64 = option("--seconds").map_or(Ok(5), |n| n.parse())?;
    let envoy = option("--envoy")
        .or_else(|| std::env::var("APITRACE_ENVOY").ok())
        .map(PathBuf::from)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--envoy PATH (or APITRACE_ENVOY) is required: the Envoy the WASM benchmark runs"
            )
        })?;
    // target/<profile>/apitrace-probe: the guest build is under target/.
    let target_dir = probe
        .parent()
        .and_then(|profile| profile.parent())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--probe {} is not under a target directory",
                probe.display()
            )
        })?;
    if !nix_is_root() {
        anyhow::bail!("the benchmarks build pods and attach eBPF programs: run them as root");
    }

    let mut report = Report::new();
    let only = option("--only");
    if let Some(only) = &only
        && !["tc", "wasm", "e2e"].contains(&only.as_str())
    {
        anyhow::bail!(
            "--only {only:?} is not a benchmark here: use tc, wasm or e2e (`cargo xtask bench --only join` runs the join's)"
        );
    }
    if only.as_deref().is_none_or(|only| only == "tc") {
        report.add(tc::run(&probe, repeats, seconds)?);
    }
    if only.as_deref().is_none_or(|only| only == "wasm") {
        report.add(wasm::run(
            &probe,
            &envoy,
            &sidecar::filter_module(target_dir),
            repeats,
            seconds,
        )?);
    }
    if only.as_deref().is_none_or(|only| only == "e2e") {
        let seconds: u64 = option("--e2e-seconds").map_or(Ok(60), |n| n.parse())?;
        let speaks = match option("--e2e-protocol").as_deref() {
            None | Some("http1") => sidecar::Speaks::Http1,
            Some("grpc") => sidecar::Speaks::Grpc,
            Some(other) => anyhow::bail!(
                "--e2e-protocol {other:?} is not one the end-to-end benchmark speaks: use http1 (the default) or grpc"
            ),
        };
        report.add(e2e::run(
            &probe,
            &envoy,
            &sidecar::filter_module(target_dir),
            repeats,
            seconds,
            speaks,
        )?);
    }
    print!("{}", report.markdown());
    report.write_json(&out)?;
    eprintln!("raw numbers: {}", out.display());
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
