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
            "[possible values: table, wide, json, ndjson, har, summary]",
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
            "[possible values: table, wide, json, ndjson, har, summary]",
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
            "error: cannot read kubeconfig /nonexistent/kubeconfig: \
             check the path given to --kubeconfig"
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
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         contexts: [{name: c, context: {cluster: k, user: u}}]\n\
         users: [{name: u, user: {}}]\n",
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

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The bash script, sourced in a real bash, completes commands and formats.
#[test]
fn the_bash_completion_completes_commands_and_output_formats() {
    let script = std::env::temp_dir().join(format!("apitrace-completion-{}", std::process::id()));
    let output = cli(&["completion", "bash"]);
    assert!(output.status.success(), "{}", stderr(&output));
    std::fs::write(&script, &output.stdout).unwrap();
    assert!(
        stdout(&output).contains("-o default kubectl-apitrace\n"),
        "the script completes the executable's own name"
    );
    let complete = |words: &str, current: usize| -> String {
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={current}; \
                 _kubectl_apitrace kubectl-apitrace \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
                 echo \"${{COMPREPLY[@]}}\"",
                script.display()
            ))
            .output()
            .expect("bash runs");
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output).trim().to_owned()
    };
    assert_eq!(complete("kubectl-apitrace cl", 1), "cleanup");
    assert_eq!(
        complete("kubectl-apitrace -o ''", 2),
        "table wide json ndjson har summary"
    );
    assert_eq!(complete("kubectl-apitrace cleanup --a", 2), "--all");
    let _ = std::fs::remove_file(&script);
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let output = cli(&["completion", shell]);
        let text = stdout(&output);
        assert!(
            output.status.success() && text.contains("cleanup") && text.contains("ndjson"),
            "{shell}: {}",
            stderr(&output)
        );
    }
    let output = cli(&["completion", "tcsh"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("[possible values: bash, elvish, fish, powershell, zsh]"));
}

#[test]
fn version_prints_the_cli_and_its_probe_image_and_survives_an_unreachable_cluster() {
    let version = env!("CARGO_PKG_VERSION");
    let output = cli(&["version", "--client"]);
    assert!(output.status.success());
    assert_eq!(
        stdout(&output),
        format!(
            "kubectl-apitrace {version}\nprobe image: ghcr.io/apitrace/apitrace-probe:{version}\n"
        )
    );
    let output = cli(&["version", "--kubeconfig", "/nonexistent/kubeconfig"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.lines()
            .nth(2)
            .is_some_and(|line| line.starts_with("probes: cluster not reachable (")
                && line.contains("/nonexistent/kubeconfig")),
        "{text}"
    );
}

/// The help of each command as README.md shows it, between
/// `<!-- help: ARGS -->` and the end of the code block that follows. With
/// APITRACE_BLESS=1 the README is rewritten from the binary instead.
#[test]
fn the_help_shown_in_the_readme_is_what_the_binary_prints() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let marker = "<!-- help: ";
    let mut rewritten = String::new();
    let mut rest = readme.as_str();
    let mut shown = 0;
    let mut stale = Vec::new();
    while let Some(start) = rest.find(marker) {
        let (before, from_marker) = rest.split_at(start);
        rewritten.push_str(before);
        let line_end = from_marker.find('\n').unwrap();
        let args = from_marker[marker.len()..line_end]
            .trim_end_matches("-->")
            .trim()
            .to_owned();
        let block_start = line_end + 1 + from_marker[line_end + 1..].find('\n').unwrap() + 1;
        let block_end = block_start + from_marker[block_start..].find("```").unwrap();
        let documented = &from_marker[block_start..block_end];
        let argv: Vec<&str> = args.split_whitespace().chain(["--help"]).collect();
        let output = cli(&argv);
        assert!(output.status.success(), "{args}: {}", stderr(&output));
        let printed = stdout(&output);
        if printed != documented {
            stale.push(args.clone());
        }
        rewritten.push_str(&from_marker[..block_start]);
        rewritten.push_str(&printed);
        rest = &from_marker[block_end..];
        shown += 1;
    }
    rewritten.push_str(rest);
    assert!(shown >= 7, "README shows the help of {shown} commands");
    if std::env::var("APITRACE_BLESS").is_ok_and(|bless| bless == "1") {
        std::fs::write(path, rewritten).unwrap();
        return;
    }
    assert!(
        stale.is_empty(),
        "README.md's help differs from the binary's for: {stale:?}; \
         rewrite it with `APITRACE_BLESS=1 cargo test -p apitrace-tests -- the_help_shown`"
    );
}
