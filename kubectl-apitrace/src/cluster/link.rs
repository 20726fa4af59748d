//! The CLI's way to its probes: an API-server port-forward to each probe pod's
//! subscribe port, a gRPC subscription with the session token over it, and a
//! new port-forward and subscription whenever one drops, until the session ends.

use std::time::Duration;

use apitrace_cluster::{
    error_text::{ApiText, error_chain},
    objects::FilterModule,
    session::ProbeLink,
};
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
        Failure,
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

/// Why a probe could not be subscribed to.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The API server refused the port-forward (401, 403): the same request
    /// is refused again until someone changes the credentials or the RBAC,
    /// so it is not retried.
    Refused(String),
    /// Anything else (a dropped connection, a probe restarting): worth
    /// trying again.
    Broken(String),
}

impl Failure {
    fn detail(self) -> String {
        match self {
            Failure::Refused(detail) | Failure::Broken(detail) => detail,
        }
    }
}

/// A failed port-forward as a [`Failure`]: kube answers a refused upgrade
/// with the API server's Status as `kube::Error::Api`, which tonic's
/// connection error carries among its causes (under its own "transport
/// error" and a wrapper repeating kube's text), so kube's error is looked
/// for along the chain and said as the server worded it.
fn port_forward_failure(error: &(dyn std::error::Error + 'static)) -> Failure {
    let kube_error = std::iter::successors(Some(error), |cause| cause.source())
        .find_map(|cause| cause.downcast_ref::<kube::Error>());
    match kube_error {
        Some(refused @ kube::Error::Api(status)) if matches!(status.code, 401 | 403) => {
            Failure::Refused(format!(
                "the API server refused the port-forward: {}",
                ApiText(refused)
            ))
        }
        Some(error) => Failure::Broken(format!("port-forward failed: {}", ApiText(error))),
        None => Failure::Broken(format!("port-forward failed: {}", error_chain(error))),
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
    Failure,
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
        .map_err(|error| port_forward_failure(&error))?;
    let mut session = ProbeSession::new(channel, session_id, token)
        .map_err(|status| Failure::Broken(status.message().to_owned()))?;
    let mut events = session
        .subscribe()
        .await
        .map_err(|status| Failure::Broken(format!("subscription refused: {}", status.message())))?
        .boxed();
    match events.next().await {
        Some(Ok(Event {
            kind: Some(Kind::Status(status)),
        })) => Ok((events, status)),
        Some(Err(status)) => Err(Failure::Broken(format!(
            "subscription failed: {}",
            status.message()
        ))),
        _ => Err(Failure::Broken(
            "the probe did not start its stream with its status".into(),
        )),
    }
}

/// How long a lost probe connection is retried before the session gives up on it.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Forwards a probe's events; when the stream breaks, port-forwards and
/// subscribes again, with backoff, for up to [`RECONNECT_FOR`]. A
/// port-forward the API server refuses ends it at once.
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
                Err(Failure::Refused(detail)) => {
                    let _ = sender.send(FromProbe::Lost { pod, detail }).await;
                    return;
                }
                Err(Failure::Broken(detail)) if lost.elapsed() > RECONNECT_FOR => {
                    let _ = sender.send(FromProbe::Lost { pod, detail }).await;
                    return;
                }
                Err(Failure::Broken(_)) => backoff = (backoff * 2).min(Duration::from_secs(5)),
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
                    .map_err(|failure| LinkError::Probe {
                        pod: pod.clone(),
                        detail: failure.detail(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection error as tonic returns it, from a connector that fails
    /// as `Api::portforward` does.
    async fn connect_error(error: kube::Error) -> tonic::transport::Error {
        let error = std::sync::Mutex::new(Some(error));
        let connector = tower::service_fn(move |_: Uri| {
            let error = error.lock().unwrap().take().expect("one connection");
            async move {
                Err::<TokioIo<tokio::io::DuplexStream>, _>(
                    Box::new(error) as Box<dyn std::error::Error + Send + Sync>
                )
            }
        });
        Endpoint::from_static("http://probe.apitrace")
            .connect_with_connector(connector)
            .await
            .expect_err("the connector fails")
    }

    fn status(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..kube::core::Status::failure(message, reason)
        }))
    }

    #[tokio::test]
    async fn a_refused_port_forward_says_the_api_servers_status_and_is_not_retried() {
        let message = r#"pods "apitrace-x-probe-0" is forbidden: User "alice" cannot get resource "pods/portforward" in API group "" in the namespace "apitrace-system""#;
        let error = connect_error(status(403, "Forbidden", message)).await;
        assert_eq!(error.to_string(), "transport error", "what was said before");
        assert_eq!(
            port_forward_failure(&error),
            Failure::Refused(format!(
                "the API server refused the port-forward: {message}: Forbidden (HTTP 403); the account lacks a permission a session needs: bind it to manifests/user-clusterrole.yaml, or ask a cluster admin to"
            ))
        );
        let error = connect_error(status(401, "Unauthorized", "Unauthorized")).await;
        assert!(matches!(port_forward_failure(&error), Failure::Refused(_)));
    }

    #[tokio::test]
    async fn a_broken_port_forward_says_its_cause_and_is_retried() {
        let error = connect_error(status(404, "NotFound", "pods \"p\" not found")).await;
        assert_eq!(
            port_forward_failure(&error),
            Failure::Broken(
                "port-forward failed: pods \"p\" not found: NotFound (HTTP 404)".into()
            )
        );
        let error = connect_error(kube::Error::Service("connection reset".into())).await;
        assert!(
            matches!(&port_forward_failure(&error), Failure::Broken(detail) if detail.contains("connection reset")),
            "{:?}",
            port_forward_failure(&error)
        );
    }
}
