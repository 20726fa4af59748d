//! The identity watch on a large cluster: the stand-in cluster of
//! `fake_cluster.rs` serving 10,000 pods as an API server sends them (a few
//! kilobytes each, most of it managedFields and spec), paged as kube-apiserver
//! pages a list, and the heap the watch holds while it lists them, next to
//! the watch as it was before (kube-runtime's watcher of k8s-openapi's full
//! `Pod`) and to a list the server does not page. BENCHMARKS.md ("The
//! identity watch") has the figures this prints.

use std::{collections::BTreeSet, net::TcpListener};

use apitrace_cluster::identity::{self, PAGE_SIZE};
use apitrace_join::{Directory, Input};
use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::watcher::{self, Event},
};
use serde_json::{Value, json};

use crate::{
    cluster::{USER, rbac_objects, user_role},
    fake_cluster::FakeCluster,
    fake_rbac::user_token,
    heap::{Held, held},
    support::{pods, root},
};

const PODS: usize = 10_000;

/// A pod of a Deployment with Istio's sidecar, as the API server sends it
/// (the fields a kubelet, the scheduler, the ReplicaSet controller and the
/// injector write), about 7 KB of JSON.
fn served_pod(index: usize) -> Value {
    let namespace = format!("team-{}", index % 100);
    let app = format!("app-{}", index % 700);
    let name = format!("{app}-7c9f8d6b5-{index:05}");
    let ip = format!(
        "10.{}.{}.{}",
        64 + index / 65536,
        (index / 256) % 256,
        index % 256
    );
    let env: Vec<Value> = (0..14)
        .map(|n| json!({ "name": format!("ISTIO_META_SETTING_{n}"), "value": format!("value-{n}-{app}") }))
        .collect();
    let managed = |manager: &str, fields: Value| {
        json!({
            "manager": manager, "operation": "Update", "apiVersion": "v1",
            "time": "2026-11-22T10:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": fields,
        })
    };
    let condition = |kind: &str| json!({ "type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-22T10:00:05Z" });
    let container_status = |container: &str| {
        json!({
            "name": container, "ready": true, "restartCount": 0, "started": true,
            "image": format!("registry.example.com/{container}:1.28.0"),
            "imageID": format!("registry.example.com/{container}@sha256:{:064x}", index),
            "containerID": format!("containerd://{:064x}", index * 2 + 1),
            "state": { "running": { "startedAt": "2026-11-22T10:00:04Z" } },
            "lastState": {},
        })
    };
    let sidecar_volumes = [
        "workload-socket",
        "credential-socket",
        "workload-certs",
        "istiod-ca-cert",
        "istio-data",
        "istio-envoy",
        "istio-token",
        "istio-podinfo",
    ];
    let mounts: Vec<Value> = sidecar_volumes
        .iter()
        .map(|volume| json!({ "name": volume, "mountPath": format!("/var/run/{volume}") }))
        .collect();
    let volumes: Vec<Value> = sidecar_volumes
        .iter()
        .map(|volume| json!({ "name": volume, "emptyDir": {} }))
        .collect();
    let conditions = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .map(condition);
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "generateName": format!("{app}-7c9f8d6b5-"), "namespace": namespace,
            "uid": format!("{:08x}-0000-4000-8000-{:012x}", index, index),
            "resourceVersion": (100_000 + index).to_string(),
            "creationTimestamp": "2026-11-22T10:00:00Z",
            "labels": {
                "app": app, "pod-template-hash": "7c9f8d6b5", "version": "v1",
                "security.istio.io/tlsMode": "istio",
                "service.istio.io/canonical-name": app, "service.istio.io/canonical-revision": "v1",
            },
            "annotations": {
                "istio.io/rev": "default", "kubectl.kubernetes.io/default-container": app,
                "prometheus.io/path": "/stats/prometheus", "prometheus.io/port": "15020", "prometheus.io/scrape": "true",
                "sidecar.istio.io/status": r#"{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["workload-socket","credential-socket","workload-certs","istio-envoy","istio-data","istio-podinfo","istio-token","istiod-ca-cert"],"imagePullSecrets":null,"revision":"default"}"#,
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-7c9f8d6b5"),
                "uid": format!("{:08x}-1111-4000-8000-000000000000", index % 700),
                "controller": true, "blockOwnerDeletion": true,
            }],
            "managedFields": [
                managed("kube-controller-manager", json!({
                    "f:metadata": {
                        "f:generateName": {}, "f:labels": { ".": {}, "f:app": {}, "f:pod-template-hash": {}, "f:version": {} },
                        "f:ownerReferences": { ".": {}, "k:{\"uid\":\"00000000-1111\"}": {} },
                    },
                    "f:spec": {
                        "f:containers": { "k:{\"name\":\"app\"}": {
                            ".": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:name": {},
                            "f:ports": { ".": {}, "k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": { ".": {}, "f:containerPort": {}, "f:protocol": {} } },
                            "f:resources": {}, "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {},
                        } },
                        "f:dnsPolicy": {}, "f:enableServiceLinks": {}, "f:restartPolicy": {}, "f:schedulerName": {},
                        "f:securityContext": {}, "f:serviceAccount": {}, "f:serviceAccountName": {},
                        "f:terminationGracePeriodSeconds": {},
                    },
                })),
                managed("kubelet", json!({
                    "f:status": {
                        "f:conditions": {
                            "k:{\"type\":\"ContainersReady\"}": { ".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {} },
                            "k:{\"type\":\"Initialized\"}": { ".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {} },
                            "k:{\"type\":\"PodReadyToStartContainers\"}": { ".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {} },
                            "k:{\"type\":\"Ready\"}": { ".": {}, "f:lastProbeTime": {}, "f:lastTransitionTime": {}, "f:status": {}, "f:type": {} },
                        },
                        "f:containerStatuses": {}, "f:hostIP": {}, "f:hostIPs": {}, "f:initContainerStatuses": {},
                        "f:phase": {}, "f:podIP": {}, "f:podIPs": { ".": {}, format!("k:{{\"ip\":\"{ip}\"}}"): { ".": {}, "f:ip": {} } },
                        "f:startTime": {},
                    },
                })),
            ],
        },
        "spec": {
            "initContainers": [{
                "name": "istio-init", "image": "docker.io/istio/proxyv2:1.28.0",
                "args": ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"],
                "resources": { "limits": { "cpu": "2", "memory": "1Gi" }, "requests": { "cpu": "10m", "memory": "40Mi" } },
                "securityContext": { "capabilities": { "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] }, "runAsUser": 0, "runAsNonRoot": false },
            }],
            "containers": [
                {
                    "name": app, "image": format!("registry.example.com/{app}:1.4.2"), "imagePullPolicy": "IfNotPresent",
                    "ports": [{ "containerPort": 8080, "protocol": "TCP" }],
                    "resources": { "requests": { "cpu": "100m", "memory": "128Mi" } },
                    "volumeMounts": [{ "name": "kube-api-access", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" }],
                    "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                },
                {
                    "name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.28.0",
                    "args": ["proxy", "sidecar", "--domain", format!("{namespace}.svc.cluster.local"), "--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error", "--log_output_level=default:info"],
                    "ports": [{ "name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP" }],
                    "env": env,
                    "readinessProbe": { "httpGet": { "path": "/healthz/ready", "port": 15021, "scheme": "HTTP" }, "periodSeconds": 15, "timeoutSeconds": 3, "failureThreshold": 4 },
                    "resources": { "limits": { "cpu": "2", "memory": "1Gi" }, "requests": { "cpu": "10m", "memory": "40Mi" } },
                    "volumeMounts": mounts,
                },
            ],
            "volumes": volumes,
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": app, "serviceAccount": app, "nodeName": format!("node-{}", index % 200),
            "securityContext": {}, "schedulerName": "default-scheduler", "priority": 0,
            "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [
                { "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 },
                { "key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300 },
            ],
        },
        "status": {
            "phase": "Running",
            "conditions": conditions,
            "hostIP": format!("192.168.0.{}", index % 200 + 10),
            "podIP": ip, "podIPs": [{ "ip": ip }],
            "startTime": "2026-11-22T10:00:01Z",
            "initContainerStatuses": [container_status("istio-init")],
            "containerStatuses": [container_status(&app), container_status("istio-proxy")],
            "qosClass": "Burstable",
        },
    })
}

/// What listing every pod cost one way of watching: its heap, the pods it
/// saw, and the list requests it made with the bytes of their answers.
struct Listing {
    held: Held,
    pods: usize,
    requests: usize,
    bytes: usize,
}

/// Watches pods with `watch` until the first list is done, counting the
/// heap on this thread only; `keep` files each event's names in the join's
/// directory, as a session does (ours; the others keep nothing).
fn listing<K, S>(
    cluster: &FakeCluster,
    kubeconfig: &std::path::Path,
    watch: impl FnOnce(Client) -> S,
    mut keep: impl FnMut(Event<K>, &mut Directory),
) -> Listing
where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let before = cluster.api.answered().len();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let config = runtime
        .block_on(kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(kubeconfig).expect("the kubeconfig"),
            &kube::config::KubeConfigOptions::default(),
        ))
        .expect("a client config");
    let ((pods, kept), held) = held(|| {
        runtime.block_on(async {
            let client = Client::try_from(config).expect("a client");
            let mut events = std::pin::pin!(watch(client));
            let (mut pods, mut kept) = (0, Directory::default());
            while let Some(event) = events.next().await {
                match event.expect("the stand-in answers every request") {
                    Event::InitDone => break,
                    Event::InitApply(object) => {
                        pods += 1;
                        keep(Event::InitApply(object), &mut kept);
                    }
                    Event::Init | Event::Apply(_) | Event::Delete(_) => {}
                }
            }
            (pods, kept)
        })
    });
    drop(kept);
    let lists: Vec<(String, usize)> = cluster.api.answered()[before..]
        .iter()
        .filter(|(uri, _)| uri.starts_with("/api/v1/pods?") && !uri.contains("watch=true"))
        .cloned()
        .collect();
    Listing {
        held,
        pods,
        requests: lists.len(),
        bytes: lists.iter().map(|(_, bytes)| bytes).sum(),
    }
}

#[test]
fn the_identity_watch_of_10000_pods_holds_a_page_of_text_and_their_addresses() {
    if !root("identity::the_identity_watch_of_10000_pods_holds_a_page_of_text_and_their_addresses")
    {
        return;
    }
    let node = pods(&["kube"]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let tag = format!("{}-identity", std::process::id());
    let kubeconfig = std::env::temp_dir().join(format!("apitrace-kubeconfig-{tag}"));
    let probe_kubeconfig = std::env::temp_dir().join(format!("apitrace-probe-kubeconfig-{tag}"));
    let mut objects = rbac_objects(user_role());
    objects.extend((0..PODS).map(served_pod));
    let one_pod = serde_json::to_vec(&served_pod(0)).expect("JSON").len();
    let cluster = FakeCluster::start(
        listener,
        Vec::new(),
        objects,
        "apitrace-system",
        node.pod("kube"),
        &probe_kubeconfig,
        &std::env::temp_dir().join(format!("apitrace-probe-log-{tag}")),
    );
    cluster
        .api
        .write_kubeconfig(&kubeconfig, Some(&user_token(USER)));

    let traced = BTreeSet::new();
    let ours = listing(
        &cluster,
        &kubeconfig,
        identity::watch_all::<Pod>,
        |event, kept| {
            for input in identity::identities(event, &traced, false, 0) {
                if let Input::Identity {
                    ip,
                    since_ns,
                    workload,
                } = input
                {
                    kept.insert(ip, since_ns, workload);
                }
            }
        },
    );
    let unbounded = listing(
        &cluster,
        &kubeconfig,
        |client| watcher::watcher(Api::<Pod>::all(client), watcher::Config::default()),
        |_, _| {},
    );
    let whole = listing(
        &cluster,
        &kubeconfig,
        |client| {
            let unpaged = watcher::Config {
                page_size: None,
                ..watcher::Config::default()
            };
            watcher::watcher(Api::<Pod>::all(client), unpaged)
        },
        |_, _| {},
    );
    let _ = std::fs::remove_file(&kubeconfig);
    let _ = std::fs::remove_file(&probe_kubeconfig);

    let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    let transient = |run: &Listing| run.held.peak.saturating_sub(run.held.kept);
    eprintln!("identity watch, {PODS} pods of {one_pod} bytes of JSON each:");
    for (name, run) in [
        ("ours (slim objects, pages of 500)", &ours),
        ("unbounded (full Pod objects, pages of 500)", &unbounded),
        ("one unpaged list (full Pod objects)", &whole),
    ] {
        eprintln!(
            "  {name}: peak heap {:.1} MiB, of which {:.1} MiB still held at the end and {:.1} MiB only while listing; {} pods, {} list requests, {:.1} MiB of answers",
            mib(run.held.peak),
            mib(run.held.kept),
            mib(transient(run)),
            run.pods,
            run.requests,
            mib(run.bytes),
        );
    }
    eprintln!(
        "  unbounded / ours: peak heap {:.2}, held only while listing {:.2}",
        unbounded.held.peak as f64 / ours.held.peak as f64,
        transient(&unbounded) as f64 / transient(&ours) as f64,
    );

    for run in [&ours, &unbounded, &whole] {
        assert_eq!(run.pods, PODS, "every pod listed");
    }
    // The stand-in pages as kube-apiserver does: 20 pages of 500.
    let pages = PODS.div_ceil(PAGE_SIZE as usize);
    assert_eq!(
        (ours.requests, unbounded.requests, whole.requests),
        (pages, pages, 1)
    );
    // Ours holds, beyond the identities it keeps, about one page's text and
    // the client's buffers: never the objects of a page. The watch of full
    // objects held more than that bound, or this test could not tell.
    let page_text = ours.bytes / pages;
    let bound = page_text * 3;
    assert!(
        transient(&ours) <= bound,
        "ours held {} bytes beyond its identities; a page is {page_text}",
        transient(&ours)
    );
    assert!(
        transient(&unbounded) > bound,
        "full objects held only {} bytes: the measurement would not see them",
        transient(&unbounded)
    );
}
