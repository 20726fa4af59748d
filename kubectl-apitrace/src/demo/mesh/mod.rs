//! The demo's mesh: pods with sidecars configured as istiod configures them,
//! their traffic captured as Istio's init container captures it, and mTLS
//! between them with certificates as Istio's CA issues them. `docs/mesh.md`
//! is the table of each choice and where Istio writes it.
//!
//! The demo, the integration tests and the benchmarks build their sidecars
//! here, so that what the probe and the join are tested against is one
//! stand-in, and the one that behaves as the real mesh does.

pub mod certs;
pub mod iptables;
pub mod sidecar;

use std::{
    ffi::OsString,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use apitrace_proto::istio;

pub use sidecar::{ADMIN_PORT, Layers, MeshPod, ProbeAt, Service, Sidecar, command_line};

/// The demo's Service addresses (ClusterIPs): outside the pods' subnet, as a
/// cluster's service range is; only the callers' sidecars ever see them.
pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
pub const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xa71, 0, 1, 0, 0, 0, 0x20);

/// The program and arguments that run `envoy` with `config` inside the pod
/// namespace `netns` as the proxy's user and group (1337, which the pod's
/// outbound capture lets through), the way a sidecar container runs: for the
/// tests and benchmarks, which start their processes with `ip netns exec`.
pub fn proxy_command(netns: &str, envoy: &Path, config: &Path, workers: u32) -> Vec<OsString> {
    let id = istio::PROXY_UID.to_string();
    let mut line: Vec<OsString> = ["ip", "netns", "exec", netns, "setpriv"]
        .map(OsString::from)
        .into();
    line.extend(
        [
            format!("--reuid={id}"),
            format!("--regid={id}"),
            "--clear-groups".to_owned(),
            "--".to_owned(),
        ]
        .map(OsString::from),
    );
    line.push(envoy.into());
    line.extend(command_line(config, workers));
    line
}
