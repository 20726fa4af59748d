//! `apitrace-probe`: parse the command line, resolve it into a [`Config`], run.

use std::{net::IpAddr, net::SocketAddr, process::ExitCode, time::Duration};

use apitrace_cluster::error_text::error_chain;
use apitrace_netns::NetnsRef;
use apitrace_probe::{
    run::{AnchorRef, Config, run},
    session::Session,
    tc::{self, AttachMode},
};
use apitrace_proto::{PodRef, istio, ports};
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
    /// The session this probe serves.
    #[arg(long)]
    session_id: String,
    /// The secret subscribers and WASM filters must present.
    #[arg(long, env = "APITRACE_SESSION_TOKEN", hide_env_values = true)]
    session_token: String,
    /// The name of this node, as reported to the CLI.
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// A pod to trace, as NAMESPACE/NAME=NETNS, where NETNS is container:ID
    /// (found through /proc/<pid>/cgroup), pid:PID or netns:/path.
    #[arg(long = "target", value_name = "NAMESPACE/NAME=NETNS", required = true)]
    targets: Vec<String>,
    /// Another address allowed to send access logs and WASM events.
    #[arg(long = "peer", value_name = "IP")]
    peers: Vec<IpAddr>,
    #[arg(long, default_value_t = SocketAddr::from(([0; 16], ports::SUBSCRIBE)))]
    subscribe_listen: SocketAddr,
    #[arg(long, default_value_t = SocketAddr::from(([0; 16], ports::ACCESS_LOG)))]
    access_log_listen: SocketAddr,
    #[arg(long, default_value_t = SocketAddr::from(([0; 16], ports::HTTP)))]
    http_listen: SocketAddr,
    /// The session's anchor Lease, as NAMESPACE/NAME: when the CLI stops
    /// renewing it, the probe detaches and removes the session from the cluster
    /// (with the in-cluster credentials, or $KUBECONFIG's).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    lease: Option<String>,
    /// Exit after this long whatever happens (e.g. 10m): the session's time box.
    #[arg(long, value_parser = parse_deadline)]
    deadline: Duration,
    /// Pod interfaces to attach to.
    #[arg(long, value_delimiter = ',', default_value = "eth0,lo")]
    interfaces: Vec<String>,
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    attach_mode: AttachMode,
    /// Ring buffer size per pod, in bytes (a power of two, a multiple of the page size).
    #[arg(long, default_value_t = 1 << 20)]
    ring_bytes: u32,
    /// Ports whose traffic is not traced, in addition to Istio's and the probe's.
    #[arg(long = "ignore-port", value_delimiter = ',')]
    ignored_ports: Vec<u16>,
    /// Events buffered for a slow subscriber before the oldest are dropped (and
    /// counted). Each costs about 650 bytes while buffered: the default keeps a
    /// stalled subscriber's share of the probe's memory near 21 MiB.
    #[arg(long, default_value_t = 32768)]
    hub_capacity: usize,
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

fn resolve(args: Args) -> anyhow::Result<Config> {
    let targets = args
        .targets
        .iter()
        .map(|spec| parse_target(spec))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    if !args.ring_bytes.is_power_of_two() || args.ring_bytes < 4096 {
        anyhow::bail!(
            "--ring-bytes {} is not a power of two of at least 4096",
            args.ring_bytes
        );
    }
    let node = match args.node {
        Some(node) => node,
        None => nix::unistd::gethostname()?.to_string_lossy().into_owned(),
    };
    let anchor = args
        .lease
        .as_deref()
        .map(|lease| {
            lease
                .split_once('/')
                .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty())
                .map(|(namespace, name)| AnchorRef {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
                .ok_or_else(|| anyhow::anyhow!("--lease {lease:?} is not NAMESPACE/NAME"))
        })
        .transpose()?;
    let mut ignored_ports = INFRASTRUCTURE_PORTS.concat();
    ignored_ports.extend(args.ignored_ports);
    Ok(Config {
        session: Session::new(args.session_id, args.session_token),
        node,
        targets,
        extra_peers: args.peers,
        subscribe_listen: args.subscribe_listen,
        access_log_listen: args.access_log_listen,
        http_listen: args.http_listen,
        deadline: args.deadline,
        anchor,
        tc: tc::Options {
            interfaces: args.interfaces,
            mode: args.attach_mode,
            ring_bytes: args.ring_bytes,
            ignored_ports,
        },
        hub_capacity: args.hub_capacity,
    })
}

fn parse_deadline(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is not a duration: use a number and a unit, such as 10m"))
}

fn parse_target(spec: &str) -> Result<tc::Target, String> {
    let (pod, netns) = spec
        .split_once('=')
        .ok_or_else(|| format!("--target {spec:?}: expected NAMESPACE/NAME=NETNS"))?;
    let (namespace, name) = pod
        .split_once('/')
        .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty())
        .ok_or_else(|| format!("--target {spec:?}: {pod:?} is not NAMESPACE/NAME"))?;
    let netns: NetnsRef = netns
        .parse()
        .map_err(|e| format!("--target {spec:?}: {e}"))?;
    Ok(tc::Target {
        pod: PodRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
        netns,
    })
}

fn start(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(config))?;
    Ok(())
}
