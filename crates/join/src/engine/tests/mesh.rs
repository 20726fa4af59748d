//! Calls between two pods with sidecars, as Istio builds them: the app's
//! connection redirected to its sidecar on `lo`, mTLS between the sidecars
//! on `eth0`, the called sidecar's plaintext hop to its app from 127.0.0.6.
//! And what the wire must not claim where it cannot tell calls apart.

use std::collections::VecDeque;

use apitrace_proto::{
    AccessLog, Event, PayloadKind, PodRef, TcKind, TrafficDirection, event::Kind,
};
use proptest::prelude::*;

use super::super::*;
use crate::{
    directory::WorkloadKind,
    fixtures::{
        self, Address, access_log, context, endpoint, message, pod, request_head, status_head, tc,
    },
    record::{CallRecord, Layer, WireScope},
};

const T0: i64 = 1_800_000_000_000_000_000;
const US: i64 = 1_000;

const CLIENT_IP: &str = "10.0.0.1";
const SERVER_IP: &str = "10.0.0.2";
const CLUSTER_IP: &str = "10.96.0.10";
const APP: Address<'static> = (SERVER_IP, 8080);
const CLIENT_IDENTITY: &str = "spiffe://cluster.local/ns/shop/sa/client";

fn client() -> PodRef {
    pod("shop", "client")
}

fn server() -> PodRef {
    pod("shop", "server")
}

/// One call from the client pod's app to the server pod's, through both
/// sidecars, at `t` on connections from the app's port `app_port` and the
/// client sidecar's `pooled_port`; `tls` for mTLS between the sidecars (else
/// plaintext, where the client's sidecar sends the request id on).
fn mesh_call(id: &str, t: i64, app_port: u32, pooled_port: u32, tls: bool) -> Vec<Event> {
    let app_socket = (CLIENT_IP, app_port);
    let service = (CLUSTER_IP, 8080);
    let pooled = (CLIENT_IP, pooled_port);
    let inbound_sidecar = ("127.0.0.6", pooled_port - 12000);
    let between = if tls {
        PayloadKind::Tls
    } else {
        PayloadKind::Http1
    };
    let between_head = |id: &str| (!tls).then(|| request_head("GET", "/api/orders/42", id));
    let mut events = Vec::new();
    // The caller's pod: its app's request on `lo`, redirected to 15001, and
    // the answer from the service's address; its sidecar's on `eth0`.
    events.push(message(
        tc(
            &client(),
            "lo",
            TcKind::Message,
            t,
            app_socket,
            ("127.0.0.1", 15001),
        ),
        101,
        5000,
        Some(request_head("GET", "/api/orders/42", "")),
        PayloadKind::Http1,
    ));
    events.push(message(
        tc(
            &client(),
            "lo",
            TcKind::Message,
            t + 900 * US,
            service,
            app_socket,
        ),
        102,
        0,
        Some(status_head(200)),
        PayloadKind::Http1,
    ));
    for (pod, request_ip_id) in [(client(), 201), (server(), 201)] {
        events.push(message(
            tc(&pod, "eth0", TcKind::Message, t + 60 * US, pooled, APP),
            request_ip_id,
            7000,
            between_head(id),
            between,
        ));
        events.push(message(
            tc(&pod, "eth0", TcKind::Message, t + 700 * US, APP, pooled),
            202,
            0,
            (!tls).then(|| status_head(200)),
            between,
        ));
    }
    // The called pod's sidecar's plaintext hop to its app.
    events.push(message(
        tc(
            &server(),
            "lo",
            TcKind::Message,
            t + 200 * US,
            inbound_sidecar,
            APP,
        ),
        301,
        9000,
        Some(request_head("GET", "/api/orders/42", id)),
        PayloadKind::Http1,
    ));
    events.push(message(
        tc(
            &server(),
            "lo",
            TcKind::Message,
            t + 500 * US,
            APP,
            inbound_sidecar,
        ),
        302,
        0,
        Some(status_head(200)),
        PayloadKind::Http1,
    ));
    events.push(access_log(AccessLog {
        start_time_unix_nano: t + 20 * US,
        reporter: Some(client()),
        request_id: id.into(),
        downstream_remote: endpoint(app_socket),
        downstream_local: endpoint(service),
        upstream_local: endpoint(pooled),
        upstream_remote: endpoint(APP),
        upstream_cluster: "outbound|8080||server.shop.svc.cluster.local".into(),
        first_upstream_tx_byte_ns: 40 * US,
        last_downstream_tx_byte_ns: 880 * US,
        ..fixtures::entry()
    }));
    events.push(access_log(AccessLog {
        start_time_unix_nano: t + 100 * US,
        reporter: Some(server()),
        request_id: id.into(),
        downstream_remote: endpoint(pooled),
        downstream_local: endpoint(APP),
        upstream_local: endpoint(inbound_sidecar),
        upstream_remote: endpoint(APP),
        upstream_cluster: "inbound|8080||".into(),
        tls_version: if tls { "TLSv1.3" } else { "" }.into(),
        peer_uri_sans: if tls {
            vec![CLIENT_IDENTITY.into()]
        } else {
            vec![]
        },
        first_upstream_tx_byte_ns: 90 * US,
        last_downstream_tx_byte_ns: 550 * US,
        ..fixtures::entry()
    }));
    events.push(fixtures::wasm(id, TrafficDirection::Outbound, t + 30 * US));
    events.push(fixtures::wasm(id, TrafficDirection::Inbound, t + 110 * US));
    events
}

/// The pooled connection between the sidecars opening, as both pods see it.
fn handshake(pooled_port: u32, t: i64) -> Vec<Event> {
    let pooled = (CLIENT_IP, pooled_port);
    let mut events = Vec::new();
    for pod in [client(), server()] {
        let mut syn = tc(&pod, "eth0", TcKind::Open, t, pooled, APP);
        (syn.ip_id, syn.tcp_seq) = (11, 6999);
        events.push(context(syn));
        events.push(context(tc(
            &pod,
            "eth0",
            TcKind::Accept,
            t + 30 * US,
            APP,
            pooled,
        )));
    }
    events
}

fn join(events: Vec<Event>) -> (Vec<CallRecord>, JoinStats) {
    let mut joiner = Joiner::new(JoinConfig::default());
    let identities = [
        (CLIENT_IP, "client", WorkloadKind::Pod, true),
        (SERVER_IP, "server", WorkloadKind::Pod, true),
        (CLUSTER_IP, "server", WorkloadKind::Service, false),
    ];
    let mut records = Vec::new();
    for (ip, name, kind, traced) in identities {
        joiner.apply(
            Input::Identity {
                ip: ip.parse().unwrap(),
                since_ns: 0,
                workload: Workload {
                    namespace: "shop".into(),
                    name: name.into(),
                    kind,
                    traced,
                },
            },
            &mut records,
        );
    }
    for (n, event) in events.into_iter().enumerate() {
        joiner.apply(
            Input::Event {
                event,
                now_ns: T0 + n as i64,
            },
            &mut records,
        );
    }
    joiner.apply(Input::End, &mut records);
    records.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    (records, joiner.stats().clone())
}

#[test]
fn an_mtls_call_between_sidecars_is_one_record_with_both_hops_and_the_callers_identity() {
    let mut events = handshake(52000, T0 - 1_000 * US);
    events.extend(mesh_call("m-1", T0, 33000, 52000, true));
    let (records, stats) = join(events);
    let [record] = &records[..] else {
        panic!("one record, not {records:#?}");
    };
    assert_eq!(
        (stats.complete, stats.partial, stats.unmatched_tc),
        (1, 0, 0)
    );
    assert_eq!(record.layers, [Layer::Als, Layer::Wasm, Layer::Tc]);
    assert_eq!(
        (record.src.name.as_str(), record.dst.name.as_str()),
        ("client", "server")
    );
    assert_eq!(record.src.identity.as_deref(), Some(CLIENT_IDENTITY));
    // On the called pod's eth0 the wire is TLS: the connection, not the call.
    let tc = record.tc.as_ref().unwrap();
    assert_eq!(tc.scope, WireScope::Connection);
    assert_eq!((tc.ip_id, tc.tcp_seq, tc.tls), (Some(11), Some(6999), true));
    assert_eq!((tc.handshake_us, tc.payload_len), (Some(30), None));
    assert_eq!(tc.request_id, "m-1", "read on the plaintext hop to the app");

    let [outbound, inbound] = &record.hops[..] else {
        panic!("two hops: {:#?}", record.hops);
    };
    assert_eq!(
        (&*outbound.direction, &*inbound.direction),
        ("outbound", "inbound")
    );
    assert_eq!(inbound.peer_identity.as_deref(), Some(CLIENT_IDENTITY));
    assert_eq!(inbound.tls_version.as_deref(), Some("TLSv1.3"));
    // The caller's app to its sidecar: plaintext on lo, the call's own packet.
    let app = outbound.downstream.as_ref().unwrap();
    assert_eq!((app.scope, &*app.interface), (WireScope::Request, "lo"));
    assert_eq!((app.ip_id, app.dst.port), (Some(101), 15001));
    let between = outbound.upstream.as_ref().unwrap();
    assert_eq!(
        (between.scope, &*between.interface),
        (WireScope::Connection, "eth0")
    );
    assert_eq!(
        inbound.downstream.as_ref().unwrap().scope,
        WireScope::Connection
    );
    let to_app = inbound.upstream.as_ref().unwrap();
    assert_eq!(
        (to_app.scope, to_app.ip_id),
        (WireScope::Request, Some(301))
    );
    assert_eq!(
        (&*to_app.src.ip, to_app.request_id.as_str()),
        ("127.0.0.6", "m-1")
    );
    // The app's share on lo, from the called sidecar's request to the answer.
    let latency = record.latency.as_ref().unwrap();
    assert_eq!(
        (latency.app_wire_us, latency.pod_wire_us),
        (Some(300), None)
    );
}

/// Without mTLS the client's sidecar sends the request id on: on both pods'
/// eth0 the request is the call's own.
#[test]
fn a_plaintext_call_between_sidecars_is_request_level_on_every_leg() {
    let (records, stats) = join(mesh_call("p-1", T0, 33000, 52000, false));
    let [record] = &records[..] else {
        panic!("one record, not {records:#?}");
    };
    assert_eq!((stats.complete, stats.unmatched_tc), (1, 0));
    for hop in &record.hops {
        for leg in [&hop.downstream, &hop.upstream] {
            let leg = leg.as_ref().unwrap();
            assert_eq!(leg.scope, WireScope::Request, "{hop:#?}");
        }
    }
    let tc = record.tc.as_ref().unwrap();
    assert_eq!(
        (tc.ip_id, tc.tcp_seq, tc.tls),
        (Some(201), Some(7000), false)
    );
    assert_eq!(record.src.identity, None);
}

/// Three keep-alive calls over the same pooled mTLS connection, each its own
/// app connection: every order of arrival gives the same records.
fn three_calls() -> Vec<Event> {
    let mut events = handshake(52000, T0 - 1_000 * US);
    for n in 0..3 {
        let t = T0 + i64::from(n) * 2_000 * US;
        events.extend(mesh_call(&format!("k-{n}"), t, 33000 + n, 52000, true));
    }
    events
}

/// Who delivers an event, in its own order: each pod's probe (its TC ring
/// in time order), each sidecar's access-log stream, each filter's batches.
fn source(event: &Event) -> (u8, String) {
    match &event.kind {
        Some(Kind::Tc(tc)) => (
            0,
            tc.pod
                .as_ref()
                .map(|pod| pod.name.clone())
                .unwrap_or_default(),
        ),
        Some(Kind::AccessLog(log)) => (
            1,
            log.reporter
                .as_ref()
                .map(|pod| pod.name.clone())
                .unwrap_or_default(),
        ),
        Some(Kind::Wasm(wasm)) => (2, wasm.listener_direction().as_str().to_owned()),
        _ => (3, String::new()),
    }
}

fn time(event: &Event) -> i64 {
    match &event.kind {
        Some(Kind::Tc(tc)) => tc.time_unix_nano,
        Some(Kind::AccessLog(log)) => log.start_time_unix_nano,
        Some(Kind::Wasm(wasm)) => wasm.time_unix_nano,
        _ => 0,
    }
}

/// `events` as their sources deliver them, interleaved as `picks` says: each
/// pick takes the next event of the source it names (or of the next one that
/// has one left).
fn interleaved(events: Vec<Event>, picks: &[usize]) -> Vec<Event> {
    let mut sources: std::collections::BTreeMap<(u8, String), VecDeque<Event>> = Default::default();
    let mut events = events;
    events.sort_by_key(time);
    for event in events {
        sources.entry(source(&event)).or_default().push_back(event);
    }
    let mut queues: Vec<_> = sources.into_values().collect();
    let mut out = Vec::new();
    for &pick in picks.iter().cycle() {
        let count = queues.len();
        let Some(next) = (0..count)
            .map(|k| (pick + k) % count)
            .find(|&k| !queues[k].is_empty())
        else {
            break;
        };
        out.extend(queues[next].pop_front());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn two_hop_calls_give_the_same_records_in_any_interleaving(
        picks in proptest::collection::vec(0usize..6, 1..100)
    ) {
        let (expected, _) = join(three_calls());
        let (records, stats) = join(interleaved(three_calls(), &picks));
        prop_assert_eq!(records, expected);
        prop_assert_eq!((stats.complete, stats.unmatched_tc), (3, 0));
    }
}

/// HTTP/2 streams interleave on one connection: two calls started 10 µs
/// apart are each given the connection, never the other's first frames.
#[test]
fn calls_on_a_multiplexed_connection_get_the_connection_never_each_others_packets() {
    let client = ("10.0.0.9", 41000);
    let pod_address = (SERVER_IP, 8080);
    let mut events = Vec::new();
    for (n, offset) in [(0, 0), (1, 10)] {
        let t = T0 + offset * US;
        events.push(message(
            tc(&server(), "eth0", TcKind::Message, t, client, pod_address),
            500 + n,
            1000 + n,
            None,
            PayloadKind::Http2,
        ));
        events.push(access_log(AccessLog {
            start_time_unix_nano: t + 5 * US,
            reporter: Some(server()),
            request_id: format!("h2-{n}"),
            protocol: "HTTP/2".into(),
            downstream_remote: endpoint(client),
            downstream_local: endpoint(pod_address),
            upstream_cluster: "inbound|8080||".into(),
            first_upstream_tx_byte_ns: 0,
            ..fixtures::entry()
        }));
        events.push(fixtures::wasm(
            &format!("h2-{n}"),
            TrafficDirection::Inbound,
            t,
        ));
    }
    events.push(message(
        tc(
            &server(),
            "eth0",
            TcKind::Message,
            T0 + 300 * US,
            pod_address,
            client,
        ),
        600,
        0,
        None,
        PayloadKind::Http2,
    ));
    let (records, stats) = join(events);
    assert_eq!(records.len(), 2);
    for record in &records {
        let tc = record.tc.as_ref().unwrap();
        assert_eq!(tc.scope, WireScope::Connection, "{}", record.request_id);
        assert_eq!(
            (tc.ip_id, tc.tcp_seq),
            (None, None),
            "{}",
            record.request_id
        );
    }
    assert_eq!(
        (
            stats.complete,
            stats.unmatched_tc,
            stats.tc_connection_level
        ),
        (2, 0, 3)
    );
}

/// The sidecar's h2c connection to its app carries three streams at once,
/// answered last first: the probe followed its frames, so each stream's
/// HEADERS frame is a message start of its own, named by the stream, with the
/// request id in its header block (two of them start in one packet). Each
/// call gets its own request packet and its own stream's response, never
/// another stream's.
#[test]
fn h2c_streams_to_the_app_get_their_own_request_and_response() {
    let caller = ("10.0.0.9", 41000);
    let pod_address = (SERVER_IP, 8080);
    let sidecar = ("127.0.0.6", 36000);
    let stream_head = |event, ip_id, seq, stream: u32, head| {
        let mut event = message(event, ip_id, seq, Some(head), PayloadKind::Http2);
        if let Some(Kind::Tc(tc)) = &mut event.kind {
            tc.payload = PayloadKind::Http2 as i32;
            tc.http2_stream = stream;
            if let Some(apitrace_proto::http_head::StartLine::Request(line)) =
                tc.http.as_mut().and_then(|head| head.start_line.as_mut())
            {
                line.version = "HTTP/2".into();
            }
        }
        event
    };
    // Streams 1 and 3 start in one packet (seq 5000), stream 5 in the next.
    let requests = [(1, 5000, 0), (3, 5000, 0), (5, 5300, 20)];
    // Answered 5, then 1, then 3.
    let responses = [(5, 9000, 200), (1, 9100, 300), (3, 9200, 400)];
    let mut events = Vec::new();
    for (stream, seq, offset) in requests {
        let id = format!("h2-{stream}");
        let t = T0 + offset * US;
        events.push(access_log(AccessLog {
            start_time_unix_nano: t - 20 * US,
            reporter: Some(server()),
            request_id: id.clone(),
            protocol: "HTTP/2".into(),
            downstream_remote: endpoint(caller),
            downstream_local: endpoint(pod_address),
            upstream_local: endpoint(sidecar),
            upstream_remote: endpoint(APP),
            upstream_cluster: "inbound|8080||".into(),
            ..fixtures::entry()
        }));
        events.push(fixtures::wasm(&id, TrafficDirection::Inbound, t));
        events.push(stream_head(
            tc(&server(), "lo", TcKind::Message, t, sidecar, APP),
            0,
            seq,
            stream,
            request_head("GET", "/api/orders/42", &id),
        ));
    }
    for (stream, seq, offset) in responses {
        events.push(stream_head(
            tc(
                &server(),
                "lo",
                TcKind::Message,
                T0 + offset * US,
                APP,
                sidecar,
            ),
            0,
            seq,
            stream,
            status_head(200),
        ));
    }
    let (records, _) = join(events);
    assert_eq!(records.len(), 3);
    for (record, (stream, seq, offset)) in records.iter().zip(requests) {
        assert_eq!(record.request_id, format!("h2-{stream}"));
        let upstream = record.hops[0]
            .upstream
            .as_ref()
            .expect("the hop to the app");
        assert_eq!(upstream.scope, WireScope::Request, "{}", record.request_id);
        assert_eq!(
            (upstream.stream_id, upstream.tcp_seq),
            (Some(stream), Some(seq))
        );
        let (.., answered) = responses.iter().find(|(s, ..)| *s == stream).unwrap();
        assert_eq!(
            record
                .latency
                .as_ref()
                .and_then(|latency| latency.app_wire_us),
            Some(answered - offset),
            "{} is answered by its own stream",
            record.request_id
        );
    }
}

/// The events of one h2c stream's call into the server pod, as
/// [`h2c_streams_to_the_app_get_their_own_request_and_response`] has them:
/// (access log and filter event, the stream's request, its response).
fn h2c_stream_call(stream: u32, t: i64) -> (Vec<Event>, Event, Event) {
    let caller = ("10.0.0.9", 41000);
    let sidecar = ("127.0.0.6", 36000);
    let id = format!("h2-{stream}");
    let on_stream = |event: Event| {
        let mut event = event;
        if let Some(Kind::Tc(tc)) = &mut event.kind {
            tc.payload = PayloadKind::Http2 as i32;
            tc.http2_stream = stream;
        }
        event
    };
    let parts = vec![
        access_log(AccessLog {
            start_time_unix_nano: t - 20 * US,
            reporter: Some(server()),
            request_id: id.clone(),
            protocol: "HTTP/2".into(),
            downstream_remote: endpoint(caller),
            downstream_local: endpoint((SERVER_IP, 8080)),
            upstream_local: endpoint(sidecar),
            upstream_remote: endpoint(APP),
            upstream_cluster: "inbound|8080||".into(),
            ..fixtures::entry()
        }),
        fixtures::wasm(&id, TrafficDirection::Inbound, t),
        // The caller's connection is mTLS: its leg is the connection.
        message(
            tc(
                &server(),
                "eth0",
                TcKind::Message,
                t - 40 * US,
                caller,
                (SERVER_IP, 8080),
            ),
            0,
            100 + stream,
            None,
            PayloadKind::Tls,
        ),
    ];
    let request = on_stream(message(
        tc(&server(), "lo", TcKind::Message, t, sidecar, APP),
        0,
        5000 + stream,
        Some(request_head("GET", "/api/orders/42", &id)),
        PayloadKind::Http2,
    ));
    let response = on_stream(message(
        tc(&server(), "lo", TcKind::Message, t + 300 * US, APP, sidecar),
        0,
        9000 + stream,
        Some(status_head(200)),
        PayloadKind::Http2,
    ));
    (parts, request, response)
}

/// On a connection whose streams carry request ids, a call whose own
/// stream's request comes last (its probe's events were late) waits for it
/// rather than take the connection, and is one record.
#[test]
fn an_h2c_call_waits_for_its_late_stream_on_a_connection_whose_streams_carry_ids() {
    let (first, first_request, first_response) = h2c_stream_call(1, T0);
    let (second, second_request, second_response) = h2c_stream_call(3, T0 + 1000 * US);
    let mut events = first;
    events.extend([first_request, first_response]);
    events.extend(second);
    events.push(second_response);
    events.push(second_request);
    let (records, stats) = join(events);
    assert_eq!(records.len(), 2, "{records:#?}");
    for (record, stream) in records.iter().zip([1, 3]) {
        let upstream = record.hops[0].upstream.as_ref().unwrap();
        assert_eq!(
            (upstream.scope, upstream.stream_id),
            (WireScope::Request, Some(stream))
        );
    }
    assert_eq!(
        (stats.complete, stats.partial, stats.tc_after_printed),
        (2, 0, 0)
    );
}

/// A stream's request that comes after its call was printed (its window
/// closed) is counted, not made a second record of the same call.
#[test]
fn a_stream_request_after_its_call_was_printed_is_not_a_second_record() {
    let (parts, request, response) = h2c_stream_call(1, T0);
    let mut joiner = Joiner::new(JoinConfig::default());
    let mut records = Vec::new();
    let window = JoinConfig::default().window_ns;
    for event in parts.into_iter().chain([response]) {
        joiner.apply(Input::Event { event, now_ns: T0 }, &mut records);
    }
    joiner.apply(
        Input::Tick {
            now_ns: T0 + window + 1,
        },
        &mut records,
    );
    assert_eq!(records.len(), 1);
    joiner.apply(
        Input::Event {
            event: request,
            now_ns: T0 + window + 2,
        },
        &mut records,
    );
    joiner.apply(Input::End, &mut records);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(joiner.stats().tc_after_printed, 1);
}

/// The caller's sidecar's access-log entry and filter event that come after
/// the call was printed without them (its window closed first) are counted,
/// not made a second record of the same call.
#[test]
fn a_sidecars_late_entry_and_filter_event_are_not_a_second_record() {
    let (late, on_time): (Vec<Event>, Vec<Event>) = mesh_call("m-late", T0, 8080, 50001, true)
        .into_iter()
        .partition(|event| match &event.kind {
            Some(Kind::AccessLog(log)) => log.reporter == Some(client()),
            Some(Kind::Wasm(wasm)) => wasm.listener_direction() == TrafficDirection::Outbound,
            _ => false,
        });
    assert_eq!(late.len(), 2, "the caller's entry and filter event");
    let mut joiner = Joiner::new(JoinConfig::default());
    let mut records = Vec::new();
    for event in on_time {
        joiner.apply(Input::Event { event, now_ns: T0 }, &mut records);
    }
    let window = JoinConfig::default().window_ns;
    joiner.apply(
        Input::Tick {
            now_ns: T0 + window + 1,
        },
        &mut records,
    );
    assert_eq!(records.len(), 1, "printed when its window closed");
    for event in late {
        joiner.apply(
            Input::Event {
                event,
                now_ns: T0 + window + 2,
            },
            &mut records,
        );
    }
    joiner.apply(Input::End, &mut records);
    assert_eq!(records.len(), 1, "{records:#?}");
    let stats = joiner.stats();
    assert_eq!(
        (stats.access_logs_after_printed, stats.wasm_after_printed),
        (1, 1)
    );
}

/// A request start that is not the call's (another method: an earlier
/// call's, whose entry was lost) is not taken, though it is the last one
/// before the sidecar's start.
#[test]
fn a_request_start_of_another_method_is_not_the_calls() {
    let call = fixtures::InboundCall {
        pod: server(),
        request_id: "g-1".into(),
        client: ("10.0.0.9", 41000),
        server: (SERVER_IP, 8080),
        sidecar: ("127.0.0.6", 40000),
        app: APP,
    };
    let post = message(
        tc(
            &server(),
            "eth0",
            TcKind::Message,
            T0,
            call.client,
            call.server,
        ),
        1,
        77,
        Some(request_head("POST", "/api/orders", "")),
        PayloadKind::Http1,
    );
    let events = vec![
        post,
        call.app_request(T0 + 50 * US),
        call.app_response(T0 + 300 * US),
        call.access_log(T0 + 20 * US),
        call.wasm(T0 + 30 * US),
    ];
    let (records, stats) = join(events);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].tc, None, "{:#?}", records[0].tc);
    assert_eq!((stats.partial, stats.missing.wire), (1, 1));
}

/// A TLS record lost between the sidecars and sent again: on the shared
/// connection, the retransmission is shown by the call that ran while it
/// happened (before the called sidecar read the request), and not counted
/// as lost when it is forgotten.
#[test]
fn a_retransmission_on_an_mtls_connection_is_shown_by_the_call_it_happened_during() {
    let mut events = handshake(52000, T0 - 1_000 * US);
    events.extend(mesh_call("r-1", T0, 33000, 52000, true));
    let retransmitted = tc(
        &server(),
        "eth0",
        TcKind::Retransmit,
        T0 + 80 * US,
        (CLIENT_IP, 52000),
        APP,
    );
    events.insert(events.len() - 4, context(retransmitted));
    let (records, stats) = join(events);
    let [record] = &records[..] else {
        panic!("one record, not {records:#?}");
    };
    let tc = record.tc.as_ref().unwrap();
    assert_eq!((tc.scope, tc.retransmits), (WireScope::Connection, 1));
    assert_eq!((stats.unmatched_tc, stats.tc_outside_calls), (0, 0));
}

/// A request the caller's sidecar rejected before routing it (a 431 for an
/// oversized header) names no cluster: its hop is outbound because the app
/// called a Service, and its request is found where the app's redirected
/// connection is, on `lo`.
#[test]
fn a_request_the_callers_sidecar_rejected_is_found_on_its_redirected_connection() {
    let app_socket = (CLIENT_IP, 34000);
    let service = (CLUSTER_IP, 8080);
    let events = vec![
        message(
            tc(
                &client(),
                "lo",
                TcKind::Message,
                T0,
                app_socket,
                ("127.0.0.1", 15001),
            ),
            7,
            4242,
            Some(request_head("GET", "/status", "")),
            PayloadKind::Http1,
        ),
        access_log(AccessLog {
            start_time_unix_nano: T0 + 30 * US,
            reporter: Some(client()),
            status: 431,
            response_flags: "DPE".into(),
            method: String::new(),
            path: String::new(),
            downstream_remote: endpoint(app_socket),
            downstream_local: endpoint(service),
            first_upstream_tx_byte_ns: 0,
            ..fixtures::entry()
        }),
    ];
    let (records, _) = join(events);
    let [record] = &records[..] else {
        panic!("one record, not {records:#?}");
    };
    assert_eq!(&*record.hops[0].direction, "outbound");
    let app = record.hops[0]
        .downstream
        .as_ref()
        .expect("the app's request on lo");
    assert_eq!((app.tcp_seq, app.dst.port), (Some(4242), 15001));
    assert_eq!((record.status, record.method.as_str()), (431, "GET"));
}
