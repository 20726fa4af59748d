//! A pod's sidecar: a static Envoy bootstrap shaped like what istiod 1.30
//! sends a sidecar over xDS, with what a session adds to it. `docs/mesh.md`
//! names the Istio source of each choice, and what a static bootstrap cannot
//! have (Istio's own filters, SDS from the agent) and what stands in for it.
//!
//! - `virtualOutbound` on 15001 (`use_original_dst`): the app's redirected
//!   connections are handed to the listener of their original destination's
//!   port (`0.0.0.0_8080`), whose route sends each service's calls to its
//!   `outbound|PORT||HOST` cluster: the service's pod, over mTLS where the
//!   endpoint is in the mesh (`tlsMode: istio`), the pod's SPIFFE identity
//!   checked exactly, the ALPN values Istio's `istio.alpn` filter sets.
//! - `virtualInbound` on 15006 (`original_dst`, `tls_inspector`,
//!   `http_inspector`): per app port a chain for mTLS (Istio's ALPN values,
//!   the client certificate required, any identity of the trust domain) and
//!   one for plaintext (PERMISSIVE), both to `inbound|PORT||`, an
//!   original-destination cluster that reaches the app from 127.0.0.6 (`::6`
//!   over IPv6).
//! - On both sides, the apitrace WASM filter first in the HTTP chain (where
//!   Istio puts a `WasmPlugin` of phase AUTHN), V8, fetched over HTTP from the
//!   probe with its sha256 and FAIL_OPEN, as istio-agent fetches it; and
//!   `envoy.access_loggers.http_grpc` to the probe, with the cluster name,
//!   authority, log name and filter-state objects istiod generates for an
//!   `envoyHttpAls` provider.

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use apitrace_proto::{filter_config::Config as FilterConfig, istio, ports};
use serde_json::{Value, json};

use super::certs::{TRUST_DOMAIN, WorkloadFiles, spiffe_id};

pub const ADMIN_PORT: u16 = 15000;

/// A pod of the demo mesh, as its sidecar knows it.
#[derive(Debug, Clone)]
pub struct MeshPod<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub ipv4: Ipv4Addr,
}

/// The protocol a Service port declares, by its name or `appProtocol`
/// (istio `pkg/config/kube/conversion.go`, `ConvertProtocol`), which decides
/// how istiod configures both sidecars for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortProtocol {
    /// `http`: HTTP/1.1 to the app and between the sidecars (the mesh's
    /// default `h2UpgradePolicy` does not upgrade it).
    Http,
    /// `http2`: HTTP/2 on every hop after the caller's sidecar.
    Http2,
    /// `grpc`: the same as `http2` for the sidecars.
    Grpc,
}

impl PortProtocol {
    /// The port's name, which is how Istio is told.
    pub fn port_name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Http2 => "http2",
            Self::Grpc => "grpc",
        }
    }

    /// Whether the upstream clusters speak HTTP/2 (`Instance.IsHTTP2`).
    fn is_http2(self) -> bool {
        matches!(self, Self::Http2 | Self::Grpc)
    }
}

/// A Service the pod calls: its name, its ClusterIP addresses and port, and
/// the pod behind it.
#[derive(Debug, Clone)]
pub struct Service<'a> {
    pub name: &'a str,
    pub cluster_ipv4: Ipv4Addr,
    pub cluster_ipv6: Ipv6Addr,
    pub port: u16,
    pub protocol: PortProtocol,
    /// The service's pod, at its address of the family the session calls it
    /// over (EDS gives a dual-stack pod's addresses per family).
    pub endpoint: IpAddr,
    pub target_port: u16,
    /// The service account its pod runs as: the identity the caller checks.
    pub service_account: &'a str,
}

/// Where the sidecar's session parts reach the probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbeAt<'a> {
    pub ip: Ipv4Addr,
    /// The probe Service's name, as istiod names its clusters.
    pub host: &'a str,
    pub module_path: &'a str,
    pub module_sha256: &'a str,
    /// The session's token, which the filter sends with its batches.
    pub session_token: &'a str,
    /// Whether the filter sends raw credentials (`--show-secrets`).
    pub show_secrets: bool,
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

/// A sidecar's configuration.
pub struct Sidecar<'a> {
    pub pod: MeshPod<'a>,
    /// The port the pod's app serves, when it serves one.
    pub app_port: Option<u16>,
    /// The protocol its Service declares for that port.
    pub app_protocol: PortProtocol,
    /// The services the pod's app calls.
    pub services: &'a [Service<'a>],
    pub probe: ProbeAt<'a>,
    pub layers: Layers,
    /// The workload certificate for mTLS; `None` for plaintext between
    /// sidecars (`--plaintext`: the peer's endpoints are not `tlsMode: istio`).
    pub mtls: Option<&'a WorkloadFiles>,
}

/// What Istio's `istio.alpn` filter sets for an HTTP/1.1 upstream over
/// mTLS, in place of the cluster's own ALPN values (istio/proxy
/// `source/extensions/filters/http/alpn/alpn_filter.cc`; istio
/// `pilot/pkg/xds/filters/filters.go`, `mtlsHTTP11ALPN`).
const ALPN_OVERRIDE_HTTP11: &str = "istio-http/1.1,istio,http/1.1";
/// What it sets for an HTTP/2 upstream (`mtlsHTTP2ALPN`): the server's
/// sidecar's mTLS chain accepts `istio-h2`, and its TLS context offers `h2`.
const ALPN_OVERRIDE_HTTP2: &str = "istio-h2,istio,h2";
/// What the sidecars log of a response for gRPC, from its headers (a
/// Trailers-Only response) and its trailers, as the `envoyHttpAls` provider's
/// `additionalResponseHeadersToLog` and `additionalResponseTrailersToLog`
/// make istiod configure them.
const GRPC_STATUS_TO_LOG: [&str; 2] = apitrace_proto::access_log::GRPC_STATUS_HEADERS;
/// The cluster's own ALPN values for mTLS (`ALPNInMeshWithMxc`,
/// `pilot/pkg/networking/util/util.go`): what TCP traffic offers.
const ALPN_IN_MESH: [&str; 2] = ["istio-peer-exchange", "istio"];
/// The ALPN values an inbound chain for mTLS accepts
/// (`pilot/pkg/networking/core/listener.go`, `allIstioMtlsALPNs`).
const INBOUND_MTLS_ALPN: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// The inbound side's TLS 1.2 ciphers (`pilot/pkg/security/authn/utils/
/// utils.go`, `SupportedCiphers`).
const INBOUND_CIPHERS: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

impl<'a> Sidecar<'a> {
    /// The sidecar of a pod that serves `app_port` and calls nothing, without
    /// mTLS: what callers outside the mesh reach (PERMISSIVE).
    pub fn serving(pod: MeshPod<'a>, app_port: u16, probe: ProbeAt<'a>, layers: Layers) -> Self {
        Self {
            pod,
            app_port: Some(app_port),
            app_protocol: PortProtocol::Http,
            services: &[],
            probe,
            layers,
            mtls: None,
        }
    }

    pub fn bootstrap(&self) -> Value {
        let als_cluster = format!("outbound|{}||{}", ports::ACCESS_LOG, self.probe.host);
        let http_cluster = format!("outbound|{}||{}", ports::HTTP, self.probe.host);
        let pod = &self.pod;
        let mut listeners = vec![virtual_outbound()];
        listeners.extend(self.outbound_listeners(&http_cluster, &als_cluster));
        listeners.push(self.virtual_inbound(&http_cluster, &als_cluster));
        let mut clusters = vec![
            passthrough_cluster("PassthroughCluster", false),
            passthrough_cluster("InboundPassthroughCluster", true),
            json!({ "name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s" }),
            static_cluster(
                &als_cluster,
                &self.probe.ip.to_string(),
                ports::ACCESS_LOG,
                true,
            ),
            static_cluster(
                &http_cluster,
                &self.probe.ip.to_string(),
                ports::HTTP,
                false,
            ),
        ];
        if let Some(port) = self.app_port {
            clusters.push(inbound_cluster(port, self.app_protocol));
        }
        clusters.extend(
            self.services
                .iter()
                .map(|service| self.outbound_cluster(service)),
        );
        let mut bootstrap = json!({
            "node": {
                "id": format!("sidecar~{}~{}.{}~{}.svc.cluster.local", pod.ipv4, pod.name, pod.namespace, pod.namespace),
                "cluster": format!("{}.{}", pod.name, pod.namespace),
                "metadata": { "NAME": pod.name, "NAMESPACE": pod.namespace, "SERVICE_ACCOUNT": pod.service_account },
            },
            "admin": { "address": socket("127.0.0.1", ADMIN_PORT) },
            "static_resources": { "listeners": listeners, "clusters": clusters },
        });
        if let Some(files) = self.mtls {
            // What istio-agent serves over SDS, under the same names.
            bootstrap["static_resources"]["secrets"] = json!([
                {
                    "name": "default",
                    "tls_certificate": {
                        "certificate_chain": { "filename": files.certificate },
                        "private_key": { "filename": files.private_key },
                    },
                },
                { "name": "ROOTCA", "validation_context": { "trusted_ca": { "filename": files.root } } },
            ]);
        }
        bootstrap
    }

    /// A listener per service port (`0.0.0.0_8080`), not bound itself: the
    /// virtual outbound listener hands it its connections.
    fn outbound_listeners(&self, http_cluster: &str, als_cluster: &str) -> Vec<Value> {
        self.services
            .iter()
            .map(|service| {
                let host = self.host_of(service);
                let cluster = format!("outbound|{}||{host}", service.port);
                let domains = json!([
                    host,
                    format!("{host}."),
                    service.name,
                    format!("{}.{}.svc", service.name, self.pod.namespace),
                    format!("{}.{}", service.name, self.pod.namespace),
                    service.cluster_ipv4.to_string(),
                    format!("[{}]", service.cluster_ipv6),
                ]);
                let route = json!({
                    "cluster": cluster,
                    "timeout": "0s",
                    "max_grpc_timeout": "0s",
                    "retry_policy": {
                        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                        "num_retries": 2,
                        "host_selection_retry_max_attempts": 5,
                        "retry_host_predicate": [{
                            "name": "envoy.retry_host_predicates.previous_hosts",
                            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" },
                        }],
                    },
                });
                let route_config = json!({
                    "name": service.port.to_string(),
                    "validate_clusters": false,
                    "max_direct_response_body_size_bytes": 1_048_576,
                    "ignore_port_in_host_matching": true,
                    "virtual_hosts": [
                        {
                            "name": format!("{host}:{}", service.port),
                            "domains": domains,
                            "include_request_attempt_count": true,
                            "routes": [{
                                "name": "default",
                                "match": { "prefix": "/" },
                                "decorator": { "operation": format!("{host}:{}/*", service.port) },
                                "route": route,
                            }],
                        },
                        {
                            "name": "allow_any",
                            "domains": ["*"],
                            "include_request_attempt_count": true,
                            "routes": [{
                                "name": "allow_any",
                                "match": { "prefix": "/" },
                                "route": { "cluster": "PassthroughCluster", "timeout": "0s", "max_grpc_timeout": "0s" },
                            }],
                        },
                    ],
                });
                let manager = self.http_connection_manager(
                    &format!("outbound_0.0.0.0_{};", service.port),
                    route_config,
                    Side::Outbound(service.protocol),
                    http_cluster,
                    als_cluster,
                );
                json!({
                    "name": format!("0.0.0.0_{}", service.port),
                    "address": socket("0.0.0.0", service.port),
                    "additional_addresses": [{ "address": socket("::", service.port) }],
                    "bind_to_port": false,
                    "traffic_direction": "OUTBOUND",
                    "continue_on_listener_filters_timeout": true,
                    "listener_filters_timeout": "0s",
                    "listener_filters": [listener_filter("http_inspector", "http_inspector.v3.HttpInspector")],
                    "filter_chains": [{
                        "filter_chain_match": { "transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"] },
                        "transport_socket_connect_timeout": "15s",
                        "filters": [manager],
                    }],
                    "default_filter_chain": {
                        "name": "PassthroughFilterChain",
                        "filters": [tcp_proxy("PassthroughCluster")],
                    },
                })
            })
            .collect()
    }

    /// Where the pod's inbound connections arrive (the inbound capture),
    /// with a chain for mTLS and one for plaintext per app port.
    fn virtual_inbound(&self, http_cluster: &str, als_cluster: &str) -> Value {
        let capture = istio::INBOUND_CAPTURE_PORT;
        let mut chains = vec![json!({
            "name": "virtualInbound-blackhole",
            "filter_chain_match": { "destination_port": capture },
            "filters": [tcp_proxy("BlackHoleCluster")],
        })];
        let mut sniffed_elsewhere = vec![port_range(capture)];
        if let Some(port) = self.app_port {
            sniffed_elsewhere.push(port_range(port));
            let cluster = format!("inbound|{port}||");
            let route_config = json!({
                "name": cluster,
                "validate_clusters": false,
                "virtual_hosts": [{
                    "name": format!("inbound|http|{port}"),
                    "domains": ["*"],
                    "routes": [{
                        "name": "default",
                        "match": { "prefix": "/" },
                        "route": {
                            "cluster": cluster,
                            "timeout": "0s",
                            "max_stream_duration": { "max_stream_duration": "0s", "grpc_timeout_header_max": "0s" },
                            "retry_policy": { "retry_on": "reset-before-request", "num_retries": 2 },
                        },
                    }],
                }],
            });
            let manager = self.http_connection_manager(
                &format!("inbound_0.0.0.0_{port};"),
                route_config,
                Side::Inbound(self.app_protocol),
                http_cluster,
                als_cluster,
            );
            if self.mtls.is_some() {
                chains.push(json!({
                    "name": format!("0.0.0.0_{port}"),
                    "filter_chain_match": {
                        "destination_port": port,
                        "transport_protocol": "tls",
                        "application_protocols": INBOUND_MTLS_ALPN,
                    },
                    "transport_socket": inbound_tls(),
                    "filters": [manager.clone()],
                }));
            }
            chains.push(json!({
                "name": format!("0.0.0.0_{port}"),
                "filter_chain_match": { "destination_port": port, "transport_protocol": "raw_buffer" },
                "filters": [manager],
            }));
        }
        chains.push(json!({
            "name": "virtualInbound",
            "filter_chain_match": { "transport_protocol": "raw_buffer" },
            "filters": [tcp_proxy("InboundPassthroughCluster")],
        }));
        let mut tls_inspector = listener_filter("tls_inspector", "tls_inspector.v3.TlsInspector");
        tls_inspector["typed_config"]["initial_read_buffer_size"] = json!(512);
        tls_inspector["filter_disabled"] = port_range(capture);
        let mut http_inspector =
            listener_filter("http_inspector", "http_inspector.v3.HttpInspector");
        http_inspector["filter_disabled"] = match &sniffed_elsewhere[..] {
            [only] => only.clone(),
            _ => json!({ "or_match": { "rules": sniffed_elsewhere } }),
        };
        json!({
            "name": "virtualInbound",
            "address": socket("0.0.0.0", capture),
            "additional_addresses": [{ "address": socket("::", capture) }],
            "traffic_direction": "INBOUND",
            "continue_on_listener_filters_timeout": true,
            "listener_filters_timeout": "0s",
            "listener_filters": [
                listener_filter("original_dst", "original_dst.v3.OriginalDst"),
                tls_inspector,
                http_inspector,
            ],
            "filter_chains": chains,
        })
    }

    /// An HTTP connection manager as istiod configures a sidecar's: the
    /// caller's address from the connection, not from `x-forwarded-for`
    /// (`use_remote_address` false); on the inbound side the client
    /// certificate's identity forwarded to the app (`x-forwarded-client-cert`)
    /// and `istio-envoy` as the server's name.
    fn http_connection_manager(
        &self,
        stat_prefix: &str,
        route_config: Value,
        side: Side,
        http_cluster: &str,
        als_cluster: &str,
    ) -> Value {
        let mut config = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "codec_type": "AUTO",
            "route_config": route_config,
            "use_remote_address": false,
            "normalize_path": true,
            "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
            "stream_idle_timeout": "0s",
            "upgrade_configs": [{ "upgrade_type": "websocket" }],
            "proxy_100_continue": true,
            "request_id_extension": {
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
                    "use_request_id_for_trace_sampling": true,
                },
            },
            "tracing": {
                "client_sampling": { "value": 100 },
                "random_sampling": { "value": 1 },
                "overall_sampling": { "value": 100 },
            },
            "http_filters": self.http_filters(side, http_cluster),
            "access_log": self.access_log(als_cluster),
        });
        if let Side::Inbound(protocol) = side {
            config["forward_client_cert_details"] = json!("APPEND_FORWARD");
            config["set_current_client_cert_details"] =
                json!({ "subject": true, "dns": true, "uri": true });
            config["server_name"] = json!("istio-envoy");
            if protocol.is_http2() {
                config["http2_protocol_options"] = json!({});
            }
        }
        json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": config })
    }

    /// istiod's HTTP filters, without its own (`istio.metadata_exchange`,
    /// `istio.stats`), which upstream Envoy does not have: a WasmPlugin of
    /// phase AUTHN, `grpc_stats`, on the outbound side the ALPN override,
    /// `fault`, `cors`, the router.
    fn http_filters(&self, side: Side, http_cluster: &str) -> Vec<Value> {
        let mut filters = Vec::new();
        if self.layers.filter {
            filters.push(self.wasm_filter(http_cluster));
        }
        filters.push(json!({
            "name": "envoy.filters.http.grpc_stats",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
                "emit_filter_state": true,
                "stats_for_all_methods": false,
            },
        }));
        if let Side::Outbound(protocol) = side {
            // Stands in for `istio.alpn`: the filter-state key it writes, with
            // the value it writes for the cluster's upstream protocol.
            let alpn = if protocol.is_http2() {
                ALPN_OVERRIDE_HTTP2
            } else {
                ALPN_OVERRIDE_HTTP11
            };
            filters.push(json!({
                "name": "istio.alpn",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
                    "on_request_headers": [{
                        "object_key": "envoy.network.application_protocols",
                        "format_string": { "text_format_source": { "inline_string": alpn } },
                    }],
                },
            }));
        }
        for (name, type_url) in [
            ("envoy.filters.http.fault", "fault.v3.HTTPFault"),
            ("envoy.filters.http.cors", "cors.v3.Cors"),
            ("envoy.filters.http.router", "router.v3.Router"),
        ] {
            filters.push(json!({
                "name": name,
                "typed_config": { "@type": format!("type.googleapis.com/envoy.extensions.filters.http.{type_url}") },
            }));
        }
        filters
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
                    "grpc_service": { "envoy_grpc": { "cluster_name": als_cluster, "authority": self.probe.host } },
                    "filter_state_objects_to_log": ["upstream_peer", "downstream_peer"],
                },
                "additional_response_headers_to_log": GRPC_STATUS_TO_LOG,
                "additional_response_trailers_to_log": GRPC_STATUS_TO_LOG,
            },
        })]
    }

    /// The filter's configuration (Istio's `pluginConfig`): it posts its
    /// batches through the cluster that reaches the probe's HTTP port.
    fn plugin_config(&self, http_cluster: &str) -> FilterConfig {
        FilterConfig::new(
            http_cluster,
            format!("{}:{}", self.probe.host, ports::HTTP),
            self.probe.session_token,
            self.probe.show_secrets,
        )
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
                        "value": serde_json::to_string(&self.plugin_config(http_cluster))
                            .expect("a filter configuration always serializes"),
                    },
                    "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "remote": {
                            "http_uri": {
                                "uri": format!("http://{}:{}{}", self.probe.host, ports::HTTP, self.probe.module_path),
                                "cluster": http_cluster,
                                "timeout": "10s",
                            },
                            "sha256": self.probe.module_sha256,
                        }},
                    },
                },
            },
        })
    }

    /// The service's host name as istiod writes it into cluster names.
    fn host_of(&self, service: &Service<'_>) -> String {
        format!("{}.{}.svc.cluster.local", service.name, self.pod.namespace)
    }

    /// `outbound|PORT||HOST`: the service's pod (EDS's, here static), over
    /// mTLS when its endpoint is in the mesh (auto-mTLS's transport socket
    /// matches), checked to be the service account's SPIFFE identity.
    fn outbound_cluster(&self, service: &Service<'_>) -> Value {
        let host = self.host_of(service);
        let name = format!("outbound|{}||{host}", service.port);
        let mut endpoint = json!({ "endpoint": { "address": socket(&service.endpoint.to_string(), service.target_port) } });
        let mut cluster = json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "10s",
            "lb_policy": "LEAST_REQUEST",
            "alt_stat_name": format!("{name};"),
        });
        if service.protocol.is_http2() {
            cluster["typed_extension_protocol_options"] = explicit_http2();
        }
        if self.mtls.is_some() {
            endpoint["metadata"] = json!({ "filter_metadata": { "envoy.transport_socket_match": { "tlsMode": "istio" } } });
            let peer = spiffe_id(self.pod.namespace, service.service_account);
            cluster["transport_socket_matches"] = json!([
                {
                    "name": "tlsMode-istio",
                    "match": { "tlsMode": "istio" },
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                            "sni": format!("outbound_.{}_._.{host}", service.port),
                            "common_tls_context": {
                                "tls_params": tls_params(false),
                                "alpn_protocols": ALPN_IN_MESH,
                                "tls_certificate_sds_secret_configs": [{ "name": "default" }],
                                "combined_validation_context": {
                                    "default_validation_context": { "match_subject_alt_names": [{ "exact": peer }] },
                                    "validation_context_sds_secret_config": { "name": "ROOTCA" },
                                },
                            },
                        },
                    },
                },
                {
                    "name": "tlsMode-disabled",
                    "match": {},
                    "transport_socket": {
                        "name": "envoy.transport_sockets.raw_buffer",
                        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" },
                    },
                },
            ]);
        }
        cluster["load_assignment"] =
            json!({ "cluster_name": name, "endpoints": [{ "lb_endpoints": [endpoint] }] });
        cluster
    }
}

/// Which side of the sidecar a connection manager serves, for a port of
/// which protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Inbound(PortProtocol),
    Outbound(PortProtocol),
}

/// Where the app's redirected connections arrive: handed to the listener of
/// their original destination's port, or passed through as TCP.
fn virtual_outbound() -> Value {
    let capture = istio::OUTBOUND_CAPTURE_PORT;
    json!({
        "name": "virtualOutbound",
        "address": socket("0.0.0.0", capture),
        "additional_addresses": [{ "address": socket("::", capture) }],
        "use_original_dst": true,
        "traffic_direction": "OUTBOUND",
        "filter_chains": [
            {
                "name": "virtualOutbound-blackhole",
                "filter_chain_match": { "destination_port": capture },
                "filters": [tcp_proxy("BlackHoleCluster")],
            },
            {
                "name": "virtualOutbound-catchall-tcp",
                "filters": [tcp_proxy("PassthroughCluster")],
            },
        ],
    })
}

/// Both sides' TLS versions, and the key exchange groups of the Envoy Istio
/// 1.30 ships (1.38: X25519 and P-256; the 1.40 this demo runs would also
/// offer X25519MLKEM768, a ClientHello five times as long); the inbound side
/// also its TLS 1.2 ciphers.
fn tls_params(inbound: bool) -> Value {
    let mut params = json!({
        "tls_minimum_protocol_version": "TLSv1_2",
        "tls_maximum_protocol_version": "TLSv1_3",
        "ecdh_curves": ["X25519", "P-256"],
    });
    if inbound {
        params["cipher_suites"] = json!(INBOUND_CIPHERS);
    }
    params
}

/// The inbound mTLS transport socket: the client must present a certificate
/// of the mesh's root and trust domain.
fn inbound_tls() -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_params": tls_params(true),
                "tls_certificate_sds_secret_configs": [{ "name": "default" }],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_subject_alt_names": [{ "prefix": format!("spiffe://{TRUST_DOMAIN}/") }],
                    },
                    "validation_context_sds_secret_config": { "name": "ROOTCA" },
                },
            },
        },
    })
}

/// `inbound|PORT||`: the app at the connection's original destination,
/// reached from Istio's inbound passthrough addresses (`upstream_bind_config`,
/// with `::6` for IPv6 as on a dual-stack mesh), in HTTP/2 for an HTTP/2 port.
fn inbound_cluster(port: u16, protocol: PortProtocol) -> Value {
    let mut cluster = json!({
        "name": format!("inbound|{port}||"),
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s",
        "cleanup_interval": "9223372035s",
        "alt_stat_name": format!("inbound|{port}||;"),
        "upstream_bind_config": passthrough_bind(),
    });
    if protocol.is_http2() {
        cluster["typed_extension_protocol_options"] = explicit_http2();
    }
    cluster
}

/// An upstream cluster's options for HTTP/2 (istiod's `setH2Options`).
fn explicit_http2() -> Value {
    json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} },
        },
    })
}

fn passthrough_bind() -> Value {
    json!({
        "source_address": socket_address(&istio::INBOUND_PASSTHROUGH_BIND_V4.to_string(), 0),
        "extra_source_addresses": [{
            "address": socket_address(&istio::INBOUND_PASSTHROUGH_BIND_V6.to_string(), 0),
        }],
    })
}

/// `PassthroughCluster` (outbound, to destinations the mesh does not know)
/// and `InboundPassthroughCluster` (inbound, to ports no Service declares):
/// the connection's original destination.
fn passthrough_cluster(name: &str, inbound: bool) -> Value {
    let mut cluster = json!({
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "10s",
        "alt_stat_name": format!("{name};"),
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": { "idle_timeout": "300s" },
                "use_downstream_protocol_config": { "http_protocol_options": {}, "http2_protocol_options": {} },
            },
        },
    });
    if inbound {
        cluster["upstream_bind_config"] = passthrough_bind();
    }
    cluster
}

fn listener_filter(name: &str, type_url: &str) -> Value {
    json!({
        "name": format!("envoy.filters.listener.{name}"),
        "typed_config": { "@type": format!("type.googleapis.com/envoy.extensions.filters.listener.{type_url}") },
    })
}

fn port_range(port: u16) -> Value {
    json!({ "destination_port_range": { "start": port, "end": u32::from(port) + 1 } })
}

fn tcp_proxy(cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": cluster,
            "cluster": cluster,
        },
    })
}

/// Envoy's command line for a sidecar running `config`: no hot restart and
/// Istio's drain (a changed filter chain tells its clients at once and
/// closes what is left within [`istio::DRAIN_DURATION_S`]), as istio-agent
/// runs it; `workers` worker threads, warnings and errors only.
pub fn command_line(config: &Path, workers: u32) -> Vec<OsString> {
    let mut line: Vec<OsString> = vec!["--config-path".into(), config.into()];
    line.extend(
        [
            "--log-level",
            "warn",
            "--disable-hot-restart",
            "--drain-time-s",
            &istio::DRAIN_DURATION_S.to_string(),
            "--drain-strategy",
            "immediate",
            "--concurrency",
            &workers.to_string(),
        ]
        .map(OsString::from),
    );
    line
}

fn socket_address(address: &str, port: u16) -> Value {
    json!({ "address": address, "port_value": port })
}

fn socket(address: &str, port: u16) -> Value {
    json!({ "socket_address": socket_address(address, port) })
}

fn static_cluster(name: &str, address: &str, port: u16, http2: bool) -> Value {
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket(address, port) } }] }],
        },
    });
    if http2 {
        // What istiod generates for a Service port named grpc.
        cluster["typed_extension_protocol_options"] = explicit_http2();
    }
    cluster
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> ProbeAt<'static> {
        ProbeAt {
            ip: Ipv4Addr::new(198, 18, 0, 30),
            host: "apitrace-probe.demo.svc.cluster.local",
            module_path: "/wasm/m.wasm",
            module_sha256: "ab",
            session_token: "t",
            show_secrets: false,
        }
    }

    fn files() -> WorkloadFiles {
        WorkloadFiles {
            certificate: "/certs/cert-chain.pem".into(),
            private_key: "/certs/key.pem".into(),
            root: "/certs/root-cert.pem".into(),
        }
    }

    fn named<'v>(items: &'v Value, name: &str) -> &'v Value {
        items
            .as_array()
            .and_then(|items| items.iter().find(|item| item["name"] == name))
            .unwrap_or_else(|| panic!("no {name} in {items:#}"))
    }

    /// The caller's sidecar: the names, ALPN and identity check istiod
    /// gives an outbound call over ISTIO_MUTUAL.
    #[test]
    fn a_callers_sidecar_names_things_and_checks_identities_as_istiod_does() {
        let files = files();
        let services = [Service {
            name: "server",
            cluster_ipv4: Ipv4Addr::new(198, 18, 1, 20),
            cluster_ipv6: Ipv6Addr::LOCALHOST,
            port: 8080,
            protocol: PortProtocol::Http,
            endpoint: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 20)),
            target_port: 8080,
            service_account: "server",
        }];
        let sidecar = Sidecar {
            pod: MeshPod {
                name: "client",
                namespace: "demo",
                service_account: "client",
                ipv4: Ipv4Addr::new(198, 18, 0, 10),
            },
            app_port: None,
            app_protocol: PortProtocol::Http,
            services: &services,
            probe: probe(),
            layers: Layers::ALL,
            mtls: Some(&files),
        };
        let bootstrap = sidecar.bootstrap();
        let resources = &bootstrap["static_resources"];
        let outbound = named(&resources["listeners"], "virtualOutbound");
        assert_eq!(outbound["use_original_dst"], true);
        assert_eq!(outbound["address"]["socket_address"]["port_value"], 15001);
        let port = named(&resources["listeners"], "0.0.0.0_8080");
        assert_eq!(port["bind_to_port"], false);
        let manager = &port["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(manager["use_remote_address"], false);
        let filters: Vec<&str> = manager["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|filter| filter["name"].as_str())
            .collect();
        assert_eq!(
            filters,
            [
                "apitrace",
                "envoy.filters.http.grpc_stats",
                "istio.alpn",
                "envoy.filters.http.fault",
                "envoy.filters.http.cors",
                "envoy.filters.http.router"
            ]
        );
        let alpn =
            &named(&manager["http_filters"], "istio.alpn")["typed_config"]["on_request_headers"][0];
        assert_eq!(alpn["object_key"], "envoy.network.application_protocols");
        assert_eq!(
            alpn["format_string"]["text_format_source"]["inline_string"],
            "istio-http/1.1,istio,http/1.1"
        );
        let cluster = named(
            &resources["clusters"],
            "outbound|8080||server.demo.svc.cluster.local",
        );
        let tls = &cluster["transport_socket_matches"][0]["transport_socket"]["typed_config"];
        assert_eq!(
            tls["sni"],
            "outbound_.8080_._.server.demo.svc.cluster.local"
        );
        assert_eq!(
            tls["common_tls_context"]["combined_validation_context"]["default_validation_context"]
                ["match_subject_alt_names"][0]["exact"],
            "spiffe://cluster.local/ns/demo/sa/server"
        );
        let endpoint = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0];
        assert_eq!(
            endpoint["metadata"]["filter_metadata"]["envoy.transport_socket_match"]["tlsMode"],
            "istio"
        );
        assert_eq!(
            named(&resources["secrets"], "ROOTCA")["validation_context"]["trusted_ca"]["filename"],
            "/certs/root-cert.pem"
        );
        // The filter posts through the cluster that reaches the probe's HTTP port.
        let wasm = &named(&manager["http_filters"], "apitrace")["typed_config"]["config"];
        let value = wasm["configuration"]["value"].as_str().unwrap();
        let plugin = FilterConfig::parse(value.as_bytes()).unwrap();
        assert_eq!(
            plugin.ingest_cluster,
            "outbound|15902||apitrace-probe.demo.svc.cluster.local"
        );
        named(&resources["clusters"], &plugin.ingest_cluster);
    }

    /// A `grpc` port: HTTP/2 from the caller's sidecar on (its cluster, the
    /// ALPN `istio.alpn` sets, the called sidecar's connection manager and
    /// its cluster to the app), and the gRPC status logged on both sides.
    #[test]
    fn an_http2_port_is_http2_on_every_hop_after_the_callers_sidecar() {
        let files = files();
        let services = [Service {
            name: "server",
            cluster_ipv4: Ipv4Addr::new(198, 18, 1, 20),
            cluster_ipv6: Ipv6Addr::LOCALHOST,
            port: 8080,
            protocol: PortProtocol::Grpc,
            endpoint: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 20)),
            target_port: 8080,
            service_account: "server",
        }];
        let pod = |name| MeshPod {
            name,
            namespace: "demo",
            service_account: name,
            ipv4: Ipv4Addr::new(198, 18, 0, 10),
        };
        let client = Sidecar {
            pod: pod("client"),
            app_port: None,
            app_protocol: PortProtocol::Http,
            services: &services,
            probe: probe(),
            layers: Layers::ALL,
            mtls: Some(&files),
        }
        .bootstrap();
        let h2 = |cluster: &Value| {
            cluster["typed_extension_protocol_options"]
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
                ["http2_protocol_options"]
                .is_object()
        };
        let resources = &client["static_resources"];
        assert!(h2(named(
            &resources["clusters"],
            "outbound|8080||server.demo.svc.cluster.local"
        )));
        let manager = &named(&resources["listeners"], "0.0.0.0_8080")["filter_chains"][0]["filters"]
            [0]["typed_config"];
        let alpn =
            &named(&manager["http_filters"], "istio.alpn")["typed_config"]["on_request_headers"][0];
        assert_eq!(
            alpn["format_string"]["text_format_source"]["inline_string"],
            "istio-h2,istio,h2"
        );
        let logged = &manager["access_log"][0]["typed_config"];
        assert_eq!(
            logged["additional_response_trailers_to_log"],
            json!(["grpc-status", "grpc-message"])
        );
        assert_eq!(
            logged["additional_response_headers_to_log"],
            json!(["grpc-status", "grpc-message"])
        );

        let mut server = Sidecar::serving(pod("server"), 8080, probe(), Layers::ALL);
        server.app_protocol = PortProtocol::Grpc;
        server.mtls = Some(&files);
        let server = server.bootstrap();
        let resources = &server["static_resources"];
        assert!(h2(named(&resources["clusters"], "inbound|8080||")));
        let chain = named(&resources["listeners"], "virtualInbound")["filter_chains"]
            .as_array()
            .unwrap()
            .iter()
            .find(|chain| chain["name"] == "0.0.0.0_8080")
            .unwrap();
        assert!(chain["filters"][0]["typed_config"]["http2_protocol_options"].is_object());
        // An `http` port stays HTTP/1.1 (the mesh does not upgrade it).
        let http = Sidecar::serving(pod("server"), 8080, probe(), Layers::ALL).bootstrap();
        assert!(!h2(named(
            &http["static_resources"]["clusters"],
            "inbound|8080||"
        )));
    }

    /// The called pod's sidecar: PERMISSIVE chains, the client certificate
    /// required over mTLS, the app reached from the passthrough address.
    #[test]
    fn a_called_sidecar_accepts_mtls_and_plaintext_and_reaches_its_app_from_127_0_0_6() {
        let files = files();
        let mut sidecar = Sidecar::serving(
            MeshPod {
                name: "server",
                namespace: "demo",
                service_account: "server",
                ipv4: Ipv4Addr::new(198, 18, 0, 20),
            },
            8080,
            probe(),
            Layers::ALL,
        );
        sidecar.mtls = Some(&files);
        let bootstrap = sidecar.bootstrap();
        let resources = &bootstrap["static_resources"];
        let inbound = named(&resources["listeners"], "virtualInbound");
        let chains: Vec<(&Value, &Value)> = inbound["filter_chains"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|chain| chain["name"] == "0.0.0.0_8080")
            .map(|chain| {
                (
                    &chain["filter_chain_match"]["transport_protocol"],
                    &chain["transport_socket"],
                )
            })
            .collect();
        assert_eq!(chains.len(), 2, "mTLS and plaintext");
        assert_eq!(chains[0].0, "tls");
        assert_eq!(
            chains[0].1["typed_config"]["require_client_certificate"],
            true
        );
        assert_eq!(chains[1].0, "raw_buffer");
        let cluster = named(&resources["clusters"], "inbound|8080||");
        assert_eq!(cluster["type"], "ORIGINAL_DST");
        assert_eq!(
            cluster["upstream_bind_config"]["source_address"]["address"],
            "127.0.0.6"
        );
        assert_eq!(
            bootstrap["node"]["id"],
            "sidecar~198.18.0.20~server.demo~demo.svc.cluster.local"
        );
        // The benchmark's bare sidecar: no filter, no access log.
        let bare = Sidecar {
            layers: Layers {
                access_log: false,
                filter: false,
            },
            ..sidecar
        }
        .bootstrap();
        let chain =
            named(&bare["static_resources"]["listeners"], "virtualInbound")["filter_chains"]
                .as_array()
                .unwrap()
                .iter()
                .find(|chain| chain["name"] == "0.0.0.0_8080")
                .cloned()
                .unwrap();
        let manager = &chain["filters"][0]["typed_config"];
        assert_eq!(manager["access_log"], json!([]));
        assert!(
            manager["http_filters"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["name"] != "apitrace")
        );
    }
}
