//! `buildopt hash`: input digests, or the entries one service's digest covers (the context paths its Dockerfile
//! reads, or with `--context` the whole context after `.dockerignore`), in the order the session sends them.

use std::io::Write;

use super::{Context as _, Error, ExitStatus, digest_all, select};
use crate::cli::args::HashArgs;
use crate::config::Workspace;
use crate::hash::listed_entries;
use crate::printer::Printer;

pub(super) fn run(ws: &Workspace, args: &HashArgs, printer: Printer) -> Result<ExitStatus, Error> {
    if let Some(name) = &args.list {
        let svc = select(ws, std::slice::from_ref(name))?
            .into_iter()
            .find(|s| &s.name == name)
            .expect("select returns the named service");
        let (entries, _) = listed_entries(svc, &super::own_dirs(ws), args.context)
            .with_context(|| format!("listing service `{name}`"))?;
        let mut out = printer.stdout();
        for e in &entries {
            out.write_all(&e.list_line())?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        return Ok(ExitStatus::Success);
    }
    let services = select(ws, &args.services)?;
    let digests = digest_all(ws, &services)?;
    let mut out = printer.stdout();
    for (svc, digest) in services.iter().zip(&digests) {
        if args.services.is_empty() || args.services.contains(&svc.name) {
            writeln!(out, "{} {}", svc.name, digest)?;
        }
    }
    Ok(ExitStatus::Success)
}
