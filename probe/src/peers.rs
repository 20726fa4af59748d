//! Who may feed the session: the sidecars of the traced pods (and addresses the
//! session lists explicitly), and nobody else. ALS streams and WASM batches from
//! any other address are refused and counted.

use std::{collections::HashMap, net::IpAddr};

use apitrace_proto::PodRef;

#[derive(Debug, Default, Clone)]
pub struct Peers {
    allowed: HashMap<IpAddr, Option<PodRef>>,
}

impl Peers {
    /// Allows `ip`, remembering the pod it belongs to when known. An
    /// address allowed again without a pod keeps the one it had: a cluster
    /// session lists every traced pod's address as a peer of every probe
    /// (any sidecar may reach any probe through the Service), so the probe
    /// that traces the pod finds its own target among the peers, and the WASM
    /// batches it sends must still be marked with that pod.
    pub fn allow(&mut self, ip: IpAddr, pod: Option<PodRef>) {
        let known = self.allowed.entry(ip.to_canonical()).or_default();
        if pod.is_some() {
            *known = pod;
        }
    }

    /// Whether `peer` may send events. IPv4 peers of a dual-stack listener
    /// arrive as IPv4-mapped IPv6 addresses and are compared as IPv4.
    pub fn allows(&self, peer: IpAddr) -> bool {
        self.allowed.contains_key(&peer.to_canonical())
    }

    /// The pod an allowed peer address belongs to.
    pub fn pod_of(&self, peer: IpAddr) -> Option<&PodRef> {
        self.allowed.get(&peer.to_canonical())?.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_addresses_are_allowed_also_when_mapped() {
        let mut peers = Peers::default();
        let pod = PodRef {
            namespace: "demo".into(),
            name: "server".into(),
        };
        peers.allow("198.18.0.3".parse().unwrap(), Some(pod.clone()));
        assert!(peers.allows("198.18.0.3".parse().unwrap()));
        assert!(peers.allows("::ffff:198.18.0.3".parse().unwrap()));
        assert_eq!(
            peers.pod_of("::ffff:198.18.0.3".parse().unwrap()),
            Some(&pod)
        );
        assert!(!peers.allows("198.18.0.4".parse().unwrap()));
        assert!(!Peers::default().allows("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_target_listed_again_as_a_peer_keeps_its_pod() {
        let pod = PodRef {
            namespace: "shop".into(),
            name: "web-1".into(),
        };
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let mut peers = Peers::default();
        peers.allow(ip, Some(pod.clone()));
        peers.allow(ip, None);
        assert_eq!(peers.pod_of(ip), Some(&pod));
        // Listed as a peer first, then known as a target: named too.
        let mut peers = Peers::default();
        peers.allow(ip, None);
        assert_eq!(peers.pod_of(ip), None);
        peers.allow(ip, Some(pod.clone()));
        assert_eq!(peers.pod_of(ip), Some(&pod));
    }
}
