//! The benchmark tables: each row our figure, the peer's, the ratio and the
//! target, printed as Markdown; and the same as JSON.

use std::path::Path;

use serde::Serialize;

use crate::stats::Sample;

/// One benchmark: a title, what it ran, and its rows.
#[derive(Debug, Serialize)]
pub struct Table {
    pub title: String,
    pub setup: String,
    pub rows: Vec<Row>,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub metric: String,
    pub ours: Sample,
    /// The peer's figure and who the peer is, when there is one.
    pub peer: Option<(String, Sample)>,
    /// The baseline (nothing of ours running), when the row compares to one.
    pub baseline: Option<Sample>,
    pub target: String,
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub tables: Vec<Table>,
}

impl Report {
    pub fn new() -> Self {
        Self {
            machine: machine(),
            tables: Vec::new(),
        }
    }

    pub fn add(&mut self, table: Table) {
        self.tables.push(table);
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("Machine: {}\n\n", self.machine);
        for table in &self.tables {
            out.push_str(&format!("### {}\n\n{}\n\n", table.title, table.setup));
            out.push_str("| metric | baseline | ours | peer | ours / baseline | peer / baseline | target | met |\n");
            out.push_str("|---|---|---|---|---|---|---|---|\n");
            for row in &table.rows {
                let ratio = |sample: &Sample| match &row.baseline {
                    Some(baseline) => format!("{:.3}", sample.median / baseline.median),
                    None => "-".to_owned(),
                };
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    row.metric,
                    row.baseline.as_ref().map_or_else(|| "-".to_owned(), show),
                    show(&row.ours),
                    row.peer.as_ref().map_or_else(
                        || "-".to_owned(),
                        |(who, sample)| format!("{} ({who})", show(sample))
                    ),
                    ratio(&row.ours),
                    row.peer
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), |(_, sample)| ratio(sample)),
                    row.target,
                    match row.met {
                        Some(true) => "yes",
                        Some(false) => "**no**",
                        None => "-",
                    },
                ));
            }
            out.push('\n');
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)?)?;
        Ok(())
    }
}

/// A median with its spread: `1234.5 (1200.0–1300.2)`.
fn show(sample: &Sample) -> String {
    let digits = if sample.median.abs() >= 100.0 { 0 } else { 2 };
    format!(
        "{:.*} ({:.*}–{:.*})",
        digits, sample.median, digits, sample.min, digits, sample.max
    )
}

/// CPU model and count, memory, kernel: what the figures depend on.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let kib: u64 = info
                .lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some(kib / (1024 * 1024))
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cpus} CPUs, {memory} GiB, Linux {}",
        kernel.trim()
    )
}
