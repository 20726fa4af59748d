//! The mesh config (`data.mesh` of Istio's ConfigMap, a YAML MeshConfig) and
//! the access-log providers workloads already log to, as pure functions: the
//! session adds exactly one `extensionProviders` entry and removes exactly that
//! one, keeping every other provider and field.
//!
//! The entry is one line of the text, put into the list where it is written,
//! so that the rest of the text keeps its order, comments and layout, and a
//! session leaves the ConfigMap as it found it, byte for byte (GitOps tools
//! and `kubectl diff` see nothing). Where the text is laid out otherwise (a
//! list written on one line, a flow mapping), or the line edit would not mean
//! exactly the change, the config is written anew from its parsed value.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::names::SessionId;

/// The key of Istio's mesh ConfigMap that holds the MeshConfig.
pub const MESH_KEY: &str = "mesh";

/// Where the mesh config of a control plane lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfigRef {
    pub namespace: String,
    pub name: String,
}

impl MeshConfigRef {
    /// `istio` for the default revision, `istio-<rev>` for a revisioned control plane.
    pub fn for_revision(namespace: &str, revision: &str) -> Self {
        let name = if revision == "default" {
            "istio".to_owned()
        } else {
            format!("istio-{revision}")
        };
        Self {
            namespace: namespace.to_owned(),
            name,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        let (namespace, name) = text.split_once('/')?;
        Some(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for MeshConfigRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("the mesh config is not valid YAML: {0}")]
    Yaml(String),
    #[error("the mesh config is not a YAML mapping")]
    NotAMapping,
    #[error("the mesh config's extensionProviders is not a list")]
    ProvidersNotAList,
    #[error(
        "the mesh config already has a provider named {0:?} that apitrace did not write: remove or rename it"
    )]
    NameTaken(String),
}

/// The `envoyHttpAls` provider that sends a session's access logs to its probes.
/// It logs a gRPC call's status from the response's trailers and, for a
/// Trailers-Only answer, its headers: istiod copies both lists into the
/// sidecars' access-log config (istio/istio `pilot/pkg/model/telemetry_logging.go`,
/// `httpGrpcAccessLogFromTelemetry`, 1.30.3).
pub fn als_provider(session: &SessionId, service_host: &str, port: u16) -> Value {
    let grpc = apitrace_proto::access_log::GRPC_STATUS_HEADERS;
    json!({
        "name": session.provider_name(),
        "envoyHttpAls": {
            "service": service_host,
            "port": port,
            "additionalResponseHeadersToLog": grpc,
            "additionalResponseTrailersToLog": grpc,
        },
    })
}

fn parse(mesh: &str) -> Result<Value, MeshError> {
    if mesh.trim().is_empty() {
        return Ok(json!({}));
    }
    let value: Value =
        serde_saphyr::from_str(mesh).map_err(|error| MeshError::Yaml(error.to_string()))?;
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(json!({})),
        _ => Err(MeshError::NotAMapping),
    }
}

fn render(mesh: &Value) -> String {
    serde_saphyr::to_string(mesh).expect("a JSON value is always representable as YAML")
}

/// `edited` if it reads as `wanted`, else `wanted` written anew.
fn checked(edited: Option<String>, wanted: &Value) -> String {
    edited
        .filter(|text| parse(text).is_ok_and(|value| value == *wanted))
        .unwrap_or_else(|| render(wanted))
}

const PROVIDERS_KEY_LINE: &str = "extensionProviders:";

/// Where the items of the block list under `extensionProviders:` are: the
/// key's line, the last line of the last item, and the items' indentation.
/// `None` for the items when the key has none under it.
fn provider_block(lines: &[&str]) -> Option<(usize, Option<(usize, usize)>)> {
    let key = lines
        .iter()
        .position(|line| line.trim_end() == PROVIDERS_KEY_LINE)?;
    let mut items = None;
    for (index, line) in lines.iter().enumerate().skip(key + 1) {
        let content = line.trim_start();
        if content.trim().is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        let is_item = content.starts_with("- ") || content.trim_end() == "-";
        if indent == 0 && !is_item {
            break;
        }
        let item_indent = items.map_or(indent, |(_, item_indent)| item_indent);
        items = Some((index, item_indent));
    }
    Some((key, items))
}

/// `lines` joined, with `line` put after `lines[after]` (at the end for
/// `None`). A text without a final newline keeps going without one.
fn with_line(lines: &[&str], after: Option<usize>, line: &str) -> String {
    let at = after.map_or(lines.len(), |after| after + 1);
    let mut text: String = lines[..at].concat();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
        text.push_str(line);
    } else {
        text.push_str(line);
        text.push('\n');
    }
    text.extend(lines[at..].iter().copied());
    text
}

/// The text with `provider` as one more line of the `extensionProviders`
/// list, written as JSON (which YAML reads as a flow mapping), or with the
/// list added at the end when there is none.
fn insert_provider_line(mesh: &str, provider: &Value) -> Option<String> {
    let item = format!("- {}", serde_json::to_string(provider).ok()?);
    let lines: Vec<&str> = mesh.split_inclusive('\n').collect();
    match provider_block(&lines) {
        // A list written on the key's line (`extensionProviders: []`) is
        // not one to add a line to, nor to add a second key for.
        None if lines
            .iter()
            .any(|line| line.starts_with("extensionProviders")) =>
        {
            None
        }
        None => Some(with_line(
            &lines,
            None,
            &format!("{PROVIDERS_KEY_LINE}\n{item}"),
        )),
        Some((_, Some((last, indent)))) => Some(with_line(
            &lines,
            Some(last),
            &format!("{}{item}", " ".repeat(indent)),
        )),
        Some((_, None)) => None,
    }
}

/// The text without the line of the provider called `name`, as
/// [`insert_provider_line`] wrote it, and without the list's key when that
/// was its only item.
fn remove_provider_line(mesh: &str, name: &str) -> Option<String> {
    let mut lines: Vec<&str> = mesh.split_inclusive('\n').collect();
    let ours = lines.iter().position(|line| {
        line.trim()
            .strip_prefix("- ")
            .and_then(|json| serde_json::from_str::<Value>(json).ok())
            .is_some_and(|provider| provider["name"] == name)
    })?;
    lines.remove(ours);
    if let Some((key, None)) = provider_block(&lines) {
        lines.remove(key);
    }
    let mut text = lines.concat();
    // The line taken out was the last: the one before it ends the text now,
    // without the newline that separated the two.
    if !mesh.ends_with('\n') && text.ends_with('\n') {
        text.pop();
    }
    Some(text)
}

fn providers(mesh: &mut Value) -> Result<&mut Vec<Value>, MeshError> {
    let object = mesh.as_object_mut().ok_or(MeshError::NotAMapping)?;
    let list = object
        .entry("extensionProviders")
        .or_insert_with(|| json!([]));
    // `extensionProviders:` with nothing after it: none yet, as Istio reads it.
    if list.is_null() {
        *list = json!([]);
    }
    list.as_array_mut().ok_or(MeshError::ProvidersNotAList)
}

/// The mesh config with `provider` added; `None` when it is already there as is
/// (a retried update), an error when its name is taken by something else.
pub fn add_provider(mesh: &str, provider: &Value) -> Result<Option<String>, MeshError> {
    let mut value = parse(mesh)?;
    let list = providers(&mut value)?;
    if let Some(existing) = list.iter().find(|p| p["name"] == provider["name"]) {
        return if existing == provider {
            Ok(None)
        } else {
            Err(MeshError::NameTaken(
                provider["name"].as_str().unwrap_or_default().to_owned(),
            ))
        };
    }
    list.push(provider.clone());
    Ok(Some(checked(insert_provider_line(mesh, provider), &value)))
}

/// The mesh config without the provider called `name`; `None` when it is not
/// there (already removed). An `extensionProviders` list we leave empty is
/// removed, so that a mesh config that had none is as it was.
pub fn remove_provider(mesh: &str, name: &str) -> Result<Option<String>, MeshError> {
    let mut value = parse(mesh)?;
    let list = providers(&mut value)?;
    let before = list.len();
    list.retain(|p| p["name"] != name);
    if list.len() == before {
        return Ok(None);
    }
    if list.is_empty() {
        value
            .as_object_mut()
            .expect("parsed as a mapping")
            .remove("extensionProviders");
    }
    Ok(Some(checked(remove_provider_line(mesh, name), &value)))
}

/// The sessions whose access-log provider is in the mesh config: named
/// `apitrace-<id>` and sending to that session's ingest Service, so that a
/// provider of someone else's that merely looks like ours is never touched.
pub fn session_providers(mesh: &str) -> Result<Vec<SessionId>, MeshError> {
    let mut value = parse(mesh)?;
    Ok(providers(&mut value)?
        .iter()
        .filter_map(|provider| {
            let name = provider["name"].as_str()?;
            let session = SessionId::from_provider_name(name)?;
            let service = provider["envoyHttpAls"]["service"].as_str()?;
            service
                .starts_with(&format!("{}.", session.object_name()))
                .then_some(session)
        })
        .collect())
}

/// What the mesh config says about access logging and where Telemetry
/// policies apply from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MeshLogging {
    /// `defaultProviders.accessLogging`: the providers workloads log to when no
    /// Telemetry names any.
    pub default_providers: Vec<String>,
    /// `accessLogFile`: the legacy file log, which istiod configures only
    /// while no Telemetry configures access logging for a workload.
    pub access_log_file: Option<String>,
    /// `enableEnvoyAccessLogService`: the legacy gRPC log, the same way.
    pub envoy_access_log_service: bool,
    /// `rootNamespace`: Telemetry there applies to the whole mesh. Istio's
    /// Helm chart writes it (its default, the Istio namespace); unset, istiod
    /// takes `istio-system` (istio/istio, pkg/config/mesh/mesh.go
    /// `DefaultMeshConfig`, and
    /// manifests/charts/istio-control/istio-discovery/templates/configmap.yaml,
    /// 1.28.10).
    pub root_namespace: String,
}

/// Reads what decides the pods' access logging from the mesh config.
pub fn mesh_logging(mesh: &str) -> Result<MeshLogging, MeshError> {
    let value = parse(mesh)?;
    let text = |key: &str| {
        value[key]
            .as_str()
            .filter(|text| !text.is_empty())
            .map(str::to_owned)
    };
    Ok(MeshLogging {
        default_providers: value["defaultProviders"]["accessLogging"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|name| name.as_str().map(str::to_owned))
            .collect(),
        access_log_file: text("accessLogFile"),
        envoy_access_log_service: value["enableEnvoyAccessLogService"] == Value::Bool(true),
        root_namespace: text("rootNamespace").unwrap_or_else(|| "istio-system".to_owned()),
    })
}

/// `defaultServiceExportTo`: which namespaces' sidecars get a Service
/// without an exportTo of its own, such as the probe Service; `["*"]` when
/// the mesh config does not set it (istio/istio, pkg/config/mesh/mesh.go
/// `DefaultMeshConfig`, 1.28.10).
pub fn default_service_export_to(mesh: &str) -> Result<Vec<String>, MeshError> {
    let value = parse(mesh)?;
    Ok(value["defaultServiceExportTo"]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|value| value.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_else(|| vec!["*".to_owned()]))
}

/// Whether istiod sees a namespace with these labels: every namespace when
/// the mesh config has no `discoverySelectors`, else those one of them
/// selects (`matchLabels` and `matchExpressions`, as Kubernetes reads a
/// label selector).
pub fn discovers(mesh: &str, labels: &BTreeMap<String, String>) -> Result<bool, MeshError> {
    let value = parse(mesh)?;
    let Some(selectors) = value["discoverySelectors"]
        .as_array()
        .filter(|s| !s.is_empty())
    else {
        return Ok(true);
    };
    Ok(selectors.iter().any(|selector| {
        let labelled = selector["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(key, value)| labels.get(key).map(String::as_str) == value.as_str());
        let expressed = selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|expression| {
                let key = expression["key"].as_str().unwrap_or_default();
                let values: Vec<&str> = expression["values"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let value = labels.get(key).map(String::as_str);
                match expression["operator"].as_str() {
                    Some("In") => value.is_some_and(|v| values.contains(&v)),
                    Some("NotIn") => !value.is_some_and(|v| values.contains(&v)),
                    Some("Exists") => value.is_some(),
                    Some("DoesNotExist") => value.is_none(),
                    _ => false,
                }
            });
        labelled && expressed
    }))
}

/// A Telemetry that could apply to the traced pods, reduced to what decides
/// their access logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryPolicy {
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` (RFC 3339, so ordered as text): istiod
    /// applies policies oldest first.
    pub created: String,
    /// `spec.selector.matchLabels`, `None` for a namespace-wide policy (no
    /// selector, or an empty one).
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.accessLogging` as written: each entry's providers, `filter`,
    /// `match` and `disabled`.
    pub access_logging: Vec<Value>,
}

impl TelemetryPolicy {
    /// Reads a Telemetry object (either API version); `None` when it selects
    /// through `targetRefs`, which apply to waypoints and gateways, not sidecars.
    pub fn from_object(object: &Value) -> Option<Self> {
        let spec = &object["spec"];
        if !spec["targetRefs"].is_null() || !spec["targetRef"].is_null() {
            return None;
        }
        let selector = spec["selector"]["matchLabels"]
            .as_object()
            .filter(|labels| !labels.is_empty())
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            });
        let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        Some(Self {
            namespace: text(&object["metadata"]["namespace"]),
            name: text(&object["metadata"]["name"]),
            created: text(&object["metadata"]["creationTimestamp"]),
            selector,
            access_logging: spec["accessLogging"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        })
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|selector| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoggingError {
    #[error(
        "the traced pods log through the mesh config's enableEnvoyAccessLogService, which istiod turns off for a pod as soon as a Telemetry configures its access logging, as the session's would; no provider reproduces it: configure that log as an envoyHttpAls provider in a Telemetry (then the session keeps it), or turn it off, before tracing"
    )]
    EnvoyAccessLogService,
    #[error(
        "the traced pods log through the mesh config's accessLogFile {path:?}, which istiod turns off for a pod as soon as a Telemetry configures its access logging, as the session's would; only /dev/stdout has a provider that logs the same (Istio's built-in `envoy`): log to /dev/stdout, or name a provider in a Telemetry (then the session keeps it), before tracing"
    )]
    AccessLogFile { path: String },
    #[error(
        "the traced pods in namespace {namespace} are logged differently (their Telemetry policies select them differently), and one Telemetry per namespace cannot keep both: trace them one group at a time"
    )]
    PodsDiffer { namespace: String },
}

/// The directions a sidecar logs in, as `match.mode` names them.
const MODES: [&str; 2] = ["CLIENT", "SERVER"];

fn provider_names(entry: &Value) -> Vec<String> {
    entry["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|provider| provider["name"].as_str().map(str::to_owned))
        .collect()
}

fn applies_in(entry: &Value, mode: &str) -> bool {
    match entry["match"]["mode"].as_str() {
        None | Some("CLIENT_AND_SERVER") => true,
        Some(only) => only == mode,
    }
}

/// The providers a pod logs to in `mode`, each with its `filter`, as istiod
/// merges the policies that apply (`levels`, in its order): the names come
/// from the last level that names any for this mode (the mesh default
/// before), a provider's filter from the last entry naming it, and an entry
/// without providers means its parent's (istio/istio,
/// pilot/pkg/model/telemetry.go `mergeLogs`, 1.28.10).
fn merge_logs(levels: &[&[Value]], defaults: &[String], mode: &str) -> BTreeMap<String, Value> {
    if levels.is_empty() {
        return defaults
            .iter()
            .map(|name| (name.clone(), Value::Null))
            .collect();
    }
    let mut in_scope: Vec<String> = defaults.to_vec();
    let mut filters: BTreeMap<String, Value> = BTreeMap::new();
    for level in levels {
        let mut names = Vec::new();
        for entry in level.iter().filter(|entry| applies_in(entry, mode)) {
            for name in provider_names(entry) {
                filters.insert(name.clone(), entry["filter"].clone());
                names.push(name);
            }
        }
        if !names.is_empty() {
            in_scope = names;
        }
    }
    let mut providers: BTreeMap<String, Option<Value>> = BTreeMap::new();
    let mut parent: Vec<String> = defaults.to_vec();
    for entry in levels.iter().flat_map(|level| level.iter()) {
        let mut names = provider_names(entry);
        if names.is_empty() {
            names = parent.clone();
        }
        parent = names.clone();
        for name in names {
            if !in_scope.contains(&name) || !applies_in(entry, mode) {
                continue;
            }
            let spec = (entry["disabled"] != Value::Bool(true))
                .then(|| filters.get(&name).cloned().unwrap_or(Value::Null));
            providers.insert(name, spec);
        }
    }
    providers
        .into_iter()
        .filter_map(|(name, spec)| Some((name, spec?)))
        .collect()
}

/// The `accessLogging` entries the session's Telemetry must carry, besides
/// its own provider, so that nothing about the pod's logging changes: istiod
/// applies the root namespace's first namespace-wide policy, then the pod's
/// namespace's first, then every policy selecting the pod, oldest first
/// (`applicableTelemetries` and `getTelemetries` in
/// pilot/pkg/model/telemetry.go, 1.28.10). Ours is the newest selecting
/// policy, so it overrides them all: it must name every provider the pod
/// logs to now, in the same directions and with the same filters. Where no
/// policy and no default names a provider, istiod logs through the legacy
/// `accessLogFile` and `enableEnvoyAccessLogService`, and stops as soon as any
/// Telemetry applies (pilot/pkg/networking/core/accesslog.go): the file on
/// /dev/stdout is kept as Istio's built-in `envoy` provider, which formats as
/// the mesh config says (pilot/pkg/model/telemetry_logging.go); anything else
/// is refused before the session changes anything.
pub fn inherited_access_logging(
    policies: &[TelemetryPolicy],
    namespace: &str,
    pod_labels: &BTreeMap<String, String>,
    mesh: &MeshLogging,
) -> Result<Vec<Value>, LoggingError> {
    let mut sorted: Vec<&TelemetryPolicy> = policies.iter().collect();
    sorted.sort_by(|a, b| {
        (&a.created, &a.name, &a.namespace).cmp(&(&b.created, &b.name, &b.namespace))
    });
    let namespace_wide = |ns: &str| {
        sorted
            .iter()
            .find(|p| p.namespace == ns && p.selector.is_none())
            .map(|p| p.access_logging.as_slice())
    };
    let mut levels: Vec<&[Value]> = Vec::new();
    levels.extend(namespace_wide(&mesh.root_namespace));
    if namespace != mesh.root_namespace {
        levels.extend(namespace_wide(namespace));
    }
    levels.extend(
        sorted
            .iter()
            .filter(|p| p.namespace == namespace && p.selects(pod_labels))
            .map(|p| p.access_logging.as_slice()),
    );
    levels.retain(|level| !level.is_empty());
    if levels.is_empty() && mesh.default_providers.is_empty() {
        if mesh.envoy_access_log_service {
            return Err(LoggingError::EnvoyAccessLogService);
        }
        return match mesh.access_log_file.as_deref() {
            None => Ok(Vec::new()),
            Some("/dev/stdout") => Ok(vec![json!({ "providers": [{ "name": "envoy" }] })]),
            Some(path) => Err(LoggingError::AccessLogFile {
                path: path.to_owned(),
            }),
        };
    }
    let [client, server] = MODES.map(|mode| merge_logs(&levels, &mesh.default_providers, mode));
    let mut names: Vec<&String> = client.keys().chain(server.keys()).collect();
    names.sort();
    names.dedup();
    let entry = |name: &str, filter: &Value, mode: Option<&str>| {
        let mut entry = json!({ "providers": [{ "name": name }] });
        if !filter.is_null() {
            entry["filter"] = filter.clone();
        }
        if let Some(mode) = mode {
            entry["match"] = json!({ "mode": mode });
        }
        entry
    };
    let mut entries = Vec::new();
    // A leftover provider of another session is not kept.
    for name in names
        .into_iter()
        .filter(|name| SessionId::from_provider_name(name).is_none())
    {
        match (client.get(name), server.get(name)) {
            (Some(a), Some(b)) if a == b => entries.push(entry(name, a, None)),
            (a, b) => {
                entries.extend(a.map(|filter| entry(name, filter, Some("CLIENT"))));
                entries.extend(b.map(|filter| entry(name, filter, Some("SERVER"))));
            }
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "accessLogFile: /dev/stdout\ndefaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\nextensionProviders:\n- name: otel\n  envoyOtelAls:\n    service: otel.observability.svc.cluster.local\n    port: 4317\n";

    fn session() -> SessionId {
        "abcde12345".parse().unwrap()
    }

    #[test]
    fn our_provider_is_added_and_removed_and_nothing_else_changes() {
        let provider = als_provider(
            &session(),
            "apitrace-abcde12345.apitrace-system.svc.cluster.local",
            15901,
        );
        let added = add_provider(MESH, &provider).unwrap().unwrap();
        assert_eq!(session_providers(&added).unwrap(), [session()]);
        assert!(session_providers(MESH).unwrap().is_empty());
        let added_value: Value = serde_saphyr::from_str(&added).unwrap();
        assert_eq!(added_value["accessLogFile"], "/dev/stdout");
        assert_eq!(
            added_value["defaultConfig"]["discoveryAddress"],
            "istiod.istio-system.svc:15012"
        );
        // A retried update finds it there and changes nothing.
        assert_eq!(add_provider(&added, &provider).unwrap(), None);
        let removed = remove_provider(&added, "apitrace-abcde12345")
            .unwrap()
            .unwrap();
        let original: Value = serde_saphyr::from_str(MESH).unwrap();
        assert_eq!(serde_saphyr::from_str::<Value>(&removed).unwrap(), original);
        assert_eq!(
            remove_provider(&removed, "apitrace-abcde12345").unwrap(),
            None
        );
    }

    #[test]
    fn a_mesh_config_without_providers_is_left_as_it_was() {
        let provider = als_provider(&session(), "h", 1);
        let added = add_provider("", &provider).unwrap().unwrap();
        let removed = remove_provider(&added, "apitrace-abcde12345")
            .unwrap()
            .unwrap();
        assert_eq!(removed, "");
    }

    /// A mesh config as Istio's chart writes it (`mesh: |-`: no final
    /// newline), with a comment and keys out of alphabetical order.
    const CHART_MESH: &str = "# written by the istiod chart\ndefaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\ndefaultProviders:\n  metrics:\n  - prometheus\nenablePrometheusMerge: true\nrootNamespace: istio-system\ntrustDomain: cluster.local";

    /// The lines of `after` that are not in `before`.
    fn added_lines<'a>(before: &str, after: &'a str) -> Vec<&'a str> {
        after
            .lines()
            .filter(|line| !before.lines().any(|kept| kept == *line))
            .collect()
    }

    #[test]
    fn a_session_leaves_the_mesh_config_byte_for_byte_as_it_found_it() {
        let provider = als_provider(&session(), "apitrace-abcde12345.apitrace-system.svc", 15901);
        let ours = r#"{"envoyHttpAls":{"additionalResponseHeadersToLog":["grpc-status","grpc-message"],"additionalResponseTrailersToLog":["grpc-status","grpc-message"],"port":15901,"service":"apitrace-abcde12345.apitrace-system.svc"},"name":"apitrace-abcde12345"}"#;
        let indented = "extensionProviders:\n  # tracing\n  - name: otel\n    envoyOtelAls:\n      service: otel.o.svc\n      port: 4317\n\n# the rest\nrootNamespace: istio-system\n";
        for (mesh, expected_lines) in [
            (
                CHART_MESH,
                vec!["extensionProviders:".to_owned(), format!("- {ours}")],
            ),
            (MESH, vec![format!("- {ours}")]),
            (indented, vec![format!("  - {ours}")]),
            (
                "",
                vec!["extensionProviders:".to_owned(), format!("- {ours}")],
            ),
        ] {
            let added = add_provider(mesh, &provider).unwrap().unwrap();
            assert_eq!(
                added_lines(mesh, &added),
                expected_lines,
                "{mesh:?} became {added:?}"
            );
            assert_eq!(
                added.lines().count(),
                mesh.lines().count() + expected_lines.len()
            );
            let removed = remove_provider(&added, "apitrace-abcde12345")
                .unwrap()
                .unwrap();
            assert_eq!(removed, mesh);
        }
    }

    #[test]
    fn an_edit_made_during_the_session_is_kept_when_the_provider_goes() {
        let provider = als_provider(&session(), "h", 1);
        let added = add_provider(CHART_MESH, &provider).unwrap().unwrap();
        let edited = added.replace("trustDomain: cluster.local", "trustDomain: example.org");
        let removed = remove_provider(&edited, "apitrace-abcde12345")
            .unwrap()
            .unwrap();
        assert_eq!(removed, CHART_MESH.replace("cluster.local", "example.org"));
    }

    #[test]
    fn a_list_on_one_line_or_a_flow_mapping_is_written_anew_and_still_only_gains_ours() {
        let provider = als_provider(&session(), "h", 1);
        for mesh in [
            "extensionProviders: []\nrootNamespace: istio-system\n",
            "{rootNamespace: istio-system}",
            "extensionProviders: # none yet\nrootNamespace: istio-system\n",
        ] {
            let added = add_provider(mesh, &provider).unwrap().unwrap();
            let mut expected: Value = serde_saphyr::from_str(mesh).unwrap();
            expected["extensionProviders"] = json!([provider]);
            assert_eq!(
                serde_saphyr::from_str::<Value>(&added).unwrap(),
                expected,
                "{mesh:?}"
            );
            assert_eq!(added.matches("extensionProviders").count(), 1, "{added:?}");
            let removed = remove_provider(&added, "apitrace-abcde12345")
                .unwrap()
                .unwrap();
            expected
                .as_object_mut()
                .unwrap()
                .remove("extensionProviders");
            assert_eq!(
                serde_saphyr::from_str::<Value>(&removed).unwrap(),
                expected,
                "{mesh:?}"
            );
        }
    }

    #[test]
    fn a_foreign_provider_with_our_name_or_a_broken_config_is_refused() {
        let provider = als_provider(&session(), "h", 1);
        let taken = "extensionProviders:\n- name: apitrace-abcde12345\n  envoyFileAccessLog: {path: /dev/stdout}\n";
        assert!(matches!(
            add_provider(taken, &provider),
            Err(MeshError::NameTaken(_))
        ));
        // Named like ours, but not ours: cleanup leaves it alone.
        assert!(session_providers(taken).unwrap().is_empty());
        assert!(matches!(
            add_provider("- a\n- b\n", &provider),
            Err(MeshError::NotAMapping)
        ));
        assert!(matches!(
            add_provider("extensionProviders: 3\n", &provider),
            Err(MeshError::ProvidersNotAList)
        ));
        assert!(matches!(
            add_provider("a: [\n", &provider),
            Err(MeshError::Yaml(_))
        ));
    }

    fn policy(
        namespace: &str,
        created: &str,
        selector: Option<&[(&str, &str)]>,
        logging: Value,
    ) -> TelemetryPolicy {
        TelemetryPolicy {
            namespace: namespace.into(),
            name: format!("p{created}"),
            created: format!("2026-11-22T10:00:{created}Z"),
            selector: selector.map(|s| {
                s.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            access_logging: logging.as_array().cloned().unwrap_or_default(),
        }
    }

    fn mesh(defaults: &[&str], file: Option<&str>) -> MeshLogging {
        MeshLogging {
            default_providers: defaults.iter().map(|d| d.to_string()).collect(),
            access_log_file: file.map(str::to_owned),
            envoy_access_log_service: false,
            root_namespace: "istio-system".into(),
        }
    }

    fn web() -> BTreeMap<String, String> {
        BTreeMap::from([("app".to_string(), "web".to_string())])
    }

    #[test]
    fn the_policies_istiod_applies_decide_what_is_kept() {
        let resolve = |policies: &[TelemetryPolicy]| {
            inherited_access_logging(policies, "shop", &web(), &mesh(&["envoy"], None)).unwrap()
        };
        let names = |name: &str| json!([{ "providers": [{ "name": name }] }]);
        assert_eq!(Value::from(resolve(&[])), names("envoy"));
        let root = policy("istio-system", "01", None, names("otel"));
        assert_eq!(
            Value::from(resolve(std::slice::from_ref(&root))),
            names("otel")
        );
        // Only the oldest namespace-wide policy of a namespace counts.
        let first = policy("shop", "02", None, names("file"));
        let second = policy("shop", "03", None, names("ignored"));
        assert_eq!(
            Value::from(resolve(&[second.clone(), root.clone(), first.clone()])),
            names("file")
        );
        // Every selecting policy applies, oldest first: the newest that names
        // providers wins; one selecting other pods does not count.
        let older = policy("shop", "04", Some(&[("app", "web")]), names("older"));
        let newer = policy("shop", "05", Some(&[("app", "web")]), names("stackdriver"));
        let other = policy("shop", "06", Some(&[("app", "db")]), names("x"));
        assert_eq!(
            Value::from(resolve(&[newer, root, first, older, other])),
            names("stackdriver")
        );
        // A leftover provider of another session is not inherited.
        let stale = policy(
            "shop",
            "07",
            None,
            json!([{ "providers": [{ "name": "apitrace-zzzzz00000" }, { "name": "envoy" }] }]),
        );
        assert_eq!(Value::from(resolve(&[stale])), names("envoy"));
    }

    #[test]
    fn filters_directions_and_disabled_providers_are_kept_as_istiod_merges_them() {
        let namespace = policy(
            "shop",
            "01",
            None,
            json!([
                { "providers": [{ "name": "envoy" }], "filter": { "expression": "response.code >= 400" } },
                { "providers": [{ "name": "otel" }], "match": { "mode": "SERVER" } },
            ]),
        );
        // A selecting policy that turns the file log off for outbound calls.
        let selecting = policy(
            "shop",
            "02",
            Some(&[("app", "web")]),
            json!([{ "providers": [{ "name": "envoy" }], "disabled": true, "match": { "mode": "CLIENT" } }]),
        );
        let kept =
            inherited_access_logging(&[namespace, selecting], "shop", &web(), &mesh(&[], None))
                .unwrap();
        assert_eq!(
            Value::from(kept),
            json!([
                { "providers": [{ "name": "envoy" }], "filter": { "expression": "response.code >= 400" }, "match": { "mode": "SERVER" } },
                { "providers": [{ "name": "otel" }], "match": { "mode": "SERVER" } },
            ])
        );
    }

    #[test]
    fn the_legacy_mesh_config_log_is_kept_or_the_session_refused() {
        let legacy = |file: Option<&str>, als: bool| {
            let mesh = MeshLogging {
                envoy_access_log_service: als,
                ..mesh(&[], file)
            };
            inherited_access_logging(&[], "shop", &web(), &mesh)
        };
        assert_eq!(legacy(None, false), Ok(vec![]));
        assert_eq!(
            legacy(Some("/dev/stdout"), false),
            Ok(vec![json!({ "providers": [{ "name": "envoy" }] })])
        );
        assert_eq!(
            legacy(Some("/var/log/istio/access.log"), false),
            Err(LoggingError::AccessLogFile {
                path: "/var/log/istio/access.log".into()
            })
        );
        assert_eq!(
            legacy(Some("/dev/stdout"), true),
            Err(LoggingError::EnvoyAccessLogService)
        );
        // A Telemetry that configures logging already replaces the legacy log.
        let names = policy(
            "shop",
            "01",
            None,
            json!([{ "providers": [{ "name": "otel" }] }]),
        );
        let mesh = MeshLogging {
            envoy_access_log_service: true,
            ..mesh(&[], Some("/dev/stdout"))
        };
        assert_eq!(
            inherited_access_logging(&[names], "shop", &web(), &mesh),
            Ok(vec![json!({ "providers": [{ "name": "otel" }] })])
        );
    }

    #[test]
    fn discovery_selectors_decide_which_namespaces_istiod_sees() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let probe = labels(&[("kubernetes.io/metadata.name", "apitrace-system")]);
        assert!(discovers("{}", &probe).unwrap());
        let mesh = "discoverySelectors:\n- matchLabels:\n    istio-discovery: enabled\n- matchExpressions:\n  - key: team\n    operator: In\n    values: [sre, platform]\n";
        assert!(!discovers(mesh, &probe).unwrap());
        assert!(discovers(mesh, &labels(&[("istio-discovery", "enabled")])).unwrap());
        assert!(discovers(mesh, &labels(&[("team", "sre")])).unwrap());
        assert!(!discovers(mesh, &labels(&[("team", "web")])).unwrap());
    }

    #[test]
    fn the_mesh_config_names_the_root_namespace_and_the_legacy_logs() {
        let read = mesh_logging("rootNamespace: istio-config\naccessLogFile: /dev/stdout\nenableEnvoyAccessLogService: true\ndefaultProviders:\n  accessLogging: [otel]\n").unwrap();
        assert_eq!(read.root_namespace, "istio-config");
        assert_eq!(read.access_log_file.as_deref(), Some("/dev/stdout"));
        assert!(read.envoy_access_log_service);
        assert_eq!(read.default_providers, ["otel"]);
        assert_eq!(mesh_logging("{}").unwrap().root_namespace, "istio-system");
    }

    #[test]
    fn telemetry_objects_are_read_in_either_version() {
        let object = json!({
            "apiVersion": "telemetry.istio.io/v1alpha1",
            "metadata": {"namespace": "shop", "name": "logs"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "accessLogging": [{"providers": [{"name": "envoy"}]}, {"disabled": true, "providers": [{"name": "otel"}]}]},
        });
        let policy = TelemetryPolicy::from_object(&object).unwrap();
        assert_eq!(policy.access_logging.len(), 2);
        assert_eq!(policy.selector.unwrap()["app"], "web");
        let everywhere = json!({"metadata": {}, "spec": {"selector": {"matchLabels": {}}}});
        assert_eq!(
            TelemetryPolicy::from_object(&everywhere).unwrap().selector,
            None
        );
        let waypoint =
            json!({"metadata": {}, "spec": {"targetRefs": [{"kind": "Gateway", "name": "w"}]}});
        assert_eq!(TelemetryPolicy::from_object(&waypoint), None);
        let metrics_only = json!({"metadata": {}, "spec": {"metrics": [{}]}});
        assert!(
            TelemetryPolicy::from_object(&metrics_only)
                .unwrap()
                .access_logging
                .is_empty()
        );
    }
}
