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
use crate::context::pattern::clean;

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
                None if VERSION_DEPENDENT_ARGS.contains(&name) => Lookup::Unknown(format!(
                    "{name}, which BuildKit 0.2x sets and 0.13 does not"
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

    let mut paths: BTreeMap<String, Vec<Reader>> = BTreeMap::new();
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
        let env = dispatch(
            i, stage, env, &stages, &by_name, &globals, opts, &lexer, &mut paths,
        )?;
        envs[i] = Some(env);
    }

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

/// Runs one reachable stage's commands: its environment evolves with `ARG` and `ENV`, and context reads are
/// recorded. Returns the final environment, which stages built on this one start from.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    index: usize,
    stage: &Stage,
    mut env: Env,
    stages: &[Stage],
    by_name: &HashMap<String, usize>,
    globals: &Env,
    opts: &PredictOptions<'_>,
    lexer: &Lexer,
    paths: &mut BTreeMap<String, Vec<Reader>>,
) -> Result<Env, Fallback> {
    for (cmd, trigger) in &stage.commands {
        let reader = || Reader {
            stage: stage.display.clone(),
            instruction: match trigger {
                Some((from, _)) => format!("{} (trigger from stage {from})", cmd.text),
                None => cmd.text.clone(),
            },
            line: cmd.line,
        };
        match &cmd.kind {
            Kind::Arg(pairs) => {
                // `dispatchArg`: a build argument wins; else the default expanded in the stage's environment; else
                // the global value. Only a value reaches the environment.
                for (key, default) in pairs {
                    let value = match (opts.build_args.get(key), default) {
                        (Some(v), _) => Some(Value::Known(v.clone())),
                        (None, Some(d)) => Some(
                            lexer
                                .word(d, &env)
                                .map_err(|e| at(cmd, FallbackReason::Rejected(e.0)))?,
                        ),
                        (None, None) => globals.get(key).cloned().or_else(|| {
                            VERSION_DEPENDENT_ARGS.contains(&key.as_str()).then(|| {
                                Value::Unknown(format!(
                                    "{key}, which BuildKit 0.2x sets and 0.13 does not"
                                ))
                            })
                        }),
                    };
                    if let Some(value) = value
                        && !NON_ENV_ARGS.contains(&key.as_str())
                    {
                        env.set(key, value);
                    }
                }
            }
            Kind::Env(pairs) => {
                // All keys and values are expanded with the environment before this instruction.
                let mut expanded = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    let key = lexer
                        .word(k, &env)
                        .map_err(|e| at(cmd, FallbackReason::Rejected(e.0)))?;
                    let value = lexer
                        .word(v, &env)
                        .map_err(|e| at(cmd, FallbackReason::Rejected(e.0)))?;
                    expanded.push((key, value));
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
            }
            Kind::Copy(c) => {
                if let Some(from) = &c.from {
                    if let Some(src) = copy_from_stage(from, stages, by_name, lexer, cmd)?
                        && src >= index
                    {
                        return Err(at(
                            cmd,
                            FallbackReason::Rejected(format!(
                                "cannot copy from stage \"{from}\", it needs to be defined before current stage \"{}\"",
                                stage.display
                            )),
                        ));
                    }
                    continue;
                }
                for src in &c.sources {
                    let path = match lexer.word(src, &env) {
                        Ok(Value::Known(p)) => p,
                        Ok(Value::Unknown(why)) => {
                            return Err(at(
                                cmd,
                                FallbackReason::Unresolved(format!(
                                    "the source `{src}` depends on {why}"
                                )),
                            ));
                        }
                        Err(e) => return Err(at(cmd, FallbackReason::Rejected(e.0))),
                    };
                    let http = path.starts_with("http://") || path.starts_with("https://");
                    if c.add && http {
                        // ADD downloads it; the frontend leaves it out of the context paths.
                        continue;
                    }
                    if http {
                        return Err(at(
                            cmd,
                            FallbackReason::Rejected("source can't be a URL for COPY".to_owned()),
                        ));
                    }
                    if path.contains("://") || path.starts_with("git@") {
                        return Err(at(
                            cmd,
                            FallbackReason::Unsupported(format!(
                                "the remote source `{path}`, which BuildKit versions treat differently"
                            )),
                        ));
                    }
                    paths
                        .entry(clean(&format!("/{path}")))
                        .or_default()
                        .push(reader());
                }
            }
            Kind::Run { mounts, froms } => {
                for (spec, raw_from) in mounts.iter().zip(froms) {
                    let mount =
                        instructions::parse_mount(
                            spec,
                            &mut |w: &str| -> Result<Value, LexError> { lexer.word(w, &env) },
                        )
                        .map_err(|e| at(cmd, instr_reason(e)))?;
                    if let Some(src) = by_name.get(&raw_from.to_lowercase())
                        && !raw_from.is_empty()
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
                    let from = match mount.from {
                        Value::Known(f) => f,
                        Value::Unknown(why) => {
                            return Err(at(
                                cmd,
                                FallbackReason::Unresolved(format!(
                                    "a mount's from= depends on {why}"
                                )),
                            ));
                        }
                    };
                    // A cache without `from` starts empty; anything else without `from` (bind, and tmpfs too, as
                    // both BuildKit versions do) reads its source from the context.
                    if !from.is_empty() || typ == MountType::Cache {
                        continue;
                    }
                    let source = match mount.source {
                        Value::Known(s) => s,
                        Value::Unknown(why) => {
                            return Err(at(
                                cmd,
                                FallbackReason::Unresolved(format!(
                                    "a mount source depends on {why}"
                                )),
                            ));
                        }
                    };
                    paths
                        .entry(clean(&format!("/{source}")))
                        .or_default()
                        .push(reader());
                }
            }
            Kind::From { .. } | Kind::Onbuild(_) | Kind::Other => {}
        }
    }
    Ok(env)
}
