//! Loading the TC program for a pod, attaching it inside the pod's network
//! namespace, and turning its ring-buffer records into [`TcEvent`]s.
//!
//! Each traced pod gets its own instance of the program (its own maps and ring
//! buffer): every pod's loopback is `lo` with the same addresses, so the ring an
//! event arrives on is what tells the pods apart, and a busy pod cannot overrun
//! another pod's ring.
//!
//! Attachments are tcx links where the kernel has them (6.6+): a link lives as
//! long as the probe's file descriptor, so a probe killed with SIGKILL leaves
//! nothing attached. Older kernels get netlink `clsact` filters, which outlive
//! the process: the probe removes its own on exit and sweeps stale apitrace
//! filters before attaching.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use apitrace_proto::{
    Attachment, AttachmentMode, Endpoint, PayloadKind, PodRef, TcDirection, TcEvent, TcKind,
    event::Kind, istio,
};
use apitrace_tc_event::{
    AddrKey, COUNTER_SLOTS, Counter, Direction, EventKind, FAMILY_IPV4, PortRole,
    TcEvent as RawEvent,
    names::{COUNTERS, EGRESS_PROGRAM, EVENTS, INGRESS_PROGRAM, PORT_ROLES, TARGET_ADDRS},
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{NlOptions, TcAttachOptions, qdisc_add_clsact, qdisc_detach_program},
    },
    util::KernelVersion,
};
use tokio::io::{Interest, unix::AsyncFd};

use apitrace_netns::{Netns, NetnsError, NetnsRef};

use crate::{counters::Counters, http_head, http2::Frames, hub::Hub};

/// The TC program, built by `build.rs` for `bpfel-unknown-none`.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apitrace-tc.o"));

/// Ring buffers need Linux 5.8; tcx links 6.6.
const RING_BUFFER_KERNEL: KernelVersion = KernelVersion::new(5, 8, 0);
const TCX_KERNEL: KernelVersion = KernelVersion::new(6, 6, 0);

pub use apitrace_proto::probe_args::AttachMode;

#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error(
        "this kernel ({}.{}.{}) has no BPF ring buffers, which the probe needs: run it on Linux 5.8 or newer",
        .0.0, .0.1, .0.2
    )]
    KernelTooOld((u8, u8, u16)),
    #[error("cannot read the kernel version: {0}")]
    KernelVersion(String),
    #[error("the kernel refused the TC program: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("the kernel refused {program}: {source}")]
    Program {
        program: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("the TC program has no map {0}; the embedded object does not match this probe")]
    MissingMap(&'static str),
    #[error("the TC program has no program {0}; the embedded object does not match this probe")]
    MissingProgram(&'static str),
    #[error("cannot use map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("pod {pod} has no interface {interface}")]
    NoInterface { pod: String, interface: String },
    #[error("cannot attach to {interface} of pod {pod}: {source}")]
    Attach {
        pod: String,
        interface: String,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("cannot prepare {interface} of pod {pod} for netlink filters: {source}")]
    Clsact {
        pod: String,
        interface: String,
        source: Box<aya::programs::tc::TcError>,
    },
    #[error("cannot list the addresses of pod {pod}: {source}")]
    Addresses { pod: String, source: nix::Error },
    #[error("cannot watch the ring buffer of pod {pod}: {source}")]
    Ring { pod: String, source: std::io::Error },
}

/// A pod to trace.
#[derive(Debug, Clone)]
pub struct Target {
    pub pod: PodRef,
    pub netns: NetnsRef,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
    pub ring_bytes: u32,
    pub ignored_ports: Vec<u16>,
}

/// The mode `requested` resolves to on this kernel.
pub fn resolve_mode(requested: AttachMode) -> Result<AttachMode, TcError> {
    let kernel = KernelVersion::current().map_err(|e| TcError::KernelVersion(e.to_string()))?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    resolve_mode_on(requested, kernel, parse_release(&release))
}

/// [`resolve_mode`] for a given kernel: `version` for the comparisons, and
/// `release` (major, minor, patch) to name it in an error.
fn resolve_mode_on(
    requested: AttachMode,
    version: KernelVersion,
    release: (u8, u8, u16),
) -> Result<AttachMode, TcError> {
    if version < RING_BUFFER_KERNEL {
        return Err(TcError::KernelTooOld(release));
    }
    Ok(match requested {
        AttachMode::Auto if version >= TCX_KERNEL => AttachMode::Tcx,
        AttachMode::Auto => AttachMode::Netlink,
        explicit => explicit,
    })
}

/// `5.15.0-78-generic` -> (5, 15, 0).
fn parse_release(release: &str) -> (u8, u8, u16) {
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u16>().unwrap_or(0));
    let mut next = || numbers.next().unwrap_or(0);
    let (major, minor, patch) = (next(), next(), next());
    (
        u8::try_from(major).unwrap_or(u8::MAX),
        u8::try_from(minor).unwrap_or(u8::MAX),
        patch,
    )
}

/// A traced pod: its program instance (which owns the attachments) and what
/// the probe learnt about the pod inside its namespace.
pub struct PodTap {
    pub target: Target,
    netns: Netns,
    ebpf: Ebpf,
    pub addresses: Vec<IpAddr>,
    pub attachments: Vec<Attachment>,
    interfaces: HashMap<u32, String>,
}

impl PodTap {
    /// Loads an instance of the program for `target` and attaches it to the
    /// pod's interfaces. `mode` must be resolved (tcx or netlink).
    pub fn attach(target: Target, options: &Options, mode: AttachMode) -> Result<Self, TcError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(EVENTS, options.ring_bytes)
            .load(PROGRAM)
            .map_err(|error| TcError::Load(Box::new(error)))?;
        for name in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| TcError::Program {
                    program: name,
                    source: Box::new(source),
                })?;
        }
        let roles = ebpf
            .map_mut(PORT_ROLES)
            .ok_or(TcError::MissingMap(PORT_ROLES))?;
        let mut roles: Array<_, u8> = Array::try_from(roles).map_err(|source| TcError::Map {
            name: PORT_ROLES,
            source: Box::new(source),
        })?;
        let infrastructure = options
            .ignored_ports
            .iter()
            .map(|&port| (port, PortRole::Infrastructure));
        let capture = [(istio::OUTBOUND_CAPTURE_PORT, PortRole::OutboundCapture)];
        for (port, role) in infrastructure.chain(capture) {
            roles
                .set(u32::from(port), role as u8, 0)
                .map_err(|source| TcError::Map {
                    name: PORT_ROLES,
                    source: Box::new(source),
                })?;
        }
        let pod = pod_name(&target.pod);
        let netns = Netns::open(&target.netns.resolve()?)?;
        let (addresses, interfaces, attachments) =
            netns.run(|| attach_inside(&mut ebpf, &target.pod, &pod, options, mode))??;
        Ok(Self {
            target,
            netns,
            ebpf,
            addresses,
            attachments,
            interfaces,
        })
    }

    /// Starts forwarding this pod's events to `hub`. The returned tap keeps the
    /// attachments alive; [`PodTap::detach`] removes them.
    pub fn stream(&mut self, hub: Hub) -> Result<KernelCounters, TcError> {
        let ring: RingBuf<MapData> = take_map(&mut self.ebpf, EVENTS)?;
        // SAFETY: the ring buffer owns its map's file descriptor for as long as it
        // lives, and the AsyncFd owns the ring buffer: the descriptor stays open
        // and the same for the AsyncFd's whole life.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(
            |error| TcError::Ring {
                pod: pod_name(&self.target.pod),
                source: error.into_parts().1,
            },
        )?;
        let decoder = Decoder {
            pod: self.target.pod.clone(),
            interfaces: self.interfaces.clone(),
            frames: Frames::default(),
        };
        tokio::spawn(read_ring(ring, decoder, hub));
        let counters = take_map(&mut self.ebpf, COUNTERS)?;
        Ok(KernelCounters(counters))
    }

    /// Removes the attachments. Netlink filters are removed by interface index,
    /// which only means something inside the pod's namespace, so the program
    /// instance is dropped there.
    pub fn detach(self) {
        let Self { netns, ebpf, .. } = self;
        // The thread can only fail to enter a namespace this probe holds open if
        // the system is out of threads; dropping here then still closes tcx links.
        let _ = netns.run(move || drop(ebpf));
    }
}

type Discovered = (Vec<IpAddr>, HashMap<u32, String>, Vec<Attachment>);

/// Runs inside the pod's namespace: finds its addresses, fills the target map,
/// and attaches (ingress and egress on `eth0`; egress only on `lo`, where every
/// packet passes both ways and one side is enough).
fn attach_inside(
    ebpf: &mut Ebpf,
    pod_ref: &PodRef,
    pod: &str,
    options: &Options,
    mode: AttachMode,
) -> Result<Discovered, TcError> {
    let mut addresses = Vec::new();
    let mut interfaces = HashMap::new();
    for interface in &options.interfaces {
        let index = nix::net::if_::if_nametoindex(interface.as_str()).map_err(|_| {
            TcError::NoInterface {
                pod: pod.to_owned(),
                interface: interface.clone(),
            }
        })?;
        interfaces.insert(index, interface.clone());
    }
    let all = nix::ifaddrs::getifaddrs().map_err(|source| TcError::Addresses {
        pod: pod.to_owned(),
        source,
    })?;
    for address in all {
        if !options.interfaces.contains(&address.interface_name) {
            continue;
        }
        let ip = address.address.as_ref().and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        });
        if let Some(ip) = ip.filter(|ip| !addresses.contains(ip)) {
            addresses.push(ip);
        }
    }
    // The sidecar's connections to its app come from Istio's inbound
    // passthrough bind addresses on `lo`: the pod's own, though no interface
    // carries them (127.0.0.6 is loopback to the program already; ::6 is not).
    let sidecar_binds = [
        IpAddr::V4(istio::INBOUND_PASSTHROUGH_BIND_V4),
        IpAddr::V6(istio::INBOUND_PASSTHROUGH_BIND_V6),
    ];
    let mut targets: BpfHashMap<_, AddrKey, u8> = map(ebpf, TARGET_ADDRS)?;
    for ip in addresses.iter().chain(&sidecar_binds) {
        targets
            .insert(addr_key(*ip), 1, 0)
            .map_err(|source| TcError::Map {
                name: TARGET_ADDRS,
                source: Box::new(source),
            })?;
    }

    let netlink = mode == AttachMode::Netlink;
    let mut attachments = Vec::new();
    for interface in &options.interfaces {
        let hooks: &[(&'static str, TcAttachType)] = if interface == "lo" {
            &[(EGRESS_PROGRAM, TcAttachType::Egress)]
        } else {
            &[
                (INGRESS_PROGRAM, TcAttachType::Ingress),
                (EGRESS_PROGRAM, TcAttachType::Egress),
            ]
        };
        let attach_error = |source| TcError::Attach {
            pod: pod.to_owned(),
            interface: interface.clone(),
            source: Box::new(source),
        };
        if netlink {
            sweep_stale(interface);
            if let Err(source) = qdisc_add_clsact(interface) {
                // EEXIST: the qdisc is there already, which is what we need.
                if !matches!(&source, aya::programs::tc::TcError::NetlinkError(e) if e.raw_os_error() == Some(libc::EEXIST))
                {
                    return Err(TcError::Clsact {
                        pod: pod.to_owned(),
                        interface: interface.clone(),
                        source: Box::new(source),
                    });
                }
            }
        }
        for &(program, hook) in hooks {
            let attach_options = if netlink {
                TcAttachOptions::Netlink(NlOptions::default())
            } else {
                TcAttachOptions::TcxOrder(LinkOrder::default())
            };
            classifier(ebpf, program)?
                .attach_with_options(interface, hook, attach_options)
                .map_err(attach_error)?;
        }
        attachments.push(Attachment {
            pod: Some(pod_ref.clone()),
            interface: interface.clone(),
            mode: if netlink {
                AttachmentMode::Netlink
            } else {
                AttachmentMode::Tcx
            }
            .into(),
        });
    }
    Ok((addresses, interfaces, attachments))
}

/// Removes netlink filters an earlier probe left on `interface` (it was killed
/// before it could). Filters are found by our programs' names, so nothing
/// else is touched.
fn sweep_stale(interface: &str) {
    for (program, hook) in [
        (INGRESS_PROGRAM, TcAttachType::Ingress),
        (EGRESS_PROGRAM, TcAttachType::Egress),
    ] {
        // "Not found" is the common case: nothing was left.
        let _ = qdisc_detach_program(interface, hook, program);
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, TcError> {
    ebpf.program_mut(name)
        .ok_or(TcError::MissingProgram(name))?
        .try_into()
        .map_err(|source| TcError::Program {
            program: name,
            source: Box::new(source),
        })
}

fn map<'a, K: aya::Pod, V: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<&'a mut MapData, K, V>, TcError> {
    let map = ebpf.map_mut(name).ok_or(TcError::MissingMap(name))?;
    BpfHashMap::try_from(map).map_err(|source| TcError::Map {
        name,
        source: Box::new(source),
    })
}

/// Takes a map out of the instance, typed: its owner then is whoever reads it.
fn take_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, TcError> {
    let map = ebpf.take_map(name).ok_or(TcError::MissingMap(name))?;
    T::try_from(map).map_err(|source| TcError::Map {
        name,
        source: Box::new(source),
    })
}

fn addr_key(ip: IpAddr) -> AddrKey {
    let mut key = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => key[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => key = v6.octets(),
    }
    key
}

fn pod_name(pod: &PodRef) -> String {
    format!("{}/{}", pod.namespace, pod.name)
}

/// The TC program's own counters of one pod instance.
pub struct KernelCounters(PerCpuArray<MapData, u64>);

impl KernelCounters {
    fn read(&self, counter: Counter) -> u64 {
        debug_assert!((counter as u32) < COUNTER_SLOTS);
        self.0
            .get(&(counter as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

/// Copies the counts the TC program keeps, summed over every pod instance,
/// into `counters`.
pub fn publish_kernel_counters(taps: &[KernelCounters], counters: &Counters) {
    let sum = |counter| taps.iter().map(|tap| tap.read(counter)).sum();
    Counters::store(&counters.tc_packets, sum(Counter::Packets));
    Counters::store(&counters.tc_packets_traced, sum(Counter::Matched));
    Counters::store(&counters.tc_ring_full, sum(Counter::RingFull));
    Counters::store(&counters.tc_flow_table_full, sum(Counter::FlowTableFull));
}

/// Turns raw records of one pod's ring into protocol events.
struct Decoder {
    pod: PodRef,
    interfaces: HashMap<u32, String>,
    /// The pod's h2c connections, whose packets become one message start
    /// per stream.
    frames: Frames,
}

impl Decoder {
    fn decode(&self, record: &RawEvent<'_>, clock: &Clock) -> TcEvent {
        let raw = &record.header;
        let ip = |addr: &[u8; 16]| -> String {
            if raw.family == FAMILY_IPV4 {
                Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string()
            } else {
                Ipv6Addr::from(*addr).to_string()
            }
        };
        let kind = record.kind();
        let (http, payload) = if kind == Some(EventKind::Message) {
            let http = http_head::parse(record.head);
            let payload = http_head::classify(record.head, http.is_some());
            (http, payload)
        } else {
            (None, PayloadKind::Unspecified)
        };
        TcEvent {
            time_unix_nano: clock.unix_nanos(raw.monotonic_ns),
            pod: Some(self.pod.clone()),
            interface: self
                .interfaces
                .get(&raw.ifindex)
                .cloned()
                .unwrap_or_else(|| raw.ifindex.to_string()),
            direction: match record.direction() {
                Some(Direction::Ingress) => TcDirection::Ingress,
                Some(Direction::Egress) => TcDirection::Egress,
                None => TcDirection::Unspecified,
            } as i32,
            kind: match kind {
                Some(EventKind::Open) => TcKind::Open,
                Some(EventKind::Accept) => TcKind::Accept,
                Some(EventKind::Close) => TcKind::Close,
                Some(EventKind::Reset) => TcKind::Reset,
                Some(EventKind::Message) => TcKind::Message,
                Some(EventKind::Retransmit) => TcKind::Retransmit,
                None => TcKind::Unspecified,
            } as i32,
            src: Some(Endpoint::new(ip(&raw.src_addr), u32::from(raw.src_port))),
            dst: Some(Endpoint::new(ip(&raw.dst_addr), u32::from(raw.dst_port))),
            ip_id: raw.ip_id,
            tcp_seq: raw.seq,
            tcp_ack: raw.ack,
            tcp_flags: u32::from(raw.tcp_flags),
            payload_len: raw.payload_len,
            http,
            payload: payload as i32,
            http2_stream: 0,
        }
    }
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps to Unix time.
struct Clock {
    offset_ns: i128,
}

impl Clock {
    /// Samples both clocks now. Sampled again for every batch of records, so
    /// that clock adjustments are followed.
    fn now() -> Self {
        let nanos = |clock| {
            nix::time::clock_gettime(clock)
                .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
                .unwrap_or(0)
        };
        Self {
            offset_ns: nanos(nix::time::ClockId::CLOCK_REALTIME)
                - nanos(nix::time::ClockId::CLOCK_MONOTONIC),
        }
    }

    fn unix_nanos(&self, monotonic_ns: u64) -> i64 {
        (i128::from(monotonic_ns) + self.offset_ns)
            .try_into()
            .unwrap_or(0)
    }
}

/// How often the ring is drained without being woken: the TC program wakes
/// the reader only when the ring is a quarter full, so that a busy pod does
/// not cost an interrupt per event. Bounds how late an event can be.
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

async fn read_ring(mut ring: AsyncFd<RingBuf<MapData>>, mut decoder: Decoder, hub: Hub) {
    let counters = Arc::clone(hub.counters());
    loop {
        match tokio::time::timeout(DRAIN_INTERVAL, ring.readable_mut()).await {
            Ok(Ok(mut guard)) => guard.clear_ready(),
            Ok(Err(_)) => return,
            // The interval passed without a wake-up: drain what is there.
            Err(_) => {}
        }
        let clock = Clock::now();
        let ring = ring.get_mut();
        while let Some(record) = ring.next() {
            match RawEvent::decode(&record) {
                Some(raw) => {
                    Counters::increment(&counters.tc_events);
                    let event = decoder.decode(&raw, &clock);
                    let published = decoder.frames.on_record(&raw, event);
                    Counters::add(&counters.tc_http2_unfollowed, published.lost);
                    for event in published.events {
                        hub.publish(Kind::Tc(event));
                    }
                }
                None => Counters::increment(&counters.tc_malformed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(version: (u8, u8, u16), requested: AttachMode) -> Result<AttachMode, TcError> {
        let (major, minor, patch) = version;
        resolve_mode_on(requested, KernelVersion::new(major, minor, patch), version)
    }

    /// The names are written twice, as items of the eBPF crate and as the
    /// constants the probe looks them up by: the built object must carry
    /// every one, with the kind the probe takes it as.
    #[test]
    fn the_object_has_every_name_the_probe_looks_up() {
        let object = aya_obj::Object::parse(PROGRAM).expect("the built TC object parses");
        for program in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
            assert!(
                matches!(
                    object.programs.get(program).map(|program| &program.section),
                    Some(aya_obj::ProgramSection::SchedClassifier)
                ),
                "no classifier {program} in the object: {:?}",
                object.programs.keys().collect::<Vec<_>>()
            );
        }
        for map in [TARGET_ADDRS, PORT_ROLES, EVENTS, COUNTERS] {
            assert!(
                object.maps.contains_key(map),
                "no map {map} in the object: {:?}",
                object.maps.keys().collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn kernels_without_ring_buffers_are_refused_by_name() {
        let error = on((5, 4, 0), AttachMode::Auto).unwrap_err();
        assert_eq!(
            error.to_string(),
            "this kernel (5.4.0) has no BPF ring buffers, which the probe needs: run it on Linux 5.8 or newer"
        );
    }

    #[test]
    fn tcx_from_6_6_and_netlink_before_unless_asked() {
        assert_eq!(
            on((5, 15, 0), AttachMode::Auto).unwrap(),
            AttachMode::Netlink
        );
        assert_eq!(on((6, 6, 0), AttachMode::Auto).unwrap(), AttachMode::Tcx);
        assert_eq!(
            on((6, 18, 44), AttachMode::Netlink).unwrap(),
            AttachMode::Netlink
        );
        assert_eq!(
            on((5, 8, 0), AttachMode::Auto).unwrap(),
            AttachMode::Netlink
        );
    }

    #[test]
    fn releases_parse_as_the_kernel_prints_them() {
        assert_eq!(parse_release("5.15.0-78-generic\n"), (5, 15, 0));
        assert_eq!(parse_release("6.18.44-fc-v669"), (6, 18, 44));
        assert_eq!(parse_release(""), (0, 0, 0));
    }
}
