//! What a CI system reads from a build, from the same [`BuildReport`] as the summary: on GitHub Actions, step outputs
//! (`GITHUB_OUTPUT`), a job summary table (`GITHUB_STEP_SUMMARY`) and `::error` annotations that point at the
//! Dockerfile line BuildKit named. Each is written only when its variable is set, so the same command line works on
//! any runner.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::report::{BuildReport, ServiceReport, Status};

/// The GitHub Actions outputs of a run, from the environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct GitHub {
    /// `GITHUB_OUTPUT`: the step's output file.
    output: Option<PathBuf>,
    /// `GITHUB_STEP_SUMMARY`: the job summary file (Markdown).
    summary: Option<PathBuf>,
    /// `GITHUB_ACTIONS=true`: annotations are read from the log.
    annotate: bool,
    /// `GITHUB_WORKSPACE`: annotation paths are relative to it.
    workspace: Option<PathBuf>,
}

impl GitHub {
    /// The outputs the environment asks for (none outside GitHub Actions).
    pub(crate) fn from_env() -> GitHub {
        let path = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        GitHub {
            output: path("GITHUB_OUTPUT"),
            summary: path("GITHUB_STEP_SUMMARY"),
            annotate: std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true"),
            workspace: path("GITHUB_WORKSPACE"),
        }
    }

    /// The files this run appends to (never part of a build context).
    pub(crate) fn files(&self) -> impl Iterator<Item = &Path> {
        self.output
            .iter()
            .chain(&self.summary)
            .map(PathBuf::as_path)
    }

    /// Appends the step outputs and the job summary, and writes an annotation per failed service to `log`.
    pub(crate) fn write(&self, report: &BuildReport, log: &mut dyn Write) -> io::Result<()> {
        // Paths are said relative to the checkout, as the runner resolves annotation paths.
        let base = match &self.workspace {
            Some(w) => w.clone(),
            None => std::env::current_dir()?,
        };
        if let Some(path) = &self.output {
            append(path, &outputs(report))?;
        }
        if let Some(path) = &self.summary {
            append(path, &step_summary(report, &base))?;
        }
        if self.annotate {
            for line in annotations(report, &base) {
                writeln!(log, "{line}")?;
            }
        }
        Ok(())
    }
}

/// Appends `text` to the file at `path` (the runner creates it; a missing one is created).
fn append(path: &Path, text: &str) -> io::Result<()> {
    let mut file = fs_err::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// The CI status word of a service: `built`, `skipped`, `promoted`, `failed` (a stopped service counts as failed:
/// it has no image).
fn status(s: &ServiceReport) -> &'static str {
    match s.status {
        Status::Built => "built",
        Status::Skipped => "skipped",
        Status::Promoted => "promoted",
        Status::Failed | Status::Interrupted => "failed",
        Status::Planned => "planned",
    }
}

/// The pullable reference of a service's image: `REGISTRY/REPO:TAG@DIGEST` with its first requested tag (else its
/// content tag), or empty when it has none.
fn image_ref(s: &ServiceReport) -> String {
    let Some(image) = &s.image else {
        return String::new();
    };
    if matches!(s.status, Status::Failed | Status::Interrupted) {
        return String::new();
    }
    match (s.tags.first(), &s.content_tag) {
        (Some(t), _) => format!("{}:{}@{image}", s.repository, t.tag),
        (None, Some(content)) => format!("{content}@{image}"),
        (None, None) => format!("{}@{image}", s.repository),
    }
}

/// `GITHUB_OUTPUT` lines: per service `<service>-image`, `-digest`, `-status`; `built`, `skipped` (promoted
/// included: nothing was built) and `failed` as JSON lists of service names.
fn outputs(report: &BuildReport) -> String {
    let mut out = String::new();
    let mut put = |name: &str, value: &str| {
        if value.contains('\n') {
            // The multi-line form; never needed for these values, but a value must not start a new output.
            let _ = write!(out, "{name}<<buildopt_EOF\n{value}\nbuildopt_EOF\n");
        } else {
            let _ = writeln!(out, "{name}={value}");
        }
    };
    let mut lists: [(&str, Vec<&str>); 3] =
        [("built", vec![]), ("skipped", vec![]), ("failed", vec![])];
    for s in &report.services {
        let word = status(s);
        put(&format!("{}-image", s.service), &image_ref(s));
        let digest = match word {
            "failed" => "",
            _ => s.image.as_deref().unwrap_or_default(),
        };
        put(&format!("{}-digest", s.service), digest);
        put(&format!("{}-status", s.service), word);
        let list = match word {
            "built" => 0,
            "skipped" | "promoted" => 1,
            "failed" => 2,
            _ => continue,
        };
        lists[list].1.push(&s.service);
    }
    for (name, services) in lists {
        put(name, &serde_json::to_string(&services).unwrap_or_default());
    }
    out
}

/// The job summary: a heading with the counts, then a Markdown table (service, status, image, reason, time).
fn step_summary(report: &BuildReport, base: &Path) -> String {
    let count = |w: &[&str]| {
        report
            .services
            .iter()
            .filter(|s| w.contains(&status(s)))
            .count()
    };
    let mut out = format!(
        "### buildopt: {} built, {} skipped, {} failed",
        count(&["built"]),
        count(&["skipped", "promoted"]),
        count(&["failed"])
    );
    if let Some(d) = report.duration {
        let _ = write!(out, " in {:.1}s", d.as_secs_f64());
    }
    if let Some(signal) = report.interrupted {
        let _ = write!(out, " (interrupted by {signal})");
    }
    out.push_str("\n\n| Service | Status | Image | Reason | Time |\n|---|---|---|---|---|\n");
    for s in &report.services {
        let image = image_ref(s);
        let image = if image.is_empty() {
            String::new()
        } else {
            format!("`{image}`")
        };
        let reason = match (&s.error, &s.location) {
            (Some(e), Some(at)) => format!("{}: {e}", at.relative_to(base)),
            (Some(e), None) => e.clone(),
            (None, _) => s.reason.clone(),
        };
        let time = s
            .duration
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {image} | {} | {time} |",
            cell(&s.service),
            status(s),
            cell(&reason)
        );
    }
    out.push('\n');
    out
}

/// Text made safe for one Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

/// One `::error` workflow command per failed service, with `file` and `line` when BuildKit named a Dockerfile line.
fn annotations(report: &BuildReport, base: &Path) -> Vec<String> {
    report
        .services
        .iter()
        .filter(|s| matches!(s.status, Status::Failed | Status::Interrupted))
        .map(|s| {
            let mut props = Vec::new();
            if let Some(at) = &s.location {
                let file = at.file.strip_prefix(base).unwrap_or(&at.file);
                props.push(format!("file={}", property(&file.to_string_lossy())));
                props.push(format!("line={}", at.line));
                if at.end_line != at.line {
                    props.push(format!("endLine={}", at.end_line));
                }
            }
            props.push(format!(
                "title={}",
                property(&format!("buildopt: {} failed", s.service))
            ));
            format!(
                "::error {}::{}",
                props.join(","),
                data(s.error.as_deref().unwrap_or("failed"))
            )
        })
        .collect()
}

/// A workflow command's message, escaped as the runner unescapes it.
fn data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A workflow command's property value, escaped as the runner unescapes it.
fn property(text: &str) -> String {
    data(text).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_text_is_escaped_as_the_runner_unescapes_it() {
        assert_eq!(data("50% done\r\nnext"), "50%25 done%0D%0Anext");
        assert_eq!(property("a:b,c%"), "a%3Ab%2Cc%25");
        assert_eq!(cell("a|b\nc\\"), "a\\|b c\\\\");
    }
}
