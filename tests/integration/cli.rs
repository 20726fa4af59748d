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

#[test]
fn bad_session_arguments_are_refused_with_what_to_use() {
    for (args, expected) in [
        (
            &["cm/config"][..],
            "\"cm/config\" is not something to trace: use pod/NAME, deploy/NAME, sts/NAME, ds/NAME, svc/NAME, or -l SELECTOR",
        ),
        (
            &["pod/web", "--duration", "3h"],
            "\"3h\" is longer than a session may run (1h): run another session after it",
        ),
        (
            &["pod/web", "--duration", "soon"],
            "\"soon\" is not a duration: use a number and a unit, such as 90s, 5m or 1h",
        ),
        (
            &["pod/web", "--duration", "0s"],
            "a session needs some time: use a duration such as 30s or 5m",
        ),
        (
            &["pod/web", "-l", "app=web"],
            "the argument '[TARGET]' cannot be used with '--selector <SELECTOR>'",
        ),
        (
            &["-l", "app=web", "-n", "shop", "-A"],
            "the argument '--namespace <NAMESPACE>' cannot be used with '--all-namespaces'",
        ),
        (
            &["pod/web", "-o", "yaml"],
            "[possible values: table, wide, json, ndjson, har]",
        ),
        (&["cleanup"], "<--session <ID>|--all>"),
        (
            &["cleanup", "--session", "Prod"],
            "\"Prod\" is not a session id: ids are 10 lowercase letters and digits",
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
fn a_session_without_a_usable_kubeconfig_says_how_to_point_at_one() {
    let output = cli(&["pod/web", "--kubeconfig", "/nonexistent/kubeconfig"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).starts_with(
            "error: cannot read kubeconfig /nonexistent/kubeconfig: check the path given to --kubeconfig"
        ),
        "{}",
        stderr(&output)
    );

    let kubeconfig =
        std::env::temp_dir().join(format!("apitrace-kubeconfig-{}", std::process::id()));
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n",
    )
    .unwrap();
    let output = cli(&[
        "pod/web",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--context",
        "prod",
    ]);
    std::fs::remove_file(&kubeconfig).unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.starts_with("error: no usable kubeconfig context \"prod\": "),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with(
            "check `kubectl config get-contexts`, or pass --kubeconfig FILE / --context NAME"
        ),
        "{text}"
    );
}

#[test]
fn a_session_without_a_target_says_what_to_name() {
    let kubeconfig =
        std::env::temp_dir().join(format!("apitrace-kubeconfig-t-{}", std::process::id()));
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\nusers: [{name: u, user: {}}]\n",
    )
    .unwrap();
    let output = cli(&["--kubeconfig", kubeconfig.to_str().unwrap()]);
    std::fs::remove_file(&kubeconfig).unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output).trim(),
        "error: nothing to trace: name a target (pod/NAME, deploy/NAME, sts/NAME, ds/NAME, svc/NAME) or pass -l SELECTOR; see `kubectl apitrace --help`"
    );
}
