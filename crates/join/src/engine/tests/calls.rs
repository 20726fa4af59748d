//! One call at a time: each rule on its own.

use super::super::*;
use apitrace_proto::{
    AccessLog, AuthInfo, Endpoint as ProtoEndpoint, HttpHead, PayloadKind, PodRef, RequestLine,
    TcDirection, TcEvent, TcKind, TrafficDirection, WasmEvent, event::Kind, http_head::StartLine,
};

use crate::{
    directory::WorkloadKind,
    record::{CallRecord, Layer},
};

const SECOND: i64 = 1_000_000_000;
const T0: i64 = 1_726_632_414 * SECOND;

fn ep(ip: &str, port: u32) -> Option<ProtoEndpoint> {
    Some(ProtoEndpoint::new(ip, port))
}

/// The called pod: its sidecar logs the calls and its probe sees them.
fn nginx() -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: "nginx".into(),
    }
}

fn access_log(id: &str, client_port: u32, start: i64) -> Event {
    Event {
        kind: Some(Kind::AccessLog(AccessLog {
            start_time_unix_nano: start,
            request_id: id.into(),
            method: "GET".into(),
            path: "/status".into(),
            protocol: "HTTP/1.1".into(),
            status: 200,
            downstream_remote: ep("10.0.0.40", client_port),
            downstream_local: ep("10.0.0.135", 80),
            upstream_local: ep("127.0.0.1", 41000),
            upstream_remote: ep("127.0.0.1", 80),
            upstream_cluster: "inbound|80||".into(),
            response_flags: "UF,XX".into(),
            reporter: Some(nginx()),
            last_downstream_tx_byte_ns: 900_000,
            first_upstream_tx_byte_ns: 100_000,
            last_upstream_rx_byte_ns: 700_000,
            ..AccessLog::default()
        })),
    }
}

fn wasm(id: &str) -> Event {
    Event {
        kind: Some(Kind::Wasm(WasmEvent {
            request_id: id.into(),
            listener_direction: TrafficDirection::Inbound.into(),
            auth: Some(AuthInfo {
                scheme: "Bearer".into(),
                jwt_claims_json: r#"{"sub":"alice"}"#.into(),
                fingerprint: "sha256:00".into(),
                ..AuthInfo::default()
            }),
            ..WasmEvent::default()
        })),
    }
}

fn request_start(client_port: u32, time: i64, seq: u32, request_id: &str) -> Event {
    let (src, dst, interface) = if request_id.is_empty() {
        (ep("10.0.0.40", client_port), ep("10.0.0.135", 80), "eth0")
    } else {
        (ep("127.0.0.1", 41000), ep("127.0.0.1", 80), "lo")
    };
    Event {
        kind: Some(Kind::Tc(TcEvent {
            time_unix_nano: time,
            pod: Some(nginx()),
            interface: interface.into(),
            direction: TcDirection::Ingress as i32,
            kind: TcKind::Message as i32,
            src,
            dst,
            ip_id: 2342,
            tcp_seq: seq,
            payload: PayloadKind::Http1 as i32,
            http: Some(HttpHead {
                start_line: Some(StartLine::Request(RequestLine {
                    method: "GET".into(),
                    path: "/status".into(),
                    version: "HTTP/1.1".into(),
                })),
                request_id: request_id.into(),
                authority: String::new(),
            }),
            ..TcEvent::default()
        })),
    }
}

fn retransmit(client_port: u32, time: i64) -> Event {
    Event {
        kind: Some(Kind::Tc(TcEvent {
            time_unix_nano: time,
            pod: Some(nginx()),
            kind: TcKind::Retransmit as i32,
            src: ep("10.0.0.135", 80),
            dst: ep("10.0.0.40", client_port),
            ..TcEvent::default()
        })),
    }
}

/// The first packet of a response, from the server back to the client.
fn response_start(request: &Event, time: i64) -> Event {
    let Some(Kind::Tc(tc)) = &request.kind else {
        unreachable!()
    };
    Event {
        kind: Some(Kind::Tc(TcEvent {
            time_unix_nano: time,
            pod: tc.pod.clone(),
            kind: TcKind::Message as i32,
            src: tc.dst.clone(),
            dst: tc.src.clone(),
            interface: tc.interface.clone(),
            ..TcEvent::default()
        })),
    }
}

fn one_call() -> Vec<Event> {
    let wire = request_start(50174, T0, 547_548, "");
    let upstream = request_start(0, T0 + 300_000, 1, "req-1");
    vec![
        response_start(&wire, T0 + 1_000_000),
        wire,
        response_start(&upstream, T0 + 700_000),
        upstream,
        wasm("req-1"),
        access_log("req-1", 50174, T0 + 200_000),
    ]
}

/// A call is emitted by whichever of its events comes last, not when its
/// window closes: each kind of event finds the open call it completes.
#[test]
fn a_call_is_emitted_by_its_last_event_whichever_it_is() {
    for last in 0..one_call().len() {
        let mut events = one_call();
        let moved = events.remove(last);
        events.push(moved);
        let mut joiner = Joiner::new(JoinConfig::default());
        let counts: Vec<usize> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                let now_ns = T0 + i as i64;
                apply(&mut joiner, Input::Event { event, now_ns }).len()
            })
            .collect();
        assert_eq!(counts, [0, 0, 0, 0, 0, 1], "event {last} last");
        assert_eq!(joiner.stats().complete, 1, "event {last} last");
    }
}

/// The records `input` completes or expires.
pub(crate) fn apply(joiner: &mut Joiner, input: Input) -> Vec<CallRecord> {
    let mut records = Vec::new();
    joiner.apply(input, &mut records);
    records
}

fn run(events: Vec<Event>) -> (Vec<CallRecord>, JoinStats) {
    let mut joiner = Joiner::new(JoinConfig::default());
    apply(
        &mut joiner,
        Input::Identity {
            ip: "10.0.0.40".parse().unwrap(),
            since_ns: 0,
            workload: Workload {
                namespace: "default".into(),
                name: "sleep".into(),
                kind: WorkloadKind::Pod,
                traced: false,
            },
        },
    );
    let mut records = Vec::new();
    for (i, event) in events.into_iter().enumerate() {
        records.extend(apply(
            &mut joiner,
            Input::Event {
                event,
                now_ns: T0 + i as i64,
            },
        ));
    }
    records.extend(apply(&mut joiner, Input::End));
    (records, joiner.stats().clone())
}

/// A pod without a sidecar that logs (or whose entries never came): the
/// call is still named and answered, from the packets.
#[test]
fn a_call_seen_on_the_wire_only_takes_its_peers_and_status_from_the_packets() {
    let request = request_start(0, T0, 1, "req-9");
    let Some(Kind::Tc(mut answer)) = response_start(&request, T0 + 400_000).kind else {
        unreachable!()
    };
    answer.http = Some(HttpHead {
        start_line: Some(StartLine::Response(apitrace_proto::StatusLine {
            version: "HTTP/1.1".into(),
            status: 503,
        })),
        ..HttpHead::default()
    });
    let answer = Event {
        kind: Some(Kind::Tc(answer)),
    };
    let (records, stats) = run(vec![request, answer]);
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.layers, [Layer::Tc]);
    assert_eq!((record.method.as_str(), record.status), ("GET", 503));
    assert_eq!(
        (record.src.ip.as_str(), record.src.port, record.dst.port),
        ("127.0.0.1", 41000, 80)
    );
    assert_eq!((stats.partial, stats.unmatched_tc), (1, 0));
}

#[test]
fn all_layers_make_one_complete_record() {
    let (records, stats) = run(one_call());
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.layers, [Layer::Als, Layer::Wasm, Layer::Tc]);
    assert_eq!(record.request_id, "req-1");
    assert_eq!(
        (record.src.name.as_str(), &*record.src.kind),
        ("sleep", "Pod")
    );
    assert_eq!((&*record.dst.kind, record.dst.port), ("External", 80));
    let tc = record.tc.as_ref().unwrap();
    assert_eq!(
        (tc.ip_id, tc.tcp_seq, tc.src.port),
        (Some(2342), Some(547_548), 50174)
    );
    assert_eq!(tc.request_id, "req-1");
    assert_eq!(record.auth.as_ref().unwrap().claims["sub"], "alice");
    assert_eq!(
        record.response_flags,
        ["UF: upstream connection failure", "XX"]
    );
    let latency = record.latency.as_ref().unwrap();
    assert_eq!(
        (latency.total_us, latency.upstream_us, latency.sidecar_us),
        (900, 600, 300)
    );
    assert_eq!(latency.before_sidecar_us, Some(200));
    assert_eq!(
        (latency.pod_wire_us, latency.app_wire_us),
        (Some(1000), Some(400))
    );
    assert_eq!((stats.complete, stats.unmatched_tc), (1, 0));
}

#[test]
fn every_arrival_order_gives_the_same_record() {
    let events = one_call();
    let (expected, _) = run(events.clone());
    let mut order: Vec<usize> = (0..events.len()).collect();
    // Heap's algorithm over the 720 orders of the six events.
    let mut c = vec![0; order.len()];
    let mut i = 0;
    let mut seen = 1;
    while i < order.len() {
        if c[i] < i {
            if i % 2 == 0 {
                order.swap(0, i);
            } else {
                order.swap(c[i], i);
            }
            let (records, stats) = run(order.iter().map(|&k| events[k].clone()).collect());
            assert_eq!(records, expected, "order {order:?}");
            assert_eq!(stats.complete, 1);
            seen += 1;
            c[i] += 1;
            i = 0;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
    assert_eq!(seen, 720);
}

#[test]
fn a_call_missing_a_layer_is_emitted_when_its_window_closes() {
    let mut joiner = Joiner::new(JoinConfig::default());
    let early = apply(
        &mut joiner,
        Input::Event {
            event: access_log("req-2", 50000, T0),
            now_ns: T0,
        },
    );
    assert!(early.is_empty());
    assert!(
        apply(
            &mut joiner,
            Input::Tick {
                now_ns: T0 + 4 * SECOND
            }
        )
        .is_empty()
    );
    let records = apply(
        &mut joiner,
        Input::Tick {
            now_ns: T0 + 5 * SECOND,
        },
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].layers, [Layer::Als]);
    assert_eq!(joiner.stats().partial, 1);
}

/// A slow call: the request's first packet, then nothing for longer than
/// a window (the sidecar waits on its upstream), then the call's other
/// events. The wire event must still be there when the call closes.
#[test]
fn a_slow_call_keeps_its_wire_event() {
    let mut joiner = Joiner::new(JoinConfig::default());
    let wire = request_start(50174, T0, 42, "");
    assert!(
        apply(
            &mut joiner,
            Input::Event {
                event: wire,
                now_ns: T0
            }
        )
        .is_empty()
    );
    let late = T0 + 6 * SECOND;
    for event in [wasm("slow"), access_log("slow", 50174, T0 + 1_000)] {
        apply(
            &mut joiner,
            Input::Event {
                event,
                now_ns: late,
            },
        );
    }
    let records = apply(
        &mut joiner,
        Input::Tick {
            now_ns: late + 5 * SECOND,
        },
    );
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].tc.as_ref().and_then(|tc| tc.tcp_seq), Some(42));
    assert_eq!(joiner.stats().unmatched_tc, 0);
}

#[test]
fn keep_alive_requests_get_their_own_wire_event() {
    let mut events = Vec::new();
    for n in 0..3 {
        let start = T0 + i64::from(n) * 10_000_000;
        // Within what the access log says: the sidecar starts 20 µs after
        // the request, receives the app's last byte at 700 µs and sends
        // its own last at 900 µs.
        let wire = request_start(50174, start, 1000 + n * 100, "");
        events.push(response_start(&wire, start + 820_000));
        events.push(wire);
        events.push(wasm(&format!("k{n}")));
        let upstream = request_start(0, start + 50_000, 1, &format!("k{n}"));
        events.push(response_start(&upstream, start + 600_000));
        events.push(upstream);
    }
    // The access logs arrive last and in reverse.
    for n in (0..3).rev() {
        events.push(access_log(
            &format!("k{n}"),
            50174,
            T0 + i64::from(n) * 10_000_000 + 20_000,
        ));
    }
    let (records, stats) = run(events);
    assert_eq!(stats.complete, 3);
    for record in records {
        let n: u32 = record.request_id[1..].parse().unwrap();
        assert_eq!(record.tc.unwrap().tcp_seq, Some(1000 + n * 100));
    }
}

/// On a fast keep-alive connection the next request's first packet comes
/// a moment after the sidecar started the previous request; it must not be
/// taken for it.
#[test]
fn back_to_back_keep_alive_requests_are_not_confused() {
    let mut events = Vec::new();
    for n in 0..3u32 {
        // The wire event 20 µs before the sidecar's start, the next request
        // 300 µs after it.
        let start = T0 + i64::from(n) * 320_000;
        let wire = request_start(50174, start - 20_000, 1000 + n * 100, "");
        events.push(response_start(&wire, start + 250_000));
        events.push(wire);
        events.push(wasm(&format!("b{n}")));
        let upstream = request_start(0, start + 10_000, 1, &format!("b{n}"));
        events.push(response_start(&upstream, start + 200_000));
        events.push(upstream);
        events.push(access_log(&format!("b{n}"), 50174, start));
    }
    let (records, stats) = run(events);
    assert_eq!(stats.complete, 3);
    for record in records {
        let n: u32 = record.request_id[1..].parse().unwrap();
        assert_eq!(record.tc.as_ref().unwrap().tcp_seq, Some(1000 + n * 100));
        assert_eq!(record.latency.unwrap().before_sidecar_us, Some(20));
    }
}

#[test]
fn retransmissions_are_attached_to_their_request() {
    // Retransmissions happen while the request runs, before its access log.
    let mut events = one_call();
    events.insert(events.len() - 1, retransmit(50174, T0 + 100));
    let (records, _) = run(events);
    assert_eq!(records[0].tc.as_ref().unwrap().retransmits, 1);
}

/// A retransmission on a call's connection outside its time is counted
/// apart from what matched nothing, whether it arrived after the call was
/// printed (the client's FIN, lost once) or before (on a pooled connection,
/// between two calls, ahead of the first one's access log).
#[test]
fn retransmissions_outside_the_call_are_counted_as_such() {
    let mut events = one_call();
    events.insert(events.len() - 1, retransmit(50174, T0 - 100_000_000));
    events.push(retransmit(50174, T0 + 200_000_000));
    // And one on a connection no call was made on.
    events.push(retransmit(40000, T0 + 200_000_000));
    let (records, stats) = run(events);
    assert_eq!(records[0].tc.as_ref().unwrap().retransmits, 0);
    assert_eq!((stats.tc_outside_calls, stats.unmatched_tc), (2, 1));
}

/// A request the sidecar rejected before giving it an x-request-id (here
/// a 431 for an oversized header) is still a call: its access log joins
/// its wire event through the connection.
#[test]
fn a_rejected_request_without_request_id_is_a_record_of_its_own() {
    let mut rejected = access_log("", 50174, T0 + 100_000);
    if let Some(Kind::AccessLog(log)) = &mut rejected.kind {
        log.status = 431;
        log.response_flags = "DPE".into();
        log.method.clear();
        log.path.clear();
    }
    let (records, stats) = run(vec![request_start(50174, T0, 77, ""), rejected]);
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!((record.request_id.as_str(), record.status), ("", 431));
    // The sidecar logged no request line; the wire had it.
    assert_eq!(
        (record.method.as_str(), record.path.as_str()),
        ("GET", "/status")
    );
    assert_eq!(record.layers, [Layer::Als, Layer::Tc]);
    assert_eq!(record.tc.as_ref().unwrap().tcp_seq, Some(77));
    assert_eq!(record.response_flags, ["DPE: downstream protocol error"]);
    assert_eq!((stats.partial, stats.unmatched_tc), (1, 0));
}

#[test]
fn wasm_events_without_request_id_and_unclaimed_wire_events_are_counted() {
    let (records, stats) = run(vec![wasm(""), request_start(9, T0, 5, "")]);
    assert!(records.is_empty());
    assert_eq!((stats.unmatched_wasm, stats.unmatched_tc), (1, 1));
}

/// A gRPC call's record says what failed where HTTP says 200: the status the
/// access log logged (the call's own sidecar's), else the filter's, and the
/// filter's message counts; a call no layer saw as gRPC has no `grpc` part.
#[test]
fn a_grpc_call_carries_its_service_method_status_and_message_counts() {
    let grpc_call = |logged: Option<(u32, &str)>, filter_saw: Option<(Option<u32>, u64)>| {
        let mut log = access_log("g", 50000, T0);
        if let Some(Kind::AccessLog(entry)) = &mut log.kind {
            entry.path = "/apitrace.demo.v1.Orders/ListOrders".into();
            entry.protocol = "HTTP/2".into();
            entry.grpc_status = logged.map(|(code, _)| code);
            entry.grpc_message = logged.map(|(_, text)| text.to_owned()).unwrap_or_default();
        }
        let mut filter = wasm("g");
        if let Some(Kind::Wasm(event)) = &mut filter.kind {
            event.grpc = filter_saw.map(|(status, responses)| apitrace_proto::GrpcCall {
                status,
                message: "from the filter".into(),
                request_messages: 1,
                response_messages: responses,
            });
        }
        let (records, _) = run(vec![log, filter]);
        assert_eq!(records.len(), 1);
        records.into_iter().next().unwrap().grpc
    };
    let failed = grpc_call(Some((14, "eu is down")), Some((Some(14), 2))).unwrap();
    assert_eq!(failed.service, "apitrace.demo.v1.Orders");
    assert_eq!(failed.method, "ListOrders");
    assert_eq!(failed.status, Some(14));
    assert_eq!(failed.status_name.as_deref(), Some("UNAVAILABLE"));
    assert_eq!(failed.message, "eu is down");
    assert_eq!(
        (failed.request_messages, failed.response_messages),
        (Some(1), Some(2))
    );
    // Without the trailers in the access log, the filter's status.
    let filtered = grpc_call(None, Some((Some(5), 0))).unwrap();
    assert_eq!(filtered.status_name.as_deref(), Some("NOT_FOUND"));
    assert_eq!(filtered.message, "from the filter");
    // Only the access log saw it as gRPC: no message counts.
    let logged = grpc_call(Some((0, "")), None).unwrap();
    assert_eq!(logged.status_name.as_deref(), Some("OK"));
    assert_eq!(logged.response_messages, None);
    // Reset before its status: gRPC, with no status.
    let reset = grpc_call(None, Some((None, 1))).unwrap();
    assert_eq!((reset.status, reset.status_name), (None, None));
    assert_eq!(grpc_call(None, None), None);
}
