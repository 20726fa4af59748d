//! One run of the demo.
//!
//! Start-up, in order: remove what a killed demo left; build the pods (node,
//! client, server, probe namespaces); capture the server pod's inbound traffic
//! for the sidecar (iptables, as Istio's init container does); start the app;
//! start the probe in its pod, attached to the server pod; subscribe to it;
//! start Envoy as the server's sidecar, which fetches the WASM module from the
//! probe and streams access logs to it. Then the client pod sends its requests
//! and the CLI joins what the probe streams.
//!
//! Teardown runs backwards. Each piece is also a guard that undoes itself when
//! dropped, so an error, an interruption or a panic at any step leaves no
//! namespace, process or attachment behind; a CLI killed outright takes its
//! children with it (see [`super::child`]) and the next demo sweeps its
//! namespaces.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use apitrace_join::{Input, Workload, WorkloadKind};
use apitrace_proto::{Event, ProbeStatus, event::Kind, ports};
use futures::{StreamExt as _, stream::BoxStream};

use apitrace_netns::cgroup::{self, ContainerCgroup};

use super::{
    child::DemoProcess,
    envoy::{self, Layers, Sidecar},
    http,
    plan::Plan,
    topology::{self, Pod, Topology},
    traffic::{self, APP_PORT},
};
use crate::{
    live::{interrupted, now_ns, random_hex},
    pipeline::Pipeline,
    probe_client::ProbeSession,
};

const NAMESPACE: &str = "demo";
const PROBE_HOST: &str = "apitrace-probe.demo.svc.cluster.local";
/// The probe's own time box: it exits after this whatever happens to the CLI.
const PROBE_DEADLINE: &str = "10m";
/// How long the probe and Envoy get to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the last records after the client's last request: the
/// sidecar flushes access logs every second, and a call missing a layer is
/// emitted when its join window (5 s) closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);

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
    let (calls, code) = tokio::select! {
        calls = start_and_trace(plan, &mut pipeline) => (Some(calls?), ExitCode::SUCCESS),
        () = interrupted() => {
            eprintln!("interrupted: the demo's namespaces and processes were removed");
            (None, ExitCode::from(130))
        }
    };
    // What was joined before an interruption is printed too.
    let outcome = pipeline.finish()?;
    eprintln!("{}", outcome.summary(calls));
    Ok(code)
}

/// Runs the demo and feeds what the probe streams to `pipeline`. Returns how
/// many calls the client made: each should have become a record.
async fn start_and_trace(plan: &Plan, pipeline: &mut Pipeline<impl Write>) -> anyhow::Result<u32> {
    let mut demo = Demo::start(plan).await?;
    let traced = demo.trace(plan, pipeline).await;
    demo.stop().await;
    traced
}

/// The demo's running pieces, in the order they are torn down.
struct Demo {
    events: BoxStream<'static, Result<Event, tonic::Status>>,
    probe_session: ProbeSession,
    envoy: DemoProcess,
    probe: DemoProcess,
    pause: DemoProcess,
    app: AbortOnDrop<()>,
    cgroup: ContainerCgroup,
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
        for ipv6 in [false, true] {
            topology
                .restore_iptables(
                    &server,
                    ipv6,
                    &envoy::inbound_capture(APP_PORT, plan.traffic.loss),
                )
                .context("cannot set up the server pod's inbound capture")?;
        }
        let listener = http::listen_in(
            &server.netns_path(),
            SocketAddr::from(([0, 0, 0, 0], APP_PORT)),
        )
        .context("cannot start the app in the server pod")?;
        let app = AbortOnDrop(tokio::spawn(http::serve_app(listener)));
        // The server pod's sandbox: a process in its namespace and in a cgroup
        // named after a container ID, which is all the probe is told.
        let container_id = random_hex(32)?;
        let cgroup = ContainerCgroup::create(super::NAME_PREFIX, pid, &container_id)?;
        let mut command = tokio::process::Command::new("sleep");
        command.arg("infinity");
        let pause = DemoProcess::spawn(
            "pause",
            command,
            &server.netns_path(),
            Some(&cgroup.procs),
            workdir.path.join("pause.log"),
        )?;

        let session_id = random_hex(4)?;
        let token = random_hex(24)?;
        let mut command = tokio::process::Command::new(&plan.probe);
        command
            .args([
                "--session-id",
                &session_id,
                "--node",
                "demo-node",
                "--deadline",
                PROBE_DEADLINE,
            ])
            .arg("--target")
            .arg(format!(
                "{NAMESPACE}/{}=container:{container_id}",
                server.name
            ))
            .env("APITRACE_SESSION_TOKEN", &token);
        let mut probe = DemoProcess::spawn(
            "probe",
            command,
            &probe_pod.netns_path(),
            None,
            workdir.path.join("probe.log"),
        )?;
        let (probe_session, events, status) =
            subscribe(&mut probe, &probe_pod, &session_id, &token).await?;

        let sidecar = Sidecar {
            pod_name: server.name,
            namespace: NAMESPACE,
            pod_ip: server.ipv4,
            app_port: APP_PORT,
            probe_ip: probe_pod.ipv4,
            probe_host: PROBE_HOST,
            module_path: &status.wasm_module_path,
            module_sha256: &status.wasm_module_sha256,
            session_token: &token,
            show_secrets: plan.show_secrets,
            layers: Layers::ALL,
        };
        let config_path = workdir.path.join("envoy.json");
        std::fs::write(&config_path, sidecar.bootstrap().to_string())
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let mut command = tokio::process::Command::new(&plan.envoy);
        command.args(envoy::command_line(&config_path, 2));
        let mut envoy = DemoProcess::spawn(
            "envoy",
            command,
            &server.netns_path(),
            None,
            workdir.path.join("envoy.log"),
        )?;
        wait_until_ready(&mut envoy, &server).await?;

        Ok(Self {
            events,
            probe_session,
            envoy,
            probe,
            pause,
            app,
            cgroup,
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
    ) -> anyhow::Result<u32> {
        for pod in &self.topology.pods {
            for ip in [IpAddr::V4(pod.ipv4), IpAddr::V6(pod.ipv6)] {
                pipeline.feed(Input::Identity {
                    ip,
                    since_ns: 0,
                    workload: Workload {
                        namespace: NAMESPACE.to_owned(),
                        name: pod.name.to_owned(),
                        kind: WorkloadKind::Pod,
                        // Only the server pod has a sidecar the session traces.
                        traced: pod.name == "server",
                    },
                })?;
            }
        }
        let client = self.topology.pod("client").clone();
        let server = self.topology.pod("server").clone();
        let now_unix = now_ns().unsigned_abs() / 1_000_000_000;
        let requests = tokio::spawn(traffic::send(
            client,
            server,
            NAMESPACE,
            plan.traffic.clone(),
            now_unix,
        ));
        let mut requests = AbortOnDrop(requests);
        let mut ticks = tokio::time::interval(Duration::from_millis(200));
        // How many records the client's calls should make, once it is done.
        let mut expected: Option<u32> = None;
        let drain = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(drain);
        loop {
            if expected.is_some_and(|calls| pipeline.records() >= calls as usize) {
                break;
            }
            tokio::select! {
                event = self.events.next() => match event {
                    Some(Ok(event)) => pipeline.feed(Input::Event { event, now_ns: now_ns() })?,
                    Some(Err(status)) => bail!("the probe's event stream failed: {}\n{}", status.message(), self.probe.log_tail()),
                    None => bail!("the probe ended its event stream\n{}", self.probe.log_tail()),
                },
                _ = ticks.tick() => pipeline.feed(Input::Tick { now_ns: now_ns() })?,
                sent = &mut requests.0, if expected.is_none() => {
                    let calls = sent
                        .map_err(|e| anyhow!("the client pod stopped: {e}"))?
                        .map_err(|e| anyhow!("{e:#}\n{}", self.envoy.log_tail()))?;
                    expected = Some(calls);
                    drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                }
                () = &mut drain => break,
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
        Ok(expected.unwrap_or_default())
    }

    /// Stops Envoy, then the probe (which detaches from the server pod), then
    /// the pod's sandbox and the app; dropping the rest removes the cgroup, the
    /// namespaces and the work directory.
    async fn stop(self) {
        let Self {
            events,
            envoy,
            probe,
            pause,
            app,
            cgroup,
            topology,
            workdir,
            ..
        } = self;
        drop(events);
        envoy.stop(Duration::from_secs(2)).await;
        probe.stop(Duration::from_secs(3)).await;
        pause.stop(Duration::from_secs(1)).await;
        drop(app);
        drop(cgroup);
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
            let channel = http::channel_in(&netns, address).await?;
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

/// Waits for Envoy's admin endpoint to report LIVE: its listener is up, with
/// the WASM module fetched from the probe.
async fn wait_until_ready(envoy: &mut DemoProcess, server: &Pod) -> anyhow::Result<()> {
    let admin = SocketAddr::from(([127, 0, 0, 1], envoy::ADMIN_PORT));
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
