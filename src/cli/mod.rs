//! The binary's edge: parse arguments, set up output and the runtime, run a command, turn errors into exit codes.

pub(crate) mod args;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::commands::{self, ExitStatus};
use crate::printer::{Printer, Verbosity};

/// Runs buildopt with `args` (including the program name) and returns the process exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match args::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitStatus::Error.into()
            } else {
                ExitStatus::Success.into()
            };
        }
    };
    let verbosity = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => Verbosity::Quiet,
        (false, 0) => Verbosity::Normal,
        (false, 1) => Verbosity::Verbose,
        (false, _) => Verbosity::Trace,
    };
    let printer = Printer::new(verbosity);
    printer.init_tracing();
    match commands::run(cli, printer) {
        Ok(status) => status.into(),
        Err(err) => {
            let mut out = printer.errors();
            let _ = writeln!(out, "error: {err}");
            // Transport errors often repeat their cause's text, and some errors end with their cause's text
            // (`cannot connect to ...: <why>`): print each distinct line once.
            let mut last = err.to_string();
            for cause in err.chain().skip(1) {
                let text = cause.to_string();
                if !last.ends_with(&text) {
                    let _ = writeln!(out, "  Caused by: {text}");
                }
                last = text;
            }
            err.status().into()
        }
    }
}
