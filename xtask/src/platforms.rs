//! The platforms a release is built for, and how this machine builds for each.
//!
//! This machine's own platform (and on a Mac, both darwin ones) is built by
//! the toolchain running xtask (rustup's, with its installed targets). Any other is
//! cross-built with what `cargo xtask setup` installs from Debian's packages,
//! following `../shared/TOOLCHAIN.md` ("Cross builds and the probe image"):
//! Debian's `rustc-web` brings a standard library for arm64 Linux and the
//! standard library's source, which `-Z build-std` compiles for Windows and
//! macOS; mingw-w64 links Windows binaries, zig (through cargo-zigbuild)
//! links macOS ones against framework stubs (see `release::darwin`).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use crate::shell::{cargo, workspace};

/// A platform as krew names it, with the Rust target that builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Platform {
    pub os: &'static str,
    pub arch: &'static str,
    pub triple: &'static str,
}

/// Every platform a release has an archive for, in the krew manifest's order.
pub const PLATFORMS: [Platform; 5] = [
    Platform {
        os: "linux",
        arch: "amd64",
        triple: "x86_64-unknown-linux-gnu",
    },
    Platform {
        os: "linux",
        arch: "arm64",
        triple: "aarch64-unknown-linux-gnu",
    },
    Platform {
        os: "darwin",
        arch: "amd64",
        triple: "x86_64-apple-darwin",
    },
    Platform {
        os: "darwin",
        arch: "arm64",
        triple: "aarch64-apple-darwin",
    },
    Platform {
        os: "windows",
        arch: "amd64",
        triple: "x86_64-pc-windows-gnu",
    },
];

/// The oldest macOS the darwin binaries run on: 11 (Big Sur) is the first with
/// arm64, and one floor for both architectures keeps the check simple.
pub const MACOS_DEPLOYMENT_TARGET: &str = "11.0";

/// Debian's toolchain, the one that can build for targets rustup cannot
/// download here.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";

impl Platform {
    /// `os/arch`, as `--platform` takes it.
    pub fn name(&self) -> String {
        format!("{}/{}", self.os, self.arch)
    }

    /// The platform named `os/arch`.
    pub fn named(name: &str) -> Option<Platform> {
        PLATFORMS
            .into_iter()
            .find(|platform| platform.name() == name)
    }

    /// The platform of the machine running xtask, if releases are made for it.
    pub fn host() -> Option<Platform> {
        let os = match env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        let arch = match env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        PLATFORMS
            .into_iter()
            .find(|platform| platform.os == os && platform.arch == arch)
    }

    /// How this machine builds it. A Mac builds for both its architectures
    /// (Apple's linker links either, given rustup's target); elsewhere only
    /// the machine's own platform is native.
    fn route(&self) -> Route {
        let native = Platform::host()
            .is_some_and(|host| host == *self || host.os == "darwin" && self.os == "darwin");
        if native {
            Route::Native
        } else {
            match self.os {
                "linux" => Route::DebianStd,
                "windows" => Route::BuildStd,
                _ => Route::Zig,
            }
        }
    }

    /// The file name of `package`'s binary.
    pub fn binary(&self, package: &str) -> String {
        executable(self.os, package)
    }

    /// Where `cargo build --release --target` leaves `package`'s binary.
    pub fn built(&self, package: &str) -> PathBuf {
        workspace()
            .join("target")
            .join(self.triple)
            .join("release")
            .join(self.binary(package))
    }

    /// `cargo build --release --locked --target` for this platform, set up to
    /// cross-build where it must; the caller adds the packages. `sdk_root`
    /// is the macOS SDK a darwin cross build links against.
    pub fn cargo_build(&self, sdk_root: Option<&Path>) -> Command {
        let route = self.route();
        let mut command = match route {
            Route::Native => {
                let mut command = cargo();
                command.arg("build");
                command
            }
            Route::DebianStd | Route::BuildStd => {
                let mut command = Command::new(DEBIAN_CARGO);
                command.current_dir(workspace()).arg("build");
                command
            }
            Route::Zig => {
                let mut command = Command::new(workspace().join(".venv/bin/cargo-zigbuild"));
                // cargo-zigbuild runs zig as the `ziglang` module of the
                // Python on PATH, the project's virtual environment's, and
                // the cargo that `CARGO` names.
                let path = format!(
                    "{}:{}",
                    workspace().join(".venv/bin").display(),
                    env::var("PATH").unwrap_or_default()
                );
                command
                    .current_dir(workspace())
                    .arg("zigbuild")
                    .env("PATH", path)
                    .env("CARGO", DEBIAN_CARGO);
                command
            }
        };
        command.args(["--release", "--locked", "--target", self.triple]);
        if self.os == "linux" {
            command.env("RUSTFLAGS", remap_path_prefixes());
        }
        if self.os == "darwin" {
            command.env("MACOSX_DEPLOYMENT_TARGET", MACOS_DEPLOYMENT_TARGET);
        }
        if route == Route::Native {
            return command;
        }
        // Every cross build runs the same cargo and rustc with the same
        // environment: the build scripts and proc-macros they compile for this
        // machine are then shared, not rebuilt by each in turn
        // (RUSTC_BOOTSTRAP is part of what cargo fingerprints).
        command
            .env("RUSTC", DEBIAN_RUSTC)
            .env("RUSTC_BOOTSTRAP", "1");
        if matches!(route, Route::BuildStd | Route::Zig) {
            command.args(["-Z", "build-std=std,panic_abort"]);
        }
        let gcc = match self.os {
            "linux" => Some("aarch64-linux-gnu"),
            "windows" => Some("x86_64-w64-mingw32"),
            _ => None,
        };
        let triple = self.triple.replace('-', "_");
        if let Some(prefix) = gcc {
            command
                .env(
                    format!("CARGO_TARGET_{}_LINKER", triple.to_uppercase()),
                    format!("{prefix}-gcc"),
                )
                .env(format!("CC_{triple}"), format!("{prefix}-gcc"))
                .env(format!("AR_{triple}"), format!("{prefix}-ar"));
        }
        if let Some(sdk_root) = sdk_root.filter(|_| route == Route::Zig) {
            command.env("SDKROOT", sdk_root);
        }
        command
    }
}

/// Where the sources were built is no part of a Linux release (the probes,
/// whose image digest the CLIs are pinned to, and the Linux CLIs): the
/// checkout and cargo's registry are renamed in every path the compiler
/// writes (panic locations, generated files' paths), so that one commit
/// built in any directory gives the same binaries. The Windows and darwin
/// builds do not rename yet.
fn remap_path_prefixes() -> String {
    let registry = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_default()
        .join("registry/src");
    format!(
        "--remap-path-prefix={}=/apitrace --remap-path-prefix={}=/cargo",
        workspace().display(),
        registry.display()
    )
}

/// An executable's file name on `os`.
pub fn executable(os: &str, name: &str) -> String {
    if os == "windows" {
        format!("{name}.exe")
    } else {
        name.to_owned()
    }
}

/// How a platform is built here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// By the toolchain running xtask, for its own operating system.
    Native,
    /// Debian's rustc and cargo with the precompiled standard library for
    /// the target (arm64 Linux), linked by the cross gcc.
    DebianStd,
    /// Debian's rustc and cargo compiling the standard library from source
    /// (`-Z build-std`), linked by mingw-w64 (Windows).
    BuildStd,
    /// As `BuildStd`, linked by zig through cargo-zigbuild (macOS).
    Zig,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(command: &Command, key: &str) -> Option<String> {
        command
            .get_envs()
            .find(|(name, _)| *name == key)
            .and_then(|(_, value)| value.map(|value| value.to_string_lossy().into_owned()))
    }

    /// Each cross route is the one TOOLCHAIN.md verified on this machine kind.
    #[test]
    fn each_cross_platform_is_built_the_way_its_recipe_says() {
        if Platform::host().map(|host| host.os) != Some("linux") {
            return;
        }
        let arm64 = Platform::named("linux/arm64").expect("a platform");
        let command = arm64.cargo_build(None);
        assert_eq!(
            environment(&command, "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER").as_deref(),
            Some("aarch64-linux-gnu-gcc")
        );
        assert_eq!(
            environment(&command, "RUSTC").as_deref(),
            Some(DEBIAN_RUSTC)
        );
        assert!(!command.get_args().any(|arg| arg == "-Z"));

        let windows = Platform::named("windows/amd64").expect("a platform");
        let command = windows.cargo_build(None);
        assert_eq!(command.get_program(), DEBIAN_CARGO);
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args[0], "build");
        assert!(args.contains(&"build-std=std,panic_abort".as_ref()));
        assert_eq!(
            environment(&command, "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER").as_deref(),
            Some("x86_64-w64-mingw32-gcc")
        );

        let darwin = Platform::named("darwin/arm64").expect("a platform");
        let command = darwin.cargo_build(Some(Path::new("/sdk")));
        assert!(
            command
                .get_program()
                .to_string_lossy()
                .ends_with("cargo-zigbuild")
        );
        assert_eq!(command.get_args().next().unwrap(), "zigbuild");
        assert_eq!(
            environment(&command, "CARGO").as_deref(),
            Some(DEBIAN_CARGO)
        );
        assert_eq!(environment(&command, "SDKROOT").as_deref(), Some("/sdk"));
        assert_eq!(
            environment(&command, "MACOSX_DEPLOYMENT_TARGET").as_deref(),
            Some(MACOS_DEPLOYMENT_TARGET)
        );
    }

    #[test]
    fn platforms_are_named_as_krew_names_them() {
        assert_eq!(
            Platform::named("darwin/arm64").map(|p| p.triple),
            Some("aarch64-apple-darwin")
        );
        assert_eq!(Platform::named("windows/arm64"), None);
        assert_eq!(
            Platform::named("windows/amd64")
                .unwrap()
                .binary("kubectl-apitrace"),
            "kubectl-apitrace.exe"
        );
    }
}
