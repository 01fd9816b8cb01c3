//! The one integration test binary.

/// Shared helpers: temporary workspaces and running the binary.
mod common;

/// Context selection: Docker's `.dockerignore` semantics, golden entry lists.
mod context;
/// Input digest stability and sensitivity, and the local index.
mod hash;
/// CLI behaviour: config errors, exit codes, `plan`.
mod cli;
