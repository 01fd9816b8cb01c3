//! buildopt: build and push the container images of a multi-service repository through BuildKit, skipping every
//! service whose inputs did not change.
#![warn(missing_docs)]

pub(crate) mod auth;
pub(crate) mod aws;
pub(crate) mod buildkit;
pub(crate) mod ci;
pub mod cli;
pub(crate) mod commands;
pub mod config;
pub mod context;
pub(crate) mod deploy;
pub mod digest;
pub(crate) mod dockerfile;
pub mod error;
pub mod hash;
pub mod index;
pub(crate) mod plan;
pub(crate) mod printer;
pub(crate) mod progress;
pub(crate) mod proto;
pub(crate) mod record;
pub(crate) mod registry;
pub(crate) mod report;
pub(crate) mod session;
pub mod state;

/// The Dockerfile reader, visible to the integration tests only (`tests/it/predict.rs` checks it against the real
/// daemons); not a stable interface.
#[doc(hidden)]
pub mod for_tests {
    pub use crate::dockerfile::{
        COMPATIBLE_FRONTENDS, ContextPath, Fallback, FallbackReason, PredictOptions, Prediction,
        Reader, Reads, predict, predict_with,
    };
}
