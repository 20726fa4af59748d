//! Printing records: a kubectl-style table (`wide` with more columns), one
//! JSON array, JSON lines, an HTTP Archive, or only their summary. Without
//! `--follow` the records are printed when the session ends, in time order;
//! with it, as they are joined. Every printed record is also summed
//! ([`Summary`]).

mod har;
mod summary;
mod table;

use std::io::{self, IsTerminal as _, Write};

use apitrace_join::CallRecord;

pub use summary::Summary;
pub use table::Layout;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table, one row per call.
    Table,
    /// The table with the latency breakdown, Envoy's response flags,
    /// retransmissions and hops.
    Wide,
    /// One JSON array of every call (keys: see docs/record.md).
    Json,
    /// One JSON object per call and line.
    Ndjson,
    /// An HTTP Archive (HAR 1.2), for a browser's network panel.
    Har,
    /// No calls: only the summary, per route and per caller -> callee
    /// (calls, errors, latency quantiles, bytes).
    Summary,
}

impl Format {
    /// Whether records can be printed one by one as they are joined.
    pub fn streams(self) -> bool {
        matches!(self, Self::Table | Self::Wide | Self::Ndjson)
    }
}

/// Where the records go and how they are laid out there.
#[derive(Debug, Clone, Copy)]
pub struct Destination {
    /// The terminal's width, for the table; `None` when not a terminal.
    pub width: Option<usize>,
    pub colour: bool,
}

impl Destination {
    /// Standard output: its width when it is a terminal (or `COLUMNS` says
    /// one), colours only on a terminal and unless `NO_COLOR` is set.
    pub fn stdout() -> Self {
        let terminal = io::stdout().is_terminal();
        let env = |name| std::env::var(name).ok().filter(|value| !value.is_empty());
        let width = env("COLUMNS")
            .and_then(|columns| columns.parse().ok())
            .filter(|&columns: &usize| columns > 0)
            .or_else(|| {
                terminal
                    .then(terminal_size::terminal_size)
                    .flatten()
                    .map(|(width, _)| usize::from(width.0))
            });
        Self {
            width,
            colour: terminal && env("NO_COLOR").is_none() && env("TERM").as_deref() != Some("dumb"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "--follow prints each call as it is joined, and -o {} is one document printed at the end: use -o ndjson, table or wide with --follow",
    clap::ValueEnum::to_possible_value(format).map(|v| v.get_name().to_owned()).unwrap_or_default()
)]
pub struct FollowError {
    format: Format,
}

/// Prints a session's records in one format.
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    follow: bool,
    layout: Layout,
    /// Records held until the end (without `--follow`).
    held: Vec<CallRecord>,
    /// The widths of a followed table, once its header is printed.
    follow_widths: Option<Vec<usize>>,
    summary: Summary,
}

impl<W: Write> Printer<W> {
    pub fn new(
        out: W,
        format: Format,
        follow: bool,
        destination: Destination,
    ) -> Result<Self, FollowError> {
        if follow && !format.streams() {
            return Err(FollowError { format });
        }
        Ok(Self {
            out,
            format,
            follow,
            layout: Layout {
                wide: format == Format::Wide,
                max_width: destination.width,
                colour: destination.colour,
            },
            held: Vec::new(),
            follow_widths: None,
            summary: Summary::default(),
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn print(&mut self, record: CallRecord) -> io::Result<()> {
        self.summary.add(&record);
        if self.format == Format::Summary {
            return Ok(());
        }
        if !self.follow {
            self.held.push(record);
            return Ok(());
        }
        match self.format {
            Format::Ndjson => write_ndjson(&mut self.out, &record)?,
            _ => {
                let header = self.follow_widths.is_none();
                let widths = self
                    .follow_widths
                    .get_or_insert_with(|| self.layout.follow_widths());
                let row = self.layout.render_row(&record, widths, header);
                self.out.write_all(row.as_bytes())?;
            }
        }
        self.out.flush()
    }

    /// Prints what was held, in time order (with `-o summary`, the summary
    /// under `headline`), and returns the summary of what was printed.
    pub fn finish(mut self, headline: &str) -> io::Result<Summary> {
        let mut records = std::mem::take(&mut self.held);
        records.sort_by(|a, b| a.time.cmp(&b.time));
        match self.format {
            Format::Table | Format::Wide => {
                if !records.is_empty() {
                    self.out
                        .write_all(self.layout.render(&records).as_bytes())?;
                }
            }
            Format::Ndjson => {
                for record in &records {
                    write_ndjson(&mut self.out, record)?;
                }
            }
            Format::Json => {
                serde_json::to_writer_pretty(&mut self.out, &records)?;
                self.out.write_all(b"\n")?;
            }
            Format::Har => {
                serde_json::to_writer_pretty(&mut self.out, &har::archive(&records))?;
                self.out.write_all(b"\n")?;
            }
            Format::Summary => self
                .out
                .write_all(self.summary.render(headline).as_bytes())?,
        }
        self.out.flush()?;
        Ok(self.summary)
    }
}

fn write_ndjson(out: &mut impl Write, record: &CallRecord) -> io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")
}

/// Whether `error` is a write to a reader that went away (`| head`).
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|cause| cause.kind() == io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use apitrace_join::{AuthRecord, Latency, Layer, Peer, WireRecord, WireScope};

    /// A call as the demo prints it, with every part a column shows.
    pub(crate) fn record() -> CallRecord {
        CallRecord {
            time: "2024-09-18T04:06:54.123456Z".into(),
            request_id: "bf170e6d-1e75-4a83-89ca-5a2e55a1c964".into(),
            src: Peer {
                namespace: "default".into(),
                name: "sleep".into(),
                kind: "Pod".into(),
                ip: "10.0.0.40".into(),
                port: 50174,
                identity: Some("spiffe://cluster.local/ns/default/sa/sleep".into()),
            },
            dst: Peer {
                namespace: "default".into(),
                name: "nginx".into(),
                kind: "Pod".into(),
                ip: "10.0.0.135".into(),
                port: 80,
                identity: None,
            },
            protocol: "HTTP/1.1".into(),
            method: "GET".into(),
            path: "/status".into(),
            authority: "nginx".into(),
            status: 200,
            layers: vec![Layer::Als, Layer::Wasm],
            response_flags: vec!["UF: upstream connection failure".into(), "URX".into()],
            request_body_bytes: Some(0),
            response_body_bytes: Some(612),
            grpc: None,
            auth: Some(AuthRecord {
                scheme: "Bearer".into(),
                claims: serde_json::json!({"sub": "alice"}).into(),
                jwt_header: serde_json::json!({"alg": "RS256"}).into(),
                fingerprint: "sha256:00".into(),
                token: None,
                error: None,
            }),
            tc: Some(WireRecord {
                ip_id: Some(56940),
                tcp_seq: Some(676633095),
                payload_len: Some(120),
                src: apitrace_join::Endpoint {
                    ip: "10.0.0.40".into(),
                    port: 50174,
                },
                dst: apitrace_join::Endpoint {
                    ip: "10.0.0.135".into(),
                    port: 80,
                },
                interface: "eth0".into(),
                time: Some("2024-09-18T04:06:54.123300Z".into()),
                request_id: String::new(),
                retransmits: 1,
                resets: 0,
                scope: WireScope::Request,
                stream_id: None,
                tls: false,
                handshake_us: None,
            }),
            latency: Some(Latency {
                total_us: 1_966,
                upstream_us: 1_091,
                sidecar_us: 875,
                before_sidecar_us: Some(120),
                pod_wire_us: Some(2_210),
                app_wire_us: Some(1_180),
            }),
            als: None,
            wasm: None,
            hops: vec![],
        }
    }

    fn printed(format: Format, follow: bool, records: Vec<CallRecord>) -> String {
        let mut out = Vec::new();
        let destination = Destination {
            width: None,
            colour: false,
        };
        let mut printer = Printer::new(&mut out, format, follow, destination).unwrap();
        for record in records {
            printer.print(record).unwrap();
        }
        printer.finish("3 calls seen").unwrap();
        String::from_utf8(out).unwrap()
    }

    fn later(seconds: u8) -> CallRecord {
        let mut record = record();
        record.time = format!("2024-09-18T04:06:{seconds}.000000Z");
        record.request_id = format!("id-{seconds}");
        record
    }

    #[test]
    fn held_records_come_out_in_time_order() {
        let text = printed(Format::Ndjson, false, vec![later(58), later(55)]);
        let ids: Vec<String> = text
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .map(|value| value["request_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["id-55", "id-58"]);
    }

    #[test]
    fn followed_records_come_out_as_they_are_joined() {
        let text = printed(Format::Ndjson, true, vec![later(58), later(55)]);
        assert!(text.find("id-58").unwrap() < text.find("id-55").unwrap());
        let table = printed(Format::Table, true, vec![later(58), later(55)]);
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(table.find("id-58").unwrap() < table.find("id-55").unwrap());
    }

    #[test]
    fn json_is_one_array_and_har_one_archive() {
        let json: serde_json::Value =
            serde_json::from_str(&printed(Format::Json, false, vec![record(), record()])).unwrap();
        assert_eq!(json.as_array().map(Vec::len), Some(2));
        assert_eq!(json[0]["src"]["name"], "sleep");
        let empty: serde_json::Value =
            serde_json::from_str(&printed(Format::Json, false, vec![])).unwrap();
        assert_eq!(empty, serde_json::json!([]));
        let har: serde_json::Value =
            serde_json::from_str(&printed(Format::Har, false, vec![record()])).unwrap();
        assert_eq!(har["log"]["entries"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn follow_is_refused_for_whole_documents() {
        let destination = Destination {
            width: None,
            colour: false,
        };
        let error = Printer::new(Vec::new(), Format::Har, true, destination)
            .err()
            .unwrap();
        assert!(
            error.to_string().starts_with(
                "--follow prints each call as it is joined, and -o har is one document"
            ),
            "{error}"
        );
    }

    #[test]
    fn closed_pipe_is_recognised_through_context() {
        let error =
            anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_closed_pipe(&error));
        assert!(!is_closed_pipe(&anyhow::anyhow!("other")));
    }
}
