//! Who each address of the cluster is, for the records' `src` and `dst`:
//! pods, services and nodes, watched for the whole session (kube-runtime's
//! watcher) and turned into the join's identities. A pod deleted during the
//! session keeps its name in the calls it made: the join keeps every address's
//! history, and a deletion here only stops new entries.

use std::{collections::BTreeSet, net::IpAddr};

use apitrace_join::{Input, Workload, WorkloadKind};
use futures::{Stream, StreamExt as _, stream};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    runtime::watcher::{self, Event},
};

/// The addresses an object answers on, and who it is there.
pub trait Addressed: Resource<DynamicType = ()> {
    const KIND: WorkloadKind;
    fn addresses(&self) -> Vec<IpAddr>;
}

impl Addressed for Pod {
    const KIND: WorkloadKind = WorkloadKind::Pod;

    /// A host-network pod answers on its node's address: it would shadow the
    /// node, so it names none.
    fn addresses(&self) -> Vec<IpAddr> {
        if self
            .spec
            .as_ref()
            .and_then(|spec| spec.host_network)
            .unwrap_or(false)
        {
            return Vec::new();
        }
        let status = self.status.as_ref();
        let listed = status.and_then(|status| status.pod_ips.as_ref());
        let ips: Vec<&str> = match listed {
            Some(ips) => ips.iter().map(|ip| ip.ip.as_str()).collect(),
            None => status
                .and_then(|status| status.pod_ip.as_deref())
                .into_iter()
                .collect(),
        };
        parse_all(ips)
    }
}

impl Addressed for Service {
    const KIND: WorkloadKind = WorkloadKind::Service;

    fn addresses(&self) -> Vec<IpAddr> {
        let spec = self.spec.as_ref();
        let ips: Vec<&str> = match spec.and_then(|spec| spec.cluster_ips.as_ref()) {
            Some(ips) => ips.iter().map(String::as_str).collect(),
            None => spec
                .and_then(|spec| spec.cluster_ip.as_deref())
                .into_iter()
                .collect(),
        };
        // Headless services ("None") have no address of their own.
        parse_all(ips)
    }
}

impl Addressed for Node {
    const KIND: WorkloadKind = WorkloadKind::Node;

    fn addresses(&self) -> Vec<IpAddr> {
        parse_all(
            self.status
                .iter()
                .flat_map(|status| status.addresses.iter().flatten())
                .filter(|address| address.type_ == "InternalIP" || address.type_ == "ExternalIP")
                .map(|address| address.address.as_str())
                .collect(),
        )
    }
}

fn parse_all(ips: Vec<&str>) -> Vec<IpAddr> {
    ips.into_iter().filter_map(|ip| ip.parse().ok()).collect()
}

/// The traced pods, as `namespace/name`: their sidecars log calls too.
pub type TracedPods = BTreeSet<(String, String)>;

/// Turns one watcher event into identities. What the first listing finds has
/// held since before the session (`since_ns` 0); what appears later holds
/// from `now_ns`.
pub fn identities<K: Addressed>(event: Event<K>, traced: &TracedPods, now_ns: i64) -> Vec<Input> {
    let (object, since_ns) = match event {
        Event::InitApply(object) => (object, 0),
        Event::Apply(object) => (object, now_ns),
        Event::Delete(_) | Event::Init | Event::InitDone => return Vec::new(),
    };
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let is_traced =
        K::KIND == WorkloadKind::Pod && traced.contains(&(namespace.clone(), name.clone()));
    object
        .addresses()
        .into_iter()
        .map(|ip| Input::Identity {
            ip,
            since_ns,
            workload: Workload {
                namespace: namespace.clone(),
                name: name.clone(),
                kind: K::KIND,
                traced: is_traced,
            },
        })
        .collect()
}

/// Identities as watcher events of `K` arrive; a failed watch is reported as
/// an item (the watcher retries it) so that the session can say its names may
/// be incomplete.
pub fn transform<K: Addressed + Send + 'static>(
    events: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    traced: TracedPods,
    clock: impl Fn() -> i64 + Send + 'static,
) -> impl Stream<Item = Result<Input, watcher::Error>> + Send {
    events.flat_map(move |event| {
        let items: Vec<Result<Input, watcher::Error>> = match event {
            Ok(event) => identities(event, &traced, clock())
                .into_iter()
                .map(Ok)
                .collect(),
            Err(error) => vec![Err(error)],
        };
        stream::iter(items)
    })
}

/// Every pod, service and node of the cluster, watched until dropped.
pub fn watch(
    client: &Client,
    traced: TracedPods,
    clock: impl Fn() -> i64 + Clone + Send + 'static,
) -> impl Stream<Item = Result<Input, watcher::Error>> + Send {
    fn of<K>(client: Client) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
    where
        K: Addressed + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    {
        watcher::watcher(Api::<K>::all(client), watcher::Config::default())
    }
    stream::select_all([
        transform(of::<Pod>(client.clone()), traced.clone(), clock.clone()).boxed(),
        transform(of::<Service>(client.clone()), traced.clone(), clock.clone()).boxed(),
        transform(of::<Node>(client.clone()), traced, clock).boxed(),
    ])
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on_stream;
    use serde_json::{Value, json};

    use super::*;

    fn pod(namespace: &str, name: &str, ips: &[&str], host_network: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "namespace": namespace, "name": name },
            "spec": { "containers": [], "hostNetwork": host_network },
            "status": { "podIPs": ips.iter().map(|ip| json!({ "ip": ip })).collect::<Vec<_>>() },
        }))
        .unwrap()
    }

    fn identity(
        ip: &str,
        since_ns: i64,
        namespace: &str,
        name: &str,
        kind: WorkloadKind,
        traced: bool,
    ) -> Input {
        Input::Identity {
            ip: ip.parse().unwrap(),
            since_ns,
            workload: Workload {
                namespace: namespace.into(),
                name: name.into(),
                kind,
                traced,
            },
        }
    }

    fn traced() -> TracedPods {
        BTreeSet::from([("shop".to_owned(), "web-1".to_owned())])
    }

    #[test]
    fn pods_known_at_the_start_hold_from_before_it_and_new_ones_from_when_they_appear() {
        let events = stream::iter([
            Ok(Event::Init),
            Ok(Event::InitApply(pod(
                "shop",
                "web-1",
                &["10.0.0.5", "fd00::5"],
                false,
            ))),
            Ok(Event::InitApply(pod(
                "kube-system",
                "proxy",
                &["192.168.1.2"],
                true,
            ))),
            Ok(Event::InitDone),
            Ok(Event::Apply(pod("shop", "client-7", &["10.0.0.9"], false))),
            // Deleted: no new entry, and the old one stays for its calls.
            Ok(Event::Delete(pod("shop", "web-1", &["10.0.0.5"], false))),
        ]);
        let inputs: Vec<Input> = block_on_stream(transform(events, traced(), || 42))
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            inputs,
            [
                identity("10.0.0.5", 0, "shop", "web-1", WorkloadKind::Pod, true),
                identity("fd00::5", 0, "shop", "web-1", WorkloadKind::Pod, true),
                identity("10.0.0.9", 42, "shop", "client-7", WorkloadKind::Pod, false),
            ]
        );
    }

    #[test]
    fn services_and_nodes_name_their_own_addresses() {
        let service = |name: &str, ips: Value| -> Service {
            serde_json::from_value(json!({
                "metadata": { "namespace": "shop", "name": name },
                "spec": { "clusterIPs": ips },
            }))
            .unwrap()
        };
        let headless = identities(
            Event::InitApply(service("db", json!(["None"]))),
            &traced(),
            0,
        );
        assert!(headless.is_empty());
        let api = identities(
            Event::InitApply(service("web", json!(["10.96.0.10"]))),
            &traced(),
            0,
        );
        assert_eq!(
            api,
            [identity(
                "10.96.0.10",
                0,
                "shop",
                "web",
                WorkloadKind::Service,
                false
            )]
        );
        let node: Node = serde_json::from_value(json!({
            "metadata": { "name": "node-a" },
            "status": { "addresses": [
                { "type": "Hostname", "address": "node-a" },
                { "type": "InternalIP", "address": "192.168.1.2" },
            ] },
        }))
        .unwrap();
        assert_eq!(
            identities(Event::Apply(node), &traced(), 7),
            [identity(
                "192.168.1.2",
                7,
                "",
                "node-a",
                WorkloadKind::Node,
                false
            )]
        );
    }
}
