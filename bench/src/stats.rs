//! Medians and spreads, and what the kernel says a process and its BPF
//! programs cost.

use serde::Serialize;

/// A repeated measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub values: Vec<f64>,
}

impl Sample {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => values[n / 2],
            _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Self {
            median,
            min: values.first().copied().unwrap_or(f64::NAN),
            max: values.last().copied().unwrap_or(f64::NAN),
            values,
        }
    }
}

/// The run statistics of the BPF programs a process holds, summed:
/// `(run_time_ns, run_cnt)`, from its descriptors' fdinfo (each program
/// descriptor shows them while `kernel.bpf_stats_enabled` is on).
pub fn bpf_run_stats(pid: u32) -> (u64, u64) {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0, 0);
    };
    let mut seen = std::collections::HashSet::new();
    let (mut time, mut count) = (0, 0);
    for info in fds
        .flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
    {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(run_time), Some(run_count)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        else {
            continue;
        };
        if seen.insert(id) {
            time += run_time;
            count += run_count;
        }
    }
    (time, count)
}

/// The CPU time (user and system) a process has used, in milliseconds.
pub fn cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) start after its ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 (1-based); `fields` starts at 3.
    let ticks: f64 = fields.get(11..13).map_or(0.0, |times| {
        times.iter().filter_map(|t| t.parse::<f64>().ok()).sum()
    });
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1000.0 / per_second
}

/// Turns `kernel.bpf_stats_enabled` on for as long as it lives, and restores
/// what it was.
pub struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> std::io::Result<Self> {
        let before = std::fs::read_to_string(BPF_STATS)?;
        std::fs::write(BPF_STATS, "1")?;
        Ok(Self { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.before.trim());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let sample = Sample::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((sample.median, sample.min, sample.max), (2.0, 1.0, 3.0));
        assert_eq!(Sample::of(vec![4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }
}
