//! `--dry-run`: every object the session would create, as YAML, then the diff
//! of the mesh config. The token and the module digest are not known before a
//! session starts; the output says so where they would be.

use apitrace_proto::istio;
use serde::Serialize;

use crate::{
    mesh::{self, MeshError},
    names,
    objects::{FilterModule, Plan},
};

#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("cannot write an object as YAML: {0}")]
    Yaml(String),
}

const NOT_YET: &str = "<generated when the session starts>";

fn yaml(out: &mut String, comment: &str, object: &impl Serialize) -> Result<(), DryRunError> {
    let text = serde_saphyr::to_string(object).map_err(|e| DryRunError::Yaml(e.to_string()))?;
    out.push_str(&format!("---\n# {comment}\n{text}"));
    Ok(())
}

/// What the session's objects do to the traced pods' open connections, in
/// one sentence for the plan: istiod puts the filter and the access log into
/// the sidecars' listener filter chains, and a changed chain is drained.
/// The figures are measured (BENCHMARKS.md, "The sidecars'
/// drain"; the upstream sources in docs/cluster-upstream.md, section 11).
pub fn drain_notice() -> String {
    format!(
        "Adding the filter and the access log, and removing them at the end, changes the traced pods' listener filter chains, so their sidecars drain the connections open on them: the next HTTP/1.1 response on such a connection says `connection: close`, and whatever stays open is closed within Istio's drainDuration ({} s unless the mesh or the pod sets another; measured on Envoy 1.40 run with istio-agent's drain flags, idle connections were closed 36.6 to 44.4 s after the change).",
        istio::DRAIN_DURATION_S
    )
}

pub fn render(plan: &Plan, mesh_config: &str) -> Result<String, DryRunError> {
    let mut shown = plan.clone();
    shown.token = NOT_YET.to_owned();
    let module = FilterModule {
        path: "/wasm/apitrace-filter-<sha256 reported by the probe>.wasm".into(),
        sha256: "<reported by the probe>".into(),
    };
    let mut out = format!(
        "# kubectl apitrace --dry-run: session {} would create, in this order:\n# {}\n",
        plan.session,
        drain_notice()
    );
    yaml(
        &mut out,
        "the anchor: renewed while the CLI runs",
        &shown.lease(),
    )?;
    yaml(&mut out, "the session token", &shown.token_secret(None))?;
    yaml(
        &mut out,
        "where sidecars send access logs and WASM events",
        &shown.ingest_service(None),
    )?;
    for pod in shown.probe_pods(None) {
        yaml(&mut out, "a probe", &pod)?;
    }
    out.push_str("---\n");
    for pod in &plan.targets.pods {
        out.push_str(&format!(
            "# label pod {}/{} with {}={} (removed at the end)\n",
            pod.namespace,
            pod.name,
            names::SESSION_LABEL,
            plan.session
        ));
    }
    for object in shown.telemetries() {
        yaml(
            &mut out,
            "access logs of the traced pods to the probes",
            &object,
        )?;
    }
    for object in shown.wasm_plugins(&module) {
        yaml(&mut out, "the filter in the traced pods' sidecars", &object)?;
    }
    let after = mesh::add_provider(mesh_config, &plan.als_provider())?
        .unwrap_or_else(|| mesh_config.to_owned());
    out.push_str(&format!("---\n# mesh config {} (data.mesh):\n", plan.mesh));
    let diff = similar::TextDiff::from_lines(mesh_config, &after);
    out.push_str(
        &diff
            .unified_diff()
            .header("before", "during the session")
            .to_string(),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_shows_every_object_and_only_our_line_of_the_mesh_config() {
        let plan = crate::mock_tests::plan();
        let mesh = "accessLogFile: /dev/stdout\nextensionProviders:\n- name: otel\n  envoyOtelAls:\n    service: otel.o.svc.cluster.local\n    port: 4317\n";
        let text = render(&plan, mesh).unwrap();
        for kind in [
            "kind: Lease",
            "kind: Secret",
            "kind: Service",
            "kind: Pod",
            "kind: Telemetry",
            "kind: WasmPlugin",
        ] {
            assert_eq!(text.matches(kind).count(), 1, "{kind} in\n{text}");
        }
        assert!(text.contains("# label pod shop/web-1 with apitrace.io/session=abcde12345"));
        assert!(
            text.lines().nth(1).is_some_and(|line| line
                .starts_with("# Adding the filter and the access log")
                && line.contains("within Istio's drainDuration (45 s")),
            "the drain is said before the objects:\n{text}"
        );
        assert!(!text.contains("t0k3n"), "the token is never printed");
        let changed: Vec<&str> = text
            .lines()
            .filter(|line| {
                (line.starts_with('+') || line.starts_with('-'))
                    && !line.starts_with("+++")
                    && !line.starts_with("---")
            })
            .collect();
        assert_eq!(
            changed,
            [
                r#"+- {"envoyHttpAls":{"additionalResponseHeadersToLog":["grpc-status","grpc-message"],"additionalResponseTrailersToLog":["grpc-status","grpc-message"],"port":15901,"service":"apitrace-abcde12345.apitrace-system.svc.cluster.local"},"name":"apitrace-abcde12345"}"#
            ],
            "{text}"
        );
    }
}
