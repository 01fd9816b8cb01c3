//! Deploying images to ECS: which services a build changed (`build --deploy`), the deploys themselves (each on its
//! own: one failing leaves the others alone), waiting until they are stable, and the lines that say what happened.
//!
//! A service is deployed pinned by digest (`REGISTRY/IMAGE@sha256:...`), never by a moving tag, so that what runs
//! is exactly the image the report names.

pub(crate) mod ecs;

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::config::{EcsDeploy, Service};
use crate::printer::Printer;
use crate::report::{BuildReport, Status, TagReport};
use ecs::{Deployed, Ecs, EcsError, short_task_definition};

/// How often a waiting deploy asks ECS how it is going.
const POLL: Duration = Duration::from_secs(10);

/// One service to deploy: where, and which image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The buildopt service.
    pub(crate) service: String,
    /// Its ECS service.
    pub(crate) ecs: EcsDeploy,
    /// `REGISTRY/IMAGE@sha256:...`.
    pub(crate) image: String,
}

/// Whether a service's image changed in the run: built and tagged now (a build with no requested tags counts:
/// its content tag is new), or promoted, with at least one requested tag read back on the image. A skip whose tags
/// were already in place, or a rebuild that produced the image the tags already had, changed nothing.
pub(crate) fn image_changed(status: Status, tags: &[TagReport]) -> bool {
    match status {
        Status::Built => tags.is_empty() || tags.iter().any(|t| t.state == "moved"),
        Status::Promoted => tags.iter().any(|t| t.state == "moved"),
        Status::Planned | Status::Skipped | Status::Failed | Status::Interrupted => false,
    }
}

/// The services of `report` whose image the run changed and that say where they are deployed, in report order.
/// None after an interrupted run.
pub(crate) fn changed(report: &BuildReport, services: &[Service]) -> Vec<Target> {
    if report.interrupted.is_some() {
        return Vec::new();
    }
    report
        .services
        .iter()
        .filter(|s| image_changed(s.status, &s.tags))
        .filter_map(|s| {
            let ecs = services
                .iter()
                .find(|svc| svc.name == s.service)?
                .deploy
                .clone()?;
            Some(Target {
                service: s.service.clone(),
                ecs,
                image: format!("{}@{}", s.repository, s.image.as_deref()?),
            })
        })
        .collect()
}

/// A deploy that failed: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error(
    "deploying `{service}` to ECS cluster `{cluster}`, service `{ecs_service}` failed",
    cluster = .target.cluster,
    ecs_service = .target.service
)]
pub(crate) struct DeployFailed {
    /// The buildopt service.
    pub(crate) service: String,
    /// Where it was deployed to.
    pub(crate) target: EcsDeploy,
    /// Why.
    #[source]
    pub(crate) source: EcsError,
}

/// What a successful deploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Done {
    /// Registered and updated, or already there.
    pub(crate) deployed: Deployed,
    /// With waiting: the state in which the service became stable.
    pub(crate) stable: Option<String>,
}

/// How one deploy ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// What was deployed where.
    pub(crate) target: Target,
    /// What happened.
    pub(crate) result: Result<Done, DeployFailed>,
}

/// Deploys every target at once, each on its own. With `wait`, then waits up to that long for each service that
/// was updated to become stable, saying on stderr how it goes whenever that changes.
pub(crate) async fn deploy(
    ecs: &Ecs,
    targets: Vec<Target>,
    wait: Option<Duration>,
    printer: Printer,
) -> Vec<Outcome> {
    let width = targets.iter().map(|t| t.service.len()).max().unwrap_or(0);
    let runs = targets.into_iter().map(|target| async move {
        let result = deploy_one(ecs, &target, wait, width, printer)
            .await
            .map_err(|source| DeployFailed {
                service: target.service.clone(),
                target: target.ecs.clone(),
                source,
            });
        Outcome { target, result }
    });
    futures::future::join_all(runs).await
}

async fn deploy_one(
    ecs: &Ecs,
    target: &Target,
    wait: Option<Duration>,
    width: usize,
    printer: Printer,
) -> Result<Done, EcsError> {
    let deployed = ecs
        .deploy(&target.service, &target.ecs, &target.image)
        .await?;
    let Some(limit) = wait else {
        return Ok(Done {
            deployed,
            stable: None,
        });
    };
    let task_definition = deployed.task_definition().to_owned();
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let rollout = ecs.rollout(&target.ecs, &task_definition).await?;
        if rollout.stable {
            return Ok(Done {
                deployed,
                stable: Some(rollout.state),
            });
        }
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(EcsError::Timeout {
                waited: limit.as_secs(),
                state: rollout.state,
                task_definition: short_task_definition(&task_definition).to_owned(),
            });
        }
        if rollout.state != last {
            let _ = writeln!(
                printer.stderr(),
                "waiting   {:width$}  ECS {}/{}: {} ({}s left)",
                target.service,
                target.ecs.cluster,
                target.ecs.service,
                rollout.state,
                left.as_secs()
            );
            last = rollout.state;
        }
        tokio::time::sleep(POLL.min(left)).await;
    }
}

/// A line per deploy that worked (to `out`) and per one that failed (to `errors`, as `error: ...`). Returns whether
/// all worked.
pub(crate) fn write_outcomes(
    outcomes: &[Outcome],
    out: &mut dyn Write,
    errors: &mut dyn Write,
) -> io::Result<bool> {
    let width = outcomes
        .iter()
        .map(|o| o.target.service.len())
        .max()
        .unwrap_or(0);
    let mut ok = true;
    for o in outcomes {
        let t = &o.target;
        let Ok(done) = &o.result else {
            ok = false;
            continue;
        };
        let stable = done
            .stable
            .as_ref()
            .map(|s| format!("; stable: {s}"))
            .unwrap_or_default();
        match &done.deployed {
            Deployed::Updated {
                task_definition,
                previous,
            } => writeln!(
                out,
                "deployed  {:width$}  ECS {}/{}: task definition {} (was {}), image {}{stable}",
                t.service,
                t.ecs.cluster,
                t.ecs.service,
                short_task_definition(task_definition),
                short_task_definition(previous),
                t.image,
            )?,
            Deployed::Current { task_definition } => writeln!(
                out,
                "unchanged {:width$}  ECS {}/{} already runs {} (task definition {}){stable}",
                t.service,
                t.ecs.cluster,
                t.ecs.service,
                t.image,
                short_task_definition(task_definition),
            )?,
        }
    }
    for o in outcomes {
        if let Err(e) = &o.result {
            writeln!(errors, "error: {}", crate::error::one_line(e))?;
        }
    }
    Ok(ok)
}

/// The services that failed, for a retry command.
pub(crate) fn failed(outcomes: &[Outcome]) -> Vec<&str> {
    outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.target.service.as_str())
        .collect()
}

/// Without `--deploy`: which services a deploy would update, and the command that does it.
pub(crate) fn write_pending(
    targets: &[Target],
    command: &str,
    out: &mut dyn Write,
) -> io::Result<()> {
    let width = targets.iter().map(|t| t.service.len()).max().unwrap_or(0);
    for t in targets {
        writeln!(
            out,
            "would deploy {:width$}  to ECS {}/{}: {}",
            t.service, t.ecs.cluster, t.ecs.service, t.image
        )?;
    }
    writeln!(out, "deploy them with: {command} (or build with --deploy)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(state: &'static str) -> TagReport {
        TagReport {
            tag: "latest".into(),
            state,
            now: None,
            error: None,
        }
    }

    #[test]
    fn only_a_changed_image_is_deployed() {
        // Built and tagged now, or built with no requested tags (the content tag is new).
        assert!(image_changed(Status::Built, &[tag("moved")]));
        assert!(image_changed(Status::Built, &[]));
        // A rebuild that produced the image the tags already had.
        assert!(!image_changed(Status::Built, &[tag("unchanged")]));
        // A promotion moved a tag to another image.
        assert!(image_changed(
            Status::Promoted,
            &[tag("unchanged"), tag("moved")]
        ));
        // A promotion whose move the read-back does not confirm.
        assert!(!image_changed(Status::Promoted, &[tag("unknown")]));
        // A skip with its tags in place; failures.
        assert!(!image_changed(Status::Skipped, &[tag("unchanged")]));
        assert!(!image_changed(Status::Failed, &[tag("moved")]));
        assert!(!image_changed(Status::Interrupted, &[tag("moved")]));
    }
}
