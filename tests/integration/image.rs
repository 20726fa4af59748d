//! The probe image as a node runs it. The release's OCI archive is read by
//! skopeo (which picks each architecture out of the index, as a kubelet's
//! runtime does), unpacked by umoci, and the amd64 image is started by runc,
//! a real OCI runtime, with the capabilities the probe pod asks for, inside a
//! pod's network namespace: it attaches to another pod, sees its traffic,
//! serves `/metrics`, and on SIGTERM exits 0 leaving nothing attached. The
//! arm64 image's probe prints its version under qemu-user with the image's
//! own C runtime (qemu does not pass `bpf()` through, so it can do no more).
//!
//! runc, not crun: crun 1.8 refuses this machine's hybrid cgroups. The
//! sandbox's bounding set lacks `CAP_SYS_RESOURCE`, so the bundle leaves that
//! one of the pod spec's capabilities out; the probe needs it only on kernels
//! before 5.11, to raise the locked-memory limit.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use apitrace_cluster::objects::PROBE_CAPABILITIES;
use apitrace_netns::topology::Pod;
use apitrace_proto::probe_args::{ProbeArgs, ProbeTarget, SESSION_TOKEN_ENV};
use serde_json::{Value, json};

use crate::support::{App, call, http_get, pods, released, root, stderr, wait_for_no_orphans};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{:?} runs: {error}", command.get_program()));
    assert!(
        output.status.success(),
        "{command:?}: {} {}",
        output.status,
        stderr(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The capabilities of the probe pod's spec (less `SYS_RESOURCE`, which this
/// sandbox cannot grant), as an OCI runtime names them.
fn capabilities() -> Vec<String> {
    PROBE_CAPABILITIES
        .iter()
        .filter(|capability| **capability != "SYS_RESOURCE")
        .map(|capability| format!("CAP_{capability}"))
        .collect()
}

/// The tcx links a process holds: each attachment is a link file descriptor
/// (Debian's bpftool 7.1 predates tcx and does not list them).
fn links_held(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("the probe's descriptors")
        .flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter(|info| info.contains("link_id:"))
        .count()
}

/// The host pid of the container's first process, from runc.
fn container_pid(id: &str) -> u32 {
    let state: Value = serde_json::from_str(&run(Command::new("runc").args(["state", id])))
        .expect("runc state is JSON");
    state["pid"]
        .as_u64()
        .expect("a running container has a pid") as u32
}

/// The netlink filters on the traced pod's `eth0`, which outlive a process
/// that does not remove them.
fn netlink_filters(pod: &Pod) -> usize {
    ["ingress", "egress"]
        .iter()
        .map(|hook| {
            run(Command::new("ip").args([
                "netns", "exec", &pod.netns, "tc", "filter", "show", "dev", "eth0", hook,
            ]))
            .lines()
            .filter(|line| line.contains("apitrace_"))
            .count()
        })
        .sum()
}

/// umoci's bundle made into the probe pod's container: the probe's
/// arguments, the pod's network namespace and the host's process namespace,
/// the listed capabilities and no others, no privilege escalation, a
/// read-only root, and the host's network namespaces mounted where the probe
/// finds its targets. (On a node the probe finds a target by its container's
/// ID through /proc; here the target is a bare network namespace, so that
/// lookup is the probe tests' and not this one's.)
fn configure(bundle: &Path, probe_pod: &Pod, target: &Pod) {
    let path = bundle.join("config.json");
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("umoci wrote config.json"))
            .expect("config.json is JSON");
    let mut args = vec![Value::from("/apitrace-probe")];
    args.extend(
        ProbeArgs::new(
            "image".to_owned(),
            vec![ProbeTarget {
                namespace: "test".to_owned(),
                name: target.name.to_owned(),
                netns: format!("netns:{}", target.netns_path().display()),
            }],
            Duration::from_secs(120),
        )
        .to_args()
        .into_iter()
        .map(Value::from),
    );
    let process = &mut config["process"];
    assert_eq!(
        process["args"][0], "/apitrace-probe",
        "the image's entrypoint is the probe"
    );
    process["args"] = Value::Array(args);
    process["terminal"] = json!(false);
    process["env"]
        .as_array_mut()
        .expect("an environment")
        .push(json!(format!("{SESSION_TOKEN_ENV}=image-token")));
    let capabilities = capabilities();
    process["capabilities"] = json!({
        "bounding": capabilities,
        "effective": capabilities,
        "permitted": capabilities,
    });
    // allowPrivilegeEscalation: false in the pod spec.
    process["noNewPrivileges"] = json!(true);
    config["root"]["readonly"] = json!(true);
    // hostPID: the host's process namespace, as the probe pod has; the
    // network namespace is the probe pod's own.
    let namespaces = config["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces");
    namespaces.retain(|namespace| {
        !["user", "network", "pid"].contains(&namespace["type"].as_str().unwrap_or_default())
    });
    namespaces.push(json!({ "type": "network", "path": probe_pod.netns_path() }));
    // umoci maps the bundle for an unprivileged user only when asked; a node's
    // runtime runs the probe as root of the host's user namespace.
    if let Some(linux) = config["linux"].as_object_mut() {
        linux.remove("uidMappings");
        linux.remove("gidMappings");
    }
    config["mounts"]
        .as_array_mut()
        .expect("mounts")
        .push(json!({
            "destination": "/run/netns",
            "type": "bind",
            "source": "/run/netns",
            "options": ["rbind", "rprivate", "ro"],
        }));
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("JSON")).expect("config.json");
}

/// A container started with `runc run`, deleted when dropped.
struct Container {
    id: String,
    runc: Child,
}

impl Container {
    fn run(bundle: &Path, id: String) -> Self {
        let runc = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runc runs (installed by `cargo xtask setup`)");
        Self { id, runc }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .output();
        let _ = self.runc.wait();
    }
}

#[test]
fn the_probe_image_runs_under_runc_and_leaves_nothing_attached() {
    let layout = format!("apitrace-probe_v{VERSION}.oci");
    let archive = format!("{layout}.tar");
    let Some(dist) = released("the probe image test", &[&archive]) else {
        return;
    };
    if !root("the probe image test") {
        return;
    }
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let source = format!("oci-archive:{}:{VERSION}", dist.join(&archive).display());

    let index: Value = serde_json::from_str(&run(
        Command::new("skopeo").args(["inspect", "--raw", &source])
    ))
    .expect("the index is JSON");
    let mut platforms: Vec<String> = index["manifests"]
        .as_array()
        .expect("an image index")
        .iter()
        .map(|manifest| {
            format!(
                "{}/{}",
                manifest["platform"]["os"].as_str().unwrap_or_default(),
                manifest["platform"]["architecture"]
                    .as_str()
                    .unwrap_or_default()
            )
        })
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);

    for arch in ["amd64", "arm64"] {
        let copy = format!("oci:{}:{arch}", scratch.path().join("images").display());
        run(Command::new("skopeo").args([
            "--override-os",
            "linux",
            "--override-arch",
            arch,
            "copy",
            &source,
            &copy,
        ]));
        let inspected: Value = serde_json::from_str(&run(
            Command::new("skopeo").args(["inspect", "--config", &copy])
        ))
        .expect("the config is JSON");
        assert_eq!(inspected["architecture"], arch);
        assert_eq!(
            inspected["config"]["Entrypoint"],
            json!(["/apitrace-probe"])
        );
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(scratch.path().join(format!("images:{arch}")))
            .arg(scratch.path().join(format!("bundle-{arch}"))));
    }

    let arm64_root = scratch.path().join("bundle-arm64/rootfs");
    let version = run(Command::new("qemu-aarch64-static")
        .arg("-L")
        .arg(&arm64_root)
        .arg(arm64_root.join("apitrace-probe"))
        .arg("--version"));
    assert_eq!(version, format!("apitrace-probe {VERSION}\n"));

    let pods = pods(&["client", "server", "probe"]);
    let (client, server, probe_pod) = (pods.pod("client"), pods.pod("server"), pods.pod("probe"));
    let _app = App::serve(server, 8080);
    let bundle = scratch.path().join("bundle-amd64");
    configure(&bundle, probe_pod, server);
    let mut container = Container::run(&bundle, format!("apitrace-image-{}", std::process::id()));

    let metrics_at = SocketAddr::new(IpAddr::V4(probe_pod.ipv4), 15902);
    let started = Instant::now();
    while http_get(&probe_pod.netns_path(), metrics_at, "/healthz").is_none() {
        if let Ok(Some(status)) = container.runc.try_wait() {
            let mut message = String::new();
            if let Some(mut errors) = container.runc.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut errors, &mut message);
            }
            panic!("the probe's container ended ({status}): {message}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the probe in the image did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        links_held(container_pid(&container.id)),
        3,
        "the probe in the image holds tcx links: eth0 ingress and egress, lo egress"
    );

    for _ in 0..5 {
        assert!(
            call(
                client,
                SocketAddr::new(IpAddr::V4(server.ipv4), 8080),
                "image-1"
            )
            .contains("200 OK")
        );
    }
    // The probe copies the kernel's counters once a second.
    std::thread::sleep(Duration::from_millis(1200));
    let metrics = http_get(&probe_pod.netns_path(), metrics_at, "/metrics")
        .expect("the probe serves /metrics");
    let tc_events = metrics
        .lines()
        .find_map(|line| line.strip_prefix(r#"apitrace_probe_events_total{source="tc"} "#))
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        tc_events >= 5 * 6,
        "each call's packets are events: {metrics}"
    );

    // runc passes the signal on to the container's first process, the probe.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(container.runc.id() as i32, libc::SIGTERM) };
    let status = container.runc.wait().expect("runc ends");
    assert!(
        status.success(),
        "the probe exits cleanly on SIGTERM: {status}"
    );
    assert_eq!(netlink_filters(server), 0, "no filter stays attached");
    let orphans = wait_for_no_orphans();
    assert!(orphans.is_empty(), "{orphans:#?}");
}
