//! What the TC program saw on the wire, indexed for the join: the starts of
//! requests and responses by flow (a connection in one direction), and the
//! retransmissions and resets of each connection.
//!
//! Each flow's message starts are kept in time order, so that finding the
//! request before a time, or the response after one, is a binary search
//! however many requests of a keep-alive connection wait for their access
//! logs. What a call claims leaves the index then; what is left when it
//! expires is what no call claimed.

use std::{collections::VecDeque, net::IpAddr, sync::Arc};

use apitrace_proto::{Endpoint, HttpHead, TcEvent, http_head::StartLine};
use rustc_hash::FxHashMap;

use super::{CallId, texts::Texts};

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

/// Where `flow` comes from, as the records show it.
pub(crate) fn source(flow: &Flow) -> Endpoint {
    Endpoint::new(ip_text(flow.0), flow.1)
}

/// Where `flow` goes, as the records show it.
pub(crate) fn destination(flow: &Flow) -> Endpoint {
    Endpoint::new(ip_text(flow.2), flow.3)
}

/// `ip` as text, as `ip.to_string()` writes it. IPv4 by hand: `Display`
/// goes through the formatter's machinery and takes four times as long
/// (72 ns against 18, allocation included), twice for every record.
fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// A message start as the join keeps it: what a record shows of the packet.
/// Its addresses are its flow's, and its interface name is shared, so the
/// event's own strings for them (and the head's `authority`, never shown) are
/// freed as it arrives, while still in the cache, not with its call a second
/// later; at the join's rate those late frees cost more than the rest of the
/// work on a packet. Its HTTP head is kept apart, so that a packet fits in
/// one cache line of its flow's queue.
#[derive(Debug)]
pub(crate) struct Packet {
    pub time_ns: i64,
    pub ip_id: u32,
    pub tcp_seq: u32,
    pub payload_len: u32,
    pub interface: Arc<str>,
    /// The HTTP head, where the packet was plaintext.
    pub head: Option<Box<Head>>,
}

/// What a record shows of a packet's HTTP head, reduced as it arrives (see
/// [`Texts`]): a request's is two allocations a second later, not five. A
/// head whose start line was not captured shows nothing and is not kept.
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

/// The interface names seen, each kept once: a pod has a few (`eth0`, `lo`)
/// and every pod's are named alike.
#[derive(Debug, Default)]
pub(crate) struct InterfaceNames {
    names: Vec<Arc<str>>,
}

impl InterfaceNames {
    /// Names kept at most; a name past them is not shared.
    const CAPACITY: usize = 32;

    fn get(&mut self, name: &str) -> Arc<str> {
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
fn partition_point_from_front<T>(
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

/// The same connection, whichever direction it is seen from.
fn connection(flow: &Flow) -> Flow {
    let reversed = reverse(flow);
    if *flow <= reversed { *flow } else { reversed }
}

/// The start of a message (a request or a response) on a flow: one cache
/// line, kept in its flow's queue, so that a call reads its messages where
/// the queue's neighbours are, not from a separate allocation each.
#[derive(Debug)]
pub(crate) struct MessageStart {
    pub time_ns: i64,
    arrival_ns: i64,
    pub packet: Packet,
}

/// A retransmission or a reset on a connection.
#[derive(Debug, Clone, Copy)]
struct Context {
    time_ns: i64,
    arrival_ns: i64,
    reset: bool,
    /// A call on the connection had already been emitted when it arrived:
    /// unclaimed, it belongs to the connection's teardown (a retransmitted
    /// FIN) or came too late for its call.
    after_a_call: bool,
}

/// What [`WireIndex::expire`] forgot.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Expired {
    /// Message starts, and context on connections no call claimed from.
    pub unmatched: u64,
    /// Context that came after a call on its connection was emitted.
    pub after_a_call: u64,
}

/// Expiry sweeps the index, and does not queue each arrival: what a call
/// claimed has left it already, so what a sweep finds old is what nobody
/// claimed. A queue would cost 64 bytes per event held for two windows (51 MB
/// at 20,000 calls a second) and a write and a read from memory per event.
#[derive(Debug)]
pub(crate) struct WireIndex {
    /// Message starts by flow, in time order. Calls claim them mostly from
    /// the front.
    messages: FxHashMap<Flow, VecDeque<MessageStart>>,
    /// Retransmissions and resets by connection.
    context: FxHashMap<Flow, Vec<Context>>,
    /// Connections a call claimed wire events from, and when it last did.
    claimed: FxHashMap<Flow, i64>,
    /// How far apart sweeps are, at least, in arrival time.
    sweep_every_ns: i64,
    /// The earliest cutoff the next sweep runs at.
    next_sweep_ns: i64,
}

/// A message start chosen for a call, and where to find it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pick {
    pub flow: Flow,
    pub index: usize,
}

/// A request start on the pod's interface and the start of its response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    pub request: Pick,
    pub request_ns: i64,
    pub response: Option<Pick>,
    /// When the connection's next request started: the end of the call's
    /// share of the connection's retransmissions and resets.
    pub next_request_ns: i64,
}

impl Exchange {
    /// Whether taking this exchange shifts the messages of `flow`.
    pub fn touches(&self, flow: &Flow) -> bool {
        self.request.flow == *flow || self.response.is_some_and(|pick| pick.flow == *flow)
    }
}

impl WireIndex {
    /// An index that sweeps what expired at most every `sweep_every_ns`: an
    /// event is forgotten that long after its cutoff, at most.
    pub fn new(sweep_every_ns: i64) -> Self {
        Self {
            messages: FxHashMap::default(),
            context: FxHashMap::default(),
            claimed: FxHashMap::default(),
            sweep_every_ns,
            next_sweep_ns: i64::MIN,
        }
    }

    pub fn add_message(&mut self, flow: Flow, packet: Packet, arrival_ns: i64) {
        let messages = self.messages.entry(flow).or_default();
        let time_ns = packet.time_ns;
        let message = MessageStart {
            time_ns,
            arrival_ns,
            packet,
        };
        // Usually the latest: a push, without searching a queue that has not
        // been touched since the connection's previous message.
        if messages.back().is_none_or(|last| last.time_ns <= time_ns) {
            messages.push_back(message);
        } else {
            let at = messages.partition_point(|message| message.time_ns <= time_ns);
            messages.insert(at, message);
        }
    }

    /// Fetches the front of `flow`'s queue into the cache (see
    /// [`super::ahead`]).
    pub fn prefetch_front(&self, flow: &Flow) {
        super::ahead::prefetch_front(self.messages.get(flow));
    }

    pub fn add_context(&mut self, flow: &Flow, time_ns: i64, reset: bool, arrival_ns: i64) {
        let connection = connection(flow);
        let after_a_call = self.claimed.contains_key(&connection);
        self.context.entry(connection).or_default().push(Context {
            time_ns,
            arrival_ns,
            reset,
            after_a_call,
        });
    }

    /// The exchange on `flow` of a call the sidecar started at `start_ns`:
    /// the last request start at or before it (within `tolerance_ns`), unless
    /// its response started before `start_ns`. Then that exchange ended before
    /// this call began: it was an earlier request's, and this call's request
    /// start has not arrived (events come in any order).
    pub fn find_exchange(&self, flow: &Flow, start_ns: i64, tolerance_ns: i64) -> Option<Exchange> {
        let limit = start_ns.saturating_add(tolerance_ns);
        let messages = self.messages.get(flow)?;
        let index = partition_point_from_front(messages, |message| message.time_ns <= limit)
            .checked_sub(1)?;
        let request_ns = messages[index].time_ns;
        let reversed = reverse(flow);
        // The first message the other side sent after the request.
        let reply = self.messages.get(&reversed).and_then(|replies| {
            let index = partition_point_from_front(replies, |message| message.time_ns < request_ns);
            Some((index, replies.get(index)?.time_ns))
        });
        if reply.is_some_and(|(_, reply_ns)| reply_ns < start_ns) {
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
            request: Pick { flow: *flow, index },
            request_ns,
            response: reply
                .filter(|&(_, reply_ns)| reply_ns <= next_request_ns)
                .map(|(index, _)| Pick {
                    flow: reversed,
                    index,
                }),
            next_request_ns,
        })
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
        let index = partition_point_from_front(messages, |message| message.time_ns < request_ns);
        let first = messages.get(index)?;
        (first.time_ns <= until_ns).then_some(Pick { flow, index })
    }

    /// Takes a message out of the index (a call claimed it).
    pub fn take(&mut self, pick: Pick) -> Option<Packet> {
        let messages = self.messages.get_mut(&pick.flow)?;
        let taken = messages.remove(pick.index)?;
        if messages.is_empty() {
            self.messages.remove(&pick.flow);
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
        let connection = connection(flow);
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

    /// Forgets what arrived at or before `cutoff_ns` and nobody claimed, if a
    /// sweep is due.
    pub fn expire(&mut self, cutoff_ns: i64) -> Expired {
        let mut expired = Expired::default();
        if cutoff_ns < self.next_sweep_ns {
            return expired;
        }
        self.next_sweep_ns = cutoff_ns.saturating_add(self.sweep_every_ns);
        // A flow's queue is in time order, which is arrival order but for
        // events arriving out of order (from several probes): a message that
        // arrives late with an earlier time goes in front of earlier
        // arrivals, which then wait for it to expire, by as long as it came
        // after them. Reading only the fronts keeps a sweep from reading
        // every message held.
        self.messages.retain(|_, messages| {
            while messages
                .front()
                .is_some_and(|message| message.arrival_ns <= cutoff_ns)
            {
                messages.pop_front();
                expired.unmatched += 1;
            }
            !messages.is_empty()
        });
        self.context.retain(|_, events| {
            events.retain(|event| {
                let old = event.arrival_ns <= cutoff_ns;
                if old && event.after_a_call {
                    expired.after_a_call += 1;
                } else if old {
                    expired.unmatched += 1;
                }
                !old
            });
            !events.is_empty()
        });
        self.claimed.retain(|_, at| *at > cutoff_ns);
        expired
    }
}

/// The sidecar's plaintext requests to the app (with their `x-request-id`) of
/// the open calls, by flow, in time order. The sidecar pools its connections
/// to the app, so one carries many calls, one after the other.
#[derive(Debug, Default)]
pub(crate) struct UpstreamIndex {
    /// A queue: calls are mostly emitted oldest first.
    requests: FxHashMap<Flow, VecDeque<(i64, CallId)>>,
}

impl UpstreamIndex {
    pub fn add(&mut self, flow: Flow, time_ns: i64, id: CallId) {
        let requests = self.requests.entry(flow).or_default();
        if requests.back().is_none_or(|(last, _)| *last <= time_ns) {
            requests.push_back((time_ns, id));
        } else {
            let at = requests.partition_point(|(time, _)| *time <= time_ns);
            requests.insert(at, (time_ns, id));
        }
    }

    pub fn remove(&mut self, flow: &Flow, time_ns: i64, id: CallId) {
        let Some(requests) = self.requests.get_mut(flow) else {
            return;
        };
        let from = partition_point_from_front(requests, |(time, _)| *time < time_ns);
        if let Some(offset) = requests
            .range(from..)
            .take_while(|(time, _)| *time == time_ns)
            .position(|(_, indexed)| *indexed == id)
        {
            requests.remove(from + offset);
        }
        if requests.is_empty() {
            self.requests.remove(flow);
        }
    }

    /// Fetches the front of `flow`'s queue into the cache (see
    /// [`super::ahead`]).
    pub fn prefetch_front(&self, flow: &Flow) {
        super::ahead::prefetch_front(self.requests.get(flow));
    }

    /// The call whose request on `flow` went last at or before `time_ns`: the
    /// one a response seen then answers.
    pub fn last_before(&self, flow: &Flow, time_ns: i64) -> Option<&CallId> {
        let requests = self.requests.get(flow)?;
        // Mostly the response to the latest request.
        if let Some((time, id)) = requests.back()
            && *time <= time_ns
        {
            return Some(id);
        }
        let index = requests
            .partition_point(|(time, _)| *time <= time_ns)
            .checked_sub(1)?;
        Some(&requests[index].1)
    }

    /// When the next request on `flow` after `time_ns` went.
    pub fn next_after(&self, flow: &Flow, time_ns: i64) -> Option<i64> {
        let requests = self.requests.get(flow)?;
        let index = partition_point_from_front(requests, |(time, _)| *time <= time_ns);
        requests.get(index).map(|(time, _)| *time)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use apitrace_proto::{RequestLine, StatusLine};

    use super::*;

    #[test]
    fn other_addresses_are_written_as_the_standard_library_writes_them() {
        for text in ["::1", "fd00::14", "::ffff:10.0.0.7"] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

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

    fn test_flow(port: u32) -> Flow {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        (ip, port, ip, 80)
    }

    fn packet_at(time_ns: i64) -> Packet {
        Packet {
            time_ns,
            ip_id: 0,
            tcp_seq: 0,
            payload_len: 0,
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
        index.add_message(test_flow(1), packet_at(100), 5);
        // Claimed: never counted.
        index.add_message(test_flow(2), packet_at(100), 7);
        let claimed = index.find_response(&reverse(&test_flow(2)), 0, i64::MAX);
        assert!(index.take(claimed.unwrap()).is_some());
        let forgotten = sweep_every_cutoff(&mut index);
        let [(at, expired)] = &forgotten[..] else {
            panic!("forgotten once, not {forgotten:?}");
        };
        assert!((5..=5 + SWEEP_EVERY).contains(at), "{at}");
        assert_eq!((expired.unmatched, expired.after_a_call), (1, 0));
    }

    #[test]
    fn context_after_a_claim_is_counted_apart_when_forgotten() {
        let mut index = WireIndex::new(SWEEP_EVERY);
        let flow = test_flow(1);
        // Before the claim: a retransmission outside the claimed exchange.
        index.add_context(&flow, 500, false, 3);
        assert_eq!(index.take_context(&flow, 0, 100, 4), (0, 0));
        index.add_context(&reverse(&flow), 600, true, 20);
        let forgotten = sweep_every_cutoff(&mut index);
        let total = forgotten
            .iter()
            .fold((0, 0), |(unmatched, after), (_, expired)| {
                (unmatched + expired.unmatched, after + expired.after_a_call)
            });
        assert_eq!(total, (1, 1), "{forgotten:?}");
        assert!(forgotten.iter().all(|(at, _)| *at >= 3), "{forgotten:?}");
    }

    /// A message that arrives late with an earlier time goes before the
    /// flow's queued ones: those wait behind it, and go when it does.
    #[test]
    fn a_message_waiting_behind_a_later_arrival_goes_with_it() {
        let mut index = WireIndex::new(SWEEP_EVERY);
        let flow = test_flow(1);
        index.add_message(flow, packet_at(200), 2);
        index.add_message(flow, packet_at(100), 30);
        let forgotten = sweep_every_cutoff(&mut index);
        let [(at, expired)] = &forgotten[..] else {
            panic!("forgotten together, not {forgotten:?}");
        };
        assert!((30..=30 + SWEEP_EVERY).contains(at), "{at}");
        assert_eq!(expired.unmatched, 2);
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

        /// Every IPv4 address is written as the standard library writes it.
        #[test]
        fn ipv4_addresses_are_written_as_the_standard_library_writes_them(bits: u32) {
            let ip = IpAddr::V4(Ipv4Addr::from(bits));
            proptest::prop_assert_eq!(ip_text(ip), ip.to_string());
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
