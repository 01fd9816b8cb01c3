//! Dockerfile text to instruction nodes, with the rules of BuildKit's parser (`frontend/dockerfile/parser`): parser
//! directives, the escape character, line continuations, comments, heredocs, builder flags and the per-instruction
//! argument forms (JSON, whitespace-separated words, `name=value` pairs).
//!
//! It stops short of the typed instructions (`instructions.rs`) and of any variable expansion (`lex.rs`).

use std::sync::OnceLock;

use regex::Regex;

use super::lex::{Lexer, NoVars};

/// Why the text could not be parsed. Where BuildKit rejects the same text, the message is BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    /// BuildKit's parser fails on this too.
    #[error("line {line}: {message}")]
    Rejected {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// BuildKit versions parse this differently, or we do not model it.
    #[error("line {line}: {message}")]
    Unsupported {
        /// 1-based line.
        line: usize,
        /// What is not supported.
        message: String,
    },
}

/// A heredoc attached to an instruction (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Heredoc {
    /// The terminator word, quotes removed.
    pub(crate) name: String,
    /// `<<-`: leading tabs are removed.
    pub(crate) chomp: bool,
    /// No part of the terminator was quoted, so the content is expanded.
    pub(crate) expand: bool,
    /// The lines between, with their line endings.
    pub(crate) content: String,
}

/// One instruction as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    /// The instruction, lowercased (`copy`).
    pub(crate) cmd: String,
    /// The logical line (continuations joined), as BuildKit keeps it.
    pub(crate) original: String,
    /// Builder flags (`--from=build`), quotes and escapes processed.
    pub(crate) flags: Vec<String>,
    /// Arguments: words, or `key, value` pairs flattened for `ENV` and `LABEL`.
    pub(crate) args: Vec<String>,
    /// The arguments were a JSON array.
    pub(crate) json: bool,
    /// Heredocs, in order.
    pub(crate) heredocs: Vec<Heredoc>,
    /// The instruction `ONBUILD` wraps.
    pub(crate) sub: Option<Box<Node>>,
    /// First and last line (1-based).
    pub(crate) start_line: usize,
    /// See [`Node::start_line`].
    pub(crate) end_line: usize,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone)]
pub(crate) struct Ast {
    /// The instructions, in order.
    pub(crate) nodes: Vec<Node>,
    /// The escape character (`\`, or `` ` `` by `# escape=`).
    pub(crate) escape: char,
}

/// Parser directives at the top of a file (`# syntax=`, `# escape=`, `# check=`), one of each at most.
struct DirectiveParser {
    comment: &'static str,
    seen: Vec<String>,
    done: bool,
}

impl DirectiveParser {
    fn new(comment: &'static str) -> DirectiveParser {
        DirectiveParser {
            comment,
            seen: Vec::new(),
            done: false,
        }
    }

    /// The directive on `line`, if directives are still allowed and it is one; the first line that is not one ends
    /// them.
    fn parse_line(&mut self, line: &str) -> Result<Option<(String, String)>, String> {
        if self.done {
            return Ok(None);
        }
        let Some(rest) = line.strip_prefix(self.comment) else {
            self.done = true;
            return Ok(None);
        };
        let rest = rest.trim_start();
        static RE: OnceLock<Regex> = OnceLock::new();
        let re = RE.get_or_init(|| {
            Regex::new(r"^([a-zA-Z][a-zA-Z0-9]*)[\t\n\x0C\r ]*=[\t\n\x0C\r ]*(.+?)[\t\n\x0C\r ]*$")
                .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
        });
        let Some(caps) = re.captures(rest) else {
            self.done = true;
            return Ok(None);
        };
        let key = caps[1].to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&key) {
            return Err(format!("only one {key} parser directive can be used"));
        }
        self.seen.push(key.clone());
        Ok(Some((key, caps[2].to_owned())))
    }
}

/// The frontend image a `# syntax=` directive (or its `//` or JSON forms) asks for, as BuildKit's `DetectSyntax`
/// finds it: the first word of the value, and the 1-based line.
pub(crate) fn detect_syntax(text: &str) -> Option<(String, usize)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (text, first) = match text.split_once('\n') {
        Some((line, rest)) if line.starts_with("#!") => (rest, 2),
        _ if text.starts_with("#!") => ("", 2),
        _ => (text, 1),
    };
    for comment in ["#", "//"] {
        let mut parser = DirectiveParser::new(comment);
        for (i, line) in text.lines().enumerate() {
            if parser.done {
                break;
            }
            match parser.parse_line(line) {
                Ok(Some((key, value))) if key == "syntax" => {
                    let image = value.split(' ').next().unwrap_or_default().to_owned();
                    return Some((image, first + i));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let image = json.get("syntax")?.as_str()?;
    Some((image.to_owned(), first))
}

struct Directives {
    parser: DirectiveParser,
    escape: char,
}

impl Directives {
    /// Strips the line ending (and leading whitespace when asked), notes a directive, and drops a comment line.
    fn process_line(
        &mut self,
        raw: &str,
        strip_left: bool,
        line: usize,
    ) -> Result<String, ParseError> {
        let mut token = raw.trim_end_matches(['\r', '\n']);
        if strip_left {
            token = token.trim_start();
        }
        match self.parser.parse_line(token) {
            Ok(Some((key, value))) if key == "escape" => {
                self.escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(ParseError::Rejected {
                            line,
                            message: format!(
                                "invalid escape token '{value}' does not match ` or \\"
                            ),
                        });
                    }
                };
            }
            Ok(_) => {}
            Err(message) => return Err(ParseError::Rejected { line, message }),
        }
        Ok(if is_comment(token) {
            String::new()
        } else {
            token.to_owned()
        })
    }

    /// Removes a trailing escape character (and spaces after it); says whether the instruction ends here.
    fn trim_continuation(&self, line: &str) -> (String, bool) {
        let trimmed = line.trim_end_matches([' ', '\t']);
        let Some(before) = trimmed.strip_suffix(self.escape) else {
            return (line.to_owned(), true);
        };
        if before.ends_with(self.escape) {
            // `([^\\])\\[ \t]*$`: an escaped escape does not continue the line (BuildKit 0.13 and later; older
            // versions joined such lines).
            return (line.to_owned(), true);
        }
        (before.to_owned(), false)
    }
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Parses a Dockerfile.
pub(crate) fn parse(text: &str) -> Result<Ast, ParseError> {
    let mut d = Directives {
        parser: DirectiveParser::new("#"),
        escape: '\\',
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split_inclusive('\n');
    let mut nodes = Vec::new();
    let mut current = 0;
    while let Some(raw) = lines.next() {
        let first = d.process_line(raw, true, current + 1)?;
        current += 1;
        let start = current;
        let (mut line, mut end) = d.trim_continuation(&first);
        if end && line.is_empty() {
            continue;
        }
        while !end {
            let Some(raw) = lines.next() else { break };
            let next = d.process_line(raw, false, current + 1)?;
            current += 1;
            if is_comment(raw) || next.trim_start().is_empty() {
                // Comments and empty lines inside a continued instruction are skipped.
                continue;
            }
            let (next, ends) = d.trim_continuation(&next);
            line.push_str(&next);
            end = ends;
        }
        let rejected = |message: String| ParseError::Rejected {
            line: start,
            message,
        };
        let mut node = node_from_line(&line, d.escape).map_err(|e| e.at(start))?;
        if node.can_contain_heredoc() && line.contains("<<") {
            for mut heredoc in heredocs_from_line(&line).map_err(rejected)? {
                let mut terminated = false;
                for raw in lines.by_ref() {
                    current += 1;
                    let mut candidate = raw.trim_end_matches(['\r', '\n']);
                    if heredoc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    heredoc.content.push_str(raw);
                }
                if !terminated {
                    return Err(rejected("unterminated heredoc".to_owned()));
                }
                node.heredocs.push(heredoc);
            }
        }
        node.start_line = start;
        node.end_line = current;
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(ParseError::Rejected {
            line: current,
            message: "file with no instructions".to_owned(),
        });
    }
    Ok(Ast {
        nodes,
        escape: d.escape,
    })
}

impl Node {
    fn can_contain_heredoc(&self) -> bool {
        let node = match (&self.cmd[..], &self.sub) {
            ("onbuild", Some(sub)) => sub,
            _ => self,
        };
        matches!(node.cmd.as_str(), "add" | "copy" | "run") && !node.json
    }
}

/// The ASCII whitespace BuildKit splits on (`[\t\v\f\r ]+`).
fn is_split_space(c: char) -> bool {
    matches!(c, '\t' | '\x0B' | '\x0C' | '\r' | ' ')
}

fn split_whitespace(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split(is_split_space)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Why one logical line could not be parsed; the line number is added by the caller.
enum LineError {
    Rejected(String),
    Unsupported(String),
}

impl LineError {
    fn at(self, line: usize) -> ParseError {
        match self {
            LineError::Rejected(message) => ParseError::Rejected { line, message },
            LineError::Unsupported(message) => ParseError::Unsupported { line, message },
        }
    }
}

/// `splitCommand` + the per-instruction line parsers.
fn node_from_line(line: &str, escape: char) -> Result<Node, LineError> {
    let trimmed = line.trim();
    let (cmd, rest) = match trimmed.find(is_split_space) {
        Some(i) => (
            &trimmed[..i],
            trimmed[i..].trim_start_matches(is_split_space),
        ),
        None => (trimmed, ""),
    };
    let cmd = cmd.to_lowercase();
    let (rest, flags) = extract_builder_flags(rest);
    let rest = rest.trim();
    let mut node = Node {
        cmd: cmd.clone(),
        original: line.to_owned(),
        flags,
        args: Vec::new(),
        json: false,
        heredocs: Vec::new(),
        sub: None,
        start_line: 0,
        end_line: 0,
    };
    match cmd.as_str() {
        "add" | "copy" | "volume" => match parse_json(rest)? {
            Some(args) => {
                node.args = args;
                node.json = true;
            }
            None => node.args = split_whitespace(rest),
        },
        "cmd" | "entrypoint" | "run" | "shell" => match parse_json(rest)? {
            Some(args) => {
                node.args = args;
                node.json = true;
            }
            None if rest.is_empty() => {}
            None => node.args = vec![rest.to_owned()],
        },
        "arg" => node.args = parse_words(rest, escape),
        "env" | "label" => {
            node.args = parse_name_val(rest, &cmd, escape).map_err(LineError::Rejected)?;
        }
        "expose" | "from" => node.args = split_whitespace(rest),
        "healthcheck" => {
            if let Some((typ, cmdline)) = rest.split_once(char::is_whitespace) {
                node.args.push(typ.to_owned());
                match parse_json(cmdline.trim_start())? {
                    Some(args) => {
                        node.args.extend(args);
                        node.json = true;
                    }
                    None if cmdline.trim_start().is_empty() => {}
                    None => node.args.push(cmdline.trim_start().to_owned()),
                }
            } else if !rest.is_empty() {
                node.args.push(rest.to_owned());
            }
        }
        "maintainer" | "stopsignal" | "user" | "workdir" if !rest.is_empty() => {
            node.args.push(rest.to_owned());
        }
        "onbuild" if !rest.is_empty() => {
            node.sub = Some(Box::new(node_from_line(rest, escape)?));
        }
        // Unknown instructions parse (their arguments are ignored) and fail later, as in BuildKit; the others
        // have no arguments here.
        _ => {}
    }
    Ok(node)
}

// `extract_builder_flags` and `parse_words` look alike because their Go originals do; they differ in what they
// keep (quotes, escapes) and where they stop, and are kept apart to be compared line by line with upstream.

/// `extractBuilderFlags`: the leading `--name[=value]` words, with quotes and `\` escapes processed; a lone `--`
/// ends them.
fn extract_builder_flags(line: &str) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let bytes: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut i = 0;
    loop {
        let at_end = i >= bytes.len();
        let (pos, ch) = bytes.get(i).copied().unwrap_or((line.len(), '\0'));
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                i += 1;
                continue;
            }
            if ch != '-' || bytes.get(i + 1).map(|(_, c)| *c) != Some('-') {
                return (&line[pos..], words);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (&line[pos..], words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                i += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                i += 1;
                continue;
            }
            let mut c = ch;
            if ch == '\\' {
                if i + 1 == bytes.len() {
                    i += 1;
                    continue;
                }
                i += 1;
                c = bytes[i].1;
            }
            word.push(c);
            i += 1;
            continue;
        }
        // In quotes.
        if ch == quote {
            phase = Phase::Word;
            i += 1;
            continue;
        }
        let mut c = ch;
        if ch == '\\' {
            if i + 1 == bytes.len() {
                phase = Phase::Word;
                i += 1;
                continue;
            }
            i += 1;
            c = bytes[i].1;
        }
        word.push(c);
        i += 1;
    }
    ("", words)
}

/// `parseJSON`: `Some(strings)` for a JSON array of strings, `None` when the text is not a JSON array.
fn parse_json(rest: &str) -> Result<Option<Vec<String>>, LineError> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Ok(None);
    }
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Vec<serde_json::Value>>();
    let values = match stream.next() {
        Some(Ok(values)) => values,
        // Not JSON (or not an array): the other form applies.
        _ => return Ok(None),
    };
    if !rest[stream.byte_offset()..].trim().is_empty() {
        return Err(LineError::Unsupported(
            "text after a JSON array, which BuildKit versions read differently".to_owned(),
        ));
    }
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(LineError::Rejected(
                "when using JSON array syntax, arrays must be comprised of strings only".to_owned(),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `parseWords`: words separated by whitespace, quotes kept (they are removed at expansion), an escape character
/// keeping the next character in the word.
fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let n = chars.len();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut i = 0;
    loop {
        if phase == Phase::Spaces {
            if i == n {
                break;
            }
            if chars[i].is_whitespace() {
                i += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if i == n {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        let mut ch = chars[i];
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                i += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if i + 1 == n {
                    i += 1;
                    continue;
                }
                word.push(ch);
                i += 1;
                ch = chars[i];
            }
            word.push(ch);
            i += 1;
            continue;
        }
        // In quotes.
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if i + 1 == n {
                phase = Phase::Word;
                i += 1;
                continue;
            }
            i += 1;
            word.push(ch);
            ch = chars[i];
        }
        word.push(ch);
        i += 1;
    }
    words
}

/// `parseNameVal`: `KEY value` (old form) or `KEY=value ...`, flattened to `key, value, key, value`.
fn parse_name_val(rest: &str, cmd: &str, escape: char) -> Result<Vec<String>, String> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        let Some(i) = rest.find(is_split_space) else {
            return Err(format!("{} must have two arguments", cmd.to_uppercase()));
        };
        let value = rest[i..].trim_start_matches(is_split_space);
        return Ok(vec![rest[..i].to_owned(), value.to_owned()]);
    }
    let mut out = Vec::new();
    for word in words {
        let Some((k, v)) = word.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in \"{word}\". Must be of the form: name=value"
            ));
        };
        out.push(k.to_owned());
        out.push(v.to_owned());
    }
    Ok(out)
}

/// `heredocsFromLine`: every word of the line that is a heredoc marker.
fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let mut lex = Lexer::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    lex.skip_unset = true;
    let words = lex.words(line, &NoVars).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// `ParseHeredoc`: `[fd]<<[-]WORD` with one word (quotes allowed, which turn expansion off).
pub(crate) fn parse_heredoc(src: &str) -> Result<Option<Heredoc>, String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^([0-9]*)<<(-?)([^<]*)$")
            .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
    });
    let Some(caps) = re.captures(src) else {
        return Ok(None);
    };
    let chomp = &caps[2] == "-";
    let rest = &caps[3];
    if rest.is_empty() {
        return Ok(None);
    }
    let mut lex = Lexer::new('\\');
    lex.skip_unset = true;
    let words = lex.words(rest, &NoVars).map_err(|e| e.0)?;
    if words.len() != 1 {
        return Ok(None);
    }
    lex.raw_quotes = true;
    let raw = lex.words(rest, &NoVars).map_err(|e| e.0)?;
    if raw.len() != words.len() {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    Ok(Some(Heredoc {
        expand: quotes(&words[0]) == quotes(&raw[0]),
        name: words[0].clone(),
        chomp,
        content: String::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let ast = parse(text).unwrap();
        assert_eq!(ast.nodes.len(), 1, "{:?}", ast.nodes);
        ast.nodes.into_iter().next().unwrap()
    }

    /// (Dockerfile, instruction, flags, args, json).
    type Case<'a> = (&'a str, &'a str, &'a [&'a str], &'a [&'a str], bool);

    /// Comments say what BuildKit does.
    #[test]
    fn instructions_parse_as_buildkit_does() {
        let cases: &[Case] = &[
            ("copy a b /dst", "copy", &[], &["a", "b", "/dst"], false),
            // Instructions are case-insensitive; whitespace of any ASCII kind separates words.
            (
                "CoPy\ta  \x0Bb /dst\n",
                "copy",
                &[],
                &["a", "b", "/dst"],
                false,
            ),
            (
                "COPY [\"a b\", \"/dst\"]",
                "copy",
                &[],
                &["a b", "/dst"],
                true,
            ),
            // Not JSON: whitespace-separated words, brackets and all.
            ("COPY [a] /dst", "copy", &[], &["[a]", "/dst"], false),
            // Quotes in the shell form do not group words here (the lexer rejects the halves later).
            ("COPY \"a b\" /x", "copy", &[], &["\"a", "b\"", "/x"], false),
            // Flags: leading `--` words; quotes and backslashes processed; the first other word ends them.
            (
                "COPY --from=build --chown=\"a b\" src --x /d",
                "copy",
                &["--from=build", "--chown=a b"],
                &["src", "--x", "/d"],
                false,
            ),
            ("COPY -- --weird /d", "copy", &[], &["--weird", "/d"], false),
            ("COPY --link a /d", "copy", &["--link"], &["a", "/d"], false),
            // Continuations join lines; comment and empty lines inside are skipped; leading spaces of
            // continuation lines are kept.
            (
                "COPY a \\\n# note\n\n   b /d",
                "copy",
                &[],
                &["a", "b", "/d"],
                false,
            ),
            ("FROM x AS y", "from", &[], &["x", "AS", "y"], false),
            // ARG keeps quotes in words; ENV has two forms.
            ("ARG A=\"x y\" B", "arg", &[], &["A=\"x y\"", "B"], false),
            (
                "ENV A=1 B=\"2 3\"",
                "env",
                &[],
                &["A", "1", "B", "\"2 3\""],
                false,
            ),
            ("ENV A 1 2", "env", &[], &["A", "1 2"], false),
            (
                "RUN --mount=type=cache,target=/c make",
                "run",
                &["--mount=type=cache,target=/c"],
                &["make"],
                false,
            ),
            ("RUN [\"a\", \"b\"]", "run", &[], &["a", "b"], true),
        ];
        for (text, cmd, flags, args, json) in cases {
            let node = one(text);
            assert_eq!(node.cmd, *cmd, "{text}");
            assert_eq!(node.flags, *flags, "{text}");
            assert_eq!(node.args, *args, "{text}");
            assert_eq!(node.json, *json, "{text}");
        }
    }

    #[test]
    fn directives_and_escape() {
        // `# escape=` changes both continuation and escaping; it must come before anything else.
        let ast = parse("# syntax=x\n# escape=`\nCOPY a `\n b /d\n").unwrap();
        assert_eq!(ast.escape, '`');
        assert_eq!(ast.nodes[0].args, ["a", "b", "/d"]);
        let ast = parse("# hello\n# escape=`\nCOPY a \\\nRUN x\n").unwrap();
        assert_eq!(ast.escape, '\\');
        assert_eq!(
            ast.nodes.len(),
            1,
            "a comment ends the directives, so `\\` continues"
        );
        assert!(matches!(
            parse("# escape=x\nFROM a\n"),
            Err(ParseError::Rejected { .. })
        ));
        assert!(matches!(
            parse("# escape=`\n# escape=`\nFROM a\n"),
            Err(ParseError::Rejected { .. })
        ));
        // An escaped escape at the end does not continue the line (checked on both daemons).
        let ast = parse("COPY a\\\\\nb /\n").unwrap();
        assert_eq!(ast.nodes.len(), 2);
        assert_eq!(ast.nodes[0].args, ["a\\\\"]);
    }

    #[test]
    fn heredocs_are_attached_and_skipped() {
        let ast = parse(
            "FROM scratch\nCOPY <<EOF <<-\"END\" /d\nhello\n\tEND? no\nEOF\n\tEND\nCOPY a /b\n",
        )
        .unwrap();
        assert_eq!(ast.nodes.len(), 3);
        let copy = &ast.nodes[1];
        assert_eq!(copy.args, ["<<EOF", "<<-\"END\"", "/d"]);
        assert_eq!(copy.heredocs.len(), 2);
        assert_eq!(copy.heredocs[0].name, "EOF");
        assert_eq!(copy.heredocs[0].content, "hello\n\tEND? no\n");
        assert!(copy.heredocs[0].expand);
        assert_eq!(copy.heredocs[1].name, "END");
        assert!(copy.heredocs[1].chomp && !copy.heredocs[1].expand);
        assert_eq!((copy.start_line, copy.end_line), (2, 6));
        // JSON-form instructions have no heredocs; RUN heredocs are skipped as content.
        let ast = parse("RUN <<EOF\nFROM not-an-instruction\nEOF\n").unwrap();
        assert_eq!(ast.nodes.len(), 1);
        assert!(matches!(
            parse("COPY <<EOF /d\nnever ends\n"),
            Err(ParseError::Rejected { .. })
        ));
    }

    #[test]
    fn syntax_detection() {
        let cases: &[(&str, Option<(&str, usize)>)] = &[
            (
                "# syntax=docker/dockerfile:1\nFROM a",
                Some(("docker/dockerfile:1", 1)),
            ),
            (
                "#!/usr/bin/env buildx\n# syntax = x/y:2 --arg\nFROM a",
                Some(("x/y:2", 2)),
            ),
            ("// syntax=x/y\nFROM a", Some(("x/y", 1))),
            ("# escape=`\n#syntax=x/y\nFROM a", Some(("x/y", 2))),
            // Directives end at the first other line.
            ("FROM a\n# syntax=x/y", None),
            ("# a comment\n# syntax=x/y\nFROM a", None),
            ("{\"syntax\": \"x/y\"}", Some(("x/y", 1))),
        ];
        for (text, want) in cases {
            let got = detect_syntax(text);
            assert_eq!(got.as_ref().map(|(s, l)| (s.as_str(), *l)), *want, "{text}");
        }
    }

    #[test]
    fn onbuild_wraps_an_instruction() {
        let node = one("ONBUILD COPY --from=x a /b");
        let sub = node.sub.unwrap();
        assert_eq!(sub.cmd, "copy");
        assert_eq!(sub.flags, ["--from=x"]);
        assert_eq!(sub.args, ["a", "/b"]);
    }
}
