//! What to trace: `pod/NAME`, `deploy/NAME`, `sts/NAME`, `ds/NAME`, `svc/NAME` or
//! a label selector, resolved to the pods it means and checked for what a
//! session needs from each (running, in the sidecar mesh, on a Linux node).

use std::{collections::BTreeMap, fmt, str::FromStr};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        core::v1::{Node, Pod, Service},
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{Api, Client, Resource, api::ListParams};
use serde::de::DeserializeOwned;

use crate::{api_status::is_not_found, error_text::ApiText, istio};

/// The kinds a target can name, with the short names kubectl accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    Service,
}

impl TargetKind {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pod" | "pods" | "po" => TargetKind::Pod,
            "deployment" | "deployments" | "deploy" | "deployment.apps" | "deployments.apps" => {
                TargetKind::Deployment
            }
            "statefulset" | "statefulsets" | "sts" | "statefulset.apps" | "statefulsets.apps" => {
                TargetKind::StatefulSet
            }
            "daemonset" | "daemonsets" | "ds" | "daemonset.apps" | "daemonsets.apps" => {
                TargetKind::DaemonSet
            }
            "service" | "services" | "svc" => TargetKind::Service,
            _ => return None,
        })
    }

    /// How kubectl spells the kind in `kubectl get KIND`.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Pod => "pod",
            TargetKind::Deployment => "deployment",
            TargetKind::StatefulSet => "statefulset",
            TargetKind::DaemonSet => "daemonset",
            TargetKind::Service => "service",
        }
    }
}

/// `KIND/NAME` as typed, or a bare `NAME`, which means a pod (as for `kubectl logs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    pub kind: TargetKind,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not something to trace: use pod/NAME, deploy/NAME, sts/NAME, ds/NAME, svc/NAME, or -l SELECTOR"
)]
pub struct InvalidTarget(String);

impl FromStr for TargetRef {
    type Err = InvalidTarget;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidTarget(text.to_owned());
        let (kind, name) = match text.split_once('/') {
            Some((kind, name)) => (TargetKind::parse(kind).ok_or_else(invalid)?, name),
            None => (TargetKind::Pod, text),
        };
        if !is_dns_subdomain(name) {
            return Err(invalid());
        }
        Ok(Self {
            kind,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// Object names are DNS subdomains: at most 253 characters of `[a-z0-9.-]`,
/// starting and ending alphanumeric.
fn is_dns_subdomain(name: &str) -> bool {
    let alphanumeric =
        |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    name.len() <= 253
        && alphanumeric(name.as_bytes().first())
        && alphanumeric(name.as_bytes().last())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// A namespace name is a DNS label: at most 63 characters of `[a-z0-9-]`,
/// starting and ending alphanumeric.
pub fn parse_namespace(text: &str) -> Result<String, InvalidNamespace> {
    if text.len() <= 63 && !text.contains('.') && is_dns_subdomain(text) {
        Ok(text.to_owned())
    } else {
        Err(InvalidNamespace(text.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a namespace name: namespaces are lowercase letters, digits and '-', at most 63, as `kubectl get namespaces` lists them"
)]
pub struct InvalidNamespace(String);

#[derive(Debug, thiserror::Error)]
#[error(
    "{text:?} is not a label selector ({detail}): use key=value, key!=value, key in (a,b), key or !key, joined by commas, e.g. app=web,tier!=db"
)]
pub struct InvalidSelector {
    text: String,
    detail: String,
}

/// Checks a label selector's syntax as the API server would, so that a typo
/// is caught before anything is asked of the cluster. Returns it unchanged.
pub fn parse_selector(text: &str) -> Result<String, InvalidSelector> {
    let invalid = |detail: String| InvalidSelector {
        text: text.to_owned(),
        detail,
    };
    for term in split_terms(text) {
        check_requirement(term.trim()).map_err(invalid)?;
    }
    Ok(text.to_owned())
}

/// The requirements of a selector: split at the commas outside `( )`.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0_i32, 0);
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn check_requirement(term: &str) -> Result<(), String> {
    if term.is_empty() {
        return Err("an empty requirement".into());
    }
    if let Some(key) = term.strip_prefix('!') {
        return check_label_key(key.trim());
    }
    for operator in ["!=", "==", "="] {
        if let Some((key, value)) = term.split_once(operator) {
            check_label_key(key.trim())?;
            return check_label_value(value.trim());
        }
    }
    let mut words = term.splitn(3, char::is_whitespace);
    match (words.next(), words.next(), words.next()) {
        (Some(key), None, None) => check_label_key(key),
        (Some(key), Some("in" | "notin"), Some(values)) => {
            check_label_key(key)?;
            let values = values
                .trim()
                .strip_prefix('(')
                .and_then(|values| values.strip_suffix(')'))
                .ok_or_else(|| format!("the values after {key:?} need parentheses"))?;
            values
                .split(',')
                .try_for_each(|value| check_label_value(value.trim()))
        }
        _ => Err(format!("{term:?} has no operator")),
    }
}

/// `[prefix/]name`: an optional DNS subdomain, then 1 to 63 of
/// `[A-Za-z0-9_.-]`, starting and ending alphanumeric.
fn check_label_key(key: &str) -> Result<(), String> {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) if is_dns_subdomain(prefix) => name,
        Some((prefix, _)) => return Err(format!("{prefix:?} is not a key prefix")),
        None => key,
    };
    if name.is_empty() || !is_label_text(name) {
        return Err(format!("{key:?} is not a label key"));
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_text(value) {
        Ok(())
    } else {
        Err(format!("{value:?} is not a label value"))
    }
}

fn is_label_text(text: &str) -> bool {
    let alphanumeric = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    text.len() <= 63
        && alphanumeric(text.as_bytes().first())
        && alphanumeric(text.as_bytes().last())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// What the user asked to trace, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Named(TargetRef),
    Labels(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    AllNamespaces,
}

/// A pod a session traces, with what the probe on its node needs to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracedPod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ips: Vec<String>,
    /// The sidecar container's id without its runtime prefix: the probe finds the
    /// pod's network namespace through it.
    pub sidecar_container_id: String,
    /// The Istio control plane that injected the sidecar, whose mesh config
    /// the sidecar runs with.
    pub revision: Revision,
    /// The pod's labels, which decide the Telemetry policies that apply to it.
    pub labels: BTreeMap<String, String>,
}

/// Which control plane a pod's sidecar belongs to, as far as the pod says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revision {
    /// The revision the injector wrote into `sidecar.istio.io/status`: the
    /// injecting istiod's own, already resolved from any tag.
    Injected(String),
    /// The status annotation names none (a sidecar injected by hand, or by an
    /// injector before Istio 1.11): the `istio.io/rev` label the pod carries,
    /// which may be a revision tag, or `default` without one.
    Selected(String),
}

impl Revision {
    /// Reads the revision as Istio wrote it: the status annotation first, the
    /// injection label only when the annotation says nothing.
    fn of(annotations: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> Self {
        let injected = annotations
            .get(istio::SIDECAR_STATUS_ANNOTATION)
            .and_then(|status| serde_json::from_str::<serde_json::Value>(status).ok())
            .and_then(|status| status["revision"].as_str().map(str::to_owned))
            .filter(|revision| !revision.is_empty());
        match injected {
            Some(revision) => Revision::Injected(revision),
            None => Revision::Selected(
                labels
                    .get(istio::REVISION_LABEL)
                    .cloned()
                    .unwrap_or_else(|| "default".into()),
            ),
        }
    }
}

/// A node hosting traced pods, as the session needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetNode {
    pub name: String,
    pub kernel: String,
    /// Taints the probe must tolerate to be scheduled there.
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
}

/// The resolved selection: the pods, and the nodes they run on, sorted by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    pub pods: Vec<TracedPod>,
    pub nodes: Vec<TargetNode>,
}

impl Targets {
    /// The namespaces of the traced pods, each once, sorted.
    pub fn namespaces(&self) -> Vec<String> {
        let mut namespaces: Vec<String> = self.pods.iter().map(|p| p.namespace.clone()).collect();
        namespaces.sort();
        namespaces.dedup();
        namespaces
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(
        "{target} not found in namespace {namespace:?}: check the name with `kubectl get {kind} -n {namespace}`, or pass -n NAMESPACE",
        kind = target.kind.as_str()
    )]
    NotFound {
        target: TargetRef,
        namespace: String,
    },
    #[error("{what} selects no pods: check it with `kubectl get pods {hint}`")]
    NoPods { what: String, hint: String },
    #[error(
        "service/{service} in namespace {namespace:?} has no selector, so no pods are behind it: trace its endpoints' pods with -l SELECTOR"
    )]
    ServiceWithoutSelector { service: String, namespace: String },
    #[error(
        "pod {namespace}/{name} is {phase}, not Running: wait until `kubectl get pod -n {namespace} {name}` shows it Running"
    )]
    NotRunning {
        namespace: String,
        name: String,
        phase: String,
    },
    #[error(
        "pod {namespace}/{name} has no Istio sidecar (no istio-proxy container): enable injection with `kubectl label namespace {namespace} istio-injection=enabled` and restart the pod"
    )]
    NoSidecar { namespace: String, name: String },
    #[error(
        "pod {namespace}/{name} uses the node's network (hostNetwork): apitrace traces pods with their own network namespace; pick another pod"
    )]
    HostNetwork { namespace: String, name: String },
    #[error(
        "pod {namespace}/{name} runs on node {node}, a Windows node: the probe needs Linux (eBPF); pick pods on Linux nodes"
    )]
    WindowsNode {
        namespace: String,
        name: String,
        node: String,
    },
    #[error(
        "pod {namespace}/{name} is in Istio ambient mode: apitrace supports sidecar mode only for now; trace a pod with an istio-proxy sidecar"
    )]
    Ambient { namespace: String, name: String },
    #[error(
        "pod {namespace}/{name} is already traced by session {session}: wait for it to end, or remove it with `kubectl apitrace cleanup --session {session}`"
    )]
    AlreadyTraced {
        namespace: String,
        name: String,
        session: String,
    },
    #[error("pod {namespace}/{name} has no IP address yet: wait until it is Running")]
    NoAddress { namespace: String, name: String },
    #[error(
        "-A works with -l SELECTOR only: {target} names one object, so give its namespace with -n"
    )]
    NamedAcrossNamespaces { target: TargetRef },
    #[error(
        "{what} has a selector apitrace cannot turn into a label query: {detail}; use -l SELECTOR"
    )]
    UnsupportedSelector { what: String, detail: String },
    #[error("reading {what} from the cluster: {}", ApiText(source))]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> TargetError {
    let what = what.into();
    move |source| TargetError::Api { what, source }
}

/// Resolves a selection to its pods and their nodes, checking each pod can be
/// traced. Pods of a workload that are not Running (a rollout in progress) are
/// left out as long as one is.
pub async fn resolve(
    client: &Client,
    selection: &Selection,
    scope: &Scope,
) -> Result<Targets, TargetError> {
    let (pods, what, hint) = match (selection, scope) {
        (Selection::Named(target), Scope::AllNamespaces) => {
            return Err(TargetError::NamedAcrossNamespaces {
                target: target.clone(),
            });
        }
        (Selection::Named(target), Scope::Namespace(namespace)) => {
            named_pods(client, target, namespace).await?
        }
        (Selection::Labels(selector), scope) => {
            let (api, where_, hint) = match scope {
                Scope::Namespace(namespace) => (
                    Api::<Pod>::namespaced(client.clone(), namespace),
                    format!(" in namespace {namespace:?}"),
                    format!("-n {namespace} -l {selector}"),
                ),
                Scope::AllNamespaces => (
                    Api::<Pod>::all(client.clone()),
                    String::new(),
                    format!("-A -l {selector}"),
                ),
            };
            let what = format!("-l {selector}{where_}");
            let pods = api
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(api_error(format!("the pods of {what}")))?
                .items;
            (pods, what, hint)
        }
    };
    if pods.is_empty() {
        return Err(TargetError::NoPods { what, hint });
    }
    let running: Vec<&Pod> = pods.iter().filter(|pod| phase(pod) == "Running").collect();
    if running.is_empty() {
        let pod = &pods[0];
        return Err(TargetError::NotRunning {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            phase: phase(pod),
        });
    }
    let mut traced = running
        .into_iter()
        .map(check_pod)
        .collect::<Result<Vec<_>, _>>()?;
    traced.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let nodes = target_nodes(client, &traced).await?;
    Ok(Targets {
        pods: traced,
        nodes,
    })
}

async fn named_pods(
    client: &Client,
    target: &TargetRef,
    namespace: &str,
) -> Result<(Vec<Pod>, String, String), TargetError> {
    let what = format!("{target} in namespace {namespace:?}");
    let not_found = || TargetError::NotFound {
        target: target.clone(),
        namespace: namespace.to_owned(),
    };
    let get_error = |error: kube::Error| {
        if is_not_found(&error) {
            not_found()
        } else {
            api_error(target.to_string())(error)
        }
    };
    let selector = match target.kind {
        TargetKind::Pod => {
            let pod = Api::<Pod>::namespaced(client.clone(), namespace)
                .get(&target.name)
                .await
                .map_err(get_error)?;
            return Ok((vec![pod], what, String::new()));
        }
        TargetKind::Deployment => workload_selector::<Deployment>(client, namespace, &target.name)
            .await
            .map_err(get_error)?,
        TargetKind::StatefulSet => {
            workload_selector::<StatefulSet>(client, namespace, &target.name)
                .await
                .map_err(get_error)?
        }
        TargetKind::DaemonSet => workload_selector::<DaemonSet>(client, namespace, &target.name)
            .await
            .map_err(get_error)?,
        TargetKind::Service => {
            let labels = Api::<Service>::namespaced(client.clone(), namespace)
                .get(&target.name)
                .await
                .map_err(get_error)?
                .spec
                .and_then(|spec| spec.selector)
                .filter(|selector| !selector.is_empty())
                .ok_or_else(|| TargetError::ServiceWithoutSelector {
                    service: target.name.clone(),
                    namespace: namespace.to_owned(),
                })?;
            LabelSelector {
                match_labels: Some(labels),
                match_expressions: None,
            }
        }
    };
    let selector = label_query(&selector).map_err(|detail| TargetError::UnsupportedSelector {
        what: what.clone(),
        detail,
    })?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_error(format!("the pods of {target}")))?
        .items;
    let hint = format!("-n {namespace} -l {selector}");
    Ok((pods, what, hint))
}

/// A workload whose pods are the ones its label selector matches.
trait SelectsPods:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + fmt::Debug
{
    fn selector(self) -> LabelSelector;
}

impl SelectsPods for Deployment {
    fn selector(self) -> LabelSelector {
        self.spec.selector
    }
}

impl SelectsPods for StatefulSet {
    fn selector(self) -> LabelSelector {
        self.spec.selector
    }
}

impl SelectsPods for DaemonSet {
    fn selector(self) -> LabelSelector {
        self.spec.selector
    }
}

/// The label selector of the workload `name` of kind `K` in `namespace`.
async fn workload_selector<K: SelectsPods>(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<LabelSelector, kube::Error> {
    let workload = Api::<K>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    Ok(workload.selector())
}

/// A `LabelSelector` as the `labelSelector` query parameter spells it.
fn label_query(selector: &LabelSelector) -> Result<String, String> {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        terms.push(match expression.operator.as_str() {
            "In" => format!("{} in ({values})", expression.key),
            "NotIn" => format!("{} notin ({values})", expression.key),
            "Exists" => expression.key.clone(),
            "DoesNotExist" => format!("!{}", expression.key),
            other => return Err(format!("unknown operator {other:?}")),
        });
    }
    if terms.is_empty() {
        return Err("it selects every pod of the namespace".into());
    }
    Ok(terms.join(","))
}

fn phase(pod: &Pod) -> String {
    if pod.metadata.deletion_timestamp.is_some() {
        return "Terminating".into();
    }
    pod.status
        .as_ref()
        .and_then(|status| status.phase.clone())
        .unwrap_or_else(|| "Unknown".into())
}

/// The sidecar's container name in every injection template Istio ships.
const SIDECAR_CONTAINER: &str = "istio-proxy";

fn check_pod(pod: &Pod) -> Result<TracedPod, TargetError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    if annotations
        .get("ambient.istio.io/redirection")
        .is_some_and(|value| value == "enabled")
    {
        return Err(TargetError::Ambient { namespace, name });
    }
    if let Some(session) = labels.get(crate::names::SESSION_LABEL) {
        return Err(TargetError::AlreadyTraced {
            namespace,
            name,
            session: session.clone(),
        });
    }
    if spec.host_network == Some(true) {
        return Err(TargetError::HostNetwork { namespace, name });
    }
    // Istio injects the sidecar as a container, or (native sidecars, Istio
    // 1.27+ by default on recent Kubernetes) as an init container that keeps running.
    let sidecar_status = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|container| container.name == SIDECAR_CONTAINER);
    let Some(container_id) = sidecar_status.and_then(|container| container.container_id.clone())
    else {
        return Err(TargetError::NoSidecar { namespace, name });
    };
    let sidecar_container_id = container_id
        .split_once("://")
        .map_or(container_id.as_str(), |(_, id)| id)
        .to_owned();
    let mut ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.clone())
        .collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.clone());
    }
    if ips.is_empty() {
        return Err(TargetError::NoAddress { namespace, name });
    }
    Ok(TracedPod {
        node: spec.node_name.clone().unwrap_or_default(),
        ips,
        sidecar_container_id,
        revision: Revision::of(annotations, labels),
        labels: labels.clone(),
        namespace,
        name,
    })
}

async fn target_nodes(client: &Client, pods: &[TracedPod]) -> Result<Vec<TargetNode>, TargetError> {
    let mut names: Vec<&str> = pods.iter().map(|pod| pod.node.as_str()).collect();
    names.sort();
    names.dedup();
    let api = Api::<Node>::all(client.clone());
    let mut nodes = Vec::with_capacity(names.len());
    for name in names {
        let node = api
            .get(name)
            .await
            .map_err(api_error(format!("node {name}")))?;
        let os = node
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get("kubernetes.io/os"))
            .map(String::as_str);
        if os == Some("windows") {
            let pod = pods
                .iter()
                .find(|pod| pod.node == name)
                .expect("the node hosts a pod");
            return Err(TargetError::WindowsNode {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                node: name.to_owned(),
            });
        }
        nodes.push(TargetNode {
            name: name.to_owned(),
            kernel: node
                .status
                .and_then(|status| status.node_info)
                .map(|info| info.kernel_version)
                .unwrap_or_default(),
            taints: node.spec.and_then(|spec| spec.taints).unwrap_or_default(),
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_kubectl_spells_them() {
        for (text, kind, name) in [
            ("nginx", TargetKind::Pod, "nginx"),
            ("pod/nginx", TargetKind::Pod, "nginx"),
            ("po/nginx", TargetKind::Pod, "nginx"),
            ("deploy/web", TargetKind::Deployment, "web"),
            ("deployments.apps/web", TargetKind::Deployment, "web"),
            ("sts/db-0.x", TargetKind::StatefulSet, "db-0.x"),
            ("ds/agent", TargetKind::DaemonSet, "agent"),
            ("svc/api", TargetKind::Service, "api"),
        ] {
            let target: TargetRef = text.parse().unwrap();
            assert_eq!((target.kind, target.name.as_str()), (kind, name), "{text}");
        }
    }

    #[test]
    fn bad_targets_say_what_to_use() {
        for text in [
            "",
            "cm/config",
            "pod/",
            "pod/Nginx",
            "deploy/web/x",
            "-nginx",
            "pod/a_b",
        ] {
            let error = text.parse::<TargetRef>().unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "{text:?} is not something to trace: use pod/NAME, deploy/NAME, sts/NAME, ds/NAME, svc/NAME, or -l SELECTOR"
                )
            );
        }
    }

    #[test]
    fn selectors_are_checked_as_the_api_server_reads_them() {
        for good in [
            "app=web",
            "app==web,tier!=db",
            "app.kubernetes.io/name=web, canary",
            "!canary,env in (prod, staging),tier notin (db)",
            "version=",
        ] {
            assert_eq!(parse_selector(good).unwrap(), good);
        }
        for (bad, detail) in [
            ("==", r#""" is not a label key"#),
            ("app=web,", "an empty requirement"),
            ("app in (a", "the values after \"app\" need parentheses"),
            ("app in a,b", "the values after \"app\" need parentheses"),
            ("app web", r#""app web" has no operator"#),
            ("-app=web", r#""-app" is not a label key"#),
            ("app=we b", r#""we b" is not a label value"#),
            ("Bad_Prefix/app=web", r#""Bad_Prefix" is not a key prefix"#),
        ] {
            assert_eq!(parse_selector(bad).unwrap_err().detail, detail, "{bad}");
        }
    }

    #[test]
    fn namespaces_are_dns_labels() {
        assert_eq!(parse_namespace("shop-2").unwrap(), "shop-2");
        for bad in ["Bad_NS", "a.b", "", "-x", &"n".repeat(64)] {
            assert!(parse_namespace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn workload_selectors_become_label_queries() {
        let selector: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }))
        .unwrap();
        assert_eq!(
            label_query(&selector).unwrap(),
            "app=web,tier in (a,b),!canary"
        );
        assert!(label_query(&LabelSelector::default()).is_err());
    }
}
