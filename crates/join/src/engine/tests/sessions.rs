//! Sessions of several calls, checked for the properties the join promises.

use std::collections::VecDeque;

use apitrace_proto::{
    AccessLog, AuthInfo, Endpoint, HttpHead, PayloadKind, PodRef, RequestLine, TcEvent, TcKind,
    TrafficDirection, WasmEvent, event::Kind, http_head::StartLine,
};
use proptest::prelude::*;

use super::super::*;
use super::calls::apply;
use crate::{
    directory::WorkloadKind,
    fixtures::Address,
    record::{CallRecord, Layer},
};

const T0: i64 = 1_800_000_000_000_000_000;
const US: i64 = 1_000;

fn ep(ip: &str, port: u32) -> Option<Endpoint> {
    Some(Endpoint::new(ip, port))
}

fn tc(
    kind: TcKind,
    time: i64,
    src: (&str, u32),
    dst: (&str, u32),
    request_id: Option<&str>,
) -> Event {
    let http = request_id.map(|id| HttpHead {
        start_line: Some(StartLine::Request(RequestLine {
            method: "GET".into(),
            path: "/".into(),
            version: "HTTP/1.1".into(),
        })),
        request_id: id.into(),
        authority: String::new(),
    });
    let payload = if http.is_some() {
        PayloadKind::Http1
    } else {
        PayloadKind::Other
    };
    Event {
        kind: Some(Kind::Tc(TcEvent {
            time_unix_nano: time,
            pod: Some(server_pod()),
            kind: kind as i32,
            src: ep(src.0, src.1),
            dst: ep(dst.0, dst.1),
            tcp_seq: (time / US) as u32,
            http,
            payload: payload as i32,
            ..TcEvent::default()
        })),
    }
}

/// The pod the sessions' calls go to.
fn server_pod() -> PodRef {
    PodRef {
        namespace: "ns".into(),
        name: "server".into(),
    }
}

fn access_log(
    id: &str,
    start: i64,
    client: (&str, u32),
    server: (&str, u32),
    inbound: bool,
) -> Event {
    access_log_upstream(id, start, client, server, inbound, None)
}

/// An entry whose sidecar sent the call on from `upstream` (its local
/// address) to the app.
fn access_log_upstream(
    id: &str,
    start: i64,
    client: (&str, u32),
    server: (&str, u32),
    inbound: bool,
    upstream: Option<(Address<'_>, Address<'_>)>,
) -> Event {
    Event {
        kind: Some(Kind::AccessLog(AccessLog {
            start_time_unix_nano: start,
            request_id: id.into(),
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            downstream_remote: ep(client.0, client.1),
            downstream_local: ep(server.0, server.1),
            upstream_cluster: if inbound {
                "inbound|80||"
            } else {
                "outbound|80||server.ns.svc.cluster.local"
            }
            .into(),
            reporter: Some(PodRef {
                namespace: "ns".into(),
                name: if inbound { "server" } else { "client" }.into(),
            }),
            upstream_local: upstream.and_then(|(local, _)| ep(local.0, local.1)),
            upstream_remote: upstream.and_then(|(_, remote)| ep(remote.0, remote.1)),
            first_upstream_tx_byte_ns: if upstream.is_some() { 10 * US } else { 0 },
            last_downstream_tx_byte_ns: 300 * US,
            ..AccessLog::default()
        })),
    }
}

fn wasm(id: &str, direction: TrafficDirection) -> Event {
    Event {
        kind: Some(Kind::Wasm(WasmEvent {
            request_id: id.into(),
            listener_direction: direction.into(),
            auth: Some(AuthInfo {
                scheme: "Bearer".into(),
                ..AuthInfo::default()
            }),
            ..WasmEvent::default()
        })),
    }
}

/// Every event of `requests` calls on one connection from `client_port`:
/// request start, the sidecar's start, its hop to the app and back, the
/// response start. With `context`, a retransmission during each request
/// and, when `reset` is set, a reset during the last one, each arriving
/// before its call's access log (as they do: the sidecar flushes its logs
/// every second).
fn connection(
    name: &str,
    client_port: u32,
    requests: usize,
    first: i64,
    reset: bool,
    context: bool,
) -> Vec<Event> {
    let client = ("10.0.0.1", client_port);
    let server = ("10.0.0.2", 80);
    let app = ("127.0.0.1", 8080);
    let sidecar = ("127.0.0.6", 40000 + client_port);
    let mut events = Vec::new();
    let mut t = first;
    for n in 0..requests {
        let id = format!("{name}-{n}");
        events.push(tc(TcKind::Message, t, client, server, Some("")));
        if context {
            events.push(tc(TcKind::Retransmit, t + 5 * US, client, server, None));
            if reset && n + 1 == requests {
                events.push(tc(TcKind::Reset, t + 250 * US, server, client, None));
            }
        }
        let start = t + 20 * US;
        events.push(access_log_upstream(
            &id,
            start,
            client,
            server,
            true,
            Some((sidecar, app)),
        ));
        events.push(wasm(&id, TrafficDirection::Inbound));
        events.push(tc(
            TcKind::Message,
            start + 10 * US,
            sidecar,
            app,
            Some(&id),
        ));
        events.push(tc(TcKind::Message, start + 200 * US, app, sidecar, None));
        events.push(tc(TcKind::Message, start + 300 * US, server, client, None));
        t = start + 350 * US;
    }
    events
}

/// Three keep-alive connections of three calls and two single calls,
/// interleaved in time, with retransmissions and resets when `context`.
fn session(context: bool) -> Vec<Event> {
    let mut events = connection("a", 50001, 3, T0, true, context);
    events.extend(connection("b", 50002, 3, T0 + 100 * US, false, context));
    events.extend(connection("c", 50003, 3, T0 + 200 * US, false, context));
    events.extend(connection("d", 50004, 1, T0 + 50 * US, false, context));
    events.extend(connection("e", 50005, 1, T0 + 60 * US, true, context));
    events
}

fn join(events: Vec<Event>) -> (Vec<CallRecord>, JoinStats) {
    join_with(JoinConfig::default(), events)
}

fn join_with(config: JoinConfig, events: Vec<Event>) -> (Vec<CallRecord>, JoinStats) {
    let mut joiner = Joiner::new(config);
    let mut records = Vec::new();
    for (n, event) in events.into_iter().enumerate() {
        records.extend(apply(
            &mut joiner,
            Input::Event {
                event,
                now_ns: T0 + n as i64,
            },
        ));
    }
    records.extend(apply(&mut joiner, Input::End));
    records.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    (records, joiner.stats().clone())
}

#[test]
fn a_session_in_order_joins_every_call_with_its_own_wire_events() {
    let (records, stats) = join(session(true));
    assert_eq!(records.len(), 11);
    assert_eq!(
        (stats.complete, stats.partial, stats.unmatched_tc),
        (11, 0, 0)
    );
    for record in &records {
        assert_eq!(
            record.layers,
            [Layer::Als, Layer::Wasm, Layer::Tc],
            "{record:?}"
        );
        let wire = record.tc.as_ref().unwrap();
        assert_eq!(wire.retransmits, 1, "{}", record.request_id);
        // tcp_seq is the request start's time in µs: 20 µs before the
        // sidecar's start.
        let sidecar_start = record.time.clone();
        assert_eq!(
            record.latency.as_ref().unwrap().before_sidecar_us,
            Some(20),
            "{sidecar_start}"
        );
    }
    let resets: Vec<(&str, u32)> = records
        .iter()
        .map(|r| (r.request_id.as_str(), r.tc.as_ref().unwrap().resets))
        .filter(|(_, resets)| *resets > 0)
        .collect();
    assert_eq!(
        resets,
        [("a-2", 1), ("e-0", 1)],
        "a reset goes to the call it cut"
    );
}

/// Where an event comes from. Each source delivers in its own order (a
/// pod's ring in time order, a sidecar's access-log stream and its
/// filter's batches in the order of their calls); how the sources
/// interleave on the way to the CLI (several probes, flush intervals) is
/// arbitrary.
fn source(event: &Event) -> usize {
    match event.kind {
        Some(Kind::Tc(_)) => 0,
        Some(Kind::AccessLog(_)) => 1,
        _ => 2,
    }
}

/// The events of `session` as their sources deliver them, interleaved as
/// `picks` says: each pick takes the next event of source `pick` (or of
/// the next source that has one left).
fn interleaved(mut session: Vec<Event>, picks: &[usize]) -> Vec<Event> {
    let time = |event: &Event| match &event.kind {
        Some(Kind::Tc(tc)) => tc.time_unix_nano,
        Some(Kind::AccessLog(log)) => log.start_time_unix_nano,
        _ => 0,
    };
    // Stable: the filter's events keep the order of their calls.
    session.sort_by_key(|event| (source(event), time(event)));
    let mut sources: [VecDeque<Event>; 3] = Default::default();
    for event in session {
        sources[source(&event)].push_back(event);
    }
    let mut out = Vec::new();
    for &pick in picks.iter().cycle() {
        let Some(next) = (0..3)
            .map(|k| (pick + k) % 3)
            .find(|&k| !sources[k].is_empty())
        else {
            break;
        };
        out.extend(sources[next].pop_front());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any interleaving of the sources gives the same records. (A
    /// retransmission or reset that arrives after its call was emitted
    /// cannot be attributed; it is counted as unmatched, so those are
    /// left out here and checked in arrival order above.)
    #[test]
    fn any_interleaving_of_the_sources_gives_the_same_records(
        picks in proptest::collection::vec(0usize..3, 1..200)
    ) {
        let (expected, _) = join(session(false));
        let (records, stats) = join(interleaved(session(false), &picks));
        prop_assert_eq!(records, expected);
        prop_assert_eq!((stats.complete, stats.unmatched_tc), (11, 0));
    }

    /// Inputs fed in batches of any sizes give what they give one by
    /// one: the same records in the same order, the same counts.
    #[test]
    fn inputs_in_batches_give_what_they_give_one_by_one(
        picks in proptest::collection::vec(0usize..3, 1..200),
        sizes in proptest::collection::vec(1usize..12, 1..40),
    ) {
        let inputs = || {
            interleaved(session(true), &picks)
                .into_iter()
                .enumerate()
                .map(|(n, event)| Input::Event { event, now_ns: T0 + n as i64 })
                .chain([Input::End])
                .collect::<Vec<_>>()
        };
        let mut joiner = Joiner::new(JoinConfig::default());
        let mut expected = Vec::new();
        for input in inputs() {
            joiner.apply(input, &mut expected);
        }
        let expected_stats = joiner.stats().clone();
        let mut joiner = Joiner::new(JoinConfig::default());
        let mut records = Vec::new();
        let mut inputs = inputs().into_iter();
        for &size in sizes.iter().cycle() {
            let batch: Vec<Input> = inputs.by_ref().take(size).collect();
            if batch.is_empty() {
                break;
            }
            joiner.apply_all(batch, &mut records);
        }
        prop_assert_eq!(records, expected);
        prop_assert_eq!(joiner.stats(), &expected_stats);
    }

    /// The same when the hop to the app is not part of a complete call (a
    /// session where it is not plaintext): then a call can be complete
    /// before its own request start has arrived, and must not take the
    /// previous request's.
    #[test]
    fn without_the_hop_to_the_app_calls_do_not_take_the_previous_request(
        picks in proptest::collection::vec(0usize..3, 1..200)
    ) {
        let config = || JoinConfig {
            expect: vec![Part::AccessLog, Part::Wasm, Part::Wire],
            ..JoinConfig::default()
        };
        let (expected, _) = join_with(config(), session(false));
        let (records, _) = join_with(config(), interleaved(session(false), &picks));
        let seqs = |records: &[CallRecord]| -> Vec<(String, Option<u32>)> {
            records.iter().map(|r| (r.request_id.clone(), r.tc.as_ref().and_then(|tc| tc.tcp_seq))).collect()
        };
        prop_assert_eq!(seqs(&records), seqs(&expected));
    }
}

/// When a call's WASM event was lost it never completes early, and its
/// request start stays unclaimed. The next call on the connection, whose
/// own request start has not arrived yet, must not take it: that request
/// was answered before the next call began.
#[test]
fn a_call_with_a_lost_part_does_not_lend_its_request_start() {
    let client = ("10.0.0.1", 50001);
    let server = ("10.0.0.2", 80);
    let (t_a, s_a) = (T0, T0 + 20 * US);
    let (t_b, s_b) = (T0 + 370 * US, T0 + 390 * US);
    let events = vec![
        tc(TcKind::Message, t_a, client, server, Some("")),
        tc(TcKind::Message, s_a + 300 * US, server, client, None),
        access_log("a", s_a, client, server, true),
        // a's WASM event is lost.
        access_log("b", s_b, client, server, true),
        wasm("b", TrafficDirection::Inbound),
        tc(TcKind::Message, t_b, client, server, Some("")),
        tc(TcKind::Message, s_b + 300 * US, server, client, None),
    ];
    let (records, stats) = join_with(
        JoinConfig {
            expect: vec![Part::AccessLog, Part::Wasm, Part::Wire],
            ..JoinConfig::default()
        },
        events,
    );
    let seqs: Vec<(&str, u32)> = records
        .iter()
        .map(|r| {
            (
                r.request_id.as_str(),
                r.tc.as_ref().and_then(|tc| tc.tcp_seq).unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(seqs, [("a", (t_a / US) as u32), ("b", (t_b / US) as u32)]);
    assert_eq!((stats.complete, stats.partial), (1, 1));
}

/// A call between two traced pods is logged by both sidecars (the
/// caller's outbound, the called pod's inbound) and seen by both filters:
/// one call with two hops, described as the called pod saw it.
#[test]
fn both_sidecars_of_a_call_make_one_record_with_two_hops() {
    let client = ("10.0.0.1", 50010);
    let server = ("10.0.0.2", 80);
    let mut outbound = access_log("x-1", T0, ("10.0.0.1", 33000), ("10.96.0.10", 80), false);
    if let Some(Kind::AccessLog(log)) = &mut outbound.kind {
        log.last_downstream_tx_byte_ns = 900 * US;
        log.upstream_remote = ep("10.0.0.2", 80);
    }
    let events = vec![
        outbound,
        wasm("x-1", TrafficDirection::Outbound),
        access_log("x-1", T0 + 100 * US, client, server, true),
        wasm("x-1", TrafficDirection::Inbound),
    ];
    let mut joiner = Joiner::new(JoinConfig {
        expect: vec![Part::AccessLog, Part::Wasm],
        ..JoinConfig::default()
    });
    for (ip, name) in [("10.0.0.1", "client"), ("10.0.0.2", "server")] {
        apply(
            &mut joiner,
            Input::Identity {
                ip: ip.parse().unwrap(),
                since_ns: 0,
                workload: Workload {
                    namespace: "ns".into(),
                    name: name.into(),
                    kind: WorkloadKind::Pod,
                    traced: true,
                },
            },
        );
    }
    let mut records = Vec::new();
    for event in events {
        records.extend(apply(&mut joiner, Input::Event { event, now_ns: T0 }));
    }
    records.extend(apply(&mut joiner, Input::End));
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    let hops: Vec<(&str, &str, i64)> = record
        .hops
        .iter()
        .map(|hop| (hop.reporter.as_str(), &*hop.direction, hop.duration_us))
        .collect();
    assert_eq!(
        hops,
        [
            ("ns/client", "outbound", 900),
            ("ns/server", "inbound", 300)
        ]
    );
    assert_eq!(
        (record.src.name.as_str(), record.dst.name.as_str()),
        ("client", "server")
    );
    assert_eq!(
        joiner.stats().complete,
        1,
        "complete only once both hops were in"
    );
    assert_eq!(record.als.as_ref().unwrap().reporter, "ns/server");
    assert_eq!(record.wasm.as_ref().unwrap().direction, "inbound");
}
