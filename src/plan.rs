//! Deciding, per service, whether to build or skip, with a reason a person can check. The registry is the source
//! of truth (a complete image under the content tag of the inputs). What changed is said from the input manifest
//! of the image the first requested tag points at (so also on a fresh runner), else from the local state.

use std::sync::Arc;

use serde::Serialize;

use crate::config::Service;
use crate::digest::Digest;
use crate::hash::{Reads, ServiceInputs};
use crate::registry::inputs::{Previous, previous_or_none};
use crate::registry::verify::{Found, Verifier};
use crate::registry::{RegistryError, content_tag};
use crate::state::{Changes, ServiceState, StateStore};

/// Build or skip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "lowercase")]
pub(crate) enum Decision {
    /// The inputs are new, or their image is unusable: build.
    Build,
    /// A complete image for exactly these inputs exists: skip, and point the requested tags at it.
    Skip {
        /// Its manifest (or index) digest.
        image: String,
    },
    /// `plan --local`: the inputs are those of the last local build (the registry was not asked).
    #[serde(rename = "skip")]
    Unchanged,
}

impl Decision {
    /// `build` or `skip`.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Decision::Build => "build",
            Decision::Skip { .. } | Decision::Unchanged => "skip",
        }
    }
}

/// The decision for one service.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServicePlan {
    /// Service name.
    pub(crate) service: String,
    /// Input digest.
    pub(crate) digest: Digest,
    /// Build or skip.
    #[serde(flatten)]
    pub(crate) decision: Decision,
    /// Why, in words.
    pub(crate) reason: String,
    /// What changed (since what: `since`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) changes: Option<Changes>,
    /// What the inputs were compared with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) since: Option<Since>,
    /// What the input digest covers.
    pub(crate) reads: Reads,
    /// Whether a skipped service still needs a cache-only solve because the registry lacks its cache ref.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) export_cache: bool,
}

/// What the current inputs were compared with to say what changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub(crate) enum Since {
    /// The input manifest stored beside the image a requested tag points at.
    Registry {
        /// The tag.
        tag: String,
        /// The image it points at.
        image: String,
    },
    /// The inputs of the last build in this workspace (`.build-cache/state/`).
    Local,
}

/// What the registry holds for one service's inputs.
#[derive(Debug, Clone)]
pub(crate) struct RemoteState {
    /// What the content tag of the input digest holds.
    pub(crate) image: Found,
    /// When that is absent and the input digest covers less than the whole context: what the content tag of the
    /// whole context holds (a build BuildKit asked for more than predicted was tagged under it).
    pub(crate) context_image: Option<Found>,
    /// Whether the cache ref exists (None when not asked).
    pub(crate) cache: Option<bool>,
}

/// Asks the registry for the content tag of the inputs, checks the image behind it (falling back to the whole
/// context's content tag), and (when `check_cache`) whether the cache ref exists.
pub(crate) async fn lookup_remote(
    verifier: &Verifier,
    svc: &Service,
    inputs: &ServiceInputs,
    check_cache: bool,
) -> Result<RemoteState, RegistryError> {
    // Whether the cache tag exists matters only when an image for these inputs does; asked at the same time as
    // the content tag rather than after it, it costs no round trip on the way to a skip (a wasted request for a
    // service that builds).
    let client = verifier.client();
    let cache_tag = client.reference(&svc.image, &svc.cache_tag);
    let tag = content_tag(&inputs.digest);
    let (image, cache) = futures::join!(verifier.tag(&svc.image, &tag), async {
        match check_cache {
            true => Some(client.lookup(&cache_tag).await),
            false => None,
        }
    });
    let image = image?;
    let context_image = if image == Found::Absent && inputs.context_digest != inputs.digest {
        Some(
            verifier
                .tag(&svc.image, &content_tag(&inputs.context_digest))
                .await?,
        )
    } else {
        None
    };
    let usable = |f: &Found| matches!(f, Found::Usable { .. });
    let cache = match cache {
        Some(found) if usable(&image) || context_image.as_ref().is_some_and(usable) => {
            Some(found?.is_some())
        }
        _ => None,
    };
    Ok(RemoteState {
        image,
        context_image,
        cache,
    })
}

impl RemoteState {
    /// Whether the service is to be built because the registry has no usable image for its inputs: then what
    /// changed since the image of its first requested tag is worth a look.
    fn no_image(&self) -> bool {
        let usable = |f: &Found| matches!(f, Found::Usable { .. });
        !usable(&self.image) && !self.context_image.as_ref().is_some_and(usable)
    }
}

/// Decides for one service. With `remote`, the registry decides; without, the local state does. `previous` is the
/// input manifest of the image the first requested tag points at, when it was read: what changed is said since
/// that image, else since the last local build.
pub(crate) fn decide(
    svc: &Service,
    inputs: &ServiceInputs,
    remote: Option<&RemoteState>,
    previous: Option<&Previous>,
    store: &StateStore,
    force: bool,
) -> ServicePlan {
    // The local state is read (and the current one built) only when it is not already these inputs': that is
    // 9 MB of JSON for 50 services of 2,000 files (issue 12).
    let current = store.is_current(&svc.name, &inputs.digest, &inputs.context_digest);
    let local = if current { None } else { store.load(&svc.name) };
    let changes = local
        .as_ref()
        .filter(|old| old.context_digest != inputs.context_digest || old.digest != inputs.digest)
        .map(|old| Changes::between(old, &ServiceState::of(inputs)));
    let since_local = changes
        .as_ref()
        .map(|c| format!("; since the last local build: {}", explain(c, svc, inputs)))
        .unwrap_or_default();
    // A record made with other digest keys compares with nothing: as if there were none.
    let recorded = previous.and_then(|p| {
        let changes = if p.record.same_inputs(inputs) {
            Changes::default()
        } else {
            p.record.changes(inputs)?
        };
        Some((p, changes))
    });
    let since_recorded = recorded.as_ref().map(|(p, c)| {
        let what = format!("{} ({})", p.tag, short_image(&p.image));
        if c.is_empty() {
            format!("; {what} was built from these same inputs")
        } else {
            format!("; since {what}: {}", explain(c, svc, inputs))
        }
    });
    let since_any = since_recorded.as_deref().unwrap_or(&since_local);
    let short = inputs.digest.short();
    let mut export_cache = false;
    let skip = |digest: &String, what: String| {
        (
            Decision::Skip {
                image: digest.clone(),
            },
            format!("{what} ({}){since_local}", short_image(digest)),
        )
    };
    let (decision, reason) = match (force, remote) {
        (true, _) => (Decision::Build, "--force".to_owned()),
        (false, Some(remote)) => match (&remote.image, &remote.context_image) {
            (Found::Usable { digest }, _) | (_, Some(Found::Usable { digest }))
                if remote.cache == Some(false) =>
            {
                export_cache = true;
                skip(
                    digest,
                    format!(
                        "image for inputs {short} exists, but its registry cache `{}` does not (was its last export refused?): the cache is exported without rebuilding the image",
                        svc.cache_tag
                    ),
                )
            }
            (Found::Usable { digest }, _) => {
                skip(digest, format!("image for inputs {short} exists"))
            }
            (_, Some(Found::Usable { digest })) => skip(
                digest,
                format!(
                    "image for the whole context {} exists (an earlier build read more than the Dockerfile shows, so it was tagged for the whole context)",
                    inputs.context_digest.short()
                ),
            ),
            (Found::Unusable { digest, reason }, _) => (
                Decision::Build,
                format!(
                    "the image under the content tag of inputs {short}{} cannot be used: {reason}{}",
                    digest
                        .as_deref()
                        .map(|d| format!(" ({})", short_image(d)))
                        .unwrap_or_default(),
                    since_recorded.as_deref().unwrap_or_default()
                ),
            ),
            (Found::Absent, _) => (
                Decision::Build,
                format!("no image for inputs {short}{since_any}"),
            ),
        },
        (false, None) => match &local {
            None if current => (
                Decision::Unchanged,
                "inputs unchanged since the last local build".to_owned(),
            ),
            None => (Decision::Build, "no previous state".to_owned()),
            Some(old) if old.digest == inputs.digest => (
                Decision::Unchanged,
                match &changes {
                    Some(c) => format!(
                        "the inputs the build reads are those of the last local build; {}",
                        explain(c, svc, inputs)
                    ),
                    None => "inputs unchanged since the last local build".to_owned(),
                },
            ),
            Some(_) => (
                Decision::Build,
                changes
                    .as_ref()
                    .map(|c| explain(c, svc, inputs))
                    .unwrap_or_default(),
            ),
        },
    };
    let (changes, since) = match recorded {
        Some((p, c)) => (
            (!c.is_empty()).then_some(c),
            Some(Since::Registry {
                tag: p.tag.clone(),
                image: p.image.clone(),
            }),
        ),
        None => {
            let since = changes.is_some().then_some(Since::Local);
            (changes, since)
        }
    };
    ServicePlan {
        service: svc.name.clone(),
        digest: inputs.digest,
        decision,
        reason,
        changes,
        since,
        reads: inputs.reads.clone(),
        export_cache,
    }
}

/// What changed, file by file saying whether the build reads it and, when it does, which instruction: `README.md
/// changed; the build does not read it`, `src/lib.rs changed; read by COPY ${SRC_DIR} ./src in stage build (line
/// 3)`.
fn explain(changes: &Changes, svc: &Service, inputs: &ServiceInputs) -> String {
    const SHOWN: usize = 5;
    // The Dockerfile as a context file is said once, as the Dockerfile.
    let dockerfile = svc
        .dockerfile
        .strip_prefix(&svc.context)
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let files: Vec<&String> = changes
        .files
        .iter()
        .filter(|f| !(changes.dockerfile && Some(f.as_str()) == dockerfile.as_deref()))
        .collect();
    let read: std::collections::HashSet<String> = inputs
        .read
        .iter()
        .map(|&i| inputs.entries[i].display_path())
        .collect();
    let mut parts: Vec<String> = files
        .iter()
        .take(SHOWN)
        .map(|f| {
            let readers = inputs
                .prediction
                .as_ref()
                .map(|p| p.explain(f.trim_end_matches('/')))
                .unwrap_or_default();
            match (read.contains(*f), readers.first()) {
                (false, _) if matches!(inputs.reads, Reads::Paths { .. } | Reads::Nothing) => {
                    format!("{f} changed; the build does not read it")
                }
                (_, Some(r)) => format!("{f} changed; read by {r}"),
                _ => format!("{f} changed"),
            }
        })
        .collect();
    if files.len() > SHOWN {
        parts.push(format!("{} more files changed", files.len() - SHOWN));
    }
    let rest = Changes {
        files: Vec::new(),
        ..changes.clone()
    };
    if !rest.is_empty() {
        parts.push(rest.to_string());
    }
    if parts.is_empty() {
        parts.push("inputs changed".to_owned());
    }
    parts.join("; ")
}

/// `sha256:0123456789ab`.
pub(crate) fn short_image(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// Services whose registry lookups run at once. Against a registry 20 ms away, 50 services skip in 0.51 s with 16
/// and 0.65 s with 8 (`hack/latency-proxy 10`); against the loopback registry the two are the same.
const LOOKUPS: usize = 16;

/// Decides for each service from the registry as its inputs arrive (`inputs`: a service's index in `services` and
/// its inputs, dependencies before dependents), checking the content tags of several services at once. For each
/// service to be built, the input manifest of the image its first requested tag points at says what changed (read
/// right after its own lookups, in parallel with the other services'); the local state when the registry has none.
/// A service whose inputs never arrive (its hashing failed) has no plan; the first error is that of the first
/// service in order.
pub(crate) async fn plan_remote(
    verifier: &Verifier,
    services: &[&Service],
    inputs: impl futures::Stream<Item = (usize, Arc<ServiceInputs>)>,
    store: &StateStore,
    check_cache: bool,
    force: bool,
) -> Result<Vec<Option<ServicePlan>>, RegistryError> {
    use futures::StreamExt;
    let mut decided: Vec<(usize, Result<ServicePlan, RegistryError>)> = inputs
        .map(|(i, inp)| async move {
            let svc = services[i];
            let plan = async {
                let remote = lookup_remote(verifier, svc, &inp, check_cache).await?;
                let previous = if !force && remote.no_image() {
                    previous_or_none(verifier.client(), svc).await
                } else {
                    None
                };
                Ok(decide(
                    svc,
                    &inp,
                    Some(&remote),
                    previous.as_ref(),
                    store,
                    force,
                ))
            };
            (i, plan.await)
        })
        .buffer_unordered(LOOKUPS)
        .collect()
        .await;
    decided.sort_by_key(|(i, _)| *i);
    let mut plans: Vec<Option<ServicePlan>> = services.iter().map(|_| None).collect();
    for (i, plan) in decided {
        plans[i] = Some(plan?);
    }
    Ok(plans)
}
