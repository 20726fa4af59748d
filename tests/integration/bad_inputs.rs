//! Bad input, as one table: each row is a mistake a user, a sidecar or a
//! client makes, and the exact error it must get. After each row, the part it
//! hit shows it still works: the CLI and the probe refuse without a panic; the
//! probe's endpoints still take a good batch; a bad token through the real
//! Envoy and WASM filter still leaves its call traced with every layer.

use std::{net::IpAddr, path::Path, process::Command};

use apitrace_netns::topology::Pod;
use apitrace_proto::{SESSION_TOKEN_HEADER, WASM_INGEST_PATH, WasmBatch, WasmEvent, ports};
use prost::Message as _;
use serde_json::Value;

use crate::{
    demo::{all_layers, run_demo},
    probe::Probe,
    support::{base64url, binaries, pods, real, stderr},
};

/// What a row sends.
enum Bad {
    /// `kubectl-apitrace ARGS`: its exit status and the first line it prints.
    Cli(Vec<String>),
    /// `apitrace-probe ARGS`, likewise.
    ProbeArgs(Vec<&'static str>),
    /// `curl ARGS` from a traced pod to the probe: the HTTP status, or the
    /// gRPC status and message.
    ProbeRequest(Vec<String>),
    /// `Authorization: Bearer TOKEN` on a call through the demo's Envoy: the
    /// `auth.error` of the call's record.
    Token(String),
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// The rows. `files` holds the bad files the CLI is given; `probe` is where
/// the probe listens.
fn table(files: &Path, probe: IpAddr) -> Vec<(Bad, String)> {
    let file = |name: &str| files.join(name).display().to_string();
    let cli = |args: &[&str], expected: &str| (Bad::Cli(strings(args)), expected.to_owned());
    let join = |name: &str, expected: String| {
        (
            Bad::Cli(vec!["join".into(), file(name)]),
            expected.replace("{file}", &file(name)),
        )
    };
    let post = |body: &str, token: Option<&str>| Bad::ProbeRequest(post(files, probe, body, token));
    let grpc = |port: u16, path: &str, body: &str, token: Option<&str>| {
        let mut args = strings(&[
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ]);
        args.extend(["--data-binary".into(), format!("@{}", file(body))]);
        if let Some(token) = token {
            args.extend(["-H".into(), format!("{SESSION_TOKEN_HEADER}: {token}")]);
        }
        args.push(format!("http://{probe}:{port}{path}"));
        Bad::ProbeRequest(args)
    };
    let probe_args = |extra: &[&'static str], expected: &str| {
        let mut args = vec!["--session-id", "s", "--session-token", "t", "--deadline"];
        args.extend(extra);
        (Bad::ProbeArgs(args), expected.to_owned())
    };
    let token = |token: String, expected: &str| (Bad::Token(token), expected.to_owned());
    let header = base64url(br#"{"alg":"RS256"}"#);
    let claims = base64url(br#"{"sub":"bob"}"#);
    let signature = "c2lnbmF0dXJlLW9mLWJvYi1zaG91bGQtbmV2ZXItbGVhaw";
    let targets = "use pod/NAME, deploy/NAME, sts/NAME, ds/NAME, svc/NAME, or -l SELECTOR";
    let selectors = "use key=value, key!=value, key in (a,b), key or !key, joined by commas, e.g. app=web,tier!=db";
    vec![
        // The CLI: targets, selectors, namespaces, flags.
        cli(&["pod/"], &format!("exit 2: error: invalid value 'pod/' for '[TARGET]': \"pod/\" is not something to trace: {targets}")),
        cli(&["cm/config"], &format!("exit 2: error: invalid value 'cm/config' for '[TARGET]': \"cm/config\" is not something to trace: {targets}")),
        cli(&["pod/Nginx"], &format!("exit 2: error: invalid value 'pod/Nginx' for '[TARGET]': \"pod/Nginx\" is not something to trace: {targets}")),
        cli(&["-l", "=="], &format!("exit 2: error: invalid value '==' for '--selector <SELECTOR>': \"==\" is not a label selector (\"\" is not a label key): {selectors}")),
        cli(&["-l", "app in (a"], &format!("exit 2: error: invalid value 'app in (a' for '--selector <SELECTOR>': \"app in (a\" is not a label selector (the values after \"app\" need parentheses): {selectors}")),
        cli(&["-l", "app=web,"], &format!("exit 2: error: invalid value 'app=web,' for '--selector <SELECTOR>': \"app=web,\" is not a label selector (an empty requirement): {selectors}")),
        cli(&["-l", "app=web", "pod/x"], "exit 2: error: the argument '--selector <SELECTOR>' cannot be used with '[TARGET]'"),
        cli(&["pod/x", "-n", "Bad_NS"], "exit 2: error: invalid value 'Bad_NS' for '--namespace <NAMESPACE>': \"Bad_NS\" is not a namespace name: namespaces are lowercase letters, digits and '-', at most 63, as `kubectl get namespaces` lists them"),
        cli(&["pod/x", "-o", "yaml"], "exit 2: error: invalid value 'yaml' for '--output <FORMAT>'"),
        cli(&["pod/x", "--duration", "0s"], "exit 2: error: invalid value '0s' for '--duration <DURATION>': a session needs some time: use a duration such as 30s or 5m"),
        cli(&["pod/x", "--duration", "forever"], "exit 2: error: invalid value 'forever' for '--duration <DURATION>': \"forever\" is not a duration: use a number and a unit, such as 90s, 5m or 1h"),
        cli(&["pod/x", "--duration", "48h"], "exit 2: error: invalid value '48h' for '--duration <DURATION>': \"48h\" is longer than a session may run (1h): run another session after it"),
        cli(&["pod/x", "--probe-image", ""], "exit 2: error: invalid value '' for '--probe-image <IMAGE>': \"\" is not an image reference: use REGISTRY/REPOSITORY:TAG or @sha256:DIGEST"),
        cli(&["pod/x", "--kubeconfig", "/nonexistent/config"], "exit 1: error: cannot read kubeconfig /nonexistent/config: check the path given to --kubeconfig: failed to read kubeconfig from '\"/nonexistent/config\"': No such file or directory (os error 2)"),
        // kubectl's cluster flags go before the command too; a session's own
        // flags with another command are refused, not ignored.
        cli(&["--kubeconfig", "/nonexistent/config", "cleanup", "--all"], "exit 1: error: cannot read kubeconfig /nonexistent/config: check the path given to --kubeconfig: failed to read kubeconfig from '\"/nonexistent/config\"': No such file or directory (os error 2)"),
        cli(&["-n", "shop", "demo"], "exit 2: error: --namespace belongs to a session (`kubectl apitrace TARGET ...`), not to `kubectl apitrace demo`; see `kubectl apitrace demo --help`"),
        cli(&["cleanup", "--session", "BAD!ID"], "exit 2: error: invalid value 'BAD!ID' for '--session <ID>': \"BAD!ID\" is not a session id: ids are 10 lowercase letters and digits, as `kubectl get leases -A -l apitrace.io/session` shows them"),
        cli(&["completion", "tcsh"], "exit 2: error: invalid value 'tcsh' for '<SHELL>'"),
        cli(&["demo", "--requests", "0"], "exit 2: error: invalid value '0' for '--requests <N>': the demo needs at least one request: use --requests 1 or more"),
        cli(&["demo", "--loss", "200"], "exit 2: error: invalid value '200' for '--loss <PERCENT>': \"200\" is not a loss to simulate: use a whole percentage from 1 to 90"),
        // The triggers, before any cluster, pod or file is touched.
        cli(&["pod/x", "--until", "0"], "exit 2: error: invalid value '0' for '--until <N>': a session stops after at least one call: use --until 1 or more"),
        cli(&["demo", "--until", "abc"], "exit 2: error: invalid value 'abc' for '--until <N>': \"abc\" is not a number of calls: use a whole number such as 10"),
        cli(&["pod/x", "--where", "status >= 500", "--save-all"], "exit 2: error: --save-all says what --save FILE keeps, and no --save FILE was given: pass --save FILE with it, or leave --save-all out"),
        cli(&["demo", "--save-all"], "exit 2: error: --save-all says what --save FILE keeps, and no --save FILE was given: pass --save FILE with it, or leave --save-all out"),
        // The CLI: saved sessions.
        join("missing.apitrace", "exit 1: error: cannot open {file}: No such file or directory (os error 2); pass a file written by `--save`".into()),
        join("empty.apitrace", "exit 1: error: {file} is empty: it is not a saved session; record one with `--save {file}`".into()),
        join("garbage.apitrace", "exit 1: error: {file} is not a saved apitrace session: it does not start with \"apitrace-session/v1\" (byte 0); pass a file written by `--save`".into()),
        join("truncated.apitrace", "exit 1: error: {file} is truncated at byte 2916: the entry there is incomplete (the session that wrote it may have been killed); to replay the entries before it, cut the file there: `truncate -s 2916 {file}`".into()),
        join("", "exit 1: error: cannot read {file} at byte 0: Is a directory (os error 21); pass a file written by `--save`".into()),
        (
            Bad::Cli(vec!["join".into(), file("truncated.apitrace"), "--save".into(), file("truncated.apitrace")]),
            format!("exit 1: error: --save {} is the file being replayed, which saving would overwrite: save to another file", file("truncated.apitrace")),
        ),
        // The probe's command line, as a pod spec might get it wrong.
        probe_args(&["1m", "--target", "shop/web=container:abc"], "exit 1: apitrace-probe: --target \"shop/web=container:abc\": \"abc\" is not a container ID (at least 12 hexadecimal digits)"),
        probe_args(&["1m", "--target", "nonsense"], "exit 2: error: invalid value 'nonsense' for '--target <NAMESPACE/NAME=NETNS>': \"nonsense\": expected NAMESPACE/NAME=NETNS"),
        probe_args(&["forever", "--target", "shop/web=pid:1"], "exit 2: error: invalid value 'forever' for '--deadline <DEADLINE>': \"forever\" is not a duration: use a number and a unit, such as 10m"),
        probe_args(&["1m", "--target", "shop/web=pid:1", "--lease", "noslash"], "exit 2: error: invalid value 'noslash' for '--lease <NAMESPACE/NAME>': \"noslash\" is not NAMESPACE/NAME"),
        probe_args(&["1m", "--target", "shop/web=netns:/nonexistent"], "exit 1: apitrace-probe: cannot open network namespace /nonexistent: No such file or directory (os error 2)"),
        // The probe's endpoints, from a traced pod.
        (post("garbage.apitrace", Some("test-token")), "HTTP 400".into()),
        (post("batch.pb", None), "HTTP 403".into()),
        (post("batch.pb", Some("not-the-token")), "HTTP 403".into()),
        (post("oversized.pb", Some("test-token")), "HTTP 413".into()),
        (
            grpc(ports::ACCESS_LOG, "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs", "bad-frame.grpc", None),
            "grpc-status 13: failed to decode Protobuf message: invalid wire type value: 7".into(),
        ),
        (
            grpc(ports::SUBSCRIBE, "/apitrace.v1.Probe/Subscribe", "subscribe.grpc", None),
            "grpc-status 16: a valid session token is required".into(),
        ),
        (
            grpc(ports::SUBSCRIBE, "/apitrace.v1.Probe/Subscribe", "subscribe.grpc", Some("not-the-token")),
            "grpc-status 16: a valid session token is required".into(),
        ),
        (
            grpc(ports::SUBSCRIBE, "/apitrace.v1.Probe/Subscribe", "subscribe.grpc", Some("test-token")),
            "grpc-status 7: this probe serves session test, not other".into(),
        ),
        // Tokens through the real Envoy and WASM filter.
        token(format!("{header}.!!!.{signature}"), "JWT claims are not base64url"),
        token(format!("{}.{claims}.{signature}", base64url(b"not json")), "JWT header is not a JSON object"),
        token(format!("{header}.{}.{signature}", base64url(b"[1,2]")), "JWT claims are not a JSON object"),
        token(format!("{header}.{}.{signature}", base64url(&[0xff, 0xfe, 0x7b])), "JWT claims are not a JSON object"),
        token(format!("{header}.{claims}"), "not a JWT: expected three dot-separated parts"),
        token(format!("{header}.{claims}.a.b.{signature}"), "encrypted JWT (JWE): claims are not readable"),
        token(format!("{header}.{}.{signature}", "A".repeat(17 * 1024)), "token too long to decode"),
    ]
}

/// curl's arguments to post `body` (a file in `files`) to the probe's WASM
/// ingest, with `token` if any.
fn post(files: &Path, probe: IpAddr, body: &str, token: Option<&str>) -> Vec<String> {
    let mut args = strings(&["-s", "-o", "/dev/null", "-w", "HTTP %{http_code}"]);
    args.extend([
        "--data-binary".into(),
        format!("@{}", files.join(body).display()),
    ]);
    if let Some(token) = token {
        args.extend(["-H".into(), format!("{SESSION_TOKEN_HEADER}: {token}")]);
    }
    args.push(format!("http://{probe}:{}{WASM_INGEST_PATH}", ports::HTTP));
    args
}

/// The files the rows name.
fn write_files(dir: &Path) {
    let write =
        |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).expect("a test file");
    write("empty.apitrace", b"");
    write("garbage.apitrace", b"garbage\n");
    let saved =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/default.apitrace"))
            .expect("the default fixture");
    write("truncated.apitrace", &saved[..3000]);
    let batch = WasmBatch {
        events: vec![WasmEvent {
            request_id: "good-1".into(),
            ..WasmEvent::default()
        }],
        ..WasmBatch::default()
    };
    write("batch.pb", &batch.encode_to_vec());
    write("oversized.pb", &vec![0; 9 << 20]);
    // A gRPC frame (uncompressed, 4 bytes) whose message has wire type 7.
    write("bad-frame.grpc", &[0, 0, 0, 0, 4, 0x0f, 0xff, 0xff, 0xff]);
    let subscribe = [0x0a, 5, b'o', b't', b'h', b'e', b'r'];
    let mut frame = vec![0, 0, 0, 0, subscribe.len() as u8];
    frame.extend(subscribe);
    write("subscribe.grpc", &frame);
}

fn outcome_of_process(mut command: Command) -> String {
    let output = command.output().expect("the binary runs");
    let text = stderr(&output);
    assert!(
        !text.contains("panicked") && !text.contains("RUST_BACKTRACE"),
        "{text}"
    );
    format!(
        "exit {}: {}",
        output.status.code().unwrap_or(-1),
        text.lines().next().unwrap_or_default()
    )
}

/// curl's answer: `HTTP <code>`, or the gRPC status and message from the
/// trailers (percent-decoded, as gRPC sends it).
fn outcome_of_request(client: &Pod, args: &[String]) -> String {
    let output = Command::new("ip")
        .args(["netns", "exec", &client.netns, "curl"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout);
    if text.starts_with("HTTP ") && !text.contains('\n') {
        return text.into_owned();
    }
    let header = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "grpc-status {}: {}",
        header("grpc-status:"),
        crate::fake_cluster::percent_decode(&header("grpc-message:"))
    )
}

#[test]
fn every_bad_input_gets_its_exact_error_and_breaks_nothing_else() {
    let Some(real) = real("the bad-input table") else {
        return;
    };
    let files = std::env::temp_dir().join(format!("apitrace-bad-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&files).expect("a directory for the bad files");
    write_files(&files);
    let pods = pods(&["probe", "client"]);
    let (probe_pod, client) = (pods.pod("probe"), pods.pod("client"));
    let client_ip = client.ipv4.to_string();
    let probe = Probe::start(probe_pod, client, &["--peer", &client_ip]);
    let probe_ip = IpAddr::V4(probe_pod.ipv4);
    let good = post(&files, probe_ip, "batch.pb", Some("test-token"));
    let good_batch = || outcome_of_request(client, &good);

    let rows = table(&files, probe_ip);
    assert!(rows.len() >= 30, "{} rows", rows.len());
    let mut failures = Vec::new();
    for (bad, expected) in rows {
        let (input, found) = match bad {
            Bad::Cli(args) => {
                let mut command = Command::new(&binaries().cli);
                command.args(&args);
                (
                    format!("kubectl apitrace {args:?}"),
                    outcome_of_process(command),
                )
            }
            Bad::ProbeArgs(args) => {
                let mut command = Command::new(&binaries().probe);
                command.args(&args);
                (
                    format!("apitrace-probe {args:?}"),
                    outcome_of_process(command),
                )
            }
            Bad::ProbeRequest(args) => {
                let found = outcome_of_request(client, &args);
                assert_eq!(
                    good_batch(),
                    "HTTP 204",
                    "the probe took no good batch after {args:?}"
                );
                (format!("curl {args:?}"), found)
            }
            Bad::Token(token) => {
                let (records, _) = run_demo(&real, &["--requests", "1", "--token", &token]);
                let call = records
                    .iter()
                    .find(|record| record["path"] != Value::Null && record["auth"] != Value::Null)
                    .unwrap_or_else(|| panic!("no call with credentials: {records:#?}"));
                assert!(
                    all_layers(call) && call["status"] == 200,
                    "the call was not traced whole: {call}"
                );
                let printed = serde_json::to_string(&records).expect("JSON");
                assert!(!printed.contains(&token), "the token was printed");
                let found = call["auth"]["error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                (format!("Bearer {}…", &token[..token.len().min(40)]), found)
            }
        };
        if found != expected {
            failures.push(format!(
                "{input}\n  expected: {expected}\n  found:    {found}"
            ));
        }
    }
    assert!(probe.get("/healthz").is_some(), "the probe still serves");
    let metrics = probe.metrics();
    let metric = |name: &str| metrics.get(name).copied();
    assert_eq!(
        (
            metric("apitrace_probe_dropped_total{source=\"wasm\",reason=\"malformed\"}"),
            metric("apitrace_probe_refused_total{source=\"wasm\"}"),
            metric("apitrace_probe_dropped_total{source=\"als\",reason=\"malformed\"}"),
            metric("apitrace_probe_events_total{source=\"wasm\"}"),
        ),
        // Two malformed batches (garbage, and one over the size limit), two
        // refused, one malformed access-log frame, and the good batch after
        // each of the eight requests.
        (Some(2), Some(2), Some(1), Some(8)),
        "{metrics:#?}"
    );
    drop(probe);

    let _ = std::fs::remove_dir_all(&files);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
