//! The TC probe against packet capture: HTTP requests/s (wrk, keep-alive) and
//! TCP throughput (iperf3) between two pods over a veth pair, with (a) nothing
//! attached, (b) the probe attached to the server pod and tracing that traffic,
//! (c) tcpdump capturing the server pod's interface to a file, as ksniff does.
//! The probe's CPU time and its BPF programs' own cost per packet (the kernel's
//! run_time_ns / run_cnt) are taken during (b).

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use apitrace_netns::topology::Pod;

use crate::{
    pods::{Guard, in_pod, stage, start_probe},
    report::{Row, Table},
    stats::{BpfStats, Sample, bpf_run_stats, cpu_ms},
};

const APP_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Nothing,
    Probe,
    Tcpdump,
}

#[derive(Default)]
struct Figures {
    requests_per_second: Vec<f64>,
    gigabits_per_second: Vec<f64>,
    /// Only for the probe.
    ns_per_packet_http: Vec<f64>,
    ns_per_packet_bulk: Vec<f64>,
    probe_cpu_ms_per_second: Vec<f64>,
}

pub fn run(probe_binary: &Path, repeats: usize, seconds: u64) -> anyhow::Result<Table> {
    let (pods, runtime) = stage(
        "apitrace-bench-",
        SocketAddr::from(([0, 0, 0, 0], APP_PORT)),
    )?;
    let (client, server, probe_pod) = (pods.pod("client"), pods.pod("server"), pods.pod("probe"));
    let _iperf = Guard(
        in_pod(server, "iperf3", &["-s", "-p", &IPERF_PORT.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));

    let scenarios = [Scenario::Nothing, Scenario::Probe, Scenario::Tcpdump];
    let mut figures: Vec<Figures> = scenarios.iter().map(|_| Figures::default()).collect();
    for repeat in 0..repeats {
        // Interleaved, so that drift in the machine's speed affects all alike.
        for (scenario, figures) in scenarios.iter().zip(&mut figures) {
            eprintln!("tc: repeat {}/{repeats}, {scenario:?}", repeat + 1);
            measure(
                *scenario,
                probe_binary,
                client,
                server,
                probe_pod,
                seconds,
                figures,
            )?;
        }
    }
    drop(runtime);
    Ok(table(&figures, repeats, seconds))
}

fn measure(
    scenario: Scenario,
    probe_binary: &Path,
    client: &Pod,
    server: &Pod,
    probe_pod: &Pod,
    seconds: u64,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let capture = std::env::temp_dir().join(format!("apitrace-bench-{}.pcap", std::process::id()));
    let (running, _stats) = match scenario {
        Scenario::Nothing => (None, None),
        Scenario::Probe => (
            Some(start_probe(probe_binary, probe_pod, &[server])?),
            Some(BpfStats::enable()?),
        ),
        Scenario::Tcpdump => {
            let mut tcpdump = in_pod(server, "tcpdump", &["-i", "eth0", "-s", "0", "-U", "-w"]);
            tcpdump.arg(&capture).stderr(Stdio::null());
            let child = Guard(tcpdump.spawn().context("cannot start tcpdump")?);
            std::thread::sleep(Duration::from_millis(500));
            (Some(child), None)
        }
    };
    let probe_pid = running
        .as_ref()
        .filter(|_| scenario == Scenario::Probe)
        .map(|guard| guard.0.id());

    let before = probe_pid.map(|pid| (bpf_run_stats(pid), cpu_ms(pid)));
    let started = Instant::now();
    figures
        .requests_per_second
        .push(wrk(client, server, seconds)?);
    let after_http = probe_pid.map(|pid| (bpf_run_stats(pid), cpu_ms(pid)));
    figures
        .gigabits_per_second
        .push(iperf(client, server, seconds)? / 1e9);
    let elapsed = started.elapsed().as_secs_f64();
    if let (Some(pid), Some(((time0, count0), cpu0)), Some(((time1, count1), _))) =
        (probe_pid, before, after_http)
    {
        let ((time2, count2), cpu2) = (bpf_run_stats(pid), cpu_ms(pid));
        figures
            .ns_per_packet_http
            .push(per_packet(time1 - time0, count1 - count0));
        figures
            .ns_per_packet_bulk
            .push(per_packet(time2 - time1, count2 - count1));
        figures
            .probe_cpu_ms_per_second
            .push((cpu2 - cpu0) / elapsed);
    }
    drop(running);
    let _ = std::fs::remove_file(&capture);
    Ok(())
}

fn per_packet(time_ns: u64, count: u64) -> f64 {
    if count == 0 {
        f64::NAN
    } else {
        time_ns as f64 / count as f64
    }
}

/// Requests/s of `wrk` from the client pod against the app, keep-alive.
fn wrk(client: &Pod, server: &Pod, seconds: u64) -> anyhow::Result<f64> {
    let url = format!("http://{}:{APP_PORT}/status", server.ipv4);
    let output = in_pod(
        client,
        "wrk",
        &["-t1", "-c8", &format!("-d{seconds}s"), &url],
    )
    .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("wrk printed no Requests/sec:\n{text}"))
}

/// Received bits/s of `iperf3` from the client pod to the server pod.
fn iperf(client: &Pod, server: &Pod, seconds: u64) -> anyhow::Result<f64> {
    let output = in_pod(
        client,
        "iperf3",
        &[
            "-c",
            &server.ipv4.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    )
    .output()?;
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("iperf3 printed no JSON")?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 reported no throughput: {}", report["error"]))
}

fn table(figures: &[Figures], repeats: usize, seconds: u64) -> Table {
    let [nothing, probe, tcpdump] = figures else {
        unreachable!("three scenarios")
    };
    let sample = |values: &Vec<f64>| Sample::of(values.clone());
    let throughput_row = |metric: &str, pick: fn(&Figures) -> &Vec<f64>| {
        let (baseline, ours, peer) = (
            sample(pick(nothing)),
            sample(pick(probe)),
            sample(pick(tcpdump)),
        );
        let ours_ratio = ours.median / baseline.median;
        let peer_loss = 1.0 - peer.median / baseline.median;
        Row {
            metric: metric.to_owned(),
            met: Some(ours_ratio >= 0.97 && 1.0 - ours_ratio <= peer_loss / 5.0),
            ours,
            peer: Some(("tcpdump".to_owned(), peer)),
            baseline: Some(baseline),
            target: "≥ 0.97 of baseline; loss ≤ 1/5 of tcpdump's".to_owned(),
        }
    };
    let cost_row = |metric: &str, values: &Vec<f64>| {
        let ours = sample(values);
        Row {
            metric: metric.to_owned(),
            met: Some(ours.median <= 50.0),
            ours,
            peer: None,
            baseline: None,
            target: "median ≤ 50 ns".to_owned(),
        }
    };
    Table {
        title: "TC probe vs packet capture".to_owned(),
        setup: format!(
            "Two pods (network namespaces on a bridge), wrk -t1 -c8 against the demo's app and iperf3 between them, {seconds} s each, {repeats} repeats interleaved: \
             (a) nothing attached, (b) apitrace-probe attached to the server pod (eth0 ingress/egress, lo egress) tracing that traffic, \
             (c) tcpdump -i eth0 -s 0 -w FILE in the server pod. Median (lowest–highest)."
        ),
        rows: vec![
            throughput_row("HTTP requests/s (wrk, keep-alive)", |f| {
                &f.requests_per_second
            }),
            throughput_row("TCP throughput, Gbit/s (iperf3)", |f| {
                &f.gigabits_per_second
            }),
            cost_row(
                "BPF run time per packet, ns, under wrk",
                &probe.ns_per_packet_http,
            ),
            cost_row(
                "BPF run time per packet, ns, under iperf3",
                &probe.ns_per_packet_bulk,
            ),
            Row {
                metric: "probe CPU, ms per second of load".to_owned(),
                ours: sample(&probe.probe_cpu_ms_per_second),
                peer: None,
                baseline: None,
                target: "-".to_owned(),
                met: None,
            },
        ],
    }
}
