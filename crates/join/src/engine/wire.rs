//! What the TC program saw on the wire, indexed for the join: the starts of
//! messages by flow, what is known of each connection (its first packet, what
//! it speaks), and its retransmissions and resets.
//!
//! Each flow's message starts are kept in time order, so that finding the
//! request before a time, or the response after one, is a search however many
//! requests of a keep-alive connection wait for their access logs. A message a
//! call claims is named by a [`MessageRef`], which stays valid however the
//! queue moves, and leaves the index when the call is emitted; what is left when
//! it expires is what no call claimed.

use std::{collections::VecDeque, sync::Arc};

use apitrace_proto::{HttpHead, PayloadKind, TcEvent, http_head::StartLine};
use rustc_hash::FxHashMap;

use super::{flow::Flow, legs::Leg, prefetch, texts::Texts};

/// A message start as the join keeps it: what a record shows of the packet.
/// Its addresses are its flow's, and its interface name is shared, so the
/// event's own strings for them are freed as it arrives. Its HTTP head is
/// kept apart, so that a packet fits in one cache line of its flow's queue.
#[derive(Debug)]
pub(crate) struct Packet {
    pub time_ns: i64,
    pub ip_id: u32,
    pub tcp_seq: u32,
    pub payload_len: u32,
    /// The HTTP/2 stream whose first HEADERS frame on its side starts in the
    /// packet, on an h2c connection the probe followed; 0 otherwise.
    pub http2_stream: u32,
    pub interface: Arc<str>,
    /// The HTTP head, where the packet was plaintext HTTP/1, or the header
    /// block of an h2c stream's HEADERS frame.
    pub head: Option<Box<Head>>,
}

/// What a record shows of a packet's HTTP head, reduced as it arrives (see
/// [`Texts`]). A head whose start line was not captured shows nothing and is
/// not kept.
#[derive(Debug)]
pub(crate) enum Head {
    /// The method, the path, the version and the `x-request-id`, in that
    /// order.
    Request(Texts<4>),
    /// A status line's status; the record shows nothing else of it.
    Response(u32),
}

/// Where a request's `x-request-id` is in its [`Head`]'s texts.
const REQUEST_ID: usize = 3;

impl Head {
    fn new(head: HttpHead) -> Option<Self> {
        Some(match head.start_line? {
            StartLine::Request(line) => Self::Request(Texts::new([
                &line.method,
                &line.path,
                &line.version,
                &head.request_id,
            ])),
            StartLine::Response(line) => Self::Response(line.status),
        })
    }

    pub fn prefetch_texts(&self) {
        if let Self::Request(texts) = self {
            texts.prefetch();
        }
    }

    /// The method, the path and the version, if the head is a request's.
    pub fn request_line(&self) -> Option<[&str; 3]> {
        match self {
            Self::Request(texts) => Some([0, 1, 2].map(|field| texts.get(field))),
            Self::Response(_) => None,
        }
    }

    /// The `x-request-id`, if the head is a request's and has one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Request(texts) => Some(texts.get(REQUEST_ID)).filter(|id| !id.is_empty()),
            Self::Response(_) => None,
        }
    }

    /// The status, if the head is a response's.
    pub fn status(&self) -> Option<u32> {
        match self {
            Self::Response(status) => Some(*status),
            Self::Request(_) => None,
        }
    }
}

impl Packet {
    /// The request line's method, if the packet starts an HTTP/1 request.
    pub fn method(&self) -> Option<&str> {
        Some(self.head.as_ref()?.request_line()?[0])
    }
}

/// The interface names seen, each kept once: a pod has a few (`eth0`, `lo`)
/// and every pod's are named alike.
#[derive(Debug, Default)]
pub(crate) struct InterfaceNames {
    names: Vec<Arc<str>>,
}

impl InterfaceNames {
    /// Names kept at most; a name past them is not shared.
    const CAPACITY: usize = 32;

    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(known) = self.names.iter().find(|known| ***known == *name) {
            return Arc::clone(known);
        }
        let name = Arc::<str>::from(name);
        if self.names.len() < Self::CAPACITY {
            self.names.push(Arc::clone(&name));
        }
        name
    }

    /// What the join keeps of `event`.
    pub fn packet(&mut self, event: TcEvent) -> Packet {
        Packet {
            time_ns: event.time_unix_nano,
            ip_id: event.ip_id,
            tcp_seq: event.tcp_seq,
            payload_len: event.payload_len,
            http2_stream: event.http2_stream,
            interface: self.get(&event.interface),
            head: event.http.and_then(Head::new).map(Box::new),
        }
    }
}

/// The index of the first entry of `queue` that `is_before` is false for
/// (`queue` is partitioned by it), searched from the front. Calls claim a
/// flow's messages mostly oldest first, so the answer is mostly one of the
/// first entries: an exponential search from the front reads those while they
/// are in the cache, where a binary search starts in the cold middle of a
/// queue holding a second of traffic. At worst it reads twice as many.
pub(crate) fn partition_point_from_front<T>(
    queue: &VecDeque<T>,
    mut is_before: impl FnMut(&T) -> bool,
) -> usize {
    let (mut low, mut probe) = (0, 0);
    while probe < queue.len() && is_before(&queue[probe]) {
        low = probe + 1;
        probe = 2 * probe + 1;
    }
    let mut high = probe.min(queue.len());
    while low < high {
        let middle = low + (high - low) / 2;
        if is_before(&queue[middle]) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low
}

/// The start of a message (a request or a response) on a flow: one cache
/// line, kept in its flow's queue.
#[derive(Debug)]
struct MessageStart {
    time_ns: i64,
    arrival_ns: i64,
    /// Which message it is: a number no other has.
    serial: u64,
    packet: Packet,
}

/// A message start a call chose, by what never changes about it: its flow,
/// its time and its serial number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MessageRef {
    pub flow: Flow,
    pub time_ns: i64,
    serial: u64,
}

/// A retransmission or a reset on a connection.
#[derive(Debug, Clone, Copy)]
struct Context {
    time_ns: i64,
    arrival_ns: i64,
    reset: bool,
    /// A call had claimed from the connection when it arrived.
    after_a_claim: bool,
    /// A call showed it at the connection's level (rule 6): not lost.
    shown: bool,
}

/// What a connection speaks, as its message starts show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Speaks {
    #[default]
    Unknown,
    /// HTTP/1 request and status lines.
    Http1,
    /// TLS records or HTTP/2 frames: the wire cannot tell one call's bytes
    /// from another's.
    Opaque,
}

/// What is known of a connection as one pod saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectionInfo {
    /// Its first packet (the SYN), when the session saw it open.
    pub opened: Option<FirstPacket>,
    /// When the other side accepted it (the SYN+ACK).
    pub accepted_ns: Option<i64>,
    pub speaks: Speaks,
    /// When the earliest message that told what it speaks was sent.
    speaks_since_ns: Option<i64>,
    /// Whether it was TLS, when `speaks` is opaque.
    pub tls: bool,
    /// Whether its HTTP/2 streams' requests carry request ids the probe read
    /// (a sidecar sent them, in plaintext): a call on it waits for its own
    /// stream rather than take the connection.
    pub streams_carry_ids: bool,
    /// The interface that saw it.
    pub interface: Option<Arc<str>>,
    /// When its last event arrived.
    last_arrival_ns: i64,
}

/// A connection's SYN.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FirstPacket {
    pub time_ns: i64,
    pub ip_id: u32,
    pub tcp_seq: u32,
}

impl ConnectionInfo {
    /// Both halves of a connection the pod's iptables redirected are known
    /// under their own keys (see [`super::legs::HopLegs::of`]): what each knows.
    fn merge(self, other: Self) -> Self {
        let speaks = match (self.speaks, other.speaks) {
            (Speaks::Opaque, _) | (_, Speaks::Opaque) => Speaks::Opaque,
            (Speaks::Http1, _) | (_, Speaks::Http1) => Speaks::Http1,
            _ => Speaks::Unknown,
        };
        Self {
            opened: self.opened.or(other.opened),
            accepted_ns: self.accepted_ns.or(other.accepted_ns),
            speaks,
            speaks_since_ns: match (self.speaks_since_ns, other.speaks_since_ns) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            tls: self.tls || other.tls,
            streams_carry_ids: self.streams_carry_ids || other.streams_carry_ids,
            interface: self.interface.or(other.interface),
            last_arrival_ns: self.last_arrival_ns.max(other.last_arrival_ns),
        }
    }
}

/// What [`WireIndex::expire`] forgot.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Expired {
    /// Message starts, and context on connections no call claimed from.
    pub unmatched: u64,
    /// Context no call showed, on a connection calls used: between its
    /// calls or after them (its teardown).
    pub outside_calls: u64,
    /// Message starts on encrypted or multiplexed connections that calls
    /// were given at the connection's level.
    pub connection_level: u64,
}

/// Expiry sweeps the index, and does not queue each arrival: what a call
/// claimed has left it already, so what a sweep finds old is what nobody
/// claimed. A queue would hold an entry per event for two windows, and cost a
/// write and a read from memory per event.
#[derive(Debug)]
pub(crate) struct WireIndex {
    /// Message starts by flow, in time order. Calls claim them mostly from
    /// the front.
    messages: FxHashMap<Flow, VecDeque<MessageStart>>,
    /// The serial number of the next message start.
    next_serial: u64,
    /// What is known of each connection, by [`Flow::connection`].
    connections: FxHashMap<Flow, ConnectionInfo>,
    /// Retransmissions and resets by connection.
    context: FxHashMap<Flow, Vec<Context>>,
    /// Connections a call claimed wire events from, and when it last did.
    claimed: FxHashMap<Flow, i64>,
    /// How far apart sweeps are, at least, in arrival time.
    sweep_every_ns: i64,
    /// The earliest cutoff the next sweep runs at.
    next_sweep_ns: i64,
}

/// A request start on a leg and the start of its response (rule 4).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    pub request: MessageRef,
    pub response: Option<MessageRef>,
    /// When the connection's next request started: the end of the call's
    /// share of the connection's retransmissions and resets.
    pub next_request_ns: i64,
}

impl WireIndex {
    /// An index that sweeps what expired at most every `sweep_every_ns`: an
    /// event is forgotten that long after its cutoff, at most.
    pub fn new(sweep_every_ns: i64) -> Self {
        Self {
            messages: FxHashMap::default(),
            next_serial: 0,
            connections: FxHashMap::default(),
            context: FxHashMap::default(),
            claimed: FxHashMap::default(),
            sweep_every_ns,
            next_sweep_ns: i64::MIN,
        }
    }

    /// Files a message start, and learns from it what its connection speaks.
    pub fn add_message(
        &mut self,
        flow: Flow,
        packet: Packet,
        payload: PayloadKind,
        arrival_ns: i64,
    ) {
        let connection = self.connections.entry(flow.connection()).or_default();
        connection.last_arrival_ns = arrival_ns;
        if connection.interface.is_none() {
            connection.interface = Some(Arc::clone(&packet.interface));
        }
        let speaks = match payload {
            PayloadKind::Http1 => Speaks::Http1,
            PayloadKind::Tls | PayloadKind::Http2 => Speaks::Opaque,
            _ => Speaks::Unknown,
        };
        // What a connection speaks is learnt once; an opaque message is
        // proof enough that nothing on it can be read per call.
        if speaks != Speaks::Unknown
            && (speaks == Speaks::Opaque || connection.speaks == Speaks::Unknown)
        {
            connection.speaks = speaks;
            connection.tls |= payload == PayloadKind::Tls;
            connection.speaks_since_ns = Some(
                connection
                    .speaks_since_ns
                    .map_or(packet.time_ns, |since| since.min(packet.time_ns)),
            );
        }
        let messages = self.messages.entry(flow).or_default();
        let time_ns = packet.time_ns;
        let message = MessageStart {
            time_ns,
            arrival_ns,
            serial: self.next_serial,
            packet,
        };
        self.next_serial += 1;
        // Usually the latest: a push, without searching a queue that has not
        // been touched since the connection's previous message.
        if messages.back().is_none_or(|last| last.time_ns <= time_ns) {
            messages.push_back(message);
        } else {
            let at = messages.partition_point(|message| message.time_ns <= time_ns);
            messages.insert(at, message);
        }
    }

    /// Learns from an identified request on an h2c stream of `flow` (which
    /// goes to its call, not into the index) that the connection speaks
    /// HTTP/2 and that its streams carry request ids.
    pub fn add_identified_stream(&mut self, flow: &Flow, packet: &Packet, arrival_ns: i64) {
        let connection = self.connections.entry(flow.connection()).or_default();
        connection.last_arrival_ns = arrival_ns;
        if connection.interface.is_none() {
            connection.interface = Some(Arc::clone(&packet.interface));
        }
        connection.speaks = Speaks::Opaque;
        connection.streams_carry_ids = true;
        connection.speaks_since_ns = Some(
            connection
                .speaks_since_ns
                .map_or(packet.time_ns, |since| since.min(packet.time_ns)),
        );
    }

    /// A SYN (`accepted` false) or a SYN+ACK on `flow`, seen on `interface`.
    pub fn add_handshake(
        &mut self,
        flow: &Flow,
        packet: &TcEvent,
        interface: Arc<str>,
        accepted: bool,
        arrival_ns: i64,
    ) {
        let connection = self.connections.entry(flow.connection()).or_default();
        connection.last_arrival_ns = arrival_ns;
        connection.interface = Some(interface);
        if accepted {
            connection.accepted_ns = Some(packet.time_unix_nano);
        } else {
            let opened_ns = packet.time_unix_nano;
            // A new connection on this tuple: what an earlier one spoke is
            // not what this one will. What was learnt after the SYN is this
            // connection's, whichever arrived first.
            if connection
                .speaks_since_ns
                .is_some_and(|since| since < opened_ns)
            {
                connection.speaks = Speaks::Unknown;
                connection.tls = false;
                connection.streams_carry_ids = false;
                connection.speaks_since_ns = None;
            }
            connection.accepted_ns = connection
                .accepted_ns
                .filter(|&accepted| accepted >= opened_ns);
            connection.opened = Some(FirstPacket {
                time_ns: opened_ns,
                ip_id: packet.ip_id,
                tcp_seq: packet.tcp_seq,
            });
        }
    }

    /// Fetches the front of `flow`'s queue into the cache, for the batch's
    /// read-ahead.
    pub fn prefetch_front(&self, flow: &Flow) {
        prefetch::front(self.messages.get(flow));
    }

    pub fn add_context(&mut self, flow: &Flow, time_ns: i64, reset: bool, arrival_ns: i64) {
        let connection = flow.connection();
        let after_a_claim = self.claimed.contains_key(&connection);
        self.context.entry(connection).or_default().push(Context {
            time_ns,
            arrival_ns,
            reset,
            after_a_claim,
            shown: false,
        });
    }

    /// What `leg`'s connection speaks, if the session has seen it.
    pub fn speaks(&self, leg: &Leg) -> Option<Speaks> {
        let get = |flow: &Flow| {
            self.connections
                .get(&flow.connection())
                .map(|info| info.speaks)
        };
        match (get(&leg.request), get(&leg.response)) {
            (Some(Speaks::Opaque), _) | (_, Some(Speaks::Opaque)) => Some(Speaks::Opaque),
            (Some(a), Some(b)) => Some(if a == Speaks::Unknown { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// What is known of `leg`'s connection.
    pub fn connection(&self, leg: &Leg) -> Option<ConnectionInfo> {
        let get = |flow: &Flow| self.connections.get(&flow.connection()).cloned();
        match (get(&leg.request), get(&leg.response)) {
            (Some(a), Some(b)) if leg.request.connection() != leg.response.connection() => {
                Some(a.merge(b))
            }
            (Some(a), _) => Some(a),
            (None, b) => b,
        }
    }

    /// The exchange of a call on `leg` (rule 4): the last request start on
    /// the leg's request flow at or before the sidecar read it (within
    /// `tolerance_ns`), if it is an HTTP/1 request with the call's `method`
    /// (or, for a call the sidecar logged without one, not HTTP either) and
    /// its response did not start before the sidecar read the request.
    /// Otherwise that exchange ended before this call began (it was an
    /// earlier request's, and this call's request start has not arrived:
    /// events come in any order), or it is not this call's request.
    pub fn find_exchange(&self, leg: &Leg, method: &str, tolerance_ns: i64) -> Option<Exchange> {
        let limit = leg.at_ns.saturating_add(tolerance_ns);
        let messages = self.messages.get(&leg.request)?;
        let index = partition_point_from_front(messages, |message| message.time_ns <= limit)
            .checked_sub(1)?;
        let request = &messages[index];
        // A request the sidecar could not read (it logged no method) is not
        // one the probe could read either.
        let is_the_calls = match request.packet.method() {
            Some(seen) => method.is_empty() || seen == method,
            None => method.is_empty(),
        };
        if !is_the_calls {
            return None;
        }
        let request_ns = request.time_ns;
        let reply = self.first_after(&leg.response, request_ns);
        if reply.is_some_and(|reply| reply.time_ns < leg.at_ns) {
            return None;
        }
        // HTTP/1.1 on one connection answers a request before the next one is
        // sent, so the response starts before the connection's next request;
        // a timing from the sidecar would not do as the bound, since the
        // sidecar's and the kernel's clocks are converted separately.
        let next_request_ns = messages
            .range(index + 1..)
            .map(|message| message.time_ns)
            .find(|&time_ns| time_ns > request_ns)
            .unwrap_or(i64::MAX);
        Some(Exchange {
            request: MessageRef {
                flow: leg.request,
                time_ns: request_ns,
                serial: request.serial,
            },
            response: reply.filter(|reply| reply.time_ns <= next_request_ns),
            next_request_ns,
        })
    }

    /// The first message start on `flow` at or after `time_ns`.
    fn first_after(&self, flow: &Flow, time_ns: i64) -> Option<MessageRef> {
        let messages = self.messages.get(flow)?;
        let index = partition_point_from_front(messages, |message| message.time_ns < time_ns);
        let first = messages.get(index)?;
        Some(MessageRef {
            flow: *flow,
            time_ns: first.time_ns,
            serial: first.serial,
        })
    }

    /// The first message on `response_flow` after a request that started at
    /// `request_ns`, and no later than `until_ns`: the start of its response
    /// (rule 5). The bound keeps a later exchange's response from being taken
    /// when this one's has not arrived.
    pub fn find_response(
        &self,
        response_flow: &Flow,
        request_ns: i64,
        until_ns: i64,
    ) -> Option<MessageRef> {
        self.first_after(response_flow, request_ns)
            .filter(|first| first.time_ns <= until_ns)
    }

    /// The start of stream `stream`'s response on `response_flow`, after its
    /// request started at `request_ns`: on an h2c connection the probe
    /// followed, each stream's first HEADERS frame from the server is an
    /// event of its own, named by the stream (rule 5).
    pub fn find_stream_response(
        &self,
        response_flow: &Flow,
        request_ns: i64,
        stream: u32,
    ) -> Option<MessageRef> {
        let messages = self.messages.get(response_flow)?;
        let from = partition_point_from_front(messages, |message| message.time_ns < request_ns);
        messages
            .range(from..)
            .find(|message| message.packet.http2_stream == stream)
            .map(|message| MessageRef {
                flow: *response_flow,
                time_ns: message.time_ns,
                serial: message.serial,
            })
    }

    /// When the first message on `flow` after `time_ns` started.
    pub fn next_after(&self, flow: &Flow, time_ns: i64) -> Option<i64> {
        let messages = self.messages.get(flow)?;
        let index = partition_point_from_front(messages, |message| message.time_ns <= time_ns);
        messages.get(index).map(|message| message.time_ns)
    }

    /// Takes a message out of the index (a call claimed it).
    pub fn take(&mut self, message: MessageRef) -> Option<Packet> {
        let messages = self.messages.get_mut(&message.flow)?;
        let from = partition_point_from_front(messages, |queued| queued.time_ns < message.time_ns);
        let offset = messages
            .range(from..)
            .take_while(|queued| queued.time_ns == message.time_ns)
            .position(|queued| queued.serial == message.serial)?;
        let taken = messages.remove(from + offset)?;
        if messages.is_empty() {
            self.messages.remove(&message.flow);
        }
        Some(taken.packet)
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
        let connection = flow.connection();
        self.claimed.insert(connection, now_ns);
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

    /// The retransmissions and resets of `leg`'s connection from `from_ns` to
    /// `until_ns`, left for the other calls on it: on an encrypted or
    /// multiplexed connection, what the wire saw while a call ran may be
    /// another call's too (rule 6).
    pub fn count_context(
        &mut self,
        leg: &Leg,
        from_ns: i64,
        until_ns: i64,
        now_ns: i64,
    ) -> (u32, u32) {
        let mut connections = [leg.request.connection(), leg.response.connection()];
        let distinct = if connections[0] == connections[1] {
            1
        } else {
            2
        };
        let (mut retransmits, mut resets) = (0, 0);
        for connection in &mut connections[..distinct] {
            self.claimed.insert(*connection, now_ns);
            for event in self.context.get_mut(connection).into_iter().flatten() {
                if (from_ns..=until_ns).contains(&event.time_ns) {
                    event.shown = true;
                    if event.reset {
                        resets += 1;
                    } else {
                        retransmits += 1;
                    }
                }
            }
        }
        (retransmits, resets)
    }

    /// Forgets what arrived at or before `cutoff_ns` and nobody claimed, if a
    /// sweep is due.
    pub fn expire(&mut self, cutoff_ns: i64) -> Expired {
        let mut expired = Expired::default();
        if cutoff_ns < self.next_sweep_ns {
            return expired;
        }
        self.next_sweep_ns = cutoff_ns.saturating_add(self.sweep_every_ns);
        let connections = &self.connections;
        // A flow's queue is in time order, which is arrival order but for
        // events arriving out of order (from several probes): a message that
        // arrives late with an earlier time goes in front of earlier
        // arrivals, which then wait for it to expire, by as long as it came
        // after them. Reading only the fronts keeps a sweep from reading
        // every message held.
        self.messages.retain(|flow, messages| {
            let opaque = connections
                .get(&flow.connection())
                .is_some_and(|connection| connection.speaks == Speaks::Opaque);
            while messages
                .front()
                .is_some_and(|message| message.arrival_ns <= cutoff_ns)
            {
                messages.pop_front();
                if opaque {
                    expired.connection_level += 1;
                } else {
                    expired.unmatched += 1;
                }
            }
            !messages.is_empty()
        });
        // Whether calls used the connection is asked when the event arrived
        // and again when it is forgotten: a retransmission between two calls
        // on a pooled connection arrives before the call it follows is
        // emitted (the access log comes a flush later), and is no less
        // outside every call; a claim is forgotten a sweep after it was
        // made, before a teardown's late retransmission is.
        let claimed = &self.claimed;
        self.context.retain(|connection, events| {
            let used = claimed.contains_key(connection);
            events.retain(|event| {
                let old = event.arrival_ns <= cutoff_ns;
                if old && event.shown {
                    // Some call's record has it.
                } else if old && (used || event.after_a_claim) {
                    expired.outside_calls += 1;
                } else if old {
                    expired.unmatched += 1;
                }
                !old
            });
            !events.is_empty()
        });
        self.claimed.retain(|_, at| *at > cutoff_ns);
        self.connections
            .retain(|_, connection| connection.last_arrival_ns > cutoff_ns);
        expired
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use apitrace_proto::{RequestLine, StatusLine};

    use super::{super::flow::PodIx, *};

    #[test]
    fn a_reduced_response_head_keeps_its_status_and_no_request_line() {
        let head = Head::new(HttpHead {
            start_line: Some(StartLine::Response(StatusLine {
                version: "HTTP/1.1".into(),
                status: 503,
            })),
            request_id: "late-id".into(),
            authority: "orders".into(),
        })
        .unwrap();
        assert_eq!(head.status(), Some(503));
        assert_eq!(head.request_line(), None);
        assert_eq!(head.request_id(), None, "a response is not filed by id");
    }

    #[test]
    fn a_head_captured_past_its_start_line_gives_nothing() {
        let head = Head::new(HttpHead {
            request_id: "req-1".into(),
            ..HttpHead::default()
        });
        let head = head.as_ref();
        assert_eq!(
            (
                head.and_then(Head::status),
                head.and_then(Head::request_line),
                head.and_then(Head::request_id)
            ),
            (None, None, None)
        );
    }

    const SWEEP_EVERY: i64 = 10;

    fn test_flow(port: u16) -> Flow {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        Flow {
            pod: PodIx::default(),
            src: ip,
            src_port: port,
            dst: ip,
            dst_port: 80,
        }
    }

    fn packet_at(time_ns: i64) -> Packet {
        Packet {
            time_ns,
            ip_id: 0,
            tcp_seq: 0,
            payload_len: 0,
            http2_stream: 0,
            interface: Arc::from("eth0"),
            head: None,
        }
    }

    /// Sweeps at each cutoff from 0 to 60: at which cutoffs something was
    /// forgotten, and what.
    fn sweep_every_cutoff(index: &mut WireIndex) -> Vec<(i64, Expired)> {
        (0..=60)
            .map(|cutoff| (cutoff, index.expire(cutoff)))
            .filter(|(_, expired)| *expired != Expired::default())
            .collect()
    }

    #[test]
    fn an_unclaimed_message_is_forgotten_within_a_sweep_of_its_cutoff() {
        let mut index = WireIndex::new(SWEEP_EVERY);
        index.add_message(test_flow(1), packet_at(100), PayloadKind::Other, 5);
        // Claimed: never counted.
        index.add_message(test_flow(2), packet_at(100), PayloadKind::Other, 7);
        let claimed = index.find_response(&test_flow(2), 0, i64::MAX);
        assert!(index.take(claimed.unwrap()).is_some());
        let forgotten = sweep_every_cutoff(&mut index);
        let [(at, expired)] = &forgotten[..] else {
            panic!("forgotten once, not {forgotten:?}");
        };
        assert!((5..=5 + SWEEP_EVERY).contains(at), "{at}");
        assert_eq!((expired.unmatched, expired.outside_calls), (1, 0));
    }

    /// Context no call showed is counted apart when calls used its
    /// connection, whether it came before the claim (between two calls of
    /// a pooled connection, the earlier not yet emitted) or after it.
    #[test]
    fn context_outside_the_calls_of_a_used_connection_is_counted_apart() {
        let mut index = WireIndex::new(SWEEP_EVERY);
        let flow = test_flow(1);
        index.add_context(&flow, 500, false, 3);
        assert_eq!(index.take_context(&flow, 0, 100, 4), (0, 0));
        index.add_context(&flow.reverse(), 600, true, 20);
        // A connection no call used.
        index.add_context(&test_flow(2), 500, false, 3);
        let forgotten = sweep_every_cutoff(&mut index);
        let total = forgotten
            .iter()
            .fold((0, 0), |(unmatched, outside), (_, expired)| {
                (
                    unmatched + expired.unmatched,
                    outside + expired.outside_calls,
                )
            });
        assert_eq!(total, (1, 2), "{forgotten:?}");
        assert!(forgotten.iter().all(|(at, _)| *at >= 3), "{forgotten:?}");
    }

    /// A message that arrives late with an earlier time goes before the
    /// flow's queued ones: those wait behind it, and go when it does.
    #[test]
    fn a_message_waiting_behind_a_later_arrival_goes_with_it() {
        let mut index = WireIndex::new(SWEEP_EVERY);
        let flow = test_flow(1);
        index.add_message(flow, packet_at(200), PayloadKind::Other, 2);
        index.add_message(flow, packet_at(100), PayloadKind::Other, 30);
        let forgotten = sweep_every_cutoff(&mut index);
        let [(at, expired)] = &forgotten[..] else {
            panic!("forgotten together, not {forgotten:?}");
        };
        assert!((30..=30 + SWEEP_EVERY).contains(at), "{at}");
        assert_eq!(expired.unmatched, 2);
    }

    /// A message a call chose stays the one it chose when others are taken
    /// from its queue first.
    #[test]
    fn a_chosen_message_is_taken_whatever_left_its_queue_before() {
        let mut index = WireIndex::new(SWEEP_EVERY);
        let flow = test_flow(1);
        for time in [100, 200, 300] {
            index.add_message(flow, packet_at(time), PayloadKind::Other, 1);
        }
        let third = index.find_response(&flow, 250, i64::MAX).unwrap();
        let first = index.find_response(&flow, 0, i64::MAX).unwrap();
        assert_eq!(index.take(first).map(|packet| packet.time_ns), Some(100));
        assert_eq!(index.take(third).map(|packet| packet.time_ns), Some(300));
        assert!(index.take(third).is_none(), "taken once");
    }

    /// What nobody could take at request level on a TLS connection is not
    /// lost: it is counted apart.
    #[test]
    fn messages_of_opaque_connections_expire_as_connection_level() {
        let mut index = WireIndex::new(SWEEP_EVERY);
        index.add_message(test_flow(1), packet_at(100), PayloadKind::Tls, 1);
        index.add_message(
            test_flow(1).reverse(),
            packet_at(150),
            PayloadKind::Other,
            1,
        );
        index.add_message(test_flow(2), packet_at(100), PayloadKind::Http1, 1);
        let expired = index.expire(60);
        assert_eq!((expired.connection_level, expired.unmatched), (2, 1));
    }

    proptest::proptest! {
        /// A reduced request head gives back each field whole, whatever
        /// their lengths and characters.
        #[test]
        fn a_reduced_request_head_gives_back_each_field(
            method in ".{0,8}",
            path in ".{0,40}",
            version in ".{0,9}",
            request_id in ".{0,40}",
        ) {
            let head = Head::new(HttpHead {
                start_line: Some(StartLine::Request(RequestLine {
                    method: method.clone(),
                    path: path.clone(),
                    version: version.clone(),
                })),
                request_id: request_id.clone(),
                authority: "orders".into(),
            })
            .unwrap();
            proptest::prop_assert_eq!(
                head.request_line(),
                Some([method.as_str(), path.as_str(), version.as_str()])
            );
            proptest::prop_assert_eq!(
                head.request_id(),
                Some(request_id.as_str()).filter(|id| !id.is_empty())
            );
            proptest::prop_assert_eq!(head.status(), None);
        }

        /// The search from the front finds what a binary search finds, at
        /// every threshold, whatever the queue's length and duplicates.
        #[test]
        fn searching_from_the_front_finds_the_partition_point(
            mut times in proptest::collection::vec(0..64_i64, 0..300),
            threshold in -1..66_i64,
            rotate in 0..300_usize,
        ) {
            times.sort_unstable();
            // Pushed on both ends, so that it wraps around its buffer as a
            // queue in use does.
            let split = rotate % (times.len() + 1);
            let mut queue = VecDeque::with_capacity(times.len());
            for &time in &times[split..] {
                queue.push_back(time);
            }
            for &time in times[..split].iter().rev() {
                queue.push_front(time);
            }
            for before in [|time: &i64, at: i64| *time < at, |time: &i64, at: i64| *time <= at] {
                proptest::prop_assert_eq!(
                    partition_point_from_front(&queue, |time| before(time, threshold)),
                    queue.partition_point(|time| before(time, threshold))
                );
            }
        }
    }
}
