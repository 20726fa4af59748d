//! `kubectl apitrace cleanup`, and what a probe does when its CLI is gone: find
//! what sessions left behind by their labels (and our providers in the mesh
//! config by name and destination), and undo it through the same path as a
//! session's own teardown. Running it twice removes nothing the second time.

use std::collections::BTreeSet;

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{ConfigMap, Pod, Secret, Service},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource,
    api::ListParams,
    core::{ApiResource, DynamicObject},
};

use crate::{
    api_status::is_not_found,
    apply::{ApplyError, Change, undo},
    error_text::ApiText,
    istio::{self, TelemetryVersion},
    mesh::{self, MESH_KEY, MeshConfigRef},
    names::{self, SessionId},
    session::lease_lapsed,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    Session(SessionId),
    /// Every session whose anchor Lease is gone or no longer renewed.
    Leftovers,
}

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("listing {what}: {}", ApiText(source))]
    List {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Undo(#[from] ApplyError),
}

/// Where cleanup looks for a session's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Every namespace: `kubectl apitrace cleanup`, with its user's rights.
    Cluster,
    /// The namespaces a session's anchor names: a probe cleaning up after its
    /// CLI, whose rights stop there (it may not list Secrets cluster-wide).
    Session {
        probe_namespace: String,
        target_namespaces: Vec<String>,
    },
}

impl Reach {
    /// Where a session's Istio objects and traced pods are; `None` for all.
    fn targets(&self) -> Option<&[String]> {
        match self {
            Self::Cluster => None,
            Self::Session {
                target_namespaces, ..
            } => Some(target_namespaces),
        }
    }

    /// Where a session's probes, Service, Secret and Lease are; `None` for all.
    fn probes(&self) -> Option<&[String]> {
        match self {
            Self::Cluster => None,
            Self::Session {
                probe_namespace, ..
            } => Some(std::slice::from_ref(probe_namespace)),
        }
    }

    /// The reach of the session `lease` anchors, from its annotations.
    pub fn of_anchor(lease: &Lease) -> Self {
        let annotations = lease.metadata.annotations.as_ref();
        Self::Session {
            probe_namespace: lease.metadata.namespace.clone().unwrap_or_default(),
            target_namespaces: annotations
                .and_then(|annotations| annotations.get(names::TARGET_NAMESPACES_ANNOTATION))
                .map(|namespaces| {
                    namespaces
                        .split(',')
                        .filter(|namespace| !namespace.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// What a cleanup did.
#[derive(Debug, Default)]
pub struct Report {
    pub removed: Vec<Change>,
    /// Sessions left alone because their CLI still renews their Lease.
    pub live: Vec<SessionId>,
    pub failed: Vec<(Change, ApplyError)>,
}

fn list_error(what: &str) -> impl FnOnce(kube::Error) -> CleanupError + '_ {
    move |source| CleanupError::List {
        what: what.to_owned(),
        source,
    }
}

/// The ConfigMaps in `istio_namespace` that hold a mesh config (`istio` and the
/// revisions' `istio-<rev>`).
pub async fn mesh_configs(
    client: &Client,
    istio_namespace: &str,
) -> Result<Vec<MeshConfigRef>, CleanupError> {
    let maps = Api::<ConfigMap>::namespaced(client.clone(), istio_namespace)
        .list(&ListParams::default())
        .await
        .map_err(list_error("the mesh ConfigMaps"))?;
    Ok(maps
        .items
        .into_iter()
        .filter(|map| {
            map.data
                .as_ref()
                .is_some_and(|data| data.contains_key(MESH_KEY))
        })
        .filter_map(|map| map.metadata.name)
        .filter(|name| name == "istio" || name.starts_with("istio-"))
        .map(|name| MeshConfigRef {
            namespace: istio_namespace.to_owned(),
            name,
        })
        .collect())
}

/// Removes what the chosen sessions left within `reach`, looking for our
/// providers in `mesh_configs` (and in the one each anchor Lease names).
pub async fn cleanup(
    client: &Client,
    which: &Which,
    reach: &Reach,
    mesh_configs: &[MeshConfigRef],
    now: Timestamp,
) -> Result<Report, CleanupError> {
    let selector = match which {
        Which::Session(session) => session.session_selector(),
        Which::Leftovers => names::SESSION_LABEL.to_owned(),
    };
    let found = Found::list(client, &selector, reach, mesh_configs).await?;
    let mut report = Report::default();
    let sessions: BTreeSet<SessionId> = match which {
        Which::Session(session) => BTreeSet::from([session.clone()]),
        Which::Leftovers => found.sessions(),
    };
    for session in sessions {
        if *which == Which::Leftovers
            && found.leases.iter().any(|lease| {
                session_of(lease.meta()) == Some(session.clone()) && !lease_lapsed(lease, now)
            })
        {
            report.live.push(session);
            continue;
        }
        for change in found.changes_of(&session) {
            match undo(client, &change).await {
                Ok(()) => report.removed.push(change),
                Err(error) => report.failed.push((change, error)),
            }
        }
    }
    Ok(report)
}

/// The session an object belongs to, by its session label.
pub fn session_of(meta: &kube::core::ObjectMeta) -> Option<SessionId> {
    meta.labels
        .as_ref()?
        .get(names::SESSION_LABEL)?
        .parse()
        .ok()
}

fn is_ours(meta: &kube::core::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|labels| labels.get(names::MANAGED_BY_LABEL))
        .is_some_and(|value| value == names::MANAGED_BY)
}

/// Everything carrying a session label, listed once for all sessions.
struct Found {
    leases: Vec<Lease>,
    /// (resource, metadata) of every object we created, in teardown order.
    created: Vec<(ApiResource, kube::core::ObjectMeta)>,
    /// Traced pods still carrying a session label.
    labelled: Vec<kube::core::ObjectMeta>,
    providers: Vec<(MeshConfigRef, SessionId)>,
}

impl Found {
    async fn list(
        client: &Client,
        selector: &str,
        reach: &Reach,
        mesh_configs: &[MeshConfigRef],
    ) -> Result<Self, CleanupError> {
        let params = ListParams::default().labels(selector);
        let targets = reach.targets();
        // Istio's kinds first. Telemetry is served as v1 from Istio 1.22, else
        // as v1alpha1; both list the same objects.
        let mut created = ours_of_crd(client, &params, targets, &istio::wasm_plugin())
            .await?
            .unwrap_or_default();
        let telemetries = match ours_of_crd(
            client,
            &params,
            targets,
            &istio::telemetry(TelemetryVersion::V1),
        )
        .await?
        {
            Some(found) => found,
            None => ours_of_crd(
                client,
                &params,
                targets,
                &istio::telemetry(TelemetryVersion::V1Alpha1),
            )
            .await?
            .unwrap_or_default(),
        };
        created.extend(telemetries);
        let mut pods = list_in::<Pod>(client, &params, targets)
            .await
            .map_err(list_error("pods"))?;
        if let Some(probes) = reach.probes() {
            pods.extend(
                list_in::<Pod>(client, &params, Some(probes))
                    .await
                    .map_err(list_error("pods"))?,
            );
        }
        let (probes, labelled): (Vec<_>, Vec<_>) =
            pods.into_iter().map(|pod| pod.metadata).partition(is_ours);
        let pod_resource = ApiResource::erase::<Pod>(&());
        created.extend(probes.into_iter().map(|meta| (pod_resource.clone(), meta)));
        created.extend(ours::<Service>(client, &params, reach.probes()).await?);
        created.extend(ours::<Secret>(client, &params, reach.probes()).await?);
        let leases: Vec<Lease> = list_in::<Lease>(client, &params, reach.probes())
            .await
            .map_err(list_error("leases"))?
            .into_iter()
            .filter(|lease| is_ours(&lease.metadata))
            .collect();
        let mut configs: Vec<MeshConfigRef> = mesh_configs.to_vec();
        configs.extend(leases.iter().filter_map(|lease| {
            MeshConfigRef::parse(
                lease
                    .metadata
                    .annotations
                    .as_ref()?
                    .get(names::MESH_CONFIG_ANNOTATION)?,
            )
        }));
        configs.sort_by_key(|config| config.to_string());
        configs.dedup();
        let mut providers = Vec::new();
        for config in configs {
            let map = match Api::<ConfigMap>::namespaced(client.clone(), &config.namespace)
                .get_opt(&config.name)
                .await
                .map_err(list_error("the mesh config"))?
            {
                Some(map) => map,
                None => continue,
            };
            let mesh = map
                .data
                .as_ref()
                .and_then(|data| data.get(MESH_KEY))
                .map(String::as_str)
                .unwrap_or_default();
            // A mesh config we cannot read has no provider we could remove.
            for session in mesh::session_providers(mesh).unwrap_or_default() {
                providers.push((config.clone(), session));
            }
        }
        let lease_resource = ApiResource::erase::<Lease>(&());
        created.extend(
            leases
                .iter()
                .map(|lease| (lease_resource.clone(), lease.metadata.clone())),
        );
        Ok(Self {
            leases,
            created,
            labelled,
            providers,
        })
    }

    fn sessions(&self) -> BTreeSet<SessionId> {
        self.created
            .iter()
            .map(|(_, meta)| meta)
            .chain(&self.labelled)
            .filter_map(session_of)
            .chain(self.providers.iter().map(|(_, session)| session.clone()))
            .collect()
    }

    /// A session's leftovers in teardown order: the mesh's view of it first
    /// (WasmPlugin, Telemetry, provider, pod labels), then the probes, the
    /// anchor last.
    fn changes_of(&self, session: &SessionId) -> Vec<Change> {
        let created = |resource: &ApiResource, meta: &kube::core::ObjectMeta| Change::Created {
            kind: resource.kind.clone(),
            resource: resource.clone(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        };
        let mine = |meta: &kube::core::ObjectMeta| session_of(meta).as_ref() == Some(session);
        let mut changes: Vec<Change> = Vec::new();
        let (istio_objects, cluster_objects): (Vec<_>, Vec<_>) = self
            .created
            .iter()
            .filter(|(_, meta)| mine(meta))
            .partition(|(resource, _)| resource.group.ends_with("istio.io"));
        changes.extend(istio_objects.iter().map(|(r, m)| created(r, m)));
        changes.extend(
            self.providers
                .iter()
                .filter(|(_, s)| s == session)
                .map(|(config, _)| Change::MeshProvider {
                    config: config.clone(),
                    provider: session.provider_name(),
                }),
        );
        changes.extend(self.labelled.iter().filter(|meta| mine(meta)).map(|meta| {
            Change::Labelled {
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
            }
        }));
        changes.extend(cluster_objects.iter().map(|(r, m)| created(r, m)));
        changes
    }
}

/// Our objects of a custom resource; `None` when its CRD is not served (there
/// is nothing of that kind to remove then).
async fn ours_of_crd(
    client: &Client,
    params: &ListParams,
    namespaces: Option<&[String]>,
    resource: &ApiResource,
) -> Result<Option<Vec<(ApiResource, kube::core::ObjectMeta)>>, CleanupError> {
    let listed = list_all(
        namespaces,
        || Api::<DynamicObject>::all_with(client.clone(), resource),
        |namespace| Api::namespaced_with(client.clone(), namespace, resource),
        params,
    )
    .await;
    match listed {
        Ok(objects) => Ok(Some(
            objects
                .into_iter()
                .map(|object| object.metadata)
                .filter(is_ours)
                .map(|meta| (resource.clone(), meta))
                .collect(),
        )),
        // The resource is not served: its CRD is not installed.
        Err(error) if is_not_found(&error) => Ok(None),
        Err(error) => Err(list_error(&resource.plural)(error)),
    }
}

async fn ours<K>(
    client: &Client,
    params: &ListParams,
    namespaces: Option<&[String]>,
) -> Result<Vec<(ApiResource, kube::core::ObjectMeta)>, CleanupError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let resource = ApiResource::erase::<K>(&());
    Ok(list_in::<K>(client, params, namespaces)
        .await
        .map_err(list_error(&resource.plural))?
        .into_iter()
        .map(|object| object.meta().clone())
        .filter(is_ours)
        .map(|meta| (resource.clone(), meta))
        .collect())
}

/// Lists `K` in `namespaces`, or in all of them for `None`.
async fn list_in<K>(
    client: &Client,
    params: &ListParams,
    namespaces: Option<&[String]>,
) -> Result<Vec<K>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    list_all(
        namespaces,
        || Api::<K>::all(client.clone()),
        |namespace| Api::namespaced(client.clone(), namespace),
        params,
    )
    .await
}

/// Lists through `all` for `None`, else through `one` in each namespace.
async fn list_all<K>(
    namespaces: Option<&[String]>,
    all: impl Fn() -> Api<K>,
    one: impl Fn(&str) -> Api<K>,
    params: &ListParams,
) -> Result<Vec<K>, kube::Error>
where
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let apis = match namespaces {
        None => vec![all()],
        Some(namespaces) => namespaces.iter().map(|namespace| one(namespace)).collect(),
    };
    let mut items = Vec::new();
    for api in apis {
        items.extend(api.list(params).await?.items);
    }
    Ok(items)
}
