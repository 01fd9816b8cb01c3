//! `buildopt build`: hash, ask the registry which inputs already have a complete image, point requested tags at
//! those, and build the rest through BuildKit in dependency order (independent ones in parallel).
//!
//! The promise is that a skipped service is exactly what a fresh build would produce and that the report says what
//! happened in the registry. So: BuildKit pushes by digest only and buildopt writes every tag itself; the content
//! tag only after checking that the session sent exactly the hashed inputs (and never over a complete image another
//! build of the same inputs tagged first); requested tags only after that; each tag write is recorded before it is
//! sent and read back at the end, also after a failure, SIGINT or SIGTERM.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rayon::prelude::*;
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use super::{
    CACHE_DIR, Context as _, Error, ExitStatus, RegistrySetup, hash_in_background, hashed,
    registry_setup, select,
};
use crate::auth::Keychain;
use crate::buildkit::ExporterSpec;
use crate::buildkit::dockerfile::{Dependency, LocalImage};
use crate::buildkit::dockerfile::{DockerfileSolve, NETWORK_HOST, NetworkMode};
use crate::buildkit::fleet::{Acquired, BuilderSpec, Fleet, Lease, NoBuilder};
use crate::buildkit::{Client, RpcError};
use crate::cli::args::{BuildArgs, CacheMode};
use crate::config::{Output, OutputKind};
use crate::config::{Registry, Service, Workspace};
use crate::digest::Digest;
use crate::error::one_line;
use crate::hash::{ChangedDuringBuild, ServiceInputs};
use crate::plan::{Decision, ServicePlan, plan_remote};
use crate::printer::Printer;
use crate::progress::{Progress, ProgressMode, ServiceProgress};
use crate::registry::promote::{
    Claim, ClaimError, TagLedger, TagMove, claim_content_tag, move_tags,
};
use crate::registry::verify::Verifier;
use crate::registry::{RegistryError, content_tag};
use crate::report::{BuildReport, Location, ServiceReport, Status, TransferSummary};
use crate::session::{
    LOCAL_CONTEXT, LOCAL_DOCKERFILE, MissingSecret, Session, SessionError, Sink, SshAgents,
    SshError, new_id,
};
use crate::state::StateStore;

/// How long the status stream may keep draining after the solve returned.
const STATUS_DRAIN: Duration = Duration::from_secs(5);
/// How long reading the tags back may take at the end of a run (an interrupted run must still end promptly).
const READ_BACK: Duration = Duration::from_secs(5);
/// The exporter response key of a registry cache export that ran.
const CACHE_MANIFEST: &str = "cache.manifest";

/// Why one service failed.
#[derive(Debug, thiserror::Error)]
enum ServiceError {
    /// No builder could be reached (at the start of the run), or every one was lost during it.
    #[error(transparent)]
    Connect(Unplaced),
    /// The solve failed (a step, the frontend, a push).
    #[error("{}{}{}", .source, entitlement_hint(.source), missing_secrets(.missing))]
    Solve {
        /// The daemon's error.
        source: RpcError,
        /// The secrets it names that the session did not have, and where buildopt looked.
        missing: Vec<MissingSecret>,
    },
    /// An SSH agent to forward is not there.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// The connection to the daemon dropped mid-build.
    #[error(
        "lost the connection to BuildKit at {addr} during the build (did the daemon stop or restart?); nothing was tagged"
    )]
    DaemonLost {
        /// The daemon.
        addr: String,
        /// What the transport said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The inputs changed while the build ran.
    #[error(transparent)]
    Changed(#[from] ChangedDuringBuild),
    /// The solve succeeded without an image.
    #[error("BuildKit finished without an image digest; nothing was tagged")]
    NoImage,
    /// The content tag could not be written.
    #[error("tagging the image for its inputs failed")]
    Claim(#[source] ClaimError),
    /// A requested tag could not be moved.
    #[error("moving the requested tags failed")]
    Tags(#[source] RegistryError),
    /// The task of this service died.
    #[error(
        "the task of this service stopped unexpectedly ({0}); tags it moved are listed as read back"
    )]
    Panicked(String),
    /// A dependency failed.
    #[error("dependency `{0}` failed")]
    Dependency(String),
    /// The run was stopped before this service finished.
    #[error("stopped before it finished")]
    Interrupted,
    /// An output (`--output`, `outputs`) was not written.
    #[error("output: {0}")]
    Output(String),
}

impl ServiceError {
    /// Where in `svc`'s Dockerfile the failure is, when BuildKit named a line of it.
    fn location(&self, svc: &Service) -> Option<Location> {
        let ServiceError::Solve { source, .. } = self else {
            return None;
        };
        let at = source.location()?;
        let name = svc.dockerfile.file_name()?.to_string_lossy();
        (at.filename == name).then(|| Location {
            file: svc.dockerfile.clone(),
            line: at.line,
            end_line: at.end_line,
        })
    }
}

/// How the daemon can be told to allow `RUN` on the host network, when that is what it refused.
fn entitlement_hint(e: &RpcError) -> &'static str {
    let text = e.to_string();
    if text.contains(NETWORK_HOST) && (text.contains("not allowed") || text.contains("entitlement"))
    {
        "; the daemon does not allow RUN steps on the host network: start buildkitd with `--allow-insecure-entitlement network.host` (dockerd: `\"builder\": {\"entitlements\": {\"network-host\": true}}` in daemon.json), or build with the daemon's default network (`network = \"default\"` under [buildkit], or `--network default`)"
    } else {
        ""
    }
}

/// Why a service got no builder.
#[derive(Debug, Clone, thiserror::Error)]
enum Unplaced {
    /// None answered the probe.
    #[error(transparent)]
    Unreachable(Arc<NoBuilder>),
    /// Every builder was lost during the run.
    #[error(
        "every BuildKit builder of this run was lost during it (see the warnings); nothing was tagged"
    )]
    AllLost,
}

/// Where buildopt looked for the secrets a failed build missed (the daemon only says `secret ID: not found`).
fn missing_secrets(missing: &[MissingSecret]) -> String {
    missing.iter().map(|m| format!("; {m}")).collect()
}

/// How one service ended.
#[derive(Debug)]
enum Outcome {
    /// Built and tagged (when pushing).
    Built {
        image: String,
        adopted: bool,
        tags: Vec<TagMove>,
        warnings: Vec<String>,
        cache_hits: (usize, usize),
        transfers: Vec<TransferSummary>,
        /// The input digest whose content tag it got (None when not pushed).
        tagged_for: Option<Digest>,
        /// Outputs written.
        outputs: Vec<String>,
        /// The image as an OCI layout on this machine, for dependents, when it was not pushed.
        layout: Option<LocalImage>,
        elapsed: Duration,
    },
    /// Its image existed; its tags were pointed at it (and its missing registry cache exported, when asked).
    Skipped {
        image: String,
        tags: Vec<TagMove>,
        warnings: Vec<String>,
        /// Outputs written (from the existing image).
        outputs: Vec<String>,
        elapsed: Duration,
    },
    /// Failed; `image` is the image it was tagging when that failed.
    Failed {
        error: ServiceError,
        image: Option<String>,
        tags: Vec<TagMove>,
        transfers: Vec<TransferSummary>,
        elapsed: Option<Duration>,
    },
}

impl Outcome {
    /// The image dependents build on.
    fn usable_image(&self) -> Option<&str> {
        match self {
            Outcome::Built { image, .. } | Outcome::Skipped { image, .. } => Some(image),
            Outcome::Failed { .. } => None,
        }
    }

    /// Where that image is when it was not pushed.
    fn layout(&self) -> Option<&LocalImage> {
        match self {
            Outcome::Built { layout, .. } => layout.as_ref(),
            _ => None,
        }
    }
}

/// One service through the run.
struct ServiceRun {
    service: Service,
    inputs: Arc<ServiceInputs>,
    plan: ServicePlan,
    outcome: Option<Outcome>,
    /// Where it was built (or its outputs or cache made), when a builder was used.
    builder: Option<String>,
    /// What happened on the way there (a lost builder, a retry).
    notes: Vec<String>,
}

/// What every service of a run shares.
struct RunContext {
    registry: Registry,
    push: bool,
    force: bool,
    cache_to: bool,
    cache_from: CacheImports,
    network: NetworkMode,
    no_cache: bool,
    keychain: Arc<dyn Keychain>,
    verifier: Verifier,
    ledger: TagLedger,
    own: Vec<PathBuf>,
    progress: Progress,
    /// `--output`s, for every service (dest absolute, may hold `{service}`).
    outputs: Vec<Output>,
    /// Services another selected service depends on: without pushing, they are also kept as OCI layouts.
    dependencies: std::collections::HashSet<String>,
    /// buildopt's cache directory (`.build-cache`).
    cache_dir: PathBuf,
    /// `--load`: the Docker Engine's socket.
    load: Option<PathBuf>,
    /// How many builders the run is configured with.
    builders: usize,
}

impl RunContext {
    /// Every output of `svc`: its own, then the run's.
    fn outputs_of(&self, svc: &Service) -> Vec<Output> {
        let mut outputs: Vec<Output> = svc.outputs.iter().chain(&self.outputs).cloned().collect();
        if self.load.is_some() {
            let names: Vec<String> = svc
                .tags
                .iter()
                .map(|t| self.registry.reference(&svc.image, t))
                .collect();
            outputs.push(Output {
                kind: OutputKind::Docker,
                dest: self.load_tar(svc).to_string_lossy().into_owned(),
                attrs: [("name".to_owned(), names.join(","))].into(),
            });
        }
        outputs
    }

    /// Where the `--load` tarball of `svc` is received.
    fn load_tar(&self, svc: &Service) -> PathBuf {
        self.cache_dir
            .join("load")
            .join(format!("{}.tar", Digest::of(svc.name.as_bytes()).short()))
    }

    /// Whether a skipped `svc` still needs a solve: its registry cache is missing, or it has outputs.
    fn skip_needs_daemon(&self, svc: &Service, plan: &ServicePlan) -> bool {
        (plan.export_cache && self.cache_to && self.push) || !self.outputs_of(svc).is_empty()
    }
}

/// The `--output`s of a run, checked before anything is built: they parse, they name each service's own
/// destination when several are built, no two services write the same place, and their directories are there.
fn prepare_outputs(args: &BuildArgs, services: &[Service]) -> Result<Vec<Output>, Error> {
    let cwd = std::env::current_dir()?;
    let mut outputs = Vec::new();
    for spec in &args.output {
        let o: Output = spec
            .parse()
            .map_err(|m| Error::usage(format!("--output `{spec}`: {m}")))?;
        if services.len() > 1 && !o.dest.contains(crate::config::output::SERVICE_PLACEHOLDER) {
            return Err(Error::usage(format!(
                "--output `{spec}`: {} services are built; put `{}` in dest so that each writes its own (e.g. dest=out/{}.tar)",
                services.len(),
                crate::config::output::SERVICE_PLACEHOLDER,
                crate::config::output::SERVICE_PLACEHOLDER
            )));
        }
        outputs.push(o.resolved(&cwd));
    }
    let mut seen: HashMap<PathBuf, &str> = HashMap::new();
    for svc in services {
        for o in svc.outputs.iter().chain(&outputs) {
            let dest = o.dest_for(&svc.name, Path::new("/"));
            if let Some(other) = seen.insert(dest.clone(), &svc.name) {
                return Err(Error::usage(format!(
                    "services `{other}` and `{}` would both write {}; give each its own dest",
                    svc.name,
                    dest.display()
                )));
            }
            let dir = match o.kind {
                OutputKind::Local => Some(dest.as_path()),
                _ => dest.parent(),
            };
            if let Some(dir) = dir {
                fs_err::create_dir_all(dir).map_err(|e| {
                    Error::usage(format!(
                        "output of `{}`: {e}; choose another dest",
                        svc.name
                    ))
                })?;
            }
        }
    }
    Ok(outputs)
}

pub(super) fn run(
    ws: &Workspace,
    args: &BuildArgs,
    printer: Printer,
    progress: ProgressMode,
) -> Result<ExitStatus, Error> {
    let Some(registry) = ws.registry.clone() else {
        return Err(Error::usage(format!(
            "{}: `buildopt build` needs a [registry] with a `url`",
            ws.config_path.display()
        )));
    };
    // Outputs are checked before anything is built or moved.
    let metadata = args
        .metadata_file
        .as_deref()
        .map(OutputFile::prepare)
        .transpose()?;
    let github = crate::ci::GitHub::from_env();
    // The output files of this run are never part of a context.
    let hidden: Vec<PathBuf> = metadata.iter().map(|m| super::own_path(&m.path)).collect();
    let started = Instant::now();
    let services: Vec<Service> = select(ws, &args.services)?.into_iter().cloned().collect();
    let outputs = prepare_outputs(args, &services)?;
    let load = if args.load {
        let sock = super::daemon::docker_engine(&args.daemon, ws)?;
        fs_err::create_dir_all(ws.root.join(CACHE_DIR).join("load"))?;
        Some(sock)
    } else {
        None
    };
    // Only read here (an address that does not parse is a usage error before anything is done); the builders are
    // probed when something is to be built.
    let builders = super::daemon::builders(&args.daemon, Some(ws))?;
    let refs: Vec<&Service> = services.iter().collect();
    let network = match args.network {
        Some(n) => n,
        None => ws
            .buildkit_network
            .as_deref()
            .and_then(NetworkMode::parse)
            .unwrap_or_default(),
    };
    let push = !args.no_push;
    let store = StateStore::new(&ws.root.join(CACHE_DIR));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = std::thread::scope(|scope| {
        let (hashes, hashing) = hash_in_background(scope, ws, &refs, &hidden);
        runtime.block_on(async {
            // While the services are hashed: the credentials, then each service's registry lookups as soon as it is
            // hashed. A failure of the hashing is reported before one of the registry.
            let setup = registry_setup(
                &registry,
                args.ecr_endpoint.as_deref(),
                &refs,
                push,
                printer,
            )
            .await;
            let RegistrySetup { keychain, verifier } = match setup {
                Ok(setup) => setup,
                Err(e) => {
                    drop(hashes);
                    hashed(hashing)?;
                    return Err(e);
                }
            };
            let check_cache = push && args.cache_to == CacheMode::Registry;
            let plans = plan_remote(
                &verifier,
                &refs,
                tokio_stream::wrappers::UnboundedReceiverStream::new(hashes),
                &store,
                check_cache,
                args.force,
            )
            .await;
            // The hashing is over: its channel closed.
            let inputs = hashed(hashing)?;
            let plans = plans.context("asking the registry which inputs already have an image")?;
            let mut runs: Vec<ServiceRun> = services
                .iter()
                .zip(inputs)
                .zip(plans)
                .map(|((service, inputs), plan)| ServiceRun {
                    service: service.clone(),
                    inputs,
                    plan: plan.expect("every service hashed has a plan"),
                    outcome: None,
                    builder: None,
                    notes: Vec::new(),
                })
                .collect();
            let ctx = Arc::new(RunContext {
                registry: registry.clone(),
                push,
                force: args.force,
                cache_to: args.cache_to == CacheMode::Registry,
                cache_from: CacheImports::parse(&args.cache_from)?,
                network,
                no_cache: args.no_cache,
                keychain,
                verifier,
                ledger: TagLedger::default(),
                own: super::own_dirs(ws)
                    .into_iter()
                    .chain(hidden.iter().cloned())
                    .collect(),
                progress: Progress::new(progress, printer),
                outputs,
                dependencies: services
                    .iter()
                    .flat_map(|s| s.depends_on.iter().cloned())
                    .collect(),
                cache_dir: ws.root.join(CACHE_DIR),
                load,
                builders: builders.len(),
            });
            let planned = report_of(&ctx, &runs, None, None, &HashMap::new());
            if args.dry_run {
                // Like `plan`: the decisions are the result.
                planned.write_plan(&mut printer.stdout())?;
                return Ok::<_, Error>((planned, Vec::new()));
            }
            planned.write_plan(&mut printer.stderr())?;
            ctx.progress.decisions(&planned);
            let interrupted = tokio::select! {
                () = execute(&ctx, &builders, &mut runs, usize::from(args.jobs)) => None,
                signal = interrupt() => Some(signal),
            };
            // Whatever happened, the tags this run tried to move are read back from the registry (all at once: after
            // an interrupt this must not take long).
            let (client, ledger) = (ctx.verifier.client(), &ctx.ledger);
            let reads = runs
                .iter()
                .map(|r| r.service.name.as_str())
                .filter(|name| ledger.touched(name))
                .map(|name| async move {
                    (
                        name.to_owned(),
                        ledger.read_back(client, name, READ_BACK).await,
                    )
                });
            let read_back: HashMap<_, _> =
                futures::future::join_all(reads).await.into_iter().collect();
            let report = report_of(
                &ctx,
                &runs,
                interrupted,
                Some(started.elapsed()),
                &read_back,
            );
            Ok((
                report,
                runs.into_iter().map(|r| r.inputs).collect::<Vec<_>>(),
            ))
        })
    });
    runtime.shutdown_background();
    let (report, inputs) = report?;
    if args.dry_run {
        return Ok(ExitStatus::Success);
    }
    // The local state (what changed since, for `plan`) of every service that has an image for its inputs; on a
    // fresh clone that is a file per service listing every entry, written on every core (issue 12).
    report
        .services
        .par_iter()
        .zip(&inputs)
        .for_each(|(s, inputs)| {
            if matches!(s.status, Status::Built | Status::Skipped | Status::Promoted)
                && let Err(e) = store.record(&s.service, inputs)
            {
                tracing::warn!("could not record the local state of `{}`: {e}", s.service);
            }
        });
    // The summary is the result of a build: written under --quiet too.
    report.write_summary(&mut printer.errors())?;
    Progress::new(progress, printer).summary(&report);
    if let Some(file) = metadata {
        file.write(&serde_json::to_vec_pretty(&report.metadata())?)?;
    }
    if let Err(e) = github.write(&report, &mut printer.errors()) {
        tracing::warn!("could not write the GitHub Actions outputs: {e}");
    }
    // `--deploy`: what this run changed goes to ECS; without it, the lines that say what would.
    let deployed = super::deploy::after_build(ws, &registry, &report, args, printer)?;
    Ok(if report.succeeded() && deployed {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}

/// Waits for SIGINT or SIGTERM and names it. Both stop the run the same way.
async fn interrupt() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let term = async {
        match &mut term {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        () = term => "SIGTERM",
    }
}

/// The report of the runs so far.
fn report_of(
    ctx: &RunContext,
    runs: &[ServiceRun],
    interrupted: Option<&'static str>,
    duration: Option<Duration>,
    read_back: &HashMap<String, Vec<crate::registry::promote::ReadBack>>,
) -> BuildReport {
    let services = runs
        .iter()
        .map(|run| {
            let svc = &run.service;
            let content = ctx.push.then(|| {
                ctx.registry
                    .reference(&svc.image, &content_tag(&run.inputs.digest))
            });
            let mut report = ServiceReport::planned(
                &run.plan,
                format!("{}/{}", ctx.registry.url, svc.image),
                content,
            );
            let back = read_back
                .get(&svc.name)
                .map(Vec::as_slice)
                .unwrap_or_default();
            match &run.outcome {
                None if duration.is_none() => {}
                None => {
                    report.status = Status::Interrupted;
                    report.error = Some(ServiceError::Interrupted.to_string());
                    report.set_tags(&[], back);
                }
                Some(Outcome::Built {
                    image,
                    adopted,
                    tags,
                    warnings,
                    cache_hits,
                    transfers,
                    tagged_for,
                    outputs,
                    elapsed,
                    ..
                }) => {
                    report.outputs.clone_from(outputs);
                    report.status = Status::Built;
                    if let Some(d) = tagged_for {
                        report.content_tag =
                            Some(ctx.registry.reference(&svc.image, &content_tag(d)));
                    }
                    report.transfers.clone_from(transfers);
                    report.image = Some(image.clone());
                    report.adopted = *adopted;
                    report.set_tags(tags, back);
                    report.warnings.clone_from(warnings);
                    report.cache_hits = Some(*cache_hits);
                    report.duration = Some(*elapsed);
                }
                Some(Outcome::Skipped {
                    image,
                    tags,
                    warnings,
                    outputs,
                    elapsed,
                }) => {
                    report.outputs.clone_from(outputs);
                    report.set_tags(tags, back);
                    report.warnings.clone_from(warnings);
                    report.status = if report.tags.iter().any(|t| t.state == "moved") {
                        Status::Promoted
                    } else {
                        Status::Skipped
                    };
                    report.image = Some(image.clone());
                    report.duration = Some(*elapsed);
                }
                Some(Outcome::Failed {
                    error,
                    image,
                    tags,
                    transfers,
                    elapsed,
                }) => {
                    report.transfers.clone_from(transfers);
                    report.status = Status::Failed;
                    report.error = Some(one_line(error));
                    report.location = error.location(svc);
                    report.image.clone_from(image);
                    report.set_tags(tags, back);
                    report.duration = *elapsed;
                }
            }
            report.builder.clone_from(&run.builder);
            report.warnings.extend(run.notes.iter().cloned());
            report
        })
        .collect();
    BuildReport {
        services,
        interrupted,
        duration,
        builders: ctx.builders,
    }
}

/// What a finished task hands back: the service, how it ended, and where it was built.
type Finished = (usize, Outcome, Option<Placed>);

/// Which builder a service ended on.
struct Placed {
    builder: String,
    /// The builder lost during its first attempt, when it was retried.
    retried_from: Option<String>,
}

/// Whether `outcome` is a build whose builder went away mid-solve (the one failure retried on another builder).
fn daemon_lost(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Failed {
            error: ServiceError::DaemonLost { .. },
            ..
        }
    )
}

/// Runs `attempt` on the leased builder, and once more on the next in `service`'s ranking when that builder is
/// lost mid-solve (nothing of the lost attempt was tagged: a lost daemon fails the solve, before any tag).
async fn on_builder<Fut: std::future::Future<Output = Outcome>>(
    ctx: &RunContext,
    fleet: &Arc<Fleet>,
    lease: Lease,
    service: &str,
    attempt: impl FnMut(Client) -> Fut,
) -> (Outcome, Placed) {
    let retrying = |lost: &str, next: &str| {
        ctx.progress.warning(&format!(
            "{service}: builder {lost} was lost during the build; building it again on {next}"
        ));
    };
    let attempted = fleet
        .with_failover(lease, service, attempt, daemon_lost, retrying)
        .await;
    let placed = Placed {
        builder: attempted.builder,
        retried_from: attempted.retried_from,
    };
    (attempted.result, placed)
}

/// The run's builders, probed (in parallel, once) the first time a service needs one; each unreachable builder is a
/// warning, and the run goes on with the others.
type FleetCell = OnceCell<Result<Arc<Fleet>, Arc<NoBuilder>>>;

/// Where service `name` can be built now.
enum Placement {
    /// On this builder.
    On(Arc<Fleet>, Lease),
    /// Every usable builder is at its `max_parallel`: wait for a build to end.
    Busy,
    /// Nowhere.
    Nowhere(Unplaced),
}

async fn place(ctx: &RunContext, cell: &FleetCell, specs: &[BuilderSpec], name: &str) -> Placement {
    let fleet = cell
        .get_or_init(|| async {
            match Fleet::probe(specs).await {
                Ok((fleet, skipped)) => {
                    for e in skipped {
                        ctx.progress.warning(&format!(
                            "builder skipped, its services go to the others: {}",
                            one_line(&e)
                        ));
                    }
                    Ok(Arc::new(fleet))
                }
                Err(e) => Err(Arc::new(e)),
            }
        })
        .await;
    match fleet {
        Err(e) => Placement::Nowhere(Unplaced::Unreachable(e.clone())),
        Ok(fleet) => match fleet.try_acquire(name, &[]) {
            Acquired::Lease(lease) => {
                tracing::debug!("service `{name}`: building on {}", lease.name());
                Placement::On(fleet.clone(), lease)
            }
            Acquired::Busy => Placement::Busy,
            Acquired::NoneLeft => Placement::Nowhere(Unplaced::AllLost),
        },
    }
}

/// Carries out the plan: skipped services get their tags pointed at their image, the rest are built once their
/// dependencies have an image (at most `jobs` builds at a time, each on its builder of the fleet, see
/// [`crate::buildkit::fleet`]), probing the builders only if something is to be built. Outcomes are written into
/// `runs` as they come, so an interrupt (which drops this future and with it every task) leaves the finished ones
/// in place.
async fn execute(
    ctx: &Arc<RunContext>,
    specs: &[BuilderSpec],
    runs: &mut [ServiceRun],
    jobs: usize,
) {
    let mut tasks: JoinSet<Finished> = JoinSet::new();
    let mut task_of: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut started = vec![false; runs.len()];
    let mut building = 0;
    let fleet: FleetCell = OnceCell::new();
    loop {
        // Dependents of failed services fail too, without building.
        for i in 0..runs.len() {
            if started[i] || runs[i].outcome.is_some() {
                continue;
            }
            let failed = runs[i].service.depends_on.iter().find(|d| {
                runs.iter().any(|r| {
                    &r.service.name == *d && matches!(r.outcome, Some(Outcome::Failed { .. }))
                })
            });
            if let Some(dep) = failed {
                let outcome = Outcome::Failed {
                    error: ServiceError::Dependency(dep.clone()),
                    image: None,
                    tags: Vec::new(),
                    transfers: Vec::new(),
                    elapsed: None,
                };
                settle(ctx, runs, i, outcome);
            }
        }
        for i in 0..runs.len() {
            if started[i] || runs[i].outcome.is_some() {
                continue;
            }
            let deps: Option<Vec<Dependency>> = runs[i]
                .service
                .depends_on
                .iter()
                .map(|d| {
                    let dep = runs.iter().find(|r| &r.service.name == d)?;
                    let outcome = dep.outcome.as_ref()?;
                    Some(Dependency {
                        service: dep.service.clone(),
                        image: outcome.usable_image()?.to_owned(),
                        layout: outcome.layout().cloned(),
                    })
                })
                .collect();
            let Some(deps) = deps else { continue };
            let export_cache = ctx.skip_needs_daemon(&runs[i].service, &runs[i].plan);
            match &runs[i].plan.decision {
                Decision::Skip { image } if export_cache && building < jobs => {
                    let placement = place(ctx, &fleet, specs, &runs[i].service.name).await;
                    if matches!(placement, Placement::Busy) {
                        continue;
                    }
                    started[i] = true;
                    building += 1;
                    let (ctx, run) = (ctx.clone(), &runs[i]);
                    let (svc, inputs, image, plan) = (
                        run.service.clone(),
                        run.inputs.clone(),
                        image.clone(),
                        run.plan.clone(),
                    );
                    let id = tasks
                        .spawn(async move {
                            let (ctx, svc, inputs, deps, plan) =
                                (&ctx, &svc, &inputs, &deps, &plan);
                            let (fleet, lease) = match placement {
                                Placement::On(fleet, lease) => (fleet, lease),
                                Placement::Nowhere(e) => {
                                    let outcome = skip_with_solves(
                                        ctx,
                                        Err(e),
                                        svc,
                                        inputs,
                                        deps,
                                        image,
                                        plan,
                                    )
                                    .await;
                                    return (i, outcome, None);
                                }
                                Placement::Busy => unreachable!("not started when busy"),
                            };
                            let (outcome, placed) =
                                on_builder(ctx, &fleet, lease, &svc.name, |client| {
                                    let image = image.clone();
                                    async move {
                                        skip_with_solves(
                                            ctx,
                                            Ok(client),
                                            svc,
                                            inputs,
                                            deps,
                                            image,
                                            plan,
                                        )
                                        .await
                                    }
                                })
                                .await;
                            (i, outcome, Some(placed))
                        })
                        .id();
                    task_of.insert(id, i);
                }
                Decision::Skip { .. } if export_cache => {}
                Decision::Skip { image } => {
                    started[i] = true;
                    let (ctx, svc, image) = (ctx.clone(), runs[i].service.clone(), image.clone());
                    let id = tasks
                        .spawn(async move { (i, promote(&ctx, &svc, image).await, None) })
                        .id();
                    task_of.insert(id, i);
                }
                Decision::Build | Decision::Unchanged if building < jobs => {
                    let (fleet, lease) =
                        match place(ctx, &fleet, specs, &runs[i].service.name).await {
                            Placement::On(fleet, lease) => (fleet, lease),
                            Placement::Busy => continue,
                            Placement::Nowhere(e) => {
                                started[i] = true;
                                let outcome = Outcome::Failed {
                                    error: ServiceError::Connect(e),
                                    image: None,
                                    tags: Vec::new(),
                                    transfers: Vec::new(),
                                    elapsed: None,
                                };
                                settle(ctx, runs, i, outcome);
                                continue;
                            }
                        };
                    started[i] = true;
                    building += 1;
                    let (ctx, run) = (ctx.clone(), &runs[i]);
                    let (svc, inputs) = (run.service.clone(), run.inputs.clone());
                    let id = tasks
                        .spawn(async move {
                            let (ctx, svc, inputs, deps) = (&ctx, &svc, &inputs, &deps);
                            let (outcome, placed) =
                                on_builder(ctx, &fleet, lease, &svc.name, |client| async move {
                                    let progress = ctx.progress.service(&svc.name);
                                    build(ctx, &client, svc, inputs, deps, progress).await
                                })
                                .await;
                            (i, outcome, Some(placed))
                        })
                        .id();
                    task_of.insert(id, i);
                }
                Decision::Build | Decision::Unchanged => {}
            }
        }
        let Some(joined) = tasks.join_next_with_id().await else {
            // Nothing runs, and nothing more can start (the rest failed or waits on what failed).
            break;
        };
        let (i, outcome, placed) = match joined {
            Ok((_, finished)) => finished,
            Err(e) => {
                let i = task_of[&e.id()];
                let why = if e.is_panic() {
                    panic_message(e.into_panic())
                } else {
                    "cancelled".to_owned()
                };
                let outcome = Outcome::Failed {
                    error: ServiceError::Panicked(why),
                    image: None,
                    tags: Vec::new(),
                    transfers: Vec::new(),
                    elapsed: None,
                };
                (i, outcome, None)
            }
        };
        if matches!(runs[i].plan.decision, Decision::Build | Decision::Unchanged)
            || ctx.skip_needs_daemon(&runs[i].service, &runs[i].plan)
        {
            building -= 1;
        }
        if let Some(placed) = placed {
            if let Some(from) = &placed.retried_from {
                let note = format!(
                    "builder {from} was lost during the build; nothing from that attempt was tagged, and it ran again on {}",
                    placed.builder
                );
                runs[i].notes.push(note);
            }
            runs[i].builder = Some(placed.builder);
        }
        settle(ctx, runs, i, outcome);
    }
}

/// Records how service `i` ended, and says so (`--progress json`).
fn settle(ctx: &RunContext, runs: &mut [ServiceRun], i: usize, outcome: Outcome) {
    runs[i].outcome = Some(outcome);
    let one = report_of(
        ctx,
        std::slice::from_ref(&runs[i]),
        None,
        Some(Duration::ZERO),
        &HashMap::new(),
    );
    if let Some(s) = one.services.first() {
        ctx.progress.outcome(s);
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_owned())
}

/// A skipped service: point its requested tags at its image.
async fn promote(ctx: &RunContext, svc: &Service, image: String) -> Outcome {
    let started = Instant::now();
    if !ctx.push {
        return Outcome::Skipped {
            image,
            tags: Vec::new(),
            warnings: Vec::new(),
            outputs: Vec::new(),
            elapsed: started.elapsed(),
        };
    }
    let (tags, failure) = move_requested_tags(ctx, svc, &image).await;
    match failure {
        None => Outcome::Skipped {
            image,
            tags,
            warnings: Vec::new(),
            outputs: Vec::new(),
            elapsed: started.elapsed(),
        },
        Some(e) => Outcome::Failed {
            error: ServiceError::Tags(e),
            image: Some(image),
            tags,
            transfers: Vec::new(),
            elapsed: Some(started.elapsed()),
        },
    }
}

/// A skipped service that still needs the daemon: its outputs are written from its existing image (before any tag
/// moves, so a failed output moves nothing), its tags pointed at the image, then a missing registry cache is
/// exported by a solve that produces no image (BuildKit runs the steps it has no cache for; nothing is pushed or
/// tagged). A failed cache export is a warning: the skip itself is right either way.
async fn skip_with_solves(
    ctx: &RunContext,
    client: Result<Client, Unplaced>,
    svc: &Service,
    inputs: &ServiceInputs,
    deps: &[Dependency],
    image: String,
    plan: &ServicePlan,
) -> Outcome {
    let started = Instant::now();
    let mut written = Vec::new();
    if !ctx.outputs_of(svc).is_empty() {
        let made = match &client {
            Err(e) => Err(ServiceError::Connect(e.clone())),
            Ok(client) => {
                let progress = ctx.progress.service(&svc.name);
                let kind = SolveKind::Materialize(image.clone());
                solve(ctx, client, svc, inputs, deps, kind, progress)
                    .await
                    .0
            }
        };
        match made {
            Ok(solved) => written = solved.outputs,
            Err(error) => {
                return Outcome::Failed {
                    error,
                    image: Some(image),
                    tags: Vec::new(),
                    transfers: Vec::new(),
                    elapsed: Some(started.elapsed()),
                };
            }
        }
    }
    let outcome = promote(ctx, svc, image).await;
    let Outcome::Skipped {
        image,
        tags,
        mut warnings,
        elapsed,
        ..
    } = outcome
    else {
        return outcome;
    };
    if plan.export_cache && ctx.cache_to && ctx.push {
        let cache_ref = ctx.registry.reference(&svc.image, &svc.cache_tag);
        let exported = match client {
            Err(e) => Err(ServiceError::Connect(e)),
            Ok(client) => {
                let progress = ctx.progress.service(&svc.name);
                solve(
                    ctx,
                    &client,
                    svc,
                    inputs,
                    deps,
                    SolveKind::CacheOnly,
                    progress,
                )
                .await
                .0
            }
        };
        match exported {
            Ok(solved) => warnings.extend(solved.warnings),
            Err(e) => warnings.push(format!(
                "exporting the missing registry cache to {cache_ref} failed: {}; the image was skipped and tagged all the same",
                one_line(&e)
            )),
        }
    }
    Outcome::Skipped {
        image,
        tags,
        warnings,
        outputs: written,
        elapsed: elapsed.max(started.elapsed()),
    }
}

async fn move_requested_tags(
    ctx: &RunContext,
    svc: &Service,
    image: &str,
) -> (Vec<TagMove>, Option<RegistryError>) {
    let client = ctx.verifier.client();
    let on_move = |tag: &str, from: Option<&str>| {
        let reference = client.reference(&svc.image, tag);
        ctx.progress.tag_moved(&svc.name, &reference, image, from);
    };
    move_tags(
        client,
        &ctx.ledger,
        &svc.name,
        &svc.image,
        &svc.tags,
        image,
        &on_move,
    )
    .await
}

/// Which registry caches a run imports: `--cache-from` refs first, then (unless `none`) each service's `cache_from`.
#[derive(Debug, Clone, Default)]
struct CacheImports {
    /// Import the services' own `cache_from`.
    configured: bool,
    /// Refs or tags given with `--cache-from`.
    extra: Vec<String>,
}

impl CacheImports {
    fn parse(values: &[String]) -> Result<CacheImports, Error> {
        let mut imports = CacheImports::default();
        for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
            match v {
                "none" if values.len() > 1 => {
                    return Err(Error::usage(
                        "--cache-from none imports nothing; do not combine it with other --cache-from values",
                    ));
                }
                "none" => {}
                "registry" => imports.configured = true,
                other => {
                    crate::config::validate_cache_ref(other)
                        .map_err(|m| Error::usage(format!("--cache-from: {m}")))?;
                    imports.extra.push(other.to_owned());
                }
            }
        }
        Ok(imports)
    }

    /// The caches of `svc` to import, as whole references: only those that exist (a missing one is normal on a
    /// first build or a new branch, and BuildKit would report it as a failed step). Looked up in parallel.
    async fn existing(
        &self,
        client: &crate::registry::RegistryClient,
        svc: &Service,
    ) -> Vec<String> {
        let own: &[String] = if self.configured {
            &svc.cache_from
        } else {
            &[]
        };
        let mut refs: Vec<String> = Vec::new();
        for r in self.extra.iter().chain(own) {
            let full = if r.contains('/') {
                r.clone()
            } else {
                client.reference(&svc.image, r)
            };
            if !refs.contains(&full) {
                refs.push(full);
            }
        }
        let found = futures::future::join_all(refs.iter().map(|r| client.lookup(r))).await;
        refs.into_iter()
            .zip(found)
            .filter(|(_, f)| matches!(f, Ok(Some(_))))
            .map(|(r, _)| r)
            .collect()
    }
}

/// A stable key per machine and context, so the daemon can reuse the previous upload of this context.
fn shared_key(svc: &Service) -> String {
    let machine = std::fs::read("/etc/machine-id").unwrap_or_default();
    let mut h = blake3::Hasher::new();
    h.update(&machine);
    h.update(svc.context.as_os_str().as_encoded_bytes());
    Digest::from(h.finalize()).short()
}

/// Builds one service; when pushing, checks what the session sent, claims the content tag and moves the requested
/// tags.
async fn build(
    ctx: &RunContext,
    client: &Client,
    svc: &Service,
    inputs: &ServiceInputs,
    deps: &[Dependency],
    progress: ServiceProgress,
) -> Outcome {
    let started = Instant::now();
    let (built, transfers) =
        solve(ctx, client, svc, inputs, deps, SolveKind::Image, progress).await;
    let failed = |error: ServiceError, image: Option<String>, tags: Vec<TagMove>| Outcome::Failed {
        error,
        image,
        tags,
        transfers: transfers.clone(),
        elapsed: Some(started.elapsed()),
    };
    let Solved {
        image,
        cache_hits,
        warnings,
        outputs,
        layout,
    } = match built {
        Ok(b) => b,
        Err(e) => return failed(e, None, Vec::new()),
    };
    let Some(image) = image else {
        return failed(ServiceError::NoImage, None, Vec::new());
    };
    if !ctx.push {
        return Outcome::Built {
            image,
            adopted: false,
            tags: Vec::new(),
            warnings,
            cache_hits,
            transfers,
            tagged_for: None,
            outputs,
            layout,
            elapsed: started.elapsed(),
        };
    }
    // The content tag of the predicted inputs only when BuildKit asked for exactly what was predicted; otherwise
    // the image is tagged for the whole context, which covers whatever it read.
    let (tagged_for, mispredicted) = tagged_digest(inputs, &transfers);
    let mut warnings = warnings;
    warnings.extend(mispredicted);
    let claim = claim_content_tag(
        &ctx.verifier,
        &svc.image,
        &content_tag(&tagged_for),
        &image,
        ctx.force,
    )
    .await;
    let (image, adopted) = match claim {
        Ok(Claim::Ours) => (image, false),
        Ok(Claim::Theirs { image: theirs }) => {
            tracing::info!(
                "service `{}`: another build of the same inputs tagged {theirs} first; using it instead of {image}",
                svc.name
            );
            (theirs, true)
        }
        Err(e) => return failed(ServiceError::Claim(e), Some(image), Vec::new()),
    };
    // The input manifest goes beside a fresh image (an adopted one has its builder's), while the tags move.
    let record = async {
        if adopted {
            return None;
        }
        crate::registry::inputs::store_or_warn(ctx.verifier.client(), svc, inputs, &image).await
    };
    let ((tags, failure), unrecorded) = tokio::join!(move_requested_tags(ctx, svc, &image), record);
    warnings.extend(unrecorded);
    if let Some(e) = failure {
        return failed(ServiceError::Tags(e), Some(image), tags);
    }
    Outcome::Built {
        image,
        adopted,
        tags,
        warnings,
        cache_hits,
        transfers,
        tagged_for: Some(tagged_for),
        outputs,
        layout: None,
        elapsed: started.elapsed(),
    }
}

/// Which digest the image of a build may be tagged for: the input digest when every transfer of the main context
/// asked for exactly the paths predicted from the Dockerfile, else the whole context's (with a warning naming what
/// BuildKit asked for). A misprediction costs a rebuild under the narrower digest, never a wrong skip.
fn tagged_digest(
    inputs: &ServiceInputs,
    transfers: &[TransferSummary],
) -> (Digest, Option<String>) {
    let Some(prediction) = &inputs.prediction else {
        return (inputs.digest, None);
    };
    if inputs.digest == inputs.context_digest {
        return (inputs.digest, None);
    }
    // The frontend's own `.dockerignore` fetch is not a read of the build's.
    let main: Vec<&TransferSummary> = transfers
        .iter()
        .filter(|t| t.local == LOCAL_CONTEXT)
        .filter(|t| {
            !(t.followpaths == [".dockerignore"] && t.include.is_empty() && t.exclude.is_empty())
        })
        .collect();
    let asked: Option<&[String]> = main.first().map(|t| t.followpaths.as_slice());
    if main.len() <= 1 && prediction.agrees_with(asked) {
        return (inputs.digest, None);
    }
    let predicted = prediction.followpaths().unwrap_or_default();
    let beyond: Vec<String> = match asked {
        None => Vec::new(),
        Some([]) => vec!["the whole context".to_owned()],
        Some(paths) => paths
            .iter()
            .filter(|p| !predicted.contains(p))
            .map(|p| format!("`{p}`"))
            .collect(),
    };
    let what = if beyond.is_empty() {
        format!(
            "other context paths ({}) than the Dockerfile shows ({})",
            asked
                .map(|a| a.join(", "))
                .unwrap_or_else(|| "none".to_owned()),
            predicted.join(", ")
        )
    } else {
        format!("{}, which the Dockerfile does not show", beyond.join(", "))
    };
    (
        inputs.context_digest,
        Some(format!(
            "BuildKit asked for {what} (an ONBUILD of a base image, a frontend feature buildopt does not know?); the image is tagged for the whole context ({}) instead of for inputs {}, so a change of any file in the context rebuilds it",
            inputs.context_digest.short(),
            inputs.digest.short()
        )),
    )
}

/// What a solve is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SolveKind {
    /// The image (and, when asked, the registry cache and outputs).
    Image,
    /// Only the registry cache, for an image that exists.
    CacheOnly,
    /// Only the outputs, from an image that exists (this digest in the service's repository).
    Materialize(String),
}

/// What a successful solve produced.
struct Solved {
    /// The pushed (or stored) image's digest (None for a cache-only solve).
    image: Option<String>,
    /// (cached, completed) steps.
    cache_hits: (usize, usize),
    /// Problems that did not fail the build.
    warnings: Vec<String>,
    /// Outputs written.
    outputs: Vec<String>,
    /// The image as an OCI layout, when kept for dependents (`--no-push`).
    layout: Option<LocalImage>,
}

/// Runs the solve with its session and status stream. Returns the pushed image's digest, the cache hits and
/// warnings, once the session's transfers have been checked against the hashed inputs.
async fn solve(
    ctx: &RunContext,
    client: &Client,
    svc: &Service,
    inputs: &ServiceInputs,
    deps: &[Dependency],
    kind: SolveKind,
    mut progress: ServiceProgress,
) -> (Result<Solved, ServiceError>, Vec<TransferSummary>) {
    // Outputs follow the image's exporter (when there is one); the session receives each by its index.
    let first = usize::from(kind == SolveKind::Image);
    let (output_exporters, sinks): (Vec<ExporterSpec>, HashMap<String, Sink>) = match kind {
        SolveKind::CacheOnly => (Vec::new(), HashMap::new()),
        _ => {
            let mut exporters = Vec::new();
            let mut sinks = HashMap::new();
            for (i, o) in ctx.outputs_of(svc).iter().enumerate() {
                let dest = o.dest_for(&svc.name, Path::new("/"));
                exporters.push(ExporterSpec {
                    kind: o.kind.name().to_owned(),
                    attrs: o.attrs.clone(),
                });
                let sink = match o.kind {
                    OutputKind::Local => Sink::Directory(dest),
                    _ => Sink::File(dest),
                };
                sinks.insert((first + i).to_string(), sink);
            }
            (exporters, sinks)
        }
    };
    // Without pushing, an image dependents build on comes to this machine as an OCI layout, which their sessions
    // serve to the daemon: nothing is written to the registry.
    let layout_store = (kind == SolveKind::Image
        && !ctx.push
        && ctx.dependencies.contains(&svc.name))
    .then(|| {
        format!(
            "buildopt-{}",
            &Digest::of(svc.name.as_bytes()).to_string()[..16]
        )
    });
    let mut output_exporters = output_exporters;
    let mut sinks = sinks;
    let layout_tar = layout_store.as_ref().map(|store| {
        let tar = ctx.cache_dir.join("oci").join(format!("{store}.tar"));
        sinks.insert(
            (first + output_exporters.len()).to_string(),
            Sink::File(tar.clone()),
        );
        output_exporters.push(ExporterSpec {
            kind: "oci".to_owned(),
            attrs: Default::default(),
        });
        tar
    });
    if let Some(tar) = &layout_tar
        && let Err(e) = fs_err::create_dir_all(tar.parent().unwrap_or(Path::new(".")))
    {
        return (Err(ServiceError::Output(e.to_string())), Vec::new());
    }
    // A materializing solve reads a Dockerfile `FROM IMAGE@DIGEST` from a directory of its own.
    let scratch = match &kind {
        SolveKind::Materialize(image) => {
            let dir = match tempfile::tempdir() {
                Ok(d) => d,
                Err(e) => return (Err(ServiceError::Output(e.to_string())), Vec::new()),
            };
            let from = format!("FROM {}/{}@{image}\n", ctx.registry.url, svc.image);
            if let Err(e) = std::fs::write(dir.path().join("Dockerfile"), from) {
                return (Err(ServiceError::Output(e.to_string())), Vec::new());
            }
            Some(dir)
        }
        _ => None,
    };
    let dirs = match &scratch {
        Some(dir) => HashMap::from([
            (LOCAL_CONTEXT.to_owned(), dir.path().to_owned()),
            (LOCAL_DOCKERFILE.to_owned(), dir.path().to_owned()),
        ]),
        None => {
            let dockerfile_dir: PathBuf = svc
                .dockerfile
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| svc.context.clone());
            let mut dirs = HashMap::from([
                (LOCAL_CONTEXT.to_owned(), svc.context.clone()),
                (LOCAL_DOCKERFILE.to_owned(), dockerfile_dir),
            ]);
            dirs.extend(
                inputs
                    .named
                    .iter()
                    .map(|n| (n.local.clone(), n.dir.clone())),
            );
            dirs
        }
    };
    let stages = std::fs::read(&svc.dockerfile)
        .map(|d| crate::dockerfile::stage_names(&d))
        .unwrap_or_default();
    let stores: HashMap<String, PathBuf> = deps
        .iter()
        .filter_map(|d| d.layout.as_ref())
        .map(|l| (format!("oci:{}", l.store), l.dir.clone()))
        .collect();
    // The agents (and those started for key files) live as long as the session; a materializing solve runs no step.
    let agents = match &scratch {
        Some(_) => SshAgents::default(),
        None => match SshAgents::prepare(&svc.ssh).await {
            Ok(agents) => agents,
            Err(e) => {
                let e = ServiceError::from(e);
                progress.finish(&Err(one_line(&e)));
                return (Err(e), Vec::new());
            }
        },
    };
    let session = Session::new(dirs, ctx.keychain.clone(), shared_key(svc))
        .hide_own(ctx.own.clone())
        .with_outputs(sinks.clone())
        .with_stores(stores)
        .with_secrets(svc.secrets.clone())
        .with_ssh(agents);
    let session_id = session.id().to_owned();
    let spec = if scratch.is_some() {
        crate::buildkit::dockerfile::materialize(new_id(), svc, &output_exporters)
    } else {
        let cache_imports = ctx.cache_from.existing(ctx.verifier.client(), svc).await;
        DockerfileSolve {
            service: svc,
            registry: &ctx.registry,
            push: ctx.push,
            cache_export: ctx.cache_to,
            cache_imports: &cache_imports,
            image: kind == SolveKind::Image,
            network: ctx.network,
            deps,
            stages: &stages,
            outputs: &output_exporters,
            no_cache: ctx.no_cache,
        }
        .spec(new_id())
    };
    let cache_ref = ctx.registry.reference(&svc.image, &svc.cache_tag);

    // The status stream is followed on its own task, owned here; it is dropped if it outlives the build.
    let (seen_tx, seen_rx) = tokio::sync::watch::channel(false);
    let mut status = {
        let client = client.clone();
        let reference = spec.reference.clone();
        tokio::spawn(async move {
            if let Ok(mut stream) = client.status(&reference).await {
                while let Some(Ok(update)) = stream.next().await {
                    let _ = seen_tx.send(true);
                    progress.update(&update);
                }
            }
            progress
        })
    };
    let result = tokio::select! {
        r = client.solve(&spec, &session_id) => r.map_err(|e| solve_error(client, e, &session)),
        r = client.run_session(session.clone()) => Err(session_error(client, r)),
    };
    // A solve that failed before the daemon started the job has no status to wait for (the daemon would hold the
    // stream open for seconds).
    let drain = if result.is_ok() || *seen_rx.borrow() {
        STATUS_DRAIN
    } else {
        Duration::ZERO
    };
    let progress = match tokio::time::timeout(drain, &mut status).await {
        Ok(Ok(p)) => Some(p),
        Ok(Err(_)) => None,
        Err(_) => {
            status.abort();
            None
        }
    };
    let (cache_hits, vertex_errors) = progress
        .as_ref()
        .map(|p| (p.state().cache_hits(), p.state().errors()))
        .unwrap_or_default();
    let checked = result.and_then(|outcome| {
        let image = match &kind {
            SolveKind::Image => {
                let image = outcome
                    .image_digest()
                    .map(str::to_owned)
                    .ok_or(ServiceError::NoImage)?;
                // Hashed = sent: the content tag is only for an image built from exactly the hashed inputs.
                inputs.check_sent(svc, &session.transfers())?;
                Some(image)
            }
            // BuildKit keys its cache by content, so a cache exported from other files than hashed is still right.
            SolveKind::CacheOnly | SolveKind::Materialize(_) => None,
        };
        let mut outputs = check_outputs(&sinks, &session.received())?;
        let layout = match (&layout_store, &layout_tar) {
            (Some(store), Some(tar)) => {
                outputs.retain(|o| o != tar);
                let dir = tar.with_extension("");
                let _ = std::fs::remove_dir_all(&dir);
                let digest = crate::session::unpack_layout(tar, &dir).map_err(|e| {
                    ServiceError::Output(format!("unpacking {}: {e}", tar.display()))
                })?;
                let _ = std::fs::remove_file(tar);
                Some(LocalImage {
                    store: store.clone(),
                    dir,
                    digest,
                })
            }
            _ => None,
        };
        let mut warnings: Vec<String> = session
            .missing_secrets()
            .iter()
            .filter(|m| m.looked.is_some())
            .map(|m| format!("{m}; the step that mounts it ran without it (its mount is optional)"))
            .collect();
        if !spec.cache_exports.is_empty()
            && !outcome.exporter_response.contains_key(CACHE_MANIFEST)
        {
            let why = vertex_errors
                .iter()
                .find(|(name, _)| name.contains("cache"))
                .map(|(_, e)| e.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| "BuildKit reported no cache manifest".to_owned());
            warnings.push(match &kind {
                SolveKind::Image | SolveKind::Materialize(_) => format!(
                    "exporting the registry cache to {cache_ref} failed: {why}; the image was still pushed{}, and the next build will export it without rebuilding the image",
                    if ctx.push { " and tagged" } else { "" }
                ),
                SolveKind::CacheOnly => format!(
                    "exporting the missing registry cache to {cache_ref} failed: {why}; the image was skipped and tagged all the same"
                ),
            });
        }
        Ok((image, warnings, outputs, layout))
    });
    // `--load`: the docker tarball goes into the Docker Engine, and is then removed.
    let checked = match (checked, &ctx.load) {
        (Ok((image, warnings, mut outputs, layout)), Some(sock)) => {
            let tar = ctx.load_tar(svc);
            match outputs.iter().position(|o| *o == tar) {
                None => Ok((image, warnings, outputs, layout)),
                Some(at) => {
                    let loaded = crate::buildkit::conn::docker_load(sock, &tar).await;
                    let _ = std::fs::remove_file(&tar);
                    match loaded {
                        Ok(lines) => {
                            outputs[at] = PathBuf::from(format!(
                                "docker ({}): {}",
                                sock.display(),
                                lines.join("; ")
                            ));
                            Ok((image, warnings, outputs, layout))
                        }
                        Err(e) => Err(ServiceError::Output(format!(
                            "loading into the Docker Engine at {} failed: {e}",
                            sock.display()
                        ))),
                    }
                }
            }
        }
        (checked, _) => checked,
    };
    if let Some(p) = progress {
        p.finish(&checked.as_ref().map(|_| ()).map_err(|e| one_line(e)));
    }
    // What the daemon asked for, also when the build failed (which files it wanted explains many failures).
    let transfers = session
        .transfers()
        .iter()
        .map(TransferSummary::of)
        .collect();
    let solved = checked.map(|(image, warnings, outputs, layout)| Solved {
        image,
        cache_hits,
        warnings,
        outputs: outputs
            .iter()
            .map(|o| o.to_string_lossy().into_owned())
            .collect(),
        layout,
    });
    (solved, transfers)
}

/// Every output arrived whole: the paths written, or the first that did not.
fn check_outputs(
    sinks: &HashMap<String, Sink>,
    received: &[crate::session::Received],
) -> Result<Vec<PathBuf>, ServiceError> {
    let mut ids: Vec<&String> = sinks.keys().collect();
    ids.sort_by_key(|id| id.parse::<usize>().unwrap_or(usize::MAX));
    let mut written = Vec::new();
    for id in ids {
        let (Sink::File(dest) | Sink::Directory(dest)) = &sinks[id];
        match received.iter().find(|r| &r.id == id) {
            Some(r) if r.error.is_none() => written.push(dest.clone()),
            Some(r) => {
                return Err(ServiceError::Output(format!(
                    "writing {} failed: {}",
                    dest.display(),
                    r.error.as_deref().unwrap_or_default()
                )));
            }
            None => {
                return Err(ServiceError::Output(format!(
                    "BuildKit sent nothing for the output {} (a BuildKit before v0.13 writes only the first output of a build: upgrade it, or build without --push and with one output)",
                    dest.display()
                )));
            }
        }
    }
    Ok(written)
}

/// A failed solve: the daemon gone, or the build's own failure (with where buildopt looked for the secrets the
/// daemon's error names).
fn solve_error(client: &Client, e: RpcError, session: &Session) -> ServiceError {
    if e.is_transport() {
        ServiceError::DaemonLost {
            addr: client.addr().to_string(),
            source: Box::new(e),
        }
    } else {
        let text = e.to_string();
        let missing = session
            .missing_secrets()
            .into_iter()
            .filter(|m| text.contains(&format!("secret {}: ", m.id)))
            .collect();
        ServiceError::Solve { source: e, missing }
    }
}

/// The session ended before the solve did: the daemon (or the connection to it) is gone.
fn session_error(client: &Client, r: Result<(), SessionError>) -> ServiceError {
    ServiceError::DaemonLost {
        addr: client.addr().to_string(),
        source: match r {
            Ok(()) => "the daemon closed the session".into(),
            Err(e) => Box::new(e),
        },
    }
}

/// A file written after the run (`--metadata-file`), checked before anything is built: its directory must exist and
/// be writable. Written atomically, so a reader never sees half of it and a failed write leaves nothing behind.
struct OutputFile {
    path: PathBuf,
}

impl OutputFile {
    fn prepare(path: &Path) -> Result<OutputFile, Error> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::usage(format!(
                "--metadata-file {}: directory {} does not exist; create it or choose another path",
                path.display(),
                dir.display()
            )));
        }
        if path.is_dir() {
            return Err(Error::usage(format!(
                "--metadata-file {}: is a directory; name a file",
                path.display()
            )));
        }
        let probe = Self::temp_path(path, "probe");
        match fs_err::write(&probe, b"") {
            Ok(()) => {
                let _ = std::fs::remove_file(&probe);
            }
            Err(e) => {
                return Err(Error::usage(format!(
                    "--metadata-file {}: cannot write to {}: {}; choose another path",
                    path.display(),
                    dir.display(),
                    e
                )));
            }
        }
        Ok(OutputFile {
            path: path.to_owned(),
        })
    }

    /// `.<name>.<what>.<pid>` beside the file.
    fn temp_path(path: &Path, what: &str) -> PathBuf {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        path.with_file_name(format!(".{name}.{what}.{}", std::process::id()))
    }

    fn write(&self, bytes: &[u8]) -> Result<(), Error> {
        let tmp = Self::temp_path(&self.path, "tmp");
        let result = fs_err::write(&tmp, bytes).and_then(|()| fs_err::rename(&tmp, &self.path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        Ok(result?)
    }
}
