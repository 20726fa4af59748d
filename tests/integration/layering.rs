//! The crate boundaries the design holds.

use std::process::Command;

/// The CLI builds on macOS and Windows and on a stable toolchain alone, so
/// nothing of aya (Linux-only) and nothing that builds guest artefacts (which
/// needs the eBPF and WASM toolchains) may be in its dependency tree.
#[test]
fn the_cli_depends_on_neither_aya_nor_the_guest_build() {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--package",
            "kubectl-apitrace",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    assert!(
        tree.contains("apitrace-join"),
        "the tree is the CLI's:\n{tree}"
    );
    let aya: Vec<&str> = tree
        .lines()
        .filter(|line| line.starts_with("aya"))
        .collect();
    assert!(aya.is_empty(), "the CLI depends on {aya:?}");
}
