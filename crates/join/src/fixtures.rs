//! Events as probes and sidecars send them, made up for the join's tests and
//! its benchmark (the `fixtures` feature): one place that knows what each
//! layer reports about a call.

use apitrace_proto::{
    AccessLog, AuthInfo, Endpoint, Event, HttpHead, PayloadKind, PodRef, RequestLine, StatusLine,
    TcDirection, TcEvent, TcKind, TrafficDirection, WasmEvent, event::Kind, http_head::StartLine,
};

/// An address and a port.
pub type Address<'a> = (&'a str, u32);

pub fn endpoint((ip, port): Address<'_>) -> Option<Endpoint> {
    Some(Endpoint::new(ip, port))
}

pub fn pod(namespace: &str, name: &str) -> PodRef {
    PodRef {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// An HTTP/1 request head as the probe parses it from a message start.
pub fn request_head(method: &str, path: &str, request_id: &str) -> HttpHead {
    HttpHead {
        start_line: Some(StartLine::Request(RequestLine {
            method: method.into(),
            path: path.into(),
            version: "HTTP/1.1".into(),
        })),
        request_id: request_id.into(),
        authority: String::new(),
    }
}

/// An HTTP/1 status line as the probe parses it.
pub fn status_head(status: u32) -> HttpHead {
    HttpHead {
        start_line: Some(StartLine::Response(StatusLine {
            version: "HTTP/1.1".into(),
            status,
        })),
        ..HttpHead::default()
    }
}

/// A TC event of `kind` from `pod`'s `interface`.
pub fn tc(
    pod: &PodRef,
    interface: &str,
    kind: TcKind,
    time_ns: i64,
    src: Address<'_>,
    dst: Address<'_>,
) -> TcEvent {
    TcEvent {
        time_unix_nano: time_ns,
        pod: Some(pod.clone()),
        interface: interface.into(),
        direction: TcDirection::Ingress as i32,
        kind: kind as i32,
        src: endpoint(src),
        dst: endpoint(dst),
        ..TcEvent::default()
    }
}

/// A message start: `head` when it is plaintext HTTP/1, else `payload` says
/// what its first bytes are.
pub fn message(
    event: TcEvent,
    ip_id: u32,
    tcp_seq: u32,
    head: Option<HttpHead>,
    payload: PayloadKind,
) -> Event {
    let payload = if head.is_some() {
        PayloadKind::Http1
    } else {
        payload
    };
    Event {
        kind: Some(Kind::Tc(TcEvent {
            ip_id,
            tcp_seq,
            payload_len: 180,
            http: head,
            payload: payload as i32,
            ..event
        })),
    }
}

/// A TC event that is not a message start (a SYN, a retransmission, ...).
pub fn context(event: TcEvent) -> Event {
    Event {
        kind: Some(Kind::Tc(event)),
    }
}

/// A WASM filter event with a bearer JWT of subject alice.
pub fn wasm(request_id: &str, direction: TrafficDirection, time_ns: i64) -> Event {
    Event {
        kind: Some(Kind::Wasm(WasmEvent {
            time_unix_nano: time_ns,
            request_id: request_id.into(),
            method: "GET".into(),
            path: "/api/orders/42".into(),
            authority: "orders:8080".into(),
            status: 200,
            listener_direction: direction.into(),
            auth: Some(AuthInfo {
                scheme: "Bearer".into(),
                jwt_header_json: r#"{"alg":"RS256","kid":"k1"}"#.into(),
                jwt_claims_json: r#"{"sub":"alice"}"#.into(),
                fingerprint: "sha256:5f1e".into(),
                ..AuthInfo::default()
            }),
            duration_ns: 700_000,
            ..WasmEvent::default()
        })),
    }
}

/// An access-log entry's fields that most calls share: a GET that the
/// sidecar sent upstream 50 µs after it started, had the last byte of the
/// answer at 600 µs and sent its own last at 800 µs. Fill in the rest with
/// `AccessLog { ..., ..entry() }`.
pub fn entry() -> AccessLog {
    AccessLog {
        method: "GET".into(),
        path: "/api/orders/42".into(),
        authority: "orders:8080".into(),
        protocol: "HTTP/1.1".into(),
        status: 200,
        first_upstream_tx_byte_ns: 50_000,
        last_upstream_rx_byte_ns: 600_000,
        last_downstream_tx_byte_ns: 800_000,
        ..AccessLog::default()
    }
}

pub fn access_log(log: AccessLog) -> Event {
    Event {
        kind: Some(Kind::AccessLog(log)),
    }
}

/// A call into a pod behind its sidecar, as Istio builds it: the caller's
/// connection to the pod arrives on `eth0`, the sidecar takes it (inbound
/// capture) and sends the request on its own pooled connection to the app
/// from 127.0.0.6 on `lo`, with the `x-request-id` it assigned.
#[derive(Debug, Clone)]
pub struct InboundCall<'a> {
    /// The called pod: its probe's TC events and its sidecar's entries name it.
    pub pod: PodRef,
    pub request_id: String,
    pub client: Address<'a>,
    pub server: Address<'a>,
    /// The sidecar's end of its connection to the app.
    pub sidecar: Address<'a>,
    pub app: Address<'a>,
}

impl InboundCall<'_> {
    /// The request's first packet on `eth0`.
    pub fn request(&self, time_ns: i64, tcp_seq: u32) -> Event {
        let event = tc(
            &self.pod,
            "eth0",
            TcKind::Message,
            time_ns,
            self.client,
            self.server,
        );
        let head = request_head("GET", "/api/orders/42", "");
        message(event, 7, tcp_seq, Some(head), PayloadKind::Http1)
    }

    /// The response's first packet on `eth0`.
    pub fn response(&self, time_ns: i64) -> Event {
        let event = tc(
            &self.pod,
            "eth0",
            TcKind::Message,
            time_ns,
            self.server,
            self.client,
        );
        message(event, 8, 0, None, PayloadKind::Other)
    }

    /// The sidecar's request to the app on `lo`, with the request id.
    pub fn app_request(&self, time_ns: i64) -> Event {
        let event = tc(
            &self.pod,
            "lo",
            TcKind::Message,
            time_ns,
            self.sidecar,
            self.app,
        );
        let head = request_head("GET", "/api/orders/42", &self.request_id);
        message(event, 9, 1, Some(head), PayloadKind::Http1)
    }

    /// The app's response to it on `lo`.
    pub fn app_response(&self, time_ns: i64) -> Event {
        let event = tc(
            &self.pod,
            "lo",
            TcKind::Message,
            time_ns,
            self.app,
            self.sidecar,
        );
        message(event, 10, 0, None, PayloadKind::Other)
    }

    /// The sidecar's entry for the call, started at `start_ns`.
    pub fn access_log(&self, start_ns: i64) -> Event {
        access_log(AccessLog {
            start_time_unix_nano: start_ns,
            reporter: Some(self.pod.clone()),
            request_id: self.request_id.clone(),
            downstream_remote: endpoint(self.client),
            downstream_local: endpoint(self.server),
            upstream_local: endpoint(self.sidecar),
            upstream_remote: endpoint(self.app),
            upstream_cluster: format!("inbound|{}||", self.server.1),
            ..entry()
        })
    }

    /// The sidecar's filter's event for the call.
    pub fn wasm(&self, time_ns: i64) -> Event {
        wasm(&self.request_id, TrafficDirection::Inbound, time_ns)
    }
}
