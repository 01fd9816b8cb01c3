//! `buildopt plan`: what a build would do for each service, and why, without building anything. With a
//! `[registry]`, the registry decides (as `build` does); otherwise, or with `--local`, the local state.

use std::io::Write;

use super::{CACHE_DIR, ExitStatus, hash_all, registry_setup, select};
use crate::cli::args::{CacheMode, PlanArgs};
use crate::config::Workspace;
use crate::plan::{ServicePlan, decide, plan_remote};
use crate::printer::Printer;
use crate::state::StateStore;

pub(super) fn run(ws: &Workspace, args: &PlanArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let services = select(ws, &args.services)?;
    let inputs = hash_all(ws, &services)?;
    let store = StateStore::new(&ws.root.join(CACHE_DIR));
    let plans: Vec<ServicePlan> = match (&ws.registry, args.local) {
        (Some(registry), false) => super::block_on(async {
            let (_, client) = registry_setup(
                registry,
                args.ecr_endpoint.as_deref(),
                &services,
                false,
                printer,
            )
            .await?;
            let check_cache = args.cache_to == CacheMode::Registry;
            Ok(plan_remote(&client, &services, &inputs, &store, check_cache, false).await?)
        })?,
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
        let verb = p.decision.as_str();
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
