//! The probe's plain-HTTP port: where WASM filters post their batches, where
//! istio-agent downloads the filter module, and `/healthz` and `/metrics`.
//!
//! HTTP/1.1 because that is what `dispatch_http_call` and the agent's fetcher
//! speak without extra cluster configuration.

use std::{net::SocketAddr, sync::Arc};

use apitrace_proto::{PodRef, SESSION_TOKEN_HEADER, WASM_INGEST_PATH, WasmBatch, event::Kind};
use axum::{
    Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use prost::{DecodeError, Message as _};

use crate::{counters::Counters, hub::Hub, peers::Peers, session::Session};

/// Largest batch a filter may post. The filter's own budget is 1 MiB of events;
/// this leaves room for a larger configured budget without allowing unbounded
/// bodies.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

/// The embedded filter module and where it is served.
#[derive(Clone, Copy)]
pub struct Module {
    pub bytes: &'static [u8],
    pub sha256: &'static str,
}

impl Module {
    /// The URL path of the module: unique per build, so that a sidecar's module
    /// cache, keyed by URL, never serves a stale module.
    pub fn path(&self) -> String {
        format!("/wasm/apitrace-filter-{}.wasm", self.sha256)
    }
}

struct Ingest {
    hub: Hub,
    peers: Arc<Peers>,
    session: Session,
    module: Module,
}

pub fn router(hub: Hub, peers: Arc<Peers>, session: Session, module: Module) -> Router {
    let module_path = module.path();
    let state = Arc::new(Ingest {
        hub,
        peers,
        session,
        module,
    });
    Router::new()
        .route(WASM_INGEST_PATH, post(wasm_events))
        .route(&module_path, get(wasm_module))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
        .with_state(state)
}

async fn wasm_events(
    State(ingest): State<Arc<Ingest>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> StatusCode {
    let counters = ingest.hub.counters();
    let token = headers
        .get(SESSION_TOKEN_HEADER)
        .map(|value| value.as_bytes());
    if !ingest.peers.allows(peer.ip()) || !token.is_some_and(|token| ingest.session.verify(token)) {
        Counters::increment(&counters.wasm_batches_refused);
        return StatusCode::FORBIDDEN;
    }
    // A batch over the size limit (or cut short) is lost like a malformed
    // one, and counted with them, once the sender is known to be a filter.
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            Counters::increment(&counters.wasm_batches_malformed);
            return rejection.status();
        }
    };
    let reporter = ingest.peers.pod_of(peer.ip());
    let Ok(batch) = read_batch(&body, reporter) else {
        Counters::increment(&counters.wasm_batches_malformed);
        return StatusCode::BAD_REQUEST;
    };
    Counters::add(&counters.wasm_dropped_in_filter, batch.dropped);
    for event in batch.events {
        Counters::increment(&counters.wasm_events);
        ingest.hub.publish(Kind::Wasm(event));
    }
    StatusCode::NO_CONTENT
}

/// A filter's batch, each event marked with the pod that sent it: the
/// sender's address says who, never the payload, so a filter cannot speak
/// for another pod.
pub fn read_batch(body: &[u8], reporter: Option<&PodRef>) -> Result<WasmBatch, DecodeError> {
    let mut batch = WasmBatch::decode(body)?;
    for event in &mut batch.events {
        event.reporter = reporter.cloned();
    }
    Ok(batch)
}

async fn wasm_module(State(ingest): State<Arc<Ingest>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/wasm")],
        ingest.module.bytes,
    )
}

async fn metrics(State(ingest): State<Arc<Ingest>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ingest.hub.counters().prometheus(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use apitrace_proto::{PodRef, WasmEvent};
    use axum::{body::Body, http::Request};
    use tower::ServiceExt as _;

    const CLIENT: &str = "198.18.0.3:40000";

    fn setup() -> (Router, Hub) {
        let hub = Hub::new(16, Arc::default());
        let mut peers = Peers::default();
        peers.allow(
            "198.18.0.3".parse().unwrap(),
            Some(PodRef {
                namespace: "demo".into(),
                name: "server".into(),
            }),
        );
        let module = Module {
            bytes: b"\0asm",
            sha256: "abc",
        };
        let router = router(
            hub.clone(),
            Arc::new(peers),
            Session::new("s".into(), "t0k".into()),
            module,
        );
        (router, hub)
    }

    fn post(body: Vec<u8>, token: Option<&str>, peer: &str) -> Request<Body> {
        let mut request = Request::post(WASM_INGEST_PATH);
        if let Some(token) = token {
            request = request.header(SESSION_TOKEN_HEADER, token);
        }
        let mut request = request.body(Body::from(body)).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        request
    }

    fn batch() -> Vec<u8> {
        WasmBatch {
            events: vec![WasmEvent {
                request_id: "r1".into(),
                ..WasmEvent::default()
            }],
            dropped: 2,
        }
        .encode_to_vec()
    }

    #[tokio::test]
    async fn a_batch_from_a_session_peer_is_published_with_its_reporter() {
        let (router, hub) = setup();
        let mut subscription = hub.subscribe();
        let response = router
            .oneshot(post(batch(), Some("t0k"), CLIENT))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let event = subscription.next().await.unwrap();
        let Some(Kind::Wasm(event)) = event.kind else {
            panic!("{event:?}")
        };
        assert_eq!(event.request_id, "r1");
        assert_eq!(event.reporter.unwrap().name, "server");
        let counters = hub.counters().snapshot();
        assert_eq!(
            (counters.wasm_events, counters.wasm_dropped_in_filter),
            (1, 2)
        );
    }

    #[tokio::test]
    async fn wrong_token_missing_token_and_strangers_are_refused() {
        let (router, hub) = setup();
        for request in [
            post(batch(), Some("nope"), CLIENT),
            post(batch(), None, CLIENT),
            post(batch(), Some("t0k"), "198.18.0.9:1"),
        ] {
            let response = router.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
        }
        let counters = hub.counters().snapshot();
        assert_eq!(
            (counters.wasm_batches_refused, counters.wasm_events),
            (3, 0)
        );
    }

    #[tokio::test]
    async fn garbage_is_counted_and_refused() {
        let (router, hub) = setup();
        let response = router
            .oneshot(post(vec![0xff; 7], Some("t0k"), CLIENT))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(hub.counters().snapshot().wasm_batches_malformed, 1);
    }

    /// A batch over the limit is lost: counted when a filter sent it,
    /// refused like any other post when a stranger did.
    #[tokio::test]
    async fn an_oversized_batch_is_counted_as_lost() {
        let (router, hub) = setup();
        let oversized = || vec![0; MAX_BATCH_BYTES + 1];
        let response = router
            .clone()
            .oneshot(post(oversized(), Some("t0k"), CLIENT))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let response = router
            .oneshot(post(oversized(), Some("t0k"), "198.18.0.9:1"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let counters = hub.counters().snapshot();
        assert_eq!(
            (
                counters.wasm_batches_malformed,
                counters.wasm_batches_refused
            ),
            (1, 1)
        );
    }

    #[tokio::test]
    async fn module_is_served_at_its_digest_path() {
        let (router, _) = setup();
        let request = Request::get("/wasm/apitrace-filter-abc.wasm")
            .body(Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/wasm");
    }
}
