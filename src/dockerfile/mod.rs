//! Which paths of the build context a Dockerfile build can read, worked out as BuildKit's Dockerfile frontend
//! (`dockerfile.v0`) works them out before it asks the client for the context.
//!
//! When the stages a build needs never copy the whole context, the frontend gives the main context's local source
//! `FollowPaths`: the sorted, cleaned paths that `COPY`/`ADD` sources and `RUN --mount` sources name (see
//! `dockerfile2llb/convert.go`, `ctxPaths`). The client then sends only those paths. [`predict`] computes that list
//! from the Dockerfile, the target and the build arguments, so a digest over exactly those inputs changes when, and
//! only when, something the build can read changes.
//!
//! Anything not fully understood gives [`Prediction::Fallback`] with the reason, and the caller must then treat the
//! whole context as read: a wrong guess would skip a build whose inputs changed.
//!
//! ```text
//! let p = predict(b"FROM scratch\nARG SRC=src\nCOPY Cargo.toml $SRC /app/\n", None, &BTreeMap::new());
//! // Prediction::Paths: ["Cargo.toml" (read by `COPY Cargo.toml $SRC /app/` in stage stage-0), "src" (the same)]
//! assert_eq!(p.followpaths(), Some(vec!["Cargo.toml".to_owned(), "src".to_owned()]));
//! ```
//!
//! The layers: `parser` (text to nodes), `lex` (variable expansion), `instructions` (typed instructions and flags),
//! `predict` (stages, arguments, reachability, context paths).
//!
//! Known limits (each documented where it applies): `ONBUILD` triggers stored in a *base image's* config are not
//! visible here (only those of stages in the same Dockerfile are); the `# syntax=` frontends trusted to behave like
//! the built-in one are listed in [`COMPATIBLE_FRONTENDS`]. Callers that build should compare what the daemon
//! actually asked for with the prediction ([`Prediction::agrees_with`]) before trusting a digest made from it.

mod instructions;
mod lex;
mod parser;
mod predict;

use std::collections::BTreeMap;
use std::fmt;

pub(crate) use instructions::go_csv_fields;
pub use predict::predict_with;

/// `# syntax=` values that run a frontend with the same context-path rules as the frontend built into BuildKit, so
/// a prediction holds for them: `docker/dockerfile:1` and `docker/dockerfile:1.N[.M]` for N >= 4 (heredocs and the
/// current `RUN --mount` handling), with or without `docker.io/` and a `@sha256:` pin. The `-labs` variants are
/// not among them: their `COPY --parents` changes which paths a copy names. Any other image falls back.
pub const COMPATIBLE_FRONTENDS: &str = "docker/dockerfile:1, docker/dockerfile:1.N and 1.N.M (N >= 4), optionally docker.io/-prefixed and @sha256-pinned";

/// What the prediction needs besides the Dockerfile.
#[derive(Debug, Clone, Copy)]
pub struct PredictOptions<'a> {
    /// The stage to build (`target`); `None` builds the last stage.
    pub target: Option<&'a str>,
    /// The build arguments sent to the frontend (`build-arg:NAME`).
    pub build_args: &'a BTreeMap<String, String>,
    /// The daemon's platform (`BUILDPLATFORM`), e.g. `linux/amd64`; `None`: unknown, so a path that depends on
    /// `BUILD*` arguments falls back.
    pub build_platform: Option<&'a str>,
    /// The `platform` sent to the frontend (`TARGETPLATFORM`); `None`: none was sent, so BuildKit builds for the
    /// daemon's platform.
    pub target_platform: Option<&'a str>,
}

/// [`predict_with`] without platform knowledge: `TARGET*`/`BUILD*` arguments count as unknown.
pub fn predict(
    dockerfile: &[u8],
    target: Option<&str>,
    build_args: &BTreeMap<String, String>,
) -> Prediction {
    predict_with(
        dockerfile,
        &PredictOptions {
            target,
            build_args,
            build_platform: None,
            target_platform: None,
        },
    )
}

/// The context paths a build reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prediction {
    /// BuildKit sends `followpaths` = exactly these paths (sorted, cleaned, relative; they may hold wildcards), and
    /// the client sends them, their parent directories and the targets of symlinks among them.
    Paths(Vec<ContextPath>),
    /// A source names the context root (`COPY . .`, a bind mount without `source`, a `tmpfs` mount): the whole
    /// context is sent. The readers are the instructions that name the root.
    Whole(Vec<Reader>),
    /// No stage that is built reads the context: BuildKit never asks for it (only `.dockerignore` is fetched).
    Nothing,
    /// Not fully understood: the caller must count the whole context as read.
    Fallback(Fallback),
}

/// One path of [`Prediction::Paths`] and who reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextPath {
    /// As BuildKit sends it in `followpaths` (`src`, `*.json`, `a b`).
    pub path: String,
    /// The instructions that name it, in build order.
    pub readers: Vec<Reader>,
}

/// An instruction that reads from the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    /// The stage, by name or as `stage-N` (0-based), as BuildKit names stages.
    pub stage: String,
    /// The instruction as written (`COPY ${SRC_DIR} ./src`); `ONBUILD` triggers say so.
    pub instruction: String,
    /// Its line in the Dockerfile (1-based).
    pub line: usize,
}

/// Why a prediction fell back to the whole context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The line it concerns, if one.
    pub line: Option<usize>,
    /// The instruction as written, if one.
    pub instruction: Option<String>,
    /// What was not understood.
    pub reason: FallbackReason,
}

/// The kinds of [`Fallback`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FallbackReason {
    /// The Dockerfile is not UTF-8 text.
    #[error("the Dockerfile is not UTF-8 text")]
    NotUtf8,
    /// A `# syntax=` directive or `BUILDKIT_SYNTAX` runs a frontend image whose rules are not known.
    #[error(
        "{source_of} selects the frontend image {image}, whose rules buildopt does not know (known: {COMPATIBLE_FRONTENDS})"
    )]
    Frontend {
        /// `# syntax=` or `build argument BUILDKIT_SYNTAX`.
        source_of: &'static str,
        /// The image.
        image: String,
    },
    /// BuildKit rejects the Dockerfile (the build will fail), so no prediction is made.
    #[error("BuildKit rejects it: {0}")]
    Rejected(String),
    /// Something BuildKit versions disagree on, or that buildopt does not model.
    #[error("not modelled: {0}")]
    Unsupported(String),
    /// A path depends on a value the Dockerfile does not determine.
    #[error("{0}")]
    Unresolved(String),
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, &self.instruction) {
            (Some(line), Some(text)) => write!(f, "line {line} `{text}`: {}", self.reason),
            (Some(line), None) => write!(f, "line {line}: {}", self.reason),
            _ => write!(f, "{}", self.reason),
        }
    }
}

impl fmt::Display for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in stage {} (line {})",
            self.instruction, self.stage, self.line
        )
    }
}

/// What a caller hashes: the view of a [`Prediction`] with fallbacks folded into the whole context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads<'a> {
    /// Nothing from the context.
    Nothing,
    /// Everything (after `.dockerignore`).
    Whole,
    /// These paths (as `followpaths`: with their parents and symlink targets, wildcards matched as BuildKit does).
    Paths(&'a [ContextPath]),
}

impl Prediction {
    /// What to treat as read; a fallback reads everything.
    pub fn reads(&self) -> Reads<'_> {
        match self {
            Prediction::Paths(p) => Reads::Paths(p),
            Prediction::Whole(_) | Prediction::Fallback(_) => Reads::Whole,
            Prediction::Nothing => Reads::Nothing,
        }
    }

    /// The `followpaths` of the main context transfer BuildKit will ask for: `None` when it asks for no context
    /// transfer, an empty list for the whole context. `None` too for a fallback, which predicts nothing.
    pub fn followpaths(&self) -> Option<Vec<String>> {
        match self {
            Prediction::Paths(p) => Some(p.iter().map(|c| c.path.clone()).collect()),
            Prediction::Whole(_) => Some(Vec::new()),
            Prediction::Nothing | Prediction::Fallback(_) => None,
        }
    }

    /// The fallback, if this is one.
    pub fn fallback(&self) -> Option<&Fallback> {
        match self {
            Prediction::Fallback(f) => Some(f),
            _ => None,
        }
    }

    /// Whether what the daemon asked for is what was predicted: `transfer` is the `followpaths` of the main context
    /// transfer (empty: the whole context), or `None` when there was no such transfer. A fallback agrees with
    /// anything, as the whole context was counted.
    pub fn agrees_with(&self, transfer: Option<&[String]>) -> bool {
        match (self, transfer) {
            (Prediction::Fallback(_), _) => true,
            (Prediction::Nothing, None) => true,
            (Prediction::Whole(_), Some(t)) => t.is_empty(),
            (Prediction::Paths(p), Some(t)) => {
                p.len() == t.len() && p.iter().zip(t).all(|(a, b)| &a.path == b)
            }
            _ => false,
        }
    }

    /// The instructions that read `changed` (a `/`-separated path relative to the context), for explanations like
    /// "src/lib.rs changed; read by COPY ${SRC_DIR} ./src in stage build". A path is read when a context path
    /// matches it or one of its parent directories, as the client's filter decides. Empty after a fallback.
    pub fn explain(&self, changed: &str) -> Vec<&Reader> {
        match self {
            Prediction::Whole(readers) => readers.iter().collect(),
            Prediction::Paths(paths) => paths
                .iter()
                .filter(|p| {
                    crate::context::PatternMatcher::new([p.path.as_str()]).is_ok_and(|m| {
                        m.matches_or_parent_matches(changed.as_bytes())
                            .unwrap_or(false)
                    })
                })
                .flat_map(|p| &p.readers)
                .collect(),
            Prediction::Nothing | Prediction::Fallback(_) => Vec::new(),
        }
    }
}

impl fmt::Display for Prediction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prediction::Paths(paths) => {
                for (i, p) in paths.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    let first = p
                        .readers
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    write!(f, "{}: read by {first}", p.path)?;
                    if p.readers.len() > 1 {
                        write!(f, " and {} more", p.readers.len() - 1)?;
                    }
                }
                Ok(())
            }
            Prediction::Whole(readers) => match readers.first() {
                Some(r) => write!(f, "the whole context: read by {r}"),
                None => write!(f, "the whole context"),
            },
            Prediction::Nothing => write!(f, "nothing from the context"),
            Prediction::Fallback(why) => write!(f, "the whole context (fallback: {why})"),
        }
    }
}

/// The stage names (`FROM ... AS NAME`, lowercased) of a Dockerfile; empty when it cannot be parsed. A named build
/// context of the same name would replace the whole stage, so callers use this to keep theirs apart.
pub fn stage_names(dockerfile: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(dockerfile);
    let Ok(ast) = parser::parse(&text) else {
        return Vec::new();
    };
    ast.nodes
        .iter()
        .filter_map(|node| match instructions::instruction(node) {
            Ok(instructions::Instruction {
                kind: instructions::Kind::From { name, .. },
                ..
            }) => name,
            _ => None,
        })
        .collect()
}
