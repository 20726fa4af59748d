//! The probe's command line: the contract between whoever starts a probe
//! (the cluster session's probe pods, the demo) and the probe itself.
//!
//! Both sides use [`ProbeArgs`]: the probe parses its command line into it
//! (it is a clap [`clap::Args`]), and a starter builds one and turns it into
//! arguments with [`ProbeArgs::to_args`], so a flag renamed on one side is a
//! compile error on the other, not a probe that refuses to start. The
//! session token is not among them: it goes in the environment
//! ([`SESSION_TOKEN_ENV`]), where `ps` on the node does not show it.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use crate::ports;

/// The environment variable that carries the session's token to the probe.
pub const SESSION_TOKEN_ENV: &str = "APITRACE_SESSION_TOKEN";
/// The environment variable the probe reads its node's name from (a pod
/// gets it from the downward API's `spec.nodeName`).
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// Where the probe listens unless told otherwise: every address (both
/// families), on its own ports.
const fn any_address(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)
}
const DEFAULT_SUBSCRIBE_LISTEN: SocketAddr = any_address(ports::SUBSCRIBE);
const DEFAULT_ACCESS_LOG_LISTEN: SocketAddr = any_address(ports::ACCESS_LOG);
const DEFAULT_HTTP_LISTEN: SocketAddr = any_address(ports::HTTP);
const DEFAULT_INTERFACES: [&str; 2] = ["eth0", "lo"];
const DEFAULT_RING_BYTES: u32 = 1 << 20;
const DEFAULT_HUB_CAPACITY: usize = 32768;

/// What a probe is told to do: which pods to trace, for which session, for
/// how long, and where to listen.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ProbeArgs {
    /// The session this probe serves.
    #[arg(long)]
    pub session_id: String,
    /// The name of this node, as reported to the CLI.
    #[arg(long, env = NODE_NAME_ENV)]
    pub node: Option<String>,
    /// A pod to trace, as NAMESPACE/NAME=NETNS, where NETNS is container:ID
    /// (found through /proc/<pid>/cgroup), pid:PID or netns:/path.
    #[arg(long = "target", value_name = "NAMESPACE/NAME=NETNS", required = true)]
    pub targets: Vec<ProbeTarget>,
    /// Another address allowed to send access logs and WASM events.
    #[arg(long = "peer", value_name = "IP")]
    pub peers: Vec<IpAddr>,
    #[arg(long, default_value_t = DEFAULT_SUBSCRIBE_LISTEN)]
    pub subscribe_listen: SocketAddr,
    #[arg(long, default_value_t = DEFAULT_ACCESS_LOG_LISTEN)]
    pub access_log_listen: SocketAddr,
    #[arg(long, default_value_t = DEFAULT_HTTP_LISTEN)]
    pub http_listen: SocketAddr,
    /// The session's anchor Lease, as NAMESPACE/NAME: when the CLI stops
    /// renewing it, the probe detaches and removes the session from the cluster
    /// (with the in-cluster credentials, or $KUBECONFIG's).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub lease: Option<LeaseRef>,
    /// Exit after this long whatever happens (e.g. 10m): the session's time box.
    #[arg(long, value_parser = parse_deadline)]
    pub deadline: Duration,
    /// Pod interfaces to attach to.
    #[arg(long, value_delimiter = ',', default_values = DEFAULT_INTERFACES)]
    pub interfaces: Vec<String>,
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,
    /// Ring buffer size per pod, in bytes (a power of two, a multiple of the page size).
    #[arg(long, default_value_t = DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,
    /// Ports whose traffic is not traced, in addition to Istio's and the probe's.
    #[arg(long = "ignore-port", value_delimiter = ',')]
    pub ignored_ports: Vec<u16>,
    /// Events buffered for a slow subscriber before the oldest are dropped (and
    /// counted). Each costs about 650 bytes while buffered: the default keeps a
    /// stalled subscriber's share of the probe's memory near 21 MiB.
    #[arg(long, default_value_t = DEFAULT_HUB_CAPACITY)]
    pub hub_capacity: usize,
}

impl ProbeArgs {
    /// Arguments for a probe of `session_id` tracing `targets` until
    /// `deadline`, everything else as the probe's defaults have it.
    pub fn new(session_id: String, targets: Vec<ProbeTarget>, deadline: Duration) -> Self {
        Self {
            session_id,
            node: None,
            targets,
            peers: Vec::new(),
            subscribe_listen: DEFAULT_SUBSCRIBE_LISTEN,
            access_log_listen: DEFAULT_ACCESS_LOG_LISTEN,
            http_listen: DEFAULT_HTTP_LISTEN,
            lease: None,
            deadline,
            interfaces: DEFAULT_INTERFACES.map(str::to_owned).to_vec(),
            attach_mode: AttachMode::Auto,
            ring_bytes: DEFAULT_RING_BYTES,
            ignored_ports: Vec::new(),
            hub_capacity: DEFAULT_HUB_CAPACITY,
        }
    }

    /// The command line that parses back into `self`: a flag only where it
    /// differs from the probe's default, so that a pod spec shows what the
    /// session chose.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--session-id".to_owned(),
            self.session_id.clone(),
            "--deadline".to_owned(),
            humantime::format_duration(self.deadline).to_string(),
        ];
        let mut flag = |name: &str, value: String| {
            args.push(format!("--{name}"));
            args.push(value);
        };
        if let Some(node) = &self.node {
            flag("node", node.clone());
        }
        for target in &self.targets {
            flag("target", target.to_string());
        }
        for peer in &self.peers {
            flag("peer", peer.to_string());
        }
        for (name, value, default) in [
            (
                "subscribe-listen",
                self.subscribe_listen,
                DEFAULT_SUBSCRIBE_LISTEN,
            ),
            (
                "access-log-listen",
                self.access_log_listen,
                DEFAULT_ACCESS_LOG_LISTEN,
            ),
            ("http-listen", self.http_listen, DEFAULT_HTTP_LISTEN),
        ] {
            if value != default {
                flag(name, value.to_string());
            }
        }
        if let Some(lease) = &self.lease {
            flag("lease", lease.to_string());
        }
        if self.interfaces != DEFAULT_INTERFACES {
            flag("interfaces", self.interfaces.join(","));
        }
        if self.attach_mode != AttachMode::Auto {
            flag("attach-mode", self.attach_mode.as_str().to_owned());
        }
        if self.ring_bytes != DEFAULT_RING_BYTES {
            flag("ring-bytes", self.ring_bytes.to_string());
        }
        if !self.ignored_ports.is_empty() {
            let ports: Vec<String> = self.ignored_ports.iter().map(u16::to_string).collect();
            flag("ignore-port", ports.join(","));
        }
        if self.hub_capacity != DEFAULT_HUB_CAPACITY {
            flag("hub-capacity", self.hub_capacity.to_string());
        }
        args
    }
}

fn parse_deadline(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is not a duration: use a number and a unit, such as 10m"))
}

/// How the probe attaches its TC programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// tcx where the kernel has it, netlink otherwise.
    Auto,
    Tcx,
    Netlink,
}

impl AttachMode {
    /// The value as the command line spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        }
    }
}

/// A pod to trace and where its network namespace is: `NAMESPACE/NAME=NETNS`.
/// NETNS is read by the probe (`container:ID`, `pid:PID`, `netns:/path`),
/// which is the one that can find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub namespace: String,
    pub name: String,
    pub netns: String,
}

impl fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}={}", self.namespace, self.name, self.netns)
    }
}

impl FromStr for ProbeTarget {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (pod, netns) = spec
            .split_once('=')
            .filter(|(_, netns)| !netns.is_empty())
            .ok_or_else(|| format!("{spec:?}: expected NAMESPACE/NAME=NETNS"))?;
        let (namespace, name) =
            namespaced(pod).ok_or_else(|| format!("{spec:?}: {pod:?} is not NAMESPACE/NAME"))?;
        Ok(Self {
            namespace,
            name,
            netns: netns.to_owned(),
        })
    }
}

/// The session's anchor Lease: `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for LeaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for LeaseRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (namespace, name) =
            namespaced(text).ok_or_else(|| format!("{text:?} is not NAMESPACE/NAME"))?;
        Ok(Self { namespace, name })
    }
}

/// `NAMESPACE/NAME`, both parts non-empty.
fn namespaced(text: &str) -> Option<(String, String)> {
    text.split_once('/')
        .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty())
        .map(|(namespace, name)| (namespace.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: ProbeArgs,
    }

    fn parse(args: &[String]) -> Result<ProbeArgs, clap::Error> {
        Command::try_parse_from(
            std::iter::once("apitrace-probe".to_owned()).chain(args.iter().cloned()),
        )
        .map(|command| command.args)
    }

    fn target(name: &str) -> ProbeTarget {
        ProbeTarget {
            namespace: "shop".into(),
            name: name.into(),
            netns: format!("container:{name}-0123abcd"),
        }
    }

    #[test]
    fn arguments_built_from_the_type_parse_back_into_it() {
        let minimal = ProbeArgs::new("5f3a".into(), vec![target("web")], Duration::from_secs(630));
        let every = ProbeArgs {
            node: Some("node-a".into()),
            targets: vec![target("web"), target("api")],
            peers: vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
            subscribe_listen: "127.0.0.1:1".parse().unwrap(),
            access_log_listen: "127.0.0.1:2".parse().unwrap(),
            http_listen: "[::1]:3".parse().unwrap(),
            lease: Some(LeaseRef {
                namespace: "apitrace-system".into(),
                name: "apitrace-5f3a".into(),
            }),
            interfaces: vec!["eth0".into()],
            attach_mode: AttachMode::Netlink,
            ring_bytes: 1 << 16,
            ignored_ports: vec![9090, 9091],
            hub_capacity: 7,
            ..minimal.clone()
        };
        for args in [minimal, every] {
            let line = args.to_args();
            assert_eq!(parse(&line).unwrap(), args, "{line:?}");
        }
    }

    #[test]
    fn a_target_or_lease_that_is_not_namespaced_is_refused_with_what_to_write() {
        for bad in ["web=container:1", "shop/=pid:1", "shop/web", "shop/web="] {
            let error = bad.parse::<ProbeTarget>().unwrap_err();
            assert!(error.contains("NAMESPACE/NAME"), "{bad}: {error}");
        }
        assert!("lease".parse::<LeaseRef>().is_err());
        let mut line =
            ProbeArgs::new("s".into(), vec![target("web")], Duration::from_secs(1)).to_args();
        line.extend(["--lease".to_owned(), "/x".to_owned()]);
        let error = parse(&line).unwrap_err().to_string();
        assert!(error.contains("\"/x\" is not NAMESPACE/NAME"), "{error}");
    }
}
