//! The one integration test binary.

/// Shared helpers: temporary workspaces and running the binary.
mod common;

/// Bake-level features: `FROM <service>`, named contexts, attestations.
mod bake;
/// Real builds through the real BuildKit into the real registry.
mod buildkit;
/// Made for CI: variables, overrides, branch caches, CI outputs.
mod ci;
/// CLI behaviour: config errors, exit codes, `plan`.
mod cli;
/// Compose files as the config: equivalence with `buildopt.toml`, `service:` contexts, located mistakes.
mod compose;
/// Context selection: Docker's `.dockerignore` semantics, golden entry lists.
mod context;
/// Deploying what changed to ECS, `gc` of content tags, ECR lifecycle policies (moto, the registry that deletes).
mod deploy;
/// Context selection against BuildKit's own Go code (hack/oracle), on random trees and ignore files.
mod differential;
/// What changed, said on any runner: the input manifest stored beside each image in the registry.
mod explain;
/// Build secrets and SSH agent forwarding, on both daemons: values reach the steps and nothing else.
mod features;
/// A fleet of builders: placement over both daemons, an unreachable builder, a daemon lost mid-build, per-builder TLS.
mod fleet;
/// Input digest stability and sensitivity, and the local index.
mod hash;
/// The registry as the source of truth, tags, ECR via moto, bad input.
mod pipeline;
/// Precise inputs: only what the Dockerfile reads is an input; mispredictions tag for the whole context.
mod precise;
/// The Dockerfile reader's context-path predictions against what both real daemons ask for (the corpus).
mod predict;
/// `prune` and `du` on the real BuildKit: what the defaults keep, `--all`'s confirmation, the dry run, filters.
mod prune;
/// Never a wrong skip, never a false report: races, faults (through loopback proxies) and odd input.
mod trust;
