//! A scripted API server for tests: kube's `tower_test` mock, answering an
//! exact sequence of requests. A request out of order, one too many or one
//! missing fails the test and says which.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use http_body_util::BodyExt as _;
use kube::{Client, client::Body};
use serde_json::{Value, json};

/// One request the code under test must make next, and the answer it gets.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: Method,
    /// Path and query, exactly as the client sends them.
    pub uri: String,
    pub status: u16,
    pub body: Value,
    /// Whether `body` is a watch's lines of events (a string sent as it is).
    pub raw: bool,
}

pub fn ok(method: Method, uri: impl Into<String>, body: Value) -> Exchange {
    Exchange {
        method,
        uri: uri.into(),
        status: 200,
        body,
        raw: false,
    }
}

/// A watch answered with `events` (each `{"type": ..., "object": ...}`), after
/// which the server ends the stream.
pub fn watch(uri: impl Into<String>, events: &[Value]) -> Exchange {
    let lines: String = events.iter().map(|event| format!("{event}\n")).collect();
    Exchange {
        method: Method::GET,
        uri: uri.into(),
        status: 200,
        body: Value::String(lines),
        raw: true,
    }
}

/// An error answer, as the API server words them.
pub fn fail(method: Method, uri: impl Into<String>, code: u16) -> Exchange {
    let reason = match code {
        404 => "NotFound",
        409 => "Conflict",
        403 => "Forbidden",
        _ => "InternalError",
    };
    Exchange {
        method,
        uri: uri.into(),
        raw: false,
        status: code,
        body: json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("injected {code}"), "reason": reason, "code": code,
        }),
    }
}

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub uri: String,
    pub body: Option<Value>,
}

/// A client whose requests must follow `script`; `finish` checks nothing else
/// was asked and returns what was received.
pub struct MockApi {
    pub client: Client,
    server: tokio::task::JoinHandle<()>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl MockApi {
    pub fn new(script: Vec<Exchange>) -> Self {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let server = tokio::spawn(async move {
            let mut handle = std::pin::pin!(handle);
            for (index, exchange) in script.into_iter().enumerate() {
                let Some((request, send)) = handle.next_request().await else {
                    panic!(
                        "request #{index} never came: expected {} {}",
                        exchange.method, exchange.uri
                    );
                };
                let got = receive(request).await;
                log.lock().unwrap().push(got.clone());
                assert_eq!(
                    (&got.method, got.uri.as_str()),
                    (&exchange.method, exchange.uri.as_str()),
                    "request #{index} was not the one expected"
                );
                send.send_response(
                    Response::builder()
                        .status(exchange.status)
                        .header("content-type", "application/json")
                        .body(Body::from(match (&exchange.body, exchange.raw) {
                            (Value::String(lines), true) => lines.clone().into_bytes(),
                            (body, _) => serde_json::to_vec(body).unwrap(),
                        }))
                        .unwrap(),
                );
            }
            if let Some((request, _)) = handle.next_request().await {
                let got = receive(request).await;
                panic!(
                    "unexpected request after the script: {} {}",
                    got.method, got.uri
                );
            }
        });
        Self {
            client: Client::new(service, "default"),
            server,
            received,
        }
    }

    /// Drops the client, waits for the script to be played out and returns
    /// every request received.
    pub async fn finish(self) -> Vec<Received> {
        drop(self.client);
        if let Err(error) = self.server.await {
            std::panic::resume_unwind(error.into_panic());
        }
        Arc::try_unwrap(self.received)
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

async fn receive(request: Request<Body>) -> Received {
    let method = request.method().clone();
    let uri = request
        .uri()
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    let bytes = request.into_body().collect().await.unwrap().to_bytes();
    Received {
        method,
        uri,
        body: serde_json::from_slice(&bytes).ok(),
    }
}
