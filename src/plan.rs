//! Deciding, per service, whether to build or skip, with a reason a person can check.

use serde::Serialize;

use crate::config::Service;
use crate::hash::{Digest, ServiceInputs};
use crate::state::{Changes, ServiceState, StateStore};

/// Build or skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The inputs are new: build.
    Build,
    /// An image for exactly these inputs exists: skip.
    Skip,
}

/// The decision for one service.
#[derive(Debug, Clone, Serialize)]
pub struct ServicePlan {
    /// Service name.
    pub service: String,
    /// Input digest.
    pub digest: Digest,
    /// Build or skip.
    pub decision: Decision,
    /// Why, in words.
    pub reason: String,
    /// What changed since the last local build, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
}

/// Decides against the local state only: skip when the last build recorded here had the same digest.
pub fn plan_local(
    services: &[&Service],
    inputs: &[ServiceInputs],
    store: &StateStore,
) -> Vec<ServicePlan> {
    services
        .iter()
        .zip(inputs)
        .map(|(svc, inp)| {
            let now = ServiceState::of(inp);
            let (decision, reason, changes) = match store.load(&svc.name) {
                None => (Decision::Build, "no previous state".to_owned(), None),
                Some(old) if old.digest == inp.digest => {
                    (Decision::Skip, "inputs unchanged".to_owned(), None)
                }
                Some(old) => {
                    let changes = Changes::between(&old, &now);
                    (Decision::Build, changes.to_string(), Some(changes))
                }
            };
            ServicePlan {
                service: svc.name.clone(),
                digest: inp.digest,
                decision,
                reason,
                changes,
            }
        })
        .collect()
}
