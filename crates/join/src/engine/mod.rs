//! The join state machine: events in, one record per call out.
//!
//! # The rules
//!
//! 1. **By request id.** A call is what one `x-request-id` names: the
//!    sidecars' access-log entries, the WASM filters' events, and every
//!    request on the wire whose plaintext HTTP/1 head, or h2c header block
//!    (the probe follows an h2c connection's frames: one event per stream),
//!    carries the header (the sidecar adds it to what it sends on) are filed
//!    under it. An entry
//!    without one (the sidecar rejected the request before assigning it) is a
//!    call of its own, known by its connection and start time.
//! 2. **Hops and legs.** Each access-log entry is one hop of the call: the
//!    sidecar that wrote it and the two connections it joined, the
//!    *downstream* leg it accepted the call on and the *upstream* leg it sent
//!    it on. The reporting pod's interfaces see both: where, for each kind of
//!    hop, is [`legs::HopLegs::of`]. A wire event is a pod's: two pods that see
//!    the same packets (the caller's and the called pod's `eth0`) report two
//!    events, each for its own hop.
//! 3. **Identified requests.** A request carrying the call's id on a leg's
//!    request flow is that leg's request.
//! 4. **By connection and time.** A downstream leg that speaks HTTP/1 and has
//!    no identified request takes the last request start on its request flow
//!    at or before the sidecar read it ([`JoinConfig::wire_tolerance_ns`]
//!    later at most, for the two clocks' conversion), if that packet starts an
//!    HTTP/1 request with the call's method (a request the sidecar could not
//!    parse, logged without one, must not parse either) and its response did
//!    not start before the sidecar read the request (then it was an earlier
//!    call's).
//! 5. **Responses.** A request-level leg's response is the first message on
//!    its response flow after its request, and no later than the next
//!    request on its request flow: HTTP/1 answers a request before the next
//!    one is sent. An h2c stream's response is the first message start of
//!    the same stream on its response flow.
//! 6. **Connection level.** A leg without an identified request whose
//!    connection's message starts are TLS records or HTTP/2 frames, or whose
//!    access log says HTTP/2, cannot be told apart from the connection's other
//!    calls. It gets the connection: its
//!    tuple, its first packet when the session saw it open, the handshake, and
//!    the retransmissions and resets while the call ran, which the
//!    connection's other calls may show too; the record says so (`scope:
//!    connection`). A leg never takes a packet rules 3 to 5 did not give it.
//! 7. **Retransmissions and resets** of a request-level HTTP/1 leg are its
//!    connection's from its request to the connection's next request: taken
//!    by the call, so that no other call shows them. An h2c stream's are its
//!    connection's while the call ran, which its other streams show too.
//! 8. **Completeness.** A call is emitted as soon as it has every part its
//!    session expects ([`Part`]) on each of its hops, and every traced
//!    sidecar it passed has logged it; otherwise when its window closes, a
//!    window after its first event arrived. A call is printed once: an
//!    event of any layer that carries the id of a call printed in the last
//!    two windows (it came late) is counted and left out, never a second
//!    record of the call.
//! 9. **Retention.** A wire event no call claimed is forgotten two windows
//!    after it arrived, up to an eighth of one later: it can come a window
//!    before its call's first event, and the call may wait a window more.
//!
//! Inputs are applied one at a time ([`Joiner::apply`]) or in batches
//! ([`Joiner::apply_all`], which reads ahead in them); both give the same
//! records in the same order.
//!
//! # The layout
//!
//! Each module uses only those listed before it, and `mod.rs` (the
//! [`Joiner`] and its inputs) only the state it holds:
//!
//! - `prefetch`: the cache hint, knowing nothing of the engine;
//! - `texts`: strings kept in one allocation;
//! - `flow`: flows and connections as a pod saw them;
//! - `legs`: where a hop's two connections are on the wire (rule 2);
//! - `wire`: the message starts, connections and retransmissions the TC
//!   program saw, each message by a reference that stays valid;
//! - `wasm`: what the join keeps of the filter's events;
//! - `calls`: the open calls, by request id and by identified request;
//! - `build`: a call's record, from what it took;
//! - `share`: what an open call would take of the wire (rules 3 to 6), and
//!   whether it is complete (rule 8);
//! - `accept`: each event filed (rules 1 and 3);
//! - `emit`: a call taken off the wire and emitted (rules 5 to 8), and
//!   what no call claimed forgotten (rule 9);
//! - `ahead`: [`Joiner::apply_all`], reading ahead in a batch.

mod accept;
mod ahead;
mod build;
mod calls;
mod emit;
mod flow;
mod legs;
mod prefetch;
mod share;
mod texts;
mod wasm;
mod wire;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

use apitrace_proto::Event;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::{
    directory::{Directory, Workload},
    record::CallRecord,
};
use calls::{CallId, Calls, IdentifiedRequests, PrintedIds};
use flow::{Flow, IpTexts, Pods};
use wasm::JsonMemo;
use wire::{InterfaceNames, WireIndex};

/// A piece of a call. A call is emitted as soon as it has every part its
/// session expects, and when its window closes otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Each traced sidecar's access-log entry.
    AccessLog,
    /// Each traced sidecar's WASM filter event.
    Wasm,
    /// Each hop's downstream leg on the wire: the request's and the response's
    /// first packets, or the connection where the wire cannot tell calls
    /// apart.
    Wire,
    /// Each hop's upstream leg on the wire, likewise: towards the app, the
    /// sidecar's plaintext request (with the x-request-id) and the app's
    /// response.
    Upstream,
}

/// How often the wire index is swept for what no call claimed, per window:
/// an unclaimed wire event is forgotten two windows after it arrived, and an
/// eighth of one later at most.
const SWEEPS_PER_WINDOW: i64 = 8;

/// What a session's join expects and allows.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// How long a call waits for its missing parts after its first event
    /// arrived, in nanoseconds. Bounds the engine's memory.
    pub window_ns: i64,
    /// The parts a call is complete with.
    pub expect: Vec<Part>,
    /// How much later than the sidecar's start time a request's first packet
    /// may appear to be. The packet passes the TC program before the sidecar
    /// can read it, and the next request on a keep-alive connection comes only
    /// after this one's response; both times are the node's clock, converted
    /// separately, so this only absorbs conversion error. Wider than the
    /// shortest turnaround on a connection, it would take the next request.
    pub wire_tolerance_ns: i64,
    /// Keep the raw credentials in the records, when the filter sent them.
    pub show_secrets: bool,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            window_ns: 5_000_000_000,
            expect: vec![Part::AccessLog, Part::Wasm, Part::Wire, Part::Upstream],
            wire_tolerance_ns: 50_000,
            show_secrets: false,
        }
    }
}

/// What the engine is fed. Every input carries the time it was observed at
/// (Unix nanoseconds), which is the engine's only clock.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "every event passes through here once; boxing would add an allocation per event"
)]
pub enum Input {
    /// An event from a probe, and when the CLI received it.
    Event {
        /// The probe's event, with the time its layer observed it.
        event: Event,
        /// When the CLI received it: the join's clock.
        now_ns: i64,
    },
    /// Who an address is from `since_ns` on, for the records' `src` and `dst`,
    /// and to know which calls a second sidecar will log.
    Identity {
        /// The address.
        ip: IpAddr,
        /// From when it is this workload's: an address can pass from a
        /// deleted pod to a new one.
        since_ns: i64,
        /// Whose it is.
        workload: Workload,
    },
    /// Time passed: close the windows that are due.
    Tick {
        /// The time now, by the same clock as the events' `now_ns`.
        now_ns: i64,
    },
    /// No more input: emit every call still open.
    End,
}

/// How the session's events were joined.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JoinStats {
    /// Calls emitted with every expected part.
    pub complete: u64,
    /// Calls emitted when their window closed, without some part.
    pub partial: u64,
    /// Of the partial calls, how many lacked each part.
    pub missing: MissingParts,
    /// WASM events without a request id.
    pub unmatched_wasm: u64,
    /// TC events no call claimed within two windows of their arrival.
    pub unmatched_tc: u64,
    /// TC retransmissions and resets no call's record shows, on a
    /// connection calls used: between its calls (a pooled connection, a
    /// lost segment of what follows a response), after them (its teardown,
    /// a retransmitted FIN), or arrived after the call they fell in was
    /// printed.
    pub tc_outside_calls: u64,
    /// Message starts on encrypted or multiplexed connections, which calls
    /// are given at the connection's level (rule 6): not lost, and not any
    /// one call's.
    pub tc_connection_level: u64,
    /// Requests on the wire carrying the id of a call printed already: they
    /// came later than every part the call waited for (a probe's events
    /// delayed), and are not a record of their own.
    pub tc_after_printed: u64,
    /// Access-log entries of a call printed already (its window closed
    /// first: the sidecar flushed late), likewise left out, not a second
    /// record of the call.
    pub access_logs_after_printed: u64,
    /// WASM events of a call printed already, likewise.
    pub wasm_after_printed: u64,
}

/// Counts of partial calls by the part they lacked (a call can lack several).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MissingParts {
    /// A traced sidecar's access-log entry ([`Part::AccessLog`]).
    pub access_log: u64,
    /// A traced sidecar's WASM filter event ([`Part::Wasm`]).
    pub wasm: u64,
    /// A hop's downstream leg on the wire ([`Part::Wire`]).
    pub wire: u64,
    /// A hop's upstream leg on the wire ([`Part::Upstream`]).
    pub upstream: u64,
}

/// The join.
#[derive(Debug)]
pub struct Joiner {
    config: JoinConfig,
    directory: Directory,
    calls: Calls,
    pods: Pods,
    wire: WireIndex,
    interfaces: InterfaceNames,
    /// Open calls by the connections their legs are on, so that a wire event
    /// finds the calls it may complete without looking at the others.
    awaiting_wire: FxHashMap<Flow, Vec<CallId>>,
    /// Open calls by their identified requests (rule 3).
    identified: IdentifiedRequests,
    /// The calls printed in the last two windows.
    printed: PrintedIds,
    json: JsonMemo,
    ip_texts: IpTexts,
    stats: JoinStats,
}

impl Joiner {
    /// A join with nothing open and no address known yet.
    pub fn new(config: JoinConfig) -> Self {
        Self {
            wire: WireIndex::new(config.window_ns / SWEEPS_PER_WINDOW),
            config,
            directory: Directory::default(),
            calls: Calls::default(),
            pods: Pods::default(),
            interfaces: InterfaceNames::default(),
            awaiting_wire: FxHashMap::default(),
            identified: IdentifiedRequests::default(),
            printed: PrintedIds::default(),
            json: JsonMemo::default(),
            ip_texts: IpTexts::default(),
            stats: JoinStats::default(),
        }
    }

    /// How the events so far were joined, for the session's summary.
    pub fn stats(&self) -> &JoinStats {
        &self.stats
    }

    /// How many calls are open that started before `before_ns` (by their
    /// first event's time): what a session that ends then still waits for.
    pub fn open_calls_started_before(&self, before_ns: i64) -> usize {
        self.calls.started_before(before_ns)
    }

    /// Applies one input and hands the calls it completed or expired to
    /// `records`, oldest first: a `Vec` the caller reuses from one input to
    /// the next, or a sink that prints each record as it comes (the end of a
    /// session closes thousands of calls at once).
    pub fn apply(&mut self, input: Input, records: &mut impl Extend<CallRecord>) {
        match input {
            Input::Event { event, now_ns } => {
                if let Some((id, share)) = self.accept(event, now_ns) {
                    records.extend(self.emit(id, share, true, now_ns));
                }
                self.expire(now_ns, records);
            }
            Input::Identity {
                ip,
                since_ns,
                workload,
            } => self.directory.insert(ip, since_ns, workload),
            Input::Tick { now_ns } => self.expire(now_ns, records),
            Input::End => self.expire(i64::MAX, records),
        }
    }
}
