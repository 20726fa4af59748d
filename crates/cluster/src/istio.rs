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

/// The annotation that sets which namespaces' sidecars get a Service, as a
/// comma-separated list: `*` every namespace, `.` the Service's own, `~`
/// none, or namespace names (istio/istio,
/// pilot/pkg/serviceregistry/kube/conversion.go `ConvertService`, and
/// pkg/config/visibility/visibility.go, 1.28.10).
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// Where a Service's visibility is set: its own annotation, else the mesh
/// config's `defaultServiceExportTo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTo {
    /// The Service's `networking.istio.io/exportTo`, split and trimmed.
    Annotation(Vec<String>),
    /// `defaultServiceExportTo` (`["*"]` when the mesh config does not set it).
    MeshDefault(Vec<String>),
}

impl ExportTo {
    /// The Service's visibility as istiod reads it: a non-empty annotation
    /// wins over the mesh's default.
    pub fn of(annotations: Option<&BTreeMap<String, String>>, mesh_default: &[String]) -> Self {
        match annotations
            .and_then(|annotations| annotations.get(EXPORT_TO_ANNOTATION))
            .filter(|value| !value.is_empty())
        {
            Some(value) => {
                Self::Annotation(value.split(',').map(|ns| ns.trim().to_owned()).collect())
            }
            None => Self::MeshDefault(mesh_default.to_vec()),
        }
    }

    pub fn values(&self) -> &[String] {
        match self {
            Self::Annotation(values) | Self::MeshDefault(values) => values,
        }
    }

    /// Refuses the first of `namespaces` whose sidecars would not get the
    /// probe Service of `probe_namespace`.
    pub fn check(
        &self,
        probe_namespace: &str,
        namespaces: &[String],
        mesh_config: &str,
    ) -> Result<(), NotExported> {
        match namespaces
            .iter()
            .find(|namespace| !self.exports(probe_namespace, namespace))
        {
            Some(namespace) => Err(NotExported {
                namespace: namespace.clone(),
                probe_namespace: probe_namespace.to_owned(),
                export_to: self.clone(),
                mesh_config: mesh_config.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Whether istiod gives the sidecars of `namespace` the Service (of
    /// `service_namespace`), so that they have a cluster for it
    /// (pilot/pkg/model/push_context.go, 1.28.10: `initServiceRegistry`
    /// indexes each Service by its exportTo, `servicesExportedToNamespace`
    /// reads the index for a namespace's sidecar scope in
    /// pilot/pkg/model/sidecar.go). With the annotation: `*` is every
    /// namespace, else `~` none, else `.` or the Service's own namespace
    /// means that namespace and any other name that namespace. With the
    /// mesh's default: `.` (checked first) the Service's namespace, `*`
    /// every one, and a list of names none at all, since the index takes
    /// only those two from the default.
    pub fn exports(&self, service_namespace: &str, namespace: &str) -> bool {
        let has = |value: &str| self.values().iter().any(|v| v == value);
        match self {
            Self::Annotation(_) => {
                has("*")
                    || (!has("~")
                        && (has(namespace) || (namespace == service_namespace && has("."))))
            }
            Self::MeshDefault(_) if has(".") => namespace == service_namespace,
            Self::MeshDefault(_) => has("*"),
        }
    }
}

/// The probe Service hidden from the sidecars of a traced namespace: istiod
/// gives them no cluster for it, so the access logs and the filter's events
/// would have nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.text())]
pub struct NotExported {
    pub namespace: String,
    pub probe_namespace: String,
    pub export_to: ExportTo,
    /// The mesh config, `NAMESPACE/NAME`.
    pub mesh_config: String,
}

impl NotExported {
    fn text(&self) -> String {
        let (namespace, probes) = (&self.namespace, &self.probe_namespace);
        let head = format!(
            "the sidecars in namespace {namespace} would not get the probe Service in {probes}, so the access logs and the filter's events would have nowhere to go"
        );
        match &self.export_to {
            ExportTo::Annotation(values) => format!(
                "{head}: the Service carries {EXPORT_TO_ANNOTATION}: {:?}, which the session does not set (an admission webhook or policy added it); exempt namespace {probes} from it, or have it include \"{namespace}\"",
                values.join(",")
            ),
            ExportTo::MeshDefault(values) if values.iter().any(|v| v == ".") => format!(
                "{head}: the mesh config ({}) has defaultServiceExportTo {values:?}, which gives a Service without an exportTo of its own to its own namespace only; set it to [\"*\"], or run the probes in {namespace} (`--probe-namespace {namespace}`, with manifests/probe.yaml applied there)",
                self.mesh_config
            ),
            ExportTo::MeshDefault(values) => format!(
                "{head}: the mesh config ({}) has defaultServiceExportTo {values:?}, which gives a Service without an exportTo of its own to no namespace (istiod takes only \"*\" and \".\" from it); add \"*\" to it",
                self.mesh_config
            ),
        }
    }
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

    #[test]
    fn a_service_is_exported_as_istiod_indexes_it() {
        let annotated = |value: &str| {
            ExportTo::of(
                Some(&BTreeMap::from([(
                    EXPORT_TO_ANNOTATION.to_owned(),
                    value.to_owned(),
                )])),
                &["~".to_owned()],
            )
        };
        let default = |values: &[&str]| {
            ExportTo::of(
                None,
                &values.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
            )
        };
        // The annotation wins over the default, whatever the default says.
        assert!(annotated("*").exports("probes", "shop"));
        assert!(annotated("shop, other").exports("probes", "shop"));
        assert_eq!(annotated(" shop ,other").values(), ["shop", "other"]);
        assert!(!annotated(".").exports("probes", "shop"));
        assert!(annotated(".").exports("probes", "probes"));
        assert!(annotated("probes").exports("probes", "probes"));
        assert!(!annotated("probes").exports("probes", "shop"));
        // `~` hides the Service from everyone, named namespaces too; `*` beats it.
        assert!(!annotated("~,shop").exports("probes", "shop"));
        assert!(annotated("~,*").exports("probes", "shop"));
        // An empty annotation is none: the default applies.
        assert_eq!(annotated(""), default(&["~"]));
        assert!(default(&["*"]).exports("probes", "shop"));
        assert!(!default(&["."]).exports("probes", "shop"));
        assert!(!default(&[".", "*"]).exports("probes", "shop"));
        assert!(default(&["."]).exports("probes", "probes"));
        // Names in the default are not indexed: nobody gets the Service.
        assert!(!default(&["shop"]).exports("probes", "shop"));
    }
}
