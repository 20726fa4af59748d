//! Containers as far as a node agent can see them: a cgroup whose path
//! carries the container's ID, as a container runtime makes one. The probe
//! finds a pod's network namespace from that ID through `/proc/<pid>/cgroup`
//! (see [`crate::NetnsRef::Container`]); the demo and the tests make their
//! containers this way so that it does so on one host as on a cluster node.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "containers need the cgroup2 hierarchy, and none is mounted (/proc/self/mountinfo lists no cgroup2)"
    )]
    NoCgroup2,
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A container's cgroup: `<cgroup2>/<prefix><owner pid>/<container-id>`.
/// Dropping it removes the directories (once the processes in it are gone).
#[derive(Debug)]
pub struct ContainerCgroup {
    /// The `cgroup.procs` file a process writes `0` to, to join.
    pub procs: PathBuf,
    dir: PathBuf,
    parent: PathBuf,
}

impl ContainerCgroup {
    pub fn create(prefix: &str, owner_pid: u32, container_id: &str) -> Result<Self, CgroupError> {
        let root = cgroup2_mount().ok_or(CgroupError::NoCgroup2)?;
        let parent = root.join(format!("{prefix}{owner_pid}"));
        let dir = parent.join(container_id);
        std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            procs: dir.join("cgroup.procs"),
            dir,
            parent,
        })
    }
}

impl Drop for ContainerCgroup {
    /// Removes the cgroup once it is empty. On the error and interrupt paths the
    /// container's processes have been sent SIGKILL but may not have exited yet, so
    /// everything left in the cgroup is killed (`cgroup.kill`, Linux 5.14+) and
    /// the removal retried until the kernel has taken the processes out.
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir(&self.parent);
    }
}

/// Where the cgroup2 hierarchy is mounted: `/sys/fs/cgroup` on a unified
/// system, `/sys/fs/cgroup/unified` on a hybrid one.
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        (filesystem.split_whitespace().next()? == "cgroup2")
            .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Removes the cgroups under `prefix` whose owner is no longer running;
/// `is_stale` tells by the owner's pid. Returns what it removed.
pub fn sweep_stale(prefix: &str, is_stale: impl Fn(u32) -> bool) -> Vec<PathBuf> {
    let Some(root) = cgroup2_mount() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Some(owner) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.strip_prefix(prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if is_stale(owner) && remove_tree(&entry.path()) {
            removed.push(entry.path());
        }
    }
    removed
}

/// Removes an (empty of processes) cgroup and its children.
fn remove_tree(dir: &Path) -> bool {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten().filter(|c| c.path().is_dir()) {
            remove_tree(&child.path());
        }
    }
    std::fs::remove_dir(dir).is_ok()
}
