//! `cargo xtask release`: the probe image and the CLI's archive for every
//! platform, and the krew manifest over the archives.
//!
//! The order matters: the probes are built first (both Linux architectures,
//! since the image's index holds both), then the image, whose digest every
//! CLI is compiled with (`APITRACE_PROBE_IMAGE_DIGEST`), so a CLI always runs
//! the probe released with it. Each archive is reproducible byte for byte
//! (sorted, owned by root, dated 1970, compressed without a name or time).
//! Cross builds take the routes in `platforms`; a darwin build links against
//! the framework stubs of `darwin`, and is checked by reading its Mach-O
//! headers since nothing here runs it.

mod darwin;
mod image;

use std::{io::Write as _, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    krew,
    platforms::{PLATFORMS, Platform},
    shell::{self, step, workspace},
};

/// Where `release` writes the krew manifest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Manifest {
    /// Also over krew/apitrace.yaml, for the release to commit.
    CheckedIn,
    /// Only next to the archives: the tests check a release without changing
    /// a checked-in file.
    DistOnly,
}

#[derive(Debug, Default, clap::Args)]
pub struct Options {
    /// Build only this platform (os/arch, as krew names it); repeatable.
    /// Default: every platform.
    #[arg(long = "platform", value_name = "OS/ARCH", value_parser = parse_platform)]
    pub platforms: Vec<Platform>,
    /// Pin the CLIs to this digest of the probe image (sha256:...) instead of
    /// building the image: how a macOS runner builds the darwin archives for
    /// the image a Linux runner built.
    #[arg(long, value_name = "DIGEST", value_parser = parse_digest)]
    pub probe_image_digest: Option<String>,
    /// Only write the krew manifest, from the archives already in
    /// target/dist; every platform's must be there.
    #[arg(long, conflicts_with_all = ["platforms", "probe_image_digest"])]
    pub manifest_only: bool,
}

fn parse_platform(name: &str) -> Result<Platform, String> {
    Platform::named(name).ok_or_else(|| {
        let known: Vec<String> = PLATFORMS.iter().map(Platform::name).collect();
        format!(
            "{name:?} is not a release platform: use one of {}",
            known.join(", ")
        )
    })
}

fn parse_digest(digest: &str) -> Result<String, String> {
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(digest.to_owned())
    } else {
        Err(format!(
            "{digest:?} is not an image digest: use sha256: and 64 lowercase hex digits"
        ))
    }
}

/// The CLI's package and binary.
const CLI: &str = "kubectl-apitrace";
const PROBE: &str = "apitrace-probe";
/// The newest glibc symbol version a Linux CLI may need: 2.34 runs it on
/// Ubuntu 22.04 and RHEL 9 and later, not only on the Debian 12 it is built on.
const GLIBC_FLOOR: (u32, u32) = (2, 34);

pub fn run(options: &Options, manifest_at: Manifest) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let dist = workspace().join("target/dist");
    std::fs::create_dir_all(&dist)?;
    if !options.manifest_only {
        let platforms = if options.platforms.is_empty() {
            PLATFORMS.to_vec()
        } else {
            options.platforms.clone()
        };
        let digest = match &options.probe_image_digest {
            Some(digest) => digest.clone(),
            None => probe_image(version)?,
        };
        let sdk_root = if platforms.iter().any(|platform| platform.os == "darwin")
            && Platform::host().is_none_or(|host| host.os != "darwin")
        {
            Some(darwin::sdk_root()?)
        } else {
            None
        };
        for platform in &platforms {
            step(
                "release",
                &format!("building {CLI} for {}", platform.name()),
            );
            shell::run(
                platform
                    .cargo_build(sdk_root.as_deref())
                    .args(["--package", CLI])
                    .env("APITRACE_PROBE_IMAGE_DIGEST", &digest),
            )?;
            let binary = platform.built(CLI);
            match platform.os {
                "linux" => check_glibc_floor(&binary)?,
                "darwin" => darwin::check(platform, &binary)?,
                _ => {}
            }
            let archive = dist.join(krew::archive_name(version, platform.os, platform.arch));
            step("release", &format!("archiving {}", archive.display()));
            write_archive(platform, &binary, &archive)?;
        }
        if let Some(host) = Platform::host().filter(|host| platforms.contains(host)) {
            run_archived(version, &host, &dist, &digest)?;
        }
    }
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
        PLATFORMS
            .iter()
            .position(|platform| platform.os == archive.os && platform.arch == archive.arch)
    };
    archives.sort_by_key(order);
    if options.platforms.is_empty() && archives.len() != PLATFORMS.len() {
        let found: Vec<&str> = archives
            .iter()
            .map(|archive| archive.file_name.as_str())
            .collect();
        bail!(
            "the krew manifest needs an archive for each of the {} platforms; target/dist has {}: {}",
            PLATFORMS.len(),
            archives.len(),
            found.join(", ")
        );
    }
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
    step(
        "release",
        &format!(
            "{} lists {} platform(s)",
            dist.join("apitrace.yaml").display(),
            archives.len()
        ),
    );
    Ok(())
}

/// Builds the probe for both Linux architectures and the image from them;
/// returns the image's digest.
fn probe_image(version: &str) -> anyhow::Result<String> {
    let mut probes = Vec::new();
    for platform in PLATFORMS.iter().filter(|platform| platform.os == "linux") {
        step(
            "release",
            &format!("building {PROBE} for {}", platform.name()),
        );
        shell::run(platform.cargo_build(None).args(["--package", PROBE]))?;
        probes.push((*platform, platform.built(PROBE)));
    }
    let image = image::build(version, &probes)?;
    step(
        "release",
        &format!(
            "probe image {} in {} and {}",
            image.reference,
            image.layout.display(),
            image.archive.display()
        ),
    );
    Ok(image.digest)
}

/// Fails if the binary needs a glibc newer than [`GLIBC_FLOOR`], as its
/// version needs say (the symbol versions and any other, such as
/// `GLIBC_ABI_DT_RELR`, that the dynamic loader checks).
fn check_glibc_floor(binary: &Path) -> anyhow::Result<()> {
    let output = Command::new("/usr/lib/llvm-22/bin/llvm-readelf")
        .arg("--version-info")
        .arg(binary)
        .output()
        .context("cannot run llvm-readelf (llvm-22, installed by `cargo xtask setup`)")?;
    if !output.status.success() {
        bail!(
            "llvm-readelf cannot read {}: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let symbols = String::from_utf8_lossy(&output.stdout);
    let newest = symbols
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|word| {
            let (major, minor) = word.strip_prefix("GLIBC_")?.split_once('.')?;
            let minor = minor.split('.').next()?;
            Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
        })
        .max()
        .with_context(|| {
            format!(
                "{} names no glibc symbol version: not a glibc binary?",
                binary.display()
            )
        })?;
    if newest > GLIBC_FLOOR {
        bail!(
            "{} needs glibc {}.{}, newer than the {}.{} the Linux archives promise",
            binary.display(),
            newest.0,
            newest.1,
            GLIBC_FLOOR.0,
            GLIBC_FLOOR.1
        );
    }
    Ok(())
}

/// The archive of the binary and the licence: a tar.gz, or a zip on Windows
/// (what Windows users and krew's Windows entries expect).
fn write_archive(platform: &Platform, binary: &Path, archive: &Path) -> anyhow::Result<()> {
    let name = platform.binary(CLI);
    let licence = workspace().join("LICENSE");
    if platform.os == "windows" {
        use zip::{DateTime, write::SimpleFileOptions};
        let mut zip = zip::ZipWriter::new(std::fs::File::create(archive)?);
        // The zip format's earliest time, 1980-01-01, for every entry.
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(DateTime::default());
        for (entry, path, mode) in [
            (name.as_str(), binary, 0o755),
            ("LICENSE", licence.as_path(), 0o644),
        ] {
            zip.start_file(entry, options.unix_permissions(mode))?;
            zip.write_all(
                &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            )?;
        }
        zip.finish()?;
        return Ok(());
    }
    let stage = archive.with_extension("stage");
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    std::fs::create_dir_all(&stage)?;
    std::fs::copy(binary, stage.join(&name))?;
    std::fs::copy(&licence, stage.join("LICENSE"))?;
    shell::run(Command::new("sh").arg("-c").arg(format!(
        "{} -C '{}' -cf - {name} LICENSE | gzip -n -9 > '{}'",
        image::ARCHIVE_TAR,
        stage.display(),
        archive.display()
    )))?;
    std::fs::remove_dir_all(&stage)?;
    Ok(())
}

/// Unpacks this machine's archive and runs the binary in it: it starts, and
/// names the probe image it was pinned to.
fn run_archived(version: &str, host: &Platform, dist: &Path, digest: &str) -> anyhow::Result<()> {
    let archive = dist.join(krew::archive_name(version, host.os, host.arch));
    let unpacked = dist.join(format!("unpacked-{}-{}", host.os, host.arch));
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
    let output = Command::new(unpacked.join(host.binary(CLI)))
        .args(["version", "--client"])
        .output()?;
    let printed = String::from_utf8_lossy(&output.stdout);
    let expected = format!(
        "{CLI} {version}\nprobe image: {}:{version}@{digest}\n",
        image::REPOSITORY
    );
    if printed != expected {
        bail!("the archived binary printed {printed:?} for `version --client`, not {expected:?}");
    }
    std::fs::remove_dir_all(&unpacked)?;
    Ok(())
}

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(sha256_hex(&bytes))
}
