//! The messages the probe streams to the CLI and the WASM filter posts to the
//! probe, generated from `proto/apitrace/v1/apitrace.proto`.
//!
//! The proto file is the reference for what each field means; the Rust types are
//! generated and re-exported as they are.

#[allow(clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/apitrace.v1.rs"));
}

pub use generated::*;

/// The header (gRPC metadata on `Subscribe`, an HTTP header on WASM ingest) that
/// carries the session token. Requests without the session's token are refused.
pub const SESSION_TOKEN_HEADER: &str = "x-apitrace-session-token";

/// The ports a probe listens on. The CLI points sidecars (ALS, WASM ingest and
/// module download) and its own subscription at them.
pub mod ports {
    /// `Probe.Subscribe` (gRPC), reached by the CLI.
    pub const SUBSCRIBE: u16 = 15900;
    /// Envoy's access-log service (gRPC), reached by sidecars.
    pub const ACCESS_LOG: u16 = 15901;
    /// WASM ingest, the filter module, `/healthz` and `/metrics` (HTTP/1.1).
    pub const HTTP: u16 = 15902;
}

/// What the sidecars' access logs are configured to carry beyond Envoy's
/// default fields, which the probe then reads.
pub mod access_log {
    /// A gRPC call's status and message: in the response's trailers, or its
    /// headers when the server answered Trailers-Only. The `envoyHttpAls`
    /// provider logs them as `additionalResponseTrailersToLog` and
    /// `additionalResponseHeadersToLog` (Istio's MeshConfig
    /// `EnvoyHttpGrpcV3LogProvider`), under these lower-case names.
    pub const GRPC_STATUS_HEADERS: [&str; 2] = ["grpc-status", "grpc-message"];
}

/// What Istio's sidecar mode fixes and the probe, the demo and the join
/// depend on. Istio 1.28: `tools/istio-iptables/pkg/constants/constants.go`
/// (the capture ports and the proxy's uid), `pilot/pkg/networking/core/
/// cluster_builder.go` (the inbound passthrough bind addresses) and
/// `pkg/config/constants/constants.go` (the agent's ports).
pub mod istio {
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Where the pod's iptables redirect inbound TCP (`ISTIO_IN_REDIRECT`).
    pub const INBOUND_CAPTURE_PORT: u16 = 15006;
    /// Where they redirect the app's outbound TCP (`ISTIO_REDIRECT`).
    pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
    /// The uid the sidecar runs as: its own traffic is not redirected.
    pub const PROXY_UID: u32 = 1337;
    /// The source address of the sidecar's connections to its app: inbound
    /// clusters bind there (`upstream_bind_config`), and the pod's iptables
    /// let traffic from it on `lo` through unredirected.
    pub const INBOUND_PASSTHROUGH_BIND_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
    pub const INBOUND_PASSTHROUGH_BIND_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);
    /// The agent's and the proxy's own ports (admin 15000, XDS proxy 15004,
    /// HBONE 15008/15009, istiod 15010/15012/15014/15017, the agent's
    /// status 15020 and health 15021, DNS 15053, Prometheus 15090) and the
    /// inbound capture port: the mesh talking to itself, never API calls.
    pub const INFRASTRUCTURE_PORTS: &[u16] = &[
        15000,
        15004,
        INBOUND_CAPTURE_PORT,
        15008,
        15009,
        15010,
        15012,
        15014,
        15017,
        15020,
        15021,
        15053,
        15090,
    ];
}

/// The path on the probe's HTTP port where the WASM filter posts
/// [`WasmBatch`]es.
pub const WASM_INGEST_PATH: &str = "/v1/wasm-events";

/// Several probes' counters, summed for a session's summary.
impl std::ops::AddAssign<&Counters> for Counters {
    fn add_assign(&mut self, other: &Counters) {
        let Counters {
            tc_events,
            tc_ring_full,
            tc_flow_table_full,
            tc_malformed,
            access_logs,
            access_logs_malformed,
            access_log_streams_refused,
            wasm_events,
            wasm_dropped_in_filter,
            wasm_batches_refused,
            wasm_batches_malformed,
            subscriber_lagged,
            no_subscriber,
            tc_packets,
            tc_packets_traced,
            access_log_streams,
            access_log_streams_broken,
            tc_http2_unfollowed,
        } = other;
        self.tc_events += tc_events;
        self.tc_ring_full += tc_ring_full;
        self.tc_flow_table_full += tc_flow_table_full;
        self.tc_malformed += tc_malformed;
        self.access_logs += access_logs;
        self.access_logs_malformed += access_logs_malformed;
        self.access_log_streams_refused += access_log_streams_refused;
        self.wasm_events += wasm_events;
        self.wasm_dropped_in_filter += wasm_dropped_in_filter;
        self.wasm_batches_refused += wasm_batches_refused;
        self.wasm_batches_malformed += wasm_batches_malformed;
        self.subscriber_lagged += subscriber_lagged;
        self.no_subscriber += no_subscriber;
        self.tc_packets += tc_packets;
        self.tc_packets_traced += tc_packets_traced;
        self.access_log_streams += access_log_streams;
        self.access_log_streams_broken += access_log_streams_broken;
        self.tc_http2_unfollowed += tc_http2_unfollowed;
    }
}

impl Endpoint {
    pub fn new(ip: impl Into<String>, port: u32) -> Self {
        Self {
            ip: ip.into(),
            port,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ip.contains(':') {
            write!(f, "[{}]:{}", self.ip, self.port)
        } else {
            write!(f, "{}:{}", self.ip, self.port)
        }
    }
}
