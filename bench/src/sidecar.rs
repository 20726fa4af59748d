//! The server pod's sidecar in the benchmarks that run Envoy: the demo's
//! bootstrap with the filter module the probe serves, Envoy started in the
//! pod, the client pod loading it at a fixed rate, and the probe's counters.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use apitrace_netns::topology::Pod;
use apitrace_proto::ports;
use kubectl_apitrace::demo::{
    grpc,
    http::{self, Connection},
    mesh::{self, Layers, MeshPod, ProbeAt, Sidecar},
};

use crate::pods::Guard;

pub const APP_PORT: u16 = 8080;
const PROBE_HOST: &str = "apitrace-bench.apitrace-system.svc.cluster.local";

/// The filter module the probe embeds, checked to be the one it serves.
pub struct Module {
    path: String,
    sha256: String,
}

impl Module {
    pub fn served(filter: &Path, probe_pod: &Pod) -> anyhow::Result<Self> {
        let bytes = std::fs::read(filter)
            .with_context(|| format!("reading the filter module {}", filter.display()))?;
        let sha256 = sha256_hex(&bytes);
        let path = format!("/wasm/apitrace-filter-{sha256}.wasm");
        if !probe_get(probe_pod, &path)?.starts_with("HTTP/1.1 200") {
            bail!(
                "the probe does not serve {path}: {} is not the module it embeds; build both with `cargo xtask bench`",
                filter.display()
            );
        }
        Ok(Self { path, sha256 })
    }
}

impl Module {
    /// Where sidecars reach the probe in `probe_pod` for this module.
    pub fn probe_at<'a>(&'a self, probe_pod: &Pod) -> ProbeAt<'a> {
        ProbeAt {
            ip: probe_pod.ipv4,
            host: PROBE_HOST,
            module_path: &self.path,
            module_sha256: &self.sha256,
            session_token: "bench",
            show_secrets: false,
        }
    }
}

/// The demo's sidecar bootstrap for `server`, with `layers`, written to
/// `config`.
pub fn write_bootstrap(
    config: &Path,
    server: &Pod,
    probe_pod: &Pod,
    module: &Module,
    layers: Layers,
) -> anyhow::Result<()> {
    let sidecar = Sidecar::serving(
        MeshPod {
            name: server.name,
            namespace: "bench",
            service_account: "default",
            ipv4: server.ipv4,
        },
        APP_PORT,
        module.probe_at(probe_pod),
        layers,
    );
    std::fs::write(config, sidecar.bootstrap().to_string())
        .with_context(|| format!("writing {}", config.display()))
}

/// Where the guest build leaves the filter module the probe embeds.
pub fn filter_module(target_dir: &Path) -> PathBuf {
    target_dir.join("guest/wasm32-unknown-unknown/guest-wasm/apitrace_wasm_filter.wasm")
}

/// Envoy with `config` as `pod`'s sidecar, run as the proxy's user.
pub fn start_envoy(
    envoy: &Path,
    pod: &Pod,
    config: &Path,
    workdir: &Path,
) -> anyhow::Result<Guard> {
    let log = std::fs::File::create(workdir.join(format!("envoy-{}.log", pod.name)))?;
    let line = mesh::proxy_command(&pod.netns, envoy, config, 2);
    let mut command = std::process::Command::new(&line[0]);
    command
        .args(&line[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Ok(Guard(command.spawn().context("cannot start Envoy")?))
}

/// Waits until `client` gets an answer from `target` (named `authority`).
pub async fn wait_ready(client: &Pod, target: SocketAddr, authority: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(stream) = http::connect_in(&client.netns_path(), target).await
            && let Ok(mut connection) = Connection::over(stream).await
            && let Ok((status, _)) = connection.get(authority, "/status", None).await
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

/// A fixed request rate, spread over keep-alive connections.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub rate: u32,
    pub connections: u32,
    pub speaks: Speaks,
}

/// What the load's client speaks to the server's Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// `GET /api/orders` over HTTP/1.1, one at a time per connection.
    Http1,
    /// The demo's unary `GetOrder` over a tonic channel (HTTP/2), one at a
    /// time per channel.
    Grpc,
}

/// One keep-alive connection of a load, as its client speaks.
enum Open {
    Http(Connection),
    Grpc(tonic::transport::Channel),
}

impl Open {
    async fn new(
        speaks: Speaks,
        client: &Pod,
        target: SocketAddr,
        authority: &str,
    ) -> anyhow::Result<Self> {
        Ok(match speaks {
            Speaks::Http1 => {
                let stream = http::connect_in(&client.netns_path(), target).await?;
                Self::Http(Connection::over(stream).await?)
            }
            Speaks::Grpc => Self::Grpc(
                http::channel_in(&client.netns_path(), target, authority)
                    .await
                    .with_context(|| format!("no gRPC channel to {target}"))?,
            ),
        })
    }

    /// One call; an answer other than the app's own is an error: the mesh
    /// failed the call, and the run would measure something else.
    async fn call(&mut self, authority: &str, token: &str) -> anyhow::Result<()> {
        match self {
            Self::Http(connection) => {
                let (status, _) = connection
                    .get(authority, "/api/orders", Some(token))
                    .await?;
                if !status.is_success() && status.as_u16() != 404 {
                    bail!("the app answered {status}");
                }
            }
            Self::Grpc(channel) => {
                let call = grpc::Call::GetOrder(42);
                let outcome = grpc::call(channel.clone(), call, token).await?;
                if outcome != call.expected() {
                    bail!("the gRPC call {call:?} came back with {outcome:?}");
                }
            }
        }
        Ok(())
    }
}

impl Load {
    /// `rate` requests a second for `duration`, spread over the connections,
    /// each on its own schedule; returns each request's latency. A schedule
    /// that falls behind sends at once (the latency counts from when the
    /// request was due, so queueing is not hidden).
    pub async fn run(
        self,
        client: &Pod,
        target: SocketAddr,
        authority: &str,
        token: &str,
        duration: Duration,
    ) -> anyhow::Result<Vec<Duration>> {
        let period = Duration::from_secs(1) * self.connections / self.rate;
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..self.connections {
            let mut connection = Open::new(self.speaks, client, target, authority).await?;
            let token = token.to_owned();
            let authority = authority.to_owned();
            tasks.spawn(async move {
                let offset = period * index / self.connections;
                let start = tokio::time::Instant::now() + offset;
                let mut latencies = Vec::new();
                let mut due = start;
                while due < start + duration {
                    tokio::time::sleep_until(due).await;
                    connection.call(&authority, &token).await?;
                    latencies.push(due.elapsed());
                    due += period;
                }
                Ok::<_, anyhow::Error>(latencies)
            });
        }
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            all.extend(done??);
        }
        Ok(all)
    }
}

/// The probe's counters, by metric and labels as `/metrics` writes them.
pub fn probe_metrics(probe_pod: &Pod) -> anyhow::Result<HashMap<String, u64>> {
    let metrics = probe_get(probe_pod, "/metrics")?;
    Ok(metrics
        .lines()
        .filter(|line| line.starts_with("apitrace_probe_"))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect())
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

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
