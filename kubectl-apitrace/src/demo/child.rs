//! The demo's processes (the probe, Envoy): started inside a pod's network
//! namespace, and never outliving the CLI.
//!
//! `PR_SET_PDEATHSIG` makes the kernel kill a child when the thread that
//! started it ends, also when the CLI is killed with SIGKILL. The demo runs on a
//! single-threaded runtime, so that thread is the main thread.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("cannot open network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

/// A running process of the demo. Dropping it kills the process.
pub struct DemoProcess {
    name: &'static str,
    log: PathBuf,
    child: Child,
}

impl DemoProcess {
    /// Starts `command` inside the network namespace at `netns` (and, when
    /// given, in the cgroup whose `cgroup.procs` is `cgroup`), with stdout and
    /// stderr going to `log`; as user and group `run_as` when given.
    pub fn spawn(
        name: &'static str,
        mut command: Command,
        netns: &Path,
        cgroup: Option<&Path>,
        run_as: Option<u32>,
        log: PathBuf,
    ) -> Result<Self, ChildError> {
        let namespace = File::open(netns).map_err(|source| ChildError::Netns {
            path: netns.to_owned(),
            source,
        })?;
        let cgroup = cgroup
            .map(|procs| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(procs)
                    .map_err(|source| ChildError::Cgroup {
                        path: procs.to_owned(),
                        source,
                    })
            })
            .transpose()?;
        let cgroup_fd = cgroup.as_ref().map(AsRawFd::as_raw_fd);
        let output = File::create(&log).map_err(|source| ChildError::Log {
            path: log.clone(),
            source,
        })?;
        let errors = output.try_clone().map_err(|source| ChildError::Log {
            path: log.clone(),
            source,
        })?;
        let namespace_fd = namespace.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe system calls run
        // (setns, write, setgroups, setgid, setuid, prctl), on descriptors that
        // stay open until spawn returns. Writing "0" to cgroup.procs moves the
        // writing process. The user changes after the namespace (which needs
        // root) and before the death signal is set, which a change of user
        // clears (prctl(2)).
        unsafe {
            command.pre_exec(move || {
                if libc::setns(namespace_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = cgroup_fd
                    && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
                {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(id) = run_as
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(id) != 0
                        || libc::setuid(id) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let program = format!("{:?}", command.as_std().get_program());
        let child = command
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ChildError::Spawn { program, source })?;
        drop(namespace);
        drop(cgroup);
        Ok(Self { name, log, child })
    }

    /// Whether the process has exited already (a start-up failure).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the process to stop (SIGTERM), and kills it after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// The end of the process's log, for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        if tail.is_empty() {
            format!("({} wrote nothing to its log)", self.name)
        } else {
            format!(
                "last lines of the {}'s log:\n{}",
                self.name,
                tail.join("\n")
            )
        }
    }
}
