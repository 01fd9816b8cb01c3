//! What kind of failure an error is. Every error type of the library says whether it is a mistake in how buildopt
//! was called or configured (a usage error, exit code 2: nothing was built or moved) or a failure of the work
//! itself (exit code 1), so the command line never has to guess from a list of types.

/// The two kinds of failure, by exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad arguments, configuration, credentials or setup: fix the input and run again (exit 2).
    Usage,
    /// The work failed (a build, the daemon, the network) (exit 1).
    Failure,
}

/// An error that knows its [`ErrorKind`].
pub trait Classify {
    /// Usage or failure.
    fn kind(&self) -> ErrorKind;
}

impl Classify for std::io::Error {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Failure
    }
}

impl Classify for serde_json::Error {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Failure
    }
}

/// An error and its causes on one line, each distinct message once (for summaries with one line per item).
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
