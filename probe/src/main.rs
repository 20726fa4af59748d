//! `apitrace-probe`: parse the command line, resolve it into a [`Config`], run.

use std::process::ExitCode;

use apitrace_cluster::error_text::error_chain;
use apitrace_netns::NetnsRef;
use apitrace_probe::{
    run::{Config, run},
    session::Session,
    tc,
};
use apitrace_proto::{
    PodRef, istio, ports,
    probe_args::{ProbeArgs, SESSION_TOKEN_ENV},
};
use clap::Parser;

/// Istio's own ports and the probe's: their traffic is the mesh talking to
/// itself, not API calls.
const INFRASTRUCTURE_PORTS: [&[u16]; 2] = [
    istio::INFRASTRUCTURE_PORTS,
    &[ports::SUBSCRIBE, ports::ACCESS_LOG, ports::HTTP],
];

/// The node agent of kubectl-apitrace. The CLI starts it; it is not meant to be
/// run by hand, but can be, to trace pods of a node.
#[derive(Debug, Parser)]
#[command(name = "apitrace-probe", version)]
struct Args {
    #[command(flatten)]
    probe: ProbeArgs,
    /// The secret subscribers and WASM filters must present.
    #[arg(long, env = SESSION_TOKEN_ENV, hide_env_values = true)]
    session_token: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match resolve(args).and_then(start) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("apitrace-probe: {}", error_chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn resolve(
    Args {
        probe,
        session_token,
    }: Args,
) -> anyhow::Result<Config> {
    let targets = probe
        .targets
        .iter()
        .map(|target| {
            let netns: NetnsRef = target
                .netns
                .parse()
                .map_err(|e| anyhow::anyhow!("--target {:?}: {e}", target.to_string()))?;
            Ok(tc::Target {
                pod: PodRef {
                    namespace: target.namespace.clone(),
                    name: target.name.clone(),
                },
                netns,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !probe.ring_bytes.is_power_of_two() || probe.ring_bytes < 4096 {
        anyhow::bail!(
            "--ring-bytes {} is not a power of two of at least 4096",
            probe.ring_bytes
        );
    }
    let node = match probe.node {
        Some(node) => node,
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    let mut ignored_ports = INFRASTRUCTURE_PORTS.concat();
    ignored_ports.extend(probe.ignored_ports);
    Ok(Config {
        session: Session::new(probe.session_id, session_token),
        node,
        targets,
        extra_peers: probe.peers,
        subscribe_listen: probe.subscribe_listen,
        access_log_listen: probe.access_log_listen,
        http_listen: probe.http_listen,
        deadline: probe.deadline,
        anchor: probe.lease,
        tc: tc::Options {
            interfaces: probe.interfaces,
            mode: probe.attach_mode,
            ring_bytes: probe.ring_bytes,
            ignored_ports,
        },
        hub_capacity: probe.hub_capacity,
    })
}

fn start(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config))?;
    Ok(())
}
