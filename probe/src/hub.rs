//! The fan-out from the probe's sources (TC rings, ALS streams, WASM ingest) to
//! the CLI's subscriptions.
//!
//! A bounded broadcast channel decouples them: sources never wait for a slow
//! subscriber. A subscriber that falls behind loses the oldest events, and the
//! loss is counted, never silent.

use std::sync::Arc;

use apitrace_proto::{Event, ProbeStatus, event::Kind};
use tokio::sync::broadcast;

use crate::counters::Counters;

#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Event>,
    counters: Arc<Counters>,
}

impl Hub {
    pub fn new(capacity: usize, counters: Arc<Counters>) -> Self {
        let (sender, _) = broadcast::channel(capacity);
        Self { sender, counters }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub fn publish(&self, kind: Kind) {
        if self.sender.send(Event { kind: Some(kind) }).is_err() {
            Counters::increment(&self.counters.no_subscriber);
        }
    }

    /// Publishes a status without counting it as lost when nobody listens:
    /// statuses are state, and every subscription starts with a fresh one.
    pub fn publish_status(&self, status: ProbeStatus) {
        let _ = self.sender.send(Event {
            kind: Some(Kind::Status(status)),
        });
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
            counters: Arc::clone(&self.counters),
        }
    }
}

pub struct Subscription {
    receiver: broadcast::Receiver<Event>,
    counters: Arc<Counters>,
}

impl Subscription {
    /// The next event, or `None` when the hub is gone. Events this subscriber
    /// missed by falling behind are counted and skipped.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            match self.receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Counters::add(&self.counters.subscriber_lagged, missed);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apitrace_proto::WasmEvent;

    fn wasm(id: &str) -> Kind {
        Kind::Wasm(WasmEvent {
            request_id: id.into(),
            ..WasmEvent::default()
        })
    }

    #[tokio::test]
    async fn events_without_a_subscriber_are_counted() {
        let hub = Hub::new(4, Arc::default());
        hub.publish(wasm("a"));
        assert_eq!(hub.counters().snapshot().no_subscriber, 1);
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_the_oldest_events_and_the_loss_is_counted() {
        let hub = Hub::new(2, Arc::default());
        let mut subscription = hub.subscribe();
        for id in ["1", "2", "3", "4", "5"] {
            hub.publish(wasm(id));
        }
        let first = subscription.next().await.unwrap();
        assert!(matches!(first.kind, Some(Kind::Wasm(ref e)) if e.request_id == "4"));
        assert_eq!(hub.counters().snapshot().subscriber_lagged, 3);
    }
}
