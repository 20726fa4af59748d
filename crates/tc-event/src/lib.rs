//! The records the TC program (`probe-ebpf`) writes into its ring buffer and the
//! probe reads back, plus the keys and values of the maps they share.
//!
//! Both sides compile this crate: the eBPF program for `bpfel-unknown-none`, the
//! probe for the host. Everything is `#[repr(C)]` with explicit padding so that the
//! layout is the same on both, and the probe decodes ring-buffer bytes through
//! [`TcEvent::decode`], which checks the length instead of trusting the kernel side.
#![no_std]

/// The names the probe finds the program's classifiers and maps by. Each is
/// the name of a function (a classifier) or a `static` (a map) in
/// `probe-ebpf/src/main.rs`, which its object file carries as a symbol; the
/// eBPF macros take the item's own name, so the probe's test
/// `the_object_has_every_name_the_probe_looks_up` holds the two together.
pub mod names {
    /// The classifier on each interface's ingress hook.
    pub const INGRESS_PROGRAM: &str = "apitrace_ingress";
    /// The classifier on each interface's egress hook (the only one on `lo`).
    pub const EGRESS_PROGRAM: &str = "apitrace_egress";
    /// The traced pod's addresses ([`crate::AddrKey`]).
    pub const TARGET_ADDRS: &str = "TARGET_ADDRS";
    /// A [`crate::PortRole`] per port.
    pub const PORT_ROLES: &str = "PORT_ROLES";
    /// The ring buffer of events, sized by the probe when it loads the object.
    pub const EVENTS: &str = "EVENTS";
    /// The per-CPU [`crate::Counter`] slots.
    pub const COUNTERS: &str = "COUNTERS";
}

/// Bytes of payload copied after the header of a message event that starts
/// like an HTTP request: enough for the request line and the headers of an
/// Istio sidecar's request to its app (where the `x-request-id` Envoy added
/// follows the caller's headers, a bearer JWT among them).
pub const REQUEST_HEAD_CAPACITY: usize = 4096;

/// Bytes of payload copied after the header of any other message event: a
/// status line, or the start of a TLS record.
pub const OTHER_HEAD_CAPACITY: usize = 128;

/// Bytes of payload copied of each packet of a framed (h2c) connection: the
/// probe must read every frame header and header block in it, and a sidecar
/// writes the HEADERS of a burst of concurrent streams (each with the
/// caller's JWT, which Envoy does not index) in one segment; 16 KiB holds
/// fourteen of ~1.1 KiB. What lies past it loses the connection's side.
pub const FRAMED_HEAD_CAPACITY: usize = 16384;

const _: () = assert!(
    REQUEST_HEAD_CAPACITY.is_power_of_two()
        && OTHER_HEAD_CAPACITY.is_power_of_two()
        && FRAMED_HEAD_CAPACITY.is_power_of_two(),
    "the TC program masks lengths with capacity - 1"
);

/// What happened on the wire. Events are emitted only at these boundaries, never
/// per packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A SYN without ACK: a connection is being opened by `src`.
    Open = 1,
    /// A SYN+ACK: `src` accepted the connection.
    Accept = 2,
    /// A FIN from `src`.
    Close = 3,
    /// A RST from `src`.
    Reset = 4,
    /// The first payload packet of a message: `src` started sending after the
    /// other side had spoken (or for the first time on this connection). For
    /// HTTP/1.x this is the first packet of a request or of a response.
    Message = 5,
    /// A payload packet whose sequence range was already seen from `src`.
    Retransmit = 6,
}

impl EventKind {
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Open,
            2 => Self::Accept,
            3 => Self::Close,
            4 => Self::Reset,
            5 => Self::Message,
            6 => Self::Retransmit,
            _ => return None,
        })
    }
}

/// Where the program was attached when it saw the packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress = 1,
    Egress = 2,
}

impl Direction {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Ingress),
            2 => Some(Self::Egress),
            _ => None,
        }
    }
}

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// The fixed part of a ring-buffer record. The record is this header followed
/// by `head_len` bytes of payload: records are as long as what they carry, so a
/// full ring holds many more small events than if every record had room for a
/// request head.
///
/// IPv4 addresses occupy the first four bytes of the 16-byte address fields;
/// ports, sequence numbers and the IP identification are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcEventHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, converted to wall time by the probe.
    pub monotonic_ns: u64,
    /// The interface index in the pod's network namespace.
    pub ifindex: u32,
    /// TCP payload bytes of the packet (of the whole GSO packet where segmentation
    /// is offloaded).
    pub payload_len: u32,
    pub seq: u32,
    pub ack: u32,
    /// IPv4 identification of the packet; 0 for IPv6, which has none outside
    /// fragments.
    pub ip_id: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// An [`EventKind`] as `u8`.
    pub kind: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// A [`Direction`] as `u8`.
    pub direction: u8,
    /// The TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10).
    pub tcp_flags: u8,
    /// How many bytes of payload follow the header in the record.
    pub head_len: u16,
    pub _padding: [u8; 2],
}

/// Size of the fixed part of a record.
pub const HEADER_SIZE: usize = size_of::<TcEventHeader>();

/// The largest record the program writes.
pub const MAX_RECORD_SIZE: usize = HEADER_SIZE + FRAMED_HEAD_CAPACITY;

/// A record as the probe reads it: the header, and the payload bytes after it.
#[derive(Clone, Copy, Debug)]
pub struct TcEvent<'a> {
    pub header: TcEventHeader,
    pub head: &'a [u8],
}

impl<'a> TcEvent<'a> {
    /// Reads a record from ring-buffer bytes. Returns `None` when the bytes are
    /// shorter than a header or than the payload the header announces, which a
    /// correct kernel side never produces: the caller counts it as malformed.
    pub fn decode(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() < HEADER_SIZE {
            return None;
        }
        // SAFETY: the length was checked above, `TcEventHeader` is plain old
        // data in which every bit pattern is valid, and `read_unaligned` makes
        // no alignment assumption about the ring buffer's memory.
        let header = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<TcEventHeader>()) };
        let head = bytes.get(HEADER_SIZE..HEADER_SIZE + usize::from(header.head_len))?;
        Some(Self { header, head })
    }

    pub fn kind(&self) -> Option<EventKind> {
        EventKind::from_u8(self.header.kind)
    }

    pub fn direction(&self) -> Option<Direction> {
        Direction::from_u8(self.header.direction)
    }
}

/// Key of the per-pod target map: an address of the pod, as in [`TcEvent`]. The
/// program looks up the packet's pod-side address (destination on ingress, source
/// on egress); traffic whose pod-side address is not in the map costs that single
/// lookup and produces nothing.
pub type AddrKey = [u8; 16];

/// What a port means to the program: the map of port roles is an array
/// indexed by port, holding a [`PortRole`] as `u8`: the verifier inlines array
/// lookups, so checking both ports of a packet costs no hashing.
pub const PORT_SLOTS: u32 = 65536;

/// The role of a port in the [`PORT_SLOTS`] array.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRole {
    /// An application port: traced.
    Application = 0,
    /// The mesh talking to itself (the probe's own ingest ports, Istio's agent,
    /// admin and xDS ports): never traced.
    Infrastructure = 1,
    /// The sidecar's outbound capture port (Istio's 15001): the pod's iptables
    /// redirect the app's outbound connections there, so on `lo` a request to
    /// it and its replies (from the original destination, see
    /// [`FlowKey::redirected`]) are one connection.
    OutboundCapture = 2,
}

/// The kernel gives every network namespace's loopback device index 1
/// (`LOOPBACK_IFINDEX` in Linux's `include/net/flow.h`): a packet on it is the
/// pod's whichever addresses it carries.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Whether `addr` is a loopback address of `family`: 127.0.0.0/8 or ::1.
#[inline(always)]
pub fn is_loopback(family: u8, addr: &[u8; 16]) -> bool {
    if family == FAMILY_IPV4 {
        addr[0] == 127
    } else {
        let mut loopback = [0u8; 16];
        loopback[15] = 1;
        *addr == loopback
    }
}

/// Indexes into the per-CPU counter array the program keeps for the probe.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets that reached the program.
    Packets = 0,
    /// Packets that belonged to a traced flow.
    Matched = 1,
    /// Events written to the ring buffer.
    Emitted = 2,
    /// Events lost because the ring buffer was full.
    RingFull = 3,
    /// Flows whose state could not be stored because the flow table was full.
    FlowTableFull = 4,
}

/// Number of [`Counter`] slots.
pub const COUNTER_SLOTS: u32 = 5;

/// Per-connection state the program keeps between packets, keyed by
/// [`FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct FlowState {
    /// One past the highest sequence number seen with payload, per side.
    pub next_seq: [u32; 2],
    /// Which side (0 or 1, see [`FlowKey`]) sent the last payload. An entry is
    /// created by the first payload packet, so there is always one.
    pub last_sender: u8,
    /// Whether `next_seq[side]` holds a value yet, per side.
    pub seen: [u8; 2],
    /// Whether the connection began with the HTTP/2 preface: its streams'
    /// frames interleave in both directions, so every new payload packet is a
    /// possible message start, which only the probe, reading the frames in
    /// order, can tell.
    pub framed: u8,
    pub _padding: [u8; 4],
}

/// A connection, with its two endpoints in a canonical order (the lower address,
/// then port, first) so that both directions find the same entry. Side 0 is
/// `a`, side 1 is `b`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub a_addr: [u8; 16],
    pub b_addr: [u8; 16],
    pub a_port: u16,
    pub b_port: u16,
    pub family: u8,
    pub _padding: [u8; 3],
}

impl FlowKey {
    /// The canonical key of a packet from `src` to `dst`, and the side `src` is on.
    ///
    /// Any total order both directions agree on will do. The addresses are
    /// compared as two machine words each, not as sixteen bytes, and the key is
    /// built once: this runs for every payload packet, and the TC program's
    /// stack is 512 bytes.
    #[inline(always)]
    pub fn of(
        family: u8,
        src_addr: &[u8; 16],
        src_port: u16,
        dst_addr: &[u8; 16],
        dst_port: u16,
    ) -> (Self, usize) {
        let words = |addr: &[u8; 16]| {
            let pointer = addr.as_ptr().cast::<u64>();
            // SAFETY: sixteen bytes are two u64s; `read_unaligned` makes no
            // alignment assumption.
            unsafe {
                (
                    core::ptr::read_unaligned(pointer),
                    core::ptr::read_unaligned(pointer.add(1)),
                )
            }
        };
        let src_first = (words(src_addr), src_port) <= (words(dst_addr), dst_port);
        let side = usize::from(!src_first);
        let key = if src_first {
            Self {
                a_addr: *src_addr,
                b_addr: *dst_addr,
                a_port: src_port,
                b_port: dst_port,
                family,
                _padding: [0; 3],
            }
        } else {
            Self {
                a_addr: *dst_addr,
                b_addr: *src_addr,
                a_port: dst_port,
                b_port: src_port,
                family,
                _padding: [0; 3],
            }
        };
        (key, side)
    }
}

/// The stand-in for the far end of a connection the pod's iptables redirected
/// to the sidecar: an address no packet carries, port 0. Its request half goes
/// to the capture port on `lo` and its replies come from the original
/// destination, so neither endpoint is the same in both directions; the app's
/// endpoint and this one are.
const REDIRECTED_PEER: [u8; 16] = [0xff; 16];

impl FlowKey {
    /// The key of a redirected connection (see [`PortRole::OutboundCapture`])
    /// from its app-side endpoint, and the side the packet is from: the app's
    /// when `from_app`.
    #[inline(always)]
    pub fn redirected(
        family: u8,
        app_addr: &[u8; 16],
        app_port: u16,
        from_app: bool,
    ) -> (Self, usize) {
        let (key, app_side) = Self::of(family, app_addr, app_port, &REDIRECTED_PEER, 0);
        let side = if from_app { app_side } else { app_side ^ 1 };
        (key, side)
    }
}

/// What the first four bytes of a message start say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// The start of an HTTP/1.x request line: one of the common methods.
    Http1Request,
    /// The client's HTTP/2 connection preface, `PRI * HTTP/2.0` (RFC 9113
    /// section 3.4): a connection with prior knowledge (h2c).
    Http2Preface,
    /// Anything else: a status line, a TLS record, a body.
    Other,
}

impl HeadKind {
    #[inline(always)]
    pub fn of(prefix: &[u8; 4]) -> Self {
        match prefix {
            b"GET " | b"POST" | b"PUT " | b"HEAD" | b"DELE" | b"PATC" | b"OPTI" | b"CONN"
            | b"TRAC" => Self::Http1Request,
            b"PRI " => Self::Http2Preface,
            _ => Self::Other,
        }
    }

    /// How many bytes of a message with this head are captured, on a
    /// connection that is `framed` or not: a framed connection's packet
    /// ([`FRAMED_HEAD_CAPACITY`]), an HTTP/1 request's headers
    /// ([`REQUEST_HEAD_CAPACITY`], also for the preface that makes a
    /// connection framed), or the first bytes of anything else.
    #[inline(always)]
    pub fn capacity(self, framed: bool) -> usize {
        if framed {
            FRAMED_HEAD_CAPACITY
        } else if self == Self::Other {
            OTHER_HEAD_CAPACITY
        } else {
            REQUEST_HEAD_CAPACITY
        }
    }
}

/// What a payload packet is in its connection's byte streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    /// The first payload of a message: its side starts sending after the other
    /// side spoke, or for the first time on the connection; on a framed
    /// connection, every payload packet with new bytes.
    MessageStart,
    /// Bytes its side had already sent.
    Retransmission,
    /// More of the message its side is sending.
    Continuation,
}

/// What the program writes for a payload packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadEvent {
    /// A message record carrying up to `capacity` bytes of the payload.
    Message { capacity: usize },
    /// A retransmission record, without payload.
    Retransmission,
    /// Nothing: more of a message already recorded.
    Nothing,
}

impl FlowState {
    /// The first payload packet of a connection the program keeps no state
    /// for yet, from `side`, ending at `end`, its first bytes telling `head`:
    /// the state to keep, and the message the packet starts. A connection
    /// that begins with the HTTP/2 preface is framed from then on.
    #[inline(always)]
    pub fn opened_by(side: usize, end: u32, head: HeadKind) -> (Self, PayloadEvent) {
        let mut state = Self::first(side, end);
        state.framed = u8::from(head == HeadKind::Http2Preface);
        let capacity = head.capacity(state.framed != 0);
        (state, PayloadEvent::Message { capacity })
    }

    /// A later payload packet from `side` of `len` bytes at `seq`: what to
    /// write for it, updating the state. A message starts when the other side
    /// sent last, or with every packet of new bytes on a framed connection;
    /// bytes its side had already sent are a retransmission.
    /// `head` tells what the packet's first bytes are; it is called only for
    /// a message start, since reading the packet costs a helper call.
    #[inline(always)]
    pub fn on_packet(
        &mut self,
        side: usize,
        seq: u32,
        len: u32,
        head: impl FnOnce() -> HeadKind,
    ) -> PayloadEvent {
        match self.on_payload(side, seq, len) {
            Payload::MessageStart => {
                let head = head();
                if head == HeadKind::Http2Preface {
                    self.framed = 1;
                }
                let capacity = head.capacity(self.framed != 0);
                PayloadEvent::Message { capacity }
            }
            Payload::Retransmission => PayloadEvent::Retransmission,
            Payload::Continuation => PayloadEvent::Nothing,
        }
    }

    /// The state of a connection whose first payload packet is from `side` and
    /// ends at `end`: the start of a message.
    #[inline(always)]
    fn first(side: usize, end: u32) -> Self {
        // Each array built whole, not indexed by `side`: indexing a stack
        // array can compile to an address OR'ed with the index, which the
        // verifier refuses on a pointer.
        let (next_seq, seen) = if side & 1 == 0 {
            ([end, 0], [1, 0])
        } else {
            ([0, end], [0, 1])
        };
        Self {
            next_seq,
            last_sender: (side & 1) as u8,
            seen,
            ..Self::default()
        }
    }

    /// What a payload packet from `side` of `len` bytes at `seq` is, updating
    /// the state: a message starts when the other side sent last (on a framed
    /// connection, with every packet of new bytes); a packet
    /// whose sequence range starts before what `side` already sent is a
    /// retransmission (its end still extends what was seen, for a segment that
    /// carries old and new bytes).
    #[inline(always)]
    fn on_payload(&mut self, side: usize, seq: u32, len: u32) -> Payload {
        let side = side & 1;
        let end = seq.wrapping_add(len);
        if self.seen[side] != 0 && seq_before(seq, self.next_seq[side]) {
            if seq_before(self.next_seq[side], end) {
                self.next_seq[side] = end;
            }
            return Payload::Retransmission;
        }
        self.next_seq[side] = end;
        self.seen[side] = 1;
        if self.last_sender == side as u8 && self.framed == 0 {
            return Payload::Continuation;
        }
        self.last_sender = side as u8;
        Payload::MessageStart
    }
}

/// `a` comes before `b` in TCP sequence space (RFC 1982 serial arithmetic).
#[inline(always)]
pub const fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn record(header: TcEventHeader, head: &[u8]) -> [u8; 256] {
        let mut bytes = [0u8; 256];
        // SAFETY: writing a plain-old-data header into a buffer large enough.
        unsafe { core::ptr::write_unaligned(bytes.as_mut_ptr().cast::<TcEventHeader>(), header) };
        bytes[HEADER_SIZE..HEADER_SIZE + head.len()].copy_from_slice(head);
        bytes
    }

    #[test]
    fn decode_reads_the_header_and_the_payload_it_announces() {
        let header = TcEventHeader {
            monotonic_ns: 42,
            kind: EventKind::Message as u8,
            head_len: 3,
            ..TcEventHeader::default()
        };
        let bytes = record(header, b"GET");
        let event = TcEvent::decode(&bytes[..HEADER_SIZE + 3]).unwrap();
        assert_eq!(event.header.monotonic_ns, 42);
        assert_eq!(event.kind(), Some(EventKind::Message));
        assert_eq!(event.head, b"GET");
    }

    #[test]
    fn decode_rejects_records_shorter_than_they_say() {
        assert!(TcEvent::decode(&[0u8; 16]).is_none());
        let header = TcEventHeader {
            head_len: 100,
            ..TcEventHeader::default()
        };
        let bytes = record(header, b"");
        assert!(TcEvent::decode(&bytes[..HEADER_SIZE + 99]).is_none());
        assert!(TcEvent::decode(&bytes[..HEADER_SIZE + 100]).is_some());
    }

    #[test]
    fn flow_key_is_the_same_from_both_directions() {
        let client = [1u8; 16];
        let server = [2u8; 16];
        let (forward, forward_side) = FlowKey::of(FAMILY_IPV4, &client, 50000, &server, 80);
        let (backward, backward_side) = FlowKey::of(FAMILY_IPV4, &server, 80, &client, 50000);
        assert!(forward == backward);
        assert_ne!(forward_side, backward_side);
    }

    #[test]
    fn both_halves_of_a_redirected_connection_are_one_flow_with_two_sides() {
        let app = [10, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let (request, request_side) = FlowKey::redirected(FAMILY_IPV4, &app, 41000, true);
        let (reply, reply_side) = FlowKey::redirected(FAMILY_IPV4, &app, 41000, false);
        assert!(request == reply);
        assert_ne!(request_side, reply_side);
        let (other, _) = FlowKey::redirected(FAMILY_IPV4, &app, 41001, true);
        assert!(other != request, "another app port is another connection");
        // Never the key of a connection between real endpoints.
        let (plain, _) = FlowKey::of(FAMILY_IPV4, &app, 41000, &[127; 16], 15001);
        assert!(plain != request);
    }

    #[test]
    fn loopback_addresses_are_127_slash_8_and_colon_colon_1() {
        let v4 = |first: u8| {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&[first, 0, 0, 6]);
            addr
        };
        assert!(is_loopback(FAMILY_IPV4, &v4(127)));
        assert!(!is_loopback(FAMILY_IPV4, &v4(10)));
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert!(is_loopback(FAMILY_IPV6, &v6));
        v6[15] = 6;
        assert!(
            !is_loopback(FAMILY_IPV6, &v6),
            "::6 is Istio's bind address, not loopback"
        );
    }

    /// A request, its response in two packets, a retransmitted packet of
    /// the response, and the next request: each packet is what the program
    /// decides it is.
    #[test]
    fn payload_packets_start_messages_only_when_the_sender_changes() {
        let mut state = FlowState::first(0, 1100);
        let decisions = [
            (1, 5000, 1460, Payload::MessageStart),
            (1, 6460, 200, Payload::Continuation),
            (1, 5000, 1460, Payload::Retransmission),
            (0, 1100, 80, Payload::MessageStart),
            // Old and new bytes in one segment: a retransmission that still
            // moves what was seen.
            (0, 1150, 100, Payload::Retransmission),
            (0, 1250, 10, Payload::Continuation),
            (1, 6660, 10, Payload::MessageStart),
        ];
        for (n, (side, seq, len, expected)) in decisions.into_iter().enumerate() {
            assert_eq!(state.on_payload(side, seq, len), expected, "packet {n}");
        }
    }

    /// On an h2c connection, streams' frames interleave: every packet of new
    /// bytes is a possible message start, from either side; retransmissions
    /// stay retransmissions.
    #[test]
    fn a_framed_connection_starts_a_message_with_every_new_packet() {
        let mut state = FlowState::first(0, 1024);
        assert_eq!(HeadKind::of(b"PRI "), HeadKind::Http2Preface);
        state.framed = 1;
        let decisions = [
            (0, 1024, 300, Payload::MessageStart),
            (0, 1324, 300, Payload::MessageStart),
            (1, 9000, 100, Payload::MessageStart),
            (1, 9100, 100, Payload::MessageStart),
            (1, 9000, 100, Payload::Retransmission),
            (0, 1624, 50, Payload::MessageStart),
        ];
        for (n, (side, seq, len, expected)) in decisions.into_iter().enumerate() {
            assert_eq!(state.on_payload(side, seq, len), expected, "packet {n}");
        }
    }

    /// An HTTP/1 request opening a connection, its response, the response's
    /// next packet and a retransmission of it: what the program writes for
    /// each, reading the packet's first bytes only where a message starts.
    #[test]
    fn each_payload_packet_gets_the_record_its_place_calls_for() {
        let (mut state, opened) = FlowState::opened_by(0, 1100, HeadKind::Http1Request);
        let capacity = REQUEST_HEAD_CAPACITY;
        assert_eq!(opened, PayloadEvent::Message { capacity });
        assert_eq!(state.framed, 0);
        let unread = || panic!("the head is read only for a message start");
        let capacity = OTHER_HEAD_CAPACITY;
        assert_eq!(
            state.on_packet(1, 5000, 1460, || HeadKind::Other),
            PayloadEvent::Message { capacity }
        );
        assert_eq!(state.on_packet(1, 6460, 200, unread), PayloadEvent::Nothing);
        assert_eq!(
            state.on_packet(1, 5000, 1460, unread),
            PayloadEvent::Retransmission
        );
    }

    /// The HTTP/2 preface makes a connection framed, whether it opens the
    /// connection or starts a later message: from then on every packet of new
    /// bytes is a message with a framed connection's capture.
    #[test]
    fn the_http2_preface_makes_a_connection_framed() {
        let capacity = FRAMED_HEAD_CAPACITY;
        let (mut state, opened) = FlowState::opened_by(0, 24, HeadKind::Http2Preface);
        assert_eq!(opened, PayloadEvent::Message { capacity });
        assert_eq!(
            state.on_packet(0, 24, 100, || HeadKind::Other),
            PayloadEvent::Message { capacity }
        );

        let (mut state, _) = FlowState::opened_by(1, 500, HeadKind::Other);
        assert_eq!(state.framed, 0);
        assert_eq!(
            state.on_packet(0, 0, 24, || HeadKind::Http2Preface),
            PayloadEvent::Message { capacity }
        );
        assert_eq!(
            state.on_packet(0, 24, 10, || HeadKind::Other),
            PayloadEvent::Message { capacity }
        );
    }

    #[test]
    fn a_head_is_told_by_its_first_four_bytes() {
        assert_eq!(HeadKind::of(b"GET "), HeadKind::Http1Request);
        assert_eq!(HeadKind::of(b"DELE"), HeadKind::Http1Request);
        assert_eq!(HeadKind::of(b"PRI "), HeadKind::Http2Preface);
        assert_eq!(HeadKind::of(b"HTTP"), HeadKind::Other);
        assert_eq!(HeadKind::of(&[0x16, 3, 1, 2]), HeadKind::Other);
        assert_eq!(HeadKind::Other.capacity(true), FRAMED_HEAD_CAPACITY);
        assert_eq!(HeadKind::Other.capacity(false), OTHER_HEAD_CAPACITY);
        assert_eq!(
            HeadKind::Http1Request.capacity(false),
            REQUEST_HEAD_CAPACITY
        );
        assert_eq!(HeadKind::Http2Preface.capacity(true), FRAMED_HEAD_CAPACITY);
    }

    #[test]
    fn sequence_numbers_wrap_without_taking_new_bytes_for_old_ones() {
        let mut state = FlowState::first(0, u32::MAX - 10);
        assert_eq!(
            state.on_payload(0, u32::MAX - 10, 100),
            Payload::Continuation
        );
        assert_eq!(state.on_payload(0, 89, 5), Payload::Continuation);
        assert_eq!(state.on_payload(0, 80, 5), Payload::Retransmission);
    }

    #[test]
    fn sequence_comparison_wraps() {
        assert!(seq_before(1, 2));
        assert!(!seq_before(2, 1));
        assert!(seq_before(u32::MAX - 5, 3));
        assert!(!seq_before(3, u32::MAX - 5));
        assert!(!seq_before(7, 7));
    }

    #[test]
    fn layout_is_stable() {
        // The eBPF object and the probe are built by different compilers; a
        // layout change must be deliberate on both sides.
        assert_eq!(HEADER_SIZE, 72);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowState>(), 16);
    }
}
