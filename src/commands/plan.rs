//! `buildopt plan`: what a build would do for each service, and why, without building anything. With a
//! `[registry]`, the registry decides (as `build` does); otherwise, or with `--local`, the local state.

use std::io::Write;

use futures::StreamExt;

use super::{CACHE_DIR, ExitStatus, hash_all, registry_setup, select};
use crate::cli::args::{CacheMode, PlanArgs};
use crate::config::Workspace;
use crate::plan::{Decision, ServicePlan, decide, lookup_remote};
use crate::printer::Printer;
use crate::state::StateStore;

pub(super) fn run(ws: &Workspace, args: &PlanArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let services = select(ws, &args.services)?;
    let inputs = hash_all(ws, &services, printer)?;
    let store = StateStore::new(&ws.root.join(CACHE_DIR));
    let plans: Vec<ServicePlan> = match (&ws.registry, args.local) {
        (Some(registry), false) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(async {
                let (_, client) = registry_setup(
                    registry,
                    args.ecr_endpoint.as_deref(),
                    &services,
                    false,
                    printer,
                )
                .await?;
                let check_cache = args.cache_to == CacheMode::Registry;
                let remote = futures::stream::iter(services.iter().zip(&inputs))
                    .map(|(svc, inp)| lookup_remote(&client, svc, &inp.digest, check_cache))
                    .buffered(8)
                    .collect::<Vec<_>>()
                    .await;
                let mut plans = Vec::new();
                for ((svc, inp), r) in services.iter().zip(&inputs).zip(remote) {
                    plans.push(decide(svc, inp, Some(&r?), &store, false));
                }
                Ok::<_, anyhow::Error>(plans)
            });
            runtime.shutdown_background();
            result?
        }
        _ => services
            .iter()
            .zip(&inputs)
            .map(|(svc, inp)| decide(svc, inp, None, &store, false))
            .collect(),
    };
    if args.json {
        let mut out = printer.stdout();
        serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "services": plans }))?;
        writeln!(out)?;
        return Ok(ExitStatus::Success);
    }
    let width = plans.iter().map(|p| p.service.len()).max().unwrap_or(0);
    let mut out = printer.stdout();
    for p in &plans {
        let verb = match p.decision {
            Decision::Build => "build",
            Decision::Skip => "skip",
        };
        writeln!(
            out,
            "{:width$}  {}  {verb}: {}",
            p.service,
            p.digest.short(),
            p.reason
        )?;
    }
    Ok(ExitStatus::Success)
}
