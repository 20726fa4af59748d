//! Running code inside a pod's network namespace.
//!
//! Interface names and indexes, addresses and TC attachments are per network
//! namespace; a node agent reaches a pod's through a file that stands for it
//! (`/proc/<pid>/ns/net`, or a bind mount such as `/run/netns/<name>`). `setns`
//! changes the namespace of the calling thread only, so the work runs on a
//! short-lived thread and the rest of the process stays in its own namespace.
//!
//! The probe attaches TC programs this way; the demo's CLI binds and connects
//! sockets this way (a socket keeps the namespace it was created in).
#![cfg(target_os = "linux")]

use std::{
    fs::File,
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    str::FromStr,
};

use nix::sched::{CloneFlags, setns};

/// How a target's network namespace is named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsRef {
    /// `netns:/run/netns/NAME` or any path to a namespace file.
    Path(PathBuf),
    /// `pid:PID`: the namespace of a process of the pod (the probe has hostPID).
    Pid(u32),
}

impl FromStr for NetnsRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once(':') {
            Some(("netns", path)) if !path.is_empty() => Ok(Self::Path(path.into())),
            Some(("pid", pid)) => pid
                .parse()
                .map(Self::Pid)
                .map_err(|_| format!("{pid:?} is not a process id")),
            _ => Err(format!(
                "{text:?} names no network namespace: use netns:/path/to/ns or pid:PID"
            )),
        }
    }
}

impl NetnsRef {
    pub fn path(&self) -> PathBuf {
        match self {
            Self::Path(path) => path.clone(),
            Self::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("the thread that worked inside network namespace {path} panicked")]
    Panicked { path: PathBuf },
}

/// Runs `work` on a thread inside the network namespace at `path`.
pub fn run_in<T: Send>(path: &Path, work: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    NetnsError::Enter {
                        path: path.to_owned(),
                        source,
                    }
                })?;
                Ok(work())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetnsError::Panicked {
                    path: path.to_owned(),
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_or_say_what_is_expected() {
        assert_eq!("pid:42".parse(), Ok(NetnsRef::Pid(42)));
        assert_eq!(
            "netns:/run/netns/x".parse::<NetnsRef>().unwrap().path(),
            PathBuf::from("/run/netns/x")
        );
        assert_eq!(NetnsRef::Pid(7).path(), PathBuf::from("/proc/7/ns/net"));
        assert!(
            "pid:x"
                .parse::<NetnsRef>()
                .unwrap_err()
                .contains("not a process id")
        );
        assert!(
            "/run/netns/x"
                .parse::<NetnsRef>()
                .unwrap_err()
                .contains("use netns:")
        );
    }

    #[test]
    fn missing_namespace_is_a_clear_error() {
        let error = run_in(Path::new("/nonexistent/ns"), || ()).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot open network namespace /nonexistent/ns")
        );
    }
}
