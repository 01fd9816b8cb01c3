//! One function per command; the only layer that uses `anyhow`, along with `cli`.

mod build;
mod daemon;
mod deploy;
mod ecr_lifecycle;
mod gc;
mod hash;
mod plan;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::auth::{DockerConfigKeychain, EnvKeychain, Keychain, MultiKeychain};
use crate::cli::args::{Cli, Command};
use crate::config::{ConfigError, LoadOptions, Registry, Service, Workspace};
use crate::digest::Digest;
use crate::error::{Classify, ErrorKind};
use crate::hash::{HashError, ServiceInputs, digest_service, hash_service};
use crate::index::Index;
use crate::printer::Printer;
use crate::registry::RegistryClient;
use crate::registry::verify::Verifier;

/// The directory of local state and the content index, relative to the workspace root.
pub const CACHE_DIR: &str = ".build-cache";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything worked (0).
    Success,
    /// Some service failed (1).
    Failure,
    /// Usage or config error (2).
    Error,
}

impl From<ExitStatus> for ExitCode {
    fn from(s: ExitStatus) -> ExitCode {
        ExitCode::from(match s {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Error => 2,
        })
    }
}

/// A command's error: the cause chain to print, and whether it is a usage error (exit 2) or a failure (exit 1),
/// decided by the library error it started from.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    inner: anyhow::Error,
}

impl Error {
    /// A mistake in how buildopt was called (exit code 2).
    pub(crate) fn usage(message: impl Display) -> Error {
        Error {
            kind: ErrorKind::Usage,
            inner: anyhow::anyhow!("{message}"),
        }
    }

    /// The exit status for this error.
    pub fn status(&self) -> ExitStatus {
        match self.kind {
            ErrorKind::Usage => ExitStatus::Error,
            ErrorKind::Failure => ExitStatus::Failure,
        }
    }

    /// The error and its causes, outermost first.
    pub fn chain(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        self.inner.chain()
    }

    fn context(self, message: impl Display + Send + Sync + 'static) -> Error {
        Error {
            kind: self.kind,
            inner: self.inner.context(message),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl<E: Classify + std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(e: E) -> Error {
        Error {
            kind: e.kind(),
            inner: anyhow::Error::new(e),
        }
    }
}

/// `.context()` that keeps the kind of the error it wraps.
pub(crate) trait Context<T> {
    /// Wraps the error with what was being attempted.
    fn context(self, message: impl Display + Send + Sync + 'static) -> Result<T, Error>;
    /// Like [`Context::context`], with a message built only on error.
    fn with_context<M: Display + Send + Sync + 'static>(
        self,
        message: impl FnOnce() -> M,
    ) -> Result<T, Error>;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context(self, message: impl Display + Send + Sync + 'static) -> Result<T, Error> {
        self.map_err(|e| e.into().context(message))
    }
    fn with_context<M: Display + Send + Sync + 'static>(
        self,
        message: impl FnOnce() -> M,
    ) -> Result<T, Error> {
        self.map_err(|e| e.into().context(message()))
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli, printer: Printer) -> Result<ExitStatus, Error> {
    let sets = cli.global.overrides();
    let source = Source {
        config: cli.global.config.as_deref(),
        compose: cli.global.file.as_deref(),
        sets: &sets,
        printer,
    };
    let load_workspace = || load_workspace(&source);
    let optional_workspace = || optional_workspace(&source);
    match &cli.command {
        Command::Hash(args) => hash::run(&load_workspace()?, args, printer),
        Command::Plan(args) => plan::run(&load_workspace()?, args, printer),
        Command::Build(args) => {
            let mut ws = load_workspace()?;
            ws.add_tags(&args.tags)?;
            ws.add_mounts(&args.secrets, &args.ssh, &std::env::current_dir()?)?;
            deploy::check_build(&ws, args)?;
            build::run(&ws, args, printer, cli.global.progress)
        }
        Command::Deploy(args) => deploy::run(&load_workspace()?, args, printer),
        Command::Gc(args) => gc::run(&load_workspace()?, args, printer),
        Command::EcrLifecycle(args) => ecr_lifecycle::run(&load_workspace()?, args, printer),
        // The daemon commands work without a config; one is used for `[buildkit] addr` when present.
        Command::Doctor(args) => block_on(daemon::doctor(
            args,
            optional_workspace()?.as_ref(),
            printer,
        )),
        Command::Du(args) => block_on(daemon::du(args, optional_workspace()?.as_ref(), printer)),
        Command::Prune(args) => {
            block_on(daemon::prune(args, optional_workspace()?.as_ref(), printer))
        }
    }
}

/// Runs `fut` on a fresh runtime, then stops it without waiting: pending pushes or RPCs must not hold the exit
/// (the daemon cancels a build whose Solve call is gone).
fn block_on<T>(fut: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(fut);
    runtime.shutdown_background();
    result
}

/// Where the config comes from: `--config`, `--file` (a compose file), `--set`.
struct Source<'a> {
    config: Option<&'a Path>,
    compose: Option<&'a Path>,
    sets: &'a [String],
    printer: Printer,
}

/// The workspace when one is given or found; none (not an error) when there is no config at all.
fn optional_workspace(source: &Source<'_>) -> Result<Option<Workspace>, Error> {
    match load_workspace(source) {
        Ok(ws) => Ok(Some(ws)),
        Err(e)
            if e.inner
                .downcast_ref::<ConfigError>()
                .is_some_and(|c| matches!(c, ConfigError::NotFound(_))) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The workspace given or found, its warnings shown.
fn load_workspace(source: &Source<'_>) -> Result<Workspace, Error> {
    use std::io::Write as _;
    let cwd = std::env::current_dir()?;
    let compose = source.compose.map(|c| cwd.join(c));
    let options = LoadOptions {
        sets: source.sets,
        compose_file: compose.as_deref(),
        ..LoadOptions::default()
    };
    let ws = match source.config {
        Some(path) => Workspace::load_with(path, &options)?,
        None => Workspace::discover_with(&cwd, &options)?,
    };
    let mut err = source.printer.errors();
    for w in &ws.warnings {
        writeln!(err, "warning: {w}")?;
    }
    Ok(ws)
}

/// buildopt's own files in a workspace, never part of any context: the cache directory (first), and the CI output
/// files of the environment (`GITHUB_OUTPUT`, `GITHUB_STEP_SUMMARY`), which plan, hash and build hide alike.
pub(crate) fn own_dirs(ws: &Workspace) -> Vec<PathBuf> {
    let mut own = vec![ws.root.join(CACHE_DIR)];
    own.extend(crate::ci::GitHub::from_env().files().map(own_path));
    own
}

/// `path` as the context walk sees it: absolute, with its directory's symlinks resolved.
pub(crate) fn own_path(path: &Path) -> PathBuf {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map(|d| d.join(name))
            .unwrap_or_else(|_| path.clone()),
        _ => path,
    }
}

/// The selected services (plus their dependencies) or a usage error naming the unknown one.
fn select<'a>(ws: &'a Workspace, names: &[String]) -> Result<Vec<&'a Service>, Error> {
    ws.select(names)
        .map_err(|unknown| unknown_service(ws, &unknown))
}

/// The usage error for a service name the config does not have.
fn unknown_service(ws: &Workspace, name: &str) -> Error {
    let known: Vec<&str> = ws.services.iter().map(|s| s.name.as_str()).collect();
    Error::usage(format!(
        "no service `{name}` in {}; known services: {}",
        ws.config_path.display(),
        known.join(", ")
    ))
}

/// The inputs of one service (by its index in the list hashed), as soon as they are hashed.
type Hashed = tokio::sync::mpsc::UnboundedReceiver<(usize, Arc<ServiceInputs>)>;
/// The thread that hashes: every service's inputs in order, or the first error.
type Hashing<'scope> =
    std::thread::ScopedJoinHandle<'scope, Result<Vec<Arc<ServiceInputs>>, Error>>;

/// Hashes `services` (dependencies first, the others in parallel) with the workspace's content index, keeping
/// what a build needs, on a thread of `scope` while the caller goes on: each service's inputs arrive on the
/// receiver as soon as they are hashed, so that its registry lookups overlap the hashing of the others (and the
/// credentials are resolved meanwhile). The thread's result is every service's inputs in order, or the first error.
fn hash_in_background<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    ws: &'scope Workspace,
    services: &'scope [&'scope Service],
    hidden: &'scope [PathBuf],
) -> (Hashed, Hashing<'scope>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let hashing = scope.spawn(move || {
        let each = |i: usize, inputs: &Arc<ServiceInputs>| {
            // The receiver may be gone (the registry failed): the hashing still ends, for its own errors.
            let _ = tx.send((i, inputs.clone()));
        };
        in_waves(
            ws,
            services,
            hidden,
            |svc, deps, index, own| hash_service(svc, deps, index, own).map(Arc::new),
            |inputs| inputs.digest,
            each,
        )
    });
    (rx, hashing)
}

/// The result of a thread of [`hash_in_background`].
fn hashed(handle: Hashing<'_>) -> Result<Vec<Arc<ServiceInputs>>, Error> {
    handle
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// The input digests of `services`, as [`hash_in_background`] computes them but without holding any context.
fn digest_all(ws: &Workspace, services: &[&Service]) -> Result<Vec<Digest>, Error> {
    in_waves(ws, services, &[], digest_service, |d| *d, |_, _| {})
}

/// Runs `hash` over `services` a dependency wave at a time (the services whose dependencies are done, in
/// parallel: the walk of one context is mostly one thread's, and a monorepo has many contexts: issue 12), each with
/// its dependencies' digests (`digest_of` its result), calling `each` with every result as it comes.
fn in_waves<T: Send>(
    ws: &Workspace,
    services: &[&Service],
    hidden: &[PathBuf],
    hash: impl Fn(&Service, &BTreeMap<String, Digest>, &Index, &[PathBuf]) -> Result<T, HashError>
    + Sync,
    digest_of: impl Fn(&T) -> Digest,
    each: impl Fn(usize, &T) + Sync,
) -> Result<Vec<T>, Error> {
    let mut own = own_dirs(ws);
    own.extend(hidden.iter().cloned());
    let index = Index::open(&own[0]);
    let mut digests: BTreeMap<String, Digest> = BTreeMap::new();
    let mut out: Vec<Option<T>> = services.iter().map(|_| None).collect();
    while let Some(first) = out.iter().position(Option::is_none) {
        let mut wave: Vec<usize> = (first..services.len())
            .filter(|&i| out[i].is_none())
            .filter(|&i| {
                services[i]
                    .depends_on
                    .iter()
                    .all(|d| digests.contains_key(d))
            })
            .collect();
        if wave.is_empty() {
            // Not reached (dependencies come first); hashing it alone says what is missing.
            wave.push(first);
        }
        let results: Vec<Result<T, HashError>> = {
            use rayon::prelude::*;
            let digests = &digests;
            wave.par_iter()
                .map(|&i| {
                    let hashed = hash(services[i], digests, &index, &own);
                    if let Ok(t) = &hashed {
                        each(i, t);
                    }
                    hashed
                })
                .collect()
        };
        for (i, r) in wave.into_iter().zip(results) {
            let hashed = r.with_context(|| format!("hashing service `{}`", services[i].name))?;
            digests.insert(services[i].name.clone(), digest_of(&hashed));
            out[i] = Some(hashed);
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// The registry side of a run: credentials (ECR first when the registry is ECR, then the environment, then the
/// docker config), one client, and one verifier.
pub(crate) struct RegistrySetup {
    /// What BuildKit gets through the session.
    pub(crate) keychain: Arc<dyn Keychain>,
    /// Checks images (and holds the client).
    pub(crate) verifier: Verifier,
}

/// Sets up registry access; for ECR also checks (and creates, when configured) the repositories of `services`,
/// warning where tag immutability would reject moving tags.
async fn registry_setup(
    registry: &Registry,
    ecr_endpoint: Option<&str>,
    services: &[&Service],
    ensure_repositories: bool,
    printer: Printer,
) -> Result<RegistrySetup, Error> {
    use std::io::Write;

    use crate::registry::ecr::{EcrApi, EcrKeychain, RepositoryState};

    let mut chain: Vec<Box<dyn Keychain>> = Vec::new();
    if registry.is_ecr() {
        let aws = aws_ecr(registry, ecr_endpoint).await;
        let api: Arc<dyn EcrApi> = Arc::new(aws.clone());
        if ensure_repositories {
            let checks = services.iter().map(|s| {
                let api = api.clone();
                async move {
                    (
                        s,
                        api.ensure_repository(&s.image, registry.create_repositories)
                            .await,
                    )
                }
            });
            for (svc, result) in futures::future::join_all(checks).await {
                match result.with_context(|| {
                    format!(
                        "checking ECR repository `{}` of service `{}`",
                        svc.image, svc.name
                    )
                })? {
                    RepositoryState::Created => {
                        tracing::info!("created ECR repository `{}`", svc.image);
                        ecr_lifecycle::on_create(&aws, registry, svc, printer).await?;
                    }
                    RepositoryState::Existing {
                        immutable_tags: true,
                    } => {
                        writeln!(
                            printer.errors(),
                            "warning: ECR repository `{}` has immutable tags: pushing the moving tags {} and `{}` will be rejected; make its tags mutable",
                            svc.image,
                            svc.tags
                                .iter()
                                .map(|t| format!("`{t}`"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            svc.cache_tag
                        )?;
                    }
                    RepositoryState::Existing { .. } => {}
                }
            }
        }
        chain.push(Box::new(EcrKeychain::new(api, registry.host())));
    }
    chain.push(Box::new(EnvKeychain::from_env(registry.host())));
    chain.push(Box::new(DockerConfigKeychain::from_env()));
    let keychain: Arc<dyn Keychain> = Arc::new(MultiKeychain(chain));
    let client = RegistryClient::new(registry, keychain.clone())?;
    Ok(RegistrySetup {
        keychain,
        verifier: Verifier::new(client),
    })
}

/// The ECR API client of `registry`: its region from the host (else `ecr_region`, else the SDK's settings), its
/// endpoint from `--ecr-endpoint`, else `[registry] ecr_endpoint`, else the SDK's settings (`AWS_ENDPOINT_URL_ECR`,
/// `AWS_ENDPOINT_URL`, the profile).
pub(crate) async fn aws_ecr(
    registry: &Registry,
    ecr_endpoint: Option<&str>,
) -> crate::registry::ecr::AwsEcr {
    use crate::registry::ecr::{AwsEcr, region_of_host};
    let region = region_of_host(registry.host()).or_else(|| registry.ecr_region.clone());
    let endpoint = ecr_endpoint
        .map(str::to_owned)
        .or_else(|| registry.ecr_endpoint.clone());
    AwsEcr::new(region, endpoint).await
}

/// The `[registry]` of a command that needs one, or a usage error naming the command.
fn need_registry<'a>(ws: &'a Workspace, command: &str) -> Result<&'a Registry, Error> {
    ws.registry.as_ref().ok_or_else(|| {
        let hint = if ws.compose_file.as_ref() == Some(&ws.config_path) {
            " (in a compose file: an `image:` naming its registry, e.g. `registry.example.com/team/app`)"
        } else {
            ""
        };
        Error::usage(format!(
            "{}: `buildopt {command}` needs a [registry] with a `url`{hint}",
            ws.config_path.display()
        ))
    })
}

/// The named services (all when none is named), without their dependencies, or a usage error naming an unknown
/// one.
fn named<'a>(ws: &'a Workspace, names: &[String]) -> Result<Vec<&'a Service>, Error> {
    if names.is_empty() {
        return Ok(ws.services.iter().collect());
    }
    let mut out: Vec<&Service> = Vec::new();
    for n in names {
        let svc = ws.service(n).ok_or_else(|| unknown_service(ws, n))?;
        if !out.iter().any(|s| s.name == svc.name) {
            out.push(svc);
        }
    }
    Ok(out)
}

/// A duration flag (`10m`, `1h30m`, `7d`), or a usage error naming the flag.
fn duration_flag(flag: &str, value: &str) -> Result<std::time::Duration, Error> {
    daemon::parse_duration(value).ok_or_else(|| {
        Error::usage(format!(
            "{flag} {value}: not a duration; write it like 90s, 10m, 1h30m, 7d"
        ))
    })
}
