//! Which files of a build context BuildKit gets: the `.dockerignore` the Dockerfile frontend picks, parsed as it
//! parses it, applied by the same walk that both the hasher and the session's file sync use, so what is hashed and
//! what is sent can never disagree. `tests/it/differential.rs` checks all of it against BuildKit's Go code.

mod frontend;
mod goregex;
pub mod gostr;
pub mod pattern;
mod walk;

use std::path::{Path, PathBuf};

pub(crate) use frontend::transfer_filter;
pub use gostr::quote_path;
pub use pattern::{PatternError, PatternMatcher};
pub use walk::{Entry, EntryKind, walk, walk_each};

/// Why a context could not be selected. Everything but [`ContextError::Io`] is a case where BuildKit would fail
/// the build too, so buildopt refuses it up front (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A line of the ignore file is not a pattern BuildKit accepts.
    #[error("{}:{line}: invalid pattern `{text}`: {source}; fix or remove that line", path.display())]
    IgnoreSyntax {
        /// The ignore file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line as written (lossy UTF-8, control characters escaped).
        text: String,
        /// What is wrong with it.
        #[source]
        source: PatternError,
    },
    /// A line of the ignore file is 64 KiB or longer, which the frontend's line scanner refuses.
    #[error("{}:{line}: line is 64 KiB or longer, which BuildKit cannot read (bufio.Scanner: token too long); shorten it", path.display())]
    IgnoreLineTooLong {
        /// The ignore file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A pattern holds a control character, which the gRPC metadata that carries the patterns to the client
    /// refuses (unless some pattern is non-ASCII, which makes BuildKit percent-encode them all).
    #[error("{}:{line}: pattern `{text}` holds a control character, which BuildKit cannot send to its client (gRPC metadata refuses it) and the build would fail; remove it", path.display())]
    IgnoreControlCharacter {
        /// The ignore file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The pattern, with control characters escaped.
        text: String,
    },
    /// The ignore file resolves to a fifo or device, which the daemon would block on or read as a device.
    #[error("{}: the ignore file is a fifo or device, which BuildKit would hang or fail on; make it a regular file", path.display())]
    IgnoreSpecialFile {
        /// The ignore file.
        path: PathBuf,
    },
    /// Fetching the ignore file would fail: the file names it resolves through are not valid patterns for fsutil.
    #[error("{}: BuildKit cannot fetch the ignore file through its symlinks: {reason}; fix the symlink", path.display())]
    IgnoreTransfer {
        /// The ignore file as named.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Patterns given by other means (e.g. sent by the daemon) are invalid.
    #[error("invalid {what} pattern #{}", index + 1)]
    Patterns {
        /// `include` or `exclude`.
        what: &'static str,
        /// Index of the pattern.
        index: usize,
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
        if self.is_refusal() {
            crate::error::ErrorKind::Usage
        } else {
            crate::error::ErrorKind::Failure
        }
    }
}

impl ContextError {
    /// Whether BuildKit would refuse this context too (as opposed to a local I/O failure).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, ContextError::Io { .. })
    }
}

/// Where exclude patterns came from, so that a pattern failing during the walk is reported with its line.
#[derive(Debug, Clone)]
struct Origin {
    path: PathBuf,
    lines: Vec<usize>,
    raw: Vec<Vec<u8>>,
}

/// Include and exclude rules for one walk of a context, as fsutil's `FilterOpt` has them.
#[derive(Debug, Clone, Default)]
pub struct ContextFilter {
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
    only_prefix_includes: bool,
    only_prefix_exclude_exceptions: bool,
    hidden: Vec<Vec<u8>>,
    origin: Option<Origin>,
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

    /// Builds a filter from include patterns (an empty list keeps everything) and exclude patterns, as fsutil's
    /// `NewFilterFS` does.
    pub fn new<S: AsRef<[u8]>>(
        include: &[S],
        exclude: &[S],
    ) -> Result<ContextFilter, ContextError> {
        let compile = |what, patterns: &[S]| -> Result<Option<PatternMatcher>, ContextError> {
            if patterns.is_empty() {
                return Ok(None);
            }
            PatternMatcher::new(patterns)
                .map(Some)
                .map_err(|e| ContextError::Patterns {
                    what,
                    index: e.index,
                    source: e.error,
                })
        };
        let include = compile("include", include)?;
        let exclude = compile("exclude", exclude)?;
        // A directory may only be pruned when every relevant pattern is a plain path (fsutil's `patternChars`).
        let plain = |p: &pattern::Pattern| {
            !p.without_trailing_glob()
                .iter()
                .any(|b| b"*[]?^\\".contains(b))
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
            origin: None,
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

    /// The error for exclude (or include) pattern `index` failing during the walk: with its file and line when the
    /// patterns came from an ignore file.
    pub(crate) fn pattern_failed(
        &self,
        what: &'static str,
        index: usize,
        source: PatternError,
    ) -> ContextError {
        match &self.origin {
            Some(o) if what == "exclude" && index < o.lines.len() => ContextError::IgnoreSyntax {
                path: o.path.clone(),
                line: o.lines[index],
                text: printable(&o.raw[index]),
                source,
            },
            _ => ContextError::Patterns {
                what,
                index,
                source,
            },
        }
    }
}

/// A line for an error message: lossy UTF-8 with control characters escaped.
fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

/// The `.dockerignore` that applies to a build, chosen and parsed as BuildKit's Dockerfile frontend does.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    /// The file the patterns came from, if any.
    pub source: Option<PathBuf>,
    /// The patterns, as `ignorefile.ReadAll` returns them (what the daemon sends as `exclude-patterns`).
    pub patterns: Vec<Vec<u8>>,
    /// For each pattern, its 1-based line in `source`.
    pub lines: Vec<usize>,
    /// The file whose bytes were read: `source` itself, or where it resolves inside its directory when it is a
    /// symlink (resolved as the daemon does, which need not be what the host's kernel would do).
    pub read_from: Option<PathBuf>,
    /// The blake3 of the file's bytes (to check the copy the session sends).
    pub digest: Option<crate::digest::Digest>,
}

impl DockerIgnore {
    /// Finds and parses the ignore file for `dockerfile` building `context`, as the frontend does on the daemon's
    /// copies (BuildKit `frontend/dockerui/config.go`):
    ///
    /// 1. The Dockerfile's directory is fetched with followpaths `[NAME, NAME.dockerignore]` (+ `dockerfile` when
    ///    NAME is `Dockerfile`); if reading `NAME.dockerignore` from that copy succeeds, even when it is empty, it
    ///    is the ignore file.
    /// 2. Otherwise `.dockerignore` is read from a copy of the context fetched with followpaths `[.dockerignore]`,
    ///    and any failure (missing, a directory, a symlink loop or one leaving the context) means no patterns.
    pub fn load(context: &Path, dockerfile: &Path) -> Result<DockerIgnore, ContextError> {
        use std::os::unix::ffi::OsStrExt;
        let dir = dockerfile.parent().unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let name = dockerfile
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let specific = [name.as_slice(), b".dockerignore"].concat();
        let mut follow = vec![name.clone(), specific.clone()];
        if name == b"Dockerfile" {
            follow.push(b"dockerfile".to_vec());
        }
        let specific_path = dir.join(std::ffi::OsStr::from_bytes(&specific));
        if let Some((bytes, read_from)) =
            frontend::read_from_copy(dir, &follow, &specific, &specific_path)?
        {
            return DockerIgnore::parse(specific_path, read_from, &bytes);
        }
        DockerIgnore::load_dir(context)
    }

    /// The `.dockerignore` at the root of `dir` alone, as the frontend reads it for a named local context (which has
    /// no Dockerfile beside it); none when it is missing or empty.
    pub fn load_dir(dir: &Path) -> Result<DockerIgnore, ContextError> {
        let default_path = dir.join(".dockerignore");
        let bytes = frontend::read_from_copy(
            dir,
            &[b".dockerignore".to_vec()],
            b".dockerignore",
            &default_path,
        )?;
        match bytes {
            Some((bytes, read_from)) if !bytes.is_empty() => {
                DockerIgnore::parse(default_path, read_from, &bytes)
            }
            _ => Ok(DockerIgnore::default()),
        }
    }

    /// Parses ignore file content as the frontend does, then checks what the frontend's client would refuse:
    /// the gRPC metadata that carries the patterns, and patternmatcher's construction-time syntax check.
    fn parse(
        path: PathBuf,
        read_from: PathBuf,
        bytes: &[u8],
    ) -> Result<DockerIgnore, ContextError> {
        let (patterns, lines) = read_all(&path, bytes)?;
        let ignore = DockerIgnore {
            source: Some(path),
            patterns,
            lines,
            read_from: Some(read_from),
            digest: Some(crate::digest::Digest::of(bytes)),
        };
        ignore.check_metadata()?;
        ignore.filter()?;
        Ok(ignore)
    }

    /// BuildKit query-escapes every pattern when one has a byte >= 0x80 (`session/filesync`); otherwise they go
    /// raw, and grpc-go refuses a metadata value with a byte < 0x20 or > 0x7e: the build fails (checked against
    /// dockerd 26: `header key "exclude-patterns" contains value with non-printable ASCII characters`).
    fn check_metadata(&self) -> Result<(), ContextError> {
        if self.patterns.iter().flatten().any(|&b| b > 0x7f) {
            return Ok(());
        }
        for (p, &line) in self.patterns.iter().zip(&self.lines) {
            if p.iter().any(|&b| !(0x20..=0x7e).contains(&b)) {
                return Err(ContextError::IgnoreControlCharacter {
                    path: self.source.clone().unwrap_or_default(),
                    line,
                    text: printable(p),
                });
            }
        }
        Ok(())
    }

    /// A filter that applies these patterns as excludes, reporting a failing pattern with its file and line.
    pub fn filter(&self) -> Result<ContextFilter, ContextError> {
        let mut filter = ContextFilter::new(&[] as &[Vec<u8>], &self.patterns);
        if let (Some(path), Err(ContextError::Patterns { index, source, .. })) =
            (&self.source, &filter)
        {
            filter = Err(ContextError::IgnoreSyntax {
                path: path.clone(),
                line: self.lines.get(*index).copied().unwrap_or(0),
                text: printable(&self.patterns[*index]),
                source: source.clone(),
            });
        }
        let mut filter = filter?;
        if let Some(path) = &self.source {
            filter.origin = Some(Origin {
                path: path.clone(),
                lines: self.lines.clone(),
                raw: self.patterns.clone(),
            });
        }
        Ok(filter)
    }
}

/// bufio.Scanner's largest token: a line (without its `\n`) of this many bytes or more is an error.
const MAX_LINE: usize = 64 * 1024;

/// `ignorefile.ReadAll` on raw bytes (invalid UTF-8 is kept byte for byte): lines as `bufio.ScanLines` splits them
/// (a `\r` before `\n` dropped, 64 KiB limit), a UTF-8 BOM dropped from the first line, lines starting with `#`
/// skipped before trimming, Go's `strings.TrimSpace`, a `!` kept in front of the cleaned rest, `filepath.Clean`, one
/// leading `/` removed. Returns the patterns and their 1-based line numbers.
fn read_all(path: &Path, bytes: &[u8]) -> Result<(Vec<Vec<u8>>, Vec<usize>), ContextError> {
    let mut raw_lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if raw_lines.last().is_some_and(|l| l.is_empty()) {
        raw_lines.pop(); // no token after a final newline
    }
    let (mut patterns, mut lines) = (Vec::new(), Vec::new());
    for (idx, raw) in raw_lines.into_iter().enumerate() {
        if raw.len() >= MAX_LINE {
            return Err(ContextError::IgnoreLineTooLong {
                path: path.to_owned(),
                line: idx + 1,
            });
        }
        let mut line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if idx == 0 {
            line = line.strip_prefix(b"\xef\xbb\xbf").unwrap_or(line);
        }
        if line.starts_with(b"#") {
            continue;
        }
        let mut pattern = gostr::trim_space(line);
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern[0] == b'!';
        if invert {
            pattern = gostr::trim_space(&pattern[1..]);
        }
        let mut cleaned = Vec::new();
        if !pattern.is_empty() {
            cleaned = gostr::clean(pattern);
            if cleaned.len() > 1 && cleaned[0] == b'/' {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, b'!');
        }
        patterns.push(cleaned);
        lines.push(idx + 1);
    }
    Ok((patterns, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Vec<Vec<u8>> {
        read_all(Path::new(".dockerignore"), bytes).unwrap().0
    }

    #[test]
    fn ignore_file_parsing() {
        let got = parse(
            b"\xef\xbb\xbf# comment\n  /foo/  \n!./bar\n\n ! baz \r\n./a/../b\n  # not a comment\n",
        );
        assert_eq!(
            got,
            [&b"foo"[..], b"!bar", b"!baz", b"b", b"# not a comment"]
        );
        // Invalid UTF-8 is kept as it is; a BOM on a later line is not dropped.
        assert_eq!(
            parse(b"a\xff\n\xef\xbb\xbfb"),
            [&b"a\xff"[..], b"\xef\xbb\xbfb"]
        );
        assert_eq!(parse(b"a\r\r\n"), [&b"a"[..]]);
        assert_eq!(parse(b"!/\n"), [&b"!/"[..]]);
    }

    #[test]
    fn long_lines_are_refused_like_bufio_scanner() {
        let ok = [vec![b'a'; MAX_LINE - 1], b"\nb".to_vec()].concat();
        assert_eq!(parse(&ok).len(), 2);
        assert_eq!(parse(&vec![b'a'; MAX_LINE - 1]).len(), 1);
        for bad in [
            vec![b'a'; MAX_LINE],
            [vec![b'a'; MAX_LINE], b"\n".to_vec()].concat(),
        ] {
            let err = read_all(Path::new("d"), &bad).unwrap_err();
            assert!(
                matches!(err, ContextError::IgnoreLineTooLong { line: 1, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn ignore_file_errors_name_the_line() {
        let err = DockerIgnore::parse(
            PathBuf::from("ctx/.dockerignore"),
            PathBuf::new(),
            b"ok\n[broken\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "ctx/.dockerignore:2: invalid pattern `[broken`: syntax error in pattern `[broken`; fix or remove that line"
        );
        let err = DockerIgnore::parse(PathBuf::from("d"), PathBuf::new(), b"!\n").unwrap_err();
        assert!(
            err.to_string().starts_with("d:1: invalid pattern `!`"),
            "{err}"
        );
        let err =
            DockerIgnore::parse(PathBuf::from("d"), PathBuf::new(), b"a\n\nx\ty*\n").unwrap_err();
        assert!(
            matches!(err, ContextError::IgnoreControlCharacter { line: 3, .. }),
            "{err}"
        );
        // A non-ASCII pattern makes BuildKit percent-encode every pattern, so the tab travels.
        assert!(
            DockerIgnore::parse(PathBuf::from("d"), PathBuf::new(), "x\ty*\né\n".as_bytes())
                .is_ok()
        );
    }
}
