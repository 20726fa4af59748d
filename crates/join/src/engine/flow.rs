//! Where a packet was seen and which way it went: the keys of the wire.
//!
//! One connection can be seen by several pods: between two traced pods, the
//! caller's `eth0` and the called pod's `eth0` carry the same packets, and each
//! pod's probe reports them. A [`Flow`] is therefore a direction of a
//! connection as one pod saw it, and a pod is known by a small number
//! ([`PodIx`]) rather than by its name, so that keys stay cheap to hash.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use apitrace_proto::{Endpoint, PodRef};
use rustc_hash::FxHashMap;

/// A pod that reported events, by the order it was first seen in. The
/// unknown pod (an event that names none) is a pod of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct PodIx(u16);

/// The pods seen, each given a [`PodIx`].
#[derive(Debug, Default)]
pub(crate) struct Pods {
    by_name: FxHashMap<(String, String), PodIx>,
    /// The pod found last, checked first: a probe's events come in runs of
    /// one pod's.
    last: Option<(PodRef, PodIx)>,
}

impl Pods {
    /// Pods beyond this many share the last index: a session traces far fewer.
    const CAPACITY: u16 = u16::MAX;

    /// The index of `pod`, if it has one, without giving it one.
    pub fn peek(&self, pod: Option<&PodRef>) -> PodIx {
        pod.and_then(|pod| {
            self.by_name
                .get(&(pod.namespace.clone(), pod.name.clone()))
                .copied()
        })
        .unwrap_or_default()
    }

    pub fn index(&mut self, pod: Option<&PodRef>) -> PodIx {
        let Some(pod) = pod else {
            return PodIx::default();
        };
        if let Some((last, index)) = &self.last
            && last.name == pod.name
            && last.namespace == pod.namespace
        {
            return *index;
        }
        let next = PodIx(u16::try_from(self.by_name.len() + 1).unwrap_or(Self::CAPACITY));
        let index = *self
            .by_name
            .entry((pod.namespace.clone(), pod.name.clone()))
            .or_insert(next);
        self.last = Some((pod.clone(), index));
        index
    }
}

/// One direction of a connection, as `pod` saw it: source address and port,
/// destination address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Flow {
    pub pod: PodIx,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
}

impl Flow {
    /// The flow from `src` to `dst` as `pod` saw it; `None` when either end is
    /// missing or is not an address and a port.
    pub fn new(pod: PodIx, src: Option<&Endpoint>, dst: Option<&Endpoint>) -> Option<Self> {
        let (src, src_port) = parse(src?)?;
        let (dst, dst_port) = parse(dst?)?;
        Some(Self {
            pod,
            src,
            src_port,
            dst,
            dst_port,
        })
    }

    pub fn reverse(&self) -> Self {
        Self {
            pod: self.pod,
            src: self.dst,
            src_port: self.dst_port,
            dst: self.src,
            dst_port: self.src_port,
        }
    }

    /// The same connection whichever direction it is seen from: the flow
    /// whose source sorts first, by port and then address, so that mostly
    /// one comparison of two numbers decides.
    pub fn connection(&self) -> Self {
        if (self.src_port, self.src) <= (self.dst_port, self.dst) {
            *self
        } else {
            self.reverse()
        }
    }

    /// The same flow to `port` on the loopback address of the source's
    /// family: where the pod's iptables redirect a connection the app opened
    /// (to the sidecar's outbound capture port).
    pub fn redirected_to(&self, port: u16) -> Self {
        let loopback = match self.src {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        Self {
            dst: loopback,
            dst_port: port,
            ..*self
        }
    }

    /// Where the flow comes from, as the records show it.
    pub fn source(&self) -> Endpoint {
        Endpoint::new(ip_text(self.src), u32::from(self.src_port))
    }

    /// Where the flow goes, as the records show it.
    pub fn destination(&self) -> Endpoint {
        Endpoint::new(ip_text(self.dst), u32::from(self.dst_port))
    }
}

/// Addresses as the records write them, each written once: a session's
/// records name the same few pods again and again.
#[derive(Debug, Default)]
pub(crate) struct IpTexts {
    texts: FxHashMap<IpAddr, Arc<str>>,
}

impl IpTexts {
    /// Addresses kept at most; past them, the cache starts over.
    const CAPACITY: usize = 4096;

    pub fn get(&mut self, ip: IpAddr) -> Arc<str> {
        if let Some(text) = self.texts.get(&ip) {
            return Arc::clone(text);
        }
        if self.texts.len() >= Self::CAPACITY {
            self.texts.clear();
        }
        let text: Arc<str> = ip_text(ip).into();
        self.texts.insert(ip, Arc::clone(&text));
        text
    }
}

fn parse(endpoint: &Endpoint) -> Option<(IpAddr, u16)> {
    let ip: IpAddr = endpoint.ip.parse().ok()?;
    Some((ip.to_canonical(), u16::try_from(endpoint.port).ok()?))
}

/// `ip` as text, as `ip.to_string()` writes it. IPv4 by hand: `Display`
/// goes through the formatter's machinery, twice for every record.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_addresses_are_written_as_the_standard_library_writes_them() {
        for text in ["::1", "fd00::14", "::6"] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_ipv4_flow_envoy_reports() {
        let pod = PodIx::default();
        let mapped = Flow::new(
            pod,
            Some(&Endpoint::new("::ffff:10.0.0.7", 41000)),
            Some(&Endpoint::new("10.0.0.9", 80)),
        );
        let plain = Flow::new(
            pod,
            Some(&Endpoint::new("10.0.0.7", 41000)),
            Some(&Endpoint::new("10.0.0.9", 80)),
        );
        assert_eq!(mapped, plain);
        assert_eq!(plain.unwrap().source(), Endpoint::new("10.0.0.7", 41000));
    }

    #[test]
    fn a_port_past_65535_or_a_name_is_no_flow() {
        let pod = PodIx::default();
        let to = Endpoint::new("10.0.0.9", 80);
        for from in [Endpoint::new("10.0.0.7", 70_000), Endpoint::new("web", 80)] {
            assert_eq!(Flow::new(pod, Some(&from), Some(&to)), None, "{from:?}");
        }
    }

    #[test]
    fn pods_are_numbered_once_each_and_none_is_the_unknown_pod() {
        let pod = |name: &str| PodRef {
            namespace: "demo".into(),
            name: name.into(),
        };
        let mut pods = Pods::default();
        let client = pods.index(Some(&pod("client")));
        let server = pods.index(Some(&pod("server")));
        assert_ne!(client, server);
        assert_eq!(pods.index(Some(&pod("client"))), client);
        assert_eq!(pods.index(None), PodIx::default());
        assert_ne!(client, PodIx::default());
    }

    proptest::proptest! {
        /// Every IPv4 address is written as the standard library writes it.
        #[test]
        fn ipv4_addresses_are_written_as_the_standard_library_writes_them(bits: u32) {
            let ip = IpAddr::V4(Ipv4Addr::from(bits));
            proptest::prop_assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}
