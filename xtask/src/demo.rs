//! `cargo xtask demo [ARGS]`: set up, build, then `kubectl-apitrace demo ARGS`
//! with the Envoy setup installed.

use std::process::Command;

use crate::{
    build, setup,
    shell::{self, workspace},
};

#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct Options {
    /// What `kubectl-apitrace demo` is given, as it is (its `--help` too).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    let installed = setup::run()?;
    build::run(&build::Options { release: false })?;
    let cli = workspace().join("target/debug/kubectl-apitrace");
    shell::run(
        Command::new(cli)
            .arg("demo")
            .args(&options.args)
            .env("APITRACE_ENVOY", &installed.envoy),
    )
}
