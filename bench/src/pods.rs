//! The stage both benchmarks run on: a client, a server and a probe pod
//! (network namespaces on a bridge) with the demo's app in the server pod, and
//! the processes started in them.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use apitrace_netns::topology::{Pod, Topology};
use apitrace_proto::probe_args::{ProbeArgs, ProbeTarget, SESSION_TOKEN_ENV};
use kubectl_apitrace::demo::http;
use tokio::runtime::Runtime;

/// The pods, named client, server and probe, and the runtime serving the app
/// on `app` inside the server pod (dropping the runtime stops it).
pub fn stage(prefix: &str, app: SocketAddr) -> anyhow::Result<(Topology, Runtime)> {
    let pods = Topology::create(prefix, std::process::id(), &["client", "server", "probe"])?;
    let runtime = Runtime::new()?;
    let listener = {
        let _entered = runtime.enter();
        http::listen_in(&pods.pod("server").netns_path(), app)?
    };
    runtime.spawn(http::serve_app(listener));
    Ok((pods, runtime))
}

/// The probe in `probe_pod`, attached to each of `targets`.
pub fn start_probe(binary: &Path, probe_pod: &Pod, targets: &[&Pod]) -> anyhow::Result<Guard> {
    let targets = targets
        .iter()
        .map(|target| ProbeTarget {
            namespace: "bench".to_owned(),
            name: target.name.to_owned(),
            netns: format!("netns:{}", target.netns_path().display()),
        })
        .collect();
    let args = ProbeArgs::new("bench".to_owned(), targets, Duration::from_secs(30 * 60)).to_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut command = in_pod(probe_pod, &binary.to_string_lossy(), &args);
    command
        .env(SESSION_TOKEN_ENV, "bench")
        .stderr(Stdio::null());
    let probe = Guard(command.spawn().context("cannot start the probe")?);
    let health = SocketAddr::new(IpAddr::V4(probe_pod.ipv4), apitrace_proto::ports::HTTP);
    let started = Instant::now();
    let healthy = || {
        apitrace_netns::run_in(&probe_pod.netns_path(), || {
            std::net::TcpStream::connect(health)
        })
        .is_ok_and(|connected| connected.is_ok())
    };
    while !healthy() {
        if started.elapsed() > Duration::from_secs(20) {
            bail!("the probe did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(probe)
}

pub fn in_pod(pod: &Pod, program: &str, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &pod.netns, program])
        .args(args)
        .stdin(Stdio::null());
    command
}

/// A process killed and reaped when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SIGTERM first, so that the probe detaches and tcpdump flushes.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
