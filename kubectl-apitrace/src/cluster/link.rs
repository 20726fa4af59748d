//! The CLI's way to its probes: an API-server port-forward to each probe pod's
//! subscribe port, a gRPC subscription with the session token over it, and a
//! new port-forward and subscription whenever one drops, until the session ends.

use std::time::Duration;

use apitrace_cluster::{objects::FilterModule, session::ProbeLink};
use apitrace_proto::{Event, ProbeStatus, event::Kind, ports};
use futures::{StreamExt as _, stream::BoxStream};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tonic::transport::{Endpoint, Uri};

use crate::probe_client::ProbeSession;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("probe {pod}: {detail}")]
    Probe { pod: String, detail: String },
}

/// What arrives from the probes: their events, and word of a dropped and
/// restored connection (events in between are lost, and said so).
#[derive(Debug)]
pub enum FromProbe {
    Event(Box<Event>),
    Reconnected { pod: String, outage: Duration },
    Lost { pod: String, detail: String },
}

pub struct PortForwardLink {
    client: Client,
    namespace: String,
    session_id: String,
    token: String,
    sender: mpsc::Sender<FromProbe>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PortForwardLink {
    pub fn new(
        client: Client,
        namespace: &str,
        session_id: &str,
        token: &str,
    ) -> (Self, mpsc::Receiver<FromProbe>) {
        let (sender, receiver) = mpsc::channel(4096);
        let link = Self {
            client,
            namespace: namespace.to_owned(),
            session_id: session_id.to_owned(),
            token: token.to_owned(),
            sender,
            tasks: Vec::new(),
        };
        (link, receiver)
    }

    async fn subscribe(
        &self,
        pod: &str,
    ) -> Result<
        (
            BoxStream<'static, Result<Event, tonic::Status>>,
            ProbeStatus,
        ),
        String,
    > {
        subscribe(
            Api::namespaced(self.client.clone(), &self.namespace),
            pod,
            &self.session_id,
            &self.token,
        )
        .await
    }
}

impl Drop for PortForwardLink {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn subscribe(
    api: Api<Pod>,
    pod: &str,
    session_id: &str,
    token: &str,
) -> Result<
    (
        BoxStream<'static, Result<Event, tonic::Status>>,
        ProbeStatus,
    ),
    String,
> {
    let name = pod.to_owned();
    // Every connection tonic opens is a port-forward of its own.
    let connector = tower::service_fn(move |_: Uri| {
        let api = api.clone();
        let name = name.clone();
        async move {
            let mut forwarder = api.portforward(&name, &[ports::SUBSCRIBE]).await?;
            let stream = forwarder.take_stream(ports::SUBSCRIBE).ok_or_else(|| {
                std::io::Error::other("the port-forward has no stream for the probe's port")
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(stream))
        }
    });
    let channel = Endpoint::from_static("http://probe.apitrace")
        .connect_with_connector(connector)
        .await
        .map_err(|error| format!("port-forward failed: {error}"))?;
    let mut session = ProbeSession::new(channel, session_id, token)
        .map_err(|status| status.message().to_owned())?;
    let mut events = session
        .subscribe()
        .await
        .map_err(|status| format!("subscription refused: {}", status.message()))?
        .boxed();
    match events.next().await {
        Some(Ok(Event {
            kind: Some(Kind::Status(status)),
        })) => Ok((events, status)),
        Some(Err(status)) => Err(format!("subscription failed: {}", status.message())),
        _ => Err("the probe did not start its stream with its status".into()),
    }
}

/// How long a lost probe connection is retried before the session gives up on it.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Forwards a probe's events; when the stream breaks, port-forwards and
/// subscribes again, with backoff, for up to [`RECONNECT_FOR`].
async fn forward(
    api: Api<Pod>,
    pod: String,
    session_id: String,
    token: String,
    mut events: BoxStream<'static, Result<Event, tonic::Status>>,
    sender: mpsc::Sender<FromProbe>,
) {
    loop {
        while let Some(Ok(event)) = events.next().await {
            if sender
                .send(FromProbe::Event(Box::new(event)))
                .await
                .is_err()
            {
                return;
            }
        }
        let lost = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(250);
        loop {
            tokio::time::sleep(backoff).await;
            match subscribe(api.clone(), &pod, &session_id, &token).await {
                Ok((stream, status)) => {
                    events = stream;
                    let reconnected = FromProbe::Reconnected {
                        pod: pod.clone(),
                        outage: lost.elapsed(),
                    };
                    let status = FromProbe::Event(Box::new(Event {
                        kind: Some(Kind::Status(status)),
                    }));
                    if sender.send(reconnected).await.is_err() || sender.send(status).await.is_err()
                    {
                        return;
                    }
                    break;
                }
                Err(detail) if lost.elapsed() > RECONNECT_FOR => {
                    let _ = sender.send(FromProbe::Lost { pod, detail }).await;
                    return;
                }
                Err(_) => backoff = (backoff * 2).min(Duration::from_secs(5)),
            }
        }
    }
}

impl ProbeLink for PortForwardLink {
    type Error = LinkError;

    async fn connect(&mut self, probes: &[Pod]) -> Result<FilterModule, LinkError> {
        let mut module = None;
        for probe in probes {
            let pod = probe.metadata.name.clone().unwrap_or_default();
            let (events, status) =
                self.subscribe(&pod)
                    .await
                    .map_err(|detail| LinkError::Probe {
                        pod: pod.clone(),
                        detail,
                    })?;
            module = Some(FilterModule {
                path: status.wasm_module_path.clone(),
                sha256: status.wasm_module_sha256.clone(),
            });
            let status = Event {
                kind: Some(Kind::Status(status)),
            };
            let _ = self.sender.send(FromProbe::Event(Box::new(status))).await;
            self.tasks.push(tokio::spawn(forward(
                Api::namespaced(self.client.clone(), &self.namespace),
                pod,
                self.session_id.clone(),
                self.token.clone(),
                events,
                self.sender.clone(),
            )));
        }
        module.ok_or_else(|| LinkError::Probe {
            pod: "(none)".into(),
            detail: "the session has no probe".into(),
        })
    }
}
