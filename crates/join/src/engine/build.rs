//! A joined call, put together as a record.

use apitrace_proto::{
    AccessLog, AuthInfo, Endpoint as ProtoEndpoint, TcEvent, http_head::StartLine,
};

use super::PendingCall;
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
    pub request: TcEvent,
    /// The first packet of the response, when it was seen.
    pub response: Option<TcEvent>,
    pub retransmits: u32,
    pub resets: u32,
}

/// The entry of the sidecar that received the call from its caller: the
/// inbound one when both sidecars logged the call.
pub(crate) fn primary_log(logs: &[AccessLog]) -> Option<&AccessLog> {
    logs.iter()
        .find(|log| log.upstream_cluster.starts_with("inbound|"))
        .or_else(|| logs.first())
}

/// The record of `call`. `upstream_response` is the first packet of the app's
/// response on `lo`, when the hop to the app was seen.
pub(crate) fn build_record(
    request_id: &str,
    call: &PendingCall,
    wire: Option<&Wire>,
    upstream_response: Option<&TcEvent>,
    directory: &Directory,
    show_secrets: bool,
) -> CallRecord {
    let log = primary_log(&call.access_logs);
    let wasm = call
        .wasm
        .iter()
        .find(|event| event.listener_direction == "inbound")
        .or_else(|| call.wasm.first());
    let upstream = call.upstream.first().map(|(_, request)| request);
    // The request line as the TC program read it: on the hop to the app, else
    // on the wire (where a request the sidecar rejected still shows it).
    let request_line = upstream
        .into_iter()
        .chain(wire.map(|wire| &wire.request))
        .find_map(|tc| match tc.http.as_ref()?.start_line.as_ref()? {
            StartLine::Request(line) => Some(line),
            StartLine::Response(_) => None,
        });

    let pick = |from_log: Option<&str>, from_wasm: Option<&str>, from_tc: Option<&str>| {
        [from_log, from_wasm, from_tc]
            .into_iter()
            .flatten()
            .find(|value| !value.is_empty())
            .unwrap_or_default()
            .to_owned()
    };
    // Seen by the TC program only (no sidecar logged it, or its entry is
    // late): the caller and the callee as the first packet shows them.
    let first_packet = wire.map(|wire| &wire.request).or(upstream);
    let (src, dst) = match (log, wasm) {
        (Some(log), _) => (
            log.downstream_remote.as_ref(),
            log.downstream_local.as_ref(),
        ),
        (None, Some(wasm)) => (wasm.source.as_ref(), wasm.destination.as_ref()),
        (None, None) => (
            first_packet.and_then(|tc| tc.src.as_ref()),
            first_packet.and_then(|tc| tc.dst.as_ref()),
        ),
    };
    let time_ns = log
        .map(|log| log.start_time_unix_nano)
        .or_else(|| wasm.map(|w| w.time_unix_nano))
        .or_else(|| wire.map(|w| w.request.time_unix_nano))
        .or_else(|| upstream.map(|tc| tc.time_unix_nano))
        .unwrap_or_default();

    let mut layers = Vec::new();
    if log.is_some() {
        layers.push(Layer::Als);
    }
    if wasm.is_some() {
        layers.push(Layer::Wasm);
    }
    if wire.is_some() || upstream.is_some() {
        layers.push(Layer::Tc);
    }

    CallRecord {
        time: rfc3339(time_ns),
        request_id: if request_id.starts_with(super::UNIDENTIFIED) {
            String::new()
        } else {
            request_id.to_owned()
        },
        src: peer(src, time_ns, directory),
        dst: peer(dst, time_ns, directory),
        protocol: pick(
            log.map(|l| l.protocol.as_str()),
            None,
            request_line.map(|l| l.version.as_str()),
        ),
        method: pick(
            log.map(|l| l.method.as_str()),
            wasm.map(|w| w.method.as_str()),
            request_line.map(|l| l.method.as_str()),
        ),
        path: pick(
            log.map(|l| l.path.as_str()),
            wasm.map(|w| w.path.as_str()),
            request_line.map(|l| l.path.as_str()),
        ),
        authority: pick(
            log.map(|l| l.authority.as_str()),
            wasm.map(|w| w.authority.as_str()),
            None,
        ),
        status: log
            .map(|l| l.status)
            .filter(|status| *status != 0)
            .or_else(|| wasm.map(|w| w.status))
            .or_else(|| {
                // The status line on the wire, where it was plaintext.
                let response = upstream_response.or(wire.and_then(|w| w.response.as_ref()));
                match response?.http.as_ref()?.start_line.as_ref()? {
                    StartLine::Response(line) => Some(line.status),
                    StartLine::Request(_) => None,
                }
            })
            .unwrap_or_default(),
        layers,
        response_flags: log
            .map(|l| spell_out_flags(&l.response_flags))
            .unwrap_or_default(),
        request_body_bytes: log.map(|l| l.request_body_bytes),
        response_body_bytes: log.map(|l| l.response_body_bytes),
        auth: wasm
            .and_then(|w| w.auth.as_ref())
            .map(|auth| auth_record(auth, show_secrets)),
        tc: wire.map(|wire| WireRecord {
            ip_id: wire.request.ip_id,
            tcp_seq: wire.request.tcp_seq,
            payload_len: wire.request.payload_len,
            src: endpoint(wire.request.src.as_ref()),
            dst: endpoint(wire.request.dst.as_ref()),
            interface: wire.request.interface.clone(),
            time: rfc3339(wire.request.time_unix_nano),
            request_id: upstream
                .and_then(|tc| tc.http.as_ref())
                .map(|head| head.request_id.clone())
                .unwrap_or_default(),
            retransmits: wire.retransmits,
            resets: wire.resets,
        }),
        latency: log.map(|log| latency(log, wire, upstream, upstream_response)),
        hops: call.access_logs.iter().map(hop).collect(),
        als: log.map(|log| AlsRecord {
            request_id: log.request_id.clone(),
            reporter: reporter(log),
            downstream: endpoint(log.downstream_remote.as_ref()),
            upstream_cluster: log.upstream_cluster.clone(),
        }),
        wasm: wasm.map(|w| WasmRecord {
            request_id: w.request_id.clone(),
            direction: w.listener_direction.clone(),
            duration_us: w.duration_ns / 1_000,
        }),
    }
}

fn peer(endpoint: Option<&ProtoEndpoint>, at_ns: i64, directory: &Directory) -> Peer {
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
            .to_owned(),
        ip: endpoint.ip.clone(),
        port: endpoint.port,
    }
}

fn endpoint(endpoint: Option<&ProtoEndpoint>) -> Endpoint {
    endpoint.map_or(
        Endpoint {
            ip: String::new(),
            port: 0,
        },
        |e| Endpoint {
            ip: e.ip.clone(),
            port: e.port,
        },
    )
}

/// The caller's credentials. The filter sends the raw token only when the
/// session opted in to secrets; a saved session replayed without
/// `--show-secrets` still leaves it out.
fn auth_record(auth: &AuthInfo, show_secrets: bool) -> AuthRecord {
    let json = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    AuthRecord {
        scheme: auth.scheme.clone(),
        claims: if auth.jwt_claims_json.is_empty() {
            serde_json::Value::Object(serde_json::Map::new())
        } else {
            json(&auth.jwt_claims_json)
        },
        jwt_header: json(&auth.jwt_header_json),
        fingerprint: auth.fingerprint.clone(),
        token: (show_secrets && !auth.token.is_empty()).then(|| auth.token.clone()),
        error: (!auth.decode_error.is_empty()).then(|| auth.decode_error.clone()),
    }
}

fn latency(
    log: &AccessLog,
    wire: Option<&Wire>,
    upstream: Option<&TcEvent>,
    upstream_response: Option<&TcEvent>,
) -> Latency {
    let micros = |nanos: i64| nanos / 1_000;
    let total = log.last_downstream_tx_byte_ns;
    let upstream_time = if log.first_upstream_tx_byte_ns > 0 && log.last_upstream_rx_byte_ns > 0 {
        log.last_upstream_rx_byte_ns - log.first_upstream_tx_byte_ns
    } else {
        0
    };
    let between = |request: Option<&TcEvent>, response: Option<&TcEvent>| {
        Some(micros(response?.time_unix_nano - request?.time_unix_nano))
    };
    Latency {
        total_us: micros(total),
        upstream_us: micros(upstream_time),
        sidecar_us: micros(total.saturating_sub(upstream_time).max(0)),
        before_sidecar_us: wire
            .map(|wire| micros(log.start_time_unix_nano - wire.request.time_unix_nano)),
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
        direction: direction.to_owned(),
        status: log.status,
        upstream_cluster: log.upstream_cluster.clone(),
        duration_us: log.last_downstream_tx_byte_ns / 1_000,
        response_flags: spell_out_flags(&log.response_flags),
    }
}

fn reporter(log: &AccessLog) -> String {
    log.reporter
        .as_ref()
        .map(|pod| format!("{}/{}", pod.namespace, pod.name))
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
