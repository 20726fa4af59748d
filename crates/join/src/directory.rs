//! Who an IP address is: the cluster's (or the demo's) workloads by address.

use std::{collections::HashMap, net::IpAddr};

use serde::{Deserialize, Serialize};

/// What kind of thing an address belongs to, as a record names a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// A pod's own address.
    Pod,
    /// A Service's cluster IP: a caller's sidecar connects to a pod behind it,
    /// but the app called the Service.
    Service,
    /// A node's address: host-network pods and the node's own traffic.
    Node,
    /// Not a workload of the cluster: anything the directory does not know.
    External,
}

impl WorkloadKind {
    /// The kind as Kubernetes spells it, which records and saved sessions use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "Pod",
            Self::Service => "Service",
            Self::Node => "Node",
            Self::External => "External",
        }
    }

    /// The kind named `text`, as [`Self::as_str`] spells it.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pod, Self::Service, Self::Node, Self::External]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// Who an address is: what a record says in place of the bare address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The namespace of a pod or a Service; empty for what has none (a
    /// node).
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// What kind of object it is.
    pub kind: WorkloadKind,
    /// Whether the session traces this workload's sidecar: a call from or to
    /// it is also logged by it, as a hop of its own.
    pub traced: bool,
}

/// Why a record's caller or callee has no name: no pod, Service or node of
/// the directory held its address when the record was built. Only the
/// session that feeds the directory can tell which: the join knows the
/// names it was given, not those it was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnnamedCause {
    /// The cluster's pods, services and nodes were still being listed: the
    /// name may have come later.
    NotListedYet,
    /// Watching them had failed and not recovered: the name may have come
    /// meanwhile.
    WatchFailing,
    /// Everything was listed and watched: nothing held the address (outside
    /// the cluster, a host-network pod on a node not listed, or a pod that
    /// came and went between two of the watch's events).
    NoHolder,
}

/// How many callers and callees the records left unnamed, by cause: each
/// record's caller and callee count once each, when they have an address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnnamedPeers {
    /// Left unnamed while the watch was still listing.
    pub not_listed_yet: u64,
    /// Left unnamed while the watch was failing.
    pub watch_failing: u64,
    /// Left unnamed with everything listed and watched.
    pub no_holder: u64,
}

impl UnnamedPeers {
    /// Counts one peer left unnamed for `cause`.
    pub fn count(&mut self, cause: UnnamedCause) {
        *match cause {
            UnnamedCause::NotListedYet => &mut self.not_listed_yet,
            UnnamedCause::WatchFailing => &mut self.watch_failing,
            UnnamedCause::NoHolder => &mut self.no_holder,
        } += 1;
    }
}

/// Workloads by IP address, over time. An address can be a pod's and, after
/// that pod is deleted, another's: each entry holds from when it was made,
/// and a call is described by the entry that held when it was made. Entries
/// are never removed, so calls of a pod deleted during the session still carry
/// its name.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    by_ip: HashMap<IpAddr, Vec<(i64, Workload)>>,
}

impl Directory {
    /// Records that `ip` is `workload`'s from `since_ns` on.
    pub fn insert(&mut self, ip: IpAddr, since_ns: i64, workload: Workload) {
        let entries = self.by_ip.entry(ip.to_canonical()).or_default();
        let at = entries.partition_point(|(since, _)| *since <= since_ns);
        entries.insert(at, (since_ns, workload));
    }

    /// Who `ip` was at `at_ns`: the latest entry made by then, or the earliest
    /// one when the call came before any (its pod was known only later).
    pub fn lookup(&self, ip: &str, at_ns: i64) -> Option<&Workload> {
        let entries = self.by_ip.get(&ip.parse::<IpAddr>().ok()?.to_canonical())?;
        entries
            .iter()
            .rev()
            .find(|(since, _)| *since <= at_ns)
            .or_else(|| entries.first())
            .map(|(_, workload)| workload)
    }

    /// Whether the session traces the workload `ip` was at `at_ns`.
    pub fn is_traced(&self, ip: &str, at_ns: i64) -> bool {
        self.lookup(ip, at_ns)
            .is_some_and(|workload| workload.traced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Workload {
        Workload {
            namespace: "default".into(),
            name: name.into(),
            kind: WorkloadKind::Pod,
            traced: false,
        }
    }

    #[test]
    fn an_address_reused_by_another_pod_keeps_the_first_pod_for_earlier_calls() {
        let mut directory = Directory::default();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        directory.insert(ip, 100, pod("web-1"));
        // web-1 is deleted; its address goes to db-0 at 500.
        directory.insert(ip, 500, pod("db-0"));
        let name = |at| directory.lookup("10.0.0.7", at).map(|w| w.name.clone());
        assert_eq!(
            name(50).as_deref(),
            Some("web-1"),
            "known only later, still web-1"
        );
        assert_eq!(name(300).as_deref(), Some("web-1"));
        assert_eq!(name(500).as_deref(), Some("db-0"));
        assert_eq!(name(900).as_deref(), Some("db-0"));
        assert!(directory.lookup("10.0.0.8", 300).is_none());
        assert!(directory.lookup("not an address", 300).is_none());
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_same_workload() {
        let mut directory = Directory::default();
        directory.insert("10.0.0.7".parse().unwrap(), 0, pod("web-1"));
        assert_eq!(
            directory.lookup("::ffff:10.0.0.7", 1).unwrap().name,
            "web-1"
        );
    }
}
