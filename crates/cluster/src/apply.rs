//! Applying a session's changes one by one, each recorded in a journal, so that
//! a failure at any step, the session's end and a cleanup all undo exactly what
//! was done, in reverse order.

use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::{ApiResource, DynamicObject},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::{
    api_status::{is_conflict, is_not_found},
    error_text::ApiText,
    mesh::{self, MESH_KEY, MeshConfigRef, MeshError},
    names,
};

/// How many times a mesh ConfigMap update is retried when someone else changed
/// it in between (409 Conflict).
pub const MESH_UPDATE_ATTEMPTS: usize = 5;

/// One change a session made to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created {
        kind: String,
        resource: ApiResource,
        namespace: String,
        name: String,
    },
    /// The session label on a traced pod.
    Labelled { namespace: String, name: String },
    /// The session's access-log provider in the mesh config.
    MeshProvider {
        config: MeshConfigRef,
        provider: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Created {
                kind,
                namespace,
                name,
                ..
            } => write!(f, "{kind} {namespace}/{name}"),
            Change::Labelled { namespace, name } => {
                write!(
                    f,
                    "label {} on pod {namespace}/{name}",
                    names::SESSION_LABEL
                )
            }
            Change::MeshProvider { config, provider } => {
                write!(f, "provider {provider} in mesh config {config}")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("creating {what}: {}", ApiText(source))]
    Create {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("removing {what}: {}", ApiText(source))]
    Remove {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("labelling pod {namespace}/{name}: {}", ApiText(source))]
    Label {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("mesh config {config}: {}", ApiText(source))]
    MeshApi {
        config: MeshConfigRef,
        #[source]
        source: kube::Error,
    },
    #[error("mesh config {config}: {source}")]
    Mesh {
        config: MeshConfigRef,
        #[source]
        source: MeshError,
    },
    #[error(
        "mesh config {config} kept changing under us ({MESH_UPDATE_ATTEMPTS} conflicts in a row): try again when the control plane is not being upgraded"
    )]
    MeshContention { config: MeshConfigRef },
    #[error("mesh config {config} has no `{MESH_KEY}` key: is it Istio's mesh ConfigMap?")]
    NoMeshKey { config: MeshConfigRef },
}

/// The changes a session has made so far, in order.
#[derive(Debug, Default)]
pub struct Journal {
    changes: Vec<Change>,
}

impl Journal {
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// Creates `object` and records it; returns it as the API server stored it.
    pub async fn create<K>(&mut self, client: &Client, object: &K) -> Result<K, ApplyError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + fmt::Debug
            + Serialize
            + DeserializeOwned,
    {
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        let name = object.meta().name.clone().unwrap_or_default();
        let what = format!("{} {namespace}/{name}", K::kind(&()));
        let created = Api::<K>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), object)
            .await
            .map_err(|source| ApplyError::Create { what, source })?;
        self.changes.push(Change::Created {
            kind: K::kind(&()).into_owned(),
            resource: ApiResource::erase::<K>(&()),
            namespace,
            name,
        });
        Ok(created)
    }

    /// Creates a custom resource (an Istio object) and records it.
    pub async fn create_dynamic(
        &mut self,
        client: &Client,
        resource: &ApiResource,
        object: &DynamicObject,
    ) -> Result<(), ApplyError> {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, resource)
            .create(&PostParams::default(), object)
            .await
            .map_err(|source| ApplyError::Create {
                what: format!("{} {namespace}/{name}", resource.kind),
                source,
            })?;
        self.changes.push(Change::Created {
            kind: resource.kind.clone(),
            resource: resource.clone(),
            namespace,
            name,
        });
        Ok(())
    }

    /// Puts the session label on a traced pod (a merge patch: nothing else of
    /// the pod changes, and it does not restart).
    pub async fn label_pod(
        &mut self,
        client: &Client,
        namespace: &str,
        name: &str,
        session: &names::SessionId,
    ) -> Result<(), ApplyError> {
        let patch = json!({ "metadata": { "labels": { names::SESSION_LABEL: session.as_str() } } });
        Api::<Pod>::namespaced(client.clone(), namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| ApplyError::Label {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            })?;
        self.changes.push(Change::Labelled {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
        Ok(())
    }

    /// Adds the session's provider to the mesh config.
    pub async fn add_mesh_provider(
        &mut self,
        client: &Client,
        config: &MeshConfigRef,
        provider: &Value,
    ) -> Result<(), ApplyError> {
        update_mesh(client, config, |mesh| mesh::add_provider(mesh, provider)).await?;
        self.changes.push(Change::MeshProvider {
            config: config.clone(),
            provider: provider["name"].as_str().unwrap_or_default().to_owned(),
        });
        Ok(())
    }

    /// Undoes every change, the last first. Keeps going past failures (each
    /// change is independent) and returns them with what is left behind.
    pub async fn undo_all(&mut self, client: &Client) -> Vec<(Change, ApplyError)> {
        let mut failures = Vec::new();
        while let Some(change) = self.changes.pop() {
            if let Err(error) = undo(client, &change).await {
                failures.push((change, error));
            }
        }
        failures
    }
}

/// Reverts one change. Something already gone counts as reverted, so that
/// undoing twice (the CLI and a probe, or two cleanups) is harmless.
pub async fn undo(client: &Client, change: &Change) -> Result<(), ApplyError> {
    let result = match change {
        Change::Created {
            resource,
            namespace,
            name,
            ..
        } => Api::<DynamicObject>::namespaced_with(client.clone(), namespace, resource)
            .delete(name, &DeleteParams::background())
            .await
            .map(drop),
        Change::Labelled { namespace, name } => {
            let patch = json!({ "metadata": { "labels": { names::SESSION_LABEL: null } } });
            Api::<Pod>::namespaced(client.clone(), namespace)
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        }
        Change::MeshProvider { config, provider } => {
            return update_mesh(client, config, |mesh| mesh::remove_provider(mesh, provider)).await;
        }
    };
    match result {
        Err(error) if !is_not_found(&error) => Err(ApplyError::Remove {
            what: change.to_string(),
            source: error,
        }),
        _ => Ok(()),
    }
}

/// Read-modify-write of the mesh config, conditional on the resourceVersion
/// read: a concurrent writer makes the update fail with 409 and we start over
/// from its version, so that nobody's change is lost. `edit` returns `None`
/// when there is nothing to change.
async fn update_mesh(
    client: &Client,
    config: &MeshConfigRef,
    edit: impl Fn(&str) -> Result<Option<String>, MeshError>,
) -> Result<(), ApplyError> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), &config.namespace);
    let api_error = |source| ApplyError::MeshApi {
        config: config.clone(),
        source,
    };
    for _ in 0..MESH_UPDATE_ATTEMPTS {
        let mut map = api.get(&config.name).await.map_err(api_error)?;
        let data = map.data.get_or_insert_default();
        let Some(current) = data.get(MESH_KEY) else {
            return Err(ApplyError::NoMeshKey {
                config: config.clone(),
            });
        };
        let Some(updated) = edit(current).map_err(|source| ApplyError::Mesh {
            config: config.clone(),
            source,
        })?
        else {
            return Ok(());
        };
        data.insert(MESH_KEY.to_owned(), updated);
        match api
            .replace(&config.name, &PostParams::default(), &map)
            .await
        {
            Ok(_) => return Ok(()),
            Err(error) if is_conflict(&error) => continue,
            Err(error) => return Err(api_error(error)),
        }
    }
    Err(ApplyError::MeshContention {
        config: config.clone(),
    })
}
