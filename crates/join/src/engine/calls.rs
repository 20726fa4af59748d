//! The open calls: what has arrived of each, by request id.

use std::{collections::VecDeque, hash::BuildHasher as _};

use apitrace_proto::{AccessLog, Endpoint, TrafficDirection};
use hashbrown::{HashTable, hash_table};
use rustc_hash::FxBuildHasher;

use super::{build::WasmPart, flow::Flow, legs::HopLegs, prefetch, wire::Packet};

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

    /// The call `request_id`, made by `open` (given its id) if it is not
    /// there, unless `printed` holds the id: the call was printed, and none
    /// is opened. The id is hashed once for all of it.
    pub fn get_or_open(
        &mut self,
        request_id: &str,
        printed: &PrintedIds,
        open: impl FnOnce(CallId) -> PendingCall,
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
                Some(entry.insert(open(id)).into_mut())
            }
        }
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
    pub fn new(id: CallId, request_id: &str) -> Self {
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
        primary_index(&self.hops)
    }

    /// The head of the call's first identified request, where one was seen.
    pub fn identified_head(&self) -> Option<&super::wire::Head> {
        self.identified.first()?.1.head.as_deref()
    }
}

/// The index of the hop a record describes its call by (see
/// [`PendingCall::primary_hop`]).
pub(crate) fn primary_index(hops: &[HopLegs]) -> Option<usize> {
    hops.iter()
        .position(|hop| hop.direction == TrafficDirection::Inbound)
        .or_else(|| (!hops.is_empty()).then_some(0))
}

/// Pushes `item` growing `parts` by one only. A call mostly has one part of
/// each kind; `Vec`'s first growth to four would make each call's parts
/// a large allocation, which costs the allocator far more than a small one.
pub(crate) fn push_exact<T>(parts: &mut Vec<T>, item: T) {
    parts.reserve_exact(1);
    parts.push(item);
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

/// The request ids of the calls printed in the last two windows, by hash: an
/// access-log entry, filter event or request on the wire that carries one
/// arrived after its call was printed, and must not become a record of its
/// own. A hash another id shares at
/// worst leaves that call's late request out, never in another call.
#[derive(Debug, Default)]
pub(crate) struct PrintedIds {
    ids: rustc_hash::FxHashSet<u64>,
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
