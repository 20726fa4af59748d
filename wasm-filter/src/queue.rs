//! The filter's outbox: events wait here for the next flush, within a byte
//! budget, and every event that does not fit (or whose batch failed) is counted.

use std::collections::VecDeque;

use apitrace_proto::{WasmBatch, WasmEvent};
use prost::Message as _;

#[derive(Debug)]
pub struct Outbox {
    events: VecDeque<WasmEvent>,
    bytes: usize,
    max_bytes: usize,
    /// Events lost since the last batch that left.
    dropped: u64,
}

impl Outbox {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_bytes,
            dropped: 0,
        }
    }

    /// Queues `event`, or counts it as dropped when the budget is spent.
    pub fn push(&mut self, event: WasmEvent) {
        let size = event.encoded_len();
        if self.bytes + size > self.max_bytes {
            self.dropped += 1;
            return;
        }
        self.bytes += size;
        self.events.push_back(event);
    }

    /// Counts events that left in a batch the probe never accepted.
    pub fn count_lost(&mut self, events: u64) {
        self.dropped += events;
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Takes up to `max_events` events as an encoded batch that also reports (and
    /// resets) the drop count. Returns the body and how many events it holds.
    pub fn take_batch(&mut self, max_events: usize) -> Option<(Vec<u8>, u64)> {
        if self.events.is_empty() && self.dropped == 0 {
            return None;
        }
        let n = self.events.len().min(max_events);
        let events: Vec<WasmEvent> = self.events.drain(..n).collect();
        self.bytes -= events
            .iter()
            .map(prost::Message::encoded_len)
            .sum::<usize>();
        let batch = WasmBatch {
            events,
            dropped: std::mem::take(&mut self.dropped),
        };
        Some((batch.encode_to_vec(), n as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> WasmEvent {
        WasmEvent {
            request_id: id.to_owned(),
            path: "/".repeat(100),
            ..WasmEvent::default()
        }
    }

    #[test]
    fn budget_bounds_memory_and_counts_what_is_dropped() {
        let size = event("a").encoded_len();
        let mut outbox = Outbox::new(size * 3);
        for id in ["a", "b", "c", "d", "e"] {
            outbox.push(event(id));
        }
        assert_eq!(outbox.len(), 3);
        let (body, n) = outbox.take_batch(10).unwrap();
        assert_eq!(n, 3);
        let batch = WasmBatch::decode(body.as_slice()).unwrap();
        assert_eq!(batch.dropped, 2);
        assert_eq!(
            batch
                .events
                .iter()
                .map(|e| e.request_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        // The budget is free again once the batch left.
        outbox.push(event("f"));
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn batches_are_bounded_and_drops_travel_even_without_events() {
        let mut outbox = Outbox::new(1 << 20);
        for i in 0..5 {
            outbox.push(event(&i.to_string()));
        }
        let (_, n) = outbox.take_batch(2).unwrap();
        assert_eq!(n, 2);
        assert_eq!(outbox.len(), 3);
        let mut empty = Outbox::new(1 << 20);
        assert!(empty.take_batch(2).is_none());
        empty.count_lost(7);
        let (body, n) = empty.take_batch(2).unwrap();
        assert_eq!(
            (n, WasmBatch::decode(body.as_slice()).unwrap().dropped),
            (0, 7)
        );
    }
}
