//! `buildopt plan`: what a build would do for each service, and why, without building anything. With a
//! `[registry]`, the registry decides (as `build` does, checking the images it would skip to); otherwise, or with
//! `--local`, the local state.

use std::io::Write;

use super::{CACHE_DIR, Error, ExitStatus, hash_in_background, hashed, registry_setup, select};
use crate::cli::args::{CacheMode, PlanArgs};
use crate::config::Workspace;
use crate::plan::{ServicePlan, decide, plan_remote};
use crate::printer::Printer;
use crate::registry::content_tag;
use crate::report::{BuildReport, ServiceReport};
use crate::state::StateStore;

pub(super) fn run(ws: &Workspace, args: &PlanArgs, printer: Printer) -> Result<ExitStatus, Error> {
    let services = select(ws, &args.services)?;
    let store = StateStore::new(&ws.root.join(CACHE_DIR));
    let plans: Vec<ServicePlan> = std::thread::scope(|scope| {
        let (rx, hashing) = hash_in_background(scope, ws, &services, &[]);
        let Some(registry) = ws.registry.as_ref().filter(|_| !args.local) else {
            drop(rx);
            let inputs = hashed(hashing)?;
            return Ok::<_, Error>(
                services
                    .iter()
                    .zip(&inputs)
                    .map(|(svc, inp)| decide(svc, inp, None, None, &store, false))
                    .collect(),
            );
        };
        // The registry's answers for each service as soon as it is hashed; errors of the hashing first.
        let plans = super::block_on(async {
            let setup = registry_setup(
                registry,
                args.ecr_endpoint.as_deref(),
                &services,
                false,
                printer,
            )
            .await?;
            let check_cache = args.cache_to == CacheMode::Registry;
            Ok(plan_remote(
                &setup.verifier,
                &services,
                tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
                &store,
                check_cache,
                false,
            )
            .await?)
        });
        hashed(hashing)?;
        Ok(plans?.into_iter().flatten().collect())
    })?;
    let report = BuildReport {
        services: services
            .iter()
            .zip(&plans)
            .map(|(svc, plan)| {
                let (repository, content) = match &ws.registry {
                    Some(r) => (
                        format!("{}/{}", r.url, svc.image),
                        Some(r.reference(&svc.image, &content_tag(&plan.digest))),
                    ),
                    None => (svc.image.clone(), None),
                };
                ServiceReport::planned(plan, repository, content)
            })
            .collect(),
        interrupted: None,
        duration: None,
        builders: 0,
    };
    let mut out = printer.stdout();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        report.write_decisions(&mut out)?;
    }
    Ok(ExitStatus::Success)
}
