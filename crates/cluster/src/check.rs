//! What a session needs from the cluster, checked before anything is created
//! (and by `kubectl apitrace check`): Istio and its revision's mesh config, the
//! Telemetry and WasmPlugin APIs, the user's permissions, the probe
//! namespace's Pod Security level, each target node's kernel.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::Deployment,
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::{ConfigMap, Namespace},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
    core::DynamicObject,
};

use crate::{
    error_text::ApiText,
    istio::{self, TelemetryVersion},
    mesh::{self, MESH_KEY, MeshConfigRef, TelemetryPolicy},
    target::{Revision, Targets},
};

/// The namespace istiod and its mesh config live in unless `--istio-namespace` says otherwise.
pub const DEFAULT_ISTIO_NAMESPACE: &str = "istio-system";

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(
        "Istio's mesh config (ConfigMap {config}) was not found: is Istio installed (`istioctl version`)? If istiod runs in another namespace, pass --istio-namespace"
    )]
    IstioNotFound { config: MeshConfigRef },
    #[error(
        "the cluster does not serve {kind} ({group}): install Istio's CRDs (Istio 1.12 or later), e.g. `istioctl install`"
    )]
    ApiMissing {
        kind: &'static str,
        group: &'static str,
    },
    #[error("the mesh config in {config} cannot be read: {source}")]
    Mesh {
        config: MeshConfigRef,
        #[source]
        source: mesh::MeshError,
    },
    #[error(
        "missing permissions: {}; ask an admin to bind you the ClusterRole in manifests/user-clusterrole.yaml",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    )]
    Forbidden(Vec<Permission>),
    #[error(
        "namespace {namespace:?} enforces Pod Security level {level:?}: the probe needs hostPID and extra capabilities, which only \"privileged\" allows; apply manifests/probe.yaml, or label it: `kubectl label namespace {namespace} pod-security.kubernetes.io/enforce=privileged --overwrite`"
    )]
    PodSecurity { namespace: String, level: String },
    #[error(
        "istiod does not see the probe namespace {namespace:?}: the mesh config ({config}) has discoverySelectors and none selects it, so istiod would drop the session's access-log provider; label the namespace so that one selects it (see `kubectl get configmap -n {} {} -o yaml`)",
        config.namespace, config.name
    )]
    NotDiscovered {
        namespace: String,
        config: MeshConfigRef,
    },
    #[error(
        "pod {pod}'s sidecar cannot reach the probes: the Sidecar resource {sidecar} that applies to it leaves namespace {probe_namespace} out of its egress hosts, so the access logs and the filter's events would have nowhere to go; add \"{probe_namespace}/*\" to its egress hosts for the session"
    )]
    SidecarEgress {
        pod: String,
        sidecar: String,
        probe_namespace: String,
    },
    #[error(
        "probe namespace {namespace:?} does not exist: create it and the probe's service account with `kubectl apply -f manifests/probe.yaml`"
    )]
    NoProbeNamespace { namespace: String },
    #[error(
        "node {node} runs kernel {kernel}: the probe needs 5.8 or later (BPF ring buffers); pick pods on newer nodes"
    )]
    OldKernel { node: String, kernel: String },
    #[error(
        "the pods use more than one Istio revision ({}): trace one revision at a time (each pod's sidecar.istio.io/status annotation names its revision)",
        .0.join(", ")
    )]
    MixedRevisions(Vec<String>),
    #[error(transparent)]
    Logging(#[from] mesh::LoggingError),
    #[error(transparent)]
    NotExported(#[from] istio::NotExported),
    #[error("asking the API server about {what}: {}", ApiText(source))]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

fn api_error(what: &str) -> impl FnOnce(kube::Error) -> CheckError + '_ {
    move |source| CheckError::Api {
        what: what.to_owned(),
        source,
    }
}

/// The control plane the traced pods belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    pub config: MeshConfigRef,
    pub revision: String,
    /// From istiod's image tag; `None` when istiod's Deployment is not readable.
    pub version: Option<String>,
    /// The DNS domain the sidecars resolve Services in, as istiod is told
    /// it; `None` when istiod's Deployment is not readable.
    pub cluster_domain: Option<String>,
    pub telemetry_version: TelemetryVersion,
    /// The mesh config as it is now (`data.mesh`).
    pub mesh_config: String,
    /// Who else keeps the mesh config as they want it, if its metadata says
    /// (see [`mesh_owner`]): they may put it back mid-session, dropping the
    /// session's access-log provider.
    pub owner: Option<String>,
}

/// Finds the mesh config of `revision` and the Istio APIs the session uses.
pub async fn mesh(
    client: &Client,
    istio_namespace: &str,
    revision: &str,
) -> Result<Mesh, CheckError> {
    let config = MeshConfigRef::for_revision(istio_namespace, revision);
    let map = Api::<ConfigMap>::namespaced(client.clone(), istio_namespace)
        .get_opt(&config.name)
        .await
        .map_err(api_error("Istio's mesh config"))?
        .ok_or_else(|| CheckError::IstioNotFound {
            config: config.clone(),
        })?;
    let owner = mesh_owner(&map);
    let mesh_config = map
        .data
        .and_then(|mut data| data.remove(MESH_KEY))
        .unwrap_or_default();
    let groups = client
        .list_api_groups()
        .await
        .map_err(api_error("the served APIs"))?;
    let versions = |group: &str| -> Vec<String> {
        groups
            .groups
            .iter()
            .filter(|g| g.name == group)
            .flat_map(|g| g.versions.iter().map(|v| v.version.clone()))
            .collect()
    };
    let telemetry = versions(istio::TELEMETRY_GROUP);
    let telemetry_version = if telemetry.iter().any(|v| v == "v1") {
        TelemetryVersion::V1
    } else if telemetry.iter().any(|v| v == "v1alpha1") {
        TelemetryVersion::V1Alpha1
    } else {
        return Err(CheckError::ApiMissing {
            kind: "Telemetry",
            group: istio::TELEMETRY_GROUP,
        });
    };
    if !versions(istio::EXTENSIONS_GROUP)
        .iter()
        .any(|v| v == "v1alpha1")
    {
        return Err(CheckError::ApiMissing {
            kind: "WasmPlugin",
            group: istio::EXTENSIONS_GROUP,
        });
    }
    let istiod = if revision == "default" {
        "istiod".to_owned()
    } else {
        format!("istiod-{revision}")
    };
    // istiod's Deployment gives the version line and the cluster's DNS
    // domain; a managed control plane has none in the cluster.
    let container = Api::<Deployment>::namespaced(client.clone(), istio_namespace)
        .get_opt(&istiod)
        .await
        .ok()
        .flatten()
        .and_then(|deployment| deployment.spec.template.spec?.containers.into_iter().next());
    let version = container
        .as_ref()
        .and_then(|container| Some(container.image.as_deref()?.rsplit_once(':')?.1.to_owned()));
    let cluster_domain = container
        .as_ref()
        .map(|container| domain_argument(container.args.as_deref().unwrap_or_default()));
    Ok(Mesh {
        config,
        revision: revision.to_owned(),
        version,
        cluster_domain,
        telemetry_version,
        mesh_config,
        owner,
    })
}

/// Who reconciles the mesh ConfigMap, from what each tool writes on the
/// objects it manages: an owner reference (an operator's custom resource,
/// such as the Sail operator's); Argo CD's annotation tracking,
/// `argocd.argoproj.io/tracking-id` (`AnnotationKeyAppInstance` in
/// argoproj/argo-cd `common/common.go`), whose value starts with the
/// application (`<app>:<group>/<kind>:<namespace>/<name>`,
/// `BuildAppInstanceValue` in `util/argo/resource_tracking.go`); Flux's
/// `<group>/name` and `<group>/namespace` labels, which the kustomize
/// controller writes through fluxcd/pkg's `ssa` `SetOwnerLabels` with the
/// group `kustomize.toolkit.fluxcd.io` and the helm controller through its
/// `OriginLabels` post-renderer with `helm.toolkit.fluxcd.io`; Istio's
/// chart's `install.operator.istio.io/owning-resource` when it names a
/// resource rather than its default `unknown`. Helm's own
/// `app.kubernetes.io/managed-by: Helm` and Argo CD's label tracking
/// (`app.kubernetes.io/instance`) are on every chart install, so they say
/// nothing about a reconciler. The commits each was read at are in
/// docs/cluster-upstream.md, section 8.
pub fn mesh_owner(map: &ConfigMap) -> Option<String> {
    let metadata = &map.metadata;
    let references = metadata.owner_references.as_deref().unwrap_or_default();
    if let Some(owner) = references
        .iter()
        .find(|owner| owner.controller == Some(true))
        .or_else(|| references.first())
    {
        return Some(format!(
            "{} {} ({})",
            owner.kind, owner.name, owner.api_version
        ));
    }
    let annotations = metadata.annotations.clone().unwrap_or_default();
    if let Some(tracking) = annotations.get("argocd.argoproj.io/tracking-id") {
        let application = tracking
            .split_once(':')
            .map_or(tracking.as_str(), |(app, _)| app);
        return Some(format!("Argo CD application {application}"));
    }
    let labels = metadata.labels.clone().unwrap_or_default();
    for (prefix, kind) in [
        ("kustomize.toolkit.fluxcd.io", "Kustomization"),
        ("helm.toolkit.fluxcd.io", "HelmRelease"),
    ] {
        if let Some(name) = labels.get(&format!("{prefix}/name")) {
            let namespace = labels
                .get(&format!("{prefix}/namespace"))
                .map_or(String::new(), |namespace| format!("{namespace}/"));
            return Some(format!("Flux {kind} {namespace}{name}"));
        }
    }
    labels
        .get("install.operator.istio.io/owning-resource")
        .filter(|owner| !owner.is_empty() && owner.as_str() != "unknown")
        .map(|owner| format!("the Istio operator resource {owner}"))
}

/// The cluster's DNS domain as istiod is started with it: `--domain`, which
/// Istio's chart sets from `global.proxy.clusterDomain`, else `cluster.local`
/// (istio/istio, pilot/cmd/pilot-discovery/app/cmd.go and
/// manifests/charts/istio-control/istio-discovery/templates/deployment.yaml,
/// 1.28.10). The probe Service's name in the mesh config must use it, or
/// istiod finds no such Service and drops the access-log provider.
fn domain_argument(args: &[String]) -> String {
    let mut args = args.iter();
    let mut domain = None;
    while let Some(arg) = args.next() {
        if arg == "--domain" {
            domain = args.next().cloned();
        } else if let Some(value) = arg.strip_prefix("--domain=") {
            domain = Some(value.to_owned());
        }
    }
    domain.unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.to_owned())
}

/// The domain of a cluster whose istiod is not told another.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// The single revision of the traced pods, resolved as istiod does: what the
/// injector wrote into each pod's status annotation, else the revision the
/// pod's injection label (or a revision tag it names) points to.
pub async fn revision(client: &Client, targets: &Targets) -> Result<String, CheckError> {
    let mut revisions = Vec::with_capacity(targets.pods.len());
    let mut tags: BTreeMap<String, String> = BTreeMap::new();
    for pod in &targets.pods {
        let revision = match &pod.revision {
            Revision::Injected(revision) => revision.clone(),
            Revision::Selected(name) => match tags.get(name) {
                Some(revision) => revision.clone(),
                None => {
                    let revision = tag_revision(client, name).await?;
                    tags.insert(name.clone(), revision.clone());
                    revision
                }
            },
        };
        revisions.push(revision);
    }
    revisions.sort();
    revisions.dedup();
    if revisions.len() > 1 {
        return Err(CheckError::MixedRevisions(revisions));
    }
    Ok(revisions.pop().unwrap_or_else(|| "default".into()))
}

/// The revision `name` points to: a revision tag is a
/// MutatingWebhookConfiguration labelled `istio.io/tag=<name>` whose
/// `istio.io/rev` label is the revision (istio/istio,
/// pkg/revisions/tag_watcher.go, 1.28.10); without one, `name` is a revision.
async fn tag_revision(client: &Client, name: &str) -> Result<String, CheckError> {
    let webhooks = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{}={name}", istio::TAG_LABEL)))
        .await
        .map_err(api_error("Istio's revision tags"))?;
    Ok(webhooks
        .items
        .iter()
        .find_map(|webhook| {
            webhook
                .metadata
                .labels
                .as_ref()?
                .get(istio::REVISION_LABEL)
                .cloned()
        })
        .unwrap_or_else(|| name.to_owned()))
}

/// Per target namespace, the `accessLogging` entries that keep its traced
/// pods' logging as it is (see [`mesh::inherited_access_logging`]).
pub async fn inherited_logging(
    client: &Client,
    mesh: &Mesh,
    targets: &Targets,
) -> Result<BTreeMap<String, Vec<serde_json::Value>>, CheckError> {
    let resource = istio::telemetry(mesh.telemetry_version);
    let logging = mesh::mesh_logging(&mesh.mesh_config).map_err(|source| CheckError::Mesh {
        config: mesh.config.clone(),
        source,
    })?;
    let namespaces = targets.namespaces();
    let mut listed = namespaces.clone();
    if !listed.contains(&logging.root_namespace) {
        listed.insert(0, logging.root_namespace.clone());
    }
    let mut policies = Vec::new();
    for namespace in &listed {
        let list = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
            .list(&ListParams::default())
            .await
            .map_err(api_error("Telemetry policies"))?;
        policies.extend(list.items.iter().filter_map(|object| {
            TelemetryPolicy::from_object(&serde_json::to_value(object).ok()?)
        }));
    }
    let mut inherited = BTreeMap::new();
    for namespace in namespaces {
        let mut kept: Option<Vec<serde_json::Value>> = None;
        for pod in targets.pods.iter().filter(|pod| pod.namespace == namespace) {
            let entries =
                mesh::inherited_access_logging(&policies, &namespace, &pod.labels, &logging)?;
            match &kept {
                Some(others) if *others != entries => {
                    return Err(mesh::LoggingError::PodsDiffer {
                        namespace: namespace.clone(),
                    }
                    .into());
                }
                _ => kept = Some(entries),
            }
        }
        inherited.insert(namespace, kept.unwrap_or_default());
    }
    Ok(inherited)
}

/// Checks that the `Sidecar` resource istiod applies to each traced pod (if
/// any) lets its sidecar reach the probe namespace's Services: one whose
/// egress leaves them out gives the sidecar no cluster to send the access
/// logs and the filter's events to.
pub async fn sidecars_reach_probes(
    client: &Client,
    mesh: &Mesh,
    targets: &Targets,
    probe_namespace: &str,
) -> Result<(), CheckError> {
    let logging = mesh::mesh_logging(&mesh.mesh_config).map_err(|source| CheckError::Mesh {
        config: mesh.config.clone(),
        source,
    })?;
    let mut listed = targets.namespaces();
    if !listed.contains(&logging.root_namespace) {
        listed.push(logging.root_namespace.clone());
    }
    let mut sidecars = Vec::new();
    for namespace in &listed {
        let list =
            Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &istio::sidecar())
                .list(&ListParams::default())
                .await
                .map_err(api_error("Istio's Sidecar resources"))?;
        sidecars.extend(list.items.iter().filter_map(|object| {
            Some(istio::SidecarPolicy::from_object(
                &serde_json::to_value(object).ok()?,
            ))
        }));
    }
    let domain = mesh
        .cluster_domain
        .as_deref()
        .unwrap_or(DEFAULT_CLUSTER_DOMAIN);
    for pod in &targets.pods {
        let applied = istio::applied_sidecar(
            &sidecars,
            &pod.namespace,
            &pod.labels,
            &logging.root_namespace,
        );
        if let Some(sidecar) =
            applied.filter(|s| !s.reaches(&pod.namespace, probe_namespace, domain))
        {
            return Err(CheckError::SidecarEgress {
                pod: format!("{}/{}", pod.namespace, pod.name),
                sidecar: format!("{}/{}", sidecar.namespace, sidecar.name),
                probe_namespace: probe_namespace.to_owned(),
            });
        }
    }
    Ok(())
}

/// Checks that istiod will give the traced pods' sidecars the probe Service,
/// which the session creates without an exportTo of its own: the mesh
/// config's `defaultServiceExportTo` decides (see [`istio::ExportTo`]). The
/// provider that names the Service stays in the mesh config either way, but a
/// sidecar without the Service has no cluster to send to. The Service's own
/// annotation, should something add one when it is created, is checked by
/// the session once it exists.
pub fn probe_service_exported(
    mesh: &Mesh,
    targets: &Targets,
    probe_namespace: &str,
) -> Result<(), CheckError> {
    let defaults =
        mesh::default_service_export_to(&mesh.mesh_config).map_err(|source| CheckError::Mesh {
            config: mesh.config.clone(),
            source,
        })?;
    istio::ExportTo::MeshDefault(defaults).check(
        probe_namespace,
        &targets.namespaces(),
        &mesh.config.to_string(),
    )?;
    Ok(())
}

/// One thing a session does, as a SelfSubjectAccessReview asks about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    /// `None`: in every namespace.
    pub namespace: Option<String>,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resource = if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        let resource = if self.subresource.is_empty() {
            resource
        } else {
            format!("{resource}/{}", self.subresource)
        };
        match &self.namespace {
            Some(namespace) => write!(f, "{} {resource} in {namespace}", self.verb),
            None => write!(f, "{} {resource} (all namespaces)", self.verb),
        }
    }
}

/// Everything a session (and its teardown and cleanup) asks the API server to do.
pub fn permissions(
    probe_namespace: &str,
    istio_namespace: &str,
    target_namespaces: &[String],
) -> Vec<Permission> {
    let at = |verb, group, resource, subresource, namespace: Option<&str>| Permission {
        verb,
        group,
        resource,
        subresource,
        namespace: namespace.map(str::to_owned),
    };
    let probe = Some(probe_namespace);
    let mut needed = vec![
        at("get", "", "nodes", "", None),
        at("list", "", "pods", "", None),
        // The identity watch: who every address is.
        at("watch", "", "pods", "", None),
        at("list", "", "services", "", None),
        at("watch", "", "services", "", None),
        at("list", "", "nodes", "", None),
        at("watch", "", "nodes", "", None),
        // A revision tag, for a pod whose status annotation names no revision.
        at(
            "list",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "",
            None,
        ),
        at("get", "", "configmaps", "", Some(istio_namespace)),
        at("update", "", "configmaps", "", Some(istio_namespace)),
        at("create", "coordination.k8s.io", "leases", "", probe),
        at("patch", "coordination.k8s.io", "leases", "", probe),
        at("delete", "coordination.k8s.io", "leases", "", probe),
        at("create", "", "secrets", "", probe),
        at("delete", "", "secrets", "", probe),
        at("create", "", "services", "", probe),
        at("delete", "", "services", "", probe),
        at("create", "", "pods", "", probe),
        at("get", "", "pods", "", probe),
        at("delete", "", "pods", "", probe),
        // The WebSocket port-forward's GET is authorised as `get`, and from
        // Kubernetes 1.35 also as `create` (kubernetes/kubernetes,
        // pkg/registry/core/pod/rest/subresources.go, v1.35.0).
        at("get", "", "pods", "portforward", probe),
        at("create", "", "pods", "portforward", probe),
    ];
    for namespace in target_namespaces {
        let namespace = Some(namespace.as_str());
        needed.extend([
            at("patch", "", "pods", "", namespace),
            at("list", istio::NETWORKING_GROUP, "sidecars", "", namespace),
            at("list", istio::TELEMETRY_GROUP, "telemetries", "", namespace),
            at(
                "create",
                istio::TELEMETRY_GROUP,
                "telemetries",
                "",
                namespace,
            ),
            at(
                "delete",
                istio::TELEMETRY_GROUP,
                "telemetries",
                "",
                namespace,
            ),
            at(
                "create",
                istio::EXTENSIONS_GROUP,
                "wasmplugins",
                "",
                namespace,
            ),
            at(
                "delete",
                istio::EXTENSIONS_GROUP,
                "wasmplugins",
                "",
                namespace,
            ),
        ]);
    }
    needed
}

/// The permissions of `needed` the user does not have.
pub async fn missing_permissions(
    client: &Client,
    needed: &[Permission],
) -> Result<Vec<Permission>, CheckError> {
    let api = Api::<SelfSubjectAccessReview>::all(client.clone());
    let mut missing = Vec::new();
    for permission in needed {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(permission.verb.to_owned()),
                    group: Some(permission.group.to_owned()),
                    resource: Some(permission.resource.to_owned()),
                    subresource: (!permission.subresource.is_empty())
                        .then(|| permission.subresource.to_owned()),
                    namespace: permission.namespace.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(api_error("permissions"))?;
        if !answer.status.is_some_and(|status| status.allowed) {
            missing.push(permission.clone());
        }
    }
    Ok(missing)
}

/// Checks the probe namespace: it exists, its Pod Security level
/// (`privileged` when unset: the built-in default, unless the cluster
/// configures another) admits the probe, and istiod sees it: with
/// `discoverySelectors` in the mesh config, istiod keeps only the Services of
/// namespaces one of them selects, and drops an access-log provider whose
/// Service it does not know (istio/istio, pkg/kube/namespace/filter.go,
/// `selectorsChanged` and `Filter`, 1.28.10). Returns the level.
pub async fn probe_namespace_level(
    client: &Client,
    namespace: &str,
    mesh: &Mesh,
) -> Result<String, CheckError> {
    let object = Api::<Namespace>::all(client.clone())
        .get_opt(namespace)
        .await
        .map_err(api_error("the probe namespace"))?
        .ok_or_else(|| CheckError::NoProbeNamespace {
            namespace: namespace.to_owned(),
        })?;
    let labels = object.metadata.labels.unwrap_or_default();
    let level = labels
        .get("pod-security.kubernetes.io/enforce")
        .cloned()
        .unwrap_or_else(|| "privileged".into());
    if level != "privileged" {
        return Err(CheckError::PodSecurity {
            namespace: namespace.to_owned(),
            level,
        });
    }
    let discovered =
        mesh::discovers(&mesh.mesh_config, &labels).map_err(|source| CheckError::Mesh {
            config: mesh.config.clone(),
            source,
        })?;
    if !discovered {
        return Err(CheckError::NotDiscovered {
            namespace: namespace.to_owned(),
            config: mesh.config.clone(),
        });
    }
    Ok(level)
}

/// How the probe attaches on a node, from its kernel version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// tcx links (6.6+): removed by the kernel when the probe exits.
    Tcx,
    /// Netlink clsact filters (5.8 – 6.5): removed by the probe, swept if it is killed.
    Netlink,
}

/// Checks a node's kernel (`5.15.0-91-generic`, `6.8.0`…) can run the probe.
pub fn kernel_attach(node: &str, kernel: &str) -> Result<Attach, CheckError> {
    let mut numbers = kernel
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>().ok());
    let version = (numbers.next().flatten(), numbers.next().flatten());
    let old = || CheckError::OldKernel {
        node: node.to_owned(),
        kernel: kernel.to_owned(),
    };
    match version {
        (Some(major), Some(minor)) if (major, minor) >= (6, 6) => Ok(Attach::Tcx),
        (Some(major), Some(minor)) if (major, minor) >= (5, 8) => Ok(Attach::Netlink),
        _ => Err(old()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_decide_how_the_probe_attaches() {
        assert_eq!(kernel_attach("n", "6.8.0-1015-aws").unwrap(), Attach::Tcx);
        assert_eq!(kernel_attach("n", "6.6.0").unwrap(), Attach::Tcx);
        assert_eq!(
            kernel_attach("n", "5.15.0-91-generic").unwrap(),
            Attach::Netlink
        );
        assert_eq!(kernel_attach("n", "5.8.0").unwrap(), Attach::Netlink);
        for old in ["5.4.0-1103-aws", "4.19.0", "", "unknown"] {
            let error = kernel_attach("node-1", old).unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "node node-1 runs kernel {old}: the probe needs 5.8 or later (BPF ring buffers); pick pods on newer nodes"
                )
            );
        }
    }

    #[test]
    fn the_cluster_domain_is_the_one_istiod_is_started_with() {
        let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let chart = args(&[
            "discovery",
            "--monitoringAddr=:15014",
            "--domain",
            "corp.internal",
            "--keepaliveMaxServerConnectionAge",
            "30m",
        ]);
        assert_eq!(domain_argument(&chart), "corp.internal");
        assert_eq!(
            domain_argument(&args(&["discovery", "--domain=example.org"])),
            "example.org"
        );
        assert_eq!(domain_argument(&args(&["discovery"])), "cluster.local");
    }

    #[test]
    fn permissions_name_what_is_missing() {
        let needed = permissions("apitrace-system", "istio-system", &["shop".into()]);
        let text = CheckError::Forbidden(needed[..2].to_vec()).to_string();
        assert_eq!(
            text,
            "missing permissions: get nodes (all namespaces), list pods (all namespaces); ask an admin to bind you the ClusterRole in manifests/user-clusterrole.yaml"
        );
        assert!(
            needed
                .iter()
                .any(|p| p.to_string() == "create wasmplugins.extensions.istio.io in shop")
        );
        assert!(
            needed
                .iter()
                .any(|p| p.to_string() == "create pods/portforward in apitrace-system")
        );
    }

    #[test]
    fn a_mesh_default_export_that_leaves_the_traced_namespace_out_is_refused() {
        let targets = crate::mock_tests::plan().targets;
        let mesh = |text: &str| Mesh {
            config: MeshConfigRef::for_revision("istio-system", "default"),
            revision: "default".into(),
            version: None,
            cluster_domain: None,
            telemetry_version: TelemetryVersion::V1,
            mesh_config: text.into(),
            owner: None,
        };
        for exported in [
            "rootNamespace: istio-system",
            "defaultServiceExportTo: [\"*\"]",
        ] {
            assert!(probe_service_exported(&mesh(exported), &targets, "apitrace-system").is_ok());
        }
        // Its own namespace only: fine for probes run beside the pods.
        let private = mesh("defaultServiceExportTo: [\".\"]");
        assert!(probe_service_exported(&private, &targets, "shop").is_ok());
        assert_eq!(
            probe_service_exported(&private, &targets, "apitrace-system")
                .unwrap_err()
                .to_string(),
            "the sidecars in namespace shop would not get the probe Service in apitrace-system, so the access logs and the filter's events would have nowhere to go: the mesh config (istio-system/istio) has defaultServiceExportTo [\".\"], which gives a Service without an exportTo of its own to its own namespace only; set it to [\"*\"], or run the probes in shop (`--probe-namespace shop`, with manifests/probe.yaml applied there)"
        );
        let named = mesh("defaultServiceExportTo: [shop]");
        assert!(
            probe_service_exported(&named, &targets, "apitrace-system")
                .unwrap_err()
                .to_string()
                .ends_with(
                    "to no namespace (istiod takes only \"*\" and \".\" from it); add \"*\" to it"
                )
        );
    }

    #[test]
    fn the_owner_of_a_mesh_config_is_read_off_what_each_tool_writes_on_it() {
        let owned = |metadata: serde_json::Value| {
            let map: ConfigMap =
                serde_json::from_value(serde_json::json!({ "metadata": metadata }))
                    .expect("a ConfigMap");
            mesh_owner(&map)
        };
        // A plain chart install: Helm's labels and the chart's "unknown".
        assert_eq!(
            owned(serde_json::json!({ "labels": {
                "app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/instance": "istiod",
                "install.operator.istio.io/owning-resource": "unknown",
            } })),
            None
        );
        assert_eq!(
            owned(serde_json::json!({ "ownerReferences": [
                { "apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "1" },
                { "apiVersion": "sailoperator.io/v1", "kind": "IstioRevision", "name": "default", "uid": "2", "controller": true },
            ] })),
            Some("IstioRevision default (sailoperator.io/v1)".into())
        );
        assert_eq!(
            owned(serde_json::json!({ "annotations": {
                "argocd.argoproj.io/tracking-id": "istio-control:/ConfigMap:istio-system/istio",
            } })),
            Some("Argo CD application istio-control".into())
        );
        assert_eq!(
            owned(serde_json::json!({ "labels": {
                "kustomize.toolkit.fluxcd.io/name": "mesh", "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
            } })),
            Some("Flux Kustomization flux-system/mesh".into())
        );
        assert_eq!(
            owned(serde_json::json!({ "labels": { "helm.toolkit.fluxcd.io/name": "istiod" } })),
            Some("Flux HelmRelease istiod".into())
        );
        assert_eq!(
            owned(
                serde_json::json!({ "labels": { "install.operator.istio.io/owning-resource": "installed-state" } })
            ),
            Some("the Istio operator resource installed-state".into())
        );
    }
}
