//! The Istio kinds a session creates, as kube's dynamic API resources: their
//! CRDs are served by the cluster, not compiled into k8s-openapi.

use kube::{core::ApiResource, core::GroupVersionKind};

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
