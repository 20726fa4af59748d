//! The probe image, built without a container engine: an OCI image layout and
//! its archive, one image per Linux architecture under one multi-arch index.
//!
//! Each image is two layers. The base is the C runtime the probe links to,
//! taken from Debian's own packages (`libc6`, `libgcc-s1`), which is what
//! distroless's `cc-debian12` is made of. The second layer is the probe
//! binary, which embeds its TC program and filter module. umoci (Debian's)
//! writes the layers, configs and manifests; the index over both
//! architectures is written here, since umoci tags one image at a time.
//!
//! Reproducible: every layer is a tar with sorted names, owner root and time
//! zero, and every timestamp umoci writes is pinned to the epoch, so the same
//! probe binaries and the same Debian packages give the same digest.
//! [`build`] makes the layout twice and fails if the digests differ.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    platforms::Platform,
    shell::{self, step, workspace},
};

/// The repository the image is named for; the CLI's
/// `crates/cluster/src/names.rs` has the same, and the release checks that
/// the CLI it builds names this image.
pub const REPOSITORY: &str = "ghcr.io/apitrace/apitrace-probe";

/// The Debian packages of the base layer: the C library and the unwinder the
/// probe links to, as `ldd` lists them.
const BASE_PACKAGES: [&str; 2] = ["libc6", "libgcc-s1"];

/// Every timestamp in the image.
const EPOCH: &str = "1970-01-01T00:00:00Z";

const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The annotation containerd (and so `kind load image-archive`) names an
/// imported image by: `AnnotationImageName` in containerd's
/// `images/annotations.go` (v1.7), `core/images/annotations.go` (v2).
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The built image.
pub struct Image {
    /// `REPOSITORY:version@sha256:...`, what the CLI is pinned to.
    pub reference: String,
    pub digest: String,
    pub layout: PathBuf,
    pub archive: PathBuf,
}

/// The index's digest, in a file of its own under target/dist, for the
/// release workflow to pin the macOS builds to.
pub const DIGEST_FILE: &str = "apitrace-probe.digest";

/// The layout's directory name under target/dist.
pub fn layout_name(version: &str) -> String {
    format!("apitrace-probe_v{version}.oci")
}

/// Builds the image for each `(platform, probe binary)` into
/// `target/dist/apitrace-probe_v{version}.oci` and its `.tar` archive.
pub fn build(version: &str, probes: &[(Platform, PathBuf)]) -> anyhow::Result<Image> {
    let dist = workspace().join("target/dist");
    let work = workspace().join("target/image-work");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let mut layers = Vec::new();
    for (platform, probe) in probes {
        step(
            "release",
            &format!("probe image: layers for {}", platform.name()),
        );
        layers.push(Layers::write(&work, platform, probe)?);
    }
    let layout = dist.join(layout_name(version));
    let digest = write_layout(&layout, version, &layers)?;
    let again = write_layout(&work.join("again.oci"), version, &layers)?;
    if again != digest {
        bail!(
            "the probe image is not reproducible: the same layers gave {digest} and then {again}"
        );
    }
    let archive = dist.join(format!("{}.tar", layout_name(version)));
    shell::run(Command::new("sh").arg("-c").arg(format!(
        "{ARCHIVE_TAR} -C '{}' -cf '{}' oci-layout index.json blobs",
        layout.display(),
        archive.display()
    )))?;
    std::fs::remove_dir_all(&work)?;
    std::fs::write(dist.join(DIGEST_FILE), format!("{digest}\n"))?;
    Ok(Image {
        reference: format!("{REPOSITORY}:{version}@{digest}"),
        digest,
        layout,
        archive,
    })
}

/// A deterministic tar: sorted, owned by root, dated 1970. Layers keep the
/// modes their files have (the packages', the probe's 0755); [`ARCHIVE_TAR`]
/// also sets every mode, since umoci writes blobs 0600 and the rest follows
/// the umask.
const TAR: &str = "tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu";
pub const ARCHIVE_TAR: &str = "tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
     --format=gnu --mode=u=rwX,go=rX";

/// One architecture's two layer archives and what the base holds.
struct Layers {
    platform: Platform,
    base: PathBuf,
    base_packages: String,
    probe: PathBuf,
}

impl Layers {
    fn write(work: &Path, platform: &Platform, probe: &Path) -> anyhow::Result<Self> {
        let here = work.join(platform.arch);
        let (debs, rootfs, probe_root) = (here.join("debs"), here.join("base"), here.join("probe"));
        for directory in [&debs, &rootfs, &probe_root] {
            std::fs::create_dir_all(directory)?;
        }
        let wanted: Vec<String> = BASE_PACKAGES
            .iter()
            .map(|package| format!("{package}:{}", platform.arch))
            .collect();
        shell::run(
            Command::new("apt-get")
                .arg("download")
                .args(&wanted)
                .current_dir(&debs),
        )
        .with_context(|| {
            format!(
                "cannot download {} from Debian's archive (apt-get update first?)",
                wanted.join(" ")
            )
        })?;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&debs)?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        let mut versions = Vec::new();
        for deb in &entries {
            shell::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&rootfs))?;
            let name = deb
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            versions.push(name.trim_end_matches(".deb").replace("%3a", ":"));
        }
        // A root's directories as an image's are, whatever the umask was.
        shell::run(
            Command::new("chmod")
                .arg("0755")
                .arg(&rootfs)
                .arg(&probe_root),
        )?;
        let base = layer_archive(&rootfs, &here.join("base.tar"))?;
        let binary = probe_root.join("apitrace-probe");
        std::fs::copy(probe, &binary)
            .with_context(|| format!("cannot copy the probe from {}", probe.display()))?;
        shell::run(Command::new("chmod").arg("0755").arg(&binary))?;
        let probe_layer = layer_archive(&probe_root, &here.join("probe.tar"))?;
        Ok(Self {
            platform: *platform,
            base,
            base_packages: versions.join(" "),
            probe: probe_layer,
        })
    }
}

/// The layer archive of everything under `root`, written to `archive`.
fn layer_archive(root: &Path, archive: &Path) -> anyhow::Result<PathBuf> {
    shell::run(Command::new("sh").arg("-c").arg(format!(
        "{TAR} -C '{}' -cf '{}' .",
        root.display(),
        archive.display()
    )))?;
    Ok(archive.to_path_buf())
}

/// Writes the layout at `layout` (replacing it) and returns its index's digest.
fn write_layout(layout: &Path, version: &str, layers: &[Layers]) -> anyhow::Result<String> {
    if layout.exists() {
        std::fs::remove_dir_all(layout)?;
    }
    let umoci = |args: &[&str]| shell::run(Command::new("umoci").args(args));
    let path = layout.to_string_lossy().into_owned();
    umoci(&["init", "--layout", &path])?;
    let mut manifests = Vec::new();
    for layer in layers {
        let arch = layer.platform.arch;
        let image = format!("{path}:{version}-{arch}");
        umoci(&["new", "--image", &image])?;
        let created_by = format!("Debian packages: {}", layer.base_packages);
        for (archive, made_of) in [
            (&layer.base, created_by.as_str()),
            (&layer.probe, "apitrace-probe"),
        ] {
            umoci(&[
                "raw",
                "add-layer",
                "--image",
                &image,
                "--history.created",
                EPOCH,
                "--history.created_by",
                made_of,
                &archive.to_string_lossy(),
            ])?;
        }
        let version_label = format!("org.opencontainers.image.version={version}");
        umoci(&[
            "config",
            "--image",
            &image,
            "--created",
            EPOCH,
            "--history.created",
            EPOCH,
            "--os",
            "linux",
            "--architecture",
            arch,
            "--config.user",
            "0",
            "--config.entrypoint",
            "/apitrace-probe",
            "--clear",
            "config.cmd",
            "--config.label",
            &version_label,
            "--config.label",
            "org.opencontainers.image.source=https://github.com/apitrace/kubectl-apitrace",
        ])?;
        let descriptor = read_json(&layout.join("index.json"))?["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|descriptor| {
                descriptor["annotations"][REF_NAME] == format!("{version}-{arch}").as_str()
            })
            .cloned()
            .with_context(|| format!("umoci wrote no manifest tagged {version}-{arch}"))?;
        manifests.push(json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": descriptor["digest"],
            "size": descriptor["size"],
            "platform": { "architecture": arch, "os": "linux" },
        }));
    }
    umoci(&["gc", "--layout", &path])?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": manifests,
    }))?;
    let digest = write_blob(layout, &index)?;
    // Two names for the one index. The tag is what skopeo's `oci:LAYOUT:TAG`
    // and containerd's import read. The digest name is for kind: a pod's
    // `REPOSITORY:TAG@DIGEST` is looked up by containerd's CRI as
    // `REPOSITORY@DIGEST` (a reference with both keeps only the digest:
    // distribution/reference `normalize.go`, containerd v2.3
    // `internal/cri/server/images/service.go` `LocalResolve`), and only a
    // pull would otherwise record that name (kind issue #2394). A
    // descriptor without a ref.name is no tag to skopeo.
    let descriptor = |annotations: Value| {
        json!({
            "mediaType": INDEX_MEDIA_TYPE,
            "digest": digest,
            "size": index.len(),
            "annotations": annotations,
        })
    };
    let top = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            descriptor(json!({
                REF_NAME: version,
                CONTAINERD_NAME: format!("{REPOSITORY}:{version}"),
            })),
            descriptor(json!({ CONTAINERD_NAME: format!("{REPOSITORY}@{digest}") })),
        ],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top)?)?;
    Ok(digest)
}

fn write_blob(layout: &Path, bytes: &[u8]) -> anyhow::Result<String> {
    let hex = super::sha256_hex(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes)?;
    Ok(format!("sha256:{hex}"))
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_slice(&text)?)
}
