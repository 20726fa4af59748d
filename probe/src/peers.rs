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
    /// Allows `ip`, remembering the pod it belongs to when known.
    pub fn allow(&mut self, ip: IpAddr, pod: Option<PodRef>) {
        self.allowed.insert(ip.to_canonical(), pod);
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
}
