//! Which files of a build context BuildKit gets: Docker's `.dockerignore` rules applied by the same walk that
//! both the hasher and the session's file sync use, so what is hashed and what is sent can never disagree.

pub mod pattern;
mod walk;

use std::path::{Path, PathBuf};

pub use pattern::{PatternError, PatternMatcher};
pub use walk::{Entry, EntryKind, Skipped, walk};

/// Why a context could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A line of a `.dockerignore` file is not a valid pattern.
    #[error("{}:{line}: invalid pattern `{text}`: {source}; fix or remove that line", path.display())]
    IgnoreSyntax {
        /// The ignore file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line as written.
        text: String,
        /// What is wrong with it.
        #[source]
        source: PatternError,
    },
    /// Patterns given by other means (e.g. sent by the daemon) are invalid.
    #[error("invalid {what} patterns")]
    Patterns {
        /// `include` or `exclude`.
        what: &'static str,
        /// What is wrong.
        #[source]
        source: PatternError,
    },
    /// A file or directory could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl crate::error::Classify for ContextError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            ContextError::IgnoreSyntax { .. } | ContextError::Patterns { .. } => {
                crate::error::ErrorKind::Usage
            }
            ContextError::Io { .. } => crate::error::ErrorKind::Failure,
        }
    }
}

/// Include and exclude rules for one walk of a context, as fsutil's `FilterOpt` has them.
#[derive(Debug, Clone, Default)]
pub struct ContextFilter {
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
    only_prefix_includes: bool,
    only_prefix_exclude_exceptions: bool,
    hidden: Vec<Vec<u8>>,
}

impl ContextFilter {
    /// Leaves out buildopt's own state directories (`own`, absolute) where they lie inside `root`, with everything
    /// below them: they are never part of a context, whatever `.dockerignore` says, or every run would change the
    /// digest it records. Applied alike when hashing and when sending.
    pub fn hide_own(mut self, root: &Path, own: &[PathBuf]) -> ContextFilter {
        use std::os::unix::ffi::OsStrExt;
        for dir in own {
            if let Ok(rel) = dir.strip_prefix(root)
                && !rel.as_os_str().is_empty()
            {
                self.hidden.push(rel.as_os_str().as_bytes().to_vec());
            }
        }
        self
    }

    pub(crate) fn is_hidden(&self, path: &[u8]) -> bool {
        self.hidden.iter().any(|h| h == path)
    }

    /// A filter that keeps everything.
    pub fn all() -> ContextFilter {
        ContextFilter::default()
    }

    /// Builds a filter from include patterns (an empty list keeps everything) and exclude patterns.
    pub fn new<S: AsRef<str>>(include: &[S], exclude: &[S]) -> Result<ContextFilter, ContextError> {
        let compile = |what, patterns: &[S]| -> Result<Option<PatternMatcher>, ContextError> {
            if patterns.is_empty() {
                return Ok(None);
            }
            PatternMatcher::new(patterns)
                .map(Some)
                .map_err(|source| ContextError::Patterns { what, source })
        };
        let include = compile("include", include)?;
        let exclude = compile("exclude", exclude)?;
        // A directory may only be pruned when every relevant pattern is a plain path (fsutil's `patternChars`).
        let plain = |p: &pattern::Pattern| {
            !p.without_trailing_glob()
                .contains(['*', '[', ']', '?', '^', '\\'])
        };
        let only_prefix_includes = include
            .as_ref()
            .is_none_or(|m| m.patterns().iter().filter(|p| !p.is_exclusion()).all(plain));
        let only_prefix_exclude_exceptions = exclude
            .as_ref()
            .is_none_or(|m| m.patterns().iter().filter(|p| p.is_exclusion()).all(plain));
        Ok(ContextFilter {
            include,
            exclude,
            only_prefix_includes,
            only_prefix_exclude_exceptions,
            hidden: Vec::new(),
        })
    }

    pub(crate) fn include(&self) -> Option<&PatternMatcher> {
        self.include.as_ref()
    }

    pub(crate) fn exclude(&self) -> Option<&PatternMatcher> {
        self.exclude.as_ref()
    }

    pub(crate) fn only_prefix_includes(&self) -> bool {
        self.only_prefix_includes
    }

    pub(crate) fn only_prefix_exclude_exceptions(&self) -> bool {
        self.only_prefix_exclude_exceptions
    }
}

/// The `.dockerignore` that applies to a build: `<Dockerfile>.dockerignore` beside the Dockerfile wins over
/// `<context>/.dockerignore`, as in BuildKit's Dockerfile frontend.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    /// The file the patterns came from, if any.
    pub source: Option<PathBuf>,
    /// The patterns, parsed as BuildKit's frontend parses them (what it sends as `exclude-patterns`).
    pub patterns: Vec<String>,
    /// The blake3 of the file's bytes (to check the copy the session sends).
    pub digest: Option<crate::digest::Digest>,
}

impl DockerIgnore {
    /// Finds and parses the ignore file for `dockerfile` building `context`.
    pub fn load(context: &Path, dockerfile: &Path) -> Result<DockerIgnore, ContextError> {
        let mut specific = dockerfile.as_os_str().to_owned();
        specific.push(".dockerignore");
        for candidate in [PathBuf::from(specific), context.join(".dockerignore")] {
            match fs_err::read(&candidate) {
                Ok(bytes) => {
                    let patterns = parse_ignore_file(&candidate, &bytes)?;
                    return Ok(DockerIgnore {
                        source: Some(candidate),
                        patterns,
                        digest: Some(crate::digest::Digest::of(&bytes)),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ContextError::Io {
                        path: candidate,
                        source: e,
                    });
                }
            }
        }
        Ok(DockerIgnore::default())
    }

    /// A filter that applies these patterns as excludes.
    pub fn filter(&self) -> Result<ContextFilter, ContextError> {
        ContextFilter::new::<String>(&[], &self.patterns)
    }
}

/// Parses a `.dockerignore` the way `patternmatcher/ignorefile.ReadAll` does: a UTF-8 BOM on the first line is
/// dropped, lines starting with `#` are comments, lines are trimmed, patterns are cleaned with a leading `/` removed,
/// and `!` is kept. Each pattern is also compiled here, so a bad one is reported with its line.
fn parse_ignore_file(path: &Path, bytes: &[u8]) -> Result<Vec<String>, ContextError> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    for (idx, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.starts_with('#') {
            continue;
        }
        let mut pattern = raw.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = pattern::clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        if let Err(source) = PatternMatcher::new([&cleaned]) {
            return Err(ContextError::IgnoreSyntax {
                path: path.to_owned(),
                line: idx + 1,
                text: raw.to_owned(),
                source,
            });
        }
        out.push(cleaned);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_file_parsing() {
        let got = parse_ignore_file(
            Path::new(".dockerignore"),
            b"\xef\xbb\xbf# comment\n  /foo/  \n!./bar\n\n ! baz \r\n./a/../b\n  # not a comment\n",
        )
        .unwrap();
        assert_eq!(got, ["foo", "!bar", "!baz", "b", "# not a comment"]);
    }

    #[test]
    fn ignore_file_errors_name_the_line() {
        let err = parse_ignore_file(Path::new("ctx/.dockerignore"), b"ok\n[broken\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "ctx/.dockerignore:2: invalid pattern `[broken`: syntax error in pattern `[broken`; fix or remove that line"
        );
        let err = parse_ignore_file(Path::new("d"), b"!\n").unwrap_err();
        assert!(
            err.to_string().starts_with("d:1: invalid pattern `!`"),
            "{err}"
        );
    }
}
