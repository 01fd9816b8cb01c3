//! buildopt: build and push the container images of a multi-service repository through BuildKit, skipping every
//! service whose inputs did not change.
#![warn(missing_docs)]

pub mod auth;
pub mod buildkit;
pub mod cli;
pub mod commands;
pub mod config;
pub mod context;
pub mod hash;
pub mod index;
pub mod plan;
pub mod printer;
pub mod progress;
pub mod registry;
pub mod session;
pub mod state;
