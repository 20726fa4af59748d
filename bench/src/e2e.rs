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
use prost::Message as _;
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

/// Every traced run at one rate.
#[derive(Default)]
struct Figures {
    runs: Vec<Traced>,
    /// Both sidecars' CPU per 1000 requests without the session's layers.
    bare_envoy_cpu_ms_per_1000: Vec<f64>,
}

impl Figures {
    fn of(&self, figure: impl Fn(&Traced) -> f64) -> Vec<f64> {
        self.runs.iter().map(figure).collect()
    }
}

/// What one traced run at one rate measured.
#[derive(Clone, Copy)]
struct Traced {
    asked_per_second: u32,
    answered_per_second: f64,
    joined_percent: f64,
    dropped_envoy: f64,
    dropped_filter: f64,
    dropped_probe: f64,
    dropped_subscriber: f64,
    probe_rss_mib: f64,
    probe_cpu_ms_per_second: f64,
    probe_cpu_ms_per_1000: f64,
    /// Both sidecars' CPU per 1000 requests, with the session's layers.
    envoy_cpu_ms_per_1000: f64,
    /// What the probe sent the subscriber, per call answered.
    messages_per_call: f64,
    bytes_per_call: f64,
}

impl Traced {
    /// Why this run's rate was not sustained, if it was not: a client that
    /// fell behind its schedule, a call not joined from every layer, or an
    /// event lost anywhere.
    fn not_sustained(&self) -> Option<String> {
        let asked = f64::from(self.asked_per_second);
        if self.answered_per_second < 0.97 * asked {
            return Some(format!(
                "{:.0}/s answered of {asked}/s asked",
                self.answered_per_second
            ));
        }
        if self.joined_percent < 99.9 {
            return Some(format!("{:.2}% joined", self.joined_percent));
        }
        let lost = [
            ("by Envoy", self.dropped_envoy),
            ("in the filter", self.dropped_filter),
            ("in the probe", self.dropped_probe),
            ("by the subscriber", self.dropped_subscriber),
        ];
        lost.iter()
            .find(|(_, count)| *count > 0.0)
            .map(|(stage, count)| format!("{count} events lost {stage}"))
    }
}

/// The highest sustained rate the search found, and the lowest rate above it
/// that was not, with why.
struct Ceiling {
    sustained: Option<Traced>,
    above: Option<(u32, String)>,
}

/// The mesh, the probe and the load of one benchmark, shared by its runs.
struct Bench<'a> {
    runtime: Runtime,
    pods: &'a Topology,
    client: &'a Pod,
    probe_pod: &'a Pod,
    probe_pid: u32,
    target: SocketAddr,
    authority: String,
    token: String,
    seconds: u64,
    speaks: Speaks,
}

impl Bench<'_> {
    fn load(&self, rate: u32) -> anyhow::Result<Vec<Duration>> {
        let load = Load {
            rate,
            connections: (CONNECTIONS_PER_1000 * rate).div_ceil(1000),
            speaks: self.speaks,
        };
        self.runtime.block_on(load.run(
            self.client,
            self.target,
            &self.authority,
            &self.token,
            Duration::from_secs(self.seconds),
        ))
    }

    /// The sidecars' CPU per 1000 requests at `rate`, with nothing of the
    /// session's running in them.
    fn bare(&self, sidecars: &[(&Pod, Guard)], rate: u32) -> anyhow::Result<f64> {
        let before = sidecars_cpu_ms(sidecars);
        let answered = self.load(rate)?.len();
        Ok((sidecars_cpu_ms(sidecars) - before) * 1000.0 / answered as f64)
    }

    /// One run at `rate` with the session's layers in the sidecars and a
    /// subscriber joining what the probe streams.
    fn traced(&self, sidecars: &[(&Pod, Guard)], rate: u32) -> anyhow::Result<Traced> {
        // Subscribed first: what the probe sees from here on is the run's.
        let (stop, joined) = self
            .runtime
            .block_on(subscribe(self.pods, self.probe_pod))?;
        std::thread::sleep(Duration::from_millis(500));
        let before = probe_metrics(self.probe_pod)?;
        let envoy_before = envoy_als_stats(&self.runtime, sidecars)?;
        let envoy_cpu_before = sidecars_cpu_ms(sidecars);
        let cpu_before = cpu_ms(self.probe_pid);
        let started = Instant::now();
        let latencies = self.load(rate)?;
        // A client that fell behind its schedule sent late: the rate
        // achieved is what was answered over the time it took.
        let took = started.elapsed().as_secs_f64();
        let cpu = cpu_ms(self.probe_pid) - cpu_before;
        let envoy_cpu = sidecars_cpu_ms(sidecars) - envoy_cpu_before;
        std::thread::sleep(DRAIN);
        let _ = stop.send(());
        let subscribed = self
            .runtime
            .block_on(joined)
            .context("the subscriber stopped")??;
        let after = probe_metrics(self.probe_pod)?;
        let envoy_after = envoy_als_stats(&self.runtime, sidecars)?;
        let answered = latencies.len() as f64;
        let delta = |name: &str| {
            after.get(name).copied().unwrap_or(0) as f64
                - before.get(name).copied().unwrap_or(0) as f64
        };
        let lost = probe_drops(&before, &after);
        for (counter, count) in &lost {
            eprintln!("e2e: the probe dropped {count}: {counter}");
        }
        let stats = &subscribed.stats;
        eprintln!(
            "e2e: {answered} answered, {} joined from every layer, {} with some; the sidecars sent {} access logs",
            stats.complete,
            stats.partial,
            envoy_after.written - envoy_before.written
        );
        if stats.partial > 0 {
            eprintln!(
                "e2e: the join's counts: {}",
                serde_json::to_string(stats).unwrap_or_default()
            );
        }
        Ok(Traced {
            asked_per_second: rate,
            answered_per_second: answered / took,
            joined_percent: 100.0 * stats.complete as f64 / answered,
            dropped_envoy: (envoy_after.dropped - envoy_before.dropped) as f64,
            dropped_filter: delta(
                r#"apitrace_probe_dropped_total{source="wasm",reason="filter_queue"}"#,
            ),
            dropped_subscriber: delta(
                r#"apitrace_probe_dropped_total{source="subscriber",reason="lagged"}"#,
            ) + delta(
                r#"apitrace_probe_dropped_total{source="subscriber",reason="none"}"#,
            ),
            dropped_probe: lost.iter().map(|(_, count)| count).sum::<u64>() as f64,
            probe_rss_mib: peak_rss_mib(self.probe_pid)?,
            probe_cpu_ms_per_second: cpu / took,
            probe_cpu_ms_per_1000: cpu * 1000.0 / answered,
            envoy_cpu_ms_per_1000: envoy_cpu * 1000.0 / answered,
            messages_per_call: subscribed.messages as f64 / answered,
            bytes_per_call: subscribed.bytes as f64 / answered,
        })
    }

    /// The highest rate that is sustained (every call joined from every
    /// layer, nothing lost, the client on schedule), by bisection between
    /// the fixed rates' first runs: above the highest that passed, below the
    /// lowest that failed (doubling when all passed), to within a tenth.
    fn ceiling(&self, sidecars: &[(&Pod, Guard)], fixed: &[Traced]) -> anyhow::Result<Ceiling> {
        let mut sustained: Option<Traced> = None;
        let mut above: Option<(u32, String)> = None;
        // The fixed rates go up: the first that failed bounds the search.
        for run in fixed {
            match run.not_sustained() {
                None if above.is_none() => sustained = Some(*run),
                None => {}
                Some(why) => {
                    above.get_or_insert((run.asked_per_second, why));
                }
            }
        }
        loop {
            let low = sustained.as_ref().map_or(0, |run| run.asked_per_second);
            let next = match &above {
                None if low >= SEARCH_LIMIT => break,
                None => (low * 2).min(SEARCH_LIMIT),
                Some((high, _)) if high - low <= (low / 10).max(SEARCH_STEP) => break,
                Some((high, _)) => (low + high) / 2,
            };
            eprintln!("e2e: searching for the highest sustained rate: {next} requests/s");
            // A run that failed (a call answered wrongly, the subscriber's
            // stream broken) is a rate not sustained, not the end of the
            // benchmark: the search exists to find where things break.
            let run = match self.traced(sidecars, next) {
                Ok(run) => run,
                Err(error) => {
                    eprintln!("e2e: {next}/s failed: {error:#}");
                    above = Some((next, format!("the run failed: {error:#}")));
                    continue;
                }
            };
            match run.not_sustained() {
                None => sustained = Some(run),
                Some(why) => {
                    eprintln!("e2e: {next}/s not sustained: {why}");
                    above = Some((next, why));
                }
            }
        }
        Ok(Ceiling { sustained, above })
    }
}

/// The search goes no higher, so that it ends when nothing fails.
const SEARCH_LIMIT: u32 = 40_000;
/// The search's finest step, in requests per second.
const SEARCH_STEP: u32 = 50;

fn sidecars_cpu_ms(sidecars: &[(&Pod, Guard)]) -> f64 {
    sidecars.iter().map(|(_, guard)| cpu_ms(guard.0.id())).sum()
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
    let module = Module::served(filter, probe_pod)?;
    let workdir = std::env::temp_dir().join(format!("apitrace-be2e-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let bench = Bench {
        runtime,
        pods: &pods,
        client,
        probe_pod,
        probe_pid: probe.0.id(),
        target: mesh.target(),
        authority: mesh.authority(),
        token: format!("Bearer {}", jwt::demo_token(1_790_000_000)),
        seconds,
        speaks,
    };

    let mut figures: Vec<Figures> = RATES.iter().map(|_| Figures::default()).collect();
    let mut ceiling = None;
    for repeat in 0..repeats {
        for layers in [Layers::ALL, BARE] {
            let sidecars = start_sidecars(&mesh, envoy, &module, probe_pod, &workdir, layers)?;
            bench
                .runtime
                .block_on(wait_ready(client, bench.target, &bench.authority))?;
            // The ready check's own layers arrive within the drain; the first
            // run's subscriber must not count them as one of its calls.
            std::thread::sleep(DRAIN);
            let traced = layers == Layers::ALL;
            for (rate, figures) in RATES.iter().zip(&mut figures) {
                eprintln!(
                    "e2e: repeat {}/{repeats}, {rate} requests/s, {}",
                    repeat + 1,
                    if traced { "traced" } else { "bare sidecars" }
                );
                if traced {
                    figures.runs.push(bench.traced(&sidecars, *rate)?);
                } else {
                    figures
                        .bare_envoy_cpu_ms_per_1000
                        .push(bench.bare(&sidecars, *rate)?);
                }
            }
            if traced && repeat == 0 {
                let first: Vec<Traced> = figures.iter().map(|rate| rate.runs[0]).collect();
                ceiling = Some(bench.ceiling(&sidecars, &first)?);
            }
        }
    }
    drop(bench);
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(table(&figures, ceiling.as_ref(), repeats, seconds, speaks))
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
    tokio::task::JoinHandle<anyhow::Result<Subscribed>>,
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
        let (mut messages, mut bytes) = (0u64, 0u64);
        let mut ticks = tokio::time::interval(Duration::from_millis(200));
        loop {
            let input = tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        messages += 1;
                        bytes += GRPC_MESSAGE_PREFIX + event.encoded_len() as u64;
                        Input::Event { event, now_ns: now_ns() }
                    }
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
        Ok(Subscribed {
            stats: joiner.stats().clone(),
            messages,
            bytes,
        })
    });
    Ok((stop, joined))
}

/// What a subscriber joined, and what the probe sent it: its messages, and
/// their bytes as gRPC frames them (HTTP/2's own frame headers and TCP's
/// are not counted).
struct Subscribed {
    stats: JoinStats,
    messages: u64,
    bytes: u64,
}

/// The length prefix gRPC puts before each message: a compression flag and a
/// four-byte length (grpc/grpc, doc/PROTOCOL-HTTP2.md, "Length-Prefixed-Message").
const GRPC_MESSAGE_PREFIX: u64 = 5;

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

fn table(
    figures: &[Figures],
    ceiling: Option<&Ceiling>,
    repeats: usize,
    seconds: u64,
    speaks: Speaks,
) -> Table {
    let (title, calls) = match speaks {
        Speaks::Http1 => ("End to end under load", "GET /api/orders over HTTP/1.1 on"),
        Speaks::Grpc => (
            "End to end under load, gRPC",
            "the unary gRPC GetOrder (port named grpc: HTTP/2 between the sidecars and to the app) on",
        ),
    };
    let mut rows = Vec::new();
    for (rate, figures) in RATES.iter().zip(figures) {
        rows.extend(rate_rows(&format!("{rate}/s"), figures, *rate));
    }
    if let Some(ceiling) = ceiling {
        let above = match &ceiling.above {
            Some((rate, why)) => format!("{rate}/s was not: {why}"),
            None => format!("nothing failed up to the search's limit, {SEARCH_LIMIT}/s"),
        };
        rows.push(Row {
            metric: format!(
                "highest rate sustained (every call joined, nothing lost, the client on schedule; {above})"
            ),
            ours: Sample::of(
                ceiling
                    .sustained
                    .iter()
                    .map(|run| f64::from(run.asked_per_second))
                    .collect(),
            ),
            peer: None,
            baseline: None,
            target: "-".to_owned(),
            met: None,
        });
        if let Some(run) = &ceiling.sustained {
            let figures = Figures {
                runs: vec![*run],
                bare_envoy_cpu_ms_per_1000: Vec::new(),
            };
            rows.extend(
                rate_rows(
                    "at the highest sustained rate",
                    &figures,
                    run.asked_per_second,
                )
                .into_iter()
                .filter(|row| row.metric.contains("per 1000") || row.metric.contains("per call")),
            );
        }
    }
    Table {
        title: title.to_owned(),
        setup: format!(
            "The demo's mesh: Istio's traffic capture in the client and the server pod, a real Envoy sidecar in each (the demo's bootstraps, \
             --concurrency 2) over mTLS, our filter and the gRPC access log in both, the probe's TC program on both pods, and a subscriber joining \
             what the probe streams as the CLI does. The client pod's app calls the server's Service at {} at a fixed rate, {calls} \
             {CONNECTIONS_PER_1000} keep-alive connections per 1000/s, each request with a 1.3 KB JWT, {seconds} s per run, {repeats} runs per rate \
             interleaved; the join is ended {} s after the load. The sidecars' CPU is measured the same way with neither the filter nor the \
             access log (the baseline column). After the first repeat, a search bisects from those runs to the highest rate sustained, one \
             {seconds} s run per step, to within a tenth. Bytes from the probe are its events as gRPC frames them, per call answered. \
             Dropped counts are per run; the peak RSS is the probe's VmHWM since it started. Median (lowest–highest) of the runs; \
             a target is met only if every run met it.",
            RATES.map(|rate| format!("{rate}/s")).join(" and "),
            DRAIN.as_secs()
        ),
        rows,
    }
}

/// A figure of a traced run: its name, how it is read off the run, its
/// target, and the test of the target when it has one.
type Metric = (
    &'static str,
    fn(&Traced) -> f64,
    &'static str,
    Option<fn(f64) -> bool>,
);

const NONE_LOST: Option<fn(f64) -> bool> = Some(|count| count == 0.0);

/// Every figure of a traced run but the rate achieved, whose target is the
/// rate asked, and the sidecars' CPU, which has a baseline.
const METRICS: [Metric; 10] = [
    (
        "calls joined from all three layers, %",
        |run| run.joined_percent,
        "≥ 99.9",
        Some(|percent| percent >= 99.9),
    ),
    (
        "access logs dropped by Envoy",
        |run| run.dropped_envoy,
        "0",
        NONE_LOST,
    ),
    (
        "events dropped in the WASM filter",
        |run| run.dropped_filter,
        "0",
        NONE_LOST,
    ),
    (
        "events dropped in the probe",
        |run| run.dropped_probe,
        "0",
        NONE_LOST,
    ),
    (
        "events the subscriber missed",
        |run| run.dropped_subscriber,
        "0",
        NONE_LOST,
    ),
    (
        "probe peak RSS, MiB",
        |run| run.probe_rss_mib,
        "≤ 50",
        Some(|mib| mib <= 50.0),
    ),
    (
        "probe CPU, ms per second",
        |run| run.probe_cpu_ms_per_second,
        "-",
        None,
    ),
    (
        "probe CPU, ms per 1000 calls",
        |run| run.probe_cpu_ms_per_1000,
        "-",
        None,
    ),
    (
        "messages from the probe to the CLI, per call",
        |run| run.messages_per_call,
        "≤ 2 (one per hop; issue 26)",
        None,
    ),
    (
        "bytes from the probe to the CLI, per call",
        |run| run.bytes_per_call,
        "-",
        None,
    ),
];

/// The rows of one rate's runs, each metric named after `label`.
fn rate_rows(label: &str, figures: &Figures, rate: u32) -> Vec<Row> {
    // A target is met only if every run met it: one run that dropped
    // events is a miss, whatever the median says.
    let row = |metric: &str, values: Vec<f64>, target: &str, met: Option<fn(f64) -> bool>| {
        let ours = Sample::of(values);
        Row {
            metric: format!("{label}: {metric}"),
            met: met.map(|met| ours.values.iter().all(|&run| met(run))),
            ours,
            peer: None,
            baseline: None,
            target: target.to_owned(),
        }
    };
    let mut rows = vec![row(
        "requests answered per second (achieved rate)",
        figures.of(|run| run.answered_per_second),
        &format!("{rate}"),
        None,
    )];
    rows.extend(
        METRICS
            .iter()
            .map(|(metric, figure, target, met)| row(metric, figures.of(figure), target, *met)),
    );
    rows.push(Row {
        metric: format!("{label}: both sidecars' CPU, ms per 1000 requests"),
        ours: Sample::of(figures.of(|run| run.envoy_cpu_ms_per_1000)),
        peer: None,
        baseline: (!figures.bare_envoy_cpu_ms_per_1000.is_empty())
            .then(|| Sample::of(figures.bare_envoy_cpu_ms_per_1000.clone())),
        target: "-".to_owned(),
        met: None,
    });
    rows
}
