//! The open calls: what has arrived of each, by request id.

use std::{collections::VecDeque, hash::BuildHasher as _};

use apitrace_proto::{AccessLog, Endpoint, TrafficDirection};
use hashbrown::{HashTable, hash_table};
use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

use super::{
    flow::Flow,
    legs::HopLegs,
    prefetch,
    wasm::WasmPart,
    wire::{Head, Packet, partition_point_from_front},
};

/// Which open call an index points at: the hash of its request id, where
/// the calls table keeps it, and the serial number it was opened with. Plain
/// numbers: the indexes hold no copy of the id, and following one compares no
/// string. A call opened again with the same id gets a new serial, so an
/// entry left from the earlier one points at nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallId {
    hash: u64,
    serial: u64,
}

/// The open calls, by request id: a table of the calls themselves, so that
/// finding one hashes its id once and compares it in place, and opening one
/// copies no key. Most events find their call open.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    table: HashTable<PendingCall>,
    /// Calls in the order they opened: (first arrival, id). Their windows
    /// close in this order; an entry whose call was emitted is skipped.
    opened: VecDeque<(i64, CallId)>,
    /// The serial number of the next call opened.
    next_serial: u64,
}

impl Calls {
    pub fn hash(request_id: &str) -> u64 {
        FxBuildHasher.hash_one(request_id)
    }

    pub fn get(&self, id: CallId) -> Option<&PendingCall> {
        self.table.find(id.hash, |call| call.id == id)
    }

    /// The open call `request_id`, if there is one.
    pub fn find(&self, request_id: &str) -> Option<&PendingCall> {
        self.table.find(Self::hash(request_id), |call| {
            call.request_id.is(request_id)
        })
    }

    pub fn remove(&mut self, id: CallId) -> Option<PendingCall> {
        let entry = self.table.find_entry(id.hash, |call| call.id == id).ok()?;
        Some(entry.remove().0)
    }

    /// The open call `request_id`, opened now (its window from `now_ns`) if
    /// it was not, unless `printed` holds the id: the call was printed in the
    /// last two windows, none is opened, and the caller counts the event as
    /// late (rule 8: a call is printed once). The id is hashed once for all
    /// of it.
    pub fn open(
        &mut self,
        request_id: &str,
        printed: &PrintedIds,
        now_ns: i64,
    ) -> Option<&mut PendingCall> {
        let hash = Self::hash(request_id);
        let entry = self.table.entry(
            hash,
            |call| call.request_id.is(request_id),
            |call| call.id.hash,
        );
        match entry {
            hash_table::Entry::Occupied(entry) => Some(entry.into_mut()),
            hash_table::Entry::Vacant(_) if printed.holds(hash) => None,
            hash_table::Entry::Vacant(entry) => {
                let id = CallId {
                    hash,
                    serial: self.next_serial,
                };
                self.next_serial += 1;
                self.opened.push_back((now_ns, id));
                Some(entry.insert(PendingCall::new(id, request_id)).into_mut())
            }
        }
    }

    /// Takes the oldest call off the queue of windows if its window, from
    /// when it opened, closed by `now_ns`. The call may have been emitted
    /// already: then [`Self::get`] finds nothing.
    pub fn next_due(&mut self, window_ns: i64, now_ns: i64) -> Option<CallId> {
        let &(opened_ns, _) = self.opened.front()?;
        if opened_ns.saturating_add(window_ns) > now_ns {
            return None;
        }
        self.opened.pop_front().map(|(_, id)| id)
    }

    /// How many calls are open that started before `before_ns`.
    pub fn started_before(&self, before_ns: i64) -> usize {
        self.table
            .iter()
            .filter(|call| call.start_ns().is_some_and(|at| at < before_ns))
            .count()
    }

    /// Fetches the call filed under `hash`, if there is one: the first slot
    /// whose tag matches, its id not compared, so that nothing waits on it.
    pub fn prefetch(&self, hash: u64) {
        if let Some(call) = self.table.find(hash, |_| true) {
            prefetch::value(call);
        }
    }
}

/// The longest request id kept in the call itself.
pub(crate) const INLINE_ID: usize = 38;

/// A request id, kept in the call itself when it is as short as Envoy's
/// (a UUID, 36 bytes): finding a call then reads one place in memory, where
/// a separate string would be a second read from memory for each event.
#[derive(Debug)]
pub(crate) enum RequestId {
    Inline { len: u8, bytes: [u8; INLINE_ID] },
    Heap(Box<str>),
}

impl RequestId {
    pub fn new(id: &str) -> Self {
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

    pub fn is(&self, id: &str) -> bool {
        self.as_bytes() == id.as_bytes()
    }

    pub fn into_string(self) -> String {
        match self {
            // Copied from a `str`: always UTF-8.
            Self::Inline { .. } => String::from_utf8(self.as_bytes().to_vec()).unwrap_or_default(),
            Self::Heap(id) => id.into(),
        }
    }
}

/// Keys of calls without an x-request-id start with a byte no header value
/// can hold, so that they never meet a real request id.
pub(crate) const UNIDENTIFIED: char = '\0';

/// The key of a call the sidecar logged without an x-request-id (it
/// rejected the request before assigning one): its connection and start.
pub(crate) fn unidentified_call_key(log: &AccessLog) -> String {
    let endpoint = |e: Option<&Endpoint>| e.map(ToString::to_string).unwrap_or_default();
    format!(
        "{UNIDENTIFIED}{} {} {}",
        endpoint(log.downstream_remote.as_ref()),
        endpoint(log.downstream_local.as_ref()),
        log.start_time_unix_nano
    )
}

/// What has arrived of one call.
#[derive(Debug)]
pub(crate) struct PendingCall {
    pub id: CallId,
    /// The x-request-id (or, without one, the connection and start time).
    pub request_id: RequestId,
    /// The sidecars' access-log entries: one per hop.
    pub access_logs: Vec<AccessLog>,
    /// Where each entry's hop is on the wire, parsed once (in the order of
    /// `access_logs`).
    pub hops: Vec<HopLegs>,
    pub wasm: Vec<WasmPart>,
    /// The requests that carried the call's x-request-id on the wire, with
    /// their flows (rule 1).
    pub identified: Vec<(Flow, Packet)>,
}

impl PendingCall {
    fn new(id: CallId, request_id: &str) -> Self {
        Self {
            id,
            request_id: RequestId::new(request_id),
            access_logs: Vec::new(),
            hops: Vec::new(),
            wasm: Vec::new(),
            identified: Vec::new(),
        }
    }

    /// The hop the record describes the call by: the called pod's sidecar
    /// (the inbound one) when it logged the call, else the first that did.
    pub fn primary_hop(&self) -> Option<usize> {
        self.hops
            .iter()
            .position(|hop| hop.direction == TrafficDirection::Inbound)
            .or_else(|| (!self.hops.is_empty()).then_some(0))
    }

    /// The head of the call's first identified request, where one was seen.
    pub fn identified_head(&self) -> Option<&Head> {
        self.identified.first()?.1.head.as_deref()
    }

    /// When the call began, by the earliest time any of its events carries.
    pub fn start_ns(&self) -> Option<i64> {
        let logs = self.access_logs.iter().map(|log| log.start_time_unix_nano);
        let wasm = self.wasm.iter().map(|part| part.time_ns);
        let wire = self.identified.iter().map(|(_, packet)| packet.time_ns);
        logs.chain(wasm).chain(wire).filter(|&at| at > 0).min()
    }
}

/// Pushes `item` growing `parts` by one only. A call mostly has one part of
/// each kind; `Vec`'s first growth to four would make each call's parts
/// a large allocation, which costs the allocator far more than a small one.
pub(crate) fn push_exact<T>(parts: &mut Vec<T>, item: T) {
    parts.reserve_exact(1);
    parts.push(item);
}

/// The request ids of the calls printed in the last two windows, by hash: an
/// access-log entry, filter event or request on the wire that carries one
/// arrived after its call was printed, and must not become a record of its
/// own. A hash another id shares at
/// worst leaves that call's late request out, never in another call.
#[derive(Debug, Default)]
pub(crate) struct PrintedIds {
    ids: FxHashSet<u64>,
    /// When each was printed, oldest first.
    order: VecDeque<(i64, u64)>,
}

impl PrintedIds {
    /// Notes the call `id` printed at `now_ns`.
    pub fn insert(&mut self, id: CallId, now_ns: i64) {
        let hash = id.hash;
        if self.ids.insert(hash) {
            self.order.push_back((now_ns, hash));
        }
    }

    /// Whether a call whose id hashes to `hash` was printed.
    fn holds(&self, hash: u64) -> bool {
        !self.ids.is_empty() && self.ids.contains(&hash)
    }

    /// Forgets the ids printed at or before `cutoff_ns`.
    pub fn expire(&mut self, cutoff_ns: i64) {
        while let Some(&(printed_ns, hash)) = self.order.front() {
            if printed_ns > cutoff_ns {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&hash);
        }
    }
}

/// The requests carrying a call's `x-request-id` (rule 1), by flow, in time
/// order: the sidecar pools its connections to the app, so one carries many
/// calls, one after the other.
#[derive(Debug, Default)]
pub(crate) struct IdentifiedRequests {
    /// A queue: calls are mostly emitted oldest first. Each request's time,
    /// call and HTTP/2 stream (0 for HTTP/1).
    requests: FxHashMap<Flow, VecDeque<(i64, CallId, u32)>>,
}

impl IdentifiedRequests {
    pub fn add(&mut self, flow: Flow, time_ns: i64, id: CallId, stream: u32) {
        let requests = self.requests.entry(flow).or_default();
        if requests.back().is_none_or(|(last, ..)| *last <= time_ns) {
            requests.push_back((time_ns, id, stream));
        } else {
            let at = requests.partition_point(|(time, ..)| *time <= time_ns);
            requests.insert(at, (time_ns, id, stream));
        }
    }

    pub fn remove(&mut self, flow: &Flow, time_ns: i64, id: CallId) {
        let Some(requests) = self.requests.get_mut(flow) else {
            return;
        };
        let from = partition_point_from_front(requests, |(time, ..)| *time < time_ns);
        if let Some(offset) = requests
            .range(from..)
            .take_while(|(time, ..)| *time == time_ns)
            .position(|(_, indexed, _)| *indexed == id)
        {
            requests.remove(from + offset);
        }
        if requests.is_empty() {
            self.requests.remove(flow);
        }
    }

    /// Fetches the front of `flow`'s queue into the cache, for the batch's
    /// read-ahead.
    pub fn prefetch_front(&self, flow: &Flow) {
        prefetch::front(self.requests.get(flow));
    }

    /// The call a response seen at `time_ns` on the reverse of `flow`
    /// answers: the one whose request on `flow` is on the response's HTTP/2
    /// `stream`, or without one (HTTP/1), the one whose request went last at
    /// or before it.
    pub fn answered_by(&self, flow: &Flow, time_ns: i64, stream: u32) -> Option<&CallId> {
        let requests = self.requests.get(flow)?;
        if stream != 0 {
            return requests
                .iter()
                .rev()
                .find(|(time, _, on)| *on == stream && *time <= time_ns)
                .map(|(_, id, _)| id);
        }
        // Mostly the response to the latest request.
        if let Some((time, id, _)) = requests.back()
            && *time <= time_ns
        {
            return Some(id);
        }
        let index = requests
            .partition_point(|(time, ..)| *time <= time_ns)
            .checked_sub(1)?;
        Some(&requests[index].1)
    }

    /// When the next request on `flow` after `time_ns` went.
    pub fn next_after(&self, flow: &Flow, time_ns: i64) -> Option<i64> {
        let requests = self.requests.get(flow)?;
        let index = partition_point_from_front(requests, |(time, ..)| *time <= time_ns);
        requests.get(index).map(|(time, ..)| *time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
