//! Every object a session creates, built from what the session knows; nothing
//! here talks to the API server, so `--dry-run` prints exactly what a session
//! would send, and tests validate it against the upstream schemas.

use std::{collections::BTreeMap, time::Duration};

use apitrace_proto::{
    filter_config::Config as FilterConfig,
    ports,
    probe_args::{LeaseRef, NODE_NAME_ENV, ProbeArgs, ProbeTarget, SESSION_TOKEN_ENV},
};
use k8s_openapi::{
    ByteString,
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{
            Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
            LocalObjectReference, ObjectFieldSelector, Pod, PodSpec, Probe as ReadinessProbe,
            ResourceRequirements, Secret, SecretKeySelector, SecurityContext, Service, ServicePort,
            ServiceSpec, Toleration,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
    jiff::{SignedDuration, Timestamp},
};
use kube::core::DynamicObject;
use serde_json::{Value, json};

use crate::{
    istio::{self, TelemetryVersion},
    mesh::{self, MeshConfigRef},
    names::{self, Component, SessionId},
    target::{TargetNode, Targets},
};

/// How long the probes outlive the session's duration: time to tear down
/// before the kubelet kills them.
pub const PROBE_GRACE: Duration = Duration::from_secs(60);
/// How long the anchor Lease stays valid without a renewal. The CLI renews it
/// every third of that; the probes clean up once it has lapsed.
pub const LEASE_DURATION: Duration = Duration::from_secs(30);

/// The probe pods' options, from the command line.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub namespace: String,
    pub image: String,
    pub pull_secrets: Vec<String>,
    /// `--privileged`: a privileged container instead of the listed capabilities,
    /// for runtimes whose seccomp or LSM profile refuses BPF to anything less.
    pub privileged: bool,
}

/// The filter module the probes serve, as a probe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterModule {
    pub path: String,
    pub sha256: String,
}

/// Everything the session will create, decided before anything is.
#[derive(Debug, Clone)]
pub struct Plan {
    pub session: SessionId,
    pub token: String,
    pub started: Timestamp,
    pub duration: Duration,
    pub holder: String,
    pub probe: ProbeOptions,
    pub mesh: MeshConfigRef,
    pub telemetry_version: TelemetryVersion,
    pub targets: Targets,
    /// Per target namespace, the `accessLogging` entries (providers, their
    /// filters and directions) that keep the traced pods' logging as it is.
    pub inherited_logging: BTreeMap<String, Vec<Value>>,
    /// `--show-secrets`: the filters send raw credentials, which they redact
    /// otherwise. The join redacts again unless told the same, but what the
    /// filter redacted cannot be restored, so the filter must be told.
    pub show_secrets: bool,
    /// The DNS domain the sidecars resolve the probe Service in (istiod's
    /// `--domain`): the provider's Service must be named in it.
    pub cluster_domain: String,
}

/// The capabilities the probe uses, and why. Anything else is dropped.
pub const PROBE_CAPABILITIES: &[&str] = &[
    // Load the TC program and create its maps and ring buffers.
    "BPF",
    // Attach TC programs (tcx links or netlink filters) to pod interfaces.
    "NET_ADMIN",
    // Enter the pods' network namespaces (setns) to find their interfaces.
    "SYS_ADMIN",
    // Read /proc/<pid>/ns/net and /proc/<pid>/cgroup of other containers' processes.
    "SYS_PTRACE",
    // Raise the locked-memory limit BPF maps are charged to on kernels before 5.11.
    "SYS_RESOURCE",
];

impl Plan {
    fn meta(&self, namespace: &str, name: String, component: Component) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_owned()),
            labels: Some(self.session.labels(component)),
            annotations: Some(BTreeMap::from([(
                names::EXPIRES_ANNOTATION.to_owned(),
                self.expires().to_string(),
            )])),
            ..ObjectMeta::default()
        }
    }

    /// When everything of the session must be gone at the latest.
    pub fn expires(&self) -> Timestamp {
        self.started + signed(self.duration + PROBE_GRACE)
    }

    /// The Service the sidecars send access logs and WASM events through.
    pub fn ingest_host(&self) -> String {
        format!(
            "{}.{}.svc.{}",
            self.session.object_name(),
            self.probe.namespace,
            self.cluster_domain
        )
    }

    /// The anchor: the CLI renews it; everything in the probe namespace is owned by it.
    pub fn lease(&self) -> Lease {
        let mut metadata = self.meta(
            &self.probe.namespace,
            self.session.object_name(),
            Component::Anchor,
        );
        let annotations = metadata.annotations.get_or_insert_default();
        annotations.insert(
            names::MESH_CONFIG_ANNOTATION.to_owned(),
            self.mesh.to_string(),
        );
        annotations.insert(
            names::TARGET_NAMESPACES_ANNOTATION.to_owned(),
            self.targets.namespaces().join(","),
        );
        Lease {
            metadata,
            spec: Some(LeaseSpec {
                holder_identity: Some(self.holder.clone()),
                lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                acquire_time: Some(MicroTime(self.started)),
                renew_time: Some(MicroTime(self.started)),
                ..LeaseSpec::default()
            }),
        }
    }

    pub fn token_secret(&self, owner: Option<&OwnerReference>) -> Secret {
        Secret {
            metadata: owned(
                self.meta(
                    &self.probe.namespace,
                    self.session.object_name(),
                    Component::Token,
                ),
                owner,
            ),
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                names::TOKEN_KEY.to_owned(),
                ByteString(self.token.clone().into_bytes()),
            )])),
            ..Secret::default()
        }
    }

    /// Port names tell Istio the protocol: `grpc-` makes the ALS cluster HTTP/2.
    pub fn ingest_service(&self, owner: Option<&OwnerReference>) -> Service {
        let port = |name: &str, number: u16, protocol: &str| ServicePort {
            name: Some(name.to_owned()),
            port: number.into(),
            target_port: Some(IntOrString::Int(number.into())),
            app_protocol: Some(protocol.to_owned()),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        };
        Service {
            metadata: owned(
                self.meta(
                    &self.probe.namespace,
                    self.session.object_name(),
                    Component::Ingest,
                ),
                owner,
            ),
            spec: Some(ServiceSpec {
                selector: Some(probe_selector(&self.session)),
                ports: Some(vec![
                    port("grpc-als", ports::ACCESS_LOG, "grpc"),
                    port("http-ingest", ports::HTTP, "http"),
                ]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// One probe per node hosting traced pods, in the order of `targets.nodes`.
    pub fn probe_pods(&self, owner: Option<&OwnerReference>) -> Vec<Pod> {
        self.targets
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| self.probe_pod(index, node, owner))
            .collect()
    }

    fn probe_pod(&self, index: usize, node: &TargetNode, owner: Option<&OwnerReference>) -> Pod {
        let mut metadata = owned(
            self.meta(
                &self.probe.namespace,
                self.session.probe_pod_name(index),
                Component::Probe,
            ),
            owner,
        );
        metadata
            .annotations
            .get_or_insert_default()
            .insert(names::NODE_ANNOTATION.to_owned(), node.name.clone());
        let targets = self
            .targets
            .pods
            .iter()
            .filter(|pod| pod.node == node.name)
            .map(|pod| ProbeTarget {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                netns: format!("container:{}", pod.sidecar_container_id),
            })
            .collect();
        let mut probe_args = ProbeArgs::new(
            self.session.to_string(),
            targets,
            self.duration + PROBE_GRACE,
        );
        probe_args.lease = Some(LeaseRef {
            namespace: self.probe.namespace.clone(),
            name: self.session.object_name(),
        });
        // Any sidecar of the session may reach any probe through the Service.
        probe_args.peers = self
            .targets
            .pods
            .iter()
            .flat_map(|pod| &pod.ips)
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let security_context = if self.probe.privileged {
            SecurityContext {
                privileged: Some(true),
                ..SecurityContext::default()
            }
        } else {
            SecurityContext {
                privileged: Some(false),
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    add: Some(PROBE_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
                    drop: Some(vec!["ALL".into()]),
                }),
                ..SecurityContext::default()
            }
        };
        let container_port = |name: &str, number: u16| ContainerPort {
            name: Some(name.to_owned()),
            container_port: number.into(),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        };
        let quantity = |text: &str| Quantity(text.to_owned());
        Pod {
            metadata,
            spec: Some(PodSpec {
                node_name: Some(node.name.clone()),
                host_pid: Some(true),
                service_account_name: Some(names::PROBE_SERVICE_ACCOUNT.to_owned()),
                restart_policy: Some("Never".into()),
                active_deadline_seconds: Some((self.duration + PROBE_GRACE).as_secs() as i64),
                termination_grace_period_seconds: Some(10),
                tolerations: Some(
                    node.taints
                        .iter()
                        .map(|taint| Toleration {
                            key: Some(taint.key.clone()),
                            operator: Some("Exists".into()),
                            effect: Some(taint.effect.clone()),
                            ..Toleration::default()
                        })
                        .collect(),
                ),
                image_pull_secrets: (!self.probe.pull_secrets.is_empty()).then(|| {
                    self.probe
                        .pull_secrets
                        .iter()
                        .map(|name| LocalObjectReference { name: name.clone() })
                        .collect()
                }),
                containers: vec![Container {
                    name: names::PROBE_CONTAINER.to_owned(),
                    image: Some(self.probe.image.clone()),
                    image_pull_policy: Some("IfNotPresent".into()),
                    args: Some(probe_args.to_args()),
                    env: Some(vec![
                        EnvVar {
                            name: SESSION_TOKEN_ENV.into(),
                            value_from: Some(EnvVarSource {
                                secret_key_ref: Some(SecretKeySelector {
                                    name: self.session.object_name(),
                                    key: names::TOKEN_KEY.to_owned(),
                                    optional: Some(false),
                                }),
                                ..EnvVarSource::default()
                            }),
                            ..EnvVar::default()
                        },
                        EnvVar {
                            name: NODE_NAME_ENV.into(),
                            value_from: Some(EnvVarSource {
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "spec.nodeName".into(),
                                    ..ObjectFieldSelector::default()
                                }),
                                ..EnvVarSource::default()
                            }),
                            ..EnvVar::default()
                        },
                    ]),
                    ports: Some(vec![
                        container_port("grpc-subscribe", ports::SUBSCRIBE),
                        container_port("grpc-als", ports::ACCESS_LOG),
                        container_port("http-ingest", ports::HTTP),
                    ]),
                    readiness_probe: Some(ReadinessProbe {
                        http_get: Some(HTTPGetAction {
                            path: Some("/healthz".into()),
                            port: IntOrString::Int(ports::HTTP.into()),
                            ..HTTPGetAction::default()
                        }),
                        period_seconds: Some(2),
                        ..ReadinessProbe::default()
                    }),
                    resources: Some(ResourceRequirements {
                        requests: Some(BTreeMap::from([
                            ("cpu".to_owned(), quantity("50m")),
                            ("memory".to_owned(), quantity("64Mi")),
                        ])),
                        limits: Some(BTreeMap::from([("memory".to_owned(), quantity("256Mi"))])),
                        ..ResourceRequirements::default()
                    }),
                    security_context: Some(security_context),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    /// The mesh config's `extensionProviders` entry for the session.
    pub fn als_provider(&self) -> Value {
        mesh::als_provider(&self.session, &self.ingest_host(), ports::ACCESS_LOG)
    }

    /// One Telemetry per target namespace, selecting the traced pods by the
    /// session label: our provider, and the logging they have now, kept.
    pub fn telemetries(&self) -> Vec<DynamicObject> {
        self.targets
            .namespaces()
            .into_iter()
            .map(|namespace| {
                let mut logging = vec![json!({
                    "providers": [{ "name": self.session.provider_name() }],
                })];
                logging.extend(
                    self.inherited_logging
                        .get(&namespace)
                        .into_iter()
                        .flatten()
                        .cloned(),
                );
                self.istio_object(
                    istio::telemetry(self.telemetry_version),
                    &namespace,
                    Component::Telemetry,
                    json!({
                        "selector": { "matchLabels": self.session_match_labels() },
                        "accessLogging": logging,
                    }),
                )
            })
            .collect()
    }

    /// One WasmPlugin per target namespace. AUTHN runs before Istio's jwt_authn,
    /// which removes a verified token; FAIL_OPEN so that a module that cannot be
    /// fetched costs the traced pods nothing; the URL carries the module's digest,
    /// so that no sidecar serves a cached older build.
    pub fn wasm_plugins(&self, module: &FilterModule) -> Vec<DynamicObject> {
        let host = self.ingest_host();
        self.targets
            .namespaces()
            .into_iter()
            .map(|namespace| {
                self.istio_object(
                    istio::wasm_plugin(),
                    &namespace,
                    Component::WasmPlugin,
                    json!({
                        "selector": { "matchLabels": self.session_match_labels() },
                        "url": format!("http://{host}:{}{}", ports::HTTP, module.path),
                        "sha256": module.sha256,
                        "imagePullPolicy": "IfNotPresent",
                        "phase": "AUTHN",
                        "failStrategy": "FAIL_OPEN",
                        "pluginName": "apitrace",
                        "pluginConfig": FilterConfig::new(
                            format!("outbound|{}||{host}", ports::HTTP),
                            format!("{host}:{}", ports::HTTP),
                            &self.token,
                            self.show_secrets,
                        ),
                    }),
                )
            })
            .collect()
    }

    fn session_match_labels(&self) -> Value {
        json!({ names::SESSION_LABEL: self.session.as_str() })
    }

    fn istio_object(
        &self,
        resource: kube::core::ApiResource,
        namespace: &str,
        component: Component,
        spec: Value,
    ) -> DynamicObject {
        let mut object = DynamicObject::new(&self.session.object_name(), &resource)
            .within(namespace)
            .data(json!({ "spec": spec }));
        object.metadata = self.meta(namespace, self.session.object_name(), component);
        object
    }
}

/// The probe pods of a session, as its ingest Service selects them.
fn probe_selector(session: &SessionId) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::SESSION_LABEL.to_owned(), session.to_string()),
        (
            names::COMPONENT_LABEL.to_owned(),
            Component::Probe.as_str().to_owned(),
        ),
    ])
}

/// The owner reference that makes the garbage collector delete an object with
/// the anchor Lease.
pub fn owner_reference(lease: &Lease) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        name: lease.metadata.name.clone()?,
        uid: lease.metadata.uid.clone()?,
        block_owner_deletion: Some(false),
        controller: Some(false),
    })
}

fn owned(mut metadata: ObjectMeta, owner: Option<&OwnerReference>) -> ObjectMeta {
    metadata.owner_references = owner.map(|owner| vec![owner.clone()]);
    metadata
}

fn signed(duration: Duration) -> SignedDuration {
    SignedDuration::try_from(duration).expect("session durations are far below the limit")
}
