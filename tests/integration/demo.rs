//! `kubectl apitrace demo`, run for real: network namespaces, a real Envoy with
//! the WASM filter and ALS, the TC program on the server pod's interfaces.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::{assert_nothing_left, binaries, demo_cgroups, real, stderr};

/// The demo of the built CLI, with the built probe and `envoy`.
pub(crate) fn demo(envoy: &std::path::Path) -> Command {
    let binaries = binaries();
    let mut command = Command::new(&binaries.cli);
    command
        .arg("demo")
        .arg("--probe-bin")
        .arg(&binaries.probe)
        .arg("--envoy")
        .arg(envoy);
    command
}

#[test]
fn every_request_is_joined_across_all_three_layers_and_nothing_is_left() {
    let Some(real) = real("the demo") else { return };
    let saved = std::env::temp_dir().join(format!(
        "apitrace-demo-test-{}.apitrace",
        std::process::id()
    ));
    let child = demo(&real.envoy)
        .args(["--requests", "5", "-o", "ndjson", "--save"])
        .arg(&saved)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CLI starts");
    let pid = child.id();
    let output = child.wait_with_output().expect("the CLI ends");
    assert!(
        output.status.success(),
        "the demo failed:\n{}",
        stderr(&output)
    );
    let stdout = String::from_utf8(output.stdout.clone()).expect("UTF-8 output");
    let records: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect();
    assert_eq!(records.len(), 5, "one record per request:\n{stdout}");
    assert!(
        records
            .windows(2)
            .all(|pair| pair[0]["time"].as_str() <= pair[1]["time"].as_str()),
        "in time order:\n{stdout}"
    );

    let mut client_ports = Vec::new();
    for record in &records {
        assert_eq!(
            record["layers"],
            serde_json::json!(["als", "wasm", "tc"]),
            "{record:#}"
        );
        // The same x-request-id in every layer.
        let id = record["request_id"].as_str().expect("a request id");
        assert!(!id.is_empty());
        assert_eq!(record["als"]["request_id"], id, "{record:#}");
        assert_eq!(record["wasm"]["request_id"], id, "{record:#}");
        assert_eq!(
            record["tc"]["request_id"], id,
            "the id read on lo: {record:#}"
        );
        // Both sidecars logged it: the client's outbound hop, the server's
        // inbound one, which proved the caller's identity over mTLS.
        let hops: Vec<&str> = record["hops"]
            .as_array()
            .expect("hops")
            .iter()
            .filter_map(|hop| hop["direction"].as_str())
            .collect();
        assert_eq!(hops, ["outbound", "inbound"], "{record:#}");
        assert_eq!(
            record["src"]["identity"], "spiffe://cluster.local/ns/demo/sa/client",
            "{record:#}"
        );
        assert_eq!(
            record["tc"]["scope"], "connection",
            "TLS on eth0: {record:#}"
        );
        assert_eq!(record["tc"]["tls"], true, "{record:#}");
        // The TC tuple is the ALS downstream tuple: the client sidecar's
        // connection to the server.
        assert_eq!(
            record["tc"]["src"]["ip"], record["als"]["downstream"]["ip"],
            "{record:#}"
        );
        assert_eq!(
            record["tc"]["src"]["port"], record["als"]["downstream"]["port"],
            "{record:#}"
        );
        assert_eq!(record["tc"]["src"]["ip"], record["src"]["ip"], "{record:#}");
        assert_eq!(record["tc"]["dst"]["ip"], record["dst"]["ip"], "{record:#}");
        assert_eq!(record["tc"]["dst"]["port"], 8080, "{record:#}");
        assert_eq!(record["tc"]["interface"], "eth0", "{record:#}");
        assert!(
            record["tc"]["tcp_seq"].is_u64() && record["tc"]["ip_id"].is_u64(),
            "{record:#}"
        );
        // Figure 4's identities.
        assert_eq!(record["src"]["name"], "client", "{record:#}");
        assert_eq!(record["src"]["namespace"], "demo", "{record:#}");
        assert_eq!(record["src"]["kind"], "Pod", "{record:#}");
        assert_eq!(record["dst"]["name"], "server", "{record:#}");
        assert_eq!(record["protocol"], "HTTP/1.1", "{record:#}");
        assert_eq!(record["method"], "GET", "{record:#}");
        // The credentials: claims decoded, the token itself nowhere.
        assert_eq!(record["auth"]["scheme"], "Bearer", "{record:#}");
        assert_eq!(record["auth"]["claims"]["sub"], "alice", "{record:#}");
        assert!(record["auth"].get("token").is_none(), "{record:#}");
        // The app's own connection to its sidecar, on the client's `lo`: its
        // request's packet is the call's.
        let app = &record["hops"][0]["downstream"];
        assert_eq!(app["scope"], "request", "{record:#}");
        assert_eq!(app["interface"], "lo", "{record:#}");
        assert_eq!(app["dst"]["port"], 15001, "redirected: {record:#}");
        client_ports.push(app["src"]["port"].as_u64().expect("a port"));
    }
    let paths: Vec<&str> = records.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(
        paths,
        [
            "/status",
            "/api/orders",
            "/api/orders/42",
            "/api/users/me",
            "/missing"
        ]
    );
    let statuses: Vec<u64> = records
        .iter()
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 404]);
    client_ports.sort_unstable();
    client_ports.dedup();
    assert_eq!(
        client_ports.len(),
        5,
        "one connection per request from the app"
    );
    // Base64url of a JSON object starts with "eyJ": no token part was printed.
    assert!(
        !stdout.contains("eyJ"),
        "a raw token part was printed:\n{stdout}"
    );
    let said = stderr(&output);
    assert!(
        said.contains(
            "the client made 5 calls; waiting up to 5s for the sidecars' last access logs"
        ),
        "the end of the session is said: {said}"
    );
    let summary = said.lines().last().unwrap_or_default().to_owned();
    assert!(
        summary.contains("5 calls made; 5 joined with every layer, 0 with some"),
        "{summary}"
    );
    assert!(summary.contains("dropped: none"), "{summary}");
    assert_nothing_left(pid);

    // The saved session replays to the same records, and to the same summary
    // of what was joined and dropped, after the same tables.
    let replay = replay_ndjson(&saved);
    assert_eq!(String::from_utf8_lossy(&replay.stdout), stdout);
    let replay_said = stderr(&replay);
    let (tables, paragraph) = replay_said
        .trim_end()
        .rsplit_once('\n')
        .expect("the summary's tables, then its paragraph");
    assert!(tables.starts_with("5 calls seen\n\nROUTE"), "{replay_said}");
    assert!(
        said.contains(tables),
        "the demo printed other tables:\n{said}"
    );
    assert_eq!(
        paragraph,
        summary.trim().replace("5 calls made;", "5 calls;")
    );
    std::fs::remove_file(&saved).expect("the saved session");
}

#[test]
fn an_interrupted_demo_removes_everything() {
    let Some(real) = real("the interrupted demo") else {
        return;
    };
    // Followed, so that the signal is sent once a call has been joined: how
    // long after its sidecars start the first call is, depends on the load.
    let mut child = demo(&real.envoy)
        .args(["--requests", "100000", "-o", "ndjson", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CLI starts");
    let pid = child.id();
    let stdout = child.stdout.take().expect("the CLI's piped stdout");
    let (first, joined) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if lines.is_empty() {
                let _ = first.send(());
            }
            lines.push(line);
        }
        lines
    });
    assert!(
        joined.recv_timeout(Duration::from_secs(180)).is_ok(),
        "the demo printed no call within 180 s"
    );
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let output = child.wait_with_output().expect("the CLI ends");
    let printed = reader.join().expect("the reader of the CLI's stdout");
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("interrupted"),
        "{}",
        stderr(&output)
    );
    // What was joined before the interruption is printed, and summed up.
    assert!(
        printed
            .iter()
            .all(|line| serde_json::from_str::<Value>(line).is_ok()),
        "{printed:?}"
    );
    assert!(
        stderr(&output).contains("joined with every layer"),
        "{}",
        stderr(&output)
    );
    assert_nothing_left(pid);
}

/// Waits until the demo of CLI `pid` runs Envoy, and a little more, so that the
/// probe is attached and requests are flowing.
fn wait_until_requests_flow(pid: u32) {
    let started = Instant::now();
    // The client's sidecar starts last.
    let envoy_config = std::env::temp_dir().join(format!("apitrace-demo-{pid}/envoy-client.json"));
    while !envoy_config.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the demo did not start Envoy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
}

/// A CLI killed outright cannot clean up. Its processes die with it (the
/// kernel kills them), and with the probe go its TC links; what stays is the
/// namespaces and the sidecar pods' cgroups, which the next demo removes.
#[test]
fn a_killed_demo_leaves_no_process_or_program_and_the_next_demo_sweeps_the_rest() {
    let Some(real) = real("the killed demo") else {
        return;
    };
    let mut child = demo(&real.envoy)
        .args(["--requests", "100000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the CLI starts");
    let pid = child.id();
    wait_until_requests_flow(pid);
    child.kill().expect("SIGKILL the CLI");
    child.wait().expect("the CLI is gone");
    let namespaces = || {
        let output = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip runs");
        String::from_utf8_lossy(&output.stdout)
            .matches(&format!("apitrace-demo-{pid}-"))
            .count()
    };
    assert_eq!(
        namespaces(),
        4,
        "the killed demo's namespaces are still there"
    );
    assert_eq!(demo_cgroups(pid).len(), 1, "and its pods' cgroups");
    let next = demo(&real.envoy)
        .args(["--requests", "1", "-o", "ndjson"])
        .output()
        .expect("the next demo runs");
    assert!(next.status.success(), "{}", stderr(&next));
    assert_eq!(namespaces(), 0, "the next demo removed them");
    assert!(
        demo_cgroups(pid).is_empty(),
        "the next demo removed the cgroups"
    );
    // The namespaces are gone, so the work directory is all that can be left of
    // the killed run besides processes and programs.
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("apitrace-demo-{pid}")));
    assert_nothing_left(pid);
}

#[test]
fn a_demo_whose_sidecar_fails_to_start_removes_everything() {
    let Some(_) = real("the failing demo") else {
        return;
    };
    let child = demo(std::path::Path::new("/bin/false"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CLI starts");
    let pid = child.id();
    let output = child.wait_with_output().expect("the CLI ends");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("Envoy exited during start-up"),
        "{}",
        stderr(&output)
    );
    assert_nothing_left(pid);
}

#[test]
fn show_secrets_opts_in_to_the_raw_token() {
    let Some(real) = real("the demo with --show-secrets") else {
        return;
    };
    let saved =
        std::env::temp_dir().join(format!("apitrace-secrets-{}.apitrace", std::process::id()));
    let output = demo(&real.envoy)
        .args([
            "--requests",
            "1",
            "-o",
            "ndjson",
            "--show-secrets",
            "--save",
        ])
        .arg(&saved)
        .output()
        .expect("the CLI runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let record: Value = serde_json::from_slice(&output.stdout).expect("one JSON record");
    let token = record["auth"]["token"]
        .as_str()
        .expect("the raw token, asked for");
    assert_eq!(token.split('.').count(), 3, "a compact JWS: {token}");
    assert!(token.starts_with("eyJ"));

    // The saved session holds the token; a replay shows it only when asked too.
    let replay = |show: bool| {
        let mut command = Command::new(&binaries().cli);
        command.arg("join").arg(&saved).args(["-o", "ndjson"]);
        if show {
            command.arg("--show-secrets");
        }
        let output = command.output().expect("the CLI runs");
        assert!(output.status.success(), "{}", stderr(&output));
        String::from_utf8(output.stdout).expect("UTF-8 output")
    };
    assert!(
        !replay(false).contains(token),
        "a replay redacts by default"
    );
    assert!(replay(true).contains(token));
    std::fs::remove_file(&saved).expect("the saved session");
}

/// Runs the demo with `args` and `-o ndjson`, checks that it succeeded and left
/// nothing, and returns its records in time order and its summary.
pub(crate) fn run_demo(real: &crate::support::Real, args: &[&str]) -> (Vec<Value>, String) {
    let child = demo(&real.envoy)
        .args(args)
        .args(["-o", "ndjson"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the CLI starts");
    let pid = child.id();
    let output = child.wait_with_output().expect("the CLI ends");
    assert!(
        output.status.success(),
        "the demo {args:?} failed:\n{}",
        stderr(&output)
    );
    let mut records: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect();
    records.sort_by_key(|record| record["time"].as_str().unwrap_or_default().to_owned());
    assert_nothing_left(pid);
    (records, stderr(&output))
}

/// `kubectl apitrace join saved -o ndjson`, which must succeed.
fn replay_ndjson(saved: &std::path::Path) -> std::process::Output {
    let replay = Command::new(&binaries().cli)
        .arg("join")
        .arg(saved)
        .args(["-o", "ndjson"])
        .output()
        .expect("the CLI runs");
    assert!(replay.status.success(), "{}", stderr(&replay));
    replay
}

pub(crate) fn all_layers(record: &Value) -> bool {
    record["layers"] == serde_json::json!(["als", "wasm", "tc"])
}

#[test]
fn ipv6_calls_are_captured_and_joined_like_ipv4() {
    let Some(real) = real("the IPv6 demo") else {
        return;
    };
    let (records, summary) = run_demo(&real, &["--requests", "3", "--ipv6"]);
    assert_eq!(records.len(), 3, "{summary}");
    for record in &records {
        assert!(all_layers(record), "{record:#}");
        assert_eq!(record["src"]["ip"], "fd00:a71::a", "{record:#}");
        assert_eq!(record["dst"]["ip"], "fd00:a71::14", "{record:#}");
        assert_eq!(record["src"]["name"], "client", "{record:#}");
        assert_eq!(
            record["tc"]["src"], record["als"]["downstream"],
            "{record:#}"
        );
        assert_eq!(
            record["tc"]["ip_id"], 0,
            "IPv6 has no identification: {record:#}"
        );
        assert_eq!(
            record["tc"]["request_id"], record["request_id"],
            "{record:#}"
        );
        // The called sidecar reached its app from `::6` on `lo`.
        let to_app = &record["hops"][1]["upstream"];
        assert_eq!(to_app["src"]["ip"], "::6", "{record:#}");
        assert_eq!(to_app["scope"], "request", "{record:#}");
    }
}

/// 200 requests on one keep-alive connection from the app: each has its own
/// request on the client's `lo`, and the sequence numbers chain (each request
/// starts where the previous one ended), which only holds if every request
/// got the right one.
#[test]
fn keep_alive_requests_each_get_their_own_tcp_sequence_number() {
    let Some(real) = real("the keep-alive demo") else {
        return;
    };
    let (records, summary) = run_demo(&real, &["--requests", "200", "--keep-alive"]);
    assert_eq!(records.len(), 200, "{summary}");
    assert!(records.iter().all(all_layers), "{summary}");
    let app = |record: &Value| record["hops"][0]["downstream"].clone();
    let ports: std::collections::BTreeSet<u64> = records
        .iter()
        .filter_map(|r| app(r)["src"]["port"].as_u64())
        .collect();
    assert_eq!(ports.len(), 1, "one connection");
    for pair in records.windows(2) {
        let (this, next) = (app(&pair[0]), app(&pair[1]));
        let end = this["tcp_seq"].as_u64().unwrap() + this["payload_len"].as_u64().unwrap();
        assert_eq!(
            next["tcp_seq"].as_u64().unwrap(),
            end % (1 << 32),
            "{this:#} then {next:#}"
        );
    }
}

/// With packets lost after the probe saw them, TCP retransmits; the
/// retransmissions are attached to the calls that ran on the connection
/// while they happened (the sidecars' connection here, TLS: at the
/// connection's level), and every call still joins.
#[test]
fn retransmissions_are_seen_and_attached_to_their_call() {
    let Some(real) = real("the lossy demo") else {
        return;
    };
    let (records, summary) = run_demo(&real, &["--requests", "30", "--loss", "20"]);
    assert_eq!(records.len(), 30, "{summary}");
    assert!(records.iter().all(all_layers), "{summary}");
    let retransmits: u64 = records
        .iter()
        .filter_map(|r| r["tc"]["retransmits"].as_u64())
        .sum();
    assert!(
        retransmits > 0,
        "no retransmission among 30 calls with 20% loss: {summary}"
    );
    assert!(
        summary.contains("unmatched events: 0 TC"),
        "every retransmission found its call: {summary}"
    );
}

/// Malformed HTTP, bytes that are not HTTP, a 64 KiB header and a JWT with
/// bad base64 between the requests: nothing breaks, the request the client's
/// sidecar rejected is a record of its own, and every good call still joins.
/// (What is not HTTP/1.1 at all, the client's sidecar passes through as TCP,
/// as Istio's outbound listener for an HTTP port does: no access log, and
/// the wire's events are counted as unmatched.)
#[test]
fn bad_traffic_is_survived_and_shown() {
    let Some(real) = real("the demo with bad traffic") else {
        return;
    };
    let (records, summary) = run_demo(&real, &["--requests", "8", "--bad-traffic"]);
    let joined: Vec<&Value> = records.iter().filter(|r| all_layers(r)).collect();
    // Eight requests and the two of them followed by a request with a bad JWT.
    assert_eq!(joined.len(), 10, "{summary}");
    let bad_jwt: Vec<&&Value> = joined
        .iter()
        .filter(|r| r["auth"].get("error").is_some())
        .collect();
    assert_eq!(bad_jwt.len(), 2, "{summary}");
    assert_eq!(bad_jwt[0]["auth"]["error"], "JWT header is not base64url");
    let statuses: std::collections::BTreeSet<u64> = records
        .iter()
        .filter(|r| r["request_id"] == "")
        .filter_map(|r| r["status"].as_u64())
        .collect();
    // The huge header.
    assert_eq!(statuses, [431].into(), "{summary}");
    let rejected = records
        .iter()
        .find(|r| r["status"] == 431)
        .expect("the 431");
    assert_eq!(rejected["hops"][0]["direction"], "outbound", "{rejected:#}");
    assert_eq!(
        rejected["hops"][0]["downstream"]["interface"], "lo",
        "its request on the app's connection: {rejected:#}"
    );
    assert!(summary.contains("dropped: none"), "{summary}");
}

/// The raw token and its signature appear nowhere in what the CLI prints,
/// unless asked for.
#[test]
fn the_token_and_its_signature_are_never_printed_by_default() {
    let Some(real) = real("the redaction demo") else {
        return;
    };
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJib2IiLCJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIn0.c2lnbmF0dXJlLW9mLWJvYi1zaG91bGQtbmV2ZXItbGVhaw";
    let signature = token.rsplit('.').next().unwrap();
    for format in ["ndjson", "table", "har"] {
        let output = demo(&real.envoy)
            .args(["--requests", "2", "--token", token, "-o", format])
            .output()
            .expect("the CLI runs");
        assert!(output.status.success(), "{}", stderr(&output));
        let everything = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            stderr(&output)
        );
        assert!(
            !everything.contains(token),
            "the token was printed ({format})"
        );
        assert!(
            !everything.contains(signature),
            "the signature was printed ({format})"
        );
        assert!(
            everything.contains("bob"),
            "the claims were decoded ({format}):\n{everything}"
        );
    }
}

/// gRPC through both sidecars over mTLS, for real: each call's record says
/// how it ended although every one was an HTTP 200 (the sidecars' access logs
/// from the trailers, the filter's message counts), and the table's STATUS
/// shows the gRPC status.
#[test]
fn grpc_calls_carry_their_grpc_status_and_message_counts() {
    let Some(real) = real("the gRPC demo") else {
        return;
    };
    let output = demo(&real.envoy)
        .args(["--protocol", "grpc", "--requests", "5", "-o", "json"])
        .output()
        .expect("the CLI runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let records: Vec<Value> = serde_json::from_slice(&output.stdout).expect("a JSON array");
    assert_eq!(records.len(), 5, "{}", stderr(&output));
    let seen: Vec<(String, String, u64, u64)> = records
        .iter()
        .map(|r| {
            assert_eq!(r["status"], 200, "{r:#}");
            assert_eq!(
                r["layers"],
                serde_json::json!(["als", "wasm", "tc"]),
                "{r:#}"
            );
            let grpc = &r["grpc"];
            assert_eq!(grpc["service"], "apitrace.demo.v1.Orders");
            (
                grpc["method"].as_str().unwrap_or_default().to_owned(),
                grpc["status_name"].as_str().unwrap_or_default().to_owned(),
                grpc["request_messages"].as_u64().unwrap_or(99),
                grpc["response_messages"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    let expected = [
        ("GetOrder", "OK", 1, 1),
        ("ListOrders", "OK", 1, 3),
        ("GetOrder", "NOT_FOUND", 1, 0),
        ("ListOrders", "UNAVAILABLE", 1, 2),
        ("GetOrder", "OK", 1, 1),
    ]
    .map(|(method, status, requests, responses)| {
        (method.to_owned(), status.to_owned(), requests, responses)
    });
    assert_eq!(seen, expected);
    assert_eq!(records[3]["grpc"]["message"], "region eu is down");

    let table = demo(&real.envoy)
        .args(["--protocol", "grpc", "--requests", "4"])
        .output()
        .expect("the CLI runs");
    assert!(table.status.success(), "{}", stderr(&table));
    let text = String::from_utf8_lossy(&table.stdout);
    for status in ["OK", "NOT_FOUND", "UNAVAILABLE"] {
        assert!(text.contains(&format!(" {status} ")), "{status} in\n{text}");
    }
}

/// `--until 2 --where 'status == 404'`: the client's every fifth call is to
/// `/missing`, so the demo stops its client once the second is joined, well
/// before its hundredth call, prints exactly the two, sums them, and with
/// `--save` keeps only them, which replay to the same records.
#[test]
fn until_stops_the_demo_after_n_matching_calls_and_save_keeps_only_them() {
    let Some(real) = real("the demo with --until") else {
        return;
    };
    let saved = std::env::temp_dir().join(format!(
        "apitrace-demo-until-{}.apitrace",
        std::process::id()
    ));
    let (records, said) = run_demo(
        &real,
        &[
            "--requests",
            "100",
            "--where",
            "status == 404",
            "--until",
            "2",
            "--save",
            saved.to_str().expect("a UTF-8 path"),
        ],
    );
    assert_eq!(records.len(), 2, "{said}");
    assert!(
        records
            .iter()
            .all(|record| record["status"] == 404 && record["path"] == "/missing"),
        "{records:?}"
    );
    assert!(
        said.contains("2 calls matched --where (--until 2): the client was stopped"),
        "{said}"
    );
    assert!(
        !said.contains("the client made"),
        "the client was stopped: {said}"
    );
    // The headline: the calls joined before the client stopped, the 404s
    // among them (more may have been in flight), the two printed.
    let headline = said
        .lines()
        .find(|line| line.contains(" calls seen, "))
        .unwrap_or_else(|| panic!("no headline in {said}"));
    let seen: usize = headline
        .split_once(' ')
        .and_then(|(count, _)| count.parse().ok())
        .unwrap_or_else(|| panic!("no count in {headline}"));
    assert!(
        headline.ends_with(" matched --where")
            || headline.ends_with(", the first 2 printed and summed (--until 2)"),
        "{headline}"
    );
    assert!((10..100).contains(&seen), "{seen} calls seen: {said}");
    // The summary's row of the route: its cells are three spaces apart.
    let row: Vec<&str> = said
        .lines()
        .find(|line| line.starts_with("GET /missing "))
        .unwrap_or_else(|| panic!("no row of the route in {said}"))
        .split("   ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .collect();
    assert_eq!(row[..3], ["GET /missing", "2", "2: 404×2"], "{said}");
    let bytes = std::fs::read(&saved).expect("the saved calls");
    assert!(bytes.starts_with(b"apitrace-session/v2\n"));
    let replay = replay_ndjson(&saved);
    std::fs::remove_file(&saved).expect("the saved session");
    let replayed: Vec<Value> = String::from_utf8_lossy(&replay.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect();
    assert_eq!(replayed, records);
}
