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

    /// Counts as lost everything a batch the probe never accepted stood for:
    /// see [`Batch::undelivered`].
    pub fn count_lost(&mut self, batch_undelivered: u64) {
        self.dropped += batch_undelivered;
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Takes up to `max_events` events as an encoded batch that also reports (and
    /// resets) the drop count.
    pub fn take_batch(&mut self, max_events: usize) -> Option<Batch> {
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
        Some(Batch {
            body: batch.encode_to_vec(),
            undelivered: n as u64 + batch.dropped,
        })
    }
}

/// A batch on its way to the probe.
#[derive(Debug)]
pub struct Batch {
    pub body: Vec<u8>,
    /// What is lost if this batch is not accepted: its events, and the drops it
    /// reports (which were taken out of the outbox's count when it was made).
    pub undelivered: u64,
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

    fn decode(batch: &Batch) -> WasmBatch {
        WasmBatch::decode(batch.body.as_slice()).unwrap()
    }

    #[test]
    fn budget_bounds_memory_and_counts_what_is_dropped() {
        let size = event("a").encoded_len();
        let mut outbox = Outbox::new(size * 3);
        for id in ["a", "b", "c", "d", "e"] {
            outbox.push(event(id));
        }
        assert_eq!(outbox.len(), 3);
        let batch = outbox.take_batch(10).unwrap();
        let decoded = decode(&batch);
        assert_eq!((decoded.events.len(), decoded.dropped), (3, 2));
        let ids: Vec<&str> = decoded
            .events
            .iter()
            .map(|e| e.request_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
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
        assert_eq!(decode(&outbox.take_batch(2).unwrap()).events.len(), 2);
        assert_eq!(outbox.len(), 3);
        let mut empty = Outbox::new(1 << 20);
        assert!(empty.take_batch(2).is_none());
        empty.count_lost(7);
        let batch = empty.take_batch(2).unwrap();
        assert_eq!(
            (decode(&batch).events.len(), decode(&batch).dropped),
            (0, 7)
        );
    }

    /// While the probe is unreachable every batch fails. Each failed batch
    /// gives back its events and the drops it was reporting, so that the first
    /// batch that arrives reports every event sent or dropped until then.
    #[test]
    fn failed_batches_lose_nothing_from_the_count() {
        let size = event("a").encoded_len();
        let mut outbox = Outbox::new(size * 2);
        let mut sent = 0;
        for round in 0..5 {
            for i in 0..3 {
                outbox.push(event(&format!("{round}-{i}")));
                sent += 1;
            }
            let failed = outbox.take_batch(10).unwrap();
            outbox.count_lost(failed.undelivered);
        }
        outbox.push(event("back"));
        sent += 1;
        let delivered = decode(&outbox.take_batch(10).unwrap());
        assert_eq!(delivered.events.len() as u64 + delivered.dropped, sent);
        assert_eq!(delivered.dropped, 15);
    }
}
