//! The WASM filter against none: the same real Envoy (the demo's sidecar
//! bootstrap) serving the same app, loaded at a fixed request rate from the
//! client pod, (a) without our filter and access log, (b) with the gRPC access
//! log to the probe, (c) with the access log and our filter. Reported: the
//! latency Envoy adds at p50 and p99 over (a), and Envoy's CPU per 1000
//! requests. Before each measurement the probe's counters must show the
//! layers of that scenario at work, so that a filter that failed to load
//! (FAIL_OPEN) cannot pass for a fast one.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use apitrace_netns::topology::Pod;
use apitrace_proto::ports;
use kubectl_apitrace::demo::{
    envoy::{INBOUND_PORT, Layers, Sidecar},
    http::{self, Connection},
    jwt,
};

use crate::{
    pods::{Guard, in_pod, stage, start_probe},
    report::{Row, Table},
    stats::{Sample, cpu_ms},
};

const APP_PORT: u16 = 8080;
const PROBE_HOST: &str = "apitrace-bench.apitrace-system.svc.cluster.local";
/// Requests per second, over this many keep-alive connections.
const RATE: u32 = 500;
const CONNECTIONS: u32 = 4;

const SCENARIOS: [(&str, Layers); 3] = [
    (
        "no filter, no access log",
        Layers {
            access_log: false,
            filter: false,
        },
    ),
    (
        "access log",
        Layers {
            access_log: true,
            filter: false,
        },
    ),
    ("access log and filter", Layers::ALL),
];

#[derive(Default)]
struct Figures {
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    envoy_cpu_ms_per_1000: Vec<f64>,
}

pub fn run(
    probe_binary: &Path,
    envoy: &Path,
    filter: &Path,
    repeats: usize,
    seconds: u64,
) -> anyhow::Result<Table> {
    let module = std::fs::read(filter)
        .with_context(|| format!("reading the filter module {}", filter.display()))?;
    let sha256 = sha256_hex(&module);
    let (pods, runtime) = stage(
        "apitrace-bwasm-",
        SocketAddr::from(([127, 0, 0, 1], APP_PORT)),
    )?;
    let (client, server, probe_pod) = (pods.pod("client"), pods.pod("server"), pods.pod("probe"));
    let _probe = start_probe(probe_binary, probe_pod, server)?;
    let module_path = format!("/wasm/apitrace-filter-{sha256}.wasm");
    if !probe_get(probe_pod, &module_path)?.starts_with("HTTP/1.1 200") {
        bail!(
            "the probe does not serve {module_path}: {} is not the module it embeds; build both with `cargo xtask bench`",
            filter.display()
        );
    }
    let workdir = std::env::temp_dir().join(format!("apitrace-bwasm-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let token = format!("Bearer {}", jwt::demo_token(1_790_000_000));

    let mut figures: Vec<Figures> = SCENARIOS.iter().map(|_| Figures::default()).collect();
    for repeat in 0..repeats {
        for ((name, layers), figures) in SCENARIOS.iter().zip(&mut figures) {
            eprintln!("wasm: repeat {}/{repeats}, {name}", repeat + 1);
            let config = workdir.join("envoy.json");
            let sidecar = Sidecar {
                pod_name: server.name,
                namespace: "bench",
                pod_ip: server.ipv4,
                app_port: APP_PORT,
                probe_ip: probe_pod.ipv4,
                probe_host: PROBE_HOST,
                module_path: &module_path,
                module_sha256: &sha256,
                plugin_config: serde_json::json!({
                    "ingest_cluster": format!("outbound|{}||{PROBE_HOST}", ports::HTTP),
                    "ingest_authority": format!("{PROBE_HOST}:{}", ports::HTTP),
                    "session_token": "bench",
                    "show_secrets": false,
                }),
                layers: *layers,
            };
            std::fs::write(&config, sidecar.bootstrap().to_string())?;
            let envoy_process = start_envoy(envoy, server, &config, &workdir)?;
            let envoy_pid = envoy_process.0.id();
            let target = SocketAddr::new(IpAddr::V4(server.ipv4), INBOUND_PORT);
            runtime.block_on(wait_ready(client, target))?;
            // Warm up, then prove the scenario's layers are at work.
            let before = probe_counts(probe_pod)?;
            runtime.block_on(load(client, target, &token, Duration::from_secs(1)))?;
            std::thread::sleep(Duration::from_millis(1500));
            let after = probe_counts(probe_pod)?;
            let (als, wasm) = (after.0 - before.0, after.1 - before.1);
            if (als > 0) != layers.access_log || (wasm > 0) != layers.filter {
                bail!(
                    "{name}: the probe received {als} access logs and {wasm} WASM events during the warm-up; the layers did not run as configured"
                );
            }
            let cpu_before = cpu_ms(envoy_pid);
            let latencies =
                runtime.block_on(load(client, target, &token, Duration::from_secs(seconds)))?;
            let cpu = cpu_ms(envoy_pid) - cpu_before;
            drop(envoy_process);
            figures
                .envoy_cpu_ms_per_1000
                .push(cpu / (latencies.len() as f64 / 1000.0));
            let micros: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e6).collect();
            figures.p50_us.push(percentile(&micros, 0.50));
            figures.p99_us.push(percentile(&micros, 0.99));
        }
    }
    drop(runtime);
    let _ = std::fs::remove_dir_all(&workdir);
    Ok(table(&figures, repeats, seconds))
}

fn start_envoy(envoy: &Path, server: &Pod, config: &Path, workdir: &Path) -> anyhow::Result<Guard> {
    let log = std::fs::File::create(workdir.join("envoy.log"))?;
    let mut command = in_pod(server, &envoy.to_string_lossy(), &[]);
    command
        .arg("--config-path")
        .arg(config)
        .args([
            "--log-level",
            "warn",
            "--disable-hot-restart",
            "--concurrency",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(log);
    Ok(Guard(command.spawn().context("cannot start Envoy")?))
}

async fn wait_ready(client: &Pod, target: SocketAddr) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(stream) = http::connect_in(&client.netns_path(), target).await
            && let Ok(mut connection) = Connection::over(stream).await
            && let Ok((status, _)) = connection.get("app", "/status", None).await
            && status.is_success()
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("Envoy did not answer on {target} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `RATE` requests a second for `duration`, spread over `CONNECTIONS`
/// keep-alive connections, each on its own schedule; returns each request's
/// latency. A schedule that falls behind sends at once (the latency counts
/// from when the request was due, so queueing is not hidden).
async fn load(
    client: &Pod,
    target: SocketAddr,
    token: &str,
    duration: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let period = Duration::from_secs(1) * CONNECTIONS / RATE;
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..CONNECTIONS {
        let stream = http::connect_in(&client.netns_path(), target).await?;
        let mut connection = Connection::over(stream).await?;
        let token = token.to_owned();
        tasks.spawn(async move {
            let offset = period * index / CONNECTIONS;
            let start = tokio::time::Instant::now() + offset;
            let mut latencies = Vec::new();
            let mut due = start;
            while due < start + duration {
                tokio::time::sleep_until(due).await;
                let (status, _) = connection.get("app", "/api/orders", Some(&token)).await?;
                if !status.is_success() && status.as_u16() != 404 {
                    anyhow::bail!("the app answered {status}");
                }
                latencies.push(due.elapsed());
                due += period;
            }
            Ok(latencies)
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done??);
    }
    Ok(all)
}

/// (access logs, WASM events) the probe has received.
fn probe_counts(probe_pod: &Pod) -> anyhow::Result<(u64, u64)> {
    let metrics = probe_get(probe_pod, "/metrics")?;
    let count = |source: &str| {
        metrics
            .lines()
            .find(|line| {
                line.starts_with(&format!(
                    "apitrace_probe_events_total{{source=\"{source}\"}}"
                ))
            })
            .and_then(|line| line.rsplit_once(' '))
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0)
    };
    Ok((count("als"), count("wasm")))
}

fn probe_get(probe_pod: &Pod, path: &str) -> anyhow::Result<String> {
    use std::io::{Read as _, Write as _};
    let address = SocketAddr::new(IpAddr::V4(probe_pod.ipv4), ports::HTTP);
    let answer = apitrace_netns::run_in(&probe_pod.netns_path(), || -> std::io::Result<Vec<u8>> {
        let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n").as_bytes(),
        )?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(answer)
    })
    .map_err(|error| anyhow::anyhow!("entering the probe pod: {error}"))??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn percentile(values: &[f64], quantile: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * quantile).round() as usize;
    sorted[index]
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Where the guest build leaves the filter module the probe embeds.
pub fn filter_module(target_dir: &Path) -> PathBuf {
    target_dir.join("guest/wasm32-unknown-unknown/guest-wasm/apitrace_wasm_filter.wasm")
}

fn table(figures: &[Figures], repeats: usize, seconds: u64) -> Table {
    let [bare, logged, filtered] = figures else {
        unreachable!("three scenarios")
    };
    let sample = |values: &Vec<f64>| Sample::of(values.clone());
    let latency_row = |metric: &str, pick: fn(&Figures) -> &Vec<f64>, budget: f64| {
        let (baseline, ours) = (sample(pick(bare)), sample(pick(filtered)));
        Row {
            metric: metric.to_owned(),
            met: Some(ours.median - baseline.median <= budget),
            peer: Some(("access log only".to_owned(), sample(pick(logged)))),
            target: format!("ours − baseline ≤ {budget} µs"),
            baseline: Some(baseline),
            ours,
        }
    };
    Table {
        title: "WASM filter vs none".to_owned(),
        setup: format!(
            "A real Envoy (the demo's sidecar bootstrap, --concurrency 2) in front of the demo's app, {RATE} requests/s over {CONNECTIONS} keep-alive \
             connections from the client pod, each with a 1.3 KB JWT, {seconds} s per scenario, {repeats} repeats interleaved: \
             (a) no filter and no access log, (b) the gRPC access log to the probe, (c) the access log and our filter (V8). \
             Latency from when each request was due to its answer, so that queueing is not hidden. \
             baseline is (a), ours (c), peer (b). Median (lowest–highest) of the repeats."
        ),
        rows: vec![
            latency_row("latency p50, µs", |f| &f.p50_us, 20.0),
            latency_row("latency p99, µs", |f| &f.p99_us, 50.0),
            Row {
                metric: "Envoy CPU ms per 1000 requests".to_owned(),
                ours: sample(&filtered.envoy_cpu_ms_per_1000),
                peer: Some((
                    "access log only".to_owned(),
                    sample(&logged.envoy_cpu_ms_per_1000),
                )),
                baseline: Some(sample(&bare.envoy_cpu_ms_per_1000)),
                target: "-".to_owned(),
                met: None,
            },
        ],
    }
}
