//! The server pod's sidecar: an Envoy bootstrap shaped like what istiod sends a
//! sidecar for an inbound port, with what a session adds to it.
//!
//! - `virtualInbound` on 15006 with the `original_dst` listener filter: the
//!   pod's iptables redirect inbound TCP there, as Istio's init container does.
//! - The apitrace WASM filter first in the HTTP chain (where Istio puts a
//!   `WasmPlugin` of phase AUTHN), V8 runtime, fetched over HTTP from the probe
//!   with its sha256 and FAIL_OPEN, as istio-agent would fetch it.
//! - `envoy.access_loggers.http_grpc` to the probe, with the cluster name,
//!   authority, log name and filter-state objects istiod generates for an
//!   `envoyHttpAls` provider.

use std::{ffi::OsString, net::Ipv4Addr, path::Path};

use apitrace_proto::ports;
use serde_json::{Value, json};

/// Istio's port for inbound capture.
pub const INBOUND_PORT: u16 = 15006;
pub const ADMIN_PORT: u16 = 15000;

/// What the bootstrap needs to know about the demo.
pub struct Sidecar<'a> {
    pub pod_name: &'a str,
    pub namespace: &'a str,
    pub pod_ip: Ipv4Addr,
    pub app_port: u16,
    pub probe_ip: Ipv4Addr,
    pub probe_host: &'a str,
    pub module_path: &'a str,
    pub module_sha256: &'a str,
    /// The session's token, which the filter sends with its batches.
    pub session_token: &'a str,
    /// Whether the filter sends raw credentials (`--show-secrets`).
    pub show_secrets: bool,
    pub layers: Layers,
}

/// What a session adds to the sidecar. The demo adds both; the benchmark
/// measures the sidecar without them, with the access log, and with both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layers {
    pub access_log: bool,
    pub filter: bool,
}

impl Layers {
    pub const ALL: Self = Self {
        access_log: true,
        filter: true,
    };
}

impl Sidecar<'_> {
    pub fn bootstrap(&self) -> Value {
        let inbound_cluster = format!("inbound|{}||", self.app_port);
        let als_cluster = format!("outbound|{}||{}", ports::ACCESS_LOG, self.probe_host);
        let http_cluster = format!("outbound|{}||{}", ports::HTTP, self.probe_host);
        json!({
            "node": {
                "id": format!("sidecar~{}~{}.{}~{}.svc.cluster.local", self.pod_ip, self.pod_name, self.namespace, self.namespace),
                "cluster": format!("{}.{}", self.pod_name, self.namespace),
                "metadata": { "NAME": self.pod_name, "NAMESPACE": self.namespace },
            },
            "admin": { "address": socket("127.0.0.1", ADMIN_PORT) },
            "static_resources": {
                "listeners": [{
                    "name": "virtualInbound",
                    // Dual-stack: IPv4 connections arrive on the IPv6 socket and
                    // Envoy reports their addresses as IPv4.
                    "address": { "socket_address": { "address": "::", "port_value": INBOUND_PORT, "ipv4_compat": true } },
                    "traffic_direction": "INBOUND",
                    "listener_filters": [{
                        "name": "envoy.filters.listener.original_dst",
                        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst" },
                    }],
                    "filter_chains": [{
                        "filters": [{
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                "stat_prefix": format!("inbound_0.0.0.0_{}", self.app_port),
                                "route_config": {
                                    "name": inbound_cluster,
                                    "virtual_hosts": [{
                                        "name": format!("inbound|http|{}", self.app_port),
                                        "domains": ["*"],
                                        "routes": [{ "name": "default", "match": { "prefix": "/" }, "route": { "cluster": inbound_cluster } }],
                                    }],
                                },
                                "http_filters": self.http_filters(&http_cluster),
                                "access_log": self.access_log(&als_cluster),
                            },
                        }],
                    }],
                }],
                "clusters": [
                    static_cluster(&inbound_cluster, "127.0.0.1", self.app_port, false),
                    static_cluster(&als_cluster, &self.probe_ip.to_string(), ports::ACCESS_LOG, true),
                    static_cluster(&http_cluster, &self.probe_ip.to_string(), ports::HTTP, false),
                ],
            },
        })
    }

    fn http_filters(&self, http_cluster: &str) -> Vec<Value> {
        let router = json!({
            "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
        });
        if self.layers.filter {
            vec![self.wasm_filter(http_cluster), router]
        } else {
            vec![router]
        }
    }

    fn access_log(&self, als_cluster: &str) -> Vec<Value> {
        if !self.layers.access_log {
            return Vec::new();
        }
        vec![json!({
            "name": "envoy.access_loggers.http_grpc",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
                "common_config": {
                    "log_name": "http_envoy_accesslog",
                    "transport_api_version": "V3",
                    "grpc_service": { "envoy_grpc": { "cluster_name": als_cluster, "authority": self.probe_host } },
                    "filter_state_objects_to_log": ["upstream_peer", "downstream_peer"],
                },
            },
        })]
    }

    /// The filter's configuration (Istio's `pluginConfig`): it posts its
    /// batches through the cluster that reaches the probe's HTTP port.
    fn plugin_config(&self, http_cluster: &str) -> Value {
        json!({
            "ingest_cluster": http_cluster,
            "ingest_authority": format!("{}:{}", self.probe_host, ports::HTTP),
            "session_token": self.session_token,
            "show_secrets": self.show_secrets,
        })
    }

    fn wasm_filter(&self, http_cluster: &str) -> Value {
        json!({
            "name": "apitrace",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "apitrace",
                    "root_id": "apitrace",
                    "failure_policy": "FAIL_OPEN",
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": self.plugin_config(http_cluster).to_string(),
                    },
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "remote": {
                            "http_uri": {
                                "uri": format!("http://{}:{}{}", self.probe_host, ports::HTTP, self.module_path),
                                "cluster": http_cluster,
                                "timeout": "10s",
                            },
                            "sha256": self.module_sha256,
                        }},
                    },
                },
            },
        })
    }
}

/// A sidecar's pod's iptables: Istio's inbound capture (istio-iptables), reduced
/// to what the demo needs (every inbound TCP connection goes to the sidecar's
/// port 15006, except the sidecar's own ports), and with `--loss`, a random
/// drop of inbound packets to `app_port`. TC ingress runs before netfilter,
/// so the probe sees each dropped packet and then its retransmission.
pub fn inbound_capture(app_port: u16, loss_percent: Option<u8>) -> String {
    let mut rules = format!(
        "*nat\n\
         :ISTIO_INBOUND - [0:0]\n\
         :ISTIO_IN_REDIRECT - [0:0]\n\
         -A PREROUTING -p tcp -j ISTIO_INBOUND\n\
         -A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN\n\
         -A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN\n\
         -A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN\n\
         -A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN\n\
         -A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n\
         -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}\n\
         COMMIT\n",
        INBOUND_PORT
    );
    if let Some(percent) = loss_percent {
        rules.push_str(&format!(
            "*raw\n\
             -A PREROUTING -i eth0 -p tcp --dport {app_port} -m statistic --mode random --probability {:.2} -j DROP\n\
             COMMIT\n",
            f64::from(percent) / 100.0
        ));
    }
    rules
}

/// Envoy's command line for a sidecar running `config`: no hot restart (as
/// pilot-agent runs it), `workers` worker threads, warnings and errors only.
pub fn command_line(config: &Path, workers: u32) -> Vec<OsString> {
    let mut line: Vec<OsString> = vec!["--config-path".into(), config.into()];
    line.extend(
        [
            "--log-level",
            "warn",
            "--disable-hot-restart",
            "--concurrency",
            &workers.to_string(),
        ]
        .map(OsString::from),
    );
    line
}

fn socket(address: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": address, "port_value": port } })
}

fn static_cluster(name: &str, address: &str, port: u16, http2: bool) -> Value {
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket(address, port) } }] }],
        },
    });
    if http2 {
        // What istiod generates for a Service port named grpc.
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            },
        });
    }
    cluster
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_names_things_as_istiod_does() {
        let sidecar = Sidecar {
            pod_name: "server",
            namespace: "demo",
            pod_ip: Ipv4Addr::new(198, 18, 0, 20),
            app_port: 8080,
            probe_ip: Ipv4Addr::new(198, 18, 0, 30),
            probe_host: "apitrace-probe.demo.svc.cluster.local",
            module_path: "/wasm/m.wasm",
            module_sha256: "ab",
            session_token: "t",
            show_secrets: false,
            layers: Layers::ALL,
        };
        let bootstrap = sidecar.bootstrap();
        let hcm = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert_eq!(
            hcm["access_log"][0]["typed_config"]["common_config"]["grpc_service"]["envoy_grpc"]["cluster_name"],
            "outbound|15901||apitrace-probe.demo.svc.cluster.local"
        );
        assert_eq!(hcm["http_filters"][0]["name"], "apitrace");
        assert_eq!(hcm["http_filters"][1]["name"], "envoy.filters.http.router");
        let wasm = &hcm["http_filters"][0]["typed_config"]["config"];
        assert_eq!(wasm["failure_policy"], "FAIL_OPEN");
        // The filter posts through the cluster that reaches the probe's HTTP port.
        let plugin: Value =
            serde_json::from_str(wasm["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(
            plugin,
            json!({
                "ingest_cluster": "outbound|15902||apitrace-probe.demo.svc.cluster.local",
                "ingest_authority": "apitrace-probe.demo.svc.cluster.local:15902",
                "session_token": "t",
                "show_secrets": false,
            })
        );
        assert!(
            bootstrap["static_resources"]["clusters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|cluster| cluster["name"] == plugin["ingest_cluster"])
        );
        assert_eq!(
            bootstrap["node"]["id"],
            "sidecar~198.18.0.20~server.demo~demo.svc.cluster.local"
        );

        // The benchmark's bare sidecar: the router alone, no access log.
        let bare = Sidecar {
            layers: Layers {
                access_log: false,
                filter: false,
            },
            ..sidecar
        }
        .bootstrap();
        let hcm = &bare["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(hcm["access_log"], json!([]));
        assert_eq!(hcm["http_filters"].as_array().unwrap().len(), 1);
    }
}
