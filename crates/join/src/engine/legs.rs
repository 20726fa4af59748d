//! A sidecar's hop of a call and the two connections it joins: where on the
//! wire each is seen (rule 2 of the engine's documentation).

use apitrace_proto::{AccessLog, TrafficDirection, istio};

use super::flow::{Flow, PodIx};

/// Which side of its sidecar a hop is, read from the cluster the sidecar
/// routed to, as istiod names them: `inbound|PORT||` and
/// `outbound|PORT|SUBSET|HOST` (`pilot/pkg/model/service.go`,
/// `BuildSubsetKey`), `InboundPassthroughCluster` for inbound traffic to a
/// port no Service declares, and `PassthroughCluster` and `BlackHoleCluster`
/// for outbound traffic to destinations the mesh does not know
/// (`pilot/pkg/util/protoconv`, `pkg/config/constants`). Unspecified for a
/// cluster name of neither kind (a gateway's, or no cluster: the sidecar
/// answered itself).
pub fn direction_of_cluster(cluster: &str) -> TrafficDirection {
    match cluster.split('|').next() {
        Some("inbound") => TrafficDirection::Inbound,
        Some("outbound") => TrafficDirection::Outbound,
        Some(name) if name.starts_with("InboundPassthroughCluster") => TrafficDirection::Inbound,
        Some("PassthroughCluster" | "BlackHoleCluster") => TrafficDirection::Outbound,
        _ => TrafficDirection::Unspecified,
    }
}

/// One of the two connections of a hop, where its reporting pod's interfaces
/// see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leg {
    /// The direction its requests go.
    pub request: Flow,
    /// The direction its responses come back: the request's reversed, but
    /// for a connection the pod's iptables redirected.
    pub response: Flow,
    /// When the sidecar read the request's first byte (the downstream
    /// leg) or sent it (the upstream leg), per its access log.
    pub at_ns: i64,
}

/// What one access-log entry says about where its call was on the wire.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HopLegs {
    pub direction: TrafficDirection,
    /// The connection the sidecar accepted the call on.
    pub downstream: Option<Leg>,
    /// The connection it sent the call on.
    pub upstream: Option<Leg>,
    /// Whether the downstream connection speaks HTTP/1: only there can the
    /// wire show the call's own packet without its request id.
    pub downstream_http1: bool,
}

impl HopLegs {
    /// The legs of `log`, reported by the sidecar of `pod`, for a hop in
    /// `direction`.
    ///
    /// The downstream leg is the connection Envoy accepted: its remote and
    /// local addresses (the local one being the original destination, which
    /// the `original_dst` listener filter restores). On the pod's interfaces
    /// its requests carry those addresses, but for an outbound hop: the app's
    /// connection was redirected to the outbound capture port on a loopback
    /// address (its requests' destination on `lo`), and its replies come
    /// from the original destination, translated back before TC sees them.
    /// The upstream leg is the connection Envoy opened: from its upstream
    /// local address (127.0.0.6 towards the app, for an inbound hop) to the
    /// upstream host.
    pub fn of(log: &AccessLog, pod: PodIx, direction: TrafficDirection) -> Self {
        let downstream = Flow::new(
            pod,
            log.downstream_remote.as_ref(),
            log.downstream_local.as_ref(),
        )
        .map(|flow| Leg {
            request: if direction == TrafficDirection::Outbound {
                flow.redirected_to(istio::OUTBOUND_CAPTURE_PORT)
            } else {
                flow
            },
            response: flow.reverse(),
            at_ns: log.start_time_unix_nano,
        });
        let upstream = Flow::new(
            pod,
            log.upstream_local.as_ref(),
            log.upstream_remote.as_ref(),
        )
        .filter(|_| log.first_upstream_tx_byte_ns > 0)
        .map(|flow| Leg {
            request: flow,
            response: flow.reverse(),
            at_ns: log
                .start_time_unix_nano
                .saturating_add(log.first_upstream_tx_byte_ns),
        });
        Self {
            direction,
            downstream,
            upstream,
            downstream_http1: log.protocol.starts_with("HTTP/1") || log.protocol.is_empty(),
        }
    }

    /// The connections the hop's legs are on, each once (a leg the pod's
    /// iptables redirected is two, one per half).
    pub fn connections(&self) -> impl Iterator<Item = Flow> + use<> {
        let mut connections: [Option<Flow>; 4] = [None; 4];
        for (slot, leg) in [self.downstream, self.upstream].into_iter().enumerate() {
            if let Some(leg) = leg {
                connections[2 * slot] = Some(leg.request.connection());
                let response = leg.response.connection();
                if response != leg.request.connection() {
                    connections[2 * slot + 1] = Some(response);
                }
            }
        }
        connections.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use apitrace_proto::Endpoint;

    use super::*;

    fn ep(ip: &str, port: u32) -> Option<Endpoint> {
        Some(Endpoint::new(ip, port))
    }

    #[test]
    fn cluster_names_give_the_direction_as_istiod_names_them() {
        for (cluster, direction) in [
            ("inbound|8080||", TrafficDirection::Inbound),
            (
                "outbound|8080||server.demo.svc.cluster.local",
                TrafficDirection::Outbound,
            ),
            ("InboundPassthroughCluster", TrafficDirection::Inbound),
            ("InboundPassthroughClusterIpv4", TrafficDirection::Inbound),
            ("PassthroughCluster", TrafficDirection::Outbound),
            ("BlackHoleCluster", TrafficDirection::Outbound),
            ("", TrafficDirection::Unspecified),
            ("my-gateway-cluster", TrafficDirection::Unspecified),
        ] {
            assert_eq!(direction_of_cluster(cluster), direction, "{cluster:?}");
        }
    }

    /// The caller's sidecar: the app's connection came redirected on `lo`,
    /// the sidecar's own went out to the called pod.
    #[test]
    fn an_outbound_hop_is_seen_redirected_on_lo_and_direct_on_eth0() {
        let pod = PodIx::default();
        let log = AccessLog {
            start_time_unix_nano: 1_000,
            upstream_cluster: "outbound|8080||server.demo.svc.cluster.local".into(),
            protocol: "HTTP/1.1".into(),
            downstream_remote: ep("198.18.0.10", 41000),
            downstream_local: ep("198.18.1.20", 8080),
            upstream_local: ep("198.18.0.10", 52000),
            upstream_remote: ep("198.18.0.20", 8080),
            first_upstream_tx_byte_ns: 300,
            ..AccessLog::default()
        };
        let legs = HopLegs::of(&log, pod, direction_of_cluster(&log.upstream_cluster));
        let down = legs.downstream.unwrap();
        assert_eq!(
            (down.request.source(), down.request.destination()),
            (
                Endpoint::new("198.18.0.10", 41000),
                Endpoint::new("127.0.0.1", 15001)
            )
        );
        assert_eq!(
            (down.response.source(), down.response.destination()),
            (
                Endpoint::new("198.18.1.20", 8080),
                Endpoint::new("198.18.0.10", 41000)
            )
        );
        let up = legs.upstream.unwrap();
        assert_eq!(up.request.destination(), Endpoint::new("198.18.0.20", 8080));
        assert_eq!(up.response, up.request.reverse());
        assert_eq!((down.at_ns, up.at_ns), (1_000, 1_300));
        assert!(legs.downstream_http1);
    }

    /// A call the sidecar answered itself (no route, a 503 before any
    /// connection) has no upstream leg.
    #[test]
    fn a_hop_that_sent_nothing_upstream_has_no_upstream_leg() {
        let log = AccessLog {
            upstream_cluster: "inbound|8080||".into(),
            protocol: "HTTP/2".into(),
            downstream_remote: ep("198.18.0.10", 41000),
            downstream_local: ep("198.18.0.20", 8080),
            upstream_local: ep("127.0.0.6", 40000),
            upstream_remote: ep("198.18.0.20", 8080),
            ..AccessLog::default()
        };
        let legs = HopLegs::of(&log, PodIx::default(), TrafficDirection::Inbound);
        assert!(legs.upstream.is_none());
        let down = legs.downstream.unwrap();
        assert_eq!(down.response, down.request.reverse());
        assert!(!legs.downstream_http1);
    }
}
