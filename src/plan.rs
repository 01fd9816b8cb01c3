//! Deciding, per service, whether to build or skip, with a reason a person can check. The registry is the source
//! of truth (an image under the content tag of the inputs); local state only adds which files changed.

use serde::Serialize;

use crate::config::Service;
use crate::hash::{Digest, ServiceInputs};
use crate::registry::{RegistryClient, RegistryError, content_tag};
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

impl Decision {
    /// `build` or `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Build => "build",
            Decision::Skip => "skip",
        }
    }
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
    /// The image already built from these inputs (manifest digest), when the registry has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// What changed since the last local build, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
}

/// What the registry holds for one service's inputs.
#[derive(Debug, Clone, Default)]
pub struct RemoteState {
    /// Manifest digest under the content tag.
    pub image: Option<String>,
    /// Whether the cache ref exists (None when not asked).
    pub cache: Option<bool>,
}

/// Asks the registry for the content tag of `digest` (and the cache ref when `check_cache`).
pub async fn lookup_remote(
    registry: &RegistryClient,
    svc: &Service,
    digest: &Digest,
    check_cache: bool,
) -> Result<RemoteState, RegistryError> {
    let image = registry
        .lookup(&registry.reference(&svc.image, &content_tag(digest)))
        .await?;
    let cache = if check_cache && image.is_some() {
        Some(
            registry
                .lookup(&registry.reference(&svc.image, &svc.cache_tag))
                .await?
                .is_some(),
        )
    } else {
        None
    };
    Ok(RemoteState { image, cache })
}

/// Decides for one service. With `remote`, the registry decides; without, the local state does.
pub fn decide(
    svc: &Service,
    inputs: &ServiceInputs,
    remote: Option<&RemoteState>,
    store: &StateStore,
    force: bool,
) -> ServicePlan {
    let now = ServiceState::of(inputs);
    let local = store.load(&svc.name);
    let changes = local
        .as_ref()
        .filter(|old| old.digest != inputs.digest)
        .map(|old| Changes::between(old, &now));
    let since_local = changes
        .as_ref()
        .map(|c| format!("; since the last local build: {c}"))
        .unwrap_or_default();
    let short = inputs.digest.short();
    let (decision, reason) = match (force, remote) {
        (true, _) => (Decision::Build, "--force".to_owned()),
        (
            false,
            Some(RemoteState {
                image: Some(img),
                cache,
            }),
        ) => {
            if *cache == Some(false) {
                (
                    Decision::Build,
                    format!(
                        "image for inputs {short} exists but registry cache `{}` is missing",
                        svc.cache_tag
                    ),
                )
            } else {
                (
                    Decision::Skip,
                    format!("image for inputs {short} exists ({})", short_image(img)),
                )
            }
        }
        (false, Some(RemoteState { image: None, .. })) => (
            Decision::Build,
            format!("no image for inputs {short}{since_local}"),
        ),
        (false, None) => match &local {
            None => (Decision::Build, "no previous state".to_owned()),
            Some(old) if old.digest == inputs.digest => {
                (Decision::Skip, "inputs unchanged".to_owned())
            }
            Some(_) => (
                Decision::Build,
                changes
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
        },
    };
    ServicePlan {
        service: svc.name.clone(),
        digest: inputs.digest,
        decision,
        reason,
        image: remote.and_then(|r| r.image.clone()),
        changes,
    }
}

/// `sha256:0123456789ab`.
pub fn short_image(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// Registry lookups at once.
const LOOKUPS: usize = 8;

/// Decides for each service (with its inputs, dependencies first) from the registry, looking the content tags up
/// in parallel; the local state adds what changed.
pub async fn plan_remote(
    registry: &RegistryClient,
    services: &[&Service],
    inputs: &[ServiceInputs],
    store: &StateStore,
    check_cache: bool,
    force: bool,
) -> Result<Vec<ServicePlan>, RegistryError> {
    use futures::StreamExt;
    let remote = futures::stream::iter(services.iter().zip(inputs))
        .map(|(svc, inp)| lookup_remote(registry, svc, &inp.digest, check_cache))
        .buffered(LOOKUPS)
        .collect::<Vec<_>>()
        .await;
    services
        .iter()
        .zip(inputs)
        .zip(remote)
        .map(|((svc, inp), r)| Ok(decide(svc, inp, Some(&r?), store, force)))
        .collect()
}
