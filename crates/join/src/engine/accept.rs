//! Taking each event in: filing it under its call (rules 1 and 3) or in the
//! wire index, and finding the call it completes.

use apitrace_proto::{
    AccessLog, Event, PayloadKind, TcEvent, TcKind, TrafficDirection, event::Kind,
};

use super::{
    Joiner,
    calls::{CallId, push_exact, unidentified_call_key},
    flow::Flow,
    legs::{HopLegs, direction_of_cluster},
    share::WireShare,
    wasm::WasmPart,
};
use crate::directory::WorkloadKind;

impl Joiner {
    /// Files an event; returns the call it completed, and its share of the
    /// wire.
    pub(super) fn accept(&mut self, event: Event, now_ns: i64) -> Option<(CallId, WireShare)> {
        match event.kind? {
            Kind::AccessLog(log) => {
                let pod = self.pods.index(log.reporter.as_ref());
                let legs = HopLegs::of(&log, pod, self.direction(&log));
                let opened = if log.request_id.is_empty() {
                    let key = unidentified_call_key(&log);
                    self.calls.open(&key, &self.printed, now_ns)
                } else {
                    self.calls.open(&log.request_id, &self.printed, now_ns)
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
                    for connection in legs.connections() {
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
                let Some(call) = self.calls.open(&request_id, &self.printed, now_ns) else {
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

    fn accept_tc(&mut self, tc: TcEvent, now_ns: i64) -> Option<(CallId, WireShare)> {
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
                    let Some(call) = self.calls.open(request_id, &self.printed, now_ns) else {
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
}
