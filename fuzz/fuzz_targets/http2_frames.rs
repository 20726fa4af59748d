//! The h2c frame reader, on what a peer can send: the fuzzer's bytes after
//! the client's preface, split into both sides' packets. It must never panic
//! or read past what was captured, and never name a stream it did not read.
#![no_main]

use apitrace_probe::http2::{Frames, header_between};
use apitrace_proto::TcEvent;
use apitrace_tc_event::{EventKind, TcEvent as RawEvent, TcEventHeader};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Some((&shape, rest)) = bytes.split_first() else {
        return;
    };
    // The low bits pick the packet size, the high ones how much is captured.
    let size = usize::from(shape & 0x3f) + 1;
    let captured = size.saturating_sub(usize::from(shape >> 6) * 4).max(1);
    let (client, server) = rest.split_at(rest.len() / 2);
    let client = [PREFACE, client].concat();
    let endpoint = |n: u8| {
        (
            [10, 0, 0, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            40000 + u16::from(n),
        )
    };
    let header = |side: usize, kind: EventKind, seq: u32, len: usize| {
        header_between([endpoint(1), endpoint(2)], side, kind, seq, len)
    };
    let mut frames = Frames::default();
    let mut feed = |header: TcEventHeader, head: &[u8]| {
        let raw = RawEvent { header, head };
        let published = frames.on_record(&raw, TcEvent::default());
        assert!(published.lost <= 2);
        published.events
    };
    feed(header(0, EventKind::Open, 0, 0), &[]);
    feed(header(1, EventKind::Accept, 0, 0), &[]);
    let mut next = [1u32, 1u32];
    let mut pieces = [client.chunks(size), server.chunks(size)];
    let mut side = 0;
    loop {
        let Some(piece) = pieces[side]
            .next()
            .or_else(|| pieces[side ^ 1].next().inspect(|_| side ^= 1))
        else {
            break;
        };
        let seq = next[side];
        next[side] = seq.wrapping_add(piece.len() as u32);
        let head = &piece[..piece.len().min(captured)];
        for event in feed(header(side, EventKind::Message, seq, piece.len()), head) {
            assert!(event.http2_stream == 0 || event.http.is_some());
        }
        side ^= usize::from(piece.first().is_some_and(|byte| byte & 1 == 1));
    }
});
