//! The fan-out from the probe's sources (TC rings, ALS streams, WASM ingest) to
//! the CLI's subscriptions.
//!
//! A bounded broadcast channel decouples them: sources never wait for a slow
//! subscriber. A subscriber that falls behind loses the oldest events, and the
//! loss is counted, never silent. The channel's slots hold a pointer each, not
//! an event: it allocates every slot up front, and an `Event` is 552 bytes,
//! so an idle probe would otherwise hold its whole capacity in memory. Statuses travel apart, as a watched value: a
//! subscriber gets the latest one, missing an older one loses nothing, and
//! what is counted as lagged is events only, so that the events received plus
//! those lagged add up to the events published.

use std::sync::Arc;

use apitrace_proto::{Event, ProbeStatus, event::Kind};
use tokio::sync::{broadcast, watch};

use crate::counters::Counters;

#[derive(Clone)]
pub struct Hub {
    sender: broadcast::Sender<Arc<Event>>,
    status: Arc<watch::Sender<ProbeStatus>>,
    counters: Arc<Counters>,
}

impl Hub {
    pub fn new(capacity: usize, counters: Arc<Counters>) -> Self {
        let (sender, _) = broadcast::channel(capacity);
        let (status, _) = watch::channel(ProbeStatus::default());
        Self {
            sender,
            status: Arc::new(status),
            counters,
        }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub fn publish(&self, kind: Kind) {
        if self
            .sender
            .send(Arc::new(Event { kind: Some(kind) }))
            .is_err()
        {
            Counters::increment(&self.counters.no_subscriber);
        }
    }

    /// Replaces the status subscribers are given, without counting anything
    /// as lost when nobody listens: statuses are state, and every
    /// subscription starts with a fresh one.
    pub fn publish_status(&self, status: ProbeStatus) {
        self.status.send_replace(status);
    }

    /// A subscription to the events and statuses published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
            status: self.status.subscribe(),
            counters: Arc::clone(&self.counters),
        }
    }
}

pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Event>>,
    status: watch::Receiver<ProbeStatus>,
    counters: Arc<Counters>,
}

impl Subscription {
    /// The next event or newer status, or `None` when the hub is gone. Events
    /// this subscriber missed by falling behind are counted and skipped.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            tokio::select! {
                changed = self.status.changed() => {
                    changed.ok()?;
                    let status = self.status.borrow_and_update().clone();
                    return Some(Event { kind: Some(Kind::Status(status)) });
                }
                received = self.receiver.recv() => match received {
                    Ok(event) => return Some(Arc::unwrap_or_clone(event)),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        Counters::add(&self.counters.subscriber_lagged, missed);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
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

    /// A subscriber behind on statuses gets the latest one and has lost
    /// nothing; only events count as lagged.
    #[tokio::test]
    async fn statuses_are_latest_wins_and_never_counted_as_lagged() {
        let hub = Hub::new(2, Arc::default());
        let mut subscription = hub.subscribe();
        for node in ["a", "b", "c"] {
            hub.publish_status(ProbeStatus {
                node: node.into(),
                ..ProbeStatus::default()
            });
        }
        hub.publish(wasm("1"));
        let mut received = Vec::new();
        for _ in 0..2 {
            received.push(subscription.next().await.unwrap().kind.unwrap());
        }
        assert!(
            received
                .iter()
                .any(|kind| matches!(kind, Kind::Status(status) if status.node == "c")),
            "{received:?}"
        );
        assert!(
            received
                .iter()
                .any(|kind| matches!(kind, Kind::Wasm(event) if event.request_id == "1")),
            "{received:?}"
        );
        assert_eq!(hub.counters().snapshot().subscriber_lagged, 0);
    }
}
