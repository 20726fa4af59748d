//! The join's speed and memory, on one core.
//!
//! The stream is what a busy inbound sidecar produces: per call, the request
//! and response starts on the pod's `eth0` and on `lo` (the sidecar's request
//! to the app, with its `x-request-id`), the WASM filter's event and the
//! access-log entry; the TC events arrive first, the WASM events 100 ms later
//! (the filter batches them), the access logs a second later (Envoy flushes
//! them every second), over 64 keep-alive connections, and one call in a
//! hundred never gets its access log (its window closes); the client's and
//! the pod's identities come first. At 20,000 calls a second, that keeps
//! about 20,000 calls open at any time.
//!
//! Criterion measures the join and, next to it, a floor: grouping the same
//! events by their key (the request id, or the connection for a wire event)
//! and dropping each group once complete, which any streaming join must at
//! least do. Both are given their events in small batches, cloned just before
//! each is timed, as the CLI decodes them; the join takes each batch whole, as
//! the CLI hands it what arrived together (`Joiner::apply_all`, which reads
//! ahead in it). The summary after it prints both, from one run, as a ratio;
//! then the same with every event cloned first; then the peak memory (VmHWM)
//! of a separate process that streams 10 million events: flat from the first
//! million on means the window bounds it.

use std::{
    collections::VecDeque,
    hint::black_box,
    time::{Duration, Instant},
};

use apitrace_join::{
    CallRecord, Input, JoinConfig, Joiner, Workload, WorkloadKind,
    fixtures::{InboundCall, pod},
};
use apitrace_proto::{Event, event::Kind};
use criterion::{Criterion, Throughput};
use rustc_hash::FxHashMap;

const CALLS_PER_SECOND: u64 = 20_000;
const PERIOD_NS: i64 = 1_000_000_000 / CALLS_PER_SECOND as i64;
const CONNECTIONS: u64 = 64;
/// How many calls later than its TC events a call's WASM event and access
/// log arrive.
const WASM_LAG_CALLS: u64 = CALLS_PER_SECOND / 10;
const ALS_LAG_CALLS: u64 = CALLS_PER_SECOND;
const MISSING_ALS_EVERY: u64 = 100;
const EVENTS_PER_CALL: u64 = 6;
const T0: i64 = 1_795_000_000_000_000_000;

/// Events per criterion iteration: 100,000 calls.
const ITERATION_EVENTS: u64 = 100_000 * EVENTS_PER_CALL;
/// The memory run's length, and where its peak is read.
const STREAM_EVENTS: u64 = 10_000_000;
const CHECKPOINTS: [u64; 4] = [1_000_000, 2_000_000, 5_000_000, 10_000_000];
const STREAM_ENV: &str = "APITRACE_JOIN_BENCH_STREAM";

fn request_id(call: u64) -> String {
    format!("{:08x}-0000-4000-8000-{call:012x}", call >> 16)
}

/// When call `call` started on the wire: a window's worth of TC latency
/// before its TC events arrive.
fn started(call: u64) -> i64 {
    T0 + call as i64 * PERIOD_NS - 20_000_000
}

/// Call `call`: from a web pod over one of 64 keep-alive connections into the
/// orders pod, and on over the sidecar's pooled connection of the same number
/// to the app.
fn inbound_call(call: u64) -> InboundCall<'static> {
    let connection = (call % CONNECTIONS) as u32;
    InboundCall {
        pod: pod("shop", "orders-7f9c"),
        request_id: request_id(call),
        client: ("10.1.0.7", 40_000 + connection),
        server: ("10.0.0.10", 8080),
        sidecar: ("127.0.0.6", 50_000 + connection),
        app: ("10.0.0.10", 8080),
    }
}

/// The four TC events of a call: request and response starts on `eth0` and
/// on `lo`.
fn tc_events(call: u64) -> [Event; 4] {
    let start = started(call);
    let inbound = inbound_call(call);
    [
        inbound.request(start, start as u32),
        inbound.app_request(start + 150_000),
        inbound.app_response(start + 600_000),
        inbound.response(start + 900_000),
    ]
}

fn wasm_event(call: u64) -> Event {
    inbound_call(call).wasm(started(call) + 120_000)
}

fn access_log(call: u64) -> Event {
    inbound_call(call).access_log(started(call) + 100_000)
}

/// The stream: at each call's turn, its TC events, an earlier call's WASM
/// event and a still earlier one's access log, all arriving "now".
struct Stream {
    call: u64,
    events_left: u64,
    ready: VecDeque<Input>,
}

impl Stream {
    fn new(events: u64) -> Self {
        // Who the two addresses are, as the CLI tells the join first: each
        // record names its peers.
        let ready: VecDeque<Input> = [("10.1.0.7", "web-5d4f"), ("10.0.0.10", "orders-7f9c")]
            .into_iter()
            .map(|(ip, name)| Input::Identity {
                ip: ip.parse().expect("a literal address"),
                since_ns: 0,
                workload: Workload {
                    namespace: "shop".into(),
                    name: name.into(),
                    kind: WorkloadKind::Pod,
                    traced: name.starts_with("orders"),
                },
            })
            .collect();
        Self {
            call: 0,
            events_left: events + ready.len() as u64,
            ready,
        }
    }

    fn refill(&mut self) {
        let call = self.call;
        self.call += 1;
        let now_ns = T0 + call as i64 * PERIOD_NS;
        let mut push = |event| self.ready.push_back(Input::Event { event, now_ns });
        for event in tc_events(call) {
            push(event);
        }
        if let Some(earlier) = call.checked_sub(WASM_LAG_CALLS) {
            push(wasm_event(earlier));
        }
        if let Some(earlier) = call.checked_sub(ALS_LAG_CALLS)
            && earlier % MISSING_ALS_EVERY != 0
        {
            push(access_log(earlier));
        }
    }
}

impl Iterator for Stream {
    type Item = Input;

    fn next(&mut self) -> Option<Input> {
        if self.events_left == 0 {
            return None;
        }
        while self.ready.is_empty() {
            self.refill();
        }
        self.events_left -= 1;
        self.ready.pop_front()
    }
}

/// Events handed to the join at a time, each batch cloned just before it is
/// timed. The CLI decodes each event just before the join sees it, so the
/// event is in the cache; 600,000 events cloned at once (336 MB) would make
/// each one a read from memory, which the summary shows apart.
const BATCH_EVENTS: usize = 256;

/// The time `consume` takes over `inputs`, given them in batches of `batch`
/// events, each cloned just before it is timed.
fn timed_in_batches(
    inputs: &[Input],
    batch: usize,
    mut consume: impl FnMut(Vec<Input>),
) -> Duration {
    let mut spent = Duration::ZERO;
    for chunk in inputs.chunks(batch) {
        let chunk = chunk.to_vec();
        let started = Instant::now();
        consume(chunk);
        spent += started.elapsed();
    }
    spent
}

/// Where the bench's records go: each is dropped as it comes, as the CLI
/// prints each as it comes.
struct Dropped;

impl Extend<CallRecord> for Dropped {
    fn extend<I: IntoIterator<Item = CallRecord>>(&mut self, records: I) {
        records
            .into_iter()
            .for_each(|record| drop(black_box(record)));
    }
}

/// The time the join takes over `inputs`, and over the end of them.
fn join(inputs: &[Input], batch: usize) -> Duration {
    let mut joiner = Joiner::new(JoinConfig::default());
    let mut apply = |chunk: Vec<Input>| joiner.apply_all(chunk, &mut Dropped);
    timed_in_batches(inputs, batch, &mut apply) + timed_in_batches(&[Input::End], 1, apply)
}

#[derive(Hash, PartialEq, Eq)]
enum Key {
    Id(String),
    Connection(String, u32),
}

/// The time the floor takes over `inputs`: each event grouped by its key,
/// each group dropped once it has its parts (two on the wire, four with the
/// request id).
fn group_by_key(inputs: &[Input], batch: usize) -> Duration {
    let mut groups: FxHashMap<Key, u8> = FxHashMap::default();
    let mut complete = 0_usize;
    let spent = timed_in_batches(inputs, batch, |chunk| {
        for input in chunk {
            let Input::Event { event, .. } = input else {
                continue;
            };
            let (key, parts) = match event.kind {
                Some(Kind::AccessLog(log)) => (Key::Id(log.request_id), 4),
                Some(Kind::Wasm(wasm)) => (Key::Id(wasm.request_id), 4),
                Some(Kind::Tc(tc)) => match tc.http.filter(|head| !head.request_id.is_empty()) {
                    Some(head) => (Key::Id(head.request_id), 4),
                    None => {
                        let client = if tc.dst.as_ref().is_some_and(|dst| dst.port == 8080) {
                            tc.src
                        } else {
                            tc.dst
                        };
                        let client = client.unwrap_or_default();
                        (Key::Connection(client.ip, client.port), 2)
                    }
                },
                _ => continue,
            };
            match groups.get_mut(&key) {
                Some(seen) if *seen + 1 == parts => {
                    groups.remove(&key);
                    complete += 1;
                }
                Some(seen) => *seen += 1,
                None => {
                    groups.insert(key, 1);
                }
            }
        }
    });
    black_box(complete);
    spent
}

fn benches(c: &mut Criterion) {
    let inputs: Vec<Input> = Stream::new(ITERATION_EVENTS).collect();
    let mut group = c.benchmark_group("join");
    group.throughput(Throughput::Elements(ITERATION_EVENTS));
    group.sample_size(10);
    group.bench_function("apitrace", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| join(&inputs, BATCH_EVENTS)).sum());
    });
    group.bench_function("group-by-key floor", |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| group_by_key(&inputs, BATCH_EVENTS))
                .sum()
        });
    });
    group.finish();
}

/// Events per second of `run` over the iteration's inputs given in batches of
/// `batch`: the median of five.
fn events_per_second(inputs: &[Input], batch: usize, run: fn(&[Input], usize) -> Duration) -> f64 {
    let mut rates: Vec<f64> = (0..5)
        .map(|_| inputs.len() as f64 / run(inputs, batch).as_secs_f64())
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[2]
}

/// The kernel's peak resident set of this process, in KiB.
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The memory run, in its own process so that nothing else raised its peak:
/// streams the events, printing `events peak_kib elapsed_ns` at each checkpoint.
fn stream_and_report() {
    let mut joiner = Joiner::new(JoinConfig::default());
    let started = Instant::now();
    let mut checkpoints = CHECKPOINTS.iter().peekable();
    for (i, input) in Stream::new(STREAM_EVENTS).enumerate() {
        joiner.apply(input, &mut Dropped);
        let done = i as u64 + 1;
        if checkpoints.peek() == Some(&&done) {
            checkpoints.next();
            println!("{done} {} {}", peak_kib(), started.elapsed().as_nanos());
        }
    }
    joiner.apply(Input::End, &mut Dropped);
}

/// Prints the join's and the floor's throughput, given their inputs in
/// batches of `batch`.
fn print_throughput(inputs: &[Input], batch: usize) {
    let ours = events_per_second(inputs, batch, join);
    let floor = events_per_second(inputs, batch, group_by_key);
    println!("  {:<22} {:>14} {:>10}", "", "events/s", "ratio");
    println!(
        "  {:<22} {:>14.0} {:>10.2}",
        "apitrace join",
        ours,
        ours / floor
    );
    println!(
        "  {:<22} {:>14.0} {:>10.2}",
        "group-by-key floor", floor, 1.0
    );
    println!(
        "  target: 2,000,000 events/s; apitrace join is {:.2}x it",
        ours / 2e6
    );
}

fn summary() {
    let inputs: Vec<Input> = Stream::new(ITERATION_EVENTS).collect();
    println!(
        "\njoin throughput, one core, {ITERATION_EVENTS} events ({EVENTS_PER_CALL} per call), \
         each batch of {BATCH_EVENTS} cloned just before it is joined, as the CLI decodes them:"
    );
    print_throughput(&inputs, BATCH_EVENTS);
    println!(
        "\nthe same, with all {ITERATION_EVENTS} events cloned first (each read from memory):"
    );
    print_throughput(&inputs, inputs.len());

    let exe = std::env::current_exe().expect("the bench knows its path");
    let output = std::process::Command::new(exe)
        .env(STREAM_ENV, "1")
        .output()
        .expect("the memory run starts");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("\npeak memory (VmHWM) streaming {STREAM_EVENTS} events through the join:");
    println!(
        "  {:>12} {:>12} {:>16}",
        "events", "VmHWM MiB", "events/s so far"
    );
    let mut peaks = Vec::new();
    for line in report.lines() {
        let fields: Vec<u64> = line.split(' ').filter_map(|f| f.parse().ok()).collect();
        let [events, kib, nanos] = fields[..] else {
            continue;
        };
        peaks.push(kib);
        let rate = events as f64 / Duration::from_nanos(nanos).as_secs_f64();
        println!("  {events:>12} {:>12.1} {rate:>16.0}", kib as f64 / 1024.0);
    }
    if let (Some(first), Some(last)) = (peaks.first(), peaks.last()) {
        println!(
            "  growth from the first checkpoint to the last: {:.2}x",
            *last as f64 / *first as f64
        );
    } else {
        println!(
            "  the memory run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The allocator the CLI runs the join with: what it costs there is what is
/// measured (the floor runs on it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if std::env::var_os(STREAM_ENV).is_some() {
        stream_and_report();
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    // `cargo test --benches` runs the bench once as a test: no summary then.
    if std::env::args().any(|arg| arg == "--bench") {
        summary();
    }
}
