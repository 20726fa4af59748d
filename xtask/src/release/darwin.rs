//! What a darwin cross build needs and what it is checked for.
//!
//! kube's TLS stack verifies certificates with macOS's own Security and
//! CoreFoundation frameworks (rustls-platform-verifier, rustls-native-certs),
//! and no feature switch leaves them out, so the binaries must link against
//! them. Apple's SDK describes each framework as a text stub (`.tbd`: the
//! install name and the exported symbols), and that is all a linker reads. The
//! SDK cannot be downloaded here, so [`sdk_root`] writes the two stubs from
//! the `-sys` crates that bind these frameworks: every function and static
//! they declare, under the install name the real framework has. At run time
//! dyld binds the names to the real frameworks, as for any macOS binary.
//! Nothing here can run a darwin binary: [`check`] reads what the link
//! produced (also of the native builds on a Mac), and the release workflow
//! runs them on a macOS runner.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    platforms::{MACOS_DEPLOYMENT_TARGET, PLATFORMS, Platform},
    shell::{cargo, workspace},
};

/// Each framework the build links, with the crate declaring its symbols.
const FRAMEWORKS: [(&str, &str); 2] = [
    ("Security", "security-framework-sys"),
    ("CoreFoundation", "core-foundation-sys"),
];

/// Writes a macOS SDK holding the two frameworks' stubs under
/// `target/darwin-sdk`, and returns its root (for `SDKROOT`).
pub fn sdk_root() -> anyhow::Result<PathBuf> {
    let root = workspace().join("target/darwin-sdk");
    let sources = sys_crate_sources()?;
    let targets = PLATFORMS
        .iter()
        .filter(|platform| platform.os == "darwin")
        .map(|platform| format!("{}-macos", tbd_arch(platform)))
        .collect::<Vec<_>>()
        .join(", ");
    for (framework, package) in FRAMEWORKS {
        let source = sources
            .iter()
            .find(|(name, _)| name == package)
            .map(|(_, path)| path)
            .with_context(|| {
                format!(
                    "{package} is not in Cargo.lock: the darwin build no longer links {framework}?"
                )
            })?;
        let symbols = declared_symbols(source)?;
        if symbols.is_empty() {
            bail!(
                "{} declares no symbols: cannot write {framework}'s stub",
                source.display()
            );
        }
        let directory = root.join(format!("System/Library/Frameworks/{framework}.framework"));
        std::fs::create_dir_all(&directory)?;
        std::fs::write(
            directory.join(format!("{framework}.tbd")),
            text_stub(framework, &targets, &symbols),
        )?;
    }
    Ok(root)
}

fn tbd_arch(platform: &Platform) -> &'static str {
    if platform.arch == "amd64" {
        "x86_64"
    } else {
        "arm64"
    }
}

/// A TAPI text stub, version 4, the format Apple's SDKs ship.
fn text_stub(framework: &str, targets: &str, symbols: &BTreeSet<String>) -> String {
    let listed = symbols
        .iter()
        .map(|symbol| format!("_{symbol}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "--- !tapi-tbd\ntbd-version: 4\ntargets: [ {targets} ]\n\
         install-name: '/System/Library/Frameworks/{framework}.framework/Versions/A/{framework}'\n\
         exports:\n  - targets: [ {targets} ]\n    symbols: [ {listed} ]\n...\n"
    )
}

/// The source directory of each package in the darwin build, from cargo's
/// metadata (which also downloads any that are missing).
fn sys_crate_sources() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let output = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            "aarch64-apple-darwin",
        ])
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|package| {
            let name = package["name"].as_str()?;
            let manifest = Path::new(package["manifest_path"].as_str()?);
            Some((name.to_owned(), manifest.parent()?.join("src")))
        })
        .collect())
}

/// Every foreign function and static the crate's sources declare.
fn declared_symbols(source: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut symbols = BTreeSet::new();
    let mut pending = vec![source.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
            continue;
        }
        if path.extension().is_none_or(|extension| extension != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        symbols.extend(declarations(&text));
    }
    Ok(symbols)
}

/// The names declared inside `extern` blocks: the foreign functions and
/// statics, which the framework defines (a Rust helper outside one has no
/// symbol of that name).
fn declarations(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth: Option<usize> = None;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default().trim();
        if depth.is_none()
            && (code.starts_with("extern \"C\"") || code.starts_with("unsafe extern \"C\""))
        {
            depth = Some(0);
        }
        let Some(open) = depth.as_mut() else {
            continue;
        };
        if *open == 1 {
            let rest = code
                .strip_prefix("pub fn ")
                .or_else(|| code.strip_prefix("pub safe fn "))
                .or_else(|| code.strip_prefix("pub static mut "))
                .or_else(|| code.strip_prefix("pub static "));
            if let Some(rest) = rest {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    names.push(name);
                }
            }
        }
        *open += code.matches('{').count();
        *open = open.saturating_sub(code.matches('}').count());
        if *open == 0 && code.contains('}') {
            depth = None;
        }
    }
    names
}

/// Reads the Mach-O headers of a darwin binary with LLVM's objdump: an
/// executable for the platform's CPU, built for macOS with the deployment
/// target set, loading the two frameworks from where macOS has them.
pub fn check(platform: &Platform, binary: &Path) -> anyhow::Result<()> {
    // Debian's LLVM here; on a Mac, Xcode's objdump is LLVM's too.
    let objdump = Path::new("/usr/lib/llvm-22/bin/llvm-objdump");
    let output = Command::new(if objdump.exists() {
        objdump
    } else {
        Path::new("objdump")
    })
    .args(["--macho", "--private-headers"])
    .arg(binary)
    .output()
    .context(
        "cannot run llvm-objdump (llvm-22, installed by `cargo xtask setup`; Xcode's on a Mac)",
    )?;
    let headers = String::from_utf8_lossy(&output.stdout);
    let cpu = if platform.arch == "amd64" {
        " X86_64 "
    } else {
        " ARM64 "
    };
    let mut problems = Vec::new();
    let header = headers.lines().find(|line| line.starts_with("MH_MAGIC_64"));
    if !header.is_some_and(|line| line.contains(cpu) && line.contains(" EXECUTE ")) {
        problems.push(format!("not a 64-bit{cpu}executable: {header:?}"));
    }
    let words: Vec<&str> = headers.split_whitespace().collect();
    let after = |key: &'static str| {
        words
            .windows(2)
            .filter(move |pair| pair[0] == key)
            .map(|pair| pair[1])
    };
    if !after("platform").any(|value| value == "macos") {
        problems.push("no LC_BUILD_VERSION for macOS".to_owned());
    }
    if !after("minos").any(|value| value == MACOS_DEPLOYMENT_TARGET) {
        problems.push(format!(
            "the deployment target is not {MACOS_DEPLOYMENT_TARGET}"
        ));
    }
    // macOS runs no unsigned arm64 code; the linker signs ad hoc.
    if platform.arch == "arm64" && !after("cmd").any(|value| value == "LC_CODE_SIGNATURE") {
        problems.push("no code signature, which macOS requires on arm64".to_owned());
    }
    for (framework, _) in FRAMEWORKS {
        let install_name =
            format!("/System/Library/Frameworks/{framework}.framework/Versions/A/{framework}");
        if !after("name").any(|value| value == install_name) {
            problems.push(format!("does not load {install_name}"));
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} is not what a darwin release must be: {}",
            binary.display(),
            problems.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_declarations_become_stub_symbols() {
        let source = "extern \"C\" {\n    pub fn SecTrustEvaluateWithError(trust: SecTrustRef) -> bool;\n    \
                      pub static kSecClass: CFStringRef;\n    pub static mut kCFAllocatorDefault: X;\n    \
                      pub fn CFMultiLine(\n        a: u32,\n    ) -> u32;\n}\n\
                      // pub fn NotThis()\n\
                      pub fn init() { helper() }\n";
        let found: BTreeSet<String> = declarations(source).into_iter().collect();
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            [
                "CFMultiLine",
                "SecTrustEvaluateWithError",
                "kCFAllocatorDefault",
                "kSecClass"
            ]
        );
        let stub = text_stub(
            "Security",
            "x86_64-macos, arm64-macos",
            &BTreeSet::from(["SecA".to_owned()]),
        );
        assert!(stub.contains(
            "install-name: '/System/Library/Frameworks/Security.framework/Versions/A/Security'"
        ));
        assert!(stub.contains("symbols: [ _SecA ]"));
    }
}
