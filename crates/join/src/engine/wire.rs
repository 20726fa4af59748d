//! What the TC program saw on the wire, indexed for the join: the starts of
//! requests and responses by flow (a connection in one direction), and the
//! retransmissions and resets of each connection.
//!
//! Each flow's message starts are kept in time order, so that finding the
//! request before a time, or the response after one, is a binary search
//! however many requests of a keep-alive connection wait for their access
//! logs. Expiry goes by arrival, through a queue, and costs nothing for what
//! a call already claimed.

use std::{collections::VecDeque, net::IpAddr};

use apitrace_proto::{Endpoint, TcEvent};
use rustc_hash::FxHashMap;

use super::CallId;

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

/// The start of a message (a request or a response) on a flow. Small, so
/// that a flow's queue is searched and shifted cheaply.
#[derive(Debug)]
pub(crate) struct MessageStart {
    pub time_ns: i64,
    id: u64,
    pub event: Box<TcEvent>,
}

/// A retransmission or a reset on a connection.
#[derive(Debug, Clone, Copy)]
struct Context {
    time_ns: i64,
    reset: bool,
    id: u64,
    /// A call on the connection had already been emitted when it arrived:
    /// unclaimed, it belongs to the connection's teardown (a retransmitted
    /// FIN) or came too late for its call.
    after_a_call: bool,
}

/// What the arrival queue tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// A message start or a context event, by id.
    Event(u64),
    /// A call on the connection claimed its wire events.
    Claim(Flow),
}

/// What [`WireIndex::expire`] forgot.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Expired {
    /// Message starts, and context on connections no call claimed from.
    pub unmatched: u64,
    /// Context that came after a call on its connection was emitted.
    pub after_a_call: u64,
}

#[derive(Debug, Default)]
pub(crate) struct WireIndex {
    /// Message starts by flow, in time order. Calls claim them mostly from
    /// the front.
    messages: FxHashMap<Flow, VecDeque<MessageStart>>,
    /// Retransmissions and resets by connection.
    context: FxHashMap<Flow, Vec<Context>>,
    /// Where each event not yet claimed is: its flow (a message start) or
    /// connection (context). What is not here was claimed.
    unclaimed: FxHashMap<u64, Flow>,
    /// Connections a call claimed wire events from, and when it last did.
    claimed: FxHashMap<Flow, i64>,
    /// What arrived when, for expiry.
    arrivals: VecDeque<(i64, Arrival)>,
    next_id: u64,
}

/// A request start chosen for a call, and where to find it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pick {
    pub flow: Flow,
    pub index: usize,
}

impl WireIndex {
    fn new_id(&mut self, at: Flow, arrival_ns: i64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.unclaimed.insert(id, at);
        self.arrivals.push_back((arrival_ns, Arrival::Event(id)));
        id
    }

    pub fn add_message(&mut self, flow: Flow, event: TcEvent, arrival_ns: i64) {
        let id = self.new_id(flow, arrival_ns);
        let messages = self.messages.entry(flow).or_default();
        let time_ns = event.time_unix_nano;
        // Usually the latest: a push.
        let at = messages.partition_point(|message| message.time_ns <= time_ns);
        messages.insert(
            at,
            MessageStart {
                time_ns,
                id,
                event: Box::new(event),
            },
        );
    }

    pub fn add_context(&mut self, flow: &Flow, time_ns: i64, reset: bool, arrival_ns: i64) {
        let connection = connection(flow);
        let id = self.new_id(connection, arrival_ns);
        let after_a_call = self.claimed.contains_key(&connection);
        self.context.entry(connection).or_default().push(Context {
            time_ns,
            reset,
            id,
            after_a_call,
        });
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
        let messages = self.messages.get(flow)?;
        let index = messages
            .partition_point(|message| message.time_ns <= limit)
            .checked_sub(1)?;
        let answered_before = self
            .find_response(flow, messages[index].time_ns, i64::MAX)
            .and_then(|pick| self.message(pick))
            .is_some_and(|response| response.time_ns < start_ns);
        (!answered_before).then_some(Pick { flow: *flow, index })
    }

    /// The first message the other side sent after the request that started
    /// on `request_flow` at `request_ns`, and no later than `until_ns`: the
    /// start of its response. The bound keeps a later exchange's response from
    /// being taken when this one's has not arrived.
    pub fn find_response(
        &self,
        request_flow: &Flow,
        request_ns: i64,
        until_ns: i64,
    ) -> Option<Pick> {
        let flow = reverse(request_flow);
        let messages = self.messages.get(&flow)?;
        let index = messages.partition_point(|message| message.time_ns < request_ns);
        let first = messages.get(index)?;
        (first.time_ns <= until_ns).then_some(Pick { flow, index })
    }

    /// Takes a message out of the index (a call claimed it).
    pub fn take(&mut self, pick: Pick) -> Option<TcEvent> {
        let messages = self.messages.get_mut(&pick.flow)?;
        let taken = messages.remove(pick.index)?;
        if messages.is_empty() {
            self.messages.remove(&pick.flow);
        }
        self.unclaimed.remove(&taken.id);
        Some(*taken.event)
    }

    /// Takes the retransmissions and resets of `flow`'s connection that
    /// happened from `from_ns` to before `until_ns`, for a call emitted at
    /// `now_ns`: (retransmits, resets).
    pub fn take_context(
        &mut self,
        flow: &Flow,
        from_ns: i64,
        until_ns: i64,
        now_ns: i64,
    ) -> (u32, u32) {
        let connection = connection(flow);
        self.claimed.insert(connection, now_ns);
        self.arrivals
            .push_back((now_ns, Arrival::Claim(connection)));
        let Some(events) = self.context.get_mut(&connection) else {
            return (0, 0);
        };
        let (mut retransmits, mut resets) = (0, 0);
        let unclaimed = &mut self.unclaimed;
        events.retain(|event| {
            let during = (from_ns..until_ns).contains(&event.time_ns);
            if during {
                if event.reset {
                    resets += 1;
                } else {
                    retransmits += 1;
                }
                unclaimed.remove(&event.id);
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
        let messages = self.messages.get(flow)?;
        let index = messages.partition_point(|message| message.time_ns <= after_ns);
        messages.get(index).map(|message| message.time_ns)
    }

    /// Forgets what arrived before `cutoff_ns` and nobody claimed.
    pub fn expire(&mut self, cutoff_ns: i64) -> Expired {
        let mut expired = Expired::default();
        while let Some(&(arrival, what)) = self.arrivals.front() {
            if arrival > cutoff_ns {
                break;
            }
            self.arrivals.pop_front();
            match what {
                Arrival::Event(id) => {
                    // Claimed events left no trace: only the rest costs a search.
                    if let Some(at) = self.unclaimed.remove(&id) {
                        self.forget(id, at, &mut expired);
                    }
                }
                Arrival::Claim(connection) => {
                    if self
                        .claimed
                        .get(&connection)
                        .is_some_and(|&at| at <= cutoff_ns)
                    {
                        self.claimed.remove(&connection);
                    }
                }
            }
        }
        expired
    }

    /// Removes the unclaimed event `id` from `at`, its flow or connection.
    fn forget(&mut self, id: u64, at: Flow, expired: &mut Expired) {
        if let Some(messages) = self.messages.get_mut(&at)
            && let Some(index) = messages.iter().position(|message| message.id == id)
        {
            messages.remove(index);
            if messages.is_empty() {
                self.messages.remove(&at);
            }
            expired.unmatched += 1;
        } else if let Some(events) = self.context.get_mut(&at)
            && let Some(index) = events.iter().position(|event| event.id == id)
        {
            if events.remove(index).after_a_call {
                expired.after_a_call += 1;
            } else {
                expired.unmatched += 1;
            }
            if events.is_empty() {
                self.context.remove(&at);
            }
        }
    }
}

/// The sidecar's plaintext requests to the app (with their `x-request-id`) of
/// the open calls, by flow, in time order. The sidecar pools its connections
/// to the app, so one carries many calls, one after the other.
#[derive(Debug, Default)]
pub(crate) struct UpstreamIndex {
    requests: FxHashMap<Flow, Vec<(i64, CallId)>>,
}

impl UpstreamIndex {
    pub fn add(&mut self, flow: Flow, time_ns: i64, id: CallId) {
        let requests = self.requests.entry(flow).or_default();
        let at = requests.partition_point(|(time, _)| *time <= time_ns);
        requests.insert(at, (time_ns, id));
    }

    pub fn remove(&mut self, flow: &Flow, time_ns: i64, request_id: &str) {
        let Some(requests) = self.requests.get_mut(flow) else {
            return;
        };
        let from = requests.partition_point(|(time, _)| *time < time_ns);
        if let Some(offset) = requests[from..]
            .iter()
            .take_while(|(time, _)| *time == time_ns)
            .position(|(_, id)| &**id == request_id)
        {
            requests.remove(from + offset);
        }
        if requests.is_empty() {
            self.requests.remove(flow);
        }
    }

    /// The call whose request on `flow` went last at or before `time_ns`: the
    /// one a response seen then answers.
    pub fn last_before(&self, flow: &Flow, time_ns: i64) -> Option<&CallId> {
        let requests = self.requests.get(flow)?;
        let index = requests
            .partition_point(|(time, _)| *time <= time_ns)
            .checked_sub(1)?;
        Some(&requests[index].1)
    }

    /// When the next request on `flow` after `time_ns` went.
    pub fn next_after(&self, flow: &Flow, time_ns: i64) -> Option<i64> {
        let requests = self.requests.get(flow)?;
        let index = requests.partition_point(|(time, _)| *time <= time_ns);
        requests.get(index).map(|(time, _)| *time)
    }
}
