//! The probe on its own, run for real against pods made of network namespaces:
//! what it leaves when it is killed, its netlink mode, and what traffic costs
//! it nothing.

use std::{
    collections::HashMap,
    io::Read as _,
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use apitrace_netns::{run_in, topology::Pod};
use apitrace_proto::probe_args::{ProbeArgs, ProbeTarget, SESSION_TOKEN_ENV};

use serde_json::{Value, json};

use crate::{
    fake_api::{FakeApi, Request, not_found},
    support::{
        App, DELIBERATE_ORPHANS, binaries, call, http_get, orphaned_programs, pods, real, root,
        wait_for_no_orphans,
    },
};

/// The probe, running in its own pod and tracing `target`.
pub(crate) struct Probe {
    child: Child,
    pod: Pod,
}

impl Probe {
    pub(crate) fn start(probe_pod: &Pod, target: &Pod, extra: &[&str]) -> Self {
        Self::start_with_env(probe_pod, target, extra, &[])
    }

    fn start_with_env(
        probe_pod: &Pod,
        target: &Pod,
        extra: &[&str],
        env: &[(&str, &std::path::Path)],
    ) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", &probe_pod.netns])
            .arg(&binaries().probe)
            .args(
                ProbeArgs::new(
                    "test".to_owned(),
                    vec![ProbeTarget {
                        namespace: "test".to_owned(),
                        name: target.name.to_owned(),
                        netns: format!("netns:{}", target.netns_path().display()),
                    }],
                    Duration::from_secs(120),
                )
                .to_args(),
            )
            .args(extra)
            .env(SESSION_TOKEN_ENV, "test-token")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the probe starts");
        let probe = Self {
            child,
            pod: probe_pod.clone(),
        };
        let started = Instant::now();
        while probe.get("/healthz").is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the probe did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        probe
    }

    pub(crate) fn get(&self, path: &str) -> Option<String> {
        let address = SocketAddr::new(IpAddr::V4(self.pod.ipv4), 15902);
        http_get(&self.pod.netns_path(), address, path)
    }

    /// The probe's counters, by metric and labels, read from `/metrics` after
    /// the second in which the probe copies the kernel's counters.
    pub(crate) fn metrics(&self) -> HashMap<String, u64> {
        std::thread::sleep(Duration::from_millis(1200));
        let text = self.get("/metrics").expect("the probe serves /metrics");
        text.lines()
            .filter(|line| line.starts_with("apitrace_probe_"))
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: signalling our own child (`ip netns exec` execs the probe,
        // so the pid is the probe's).
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().expect("the probe ends")
    }
}

impl Drop for Probe {
    /// A test that fails half-way must not leave its probe running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tc_filters(pod: &Pod, hook: &str) -> String {
    let output = Command::new("ip")
        .args([
            "netns", "exec", &pod.netns, "tc", "filter", "show", "dev", "eth0", hook,
        ])
        .output()
        .expect("tc runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// tcx links belong to the probe's file descriptors: SIGKILL, and the kernel
/// detaches them.
#[test]
fn a_probe_killed_with_sigkill_leaves_nothing_attached() {
    let Some(_) = real("the SIGKILL test") else {
        return;
    };
    let pods = pods(&["client", "server", "probe"]);
    let probe = Probe::start(
        pods.pod("probe"),
        pods.pod("server"),
        &["--attach-mode", "tcx"],
    );
    let links = std::fs::read_dir(format!("/proc/{}/fdinfo", probe.child.id()))
        .expect("the probe's descriptors")
        .flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter(|info| info.contains("link_id:"))
        .count();
    assert_eq!(
        links, 3,
        "the probe holds tcx links: eth0 ingress and egress, lo egress"
    );
    probe.signal(libc::SIGKILL);
    let orphans = wait_for_no_orphans();
    assert!(
        orphans.is_empty(),
        "programs left attached after SIGKILL: {orphans:#?}"
    );
}

/// Netlink filters outlive their process: the probe removes its own on exit,
/// a killed probe's stay (and the orphan check sees them), and the next probe
/// sweeps them before attaching.
#[test]
fn netlink_filters_are_removed_on_exit_and_swept_after_a_kill() {
    let Some(_) = real("the netlink test") else {
        return;
    };
    let pods = pods(&["client", "server", "probe"]);
    let (server, probe_pod) = (pods.pod("server"), pods.pod("probe"));
    let netlink = ["--attach-mode", "netlink"];
    let filters = |hook| {
        tc_filters(server, hook)
            .lines()
            .filter(|line| line.contains("apitrace_"))
            .count()
    };

    let probe = Probe::start(probe_pod, server, &netlink);
    assert_eq!((filters("ingress"), filters("egress")), (1, 1));
    assert!(probe.signal(libc::SIGTERM).success());
    assert_eq!(
        (filters("ingress"), filters("egress")),
        (0, 0),
        "removed on exit"
    );

    let deliberate = DELIBERATE_ORPHANS.lock().unwrap_or_else(|e| e.into_inner());
    let probe = Probe::start(probe_pod, server, &netlink);
    probe.signal(libc::SIGKILL);
    assert_eq!(filters("ingress"), 1, "a killed probe's filter stays");
    assert!(
        !orphaned_programs().is_empty(),
        "and keeps its program loaded, held by no process"
    );

    let probe = Probe::start(probe_pod, server, &netlink);
    drop(deliberate);
    assert_eq!(
        (filters("ingress"), filters("egress")),
        (1, 1),
        "the new probe swept the stale filters before attaching its own"
    );
    assert!(probe.signal(libc::SIGTERM).success());
    assert_eq!((filters("ingress"), filters("egress")), (0, 0));
    let orphans = wait_for_no_orphans();
    assert!(orphans.is_empty(), "{orphans:#?}");
}

/// The program runs only on the traced pod's interfaces. The bridge floods ARP
/// and unknown-unicast frames to every port, so a few of another pod's packets
/// do reach them: each costs a parse and one lookup of its pod-side address,
/// and goes no further. On the traced pod, traffic on an ignored port (Istio's
/// health port here) is seen but produces nothing; its API traffic does.
#[test]
fn traffic_outside_the_session_produces_no_events() {
    let Some(_) = real("the non-target traffic test") else {
        return;
    };
    let pods = pods(&["client", "server", "other", "probe"]);
    let (client, server, other) = (pods.pod("client"), pods.pod("server"), pods.pod("other"));
    let _apps = [
        App::serve(server, 8080),
        App::serve(server, 15021),
        App::serve(other, 8080),
    ];
    let probe = Probe::start(pods.pod("probe"), server, &[]);
    let tc = |metrics: &HashMap<String, u64>, name: &str| metrics.get(name).copied().unwrap_or(0);
    let packets = r#"apitrace_probe_tc_packets_total{scope="all"}"#;
    let traced = r#"apitrace_probe_tc_packets_total{scope="traced"}"#;
    let events = r#"apitrace_probe_events_total{source="tc"}"#;

    let before = probe.metrics();
    for _ in 0..20 {
        assert!(
            call(
                client,
                SocketAddr::new(IpAddr::V4(other.ipv4), 8080),
                "test-1"
            )
            .contains("200 OK")
        );
    }
    let after_other = probe.metrics();
    assert_eq!(
        tc(&after_other, traced),
        tc(&before, traced),
        "another pod's traffic is not traced"
    );
    assert_eq!(tc(&after_other, events), 0, "and produces nothing");

    for _ in 0..5 {
        assert!(
            call(
                client,
                SocketAddr::new(IpAddr::V4(server.ipv4), 15021),
                "test-1"
            )
            .contains("200 OK")
        );
    }
    let after_ignored = probe.metrics();
    assert!(
        tc(&after_ignored, packets) >= tc(&after_other, packets) + 5 * 6,
        "the traced pod's packets on the ignored port were seen: {after_other:?} {after_ignored:?}"
    );
    assert_eq!(
        tc(&after_ignored, traced),
        tc(&after_other, traced),
        "but not traced"
    );
    assert_eq!(tc(&after_ignored, events), 0, "and produced nothing");

    assert!(
        call(
            client,
            SocketAddr::new(IpAddr::V4(server.ipv4), 8080),
            "test-1"
        )
        .contains("200 OK")
    );
    let after_api = probe.metrics();
    assert!(
        tc(&after_api, traced) > tc(&after_ignored, traced),
        "{after_api:?}"
    );
    assert!(
        tc(&after_api, events) >= 6,
        "an API call is traced: {after_api:?}"
    );
    assert!(probe.signal(libc::SIGTERM).success());
}

/// A ring whose reader stops reading fills up; what the kernel then cannot
/// write is dropped and counted, and every event is either delivered or
/// counted. The probe is stopped (SIGSTOP) while 20 connections make 120
/// events against a 4 KiB ring, then resumed.
#[test]
fn an_overrun_ring_drops_and_counts_what_does_not_fit() {
    let Some(_) = real("the ring overrun test") else {
        return;
    };
    let pods = pods(&["client", "server", "probe"]);
    let (client, server) = (pods.pod("client"), pods.pod("server"));
    let _app = App::serve(server, 8080);
    let probe = Probe::start(pods.pod("probe"), server, &["--ring-bytes", "4096"]);
    let address = SocketAddr::new(IpAddr::V4(server.ipv4), 8080);
    // SAFETY: stopping and resuming our own child.
    unsafe { libc::kill(probe.child.id() as i32, libc::SIGSTOP) };
    for _ in 0..20 {
        assert!(call(client, address, "test-1").contains("200 OK"));
    }
    // SAFETY: as above.
    unsafe { libc::kill(probe.child.id() as i32, libc::SIGCONT) };
    let metrics = probe.metrics();
    let count = |name: &str| metrics.get(name).copied().unwrap_or(0);
    let ring_full = count(r#"apitrace_probe_dropped_total{source="tc",reason="ring_full"}"#);
    let events = count(r#"apitrace_probe_events_total{source="tc"}"#);
    assert!(
        ring_full > 0,
        "a stopped reader's ring overflowed: {metrics:?}"
    );
    // Each connection: open, accept, request, response, and a close each way.
    assert_eq!(
        events + ring_full,
        20 * 6,
        "every event is delivered or counted: {metrics:?}"
    );
    assert!(probe.signal(libc::SIGTERM).success());
    let orphans = wait_for_no_orphans();
    assert!(orphans.is_empty(), "programs left attached: {orphans:#?}");
}

const SESSION: &str = "abcde12345";
const ANCHOR: &str = "apitrace-abcde12345";

/// What a cluster holds for a session whose CLI died: its anchor Lease (never
/// renewed, 2 s long), a WasmPlugin, a Telemetry, a labelled pod, and our
/// provider in the mesh config beside another one.
fn leftover_cluster(
    request: &Request,
    lease_deleted: &std::sync::atomic::AtomicBool,
) -> (u16, Value) {
    use std::sync::atomic::Ordering;
    let labels = json!({ "app.kubernetes.io/managed-by": "kubectl-apitrace", "apitrace.io/session": SESSION });
    let object = |api_version: &str, kind: &str, namespace: &str, name: &str| {
        json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": { "name": name, "namespace": namespace, "labels": labels, "resourceVersion": "7" },
        })
    };
    let list = |items: Vec<Value>| {
        (
            200,
            json!({ "kind": "List", "apiVersion": "v1", "metadata": {}, "items": items }),
        )
    };
    let mut lease = object("coordination.k8s.io/v1", "Lease", "apitrace-system", ANCHOR);
    lease["metadata"]["annotations"] = json!({
        "apitrace.io/mesh-config": "istio-system/istio",
        "apitrace.io/target-namespaces": "shop",
    });
    lease["spec"] =
        json!({ "leaseDurationSeconds": 2, "renewTime": "2026-11-22T10:00:00.000000Z" });
    let mut traced = object("v1", "Pod", "shop", "web-1");
    traced["metadata"]["labels"] = json!({ "app": "web", "apitrace.io/session": SESSION });
    let mesh = format!(
        "extensionProviders:\n- name: otel\n  envoyOtelAls:\n    port: 4317\n    service: otel.o.svc.cluster.local\n\
         - name: {ANCHOR}\n  envoyHttpAls:\n    port: 15901\n    service: {ANCHOR}.apitrace-system.svc.cluster.local\n"
    );
    let path = request.uri.split('?').next().unwrap_or_default();
    match (request.method.as_str(), path) {
        (
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/apitrace-system/leases/apitrace-abcde12345",
        ) => {
            if lease_deleted.load(Ordering::SeqCst) {
                not_found()
            } else {
                (200, lease)
            }
        }
        ("GET", "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins") => {
            list(vec![object(
                "extensions.istio.io/v1alpha1",
                "WasmPlugin",
                "shop",
                ANCHOR,
            )])
        }
        ("GET", "/apis/telemetry.istio.io/v1/namespaces/shop/telemetries") => list(vec![object(
            "telemetry.istio.io/v1",
            "Telemetry",
            "shop",
            ANCHOR,
        )]),
        ("GET", "/api/v1/namespaces/shop/pods") => list(vec![traced]),
        ("GET", "/apis/coordination.k8s.io/v1/namespaces/apitrace-system/leases") => {
            list(vec![lease])
        }
        ("GET", path) if path.starts_with("/api/v1/namespaces/apitrace-system/") => {
            list(Vec::new())
        }
        ("GET", "/api/v1/namespaces/istio-system/configmaps/istio") => (
            200,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": "istio", "namespace": "istio-system", "resourceVersion": "3" },
                "data": { "mesh": mesh },
            }),
        ),
        ("PUT", _) => (200, request.body.clone().unwrap_or_default()),
        ("PATCH", "/api/v1/namespaces/shop/pods/web-1") => {
            let mut untraced = object("v1", "Pod", "shop", "web-1");
            untraced["metadata"]["labels"] = json!({ "app": "web" });
            (200, untraced)
        }
        ("DELETE", path) => {
            if path.ends_with("/leases/apitrace-abcde12345") {
                lease_deleted.store(true, Ordering::SeqCst);
            }
            (
                200,
                json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success" }),
            )
        }
        _ => not_found(),
    }
}

/// The CLI was killed: nobody renews the session's Lease. The probe notices,
/// detaches from the kernel, removes the session from the cluster (the mesh
/// entry, Istio objects, the pod's label, the Lease last) and exits. The API
/// server is a stand-in; the probe, its kube client and its TC attachments
/// are the real ones.
#[test]
fn a_probe_whose_lease_lapses_detaches_and_removes_the_session() {
    if !root("the lapsed Lease test") {
        return;
    }
    let pods = pods(&["server", "probe"]);
    let probe_pod = pods.pod("probe");
    let listener = run_in(&probe_pod.netns_path(), || {
        std::net::TcpListener::bind("127.0.0.1:0")
    })
    .expect("inside the probe pod")
    .expect("a loopback port");
    let lease_deleted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deleted = std::sync::Arc::clone(&lease_deleted);
    let api = FakeApi::serve(listener, move |request| leftover_cluster(request, &deleted));
    let kubeconfig =
        std::env::temp_dir().join(format!("apitrace-kubeconfig-{}", std::process::id()));
    api.write_kubeconfig(&kubeconfig, None);

    let mut probe = Probe::start_with_env(
        probe_pod,
        pods.pod("server"),
        &[
            "--attach-mode",
            "tcx",
            "--lease",
            &format!("apitrace-system/{ANCHOR}"),
        ],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = probe.child.try_wait().expect("the probe's status") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the probe did not act on the lapsed Lease; it asked: {:#?}",
            api.received()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::remove_file(&kubeconfig);
    let mut stderr = String::new();
    probe
        .child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "the probe failed: {stderr}");

    let received = api.received();
    let changes: Vec<(&str, &str)> = received
        .iter()
        .filter(|request| request.method != "GET")
        .map(|request| {
            (
                request.method.as_str(),
                request.uri.split('?').next().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (
                "DELETE",
                "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins/apitrace-abcde12345"
            ),
            (
                "DELETE",
                "/apis/telemetry.istio.io/v1/namespaces/shop/telemetries/apitrace-abcde12345"
            ),
            ("PUT", "/api/v1/namespaces/istio-system/configmaps/istio"),
            ("PATCH", "/api/v1/namespaces/shop/pods/web-1"),
            (
                "DELETE",
                "/apis/coordination.k8s.io/v1/namespaces/apitrace-system/leases/apitrace-abcde12345"
            ),
        ],
        "{stderr}"
    );
    let put = received
        .iter()
        .find(|request| request.method == "PUT")
        .unwrap();
    let mesh = put.body.as_ref().unwrap()["data"]["mesh"].as_str().unwrap();
    assert!(
        mesh.contains("name: otel") && !mesh.contains(ANCHOR),
        "{mesh}"
    );
    // Nothing outside the session's namespaces was listed.
    assert!(
        received
            .iter()
            .all(|request| request.uri.contains("/namespaces/")),
        "{received:#?}"
    );
    let orphans = wait_for_no_orphans();
    assert!(orphans.is_empty(), "programs left attached: {orphans:#?}");
}
