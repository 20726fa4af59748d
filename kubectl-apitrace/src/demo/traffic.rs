//! What the client pod's app sends: the demo's requests to the server's
//! Service, one connection each (as `curl` from the paper's sleep pod), all
//! on one keep-alive connection, or concurrently on several connections with
//! several streams in flight on each (as h2load), over IPv4 or IPv6, with a
//! bearer token; and
//! with `--bad-traffic`, traffic apitrace must survive in between. The pod's
//! iptables hand each connection to its sidecar. With `--protocol`, the calls
//! are HTTP/1.1 GETs, h2c GETs, gRPC calls, or each in turn.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{
    grpc,
    http::{self, CLIENT_PATHS, Connection},
    jwt,
    mesh::PortProtocol,
    plan::{Connections, Traffic},
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// A connection of the client's, open for calls of one kind.
enum Open {
    Http(Connection),
    Grpc(tonic::transport::Channel),
}

/// The client's open connections, one of each kind, reused with
/// `--keep-alive`.
#[derive(Default)]
struct OneOfEach {
    http1: Option<Open>,
    h2c: Option<Open>,
    grpc: Option<Open>,
}

impl OneOfEach {
    fn slot(&mut self, speaks: Speaks) -> &mut Option<Open> {
        match speaks {
            Speaks::Http1 => &mut self.http1,
            Speaks::H2c => &mut self.h2c,
            Speaks::Grpc => &mut self.grpc,
        }
    }
}

/// The client pod's app: where it calls, and with which credentials.
struct Client {
    netns: PathBuf,
    address: SocketAddr,
    authority: String,
    authorization: String,
    bad_traffic: bool,
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
    let client = Client {
        netns: client.netns_path(),
        address,
        authority,
        authorization: format!("Bearer {token}"),
        bad_traffic: traffic.bad_traffic,
    };
    let (protocol, requests) = (traffic.protocol, traffic.requests);
    match traffic.connections {
        Connections::EachCall => client.one_after_another(protocol, requests, false).await,
        Connections::KeepAlive => client.one_after_another(protocol, requests, true).await,
        Connections::Concurrent {
            connections,
            streams,
        } => {
            client
                .concurrently(protocol, requests, connections, streams)
                .await
        }
    }
}

impl Client {
    /// Each call after the one before, on a connection of its kind kept
    /// alive or made for it.
    async fn one_after_another(
        &self,
        protocol: DemoProtocol,
        requests: u32,
        keep_alive: bool,
    ) -> anyhow::Result<u32> {
        let mut open = OneOfEach::default();
        let mut calls = 0;
        for index in 0..requests as usize {
            let speaks = Speaks::of(protocol, index);
            let slot = open.slot(speaks);
            let connection = match slot {
                Some(connection) => connection,
                None => slot.insert(self.open(speaks).await?),
            };
            self.call(connection, index).await?;
            calls += 1;
            if !keep_alive {
                open = OneOfEach::default();
                // Spread one-connection-per-request traffic out a little, as
                // a client running curl in a loop would.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            calls += self.bad_after(index).await?;
        }
        Ok(calls)
    }

    /// The calls dealt in turn to `connections` connections of each kind
    /// they speak, all open at once, as h2load's clients are: up to
    /// `streams` calls in flight on each HTTP/2 connection, one at a time on
    /// each HTTP/1.1 one.
    async fn concurrently(
        &self,
        protocol: DemoProtocol,
        requests: u32,
        connections: u32,
        streams: u32,
    ) -> anyhow::Result<u32> {
        let calls = futures::future::try_join_all(
            deal(protocol, requests, connections)
                .into_iter()
                .map(|((speaks, _), calls)| self.lane(speaks, calls, streams as usize)),
        )
        .await?;
        Ok(calls.into_iter().sum())
    }

    /// One connection's share of the calls, in order.
    async fn lane(&self, speaks: Speaks, calls: Vec<usize>, streams: usize) -> anyhow::Result<u32> {
        if speaks == Speaks::Http1 && streams > 1 {
            return self.pipelined(calls, streams).await;
        }
        match self.open(speaks).await? {
            // HTTP/1.1 answers one request at a time: the calls take turns.
            mut open @ Open::Http(Connection::Http1(_)) => {
                let mut accepted = 0;
                for index in calls {
                    self.call(&mut open, index).await?;
                    accepted += 1 + self.bad_after(index).await?;
                }
                Ok(accepted)
            }
            Open::Http(Connection::Http2(sender)) => {
                self.in_flight(calls, streams, || {
                    Open::Http(Connection::Http2(sender.clone()))
                })
                .await
            }
            Open::Grpc(channel) => {
                self.in_flight(calls, streams, || Open::Grpc(channel.clone()))
                    .await
            }
        }
    }

    /// `calls` on one HTTP/1.1 connection, `depth` requests pipelined in
    /// each write, as h2load's `-m` sends them over HTTP/1.1: the sidecar
    /// reads them from one segment and answers them in order.
    async fn pipelined(&self, calls: Vec<usize>, depth: usize) -> anyhow::Result<u32> {
        let address = self.address;
        let stream = http::connect_in(&self.netns, address)
            .await
            .with_context(|| format!("the client pod cannot connect to {address}"))?;
        let mut connection = http::Pipelined::new(stream);
        let mut accepted = 0;
        for batch in calls.chunks(depth) {
            let paths: Vec<&str> = batch
                .iter()
                .map(|index| CLIENT_PATHS[index % CLIENT_PATHS.len()])
                .collect();
            connection
                .get_all(&self.authority, &paths, &self.authorization)
                .await
                .with_context(|| {
                    format!("the pipelined GETs {paths:?} from the client pod failed")
                })?;
            for &index in batch {
                accepted += 1 + self.bad_after(index).await?;
            }
        }
        Ok(accepted)
    }

    /// `calls` on one HTTP/2 connection, up to `streams` at once, each on
    /// a handle of its own from `handle`, so each is a stream of its own:
    /// the next starts as soon as one ends, as h2load's `-m` keeps them.
    async fn in_flight(
        &self,
        calls: Vec<usize>,
        streams: usize,
        handle: impl Fn() -> Open,
    ) -> anyhow::Result<u32> {
        futures::stream::iter(calls)
            .map(|index| {
                let mut open = handle();
                async move {
                    self.call(&mut open, index).await?;
                    Ok::<_, anyhow::Error>(1 + self.bad_after(index).await?)
                }
            })
            .buffer_unordered(streams)
            .try_fold(0, |sum, accepted| async move { Ok(sum + accepted) })
            .await
    }

    /// A connection for calls that speak `speaks`.
    async fn open(&self, speaks: Speaks) -> anyhow::Result<Open> {
        let address = self.address;
        if speaks == Speaks::Grpc {
            let channel = http::channel_in(&self.netns, address, &self.authority)
                .await
                .with_context(|| {
                    format!("the client pod cannot open a gRPC channel to {address}")
                })?;
            return Ok(Open::Grpc(channel));
        }
        let connection = connect(&self.netns, address, speaks).await?;
        Ok(Open::Http(connection))
    }

    /// Makes the `index`th call on `open`: a gRPC call on a channel, a GET
    /// on an HTTP connection.
    async fn call(&self, open: &mut Open, index: usize) -> anyhow::Result<()> {
        match open {
            Open::Grpc(channel) => {
                let call = grpc::CALLS[index % grpc::CALLS.len()];
                let outcome = grpc::call(channel.clone(), call, &self.authorization)
                    .await
                    .with_context(|| {
                        format!("the client pod cannot make the gRPC call {call:?}")
                    })?;
                if outcome != call.expected() {
                    anyhow::bail!(
                        "the gRPC call {call:?} came back with {outcome:?} instead of what the server answers ({:?}): the mesh failed it",
                        call.expected()
                    );
                }
            }
            Open::Http(connection) => {
                let path = CLIENT_PATHS[index % CLIENT_PATHS.len()];
                connection
                    .get(&self.authority, path, Some(&self.authorization))
                    .await
                    .with_context(|| format!("GET {path} from the client pod failed"))?;
            }
        }
        Ok(())
    }

    /// With `--bad-traffic`, the bad traffic of the `index`th call's turn,
    /// sent after it; how many HTTP calls it made that the sidecar accepts.
    async fn bad_after(&self, index: usize) -> anyhow::Result<u32> {
        if !self.bad_traffic {
            return Ok(0);
        }
        send_bad(
            Bad::ALL[index % Bad::ALL.len()],
            &self.netns,
            self.address,
            &self.authority,
        )
        .await
    }
}

/// The calls by the connection they go on: each kind's calls dealt in turn
/// to its `connections` connections.
fn deal(
    protocol: DemoProtocol,
    requests: u32,
    connections: u32,
) -> BTreeMap<(Speaks, u32), Vec<usize>> {
    let mut lanes: BTreeMap<(Speaks, u32), Vec<usize>> = BTreeMap::new();
    let mut dealt: BTreeMap<Speaks, u32> = BTreeMap::new();
    for index in 0..requests as usize {
        let speaks = Speaks::of(protocol, index);
        let turn = dealt.entry(speaks).or_default();
        lanes
            .entry((speaks, *turn % connections))
            .or_default()
            .push(index);
        *turn += 1;
    }
    lanes
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kinds_calls_are_dealt_in_turn_to_its_connections() {
        let lanes = deal(DemoProtocol::H2c, 5, 2);
        assert_eq!(
            lanes,
            BTreeMap::from([
                ((Speaks::H2c, 0), vec![0, 2, 4]),
                ((Speaks::H2c, 1), vec![1, 3]),
            ])
        );
        // With mixed, every kind gets its own connections: 2 of each here.
        let lanes = deal(DemoProtocol::Mixed, 12, 2);
        assert_eq!(lanes.len(), 6);
        assert_eq!(lanes[&(Speaks::Http1, 0)], vec![0, 6]);
        assert_eq!(lanes[&(Speaks::Http1, 1)], vec![3, 9]);
        assert_eq!(lanes[&(Speaks::Grpc, 1)], vec![5, 11]);
        // More connections than calls: only those with a call are opened.
        assert_eq!(deal(DemoProtocol::Grpc, 2, 8).len(), 2);
    }
}
