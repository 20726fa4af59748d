//! Who may do what on the stand-in cluster, decided as kube-apiserver decides
//! it with RBAC (kubernetes/kubernetes, as of 1.35; see
//! docs/cluster-upstream.md, section 7): the request's attributes read off its
//! method and path, the rules of every ClusterRoleBinding and (in the
//! request's namespace) RoleBinding whose subjects include the user, and a
//! request allowed when one of those rules matches it. Nothing else grants
//! anything, so a permission missing from `manifests/` fails a session here
//! as it would on a real cluster, by a 403 or by `check`'s access reviews.

use std::collections::BTreeMap;

use serde_json::{Value, json};

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

/// Who sent a request: a name and the groups it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The group kube-apiserver puts every authenticated user in.
const AUTHENTICATED: &str = "system:authenticated";

/// The bearer token the stand-in takes as the user `name`.
pub fn user_token(name: &str) -> String {
    format!("user:{name}")
}

/// The bearer token of a pod running as service account `namespace/name`, as
/// the kubelet would mount it.
pub fn service_account_token(namespace: &str, name: &str) -> String {
    format!("serviceaccount:{namespace}:{name}")
}

impl User {
    /// The user a token names (the stand-in's tokens carry who they are, in
    /// place of a real authenticator's lookup). A service account is the user
    /// `system:serviceaccount:NAMESPACE:NAME` in the groups
    /// `system:serviceaccounts` and `system:serviceaccounts:NAMESPACE`
    /// (staging/src/k8s.io/apiserver/pkg/authentication/serviceaccount/util.go,
    /// `MakeUsername`, `MakeGroupNames`); everyone is in `system:authenticated`.
    pub fn from_token(token: &str) -> Option<Self> {
        let (name, mut groups) = if let Some(name) = token.strip_prefix("user:") {
            (name.to_owned(), Vec::new())
        } else {
            let (namespace, name) = token.strip_prefix("serviceaccount:")?.split_once(':')?;
            (
                format!("system:serviceaccount:{namespace}:{name}"),
                vec![
                    "system:serviceaccounts".to_owned(),
                    format!("system:serviceaccounts:{namespace}"),
                ],
            )
        };
        groups.push(AUTHENTICATED.to_owned());
        Some(Self { name, groups })
    }
}

/// What RBAC decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// `None` for a path outside the API's resources, such as `/apis`.
    pub resource: Option<Resource>,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub group: String,
    pub resource: String,
    pub subresource: String,
    /// Empty for a collection.
    pub name: String,
    /// Empty for a cluster-scoped object or a request across namespaces.
    pub namespace: String,
}

impl Attributes {
    /// A request's attributes as kube-apiserver reads them
    /// (staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go,
    /// `NewRequestInfo`): `/api/VERSION/…` and `/apis/GROUP/VERSION/…` name
    /// resources, `namespaces/NS/` scopes one (a namespace's own path is
    /// scoped to itself), then resource, name and subresource; the verb comes
    /// from the method, `get` without a name being `list`, `watch=true`
    /// making either `watch`, `DELETE` without a name `deletecollection`.
    /// Anything else is a non-resource path whose verb is the method.
    pub fn of_request(method: &str, path: &str, watch: bool) -> Self {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
            _ => {
                return Self {
                    verb: method.to_lowercase(),
                    resource: None,
                    path: path.to_owned(),
                };
            }
        };
        let (namespace, rest) = match rest {
            ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (*namespace, rest),
            ["namespaces", namespace] => (*namespace, rest),
            rest => ("", rest),
        };
        let part = |index: usize| rest.get(index).copied().unwrap_or_default().to_owned();
        let name = part(1);
        let verb = match method {
            "GET" | "HEAD" if watch => "watch",
            "GET" | "HEAD" if name.is_empty() => "list",
            "GET" | "HEAD" => "get",
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" if name.is_empty() => "deletecollection",
            "DELETE" => "delete",
            other => other,
        };
        Self {
            verb: verb.to_owned(),
            resource: Some(Resource {
                group: group.to_owned(),
                resource: part(0),
                subresource: part(2),
                name,
                namespace: namespace.to_owned(),
            }),
            path: path.to_owned(),
        }
    }

    /// What a SelfSubjectAccessReview asks about (its `spec.resourceAttributes`).
    pub fn of_review(spec: &Value) -> Self {
        let field = |name: &str| {
            spec["resourceAttributes"][name]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            verb: field("verb"),
            resource: Some(Resource {
                group: field("group"),
                resource: field("resource"),
                subresource: field("subresource"),
                name: field("name"),
                namespace: field("namespace"),
            }),
            path: String::new(),
        }
    }

    /// The same request, authorised for another verb.
    pub fn as_verb(&self, verb: &str) -> Self {
        Self {
            verb: verb.to_owned(),
            ..self.clone()
        }
    }

    /// The 403 kube-apiserver answers a request RBAC does not allow: a
    /// Status of reason `Forbidden` whose message says who cannot do what
    /// where (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/
    /// responsewriters/errors.go, `Forbidden` and `forbiddenMessage`, through
    /// apimachinery's `NewForbidden`).
    pub fn forbidden(&self, user: &User) -> (u16, Value) {
        let Some(resource) = &self.resource else {
            let message = format!(
                "forbidden: User {:?} cannot {} path {:?}",
                user.name, self.verb, self.path
            );
            return (403, forbidden_status(message, json!({})));
        };
        let combined = if resource.subresource.is_empty() {
            resource.resource.clone()
        } else {
            format!("{}/{}", resource.resource, resource.subresource)
        };
        let scope = if resource.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace {:?}", resource.namespace)
        };
        let reason = format!(
            "User {:?} cannot {} resource {combined:?} in API group {:?} {scope}",
            user.name, self.verb, resource.group
        );
        let qualified = if resource.group.is_empty() {
            resource.resource.clone()
        } else {
            format!("{}.{}", resource.resource, resource.group)
        };
        let message = if resource.name.is_empty() {
            format!("{qualified} is forbidden: {reason}")
        } else {
            format!("{qualified} {:?} is forbidden: {reason}", resource.name)
        };
        let details = json!({
            "name": resource.name, "group": resource.group, "kind": resource.resource,
        });
        (403, forbidden_status(message, details))
    }
}

fn forbidden_status(message: String, details: Value) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": "Forbidden", "code": 403, "message": message, "details": details,
    })
}

/// Whether the roles and bindings among `objects` (keyed by path) allow
/// `user` `wanted`. As kube-apiserver's rule resolver does
/// (pkg/registry/rbac/validation/rule.go, `VisitRulesFor`, `appliesToUser`):
/// every ClusterRoleBinding naming the user grants its ClusterRole's rules
/// everywhere; in the request's namespace, every RoleBinding naming the user
/// grants its Role's or ClusterRole's rules there. A binding names a user by
/// its name, one of its groups, or a service account (whose namespace
/// defaults to the binding's).
pub fn allowed(objects: &BTreeMap<String, Value>, user: &User, wanted: &Attributes) -> bool {
    let namespace = wanted
        .resource
        .as_ref()
        .map_or("", |resource| resource.namespace.as_str());
    let within = |prefix: String| {
        objects
            .range(prefix.clone()..)
            .take_while(move |(key, _)| key.starts_with(&prefix))
            .map(|(_, object)| object)
    };
    let rules_of = |reference: &Value, namespace: &str| -> Vec<Value> {
        let name = reference["name"].as_str().unwrap_or_default();
        let key = match reference["kind"].as_str() {
            Some("ClusterRole") => format!("{RBAC}/clusterroles/{name}"),
            Some("Role") if !namespace.is_empty() => {
                format!("{RBAC}/namespaces/{namespace}/roles/{name}")
            }
            _ => return Vec::new(),
        };
        objects
            .get(&key)
            .and_then(|role| role["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    let names_user = |binding: &Value, namespace: &str| {
        binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|subject| {
                let name = subject["name"].as_str().unwrap_or_default();
                match subject["kind"].as_str() {
                    Some("User") => user.name == name,
                    Some("Group") => user.groups.iter().any(|group| group == name),
                    Some("ServiceAccount") => {
                        let namespace = subject["namespace"].as_str().unwrap_or(namespace);
                        !namespace.is_empty()
                            && user.name == format!("system:serviceaccount:{namespace}:{name}")
                    }
                    _ => false,
                }
            })
    };
    let mut rules: Vec<Value> = within(format!("{RBAC}/clusterrolebindings/"))
        .filter(|binding| names_user(binding, ""))
        .flat_map(|binding| rules_of(&binding["roleRef"], ""))
        .collect();
    if !namespace.is_empty() {
        rules.extend(
            within(format!("{RBAC}/namespaces/{namespace}/rolebindings/"))
                .filter(|binding| names_user(binding, namespace))
                .flat_map(|binding| rules_of(&binding["roleRef"], namespace)),
        );
    }
    rules.iter().any(|rule| rule_allows(rule, wanted))
}

/// One rule against a request (plugin/pkg/auth/authorizer/rbac/rbac.go,
/// `RuleAllows`, and pkg/apis/rbac/v1/evaluation_helpers.go): verb and API
/// group match exactly or by `*`; the resource matches `*`, the request's
/// `resource/subresource` exactly, or `*/subresource`; a rule with
/// `resourceNames` matches only requests naming one of them (never a list or
/// a create); a non-resource path matches exactly or a prefix ending in `*`.
fn rule_allows(rule: &Value, wanted: &Attributes) -> bool {
    let list = |field: &str| -> Vec<&str> {
        rule[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    };
    let matches = |field: &str, value: &str| {
        list(field)
            .iter()
            .any(|item| *item == "*" || *item == value)
    };
    if !matches("verbs", &wanted.verb) {
        return false;
    }
    let Some(resource) = &wanted.resource else {
        return list("nonResourceURLs").iter().any(|url| {
            *url == "*"
                || *url == wanted.path
                || url
                    .strip_suffix('*')
                    .is_some_and(|prefix| wanted.path.starts_with(prefix))
        });
    };
    let combined = if resource.subresource.is_empty() {
        resource.resource.clone()
    } else {
        format!("{}/{}", resource.resource, resource.subresource)
    };
    let names = list("resourceNames");
    matches("apiGroups", &resource.group)
        && list("resources").iter().any(|item| {
            *item == "*"
                || *item == combined
                || (!resource.subresource.is_empty()
                    && item.strip_prefix("*/") == Some(resource.subresource.as_str()))
        })
        && (names.is_empty() || names.contains(&resource.name.as_str()))
}

/// What every cluster grants every authenticated user from its bootstrap
/// policy (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go,
/// `ClusterRoles` and `ClusterRoleBindings`): `system:discovery` reads the
/// discovery paths (the CLI lists `/apis`), `system:basic-user` asks access
/// reviews about itself (what `check` does).
pub fn bootstrap_policy() -> Vec<Value> {
    let role = |name: &str, rule: Value| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": name, "labels": { "kubernetes.io/bootstrapping": "rbac-defaults" } },
            "rules": [rule],
        })
    };
    let binding = |name: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": { "name": name, "labels": { "kubernetes.io/bootstrapping": "rbac-defaults" } },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": AUTHENTICATED }],
        })
    };
    vec![
        role(
            "system:discovery",
            json!({
                "verbs": ["get"],
                "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"],
            }),
        ),
        binding("system:discovery"),
        role(
            "system:basic-user",
            json!({
                "verbs": ["create"], "apiGroups": ["authorization.k8s.io"],
                "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
            }),
        ),
        binding("system:basic-user"),
    ]
}

#[test]
fn rbac_allows_what_its_rules_and_bindings_say_and_nothing_else() {
    let object = |value: Value| {
        let kind = value["kind"].as_str().unwrap().to_lowercase();
        let name = value["metadata"]["name"].as_str().unwrap();
        let key = match value["metadata"]["namespace"].as_str() {
            Some(namespace) => format!("{RBAC}/namespaces/{namespace}/{kind}s/{name}"),
            None => format!("{RBAC}/{kind}s/{name}"),
        };
        (key, value)
    };
    let mut objects: BTreeMap<String, Value> = bootstrap_policy().into_iter().map(object).collect();
    let rules = json!([
        { "apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["create"] },
        { "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["istio"], "verbs": ["get"] },
        { "apiGroups": ["coordination.k8s.io"], "resources": ["*"], "verbs": ["*"] },
        { "apiGroups": [""], "resources": ["*/log"], "verbs": ["get"] },
    ]);
    objects.extend([
        object(json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": { "name": "r" }, "rules": rules })),
        // The ClusterRole bound in one namespace only, to alice.
        object(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "b", "namespace": "shop" },
            "roleRef": { "kind": "ClusterRole", "name": "r" },
            "subjects": [{ "kind": "User", "name": "alice" }],
        })),
        // A Role bound to a service account named without its namespace.
        object(json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": { "name": "p", "namespace": "probes" },
            "rules": [{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["list"] }] })),
        object(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "p", "namespace": "probes" },
            "roleRef": { "kind": "Role", "name": "p" },
            "subjects": [{ "kind": "ServiceAccount", "name": "probe" }],
        })),
    ]);
    let alice = User::from_token(&user_token("alice")).unwrap();
    let probe = User::from_token(&service_account_token("probes", "probe")).unwrap();
    let may = |user: &User, method: &str, path: &str| {
        allowed(&objects, user, &Attributes::of_request(method, path, false))
    };
    // Discovery and access reviews for anyone authenticated.
    assert!(may(&alice, "GET", "/apis"));
    assert!(may(
        &probe,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    ));
    assert!(!may(&alice, "GET", "/metrics"));
    // A subresource by its own name, and not the resource it belongs to;
    // the verb from the method (a WebSocket's GET is `get`, not `create`).
    assert!(may(
        &alice,
        "POST",
        "/api/v1/namespaces/shop/pods/web/portforward"
    ));
    assert!(!may(
        &alice,
        "GET",
        "/api/v1/namespaces/shop/pods/web/portforward"
    ));
    assert!(!may(&alice, "POST", "/api/v1/namespaces/shop/pods"));
    assert!(may(&alice, "GET", "/api/v1/namespaces/shop/pods/web/log"));
    // resourceNames: that object only, never the collection.
    assert!(may(
        &alice,
        "GET",
        "/api/v1/namespaces/shop/configmaps/istio"
    ));
    assert!(!may(
        &alice,
        "GET",
        "/api/v1/namespaces/shop/configmaps/other"
    ));
    assert!(!may(&alice, "GET", "/api/v1/namespaces/shop/configmaps"));
    // A RoleBinding grants in its namespace only, not across namespaces.
    assert!(may(
        &alice,
        "DELETE",
        "/apis/coordination.k8s.io/v1/namespaces/shop/leases/l"
    ));
    assert!(!may(
        &alice,
        "DELETE",
        "/apis/coordination.k8s.io/v1/namespaces/other/leases/l"
    ));
    assert!(!may(&alice, "GET", "/apis/coordination.k8s.io/v1/leases"));
    assert!(may(&probe, "GET", "/api/v1/namespaces/probes/secrets"));
    // A watch is a verb of its own.
    assert!(!allowed(
        &objects,
        &probe,
        &Attributes::of_request("GET", "/api/v1/namespaces/probes/secrets", true)
    ));
    assert!(!may(&alice, "GET", "/api/v1/namespaces/probes/secrets"));

    let denied =
        Attributes::of_request("GET", "/api/v1/namespaces/shop/pods/web/portforward", false);
    assert_eq!(
        denied.forbidden(&alice).1["message"],
        "pods \"web\" is forbidden: User \"alice\" cannot get resource \"pods/portforward\" in API group \"\" in the namespace \"shop\""
    );
    let listed = Attributes::of_request("GET", "/apis/coordination.k8s.io/v1/leases", false);
    assert_eq!(
        listed.forbidden(&alice).1["message"],
        "leases.coordination.k8s.io is forbidden: User \"alice\" cannot list resource \"leases\" in API group \"coordination.k8s.io\" at the cluster scope"
    );
}
