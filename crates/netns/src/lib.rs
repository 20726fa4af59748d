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

pub mod cgroup;
pub mod topology;

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
    /// `container:ID`: the namespace of a process of that container, found the
    /// way a node agent does: the container runtime puts each container in a
    /// cgroup whose path carries its ID, which `/proc/<pid>/cgroup` shows.
    /// Kubernetes' `containerd://`, `cri-o://` and `docker://` prefixes are
    /// accepted.
    Container(String),
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
            Some(("container", id)) => {
                let id = id.rsplit("://").next().unwrap_or(id);
                if id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(Self::Container(id.to_ascii_lowercase()))
                } else {
                    Err(format!(
                        "{id:?} is not a container ID (at least 12 hexadecimal digits)"
                    ))
                }
            }
            _ => Err(format!(
                "{text:?} names no network namespace: use netns:/path/to/ns, pid:PID or container:ID"
            )),
        }
    }
}

impl NetnsRef {
    /// The namespace file to open. For a container, the first process (lowest
    /// pid) whose cgroup path names it, under `/proc`.
    pub fn resolve(&self) -> Result<PathBuf, NetnsError> {
        self.resolve_in(Path::new("/proc"))
    }

    fn resolve_in(&self, proc_root: &Path) -> Result<PathBuf, NetnsError> {
        match self {
            Self::Path(path) => Ok(path.clone()),
            Self::Pid(pid) => Ok(proc_root.join(pid.to_string()).join("ns/net")),
            Self::Container(id) => container_pid(proc_root, id)
                .map(|pid| proc_root.join(pid.to_string()).join("ns/net"))
                .ok_or_else(|| NetnsError::NoContainer { id: id.clone() }),
        }
    }
}

/// The lowest pid in container `id`'s own cgroup, as its runtime names it.
fn container_pid(proc_root: &Path, id: &str) -> Option<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir(proc_root)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.into_iter().find(|pid| {
        std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup"))
            .is_ok_and(|cgroups| names_container(&cgroups, id))
    })
}

/// Whether a `/proc/<pid>/cgroup` (one `hierarchy:controllers:path` line per
/// hierarchy under cgroup v1, the one `0::path` line under v2) puts the
/// process in container `id`'s cgroup. A runtime names that cgroup by the ID
/// in one path component:
///
/// - the systemd driver: `cri-containerd-<id>.scope` (containerd),
///   `crio-<id>.scope` (CRI-O), `docker-<id>.scope` (Docker, cri-dockerd);
/// - the cgroupfs driver: `<id>` (containerd, Docker), `crio-<id>` (CRI-O).
///
/// CRI-O runs the container's conmon in `crio-conmon-<id>.scope` (systemd) or
/// `crio-conmon-<id>` (cgroupfs) of the same pod, started before the container
/// and in the node's network namespace: matching the ID anywhere in the path
/// would pick conmon, the lowest pid, and attach the probe to the node
/// (cri-o/cri-o, internal/config/cgmgr/systemd_linux.go `MoveConmonToCgroup`
/// and `ContainerCgroupAbsolutePath`, cgroupfs_linux.go, and cgmgr_linux.go
/// `containerCgroupPath`, v1.34.11). crun configures a child
/// (`crio-<id>.scope/container`) of the container's cgroup
/// (`crunContainerCgroupManager`, same file), so any component may be the
/// one, not only the last.
fn names_container(cgroups: &str, id: &str) -> bool {
    let forms = [
        format!("cri-containerd-{id}.scope"),
        format!("crio-{id}.scope"),
        format!("docker-{id}.scope"),
        format!("crio-{id}"),
    ];
    cgroups
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .any(|component| component == id || forms.iter().any(|form| form == component))
}

/// The system's error is part of the message, not a `source`: printed as a
/// chain, it would be said twice.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {error}")]
    Open { path: PathBuf, error: io::Error },
    #[error("cannot enter network namespace {path}: {error}")]
    Enter { path: PathBuf, error: nix::Error },
    #[error("the thread that worked inside network namespace {path} panicked")]
    Panicked { path: PathBuf },
    #[error(
        "no process of container {id} is running on this node (no /proc/<pid>/cgroup names it)"
    )]
    NoContainer { id: String },
}

/// An open network namespace. Holding it keeps the namespace (and so its
/// interfaces and their TC attachments) reachable after the process it was
/// found through has exited.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|error| NetnsError::Open {
            path: path.to_owned(),
            error,
        })?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// Runs `work` on a thread inside this namespace.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|error| {
                        NetnsError::Enter {
                            path: self.path.clone(),
                            error,
                        }
                    })?;
                    Ok(work())
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(NetnsError::Panicked {
                        path: self.path.clone(),
                    })
                })
        })
    }
}

/// Runs `work` on a thread inside the network namespace at `path`.
pub fn run_in<T: Send>(path: &Path, work: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    Netns::open(path)?.run(work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_or_say_what_is_expected() {
        assert_eq!("pid:42".parse(), Ok(NetnsRef::Pid(42)));
        assert_eq!(
            "netns:/run/netns/x".parse(),
            Ok(NetnsRef::Path(PathBuf::from("/run/netns/x")))
        );
        let id = "3F2A9C0E1B7D4A5E6F8091A2B3C4D5E6F708192A3B4C5D6E7F8091A2B3C4D5E6";
        assert_eq!(
            format!("container:containerd://{id}").parse(),
            Ok(NetnsRef::Container(id.to_ascii_lowercase()))
        );
        assert!(
            "pid:x"
                .parse::<NetnsRef>()
                .unwrap_err()
                .contains("not a process id")
        );
        assert!(
            "container:abc"
                .parse::<NetnsRef>()
                .unwrap_err()
                .contains("not a container ID")
        );
        assert!(
            "/run/netns/x"
                .parse::<NetnsRef>()
                .unwrap_err()
                .contains("use netns:")
        );
    }

    /// A /proc with one container per runtime, cgroup driver and cgroup
    /// version, as each runtime lays its cgroups out, and the processes next
    /// to them that name the same ID and must not be taken for the container.
    fn fake_proc() -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        for (pid, cgroup) in [
            // containerd, systemd driver, cgroup v2.
            (
                4000,
                "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-aaaaaaaaaaaa1111.scope\n",
            ),
            // containerd, cgroupfs driver, cgroup v1 (one line per hierarchy).
            (
                4001,
                "12:memory:/kubepods/burstable/pod2/bbbbbbbbbbbb2222\n1:name=systemd:/kubepods/burstable/pod2/bbbbbbbbbbbb2222\n0::/\n",
            ),
            // CRI-O, systemd driver, cgroup v2: conmon first (lower pid, in
            // the node's network namespace), then the container, under crun
            // in the scope's `container` child.
            (
                3990,
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3.slice/crio-conmon-cccccccccccc3333.scope\n",
            ),
            (
                4002,
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3.slice/crio-cccccccccccc3333.scope/container\n",
            ),
            // CRI-O, cgroupfs driver, cgroup v1.
            (
                3991,
                "4:pids:/kubepods/besteffort/pod4/crio-conmon-dddddddddddd4444\n",
            ),
            (
                4003,
                "4:pids:/kubepods/besteffort/pod4/crio-dddddddddddd4444\n",
            ),
            // Docker (cri-dockerd), systemd driver, cgroup v1.
            (
                4004,
                "5:cpu,cpuacct:/kubepods.slice/kubepods-pod5.slice/docker-eeeeeeeeeeee5555.scope\n",
            ),
            // CRI-O conmon alone: its container has not started yet.
            (
                3992,
                "0::/kubepods.slice/kubepods-pod6.slice/crio-conmon-ffffffffffff6666.scope\n",
            ),
            // The ID inside a longer name.
            (300, "0::/user.slice/ffaaaaaaaaaaaa1111ff\n"),
        ] {
            let process = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&process).unwrap();
            std::fs::write(process.join("cgroup"), cgroup).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("self")).unwrap();
        dir
    }

    #[test]
    fn a_container_is_found_by_its_runtimes_cgroup_never_by_conmons() {
        let proc_root = fake_proc();
        let resolve = |id: &str| NetnsRef::Container(id.into()).resolve_in(proc_root.path());
        for (id, pid) in [
            ("aaaaaaaaaaaa1111", 4000),
            ("bbbbbbbbbbbb2222", 4001),
            ("cccccccccccc3333", 4002),
            ("dddddddddddd4444", 4003),
            ("eeeeeeeeeeee5555", 4004),
        ] {
            assert_eq!(
                resolve(id).unwrap(),
                proc_root.path().join(format!("{pid}/ns/net")),
                "container {id}"
            );
        }
        for absent in ["ffffffffffff6666", "999999999999aaaa"] {
            assert_eq!(
                resolve(absent).unwrap_err().to_string(),
                format!(
                    "no process of container {absent} is running on this node (no /proc/<pid>/cgroup names it)"
                )
            );
        }
    }

    /// A directory removed when the test ends.
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let path = std::env::temp_dir().join(format!(
                    "apitrace-netns-test-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::create_dir_all(&path).unwrap();
                Self(path)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
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
