//! The join state machine and its stream form.

use std::collections::HashMap;

use apitrace_proto::{
    AccessLog, Endpoint as ProtoEndpoint, Event, TcEvent, TcKind, WasmEvent, event::Kind,
    http_head::StartLine,
};
use futures::{Stream, StreamExt as _, stream};
use serde::Serialize;

use crate::{
    directory::{Directory, Workload, WorkloadKind},
    record::{
        AlsRecord, AuthRecord, CallRecord, Endpoint, Latency, Layer, Peer, WasmRecord, WireRecord,
        rfc3339,
    },
};

/// A piece of a call. A call is emitted as soon as it has every part its
/// session expects, and when its window closes otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The sidecar's access-log entry.
    AccessLog,
    /// The WASM filter's event.
    Wasm,
    /// The TC events of the request's and the response's first packets on the
    /// pod's interface.
    Wire,
    /// The TC events of the sidecar's plaintext request to the app (on `lo`)
    /// and of the app's response.
    Upstream,
}

#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// How long a call waits for its missing parts after its first event
    /// arrived, in nanoseconds. Bounds the engine's memory.
    pub window_ns: i64,
    pub expect: Vec<Part>,
    /// How much later than the sidecar's start time a request's first packet
    /// may appear to be. The packet passes the TC program before the sidecar
    /// can read it, and the next request on a keep-alive connection comes only
    /// after this one's response; both times are the node's clock, converted
    /// separately, so this only absorbs conversion error. Wider than the
    /// shortest turnaround on a connection, it would take the next request.
    pub wire_tolerance_ns: i64,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            window_ns: 5_000_000_000,
            expect: vec![Part::AccessLog, Part::Wasm, Part::Wire, Part::Upstream],
            wire_tolerance_ns: 50_000,
        }
    }
}

/// What the engine is fed. Every input carries the time it was observed at
/// (Unix nanoseconds), which is the engine's only clock.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "every event passes through here once; boxing would add an allocation per event"
)]
pub enum Input {
    Event {
        event: Event,
        now_ns: i64,
    },
    /// Who an address is, for the records' `src` and `dst`.
    Identity {
        ip: String,
        workload: Workload,
    },
    /// Time passed: close the windows that are due.
    Tick {
        now_ns: i64,
    },
    /// No more input: emit every call still open.
    End,
}

/// How the session's events were joined.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JoinStats {
    /// Calls emitted with every expected part.
    pub complete: u64,
    /// Calls emitted when their window closed, without some part.
    pub partial: u64,
    /// WASM events without a request id.
    pub unmatched_wasm: u64,
    /// TC events no call claimed within two windows of their arrival.
    pub unmatched_tc: u64,
}

#[derive(Debug, Default)]
struct PendingCall {
    first_arrival_ns: i64,
    access_logs: Vec<AccessLog>,
    wasm: Vec<WasmEvent>,
    upstream: Vec<TcEvent>,
}

#[derive(Debug)]
struct WireEvent {
    event: TcEvent,
    arrival_ns: i64,
    retransmits: u32,
}

/// A TCP connection in one direction, as text endpoints.
type Flow = (String, u32, String, u32);

fn flow(src: Option<&ProtoEndpoint>, dst: Option<&ProtoEndpoint>) -> Option<Flow> {
    let (src, dst) = (src?, dst?);
    Some((src.ip.clone(), src.port, dst.ip.clone(), dst.port))
}

#[derive(Debug)]
pub struct Joiner {
    config: JoinConfig,
    directory: Directory,
    calls: HashMap<String, PendingCall>,
    /// Request starts seen on pod interfaces, by connection, waiting for the
    /// access-log entry that claims them.
    wire: HashMap<Flow, Vec<WireEvent>>,
    /// Open calls by the connection their access logs name, so that a wire
    /// event finds its call without looking at the others.
    awaiting_wire: HashMap<Flow, Vec<String>>,
    /// Open calls by the connection of their plaintext hop to the app. The
    /// sidecar pools its connections to the app, so many calls share one.
    upstream_flows: HashMap<Flow, Vec<String>>,
    stats: JoinStats,
}

impl Joiner {
    pub fn new(config: JoinConfig) -> Self {
        Self {
            config,
            directory: Directory::default(),
            calls: HashMap::new(),
            wire: HashMap::new(),
            awaiting_wire: HashMap::new(),
            upstream_flows: HashMap::new(),
            stats: JoinStats::default(),
        }
    }

    pub fn stats(&self) -> &JoinStats {
        &self.stats
    }

    /// Applies one input and returns the calls it completed or expired, oldest
    /// first.
    pub fn apply(&mut self, input: Input) -> Vec<CallRecord> {
        match input {
            Input::Event { event, now_ns } => {
                let mut out = Vec::new();
                if let Some(request_id) = self.accept(event, now_ns)
                    && self.is_complete(&request_id)
                {
                    out.extend(self.emit(&request_id, true));
                }
                out.extend(self.expire(now_ns));
                out
            }
            Input::Identity { ip, workload } => {
                self.directory.insert(ip, workload);
                Vec::new()
            }
            Input::Tick { now_ns } => self.expire(now_ns),
            Input::End => self.expire(i64::MAX),
        }
    }

    /// Files an event; returns the request id of the call it belongs to.
    fn accept(&mut self, event: Event, now_ns: i64) -> Option<String> {
        match event.kind? {
            Kind::AccessLog(log) => {
                // Requests the sidecar rejected before assigning an
                // x-request-id (a malformed request line, an oversized header)
                // and TCP proxy entries are calls too, known by their
                // connection and start time.
                let id = if log.request_id.is_empty() {
                    unidentified_call_key(&log)
                } else {
                    log.request_id.clone()
                };
                if let Some(key) = flow(
                    log.downstream_remote.as_ref(),
                    log.downstream_local.as_ref(),
                ) {
                    self.awaiting_wire.entry(key).or_default().push(id.clone());
                }
                self.call(&id, now_ns).access_logs.push(log);
                Some(id)
            }
            Kind::Wasm(wasm) => {
                if wasm.request_id.is_empty() {
                    self.stats.unmatched_wasm += 1;
                    return None;
                }
                let id = wasm.request_id.clone();
                self.call(&id, now_ns).wasm.push(wasm);
                Some(id)
            }
            Kind::Tc(tc) => self.accept_tc(tc, now_ns),
            Kind::Status(_) => None,
        }
    }

    fn accept_tc(&mut self, tc: TcEvent, now_ns: i64) -> Option<String> {
        match TcKind::try_from(tc.kind) {
            Ok(TcKind::Message) => {
                let request_id = tc
                    .http
                    .as_ref()
                    .filter(|head| matches!(head.start_line, Some(StartLine::Request(_))))
                    .map(|head| head.request_id.clone())
                    .unwrap_or_default();
                if !request_id.is_empty() {
                    // A hop after a sidecar: the header it added is on the wire.
                    if let Some(key) = flow(tc.src.as_ref(), tc.dst.as_ref()) {
                        self.upstream_flows
                            .entry(key)
                            .or_default()
                            .push(request_id.clone());
                    }
                    self.call(&request_id, now_ns).upstream.push(tc);
                    return Some(request_id);
                }
                let key = flow(tc.src.as_ref(), tc.dst.as_ref())?;
                self.wire.entry(key.clone()).or_default().push(WireEvent {
                    event: tc,
                    arrival_ns: now_ns,
                    retransmits: 0,
                });
                // A wire event can complete a call whose access log came first:
                // as its request start, or as the response to one.
                let reverse = (key.2.clone(), key.3, key.0.clone(), key.1);
                [&key, &reverse]
                    .into_iter()
                    .filter_map(|key| self.awaiting_wire.get(key))
                    .flatten()
                    .find(|id| self.is_complete(id))
                    .cloned()
                    .or_else(|| self.upstream_claimant(&reverse))
            }
            Ok(TcKind::Retransmit) => {
                self.count_retransmit(&tc);
                None
            }
            // Connection opens, accepts, closes and resets are context, not calls.
            _ => None,
        }
    }

    /// The call whose plaintext hop to the app ran on `request_flow`, if a
    /// response on it completes that call.
    fn upstream_claimant(&self, request_flow: &Flow) -> Option<String> {
        self.upstream_flows
            .get(request_flow)?
            .iter()
            .find(|id| self.is_complete(id))
            .cloned()
    }

    fn call(&mut self, request_id: &str, now_ns: i64) -> &mut PendingCall {
        self.calls
            .entry(request_id.to_owned())
            .or_insert_with(|| PendingCall {
                first_arrival_ns: now_ns,
                ..PendingCall::default()
            })
    }

    /// Attaches a retransmission to the latest request start on its connection
    /// (in either direction) at or before it.
    fn count_retransmit(&mut self, tc: &TcEvent) {
        let forward = flow(tc.src.as_ref(), tc.dst.as_ref());
        let backward = flow(tc.dst.as_ref(), tc.src.as_ref());
        let target = [forward, backward]
            .into_iter()
            .flatten()
            .filter_map(|key| Some((self.wire.get(&key)?, key)))
            .flat_map(|(events, key)| {
                events
                    .iter()
                    .enumerate()
                    .map(move |(index, wire)| (wire.event.time_unix_nano, key.clone(), index))
            })
            .filter(|(time, _, _)| *time <= tc.time_unix_nano)
            .max_by_key(|(time, _, _)| *time);
        match target.and_then(|(_, key, index)| self.wire.get_mut(&key)?.get_mut(index)) {
            Some(wire) => wire.retransmits += 1,
            None => self.stats.unmatched_tc += 1,
        }
    }

    /// The wire event of `log`'s request: on the connection the sidecar
    /// accepted, the last request start at or before the sidecar's start time.
    fn find_wire(&self, log: &AccessLog) -> Option<(Flow, usize)> {
        let key = flow(
            log.downstream_remote.as_ref(),
            log.downstream_local.as_ref(),
        )?;
        let limit = log
            .start_time_unix_nano
            .saturating_add(self.config.wire_tolerance_ns);
        let events = self.wire.get(&key)?;
        let (index, _) = events
            .iter()
            .enumerate()
            .filter(|(_, wire)| wire.event.time_unix_nano <= limit)
            .max_by_key(|(_, wire)| wire.event.time_unix_nano)?;
        Some((key, index))
    }

    fn is_complete(&self, request_id: &str) -> bool {
        let Some(call) = self.calls.get(request_id) else {
            return false;
        };
        self.config.expect.iter().all(|part| match part {
            Part::AccessLog => !call.access_logs.is_empty(),
            Part::Wasm => !call.wasm.is_empty(),
            Part::Upstream => call
                .upstream
                .first()
                .is_some_and(|request| self.find_response(request).is_some()),
            Part::Wire => primary_log(&call.access_logs)
                .and_then(|log| self.find_wire(log))
                .and_then(|(key, index)| self.wire.get(&key)?.get(index))
                .is_some_and(|wire| self.find_response(&wire.event).is_some()),
        })
    }

    /// Emits the calls whose window closed, and forgets wire events no call
    /// claimed in time.
    fn expire(&mut self, now_ns: i64) -> Vec<CallRecord> {
        let window = self.config.window_ns;
        let mut due: Vec<(i64, String)> = self
            .calls
            .iter()
            .filter(|(_, call)| call.first_arrival_ns.saturating_add(window) <= now_ns)
            .map(|(id, call)| (call.first_arrival_ns, id.clone()))
            .collect();
        due.sort();
        let records = due
            .into_iter()
            .filter_map(|(_, id)| {
                let complete = self.is_complete(&id);
                self.emit(&id, complete)
            })
            .collect();
        // A wire event can come up to a window before its call's first event
        // (the request starts long before the sidecar logs it), and the call
        // may wait a window more: a wire event is kept for two.
        let wire_retention = window.saturating_mul(2);
        let mut expired = 0;
        self.wire.retain(|_, events| {
            let before = events.len();
            events.retain(|wire| wire.arrival_ns.saturating_add(wire_retention) > now_ns);
            expired += before - events.len();
            !events.is_empty()
        });
        self.stats.unmatched_tc += expired as u64;
        records
    }

    /// The first message the other side sent on the connection of a request
    /// start, after it: the start of the response.
    fn find_response(&self, request: &TcEvent) -> Option<(Flow, usize)> {
        let key = flow(request.dst.as_ref(), request.src.as_ref())?;
        let (index, _) = self
            .wire
            .get(&key)?
            .iter()
            .enumerate()
            .filter(|(_, wire)| wire.event.time_unix_nano >= request.time_unix_nano)
            .min_by_key(|(_, wire)| wire.event.time_unix_nano)?;
        Some((key, index))
    }

    /// Takes the start of the response to `request` out of the wire index.
    fn claim_response(&mut self, request: &TcEvent) -> Option<TcEvent> {
        let (key, index) = self.find_response(request)?;
        let events = self.wire.get_mut(&key)?;
        let response = events.remove(index).event;
        if events.is_empty() {
            self.wire.remove(&key);
        }
        Some(response)
    }

    fn emit(&mut self, request_id: &str, complete: bool) -> Option<CallRecord> {
        let call = self.calls.remove(request_id)?;
        for upstream in &call.upstream {
            unindex(
                &mut self.upstream_flows,
                flow(upstream.src.as_ref(), upstream.dst.as_ref()),
                request_id,
            );
        }
        for log in &call.access_logs {
            unindex(
                &mut self.awaiting_wire,
                flow(
                    log.downstream_remote.as_ref(),
                    log.downstream_local.as_ref(),
                ),
                request_id,
            );
        }
        let wire = primary_log(&call.access_logs)
            .and_then(|log| self.find_wire(log))
            .and_then(|(key, index)| {
                let events = self.wire.get_mut(&key)?;
                let wire = events.remove(index);
                if events.is_empty() {
                    self.wire.remove(&key);
                }
                Some(wire)
            });
        let responses = Responses {
            wire: wire
                .as_ref()
                .and_then(|wire| self.claim_response(&wire.event)),
            upstream: call
                .upstream
                .first()
                .and_then(|request| self.claim_response(request)),
        };
        if complete {
            self.stats.complete += 1;
        } else {
            self.stats.partial += 1;
        }
        Some(build_record(
            request_id,
            &call,
            wire.as_ref(),
            &responses,
            &self.directory,
        ))
    }
}

/// Keys of calls without an x-request-id start with a byte no header value
/// can hold, so that they never meet a real request id.
const UNIDENTIFIED: char = '\0';

fn unidentified_call_key(log: &AccessLog) -> String {
    let endpoint = |e: Option<&ProtoEndpoint>| e.map(ToString::to_string).unwrap_or_default();
    format!(
        "{UNIDENTIFIED}{} {} {}",
        endpoint(log.downstream_remote.as_ref()),
        endpoint(log.downstream_local.as_ref()),
        log.start_time_unix_nano
    )
}

/// Removes `request_id` from the calls indexed under `key`.
fn unindex(index: &mut HashMap<Flow, Vec<String>>, key: Option<Flow>, request_id: &str) {
    let Some(key) = key else { return };
    if let Some(ids) = index.get_mut(&key) {
        ids.retain(|id| id != request_id);
        if ids.is_empty() {
            index.remove(&key);
        }
    }
}

/// The entry of the sidecar that received the call from its caller: the
/// inbound one when both sidecars logged the call.
fn primary_log(logs: &[AccessLog]) -> Option<&AccessLog> {
    logs.iter()
        .find(|log| log.upstream_cluster.starts_with("inbound|"))
        .or_else(|| logs.first())
}

/// The first packets of a call's responses: to the caller on the pod's
/// interface, and from the app to the sidecar on `lo`.
struct Responses {
    wire: Option<TcEvent>,
    upstream: Option<TcEvent>,
}

fn build_record(
    request_id: &str,
    call: &PendingCall,
    wire: Option<&WireEvent>,
    responses: &Responses,
    directory: &Directory,
) -> CallRecord {
    let log = primary_log(&call.access_logs);
    let wasm = call
        .wasm
        .iter()
        .find(|event| event.listener_direction == "inbound")
        .or_else(|| call.wasm.first());
    let upstream = call.upstream.first();
    // The request line as the TC program read it: on the hop to the app, else
    // on the wire (where a request the sidecar rejected still shows it).
    let request_line = upstream
        .into_iter()
        .chain(wire.map(|wire| &wire.event))
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
    let (src, dst) = match log {
        Some(log) => (
            log.downstream_remote.as_ref(),
            log.downstream_local.as_ref(),
        ),
        None => (
            wasm.and_then(|w| w.source.as_ref()),
            wasm.and_then(|w| w.destination.as_ref()),
        ),
    };
    let time_ns = log
        .map(|log| log.start_time_unix_nano)
        .or_else(|| wasm.map(|w| w.time_unix_nano))
        .or_else(|| wire.map(|w| w.event.time_unix_nano))
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
        request_id: if request_id.starts_with(UNIDENTIFIED) {
            String::new()
        } else {
            request_id.to_owned()
        },
        src: peer(src, directory),
        dst: peer(dst, directory),
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
            .unwrap_or_default(),
        layers,
        response_flags: log
            .map(|l| spell_out_flags(&l.response_flags))
            .unwrap_or_default(),
        auth: wasm.and_then(|w| w.auth.as_ref()).map(auth_record),
        tc: wire.map(|wire| WireRecord {
            ip_id: wire.event.ip_id,
            tcp_seq: wire.event.tcp_seq,
            payload_len: wire.event.payload_len,
            src: endpoint(wire.event.src.as_ref()),
            dst: endpoint(wire.event.dst.as_ref()),
            interface: wire.event.interface.clone(),
            time: rfc3339(wire.event.time_unix_nano),
            request_id: upstream
                .and_then(|tc| tc.http.as_ref())
                .map(|head| head.request_id.clone())
                .unwrap_or_default(),
            retransmits: wire.retransmits,
        }),
        latency: log.map(|log| latency(log, wire, upstream, responses)),
        als: log.map(|log| AlsRecord {
            request_id: log.request_id.clone(),
            reporter: log
                .reporter
                .as_ref()
                .map(|pod| format!("{}/{}", pod.namespace, pod.name))
                .unwrap_or_default(),
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

fn peer(endpoint: Option<&ProtoEndpoint>, directory: &Directory) -> Peer {
    let Some(endpoint) = endpoint else {
        return Peer::default();
    };
    let workload = directory.lookup(&endpoint.ip);
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

fn auth_record(auth: &apitrace_proto::AuthInfo) -> AuthRecord {
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
        token: (!auth.token.is_empty()).then(|| auth.token.clone()),
        error: (!auth.decode_error.is_empty()).then(|| auth.decode_error.clone()),
    }
}

fn latency(
    log: &AccessLog,
    wire: Option<&WireEvent>,
    upstream: Option<&TcEvent>,
    responses: &Responses,
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
            .map(|wire| micros(log.start_time_unix_nano - wire.event.time_unix_nano)),
        pod_wire_us: between(wire.map(|w| &w.event), responses.wire.as_ref()),
        app_wire_us: between(upstream, responses.upstream.as_ref()),
    }
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

/// What [`joined`] yields.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "records are the common item; only the last one is the statistics"
)]
pub enum Output {
    Record(CallRecord),
    /// The last item, after [`Input::End`].
    Done(JoinStats),
}

/// The engine as a stream transformer: inputs in, records out, and the join's
/// statistics when the inputs end.
pub fn joined<S: Stream<Item = Input>>(
    inputs: S,
    config: JoinConfig,
) -> impl Stream<Item = Output> {
    let state = Some((Joiner::new(config), Box::pin(inputs)));
    stream::unfold(state, |state| async move {
        let (mut joiner, mut inputs) = state?;
        match inputs.next().await {
            Some(input) => {
                let records: Vec<Output> = joiner
                    .apply(input)
                    .into_iter()
                    .map(Output::Record)
                    .collect();
                Some((stream::iter(records), Some((joiner, inputs))))
            }
            None => {
                let mut records: Vec<Output> = joiner
                    .apply(Input::End)
                    .into_iter()
                    .map(Output::Record)
                    .collect();
                records.push(Output::Done(joiner.stats().clone()));
                Some((stream::iter(records), None))
            }
        }
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apitrace_proto::{AuthInfo, HttpHead, PodRef, RequestLine, TcDirection};

    const SECOND: i64 = 1_000_000_000;
    const T0: i64 = 1_726_632_414 * SECOND;

    fn ep(ip: &str, port: u32) -> Option<ProtoEndpoint> {
        Some(ProtoEndpoint::new(ip, port))
    }

    fn access_log(id: &str, client_port: u32, start: i64) -> Event {
        Event {
            kind: Some(Kind::AccessLog(AccessLog {
                start_time_unix_nano: start,
                request_id: id.into(),
                method: "GET".into(),
                path: "/status".into(),
                protocol: "HTTP/1.1".into(),
                status: 200,
                downstream_remote: ep("10.0.0.40", client_port),
                downstream_local: ep("10.0.0.135", 80),
                upstream_cluster: "inbound|80||".into(),
                response_flags: "UF,XX".into(),
                reporter: Some(PodRef {
                    namespace: "default".into(),
                    name: "nginx".into(),
                }),
                last_downstream_tx_byte_ns: 900_000,
                first_upstream_tx_byte_ns: 100_000,
                last_upstream_rx_byte_ns: 700_000,
                ..AccessLog::default()
            })),
        }
    }

    fn wasm(id: &str) -> Event {
        Event {
            kind: Some(Kind::Wasm(WasmEvent {
                request_id: id.into(),
                listener_direction: "inbound".into(),
                auth: Some(AuthInfo {
                    scheme: "Bearer".into(),
                    jwt_claims_json: r#"{"sub":"alice"}"#.into(),
                    fingerprint: "sha256:00".into(),
                    ..AuthInfo::default()
                }),
                ..WasmEvent::default()
            })),
        }
    }

    fn request_start(client_port: u32, time: i64, seq: u32, request_id: &str) -> Event {
        let (src, dst, interface) = if request_id.is_empty() {
            (ep("10.0.0.40", client_port), ep("10.0.0.135", 80), "eth0")
        } else {
            (ep("127.0.0.1", 41000), ep("127.0.0.1", 80), "lo")
        };
        Event {
            kind: Some(Kind::Tc(TcEvent {
                time_unix_nano: time,
                interface: interface.into(),
                direction: TcDirection::Ingress as i32,
                kind: TcKind::Message as i32,
                src,
                dst,
                ip_id: 2342,
                tcp_seq: seq,
                http: Some(HttpHead {
                    start_line: Some(StartLine::Request(RequestLine {
                        method: "GET".into(),
                        path: "/status".into(),
                        version: "HTTP/1.1".into(),
                    })),
                    request_id: request_id.into(),
                    authority: String::new(),
                }),
                ..TcEvent::default()
            })),
        }
    }

    fn retransmit(client_port: u32, time: i64) -> Event {
        Event {
            kind: Some(Kind::Tc(TcEvent {
                time_unix_nano: time,
                kind: TcKind::Retransmit as i32,
                src: ep("10.0.0.135", 80),
                dst: ep("10.0.0.40", client_port),
                ..TcEvent::default()
            })),
        }
    }

    /// The first packet of a response, from the server back to the client.
    fn response_start(request: &Event, time: i64) -> Event {
        let Some(Kind::Tc(tc)) = &request.kind else {
            unreachable!()
        };
        Event {
            kind: Some(Kind::Tc(TcEvent {
                time_unix_nano: time,
                kind: TcKind::Message as i32,
                src: tc.dst.clone(),
                dst: tc.src.clone(),
                interface: tc.interface.clone(),
                ..TcEvent::default()
            })),
        }
    }

    fn one_call() -> Vec<Event> {
        let wire = request_start(50174, T0, 547_548, "");
        let upstream = request_start(0, T0 + 300_000, 1, "req-1");
        vec![
            response_start(&wire, T0 + 1_000_000),
            wire,
            response_start(&upstream, T0 + 700_000),
            upstream,
            wasm("req-1"),
            access_log("req-1", 50174, T0 + 200_000),
        ]
    }

    fn run(events: Vec<Event>) -> (Vec<CallRecord>, JoinStats) {
        let mut joiner = Joiner::new(JoinConfig::default());
        joiner.apply(Input::Identity {
            ip: "10.0.0.40".into(),
            workload: Workload {
                namespace: "default".into(),
                name: "sleep".into(),
                kind: WorkloadKind::Pod,
            },
        });
        let mut records = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            records.extend(joiner.apply(Input::Event {
                event,
                now_ns: T0 + i as i64,
            }));
        }
        records.extend(joiner.apply(Input::End));
        (records, joiner.stats().clone())
    }

    #[test]
    fn all_layers_make_one_complete_record() {
        let (records, stats) = run(one_call());
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.layers, [Layer::Als, Layer::Wasm, Layer::Tc]);
        assert_eq!(record.request_id, "req-1");
        assert_eq!(
            (record.src.name.as_str(), record.src.kind.as_str()),
            ("sleep", "Pod")
        );
        assert_eq!(
            (record.dst.kind.as_str(), record.dst.port),
            ("External", 80)
        );
        let tc = record.tc.as_ref().unwrap();
        assert_eq!((tc.ip_id, tc.tcp_seq, tc.src.port), (2342, 547_548, 50174));
        assert_eq!(tc.request_id, "req-1");
        assert_eq!(record.auth.as_ref().unwrap().claims["sub"], "alice");
        assert_eq!(
            record.response_flags,
            ["UF: upstream connection failure", "XX"]
        );
        let latency = record.latency.as_ref().unwrap();
        assert_eq!(
            (latency.total_us, latency.upstream_us, latency.sidecar_us),
            (900, 600, 300)
        );
        assert_eq!(latency.before_sidecar_us, Some(200));
        assert_eq!(
            (latency.pod_wire_us, latency.app_wire_us),
            (Some(1000), Some(400))
        );
        assert_eq!((stats.complete, stats.unmatched_tc), (1, 0));
    }

    #[test]
    fn every_arrival_order_gives_the_same_record() {
        let events = one_call();
        let (expected, _) = run(events.clone());
        let mut order: Vec<usize> = (0..events.len()).collect();
        // Heap's algorithm over the 720 orders of the six events.
        let mut c = vec![0; order.len()];
        let mut i = 0;
        let mut seen = 1;
        while i < order.len() {
            if c[i] < i {
                if i % 2 == 0 {
                    order.swap(0, i);
                } else {
                    order.swap(c[i], i);
                }
                let (records, stats) = run(order.iter().map(|&k| events[k].clone()).collect());
                assert_eq!(records, expected, "order {order:?}");
                assert_eq!(stats.complete, 1);
                seen += 1;
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
        assert_eq!(seen, 720);
    }

    #[test]
    fn a_call_missing_a_layer_is_emitted_when_its_window_closes() {
        let mut joiner = Joiner::new(JoinConfig::default());
        let early = joiner.apply(Input::Event {
            event: access_log("req-2", 50000, T0),
            now_ns: T0,
        });
        assert!(early.is_empty());
        assert!(
            joiner
                .apply(Input::Tick {
                    now_ns: T0 + 4 * SECOND
                })
                .is_empty()
        );
        let records = joiner.apply(Input::Tick {
            now_ns: T0 + 5 * SECOND,
        });
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].layers, [Layer::Als]);
        assert_eq!(joiner.stats().partial, 1);
    }

    /// A slow call: the request's first packet, then nothing for longer than
    /// a window (the sidecar waits on its upstream), then the call's other
    /// events. The wire event must still be there when the call closes.
    #[test]
    fn a_slow_call_keeps_its_wire_event() {
        let mut joiner = Joiner::new(JoinConfig::default());
        let wire = request_start(50174, T0, 42, "");
        assert!(
            joiner
                .apply(Input::Event {
                    event: wire,
                    now_ns: T0
                })
                .is_empty()
        );
        let late = T0 + 6 * SECOND;
        for event in [wasm("slow"), access_log("slow", 50174, T0 + 1_000)] {
            joiner.apply(Input::Event {
                event,
                now_ns: late,
            });
        }
        let records = joiner.apply(Input::Tick {
            now_ns: late + 5 * SECOND,
        });
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].tc.as_ref().map(|tc| tc.tcp_seq), Some(42));
        assert_eq!(joiner.stats().unmatched_tc, 0);
    }

    #[test]
    fn keep_alive_requests_get_their_own_wire_event() {
        let mut events = Vec::new();
        for n in 0..3 {
            let start = T0 + i64::from(n) * 10_000_000;
            let wire = request_start(50174, start, 1000 + n * 100, "");
            events.push(response_start(&wire, start + 5_000_000));
            events.push(wire);
            events.push(wasm(&format!("k{n}")));
            let upstream = request_start(0, start + 50_000, 1, &format!("k{n}"));
            events.push(response_start(&upstream, start + 4_000_000));
            events.push(upstream);
        }
        // The access logs arrive last and in reverse.
        for n in (0..3).rev() {
            events.push(access_log(
                &format!("k{n}"),
                50174,
                T0 + i64::from(n) * 10_000_000 + 20_000,
            ));
        }
        let (records, stats) = run(events);
        assert_eq!(stats.complete, 3);
        for record in records {
            let n: u32 = record.request_id[1..].parse().unwrap();
            assert_eq!(record.tc.unwrap().tcp_seq, 1000 + n * 100);
        }
    }

    /// On a fast keep-alive connection the next request's first packet comes
    /// a moment after the sidecar started the previous request; it must not be
    /// taken for it.
    #[test]
    fn back_to_back_keep_alive_requests_are_not_confused() {
        let mut events = Vec::new();
        for n in 0..3u32 {
            // The wire event 20 µs before the sidecar's start, the next request
            // 300 µs after it.
            let start = T0 + i64::from(n) * 320_000;
            let wire = request_start(50174, start - 20_000, 1000 + n * 100, "");
            events.push(response_start(&wire, start + 250_000));
            events.push(wire);
            events.push(wasm(&format!("b{n}")));
            let upstream = request_start(0, start + 10_000, 1, &format!("b{n}"));
            events.push(response_start(&upstream, start + 200_000));
            events.push(upstream);
            events.push(access_log(&format!("b{n}"), 50174, start));
        }
        let (records, stats) = run(events);
        assert_eq!(stats.complete, 3);
        for record in records {
            let n: u32 = record.request_id[1..].parse().unwrap();
            assert_eq!(record.tc.as_ref().unwrap().tcp_seq, 1000 + n * 100);
            assert_eq!(record.latency.unwrap().before_sidecar_us, Some(20));
        }
    }

    #[test]
    fn retransmissions_are_attached_to_their_request() {
        // Retransmissions happen while the request runs, before its access log.
        let mut events = one_call();
        events.insert(events.len() - 1, retransmit(50174, T0 + 100));
        let (records, _) = run(events);
        assert_eq!(records[0].tc.as_ref().unwrap().retransmits, 1);
    }

    /// A request the sidecar rejected before giving it an x-request-id (here
    /// a 431 for an oversized header) is still a call: its access log joins
    /// its wire event through the connection.
    #[test]
    fn a_rejected_request_without_request_id_is_a_record_of_its_own() {
        let mut rejected = access_log("", 50174, T0 + 100_000);
        if let Some(Kind::AccessLog(log)) = &mut rejected.kind {
            log.status = 431;
            log.response_flags = "DPE".into();
            log.method.clear();
            log.path.clear();
        }
        let (records, stats) = run(vec![request_start(50174, T0, 77, ""), rejected]);
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!((record.request_id.as_str(), record.status), ("", 431));
        // The sidecar logged no request line; the wire had it.
        assert_eq!(
            (record.method.as_str(), record.path.as_str()),
            ("GET", "/status")
        );
        assert_eq!(record.layers, [Layer::Als, Layer::Tc]);
        assert_eq!(record.tc.as_ref().unwrap().tcp_seq, 77);
        assert_eq!(record.response_flags, ["DPE: downstream protocol error"]);
        assert_eq!((stats.partial, stats.unmatched_tc), (1, 0));
    }

    #[test]
    fn wasm_events_without_request_id_and_unclaimed_wire_events_are_counted() {
        let (records, stats) = run(vec![wasm(""), request_start(9, T0, 5, "")]);
        assert!(records.is_empty());
        assert_eq!((stats.unmatched_wasm, stats.unmatched_tc), (1, 1));
    }

    #[tokio::test]
    async fn stream_form_ends_with_the_statistics() {
        let inputs = one_call()
            .into_iter()
            .map(|event| Input::Event { event, now_ns: T0 });
        let outputs: Vec<Output> = joined(stream::iter(inputs), JoinConfig::default())
            .collect()
            .await;
        assert!(matches!(outputs[0], Output::Record(_)));
        assert!(matches!(&outputs[1], Output::Done(stats) if stats.complete == 1));
    }
}
