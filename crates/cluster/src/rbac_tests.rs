//! The RBAC in `manifests/` against the requests the mock scenarios prove we
//! make: every request of a session, its teardown and `cleanup` is granted by
//! the user ClusterRole and listed by `check`; every request of a probe whose
//! CLI died is granted by the probe's roles. A permission missing from a
//! manifest fails here, not on a user's cluster.

use std::str::FromStr as _;

use apitrace_proto::ports;
use http::Method;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::Value;

use crate::{
    check::permissions,
    cleanup::Reach,
    mock::{Exchange, MockApi, fail, ok},
    mock_tests::{
        SESSION, anchor_reads, identity_watch_script, leftovers_script, probe_reach,
        resolution_script, setup_steps, tag_lookup_script, teardown,
    },
    names::SessionId,
};

/// What RBAC decides on, read off a request as the API server does.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attributes {
    verb: String,
    group: String,
    /// `pods`, or `pods/portforward` for a subresource.
    resource: String,
    /// `None` for a cluster-scoped object or a list across namespaces.
    namespace: Option<String>,
}

impl std::fmt::Display for Attributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dot = if self.group.is_empty() { "" } else { "." };
        write!(
            f,
            "{} {}{dot}{} in {}",
            self.verb,
            self.resource,
            self.group,
            self.namespace.as_deref().unwrap_or("(all)")
        )
    }
}

/// Every authorisation the API server makes for `exchange`: one, from its
/// method and path, except for a port-forward. kube-rs port-forwards over a
/// WebSocket, whose handshake is a GET, so RBAC first sees `get
/// pods/portforward` (the verb comes from the method: kubernetes/kubernetes,
/// staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go); from
/// 1.35, with the `AuthorizePodWebsocketUpgradeCreatePermission` gate on by
/// default, `PortForwardREST.Connect` also requires `create`, as for SPDY's
/// POST (pkg/registry/core/pod/rest/subresources.go and authorize.go, v1.35.0;
/// KEP-4006, kubernetes#134577). A user must hold both.
fn authorisations(exchange: &Exchange) -> Vec<Attributes> {
    let first = attributes(exchange);
    if first.resource == "pods/portforward" && first.verb == "get" {
        let create = Attributes {
            verb: "create".into(),
            ..first.clone()
        };
        return vec![first, create];
    }
    vec![first]
}

fn attributes(exchange: &Exchange) -> Attributes {
    let path = exchange.uri.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not an API path: {path}"),
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(*namespace), rest),
        rest => (None, rest),
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, subresource] => (format!("{resource}/{subresource}"), true),
        _ => panic!("unexpected API path: {path}"),
    };
    let watching = exchange.uri.contains("watch=true");
    let verb = match (exchange.method.as_str(), named) {
        ("GET", _) if watching => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        (method, _) => panic!("unexpected {method} {path}"),
    };
    Attributes {
        verb: verb.into(),
        group: group.into(),
        resource,
        namespace: namespace.map(str::to_owned),
    }
}

/// Rules and where they apply: `None` everywhere (a ClusterRole bound by a
/// ClusterRoleBinding), else one namespace.
type Grants = Vec<(Option<String>, Vec<Value>)>;

fn manifest(file: &str) -> Vec<Value> {
    let path = format!("{}/../../manifests/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split("\n---\n")
        .map(|document| serde_saphyr::from_str(document).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

/// What the manifests in `files` grant `subject` (a ServiceAccount
/// `namespace/name`, or anyone the user ClusterRole is bound to for `None`).
fn grants(files: &[&str], subject: Option<(&str, &str)>) -> Grants {
    let documents: Vec<Value> = files.iter().flat_map(|file| manifest(file)).collect();
    let rules_of = |kind: &str, name: &str, namespace: Option<&str>| -> Vec<Value> {
        documents
            .iter()
            .find(|d| {
                d["kind"] == kind
                    && d["metadata"]["name"] == name
                    && d["metadata"]["namespace"].as_str() == namespace
            })
            .unwrap_or_else(|| panic!("no {kind} {name} in {files:?}"))["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let Some((sa_namespace, sa_name)) = subject else {
        return documents
            .iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .map(|d| (None, d["rules"].as_array().cloned().unwrap_or_default()))
            .collect();
    };
    documents
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
        .filter(|d| {
            d["subjects"].as_array().into_iter().flatten().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["namespace"] == sa_namespace
                    && s["name"] == sa_name
            })
        })
        .map(|binding| {
            let namespace = binding["metadata"]["namespace"].as_str();
            let role = binding["roleRef"]["name"].as_str().unwrap();
            let rules = match binding["roleRef"]["kind"].as_str() {
                Some("Role") => rules_of("Role", role, namespace),
                _ => rules_of("ClusterRole", role, None),
            };
            (namespace.map(str::to_owned), rules)
        })
        .collect()
}

fn granted(grants: &Grants, wanted: &Attributes) -> bool {
    let has = |rule: &Value, field: &str, value: &str| {
        rule[field]
            .as_array()
            .into_iter()
            .flatten()
            .any(|item| item == value || item == "*")
    };
    grants.iter().any(|(scope, rules)| {
        (scope.is_none() || *scope == wanted.namespace)
            && rules.iter().any(|rule| {
                has(rule, "apiGroups", &wanted.group)
                    && has(rule, "resources", &wanted.resource)
                    && has(rule, "verbs", &wanted.verb)
            })
    })
}

fn ungranted(grants: &Grants, script: &[Exchange]) -> Vec<String> {
    let mut missing: Vec<String> = script
        .iter()
        .flat_map(authorisations)
        .filter(|wanted| !granted(grants, wanted))
        .map(|wanted| wanted.to_string())
        .collect();
    missing.dedup();
    missing
}

/// Everything a user's CLI asks: resolving a target, a session's setup and
/// teardown (and the identity watch of pods, services and nodes meanwhile),
/// and `cleanup` of every session.
fn user_requests() -> Vec<Exchange> {
    let steps = setup_steps();
    let mut script = resolution_script();
    script.extend(tag_lookup_script());
    // The Sidecar resources that decide whether the traced pods reach the probes.
    script.push(ok(
        Method::GET,
        "/apis/networking.istio.io/v1beta1/namespaces/shop/sidecars?",
        Value::Null,
    ));
    script.extend(identity_watches());
    script.extend(steps.iter().map(|step| step.exchange.clone()));
    script.push(port_forward());
    script.extend(teardown(&steps));
    script.extend(leftovers_script(
        "2026-11-22T10:00:00Z",
        true,
        &Reach::Cluster,
    ));
    script
}

/// The port-forward to a probe pod's subscription port, as kube's
/// `Api::portforward` sends it (a test below holds it to that).
fn port_forward() -> Exchange {
    let probe = SessionId::from_str(SESSION).unwrap().probe_pod_name(0);
    ok(
        Method::GET,
        format!(
            "/api/v1/namespaces/apitrace-system/pods/{probe}/portforward?&ports={}",
            ports::SUBSCRIBE
        ),
        Value::Null,
    )
}

/// The pods' watch, and the same for services and nodes.
fn identity_watches() -> Vec<Exchange> {
    let pods = identity_watch_script();
    let mut script = pods.clone();
    for resource in ["services", "nodes"] {
        script.extend(pods.iter().map(|exchange| Exchange {
            uri: exchange.uri.replace("/pods", &format!("/{resource}")),
            ..exchange.clone()
        }));
    }
    script
}

#[test]
fn the_user_cluster_role_grants_every_request_of_a_session_and_of_cleanup() {
    let grants = grants(&["user-clusterrole.yaml"], None);
    assert_eq!(ungranted(&grants, &user_requests()), Vec::<String>::new());
}

#[test]
fn check_asks_about_every_permission_a_session_uses() {
    let asked: Vec<Attributes> = permissions("apitrace-system", "istio-system", &["shop".into()])
        .into_iter()
        .map(|permission| Attributes {
            verb: permission.verb.into(),
            group: permission.group.into(),
            resource: match permission.subresource {
                "" => permission.resource.into(),
                sub => format!("{}/{sub}", permission.resource),
            },
            namespace: permission.namespace,
        })
        .collect();
    // A permission over all namespaces covers each one.
    let covered = |wanted: &Attributes| {
        asked.iter().any(|permission| {
            (
                permission.verb.as_str(),
                permission.group.as_str(),
                permission.resource.as_str(),
            ) == (
                wanted.verb.as_str(),
                wanted.group.as_str(),
                wanted.resource.as_str(),
            ) && (permission.namespace.is_none() || permission.namespace == wanted.namespace)
        })
    };
    let steps = setup_steps();
    let mut session: Vec<Exchange> = steps.iter().map(|step| step.exchange.clone()).collect();
    session.push(port_forward());
    session.extend(teardown(&steps));
    session.extend(identity_watches());
    let mut unasked: Vec<String> = session
        .iter()
        .flat_map(authorisations)
        .filter(|wanted| !covered(wanted))
        .map(|wanted| wanted.to_string())
        .collect();
    unasked.dedup();
    assert_eq!(unasked, Vec::<String>::new());
}

#[test]
fn the_probe_roles_grant_what_a_probe_does_when_its_cli_died_and_nothing_more_is_needed() {
    let grants = grants(&["probe.yaml"], Some(("apitrace-system", "apitrace-probe")));
    let mut script = anchor_reads();
    script.extend(leftovers_script(
        "2026-11-22T10:00:00Z",
        true,
        &probe_reach(),
    ));
    script.extend(teardown(&setup_steps()));
    assert_eq!(ungranted(&grants, &script), Vec::<String>::new());
    // The probe cannot read Secrets outside its namespace, nor create anything.
    for forbidden in [
        ("list", "", "secrets", Some("shop")),
        ("list", "", "secrets", None),
        ("create", "", "pods", Some("shop")),
        ("create", "extensions.istio.io", "wasmplugins", Some("shop")),
        ("update", "", "configmaps", Some("shop")),
    ] {
        let (verb, group, resource, namespace) = forbidden;
        let wanted = Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.map(str::to_owned),
        };
        assert!(!granted(&grants, &wanted), "the probe may {wanted}");
    }
}

#[tokio::test]
async fn a_port_forward_is_the_request_the_rbac_tests_authorise() {
    let expected = port_forward();
    // The handshake is refused (the mock does not upgrade): what matters is
    // the request kube sent for it.
    let mut refused = fail(expected.method.clone(), expected.uri.clone(), 403);
    refused.body["details"] = serde_json::json!({});
    let api = MockApi::new(vec![refused]);
    let pods = Api::<Pod>::namespaced(api.client.clone(), "apitrace-system");
    let name = SessionId::from_str(SESSION).unwrap().probe_pod_name(0);
    assert!(pods.portforward(&name, &[ports::SUBSCRIBE]).await.is_err());
    drop(pods);
    let received = api.finish().await;
    assert_eq!(received.len(), 1);
    assert_eq!(
        authorisations(&expected)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "get pods/portforward in apitrace-system",
            "create pods/portforward in apitrace-system"
        ]
    );
}
