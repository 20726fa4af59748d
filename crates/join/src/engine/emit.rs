//! Emitting a call: when it is complete, or when its window closes; what it
//! takes of the wire then (rules 5 to 7), its record, and what no call
//! claimed forgotten (rule 9).

use rustc_hash::FxHashMap;

use super::{
    Joiner,
    build::{TakenHop, TakenLeg, TakenWire, build_record},
    calls::{CallId, PendingCall},
    flow::Flow,
    legs::Leg,
    share::{LegShare, WireShare},
    wire::{Exchange, Packet},
};
use crate::record::CallRecord;

impl Joiner {
    /// Emits the calls whose window closed, and forgets wire events no call
    /// claimed in time.
    pub(super) fn expire(&mut self, now_ns: i64, records: &mut impl Extend<CallRecord>) {
        let window = self.config.window_ns;
        while let Some(id) = self.calls.next_due(window, now_ns) {
            let Some(call) = self.calls.get(id) else {
                continue;
            };
            let share = self.wire_share(call);
            let complete = self.has_every_hop(call) && self.has_every_part(call, Some(&share));
            if !complete {
                let missing = self.missing(call, &share);
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
            records.extend(self.emit(id, share, complete, now_ns));
        }
        // Rule 9.
        let cutoff = now_ns.saturating_sub(window.saturating_mul(2));
        let expired = self.wire.expire(cutoff);
        self.printed.expire(cutoff);
        self.stats.unmatched_tc += expired.unmatched;
        self.stats.tc_outside_calls += expired.outside_calls;
        self.stats.tc_connection_level += expired.connection_level;
    }

    /// Removes the call `id`, takes its share of the wire, and makes its
    /// record.
    pub(super) fn emit(
        &mut self,
        id: CallId,
        share: WireShare,
        complete: bool,
        now_ns: i64,
    ) -> Option<CallRecord> {
        let mut call = self.calls.remove(id)?;
        self.printed.insert(id, now_ns);
        for (flow, request) in &call.identified {
            self.identified.remove(flow, request.time_ns, id);
        }
        for hop in &call.hops {
            for connection in hop.connections() {
                unindex(&mut self.awaiting_wire, &connection, id);
            }
        }
        let span = call_span(&call, &share);
        let mut identified: Vec<Option<(Flow, Packet)>> = std::mem::take(&mut call.identified)
            .into_iter()
            .map(Some)
            .collect();
        let hops = share
            .hops
            .into_iter()
            .zip(&call.hops)
            .map(|(hop_share, hop)| TakenHop {
                downstream: hop.downstream.map(|leg| {
                    self.take_leg(leg, hop_share.downstream, &mut identified, span, now_ns)
                }),
                upstream: hop.upstream.map(|leg| {
                    self.take_leg(leg, hop_share.upstream, &mut identified, span, now_ns)
                }),
            })
            .collect();
        let unassigned = share.unassigned.and_then(|(index, response)| {
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

    /// Takes what `share` gives `leg` of the wire (rules 5 to 7). The call
    /// ran over `span` (from, to), as far as its events tell.
    fn take_leg(
        &mut self,
        leg: Leg,
        share: LegShare,
        identified: &mut [Option<(Flow, Packet)>],
        span: (i64, i64),
        now_ns: i64,
    ) -> TakenLeg {
        let wire = match share {
            LegShare::Identified { index, response } => {
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
            LegShare::Exchange(exchange) => self.take_exchange(exchange, now_ns),
            LegShare::Connection { .. } => {
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
            LegShare::NoLeg | LegShare::NotSeen => TakenWire::None,
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

/// From when to when `call` ran, as far as its events tell: from its
/// earliest request on the wire or in a sidecar to the last byte a sidecar
/// sent back.
fn call_span(call: &PendingCall, share: &WireShare) -> (i64, i64) {
    let exchanges = share
        .hops
        .iter()
        .flat_map(|hop| [&hop.downstream, &hop.upstream])
        .filter_map(|leg| match leg {
            LegShare::Exchange(exchange) => Some(exchange.request.time_ns),
            _ => None,
        });
    let from = call
        .start_ns()
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

/// Removes the call `id` from the calls indexed under `key`.
fn unindex(index: &mut FxHashMap<Flow, Vec<CallId>>, key: &Flow, id: CallId) {
    if let Some(ids) = index.get_mut(key) {
        ids.retain(|indexed| *indexed != id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}
