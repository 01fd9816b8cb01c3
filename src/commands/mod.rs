//! One function per command; the only layer that uses `anyhow`, along with `cli`.

mod build;
mod daemon;
mod hash;
mod plan;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::args::{Cli, Command};
use crate::config::{ConfigError, Service, Workspace};
use crate::hash::{Digest, ServiceInputs, hash_service};
use crate::index::{Index, IndexStatus};
use crate::printer::Printer;

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

/// A mistake in how buildopt was called (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit status for an error: 2 for usage and config errors, 1 for the rest.
pub fn status_of(err: &anyhow::Error) -> ExitStatus {
    let usage = err.chain().any(|c| {
        c.is::<ConfigError>()
            || c.is::<UsageError>()
            || c.downcast_ref::<crate::context::ContextError>()
                .is_some_and(crate::context::ContextError::is_refusal)
            || c.downcast_ref::<crate::registry::RegistryError>()
                .is_some_and(crate::registry::RegistryError::is_setup)
            || c.is::<crate::registry::ecr::EcrError>()
            || matches!(
                c.downcast_ref::<crate::hash::HashError>(),
                Some(crate::hash::HashError::Context(e)) if e.is_refusal()
            )
    });
    if usage {
        ExitStatus::Error
    } else {
        ExitStatus::Failure
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli, printer: Printer) -> anyhow::Result<ExitStatus> {
    let config = cli.global.config.as_ref();
    match &cli.command {
        Command::Hash(args) => hash::run(&load_workspace(config)?, args, printer),
        Command::Plan(args) => plan::run(&load_workspace(config)?, args, printer),
        Command::Build(args) => {
            build::run(&load_workspace(config)?, args, printer, cli.global.progress)
        }
        // The daemon commands work without a config; one is used for `[buildkit] addr` when present.
        Command::Doctor(args) => block_on(daemon::doctor(
            args,
            optional_workspace(config)?.as_ref(),
            printer,
        )),
        Command::Du(args) => block_on(daemon::du(
            args,
            optional_workspace(config)?.as_ref(),
            printer,
        )),
        Command::Prune(args) => block_on(daemon::prune(
            args,
            optional_workspace(config)?.as_ref(),
            printer,
        )),
    }
}

/// Runs `fut` on a fresh runtime, then stops it without waiting: pending pushes or RPCs must not hold the exit
/// (the daemon cancels a build whose Solve call is gone).
fn block_on<T>(fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(fut);
    runtime.shutdown_background();
    result
}

/// The workspace when one is given or found; none (not an error) when there is no config at all.
fn optional_workspace(config: Option<&PathBuf>) -> anyhow::Result<Option<Workspace>> {
    match load_workspace(config) {
        Ok(ws) => Ok(Some(ws)),
        Err(e)
            if config.is_none()
                && matches!(
                    e.downcast_ref::<ConfigError>(),
                    Some(ConfigError::NotFound(_))
                ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn load_workspace(config: Option<&PathBuf>) -> anyhow::Result<Workspace> {
    Ok(match config {
        Some(path) => Workspace::load(path)?,
        None => {
            Workspace::discover(&std::env::current_dir().context("reading the current directory")?)?
        }
    })
}

/// buildopt's own state directories in a workspace, never part of any context (the first is the cache directory).
pub(crate) fn own_dirs(ws: &Workspace) -> Vec<PathBuf> {
    vec![ws.root.join(CACHE_DIR)]
}

/// The selected services (plus their dependencies) or a usage error naming the unknown one.
fn select<'a>(ws: &'a Workspace, names: &[String]) -> anyhow::Result<Vec<&'a Service>> {
    ws.select(names).map_err(|unknown| {
        let known: Vec<&str> = ws.services.iter().map(|s| s.name.as_str()).collect();
        UsageError(format!(
            "no service `{unknown}` in {}; known services: {}",
            ws.config_path.display(),
            known.join(", ")
        ))
        .into()
    })
}

/// Hashes `services` (dependencies first) with the workspace's content index, saving the index afterwards.
fn hash_all(ws: &Workspace, services: &[&Service]) -> anyhow::Result<Vec<ServiceInputs>> {
    let own = own_dirs(ws);
    let index = Index::open(&own[0]);
    if let IndexStatus::Discarded(why) = index.status() {
        tracing::warn!("rebuilding the local hash index: {why}");
    }
    let mut digests: BTreeMap<String, Digest> = BTreeMap::new();
    let mut out = Vec::new();
    for svc in services {
        let inputs = hash_service(svc, &digests, &index, &own)
            .with_context(|| format!("hashing service `{}`", svc.name))?;
        digests.insert(svc.name.clone(), inputs.digest);
        out.push(inputs);
    }
    let walked: Vec<PathBuf> = services.iter().map(|s| s.context.clone()).collect();
    if let Err(e) = index.save(&walked) {
        tracing::warn!("could not save the local hash index: {e}");
    }
    Ok(out)
}

/// Credentials (ECR first when the registry is ECR, then the docker config), the registry client, and for ECR the
/// repositories of `services` (created when configured; a warning where tag immutability would reject moving
/// tags).
async fn registry_setup(
    registry: &crate::config::Registry,
    ecr_endpoint: Option<&str>,
    services: &[&Service],
    ensure_repositories: bool,
    printer: Printer,
) -> anyhow::Result<(
    std::sync::Arc<dyn crate::auth::Keychain>,
    crate::registry::RegistryClient,
)> {
    use std::io::Write;
    use std::sync::Arc;

    use crate::auth::{DockerConfigKeychain, EnvKeychain, Keychain, MultiKeychain};
    use crate::registry::ecr::{AwsEcr, EcrApi, EcrKeychain, RepositoryState, region_of_host};

    let mut chain: Vec<Box<dyn Keychain>> = Vec::new();
    if registry.is_ecr() {
        let region = region_of_host(registry.host()).or_else(|| registry.ecr_region.clone());
        let endpoint = ecr_endpoint
            .map(str::to_owned)
            .or_else(|| registry.ecr_endpoint.clone());
        let api: Arc<dyn EcrApi> = Arc::new(AwsEcr::new(region, endpoint).await);
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
                        tracing::info!("created ECR repository `{}`", svc.image)
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
    let client = crate::registry::RegistryClient::new(registry, keychain.clone())?;
    Ok((keychain, client))
}
