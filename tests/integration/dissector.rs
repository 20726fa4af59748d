//! The wire parts of the demo's records, checked call by call against what a
//! dissector no one here wrote (Wireshark's tshark) reads from tcpdump's
//! captures of the same traffic (`demo --pcap`).
//!
//! For every leg a record gives: at `request` scope the packet must be in
//! the capture of that pod's interface, with that tuple, IP id and TCP
//! sequence, and it must be the start of that call's HTTP request (its
//! method and path, and its `x-request-id` where it carries one); at
//! `connection` scope the tuple's SYN must carry that IP id and sequence,
//! and the connection must be TLS where the record says so. Each verdict is
//! counted: correct, connection-level, absent, wrong; wrong must be 0.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::support::{assert_nothing_left, real, stderr};

/// One packet as tshark dissects it.
#[derive(Debug)]
struct Packet {
    ip_id: u32,
    src: (String, u64),
    dst: (String, u64),
    seq: u64,
    syn_only: bool,
    payload: u64,
    method: String,
    uri: String,
    request_id: String,
    tls: bool,
}

/// Every TCP packet of `pcap`, as tshark reads it: sequence numbers raw,
/// each segment on its own, HTTP on the outbound capture port too; with
/// `tls`, the app port read as TLS (where the sidecars speak mTLS).
fn dissect(pcap: &Path, tls: bool) -> Vec<Packet> {
    let fields = [
        "ip.id",
        "ip.src",
        "ipv6.src",
        "tcp.srcport",
        "ip.dst",
        "ipv6.dst",
        "tcp.dstport",
        "tcp.seq_raw",
        "tcp.flags.syn",
        "tcp.flags.ack",
        "tcp.len",
        "http.request.method",
        "http.request.uri",
        "http.request.line",
        "tls.record.content_type",
    ];
    let mut command = Command::new("tshark");
    command
        .arg("-r")
        .arg(pcap)
        .args(["-n", "-o", "tcp.desegment_tcp_streams:FALSE"])
        .args(["-o", "tcp.relative_sequence_numbers:FALSE"])
        .args(["-d", "tcp.port==15001,http", "-T", "fields"])
        .args(if tls {
            &["-d", "tcp.port==8080,tls"][..]
        } else {
            &[]
        })
        .args([
            "-E",
            "separator=\t",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=|",
        ]);
    for field in fields {
        command.args(["-e", field]);
    }
    let output = command.output().expect(
        "tshark runs: the dissector tests need Wireshark's tshark (`cargo xtask setup` installs it)",
    );
    assert!(
        output.status.success(),
        "tshark failed on {}: {}",
        pcap.display(),
        stderr(&output)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let field = |i: usize| f.get(i).copied().unwrap_or_default();
            let number = |text: &str| -> u64 {
                let text = text.split('|').next().unwrap_or_default();
                match text.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16).unwrap_or(0),
                    None => text.parse().unwrap_or(0),
                }
            };
            let address = |v4: &str, v6: &str| if v4.is_empty() { v6 } else { v4 }.to_owned();
            let request_id = field(13)
                .split('|')
                .find_map(|header| {
                    let (name, value) = header.split_once(':')?;
                    name.eq_ignore_ascii_case("x-request-id")
                        .then(|| value.trim().trim_end_matches("\\r\\n").trim().to_owned())
                })
                .unwrap_or_default();
            Packet {
                ip_id: number(field(0)) as u32,
                src: (address(field(1), field(2)), number(field(3))),
                dst: (address(field(4), field(5)), number(field(6))),
                seq: number(field(7)),
                syn_only: matches!(field(8), "1" | "True") && !matches!(field(9), "1" | "True"),
                payload: number(field(10)),
                method: field(11).to_owned(),
                uri: field(12).to_owned(),
                request_id,
                tls: !field(14).is_empty(),
            }
        })
        .collect()
}

/// What the check made of one leg.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Verdict {
    Correct,
    ConnectionLevel,
    Absent,
    Wrong,
}

struct Check {
    /// Each pod's captures, by `<pod>-<interface>`, read as HTTP on the app
    /// port and, apart, as TLS.
    captures: BTreeMap<String, Vec<Packet>>,
    as_tls: BTreeMap<String, Vec<Packet>>,
    /// Verdicts by leg, with what was wrong.
    counts: BTreeMap<(&'static str, Verdict), u32>,
    wrong: Vec<String>,
}

impl Check {
    fn new(dir: &Path) -> Self {
        let (mut captures, mut as_tls) = (BTreeMap::new(), BTreeMap::new());
        for pod in ["client", "server"] {
            for interface in ["eth0", "lo"] {
                let name = format!("{pod}-{interface}");
                let pcap = dir.join(format!("{name}.pcap"));
                assert!(pcap.is_file(), "the demo wrote {}", pcap.display());
                captures.insert(name.clone(), dissect(&pcap, false));
                as_tls.insert(name, dissect(&pcap, true));
            }
        }
        Self {
            captures,
            as_tls,
            counts: BTreeMap::new(),
            wrong: Vec::new(),
        }
    }

    /// Checks the wire part `wire` of `record` that `pod` saw, as leg `leg`.
    fn leg(&mut self, leg: &'static str, pod: &str, record: &Value, wire: &Value) {
        let verdict = self.verdict(pod, record, wire);
        if let Err(why) = &verdict {
            self.wrong.push(format!(
                "{leg} of {}: {why}\n{wire:#}",
                record["request_id"]
            ));
        }
        *self
            .counts
            .entry((leg, verdict.unwrap_or(Verdict::Wrong)))
            .or_default() += 1;
    }

    fn verdict(&self, pod: &str, record: &Value, wire: &Value) -> Result<Verdict, String> {
        if wire.is_null() {
            return Ok(Verdict::Absent);
        }
        let interface = wire["interface"].as_str().unwrap_or_default();
        let packets = &self.captures[&format!("{pod}-{interface}")];
        let endpoint = |end: &Value| {
            (
                end["ip"].as_str().unwrap_or_default().to_owned(),
                end["port"].as_u64().unwrap_or_default(),
            )
        };
        let (src, dst) = (endpoint(&wire["src"]), endpoint(&wire["dst"]));
        let on_tuple = || packets.iter().filter(|p| p.src == src && p.dst == dst);
        match wire["scope"].as_str() {
            Some("request") => {
                let seq = wire["tcp_seq"].as_u64().ok_or("no tcp_seq")?;
                let packet = on_tuple()
                    .find(|p| p.seq == seq && p.payload > 0)
                    .ok_or_else(|| {
                        format!("no payload packet {src:?} -> {dst:?} with seq {seq}")
                    })?;
                let expected_id = wire["ip_id"].as_u64().ok_or("no ip_id")? as u32;
                if packet.ip_id != expected_id {
                    return Err(format!("the packet's IP id is {}", packet.ip_id));
                }
                if packet.method != record["method"].as_str().unwrap_or_default()
                    || packet.uri != record["path"].as_str().unwrap_or_default()
                {
                    return Err(format!(
                        "the packet starts {} {}, not the call's request",
                        packet.method, packet.uri
                    ));
                }
                let id = wire["request_id"].as_str().unwrap_or_default();
                if !packet.request_id.is_empty() && packet.request_id != record["request_id"] {
                    return Err(format!("the packet is request {}", packet.request_id));
                }
                if !id.is_empty() && id != packet.request_id {
                    return Err(format!("the packet carries id {:?}", packet.request_id));
                }
                Ok(Verdict::Correct)
            }
            Some("connection") => {
                if let Some(seq) = wire["tcp_seq"].as_u64() {
                    let syn = on_tuple()
                        .find(|p| p.syn_only)
                        .ok_or_else(|| format!("no SYN {src:?} -> {dst:?}"))?;
                    let ip_id = wire["ip_id"].as_u64().unwrap_or_default() as u32;
                    if (syn.seq, syn.ip_id) != (seq, ip_id) {
                        return Err(format!("the SYN is seq {} IP id {}", syn.seq, syn.ip_id));
                    }
                }
                let tls = self.as_tls[&format!("{pod}-{interface}")]
                    .iter()
                    .any(|p| p.src == src && p.dst == dst && p.tls);
                if wire["tls"].as_bool().unwrap_or(false) != tls {
                    return Err(format!("tshark says the connection is TLS: {tls}"));
                }
                Ok(Verdict::ConnectionLevel)
            }
            other => Err(format!("scope {other:?}")),
        }
    }
}

/// Runs the demo with `args`, capturing, and checks every record's wire
/// parts; returns the verdicts by leg (none when the test cannot run here).
fn check_demo(
    name: &str,
    args: &[&str],
    requests: usize,
) -> BTreeMap<(&'static str, Verdict), u32> {
    let Some(real) = real(name) else {
        return BTreeMap::new();
    };
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "apitrace-dissector-{}-{}",
        std::process::id(),
        name.replace(' ', "-")
    ));
    let child = crate::demo::demo(&real.envoy)
        .args(["-o", "json", "--requests", &requests.to_string(), "--pcap"])
        .arg(&dir)
        .args(args)
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
    assert_nothing_left(pid);
    let records: Vec<Value> = serde_json::from_slice(&output.stdout).expect("a JSON array");
    assert_eq!(
        records.len(),
        requests,
        "one record per call:\n{}",
        stderr(&output)
    );

    let mut check = Check::new(&dir);
    for record in &records {
        let hops = record["hops"].as_array().expect("hops");
        let hop = |direction: &str| {
            hops.iter()
                .find(|hop| hop["direction"] == direction)
                .unwrap_or_else(|| panic!("an {direction} hop: {record:#}"))
        };
        let (outbound, inbound) = (hop("outbound"), hop("inbound"));
        check.leg(
            "client lo: app to sidecar",
            "client",
            record,
            &outbound["downstream"],
        );
        check.leg(
            "client eth0: sidecar to sidecar",
            "client",
            record,
            &outbound["upstream"],
        );
        check.leg(
            "server eth0: sidecar to sidecar",
            "server",
            record,
            &inbound["downstream"],
        );
        check.leg(
            "server lo: sidecar to app",
            "server",
            record,
            &inbound["upstream"],
        );
        check.leg(
            "tc: the called pod's interface",
            "server",
            record,
            &record["tc"],
        );
    }
    std::fs::remove_dir_all(&dir).expect("the captures are removed");
    eprintln!(
        "{name}: {requests} calls, {} records; against tshark:",
        records.len()
    );
    for ((leg, verdict), count) in &check.counts {
        eprintln!("  {leg:<36} {verdict:?}: {count}");
    }
    assert!(
        check.wrong.is_empty(),
        "{} wire parts are wrong:\n{}",
        check.wrong.len(),
        check.wrong.join("\n")
    );
    let absent: u32 = check
        .counts
        .iter()
        .filter(|((_, verdict), _)| *verdict == Verdict::Absent)
        .map(|(_, count)| count)
        .sum();
    assert_eq!(
        absent, 0,
        "every leg of every call was on the wire: {:?}",
        check.counts
    );
    let mut ids: Vec<&str> = records
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), requests, "exactly one record per call");
    check.counts
}

/// That every leg the check saw was named at the connection's level: what
/// the wire must say of an HTTP/2 connection, whose streams' frames
/// interleave, whether it is inside TLS or not.
fn all_connection_level(counts: &BTreeMap<(&'static str, Verdict), u32>) {
    assert!(
        counts
            .keys()
            .all(|(_, verdict)| *verdict == Verdict::ConnectionLevel),
        "an HTTP/2 leg at request scope: {counts:?}"
    );
}

/// Over mTLS, one connection per call: the lo hops are the calls' own
/// packets, the sidecar-to-sidecar connection is named at its level.
#[test]
fn mtls_calls_match_the_dissector_on_every_leg() {
    check_demo("the mTLS dissector check", &[], 6);
}

/// gRPC over mTLS, unary and server-streaming calls on pooled HTTP/2
/// connections: every leg, the plaintext h2c ones on `lo` too, is the
/// connection, whose SYN tshark confirms.
#[test]
fn grpc_calls_match_the_dissector_on_every_leg() {
    let counts = check_demo("the gRPC dissector check", &["--protocol", "grpc"], 5);
    all_connection_level(&counts);
}

/// h2c in plaintext between the sidecars as well, all calls on one
/// connection from the app: still the connection on every leg.
#[test]
fn h2c_calls_match_the_dissector_on_every_leg() {
    let counts = check_demo(
        "the h2c dissector check",
        &["--protocol", "h2c", "--plaintext", "--keep-alive"],
        6,
    );
    all_connection_level(&counts);
}

/// HTTP/1.1, h2c and gRPC calls in turn to one HTTP/2 port: the HTTP/1.1
/// calls' own first packets on the client's `lo` are theirs, the rest the
/// connections'.
#[test]
fn mixed_calls_match_the_dissector_on_every_leg() {
    let counts = check_demo("the mixed dissector check", &["--protocol", "mixed"], 6);
    if !counts.is_empty() {
        assert_eq!(
            counts.get(&("client lo: app to sidecar", Verdict::Correct)),
            Some(&2),
            "the two HTTP/1.1 calls at request scope: {counts:?}"
        );
    }
}

/// Every call on one keep-alive connection: each gets its own request on
/// `lo`, never another's.
#[test]
fn keep_alive_calls_match_the_dissector_on_every_leg() {
    check_demo("the keep-alive dissector check", &["--keep-alive"], 6);
}

/// Plaintext between the sidecars, over IPv6: every leg is request level.
#[test]
fn plaintext_ipv6_calls_match_the_dissector_on_every_leg() {
    check_demo(
        "the plaintext IPv6 dissector check",
        &["--plaintext", "--ipv6"],
        6,
    );
}
