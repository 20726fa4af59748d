//! What the client pod's app sends: the demo's requests to the server's
//! Service, one connection each (as `curl` from the paper's sleep pod) or all
//! on one keep-alive connection, over IPv4 or IPv6, with a bearer token; and
//! with `--bad-traffic`, traffic apitrace must survive in between. The pod's
//! iptables hand each connection to its sidecar. With `--protocol`, the calls
//! are HTTP/1.1 GETs, h2c GETs, gRPC calls, or each in turn.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{
    grpc,
    http::{self, CLIENT_PATHS, Connection},
    jwt,
    mesh::PortProtocol,
    plan::Traffic,
    topology::Pod,
};
use crate::args::DemoProtocol;

/// The port of the app behind the server pod's sidecar, and of its Service.
pub const APP_PORT: u16 = 8080;

/// How the server's Service names its port for what the client speaks: a
/// port that carries HTTP/2 must say so for the sidecars to speak HTTP/2 on
/// it (the mesh does not upgrade an `http` port).
pub fn port_protocol(protocol: DemoProtocol) -> PortProtocol {
    match protocol {
        DemoProtocol::Http1 => PortProtocol::Http,
        DemoProtocol::H2c | DemoProtocol::Mixed => PortProtocol::Http2,
        DemoProtocol::Grpc => PortProtocol::Grpc,
    }
}

/// What one call is sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    Http1,
    H2c,
    Grpc,
}

impl Speaks {
    /// The `index`th call's: with `mixed`, each in turn.
    fn of(protocol: DemoProtocol, index: usize) -> Self {
        match protocol {
            DemoProtocol::Http1 => Self::Http1,
            DemoProtocol::H2c => Self::H2c,
            DemoProtocol::Grpc => Self::Grpc,
            DemoProtocol::Mixed => [Self::Http1, Self::H2c, Self::Grpc][index % 3],
        }
    }
}

/// The client's open connections, one of each kind, reused with
/// `--keep-alive`.
#[derive(Default)]
struct Open {
    http1: Option<Connection>,
    h2c: Option<Connection>,
    grpc: Option<tonic::transport::Channel>,
}

/// Sends `traffic` from `client` to `address` (the Service), naming it
/// `authority`. Returns how many calls it made that the sidecar accepts as
/// HTTP requests: each should become a record.
pub async fn send(
    client: Pod,
    address: SocketAddr,
    authority: String,
    traffic: Traffic,
    now_unix: u64,
) -> anyhow::Result<u32> {
    let token = traffic
        .token
        .clone()
        .unwrap_or_else(|| jwt::demo_token(now_unix));
    let authorization = format!("Bearer {token}");
    let netns = client.netns_path();
    let mut open = Open::default();
    let mut calls = 0;
    for index in 0..traffic.requests as usize {
        let path = CLIENT_PATHS[index % CLIENT_PATHS.len()];
        let speaks = Speaks::of(traffic.protocol, index);
        if speaks == Speaks::Grpc {
            let call = grpc::CALLS[index % grpc::CALLS.len()];
            let channel = match open.grpc.as_ref() {
                Some(channel) => channel.clone(),
                None => open
                    .grpc
                    .insert(
                        http::channel_in(&netns, address, &authority)
                            .await
                            .with_context(|| {
                                format!("the client pod cannot open a gRPC channel to {address}")
                            })?,
                    )
                    .clone(),
            };
            let outcome = grpc::call(channel, call, &authorization)
                .await
                .with_context(|| format!("the client pod cannot make the gRPC call {call:?}"))?;
            if outcome != call.expected() {
                anyhow::bail!(
                    "the gRPC call {call:?} came back with {outcome:?} instead of what the server answers ({:?}): the mesh failed it",
                    call.expected()
                );
            }
        } else {
            let slot = if speaks == Speaks::H2c {
                &mut open.h2c
            } else {
                &mut open.http1
            };
            let connection = match slot {
                Some(connection) => connection,
                None => slot.insert(connect(&netns, address, speaks).await?),
            };
            connection
                .get(&authority, path, Some(&authorization))
                .await
                .with_context(|| format!("GET {path} from the client pod failed"))?;
        }
        calls += 1;
        if !traffic.keep_alive {
            open = Open::default();
            // Spread one-connection-per-request traffic out a little, as a
            // client running curl in a loop would.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if traffic.bad_traffic {
            calls += send_bad(
                Bad::ALL[index % Bad::ALL.len()],
                &netns,
                address,
                &authority,
            )
            .await?;
        }
    }
    Ok(calls)
}

async fn connect(netns: &Path, address: SocketAddr, speaks: Speaks) -> anyhow::Result<Connection> {
    let stream = http::connect_in(netns, address)
        .await
        .with_context(|| format!("the client pod cannot connect to {address}"))?;
    let connection = if speaks == Speaks::H2c {
        Connection::http2_over(stream).await
    } else {
        Connection::over(stream).await
    };
    connection.with_context(|| format!("the client pod cannot speak HTTP to {address}"))
}

/// Traffic that is not a well-formed API call.
#[derive(Debug, Clone, Copy)]
enum Bad {
    /// A request line with a version that does not exist.
    MalformedRequestLine,
    /// Bytes that are not HTTP: the start of a TLS ClientHello.
    NotHttp,
    /// A 64 KiB header, over Envoy's 60 KiB limit.
    HugeHeader,
    /// A well-formed request whose bearer JWT's header is not base64url.
    MalformedJwt,
}

impl Bad {
    const ALL: [Self; 4] = [
        Self::MalformedRequestLine,
        Self::NotHttp,
        Self::HugeHeader,
        Self::MalformedJwt,
    ];
}

/// Sends one piece of bad traffic and returns how many HTTP calls it made
/// that the sidecar accepts (1 for a bad JWT, 0 otherwise).
async fn send_bad(
    bad: Bad,
    netns: &Path,
    address: SocketAddr,
    authority: &str,
) -> anyhow::Result<u32> {
    let bytes = match bad {
        Bad::MalformedRequestLine => {
            format!("GET /status HTTP/7.3\r\nHost: {authority}\r\n\r\n").into_bytes()
        }
        Bad::NotHttp => {
            let mut hello = vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ];
            hello.resize(512, 0xa5);
            hello
        }
        Bad::HugeHeader => format!(
            "GET /status HTTP/1.1\r\nHost: {authority}\r\nx-padding: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        )
        .into_bytes(),
        Bad::MalformedJwt => {
            let mut connection = connect(netns, address, Speaks::Http1).await?;
            connection
                .get(
                    authority,
                    "/status",
                    Some("Bearer eyJ!!!.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJl"),
                )
                .await
                .context("a request with a bad JWT failed")?;
            return Ok(1);
        }
    };
    let mut stream = http::connect_in(netns, address)
        .await
        .with_context(|| format!("the client pod cannot connect to {address}"))?;
    // The sidecar answers with an error and closes, or resets, or passes what
    // is not HTTP through: all are fine; what matters is that nothing on
    // apitrace's side breaks. The client waits for the answer before closing,
    // as an HTTP client does: a sidecar that sees the caller close before it
    // could tell the protocol drops the connection unanswered.
    let _ = stream.write_all(&bytes).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer)).await;
    Ok(0)
}
