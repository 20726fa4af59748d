//! The `Probe` service: the CLI's view of everything the probe sees
//! (`Subscribe`) and of its counters (`Status`).

use std::{pin::Pin, sync::Arc};

use apitrace_proto::{
    Event, ProbeStatus, SESSION_TOKEN_HEADER, StatusRequest, SubscribeRequest,
    event::Kind,
    probe_server::{Probe, ProbeServer},
};
use futures::{Stream, StreamExt as _, stream};
use tonic::{Request, Response, Status};

use crate::{hub::Hub, session::Session};

/// What a subscriber is told about the probe, with the counters of the moment.
pub type StatusSource = Arc<dyn Fn() -> ProbeStatus + Send + Sync>;

pub struct Subscribe {
    hub: Hub,
    session: Session,
    status: StatusSource,
}

impl Subscribe {
    pub fn server(hub: Hub, session: Session, status: StatusSource) -> ProbeServer<Self> {
        ProbeServer::new(Self {
            hub,
            session,
            status,
        })
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl Probe for Subscribe {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.authorise(&request, &request.get_ref().session_id)?;
        // Subscribe before taking the status, so that nothing falls between them.
        let subscription = self.hub.subscribe();
        let first = Event {
            kind: Some(Kind::Status((self.status)())),
        };
        let events = stream::unfold(subscription, |mut subscription| async move {
            let event = subscription.next().await?;
            Some((Ok(event), subscription))
        });
        Ok(Response::new(
            stream::once(async { Ok(first) }).chain(events).boxed(),
        ))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<ProbeStatus>, Status> {
        self.authorise(&request, &request.get_ref().session_id)?;
        Ok(Response::new((self.status)()))
    }
}

impl Subscribe {
    /// Admits a call that carries the session's token and names its session.
    fn authorise<T>(&self, request: &Request<T>, session_id: &str) -> Result<(), Status> {
        let token = request
            .metadata()
            .get(SESSION_TOKEN_HEADER)
            .map(|value| value.as_bytes());
        if !token.is_some_and(|token| self.session.verify(token)) {
            return Err(Status::unauthenticated("a valid session token is required"));
        }
        if session_id != self.session.id {
            return Err(Status::permission_denied(format!(
                "this probe serves session {}, not {session_id}",
                self.session.id
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::Arc, time::Duration};

    use apitrace_proto::{SubscribeRequest, WasmEvent, probe_client::ProbeClient};
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Code, transport::Channel};

    use super::*;

    async fn serve() -> (SocketAddr, Hub) {
        let hub = Hub::new(64, Arc::default());
        let counters = Arc::clone(hub.counters());
        let status: StatusSource = Arc::new(move || ProbeStatus {
            node: "node-1".into(),
            ready: true,
            counters: Some(counters.snapshot()),
            ..ProbeStatus::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = Subscribe::server(
            hub.clone(),
            Session::new("s1".into(), "t0k3n".into()),
            status,
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (address, hub)
    }

    async fn subscribe(
        address: SocketAddr,
        session: &str,
        token: Option<&str>,
    ) -> Result<tonic::Streaming<Event>, Status> {
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut request = Request::new(SubscribeRequest {
            session_id: session.into(),
        });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert(SESSION_TOKEN_HEADER, token.parse().unwrap());
        }
        ProbeClient::new(channel)
            .subscribe(request)
            .await
            .map(Response::into_inner)
    }

    #[tokio::test]
    async fn only_the_session_token_subscribes_to_only_its_session() {
        let (address, _hub) = serve().await;
        for (session, token, code) in [
            ("s1", None, Code::Unauthenticated),
            ("s1", Some("wrong"), Code::Unauthenticated),
            ("s2", Some("t0k3n"), Code::PermissionDenied),
        ] {
            let error = subscribe(address, session, token).await.unwrap_err();
            assert_eq!(error.code(), code, "{session} {token:?}");
        }
    }

    #[tokio::test]
    async fn a_subscription_starts_with_the_status_then_streams_events() {
        let (address, hub) = serve().await;
        let mut events = subscribe(address, "s1", Some("t0k3n")).await.unwrap();
        let first = events.next().await.unwrap().unwrap();
        assert!(
            matches!(first.kind, Some(Kind::Status(ref status)) if status.ready && status.node == "node-1")
        );
        hub.publish(Kind::Wasm(WasmEvent {
            request_id: "r1".into(),
            ..WasmEvent::default()
        }));
        let next = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(next.kind, Some(Kind::Wasm(ref event)) if event.request_id == "r1"));
    }
}
