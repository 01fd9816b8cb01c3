//! Whether an image in the registry can be used as it is. A skip must never leave `latest` on something that cannot
//! be pulled, so a manifest under a content tag counts only when it parses, has the digest the registry reports,
//! every child of an index does too, and the config and every layer blob exist. Each blob is checked once per run,
//! all of them in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::try_join_all;
use oci_client::errors::OciDistributionError;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use tokio::sync::OnceCell;

use super::{Manifest, RegistryClient, RegistryError};
use crate::error::one_line;

/// What a tag holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// No such tag (or repository).
    Absent,
    /// A complete image: `digest` is its manifest (or index) digest.
    Usable {
        /// `sha256:...`.
        digest: String,
    },
    /// Something that cannot be pulled.
    Unusable {
        /// Its digest, when the registry gave one.
        digest: Option<String>,
        /// What is wrong, for the plan's reason.
        reason: String,
    },
}

/// The outcome of checking one object, shared by everyone who asks for it during a run.
type Check = Arc<OnceCell<Result<(), String>>>;

/// Checks images, remembering every object it checked during this run.
#[derive(Debug, Clone)]
pub(crate) struct Verifier {
    client: RegistryClient,
    checked: Arc<Mutex<HashMap<(String, String), Check>>>,
}

impl Verifier {
    /// A verifier over `client`.
    pub(crate) fn new(client: RegistryClient) -> Verifier {
        Verifier {
            client,
            checked: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The registry client it checks with.
    pub(crate) fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// What `repo:tag` holds. Errors reaching the registry at all are errors; anything wrong with what it holds is
    /// [`Found::Unusable`].
    pub(crate) async fn tag(&self, repo: &str, tag: &str) -> Result<Found, RegistryError> {
        let reference = self.client.reference(repo, tag);
        let manifest = match self.client.manifest(&reference).await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(Found::Absent),
            Err(RegistryError::Other {
                source: e @ OciDistributionError::DigestError(_),
                ..
            }) => {
                return Ok(Found::Unusable {
                    digest: None,
                    reason: format!("its manifest does not match its digest ({e})"),
                });
            }
            Err(e) => return Err(e),
        };
        let digest = manifest.digest.clone();
        Ok(
            match self.cached(repo, &digest, self.image(repo, manifest)).await {
                Ok(()) => Found::Usable { digest },
                Err(reason) => Found::Unusable {
                    digest: Some(digest),
                    reason,
                },
            },
        )
    }

    /// Whether the image `repo@digest` is complete.
    pub(crate) async fn digest(&self, repo: &str, digest: &str) -> Result<(), String> {
        self.cached(repo, digest, async {
            let manifest = self.fetch(repo, digest).await?;
            self.image(repo, manifest).await
        })
        .await
    }

    /// Runs `check` for `(repo, digest)` unless it ran (or runs) already in this run.
    async fn cached(
        &self,
        repo: &str,
        digest: &str,
        check: impl Future<Output = Result<(), String>>,
    ) -> Result<(), String> {
        let cell = self
            .checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((repo.to_owned(), digest.to_owned()))
            .or_default()
            .clone();
        cell.get_or_init(|| check).await.clone()
    }

    async fn fetch(&self, repo: &str, digest: &str) -> Result<Manifest, String> {
        match self
            .client
            .manifest(&self.client.by_digest(repo, digest))
            .await
        {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(format!("manifest {digest} is missing")),
            Err(e) => Err(format!(
                "manifest {digest} cannot be read: {}",
                one_line(&e)
            )),
        }
    }

    /// A manifest or index and everything it refers to.
    async fn image(&self, repo: &str, manifest: Manifest) -> Result<(), String> {
        if manifest.bytes.is_empty() {
            return Err("the registry returned an empty manifest".to_owned());
        }
        if is_index(&manifest) {
            let index: ImageIndex = serde_json::from_slice(&manifest.bytes)
                .map_err(|e| format!("its index is not a valid image index ({e})"))?;
            // Children (platform images and attestation manifests) are checked in parallel.
            try_join_all(index.manifests().iter().map(|child| async move {
                let digest = child.digest().to_string();
                let inner = self.fetch(repo, &digest).await?;
                if is_index(&inner) {
                    return Err(format!("manifest {digest} nests another index"));
                }
                self.cached(repo, &digest, self.blobs(repo, inner)).await
            }))
            .await?;
            Ok(())
        } else {
            self.blobs(repo, manifest).await
        }
    }

    /// An image manifest's config and layers.
    async fn blobs(&self, repo: &str, manifest: Manifest) -> Result<(), String> {
        let parsed: ImageManifest = serde_json::from_slice(&manifest.bytes).map_err(|e| {
            format!(
                "manifest {} is not a valid image manifest ({e})",
                manifest.digest
            )
        })?;
        let blobs: Vec<(&str, &Descriptor)> = std::iter::once(("config", parsed.config()))
            .chain(parsed.layers().iter().map(|l| ("layer", l)))
            .collect();
        try_join_all(blobs.into_iter().map(|(what, d)| async move {
            let digest = d.digest().to_string();
            self.cached(repo, &digest, async {
                match self.client.blob_exists(repo, &digest).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!("{what} blob {digest} is missing")),
                    Err(e) => Err(format!(
                        "{what} blob {digest} cannot be read: {}",
                        one_line(&e)
                    )),
                }
            })
            .await
        }))
        .await?;
        Ok(())
    }
}

fn is_index(m: &Manifest) -> bool {
    m.media_type.ends_with("image.index.v1+json") || m.media_type.ends_with("manifest.list.v2+json")
}
