//! `buildopt plan`: what a build would do for each service, and why, without building anything.

use std::io::Write;

use super::{CACHE_DIR, ExitStatus, hash_all, select};
use crate::cli::args::PlanArgs;
use crate::config::Workspace;
use crate::plan::{Decision, plan_local};
use crate::printer::Printer;
use crate::state::StateStore;

pub(super) fn run(ws: &Workspace, args: &PlanArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let services = select(ws, &args.services)?;
    let inputs = hash_all(ws, &services, printer)?;
    let store = StateStore::new(&ws.root.join(CACHE_DIR));
    let plans = plan_local(&services, &inputs, &store);
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
