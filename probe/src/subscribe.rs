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
