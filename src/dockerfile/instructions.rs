//! Parsed nodes to typed instructions, with the checks BuildKit's `frontend/dockerfile/instructions` makes at parse
//! time: which flags each instruction takes (`bflag.go`), the argument counts, stage names, heredoc sources, and the
//! `RUN --mount` specification (`commands_runmount.go`).
//!
//! Only what decides which context paths a build reads is kept: `FROM`, `ARG`, `ENV`, `COPY`, `ADD`, `RUN` mounts
//! and `ONBUILD`; every other known instruction is [`Kind::Other`].

use std::sync::OnceLock;

use regex::Regex;

use super::lex::{LexError, Value};
use super::parser::{Node, parse_heredoc};

/// Why an instruction cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InstrError {
    /// BuildKit rejects it too (the message is BuildKit's, or close to it).
    #[error("{0}")]
    Rejected(String),
    /// BuildKit versions differ on it, or we do not model it.
    #[error("{0}")]
    Unsupported(String),
}

/// One instruction.
#[derive(Debug, Clone)]
pub(crate) struct Instruction {
    /// What it does.
    pub(crate) kind: Kind,
    /// The instruction as written (continuations joined, trimmed), for explanations.
    pub(crate) text: String,
    /// Its first line (1-based).
    pub(crate) line: usize,
}

/// The instructions that matter for context reads.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// `FROM base [AS name]`; the name is lowercased.
    From {
        /// The base, unexpanded.
        base: String,
        /// The stage name, lowercased.
        name: Option<String>,
    },
    /// `ARG key[=value] ...`, values unexpanded.
    Arg(Vec<(String, Option<String>)>),
    /// `ENV key=value ...`, unexpanded.
    Env(Vec<(String, String)>),
    /// `COPY` or `ADD`.
    Copy(Copy),
    /// `RUN`, of which only the mounts matter.
    Run {
        /// The `--mount` values, as written.
        mounts: Vec<String>,
        /// The `from=` of each mount, read before expansion as BuildKit does to find stage dependencies.
        froms: Vec<String>,
    },
    /// `ONBUILD <instruction>`: the trigger's text, which runs in stages built `FROM` this one.
    Onbuild(String),
    /// Any other instruction.
    Other,
}

/// `COPY`/`ADD` sources and where they come from.
#[derive(Debug, Clone)]
pub(crate) struct Copy {
    /// `ADD` (which fetches `http(s)://` sources instead of reading the context).
    pub(crate) add: bool,
    /// `--from=`, as written.
    pub(crate) from: Option<String>,
    /// The source paths, unexpanded; heredoc sources are not among them (they are inline content).
    pub(crate) sources: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum FlagType {
    Bool,
    String,
    Strings,
}

/// Parsed flag values by name (`BFlags.Parse`); strings flags keep every value.
struct Flags(Vec<(&'static str, Vec<String>)>);

impl Flags {
    fn parse(
        flags: &[String],
        defs: &[(&'static str, FlagType)],
        cmd: &str,
    ) -> Result<Flags, InstrError> {
        let mut out: Vec<(&'static str, Vec<String>)> = Vec::new();
        for flag in flags {
            let Some(body) = flag.strip_prefix("--") else {
                return Err(InstrError::Rejected(format!(
                    "Arg should start with -- : {flag}"
                )));
            };
            if body.is_empty() {
                break;
            }
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(def, typ)) = defs.iter().find(|(n, _)| *n == name) else {
                return Err(if cmd == "copy" && name == "parents" {
                    InstrError::Unsupported(
                        "COPY --parents exists only in the labs frontend images".to_owned(),
                    )
                } else {
                    // A newer frontend may know it, and what it does to context reads is unknown to us.
                    InstrError::Unsupported(format!(
                        "unknown flag --{name} for {}",
                        cmd.to_uppercase()
                    ))
                });
            };
            let seen = out.iter().position(|(n, _)| *n == def);
            if seen.is_some() && typ != FlagType::Strings {
                return Err(InstrError::Rejected(format!(
                    "Duplicate flag specified: {name}"
                )));
            }
            let value = match (typ, value) {
                (FlagType::Bool, Some("")) => {
                    return Err(InstrError::Rejected(format!(
                        "Missing a value on flag: {name}"
                    )));
                }
                (FlagType::Bool, None) => "true".to_owned(),
                (FlagType::Bool, Some(v)) if v.eq_ignore_ascii_case("true") => "true".to_owned(),
                (FlagType::Bool, Some(v)) if v.eq_ignore_ascii_case("false") => "false".to_owned(),
                (FlagType::Bool, Some(v)) => {
                    return Err(InstrError::Rejected(format!(
                        "Expecting boolean value for flag {name}, not: {v}"
                    )));
                }
                (_, None) => {
                    // Newer frontends may accept `--flag value`; BuildKit 0.13 does not.
                    return Err(InstrError::Unsupported(format!(
                        "flag --{name} has no `=value`"
                    )));
                }
                (_, Some(v)) => v.to_owned(),
            };
            match seen {
                Some(i) => out[i].1.push(value),
                None => out.push((def, vec![value])),
            }
        }
        Ok(Flags(out))
    }

    fn values(&self, name: &str) -> &[String] {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
            .unwrap_or_default()
    }

    fn string(&self, name: &str) -> Option<&str> {
        self.values(name).last().map(String::as_str)
    }
}

use FlagType::{Bool, String as Str, Strings};

const COPY_FLAGS: &[(&str, FlagType)] = &[
    ("chown", Str),
    ("chmod", Str),
    ("from", Str),
    ("link", Bool),
    // Stable since Dockerfile 1.19 (BuildKit 0.25); BuildKit 0.13 rejects it.
    ("exclude", Strings),
];
const ADD_FLAGS: &[(&str, FlagType)] = &[
    ("chown", Str),
    ("chmod", Str),
    ("link", Bool),
    ("keep-git-dir", Bool),
    ("checksum", Str),
    ("exclude", Strings),
    ("unpack", Bool),
];
const RUN_FLAGS: &[(&str, FlagType)] = &[("mount", Strings), ("network", Str), ("security", Str)];
const HEALTHCHECK_FLAGS: &[(&str, FlagType)] = &[
    ("interval", Str),
    ("timeout", Str),
    ("start-period", Str),
    ("start-interval", Str),
    ("retries", Str),
];
const OTHER_INSTRUCTIONS: &[&str] = &[
    "cmd",
    "entrypoint",
    "expose",
    "label",
    "maintainer",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// Types one node.
pub(crate) fn instruction(node: &Node) -> Result<Instruction, InstrError> {
    let cmd = node.cmd.as_str();
    let flags = |defs| Flags::parse(&node.flags, defs, cmd);
    let kind = match cmd {
        "from" => {
            flags(&[("platform", Str)])?;
            let name = match node.args.as_slice() {
                [_] => None,
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => {
                    let lower = name.to_lowercase();
                    static RE: OnceLock<Regex> = OnceLock::new();
                    let re = RE.get_or_init(|| {
                        Regex::new("^[a-z][a-z0-9-_.]*$")
                            .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
                    });
                    if !re.is_match(&lower) {
                        return Err(InstrError::Rejected(format!(
                            "invalid name for build stage: \"{name}\", name can't start with a number or contain symbols"
                        )));
                    }
                    Some(lower)
                }
                _ => {
                    return Err(InstrError::Rejected(
                        "FROM requires either one or three arguments".to_owned(),
                    ));
                }
            };
            Kind::From {
                base: node.args[0].clone(),
                name,
            }
        }
        "arg" => {
            flags(&[])?;
            if node.args.is_empty() {
                return Err(InstrError::Rejected(
                    "ARG requires at least one argument".to_owned(),
                ));
            }
            let mut pairs = Vec::new();
            for word in &node.args {
                match word.split_once('=') {
                    Some(("", _)) => {
                        return Err(InstrError::Rejected(
                            "ARG names can not be blank".to_owned(),
                        ));
                    }
                    Some((k, v)) => pairs.push((k.to_owned(), Some(v.to_owned()))),
                    None => pairs.push((word.clone(), None)),
                }
            }
            Kind::Arg(pairs)
        }
        "env" => {
            flags(&[])?;
            if node.args.is_empty() {
                return Err(InstrError::Rejected(
                    "ENV requires at least one argument".to_owned(),
                ));
            }
            let pairs: Vec<(String, String)> = node
                .args
                .chunks(2)
                .map(|kv| (kv[0].clone(), kv.get(1).cloned().unwrap_or_default()))
                .collect();
            if pairs.iter().any(|(k, _)| k.is_empty()) {
                return Err(InstrError::Rejected(
                    "ENV names can not be blank".to_owned(),
                ));
            }
            Kind::Env(pairs)
        }
        "copy" | "add" => {
            let add = cmd == "add";
            let f = flags(if add { ADD_FLAGS } else { COPY_FLAGS })?;
            let upper = cmd.to_uppercase();
            let Some((dest, srcs)) = node.args.split_last().filter(|(_, s)| !s.is_empty()) else {
                return Err(InstrError::Rejected(format!(
                    "{upper} requires at least two arguments, but only one was provided. Destination could not be determined"
                )));
            };
            if parse_heredoc(dest).map_err(InstrError::Rejected)?.is_some() {
                return Err(InstrError::Rejected(format!(
                    "{upper} cannot accept a heredoc as a destination"
                )));
            }
            let mut sources = Vec::new();
            for src in srcs {
                // A heredoc source is inline content; everything else is a path (or, for ADD, a URL).
                if parse_heredoc(src).map_err(InstrError::Rejected)?.is_none() {
                    sources.push(src.clone());
                }
            }
            Kind::Copy(Copy {
                add,
                // `--from=` with nothing after it is the context, as no `--from` is.
                from: f
                    .string("from")
                    .filter(|f| !f.is_empty())
                    .map(str::to_owned),
                sources,
            })
        }
        "run" => {
            let f = flags(RUN_FLAGS)?;
            let mounts = f.values("mount").to_vec();
            let froms = mounts
                .iter()
                .map(|m| mount_from(m))
                .collect::<Result<Vec<_>, _>>()?;
            Kind::Run { mounts, froms }
        }
        "onbuild" => {
            flags(&[])?;
            let Some(sub) = &node.sub else {
                return Err(InstrError::Rejected(
                    "ONBUILD requires at least one argument".to_owned(),
                ));
            };
            match sub.cmd.as_str() {
                "onbuild" => {
                    return Err(InstrError::Rejected(
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_owned(),
                    ));
                }
                "maintainer" | "from" => {
                    return Err(InstrError::Rejected(format!(
                        "{} isn't allowed as an ONBUILD trigger",
                        sub.cmd.to_uppercase()
                    )));
                }
                _ => {}
            }
            static RE: OnceLock<Regex> = OnceLock::new();
            let re = RE.get_or_init(|| {
                Regex::new(r"(?i)^\s*ONBUILD\s*")
                    .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
            });
            let mut expression = re.replace(&node.original, "").into_owned();
            for heredoc in &node.heredocs {
                expression.push('\n');
                expression.push_str(&heredoc.content);
                expression.push_str(&heredoc.name);
            }
            Kind::Onbuild(expression)
        }
        "healthcheck" => {
            if node
                .args
                .first()
                .is_some_and(|t| !t.eq_ignore_ascii_case("none"))
            {
                flags(HEALTHCHECK_FLAGS)?;
            } else {
                flags(&[])?;
            }
            Kind::Other
        }
        c if OTHER_INSTRUCTIONS.contains(&c) => {
            flags(&[])?;
            Kind::Other
        }
        _ => {
            return Err(InstrError::Rejected(format!(
                "unknown instruction: {}",
                node.cmd
            )));
        }
    };
    Ok(Instruction {
        kind,
        text: node.original.trim().to_owned(),
        line: node.start_line,
    })
}

/// Splits a `--mount` value into fields with `encoding/csv` rules (quotes group, `""` is a quote).
fn csv_fields(value: &str) -> Result<Vec<String>, InstrError> {
    go_csv_fields(value)
        .map_err(|why| InstrError::Rejected(format!("failed to parse csv mounts: {why}")))
}

/// One line of CSV as Go's `encoding/csv` reads it (which BuildKit's `--mount` parser and buildx's `--secret`
/// use): fields separated by commas, a field in double quotes may hold commas, `""` in it is one quote. The error
/// is Go's message.
pub(crate) fn go_csv_fields(value: &str) -> Result<Vec<String>, &'static str> {
    let bad = |why: &'static str| why;
    let mut fields = Vec::new();
    if value.is_empty() {
        return Ok(fields);
    }
    let mut chars = value.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(bad("extraneous or missing \" in quoted-field")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err(bad("extraneous or missing \" in quoted-field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err(bad("bare \" in non-quoted-field")),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// The `from=` of a mount as BuildKit reads it before expansion (to find the stages a `RUN` depends on); a
/// variable there is an error.
fn mount_from(value: &str) -> Result<String, InstrError> {
    let mut from = String::new();
    for field in csv_fields(value)? {
        let Some((key, v)) = field.split_once('=') else {
            continue;
        };
        if key.eq_ignore_ascii_case("from") {
            if v.find('$').is_some_and(|i| i != v.len() - 1) {
                return Err(InstrError::Rejected(
                    "'from' doesn't support variable expansion, define alias stage instead"
                        .to_owned(),
                ));
            }
            v.clone_into(&mut from);
        }
    }
    Ok(from)
}

/// The kind of a `RUN --mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MountType {
    /// `bind` (the default).
    Bind,
    /// `cache`.
    Cache,
    /// `tmpfs`.
    Tmpfs,
    /// `secret`.
    Secret,
    /// `ssh`.
    Ssh,
}

/// A `RUN --mount` after expansion; only what decides context reads.
#[derive(Debug, Clone)]
pub(crate) struct Mount {
    /// The type, when known.
    pub(crate) typ: Option<MountType>,
    /// `from=` (empty: the build context, or scratch for a cache).
    pub(crate) from: Value,
    /// `source=`/`src=`.
    pub(crate) source: Value,
    /// Why the type is unknown, when it is.
    pub(crate) typ_unknown: Option<String>,
}

/// `parseMount` with an expander: every value is expanded, keys are checked.
pub(crate) fn parse_mount(
    value: &str,
    expand: &mut dyn FnMut(&str) -> Result<Value, LexError>,
) -> Result<Mount, InstrError> {
    let mut mount = Mount {
        typ: Some(MountType::Bind),
        from: Value::Known(String::new()),
        source: Value::Known(String::new()),
        typ_unknown: None,
    };
    for field in csv_fields(value)? {
        let Some((key, raw)) = field.split_once('=') else {
            match field.to_lowercase().as_str() {
                "readonly" | "ro" | "readwrite" | "rw" => continue,
                "required" if matches!(mount.typ, Some(MountType::Secret | MountType::Ssh)) => {
                    continue;
                }
                "required" => {
                    return Err(InstrError::Rejected(
                        "unexpected key 'required' for this mount type".to_owned(),
                    ));
                }
                _ => {
                    return Err(InstrError::Rejected(format!(
                        "invalid field '{field}' must be a key=value pair"
                    )));
                }
            }
        };
        let key = key.to_lowercase();
        let v = expand(raw).map_err(|e| InstrError::Rejected(e.0))?;
        match key.as_str() {
            "type" => match &v {
                Value::Known(t) => {
                    mount.typ = Some(match t.to_lowercase().as_str() {
                        "bind" => MountType::Bind,
                        "cache" => MountType::Cache,
                        "tmpfs" => MountType::Tmpfs,
                        "secret" => MountType::Secret,
                        "ssh" => MountType::Ssh,
                        _ => {
                            return Err(InstrError::Rejected(format!(
                                "unsupported mount type \"{t}\""
                            )));
                        }
                    });
                    mount.typ_unknown = None;
                }
                Value::Unknown(why) => {
                    mount.typ = None;
                    mount.typ_unknown = Some(why.clone());
                }
            },
            "from" => mount.from = v,
            "source" | "src" => mount.source = v,
            "target" | "dst" | "destination" | "readonly" | "ro" | "readwrite" | "rw"
            | "required" | "size" | "id" | "sharing" | "mode" | "uid" | "gid" | "env" => {}
            _ => {
                return Err(InstrError::Rejected(format!(
                    "unexpected key '{key}' in '{field}'"
                )));
            }
        }
    }
    Ok(mount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parser::parse;

    fn instr(text: &str) -> Result<Instruction, InstrError> {
        instruction(&parse(text).unwrap().nodes[0])
    }

    #[test]
    fn copy_sources_exclude_heredocs() {
        let i = instr("COPY --from=build <<EOF a \"b\" /dst\nx\nEOF\n").unwrap();
        let Kind::Copy(c) = i.kind else { panic!() };
        assert_eq!(c.from.as_deref(), Some("build"));
        assert_eq!(c.sources, ["a", "\"b\""]);
        assert!(!c.add);
    }

    /// Flag errors: what BuildKit rejects, and what versions disagree on (both fall back).
    #[test]
    fn flags() {
        let cases = [
            ("COPY --link=maybe a /b", "Rejected"),
            ("COPY --from=a --from=b a /b", "Rejected"),
            ("COPY --from a /b", "Unsupported"),
            ("COPY --parents a /b", "Unsupported"),
            ("COPY --nope a /b", "Unsupported"),
            ("WORKDIR --x=1 /a", "Unsupported"),
            ("RUN --device=x true", "Unsupported"),
            ("COPY a", "Rejected"),
            ("COPY a <<EOF\nx\nEOF\n", "Rejected"),
            ("FROM a AS 1x", "Rejected"),
            ("FROM a b", "Rejected"),
            ("FOO bar", "Rejected"),
            ("ONBUILD FROM x", "Rejected"),
            ("RUN --mount=from=$X,target=/t true", "Rejected"),
        ];
        for (text, want) in cases {
            let got = match instr(text) {
                Ok(_) => "Ok",
                Err(InstrError::Rejected(_)) => "Rejected",
                Err(InstrError::Unsupported(_)) => "Unsupported",
            };
            assert_eq!(got, want, "{text}");
        }
        assert!(instr("COPY --link --exclude=a --exclude=b --chmod=644 a /b").is_ok());
        assert!(instr("ADD --checksum=sha256:x --unpack=true --keep-git-dir=false a /b").is_ok());
        assert!(
            instr("RUN --mount=type=cache,target=/c --network=none --security=insecure x").is_ok()
        );
        assert!(instr("HEALTHCHECK --interval=5s CMD true").is_ok());
    }

    #[test]
    fn onbuild_expression() {
        let i = instr("onbuild  COPY <<EOF /x\nhi\nEOF\n").unwrap();
        let Kind::Onbuild(e) = i.kind else { panic!() };
        assert_eq!(e, "COPY <<EOF /x\nhi\nEOF");
    }

    #[test]
    fn mounts() {
        let mut id = |s: &str| Ok(Value::Known(s.to_owned()));
        let m = parse_mount("type=cache,target=/c,sharing=locked", &mut id).unwrap();
        assert_eq!(m.typ, Some(MountType::Cache));
        // A field is quoted only when it starts with a quote.
        let m = parse_mount("\"source=a,b\",target=/t,ro", &mut id).unwrap();
        assert_eq!(m.typ, Some(MountType::Bind));
        assert_eq!(m.source, Value::Known("a,b".into()));
        assert!(parse_mount("type=volume,target=/t", &mut id).is_err());
        assert!(parse_mount("target=/t,bogus=1", &mut id).is_err());
        assert!(parse_mount("src=a\"b", &mut id).is_err());
        assert_eq!(
            mount_from("type=bind,from=build,source=/x").unwrap(),
            "build"
        );
    }
}
