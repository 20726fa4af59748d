//! `cargo xtask fixtures`: record the golden sessions in `tests/fixtures` from
//! the real demo (root).

use std::process::Command;

use crate::{
    build, setup,
    shell::{self, step, workspace},
};

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

pub fn run() -> anyhow::Result<()> {
    let installed = setup::run()?;
    build::run(&build::Options { release: false })?;
    let cli = workspace().join("target/debug/kubectl-apitrace");
    let dir = workspace().join("tests/fixtures");
    for (name, args) in FIXTURES {
        step("fixtures", name);
        let printed = std::fs::File::create(dir.join(format!("{name}.ndjson")))?;
        shell::run(
            Command::new(&cli)
                .arg("demo")
                .args(*args)
                .args(["-o", "ndjson", "--save"])
                .arg(dir.join(format!("{name}.apitrace")))
                .env("APITRACE_ENVOY", &installed.envoy)
                .stdout(printed),
        )?;
    }
    Ok(())
}
