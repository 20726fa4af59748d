//! The sidecar and the subscriber under faults, run for real. The probe traces
//! a pod whose Envoy runs the demo's sidecar bootstrap (Istio's inbound
//! capture, the WASM filter fetched from the probe, the gRPC access log to
//! it), and a subscriber joins what it streams as the CLI does. Envoy is
//! killed and restarted, or its access-log stream is cut, mid-session; a
//! subscriber falls far behind. After each, calls are joined from every layer
//! again, what was lost is counted, and the probe leaves nothing attached.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
        mpsc,
    },
    time::{Duration, Instant},
};

use apitrace_join::{CallRecord, Input, JoinConfig, Joiner, Workload, WorkloadKind};
use apitrace_netns::topology::{Pod, Topology};
use apitrace_proto::{
    Event, SESSION_TOKEN_HEADER, WASM_INGEST_PATH, WasmBatch, WasmEvent, event::Kind, istio, ports,
};
use futures::StreamExt as _;
use kubectl_apitrace::{
    demo::{
        http,
        mesh::{Layers, MeshPod, ProbeAt, Sidecar, iptables},
    },
    live::now_ns,
    probe_client::ProbeSession,
};
use prost::Message as _;
use serde_json::{Value, json};

use crate::{
    probe::Probe,
    support::{App, Envoy, Real, call, http_get, pods, real, wait_for_no_orphans},
};

const APP_PORT: u16 = 8080;
const NAMESPACE: &str = "test";
const PROBE_HOST: &str = "apitrace-probe.test.svc.cluster.local";

/// What the CLI does with a probe, on a thread of its own: subscribe, and
/// pass each event on. `slow` makes it take a millisecond over each event.
struct Subscriber {
    events: mpsc::Receiver<Event>,
    slow: Arc<AtomicBool>,
}

impl Subscriber {
    fn start(probe_pod: &Pod) -> Self {
        let (sender, events) = mpsc::channel();
        let slow = Arc::new(AtomicBool::new(false));
        let pacing = Arc::clone(&slow);
        let netns = probe_pod.netns_path();
        let address = SocketAddr::new(IpAddr::V4(probe_pod.ipv4), ports::SUBSCRIBE);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let channel = http::channel_in(&netns, address, "pod.demo")
                    .await
                    .expect("the probe's subscribe port answers");
                let mut session =
                    ProbeSession::new(channel, "test", "test-token").expect("a valid token");
                let mut events = session.subscribe().await.expect("the probe subscribes us");
                while let Some(Ok(event)) = events.next().await {
                    if sender.send(event).is_err() {
                        break;
                    }
                    if pacing.load(Relaxed) {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            });
        });
        Self { events, slow }
    }

    /// The next event within `timeout`, `None` if there was none.
    fn next(&self, timeout: Duration) -> Option<Event> {
        match self.events.recv_timeout(timeout) {
            Ok(event) => Some(event),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the subscription to the probe ended")
            }
        }
    }
}

/// A traced server pod with its sidecar, a client pod, the probe, and the
/// CLI's side: a subscriber and the join.
struct Stage {
    envoy: Option<Envoy>,
    /// Where the probe serves the filter module, and its sha256.
    module: (String, String),
    subscriber: Subscriber,
    probe: Probe,
    _app: App,
    pods: Topology,
    envoy_binary: PathBuf,
    files: PathBuf,
    joiner: Joiner,
    records: Vec<CallRecord>,
}

impl Stage {
    fn start(real: &Real) -> Self {
        let pods = pods(&["client", "server", "probe"]);
        let (server, probe_pod) = (pods.pod("server"), pods.pod("probe"));
        pods.restore_iptables(server, false, &iptables::capture(false, APP_PORT, None))
            .expect("the server pod's traffic capture");
        let app = App::serve(server, APP_PORT);
        let probe = Probe::start(probe_pod, server, &[]);
        let subscriber = Subscriber::start(probe_pod);
        let Some(Event {
            kind: Some(Kind::Status(status)),
        }) = subscriber.next(Duration::from_secs(10))
        else {
            panic!("the subscription did not start with the probe's status");
        };
        let files = std::env::temp_dir().join(format!("apitrace-sidecar-{}", server.netns));
        std::fs::create_dir_all(&files).expect("a directory for Envoy's files");
        let mut joiner = Joiner::new(JoinConfig::default());
        let mut records = Vec::new();
        for pod in &pods.pods {
            let workload = Workload {
                namespace: NAMESPACE.to_owned(),
                name: pod.name.to_owned(),
                kind: WorkloadKind::Pod,
                traced: pod.name == "server",
            };
            let ip = IpAddr::V4(pod.ipv4);
            joiner.apply(
                Input::Identity {
                    ip,
                    since_ns: 0,
                    workload,
                },
                &mut records,
            );
        }
        let mut stage = Self {
            envoy: None,
            module: (status.wasm_module_path, status.wasm_module_sha256),
            subscriber,
            probe,
            _app: app,
            pods,
            envoy_binary: real.envoy.clone(),
            files,
            joiner,
            records,
        };
        std::fs::write(
            stage.files.join("envoy.json"),
            stage.bootstrap(Layers::ALL).to_string(),
        )
        .expect("Envoy's bootstrap is written");
        stage.start_envoy();
        stage
    }

    /// The server's sidecar with `layers` of the session.
    fn bootstrap(&self, layers: Layers) -> Value {
        let (server, probe_pod) = (self.pods.pod("server"), self.pods.pod("probe"));
        Sidecar::serving(
            MeshPod {
                name: server.name,
                namespace: NAMESPACE,
                service_account: "default",
                ipv4: server.ipv4,
            },
            APP_PORT,
            ProbeAt {
                ip: probe_pod.ipv4,
                host: PROBE_HOST,
                module_path: &self.module.0,
                module_sha256: &self.module.1,
                session_token: "test-token",
                show_secrets: false,
            },
            layers,
        )
        .bootstrap()
    }

    fn start_envoy(&mut self) {
        self.envoy = Some(Envoy::start(
            &self.envoy_binary,
            self.pods.pod("server"),
            &self.files.join("envoy.json"),
            &self.files.join("envoy.log"),
        ));
    }

    fn server_address(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.pods.pod("server").ipv4), APP_PORT)
    }

    /// Calls the server once per id, then joins what the probe streams until
    /// each id has its record. Returns those records as the CLI prints them.
    fn calls(&mut self, ids: &[&str]) -> Vec<Value> {
        for id in ids {
            let answer = call(self.pods.pod("client"), self.server_address(), id);
            assert!(answer.starts_with("HTTP/1.1 200"), "{id}: {answer}");
        }
        let started = Instant::now();
        let joined = |records: &[CallRecord]| {
            ids.iter()
                .all(|id| records.iter().any(|record| record.request_id == *id))
        };
        while !joined(&self.records) {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "no record for some of {ids:?} within 15 s; records: {:#?}\nEnvoy's log:\n{}",
                self.records,
                std::fs::read_to_string(self.files.join("envoy.log")).unwrap_or_default()
            );
            let input = match self.subscriber.next(Duration::from_millis(100)) {
                Some(event) => Input::Event {
                    event,
                    now_ns: now_ns(),
                },
                None => Input::Tick { now_ns: now_ns() },
            };
            self.joiner.apply(input, &mut self.records);
        }
        self.records
            .iter()
            .filter(|record| ids.contains(&record.request_id.as_str()))
            .map(|record| serde_json::to_value(record).expect("a record is JSON"))
            .collect()
    }

    /// Stops the probe as the session's end does, removes the pods, and
    /// checks that no program, namespace or process is left.
    fn end(self) {
        let Self {
            envoy,
            probe,
            files,
            pods,
            ..
        } = self;
        drop(envoy);
        let exit = probe.signal(libc::SIGTERM);
        assert!(exit.success(), "the probe ended with {exit}");
        let orphans = wait_for_no_orphans();
        assert!(orphans.is_empty(), "programs left attached: {orphans:#?}");
        let namespaces: Vec<String> = pods.pods.iter().map(|pod| pod.netns.clone()).collect();
        drop(pods);
        let listed = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip runs");
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(
            namespaces
                .iter()
                .all(|netns| !listed.contains(netns.as_str())),
            "namespaces left: {listed}"
        );
        let envoys: Vec<String> = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|entry| std::fs::read(entry.ok()?.path().join("cmdline")).ok())
            .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
            .filter(|cmdline| cmdline.contains(&*files.to_string_lossy()))
            .collect();
        assert!(envoys.is_empty(), "processes left: {envoys:#?}");
        let _ = std::fs::remove_dir_all(&files);
    }
}

fn assert_every_layer(records: &[Value]) {
    for record in records {
        assert_eq!(
            record["layers"],
            serde_json::json!(["als", "wasm", "tc"]),
            "{record:#}"
        );
        assert_eq!(record["status"], 200, "{record:#}");
        assert_eq!(record["src"]["name"], "client", "{record:#}");
        assert_eq!(record["dst"]["name"], "server", "{record:#}");
    }
}

/// Counters of the probe by name, for the ones these tests read.
fn counter(metrics: &HashMap<String, u64>, name: &str) -> u64 {
    metrics.get(name).copied().unwrap_or(0)
}

const ACCESS_LOGS: &str = r#"apitrace_probe_events_total{source="als"}"#;
const WASM_EVENTS: &str = r#"apitrace_probe_events_total{source="wasm"}"#;
const ACCESS_LOG_STREAMS: &str = r#"apitrace_probe_streams_total{source="als"}"#;
const STREAMS_BROKEN: &str = r#"apitrace_probe_dropped_total{source="als",reason="stream_broken"}"#;

/// Every drop the probe counts, but for events seen before anyone subscribed.
fn drops(metrics: &HashMap<String, u64>) -> Vec<(&String, &u64)> {
    metrics
        .iter()
        .filter(|(name, value)| {
            name.starts_with("apitrace_probe_dropped_total")
                && !name.contains(r#"reason="none""#)
                && **value > 0
        })
        .collect()
}

/// Kubelet restarts a sidecar that died: the new Envoy fetches the module from
/// the probe again and opens a new access-log stream, and the session goes on
/// as before, every call joined from all three layers. A call made while no
/// sidecar listened was refused, and nothing was lost on the probe's side.
#[test]
fn a_sidecar_restarted_mid_session_is_traced_again_from_every_layer() {
    let Some(real) = real("the sidecar restart test") else {
        return;
    };
    let mut stage = Stage::start(&real);
    assert_every_layer(&stage.calls(&["before-1", "before-2", "before-3"]));

    let mut envoy = stage.envoy.take().expect("Envoy runs");
    envoy.0.kill().expect("Envoy is killed");
    envoy.0.wait().expect("Envoy is reaped");
    let server = stage.server_address();
    let refused = apitrace_netns::run_in(&stage.pods.pod("client").netns_path(), || {
        TcpStream::connect_timeout(&server, Duration::from_secs(2))
    })
    .expect("inside the client pod");
    assert_eq!(
        refused.map(|_| ()).map_err(|error| error.kind()),
        Err(std::io::ErrorKind::ConnectionRefused),
        "no sidecar listens"
    );

    stage.start_envoy();
    assert_every_layer(&stage.calls(&["after-1", "after-2", "after-3"]));
    let metrics = stage.probe.metrics();
    assert_eq!(
        (
            counter(&metrics, ACCESS_LOGS),
            counter(&metrics, WASM_EVENTS),
            counter(&metrics, ACCESS_LOG_STREAMS),
        ),
        (6, 6, 2),
        "each sidecar opened its own stream: {metrics:?}"
    );
    // The killed Envoy's stream broke with nothing in flight: counted, and
    // nothing else was lost.
    assert_eq!(
        drops(&metrics),
        [(&STREAMS_BROKEN.to_owned(), &1)],
        "{metrics:?}"
    );
    stage.end();
}

/// An access-log stream cut under Envoy (its connection to the probe reset,
/// as a restarted node network or a dropped conntrack entry would) is
/// reopened by Envoy on its next flush, and the calls after it are joined
/// from every layer.
#[test]
fn a_cut_access_log_stream_is_resumed_and_calls_are_joined_again() {
    let Some(real) = real("the access-log cut test") else {
        return;
    };
    let mut stage = Stage::start(&real);
    assert_every_layer(&stage.calls(&["before-1", "before-2"]));

    let probe_pod = stage.pods.pod("probe");
    let filter = format!("sport = :{}", ports::ACCESS_LOG);
    let killed = Command::new("ip")
        .args(["netns", "exec", &probe_pod.netns, "ss", "-K", "-t", "-n"])
        .arg(&filter)
        .output()
        .expect("ss runs");
    let killed = String::from_utf8_lossy(&killed.stdout).into_owned();
    assert_eq!(
        killed
            .lines()
            .filter(|line| line.starts_with("ESTAB"))
            .count(),
        1,
        "one access-log connection was reset:\n{killed}"
    );

    assert_every_layer(&stage.calls(&["after-1", "after-2"]));
    let metrics = stage.probe.metrics();
    assert_eq!(
        (
            counter(&metrics, ACCESS_LOGS),
            counter(&metrics, ACCESS_LOG_STREAMS),
        ),
        (4, 2),
        "Envoy opened a second stream: {metrics:?}"
    );
    assert_eq!(
        drops(&metrics),
        [(&STREAMS_BROKEN.to_owned(), &1)],
        "{metrics:?}"
    );
    stage.end();
}

/// A traced pod's listeners as istiod serves them, stood in for by a file
/// Envoy reads them from (LDS from `path_config_source`): a push is the file
/// written anew and moved over the old one, which Envoy sees through the
/// `watched_directory`, a directory nothing else writes to.
struct Listeners {
    directory: PathBuf,
    pushed: u32,
}

impl Listeners {
    fn in_directory(directory: PathBuf) -> Self {
        std::fs::create_dir_all(&directory).expect("a directory for the listeners");
        Self {
            directory,
            pushed: 0,
        }
    }

    /// `bootstrap` with its listeners moved to the file, which is written.
    fn serve(&mut self, mut bootstrap: Value) -> Value {
        self.push(&bootstrap);
        bootstrap["static_resources"]
            .as_object_mut()
            .expect("static resources")
            .remove("listeners");
        bootstrap["dynamic_resources"] = json!({ "lds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": self.directory.join("listeners.json"),
                "watched_directory": { "path": self.directory },
            },
        } });
        bootstrap
    }

    /// Pushes the listeners of `bootstrap`.
    fn push(&mut self, bootstrap: &Value) {
        self.pushed += 1;
        let resources: Vec<Value> = bootstrap["static_resources"]["listeners"]
            .as_array()
            .expect("listeners")
            .iter()
            .map(|listener| {
                let mut listener = listener.clone();
                listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
                listener
            })
            .collect();
        let file = json!({ "version_info": self.pushed.to_string(), "resources": resources });
        let written = self.directory.join("listeners.json.new");
        std::fs::write(&written, file.to_string()).expect("the listeners are written");
        std::fs::rename(&written, self.directory.join("listeners.json"))
            .expect("the listeners are moved into place");
    }
}

/// One of the counters on the admin port of the server pod's Envoy.
fn envoy_stat(server: &Pod, name: &str) -> Option<u64> {
    let admin = SocketAddr::from(([127, 0, 0, 1], 15000));
    let answer = http_get(
        &server.netns_path(),
        admin,
        "/stats?filter=listener_manager",
    )?;
    answer
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
}

/// Sends a request on a connection kept open and reads its response, head
/// and body (the app's `ok`).
fn request(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /status HTTP/1.1\r\nhost: app\r\n\r\n")
        .expect("the request is sent");
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    while !(answer.windows(4).any(|end| end == b"\r\n\r\n") && answer.ends_with(b"ok")) {
        let read = stream
            .read(&mut buffer)
            .expect("the response comes within the read timeout");
        assert!(
            read > 0,
            "the connection closed before the response: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A session's setup as istiod pushes it to a traced pod's sidecar: its
/// listener filter chains gain the filter and the access log. Envoy, run
/// with istio-agent's drain flags, updates the listener in place and drains
/// the connections on the old chains: a keep-alive client's next response
/// says `connection: close`, an idle connection is closed by the sidecar,
/// not at once but within Istio's drain duration, and a new connection gets
/// the new chains, its call joined from every layer. Prints how long the
/// idle connection lasted (BENCHMARKS.md, "The sidecars' drain").
#[test]
fn a_changed_filter_chain_tells_keep_alive_clients_to_reconnect_and_closes_idle_ones_within_the_drain()
 {
    let Some(real) = real("the filter-chain drain test") else {
        return;
    };
    let mut stage = Stage::start(&real);
    // The sidecar as it was before the session, its listeners from "istiod".
    drop(stage.envoy.take());
    let mut listeners = Listeners::in_directory(stage.files.join("lds"));
    let before = listeners.serve(stage.bootstrap(Layers {
        access_log: false,
        filter: false,
    }));
    std::fs::write(stage.files.join("envoy.json"), before.to_string())
        .expect("Envoy's bootstrap is written");
    stage.start_envoy();
    let server = stage.server_address();
    let connect = || {
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok::<_, std::io::Error>(stream)
    };
    let (mut busy, mut idle) =
        apitrace_netns::run_in(&stage.pods.pod("client").netns_path(), || {
            (connect(), connect())
        })
        .expect("inside the client pod");
    let (busy, idle) = (
        busy.as_mut().expect("a connection to the server"),
        idle.as_mut().expect("a connection to the server"),
    );
    for stream in [&mut *busy, &mut *idle] {
        let answer = request(stream);
        assert!(
            answer.starts_with("HTTP/1.1 200") && !answer.contains("connection: close"),
            "{answer}"
        );
    }

    let pushed = Instant::now();
    listeners.push(&stage.bootstrap(Layers::ALL));
    let server_pod = stage.pods.pod("server");
    while envoy_stat(server_pod, "listener_manager.lds.update_success") != Some(2) {
        assert!(
            pushed.elapsed() < Duration::from_secs(10),
            "Envoy did not take the pushed listeners within 10 s:\n{}",
            std::fs::read_to_string(stage.files.join("envoy.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        envoy_stat(server_pod, "listener_manager.listener_in_place_updated") >= Some(1),
        "only the filter chains changed: the listeners are updated in place"
    );
    let answer = request(busy);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\r\nconnection: close\r\n"),
        "the next response tells the client to reconnect:\n{answer}"
    );
    assert_every_layer(&stage.calls(&["after-the-push"]));

    let drain = Duration::from_secs(istio::DRAIN_DURATION_S.into());
    idle.set_read_timeout(Some(drain + Duration::from_secs(5)))
        .expect("a read timeout");
    let read = idle.read(&mut [0]);
    let lasted = pushed.elapsed();
    assert!(
        matches!(read, Ok(0)),
        "the idle connection is closed by the sidecar: {read:?} after {lasted:?}"
    );
    assert!(
        lasted > Duration::from_secs(1) && lasted <= drain + Duration::from_secs(1),
        "closed after {lasted:?}, not at once and within the drain of {drain:?}"
    );
    println!(
        "filter-chain drain: the idle keep-alive connection was closed {:.1} s after the push (drain duration {} s)",
        lasted.as_secs_f64(),
        istio::DRAIN_DURATION_S
    );
    stage.end();
}

/// The probe's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the probe runs");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Posts `count` events in batches of 500 to the probe's WASM ingest, from the
/// traced pod, as its filter would.
fn post_events(server: &Pod, probe: Ipv4Addr, round: usize, count: usize) {
    for batch_index in 0..count / 500 {
        let batch = WasmBatch {
            events: (0..500)
                .map(|index| WasmEvent {
                    request_id: format!("flood-{round}-{batch_index}-{index}"),
                    method: "GET".into(),
                    path: "/api/orders".into(),
                    status: 200,
                    ..WasmEvent::default()
                })
                .collect(),
            ..WasmBatch::default()
        }
        .encode_to_vec();
        let answer = apitrace_netns::run_in(&server.netns_path(), || -> std::io::Result<String> {
            let mut stream = TcpStream::connect((probe, ports::HTTP))?;
            write!(
                stream,
                "POST {WASM_INGEST_PATH} HTTP/1.1\r\nhost: probe\r\n\
                 {SESSION_TOKEN_HEADER}: test-token\r\ncontent-type: application/x-protobuf\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                batch.len()
            )?;
            stream.write_all(&batch)?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        })
        .expect("inside the server pod")
        .expect("the probe answers");
        assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    }
}

/// A subscriber that reads a thousand events a second while the probe
/// receives a hundred times more: the probe never waits for it and its memory
/// stays flat, the subscriber loses the oldest events, and every event is
/// either received or counted as lost.
#[test]
fn a_slow_subscriber_costs_the_probe_no_memory_and_every_lost_event_is_counted() {
    let Some(_) = real("the slow subscriber test") else {
        return;
    };
    const ROUND: usize = 50_000;
    let pods = pods(&["server", "probe"]);
    let (server, probe_pod) = (pods.pod("server"), pods.pod("probe"));
    let probe = Probe::start(probe_pod, server, &[]);
    let subscriber = Subscriber::start(probe_pod);
    assert!(subscriber.next(Duration::from_secs(10)).is_some());
    subscriber.slow.store(true, Relaxed);

    let mut rss = vec![rss_kib(probe.pid())];
    for round in 0..4 {
        post_events(server, probe_pod.ipv4, round, ROUND);
        rss.push(rss_kib(probe.pid()));
    }
    // The probe never waited: it is done while the subscriber is far behind.
    subscriber.slow.store(false, Relaxed);
    let mut received = 0;
    while let Some(event) = subscriber.next(Duration::from_secs(2)) {
        received += u64::from(matches!(event.kind, Some(Kind::Wasm(_))));
    }
    let metrics = probe.metrics();
    let posted = 4 * ROUND as u64;
    let lagged = counter(
        &metrics,
        r#"apitrace_probe_dropped_total{source="subscriber",reason="lagged"}"#,
    );
    assert_eq!(counter(&metrics, WASM_EVENTS), posted, "{metrics:?}");
    assert!(lagged > 0 && received > 0, "{received} {metrics:?}");
    assert_eq!(
        received + lagged,
        posted,
        "every event is received or counted as lost: {metrics:?}"
    );
    eprintln!("probe RSS by round (KiB): {rss:?}; received {received}, lagged {lagged}");
    // Once the hub's buffer is full, more events cost no more memory.
    let growth = rss[4].saturating_sub(rss[2]);
    assert!(
        growth < 8 * 1024,
        "the probe grew by {growth} KiB over the last 100 000 events: {rss:?}"
    );
    // The hub's 32 768 events (about 21 MiB) and the subscription's
    // transport buffers are all a stalled subscriber costs.
    let buffered = rss[4].saturating_sub(rss[0]);
    assert!(
        buffered < 32 * 1024,
        "a stalled subscriber cost the probe {buffered} KiB: {rss:?}"
    );
    let exit = probe.signal(libc::SIGTERM);
    assert!(exit.success(), "the probe ended with {exit}");
    let orphans = wait_for_no_orphans();
    assert!(orphans.is_empty(), "programs left attached: {orphans:#?}");
}

/// Both of the demo mesh's sidecars, with mTLS, pass Envoy's own check of
/// its configuration: every field name and value is one Envoy's API has.
#[test]
fn the_demo_meshs_sidecars_pass_envoys_own_validation() {
    use kubectl_apitrace::demo::mesh::{
        PortProtocol, Service,
        certs::{MeshCa, spiffe_id},
    };
    let Some(real) = real("Envoy's validation of the demo mesh") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("apitrace-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let ca = MeshCa::create(&dir).expect("the demo CA");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let client_files = ca
        .issue(&spiffe_id("demo", "client"), &dir.join("client"), uid)
        .expect("the client's certificate");
    let server_files = ca
        .issue(&spiffe_id("demo", "server"), &dir.join("server"), uid)
        .expect("the server's certificate");
    let probe = ProbeAt {
        ip: Ipv4Addr::new(198, 18, 0, 30),
        host: PROBE_HOST,
        module_path: "/wasm/m.wasm",
        module_sha256: "ab",
        session_token: "t",
        show_secrets: false,
    };
    // An HTTP/1.1 port, and one of gRPC's (HTTP/2 from the caller's sidecar on).
    for protocol in [PortProtocol::Http, PortProtocol::Grpc] {
        let services = [Service {
            name: "server",
            cluster_ipv4: kubectl_apitrace::demo::mesh::SERVICE_V4,
            cluster_ipv6: kubectl_apitrace::demo::mesh::SERVICE_V6,
            port: APP_PORT,
            protocol,
            endpoint: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 20)),
            target_port: APP_PORT,
            service_account: "server",
        }];
        let client = Sidecar {
            pod: MeshPod {
                name: "client",
                namespace: NAMESPACE,
                service_account: "client",
                ipv4: Ipv4Addr::new(198, 18, 0, 10),
            },
            app_port: None,
            app_protocol: PortProtocol::Http,
            services: &services,
            probe,
            layers: Layers::ALL,
            mtls: Some(&client_files),
        };
        let mut server = Sidecar::serving(
            MeshPod {
                name: "server",
                namespace: NAMESPACE,
                service_account: "server",
                ipv4: Ipv4Addr::new(198, 18, 0, 20),
            },
            APP_PORT,
            probe,
            Layers::ALL,
        );
        server.mtls = Some(&server_files);
        server.app_protocol = protocol;
        for (name, sidecar) in [("client", &client), ("server", &server)] {
            let config = dir.join(format!("{name}-{}.json", protocol.port_name()));
            std::fs::write(&config, sidecar.bootstrap().to_string()).expect("the bootstrap");
            let output = Command::new(&real.envoy)
                .args(["--mode", "validate", "--config-path"])
                .arg(&config)
                .output()
                .expect("Envoy runs");
            assert!(
                output.status.success(),
                "Envoy refuses the {name}'s sidecar for a {protocol:?} port:\n{}",
                crate::support::stderr(&output)
            );
        }
    }
    std::fs::remove_dir_all(&dir).expect("the files are removed");
}
