//! The summary of a session's printed calls: one table per route (method and
//! path template, or gRPC service/method) and one per caller -> callee pair,
//! each row with its calls, its errors by cause, latency quantiles and
//! bytes. Printed on stderr at the end of every session, and alone on stdout
//! with `-o summary`.
//!
//! Quantiles come from HDR histograms (the `hdrhistogram` crate) kept to two
//! significant digits: a row costs a few KiB however many calls it sums,
//! where keeping every sample to sort would grow with the session, and 1 %
//! is finer than the three digits the table prints can show of a latency.

use std::collections::BTreeMap;

use apitrace_join::CallRecord;
use hdrhistogram::Histogram;

use super::table::{duration, kubectl_table, printable};

/// The most rows a table keeps; the calls of any further route or pair are
/// summed in one last row, so that paths the template does not recognise
/// (ids of another shape) cannot grow the summary without bound.
const MAX_ROWS: usize = 200;

/// The sums of a session's printed calls.
#[derive(Default)]
pub struct Summary {
    routes: Rows,
    pairs: Rows,
}

impl Summary {
    pub fn add(&mut self, record: &CallRecord) {
        self.routes.row(route(record), "(other routes)").add(record);
        self.pairs.row(pair(record), "(other pairs)").add(record);
    }

    pub fn is_empty(&self) -> bool {
        self.routes.rows.is_empty()
    }

    /// `headline` (the calls seen and selected), then the two tables, in the
    /// style of the calls' table.
    pub fn render(&self, headline: &str) -> String {
        let mut text = format!("{headline}\n");
        if self.is_empty() {
            return text;
        }
        for (title, rows) in [("ROUTE", &self.routes), ("CALLER -> CALLEE", &self.pairs)] {
            text.push('\n');
            text.push_str(&rows.render(title));
        }
        text
    }
}

#[derive(Default)]
struct Rows {
    rows: BTreeMap<String, Row>,
}

impl Rows {
    fn row(&mut self, key: String, overflow: &str) -> &mut Row {
        let key = if self.rows.len() >= MAX_ROWS && !self.rows.contains_key(&key) {
            overflow.to_owned()
        } else {
            key
        };
        self.rows.entry(key).or_default()
    }

    /// Busiest first; rows with as many calls in the order of their names.
    fn render(&self, title: &'static str) -> String {
        let mut rows: Vec<(&String, &Row)> = self.rows.iter().collect();
        rows.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then_with(|| a.0.cmp(b.0)));
        let header = [
            title,
            "CALLS",
            "ERRORS",
            "LATENCY P50/P95/P99",
            "SIDECAR P50/P95/P99",
            "UPSTREAM P50/P95/P99",
            "POD WIRE P50/P95/P99",
            "APP WIRE P50/P95/P99",
            "REQ BYTES",
            "RESP BYTES",
        ];
        let cells = rows.into_iter().map(|(key, row)| {
            let mut cells = vec![printable(key.clone()), row.calls.to_string(), row.errors()];
            cells.extend(row.latency.iter().map(quantiles));
            cells.extend([
                row.request_bytes.to_string(),
                row.response_bytes.to_string(),
            ]);
            cells
        });
        kubectl_table(header.map(str::to_owned).into_iter(), cells)
    }
}

/// One route's or pair's sums.
struct Row {
    calls: u64,
    failed: u64,
    /// Each cause of failure (an HTTP status from 400, `no response`, a gRPC
    /// status other than OK, a response flag) and how many calls had it; a
    /// call may have several.
    causes: BTreeMap<String, u64>,
    /// Microseconds: the sidecar's total, its own share, upstream's, the
    /// pod's on the wire and the app's on `lo`, each from the calls that
    /// had it.
    latency: [Histogram<u64>; 5],
    request_bytes: u64,
    response_bytes: u64,
}

impl Default for Row {
    fn default() -> Self {
        let histogram = || Histogram::new(2).expect("two significant digits are supported");
        Self {
            calls: 0,
            failed: 0,
            causes: BTreeMap::new(),
            latency: std::array::from_fn(|_| histogram()),
            request_bytes: 0,
            response_bytes: 0,
        }
    }
}

impl Row {
    fn add(&mut self, record: &CallRecord) {
        self.calls += 1;
        let causes = causes(record);
        if !causes.is_empty() {
            self.failed += 1;
        }
        for cause in causes {
            *self.causes.entry(cause).or_default() += 1;
        }
        if let Some(latency) = &record.latency {
            let known = [
                Some(latency.total_us),
                Some(latency.sidecar_us),
                Some(latency.upstream_us),
                latency.pod_wire_us,
                latency.app_wire_us,
            ];
            for (histogram, micros) in self.latency.iter_mut().zip(known) {
                if let Some(micros) = micros.map(|micros| micros.max(0).unsigned_abs())
                    // It grows to hold the value; only past what it can
                    // grow to is the value clamped.
                    && histogram.record(micros).is_err()
                {
                    histogram.saturating_record(micros);
                }
            }
        }
        self.request_bytes += record.request_body_bytes.unwrap_or_default();
        self.response_bytes += record.response_body_bytes.unwrap_or_default();
    }

    /// `0`, or `3: 503×2, UF×1`: the calls that failed, then each cause.
    fn errors(&self) -> String {
        if self.failed == 0 {
            return "0".to_owned();
        }
        let causes: Vec<String> = self
            .causes
            .iter()
            .map(|(cause, calls)| format!("{cause}×{calls}"))
            .collect();
        format!("{}: {}", self.failed, causes.join(", "))
    }
}

/// Why a call failed, in the words the table's STATUS and FLAGS columns use;
/// empty when it did not.
fn causes(record: &CallRecord) -> Vec<String> {
    let mut causes = Vec::new();
    match record.status {
        0 => causes.push("no response".to_owned()),
        400.. => causes.push(record.status.to_string()),
        _ => {}
    }
    if let Some(grpc) = &record.grpc
        && let Some(code) = grpc.status.filter(|&code| code != 0)
    {
        causes.push(
            grpc.status_name
                .as_deref()
                .map_or_else(|| format!("grpc-status {code}"), str::to_owned),
        );
    }
    causes.extend(
        record
            .response_flags
            .iter()
            .filter_map(|flag| flag.split(':').next())
            .map(str::to_owned),
    );
    causes
}

/// `1.2ms/3.4ms/9ms`, or `-` when no call of the row had this latency.
fn quantiles(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return "-".to_owned();
    }
    let at = |q| duration(quantile(histogram, q) as i64);
    format!("{}/{}/{}", at(0.5), at(0.95), at(0.99))
}

/// The value at quantile `q`, as the middle of the histogram's bucket that
/// holds it: within 1 % of the sample either way, where the bucket's top
/// (what `value_at_quantile` returns) is always above it.
fn quantile(histogram: &Histogram<u64>, q: f64) -> u64 {
    histogram.median_equivalent(histogram.value_at_quantile(q))
}

/// The call's route: `package.Service/Method` for gRPC, else its method and
/// its path's template (see [`path_template`]).
fn route(record: &CallRecord) -> String {
    match &record.grpc {
        Some(grpc) if !grpc.service.is_empty() => format!("{}/{}", grpc.service, grpc.method),
        _ => format!("{} {}", record.method, path_template(&record.path)),
    }
}

/// The path without its query, each segment that names one thing of many
/// (all digits, a UUID, or 16 or more hex digits) as `{id}`:
/// `/api/orders/42?x=1` is `/api/orders/{id}`.
pub(crate) fn path_template(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/')
        .map(|segment| if is_id(segment) { "{id}" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

fn is_id(segment: &str) -> bool {
    let hex = |text: &str| text.chars().all(|c| c.is_ascii_hexdigit());
    let uuid = segment.len() == 36
        && segment
            .char_indices()
            .all(|(at, c)| matches!(at, 8 | 13 | 18 | 23) == (c == '-'))
        && hex(&segment.replace('-', ""));
    !segment.is_empty()
        && (segment.chars().all(|c| c.is_ascii_digit())
            || uuid
            || (segment.len() >= 16 && hex(segment)))
}

/// `caller -> callee`, each as `namespace/name`, or its address when nobody
/// is known by it.
fn pair(record: &CallRecord) -> String {
    let peer = |peer: &apitrace_join::Peer| {
        if peer.name.is_empty() {
            peer.ip.clone()
        } else {
            format!("{}/{}", peer.namespace, peer.name)
        }
    };
    format!("{} -> {}", peer(&record.src), peer(&record.dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::tests::record;
    use apitrace_join::{GrpcRecord, Latency};

    /// A row's cells: columns are three spaces or more apart, and no cell
    /// holds three spaces.
    fn cells(line: &str) -> Vec<&str> {
        line.split("   ")
            .map(str::trim)
            .filter(|cell| !cell.is_empty())
            .collect()
    }

    fn call(path: &str, status: u32, total_us: i64) -> CallRecord {
        let mut call = record();
        call.path = path.to_owned();
        call.status = status;
        call.response_flags = Vec::new();
        call.latency = Some(Latency {
            total_us,
            upstream_us: total_us / 2,
            sidecar_us: total_us - total_us / 2,
            before_sidecar_us: None,
            pod_wire_us: Some(2_210),
            app_wire_us: Some(1_180),
        });
        call
    }

    #[test]
    fn paths_are_summed_by_their_template() {
        assert_eq!(path_template("/api/orders/42?page=2"), "/api/orders/{id}");
        assert_eq!(
            path_template("/u/3f2504e0-4f89-11d3-9a0c-0305e82c3301/cart"),
            "/u/{id}/cart"
        );
        assert_eq!(path_template("/blob/0123456789abcdef0123"), "/blob/{id}");
        // Words stay, even those made of hex letters; so does the root.
        assert_eq!(path_template("/v1/cafe/beef"), "/v1/cafe/beef");
        assert_eq!(path_template("/"), "/");
        assert_eq!(path_template("/status#top"), "/status");
    }

    /// A hundred calls of one route, 1 to 100 ms: the quantiles are the
    /// 50th, 95th and 99th of them (to the histogram's two digits), the
    /// failures are named by cause, and the bytes add up.
    #[test]
    fn a_route_row_has_its_quantiles_errors_and_bytes() {
        let mut summary = Summary::default();
        for ms in 1..=100 {
            let status = match ms {
                10 | 20 => 503,
                30 => 404,
                _ => 200,
            };
            let mut call = call(&format!("/api/orders/{ms}"), status, ms * 1_000);
            if ms == 10 {
                call.response_flags = vec!["UF: upstream connection failure".into()];
            }
            summary.add(&call);
        }
        let row = &summary.routes.rows["GET /api/orders/{id}"];
        let expected = [
            [50_000, 95_000, 99_000],
            [25_000, 47_500, 49_500],
            [25_000, 47_500, 49_500],
        ];
        for (histogram, expected) in row.latency.iter().zip(expected) {
            for (q, sample) in [0.5, 0.95, 0.99].into_iter().zip(expected) {
                let found = quantile(histogram, q);
                assert!(
                    found.abs_diff(sample) * 100 <= sample,
                    "quantile {q}: {found} for {sample}"
                );
            }
        }
        let text = summary.render("100 calls seen");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "100 calls seen");
        assert!(lines[2].starts_with("ROUTE   "), "{text}");
        assert_eq!(
            cells(lines[3]),
            [
                "GET /api/orders/{id}",
                "100",
                "3: 404×1, 503×2, UF×1",
                "50ms/95ms/99.1ms",
                "25ms/47.5ms/49.5ms",
                "25ms/47.5ms/49.5ms",
                // 2.21 ms within the histogram's 1 %.
                "2.22ms/2.22ms/2.22ms",
                "1.18ms/1.18ms/1.18ms",
                "0",
                "61200",
            ],
            "{text}"
        );
        let pairs = text.split("\n\n").nth(2).expect("the pairs' table");
        assert_eq!(
            cells(pairs.lines().next().unwrap())[..2],
            ["CALLER -> CALLEE", "CALLS"],
            "{text}"
        );
        assert_eq!(
            cells(pairs.lines().nth(1).unwrap())[..3],
            [
                "default/sleep -> default/nginx",
                "100",
                "3: 404×1, 503×2, UF×1"
            ],
            "{text}"
        );
    }

    #[test]
    fn grpc_calls_are_summed_by_service_and_method_and_fail_by_their_status() {
        let mut summary = Summary::default();
        for status in [0, 5, 5] {
            let mut call = call("/demo.v1.Demo/Get", 200, 1_000);
            call.grpc = Some(GrpcRecord {
                service: "demo.v1.Demo".into(),
                method: "Get".into(),
                status: Some(status),
                status_name: apitrace_join::grpc_status_name(status).map(Into::into),
                message: String::new(),
                request_messages: None,
                response_messages: None,
            });
            summary.add(&call);
        }
        let text = summary.render("3 calls seen");
        let route = text.lines().nth(3).map(cells).unwrap_or_default();
        assert_eq!(
            route[..3],
            ["demo.v1.Demo/Get", "3", "2: NOT_FOUND×2"],
            "{text}"
        );
    }

    #[test]
    fn past_its_bound_a_table_sums_the_rest_in_one_row() {
        let mut summary = Summary::default();
        for n in 0..MAX_ROWS + 5 {
            summary.add(&call(&format!("/page-{n}"), 200, 100));
        }
        assert_eq!(summary.routes.rows.len(), MAX_ROWS + 1);
        assert_eq!(summary.routes.rows["(other routes)"].calls, 5);
        assert_eq!(summary.pairs.rows.len(), 1);
    }

    #[test]
    fn without_calls_only_the_headline_is_printed() {
        assert_eq!(Summary::default().render("0 calls seen"), "0 calls seen\n");
    }
}
