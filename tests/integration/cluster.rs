//! `kubectl apitrace pod/web` run whole against the stand-in cluster of
//! `fake_cluster.rs`: the CLI's binary resolves the pod, checks the cluster,
//! creates the session, and streams from the real probe (started from the pod
//! spec the CLI sent) through a WebSocket port-forward; the probe traces the
//! pod's real interface. What it cannot show: Istio acting on the Telemetry and
//! WasmPlugin (no istiod, no sidecar here), so the calls carry the wire layer
//! only.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use apitrace_netns::{
    cgroup::ContainerCgroup,
    run_in,
    topology::{Pod, Topology},
};
use serde_json::{Value, json};

use crate::{
    fake_cluster::{FakeCluster, Fault},
    fake_rbac::user_token,
    support::{App, binaries, call, call_from_port, pods, root, stderr, wait_for_no_orphans},
};

const APP_PORT: u16 = 8080;
const WASM_PLUGINS: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins/";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/apitrace-system/leases/";
const MESH_MAP: &str = "/api/v1/namespaces/istio-system/configmaps/istio";
/// The user the CLI runs as.
pub(crate) const USER: &str = "alice";

/// The documents of a file in `manifests/`.
fn manifest(file: &str) -> Vec<Value> {
    let path = format!("{}/../manifests/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split("\n---\n")
        .map(|document| serde_saphyr::from_str(document).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

/// `manifests/user-clusterrole.yaml`'s ClusterRole, `apitrace-user`.
pub(crate) fn user_role() -> Value {
    manifest("user-clusterrole.yaml").remove(0)
}

/// The cluster's RBAC: the probe's roles and bindings from
/// `manifests/probe.yaml`, the user ClusterRole `role`, and its binding to
/// [`USER`] as that manifest's comment says to make it.
pub(crate) fn rbac_objects(role: Value) -> Vec<Value> {
    let mut objects: Vec<Value> = manifest("probe.yaml")
        .into_iter()
        .filter(|document| {
            ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]
                .iter()
                .any(|kind| document["kind"] == *kind)
        })
        .collect();
    objects.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": { "name": format!("apitrace-{USER}") },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"] },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER }],
    }));
    objects.push(role);
    objects
}

/// The cluster before the session: Istio's mesh config with a provider of
/// someone else's, the traced pod `shop/web` with its sidecar's container,
/// its caller `shop/sleep`, and the node with this machine's kernel.
fn cluster_objects(web: &str, sleep: &str, container_id: &str) -> Vec<Value> {
    let namespace = |name: &str, labels: Value| json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name, "labels": labels } });
    let pod = |name: &str, ip: &str, sidecar: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            // What Istio's injector writes: the revision in the status
            // annotation, no `istio.io/rev` label.
            "metadata": {
                "namespace": "shop", "name": name, "labels": { "app": name },
                "annotations": { "sidecar.istio.io/status": r#"{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}"# },
            },
            "spec": { "nodeName": "node-a", "containers": [{ "name": name }, { "name": "istio-proxy" }] },
            "status": {
                "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }],
                "containerStatuses": [
                    { "name": name, "image": "", "imageID": "", "ready": true, "restartCount": 0, "containerID": "containerd://0000000000000000" },
                    { "name": "istio-proxy", "image": "", "imageID": "", "ready": true, "restartCount": 0, "containerID": format!("containerd://{sidecar}") },
                ],
            },
        })
    };
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("the kernel's release");
    vec![
        namespace(
            "apitrace-system",
            json!({ "pod-security.kubernetes.io/enforce": "privileged" }),
        ),
        namespace("shop", json!({})),
        namespace("istio-system", json!({})),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "namespace": "istio-system", "name": "istio" },
            // As Istio's chart writes it (`mesh: |-`): a comment, its own key
            // order, no final newline; the session must leave it so.
            "data": { "mesh": "# managed by the istiod chart\nrootNamespace: istio-system\nextensionProviders:\n  - name: otel\n    envoyOtelAls:\n      service: otel.observability.svc.cluster.local\n      port: 4317\ndefaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012" },
        }),
        pod("web", web, container_id),
        pod("sleep", sleep, "1111111111111111"),
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": "node-a", "labels": { "kubernetes.io/os": "linux" } },
            "spec": {},
            "status": { "nodeInfo": {
                "kernelVersion": kernel.trim(), "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "operatingSystem": "linux", "osImage": "", "systemUUID": "",
            } },
        }),
    ]
}

/// The pods, the traced pod's sidecar container (a process in its network
/// namespace and in a cgroup named by the container's ID), the stand-in
/// cluster in the `node` pod, and the CLI running there with its stderr read
/// as it comes.
struct Stage {
    pods: Topology,
    cluster: FakeCluster,
    _app: App,
    sidecar: Child,
    _sidecar_cgroup: ContainerCgroup,
    cli: Child,
    cli_stderr: Arc<Mutex<String>>,
    /// The user's; the probe's is `probe_kubeconfig`.
    kubeconfig: PathBuf,
    probe_kubeconfig: PathBuf,
    probe_log: PathBuf,
    /// The session's events, kept with `--save`.
    saved: PathBuf,
    before: BTreeMap<String, Value>,
}

/// Where the CLI's output goes.
enum Output {
    /// Stdout and stderr piped to the test, as a script would run it.
    Piped,
    /// A terminal (a pty, through `script`) with `--follow`, the calls going
    /// to this file, as a person watching would run it.
    Terminal { calls: PathBuf },
}

impl Stage {
    fn start(duration: &str, faults: Vec<Fault>) -> Self {
        Self::start_with(duration, faults, Output::Piped, user_role())
    }

    /// The CLI runs as [`USER`], bound to the ClusterRole `role`.
    fn start_with(duration: &str, faults: Vec<Fault>, output: Output, role: Value) -> Self {
        Self::launch(duration, faults, output, role, &[])
    }

    /// [`Self::start`], the CLI given the session's flags `extra` too.
    fn start_flags(duration: &str, extra: &[&str]) -> Self {
        Self::launch(duration, Vec::new(), Output::Piped, user_role(), extra)
    }

    fn launch(
        duration: &str,
        faults: Vec<Fault>,
        output: Output,
        role: Value,
        extra: &[&str],
    ) -> Self {
        let pods = pods(&["kube", "web", "sleep"]);
        let (node, web, sleep) = (pods.pod("kube"), pods.pod("web"), pods.pod("sleep"));
        let app = App::serve(web, APP_PORT);
        let container_id = format!("{:016x}{:048x}", std::process::id(), rand_tail());
        let cgroup = ContainerCgroup::create("apitrace-test-", std::process::id(), &container_id)
            .expect("a cgroup for the sidecar");
        let sidecar = Command::new("ip")
            .args(["netns", "exec", &web.netns, "sleep", "300"])
            .spawn()
            .expect("the sidecar stand-in starts");
        std::fs::write(&cgroup.procs, sidecar.id().to_string()).expect("into its cgroup");

        let tag = format!("{}-{}", std::process::id(), rand_tail());
        let kubeconfig = std::env::temp_dir().join(format!("apitrace-kubeconfig-{tag}"));
        let probe_kubeconfig =
            std::env::temp_dir().join(format!("apitrace-probe-kubeconfig-{tag}"));
        let probe_log = std::env::temp_dir().join(format!("apitrace-probe-log-{tag}"));
        let saved = std::env::temp_dir().join(format!("apitrace-saved-{tag}"));
        let listener = run_in(&node.netns_path(), || {
            std::net::TcpListener::bind("127.0.0.1:0")
        })
        .expect("inside the node")
        .expect("a loopback port");
        let mut objects = cluster_objects(
            &web.ipv4.to_string(),
            &sleep.ipv4.to_string(),
            &container_id,
        );
        objects.extend(rbac_objects(role));
        let cluster = FakeCluster::start(
            listener,
            faults,
            objects,
            "apitrace-system",
            node,
            &probe_kubeconfig,
            &probe_log,
        );
        cluster
            .api
            .write_kubeconfig(&kubeconfig, Some(&user_token(USER)));
        let before = cluster.objects();

        let saved_arg = saved.to_string_lossy();
        let mut args = vec![
            "pod/web",
            "-n",
            "shop",
            "-o",
            "ndjson",
            "--duration",
            duration,
            "--save",
            &saved_arg,
        ];
        args.extend(extra);
        let mut cli = match &output {
            Output::Piped => cli_in(node, &kubeconfig, &args),
            Output::Terminal { calls } => {
                args.push("--follow");
                let inner = cli_in(node, &kubeconfig, &args);
                let words: Vec<String> = std::iter::once(inner.get_program())
                    .chain(inner.get_args())
                    .map(|word| word.to_string_lossy().into_owned())
                    .collect();
                let mut script = Command::new("script");
                script
                    .args(["-qefc"])
                    .arg(format!("{} > {}", words.join(" "), calls.display()));
                script.arg("/dev/null");
                script
            }
        }
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CLI starts");
        // What a person sees: stderr, or the terminal's whole transcript.
        let cli_stderr = Arc::new(Mutex::new(String::new()));
        let seen = match output {
            Output::Piped => cli
                .stderr
                .take()
                .map(|pipe| Box::new(pipe) as Box<dyn std::io::Read + Send>),
            Output::Terminal { .. } => cli
                .stdout
                .take()
                .map(|pipe| Box::new(pipe) as Box<dyn std::io::Read + Send>),
        };
        let lines = BufReader::new(seen.expect("piped"));
        let collected = Arc::clone(&cli_stderr);
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                let mut text = collected.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Self {
            pods,
            cluster,
            _app: app,
            sidecar,
            _sidecar_cgroup: cgroup,
            cli,
            cli_stderr,
            kubeconfig,
            probe_kubeconfig,
            probe_log,
            saved,
            before,
        }
    }

    fn stderr(&self) -> String {
        self.cli_stderr.lock().unwrap().clone()
    }

    /// What went wrong, for a failed assertion: the CLI's and the probe's words.
    fn story(&self) -> String {
        let probe = std::fs::read_to_string(&self.probe_log).unwrap_or_default();
        format!("CLI:\n{}\nprobe:\n{probe}", self.stderr())
    }

    fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < limit,
                "{what} did not happen within {limit:?}\n{}",
                self.story()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn port_forwards(&self) -> usize {
        self.cluster
            .api
            .received()
            .iter()
            .filter(|request| request.uri.contains("/portforward"))
            .count()
    }

    /// Until the session streams: the probe port-forwarded to and the mesh
    /// patched (the WasmPlugin is the last object setup creates).
    fn wait_streaming(&self) {
        self.wait_for("the session's setup", Duration::from_secs(60), |stage| {
            stage.port_forwards() > 0
                && stage
                    .cluster
                    .objects()
                    .keys()
                    .any(|key| key.starts_with(WASM_PLUGINS))
        });
    }

    fn call_web(&self) {
        let address = SocketAddr::new(IpAddr::V4(self.pods.pod("web").ipv4), APP_PORT);
        let answer = call(self.pods.pod("sleep"), address, "test-1");
        assert!(answer.contains("200 OK"), "{answer}");
    }

    /// The cluster as it was before the session, nothing of the session's
    /// left on the host, and no request of the CLI's or the probe's refused:
    /// the manifests' roles granted all they did.
    fn assert_left_as_it_was(&self) {
        self.assert_left_as_it_was_but_refused(&[]);
    }

    /// [`Self::assert_left_as_it_was`], the API server having refused
    /// exactly `refused` (its messages).
    fn assert_left_as_it_was_but_refused(&self, refused: &[String]) {
        assert_eq!(self.cluster.denied(), refused, "{}", self.story());
        self.wait_for("the probes' exit", Duration::from_secs(20), |stage| {
            stage.cluster.probes_exited()
        });
        let after = self.cluster.objects();
        let keys = |objects: &BTreeMap<String, Value>| objects.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&after), keys(&self.before), "{}", self.story());
        // Every object as it was, the mesh config's text byte for byte.
        for (key, expected) in &self.before {
            assert_eq!(&after[key], expected, "{key} changed\n{}", self.story());
        }
        let orphans = wait_for_no_orphans();
        assert!(orphans.is_empty(), "programs left attached: {orphans:#?}");
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = self.cli.kill();
        let _ = self.cli.wait();
        let _ = self.sidecar.kill();
        let _ = self.sidecar.wait();
        let _ = std::fs::remove_file(&self.kubeconfig);
        let _ = std::fs::remove_file(&self.probe_kubeconfig);
        let _ = std::fs::remove_file(&self.probe_log);
        let _ = std::fs::remove_file(&self.saved);
    }
}

/// The CLI's binary with `args`, run inside `pod` (where the stand-in API
/// server is on loopback) with `kubeconfig`.
fn cli_in(pod: &Pod, kubeconfig: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &pod.netns])
        .arg(&binaries().cli)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig);
    command
}

/// Distinct per call within one process.
fn rand_tail() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

/// The whole session: setup, a port-forward cut and restored, a call traced
/// on the pod's interface, teardown at the end of `--duration`, and the
/// cluster and host left as they were.
#[test]
fn a_session_on_a_stand_in_cluster_traces_calls_through_a_cut_port_forward_and_leaves_nothing() {
    if !root("the stand-in cluster session") {
        return;
    }
    let mut stage = Stage::start("12s", Vec::new());
    stage.wait_streaming();
    // What the CLI created, as the API server stored it.
    let objects = stage.cluster.objects();
    let created: Vec<&str> = objects
        .keys()
        .filter(|key| !stage.before.contains_key(*key))
        .map(|key| key.rsplit_once('/').map_or("", |(kind, _)| kind))
        .collect();
    assert_eq!(
        created,
        [
            "/api/v1/namespaces/apitrace-system/pods",
            "/api/v1/namespaces/apitrace-system/secrets",
            "/api/v1/namespaces/apitrace-system/services",
            "/apis/coordination.k8s.io/v1/namespaces/apitrace-system/leases",
            "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins",
            "/apis/telemetry.istio.io/v1/namespaces/shop/telemetries",
        ],
        "{}",
        stage.story()
    );
    let web = &objects["/api/v1/namespaces/shop/pods/web"];
    assert!(
        web["metadata"]["labels"]["apitrace.io/session"].is_string(),
        "{web}"
    );

    assert_eq!(stage.cluster.cut_port_forwards(), 1);
    stage.wait_for("the reconnection", Duration::from_secs(20), |stage| {
        stage.stderr().contains("reconnected to probe")
    });
    assert_eq!(stage.port_forwards(), 2);
    stage.call_web();

    let status = stage.cli.wait().expect("the CLI ends");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut stage.cli.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{status}\n{}", stage.story());
    let records: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("ndjson"))
        .collect();
    let traced = records
        .iter()
        .find(|record| record["request_id"] == "test-1")
        .unwrap_or_else(|| panic!("no record of the call in {stdout}\n{}", stage.story()));
    assert_eq!(traced["layers"], json!(["tc"]), "{traced}");
    assert_eq!(
        (&traced["method"], &traced["path"], &traced["status"]),
        (&json!("GET"), &json!("/status"), &json!(200)),
        "{traced}"
    );
    // Named from the pod list the CLI watches, and from the session's own targets.
    let peer = |end: &str| format!("{}/{}", traced[end]["namespace"], traced[end]["name"]);
    assert_eq!(
        (peer("src"), peer("dst")),
        ("\"shop\"/\"sleep\"".into(), "\"shop\"/\"web\"".into()),
        "{traced}"
    );
    // The saved session replays offline to the same records.
    let replay = Command::new(&binaries().cli)
        .arg("join")
        .arg(&stage.saved)
        .args(["-o", "ndjson"])
        .output()
        .expect("the CLI runs");
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert_eq!(String::from_utf8_lossy(&replay.stdout), stdout);
    stage.assert_left_as_it_was();
}

/// What the traced pod's sidecar logs of a call, sent as Envoy's access-log
/// service sends its buffer: one stream from the pod's own address, naming
/// its node first (`api/envoy/service/accesslog/v3/als.proto`, envoy
/// v1.36.2). The entry is an inbound hop as Istio's sidecar logs it: the
/// caller's connection to the pod, the app reached from 127.0.0.6.
fn log_as_the_sidecar(web: &Pod, probe: SocketAddr, caller: SocketAddr, request_id: &str) {
    use envoy_types::pb::{
        envoy::{
            config::core::v3::{Node, SocketAddress, address, socket_address::PortSpecifier},
            data::accesslog::v3::{
                AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties,
                http_access_log_entry::HttpVersion,
            },
            service::accesslog::v3::{
                StreamAccessLogsMessage,
                access_log_service_client::AccessLogServiceClient,
                stream_access_logs_message::{HttpAccessLogEntries, Identifier, LogEntries},
            },
        },
        google::protobuf::{Timestamp, UInt32Value},
    };
    let socket = |address: SocketAddr| envoy_types::pb::envoy::config::core::v3::Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(address.port().into())),
            ..SocketAddress::default()
        })),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    let local = SocketAddr::new(IpAddr::V4(web.ipv4), APP_PORT);
    let entry = HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            start_time: Some(Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
            }),
            downstream_remote_address: Some(socket(caller)),
            downstream_direct_remote_address: Some(socket(caller)),
            downstream_local_address: Some(socket(local)),
            upstream_local_address: Some(socket(SocketAddr::from(([127, 0, 0, 6], 40000)))),
            upstream_remote_address: Some(socket(local)),
            upstream_cluster: format!("inbound|{APP_PORT}||"),
            ..AccessLogCommon::default()
        }),
        protocol_version: HttpVersion::Http11 as i32,
        request: Some(HttpRequestProperties {
            request_method: 1,
            path: "/status".into(),
            request_id: request_id.into(),
            ..HttpRequestProperties::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value { value: 200 }),
            ..HttpResponseProperties::default()
        }),
    };
    let message = StreamAccessLogsMessage {
        identifier: Some(Identifier {
            node: Some(Node {
                id: format!("sidecar~{}~web.shop~shop.svc.cluster.local", web.ipv4),
                ..Node::default()
            }),
            log_name: "apitrace".into(),
        }),
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: vec![entry],
        })),
    };
    run_in(&web.netns_path(), || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let mut client = AccessLogServiceClient::connect(format!("http://{probe}"))
                .await
                .expect("the probe's access-log service answers");
            client
                .stream_access_logs(tokio_stream::iter([message]))
                .await
                .expect("the probe takes the stream");
        });
    })
    .expect("inside the traced pod");
}

/// `--until 1` on a five-minute session: the first call ends it as its time
/// would have, with teardown, and exactly that call is printed.
#[test]
fn until_ends_a_cluster_session_after_its_first_call_and_leaves_nothing() {
    if !root("the stand-in cluster session") {
        return;
    }
    let mut stage = Stage::start_flags("5m", &["--until", "1"]);
    stage.wait_streaming();
    let started = Instant::now();
    stage.call_web();
    let status = stage.cli.wait().expect("the CLI ends");
    assert!(status.success(), "{status}\n{}", stage.story());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the session ran on for {:?}\n{}",
        started.elapsed(),
        stage.story()
    );
    let said = stage.stderr();
    assert!(
        said.contains("1 call joined (--until 1); waiting up to"),
        "{}",
        stage.story()
    );
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut stage.cli.stdout.take().unwrap(), &mut stdout).unwrap();
    let records: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("ndjson"))
        .collect();
    assert_eq!(records.len(), 1, "{stdout}\n{}", stage.story());
    assert_eq!(records[0]["request_id"], "test-1", "{stdout}");
    stage.assert_left_as_it_was();
}

/// The end of a session waits for what the sidecars flush after it: Envoy
/// sends its access-log buffer once a second, so the log of a call made just
/// before Ctrl-C arrives after it, and the call's record must have it.
#[test]
fn an_interrupted_session_waits_for_the_sidecars_last_access_logs() {
    if !root("the stand-in cluster session") {
        return;
    }
    let mut stage = Stage::start("5m", Vec::new());
    stage.wait_streaming();
    let address = SocketAddr::new(IpAddr::V4(stage.pods.pod("web").ipv4), APP_PORT);
    let (answer, caller) = call_from_port(stage.pods.pod("sleep"), address, "test-late");
    assert!(answer.contains("200 OK"), "{answer}");
    // SAFETY: kill(2) on the CLI's own pid, which this test started and has
    // not reaped.
    let sent = unsafe { libc::kill(stage.cli.id() as i32, libc::SIGINT) };
    assert_eq!(sent, 0);
    stage.wait_for("the session's end", Duration::from_secs(5), |stage| {
        stage.stderr().contains("interrupted; waiting up to")
    });
    let probe = SocketAddr::new(
        IpAddr::V4(stage.pods.pod("kube").ipv4),
        apitrace_proto::ports::ACCESS_LOG,
    );
    log_as_the_sidecar(stage.pods.pod("web"), probe, caller, "test-late");
    let status = stage.cli.wait().expect("the CLI ends");
    assert_eq!(status.code(), Some(130), "{}", stage.story());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut stage.cli.stdout.take().unwrap(), &mut stdout).unwrap();
    let record: Value = stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("ndjson"))
        .find(|record| record["request_id"] == "test-late")
        .unwrap_or_else(|| panic!("no record of the call in {stdout}\n{}", stage.story()));
    assert_eq!(record["layers"], json!(["als", "tc"]), "{record}");
    assert_eq!(record["status"], json!(200), "{record}");
    stage.assert_left_as_it_was();
}

/// A person at a terminal: setup's progress on stderr, then, with `--follow`
/// and the calls going to a file, a live count of the calls seen, rewritten
/// in place on its line.
#[test]
fn on_a_terminal_a_session_shows_its_progress_and_a_live_count_of_calls() {
    if !root("the stand-in cluster session") {
        return;
    }
    let calls = std::env::temp_dir().join(format!("apitrace-calls-{}", rand_tail()));
    let mut stage = Stage::start_with(
        "10s",
        Vec::new(),
        Output::Terminal {
            calls: calls.clone(),
        },
        user_role(),
    );
    stage.wait_streaming();
    stage.call_web();
    let status = stage.cli.wait().expect("the CLI ends");
    assert!(status.success(), "{status}\n{}", stage.story());
    // The transcript is read to its end once the terminal closes.
    stage.wait_for(
        "the terminal's last line",
        Duration::from_secs(5),
        |stage| stage.stderr().contains("dropped:"),
    );
    let transcript = stage.stderr();
    for progress in [
        "resolving the targets and checking the cluster...",
        "creating the session's anchor, token and Service...",
        "waiting for the probe on 1 node...",
        "patching the mesh (label, access-log provider, Telemetry, WasmPlugin)...",
        "streaming...",
        "removing the session...",
    ] {
        assert!(
            transcript.contains(progress),
            "no {progress:?} in:\n{transcript}"
        );
    }
    assert!(
        transcript.contains("\r\x1b[K0 calls seen") && transcript.contains("\r\x1b[K1 calls seen"),
        "no live count in:\n{transcript:?}"
    );
    let written = std::fs::read_to_string(&calls).expect("the calls file");
    let _ = std::fs::remove_file(&calls);
    let records: Vec<Value> = written
        .lines()
        .map(|line| serde_json::from_str(line).expect("ndjson"))
        .collect();
    assert!(
        records
            .iter()
            .any(|record| record["request_id"] == "test-1"),
        "{written}"
    );
    stage.assert_left_as_it_was();
}

/// The CLI killed mid-session: nobody renews the Lease, and the probe, once it
/// lapses, removes what the CLI had created, through the same API.
#[test]
fn a_cli_killed_mid_session_leaves_a_cluster_the_probe_restores() {
    if !root("the stand-in cluster session") {
        return;
    }
    let mut stage = Stage::start("5m", Vec::new());
    stage.wait_streaming();
    stage.cli.kill().expect("SIGKILL to the CLI");
    stage.cli.wait().expect("the CLI ends");
    stage.wait_for(
        "the probe's cleanup of the lapsed session",
        Duration::from_secs(75),
        |stage| {
            !stage
                .cluster
                .objects()
                .keys()
                .any(|key| key.starts_with(LEASES))
        },
    );
    stage.assert_left_as_it_was();
}

/// An API server that throttles (429), is unavailable (503) or times out
/// (504) during setup and teardown: kube's client retries with backoff, the
/// session runs, and the cluster ends as it was. A 500 on one removal is not
/// retried: the CLI says what it left and how to remove it, and `cleanup`
/// does.
#[test]
fn an_api_server_that_throttles_or_fails_during_setup_and_teardown_leaves_nothing() {
    if !root("the stand-in cluster session") {
        return;
    }
    const TELEMETRIES: &str = "/apis/telemetry.istio.io/v1/namespaces/shop/telemetries/";
    let fault = |method, path, status, times| Fault {
        method,
        path,
        status,
        times,
    };
    let mut stage = Stage::start(
        "3s",
        vec![
            fault(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/apitrace-system/leases",
                429,
                2,
            ),
            fault("POST", "/api/v1/namespaces/apitrace-system/pods", 503, 1),
            fault(
                "PUT",
                "/api/v1/namespaces/istio-system/configmaps/istio",
                504,
                1,
            ),
            fault("DELETE", WASM_PLUGINS, 429, 2),
            fault("DELETE", TELEMETRIES, 500, 1),
        ],
    );
    let status = stage.cli.wait().expect("the CLI ends");
    let story = stage.story();
    let asked = |method: &str, path: &str| {
        stage
            .cluster
            .api
            .received()
            .iter()
            .filter(|request| request.method == method && request.uri.starts_with(path))
            .count()
    };
    assert_eq!(
        (
            asked(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/apitrace-system/leases"
            ),
            asked("POST", "/api/v1/namespaces/apitrace-system/pods"),
            asked("PUT", "/api/v1/namespaces/istio-system/configmaps/istio"),
            asked("DELETE", WASM_PLUGINS),
            asked("DELETE", TELEMETRIES),
        ),
        (3, 2, 3, 3, 1),
        "{story}"
    );
    assert_eq!(status.code(), Some(1), "{story}");
    assert!(
        stage
            .stderr()
            .contains("kubectl apitrace cleanup --session"),
        "{story}"
    );
    let cleanup = cli_in(
        stage.pods.pod("kube"),
        &stage.kubeconfig,
        &["cleanup", "--all"],
    )
    .output()
    .expect("cleanup runs");
    assert!(cleanup.status.success(), "{}", stderr(&cleanup));
    stage.assert_left_as_it_was();
}

/// A user whose ClusterRole lacks `get pods/portforward`, the verb kube-rs's
/// WebSocket port-forward is authorised as: `check` names the permission, and
/// a session ends in its preflight with the same words, having created
/// nothing, instead of starting probes it could never reach.
#[test]
fn without_get_on_pods_portforward_check_names_it_and_a_session_ends_before_creating_anything() {
    if !root("the stand-in cluster session") {
        return;
    }
    let mut role = user_role();
    for rule in role["rules"].as_array_mut().expect("rules") {
        if rule["resources"] == json!(["pods/portforward"]) {
            rule["verbs"] = json!(["create"]);
        }
    }
    let mut stage = Stage::start_with("30s", Vec::new(), Output::Piped, role);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = stage.cli.try_wait().expect("the CLI's status") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the session did not end\n{}",
            stage.story()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let missing = "missing permissions: get pods/portforward in apitrace-system; ask an admin to bind you the ClusterRole in manifests/user-clusterrole.yaml";
    assert_eq!(status.code(), Some(1), "{}", stage.story());
    stage.wait_for("the CLI's error", Duration::from_secs(5), |stage| {
        stage.stderr().contains(missing)
    });
    let check = cli_in(
        stage.pods.pod("kube"),
        &stage.kubeconfig,
        &["check", "pod/web", "-n", "shop"],
    )
    .output()
    .expect("check runs");
    assert_eq!(check.status.code(), Some(1), "{}", stderr(&check));
    assert!(stderr(&check).contains(missing), "{}", stderr(&check));
    stage.assert_left_as_it_was();
}

/// The mesh config put back mid-session without the session's provider, as
/// an operator or a GitOps tool with self-heal does, then given it again,
/// then put back once more: the CLI says each change once, naming the
/// ConfigMap and whether the calls from then on have the access log, never
/// adds the provider again itself, and its teardown, finding the provider
/// gone, writes nothing back.
#[test]
fn a_mesh_config_put_back_mid_session_is_said_each_time_and_left_as_it_was_put_back() {
    if !root("the stand-in cluster session") {
        return;
    }
    let mut stage = Stage::start("45s", Vec::new());
    stage.wait_streaming();
    let patched = stage.cluster.objects()[MESH_MAP].clone();
    assert_ne!(
        patched["data"]["mesh"],
        stage.before[MESH_MAP]["data"]["mesh"]
    );
    let gone = "warning: the session's access-log provider apitrace-";
    let back = " again; the calls from now on have the access-log layer (als) again";
    for (change, said, times) in [
        (stage.before[MESH_MAP].clone(), gone, 1),
        (patched, back, 1),
        (stage.before[MESH_MAP].clone(), gone, 2),
    ] {
        stage.cluster.replace(change);
        stage.wait_for(said, Duration::from_secs(15), |stage| {
            stage.stderr().matches(said).count() == times
        });
    }
    let status = stage.cli.wait().expect("the CLI ends");
    assert!(status.success(), "{status}\n{}", stage.story());
    let said = stage.stderr();
    assert_eq!(said.matches(gone).count(), 2, "{said}");
    assert_eq!(said.matches(back).count(), 1, "{said}");
    assert!(
        said.contains(
            " is no longer in the mesh config istio-system/istio; something rewrote it; \
             the calls from now on lack the access-log layer (als)"
        ),
        "{said}"
    );
    let updates = stage
        .cluster
        .api
        .received()
        .iter()
        .filter(|request| request.method == "PUT" && request.uri.starts_with(MESH_MAP))
        .count();
    assert_eq!(updates, 1, "setup's update only\n{}", stage.story());
    stage.assert_left_as_it_was();
}

/// The user's RBAC losing the port-forward verbs after preflight allowed
/// them: when the port-forward breaks, the reconnection is refused (403),
/// and the CLI says the API server's words and ends at once, tearing the
/// session down, instead of retrying a refusal for a minute.
#[test]
fn a_port_forward_refused_after_preflight_says_why_and_ends_the_session_at_once() {
    if !root("the stand-in cluster session") {
        return;
    }
    let mut stage = Stage::start("5m", Vec::new());
    stage.wait_streaming();
    let mut role = user_role();
    role["rules"]
        .as_array_mut()
        .expect("rules")
        .retain(|rule| rule["resources"] != json!(["pods/portforward"]));
    stage.cluster.replace(role);
    assert_eq!(stage.cluster.cut_port_forwards(), 1);
    let cut = Instant::now();
    let status = loop {
        if let Some(status) = stage.cli.try_wait().expect("the CLI's status") {
            break status;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(20),
            "the session did not end\n{}",
            stage.story()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1), "{}", stage.story());
    assert_eq!(stage.port_forwards(), 2, "the refusal is not retried");
    let refused = stage.cluster.denied();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains(r#"User "alice" cannot get resource "pods/portforward""#),
        "{refused:?}"
    );
    let said = format!(
        "the API server refused the port-forward: {}: Forbidden (HTTP 403)",
        refused[0]
    );
    stage.wait_for("the CLI's error", Duration::from_secs(5), |stage| {
        stage.stderr().contains(&said)
    });
    stage.cluster.replace(user_role());
    stage.assert_left_as_it_was_but_refused(&refused);
}
