//! What the probe received and what it lost, by source. Every place that can
//! drop an event increments one of these; the CLI shows them and `/metrics`
//! exports them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use apitrace_proto::Counters as Snapshot;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident => $metric:literal, $labels:literal;)*) => {
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        impl Counters {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot {
                    $($name: self.$name.load(Relaxed),)*
                }
            }

            /// The Prometheus text exposition of every counter, each family's
            /// samples together after its TYPE line, as the format requires.
            pub fn prometheus(&self) -> String {
                let mut families: std::collections::BTreeMap<&str, String> = Default::default();
                $(
                    let samples = families.entry($metric).or_default();
                    samples.push_str(&format!("{}{{{}}} {}\n", $metric, $labels, self.$name.load(Relaxed)));
                )*
                families
                    .into_iter()
                    .map(|(metric, samples)| format!("# TYPE {metric} counter\n{samples}"))
                    .collect()
            }
        }
    };
}

counters! {
    /// Packets the TC program ran on.
    tc_packets => "apitrace_probe_tc_packets_total", "scope=\"all\"";
    /// Packets of session traffic: a traced pod's address, a port not ignored.
    tc_packets_traced => "apitrace_probe_tc_packets_total", "scope=\"traced\"";
    /// TC events decoded from the ring buffers.
    tc_events => "apitrace_probe_events_total", "source=\"tc\"";
    /// TC events the kernel could not write because a ring buffer was full.
    tc_ring_full => "apitrace_probe_dropped_total", "source=\"tc\",reason=\"ring_full\"";
    /// Flows the TC program could not track because its flow table was full.
    tc_flow_table_full => "apitrace_probe_dropped_total", "source=\"tc\",reason=\"flow_table_full\"";
    /// Ring-buffer records too short to be an event.
    tc_malformed => "apitrace_probe_dropped_total", "source=\"tc\",reason=\"malformed\"";
    /// Sides of h2c connections whose frames could not be followed (see
    /// `http2`): their calls get the connection, not their own packets.
    tc_http2_unfollowed => "apitrace_probe_dropped_total", "source=\"tc\",reason=\"http2_unfollowed\"";
    /// HTTP and TCP access-log entries received from Envoy.
    access_logs => "apitrace_probe_events_total", "source=\"als\"";
    /// Access-log entries without the fields a record needs.
    access_logs_malformed => "apitrace_probe_dropped_total", "source=\"als\",reason=\"malformed\"";
    /// Access-log streams accepted from sidecars (a reconnect opens another).
    access_log_streams => "apitrace_probe_streams_total", "source=\"als\"";
    /// Access-log streams whose connection broke, losing what was in flight.
    access_log_streams_broken => "apitrace_probe_dropped_total", "source=\"als\",reason=\"stream_broken\"";
    /// Access-log streams refused because the peer is not in the session.
    access_log_streams_refused => "apitrace_probe_refused_total", "source=\"als\"";
    /// Events received from WASM filters.
    wasm_events => "apitrace_probe_events_total", "source=\"wasm\"";
    /// Events WASM filters reported having dropped (probe unreachable, queue full).
    wasm_dropped_in_filter => "apitrace_probe_dropped_total", "source=\"wasm\",reason=\"filter_queue\"";
    /// WASM batches refused (wrong token or peer).
    wasm_batches_refused => "apitrace_probe_refused_total", "source=\"wasm\"";
    /// WASM batches that were not a valid WasmBatch, or over the size limit.
    wasm_batches_malformed => "apitrace_probe_dropped_total", "source=\"wasm\",reason=\"malformed\"";
    /// Events a subscriber did not receive because it fell behind.
    subscriber_lagged => "apitrace_probe_dropped_total", "source=\"subscriber\",reason=\"lagged\"";
    /// Events observed while no CLI was subscribed.
    no_subscriber => "apitrace_probe_dropped_total", "source=\"subscriber\",reason=\"none\"";
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn increment(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Sets a counter the kernel keeps (the TC program's per-CPU totals).
    pub fn store(counter: &AtomicU64, n: u64) {
        counter.store(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_exposition_declares_each_metric_once() {
        let counters = Counters::default();
        Counters::add(&counters.tc_ring_full, 3);
        let text = counters.prometheus();
        assert_eq!(
            text.matches("# TYPE apitrace_probe_dropped_total counter")
                .count(),
            1
        );
        // A family's samples are contiguous: nothing of another family between them.
        let events: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, line)| line.starts_with("apitrace_probe_events_total"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[2] - events[0], 2);
        assert!(
            text.contains("apitrace_probe_dropped_total{source=\"tc\",reason=\"ring_full\"} 3\n")
        );
        assert!(text.contains("apitrace_probe_events_total{source=\"wasm\"} 0\n"));
        assert_eq!(counters.snapshot().tc_ring_full, 3);
    }
}
