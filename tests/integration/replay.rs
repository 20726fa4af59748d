//! `kubectl apitrace join FILE`: the golden sessions recorded from the real
//! demo (`cargo xtask fixtures`) replay to what the demo printed, in every
//! output format; bad files and bad pipes end cleanly.

use std::{
    fs,
    io::Read as _,
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;

use crate::support::{binaries, stderr};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(format!("{name}.apitrace"))
}

fn join(file: &Path, args: &[&str]) -> Output {
    Command::new(&binaries().cli)
        .arg("join")
        .arg(file)
        .args(args)
        .output()
        .expect("the CLI runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn records(name: &str) -> Vec<Value> {
    let output = join(&fixture(name), &["-o", "ndjson"]);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON object per line"))
        .collect()
}

#[test]
fn every_golden_session_replays_to_what_the_demo_printed() {
    let mut replayed = 0;
    for entry in fs::read_dir(fixtures()).expect("tests/fixtures") {
        let path = entry.expect("a directory entry").path();
        if path
            .extension()
            .is_none_or(|extension| extension != "apitrace")
        {
            continue;
        }
        let printed = fs::read_to_string(path.with_extension("ndjson"))
            .expect("each saved session has the demo's output next to it");
        let output = join(&path, &["-o", "ndjson"]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(
            stdout(&output),
            printed,
            "{} replays differently from how the demo printed it",
            path.display()
        );
        replayed += 1;
    }
    assert_eq!(
        replayed, 8,
        "the eight sessions `cargo xtask fixtures` records"
    );
}

/// What each golden session is there for, so that a re-recorded fixture that
/// lost its point fails here rather than passing as a new golden.
#[test]
fn the_golden_sessions_show_what_they_were_recorded_for() {
    let complete = |record: &Value| record["layers"] == serde_json::json!(["als", "wasm", "tc"]);

    let default = records("default");
    assert_eq!(default.len(), 5);
    assert!(default.iter().all(complete));
    // Through both sidecars over mTLS: two hops, the caller's identity, the
    // sidecars' connection named at its level.
    assert!(
        default
            .iter()
            .all(|r| r["hops"].as_array().unwrap().len() == 2)
    );
    assert!(
        default
            .iter()
            .all(|r| r["src"]["identity"] == "spiffe://cluster.local/ns/demo/sa/client")
    );
    assert!(default.iter().all(|r| r["tc"]["scope"] == "connection"));

    let ipv6 = records("ipv6");
    assert!(ipv6.iter().all(complete));
    assert!(
        ipv6.iter()
            .all(|r| r["src"]["ip"].as_str().unwrap().contains(':'))
    );
    assert!(ipv6.iter().all(|r| r["tc"]["ip_id"] == 0));

    let lossy = records("keep-alive-loss");
    assert_eq!(lossy.len(), 20);
    assert!(lossy.iter().all(complete));
    // One connection from the app: every request joined to its own first
    // packet on the client's `lo`.
    let app = |r: &Value| r["hops"][0]["downstream"].clone();
    let first = app(&lossy[0])["src"]["port"].clone();
    assert!(lossy.iter().all(|r| app(r)["src"]["port"] == first));
    let mut sequences: Vec<u64> = lossy
        .iter()
        .map(|r| app(r)["tcp_seq"].as_u64().unwrap())
        .collect();
    sequences.dedup();
    assert_eq!(sequences.len(), 20, "a distinct TCP sequence per request");
    assert!(
        lossy
            .iter()
            .any(|r| r["tc"]["retransmits"].as_u64().unwrap() > 0),
        "the loss made retransmissions"
    );

    let bad = records("bad-traffic");
    let (complete_calls, partial): (Vec<&Value>, Vec<&Value>) =
        bad.iter().partition(|r| complete(r));
    assert_eq!(complete_calls.len(), 3, "the three good requests");
    assert!(!partial.is_empty(), "the bad traffic's own records");

    let plaintext = records("plaintext");
    assert!(plaintext.iter().all(complete));
    assert!(
        plaintext
            .iter()
            .flat_map(|r| r["hops"].as_array().unwrap().clone())
            .all(|hop| hop["downstream"]["scope"] == "request"
                && hop["upstream"]["scope"] == "request"),
        "without mTLS every leg is the call's own"
    );

    let outside = records("outside-mesh");
    assert!(outside.iter().all(complete));
    assert!(
        outside
            .iter()
            .all(|r| r["hops"].as_array().unwrap().len() == 1)
    );
    assert!(outside.iter().all(|r| r["tc"]["scope"] == "request"));

    // HTTP/2: inside mTLS the wire names each leg's connection; in
    // plaintext (h2c), a leg whose stream carries the call's id is that
    // stream's, with its own packet, and no two calls share a stream.
    let leg_scopes = |records: &[Value], direction: &str| -> Vec<(String, String)> {
        records
            .iter()
            .flat_map(|r| r["hops"].as_array().unwrap().clone())
            .filter(|hop| hop["direction"] == direction)
            .map(|hop| {
                let scope = |leg: &str| hop[leg]["scope"].as_str().unwrap().to_owned();
                (scope("downstream"), scope("upstream"))
            })
            .collect()
    };
    let own_streams = |records: &[Value], direction: &str, leg: &str| {
        let mut seen: Vec<(u64, u64, u64)> = records
            .iter()
            .flat_map(|r| r["hops"].as_array().unwrap().clone())
            .filter(|hop| hop["direction"] == direction)
            .map(|hop| {
                let wire = &hop[leg];
                assert_eq!(wire["scope"], "request", "{wire}");
                let field = |name: &str| {
                    wire[name]
                        .as_u64()
                        .unwrap_or_else(|| panic!("{name} in {wire}"))
                };
                (
                    field("tcp_seq"),
                    field("stream_id"),
                    wire["src"]["port"].as_u64().unwrap(),
                )
            })
            .collect();
        let calls = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), calls, "each call on a stream of its own");
    };
    let grpc = records("grpc");
    assert_eq!(grpc.len(), 5);
    assert!(grpc.iter().all(complete));
    assert!(
        grpc.iter()
            .all(|r| r["protocol"] == "HTTP/2" && r["status"] == 200)
    );
    let statuses: Vec<&str> = grpc
        .iter()
        .map(|r| r["grpc"]["status_name"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["OK", "OK", "NOT_FOUND", "UNAVAILABLE", "OK"]);
    let streamed = &grpc[3]["grpc"];
    assert_eq!(streamed["method"], "ListOrders");
    assert_eq!(streamed["response_messages"], 2);
    assert_eq!(streamed["message"], "region eu is down");
    let connection = || ("connection".to_owned(), "connection".to_owned());
    assert!(
        leg_scopes(&grpc, "outbound")
            .iter()
            .all(|scopes| *scopes == connection())
    );
    assert!(
        leg_scopes(&grpc, "inbound")
            .iter()
            .all(|(downstream, _)| downstream == "connection")
    );
    own_streams(&grpc, "inbound", "upstream");

    let h2c = records("h2c");
    assert_eq!(h2c.len(), 5);
    assert!(h2c.iter().all(complete));
    assert!(
        h2c.iter()
            .all(|r| r["protocol"] == "HTTP/2" && r.get("grpc").is_none())
    );
    assert!(
        h2c.iter().all(|r| r["src"].get("identity").is_none()),
        "plaintext"
    );
    assert!(
        leg_scopes(&h2c, "outbound")
            .iter()
            .all(|(downstream, _)| downstream == "connection"),
        "the app's own h2c carries no request id"
    );
    own_streams(&h2c, "outbound", "upstream");
    own_streams(&h2c, "inbound", "downstream");
    own_streams(&h2c, "inbound", "upstream");
}

#[test]
fn every_output_format_prints_a_saved_session() {
    let file = fixture("default");

    let table = join(&file, &[]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(text.starts_with("TIME "), "{text}");
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(!text.contains('\u{1b}'), "no colours into a pipe: {text:?}");

    let wide = stdout(&join(&file, &["-o", "wide"]));
    assert!(wide.lines().next().unwrap().contains("RETX/RST"), "{wide}");

    let json: Value = serde_json::from_str(&stdout(&join(&file, &["-o", "json"]))).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(5));
    assert_eq!(json.as_array().unwrap(), &records("default"));

    let har: Value = serde_json::from_str(&stdout(&join(&file, &["-o", "har"]))).unwrap();
    let schema: Value = serde_json::from_str(include_str!(
        "../../kubectl-apitrace/src/output/har-1.2.schema.json"
    ))
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&har).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(har["log"]["entries"].as_array().map(Vec::len), Some(5));

    let followed = stdout(&join(&file, &["-o", "ndjson", "--follow"]));
    let mut lines: Vec<&str> = followed.lines().collect();
    lines.sort_unstable();
    let held = stdout(&join(&file, &["-o", "ndjson"]));
    let mut expected: Vec<&str> = held.lines().collect();
    expected.sort_unstable();
    assert_eq!(
        lines, expected,
        "the same records, in the order they were joined"
    );

    let summary = stderr(&table);
    assert!(
        summary.contains("5 joined with every layer") && summary.contains("dropped: none"),
        "{summary}"
    );
}

/// Bad files end with one line that names the file and the byte, and says
/// what to do; never a panic.
#[test]
fn bad_saved_sessions_name_the_file_and_the_byte() {
    let dir = std::env::temp_dir().join(format!("apitrace-replay-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let good = fs::read(fixture("default")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        path
    };
    // The header and one entry whose length byte says 3 more than there are.
    let mut short_entry = good[..20].to_vec();
    short_entry.extend([0x05, 0x08, 0x01]);
    // A length that runs past the end of the file.
    let mut corrupt = good[..20].to_vec();
    corrupt.extend([0x04, 0xff, 0xff, 0xff, 0xff]);
    let cases = [
        (
            dir.join("missing.apitrace"),
            "cannot open {file}: No such file or directory".to_owned(),
        ),
        (write("empty.apitrace", b""), "{file} is empty".to_owned()),
        (
            fixtures().join("default.ndjson"),
            "{file} is not a saved apitrace session".to_owned(),
        ),
        (
            write("truncated.apitrace", &good[..good.len() - 7]),
            "is truncated at byte".to_owned(),
        ),
        (
            write("short.apitrace", &short_entry),
            "{file} is truncated at byte 20".to_owned(),
        ),
        (
            write("corrupt.apitrace", &corrupt),
            "{file} is corrupt at byte 20".to_owned(),
        ),
    ];
    for (file, expected) in cases {
        let output = join(&file, &[]);
        let message = stderr(&output);
        let expected = expected.replace("{file}", &file.display().to_string());
        assert_eq!(output.status.code(), Some(1), "{message}");
        assert!(message.starts_with("error: "), "{message}");
        assert!(message.contains(&expected), "{expected:?} in {message}");
        assert!(!message.contains("panicked") && !message.contains("backtrace"));
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(output.stdout.is_empty());
    }
    // Followed, the calls joined before the bad entry are printed first.
    let truncated = dir.join("truncated.apitrace");
    let output = join(&truncated, &["-o", "ndjson", "--follow"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stdout(&output).lines().count() >= 4, "{}", stdout(&output));
    // The message's remedy works: cut there, and the rest replays.
    let message = stderr(&join(&truncated, &[]));
    let offset: usize = message
        .split("truncated at byte ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .expect("a byte offset");
    fs::write(&truncated, &good[..offset]).unwrap();
    let output = join(&truncated, &["-o", "ndjson"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).lines().count() >= 4);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_output_arguments_say_what_to_use() {
    let file = fixture("default");
    let output = join(&file, &["-o", "yaml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("[possible values: table, wide, json, ndjson, har, summary]"),
        "{}",
        stderr(&output)
    );
    let output = join(&file, &["-o", "har", "--follow"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("use -o ndjson, table or wide with --follow"),
        "{}",
        stderr(&output)
    );
}

/// `kubectl apitrace join FILE | head -1`: the reader goes away, the CLI ends
/// quietly with status 0.
#[test]
fn a_closed_pipe_ends_quietly() {
    for format in ["table", "ndjson", "json", "har"] {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let output = Command::new(&binaries().cli)
            .arg("join")
            .arg(fixture("keep-alive-loss"))
            .args(["-o", format])
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("the CLI runs");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{format}: {}",
            stderr(&output)
        );
        assert_eq!(stderr(&output), "", "{format}");
    }
}

/// What the CLI prints on a terminal `columns` wide, with `env` set.
fn on_a_terminal(columns: u16, env: &[(&str, &str)]) -> String {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 50,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: the out-pointers are valid; no name buffer or termios is passed.
    let status = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(status, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two open descriptors that nothing else owns.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut command = Command::new(&binaries().cli);
    command
        .arg("join")
        .arg(fixture("default"))
        .stdout(slave)
        .stderr(Stdio::null())
        .env_remove("NO_COLOR")
        .env_remove("COLUMNS")
        .env("TERM", "xterm");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the CLI starts");
    // The slave's last copy went with the command: reading ends when the CLI does.
    drop(command);
    let mut text = Vec::new();
    let mut master = fs::File::from(master);
    let mut buffer = [0u8; 4096];
    loop {
        match master.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.extend_from_slice(&buffer[..n]),
        }
    }
    assert!(child.wait().expect("the CLI ends").success());
    String::from_utf8(text).expect("UTF-8 output")
}

#[test]
fn on_a_terminal_the_table_is_coloured_and_fits() {
    let coloured = on_a_terminal(400, &[]);
    assert!(coloured.contains("\u{1b}[32m200"), "{coloured:?}");
    assert!(!coloured.contains('…'), "400 columns hold every cell");

    let plain = on_a_terminal(400, &[("NO_COLOR", "1")]);
    assert!(!plain.contains('\u{1b}'), "NO_COLOR: {plain:?}");

    let narrow = on_a_terminal(210, &[]);
    for line in narrow.lines() {
        let visible: String = strip_escapes(line);
        assert!(visible.trim_end().chars().count() <= 210, "{visible}");
    }
    assert!(narrow.contains('…'), "{narrow}");
}

fn strip_escapes(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `--where` on a replay prints exactly the demo's calls it selects, as the
/// demo printed them, and the summary counts them; a mistyped field is
/// refused before anything is read, naming the fields there are.
#[test]
fn where_prints_the_calls_it_selects_and_refuses_an_unknown_field() {
    let printed =
        fs::read_to_string(fixture("default").with_extension("ndjson")).expect("the golden output");
    let selected: Vec<&str> = printed
        .lines()
        .filter(|line| {
            let record: Value = serde_json::from_str(line).expect("a JSON object per line");
            record["status"] == 404
                || record["path"]
                    .as_str()
                    .is_some_and(|path| path.starts_with("/api/orders"))
        })
        .collect();
    assert!(
        !selected.is_empty() && selected.len() < printed.lines().count(),
        "the fixture has calls on both sides of the expression"
    );
    let output = join(
        &fixture("default"),
        &[
            "-o",
            "ndjson",
            "--where",
            r#"status == 404 || path ~ "/api/orders*""#,
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().collect::<Vec<_>>(), selected);
    let summary = stderr(&output);
    assert!(
        summary.contains(&format!("{} calls; ", printed.lines().count()))
            && summary.contains(&format!(
                "; {} matched --where and were printed",
                selected.len()
            )),
        "{summary}"
    );

    let refused = join(&fixture("default"), &["--where", "stauts >= 500"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused)
            .contains("at character 1: no field `stauts`; the fields are status, method"),
        "{}",
        stderr(&refused)
    );
}

/// A failing gRPC call is an HTTP 200: `--where` on its gRPC status finds
/// exactly the golden gRPC session's calls that did not end OK.
#[test]
fn where_finds_the_grpc_calls_that_failed() {
    let printed =
        fs::read_to_string(fixture("grpc").with_extension("ndjson")).expect("the golden output");
    let failed: Vec<&str> = printed
        .lines()
        .filter(|line| {
            let record: Value = serde_json::from_str(line).expect("a JSON object per line");
            record["grpc"]["status_name"]
                .as_str()
                .is_some_and(|status| status != "OK")
        })
        .collect();
    assert!(
        !failed.is_empty(),
        "the golden gRPC session has failed calls"
    );
    let output = join(
        &fixture("grpc"),
        &[
            "-o",
            "ndjson",
            "--where",
            r#"grpc.status != "OK" && status == 200"#,
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().collect::<Vec<_>>(), failed);
}

/// A temporary file for a test's saved output, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        Self(std::env::temp_dir().join(format!("apitrace-{test}-{}.apitrace", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The golden session's printed lines that `keep` selects.
fn golden_lines(name: &str, keep: impl Fn(&Value) -> bool) -> Vec<String> {
    fs::read_to_string(fixture(name).with_extension("ndjson"))
        .expect("the golden output")
        .lines()
        .filter(|line| keep(&serde_json::from_str(line).expect("a JSON object per line")))
        .map(str::to_owned)
        .collect()
}

/// `--until N` on a replay stops after the first N selected calls: exactly
/// those are printed, and the summary says where it stopped.
#[test]
fn until_stops_a_replay_after_n_selected_calls() {
    let orders = golden_lines("keep-alive-loss", |record| record["status"] == 200);
    assert!(
        orders.len() > 3,
        "the fixture has more than 3 calls to select"
    );
    let output = join(
        &fixture("keep-alive-loss"),
        &["-o", "ndjson", "--where", "status == 200", "--until", "3"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().collect::<Vec<_>>(), orders[..3]);
    let said = stderr(&output);
    assert!(
        said.contains("matched --where, the first 3 printed (--until 3)"),
        "{said}"
    );
    // Without --where, the first N calls.
    let output = join(
        &fixture("keep-alive-loss"),
        &["-o", "ndjson", "--until", "2"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 2, "{}", stdout(&output));
}

/// `--save` with `--where` keeps only the selected calls (a file of calls,
/// much smaller than the inputs), which replays to exactly those calls as
/// the session printed them, with how many calls the session saw; `--where`
/// and `--until` apply to it again. `--save-all` keeps every input.
#[test]
fn save_with_where_keeps_only_the_selected_calls_and_save_all_keeps_everything() {
    let selected = golden_lines("default", |record| record["status"] == 404);
    let every = golden_lines("default", |_| true);
    // The default session's 404s saved to `to`, with `extra` flags.
    let save_404 = |to: &Scratch, extra: &[&str]| {
        let mut args = vec!["-o", "ndjson", "--where", "status == 404", "--save"];
        args.push(to.0.to_str().expect("a UTF-8 path"));
        args.extend(extra);
        let output = join(&fixture("default"), &args);
        assert!(output.status.success(), "{}", stderr(&output));
    };
    let calls = Scratch::new("calls");
    save_404(&calls, &[]);
    let bytes = fs::read(&calls.0).expect("the saved calls");
    assert!(bytes.starts_with(b"apitrace-session/v2\n"));
    let inputs = fs::metadata(fixture("default")).expect("the fixture").len();
    assert!(
        (bytes.len() as u64) < inputs / 4,
        "{} bytes of calls against {inputs} of inputs",
        bytes.len()
    );
    let replayed = join(&calls.0, &["-o", "ndjson"]);
    assert!(replayed.status.success(), "{}", stderr(&replayed));
    assert_eq!(stdout(&replayed).lines().collect::<Vec<_>>(), selected);
    let said = stderr(&replayed);
    assert!(
        said.starts_with(&format!("{} calls seen\n", every.len())),
        "the file says how many calls the session saw: {said}"
    );
    // The probe's counters came along with the calls.
    assert!(said.contains("The probe received "), "{said}");
    let none = join(&calls.0, &["-o", "ndjson", "--where", "status == 200"]);
    assert!(none.status.success(), "{}", stderr(&none));
    assert_eq!(stdout(&none), "");
    // Saved again, a file of calls stays one, and keeps the count of its
    // own session.
    let again = Scratch::new("again");
    let output = join(
        &calls.0,
        &[
            "-o",
            "ndjson",
            "--save",
            again.0.to_str().expect("a UTF-8 path"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let replayed = join(&again.0, &["-o", "ndjson"]);
    assert_eq!(stdout(&replayed).lines().collect::<Vec<_>>(), selected);
    assert!(
        stderr(&replayed).starts_with(&format!("{} calls seen\n", every.len())),
        "{}",
        stderr(&replayed)
    );

    let all = Scratch::new("all");
    save_404(&all, &["--save-all"]);
    assert!(
        fs::read(&all.0)
            .expect("the saved inputs")
            .starts_with(b"apitrace-session/v1\n")
    );
    let replayed = join(&all.0, &["-o", "ndjson"]);
    assert!(replayed.status.success(), "{}", stderr(&replayed));
    assert_eq!(stdout(&replayed).lines().collect::<Vec<_>>(), every);
}

/// `-o summary`: only the summary on stdout, one row per route (the path's
/// ids as `{id}`) and per caller -> callee, and the calls seen.
#[test]
fn output_summary_prints_the_routes_and_pairs_and_no_call() {
    let output = join(&fixture("default"), &["-o", "summary"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "5 calls seen", "{text}");
    let row = |start: &str| {
        lines
            .iter()
            .find(|line| line.starts_with(start))
            .unwrap_or_else(|| panic!("no row {start:?} in\n{text}"))
            .split("   ")
            .map(str::trim)
            .filter(|cell| !cell.is_empty())
            .collect::<Vec<_>>()
    };
    assert_eq!(row("GET /api/orders/{id}")[1..3], ["1", "0"], "{text}");
    assert_eq!(row("GET /missing")[1..3], ["1", "1: 404×1"], "{text}");
    assert_eq!(
        row("demo/client -> demo/server")[1..3],
        ["5", "1: 404×1"],
        "{text}"
    );
    assert!(!text.contains("request_id"), "{text}");
    // stderr has the paragraph only, not the tables a second time.
    assert!(!stderr(&output).contains("ROUTE"), "{}", stderr(&output));
}
