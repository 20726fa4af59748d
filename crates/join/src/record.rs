//! One API call as `kubectl apitrace` prints it. The serialised field names are
//! a public interface (`-o ndjson`, `-o json`): `docs/record.md` describes
//! each of them, and a test pins them.

use std::{borrow::Cow, sync::Arc};

use serde::{Deserialize, Serialize};

/// A joined API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// When the sidecar received the request (RFC 3339, UTC).
    pub time: String,
    /// The `x-request-id` Envoy assigned.
    pub request_id: String,
    /// Who made the call.
    pub src: Peer,
    /// Whom it was made to.
    pub dst: Peer,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub protocol: String,
    /// The request's method (`GET`, `POST`, ...).
    pub method: String,
    /// The request's path, with its query.
    pub path: String,
    /// The request's `:authority` (`Host`).
    pub authority: String,
    /// The HTTP status; 0 when the call got no response.
    pub status: u32,
    /// Which layers observed the call.
    pub layers: Vec<Layer>,
    /// Envoy's response flags, each spelled out (`UF: upstream connection failure`).
    pub response_flags: Vec<String>,
    /// Bytes of the request's and the response's bodies, as the sidecar counted
    /// them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body_bytes: Option<u64>,
    /// See `request_body_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_body_bytes: Option<u64>,
    /// What a gRPC call was: its service, method and status, which its HTTP
    /// status (200 for a failed call too) does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcRecord>,
    /// The caller's credentials as the WASM filter saw them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthRecord>,
    /// The request's first packet as the TC program saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tc: Option<WireRecord>,
    /// Where the time went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// The access-log entry's view: who reported it and the ids it carried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub als: Option<AlsRecord>,
    /// The WASM filter event's view: its direction and how long the request
    /// took from the filter's side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmRecord>,
    /// Every sidecar that logged the call: the caller's (outbound) and the
    /// called pod's (inbound) when both are in the mesh and traced.
    pub hops: Vec<Hop>,
}

impl CallRecord {
    /// The call's own first packet where the wire showed one, nearest the
    /// called pod first: its interface (`tc`), then each hop from the called
    /// pod's back to the caller's, the connection towards the app before the
    /// one from the caller. Over mTLS that is the called sidecar's plaintext
    /// request to its app on `lo`.
    pub fn request_packet(&self) -> Option<&WireRecord> {
        let hops = self
            .hops
            .iter()
            .rev()
            .flat_map(|hop| [hop.upstream.as_ref(), hop.downstream.as_ref()]);
        std::iter::once(self.tc.as_ref())
            .chain(hops)
            .flatten()
            .find(|wire| wire.scope == WireScope::Request)
    }
}

/// One sidecar's access-log view of a call, and the two connections it
/// joined as its pod's interfaces saw them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// `namespace/name` of the sidecar.
    pub reporter: String,
    /// `inbound` (it received the call for its pod) or `outbound` (its pod made
    /// the call); empty when the cluster name says neither. One of a few
    /// words: not a string per record.
    pub direction: Cow<'static, str>,
    /// The protocol this sidecar received the call in (`HTTP/1.1`,
    /// `HTTP/2`): between two sidecars Istio may send HTTP/1.1 on as HTTP/2
    /// (a port named `http2` or `grpc`, or `h2UpgradePolicy`: istiod's
    /// `setUpstreamProtocol`, docs/mesh.md), so the
    /// caller's hop can say what its app spoke where the called one cannot.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// The HTTP status this sidecar sent back.
    pub status: u32,
    /// The Envoy cluster this sidecar routed the call to
    /// (`outbound|PORT||HOST`, `inbound|PORT||`), which says its direction.
    pub upstream_cluster: String,
    /// From the sidecar receiving the request to its last response byte.
    pub duration_us: i64,
    /// This sidecar's response flags, spelled out as in the record's.
    pub response_flags: Vec<String>,
    /// The TLS version of the connection the sidecar accepted the call on,
    /// when it had TLS (`TLSv1.3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    /// The identity in the certificate the caller presented on it (its URI
    /// SAN: `spiffe://cluster.local/ns/NS/sa/SA` in a mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_identity: Option<String>,
    /// The connection the sidecar accepted the call on, as the wire saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream: Option<WireRecord>,
    /// The connection it sent the call on, as the wire saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<WireRecord>,
}

/// A layer that observes calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// The sidecar's access log, streamed over Envoy's access-log service.
    Als,
    /// The WASM filter in the sidecar.
    Wasm,
    /// The TC program on the pod's interfaces.
    Tc,
}

impl Layer {
    /// The layer as records and the table spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Als => "als",
            Self::Wasm => "wasm",
            Self::Tc => "tc",
        }
    }
}

/// One end of the call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its namespace, where it has one.
    pub namespace: String,
    /// Its name; empty for an address nobody is known by.
    pub name: String,
    /// `Pod`, `Service`, `Node` or `External`: not a string per record.
    pub kind: Cow<'static, str>,
    /// Its address on the call's connection.
    pub ip: String,
    /// Its port on the call's connection.
    pub port: u32,
    /// The workload identity it proved with its certificate (the caller's,
    /// over mTLS: `spiffe://cluster.local/ns/NS/sa/SA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// A gRPC call: the service and method its path names, and the status its
/// response's trailers (or Trailers-Only headers) carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrpcRecord {
    /// `package.Service`, from the path `/package.Service/Method`.
    pub service: String,
    /// `Method`, from the same path.
    pub method: String,
    /// The `grpc-status` code; absent when the call ended without one (reset,
    /// cut off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u32>,
    /// Its name (`OK`, `NOT_FOUND`, `UNAVAILABLE`): one of a few words, not a
    /// string per record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_name: Option<Cow<'static, str>>,
    /// The `grpc-message`, decoded from gRPC's percent-encoding; empty when
    /// none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Messages in the request's and the response's bodies, as the filter
    /// counted them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_messages: Option<u64>,
    /// See `request_messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_messages: Option<u64>,
}

impl GrpcRecord {
    /// The call's service and method from its path; empty where the path is
    /// not gRPC's `/service/method`.
    pub fn of_path(path: &str) -> (String, String) {
        path.strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .filter(|(_, method)| !method.contains('/'))
            .map(|(service, method)| (service.to_owned(), method.to_owned()))
            .unwrap_or_default()
    }
}

/// A `grpc-message` as text: gRPC percent-encodes every byte of its UTF-8
/// that is not printable ASCII, and `%` itself (gRPC over HTTP/2, "Responses");
/// a `%` not followed by two hex digits is kept as it is.
pub(crate) fn grpc_message_text(sent: &str) -> String {
    let bytes = sent.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                at += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// The name of gRPC status `code` (the gRPC status codes document); `None` for
/// a code gRPC does not define.
pub fn grpc_status_name(code: u32) -> Option<&'static str> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(usize::try_from(code).ok()?).copied()
}

/// The caller's credentials, as the WASM filter described them: what the
/// token says, never the token unless the session opted in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthRecord {
    /// `Bearer`, `Basic`, ...
    pub scheme: String,
    /// The JWT's decoded claims (an empty object when the credentials are not a
    /// JWT). Shared: the calls that carry the same token carry the same claims.
    pub claims: Arc<serde_json::Value>,
    /// The JWT's decoded JOSE header.
    #[serde(skip_serializing_if = "is_null")]
    pub jwt_header: Arc<serde_json::Value>,
    /// `sha256:<hex>` of the credentials.
    pub fingerprint: String,
    /// The raw credentials: present only with `--show-secrets`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Why credentials that looked like a JWT could not be decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the wire showed of a call on one connection: its request's first
/// packet, or where the wire cannot tell the connection's calls apart (TLS,
/// HTTP/2), the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRecord {
    /// IPv4 identification (0 for IPv6) of the request's first packet, or of
    /// the connection's first packet (its SYN) at connection scope; absent
    /// when the session did not see the connection open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_id: Option<u32>,
    /// Its TCP sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_seq: Option<u32>,
    /// TCP payload bytes of the request's first packet: the next request on
    /// the connection starts at `tcp_seq + payload_len` when the request
    /// fitted in it. Absent at connection scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_len: Option<u32>,
    /// Where that packet came from.
    pub src: Endpoint,
    /// Where it went.
    pub dst: Endpoint,
    /// The pod interface that saw it (`eth0`, `lo`). Shared: a pod has a
    /// few.
    pub interface: Arc<str>,
    /// When the TC program saw that packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The `x-request-id` read from the plaintext hop from the sidecar to the
    /// app (`lo`); empty when that hop was not seen.
    pub request_id: String,
    /// Retransmitted segments seen on the connection while the call ran.
    pub retransmits: u32,
    /// Resets (RST) seen on the connection while the call ran.
    pub resets: u32,
    /// `request`: the packets are the call's own. `connection`: the
    /// connection's, which its other calls share (see docs/record.md).
    pub scope: WireScope,
    /// The HTTP/2 stream the call was on, where its packets are its stream's
    /// on an h2c connection (at `request` scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u32>,
    /// Whether the connection was TLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// From the connection's SYN to the SYN+ACK, when both were seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake_us: Option<i64>,
}

/// What a [`WireRecord`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireScope {
    /// The call's own request and response.
    Request,
    /// The connection it went over.
    Connection,
}

/// An address and port a packet carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Shared: a connection's records name the same addresses.
    pub ip: Arc<str>,
    /// The TCP port.
    pub port: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlsRecord {
    pub request_id: String,
    /// `namespace/name` of the sidecar that logged the call.
    pub reporter: String,
    pub downstream: Endpoint,
    pub upstream_cluster: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmRecord {
    pub request_id: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// From the request headers reaching the filter to the call being logged.
    pub duration_us: i64,
}

/// Microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// From the sidecar receiving the request to it sending the last response byte.
    pub total_us: i64,
    /// Spent upstream of the sidecar (the app, or the next hop).
    pub upstream_us: i64,
    /// Spent in the sidecar itself: total minus upstream.
    pub sidecar_us: i64,
    /// From the first packet on the pod's interface to the sidecar starting the
    /// stream (kernel, iptables redirect, accept); absent without a TC event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_sidecar_us: Option<i64>,
    /// From the request's first packet to the response's first packet on the
    /// pod's interface: the pod's whole share, as the wire saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_wire_us: Option<i64>,
    /// The same between the sidecar and the app on `lo`: the app's share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_wire_us: Option<i64>,
}

fn is_null(value: &Arc<serde_json::Value>) -> bool {
    value.is_null()
}

/// `unix_nanos` in RFC 3339, UTC, to the microsecond (truncated), as
/// `2024-09-18T04:06:54.123456Z`; a time before 1970 reads as 1970. Written
/// digit by digit into a template: every record has one or two, and going
/// through a `Display` formatter cost a few percent of the join.
pub(crate) fn rfc3339(unix_nanos: i64) -> String {
    const MICROS_PER_DAY: i64 = 86_400_000_000;
    let micros = unix_nanos.max(0) / 1_000;
    let (year, month, day) = civil_from_days(micros / MICROS_PER_DAY);
    let micros_of_day = micros % MICROS_PER_DAY;
    let seconds = micros_of_day / 1_000_000;
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    // Each field by where its last digit goes and how many digits it has.
    for (mut value, last, digits) in [
        (year, 3, 4),
        (month, 6, 2),
        (day, 9, 2),
        (seconds / 3_600, 12, 2),
        (seconds / 60 % 60, 15, 2),
        (seconds % 60, 18, 2),
        (micros_of_day % 1_000_000, 25, 6),
    ] {
        for place in text[last + 1 - digits..=last].iter_mut().rev() {
            *place = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    // Digits and ASCII punctuation: always UTF-8.
    String::from_utf8(text.to_vec()).unwrap_or_default()
}

/// The proleptic Gregorian date (year, month, day) `days` after 1970-01-01,
/// by Howard Hinnant's `civil_from_days`: eras of 400 years, each year
/// counted from March so that the leap day comes last.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            ip: "10.0.0.40".into(),
            port: 50174,
        }
    }

    /// A wire part with every optional field present.
    fn wire() -> WireRecord {
        WireRecord {
            ip_id: Some(1),
            tcp_seq: Some(2),
            payload_len: Some(3),
            src: endpoint(),
            dst: endpoint(),
            interface: "eth0".into(),
            time: Some(rfc3339(0)),
            request_id: "id".into(),
            retransmits: 0,
            resets: 0,
            scope: WireScope::Connection,
            stream_id: Some(3),
            tls: true,
            handshake_us: Some(40),
        }
    }

    /// A record with every optional part present.
    pub(crate) fn full_record() -> CallRecord {
        CallRecord {
            time: rfc3339(0),
            request_id: "id".into(),
            src: Peer {
                identity: Some("spiffe://cluster.local/ns/ns/sa/client".into()),
                ..Peer::default()
            },
            dst: Peer::default(),
            protocol: "HTTP/1.1".into(),
            method: "GET".into(),
            path: "/".into(),
            authority: "a".into(),
            status: 200,
            layers: vec![Layer::Als, Layer::Wasm, Layer::Tc],
            response_flags: vec![],
            request_body_bytes: Some(0),
            response_body_bytes: Some(2),
            grpc: Some(GrpcRecord {
                service: "shop.Orders".into(),
                method: "Get".into(),
                status: Some(5),
                status_name: Some("NOT_FOUND".into()),
                message: "m".into(),
                request_messages: Some(1),
                response_messages: Some(0),
            }),
            auth: Some(AuthRecord {
                scheme: "Bearer".into(),
                claims: serde_json::json!({"sub": "alice"}).into(),
                jwt_header: serde_json::json!({"alg": "none"}).into(),
                fingerprint: "sha256:00".into(),
                token: Some("t".into()),
                error: Some("e".into()),
            }),
            tc: Some(wire()),
            latency: Some(Latency {
                total_us: 1,
                upstream_us: 1,
                sidecar_us: 0,
                before_sidecar_us: Some(1),
                pod_wire_us: Some(1),
                app_wire_us: Some(1),
            }),
            als: Some(AlsRecord {
                request_id: "id".into(),
                reporter: "ns/pod".into(),
                downstream: endpoint(),
                upstream_cluster: "inbound|80||".into(),
            }),
            wasm: Some(WasmRecord {
                request_id: "id".into(),
                direction: "inbound".into(),
                duration_us: 1,
            }),
            hops: vec![Hop {
                reporter: "ns/pod".into(),
                direction: "inbound".into(),
                protocol: "HTTP/1.1".into(),
                status: 200,
                upstream_cluster: "inbound|80||".into(),
                duration_us: 1,
                response_flags: vec![],
                tls_version: Some("TLSv1.3".into()),
                peer_identity: Some("spiffe://cluster.local/ns/ns/sa/client".into()),
                downstream: Some(wire()),
                upstream: Some(wire()),
            }],
        }
    }

    /// Every key of `value`, as `parent.key` paths, not descending into the
    /// free-form JWT objects nor into a hop's wire parts, which are `tc`'s.
    fn keys(value: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(first) = value.as_array().and_then(|items| items.first()) {
            return keys(first, prefix, out);
        }
        let Some(object) = value.as_object() else {
            return;
        };
        for (key, child) in object {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if !matches!(
                path.as_str(),
                "auth.claims" | "auth.jwt_header" | "hops.downstream" | "hops.upstream"
            ) {
                keys(child, &path, out);
            }
            out.push(path);
        }
    }

    /// The serialised keys are a public interface (`-o ndjson`): this list
    /// changes only deliberately, and docs/record.md describes each key.
    #[test]
    fn record_keys_are_the_documented_interface() {
        let mut found = Vec::new();
        keys(
            &serde_json::to_value(full_record()).unwrap(),
            "",
            &mut found,
        );
        found.sort();
        let expected = [
            "als",
            "als.downstream",
            "als.downstream.ip",
            "als.downstream.port",
            "als.reporter",
            "als.request_id",
            "als.upstream_cluster",
            "auth",
            "auth.claims",
            "auth.error",
            "auth.fingerprint",
            "auth.jwt_header",
            "auth.scheme",
            "auth.token",
            "authority",
            "dst",
            "dst.ip",
            "dst.kind",
            "dst.name",
            "dst.namespace",
            "dst.port",
            "grpc",
            "grpc.message",
            "grpc.method",
            "grpc.request_messages",
            "grpc.response_messages",
            "grpc.service",
            "grpc.status",
            "grpc.status_name",
            "hops",
            "hops.direction",
            "hops.downstream",
            "hops.duration_us",
            "hops.peer_identity",
            "hops.protocol",
            "hops.reporter",
            "hops.response_flags",
            "hops.status",
            "hops.tls_version",
            "hops.upstream",
            "hops.upstream_cluster",
            "latency",
            "latency.app_wire_us",
            "latency.before_sidecar_us",
            "latency.pod_wire_us",
            "latency.sidecar_us",
            "latency.total_us",
            "latency.upstream_us",
            "layers",
            "method",
            "path",
            "protocol",
            "request_body_bytes",
            "request_id",
            "response_body_bytes",
            "response_flags",
            "src",
            "src.identity",
            "src.ip",
            "src.kind",
            "src.name",
            "src.namespace",
            "src.port",
            "status",
            "tc",
            "tc.dst",
            "tc.dst.ip",
            "tc.dst.port",
            "tc.handshake_us",
            "tc.interface",
            "tc.ip_id",
            "tc.payload_len",
            "tc.request_id",
            "tc.resets",
            "tc.retransmits",
            "tc.scope",
            "tc.src",
            "tc.src.ip",
            "tc.src.port",
            "tc.stream_id",
            "tc.tcp_seq",
            "tc.time",
            "tc.tls",
            "time",
            "wasm",
            "wasm.direction",
            "wasm.duration_us",
            "wasm.request_id",
        ];
        assert_eq!(found, expected);
        let documentation = include_str!("../../../docs/record.md");
        for path in expected {
            let key = path.rsplit('.').next().unwrap_or(path);
            assert!(
                documentation.contains(&format!("`{key}`")),
                "docs/record.md does not describe `{path}`"
            );
        }
    }

    #[test]
    fn grpc_paths_and_status_codes_are_named() {
        assert_eq!(
            GrpcRecord::of_path("/apitrace.demo.v1.Orders/GetOrder"),
            ("apitrace.demo.v1.Orders".into(), "GetOrder".into())
        );
        for not_grpc in ["/", "/status", "/a/b/c", ""] {
            assert_eq!(
                GrpcRecord::of_path(not_grpc),
                Default::default(),
                "{not_grpc}"
            );
        }
        assert_eq!(grpc_status_name(0), Some("OK"));
        assert_eq!(grpc_status_name(5), Some("NOT_FOUND"));
        assert_eq!(grpc_status_name(14), Some("UNAVAILABLE"));
        assert_eq!(grpc_status_name(16), Some("UNAUTHENTICATED"));
        assert_eq!(grpc_status_name(17), None);
        assert_eq!(grpc_message_text("no%20order%207"), "no order 7");
        assert_eq!(grpc_message_text("caf%C3%A9 100%"), "café 100%");
        assert_eq!(grpc_message_text("%zz%4"), "%zz%4");
    }

    #[test]
    fn secrets_and_empty_parts_are_left_out() {
        let mut record = full_record();
        record.auth.as_mut().unwrap().token = None;
        record.tc = None;
        let value = serde_json::to_value(record).unwrap();
        assert!(value["auth"].get("token").is_none());
        assert!(value.get("tc").is_none());
    }

    #[test]
    fn time_is_rfc3339_utc_with_microseconds() {
        assert_eq!(
            rfc3339(1_726_632_414_123_456_789),
            "2024-09-18T04:06:54.123456Z"
        );
        assert_eq!(rfc3339(-1), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(i64::MAX), "2262-04-11T23:47:16.854775Z");
        // Around leap days, the end of a year, and 2100 (no leap day).
        for seconds in [
            951_782_399,
            951_782_400,
            951_868_800,
            1_735_689_599,
            4_107_456_000,
        ] {
            let nanos = seconds * 1_000_000_000;
            assert_eq!(rfc3339(nanos), humantime_text(nanos), "{seconds}");
        }
    }

    fn humantime_text(unix_nanos: i64) -> String {
        let time =
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(unix_nanos.unsigned_abs());
        humantime::format_rfc3339_micros(time).to_string()
    }

    proptest::proptest! {
        /// The hand-written formatter agrees with humantime's.
        #[test]
        fn time_is_formatted_as_humantime_formats_it(unix_nanos in 0..i64::MAX) {
            proptest::prop_assert_eq!(rfc3339(unix_nanos), humantime_text(unix_nanos));
        }
    }
}
