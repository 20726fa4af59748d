//! Talking to a probe over whatever connection the caller provides (a socket
//! inside the demo's probe pod, a port-forward): every call carries the
//! session's id and token.

use apitrace_proto::{
    Event, ProbeStatus, SESSION_TOKEN_HEADER, StatusRequest, SubscribeRequest,
    probe_client::ProbeClient,
};
use futures::{Stream, StreamExt as _};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

/// A session's connection to one probe.
#[derive(Clone)]
pub struct ProbeSession {
    client: ProbeClient<Channel>,
    session_id: String,
    token: MetadataValue<Ascii>,
}

impl ProbeSession {
    pub fn new(channel: Channel, session_id: &str, token: &str) -> Result<Self, Status> {
        let token = MetadataValue::try_from(token).map_err(|_| {
            Status::invalid_argument("the session token is not a valid header value")
        })?;
        Ok(Self {
            client: ProbeClient::new(channel),
            session_id: session_id.to_owned(),
            token,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(SESSION_TOKEN_HEADER, self.token.clone());
        request
    }

    /// Every event of the session from now on; the first is the probe's status.
    pub async fn subscribe(
        &mut self,
    ) -> Result<impl Stream<Item = Result<Event, Status>> + use<>, Status> {
        let request = self.request(SubscribeRequest {
            session_id: self.session_id.clone(),
        });
        Ok(self.client.subscribe(request).await?.into_inner().boxed())
    }

    /// The probe's status and counters now.
    pub async fn status(&mut self) -> Result<ProbeStatus, Status> {
        let request = self.request(StatusRequest {
            session_id: self.session_id.clone(),
        });
        Ok(self.client.status(request).await?.into_inner())
    }
}
