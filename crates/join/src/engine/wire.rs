//! What the TC program saw on the wire, indexed for the join: the starts of
//! requests and responses by flow (a connection in one direction), and the
//! retransmissions and resets of each connection.

use std::{collections::VecDeque, net::IpAddr};

use apitrace_proto::{Endpoint, TcEvent};
use rustc_hash::FxHashMap;

/// A connection in one direction: source address and port, destination
/// address and port.
pub(crate) type Flow = (IpAddr, u32, IpAddr, u32);

pub(crate) fn flow(src: Option<&Endpoint>, dst: Option<&Endpoint>) -> Option<Flow> {
    let (src, dst) = (src?, dst?);
    Some((
        src.ip.parse().ok()?,
        src.port,
        dst.ip.parse().ok()?,
        dst.port,
    ))
}

pub(crate) fn reverse(flow: &Flow) -> Flow {
    (flow.2, flow.3, flow.0, flow.1)
}

/// The same connection, whichever direction it is seen from.
fn connection(flow: &Flow) -> Flow {
    let reversed = reverse(flow);
    if *flow <= reversed { *flow } else { reversed }
}

/// The start of a message (a request or a response) on a flow.
#[derive(Debug)]
pub(crate) struct MessageStart {
    pub event: TcEvent,
    pub arrival_ns: i64,
}

/// A retransmission or a reset on a connection.
#[derive(Debug, Clone, Copy)]
struct Context {
    time_ns: i64,
    reset: bool,
    arrival_ns: i64,
}

#[derive(Debug, Default)]
pub(crate) struct WireIndex {
    messages: FxHashMap<Flow, Vec<MessageStart>>,
    /// Retransmissions and resets by connection.
    context: FxHashMap<Flow, Vec<Context>>,
    /// What arrived when, for expiry: (arrival, flow or connection, is context).
    arrivals: VecDeque<(i64, Flow, bool)>,
}

/// A request start chosen for a call, and where to find it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pick {
    pub flow: Flow,
    pub index: usize,
}

impl WireIndex {
    pub fn add_message(&mut self, flow: Flow, event: TcEvent, arrival_ns: i64) {
        self.messages
            .entry(flow)
            .or_default()
            .push(MessageStart { event, arrival_ns });
        self.arrivals.push_back((arrival_ns, flow, false));
    }

    pub fn add_context(&mut self, flow: &Flow, time_ns: i64, reset: bool, arrival_ns: i64) {
        let connection = connection(flow);
        self.context.entry(connection).or_default().push(Context {
            time_ns,
            reset,
            arrival_ns,
        });
        self.arrivals.push_back((arrival_ns, connection, true));
    }

    pub fn message(&self, pick: Pick) -> Option<&MessageStart> {
        self.messages.get(&pick.flow)?.get(pick.index)
    }

    /// The request start on `flow` for a call the sidecar started at
    /// `start_ns`: the last one at or before it (within `tolerance_ns`), unless
    /// its response started before `start_ns`. Then that exchange ended before
    /// this call began: it was an earlier request's, and this call's request
    /// start has not arrived (events come in any order).
    pub fn find_request(&self, flow: &Flow, start_ns: i64, tolerance_ns: i64) -> Option<Pick> {
        let limit = start_ns.saturating_add(tolerance_ns);
        let (index, request) = self
            .messages
            .get(flow)?
            .iter()
            .enumerate()
            .filter(|(_, message)| message.event.time_unix_nano <= limit)
            .max_by_key(|(_, message)| message.event.time_unix_nano)?;
        let answered_before = self
            .find_response(&request.event, i64::MAX)
            .and_then(|pick| self.message(pick))
            .is_some_and(|response| response.event.time_unix_nano < start_ns);
        (!answered_before).then_some(Pick { flow: *flow, index })
    }

    /// The first message the other side sent after `request` and no later than
    /// `until_ns`: the start of its response. The bound keeps a later
    /// exchange's response from being taken when this one's has not arrived.
    pub fn find_response(&self, request: &TcEvent, until_ns: i64) -> Option<Pick> {
        let flow = reverse(&flow(request.src.as_ref(), request.dst.as_ref())?);
        let (index, _) = self
            .messages
            .get(&flow)?
            .iter()
            .enumerate()
            .filter(|(_, message)| {
                (request.time_unix_nano..=until_ns).contains(&message.event.time_unix_nano)
            })
            .min_by_key(|(_, message)| message.event.time_unix_nano)?;
        Some(Pick { flow, index })
    }

    /// Takes a message out of the index (a call claimed it).
    pub fn take(&mut self, pick: Pick) -> Option<TcEvent> {
        let messages = self.messages.get_mut(&pick.flow)?;
        if pick.index >= messages.len() {
            return None;
        }
        let taken = messages.swap_remove(pick.index).event;
        if messages.is_empty() {
            self.messages.remove(&pick.flow);
        }
        Some(taken)
    }

    /// Takes the retransmissions and resets of `flow`'s connection that
    /// happened from `from_ns` to before `until_ns`: (retransmits, resets).
    pub fn take_context(&mut self, flow: &Flow, from_ns: i64, until_ns: i64) -> (u32, u32) {
        let connection = connection(flow);
        let Some(events) = self.context.get_mut(&connection) else {
            return (0, 0);
        };
        let (mut retransmits, mut resets) = (0, 0);
        events.retain(|event| {
            let during = (from_ns..until_ns).contains(&event.time_ns);
            if during {
                if event.reset {
                    resets += 1;
                } else {
                    retransmits += 1;
                }
            }
            !during
        });
        if events.is_empty() {
            self.context.remove(&connection);
        }
        (retransmits, resets)
    }

    /// The next request start on `flow` after `after_ns`, if one arrived.
    pub fn next_request_after(&self, flow: &Flow, after_ns: i64) -> Option<i64> {
        self.messages
            .get(flow)?
            .iter()
            .map(|message| message.event.time_unix_nano)
            .filter(|&time| time > after_ns)
            .min()
    }

    /// Forgets what arrived before `cutoff_ns` and nobody claimed. Returns how
    /// many message starts and context events that was.
    pub fn expire(&mut self, cutoff_ns: i64) -> u64 {
        let mut expired = 0;
        while let Some(&(arrival, flow, is_context)) = self.arrivals.front() {
            if arrival > cutoff_ns {
                break;
            }
            self.arrivals.pop_front();
            if is_context {
                if let Some(events) = self.context.get_mut(&flow) {
                    let before = events.len();
                    events.retain(|event| event.arrival_ns > cutoff_ns);
                    expired += (before - events.len()) as u64;
                    if events.is_empty() {
                        self.context.remove(&flow);
                    }
                }
            } else if let Some(messages) = self.messages.get_mut(&flow) {
                let before = messages.len();
                messages.retain(|message| message.arrival_ns > cutoff_ns);
                expired += (before - messages.len()) as u64;
                if messages.is_empty() {
                    self.messages.remove(&flow);
                }
            }
        }
        expired
    }
}
