//! `buildopt hash`: input digests, or the entries one service's digest covers (the context paths its Dockerfile
//! reads, or with `--context` the whole context after `.dockerignore`), in the order the session sends them.

use std::io::Write;

use super::{Error, ExitStatus, digest_all, select};
use crate::cli::args::HashArgs;
use crate::config::Workspace;
use crate::context::ContextError;
use crate::hash::{HashError, list_entries};
use crate::printer::Printer;

pub(super) fn run(ws: &Workspace, args: &HashArgs, printer: Printer) -> Result<ExitStatus, Error> {
    if let Some(name) = &args.list {
        let svc = select(ws, std::slice::from_ref(name))?
            .into_iter()
            .find(|s| &s.name == name)
            .expect("select returns the named service");
        // Stdout flushes at every line: a write a line was 100k system calls for 100k entries.
        let mut out = std::io::BufWriter::with_capacity(64 << 10, printer.stdout());
        list_entries(svc, &super::own_dirs(ws), args.context, |e| {
            out.write_all(&e.list_line())?;
            out.write_all(b"\n").map_err(ListError::Write)
        })
        .map_err(|e| match e {
            ListError::Hash(e) => Error::from(e).context(format!("listing service `{name}`")),
            ListError::Write(e) => Error::from(e),
        })?;
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

/// Why `hash --list` stopped: the walk, or the output.
enum ListError {
    Hash(HashError),
    Write(std::io::Error),
}

impl From<HashError> for ListError {
    fn from(e: HashError) -> ListError {
        ListError::Hash(e)
    }
}

impl From<ContextError> for ListError {
    fn from(e: ContextError) -> ListError {
        ListError::Hash(e.into())
    }
}

impl From<std::io::Error> for ListError {
    fn from(e: std::io::Error) -> ListError {
        ListError::Write(e)
    }
}
