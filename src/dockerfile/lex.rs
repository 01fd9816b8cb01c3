//! Variable expansion and word splitting with the rules of BuildKit's shell lexer
//! (`frontend/dockerfile/shell/lex.go`): quotes, the escape character, `$VAR`, `${VAR}` and the modifiers
//! `${VAR:-w}`, `${VAR-w}`, `${VAR:+w}`, `${VAR+w}`, `${VAR:?m}`, `${VAR?m}`, `${VAR#p}`, `${VAR##p}`, `${VAR%p}`,
//! `${VAR%%p}`, `${VAR/p/r}` and `${VAR//p/r}`.
//!
//! One thing is ours: a variable's value may be *unknown* (it may come from a base image's environment, or from the
//! daemon's platform when the caller did not say it). Expansion then still runs, so that syntax errors are found, but
//! a result that depends on an unknown value is [`Value::Unknown`] with the reason, and the caller falls back instead
//! of guessing.

use regex::Regex;

/// What the lexer was asked to do that BuildKit rejects; the message is BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct LexError(pub(crate) String);

/// The value of a variable, as far as the Dockerfile tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Set, to this value (which may be empty).
    Set(String),
    /// Not set.
    Unset,
    /// It may or may not be set, or has a value we cannot know; the reason says why.
    Unknown(String),
}

/// A source of variable values (the environment of a stage, or the global build arguments).
pub(crate) trait Vars {
    /// The value of `name` (names are case-sensitive, as on Linux).
    fn lookup(&self, name: &str) -> Lookup;
}

/// No variable is set.
pub(crate) struct NoVars;

impl Vars for NoVars {
    fn lookup(&self, _: &str) -> Lookup {
        Lookup::Unset
    }
}

/// The result of expanding a word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// Exactly this text.
    Known(String),
    /// Depends on something we cannot know; the reason says what.
    Unknown(String),
}

/// A lexer configuration; the flags are those of BuildKit's `shell.Lex`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lexer {
    escape: char,
    /// Keep quote characters in the result.
    pub(crate) raw_quotes: bool,
    /// Keep escape characters in the result.
    pub(crate) raw_escapes: bool,
    /// Treat quotes as ordinary characters.
    pub(crate) skip_quotes: bool,
    /// Leave references to unset variables as written.
    pub(crate) skip_unset: bool,
}

impl Lexer {
    /// A lexer with the given escape character (`\` or the `# escape=` one) and every flag off, as the frontend
    /// uses it for instruction arguments.
    pub(crate) fn new(escape: char) -> Lexer {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_quotes: false,
            skip_unset: false,
        }
    }

    /// `ProcessWord`: expands `word` as one word (spaces are kept).
    pub(crate) fn word(&self, word: &str, vars: &dyn Vars) -> Result<Value, LexError> {
        Ok(self.process(word, vars)?.0.into_value())
    }

    /// `ProcessWords`: expands `word` and splits the result into words (quoted spaces do not split). Unknown values
    /// count as empty; callers use it only where nothing can be unknown.
    pub(crate) fn words(&self, word: &str, vars: &dyn Vars) -> Result<Vec<String>, LexError> {
        Ok(self.process(word, vars)?.1)
    }

    fn process(&self, word: &str, vars: &dyn Vars) -> Result<(Piece, Vec<String>), LexError> {
        ShellWord::new(*self, word, vars)
            .process_stop_on(None, self.raw_escapes)
            .map_err(|e| {
                LexError(format!(
                    "failed to process \"{}\": {}",
                    go_quote_body(word),
                    e.0
                ))
            })
    }
}

/// What Go's `%q` would print between the quotes, near enough for error messages.
fn go_quote_body(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Expanded text and, when it depends on an unknown value, why.
#[derive(Debug, Default)]
struct Piece {
    text: String,
    unknown: Option<String>,
}

impl Piece {
    fn known(text: String) -> Piece {
        Piece {
            text,
            unknown: None,
        }
    }

    fn unknown(why: String) -> Piece {
        Piece {
            text: String::new(),
            unknown: Some(why),
        }
    }

    fn push(&mut self, other: Piece) {
        self.text.push_str(&other.text);
        if self.unknown.is_none() {
            self.unknown = other.unknown;
        }
    }

    fn into_value(self) -> Value {
        match self.unknown {
            Some(why) => Value::Unknown(why),
            None => Value::Known(self.text),
        }
    }
}

/// Word splitting as `wordsStruct` does it.
#[derive(Default)]
struct Words {
    buf: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() && self.in_word {
            if !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else if !ch.is_whitespace() {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(std::mem::take(&mut self.buf));
        }
        self.words
    }
}

struct ShellWord<'a> {
    lex: Lexer,
    chars: Vec<char>,
    pos: usize,
    vars: &'a dyn Vars,
    raw_escapes: bool,
}

impl<'a> ShellWord<'a> {
    fn new(lex: Lexer, word: &str, vars: &'a dyn Vars) -> ShellWord<'a> {
        ShellWord {
            lex,
            chars: word.chars().collect(),
            pos: 0,
            vars,
            raw_escapes: lex.raw_escapes,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    /// Processes up to `stop` (or the end), with `raw_escapes` in force meanwhile.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(Piece, Vec<String>), LexError> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let out = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        out
    }

    fn process_stop_on_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(Piece, Vec<String>), LexError> {
        let mut result = Piece::default();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let piece = self.process_dollar()?;
                    words.add_string(&piece.text);
                    result.push(piece);
                }
                '\'' if !self.lex.skip_quotes => {
                    let text = self.process_single_quote()?;
                    words.add_raw_string(&text);
                    result.push(Piece::known(text));
                }
                '"' if !self.lex.skip_quotes => {
                    let piece = self.process_double_quote()?;
                    words.add_raw_string(&piece.text);
                    result.push(piece);
                }
                _ => {
                    self.next();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.text.push(ch);
                        }
                        // The escape character escapes the next one; at the end of the word it is dropped.
                        let Some(escaped) = self.next() else { break };
                        words.add_raw_char(escaped);
                        result.text.push(escaped);
                    } else {
                        words.add_char(ch);
                        result.text.push(ch);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(LexError(format!(
                "unexpected end of statement while looking for matching {stop}"
            )));
        }
        Ok((result, words.finish()))
    }

    /// `'...'`: everything literal; a single quote cannot be escaped.
    fn process_single_quote(&mut self) -> Result<String, LexError> {
        let mut out = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            out.extend(open);
        }
        loop {
            match self.next() {
                None => {
                    return Err(LexError(
                        "unexpected end of statement while looking for matching single-quote"
                            .to_owned(),
                    ));
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(ch) => out.push(ch),
            }
        }
    }

    /// `"..."`: literal except `$` expansions and the escape character before `"`, `$` or itself.
    fn process_double_quote(&mut self) -> Result<Piece, LexError> {
        let mut out = Piece::default();
        let open = self.next();
        if self.lex.raw_quotes {
            out.text.extend(open);
        }
        loop {
            match self.peek() {
                None => {
                    return Err(LexError(
                        "unexpected end of statement while looking for matching double-quote"
                            .to_owned(),
                    ));
                }
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        out.text.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let piece = self.process_dollar()?;
                    out.push(piece);
                }
                Some(_) => {
                    let mut ch = self.next().unwrap_or_default();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            out.text.push(ch);
                        }
                        match self.peek() {
                            // An escape at the very end is dropped (the missing quote is reported next).
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.lex.escape => {
                                ch = c;
                                self.next();
                            }
                            // Other escapes stay as written.
                            Some(_) => {}
                        }
                    }
                    out.text.push(ch);
                }
            }
        }
    }

    /// The word inside `${...}` up to `stop`; running out of input is reported as `missing`.
    fn read_until(
        &mut self,
        stop: char,
        raw_escapes: bool,
        missing: &str,
    ) -> Result<Piece, LexError> {
        match self.process_stop_on(Some(stop), raw_escapes) {
            Ok((piece, _)) => Ok(piece),
            Err(_) if self.peek().is_none() => Err(LexError(missing.to_owned())),
            Err(e) => Err(e),
        }
    }

    fn lookup(&self, name: &str) -> Lookup {
        self.vars.lookup(name)
    }

    fn process_dollar(&mut self) -> Result<Piece, LexError> {
        self.next();
        if self.peek() != Some('{') {
            let (name, odd) = self.process_name();
            if name.is_empty() {
                return Ok(Piece::known("$".to_owned()));
            }
            let mut piece = match self.lookup(&name) {
                Lookup::Set(v) => Piece::known(v),
                Lookup::Unset if self.lex.skip_unset => Piece::known(format!("${name}")),
                Lookup::Unset => Piece::default(),
                Lookup::Unknown(why) => Piece::unknown(why),
            };
            piece.unknown = piece.unknown.or(odd);
            return Ok(piece);
        }
        self.next();
        match self.peek() {
            None => return Err(LexError("syntax error: missing '}'".to_owned())),
            Some('{' | '}' | ':') => {
                return Err(LexError("syntax error: bad substitution".to_owned()));
            }
            Some(_) => {}
        }
        let (name, odd) = self.process_name();
        let mut ch = self.next();
        let mut chs: String = ch.into_iter().collect();
        let mut null_is_unset = false;
        let mut piece = match ch {
            Some('}') => match self.lookup(&name) {
                Lookup::Set(v) => Piece::known(v),
                Lookup::Unset if self.lex.skip_unset => Piece::known(format!("${{{name}}}")),
                Lookup::Unset => Piece::default(),
                Lookup::Unknown(why) => Piece::unknown(why),
            },
            Some(':' | '+' | '-' | '?' | '#' | '%') => {
                if ch == Some(':') {
                    null_is_unset = true;
                    ch = self.next();
                    chs.extend(ch);
                }
                self.process_modifier(&name, ch, &chs, null_is_unset)?
            }
            Some('/') => self.process_replace(&name)?,
            _ => {
                return Err(LexError(format!(
                    "unsupported modifier ({chs}) in substitution"
                )));
            }
        };
        piece.unknown = piece.unknown.or(odd);
        Ok(piece)
    }

    /// `${name<chs>word}` for the modifiers `-`, `+`, `?`, `#`, `%` (after an optional `:`, which `null_is_unset`
    /// records).
    fn process_modifier(
        &mut self,
        name: &str,
        ch: Option<char>,
        chs: &str,
        null_is_unset: bool,
    ) -> Result<Piece, LexError> {
        let Some(ch @ ('+' | '-' | '?' | '#' | '%')) = ch else {
            return Err(LexError(format!(
                "unsupported modifier ({chs}) in substitution"
            )));
        };
        let raw = ch == '#' || ch == '%';
        if null_is_unset && raw {
            return Err(LexError(format!(
                "unsupported modifier ({chs}) in substitution"
            )));
        }
        let word = self.read_until('}', raw, "syntax error: missing '}'")?;
        let value = match self.lookup(name) {
            Lookup::Unknown(why) => return Ok(Piece::unknown(why)),
            Lookup::Unset if self.lex.skip_unset => {
                let mut p = Piece::known(format!("${{{name}{chs}"));
                p.push(word);
                p.text.push('}');
                return Ok(p);
            }
            Lookup::Unset => None,
            Lookup::Set(v) => Some(v),
        };
        let empty = value
            .as_deref()
            .is_none_or(|v| null_is_unset && v.is_empty());
        match ch {
            '-' => Ok(if empty {
                word
            } else {
                Piece::known(value.unwrap_or_default())
            }),
            '+' => Ok(if empty { Piece::default() } else { word }),
            '?' => {
                let message = |default: &str| {
                    if word.text.is_empty() {
                        default.to_owned()
                    } else {
                        word.text.clone()
                    }
                };
                match value {
                    None => Err(LexError(format!(
                        "{name}: {}",
                        message("is not allowed to be unset")
                    ))),
                    Some(v) if null_is_unset && v.is_empty() => Err(LexError(format!(
                        "{name}: {}",
                        message("is not allowed to be empty")
                    ))),
                    Some(v) => Ok(Piece::known(v)),
                }
            }
            _ => {
                // `%`/`#` remove the shortest matching suffix/prefix, `%%`/`##` the longest.
                let mut pattern = word.text;
                let greedy = pattern.starts_with(ch);
                if greedy {
                    pattern.remove(0);
                }
                let value = value.unwrap_or_default();
                let text = if ch == '%' {
                    trim_suffix(&pattern, &value, greedy)?
                } else {
                    trim_prefix(&pattern, &value, greedy)?
                };
                Ok(Piece {
                    text,
                    unknown: word.unknown,
                })
            }
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`.
    fn process_replace(&mut self, name: &str) -> Result<Piece, LexError> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let pattern = self.read_until('/', true, "syntax error: missing '/' in ${}")?;
        let replacement = self.read_until('}', true, "syntax error: missing '}'")?;
        let value = match self.lookup(name) {
            Lookup::Unknown(why) => return Ok(Piece::unknown(why)),
            Lookup::Unset if self.lex.skip_unset => {
                return Ok(Piece::known(format!(
                    "${{{name}/{}/{}}}",
                    pattern.text, replacement.text
                )));
            }
            Lookup::Unset => String::new(),
            Lookup::Set(v) => v,
        };
        let unknown = pattern.unknown.or(replacement.unknown);
        let re = shell_pattern_regex(&pattern.text, true, false)?;
        let text = if all {
            // Go's ReplaceAllString expands `$name` in the replacement, as the regex crate does.
            re.replace_all(&value, replacement.text.as_str())
                .into_owned()
        } else {
            match re.find(&value) {
                Some(m) => format!(
                    "{}{}{}",
                    &value[..m.start()],
                    replacement.text,
                    &value[m.end()..]
                ),
                None => value,
            }
        };
        Ok(Piece { text, unknown })
    }

    /// A variable name: digits (`$1`), one special parameter character, or letters, digits and `_`. The second
    /// value is set when the name has characters whose classification we do not vouch for (non-ASCII).
    fn process_name(&mut self) -> (String, Option<String>) {
        let mut name = String::new();
        let mut odd = None;
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(d) = self.peek().filter(|c| is_digit(*c)) {
                    self.next();
                    name.push(d);
                }
                return (name, odd);
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return (ch.to_string(), odd);
            }
            if !(ch.is_alphanumeric() || ch == '_') {
                break;
            }
            if !ch.is_ascii() {
                odd = Some(format!(
                    "the variable name before `{ch}` has non-ASCII characters"
                ));
            }
            self.next();
            name.push(ch);
        }
        (name, odd)
    }
}

fn is_digit(ch: char) -> bool {
    ch.is_ascii_digit() || (!ch.is_ascii() && ch.is_numeric())
}

/// `convertShellPatternToRegex`: `*` is any text (shortest unless `greedy`), `?` one character, `\` escapes `*`, `?`
/// and `\` (and is dropped before `}` and `/`); no bracket expressions.
fn shell_pattern_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, LexError> {
    let invalid = |why: String| {
        LexError(format!(
            "invalid pattern ({pattern}) in substitution: {why}"
        ))
    };
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut chars = pattern.chars().peekable();
    while let Some(tok) = chars.next() {
        match tok {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => {
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                out.push('\\');
                match chars.next() {
                    Some(t @ ('*' | '?' | '\\')) => out.push(t),
                    Some(t) => return Err(invalid(format!("invalid escape '\\{t}'"))),
                    None => return Err(invalid("invalid escape '\\'".to_owned())),
                }
            }
            '[' | ']' | '{' | '}' | '.' | '+' | '(' | ')' | '|' | '^' | '$' => {
                out.push('\\');
                out.push(tok);
            }
            _ => out.push(tok),
        }
    }
    Regex::new(&out).map_err(|e| invalid(e.to_string()))
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, LexError> {
    let re = shell_pattern_regex(pattern, greedy, true)?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_owned(),
        None => value.to_owned(),
    })
}

/// Reverses a pattern, keeping each `\x` escape in order (`a\*c` becomes `c\*a`).
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; chars.len()];
    let last = chars.len().saturating_sub(1);
    let mut i = 0;
    while i < chars.len() {
        let at = last - i;
        if chars[i] == '\\' && i != last {
            out[at - 1] = '\\';
            out[at] = chars[i + 1];
            i += 2;
        } else {
            out[at] = chars[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, LexError> {
    // A regex cannot find the shortest rightmost match, so both sides are reversed into a leftmost search.
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, Lookup>);

    impl Vars for Map {
        fn lookup(&self, name: &str) -> Lookup {
            self.0.get(name).cloned().unwrap_or(Lookup::Unset)
        }
    }

    fn env() -> Map {
        Map(HashMap::from([
            ("SRC", Lookup::Set("src".to_owned())),
            ("EMPTY", Lookup::Set(String::new())),
            ("PATHY", Lookup::Set("dir/sub/file.tar.gz".to_owned())),
            ("IMG", Lookup::Unknown("from the image".to_owned())),
        ]))
    }

    fn expand(word: &str) -> Result<Value, LexError> {
        Lexer::new('\\').word(word, &env())
    }

    fn known(s: &str) -> Result<Value, LexError> {
        Ok(Value::Known(s.to_owned()))
    }

    /// Table of (input, expected) for ProcessWord with the default escape. The comments say what BuildKit does.
    #[test]
    fn process_word_matches_buildkit() {
        let unknown = Ok(Value::Unknown("from the image".to_owned()));
        let cases: &[(&str, Result<Value, LexError>)] = &[
            ("$SRC/lib", known("src/lib")),
            ("${SRC}lib", known("srclib")),
            // An unset variable is empty (SkipUnsetEnv is off for instruction arguments).
            ("a${NOPE}b", known("ab")),
            ("$NOPE", known("")),
            // `$` followed by no name stays.
            ("a$", known("a$")),
            ("$/x", known("$/x")),
            // `$1` is the name "1"; the digits end the name.
            ("$1abc", known("abc")),
            // Modifiers with a colon treat empty as unset, without it only unset counts.
            ("${EMPTY:-d}", known("d")),
            ("${EMPTY-d}", known("")),
            ("${NOPE-d}", known("d")),
            ("${NOPE:-d}", known("d")),
            ("${SRC:+yes}", known("yes")),
            ("${EMPTY:+yes}", known("")),
            ("${EMPTY+yes}", known("yes")),
            ("${NOPE+yes}", known("")),
            ("${SRC:?must}", known("src")),
            // The default word is itself expanded, quotes and all.
            ("${NOPE:-$SRC/x}", known("src/x")),
            ("${NOPE:-'a b'}", known("a b")),
            // Quotes: single quotes are literal, double quotes expand.
            ("'$SRC'", known("$SRC")),
            ("\"$SRC\"", known("src")),
            ("\"a\\\"b\"", known("a\"b")),
            // In double quotes, an escape before another character stays.
            ("\"a\\nb\"", known("a\\nb")),
            // Outside quotes the escape makes the next character literal and is dropped.
            ("a\\$SRC", known("a$SRC")),
            ("a\\", known("a")),
            // Pattern removal: shortest and longest, prefix and suffix.
            ("${PATHY#*/}", known("sub/file.tar.gz")),
            ("${PATHY##*/}", known("file.tar.gz")),
            ("${PATHY%.*}", known("dir/sub/file.tar")),
            ("${PATHY%%.*}", known("dir/sub/file")),
            ("${PATHY/sub/x}", known("dir/x/file.tar.gz")),
            ("${PATHY//[a]/x}", known("dir/sub/file.tar.gz")),
            ("${PATHY//?/x}", known("xxxxxxxxxxxxxxxxxxx")),
            // A value we cannot know makes the whole word unknown...
            ("$IMG/x", unknown.clone()),
            ("${IMG:-d}", unknown.clone()),
            // ...unless it is not used.
            ("${SRC:-$IMG}", known("src")),
            ("${NOPE:+$IMG}", known("")),
        ];
        for (input, want) in cases {
            assert_eq!(&expand(input), want, "{input}");
        }
    }

    #[test]
    fn process_word_errors_are_buildkits() {
        let cases = [
            ("${", "syntax error: missing '}'"),
            ("${}", "syntax error: bad substitution"),
            ("${:x}", "syntax error: bad substitution"),
            ("${SRC", "unsupported modifier () in substitution"),
            ("${SRC:=x}", "unsupported modifier (:=) in substitution"),
            ("${SRC:#x}", "unsupported modifier (:#) in substitution"),
            ("${NOPE:?}", "NOPE: is not allowed to be unset"),
            ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
            ("${NOPE?custom}", "NOPE: custom"),
            ("${NOPE:-x", "syntax error: missing '}'"),
            (
                "'a",
                "unexpected end of statement while looking for matching single-quote",
            ),
            (
                "\"a",
                "unexpected end of statement while looking for matching double-quote",
            ),
        ];
        for (input, want) in cases {
            let err = expand(input).expect_err(input);
            assert!(err.0.ends_with(want), "{input}: {}", err.0);
        }
    }

    #[test]
    fn backtick_escape() {
        let lex = Lexer::new('`');
        assert_eq!(
            lex.word("a`$b\\c", &NoVars).unwrap(),
            Value::Known("a$b\\c".into())
        );
    }

    /// The heredoc detector's lexer: raw quotes and escapes, unset variables kept, words split on spaces.
    #[test]
    fn words_with_raw_flags() {
        let mut lex = Lexer::new('\\');
        lex.raw_quotes = true;
        lex.raw_escapes = true;
        lex.skip_unset = true;
        assert_eq!(
            lex.words("COPY <<\"EOF\" $X '/a b' \\$Y", &NoVars).unwrap(),
            ["COPY", "<<\"EOF\"", "$X", "'/a b'", "\\$Y"]
        );
        assert_eq!(lex.words("${X:-a b}", &NoVars).unwrap(), ["${X:-a", "b}"]);
    }

    #[test]
    fn reverse_pattern_keeps_escapes() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("*.gz"), "zg.*");
    }
}
