//! Reading ahead in a batch of inputs: what an input's call kept is fetched
//! into the cache while the inputs before it are joined.
//!
//! A call's events arrive up to a second apart (the access log last: Envoy
//! flushes them every second), and by then what the call kept has left the
//! processor's caches. Joining the access log then reads one place after
//! another, each found through the one before: the call's slot, its parts
//! (the filter's event, the identified request), their texts and the
//! request's head, and the wire's queues it searches. Each read waits on
//! memory. Given a batch, the join asks for each of those places some inputs
//! ahead, one level of pointers per input, so that each level is in the cache
//! when the next one is followed. BENCHMARKS.md has what each level is worth.

use apitrace_proto::{Event, event::Kind};

use super::{Input, Joiner, calls::Calls, calls::PendingCall, flow::Flow, prefetch};
use crate::record::CallRecord;

/// How many inputs ahead the call's slot is fetched: as far as the chain
/// below needs, and no farther, for what is fetched to stay in the cache.
const SLOT: usize = 5;
/// Its parts (the slot is in the cache by now).
const PARTS: usize = 3;
/// The parts' texts, the identified request's head, and the fronts of the
/// wire's queues the call's legs are searched in.
const TEXTS: usize = 2;
/// The head's texts.
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
            if let Some((flow, _)) = call.identified.first() {
                // Where the response to the identified request is searched.
                self.identified.prefetch_front(flow);
                self.wire.prefetch_front(&flow.reverse());
            }
        }
        if let Some(Input::Event {
            event: Event {
                kind: Some(Kind::AccessLog(log)),
            },
            ..
        }) = ahead.get(TEXTS)
            && let Some(flow) = Flow::new(
                self.pods.peek(log.reporter.as_ref()),
                log.downstream_remote.as_ref(),
                log.downstream_local.as_ref(),
            )
        {
            // Where the call's request and response starts are searched.
            self.wire.prefetch_front(&flow);
            self.wire.prefetch_front(&flow.reverse());
        }
        if let Some(call) = self.call_of(ahead.get(HEAD_TEXTS)) {
            call.prefetch_head_texts();
        }
    }

    /// The open call `input` is filed under, if there is one.
    fn call_of(&self, input: Option<&Input>) -> Option<&PendingCall> {
        self.calls.find(filed_under(input?)?)
    }
}

impl PendingCall {
    fn prefetch_parts(&self) {
        if let Some(part) = self.wasm.first() {
            prefetch::value(part);
        }
        if let Some(part) = self.identified.first() {
            prefetch::value(part);
        }
    }

    fn prefetch_texts(&self) {
        if let Some(part) = self.wasm.first() {
            part.prefetch_texts();
        }
        if let Some(head) = self.identified_head() {
            prefetch::value(head);
        }
    }

    fn prefetch_head_texts(&self) {
        if let Some(head) = self.identified_head() {
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
