//! Tag moves: the content tag of a fresh build (first writer wins), then the requested tags. A tag is moved by
//! copying the image's manifest (no blob moves). Every attempted move is written in a [`TagLedger`] before it is
//! sent, so the final report can read exactly those tags back from the registry, also after a failure or an
//! interrupt, and say which moved and which did not.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::verify::{Found, Verifier};
use super::{Manifest, RegistryClient, RegistryError};

/// Whose image a content tag holds after a build tried to claim it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The image just built.
    Ours,
    /// Another build of the same inputs got there first; this is its (complete) image.
    Theirs {
        /// Its manifest digest.
        image: String,
    },
}

/// Why the content tag could not be claimed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClaimError {
    /// A registry request failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The image BuildKit reported is not in the registry.
    #[error("BuildKit reported pushing {image}, but the registry does not have it")]
    NotPushed {
        /// Its digest.
        image: String,
    },
    /// The tag ended up on an image that cannot be pulled.
    #[error("{reference} was overwritten meanwhile with an image that cannot be pulled: {reason}")]
    Overwritten {
        /// The content tag.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Puts the content tag `tag` of `repo` on `built`, unless another build of the same inputs already tagged a
/// complete image there: then that image wins and is returned, so that every runner ends up promoting the same one.
/// The tag is read back after the write, which catches a concurrent writer in the same window. With `replace` (a
/// forced build, e.g. to pick up a newer base image), the fresh image replaces whatever the tag held.
pub(crate) async fn claim_content_tag(
    verifier: &Verifier,
    repo: &str,
    tag: &str,
    built: &str,
    replace: bool,
) -> Result<Claim, ClaimError> {
    let client = verifier.client();
    if !replace && let Found::Usable { digest } = verifier.tag(repo, tag).await? {
        return Ok(if digest == built {
            Claim::Ours
        } else {
            Claim::Theirs { image: digest }
        });
    }
    let manifest = client
        .manifest(&client.by_digest(repo, built))
        .await?
        .ok_or_else(|| ClaimError::NotPushed {
            image: built.to_owned(),
        })?;
    let reference = client.reference(repo, tag);
    client.put_manifest(&reference, &manifest).await?;
    match client.lookup(&reference).await? {
        Some(d) if d == built => Ok(Claim::Ours),
        Some(other) => match verifier.digest(repo, &other).await {
            Ok(()) => Ok(Claim::Theirs { image: other }),
            Err(reason) => Err(ClaimError::Overwritten { reference, reason }),
        },
        // Deleted right after the write: ours is still the image for these inputs; the next run re-tags it.
        None => Ok(Claim::Ours),
    }
}

/// What happened to one requested tag.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub(crate) enum TagOutcome {
    /// It already pointed at the image.
    Unchanged,
    /// It was moved to the image.
    Moved {
        /// What it pointed at before (None: it did not exist).
        from: Option<String>,
    },
    /// The move failed.
    Failed {
        /// Why.
        error: String,
    },
    /// Not tried, because an earlier tag of the service failed or the run stopped.
    NotAttempted,
}

/// One requested tag and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct TagMove {
    /// The tag.
    pub(crate) tag: String,
    /// What happened.
    #[serde(flatten)]
    pub(crate) outcome: TagOutcome,
}

/// One attempted tag write.
#[derive(Debug, Clone)]
struct Attempt {
    service: String,
    repo: String,
    tag: String,
    target: String,
}

/// Every tag write attempted during a run, recorded before the request is sent.
#[derive(Debug, Clone, Default)]
pub(crate) struct TagLedger(Arc<Mutex<Vec<Attempt>>>);

/// A tag as read back from the registry at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ReadBack {
    /// The tag.
    pub(crate) tag: String,
    /// The image the run wanted it on.
    pub(crate) wanted: String,
    /// What it points at now (None: absent or unknown).
    pub(crate) now: Option<String>,
    /// Why it could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl ReadBack {
    /// Whether the tag is on the wanted image.
    pub(crate) fn moved(&self) -> bool {
        self.now.as_deref() == Some(self.wanted.as_str())
    }
}

impl TagLedger {
    fn record(&self, service: &str, repo: &str, tag: &str, target: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Attempt {
                service: service.to_owned(),
                repo: repo.to_owned(),
                tag: tag.to_owned(),
                target: target.to_owned(),
            });
    }

    /// Reads back every attempted tag of `service` (the last attempt per tag), within `limit`.
    pub(crate) async fn read_back(
        &self,
        client: &RegistryClient,
        service: &str,
        limit: Duration,
    ) -> Vec<ReadBack> {
        let mut attempts: Vec<Attempt> = Vec::new();
        for a in self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|a| a.service == service)
        {
            attempts.retain(|b| b.tag != a.tag);
            attempts.push(a.clone());
        }
        let reads = attempts.into_iter().map(|a| async move {
            let reference = client.reference(&a.repo, &a.tag);
            let (now, error) = match tokio::time::timeout(limit, client.lookup(&reference)).await {
                Ok(Ok(now)) => (now, None),
                Ok(Err(e)) => (None, Some(e.to_string())),
                Err(_) => (None, Some(format!("no answer within {}s", limit.as_secs()))),
            };
            ReadBack {
                tag: a.tag,
                wanted: a.target,
                now,
                error,
            }
        });
        futures::future::join_all(reads).await
    }

    /// Whether any tag write was attempted for `service`.
    pub(crate) fn touched(&self, service: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|a| a.service == service)
    }
}

/// Points each of `tags` of `repo` at `image`, in order, reporting each move through `on_move` as it happens. A tag
/// already on `image` is left alone. The first failure stops the moves; the returned list says which tags moved,
/// which failed and which were not attempted, and the error is returned beside it.
pub(crate) async fn move_tags(
    client: &RegistryClient,
    ledger: &TagLedger,
    service: &str,
    repo: &str,
    tags: &[String],
    image: &str,
    on_move: &(dyn Fn(&str, Option<&str>) + Send + Sync),
) -> (Vec<TagMove>, Option<RegistryError>) {
    let mut moves = Vec::new();
    let mut manifest: Option<Manifest> = None;
    let mut failure = None;
    for tag in tags {
        if failure.is_some() {
            moves.push(TagMove {
                tag: tag.clone(),
                outcome: TagOutcome::NotAttempted,
            });
            continue;
        }
        let outcome = match move_one(client, ledger, service, repo, tag, image, &mut manifest).await
        {
            Ok(None) => TagOutcome::Unchanged,
            Ok(Some(from)) => {
                on_move(tag, from.as_deref());
                TagOutcome::Moved { from }
            }
            Err(e) => {
                let outcome = TagOutcome::Failed {
                    error: e.to_string(),
                };
                failure = Some(e);
                outcome
            }
        };
        moves.push(TagMove {
            tag: tag.clone(),
            outcome,
        });
    }
    (moves, failure)
}

/// Moves one tag; Ok(None) when it was already there, Ok(Some(previous)) when moved.
async fn move_one(
    client: &RegistryClient,
    ledger: &TagLedger,
    service: &str,
    repo: &str,
    tag: &str,
    image: &str,
    manifest: &mut Option<Manifest>,
) -> Result<Option<Option<String>>, RegistryError> {
    let target = client.reference(repo, tag);
    let current = client.lookup(&target).await?;
    if current.as_deref() == Some(image) {
        return Ok(None);
    }
    let m = match manifest {
        Some(m) => m,
        None => {
            let source = client.by_digest(repo, image);
            let m = client
                .manifest(&source)
                .await?
                .ok_or(RegistryError::Missing(source))?;
            manifest.insert(m)
        }
    };
    ledger.record(service, repo, tag, image);
    client.put_manifest(&target, m).await?;
    Ok(Some(current))
}
