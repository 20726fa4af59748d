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

use apitrace_netns::topology::Pod;
use apitrace_proto::istio;

pub use sidecar::{
    ADMIN_PORT, Layers, MeshPod, PortProtocol, ProbeAt, Service, Sidecar, command_line,
};

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

/// The demo mesh as a run lays it out: a client pod calling a server pod's
/// Service, each pod with a sidecar (the client's unless it calls from
/// outside the mesh), over mTLS unless plaintext. The demo and the
/// benchmarks set their mesh up through it, so that both are the mesh this
/// module stands in for.
#[derive(Debug, Clone, Copy)]
pub struct Layout<'a> {
    pub namespace: &'a str,
    pub client: &'a Pod,
    pub server: &'a Pod,
    /// The port the server's app listens on, which its Service exposes.
    pub app_port: u16,
    /// The protocol the Service declares for it.
    pub protocol: PortProtocol,
    /// The client pod has no sidecar and calls the server pod directly.
    pub caller_outside_mesh: bool,
    /// No mTLS between the sidecars.
    pub plaintext: bool,
    /// The client calls over IPv6.
    pub ipv6: bool,
}

/// A sidecar of a [`Layout`]: its pod and the bootstrap written for it.
#[derive(Debug)]
pub struct SidecarConfig<'a> {
    pub pod: &'a Pod,
    pub config: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot capture the {pod} pod's traffic")]
    Capture {
        pod: &'static str,
        source: apitrace_netns::topology::TopologyError,
    },
    #[error(transparent)]
    Certificates(#[from] certs::CertError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl<'a> Layout<'a> {
    /// The pods that have a sidecar, with their service accounts, callers
    /// first.
    pub fn sidecar_pods(&self) -> Vec<(&'a Pod, &'static str)> {
        let mut pods = Vec::new();
        if !self.caller_outside_mesh {
            pods.push((self.client, "client"));
        }
        pods.push((self.server, "server"));
        pods
    }

    /// Installs Istio's traffic capture in each sidecar pod (and `::6` on its
    /// `lo`); `loss_percent` drops the server's inbound packets (`--loss`).
    pub fn capture(
        &self,
        topology: &apitrace_netns::topology::Topology,
        loss_percent: Option<u8>,
    ) -> Result<(), LayoutError> {
        for (pod, _) in self.sidecar_pods() {
            let loss = loss_percent.filter(|_| pod.name == self.server.name);
            let failed = |source| LayoutError::Capture {
                pod: pod.name,
                source,
            };
            for ipv6 in [false, true] {
                topology
                    .restore_iptables(pod, ipv6, &iptables::capture(ipv6, self.app_port, loss))
                    .map_err(failed)?;
            }
            topology
                .add_loopback_address(pod, &format!("{}/128", istio::INBOUND_PASSTHROUGH_BIND_V6))
                .map_err(failed)?;
        }
        Ok(())
    }

    /// The server's Service as a caller's sidecar knows it.
    pub fn service(&self) -> Service<'static> {
        Service {
            name: "server",
            cluster_ipv4: SERVICE_V4,
            cluster_ipv6: SERVICE_V6,
            port: self.app_port,
            protocol: self.protocol,
            endpoint: if self.ipv6 {
                std::net::IpAddr::V6(self.server.ipv6)
            } else {
                std::net::IpAddr::V4(self.server.ipv4)
            },
            target_port: self.app_port,
            service_account: "server",
        }
    }

    /// Where the client's app calls the server: its Service's address, which
    /// the caller's sidecar resolves; from outside the mesh, the pod's own,
    /// as kube-proxy would have translated it.
    pub fn target(&self) -> std::net::SocketAddr {
        let ip = match (self.caller_outside_mesh, self.ipv6) {
            (false, false) => std::net::IpAddr::V4(SERVICE_V4),
            (false, true) => std::net::IpAddr::V6(SERVICE_V6),
            (true, false) => std::net::IpAddr::V4(self.server.ipv4),
            (true, true) => std::net::IpAddr::V6(self.server.ipv6),
        };
        std::net::SocketAddr::new(ip, self.app_port)
    }

    /// The `Host` the client names: the Service's short name.
    pub fn authority(&self) -> String {
        format!("server.{}:{}", self.namespace, self.app_port)
    }

    /// Issues the sidecars' certificates (unless plaintext) and writes each
    /// sidecar's bootstrap into `dir`, readable by the proxy's user.
    pub fn write_bootstraps(
        &self,
        dir: &Path,
        probe: ProbeAt<'_>,
        layers: Layers,
    ) -> Result<Vec<SidecarConfig<'a>>, LayoutError> {
        let ca = (!self.plaintext)
            .then(|| certs::MeshCa::create(dir))
            .transpose()?;
        let services = [self.service()];
        let mut configs = Vec::new();
        for (pod, account) in self.sidecar_pods() {
            let files = ca
                .as_ref()
                .map(|ca| {
                    ca.issue(
                        &certs::spiffe_id(self.namespace, account),
                        &dir.join(pod.name),
                        istio::PROXY_UID,
                    )
                })
                .transpose()?;
            let serves = pod.name == self.server.name;
            let sidecar = Sidecar {
                pod: MeshPod {
                    name: pod.name,
                    namespace: self.namespace,
                    service_account: account,
                    ipv4: pod.ipv4,
                },
                app_port: serves.then_some(self.app_port),
                app_protocol: self.protocol,
                services: if serves { &[] } else { &services },
                probe,
                layers,
                mtls: files.as_ref(),
            };
            let config = dir.join(format!("envoy-{}.json", pod.name));
            std::fs::write(&config, sidecar.bootstrap().to_string()).map_err(|source| {
                LayoutError::Write {
                    path: config.clone(),
                    source,
                }
            })?;
            configs.push(SidecarConfig { pod, config });
        }
        Ok(configs)
    }
}
