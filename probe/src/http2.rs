//! Follows the frames of h2c connections (HTTP/2 with prior knowledge, in
//! plaintext), so that each stream's request and response get their own first
//! packet on the wire.
//!
//! On a connection that began with the HTTP/2 preface the TC program emits
//! every packet of new bytes, from both sides, with its first 16 KiB
//! (`FlowState::framed`). This module reads those packets in TCP sequence
//! order, as an HTTP/2 endpoint reads its byte stream (RFC 9113 section 4):
//! frame headers, and the header blocks of HEADERS, CONTINUATION and
//! PUSH_PROMISE frames, decoded with HPACK (RFC 7541) so that each side's
//! dynamic table stays as the peer's decoder has it. What it publishes
//! instead of the packets is one message start per stream and side: the
//! packet that carried the start of the stream's first HEADERS frame, with
//! the stream id, and for a request its method, path, authority and
//! `x-request-id`, for a response its status. The join then gives a call the
//! stream whose request carries its id, and that stream's response.
//!
//! # Never wrong
//!
//! A side's frames can be followed only from the connection's first byte,
//! and only while every byte that holds a frame header or a header block was
//! captured, in order. A gap in the sequence (a lost ring-buffer record, a
//! retransmission that carried new bytes), a frame header or header block
//! past the captured 16 KiB, or a block HPACK cannot decode, and that side is
//! *lost*: nothing more is read from it, since the offsets of its later
//! frames and its dynamic table are unknown. Its packets are published as the
//! program's message starts were before (when the sender changes), so the
//! join names the connection only (`scope: connection`). Each lost side is
//! counted (`tc_http2_unfollowed`).
//!
//! Connections are found by the client's end (address and port), which a
//! REDIRECT to the sidecar's outbound port leaves as it is in both
//! directions; each pod's ring has its own [`Frames`], so the interface index
//! and the client's end name one connection.

use std::collections::{HashMap, VecDeque};

use apitrace_proto::{
    HttpHead, PayloadKind, RequestLine, StatusLine, TcEvent, http_head::StartLine,
};
use apitrace_tc_event::{EventKind, FAMILY_IPV4, TcEvent as RawEvent, TcEventHeader, seq_before};

/// What a client sends first on an HTTP/2 connection (RFC 9113 section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A frame header: length (24 bits), type, flags, stream id (RFC 9113 section 4.1).
const FRAME_HEADER: usize = 9;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// The largest header block read: Envoy refuses request headers over 60 KiB
/// by default (`max_request_headers_kb`), so a bigger block is not a call's.
const MAX_BLOCK: usize = 64 * 1024;

/// Connections followed at once, per pod; a connection past them is not
/// followed (and counted). When the table is full, connections idle for
/// [`IDLE_NS`] are forgotten first: their FIN may have been lost.
const MAX_CONNECTIONS: usize = 4096;
const IDLE_NS: u64 = 300_000_000_000;

/// Streams whose request was seen and whose response was not, per
/// connection: far above what a sidecar keeps open on one connection. The
/// oldest is forgotten past it (its response is then not named).
const MAX_AWAITING: usize = 1024;

/// Payload packets a server may send before the client's first one, kept
/// until it comes (an HTTP/2 server's SETTINGS can precede the preface).
const MAX_EARLY: usize = 2;

/// One end of a connection: address bytes (IPv4 in the first four) and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct End {
    ifindex: u32,
    addr: [u8; 16],
    port: u16,
}

/// What is published for one record.
#[derive(Debug, Default, PartialEq)]
pub struct Published {
    /// The events to publish in place of the record: the record itself, or,
    /// on a followed connection, the message starts it completed.
    pub events: Vec<TcEvent>,
    /// Sides of followed connections that became lost with this record.
    pub lost: u64,
}

/// The h2c connections of one pod, and those that may become one.
#[derive(Default)]
pub struct Frames {
    /// Connections whose SYN was seen and whose client has not sent yet.
    opening: HashMap<End, Opening>,
    followed: HashMap<End, Connection>,
}

/// A connection between its SYN and its client's first payload.
#[derive(Default)]
struct Opening {
    /// The sequence number of each side's first byte: one past its SYN's.
    client_start: Option<u32>,
    server_start: Option<u32>,
    /// What the server sent first: (sequence, length, captured bytes).
    early: Vec<(u32, u32, Vec<u8>, TcEvent)>,
}

struct Connection {
    /// Index 0 is the client's side, 1 the server's.
    sides: [Side; 2],
    /// Streams with a request and no response yet, oldest first.
    awaiting: VecDeque<u32>,
    /// The highest stream the client opened.
    last_stream: u32,
    /// Which side sent the last payload, for publishing a lost side's
    /// packets as message starts.
    last_sender: Option<usize>,
    /// Which sides sent their FIN: with both, the connection is over.
    closed: [bool; 2],
    /// The kernel's time of its last packet.
    last_ns: u64,
}

struct Side {
    /// The sequence number of the next byte; `None` for a side that is lost.
    next_seq: Option<u32>,
    /// Preface bytes still to pass.
    skip: usize,
    /// A frame header cut by the end of a packet, and the packet it began in.
    partial_header: Vec<u8>,
    partial_from: Option<TcEvent>,
    frame: Option<Frame>,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
}

/// A frame being read.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    /// Payload bytes still to come.
    left: usize,
    /// Its payload, for a frame that carries a header block.
    payload: Option<Vec<u8>>,
    /// The packet its header began in.
    began_in: TcEvent,
}

/// A header block waiting for its CONTINUATION frames.
struct Block {
    /// The stream its HEADERS frame is on, or 0 for a PUSH_PROMISE's (decoded
    /// for the dynamic table only).
    stream: u32,
    bytes: Vec<u8>,
    began_in: TcEvent,
}

/// What a decoded header block says.
#[derive(Default)]
struct Fields {
    method: String,
    path: String,
    authority: String,
    request_id: String,
    status: Option<u32>,
}

impl Frames {
    /// What to publish for `raw`, decoded as `event`.
    pub fn on_record(&mut self, raw: &RawEvent<'_>, event: TcEvent) -> Published {
        let header = &raw.header;
        let src = End {
            ifindex: header.ifindex,
            addr: header.src_addr,
            port: header.src_port,
        };
        let dst = End {
            ifindex: header.ifindex,
            addr: header.dst_addr,
            port: header.dst_port,
        };
        let mut published = Published::default();
        match raw.kind() {
            Some(EventKind::Open) => {
                self.followed.remove(&src);
                if self.opening.len() < MAX_CONNECTIONS {
                    self.opening.insert(
                        src,
                        Opening {
                            client_start: Some(header.seq.wrapping_add(1)),
                            ..Opening::default()
                        },
                    );
                }
                published.events.push(event);
            }
            Some(EventKind::Accept) => {
                if let Some(opening) = self.opening.get_mut(&dst) {
                    opening.server_start = Some(header.seq.wrapping_add(1));
                }
                published.events.push(event);
            }
            Some(EventKind::Reset) => {
                for end in [src, dst] {
                    self.opening.remove(&end);
                    self.followed.remove(&end);
                }
                published.events.push(event);
            }
            Some(EventKind::Close) => {
                self.opening.remove(&src);
                self.opening.remove(&dst);
                for (client, side) in [(src, 0), (dst, 1)] {
                    if let Some(connection) = self.followed.get_mut(&client) {
                        connection.closed[side] = true;
                        if connection.closed == [true; 2] {
                            self.followed.remove(&client);
                        }
                    }
                }
                published.events.push(event);
            }
            Some(EventKind::Message) => {
                self.on_message(raw, src, dst, event, &mut published);
            }
            _ => published.events.push(event),
        }
        published
    }

    fn on_message(
        &mut self,
        raw: &RawEvent<'_>,
        src: End,
        dst: End,
        event: TcEvent,
        published: &mut Published,
    ) {
        let (seq, len, now) = (
            raw.header.seq,
            raw.header.payload_len,
            raw.header.monotonic_ns,
        );
        for (client, side) in [(src, 0), (dst, 1)] {
            if let Some(connection) = self.followed.get_mut(&client) {
                connection.last_ns = now;
                connection.read(side, seq, len, raw.head, event, published);
                return;
            }
        }
        // The server of an opening connection speaking first.
        if let Some(opening) = self.opening.get_mut(&dst) {
            if opening.early.len() < MAX_EARLY {
                opening
                    .early
                    .push((seq, len, raw.head.to_vec(), event.clone()));
            } else {
                opening.server_start = None;
            }
            published.events.push(event);
            return;
        }
        let opening = self.opening.remove(&src);
        // The preface, or as much of it as the packet holds (the program
        // marks a connection framed by its first four bytes).
        let preface = raw.head.len().min(PREFACE.len());
        if preface < 4 || raw.head[..preface] != PREFACE[..preface] {
            published.events.push(event);
            return;
        }
        if self.followed.len() >= MAX_CONNECTIONS {
            self.followed
                .retain(|_, connection| now.saturating_sub(connection.last_ns) < IDLE_NS);
        }
        if self.followed.len() >= MAX_CONNECTIONS {
            published.lost += 2;
            published.events.push(event);
            return;
        }
        let opening = opening.unwrap_or_default();
        // The preface opens the client's stream: a preface elsewhere than at
        // its first byte is not one this module can follow.
        let client_start = opening.client_start.unwrap_or(seq);
        let mut connection = Connection {
            sides: [
                Side::new((client_start == seq).then_some(seq), PREFACE.len()),
                Side::new(opening.server_start, 0),
            ],
            awaiting: VecDeque::new(),
            last_stream: 0,
            last_sender: None,
            closed: [false; 2],
            last_ns: now,
        };
        for (seq, len, head, early) in opening.early {
            let mut replayed = Published::default();
            connection.read(1, seq, len, &head, early, &mut replayed);
            // Published already, as it came.
            published.lost += replayed.lost;
        }
        for side in &connection.sides {
            if side.next_seq.is_none() {
                published.lost += 1;
            }
        }
        connection.read(0, seq, len, raw.head, event, published);
        self.followed.insert(src, connection);
    }
}

impl Side {
    fn new(start: Option<u32>, skip: usize) -> Self {
        Self {
            next_seq: start,
            skip,
            partial_header: Vec::new(),
            partial_from: None,
            frame: None,
            block: None,
            decoder: loona_hpack::Decoder::new(),
        }
    }

    fn lose(&mut self) -> u64 {
        let was_followed = self.next_seq.is_some();
        self.next_seq = None;
        self.frame = None;
        self.block = None;
        self.partial_header.clear();
        self.partial_from = None;
        u64::from(was_followed)
    }

    /// Walks the frames in one packet of `len` bytes, `head` of them
    /// captured, collecting the streams whose header block it completed.
    /// `Err` when something that had to be read was not captured or does not
    /// decode.
    fn walk(
        &mut self,
        len: usize,
        head: &[u8],
        event: &TcEvent,
        starts: &mut Vec<Start>,
    ) -> Result<(), ()> {
        let captured = head.len().min(len);
        let mut at = 0;
        while at < len {
            if self.skip > 0 {
                let n = self.skip.min(len - at);
                self.skip -= n;
                at += n;
                continue;
            }
            if let Some(frame) = &mut self.frame {
                let n = frame.left.min(len - at);
                if let Some(payload) = &mut frame.payload {
                    payload.extend_from_slice(head.get(at..at + n).ok_or(())?);
                }
                frame.left -= n;
                at += n;
                if frame.left == 0
                    && let Some(frame) = self.frame.take()
                {
                    self.end_frame(frame, starts)?;
                }
                continue;
            }
            // A frame header, maybe the rest of one the last packet cut.
            if at >= captured {
                return Err(());
            }
            if self.partial_header.is_empty() {
                self.partial_from = Some(event.clone());
            }
            let n = (FRAME_HEADER - self.partial_header.len()).min(captured - at);
            self.partial_header.extend_from_slice(&head[at..at + n]);
            at += n;
            if self.partial_header.len() < FRAME_HEADER {
                // Cut by the packet's end it continues in the next one; cut by
                // the capture, it is lost.
                return if at == len { Ok(()) } else { Err(()) };
            }
            let bytes = std::mem::take(&mut self.partial_header);
            let began_in = self.partial_from.take().unwrap_or_else(|| event.clone());
            let length =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let kind = bytes[3];
            let carries_block = matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION);
            if carries_block && length > MAX_BLOCK {
                return Err(());
            }
            let frame = Frame {
                kind,
                flags: bytes[4],
                stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
                left: length,
                payload: carries_block.then(|| Vec::with_capacity(length)),
                began_in,
            };
            if length == 0 {
                self.end_frame(frame, starts)?;
            } else {
                self.frame = Some(frame);
            }
        }
        Ok(())
    }

    /// A whole frame: a header block's piece is added to its block, and a
    /// block that ends is decoded.
    fn end_frame(&mut self, frame: Frame, starts: &mut Vec<Start>) -> Result<(), ()> {
        let Some(payload) = frame.payload else {
            return Ok(());
        };
        let fragment = match frame.kind {
            HEADERS | PUSH_PROMISE => {
                if self.block.is_some() {
                    // A new block before the last one ended: not HTTP/2.
                    return Err(());
                }
                let mut fragment = &payload[..];
                if frame.flags & PADDED != 0 {
                    let (&pad, rest) = fragment.split_first().ok_or(())?;
                    fragment = rest
                        .get(..rest.len().checked_sub(usize::from(pad)).ok_or(())?)
                        .ok_or(())?;
                }
                if frame.kind == PUSH_PROMISE {
                    fragment = fragment.get(4..).ok_or(())?;
                } else if frame.flags & PRIORITY != 0 {
                    fragment = fragment.get(5..).ok_or(())?;
                }
                self.block = Some(Block {
                    stream: if frame.kind == HEADERS {
                        frame.stream
                    } else {
                        0
                    },
                    bytes: Vec::new(),
                    began_in: frame.began_in,
                });
                fragment.to_vec()
            }
            _ => {
                let open = self.block.as_ref().ok_or(())?;
                if open.stream != 0 && open.stream != frame.stream {
                    return Err(());
                }
                payload
            }
        };
        let block = self.block.as_mut().ok_or(())?;
        if block.bytes.len() + fragment.len() > MAX_BLOCK {
            return Err(());
        }
        block.bytes.extend_from_slice(&fragment);
        if frame.flags & END_HEADERS == 0 {
            return Ok(());
        }
        let block = self.block.take().ok_or(())?;
        let fields = self.decode(&block.bytes)?;
        if block.stream != 0 {
            starts.push(Start {
                stream: block.stream,
                fields,
                began_in: block.began_in,
            });
        }
        Ok(())
    }

    fn decode(&mut self, block: &[u8]) -> Result<Fields, ()> {
        let mut fields = Fields::default();
        self.decoder
            .decode_with_cb(block, |name, value| {
                let text = || String::from_utf8_lossy(&value).into_owned();
                match &name[..] {
                    b":method" => fields.method = text(),
                    b":path" => fields.path = text(),
                    b":authority" => fields.authority = text(),
                    b":status" => fields.status = text().parse().ok(),
                    b"x-request-id" => fields.request_id = text(),
                    _ => {}
                }
            })
            .map_err(|_| ())?;
        Ok(fields)
    }
}

/// A stream's first HEADERS frame on one side, decoded.
struct Start {
    stream: u32,
    fields: Fields,
    began_in: TcEvent,
}

impl Connection {
    /// Reads one packet of `side`: `len` payload bytes at `seq`, of which
    /// `head` was captured.
    fn read(
        &mut self,
        side: usize,
        seq: u32,
        len: u32,
        head: &[u8],
        event: TcEvent,
        published: &mut Published,
    ) {
        let sender_changed = self.last_sender != Some(side);
        self.last_sender = Some(side);
        let this = &mut self.sides[side];
        match this.next_seq {
            Some(next) if next == seq => {
                this.next_seq = Some(seq.wrapping_add(len));
            }
            // Bytes read already, sent again: nothing new.
            Some(next) if seq_before(seq, next) && !seq_before(next, seq.wrapping_add(len)) => {
                return;
            }
            Some(_) => published.lost += this.lose(),
            None => {}
        }
        if this.next_seq.is_none() {
            if sender_changed {
                published.events.push(event);
            }
            return;
        }
        let mut starts = Vec::new();
        if let Err(()) = this.walk(len as usize, head, &event, &mut starts) {
            published.lost += this.lose();
            if sender_changed {
                published.events.push(event);
            }
            return;
        }
        for start in starts {
            self.publish(side, start, published);
        }
    }

    /// A header block's start is a message start if it opens a stream
    /// (the client's) or answers one (the server's); a later block on the
    /// stream is its trailers.
    fn publish(&mut self, side: usize, start: Start, published: &mut Published) {
        let Start {
            stream,
            fields,
            mut began_in,
        } = start;
        let head = if side == 0 {
            if stream <= self.last_stream {
                return;
            }
            self.last_stream = stream;
            if self.awaiting.len() == MAX_AWAITING {
                self.awaiting.pop_front();
            }
            self.awaiting.push_back(stream);
            HttpHead {
                start_line: (!fields.method.is_empty()).then(|| {
                    StartLine::Request(RequestLine {
                        method: fields.method,
                        path: fields.path,
                        version: "HTTP/2".to_owned(),
                    })
                }),
                request_id: fields.request_id,
                authority: fields.authority,
            }
        } else {
            let Some(at) = self.awaiting.iter().position(|&open| open == stream) else {
                return;
            };
            self.awaiting.remove(at);
            HttpHead {
                start_line: fields.status.map(|status| {
                    StartLine::Response(StatusLine {
                        version: "HTTP/2".to_owned(),
                        status,
                    })
                }),
                ..HttpHead::default()
            }
        };
        began_in.http = Some(head);
        began_in.payload = PayloadKind::Http2 as i32;
        began_in.http2_stream = stream;
        published.events.push(began_in);
    }
}

/// The header the TC program writes for a packet of `len` payload bytes at
/// `seq`, sent by side `sender` (0 the client, 1 the server) of a
/// connection between `ends`: for the tests and the fuzz target, which feed
/// [`Frames`] the records of made-up connections.
#[doc(hidden)]
pub fn header_between(
    ends: [([u8; 16], u16); 2],
    sender: usize,
    kind: EventKind,
    seq: u32,
    len: usize,
) -> TcEventHeader {
    let ((src_addr, src_port), (dst_addr, dst_port)) = (ends[sender & 1], ends[(sender & 1) ^ 1]);
    TcEventHeader {
        ifindex: 2,
        kind: kind as u8,
        family: FAMILY_IPV4,
        seq,
        payload_len: len as u32,
        src_addr,
        src_port,
        dst_addr,
        dst_port,
        ..TcEventHeader::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

    use super::*;

    const CLIENT: ([u8; 16], u16) = ([10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 40000);
    const SERVER: ([u8; 16], u16) = ([10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8080);
    const CLIENT_ISN: u32 = 1_000;
    /// Close to the end of sequence space: the server's bytes wrap.
    const SERVER_ISN: u32 = u32::MAX - 300;

    /// What the two sides wrote, (side, bytes), in the order the tap read it.
    type Writes = Arc<Mutex<Vec<(usize, Vec<u8>)>>>;

    /// Forwards what one side writes to the other, noting each read as a
    /// packet of `side`.
    async fn tap(
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
        side: usize,
        writes: Writes,
    ) {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            writes.lock().unwrap().push((side, buffer[..n].to_vec()));
            if to.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    }

    fn path(index: usize) -> String {
        if index % 3 == 2 {
            format!("/missing/{index}")
        } else {
            format!("/api/items/{index}?page={index}")
        }
    }

    /// `requests` concurrent GETs from the h2 crate's client to its server,
    /// each with an `x-request-id` and a path of its own, on one connection;
    /// the server answers `/missing/*` with 404 and the rest with 200, the
    /// last request first. Returns the packets each side sent.
    async fn exchange(requests: usize) -> Vec<(usize, Vec<u8>)> {
        let writes: Writes = Arc::default();
        let (client_io, client_peer) = tokio::io::duplex(1 << 20);
        let (server_io, server_peer) = tokio::io::duplex(1 << 20);
        let (from_client, to_client) = tokio::io::split(client_peer);
        let (from_server, to_server) = tokio::io::split(server_peer);
        tokio::spawn(tap(from_client, to_server, 0, Arc::clone(&writes)));
        tokio::spawn(tap(from_server, to_client, 1, Arc::clone(&writes)));
        let server = tokio::spawn(async move {
            let mut connection = h2::server::handshake(server_io).await.unwrap();
            let mut pending = Vec::new();
            while pending.len() < requests {
                let (request, respond) = connection.accept().await.unwrap().unwrap();
                pending.push((request.uri().path().to_owned(), respond));
            }
            let driver =
                tokio::spawn(async move { while let Some(Ok(_)) = connection.accept().await {} });
            for (path, mut respond) in pending.into_iter().rev() {
                let status = if path.starts_with("/missing/") {
                    404
                } else {
                    200
                };
                let response = http::Response::builder().status(status).body(()).unwrap();
                respond.send_response(response, true).unwrap();
            }
            driver.abort_handle()
        });
        let (client, connection) = h2::client::handshake(client_io).await.unwrap();
        let driver = tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let mut responses = Vec::new();
        for index in 0..requests {
            let request = http::Request::get(format!("http://orders.shop.svc:8080{}", path(index)))
                .header("x-request-id", format!("0d5c-{index:04}-request"))
                .header("user-agent", "grpc-go/1.71")
                .body(())
                .unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            responses.push(response);
            client = client.ready().await.unwrap();
        }
        for response in responses {
            response.await.unwrap();
        }
        drop(client);
        server.await.unwrap().abort();
        driver.abort();
        // Let the taps forward what is left.
        tokio::task::yield_now().await;
        writes.lock().unwrap().clone()
    }

    /// The records the TC program would emit for `packets`: SYN, SYN+ACK,
    /// then each packet of new bytes, each side's sequence numbers counting
    /// on; `captured` bytes of each.
    fn records(packets: &[(usize, Vec<u8>)], captured: usize) -> Vec<(TcEventHeader, Vec<u8>)> {
        let header = |side: usize, kind: EventKind, seq: u32, len: usize| {
            header_between([CLIENT, SERVER], side, kind, seq, len)
        };
        let mut next = [CLIENT_ISN.wrapping_add(1), SERVER_ISN.wrapping_add(1)];
        let mut records = vec![
            (header(0, EventKind::Open, CLIENT_ISN, 0), Vec::new()),
            (header(1, EventKind::Accept, SERVER_ISN, 0), Vec::new()),
        ];
        for (side, bytes) in packets {
            let seq = next[*side];
            next[*side] = seq.wrapping_add(bytes.len() as u32);
            let head = bytes[..bytes.len().min(captured)].to_vec();
            records.push((header(*side, EventKind::Message, seq, bytes.len()), head));
        }
        records
    }

    /// Feeds `records` through a [`Frames`], each event named by its
    /// sequence number.
    fn follow(records: &[(TcEventHeader, Vec<u8>)]) -> (Vec<TcEvent>, u64) {
        let mut frames = Frames::default();
        let (mut events, mut lost) = (Vec::new(), 0);
        for (header, head) in records {
            let raw = RawEvent {
                header: *header,
                head,
            };
            let event = TcEvent {
                tcp_seq: header.seq,
                kind: i32::from(header.kind),
                ..TcEvent::default()
            };
            let published = frames.on_record(&raw, event);
            events.extend(published.events);
            lost += published.lost;
        }
        (events, lost)
    }

    /// Which packet (by sequence number) holds the start of the `n`th
    /// HEADERS frame of `side`, read from the frames independently of
    /// [`Frames`]: (stream, sequence).
    fn headers_frames(packets: &[(usize, Vec<u8>)], side: usize) -> Vec<(u32, u32)> {
        let start = if side == 0 { CLIENT_ISN } else { SERVER_ISN }.wrapping_add(1);
        let stream: Vec<u8> = packets
            .iter()
            .filter(|(s, _)| *s == side)
            .flat_map(|(_, bytes)| bytes.clone())
            .collect();
        let mut packet_starts = Vec::new();
        let mut offset = 0usize;
        for (_, bytes) in packets.iter().filter(|(s, _)| *s == side) {
            packet_starts.push(offset);
            offset += bytes.len();
        }
        let mut at = if side == 0 { PREFACE.len() } else { 0 };
        let mut found = Vec::new();
        while at + FRAME_HEADER <= stream.len() {
            let length = usize::from(stream[at]) << 16
                | usize::from(stream[at + 1]) << 8
                | usize::from(stream[at + 2]);
            if stream[at + 3] == HEADERS {
                let id =
                    u32::from_be_bytes(stream[at + 5..at + 9].try_into().unwrap()) & 0x7fff_ffff;
                let packet = packet_starts.partition_point(|&p| p <= at) - 1;
                found.push((id, start.wrapping_add(packet_starts[packet] as u32)));
            }
            at += FRAME_HEADER + length;
        }
        found
    }

    fn request_of(event: &TcEvent) -> Option<(&str, &str)> {
        match event.http.as_ref()?.start_line.as_ref()? {
            StartLine::Request(line) => Some((&line.path, &event.http.as_ref()?.request_id)),
            StartLine::Response(_) => None,
        }
    }

    fn status_of(event: &TcEvent) -> Option<u32> {
        match event.http.as_ref()?.start_line.as_ref()? {
            StartLine::Response(line) => Some(line.status),
            StartLine::Request(_) => None,
        }
    }

    /// Twelve streams in flight on one connection, HPACK's dynamic table
    /// and Huffman coding as a real encoder uses them: each stream's request
    /// and response are one message start each, in the packet their HEADERS
    /// frame begins in, with what the header block says.
    #[tokio::test]
    async fn each_stream_of_a_real_h2_connection_is_one_request_and_one_response() {
        let packets = exchange(12).await;
        let (events, lost) = follow(&records(&packets, 4096));
        assert_eq!(lost, 0);
        let requests: Vec<&TcEvent> = events.iter().filter(|e| request_of(e).is_some()).collect();
        let responses: Vec<&TcEvent> = events.iter().filter(|e| status_of(e).is_some()).collect();
        assert_eq!((requests.len(), responses.len()), (12, 12), "{events:#?}");
        let request_frames = headers_frames(&packets, 0);
        let response_frames = headers_frames(&packets, 1);
        for (index, request) in requests.iter().enumerate() {
            let expected_id = format!("0d5c-{index:04}-request");
            assert_eq!(
                request_of(request),
                Some((path(index).as_str(), expected_id.as_str()))
            );
            let stream = request.http2_stream;
            assert_eq!(
                stream,
                2 * index as u32 + 1,
                "the client's streams are odd, in order"
            );
            assert!(
                request_frames.contains(&(stream, request.tcp_seq)),
                "{request:?}"
            );
            assert_eq!(request.payload, PayloadKind::Http2 as i32);
            let response = responses
                .iter()
                .find(|r| r.http2_stream == stream)
                .unwrap_or_else(|| panic!("a response on stream {stream}"));
            let status = if index % 3 == 2 { 404 } else { 200 };
            assert_eq!(status_of(response), Some(status));
            assert!(response_frames.contains(&(stream, response.tcp_seq)));
        }
        // Nothing else: the preface, SETTINGS and WINDOW_UPDATEs start no call.
        assert!(
            events
                .iter()
                .all(|e| e.kind != EventKind::Message as i32 || e.http2_stream != 0)
        );
    }

    /// Cut into 7-byte packets, frame headers and header blocks span
    /// packets: the same streams, each named by the packet its frame header
    /// began in.
    #[tokio::test]
    async fn frames_cut_across_packets_are_followed() {
        let packets: Vec<(usize, Vec<u8>)> = exchange(4)
            .await
            .into_iter()
            .flat_map(|(side, bytes)| {
                bytes
                    .chunks(7)
                    .map(|piece| (side, piece.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let (events, lost) = follow(&records(&packets, 4096));
        assert_eq!(lost, 0);
        let request_frames = headers_frames(&packets, 0);
        let requests: Vec<&TcEvent> = events.iter().filter(|e| request_of(e).is_some()).collect();
        assert_eq!(requests.len(), 4);
        for request in requests {
            assert!(request_frames.contains(&(request.http2_stream, request.tcp_seq)));
        }
        assert_eq!(events.iter().filter(|e| status_of(e).is_some()).count(), 4);
    }

    /// A packet the probe never got: that side's later streams are not
    /// named (its frames' offsets and dynamic table are unknown), what came
    /// before still is, and nothing is named wrongly.
    #[tokio::test]
    async fn a_lost_packet_loses_its_side_and_names_nothing_wrongly() {
        let packets = exchange(6).await;
        let mut records = records(&packets, 4096);
        let client_packets: Vec<usize> = (0..records.len())
            .filter(|&i| {
                records[i].0.kind == EventKind::Message as u8 && records[i].0.src_port == CLIENT.1
            })
            .collect();
        // The client's second payload packet (after the preface's).
        records.remove(client_packets[1]);
        let (events, lost) = follow(&records);
        assert_eq!(lost, 1);
        let request_frames = headers_frames(&packets, 0);
        for event in &events {
            if let Some((path, id)) = request_of(event) {
                let index = (event.http2_stream as usize - 1) / 2;
                assert_eq!(
                    (path, id),
                    (
                        tests::path(index).as_str(),
                        format!("0d5c-{index:04}-request").as_str()
                    )
                );
                assert!(request_frames.contains(&(event.http2_stream, event.tcp_seq)));
            }
        }
        // The lost side's packets are published as they came, when the
        // sender changes: the join names the connection.
        assert!(
            events
                .iter()
                .any(|e| e.kind == EventKind::Message as i32 && e.http2_stream == 0)
        );
    }

    /// A header block past the captured bytes cannot be decoded: the side is
    /// lost at once, never guessed at.
    #[tokio::test]
    async fn a_header_block_past_the_capture_loses_the_side() {
        let packets = exchange(3).await;
        let (events, lost) = follow(&records(&packets, 20));
        assert!(lost >= 1);
        assert!(events.iter().all(|e| request_of(e).is_none()));
    }

    /// A connection that does not start with the preface is not followed:
    /// its packets are published as they came.
    #[test]
    fn http1_connections_pass_through() {
        let packets = vec![
            (0, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n".to_vec()),
            (1, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()),
        ];
        let records = records(&packets, 4096);
        let (events, lost) = follow(&records);
        assert_eq!((events.len(), lost), (records.len(), 0));
        assert!(events.iter().all(|e| e.http2_stream == 0));
    }
}
