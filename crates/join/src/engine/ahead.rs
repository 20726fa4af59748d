//! Reading ahead in a batch of inputs: what an input's call kept is fetched
//! into the cache while the inputs before it are joined.
//!
//! A call's events arrive up to a second apart (the access log last: Envoy
//! flushes them every second), and by then what the call kept has left the
//! processor's caches. Joining the access log then reads one place after
//! another, each found through the one before: the call's slot, its parts
//! (the filter's event, the hop to the app), their texts and the hop's head,
//! and the wire's queues it searches. Each read waits on memory. Given a batch,
//! the join asks for each of those places some inputs ahead, one level of
//! pointers per input, so that each level is in the cache when the next one
//! is followed: 19% more events a second in the join's benchmark (paired
//! ratio over 15 interleaved runs, medians 1.83 M -> 2.17 M). Stage by
//! stage, each over the ones before: the slot 0.5%, the parts 3% (both
//! fetching only a value's first cache line then), their texts with every
//! line of each value 8%, the head's texts 2%, the wire's queues 2.4%.

use std::collections::VecDeque;

use apitrace_proto::{Event, event::Kind};

use super::{
    Calls, Input, Joiner, PendingCall,
    wire::{self, Head},
};
use crate::record::CallRecord;

/// How many inputs ahead the call's slot is fetched: as far as the chain
/// below needs, and no farther, for what is fetched to stay in the cache.
const SLOT: usize = 5;
/// Its parts (the slot is in the cache by now).
const PARTS: usize = 3;
/// The parts' texts, the hop's head, and the fronts of the wire's queues the
/// call's wire is searched in.
const TEXTS: usize = 2;
/// The hop's head's texts.
const HEAD_TEXTS: usize = 1;

impl Joiner {
    /// Applies `inputs` in order, exactly as [`Self::apply`] would one by
    /// one, reading ahead in them (see the module's comment).
    pub fn apply_all(&mut self, inputs: Vec<Input>, records: &mut impl Extend<CallRecord>) {
        let mut inputs = inputs.into_iter();
        loop {
            self.read_ahead(inputs.as_slice());
            let Some(input) = inputs.next() else {
                break;
            };
            self.apply(input, records);
        }
    }

    /// Fetches what the inputs `ahead` will read, each at its distance: the
    /// first of them is applied next.
    fn read_ahead(&self, ahead: &[Input]) {
        if let Some(request_id) = ahead.get(SLOT).and_then(filed_under) {
            self.calls.prefetch(Calls::hash(request_id));
        }
        if let Some(call) = self.call_of(ahead.get(PARTS)) {
            call.prefetch_parts();
        }
        if let Some(call) = self.call_of(ahead.get(TEXTS)) {
            call.prefetch_texts();
            if let Some((flow, _)) = call.upstream.first() {
                // Where the app's response to the hop is searched.
                self.upstream.prefetch_front(flow);
                self.wire.prefetch_front(&wire::reverse(flow));
            }
        }
        if let Some(Input::Event {
            event: Event {
                kind: Some(Kind::AccessLog(log)),
            },
            ..
        }) = ahead.get(TEXTS)
            && let Some(flow) = wire::flow(
                log.downstream_remote.as_ref(),
                log.downstream_local.as_ref(),
            )
        {
            // Where the call's request and response starts are searched.
            self.wire.prefetch_front(&flow);
            self.wire.prefetch_front(&wire::reverse(&flow));
        }
        if let Some(call) = self.call_of(ahead.get(HEAD_TEXTS)) {
            call.prefetch_head_texts();
        }
    }

    /// The open call `input` is filed under, if there is one.
    fn call_of(&self, input: Option<&Input>) -> Option<&PendingCall> {
        let request_id = filed_under(input?)?;
        self.calls.table.find(Calls::hash(request_id), |call| {
            call.request_id.is(request_id)
        })
    }
}

impl Calls {
    /// Fetches the call filed under `hash`, if there is one: the first slot
    /// whose tag matches, its id not compared, so that nothing waits on it.
    fn prefetch(&self, hash: u64) {
        if let Some(call) = self.table.find(hash, |_| true) {
            prefetch(call);
        }
    }
}

impl PendingCall {
    /// The head of the call's first hop to the app, where one was seen.
    fn hop_head(&self) -> Option<&Head> {
        self.upstream.first()?.1.head.as_deref()
    }

    fn prefetch_parts(&self) {
        if let Some(part) = self.wasm.first() {
            prefetch(part);
        }
        if let Some(part) = self.upstream.first() {
            prefetch(part);
        }
    }

    fn prefetch_texts(&self) {
        if let Some(part) = self.wasm.first() {
            part.prefetch_texts();
        }
        if let Some(head) = self.hop_head() {
            prefetch(head);
        }
    }

    fn prefetch_head_texts(&self) {
        if let Some(head) = self.hop_head() {
            head.prefetch_texts();
        }
    }
}

/// The request id `input` is filed under, if it names one.
fn filed_under(input: &Input) -> Option<&str> {
    let Input::Event { event, .. } = input else {
        return None;
    };
    let request_id = match event.kind.as_ref()? {
        Kind::AccessLog(log) => &log.request_id,
        Kind::Wasm(wasm) => &wasm.request_id,
        Kind::Tc(tc) => &tc.http.as_ref()?.request_id,
        Kind::Status(_) => return None,
    };
    Some(request_id.as_str()).filter(|id| !id.is_empty())
}

/// Asks the processor to start loading the cache lines `value` spans.
#[cfg(target_arch = "x86_64")]
pub(super) fn prefetch<T: ?Sized>(value: &T) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    const LINE: usize = 64;
    let start = std::ptr::from_ref(value).cast::<i8>();
    for offset in (0..size_of_val(value)).step_by(LINE) {
        // SAFETY: a prefetch is a hint: it reads nothing the program sees and
        // does not fault, whatever the address; this one is in a live value.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
    }
}

/// Fetches the first two entries of `queue`, where a call's are mostly
/// found: the wire's queues are claimed from their fronts.
pub(super) fn prefetch_front<T>(queue: Option<&VecDeque<T>>) {
    if let Some(queue) = queue {
        queue.range(..queue.len().min(2)).for_each(prefetch);
    }
}

/// Elsewhere, nothing: stable Rust has a prefetch for x86-64 only.
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn prefetch<T: ?Sized>(_: &T) {}
