//! Sessions against a scripted API server: the exact requests of setup and
//! teardown, the rollback after a failure at each step, conflicts on the mesh
//! config, cleanup twice, a lapsed Lease, and every target error.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use apitrace_join::UnnamedCause;
use apitrace_proto::filter_config::Config as FilterConfig;
use futures::StreamExt as _;
use http::Method;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    cleanup::{self, Reach, Which},
    identity,
    istio::TelemetryVersion,
    mesh::MeshConfigRef,
    mock::{Exchange, MockApi, fail, ok, watch},
    names::SessionId,
    objects::{FilterModule, LEASE_DURATION, Plan, ProbeOptions},
    session::{ProbeLink, ProviderChange, Session, SessionError, Stage, Timeouts},
    target::{Revision, Scope, Selection, TargetError, TargetNode, Targets, TracedPod, resolve},
    watchdog::{self, Anchor},
};

pub(crate) const SESSION: &str = "abcde12345";
const PROBES: &str = "/api/v1/namespaces/apitrace-system";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/apitrace-system/leases";
const MESH_MAP: &str = "/api/v1/namespaces/istio-system/configmaps/istio";
const TELEMETRIES: &str = "/apis/telemetry.istio.io/v1/namespaces/shop/telemetries";
const WASM_PLUGINS: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins";
const MESH: &str = "accessLogFile: /dev/stdout\nextensionProviders:\n- name: otel\n  envoyOtelAls:\n    service: otel.o.svc.cluster.local\n    port: 4317\n";

fn session_id() -> SessionId {
    SESSION.parse().unwrap()
}

fn started() -> Timestamp {
    "2026-11-22T10:00:00Z".parse().unwrap()
}

pub(crate) fn plan() -> Plan {
    Plan {
        session: session_id(),
        token: "t0k3n".into(),
        started: started(),
        duration: Duration::from_secs(300),
        holder: "kubectl-apitrace/alice@laptop".into(),
        probe: ProbeOptions {
            namespace: "apitrace-system".into(),
            image: "ghcr.io/apitrace/probe:0.1.0".into(),
            pull_secrets: vec![],
            privileged: false,
        },
        mesh: MeshConfigRef::for_revision("istio-system", "default"),
        telemetry_version: TelemetryVersion::V1,
        targets: Targets {
            pods: vec![TracedPod {
                namespace: "shop".into(),
                name: "web-1".into(),
                node: "node-a".into(),
                ips: vec!["10.0.0.5".into()],
                sidecar_container_id: "abc123".into(),
                revision: Revision::Injected("default".into()),
                labels: BTreeMap::from([("app".into(), "web".into())]),
            }],
            nodes: vec![TargetNode {
                name: "node-a".into(),
                kernel: "6.8.0".into(),
                taints: vec![],
            }],
        },
        inherited_logging: BTreeMap::from([(
            "shop".into(),
            // Kept with its filter and direction, which the schema tests
            // hold to Istio's Telemetry CRD.
            vec![json!({
                "providers": [{ "name": "envoy" }],
                "filter": { "expression": "response.code >= 400" },
                "match": { "mode": "SERVER" },
            })],
        )]),
        show_secrets: false,
        cluster_domain: "cluster.local".into(),
    }
}

fn module() -> FilterModule {
    FilterModule {
        path: "/wasm/apitrace-filter-00ff.wasm".into(),
        sha256: "00".repeat(32),
    }
}

/// Stands in for the port-forwards, which need a real API server.
struct FakeLink(Result<FilterModule, std::io::Error>);

impl ProbeLink for FakeLink {
    type Error = std::io::Error;
    async fn connect(
        &mut self,
        probes: &[k8s_openapi::api::core::v1::Pod],
    ) -> Result<FilterModule, Self::Error> {
        assert_eq!(probes.len(), 1);
        match &self.0 {
            Ok(module) => Ok(module.clone()),
            Err(error) => Err(std::io::Error::new(error.kind(), error.to_string())),
        }
    }
}

fn link() -> FakeLink {
    FakeLink(Ok(module()))
}

fn timeouts() -> Timeouts {
    Timeouts {
        probes_ready: Duration::from_secs(5),
        poll: Duration::from_millis(1),
    }
}

fn meta(namespace: &str, name: &str) -> Value {
    json!({ "namespace": namespace, "name": name, "uid": format!("uid-{name}"), "resourceVersion": "1" })
}

fn probe_pod(ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": meta("apitrace-system", &format!("apitrace-{SESSION}-probe-0")),
        "status": { "phase": if ready { "Running" } else { "Pending" },
                    "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] },
    })
}

fn mesh_map(version: &str, mesh: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "namespace": "istio-system", "name": "istio", "resourceVersion": version },
        "data": { "mesh": mesh },
    })
}

fn object(kind: &str, namespace: &str, name: &str) -> Value {
    json!({ "kind": kind, "metadata": meta(namespace, name) })
}

fn deleted() -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {} })
}

/// A setup step: the exchange, and the exchanges that undo it (if it changed anything).
pub(crate) struct Step {
    pub(crate) exchange: Exchange,
    undo: Vec<Exchange>,
}

fn name() -> String {
    format!("apitrace-{SESSION}")
}

fn mesh_with_ours() -> String {
    let provider = plan().als_provider();
    crate::mesh::add_provider(MESH, &provider).unwrap().unwrap()
}

pub(crate) fn setup_steps() -> Vec<Step> {
    let name = name();
    let probe = format!("{name}-probe-0");
    let delete = |uri: String| ok(Method::DELETE, uri, deleted());
    vec![
        Step {
            exchange: ok(
                Method::POST,
                format!("{LEASES}?"),
                object("Lease", "apitrace-system", &name),
            ),
            undo: vec![delete(format!("{LEASES}/{name}?"))],
        },
        Step {
            exchange: ok(
                Method::POST,
                format!("{PROBES}/secrets?"),
                object("Secret", "apitrace-system", &name),
            ),
            undo: vec![delete(format!("{PROBES}/secrets/{name}?"))],
        },
        Step {
            exchange: ok(
                Method::POST,
                format!("{PROBES}/services?"),
                object("Service", "apitrace-system", &name),
            ),
            undo: vec![delete(format!("{PROBES}/services/{name}?"))],
        },
        Step {
            exchange: ok(Method::POST, format!("{PROBES}/pods?"), probe_pod(false)),
            undo: vec![delete(format!("{PROBES}/pods/{probe}?"))],
        },
        Step {
            exchange: ok(
                Method::GET,
                format!("{PROBES}/pods/{probe}"),
                probe_pod(true),
            ),
            undo: vec![],
        },
        Step {
            exchange: ok(
                Method::PATCH,
                "/api/v1/namespaces/shop/pods/web-1?",
                object("Pod", "shop", "web-1"),
            ),
            undo: vec![ok(
                Method::PATCH,
                "/api/v1/namespaces/shop/pods/web-1?",
                object("Pod", "shop", "web-1"),
            )],
        },
        Step {
            exchange: ok(Method::GET, MESH_MAP, mesh_map("7", MESH)),
            undo: vec![],
        },
        Step {
            exchange: ok(
                Method::PUT,
                format!("{MESH_MAP}?"),
                mesh_map("8", &mesh_with_ours()),
            ),
            undo: vec![
                ok(Method::GET, MESH_MAP, mesh_map("9", &mesh_with_ours())),
                ok(Method::PUT, format!("{MESH_MAP}?"), mesh_map("10", MESH)),
            ],
        },
        Step {
            exchange: ok(
                Method::POST,
                format!("{TELEMETRIES}?"),
                object("Telemetry", "shop", &name),
            ),
            undo: vec![delete(format!("{TELEMETRIES}/{name}?"))],
        },
        Step {
            exchange: ok(
                Method::POST,
                format!("{WASM_PLUGINS}?"),
                object("WasmPlugin", "shop", &name),
            ),
            undo: vec![delete(format!("{WASM_PLUGINS}/{name}?"))],
        },
    ]
}

pub(crate) fn teardown(steps: &[Step]) -> Vec<Exchange> {
    steps
        .iter()
        .rev()
        .flat_map(|step| step.undo.clone())
        .collect()
}

#[tokio::test]
async fn a_session_sets_up_in_order_and_tears_down_in_reverse() {
    let steps = setup_steps();
    let mut script: Vec<Exchange> = steps.iter().map(|s| s.exchange.clone()).collect();
    script.extend(teardown(&steps));
    let api = MockApi::new(script);
    let mut stages = Vec::new();
    let session = Session::start(
        &api.client,
        plan(),
        &mut link(),
        timeouts(),
        &CancellationToken::new(),
        &mut |stage| stages.push(stage),
    )
    .await
    .unwrap();
    assert_eq!(
        stages,
        [
            Stage::Anchoring,
            Stage::StartingProbes { nodes: 1 },
            Stage::PatchingMesh,
            Stage::Streaming
        ]
    );
    assert_eq!(session.changes().len(), 8);
    let leftovers = session.end(&api.client).await;
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let received = api.finish().await;

    // What was sent: the mesh gained exactly our provider, kept the rest, and
    // lost it again; the pod got the session label and lost it.
    let body = |index: usize| received[index].body.clone().unwrap();
    let patch = body(5);
    assert_eq!(
        patch,
        json!({"metadata": {"labels": {"apitrace.io/session": SESSION}}})
    );
    assert_eq!(body(7)["data"]["mesh"], mesh_with_ours());
    assert_eq!(
        body(7)["metadata"]["resourceVersion"],
        "7",
        "the update is conditional on what was read"
    );
    let unlabel = received
        .iter()
        .rev()
        .find(|r| r.method == Method::PATCH)
        .unwrap();
    assert_eq!(
        unlabel.body,
        Some(json!({"metadata": {"labels": {"apitrace.io/session": null}}}))
    );
    let restored = received
        .iter()
        .rev()
        .find(|r| r.method == Method::PUT)
        .unwrap();
    let restored: Value = serde_saphyr::from_str(
        restored.body.as_ref().unwrap()["data"]["mesh"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(restored, serde_saphyr::from_str::<Value>(MESH).unwrap());
    // Owned by the anchor: the garbage collector removes them with it.
    for index in 1..=3 {
        assert_eq!(
            body(index)["metadata"]["ownerReferences"][0]["uid"],
            format!("uid-{}", name())
        );
    }
    crate::schema_tests::validate_sent(&received);
}

#[tokio::test]
async fn a_failure_at_any_setup_step_rolls_back_what_was_done() {
    let steps = setup_steps();
    for failing in 0..steps.len() {
        let mut script: Vec<Exchange> = steps[..failing]
            .iter()
            .map(|s| s.exchange.clone())
            .collect();
        let failed = &steps[failing].exchange;
        script.push(fail(failed.method.clone(), failed.uri.clone(), 500));
        script.extend(teardown(&steps[..failing]));
        let api = MockApi::new(script);
        let error = Session::start(
            &api.client,
            plan(),
            &mut link(),
            timeouts(),
            &CancellationToken::new(),
            &mut |_| {},
        )
        .await
        .unwrap_err();
        assert!(error.leftovers.is_empty(), "step {failing}: {error}");
        // The server's words, not kube's debug dump of its status.
        let said = crate::error_text::error_chain(&error);
        assert!(
            said.contains("injected 500: InternalError (HTTP 500)") && !said.contains("Status {"),
            "step {failing}: {said}"
        );
        api.finish().await;
    }
}

#[tokio::test]
async fn probes_that_cannot_be_reached_roll_back_before_the_mesh_is_touched() {
    let steps = setup_steps();
    let mut script: Vec<Exchange> = steps[..5].iter().map(|s| s.exchange.clone()).collect();
    script.extend(teardown(&steps[..5]));
    let api = MockApi::new(script);
    let mut link = FakeLink(Err(std::io::Error::other("port-forward refused")));
    let error = Session::start(
        &api.client,
        plan(),
        &mut link,
        timeouts(),
        &CancellationToken::new(),
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "connecting to the probes: port-forward refused"
    );
    api.finish().await;
}

#[tokio::test]
async fn a_probe_image_that_cannot_be_pulled_fails_fast_with_the_reason() {
    let steps = setup_steps();
    let mut script: Vec<Exchange> = steps[..4].iter().map(|s| s.exchange.clone()).collect();
    let mut pulling = probe_pod(false);
    pulling["status"]["containerStatuses"] = json!([{
        "name": "probe", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
        "state": { "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image \"ghcr.io/apitrace/probe:0.1.0\"" } },
    }]);
    script.push(ok(Method::GET, steps[4].exchange.uri.clone(), pulling));
    script.extend(teardown(&steps[..4]));
    let api = MockApi::new(script);
    let error = Session::start(
        &api.client,
        plan(),
        &mut link(),
        timeouts(),
        &CancellationToken::new(),
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "probe pod apitrace-system/{}-probe-0 cannot start: ImagePullBackOff: Back-off pulling image \"ghcr.io/apitrace/probe:0.1.0\"",
            name()
        )
    );
    api.finish().await;
}

#[tokio::test]
async fn probes_never_ready_time_out_and_roll_back() {
    let steps = setup_steps();
    let mut script: Vec<Exchange> = steps[..4].iter().map(|s| s.exchange.clone()).collect();
    let poll = ok(Method::GET, steps[4].exchange.uri.clone(), probe_pod(false));
    let timeouts = Timeouts {
        probes_ready: Duration::from_millis(50),
        poll: Duration::from_millis(20),
    };
    // Polls until the deadline: the first look and two more.
    script.extend([poll.clone(), poll.clone(), poll]);
    script.extend(teardown(&steps[..4]));
    let api = MockApi::new(script);
    let error = Session::start(
        &api.client,
        plan(),
        &mut link(),
        timeouts,
        &CancellationToken::new(),
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error.cause, SessionError::ProbesNotReady { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains(&format!(
            "look at `kubectl describe pod -n apitrace-system {}-probe-0`",
            name()
        )),
        "{error}"
    );
    api.finish().await;
}

#[tokio::test(start_paused = true)]
async fn ctrl_c_while_waiting_for_the_probes_rolls_back_at_once() {
    let steps = setup_steps();
    // The anchor, Secret, Service and probe pod are created; the probe is not
    // ready at 0 s nor at 1 s; Ctrl-C comes at 1.5 s.
    let mut script: Vec<Exchange> = steps[..4].iter().map(|s| s.exchange.clone()).collect();
    let probe = format!("{PROBES}/pods/{}-probe-0", name());
    script.push(ok(Method::GET, &probe, probe_pod(false)));
    script.push(ok(Method::GET, &probe, probe_pod(false)));
    script.extend(teardown(&steps[..4]));
    let api = MockApi::new(script);
    let cancel = CancellationToken::new();
    let ctrl_c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        ctrl_c.cancel();
    });
    let timeouts = Timeouts {
        probes_ready: Duration::from_secs(60),
        poll: Duration::from_secs(1),
    };
    let error = Session::start(
        &api.client,
        plan(),
        &mut link(),
        timeouts,
        &cancel,
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(error.cause, SessionError::Interrupted), "{error}");
    assert!(error.leftovers.is_empty());
    api.finish().await;
}

#[tokio::test]
async fn ctrl_c_before_setup_begins_changes_nothing() {
    let api = MockApi::new(Vec::new());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let error = Session::start(
        &api.client,
        plan(),
        &mut link(),
        timeouts(),
        &cancel,
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert_eq!(error.to_string(), "interrupted while setting up");
    api.finish().await;
}

#[tokio::test]
async fn a_conflict_on_the_mesh_config_is_retried_from_the_new_version() {
    let steps = setup_steps();
    let mut script: Vec<Exchange> = steps[..7].iter().map(|s| s.exchange.clone()).collect();
    script.push(fail(Method::PUT, format!("{MESH_MAP}?"), 409));
    // Someone else added a provider in between: ours goes on top of theirs.
    let theirs = format!("{MESH}- name: zipkin\n  zipkin:\n    service: z.svc\n    port: 9411\n");
    script.push(ok(Method::GET, MESH_MAP, mesh_map("8", &theirs)));
    script.push(ok(
        Method::PUT,
        format!("{MESH_MAP}?"),
        mesh_map("9", &theirs),
    ));
    script.extend(steps[8..].iter().map(|s| s.exchange.clone()));
    let api = MockApi::new(script);
    let session = Session::start(
        &api.client,
        plan(),
        &mut link(),
        timeouts(),
        &CancellationToken::new(),
        &mut |_| {},
    )
    .await
    .unwrap();
    drop(session);
    let received = api.finish().await;
    let put = received
        .iter()
        .rev()
        .find(|r| r.method == Method::PUT)
        .unwrap()
        .body
        .clone()
        .unwrap();
    assert_eq!(put["metadata"]["resourceVersion"], "8");
    let names = crate::mesh::session_providers(put["data"]["mesh"].as_str().unwrap()).unwrap();
    assert_eq!(names, [session_id()]);
    assert!(
        put["data"]["mesh"].as_str().unwrap().contains("zipkin"),
        "their provider is kept"
    );
}

#[tokio::test]
async fn endless_conflicts_on_the_mesh_config_give_up_and_roll_back() {
    let steps = setup_steps();
    let mut script: Vec<Exchange> = steps[..7].iter().map(|s| s.exchange.clone()).collect();
    script.push(fail(Method::PUT, format!("{MESH_MAP}?"), 409));
    for _ in 1..crate::apply::MESH_UPDATE_ATTEMPTS {
        script.push(ok(Method::GET, MESH_MAP, mesh_map("8", MESH)));
        script.push(fail(Method::PUT, format!("{MESH_MAP}?"), 409));
    }
    script.extend(teardown(&steps[..7]));
    let api = MockApi::new(script);
    let error = Session::start(
        &api.client,
        plan(),
        &mut link(),
        timeouts(),
        &CancellationToken::new(),
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "mesh config istio-system/istio kept changing under us (5 conflicts in a row): try again when the control plane is not being upgraded"
    );
    api.finish().await;
}

/// What a session leaves when its CLI died mid-way: the lists cleanup makes
/// (everywhere, or only where the anchor says for a probe) and the answers of
/// a cluster holding the leftovers.
pub(crate) fn leftovers_script(lease_renewed: &str, present: bool, reach: &Reach) -> Vec<Exchange> {
    let name = name();
    let (selector, shop, system) = match reach {
        Reach::Cluster => ("?&labelSelector=apitrace.io%2Fsession".to_owned(), "", ""),
        Reach::Session { .. } => (
            format!("?&labelSelector=apitrace.io%2Fsession%3D{SESSION}"),
            "/namespaces/shop",
            "/namespaces/apitrace-system",
        ),
    };
    let labelled = |value: Value| if present { value } else { json!([]) };
    let ours = |kind: &str, namespace: &str, name: &str| {
        let mut object = object(kind, namespace, name);
        object["metadata"]["labels"] = json!({
            "app.kubernetes.io/managed-by": "kubectl-apitrace", "apitrace.io/session": SESSION,
        });
        object
    };
    let list = |items: Value| json!({ "metadata": {}, "items": items });
    let lease = anchor(lease_renewed, "1");
    let mut traced = object("Pod", "shop", "web-1");
    traced["metadata"]["labels"] = json!({ "apitrace.io/session": SESSION, "app": "web" });
    let mesh = if present {
        mesh_with_ours()
    } else {
        MESH.to_owned()
    };
    let probe = ours("Pod", "apitrace-system", &format!("{name}-probe-0"));
    let mut script = vec![
        ok(
            Method::GET,
            format!("/apis/extensions.istio.io/v1alpha1{shop}/wasmplugins{selector}"),
            list(labelled(json!([ours("WasmPlugin", "shop", &name)]))),
        ),
        ok(
            Method::GET,
            format!("/apis/telemetry.istio.io/v1{shop}/telemetries{selector}"),
            list(labelled(json!([ours("Telemetry", "shop", &name)]))),
        ),
    ];
    // Listed everywhere at once, or the traced pods' namespace then the probes'.
    script.extend(match reach {
        Reach::Cluster => vec![ok(
            Method::GET,
            format!("/api/v1/pods{selector}"),
            list(labelled(json!([traced, probe]))),
        )],
        Reach::Session { .. } => vec![
            ok(
                Method::GET,
                format!("/api/v1{shop}/pods{selector}"),
                list(labelled(json!([traced]))),
            ),
            ok(
                Method::GET,
                format!("/api/v1{system}/pods{selector}"),
                list(labelled(json!([probe]))),
            ),
        ],
    });
    script.extend([
        ok(
            Method::GET,
            format!("/api/v1{system}/services{selector}"),
            list(labelled(json!([ours("Service", "apitrace-system", &name)]))),
        ),
        ok(
            Method::GET,
            format!("/api/v1{system}/secrets{selector}"),
            list(labelled(json!([ours("Secret", "apitrace-system", &name)]))),
        ),
        ok(
            Method::GET,
            format!("/apis/coordination.k8s.io/v1{system}/leases{selector}"),
            list(labelled(json!([lease]))),
        ),
        ok(Method::GET, MESH_MAP, mesh_map("3", &mesh)),
    ]);
    script
}

/// The session's anchor Lease as the API server returns it.
fn anchor(renewed: &str, resource_version: &str) -> Value {
    let mut lease = object("Lease", "apitrace-system", &name());
    lease["metadata"]["resourceVersion"] = json!(resource_version);
    lease["metadata"]["labels"] = json!({
        "app.kubernetes.io/managed-by": "kubectl-apitrace", "apitrace.io/session": SESSION,
    });
    lease["metadata"]["annotations"] = json!({
        "apitrace.io/mesh-config": "istio-system/istio",
        "apitrace.io/target-namespaces": "shop",
    });
    lease["spec"] = json!({ "leaseDurationSeconds": 30, "renewTime": renewed });
    lease
}

#[tokio::test]
async fn cleanup_removes_a_dead_sessions_leftovers_and_a_second_run_finds_nothing() {
    let now: Timestamp = "2026-11-22T10:05:00Z".parse().unwrap();
    let steps = setup_steps();
    let mut script = leftovers_script("2026-11-22T10:01:00.000000Z", true, &Reach::Cluster);
    // The same teardown as the session's own, in the same order.
    script.extend(teardown(&steps));
    let api = MockApi::new(script);
    let configs = [MeshConfigRef::for_revision("istio-system", "default")];
    let report = cleanup::cleanup(
        &api.client,
        &Which::Leftovers,
        &Reach::Cluster,
        &configs,
        now,
    )
    .await
    .unwrap();
    assert_eq!(report.removed.len(), 8, "{:?}", report.removed);
    assert!(report.live.is_empty() && report.failed.is_empty());
    api.finish().await;

    let api = MockApi::new(leftovers_script(
        "2026-11-22T10:01:00.000000Z",
        false,
        &Reach::Cluster,
    ));
    let report = cleanup::cleanup(
        &api.client,
        &Which::Leftovers,
        &Reach::Cluster,
        &configs,
        now,
    )
    .await
    .unwrap();
    assert!(report.removed.is_empty(), "{:?}", report.removed);
    api.finish().await;
}

#[tokio::test]
async fn a_session_whose_lease_is_renewed_is_left_alone_until_it_lapses() {
    let configs = [MeshConfigRef::for_revision("istio-system", "default")];
    let renewed = "2026-11-22T10:04:50.000000Z";
    // Renewed 10 s ago with a 30 s lease: live.
    let api = MockApi::new(leftovers_script(renewed, true, &Reach::Cluster));
    let now: Timestamp = "2026-11-22T10:05:00Z".parse().unwrap();
    let report = cleanup::cleanup(
        &api.client,
        &Which::Leftovers,
        &Reach::Cluster,
        &configs,
        now,
    )
    .await
    .unwrap();
    assert_eq!(report.live, [session_id()]);
    assert!(report.removed.is_empty());
    api.finish().await;
    // 31 s later nobody renewed it: the CLI is gone, everything goes.
    let mut script = leftovers_script(renewed, true, &Reach::Cluster);
    script.extend(teardown(&setup_steps()));
    let api = MockApi::new(script);
    let now: Timestamp = "2026-11-22T10:05:21Z".parse().unwrap();
    let report = cleanup::cleanup(
        &api.client,
        &Which::Leftovers,
        &Reach::Cluster,
        &configs,
        now,
    )
    .await
    .unwrap();
    assert!(report.live.is_empty());
    assert_eq!(report.removed.len(), 8);
    api.finish().await;
}

/// A probe reading its session's anchor: read every 5 s (30 s / 6), renewed
/// once, then unchanged (one read failing in between) until 30 s of the
/// probe's own clock have passed since.
pub(crate) fn anchor_reads() -> Vec<Exchange> {
    let get = |renewed: &str, version: &str| {
        ok(
            Method::GET,
            format!("{LEASES}/{}", name()),
            anchor(renewed, version),
        )
    };
    let mut script = vec![
        get("2026-11-22T10:00:00.000000Z", "1"),
        get("2026-11-22T10:00:04.000000Z", "2"),
    ];
    for poll in 1..=7 {
        script.push(if poll == 3 {
            fail(Method::GET, format!("{LEASES}/{}", name()), 500)
        } else {
            get("2026-11-22T10:00:04.000000Z", "2")
        });
    }
    script
}

/// Where a probe of this session cleans up.
pub(crate) fn probe_reach() -> Reach {
    Reach::Session {
        probe_namespace: "apitrace-system".into(),
        target_namespaces: vec!["shop".into()],
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_waits_while_the_lease_is_renewed_and_undoes_the_session_once_it_lapses() {
    let api = MockApi::new(anchor_reads());
    let started = tokio::time::Instant::now();
    let mut errors = 0;
    let ending = watchdog::watch_anchor(&api.client, "apitrace-system", &name(), |error| {
        errors += 1;
        // Only one failure is scripted; more means the script ran out.
        assert_eq!(errors, 1, "unexpected error {error}");
    })
    .await;
    let Anchor::Lapsed(lease) = ending else {
        panic!("expected a lapse, got {ending:?}");
    };
    assert_eq!(errors, 1);
    assert_eq!(started.elapsed(), Duration::from_secs(40));
    api.finish().await;

    // What the probe then removes: only where the anchor says, the anchor last.
    let reach = Reach::of_anchor(&lease);
    assert_eq!(reach, probe_reach());
    let mut script = leftovers_script("2026-11-22T10:00:04.000000Z", true, &reach);
    script.extend(teardown(&setup_steps()));
    let api = MockApi::new(script);
    let report = watchdog::undo_lapsed(&api.client, &lease).await.unwrap();
    assert_eq!(report.removed.len(), 8, "{:?}", report.removed);
    assert!(report.failed.is_empty());
    api.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_probe_stops_watching_when_the_cli_removed_the_lease() {
    let uri = format!("{LEASES}/{}", name());
    let api = MockApi::new(vec![
        ok(
            Method::GET,
            &uri,
            anchor("2026-11-22T10:00:00.000000Z", "1"),
        ),
        fail(Method::GET, &uri, 404),
    ]);
    let ending = watchdog::watch_anchor(&api.client, "apitrace-system", &name(), |error| {
        panic!("unexpected error {error}")
    })
    .await;
    assert!(matches!(ending, Anchor::Gone), "{ending:?}");
    api.finish().await;
}

#[tokio::test]
async fn a_lease_that_is_not_an_anchor_is_refused_without_a_request() {
    let mut lease: k8s_openapi::api::coordination::v1::Lease =
        serde_json::from_value(anchor("2026-11-22T10:00:00.000000Z", "1")).unwrap();
    lease.metadata.labels = None;
    let api = MockApi::new(Vec::new());
    let error = watchdog::undo_lapsed(&api.client, &lease)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "Lease {} carries no session label: it is not a session's anchor",
            name()
        )
    );
    api.finish().await;
}

fn pod(name: &str, status: Value, extra: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "namespace": "shop", "name": name, "labels": {"app": "web"} },
        "spec": { "nodeName": "node-a", "containers": [{"name": "web"}, {"name": "istio-proxy"}] },
        "status": status,
    });
    merge(&mut pod, extra);
    pod
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
        (target, patch) => *target = patch,
    }
}

fn running() -> Value {
    json!({
        "phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}],
        "containerStatuses": [
            {"name": "web", "image": "", "imageID": "", "ready": true, "restartCount": 0, "containerID": "containerd://app"},
            {"name": "istio-proxy", "image": "", "imageID": "", "ready": true, "restartCount": 0, "containerID": "containerd://abc123"},
        ],
    })
}

fn node(os: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": "node-a", "labels": {"kubernetes.io/os": os} },
        "spec": { "taints": [{"key": "dedicated", "value": "web", "effect": "NoSchedule"}] },
        "status": { "nodeInfo": {
            "kernelVersion": "6.8.0-1015-aws", "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
            "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "operatingSystem": os, "osImage": "", "systemUUID": "",
        } },
    })
}

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/web";
const WEB_PODS: &str = "/api/v1/namespaces/shop/pods?&labelSelector=app%3Dweb";

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "namespace": "shop", "name": "web" },
        "spec": { "selector": {"matchLabels": {"app": "web"}}, "template": {} },
    })
}

/// Resolving `deploy/web` in `shop`: the Deployment, its pods, and the node
/// of a running one (when `node_os` is given).
fn resolution(pods: Vec<Value>, node_os: Option<&str>) -> Vec<Exchange> {
    let mut script = vec![
        ok(Method::GET, DEPLOYMENT, deployment()),
        ok(
            Method::GET,
            WEB_PODS,
            json!({"metadata": {}, "items": pods}),
        ),
    ];
    if let Some(os) = node_os {
        script.push(ok(Method::GET, "/api/v1/nodes/node-a", node(os)));
    }
    script
}

pub(crate) fn resolution_script() -> Vec<Exchange> {
    resolution(vec![pod("web-1", running(), json!({}))], Some("linux"))
}

async fn resolve_with(
    pods: Vec<Value>,
    node_os: Option<&str>,
) -> (Result<Targets, TargetError>, MockApi) {
    let api = MockApi::new(resolution(pods, node_os));
    let selection = Selection::Named("deploy/web".parse().unwrap());
    let result = resolve(&api.client, &selection, &Scope::Namespace("shop".into())).await;
    (result, api)
}

#[tokio::test]
async fn a_deployment_resolves_to_its_running_pods_and_their_nodes() {
    let pending = pod("web-2", json!({"phase": "Pending"}), json!({}));
    let (targets, api) = resolve_with(
        vec![pod("web-1", running(), json!({})), pending],
        Some("linux"),
    )
    .await;
    let targets = targets.unwrap();
    api.finish().await;
    assert_eq!(targets.pods.len(), 1, "the pending pod is left out");
    let traced = &targets.pods[0];
    assert_eq!(
        (traced.name.as_str(), traced.sidecar_container_id.as_str()),
        ("web-1", "abc123")
    );
    assert_eq!(traced.ips, ["10.0.0.5"]);
    assert_eq!(targets.nodes[0].kernel, "6.8.0-1015-aws");
    assert_eq!(targets.nodes[0].taints[0].key, "dedicated");
}

/// A StatefulSet and a DaemonSet are read from their own APIs, and their
/// pods are the ones their own selectors match.
#[tokio::test]
async fn statefulsets_and_daemonsets_resolve_by_their_own_selectors() {
    for (target, path, app) in [
        (
            "sts/db",
            "/apis/apps/v1/namespaces/shop/statefulsets/db",
            "db",
        ),
        (
            "ds/agent",
            "/apis/apps/v1/namespaces/shop/daemonsets/agent",
            "agent",
        ),
    ] {
        let kind = if target.starts_with("sts/") {
            "StatefulSet"
        } else {
            "DaemonSet"
        };
        let name = target.split_once('/').unwrap().1;
        let workload = json!({
            "apiVersion": "apps/v1", "kind": kind,
            "metadata": { "namespace": "shop", "name": name },
            "spec": { "selector": {"matchLabels": {"app": app}}, "template": {} },
        });
        let pod_name = format!("{name}-0");
        let api = MockApi::new(vec![
            ok(Method::GET, path, workload),
            ok(
                Method::GET,
                format!("/api/v1/namespaces/shop/pods?&labelSelector=app%3D{app}"),
                json!({"metadata": {}, "items": [
                    pod(&pod_name, running(), json!({"metadata": {"labels": {"app": app}}})),
                ]}),
            ),
            ok(Method::GET, "/api/v1/nodes/node-a", node("linux")),
        ]);
        let selection = Selection::Named(target.parse().unwrap());
        let targets = resolve(&api.client, &selection, &Scope::Namespace("shop".into()))
            .await
            .unwrap();
        api.finish().await;
        let names: Vec<&str> = targets.pods.iter().map(|pod| pod.name.as_str()).collect();
        assert_eq!(names, [pod_name.as_str()], "{target}");
    }
}

#[tokio::test]
async fn every_target_problem_has_its_own_message() {
    let cases: Vec<(Vec<Value>, Option<&str>, String)> = vec![
        (vec![], None, "deployment/web in namespace \"shop\" selects no pods: check it with `kubectl get pods -n shop -l app=web`".into()),
        (
            vec![pod("web-1", json!({"phase": "Pending"}), json!({}))],
            None,
            "pod shop/web-1 is Pending, not Running: wait until `kubectl get pod -n shop web-1` shows it Running".into(),
        ),
        (
            vec![pod("web-1", json!({"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": []}), json!({}))],
            None,
            "pod shop/web-1 has no Istio sidecar (no istio-proxy container): enable injection with `kubectl label namespace shop istio-injection=enabled` and restart the pod".into(),
        ),
        (
            vec![pod("web-1", running(), json!({"spec": {"hostNetwork": true}}))],
            None,
            "pod shop/web-1 uses the node's network (hostNetwork): apitrace traces pods with their own network namespace; pick another pod".into(),
        ),
        (
            vec![pod("web-1", running(), json!({"metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}}}))],
            None,
            "pod shop/web-1 is in Istio ambient mode: apitrace supports sidecar mode only for now; trace a pod with an istio-proxy sidecar".into(),
        ),
        (
            vec![pod("web-1", running(), json!({"metadata": {"labels": {"apitrace.io/session": "zzzzz99999"}}}))],
            None,
            "pod shop/web-1 is already traced by session zzzzz99999: wait for it to end, or remove it with `kubectl apitrace cleanup --session zzzzz99999`".into(),
        ),
        (
            vec![pod("web-1", running(), json!({}))],
            Some("windows"),
            "pod shop/web-1 runs on node node-a, a Windows node: the probe needs Linux (eBPF); pick pods on Linux nodes".into(),
        ),
    ];
    for (pods, node_os, expected) in cases {
        let (result, api) = resolve_with(pods, node_os).await;
        assert_eq!(result.unwrap_err().to_string(), expected);
        api.finish().await;
    }
}

#[tokio::test]
async fn missing_objects_and_misplaced_flags_say_what_to_do() {
    let api = MockApi::new(vec![fail(
        Method::GET,
        "/api/v1/namespaces/shop/services/api",
        404,
    )]);
    let selection = Selection::Named("svc/api".parse().unwrap());
    let error = resolve(&api.client, &selection, &Scope::Namespace("shop".into()))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "service/api not found in namespace \"shop\": check the name with `kubectl get service -n shop`, or pass -n NAMESPACE"
    );
    api.finish().await;

    let api = MockApi::new(vec![]);
    let error = resolve(&api.client, &selection, &Scope::AllNamespaces)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "-A works with -l SELECTOR only: service/api names one object, so give its namespace with -n"
    );
    api.finish().await;

    let api = MockApi::new(vec![ok(
        Method::GET,
        "/api/v1/pods?&labelSelector=app%3Dnone",
        json!({"metadata": {}, "items": []}),
    )]);
    let error = resolve(
        &api.client,
        &Selection::Labels("app=none".into()),
        &Scope::AllNamespaces,
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "-l app=none selects no pods: check it with `kubectl get pods -A -l app=none`"
    );
    api.finish().await;
}

/// The identity watch of pods as the API server sees it: a list in pages of
/// 500, each after the first asked for by the `continue` token of the one
/// before, then a watch from the list's resourceVersion (services and nodes
/// alike).
pub(crate) fn identity_watch_script() -> Vec<Exchange> {
    let listed = pod("web-1", running(), json!({}));
    let mut next_page = pod("db-0", running(), json!({}));
    next_page["status"]["podIPs"] = json!([{ "ip": "10.0.0.7" }]);
    let mut added = pod("client-7", running(), json!({}));
    added["status"]["podIPs"] = json!([{ "ip": "10.0.0.9" }]);
    added["metadata"]["resourceVersion"] = json!("101");
    vec![
        ok(
            Method::GET,
            "/api/v1/pods?&limit=500",
            json!({
                "metadata": { "resourceVersion": "100", "continue": "page-2", "remainingItemCount": 1 },
                "items": [listed],
            }),
        ),
        ok(
            Method::GET,
            "/api/v1/pods?&limit=500&continue=page-2",
            json!({ "metadata": { "resourceVersion": "100" }, "items": [next_page] }),
        ),
        watch(
            "/api/v1/pods?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=100",
            &[json!({ "type": "ADDED", "object": added })],
        ),
    ]
}

/// Pods listed, on every page, and pods added all become identities.
#[tokio::test]
async fn identities_come_from_a_list_in_pages_then_a_watch_of_pods() {
    let api = MockApi::new(identity_watch_script());
    let traced = BTreeSet::from([("shop".to_owned(), "web-1".to_owned())]);
    let events = identity::watch_all::<k8s_openapi::api::core::v1::Pod>(api.client.clone());
    let naming = identity::Naming::new(1);
    assert_eq!(naming.unnamed_cause(), UnnamedCause::NotListedYet);
    let inputs: Vec<_> = identity::transform(events, traced, || 42, naming.clone())
        .take(3)
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(naming.unnamed_cause(), UnnamedCause::NoHolder, "listed");
    let names: Vec<(String, i64, bool)> = inputs
        .into_iter()
        .map(|input| match input {
            apitrace_join::Input::Identity {
                ip,
                since_ns,
                workload,
            } => (format!("{ip} {}", workload.name), since_ns, workload.traced),
            other => panic!("not an identity: {other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        [
            ("10.0.0.5 web-1".to_owned(), 0, true),
            ("10.0.0.7 db-0".to_owned(), 0, false),
            ("10.0.0.9 client-7".to_owned(), 42, false),
        ]
    );
    api.finish().await;
}

/// Istio's injector writes the revision into the status annotation and
/// leaves the pod's `istio.io/rev` label (here a revision tag) as it was.
fn injected_status(revision: &str) -> Value {
    let status = json!({
        "initContainers": ["istio-init"], "containers": ["web", "istio-proxy"],
        "volumes": ["istio-envoy"], "imagePullSecrets": null, "revision": revision,
    });
    json!({"metadata": {
        "labels": {"istio.io/rev": "prod"},
        "annotations": {"sidecar.istio.io/status": status.to_string()},
    }})
}

const PROD_TAG: &str = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations?&labelSelector=istio.io%2Ftag%3Dprod";

/// `istio-revision-tag-prod`, as `istioctl tag set prod --revision canary` makes it.
fn prod_tag() -> Value {
    json!({"metadata": {}, "items": [{
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "istio-revision-tag-prod", "labels": {"istio.io/tag": "prod", "istio.io/rev": "canary"}},
    }]})
}

#[tokio::test]
async fn the_revision_is_the_one_the_injector_wrote_not_the_pods_label() {
    let (targets, api) = resolve_with(
        vec![pod("web-1", running(), injected_status("canary"))],
        Some("linux"),
    )
    .await;
    let targets = targets.unwrap();
    api.finish().await;
    assert_eq!(
        targets.pods[0].revision,
        Revision::Injected("canary".into())
    );
    // Nothing more to ask: the annotation is istiod's own revision.
    let api = MockApi::new(vec![]);
    assert_eq!(
        crate::check::revision(&api.client, &targets).await.unwrap(),
        "canary"
    );
    api.finish().await;
}

#[tokio::test]
async fn a_pod_whose_status_names_no_revision_is_resolved_through_the_revision_tag() {
    let mut unannotated = injected_status("");
    unannotated["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .clear();
    let (targets, api) =
        resolve_with(vec![pod("web-1", running(), unannotated)], Some("linux")).await;
    let targets = targets.unwrap();
    api.finish().await;
    assert_eq!(targets.pods[0].revision, Revision::Selected("prod".into()));
    let api = MockApi::new(tag_lookup_script());
    assert_eq!(
        crate::check::revision(&api.client, &targets).await.unwrap(),
        "canary"
    );
    api.finish().await;
}

/// Looking up the revision tag `prod`.
pub(crate) fn tag_lookup_script() -> Vec<Exchange> {
    vec![ok(Method::GET, PROD_TAG, prod_tag())]
}

#[test]
fn show_secrets_reaches_the_filters_plugin_config() {
    for show_secrets in [false, true] {
        let plan = Plan {
            show_secrets,
            ..plan()
        };
        let plugins = plan.wasm_plugins(&module());
        let config = &plugins[0].data["spec"]["pluginConfig"];
        assert_eq!(config["show_secrets"], show_secrets);
        // What the filter reads back is what the session meant.
        let parsed = FilterConfig::parse(&serde_json::to_vec(config).unwrap()).unwrap();
        assert_eq!(parsed.show_secrets, show_secrets);
        assert_eq!(parsed.session_token, plan.token);
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_lease_renewal_is_retried_while_the_lease_is_valid() {
    let lease = format!("{LEASES}/{}?", name());
    let renewed = ok(
        Method::PATCH,
        lease.clone(),
        anchor("2026-11-22T10:00:10Z", "2"),
    );
    let refused = fail(Method::PATCH, lease.clone(), 503);
    // One refusal, then renewed: the session goes on at the usual pace.
    let mut script = vec![refused.clone(), renewed.clone()];
    // Then refused until the Lease would lapse before the next try: 10 s
    // after the last renewal, then every 2 s up to 28 s.
    script.extend(std::iter::repeat_n(refused.clone(), 10));
    let api = MockApi::new(script);
    let mut keeper = crate::session::LeaseKeeper::new(&api.client, "apitrace-system", &name());
    tokio::time::advance(LEASE_DURATION / 3).await;
    let next = keeper.renew().await.unwrap();
    assert_eq!(next, crate::session::RENEW_RETRY);
    assert!(keeper.failing.as_deref().unwrap().contains("injected 503"));
    tokio::time::advance(next).await;
    assert_eq!(keeper.renew().await.unwrap(), LEASE_DURATION / 3);
    assert_eq!(keeper.failing, None);
    tokio::time::advance(LEASE_DURATION / 3).await;
    let mut tries = 1;
    let error = loop {
        match keeper.renew().await {
            Ok(next) => {
                tries += 1;
                tokio::time::advance(next).await;
            }
            Err(error) => break error,
        }
    };
    assert_eq!(tries, 10);
    assert!(
        error.to_string().starts_with(&format!(
            "the session's Lease apitrace-system/{} could not be renewed for 28 s, and lapses now",
            name()
        )),
        "{error}"
    );
    drop(keeper);
    api.finish().await;
}

#[tokio::test]
async fn a_lease_that_is_gone_ends_the_session_at_once() {
    let lease = format!("{LEASES}/{}?", name());
    let api = MockApi::new(vec![fail(Method::PATCH, lease, 404)]);
    let mut keeper = crate::session::LeaseKeeper::new(&api.client, "apitrace-system", &name());
    let error = keeper.renew().await.unwrap_err();
    assert!(
        matches!(error, crate::session::LeaseError::Gone { .. }),
        "{error}"
    );
    drop(keeper);
    api.finish().await;
}

/// An admission webhook or policy that gives the probe Service an exportTo
/// leaving the traced namespace out: the session sees it on the Service the
/// API server returns, says what to change, and removes what it created.
#[tokio::test]
async fn a_probe_service_exported_away_from_the_traced_pods_ends_setup_with_what_to_change() {
    let steps = setup_steps();
    let mut script: Vec<Exchange> = steps[..2].iter().map(|s| s.exchange.clone()).collect();
    let mut service = steps[2].exchange.clone();
    service.body["metadata"]["annotations"] =
        json!({ "networking.istio.io/exportTo": "., istio-system" });
    script.push(service);
    script.extend(teardown(&steps[..3]));
    let api = MockApi::new(script);
    let error = Session::start(
        &api.client,
        plan(),
        &mut link(),
        timeouts(),
        &CancellationToken::new(),
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "the sidecars in namespace shop would not get the probe Service in apitrace-system, so the access logs and the filter's events would have nowhere to go: the Service carries networking.istio.io/exportTo: \".,istio-system\", which the session does not set (an admission webhook or policy added it); exempt namespace apitrace-system from it, or have it include \"shop\""
    );
    assert!(error.leftovers.is_empty());
    api.finish().await;
}

/// The mesh config put back mid-session by whoever manages it, then given
/// the provider again, then put back once more: the watch says each change
/// once (who manages the config when the provider goes), nothing while the
/// config stays as it is, and a failed read is not taken for a removal.
#[tokio::test]
async fn the_provider_watch_says_each_time_the_sessions_provider_goes_or_comes_back() {
    let mut reverted = mesh_map("11", MESH);
    reverted["metadata"]["annotations"] =
        json!({ "argocd.argoproj.io/tracking-id": "istio:/ConfigMap:istio-system/istio" });
    let api = MockApi::new(vec![
        ok(Method::GET, MESH_MAP, mesh_map("8", &mesh_with_ours())),
        fail(Method::GET, MESH_MAP, 503),
        ok(Method::GET, MESH_MAP, reverted.clone()),
        ok(Method::GET, MESH_MAP, reverted),
        ok(Method::GET, MESH_MAP, mesh_map("12", &mesh_with_ours())),
        ok(Method::GET, MESH_MAP, mesh_map("13", &mesh_with_ours())),
        fail(Method::GET, MESH_MAP, 404),
        fail(Method::GET, MESH_MAP, 404),
    ]);
    let mut watch = crate::session::ProviderWatch::new(&api.client, &plan().mesh, &session_id());
    assert_eq!(watch.check().await, None);
    assert_eq!(watch.failing, None);
    assert_eq!(watch.check().await, None);
    assert!(watch.failing.as_deref().unwrap().contains("injected 503"));
    let gone = watch.check().await.expect("the provider is gone");
    assert_eq!(watch.failing, None);
    assert_eq!(
        gone.to_string(),
        format!(
            "warning: the session's access-log provider {} is no longer in the mesh config istio-system/istio; it was probably put back by Argo CD application istio, which manages it; the calls from now on lack the access-log layer (als); the session does not add the provider again, so as not to fight whoever manages the config",
            name()
        )
    );
    assert_eq!(watch.check().await, None, "still gone: said once");
    let back = watch.check().await.expect("the provider is back");
    assert_eq!(
        back.to_string(),
        format!(
            "the session's access-log provider {} is in the mesh config istio-system/istio again; the calls from now on have the access-log layer (als) again",
            name()
        )
    );
    assert_eq!(watch.check().await, None, "still there: said once");
    // The ConfigMap deleted: gone again, and nobody to name.
    let gone_again = watch.check().await.expect("the provider is gone again");
    assert!(
        matches!(&gone_again, ProviderChange::Gone { owner: None, .. }),
        "{gone_again:?}"
    );
    assert_eq!(watch.check().await, None);
    drop(watch);
    api.finish().await;
}

/// Teardown after the provider was removed by someone else: the mesh config
/// is read, found without it, and not written (no stale copy put back).
#[tokio::test]
async fn teardown_leaves_a_mesh_config_that_already_lost_the_provider_untouched() {
    let steps = setup_steps();
    let mut script: Vec<Exchange> = steps.iter().map(|s| s.exchange.clone()).collect();
    for step in steps.iter().rev() {
        if step.exchange.method == Method::PUT && step.exchange.uri.starts_with(MESH_MAP) {
            script.push(ok(Method::GET, MESH_MAP, mesh_map("12", MESH)));
        } else {
            script.extend(step.undo.clone());
        }
    }
    let api = MockApi::new(script);
    let session = Session::start(
        &api.client,
        plan(),
        &mut link(),
        timeouts(),
        &CancellationToken::new(),
        &mut |_| {},
    )
    .await
    .unwrap();
    let leftovers = session.end(&api.client).await;
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let received = api.finish().await;
    let puts = received.iter().filter(|r| r.method == Method::PUT).count();
    assert_eq!(puts, 1, "only setup's update of the mesh config");
}
