//! The Envoy access-log service (ALS) endpoint: Istio's `envoyHttpAls` provider
//! points sidecars here.
//!
//! Each Envoy worker opens its own stream. The first message of a stream names
//! the node (Istio puts the pod's NAME and NAMESPACE into the node metadata);
//! later messages carry only entries, so the stream remembers who is reporting.
//! Entries are normalised into [`AccessLog`]s and published to the hub.

use std::sync::Arc;

use apitrace_proto::{AccessLog, Endpoint, PodRef, event::Kind};
use envoy_types::pb::{
    envoy::{
        config::core::v3::{Address, Node, address, socket_address::PortSpecifier},
        data::accesslog::v3::{
            AccessLogCommon, HttpAccessLogEntry, ResponseFlags, TcpAccessLogEntry, TlsProperties,
            http_access_log_entry::HttpVersion,
            tls_properties::{TlsVersion, certificate_properties::subject_alt_name::San},
        },
        service::accesslog::v3::{
            StreamAccessLogsMessage, StreamAccessLogsResponse,
            access_log_service_server::{AccessLogService, AccessLogServiceServer},
            stream_access_logs_message::LogEntries,
        },
    },
    google::protobuf::{Duration, Timestamp, value::Kind as ValueKind},
};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::{counters::Counters, hub::Hub, peers::Peers};

pub struct Als {
    hub: Hub,
    peers: Arc<Peers>,
}

impl Als {
    pub fn server(hub: Hub, peers: Arc<Peers>) -> AccessLogServiceServer<Self> {
        AccessLogServiceServer::new(Self { hub, peers })
    }
}

#[tonic::async_trait]
impl AccessLogService for Als {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let counters = self.hub.counters();
        let allowed = request
            .remote_addr()
            .is_some_and(|peer| self.peers.allows(peer.ip()));
        if !allowed {
            Counters::increment(&counters.access_log_streams_refused);
            return Err(Status::permission_denied(
                "this access-log service accepts only the sidecars of the traced pods",
            ));
        }
        Counters::increment(&counters.access_log_streams);
        let mut stream = request.into_inner();
        let mut reporter = Reporter::default();
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                // Bytes that do not decode end this stream (Envoy reconnects),
                // counted; the other streams are not affected. A connection
                // that broke (reset, cut, Envoy killed) is not malformed
                // input, but what was in flight on it is lost: counted apart.
                Err(status) => {
                    let counter = match status.code() {
                        Code::Internal | Code::OutOfRange | Code::ResourceExhausted => {
                            &counters.access_logs_malformed
                        }
                        _ => &counters.access_log_streams_broken,
                    };
                    Counters::increment(counter);
                    return Err(status);
                }
            };
            for entry in entries(&message, &mut reporter) {
                self.accept(entry);
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

/// The entries of one message of a stream, normalised (`None` for an entry
/// that cannot be, which is counted); a message that names its node changes
/// who reports this and the stream's later messages. Lazy: nothing is
/// collected per message.
pub fn entries<'a>(
    message: &'a StreamAccessLogsMessage,
    reporter: &'a mut Reporter,
) -> impl Iterator<Item = Option<AccessLog>> + 'a {
    if let Some(identifier) = &message.identifier {
        *reporter = Reporter::from_node(identifier.node.as_ref(), &identifier.log_name);
    }
    let reporter = &*reporter;
    let (http, tcp) = match &message.log_entries {
        Some(LogEntries::HttpLogs(logs)) => (logs.log_entry.as_slice(), &[][..]),
        Some(LogEntries::TcpLogs(logs)) => (&[][..], logs.log_entry.as_slice()),
        None => (&[][..], &[][..]),
    };
    http.iter()
        .map(|entry| normalise_http(entry, reporter))
        .chain(tcp.iter().map(|entry| normalise_tcp(entry, reporter)))
}

impl Als {
    fn accept(&self, entry: Option<AccessLog>) {
        let counters = self.hub.counters();
        match entry {
            Some(entry) => {
                Counters::increment(&counters.access_logs);
                self.hub.publish(Kind::AccessLog(entry));
            }
            None => Counters::increment(&counters.access_logs_malformed),
        }
    }
}

/// Who sends the entries of a stream.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reporter {
    pub pod: Option<PodRef>,
    pub node_id: String,
    pub log_name: String,
}

impl Reporter {
    pub fn from_node(node: Option<&Node>, log_name: &str) -> Self {
        let node_id = node.map(|n| n.id.clone()).unwrap_or_default();
        let from_metadata = node.and_then(|n| n.metadata.as_ref()).and_then(|metadata| {
            let field = |key: &str| match metadata.fields.get(key).and_then(|v| v.kind.as_ref()) {
                Some(ValueKind::StringValue(value)) if !value.is_empty() => Some(value.clone()),
                _ => None,
            };
            Some(PodRef {
                namespace: field("NAMESPACE")?,
                name: field("NAME")?,
            })
        });
        Self {
            pod: from_metadata.or_else(|| pod_from_node_id(&node_id)),
            node_id,
            log_name: log_name.to_owned(),
        }
    }
}

/// Istio's sidecar node ids read `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
fn pod_from_node_id(node_id: &str) -> Option<PodRef> {
    let mut parts = node_id.split('~');
    let (_kind, _ip, pod) = (parts.next()?, parts.next()?, parts.next()?);
    let (name, namespace) = pod.split_once('.')?;
    Some(PodRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// An HTTP entry as an [`AccessLog`]; `None` when it lacks the common
/// properties every Envoy entry has.
pub fn normalise_http(entry: &HttpAccessLogEntry, reporter: &Reporter) -> Option<AccessLog> {
    let mut log = normalise_common(entry.common_properties.as_ref()?, reporter);
    log.protocol = match HttpVersion::try_from(entry.protocol_version) {
        Ok(HttpVersion::Http10) => "HTTP/1.0",
        Ok(HttpVersion::Http11) => "HTTP/1.1",
        Ok(HttpVersion::Http2) => "HTTP/2",
        Ok(HttpVersion::Http3) => "HTTP/3",
        _ => "",
    }
    .to_owned();
    if let Some(request) = &entry.request {
        log.request_id.clone_from(&request.request_id);
        log.method = method_name(request.request_method).to_owned();
        log.path.clone_from(&request.path);
        log.authority.clone_from(&request.authority);
        log.user_agent.clone_from(&request.user_agent);
        log.request_body_bytes = request.request_body_bytes;
    }
    if let Some(response) = &entry.response {
        log.status = response.response_code.map_or(0, |code| code.value);
        log.response_body_bytes = response.response_body_bytes;
        (log.grpc_status, log.grpc_message) = crate::grpc_status::of(response);
    }
    Some(log)
}

/// A TCP proxy entry: a connection, without request fields.
pub fn normalise_tcp(entry: &TcpAccessLogEntry, reporter: &Reporter) -> Option<AccessLog> {
    let mut log = normalise_common(entry.common_properties.as_ref()?, reporter);
    log.protocol = "TCP".to_owned();
    Some(log)
}

/// The peer the sidecar accepted the connection from: what the wire shows.
/// `downstream_remote_address` may be inferred from `x-forwarded-for` or the
/// proxy protocol (a caller behind an ingress gateway would be named by its
/// client's address, which no packet on the pod carries);
/// `downstream_direct_remote_address` is always the socket's peer
/// (envoyproxy/envoy, api/envoy/data/accesslog/v3/accesslog.proto,
/// `AccessLogCommon` fields 2 and 20, as bundled in envoy-types 0.7.7; and
/// source/extensions/access_loggers/grpc/grpc_access_log_utils.cc, which
/// fills both). An Envoy that sends only the first is read as before.
fn downstream_peer(common: &AccessLogCommon) -> Option<&Address> {
    common
        .downstream_direct_remote_address
        .as_ref()
        .or(common.downstream_remote_address.as_ref())
}

fn normalise_common(common: &AccessLogCommon, reporter: &Reporter) -> AccessLog {
    AccessLog {
        start_time_unix_nano: common.start_time.as_ref().map_or(0, timestamp_nanos),
        reporter: reporter.pod.clone(),
        node_id: reporter.node_id.clone(),
        log_name: reporter.log_name.clone(),
        downstream_remote: endpoint(downstream_peer(common)),
        downstream_local: endpoint(common.downstream_local_address.as_ref()),
        upstream_remote: endpoint(common.upstream_remote_address.as_ref()),
        upstream_local: endpoint(common.upstream_local_address.as_ref()),
        upstream_cluster: common.upstream_cluster.clone(),
        response_flags: common
            .response_flags
            .as_ref()
            .map(flag_codes)
            .unwrap_or_default(),
        route_name: common.route_name.clone(),
        upstream_transport_failure_reason: common.upstream_transport_failure_reason.clone(),
        last_downstream_rx_byte_ns: nanos(common.time_to_last_rx_byte.as_ref()),
        first_upstream_tx_byte_ns: nanos(common.time_to_first_upstream_tx_byte.as_ref()),
        last_upstream_tx_byte_ns: nanos(common.time_to_last_upstream_tx_byte.as_ref()),
        first_upstream_rx_byte_ns: nanos(common.time_to_first_upstream_rx_byte.as_ref()),
        last_upstream_rx_byte_ns: nanos(common.time_to_last_upstream_rx_byte.as_ref()),
        first_downstream_tx_byte_ns: nanos(common.time_to_first_downstream_tx_byte.as_ref()),
        last_downstream_tx_byte_ns: nanos(common.time_to_last_downstream_tx_byte.as_ref()),
        tls_version: common
            .tls_properties
            .as_ref()
            .map(tls_version)
            .unwrap_or_default()
            .to_owned(),
        peer_uri_sans: common
            .tls_properties
            .as_ref()
            .and_then(|tls| tls.peer_certificate_properties.as_ref())
            .map(|peer| {
                peer.subject_alt_name
                    .iter()
                    .filter_map(|name| match &name.san {
                        Some(San::Uri(uri)) => Some(uri.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        ..AccessLog::default()
    }
}

/// The TLS version as OpenSSL and Envoy's `%DOWNSTREAM_TLS_VERSION%` name it;
/// empty when the connection had none.
fn tls_version(tls: &TlsProperties) -> &'static str {
    match TlsVersion::try_from(tls.tls_version) {
        Ok(TlsVersion::TlSv1) => "TLSv1",
        Ok(TlsVersion::TlSv11) => "TLSv1.1",
        Ok(TlsVersion::TlSv12) => "TLSv1.2",
        Ok(TlsVersion::TlSv13) => "TLSv1.3",
        _ => "",
    }
}

fn endpoint(address: Option<&Address>) -> Option<Endpoint> {
    match address?.address.as_ref()? {
        address::Address::SocketAddress(socket) => {
            let port = match socket.port_specifier {
                Some(PortSpecifier::PortValue(port)) => port,
                _ => 0,
            };
            Some(Endpoint::new(socket.address.clone(), port))
        }
        _ => None,
    }
}

fn timestamp_nanos(timestamp: &Timestamp) -> i64 {
    timestamp
        .seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(timestamp.nanos))
}

fn nanos(duration: Option<&Duration>) -> i64 {
    duration.map_or(0, |d| {
        d.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(d.nanos))
    })
}

/// `envoy.config.core.v3.RequestMethod` by number.
fn method_name(method: i32) -> &'static str {
    match method {
        1 => "GET",
        2 => "HEAD",
        3 => "POST",
        4 => "PUT",
        5 => "DELETE",
        6 => "CONNECT",
        7 => "OPTIONS",
        8 => "TRACE",
        9 => "PATCH",
        _ => "",
    }
}

/// Envoy's short response-flag codes, in the order Envoy prints them
/// (`%RESPONSE_FLAGS%`).
fn flag_codes(flags: &ResponseFlags) -> String {
    let set = [
        (flags.failed_local_healthcheck, "LH"),
        (flags.no_healthy_upstream, "UH"),
        (flags.upstream_request_timeout, "UT"),
        (flags.local_reset, "LR"),
        (flags.upstream_remote_reset, "UR"),
        (flags.upstream_connection_failure, "UF"),
        (flags.upstream_connection_termination, "UC"),
        (flags.upstream_overflow, "UO"),
        (flags.no_route_found, "NR"),
        (flags.delay_injected, "DI"),
        (flags.fault_injected, "FI"),
        (flags.rate_limited, "RL"),
        (flags.unauthorized_details.is_some(), "UAEX"),
        (flags.rate_limit_service_error, "RLSE"),
        (flags.downstream_connection_termination, "DC"),
        (flags.upstream_retry_limit_exceeded, "URX"),
        (flags.stream_idle_timeout, "SI"),
        (flags.invalid_envoy_request_headers, "IH"),
        (flags.downstream_protocol_error, "DPE"),
        (flags.upstream_max_stream_duration_reached, "UMSDR"),
        (flags.response_from_cache_filter, "RFCF"),
        (flags.no_filter_config_found, "NFCF"),
        (flags.duration_timeout, "DT"),
        (flags.upstream_protocol_error, "UPE"),
        (flags.no_cluster_found, "NC"),
        (flags.overload_manager, "OM"),
        (flags.dns_resolution_failure, "DF"),
        (flags.downstream_remote_reset, "DR"),
    ];
    set.iter()
        .filter(|(on, _)| *on)
        .map(|(_, code)| *code)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use envoy_types::pb::{
        envoy::{
            config::core::v3::SocketAddress,
            data::accesslog::v3::{HttpRequestProperties, HttpResponseProperties},
        },
        google::protobuf::{Struct, UInt32Value, Value},
    };

    fn string_value(value: &str) -> Value {
        Value {
            kind: Some(ValueKind::StringValue(value.to_owned())),
        }
    }

    fn socket(ip: &str, port: u32) -> Address {
        Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..SocketAddress::default()
            })),
        }
    }

    pub(crate) fn entry() -> HttpAccessLogEntry {
        HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                start_time: Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                }),
                downstream_remote_address: Some(socket("10.0.0.40", 50174)),
                downstream_local_address: Some(socket("10.0.0.135", 80)),
                upstream_remote_address: Some(socket("127.0.0.1", 80)),
                upstream_cluster: "inbound|80||".into(),
                time_to_last_upstream_rx_byte: Some(Duration {
                    seconds: 0,
                    nanos: 1_500_000,
                }),
                response_flags: Some(ResponseFlags {
                    upstream_connection_failure: true,
                    upstream_retry_limit_exceeded: true,
                    ..ResponseFlags::default()
                }),
                ..AccessLogCommon::default()
            }),
            protocol_version: HttpVersion::Http11 as i32,
            request: Some(HttpRequestProperties {
                request_method: 1,
                path: "/status".into(),
                request_id: "bf170e6d".into(),
                ..HttpRequestProperties::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(UInt32Value { value: 200 }),
                ..HttpResponseProperties::default()
            }),
        }
    }

    #[test]
    fn http_entry_keeps_what_the_record_needs() {
        let reporter = Reporter {
            pod: Some(PodRef {
                namespace: "default".into(),
                name: "nginx".into(),
            }),
            ..Reporter::default()
        };
        let log = normalise_http(&entry(), &reporter).unwrap();
        assert_eq!(log.start_time_unix_nano, 1_700_000_000_000_000_005);
        assert_eq!(log.method, "GET");
        assert_eq!(log.path, "/status");
        assert_eq!(log.status, 200);
        assert_eq!(log.protocol, "HTTP/1.1");
        assert_eq!(log.request_id, "bf170e6d");
        assert_eq!(
            log.downstream_remote,
            Some(Endpoint::new("10.0.0.40", 50174))
        );
        assert_eq!(log.downstream_local, Some(Endpoint::new("10.0.0.135", 80)));
        assert_eq!(log.last_upstream_rx_byte_ns, 1_500_000);
        assert_eq!(log.response_flags, "UF,URX");
        assert_eq!(log.reporter.unwrap().name, "nginx");
    }

    /// Behind an ingress gateway, Envoy may take the downstream remote address
    /// from `x-forwarded-for`: the call is keyed by the socket's peer, the
    /// gateway, which is what the pod's wire shows.
    #[test]
    fn the_connection_is_keyed_by_the_direct_peer_not_a_forwarded_address() {
        let mut forwarded = entry();
        let common = forwarded.common_properties.as_mut().unwrap();
        common.downstream_remote_address = Some(socket("203.0.113.7", 0));
        common.downstream_direct_remote_address = Some(socket("10.0.0.40", 50174));
        let log = normalise_http(&forwarded, &Reporter::default()).unwrap();
        assert_eq!(
            log.downstream_remote,
            Some(Endpoint::new("10.0.0.40", 50174))
        );
    }

    /// An inbound entry over Istio mTLS: the caller's SPIFFE identity is the
    /// URI SAN of the certificate it presented.
    #[test]
    fn mtls_entry_keeps_the_tls_version_and_the_peer_identity() {
        use envoy_types::pb::envoy::data::accesslog::v3::tls_properties::{
            CertificateProperties, certificate_properties::SubjectAltName,
        };
        let mut entry = entry();
        let san = |san| SubjectAltName { san: Some(san) };
        entry.common_properties.as_mut().unwrap().tls_properties = Some(TlsProperties {
            tls_version: TlsVersion::TlSv13 as i32,
            peer_certificate_properties: Some(CertificateProperties {
                subject_alt_name: vec![
                    san(San::Dns("client.demo".into())),
                    san(San::Uri("spiffe://cluster.local/ns/demo/sa/client".into())),
                ],
                ..CertificateProperties::default()
            }),
            ..TlsProperties::default()
        });
        let log = normalise_http(&entry, &Reporter::default()).unwrap();
        assert_eq!(log.tls_version, "TLSv1.3");
        assert_eq!(
            log.peer_uri_sans,
            ["spiffe://cluster.local/ns/demo/sa/client"]
        );
        let plaintext = normalise_http(&tests::entry(), &Reporter::default()).unwrap();
        assert_eq!(
            (
                plaintext.tls_version.as_str(),
                plaintext.peer_uri_sans.len()
            ),
            ("", 0)
        );
    }

    #[test]
    fn entry_without_common_properties_is_malformed() {
        let entry = HttpAccessLogEntry {
            common_properties: None,
            ..entry()
        };
        assert!(normalise_http(&entry, &Reporter::default()).is_none());
    }

    #[test]
    fn reporter_from_istio_metadata_or_node_id() {
        let mut metadata = Struct::default();
        metadata
            .fields
            .insert("NAME".into(), string_value("nginx-784u-r442"));
        metadata
            .fields
            .insert("NAMESPACE".into(), string_value("default"));
        let node = Node {
            id: "sidecar~10.0.0.135~other.ns~ns.svc.cluster.local".into(),
            metadata: Some(metadata),
            ..Node::default()
        };
        let reporter = Reporter::from_node(Some(&node), "http_envoy_accesslog");
        assert_eq!(reporter.pod.unwrap().name, "nginx-784u-r442");

        let node = Node {
            id: "sidecar~10.0.0.135~nginx-784u-r442.default~default.svc.cluster.local".into(),
            ..Node::default()
        };
        let pod = Reporter::from_node(Some(&node), "").pod.unwrap();
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str()),
            ("default", "nginx-784u-r442")
        );
        assert_eq!(Reporter::from_node(None, "").pod, None);
    }

    #[test]
    fn tcp_entry_is_a_connection() {
        let entry = TcpAccessLogEntry {
            common_properties: entry().common_properties,
            connection_properties: None,
        };
        let log = normalise_tcp(&entry, &Reporter::default()).unwrap();
        assert_eq!(log.protocol, "TCP");
        assert!(log.method.is_empty());
    }
}

/// The service over a real gRPC connection on loopback, with clients that
/// behave like Envoy's workers.
#[cfg(test)]
mod stream_tests {
    use std::{net::SocketAddr, sync::Arc, time::Duration};

    use apitrace_proto::{Event, event::Kind};
    use envoy_types::pb::envoy::{
        config::core::v3::Node,
        data::accesslog::v3::TcpAccessLogEntry,
        service::accesslog::v3::{
            StreamAccessLogsMessage,
            access_log_service_client::AccessLogServiceClient,
            stream_access_logs_message::{
                HttpAccessLogEntries, Identifier, LogEntries, TcpAccessLogEntries,
            },
        },
    };
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::transport::Channel;

    use super::{Als, tests::entry};
    use crate::{hub::Hub, peers::Peers};

    async fn serve(peers: Peers) -> (SocketAddr, Hub) {
        let hub = Hub::new(1024, Arc::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = Als::server(hub.clone(), Arc::new(peers));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (address, hub)
    }

    fn loopback_allowed() -> Peers {
        let mut peers = Peers::default();
        peers.allow("127.0.0.1".parse().unwrap(), None);
        peers
    }

    async fn client(address: SocketAddr) -> AccessLogServiceClient<Channel> {
        AccessLogServiceClient::connect(format!("http://{address}"))
            .await
            .unwrap()
    }

    fn identifier(pod: &str) -> Option<Identifier> {
        Some(Identifier {
            node: Some(Node {
                id: format!("sidecar~10.0.0.1~{pod}.default~default.svc.cluster.local"),
                ..Node::default()
            }),
            log_name: "http_envoy_accesslog".into(),
        })
    }

    fn http_logs(count: usize) -> Option<LogEntries> {
        Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: vec![entry(); count],
        }))
    }

    /// Sends `messages` as one stream, as an Envoy worker does, and waits for
    /// the stream to end.
    async fn stream(
        address: SocketAddr,
        messages: Vec<StreamAccessLogsMessage>,
    ) -> Result<(), tonic::Status> {
        client(address)
            .await
            .stream_access_logs(tokio_stream::iter(messages))
            .await
            .map(drop)
    }

    async fn drain(subscription: &mut crate::hub::Subscription, count: usize) -> Vec<Event> {
        let mut events = Vec::new();
        for _ in 0..count {
            let event = tokio::time::timeout(Duration::from_secs(5), subscription.next())
                .await
                .expect("the event arrives")
                .expect("the hub is open");
            events.push(event);
        }
        events
    }

    fn reporter(event: &Event) -> String {
        match &event.kind {
            Some(Kind::AccessLog(log)) => log
                .reporter
                .as_ref()
                .map(|pod| pod.name.clone())
                .unwrap_or_default(),
            other => panic!("not an access log: {other:?}"),
        }
    }

    #[tokio::test]
    async fn concurrent_streams_keep_their_own_reporter_and_reconnects_are_served() {
        let (address, hub) = serve(loopback_allowed()).await;
        let mut subscription = hub.subscribe();
        // Two workers of one sidecar and one of another, at once; each stream
        // names its node in its first message only.
        let streams = ["nginx", "nginx", "sleep"].map(|pod| {
            stream(
                address,
                vec![
                    StreamAccessLogsMessage {
                        identifier: identifier(pod),
                        log_entries: http_logs(2),
                    },
                    StreamAccessLogsMessage {
                        identifier: None,
                        log_entries: http_logs(1),
                    },
                ],
            )
        });
        for result in futures::future::join_all(streams).await {
            result.unwrap();
        }
        let mut reporters: Vec<String> = drain(&mut subscription, 9)
            .await
            .iter()
            .map(reporter)
            .collect();
        reporters.sort();
        assert_eq!(
            reporters,
            ["nginx"; 6]
                .into_iter()
                .chain(["sleep"; 3])
                .collect::<Vec<_>>()
        );
        // A worker that reconnects (Envoy restarted, the stream was cut) opens a
        // new stream with a new first message.
        stream(
            address,
            vec![StreamAccessLogsMessage {
                identifier: identifier("nginx"),
                log_entries: Some(LogEntries::TcpLogs(TcpAccessLogEntries {
                    log_entry: vec![TcpAccessLogEntry {
                        common_properties: entry().common_properties,
                        connection_properties: None,
                    }],
                })),
            }],
        )
        .await
        .unwrap();
        let reconnected = drain(&mut subscription, 1).await;
        let Some(Kind::AccessLog(log)) = &reconnected[0].kind else {
            unreachable!()
        };
        assert_eq!(log.protocol, "TCP");
        assert_eq!(hub.counters().snapshot().access_logs, 10);
    }

    /// A stream that sends bytes which are not an access-log message ends,
    /// counted; a stream next to it carries on.
    #[tokio::test]
    async fn a_garbage_stream_is_counted_and_the_others_keep_flowing() {
        let (address, hub) = serve(loopback_allowed()).await;
        let mut subscription = hub.subscribe();
        // A message whose field 1 (the identifier, a message) is not a message.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Garbage {
            #[prost(bytes = "vec", tag = "1")]
            bytes: Vec<u8>,
        }
        let mut grpc = tonic::client::Grpc::new(
            Channel::from_shared(format!("http://{address}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        grpc.ready().await.unwrap();
        let garbage = grpc
            .client_streaming(
                tonic::Request::new(tokio_stream::iter([Garbage {
                    bytes: vec![0xff; 40],
                }])),
                "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
                    .parse()
                    .unwrap(),
                tonic_prost::ProstCodec::<Garbage, ()>::default(),
            )
            .await;
        assert!(garbage.is_err(), "the garbage stream was refused");
        stream(
            address,
            vec![StreamAccessLogsMessage {
                identifier: identifier("nginx"),
                log_entries: http_logs(3),
            }],
        )
        .await
        .unwrap();
        assert_eq!(drain(&mut subscription, 3).await.len(), 3);
        let counters = hub.counters().snapshot();
        assert_eq!(
            (
                counters.access_logs,
                counters.access_logs_malformed,
                counters.access_log_streams
            ),
            (3, 1, 2),
            "the garbage stream and the good one were both accepted"
        );
    }

    #[tokio::test]
    async fn streams_from_outside_the_session_are_refused() {
        let (address, hub) = serve(Peers::default()).await;
        let refused = stream(
            address,
            vec![StreamAccessLogsMessage {
                identifier: identifier("intruder"),
                log_entries: http_logs(1),
            }],
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let counters = hub.counters().snapshot();
        assert_eq!(
            (
                counters.access_logs,
                counters.access_log_streams,
                counters.access_log_streams_refused
            ),
            (0, 0, 1)
        );
    }
}
