//! The join state machine and its stream form.

mod ahead;
mod build;
mod texts;
mod wire;

use std::{collections::VecDeque, hash::BuildHasher as _, net::IpAddr};

use apitrace_proto::{AccessLog, Endpoint as ProtoEndpoint, Event, TcEvent, TcKind, event::Kind};
use futures::{Stream, StreamExt as _, stream};
use hashbrown::{HashTable, hash_table};
use rustc_hash::{FxBuildHasher, FxHashMap};
use serde::Serialize;

use crate::{
    directory::{Directory, Workload},
    record::CallRecord,
};
use build::{JsonMemo, WasmPart, Wire, build_record, primary_index};
use wire::{Exchange, Flow, InterfaceNames, Packet, UpstreamIndex, WireIndex, flow, reverse};

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

/// How often the wire index is swept for what no call claimed, per window:
/// an unclaimed wire event is forgotten two windows after it arrived, and an
/// eighth of one later at most.
const SWEEPS_PER_WINDOW: i64 = 8;

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
    /// Keep the raw credentials in the records, when the filter sent them.
    pub show_secrets: bool,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            window_ns: 5_000_000_000,
            expect: vec![Part::AccessLog, Part::Wasm, Part::Wire, Part::Upstream],
            wire_tolerance_ns: 50_000,
            show_secrets: false,
        }
    }
}

/// What the engine is fed. Every input carries the time it was observed at
/// (Unix nanoseconds), which is the engine's only clock.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "every event passes through here once; boxing would add an allocation per event"
)]
pub enum Input {
    Event {
        event: Event,
        now_ns: i64,
    },
    /// Who an address is from `since_ns` on, for the records' `src` and `dst`,
    /// and to know which calls a second sidecar will log.
    Identity {
        ip: IpAddr,
        since_ns: i64,
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
    /// TC retransmissions and resets on a connection after its calls were
    /// emitted: its teardown (a retransmitted FIN), or too late for a call
    /// that was already printed.
    pub tc_after_calls: u64,
}

/// Which open call an index points at: the hash of its request id, where
/// the calls table keeps it, and the serial number it was opened with. Plain
/// numbers: the indexes hold no copy of the id, and following one compares no
/// string. A call opened again with the same id gets a new serial, so an
/// entry left from the earlier one points at nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CallId {
    hash: u64,
    serial: u64,
}

/// The open calls, by request id: a table of the calls themselves, so that
/// finding one hashes its id once and compares it in place, and opening one
/// copies no key. Most events find their call open.
#[derive(Debug, Default)]
struct Calls {
    table: HashTable<PendingCall>,
    /// The serial number of the next call opened.
    next_serial: u64,
}

impl Calls {
    fn hash(request_id: &str) -> u64 {
        FxBuildHasher.hash_one(request_id)
    }

    fn get(&self, id: CallId) -> Option<&PendingCall> {
        self.table.find(id.hash, |call| call.id == id)
    }

    fn get_mut(&mut self, id: CallId) -> Option<&mut PendingCall> {
        self.table.find_mut(id.hash, |call| call.id == id)
    }

    fn remove(&mut self, id: CallId) -> Option<PendingCall> {
        let entry = self.table.find_entry(id.hash, |call| call.id == id).ok()?;
        Some(entry.remove().0)
    }

    /// The call `request_id`, made by `open` (given its id) if it is not
    /// there.
    fn get_or_open(
        &mut self,
        request_id: &str,
        open: impl FnOnce(CallId) -> PendingCall,
    ) -> &mut PendingCall {
        let hash = Self::hash(request_id);
        let entry = self.table.entry(
            hash,
            |call| call.request_id.is(request_id),
            |call| call.id.hash,
        );
        match entry {
            hash_table::Entry::Occupied(entry) => entry.into_mut(),
            hash_table::Entry::Vacant(entry) => {
                let id = CallId {
                    hash,
                    serial: self.next_serial,
                };
                self.next_serial += 1;
                entry.insert(open(id)).into_mut()
            }
        }
    }
}

/// The longest request id kept in the call itself.
const INLINE_ID: usize = 38;

/// A request id, kept in the call itself when it is as short as Envoy's
/// (a UUID, 36 bytes): finding a call then reads one place in memory, where
/// a separate string would be a second read from memory for each event. Worth
/// 7% of the join's throughput (median of ten runs, 1.43 M -> 1.53 M events/s).
#[derive(Debug)]
enum RequestId {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Heap(Box<str>),
}

impl RequestId {
    fn new(id: &str) -> Self {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= INLINE_ID => {
                let mut bytes = [0; INLINE_ID];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(id.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(id) => id.as_bytes(),
        }
    }

    fn is(&self, id: &str) -> bool {
        self.as_bytes() == id.as_bytes()
    }

    fn into_string(self) -> String {
        match self {
            // Copied from a `str`: always UTF-8.
            Self::Inline { .. } => String::from_utf8(self.as_bytes().to_vec()).unwrap_or_default(),
            Self::Heap(id) => id.into(),
        }
    }
}

/// What has arrived of one call.
#[derive(Debug)]
pub(crate) struct PendingCall {
    id: CallId,
    /// The x-request-id (or, without one, the connection and start time).
    request_id: RequestId,
    pub(crate) access_logs: Vec<AccessLog>,
    /// The connections the access logs name, parsed once: the keys the call
    /// is indexed under in `awaiting_wire`.
    downstream_flows: Vec<Flow>,
    /// Where and when the request to look for on the wire started: the
    /// primary log's connection and start time.
    wire_request: Option<(Flow, i64)>,
    pub(crate) wasm: Vec<WasmPart>,
    /// The sidecar's plaintext requests to the app, with the x-request-id,
    /// and their flow.
    pub(crate) upstream: Vec<(Flow, Packet)>,
}

#[derive(Debug)]
pub struct Joiner {
    config: JoinConfig,
    directory: Directory,
    calls: Calls,
    /// Calls in the order they opened: (first arrival, id). Their windows
    /// close in this order; an entry whose call was emitted is skipped.
    opened: VecDeque<(i64, CallId)>,
    wire: WireIndex,
    interfaces: InterfaceNames,
    /// Open calls by the connection their access logs name, so that a wire
    /// event finds its call without looking at the others.
    awaiting_wire: FxHashMap<Flow, Vec<CallId>>,
    /// Open calls by their plaintext hop to the app.
    upstream: UpstreamIndex,
    json: JsonMemo,
    stats: JoinStats,
}

impl Joiner {
    pub fn new(config: JoinConfig) -> Self {
        Self {
            wire: WireIndex::new(config.window_ns / SWEEPS_PER_WINDOW),
            config,
            directory: Directory::default(),
            calls: Calls::default(),
            opened: VecDeque::new(),
            interfaces: InterfaceNames::default(),
            awaiting_wire: FxHashMap::default(),
            upstream: UpstreamIndex::default(),
            json: JsonMemo::default(),
            stats: JoinStats::default(),
        }
    }

    pub fn stats(&self) -> &JoinStats {
        &self.stats
    }

    /// Applies one input and hands the calls it completed or expired to
    /// `records`, oldest first: a `Vec` the caller reuses from one input to
    /// the next, or a sink that prints each record as it comes. The end of a
    /// session closes thousands of calls at once; gathered first, at 968
    /// bytes a record, they grow a buffer onto fresh pages (3.6% of the
    /// benchmark's time, in which 20 000 calls are open at its end).
    pub fn apply(&mut self, input: Input, records: &mut impl Extend<CallRecord>) {
        match input {
            Input::Event { event, now_ns } => {
                if let Some((request_id, claims)) = self.accept(event, now_ns) {
                    records.extend(self.emit(request_id, claims, true, now_ns));
                }
                self.expire(now_ns, records);
            }
            Input::Identity {
                ip,
                since_ns,
                workload,
            } => self.directory.insert(ip, since_ns, workload),
            Input::Tick { now_ns } => self.expire(now_ns, records),
            Input::End => self.expire(i64::MAX, records),
        }
    }

    /// Files an event; returns the call it completed, and what that call
    /// claims of the wire.
    fn accept(&mut self, event: Event, now_ns: i64) -> Option<(CallId, Claims)> {
        match event.kind? {
            Kind::AccessLog(log) => {
                // Requests the sidecar rejected before assigning an
                // x-request-id (a malformed request line, an oversized header)
                // and TCP proxy entries are calls too, known by their
                // connection and start time.
                let call = if log.request_id.is_empty() {
                    self.open(&unidentified_call_key(&log), now_ns)
                } else {
                    self.open(&log.request_id, now_ns)
                };
                let id = call.id;
                let key = flow(
                    log.downstream_remote.as_ref(),
                    log.downstream_local.as_ref(),
                );
                let start_ns = log.start_time_unix_nano;
                push_exact(&mut call.access_logs, log);
                // Another entry only ever takes over as the primary one.
                if primary_index(&call.access_logs) == Some(call.access_logs.len() - 1) {
                    call.wire_request = key.map(|key| (key, start_ns));
                }
                let completed = self.completed(id);
                // A call its access log completes is emitted now: indexing it
                // by its connection would be undone at once.
                if completed.is_none()
                    && let Some(key) = key
                    && let Some(call) = self.calls.get_mut(id)
                {
                    push_exact(&mut call.downstream_flows, key);
                    self.awaiting_wire.entry(key).or_default().push(id);
                }
                completed
            }
            Kind::Wasm(mut wasm) => {
                if wasm.request_id.is_empty() {
                    self.stats.unmatched_wasm += 1;
                    return None;
                }
                let request_id = std::mem::take(&mut wasm.request_id);
                let part = WasmPart::new(wasm, self.config.show_secrets, &mut self.json);
                let call = self.open(&request_id, now_ns);
                push_exact(&mut call.wasm, part);
                let id = call.id;
                self.completed(id)
            }
            Kind::Tc(tc) => self.accept_tc(tc, now_ns),
            Kind::Status(_) => None,
        }
    }

    fn accept_tc(&mut self, tc: TcEvent, now_ns: i64) -> Option<(CallId, Claims)> {
        let key = flow(tc.src.as_ref(), tc.dst.as_ref())?;
        match TcKind::try_from(tc.kind) {
            Ok(TcKind::Message) => {
                let packet = self.interfaces.packet(tc);
                let time = packet.time_ns;
                let request_id = packet.head.as_ref().and_then(|head| head.request_id());
                if let Some(request_id) = request_id {
                    // A hop after a sidecar: the header it added is on the wire.
                    let call = self.open(request_id, now_ns);
                    let id = call.id;
                    push_exact(&mut call.upstream, (key, packet));
                    self.upstream.add(key, time, id);
                    return self.completed(id);
                }
                self.wire.add_message(key, packet, now_ns);
                // A message start can complete a call whose other parts came
                // first: as its request start, as the response to it, or as
                // the app's response on its hop from the sidecar (to the
                // request that went last before it).
                let reversed = reverse(&key);
                let answered = self.upstream.last_before(&reversed, time);
                [&key, &reversed]
                    .into_iter()
                    .filter_map(|key| self.awaiting_wire.get(key))
                    .flatten()
                    .chain(answered)
                    .find_map(|&id| self.completed(id))
            }
            Ok(kind @ (TcKind::Retransmit | TcKind::Reset)) => {
                // Attributed when a call on this connection is emitted.
                self.wire
                    .add_context(&key, tc.time_unix_nano, kind == TcKind::Reset, now_ns);
                None
            }
            // Connection opens, accepts and closes are context, not calls.
            _ => None,
        }
    }

    /// The open call `request_id`, opened now if it was not.
    fn open(&mut self, request_id: &str, now_ns: i64) -> &mut PendingCall {
        let opened = &mut self.opened;
        self.calls.get_or_open(request_id, |id| {
            opened.push_back((now_ns, id));
            PendingCall {
                id,
                request_id: RequestId::new(request_id),
                access_logs: Vec::new(),
                downstream_flows: Vec::new(),
                wire_request: None,
                wasm: Vec::new(),
                upstream: Vec::new(),
            }
        })
    }

    /// The call `id` with what it claims of the wire, if it has every part
    /// its session expects.
    fn completed(&self, id: CallId) -> Option<(CallId, Claims)> {
        let call = self.calls.get(id)?;
        // Most calls checked still miss a part that costs no search to see.
        if !self.has_every_part(call, None) || !self.has_every_hop(call) {
            return None;
        }
        let claims = self.claims(call);
        self.has_every_part(call, Some(&claims))
            .then_some((id, claims))
    }

    /// Whether `call` has each part its session expects (see [`has_part`]).
    fn has_every_part(&self, call: &PendingCall, claims: Option<&Claims>) -> bool {
        self.config
            .expect
            .iter()
            .all(|&part| has_part(call, part, claims))
    }

    /// What `call` would take of the wire if it were emitted now.
    fn claims(&self, call: &PendingCall) -> Claims {
        let wire = call.wire_request.and_then(|(flow, start_ns)| {
            self.wire
                .find_exchange(&flow, start_ns, self.config.wire_tolerance_ns)
        });
        Claims {
            wire,
            upstream_response: self.find_upstream_response(call),
        }
    }

    /// The start of the app's response to the sidecar's first request of
    /// `call`: before the sidecar's next request on that pooled connection.
    fn find_upstream_response(&self, call: &PendingCall) -> Option<wire::Pick> {
        let (request_flow, request) = call.upstream.first()?;
        let request_ns = request.time_ns;
        let until = self
            .upstream
            .next_after(request_flow, request_ns)
            .unwrap_or(i64::MAX);
        self.wire.find_response(request_flow, request_ns, until)
    }

    /// Whether each traced sidecar that takes part in the call has logged its
    /// hop: a call from a traced pod to a traced pod is logged twice, and is
    /// not complete with one of the two.
    fn has_every_hop(&self, call: &PendingCall) -> bool {
        let direction = |wanted: &str| {
            call.access_logs
                .iter()
                .find(|log| log.upstream_cluster.split('|').next() == Some(wanted))
        };
        let traced = |endpoint: Option<&ProtoEndpoint>, at: i64| {
            endpoint.is_some_and(|endpoint| self.directory.is_traced(&endpoint.ip, at))
        };
        match (direction("inbound"), direction("outbound")) {
            (Some(inbound), None) => !traced(
                inbound.downstream_remote.as_ref(),
                inbound.start_time_unix_nano,
            ),
            (None, Some(outbound)) => !traced(
                outbound.upstream_remote.as_ref(),
                outbound.start_time_unix_nano,
            ),
            _ => true,
        }
    }

    /// Emits the calls whose window closed, and forgets wire events no call
    /// claimed in time.
    fn expire(&mut self, now_ns: i64, records: &mut impl Extend<CallRecord>) {
        let window = self.config.window_ns;
        while let Some((opened_ns, _)) = self.opened.front() {
            if opened_ns.saturating_add(window) > now_ns {
                break;
            }
            let Some((_, id)) = self.opened.pop_front() else {
                break;
            };
            let Some(call) = self.calls.get(id) else {
                continue;
            };
            let claims = self.claims(call);
            let complete = self.has_every_hop(call) && self.has_every_part(call, Some(&claims));
            records.extend(self.emit(id, claims, complete, now_ns));
        }
        // A wire event can come up to a window before its call's first event
        // (the request starts long before the sidecar logs it), and the call
        // may wait a window more: a wire event is kept for two (and up to
        // a sweep more, see `SWEEPS_PER_WINDOW`).
        let cutoff = now_ns.saturating_sub(window.saturating_mul(2));
        let expired = self.wire.expire(cutoff);
        self.stats.unmatched_tc += expired.unmatched;
        self.stats.tc_after_calls += expired.after_a_call;
    }

    /// Removes the call `id`, takes what it claims of the wire, and makes its
    /// record.
    fn emit(
        &mut self,
        id: CallId,
        claims: Claims,
        complete: bool,
        now_ns: i64,
    ) -> Option<CallRecord> {
        let call = self.calls.remove(id)?;
        for (key, upstream) in &call.upstream {
            self.upstream.remove(key, upstream.time_ns, id);
        }
        for key in &call.downstream_flows {
            unindex(&mut self.awaiting_wire, key, id);
        }
        let wire = claims.wire.and_then(|claim| self.claim_wire(claim, now_ns));
        let upstream_response = match claims.upstream_response {
            // Taking the wire's messages moved the others on their flows.
            Some(pick) if claims.wire.is_some_and(|claim| claim.touches(&pick.flow)) => {
                self.find_upstream_response(&call)
            }
            pick => pick,
        }
        .and_then(|pick| self.wire.take(pick));
        if complete {
            self.stats.complete += 1;
        } else {
            self.stats.partial += 1;
        }
        Some(build_record(call, wire, upstream_response, &self.directory))
    }

    /// Takes a request start, its response start, and the retransmissions and
    /// resets of its connection from it until the next request on it.
    fn claim_wire(&mut self, claim: Exchange, now_ns: i64) -> Option<Wire> {
        let request = self.wire.take(claim.request)?;
        let response = claim.response.and_then(|pick| self.wire.take(pick));
        let (retransmits, resets) = self.wire.take_context(
            &claim.request.flow,
            claim.request_ns,
            claim.next_request_ns,
            now_ns,
        );
        Some(Wire {
            flow: claim.request.flow,
            request,
            response,
            retransmits,
            resets,
        })
    }
}

/// What a call takes of the wire when it is emitted, found once when it is
/// checked for completeness.
#[derive(Debug, Clone, Copy)]
struct Claims {
    wire: Option<Exchange>,
    /// The start of the app's response on the hop from the sidecar.
    upstream_response: Option<wire::Pick>,
}

/// Whether `call` has `part`. Without `claims` (the wire not searched yet),
/// a part found on the wire counts if the call has what the search needs.
fn has_part(call: &PendingCall, part: Part, claims: Option<&Claims>) -> bool {
    match part {
        Part::AccessLog => !call.access_logs.is_empty(),
        // Each sidecar that logged the call ran the filter too.
        Part::Wasm => call.wasm.len() >= call.access_logs.len().max(1),
        Part::Upstream => match claims {
            Some(claims) => claims.upstream_response.is_some(),
            None => !call.upstream.is_empty(),
        },
        Part::Wire => match claims {
            Some(claims) => claims.wire.is_some_and(|wire| wire.response.is_some()),
            None => call.wire_request.is_some(),
        },
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

/// Pushes `item` growing `parts` by one only. A call mostly has one part of
/// each kind; `Vec`'s first growth to four would make each call's parts
/// a large allocation, which costs the allocator far more than a small one.
fn push_exact<T>(parts: &mut Vec<T>, item: T) {
    parts.reserve_exact(1);
    parts.push(item);
}

/// Removes the call `id` from the calls indexed under `key`.
fn unindex(index: &mut FxHashMap<Flow, Vec<CallId>>, key: &Flow, id: CallId) {
    if let Some(ids) = index.get_mut(key) {
        ids.retain(|indexed| *indexed != id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
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
                let mut records = Vec::new();
                joiner.apply(input, &mut records);
                let records = records.into_iter().map(Output::Record);
                Some((
                    stream::iter(records.collect::<Vec<_>>()),
                    Some((joiner, inputs)),
                ))
            }
            None => {
                let mut records = Vec::new();
                joiner.apply(Input::End, &mut records);
                let mut outputs: Vec<Output> = records.into_iter().map(Output::Record).collect();
                outputs.push(Output::Done(joiner.stats().clone()));
                Some((stream::iter(outputs), None))
            }
        }
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apitrace_proto::{
        AuthInfo, HttpHead, PodRef, RequestLine, TcDirection, WasmEvent, http_head::StartLine,
    };

    use crate::{directory::WorkloadKind, record::Layer};

    #[test]
    fn request_ids_of_any_length_are_kept_whole() {
        for len in [0, 1, 36, INLINE_ID, INLINE_ID + 1, 300] {
            // Multi-byte characters, so that a cut in the wrong place shows.
            let id: String = "é-".chars().cycle().take(len).collect();
            let kept = RequestId::new(&id);
            assert!(kept.is(&id), "{len}");
            assert!(!kept.is(&format!("{id}x")), "{len}");
            if let Some((last, _)) = id.char_indices().last() {
                assert!(!kept.is(&id[..last]), "{len}");
            }
            assert_eq!(kept.into_string(), id);
        }
    }

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

    /// A call is emitted by whichever of its events comes last, not when its
    /// window closes: each kind of event finds the open call it completes.
    #[test]
    fn a_call_is_emitted_by_its_last_event_whichever_it_is() {
        for last in 0..one_call().len() {
            let mut events = one_call();
            let moved = events.remove(last);
            events.push(moved);
            let mut joiner = Joiner::new(JoinConfig::default());
            let counts: Vec<usize> = events
                .into_iter()
                .enumerate()
                .map(|(i, event)| {
                    let now_ns = T0 + i as i64;
                    apply(&mut joiner, Input::Event { event, now_ns }).len()
                })
                .collect();
            assert_eq!(counts, [0, 0, 0, 0, 0, 1], "event {last} last");
            assert_eq!(joiner.stats().complete, 1, "event {last} last");
        }
    }

    /// The records `input` completes or expires.
    pub(super) fn apply(joiner: &mut Joiner, input: Input) -> Vec<CallRecord> {
        let mut records = Vec::new();
        joiner.apply(input, &mut records);
        records
    }

    fn run(events: Vec<Event>) -> (Vec<CallRecord>, JoinStats) {
        let mut joiner = Joiner::new(JoinConfig::default());
        apply(
            &mut joiner,
            Input::Identity {
                ip: "10.0.0.40".parse().unwrap(),
                since_ns: 0,
                workload: Workload {
                    namespace: "default".into(),
                    name: "sleep".into(),
                    kind: WorkloadKind::Pod,
                    traced: false,
                },
            },
        );
        let mut records = Vec::new();
        for (i, event) in events.into_iter().enumerate() {
            records.extend(apply(
                &mut joiner,
                Input::Event {
                    event,
                    now_ns: T0 + i as i64,
                },
            ));
        }
        records.extend(apply(&mut joiner, Input::End));
        (records, joiner.stats().clone())
    }

    /// A pod without a sidecar that logs (or whose entries never came): the
    /// call is still named and answered, from the packets.
    #[test]
    fn a_call_seen_on_the_wire_only_takes_its_peers_and_status_from_the_packets() {
        let request = request_start(0, T0, 1, "req-9");
        let Some(Kind::Tc(mut answer)) = response_start(&request, T0 + 400_000).kind else {
            unreachable!()
        };
        answer.http = Some(HttpHead {
            start_line: Some(StartLine::Response(apitrace_proto::StatusLine {
                version: "HTTP/1.1".into(),
                status: 503,
            })),
            ..HttpHead::default()
        });
        let answer = Event {
            kind: Some(Kind::Tc(answer)),
        };
        let (records, stats) = run(vec![request, answer]);
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.layers, [Layer::Tc]);
        assert_eq!((record.method.as_str(), record.status), ("GET", 503));
        assert_eq!(
            (record.src.ip.as_str(), record.src.port, record.dst.port),
            ("127.0.0.1", 41000, 80)
        );
        assert_eq!((stats.partial, stats.unmatched_tc), (1, 0));
    }

    #[test]
    fn all_layers_make_one_complete_record() {
        let (records, stats) = run(one_call());
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.layers, [Layer::Als, Layer::Wasm, Layer::Tc]);
        assert_eq!(record.request_id, "req-1");
        assert_eq!(
            (record.src.name.as_str(), &*record.src.kind),
            ("sleep", "Pod")
        );
        assert_eq!((&*record.dst.kind, record.dst.port), ("External", 80));
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
        let early = apply(
            &mut joiner,
            Input::Event {
                event: access_log("req-2", 50000, T0),
                now_ns: T0,
            },
        );
        assert!(early.is_empty());
        assert!(
            apply(
                &mut joiner,
                Input::Tick {
                    now_ns: T0 + 4 * SECOND
                }
            )
            .is_empty()
        );
        let records = apply(
            &mut joiner,
            Input::Tick {
                now_ns: T0 + 5 * SECOND,
            },
        );
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
            apply(
                &mut joiner,
                Input::Event {
                    event: wire,
                    now_ns: T0
                }
            )
            .is_empty()
        );
        let late = T0 + 6 * SECOND;
        for event in [wasm("slow"), access_log("slow", 50174, T0 + 1_000)] {
            apply(
                &mut joiner,
                Input::Event {
                    event,
                    now_ns: late,
                },
            );
        }
        let records = apply(
            &mut joiner,
            Input::Tick {
                now_ns: late + 5 * SECOND,
            },
        );
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].tc.as_ref().map(|tc| tc.tcp_seq), Some(42));
        assert_eq!(joiner.stats().unmatched_tc, 0);
    }

    #[test]
    fn keep_alive_requests_get_their_own_wire_event() {
        let mut events = Vec::new();
        for n in 0..3 {
            let start = T0 + i64::from(n) * 10_000_000;
            // Within what the access log says: the sidecar starts 20 µs after
            // the request, receives the app's last byte at 700 µs and sends
            // its own last at 900 µs.
            let wire = request_start(50174, start, 1000 + n * 100, "");
            events.push(response_start(&wire, start + 820_000));
            events.push(wire);
            events.push(wasm(&format!("k{n}")));
            let upstream = request_start(0, start + 50_000, 1, &format!("k{n}"));
            events.push(response_start(&upstream, start + 600_000));
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

    /// A retransmission after the call was printed (the client's FIN, lost
    /// once) is the connection's teardown: counted apart from what matched
    /// nothing.
    #[test]
    fn retransmissions_after_the_call_are_counted_as_such() {
        let mut events = one_call();
        events.push(retransmit(50174, T0 + 200_000_000));
        // And one on a connection no call was made on.
        events.push(retransmit(40000, T0 + 200_000_000));
        let (records, stats) = run(events);
        assert_eq!(records[0].tc.as_ref().unwrap().retransmits, 0);
        assert_eq!((stats.tc_after_calls, stats.unmatched_tc), (1, 1));
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

/// Sessions of several calls, checked for the properties the join promises.
#[cfg(test)]
mod session_tests {
    use apitrace_proto::{
        AccessLog, AuthInfo, Endpoint, HttpHead, PodRef, RequestLine, TcEvent, TcKind, WasmEvent,
        event::Kind, http_head::StartLine,
    };
    use proptest::prelude::*;

    use super::{tests::apply, *};
    use crate::record::Layer;

    const T0: i64 = 1_800_000_000_000_000_000;
    const US: i64 = 1_000;

    fn ep(ip: &str, port: u32) -> Option<Endpoint> {
        Some(Endpoint::new(ip, port))
    }

    fn tc(
        kind: TcKind,
        time: i64,
        src: (&str, u32),
        dst: (&str, u32),
        request_id: Option<&str>,
    ) -> Event {
        let http = request_id.map(|id| HttpHead {
            start_line: Some(StartLine::Request(RequestLine {
                method: "GET".into(),
                path: "/".into(),
                version: "HTTP/1.1".into(),
            })),
            request_id: id.into(),
            authority: String::new(),
        });
        Event {
            kind: Some(Kind::Tc(TcEvent {
                time_unix_nano: time,
                kind: kind as i32,
                src: ep(src.0, src.1),
                dst: ep(dst.0, dst.1),
                tcp_seq: (time / US) as u32,
                http,
                ..TcEvent::default()
            })),
        }
    }

    fn access_log(
        id: &str,
        start: i64,
        client: (&str, u32),
        server: (&str, u32),
        inbound: bool,
    ) -> Event {
        Event {
            kind: Some(Kind::AccessLog(AccessLog {
                start_time_unix_nano: start,
                request_id: id.into(),
                method: "GET".into(),
                path: "/".into(),
                status: 200,
                downstream_remote: ep(client.0, client.1),
                downstream_local: ep(server.0, server.1),
                upstream_cluster: if inbound {
                    "inbound|80||"
                } else {
                    "outbound|80||server.ns.svc.cluster.local"
                }
                .into(),
                reporter: Some(PodRef {
                    namespace: "ns".into(),
                    name: if inbound { "server" } else { "client" }.into(),
                }),
                last_downstream_tx_byte_ns: 300 * US,
                ..AccessLog::default()
            })),
        }
    }

    fn wasm(id: &str, direction: &str) -> Event {
        Event {
            kind: Some(Kind::Wasm(WasmEvent {
                request_id: id.into(),
                listener_direction: direction.into(),
                auth: Some(AuthInfo {
                    scheme: "Bearer".into(),
                    ..AuthInfo::default()
                }),
                ..WasmEvent::default()
            })),
        }
    }

    /// Every event of `requests` calls on one connection from `client_port`:
    /// request start, the sidecar's start, its hop to the app and back, the
    /// response start. With `context`, a retransmission during each request
    /// and, when `reset` is set, a reset during the last one, each arriving
    /// before its call's access log (as they do: the sidecar flushes its logs
    /// every second).
    fn connection(
        name: &str,
        client_port: u32,
        requests: usize,
        first: i64,
        reset: bool,
        context: bool,
    ) -> Vec<Event> {
        let client = ("10.0.0.1", client_port);
        let server = ("10.0.0.2", 80);
        let app = ("127.0.0.1", 8080);
        let sidecar = ("127.0.0.6", 40000 + client_port);
        let mut events = Vec::new();
        let mut t = first;
        for n in 0..requests {
            let id = format!("{name}-{n}");
            events.push(tc(TcKind::Message, t, client, server, None));
            if context {
                events.push(tc(TcKind::Retransmit, t + 5 * US, client, server, None));
                if reset && n + 1 == requests {
                    events.push(tc(TcKind::Reset, t + 250 * US, server, client, None));
                }
            }
            let start = t + 20 * US;
            events.push(access_log(&id, start, client, server, true));
            events.push(wasm(&id, "inbound"));
            events.push(tc(
                TcKind::Message,
                start + 10 * US,
                sidecar,
                app,
                Some(&id),
            ));
            events.push(tc(TcKind::Message, start + 200 * US, app, sidecar, None));
            events.push(tc(TcKind::Message, start + 300 * US, server, client, None));
            t = start + 350 * US;
        }
        events
    }

    /// Three keep-alive connections of three calls and two single calls,
    /// interleaved in time, with retransmissions and resets when `context`.
    fn session(context: bool) -> Vec<Event> {
        let mut events = connection("a", 50001, 3, T0, true, context);
        events.extend(connection("b", 50002, 3, T0 + 100 * US, false, context));
        events.extend(connection("c", 50003, 3, T0 + 200 * US, false, context));
        events.extend(connection("d", 50004, 1, T0 + 50 * US, false, context));
        events.extend(connection("e", 50005, 1, T0 + 60 * US, true, context));
        events
    }

    fn join(events: Vec<Event>) -> (Vec<CallRecord>, JoinStats) {
        join_with(JoinConfig::default(), events)
    }

    fn join_with(config: JoinConfig, events: Vec<Event>) -> (Vec<CallRecord>, JoinStats) {
        let mut joiner = Joiner::new(config);
        let mut records = Vec::new();
        for (n, event) in events.into_iter().enumerate() {
            records.extend(apply(
                &mut joiner,
                Input::Event {
                    event,
                    now_ns: T0 + n as i64,
                },
            ));
        }
        records.extend(apply(&mut joiner, Input::End));
        records.sort_by(|a, b| a.request_id.cmp(&b.request_id));
        (records, joiner.stats().clone())
    }

    #[test]
    fn a_session_in_order_joins_every_call_with_its_own_wire_events() {
        let (records, stats) = join(session(true));
        assert_eq!(records.len(), 11);
        assert_eq!(
            (stats.complete, stats.partial, stats.unmatched_tc),
            (11, 0, 0)
        );
        for record in &records {
            assert_eq!(
                record.layers,
                [Layer::Als, Layer::Wasm, Layer::Tc],
                "{record:?}"
            );
            let wire = record.tc.as_ref().unwrap();
            assert_eq!(wire.retransmits, 1, "{}", record.request_id);
            // tcp_seq is the request start's time in µs: 20 µs before the
            // sidecar's start.
            let sidecar_start = record.time.clone();
            assert_eq!(
                record.latency.as_ref().unwrap().before_sidecar_us,
                Some(20),
                "{sidecar_start}"
            );
        }
        let resets: Vec<(&str, u32)> = records
            .iter()
            .map(|r| (r.request_id.as_str(), r.tc.as_ref().unwrap().resets))
            .filter(|(_, resets)| *resets > 0)
            .collect();
        assert_eq!(
            resets,
            [("a-2", 1), ("e-0", 1)],
            "a reset goes to the call it cut"
        );
    }

    /// Where an event comes from. Each source delivers in its own order (a
    /// pod's ring in time order, a sidecar's access-log stream and its
    /// filter's batches in the order of their calls); how the sources
    /// interleave on the way to the CLI (several probes, flush intervals) is
    /// arbitrary.
    fn source(event: &Event) -> usize {
        match event.kind {
            Some(Kind::Tc(_)) => 0,
            Some(Kind::AccessLog(_)) => 1,
            _ => 2,
        }
    }

    /// The events of `session` as their sources deliver them, interleaved as
    /// `picks` says: each pick takes the next event of source `pick` (or of
    /// the next source that has one left).
    fn interleaved(mut session: Vec<Event>, picks: &[usize]) -> Vec<Event> {
        let time = |event: &Event| match &event.kind {
            Some(Kind::Tc(tc)) => tc.time_unix_nano,
            Some(Kind::AccessLog(log)) => log.start_time_unix_nano,
            _ => 0,
        };
        // Stable: the filter's events keep the order of their calls.
        session.sort_by_key(|event| (source(event), time(event)));
        let mut sources: [std::collections::VecDeque<Event>; 3] = Default::default();
        for event in session {
            sources[source(&event)].push_back(event);
        }
        let mut out = Vec::new();
        for &pick in picks.iter().cycle() {
            let Some(next) = (0..3)
                .map(|k| (pick + k) % 3)
                .find(|&k| !sources[k].is_empty())
            else {
                break;
            };
            out.extend(sources[next].pop_front());
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any interleaving of the sources gives the same records. (A
        /// retransmission or reset that arrives after its call was emitted
        /// cannot be attributed; it is counted as unmatched, so those are
        /// left out here and checked in arrival order above.)
        #[test]
        fn any_interleaving_of_the_sources_gives_the_same_records(
            picks in proptest::collection::vec(0usize..3, 1..200)
        ) {
            let (expected, _) = join(session(false));
            let (records, stats) = join(interleaved(session(false), &picks));
            prop_assert_eq!(records, expected);
            prop_assert_eq!((stats.complete, stats.unmatched_tc), (11, 0));
        }

        /// Inputs fed in batches of any sizes give what they give one by
        /// one: the same records in the same order, the same counts.
        #[test]
        fn inputs_in_batches_give_what_they_give_one_by_one(
            picks in proptest::collection::vec(0usize..3, 1..200),
            sizes in proptest::collection::vec(1usize..12, 1..40),
        ) {
            let inputs = || {
                interleaved(session(true), &picks)
                    .into_iter()
                    .enumerate()
                    .map(|(n, event)| Input::Event { event, now_ns: T0 + n as i64 })
                    .chain([Input::End])
                    .collect::<Vec<_>>()
            };
            let mut joiner = Joiner::new(JoinConfig::default());
            let mut expected = Vec::new();
            for input in inputs() {
                joiner.apply(input, &mut expected);
            }
            let expected_stats = joiner.stats().clone();
            let mut joiner = Joiner::new(JoinConfig::default());
            let mut records = Vec::new();
            let mut inputs = inputs().into_iter();
            for &size in sizes.iter().cycle() {
                let batch: Vec<Input> = inputs.by_ref().take(size).collect();
                if batch.is_empty() {
                    break;
                }
                joiner.apply_all(batch, &mut records);
            }
            prop_assert_eq!(records, expected);
            prop_assert_eq!(joiner.stats(), &expected_stats);
        }

        /// The same when the hop to the app is not part of a complete call (a
        /// session where it is not plaintext): then a call can be complete
        /// before its own request start has arrived, and must not take the
        /// previous request's.
        #[test]
        fn without_the_hop_to_the_app_calls_do_not_take_the_previous_request(
            picks in proptest::collection::vec(0usize..3, 1..200)
        ) {
            let config = || JoinConfig {
                expect: vec![Part::AccessLog, Part::Wasm, Part::Wire],
                ..JoinConfig::default()
            };
            let (expected, _) = join_with(config(), session(false));
            let (records, _) = join_with(config(), interleaved(session(false), &picks));
            let seqs = |records: &[CallRecord]| -> Vec<(String, Option<u32>)> {
                records.iter().map(|r| (r.request_id.clone(), r.tc.as_ref().map(|tc| tc.tcp_seq))).collect()
            };
            prop_assert_eq!(seqs(&records), seqs(&expected));
        }
    }

    /// When a call's WASM event was lost it never completes early, and its
    /// request start stays unclaimed. The next call on the connection, whose
    /// own request start has not arrived yet, must not take it: that request
    /// was answered before the next call began.
    #[test]
    fn a_call_with_a_lost_part_does_not_lend_its_request_start() {
        let client = ("10.0.0.1", 50001);
        let server = ("10.0.0.2", 80);
        let (t_a, s_a) = (T0, T0 + 20 * US);
        let (t_b, s_b) = (T0 + 370 * US, T0 + 390 * US);
        let events = vec![
            tc(TcKind::Message, t_a, client, server, None),
            tc(TcKind::Message, s_a + 300 * US, server, client, None),
            access_log("a", s_a, client, server, true),
            // a's WASM event is lost.
            access_log("b", s_b, client, server, true),
            wasm("b", "inbound"),
            tc(TcKind::Message, t_b, client, server, None),
            tc(TcKind::Message, s_b + 300 * US, server, client, None),
        ];
        let (records, stats) = join_with(
            JoinConfig {
                expect: vec![Part::AccessLog, Part::Wasm, Part::Wire],
                ..JoinConfig::default()
            },
            events,
        );
        let seqs: Vec<(&str, u32)> = records
            .iter()
            .map(|r| {
                (
                    r.request_id.as_str(),
                    r.tc.as_ref().map_or(0, |tc| tc.tcp_seq),
                )
            })
            .collect();
        assert_eq!(seqs, [("a", (t_a / US) as u32), ("b", (t_b / US) as u32)]);
        assert_eq!((stats.complete, stats.partial), (1, 1));
    }

    /// A call between two traced pods is logged by both sidecars (the
    /// caller's outbound, the called pod's inbound) and seen by both filters:
    /// one call with two hops, described as the called pod saw it.
    #[test]
    fn both_sidecars_of_a_call_make_one_record_with_two_hops() {
        let client = ("10.0.0.1", 50010);
        let server = ("10.0.0.2", 80);
        let mut outbound = access_log("x-1", T0, ("10.0.0.1", 33000), ("10.96.0.10", 80), false);
        if let Some(Kind::AccessLog(log)) = &mut outbound.kind {
            log.last_downstream_tx_byte_ns = 900 * US;
            log.upstream_remote = ep("10.0.0.2", 80);
        }
        let events = vec![
            outbound,
            wasm("x-1", "outbound"),
            access_log("x-1", T0 + 100 * US, client, server, true),
            wasm("x-1", "inbound"),
        ];
        let mut joiner = Joiner::new(JoinConfig {
            expect: vec![Part::AccessLog, Part::Wasm],
            ..JoinConfig::default()
        });
        for (ip, name) in [("10.0.0.1", "client"), ("10.0.0.2", "server")] {
            apply(
                &mut joiner,
                Input::Identity {
                    ip: ip.parse().unwrap(),
                    since_ns: 0,
                    workload: crate::directory::Workload {
                        namespace: "ns".into(),
                        name: name.into(),
                        kind: crate::directory::WorkloadKind::Pod,
                        traced: true,
                    },
                },
            );
        }
        let mut records = Vec::new();
        for event in events {
            records.extend(apply(&mut joiner, Input::Event { event, now_ns: T0 }));
        }
        records.extend(apply(&mut joiner, Input::End));
        assert_eq!(records.len(), 1, "{records:?}");
        let record = &records[0];
        let hops: Vec<(&str, &str, i64)> = record
            .hops
            .iter()
            .map(|hop| (hop.reporter.as_str(), &*hop.direction, hop.duration_us))
            .collect();
        assert_eq!(
            hops,
            [
                ("ns/client", "outbound", 900),
                ("ns/server", "inbound", 300)
            ]
        );
        assert_eq!(
            (record.src.name.as_str(), record.dst.name.as_str()),
            ("client", "server")
        );
        assert_eq!(
            joiner.stats().complete,
            1,
            "complete only once both hops were in"
        );
        assert_eq!(record.als.as_ref().unwrap().reporter, "ns/server");
        assert_eq!(record.wasm.as_ref().unwrap().direction, "inbound");
    }
}
