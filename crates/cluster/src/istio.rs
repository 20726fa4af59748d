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
