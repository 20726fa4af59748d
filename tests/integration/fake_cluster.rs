//! A stand-in cluster, so that `kubectl apitrace pod/NAME` runs whole: the
//! CLI's own binary and kube client on one side, the real probe binary, its
//! eBPF program and its kube client on the other, and between them what a
//! cluster provides:
//!
//! - an API server that keeps objects: create, get, list by label, merge
//!   patch, update guarded by `resourceVersion`, and delete with the owner
//!   cascade of Kubernetes' garbage collector; it also lists the served API
//!   groups and holds watches open; the test can replace an object as
//!   another client would (an operator, an admin);
//! - authentication by bearer token and authorisation of every request, and
//!   answers to access reviews, by the RBAC roles and bindings it holds
//!   (`fake_rbac.rs`), so that the CLI runs as a user bound only to
//!   `manifests/user-clusterrole.yaml` and the probe as its service account;
//! - a kubelet that runs the probe binary for each pod created in the probe
//!   namespace, with the pod's arguments and environment (the session token
//!   read from its Secret, the kubeconfig carrying its service account's
//!   token), marks the pod ready when the pod's own readiness
//!   probe answers, and stops the process when the pod is deleted;
//! - port-forwards over WebSocket (`v4.channel.k8s.io`, the protocol kube-rs
//!   speaks), to the pod's port on its loopback as a kubelet does, which the
//!   test can cut.
//!
//! None of it is the real thing: what each piece does is what the CLI and
//! the probe rely on, and no more.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use apitrace_netns::{run_in, topology::Pod};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::{
    fake_api::{Answer, FakeApi, Request, not_found, write_kubeconfig},
    fake_rbac::{self, Attributes, User},
    support::{binaries, http_get},
};

/// Where a request points: a collection, an object or its subresource.
struct Target {
    /// `/api/v1` or `/apis/GROUP/VERSION`.
    prefix: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (prefix, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => (format!("/api/{version}"), rest),
            ["apis", group, version, rest @ ..] => (format!("/apis/{group}/{version}"), rest),
            _ => return None,
        };
        let owned = |s: &&str| (*s).to_owned();
        let (namespace, resource, name, subresource) = match rest {
            [resource] => (None, resource, None, None),
            ["namespaces", namespace, resource, rest @ ..] if rest.len() <= 2 => {
                (Some(namespace), resource, rest.first(), rest.get(1))
            }
            [resource, name] => (None, resource, Some(name), None),
            _ => return None,
        };
        Some(Self {
            prefix,
            namespace: namespace.map(owned),
            resource: (*resource).to_owned(),
            name: name.map(owned),
            subresource: subresource.map(owned),
        })
    }

    fn key(&self, name: &str) -> String {
        match &self.namespace {
            Some(namespace) => format!(
                "{}/namespaces/{namespace}/{}/{name}",
                self.prefix, self.resource
            ),
            None => format!("{}/{}/{name}", self.prefix, self.resource),
        }
    }

    /// Whether the object stored at `key` belongs to this collection.
    fn holds(&self, key: &str) -> bool {
        let Some(object) = Self::parse(key) else {
            return false;
        };
        object.prefix == self.prefix
            && object.resource == self.resource
            && (self.namespace.is_none() || object.namespace == self.namespace)
    }
}

/// The request's query parameters, decoded.
fn query(uri: &str) -> BTreeMap<String, String> {
    let Some((_, query)) = uri.split_once('?') else {
        return BTreeMap::new();
    };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), percent_decode(value)))
        .collect()
}

pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                decoded.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                decoded.push(b' ');
                i += 1;
            }
            byte => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Whether `object`'s labels satisfy an equality-based selector
/// (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated).
fn selected(object: &Value, selector: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    selector
        .split(',')
        .filter(|term| !term.is_empty())
        .all(|term| {
            if let Some((key, value)) = term.split_once("!=") {
                labels[key].as_str() != Some(value)
            } else if let Some((key, value)) = term.split_once('=') {
                labels[key.trim_end_matches('=')].as_str() == Some(value.trim_start_matches('='))
            } else if let Some(key) = term.strip_prefix('!') {
                labels.get(key).is_none()
            } else {
                labels.get(term).is_some()
            }
        })
}

/// RFC 7386: objects merge, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn status(code: u16, reason: &str, message: &str) -> Answer {
    Answer::Json(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "code": code, "message": message,
        }),
    )
}

#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Value>,
    /// The revision of the last write, as etcd's: every create, update and
    /// delete advances it.
    version: u64,
    /// Each write's key and revision, to tell whether a collection is still
    /// as it was at a paged list's revision.
    changes: Vec<(String, u64)>,
}

impl Store {
    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    fn put(&mut self, key: String, mut object: Value) -> Value {
        object["metadata"]["resourceVersion"] = self.next_version().into();
        self.changes.push((key.clone(), self.version));
        self.objects.insert(key, object.clone());
        object
    }

    /// Removes `key` and, as the garbage collector does, every object it owns.
    fn remove(&mut self, key: &str) -> Vec<Value> {
        let Some(object) = self.objects.remove(key) else {
            return Vec::new();
        };
        self.version += 1;
        self.changes.push((key.to_owned(), self.version));
        let uid = object["metadata"]["uid"].clone();
        let owned: Vec<String> = self
            .objects
            .iter()
            .filter(|(_, dependent)| {
                dependent["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|owners| owners.iter().any(|owner| owner["uid"] == uid))
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut removed = vec![object];
        for key in owned {
            removed.extend(self.remove(&key));
        }
        removed
    }
}

/// The kubelet of the one node: runs probe pods as processes in `netns`.
struct Kubelet {
    namespace: String,
    node: Pod,
    /// The API server, for the kubeconfig a probe gets.
    server: SocketAddr,
    kubeconfig: PathBuf,
    logs: PathBuf,
    running: Mutex<BTreeMap<String, Child>>,
}

/// An answer the server gives instead of the real one, `times` times, to
/// requests of `method` whose path starts with `path`.
pub struct Fault {
    pub method: &'static str,
    pub path: &'static str,
    pub status: u16,
    pub times: usize,
}

struct State {
    faults: Mutex<Vec<Fault>>,
    store: Mutex<Store>,
    kubelet: Kubelet,
    /// Both ends (the client's, the pod's) of every live port-forward, to cut them.
    forwards: Mutex<Vec<(TcpStream, TcpStream)>>,
    /// The message of every request refused for want of a permission.
    denied: Mutex<Vec<String>>,
}

pub struct FakeCluster {
    pub api: FakeApi,
    state: Arc<State>,
}

impl FakeCluster {
    /// Serves `objects` (with the bootstrap policy every cluster has) on
    /// `listener`; probe pods created in `probe_namespace` run in `node`'s
    /// network namespace, with a kubeconfig written to `kubeconfig` for their
    /// service account and their stderr appended to `logs`. Clients are
    /// authorised by the RBAC objects among `objects`.
    pub fn start(
        listener: TcpListener,
        faults: Vec<Fault>,
        objects: Vec<Value>,
        probe_namespace: &str,
        node: &Pod,
        kubeconfig: &Path,
        logs: &Path,
    ) -> Self {
        let mut store = Store::default();
        for object in fake_rbac::bootstrap_policy().into_iter().chain(objects) {
            let key = object_key(&object);
            store.put(key, object);
        }
        let state = Arc::new(State {
            faults: Mutex::new(faults),
            store: Mutex::new(store),
            kubelet: Kubelet {
                namespace: probe_namespace.to_owned(),
                node: node.clone(),
                server: listener.local_addr().expect("a bound listener"),
                kubeconfig: kubeconfig.to_owned(),
                logs: logs.to_owned(),
                running: Mutex::new(BTreeMap::new()),
            },
            forwards: Mutex::new(Vec::new()),
            denied: Mutex::new(Vec::new()),
        });
        let routed = Arc::clone(&state);
        let api = FakeApi::serve(listener, move |request| route(&routed, request));
        Self { api, state }
    }

    /// Every object, by its path, without the fields the server sets.
    pub fn objects(&self) -> BTreeMap<String, Value> {
        let store = self.state.store.lock().unwrap();
        store
            .objects
            .iter()
            .map(|(key, object)| {
                let mut object = object.clone();
                if let Some(metadata) = object["metadata"].as_object_mut() {
                    metadata.remove("resourceVersion");
                    metadata.remove("uid");
                    metadata.remove("creationTimestamp");
                }
                (key.clone(), object)
            })
            .collect()
    }

    /// Stores `object` in place of the one at its path, as another client's
    /// update does (a new resourceVersion; no check of the one it carries):
    /// a GitOps tool putting a ConfigMap back, an admin changing a role.
    pub fn replace(&self, object: Value) {
        let mut store = self.state.store.lock().unwrap();
        let key = object_key(&object);
        assert!(store.objects.contains_key(&key), "no {key} to replace");
        store.put(key, object);
    }

    /// Breaks every port-forward open now, as a restarted API server or a
    /// dropped connection does. Returns how many there were.
    pub fn cut_port_forwards(&self) -> usize {
        let forwards = std::mem::take(&mut *self.state.forwards.lock().unwrap());
        for (client, pod) in &forwards {
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = pod.shutdown(std::net::Shutdown::Both);
        }
        forwards.len()
    }

    /// What was refused for want of a permission, as the API server said it.
    pub fn denied(&self) -> Vec<String> {
        self.state.denied.lock().unwrap().clone()
    }

    /// Whether every probe process the kubelet started has exited.
    pub fn probes_exited(&self) -> bool {
        let mut running = self.state.kubelet.running.lock().unwrap();
        running
            .values_mut()
            .all(|child| child.try_wait().ok().flatten().is_some())
    }
}

impl Drop for FakeCluster {
    /// A test that fails half-way must not leave a probe running.
    fn drop(&mut self) {
        for child in self.state.kubelet.running.lock().unwrap().values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn object_key(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let resource = format!(
        "{}s",
        object["kind"].as_str().unwrap_or_default().to_lowercase()
    );
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match object["metadata"]["namespace"].as_str() {
        Some(namespace) => format!("{prefix}/namespaces/{namespace}/{resource}/{name}"),
        None => format!("{prefix}/{resource}/{name}"),
    }
}

fn route(state: &Arc<State>, request: &Request) -> Answer {
    let path = request.uri.split('?').next().unwrap_or_default();
    if let Some(fault) = state.faults.lock().unwrap().iter_mut().find(|fault| {
        fault.times > 0 && fault.method == request.method && path.starts_with(fault.path)
    }) {
        fault.times -= 1;
        return status(
            fault.status,
            "InjectedFault",
            "the stand-in refused this one",
        );
    }
    let Some(user) = request
        .header("authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(User::from_token)
    else {
        return status(401, "Unauthorized", "Unauthorized");
    };
    let params = query(&request.uri);
    let watch = params.get("watch").is_some_and(|watch| watch == "true");
    if let Err(refused) = authorise(state, &user, &request.method, path, watch) {
        return refused;
    }
    if request.method == "GET" && path == "/apis" {
        return Answer::Json(200, api_groups());
    }
    let Some(target) = Target::parse(path) else {
        return not_found().into();
    };
    match (request.method.as_str(), &target.name, &target.subresource) {
        ("GET", Some(name), Some(sub)) if sub == "portforward" && target.resource == "pods" => {
            port_forward(state, request, name, &params)
        }
        ("GET", Some(name), None) => {
            match state.store.lock().unwrap().objects.get(&target.key(name)) {
                Some(object) => Answer::Json(200, object.clone()),
                None => not_found().into(),
            }
        }
        ("GET", None, None) if watch => Answer::Hold,
        ("GET", None, None) => list(&state.store.lock().unwrap(), &target, &params),
        ("POST", None, None) => create(
            state,
            &user,
            &target,
            request.body.clone().unwrap_or_default(),
        ),
        ("PUT", Some(name), None) => {
            let body = request.body.clone().unwrap_or_default();
            let mut store = state.store.lock().unwrap();
            let key = target.key(name);
            let Some(current) = store.objects.get(&key) else {
                return not_found().into();
            };
            let sent = &body["metadata"]["resourceVersion"];
            if !sent.is_null() && *sent != current["metadata"]["resourceVersion"] {
                return status(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            Answer::Json(200, store.put(key, body))
        }
        ("PATCH", Some(name), None) => {
            let mut store = state.store.lock().unwrap();
            let key = target.key(name);
            let Some(mut object) = store.objects.get(&key).cloned() else {
                return not_found().into();
            };
            merge_patch(&mut object, &request.body.clone().unwrap_or_default());
            Answer::Json(200, store.put(key, object))
        }
        ("DELETE", Some(name), None) => {
            let removed = state.store.lock().unwrap().remove(&target.key(name));
            if removed.is_empty() {
                return not_found().into();
            }
            for object in &removed {
                state.kubelet.stop(object);
            }
            Answer::Json(
                200,
                json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success" }),
            )
        }
        _ => status(405, "MethodNotAllowed", "not served by the stand-in"),
    }
}

/// A list, as kube-apiserver's storage serves one (`GetList` in
/// kubernetes/kubernetes `staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go`):
/// the objects in key order; with `limit`, at most that many, and while more
/// remain a `continue` token and how many are left (`remainingItemCount`,
/// given only without selectors); every page at the first one's
/// resourceVersion, continued from the key after the last one sent. etcd
/// reads a continuation at that revision until compaction removes it, then
/// the server answers 410 `Expired` and the client lists again; this
/// stand-in keeps no old revisions, so it answers so as soon as the
/// collection has changed since. A continuation may not name a
/// resourceVersion other than 0 (same file, 400 `BadRequest`), nor an
/// unreadable token. Not mimicked: the watch cache answering
/// `resourceVersion=0` whole.
fn list(store: &Store, target: &Target, params: &BTreeMap<String, String>) -> Answer {
    let limit = match params.get("limit").map(|limit| limit.parse::<usize>()) {
        None | Some(Ok(0)) => usize::MAX,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => return status(400, "BadRequest", "limit must be a number"),
    };
    let (version, after) = match params.get("continue") {
        None => (store.version, None),
        Some(_)
            if params
                .get("resourceVersion")
                .is_some_and(|version| version != "0") =>
        {
            return status(
                400,
                "BadRequest",
                "specifying resource version is not allowed when using continue",
            );
        }
        Some(token) => {
            let Some((version, after)) = token
                .split_once('|')
                .and_then(|(version, after)| Some((version.parse::<u64>().ok()?, after)))
            else {
                return status(
                    400,
                    "BadRequest",
                    &format!("invalid continue token: {token}"),
                );
            };
            let changed = store
                .changes
                .iter()
                .any(|(key, changed)| *changed > version && target.holds(key));
            if changed {
                return status(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                );
            }
            (version, Some(after.to_owned()))
        }
    };
    let labels = params.get("labelSelector").map_or("", String::as_str);
    let mut matching = store
        .objects
        .iter()
        .filter(|(key, _)| {
            after
                .as_ref()
                .is_none_or(|after| key.as_str() > after.as_str())
        })
        .filter(|(key, object)| target.holds(key) && selected(object, labels));
    let items: Vec<(&String, &Value)> = matching.by_ref().take(limit).collect();
    let remaining = matching.count();
    let mut metadata = json!({ "resourceVersion": version.to_string() });
    if let (Some((last, _)), true) = (items.last(), remaining > 0) {
        metadata["continue"] = format!("{version}|{last}").into();
        if labels.is_empty() {
            metadata["remainingItemCount"] = remaining.into();
        }
    }
    let items: Vec<&Value> = items.into_iter().map(|(_, object)| object).collect();
    Answer::Json(
        200,
        json!({ "kind": "List", "apiVersion": "v1", "metadata": metadata, "items": items }),
    )
}

/// Refuses a request RBAC does not allow `user`, as kube-apiserver's
/// authorisation filter does before any handler sees it. A port-forward is
/// authorised twice: its WebSocket handshake is a GET, so `get
/// pods/portforward`, and from Kubernetes 1.35 `PortForwardREST.Connect` also
/// requires `create` (the `AuthorizePodWebsocketUpgradeCreatePermission`
/// gate, on by default: pkg/registry/core/pod/rest/subresources.go and
/// authorize.go).
fn authorise(
    state: &State,
    user: &User,
    method: &str,
    path: &str,
    watch: bool,
) -> Result<(), Answer> {
    let wanted = Attributes::of_request(method, path, watch);
    let mut asked = vec![wanted.clone()];
    if wanted.resource.as_ref().is_some_and(|resource| {
        resource.resource == "pods" && resource.subresource == "portforward"
    }) {
        asked.push(wanted.as_verb("create"));
    }
    let store = state.store.lock().unwrap();
    match asked
        .iter()
        .find(|wanted| !fake_rbac::allowed(&store.objects, user, wanted))
    {
        Some(refused) => {
            let (code, body) = refused.forbidden(user);
            state
                .denied
                .lock()
                .unwrap()
                .push(body["message"].as_str().unwrap_or_default().to_owned());
            Err(Answer::Json(code, body))
        }
        None => Ok(()),
    }
}

/// The API groups the session looks for, at the versions Istio 1.22+ serves.
fn api_groups() -> Value {
    let group = |name: &str, version: &str| {
        let version = json!({ "groupVersion": format!("{name}/{version}"), "version": version });
        json!({ "name": name, "versions": [version], "preferredVersion": version })
    };
    json!({
        "kind": "APIGroupList", "apiVersion": "v1",
        "groups": [
            group("apps", "v1"),
            group("coordination.k8s.io", "v1"),
            group("authorization.k8s.io", "v1"),
            group("telemetry.istio.io", "v1"),
            group("extensions.istio.io", "v1alpha1"),
        ],
    })
}

fn create(state: &Arc<State>, user: &User, target: &Target, mut object: Value) -> Answer {
    let mut store = state.store.lock().unwrap();
    // A review is answered by the same authoriser, for the user who asks
    // (pkg/registry/authorization/selfsubjectaccessreview/rest.go), and not stored.
    if target.resource == "selfsubjectaccessreviews" {
        let wanted = Attributes::of_review(&object["spec"]);
        object["status"] = json!({ "allowed": fake_rbac::allowed(&store.objects, user, &wanted) });
        return Answer::Json(201, object);
    }
    let name = match object["metadata"]["name"].as_str() {
        Some(name) => name.to_owned(),
        None => {
            let prefix = object["metadata"]["generateName"].as_str().unwrap_or("x-");
            format!("{prefix}{}", store.version + 1)
        }
    };
    let key = target.key(&name);
    if store.objects.contains_key(&key) {
        return status(409, "AlreadyExists", &format!("{name} already exists"));
    }
    let metadata = &mut object["metadata"];
    metadata["name"] = name.clone().into();
    if let Some(namespace) = &target.namespace {
        metadata["namespace"] = namespace.clone().into();
    }
    metadata["uid"] = format!("uid-{}", store.version + 1).into();
    metadata["creationTimestamp"] = "2026-11-22T10:00:00Z".into();
    let created = store.put(key.clone(), object);
    drop(store);
    if target.resource == "pods" && target.namespace.as_deref() == Some(&state.kubelet.namespace) {
        state.kubelet.run(state, &key, &created);
    }
    Answer::Json(201, created)
}

impl Kubelet {
    /// Starts the pod's one container as the probe binary, and a readiness
    /// probe that marks the pod ready once it answers.
    fn run(&self, state: &Arc<State>, key: &str, pod: &Value) {
        let container = &pod["spec"]["containers"][0];
        let args: Vec<String> = container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|arg| arg.as_str().map(str::to_owned))
            .collect();
        // The pod's service account token, as the kubelet mounts it.
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let account = pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        let token = fake_rbac::service_account_token(namespace, account);
        write_kubeconfig(&self.kubeconfig, self.server, Some(&token));
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.node.netns])
            .arg(&binaries().probe)
            .args(&args)
            .env("KUBECONFIG", &self.kubeconfig);
        for variable in container["env"].as_array().into_iter().flatten() {
            let name = variable["name"].as_str().unwrap_or_default();
            let value = match &variable["valueFrom"] {
                Value::Null => variable["value"].as_str().unwrap_or_default().to_owned(),
                from if from["secretKeyRef"].is_object() => {
                    self.secret_value(state, pod, &from["secretKeyRef"])
                }
                from => {
                    let path = from["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
                    path.split('.')
                        .fold(pod, |value, field| &value[field])
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                }
            };
            command.env(name, value);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.logs)
            .expect("the probe's log");
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the probe starts");
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        self.running.lock().unwrap().insert(name.to_owned(), child);

        let readiness = &container["readinessProbe"]["httpGet"];
        let port = readiness["port"].as_u64().unwrap_or_default() as u16;
        let path = readiness["path"].as_str().unwrap_or("/").to_owned();
        let (state, key, netns) = (Arc::clone(state), key.to_owned(), self.node.netns_path());
        std::thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                if http_get(&netns, SocketAddr::from(([127, 0, 0, 1], port)), &path).is_some() {
                    let mut store = state.store.lock().unwrap();
                    if let Some(mut pod) = store.objects.get(&key).cloned() {
                        pod["status"] = json!({
                            "phase": "Running", "podIP": "127.0.0.1",
                            "conditions": [{ "type": "Ready", "status": "True" }],
                        });
                        store.put(key, pod);
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }

    fn secret_value(&self, state: &State, pod: &Value, reference: &Value) -> String {
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = reference["name"].as_str().unwrap_or_default();
        let store = state.store.lock().unwrap();
        let secret = &store.objects[&format!("/api/v1/namespaces/{namespace}/secrets/{name}")];
        let key = reference["key"].as_str().unwrap_or_default();
        let encoded = secret["data"][key].as_str().unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("the Secret holds base64");
        String::from_utf8(decoded).expect("the token is text")
    }

    /// A deleted pod's process gets SIGTERM, as from a kubelet.
    fn stop(&self, object: &Value) {
        if object["kind"] != "Pod" {
            return;
        }
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        if let Some(child) = self.running.lock().unwrap().get(name) {
            // SAFETY: signalling our own child (`ip netns exec` execs the probe).
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
    }
}

/// The WebSocket handshake's answer, then the pod's port spliced into
/// channel 0 of `v4.channel.k8s.io`.
fn port_forward(
    state: &Arc<State>,
    request: &Request,
    pod: &str,
    params: &BTreeMap<String, String>,
) -> Answer {
    let Some(port) = params
        .get("ports")
        .and_then(|ports| ports.parse::<u16>().ok())
    else {
        return status(400, "BadRequest", "one port, please");
    };
    let key = request.header("sec-websocket-key").unwrap_or_default();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let running = state.kubelet.running.lock().unwrap().contains_key(pod);
    if !running {
        return not_found().into();
    }
    let (state, netns) = (Arc::clone(state), state.kubelet.node.netns_path());
    Answer::Upgrade(Box::new(move |mut client: TcpStream| {
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-accept: {accept}\r\nsec-websocket-protocol: v4.channel.k8s.io\r\n\r\n"
        );
        let Ok(Ok(mut probe)) = run_in(&netns, || {
            TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
        }) else {
            return;
        };
        let [low, high] = port.to_le_bytes();
        if client.write_all(head.as_bytes()).is_err()
            || write_frame(&mut client, &[0, low, high]).is_err()
            || write_frame(&mut client, &[1, low, high]).is_err()
        {
            return;
        }
        let (Ok(client_copy), Ok(probe_copy)) = (client.try_clone(), probe.try_clone()) else {
            return;
        };
        state
            .forwards
            .lock()
            .unwrap()
            .push((client_copy, probe_copy));
        let (Ok(mut to_client), Ok(mut from_probe)) = (client.try_clone(), probe.try_clone())
        else {
            return;
        };
        std::thread::spawn(move || {
            let mut buffer = vec![0; 64 * 1024];
            while let Ok(read @ 1..) = from_probe.read(&mut buffer) {
                let mut frame = Vec::with_capacity(read + 1);
                frame.push(0);
                frame.extend_from_slice(&buffer[..read]);
                if write_frame(&mut to_client, &frame).is_err() {
                    break;
                }
            }
            let _ = to_client.shutdown(std::net::Shutdown::Both);
        });
        while let Ok((opcode, payload)) = read_frame(&mut client) {
            match (opcode, payload.split_first()) {
                (OPCODE_CLOSE, _) => break,
                (OPCODE_BINARY, Some((0, data))) if probe.write_all(data).is_err() => break,
                _ => {}
            }
        }
        let _ = probe.shutdown(std::net::Shutdown::Both);
    }))
}

const OPCODE_BINARY: u8 = 2;
const OPCODE_CLOSE: u8 = 8;

/// One frame from the client, unmasked (RFC 6455 section 5.2).
fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0; 2];
    stream.read_exact(&mut head)?;
    let length = match head[1] & 0x7f {
        126 => {
            let mut length = [0; 2];
            stream.read_exact(&mut length)?;
            u64::from(u16::from_be_bytes(length))
        }
        127 => {
            let mut length = [0; 8];
            stream.read_exact(&mut length)?;
            u64::from_be_bytes(length)
        }
        length => u64::from(length),
    };
    let mut mask = [0; 4];
    if head[1] & 0x80 != 0 {
        stream.read_exact(&mut mask)?;
    }
    let mut payload = vec![0; length as usize];
    stream.read_exact(&mut payload)?;
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    Ok((head[0] & 0x0f, payload))
}

/// One binary frame to the client, unmasked as a server's are.
fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = vec![0x80 | OPCODE_BINARY];
    match payload.len() {
        length @ 0..=125 => frame.push(length as u8),
        length @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            frame.push(127);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

#[test]
fn selectors_paths_and_patches_behave_as_the_api_servers_do() {
    let pod = json!({ "metadata": { "labels": { "app": "web", "tier": "front" } } });
    assert!(selected(&pod, "app=web,tier"));
    assert!(selected(&pod, "app==web,!canary"));
    assert!(!selected(&pod, "app!=web"));
    assert!(!selected(&pod, "app=api"));
    assert_eq!(
        percent_decode("app%3Dweb%2Capitrace.io%2Fsession"),
        "app=web,apitrace.io/session"
    );

    let pods = Target::parse("/api/v1/namespaces/shop/pods").unwrap();
    assert!(pods.holds("/api/v1/namespaces/shop/pods/web"));
    assert!(!pods.holds("/api/v1/namespaces/other/pods/web"));
    assert!(!pods.holds("/api/v1/namespaces/shop/services/web"));
    let everywhere = Target::parse("/api/v1/pods").unwrap();
    assert!(everywhere.holds("/api/v1/namespaces/other/pods/web"));
    let namespace = Target::parse("/api/v1/namespaces/shop").unwrap();
    assert_eq!(namespace.key("shop"), "/api/v1/namespaces/shop");
    let forward = Target::parse("/api/v1/namespaces/s/pods/p/portforward").unwrap();
    assert_eq!(forward.subresource.as_deref(), Some("portforward"));

    let mut object = json!({ "metadata": { "labels": { "a": "1", "b": "2" } } });
    merge_patch(
        &mut object,
        &json!({ "metadata": { "labels": { "a": null, "c": "3" } } }),
    );
    assert_eq!(object["metadata"]["labels"], json!({ "b": "2", "c": "3" }));

    let mut store = Store::default();
    let owner = json!({ "metadata": { "uid": "u1" } });
    let owned = json!({ "metadata": { "ownerReferences": [{ "uid": "u1" }] } });
    store.put("lease".into(), owner);
    store.put("pod".into(), owned);
    store.put("other".into(), json!({ "metadata": {} }));
    assert_eq!(store.remove("lease").len(), 2);
    assert_eq!(store.objects.keys().collect::<Vec<_>>(), ["other"]);
}

#[test]
fn lists_come_in_pages_as_the_api_servers_do() {
    let mut store = Store::default();
    for name in ["a", "b", "c"] {
        let key = format!("/api/v1/namespaces/shop/pods/{name}");
        store.put(key, json!({ "metadata": { "name": name } }));
    }
    let pods = Target::parse("/api/v1/pods").unwrap();
    let page = |store: &Store, query: &str| match list(store, &pods, &self::query(query)) {
        Answer::Json(code, body) => (code, body),
        _ => panic!("not JSON"),
    };
    let names = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (code, first) = page(&store, "?limit=2");
    assert_eq!((code, names(&first)), (200, vec!["a".into(), "b".into()]));
    assert_eq!(first["metadata"]["remainingItemCount"], 1);
    let token = first["metadata"]["continue"].as_str().unwrap().to_owned();
    let next = format!("?limit=2&continue={token}");
    // Another collection's write leaves the pods' revision readable.
    store.put("/api/v1/namespaces/shop/configmaps/x".into(), json!({}));
    let (code, second) = page(&store, &next);
    assert_eq!((code, names(&second)), (200, vec!["c".into()]));
    assert_eq!(
        second["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
    assert!(second["metadata"].get("continue").is_none());
    // Unpaged, everything at once.
    assert_eq!(names(&page(&store, "").1).len(), 3);
    assert_eq!(page(&store, &format!("{next}&resourceVersion=5")).0, 400);
    assert_eq!(page(&store, "?limit=2&continue=nonsense").0, 400);
    // A pod changed since: that revision is gone, the client lists again.
    store.remove("/api/v1/namespaces/shop/pods/a");
    assert_eq!(page(&store, &next).0, 410);
}
