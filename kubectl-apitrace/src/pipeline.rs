//! A session's inputs on their way out: saved (with `--save`), joined, and
//! the calls printed and summed. The demo, a cluster session and `kubectl
//! apitrace join` each feed one, so a replay goes through exactly what the
//! session did.
//!
//! `--where` selects the calls printed, saved (unless `--save-all`) and
//! summed; `--until N` stops the session after N of them: the pipeline
//! prints exactly N and says when they are reached ([`Pipeline::until_reached`]),
//! and the session ends as at the end of its time.

use std::{
    collections::BTreeMap,
    io::{self, Write},
    num::NonZeroU64,
};

use apitrace_join::{
    CallRecord, Input, JoinConfig, JoinStats, Joiner, UnnamedCause, UnnamedPeers,
    predicate::Predicate,
};
use apitrace_proto::{Counters, Event, event::Kind};

use crate::{
    output::{Format, Printer},
    saved::{SavedError, SavedWriter},
};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Saved(#[from] SavedError),
    #[error("cannot print the calls")]
    Print(#[source] io::Error),
}

/// How many inputs a session feeds the join at once, at most: enough for it
/// to read ahead (see [`Pipeline::feed_all`]), few enough to be in the cache.
pub const BATCH: usize = 256;

pub struct Pipeline<W: Write> {
    joiner: Joiner,
    saved: Option<SavedWriter>,
    printer: Printer<W>,
    selection: Selection,
    /// What a saved file of selected calls says the session saw, which
    /// the calls it holds are only the selected part of.
    seen_by_saved: Option<usize>,
    /// The records come from a file of selected calls, not from the join.
    replays_saved_calls: bool,
    /// Each probe's counters (by node), from the last status it sent: a
    /// probe's counters only grow, and several probes must not overwrite
    /// each other's.
    counters: BTreeMap<String, Counters>,
    /// The callers and callees the records left unnamed, by cause.
    unnamed: UnnamedPeers,
    /// Why a peer is unnamed now, as the session feeding the names knows
    /// it; without one (the demo, a replay) every name was given up front.
    unnamed_cause: Option<Box<dyn Fn() -> UnnamedCause + Send>>,
}

/// How long a session waits, when it ends, for what its sidecars had not
/// reported yet.
pub struct Drain;

impl Drain {
    /// A flush of both: Envoy's access-log service sends its buffer every
    /// second (`buffer_flush_interval`'s default in Envoy's
    /// `api/envoy/extensions/access_loggers/grpc/v3/als.proto`), the filter
    /// every 200 ms (`crates/proto/src/filter_config.rs`), and the probe's ring is
    /// drained every 20 ms.
    pub const FLUSH: std::time::Duration = std::time::Duration::from_millis(1_500);
    /// The longest wait: a call whose parts have not come by then is printed
    /// with what it has, and counted by what it lacks.
    pub const BOUND: std::time::Duration = std::time::Duration::from_secs(5);

    /// What a session says on stderr when it starts waiting.
    pub fn notice() -> String {
        format!(
            "waiting up to {}s for the sidecars' last access logs and filter events",
            Self::BOUND.as_secs()
        )
    }
}

/// Which calls are printed, and how many were seen, selected and printed.
#[derive(Default)]
struct Selection {
    /// `--where`: only the calls it selects are printed.
    select: Option<Predicate>,
    /// `--until`: how many selected calls are printed at most.
    until: Option<NonZeroU64>,
    /// Every call joined.
    records: usize,
    /// How many `select` selected.
    matched: usize,
    printed: usize,
}

impl Selection {
    fn until_reached(&self) -> bool {
        self.until
            .is_some_and(|until| self.printed as u64 >= until.get())
    }
}

/// What a session joined and lost.
#[derive(Debug)]
pub struct Outcome {
    pub stats: JoinStats,
    /// Every call joined, printed or not.
    pub records: usize,
    /// With `--where`, how many of them it selected.
    pub matched: Option<usize>,
    /// How many were printed: those selected, up to `--until`.
    pub printed: usize,
    pub until: Option<NonZeroU64>,
    /// The records were replayed from a file of selected calls: `stats` and
    /// `unnamed` are of the replay, which joined nothing, not of the
    /// session that saved them.
    pub from_saved_calls: bool,
    /// Each probe's last counters, by node.
    pub counters: BTreeMap<String, Counters>,
    /// The callers and callees the records left unnamed, by cause.
    pub unnamed: UnnamedPeers,
    /// The summary's tables, for stderr; `None` when `-o summary` printed
    /// them on stdout, or nothing was printed.
    pub tables: Option<String>,
}

impl<W: Write> Pipeline<W> {
    pub fn new(config: JoinConfig, saved: Option<SavedWriter>, printer: Printer<W>) -> Self {
        Self {
            joiner: Joiner::new(config),
            saved,
            printer,
            selection: Selection::default(),
            seen_by_saved: None,
            replays_saved_calls: false,
            counters: BTreeMap::new(),
            unnamed: UnnamedPeers::default(),
            unnamed_cause: None,
        }
    }

    /// Says why a caller or callee is unnamed when a record leaves it so:
    /// a cluster session's names come from a watch that may still be
    /// listing, or failing.
    pub fn unnamed_because(&mut self, cause: impl Fn() -> UnnamedCause + Send + 'static) {
        self.unnamed_cause = Some(Box::new(cause));
    }

    /// Prints only the calls `select` selects (`--where`), and of those no
    /// more than `until` (`--until`); every call is still joined and
    /// counted.
    pub fn selecting(mut self, select: Option<Predicate>, until: Option<NonZeroU64>) -> Self {
        self.selection.select = select;
        self.selection.until = until;
        self
    }

    /// With `--until N`, once N calls were printed: what the session says
    /// as it stops.
    pub fn until_reached(&self) -> Option<String> {
        let until = self.selection.until?;
        let calls = if until.get() == 1 { "call" } else { "calls" };
        self.selection
            .until_reached()
            .then(|| match self.selection.select {
                Some(_) => format!("{until} {calls} matched --where (--until {until})"),
                None => format!("{until} {calls} joined (--until {until})"),
            })
    }

    /// How many calls were joined so far, printed or not.
    pub fn records(&self) -> usize {
        self.selection.records
    }

    /// Whether a session that ended at `ended_ns` has what its sidecars were
    /// still to report, at `now_ns`: they flush access logs every second and
    /// the filter its events every 200 ms, so nothing of a call started
    /// before the end is known to be missing until a flush later; then the
    /// session waits while such calls are open, up to [`Drain::BOUND`].
    pub fn drained(&self, ended_ns: i64, now_ns: i64) -> bool {
        let waited = now_ns.saturating_sub(ended_ns);
        waited >= Drain::BOUND.as_nanos() as i64
            || (waited >= Drain::FLUSH.as_nanos() as i64
                && self.joiner.open_calls_started_before(ended_ns) == 0)
    }

    pub fn feed(&mut self, input: Input) -> Result<(), PipelineError> {
        self.feed_all(vec![input])
    }

    /// A call a file of selected calls kept, printed as if just joined.
    pub fn feed_call(&mut self, record: CallRecord) -> Result<(), PipelineError> {
        self.replays_saved_calls = true;
        let mut printing = self.printing();
        printing.extend([record]);
        printing.failed.map_or(Ok(()), Err)
    }

    /// The count a file of selected calls ends with: the calls its session
    /// saw, which the summary says rather than how many the file holds.
    pub fn calls_seen(&mut self, calls: u64) {
        self.seen_by_saved = Some(calls as usize);
    }

    /// Feeds `inputs` in order, as [`Self::feed`] would one by one: the join
    /// reads ahead in a batch, so a session feeds what arrived together.
    pub fn feed_all(&mut self, inputs: Vec<Input>) -> Result<(), PipelineError> {
        for input in &inputs {
            if let Some(saved) = &mut self.saved {
                saved.save(input)?;
            }
            if let Input::Event {
                event:
                    Event {
                        kind: Some(Kind::Status(status)),
                    },
                ..
            } = input
                && let Some(counters) = status.counters
            {
                self.counters.insert(status.node.clone(), counters);
            }
        }
        let Self {
            joiner,
            printer,
            saved,
            selection,
            unnamed,
            unnamed_cause,
            ..
        } = self;
        let mut printing = Printing {
            printer,
            saved: saved.as_mut(),
            selection,
            unnamed,
            unnamed_cause: unnamed_cause.as_deref(),
            failed: None,
        };
        joiner.apply_all(inputs, &mut printing);
        printing.failed.map_or(Ok(()), Err)
    }

    /// Where the records of the join go: counted, selected, saved, printed.
    fn printing(&mut self) -> Printing<'_, W> {
        Printing {
            printer: &mut self.printer,
            saved: self.saved.as_mut(),
            selection: &mut self.selection,
            unnamed: &mut self.unnamed,
            unnamed_cause: self.unnamed_cause.as_deref(),
            failed: None,
        }
    }

    /// Emits the calls still open, prints what was held and closes the file.
    pub fn finish(mut self) -> Result<Outcome, PipelineError> {
        self.feed(Input::End)?;
        let Self {
            joiner,
            saved,
            printer,
            selection,
            seen_by_saved,
            replays_saved_calls,
            counters,
            unnamed,
            unnamed_cause: _,
        } = self;
        // A file of calls saved again says how many its own session saw.
        let records = seen_by_saved.unwrap_or(selection.records);
        if let Some(saved) = saved {
            saved.finish(records)?;
        }
        let mut outcome = Outcome {
            stats: joiner.stats().clone(),
            records,
            matched: selection.select.map(|_| selection.matched),
            printed: selection.printed,
            until: selection.until,
            from_saved_calls: replays_saved_calls,
            counters,
            unnamed,
            tables: None,
        };
        let headline = outcome.headline();
        let format = printer.format();
        let summary = printer.finish(&headline).map_err(PipelineError::Print)?;
        if format != Format::Summary && !summary.is_empty() {
            outcome.tables = Some(summary.render(&headline));
        }
        Ok(outcome)
    }
}

/// Hands each record to the printer as the join emits it: the calls an input
/// closes at once (the end of a session, thousands of them) are not gathered
/// first, and with `--follow` each is written as it comes.
struct Printing<'a, W: Write> {
    printer: &'a mut Printer<W>,
    /// Keeps the printed calls when the file is one of selected calls.
    saved: Option<&'a mut SavedWriter>,
    selection: &'a mut Selection,
    /// The first error printing or saving met: the session ends with it,
    /// and the records after it are not printed.
    failed: Option<PipelineError>,
    unnamed: &'a mut UnnamedPeers,
    unnamed_cause: Option<&'a (dyn Fn() -> UnnamedCause + Send)>,
}

impl<W: Write> Extend<CallRecord> for Printing<'_, W> {
    fn extend<I: IntoIterator<Item = CallRecord>>(&mut self, records: I) {
        for record in records {
            if self.failed.is_some() {
                return;
            }
            let selection = &mut *self.selection;
            selection.records += 1;
            for peer in [&record.src, &record.dst] {
                if peer.name.is_empty() && !peer.ip.is_empty() {
                    self.unnamed.count(
                        self.unnamed_cause
                            .map_or(UnnamedCause::NoHolder, |cause| cause()),
                    );
                }
            }
            if selection
                .select
                .as_ref()
                .is_some_and(|select| !select.matches(&record))
            {
                continue;
            }
            selection.matched += 1;
            // Past --until, the calls the session's end still joins are
            // counted, not printed: it asked for N.
            if selection.until_reached() {
                continue;
            }
            selection.printed += 1;
            if let Some(saved) = self.saved.as_deref_mut()
                && let Err(error) = saved.save_call(&record)
            {
                self.failed = Some(error.into());
                return;
            }
            if let Err(error) = self.printer.print(record) {
                self.failed = Some(PipelineError::Print(error));
            }
        }
    }
}

impl Outcome {
    /// The summary's tables, if any, then [`Self::summary`]: what a session
    /// says on stderr at its end.
    pub fn report(&self, calls: Option<u32>) -> String {
        match &self.tables {
            Some(tables) => format!("{tables}\n{}", self.summary(calls)),
            None => self.summary(calls),
        }
    }

    /// The first line of the summary's tables: the calls seen, selected and
    /// summed.
    fn headline(&self) -> String {
        let mut text = format!("{} calls seen", self.records);
        if let Some(matched) = self.matched {
            text.push_str(&format!(", {matched} matched --where"));
        }
        if let Some(until) = self.until
            && self.printed < self.matched.unwrap_or(self.records)
        {
            text.push_str(&format!(
                ", the first {} printed and summed (--until {until})",
                self.printed
            ));
        }
        text
    }

    /// One paragraph for stderr: how the calls were joined and every event
    /// lost on the way. `calls` is how many calls were made, when known.
    pub fn summary(&self, calls: Option<u32>) -> String {
        let mut text = if self.from_saved_calls {
            format!(
                "{} calls seen by the recorded session; a file of selected calls keeps \
                 them, not how they were joined (--save-all keeps every input)",
                self.records
            )
        } else {
            self.joined(calls)
        };
        text.push('.');
        let probes = match self.counters.len() {
            0 => {
                text.push_str(" The probes' counters were not recorded.");
                return text;
            }
            1 => "The probe".to_owned(),
            n => format!("The {n} probes"),
        };
        let mut total = Counters::default();
        for counters in self.counters.values() {
            total += counters;
        }
        text.push_str(&format!(
            " {probes} received {} TC, {} ALS and {} WASM events; dropped: {}.",
            total.tc_events,
            total.access_logs,
            total.wasm_events,
            describe(&drops(&total))
        ));
        if self.counters.len() > 1 {
            let by_node: Vec<String> = self
                .counters
                .iter()
                .map(|(node, counters)| (node, drops(counters)))
                .filter(|(_, drops)| !drops.is_empty())
                .map(|(node, drops)| format!("{node}: {}", describe(&drops)))
                .collect();
            if !by_node.is_empty() {
                text.push_str(&format!(" By node: {}.", by_node.join("; ")));
            }
        }
        text
    }

    /// How the calls were joined, and what the join lost or left out.
    fn joined(&self, calls: Option<u32>) -> String {
        let stats = &self.stats;
        let made = calls.map_or_else(
            || format!("{} calls", self.records),
            |calls| format!("{calls} calls made"),
        );
        let mut text = format!(
            "{made}; {} joined with every layer, {} with some",
            stats.complete, stats.partial
        );
        let missing = &stats.missing;
        let lacking = counted([
            (missing.access_log, "without their access log"),
            (missing.wasm, "without their filter event"),
            (missing.wire, "without their wire part"),
            (
                missing.upstream,
                "without their hop to the upstream on the wire",
            ),
        ]);
        if !lacking.is_empty() {
            text.push_str(&format!(" ({})", lacking.join(", ")));
        }
        text.push_str(&format!(
            "; unmatched events: {} TC, {} WASM",
            stats.unmatched_tc, stats.unmatched_wasm
        ));
        if stats.tc_connection_level > 0 {
            text.push_str(&format!(
                "; {} TC message starts on encrypted or multiplexed connections, \
                 named at the connection's level",
                stats.tc_connection_level
            ));
        }
        if stats.tc_outside_calls > 0 {
            text.push_str(&format!(
                "; {} TC retransmissions or resets came on their connection outside its calls \
                 (between them, or its teardown)",
                stats.tc_outside_calls
            ));
        }
        let late = counted([
            (stats.access_logs_after_printed, "access-log entries"),
            (stats.wasm_after_printed, "filter events"),
            (stats.tc_after_printed, "TC requests"),
        ]);
        if !late.is_empty() {
            text.push_str(&format!(
                "; {} came after their call was printed (a layer's events were late), \
                 left out of it",
                late.join(", ")
            ));
        }
        let unnamed = &self.unnamed;
        let unnamed = counted([
            (
                unnamed.no_holder,
                "whose address no pod, service or node held",
            ),
            (
                unnamed.not_listed_yet,
                "while the cluster's pods, services and nodes were still being listed",
            ),
            (
                unnamed.watch_failing,
                "while watching the cluster's pods, services and nodes failed",
            ),
        ]);
        if !unnamed.is_empty() {
            text.push_str(&format!(
                "; callers or callees left unnamed: {}",
                unnamed.join(", ")
            ));
        }
        match (self.matched, self.until) {
            (Some(matched), _) if matched == self.printed => {
                text.push_str(&format!("; {matched} matched --where and were printed"));
            }
            (Some(matched), Some(until)) => text.push_str(&format!(
                "; {matched} matched --where, the first {} printed (--until {until})",
                self.printed
            )),
            (None, Some(until)) if self.printed < self.records => text.push_str(&format!(
                "; the first {} printed (--until {until})",
                self.printed
            )),
            _ => {}
        }
        text
    }
}

/// "count what" for each count that is not zero, in order.
fn counted<const N: usize>(counts: [(u64, &str); N]) -> Vec<String> {
    counts
        .into_iter()
        .filter(|(count, _)| *count > 0)
        .map(|(count, what)| format!("{count} {what}"))
        .collect()
}

/// Every kind of drop that happened, as "what: how many".
fn drops(counters: &Counters) -> Vec<String> {
    [
        ("TC ring buffer full", counters.tc_ring_full),
        ("TC flow table full", counters.tc_flow_table_full),
        ("TC malformed", counters.tc_malformed),
        (
            "h2c connection sides not followed (their calls get the connection)",
            counters.tc_http2_unfollowed,
        ),
        ("access logs malformed", counters.access_logs_malformed),
        (
            "ALS streams broken (their entries in flight)",
            counters.access_log_streams_broken,
        ),
        (
            "WASM dropped in the filter",
            counters.wasm_dropped_in_filter,
        ),
        ("WASM batches refused", counters.wasm_batches_refused),
        ("WASM batches malformed", counters.wasm_batches_malformed),
        ("subscriber fell behind", counters.subscriber_lagged),
        ("observed before the CLI subscribed", counters.no_subscriber),
        ("ALS streams refused", counters.access_log_streams_refused),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(what, n)| format!("{what}: {n}"))
    .collect()
}

fn describe(drops: &[String]) -> String {
    if drops.is_empty() {
        "none".to_owned()
    } else {
        drops.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apitrace_join::MissingParts;

    #[test]
    fn every_drop_is_named_in_the_summary() {
        let outcome = Outcome {
            stats: JoinStats {
                complete: 3,
                partial: 1,
                missing: MissingParts {
                    access_log: 1,
                    ..MissingParts::default()
                },
                unmatched_tc: 2,
                unmatched_wasm: 0,
                tc_outside_calls: 0,
                tc_connection_level: 0,
                tc_after_printed: 0,
                access_logs_after_printed: 0,
                wasm_after_printed: 0,
            },
            records: 4,
            matched: None,
            unnamed: UnnamedPeers::default(),
            printed: 4,
            until: None,
            from_saved_calls: false,
            tables: None,
            counters: BTreeMap::from([(
                "node-a".to_owned(),
                Counters {
                    tc_events: 10,
                    access_logs: 4,
                    wasm_events: 4,
                    tc_ring_full: 7,
                    wasm_dropped_in_filter: 1,
                    ..Counters::default()
                },
            )]),
        };
        assert_eq!(
            outcome.summary(Some(4)),
            "4 calls made; 3 joined with every layer, 1 with some (1 without their access log); unmatched events: 2 TC, 0 WASM. \
             The probe received 10 TC, 4 ALS and 4 WASM events; dropped: TC ring buffer full: 7, WASM dropped in the filter: 1."
        );
        let mut replayed = Outcome {
            counters: BTreeMap::new(),
            ..outcome
        };
        replayed.stats.tc_outside_calls = 2;
        replayed.stats.tc_connection_level = 5;
        replayed.stats.access_logs_after_printed = 2;
        replayed.stats.tc_after_printed = 3;
        assert!(replayed.summary(None).starts_with(
            "4 calls; 3 joined with every layer, 1 with some (1 without their access log); unmatched events: 2 TC, 0 WASM; \
             5 TC message starts on encrypted or multiplexed connections, named at the connection's level; \
             2 TC retransmissions or resets came on their connection outside its calls (between them, or its teardown); \
             2 access-log entries, 3 TC requests came after their call was printed (a layer's events were late), left out of it. "
        ));
        assert!(
            replayed
                .summary(None)
                .ends_with("The probes' counters were not recorded.")
        );
        // A file of selected calls kept the calls, not the join's counts:
        // a replay of it has none to state.
        let saved_calls = Outcome {
            from_saved_calls: true,
            records: 100,
            ..replayed
        };
        assert_eq!(
            saved_calls.summary(None),
            "100 calls seen by the recorded session; a file of selected calls keeps them, not how they \
             were joined (--save-all keeps every input). The probes' counters were not recorded."
        );
    }

    fn status(node: &str, counters: Counters) -> Input {
        Input::Event {
            now_ns: 0,
            event: Event {
                kind: Some(Kind::Status(apitrace_proto::ProbeStatus {
                    node: node.to_owned(),
                    counters: Some(counters),
                    ..Default::default()
                })),
            },
        }
    }

    /// Takes one line, then fails as a closed pipe does.
    struct ClosesAfterOneLine(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

    impl Write for ClosesAfterOneLine {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut written = self.0.borrow_mut();
            if written.contains(&b'\n') {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            written.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A pipeline that prints ndjson as it goes into `out`.
    fn following<W: Write>(out: W) -> Pipeline<W> {
        let printer = Printer::new(
            out,
            Format::Ndjson,
            true,
            crate::output::Destination {
                width: None,
                colour: false,
            },
        )
        .unwrap();
        Pipeline::new(JoinConfig::default(), None, printer)
    }

    #[test]
    fn a_print_failing_while_the_end_closes_calls_ends_the_session_with_it() {
        let written = std::rc::Rc::default();
        let mut pipeline = following(ClosesAfterOneLine(std::rc::Rc::clone(&written)));
        for id in ["req-1", "req-2", "req-3"] {
            let wasm = apitrace_proto::WasmEvent {
                request_id: id.to_owned(),
                ..Default::default()
            };
            let event = Event {
                kind: Some(Kind::Wasm(wasm)),
            };
            pipeline.feed(Input::Event { event, now_ns: 0 }).unwrap();
        }
        assert!(
            written.borrow().is_empty(),
            "the calls wait for their window"
        );
        let error = pipeline.finish().unwrap_err();
        assert!(
            matches!(&error, PipelineError::Print(e) if e.kind() == io::ErrorKind::BrokenPipe),
            "{error:?}"
        );
        let written = String::from_utf8(written.borrow().clone()).unwrap();
        assert_eq!(written.lines().count(), 1, "{written}");
        assert!(written.contains("req-1"), "{written}");
    }

    /// A record's caller named from the directory, and its callee not:
    /// the callee counts, once, under the cause the session gives at the
    /// time; without one (the demo, a replay), under nothing holding it.
    #[test]
    fn a_callee_no_name_fits_is_counted_under_the_cause_the_session_gives() {
        let call = |id: &str| Input::Event {
            event: Event {
                kind: Some(Kind::Wasm(apitrace_proto::WasmEvent {
                    request_id: id.to_owned(),
                    source: Some(apitrace_proto::Endpoint::new("10.0.0.1", 40_000)),
                    destination: Some(apitrace_proto::Endpoint::new("10.0.0.9", 8080)),
                    ..Default::default()
                })),
            },
            now_ns: 0,
        };
        let caller = Input::Identity {
            ip: "10.0.0.1".parse().unwrap(),
            since_ns: 0,
            workload: apitrace_join::Workload {
                namespace: "shop".into(),
                name: "web-1".into(),
                kind: apitrace_join::WorkloadKind::Pod,
                traced: true,
            },
        };
        let mut pipeline = following(Vec::new());
        pipeline.unnamed_because(|| UnnamedCause::NotListedYet);
        pipeline.feed(caller.clone()).unwrap();
        pipeline.feed(call("a")).unwrap();
        let outcome = pipeline.finish().unwrap();
        assert_eq!(
            outcome.unnamed,
            UnnamedPeers {
                not_listed_yet: 1,
                ..UnnamedPeers::default()
            }
        );
        assert!(
            outcome.summary(None).contains(
                "; callers or callees left unnamed: 1 while the cluster's pods, services and nodes were still being listed."
            ),
            "{}",
            outcome.summary(None)
        );
        let mut replay = following(Vec::new());
        replay.feed(caller).unwrap();
        replay.feed(call("b")).unwrap();
        assert_eq!(
            replay.finish().unwrap().unnamed,
            UnnamedPeers {
                no_holder: 1,
                ..UnnamedPeers::default()
            }
        );
    }

    /// A session that ends waits a sidecar flush for what it had not heard
    /// of yet, then while a call started before the end is open, and no
    /// longer than its bound; a call started after the end is not waited for.
    #[test]
    fn the_end_of_a_session_waits_for_the_calls_started_before_it_and_no_longer() {
        let mut pipeline = following(Vec::new());
        let second = 1_000_000_000_i64;
        let ended = 100 * second;
        let flush = Drain::FLUSH.as_nanos() as i64;
        let bound = Drain::BOUND.as_nanos() as i64;
        let wasm = |id: &str, at: i64| Input::Event {
            event: Event {
                kind: Some(Kind::Wasm(apitrace_proto::WasmEvent {
                    request_id: id.to_owned(),
                    time_unix_nano: at,
                    ..Default::default()
                })),
            },
            now_ns: at,
        };
        assert!(!pipeline.drained(ended, ended + flush - 1), "a flush first");
        assert!(
            pipeline.drained(ended, ended + flush),
            "then nothing is open"
        );
        // A call that started after the end does not hold it up.
        pipeline.feed(wasm("late", ended + 10)).unwrap();
        assert!(pipeline.drained(ended, ended + flush));
        // One that started before it does, until the bound.
        pipeline.feed(wasm("early", ended - 10)).unwrap();
        assert!(!pipeline.drained(ended, ended + flush));
        assert!(!pipeline.drained(ended, ended + bound - 1));
        assert!(pipeline.drained(ended, ended + bound));
    }

    /// What a printer wrote, readable after the pipeline took it.
    #[derive(Clone, Default)]
    struct Shared(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.borrow().clone()).unwrap()
        }
    }

    /// An access log of call `id` with `status`, at second `at`.
    fn logged(id: &str, status: u32, at: i64) -> Input {
        let now_ns = at * 1_000_000_000;
        Input::Event {
            event: Event {
                kind: Some(Kind::AccessLog(apitrace_proto::AccessLog {
                    request_id: id.to_owned(),
                    status,
                    start_time_unix_nano: now_ns,
                    ..Default::default()
                })),
            },
            now_ns,
        }
    }

    fn selecting(out: Shared, format: Format, select: &str, until: u64) -> Pipeline<Shared> {
        let printer = Printer::new(
            out,
            format,
            false,
            crate::output::Destination {
                width: None,
                colour: false,
            },
        )
        .unwrap();
        Pipeline::new(JoinConfig::default(), None, printer).selecting(
            Some(Predicate::parse(select).unwrap()),
            NonZeroU64::new(until),
        )
    }

    /// `--until 2` with `--where`: the first two selected calls are
    /// printed, the session is told once they are, and a selected call the
    /// end still joins is counted, not printed.
    #[test]
    fn until_prints_exactly_n_selected_calls_and_says_when_they_are_reached() {
        let out = Shared::default();
        let mut pipeline = selecting(out.clone(), Format::Ndjson, "status >= 500", 2);
        for (at, (id, status)) in [("a", 503), ("b", 200), ("c", 500)].into_iter().enumerate() {
            pipeline.feed(logged(id, status, at as i64)).unwrap();
        }
        assert_eq!(
            pipeline.until_reached(),
            None,
            "the calls wait for their window"
        );
        // Their windows close: a, b and c are joined, a and c selected.
        pipeline
            .feed(Input::Tick {
                now_ns: 60_000_000_000,
            })
            .unwrap();
        assert_eq!(
            pipeline.until_reached().as_deref(),
            Some("2 calls matched --where (--until 2)")
        );
        pipeline.feed(logged("d", 502, 61)).unwrap();
        let outcome = pipeline.finish().unwrap();
        let printed: Vec<String> = out
            .text()
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["request_id"].to_string()
            })
            .collect();
        assert_eq!(printed, ["\"a\"", "\"c\""]);
        let report = outcome.report(None);
        assert!(
            report.starts_with("4 calls seen, 3 matched --where, the first 2 printed and summed (--until 2)\n\nROUTE"),
            "{report}"
        );
        assert!(
            report.contains("; 3 matched --where, the first 2 printed (--until 2)."),
            "{report}"
        );
    }

    /// `-o summary` prints the tables on stdout, and the report on stderr
    /// is then only the paragraph.
    #[test]
    fn with_output_summary_the_tables_go_to_stdout_instead_of_stderr() {
        let out = Shared::default();
        let mut pipeline = selecting(out.clone(), Format::Summary, "status != 0", 5);
        pipeline.feed(logged("a", 404, 0)).unwrap();
        let outcome = pipeline.finish().unwrap();
        let stdout = out.text();
        assert!(
            stdout.starts_with("1 calls seen, 1 matched --where\n\nROUTE"),
            "{stdout}"
        );
        assert!(stdout.contains("   1: 404×1   "), "{stdout}");
        assert!(!stdout.contains("\"request_id\""), "{stdout}");
        assert_eq!(outcome.tables, None);
        assert!(outcome.report(None).starts_with("1 calls; "));
    }

    #[test]
    fn several_probes_counters_add_up_and_a_later_status_replaces_its_own_probes() {
        let mut pipeline = Pipeline::new(
            JoinConfig::default(),
            None,
            Printer::new(
                Vec::new(),
                Format::Ndjson,
                false,
                crate::output::Destination {
                    width: None,
                    colour: false,
                },
            )
            .unwrap(),
        );
        let ring_full = |n| Counters {
            tc_events: 100,
            tc_ring_full: n,
            ..Counters::default()
        };
        pipeline.feed(status("node-a", ring_full(1))).unwrap();
        pipeline.feed(status("node-b", ring_full(0))).unwrap();
        pipeline.feed(status("node-a", ring_full(3))).unwrap();
        let outcome = pipeline.finish().unwrap();
        assert!(
            outcome.summary(None).ends_with(
                "The 2 probes received 200 TC, 0 ALS and 0 WASM events; dropped: TC ring buffer full: 3. \
                 By node: node-a: TC ring buffer full: 3."
            ),
            "{}",
            outcome.summary(None)
        );
    }
}
