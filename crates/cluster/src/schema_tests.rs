//! Every object a session sends, checked against what the API server would
//! accept: Istio's kinds against the CRD schemas of Istio 1.30.3
//! (`istio-crds.yaml`, cut from istio/istio's `crd-all.gen.yaml`), Kubernetes
//! kinds by a lossless round trip through k8s-openapi's types.

use std::path::PathBuf;

use http::Method;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Pod, Secret, Service},
};
use serde_json::Value;

use crate::{istio::TelemetryVersion, mock::Received, mock_tests};

/// The upstream CRDs: `APITRACE_ISTIO_CRDS`, or the team's shared schemas next
/// to the repository.
fn crds_path() -> PathBuf {
    std::env::var_os("APITRACE_ISTIO_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/schemas/istio-crds.yaml")
        })
}

fn crds() -> Vec<Value> {
    let path = crds_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "reading Istio's CRDs at {}: {error}; set APITRACE_ISTIO_CRDS to istio-crds.yaml",
            path.display()
        )
    });
    text.split("\n---")
        .filter(|document| document.contains("kind: CustomResourceDefinition"))
        .map(|document| serde_saphyr::from_str(document).expect("the CRD file is YAML"))
        .collect()
}

/// The openAPIV3Schema of `kind` at `version`.
fn schema(kind: &str, version: &str) -> Value {
    let crd = crds()
        .into_iter()
        .find(|crd| crd["spec"]["names"]["kind"] == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let served = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version)
        .unwrap_or_else(|| panic!("{kind} has no version {version}"));
    served["schema"]["openAPIV3Schema"].clone()
}

fn validate_istio(object: &Value) {
    let kind = object["kind"].as_str().unwrap();
    let version = object["apiVersion"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    let validator = jsonschema::validator_for(&schema(kind, version)).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{kind} does not match Istio's CRD: {errors:?}\n{object:#}"
    );
    // The CRD schemas allow what they do not list (preserve-unknown-fields on
    // pluginConfig only); a field outside the schema would be pruned silently.
    assert_only_known_fields(
        object["spec"].clone(),
        &schema(kind, version)["properties"]["spec"],
        kind,
    );
}

fn assert_only_known_fields(value: Value, schema: &Value, at: &str) {
    if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) {
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let property = if schema["additionalProperties"].is_object() {
                    &schema["additionalProperties"]
                } else {
                    &schema["properties"][&key]
                };
                assert!(
                    !property.is_null(),
                    "{at}.{key} is not in the schema: the API server would drop it"
                );
                assert_only_known_fields(child, property, &format!("{at}.{key}"));
            }
        }
        Value::Array(items) => {
            for item in items {
                assert_only_known_fields(item, &schema["items"], at);
            }
        }
        _ => {}
    }
}

fn round_trips<K: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) {
    let typed: K = serde_json::from_value(object.clone()).unwrap();
    assert_eq!(
        &serde_json::to_value(typed).unwrap(),
        object,
        "a field k8s-openapi does not know, or of the wrong type"
    );
}

/// Checks every object the session created or replaced.
pub fn validate_sent(received: &[Received]) {
    let mut checked = 0;
    for request in received
        .iter()
        .filter(|r| r.method == Method::POST || r.method == Method::PUT)
    {
        let object = request.body.as_ref().expect("a JSON body");
        match object["kind"].as_str().unwrap() {
            "Telemetry" | "WasmPlugin" => validate_istio(object),
            "Lease" => round_trips::<Lease>(object),
            "Secret" => round_trips::<Secret>(object),
            "Service" => round_trips::<Service>(object),
            "Pod" => round_trips::<Pod>(object),
            "ConfigMap" => round_trips::<ConfigMap>(object),
            other => panic!("unexpected kind {other}"),
        }
        checked += 1;
    }
    assert_eq!(
        checked, 8,
        "lease, secret, service, probe, mesh config twice, telemetry, wasm plugin"
    );
}

#[test]
fn telemetry_of_istio_before_1_22_matches_its_v1alpha1_schema() {
    let mut plan = mock_tests::plan();
    plan.telemetry_version = TelemetryVersion::V1Alpha1;
    for object in plan.telemetries() {
        let value = serde_json::to_value(&object).unwrap();
        assert_eq!(value["apiVersion"], "telemetry.istio.io/v1alpha1");
        validate_istio(&value);
    }
}

#[test]
fn the_probe_asks_for_its_capabilities_and_is_privileged_only_when_asked() {
    let plan = mock_tests::plan();
    let probe = serde_json::to_value(&plan.probe_pods(None)[0]).unwrap();
    let security = &probe["spec"]["containers"][0]["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        security["capabilities"]["add"],
        serde_json::json!([
            "BPF",
            "NET_ADMIN",
            "SYS_ADMIN",
            "SYS_PTRACE",
            "SYS_RESOURCE"
        ])
    );
    assert!(!probe.to_string().contains("\"privileged\":true"));
    assert_eq!(probe["spec"]["nodeName"], "node-a");
    assert_eq!(probe["spec"]["hostPID"], true);
    assert_eq!(
        probe["spec"]["activeDeadlineSeconds"], 360,
        "duration + grace"
    );

    let mut plan = mock_tests::plan();
    plan.probe.privileged = true;
    let probe = serde_json::to_value(&plan.probe_pods(None)[0]).unwrap();
    assert_eq!(
        probe["spec"]["containers"][0]["securityContext"],
        serde_json::json!({"privileged": true})
    );
}

#[test]
fn a_stray_field_in_an_istio_object_is_caught() {
    let plan = mock_tests::plan();
    let mut object = serde_json::to_value(&plan.telemetries()[0]).unwrap();
    object["spec"]["accessLogging"][0]["provider"] = serde_json::json!("typo");
    let caught = std::panic::catch_unwind(|| validate_istio(&object));
    assert!(
        caught.is_err(),
        "a field the CRD does not have must fail validation"
    );
}
