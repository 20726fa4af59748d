//! Every label, annotation and name we put on cluster objects, in one place, so
//! that what a session creates, what cleanup looks for and what the probe
//! removes when the CLI is gone can never disagree.

use std::{collections::BTreeMap, fmt, str::FromStr};

/// `app.kubernetes.io/managed-by`: on every object a session creates (never on
/// the user's pods), so that cleanup deletes only objects that are ours.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "kubectl-apitrace";
/// `app.kubernetes.io/component`: what an object is for within its session.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// The session an object belongs to. On the traced pods it is the only thing we
/// add, so that Istio's `Telemetry` and `WasmPlugin` select exactly them, and it
/// is removed at the end.
pub const SESSION_LABEL: &str = "apitrace.io/session";
/// When the session's time box ends (RFC 3339): anything still there after it is
/// a leftover that `kubectl apitrace cleanup --all` removes.
pub const EXPIRES_ANNOTATION: &str = "apitrace.io/expires-at";
/// On the anchor Lease: the mesh ConfigMap (`NAMESPACE/NAME`) the session added its
/// access-log provider to, so that whoever cleans up knows where to remove it.
pub const MESH_CONFIG_ANNOTATION: &str = "apitrace.io/mesh-config";
/// On the anchor Lease: the namespaces holding the session's `Telemetry` and
/// `WasmPlugin`, comma separated.
pub const TARGET_NAMESPACES_ANNOTATION: &str = "apitrace.io/target-namespaces";
/// On a probe pod: the node it serves (node names may be too long for a label).
pub const NODE_ANNOTATION: &str = "apitrace.io/node";

/// The namespace the probes run in unless `--probe-namespace` says otherwise;
/// `manifests/probe.yaml` creates it with its Pod Security level.
pub const DEFAULT_PROBE_NAMESPACE: &str = "apitrace-system";
/// The probes' service account, from `manifests/probe.yaml`.
pub const PROBE_SERVICE_ACCOUNT: &str = "apitrace-probe";
/// The repository of the probe image a release builds (`cargo xtask release`
/// names it the same, and checks that the CLI it builds runs that image).
pub const PROBE_IMAGE_REPOSITORY: &str = "ghcr.io/apitrace/apitrace-probe";
/// The probe pod's only container.
pub const PROBE_CONTAINER: &str = "probe";
/// The key of the session Secret that holds the token.
pub const TOKEN_KEY: &str = "token";
/// The prefix of every object name (and of the mesh's access-log provider).
pub const NAME_PREFIX: &str = "apitrace-";

/// What an object is for, as its `app.kubernetes.io/component` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The Lease that anchors a session: everything in the probe namespace is
    /// owned by it, and the CLI renews it while it lives.
    Anchor,
    Probe,
    /// The session token the probes and filters check.
    Token,
    /// The Service the sidecars reach the probes through.
    Ingest,
    Telemetry,
    WasmPlugin,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Anchor => "anchor",
            Component::Probe => "probe",
            Component::Token => "token",
            Component::Ingest => "ingest",
            Component::Telemetry => "telemetry",
            Component::WasmPlugin => "wasm-plugin",
        }
    }
}

/// A session's id: 10 characters of `[a-z0-9]`, short enough for every name
/// and label we derive from it, random enough not to collide.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(String);

const SESSION_ID_LEN: usize = 10;
const SESSION_ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Debug, thiserror::Error)]
#[error(
    "{0:?} is not a session id: ids are {SESSION_ID_LEN} lowercase letters and digits, as `kubectl get leases -A -l {SESSION_LABEL}` shows them"
)]
pub struct InvalidSessionId(String);

impl SessionId {
    /// A fresh id, from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SESSION_ID_LEN];
        getrandom::fill(&mut bytes).expect("the operating system's random source works");
        Self(
            bytes
                .iter()
                .map(|b| SESSION_ID_ALPHABET[*b as usize % SESSION_ID_ALPHABET.len()] as char)
                .collect(),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of the anchor Lease, the token Secret, the ingest Service, and the
    /// session's `Telemetry` and `WasmPlugin` (each in its own namespace or kind).
    pub fn object_name(&self) -> String {
        format!("{NAME_PREFIX}{}", self.0)
    }

    /// The name of the session's access-log provider in the mesh config.
    pub fn provider_name(&self) -> String {
        self.object_name()
    }

    /// The name of the probe pod for the `index`-th node of the session.
    pub fn probe_pod_name(&self, index: usize) -> String {
        format!("{NAME_PREFIX}{}-probe-{index}", self.0)
    }

    /// The session id a provider name of ours carries, if it is one.
    pub fn from_provider_name(name: &str) -> Option<Self> {
        name.strip_prefix(NAME_PREFIX)?.parse().ok()
    }

    /// The labels of every object the session creates.
    pub fn labels(&self, component: Component) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (COMPONENT_LABEL.to_owned(), component.as_str().to_owned()),
            (SESSION_LABEL.to_owned(), self.0.clone()),
        ])
    }

    /// Selects every object the session created (not the pods it traces).
    pub fn created_selector(&self) -> String {
        format!("{MANAGED_BY_LABEL}={MANAGED_BY},{SESSION_LABEL}={}", self.0)
    }

    /// Selects the pods the session traces and its own objects alike.
    pub fn session_selector(&self) -> String {
        format!("{SESSION_LABEL}={}", self.0)
    }
}

/// Selects the objects of every session.
pub fn all_sessions_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{SESSION_LABEL}")
}

/// Selects the probe pods of every session.
pub fn probes_selector() -> String {
    format!(
        "{},{COMPONENT_LABEL}={}",
        all_sessions_selector(),
        Component::Probe.as_str()
    )
}

impl FromStr for SessionId {
    type Err = InvalidSessionId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() == SESSION_ID_LEN && text.bytes().all(|b| SESSION_ID_ALPHABET.contains(&b)) {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidSessionId(text.to_owned()))
        }
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_name_objects_within_kubernetes_limits() {
        let id = SessionId::generate();
        assert_eq!(id.as_str().parse::<SessionId>().unwrap(), id);
        assert_ne!(SessionId::generate(), id);
        // A pod name is also its hostname: at most 63 characters.
        assert!(id.probe_pod_name(999).len() <= 63);
        assert_eq!(SessionId::from_provider_name(&id.provider_name()), Some(id));
    }

    #[test]
    fn foreign_names_are_not_session_ids() {
        for text in ["", "ABCDEFGHIJ", "abc", "abcdefghijk", "abcde-ghij"] {
            let error = text.parse::<SessionId>().unwrap_err().to_string();
            assert!(error.contains("is not a session id"), "{error}");
        }
        assert_eq!(SessionId::from_provider_name("apitrace-prod"), None);
        assert_eq!(SessionId::from_provider_name("envoy"), None);
    }
}
