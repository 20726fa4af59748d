//! Who each address of the cluster is, for the records' `src` and `dst`:
//! pods, services and nodes, watched for the whole session (kube-runtime's
//! watcher) and turned into the join's identities. A pod deleted during the
//! session keeps its name in the calls it made: the join keeps every address's
//! history, and a deletion here only stops new entries.
//!
//! # What it costs on a large cluster
//!
//! The watches stay cluster-wide: a traced pod's callers and callees may be in
//! any namespace, and no narrower source names them correctly. A look-up by
//! address would be `status.podIP=` (a selectable field of pods:
//! `PodToSelectableFields` in kubernetes/kubernetes
//! `pkg/registry/core/pod/strategy.go`), but the only field the watch cache
//! indexes pods by is `spec.nodeName` (`MatchPod`'s `IndexFields`, same file),
//! so each look-up costs the API server a scan of every pod; it says who holds
//! the address now, not when the call was made (IP reuse); and it answers
//! after the join may have printed the call.
//!
//! What is bounded is what a watch holds. Each object is read into [`Slim`],
//! which keeps its name, namespace and resourceVersion and the few fields its
//! addresses come from, and skips the rest as it is parsed (a pod's
//! managedFields and spec are most of its few kilobytes). Lists come in pages
//! of [`PAGE_SIZE`] (`limit` and `continue`), so at most one page's text is
//! held; `BENCHMARKS.md` ("The identity watch") has the figures for 10,000
//! pods. Two other ways kube-runtime offers were not taken:
//!
//! - `any_semantic()` (resourceVersion=0): the watch cache answers it, which
//!   spares etcd, but until `ListFromCacheSnapshot` (KEP-4988; beta and on
//!   from 1.34, `pkg/features/kube_features.go`) the cache served such a list
//!   whole, whatever its `limit`: one response of every pod to hold at once.
//!   kube-core 5.0.0 drops `resourceVersion=0` from a list that has a limit
//!   (`ListParams::populate_qp`, `src/params.rs`), so with pages it would
//!   change nothing, and without them it is that one response. Without a
//!   resourceVersion the first page is a consistent read, served from the
//!   cache since `ConsistentListFromCache` (beta, on from 1.31), and the
//!   pages after it come from etcd at the first page's revision
//!   (`shouldDelegateList` in
//!   `staging/src/k8s.io/apiserver/pkg/storage/cacher/delegator.go`).
//! - `streaming_lists()` (`sendInitialEvents`, WatchList): one object at a
//!   time from the cache, the cheapest for both sides, but the server's
//!   `WatchList` gate was on in 1.32, off again in 1.33 and on from 1.34
//!   (`pkg/features/kube_features.go`), and kube-runtime 5's watcher does not
//!   fall back to a list when a server refuses it (`step_trampolined`,
//!   `State::Empty`, in kube-runtime 5.0.0 `src/watcher.rs`): on most
//!   clusters in use the names would never come.

use std::{
    borrow::Cow,
    collections::BTreeSet,
    fmt::Debug,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
};

use apitrace_join::{Input, UnnamedCause, Workload, WorkloadKind};
use futures::{Stream, StreamExt as _, stream};
use k8s_openapi::{
    api::core::v1::{Node, Pod, Service},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    runtime::watcher::{self, Event},
};
use serde::{
    Deserialize, Deserializer,
    de::{DeserializeOwned, IgnoredAny},
};

/// Objects per list request: client-go's reflector pages by the same number,
/// and a page of pods is about 2 MB of JSON at a few kilobytes a pod.
pub const PAGE_SIZE: u32 = 500;

/// A kind the watch names addresses from: the fields of its `spec` and
/// `status` that say its addresses, and how.
pub trait Addressed: k8s_openapi::Resource + Clone + Debug + Send + Sync + 'static {
    const WORKLOAD: WorkloadKind;
    type Spec: DeserializeOwned + Default + Clone + Debug + Send + Sync + 'static;
    type Status: DeserializeOwned + Default + Clone + Debug + Send + Sync + 'static;
    fn addresses(spec: &Self::Spec, status: &Self::Status) -> Vec<IpAddr>;
}

/// An object of kind `K` as the watch keeps it: its names and the fields its
/// addresses come from. Everything else of the object is skipped as it is
/// parsed, never allocated.
#[derive(Debug, Clone, Deserialize)]
#[serde(bound = "")]
pub struct Slim<K: Addressed> {
    #[serde(deserialize_with = "names_only")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: K::Spec,
    #[serde(default)]
    status: K::Status,
}

impl<K: Addressed> Slim<K> {
    pub fn addresses(&self) -> Vec<IpAddr> {
        K::addresses(&self.spec, &self.status)
    }
}

/// The metadata the watch needs: the names for the records, the
/// resourceVersion the watcher resumes from.
fn names_only<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Names {
        name: Option<String>,
        namespace: Option<String>,
        resource_version: Option<String>,
    }
    let names = Names::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: names.name,
        namespace: names.namespace,
        resource_version: names.resource_version,
        ..ObjectMeta::default()
    })
}

impl<K: Addressed> Resource for Slim<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind((): &()) -> Cow<'_, str> {
        K::KIND.into()
    }
    fn group((): &()) -> Cow<'_, str> {
        K::GROUP.into()
    }
    fn version((): &()) -> Cow<'_, str> {
        K::VERSION.into()
    }
    fn plural((): &()) -> Cow<'_, str> {
        K::URL_PATH_SEGMENT.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    host_network: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodStatus {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<PodIp>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PodIp {
    ip: String,
}

impl Addressed for Pod {
    const WORKLOAD: WorkloadKind = WorkloadKind::Pod;
    type Spec = PodSpec;
    type Status = PodStatus;

    /// A host-network pod answers on its node's address: it would shadow the
    /// node, so it names none. Nor does a pod that has finished (`Succeeded`,
    /// `Failed`): its status keeps the address its sandbox had, which the
    /// network plugin may have given to a new pod, so Kubernetes itself
    /// routes nothing to it (`ShouldPodBeInEndpoints` in kubernetes/kubernetes
    /// `staging/src/k8s.io/endpointslice/util/controller_utils.go`); its
    /// entry from when it ran stays in the join for the calls it made.
    fn addresses(spec: &PodSpec, status: &PodStatus) -> Vec<IpAddr> {
        let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        if spec.host_network.unwrap_or(false) || finished {
            return Vec::new();
        }
        let ips: Vec<&str> = match &status.pod_ips {
            Some(ips) => ips.iter().map(|ip| ip.ip.as_str()).collect(),
            None => status.pod_ip.as_deref().into_iter().collect(),
        };
        parse_all(ips)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceSpec {
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    cluster_ips: Option<Vec<String>>,
}

impl Addressed for Service {
    const WORKLOAD: WorkloadKind = WorkloadKind::Service;
    type Spec = ServiceSpec;
    type Status = IgnoredAny;

    fn addresses(spec: &ServiceSpec, _: &IgnoredAny) -> Vec<IpAddr> {
        let ips: Vec<&str> = match &spec.cluster_ips {
            Some(ips) => ips.iter().map(String::as_str).collect(),
            None => spec.cluster_ip.as_deref().into_iter().collect(),
        };
        // Headless services ("None") have no address of their own.
        parse_all(ips)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeStatus {
    addresses: Option<Vec<NodeAddress>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    type_: String,
    address: String,
}

impl Addressed for Node {
    const WORKLOAD: WorkloadKind = WorkloadKind::Node;
    type Spec = IgnoredAny;
    type Status = NodeStatus;

    fn addresses(_: &IgnoredAny, status: &NodeStatus) -> Vec<IpAddr> {
        parse_all(
            status
                .addresses
                .iter()
                .flatten()
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

/// Turns one watcher event into identities. What the session's first
/// listing finds has held since before the session (`since_ns` 0); what
/// appears later holds from `now_ns`, and so does what a later listing finds
/// (`relisted`: the watcher lists again after its watch broke off, 410
/// `Expired` among others), since an address may have passed to another pod
/// meanwhile and the calls before must keep the name they had.
pub fn identities<K: Addressed>(
    event: Event<Slim<K>>,
    traced: &TracedPods,
    relisted: bool,
    now_ns: i64,
) -> Vec<Input> {
    let (object, since_ns) = match event {
        Event::InitApply(object) if !relisted => (object, 0),
        Event::InitApply(object) | Event::Apply(object) => (object, now_ns),
        Event::Delete(_) | Event::Init | Event::InitDone => return Vec::new(),
    };
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let is_traced =
        K::WORKLOAD == WorkloadKind::Pod && traced.contains(&(namespace.clone(), name.clone()));
    object
        .addresses()
        .into_iter()
        .map(|ip| Input::Identity {
            ip,
            since_ns,
            workload: Workload {
                namespace: namespace.clone(),
                name: name.clone(),
                kind: K::WORKLOAD,
                traced: is_traced,
            },
        })
        .collect()
}

/// Where the watches are, for a record whose caller or callee no name
/// fits: how many have yet to finish their first listing, and how many are
/// failing now (the watcher retries them). Shared by the watches of one
/// session and read as records are printed.
#[derive(Debug, Clone)]
pub struct Naming {
    listing: Arc<AtomicUsize>,
    failing: Arc<AtomicUsize>,
}

impl Naming {
    /// For `watches` watches, none of which has listed yet.
    pub fn new(watches: usize) -> Self {
        Self {
            listing: Arc::new(AtomicUsize::new(watches)),
            failing: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Why an address has no name now: a failing watch first (its names
    /// stopped coming), then one still listing, else nothing holds it.
    pub fn unnamed_cause(&self) -> UnnamedCause {
        if self.failing.load(Relaxed) > 0 {
            UnnamedCause::WatchFailing
        } else if self.listing.load(Relaxed) > 0 {
            UnnamedCause::NotListedYet
        } else {
            UnnamedCause::NoHolder
        }
    }
}

/// Identities as watcher events of `K` arrive; a failed watch is reported as
/// an item (the watcher retries it) so that the session can say its names may
/// be incomplete. `naming` learns when this watch has listed, fails and
/// recovers.
pub fn transform<K: Addressed>(
    events: impl Stream<Item = Result<Event<Slim<K>>, watcher::Error>> + Send + 'static,
    traced: TracedPods,
    clock: impl Fn() -> i64 + Send + 'static,
    naming: Naming,
) -> impl Stream<Item = Result<Input, watcher::Error>> + Send {
    let mut listed = false;
    let mut failing = false;
    events.flat_map(move |event| {
        if failing != event.is_err() {
            failing = event.is_err();
            if failing {
                naming.failing.fetch_add(1, Relaxed);
            } else {
                naming.failing.fetch_sub(1, Relaxed);
            }
        }
        let items: Vec<Result<Input, watcher::Error>> = match event {
            Ok(Event::InitDone) => {
                if !listed {
                    naming.listing.fetch_sub(1, Relaxed);
                }
                listed = true;
                Vec::new()
            }
            Ok(event) => identities(event, &traced, listed, clock())
                .into_iter()
                .map(Ok)
                .collect(),
            Err(error) => vec![Err(error)],
        };
        stream::iter(items)
    })
}

/// The watcher of every object of kind `K` in the cluster, as slim objects,
/// listed in pages of [`PAGE_SIZE`].
pub fn watch_all<K: Addressed>(
    client: Client,
) -> impl Stream<Item = Result<Event<Slim<K>>, watcher::Error>> + Send {
    watcher::watcher(
        Api::<Slim<K>>::all(client),
        watcher::Config::default().page_size(PAGE_SIZE),
    )
}

/// Every pod, service and node of the cluster, watched until dropped, and
/// where those watches are (see [`Naming`]).
pub fn watch(
    client: &Client,
    traced: TracedPods,
    clock: impl Fn() -> i64 + Clone + Send + 'static,
) -> (
    impl Stream<Item = Result<Input, watcher::Error>> + Send,
    Naming,
) {
    let naming = Naming::new(3);
    let inputs = stream::select_all([
        transform(
            watch_all::<Pod>(client.clone()),
            traced.clone(),
            clock.clone(),
            naming.clone(),
        )
        .boxed(),
        transform(
            watch_all::<Service>(client.clone()),
            traced.clone(),
            clock.clone(),
            naming.clone(),
        )
        .boxed(),
        transform(
            watch_all::<Node>(client.clone()),
            traced,
            clock,
            naming.clone(),
        )
        .boxed(),
    ]);
    (inputs, naming)
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on_stream;
    use serde_json::{Value, json};

    use super::*;

    fn pod(namespace: &str, name: &str, ips: &[&str], host_network: bool) -> Slim<Pod> {
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

    /// What `transform` makes of `events`, its clock at 42.
    fn at_42(
        events: impl Stream<Item = Result<Event<Slim<Pod>>, watcher::Error>> + Send + 'static,
    ) -> Vec<Input> {
        block_on_stream(Box::pin(transform(events, traced(), || 42, Naming::new(1))))
            .map(Result::unwrap)
            .collect()
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
        assert_eq!(
            at_42(events),
            [
                identity("10.0.0.5", 0, "shop", "web-1", WorkloadKind::Pod, true),
                identity("fd00::5", 0, "shop", "web-1", WorkloadKind::Pod, true),
                identity("10.0.0.9", 42, "shop", "client-7", WorkloadKind::Pod, false),
            ]
        );
    }

    #[test]
    fn what_a_later_listing_finds_holds_from_then_since_an_address_may_have_passed_on() {
        let events = stream::iter([
            Ok(Event::Init),
            Ok(Event::InitApply(pod("shop", "web-1", &["10.0.0.5"], false))),
            Ok(Event::InitDone),
            // The watch broke off; web-1 went, db-0 got its address, and the
            // watcher lists again.
            Ok(Event::Init),
            Ok(Event::InitApply(pod("shop", "db-0", &["10.0.0.5"], false))),
            Ok(Event::InitDone),
        ]);
        assert_eq!(
            at_42(events),
            [
                identity("10.0.0.5", 0, "shop", "web-1", WorkloadKind::Pod, true),
                identity("10.0.0.5", 42, "shop", "db-0", WorkloadKind::Pod, false),
            ]
        );
    }

    /// The cause a record's unnamed peer is given as a watch lists, breaks
    /// off, lists again and breaks off once more: still listing, failing
    /// (before its listing was done too), listing again, then nothing holds
    /// the address, failing, and nothing again.
    #[test]
    fn an_unnamed_address_is_put_down_to_where_the_watch_is() {
        let naming = Naming::new(1);
        let events = stream::iter([
            Ok(Event::Init),
            Ok(Event::InitApply(pod("shop", "web-1", &["10.0.0.5"], false))),
            Err(watcher::Error::NoResourceVersion),
            Ok(Event::Init),
            Ok(Event::InitApply(pod("shop", "web-1", &["10.0.0.5"], false))),
            Ok(Event::InitDone),
            Ok(Event::Apply(pod("shop", "db-0", &["10.0.0.6"], false))),
            Err(watcher::Error::NoResourceVersion),
            Ok(Event::Apply(pod("shop", "db-1", &["10.0.0.7"], false))),
        ]);
        let mut items =
            block_on_stream(Box::pin(transform(events, traced(), || 42, naming.clone())));
        let causes: Vec<UnnamedCause> = std::iter::from_fn(|| {
            let _item = items.next()?;
            Some(naming.unnamed_cause())
        })
        .collect();
        assert_eq!(
            causes,
            [
                UnnamedCause::NotListedYet,
                UnnamedCause::WatchFailing,
                UnnamedCause::NotListedYet,
                UnnamedCause::NoHolder,
                UnnamedCause::WatchFailing,
                UnnamedCause::NoHolder,
            ]
        );
        // One of two watches listed: the other may still name it.
        let two = Naming::new(2);
        two.listing.fetch_sub(1, Relaxed);
        assert_eq!(two.unnamed_cause(), UnnamedCause::NotListedYet);
    }

    #[test]
    fn services_and_nodes_name_their_own_addresses() {
        let service = |name: &str, ips: Value| -> Slim<Service> {
            serde_json::from_value(json!({
                "metadata": { "namespace": "shop", "name": name },
                "spec": { "clusterIPs": ips },
            }))
            .unwrap()
        };
        let headless = identities(
            Event::InitApply(service("db", json!(["None"]))),
            &traced(),
            false,
            0,
        );
        assert!(headless.is_empty());
        let api = identities(
            Event::InitApply(service("web", json!(["10.96.0.10"]))),
            &traced(),
            false,
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
        let node: Slim<Node> = serde_json::from_value(json!({
            "metadata": { "name": "node-a" },
            "status": { "addresses": [
                { "type": "Hostname", "address": "node-a" },
                { "type": "InternalIP", "address": "192.168.1.2" },
            ] },
        }))
        .unwrap();
        assert_eq!(
            identities(Event::Apply(node), &traced(), false, 7),
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

    /// A pod as the API server sends it: managedFields, a spec, conditions
    /// and container statuses around the few fields the watch reads.
    fn served_pod(phase: &str) -> Value {
        json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "0d4c", "resourceVersion": "812",
                "labels": { "app": "web" },
                "annotations": { "sidecar.istio.io/status": "{\"revision\":\"default\"}" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9", "uid": "77aa" }],
                "managedFields": [{
                    "manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                    "fieldsType": "FieldsV1", "subresource": "status",
                    "fieldsV1": { "f:status": { "f:podIP": {}, "f:podIPs": { ".": {}, "k:{\"ip\":\"10.0.0.5\"}": {} } } },
                }],
            },
            "spec": {
                "containers": [{ "name": "web", "image": "nginx", "ports": [{ "containerPort": 80 }] }],
                "nodeName": "node-a", "serviceAccountName": "web",
            },
            "status": {
                "phase": phase, "podIP": "10.0.0.5", "podIPs": [{ "ip": "10.0.0.5" }],
                "hostIP": "192.168.1.2",
                "conditions": [{ "type": "Ready", "status": "True" }],
                "containerStatuses": [{ "name": "web", "ready": true, "restartCount": 0 }],
            },
        })
    }

    #[test]
    fn a_served_pod_is_read_for_its_names_and_addresses_only() {
        let slim: Slim<Pod> = serde_json::from_value(served_pod("Running")).unwrap();
        assert_eq!(slim.addresses(), ["10.0.0.5".parse::<IpAddr>().unwrap()]);
        // The watcher resumes from resourceVersion; nothing else is kept.
        assert_eq!(
            slim.meta(),
            &ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                resource_version: Some("812".into()),
                ..ObjectMeta::default()
            }
        );
        assert_eq!(Slim::<Pod>::url_path(&(), None), "/api/v1/pods");
        assert_eq!(Slim::<Node>::url_path(&(), None), "/api/v1/nodes");
    }

    #[test]
    fn a_finished_pod_names_nothing_since_its_address_may_be_another_pods() {
        for phase in ["Succeeded", "Failed"] {
            let finished: Slim<Pod> = serde_json::from_value(served_pod(phase)).unwrap();
            assert_eq!(
                identities(Event::InitApply(finished), &traced(), false, 0),
                [],
                "{phase}"
            );
        }
        let running: Slim<Pod> = serde_json::from_value(served_pod("Running")).unwrap();
        assert_eq!(
            identities(Event::InitApply(running), &traced(), false, 0),
            [identity(
                "10.0.0.5",
                0,
                "shop",
                "web-1",
                WorkloadKind::Pod,
                true
            )]
        );
    }
}
