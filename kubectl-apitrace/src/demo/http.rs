//! The demo's HTTP: the app in the server pod, requests from the client pod,
//! and readiness checks, over sockets created inside the pods' namespaces.

use std::{convert::Infallible, net::SocketAddr, path::Path, time::Duration};

use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    client::conn::{http1, http2},
    header,
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpSocket, TcpStream},
};
use tower::ServiceExt as _;

use super::grpc;

/// A listening socket inside the network namespace at `netns`: a socket keeps
/// the namespace it was created in, wherever it is used from.
pub fn listen_in(netns: &Path, address: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = apitrace_netns::run_in(netns, || std::net::TcpListener::bind(address))
        .map_err(std::io::Error::other)??;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// A connection made from inside the network namespace at `netns`: the socket
/// is created there and connects from the runtime, so that a slow handshake
/// (`--loss` drops SYNs) never holds up the CLI's one thread. The timeout
/// leaves room for two SYN retransmissions (after 1 s and 3 s).
pub async fn connect_in(netns: &Path, address: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = apitrace_netns::run_in(netns, || {
        if address.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    })
    .map_err(std::io::Error::other)??;
    tokio::time::timeout(Duration::from_secs(8), socket.connect(address))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from {address} within 8 s"),
            )
        })?
}

/// HTTP/1.1 requests pipelined on one connection, as h2load's `-m` sends
/// them over HTTP/1.1: GETs written together in one write, the answers read
/// back in order (RFC 9112 section 9.3.2). hyper's client sends one request
/// at a time, so the demo writes and reads these itself.
pub struct Pipelined {
    stream: TcpStream,
    /// What was read past the last answer.
    unread: Vec<u8>,
}

impl Pipelined {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            unread: Vec::new(),
        }
    }

    /// Sends a GET for each of `paths` in one write and returns their
    /// answers' statuses, in order.
    pub async fn get_all(
        &mut self,
        authority: &str,
        paths: &[&str],
        authorization: &str,
    ) -> std::io::Result<Vec<u16>> {
        let requests: String = paths
            .iter()
            .map(|path| {
                format!(
                    "GET {path} HTTP/1.1\r\nhost: {authority}\r\n\
                     authorization: {authorization}\r\n\r\n"
                )
            })
            .collect();
        self.stream.write_all(requests.as_bytes()).await?;
        let mut statuses = Vec::with_capacity(paths.len());
        for _ in paths {
            statuses.push(self.read_answer().await?);
        }
        Ok(statuses)
    }

    /// Reads one answer: its head, and a body of its `content-length` (the
    /// sidecar's answers to these GETs carry one).
    async fn read_answer(&mut self) -> std::io::Result<u16> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.unread) {
                Ok(httparse::Status::Complete(head)) => {
                    let status = response.code.unwrap_or_default();
                    let mut length = None;
                    for header in response.headers.iter() {
                        if header.name.eq_ignore_ascii_case("transfer-encoding") {
                            return Err(invalid(
                                "a pipelined answer came chunked, \
                                 which the demo's client does not read"
                                    .into(),
                            ));
                        }
                        if header.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(header.value)
                                .ok()
                                .and_then(|value| value.trim().parse::<usize>().ok());
                        }
                    }
                    let end = head + length.unwrap_or(0);
                    while self.unread.len() < end {
                        self.fill().await?;
                    }
                    self.unread.drain(..end);
                    return Ok(status);
                }
                Ok(httparse::Status::Partial) => self.fill().await?,
                Err(error) => {
                    return Err(invalid(format!("a pipelined answer is not HTTP: {error}")));
                }
            }
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut buffer = [0u8; 16 * 1024];
        let read = tokio::time::timeout(Duration::from_secs(8), self.stream.read(&mut buffer))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 8 s")
            })??;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.unread.extend_from_slice(&buffer[..read]);
        Ok(())
    }
}

/// A gRPC channel to `address`, naming `authority`, each of whose
/// connections is made from inside the network namespace at `netns`: as a
/// port-forward reaches a pod, or as the client pod's app calls a Service.
pub async fn channel_in(
    netns: &Path,
    address: SocketAddr,
    authority: &str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let netns = netns.to_owned();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let netns = netns.clone();
        async move {
            let stream = connect_in(&netns, address).await?;
            // What tonic's own connector does (`Endpoint`'s `tcp_nodelay`,
            // on unless turned off, in tonic/src/transport/channel/endpoint.rs),
            // which a custom connector bypasses: with Nagle's algorithm on, a
            // unary call's second small write waits for the server's delayed
            // ACK, about 40 ms per call.
            stream.set_nodelay(true)?;
            std::io::Result::Ok(TokioIo::new(stream))
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{authority}"))?
        .connect_with_connector(connector)
        .await
}

/// The app behind the sidecar: a small API, like the nginx of the paper's
/// example, and the demo's gRPC service ([`grpc::Shop`]) on the same port,
/// over HTTP/1.1 or HTTP/2 with prior knowledge (what the sidecar sends it
/// for an `http2` or `grpc` port), answering until the listener is dropped.
pub async fn serve_app(listener: TcpListener) {
    let shop = grpc::OrdersServer::new(grpc::Shop);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shop = shop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let shop = shop.clone();
                async move {
                    if grpc::is_grpc(&request) {
                        shop.oneshot(request).await
                    } else {
                        Ok::<_, Infallible>(
                            app_response(request.uri().path()).map(tonic::body::Body::new),
                        )
                    }
                }
            });
            // A client that goes away mid-request is not the app's problem.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn app_response(path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/status" => (StatusCode::OK, r#"{"status":"ok"}"#),
        "/api/orders" => (StatusCode::OK, r#"[{"id":41},{"id":42}]"#),
        "/api/orders/42" => (StatusCode::OK, r#"{"id":42,"item":"tea"}"#),
        "/api/users/me" => (StatusCode::OK, r#"{"user":"alice"}"#),
        _ => (StatusCode::NOT_FOUND, r#"{"error":"not found"}"#),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The paths the client pod requests, in turn.
pub const CLIENT_PATHS: &[&str] = &[
    "/status",
    "/api/orders",
    "/api/orders/42",
    "/api/users/me",
    "/missing",
];

/// An HTTP connection from a pod: HTTP/1.1, carrying one request after
/// another, or HTTP/2 with prior knowledge (h2c), as a client that knows its
/// server speaks it opens one.
pub enum Connection {
    Http1(http1::SendRequest<Empty<Bytes>>),
    Http2(http2::SendRequest<Empty<Bytes>>),
}

impl Connection {
    pub async fn over(stream: TcpStream) -> Result<Self, hyper::Error> {
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self::Http1(sender))
    }

    /// An h2c connection: the HTTP/2 preface, no upgrade.
    pub async fn http2_over(stream: TcpStream) -> Result<Self, hyper::Error> {
        let (sender, connection) =
            http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self::Http2(sender))
    }

    /// Sends a GET and returns the status and body.
    pub async fn get(
        &mut self,
        authority: &str,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<(StatusCode, Bytes), hyper::Error> {
        let mut request = match self {
            Self::Http1(_) => Request::get(path).header(header::HOST, authority),
            // HTTP/2 names the authority in the request's `:authority`.
            Self::Http2(_) => Request::get(format!("http://{authority}{path}")),
        };
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .unwrap_or_else(|_| unreachable!("a path and two header values of ours are valid"));
        let response = match self {
            Self::Http1(sender) => sender.send_request(request).await?,
            Self::Http2(sender) => sender.send_request(request).await?,
        };
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_answers_its_api_and_404_otherwise() {
        assert_eq!(app_response("/status").status(), StatusCode::OK);
        assert_eq!(app_response("/missing").status(), StatusCode::NOT_FOUND);
        assert!(
            CLIENT_PATHS
                .iter()
                .any(|path| app_response(path).status() == StatusCode::NOT_FOUND)
        );
    }
}
