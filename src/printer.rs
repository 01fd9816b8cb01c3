//! All user-facing output goes through a [`Printer`]: results to stdout, everything for humans to stderr, and
//! `--quiet` silencing the latter. Diagnostics go through `tracing`, set up here too.

use std::io::{self, IsTerminal, Write};

/// Whether stderr gets colour: a terminal, and `NO_COLOR` unset or empty (<https://no-color.org>).
pub(crate) fn colour() -> bool {
    io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// How much to say on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Errors only.
    Quiet,
    /// Normal output.
    Normal,
    /// `-v`: debug diagnostics.
    Verbose,
    /// `-vv`: trace diagnostics.
    Trace,
}

/// The one place output is written.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    verbosity: Verbosity,
}

impl Printer {
    /// A printer at `verbosity`.
    pub fn new(verbosity: Verbosity) -> Printer {
        Printer { verbosity }
    }

    /// The verbosity.
    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// Results (hashes, JSON): always written.
    pub fn stdout(&self) -> impl Write {
        io::stdout().lock()
    }

    /// Messages for humans: dropped under `--quiet`.
    pub fn stderr(&self) -> Box<dyn Write> {
        if self.verbosity == Verbosity::Quiet {
            Box::new(io::sink())
        } else {
            Box::new(io::stderr().lock())
        }
    }

    /// Errors and warnings: always written.
    pub fn errors(&self) -> impl Write {
        io::stderr().lock()
    }

    /// Installs the tracing subscriber: buildopt's own warnings by default (the libraries' only from `-v` on: the
    /// AWS SDK alone logs a warning per credential provider it tries), more with `-v`, overridable with
    /// `BUILDOPT_LOG`. Colour only on a terminal, and never with `NO_COLOR` set.
    pub fn init_tracing(&self) {
        let default = match self.verbosity {
            Verbosity::Quiet => "buildopt=error",
            Verbosity::Normal => "buildopt=warn",
            Verbosity::Verbose => "buildopt=debug,warn",
            Verbosity::Trace => "buildopt=trace,debug",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_env("BUILDOPT_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(io::stderr)
            .with_ansi(colour())
            .with_target(false)
            .without_time()
            .try_init();
    }
}
