//! `buildopt deploy`, and the deploy step of `buildopt build --deploy` (or, without `--deploy`, the lines that say
//! what it would deploy): which services, which image, then [`crate::deploy`].

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::{
    Context as _, Error, ExitStatus, RegistrySetup, block_on, duration_flag, named, need_registry,
    registry_setup, select,
};
use crate::cli::args::{BuildArgs, DeployArgs};
use crate::config::{CONFIG_FILE, Registry, Service, Workspace};
use crate::deploy::ecs::Ecs;
use crate::deploy::{self, Outcome, Target};
use crate::error::{Classify, ErrorKind};
use crate::printer::Printer;
use crate::report::BuildReport;

/// How long `--deploy-wait` and `deploy --wait` wait by default (as long as `aws ecs wait services-stable`).
const DEFAULT_WAIT: Duration = Duration::from_secs(600);

/// Checks a `build --deploy` before anything is built: some selected service must say where it is deployed, and
/// the timeout must be a duration.
pub(super) fn check_build(ws: &Workspace, args: &BuildArgs) -> Result<(), Error> {
    if !args.deploy {
        return Ok(());
    }
    wait_limit(
        args.deploy_wait,
        args.deploy_timeout.as_deref(),
        "--deploy-timeout",
    )?;
    let selected = select(ws, &args.services)?;
    if !selected.iter().any(|s| s.deploy.is_some()) {
        let names: Vec<&str> = selected.iter().map(|s| s.name.as_str()).collect();
        return Err(Error::usage(format!(
            "--deploy: no selected service ({}) has a [services.NAME.deploy.ecs] table in {}; add one with `cluster` and `service`, or build without --deploy",
            names.join(", "),
            ws.config_path.display()
        )));
    }
    Ok(())
}

fn wait_limit(wait: bool, timeout: Option<&str>, flag: &str) -> Result<Option<Duration>, Error> {
    if !wait {
        return Ok(None);
    }
    match timeout {
        Some(t) => Ok(Some(duration_flag(flag, t)?)),
        None => Ok(Some(DEFAULT_WAIT)),
    }
}

/// The region ECS falls back to when the SDK's settings name none: an ECR registry's.
fn fallback_region(registry: &Registry) -> Option<String> {
    if !registry.is_ecr() {
        return None;
    }
    crate::registry::ecr::region_of_host(registry.host()).or_else(|| registry.ecr_region.clone())
}

/// After a build's summary: with `--deploy`, deploys the services whose image the run changed; without, says which
/// would be and how. Returns whether every deploy worked.
pub(super) fn after_build(
    ws: &Workspace,
    registry: &Registry,
    report: &BuildReport,
    args: &BuildArgs,
    printer: Printer,
) -> Result<bool, Error> {
    let targets = deploy::changed(report, &ws.services);
    let services: Vec<&Service> = targets
        .iter()
        .filter_map(|t| ws.service(&t.service))
        .collect();
    if !args.deploy {
        if !targets.is_empty() {
            deploy::write_pending(
                &targets,
                &deploy_command(ws, &services, &args.tags),
                &mut printer.errors(),
            )?;
        }
        return Ok(true);
    }
    if report.interrupted.is_some() {
        writeln!(printer.errors(), "not deploying: the run was interrupted")?;
        return Ok(false);
    }
    if targets.is_empty() {
        writeln!(
            printer.errors(),
            "nothing to deploy: no image changed in this run"
        )?;
        return Ok(true);
    }
    let wait = wait_limit(
        args.deploy_wait,
        args.deploy_timeout.as_deref(),
        "--deploy-timeout",
    )?;
    let region = fallback_region(registry);
    let outcomes = block_on(async {
        let result = match Ecs::new(region).await {
            Ok(ecs) => Ok(deploy::deploy(&ecs, targets, wait, printer).await),
            Err(e) => Err(e),
        };
        Ok::<_, Error>(result)
    })?;
    // The build is done: a deploy that cannot start fails the run (exit 1), as a failed deploy does.
    let outcomes = match outcomes {
        Ok(o) => o,
        Err(e) => {
            writeln!(printer.errors(), "error: not deploying: {e}")?;
            return Ok(false);
        }
    };
    let ok = deploy::write_outcomes(&outcomes, &mut printer.errors(), &mut printer.errors())?;
    if !ok {
        let failed: Vec<&Service> = deploy::failed(&outcomes)
            .into_iter()
            .filter_map(|name| ws.service(name))
            .collect();
        writeln!(
            printer.errors(),
            "{}retry with: {}",
            if failed.len() < outcomes.len() {
                "the others are deployed; "
            } else {
                ""
            },
            deploy_command(ws, &failed, &args.tags)
        )?;
    }
    Ok(ok)
}

/// `buildopt deploy SERVICE...` as it would deploy the images of this run: with `--config` when the file would not
/// be found from here, and `--tag` when a service has no requested tag of its own (only `--tag`s).
fn deploy_command(ws: &Workspace, services: &[&Service], extra_tags: &[String]) -> String {
    let mut command = "buildopt".to_owned();
    let found = std::env::current_dir().ok().and_then(|cwd| {
        cwd.ancestors()
            .map(|d| d.join(CONFIG_FILE))
            .find(|p| p.is_file())
    });
    if found.as_deref().and_then(|p| std::path::absolute(p).ok())
        != std::path::absolute(&ws.config_path).ok()
    {
        command.push_str(&format!(" --config {}", shell_word(&ws.config_path)));
    }
    command.push_str(" deploy");
    for s in services {
        command.push(' ');
        command.push_str(&s.name);
    }
    let tag = services
        .iter()
        .filter_map(|s| s.tags.first())
        .find(|t| extra_tags.contains(t));
    if let Some(tag) = tag {
        command.push_str(&format!(" --tag {tag}"));
    }
    command
}

/// A path as one shell word.
fn shell_word(p: &Path) -> String {
    let s = p.display().to_string();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `buildopt deploy`.
pub(super) fn run(
    ws: &Workspace,
    args: &DeployArgs,
    printer: Printer,
) -> Result<ExitStatus, Error> {
    let registry = need_registry(ws, "deploy")?;
    let wait = wait_limit(args.wait, args.timeout.as_deref(), "--timeout")?;
    if let Some(t) = &args.tag {
        crate::config::validate_tag(t).map_err(|m| Error::usage(format!("--tag: {m}")))?;
    }
    let mut chosen: Vec<(&Service, String)> = Vec::new();
    for svc in named(ws, &args.services)? {
        if svc.deploy.is_none() {
            if args.services.is_empty() {
                continue;
            }
            return Err(Error::usage(format!(
                "service `{}` has no [services.{}.deploy.ecs] table in {}; add one with `cluster` and `service`",
                svc.name,
                svc.name,
                ws.config_path.display()
            )));
        }
        let Some(tag) = args.tag.clone().or_else(|| svc.tags.first().cloned()) else {
            return Err(Error::usage(format!(
                "service `{}` has no requested tags (`tags = []` in {}): name the tag to deploy with --tag TAG",
                svc.name,
                ws.config_path.display()
            )));
        };
        chosen.push((svc, tag));
    }
    if chosen.is_empty() {
        return Err(Error::usage(format!(
            "no service in {} has a [services.NAME.deploy.ecs] table; add one with `cluster` and `service`",
            ws.config_path.display()
        )));
    }
    let refs: Vec<&Service> = chosen.iter().map(|(s, _)| *s).collect();
    block_on(async {
        let RegistrySetup { verifier, .. } = registry_setup(
            registry,
            args.ecr_endpoint.as_deref(),
            &refs,
            false,
            printer,
        )
        .await?;
        let client = verifier.client();
        let lookups = chosen.iter().map(|(svc, tag)| async move {
            let reference = client.reference(&svc.image, tag);
            let found = client
                .lookup(&reference)
                .await
                .with_context(|| format!("reading {reference} (service `{}`)", svc.name))?;
            Ok::<_, Error>((svc, reference, found))
        });
        let mut targets = Vec::new();
        let mut missing = 0;
        for r in futures::future::join_all(lookups).await {
            let (svc, reference, found) = r?;
            match found {
                Some(digest) => targets.push(Target {
                    service: svc.name.clone(),
                    ecs: svc
                        .deploy
                        .clone()
                        .expect("chosen services have a deploy table"),
                    image: client.by_digest(&svc.image, &digest),
                }),
                None => {
                    missing += 1;
                    writeln!(
                        printer.errors(),
                        "error: `{}`: {reference} does not exist; build and push it first (buildopt build {})",
                        svc.name,
                        svc.name
                    )?;
                }
            }
        }
        if args.dry_run {
            let width = targets.iter().map(|t| t.service.len()).max().unwrap_or(0);
            let mut out = printer.stdout();
            for t in &targets {
                writeln!(
                    out,
                    "would deploy {:width$}  to ECS {}/{}: {}",
                    t.service, t.ecs.cluster, t.ecs.service, t.image
                )?;
            }
            return Ok(if missing == 0 {
                ExitStatus::Success
            } else {
                ExitStatus::Failure
            });
        }
        if targets.is_empty() {
            return Ok(ExitStatus::Failure);
        }
        let ecs = Ecs::new(fallback_region(registry)).await?;
        let outcomes = deploy::deploy(&ecs, targets, wait, printer).await;
        let ok = deploy::write_outcomes(&outcomes, &mut printer.stdout(), &mut printer.errors())?;
        Ok(exit_status(&outcomes, ok, missing))
    })
}

/// Success when everything was deployed; a usage error (2) when nothing was and every failure was one (no
/// credentials, no such container); otherwise a failure (1).
fn exit_status(outcomes: &[Outcome], ok: bool, missing: usize) -> ExitStatus {
    if ok && missing == 0 {
        return ExitStatus::Success;
    }
    let usage = outcomes.iter().all(|o| {
        o.result
            .as_ref()
            .is_err_and(|e| e.source.kind() == ErrorKind::Usage)
    });
    if usage && missing == 0 && !outcomes.is_empty() {
        ExitStatus::Error
    } else {
        ExitStatus::Failure
    }
}
