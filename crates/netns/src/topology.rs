//! Pods as network namespaces, joined the way the CNI bridge plugin joins them:
//! each pod's `eth0` is one end of a veth pair whose other end is a port of a
//! bridge in a "node" namespace. Nothing touches the host's own namespace;
//! deleting the namespaces removes everything. The demo builds its cluster this
//! way, and the tests their pods.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::{Command, Stdio},
};

/// The pod network: 198.18.0.0/15 is reserved for benchmarking (RFC 2544) and
/// fd00:a71::/64 is a unique local prefix, so neither can collide with a real
/// network, and both stay inside the node namespace.
const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa71, 0, 0, 0, 0, 0, 1);
const PREFIX_V4: u8 = 24;
const PREFIX_V6: u8 = 64;

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error(
        "cannot run `{program}` ({source}): pods need iproute2 and iptables; `cargo xtask setup` installs them"
    )]
    Missing {
        program: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub name: &'static str,
    pub netns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl Pod {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }
}

/// The namespaces of one topology. Dropping it deletes them, which removes
/// their interfaces, addresses, routes, iptables rules and TC attachments.
#[derive(Debug)]
pub struct Topology {
    pub pods: Vec<Pod>,
    created: Vec<String>,
}

impl Topology {
    /// Creates a node namespace with a bridge, and one namespace per pod name
    /// with `eth0` on the bridge, `lo` up and a default route via the bridge.
    ///
    /// Namespaces are named `{prefix}{owner_pid}-{pod}` (and `-node`), so that
    /// [`sweep_stale`] can find those of an owner that died.
    pub fn create(
        prefix: &str,
        owner_pid: u32,
        pod_names: &[&'static str],
    ) -> Result<Self, TopologyError> {
        let node = format!("{prefix}{owner_pid}-node");
        let mut topology = Self {
            pods: Vec::new(),
            created: Vec::new(),
        };
        topology.add_netns(&node)?;
        ip(&["-n", &node, "link", "set", "lo", "up"])?;
        ip(&["-n", &node, "link", "add", "br0", "type", "bridge"])?;
        add_address(&node, "br0", &format!("{GATEWAY_V4}/{PREFIX_V4}"))?;
        add_address(&node, "br0", &format!("{GATEWAY_V6}/{PREFIX_V6}"))?;
        ip(&["-n", &node, "link", "set", "br0", "up"])?;
        for (index, name) in pod_names.iter().copied().enumerate() {
            let host = u8::try_from(10 * (index + 1)).unwrap_or(u8::MAX);
            let pod = Pod {
                name,
                netns: format!("{prefix}{owner_pid}-{name}"),
                ipv4: Ipv4Addr::new(198, 18, 0, host),
                ipv6: Ipv6Addr::new(0xfd00, 0xa71, 0, 0, 0, 0, 0, u16::from(host)),
            };
            topology.add_netns(&pod.netns)?;
            let host_side = format!("veth-{name}");
            ip(&[
                "-n", &node, "link", "add", &host_side, "type", "veth", "peer", "name", "eth0",
                "netns", &pod.netns,
            ])?;
            ip(&[
                "-n", &node, "link", "set", &host_side, "master", "br0", "up",
            ])?;
            add_address(&pod.netns, "eth0", &format!("{}/{PREFIX_V4}", pod.ipv4))?;
            add_address(&pod.netns, "eth0", &format!("{}/{PREFIX_V6}", pod.ipv6))?;
            ip(&["-n", &pod.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &pod.netns, "link", "set", "lo", "up"])?;
            for gateway in [GATEWAY_V4.to_string(), GATEWAY_V6.to_string()] {
                ip(&["-n", &pod.netns, "route", "add", "default", "via", &gateway])?;
            }
            topology.pods.push(pod);
        }
        Ok(topology)
    }

    fn add_netns(&mut self, name: &str) -> Result<(), TopologyError> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        Ok(())
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|pod| pod.name == name)
            .unwrap_or_else(|| unreachable!("the demo asks only for pods it created: {name}"))
    }

    /// Adds `cidr` to a pod's loopback device, as Istio's init container adds
    /// `::6` for the sidecar's inbound passthrough bind
    /// (`tools/common/tproxy/run_linux.go`, `configureIPv6Addresses`).
    pub fn add_loopback_address(&self, pod: &Pod, cidr: &str) -> Result<(), TopologyError> {
        add_address(&pod.netns, "lo", cidr)
    }

    /// Runs `iptables-restore` (or `ip6tables-restore`) inside a pod with `rules`.
    pub fn restore_iptables(
        &self,
        pod: &Pod,
        ipv6: bool,
        rules: &str,
    ) -> Result<(), TopologyError> {
        let program = if ipv6 {
            "ip6tables-restore"
        } else {
            "iptables-restore"
        };
        run("ip", &["netns", "exec", &pod.netns, program], Some(rules))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for name in self.created.drain(..).rev() {
            // Deleting can only fail if it is gone already.
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

/// Deletes the namespaces named `{prefix}{pid}-...` whose owner `is_stale`
/// (it died before it could clean up). Returns their names.
pub fn sweep_stale(prefix: &str, is_stale: impl Fn(u32) -> bool) -> Vec<String> {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    let listing = String::from_utf8_lossy(&output.stdout);
    let mut removed = Vec::new();
    for name in listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some(owner) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if is_stale(owner) && ip(&["netns", "delete", name]).is_ok() {
            removed.push(name.to_owned());
        }
    }
    removed
}

fn ip(args: &[&str]) -> Result<(), TopologyError> {
    run("ip", args, None)
}

/// Adds `cidr` to `device` in `netns`. IPv6 addresses skip duplicate address
/// detection: the pods are alone on their bridge, and an address that is
/// "tentative" for a second would refuse the first connections.
fn add_address(netns: &str, device: &str, cidr: &str) -> Result<(), TopologyError> {
    let mut args = vec!["-n", netns, "addr", "add", cidr, "dev", device];
    if cidr.contains(':') {
        args.push("nodad");
    }
    ip(&args)
}

/// Runs `program`, feeding it `stdin` if given; its stderr becomes the error.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), TopologyError> {
    use std::io::Write as _;
    let missing = |source| TopologyError::Missing {
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(missing)?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        // A failed write shows up as the program's own error below.
        let _ = input.write_all(text.as_bytes());
    }
    let output = child.wait_with_output().map_err(missing)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(TopologyError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
