//! Who an IP address is: the cluster's (or the demo's) workloads by address.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    Pod,
    Service,
    Node,
    /// Not a workload of the cluster: anything the directory does not know.
    External,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "Pod",
            Self::Service => "Service",
            Self::Node => "Node",
            Self::External => "External",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub kind: WorkloadKind,
}

/// Workloads by IP address. Entries are kept when a workload goes away, so
/// that calls of a pod deleted during the session still carry its name; a new
/// workload with the same address replaces the old one.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    by_ip: HashMap<String, Workload>,
}

impl Directory {
    pub fn insert(&mut self, ip: impl Into<String>, workload: Workload) {
        self.by_ip.insert(ip.into(), workload);
    }

    pub fn lookup(&self, ip: &str) -> Option<&Workload> {
        self.by_ip.get(ip)
    }
}
