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
pub fn als_provider(session: &SessionId, service_host: &str, port: u16) -> Value {
    json!({
        "name": session.provider_name(),
        "envoyHttpAls": { "service": service_host, "port": port },
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

/// `defaultProviders.accessLogging`: the providers workloads log to when no
/// Telemetry names any.
pub fn default_access_log_providers(mesh: &str) -> Result<Vec<String>, MeshError> {
    let value = parse(mesh)?;
    Ok(value["defaultProviders"]["accessLogging"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|name| name.as_str().map(str::to_owned))
        .collect())
}

/// A Telemetry that could apply to the traced pods, reduced to what decides
/// their access-log providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryPolicy {
    pub namespace: String,
    pub name: String,
    /// `spec.selector.matchLabels`, `None` for a namespace-wide policy.
    pub selector: Option<BTreeMap<String, String>>,
    /// The access-log providers it names, `None` when it names none (it then
    /// leaves the inherited ones in place).
    pub access_log_providers: Option<Vec<String>>,
}

impl TelemetryPolicy {
    /// Reads a Telemetry object (either API version); `None` when it selects
    /// through `targetRefs`, which apply to waypoints and gateways, not sidecars.
    pub fn from_object(object: &Value) -> Option<Self> {
        let spec = &object["spec"];
        if !spec["targetRefs"].is_null() || !spec["targetRef"].is_null() {
            return None;
        }
        let selector = spec["selector"]["matchLabels"].as_object().map(|labels| {
            labels
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        });
        let names: Vec<String> = spec["accessLogging"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|logging| logging["disabled"] != Value::Bool(true))
            .flat_map(|logging| logging["providers"].as_array().cloned().unwrap_or_default())
            .filter_map(|provider| provider["name"].as_str().map(str::to_owned))
            .collect();
        let names_any = spec["accessLogging"].as_array().is_some_and(|list| {
            list.iter()
                .any(|l| l["providers"].is_array() || l["disabled"] == Value::Bool(true))
        });
        Some(Self {
            namespace: object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            name: object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            selector,
            access_log_providers: names_any.then_some(names),
        })
    }

    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|selector| selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// The access-log providers the pods (with these labels, in one namespace)
/// already log to, as Istio resolves them: the most specific level that names
/// providers replaces what it inherits — policies selecting the pods, then the
/// namespace's own, then the root namespace's, then the mesh default. Our
/// Telemetry must list them too, or it would switch them off.
pub fn inherited_access_log_providers(
    policies: &[TelemetryPolicy],
    root_namespace: &str,
    namespace: &str,
    pods_labels: &[&BTreeMap<String, String>],
    mesh_defaults: &[String],
) -> Vec<String> {
    let mut selecting: Vec<String> = policies
        .iter()
        .filter(|p| p.namespace == namespace && pods_labels.iter().any(|labels| p.selects(labels)))
        .filter_map(|p| p.access_log_providers.clone())
        .flatten()
        .collect();
    let level = |ns: &str| {
        policies
            .iter()
            .filter(|p| p.namespace == ns && p.selector.is_none())
            .find_map(|p| p.access_log_providers.clone())
    };
    let mut providers = if !selecting.is_empty() {
        std::mem::take(&mut selecting)
    } else if let Some(names) = level(namespace) {
        names
    } else if let Some(names) = level(root_namespace) {
        names
    } else {
        mesh_defaults.to_vec()
    };
    providers.retain(|name| SessionId::from_provider_name(name).is_none());
    providers.sort();
    providers.dedup();
    providers
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
        let ours = r#"{"envoyHttpAls":{"port":15901,"service":"apitrace-abcde12345.apitrace-system.svc"},"name":"apitrace-abcde12345"}"#;
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
        selector: Option<&[(&str, &str)]>,
        providers: Option<&[&str]>,
    ) -> TelemetryPolicy {
        TelemetryPolicy {
            namespace: namespace.into(),
            name: "p".into(),
            selector: selector.map(|s| {
                s.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            access_log_providers: providers.map(|p| p.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn the_most_specific_level_that_names_providers_wins() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let pods = [&labels];
        let defaults = vec!["envoy".to_string()];
        let root = policy("istio-system", None, Some(&["otel"]));
        let namespace = policy("shop", None, Some(&["file"]));
        let selecting = policy("shop", Some(&[("app", "web")]), Some(&["stackdriver"]));
        let other = policy("shop", Some(&[("app", "db")]), Some(&["x"]));
        let silent = policy("shop", None, None);
        let resolve = |policies: &[TelemetryPolicy]| {
            inherited_access_log_providers(policies, "istio-system", "shop", &pods, &defaults)
        };
        assert_eq!(resolve(&[]), ["envoy"]);
        assert_eq!(resolve(std::slice::from_ref(&root)), ["otel"]);
        assert_eq!(
            resolve(&[root.clone(), silent.clone(), namespace.clone()]),
            ["file"]
        );
        assert_eq!(
            resolve(&[root, namespace, selecting, other]),
            ["stackdriver"]
        );
        // A leftover provider of another session is not inherited.
        let stale = policy("shop", None, Some(&["apitrace-zzzzz00000", "envoy"]));
        assert_eq!(resolve(&[stale]), ["envoy"]);
    }

    #[test]
    fn telemetry_objects_are_read_in_either_version() {
        let object = json!({
            "apiVersion": "telemetry.istio.io/v1alpha1",
            "metadata": {"namespace": "shop", "name": "logs"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "accessLogging": [{"providers": [{"name": "envoy"}]}, {"disabled": true, "providers": [{"name": "otel"}]}]},
        });
        let policy = TelemetryPolicy::from_object(&object).unwrap();
        assert_eq!(policy.access_log_providers.unwrap(), ["envoy"]);
        assert_eq!(policy.selector.unwrap()["app"], "web");
        let waypoint =
            json!({"metadata": {}, "spec": {"targetRefs": [{"kind": "Gateway", "name": "w"}]}});
        assert_eq!(TelemetryPolicy::from_object(&waypoint), None);
        let metrics_only = json!({"metadata": {}, "spec": {"metrics": [{}]}});
        assert_eq!(
            TelemetryPolicy::from_object(&metrics_only)
                .unwrap()
                .access_log_providers,
            None
        );
    }
}
