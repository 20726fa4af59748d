//! Finding (and building) the binaries, deciding whether a real test can run,
//! and checking that a run left nothing behind.

use std::{
    env,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use apitrace_netns::{
    run_in,
    topology::{Pod, Topology},
};

pub struct Binaries {
    pub cli: PathBuf,
    pub probe: PathBuf,
    /// The WASM filter the probe embeds, as the guest build left it.
    pub filter: PathBuf,
}

/// The binaries of this workspace, built once per test run so that they are
/// never stale.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        // target/<profile>/deps/integration-<hash>
        let exe = env::current_exe().expect("the test binary knows its path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target/");
        let profile = profile_dir
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("debug");
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--package",
                "kubectl-apitrace",
                "--package",
                "apitrace-probe",
            ])
            .args([
                "--profile",
                if profile == "debug" { "dev" } else { profile },
            ])
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building kubectl-apitrace and apitrace-probe failed"
        );
        Binaries {
            cli: profile_dir.join("kubectl-apitrace"),
            probe: profile_dir.join("apitrace-probe"),
            filter: target_dir
                .join("guest/wasm32-unknown-unknown/guest-wasm/apitrace_wasm_filter.wasm"),
        }
    })
}

/// What a real run needs: root and an Envoy binary.
pub struct Real {
    pub envoy: PathBuf,
}

/// `Some` when `test` can run for real here. Otherwise it says why and returns
/// `None`, unless `CI=true`, where it fails the test.
pub fn real(test: &str) -> Option<Real> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root".to_owned());
    }
    let envoy = env::var_os("APITRACE_ENVOY").map(PathBuf::from);
    match &envoy {
        Some(path) if path.is_file() => {}
        Some(path) => missing.push(format!("Envoy at APITRACE_ENVOY={}", path.display())),
        None => missing.push("Envoy (set APITRACE_ENVOY)".to_owned()),
    }
    if missing.is_empty() {
        return envoy.map(|envoy| Real { envoy });
    }
    skip(&format!(
        "{test} runs Envoy and eBPF for real and needs {}",
        missing.join(" and ")
    ));
    None
}

/// The release's output directory, `target/dist`, when it holds `files`
/// (written by `cargo xtask release`, which `cargo xtask test` runs before the
/// tests). Otherwise, like [`real`], it says why and returns `None`, or fails
/// under `CI=true`.
pub fn released(test: &str, files: &[&str]) -> Option<PathBuf> {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dist");
    let missing: Vec<&str> = files
        .iter()
        .copied()
        .filter(|file| !dist.join(file).exists())
        .collect();
    if missing.is_empty() {
        return Some(dist);
    }
    skip(&format!(
        "{test} runs what the release built and target/dist lacks {} (`cargo xtask release` builds it)",
        missing.join(", ")
    ));
    None
}

/// Whether `test`, which needs root, can run; like [`real`], it fails under
/// `CI=true` rather than skip.
pub fn root(test: &str) -> bool {
    is_root() || {
        skip(&format!("{test} needs root"));
        false
    }
}

/// Says why a test is skipped, or fails it under `CI=true`.
fn skip(why: &str) {
    if env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{why}: under CI=true it must not be skipped; run it with `sudo cargo xtask test`");
    }
    eprintln!("skipped: {why}; `sudo cargo xtask test` runs it");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that the demo run by the CLI process `pid` left nothing: no network
/// namespace, no process, no work directory, and no TC program that nothing
/// holds any more (a program attached to an interface that outlived the probe).
pub fn assert_nothing_left(pid: u32) {
    let marker = format!("apitrace-demo-{pid}");
    let namespaces = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip runs")
            .stdout,
    )
    .into_owned();
    assert!(
        !namespaces.contains(&marker),
        "namespaces left behind:\n{namespaces}"
    );

    let processes: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.ok()?.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&marker).then_some(cmdline)
        })
        .collect();
    assert!(
        processes.is_empty(),
        "processes left behind: {processes:#?}"
    );

    let workdir = env::temp_dir().join(&marker);
    assert!(!workdir.exists(), "{} left behind", workdir.display());

    let cgroups = demo_cgroups(pid);
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");

    let orphans = wait_for_no_orphans();
    assert!(
        orphans.is_empty(),
        "TC programs still loaded with no process holding them: {orphans:#?}"
    );
}

/// Held while a test leaves a program orphaned on purpose, so that no other
/// test's check takes it for a leak of its own.
pub static DELIBERATE_ORPHANS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The programs still orphaned after the kernel had a moment to free what a
/// probe's exit released (a probe of another test may be exiting right now).
pub fn wait_for_no_orphans() -> Vec<String> {
    let _no_deliberate_orphans = DELIBERATE_ORPHANS.lock().unwrap_or_else(|e| e.into_inner());
    let mut orphans = orphaned_programs();
    for _ in 0..30 {
        if orphans.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        orphans = orphaned_programs();
    }
    orphans
}

/// The cgroups of the demo run by CLI `pid`, under either place the cgroup2
/// hierarchy is mounted (unified or hybrid systems).
pub fn demo_cgroups(pid: u32) -> Vec<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(|root| Path::new(root).join(format!("apitrace-demo-{pid}")))
        .filter(|path| path.exists())
        .collect()
}

/// Programs of ours still loaded that no process holds: attached to an
/// interface by a filter (or a pinned link) that outlived its probe. A
/// process holds a program through a program or link file descriptor, whose
/// `/proc/<pid>/fdinfo` names it (`prog_id:`); bpftool's own `pids` column is
/// not in every bpftool.
pub fn orphaned_programs() -> Vec<String> {
    let output = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool runs");
    let programs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let held = held_program_ids();
    programs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|program| {
            program["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("apitrace_"))
                && program["id"].as_u64().is_some_and(|id| !held.contains(&id))
        })
        .map(|program| format!("{} {}", program["id"], program["name"]))
        .collect()
}

/// Every BPF program id a process holds a file descriptor of (a program, or a
/// link to one).
fn held_program_ids() -> std::collections::HashSet<u64> {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    processes
        .flatten()
        .filter_map(|process| std::fs::read_dir(process.path().join("fdinfo")).ok())
        .flat_map(|fds| fds.flatten())
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|line| line.strip_prefix("prog_id:")?.trim().parse().ok())
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// Names of the namespaces these tests create: distinct from the demo's, and
/// distinct between the tests of one process.
pub fn pods(names: &[&'static str]) -> Topology {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let owner = std::process::id() * 64 + NEXT.fetch_add(1, Ordering::Relaxed);
    Topology::create("apitrace-test-", owner, names).expect("the test pods are built")
}

/// Sends one HTTP request from `client` to `address` with `x-request-id:
/// request_id`, and reads the answer.
pub fn call(client: &Pod, address: SocketAddr, request_id: &str) -> String {
    call_from_port(client, address, request_id).0
}

/// [`call`], and the client's end of the connection, for a test that writes
/// what a sidecar would have logged of the call.
pub fn call_from_port(client: &Pod, address: SocketAddr, request_id: &str) -> (String, SocketAddr) {
    run_in(
        &client.netns_path(),
        || -> std::io::Result<(String, SocketAddr)> {
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
            let source = stream.local_addr()?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            // One write, so one segment: the TC program reads a request's head
            // from its first segment only.
            stream.write_all(
                format!(
                    "GET /status HTTP/1.1\r\nhost: app\r\nx-request-id: {request_id}\r\n\
                 connection: close\r\n\r\n"
                )
                .as_bytes(),
            )?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok((answer, source))
        },
    )
    .expect("inside the client pod")
    .unwrap_or_else(|error| panic!("calling {address} failed: {error}"))
}

/// GET `path` from `address`, connecting from inside `netns`: the answer when
/// it is a 200, as a probe's readiness check or a test reads an endpoint.
pub fn http_get(netns: &Path, address: SocketAddr, path: &str) -> Option<String> {
    run_in(netns, || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: pod\r\nconnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .ok()?
    .ok()
    .filter(|answer| answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"))
}

/// Unpadded base64url, as JWT segments are written.
pub fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A TCP server inside a pod that answers every connection with an HTTP 200
/// and closes it; stopped when dropped.
pub struct App {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl App {
    pub fn serve(pod: &Pod, port: u16) -> Self {
        Self::serve_on(pod, std::net::IpAddr::from([0, 0, 0, 0]), port)
    }

    pub fn serve_on(pod: &Pod, address: std::net::IpAddr, port: u16) -> Self {
        let listener = run_in(&pod.netns_path(), || TcpListener::bind((address, port)))
            .expect("inside the pod")
            .expect("the port is free in the pod");
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let mut request = [0u8; 1024];
                        let _ = stream.read(&mut request);
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A real Envoy inside a pod, run as the proxy's user (as a sidecar
/// container runs it: the pod's outbound capture lets it through), its admin
/// on 127.0.0.1:15000 and its log in `log`; killed when dropped.
pub struct Envoy(pub Child);

impl Envoy {
    pub fn start(binary: &Path, pod: &Pod, config: &Path, log: &Path) -> Self {
        let line = kubectl_apitrace::demo::mesh::proxy_command(&pod.netns, binary, config, 1);
        let child = Command::new(&line[0])
            .args(&line[1..])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("Envoy's log file"))
            .spawn()
            .expect("Envoy starts");
        let mut envoy = Self(child);
        let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
        let started = Instant::now();
        // LIVE once its listener is up, with the module fetched from the probe.
        while !http_get(&pod.netns_path(), admin, "/ready").is_some_and(|a| a.contains("LIVE")) {
            let exited = envoy.0.try_wait().expect("Envoy's status");
            assert!(
                exited.is_none() && started.elapsed() < Duration::from_secs(30),
                "Envoy did not get ready ({exited:?}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        envoy
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
