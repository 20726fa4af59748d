//! The TC program of `kubectl apitrace`.
//!
//! It runs on every packet of a traced pod's interfaces, so it does as little as
//! it can per packet: it reads the headers in place (direct packet access, no
//! helper calls), and on `eth0` one lookup of the packet's pod-side address in
//! `TARGET_ADDRS` decides whether the packet matters at all; on `lo` every
//! packet is the pod's. Port roles (infrastructure, the outbound capture port)
//! are an array the verifier inlines. Pure ACKs stop there. For the other packets of
//! traced TCP flows it keeps per-connection state in an LRU map and writes an
//! event only at boundaries: SYN, SYN+ACK, FIN, RST, the first payload packet of
//! each message (the direction of payload changed), and retransmissions.
//!
//! A message event carries the first bytes of its payload: up to 4 KiB when it
//! starts like an HTTP request (the request line and the headers, where the
//! `x-request-id` a sidecar added is), 128 bytes otherwise. Records are only as
//! long as what they carry: the program builds them in a per-CPU scratch
//! buffer and copies that many bytes into the ring.
//!
//! Both programs return "continue" (`TC_ACT_UNSPEC`, which is `TCX_NEXT` for tcx
//! links): they observe and never change a verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use core::{mem::size_of, ptr::read_unaligned};

use apitrace_tc_event::{
    AddrKey, COUNTER_SLOTS, Counter, Direction, EventKind, FAMILY_IPV4, FAMILY_IPV6,
    FRAMED_HEAD_CAPACITY, FlowKey, FlowState, HEADER_SIZE, HeadKind, LOOPBACK_IFINDEX,
    OTHER_HEAD_CAPACITY, PORT_SLOTS, PayloadEvent, PortRole, REQUEST_HEAD_CAPACITY, TcEventHeader,
    is_loopback,
};
use aya_ebpf::{
    bindings::{
        BPF_F_NO_COMMON_LRU, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        BPF_RB_RING_SIZE,
    },
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};

// The probe finds the classifiers and the maps it reads or fills by the
// names in `apitrace_tc_event::names`: renaming one of these items means
// renaming its constant there (a probe test holds the two together).

/// Addresses of the traced pod (its interfaces' addresses, and the ones its
/// sidecar binds on `lo`): on `eth0` the packet's pod-side address must be one
/// of them; on `lo` they tell the pod's own addresses from the original
/// destination a redirected connection's replies come from.
#[map]
static TARGET_ADDRS: HashMap<AddrKey, u8> = HashMap::with_max_entries(16, 0);

/// A [`PortRole`] per port: infrastructure ports are not traced, and the
/// sidecar's outbound capture port marks redirected connections on `lo`.
#[map]
static PORT_ROLES: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);

/// Per-CPU LRU lists: a flow's packets are mostly handled on one CPU, and
/// CPUs do not contend for a common list.
#[map]
static FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(16384, BPF_F_NO_COMMON_LRU);

/// Sized by the probe at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Where a record is put together before it is copied into the ring.
#[repr(C)]
struct Record {
    header: TcEventHeader,
    head: [u8; FRAMED_HEAD_CAPACITY],
}

#[map]
static SCRATCH: PerCpuArray<Record> = PerCpuArray::with_max_entries(1, 0);

/// `TC_ACT_UNSPEC` for netlink filters, `TCX_NEXT` for tcx links.
const CONTINUE: i32 = -1;

const ETH_HEADER_LEN: usize = 14;
const IPV4_MIN_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const TCP_MIN_HEADER_LEN: usize = 20;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[classifier]
pub fn apitrace_ingress(ctx: TcContext) -> i32 {
    let _ = observe(&ctx, Direction::Ingress);
    CONTINUE
}

#[classifier]
pub fn apitrace_egress(ctx: TcContext) -> i32 {
    let _ = observe(&ctx, Direction::Egress);
    CONTINUE
}

/// The parts of one TCP packet the program uses.
struct Packet {
    family: u8,
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    ip_id: u32,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload_offset: usize,
    payload_len: u32,
}

/// A pointer to a `T` at `offset` in the packet's linear data, if it is there.
#[inline(always)]
fn at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Reads a `T` at `offset` in place.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    // SAFETY: `at` checked that the bytes are inside the packet's linear data.
    at::<T>(ctx, offset).map(|pointer| unsafe { read_unaligned(pointer) })
}

#[inline(always)]
fn observe(ctx: &TcContext, direction: Direction) -> Option<()> {
    count(Counter::Packets);
    // The headers of a TCP packet are in the skb's linear part at TC. The
    // program never pulls data in: that makes the skb writable, which copies a
    // clone (every TCP segment on egress is one).
    let packet = parse(ctx)?;
    let pod_side = match direction {
        Direction::Ingress => &packet.dst_addr,
        Direction::Egress => &packet.src_addr,
    };
    // SAFETY: reading a field of the context the program was called with.
    let on_loopback = unsafe { (*ctx.skb.skb).ifindex } == LOOPBACK_IFINDEX;
    // Every packet on the pod's `lo` is the pod's; on `eth0`, its pod-side
    // address says whether it is (a pod shares a node's bridge with others).
    if !on_loopback && !is_pod_address(pod_side) {
        return None;
    }
    let src_role = port_role(packet.src_port);
    let dst_role = port_role(packet.dst_port);
    if src_role == PortRole::Infrastructure as u8 || dst_role == PortRole::Infrastructure as u8 {
        return None;
    }
    count(Counter::Matched);

    let flags = packet.flags;
    if flags & (TCP_SYN | TCP_RST | TCP_FIN) == 0 && packet.payload_len == 0 {
        // A pure ACK: nothing starts or ends here.
        return Some(());
    }
    let (key, side) = flow_key(&packet, on_loopback, dst_role);
    if flags & TCP_SYN != 0 {
        let kind = if flags & TCP_ACK != 0 {
            EventKind::Accept
        } else {
            // A new connection on this tuple: forget whatever an earlier one left.
            let _ = FLOWS.remove(key);
            EventKind::Open
        };
        emit(ctx, &packet, direction, kind, 0);
        return Some(());
    }
    if flags & TCP_RST != 0 {
        emit(ctx, &packet, direction, EventKind::Reset, 0);
        let _ = FLOWS.remove(key);
        return Some(());
    }
    if packet.payload_len > 0 {
        track_payload(ctx, &packet, direction, &key, side);
    }
    if flags & TCP_FIN != 0 {
        emit(ctx, &packet, direction, EventKind::Close, 0);
    }
    Some(())
}

#[inline(always)]
fn port_role(port: u16) -> u8 {
    PORT_ROLES.get(u32::from(port)).map_or(0, |role| *role)
}

#[inline(always)]
fn is_pod_address(addr: &AddrKey) -> bool {
    // SAFETY: a lookup in a map this program owns; the value is not kept.
    unsafe { TARGET_ADDRS.get(addr) }.is_some()
}

/// The packet's connection and its side. On `lo`, the app's connections that
/// the pod's iptables redirected to the sidecar's outbound capture port
/// (`REDIRECT` in the nat table's OUTPUT chain, which Istio's init container
/// installs) look like two: the requests go to the capture port on a loopback
/// address, and the replies, translated back before TC sees them, come from
/// the original destination, an address that is not the pod's. Both halves
/// are keyed by the app's endpoint, so that a message starts each time the
/// sender changes, as on any other connection.
#[inline(always)]
fn flow_key(packet: &Packet, on_loopback: bool, dst_role: u8) -> (FlowKey, usize) {
    if on_loopback {
        if dst_role == PortRole::OutboundCapture as u8
            && is_loopback(packet.family, &packet.dst_addr)
        {
            return FlowKey::redirected(packet.family, &packet.src_addr, packet.src_port, true);
        }
        if !is_loopback(packet.family, &packet.src_addr) && !is_pod_address(&packet.src_addr) {
            return FlowKey::redirected(packet.family, &packet.dst_addr, packet.dst_port, false);
        }
    }
    FlowKey::of(
        packet.family,
        &packet.src_addr,
        packet.src_port,
        &packet.dst_addr,
        packet.dst_port,
    )
}

/// The IPv4 header without options, as bytes (no alignment assumed).
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Header {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    fragment: [u8; 2],
    ttl: u8,
    protocol: u8,
    checksum: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Header {
    version_class_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// The TCP header without options.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHeader {
    src_port: [u8; 2],
    dst_port: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    data_offset: u8,
    flags: u8,
    window: [u8; 2],
    checksum: [u8; 2],
    urgent: [u8; 2],
}

/// Reads the headers. Each header is copied out of the packet after one bounds
/// check of its own, so that the verifier, which must follow every access at a
/// variable offset, sees a check right before it whatever LLVM makes of the
/// field reads.
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let ethertype = u16::from_be_bytes(read::<[u8; 2]>(ctx, 12)?);
    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    let (family, ip_id, tcp_offset, ip_payload_len) = match ethertype {
        ETH_P_IP => {
            let ip = read::<Ipv4Header>(ctx, ETH_HEADER_LEN)?;
            // Only the first fragment carries the TCP header.
            if ip.version_ihl >> 4 != 4
                || ip.protocol != IPPROTO_TCP
                || u16::from_be_bytes(ip.fragment) & 0x1fff != 0
            {
                return None;
            }
            let header_len = usize::from(ip.version_ihl & 0x0f) * 4;
            if header_len < IPV4_MIN_HEADER_LEN {
                return None;
            }
            src_addr[..4].copy_from_slice(&ip.src);
            dst_addr[..4].copy_from_slice(&ip.dst);
            let total_len = usize::from(u16::from_be_bytes(ip.total_len));
            (
                FAMILY_IPV4,
                u32::from(u16::from_be_bytes(ip.id)),
                ETH_HEADER_LEN + header_len,
                total_len.checked_sub(header_len)?,
            )
        }
        ETH_P_IPV6 => {
            let ip = read::<Ipv6Header>(ctx, ETH_HEADER_LEN)?;
            // Extension headers are not followed: pod traffic does not use them.
            if ip.next_header != IPPROTO_TCP {
                return None;
            }
            src_addr = ip.src;
            dst_addr = ip.dst;
            (
                FAMILY_IPV6,
                0,
                ETH_HEADER_LEN + IPV6_HEADER_LEN,
                usize::from(u16::from_be_bytes(ip.payload_len)),
            )
        }
        _ => return None,
    };
    let tcp = read::<TcpHeader>(ctx, tcp_offset)?;
    let tcp_header_len = usize::from(tcp.data_offset >> 4) * 4;
    if tcp_header_len < TCP_MIN_HEADER_LEN {
        return None;
    }
    Some(Packet {
        family,
        src_addr,
        dst_addr,
        ip_id,
        src_port: u16::from_be_bytes(tcp.src_port),
        dst_port: u16::from_be_bytes(tcp.dst_port),
        seq: u32::from_be_bytes(tcp.seq),
        ack: u32::from_be_bytes(tcp.ack),
        flags: tcp.flags,
        payload_offset: tcp_offset + tcp_header_len,
        payload_len: ip_payload_len.checked_sub(tcp_header_len)? as u32,
    })
}

/// Payload from `side`: what to write for it is
/// [`FlowState::opened_by`]'s or [`FlowState::on_packet`]'s decision, kept
/// in `FLOWS` between packets.
#[inline(always)]
fn track_payload(
    ctx: &TcContext,
    packet: &Packet,
    direction: Direction,
    key: &FlowKey,
    side: usize,
) {
    let Some(state) = FLOWS.get_ptr_mut(key) else {
        let end = packet.seq.wrapping_add(packet.payload_len);
        let (state, event) = FlowState::opened_by(side, end, head_kind(ctx, packet));
        if FLOWS.insert(key, state, 0).is_err() {
            count(Counter::FlowTableFull);
        }
        write_payload_event(ctx, packet, direction, event);
        return;
    };
    // SAFETY: the pointer comes from a successful lookup in our LRU map; the
    // entry may be evicted concurrently, which at worst loses this update.
    let state = unsafe { &mut *state };
    let event = state.on_packet(side, packet.seq, packet.payload_len, || {
        head_kind(ctx, packet)
    });
    write_payload_event(ctx, packet, direction, event);
}

#[inline(always)]
fn write_payload_event(
    ctx: &TcContext,
    packet: &Packet,
    direction: Direction,
    event: PayloadEvent,
) {
    match event {
        PayloadEvent::Message { capacity } => {
            emit(ctx, packet, direction, EventKind::Message, capacity);
        }
        PayloadEvent::Retransmission => emit(ctx, packet, direction, EventKind::Retransmit, 0),
        PayloadEvent::Nothing => {}
    }
}

/// What a payload's first four bytes say it starts (see [`HeadKind::of`]);
/// [`HeadKind::Other`] when it is shorter.
#[inline(always)]
fn head_kind(ctx: &TcContext, packet: &Packet) -> HeadKind {
    let mut prefix = [0u8; 4];
    // SAFETY: loading four bytes into a local buffer of four bytes.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            packet.payload_offset as u32,
            prefix.as_mut_ptr().cast(),
            4,
        )
    };
    if loaded == 0 {
        HeadKind::of(&prefix)
    } else {
        HeadKind::Other
    }
}

/// Writes one event: the header, and for a message the first bytes of its
/// payload, into the ring. A function of its own (a BPF-to-BPF call), not
/// inlined at each of its call sites: its frame is then counted once against
/// the program's 512-byte stack.
#[inline(never)]
fn emit(ctx: &TcContext, packet: &Packet, direction: Direction, kind: EventKind, capacity: usize) {
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the scratch record is this CPU's alone while the program runs.
    let record = unsafe { &mut *record };
    let header = &mut record.header;
    // SAFETY: a helper without arguments.
    header.monotonic_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: reading a field of the context the program was called with.
    header.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    header.payload_len = packet.payload_len;
    header.seq = packet.seq;
    header.ack = packet.ack;
    header.ip_id = packet.ip_id;
    header.src_port = packet.src_port;
    header.dst_port = packet.dst_port;
    header.src_addr = packet.src_addr;
    header.dst_addr = packet.dst_addr;
    header.kind = kind as u8;
    header.family = packet.family;
    header.direction = direction as u8;
    header.tcp_flags = packet.flags;
    header.head_len = 0;
    header._padding = [0; 2];
    let mut head_len = 0;
    if kind == EventKind::Message && packet.payload_len > 0 {
        let offset = packet.payload_offset;
        let len = packet.payload_len as usize;
        // The verifier must see a length in 1..=capacity. LLVM folds range checks
        // into forms it cannot follow; masking `len - 1` (a no-op for lengths in
        // range, as capacities are powers of two) keeps the bound visible.
        let len = if capacity == FRAMED_HEAD_CAPACITY {
            ((len.min(FRAMED_HEAD_CAPACITY) - 1) & (FRAMED_HEAD_CAPACITY - 1)) + 1
        } else if capacity == REQUEST_HEAD_CAPACITY {
            ((len.min(REQUEST_HEAD_CAPACITY) - 1) & (REQUEST_HEAD_CAPACITY - 1)) + 1
        } else {
            ((len.min(OTHER_HEAD_CAPACITY) - 1) & (OTHER_HEAD_CAPACITY - 1)) + 1
        };
        // SAFETY: `len` is at most the capacity of `head`.
        let loaded = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                offset as u32,
                record.head.as_mut_ptr().cast(),
                len as u32,
            )
        };
        if loaded == 0 {
            head_len = len;
            record.header.head_len = len as u16;
        }
    }
    let size = HEADER_SIZE + (head_len & (FRAMED_HEAD_CAPACITY * 2 - 1));
    // SAFETY: `size` is at most the size of the record.
    let bytes =
        unsafe { core::slice::from_raw_parts((record as *const Record).cast::<u8>(), size) };
    // Waking the reader for every record costs an interrupt each (a VM exit
    // in a VM): the reader drains on a short timer, and is woken early only
    // when the ring is a quarter full.
    let filling =
        EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) * 4 >= EVENTS.query(u64::from(BPF_RB_RING_SIZE));
    let flags = if filling {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<[u8]>(bytes, u64::from(flags)).is_ok() {
        count(Counter::Emitted);
    } else {
        count(Counter::RingFull);
    }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of this CPU; programs do not migrate mid-run.
        unsafe { *slot += 1 };
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// The host build exists only so that the workspace can check and lint this
/// crate; the program runs in the kernel.
#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("apitrace-tc is an eBPF object; the probe loads it into the kernel");
    std::process::exit(2);
}
