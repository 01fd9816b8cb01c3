//! Command-line arguments (clap derive only; no logic).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::buildkit::dockerfile::NetworkMode;
pub use crate::progress::ProgressMode;

/// Build and push the container images of a multi-service repository, skipping what did not change.
#[derive(Debug, Parser)]
#[command(name = "buildopt", version, about, propagate_version = true)]
pub struct Cli {
    /// Options for every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options for every command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More diagnostics (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Print only results and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// The config file [default: buildopt.toml in the current directory or a parent].
    #[arg(long, global = true, env = "BUILDOPT_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// A compose file (compose.yaml, docker-compose.yml) whose services with a `build:` to build: alone, or with
    /// --config in place of the file's `[compose] file` [default: buildopt.toml, else a compose file, in the current
    /// directory or the nearest parent that has one].
    #[arg(
        long,
        short = 'f',
        global = true,
        env = "BUILDOPT_COMPOSE_FILE",
        value_name = "PATH"
    )]
    pub file: Option<PathBuf>,
    /// How to show build progress.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto, env = "BUILDOPT_PROGRESS")]
    pub progress: ProgressMode,
    /// Override a service key as bake does: SERVICE.KEY=VALUE, '*.KEY=VALUE' for every service, or
    /// SERVICE.build_args.NAME=VALUE; lists (tags, platforms, cache_from, depends_on) are comma-separated; a `secrets`
    /// or `ssh` value is one entry, which replaces the entry with its id or is added (empty: none). Repeatable;
    /// checked like the file; `;`-separated in the environment.
    #[arg(
        long = "set",
        global = true,
        value_name = "SERVICE.KEY=VALUE",
        env = "BUILDOPT_SET",
        value_delimiter = ';'
    )]
    pub sets: Vec<String>,
    /// SLSA provenance for every service: `mode=min`, `mode=max`, `true` (BuildKit's default) or `false`; the same
    /// as --set '*.attest.provenance=VALUE' (a --set for one service still wins).
    #[arg(long, global = true, env = "BUILDOPT_PROVENANCE", value_name = "VALUE")]
    pub provenance: Option<String>,
    /// An SBOM for every service: `true`, `false` or `generator=IMAGE`; the same as --set '*.attest.sbom=VALUE'.
    #[arg(long, global = true, env = "BUILDOPT_SBOM", value_name = "VALUE")]
    pub sbom: Option<String>,
}

impl GlobalArgs {
    /// The `--set` overrides, `--provenance` and `--sbom` first (as `*.attest.*`), so that a --set naming a service
    /// overrides them.
    pub fn overrides(&self) -> Vec<String> {
        let attest = [("provenance", &self.provenance), ("sbom", &self.sbom)];
        attest
            .into_iter()
            .filter_map(|(key, value)| value.as_ref().map(|v| format!("*.attest.{key}={v}")))
            .chain(self.sets.iter().cloned())
            .collect()
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the input digest of services.
    Hash(HashArgs),
    /// Show what a build would do for each service, and why.
    Plan(PlanArgs),
    /// Build services with BuildKit and push their images.
    Build(BuildArgs),
    /// Check that BuildKit is reachable and show what it can do.
    Doctor(DaemonArgs),
    /// Show BuildKit's cache disk usage.
    Du(DuArgs),
    /// Remove unused BuildKit cache: by default records unused for 48h, while the cache is over 2GB.
    #[command(
        long_about = "Remove BuildKit cache records.\n\nWithout flags, prune is selective, as BuildKit's own garbage \
    collection: it removes only records no build is using that were not used for --keep-duration, least recently used \
    first, and only while the cache is larger than --keep-storage; BuildKit's internal and frontend records and records \
    shared with images stay. --all removes every unused record and asks first."
    )]
    Prune(PruneArgs),
    /// Deploy what the requested tags point to now to ECS (`[services.X.deploy.ecs]`).
    #[command(
        long_about = "Deploy to ECS.\n\nFor each service with a [services.X.deploy.ecs] table (all of them, or the ones named), \
    resolves the image its first requested tag (or --tag) points to now, registers a new revision of the ECS service's \
    current task definition with the container's image set to REGISTRY/IMAGE@DIGEST (everything else copied), and \
    updates the service to it. A service whose task definition already has that image is left as it is. Each service \
    is deployed on its own: one failing leaves the others alone."
    )]
    Deploy(DeployArgs),
    /// Remove old content tags (`bo-...`) from the registry, keeping the newest N per repository and every image
    /// another tag points to.
    Gc(GcArgs),
    /// Apply (or show) the ECR lifecycle policy of `[registry] ecr_lifecycle` on existing repositories.
    EcrLifecycle(EcrLifecycleArgs),
}

/// Where BuildKit is and how to reach it.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// BuildKit address: unix:///path, tcp://host:port or docker://[/path/to/docker.sock]; repeat it (or separate
    /// addresses with commas, as in BUILDKIT_HOST) for a fleet of builders, each service going to its own
    /// [default: the builders of `[buildkit]` in the config, else unix:///run/buildkit/buildkitd.sock, else the
    /// rootless socket].
    #[arg(
        long,
        env = "BUILDKIT_HOST",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub addr: Vec<String>,
    /// CA certificate for tcp:// with TLS (for every tcp:// builder without TLS settings of its own).
    #[arg(long, value_name = "PATH")]
    pub tlscacert: Option<PathBuf>,
    /// Client certificate for mTLS.
    #[arg(long, value_name = "PATH", requires = "tlskey")]
    pub tlscert: Option<PathBuf>,
    /// Client key for mTLS.
    #[arg(long, value_name = "PATH", requires = "tlscert")]
    pub tlskey: Option<PathBuf>,
    /// Server name to verify in the daemon's certificate.
    #[arg(long, value_name = "NAME")]
    pub tlsservername: Option<String>,
}

/// `buildopt du`.
#[derive(Debug, Args)]
pub struct DuArgs {
    /// The daemon.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Only records matching FILTER, a containerd-style filter passed to BuildKit as buildctl passes it
    /// (`type==source.local`, `description~=apt`, `id==ID`, `inuse`, `private`); comma-separated conditions must
    /// all hold; repeat the flag for records matching any.
    #[arg(long, value_name = "FILTER")]
    pub filter: Vec<String>,
    /// Show whole descriptions [default: cut to the terminal's width when stdout is a terminal; -v also shows them
    /// whole].
    #[arg(long)]
    pub no_trunc: bool,
}

/// `buildopt prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The daemon.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Keep records a build used within this long (e.g. 24h, 90m, 7d; 0 keeps none for their age)
    /// [default: 48h, as BuildKit's GC keeps even its most easily rebuilt records; none with --all].
    #[arg(long, value_name = "DURATION")]
    pub keep_duration: Option<String>,
    /// Keep this much cache, removing the least recently used records first (e.g. 10GB, 512MiB; 0 for no budget)
    /// [default: 2GB, BuildKit's reserved space when it cannot size its disk; none with --all].
    #[arg(long, value_name = "SIZE")]
    pub keep_storage: Option<String>,
    /// Only records matching FILTER, a containerd-style filter that BuildKit evaluates as for `du`
    /// (`type==source.local`, `description~=apt`, `id==ID`, `private`); comma-separated conditions must all hold;
    /// repeat the flag for records matching any.
    #[arg(long, value_name = "FILTER")]
    pub filter: Vec<String>,
    /// Remove every unused record however recent, BuildKit's internal and frontend records and those shared with
    /// images too; asks first on a terminal, and needs --yes elsewhere.
    #[arg(long)]
    pub all: bool,
    /// Do not ask before --all.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// List what would be removed and remove nothing (computed from the disk usage: BuildKit has no dry run).
    #[arg(long)]
    pub dry_run: bool,
}

/// `--cache-to` / `--cache-from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// The registry cache under each service's `cache_tag`.
    Registry,
    /// No cache.
    None,
}

/// `buildopt build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Services to build [default: all]; their dependencies are included.
    pub services: Vec<String>,
    /// The daemon.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// An extra tag for every selected service (repeatable), e.g. the commit: --tag "$GITHUB_SHA"
    /// (comma-separated in the environment).
    #[arg(
        long = "tag",
        value_name = "TAG",
        env = "BUILDOPT_TAG",
        value_delimiter = ','
    )]
    pub tags: Vec<String>,
    /// Push images to the registry.
    #[arg(long, overrides_with = "no_push")]
    pub push: bool,
    /// Do not push (the image stays in the daemon's store).
    #[arg(long, overrides_with = "push")]
    pub no_push: bool,
    /// Also write each service's result here, in buildx's syntax: type=local,dest=DIR | type=tar,dest=FILE |
    /// type=oci,dest=FILE | type=docker,dest=FILE (repeatable; `{service}` in dest is the service name, needed when
    /// several services are built). A skipped service's output is made from its existing image.
    #[arg(long, short = 'o', value_name = "SPEC")]
    pub output: Vec<String>,
    /// Also load each image into the local Docker Engine (the builder's when it is docker://, else DOCKER_HOST),
    /// under its requested tags.
    #[arg(long)]
    pub load: bool,
    /// Export the build cache to the registry under each service's `cache_to` tag (when pushing), or not.
    #[arg(long, value_enum, default_value_t = CacheMode::Registry, env = "BUILDOPT_CACHE_TO")]
    pub cache_to: CacheMode,
    /// Import caches: `registry` (each service's `cache_from`, default its cache tag), `none`, or a cache to try
    /// first (a tag in each service's repository, e.g. `cache-main`, or a whole reference); repeatable; all that
    /// exist are imported (comma-separated in the environment).
    #[arg(
        long,
        value_name = "registry|none|REF",
        default_value = "registry",
        env = "BUILDOPT_CACHE_FROM",
        value_delimiter = ','
    )]
    pub cache_from: Vec<String>,
    /// Network for RUN steps [default: `[buildkit] network` in the config, else the daemon's default].
    #[arg(long, value_enum, env = "BUILDOPT_NETWORK")]
    pub network: Option<NetworkMode>,
    /// Services built at once.
    #[arg(long, short = 'j', default_value_t = 4, env = "BUILDOPT_JOBS", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Build even when an image for the same inputs exists.
    #[arg(long)]
    pub force: bool,
    /// Run every step of the services that are built, ignoring BuildKit's cache (with --force: also those whose
    /// image exists, e.g. after a secret changed, which neither the input digest nor BuildKit's cache sees).
    #[arg(long)]
    pub no_cache: bool,
    /// A secret the builds may mount (`RUN --mount=type=secret,id=ID`), as buildx takes it: `id=ID,src=PATH` (a
    /// file), `id=ID,env=VAR` (a variable), or `id=ID` (variable ID if set, else file ID); repeatable; for every
    /// selected service, over its own `secrets` with the same id. The value is read when a step asks for it and is
    /// not an input.
    #[arg(long = "secret", value_name = "id=ID[,src=PATH|,env=VAR]")]
    pub secrets: Vec<String>,
    /// An SSH agent the builds may forward (`RUN --mount=type=ssh[,id=ID]`), as buildx takes it: `default` (the
    /// agent at $SSH_AUTH_SOCK), `ID=SOCKET`, or `ID=KEYFILE[,KEYFILE]` (served by an ssh-agent buildopt starts);
    /// repeatable; for every selected service, over its own `ssh` with the same id.
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET|KEYFILE[,KEYFILE]]")]
    pub ssh: Vec<String>,
    /// Show the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Write per-service results as JSON to PATH (keys like buildx's metadata file where they overlap).
    #[arg(long, value_name = "PATH", env = "BUILDOPT_METADATA_FILE")]
    pub metadata_file: Option<PathBuf>,
    /// ECR API endpoint [default: `[registry] ecr_endpoint`, else AWS_ENDPOINT_URL_ECR, AWS_ENDPOINT_URL, the
    /// profile's, AWS's].
    #[arg(long, value_name = "URL")]
    pub ecr_endpoint: Option<String>,
    /// Deploy the services whose image changed in this run to ECS (`[services.X.deploy.ecs]`); without it, the
    /// summary says which would be deployed.
    #[arg(long, conflicts_with = "no_push")]
    pub deploy: bool,
    /// With --deploy: wait until each updated ECS service is stable.
    #[arg(long, requires = "deploy")]
    pub deploy_wait: bool,
    /// How long --deploy-wait waits (e.g. 10m, 1h) [default: 10m].
    #[arg(long, value_name = "DURATION", requires = "deploy_wait")]
    pub deploy_timeout: Option<String>,
}

/// `buildopt deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Services to deploy [default: every service with a deploy table]; their dependencies are not included.
    pub services: Vec<String>,
    /// Deploy what TAG points to [default: each service's first requested tag].
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Wait until each updated ECS service is stable.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 10m, 1h) [default: 10m].
    #[arg(long, value_name = "DURATION", requires = "wait")]
    pub timeout: Option<String>,
    /// Say what would be deployed, and deploy nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// ECR API endpoint [default: `[registry] ecr_endpoint`, else AWS_ENDPOINT_URL_ECR, AWS_ENDPOINT_URL, the
    /// profile's, AWS's].
    #[arg(long, value_name = "URL")]
    pub ecr_endpoint: Option<String>,
}

/// `buildopt gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Services whose repositories to clean [default: all].
    pub services: Vec<String>,
    /// Content tags to keep per repository, newest first (by the image's creation time; on ECR by push time).
    #[arg(long, value_name = "N")]
    pub keep: usize,
    /// Remove only content tags whose image is older than this (e.g. 30d, 12h); images of unknown age stay.
    #[arg(long, value_name = "DURATION")]
    pub older_than: Option<String>,
    /// List what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// ECR API endpoint [default: `[registry] ecr_endpoint`, else AWS_ENDPOINT_URL_ECR, AWS_ENDPOINT_URL, the
    /// profile's, AWS's].
    #[arg(long, value_name = "URL")]
    pub ecr_endpoint: Option<String>,
}

/// `buildopt ecr-lifecycle`.
#[derive(Debug, Args)]
pub struct EcrLifecycleArgs {
    /// Services whose repositories to set [default: all].
    pub services: Vec<String>,
    /// Show each repository's policy and buildopt's, and change nothing.
    #[arg(long)]
    pub show: bool,
    /// ECR API endpoint [default: `[registry] ecr_endpoint`, else AWS_ENDPOINT_URL_ECR, AWS_ENDPOINT_URL, the
    /// profile's, AWS's].
    #[arg(long, value_name = "URL")]
    pub ecr_endpoint: Option<String>,
}

/// `buildopt hash`.
#[derive(Debug, Args)]
pub struct HashArgs {
    /// Services to hash [default: all].
    pub services: Vec<String>,
    /// Print the entries SERVICE's input digest covers, in send order, instead: the context paths its Dockerfile
    /// reads (directories end with `/`; names with control characters, quotes, backslashes or invalid UTF-8 are
    /// quoted).
    #[arg(long, value_name = "SERVICE", conflicts_with = "services")]
    pub list: Option<String>,
    /// With --list: the whole context after `.dockerignore` (what a `COPY . .` build reads).
    #[arg(long, requires = "list")]
    pub context: bool,
}

/// `buildopt plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Services to plan [default: all]; their dependencies are included.
    pub services: Vec<String>,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
    /// Decide from the local state only, without asking the registry.
    #[arg(long)]
    pub local: bool,
    /// Whether the registry cache must exist too for a skip (as `build` exports it by default).
    #[arg(long, value_enum, default_value_t = CacheMode::Registry, env = "BUILDOPT_CACHE_TO")]
    pub cache_to: CacheMode,
    /// ECR API endpoint [default: `[registry] ecr_endpoint`, else AWS_ENDPOINT_URL_ECR, AWS_ENDPOINT_URL, the
    /// profile's, AWS's].
    #[arg(long, value_name = "URL")]
    pub ecr_endpoint: Option<String>,
}
