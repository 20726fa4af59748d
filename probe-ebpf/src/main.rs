//! The TC program of `kubectl apitrace`.
//!
//! It runs on every packet of a traced pod's interfaces, so it does as little as
//! it can per packet: one lookup of the packet's pod-side address in
//! `TARGET_ADDRS` decides whether the packet matters at all. For traced TCP flows
//! it keeps per-connection state in an LRU map and writes an event to the ring
//! buffer only at boundaries: SYN, SYN+ACK, FIN, RST, the first payload packet of
//! each message (the direction of payload changed), and retransmissions. The
//! first bytes of each message travel with its event so that the probe can read
//! an HTTP/1.x head where the traffic is plaintext.
//!
//! Both programs return "continue" (`TC_ACT_UNSPEC`, which is `TCX_NEXT` for tcx
//! links): they observe and never change a verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use apitrace_tc_event::{
    AddrKey, COUNTER_SLOTS, Counter, Direction, EventKind, FAMILY_IPV4, FAMILY_IPV6, FlowKey,
    FlowState, HEAD_CAPACITY, PortKey, TcEvent, seq_before,
};
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};

/// Addresses of the traced pod (and 127.0.0.1/::1 for its loopback): the
/// packet's pod-side address must be one of them.
#[map]
static TARGET_ADDRS: HashMap<AddrKey, u8> = HashMap::with_max_entries(16, 0);

/// Ports whose traffic is infrastructure, not API calls (the probe's own ingest,
/// Istio's agent, admin and xDS ports).
#[map]
static IGNORED_PORTS: HashMap<PortKey, u8> = HashMap::with_max_entries(64, 0);

#[map]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(16384, 0);

/// Sized by the probe at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// `TC_ACT_UNSPEC` for netlink filters, `TCX_NEXT` for tcx links.
const CONTINUE: i32 = -1;

const ETH_HEADER_LEN: usize = 14;
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

/// The addresses and ports of one TCP packet, and where its payload starts.
struct Packet {
    family: u8,
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    ip_id: u32,
    tcp_offset: usize,
    /// IP payload length: TCP header plus TCP payload.
    ip_payload_len: usize,
}

#[inline(always)]
fn observe(ctx: &TcContext, direction: Direction) -> Option<()> {
    count(Counter::Packets);
    let packet = parse_ip(ctx)?;
    let pod_side = match direction {
        Direction::Ingress => &packet.dst_addr,
        Direction::Egress => &packet.src_addr,
    };
    // SAFETY: a lookup in a map this program owns; the value is not kept.
    unsafe { TARGET_ADDRS.get(pod_side) }?;

    let tcp = packet.tcp_offset;
    let src_port = u16::from_be(ctx.load::<u16>(tcp).ok()?);
    let dst_port = u16::from_be(ctx.load::<u16>(tcp + 2).ok()?);
    // SAFETY: as above.
    if unsafe { IGNORED_PORTS.get(src_port).is_some() || IGNORED_PORTS.get(dst_port).is_some() } {
        return None;
    }
    count(Counter::Matched);

    let seq = u32::from_be(ctx.load::<u32>(tcp + 4).ok()?);
    let ack = u32::from_be(ctx.load::<u32>(tcp + 8).ok()?);
    let tcp_header_len = usize::from(ctx.load::<u8>(tcp + 12).ok()? >> 4) * 4;
    let flags = ctx.load::<u8>(tcp + 13).ok()?;
    let payload_len = packet.ip_payload_len.checked_sub(tcp_header_len)?;
    let payload_offset = tcp + tcp_header_len;

    let (key, side) = FlowKey::of(
        packet.family,
        packet.src_addr,
        src_port,
        packet.dst_addr,
        dst_port,
    );
    let event = Header {
        packet: &packet,
        direction,
        src_port,
        dst_port,
        seq,
        ack,
        flags,
        payload_len: payload_len as u32,
    };

    if flags & TCP_SYN != 0 {
        let kind = if flags & TCP_ACK != 0 {
            EventKind::Accept
        } else {
            // A new connection on this tuple: forget whatever an earlier one left.
            let _ = FLOWS.remove(key);
            EventKind::Open
        };
        emit(ctx, &event, kind, 0);
        return Some(());
    }
    if flags & TCP_RST != 0 {
        emit(ctx, &event, EventKind::Reset, 0);
        let _ = FLOWS.remove(key);
        return Some(());
    }
    if payload_len > 0 {
        track_payload(ctx, &event, &key, side, payload_offset);
    }
    if flags & TCP_FIN != 0 {
        emit(ctx, &event, EventKind::Close, 0);
    }
    Some(())
}

#[inline(always)]
fn parse_ip(ctx: &TcContext) -> Option<Packet> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
    let ip = ETH_HEADER_LEN;
    let mut src_addr = [0u8; 16];
    let mut dst_addr = [0u8; 16];
    match ethertype {
        ETH_P_IP => {
            let version_ihl = ctx.load::<u8>(ip).ok()?;
            if version_ihl >> 4 != 4 || ctx.load::<u8>(ip + 9).ok()? != IPPROTO_TCP {
                return None;
            }
            // Only the first fragment carries the TCP header.
            if u16::from_be(ctx.load::<u16>(ip + 6).ok()?) & 0x1fff != 0 {
                return None;
            }
            let header_len = usize::from(version_ihl & 0x0f) * 4;
            let total_len = usize::from(u16::from_be(ctx.load::<u16>(ip + 2).ok()?));
            let ip_id = u32::from(u16::from_be(ctx.load::<u16>(ip + 4).ok()?));
            src_addr[..4].copy_from_slice(&ctx.load::<[u8; 4]>(ip + 12).ok()?);
            dst_addr[..4].copy_from_slice(&ctx.load::<[u8; 4]>(ip + 16).ok()?);
            Some(Packet {
                family: FAMILY_IPV4,
                src_addr,
                dst_addr,
                ip_id,
                tcp_offset: ip + header_len,
                ip_payload_len: total_len.checked_sub(header_len)?,
            })
        }
        ETH_P_IPV6 => {
            if ctx.load::<u8>(ip + 6).ok()? != IPPROTO_TCP {
                return None;
            }
            let payload_len = usize::from(u16::from_be(ctx.load::<u16>(ip + 4).ok()?));
            src_addr = ctx.load::<[u8; 16]>(ip + 8).ok()?;
            dst_addr = ctx.load::<[u8; 16]>(ip + 24).ok()?;
            Some(Packet {
                family: FAMILY_IPV6,
                src_addr,
                dst_addr,
                ip_id: 0,
                tcp_offset: ip + 40,
                ip_payload_len: payload_len,
            })
        }
        _ => None,
    }
}

/// Payload from `side`: a new message when the other side spoke last, a
/// retransmission when its sequence range was already seen.
#[inline(always)]
fn track_payload(
    ctx: &TcContext,
    event: &Header<'_>,
    key: &FlowKey,
    side: usize,
    payload_offset: usize,
) {
    let end = event.seq.wrapping_add(event.payload_len);
    let Some(state) = FLOWS.get_ptr_mut(key) else {
        let mut state = FlowState {
            last_sender: side as u8,
            ..FlowState::default()
        };
        state.next_seq[side & 1] = end;
        state.seen[side & 1] = 1;
        if FLOWS.insert(key, state, 0).is_err() {
            count(Counter::FlowTableFull);
        }
        emit(ctx, event, EventKind::Message, payload_offset);
        return;
    };
    // SAFETY: the pointer comes from a successful lookup in our LRU map; the
    // entry may be evicted concurrently, which at worst loses this update.
    let state = unsafe { &mut *state };
    let side = side & 1;
    if state.seen[side] != 0 && seq_before(event.seq, state.next_seq[side]) {
        emit(ctx, event, EventKind::Retransmit, 0);
        if seq_before(state.next_seq[side], end) {
            state.next_seq[side] = end;
        }
        return;
    }
    state.next_seq[side] = end;
    state.seen[side] = 1;
    if state.last_sender != side as u8 {
        state.last_sender = side as u8;
        emit(ctx, event, EventKind::Message, payload_offset);
    }
}

/// The fields every event of a packet shares.
struct Header<'a> {
    packet: &'a Packet,
    direction: Direction,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload_len: u32,
}

/// Writes one event. `head_offset` is where the payload starts for
/// [`EventKind::Message`] events (whose first bytes are copied) and 0 otherwise.
#[inline(always)]
fn emit(ctx: &TcContext, header: &Header<'_>, kind: EventKind, head_offset: usize) {
    let Some(mut entry) = EVENTS.reserve::<TcEvent>(0) else {
        count(Counter::RingFull);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points to a reserved, exclusively owned ring-buffer record
    // of the right size; every field is written before it is submitted.
    unsafe {
        (*event).monotonic_ns = bpf_ktime_get_ns();
        (*event).ifindex = (*ctx.skb.skb).ifindex;
        (*event).payload_len = header.payload_len;
        (*event).seq = header.seq;
        (*event).ack = header.ack;
        (*event).ip_id = header.packet.ip_id;
        (*event).src_port = header.src_port;
        (*event).dst_port = header.dst_port;
        (*event).src_addr = header.packet.src_addr;
        (*event).dst_addr = header.packet.dst_addr;
        (*event).kind = kind as u8;
        (*event).family = header.packet.family;
        (*event).direction = header.direction as u8;
        (*event).tcp_flags = header.flags;
        (*event)._padding = [0; 2];
        (*event).head_len = 0;
        if head_offset != 0 && header.payload_len > 0 {
            let len = (header.payload_len as usize).min(HEAD_CAPACITY);
            // The verifier must see a length in 1..=HEAD_CAPACITY. LLVM folds range
            // checks into forms it cannot follow; masking `len - 1` (a no-op for
            // lengths in range, as the capacity is a power of two) keeps the bound
            // visible.
            let len = ((len - 1) & (HEAD_CAPACITY - 1)) + 1;
            if bpf_skb_load_bytes(
                ctx.skb.skb.cast(),
                head_offset as u32,
                (*event).head.as_mut_ptr().cast(),
                len as u32,
            ) == 0
            {
                (*event).head_len = len as u16;
            }
        }
    }
    entry.submit(0);
    count(Counter::Emitted);
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
