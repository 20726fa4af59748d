//! A session's inputs on their way out: saved (with `--save`), joined, and
//! the calls printed. The demo, a cluster session and `kubectl apitrace join`
//! each feed one, so a replay goes through exactly what the session did.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use apitrace_join::{
    CallRecord, Input, JoinConfig, JoinStats, Joiner, UnnamedCause, UnnamedPeers,
    predicate::Predicate,
};
use apitrace_proto::{Counters, Event, event::Kind};

use crate::{
    output::Printer,
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
    records: usize,
    /// `--where`: only the calls it selects are printed.
    select: Option<Predicate>,
    /// How many calls it selected.
    matched: usize,
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

/// What a session joined and lost.
#[derive(Debug)]
pub struct Outcome {
    pub stats: JoinStats,
    /// Every call joined, printed or not.
    pub records: usize,
    /// With `--where`, how many of them it selected (and were printed).
    pub matched: Option<usize>,
    /// Each probe's last counters, by node.
    pub counters: BTreeMap<String, Counters>,
    /// The callers and callees the records left unnamed, by cause.
    pub unnamed: UnnamedPeers,
}

impl<W: Write> Pipeline<W> {
    pub fn new(config: JoinConfig, saved: Option<SavedWriter>, printer: Printer<W>) -> Self {
        Self {
            joiner: Joiner::new(config),
            saved,
            printer,
            records: 0,
            select: None,
            matched: 0,
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

    /// Prints only the calls `select` selects (`--where`); every call is
    /// still joined and counted.
    pub fn selecting(mut self, select: Option<Predicate>) -> Self {
        self.select = select;
        self
    }

    /// How many calls were joined so far, printed or not.
    pub fn records(&self) -> usize {
        self.records
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
        let mut printing = Printing {
            printer: &mut self.printer,
            records: &mut self.records,
            select: self.select.as_ref(),
            matched: &mut self.matched,
            unnamed: &mut self.unnamed,
            unnamed_cause: self.unnamed_cause.as_deref(),
            failed: None,
        };
        self.joiner.apply_all(inputs, &mut printing);
        match printing.failed {
            Some(error) => Err(PipelineError::Print(error)),
            None => Ok(()),
        }
    }

    /// Emits the calls still open, prints what was held and closes the file.
    pub fn finish(mut self) -> Result<Outcome, PipelineError> {
        self.feed(Input::End)?;
        let Self {
            joiner,
            saved,
            printer,
            records,
            select,
            matched,
            counters,
            unnamed,
            unnamed_cause: _,
        } = self;
        if let Some(saved) = saved {
            saved.finish()?;
        }
        printer.finish().map_err(PipelineError::Print)?;
        Ok(Outcome {
            stats: joiner.stats().clone(),
            records,
            matched: select.map(|_| matched),
            counters,
            unnamed,
        })
    }
}

/// Hands each record to the printer as the join emits it: the calls an input
/// closes at once (the end of a session, thousands of them) are not gathered
/// first, and with `--follow` each is written as it comes.
struct Printing<'a, W: Write> {
    printer: &'a mut Printer<W>,
    records: &'a mut usize,
    select: Option<&'a Predicate>,
    matched: &'a mut usize,
    unnamed: &'a mut UnnamedPeers,
    unnamed_cause: Option<&'a (dyn Fn() -> UnnamedCause + Send)>,
    /// The first error printing met: the session ends with it, and the
    /// records after it are not printed.
    failed: Option<io::Error>,
}

impl<W: Write> Extend<CallRecord> for Printing<'_, W> {
    fn extend<I: IntoIterator<Item = CallRecord>>(&mut self, records: I) {
        for record in records {
            if self.failed.is_some() {
                return;
            }
            *self.records += 1;
            for peer in [&record.src, &record.dst] {
                if peer.name.is_empty() && !peer.ip.is_empty() {
                    self.unnamed.count(
                        self.unnamed_cause
                            .map_or(UnnamedCause::NoHolder, |cause| cause()),
                    );
                }
            }
            if self.select.is_some_and(|select| !select.matches(&record)) {
                continue;
            }
            *self.matched += 1;
            if let Err(error) = self.printer.print(record) {
                self.failed = Some(error);
            }
        }
    }
}

impl Outcome {
    /// One paragraph for stderr: how the calls were joined and every event
    /// lost on the way. `calls` is how many calls were made, when known.
    pub fn summary(&self, calls: Option<u32>) -> String {
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
        if let Some(matched) = self.matched {
            text.push_str(&format!("; {matched} matched --where and were printed"));
        }
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
            crate::output::Format::Ndjson,
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

    #[test]
    fn several_probes_counters_add_up_and_a_later_status_replaces_its_own_probes() {
        let mut pipeline = Pipeline::new(
            JoinConfig::default(),
            None,
            Printer::new(
                Vec::new(),
                crate::output::Format::Ndjson,
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
