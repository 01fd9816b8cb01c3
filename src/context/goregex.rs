//! Go's regular expression dialect (`regexp.Compile`, i.e. `regexp/syntax` with the `Perl` flags), parsed the way
//! Go parses it and compiled to an equivalent Rust automaton.
//!
//! patternmatcher turns a `.dockerignore` pattern into a Go regexp and passes through much of what the user wrote
//! (`|`, `{n,m}`, `^`, every `\x` escape, `[...]` classes), so a Rust regex built from the same text would accept a
//! different language and reject different patterns: `[[a-c]]` is a nested class and `[a&&b]` an intersection in
//! Rust but literals in Go, `\d \w \s \b` are Unicode-aware in Rust but ASCII in Go, `\<` is a literal in Go,
//! `\u0041` is an error in Go, `{` that is not a valid repeat is a literal in Go, Rust accepts flags Go rejects.
//! So this module is a port of Go 1.24's `regexp/syntax/parse.go`: the same acceptance decisions, building a
//! `regex_syntax` HIR with the same meaning instead of Go's tree. Only `is_match` is needed, so greediness and
//! capture groups are irrelevant and dropped.
//!
//! Matching is on `&str`: callers decode a path Go's way first (see [`super::gostr::go_decode`]), where every byte
//! of invalid UTF-8 is one U+FFFD, as Go's regexp sees it.
//!
//! Known residue: `\p{..}` uses Go's own tables (embedded), but case folding under `(?i)` uses `regex_syntax`'s
//! (Unicode 16.0, Go 1.24 has 15.0); `(?i)` cannot come from a pattern, whose `(` is always escaped. Go's size limit
//! is checked on the unfactored tree (Go factors common prefixes out of alternations first), which only matters
//! for expressions near 3.3 million instructions.

use std::sync::OnceLock;

use regex_automata::meta;
use regex_syntax::hir::{Class, ClassUnicode, ClassUnicodeRange, Hir, Look, Repetition};

/// Why Go's `regexp.Compile` rejects an expression (the message Go prints, and the part of the expression).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("error parsing regexp: {code}: `{expr}`")]
pub struct RegexError {
    /// Go's `ErrorCode` text.
    pub code: &'static str,
    /// The offending part of the expression.
    pub expr: String,
}

const INVALID_CHAR_CLASS_RANGE: &str = "invalid character class range";
const INVALID_ESCAPE: &str = "invalid escape sequence";
const INVALID_NAMED_CAPTURE: &str = "invalid named capture";
const INVALID_PERL_OP: &str = "invalid or unsupported Perl syntax";
const INVALID_REPEAT_OP: &str = "invalid nested repetition operator";
const INVALID_REPEAT_SIZE: &str = "invalid repeat count";
const MISSING_BRACKET: &str = "missing closing ]";
const MISSING_PAREN: &str = "missing closing )";
const MISSING_REPEAT_ARGUMENT: &str = "missing argument to repetition operator";
const TRAILING_BACKSLASH: &str = "trailing backslash at end of expression";
const UNEXPECTED_PAREN: &str = "unexpected )";
const LARGE: &str = "expression too large";

fn err(code: &'static str, expr: &str) -> RegexError {
    RegexError {
        code,
        expr: expr.to_owned(),
    }
}

/// Go's limit on the compiled size, in instructions (`maxSize` in parse.go).
const MAX_SIZE: u64 = (128 << 20) / 40;
const MAX_RUNE: u32 = 0x10FFFF;

/// A compiled Go regexp.
#[derive(Debug, Clone)]
pub struct GoRegex {
    re: meta::Regex,
}

impl GoRegex {
    /// Compiles `expr` as Go's `regexp.Compile` would, or fails where Go fails.
    pub fn new(expr: &str) -> Result<GoRegex, RegexError> {
        let hir = Parser::new(expr).parse()?;
        if calc_size(&hir) > MAX_SIZE {
            return Err(err(LARGE, expr));
        }
        let config = meta::Config::new()
            .nfa_size_limit(None)
            .onepass_size_limit(None);
        let re = meta::Builder::new()
            .configure(config)
            .build_from_hir(&hir)
            .map_err(|_| err(LARGE, expr))?;
        Ok(GoRegex { re })
    }

    /// Whether the expression matches somewhere in `text` (Go's `MatchString`).
    pub fn is_match(&self, text: &str) -> bool {
        self.re.is_match(text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flags {
    fold_case: bool,
    one_line: bool,
    dot_nl: bool,
}

enum Item {
    Node(Hir),
    /// `(`, with the flags to restore at its `)`.
    LeftParen(Flags),
    /// The alternatives seen so far at this level.
    VerticalBar(Vec<Hir>),
}

struct Parser<'a> {
    whole: &'a str,
    flags: Flags,
    stack: Vec<Item>,
}

/// Go's `nextRune`: every expression here is a `&str`, so only the empty case needs care (Go returns U+FFFD and no
/// error for it).
fn next_rune(s: &str) -> (u32, &str) {
    match s.chars().next() {
        Some(c) => (c as u32, &s[c.len_utf8()..]),
        None => (0xFFFD, s),
    }
}

fn is_alnum(c: u32) -> bool {
    matches!(char::from_u32(c), Some(c) if c.is_ascii_alphanumeric())
}

fn unhex(c: u32) -> Option<u32> {
    char::from_u32(c).and_then(|c| c.to_digit(16))
}

/// A set of runes as Go computes it; surrogates (which Go allows as values but never matches) are dropped.
fn class_of(ranges: &[(u32, u32)]) -> ClassUnicode {
    let mut out = Vec::new();
    for &(lo, hi) in ranges {
        let lo_part = (lo, hi.min(0xD7FF));
        let hi_part = (lo.max(0xE000), hi.min(MAX_RUNE));
        for (a, b) in [lo_part, hi_part] {
            if a <= b
                && let (Some(a), Some(b)) = (char::from_u32(a), char::from_u32(b))
            {
                out.push(ClassUnicodeRange::new(a, b));
            }
        }
    }
    ClassUnicode::new(out)
}

fn fold(mut class: ClassUnicode) -> ClassUnicode {
    class.case_fold_simple();
    class
}

fn negate(mut class: ClassUnicode) -> ClassUnicode {
    class.negate();
    class
}

const PERL_D: &[(u32, u32)] = &[(0x30, 0x39)];
const PERL_S: &[(u32, u32)] = &[(0x9, 0xa), (0xc, 0xd), (0x20, 0x20)];
const PERL_W: &[(u32, u32)] = &[(0x30, 0x39), (0x41, 0x5a), (0x5f, 0x5f), (0x61, 0x7a)];

/// `\d \D \s \S \w \W` (ASCII only in Go).
fn perl_group(s: &str) -> Option<(bool, &'static [(u32, u32)])> {
    Some(match s.get(..2)? {
        r"\d" => (true, PERL_D),
        r"\D" => (false, PERL_D),
        r"\s" => (true, PERL_S),
        r"\S" => (false, PERL_S),
        r"\w" => (true, PERL_W),
        r"\W" => (false, PERL_W),
        _ => return None,
    })
}

/// `[:alnum:]` and the other POSIX classes Go knows, with `[:^alnum:]` negations.
fn posix_group(name: &str) -> Option<(bool, &'static [(u32, u32)])> {
    let (positive, bare) = match name.strip_prefix("[:^") {
        Some(rest) => (false, rest),
        None => (true, name.strip_prefix("[:")?),
    };
    let class: &'static [(u32, u32)] = match bare {
        "alnum:]" => &[(0x30, 0x39), (0x41, 0x5a), (0x61, 0x7a)],
        "alpha:]" => &[(0x41, 0x5a), (0x61, 0x7a)],
        "ascii:]" => &[(0x0, 0x7f)],
        "blank:]" => &[(0x9, 0x9), (0x20, 0x20)],
        "cntrl:]" => &[(0x0, 0x1f), (0x7f, 0x7f)],
        "digit:]" => PERL_D,
        "graph:]" => &[(0x21, 0x7e)],
        "lower:]" => &[(0x61, 0x7a)],
        "print:]" => &[(0x20, 0x7e)],
        "punct:]" => &[(0x21, 0x2f), (0x3a, 0x40), (0x5b, 0x60), (0x7b, 0x7e)],
        "space:]" => &[(0x9, 0xd), (0x20, 0x20)],
        "upper:]" => &[(0x41, 0x5a)],
        "word:]" => PERL_W,
        "xdigit:]" => &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
        _ => return None,
    };
    Some((positive, class))
}

/// Go's `unicode.Categories` and `unicode.Scripts` (Unicode 15.0 in Go 1.24), as `oracle tables` prints them:
/// `Name lo-hi lo-hi ...` in hex. Embedded rather than taken from `regex_syntax` (Unicode 16.0), whose tables
/// differ for 30 of these names.
const GO_UNICODE: &str = include_str!("go_unicode.txt");

fn go_tables() -> &'static std::collections::HashMap<&'static str, Vec<(u32, u32)>> {
    static TABLES: OnceLock<std::collections::HashMap<&'static str, Vec<(u32, u32)>>> =
        OnceLock::new();
    TABLES.get_or_init(|| {
        GO_UNICODE
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|line| {
                let mut fields = line.split(' ');
                let name = fields.next()?;
                let ranges = fields
                    .filter_map(|r| {
                        let (lo, hi) = r.split_once('-')?;
                        Some((
                            u32::from_str_radix(lo, 16).ok()?,
                            u32::from_str_radix(hi, 16).ok()?,
                        ))
                    })
                    .collect();
                Some((name, ranges))
            })
            .collect()
    })
}

/// The table Go's `unicodeTable` finds for `name` (names are case-sensitive in Go), as a Rust class.
fn unicode_table(name: &str) -> Option<ClassUnicode> {
    if name == "Any" {
        return Some(class_of(&[(0, MAX_RUNE)]));
    }
    go_tables().get(name).map(|ranges| class_of(ranges))
}

impl<'a> Parser<'a> {
    fn new(whole: &'a str) -> Parser<'a> {
        Parser {
            whole,
            flags: Flags {
                fold_case: false,
                one_line: true,
                dot_nl: false,
            },
            stack: Vec::new(),
        }
    }

    fn push(&mut self, hir: Hir) {
        self.stack.push(Item::Node(hir));
    }

    fn literal(&mut self, c: u32) {
        let class = class_of(&[(c, c)]);
        let class = if self.flags.fold_case {
            fold(class)
        } else {
            class
        };
        self.push(Hir::class(Class::Unicode(class)));
    }

    fn parse(mut self) -> Result<Hir, RegexError> {
        let mut t = self.whole;
        let mut last_repeat = "";
        while !t.is_empty() {
            let mut repeat = "";
            match t.as_bytes()[0] {
                b'(' => {
                    if t.len() >= 2 && t.as_bytes()[1] == b'?' {
                        t = self.parse_perl_flags(t)?;
                    } else {
                        self.stack.push(Item::LeftParen(self.flags));
                        t = &t[1..];
                    }
                }
                b'|' => {
                    self.concat();
                    let alt = self.pop_node();
                    match self.stack.last_mut() {
                        Some(Item::VerticalBar(alts)) => alts.push(alt),
                        _ => self.stack.push(Item::VerticalBar(vec![alt])),
                    }
                    t = &t[1..];
                }
                b')' => {
                    let sub = self.concat_alternate();
                    match self.stack.pop() {
                        Some(Item::LeftParen(flags)) => {
                            self.flags = flags;
                            self.push(sub);
                        }
                        _ => return Err(err(UNEXPECTED_PAREN, self.whole)),
                    }
                    t = &t[1..];
                }
                b'^' => {
                    self.push(Hir::look(if self.flags.one_line {
                        Look::Start
                    } else {
                        Look::StartLF
                    }));
                    t = &t[1..];
                }
                b'$' => {
                    self.push(Hir::look(if self.flags.one_line {
                        Look::End
                    } else {
                        Look::EndLF
                    }));
                    t = &t[1..];
                }
                b'.' => {
                    let any = class_of(&[(0, MAX_RUNE)]);
                    let class = if self.flags.dot_nl {
                        any
                    } else {
                        let mut c = any;
                        c.difference(&class_of(&[(0x0a, 0x0a)]));
                        c
                    };
                    self.push(Hir::class(Class::Unicode(class)));
                    t = &t[1..];
                }
                b'[' => t = self.parse_class(t)?,
                b'*' | b'+' | b'?' => {
                    let (min, max) = match t.as_bytes()[0] {
                        b'*' => (0, None),
                        b'+' => (1, None),
                        _ => (0, Some(1)),
                    };
                    let before = t;
                    t = self.repeat(min, max, before, &t[1..], last_repeat)?;
                    repeat = before;
                }
                b'{' => match parse_repeat(t) {
                    None => {
                        // A `{` that does not start a valid repeat is a literal.
                        self.literal(u32::from(b'{'));
                        t = &t[1..];
                    }
                    Some((min, max, after)) => {
                        let before = t;
                        if !(0..=1000).contains(&min) || max > 1000 || (max >= 0 && min > max) {
                            return Err(err(
                                INVALID_REPEAT_SIZE,
                                &before[..before.len() - after.len()],
                            ));
                        }
                        let max = u32::try_from(max).ok();
                        t = self.repeat(min as u32, max, before, after, last_repeat)?;
                        repeat = before;
                    }
                },
                b'\\' => t = self.parse_backslash(t)?,
                _ => {
                    let (c, rest) = next_rune(t);
                    self.literal(c);
                    t = rest;
                }
            }
            last_repeat = repeat;
        }
        let hir = self.concat_alternate();
        if !self.stack.is_empty() {
            return Err(err(MISSING_PAREN, self.whole));
        }
        Ok(hir)
    }

    fn pop_node(&mut self) -> Hir {
        match self.stack.pop() {
            Some(Item::Node(h)) => h,
            // concat() always leaves a node on top.
            _ => Hir::empty(),
        }
    }

    /// Replaces the nodes above the innermost `(` or `|` by their concatenation.
    fn concat(&mut self) {
        let start = self
            .stack
            .iter()
            .rposition(|i| !matches!(i, Item::Node(_)))
            .map_or(0, |i| i + 1);
        let subs = self
            .stack
            .drain(start..)
            .map(|i| match i {
                Item::Node(h) => h,
                _ => Hir::empty(),
            })
            .collect();
        self.stack.push(Item::Node(Hir::concat(subs)));
    }

    /// Closes the current level: the concatenation, joined with the alternatives before it.
    fn concat_alternate(&mut self) -> Hir {
        self.concat();
        let last = self.pop_node();
        if let Some(Item::VerticalBar(_)) = self.stack.last()
            && let Some(Item::VerticalBar(mut alts)) = self.stack.pop()
        {
            alts.push(last);
            return Hir::alternation(alts);
        }
        last
    }

    fn repeat<'t>(
        &mut self,
        min: u32,
        max: Option<u32>,
        before: &'t str,
        mut after: &'t str,
        last_repeat: &str,
    ) -> Result<&'t str, RegexError> {
        if let Some(rest) = after.strip_prefix('?') {
            after = rest; // non-greedy: no difference to whether it matches
        }
        if !last_repeat.is_empty() {
            return Err(err(
                INVALID_REPEAT_OP,
                &last_repeat[..last_repeat.len() - after.len()],
            ));
        }
        let sub = match self.stack.last() {
            Some(Item::Node(_)) => self.pop_node(),
            _ => {
                return Err(err(
                    MISSING_REPEAT_ARGUMENT,
                    &before[..before.len() - after.len()],
                ));
            }
        };
        let is_counted = before.starts_with('{');
        let re = Hir::repetition(Repetition {
            min,
            max,
            greedy: true,
            sub: Box::new(sub),
        });
        if is_counted && (min >= 2 || max.is_some_and(|m| m >= 2)) && !repeat_is_valid(&re, 1000) {
            return Err(err(
                INVALID_REPEAT_SIZE,
                &before[..before.len() - after.len()],
            ));
        }
        self.push(re);
        Ok(after)
    }

    fn parse_perl_flags<'t>(&mut self, s: &'t str) -> Result<&'t str, RegexError> {
        let b = s.as_bytes();
        let starts_with_p = b.len() > 4 && b[2] == b'P' && b[3] == b'<';
        let starts_with_name = b.len() > 3 && b[2] == b'<';
        if starts_with_p || starts_with_name {
            let expr_start = if starts_with_name { 3 } else { 4 };
            let Some(end) = s.find('>') else {
                return Err(err(INVALID_NAMED_CAPTURE, s));
            };
            let name = &s[expr_start..end];
            if name.is_empty() || !name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
                return Err(err(INVALID_NAMED_CAPTURE, &s[..=end]));
            }
            self.stack.push(Item::LeftParen(self.flags));
            return Ok(&s[end + 1..]);
        }
        let mut t = &s[2..];
        let mut flags = self.flags;
        let mut negated = false;
        let mut saw_flag = false;
        while !t.is_empty() {
            let (c, rest) = next_rune(t);
            t = rest;
            match char::from_u32(c).unwrap_or('\u{fffd}') {
                'i' => {
                    flags.fold_case = !negated;
                    saw_flag = true;
                }
                'm' => {
                    flags.one_line = negated;
                    saw_flag = true;
                }
                's' => {
                    flags.dot_nl = !negated;
                    saw_flag = true;
                }
                'U' => saw_flag = true, // non-greedy: no difference to whether it matches
                '-' => {
                    if negated {
                        break;
                    }
                    negated = true;
                    saw_flag = false;
                }
                c @ (':' | ')') => {
                    if negated && !saw_flag {
                        break;
                    }
                    if c == ':' {
                        self.stack.push(Item::LeftParen(self.flags));
                    }
                    self.flags = flags;
                    return Ok(t);
                }
                _ => break,
            }
        }
        Err(err(INVALID_PERL_OP, &s[..s.len() - t.len()]))
    }

    fn parse_backslash<'t>(&mut self, t: &'t str) -> Result<&'t str, RegexError> {
        let b = t.as_bytes();
        if b.len() >= 2 {
            let look = match b[1] {
                b'A' => Some(Look::Start),
                b'b' => Some(Look::WordAscii),
                b'B' => Some(Look::WordAsciiNegate),
                b'z' => Some(Look::End),
                b'C' => return Err(err(INVALID_ESCAPE, &t[..2])),
                b'Q' => {
                    let (lit, rest) = t[2..].split_once(r"\E").unwrap_or((&t[2..], ""));
                    for c in lit.chars() {
                        self.literal(c as u32);
                    }
                    return Ok(rest);
                }
                _ => None,
            };
            if let Some(look) = look {
                self.push(Hir::look(look));
                return Ok(&t[2..]);
            }
            if b[1] == b'p' || b[1] == b'P' {
                let (class, rest) = self.parse_unicode_class(t)?;
                self.push(Hir::class(Class::Unicode(class)));
                return Ok(rest);
            }
            if let Some(group) = perl_group(t) {
                let class = self.group_class(group);
                self.push(Hir::class(Class::Unicode(class)));
                return Ok(&t[2..]);
            }
        }
        let (c, rest) = parse_escape(t)?;
        self.literal(c);
        Ok(rest)
    }

    /// A Perl or POSIX group, folded first when case-insensitive, then negated if it is a negative group.
    fn group_class(&self, (positive, ranges): (bool, &[(u32, u32)])) -> ClassUnicode {
        let mut class = class_of(ranges);
        if self.flags.fold_case {
            class = fold(class);
        }
        if positive { class } else { negate(class) }
    }

    /// `\pN`, `\p{Name}`, `\p{^Name}`, `\PN`... at the start of `s`.
    fn parse_unicode_class<'t>(&self, s: &'t str) -> Result<(ClassUnicode, &'t str), RegexError> {
        let mut positive = s.as_bytes()[1] == b'p';
        let (c, t) = next_rune(&s[2..]);
        let (seq, mut name, rest) = if c != u32::from(b'{') {
            let seq = &s[..s.len() - t.len()];
            (seq, &seq[2..], t)
        } else {
            let Some(end) = s.find('}') else {
                return Err(err(INVALID_CHAR_CLASS_RANGE, s));
            };
            (&s[..=end], &s[3..end], &s[end + 1..])
        };
        if let Some(n) = name.strip_prefix('^') {
            positive = !positive;
            name = n;
        }
        let Some(table) = unicode_table(name) else {
            return Err(err(INVALID_CHAR_CLASS_RANGE, seq));
        };
        let class = if self.flags.fold_case {
            fold(table)
        } else {
            table
        };
        Ok((if positive { class } else { negate(class) }, rest))
    }

    fn parse_class<'t>(&mut self, s: &'t str) -> Result<&'t str, RegexError> {
        let mut t = &s[1..];
        let mut positive = true;
        if let Some(rest) = t.strip_prefix('^') {
            positive = false;
            t = rest;
        }
        let mut class = ClassUnicode::empty();
        let mut first = true;
        while t.is_empty() || !t.starts_with(']') || first {
            first = false;
            if t.len() > 2
                && t.starts_with("[:")
                && let Some(end) = t[2..].find(":]")
            {
                let name = &t[..end + 4];
                let Some(group) = posix_group(name) else {
                    return Err(err(INVALID_CHAR_CLASS_RANGE, name));
                };
                class.union(&self.group_class(group));
                t = &t[end + 4..];
                continue;
            }
            if t.len() >= 2 && t.starts_with('\\') && matches!(t.as_bytes()[1], b'p' | b'P') {
                let (c, rest) = self.parse_unicode_class(t)?;
                class.union(&c);
                t = rest;
                continue;
            }
            if let Some(group) = perl_group(t) {
                class.union(&self.group_class(group));
                t = &t[2..];
                continue;
            }
            let rng = t;
            let (lo, rest) = parse_class_char(t, s)?;
            t = rest;
            let mut hi = lo;
            // `[a-]` is `a` and `-`.
            if t.len() >= 2 && t.starts_with('-') && t.as_bytes()[1] != b']' {
                let (h, rest) = parse_class_char(&t[1..], s)?;
                t = rest;
                hi = h;
                if hi < lo {
                    return Err(err(INVALID_CHAR_CLASS_RANGE, &rng[..rng.len() - t.len()]));
                }
            }
            let piece = class_of(&[(lo, hi)]);
            class.union(&if self.flags.fold_case {
                fold(piece)
            } else {
                piece
            });
        }
        t = &t[1..];
        self.push(Hir::class(Class::Unicode(if positive {
            class
        } else {
            negate(class)
        })));
        Ok(t)
    }
}

fn parse_class_char<'t>(s: &'t str, whole: &str) -> Result<(u32, &'t str), RegexError> {
    if s.is_empty() {
        return Err(err(MISSING_BRACKET, whole));
    }
    if s.starts_with('\\') {
        return parse_escape(s);
    }
    Ok(next_rune(s))
}

/// Go's `parseEscape`: one escaped character at the start of `s` (which starts with `\`).
fn parse_escape(s: &str) -> Result<(u32, &str), RegexError> {
    let t = &s[1..];
    if t.is_empty() {
        return Err(err(TRAILING_BACKSLASH, ""));
    }
    let (c, mut t) = next_rune(t);
    let invalid = |t: &str| err(INVALID_ESCAPE, &s[..s.len() - t.len()]);
    let is_octal = |t: &str| {
        t.as_bytes()
            .first()
            .is_some_and(|b| (b'0'..=b'7').contains(b))
    };
    match char::from_u32(c).unwrap_or('\u{fffd}') {
        '1'..='7' if !is_octal(t) => Err(invalid(t)), // a backreference, which Go does not support
        d @ '0'..='7' => {
            let mut r = d as u32 - u32::from(b'0');
            for _ in 1..3 {
                if !is_octal(t) {
                    break;
                }
                r = r * 8 + u32::from(t.as_bytes()[0] - b'0');
                t = &t[1..];
            }
            Ok((r, t))
        }
        'x' => {
            if t.is_empty() {
                return Err(invalid(t));
            }
            let (c, rest) = next_rune(t);
            t = rest;
            if c == u32::from(b'{') {
                let mut nhex = 0;
                let mut r: u32 = 0;
                loop {
                    if t.is_empty() {
                        return Err(invalid(t));
                    }
                    let (c, rest) = next_rune(t);
                    t = rest;
                    if c == u32::from(b'}') {
                        break;
                    }
                    let Some(v) = unhex(c) else {
                        return Err(invalid(t));
                    };
                    r = r * 16 + v;
                    if r > MAX_RUNE {
                        return Err(invalid(t));
                    }
                    nhex += 1;
                }
                if nhex == 0 {
                    return Err(invalid(t));
                }
                return Ok((r, t));
            }
            let x = unhex(c);
            let (c, rest) = next_rune(t);
            t = rest;
            match (x, unhex(c)) {
                (Some(x), Some(y)) => Ok((x * 16 + y, t)),
                _ => Err(invalid(t)),
            }
        }
        'a' => Ok((7, t)),
        'f' => Ok((12, t)),
        'n' => Ok((10, t)),
        'r' => Ok((13, t)),
        't' => Ok((9, t)),
        'v' => Ok((11, t)),
        // Escaped ASCII punctuation is itself (Go allows `\_` too); letters, digits and non-ASCII are errors.
        _ if c < 0x80 && !is_alnum(c) => Ok((c, t)),
        _ => Err(invalid(t)),
    }
}

/// Go's `parseRepeat`: `{min}`, `{min,}` (max -1) or `{min,max}` at the start of `s`; min is -1 when a number is
/// too big. None when `s` does not have that form.
fn parse_repeat(s: &str) -> Option<(i64, i64, &str)> {
    let s = s.strip_prefix('{')?;
    let (mut min, s) = parse_int(s)?;
    let (max, s) = match s.strip_prefix(',') {
        None => (min, s),
        Some("") => return None,
        Some(s) if s.starts_with('}') => (-1, s),
        Some(s) => {
            let (max, s) = parse_int(s)?;
            if max < 0 {
                min = -1;
            }
            (max, s)
        }
    };
    let rest = s.strip_prefix('}')?;
    Some((min, max, rest))
}

/// Go's `parseInt`: decimal digits without a leading zero; -1 when the value reaches 1e8.
fn parse_int(s: &str) -> Option<(i64, &str)> {
    let b = s.as_bytes();
    if b.first().is_none_or(|c| !c.is_ascii_digit()) {
        return None;
    }
    if b.len() >= 2 && b[0] == b'0' && b[1].is_ascii_digit() {
        return None;
    }
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut n: i64 = 0;
    for &d in &b[..digits] {
        if n >= 100_000_000 {
            n = -1;
            break;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Some((n, &s[digits..]))
}

/// Go's `repeatIsValid`: nested counted repetitions may not multiply beyond `n`.
fn repeat_is_valid(re: &Hir, mut n: u32) -> bool {
    use regex_syntax::hir::HirKind;
    match re.kind() {
        HirKind::Repetition(r) => {
            if r.max == Some(0) {
                return true;
            }
            let m = r.max.unwrap_or(r.min);
            if m > n {
                return false;
            }
            n = n.checked_div(m).unwrap_or(n);
            repeat_is_valid(&r.sub, n)
        }
        HirKind::Capture(c) => repeat_is_valid(&c.sub, n),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            subs.iter().all(|s| repeat_is_valid(s, n))
        }
        _ => true,
    }
}

/// Go's `calcSize`: the number of instructions the expression compiles to.
fn calc_size(re: &Hir) -> u64 {
    use regex_syntax::hir::HirKind;
    let size = match re.kind() {
        HirKind::Literal(l) => std::str::from_utf8(&l.0).map_or(1, |s| s.chars().count() as u64),
        HirKind::Capture(c) => 2 + calc_size(&c.sub),
        HirKind::Repetition(r) => {
            let sub = calc_size(&r.sub);
            match (r.min, r.max) {
                (0, None) => 2 + sub,
                (min, None) => 1 + u64::from(min) * sub,
                (min, Some(max)) => u64::from(max) * sub + u64::from(max - min),
            }
        }
        HirKind::Concat(subs) => subs.iter().map(calc_size).sum(),
        HirKind::Alternation(subs) => {
            subs.iter().map(calc_size).sum::<u64>() + subs.len() as u64 - 1
        }
        _ => 1,
    };
    size.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(re: &str, s: &str) -> bool {
        GoRegex::new(re)
            .unwrap_or_else(|e| panic!("{re}: {e}"))
            .is_match(s)
    }

    fn bad(re: &str) -> bool {
        GoRegex::new(re).is_err()
    }

    #[test]
    fn classes_are_go_classes() {
        // `[` inside a class is a literal in Go; Rust would nest.
        assert!(m("^[[a-c]]$", "[]"));
        assert!(m("^[[a-c]]$", "b]"));
        assert!(!m("^[[a-c]]$", "b"));
        // `[a-]` is a and -.
        assert!(m("^[a-]$", "-"));
        // `&&`, `--` and `~~` are set operations in Rust only.
        assert!(m("^[&&b]$", "&"));
        assert!(m("^[~~]$", "~"));
        assert!(bad("^[a--b]$"));
        assert!(bad("[[::]]"));
        assert!(m("^[[:alpha:]]$", "x"));
        assert!(bad("^[]$"));
        assert!(m("^[]a]$", "]"));
        assert!(bad(r"[\b]"));
    }

    #[test]
    fn escapes_are_go_escapes() {
        assert!(m(r"^\d$", "7"));
        assert!(!m(r"^\d$", "٣")); // ASCII only in Go
        assert!(!m(r"^\w$", "é"));
        assert!(!m(r"^\s$", "\u{b}")); // no \v in Go's \s
        assert!(m(r"^\<\>$", "<>"));
        assert!(m(r"^\Qa.b\E.$", "a.bx"));
        assert!(m(r"^\Qa.b$", "a.b$"));
        assert!(m(r"^\101$", "A"));
        assert!(m(r"^\0101$", "\u{8}1"));
        assert!(m(r"^\x41\x{42}$", "AB"));
        assert!(bad(r"\u0041"));
        assert!(bad(r"\1"));
        assert!(bad(r"\Z"));
        assert!(bad(r"\C"));
        assert!(bad(r"\é"));
        assert!(m(r"^\p{L}\pN\p{^L}$", "é1-"));
        assert!(m(r"^\p{Greek}$", "α"));
        // Single-code-point and surrogate-only tables exist too.
        assert!(m(r"^\p{Zl}$", "\u{2028}"));
        assert!(!m(r"^\p{Cs}$", "\u{fffd}"));
        assert!(m(r"^\p{C}$", "\u{1}"));
        // Unicode 15.0: U+1E030 (Unicode 15) is Lm, U+1C89 (assigned in 16.0) is not a letter yet.
        assert!(m(r"^\pL$", "\u{1e030}"));
        assert!(!m(r"^\pL$", "\u{1c89}"));
        assert!(bad(r"\p{greek}"));
        assert!(bad(r"\p{Alphabetic}"));
        assert!(m(r"^a\bb|^a\b-$", "a-"));
    }

    #[test]
    fn repeats_and_flags_are_go_repeats() {
        assert!(m("^a{2}$", "aa"));
        assert!(m("^a{,2}$", "a{,2}")); // not a repeat: literal
        assert!(m("^a{01}$", "a{01}"));
        assert!(bad("a{1001}"));
        assert!(bad("a{2,1}"));
        assert!(bad("a**"));
        assert!(bad("a{2}{3}"));
        assert!(bad("|*"));
        assert!(m("^{2}a$", "a")); // repeats `^`
        assert!(bad("(?x)a"));
        assert!(m("(?i)^A$", "a"));
        assert!(m("(?s)^.$", "\n"));
        assert!(!m("^.$", "\n"));
        assert!(m("(?m)^b$", "a\nb"));
        assert!(m("(?U)^a+$", "aa"));
        assert!(m("(?)^a$", "a"));
        assert!(bad("(?-)a"));
        assert!(bad("(a"));
        assert!(bad("a)"));
        assert!(m("^(?P<n>a)(?<n>b)$", "ab"));
        assert!(bad("(?P<>a)"));
        assert!(bad(&"a{1000}".repeat(4000)));
    }
}
