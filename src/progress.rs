//! TEMPORARY stub, replaced by the real renderer.
#![allow(missing_docs)]
use crate::buildkit::status::StatusUpdate;
use crate::cli::args::ProgressMode;
use crate::printer::Printer;
use std::io::Write;
pub struct Progress {
    printer: Printer,
}
pub struct ServiceProgress {
    name: String,
    printer: Printer,
}
impl Progress {
    pub fn new(_mode: ProgressMode, printer: Printer) -> Progress {
        Progress { printer }
    }
    pub fn service(&self, name: &str) -> ServiceProgress {
        ServiceProgress {
            name: name.to_owned(),
            printer: self.printer,
        }
    }
}
impl ServiceProgress {
    pub fn update(&mut self, u: &StatusUpdate) {
        for v in &u.vertexes {
            let _ = writeln!(
                self.printer.stderr(),
                "[{}] {} {}",
                self.name,
                v.name,
                if v.completed.is_some() { "done" } else { "" }
            );
        }
        for l in &u.logs {
            let _ = writeln!(
                self.printer.stderr(),
                "[{}] {}",
                self.name,
                String::from_utf8_lossy(&l.data).trim_end()
            );
        }
    }
    pub fn finish(self, outcome: &Result<(), String>) {
        if let Err(e) = outcome {
            let _ = writeln!(self.printer.errors(), "[{}] ERROR: {e}", self.name);
        }
    }
}
