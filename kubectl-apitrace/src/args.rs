//! The command line, parsed. Turning it into something runnable (finding
//! binaries, checking privileges) happens where it is run.

use std::{num::NonZeroU64, path::PathBuf, time::Duration};

use apitrace_cluster::{names::SessionId, target::TargetRef};
use apitrace_join::predicate::Predicate;
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
#[command(
    subcommand_precedence_over_arg = true,
    override_usage = "kubectl apitrace [OPTIONS] [TARGET]\n       kubectl apitrace [OPTIONS] <COMMAND>",
    after_help = "Examples:\n  # Trace the calls to and from a pod for five minutes\n  kubectl apitrace pod/nginx\n\n  # Every pod of a deployment, as JSON lines as they come, for one minute\n  kubectl apitrace deploy/web -n shop --duration 1m -o ndjson -f\n\n  # What a session would create, without creating it\n  kubectl apitrace svc/api --dry-run\n\n  # The whole data path on this Linux host, without a cluster\n  sudo kubectl apitrace demo"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The API server and the account to use, as kubectl takes them: anywhere on
/// the line, before or after the command, as kubectl's own global flags.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The kubeconfig file [default: $KUBECONFIG or ~/.kube/config].
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        help_heading = "Cluster options"
    )]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context [default: the current context].
    #[arg(
        long,
        value_name = "NAME",
        global = true,
        help_heading = "Cluster options"
    )]
    pub context: Option<String>,
    /// The namespace holding the mesh config (istiod's).
    #[arg(long, value_name = "NAMESPACE", global = true, help_heading = "Cluster options", default_value = apitrace_cluster::check::DEFAULT_ISTIO_NAMESPACE, value_parser = parse_namespace)]
    pub istio_namespace: String,
    /// The namespace the probes run in (see manifests/probe.yaml).
    #[arg(long, value_name = "NAMESPACE", global = true, help_heading = "Cluster options", default_value = apitrace_cluster::names::DEFAULT_PROBE_NAMESPACE, value_parser = parse_namespace)]
    pub probe_namespace: String,
}

/// What to trace and where, as kubectl names objects.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// What to trace: pod/NAME (or NAME), deploy/NAME, sts/NAME, ds/NAME or svc/NAME.
    #[arg(value_name = "TARGET", value_parser = parse_target)]
    pub target: Option<TargetRef>,
    /// Trace the pods matching this label selector instead (e.g. app=web).
    #[arg(
        short = 'l',
        long = "selector",
        value_name = "SELECTOR",
        conflicts_with = "target",
        value_parser = parse_selector
    )]
    pub selector: Option<String>,
    /// The namespace of the target [default: the context's namespace].
    #[arg(short = 'n', long, value_name = "NAMESPACE", value_parser = parse_namespace)]
    pub namespace: Option<String>,
    /// Look for the selector's pods in every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

/// `kubectl apitrace TARGET`: a session on the cluster.
#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    /// How long the session runs; everything it created is removed at the end.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Print every object the session would create and the mesh config change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The probe image [default: the one released with this version].
    #[arg(long, value_name = "IMAGE", value_parser = parse_image)]
    pub probe_image: Option<String>,
    /// An image pull secret in the probe namespace for the probe image (repeatable).
    #[arg(long = "image-pull-secret", value_name = "NAME")]
    pub image_pull_secrets: Vec<String>,
    /// Run the probes as privileged containers instead of with the capabilities
    /// they need (for runtimes whose seccomp or LSM profile refuses BPF otherwise).
    #[arg(long)]
    pub privileged: bool,
    /// No progress on stderr (it is shown only on a terminal anyway).
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub save: SaveArgs,
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
        after_help = "Examples:\n  # Five requests, as a table\n  sudo kubectl apitrace demo\n\n  # Twenty requests as JSON lines, kept to replay later\n  sudo kubectl apitrace demo --requests 20 -o ndjson --save demo.apitrace\n\n  # h2c, up to 10 streams in flight on each of two connections\n  sudo kubectl apitrace demo --protocol h2c --connections 2 --streams 10 --requests 40"
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
    /// Check that the cluster has what a session needs, without changing anything.
    ///
    /// Istio and its version, the Telemetry and WasmPlugin APIs, your
    /// permissions, the probe namespace's Pod Security level and, for a target,
    /// each node's kernel. A session runs the same checks before it starts.
    #[command(
        after_help = "Examples:\n  # Is this cluster ready for apitrace?\n  kubectl apitrace check\n\n  # And for tracing this deployment?\n  kubectl apitrace check deploy/web -n shop"
    )]
    Check(CheckArgs),
    /// Remove what sessions left behind (after a crash, or a kill -9).
    ///
    /// Finds objects by the labels every session puts on them, removes the
    /// session label from traced pods and the session's provider from the mesh
    /// config, and says what it removed. Sessions whose CLI is still running are
    /// left alone unless named with --session. Running it twice is harmless.
    #[command(
        after_help = "Examples:\n  # Everything left by sessions that are no longer running\n  kubectl apitrace cleanup --all\n\n  # One session, running or not\n  kubectl apitrace cleanup --session abcde12345"
    )]
    Cleanup(CleanupArgs),
    /// Print the version of this CLI and of the probes running on the cluster.
    ///
    /// The probe image a session uses is pinned to the CLI's version; running
    /// probes (of sessions in progress) are listed with their image.
    #[command(
        after_help = "Examples:\n  # This CLI, and the probes of sessions running on the current context\n  kubectl apitrace version\n\n  # This CLI only\n  kubectl apitrace version --client"
    )]
    Version(VersionArgs),
    /// Print a shell completion script.
    ///
    /// kubectl completes plugin commands (from kubectl 1.26) through an
    /// executable named kubectl_complete-apitrace on the PATH; see the README
    /// for the one-line wrapper. The script can also be sourced to complete
    /// kubectl-apitrace directly.
    #[command(
        after_help = "Examples:\n  # bash, for this shell\n  source <(kubectl apitrace completion bash)\n\n  # zsh, for every shell\n  kubectl apitrace completion zsh > \"${fpath[1]}/_kubectl-apitrace\""
    )]
    Completion(CompletionArgs),
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print the CLI's version only, without asking the cluster.
    #[arg(long)]
    pub client: bool,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also check what tracing a target needs (its pods, their nodes).
    #[command(flatten)]
    pub targets: TargetArgs,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct CleanupWhich {
    /// The session to remove, running or not (its id, as printed when it started).
    #[arg(long, value_name = "ID", value_parser = parse_session)]
    pub session: Option<SessionId>,
    /// Every session whose CLI is no longer running.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub which: CleanupWhich,
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
    /// Print only the calls EXPR selects, such as `status >= 500 || flag ==
    /// "UF" || latency > 250ms` (the fields and the syntax: docs/record.md);
    /// the summary counts the calls seen and selected.
    #[arg(long = "where", value_name = "EXPR", value_parser = parse_where)]
    pub select: Option<Predicate>,
    /// Stop after N calls that `--where` selects (every call without it),
    /// as at the end of `--duration`: the session waits for what the
    /// sidecars still had to report, then removes what it created. Exactly
    /// N calls are printed.
    #[arg(long, value_name = "N", value_parser = parse_until)]
    pub until: Option<NonZeroU64>,
}

/// Where a live session keeps its raw events; shared by the demo and cluster
/// sessions.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Keep the session in FILE, to replay with `kubectl apitrace join
    /// FILE`: every event it receives, or with `--where` only the calls it
    /// selects (and how many calls it saw). Only its owner can read it.
    #[arg(long = "save", id = "save", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// With `--where`, save every event anyway, so that a replay can select
    /// other calls.
    #[arg(long = "save-all")]
    pub all: bool,
}

impl Cli {
    /// The `--save` and `--save-all` of the command given.
    fn save(&self) -> Option<&SaveArgs> {
        match &self.command {
            None => Some(&self.trace.save),
            Some(Command::Demo(demo)) => Some(&demo.save),
            Some(Command::Join(join)) => Some(&join.save),
            Some(_) => None,
        }
    }

    /// Flags that do not go together, which clap's own rules cannot say
    /// in words that name them.
    fn conflict(&self) -> Option<&'static str> {
        self.save()
            .is_some_and(|save| save.all && save.file.is_none())
            .then_some("--save-all says what --save FILE keeps, and no --save FILE was given: pass --save FILE with it, or leave --save-all out")
    }
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// A file written by `--save`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
    /// With `--where`, keeps the calls it selects in another file: a long
    /// recording narrowed to what matters.
    #[command(flatten)]
    pub save: SaveArgs,
}

/// What the demo's client pod speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoProtocol {
    /// HTTP/1.1 GETs.
    Http1,
    /// HTTP/2 GETs with prior knowledge (h2c), no upgrade.
    H2c,
    /// gRPC: unary and server-streaming calls, some failing.
    Grpc,
    /// HTTP/1.1, h2c and gRPC calls in turn, to one HTTP/2 port.
    Mixed,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many requests the client pod sends.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = parse_requests)]
    pub requests: u32,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub save: SaveArgs,
    /// The bearer token the client sends [default: a generated JWT, shaped like
    /// an identity provider's].
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Call the server over IPv6 (its Service's IPv6 address).
    #[arg(long)]
    pub ipv6: bool,
    /// Between the two sidecars, plaintext instead of Istio's mutual TLS (as
    /// with a PeerAuthentication of mode DISABLE, or a caller outside the
    /// mesh's mTLS).
    #[arg(long)]
    pub plaintext: bool,
    /// The client pod has no sidecar: it calls the server pod in plaintext
    /// from outside the mesh (PERMISSIVE), and only the server's sidecar
    /// logs the calls.
    #[arg(long)]
    pub caller_outside_mesh: bool,
    /// Send every request over one connection (HTTP/1.1 keep-alive; one h2c
    /// connection and one gRPC channel with --protocol) instead of one
    /// connection each.
    #[arg(long)]
    pub keep_alive: bool,
    /// Open C connections for the calls (of each kind, with mixed), keep
    /// them alive, and spread the calls over them in turn, as h2load's -c
    /// does; --requests stays the total.
    #[arg(long, value_name = "C", value_parser = parse_connections)]
    pub connections: Option<u32>,
    /// Keep up to M calls in flight on each connection, as h2load's -m
    /// does: HTTP/2 streams with h2c, concurrent calls on each channel with
    /// grpc, and over HTTP/1.1 (http1, and mixed's HTTP/1.1 calls) M
    /// requests pipelined in one write; implies keep-alive.
    #[arg(long, value_name = "M", value_parser = parse_streams)]
    pub streams: Option<u32>,
    /// What the client speaks to the server's Service, whose port is named for
    /// it as Istio reads port names (`http`; `http2` for h2c and mixed; `grpc`).
    #[arg(long, value_enum, value_name = "PROTOCOL", default_value_t = DemoProtocol::Http1)]
    pub protocol: DemoProtocol,
    /// Drop this share of the server pod's inbound packets after the probe saw
    /// them, so that TCP retransmits (iptables statistic).
    #[arg(long, value_name = "PERCENT", value_parser = parse_loss)]
    pub loss: Option<u8>,
    /// Between the requests, also send traffic apitrace must survive: a
    /// malformed request line, bytes that are not HTTP, a 64 KiB header, and a
    /// JWT whose base64 is broken.
    #[arg(long)]
    pub bad_traffic: bool,
    /// Also write what each sidecar pod's interfaces carried to
    /// DIR/<pod>-<interface>.pcap (tcpdump), to check the records against a
    /// packet dissector such as tshark or Wireshark.
    #[arg(long, value_name = "DIR")]
    pub pcap: Option<PathBuf>,
    /// The Envoy binary to run as the sidecar [default: `envoy` on PATH].
    #[arg(
        long,
        value_name = "PATH",
        env = "APITRACE_ENVOY",
        hide_env_values = true
    )]
    pub envoy: Option<PathBuf>,
    /// The probe binary [default: apitrace-probe next to this binary].
    #[arg(
        long,
        value_name = "PATH",
        env = "APITRACE_PROBE",
        hide_env_values = true
    )]
    pub probe_bin: Option<PathBuf>,
}

/// The longest session: probes run privileged-ish on nodes, so they must not
/// be forgotten there.
pub const MAX_DURATION: Duration = Duration::from_secs(60 * 60);

fn parse_where(text: &str) -> Result<Predicate, String> {
    Predicate::parse(text)
        .map_err(|error| format!("{error} (the fields and the syntax are in docs/record.md)"))
}

fn parse_until(text: &str) -> Result<NonZeroU64, String> {
    let calls = text
        .parse::<u64>()
        .map_err(|_| format!("{text:?} is not a number of calls: use a whole number such as 10"))?;
    NonZeroU64::new(calls)
        .ok_or_else(|| "a session stops after at least one call: use --until 1 or more".into())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => {
            Err("a session needs some time: use a duration such as 30s or 5m".into())
        }
        Ok(duration) if duration > MAX_DURATION => Err(format!(
            "{text:?} is longer than a session may run (1h): run another session after it"
        )),
        Ok(duration) => Ok(duration),
        Err(_) => Err(format!(
            "{text:?} is not a duration: use a number and a unit, such as 90s, 5m or 1h"
        )),
    }
}

fn parse_target(text: &str) -> Result<TargetRef, String> {
    text.parse()
        .map_err(|error: apitrace_cluster::target::InvalidTarget| error.to_string())
}

fn parse_namespace(text: &str) -> Result<String, String> {
    apitrace_cluster::target::parse_namespace(text).map_err(|error| error.to_string())
}

fn parse_selector(text: &str) -> Result<String, String> {
    apitrace_cluster::target::parse_selector(text).map_err(|error| error.to_string())
}

/// Only the shape is checked here; whether the image exists, the node finds out.
fn parse_image(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains(char::is_whitespace) {
        Err(format!(
            "{text:?} is not an image reference: use REGISTRY/REPOSITORY:TAG or @sha256:DIGEST"
        ))
    } else {
        Ok(text.to_owned())
    }
}

fn parse_session(text: &str) -> Result<SessionId, String> {
    text.parse()
        .map_err(|error: apitrace_cluster::names::InvalidSessionId| error.to_string())
}

fn parse_requests(text: &str) -> Result<u32, String> {
    parse_at_least_one(text, "requests", "request", 5)
}

fn parse_connections(text: &str) -> Result<u32, String> {
    parse_at_least_one(text, "connections", "connection", 2)
}

fn parse_streams(text: &str) -> Result<u32, String> {
    parse_at_least_one(text, "streams", "stream", 10)
}

/// A count the demo needs at least one of, for `--{flag}`; `example` is
/// what a typical value looks like.
fn parse_at_least_one(text: &str, flag: &str, one: &str, example: u32) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(0) => Err(format!(
            "the demo needs at least one {one}: use --{flag} 1 or more"
        )),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "{text:?} is not a number of {flag}: use a whole number such as {example}"
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

/// The command line, where the cluster's flags (`--kubeconfig`, `--context`,
/// ...) go anywhere, as kubectl's do. A subcommand takes precedence over the
/// session's target, so a session's own flags given with a subcommand are
/// refused here rather than ignored.
pub fn parse() -> Cli {
    use clap::{CommandFactory as _, FromArgMatches as _, parser::ValueSource};
    let mut command = Cli::command();
    let matches = command.get_matches_mut();
    if let Some((name, _)) = matches.subcommand() {
        let session = TraceArgs::augment_args(clap::Command::new("session"));
        let given = session.get_arguments().find(|arg| {
            matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine)
        });
        if let Some(arg) = given {
            let flag = match (arg.get_long(), arg.get_value_names()) {
                (Some(long), _) => format!("--{long}"),
                (None, Some([name, ..])) => name.to_string(),
                (None, _) => arg.get_id().to_string(),
            };
            command
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "{flag} belongs to a session (`kubectl apitrace TARGET ...`), \
                         not to `kubectl apitrace {name}`; see `kubectl apitrace {name} --help`"
                    ),
                )
                .exit();
        }
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    if let Some(conflict) = cli.conflict() {
        command
            .error(clap::error::ErrorKind::MissingRequiredArgument, conflict)
            .exit();
    }
    cli
}

/// The completion script for `shell`, for the `kubectl-apitrace` executable
/// (a name without the space kubectl shows, which shells' function names
/// cannot hold).
///
/// clap_complete's bash script names its per-subcommand cases inconsistently
/// when the binary's name has a dash (the dispatch and the cases disagree, so
/// nothing below the top level completes): bash's is generated for a dashless
/// name and registered for the real one.
pub fn completion(
    shell: clap_complete::Shell,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    const BIN: &str = "kubectl-apitrace";
    const DASHLESS: &str = "kubectl_apitrace";
    let mut script = Vec::new();
    let name = if shell == clap_complete::Shell::Bash {
        DASHLESS
    } else {
        BIN
    };
    clap_complete::generate(shell, &mut Cli::command(), name, &mut script);
    if shell != clap_complete::Shell::Bash {
        return out.write_all(&script);
    }
    let script = String::from_utf8_lossy(&script);
    for line in script.lines() {
        let line = if line.trim_start().starts_with("complete -F") {
            line.replace(&format!(" {DASHLESS}"), &format!(" {BIN}"))
        } else {
            line.to_owned()
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn save_all_without_a_file_is_a_conflict_for_every_command_that_saves() {
        let conflict = |args: &[&str]| {
            let mut line = vec!["kubectl-apitrace"];
            line.extend(args);
            Cli::try_parse_from(line).unwrap().conflict()
        };
        for args in [
            &["pod/web", "--save-all"][..],
            &["demo", "--save-all"],
            &[
                "join",
                "s.apitrace",
                "--where",
                "status >= 500",
                "--save-all",
            ],
        ] {
            assert!(
                conflict(args)
                    .is_some_and(|text| text.starts_with("--save-all says what --save FILE keeps")),
                "{args:?}"
            );
        }
        assert_eq!(conflict(&["demo", "--save", "s", "--save-all"]), None);
        assert_eq!(conflict(&["pod/web", "--save", "s"]), None);
    }

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
        let until = |value: &str| {
            Cli::try_parse_from(["kubectl-apitrace", "demo", "--until", value])
                .unwrap_err()
                .to_string()
        };
        assert!(
            until("0").contains("use --until 1 or more"),
            "{}",
            until("0")
        );
        assert!(
            until("abc").contains("\"abc\" is not a number of calls"),
            "{}",
            until("abc")
        );
        assert!(
            error
                .to_string()
                .contains("[possible values: table, wide, json, ndjson, har, summary]"),
            "{error}"
        );
    }
}
