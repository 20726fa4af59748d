//! The kubectl-style table: no borders, columns three spaces apart, upper-case
//! headers. Wider than the terminal, it truncates its long free-text columns
//! (path, peers, credentials) before any other; followed, it prints each row
//! as it comes with the widths it started with.

use apitrace_join::{CallRecord, Layer, Peer};
use tabled::{
    builder::Builder,
    settings::{
        Color, Modify, Padding, Style, Width,
        object::{Cell, Columns},
    },
};

/// Space between two columns.
const GAP: usize = 3;

struct Column {
    header: &'static str,
    /// Shown only with `-o wide`.
    wide_only: bool,
    /// The narrowest the column is truncated to when the table is wider than
    /// the terminal; `None` for columns that are read whole (ids, numbers).
    shrinks_to: Option<usize>,
    /// Its width when rows are printed as they come (`--follow`), before
    /// fitting to the terminal.
    follow_width: usize,
    cell: fn(&CallRecord) -> String,
    colour: fn(&CallRecord) -> Option<Color>,
}

const COLUMNS: &[Column] = &[
    column("TIME", 12, None, |r| {
        // RFC 3339 with microseconds: the time of day, to milliseconds.
        r.time.get(11..23).unwrap_or(&r.time).to_owned()
    }),
    column("SOURCE", 32, Some(16), |r| peer(&r.src)),
    column("DESTINATION", 32, Some(16), |r| peer(&r.dst)),
    column("PROTO", 8, None, |r| r.protocol.clone()),
    column("METHOD", 7, None, |r| r.method.clone()),
    Column {
        wide_only: true,
        ..column("AUTHORITY", 24, Some(10), |r| r.authority.clone())
    },
    column("PATH", 24, Some(12), |r| r.path.clone()),
    Column {
        colour: status_colour,
        // A failed gRPC call is an HTTP 200: its gRPC status says what
        // happened. As wide as the longest common name, `UNAVAILABLE`.
        ..column("STATUS", 11, None, |r| {
            match r.grpc.as_ref().and_then(|grpc| grpc.status_name.as_deref()) {
                Some(name) => name.to_owned(),
                None if r.status == 0 => "-".into(),
                None => r.status.to_string(),
            }
        })
    },
    Column {
        wide_only: true,
        colour: |r| (!r.response_flags.is_empty()).then_some(Color::FG_RED),
        ..column("FLAGS", 8, Some(5), |r| {
            let codes: Vec<&str> = r
                .response_flags
                .iter()
                .filter_map(|flag| flag.split(':').next())
                .collect();
            or_dash(codes.join(","))
        })
    },
    column("LATENCY", 8, None, |r| {
        r.latency
            .as_ref()
            .map_or_else(dash, |l| duration(l.total_us))
    }),
    Column {
        wide_only: true,
        ..column("SIDECAR", 8, None, |r| {
            r.latency
                .as_ref()
                .map_or_else(dash, |l| duration(l.sidecar_us))
        })
    },
    Column {
        wide_only: true,
        ..column("UPSTREAM", 8, None, |r| {
            r.latency
                .as_ref()
                .map_or_else(dash, |l| duration(l.upstream_us))
        })
    },
    column("REQUEST ID", 36, None, |r| or_dash(r.request_id.clone())),
    column("AUTH", 18, Some(10), |r| {
        r.auth.as_ref().map_or_else(dash, |auth| {
            match auth.claims.get("sub").and_then(|sub| sub.as_str()) {
                Some(subject) => format!("{} sub={subject}", auth.scheme),
                None => auth.scheme.clone(),
            }
        })
    }),
    column("CALLER ID", 18, Some(10), |r| {
        r.src.identity.as_deref().map_or_else(dash, identity)
    }),
    column("IP ID", 5, None, |r| {
        r.request_packet()
            .and_then(|wire| wire.ip_id)
            .map_or_else(dash, |id| id.to_string())
    }),
    column("TCP SEQ", 10, None, |r| {
        r.request_packet()
            .and_then(|wire| wire.tcp_seq)
            .map_or_else(dash, |seq| seq.to_string())
    }),
    Column {
        wide_only: true,
        ..column("SEEN ON", 7, None, |r| {
            r.request_packet()
                .map_or_else(dash, |wire| wire.interface.to_string())
        })
    },
    Column {
        wide_only: true,
        colour: |r| {
            r.tc.as_ref()
                .is_some_and(|tc| tc.retransmits + tc.resets > 0)
                .then_some(Color::FG_YELLOW)
        },
        ..column("RETX/RST", 8, None, |r| {
            r.tc.as_ref()
                .map_or_else(dash, |tc| format!("{}/{}", tc.retransmits, tc.resets))
        })
    },
    Column {
        wide_only: true,
        ..column("HOPS", 4, None, |r| r.hops.len().to_string())
    },
    Column {
        colour: |r| (r.layers.len() < 3).then_some(Color::FG_YELLOW),
        ..column("LAYERS", 11, None, |r| {
            r.layers
                .iter()
                .map(|layer: &Layer| layer.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
    },
];

const fn column(
    header: &'static str,
    follow_width: usize,
    shrinks_to: Option<usize>,
    cell: fn(&CallRecord) -> String,
) -> Column {
    Column {
        header,
        wide_only: false,
        shrinks_to,
        follow_width,
        cell,
        colour: |_| None,
    }
}

fn status_colour(record: &CallRecord) -> Option<Color> {
    if let Some(code) = record.grpc.as_ref().and_then(|grpc| grpc.status) {
        // gRPC's server-side failures (UNKNOWN, DEADLINE_EXCEEDED,
        // RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS)
        // as 5xx, the caller's as 4xx.
        return Some(match code {
            0 => Color::FG_GREEN,
            2 | 4 | 8 | 12..=15 => Color::FG_RED,
            _ => Color::FG_YELLOW,
        });
    }
    Some(match record.status {
        200..=299 => Color::FG_GREEN,
        300..=399 => Color::FG_CYAN,
        400..=499 => Color::FG_YELLOW,
        _ => Color::FG_RED,
    })
}

fn dash() -> String {
    "-".to_owned()
}

fn or_dash(text: String) -> String {
    if text.is_empty() { dash() } else { text }
}

fn peer(peer: &Peer) -> String {
    let address = if peer.ip.contains(':') {
        format!("[{}]:{}", peer.ip, peer.port)
    } else {
        format!("{}:{}", peer.ip, peer.port)
    };
    if peer.name.is_empty() {
        format!("{} {address}", peer.kind)
    } else {
        format!("{}/{} {address}", peer.namespace, peer.name)
    }
}

/// A SPIFFE identity as a person reads it: `ns/demo/sa/client` in the
/// default trust domain, the whole id in any other.
fn identity(id: &str) -> String {
    id.strip_prefix("spiffe://cluster.local/")
        .unwrap_or(id)
        .to_owned()
}

/// `850µs`, `1.97ms`, `2.31s`: three significant digits are what a person
/// compares.
pub(super) fn duration(micros: i64) -> String {
    let (value, unit) = match micros {
        ..1_000 => return format!("{micros}µs"),
        1_000..1_000_000 => (micros as f64 / 1e3, "ms"),
        _ => (micros as f64 / 1e6, "s"),
    };
    let decimals = match value {
        ..10.0 => 2,
        10.0..100.0 => 1,
        _ => 0,
    };
    let number = format!("{value:.decimals$}");
    let number = if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        &number
    };
    format!("{number}{unit}")
}

/// What a request put in a cell, unable to move the cursor or recolour the
/// terminal: a path or a header value is the caller's to choose.
pub(super) fn printable(text: String) -> String {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { '\u{fffd}' } else { c })
            .collect()
    } else {
        text
    }
}

/// How the table looks: which columns, how wide it may be, with colours or not.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub wide: bool,
    /// The terminal's width; `None` when the output is not a terminal.
    pub max_width: Option<usize>,
    pub colour: bool,
}

impl Layout {
    fn columns(&self) -> impl Iterator<Item = &'static Column> {
        let wide = self.wide;
        COLUMNS.iter().filter(move |c| wide || !c.wide_only)
    }

    /// The whole table of `records`: its columns as wide as their longest cell
    /// unless that is wider than the terminal.
    pub fn render(&self, records: &[CallRecord]) -> String {
        let rows: Vec<Vec<String>> = records.iter().map(|r| self.cells(r)).collect();
        let natural: Vec<usize> = self
            .columns()
            .enumerate()
            .map(|(i, column)| {
                rows.iter()
                    .map(|row| text_width(&row[i]))
                    .chain([column.header.len()])
                    .max()
                    .unwrap_or_default()
            })
            .collect();
        let widths = self.fit(natural);
        self.table(true, records, rows, &widths, false)
    }

    /// The widths a followed table prints with: fixed from its first row on.
    pub fn follow_widths(&self) -> Vec<usize> {
        self.fit(self.columns().map(|c| c.follow_width).collect())
    }

    /// One row of a followed table, with the header before the first.
    pub fn render_row(&self, record: &CallRecord, widths: &[usize], header: bool) -> String {
        let row = self.cells(record);
        self.table(
            header,
            std::slice::from_ref(record),
            vec![row],
            widths,
            true,
        )
    }

    fn cells(&self, record: &CallRecord) -> Vec<String> {
        self.columns()
            .map(|column| printable((column.cell)(record)))
            .collect()
    }

    /// Narrows the shrinkable columns, widest first, until the table fits the
    /// terminal or each is at its narrowest.
    fn fit(&self, mut widths: Vec<usize>) -> Vec<usize> {
        let Some(max_width) = self.max_width else {
            return widths;
        };
        let columns: Vec<&Column> = self.columns().collect();
        let total = |widths: &[usize]| widths.iter().sum::<usize>() + GAP * (widths.len() - 1);
        let mut excess = total(&widths).saturating_sub(max_width);
        while excess > 0 {
            let widest = (0..widths.len())
                .filter(|&i| columns[i].shrinks_to.is_some_and(|min| widths[i] > min))
                .max_by_key(|&i| widths[i]);
            let Some(i) = widest else { break };
            widths[i] -= 1;
            excess -= 1;
        }
        widths
    }

    fn table(
        &self,
        header: bool,
        records: &[CallRecord],
        rows: Vec<Vec<String>>,
        widths: &[usize],
        exact: bool,
    ) -> String {
        let mut table = blank(self.columns().map(|c| c.header.to_owned()), rows);
        for (i, &width) in widths.iter().enumerate() {
            let column = Modify::new(Columns::one(i));
            table.with(column.with(Width::truncate(width).suffix("…")));
            if exact {
                table.with(Modify::new(Columns::one(i)).with(Width::increase(width)));
            }
        }
        if self.colour {
            for (row, record) in records.iter().enumerate() {
                for (i, column) in self.columns().enumerate() {
                    if let Some(colour) = (column.colour)(record) {
                        table.with(Modify::new(Cell::new(row + 1, i)).with(colour));
                    }
                }
            }
        }
        lines(&table.to_string(), usize::from(!header))
    }
}

/// A table of `rows` under `header` in this table's style, every column as
/// wide as its longest cell: the summary's.
pub(super) fn kubectl_table(
    header: impl Iterator<Item = String>,
    rows: impl IntoIterator<Item = Vec<String>>,
) -> String {
    lines(&blank(header, rows).to_string(), 0)
}

/// No borders, columns [`GAP`] apart.
fn blank(
    header: impl Iterator<Item = String>,
    rows: impl IntoIterator<Item = Vec<String>>,
) -> tabled::Table {
    let mut builder = Builder::new();
    builder.push_record(header);
    for row in rows {
        builder.push_record(row);
    }
    let mut table = builder.build();
    table
        .with(Style::blank())
        .with(Padding::new(0, GAP - 1, 0, 0));
    table
}

/// The lines of a rendered table after the first `skip`, without the
/// padding that ends them.
fn lines(rendered: &str, skip: usize) -> String {
    let mut out = String::with_capacity(rendered.len());
    for line in rendered.lines().skip(skip) {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The columns `text` takes on a terminal (wide characters take two).
fn text_width(text: &str) -> usize {
    tabled::grid::util::string::get_text_width(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::record;

    const PLAIN: Layout = Layout {
        wide: false,
        max_width: None,
        colour: false,
    };

    #[test]
    fn the_table_has_kubectl_columns_and_no_borders() {
        let text = PLAIN.render(&[record()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TIME           SOURCE"), "{text}");
        assert!(
            lines[1].starts_with("04:06:54.123   default/sleep 10.0.0.40:50174"),
            "{text}"
        );
        assert!(lines[1].ends_with("als,wasm"), "{text}");
        assert!(lines[1].contains("   1.97ms   "), "{text}");
        assert!(!text.contains('|') && !text.contains('+') && !text.contains('\u{1b}'));
        assert!(!lines[0].contains("FLAGS"));
    }

    #[test]
    fn wide_adds_the_details() {
        let wide = Layout {
            wide: true,
            ..PLAIN
        };
        let text = wide.render(&[record()]);
        let header = text.lines().next().unwrap();
        for column in [
            "AUTHORITY",
            "FLAGS",
            "SIDECAR",
            "UPSTREAM",
            "RETX/RST",
            "HOPS",
        ] {
            assert!(header.contains(column), "{header}");
        }
        assert!(text.contains("UF,URX"), "{text}");
    }

    #[test]
    fn a_narrow_terminal_truncates_the_free_text_first() {
        let mut long = record();
        long.path = format!("/api/{}", "x".repeat(120));
        let layout = Layout {
            max_width: Some(220),
            ..PLAIN
        };
        let text = layout.render(&[long.clone()]);
        for line in text.lines() {
            let width = line.chars().count();
            assert!(width <= 220, "{width} wide:\n{text}");
        }
        // The path lost its tail; the request id, an id to copy, did not.
        assert!(text.contains("/api/xxx") && text.contains('…'), "{text}");
        assert!(text.contains(&long.request_id), "{text}");
        // Too narrow for even the shrunk columns: nothing is cut below its minimum.
        let tiny = Layout {
            max_width: Some(20),
            ..PLAIN
        };
        assert!(tiny.render(&[long]).contains("/api/xxxxxx…"));
    }

    #[test]
    fn followed_rows_keep_their_columns_aligned() {
        let widths = PLAIN.follow_widths();
        let first = PLAIN.render_row(&record(), &widths, true);
        let mut other = record();
        other.src.name = "a-much-longer-client-name-that-overflows".into();
        other.status = 503;
        let second = PLAIN.render_row(&other, &widths, false);
        assert_eq!(first.lines().count(), 2, "{first}");
        assert_eq!(second.lines().count(), 1, "{second}");
        let status_at = |line: &str| {
            let at = line.find(" 200 ").or_else(|| line.find(" 503 "))?;
            Some(line[..at].chars().count())
        };
        assert_eq!(
            status_at(first.lines().nth(1).unwrap()),
            status_at(second.lines().next().unwrap())
        );
        assert!(second.contains('…'), "{second}");
    }

    /// A failed gRPC call is an HTTP 200; the table shows what failed.
    #[test]
    fn a_grpc_call_shows_its_grpc_status_in_red_when_the_server_failed_it() {
        let coloured = Layout {
            colour: true,
            ..PLAIN
        };
        let mut call = record();
        call.grpc = Some(apitrace_join::GrpcRecord {
            service: "apitrace.demo.v1.Orders".into(),
            method: "ListOrders".into(),
            status: Some(14),
            status_name: Some("UNAVAILABLE".into()),
            message: String::new(),
            request_messages: None,
            response_messages: None,
        });
        let text = coloured.render(std::slice::from_ref(&call));
        assert!(text.contains("\u{1b}[31mUNAVAILABLE"), "{text:?}");
        assert!(!text.contains(" 200 "), "{text}");
        let widths = PLAIN.follow_widths();
        assert!(
            PLAIN
                .render_row(&call, &widths, false)
                .contains("UNAVAILABLE ")
        );
    }

    #[test]
    fn colours_only_when_asked_and_never_from_the_request() {
        let coloured = Layout {
            colour: true,
            ..PLAIN
        };
        let mut hostile = record();
        hostile.path = "/\u{1b}[2J\u{1b}[31mowned\n".into();
        let text = coloured.render(&[hostile]);
        assert!(text.contains("\u{1b}[32m200"), "{text:?}");
        assert!(
            text.contains("/\u{fffd}[2J\u{fffd}[31mowned\u{fffd}"),
            "{text:?}"
        );
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(850), "850µs");
        assert_eq!(duration(1_966), "1.97ms");
        assert_eq!(duration(12_500), "12.5ms");
        assert_eq!(duration(2_000), "2ms");
        assert_eq!(duration(123_456), "123ms");
        assert_eq!(duration(2_310_000), "2.31s");
        assert_eq!(duration(100_000_000), "100s");
    }
}
