//! The input manifest in the registry: after a build is tagged, the record of its inputs ([`InputRecord`]) is
//! stored as an OCI 1.1 artifact whose `subject` is the image, so that `plan` on any runner can find the record of
//! the image a requested tag points at and say what changed since, without local state.
//!
//! The artifact is an image manifest with `artifactType` [`ARTIFACT_TYPE`], the empty config, and one layer: the
//! gzip of the record's JSON. Registries with the referrers API index it by its `subject`; for the others (Debian's
//! `docker-registry` 2.8, GHCR) it is listed, as the distribution spec's fallback says, in an image index under the
//! tag `sha256-<hex of the image digest>`, updated read-modify-write. Its annotations name the layer, so a reader
//! goes from the referrers list straight to the blob. Storing it never fails a build; reading it never fails a plan.

use std::time::Duration;

use prost::bytes::Bytes;
use serde_json::json;
use sha2::Digest as _;

use super::{Manifest, RegistryClient, RegistryError};
use crate::config::Service;
use crate::error::one_line;
use crate::hash::ServiceInputs;
use crate::record::{InputRecord, MAX_BYTES, RecordError};

/// The artifact type of the input manifest.
pub(crate) const ARTIFACT_TYPE: &str = "application/vnd.buildopt.inputs.v1+json";
/// The media type of its one layer: the record's JSON, gzip-compressed.
pub(crate) const LAYER_TYPE: &str = "application/vnd.buildopt.inputs.v1.json+gzip";
/// Annotation (on the artifact, so also in the referrers list): the layer's digest.
pub(crate) const ANNOTATION_BLOB: &str = "vnd.buildopt.inputs.blob";
/// Annotation: the input digest the image was tagged for.
pub(crate) const ANNOTATION_DIGEST: &str = "vnd.buildopt.inputs.digest";
/// Annotation: the service.
pub(crate) const ANNOTATION_SERVICE: &str = "vnd.buildopt.inputs.service";
/// Annotation: how the entries are kept (`paths`, `hashes`, `none`; see [`crate::record::Listing`]).
pub(crate) const ANNOTATION_LISTING: &str = "vnd.buildopt.inputs.listing";

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The OCI 1.1 empty descriptor: `{}`, as the config of an artifact that has none.
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";
const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// How long storing may take after a build (the tag moves run meanwhile).
const STORE_LIMIT: Duration = Duration::from_secs(20);
/// How long finding and reading one service's record may take during a plan.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// Why the input manifest could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InputsError {
    /// A registry request failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The record is not readable.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Something in the registry is not what it should be.
    #[error("{0}")]
    Unexpected(String),
    /// It took too long.
    #[error("no answer within {}s", .0.as_secs())]
    TimedOut(Duration),
}

/// Where the artifact is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listed {
    /// By the registry's referrers API.
    Api,
    /// In the referrers tag `sha256-<hex>`.
    Tag,
}

/// What [`store`] stored.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    /// The artifact manifest's digest.
    pub(crate) artifact: String,
    /// Where it is listed.
    pub(crate) listed: Listed,
    /// The size of the compressed record.
    pub(crate) bytes: usize,
}

/// The sha256 digest of `bytes`, as the registry names blobs and manifests.
fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The referrers tag of `subject` (`sha256:abc` -> `sha256-abc`).
pub(crate) fn referrers_tag(subject: &str) -> String {
    subject.replace(':', "-")
}

/// Stores the record of `inputs` as an artifact referring to `image` in `repo`, and lists it where readers look.
/// Requests: the image's manifest (its type and size for the `subject`), a HEAD of the empty config (and its upload
/// the first time in a repository), the record's upload (POST, PUT), the artifact's PUT, and the referrers list
/// (one request with the referrers API; else two, then the referrers tag's read and write).
pub(crate) async fn store(
    client: &RegistryClient,
    repo: &str,
    image: &str,
    service: &str,
    inputs: &ServiceInputs,
) -> Result<Stored, InputsError> {
    // Compressing a large context's record takes a while: other services' tasks go on meanwhile.
    let encoded = tokio::task::block_in_place(|| InputRecord::encode(service, inputs));
    let subject = client
        .manifest(&client.by_digest(repo, image))
        .await?
        .ok_or_else(|| InputsError::Unexpected(format!("the image {image} is gone")))?;
    if !client.blob_exists(repo, EMPTY_DIGEST).await? {
        client
            .push_blob(repo, Bytes::from_static(EMPTY), EMPTY_DIGEST)
            .await?;
    }
    let blob = sha256(&encoded.bytes);
    let size = encoded.bytes.len();
    client
        .push_blob(repo, Bytes::from(encoded.bytes), &blob)
        .await?;
    let annotations = json!({
        ANNOTATION_BLOB: blob,
        ANNOTATION_DIGEST: inputs.digest.to_string(),
        ANNOTATION_SERVICE: service,
        ANNOTATION_LISTING: encoded.listing,
    });
    // No creation time: the same inputs make the same artifact, so storing them again changes nothing.
    let artifact = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": { "mediaType": EMPTY_TYPE, "digest": EMPTY_DIGEST, "size": EMPTY.len() },
        "layers": [{ "mediaType": LAYER_TYPE, "digest": blob, "size": size }],
        "subject": { "mediaType": subject.media_type, "digest": image, "size": subject.bytes.len() },
        "annotations": annotations,
    });
    let bytes = Bytes::from(serde_json::to_vec(&artifact).expect("JSON"));
    let manifest = Manifest {
        digest: sha256(&bytes),
        media_type: MANIFEST_TYPE.to_owned(),
        bytes,
    };
    client
        .put_manifest(&client.by_digest(repo, &manifest.digest), &manifest)
        .await?;
    // A registry with the referrers API lists it now. (The spec has such registries answer the PUT with an
    // `OCI-Subject` header, which the client does not expose; asking is one request.)
    let listed = client.referrers(repo, image, ARTIFACT_TYPE).await?;
    if listed.iter().any(|d| d.digest == manifest.digest) {
        return Ok(Stored {
            artifact: manifest.digest,
            listed: Listed::Api,
            bytes: size,
        });
    }
    let descriptor = json!({
        "mediaType": MANIFEST_TYPE,
        "digest": manifest.digest,
        "size": manifest.bytes.len(),
        "artifactType": ARTIFACT_TYPE,
        "annotations": annotations,
    });
    add_to_referrers_tag(client, repo, image, descriptor).await?;
    Ok(Stored {
        artifact: manifest.digest,
        listed: Listed::Tag,
        bytes: size,
    })
}

/// Adds `descriptor` to the referrers index under the referrers tag of `image`, keeping every other entry as it is
/// (signatures, SBOMs of other tools). Two runners adding different artifacts at the same moment can lose one of
/// them; for the input manifest that only costs an explanation.
async fn add_to_referrers_tag(
    client: &RegistryClient,
    repo: &str,
    image: &str,
    descriptor: serde_json::Value,
) -> Result<(), InputsError> {
    let reference = client.reference(repo, &referrers_tag(image));
    let mut index: serde_json::Value = match client.manifest(&reference).await? {
        None => json!({ "schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [] }),
        Some(m) => serde_json::from_slice(&m.bytes)
            .ok()
            .filter(|v: &serde_json::Value| v["manifests"].is_array())
            .ok_or_else(|| {
                InputsError::Unexpected(format!(
                    "{reference} holds something other than a referrers index; left as it is"
                ))
            })?,
    };
    let manifests = index["manifests"]
        .as_array_mut()
        .expect("checked to be an array");
    if manifests
        .iter()
        .any(|d| d["digest"] == descriptor["digest"])
    {
        return Ok(());
    }
    manifests.push(descriptor);
    let bytes = Bytes::from(serde_json::to_vec(&index).expect("JSON"));
    let manifest = Manifest {
        digest: sha256(&bytes),
        media_type: INDEX_TYPE.to_owned(),
        bytes,
    };
    client.put_manifest(&reference, &manifest).await?;
    Ok(())
}

/// Stores the record of a fresh build of `svc` (image `image`), within a time limit. Never fails: a warning, for
/// the build's report, says what went wrong.
pub(crate) async fn store_or_warn(
    client: &RegistryClient,
    svc: &Service,
    inputs: &ServiceInputs,
    image: &str,
) -> Option<String> {
    let stored = tokio::time::timeout(
        STORE_LIMIT,
        store(client, &svc.image, image, &svc.name, inputs),
    )
    .await
    .unwrap_or(Err(InputsError::TimedOut(STORE_LIMIT)));
    match stored {
        Ok(s) => {
            tracing::debug!(
                "service `{}`: input manifest {} ({} bytes) stored, listed {}",
                svc.name,
                s.artifact,
                s.bytes,
                match s.listed {
                    Listed::Api => "by the referrers API",
                    Listed::Tag => "in the referrers tag",
                }
            );
            None
        }
        Err(e) => Some(format!(
            "storing the input manifest beside the image failed ({}); the build is not affected, but a runner without local state cannot say what changed since this image",
            one_line(&e)
        )),
    }
}

/// The record of the image a tag points at.
#[derive(Debug, Clone)]
pub(crate) struct Previous {
    /// The tag.
    pub(crate) tag: String,
    /// The image it points at.
    pub(crate) image: String,
    /// Its input manifest.
    pub(crate) record: InputRecord,
}

/// The value of annotation `key` on a listed referrer.
fn annotation<'a>(d: &'a oci_client::manifest::ImageIndexEntry, key: &str) -> Option<&'a str> {
    d.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The record of the image `repo:tag` points at; None when there is no such tag or no record for its image.
/// Requests: a HEAD of the tag, the referrers list (one request with the referrers API, two without), and the
/// record's blob, named by the annotation on the listed artifact (else the artifact manifest first).
pub(crate) async fn previous(
    client: &RegistryClient,
    repo: &str,
    tag: &str,
    service: &str,
) -> Result<Option<Previous>, InputsError> {
    let Some(image) = client.lookup(&client.reference(repo, tag)).await? else {
        return Ok(None);
    };
    let listed = client.referrers(repo, &image, ARTIFACT_TYPE).await?;
    // The last one of this service (the same repository could serve several), or of any.
    let Some(entry) = listed
        .iter()
        .rev()
        .find(|d| annotation(d, ANNOTATION_SERVICE) == Some(service))
        .or(listed.last())
    else {
        return Ok(None);
    };
    let blob = match annotation(entry, ANNOTATION_BLOB) {
        Some(b) => b.to_owned(),
        None => {
            let artifact = client
                .manifest(&client.by_digest(repo, &entry.digest))
                .await?
                .ok_or_else(|| {
                    InputsError::Unexpected(format!("artifact {} is missing", entry.digest))
                })?;
            serde_json::from_slice::<serde_json::Value>(&artifact.bytes)
                .ok()
                .and_then(|v| v["layers"][0]["digest"].as_str().map(str::to_owned))
                .ok_or_else(|| {
                    InputsError::Unexpected(format!("artifact {} has no layer", entry.digest))
                })?
        }
    };
    // The digest goes into a URL path: only a well-formed one.
    if !(blob.len() == 71
        && blob.starts_with("sha256:")
        && blob[7..].bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(InputsError::Unexpected(format!(
            "artifact {} names no valid blob",
            entry.digest
        )));
    }
    let bytes = client
        .blob(repo, &blob, MAX_BYTES)
        .await?
        .ok_or_else(|| InputsError::Unexpected(format!("blob {blob} is missing")))?;
    Ok(Some(Previous {
        tag: tag.to_owned(),
        image,
        record: tokio::task::block_in_place(|| InputRecord::decode(&bytes))?,
    }))
}

/// The record of the image `svc`'s first requested tag points at, within a time limit; None, with a warning in
/// the log, when it cannot be read.
pub(crate) async fn previous_or_none(client: &RegistryClient, svc: &Service) -> Option<Previous> {
    let tag = svc.tags.first()?;
    let found = tokio::time::timeout(READ_LIMIT, previous(client, &svc.image, tag, &svc.name))
        .await
        .unwrap_or(Err(InputsError::TimedOut(READ_LIMIT)));
    match found {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                "service `{}`: could not read the input manifest of `{tag}`: {}",
                svc.name,
                one_line(&e)
            );
            None
        }
    }
}
