//! What an open call would take of the wire, found each time it is checked
//! for completeness: each leg's share (rules 3 to 6), and an identified
//! request no leg took.

use apitrace_proto::{Endpoint, TrafficDirection};
use smallvec::SmallVec;

use super::{
    Joiner, Part,
    calls::{CallId, PendingCall},
    flow::Flow,
    legs::Leg,
    wire::{Exchange, MessageRef, Packet, Speaks},
};

impl Joiner {
    /// The call `id` with its share of the wire, if it has every part its
    /// session expects.
    pub(super) fn completed(&self, id: CallId) -> Option<(CallId, WireShare)> {
        let call = self.calls.get(id)?;
        // Most calls checked still miss a part that costs no search to see.
        if !self.has_every_part(call, None) || !self.has_every_hop(call) {
            return None;
        }
        let share = self.wire_share(call);
        self.has_every_part(call, Some(&share))
            .then_some((id, share))
    }

    /// Whether `call` has each part its session expects. Without `share`
    /// (the wire not searched yet), a wire part counts if the call has what
    /// the search needs.
    pub(super) fn has_every_part(&self, call: &PendingCall, share: Option<&WireShare>) -> bool {
        self.config.expect.iter().all(|&part| match part {
            Part::AccessLog => !call.access_logs.is_empty(),
            // Each sidecar that logged the call ran the filter too.
            Part::Wasm => call.wasm.len() >= call.access_logs.len().max(1),
            Part::Wire | Part::Upstream => match share {
                None => !call.access_logs.is_empty(),
                Some(share) => share.hops.iter().all(|hop| {
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
    pub(super) fn wire_share(&self, call: &PendingCall) -> WireShare {
        let mut assigned = Assigned::default();
        let hops = call
            .hops
            .iter()
            .zip(&call.access_logs)
            .map(|(hop, log)| {
                let mut share_of = |leg: Option<&Leg>, http1: bool| match leg {
                    None => LegShare::NoLeg,
                    Some(leg) => self.leg_share(call, leg, &log.method, http1, &mut assigned),
                };
                HopShare {
                    downstream: share_of(hop.downstream.as_ref(), hop.downstream_http1),
                    upstream: share_of(hop.upstream.as_ref(), true),
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
        WireShare { hops, unassigned }
    }

    /// What `leg` of `call` takes of the wire (rules 3 to 6).
    fn leg_share(
        &self,
        call: &PendingCall,
        leg: &Leg,
        method: &str,
        http1: bool,
        assigned: &mut Assigned,
    ) -> LegShare {
        let identified = call
            .identified
            .iter()
            .enumerate()
            .find(|(index, (flow, _))| !assigned.has(*index) && *flow == leg.request);
        if let Some((index, (flow, packet))) = identified {
            assigned.take(index);
            let response = self.identified_response(flow, packet);
            return LegShare::Identified { index, response };
        }
        let speaks = self.wire.speaks(leg);
        let opaque = speaks == Some(Speaks::Opaque);
        if http1
            && !opaque
            && let Some(exchange) =
                self.wire
                    .find_exchange(leg, method, self.config.wire_tolerance_ns)
        {
            return LegShare::Exchange(exchange);
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
            return LegShare::Connection { settled: !waits };
        }
        LegShare::NotSeen
    }

    /// The response to the identified request `request` on `flow` (rule 5):
    /// on an h2c stream, its stream's response; otherwise the first message
    /// after it, bounded by the next request on the flow, identified or not.
    fn identified_response(&self, flow: &Flow, request: &Packet) -> Option<IdentifiedResponse> {
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
    pub(super) fn has_every_hop(&self, call: &PendingCall) -> bool {
        let logged = |wanted: TrafficDirection| {
            call.hops
                .iter()
                .zip(&call.access_logs)
                .find(|(hop, _)| hop.direction == wanted)
                .map(|(_, log)| log)
        };
        let traced = |endpoint: Option<&Endpoint>, at: i64| {
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

    /// Which expected parts a partial call lacks: the access log, the WASM
    /// event, the wire's downstream and upstream legs, in that order.
    pub(super) fn missing(&self, call: &PendingCall, share: &WireShare) -> [bool; 4] {
        let expects = |part| self.config.expect.contains(&part);
        let unsettled = |downstream: bool| {
            call.access_logs.is_empty()
                || share.hops.iter().any(|hop| {
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
pub(super) struct WireShare {
    /// One per hop, in the call's order: one or two, kept in place.
    pub hops: SmallVec<[HopShare; 2]>,
    /// The first identified request no leg took, and its response.
    pub unassigned: Option<(usize, Option<IdentifiedResponse>)>,
}

/// What a hop's two legs take of the wire.
#[derive(Debug)]
pub(super) struct HopShare {
    pub downstream: LegShare,
    pub upstream: LegShare,
}

/// What a leg takes of the wire.
#[derive(Debug, Clone, Copy)]
pub(super) enum LegShare {
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

impl LegShare {
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
pub(super) struct IdentifiedResponse {
    pub response: MessageRef,
    pub until: i64,
}
