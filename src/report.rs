//! One [`BuildReport`] per run: what was decided for each service and why, what happened, and where every requested
//! tag ended up. The summary on stderr, `plan`'s output (text and `--json`), `build --dry-run` and
//! `--metadata-file` are all views of it, so they cannot disagree.

use std::io::{self, Write};
use std::time::Duration;

use serde::Serialize;

use crate::digest::Digest;
use crate::plan::{Decision, ServicePlan, Since, short_image};
use crate::registry::promote::{ReadBack, TagMove, TagOutcome};
use crate::state::Changes;

/// How one service ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Status {
    /// Only planned (`plan`, `--dry-run`).
    Planned,
    /// Built now.
    Built,
    /// An image for the inputs existed and every requested tag was on it.
    Skipped,
    /// An image for the inputs existed; requested tags were moved to it.
    Promoted,
    /// Failed (build, check or tag move), or a dependency did.
    Failed,
    /// Not finished: the run was interrupted.
    Interrupted,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Planned => "planned",
            Status::Built => "built",
            Status::Skipped => "skipped",
            Status::Promoted => "promoted",
            Status::Failed => "failed",
            Status::Interrupted => "stopped",
        }
    }
}

/// Where one requested tag ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct TagReport {
    /// The tag.
    pub(crate) tag: String,
    /// `unchanged` (already on the image), `moved`, `failed`, `not-moved`, `unknown`.
    pub(crate) state: &'static str,
    /// What the registry says it points at now, when read back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) now: Option<String>,
    /// Why a move failed or could not be checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// Everything about one service in a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServiceReport {
    /// Service name.
    pub(crate) service: String,
    /// Input digest.
    pub(crate) digest: Digest,
    /// `build` or `skip`.
    pub(crate) decision: &'static str,
    /// Why, in words.
    pub(crate) reason: String,
    /// What changed (since what: `since`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) changes: Option<Changes>,
    /// What the inputs were compared with: the input manifest of the image a requested tag points at, or the last
    /// local build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) since: Option<Since>,
    /// What the input digest covers: the whole context (and why), the paths the Dockerfile reads, or nothing.
    pub(crate) inputs: crate::hash::Reads,
    /// How it ended.
    pub(crate) status: Status,
    /// The image (manifest or index digest) the requested tags are meant to point at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) image: Option<String>,
    /// `registry/repository`.
    pub(crate) repository: String,
    /// The content tag of the inputs (`registry/repository:bo-...`), when pushing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content_tag: Option<String>,
    /// The image is another build's of the same inputs, which tagged it first.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) adopted: bool,
    /// The requested tags.
    pub(crate) tags: Vec<TagReport>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// Where in the Dockerfile it failed, when BuildKit said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) location: Option<Location>,
    /// Problems that did not fail it (a refused cache export, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) warnings: Vec<String>,
    /// Outputs written (`--output`, `outputs`: their paths; `--load`: where it loaded what).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) outputs: Vec<String>,
    /// Time spent on it.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "millis")]
    pub(crate) duration: Option<Duration>,
    /// (cached, completed) build steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cache_hits: Option<(usize, usize)>,
    /// The BuildKit builder that built it (or made its outputs or registry cache), by address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) builder: Option<String>,
    /// What the daemon asked the session for, one record per file transfer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) transfers: Vec<TransferSummary>,
}

/// A place in a file of the workspace: the Dockerfile lines a failure came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Location {
    /// The file, as given in the configuration (absolute).
    pub(crate) file: std::path::PathBuf,
    /// First line, from 1.
    pub(crate) line: u32,
    /// Last line.
    pub(crate) end_line: u32,
}

impl Location {
    /// `FILE:LINE` with the file relative to `base` when it is below it.
    pub(crate) fn relative_to(&self, base: &std::path::Path) -> String {
        let file = self.file.strip_prefix(base).unwrap_or(&self.file);
        format!("{}:{}", file.display(), self.line)
    }
}

/// One file transfer BuildKit asked for, as the session saw it: which local directory, with which paths and
/// patterns, and how much it sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct TransferSummary {
    /// `context` or `dockerfile`.
    pub(crate) local: String,
    /// The paths the Dockerfile frontend derived from the build's `COPY`/`ADD`/mounts (empty: all).
    pub(crate) followpaths: Vec<String>,
    /// Include patterns.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) include: Vec<String>,
    /// Exclude patterns (the `.dockerignore`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) exclude: Vec<String>,
    /// Entries listed.
    pub(crate) entries: usize,
    /// Files whose content was sent.
    pub(crate) files_sent: usize,
    /// Bytes of content sent.
    pub(crate) bytes_sent: u64,
}

impl TransferSummary {
    /// The summary of one session transfer.
    pub(crate) fn of(t: &crate::session::Transfer) -> TransferSummary {
        TransferSummary {
            local: t.local.clone(),
            followpaths: t.followpaths.clone(),
            include: t.include.clone(),
            exclude: t.exclude.clone(),
            entries: t.entries.len(),
            files_sent: t.sent.len(),
            bytes_sent: t.sent.values().map(|c| c.size).sum(),
        }
    }
}

fn millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        None => s.serialize_none(),
    }
}

impl ServiceReport {
    /// A report of the plan alone.
    pub(crate) fn planned(
        plan: &ServicePlan,
        repository: String,
        content_tag: Option<String>,
    ) -> Self {
        let image = match &plan.decision {
            Decision::Skip { image } => Some(image.clone()),
            Decision::Build | Decision::Unchanged => None,
        };
        let decision = plan.decision.as_str();
        ServiceReport {
            service: plan.service.clone(),
            digest: plan.digest,
            decision,
            reason: plan.reason.clone(),
            changes: plan.changes.clone(),
            since: plan.since.clone(),
            inputs: plan.reads.clone(),
            status: Status::Planned,
            image,
            repository,
            content_tag,
            adopted: false,
            tags: Vec::new(),
            error: None,
            location: None,
            warnings: Vec::new(),
            outputs: Vec::new(),
            duration: None,
            cache_hits: None,
            builder: None,
            transfers: Vec::new(),
        }
    }

    /// Records the tag moves of this run, then corrects them with what the registry says now (`read_back`).
    pub(crate) fn set_tags(&mut self, moves: &[TagMove], read_back: &[ReadBack]) {
        self.tags = moves
            .iter()
            .map(|m| {
                let (state, error) = match &m.outcome {
                    TagOutcome::Unchanged => ("unchanged", None),
                    TagOutcome::Moved { .. } => ("moved", None),
                    TagOutcome::Failed { error } => ("failed", Some(error.clone())),
                    TagOutcome::NotAttempted => ("not-moved", None),
                };
                TagReport {
                    tag: m.tag.clone(),
                    state,
                    now: None,
                    error,
                }
            })
            .collect();
        for rb in read_back {
            let report = match self.tags.iter_mut().find(|t| t.tag == rb.tag) {
                Some(r) => r,
                None => {
                    self.tags.push(TagReport {
                        tag: rb.tag.clone(),
                        state: "unknown",
                        now: None,
                        error: None,
                    });
                    self.tags.last_mut().expect("just pushed")
                }
            };
            report.now.clone_from(&rb.now);
            // The registry has the last word: a failed PUT may have landed, an interrupted one may not have.
            report.state = match (rb.moved(), &rb.error) {
                (true, _) => "moved",
                (false, Some(e)) => {
                    report.error.get_or_insert_with(|| e.clone());
                    "unknown"
                }
                (false, None) if report.state == "failed" => "failed",
                (false, None) => "not-moved",
            };
        }
    }

    /// Tags that moved to the image in this run.
    fn moved(&self) -> Vec<&str> {
        self.tags
            .iter()
            .filter(|t| t.state == "moved")
            .map(|t| t.tag.as_str())
            .collect()
    }

    /// Tags that did not end up on the image.
    fn not_moved(&self) -> Vec<String> {
        self.tags
            .iter()
            .filter(|t| matches!(t.state, "failed" | "not-moved" | "unknown"))
            .map(|t| match &t.now {
                Some(now) => format!("{} (still {})", t.tag, short_image(now)),
                None => t.tag.clone(),
            })
            .collect()
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BuildReport {
    /// Services, dependencies first.
    pub(crate) services: Vec<ServiceReport>,
    /// Set when a signal stopped the run: `SIGINT` or `SIGTERM`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) interrupted: Option<&'static str>,
    /// Wall time of the run.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "millis")]
    pub(crate) duration: Option<Duration>,
    /// How many builders the run was configured with (the summary names each service's when more than one).
    #[serde(skip)]
    pub(crate) builders: usize,
}

impl BuildReport {
    /// Whether every service ended well.
    pub(crate) fn succeeded(&self) -> bool {
        self.interrupted.is_none()
            && self
                .services
                .iter()
                .all(|s| !matches!(s.status, Status::Failed | Status::Interrupted))
    }

    /// The decisions, one line each: `build app  no image for inputs ...`.
    pub(crate) fn write_plan(&self, out: &mut dyn Write) -> io::Result<()> {
        let width = self.width();
        for s in &self.services {
            writeln!(out, "{:5} {:width$}  {}", s.decision, s.service, s.reason)?;
        }
        Ok(())
    }

    /// `plan`'s listing: `app  0123456789ab  build: reason`.
    pub(crate) fn write_decisions(&self, out: &mut dyn Write) -> io::Result<()> {
        let width = self.width();
        for s in &self.services {
            writeln!(
                out,
                "{:width$}  {}  {}: {}",
                s.service,
                s.digest.short(),
                s.decision,
                s.reason
            )?;
        }
        Ok(())
    }

    /// The summary after a build: a line per service, and where its tags are when not all moved.
    pub(crate) fn write_summary(&self, out: &mut dyn Write) -> io::Result<()> {
        let width = self.width();
        let several_builders = self.builders > 1;
        for s in &self.services {
            let image = s.image.as_deref().map(short_image).unwrap_or_default();
            let secs = s
                .duration
                .map(|d| format!("  {:.1}s", d.as_secs_f64()))
                .unwrap_or_default();
            let moved = s.moved();
            let detail = match s.status {
                Status::Built if moved.is_empty() && s.adopted => {
                    "  (another build of the same inputs was tagged first; its image is used)"
                        .to_owned()
                }
                Status::Built if moved.is_empty() => String::new(),
                Status::Built => format!(
                    "  ({}{})",
                    moved.join(", "),
                    if s.adopted {
                        "; the image of another build of the same inputs, tagged first"
                    } else {
                        ""
                    }
                ),
                Status::Skipped => "  (unchanged)".to_owned(),
                Status::Promoted => format!(
                    "  ({} -> image for inputs {})",
                    moved.join(", "),
                    s.digest.short()
                ),
                Status::Failed | Status::Interrupted => {
                    let error = s.error.clone().unwrap_or_default();
                    let mut parts = vec![match (&s.location, std::env::current_dir()) {
                        (Some(at), Ok(cwd)) => format!("{}: {error}", at.relative_to(&cwd)),
                        _ => error,
                    }];
                    if !moved.is_empty() {
                        parts.push(format!("moved: {}", moved.join(", ")));
                    }
                    let not = s.not_moved();
                    if !not.is_empty() && (s.image.is_some() || !moved.is_empty()) {
                        parts.push(format!("not moved: {}", not.join(", ")));
                    }
                    format!("  {}", parts.join("; "))
                }
                Status::Planned => format!("  {}", s.reason),
            };
            let (image, secs) = if matches!(s.status, Status::Failed | Status::Interrupted) {
                (String::new(), String::new())
            } else {
                (format!("  {image}"), secs)
            };
            // Which builder, when the run had a choice of several.
            let secs = match &s.builder {
                Some(b) if several_builders => format!("{secs}  on {b}"),
                _ => secs,
            };
            writeln!(
                out,
                "{:9} {:width$}{image}{secs}{detail}",
                s.status.word(),
                s.service
            )?;
            for o in &s.outputs {
                writeln!(out, "{:9} {:width$}  {o}", "wrote", s.service)?;
            }
            for w in &s.warnings {
                writeln!(out, "warning: {}: {w}", s.service)?;
            }
        }
        if let Some(signal) = self.interrupted {
            writeln!(
                out,
                "interrupted by {signal}: unfinished builds were cancelled; the tags above were read back from the registry"
            )?;
        }
        if let Some(d) = self.duration {
            writeln!(out, "total     {:.1}s", d.as_secs_f64())?;
        }
        Ok(())
    }

    /// The `--metadata-file` object: per service, buildx's keys where they overlap, and buildopt's own.
    pub(crate) fn metadata(&self) -> serde_json::Value {
        let services = self.services.iter().map(|s| {
            let names: Vec<String> = s
                .tags
                .iter()
                .map(|t| format!("{}:{}", s.repository, t.tag))
                .collect();
            let value = serde_json::json!({
                "containerimage.digest": s.image,
                "image.name": names.join(","),
                "buildopt.decision": s.status.word(),
                "buildopt.reason": s.reason,
                "buildopt.input-digest": s.digest.to_string(),
                "buildopt.inputs": s.inputs,
                "buildopt.content-tag": s.content_tag,
                "buildopt.tags": s.tags,
                "buildopt.adopted": s.adopted,
                "buildopt.duration-ms": s.duration.map(|d| d.as_millis() as u64),
                "buildopt.cache-hit-ratio": s.cache_hits.filter(|h| h.1 > 0).map(|(c, t)| c as f64 / t as f64),
                "buildopt.builder": s.builder,
                "buildopt.error": s.error,
                "buildopt.warnings": s.warnings,
                "buildopt.outputs": s.outputs,
                "buildopt.transfers": s.transfers,
            });
            (s.service.clone(), value)
        });
        serde_json::Value::Object(services.collect())
    }

    fn width(&self) -> usize {
        self.services
            .iter()
            .map(|s| s.service.len())
            .max()
            .unwrap_or(0)
    }
}
