//! The WASM filter inside a real Envoy, with the probe's ingest first
//! unreachable and then back: traffic is never held up or changed, the
//! filter's memory stays within its budget, and what it could not deliver is
//! counted and reported once it can deliver again.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use apitrace_netns::{run_in, topology::Pod};
use apitrace_proto::{
    SESSION_TOKEN_HEADER, WASM_INGEST_PATH, WasmBatch, filter_config::Config as FilterConfig,
};
use prost::Message as _;

use crate::support::{App, Envoy, base64url, binaries, pods, real};

const LISTENER: u16 = 10000;
const INGEST: u16 = 15902;
const ADMIN: u16 = 15000;

/// Envoy with the filter in front of an app on 127.0.0.1:8080, posting to an
/// ingest endpoint on 127.0.0.1:15902, with a budget of 8 KiB of events.
fn bootstrap(module: &std::path::Path) -> String {
    let socket = |port: u16| serde_json::json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } });
    let cluster = |name: &str, port: u16| {
        serde_json::json!({
            "name": name, "type": "STATIC", "connect_timeout": "0.25s",
            "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket(port) } }] }] },
        })
    };
    let plugin = serde_json::to_string(&FilterConfig {
        queue_max_bytes: 8192,
        flush_interval_ms: 100,
        timeout_ms: 500,
        ..FilterConfig::new("ingest", "probe", "s3cret", false)
    })
    .unwrap();
    serde_json::json!({
        "admin": { "address": socket(ADMIN) },
        "static_resources": {
            "listeners": [{
                "name": "in", "address": socket(LISTENER),
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "in",
                        "route_config": { "virtual_hosts": [{ "name": "app", "domains": ["*"], "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "app" } }] }] },
                        "http_filters": [
                            { "name": "apitrace", "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                                "config": {
                                    "root_id": "apitrace", "failure_policy": "FAIL_OPEN",
                                    "configuration": { "@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin },
                                    "vm_config": { "runtime": "envoy.wasm.runtime.v8", "code": { "local": { "filename": module } } },
                                },
                            }},
                            { "name": "envoy.filters.http.router", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } },
                        ],
                    },
                }]}],
            }],
            "clusters": [cluster("app", 8080), cluster("ingest", INGEST)],
        },
    })
    .to_string()
}

/// One HTTP/1.1 GET inside `pod`: the status and how long it took.
fn get(pod: &Pod, port: u16, path: &str, bearer: Option<&str>) -> Option<(u16, Duration)> {
    run_in(&pod.netns_path(), || -> std::io::Result<(u16, Duration)> {
        let started = Instant::now();
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let auth = bearer
            .map(|token| format!("authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nhost: app\r\n{auth}connection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let status = answer
            .get(9..12)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        Ok((status, started.elapsed()))
    })
    .ok()?
    .ok()
}

/// What the test's ingest endpoint received.
struct Received {
    events: usize,
    dropped: u64,
}

/// An HTTP/1.1 ingest endpoint inside `pod` that checks the token, decodes
/// each batch and reports it; it serves until the test ends.
fn serve_ingest(pod: &Pod) -> mpsc::Receiver<Received> {
    let listener = run_in(&pod.netns_path(), || {
        TcpListener::bind(("127.0.0.1", INGEST))
    })
    .expect("inside the pod")
    .expect("the ingest port is free");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sender = sender.clone();
            std::thread::spawn(move || serve_batches(stream, &sender));
        }
    });
    receiver
}

fn serve_batches(stream: TcpStream, sender: &mpsc::Sender<Received>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        assert!(
            request_line.starts_with(&format!("POST {WASM_INGEST_PATH} ")),
            "{request_line}"
        );
        let (mut length, mut token) = (0, String::new());
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap_or(0);
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case(SESSION_TOKEN_HEADER) {
                token = value.trim().to_owned();
            }
        }
        assert_eq!(token, "s3cret", "the filter sends the session token");
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let batch = WasmBatch::decode(body.as_slice()).expect("a batch");
        let _ = sender.send(Received {
            events: batch.events.len(),
            dropped: batch.dropped,
        });
        let _ = reader
            .get_mut()
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
    }
}

#[test]
fn an_unreachable_probe_costs_traffic_nothing_and_every_lost_event_is_counted() {
    let Some(real) = real("the filter with an unreachable probe") else {
        return;
    };
    let pods = pods(&["envoy"]);
    let pod = pods.pod("envoy");
    let _app = App::serve_on(pod, IpAddr::from([127, 0, 0, 1]), 8080);
    let config =
        std::env::temp_dir().join(format!("apitrace-filter-test-{}.json", std::process::id()));
    std::fs::write(&config, bootstrap(&binaries().filter)).expect("the config is written");
    let _envoy = Envoy::start(&real.envoy, pod, &config, &config.with_extension("log"));
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(config.with_extension("log"));
    // A bearer JWT of about 1 KB: each event is large against the 8 KiB budget.
    let claims = format!(r#"{{"sub":"alice","pad":"{}"}}"#, "x".repeat(700));
    let token = format!("eyJhbGciOiJub25lIn0.{}.c2ln", base64url(claims.as_bytes()));

    // The probe is unreachable: every request still succeeds, and promptly.
    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let (status, took) =
            get(pod, LISTENER, "/status", Some(&token)).expect("the request is answered");
        assert_eq!(status, 200, "the filter never alters traffic");
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a request waited on the probe: {slowest:?}"
    );

    // The probe is back: new events arrive, and the first batch reports what
    // was lost while it was away.
    // Spaced beyond the flush interval, so that each fits in the budget.
    let received = serve_ingest(pod);
    for _ in 0..10 {
        assert_eq!(
            get(pod, LISTENER, "/status", Some(&token))
                .expect("answered")
                .0,
            200
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    let (mut events, mut dropped) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while events as u64 + dropped < 110 && Instant::now() < deadline {
        if let Ok(batch) = received.recv_timeout(Duration::from_millis(200)) {
            events += batch.events;
            dropped += batch.dropped;
        }
    }
    assert!(
        events >= 10,
        "the events after the probe came back arrived: {events}"
    );
    // Events of the first 100 were either lost in failed posts or refused by
    // the budget (counted as dropped), or were still queued and delivered now.
    assert_eq!(
        events as u64 + dropped,
        110,
        "every event is delivered or counted"
    );
    assert!(
        dropped >= 90,
        "the 8 KiB budget held at most a handful of 1 KB events: {dropped}"
    );
}
