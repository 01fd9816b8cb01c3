//! Docker's path pattern dialect (`.dockerignore`, and the include/exclude patterns BuildKit sends over the session).
//!
//! A port of `github.com/moby/patternmatcher` v0.6.0, which BuildKit's file sync (`fsutil`) uses on the client side,
//! on raw bytes. It reproduces that library's behaviour exactly, quirks included, because a difference of even one
//! edge case would make buildopt hash a different set of files than BuildKit receives (tests/it/differential.rs
//! checks it against the Go code itself):
//!
//! * A leading `**` is a plain byte-suffix test and a trailing `**` after literal text a plain byte-prefix test.
//! * Only `.+()$` are escaped when a pattern becomes a Go regexp (the library's `shouldEscape` bitmap never marks
//!   bytes >= 64), so `|`, `{n}`, `^`, `\d`, `[[:alpha:]]` keep their Go regexp meaning; `*` and `?` are translated
//!   even inside `[...]`. The regexp is Go's dialect (see [`super::goregex`]) and sees each invalid UTF-8 byte of a
//!   path as one U+FFFD; `**` becomes `.*`, which does not match a newline.
//! * Construction only runs Go's `filepath.Match(pattern, ".")` as a syntax check, which stops at the first chunk
//!   that cannot match `.`. The regexp is compiled when the pattern is first evaluated, so an invalid one is an
//!   error only then ([`PatternError::Regex`]), and never if it is never evaluated.
//!
//! It is not gitignore: patterns are anchored at the context root, `*` never crosses `/`, and the last matching
//! pattern wins.

use std::sync::OnceLock;

use super::goregex::{GoRegex, RegexError};
use super::gostr::{clean, decode_rune, glob_match, go_decode, trim_space};

/// An invalid pattern.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PatternError {
    /// `!` with nothing after it.
    #[error("illegal exclusion pattern: \"!\"")]
    LoneExclamation,
    /// Go's `filepath.Match` rejects the pattern (unclosed `[`, trailing `\`, ...).
    #[error("syntax error in pattern `{pattern}`")]
    Syntax {
        /// The cleaned pattern (lossy UTF-8).
        pattern: String,
    },
    /// The Go regexp the pattern becomes does not compile; found when the pattern is first evaluated.
    #[error("syntax error in pattern `{pattern}` ({source})")]
    Regex {
        /// The cleaned pattern (lossy UTF-8).
        pattern: String,
        /// Go's regexp error.
        #[source]
        source: RegexError,
    },
}

#[derive(Debug, Clone)]
enum Kind {
    /// No wildcard: the path must be equal to the pattern.
    Exact,
    /// Literal text followed by a final `**`: a byte prefix test (so `foo**` also matches `foobar`).
    Prefix(Vec<u8>),
    /// A leading `**`: a byte suffix test, plus `**/foo` matching `foo` itself.
    Suffix(Vec<u8>),
    /// Anything else: the Go regexp (source text kept for the lazy compile).
    Regex(String),
}

/// One pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: Vec<u8>,
    exclusion: bool,
    kind: Kind,
    compiled: OnceLock<Result<GoRegex, RegexError>>,
}

impl Pattern {
    /// The cleaned pattern, without its `!`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.cleaned
    }

    /// Whether this is a `!` exception.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// Does this one pattern match `path` (a clean, `/`-separated relative path)? Fails when the pattern's regexp
    /// does not compile, as Go's `Pattern.match` does.
    pub fn matches(&self, path: &[u8]) -> Result<bool, PatternError> {
        Ok(match &self.kind {
            Kind::Exact => path == self.cleaned.as_slice(),
            Kind::Prefix(prefix) => path.starts_with(prefix),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix) || (suffix.first() == Some(&b'/') && path == &suffix[1..])
            }
            Kind::Regex(source) => {
                let re = self.compiled.get_or_init(|| GoRegex::new(source));
                match re {
                    Ok(re) => re.is_match(&go_decode(path)),
                    Err(e) => {
                        return Err(PatternError::Regex {
                            pattern: String::from_utf8_lossy(&self.cleaned).into_owned(),
                            source: e.clone(),
                        });
                    }
                }
            }
        })
    }

    /// The pattern without a trailing `/**` or `/*`, as fsutil uses it to decide whether a directory can be skipped.
    pub(crate) fn without_trailing_glob(&self) -> &[u8] {
        let p = self.cleaned.as_slice();
        let p = p.strip_suffix(b"/**").unwrap_or(p);
        p.strip_suffix(b"/*").unwrap_or(p)
    }

    /// patternmatcher's `compile`: the kind of test, and for regexps the Go regexp text. It reads the pattern as Go's
    /// `text/scanner` does: rune by rune, an invalid byte as U+FFFD, and a byte order mark at the very start skipped.
    fn new(cleaned: Vec<u8>, exclusion: bool) -> Pattern {
        let mut runes = Vec::new();
        let mut i = 0;
        while i < cleaned.len() {
            let (c, n) = decode_rune(&cleaned[i..]);
            runes.push(c.unwrap_or('\u{fffd}'));
            i += n;
        }
        if runes.first() == Some(&'\u{feff}') {
            runes.remove(0);
        }
        #[derive(PartialEq)]
        enum Tag {
            Exact,
            Prefix,
            Suffix,
            Regex,
        }
        let mut tag = Tag::Exact;
        let mut re = String::from("^");
        let mut it = runes.iter().copied().peekable();
        let mut first = true;
        while let Some(ch) = it.next() {
            match ch {
                '*' if it.peek() == Some(&'*') => {
                    it.next();
                    // `**/` is the same as `**`.
                    if it.peek() == Some(&'/') {
                        it.next();
                    }
                    if it.peek().is_none() {
                        if tag == Tag::Exact {
                            tag = Tag::Prefix;
                        } else {
                            re.push_str(".*");
                            tag = Tag::Regex;
                        }
                    } else {
                        re.push_str("(.*/)?");
                        tag = Tag::Regex;
                    }
                    if first {
                        tag = Tag::Suffix;
                    }
                }
                '*' => {
                    re.push_str("[^/]*");
                    tag = Tag::Regex;
                }
                '?' => {
                    re.push_str("[^/]");
                    tag = Tag::Regex;
                }
                '.' | '+' | '(' | ')' | '$' => {
                    re.push('\\');
                    re.push(ch);
                }
                '\\' => match it.next() {
                    Some(next) => {
                        re.push('\\');
                        re.push(next);
                        tag = Tag::Regex;
                    }
                    // A trailing `\` stays, and escapes the `$` added below.
                    None => re.push('\\'),
                },
                '[' | ']' => {
                    re.push(ch);
                    tag = Tag::Regex;
                }
                _ => re.push(ch),
            }
            first = false;
        }
        let kind = match tag {
            Tag::Exact => Kind::Exact,
            Tag::Prefix => Kind::Prefix(cleaned[..cleaned.len() - 2].to_vec()),
            Tag::Suffix => Kind::Suffix(cleaned[2..].to_vec()),
            Tag::Regex => {
                re.push('$');
                Kind::Regex(re)
            }
        };
        Pattern {
            cleaned,
            exclusion,
            kind,
            compiled: OnceLock::new(),
        }
    }
}

/// Per-pattern results for a directory, handed to its children (patternmatcher's `MatchInfo`).
#[derive(Debug, Clone, Default)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// An ordered list of patterns where the last applicable one wins.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

/// A pattern that failed, with its index among the patterns given to [`PatternMatcher::new`].
#[derive(Debug, Clone)]
pub struct IndexedError {
    /// Index of the pattern.
    pub index: usize,
    /// What is wrong with it.
    pub error: PatternError,
}

impl PatternMatcher {
    /// Compiles patterns as `patternmatcher.New` does: each is trimmed (Go's `strings.TrimSpace`), cleaned
    /// (`filepath.Clean`), a leading `!` marks an exception, and Go's `filepath.Match(p, ".")` checks the syntax.
    /// Empty patterns are ignored.
    pub fn new<I, S>(patterns: I) -> Result<PatternMatcher, IndexedError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut pm = PatternMatcher::default();
        for (index, p) in patterns.into_iter().enumerate() {
            let p = trim_space(p.as_ref());
            if p.is_empty() {
                continue;
            }
            let p = clean(p);
            let (exclusion, p) = match p.strip_prefix(b"!") {
                Some(b"") => {
                    return Err(IndexedError {
                        index,
                        error: PatternError::LoneExclamation,
                    });
                }
                Some(rest) => (true, rest.to_vec()),
                None => (false, p),
            };
            if glob_match(&p, b".").is_err() {
                return Err(IndexedError {
                    index,
                    error: PatternError::Syntax {
                        pattern: String::from_utf8_lossy(&p).into_owned(),
                    },
                });
            }
            pm.exclusions |= exclusion;
            pm.patterns.push(Pattern::new(p, exclusion));
        }
        Ok(pm)
    }

    /// The patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// True when there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern is a `!` exception.
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Does `path` match, considering every parent directory of `path` too (`MatchesOrParentMatches`)?
    pub fn matches_or_parent_matches(&self, path: &[u8]) -> Result<bool, IndexedError> {
        Ok(self.matches_using_parent_results(path, None)?.0)
    }

    /// Like [`PatternMatcher::matches_or_parent_matches`], reusing the results of the parent directory
    /// (`MatchesUsingParentResults`). With `parent = None`, every ancestor of `path` is tested instead.
    ///
    /// Note the subtlety this keeps from the Go code: a pattern that was skipped for the parent (because it could not
    /// change the outcome there) is later tested against the child path alone.
    pub fn matches_using_parent_results(
        &self,
        path: &[u8],
        parent: Option<&MatchInfo>,
    ) -> Result<(bool, MatchInfo), IndexedError> {
        let parent = parent.filter(|p| p.parent_matched.len() == self.patterns.len());
        let mut matched = false;
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut m = parent.is_some_and(|p| p.parent_matched[i]);
            if !m {
                if pattern.exclusion != matched {
                    continue;
                }
                m = pattern
                    .matches(path)
                    .map_err(|error| IndexedError { index: i, error })?;
                if !m && parent.is_none() {
                    // Go ignores errors here; the pattern compiled fine for `path` itself just above.
                    m = ancestors(path).any(|dir| pattern.matches(dir).unwrap_or(false));
                }
            }
            info.parent_matched[i] = m;
            if m {
                matched = !pattern.exclusion;
            }
        }
        Ok((matched, info))
    }
}

/// `a`, `a/b` for `a/b/c` (every proper ancestor, shortest first).
fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str], path: &str) -> bool {
        PatternMatcher::new(patterns)
            .unwrap()
            .matches_or_parent_matches(path.as_bytes())
            .unwrap()
    }

    #[test]
    fn star_does_not_cross_slash() {
        assert!(m(&["*.md"], "README.md"));
        assert!(!m(&["*.md"], "docs/README.md"));
        assert!(m(&["*/temp*"], "somedir/temporary.txt"));
        assert!(m(&["*/temp*"], "somedir/temp"));
        assert!(!m(&["*/temp*"], "temp"));
        assert!(m(&["*/*/temp*"], "a/b/temp.txt"));
        assert!(m(&["temp?"], "temp1"));
        assert!(!m(&["temp?"], "temp12"));
    }

    #[test]
    fn double_star() {
        assert!(m(&["**/*.go"], "a/b/c.go"));
        assert!(m(&["**/*.go"], "c.go"));
        assert!(m(&["**/foo"], "foo"));
        assert!(m(&["**/foo"], "x/y/foo"));
        assert!(!m(&["**/foo"], "x/yfoo"));
        // A leading `**` without a slash is a plain suffix test in patternmatcher.
        assert!(m(&["**foo"], "barfoo"));
        assert!(m(&["foo/**"], "foo/x"));
        assert!(!m(&["foo/**"], "foo"));
        // A trailing `**` after literal text is a byte prefix test.
        assert!(m(&["foo**"], "foobar/x"));
        assert!(m(&["a/**/b"], "a/b"));
        assert!(m(&["a/**/b"], "a/x/y/b"));
        assert!(m(&["**"], "anything/at/all"));
        // `.*` does not match a newline in Go.
        assert!(!m(&["a/**/b"], "a/x\ny/b"));
    }

    #[test]
    fn parents_and_exceptions() {
        assert!(m(&["node_modules"], "node_modules/x/y.js"));
        assert!(!m(&["foo"], "a/foo"));
        let docs = ["*.md", "!README*.md", "README-secret.md"];
        assert!(m(&docs, "README-secret.md"));
        assert!(!m(&docs, "README.md"));
        assert!(m(&docs, "CHANGES.md"));
    }

    #[test]
    fn only_some_regexp_characters_are_escaped() {
        assert!(m(&["a.b"], "a.b"));
        assert!(!m(&["a.b"], "axb"));
        assert!(m(&[r"\*"], "*"));
        assert!(!m(&[r"\*"], "x"));
        assert!(m(&["[ab]x"], "bx"));
        assert!(m(&["[^ab]x"], "cx"));
        // Without a wildcard the pattern is compared as bytes.
        assert!(m(&["(x)+{y}|$"], "(x)+{y}|$"));
        // With one, `|` and `{}` are regexp syntax: `^a[^/]*|b$`, and `x{2}`.
        assert!(m(&["a*|b"], "zzb"));
        assert!(m(&["?x{2}"], "axx"));
        assert!(!m(&["?x{2}"], "ax{2}"));
        assert!(m(&[r"?\d"], "a7"));
    }

    #[test]
    fn syntax_errors_at_construction_and_at_first_use() {
        let err = |p: &str| PatternMatcher::new([p]).unwrap_err().error;
        assert!(matches!(err("[ab"), PatternError::Syntax { .. }));
        assert!(matches!(err("a\\"), PatternError::Syntax { .. }));
        assert!(matches!(err("!"), PatternError::LoneExclamation));
        // filepath.Match stops at the first chunk that cannot match ".": this is accepted, and fails when used.
        let pm = PatternMatcher::new(["a*["]).unwrap();
        let e = pm.matches_or_parent_matches(b"x").unwrap_err();
        assert!(matches!(e.error, PatternError::Regex { .. }), "{e:?}");
        // An exception that is never evaluated never fails.
        let pm = PatternMatcher::new(["x", "!a*["]).unwrap();
        assert!(!pm.matches_or_parent_matches(b"y").unwrap());
    }

    #[test]
    fn non_utf8_bytes_match_wildcards_as_one_rune_each() {
        let pm = PatternMatcher::new(["a?c", "x*"]).unwrap();
        assert!(pm.matches_or_parent_matches(b"a\xffc").unwrap());
        assert!(pm.matches_or_parent_matches(b"x\xfe\xfd").unwrap());
        assert!(pm.matches_or_parent_matches("aéc".as_bytes()).unwrap());
        // A truncated sequence is two invalid bytes, so two runes.
        assert!(!pm.matches_or_parent_matches(b"a\xe2\x82c").unwrap());
        let pm = PatternMatcher::new([b"a\xff*".as_slice()]).unwrap();
        assert!(pm.matches_or_parent_matches(b"a\xfez").unwrap());
    }

    #[test]
    fn parent_results_reuse() {
        let pm = PatternMatcher::new(["dir", "!dir/keep"]).unwrap();
        let (m_dir, info) = pm.matches_using_parent_results(b"dir", None).unwrap();
        assert!(m_dir);
        let (m_keep, _) = pm
            .matches_using_parent_results(b"dir/keep", Some(&info))
            .unwrap();
        assert!(!m_keep);
        let (m_other, _) = pm
            .matches_using_parent_results(b"dir/other", Some(&info))
            .unwrap();
        assert!(m_other);
    }
}
