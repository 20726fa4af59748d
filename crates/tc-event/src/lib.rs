//! The records the TC program (`probe-ebpf`) writes into its ring buffer and the
//! probe reads back, plus the keys and values of the maps they share.
//!
//! Both sides compile this crate: the eBPF program for `bpfel-unknown-none`, the
//! probe for the host. Everything is `#[repr(C)]` with explicit padding so that the
//! layout is the same on both, and the probe decodes ring-buffer bytes through
//! [`TcEvent::decode`], which checks the length instead of trusting the kernel side.
#![no_std]

/// Bytes of TCP payload copied into an event at a message boundary. The request
/// line and the first headers of an HTTP/1.x head fit; the rest stays in the kernel.
pub const HEAD_CAPACITY: usize = 1024;
const _: () = assert!(
    HEAD_CAPACITY.is_power_of_two(),
    "the TC program masks lengths with HEAD_CAPACITY - 1"
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

/// One boundary event. IPv4 addresses occupy the first four bytes of the 16-byte
/// address fields; ports, sequence numbers and the IP identification are in host
/// byte order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcEvent {
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
    /// How many bytes of `head` are payload.
    pub head_len: u16,
    pub _padding: [u8; 2],
    /// The first bytes of the payload for [`EventKind::Message`] events.
    pub head: [u8; HEAD_CAPACITY],
}

/// Size of one record in the ring buffer.
pub const TC_EVENT_SIZE: usize = core::mem::size_of::<TcEvent>();

impl TcEvent {
    /// Reads an event from ring-buffer bytes. Returns `None` when `bytes` is too
    /// short to hold one, which a correct kernel side never produces: the caller
    /// counts it as a malformed record.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < TC_EVENT_SIZE {
            return None;
        }
        // SAFETY: the length was checked above, `TcEvent` is plain old data in
        // which every bit pattern is valid, and `read_unaligned` makes no
        // alignment assumption about the ring buffer's memory.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The captured start of the payload.
    pub fn head(&self) -> &[u8] {
        let len = usize::from(self.head_len).min(HEAD_CAPACITY);
        &self.head[..len]
    }

    pub fn kind(&self) -> Option<EventKind> {
        EventKind::from_u8(self.kind)
    }

    pub fn direction(&self) -> Option<Direction> {
        Direction::from_u8(self.direction)
    }
}

/// Key of the per-pod target map: an address of the pod, as in [`TcEvent`]. The
/// program looks up the packet's pod-side address (destination on ingress, source
/// on egress); traffic whose pod-side address is not in the map costs that single
/// lookup and produces nothing.
pub type AddrKey = [u8; 16];

/// Key of the map of ports whose traffic is never traced (the probe's own ingest
/// ports, Istio's agent and admin ports): checked against both ports of a packet.
pub type PortKey = u16;

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
    pub _padding: [u8; 5],
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
    #[inline(always)]
    pub fn of(
        family: u8,
        src_addr: [u8; 16],
        src_port: u16,
        dst_addr: [u8; 16],
        dst_port: u16,
    ) -> (Self, usize) {
        let src_first = (src_addr, src_port) <= (dst_addr, dst_port);
        let (a_addr, a_port, b_addr, b_port, side) = if src_first {
            (src_addr, src_port, dst_addr, dst_port, 0)
        } else {
            (dst_addr, dst_port, src_addr, src_port, 1)
        };
        (
            Self {
                a_addr,
                b_addr,
                a_port,
                b_port,
                family,
                _padding: [0; 3],
            },
            side,
        )
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

    #[test]
    fn decode_rejects_short_records_and_reads_full_ones() {
        assert!(TcEvent::decode(&[0u8; 16]).is_none());
        let mut bytes = [0u8; TC_EVENT_SIZE];
        bytes[0] = 42; // monotonic_ns, little end first on the hosts we build for
        let kind_offset = core::mem::offset_of!(TcEvent, kind);
        bytes[kind_offset] = EventKind::Message as u8;
        let head_len_offset = core::mem::offset_of!(TcEvent, head_len);
        bytes[head_len_offset..head_len_offset + 2].copy_from_slice(&3u16.to_ne_bytes());
        let head_offset = core::mem::offset_of!(TcEvent, head);
        bytes[head_offset..head_offset + 3].copy_from_slice(b"GET");
        let event = TcEvent::decode(&bytes).unwrap();
        assert_eq!(event.monotonic_ns, 42);
        assert_eq!(event.kind(), Some(EventKind::Message));
        assert_eq!(event.head(), b"GET");
    }

    #[test]
    fn head_never_reads_past_its_capacity() {
        let mut bytes = [0u8; TC_EVENT_SIZE];
        let head_len_offset = core::mem::offset_of!(TcEvent, head_len);
        bytes[head_len_offset..head_len_offset + 2].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(TcEvent::decode(&bytes).unwrap().head().len(), HEAD_CAPACITY);
    }

    #[test]
    fn flow_key_is_the_same_from_both_directions() {
        let client = [1u8; 16];
        let server = [2u8; 16];
        let (forward, forward_side) = FlowKey::of(FAMILY_IPV4, client, 50000, server, 80);
        let (backward, backward_side) = FlowKey::of(FAMILY_IPV4, server, 80, client, 50000);
        assert!(forward == backward);
        assert_ne!(forward_side, backward_side);
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
        assert_eq!(TC_EVENT_SIZE, 72 + HEAD_CAPACITY);
        assert_eq!(core::mem::size_of::<FlowKey>(), 40);
        assert_eq!(core::mem::size_of::<FlowState>(), 16);
    }
}
