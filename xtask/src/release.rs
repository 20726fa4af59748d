//! `cargo xtask release`: the CLI's archive for this machine's platform
//! (binary and licence, reproducible byte for byte), and the krew manifest for
//! every archive in `target/dist`, checked against krew's rules and each
//! archive's sha256.

use std::{env, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    krew,
    shell::{self, cargo, step, workspace},
};

/// Where `release` writes the krew manifest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Manifest {
    /// Also over krew/apitrace.yaml, for the release to commit.
    CheckedIn,
    /// Only next to the archives: the tests check a release without changing
    /// a checked-in file (each build's archive has another sha256).
    DistOnly,
}

/// This machine's platform as krew names it.
fn host_platform() -> anyhow::Result<(&'static str, &'static str)> {
    let os = match env::consts::OS {
        "linux" => "linux",
        "macos" => "darwin",
        "windows" => "windows",
        other => bail!("no release is made for {other}"),
    };
    let arch = match env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no release is made for {other}"),
    };
    Ok((os, arch))
}

/// Builds the CLI for release, archives it with the licence (reproducibly:
/// sorted, owned by root, dated 1970, gzip without a name or time), then
/// writes the krew manifest for every archive of this version in
/// target/dist (archives built on other machines can be dropped there) next
/// to them, and where `manifest_at` says, checks
/// it against krew's rules and each sha256 against its file, and unpacks this
/// machine's archive to run the binary in it.
pub fn run(manifest_at: Manifest) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let (os, arch) = host_platform()?;
    if os == "windows" {
        bail!(
            "the release command archives with tar; build Windows archives (zip) on Windows by hand"
        );
    }
    step("release", "building kubectl-apitrace for release");
    shell::run(cargo().args([
        "build",
        "--release",
        "--locked",
        "--package",
        "kubectl-apitrace",
    ]))?;
    let dist = workspace().join("target/dist");
    let stage = dist.join(format!("stage-{os}-{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    std::fs::create_dir_all(&stage)?;
    let binary = krew::binary_name(os);
    std::fs::copy(
        workspace().join("target/release").join(binary),
        stage.join(binary),
    )?;
    std::fs::copy(workspace().join("LICENSE"), stage.join("LICENSE"))?;
    let archive = dist.join(krew::archive_name(version, os, arch));
    step("release", &format!("archiving {}", archive.display()));
    shell::run(Command::new("sh").arg("-c").arg(format!(
        "tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
         -C '{}' -cf - {binary} LICENSE | gzip -n -9 > '{}'",
        stage.display(),
        archive.display()
    )))?;
    std::fs::remove_dir_all(&stage)?;

    let mut archives = Vec::new();
    for entry in std::fs::read_dir(&dist)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((os, arch)) = krew::platform_of(version, &name) {
            archives.push(krew::Archive {
                os,
                arch,
                sha256: sha256_of(&entry.path())?,
                file_name: name,
            });
        }
    }
    let order = |archive: &krew::Archive| {
        krew::PLATFORMS
            .iter()
            .position(|(os, arch)| *os == archive.os && *arch == archive.arch)
    };
    archives.sort_by_key(order);
    let manifest = krew::manifest(version, &archives);
    let parsed: serde_json::Value = serde_saphyr::from_str(&manifest)?;
    let broken = krew::violations(&parsed);
    if !broken.is_empty() {
        bail!(
            "the krew manifest breaks krew's rules: {}",
            broken.join("; ")
        );
    }
    std::fs::write(dist.join("apitrace.yaml"), &manifest)?;
    if manifest_at == Manifest::CheckedIn {
        std::fs::write(workspace().join("krew/apitrace.yaml"), &manifest)?;
    }
    step("release", "checking each archive against the manifest");
    let written: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(dist.join("apitrace.yaml"))?)?;
    for platform in written["spec"]["platforms"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let uri = platform["uri"].as_str().unwrap_or_default();
        let file = dist.join(uri.rsplit('/').next().unwrap_or_default());
        let actual = sha256_of(&file)?;
        if platform["sha256"] != actual.as_str() {
            bail!(
                "{} has sha256 {actual}, the manifest says {}",
                file.display(),
                platform["sha256"]
            );
        }
        println!(
            "{actual}  {}",
            file.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    let unpacked = dist.join(format!("unpacked-{os}-{arch}"));
    if unpacked.exists() {
        std::fs::remove_dir_all(&unpacked)?;
    }
    std::fs::create_dir_all(&unpacked)?;
    shell::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&unpacked),
    )?;
    let output = Command::new(unpacked.join(binary))
        .args(["version", "--client"])
        .output()?;
    let printed = String::from_utf8_lossy(&output.stdout);
    if !printed.starts_with(&format!("kubectl-apitrace {version}\n")) {
        bail!("the archived binary printed {printed:?} for `version --client`");
    }
    std::fs::remove_dir_all(&unpacked)?;
    step(
        "release",
        &format!("krew/apitrace.yaml lists {} platform(s)", archives.len()),
    );
    Ok(())
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest as _;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(sha2::Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}
