//! End to end under load: the demo's mesh (Istio's traffic capture in both
//! pods, a real Envoy sidecar in each, mTLS between them, the filter and the
//! access log in both, the probe's TC program on both pods) at a fixed
//! request rate from the client pod's app to the server's Service, with a
//! subscriber that joins what the probe streams as the CLI does. Reported per
//! rate: the requests answered, the share of them joined from all three
//! layers, what was lost at each stage (Envoy's access-log buffer, the
//! filter's queue, the probe, the subscriber), the probe's peak RSS and CPU,
//! and the sidecars' CPU per 1000 requests with the session's layers and
//! without them.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use apitrace_join::{Input, JoinConfig, JoinStats, Joiner, Workload, WorkloadKind};
use apitrace_netns::topology::{Pod, Topology};
use apitrace_proto::ports;
use futures::StreamExt as _;
use kubectl_apitrace::{
    demo::{
        http::{self, Connection},
        jwt,
        mesh::{ADMIN_PORT, Layers, Layout, PortProtocol, SERVICE_V4},
    },
    live::now_ns,
    probe_client::ProbeSession,
};
use tokio::{runtime::Runtime, sync::oneshot};

use crate::{
    pods::{Guard, stage, start_probe},
    report::{Row, Table},
    sidecar::{APP_PORT, Load, Module, Speaks, probe_metrics, start_envoy, wait_ready},
    stats::{Sample, cpu_ms},
};

pub const RATES: [u32; 2] = [1000, 5000];
/// Keep-alive connections per 1000 requests/s.
const CONNECTIONS_PER_1000: u32 = 8;
/// After the load, how long the access logs (flushed every second) and the
/// filter's batches get to arrive before the join is ended.
const DRAIN: Duration = Duration::from_secs(3);

/// One run at one rate.
#[derive(Default)]
struct Figures {
    answered_per_second: Vec<f64>,
    joined_percent: Vec<f64>,
    dropped_envoy: Vec<f64>,
    dropped_filter: Vec<f64>,
    dropped_probe: Vec<f64>,
    dropped_subscriber: Vec<f64>,
    probe_rss_mib: Vec<f64>,
    probe_cpu_ms_per_second: Vec<f64>,
    /// Both sidecars' CPU per 1000 requests, with the session's layers and
    /// without them.
    envoy_cpu_ms_per_1000: Vec<f64>,
    bare_envoy_cpu_ms_per_1000: Vec<f64>,
}

pub fn run(
    probe_binary: &Path,
    envoy: &Path,
    filter: &Path,
    repeats: usize,
    seconds: u64,
    speaks: Speaks,
) -> anyhow::Result<Table> {
    // Both families: the sidecar reaches the app at the pod's address.
    let (pods, runtime) = stage("apitrace-be2e-", SocketAddr::from(([0u16; 8], APP_PORT)))?;
    let (client, server, probe_pod) = (pods.pod("client"), pods.pod("server"), pods.pod("probe"));
    let mesh = Layout {
        namespace: "bench",
        client,
        server,
        app_port: APP_PORT,
        // The port named as Istio would be told: `grpc` makes the sidecars
        // speak HTTP/2 between them and to the app.
        protocol: match speaks {
            Speaks::Http1 => PortProtocol::Http,
            Speaks::Grpc => PortProtocol::Grpc,
        },
        caller_outside_mesh: false,
        plaintext: false,
        ipv6: false,
    };
    mesh.capture(&pods, None)?;
    let probe = start_probe(probe_binary, probe_pod, &[client, server])?;
    let probe_pid = probe.0.id();
    let module = Module::served(filter, probe_pod)?;
    let workdir = std::env::temp_dir().join(format!("apitrace-be2e-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let (target, authority) = (mesh.target(), mesh.authority());
    let token = format!("Bearer {}", jwt::demo_token(1_790_000_000));

    let mut figures: Vec<Figures> = RATES.iter().map(|_| Figures::default()).collect();
    for repeat in 0..repeats {
        for layers in [Layers::ALL, BARE] {
            let sidecars = start_sidecars(&mesh, envoy, &module, probe_pod, &workdir, layers)?;
            runtime.block_on(wait_ready(client, target, &authority))?;
            // The ready check's own layers arrive within the drain; the first
            // run's subscriber must not count them as one of its calls.
            std::thread::sleep(DRAIN);
            for (rate, figures) in RATES.iter().zip(&mut figures) {
                let traced = layers == Layers::ALL;
                eprintln!(
                    "e2e: repeat {}/{repeats}, {rate} requests/s, {}",
                    repeat + 1,
                    if traced { "traced" } else { "bare sidecars" }
                );
                let load = Load {
                    rate: *rate,
                    connections: CONNECTIONS_PER_1000 * rate / 1000,
                    speaks,
                };
                let sidecars_cpu_ms =
                    || -> f64 { sidecars.iter().map(|(_, guard)| cpu_ms(guard.0.id())).sum() };
                let run_load = || {
                    runtime.block_on(load.run(
                        client,
                        target,
                        &authority,
                        &token,
                        Duration::from_secs(seconds),
                    ))
                };
                let envoy_cpu_before = sidecars_cpu_ms();
                if !traced {
                    let latencies = run_load()?;
                    let envoy_cpu = sidecars_cpu_ms();
                    figures
                        .bare_envoy_cpu_ms_per_1000
                        .push((envoy_cpu - envoy_cpu_before) * 1000.0 / latencies.len() as f64);
                    continue;
                }
                // Subscribed first: what the probe sees from here on is the run's.
                let (stop, joined) = runtime.block_on(subscribe(&pods, probe_pod))?;
                std::thread::sleep(Duration::from_millis(500));
                let before = probe_metrics(probe_pod)?;
                let envoy_before = envoy_als_stats(&runtime, &sidecars)?;
                let cpu_before = cpu_ms(probe_pid);
                let started = Instant::now();
                let latencies = run_load()?;
                // A client that fell behind its schedule sent late: the rate
                // achieved is what was answered over the time it took.
                let took = started.elapsed().as_secs_f64();
                let cpu = cpu_ms(probe_pid) - cpu_before;
                let envoy_cpu = sidecars_cpu_ms();
                std::thread::sleep(DRAIN);
                let _ = stop.send(());
                let stats = runtime
                    .block_on(joined)
                    .context("the subscriber stopped")??;
                let after = probe_metrics(probe_pod)?;
                let envoy_after = envoy_als_stats(&runtime, &sidecars)?;
                let answered = latencies.len() as f64;
                let delta = |name: &str| {
                    after.get(name).copied().unwrap_or(0) as f64
                        - before.get(name).copied().unwrap_or(0) as f64
                };
                figures.answered_per_second.push(answered / took);
                figures
                    .joined_percent
                    .push(100.0 * stats.complete as f64 / answered);
                figures
                    .dropped_envoy
                    .push((envoy_after.dropped - envoy_before.dropped) as f64);
                figures.dropped_filter.push(delta(
                    r#"apitrace_probe_dropped_total{source="wasm",reason="filter_queue"}"#,
                ));
                figures.dropped_subscriber.push(
                    delta(r#"apitrace_probe_dropped_total{source="subscriber",reason="lagged"}"#)
                        + delta(
                            r#"apitrace_probe_dropped_total{source="subscriber",reason="none"}"#,
                        ),
                );
                let lost = probe_drops(&before, &after);
                for (counter, count) in &lost {
                    eprintln!("e2e: the probe dropped {count}: {counter}");
                }
                figures
                    .dropped_probe
                    .push(lost.iter().map(|(_, count)| count).sum::<u64>() as f64);
                figures.probe_rss_mib.push(peak_rss_mib(probe_pid)?);
                figures.probe_cpu_ms_per_second.push(cpu / took);
                figures
                    .envoy_cpu_ms_per_1000
                    .push((envoy_cpu - envoy_cpu_before) * 1000.0 / answered);
                eprintln!(
                    "e2e: {answered} answered, {} joined from every layer, {} with some; the sidecars sent {} access logs",
                    stats.complete,
                    stats.partial,
                    envoy_after.written - envoy_before.written
                );
            }
        }
    }
    drop(runtime);
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(table(&figures, repeats, seconds, speaks))
}

/// The sidecars without the session's parts: what the mesh costs alone.
const BARE: Layers = Layers {
    access_log: false,
    filter: false,
};

/// Each sidecar of `mesh` with `layers`, running and keyed by its pod.
fn start_sidecars<'a>(
    mesh: &Layout<'a>,
    envoy: &Path,
    module: &Module,
    probe_pod: &Pod,
    workdir: &Path,
    layers: Layers,
) -> anyhow::Result<Vec<(&'a Pod, Guard)>> {
    mesh.write_bootstraps(workdir, module.probe_at(probe_pod), layers)?
        .into_iter()
        .map(|sidecar| {
            let guard = start_envoy(envoy, sidecar.pod, &sidecar.config, workdir)?;
            Ok((sidecar.pod, guard))
        })
        .collect()
}

/// Subscribes to the probe and joins what it streams, as the CLI does, until
/// told to stop; then ends the join and returns how it went.
async fn subscribe(
    pods: &Topology,
    probe_pod: &Pod,
) -> anyhow::Result<(
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<JoinStats>>,
)> {
    let address = SocketAddr::new(IpAddr::V4(probe_pod.ipv4), ports::SUBSCRIBE);
    let channel = http::channel_in(&probe_pod.netns_path(), address, "pod.demo").await?;
    let mut session = ProbeSession::new(channel, "bench", "bench")?;
    let mut events = session.subscribe().await?.boxed();
    let mut joiner = Joiner::new(JoinConfig::default());
    let mut records = Vec::new();
    let workloads = pods
        .pods
        .iter()
        .map(|pod| {
            (
                IpAddr::V4(pod.ipv4),
                pod.name,
                WorkloadKind::Pod,
                pod.name != "probe",
            )
        })
        .chain([(
            IpAddr::V4(SERVICE_V4),
            "server",
            WorkloadKind::Service,
            false,
        )]);
    for (ip, name, kind, traced) in workloads {
        joiner.apply(
            Input::Identity {
                ip,
                since_ns: 0,
                workload: Workload {
                    namespace: "bench".to_owned(),
                    name: name.to_owned(),
                    kind,
                    traced,
                },
            },
            &mut records,
        );
    }
    let (stop, mut stopped) = oneshot::channel();
    let joined = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(200));
        loop {
            let input = tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => Input::Event { event, now_ns: now_ns() },
                    Some(Err(status)) => bail!("the probe's stream failed: {}", status.message()),
                    None => bail!("the probe ended its stream"),
                },
                _ = ticks.tick() => Input::Tick { now_ns: now_ns() },
                _ = &mut stopped => break,
            };
            joiner.apply(input, &mut records);
            records.clear();
        }
        joiner.apply(Input::End, &mut records);
        Ok(joiner.stats().clone())
    });
    Ok((stop, joined))
}

/// Every event the probe lost on its own side during a run, by counter: its
/// rings and flow table, malformed or refused input, broken access-log
/// streams.
fn probe_drops(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> Vec<(String, u64)> {
    after
        .iter()
        .filter(|(name, _)| {
            (name.starts_with("apitrace_probe_dropped_total")
                || name.starts_with("apitrace_probe_refused_total"))
                && !name.contains(r#"source="subscriber""#)
                && !name.contains(r#"reason="filter_queue""#)
        })
        .map(|(name, value)| {
            let before = before.get(name).copied().unwrap_or(0);
            (name.clone(), value.saturating_sub(before))
        })
        .filter(|(_, count)| *count > 0)
        .collect()
}

/// Envoy's own count of access-log entries it sent and dropped (its gRPC
/// logger's buffer full, or the stream down).
struct EnvoyAls {
    written: u64,
    dropped: u64,
}

/// The sidecars' counts of access-log entries, summed.
fn envoy_als_stats(runtime: &Runtime, sidecars: &[(&Pod, Guard)]) -> anyhow::Result<EnvoyAls> {
    let admin = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
    let mut total = EnvoyAls {
        written: 0,
        dropped: 0,
    };
    for (pod, _) in sidecars {
        let body = runtime.block_on(async {
            let stream = http::connect_in(&pod.netns_path(), admin).await?;
            let mut connection = Connection::over(stream).await?;
            let (_, body) = connection
                .get("admin", "/stats?filter=grpc_access_log", None)
                .await?;
            anyhow::Ok(body)
        })?;
        let text = String::from_utf8_lossy(&body);
        let stat = |suffix: &str| -> u64 {
            text.lines()
                .filter(|line| line.contains(suffix))
                .filter_map(|line| line.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
                .sum()
        };
        total.written += stat("logs_written");
        total.dropped += stat("logs_dropped");
    }
    Ok(total)
}

/// The probe's peak resident memory so far (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in the probe's status")?;
    Ok(kib / 1024.0)
}

fn table(figures: &[Figures], repeats: usize, seconds: u64, speaks: Speaks) -> Table {
    let (title, calls) = match speaks {
        Speaks::Http1 => ("End to end under load", "GET /api/orders over HTTP/1.1 on"),
        Speaks::Grpc => (
            "End to end under load, gRPC",
            "the unary gRPC GetOrder (port named grpc: HTTP/2 between the sidecars and to the app) on",
        ),
    };
    let mut rows = Vec::new();
    for (rate, figures) in RATES.iter().zip(figures) {
        // A target is met only if every run met it: one run that dropped
        // events is a miss, whatever the median says.
        let row = |metric: &str, values: &Vec<f64>, target: &str, met: Option<fn(f64) -> bool>| {
            let ours = Sample::of(values.clone());
            Row {
                metric: format!("{rate}/s: {metric}"),
                met: met.map(|met| ours.values.iter().all(|&run| met(run))),
                ours,
                peer: None,
                baseline: None,
                target: target.to_owned(),
            }
        };
        let zero: Option<fn(f64) -> bool> = Some(|count| count == 0.0);
        rows.extend([
            row(
                "requests answered per second (achieved rate)",
                &figures.answered_per_second,
                &format!("{rate}"),
                None,
            ),
            row(
                "calls joined from all three layers, %",
                &figures.joined_percent,
                "≥ 99.9",
                Some(|percent| percent >= 99.9),
            ),
            row(
                "access logs dropped by Envoy",
                &figures.dropped_envoy,
                "0",
                zero,
            ),
            row(
                "events dropped in the WASM filter",
                &figures.dropped_filter,
                "0",
                zero,
            ),
            row(
                "events dropped in the probe",
                &figures.dropped_probe,
                "0",
                zero,
            ),
            row(
                "events the subscriber missed",
                &figures.dropped_subscriber,
                "0",
                zero,
            ),
            row(
                "probe peak RSS, MiB",
                &figures.probe_rss_mib,
                "≤ 50",
                Some(|mib| mib <= 50.0),
            ),
            row(
                "probe CPU, ms per second",
                &figures.probe_cpu_ms_per_second,
                "-",
                None,
            ),
        ]);
        rows.push(Row {
            metric: format!("{rate}/s: both sidecars' CPU, ms per 1000 requests"),
            ours: Sample::of(figures.envoy_cpu_ms_per_1000.clone()),
            peer: None,
            baseline: Some(Sample::of(figures.bare_envoy_cpu_ms_per_1000.clone())),
            target: "-".to_owned(),
            met: None,
        });
    }
    Table {
        title: title.to_owned(),
        setup: format!(
            "The demo's mesh: Istio's traffic capture in the client and the server pod, a real Envoy sidecar in each (the demo's bootstraps, \
             --concurrency 2) over mTLS, our filter and the gRPC access log in both, the probe's TC program on both pods, and a subscriber joining \
             what the probe streams as the CLI does. The client pod's app calls the server's Service at {} at a fixed rate, {calls} \
             {CONNECTIONS_PER_1000} keep-alive connections per 1000/s, each request with a 1.3 KB JWT, {seconds} s per run, {repeats} runs per rate \
             interleaved; the join is ended {} s after the load. The sidecars' CPU is measured the same way with neither the filter nor the \
             access log (the baseline column). \
             Dropped counts are per run; the peak RSS is the probe's VmHWM since it started. Median (lowest–highest) of the runs; \
             a target is met only if every run met it.",
            RATES.map(|rate| format!("{rate}/s")).join(" and "),
            DRAIN.as_secs()
        ),
        rows,
    }
}
