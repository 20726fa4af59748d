//! The release's CLIs for other platforms, run here for real: the linux/arm64
//! binary under qemu-user, the windows/amd64 one under Wine. Each replays
//! every golden session and must print exactly the records the fixture
//! holds, byte for byte, as the native build does (`replay::`). The darwin
//! binaries cannot run here; the release checks their Mach-O headers, and the
//! release workflow runs them on a macOS runner.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::support::{released, stderr};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn archive(os: &str, arch: &str) -> String {
    let extension = if os == "windows" { "zip" } else { "tar.gz" };
    format!("kubectl-apitrace_v{VERSION}_{os}_{arch}.{extension}")
}

/// Every golden session with the records it must replay to.
fn fixtures() -> Vec<(PathBuf, String)> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut sessions: Vec<PathBuf> = std::fs::read_dir(&directory)
        .expect("tests/fixtures")
        .map(|entry| entry.expect("a fixture").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "apitrace")
        })
        .collect();
    sessions.sort();
    assert!(sessions.len() >= 4, "the golden sessions: {sessions:?}");
    sessions
        .into_iter()
        .map(|session| {
            let records = std::fs::read_to_string(session.with_extension("ndjson"))
                .expect("each session has its records");
            (session, records)
        })
        .collect()
}

fn succeeded(what: &str, output: &Output) -> String {
    assert!(
        output.status.success(),
        "{what}: {} {}",
        output.status,
        stderr(output)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

/// The archive unpacked into a fresh directory, as a user would.
fn unpack(dist: &Path, name: &str) -> tempfile::TempDir {
    let directory = tempfile::tempdir().expect("a scratch directory");
    let archive = dist.join(name);
    let status = if name.ends_with(".zip") {
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&archive)
            .arg(directory.path())
            .status()
    } else {
        Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(directory.path())
            .status()
    };
    assert!(
        status.expect("the unpacker runs").success(),
        "unpacking {name}"
    );
    directory
}

/// Run without `-L`: with it, the cross `ld.so` meets the multiarch libc and
/// the binary spins at its first thread (TOOLCHAIN.md).
#[test]
fn the_arm64_cli_replays_every_golden_session_under_qemu() {
    let name = archive("linux", "arm64");
    let Some(dist) = released("the arm64 replay", &[&name]) else {
        return;
    };
    let unpacked = unpack(&dist, &name);
    let binary = unpacked.path().join("kubectl-apitrace");
    let run = |args: &[&str]| {
        Command::new("qemu-aarch64-static")
            .arg(&binary)
            .args(args)
            .output()
            .expect("qemu-aarch64-static runs (qemu-user-static, installed by `cargo xtask setup`)")
    };
    let version = succeeded("version", &run(&["version", "--client"]));
    assert!(
        version.starts_with(&format!("kubectl-apitrace {VERSION}\n")),
        "{version:?}"
    );
    for (session, records) in fixtures() {
        let printed = succeeded(
            &session.display().to_string(),
            &run(&["join", &session.to_string_lossy(), "-o", "ndjson"]),
        );
        assert!(
            printed == records,
            "{}: the arm64 replay differs",
            session.display()
        );
    }
}

/// Wine's view of a Linux path: its `Z:` drive is the root.
fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.to_string_lossy().replace('/', "\\"))
}

#[test]
fn the_windows_cli_replays_every_golden_session_under_wine() {
    let name = archive("windows", "amd64");
    let Some(dist) = released("the Windows replay", &[&name]) else {
        return;
    };
    let unpacked = unpack(&dist, &name);
    let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("wine/bcryptprimitives.c");
    let built = Command::new("x86_64-w64-mingw32-gcc")
        .args(["-shared", "-O2", "-o"])
        .arg(unpacked.path().join("bcryptprimitives.dll"))
        .arg(&shim)
        .arg("-ladvapi32")
        .output()
        .expect("mingw-w64 runs (installed by `cargo xtask setup`)");
    succeeded("building the ProcessPrng shim", &built);
    let prefix = tempfile::tempdir().expect("a Wine prefix");
    let binary = unpacked.path().join("kubectl-apitrace.exe");
    let run = |args: &[&str]| {
        Command::new("/usr/lib/wine/wine64")
            .arg(&binary)
            .args(args)
            .env("WINEPREFIX", prefix.path())
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .output()
            .expect("wine64 runs (installed by `cargo xtask setup`)")
    };
    let version = succeeded("version", &run(&["version", "--client"]));
    assert!(
        version.starts_with(&format!("kubectl-apitrace {VERSION}\n")),
        "{version:?}"
    );
    let completion = succeeded("completion powershell", &run(&["completion", "powershell"]));
    assert!(
        completion.contains("Register-ArgumentCompleter")
            && completion.contains("kubectl-apitrace"),
        "{completion}"
    );
    for (session, records) in fixtures() {
        let printed = succeeded(
            &session.display().to_string(),
            &run(&["join", &windows_path(&session), "-o", "ndjson"]),
        );
        assert!(
            printed == records,
            "{}: the Windows replay differs",
            session.display()
        );
    }
}
