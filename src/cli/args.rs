//! Command-line arguments (clap derive only; no logic).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// How to show build progress.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A live view on a terminal, plain lines otherwise.
    Auto,
    /// A live view.
    Tty,
    /// Plain timestamped lines.
    Plain,
    /// One JSON object per line on stdout.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the input digest of services.
    Hash(HashArgs),
    /// Show what a build would do for each service, and why.
    Plan(PlanArgs),
}

/// `buildopt hash`.
#[derive(Debug, Args)]
pub struct HashArgs {
    /// Services to hash [default: all].
    pub services: Vec<String>,
    /// Print every entry of SERVICE's context in send order instead (directories end with `/`).
    #[arg(long, value_name = "SERVICE", conflicts_with = "services")]
    pub list: Option<String>,
}

/// `buildopt plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Services to plan [default: all]; their dependencies are included.
    pub services: Vec<String>,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
}
