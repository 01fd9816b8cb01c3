//! `buildopt ecr-lifecycle`, and the lifecycle policy an ECR repository gets when buildopt creates it
//! (`[registry] ecr_lifecycle`; the policy itself is [`crate::registry::lifecycle`]).

use std::io::Write;

use super::{Context as _, Error, ExitStatus, aws_ecr, block_on, named, need_registry};
use crate::cli::args::EcrLifecycleArgs;
use crate::config::{Registry, Service, Workspace};
use crate::printer::Printer;
use crate::registry::ecr::{AwsEcr, EcrError};
use crate::registry::lifecycle::{Current, compare, policy};

/// The tags whose images the policy never expires: the requested tags and the cache tag of `services`.
fn protected(services: &[&Service]) -> Vec<String> {
    let mut tags: Vec<String> = services
        .iter()
        .flat_map(|s| s.tags.iter().chain(std::iter::once(&s.cache_tag)).cloned())
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

/// Gives the repository buildopt just created for `svc` the policy of `ecr_lifecycle`, if set. A failure is a
/// warning: the repository exists and the build can go on; `buildopt ecr-lifecycle` applies the policy later.
pub(super) async fn on_create(
    aws: &AwsEcr,
    registry: &Registry,
    svc: &Service,
    printer: Printer,
) -> Result<(), Error> {
    let Some(lifecycle) = registry.ecr_lifecycle else {
        return Ok(());
    };
    let text = policy(lifecycle.keep_content_tags, &protected(&[svc]));
    match aws.put_lifecycle_policy(&svc.image, &text).await {
        Ok(()) => tracing::info!(
            "gave ECR repository `{}` buildopt's lifecycle policy (keep the newest {} content-tagged images)",
            svc.image,
            lifecycle.keep_content_tags
        ),
        Err(e) => writeln!(
            printer.errors(),
            "warning: created ECR repository `{}`, but could not give it the lifecycle policy of `ecr_lifecycle`: {}; apply it later with `buildopt ecr-lifecycle {}`",
            svc.image,
            crate::error::one_line(&e),
            svc.name
        )?,
    }
    Ok(())
}

pub(super) fn run(
    ws: &Workspace,
    args: &EcrLifecycleArgs,
    printer: Printer,
) -> Result<ExitStatus, Error> {
    let registry = need_registry(ws, "ecr-lifecycle")?;
    if !registry.is_ecr() {
        return Err(Error::usage(format!(
            "{}: registry `{}` is not ECR (set `ecr = true` under [registry] if it is); other registries have no lifecycle policies: clean them with `buildopt gc`",
            ws.config_path.display(),
            registry.url
        )));
    }
    let lifecycle = registry.ecr_lifecycle;
    if lifecycle.is_none() && !args.show {
        return Err(Error::usage(format!(
            "{}: no `ecr_lifecycle` under [registry] to apply; add `ecr_lifecycle = {{ keep_content_tags = 10 }}` (or look with --show)",
            ws.config_path.display()
        )));
    }
    let mut repos: Vec<(&str, Vec<&Service>)> = Vec::new();
    for svc in named(ws, &args.services)? {
        if !repos.iter().any(|(r, _)| *r == svc.image) {
            let sharing = ws
                .services
                .iter()
                .filter(|s| s.image == svc.image)
                .collect();
            repos.push((&svc.image, sharing));
        }
    }
    block_on(async {
        let aws = aws_ecr(registry, args.ecr_endpoint.as_deref()).await;
        let mut failed = false;
        for (repo, services) in &repos {
            let current = match aws.lifecycle_policy(repo).await {
                Ok(c) => c,
                Err(EcrError::MissingRepository(_)) => {
                    writeln!(
                        printer.errors(),
                        "warning: no ECR repository `{repo}` yet; a build with `create_repositories = true` creates it with the policy"
                    )?;
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("reading the lifecycle policy of ECR repository `{repo}`")
                    });
                }
            };
            let tags = protected(services);
            let wanted = lifecycle.map(|l| policy(l.keep_content_tags, &tags));
            let state = match &wanted {
                Some(w) => compare(current.as_deref(), w),
                None if current.is_none() => Current::None,
                None => compare(current.as_deref(), ""),
            };
            if args.show {
                show(repo, current.as_deref(), wanted.as_deref(), state, printer)?;
                continue;
            }
            let (Some(wanted), Some(l)) = (wanted, lifecycle) else {
                continue;
            };
            let summary = format!(
                "keep the newest {} content-tagged images; never expire the images tagged {}",
                l.keep_content_tags,
                tags.join(", ")
            );
            match state {
                Current::UpToDate => {
                    writeln!(
                        printer.stdout(),
                        "unchanged {repo}  buildopt's policy is in place: {summary}"
                    )?;
                }
                Current::Foreign => {
                    writeln!(
                        printer.errors(),
                        "warning: ECR repository `{repo}` has a lifecycle policy that is not buildopt's; left alone (see it with `buildopt ecr-lifecycle --show`; delete it to let buildopt set its own)"
                    )?;
                }
                Current::None | Current::Outdated => {
                    match aws.put_lifecycle_policy(repo, &wanted).await {
                        Ok(()) => writeln!(
                            printer.stdout(),
                            "{} {repo}  {summary}",
                            if state == Current::None {
                                "applied  "
                            } else {
                                "replaced "
                            }
                        )?,
                        Err(e) => {
                            failed = true;
                            writeln!(
                                printer.errors(),
                                "error: setting the lifecycle policy of ECR repository `{repo}` failed: {}",
                                crate::error::one_line(&e)
                            )?;
                        }
                    }
                }
            }
        }
        Ok(if failed {
            ExitStatus::Failure
        } else {
            ExitStatus::Success
        })
    })
}

/// `--show`: the repository's policy, buildopt's, and how they relate.
fn show(
    repo: &str,
    current: Option<&str>,
    wanted: Option<&str>,
    state: Current,
    printer: Printer,
) -> Result<(), Error> {
    let pretty = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| text.to_owned())
    };
    let mut out = printer.stdout();
    let what = match (state, wanted) {
        (Current::None, _) => "no lifecycle policy",
        (Current::UpToDate, _) => "buildopt's policy, up to date",
        (Current::Outdated, Some(_)) => {
            "buildopt's policy, outdated (`buildopt ecr-lifecycle` replaces it)"
        }
        (Current::Outdated, None) => "buildopt's policy",
        (Current::Foreign, _) => "a policy that is not buildopt's (left alone)",
    };
    writeln!(out, "{repo}: {what}")?;
    if let Some(c) = current {
        writeln!(out, "current policy:\n{}", pretty(c))?;
    }
    if let Some(w) = wanted
        && state != Current::UpToDate
    {
        writeln!(out, "buildopt's policy (ecr_lifecycle):\n{}", pretty(w))?;
    }
    Ok(())
}
