//! The Istio kinds a session creates, as kube's dynamic API resources: their
//! CRDs are served by the cluster, not compiled into k8s-openapi.

use std::collections::BTreeMap;

use kube::{core::ApiResource, core::GroupVersionKind};
use serde_json::Value;

/// `telemetry.istio.io` is served as `v1` from Istio 1.22; before, `v1alpha1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryVersion {
    V1,
    V1Alpha1,
}

impl TelemetryVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TelemetryVersion::V1 => "v1",
            TelemetryVersion::V1Alpha1 => "v1alpha1",
        }
    }
}

/// The annotation Istio's injection webhook writes on every pod it injects: a
/// JSON object whose `revision` is the injecting istiod's own revision
/// (`default` for an istiod without one), never a revision tag. The injector
/// does not label pods `istio.io/rev` (istio/istio,
/// pkg/kube/inject/webhook.go `getInjectionStatus`, and
/// `SidecarInjectionStatus` in pkg/kube/inject/inject.go, 1.28.10; since 1.11).
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// The label that selects a control plane for injection, on a pod or its
/// namespace: a revision or a revision tag.
pub const REVISION_LABEL: &str = "istio.io/rev";
/// On a revision tag's MutatingWebhookConfiguration
/// (`istio-revision-tag-<tag>`): the tag's name; its `istio.io/rev` label is
/// the revision the tag points to (istio/istio, pkg/revisions/tag_watcher.go
/// `GetMyTags` and `isTagWebhook`, 1.28.10).
pub const TAG_LABEL: &str = "istio.io/tag";

pub const TELEMETRY_GROUP: &str = "telemetry.istio.io";
pub const EXTENSIONS_GROUP: &str = "extensions.istio.io";

pub fn telemetry(version: TelemetryVersion) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(TELEMETRY_GROUP, version.as_str(), "Telemetry"),
        "telemetries",
    )
}

/// WasmPlugin exists as `v1alpha1` only.
pub fn wasm_plugin() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(EXTENSIONS_GROUP, "v1alpha1", "WasmPlugin"),
        "wasmplugins",
    )
}

pub const NETWORKING_GROUP: &str = "networking.istio.io";

/// `Sidecar`, as `v1beta1`: served from Istio 1.8 to this day (and `v1` from 1.22).
pub fn sidecar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(NETWORKING_GROUP, "v1beta1", "Sidecar"),
        "sidecars",
    )
}

/// A `Sidecar` resource, reduced to what decides which Services a pod's
/// sidecar can reach: a sidecar has no cluster for a host its egress leaves
/// out, so an access-log provider there has nowhere to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarPolicy {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp`: istiod takes the oldest that applies.
    pub created: String,
    /// `spec.workloadSelector.labels`, `None` for the namespace's default.
    pub selector: Option<BTreeMap<String, String>>,
    /// Every egress listener's `hosts` (`namespace/dnsName`); an egress-less
    /// Sidecar is `*/*` (istio/istio, pilot/pkg/model/sidecar.go,
    /// `convertToSidecarScope`, 1.28.10).
    pub egress_hosts: Vec<String>,
}

impl SidecarPolicy {
    pub fn from_object(object: &Value) -> Self {
        let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        let spec = &object["spec"];
        let listeners = spec["egress"].as_array().cloned().unwrap_or_default();
        let egress_hosts = if listeners.is_empty() {
            vec!["*/*".to_owned()]
        } else {
            listeners
                .iter()
                .flat_map(|listener| listener["hosts"].as_array().cloned().unwrap_or_default())
                .filter_map(|host| host.as_str().map(str::to_owned))
                .collect()
        };
        Self {
            namespace: text(&object["metadata"]["namespace"]),
            name: text(&object["metadata"]["name"]),
            created: text(&object["metadata"]["creationTimestamp"]),
            selector: spec["workloadSelector"]["labels"]
                .as_object()
                .map(|labels| {
                    labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                }),
            egress_hosts,
        }
    }

    /// Whether this Sidecar, applied to a pod in `pod_namespace`, lets it
    /// reach every host `*.<service_namespace>.svc.<domain>`: an entry whose
    /// namespace is `*`, the Service's, or `.` for the pod's own, and whose
    /// name is `*` or a `*.`-suffix the host ends with. A single host name
    /// cannot name a session's Service before the session exists.
    pub fn reaches(&self, pod_namespace: &str, service_namespace: &str, domain: &str) -> bool {
        let host = format!("apitrace-0000000000.{service_namespace}.svc.{domain}");
        self.egress_hosts.iter().any(|entry| {
            let Some((namespace, name)) = entry.split_once('/') else {
                return false;
            };
            let namespace_ok = namespace == "*"
                || namespace == service_namespace
                || (namespace == "." && pod_namespace == service_namespace);
            let name_ok = name == "*"
                || name
                    .strip_prefix('*')
                    .is_some_and(|suffix| suffix.starts_with('.') && host.ends_with(suffix));
            namespace_ok && name_ok
        })
    }
}

/// The Sidecar istiod applies to a pod: in its namespace, the oldest whose
/// workload selector matches, else the oldest without one; else the root
/// namespace's oldest without one; else none, and every Service is in reach
/// (istio/istio, pilot/pkg/model/push_context.go, `doGetSidecarScope` and
/// the index built before it, 1.28.10).
pub fn applied_sidecar<'a>(
    sidecars: &'a [SidecarPolicy],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root_namespace: &str,
) -> Option<&'a SidecarPolicy> {
    let mut sorted: Vec<&SidecarPolicy> = sidecars.iter().collect();
    sorted.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    let selecting = sorted.iter().find(|sidecar| {
        sidecar.namespace == namespace
            && sidecar
                .selector
                .as_ref()
                .is_some_and(|selector| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
    });
    let default_of = |ns: &str| {
        sorted
            .iter()
            .find(|sidecar| sidecar.namespace == ns && sidecar.selector.is_none())
    };
    selecting
        .or_else(|| default_of(namespace))
        .or_else(|| default_of(root_namespace))
        .copied()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sidecar(
        namespace: &str,
        created: &str,
        selector: Option<Value>,
        hosts: Value,
    ) -> SidecarPolicy {
        let mut object = json!({
            "metadata": { "namespace": namespace, "name": format!("s{created}"), "creationTimestamp": format!("2026-11-22T10:00:{created}Z") },
            "spec": { "egress": [{ "hosts": hosts }] },
        });
        if let Some(selector) = selector {
            object["spec"]["workloadSelector"] = json!({ "labels": selector });
        }
        SidecarPolicy::from_object(&object)
    }

    #[test]
    fn the_sidecar_istiod_applies_decides_whether_the_probes_are_in_reach() {
        let web = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let root = sidecar("istio-system", "01", None, json!(["./*", "istio-system/*"]));
        let namespace = sidecar("shop", "02", None, json!(["./*", "apitrace-system/*"]));
        let selecting = sidecar("shop", "03", Some(json!({ "app": "web" })), json!(["./*"]));
        let other = sidecar("shop", "04", Some(json!({ "app": "db" })), json!(["*/*"]));
        let applied = |sidecars: &[SidecarPolicy]| {
            applied_sidecar(sidecars, "shop", &web, "istio-system").map(|s| s.name.clone())
        };
        assert_eq!(applied(&[]), None);
        assert_eq!(applied(std::slice::from_ref(&root)).as_deref(), Some("s01"));
        assert_eq!(
            applied(&[root.clone(), namespace.clone()]).as_deref(),
            Some("s02")
        );
        assert_eq!(
            applied(&[
                other.clone(),
                root.clone(),
                namespace.clone(),
                selecting.clone()
            ])
            .as_deref(),
            Some("s03")
        );
        let reaches = |s: &SidecarPolicy| s.reaches("shop", "apitrace-system", "cluster.local");
        assert!(!reaches(&root));
        assert!(reaches(&namespace));
        assert!(!reaches(&selecting));
        assert!(reaches(&other));
        assert!(reaches(&sidecar(
            "shop",
            "05",
            None,
            json!(["*/*.svc.cluster.local"])
        )));
        assert!(!reaches(&sidecar(
            "shop",
            "06",
            None,
            json!(["*/*.svc.example.org"])
        )));
        assert!(!reaches(&sidecar("shop", "07", None, json!(["~/*"]))));
        // No egress at all is everything.
        let open =
            SidecarPolicy::from_object(&json!({ "metadata": { "namespace": "shop" }, "spec": {} }));
        assert!(reaches(&open));
    }
}
