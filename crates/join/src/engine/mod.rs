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
//! ([`Joiner::apply_all`], which reads ahead in them: see [`ahead`]); both
//! give the same records in the same order.

mod ahead;
mod build;
mod calls;
mod flow;
mod legs;
mod prefetch;
mod texts;
mod wire;

#[cfg(test)]
mod tests;

use std::{collections::VecDeque, net::IpAddr};

use apitrace_proto::{
    AccessLog, Event, PayloadKind, TcEvent, TcKind, TrafficDirection, event::Kind,
};
use rustc_hash::FxHashMap;
use serde::Serialize;
use smallvec::SmallVec;

use crate::{
    directory::{Directory, Workload, WorkloadKind},
    record::CallRecord,
};
use build::{JsonMemo, TakenHop, TakenLeg, TakenWire, WasmPart, build_record};
use calls::{CallId, Calls, PendingCall, PrintedIds, push_exact, unidentified_call_key};
use flow::{Flow, IpTexts, Pods};
use legs::{HopLegs, Leg, direction_of_cluster};
use wire::{Exchange, IdentifiedRequests, InterfaceNames, MessageRef, Speaks, WireIndex};

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
    /// Calls in the order they opened: (first arrival, id). Their windows
    /// close in this order; an entry whose call was emitted is skipped.
    opened: VecDeque<(i64, CallId)>,
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
            opened: VecDeque::new(),
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
        self.opened
            .iter()
            .filter(|(_, id)| {
                self.calls
                    .get(*id)
                    .is_some_and(|call| call_start_ns(call).is_some_and(|at| at < before_ns))
            })
            .count()
    }

    /// Applies one input and hands the calls it completed or expired to
    /// `records`, oldest first: a `Vec` the caller reuses from one input to
    /// the next, or a sink that prints each record as it comes (the end of a
    /// session closes thousands of calls at once).
    pub fn apply(&mut self, input: Input, records: &mut impl Extend<CallRecord>) {
        match input {
            Input::Event { event, now_ns } => {
                if let Some((id, claims)) = self.accept(event, now_ns) {
                    records.extend(self.emit(id, claims, true, now_ns));
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

    /// Files an event; returns the call it completed, and what that call
    /// claims of the wire.
    fn accept(&mut self, event: Event, now_ns: i64) -> Option<(CallId, Claims)> {
        match event.kind? {
            Kind::AccessLog(log) => {
                let pod = self.pods.index(log.reporter.as_ref());
                let legs = HopLegs::of(&log, pod, self.direction(&log));
                let opened = if log.request_id.is_empty() {
                    self.open(&unidentified_call_key(&log), now_ns)
                } else {
                    self.open(&log.request_id, now_ns)
                };
                let Some(call) = opened else {
                    self.stats.access_logs_after_printed += 1;
                    return None;
                };
                let id = call.id;
                push_exact(&mut call.access_logs, log);
                push_exact(&mut call.hops, legs);
                let completed = self.completed(id);
                // A call its access log completes is emitted now: indexing it
                // by its connections would be undone at once.
                if completed.is_none() {
                    for connection in leg_connections(&legs) {
                        self.awaiting_wire.entry(connection).or_default().push(id);
                    }
                }
                completed
            }
            Kind::Wasm(mut wasm) => {
                if wasm.request_id.is_empty() {
                    self.stats.unmatched_wasm += 1;
                    return None;
                }
                let request_id = std::mem::take(&mut wasm.request_id);
                let part = WasmPart::new(wasm, self.config.show_secrets, &mut self.json);
                let Some(call) = self.open(&request_id, now_ns) else {
                    self.stats.wasm_after_printed += 1;
                    return None;
                };
                push_exact(&mut call.wasm, part);
                let id = call.id;
                self.completed(id)
            }
            Kind::Tc(tc) => self.accept_tc(tc, now_ns),
            Kind::Status(_) => None,
        }
    }

    fn accept_tc(&mut self, tc: TcEvent, now_ns: i64) -> Option<(CallId, Claims)> {
        let pod = self.pods.index(tc.pod.as_ref());
        let flow = Flow::new(pod, tc.src.as_ref(), tc.dst.as_ref())?;
        match TcKind::try_from(tc.kind) {
            Ok(TcKind::Message) => {
                let payload = PayloadKind::try_from(tc.payload).unwrap_or_default();
                let packet = self.interfaces.packet(tc);
                let time = packet.time_ns;
                let request_id = packet.head.as_ref().and_then(|head| head.request_id());
                let stream = packet.http2_stream;
                if let Some(request_id) = request_id {
                    // Rule 3: the sidecar added the header, and the hop it
                    // sent is plaintext.
                    let opened = open(
                        &mut self.calls,
                        &mut self.opened,
                        &self.printed,
                        request_id,
                        now_ns,
                    );
                    let Some(call) = opened else {
                        self.stats.tc_after_printed += 1;
                        return None;
                    };
                    if stream != 0 {
                        self.wire.add_identified_stream(&flow, &packet, now_ns);
                    }
                    let id = call.id;
                    push_exact(&mut call.identified, (flow, packet));
                    self.identified.add(flow, time, id, stream);
                    return self.completed(id);
                }
                self.wire.add_message(flow, packet, payload, now_ns);
                // A message start can complete a call whose other parts came
                // first: as a leg's request, as the response to it, or as the
                // response to an identified request (the one that went last
                // before it on the reverse flow).
                let answered = self
                    .identified
                    .answered_by(&flow.reverse(), time, stream)
                    .copied();
                self.awaiting_wire
                    .get(&flow.connection())
                    .into_iter()
                    .flatten()
                    .copied()
                    .chain(answered)
                    .find_map(|id| self.completed(id))
            }
            Ok(kind @ (TcKind::Open | TcKind::Accept)) => {
                let interface = self.interfaces.get(&tc.interface);
                self.wire
                    .add_handshake(&flow, &tc, interface, kind == TcKind::Accept, now_ns);
                None
            }
            Ok(kind @ (TcKind::Retransmit | TcKind::Reset)) => {
                // Attributed when a call on this connection is emitted.
                self.wire
                    .add_context(&flow, tc.time_unix_nano, kind == TcKind::Reset, now_ns);
                None
            }
            // Closes are context, not calls.
            _ => None,
        }
    }

    /// Which side of its sidecar `log`'s hop is: by its cluster, or, for a
    /// request the sidecar answered itself before routing it (a 431 for an
    /// oversized header), by whose address the caller called: the reporting
    /// pod's own for an inbound hop, another's (a Service's) for an outbound
    /// one.
    fn direction(&self, log: &AccessLog) -> TrafficDirection {
        let by_cluster = direction_of_cluster(&log.upstream_cluster);
        if by_cluster != TrafficDirection::Unspecified {
            return by_cluster;
        }
        let (Some(called), Some(reporter)) = (&log.downstream_local, &log.reporter) else {
            return TrafficDirection::Unspecified;
        };
        match self.directory.lookup(&called.ip, log.start_time_unix_nano) {
            Some(workload)
                if workload.kind == WorkloadKind::Pod
                    && workload.name == reporter.name
                    && workload.namespace == reporter.namespace =>
            {
                TrafficDirection::Inbound
            }
            Some(_) => TrafficDirection::Outbound,
            None => TrafficDirection::Unspecified,
        }
    }

    /// See [`open`].
    fn open(&mut self, request_id: &str, now_ns: i64) -> Option<&mut PendingCall> {
        open(
            &mut self.calls,
            &mut self.opened,
            &self.printed,
            request_id,
            now_ns,
        )
    }

    /// The call `id` with what it claims of the wire, if it has every part
    /// its session expects.
    fn completed(&self, id: CallId) -> Option<(CallId, Claims)> {
        let call = self.calls.get(id)?;
        // Most calls checked still miss a part that costs no search to see.
        if !self.has_every_part(call, None) || !self.has_every_hop(call) {
            return None;
        }
        let claims = self.claims(call);
        self.has_every_part(call, Some(&claims))
            .then_some((id, claims))
    }

    /// Whether `call` has each part its session expects. Without `claims`
    /// (the wire not searched yet), a wire part counts if the call has what
    /// the search needs.
    fn has_every_part(&self, call: &PendingCall, claims: Option<&Claims>) -> bool {
        self.config.expect.iter().all(|&part| match part {
            Part::AccessLog => !call.access_logs.is_empty(),
            // Each sidecar that logged the call ran the filter too.
            Part::Wasm => call.wasm.len() >= call.access_logs.len().max(1),
            Part::Wire | Part::Upstream => match claims {
                None => !call.access_logs.is_empty(),
                Some(claims) => claims.hops.iter().all(|hop| {
                    let leg = if part == Part::Wire {
                        &hop.downstream
                    } else {
                        &hop.upstream
                    };
                    leg.is_settled()
                }),
            },
        })
    }

    /// What `call` would take of the wire if it were emitted now.
    fn claims(&self, call: &PendingCall) -> Claims {
        let mut assigned = Assigned::default();
        let hops = call
            .hops
            .iter()
            .zip(&call.access_logs)
            .map(|(hop, log)| {
                let mut leg_claim = |leg: Option<&Leg>, http1: bool| match leg {
                    None => LegClaim::NoLeg,
                    Some(leg) => self.claim_leg(call, leg, &log.method, http1, &mut assigned),
                };
                HopClaim {
                    downstream: leg_claim(hop.downstream.as_ref(), hop.downstream_http1),
                    upstream: leg_claim(hop.upstream.as_ref(), true),
                }
            })
            .collect();
        // An identified request no leg took (its hop's access log has not
        // come, or never will): the call's wire as far as it goes.
        let unassigned = (0..call.identified.len())
            .find(|&index| !assigned.has(index))
            .map(|index| {
                let (flow, packet) = &call.identified[index];
                (index, self.identified_response(flow, packet))
            });
        Claims { hops, unassigned }
    }

    /// What `leg` of `call` takes of the wire (rules 3 to 6).
    fn claim_leg(
        &self,
        call: &PendingCall,
        leg: &Leg,
        method: &str,
        http1: bool,
        assigned: &mut Assigned,
    ) -> LegClaim {
        let identified = call
            .identified
            .iter()
            .enumerate()
            .find(|(index, (flow, _))| !assigned.has(*index) && *flow == leg.request);
        if let Some((index, (flow, packet))) = identified {
            assigned.take(index);
            let response = self.identified_response(flow, packet);
            return LegClaim::Identified { index, response };
        }
        let speaks = self.wire.speaks(leg);
        let opaque = speaks == Some(Speaks::Opaque);
        if http1
            && !opaque
            && let Some(exchange) =
                self.wire
                    .find_exchange(leg, method, self.config.wire_tolerance_ns)
        {
            return LegClaim::Exchange(exchange);
        }
        // An HTTP/2 leg the session saw carry traffic is multiplexed whatever
        // its bytes looked like. Where its streams carry request ids, the
        // call's own stream may still come: the connection is what the leg
        // gets when its window closes without it.
        if opaque || (!http1 && speaks.is_some()) {
            let waits = self
                .wire
                .connection(leg)
                .is_some_and(|info| info.streams_carry_ids);
            return LegClaim::Connection { settled: !waits };
        }
        LegClaim::NotSeen
    }

    /// The response to the identified request `request` on `flow` (rule 5):
    /// on an h2c stream, its stream's response; otherwise the first message
    /// after it, bounded by the next request on the flow, identified or not.
    fn identified_response(
        &self,
        flow: &Flow,
        request: &wire::Packet,
    ) -> Option<IdentifiedResponse> {
        let request_ns = request.time_ns;
        if request.http2_stream != 0 {
            let response = self.wire.find_stream_response(
                &flow.reverse(),
                request_ns,
                request.http2_stream,
            )?;
            return Some(IdentifiedResponse {
                response,
                until: i64::MAX,
            });
        }
        let until = self
            .identified
            .next_after(flow, request_ns)
            .into_iter()
            .chain(self.wire.next_after(flow, request_ns))
            .min()
            .unwrap_or(i64::MAX);
        let response = self
            .wire
            .find_response(&flow.reverse(), request_ns, until)?;
        Some(IdentifiedResponse { response, until })
    }

    /// Whether each traced sidecar that takes part in the call has logged its
    /// hop: a call from a traced pod to a traced pod is logged twice, and is
    /// not complete with one of the two.
    fn has_every_hop(&self, call: &PendingCall) -> bool {
        let logged = |wanted: TrafficDirection| {
            call.hops
                .iter()
                .zip(&call.access_logs)
                .find(|(hop, _)| hop.direction == wanted)
                .map(|(_, log)| log)
        };
        let traced = |endpoint: Option<&apitrace_proto::Endpoint>, at: i64| {
            endpoint.is_some_and(|endpoint| self.directory.is_traced(&endpoint.ip, at))
        };
        match (
            logged(TrafficDirection::Inbound),
            logged(TrafficDirection::Outbound),
        ) {
            (Some(inbound), None) => !traced(
                inbound.downstream_remote.as_ref(),
                inbound.start_time_unix_nano,
            ),
            (None, Some(outbound)) => !traced(
                outbound.upstream_remote.as_ref(),
                outbound.start_time_unix_nano,
            ),
            _ => true,
        }
    }

    /// Emits the calls whose window closed, and forgets wire events no call
    /// claimed in time.
    fn expire(&mut self, now_ns: i64, records: &mut impl Extend<CallRecord>) {
        let window = self.config.window_ns;
        while let Some((opened_ns, _)) = self.opened.front() {
            if opened_ns.saturating_add(window) > now_ns {
                break;
            }
            let Some((_, id)) = self.opened.pop_front() else {
                break;
            };
            let Some(call) = self.calls.get(id) else {
                continue;
            };
            let claims = self.claims(call);
            let complete = self.has_every_hop(call) && self.has_every_part(call, Some(&claims));
            if !complete {
                let missing = self.missing(call, &claims);
                let counts = &mut self.stats.missing;
                for (count, lacks) in [
                    &mut counts.access_log,
                    &mut counts.wasm,
                    &mut counts.wire,
                    &mut counts.upstream,
                ]
                .into_iter()
                .zip(missing)
                {
                    *count += u64::from(lacks);
                }
            }
            records.extend(self.emit(id, claims, complete, now_ns));
        }
        // Rule 9.
        let cutoff = now_ns.saturating_sub(window.saturating_mul(2));
        let expired = self.wire.expire(cutoff);
        self.printed.expire(cutoff);
        self.stats.unmatched_tc += expired.unmatched;
        self.stats.tc_outside_calls += expired.outside_calls;
        self.stats.tc_connection_level += expired.connection_level;
    }

    /// Which expected parts a partial call lacks: the access log, the WASM
    /// event, the wire's downstream and upstream legs, in that order.
    fn missing(&self, call: &PendingCall, claims: &Claims) -> [bool; 4] {
        let expects = |part| self.config.expect.contains(&part);
        let unsettled = |downstream: bool| {
            call.access_logs.is_empty()
                || claims.hops.iter().any(|hop| {
                    let leg = if downstream {
                        &hop.downstream
                    } else {
                        &hop.upstream
                    };
                    !leg.is_settled()
                })
        };
        [
            expects(Part::AccessLog) && call.access_logs.is_empty(),
            expects(Part::Wasm) && call.wasm.len() < call.access_logs.len().max(1),
            expects(Part::Wire) && unsettled(true),
            expects(Part::Upstream) && unsettled(false),
        ]
    }

    /// Removes the call `id`, takes what it claims of the wire, and makes its
    /// record.
    fn emit(
        &mut self,
        id: CallId,
        claims: Claims,
        complete: bool,
        now_ns: i64,
    ) -> Option<CallRecord> {
        let mut call = self.calls.remove(id)?;
        self.printed.insert(id, now_ns);
        for (flow, request) in &call.identified {
            self.identified.remove(flow, request.time_ns, id);
        }
        for hop in &call.hops {
            for connection in leg_connections(hop) {
                unindex(&mut self.awaiting_wire, &connection, id);
            }
        }
        let span = call_span(&call, &claims);
        let mut identified: Vec<Option<(Flow, wire::Packet)>> =
            std::mem::take(&mut call.identified)
                .into_iter()
                .map(Some)
                .collect();
        let hops = claims
            .hops
            .into_iter()
            .zip(call.hops.iter().zip(&call.access_logs))
            .map(|(claim, (hop, _))| TakenHop {
                downstream: hop
                    .downstream
                    .map(|leg| self.take_leg(leg, claim.downstream, &mut identified, span, now_ns)),
                upstream: hop
                    .upstream
                    .map(|leg| self.take_leg(leg, claim.upstream, &mut identified, span, now_ns)),
            })
            .collect();
        let unassigned = claims.unassigned.and_then(|(index, response)| {
            let (flow, request) = identified.get_mut(index)?.take()?;
            let response = response.and_then(|found| self.wire.take(found.response));
            Some((flow, request, response))
        });
        if complete {
            self.stats.complete += 1;
        } else {
            self.stats.partial += 1;
        }
        Some(build_record(
            call,
            hops,
            unassigned,
            &self.directory,
            &mut self.ip_texts,
        ))
    }

    /// Takes what `claim` gives `leg` of the wire (rules 5 to 7). The call ran
    /// over `span` (from, to), as far as its events tell.
    fn take_leg(
        &mut self,
        leg: Leg,
        claim: LegClaim,
        identified: &mut [Option<(Flow, wire::Packet)>],
        span: (i64, i64),
        now_ns: i64,
    ) -> TakenLeg {
        let wire = match claim {
            LegClaim::Identified { index, response } => {
                match identified.get_mut(index).and_then(Option::take) {
                    Some((flow, request)) => {
                        let (retransmits, resets) = if request.http2_stream != 0 {
                            // Streams share the connection's segments: what
                            // was retransmitted while the call ran may be
                            // another stream's too (rule 7).
                            self.wire.count_context(&leg, span.0, span.1, now_ns)
                        } else {
                            let until = response.map_or(i64::MAX, |found| found.until);
                            self.wire
                                .take_context(&flow, request.time_ns, until, now_ns)
                        };
                        TakenWire::Request {
                            request,
                            response: response.and_then(|found| self.wire.take(found.response)),
                            retransmits,
                            resets,
                        }
                    }
                    None => TakenWire::None,
                }
            }
            LegClaim::Exchange(exchange) => self.take_exchange(exchange, now_ns),
            LegClaim::Connection { .. } => {
                let (retransmits, resets) = self.wire.count_context(&leg, span.0, span.1, now_ns);
                match self.wire.connection(&leg) {
                    Some(info) => TakenWire::Connection {
                        info,
                        retransmits,
                        resets,
                    },
                    None => TakenWire::None,
                }
            }
            LegClaim::NoLeg | LegClaim::NotSeen => TakenWire::None,
        };
        TakenLeg { leg, wire }
    }

    /// Takes a request start, its response start, and the retransmissions and
    /// resets of its connection from it until the next request on it.
    fn take_exchange(&mut self, exchange: Exchange, now_ns: i64) -> TakenWire {
        let Some(request) = self.wire.take(exchange.request) else {
            return TakenWire::None;
        };
        let response = exchange.response.and_then(|found| self.wire.take(found));
        let (retransmits, resets) = self.wire.take_context(
            &exchange.request.flow,
            exchange.request.time_ns,
            exchange.next_request_ns,
            now_ns,
        );
        TakenWire::Request {
            request,
            response,
            retransmits,
            resets,
        }
    }
}

/// The connections `hop`'s legs are on, each once (a leg the pod's iptables
/// redirected is two, one per half).
fn leg_connections(hop: &HopLegs) -> impl Iterator<Item = Flow> + use<> {
    let mut connections: [Option<Flow>; 4] = [None; 4];
    for (slot, leg) in [hop.downstream, hop.upstream].into_iter().enumerate() {
        if let Some(leg) = leg {
            connections[2 * slot] = Some(leg.request.connection());
            let response = leg.response.connection();
            if response != leg.request.connection() {
                connections[2 * slot + 1] = Some(response);
            }
        }
    }
    connections.into_iter().flatten()
}

/// From when to when `call` ran, as far as its events tell: from its
/// earliest request on the wire or in a sidecar to the last byte a sidecar
/// sent back.
fn call_span(call: &PendingCall, claims: &Claims) -> (i64, i64) {
    let exchanges = claims
        .hops
        .iter()
        .flat_map(|hop| [&hop.downstream, &hop.upstream])
        .filter_map(|claim| match claim {
            LegClaim::Exchange(exchange) => Some(exchange.request.time_ns),
            _ => None,
        });
    let from = call_start_ns(call)
        .into_iter()
        .chain(exchanges)
        .min()
        .unwrap_or(i64::MIN);
    let to = call
        .access_logs
        .iter()
        .map(|log| {
            log.start_time_unix_nano
                .saturating_add(log.last_downstream_tx_byte_ns.max(0))
        })
        .max()
        .unwrap_or(from);
    (from, to)
}

/// When `call` began, by the earliest time any of its events carries.
fn call_start_ns(call: &PendingCall) -> Option<i64> {
    let logs = call.access_logs.iter().map(|log| log.start_time_unix_nano);
    let wasm = call.wasm.iter().map(WasmPart::time_ns);
    let wire = call.identified.iter().map(|(_, packet)| packet.time_ns);
    logs.chain(wasm).chain(wire).filter(|&at| at > 0).min()
}

/// Which of a call's identified requests a leg took: a bit each. A call has
/// one or two; any past the 64th is never given to a leg.
#[derive(Debug, Default)]
struct Assigned(u64);

impl Assigned {
    fn has(&self, index: usize) -> bool {
        index >= 64 || self.0 & (1 << index) != 0
    }

    fn take(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }
}

/// What a call takes of the wire when it is emitted, found once when it is
/// checked for completeness.
#[derive(Debug)]
struct Claims {
    /// One per hop, in the call's order: one or two, kept in place.
    hops: SmallVec<[HopClaim; 2]>,
    /// The first identified request no leg took, and its response.
    unassigned: Option<(usize, Option<IdentifiedResponse>)>,
}

#[derive(Debug)]
struct HopClaim {
    downstream: LegClaim,
    upstream: LegClaim,
}

/// What a leg takes of the wire.
#[derive(Debug, Clone, Copy)]
enum LegClaim {
    /// The hop has no such leg (the sidecar sent nothing upstream).
    NoLeg,
    /// Rule 3: the call's identified request at `index`, and its response.
    Identified {
        index: usize,
        response: Option<IdentifiedResponse>,
    },
    /// Rule 4.
    Exchange(Exchange),
    /// Rule 6; not settled while the leg's own h2c stream may still come.
    Connection { settled: bool },
    /// Nothing the leg can take has arrived (yet).
    NotSeen,
}

impl LegClaim {
    /// Whether the leg has what it will have: a request with its response,
    /// the connection where that is all the wire can tell, or no leg at all.
    fn is_settled(&self) -> bool {
        match self {
            Self::NoLeg => true,
            Self::Connection { settled } => *settled,
            Self::Identified { response, .. } => response.is_some(),
            Self::Exchange(exchange) => exchange.response.is_some(),
            Self::NotSeen => false,
        }
    }
}

/// The response to an identified request, and the bound it was searched to
/// (the flow's next request): the end of the request's share of its
/// connection's retransmissions and resets.
#[derive(Debug, Clone, Copy)]
struct IdentifiedResponse {
    response: MessageRef,
    until: i64,
}

/// The open call `request_id`, opened now (its window from `now_ns`) if it
/// was not, unless a call of that id was printed in the last two windows:
/// then none, and the caller counts the event as late (rule 8: a call is
/// printed once). A free function over the fields it needs, so that a caller
/// can use the joiner's other fields while it holds the call.
fn open<'a>(
    calls: &'a mut Calls,
    opened: &mut VecDeque<(i64, CallId)>,
    printed: &PrintedIds,
    request_id: &str,
    now_ns: i64,
) -> Option<&'a mut PendingCall> {
    calls.get_or_open(request_id, printed, |id| {
        opened.push_back((now_ns, id));
        PendingCall::new(id, request_id)
    })
}

/// Removes the call `id` from the calls indexed under `key`.
fn unindex(index: &mut FxHashMap<Flow, Vec<CallId>>, key: &Flow, id: CallId) {
    if let Some(ids) = index.get_mut(key) {
        ids.retain(|indexed| *indexed != id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}
