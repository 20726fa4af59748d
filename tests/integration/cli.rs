//! Bad input: each mistake ends with one clear sentence that says what to do.

use std::process::Command;

use crate::support::{binaries, is_root, root, stderr};

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(&binaries().cli)
        .args(args)
        .output()
        .expect("the CLI runs")
}

#[test]
fn bad_demo_arguments_are_refused_with_what_to_use() {
    for (args, expected) in [
        (&["demo", "--requests", "0"][..], "use --requests 1 or more"),
        (
            &["demo", "--requests", "many"],
            "use a whole number such as 5",
        ),
        (
            &["demo", "-o", "bogus"],
            "[possible values: table, wide, json, ndjson, har]",
        ),
    ] {
        let output = cli(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn the_demo_without_root_says_to_use_sudo() {
    let binary = &binaries().cli;
    let output = if is_root() {
        // Drop to nobody for this one run.
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(binary)
            .arg("demo")
            .output()
            .expect("setpriv runs")
    } else {
        cli(&["demo"])
    };
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output).trim(),
        "error: the demo creates network namespaces and attaches eBPF programs, so it must run as root: run it again with sudo"
    );
}

#[test]
fn the_demo_without_its_artefacts_says_how_to_get_them() {
    // The artefact checks come after the root check.
    if !root("the artefact checks") {
        return;
    }
    let output = cli(&["demo", "--probe-bin", "/nonexistent/apitrace-probe"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output).trim(),
        "error: the probe binary /nonexistent/apitrace-probe does not exist: build it with `cargo xtask build`, or pass --probe-bin PATH"
    );
    let probe = binaries().probe.to_string_lossy().into_owned();
    let output = cli(&[
        "demo",
        "--probe-bin",
        &probe,
        "--envoy",
        "/nonexistent/envoy",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output).trim(),
        "error: the Envoy binary /nonexistent/envoy does not exist: run `cargo xtask setup`, or pass --envoy PATH"
    );
}
