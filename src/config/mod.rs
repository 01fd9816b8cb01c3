//! `buildopt.toml`: where it is found, its schema, and its validation into a [`Workspace`].
//!
//! The file is parsed into a spanned TOML tree first; `--set` overrides are put into that tree and every string
//! value is interpolated (`${VAR}`, see [`vars`]) before the tree is read into the schema and validated, so an
//! overridden or interpolated value is checked like any other. Every error names the file, the line and the key
//! (or the `--set` it came from), and says what to do. Nothing here panics on bad input.
//!
//! A compose file ([`compose`]) is read into the same tree, as the services of a config of its own (when there is no
//! `buildopt.toml`, or `--file`) or under those of `buildopt.toml` (`[compose] file`), whose keys win.

pub mod builders;
pub mod compose;
pub mod mounts;
pub mod output;
pub mod vars;

pub use builders::Builder;
pub use output::{Output, OutputKind};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_spanned::Spanned;

use mounts::{ById, SecretSpec, SshSpec};

/// The config file name looked for in the current directory and its parents.
pub const CONFIG_FILE: &str = "buildopt.toml";

/// A config problem, located in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No config file in the current directory or any parent.
    #[error("no {CONFIG_FILE} (or compose.yaml) in {} or any parent directory; create one, or pass --config PATH or --file COMPOSE_FILE", .0.display())]
    NotFound(PathBuf),
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A `--set` or `--tag` override (or its `BUILDOPT_*` equivalent) is wrong.
    #[error("{set}: {message}")]
    Override {
        /// The override as given, with its flag: "--set `app.tags=x`".
        set: String,
        /// What is wrong, and what to do.
        message: String,
    },
    /// The file is read but wrong, at a known place.
    #[error("{}:{line}: {message}", path.display())]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong, naming the key, and what to do.
        message: String,
    },
}

/// `ecr = "auto" | true | false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EcrMode {
    /// ECR when the registry host looks like `<account>.dkr.ecr.<region>.amazonaws.com`.
    #[default]
    Auto,
    /// Always ECR.
    On,
    /// Never ECR.
    Off,
}

impl<'de> Deserialize<'de> for EcrMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(EcrMode::On),
            Raw::Bool(false) => Ok(EcrMode::Off),
            Raw::Str(s) if s == "auto" => Ok(EcrMode::Auto),
            Raw::Str(s) => Err(serde::de::Error::custom(format!(
                "invalid value `{s}` for `ecr`: expected \"auto\", true or false"
            ))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    registry: Option<RegistryToml>,
    buildkit: Option<builders::BuildkitToml>,
    #[serde(default)]
    services: BTreeMap<Spanned<String>, Spanned<ServiceToml>>,
    /// `[compose] file`: read before deserializing (its services are merged into `services`); here for the check of
    /// its keys.
    #[allow(dead_code)]
    compose: Option<ComposeToml>,
}

/// `[compose]`: a compose file whose services are merged under those of `buildopt.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComposeToml {
    #[allow(dead_code)]
    file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryToml {
    url: Spanned<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    ecr: EcrMode,
    #[serde(default)]
    create_repositories: bool,
    ecr_endpoint: Option<String>,
    ecr_region: Option<String>,
    ecr_lifecycle: Option<Spanned<EcrLifecycleToml>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EcrLifecycleToml {
    keep_content_tags: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceToml {
    context: Spanned<String>,
    dockerfile: Option<Spanned<String>>,
    /// The Dockerfile's text, instead of a file (compose's `dockerfile_inline`, bake's `dockerfile-inline`).
    dockerfile_inline: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    tags: Option<Vec<Spanned<String>>>,
    cache_tag: Option<Spanned<String>>,
    cache_to: Option<Spanned<CacheToToml>>,
    cache_from: Option<Vec<Spanned<String>>>,
    target: Option<String>,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    #[serde(default)]
    platforms: Vec<Spanned<String>>,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Named build contexts: NAME -> `service:OTHER`, `docker-image://REF` (or another remote source), or a
    /// directory.
    #[serde(default)]
    contexts: BTreeMap<String, Spanned<String>>,
    attest: Option<Spanned<AttestToml>>,
    /// Outputs besides the registry, in `--output` syntax.
    outputs: Option<Vec<Spanned<String>>>,
    source_date_epoch: Option<Spanned<i64>>,
    #[serde(default)]
    inputs: Inputs,
    #[serde(default)]
    secrets: Vec<Spanned<String>>,
    #[serde(default)]
    ssh: Vec<Spanned<String>>,
    deploy: Option<Spanned<DeployToml>>,
}

/// `[services.X.deploy]`: where the image runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployToml {
    ecs: Option<EcsToml>,
}

/// `[services.X.deploy.ecs]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EcsToml {
    cluster: Spanned<String>,
    service: Spanned<String>,
    container: Option<Spanned<String>>,
}

/// `attest = { provenance = "mode=max" | true | false, sbom = true | false | "generator=IMAGE" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttestToml {
    provenance: Option<Switch>,
    sbom: Option<Switch>,
}

/// `true`, `false`, or BuildKit's CSV parameters (which mean on). The strings `true` and `false` count as the
/// booleans, so `--set app.attest.sbom=false` works.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Switch {
    Bool(bool),
    Params(String),
}

impl Switch {
    /// None when off, else the parameters (possibly empty: all defaults).
    fn params(self) -> Option<String> {
        match self {
            Switch::Bool(false) => None,
            Switch::Bool(true) => Some(String::new()),
            Switch::Params(p) if p == "false" => None,
            Switch::Params(p) if p == "true" => Some(String::new()),
            Switch::Params(p) => Some(p),
        }
    }
}

/// `cache_to = "TAG"` or `cache_to = { tag = "TAG", mode = "min" | "max" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CacheToToml {
    Tag(String),
    Table(CacheToTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheToTable {
    tag: Option<String>,
    mode: Option<CacheMode>,
}

/// Which layers the registry cache keeps: `max` every intermediate step (bigger, more hits), `min` only the
/// result's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Only the layers of the image.
    Min,
    /// Every intermediate step too.
    #[default]
    Max,
}

impl CacheMode {
    /// `min` or `max`, as BuildKit's `mode` attribute takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Min => "min",
            CacheMode::Max => "max",
        }
    }
}

/// `inputs = "dockerfile" | "context"`: what a service's input digest covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Inputs {
    /// The context paths the Dockerfile reads, predicted as BuildKit's frontend computes them (and checked
    /// against what it asks for on every build); the whole context when the prediction is not sure.
    #[default]
    Dockerfile,
    /// The whole context after `.dockerignore`.
    Context,
}

/// The registry images are pushed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    /// `host[:port][/path]`, no scheme.
    pub url: String,
    /// Plain HTTP.
    pub insecure: bool,
    /// Whether to treat it as AWS ECR.
    pub ecr: EcrMode,
    /// Create missing repositories (ECR).
    pub create_repositories: bool,
    /// ECR API endpoint override (emulators, tests).
    pub ecr_endpoint: Option<String>,
    /// ECR region when it cannot be read from the host.
    pub ecr_region: Option<String>,
    /// The lifecycle policy buildopt gives ECR repositories (`ecr_lifecycle`), if any.
    pub ecr_lifecycle: Option<EcrLifecycle>,
}

/// `ecr_lifecycle = { keep_content_tags = N }`: ECR expires images with a content tag beyond the newest N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcrLifecycle {
    /// How many content-tagged images to keep (1 or more).
    pub keep_content_tags: u32,
}

/// `[services.X.deploy.ecs]`: the ECS service that runs a service's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsDeploy {
    /// The cluster (name or ARN).
    pub cluster: String,
    /// The ECS service (name or ARN).
    pub service: String,
    /// The container of the task definition whose image is replaced (default: the buildopt service's name).
    pub container: String,
}

impl Registry {
    /// The host part (`host[:port]`) of the URL.
    pub fn host(&self) -> &str {
        self.url.split('/').next().unwrap_or(&self.url)
    }

    /// `url/repo:tag`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.url)
    }

    /// Whether this registry is ECR, resolving `auto` from the host name.
    pub fn is_ecr(&self) -> bool {
        match self.ecr {
            EcrMode::On => true,
            EcrMode::Off => false,
            EcrMode::Auto => is_ecr_host(self.host()),
        }
    }
}

/// `<account>.dkr.ecr.<region>.amazonaws.com` (and `.com.cn`).
pub fn is_ecr_host(host: &str) -> bool {
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() >= 6
        && parts[0].len() == 12
        && parts[0].bytes().all(|b| b.is_ascii_digit())
        && parts[1] == "dkr"
        && parts[2].starts_with("ecr")
        && (host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn"))
}

/// One service, validated, with absolute paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The name (the key under `[services]`).
    pub name: String,
    /// Build context directory.
    pub context: PathBuf,
    /// Dockerfile path.
    pub dockerfile: PathBuf,
    /// Repository name under the registry.
    pub image: String,
    /// Tags to point at the built image.
    pub tags: Vec<String>,
    /// Tag of the registry build cache this service exports (`cache_to`; also read first, by default).
    pub cache_tag: String,
    /// Which layers the exported cache keeps.
    pub cache_mode: CacheMode,
    /// Caches to import, in order (tags in the service's repository, or whole references); all that exist are
    /// used. Default: the cache tag.
    pub cache_from: Vec<String>,
    /// Stage to build.
    pub target: Option<String>,
    /// `ARG` values.
    pub build_args: BTreeMap<String, String>,
    /// Target platforms (`os/arch[/variant]`); empty = the daemon's default.
    pub platforms: Vec<String>,
    /// Services whose image feeds this one.
    pub depends_on: Vec<String>,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
    /// `SOURCE_DATE_EPOCH` for reproducible images (timestamps in the config and in new layers clamped to it).
    pub source_date_epoch: Option<u64>,
    /// What the input digest covers.
    pub inputs: Inputs,
    /// Named build contexts, by the name the Dockerfile uses (`FROM NAME`, `COPY --from=NAME`).
    pub contexts: BTreeMap<String, NamedContext>,
    /// Attestations attached to the image.
    pub attest: Attest,
    /// Outputs besides the registry (`dest` absolute).
    pub outputs: Vec<Output>,
    /// Secrets its build may mount (`RUN --mount=type=secret`), by id: where each value comes from, never a value.
    /// Not an input.
    pub secrets: Vec<SecretSpec>,
    /// SSH agents its build may forward (`RUN --mount=type=ssh`), by id. Not an input.
    pub ssh: Vec<SshSpec>,
    /// Where the image is deployed (`[services.X.deploy.ecs]`), if anywhere.
    pub deploy: Option<EcsDeploy>,
}

/// What a named build context is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// `service:NAME`: the image of another service in this run (pinned by digest; implies `depends_on`).
    Service(String),
    /// A source BuildKit fetches itself, as written: `docker-image://REF`, `git://...`, `https://...`.
    Remote(String),
    /// A local directory (absolute), sent through the session with its own `.dockerignore`.
    Local(PathBuf),
}

/// Attestations to attach, as BuildKit's `attest:TYPE` parameters (CSV; empty: the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attest {
    /// SLSA provenance, e.g. `mode=min`.
    pub provenance: Option<String>,
    /// SBOM, e.g. `generator=IMAGE`.
    pub sbom: Option<String>,
}

impl Attest {
    /// Whether any attestation is asked for.
    pub fn any(&self) -> bool {
        self.provenance.is_some() || self.sbom.is_some()
    }
}

/// Checks provenance parameters as BuildKit reads them (`mode=min|max`, ...), naming what is wrong.
pub fn validate_provenance(params: &str) -> Result<(), String> {
    const KEYS: &[&str] = &[
        "mode",
        "builder-id",
        "reproducible",
        "inline-only",
        "filename",
        "capture-usage",
        "version",
    ];
    for part in params.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        if !KEYS.contains(&k) {
            return Err(format!(
                "unknown provenance parameter `{k}` (known: {})",
                KEYS.join(", ")
            ));
        }
        if k == "mode" && !["min", "max", "full"].contains(&v) {
            return Err(format!("provenance mode `{v}`: use `min` or `max`"));
        }
    }
    Ok(())
}

/// A loaded config: where it is, and its services in dependency order (dependencies first).
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The directory holding the config; relative paths in it are relative to this.
    pub root: PathBuf,
    /// The config file.
    pub config_path: PathBuf,
    /// `[registry]`, if any.
    pub registry: Option<Registry>,
    /// The builders of `[buildkit]` (`addr`, one or a list, or `[[buildkit.builders]]`), in order; empty when
    /// none is configured.
    pub builders: Vec<Builder>,
    /// `[buildkit] network` (`default`, `host` or `none`), if any.
    pub buildkit_network: Option<String>,
    /// Services, dependencies before dependents, otherwise by name.
    pub services: Vec<Service>,
    /// The compose file read (alone, or under `buildopt.toml`), if any.
    pub compose_file: Option<PathBuf>,
    /// What was read but not applied (compose keys buildopt does not do, unset variables), one line each, located:
    /// for the commands to show.
    pub warnings: Vec<String>,
}

/// How a config is read: the `--set` overrides to apply, and where variables get their values.
pub struct LoadOptions<'a> {
    /// `SERVICE.KEY=VALUE`, `*.KEY=VALUE`, `SERVICE.MAPKEY.NAME=VALUE`, in order (a later one wins).
    pub sets: &'a [String],
    /// A variable's value (the process environment, normally).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// A compose file (`--file`; absolute, or relative to the current directory): read alone, or, with a
    /// `buildopt.toml`, instead of its `[compose] file`.
    pub compose_file: Option<&'a Path>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            sets: &[],
            env: &|name| std::env::var(name).ok(),
            compose_file: None,
        }
    }
}

impl Workspace {
    /// Finds `buildopt.toml` in `start` or a parent directory, else a compose file (`compose.yaml`,
    /// `docker-compose.yml`, ...): the nearest directory with either wins, `buildopt.toml` first in it.
    pub fn discover(start: &Path) -> Result<Workspace, ConfigError> {
        Workspace::discover_with(start, &LoadOptions::default())
    }

    /// [`Workspace::discover`] with overrides; with `compose_file` set, that file alone, found nowhere.
    pub fn discover_with(
        start: &Path,
        options: &LoadOptions<'_>,
    ) -> Result<Workspace, ConfigError> {
        if let Some(compose) = options.compose_file {
            return Workspace::load_compose(&start.join(compose), options);
        }
        for dir in start.ancestors() {
            let candidate = dir.join(CONFIG_FILE);
            if candidate.is_file() {
                return Workspace::load_with(&candidate, options);
            }
            if let Some(found) = compose::COMPOSE_FILES
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.is_file())
            {
                return Workspace::load_compose(&found, options);
            }
        }
        Err(ConfigError::NotFound(start.to_owned()))
    }

    /// Loads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Workspace, ConfigError> {
        Workspace::load_with(path, &LoadOptions::default())
    }

    /// [`Workspace::load`] with overrides. A `.yaml` / `.yml` path is a compose file, read alone.
    pub fn load_with(path: &Path, options: &LoadOptions<'_>) -> Result<Workspace, ConfigError> {
        if compose::is_compose_path(path) && options.compose_file.is_none() {
            return Workspace::load_compose(path, options);
        }
        let text = fs_err::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let abs = std::path::absolute(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let root = abs.parent().map(Path::to_owned).unwrap_or_default();
        let compose = match options.compose_file {
            Some(c) => Some(std::path::absolute(c).map_err(|source| ConfigError::Read {
                path: c.to_owned(),
                source,
            })?),
            None => None,
        };
        Workspace::parse_inner(&text, &abs, &root, options, compose.as_deref())
    }

    /// Loads the compose file at `path` alone: its directory is the root.
    pub fn load_compose(path: &Path, options: &LoadOptions<'_>) -> Result<Workspace, ConfigError> {
        let abs = std::path::absolute(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        if !abs.is_file() {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let root = abs.parent().map(Path::to_owned).unwrap_or_default();
        Workspace::parse_inner("", &abs, &root, options, Some(&abs))
    }

    /// Parses config `text` as if it were the file `path` in directory `root`.
    pub fn parse(text: &str, path: &Path, root: &Path) -> Result<Workspace, ConfigError> {
        Workspace::parse_with(text, path, root, &LoadOptions::default())
    }

    /// [`Workspace::parse`] with overrides (`compose_file` relative to `root`).
    pub fn parse_with(
        text: &str,
        path: &Path,
        root: &Path,
        options: &LoadOptions<'_>,
    ) -> Result<Workspace, ConfigError> {
        let compose = options.compose_file.map(|c| root.join(c));
        Workspace::parse_inner(text, path, root, options, compose.as_deref())
    }

    /// Parses `text` (`buildopt.toml`, empty for a compose file alone) with the compose file `compose` (absolute),
    /// else the one its `[compose] file` names, if any.
    fn parse_inner(
        text: &str,
        path: &Path,
        root: &Path,
        options: &LoadOptions<'_>,
        compose: Option<&Path>,
    ) -> Result<Workspace, ConfigError> {
        use serde::de::IntoDeserializer as _;
        // The overrides are placed after the file's text as comments (TOML ignores them), so that values made from
        // them can borrow from the parsed text and an error in one names the `--set`.
        let mut located = text.to_owned();
        let mut set_spans = Vec::new();
        for set in options.sets {
            located.push_str("\n# ");
            let start = located.len();
            located.push_str(&set.replace(['\n', '\r'], " "));
            set_spans.push((start..located.len(), set.clone()));
        }
        let at = Locator {
            text: &located,
            file_len: text.len(),
            sets: &set_spans,
            path,
            compose: None,
        };
        let mut table = toml::de::DeTable::parse(&located).map_err(|e| at.toml_error(e))?;
        // `[registry]` and `[compose]` first: the compose file is read with them. The rest after the overrides, so
        // that a value a `--set` replaces is not looked at.
        let early = |key: &str| key.starts_with("registry.") || key.starts_with("compose.");
        interpolate_table(table.get_mut(), "", options.env, &at, &|key, _| early(key))?;

        let compose_path = match compose {
            Some(c) => Some((c.to_owned(), None)),
            None => peek_str(table.get_ref(), &["compose", "file"])
                .map(|(f, span)| (root.join(f), Some(span))),
        };
        let mut import = None;
        if let Some((cpath, span)) = compose_path {
            if !cpath.is_file() {
                let message = format!("no compose file `{}`", cpath.display());
                return Err(match span {
                    Some(span) => at.err(
                        span,
                        format!(
                            "`compose.file`: {message}; fix the path (it is relative to {})",
                            root.display()
                        ),
                    ),
                    None => ConfigError::Read {
                        path: cpath,
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                    },
                });
            }
            let registry =
                peek_str(table.get_ref(), &["registry", "url"]).map(|(u, _)| u.to_owned());
            import = Some(compose::import(
                &cpath,
                located.len() + 1,
                options.env,
                registry.as_deref(),
            )?);
        }
        let (compose_text, warnings) = match import {
            Some(i) => {
                merge_compose(table.get_mut(), i.services, i.registry, i.network);
                (Some((i.base, i.text, i.path)), i.warnings)
            }
            None => (None, Vec::new()),
        };
        let at = Locator {
            compose: compose_text.as_ref().map(|(base, text, path)| ComposeText {
                base: *base,
                text,
                path,
            }),
            ..at
        };
        let toml_error = |e: toml::de::Error| at.toml_error(e);
        for (span, set) in &set_spans {
            apply_set(table.get_mut(), &located[span.clone()], span.clone()).map_err(
                |message| ConfigError::Override {
                    set: format!("--set `{set}`"),
                    message,
                },
            )?;
        }
        // A compose file's values are interpolated already, its own way.
        interpolate_table(table.get_mut(), "", options.env, &at, &|key, span| {
            at.is_set(span.clone()) || (span.start < at.file_len && !early(key))
        })?;
        let file = FileConfig::deserialize(table.into_deserializer()).map_err(toml_error)?;

        let registry = match file.registry {
            None => None,
            Some(r) => {
                validate_registry_url(r.url.get_ref())
                    .map_err(|m| at.err(r.url.span(), format!("`registry.url`: {m}")))?;
                let mut registry = Registry {
                    url: r.url.into_inner(),
                    insecure: r.insecure,
                    ecr: r.ecr,
                    create_repositories: r.create_repositories,
                    ecr_endpoint: r.ecr_endpoint,
                    ecr_region: r.ecr_region,
                    ecr_lifecycle: None,
                };
                if let Some(l) = r.ecr_lifecycle {
                    let key = "`registry.ecr_lifecycle`";
                    if !registry.is_ecr() {
                        return Err(at.err(
                            l.span(),
                            format!(
                                "{key}: registry `{}` is not ECR (set `ecr = true` if it is); other registries have no lifecycle policies: clean them with `buildopt gc`",
                                registry.url
                            ),
                        ));
                    }
                    let keep = l.into_inner().keep_content_tags;
                    let n = u32::try_from(*keep.get_ref())
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| {
                            at.err(
                                keep.span(),
                                format!(
                                    "{key}: `keep_content_tags` must be 1 or more (the newest image of each repository keeps its content tag), not {}",
                                    keep.get_ref()
                                ),
                            )
                        })?;
                    registry.ecr_lifecycle = Some(EcrLifecycle {
                        keep_content_tags: n,
                    });
                }
                Some(registry)
            }
        };

        let names: Vec<String> = file.services.keys().map(|k| k.get_ref().clone()).collect();
        let mut services = Vec::new();
        for (name, svc) in file.services {
            let span = name.span();
            let name = name.into_inner();
            validate_service_name(&name)
                .map_err(|m| at.err(span.clone(), format!("service `{name}`: {m}")))?;
            let key = |k: &str| format!("`services.{name}.{k}`");
            let svc = svc.into_inner();

            let context = root.join(svc.context.get_ref());
            if !context.is_dir() {
                return Err(at.err(
                    svc.context.span(),
                    format!(
                        "{}: context directory `{}` does not exist; fix the path (it is relative to {})",
                        key("context"),
                        svc.context.get_ref(),
                        root.display()
                    ),
                ));
            }
            let dockerfile = match (&svc.dockerfile, &svc.dockerfile_inline) {
                (Some(_), Some(inline)) => {
                    return Err(at.err(
                        inline.span(),
                        format!(
                            "{} and {} both give the Dockerfile; keep one",
                            key("dockerfile"),
                            key("dockerfile_inline")
                        ),
                    ));
                }
                (None, Some(inline)) => inline_dockerfile(root, inline.get_ref()).map_err(|e| {
                    at.err(
                        inline.span(),
                        format!(
                            "{}: cannot write it under {}: {e}",
                            key("dockerfile_inline"),
                            root.join(crate::commands::CACHE_DIR).display()
                        ),
                    )
                })?,
                (Some(d), None) => {
                    let p = root.join(d.get_ref());
                    if !p.is_file() {
                        return Err(at.err(
                            d.span(),
                            format!(
                                "{}: no file `{}`; fix the path (it is relative to {})",
                                key("dockerfile"),
                                d.get_ref(),
                                root.display()
                            ),
                        ));
                    }
                    p
                }
                (None, None) => {
                    let p = context.join("Dockerfile");
                    if !p.is_file() {
                        return Err(at.err(
                            span,
                            format!(
                                "service `{name}`: no Dockerfile at `{}`; add one or set {}",
                                Path::new(svc.context.get_ref())
                                    .join("Dockerfile")
                                    .display(),
                                key("dockerfile")
                            ),
                        ));
                    }
                    p
                }
            };
            let image = match &svc.image {
                Some(i) => {
                    validate_repository(i.get_ref())
                        .map_err(|m| at.err(i.span(), format!("{}: {m}", key("image"))))?;
                    i.get_ref().clone()
                }
                None => {
                    validate_repository(&name).map_err(|m| {
                        at.err(span.clone(), format!("service `{name}` has no `image` and its name is not a valid one: {m}"))
                    })?;
                    name.clone()
                }
            };
            // No `tags` key: `latest`. `tags = []`: the content tag only (ECR repositories with immutable tags).
            let default_tags = svc.tags.is_none();
            let mut tags: Vec<String> = Vec::new();
            for t in svc.tags.unwrap_or_default() {
                validate_requested_tag(t.get_ref())
                    .map_err(|m| at.err(t.span(), format!("{}: {m}", key("tags"))))?;
                if tags.contains(t.get_ref()) {
                    return Err(at.err(
                        t.span(),
                        format!(
                            "{}: tag `{}` is listed twice; remove one",
                            key("tags"),
                            t.get_ref()
                        ),
                    ));
                }
                tags.push(t.into_inner());
            }
            if default_tags {
                tags.push("latest".to_owned());
            }
            let (cache_tag, cache_mode) = match (svc.cache_tag, svc.cache_to) {
                (Some(_), Some(to)) => {
                    return Err(at.err(
                        to.span(),
                        format!(
                            "{} and {} both name the cache; keep `cache_to`",
                            key("cache_tag"),
                            key("cache_to")
                        ),
                    ));
                }
                (Some(t), None) => {
                    let span = t.span();
                    (
                        Some((t.into_inner(), span, "cache_tag")),
                        CacheMode::default(),
                    )
                }
                (None, Some(to)) => {
                    let span = to.span();
                    match to.into_inner() {
                        CacheToToml::Tag(t) => (Some((t, span, "cache_to")), CacheMode::default()),
                        CacheToToml::Table(t) => (
                            t.tag.map(|t| (t, span, "cache_to")),
                            t.mode.unwrap_or_default(),
                        ),
                    }
                }
                (None, None) => (None, CacheMode::default()),
            };
            let cache_tag = match cache_tag {
                Some((t, t_span, named_by)) => {
                    validate_requested_tag(&t)
                        .map_err(|m| at.err(t_span.clone(), format!("{}: {m}", key(named_by))))?;
                    if tags.contains(&t) {
                        return Err(at.err(
                            t_span,
                            format!(
                                "{}: `{t}` is also a requested tag: the cache would overwrite the image (or the image the cache); use another tag",
                                key(named_by),
                            ),
                        ));
                    }
                    t
                }
                None if tags.iter().any(|t| t == "cache") => {
                    return Err(at.err(
                        span,
                        format!(
                            "service `{name}`: `cache` is a requested tag and the default cache tag; set {} to another tag",
                            key("cache_to")
                        ),
                    ));
                }
                None => "cache".to_owned(),
            };
            let mut cache_from = Vec::new();
            for c in svc.cache_from.unwrap_or_default() {
                validate_cache_ref(c.get_ref())
                    .map_err(|m| at.err(c.span(), format!("{}: {m}", key("cache_from"))))?;
                if !cache_from.contains(c.get_ref()) {
                    cache_from.push(c.into_inner());
                }
            }
            if cache_from.is_empty() {
                cache_from.push(cache_tag.clone());
            }
            let mut platforms: Vec<String> = Vec::new();
            for p in svc.platforms {
                validate_platform(p.get_ref())
                    .map_err(|m| at.err(p.span(), format!("{}: {m}", key("platforms"))))?;
                if platforms.contains(p.get_ref()) {
                    return Err(at.err(
                        p.span(),
                        format!(
                            "{}: platform `{}` is listed twice; remove one",
                            key("platforms"),
                            p.get_ref()
                        ),
                    ));
                }
                platforms.push(p.into_inner());
            }
            let source_date_epoch = match svc.source_date_epoch {
                Some(e) if *e.get_ref() < 0 => {
                    return Err(at.err(
                        e.span(),
                        format!(
                            "{}: must be seconds since 1970 (0 or more)",
                            key("source_date_epoch")
                        ),
                    ));
                }
                Some(e) => Some(e.into_inner() as u64),
                None => None,
            };
            let mut context_deps: Vec<Spanned<String>> = Vec::new();
            let mut contexts = BTreeMap::new();
            for (cname, value) in svc.contexts {
                let at_value =
                    |m: String| at.err(value.span(), format!("{}: {m}", key("contexts")));
                if cname.is_empty()
                    || cname.chars().any(char::is_whitespace)
                    || ["context", "dockerfile", "scratch"]
                        .contains(&cname.to_ascii_lowercase().as_str())
                {
                    return Err(at_value(format!(
                        "`{cname}` cannot name a build context (not empty, no spaces, not `context`, `dockerfile` or `scratch`)"
                    )));
                }
                let v = value.get_ref();
                let named = if let Some(other) = v.strip_prefix("service:") {
                    if !names.iter().any(|n| n == other) || other == name {
                        return Err(at_value(format!(
                            "`{v}`: no other service `{other}`; name one of {}",
                            names
                                .iter()
                                .filter(|n| **n != name)
                                .map(|n| format!("`{n}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                    context_deps.push(Spanned::new(value.span(), other.to_owned()));
                    NamedContext::Service(other.to_owned())
                } else if v.starts_with("oci-layout://")
                    || v.starts_with("input:")
                    || v.starts_with("local:")
                {
                    return Err(at_value(format!(
                        "`{v}`: buildopt serves no OCI layout or frontend input; use `service:NAME`, `docker-image://REF` or a directory"
                    )));
                } else if ["docker-image://", "git://", "git@", "https://", "http://"]
                    .iter()
                    .any(|p| v.starts_with(p))
                {
                    NamedContext::Remote(v.clone())
                } else {
                    let dir = root.join(v);
                    if !dir.is_dir() {
                        return Err(at_value(format!(
                            "`{v}`: no directory there (it is relative to {}); or use `service:NAME`, `docker-image://REF`",
                            root.display()
                        )));
                    }
                    NamedContext::Local(dir)
                };
                contexts.insert(cname, named);
            }
            let attest = match svc.attest {
                None => Attest::default(),
                Some(a) => {
                    let span = a.span();
                    let a = a.into_inner();
                    let attest = Attest {
                        provenance: a.provenance.and_then(Switch::params),
                        sbom: a.sbom.and_then(Switch::params),
                    };
                    if let Some(p) = &attest.provenance {
                        validate_provenance(p)
                            .map_err(|m| at.err(span, format!("{}: {m}", key("attest"))))?;
                    }
                    attest
                }
            };
            let mut outputs = Vec::new();
            for o in svc.outputs.unwrap_or_default() {
                let parsed: Output = o
                    .get_ref()
                    .parse()
                    .map_err(|m| at.err(o.span(), format!("{}: {m}", key("outputs"))))?;
                outputs.push(parsed.resolved(root));
            }
            let mut depends_on = Vec::new();
            for d in &svc.depends_on {
                if !names.contains(d.get_ref()) {
                    return Err(at.err(
                        d.span(),
                        format!(
                            "{}: unknown service `{}`; define [services.{}] or remove it",
                            key("depends_on"),
                            d.get_ref(),
                            d.get_ref()
                        ),
                    ));
                }
                if d.get_ref() == &name {
                    return Err(at.err(
                        d.span(),
                        format!("{}: service `{name}` depends on itself", key("depends_on")),
                    ));
                }
                depends_on.push(d.get_ref().clone());
            }
            let mut edges = svc.depends_on;
            for d in context_deps {
                if !depends_on.contains(d.get_ref()) {
                    depends_on.push(d.get_ref().clone());
                    edges.push(d);
                }
            }
            let secrets = by_id(svc.secrets, &key("secrets"), &at, |s| {
                SecretSpec::parse(s, root)
            })?;
            let ssh = by_id(svc.ssh, &key("ssh"), &at, |s| SshSpec::parse(s, root))?;
            let deploy = match svc.deploy {
                None => None,
                Some(d) => Some(ecs_deploy(d, &name, &at)?),
            };
            services.push((
                Service {
                    name,
                    context,
                    dockerfile,
                    image,
                    tags,
                    cache_tag,
                    cache_mode,
                    cache_from,
                    target: svc.target,
                    build_args: svc.build_args,
                    platforms,
                    depends_on,
                    labels: svc.labels,
                    source_date_epoch,
                    inputs: svc.inputs,
                    contexts,
                    attest,
                    outputs,
                    secrets,
                    ssh,
                    deploy,
                },
                edges,
            ));
        }

        let services = topo_sort(services).map_err(|(cycle, span)| {
            at.err(
                span,
                format!(
                    "dependency cycle: {}; remove one of these `depends_on` entries",
                    cycle.join(" -> ")
                ),
            )
        })?;
        let builders = builders::builders(file.buildkit.as_ref(), root, &at)?;
        let buildkit_network = match file.buildkit {
            None => None,
            Some(b) => {
                if let Some(n) = &b.network
                    && !["default", "host", "none"].contains(&n.get_ref().as_str())
                {
                    return Err(at.err(
                        n.span(),
                        format!("`buildkit.network`: unknown network `{}`; use \"default\", \"host\" or \"none\"", n.get_ref()),
                    ));
                }
                b.network.map(Spanned::into_inner)
            }
        };
        Ok(Workspace {
            root: root.to_owned(),
            config_path: path.to_owned(),
            registry,
            builders,
            buildkit_network,
            services,
            compose_file: compose_text.map(|(_, _, p)| p),
            warnings,
        })
    }

    /// Adds `extra` (`--tag`) to the requested tags of every service, checked like the file's.
    pub fn add_tags(&mut self, extra: &[String]) -> Result<(), ConfigError> {
        for tag in extra {
            validate_requested_tag(tag).map_err(|message| ConfigError::Override {
                set: format!("--tag `{tag}`"),
                message,
            })?;
        }
        for svc in &mut self.services {
            for tag in extra {
                if *tag == svc.cache_tag {
                    return Err(ConfigError::Override {
                        set: format!("--tag `{tag}`"),
                        message: format!(
                            "`{tag}` is the cache tag of service `{}`; use another tag",
                            svc.name
                        ),
                    });
                }
                if !svc.tags.contains(tag) {
                    svc.tags.push(tag.clone());
                }
            }
        }
        Ok(())
    }

    /// Adds `--secret` and `--ssh` entries (paths relative to `base`, the current directory) to every service: an
    /// entry replaces the service's own with its id, or is added.
    pub fn add_mounts(
        &mut self,
        secrets: &[String],
        ssh: &[String],
        base: &Path,
    ) -> Result<(), ConfigError> {
        fn flag(name: &'static str, value: &str) -> impl FnOnce(String) -> ConfigError {
            let set = format!("--{name} `{value}`");
            move |message| ConfigError::Override { set, message }
        }
        let secrets = secrets
            .iter()
            .map(|s| SecretSpec::parse(s, base).map_err(flag("secret", s)))
            .collect::<Result<Vec<_>, _>>()?;
        let ssh = ssh
            .iter()
            .map(|s| SshSpec::parse(s, base).map_err(flag("ssh", s)))
            .collect::<Result<Vec<_>, _>>()?;
        for svc in &mut self.services {
            mounts::merge_by_id(&mut svc.secrets, &secrets);
            mounts::merge_by_id(&mut svc.ssh, &ssh);
        }
        Ok(())
    }

    /// Looks a service up by name.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The named services plus everything they depend on, in dependency order; all services when `names` is empty.
    /// Returns the first unknown name as the error.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Service>, String> {
        if names.is_empty() {
            return Ok(self.services.iter().collect());
        }
        let mut wanted: Vec<&str> = Vec::new();
        let mut todo: Vec<&str> = Vec::new();
        for n in names {
            if self.service(n).is_none() {
                return Err(n.clone());
            }
            todo.push(n);
        }
        while let Some(n) = todo.pop() {
            if wanted.contains(&n) {
                continue;
            }
            wanted.push(n);
            if let Some(s) = self.service(n) {
                todo.extend(s.depends_on.iter().map(String::as_str));
            }
        }
        Ok(self
            .services
            .iter()
            .filter(|s| wanted.contains(&s.name.as_str()))
            .collect())
    }
}

/// `[services.NAME.deploy]`, checked: an `ecs` table with a cluster and a service, names without spaces.
fn ecs_deploy(
    deploy: Spanned<DeployToml>,
    name: &str,
    at: &Locator<'_>,
) -> Result<EcsDeploy, ConfigError> {
    let span = deploy.span();
    let Some(ecs) = deploy.into_inner().ecs else {
        return Err(at.err(
            span,
            format!(
                "`services.{name}.deploy` says nowhere to deploy: add [services.{name}.deploy.ecs] with `cluster` and `service`"
            ),
        ));
    };
    let check = |value: Spanned<String>, key: &str| -> Result<String, ConfigError> {
        let v = value.get_ref();
        if v.is_empty() || v.chars().any(char::is_whitespace) {
            return Err(at.err(
                value.span(),
                format!(
                    "`services.{name}.deploy.ecs.{key}`: `{v}` is not an ECS {key} name or ARN (empty, or with spaces)"
                ),
            ));
        }
        Ok(value.into_inner())
    };
    Ok(EcsDeploy {
        cluster: check(ecs.cluster, "cluster")?,
        service: check(ecs.service, "service")?,
        container: match ecs.container {
            Some(c) => check(c, "container")?,
            None => name.to_owned(),
        },
    })
}

struct Locator<'a> {
    /// The file's text, then each `--set` on a line of its own.
    text: &'a str,
    /// Where the file's text ends in `text`.
    file_len: usize,
    /// The span of each `--set` in `text`.
    sets: &'a [(std::ops::Range<usize>, String)],
    path: &'a Path,
    /// The compose file read, whose values' spans start at its `base` (past `text`).
    compose: Option<ComposeText<'a>>,
}

/// A compose file's text, placed after the config's text and overrides in a [`Locator`]'s offsets.
#[derive(Clone, Copy)]
struct ComposeText<'a> {
    base: usize,
    text: &'a str,
    path: &'a Path,
}

impl Locator<'_> {
    /// Whether the value at `span` comes from a `--set`.
    fn is_set(&self, span: std::ops::Range<usize>) -> bool {
        span.start >= self.file_len && self.compose.is_none_or(|c| span.start < c.base)
    }

    fn toml_error(&self, e: toml::de::Error) -> ConfigError {
        match e.span() {
            Some(s) => self.err(s, e.message().trim_end().to_owned()),
            None => self.err_line(1, e.message().trim_end().to_owned()),
        }
    }

    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn err(&self, span: std::ops::Range<usize>, message: String) -> ConfigError {
        if let Some(c) = self.compose
            && span.start >= c.base
        {
            let rel = (span.start - c.base).min(c.text.len());
            let line = c.text.as_bytes()[..rel]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            return ConfigError::Invalid {
                path: c.path.to_owned(),
                line,
                message: compose_key_names(&message),
            };
        }
        if span.start >= self.file_len
            && let Some((_, set)) = self.sets.iter().find(|(s, _)| s.contains(&span.start))
        {
            return ConfigError::Override {
                set: format!("--set `{set}`"),
                message,
            };
        }
        self.err_line(self.line(span.start), message)
    }

    fn err_line(&self, line: usize, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            message,
        }
    }
}

/// Keys whose `--set` value is a comma-separated list.
const LIST_KEYS: &[&str] = &["tags", "platforms", "depends_on", "cache_from"];
/// List keys whose items hold commas themselves: `--set` gives a list of one item.
const ONE_ITEM_LIST_KEYS: &[&str] = &["outputs"];
/// List keys whose entries hold commas themselves (buildx's `--secret` and `--ssh` syntax): a `--set` value is one
/// entry, which replaces the entry with its id or is added (as bake merges them); an empty value empties the list.
const ENTRY_LIST_KEYS: &[&str] = &["secrets", "ssh"];
/// Keys whose `--set` value is an integer.
const INTEGER_KEYS: &[&str] = &["source_date_epoch"];
/// Keys that are tables of strings: `--set SERVICE.build_args.NAME=VALUE`.
const MAP_KEYS: &[&str] = &["build_args", "labels", "contexts", "attest"];

/// Puts one `--set` into the parsed file, as bake does: `SERVICE.KEY=VALUE` (or `*` for every service) replaces
/// the key; `SERVICE.build_args.NAME=VALUE` sets one entry of a table key. Values carry `span` (the `--set`'s own
/// place), so that validation errors name it.
fn apply_set<'i>(
    table: &mut toml::de::DeTable<'i>,
    set: &'i str,
    span: std::ops::Range<usize>,
) -> Result<(), String> {
    use std::borrow::Cow;
    use toml::de::{DeArray, DeValue};
    let shape = "expected SERVICE.KEY=VALUE, `*.KEY=VALUE` or SERVICE.build_args.NAME=VALUE";
    let (lhs, value) = set.split_once('=').ok_or_else(|| shape.to_owned())?;
    let mut parts = lhs.splitn(3, '.');
    let (Some(service), Some(key)) = (parts.next(), parts.next()) else {
        return Err(shape.to_owned());
    };
    let sub = parts.next();
    let spanned = |v: DeValue<'i>| Spanned::new(span.clone(), v);
    let string = |s: &str| spanned(DeValue::String(Cow::Owned(s.to_owned())));
    let new_value = if LIST_KEYS.contains(&key) && sub.is_none() {
        let mut items = DeArray::new();
        for item in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            items.push(string(item));
        }
        spanned(DeValue::Array(items))
    } else if ONE_ITEM_LIST_KEYS.contains(&key) && sub.is_none() {
        let mut items = DeArray::new();
        items.push(string(value));
        spanned(DeValue::Array(items))
    } else if INTEGER_KEYS.contains(&key) && sub.is_none() {
        let n = value.trim();
        if n.parse::<i64>().is_err() {
            return Err(format!("`{key}` takes an integer, not `{value}`"));
        }
        let parsed = DeValue::parse(n).map_err(|e| e.to_string())?;
        spanned(parsed.into_inner())
    } else {
        string(value)
    };
    if sub.is_some() && !MAP_KEYS.contains(&key) {
        return Err(format!(
            "`{key}` is not a table; a dotted name is only for {}",
            MAP_KEYS.join(" and ")
        ));
    }
    if MAP_KEYS.contains(&key) && sub.is_none() {
        return Err(format!(
            "set one entry of `{key}`: {service}.{key}.NAME=VALUE"
        ));
    }
    let Some(services) = table
        .iter_mut()
        .find(|(k, _)| k.get_ref() == "services")
        .and_then(|(_, v)| match v.get_mut() {
            DeValue::Table(t) => Some(t),
            _ => None,
        })
    else {
        return Err("the config has no [services]".to_owned());
    };
    let mut matched = false;
    for (name, svc) in services.iter_mut() {
        if service != "*" && name.get_ref() != service {
            continue;
        }
        matched = true;
        let DeValue::Table(svc) = svc.get_mut() else {
            continue;
        };
        match sub {
            None if ENTRY_LIST_KEYS.contains(&key) => {
                let existing = svc
                    .iter_mut()
                    .find(|(k, _)| k.get_ref() == key)
                    .map(|(_, v)| v);
                match existing.map(|v| v.get_mut()) {
                    Some(DeValue::Array(items)) if !value.trim().is_empty() => {
                        items.push(string(value));
                    }
                    _ => {
                        let mut items = DeArray::new();
                        if !value.trim().is_empty() {
                            items.push(string(value));
                        }
                        svc.insert(
                            Spanned::new(span.clone(), Cow::Owned(key.to_owned())),
                            spanned(DeValue::Array(items)),
                        );
                    }
                }
            }
            None => {
                svc.insert(
                    Spanned::new(span.clone(), Cow::Owned(key.to_owned())),
                    new_value.clone(),
                );
            }
            Some(entry) => {
                let map = match svc.iter_mut().find(|(k, _)| k.get_ref() == key) {
                    Some((_, v)) => v,
                    None => {
                        svc.insert(
                            Spanned::new(span.clone(), Cow::Owned(key.to_owned())),
                            spanned(DeValue::Table(Default::default())),
                        );
                        svc.iter_mut()
                            .find(|(k, _)| k.get_ref() == key)
                            .map(|(_, v)| v)
                            .expect("just inserted")
                    }
                };
                let DeValue::Table(map) = map.get_mut() else {
                    return Err(format!("`{key}` of `{service}` is not a table"));
                };
                map.insert(
                    Spanned::new(span.clone(), Cow::Owned(entry.to_owned())),
                    new_value.clone(),
                );
            }
        }
    }
    if !matched {
        return Err(format!("no service `{service}` in the config"));
    }
    Ok(())
}

/// The entries of a list keyed by id (`secrets`, `ssh`), parsed: two entries of the file with the same id are an
/// error; an entry from a `--set` replaces the earlier one with its id.
fn by_id<T: ById>(
    items: Vec<Spanned<String>>,
    key: &str,
    at: &Locator<'_>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ConfigError> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        let span = item.span();
        let entry =
            parse(item.get_ref()).map_err(|m| at.err(span.clone(), format!("{key}: {m}")))?;
        match out.iter().position(|e| e.id() == entry.id()) {
            Some(i) if at.is_set(span.clone()) => out[i] = entry,
            Some(_) => {
                return Err(at.err(
                    span,
                    format!("{key}: id `{}` is listed twice; remove one", entry.id()),
                ));
            }
            None => out.push(entry),
        }
    }
    Ok(out)
}

/// Interpolates every string value under `table` that `this` picks by key and span (keys are names, not values, and stay as
/// written).
fn interpolate_table(
    table: &mut toml::de::DeTable<'_>,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    at: &Locator<'_>,
    this: &dyn Fn(&str, std::ops::Range<usize>) -> bool,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        let key = if path.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{path}.{}", key.get_ref())
        };
        interpolate_value(value, &key, env, at, this)?;
    }
    Ok(())
}

fn interpolate_value(
    value: &mut Spanned<toml::de::DeValue<'_>>,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    at: &Locator<'_>,
    this: &dyn Fn(&str, std::ops::Range<usize>) -> bool,
) -> Result<(), ConfigError> {
    use toml::de::DeValue;
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) if s.contains('$') && this(key, span.clone()) => {
            let expanded =
                vars::interpolate(s, env).map_err(|e| at.err(span, format!("`{key}`: {e}")))?;
            *s = std::borrow::Cow::Owned(expanded);
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{key}[{i}]"), env, at, this)?;
            }
        }
        DeValue::Table(t) => interpolate_table(t, key, env, at, this)?,
        _ => {}
    }
    Ok(())
}

/// The string at `keys` (a table path) of `table`, and its span.
fn peek_str<'t>(
    table: &'t toml::de::DeTable<'_>,
    keys: &[&str],
) -> Option<(&'t str, std::ops::Range<usize>)> {
    use toml::de::DeValue;
    let (first, rest) = keys.split_first()?;
    let value = table
        .iter()
        .find(|(k, _)| k.get_ref() == first)
        .map(|(_, v)| v)?;
    match (value.get_ref(), rest.is_empty()) {
        (DeValue::String(s), true) => Some((s.as_ref(), value.span())),
        (DeValue::Table(t), false) => peek_str(t, rest),
        _ => None,
    }
}

/// The table under `key` in `table`, created (at `span`) when missing; None when `key` holds something else.
fn table_at<'t, 'i>(
    table: &'t mut toml::de::DeTable<'i>,
    key: &str,
    span: std::ops::Range<usize>,
) -> Option<&'t mut toml::de::DeTable<'i>> {
    use std::borrow::Cow;
    use toml::de::DeValue;
    if !table.iter().any(|(k, _)| k.get_ref() == key) {
        table.insert(
            Spanned::new(span.clone(), Cow::Owned(key.to_owned())),
            Spanned::new(span, DeValue::Table(Default::default())),
        );
    }
    match table
        .iter_mut()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(_, v)| v.get_mut())
    {
        Some(DeValue::Table(t)) => Some(t),
        _ => None,
    }
}

/// Puts a compose file's services under `[services]`: a service `buildopt.toml` also has keeps its own keys (and the
/// entries of its `build_args`, `labels` and `contexts`), and takes the others from the compose file; its registry
/// and network when the file has none.
fn merge_compose(
    table: &mut toml::de::DeTable<'_>,
    services: Vec<(String, std::ops::Range<usize>, toml::de::DeTable<'static>)>,
    registry: Option<(String, bool, std::ops::Range<usize>)>,
    network: Option<(String, std::ops::Range<usize>)>,
) {
    use std::borrow::Cow;
    use toml::de::DeValue;
    /// Keys that say the same thing: one set in `buildopt.toml` keeps the compose file's other out.
    const SAME: &[(&str, &str)] = &[
        ("dockerfile", "dockerfile_inline"),
        ("cache_tag", "cache_to"),
    ];
    if let Some((_, span, _)) = services.first()
        && let Some(all) = table_at(table, "services", span.clone())
    {
        for (name, span, svc) in services {
            let own = all
                .iter_mut()
                .find(|(k, _)| k.get_ref() == name.as_str())
                .map(|(_, v)| v.get_mut());
            let own = match own {
                Some(DeValue::Table(own)) => own,
                // Not a table: the check of `buildopt.toml` says so.
                Some(_) => continue,
                None => {
                    all.insert(
                        Spanned::new(span.clone(), Cow::Owned(name)),
                        Spanned::new(span, DeValue::Table(svc)),
                    );
                    continue;
                }
            };
            for (k, v) in svc {
                let key = k.get_ref().to_string();
                let has = |name: &str| own.iter().any(|(k, _)| k.get_ref() == name);
                if SAME
                    .iter()
                    .any(|(a, b)| (key == *a && has(b)) || (key == *b && has(a)))
                {
                    continue;
                }
                let existing = own
                    .iter_mut()
                    .find(|(ok, _)| ok.get_ref() == key.as_str())
                    .map(|(_, ov)| ov.get_mut());
                let v_span = v.span();
                match (existing, v.into_inner()) {
                    (None, v) => {
                        own.insert(k, Spanned::new(v_span, v));
                    }
                    (Some(DeValue::Table(mine)), DeValue::Table(theirs))
                        if ["build_args", "labels", "contexts"].contains(&key.as_str()) =>
                    {
                        for (ek, ev) in theirs {
                            if !mine.iter().any(|(mk, _)| mk.get_ref() == ek.get_ref()) {
                                mine.insert(ek, ev);
                            }
                        }
                    }
                    (Some(_), _) => {}
                }
            }
        }
    }
    if let Some((url, insecure, span)) = registry
        && !table.iter().any(|(k, _)| k.get_ref() == "registry")
        && let Some(r) = table_at(table, "registry", span.clone())
    {
        r.insert(
            Spanned::new(span.clone(), Cow::Borrowed("url")),
            Spanned::new(span.clone(), DeValue::String(Cow::Owned(url))),
        );
        r.insert(
            Spanned::new(span.clone(), Cow::Borrowed("insecure")),
            Spanned::new(span, DeValue::Boolean(insecure)),
        );
    }
    if let Some((n, span)) = network
        && let Some(b) = table_at(table, "buildkit", span.clone())
        && !b.iter().any(|(k, _)| k.get_ref() == "network")
    {
        b.insert(
            Spanned::new(span.clone(), Cow::Borrowed("network")),
            Spanned::new(span, DeValue::String(Cow::Owned(n))),
        );
    }
}

/// A message about a compose file's service in its own key names (`services.app.build_args` is
/// `services.app.build.args`), without the note that paths are relative to `buildopt.toml`: a compose file's paths
/// are made whole, and shown so.
fn compose_key_names(message: &str) -> String {
    let message = match message.find(" (it is relative to ") {
        Some(start) => match message[start..].find(')') {
            Some(len) => format!("{}{}", &message[..start], &message[start + len + 1..]),
            None => message.to_owned(),
        },
        None => message.to_owned(),
    };
    static KEY: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"`services\.([A-Za-z0-9._-]+?)\.(context|dockerfile_inline|dockerfile|tags|cache_to|cache_from|target|build_args|platforms|labels|contexts|secrets|ssh|depends_on)\b",
        )
        .expect("a valid pattern")
    });
    KEY.replace_all(&message, |c: &regex::Captures<'_>| {
        let compose = match &c[2] {
            "build_args" => "args",
            "contexts" | "depends_on" => "additional_contexts",
            other => other,
        };
        format!("`services.{}.build.{compose}", &c[1])
    })
    .into_owned()
}

/// The file an inline Dockerfile (`dockerfile_inline`) is read from: `.build-cache/inline/<digest>/Dockerfile`
/// under `root`, written once per content (the digest names it). Only its content is an input, as a Dockerfile's.
fn inline_dockerfile(root: &Path, text: &str) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    let digest = crate::digest::Digest::of(text.as_bytes());
    let dir = root
        .join(crate::commands::CACHE_DIR)
        .join("inline")
        .join(digest.to_string());
    let file = dir.join("Dockerfile");
    if std::fs::read(&file).is_ok_and(|b| b == text.as_bytes()) {
        return Ok(file);
    }
    fs_err::create_dir_all(&dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.persist(&file).map_err(|e| e.error)?;
    Ok(file)
}

/// Orders services dependencies-first (stable by name otherwise); on a cycle, returns it and the span of the
/// `depends_on` entry that closes it.
fn topo_sort(
    services: Vec<(Service, Vec<Spanned<String>>)>,
) -> Result<Vec<Service>, (Vec<String>, std::ops::Range<usize>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        i: usize,
        all: &[(Service, Vec<Spanned<String>>)],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), (Vec<String>, std::ops::Range<usize>)> {
        marks[i] = Mark::Active;
        path.push(i);
        for dep in &all[i].1 {
            let j = all
                .iter()
                .position(|(s, _)| &s.name == dep.get_ref())
                .expect("dependencies were checked");
            match marks[j] {
                Mark::Done => {}
                Mark::Active => {
                    let start = path.iter().position(|&k| k == j).unwrap_or(0);
                    let mut cycle: Vec<String> = path[start..]
                        .iter()
                        .map(|&k| all[k].0.name.clone())
                        .collect();
                    cycle.push(all[j].0.name.clone());
                    return Err((cycle, dep.span()));
                }
                Mark::New => visit(j, all, marks, path, order)?,
            }
        }
        path.pop();
        marks[i] = Mark::Done;
        order.push(i);
        Ok(())
    }
    let mut marks = vec![Mark::New; services.len()];
    let mut order = Vec::new();
    for i in 0..services.len() {
        if marks[i] == Mark::New {
            visit(i, &services, &mut marks, &mut Vec::new(), &mut order)?;
        }
    }
    let mut slots: Vec<Option<Service>> = services.into_iter().map(|(s, _)| Some(s)).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

fn validate_service_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err("a service name must start with a letter or digit and contain only letters, digits, `-`, `_` and `.`".into())
    }
}

/// The repository path grammar of the distribution spec: lowercase components of `[a-z0-9]` joined by `.`, `_`,
/// `__` or runs of `-`, separated by `/`.
pub fn validate_repository(repo: &str) -> Result<(), String> {
    let hint = "an image name is lowercase path components like `team/api` (letters, digits, and `.`, `_`, `-` between them)";
    if repo.is_empty() || repo.len() > 255 {
        return Err(format!("invalid image name `{repo}`: {hint}"));
    }
    for component in repo.split('/') {
        let b = component.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let mut ok = !b.is_empty() && alnum(b[0]) && alnum(b[b.len() - 1]);
        let mut i = 0;
        while ok && i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        }
        if !ok {
            return Err(format!("invalid image name `{repo}`: {hint}"));
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag `{tag}`: a tag is 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
        ))
    }
}

/// Operating systems and architectures BuildKit knows (containerd's `platforms` package), with the variants each
/// architecture takes.
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "illumos",
    "ios",
    "js",
    "linux",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
];
const KNOWN_ARCH: &[(&str, &[&str])] = &[
    ("386", &[]),
    ("amd64", &["v1", "v2", "v3", "v4"]),
    ("arm", &["v5", "v6", "v7", "v8"]),
    (
        "arm64",
        &[
            "v8", "v8.0", "v8.1", "v8.2", "v8.3", "v8.4", "v8.5", "v8.6", "v8.7", "v8.8", "v8.9",
            "v9", "v9.0", "v9.1", "v9.2", "v9.3", "v9.4", "v9.5",
        ],
    ),
    ("loong64", &[]),
    ("mips", &[]),
    ("mips64", &[]),
    ("mips64le", &[]),
    ("mipsle", &[]),
    ("ppc64", &[]),
    ("ppc64le", &["power8", "power9", "power10"]),
    ("riscv64", &["rva20u64", "rva22u64"]),
    ("s390x", &[]),
    ("wasm", &[]),
];

/// `os/arch[/variant]` with an operating system, architecture and variant BuildKit knows, in the normalized form
/// (`linux/amd64`, not `Linux/x86_64`), so that a typo fails here and not halfway through a build.
fn validate_platform(p: &str) -> Result<(), String> {
    let parts: Vec<&str> = p.split('/').collect();
    let shape = "expected `os/arch` or `os/arch/variant`, e.g. `linux/amd64` or `linux/arm64/v8`";
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|s| s.is_empty()) {
        return Err(format!("invalid platform `{p}`: {shape}"));
    }
    if !KNOWN_OS.contains(&parts[0]) {
        return Err(format!(
            "invalid platform `{p}`: unknown operating system `{}` (known: {})",
            parts[0],
            KNOWN_OS.join(", ")
        ));
    }
    let Some((_, variants)) = KNOWN_ARCH.iter().find(|(a, _)| *a == parts[1]) else {
        let known: Vec<&str> = KNOWN_ARCH.iter().map(|(a, _)| *a).collect();
        return Err(format!(
            "invalid platform `{p}`: unknown architecture `{}` (known: {})",
            parts[1],
            known.join(", ")
        ));
    };
    if let Some(variant) = parts.get(2)
        && !variants.contains(variant)
    {
        return Err(format!(
            "invalid platform `{p}`: unknown variant `{variant}` for `{}`{}",
            parts[1],
            if variants.is_empty() {
                " (it has none)".to_owned()
            } else {
                format!(" (known: {})", variants.join(", "))
            }
        ));
    }
    Ok(())
}

/// A cache to import: a tag in the service's repository (`cache-main`), or a whole reference
/// (`registry/repo:tag`).
pub fn validate_cache_ref(r: &str) -> Result<(), String> {
    if r.contains('/') || r.contains('@') {
        let (name, tag) = r.rsplit_once(':').ok_or_else(|| {
            format!("`{r}` is neither a tag nor a reference `registry/repository:tag`")
        })?;
        if name.is_empty() || tag.contains('/') {
            return Err(format!(
                "`{r}` is neither a tag nor a reference `registry/repository:tag`"
            ));
        }
        validate_tag(tag)
    } else {
        validate_tag(r)
    }
}

/// A tag the user asks for (requested tags and the cache tag): a valid tag that does not look like a content tag,
/// which buildopt alone writes.
fn validate_requested_tag(tag: &str) -> Result<(), String> {
    validate_tag(tag)?;
    if tag.starts_with(crate::registry::CONTENT_TAG_PREFIX) {
        return Err(format!(
            "tag `{tag}` starts with `{}`, which is reserved for buildopt's content tags; choose another tag",
            crate::registry::CONTENT_TAG_PREFIX
        ));
    }
    if tag.starts_with("sha256-") {
        return Err(format!(
            "tag `{tag}` starts with `sha256-`, the tag the OCI referrers fallback gives an image's attached artifacts (buildopt's input manifests among them); choose another tag"
        ));
    }
    Ok(())
}

fn validate_registry_url(url: &str) -> Result<(), String> {
    if url.contains("://") {
        return Err(format!(
            "`{url}` has a scheme; write the host only (e.g. `127.0.0.1:5000`) and set `insecure = true` for http"
        ));
    }
    let host = url.split('/').next().unwrap_or("");
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'));
    if !ok {
        return Err(format!(
            "invalid registry `{url}`: expected `host[:port][/path]`"
        ));
    }
    let path = &url[host.len()..];
    if !path.is_empty() {
        validate_repository(path.trim_start_matches('/'))
            .map_err(|m| format!("registry path: {m}"))?;
    }
    Ok(())
}

impl crate::error::Classify for ConfigError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Usage
    }
}

impl fmt::Display for EcrMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EcrMode::Auto => "auto",
            EcrMode::On => "true",
            EcrMode::Off => "false",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for ok in ["api", "team/api", "a.b_c__d---e/f0", "123456789012/x"] {
            assert!(validate_repository(ok).is_ok(), "{ok}");
        }
        for bad in ["", "API", "-x", "x-", "a//b", "a/", "a..b", "a___b", "a b"] {
            assert!(validate_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms() {
        for ok in [
            "linux/amd64",
            "linux/arm64/v8",
            "linux/arm/v7",
            "windows/amd64",
            "linux/riscv64",
        ] {
            assert!(validate_platform(ok).is_ok(), "{ok}");
        }
        for bad in [
            "linux/amd46",
            "Linux/amd64",
            "linux",
            "linux/arm/v9",
            "linux/amd64/",
            "linux/386/v1",
        ] {
            assert!(validate_platform(bad).is_err(), "{bad}");
        }
        assert!(
            validate_platform("linux/amd46")
                .unwrap_err()
                .contains("unknown architecture `amd46`")
        );
    }

    #[test]
    fn content_tag_prefix_is_reserved() {
        assert!(validate_requested_tag("bo-123").is_err());
        assert!(validate_requested_tag("boo").is_ok());
    }

    #[test]
    fn ecr_hosts() {
        assert!(is_ecr_host("123456789012.dkr.ecr.us-west-2.amazonaws.com"));
        assert!(is_ecr_host(
            "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com"
        ));
        assert!(!is_ecr_host("127.0.0.1:5000"));
        assert!(!is_ecr_host("dkr.ecr.us-west-2.amazonaws.com"));
    }

    /// `secrets` and `ssh` of one workspace with service `app`, read with `sets`.
    fn mounts(toml_extra: &str, sets: &[&str]) -> Result<(Vec<String>, Vec<String>), String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/Dockerfile"), "FROM scratch\n").unwrap();
        let text = format!("[services.app]\ncontext = \"app\"\n{toml_extra}");
        let sets: Vec<String> = sets.iter().map(|s| (*s).to_owned()).collect();
        let options = LoadOptions {
            sets: &sets,
            env: &|name| (name == "HOME").then(|| "/home/me".to_owned()),
            compose_file: None,
        };
        let ws = Workspace::parse_with(&text, Path::new("buildopt.toml"), dir.path(), &options)
            .map_err(|e| {
                e.to_string()
                    .replace(&dir.path().display().to_string(), "[ROOT]")
            })?;
        let shown = |v: Vec<String>| {
            v.into_iter()
                .map(|s| s.replace(&dir.path().display().to_string(), "[ROOT]"))
                .collect()
        };
        let svc = &ws.services[0];
        Ok((
            shown(svc.secrets.iter().map(ToString::to_string).collect()),
            shown(svc.ssh.iter().map(ToString::to_string).collect()),
        ))
    }

    #[test]
    fn secrets_and_ssh_keys_and_their_overrides() {
        let file = "secrets = [\"id=npm,src=${HOME}/.npmrc\", \"id=token,env=GH_TOKEN\"]\nssh = [\"default\", \"github=keys/deploy\"]\n";
        assert_eq!(
            mounts(file, &[]).unwrap(),
            (
                vec![
                    "id=npm,src=/home/me/.npmrc".into(),
                    "id=token,env=GH_TOKEN".into()
                ],
                vec!["default".into(), "github=[ROOT]/keys/deploy".into()]
            )
        );
        // A --set value is one entry (its commas are its own): it replaces the entry with its id, or is added.
        let (secrets, ssh) = mounts(
            file,
            &[
                "app.secrets=id=token,src=tok.txt",
                "*.secrets=id=pip,env=PIP",
                "app.ssh=github=/k1,/k2",
            ],
        )
        .unwrap();
        assert_eq!(
            secrets,
            [
                "id=npm,src=/home/me/.npmrc",
                "id=token,src=[ROOT]/tok.txt",
                "id=pip,env=PIP"
            ]
        );
        assert_eq!(ssh, ["default", "github=/k1,/k2"]);
        // An empty value empties the list; later entries add to it again.
        let (secrets, ssh) =
            mounts(file, &["app.secrets=", "app.ssh=", "app.ssh=default"]).unwrap();
        assert!(secrets.is_empty());
        assert_eq!(ssh, ["default"]);
        // Without the key in the file.
        assert_eq!(
            mounts("", &["app.secrets=id=a,env=A"]).unwrap().0,
            ["id=a,env=A"]
        );

        // Errors name the line and key, or the --set.
        assert_eq!(
            mounts("secrets = [\"id=a,env=A\",\n  \"id=a,src=x\"]\n", &[]).unwrap_err(),
            "buildopt.toml:4: `services.app.secrets`: id `a` is listed twice; remove one"
        );
        assert_eq!(
            mounts("ssh = [\"=x\"]\n", &[]).unwrap_err(),
            "buildopt.toml:3: `services.app.ssh`: ssh `=x`: no id; expected `default`, `ID` (the agent at $SSH_AUTH_SOCK) or `ID=SOCKET|KEYFILE[,KEYFILE]`"
        );
        assert_eq!(
            mounts("", &["app.secrets=src=x"]).unwrap_err(),
            "--set `app.secrets=src=x`: `services.app.secrets`: secret `src=x` has no id; expected `id=ID[,src=PATH]` or `id=ID,env=VAR` (buildx's --secret syntax)"
        );
        assert!(mounts("secrets = \"id=a\"\n", &[]).is_err(), "a list");
    }
}
