//! A joined call, put together as a record.

use std::{borrow::Cow, sync::Arc};

use apitrace_proto::{AccessLog, Endpoint as ProtoEndpoint, GrpcCall, TrafficDirection};

use super::{
    calls::{PendingCall, UNIDENTIFIED},
    flow::{Flow, IpTexts},
    legs::Leg,
    wasm::{WasmPart, WasmText},
    wire::{ConnectionInfo, Packet},
};
use crate::{
    directory::{Directory, WorkloadKind},
    record::{
        AlsRecord, CallRecord, Endpoint, GrpcRecord, Hop, Latency, Layer, Peer, WasmRecord,
        WireRecord, WireScope, grpc_message_text, grpc_status_name, rfc3339,
    },
};

/// What a call took of the wire on one leg.
#[derive(Debug)]
pub(crate) enum TakenWire {
    /// Nothing: the leg was not seen, or not yet.
    None,
    /// The call's own request start, and its response's when it was seen.
    Request {
        request: Packet,
        response: Option<Packet>,
        retransmits: u32,
        resets: u32,
    },
    /// The connection, where the wire cannot tell its calls apart.
    Connection {
        info: ConnectionInfo,
        retransmits: u32,
        resets: u32,
    },
}

/// A leg and what the call took of it.
#[derive(Debug)]
pub(crate) struct TakenLeg {
    pub leg: Leg,
    pub wire: TakenWire,
}

impl TakenLeg {
    fn request(&self) -> Option<&Packet> {
        match &self.wire {
            TakenWire::Request { request, .. } => Some(request),
            _ => None,
        }
    }

    fn response(&self) -> Option<&Packet> {
        match &self.wire {
            TakenWire::Request { response, .. } => response.as_ref(),
            _ => None,
        }
    }

    /// What a record shows of the leg; `None` when the wire showed nothing.
    fn record(&self, ips: &mut IpTexts) -> Option<WireRecord> {
        let flow = &self.leg.request;
        let src = Endpoint {
            ip: ips.get(flow.src),
            port: u32::from(flow.src_port),
        };
        let dst = Endpoint {
            ip: ips.get(flow.dst),
            port: u32::from(flow.dst_port),
        };
        match &self.wire {
            TakenWire::None => None,
            TakenWire::Request {
                request,
                retransmits,
                resets,
                ..
            } => Some(WireRecord {
                ip_id: Some(request.ip_id),
                tcp_seq: Some(request.tcp_seq),
                payload_len: Some(request.payload_len),
                src,
                dst,
                interface: Arc::clone(&request.interface),
                time: Some(rfc3339(request.time_ns)),
                request_id: request
                    .head
                    .as_ref()
                    .and_then(|head| head.request_id())
                    .unwrap_or_default()
                    .to_owned(),
                retransmits: *retransmits,
                resets: *resets,
                scope: WireScope::Request,
                stream_id: (request.http2_stream != 0).then_some(request.http2_stream),
                // A request the wire could read was not encrypted.
                tls: false,
                handshake_us: None,
            }),
            TakenWire::Connection {
                info,
                retransmits,
                resets,
            } => Some(WireRecord {
                ip_id: info.opened.map(|first| first.ip_id),
                tcp_seq: info.opened.map(|first| first.tcp_seq),
                payload_len: None,
                src,
                dst,
                interface: info.interface.clone().unwrap_or_else(|| Arc::from("")),
                time: info.opened.map(|first| rfc3339(first.time_ns)),
                request_id: String::new(),
                retransmits: *retransmits,
                resets: *resets,
                scope: WireScope::Connection,
                stream_id: None,
                tls: info.tls,
                handshake_us: info
                    .opened
                    .zip(info.accepted_ns)
                    .map(|(first, accepted)| (accepted - first.time_ns) / 1_000),
            }),
        }
    }
}

/// What a call took of the wire on one hop's legs.
#[derive(Debug)]
pub(crate) struct TakenHop {
    pub downstream: Option<TakenLeg>,
    pub upstream: Option<TakenLeg>,
}

/// The record of `call`, its peers named from `directory`, with what it took
/// of the wire on each hop (in the order of its access logs) and an identified
/// request no leg took. The record takes the events' strings instead of
/// copying them: the events end here.
pub(crate) fn build_record(
    call: PendingCall,
    hops: Vec<TakenHop>,
    unassigned: Option<(Flow, Packet, Option<Packet>)>,
    directory: &Directory,
    ips: &mut IpTexts,
) -> CallRecord {
    let primary = call.primary_hop();
    let PendingCall {
        request_id,
        mut access_logs,
        hops: legs,
        wasm: mut wasm_events,
        ..
    } = call;
    let mut hop_records: Vec<(TrafficDirection, Hop)> = access_logs
        .iter()
        .zip(&legs)
        .map(|(log, legs)| (legs.direction, hop(log, legs.direction)))
        .collect();
    let primary_reporter = primary.map(|index| hop_records[index].1.reporter.clone());
    let mut log = primary.map(|index| access_logs.swap_remove(index));
    let primary_hop = primary.and_then(|index| hops.get(index));
    let primary_down = primary_hop.and_then(|hop| hop.downstream.as_ref());
    let primary_up = primary_hop.and_then(|hop| hop.upstream.as_ref());
    let mut wasm = wasm_events
        .iter()
        .position(WasmPart::is_inbound)
        .or_else(|| (!wasm_events.is_empty()).then_some(0))
        .map(|index| wasm_events.swap_remove(index));
    // The request line as the TC program read it: on the hop to the app, else
    // on the wire (where a request the sidecar rejected still shows it), else
    // on a request no leg took.
    let primary_up_request = primary_up.and_then(TakenLeg::request);
    let primary_down_request = primary_down.and_then(TakenLeg::request);
    let unassigned_request = unassigned.as_ref().map(|(_, request, _)| request);
    let [wire_method, wire_path, wire_version] =
        [primary_up_request, primary_down_request, unassigned_request]
            .into_iter()
            .flatten()
            .find_map(|request| request.head.as_ref()?.request_line())
            .map_or([None; 3], |line| line.map(Some));
    let protocol = first_given(log.as_mut().map(|l| &mut l.protocol), None, wire_version);
    let method = first_given(
        log.as_mut().map(|l| &mut l.method),
        wasm.as_ref().map(|w| w.text(WasmText::Method)),
        wire_method,
    );
    let path = first_given(
        log.as_mut().map(|l| &mut l.path),
        wasm.as_ref().map(|w| w.text(WasmText::Path)),
        wire_path,
    );

    let time_ns = log
        .as_ref()
        .map(|log| log.start_time_unix_nano)
        .or_else(|| wasm.as_ref().map(|w| w.time_ns))
        .or_else(|| primary_down_request.map(|request| request.time_ns))
        .or_else(|| unassigned_request.map(|request| request.time_ns))
        .unwrap_or_default();
    let caller_identity = log
        .as_mut()
        .filter(|_| primary.is_some_and(|index| legs[index].direction == TrafficDirection::Inbound))
        .and_then(|log| log.peer_uri_sans.drain(..).next());
    let (src, dst) = match (log.as_mut(), wasm.as_mut()) {
        // The downstream address stays in the log, for the record's `als`.
        (Some(log), _) => (log.downstream_remote.clone(), log.downstream_local.take()),
        (None, Some(wasm)) => (wasm.source(), wasm.destination()),
        // Seen by the TC program only (no sidecar logged it, or its entry is
        // late): the caller and the callee as the first packet shows them.
        (None, None) => {
            let first_packet = unassigned.as_ref().map(|(flow, _, _)| flow);
            (
                first_packet.map(Flow::source),
                first_packet.map(Flow::destination),
            )
        }
    };

    let mut layers = Vec::with_capacity(3);
    if log.is_some() {
        layers.push(Layer::Als);
    }
    if wasm.is_some() {
        layers.push(Layer::Wasm);
    }
    let any_wire = hops
        .iter()
        .flat_map(|hop| [&hop.downstream, &hop.upstream])
        .flatten()
        .any(|leg| !matches!(leg.wire, TakenWire::None));
    if any_wire || unassigned.is_some() {
        layers.push(Layer::Tc);
    }

    let status = log
        .as_ref()
        .map(|l| l.status)
        .filter(|status| *status != 0)
        .or_else(|| wasm.as_ref().map(|w| w.status))
        .or_else(|| {
            // The status line on the wire, where it was plaintext.
            let response = primary_up
                .and_then(TakenLeg::response)
                .or(primary_down.and_then(TakenLeg::response))
                .or(unassigned
                    .as_ref()
                    .and_then(|(_, _, response)| response.as_ref()));
            response?.head.as_ref()?.status()
        })
        .unwrap_or_default();
    let latency = log
        .as_ref()
        .map(|log| latency(log, primary_down, primary_up));
    // The id the wire showed: on the hop to the app, where the sidecar sent
    // it in plaintext.
    let wire_request_id = primary_up_request
        .into_iter()
        .chain(unassigned_request)
        .chain(
            hops.iter()
                .flat_map(|hop| [&hop.downstream, &hop.upstream])
                .flatten()
                .filter_map(TakenLeg::request),
        )
        .find_map(|request| request.head.as_ref()?.request_id())
        .map(str::to_owned)
        .unwrap_or_default();
    let tc = primary_down
        .and_then(|leg| leg.record(ips))
        .map(|mut record| {
            record.request_id.clone_from(&wire_request_id);
            record
        });
    for ((_, record), taken) in hop_records.iter_mut().zip(&hops) {
        record.downstream = taken.downstream.as_ref().and_then(|leg| leg.record(ips));
        record.upstream = taken.upstream.as_ref().and_then(|leg| leg.record(ips));
    }
    // In the order the call went: out of the caller's pod, into the called
    // one, whatever order their entries arrived in.
    hop_records.sort_by_key(|(direction, _)| match direction {
        TrafficDirection::Outbound => 0,
        TrafficDirection::Inbound => 1,
        TrafficDirection::Unspecified => 2,
    });

    let request_id = Some(request_id.into_string())
        .filter(|id| !id.starts_with(UNIDENTIFIED))
        .unwrap_or_default();
    let mut src = peer(src, time_ns, directory);
    src.identity = caller_identity;
    let grpc = grpc_record(
        log.as_ref(),
        wasm.as_mut().and_then(|w| w.grpc.take()),
        &path,
    );
    CallRecord {
        time: rfc3339(time_ns),
        src,
        dst: peer(dst, time_ns, directory),
        protocol,
        method,
        path,
        authority: first_given(
            log.as_mut().map(|l| &mut l.authority),
            wasm.as_ref().map(|w| w.text(WasmText::Authority)),
            None,
        ),
        status,
        layers,
        response_flags: log
            .as_ref()
            .map(|l| spell_out_flags(&l.response_flags))
            .unwrap_or_default(),
        request_body_bytes: log.as_ref().map(|l| l.request_body_bytes),
        response_body_bytes: log.as_ref().map(|l| l.response_body_bytes),
        grpc,
        auth: wasm.as_mut().and_then(WasmPart::auth_record),
        tc,
        latency,
        hops: hop_records.into_iter().map(|(_, hop)| hop).collect(),
        als: log.map(|log| AlsRecord {
            reporter: primary_reporter.unwrap_or_default(),
            downstream: endpoint(log.downstream_remote),
            request_id: log.request_id,
            upstream_cluster: log.upstream_cluster,
        }),
        wasm: wasm.map(|w| WasmRecord {
            // The call's: the filter's event was filed under its request id.
            request_id: request_id.clone(),
            direction: w.direction.as_str().to_owned(),
            duration_us: w.duration_ns / 1_000,
        }),
        request_id,
    }
}

/// The call in gRPC terms, when a layer saw it as gRPC: the access log
/// logged a `grpc-status`, or the filter saw a gRPC request. The status is
/// the access log's (the sidecar that logged the call as the record's), else
/// the filter's; the message counts are the filter's.
fn grpc_record(log: Option<&AccessLog>, wasm: Option<GrpcCall>, path: &str) -> Option<GrpcRecord> {
    let logged = log.and_then(|log| Some((log.grpc_status?, &log.grpc_message)));
    if logged.is_none() && wasm.is_none() {
        return None;
    }
    let (status, message) = match (logged, &wasm) {
        (Some((status, message)), _) => (Some(status), grpc_message_text(message)),
        (None, Some(call)) => (call.status, grpc_message_text(&call.message)),
        (None, None) => (None, String::new()),
    };
    let (service, method) = GrpcRecord::of_path(path);
    Some(GrpcRecord {
        service,
        method,
        status,
        status_name: status.and_then(grpc_status_name).map(Cow::Borrowed),
        message,
        request_messages: wasm.as_ref().map(|call| call.request_messages),
        response_messages: wasm.as_ref().map(|call| call.response_messages),
    })
}

/// The first of the access log's value, the WASM filter's and the wire's
/// that is given and not empty: taken from the log, or copied.
fn first_given(log: Option<&mut String>, wasm: Option<&str>, wire: Option<&str>) -> String {
    if let Some(value) = log.filter(|value| !value.is_empty()) {
        return std::mem::take(value);
    }
    wasm.into_iter()
        .chain(wire)
        .find(|value| !value.is_empty())
        .map(str::to_owned)
        .unwrap_or_default()
}

fn peer(endpoint: Option<ProtoEndpoint>, at_ns: i64, directory: &Directory) -> Peer {
    let Some(endpoint) = endpoint else {
        return Peer::default();
    };
    let workload = directory.lookup(&endpoint.ip, at_ns);
    Peer {
        namespace: workload.map(|w| w.namespace.clone()).unwrap_or_default(),
        name: workload.map(|w| w.name.clone()).unwrap_or_default(),
        kind: workload
            .map_or(WorkloadKind::External, |w| w.kind)
            .as_str()
            .into(),
        ip: endpoint.ip,
        port: endpoint.port,
        identity: None,
    }
}

fn endpoint(endpoint: Option<ProtoEndpoint>) -> Endpoint {
    endpoint.map_or(
        Endpoint {
            ip: Arc::from(""),
            port: 0,
        },
        |e| Endpoint {
            ip: e.ip.into(),
            port: e.port,
        },
    )
}

/// Where the time went, per the primary hop's access log and what the wire
/// showed of its legs.
fn latency(log: &AccessLog, downstream: Option<&TakenLeg>, upstream: Option<&TakenLeg>) -> Latency {
    let micros = |nanos: i64| nanos / 1_000;
    let total = log.last_downstream_tx_byte_ns;
    let upstream_time = if log.first_upstream_tx_byte_ns > 0 && log.last_upstream_rx_byte_ns > 0 {
        log.last_upstream_rx_byte_ns - log.first_upstream_tx_byte_ns
    } else {
        0
    };
    let between = |leg: Option<&TakenLeg>| {
        let leg = leg?;
        Some(micros(leg.response()?.time_ns - leg.request()?.time_ns))
    };
    Latency {
        total_us: micros(total),
        upstream_us: micros(upstream_time),
        sidecar_us: micros(total.saturating_sub(upstream_time).max(0)),
        before_sidecar_us: downstream
            .and_then(TakenLeg::request)
            .map(|request| micros(log.start_time_unix_nano - request.time_ns)),
        pod_wire_us: between(downstream),
        app_wire_us: between(upstream),
    }
}

/// One sidecar's view of the call.
fn hop(log: &AccessLog, direction: TrafficDirection) -> Hop {
    Hop {
        reporter: reporter(log),
        direction: direction.as_str().into(),
        protocol: log.protocol.clone(),
        status: log.status,
        upstream_cluster: log.upstream_cluster.clone(),
        duration_us: log.last_downstream_tx_byte_ns / 1_000,
        response_flags: spell_out_flags(&log.response_flags),
        tls_version: Some(log.tls_version.clone()).filter(|version| !version.is_empty()),
        peer_identity: log.peer_uri_sans.first().cloned(),
        downstream: None,
        upstream: None,
    }
}

fn reporter(log: &AccessLog) -> String {
    log.reporter
        .as_ref()
        .map(|pod| [pod.namespace.as_str(), "/", pod.name.as_str()].concat())
        .unwrap_or_default()
}

/// Envoy's response flags, `UF,URX` -> `["UF: upstream connection failure", ...]`.
fn spell_out_flags(flags: &str) -> Vec<String> {
    flags
        .split(',')
        .filter(|code| !code.is_empty())
        .map(|code| match flag_meaning(code) {
            Some(meaning) => format!("{code}: {meaning}"),
            None => code.to_owned(),
        })
        .collect()
}

fn flag_meaning(code: &str) -> Option<&'static str> {
    Some(match code {
        "LH" => "local service failed health check",
        "UH" => "no healthy upstream",
        "UT" => "upstream request timeout",
        "LR" => "connection local reset",
        "UR" => "upstream remote reset",
        "UF" => "upstream connection failure",
        "UC" => "upstream connection termination",
        "UO" => "upstream overflow (circuit breaking)",
        "NR" => "no route configured",
        "DI" => "delay injected by fault filter",
        "FI" => "aborted by fault filter",
        "RL" => "rate limited locally",
        "UAEX" => "denied by external authorization",
        "RLSE" => "rate limit service error",
        "DC" => "downstream connection termination",
        "URX" => "upstream retry limit exceeded",
        "SI" => "stream idle timeout",
        "IH" => "invalid Envoy request headers",
        "DPE" => "downstream protocol error",
        "UMSDR" => "upstream max stream duration reached",
        "RFCF" => "response from cache filter",
        "NFCF" => "no filter config found",
        "DT" => "duration timeout",
        "UPE" => "upstream protocol error",
        "NC" => "no cluster found",
        "OM" => "overload manager",
        "DF" => "DNS resolution failure",
        "DR" => "downstream remote reset",
        _ => return None,
    })
}
