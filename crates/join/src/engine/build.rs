//! A joined call, put together as a record.

use std::sync::Arc;

use apitrace_proto::{
    AccessLog, AuthInfo, Endpoint as ProtoEndpoint, RequestLine, http_head::StartLine,
};
use rustc_hash::FxHashMap;
use serde_json::Value;

use super::{
    PendingCall,
    wire::{self, Flow, Packet},
};
use crate::{
    directory::{Directory, WorkloadKind},
    record::{
        AlsRecord, AuthRecord, CallRecord, Endpoint, Hop, Latency, Layer, Peer, WasmRecord,
        WireRecord, rfc3339,
    },
};

/// What the TC program saw of a call on the pod's interface.
#[derive(Debug)]
pub(crate) struct Wire {
    /// The request's flow: the packets' addresses.
    pub flow: Flow,
    pub request: Packet,
    /// The first packet of the response, when it was seen.
    pub response: Option<Packet>,
    pub retransmits: u32,
    pub resets: u32,
}

/// The entry of the sidecar that received the call from its caller: the
/// inbound one when both sidecars logged the call.
pub(crate) fn primary_index(logs: &[AccessLog]) -> Option<usize> {
    logs.iter()
        .position(|log| log.upstream_cluster.starts_with("inbound|"))
        .or_else(|| (!logs.is_empty()).then_some(0))
}

/// Decoded JSON documents by their text. A client sends the same token with
/// each of its calls, so its claims are decoded once, not once per call.
#[derive(Debug, Default)]
pub(crate) struct JsonMemo {
    decoded: FxHashMap<String, Arc<Value>>,
}

impl JsonMemo {
    /// Tokens remembered at most: beyond it, the memo starts over.
    const CAPACITY: usize = 1024;

    /// `text` decoded; `null` when it is not JSON.
    fn decode(&mut self, text: String) -> Arc<Value> {
        if let Some(value) = self.decoded.get(&text) {
            return Arc::clone(value);
        }
        let value = Arc::new(serde_json::from_str(&text).unwrap_or(Value::Null));
        if self.decoded.len() >= Self::CAPACITY {
            self.decoded.clear();
        }
        self.decoded.insert(text, Arc::clone(&value));
        value
    }
}

/// What a record is made from besides the call's own events.
pub(crate) struct Context<'a> {
    pub directory: &'a Directory,
    pub show_secrets: bool,
    pub json: &'a mut JsonMemo,
}

/// The record of `call`. `upstream_response` is the first packet of the app's
/// response on `lo`, when the hop to the app was seen. The record takes the
/// events' strings instead of copying them: the events end here.
pub(crate) fn build_record(
    call: PendingCall,
    mut wire: Option<Wire>,
    upstream_response: Option<Packet>,
    context: Context<'_>,
) -> CallRecord {
    let PendingCall {
        request_id,
        mut access_logs,
        wasm: mut wasm_events,
        upstream,
        ..
    } = call;
    let hops: Vec<Hop> = access_logs.iter().map(hop).collect();
    let primary = primary_index(&access_logs);
    let primary_reporter = primary.map(|index| hops[index].reporter.clone());
    let mut log = primary.map(|index| access_logs.swap_remove(index));
    let mut wasm = wasm_events
        .iter()
        .position(|event| event.listener_direction == "inbound")
        .or_else(|| (!wasm_events.is_empty()).then_some(0))
        .map(|index| wasm_events.swap_remove(index));
    let mut upstream = upstream.into_iter().next();
    // The request line as the TC program read it: on the hop to the app, else
    // on the wire (where a request the sidecar rejected still shows it).
    let mut request_line = upstream
        .as_mut()
        .and_then(|(_, request)| take_request_line(request))
        .or_else(|| {
            wire.as_mut()
                .and_then(|wire| take_request_line(&mut wire.request))
        });

    let time_ns = log
        .as_ref()
        .map(|log| log.start_time_unix_nano)
        .or_else(|| wasm.as_ref().map(|w| w.time_unix_nano))
        .or_else(|| wire.as_ref().map(|w| w.request.time_ns))
        .or_else(|| upstream.as_ref().map(|(_, request)| request.time_ns))
        .unwrap_or_default();
    let (src, dst) = match (log.as_mut(), wasm.as_mut()) {
        // The downstream address stays in the log, for the record's `als`.
        (Some(log), _) => (log.downstream_remote.clone(), log.downstream_local.take()),
        (None, Some(wasm)) => (wasm.source.take(), wasm.destination.take()),
        // Seen by the TC program only (no sidecar logged it, or its entry is
        // late): the caller and the callee as the first packet shows them.
        (None, None) => {
            let first_packet = wire
                .as_ref()
                .map(|wire| &wire.flow)
                .or(upstream.as_ref().map(|(flow, _)| flow));
            (
                first_packet.map(wire::source),
                first_packet.map(wire::destination),
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
    if wire.is_some() || upstream.is_some() {
        layers.push(Layer::Tc);
    }

    let status = log
        .as_ref()
        .map(|l| l.status)
        .filter(|status| *status != 0)
        .or_else(|| wasm.as_ref().map(|w| w.status))
        .or_else(|| {
            // The status line on the wire, where it was plaintext.
            let response = upstream_response
                .as_ref()
                .or(wire.as_ref().and_then(|w| w.response.as_ref()));
            match response?.head.as_ref()?.start_line.as_ref()? {
                StartLine::Response(line) => Some(line.status),
                StartLine::Request(_) => None,
            }
        })
        .unwrap_or_default();
    let latency = log.as_ref().map(|log| {
        latency(
            log,
            wire.as_ref(),
            upstream.as_ref().map(|(_, request)| request),
            upstream_response.as_ref(),
        )
    });
    let tc = wire.map(|wire| {
        let Wire {
            flow,
            request,
            retransmits,
            resets,
            ..
        } = wire;
        WireRecord {
            ip_id: request.ip_id,
            tcp_seq: request.tcp_seq,
            payload_len: request.payload_len,
            src: endpoint(Some(wire::source(&flow))),
            dst: endpoint(Some(wire::destination(&flow))),
            interface: request.interface.to_string(),
            time: rfc3339(request.time_ns),
            request_id: upstream
                .as_mut()
                .and_then(|(_, request)| request.head.as_mut())
                .map(|head| std::mem::take(&mut head.request_id))
                .unwrap_or_default(),
            retransmits,
            resets,
        }
    });

    CallRecord {
        time: rfc3339(time_ns),
        request_id: Some(request_id.into_string())
            .filter(|id| !id.starts_with(super::UNIDENTIFIED))
            .unwrap_or_default(),
        src: peer(src, time_ns, context.directory),
        dst: peer(dst, time_ns, context.directory),
        protocol: first_given([
            log.as_mut().map(|l| &mut l.protocol),
            None,
            request_line.as_mut().map(|l| &mut l.version),
        ]),
        method: first_given([
            log.as_mut().map(|l| &mut l.method),
            wasm.as_mut().map(|w| &mut w.method),
            request_line.as_mut().map(|l| &mut l.method),
        ]),
        path: first_given([
            log.as_mut().map(|l| &mut l.path),
            wasm.as_mut().map(|w| &mut w.path),
            request_line.as_mut().map(|l| &mut l.path),
        ]),
        authority: first_given([
            log.as_mut().map(|l| &mut l.authority),
            wasm.as_mut().map(|w| &mut w.authority),
            None,
        ]),
        status,
        layers,
        response_flags: log
            .as_ref()
            .map(|l| spell_out_flags(&l.response_flags))
            .unwrap_or_default(),
        request_body_bytes: log.as_ref().map(|l| l.request_body_bytes),
        response_body_bytes: log.as_ref().map(|l| l.response_body_bytes),
        auth: wasm
            .as_mut()
            .and_then(|w| w.auth.take())
            .map(|auth| auth_record(auth, context.show_secrets, context.json)),
        tc,
        latency,
        hops,
        als: log.map(|log| AlsRecord {
            reporter: primary_reporter.unwrap_or_default(),
            downstream: endpoint(log.downstream_remote),
            request_id: log.request_id,
            upstream_cluster: log.upstream_cluster,
        }),
        wasm: wasm.map(|w| WasmRecord {
            request_id: w.request_id,
            direction: w.listener_direction,
            duration_us: w.duration_ns / 1_000,
        }),
    }
}

/// The request line of `packet`'s HTTP head, taken out, if the head is a
/// request's.
fn take_request_line(packet: &mut Packet) -> Option<RequestLine> {
    let head = packet.head.as_mut()?;
    match head.start_line.take()? {
        StartLine::Request(line) => Some(line),
        response @ StartLine::Response(_) => {
            head.start_line = Some(response);
            None
        }
    }
}

/// The first of `candidates` that is given and not empty, taken.
fn first_given<const N: usize>(candidates: [Option<&mut String>; N]) -> String {
    candidates
        .into_iter()
        .flatten()
        .find(|value| !value.is_empty())
        .map(std::mem::take)
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
    }
}

fn endpoint(endpoint: Option<ProtoEndpoint>) -> Endpoint {
    endpoint.map_or(
        Endpoint {
            ip: String::new(),
            port: 0,
        },
        |e| Endpoint {
            ip: e.ip,
            port: e.port,
        },
    )
}

/// The caller's credentials. The filter sends the raw token only when the
/// session opted in to secrets; a saved session replayed without
/// `--show-secrets` still leaves it out.
fn auth_record(auth: AuthInfo, show_secrets: bool, json: &mut JsonMemo) -> AuthRecord {
    AuthRecord {
        scheme: auth.scheme,
        claims: if auth.jwt_claims_json.is_empty() {
            Arc::new(Value::Object(serde_json::Map::new()))
        } else {
            json.decode(auth.jwt_claims_json)
        },
        jwt_header: json.decode(auth.jwt_header_json),
        fingerprint: auth.fingerprint,
        token: (show_secrets && !auth.token.is_empty()).then_some(auth.token),
        error: (!auth.decode_error.is_empty()).then_some(auth.decode_error),
    }
}

fn latency(
    log: &AccessLog,
    wire: Option<&Wire>,
    upstream: Option<&Packet>,
    upstream_response: Option<&Packet>,
) -> Latency {
    let micros = |nanos: i64| nanos / 1_000;
    let total = log.last_downstream_tx_byte_ns;
    let upstream_time = if log.first_upstream_tx_byte_ns > 0 && log.last_upstream_rx_byte_ns > 0 {
        log.last_upstream_rx_byte_ns - log.first_upstream_tx_byte_ns
    } else {
        0
    };
    let between = |request: Option<&Packet>, response: Option<&Packet>| {
        Some(micros(response?.time_ns - request?.time_ns))
    };
    Latency {
        total_us: micros(total),
        upstream_us: micros(upstream_time),
        sidecar_us: micros(total.saturating_sub(upstream_time).max(0)),
        before_sidecar_us: wire.map(|wire| micros(log.start_time_unix_nano - wire.request.time_ns)),
        pod_wire_us: between(
            wire.map(|w| &w.request),
            wire.and_then(|w| w.response.as_ref()),
        ),
        app_wire_us: between(upstream, upstream_response),
    }
}

/// One sidecar's view of the call.
fn hop(log: &AccessLog) -> Hop {
    let direction = match log.upstream_cluster.split('|').next() {
        Some("inbound") => "inbound",
        Some("outbound") => "outbound",
        _ => "",
    };
    Hop {
        reporter: reporter(log),
        direction: direction.into(),
        status: log.status,
        upstream_cluster: log.upstream_cluster.clone(),
        duration_us: log.last_downstream_tx_byte_ns / 1_000,
        response_flags: spell_out_flags(&log.response_flags),
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
