//! Docker's path pattern dialect (`.dockerignore`, and the include/exclude patterns BuildKit sends over the session).
//!
//! This is a from-scratch implementation of the semantics of `github.com/moby/patternmatcher`, which is what
//! BuildKit's file sync (`fsutil`) uses on the client side. It deliberately reproduces that library's behaviour
//! exactly, including its shortcuts (a leading `**` is a plain suffix test, a trailing `**` after literal text is a
//! plain prefix test), because a difference of even one edge case would make buildopt hash a different set of
//! files than BuildKit receives. It is not gitignore: patterns are anchored at the context root, `*` never crosses
//! `/`, and the last matching pattern wins.

use regex::bytes::Regex;

/// An invalid pattern, with the pattern as written.
#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    /// `!` with nothing after it.
    #[error("illegal exclusion pattern: \"!\"")]
    LoneExclamation,
    /// The pattern is not a valid glob (unclosed `[`, trailing `\`, ...).
    #[error("syntax error in pattern `{pattern}`")]
    Syntax {
        /// The cleaned pattern.
        pattern: String,
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
    Regex(Regex),
}

/// One compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: Kind,
}

impl Pattern {
    /// The cleaned pattern, without its `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether this is a `!` exception.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// Does this one pattern match `path` (a clean, `/`-separated relative path)?
    pub fn matches(&self, path: &[u8]) -> bool {
        match &self.kind {
            Kind::Exact => path == self.cleaned.as_bytes(),
            Kind::Prefix(prefix) => path.starts_with(prefix),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix) || (suffix.first() == Some(&b'/') && path == &suffix[1..])
            }
            Kind::Regex(re) => re.is_match(path),
        }
    }

    /// The pattern without a trailing `/**` or `/*`, as fsutil uses it to decide whether a directory can be skipped.
    pub(crate) fn without_trailing_glob(&self) -> &str {
        let p = self.cleaned.as_str();
        let p = p.strip_suffix("/**").unwrap_or(p);
        p.strip_suffix("/*").unwrap_or(p)
    }

    fn compile(cleaned: String, exclusion: bool) -> Result<Pattern, PatternError> {
        validate_glob(&cleaned)?;
        // `[^/]` on text, but also any single byte that is not valid UTF-8 (Go's regexp sees such a byte as one
        // U+FFFD rune, so `?` matches exactly one of them).
        const NOT_SLASH: &str = r"(?:[^/]|(?-u:[\x80-\xff]))";
        let mut re = String::from("^");
        let mut kind_is = KindTag::Exact;
        let chars: Vec<char> = cleaned.chars().collect();
        let mut i = 0;
        let mut first = true;
        while i < chars.len() {
            let ch = chars[i];
            i += 1;
            match ch {
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    // `**/` is the same as `**`.
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i == chars.len() {
                        if kind_is == KindTag::Exact {
                            kind_is = KindTag::Prefix;
                        } else {
                            re.push_str("(?s:.*)");
                            kind_is = KindTag::Regex;
                        }
                    } else {
                        re.push_str("(?s:.*/)?");
                        kind_is = KindTag::Regex;
                    }
                    if first {
                        kind_is = KindTag::Suffix;
                    }
                }
                '*' => {
                    re.push_str(NOT_SLASH);
                    re.push('*');
                    kind_is = KindTag::Regex;
                }
                '?' => {
                    re.push_str(NOT_SLASH);
                    kind_is = KindTag::Regex;
                }
                '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                    re.push('\\');
                    re.push(ch);
                }
                '\\' => {
                    if let Some(&next) = chars.get(i) {
                        i += 1;
                        re.push('\\');
                        re.push(next);
                        kind_is = KindTag::Regex;
                    } else {
                        re.push_str(r"\\");
                    }
                }
                '[' | ']' => {
                    re.push(ch);
                    kind_is = KindTag::Regex;
                }
                // Everything else goes into the regex as written, as in Go (so `^` keeps its regex meaning).
                _ => re.push(ch),
            }
            first = false;
        }
        let kind = match kind_is {
            KindTag::Exact => Kind::Exact,
            KindTag::Prefix => Kind::Prefix(cleaned.as_bytes()[..cleaned.len() - 2].to_vec()),
            KindTag::Suffix => Kind::Suffix(cleaned.as_bytes()[2..].to_vec()),
            KindTag::Regex => {
                re.push('$');
                Kind::Regex(Regex::new(&re).map_err(|_| PatternError::Syntax {
                    pattern: cleaned.clone(),
                })?)
            }
        };
        Ok(Pattern {
            cleaned,
            exclusion,
            kind,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KindTag {
    Exact,
    Prefix,
    Suffix,
    Regex,
}

/// The syntax check Go's `filepath.Match` applies: character classes must be closed and non-empty, and a `\` must
/// escape something.
fn validate_glob(p: &str) -> Result<(), PatternError> {
    let bad = || PatternError::Syntax {
        pattern: p.to_owned(),
    };
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                if i + 1 >= b.len() {
                    return Err(bad());
                }
                i += 2;
            }
            b'[' => {
                i += 1;
                if i < b.len() && b[i] == b'^' {
                    i += 1;
                }
                let start = i;
                loop {
                    if i >= b.len() {
                        return Err(bad());
                    }
                    match b[i] {
                        b']' if i > start => break,
                        b']' => return Err(bad()),
                        b'\\' => i += 2,
                        b'-' if i == start => return Err(bad()),
                        _ => i += 1,
                    }
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Lexical path cleaning with the rules of Go's `path.Clean` (`/`-separated): collapses `//`, removes `.`
/// segments, resolves `..` where it can, removes a trailing `/`, and gives `.` for an empty result.
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|s| *s != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
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

impl PatternMatcher {
    /// Compiles patterns as `patternmatcher.New` does: each is trimmed, cleaned, and a leading `!` marks an
    /// exception. Empty patterns are ignored.
    pub fn new<I, S>(patterns: I) -> Result<PatternMatcher, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut pm = PatternMatcher::default();
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            let p = clean(p);
            let (exclusion, p) = match p.strip_prefix('!') {
                Some("") => return Err(PatternError::LoneExclamation),
                Some(rest) => (true, rest.to_owned()),
                None => (false, p),
            };
            pm.exclusions |= exclusion;
            pm.patterns.push(Pattern::compile(p, exclusion)?);
        }
        Ok(pm)
    }

    /// The compiled patterns, in order.
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
    pub fn matches_or_parent_matches(&self, path: &[u8]) -> bool {
        self.matches_using_parent_results(path, None).0
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
    ) -> (bool, MatchInfo) {
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
                m = pattern.matches(path);
                if !m && parent.is_none() {
                    m = ancestors(path).any(|dir| pattern.matches(dir));
                }
            }
            info.parent_matched[i] = m;
            if m {
                matched = !pattern.exclusion;
            }
        }
        (matched, info)
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
    }

    #[test]
    fn clean_follows_go() {
        assert_eq!(clean("./foo/"), "foo");
        assert_eq!(clean("/foo//bar/../baz"), "/foo/baz");
        assert_eq!(clean("../a"), "../a");
        assert_eq!(clean("a/../.."), "..");
        assert_eq!(clean(""), ".");
        assert_eq!(clean("/"), "/");
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
    }

    #[test]
    fn parents_and_exceptions() {
        assert!(m(&["node_modules"], "node_modules/x/y.js"));
        assert!(!m(&["foo"], "a/foo"));
        assert!(m(
            &["*.md", "!README*.md", "README-secret.md"],
            "README-secret.md"
        ));
        assert!(!m(
            &["*.md", "!README*.md", "README-secret.md"],
            "README.md"
        ));
        assert!(m(
            &["*.md", "!README*.md", "README-secret.md"],
            "CHANGES.md"
        ));
    }

    #[test]
    fn escapes_and_classes() {
        assert!(m(&["a.b"], "a.b"));
        assert!(!m(&["a.b"], "axb"));
        assert!(m(&[r"\*"], "*"));
        assert!(!m(&[r"\*"], "x"));
        assert!(m(&["[ab]x"], "bx"));
        assert!(m(&["[^ab]x"], "cx"));
        assert!(m(&["(x)+{y}$"], "(x)+{y}$"));
        assert!(matches!(
            PatternMatcher::new(["[ab"]),
            Err(PatternError::Syntax { .. })
        ));
        assert!(matches!(
            PatternMatcher::new(["a\\"]),
            Err(PatternError::Syntax { .. })
        ));
        assert!(matches!(
            PatternMatcher::new(["!"]),
            Err(PatternError::LoneExclamation)
        ));
    }

    #[test]
    fn non_utf8_bytes_match_wildcards() {
        let pm = PatternMatcher::new(["a?c", "x*"]).unwrap();
        assert!(pm.matches_or_parent_matches(b"a\xffc"));
        assert!(pm.matches_or_parent_matches(b"x\xfe\xfd"));
        assert!(pm.matches_or_parent_matches("aéc".as_bytes()));
    }

    #[test]
    fn parent_results_reuse() {
        let pm = PatternMatcher::new(["dir", "!dir/keep"]).unwrap();
        let (m_dir, info) = pm.matches_using_parent_results(b"dir", None);
        assert!(m_dir);
        let (m_keep, _) = pm.matches_using_parent_results(b"dir/keep", Some(&info));
        assert!(!m_keep);
        let (m_other, _) = pm.matches_using_parent_results(b"dir/other", Some(&info));
        assert!(m_other);
    }
}
