//! The command line, parsed. Turning it into something runnable (finding
//! binaries, checking privileges) happens where it is run.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-apitrace",
    bin_name = "kubectl apitrace",
    version,
    about = "Trace API calls inside an Istio mesh: who called whom, with which identity, what came back, and what happened on the wire.",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole data path on this Linux host, without a cluster.
    ///
    /// Two pods are network namespaces on a bridge; the server pod runs an HTTP
    /// app behind a real Envoy sidecar with Istio's inbound capture, the apitrace
    /// WASM filter and the gRPC access-log service; the probe attaches the TC
    /// program to the server pod's interfaces. The client pod sends requests
    /// with a bearer JWT, and one joined record per request is printed. Needs
    /// root; everything it creates is removed when it ends.
    #[command(
        after_help = "Examples:\n  # Five requests, as a table\n  sudo kubectl apitrace demo\n\n  # Twenty requests as JSON lines, kept to replay later\n  sudo kubectl apitrace demo --requests 20 -o ndjson --save demo.apitrace"
    )]
    Demo(DemoArgs),
    /// Join a saved session again, offline, and print its calls.
    ///
    /// A session run with `--save FILE` keeps every event it received, in the
    /// order it received them; this feeds them to the same join, so the calls
    /// come out as the session printed them, in any output format. No cluster
    /// and no privileges are needed.
    #[command(
        after_help = "Examples:\n  # The calls of a saved session, as a table\n  kubectl apitrace join demo.apitrace\n\n  # As an HTTP Archive for a browser's network panel\n  kubectl apitrace join demo.apitrace -o har > calls.har"
    )]
    Join(JoinArgs),
}

/// How the calls are printed; shared by every command that prints them.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_name = "FORMAT", value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print each call as soon as it is joined, instead of every call in time
    /// order at the end (table, wide and ndjson).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Show raw credentials (the token and its signature) instead of redacting them.
    #[arg(long)]
    pub show_secrets: bool,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// A file written by `--save`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many requests the client pod sends.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = parse_requests)]
    pub requests: u32,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Keep every event the session receives in FILE, to replay with
    /// `kubectl apitrace join FILE`. Only its owner can read it.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// The bearer token the client sends [default: a generated JWT, shaped like
    /// an identity provider's].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Send the requests to the server pod's IPv6 address.
    #[arg(long)]
    pub ipv6: bool,
    /// Send every request over one connection (HTTP/1.1 keep-alive) instead of
    /// one connection each.
    #[arg(long)]
    pub keep_alive: bool,
    /// Drop this share of the server pod's inbound packets after the probe saw
    /// them, so that TCP retransmits (iptables statistic).
    #[arg(long, value_name = "PERCENT", value_parser = parse_loss)]
    pub loss: Option<u8>,
    /// Between the requests, also send traffic apitrace must survive: a
    /// malformed request line, bytes that are not HTTP, a 64 KiB header, and a
    /// JWT whose base64 is broken.
    #[arg(long)]
    pub bad_traffic: bool,
    /// The Envoy binary to run as the sidecar [default: `envoy` on PATH].
    #[arg(long, value_name = "PATH", env = "APITRACE_ENVOY")]
    pub envoy: Option<PathBuf>,
    /// The probe binary [default: apitrace-probe next to this binary].
    #[arg(long, value_name = "PATH", env = "APITRACE_PROBE")]
    pub probe_bin: Option<PathBuf>,
}

fn parse_requests(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err("the demo needs at least one request: use --requests 1 or more".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "{text:?} is not a number of requests: use a whole number such as 5"
        )),
    }
}

fn parse_loss(text: &str) -> Result<u8, String> {
    match text.trim_end_matches('%').parse::<u8>() {
        Ok(percent @ 1..=90) => Ok(percent),
        _ => Err(format!(
            "{text:?} is not a loss to simulate: use a whole percentage from 1 to 90"
        )),
    }
}

pub fn parse() -> Cli {
    Cli::parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_demo_arguments_say_what_to_use() {
        let error =
            Cli::try_parse_from(["kubectl-apitrace", "demo", "--requests", "0"]).unwrap_err();
        assert!(
            error.to_string().contains("use --requests 1 or more"),
            "{error}"
        );
        let error = Cli::try_parse_from(["kubectl-apitrace", "demo", "--loss", "100"]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("use a whole percentage from 1 to 90"),
            "{error}"
        );
        let error = Cli::try_parse_from(["kubectl-apitrace", "demo", "-o", "bogus"]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("[possible values: table, wide, json, ndjson, har]"),
            "{error}"
        );
    }
}
