//! `kubectl apitrace demo`: the whole data path on one Linux host.
//!
//! The same probe, filter and join as a cluster session, with pods made of
//! network namespaces and a real Envoy as the sidecar. See [`session`] for the
//! order things happen in and how they are undone.

use std::process::ExitCode;

use crate::args::DemoArgs;

#[cfg(target_os = "linux")]
pub mod child;
#[cfg(target_os = "linux")]
pub mod grpc;
#[cfg(target_os = "linux")]
pub mod http;
#[cfg(target_os = "linux")]
pub mod jwt;
#[cfg(target_os = "linux")]
pub mod mesh;
#[cfg(target_os = "linux")]
pub mod plan;
#[cfg(target_os = "linux")]
pub mod session;
#[cfg(target_os = "linux")]
pub mod traffic;
#[cfg(target_os = "linux")]
pub use apitrace_netns::topology;

/// Every namespace and cgroup the demo creates starts with this, followed by
/// the pid of the CLI that created it, so that leftovers of a CLI that died
/// can be found.
#[cfg(target_os = "linux")]
const NAME_PREFIX: &str = "apitrace-demo-";

/// Whether `pid` is a live process of this program (a pid can be reused).
/// Compared by the executable's name, not its path: another build or install
/// of the CLI running its own demo is not stale.
#[cfg(target_os = "linux")]
fn is_running_demo(pid: u32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    pid == std::process::id()
        || std::env::current_exe().is_ok_and(|ours| ours.file_name() == exe.file_name())
}

#[cfg(target_os = "linux")]
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    use crate::{
        output::{Destination, Printer},
        pipeline::Pipeline,
        saved::{Keep, SavedWriter},
    };
    use apitrace_join::JoinConfig;

    let output = &args.output;
    let printer = Printer::new(
        std::io::stdout().lock(),
        output.format,
        output.follow,
        Destination::stdout(),
    )?;
    let (select, until) = (output.select.clone(), output.until);
    let keep = Keep::of(select.is_some(), args.save.all);
    let plan = plan::Plan::resolve(args)?;
    let saved = plan
        .save
        .as_deref()
        .map(|path| SavedWriter::create(path, keep))
        .transpose()?;
    let config = JoinConfig {
        show_secrets: plan.show_secrets,
        ..JoinConfig::default()
    };
    let pipeline = Pipeline::new(config, saved, printer).selecting(select, until);
    // One thread: the demo's child processes are tied to the thread that
    // started them (PR_SET_PDEATHSIG), which must live as long as the CLI.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(session::run(&plan, pipeline))
}

#[cfg(not(target_os = "linux"))]
pub fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "the demo runs on Linux only: it builds pods out of network namespaces and attaches eBPF programs; run it on a Linux host or VM"
    )
}
