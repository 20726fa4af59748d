//! One run of the demo.
//!
//! Start-up, in order: remove what a killed demo left; build the pods (node,
//! client, server, probe namespaces); capture both sidecar pods' traffic
//! (iptables, as Istio's init container does); start the app in the server
//! pod; issue the mesh's certificates; start the probe in its pod, attached
//! to both sidecar pods; subscribe to it; start each pod's Envoy sidecar as
//! the proxy's user, which fetches the WASM module from the probe and streams
//! access logs to it. Then the client pod's app calls the server's Service:
//! its sidecar takes the call (outbound capture), sends it to the server's
//! sidecar over mTLS (or in plaintext with `--plaintext`), which hands it to
//! the app from 127.0.0.6; the CLI joins what the probe streams.
//!
//! When the client is done (or on Ctrl-C), the demo waits for what the
//! sidecars had not flushed yet ([`crate::pipeline::Drain`]), then ends.
//!
//! Teardown runs backwards. Each piece is also a guard that undoes itself when
//! dropped, so an error, an interruption or a panic at any step leaves no
//! namespace, process or attachment behind; a CLI killed outright takes its
//! children with it (see [`super::child`]) and the next demo sweeps its
//! namespaces.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use apitrace_join::{Input, Workload, WorkloadKind};
use apitrace_proto::{
    Event, ProbeStatus,
    event::Kind,
    istio, ports,
    probe_args::{ProbeArgs, ProbeTarget, SESSION_TOKEN_ENV},
};
use futures::{StreamExt as _, stream::BoxStream};

use apitrace_netns::cgroup::{self, ContainerCgroup};

use super::{
    child::DemoProcess,
    http,
    mesh::{self, Layers, Layout, ProbeAt, SERVICE_V4, SERVICE_V6},
    plan::Plan,
    topology::{self, Pod, Topology},
    traffic::{self, APP_PORT},
};
use crate::{
    live::{interrupted, now_ns, random_hex},
    pipeline::{Drain, Pipeline},
    probe_client::ProbeSession,
};

const NAMESPACE: &str = "demo";
const PROBE_HOST: &str = "apitrace-probe.demo.svc.cluster.local";
/// The probe's own time box: it exits after this whatever happens to the CLI.
const PROBE_DEADLINE: Duration = Duration::from_secs(600);
/// How long the probe and Envoy get to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The demo's mesh: the client and the server pod, as `plan` asks.
fn layout<'a>(plan: &Plan, topology: &'a Topology) -> Layout<'a> {
    Layout {
        namespace: NAMESPACE,
        client: topology.pod("client"),
        server: topology.pod("server"),
        app_port: APP_PORT,
        protocol: traffic::port_protocol(plan.traffic.protocol),
        caller_outside_mesh: plan.traffic.caller_outside_mesh,
        plaintext: plan.traffic.plaintext,
        ipv6: plan.traffic.ipv6,
    }
}

pub async fn run(plan: &Plan, mut pipeline: Pipeline<impl Write>) -> anyhow::Result<ExitCode> {
    let stale = |pid| !super::is_running_demo(pid);
    for name in topology::sweep_stale(super::NAME_PREFIX, stale) {
        eprintln!("removed network namespace {name}, left by a demo that was killed");
    }
    for path in cgroup::sweep_stale(super::NAME_PREFIX, stale) {
        eprintln!(
            "removed cgroup {}, left by a demo that was killed",
            path.display()
        );
    }
    let (calls, code) = match start_and_trace(plan, &mut pipeline).await? {
        Traced::Done(calls) => (Some(calls), ExitCode::SUCCESS),
        Traced::Interrupted => {
            eprintln!("interrupted: the demo's namespaces and processes were removed");
            (None, ExitCode::from(130))
        }
        Traced::Stopped => (None, ExitCode::SUCCESS),
    };
    // What was joined before an interruption is printed too.
    let outcome = pipeline.finish()?;
    eprintln!("{}", outcome.report(calls));
    Ok(code)
}

/// How the demo's traffic ended.
enum Traced {
    /// The client made this many calls: each should have become a record.
    Done(u32),
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// `--until`: enough calls matched, and the client was stopped.
    Stopped,
}

/// Runs the demo and feeds what the probe streams to `pipeline`.
async fn start_and_trace(
    plan: &Plan,
    pipeline: &mut Pipeline<impl Write>,
) -> anyhow::Result<Traced> {
    let mut demo = tokio::select! {
        demo = Demo::start(plan) => demo?,
        () = interrupted() => return Ok(Traced::Interrupted),
    };
    let traced = demo.trace(plan, pipeline).await;
    demo.stop().await;
    traced
}

/// A pod's sandbox: a process in its namespace and in a cgroup named after a
/// container ID, which is all the probe is told.
struct Sandbox {
    pause: DemoProcess,
    cgroup: ContainerCgroup,
    container_id: String,
}

impl Sandbox {
    fn start(pod: &Pod, workdir: &WorkDir) -> anyhow::Result<Self> {
        let container_id = random_hex(32)?;
        let cgroup =
            ContainerCgroup::create(super::NAME_PREFIX, std::process::id(), &container_id)?;
        let mut command = tokio::process::Command::new("sleep");
        command.arg("infinity");
        let pause = DemoProcess::spawn(
            "pause",
            command,
            &pod.netns_path(),
            Some(&cgroup.procs),
            None,
            workdir.path.join(format!("pause-{}.log", pod.name)),
        )?;
        Ok(Self {
            pause,
            cgroup,
            container_id,
        })
    }
}

/// The demo's running pieces, in the order they are torn down.
struct Demo {
    events: BoxStream<'static, Result<Event, tonic::Status>>,
    probe_session: ProbeSession,
    /// tcpdump on each sidecar pod's interfaces, with `--pcap`.
    captures: Vec<DemoProcess>,
    sidecars: Vec<DemoProcess>,
    probe: DemoProcess,
    sandboxes: Vec<Sandbox>,
    app: AbortOnDrop<()>,
    topology: Topology,
    workdir: WorkDir,
}

impl Demo {
    async fn start(plan: &Plan) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let workdir = WorkDir::create(pid)?;
        let topology = Topology::create(super::NAME_PREFIX, pid, &["client", "server", "probe"])
            .context("cannot build the demo's pods")?;
        let server = topology.pod("server").clone();
        let probe_pod = topology.pod("probe").clone();
        let mesh = layout(plan, &topology);
        mesh.capture(&topology, plan.traffic.loss)?;
        let listener = http::listen_in(
            &server.netns_path(),
            // Both families: the sidecar reaches the app at the address of the
            // family it was called over (inbound passthrough).
            SocketAddr::from(([0u16; 8], APP_PORT)),
        )
        .context("cannot start the app in the server pod")?;
        let app = AbortOnDrop(tokio::spawn(http::serve_app(listener)));
        let sandboxes = mesh
            .sidecar_pods()
            .into_iter()
            .map(|(pod, _)| Sandbox::start(pod, &workdir))
            .collect::<anyhow::Result<Vec<_>>>()?;

        let session_id = random_hex(4)?;
        let token = random_hex(24)?;
        let mut command = tokio::process::Command::new(&plan.probe);
        let targets = mesh
            .sidecar_pods()
            .into_iter()
            .zip(&sandboxes)
            .map(|((pod, _), sandbox)| ProbeTarget {
                namespace: NAMESPACE.to_owned(),
                name: pod.name.to_owned(),
                netns: format!("container:{}", sandbox.container_id),
            })
            .collect();
        let mut probe_args = ProbeArgs::new(session_id.clone(), targets, PROBE_DEADLINE);
        probe_args.node = Some("demo-node".to_owned());
        command.args(probe_args.to_args());
        command.env(SESSION_TOKEN_ENV, &token);
        let mut probe = DemoProcess::spawn(
            "probe",
            command,
            &probe_pod.netns_path(),
            None,
            None,
            workdir.path.join("probe.log"),
        )?;
        let (probe_session, events, status) =
            subscribe(&mut probe, &probe_pod, &session_id, &token).await?;

        let probe_at = ProbeAt {
            ip: probe_pod.ipv4,
            host: PROBE_HOST,
            module_path: &status.wasm_module_path,
            module_sha256: &status.wasm_module_sha256,
            session_token: &token,
            show_secrets: plan.show_secrets,
        };
        let mut sidecars = Vec::new();
        for sidecar in mesh.write_bootstraps(&workdir.path, probe_at, Layers::ALL)? {
            sidecars.push(start_sidecar(plan, sidecar.pod, &sidecar.config, &workdir).await?);
        }

        let captures = match &plan.pcap {
            Some(dir) => capture(&topology, &mesh, dir, &workdir).await?,
            None => Vec::new(),
        };
        Ok(Self {
            events,
            probe_session,
            captures,
            sidecars,
            probe,
            sandboxes,
            app,
            topology,
            workdir,
        })
    }

    /// Sends the client's requests and joins what the probe streams until every
    /// request has its record or the drain time is over.
    async fn trace(
        &mut self,
        plan: &Plan,
        pipeline: &mut Pipeline<impl Write>,
    ) -> anyhow::Result<Traced> {
        let mesh = layout(plan, &self.topology);
        for pod in &self.topology.pods {
            for ip in [IpAddr::V4(pod.ipv4), IpAddr::V6(pod.ipv6)] {
                pipeline.feed(Input::Identity {
                    ip,
                    since_ns: 0,
                    workload: Workload {
                        namespace: NAMESPACE.to_owned(),
                        name: pod.name.to_owned(),
                        kind: WorkloadKind::Pod,
                        traced: mesh
                            .sidecar_pods()
                            .iter()
                            .any(|(traced, _)| traced.name == pod.name),
                    },
                })?;
            }
        }
        for ip in [IpAddr::V4(SERVICE_V4), IpAddr::V6(SERVICE_V6)] {
            pipeline.feed(Input::Identity {
                ip,
                since_ns: 0,
                workload: Workload {
                    namespace: NAMESPACE.to_owned(),
                    name: "server".to_owned(),
                    kind: WorkloadKind::Service,
                    traced: false,
                },
            })?;
        }
        let client = self.topology.pod("client").clone();
        let now_unix = now_ns().unsigned_abs() / 1_000_000_000;
        let requests = tokio::spawn(traffic::send(
            client,
            mesh.target(),
            mesh.authority(),
            plan.traffic.clone(),
            now_unix,
        ));
        let mut requests = AbortOnDrop(requests);
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        // How the session ended, and when.
        let mut ended: Option<(Traced, i64)> = None;
        loop {
            if ended.is_none()
                && let Some(reached) = pipeline.until_reached()
            {
                let says = format!("{reached}: the client was stopped; {}", Drain::notice());
                ended = Some((Traced::Stopped, stop_calling(&requests, &says)));
            }
            if let Some((_, ended_ns)) = ended
                && pipeline.drained(ended_ns, now_ns())
            {
                break;
            }
            tokio::select! {
                event = self.events.next() => self.event(event, pipeline)?,
                _ = ticks.tick() => pipeline.feed(Input::Tick { now_ns: now_ns() })?,
                sent = &mut requests.0, if ended.is_none() => ended = Some((Traced::Done(self.client_done(sent)?), now_ns())),
                () = interrupted(), if ended.is_none() => ended = Some((Traced::Interrupted, stop_calling(&requests, INTERRUPTED))),
                () = interrupted(), if ended.is_some() => return Ok(Traced::Interrupted),
            }
        }
        // Every call that left any trace was emitted when its window closed,
        // which the drain outlasts.
        if pipeline.records() == 0 {
            bail!(
                "the client's requests succeeded but no layer observed them\n{}",
                self.probe.log_tail()
            );
        }
        // The probe's counters now, after the last event: the summary's drops,
        // and a replay's.
        let status =
            self.probe_session.status().await.map_err(|status| {
                anyhow!("cannot read the probe's counters: {}", status.message())
            })?;
        pipeline.feed(Input::Event {
            event: Event {
                kind: Some(Kind::Status(status)),
            },
            now_ns: now_ns(),
        })?;
        // The loop ends only once the session has.
        Ok(ended.map_or(Traced::Interrupted, |(why, _)| why))
    }

    /// Joins an event from the probe; the probe's stream failing or ending
    /// ends the demo.
    fn event(
        &self,
        event: Option<Result<Event, tonic::Status>>,
        pipeline: &mut Pipeline<impl Write>,
    ) -> anyhow::Result<()> {
        match event {
            Some(Ok(event)) => pipeline.feed(Input::Event {
                event,
                now_ns: now_ns(),
            })?,
            Some(Err(status)) => bail!(
                "the probe's event stream failed: {}\n{}",
                status.message(),
                self.probe.log_tail()
            ),
            None => bail!(
                "the probe ended its event stream\n{}",
                self.probe.log_tail()
            ),
        }
        Ok(())
    }

    /// How many calls the client made, once it is done.
    fn client_done(
        &self,
        sent: Result<anyhow::Result<u32>, tokio::task::JoinError>,
    ) -> anyhow::Result<u32> {
        let calls = sent
            .map_err(|e| anyhow!("the client pod stopped: {e}"))?
            .map_err(|e| anyhow!("{e:#}\n{}", self.sidecar_logs()))?;
        eprintln!("the client made {calls} calls; {}", Drain::notice());
        Ok(calls)
    }

    /// The end of each sidecar's log, for an error message.
    fn sidecar_logs(&self) -> String {
        self.sidecars
            .iter()
            .map(DemoProcess::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the sidecars, then the probe (which detaches from the pods),
    /// then the pods' sandboxes and the app; dropping the rest removes the
    /// cgroups, the namespaces and the work directory.
    async fn stop(self) {
        let Self {
            events,
            captures,
            sidecars,
            probe,
            sandboxes,
            app,
            topology,
            workdir,
            ..
        } = self;
        drop(events);
        // SIGTERM: tcpdump writes what it holds and closes its file.
        for capture in captures {
            capture.stop(Duration::from_secs(2)).await;
        }
        for sidecar in sidecars {
            sidecar.stop(Duration::from_secs(2)).await;
        }
        probe.stop(Duration::from_secs(3)).await;
        for sandbox in sandboxes {
            sandbox.pause.stop(Duration::from_secs(1)).await;
            drop(sandbox.cgroup);
        }
        drop(app);
        drop(topology);
        drop(workdir);
    }
}

/// Connects to the probe inside its pod (the demo's port-forward) and
/// subscribes, retrying while it starts. Returns the session, its events and
/// the probe's first status.
async fn subscribe(
    probe: &mut DemoProcess,
    pod: &Pod,
    session_id: &str,
    token: &str,
) -> anyhow::Result<(
    ProbeSession,
    BoxStream<'static, Result<Event, tonic::Status>>,
    ProbeStatus,
)> {
    let address = SocketAddr::new(IpAddr::V4(pod.ipv4), ports::SUBSCRIBE);
    let netns = pod.netns_path();
    let started = Instant::now();
    loop {
        if let Some(status) = probe.exited() {
            bail!(
                "the probe exited during start-up ({status}):\n{}",
                probe.log_tail()
            );
        }
        let attempt = async {
            let channel = http::channel_in(&netns, address, "pod.demo").await?;
            let mut session = ProbeSession::new(channel, session_id, token)?;
            let mut events = session.subscribe().await?.boxed();
            match events.next().await {
                Some(Ok(Event {
                    kind: Some(Kind::Status(status)),
                })) if status.ready => Ok((session, events, status)),
                other => Err(anyhow!(
                    "the probe did not start with its status: {other:?}"
                )),
            }
        };
        match attempt.await {
            Ok(subscribed) => return Ok(subscribed),
            Err(error) if started.elapsed() > START_TIMEOUT => {
                bail!(
                    "the probe did not accept the subscription within {START_TIMEOUT:?}: {error:#}\n{}",
                    probe.log_tail()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Starts a sidecar in `pod` with the bootstrap `config`, as the proxy's
/// user, and waits until it is ready.
async fn start_sidecar(
    plan: &Plan,
    pod: &Pod,
    config: &Path,
    workdir: &WorkDir,
) -> anyhow::Result<DemoProcess> {
    let mut command = tokio::process::Command::new(&plan.envoy);
    command.args(mesh::command_line(config, 2));
    let mut envoy = DemoProcess::spawn(
        "envoy",
        command,
        &pod.netns_path(),
        None,
        Some(istio::PROXY_UID),
        workdir.path.join(format!("envoy-{}.log", pod.name)),
    )?;
    wait_until_ready(&mut envoy, pod).await?;
    Ok(envoy)
}

/// Starts tcpdump on each sidecar pod's `eth0` and `lo`, writing
/// `dir/<pod>-<interface>.pcap`, and waits until each is capturing.
async fn capture(
    topology: &Topology,
    mesh: &Layout<'_>,
    dir: &Path,
    workdir: &WorkDir,
) -> anyhow::Result<Vec<DemoProcess>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut captures = Vec::new();
    for (pod, _) in mesh.sidecar_pods() {
        let name = pod.name;
        for interface in ["eth0", "lo"] {
            let file = dir.join(format!("{name}-{interface}.pcap"));
            let mut command = tokio::process::Command::new("tcpdump");
            command
                .args(["-i", interface, "-U", "-s", "0", "-Z", "root", "-w"])
                .arg(&file)
                .arg("tcp");
            let log = workdir.path.join(format!("tcpdump-{name}-{interface}.log"));
            captures.push((
                DemoProcess::spawn(
                    "tcpdump",
                    command,
                    &topology.pod(name).netns_path(),
                    None,
                    None,
                    log.clone(),
                )?,
                log,
            ));
        }
    }
    let started = Instant::now();
    for (capture, log) in &mut captures {
        while !std::fs::read_to_string(&*log).is_ok_and(|text| text.contains("listening on")) {
            if let Some(status) = capture.exited() {
                bail!(
                    "tcpdump exited during start-up ({status}):\n{}",
                    capture.log_tail()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "tcpdump did not start within {START_TIMEOUT:?}:\n{}",
                    capture.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(captures.into_iter().map(|(capture, _)| capture).collect())
}

/// Waits for Envoy's admin endpoint to report LIVE: its listener is up, with
/// the WASM module fetched from the probe.
async fn wait_until_ready(envoy: &mut DemoProcess, server: &Pod) -> anyhow::Result<()> {
    let admin = SocketAddr::from(([127, 0, 0, 1], mesh::ADMIN_PORT));
    let started = Instant::now();
    loop {
        if let Some(status) = envoy.exited() {
            bail!(
                "Envoy exited during start-up ({status}):\n{}",
                envoy.log_tail()
            );
        }
        if let Ok(stream) = http::connect_in(&server.netns_path(), admin).await
            && let Ok(mut connection) = http::Connection::over(stream).await
            && let Ok((status, body)) = connection.get("admin", "/ready", None).await
            && status.is_success()
            && body.starts_with(b"LIVE")
        {
            return Ok(());
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "Envoy was not ready within {START_TIMEOUT:?}:\n{}",
                envoy.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops the client calling (Ctrl-C, or `--until` reached) and says so;
/// what it called is still joined.
/// Returns when the session ended.
fn stop_calling(requests: &AbortOnDrop<anyhow::Result<u32>>, says: &str) -> i64 {
    requests.0.abort();
    eprintln!("{says}");
    now_ns()
}

/// What the demo says when Ctrl-C stops its client.
const INTERRUPTED: &str = "interrupted: joining the calls made so far (Ctrl-C again to stop now)";

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The demo's files (configuration, logs), removed with it.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(pid: u32) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("apitrace-demo-{pid}"));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
