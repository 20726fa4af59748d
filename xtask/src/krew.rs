//! The krew plugin manifest: written from the release archives (their
//! platform read off their names, their sha256 computed), and checked against
//! the rules krew and its index apply, so that a release never publishes a
//! manifest `kubectl krew install` would refuse.

use std::{collections::BTreeSet, fmt::Write as _};

use serde_json::Value;

use crate::platforms::{PLATFORMS, executable};

pub const PLUGIN: &str = "apitrace";
pub const API_VERSION: &str = "krew.googlecontainertools.github.com/v1alpha2";
const SHORT_DESCRIPTION: &str = "Trace API calls in an Istio mesh, per request";
const DESCRIPTION: &str = "Gives a time-boxed, per-request view of the API calls to and from the pods you name, \
inside an Istio mesh: who called whom, with which identity (JWT claims, redacted), what came back (Envoy's \
access log), and what happened on the wire (TC-BPF). Patches the mesh only for the session and removes \
everything it created at the end.";
const HOMEPAGE: &str = "https://github.com/apitrace/kubectl-apitrace";
/// One release archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub os: String,
    pub arch: String,
    pub file_name: String,
    pub sha256: String,
}

/// The archive's name for a platform: `kubectl-apitrace_v0.1.0_linux_amd64.tar.gz`.
pub fn archive_name(version: &str, os: &str, arch: &str) -> String {
    let extension = if os == "windows" { "zip" } else { "tar.gz" };
    format!("kubectl-apitrace_v{version}_{os}_{arch}.{extension}")
}

/// The platform of an archive of `version`, read off its name.
pub fn platform_of(version: &str, file_name: &str) -> Option<(String, String)> {
    PLATFORMS
        .iter()
        .find(|platform| archive_name(version, platform.os, platform.arch) == file_name)
        .map(|platform| (platform.os.to_owned(), platform.arch.to_owned()))
}

pub fn binary_name(os: &str) -> String {
    executable(os, "kubectl-apitrace")
}

/// The manifest for `archives`, downloaded from the release tagged `v{version}`.
pub fn manifest(version: &str, archives: &[Archive]) -> String {
    let mut text = format!(
        "apiVersion: {API_VERSION}\nkind: Plugin\nmetadata:\n  name: {PLUGIN}\nspec:\n  \
         version: v{version}\n  homepage: {HOMEPAGE}\n  shortDescription: {SHORT_DESCRIPTION}\n  \
         description: |\n"
    );
    for line in wrap(DESCRIPTION, 90) {
        let _ = writeln!(text, "    {line}");
    }
    text.push_str("  platforms:\n");
    for archive in archives {
        let _ = write!(
            text,
            "  - selector:\n      matchLabels:\n        os: {os}\n        arch: {arch}\n    \
             uri: {HOMEPAGE}/releases/download/v{version}/{file}\n    sha256: {sha}\n    \
             bin: {bin}\n    files:\n    - from: {bin}\n      to: .\n    - from: LICENSE\n      to: .\n",
            os = archive.os,
            arch = archive.arch,
            file = archive.file_name,
            sha = archive.sha256,
            bin = binary_name(&archive.os),
        );
    }
    text
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// Every rule `manifest` breaks, in words; empty when krew would take it.
pub fn violations(manifest: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut require = |ok: bool, rule: &str| {
        if !ok {
            found.push(rule.to_owned());
        }
    };
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    require(
        text(&manifest["apiVersion"]) == API_VERSION,
        &format!("apiVersion must be {API_VERSION}"),
    );
    require(text(&manifest["kind"]) == "Plugin", "kind must be Plugin");
    let name = text(&manifest["metadata"]["name"]);
    require(
        is_plugin_name(&name),
        "metadata.name must be lowercase letters, digits and dashes, not starting with kubectl-",
    );
    let spec = &manifest["spec"];
    require(
        is_version(&text(&spec["version"])),
        "spec.version must be a semantic version with a leading v (v1.2.3)",
    );
    let short = text(&spec["shortDescription"]);
    require(
        !short.is_empty() && short.len() <= 50,
        "spec.shortDescription must be 1 to 50 characters",
    );
    require(
        !text(&spec["description"]).trim().is_empty(),
        "spec.description must not be empty",
    );
    let platforms = spec["platforms"].as_array().cloned().unwrap_or_default();
    require(!platforms.is_empty(), "spec.platforms must not be empty");
    let mut selectors = BTreeSet::new();
    for (index, platform) in platforms.iter().enumerate() {
        let labels = &platform["selector"]["matchLabels"];
        let (os, arch) = (text(&labels["os"]), text(&labels["arch"]));
        let at = format!("spec.platforms[{index}]");
        require(
            !os.is_empty() && !arch.is_empty(),
            &format!("{at}.selector.matchLabels must name os and arch"),
        );
        require(
            selectors.insert((os.clone(), arch.clone())),
            &format!("{at}: another platform has the same selector {os}/{arch}"),
        );
        let uri = text(&platform["uri"]);
        require(
            uri.starts_with("https://"),
            &format!("{at}.uri must be an https URL"),
        );
        let sha = text(&platform["sha256"]);
        require(
            sha.len() == 64
                && sha
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            &format!("{at}.sha256 must be 64 lowercase hex digits"),
        );
        let bin = text(&platform["bin"]);
        require(
            !bin.is_empty() && !bin.starts_with('/') && !bin.split('/').any(|part| part == ".."),
            &format!("{at}.bin must be a path inside the archive"),
        );
        require(
            (os == "windows") == bin.ends_with(".exe"),
            &format!("{at}.bin must end in .exe on windows, and only there"),
        );
    }
    found
}

fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with("kubectl-")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

fn is_version(version: &str) -> bool {
    let Some(rest) = version.strip_prefix('v') else {
        return false;
    };
    let core = rest.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(os: &str, arch: &str) -> Archive {
        Archive {
            os: os.into(),
            arch: arch.into(),
            file_name: archive_name("0.1.0", os, arch),
            sha256: "ab".repeat(32),
        }
    }

    fn parse(text: &str) -> Value {
        serde_saphyr::from_str(text).expect("the manifest is YAML")
    }

    #[test]
    fn a_manifest_for_every_platform_keeps_the_rules() {
        let archives: Vec<Archive> = PLATFORMS
            .iter()
            .map(|platform| archive(platform.os, platform.arch))
            .collect();
        let manifest = parse(&manifest("0.1.0", &archives));
        assert_eq!(violations(&manifest), Vec::<String>::new());
        assert_eq!(manifest["spec"]["platforms"].as_array().unwrap().len(), 5);
        assert_eq!(
            manifest["spec"]["platforms"][4]["bin"],
            "kubectl-apitrace.exe"
        );
        assert_eq!(
            manifest["spec"]["platforms"][0]["uri"],
            "https://github.com/apitrace/kubectl-apitrace/releases/download/v0.1.0/kubectl-apitrace_v0.1.0_linux_amd64.tar.gz"
        );
    }

    #[test]
    fn each_broken_rule_is_named() {
        let good = manifest(
            "0.1.0",
            &[archive("linux", "amd64"), archive("windows", "amd64")],
        );
        for (from, to, rule) in [
            ("kind: Plugin", "kind: Plug", "kind must be Plugin"),
            (
                "name: apitrace",
                "name: kubectl-apitrace",
                "metadata.name must be",
            ),
            ("version: v0.1.0", "version: 0.1.0", "spec.version must be"),
            ("version: v0.1.0", "version: v0.1", "spec.version must be"),
            (SHORT_DESCRIPTION, &"x".repeat(51), "spec.shortDescription"),
            ("uri: https://", "uri: http://", "spec.platforms[0].uri"),
            ("sha256: abab", "sha256: ABAB", "spec.platforms[0].sha256"),
            (
                "bin: kubectl-apitrace.exe",
                "bin: kubectl-apitrace",
                "spec.platforms[1].bin must end in .exe",
            ),
            (
                "bin: kubectl-apitrace\n",
                "bin: ../kubectl-apitrace\n",
                "spec.platforms[0].bin must be a path",
            ),
            (
                "os: windows",
                "os: linux",
                "spec.platforms[1]: another platform has the same selector linux/amd64",
            ),
        ] {
            assert_eq!(
                good.matches(from).count().min(1),
                1,
                "{from:?} is in the manifest"
            );
            let broken = parse(&good.replacen(from, to, 1));
            let found = violations(&broken);
            assert!(
                found.iter().any(|violation| violation.starts_with(rule)),
                "{from:?} -> {to:?}: expected {rule:?}, found {found:?}"
            );
        }
        let no_platforms =
            parse(&manifest("0.1.0", &[]).replace("  platforms:\n", "  platforms: []\n"));
        assert!(violations(&no_platforms).contains(&"spec.platforms must not be empty".to_owned()));
    }

    #[test]
    fn archives_are_recognised_by_name_only_for_their_version() {
        assert_eq!(
            platform_of("0.1.0", "kubectl-apitrace_v0.1.0_darwin_arm64.tar.gz"),
            Some(("darwin".into(), "arm64".into()))
        );
        assert_eq!(
            platform_of("0.1.0", "kubectl-apitrace_v0.0.9_darwin_arm64.tar.gz"),
            None
        );
        assert_eq!(
            platform_of("0.1.0", "kubectl-apitrace_v0.1.0_windows_amd64.zip").map(|p| p.0),
            Some("windows".into())
        );
    }

    /// The manifest checked in under krew/ keeps the rules too.
    #[test]
    fn the_checked_in_manifest_keeps_the_rules() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../krew/apitrace.yaml");
        let text = std::fs::read_to_string(path)
            .expect("krew/apitrace.yaml, written by `cargo xtask release`");
        assert_eq!(violations(&parse(&text)), Vec::<String>::new());
    }
}
