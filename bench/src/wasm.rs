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
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};
use kubectl_apitrace::demo::{
    jwt,
    mesh::{Layers, iptables},
};

use crate::{
    pods::{stage, start_probe},
    report::{Row, Table},
    sidecar::{
        APP_PORT, Load, Module, Speaks, probe_metrics, start_envoy, wait_ready, write_bootstrap,
    },
    stats::{Sample, cpu_ms},
};

const LOAD: Load = Load {
    rate: 500,
    connections: 4,
    speaks: Speaks::Http1,
};

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
    let (pods, runtime) = stage(
        "apitrace-bwasm-",
        SocketAddr::from(([0, 0, 0, 0], APP_PORT)),
    )?;
    let (client, server, probe_pod) = (pods.pod("client"), pods.pod("server"), pods.pod("probe"));
    pods.restore_iptables(server, false, &iptables::capture(false, APP_PORT, None))
        .context("the server pod's traffic capture")?;
    let _probe = start_probe(probe_binary, probe_pod, &[server])?;
    let module = Module::served(filter, probe_pod)?;
    let workdir = std::env::temp_dir().join(format!("apitrace-bwasm-{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let token = format!("Bearer {}", jwt::demo_token(1_790_000_000));

    let mut figures: Vec<Figures> = SCENARIOS.iter().map(|_| Figures::default()).collect();
    for repeat in 0..repeats {
        for ((name, layers), figures) in SCENARIOS.iter().zip(&mut figures) {
            eprintln!("wasm: repeat {}/{repeats}, {name}", repeat + 1);
            let config = workdir.join("envoy.json");
            write_bootstrap(&config, server, probe_pod, &module, *layers)?;
            let envoy_process = start_envoy(envoy, server, &config, &workdir)?;
            let envoy_pid = envoy_process.0.id();
            let target = SocketAddr::new(IpAddr::V4(server.ipv4), APP_PORT);
            runtime.block_on(wait_ready(client, target, "app"))?;
            // Warm up, then prove the scenario's layers are at work.
            let before = probe_counts(probe_pod)?;
            runtime.block_on(LOAD.run(client, target, "app", &token, Duration::from_secs(1)))?;
            std::thread::sleep(Duration::from_millis(1500));
            let after = probe_counts(probe_pod)?;
            let (als, wasm) = (after.0 - before.0, after.1 - before.1);
            if (als > 0) != layers.access_log || (wasm > 0) != layers.filter {
                bail!(
                    "{name}: the probe received {als} access logs and {wasm} WASM events during the warm-up; the layers did not run as configured"
                );
            }
            let cpu_before = cpu_ms(envoy_pid);
            let latencies = runtime.block_on(LOAD.run(
                client,
                target,
                "app",
                &token,
                Duration::from_secs(seconds),
            ))?;
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

/// (access logs, WASM events) the probe has received.
fn probe_counts(probe_pod: &apitrace_netns::topology::Pod) -> anyhow::Result<(u64, u64)> {
    let metrics = probe_metrics(probe_pod)?;
    let count = |source: &str| {
        metrics
            .get(&format!(
                "apitrace_probe_events_total{{source=\"{source}\"}}"
            ))
            .copied()
            .unwrap_or(0)
    };
    Ok((count("als"), count("wasm")))
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

fn table(figures: &[Figures], repeats: usize, seconds: u64) -> Table {
    let (rate, connections) = (LOAD.rate, LOAD.connections);
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
            "A real Envoy (the demo's sidecar bootstrap, --concurrency 2) in front of the demo's app, {rate} requests/s over {connections} keep-alive \
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
