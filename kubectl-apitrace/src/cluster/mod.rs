//! `kubectl apitrace TARGET`, `check`, `cleanup` and `version`: the cluster commands.
//! Each resolves its arguments against the cluster, then hands over to
//! `apitrace-cluster`, which does the work and is tested against a mock API.

mod link;

use std::{io, pin::Pin, process::ExitCode, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use apitrace_cluster::{
    check::{self, CheckError},
    cleanup::{self, Reach, Which},
    identity,
    mesh::MeshConfigRef,
    names::{self, SessionId},
    objects::{LEASE_DURATION, Plan, ProbeOptions},
    session::{self, Session, SessionError, Timeouts},
    target::{self, Scope, Selection, Targets},
};
use apitrace_join::{Input, JoinConfig, Workload, WorkloadKind};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::{
    args::{CheckArgs, CleanupArgs, ClusterArgs, TargetArgs, TraceArgs, VersionArgs},
    live::{interrupted, now_ns, random_hex},
    output::{Destination, Printer},
    pipeline::{BATCH, Drain, Pipeline},
    saved::{Keep, SavedWriter},
};
use link::{FromProbe, PortForwardLink};

/// The probe image released with this version of the CLI: tagged with the
/// version and, in a release build, pinned to the digest of the image built
/// with it (`cargo xtask release` sets `APITRACE_PROBE_IMAGE_DIGEST`), so
/// that a node runs exactly that image whatever the tag points to later.
pub fn default_probe_image() -> String {
    let tagged = format!(
        "{}:{}",
        names::PROBE_IMAGE_REPOSITORY,
        env!("CARGO_PKG_VERSION")
    );
    match option_env!("APITRACE_PROBE_IMAGE_DIGEST") {
        Some(digest) => format!("{tagged}@{digest}"),
        None => tagged,
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// A client for the chosen kubeconfig and context, and the context's namespace.
async fn connect(args: &ClusterArgs) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).with_context(|| {
                format!(
                    "cannot read kubeconfig {}: check the path given to --kubeconfig",
                    path.display()
                )
            })?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    }
    .map_err(|error| {
        anyhow!(
            "no usable kubeconfig{}: {error}; check `kubectl config get-contexts`, \
             or pass --kubeconfig FILE / --context NAME",
            args.context
                .as_ref()
                .map(|c| format!(" context {c:?}"))
                .unwrap_or_default()
        )
    })?;
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).context("cannot build a client for the API server")?;
    Ok((client, namespace))
}

/// What the arguments select; `None` when they name nothing.
fn selection(args: &TargetArgs, default_namespace: String) -> Option<(Selection, Scope)> {
    let selection = match (&args.target, &args.selector) {
        (Some(target), _) => Selection::Named(target.clone()),
        (None, Some(selector)) => Selection::Labels(selector.clone()),
        (None, None) => return None,
    };
    let scope = if args.all_namespaces {
        Scope::AllNamespaces
    } else {
        Scope::Namespace(args.namespace.clone().unwrap_or(default_namespace))
    };
    Some((selection, scope))
}

/// Everything a session checks before it creates anything; `check` prints it.
struct Preflight {
    targets: Targets,
    mesh: check::Mesh,
    inherited_logging: std::collections::BTreeMap<String, Vec<serde_json::Value>>,
}

async fn preflight(
    client: &Client,
    cluster: &ClusterArgs,
    selection: &Selection,
    scope: &Scope,
) -> anyhow::Result<Preflight> {
    let targets = target::resolve(client, selection, scope).await?;
    let revision = check::revision(client, &targets).await?;
    let mesh = check::mesh(client, &cluster.istio_namespace, &revision).await?;
    warn_of_owner(&mesh);
    for node in &targets.nodes {
        check::kernel_attach(&node.name, &node.kernel)?;
    }
    permitted(client, cluster, &targets.namespaces(), &mesh).await?;
    let inherited_logging = check::inherited_logging(client, &mesh, &targets).await?;
    check::sidecars_reach_probes(client, &mesh, &targets, &cluster.probe_namespace).await?;
    check::probe_service_exported(&mesh, &targets, &cluster.probe_namespace)?;
    Ok(Preflight {
        targets,
        mesh,
        inherited_logging,
    })
}

/// Whether the user may do everything a session in `namespaces` does (with
/// none, what every session does), and the probe namespace admits the probe:
/// checked before a session creates anything, and by `check`.
async fn permitted(
    client: &Client,
    cluster: &ClusterArgs,
    namespaces: &[String],
    mesh: &check::Mesh,
) -> anyhow::Result<()> {
    let needed = check::permissions(
        &cluster.probe_namespace,
        &cluster.istio_namespace,
        namespaces,
    );
    let missing = check::missing_permissions(client, &needed).await?;
    if !missing.is_empty() {
        return Err(CheckError::Forbidden(missing).into());
    }
    check::probe_namespace_level(client, &cluster.probe_namespace, mesh).await?;
    Ok(())
}

/// What a session sets up, from its arguments and what preflight found:
/// every choice is made here, so that `--dry-run` shows what the session
/// would do.
fn plan(args: &TraceArgs, cluster: &ClusterArgs, preflight: Preflight) -> anyhow::Result<Plan> {
    Ok(Plan {
        session: SessionId::generate(),
        token: random_hex(32)?,
        started: Timestamp::now(),
        duration: args.duration,
        holder: format!(
            "kubectl-apitrace/{}",
            std::env::var("USER")
                .or_else(|_| std::env::var("USERNAME"))
                .unwrap_or_default()
        ),
        probe: ProbeOptions {
            namespace: cluster.probe_namespace.clone(),
            image: args.probe_image.clone().unwrap_or_else(default_probe_image),
            pull_secrets: args.image_pull_secrets.clone(),
            privileged: args.privileged,
        },
        mesh: preflight.mesh.config,
        telemetry_version: preflight.mesh.telemetry_version,
        targets: preflight.targets,
        inherited_logging: preflight.inherited_logging,
        show_secrets: args.output.show_secrets,
        cluster_domain: preflight
            .mesh
            .cluster_domain
            .unwrap_or_else(|| check::DEFAULT_CLUSTER_DOMAIN.to_owned()),
    })
}

pub fn trace(args: TraceArgs, cluster: ClusterArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(trace_async(args, cluster))
}

async fn trace_async(args: TraceArgs, cluster: ClusterArgs) -> anyhow::Result<ExitCode> {
    let (client, default_namespace) = connect(&cluster).await?;
    let Some((selection, scope)) = selection(&args.targets, default_namespace) else {
        bail!(
            "nothing to trace: name a target (pod/NAME, deploy/NAME, sts/NAME, ds/NAME, svc/NAME) or pass -l SELECTOR; see `kubectl apitrace --help`"
        );
    };
    let progress = Progress::new(args.quiet);
    progress.say("resolving the targets and checking the cluster");
    let preflight = preflight(&client, &cluster, &selection, &scope).await?;
    let mesh_config = preflight.mesh.mesh_config.clone();
    let plan = plan(&args, &cluster, preflight)?;
    if args.dry_run {
        let text = apitrace_cluster::dry_run::render(&plan, &mesh_config)?;
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    // Before the cluster is changed: a path that cannot be written ends here.
    let keep = Keep::of(args.output.select.is_some(), args.save.all);
    let saved = args
        .save
        .file
        .as_deref()
        .map(|path| SavedWriter::create(path, keep))
        .transpose()?;
    run_session(&client, plan, &args, saved, progress).await
}

/// Setup's progress on stderr, for a person watching: only on a terminal and
/// without `-q`. Under `--follow` with the calls going to a file or a pipe, it
/// also keeps a live count of the calls seen.
struct Progress {
    shown: bool,
    counting: bool,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        use std::io::IsTerminal as _;
        let shown = !quiet && io::stderr().is_terminal();
        Self {
            shown,
            counting: shown && !io::stdout().is_terminal(),
        }
    }

    fn say(&self, what: impl std::fmt::Display) {
        if self.shown {
            eprintln!("{what}...");
        }
    }

    /// Says what the session does next, whoever reads stderr: on the
    /// terminal's counting line, the count is cleared first and comes back
    /// at the next tick.
    fn announce(&self, what: impl std::fmt::Display) {
        if self.counting {
            eprint!("\r\x1b[K");
        }
        eprintln!("{what}");
    }

    /// Rewrites the count in place, on its own line of the terminal.
    fn count(&self, calls: usize) {
        if self.counting {
            eprint!("\r\x1b[K{calls} calls seen");
        }
    }

    fn done_counting(&self) {
        if self.counting {
            eprintln!();
        }
    }
}

async fn run_session(
    client: &Client,
    plan: Plan,
    args: &TraceArgs,
    saved: Option<SavedWriter>,
    progress: Progress,
) -> anyhow::Result<ExitCode> {
    let session_id = plan.session.to_string();
    let (mut link, mut from_probes) = PortForwardLink::new(
        client.clone(),
        &plan.probe.namespace,
        &session_id,
        &plan.token,
    );
    eprintln!(
        "session {session_id}: {} pod(s) on {} node(s), for {}",
        plan.targets.pods.len(),
        plan.targets.nodes.len(),
        humantime::format_duration(plan.duration)
    );
    // Ctrl-C or SIGTERM, during setup as well as after it; a second one while
    // the session waits for the sidecars' last reports ends it at once.
    let interrupt = CancellationToken::new();
    let interrupt_again = CancellationToken::new();
    tokio::spawn({
        let (interrupt, interrupt_again) = (interrupt.clone(), interrupt_again.clone());
        async move {
            interrupted().await;
            interrupt.cancel();
            interrupted().await;
            interrupt_again.cancel();
        }
    });
    let session = match Session::start(
        client,
        plan,
        &mut link,
        Timeouts::default(),
        &interrupt,
        &mut |stage| progress.say(stage),
    )
    .await
    {
        Ok(session) => session,
        Err(error) if matches!(error.cause, SessionError::Interrupted) => {
            if error.leftovers.is_empty() {
                eprintln!("{error}; everything set up so far was removed");
            } else {
                eprintln!("{error}");
            }
            return Ok(ExitCode::from(130));
        }
        Err(error) => return Err(error.into()),
    };
    let printer = Printer::new(
        io::stdout().lock(),
        args.output.format,
        args.output.follow,
        Destination::stdout(),
    )?;
    let pipeline = Pipeline::new(
        JoinConfig {
            show_secrets: args.output.show_secrets,
            ..JoinConfig::default()
        },
        saved,
        printer,
    )
    .selecting(args.output.select.clone(), args.output.until);
    let mut running = Running::new(client, &session, pipeline, &progress, args.output.follow)?;
    // Everyone else the traced pods talk to, named as they come and go.
    let traced: identity::TracedPods = session
        .plan
        .targets
        .pods
        .iter()
        .map(|pod| (pod.namespace.clone(), pod.name.clone()))
        .collect();
    let (mut identities, naming) = identity::watch(client, traced, now_ns);
    running
        .pipeline
        .unnamed_because(move || naming.unnamed_cause());
    let renew = tokio::time::sleep(LEASE_DURATION / 3);
    tokio::pin!(renew);
    let mut provider_checks = tokio::time::interval_at(
        tokio::time::Instant::now() + session::PROVIDER_CHECK,
        session::PROVIDER_CHECK,
    );
    let mut ticks = tokio::time::interval(Duration::from_millis(200));
    let end = tokio::time::sleep(session.plan.duration);
    tokio::pin!(end);
    let mut messages = Vec::with_capacity(BATCH);
    let result: anyhow::Result<()> = async {
        while !running.drained() {
            tokio::select! {
                () = &mut end, if running.ended.is_none() => running.time_up(),
                () = interrupt.cancelled(), if running.ended.is_none() => running.interrupted(),
                () = interrupt_again.cancelled() => { running.exit = ExitCode::from(130); break }
                () = &mut renew => running.renew_lease(renew.as_mut()).await?,
                _ = provider_checks.tick() => running.check_provider().await,
                _ = ticks.tick() => running.tick()?,
                Some(identity) = identities.next() => running.identity(identity)?,
                received = from_probes.recv_many(&mut messages, BATCH) => running.probe_messages(&mut messages, received)?,
            }
        }
        Ok(())
    }
    .await;
    drop(link);
    let Running {
        pipeline, mut exit, ..
    } = running;
    if args.output.follow {
        progress.done_counting();
    }
    progress.say("removing the session");
    let leftovers = session.end(client).await;
    let outcome = pipeline.finish()?;
    eprintln!("{}", outcome.report(None));
    for (change, error) in &leftovers {
        eprintln!("could not remove {change}: {error}");
    }
    if !leftovers.is_empty() {
        eprintln!("remove them with `kubectl apitrace cleanup --session {session_id}`");
        // A script must see that the cluster was not left as it was.
        exit = ExitCode::FAILURE;
    }
    result?;
    Ok(exit)
}

/// A session between its setup and its teardown: what each of its event
/// sources does, one method each.
struct Running<'a> {
    pipeline: Pipeline<io::StdoutLock<'static>>,
    progress: &'a Progress,
    /// `--follow`: the progress line counts the calls.
    follow: bool,
    lease: session::LeaseKeeper,
    /// Our provider in the mesh config, which whoever manages the config may
    /// put back without it, and someone may add again: each change said, and
    /// the session never adds it back itself.
    provider: session::ProviderWatch,
    mesh: &'a MeshConfigRef,
    /// The identity watch is failing: said once per outage.
    identities_failing: bool,
    /// When the session ended (its duration, Ctrl-C, or `--until`): from then on it only
    /// waits for what the sidecars had yet to report of the calls before it.
    ended: Option<i64>,
    exit: ExitCode,
}

impl<'a> Running<'a> {
    /// The session's pipeline with the traced pods named (and marked traced,
    /// which decides how hops merge) before the first event, even if the
    /// identity watch is slow or not allowed.
    fn new(
        client: &Client,
        session: &'a Session,
        mut pipeline: Pipeline<io::StdoutLock<'static>>,
        progress: &'a Progress,
        follow: bool,
    ) -> anyhow::Result<Self> {
        let plan = &session.plan;
        for pod in &plan.targets.pods {
            for ip in &pod.ips {
                if let Ok(ip) = ip.parse() {
                    pipeline.feed(Input::Identity {
                        ip,
                        since_ns: 0,
                        workload: Workload {
                            namespace: pod.namespace.clone(),
                            name: pod.name.clone(),
                            kind: WorkloadKind::Pod,
                            traced: true,
                        },
                    })?;
                }
            }
        }
        Ok(Self {
            pipeline,
            progress,
            follow,
            lease: session::LeaseKeeper::new(
                client,
                &plan.probe.namespace,
                &plan.session.object_name(),
            ),
            provider: session::ProviderWatch::new(client, &plan.mesh, &plan.session),
            mesh: &plan.mesh,
            identities_failing: false,
            ended: None,
            exit: ExitCode::SUCCESS,
        })
    }

    /// Whether the session ended (its time, Ctrl-C, or `--until`'s count
    /// reached) and has nothing left to wait for.
    fn drained(&mut self) -> bool {
        if self.ended.is_none()
            && let Some(reached) = self.pipeline.until_reached()
        {
            let waiting = Drain::notice();
            self.progress
                .announce(format_args!("{reached}; {waiting} (Ctrl-C to stop now)"));
            self.ended = Some(now_ns());
        }
        self.ended
            .is_some_and(|ended_ns| self.pipeline.drained(ended_ns, now_ns()))
    }

    fn time_up(&mut self) {
        let waiting = Drain::notice();
        self.progress.announce(format_args!(
            "the session's time is up; {waiting} (Ctrl-C to stop now)"
        ));
        self.ended = Some(now_ns());
    }

    fn interrupted(&mut self) {
        self.exit = ExitCode::from(130);
        let waiting = Drain::notice();
        self.progress.announce(format_args!(
            "interrupted; {waiting} (Ctrl-C again to stop now)"
        ));
        self.ended = Some(now_ns());
    }

    /// Renews the Lease, saying when renewing starts or stops failing, and
    /// sets `renew` to when it is due next.
    async fn renew_lease(&mut self, renew: Pin<&mut Sleep>) -> anyhow::Result<()> {
        let was_failing = self.lease.failing.is_some();
        let next = self.lease.renew().await?;
        match &self.lease.failing {
            Some(error) if !was_failing => eprintln!(
                "renewing the session's Lease failed ({error}); retrying every {} s while it is \
                 valid",
                session::RENEW_RETRY.as_secs()
            ),
            None if was_failing => eprintln!("the session's Lease is renewed again"),
            _ => {}
        }
        renew.reset(tokio::time::Instant::now() + next);
        Ok(())
    }

    /// Reads the mesh config for our provider; says each time it is gone or
    /// back, and once when reading it starts failing.
    async fn check_provider(&mut self) {
        let was_failing = self.provider.failing.is_some();
        if let Some(change) = self.provider.check().await {
            self.progress.announce(change);
        } else if let (Some(error), false) = (&self.provider.failing, was_failing) {
            self.progress.announce(format_args!(
                "reading the mesh config {} for the session's access-log provider: {error}; \
                 trying again every {} s",
                self.mesh,
                session::PROVIDER_CHECK.as_secs()
            ));
        }
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        self.pipeline.feed(Input::Tick { now_ns: now_ns() })?;
        if self.follow {
            self.progress.count(self.pipeline.records());
        }
        Ok(())
    }

    /// Who an address is, from the watch. The watcher retries with backoff;
    /// an outage is said once.
    fn identity(&mut self, identity: Result<Input, impl std::fmt::Display>) -> anyhow::Result<()> {
        match identity {
            Ok(input) => {
                self.identities_failing = false;
                self.pipeline.feed(input)?;
            }
            Err(error) if !self.identities_failing => {
                self.identities_failing = true;
                eprintln!(
                    "watching the cluster's pods, services and nodes: {error}; addresses seen \
                     meanwhile may go unnamed"
                );
            }
            Err(_) => {}
        }
        Ok(())
    }

    /// What `received` messages from the probes brought: what arrived
    /// together is joined together (the join reads ahead in a batch), all of
    /// it before a lost probe ends the session.
    fn probe_messages(
        &mut self,
        messages: &mut Vec<FromProbe>,
        received: usize,
    ) -> anyhow::Result<()> {
        if received == 0 {
            bail!("every probe connection ended");
        }
        let now_ns = now_ns();
        let mut events = Vec::with_capacity(received);
        let mut lost = None;
        for message in messages.drain(..) {
            match message {
                FromProbe::Event(event) => events.push(Input::Event {
                    event: *event,
                    now_ns,
                }),
                FromProbe::Reconnected { pod, outage } => eprintln!(
                    "reconnected to probe {pod} after {}; events of that time are lost",
                    humantime::format_duration(Duration::from_millis(outage.as_millis() as u64))
                ),
                FromProbe::Lost { pod, detail } => lost = lost.or(Some((pod, detail))),
            }
        }
        self.pipeline.feed_all(events)?;
        if let Some((pod, detail)) = lost {
            bail!("lost probe {pod}: {detail}");
        }
        Ok(())
    }
}

pub fn check(args: CheckArgs, cluster: ClusterArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let (client, default_namespace) = connect(&cluster).await?;
        match selection(&args.targets, default_namespace) {
            Some((selection, scope)) => {
                let preflight = preflight(&client, &cluster, &selection, &scope).await?;
                print_mesh(&preflight.mesh);
                for node in &preflight.targets.nodes {
                    let attach = check::kernel_attach(&node.name, &node.kernel)?;
                    println!(
                        "node {}: kernel {} ({attach:?} attachment)",
                        node.name, node.kernel
                    );
                }
                println!(
                    "targets: {} pod(s) ready to trace",
                    preflight.targets.pods.len()
                );
            }
            None => {
                let mesh = check::mesh(&client, &cluster.istio_namespace, "default").await?;
                warn_of_owner(&mesh);
                print_mesh(&mesh);
                permitted(&client, &cluster, &[], &mesh).await?;
            }
        }
        println!(
            "permissions: all granted; probe namespace {}: Pod Security privileged",
            cluster.probe_namespace
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// A mesh config someone else reconciles may be put back mid-session, which
/// removes the session's access-log provider: said before anything is
/// changed, and the session still runs.
fn warn_of_owner(mesh: &check::Mesh) {
    if let Some(owner) = &mesh.owner {
        eprintln!(
            "warning: the mesh config {} is managed by {owner}, which may put it back while the session runs and so remove the session's access-log provider (the access logs would stop); pause its sync for the session if you can",
            mesh.config
        );
    }
}

fn print_mesh(mesh: &check::Mesh) {
    println!(
        "istio: {} (revision {}), mesh config {}, Telemetry {}, WasmPlugin v1alpha1, cluster domain {}",
        mesh.version.as_deref().unwrap_or("version unknown"),
        mesh.revision,
        mesh.config,
        mesh.telemetry_version.as_str(),
        mesh.cluster_domain
            .as_deref()
            .unwrap_or("cluster.local (assumed: istiod's Deployment is not readable)")
    );
}

pub fn cleanup(args: CleanupArgs, cluster: ClusterArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let (client, _) = connect(&cluster).await?;
        let which = match args.which.session {
            Some(session) => Which::Session(session),
            None => Which::Leftovers,
        };
        let configs = cleanup::mesh_configs(&client, &cluster.istio_namespace).await?;
        let report =
            cleanup::cleanup(&client, &which, &Reach::Cluster, &configs, Timestamp::now()).await?;
        for change in &report.removed {
            println!("removed {change}");
        }
        for session in &report.live {
            println!(
                "left session {session} alone: its CLI is still running \
                 (end it there, or `kubectl apitrace cleanup --session {session}`)"
            );
        }
        if report.removed.is_empty() && report.live.is_empty() {
            println!("nothing to remove");
        }
        for (change, error) in &report.failed {
            eprintln!("could not remove {change}: {error}");
        }
        Ok(if report.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// `kubectl apitrace version`: this CLI, the probe image it would run, and
/// (unless `--client`) the probes of sessions running on the cluster. An
/// unreachable cluster is reported, not an error: the CLI's version is still
/// worth printing.
pub fn version(args: VersionArgs, cluster: ClusterArgs) -> anyhow::Result<ExitCode> {
    println!("kubectl-apitrace {}", env!("CARGO_PKG_VERSION"));
    println!("probe image: {}", default_probe_image());
    if args.client {
        return Ok(ExitCode::SUCCESS);
    }
    let probes = runtime()?.block_on(async {
        tokio::time::timeout(VERSION_TIMEOUT, async {
            let (client, _) = connect(&cluster).await?;
            running_probes(&client, &cluster.probe_namespace).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(anyhow!(
                "no answer within {}",
                humantime::format_duration(VERSION_TIMEOUT)
            ))
        })
    });
    match probes {
        Ok(probes) if probes.is_empty() => println!("probes: none running"),
        Ok(probes) => {
            for (pod, node, image) in probes {
                println!("probe {pod} on {node}: {image}");
            }
        }
        Err(error) => println!("probes: cluster not reachable ({error:#})"),
    }
    Ok(ExitCode::SUCCESS)
}

const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// (pod, node, image) of every probe pod of a running session.
async fn running_probes(
    client: &Client,
    namespace: &str,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let params = kube::api::ListParams::default().labels(&names::probes_selector());
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&params)
        .await
        .with_context(|| format!("listing probe pods in {namespace}"))?;
    Ok(pods
        .items
        .into_iter()
        .map(|pod| {
            let spec = pod.spec.unwrap_or_default();
            (
                pod.metadata.name.unwrap_or_default(),
                spec.node_name.unwrap_or_default(),
                spec.containers
                    .into_iter()
                    .next()
                    .and_then(|container| container.image)
                    .unwrap_or_default(),
            )
        })
        .collect())
}
