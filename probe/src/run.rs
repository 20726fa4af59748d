//! A probe's life: attach, serve, and on the deadline, a signal, or a failure,
//! detach everything before exiting.

use std::{
    future::{Future, IntoFuture as _},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use apitrace_cluster::{
    cleanup,
    watchdog::{self, Anchor},
};
use apitrace_proto::probe_args::LeaseRef;
use apitrace_proto::{Attachment, ProbeStatus};
use k8s_openapi::api::coordination::v1::Lease;
use tokio::{net::TcpListener, signal::unix::SignalKind, sync::watch};
use tonic::transport::server::TcpIncoming;

use crate::{
    als::Als,
    counters::Counters,
    hub::Hub,
    ingest::{self, Module},
    peers::Peers,
    session::Session,
    subscribe::{StatusSource, Subscribe},
    tc::{self, PodTap},
};

/// The filter module, built by `build.rs` for `wasm32-unknown-unknown`.
pub const MODULE: Module = Module {
    bytes: include_bytes!(concat!(env!("OUT_DIR"), "/apitrace-filter.wasm")),
    sha256: env!("APITRACE_WASM_SHA256"),
};

#[derive(Debug)]
pub struct Config {
    pub session: Session,
    pub node: String,
    pub targets: Vec<tc::Target>,
    /// Addresses allowed to send ALS and WASM events besides the targets'.
    pub extra_peers: Vec<IpAddr>,
    pub subscribe_listen: SocketAddr,
    pub access_log_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// The probe exits when this has passed, whoever forgot to stop it.
    pub deadline: Duration,
    /// The Lease the CLI renews; none when the probe runs on its own.
    pub anchor: Option<LeaseRef>,
    pub tc: tc::Options,
    pub hub_capacity: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot reach the API server to watch the session's Lease: {0}")]
    Kube(#[source] kube::Error),
    #[error("removing the session after its CLI went away: {0}")]
    Undo(#[from] watchdog::UndoError),
    #[error(
        "could not remove {} after the CLI went away; run `kubectl apitrace cleanup --session {session}`",
        .failed.join(", ")
    )]
    Leftovers {
        session: String,
        failed: Vec<String>,
    },
    #[error(transparent)]
    Tc(#[from] tc::TcError),
    #[error("cannot listen on {address} for {what}: {source}")]
    Listen {
        what: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the {what} server failed: {message}")]
    Serve { what: &'static str, message: String },
    #[error("cannot wait for signals: {0}")]
    Signals(std::io::Error),
}

/// How long servers get to close their connections once the probe stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

pub async fn run(config: Config) -> Result<(), RunError> {
    let hub = Hub::new(config.hub_capacity, Arc::default());
    let watch = match &config.anchor {
        Some(anchor) => Some((
            kube::Client::try_default().await.map_err(RunError::Kube)?,
            anchor.clone(),
        )),
        None => None,
    };
    let taps = Taps::attach(&config)?;
    eprintln!(
        "apitrace-probe: session {} on {}: attached to {} interface(s) of {} pod(s)",
        config.session.id,
        config.node,
        taps.attachments().len(),
        taps.0.len()
    );
    let lapsed = serve(&config, hub, taps, watch.as_ref()).await?;
    eprintln!("apitrace-probe: session {}: detached", config.session.id);
    match (lapsed, watch) {
        (Some(lease), Some((client, _))) => undo_session(&client, &lease).await,
        _ => Ok(()),
    }
}

/// The CLI is gone: remove what the session did to the cluster, the Lease last
/// (which removes this pod and the other probes with it).
async fn undo_session(client: &kube::Client, lease: &Lease) -> Result<(), RunError> {
    let session = cleanup::session_of(&lease.metadata)
        .map(|session| session.to_string())
        .unwrap_or_default();
    eprintln!(
        "apitrace-probe: session {session}: nobody renews its Lease any more: removing it from the cluster"
    );
    let report = watchdog::undo_lapsed(client, lease).await?;
    for change in &report.removed {
        eprintln!("apitrace-probe: removed {change}");
    }
    if report.failed.is_empty() {
        return Ok(());
    }
    Err(RunError::Leftovers {
        session,
        failed: report
            .failed
            .iter()
            .map(|(change, error)| format!("{change} ({error})"))
            .collect(),
    })
}

/// The attached pods. Dropping this detaches them, also on an error path.
struct Taps(Vec<PodTap>);

impl Taps {
    fn attach(config: &Config) -> Result<Self, RunError> {
        let mode = tc::resolve_mode(config.tc.mode)?;
        let mut taps = Self(Vec::with_capacity(config.targets.len()));
        for target in &config.targets {
            taps.0
                .push(PodTap::attach(target.clone(), &config.tc, mode)?);
        }
        Ok(taps)
    }

    fn attachments(&self) -> Vec<Attachment> {
        self.0
            .iter()
            .flat_map(|tap| tap.attachments.clone())
            .collect()
    }

    /// The traced pods' own addresses, and the extra ones the session allows.
    fn peers(&self, extra: &[IpAddr]) -> Peers {
        let mut peers = Peers::default();
        for tap in &self.0 {
            for ip in tap.addresses.iter().filter(|ip| !ip.is_loopback()) {
                peers.allow(*ip, Some(tap.target.pod.clone()));
            }
        }
        for ip in extra {
            peers.allow(*ip, None);
        }
        peers
    }
}

impl Drop for Taps {
    fn drop(&mut self) {
        for tap in self.0.drain(..) {
            tap.detach();
        }
    }
}

/// Serves until the deadline, a signal, a failure or the end of the anchor;
/// returns the anchor if it lapsed (the session is then the probe's to undo).
async fn serve(
    config: &Config,
    hub: Hub,
    mut taps: Taps,
    watch: Option<&(kube::Client, LeaseRef)>,
) -> Result<Option<Box<Lease>>, RunError> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let kernel_counters = taps
        .0
        .iter_mut()
        .map(|tap| tap.stream(hub.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let peers = Arc::new(taps.peers(&config.extra_peers));
    let status = status_source(
        config.node.clone(),
        taps.attachments(),
        Arc::clone(hub.counters()),
    );

    let subscribe_listener = bind("subscriptions", config.subscribe_listen).await?;
    let access_log_listener = bind("access logs", config.access_log_listen).await?;
    let http_listener = bind("WASM ingest", config.http_listen).await?;

    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    // TCP_NODELAY, which `Server::serve` would set on its own listener: the
    // subscription streams events as they come, and Nagle's algorithm would
    // hold each small write until the reader's delayed ACK.
    let with_nodelay = |listener| TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(named(
        "subscription",
        tonic::transport::Server::builder()
            .add_service(Subscribe::server(
                hub.clone(),
                config.session.clone(),
                Arc::clone(&status),
            ))
            .serve_with_incoming_shutdown(with_nodelay(subscribe_listener), until_stopped()),
    ));
    servers.spawn(named(
        "access-log",
        tonic::transport::Server::builder()
            .add_service(Als::server(hub.clone(), Arc::clone(&peers)))
            .serve_with_incoming_shutdown(with_nodelay(access_log_listener), until_stopped()),
    ));
    let router = ingest::router(
        hub.clone(),
        Arc::clone(&peers),
        config.session.clone(),
        MODULE,
    );
    servers.spawn(named(
        "WASM ingest",
        axum::serve(
            http_listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(until_stopped())
        .into_future(),
    ));

    let anchor = async {
        let Some((client, anchor)) = watch else {
            return std::future::pending().await;
        };
        watchdog::watch_anchor(client, &anchor.namespace, &anchor.name, |error| {
            eprintln!(
                "apitrace-probe: reading Lease {}/{}: {error}",
                anchor.namespace, anchor.name
            );
        })
        .await
    };
    tokio::pin!(anchor);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = tokio::time::sleep(config.deadline);
    tokio::pin!(deadline);
    let mut last_published = None;
    let outcome = loop {
        tokio::select! {
            _ = tick.tick() => {
                tc::publish_kernel_counters(&kernel_counters, hub.counters());
                let snapshot = hub.counters().snapshot();
                if last_published.as_ref() != Some(&snapshot) {
                    hub.publish_status(status());
                    last_published = Some(snapshot);
                }
            }
            () = &mut deadline => {
                eprintln!("apitrace-probe: the session's deadline passed");
                break Ok(None);
            }
            ending = &mut anchor => match ending {
                Anchor::Gone => {
                    eprintln!("apitrace-probe: the session's Lease was removed: the session is over");
                    break Ok(None);
                }
                Anchor::Lapsed(lease) => break Ok(Some(lease)),
            },
            _ = terminate.recv() => break Ok(None),
            _ = interrupt.recv() => break Ok(None),
            Some(finished) = servers.join_next() => {
                break Err(match finished {
                    Ok(Err(error)) => error,
                    Ok(Ok(())) => RunError::Serve { what: "probe", message: "a server stopped unexpectedly".into() },
                    Err(panic) => RunError::Serve { what: "probe", message: panic.to_string() },
                });
            }
        }
    };
    // Detach first: attachments are what must never outlive the session.
    drop(taps);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    outcome
}

fn status_source(
    node: String,
    attachments: Vec<Attachment>,
    counters: Arc<Counters>,
) -> StatusSource {
    Arc::new(move || ProbeStatus {
        node: node.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ready: true,
        attachments: attachments.clone(),
        wasm_module_path: MODULE.path(),
        wasm_module_sha256: MODULE.sha256.to_owned(),
        counters: Some(counters.snapshot()),
    })
}

fn signal(kind: SignalKind) -> Result<tokio::signal::unix::Signal, RunError> {
    tokio::signal::unix::signal(kind).map_err(RunError::Signals)
}

async fn bind(what: &'static str, address: SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| RunError::Listen {
            what,
            address,
            source,
        })
}

async fn named<E: std::fmt::Display>(
    what: &'static str,
    server: impl Future<Output = Result<(), E>>,
) -> Result<(), RunError> {
    server.await.map_err(|e| RunError::Serve {
        what,
        message: e.to_string(),
    })
}
