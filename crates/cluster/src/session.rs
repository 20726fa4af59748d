//! A session's life on the cluster: set up in a fixed order (the anchor first,
//! the mesh last), rolled back on any failure, torn down in reverse, kept alive
//! by renewing the anchor Lease.

use std::time::Duration;

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{ConfigMap, Pod},
    },
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    api_status::is_not_found,
    apply::{ApplyError, Change, Journal},
    check,
    error_text::ApiText,
    istio,
    mesh::{self, MESH_KEY, MeshConfigRef},
    names::SessionId,
    objects::{FilterModule, LEASE_DURATION, Plan, owner_reference},
};

/// Reaches the probes once they run (through API-server port-forwards) and
/// learns from them which filter module they serve.
pub trait ProbeLink {
    type Error: std::error::Error + Send + Sync + 'static;
    fn connect(
        &mut self,
        probes: &[Pod],
    ) -> impl Future<Output = Result<FilterModule, Self::Error>>;
}

/// Where setup has got to, for a progress line: each is reported as it begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The anchor Lease, the token Secret and the ingest Service.
    Anchoring,
    /// The probe pods created; waiting until they run and answer.
    StartingProbes { nodes: usize },
    /// The session label, the mesh config provider, Telemetry and WasmPlugin.
    PatchingMesh,
    /// Set up: events flow.
    Streaming,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stage::Anchoring => write!(f, "creating the session's anchor, token and Service"),
            Stage::StartingProbes { nodes: 1 } => write!(f, "waiting for the probe on 1 node"),
            Stage::StartingProbes { nodes } => write!(f, "waiting for the probes on {nodes} nodes"),
            Stage::PatchingMesh => write!(
                f,
                "patching the mesh (label, access-log provider, Telemetry, WasmPlugin)"
            ),
            Stage::Streaming => write!(f, "streaming"),
        }
    }
}

/// How long setup waits for what it does not control.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub probes_ready: Duration,
    pub poll: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            probes_ready: Duration::from_secs(120),
            poll: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("probe pod {namespace}/{name} cannot start: {reason}")]
    ProbeFailed {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error(
        "probe pods not ready after {:?}: {}; look at `kubectl describe pod -n {namespace} {}`",
        timeout, pending.join(", "), pending.first().map(String::as_str).unwrap_or_default()
    )]
    ProbesNotReady {
        namespace: String,
        pending: Vec<String>,
        timeout: Duration,
    },
    #[error("reading probe pod {name}: {}", ApiText(source))]
    ProbeApi {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("connecting to the probes: {0}")]
    Link(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the API server returned the anchor Lease without a uid")]
    AnchorWithoutUid,
    #[error("interrupted while setting up")]
    Interrupted,
    #[error(transparent)]
    NotExported(#[from] istio::NotExported),
}

/// Setup failed; what was done has been undone, except `leftovers`.
#[derive(Debug, thiserror::Error)]
#[error("{cause}{}", leftovers_text(.leftovers, .session))]
pub struct SetupError {
    #[source]
    pub cause: SessionError,
    pub session: String,
    pub leftovers: Vec<(Change, ApplyError)>,
}

fn leftovers_text(leftovers: &[(Change, ApplyError)], session: &str) -> String {
    if leftovers.is_empty() {
        return String::new();
    }
    let items: Vec<String> = leftovers
        .iter()
        .map(|(change, error)| format!("{change} ({error})"))
        .collect();
    format!(
        "; rolling back also failed for: {}; remove them with `kubectl apitrace cleanup --session {session}`",
        items.join("; ")
    )
}

/// A running session: what it changed, to be undone at its end.
#[derive(Debug)]
pub struct Session {
    pub plan: Plan,
    pub probes: Vec<Pod>,
    journal: Journal,
}

impl Session {
    /// Sets the session up: anchor Lease, token Secret, ingest Service, probe pods
    /// (waiting until they are ready and `link` reaches them), the session label
    /// on the traced pods, our provider in the mesh config, then the Telemetry
    /// and WasmPlugin per namespace. The mesh is touched only once the probes
    /// can receive what it sends. Any failure undoes what was done, and so
    /// does `cancel` (Ctrl-C): waits are abandoned at once, a change under way
    /// is finished first so that the journal knows of it.
    pub async fn start<L: ProbeLink>(
        client: &Client,
        plan: Plan,
        link: &mut L,
        timeouts: Timeouts,
        cancel: &CancellationToken,
        progress: &mut dyn FnMut(Stage),
    ) -> Result<Self, SetupError> {
        let mut journal = Journal::default();
        match setup(
            client,
            &plan,
            link,
            timeouts,
            cancel,
            progress,
            &mut journal,
        )
        .await
        {
            Ok(probes) => Ok(Self {
                plan,
                probes,
                journal,
            }),
            Err(cause) => {
                let leftovers = journal.undo_all(client).await;
                Err(SetupError {
                    cause,
                    session: plan.session.to_string(),
                    leftovers,
                })
            }
        }
    }

    /// Everything the session changed, in the order it changed it.
    pub fn changes(&self) -> &[Change] {
        self.journal.changes()
    }

    /// Undoes everything, the mesh first, the anchor last. Returns what could
    /// not be removed.
    pub async fn end(mut self, client: &Client) -> Vec<(Change, ApplyError)> {
        self.journal.undo_all(client).await
    }
}

async fn setup<L: ProbeLink>(
    client: &Client,
    plan: &Plan,
    link: &mut L,
    timeouts: Timeouts,
    cancel: &CancellationToken,
    progress: &mut dyn FnMut(Stage),
    journal: &mut Journal,
) -> Result<Vec<Pod>, SessionError> {
    // Checked before each change rather than racing it: a request dropped
    // half-way may have created an object the journal would not know of.
    let go_on = || {
        if cancel.is_cancelled() {
            Err(SessionError::Interrupted)
        } else {
            Ok(())
        }
    };
    go_on()?;
    progress(Stage::Anchoring);
    let lease = journal.create(client, &plan.lease()).await?;
    let owner = owner_reference(&lease).ok_or(SessionError::AnchorWithoutUid)?;
    go_on()?;
    journal
        .create(client, &plan.token_secret(Some(&owner)))
        .await?;
    go_on()?;
    let service = journal
        .create(client, &plan.ingest_service(Some(&owner)))
        .await?;
    // The Service as stored: an admission webhook or policy may have given it
    // an exportTo that hides it from the traced pods' sidecars (preflight
    // checked the mesh's default, which applies only without one).
    if let export @ istio::ExportTo::Annotation(_) =
        istio::ExportTo::of(service.metadata.annotations.as_ref(), &[])
    {
        export.check(
            &plan.probe.namespace,
            &plan.targets.namespaces(),
            &plan.mesh.to_string(),
        )?;
    }
    let mut probes = Vec::new();
    progress(Stage::StartingProbes {
        nodes: plan.targets.nodes.len(),
    });
    for pod in plan.probe_pods(Some(&owner)) {
        go_on()?;
        probes.push(journal.create(client, &pod).await?);
    }
    // Waiting changes nothing: abandoned as soon as the user asks.
    let (probes, module) = tokio::select! {
        biased;
        () = cancel.cancelled() => return Err(SessionError::Interrupted),
        connected = async {
            let probes = wait_ready(client, &plan.probe.namespace, probes, timeouts).await?;
            let module = link
                .connect(&probes)
                .await
                .map_err(|error| SessionError::Link(Box::new(error)))?;
            Ok::<_, SessionError>((probes, module))
        } => connected?,
    };
    progress(Stage::PatchingMesh);
    for pod in &plan.targets.pods {
        go_on()?;
        journal
            .label_pod(client, &pod.namespace, &pod.name, &plan.session)
            .await?;
    }
    go_on()?;
    journal
        .add_mesh_provider(client, &plan.mesh, &plan.als_provider())
        .await?;
    let telemetry = istio::telemetry(plan.telemetry_version);
    for object in plan.telemetries() {
        go_on()?;
        journal.create_dynamic(client, &telemetry, &object).await?;
    }
    let wasm_plugin = istio::wasm_plugin();
    for object in plan.wasm_plugins(&module) {
        go_on()?;
        journal
            .create_dynamic(client, &wasm_plugin, &object)
            .await?;
    }
    progress(Stage::Streaming);
    Ok(probes)
}

/// Container states that will not resolve by waiting.
const HOPELESS_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
];

async fn wait_ready(
    client: &Client,
    namespace: &str,
    mut probes: Vec<Pod>,
    timeouts: Timeouts,
) -> Result<Vec<Pod>, SessionError> {
    let api = Api::<Pod>::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeouts.probes_ready;
    loop {
        let mut pending = Vec::new();
        for pod in &mut probes {
            let name = pod.metadata.name.clone().unwrap_or_default();
            if !is_ready(pod) {
                *pod = api
                    .get(&name)
                    .await
                    .map_err(|source| SessionError::ProbeApi {
                        name: name.clone(),
                        source,
                    })?;
            }
            if let Some(reason) = hopeless(pod) {
                return Err(SessionError::ProbeFailed {
                    namespace: namespace.to_owned(),
                    name,
                    reason,
                });
            }
            if !is_ready(pod) {
                pending.push(name);
            }
        }
        if pending.is_empty() {
            return Ok(probes);
        }
        if tokio::time::Instant::now() + timeouts.poll > deadline {
            return Err(SessionError::ProbesNotReady {
                namespace: namespace.to_owned(),
                pending,
                timeout: timeouts.probes_ready,
            });
        }
        tokio::time::sleep(timeouts.poll).await;
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .iter()
        .flat_map(|status| status.conditions.iter().flatten())
        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
}

fn hopeless(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        return Some(
            status
                .message
                .clone()
                .or_else(|| status.reason.clone())
                .unwrap_or_else(|| "it failed".into()),
        );
    }
    status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|container| container.state.as_ref()?.waiting.as_ref())
        .find(|waiting| {
            waiting
                .reason
                .as_deref()
                .is_some_and(|reason| HOPELESS_REASONS.contains(&reason))
        })
        .map(|waiting| {
            format!(
                "{}: {}",
                waiting.reason.as_deref().unwrap_or_default(),
                waiting.message.as_deref().unwrap_or("no message")
            )
        })
}

/// Tells the probes the CLI is alive: they clean up once the Lease lapses.
async fn renew_lease(
    client: &Client,
    namespace: &str,
    name: &str,
    now: Timestamp,
) -> Result<(), kube::Error> {
    let patch = json!({ "spec": { "renewTime": MicroTime(now) } });
    Api::<Lease>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

/// How soon a failed renewal is tried again.
pub const RENEW_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "the session's Lease {namespace}/{name} is gone (did someone run `kubectl apitrace cleanup`?): its probes and objects go with it"
    )]
    Gone { namespace: String, name: String },
    #[error(
        "the session's Lease {namespace}/{name} could not be renewed for {} s, and lapses now: its probes remove the session; last error: {}",
        .unrenewed.as_secs(), ApiText(source)
    )]
    Lapsing {
        namespace: String,
        name: String,
        unrenewed: Duration,
        #[source]
        source: kube::Error,
    },
}

/// Keeps the anchor Lease renewed. One failed renewal (an API server
/// restarting, a dropped connection, a 429) is not the end of the session:
/// the probes act only once the Lease has gone a whole [`LEASE_DURATION`]
/// unrenewed, so a failure is retried every [`RENEW_RETRY`] until the Lease
/// would lapse before the next try. Only a Lease that is gone, or one about
/// to lapse, ends the session.
pub struct LeaseKeeper {
    client: Client,
    namespace: String,
    name: String,
    /// When the last renewal (or the creation) was acknowledged.
    renewed: tokio::time::Instant,
    /// Whether the last attempt failed, so that a caller says so once.
    pub failing: Option<String>,
}

impl LeaseKeeper {
    /// For a Lease created (so renewed) just now.
    pub fn new(client: &Client, namespace: &str, name: &str) -> Self {
        Self {
            client: client.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            renewed: tokio::time::Instant::now(),
            failing: None,
        }
    }

    /// Renews the Lease once; returns how long to wait before the next renewal.
    pub async fn renew(&mut self) -> Result<Duration, LeaseError> {
        let attempt = tokio::time::Instant::now();
        match renew_lease(&self.client, &self.namespace, &self.name, Timestamp::now()).await {
            Ok(()) => {
                self.renewed = attempt;
                self.failing = None;
                Ok(LEASE_DURATION / 3)
            }
            Err(error) if is_not_found(&error) => Err(LeaseError::Gone {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
            }),
            Err(source) => {
                let unrenewed = tokio::time::Instant::now().duration_since(self.renewed);
                if unrenewed + RENEW_RETRY < LEASE_DURATION {
                    self.failing = Some(ApiText(&source).to_string());
                    Ok(RENEW_RETRY)
                } else {
                    Err(LeaseError::Lapsing {
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                        unrenewed,
                        source,
                    })
                }
            }
        }
    }
}

/// Whether the Lease has gone unrenewed for longer than its duration.
pub fn lease_lapsed(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return true;
    };
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return true;
    };
    renewed.0 + k8s_openapi::jiff::SignedDuration::from_secs(seconds.into()) < now
}

/// How often a running session reads the mesh config for its provider: a
/// `get` of the one ConfigMap, which setup needed anyway, rather than a
/// watch, which `manifests/user-clusterrole.yaml` does not grant. istiod
/// acts on a changed mesh config within seconds (docs/cluster-upstream.md).
pub const PROVIDER_CHECK: Duration = Duration::from_secs(5);

/// A change of the session's access-log provider in the mesh config, as the
/// watch finds it: gone when whoever keeps the config as they want it (an
/// operator, a GitOps tool with self-heal) has put it back without the
/// provider, so that istiod no longer sends the sidecars' access logs to
/// the probes; back when someone has added it again (an operator that
/// merges, a sync paused then resumed with the provider in Git), so that
/// they come again. Either may happen more than once in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderChange {
    Gone {
        config: MeshConfigRef,
        provider: String,
        /// Who manages the mesh config now, as [`check::mesh_owner`] reads
        /// it off the ConfigMap; `None` when nothing on it says (or it is
        /// gone).
        owner: Option<String>,
    },
    Back {
        config: MeshConfigRef,
        provider: String,
    },
}

impl std::fmt::Display for ProviderChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gone {
                config,
                provider,
                owner,
            } => {
                write!(
                    f,
                    "warning: the session's access-log provider {provider} is no longer in the mesh config {config}"
                )?;
                match owner {
                    Some(owner) => {
                        write!(f, "; it was probably put back by {owner}, which manages it")?;
                    }
                    None => write!(f, "; something rewrote it")?,
                }
                write!(
                    f,
                    "; the calls from now on lack the access-log layer (als); the session does not add the provider again, so as not to fight whoever manages the config"
                )
            }
            Self::Back { config, provider } => write!(
                f,
                "the session's access-log provider {provider} is in the mesh config {config} again; the calls from now on have the access-log layer (als) again"
            ),
        }
    }
}

/// Reads the mesh config for the session's provider every
/// [`PROVIDER_CHECK`] for the whole session, and tells each time it has
/// gone or come back.
pub struct ProviderWatch {
    client: Client,
    config: MeshConfigRef,
    session: SessionId,
    /// Whether the provider was there at the last read that could tell:
    /// setup put it there.
    present: bool,
    /// Whether the last read failed, so that a caller says so once.
    pub failing: Option<String>,
}

impl ProviderWatch {
    /// For a session whose setup has just added its provider.
    pub fn new(client: &Client, config: &MeshConfigRef, session: &SessionId) -> Self {
        Self {
            client: client.clone(),
            config: config.clone(),
            session: session.clone(),
            present: true,
            failing: None,
        }
    }

    /// Reads the mesh config once: `Some` when the session's provider has
    /// gone from it (or the ConfigMap or its `mesh` key has) or come back
    /// since the last read, `None` when nothing changed. A failed read, or a
    /// config that no longer parses, is not taken for a removal: it is kept
    /// in [`Self::failing`] and the next check reads again.
    pub async fn check(&mut self) -> Option<ProviderChange> {
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), &self.config.namespace);
        let map = match api.get_opt(&self.config.name).await {
            Ok(map) => map,
            Err(error) => {
                self.failing = Some(ApiText(&error).to_string());
                return None;
            }
        };
        let text = map
            .as_ref()
            .and_then(|map| map.data.as_ref()?.get(MESH_KEY));
        let present = match text.map(|text| mesh::session_providers(text)) {
            Some(Ok(sessions)) => sessions.contains(&self.session),
            Some(Err(error)) => {
                self.failing = Some(error.to_string());
                return None;
            }
            None => false,
        };
        self.failing = None;
        if present == self.present {
            return None;
        }
        self.present = present;
        let (config, provider) = (self.config.clone(), self.session.provider_name());
        Some(if present {
            ProviderChange::Back { config, provider }
        } else {
            ProviderChange::Gone {
                config,
                provider,
                owner: map.as_ref().and_then(check::mesh_owner),
            }
        })
    }
}
