//! Printing records: a kubectl-style table or one JSON object per line.

use std::io::{self, Write};

use apitrace_join::CallRecord;
use tabled::{
    Table, Tabled,
    settings::{Padding, Style},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table, one row per call.
    Table,
    /// One JSON object per call and line (keys: see docs/record.md).
    Ndjson,
}

/// Writes one record as a JSON line.
pub fn write_ndjson(out: &mut impl Write, record: &CallRecord) -> io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")?;
    out.flush()
}

#[derive(Tabled)]
struct Row {
    #[tabled(rename = "TIME")]
    time: String,
    #[tabled(rename = "SOURCE")]
    source: String,
    #[tabled(rename = "DESTINATION")]
    destination: String,
    #[tabled(rename = "PROTO")]
    protocol: String,
    #[tabled(rename = "METHOD")]
    method: String,
    #[tabled(rename = "PATH")]
    path: String,
    #[tabled(rename = "STATUS")]
    status: String,
    #[tabled(rename = "REQUEST ID")]
    request_id: String,
    #[tabled(rename = "AUTH")]
    auth: String,
    #[tabled(rename = "IP ID")]
    ip_id: String,
    #[tabled(rename = "TCP SEQ")]
    tcp_seq: String,
    #[tabled(rename = "LAYERS")]
    layers: String,
}

impl Row {
    fn of(record: &CallRecord) -> Self {
        let peer = |p: &apitrace_join::Peer| {
            let who = if p.name.is_empty() {
                p.kind.clone()
            } else {
                format!("{}/{}", p.namespace, p.name)
            };
            format!("{who} {}", socket(&p.ip, p.port))
        };
        let none = || "-".to_owned();
        Self {
            // RFC 3339 with microseconds: keep the time of day to milliseconds.
            time: record.time.get(11..23).unwrap_or(&record.time).to_owned(),
            source: peer(&record.src),
            destination: peer(&record.dst),
            protocol: record.protocol.clone(),
            method: record.method.clone(),
            path: record.path.clone(),
            status: if record.status == 0 {
                none()
            } else {
                record.status.to_string()
            },
            request_id: record.request_id.clone(),
            auth: record.auth.as_ref().map_or_else(none, |auth| {
                match auth.claims.get("sub").and_then(|sub| sub.as_str()) {
                    Some(subject) => format!("{} sub={subject}", auth.scheme),
                    None => auth.scheme.clone(),
                }
            }),
            ip_id: record
                .tc
                .as_ref()
                .map_or_else(none, |tc| tc.ip_id.to_string()),
            tcp_seq: record
                .tc
                .as_ref()
                .map_or_else(none, |tc| tc.tcp_seq.to_string()),
            layers: record
                .layers
                .iter()
                .map(|layer| layer.as_str())
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

fn socket(ip: &str, port: u32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Writes the records as a table in kubectl's style: no borders, columns at
/// least three spaces apart.
pub fn write_table(out: &mut impl Write, records: &[CallRecord]) -> io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut table = Table::new(records.iter().map(Row::of));
    table.with(Style::blank()).with(Padding::new(0, 2, 0, 0));
    for line in table.to_string().lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    out.flush()
}

/// Whether `error` is a write to a reader that went away (`| head`).
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|cause| cause.kind() == io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apitrace_join::{Layer, Peer};

    fn record() -> CallRecord {
        CallRecord {
            time: "2024-09-18T04:06:54.123456Z".into(),
            request_id: "bf170e6d-1e75-4a83-89ca-5a2e55a1c964".into(),
            src: Peer {
                namespace: "default".into(),
                name: "sleep".into(),
                kind: "Pod".into(),
                ip: "10.0.0.40".into(),
                port: 50174,
            },
            dst: Peer {
                namespace: "default".into(),
                name: "nginx".into(),
                kind: "Pod".into(),
                ip: "10.0.0.135".into(),
                port: 80,
            },
            protocol: "HTTP/1.1".into(),
            method: "GET".into(),
            path: "/status".into(),
            authority: "nginx".into(),
            status: 200,
            layers: vec![Layer::Als, Layer::Wasm],
            response_flags: vec![],
            auth: None,
            tc: None,
            latency: None,
            als: None,
            wasm: None,
            hops: vec![],
        }
    }

    #[test]
    fn table_has_kubectl_columns_and_no_borders() {
        let mut out = Vec::new();
        write_table(&mut out, &[record()]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TIME           SOURCE"), "{text}");
        assert!(
            lines[1].starts_with("04:06:54.123   default/sleep 10.0.0.40:50174"),
            "{text}"
        );
        assert!(lines[1].ends_with("als,wasm"), "{text}");
        assert!(!text.contains('|') && !text.contains('+'));
    }

    #[test]
    fn ndjson_is_one_object_per_line() {
        let mut out = Vec::new();
        write_ndjson(&mut out, &record()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["src"]["name"], "sleep");
        assert_eq!(value["layers"], serde_json::json!(["als", "wasm"]));
    }

    #[test]
    fn closed_pipe_is_recognised_through_context() {
        let error =
            anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_closed_pipe(&error));
        assert!(!is_closed_pipe(&anyhow::anyhow!("other")));
    }
}
