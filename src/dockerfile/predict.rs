//! The frontend's conversion, reduced to what decides context reads (`dockerfile2llb/convert.go`,
//! `convert_runmount.go`): global `ARG`s and the automatic platform arguments, stages and their bases, the target,
//! stage dependencies (`COPY --from`, `RUN --mount=from=`, `ONBUILD` triggers of a base stage), reachability, each
//! reachable stage's environment (`ARG`/`ENV` in order, inherited from a base stage), and the context paths named by
//! `COPY`/`ADD` sources and mounts.

use std::collections::{BTreeMap, HashMap};

use super::instructions::{self, InstrError, Instruction, Kind, MountType};
use super::lex::{LexError, Lexer, Lookup, Value, Vars};
use super::parser::{self, ParseError};
use super::{ContextPath, Fallback, FallbackReason, PredictOptions, Prediction, Reader};
use crate::context::gostr;

/// `system.DefaultPathEnv("linux")`, which BuildKit sets when the base has no `PATH` (as `scratch` has not).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Build arguments BuildKit keeps out of the environment.
const NON_ENV_ARGS: &[&str] = &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// Automatic arguments that BuildKit 0.2x sets and 0.13 does not, so their value depends on the daemon.
const VERSION_DEPENDENT_ARGS: &[&str] = &["TARGETSTAGE", "BUILDOSVERSION", "TARGETOSVERSION"];

/// Works out what a build of `dockerfile` reads from its context.
pub fn predict_with(dockerfile: &[u8], opts: &PredictOptions<'_>) -> Prediction {
    match run(dockerfile, opts) {
        Ok(p) => p,
        Err(f) => Prediction::Fallback(f),
    }
}

fn fallback(reason: FallbackReason) -> Fallback {
    Fallback {
        line: None,
        instruction: None,
        reason,
    }
}

fn at(i: &Instruction, reason: FallbackReason) -> Fallback {
    Fallback {
        line: Some(i.line),
        instruction: Some(i.text.clone()),
        reason,
    }
}

impl From<ParseError> for Fallback {
    fn from(e: ParseError) -> Fallback {
        match e {
            ParseError::Rejected { line, message } => Fallback {
                line: Some(line),
                instruction: None,
                reason: FallbackReason::Rejected(message),
            },
            ParseError::Unsupported { line, message } => Fallback {
                line: Some(line),
                instruction: None,
                reason: FallbackReason::Unsupported(message),
            },
        }
    }
}

fn instr_reason(e: InstrError) -> FallbackReason {
    match e {
        InstrError::Rejected(m) => FallbackReason::Rejected(m),
        InstrError::Unsupported(m) => FallbackReason::Unsupported(m),
    }
}

/// Whether a `# syntax=` image behaves as the built-in frontend for context paths (see
/// [`super::COMPATIBLE_FRONTENDS`]).
fn compatible_frontend(image: &str) -> bool {
    let image = image.strip_prefix("docker.io/").unwrap_or(image);
    let image = match image.split_once("@sha256:") {
        Some((name, digest))
            if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            name
        }
        Some(_) => return false,
        None => image,
    };
    let Some(version) = image.strip_prefix("docker/dockerfile:") else {
        return false;
    };
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        ["1"] => true,
        ["1", minor] | ["1", minor, _] if parts.iter().skip(1).all(|p| numeric(p)) => {
            minor.parse::<u32>().is_ok_and(|m| m >= 4)
        }
        _ => false,
    }
}

/// A platform as BuildKit normalizes it (`containerd/platforms`), for the automatic arguments.
struct Platform {
    os: String,
    arch: String,
    variant: String,
}

impl Platform {
    fn parse(s: &str) -> Option<Platform> {
        let parts: Vec<String> = s.split('/').map(str::to_lowercase).collect();
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (os.clone(), arch.clone(), String::new()),
            [os, arch, variant] => (os.clone(), arch.clone(), variant.clone()),
            _ => return None,
        };
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !ok(&os) || !ok(&arch) || !(variant.is_empty() || ok(&variant)) {
            return None;
        }
        let os = if os == "macos" {
            "darwin".to_owned()
        } else {
            os
        };
        let (arch, variant) = match (arch.as_str(), variant.as_str()) {
            ("i386", _) => ("386".to_owned(), String::new()),
            ("x86_64" | "x86-64" | "amd64", v) => ("amd64".to_owned(), v.to_owned()),
            ("aarch64" | "arm64", "8" | "v8") => ("arm64".to_owned(), String::new()),
            ("aarch64", v) => ("arm64".to_owned(), v.to_owned()),
            ("armhf", _) => ("arm".to_owned(), "v7".to_owned()),
            ("armel", _) => ("arm".to_owned(), "v6".to_owned()),
            ("arm", "") => ("arm".to_owned(), "v7".to_owned()),
            ("arm", v @ ("5" | "6" | "7" | "8")) => ("arm".to_owned(), format!("v{v}")),
            (a, v) => (a.to_owned(), v.to_owned()),
        };
        Some(Platform { os, arch, variant })
    }

    fn format(&self) -> String {
        if self.variant.is_empty() {
            format!("{}/{}", self.os, self.arch)
        } else {
            format!("{}/{}/{}", self.os, self.arch, self.variant)
        }
    }

    /// `PLATFORM`, `OS`, `ARCH`, `VARIANT` with `prefix` (`BUILD` or `TARGET`).
    fn args(p: Option<&Platform>, prefix: &str, why: &str) -> Vec<(String, Value)> {
        let fields: [(&str, Option<String>); 4] = [
            ("PLATFORM", p.map(Platform::format)),
            ("OS", p.map(|p| p.os.clone())),
            ("ARCH", p.map(|p| p.arch.clone())),
            ("VARIANT", p.map(|p| p.variant.clone())),
        ];
        fields
            .into_iter()
            .map(|(name, v)| {
                let key = format!("{prefix}{name}");
                let v = match v {
                    Some(v) => Value::Known(v),
                    None => Value::Unknown(format!("{key}, {why}")),
                };
                (key, v)
            })
            .collect()
    }
}

/// Variables in scope: a stage's environment, or the global arguments.
#[derive(Debug, Clone)]
struct Env {
    vars: Vec<(String, Value)>,
    /// What a name not set here is: unset, or unknown (a base image's environment may set it).
    undefined: Option<String>,
    /// Set when an `ENV` key itself was unknown: then no lookup can be trusted.
    poisoned: Option<String>,
}

impl Env {
    fn new(undefined: Option<String>) -> Env {
        Env {
            vars: Vec::new(),
            undefined,
            poisoned: None,
        }
    }

    fn set(&mut self, key: &str, value: Value) {
        match self.vars.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((key.to_owned(), value)),
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.vars.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl Vars for Env {
    fn lookup(&self, name: &str) -> Lookup {
        if let Some(why) = &self.poisoned {
            return Lookup::Unknown(why.clone());
        }
        match self.get(name) {
            Some(Value::Known(v)) => Lookup::Set(v.clone()),
            Some(Value::Unknown(why)) => Lookup::Unknown(why.clone()),
            None => match &self.undefined {
                Some(base) => Lookup::Unknown(format!(
                    "`{name}`, which the Dockerfile does not set here; the base image {base} may set it"
                )),
                None => Lookup::Unset,
            },
        }
    }
}

/// One `FROM` and what follows it.
struct Stage {
    /// The lowercased name, if any.
    name: Option<String>,
    /// `name` or `stage-N`.
    display: String,
    /// The base after expansion.
    base: String,
    /// The `FROM` instruction.
    from: Instruction,
    /// Index of the base stage, when the base is a stage.
    parent: Option<usize>,
    /// Commands, with the base stage's `ONBUILD` triggers first; each with the reader label it gets.
    commands: Vec<(Instruction, Option<(String, usize)>)>,
    /// A trigger of the base stage that does not parse (an error only if this stage is built).
    trigger_error: Option<Fallback>,
    /// Stages this one copies or mounts from.
    deps: Vec<usize>,
}

fn run(dockerfile: &[u8], opts: &PredictOptions<'_>) -> Result<Prediction, Fallback> {
    let text = std::str::from_utf8(dockerfile).map_err(|_| fallback(FallbackReason::NotUtf8))?;
    if let Some(value) = opts.build_args.get("BUILDKIT_SYNTAX") {
        let image = value.split(' ').next().unwrap_or_default();
        if !compatible_frontend(image) {
            return Err(fallback(FallbackReason::Frontend {
                source_of: "build argument BUILDKIT_SYNTAX",
                image: image.to_owned(),
            }));
        }
    } else if let Some((image, line)) = parser::detect_syntax(text)
        && !compatible_frontend(&image)
    {
        return Err(Fallback {
            line: Some(line),
            instruction: None,
            reason: FallbackReason::Frontend {
                source_of: "# syntax=",
                image,
            },
        });
    }
    let ast = parser::parse(text)?;
    let lexer = Lexer::new(ast.escape);
    let mut instrs = Vec::with_capacity(ast.nodes.len());
    for node in &ast.nodes {
        let i = instructions::instruction(node).map_err(|e| Fallback {
            line: Some(node.start_line),
            instruction: Some(node.original.trim().to_owned()),
            reason: instr_reason(e),
        })?;
        instrs.push(i);
    }

    let globals = global_args(&instrs, opts, &lexer)?;
    let mut stages = stages(instrs, &globals, &lexer)?;
    add_triggers(&mut stages);
    let by_name: HashMap<String, usize> = stages
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.name.clone().map(|n| (n, i)))
        .collect();
    dependencies(&mut stages, &by_name, &lexer)?;
    check_cycles(&stages)?;

    let target = match opts.target {
        None => stages.len() - 1,
        Some(t) => *by_name.get(&t.to_lowercase()).ok_or_else(|| {
            fallback(FallbackReason::Rejected(format!(
                "target stage \"{t}\" could not be found"
            )))
        })?,
    };
    let mut reachable = vec![false; stages.len()];
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if std::mem::replace(&mut reachable[i], true) {
            continue;
        }
        todo.extend(stages[i].parent);
        todo.extend(stages[i].deps.iter().copied());
    }

    let mut dispatcher = Dispatcher {
        stages: &stages,
        by_name: &by_name,
        globals: &globals,
        opts,
        lexer: &lexer,
        paths: BTreeMap::new(),
    };
    let mut envs: Vec<Option<Env>> = vec![None; stages.len()];
    for (i, stage) in stages.iter().enumerate() {
        if !reachable[i] {
            continue;
        }
        if let Some(e) = &stage.trigger_error {
            return Err(e.clone());
        }
        let env = match stage.parent {
            Some(p) => envs[p].clone().ok_or_else(|| {
                at(
                    &stage.from,
                    FallbackReason::Unsupported("base stage not built first".to_owned()),
                )
            })?,
            None if stage.base == "scratch" => {
                let mut env = Env::new(None);
                env.set("PATH", Value::Known(DEFAULT_PATH.to_owned()));
                env
            }
            None => Env::new(Some(stage.base.clone())),
        };
        envs[i] = Some(dispatcher.stage(i, env)?);
    }

    let mut paths = dispatcher.paths;
    if let Some(readers) = paths.remove("/") {
        return Ok(Prediction::Whole(readers));
    }
    if paths.is_empty() {
        return Ok(Prediction::Nothing);
    }
    Ok(Prediction::Paths(
        paths
            .into_iter()
            .map(|(path, readers)| ContextPath {
                // `path.Join(".", p)`: relative, as the frontend sends it.
                path: path.trim_start_matches('/').to_owned(),
                readers,
            })
            .collect(),
    ))
}

/// The automatic platform arguments, then the `ARG`s before the first `FROM` (`buildMetaArgs`): a build argument
/// wins, else the default expanded with the arguments so far; an `ARG` with neither leaves the name as it was.
fn global_args(
    instrs: &[Instruction],
    opts: &PredictOptions<'_>,
    lexer: &Lexer,
) -> Result<Env, Fallback> {
    let mut globals = Env::new(None);
    let build = opts.build_platform.and_then(Platform::parse);
    let target = match opts.target_platform {
        Some(t) => Platform::parse(t),
        None => opts.build_platform.and_then(Platform::parse),
    };
    let (build_why, target_why) = match (opts.build_platform, opts.target_platform) {
        (None, None) => (
            "the daemon's platform, which was not given",
            "the daemon's platform, which was not given",
        ),
        _ => (
            "whose platform could not be read",
            "whose platform could not be read",
        ),
    };
    for (k, v) in Platform::args(build.as_ref(), "BUILD", build_why)
        .into_iter()
        .chain(Platform::args(target.as_ref(), "TARGET", target_why))
    {
        globals.set(&k, v);
    }
    for name in VERSION_DEPENDENT_ARGS {
        globals.set(
            name,
            Value::Unknown(format!(
                "{name}, which BuildKit 0.2x sets and 0.13 does not"
            )),
        );
    }
    for i in instrs {
        match &i.kind {
            Kind::Arg(pairs) => {
                for (key, default) in pairs {
                    let value = match (opts.build_args.get(key), default) {
                        (Some(v), _) => Value::Known(v.clone()),
                        (None, Some(d)) => lexer
                            .word(d, &globals)
                            .map_err(|e| at(i, FallbackReason::Rejected(e.0)))?,
                        (None, None) => continue,
                    };
                    globals.set(key, value);
                }
            }
            Kind::From { .. } => break,
            _ => {
                return Err(at(
                    i,
                    FallbackReason::Rejected("no build stage in current context".to_owned()),
                ));
            }
        }
    }
    Ok(globals)
}

/// Splits the instructions into stages; expands each base with the global arguments and finds base stages (an
/// earlier stage whose name equals the base exactly).
fn stages(instrs: Vec<Instruction>, globals: &Env, lexer: &Lexer) -> Result<Vec<Stage>, Fallback> {
    let mut stages: Vec<Stage> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for i in instrs {
        match &i.kind {
            Kind::From { base, name } => {
                let index = stages.len();
                let base = match lexer.word(base, globals) {
                    Ok(Value::Known(b)) if b.is_empty() => {
                        return Err(at(
                            &i,
                            FallbackReason::Rejected(format!(
                                "base name ({base}) should not be blank"
                            )),
                        ));
                    }
                    Ok(Value::Known(b)) => b,
                    Ok(Value::Unknown(why)) => {
                        return Err(at(
                            &i,
                            FallbackReason::Unresolved(format!("the base depends on {why}")),
                        ));
                    }
                    Err(e) => return Err(at(&i, FallbackReason::Rejected(e.0))),
                };
                let parent = names.get(&base).copied();
                if let Some(n) = name {
                    names.insert(n.clone(), index);
                }
                stages.push(Stage {
                    display: name.clone().unwrap_or_else(|| format!("stage-{index}")),
                    name: name.clone(),
                    base,
                    from: i,
                    parent,
                    commands: Vec::new(),
                    trigger_error: None,
                    deps: Vec::new(),
                });
            }
            // ARGs before the first FROM were read by `global_args`.
            _ => {
                if let Some(s) = stages.last_mut() {
                    s.commands.push((i, None));
                }
            }
        }
    }
    if stages.is_empty() {
        return Err(fallback(FallbackReason::Rejected(
            "dockerfile contains no stages to build".to_owned(),
        )));
    }
    Ok(stages)
}

/// Puts the `ONBUILD` triggers of each base stage before the commands of the stages built on it, as
/// `initOnBuildTriggers` does; triggers of a base image's config are not known here.
fn add_triggers(stages: &mut [Stage]) {
    for i in 0..stages.len() {
        let Some(p) = stages[i].parent else { continue };
        let mut triggers = Vec::new();
        for (cmd, _) in &stages[p].commands {
            let Kind::Onbuild(expression) = &cmd.kind else {
                continue;
            };
            let parsed =
                parser::parse(expression)
                    .map_err(Fallback::from)
                    .and_then(|ast| match ast.nodes.as_slice() {
                        [node] => {
                            instructions::instruction(node).map_err(|e| at(cmd, instr_reason(e)))
                        }
                        _ => Err(at(
                            cmd,
                            FallbackReason::Rejected(
                                "onbuild trigger should be a single expression".to_owned(),
                            ),
                        )),
                    });
            match parsed {
                Ok(mut trigger) => {
                    trigger.line = cmd.line;
                    trigger.text = format!("ONBUILD {}", trigger.text);
                    triggers.push((trigger, Some((stages[p].display.clone(), cmd.line))));
                }
                Err(mut e) => {
                    e.line = Some(cmd.line);
                    stages[i].trigger_error = Some(e);
                    break;
                }
            }
        }
        triggers.append(&mut stages[i].commands);
        stages[i].commands = triggers;
    }
}

/// The stage a `COPY --from=` names: by index or name; `None` for an image.
fn copy_from_stage(
    from: &str,
    stages: &[Stage],
    by_name: &HashMap<String, usize>,
    lexer: &Lexer,
    i: &Instruction,
) -> Result<Option<usize>, Fallback> {
    let unchanged = matches!(lexer.word(from, &Env::new(None)), Ok(Value::Known(v)) if v == from);
    if !unchanged {
        return Err(at(
            i,
            FallbackReason::Rejected(
                "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"
                    .to_owned(),
            ),
        ));
    }
    if let Some(index) = go_atoi(from) {
        return match usize::try_from(index) {
            Ok(n) if n < stages.len() => Ok(Some(n)),
            // Past the stages, an index names an image `--from` added, in an order we do not follow.
            Ok(_) => Err(at(
                i,
                FallbackReason::Unsupported(format!("--from={from} is not a stage index")),
            )),
            Err(_) => Err(at(
                i,
                FallbackReason::Rejected(format!("invalid stage index {index}")),
            )),
        };
    }
    Ok(by_name.get(&from.to_lowercase()).copied())
}

/// `strconv.Atoi`: an optional sign and decimal digits.
fn go_atoi(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The stages each stage copies or mounts from (`toCommand`, `detectRunMount`).
fn dependencies(
    stages: &mut [Stage],
    by_name: &HashMap<String, usize>,
    lexer: &Lexer,
) -> Result<(), Fallback> {
    for s in 0..stages.len() {
        let mut deps = Vec::new();
        for (cmd, _) in &stages[s].commands {
            match &cmd.kind {
                Kind::Copy(c) => {
                    if let Some(from) = &c.from
                        && let Some(d) = copy_from_stage(from, stages, by_name, lexer, cmd)?
                    {
                        deps.push(d);
                    }
                }
                Kind::Run { froms, .. } => {
                    deps.extend(
                        froms
                            .iter()
                            .filter(|f| !f.is_empty())
                            .filter_map(|f| by_name.get(&f.to_lowercase()).copied()),
                    );
                }
                _ => {}
            }
        }
        stages[s].deps = deps;
    }
    Ok(())
}

/// `validateCircularDependency`, over every stage (reachable or not).
fn check_cycles(stages: &[Stage]) -> Result<(), Fallback> {
    fn visit(s: usize, stages: &[Stage], state: &mut [u8]) -> Result<(), usize> {
        match state[s] {
            1 => return Err(s),
            2 => return Ok(()),
            _ => {}
        }
        state[s] = 1;
        for d in stages[s].parent.iter().chain(&stages[s].deps) {
            visit(*d, stages, state)?;
        }
        state[s] = 2;
        Ok(())
    }
    let mut state = vec![0u8; stages.len()];
    for s in 0..stages.len() {
        visit(s, stages, &mut state).map_err(|c| {
            at(
                &stages[c].from,
                FallbackReason::Rejected(format!(
                    "circular dependency detected on stage: {}",
                    stages[c].display
                )),
            )
        })?;
    }
    Ok(())
}

/// What dispatching a stage needs besides the stage: the other stages, the global arguments and the options.
struct Dispatcher<'a> {
    stages: &'a [Stage],
    by_name: &'a HashMap<String, usize>,
    globals: &'a Env,
    opts: &'a PredictOptions<'a>,
    lexer: &'a Lexer,
    /// Context paths (rooted, cleaned) and who reads them.
    paths: BTreeMap<String, Vec<Reader>>,
}

impl Dispatcher<'_> {
    /// Runs one reachable stage's commands: its environment evolves with `ARG` and `ENV`, and context reads are
    /// recorded. Returns the final environment, which stages built on this one start from.
    fn stage(&mut self, index: usize, mut env: Env) -> Result<Env, Fallback> {
        let stage = &self.stages[index];
        for (cmd, trigger) in &stage.commands {
            let reader = Reader {
                stage: stage.display.clone(),
                instruction: match trigger {
                    Some((from, _)) => format!("{} (trigger from stage {from})", cmd.text),
                    None => cmd.text.clone(),
                },
                line: cmd.line,
            };
            match &cmd.kind {
                Kind::Arg(pairs) => self.arg(cmd, pairs, &mut env)?,
                Kind::Env(pairs) => self.env(cmd, pairs, &mut env)?,
                Kind::Copy(c) => self.copy(index, cmd, c, &env, reader)?,
                Kind::Run { mounts, froms } => self.run(index, cmd, mounts, froms, &env, reader)?,
                Kind::From { .. } | Kind::Onbuild(_) | Kind::Other => {}
            }
        }
        Ok(env)
    }

    fn read(&mut self, path: &str, reader: Reader) {
        // Go's `path.Clean` (the frontend cleans every source); the Dockerfile is UTF-8 here (otherwise a fallback).
        let clean = |p: &str| String::from_utf8_lossy(&gostr::clean(p.as_bytes())).into_owned();
        self.paths
            .entry(clean(&format!("/{path}")))
            .or_default()
            .push(reader);
    }

    /// `ProcessWord` in `env`; an error is BuildKit's too.
    fn expand(&self, cmd: &Instruction, word: &str, env: &Env) -> Result<Value, Fallback> {
        self.lexer
            .word(word, env)
            .map_err(|e| at(cmd, FallbackReason::Rejected(e.0)))
    }

    /// `dispatchArg`: a build argument wins; else the default expanded in the stage's environment; else the global
    /// value. Only a value reaches the environment.
    fn arg(
        &self,
        cmd: &Instruction,
        pairs: &[(String, Option<String>)],
        env: &mut Env,
    ) -> Result<(), Fallback> {
        for (key, default) in pairs {
            let value = match (self.opts.build_args.get(key), default) {
                (Some(v), _) => Some(Value::Known(v.clone())),
                (None, Some(d)) => Some(self.expand(cmd, d, env)?),
                (None, None) => self.globals.get(key).cloned(),
            };
            if let Some(value) = value
                && !NON_ENV_ARGS.contains(&key.as_str())
            {
                env.set(key, value);
            }
        }
        Ok(())
    }

    /// `ENV`: all keys and values are expanded with the environment before this instruction, then set in order.
    fn env(
        &self,
        cmd: &Instruction,
        pairs: &[(String, String)],
        env: &mut Env,
    ) -> Result<(), Fallback> {
        let mut expanded = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            expanded.push((self.expand(cmd, k, env)?, self.expand(cmd, v, env)?));
        }
        for (key, value) in expanded {
            match key {
                Value::Known(k) => env.set(&k, value),
                Value::Unknown(why) => {
                    env.poisoned = Some(format!(
                        "an ENV name at line {} that depends on {why}",
                        cmd.line
                    ));
                }
            }
        }
        Ok(())
    }

    /// `COPY`/`ADD`: from another stage or an image, nothing from the context; otherwise each source.
    fn copy(
        &mut self,
        index: usize,
        cmd: &Instruction,
        c: &instructions::Copy,
        env: &Env,
        reader: Reader,
    ) -> Result<(), Fallback> {
        if let Some(from) = &c.from {
            if let Some(src) = copy_from_stage(from, self.stages, self.by_name, self.lexer, cmd)?
                && src >= index
            {
                return Err(at(
                    cmd,
                    FallbackReason::Rejected(format!(
                        "cannot copy from stage \"{from}\", it needs to be defined before current stage \"{}\"",
                        self.stages[index].display
                    )),
                ));
            }
            return Ok(());
        }
        for src in &c.sources {
            let path = known(
                cmd,
                self.expand(cmd, src, env)?,
                &format!("the source `{src}`"),
            )?;
            let http = path.starts_with("http://") || path.starts_with("https://");
            if c.add && http {
                // ADD downloads it; the frontend leaves it out of the context paths.
                continue;
            }
            let wrong = if http {
                Some(FallbackReason::Rejected(
                    "source can't be a URL for COPY".to_owned(),
                ))
            } else if path.contains("://") || path.starts_with("git@") {
                Some(FallbackReason::Unsupported(format!(
                    "the remote source `{path}`, which BuildKit versions treat differently"
                )))
            } else {
                None
            };
            if let Some(reason) = wrong {
                return Err(at(cmd, reason));
            }
            self.read(&path, reader.clone());
        }
        Ok(())
    }

    /// `RUN --mount`: a bind (or tmpfs, or cache with `from`) without `from` reads its source from the context.
    fn run(
        &mut self,
        index: usize,
        cmd: &Instruction,
        mounts: &[String],
        froms: &[String],
        env: &Env,
        reader: Reader,
    ) -> Result<(), Fallback> {
        for (spec, raw_from) in mounts.iter().zip(froms) {
            let mut expand = |w: &str| -> Result<Value, LexError> { self.lexer.word(w, env) };
            let mount = instructions::parse_mount(spec, &mut expand)
                .map_err(|e| at(cmd, instr_reason(e)))?;
            if !raw_from.is_empty()
                && let Some(src) = self.by_name.get(&raw_from.to_lowercase())
                && *src >= index
            {
                return Err(at(
                    cmd,
                    FallbackReason::Rejected(format!(
                        "cannot mount from stage \"{raw_from}\", stage needs to be defined before current command"
                    )),
                ));
            }
            let Some(typ) = mount.typ else {
                let why = mount.typ_unknown.unwrap_or_default();
                return Err(at(
                    cmd,
                    FallbackReason::Unresolved(format!("a mount type depends on {why}")),
                ));
            };
            if matches!(typ, MountType::Secret | MountType::Ssh) {
                continue;
            }
            let from = known(cmd, mount.from, "a mount's from=")?;
            // A cache without `from` starts empty; anything else without `from` (bind, and tmpfs too, as both
            // BuildKit versions do) reads its source from the context.
            if !from.is_empty() || typ == MountType::Cache {
                continue;
            }
            let source = known(cmd, mount.source, "a mount's source=")?;
            self.read(&source, reader.clone());
        }
        Ok(())
    }
}

/// The text of a value that decides a context read, or a fallback saying what it depends on.
fn known(cmd: &Instruction, value: Value, what: &str) -> Result<String, Fallback> {
    match value {
        Value::Known(v) => Ok(v),
        Value::Unknown(why) => Err(at(
            cmd,
            FallbackReason::Unresolved(format!("{what} depends on {why}")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Want {
        Paths(&'static [&'static str]),
        Whole,
        Nothing,
        /// The fallback's message contains this.
        Fallback(&'static str),
    }

    struct Case {
        name: &'static str,
        dockerfile: &'static str,
        target: Option<&'static str>,
        args: &'static [(&'static str, &'static str)],
        want: Want,
    }

    const fn case(name: &'static str, dockerfile: &'static str, want: Want) -> Case {
        Case {
            name,
            dockerfile,
            target: None,
            args: &[],
            want,
        }
    }

    use Want::{Fallback as Fb, Nothing, Paths, Whole};

    /// Each case says what BuildKit does; the corpus in tests/fixtures/dockerfiles checks the same rules against
    /// real daemons.
    fn cases() -> Vec<Case> {
        vec![
            // Only COPY/ADD/mount sources count, cleaned and sorted bytewise (uppercase first).
            case(
                "rust",
                "FROM scratch AS build\nCOPY Cargo.toml Cargo.lock ./\nCOPY src ./src\nFROM scratch\nCOPY --from=build /x /x\n",
                Paths(&["Cargo.lock", "Cargo.toml", "src"]),
            ),
            case(
                "sorted bytewise",
                "FROM scratch\nCOPY b a B /\n",
                Paths(&["B", "a", "b"]),
            ),
            // `path.Join("/", src)`: `..` cannot leave the root, trailing slashes go, absolute is relative.
            case(
                "cleaned",
                "FROM scratch\nCOPY ./src/../lib/ /abs//x ../up /d/\n",
                Paths(&["abs/x", "lib", "up"]),
            ),
            // Wildcards are sent as they are; the client matches them.
            case(
                "wildcard",
                "FROM scratch\nCOPY *.json ./\n",
                Paths(&["*.json"]),
            ),
            // `.` (and `..`, `/`) clean to the root: the whole context.
            case("copy dot", "FROM scratch\nCOPY . .\n", Whole),
            case("copy dotdot", "FROM scratch\nCOPY .. /x\n", Whole),
            // A stage the target does not need is never converted, so its reads do not count.
            case(
                "unreachable stage",
                "FROM scratch AS unused\nCOPY unused /\nFROM scratch\nCOPY used /\n",
                Paths(&["used"]),
            ),
            Case {
                target: Some("Build"),
                ..case(
                    "target is case-insensitive and skips later stages",
                    "FROM scratch AS build\nCOPY src /\nFROM scratch\nCOPY README.md /\n",
                    Paths(&["src"]),
                )
            },
            // Stages reached through FROM, COPY --from (name or index) and RUN --mount from=.
            case(
                "stage graph",
                "FROM scratch AS a\nCOPY a /\nFROM scratch AS b\nCOPY b /\nFROM scratch AS c\nCOPY c /\n\
                 FROM busybox AS d\nRUN --mount=from=C,target=/c true\nFROM a\nCOPY --from=1 /b /\nCOPY --from=d / /\n",
                Paths(&["a", "b", "c"]),
            ),
            case(
                "empty --from is the context",
                "FROM scratch\nCOPY --from= e1 /\n",
                Paths(&["e1"]),
            ),
            // Duplicate stage names: `--from` finds the last, `FROM` the last before it.
            case(
                "duplicate stage names",
                "FROM scratch AS a\nCOPY one /x\nFROM scratch AS a\nCOPY two /x\nFROM scratch\nCOPY --from=a /x /\n",
                Paths(&["two"]),
            ),
            // `--from=<image>` reads no context.
            case(
                "copy from image",
                "FROM scratch\nCOPY --from=alpine:3 /etc/x /\n",
                Nothing,
            ),
            case(
                "heredoc only",
                "FROM scratch\nCOPY <<EOF /x\nhi\nEOF\n",
                Nothing,
            ),
            case(
                "heredoc and file",
                "FROM scratch\nCOPY <<EOF file /d/\nhi\nEOF\n",
                Paths(&["file"]),
            ),
            // ADD downloads http(s) sources instead of reading the context.
            case(
                "add url",
                "FROM scratch\nADD https://example.com/a.tgz local.tgz /\n",
                Paths(&["local.tgz"]),
            ),
            case(
                "add git",
                "FROM scratch\nADD git@github.com:a/b.git /\n",
                Fb("remote source"),
            ),
            case(
                "copy url",
                "FROM scratch\nCOPY http://x/y /\n",
                Fb("can't be a URL"),
            ),
            // ARG defaults and build-argument overrides.
            case(
                "arg default",
                "FROM scratch\nARG SRC=src\nCOPY ${SRC} ./src\n",
                Paths(&["src"]),
            ),
            Case {
                args: &[("SRC", "lib")],
                ..case(
                    "arg override",
                    "FROM scratch\nARG SRC=src\nCOPY ${SRC} ./src\n",
                    Paths(&["lib"]),
                )
            },
            // A global ARG is not in a stage unless redeclared; unset is empty, and "" cleans to the root.
            case(
                "global arg not redeclared",
                "ARG SRC=src\nFROM scratch\nCOPY $SRC /\n",
                Whole,
            ),
            case(
                "global arg redeclared",
                "ARG SRC=src\nFROM scratch\nARG SRC\nCOPY $SRC /\n",
                Paths(&["src"]),
            ),
            // A stage ARG default is expanded in the stage, where global args are not visible.
            case(
                "stage default sees no globals",
                "ARG V=x\nFROM scratch\nARG P=dir$V\nCOPY $P /\n",
                Paths(&["dir"]),
            ),
            // ARG and ENV set the same environment in order: a later ARG with a value wins, one without does not.
            case(
                "env then arg",
                "FROM scratch\nENV D=a\nARG D=b\nENV E=x\nARG E\nCOPY $D $E /\n",
                Paths(&["b", "x"]),
            ),
            // All pairs of one ENV are expanded before any is set.
            case(
                "env pairs",
                "FROM scratch\nENV A=1\nENV A=2 B=$A\nCOPY $B /\n",
                Paths(&["1"]),
            ),
            case(
                "modifiers",
                "FROM scratch\nARG P=src/main.rs\nCOPY ${P%.rs}.txt ${NOPE:-dflt} ${P:+plus} /\n",
                Paths(&["dflt", "plus", "src/main.txt"]),
            ),
            // A stage built on a stage inherits its environment.
            case(
                "inherited env",
                "FROM scratch AS base\nARG SRC=app\nFROM base\nCOPY $SRC /\n",
                Paths(&["app"]),
            ),
            // On an image, a variable the Dockerfile does not set may come from the image's config.
            case(
                "image env",
                "FROM alpine\nCOPY $HOME/x /\n",
                Fb("base image alpine may set it"),
            ),
            case(
                "image env declared",
                "FROM alpine\nARG D=dir\nCOPY $D /\n",
                Paths(&["dir"]),
            ),
            case(
                "scratch path",
                "FROM scratch\nCOPY ${PATH%%:*} /\n",
                Paths(&["usr/local/sbin"]),
            ),
            // The base can be an ARG, and can name a stage.
            case(
                "base from arg names a stage",
                "ARG STAGE=build\nFROM scratch AS build\nCOPY built /\nFROM scratch AS other\nCOPY other /\nFROM ${STAGE}\n",
                Paths(&["built"]),
            ),
            // Mounts: bind reads its source, cache/secret/ssh do not, tmpfs and a bind without source read the root.
            case(
                "mounts",
                "FROM busybox\nRUN --mount=type=bind,source=req.txt,target=/r --mount=type=cache,target=/c \
                 --mount=type=secret,id=s --mount=type=ssh true\n",
                Paths(&["req.txt"]),
            ),
            case(
                "tmpfs",
                "FROM busybox\nRUN --mount=type=tmpfs,target=/t true\n",
                Whole,
            ),
            case(
                "bind without source",
                "FROM busybox\nRUN --mount=target=/src true\n",
                Whole,
            ),
            case(
                "mount with variables",
                "FROM busybox\nARG T=bind\nARG S=go.sum\nRUN --mount=type=$T,source=$S,target=/x true\n",
                Paths(&["go.sum"]),
            ),
            // ONBUILD in a stage runs in the stages built on it.
            case(
                "onbuild",
                "FROM busybox AS base\nONBUILD COPY onb /\nFROM base\nCOPY main /\n",
                Paths(&["main", "onb"]),
            ),
            case(
                "escape directive",
                "# escape=`\nFROM scratch\nCOPY a`$b `\n  c /\n",
                Paths(&["a$b", "c"]),
            ),
            // Frontend images.
            case(
                "syntax dockerfile:1",
                "# syntax=docker/dockerfile:1\nFROM scratch\nCOPY a /\n",
                Paths(&["a"]),
            ),
            case(
                "syntax pinned",
                "# syntax=docker.io/docker/dockerfile:1.7@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\nFROM scratch\nCOPY a /\n",
                Paths(&["a"]),
            ),
            case(
                "syntax labs",
                "# syntax=docker/dockerfile:1-labs\nFROM scratch\nCOPY a /\n",
                Fb("frontend image"),
            ),
            case(
                "syntax old",
                "# syntax=docker/dockerfile:1.2\nFROM scratch\nCOPY a /\n",
                Fb("frontend image"),
            ),
            case(
                "syntax other",
                "# syntax=example.com/fe:2\nFROM scratch\nCOPY a /\n",
                Fb("frontend image"),
            ),
            Case {
                args: &[("BUILDKIT_SYNTAX", "example.com/fe")],
                ..case(
                    "syntax arg",
                    "FROM scratch\nCOPY a /\n",
                    Fb("BUILDKIT_SYNTAX"),
                )
            },
            // What BuildKit rejects, and what we do not model.
            case(
                "unknown instruction",
                "FROM scratch\nCOPPY a /\n",
                Fb("unknown instruction"),
            ),
            case(
                "parents",
                "FROM scratch\nCOPY --parents a/./b /\n",
                Fb("labs"),
            ),
            case(
                "from variable",
                "FROM scratch AS a\nFROM scratch\nARG S=a\nCOPY --from=$S /x /\n",
                Fb("not supported for --from"),
            ),
            Case {
                target: Some("a"),
                ..case(
                    "copy from later stage",
                    "FROM scratch AS a\nCOPY --from=b /x /\nFROM scratch AS b\n",
                    Fb("defined before"),
                )
            },
            // The same stage unbuilt: no error, nothing read.
            case(
                "later stage unbuilt",
                "FROM scratch AS a\nCOPY --from=b /x /\nFROM scratch AS b\n",
                Nothing,
            ),
            case(
                "cycle",
                "FROM scratch AS a\nCOPY --from=b /x /\nFROM scratch AS b\nCOPY --from=a /x /\nFROM scratch\n",
                Fb("circular"),
            ),
            case("no stages", "ARG A=1\n", Fb("no stages")),
            case(
                "instruction before FROM",
                "COPY a /\nFROM scratch\n",
                Fb("no build stage"),
            ),
            case("target missing", "FROM scratch\n", Nothing),
            Case {
                target: Some("nope"),
                ..case("unknown target", "FROM scratch\n", Fb("could not be found"))
            },
            case(
                "unknown base arg",
                "FROM ${TARGETARCH}-img\nCOPY a /\n",
                Fb("TARGETARCH"),
            ),
            case(
                "platform arg",
                "FROM scratch\nARG TARGETARCH\nCOPY bin-$TARGETARCH /\n",
                Fb("daemon's platform"),
            ),
            case(
                "version-dependent arg",
                "FROM scratch\nARG TARGETSTAGE\nCOPY $TARGETSTAGE /\n",
                Fb("0.13"),
            ),
            // Not declared in the stage, it is unset there on every version.
            case(
                "version-dependent arg undeclared",
                "FROM scratch\nCOPY x$TARGETSTAGE /\n",
                Paths(&["x"]),
            ),
            case(
                "version-dependent arg in FROM",
                "FROM img-$TARGETSTAGE\n",
                Fb("0.13"),
            ),
            case(
                "expansion error",
                "FROM scratch\nCOPY ${A:?required} /\n",
                Fb("A: required"),
            ),
        ]
    }

    #[test]
    fn predictions() {
        let mut failures = Vec::new();
        for c in cases() {
            let args: BTreeMap<String, String> = c
                .args
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let got = predict_with(
                c.dockerfile.as_bytes(),
                &PredictOptions {
                    target: c.target,
                    build_args: &args,
                    build_platform: None,
                    target_platform: None,
                },
            );
            let ok = match (&c.want, &got) {
                (Paths(want), Prediction::Paths(p)) => {
                    p.iter().map(|c| c.path.as_str()).collect::<Vec<_>>() == *want
                }
                (Whole, Prediction::Whole(_)) | (Nothing, Prediction::Nothing) => true,
                (Fb(part), Prediction::Fallback(f)) => f.to_string().contains(part),
                _ => false,
            };
            if !ok {
                failures.push(format!("{}: got {got:?}", c.name));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn platform_arguments_when_the_platform_is_given() {
        let args = BTreeMap::new();
        let opts = PredictOptions {
            target: None,
            build_args: &args,
            build_platform: Some("linux/amd64"),
            target_platform: Some("linux/arm64/v8"),
        };
        let p = predict_with(
            b"FROM scratch\nARG TARGETPLATFORM TARGETARCH TARGETVARIANT BUILDARCH\nCOPY $TARGETPLATFORM-$TARGETARCH-${TARGETVARIANT:-none}-$BUILDARCH /\n",
            &opts,
        );
        assert_eq!(
            p.followpaths(),
            Some(vec!["linux/arm64-arm64-none-amd64".to_owned()])
        );
    }

    #[test]
    fn readers_explain_changes() {
        let p = predict_with(
            b"FROM scratch AS build\nARG SRC_DIR=src\nCOPY ${SRC_DIR} ./src\nCOPY *.toml ./\nFROM scratch\nCOPY --from=build / /\n",
            &PredictOptions {
                target: None,
                build_args: &BTreeMap::new(),
                build_platform: None,
                target_platform: None,
            },
        );
        let readers = p.explain("src/lib.rs");
        assert_eq!(readers.len(), 1);
        assert_eq!(
            readers[0].to_string(),
            "COPY ${SRC_DIR} ./src in stage build (line 3)"
        );
        assert_eq!(p.explain("Cargo.toml").len(), 1);
        assert!(p.explain("README.md").is_empty());
        assert!(p.agrees_with(Some(&["*.toml".to_owned(), "src".to_owned()])));
        assert!(!p.agrees_with(Some(&[])));
        assert!(!p.agrees_with(None));
    }

    #[test]
    fn onbuild_readers_name_the_trigger() {
        let p = predict_with(
            b"FROM busybox AS base\nONBUILD COPY onb /\nFROM base AS app\n",
            &PredictOptions {
                target: None,
                build_args: &BTreeMap::new(),
                build_platform: None,
                target_platform: None,
            },
        );
        assert_eq!(
            p.explain("onb")[0].to_string(),
            "ONBUILD COPY onb / (trigger from stage base) in stage app (line 2)"
        );
    }
}
