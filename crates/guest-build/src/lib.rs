//! Builds a guest crate (the TC program for `bpfel-unknown-none`, the filter for
//! `wasm32-unknown-unknown`) from the probe's build script, so that one
//! `cargo build -p apitrace-probe` produces a probe with both embedded.
//!
//! Neither target ships a precompiled standard library through rustup stable, so
//! the build takes one of two routes:
//! - **rustup nightly** with the `rust-src` component: `-Z build-std`, the usual
//!   aya route;
//! - **Debian's `rustc-web`** (`/usr/bin/rustc`), whose `libstd-rust-web-dev-bpf`
//!   ships `core` for the BPF targets and whose `rust-web-src` lets `-Z build-std`
//!   build `std` for wasm. `RUSTC_BOOTSTRAP=1` unlocks the unstable flags.
//!
//! `APITRACE_GUEST_TOOLCHAIN=nightly|debian` forces a route. Guests are built
//! into their own target directory, `<target-dir>/guest`: the outer cargo holds
//! the locks of its profile directories while build scripts run, and sharing one
//! guest directory between profiles (`check` for clippy, `dev`, `test`) builds
//! each guest, and the standard library for WASM, once instead of per profile.
//! The inner cargo's own lock serialises builds that run at the same time.

use std::{
    env,
    ffi::OsString,
    io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// What to run when no guest toolchain is found.
pub const SETUP_HINT: &str = "run `cargo xtask setup` (Debian, as root) to install Debian's rustc-web, \
     its BPF core library and standard library source, and bpf-linker; or install a rustup nightly \
     with `rustup component add rust-src --toolchain nightly`";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no toolchain can build the {target} guest: {SETUP_HINT}")]
    NoToolchain { target: &'static str },
    #[error("APITRACE_GUEST_TOOLCHAIN={0:?} is not a route: use `nightly` or `debian`")]
    UnknownRoute(String),
    #[error("bpf-linker is not on PATH; it links the eBPF object: {SETUP_HINT}")]
    NoBpfLinker,
    #[error("could not run {command}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("building {package} for {target} failed ({status}); the compiler's messages are above")]
    Failed {
        package: &'static str,
        target: &'static str,
        status: std::process::ExitStatus,
    },
    #[error("{0} is not set; this runs from a build script")]
    MissingEnv(&'static str),
    #[error("the build of {package} reported success but {path} is missing")]
    MissingArtefact {
        package: &'static str,
        path: PathBuf,
    },
}

/// A crate of this workspace built for a guest target.
#[derive(Debug, Clone, Copy)]
pub struct Guest {
    /// Cargo package name.
    pub package: &'static str,
    /// The file cargo writes into the profile directory.
    pub artefact: &'static str,
    pub kind: GuestKind,
    /// Directories (relative to the workspace root) whose changes rebuild it.
    pub sources: &'static [&'static str],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    Ebpf,
    Wasm,
}

impl GuestKind {
    fn target(self) -> &'static str {
        match self {
            Self::Ebpf => "bpfel-unknown-none",
            Self::Wasm => "wasm32-unknown-unknown",
        }
    }

    /// Profiles defined in the workspace manifest.
    fn profile(self) -> &'static str {
        match self {
            Self::Ebpf => "guest-bpf",
            Self::Wasm => "guest-wasm",
        }
    }

    fn build_std(self) -> &'static str {
        match self {
            Self::Ebpf => "core",
            Self::Wasm => "std,panic_abort",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    RustupNightly,
    Debian,
}

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTLIB: &str = "/usr/lib/rustlib";

/// Builds `guest` and returns the path of its artefact inside `OUT_DIR`.
pub fn build(guest: Guest) -> Result<PathBuf, Error> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or(Error::MissingEnv("OUT_DIR"))?);
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or(Error::MissingEnv("CARGO_MANIFEST_DIR"))?,
    );
    let workspace = manifest_dir.parent().unwrap_or(&manifest_dir).to_path_buf();
    for source in guest.sources {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(source).display()
        );
    }
    println!("cargo:rerun-if-env-changed=APITRACE_GUEST_TOOLCHAIN");

    let target = guest.kind.target();
    let route = route(guest.kind)?;
    if guest.kind == GuestKind::Ebpf && !on_path("bpf-linker") {
        return Err(Error::NoBpfLinker);
    }
    let target_dir = guest_target_dir(&out_dir, env::var("TARGET").ok().as_deref());
    let mut command = match route {
        Route::RustupNightly => {
            let mut command = Command::new("rustup");
            command.args(["run", "nightly", "cargo"]);
            command
        }
        Route::Debian => {
            let mut command = Command::new(DEBIAN_CARGO);
            command
                .env("RUSTC", DEBIAN_RUSTC)
                .env("RUSTC_BOOTSTRAP", "1");
            command
        }
    };
    command
        .current_dir(&workspace)
        .args([
            "build",
            "--locked",
            "--package",
            guest.package,
            "--target",
            target,
        ])
        .args(["--profile", guest.kind.profile()])
        .args(["-Z", &format!("build-std={}", guest.kind.build_std())])
        .arg("--target-dir")
        .arg(&target_dir)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    if let Some(path) = path_with_cargo_bin() {
        command.env("PATH", path);
    }
    // What the outer build set for the host must not leak into the guest build.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        if route == Route::Debian && key == "RUSTC" {
            continue;
        }
        command.env_remove(key);
    }
    // The checkout's path would otherwise be in the object's debug info, and
    // so in the probe: one commit built in two directories would differ.
    let mut flags = vec![format!(
        "--remap-path-prefix={}=/apitrace",
        workspace.display()
    )];
    if guest.kind == GuestKind::Ebpf {
        // BTF lets the kernel describe our maps and events (bpftool, verifier logs).
        flags.push("-Clink-arg=--btf".to_owned());
    }
    command.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\u{1f}"));
    let status = command.status().map_err(|source| Error::Spawn {
        command: format!("{command:?}"),
        source,
    })?;
    if !status.success() {
        return Err(Error::Failed {
            package: guest.package,
            target,
            status,
        });
    }
    let built = target_dir
        .join(target)
        .join(guest.kind.profile())
        .join(guest.artefact);
    if !built.is_file() {
        return Err(Error::MissingArtefact {
            package: guest.package,
            path: built,
        });
    }
    Ok(built)
}

/// `<target-dir>/guest`, from `OUT_DIR` = `<target-dir>/<profile>/build/<package>-<hash>/out`,
/// or `<target-dir>/<triple>/<profile>/...` when building for `--target
/// <triple>` (`target`, the build script's `TARGET`). Every host target shares
/// the one directory: the guests are the same whoever embeds them. Falls back
/// to `OUT_DIR` itself for a layout it does not recognise.
fn guest_target_dir(out_dir: &Path, target: Option<&str>) -> PathBuf {
    let in_build_dir = out_dir
        .parent()
        .and_then(Path::parent)
        .is_some_and(|build| build.ends_with("build"));
    match out_dir.ancestors().nth(4) {
        Some(triple_dir)
            if in_build_dir && target.is_some_and(|target| triple_dir.ends_with(target)) =>
        {
            triple_dir.parent().unwrap_or(triple_dir).join("guest")
        }
        Some(target_dir) if in_build_dir => target_dir.join("guest"),
        _ => out_dir.join("guest"),
    }
}

fn route(kind: GuestKind) -> Result<Route, Error> {
    match env::var("APITRACE_GUEST_TOOLCHAIN").ok().as_deref() {
        Some("nightly") => return Ok(Route::RustupNightly),
        Some("debian") => return Ok(Route::Debian),
        Some(other) if !other.is_empty() => return Err(Error::UnknownRoute(other.to_owned())),
        _ => {}
    }
    if nightly_has_rust_src() {
        return Ok(Route::RustupNightly);
    }
    let debian_ready = Path::new(DEBIAN_RUSTC).is_file()
        && Path::new(DEBIAN_CARGO).is_file()
        && match kind {
            GuestKind::Ebpf => Path::new(DEBIAN_RUSTLIB)
                .join("bpfel-unknown-none")
                .is_dir(),
            GuestKind::Wasm => Path::new(DEBIAN_RUSTLIB).join("src/rust/library").is_dir(),
        };
    if debian_ready {
        Ok(Route::Debian)
    } else {
        Err(Error::NoToolchain {
            target: kind.target(),
        })
    }
}

fn nightly_has_rust_src() -> bool {
    let Ok(output) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    output.status.success()
        && Path::new(String::from_utf8_lossy(&output.stdout).trim())
            .join("lib/rustlib/src/rust/library")
            .is_dir()
}

fn on_path(program: &str) -> bool {
    path_with_cargo_bin()
        .is_some_and(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `cargo install` puts bpf-linker here, which is not on every PATH a build
/// script inherits (IDEs, `sudo`).
fn home_cargo_bin() -> Option<PathBuf> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
    Some(home.join("bin"))
}

/// `PATH` with `~/.cargo/bin` appended, for the guest build's linker lookup.
fn path_with_cargo_bin() -> Option<OsString> {
    let mut paths: Vec<PathBuf> = env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).collect())
        .unwrap_or_default();
    paths.extend(home_cargo_bin());
    env::join_paths(paths).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_shares_one_guest_directory() {
        let host = Some("x86_64-unknown-linux-gnu");
        let dev = guest_target_dir(
            Path::new("/w/target/debug/build/apitrace-probe-1a/out"),
            host,
        );
        let check = guest_target_dir(
            Path::new("/w/target/debug/build/apitrace-probe-2b/out"),
            host,
        );
        let release = guest_target_dir(
            Path::new("/w/target/release/build/apitrace-probe-3c/out"),
            host,
        );
        assert_eq!(dev, Path::new("/w/target/guest"));
        assert_eq!((check, release), (dev.clone(), dev.clone()));
        for (target, out_dir) in [
            (
                host,
                "/w/target/x86_64-unknown-linux-gnu/release/build/p-1/out",
            ),
            (
                Some("aarch64-unknown-linux-gnu"),
                "/w/target/aarch64-unknown-linux-gnu/release/build/p-1/out",
            ),
        ] {
            assert_eq!(
                guest_target_dir(Path::new(out_dir), target),
                dev,
                "{out_dir}"
            );
        }
        assert_eq!(
            guest_target_dir(Path::new("/elsewhere/out"), host),
            Path::new("/elsewhere/out/guest")
        );
    }
}
