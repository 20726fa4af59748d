//! A session's inputs on their way out: saved (with `--save`), joined, and
//! the calls printed. The demo, a cluster session and `kubectl apitrace join`
//! each feed one, so a replay goes through exactly what the session did.

use std::io::{self, Write};

use apitrace_join::{CallRecord, Input, JoinConfig, JoinStats, Joiner};
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

pub struct Pipeline<W: Write> {
    joiner: Joiner,
    saved: Option<SavedWriter>,
    printer: Printer<W>,
    records: usize,
    /// The probes' counters, from the last status they sent.
    counters: Option<Counters>,
    /// The records an input completed, reused from one input to the next.
    joined: Vec<CallRecord>,
}

/// What a session joined and lost.
#[derive(Debug)]
pub struct Outcome {
    pub stats: JoinStats,
    pub records: usize,
    pub counters: Option<Counters>,
}

impl<W: Write> Pipeline<W> {
    pub fn new(config: JoinConfig, saved: Option<SavedWriter>, printer: Printer<W>) -> Self {
        Self {
            joiner: Joiner::new(config),
            saved,
            printer,
            records: 0,
            counters: None,
            joined: Vec::new(),
        }
    }

    /// How many records were printed (or held to be printed) so far.
    pub fn records(&self) -> usize {
        self.records
    }

    pub fn feed(&mut self, input: Input) -> Result<(), PipelineError> {
        if let Some(saved) = &mut self.saved {
            saved.save(&input)?;
        }
        if let Input::Event {
            event: Event {
                kind: Some(Kind::Status(status)),
            },
            ..
        } = &input
        {
            self.counters = status.counters.or(self.counters);
        }
        self.joiner.apply(input, &mut self.joined);
        for record in self.joined.drain(..) {
            self.records += 1;
            self.printer.print(record).map_err(PipelineError::Print)?;
        }
        Ok(())
    }

    /// Emits the calls still open, prints what was held and closes the file.
    pub fn finish(mut self) -> Result<Outcome, PipelineError> {
        self.feed(Input::End)?;
        let Self {
            joiner,
            saved,
            printer,
            records,
            counters,
            ..
        } = self;
        if let Some(saved) = saved {
            saved.finish()?;
        }
        printer.finish().map_err(PipelineError::Print)?;
        Ok(Outcome {
            stats: joiner.stats().clone(),
            records,
            counters,
        })
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
            "{made}; {} joined with every layer, {} with some; unmatched events: {} TC, {} WASM",
            stats.complete, stats.partial, stats.unmatched_tc, stats.unmatched_wasm,
        );
        if stats.tc_after_calls > 0 {
            text.push_str(&format!(
                "; {} TC retransmissions or resets came after their connection's calls (its teardown)",
                stats.tc_after_calls
            ));
        }
        text.push('.');
        match &self.counters {
            Some(counters) => text.push_str(&format!(
                " The probe received {} TC, {} ALS and {} WASM events; dropped: {}.",
                counters.tc_events,
                counters.access_logs,
                counters.wasm_events,
                drops(counters)
            )),
            None => text.push_str(" The probes' counters were not recorded."),
        }
        text
    }
}

fn drops(counters: &Counters) -> String {
    let drops: Vec<String> = [
        ("TC ring buffer full", counters.tc_ring_full),
        ("TC flow table full", counters.tc_flow_table_full),
        ("TC malformed", counters.tc_malformed),
        ("access logs malformed", counters.access_logs_malformed),
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
    .collect();
    if drops.is_empty() {
        "none".to_owned()
    } else {
        drops.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_is_named_in_the_summary() {
        let outcome = Outcome {
            stats: JoinStats {
                complete: 3,
                partial: 1,
                unmatched_tc: 2,
                unmatched_wasm: 0,
                tc_after_calls: 0,
            },
            records: 4,
            counters: Some(Counters {
                tc_events: 10,
                access_logs: 4,
                wasm_events: 4,
                tc_ring_full: 7,
                wasm_dropped_in_filter: 1,
                ..Counters::default()
            }),
        };
        assert_eq!(
            outcome.summary(Some(4)),
            "4 calls made; 3 joined with every layer, 1 with some; unmatched events: 2 TC, 0 WASM. \
             The probe received 10 TC, 4 ALS and 4 WASM events; dropped: TC ring buffer full: 7, WASM dropped in the filter: 1."
        );
        let mut replayed = Outcome {
            counters: None,
            ..outcome
        };
        replayed.stats.tc_after_calls = 2;
        assert!(replayed.summary(None).starts_with(
            "4 calls; 3 joined with every layer, 1 with some; unmatched events: 2 TC, 0 WASM; \
             2 TC retransmissions or resets came after their connection's calls (its teardown). "
        ));
        assert!(
            replayed
                .summary(None)
                .ends_with("The probes' counters were not recorded.")
        );
    }
}
