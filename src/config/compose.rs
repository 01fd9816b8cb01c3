//! Compose files (`compose.yaml`, `docker-compose.yml`) as a config.
//!
//! Each service with a `build:` becomes a `[services.NAME]` table of `buildopt.toml`'s schema, made of the values the
//! compose file gives, each placed at its line of the compose file; the tables then go through the same `--set`
//! overrides and checks as the TOML ones, so an error in a compose value names the compose file, its line and the
//! compose key. Services without `build:` are not built.
//!
//! Values are interpolated as Compose does it, with the variables of the environment and then of the `.env` file
//! beside the compose file: an unset variable without a default is an empty string, with a warning. Only what
//! buildopt reads is interpolated (`image`, `platform`, `build`, the top-level `secrets` that builds use), so a
//! runtime setting whose variable is missing does not stop a build.
//!
//! The mapping (README, "Compose files"):
//!
//! * `image: [REGISTRY/]REPOSITORY[:TAG]`: the repository, and the tag (`latest` when none) as the first requested
//!   tag. All images name one registry (or none): it is the `[registry]`, plain HTTP when it is on the loopback
//!   interface, as Docker has it. Under a `buildopt.toml`'s `[registry]`, images must be in that registry (or name
//!   none). A service without `image:` pushes to the repository named like the service, as in `buildopt.toml`.
//! * `build:` as a string is the context. `context` (relative to the compose file), `dockerfile` (relative to the
//!   context), `dockerfile_inline`, `args`, `target`, `platforms` (else the service's `platform`), `labels`,
//!   `tags` (in the service's repository), `additional_contexts` (`service:NAME` makes NAME a dependency),
//!   `secrets` (through the top-level `secrets:`, `file` or `environment`), `ssh`, `cache_from` and `cache_to`
//!   (registry caches), `network` (`default`, `host` or `none`; one for the whole run, as `[buildkit] network`).
//! * `extra_hosts`, `privileged`, `entitlements`, a named network and unknown `build` keys would change what is
//!   built and buildopt cannot do them: errors. `shm_size`, `ulimits`, `pull`, `no_cache` and `isolation` do not
//!   change the image: warnings, and they are not applied.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde_spanned::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::ConfigError;
use super::vars;

/// The compose file names looked for, in Compose's order of preference.
pub const COMPOSE_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// Whether `path` names a YAML file (`.yaml`, `.yml`): a compose file.
pub fn is_compose_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// What a compose file gives the config.
pub(super) struct Import {
    /// The compose file (absolute).
    pub path: PathBuf,
    /// Its text, for locating errors.
    pub text: String,
    /// Where its text starts in the locator's offsets.
    pub base: usize,
    /// Each building service: its name, the span of its key, and its `[services.NAME]` table.
    pub services: Vec<(String, Range<usize>, DeTable<'static>)>,
    /// The registry the images name, when `buildopt.toml` has no `[registry]`: url, whether plain HTTP, and where.
    pub registry: Option<(String, bool, Range<usize>)>,
    /// The `build.network` the services agree on, and where.
    pub network: Option<(String, Range<usize>)>,
    /// Keys read but not applied, unset variables: `FILE:LINE: message`.
    pub warnings: Vec<String>,
}

/// Reads the compose file at `path` (absolute). Its spans start at `base`; `env` gives variables (the `.env` file
/// beside it comes after); `registry` is `buildopt.toml`'s `[registry] url`, if any.
pub(super) fn import(
    path: &Path,
    base: usize,
    env: &dyn Fn(&str) -> Option<String>,
    registry: Option<&str>,
) -> Result<Import, ConfigError> {
    let text = fs_err::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let dir = path.parent().map(Path::to_owned).unwrap_or_default();
    let dotenv_path = dir.join(".env");
    let dotenv = if dotenv_path.is_file() {
        let t = fs_err::read_to_string(&dotenv_path).map_err(|source| ConfigError::Read {
            path: dotenv_path.clone(),
            source,
        })?;
        parse_dotenv(&t, &dotenv_path, env)?
    } else {
        Vec::new()
    };
    let lookup = |name: &str| {
        env(name).or_else(|| {
            dotenv
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    };
    let root = parse_yaml(&text, path)?;
    let mut line_starts = vec![0];
    line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    let mut r = Reader {
        path,
        dir,
        line_starts,
        base,
        env: &lookup,
        unset: BTreeSet::new(),
        warnings: Vec::new(),
    };
    let read = r.read(&root, registry)?;
    Ok(Import {
        path: path.to_owned(),
        text,
        base,
        services: read.tables,
        registry: read.registry,
        network: read.network,
        warnings: r.warnings,
    })
}

/// A YAML node as a compose file needs it: scalars keep their text (`1.10` stays `1.10`, `yes` stays `yes`), mappings
/// their order; aliases are resolved and `<<` merge keys applied.
#[derive(Debug, Clone)]
struct Node {
    line: usize,
    value: Value,
}

#[derive(Debug, Clone)]
enum Value {
    Null,
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    line: usize,
    value: Node,
}

impl Node {
    fn get(&self, key: &str) -> Option<&Entry> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

fn parse_yaml(text: &str, path: &Path) -> Result<Node, ConfigError> {
    use saphyr::{MarkedYaml, YamlLoader};
    let invalid = |e: &saphyr::ScanError| ConfigError::Invalid {
        path: path.to_owned(),
        line: e.marker().line().max(1),
        message: format!("not a valid YAML file: {}", e.info()),
    };
    let mut parser = saphyr_parser::Parser::new_from_str(text);
    let mut loader: YamlLoader<'_, MarkedYaml<'_>> = YamlLoader::default();
    loader.early_parse(false);
    parser.load(&mut loader, true).map_err(|e| invalid(&e))?;
    if let Some(e) = loader.error() {
        return Err(invalid(e));
    }
    let mut docs = loader.into_documents();
    match docs.len() {
        0 => Ok(Node {
            line: 1,
            value: Value::Map(Vec::new()),
        }),
        1 => convert(&docs.remove(0), path),
        _ => Err(ConfigError::Invalid {
            path: path.to_owned(),
            line: docs[1].span.start.line(),
            message: "a compose file is one YAML document; remove the `---` and what follows, or merge them"
                .to_owned(),
        }),
    }
}

fn convert(y: &saphyr::MarkedYaml<'_>, path: &Path) -> Result<Node, ConfigError> {
    use saphyr::{Scalar, ScalarStyle, YamlData};
    let line = y.span.start.line().max(1);
    let bad = |message: String| ConfigError::Invalid {
        path: path.to_owned(),
        line,
        message,
    };
    let value = match &y.data {
        YamlData::Representation(s, style, _) => {
            if *style == ScalarStyle::Plain
                && matches!(s.as_ref(), "" | "~" | "null" | "Null" | "NULL")
            {
                Value::Null
            } else {
                Value::Str(s.to_string())
            }
        }
        YamlData::Value(v) => match v {
            Scalar::Null => Value::Null,
            Scalar::Boolean(b) => Value::Str(b.to_string()),
            Scalar::Integer(i) => Value::Str(i.to_string()),
            Scalar::FloatingPoint(f) => Value::Str(f.to_string()),
            Scalar::String(s) => Value::Str(s.to_string()),
        },
        YamlData::Sequence(items) => Value::Seq(
            items
                .iter()
                .map(|i| convert(i, path))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(map) => {
            let mut entries: Vec<Entry> = Vec::new();
            let mut merged: Vec<Entry> = Vec::new();
            for (k, v) in map {
                let (key, plain) = match &k.data {
                    YamlData::Representation(s, style, _) => {
                        (s.to_string(), *style == ScalarStyle::Plain)
                    }
                    _ => {
                        return Err(ConfigError::Invalid {
                            path: path.to_owned(),
                            line: k.span.start.line().max(1),
                            message: "a mapping key must be a string".to_owned(),
                        });
                    }
                };
                let value = convert(v, path)?;
                if key == "<<" && plain {
                    // YAML's merge key, as Compose reads it: the keys of the mapping (or of each mapping of a list,
                    // earlier ones first) that this mapping does not have.
                    let sources = match value.value {
                        Value::Map(m) => vec![m],
                        Value::Seq(items) => items
                            .into_iter()
                            .map(|i| match i.value {
                                Value::Map(m) => Ok(m),
                                _ => Err(bad("`<<` merges mappings only".to_owned())),
                            })
                            .collect::<Result<_, _>>()?,
                        _ => return Err(bad("`<<` merges mappings only".to_owned())),
                    };
                    for e in sources.into_iter().flatten() {
                        if !merged.iter().any(|m| m.key == e.key) {
                            merged.push(e);
                        }
                    }
                    continue;
                }
                entries.push(Entry {
                    key,
                    line: k.span.start.line().max(1),
                    value,
                });
            }
            for e in merged {
                if !entries.iter().any(|x| x.key == e.key) {
                    entries.push(e);
                }
            }
            Value::Map(entries)
        }
        YamlData::Tagged(_, inner) => return convert(inner, path),
        YamlData::Alias(_) | YamlData::BadValue => {
            return Err(bad(
                "an alias to an unknown anchor, or a value of the wrong type for its tag"
                    .to_owned(),
            ));
        }
    };
    Ok(Node { line, value })
}

/// `.env` as Compose reads it: `KEY=VALUE` lines (`export KEY=VALUE` too), `#` comments and blank lines; a value
/// unquoted (trimmed, a ` #` starts a comment), in double quotes (`\n`, `\t`, `\\`, `\"` escapes) or in single
/// quotes (as written); quoted values may span lines. Variables in unquoted and double-quoted values are
/// interpolated (the environment first, then the lines above). A later line of a key wins.
fn parse_dotenv(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let lineno = i + 1;
        let err = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: lineno,
            message,
        };
        let line = lines[i].trim_start();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let (key, rest) = match line.split_once('=') {
            Some((k, r)) => (k.trim(), Some(r)),
            None => (line.trim(), None),
        };
        let valid = !key.is_empty()
            && !key.as_bytes()[0].is_ascii_digit()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(err(format!(
                "`{key}` is not a variable name; a line is `NAME=VALUE`"
            )));
        }
        // `NAME` alone takes the environment's value, which is looked up first anyway.
        let Some(rest) = rest else { continue };
        let rest = rest.trim_start();
        let lookup = |name: &str| {
            env(name).or_else(|| {
                out.iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
        };
        let interpolated = |raw: &str| {
            vars::interpolate_lenient(raw, &lookup, &mut |_| {})
                .map_err(|e| err(format!("`{key}`: {e}")))
        };
        let value = if let Some(first) = rest.strip_prefix(['\'', '"']) {
            let quote = rest.as_bytes()[0] as char;
            let mut buf = first.to_owned();
            let end = loop {
                if let Some(end) = closing_quote(&buf, quote) {
                    break end;
                }
                if i >= lines.len() {
                    return Err(err(format!("the value of `{key}` has no closing {quote}")));
                }
                buf.push('\n');
                buf.push_str(lines[i]);
                i += 1;
            };
            let after = buf[end + 1..].trim();
            if !after.is_empty() && !after.starts_with('#') {
                return Err(err(format!(
                    "`{key}`: `{after}` after the closing {quote}; put a comment after ` #`"
                )));
            }
            if quote == '\'' {
                buf[..end].to_owned()
            } else {
                interpolated(&unescape(&buf[..end]))?
            }
        } else {
            let cut = [" #", "\t#"]
                .iter()
                .filter_map(|c| rest.find(c))
                .min()
                .unwrap_or(rest.len());
            interpolated(rest[..cut].trim_end())?
        };
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// The byte index of the first `quote` in `s` that no backslash escapes (single quotes have no escapes).
fn closing_quote(s: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if quote == '"' && c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        if c == quote && !escaped {
            return Some(i);
        }
        escaped = false;
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// An image reference as Compose writes it: `[HOST[:PORT]/]REPOSITORY[:TAG]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageRef {
    host: Option<String>,
    repo: String,
    tag: Option<String>,
}

impl ImageRef {
    fn parse(s: &str) -> Result<ImageRef, String> {
        if s.contains('@') {
            return Err(format!(
                "`{s}` is pinned by digest; an image buildopt builds is named by repository and tag"
            ));
        }
        let (host, rest) = match s.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_owned()), rest)
            }
            _ => (None, s),
        };
        let (repo, tag) = match rest.rsplit_once(':') {
            Some((r, t)) => (r, Some(t.to_owned())),
            None => (rest, None),
        };
        super::validate_repository(repo)?;
        if host.as_deref() == Some("") {
            return Err(format!("`{s}` has an empty registry host"));
        }
        Ok(ImageRef {
            host,
            repo: repo.to_owned(),
            tag,
        })
    }

    /// The repository under the registry `url` (a `host[:port][/path]`), or None when the reference is in another
    /// registry.
    fn repo_under(&self, url: Option<&str>) -> Option<String> {
        match (&self.host, url) {
            (None, _) => Some(self.repo.clone()),
            (Some(_), None) => None,
            (Some(h), Some(url)) => format!("{h}/{}", self.repo)
                .strip_prefix(&format!("{}/", url.trim_end_matches('/')))
                .map(str::to_owned),
        }
    }
}

/// A host on the loopback interface, which Docker reaches over plain HTTP by default.
fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    name == "localhost" || name == "::1" || name.starts_with("127.")
}

/// `path` without `.` components and with `..` applied, as Compose resolves paths (lexically).
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// `NAME=VALUE` entries, each with its line.
type Pairs = Vec<(String, String, usize)>;
/// References with their text and line.
type Refs = Vec<(ImageRef, String, usize)>;

/// One building service, read: every value with its line (a list's own line after it).
struct Svc {
    name: String,
    line: usize,
    image: Option<(ImageRef, usize)>,
    context: (String, usize),
    dockerfile: Option<(String, usize)>,
    dockerfile_inline: Option<(String, usize)>,
    args: Option<(Pairs, usize)>,
    labels: Option<(Pairs, usize)>,
    contexts: Option<(Pairs, usize)>,
    platforms: Option<(Vec<(String, usize)>, usize)>,
    target: Option<(String, usize)>,
    tags: Refs,
    cache_from: Option<(Refs, usize)>,
    cache_to: Option<(ImageRef, String, Option<String>, usize)>,
    secrets: Option<(Vec<(String, usize)>, usize)>,
    ssh: Option<(Vec<(String, usize)>, usize)>,
    network: Option<(String, usize)>,
}

/// What [`Reader::read`] gives: the service tables, the registry and the network.
struct Read {
    tables: Vec<(String, Range<usize>, DeTable<'static>)>,
    registry: Option<(String, bool, Range<usize>)>,
    network: Option<(String, Range<usize>)>,
}

struct Reader<'a> {
    path: &'a Path,
    dir: PathBuf,
    line_starts: Vec<usize>,
    base: usize,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Variables already warned about.
    unset: BTreeSet<String>,
    warnings: Vec<String>,
}

impl Reader<'_> {
    fn span(&self, line: usize) -> Range<usize> {
        let start = self.base
            + self
                .line_starts
                .get(line.saturating_sub(1))
                .copied()
                .unwrap_or(0);
        start..start + 1
    }

    fn err(&self, line: usize, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            message,
        }
    }

    fn warn(&mut self, line: usize, message: String) {
        self.warnings
            .push(format!("{}:{line}: {message}", self.path.display()));
    }

    /// A scalar, interpolated; `key` names it in messages.
    fn string(&mut self, node: &Node, key: &str) -> Result<String, ConfigError> {
        let Value::Str(s) = &node.value else {
            return Err(self.err(
                node.line,
                format!("`{key}` must be a string, not {}", node.kind()),
            ));
        };
        self.interpolate(s, node.line, key)
    }

    fn interpolate(&mut self, s: &str, line: usize, key: &str) -> Result<String, ConfigError> {
        if !s.contains('$') {
            return Ok(s.to_owned());
        }
        let mut missing = Vec::new();
        let out = vars::interpolate_lenient(s, self.env, &mut |n| missing.push(n.to_owned()))
            .map_err(|e| self.err(line, format!("`{key}`: {e}")))?;
        for name in missing {
            if self.unset.insert(name.clone()) {
                self.warn(
                    line,
                    format!(
                        "`{key}`: variable `{name}` is not set, so it is an empty string (as Compose reads it); set it in the environment or in .env"
                    ),
                );
            }
        }
        Ok(out)
    }

    /// A scalar or null.
    fn opt_string(&mut self, node: &Node, key: &str) -> Result<Option<String>, ConfigError> {
        if node.is_null() {
            Ok(None)
        } else {
            self.string(node, key).map(Some)
        }
    }

    /// A list of scalars.
    fn strings(&mut self, node: &Node, key: &str) -> Result<Vec<(String, usize)>, ConfigError> {
        match &node.value {
            Value::Null => Ok(Vec::new()),
            Value::Seq(items) => items
                .iter()
                .map(|i| Ok((self.string(i, key)?, i.line)))
                .collect(),
            _ => Err(self.err(
                node.line,
                format!("`{key}` must be a list, not {}", node.kind()),
            )),
        }
    }

    /// `{NAME: VALUE}` or `[NAME=VALUE, NAME]`: the pairs, a missing value None.
    fn pairs(
        &mut self,
        node: &Node,
        key: &str,
    ) -> Result<Vec<(String, Option<String>, usize)>, ConfigError> {
        match &node.value {
            Value::Null => Ok(Vec::new()),
            Value::Map(entries) => entries
                .iter()
                .map(|e| {
                    let v = self.opt_string(&e.value, &format!("{key}.{}", e.key))?;
                    Ok((e.key.clone(), v, e.line))
                })
                .collect(),
            Value::Seq(items) => items
                .iter()
                .map(|i| {
                    let s = self.string(i, key)?;
                    Ok(match s.split_once('=') {
                        Some((k, v)) => (k.to_owned(), Some(v.to_owned()), i.line),
                        None => (s, None, i.line),
                    })
                })
                .collect(),
            Value::Str(_) => Err(self.err(
                node.line,
                format!(
                    "`{key}` must be a mapping or a list of NAME=VALUE, not {}",
                    node.kind()
                ),
            )),
        }
    }

    /// A boolean as Compose (YAML) writes it.
    fn boolean(&mut self, node: &Node, key: &str) -> Result<bool, ConfigError> {
        let s = self.string(node, key)?;
        match s.as_str() {
            "true" | "True" | "TRUE" => Ok(true),
            "false" | "False" | "FALSE" => Ok(false),
            _ => Err(self.err(
                node.line,
                format!("`{key}` must be true or false, not `{s}`"),
            )),
        }
    }

    /// `~/x` with the home directory; relative paths under the compose file's directory.
    fn local_path(&self, p: &str) -> String {
        let p = match p.strip_prefix("~/") {
            Some(rest) => match (self.env)("HOME") {
                Some(home) => format!("{home}/{rest}"),
                None => p.to_owned(),
            },
            None => p.to_owned(),
        };
        clean(&self.dir.join(p)).to_string_lossy().into_owned()
    }

    fn read(&mut self, root: &Node, toml_registry: Option<&str>) -> Result<Read, ConfigError> {
        let Value::Map(top) = &root.value else {
            return Err(self.err(
                root.line,
                format!(
                    "a compose file is a mapping with `services:`, not {}",
                    root.kind()
                ),
            ));
        };
        for e in top {
            match e.key.as_str() {
                "services" | "secrets" | "version" | "name" | "networks" | "volumes"
                | "configs" => {}
                "include" => self.warn(
                    e.line,
                    "`include`: buildopt does not read included compose files; their services are not built"
                        .to_owned(),
                ),
                k if k.starts_with("x-") => {}
                k => self.warn(
                    e.line,
                    format!("unknown top-level key `{k}`: not read"),
                ),
            }
        }
        let Some(services) = root.get("services") else {
            return Err(self.err(
                root.line,
                "no `services:`; a compose file names the services to build".to_owned(),
            ));
        };
        let Value::Map(services) = &services.value.value else {
            return Err(self.err(
                services.line,
                format!(
                    "`services` must be a mapping, not {}",
                    services.value.kind()
                ),
            ));
        };
        let mut read = Vec::new();
        for e in services {
            if let Some(svc) = self.service(e, root)? {
                read.push(svc);
            }
        }
        if read.is_empty() {
            let line = root.get("services").map_or(root.line, |s| s.line);
            self.warn(
                line,
                "no service has a `build:`: there is nothing to build".to_owned(),
            );
        }

        // The registry: buildopt.toml's, else the one host the images name.
        let mut registry: Option<(String, bool, usize)> = None;
        match toml_registry {
            Some(url) => {
                for s in &read {
                    if let Some((i, line)) = &s.image
                        && i.repo_under(Some(url)).is_none()
                    {
                        return Err(self.err(
                            *line,
                            format!(
                                "`services.{}.image`: `{}/{}` is not in the registry `{url}` of the [registry] of buildopt.toml; name an image there, or one without a registry host",
                                s.name,
                                i.host.as_deref().unwrap_or_default(),
                                i.repo
                            ),
                        ));
                    }
                }
            }
            None => {
                let mut first: Option<(&str, &str)> = None;
                for s in &read {
                    let Some((ImageRef { host: Some(h), .. }, line)) = &s.image else {
                        continue;
                    };
                    match first {
                        None => {
                            first = Some((h, &s.name));
                            registry = Some((h.clone(), is_loopback(h), *line));
                        }
                        Some((other, by)) if other != h => {
                            return Err(self.err(
                                *line,
                                format!(
                                    "`services.{}.image`: registry `{h}` is not `{other}`, the registry of service `{by}`; buildopt pushes every service to one registry",
                                    s.name
                                ),
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        let url = toml_registry
            .map(str::to_owned)
            .or_else(|| registry.as_ref().map(|r| r.0.clone()));

        // The network: one for the run.
        let mut network: Option<(String, usize, &str)> = None;
        for s in &read {
            if let Some((n, line)) = &s.network {
                match &network {
                    None => network = Some((n.clone(), *line, &s.name)),
                    Some((other, _, by)) if other != n => {
                        return Err(self.err(
                            *line,
                            format!(
                                "`services.{}.build.network`: `{n}` is not `{other}`, the network of service `{by}`; buildopt runs every build of a run on one network (`[buildkit] network`)",
                                s.name
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }

        let mut tables = Vec::new();
        for s in &read {
            tables.push((
                s.name.clone(),
                self.span(s.line),
                self.table(s, url.as_deref())?,
            ));
        }
        Ok(Read {
            tables,
            registry: registry.map(|(u, insecure, line)| (u, insecure, self.span(line))),
            network: network.map(|(n, line, _)| (n, self.span(line))),
        })
    }

    /// One service: None when it has no `build:`.
    fn service(&mut self, e: &Entry, root: &Node) -> Result<Option<Svc>, ConfigError> {
        let name = &e.key;
        let svc = &e.value;
        let key = |k: &str| format!("services.{name}.{k}");
        if svc.is_null() {
            return Ok(None);
        }
        if !matches!(svc.value, Value::Map(_)) {
            return Err(self.err(
                svc.line,
                format!("`services.{name}` must be a mapping, not {}", svc.kind()),
            ));
        }
        let build = svc.get("build").filter(|b| !b.value.is_null());
        if let Some(ext) = svc.get("extends") {
            let (file, base) = match &ext.value.value {
                Value::Str(s) => (None, Some(s.clone())),
                Value::Map(_) => (
                    ext.value.get("file").map(|f| f.value.clone()),
                    ext.value.get("service").and_then(|s| match &s.value.value {
                        Value::Str(s) => Some(s.clone()),
                        _ => None,
                    }),
                ),
                _ => (None, None),
            };
            let base_builds = base
                .as_ref()
                .and_then(|b| root.get("services")?.value.get(b))
                .is_some_and(|b| b.value.get("build").is_some());
            if build.is_some() || (file.is_none() && base_builds) {
                return Err(self.err(
                    ext.line,
                    format!(
                        "`{}`: buildopt does not merge `extends` into build settings; write the service's `build:` out in full",
                        key("extends")
                    ),
                ));
            }
            if file.is_some() {
                self.warn(
                    ext.line,
                    format!(
                        "`{}`: buildopt does not read other compose files; a `build:` there is not built",
                        key("extends")
                    ),
                );
            }
        }
        let Some(build) = build else {
            tracing::debug!(
                "{}: service `{name}` has no `build:`; it is not built",
                self.path.display()
            );
            return Ok(None);
        };
        let image = match svc.get("image") {
            Some(i) => match self.opt_string(&i.value, &key("image"))? {
                Some(s) => Some((
                    ImageRef::parse(&s)
                        .map_err(|m| self.err(i.value.line, format!("`{}`: {m}", key("image"))))?,
                    i.value.line,
                )),
                None => None,
            },
            None => None,
        };
        let platform = match svc.get("platform") {
            Some(p) => self
                .opt_string(&p.value, &key("platform"))?
                .map(|v| (v, p.value.line)),
            None => None,
        };

        let mut out = Svc {
            name: name.clone(),
            line: e.line,
            image,
            context: (self.local_path("."), build.line),
            dockerfile: None,
            dockerfile_inline: None,
            args: None,
            labels: None,
            contexts: None,
            platforms: platform.map(|(p, line)| (vec![(p, line)], line)),
            target: None,
            tags: Vec::new(),
            cache_from: None,
            cache_to: None,
            secrets: None,
            ssh: None,
            network: None,
        };
        let build_entries = match &build.value.value {
            Value::Str(_) => {
                let c = self.string(&build.value, &key("build"))?;
                out.context = (
                    self.context_path(&c, build.value.line, &key("build"))?,
                    build.value.line,
                );
                return Ok(Some(out));
            }
            Value::Map(entries) => entries,
            _ => {
                return Err(self.err(
                    build.value.line,
                    format!(
                        "`{}` must be a context path or a mapping, not {}",
                        key("build"),
                        build.value.kind()
                    ),
                ));
            }
        };
        let bkey = |k: &str| format!("services.{name}.build.{k}");
        let mut dockerfile_rel: Option<(String, usize)> = None;
        for b in build_entries {
            let k = bkey(&b.key);
            let v = &b.value;
            match b.key.as_str() {
                "context" => {
                    let c = self.string(v, &k)?;
                    out.context = (self.context_path(&c, v.line, &k)?, v.line);
                }
                "dockerfile" => dockerfile_rel = self.opt_string(v, &k)?.map(|d| (d, v.line)),
                "dockerfile_inline" => {
                    out.dockerfile_inline = self.opt_string(v, &k)?.map(|d| (d, v.line));
                }
                "args" => {
                    let mut args = Vec::new();
                    for (n, value, line) in self.pairs(v, &k)? {
                        // An argument without a value takes the variable's, and is left out when it is not set.
                        match value.or_else(|| (self.env)(&n)) {
                            Some(value) => args.push((n, value, line)),
                            None => continue,
                        }
                    }
                    out.args = Some((args, b.line));
                }
                "labels" => {
                    let labels = self
                        .pairs(v, &k)?
                        .into_iter()
                        .map(|(n, value, line)| (n, value.unwrap_or_default(), line))
                        .collect();
                    out.labels = Some((labels, b.line));
                }
                "additional_contexts" => {
                    let mut contexts = Vec::new();
                    for (n, value, line) in self.pairs(v, &k)? {
                        let Some(value) = value else {
                            return Err(self.err(
                                line,
                                format!("`{k}`: context `{n}` has no value; write NAME=PATH, NAME=service:OTHER or NAME=docker-image://REF"),
                            ));
                        };
                        let remote = [
                            "service:",
                            "docker-image://",
                            "oci-layout://",
                            "git://",
                            "git@",
                            "https://",
                            "http://",
                            "input:",
                            "local:",
                        ];
                        let value = if remote.iter().any(|p| value.starts_with(p)) {
                            value
                        } else {
                            self.local_path(&value)
                        };
                        contexts.push((n, value, line));
                    }
                    out.contexts = Some((contexts, b.line));
                }
                "platforms" => out.platforms = Some((self.strings(v, &k)?, b.line)),
                "target" => out.target = self.opt_string(v, &k)?.map(|t| (t, v.line)),
                "tags" => {
                    for (t, line) in self.strings(v, &k)? {
                        let r = ImageRef::parse(&t)
                            .map_err(|m| self.err(line, format!("`{k}`: {m}")))?;
                        out.tags.push((r, t, line));
                    }
                }
                "cache_from" => {
                    let mut from = Vec::new();
                    for (c, line) in self.strings(v, &k)? {
                        let (r, raw, _) = self.cache_ref(&c, line, &k, false)?;
                        from.push((r, raw, line));
                    }
                    out.cache_from = Some((from, b.line));
                }
                "cache_to" => {
                    let items = self.strings(v, &k)?;
                    if items.len() > 1 {
                        return Err(self.err(
                            items[1].1,
                            format!(
                                "`{k}`: buildopt exports one cache per service; keep one entry"
                            ),
                        ));
                    }
                    if let Some((c, line)) = items.into_iter().next() {
                        let (r, raw, mode) = self.cache_ref(&c, line, &k, true)?;
                        out.cache_to = Some((r, raw, mode, line));
                    }
                }
                "secrets" => out.secrets = Some((self.secrets(v, &k, root)?, b.line)),
                "ssh" => {
                    let mut ssh = Vec::new();
                    for (id, path, line) in self.pairs(v, &k)? {
                        ssh.push((
                            match path {
                                Some(p) => {
                                    let paths: Vec<String> =
                                        p.split(',').map(|p| self.local_path(p)).collect();
                                    format!("{id}={}", paths.join(","))
                                }
                                None => id,
                            },
                            line,
                        ));
                    }
                    out.ssh = Some((ssh, b.line));
                }
                "network" => {
                    if let Some(n) = self.opt_string(v, &k)? {
                        if !["default", "host", "none"].contains(&n.as_str()) {
                            return Err(self.err(
                                v.line,
                                format!(
                                    "`{k}`: network `{n}`: BuildKit runs RUN steps on `default`, `host` or `none`, not on a named network"
                                ),
                            ));
                        }
                        out.network = Some((n, v.line));
                    }
                }
                "extra_hosts" => {
                    if !matches!(&v.value, Value::Null)
                        && !matches!(&v.value, Value::Seq(s) if s.is_empty())
                        && !matches!(&v.value, Value::Map(m) if m.is_empty())
                    {
                        return Err(self.err(
                            b.line,
                            format!(
                                "`{k}` is not supported: buildopt cannot give RUN steps extra host names, and they would resolve differently; remove it (or build this service with `docker compose build`)"
                            ),
                        ));
                    }
                }
                "privileged" => {
                    if self.boolean(v, &k)? {
                        return Err(self.err(
                            b.line,
                            format!(
                                "`{k}` is not supported: buildopt grants builds no entitlements (`security.insecure`); remove it"
                            ),
                        ));
                    }
                }
                "entitlements" => {
                    if !self.strings(v, &k)?.is_empty() {
                        return Err(self.err(
                            b.line,
                            format!(
                                "`{k}` is not supported: buildopt grants builds no entitlements; remove it (for the host network use `network: host`)"
                            ),
                        ));
                    }
                }
                "pull" | "no_cache" => {
                    if self.boolean(v, &k)? {
                        let instead = if b.key == "pull" {
                            "BuildKit resolves base images in the registry on every build"
                        } else {
                            "use `buildopt build --no-cache` for a run that ignores the cache"
                        };
                        self.warn(
                            b.line,
                            format!(
                                "`{k}` is not applied: it does not change the image; {instead}"
                            ),
                        );
                    }
                }
                "shm_size" | "ulimits" | "isolation" => {
                    if !v.is_null() {
                        self.warn(
                            b.line,
                            format!(
                                "`{k}` is not applied: buildopt leaves RUN steps the daemon's defaults; it does not change what the steps produce"
                            ),
                        );
                    }
                }
                x if x.starts_with("x-") => {}
                other => {
                    return Err(self.err(
                        b.line,
                        format!(
                            "`services.{name}.build` has an unknown key `{other}` (buildopt reads context, dockerfile, dockerfile_inline, args, target, platforms, labels, tags, additional_contexts, secrets, ssh, cache_from, cache_to, network)"
                        ),
                    ));
                }
            }
        }
        if let Some((d, line)) = dockerfile_rel {
            if out.dockerfile_inline.is_some() {
                return Err(self.err(
                    line,
                    format!(
                        "`{}` and `{}` both give the Dockerfile; keep one",
                        bkey("dockerfile"),
                        bkey("dockerfile_inline")
                    ),
                ));
            }
            let p = clean(&Path::new(&out.context.0).join(&d));
            out.dockerfile = Some((p.to_string_lossy().into_owned(), line));
        }
        Ok(Some(out))
    }

    /// A context path (relative to the compose file), or an error for a remote one.
    fn context_path(&self, c: &str, line: usize, key: &str) -> Result<String, ConfigError> {
        let remote = [
            "http://",
            "https://",
            "git://",
            "git@",
            "ssh://",
            "github.com/",
        ];
        if remote.iter().any(|p| c.starts_with(p)) {
            return Err(self.err(
                line,
                format!(
                    "`{key}`: `{c}` is a remote context; buildopt builds local directories (it hashes what it sends): check it out and name the directory"
                ),
            ));
        }
        Ok(self.local_path(c))
    }

    /// A `cache_from` / `cache_to` entry in buildx's syntax: `type=registry,ref=REF[,mode=min|max]`, or `REF` alone
    /// (from only). Returns the reference parsed and as written, and the mode.
    fn cache_ref(
        &self,
        c: &str,
        line: usize,
        key: &str,
        to: bool,
    ) -> Result<(ImageRef, String, Option<String>), ConfigError> {
        let err = |m: String| self.err(line, format!("`{key}`: `{c}`: {m}"));
        if !c.contains('=') {
            if to {
                return Err(err(
                    "write `type=registry,ref=REPOSITORY:TAG[,mode=max]`".to_owned()
                ));
            }
            return Ok((ImageRef::parse(c).map_err(err)?, c.to_owned(), None));
        }
        let fields = crate::dockerfile::go_csv_fields(c).map_err(|m| err(m.to_owned()))?;
        let (mut kind, mut reference, mut mode) = (None, None, None);
        for f in fields {
            let (k, v) = f.split_once('=').unwrap_or((f.as_str(), ""));
            match k {
                "type" => kind = Some(v.to_owned()),
                "ref" => reference = Some(v.to_owned()),
                "mode" if to => {
                    if v != "min" && v != "max" {
                        return Err(err(format!("mode `{v}`: use `min` or `max`")));
                    }
                    mode = Some(v.to_owned());
                }
                // How the registry cache is written: buildopt always writes the image-manifest form with OCI
                // media types, and a failed export only warns.
                "image-manifest" | "oci-mediatypes" | "ignore-error" | "compression"
                | "compression-level" | "force-compression" => {}
                other => {
                    return Err(err(format!(
                        "`{other}` is not a registry cache setting buildopt knows"
                    )));
                }
            }
        }
        if kind.as_deref().unwrap_or("registry") != "registry" {
            return Err(err(format!(
                "buildopt {} registry caches only (`type=registry,ref=...`), not `type={}`; change or remove it",
                if to { "exports" } else { "imports" },
                kind.unwrap_or_default()
            )));
        }
        let Some(reference) = reference else {
            return Err(err("`ref=` is missing".to_owned()));
        };
        Ok((ImageRef::parse(&reference).map_err(err)?, reference, mode))
    }

    /// `build.secrets`: each entry (a name, or `{source, target}`) through the top-level `secrets:`, as buildx's
    /// `id=ID,src=PATH` or `id=ID,env=VAR`.
    fn secrets(
        &mut self,
        node: &Node,
        key: &str,
        root: &Node,
    ) -> Result<Vec<(String, usize)>, ConfigError> {
        let Value::Seq(items) = &node.value else {
            if node.is_null() {
                return Ok(Vec::new());
            }
            return Err(self.err(
                node.line,
                format!("`{key}` must be a list, not {}", node.kind()),
            ));
        };
        let mut out = Vec::new();
        for item in items {
            let (source, id) = match &item.value {
                Value::Str(_) => {
                    let s = self.string(item, key)?;
                    (s.clone(), s)
                }
                Value::Map(entries) => {
                    let mut source = None;
                    let mut target = None;
                    for e in entries {
                        match e.key.as_str() {
                            "source" => source = Some(self.string(&e.value, key)?),
                            "target" => target = self.opt_string(&e.value, key)?,
                            "uid" | "gid" | "mode" => self.warn(
                                e.line,
                                format!(
                                    "`{key}`: `{}` is not applied: the Dockerfile's `RUN --mount=type=secret` sets it",
                                    e.key
                                ),
                            ),
                            other => {
                                return Err(self.err(
                                    e.line,
                                    format!("`{key}`: unknown key `{other}` (source, target)"),
                                ));
                            }
                        }
                    }
                    let Some(source) = source else {
                        return Err(
                            self.err(item.line, format!("`{key}`: an entry without `source`"))
                        );
                    };
                    let id = target.unwrap_or_else(|| source.clone());
                    (source, id)
                }
                _ => {
                    return Err(self.err(
                        item.line,
                        format!(
                            "`{key}`: an entry is a name or a mapping, not {}",
                            item.kind()
                        ),
                    ));
                }
            };
            let Some(def) = root
                .get("secrets")
                .and_then(|s| s.value.get(&source))
                .map(|d| d.value.clone())
            else {
                return Err(self.err(
                    item.line,
                    format!(
                        "`{key}`: secret `{source}` is not defined; add it under the top-level `secrets:` with `file:` or `environment:`"
                    ),
                ));
            };
            let top = format!("secrets.{source}");
            let spec = if let Some(f) = def.get("file") {
                let f = self.string(&f.value, &format!("{top}.file"))?;
                format!("id={id},src={}", self.local_path(&f))
            } else if let Some(v) = def.get("environment") {
                let v = self.string(&v.value, &format!("{top}.environment"))?;
                format!("id={id},env={v}")
            } else {
                return Err(self.err(
                    def.line,
                    format!(
                        "`{top}`: a build secret comes from `file:` or `environment:`; buildopt cannot read external or named secrets"
                    ),
                ));
            };
            out.push((csv_quote_fields(&spec), item.line));
        }
        Ok(out)
    }

    /// The `[services.NAME]` table of `s`, with `url` the registry.
    fn table(&self, s: &Svc, url: Option<&str>) -> Result<DeTable<'static>, ConfigError> {
        let name = &s.name;
        let mut t = DeTable::new();
        let own_repo = match &s.image {
            Some((i, _)) => i.repo_under(url).expect("checked against the registry"),
            None => name.clone(),
        };
        let in_own = |r: &ImageRef| r.repo_under(url).is_some_and(|repo| repo == own_repo);
        let put = |t: &mut DeTable<'static>, k: &str, line: usize, v: DeValue<'static>| {
            t.insert(
                Spanned::new(self.span(line), Cow::Owned(k.to_owned())),
                Spanned::new(self.span(line), v),
            );
        };
        let string = |v: &str, line: usize| {
            Spanned::new(self.span(line), DeValue::String(Cow::Owned(v.to_owned())))
        };
        let list = |items: &[(String, usize)]| {
            let mut a = DeArray::new();
            for (v, line) in items {
                a.push(string(v, *line));
            }
            DeValue::Array(a)
        };
        let map = |items: &[(String, String, usize)]| {
            let mut m = DeTable::new();
            for (k, v, line) in items {
                m.insert(
                    Spanned::new(self.span(*line), Cow::Owned(k.clone())),
                    string(v, *line),
                );
            }
            DeValue::Table(m)
        };
        let strings = [
            Some(("context", s.context.0.as_str(), s.context.1)),
            s.dockerfile
                .as_ref()
                .map(|(d, l)| ("dockerfile", d.as_str(), *l)),
            s.dockerfile_inline
                .as_ref()
                .map(|(d, l)| ("dockerfile_inline", d.as_str(), *l)),
            s.image
                .as_ref()
                .map(|(_, l)| ("image", own_repo.as_str(), *l)),
            s.target.as_ref().map(|(v, l)| ("target", v.as_str(), *l)),
        ];
        for (k, v, line) in strings.into_iter().flatten() {
            put(&mut t, k, line, DeValue::String(Cow::Owned(v.to_owned())));
        }
        let maps = [
            ("build_args", &s.args),
            ("labels", &s.labels),
            ("contexts", &s.contexts),
        ];
        for (k, v) in maps {
            if let Some((entries, line)) = v {
                put(&mut t, k, *line, map(entries));
            }
        }
        let lists = [
            ("platforms", &s.platforms),
            ("secrets", &s.secrets),
            ("ssh", &s.ssh),
        ];
        for (k, v) in lists {
            if let Some((items, line)) = v {
                put(&mut t, k, *line, list(items));
            }
        }
        // The image's tag first, then `build.tags`, each in the service's repository.
        let mut tags: Vec<(String, usize)> = Vec::new();
        let image_line = s.image.as_ref().map_or(s.line, |(_, l)| *l);
        let image_tag = s
            .image
            .as_ref()
            .and_then(|(i, _)| i.tag.clone())
            .unwrap_or_else(|| "latest".to_owned());
        tags.push((image_tag, image_line));
        for (r, raw, line) in &s.tags {
            if !in_own(r) {
                return Err(self.err(
                    *line,
                    format!(
                        "`services.{name}.build.tags`: `{raw}` is not in the repository of the service's image (`{own_repo}`); buildopt pushes each service to one repository: tag it there, or remove it"
                    ),
                ));
            }
            let tag = r.tag.clone().unwrap_or_else(|| "latest".to_owned());
            if !tags.iter().any(|(t, _)| *t == tag) {
                tags.push((tag, *line));
            }
        }
        put(&mut t, "tags", image_line, list(&tags));
        if let Some((r, raw, mode, line)) = &s.cache_to {
            if !in_own(r) {
                return Err(self.err(
                    *line,
                    format!(
                        "`services.{name}.build.cache_to`: `{raw}` is not in the repository of the service's image (`{own_repo}`); buildopt exports each service's cache to a tag of its own repository"
                    ),
                ));
            }
            let mut c = DeTable::new();
            let tag = r.tag.clone().unwrap_or_else(|| "latest".to_owned());
            c.insert(
                Spanned::new(self.span(*line), Cow::Borrowed("tag")),
                string(&tag, *line),
            );
            // buildx's registry cache keeps the image's layers only unless told `mode=max`.
            c.insert(
                Spanned::new(self.span(*line), Cow::Borrowed("mode")),
                string(mode.as_deref().unwrap_or("min"), *line),
            );
            put(&mut t, "cache_to", *line, DeValue::Table(c));
        }
        if let Some((from, line)) = &s.cache_from {
            let items: Vec<(String, usize)> = from
                .iter()
                .map(|(r, raw, line)| {
                    if in_own(r) {
                        (r.tag.clone().unwrap_or_else(|| "latest".to_owned()), *line)
                    } else {
                        (raw.clone(), *line)
                    }
                })
                .collect();
            put(&mut t, "cache_from", *line, list(&items));
        }
        Ok(t)
    }
}

/// `id=a,src=/p,q` with each field quoted as CSV when it holds a comma or a quote, as buildx's parser reads it.
fn csv_quote_fields(spec: &str) -> String {
    // The spec is made of `id=`, then `src=` or `env=`: only the last field's value can hold a comma.
    let Some((head, last)) = spec
        .split_once(",src=")
        .or_else(|| spec.split_once(",env="))
    else {
        return spec.to_owned();
    };
    let key = if spec.contains(",src=") { "src" } else { "env" };
    let field = format!("{key}={last}");
    let quote = |f: &str| {
        if f.contains(',') || f.contains('"') {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_owned()
        }
    };
    format!("{},{}", quote(head), quote(&field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        let r = ImageRef::parse("127.0.0.1:5000/shop/backend:1.0").unwrap();
        assert_eq!(r.host.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.repo, "shop/backend");
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(
            r.repo_under(Some("127.0.0.1:5000")).unwrap(),
            "shop/backend"
        );
        assert_eq!(
            r.repo_under(Some("127.0.0.1:5000/shop")).unwrap(),
            "backend"
        );
        assert_eq!(r.repo_under(Some("127.0.0.1:5001")), None);
        let r = ImageRef::parse("shop/backend").unwrap();
        assert_eq!(
            (r.host, r.repo.as_str(), r.tag),
            (None, "shop/backend", None)
        );
        let r = ImageRef::parse("localhost/app:v").unwrap();
        assert_eq!(r.host.as_deref(), Some("localhost"));
        assert!(ImageRef::parse("app@sha256:00").is_err());
        assert!(ImageRef::parse("Shop/App").is_err());
        assert!(
            is_loopback("127.0.0.1:5000") && is_loopback("localhost") && is_loopback("[::1]:5000")
        );
        assert!(!is_loopback("registry.example.com") && !is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn paths_are_cleaned_lexically() {
        assert_eq!(clean(Path::new("/a/./b/../c")), Path::new("/a/c"));
        assert_eq!(clean(Path::new("/a/b/.")), Path::new("/a/b"));
    }

    #[test]
    fn dotenv_as_compose_reads_it() {
        let text = "# comment\nexport A=1\nB = two words # a comment\nC=\"x\\ny ${A}\"\nD='${A} as is'\nE=${A}-${NOPE:-d}\nF=\"multi\nline\"\nG\nA=3\n";
        let env = |n: &str| (n == "HOME").then(|| "/home/me".to_owned());
        let got = parse_dotenv(text, Path::new(".env"), &env).unwrap();
        let get = |k: &str| {
            got.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("A"), Some("3"));
        assert_eq!(get("B"), Some("two words"));
        assert_eq!(get("C"), Some("x\ny 1"));
        assert_eq!(get("D"), Some("${A} as is"));
        assert_eq!(get("E"), Some("1-d"));
        assert_eq!(get("F"), Some("multi\nline"));
        assert_eq!(get("G"), None);
        let err = parse_dotenv("A=1\nB=\"open\n", Path::new(".env"), &env).unwrap_err();
        assert_eq!(
            err.to_string(),
            ".env:2: the value of `B` has no closing \""
        );
        let err = parse_dotenv("1A=x\n", Path::new(".env"), &env).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(".env:1: `1A` is not a variable name"),
            "{err}"
        );
    }

    #[test]
    fn yaml_merge_keys_aliases_and_raw_scalars() {
        let text = "x-common: &common\n  args:\n    V: 1.10\n    W: yes\nservices:\n  a:\n    build:\n      <<: *common\n      context: .\n";
        let root = parse_yaml(text, Path::new("compose.yaml")).unwrap();
        let build = &root
            .get("services")
            .unwrap()
            .value
            .get("a")
            .unwrap()
            .value
            .get("build")
            .unwrap()
            .value;
        let args = &build.get("args").unwrap().value;
        let Value::Str(v) = &args.get("V").unwrap().value.value else {
            panic!()
        };
        assert_eq!(v, "1.10");
        let Value::Str(w) = &args.get("W").unwrap().value.value else {
            panic!()
        };
        assert_eq!(w, "yes");
        assert_eq!(build.get("context").unwrap().line, 9);
        let err = parse_yaml("a: 1\na: 2\n", Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.yaml:2: not a valid YAML file"), "{err}");
        let err = parse_yaml("a: [1\n", Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.yaml:"), "{err}");
    }

    use crate::config::{LoadOptions, NamedContext, Workspace};

    /// A directory with `files`, and the workspace of its `compose.yaml` (or `buildopt.toml` when there is one) read
    /// with `env`; errors and paths with the directory as `[ROOT]`.
    fn load(
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> (tempfile::TempDir, Result<Workspace, String>) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let lookup = |n: &str| {
            env.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        };
        let options = LoadOptions {
            env: &lookup,
            ..LoadOptions::default()
        };
        let ws = Workspace::discover_with(dir.path(), &options).map_err(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "[ROOT]")
        });
        (dir, ws)
    }

    #[test]
    fn compose_keys_map_onto_services() {
        let compose = r#"
x-labels: &labels
  team: shop
services:
  base:
    image: ${REGISTRY}/team/base:${TAG:-dev}
    build:
      context: ./base
      dockerfile_inline: |
        FROM scratch
        COPY b /
      shm_size: 1g
  app:
    image: ${REGISTRY}/team/app
    platform: linux/arm64
    build:
      context: app
      dockerfile: docker/Dockerfile.prod
      target: runtime
      args:
        - PROFILE=release
        - FROM_ENV
        - NOT_SET
      labels:
        <<: *labels
        version: 1.10
      tags: ["${REGISTRY}/team/app:v1", "${REGISTRY}/team/app:${MISSING}x"]
      additional_contexts:
        base: service:base
        assets: ./shared/assets
        alpine: docker-image://alpine:3.20
      secrets:
        - npm
        - source: token
          target: gh_token
      ssh: [default, "deploy=~/keys/id"]
      cache_from: ["type=registry,ref=${REGISTRY}/team/app:cache-main", "${REGISTRY}/team/base:cache"]
      cache_to: ["type=registry,ref=${REGISTRY}/team/app:cache-pr,mode=max"]
  plain:
    build: ./plain
  db:
    image: postgres:16
    ports: ["5432:5432"]
secrets:
  npm:
    file: ./secrets/npmrc
  token:
    environment: GH_TOKEN
"#;
        let (dir, ws) = load(
            &[
                ("compose.yaml", compose),
                (
                    ".env",
                    "REGISTRY=127.0.0.1:5000\nTAG=from-dotenv\nFROM_ENV=dotenv\n",
                ),
                ("base/b", ""),
                ("app/docker/Dockerfile.prod", "FROM base\n"),
                ("shared/assets/a", ""),
                ("plain/Dockerfile", "FROM scratch\n"),
            ],
            &[("TAG", "from-env"), ("HOME", "/home/me")],
        );
        let ws = ws.unwrap();
        let root = dir.path();
        let registry = ws.registry.as_ref().unwrap();
        assert_eq!(
            (registry.url.as_str(), registry.insecure),
            ("127.0.0.1:5000", true)
        );
        assert_eq!(ws.config_path, root.join("compose.yaml"));
        let names: Vec<&str> = ws.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["base", "app", "plain"]);

        let base = ws.service("base").unwrap();
        assert_eq!(base.image, "team/base");
        assert_eq!(base.tags, ["from-env"], "the environment before .env");
        assert_eq!(base.context, root.join("base"));
        assert!(
            base.dockerfile
                .starts_with(root.join(".build-cache/inline"))
        );
        assert_eq!(
            std::fs::read_to_string(&base.dockerfile).unwrap(),
            "FROM scratch\nCOPY b /\n"
        );

        let app = ws.service("app").unwrap();
        assert_eq!(app.image, "team/app");
        assert_eq!(app.tags, ["latest", "v1", "x"]);
        assert_eq!(app.dockerfile, root.join("app/docker/Dockerfile.prod"));
        assert_eq!(app.target.as_deref(), Some("runtime"));
        assert_eq!(app.platforms, ["linux/arm64"]);
        let args: Vec<(&str, &str)> = app
            .build_args
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(args, [("FROM_ENV", "dotenv"), ("PROFILE", "release")]);
        let labels: Vec<(&str, &str)> = app
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(labels, [("team", "shop"), ("version", "1.10")]);
        assert_eq!(app.depends_on, ["base"]);
        assert_eq!(
            app.contexts["base"],
            NamedContext::Service("base".to_owned())
        );
        assert_eq!(
            app.contexts["assets"],
            NamedContext::Local(root.join("shared/assets"))
        );
        assert_eq!(
            app.contexts["alpine"],
            NamedContext::Remote("docker-image://alpine:3.20".to_owned())
        );
        let secrets: Vec<String> = app.secrets.iter().map(ToString::to_string).collect();
        assert_eq!(
            secrets,
            [
                format!("id=npm,src={}", root.join("secrets/npmrc").display()),
                "id=gh_token,env=GH_TOKEN".to_owned()
            ]
        );
        let ssh: Vec<String> = app.ssh.iter().map(ToString::to_string).collect();
        assert_eq!(ssh, ["default", "deploy=/home/me/keys/id"]);
        assert_eq!(app.cache_tag, "cache-pr");
        assert_eq!(app.cache_mode, crate::config::CacheMode::Max);
        assert_eq!(
            app.cache_from,
            ["cache-main", "127.0.0.1:5000/team/base:cache"]
        );

        let plain = ws.service("plain").unwrap();
        assert_eq!(
            (plain.image.as_str(), &plain.tags[..]),
            ("plain", &["latest".to_owned()][..])
        );
        assert_eq!(plain.cache_tag, "cache");

        let warnings: Vec<String> = ws
            .warnings
            .iter()
            .map(|w| w.replace(&root.display().to_string(), "[ROOT]"))
            .collect();
        assert_eq!(
            warnings,
            [
                "[ROOT]/compose.yaml:12: `services.base.build.shm_size` is not applied: buildopt leaves RUN steps the daemon's defaults; it does not change what the steps produce",
                "[ROOT]/compose.yaml:27: `services.app.build.tags`: variable `MISSING` is not set, so it is an empty string (as Compose reads it); set it in the environment or in .env",
            ]
        );
    }

    #[test]
    fn mistakes_name_the_compose_file_line_and_key() {
        let service = |build: &str| {
            format!(
                "services:\n  app:\n    image: 127.0.0.1:5000/app\n    build:\n      context: app\n{build}"
            )
        };
        for (build, expected) in [
            (
                "      extra_hosts: [\"db:10.0.0.2\"]\n",
                "[ROOT]/compose.yaml:6: `services.app.build.extra_hosts` is not supported",
            ),
            (
                "      cache_to: [\"type=gha\"]\n",
                "[ROOT]/compose.yaml:6: `services.app.build.cache_to`: `type=gha`: buildopt exports registry caches only",
            ),
            (
                "      platforms: [linux/amd64,\n        linux/amd46]\n",
                "[ROOT]/compose.yaml:7: `services.app.build.platforms`: invalid platform `linux/amd46`",
            ),
            (
                "      tags: [127.0.0.1:5000/other:1]\n",
                "[ROOT]/compose.yaml:6: `services.app.build.tags`: `127.0.0.1:5000/other:1` is not in the repository",
            ),
            (
                "      dockerfile: nope\n",
                "[ROOT]/compose.yaml:6: `services.app.build.dockerfile`: no file `[ROOT]/app/nope`; fix the path\n",
            ),
            (
                "      additional_contexts: [x=service:nosuch]\n",
                "[ROOT]/compose.yaml:6: `services.app.build.additional_contexts`: `service:nosuch`: no other service",
            ),
            (
                "      secrets: [nosuch]\n",
                "[ROOT]/compose.yaml:6: `services.app.build.secrets`: secret `nosuch` is not defined",
            ),
            (
                "      dockerfle: x\n",
                "[ROOT]/compose.yaml:6: `services.app.build` has an unknown key `dockerfle`",
            ),
            (
                "      network: mynet\n",
                "[ROOT]/compose.yaml:6: `services.app.build.network`: network `mynet`",
            ),
        ] {
            let (_dir, ws) = load(
                &[
                    ("compose.yaml", &service(build)),
                    ("app/Dockerfile", "FROM scratch\n"),
                ],
                &[],
            );
            let err = ws.unwrap_err() + "\n";
            assert!(err.starts_with(expected), "{build}: {err}");
        }
        let (_dir, ws) = load(
            &[
                (
                    "compose.yaml",
                    "services:\n  a:\n    image: r1.example.com/a\n    build: a\n  b:\n    image: r2.example.com/b\n    build: a\n",
                ),
                ("a/Dockerfile", "FROM scratch\n"),
            ],
            &[],
        );
        assert_eq!(
            ws.unwrap_err(),
            "[ROOT]/compose.yaml:6: `services.b.image`: registry `r2.example.com` is not `r1.example.com`, the registry of service `a`; buildopt pushes every service to one registry"
        );
    }

    #[test]
    fn buildopt_toml_keys_win_over_the_compose_file() {
        let toml = "[registry]\nurl = \"registry.example.com/team\"\n\n[compose]\nfile = \"deploy/compose.yaml\"\n\n[services.app]\ntags = [\"${SHA}\"]\nbuild_args = { MODE = \"toml\" }\n\n[services.tool]\ncontext = \"tool\"\n";
        let compose = "services:\n  app:\n    image: registry.example.com/team/app:compose\n    build:\n      context: ../app\n      args: {MODE: compose, OTHER: \"$$literal\"}\n      network: host\n";
        let (dir, ws) = load(
            &[
                ("buildopt.toml", toml),
                ("deploy/compose.yaml", compose),
                ("app/Dockerfile", "FROM scratch\n"),
                ("tool/Dockerfile", "FROM scratch\n"),
            ],
            &[("SHA", "abc")],
        );
        let ws = ws.unwrap();
        assert_eq!(ws.config_path, dir.path().join("buildopt.toml"));
        assert_eq!(
            ws.compose_file.as_deref(),
            Some(&*dir.path().join("deploy/compose.yaml"))
        );
        assert_eq!(
            ws.registry.as_ref().unwrap().url,
            "registry.example.com/team"
        );
        assert!(!ws.registry.as_ref().unwrap().insecure);
        assert_eq!(ws.buildkit_network.as_deref(), Some("host"));
        let app = ws.service("app").unwrap();
        assert_eq!(app.image, "app");
        assert_eq!(app.tags, ["abc"]);
        assert_eq!(app.context, dir.path().join("app"));
        assert_eq!(app.build_args["MODE"], "toml");
        assert_eq!(
            app.build_args["OTHER"], "$literal",
            "interpolated once, the compose way"
        );
        assert!(ws.service("tool").is_some());

        // An image in another registry than [registry]'s is named.
        let (_dir, ws) = load(
            &[
                (
                    "buildopt.toml",
                    "[registry]\nurl = \"127.0.0.1:5000\"\n[compose]\nfile = \"compose.yaml\"\n",
                ),
                (
                    "compose.yaml",
                    "services:\n  app:\n    image: 127.0.0.1:5001/app\n    build: .\n",
                ),
                ("Dockerfile", "FROM scratch\n"),
            ],
            &[],
        );
        assert!(
            ws.unwrap_err().starts_with("[ROOT]/compose.yaml:3: `services.app.image`: `127.0.0.1:5001/app` is not in the registry `127.0.0.1:5000`"),
        );
    }

    #[test]
    fn a_compose_file_without_builds_says_so() {
        let (dir, ws) = load(
            &[("compose.yaml", "services:\n  db:\n    image: postgres:16\n")],
            &[],
        );
        let ws = ws.unwrap();
        assert!(ws.services.is_empty());
        assert_eq!(
            ws.warnings,
            [format!(
                "{}:1: no service has a `build:`: there is nothing to build",
                dir.path().join("compose.yaml").display()
            )]
        );
    }

    #[test]
    fn a_compose_file_is_found_where_no_buildopt_toml_is() {
        let files = [
            ("docker-compose.yml", "services:\n  app:\n    build: .\n"),
            ("Dockerfile", "FROM scratch\n"),
        ];
        let (dir, ws) = load(&files, &[]);
        assert_eq!(
            ws.unwrap().config_path,
            dir.path().join("docker-compose.yml")
        );
        let toml = ("buildopt.toml", "[services.other]\ncontext = \".\"\n");
        let (_dir, ws) = load(&[files[0], files[1], toml], &[]);
        let ws = ws.unwrap();
        assert_eq!(ws.services[0].name, "other", "buildopt.toml first");
        assert!(ws.compose_file.is_none());
    }

    #[test]
    fn secret_specs_quote_commas() {
        assert_eq!(csv_quote_fields("id=a,src=/p"), "id=a,src=/p");
        assert_eq!(csv_quote_fields("id=a,src=/p,q"), "id=a,\"src=/p,q\"");
    }
}
