//! The registry as the source of truth: what a tag points at, the manifests and blobs behind it, and tag moves.
//! Images' blobs are BuildKit's to upload; the only blobs uploaded here are those of the input manifest artifact
//! (`inputs`). This is the one place that decides what a "not found", a transient failure and a refusal look like.

pub(crate) mod ecr;
pub(crate) mod gc;
pub(crate) mod inputs;
pub(crate) mod lifecycle;
pub(crate) mod promote;
mod transport;
pub(crate) mod verify;

use std::sync::Arc;
use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use prost::bytes::Bytes;
use tokio::sync::OnceCell;

use crate::auth::Keychain;
use crate::config::Registry;
use crate::digest::Digest;
use crate::error::{Classify, ErrorKind};

/// Attempts for a request that failed with a 5xx, a 429 or a transport error.
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Manifest media types we accept, so the digest is the one BuildKit pushed.
pub(crate) const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The prefix of every content tag; requested tags may not use it.
pub(crate) const CONTENT_TAG_PREFIX: &str = "bo-";

/// The tag under which the image built from inputs `digest` is kept: `bo-` and the 64 hex digits.
pub(crate) fn content_tag(digest: &Digest) -> String {
    format!("{CONTENT_TAG_PREFIX}{digest}")
}

/// A registry request that failed for good.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Nothing answered: connection refused, DNS, TLS, timeouts (after retries).
    #[error(
        "registry {host} did not answer for {reference} ({attempts} attempts); check that it is reachable (and `insecure = true` under [registry] for plain http)"
    )]
    Unreachable {
        /// Registry host.
        host: String,
        /// What was asked for.
        reference: String,
        /// How often it was tried.
        attempts: u32,
        /// The last transport error.
        #[source]
        source: OciDistributionError,
    },
    /// The registry answered with an error status.
    #[error("registry {host} answered {status} for {reference}{}: {detail}", retried(*.attempts))]
    Status {
        /// Registry host.
        host: String,
        /// What was asked for.
        reference: String,
        /// `500 Internal Server Error`.
        status: String,
        /// The registry's error codes and messages (`UNKNOWN: ...`), or the start of its body.
        detail: String,
        /// How often it was tried.
        attempts: u32,
    },
    /// 401/403 without credentials.
    #[error(
        "registry {host} requires credentials for {reference} and none were found (looked in: {}); log in (docker login), or set BUILDOPT_REGISTRY_USERNAME and BUILDOPT_REGISTRY_PASSWORD",
        looked_in.join("; ")
    )]
    NoCredentials {
        /// Registry host.
        host: String,
        /// What was asked for.
        reference: String,
        /// Where credentials were looked for.
        looked_in: Vec<String>,
    },
    /// 401/403 with credentials.
    #[error(
        "registry {host} rejected the credentials from {origin} for {reference}; check them (ECR tokens expire after 12 hours)"
    )]
    Rejected {
        /// Registry host.
        host: String,
        /// What was asked for.
        reference: String,
        /// Where the credentials came from.
        origin: String,
    },
    /// Credentials could not be resolved (the credential source's error says what to do).
    #[error(transparent)]
    Credentials(crate::auth::AuthError),
    /// The reference is malformed.
    #[error("invalid image reference `{0}`")]
    Reference(String),
    /// Something that must be there is not.
    #[error("the registry has no {0}")]
    Missing(String),
    /// The registry does not allow deleting manifests.
    #[error(
        "registry {host} does not allow deleting {reference} ({detail}); enable deletes (distribution: `storage.delete.enabled: true`), or delete the tags with the registry's own tools"
    )]
    DeleteRefused {
        /// Registry host.
        host: String,
        /// What was to be deleted.
        reference: String,
        /// What the registry said.
        detail: String,
    },
    /// Anything else the registry client reported.
    #[error("registry request for {reference} failed")]
    Other {
        /// What was asked for.
        reference: String,
        /// The error.
        #[source]
        source: OciDistributionError,
    },
}

fn retried(attempts: u32) -> String {
    if attempts > 1 {
        format!(" ({attempts} attempts)")
    } else {
        String::new()
    }
}

impl Classify for RegistryError {
    fn kind(&self) -> ErrorKind {
        match self {
            // Setup problems: nothing can work until the configuration or credentials are fixed.
            RegistryError::Unreachable { .. }
            | RegistryError::NoCredentials { .. }
            | RegistryError::Rejected { .. }
            | RegistryError::Credentials(_)
            | RegistryError::DeleteRefused { .. }
            | RegistryError::Reference(_) => ErrorKind::Usage,
            RegistryError::Status { .. }
            | RegistryError::Missing(_)
            | RegistryError::Other { .. } => ErrorKind::Failure,
        }
    }
}

enum Class {
    NotFound,
    Unauthorized,
    /// An HTTP status worth retrying (5xx, 429).
    RetryStatus(u16),
    /// A transport failure worth retrying.
    RetryTransport,
    /// An HTTP error status not worth retrying.
    Status(u16),
    Fatal,
}

/// The single classification of registry errors.
fn classify(e: &OciDistributionError) -> Class {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => Class::NotFound,
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                Class::NotFound
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                Class::Unauthorized
            } else {
                // The envelope does not carry the status; 4xx is what the client parses envelopes for.
                Class::Status(400)
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => Class::NotFound,
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        }
        | OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Class::Unauthorized,
        OciDistributionError::ServerError { code, .. } if *code >= 500 || *code == 429 => {
            Class::RetryStatus(*code)
        }
        OciDistributionError::ServerError { code, .. } => Class::Status(*code),
        // `error_for_status` answers (blob HEADs) carry the status inside the transport error.
        OciDistributionError::RequestError(r) => match r.status().map(|s| s.as_u16()) {
            Some(404) => Class::NotFound,
            Some(401 | 403) => Class::Unauthorized,
            Some(code) if code >= 500 || code == 429 => Class::RetryStatus(code),
            Some(code) => Class::Status(code),
            None => Class::RetryTransport,
        },
        OciDistributionError::IoError(_) => Class::RetryTransport,
        _ => Class::Fatal,
    }
}

/// `500 Internal Server Error`.
fn status_text(code: u16) -> String {
    match http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{code} {reason}"),
        None => code.to_string(),
    }
}

/// An error body as registries send it (`{"errors":[{"code":"UNKNOWN","message":"..."}]}`), read loosely: the
/// client's own envelope type has no variant for codes such as `UNKNOWN`.
#[derive(serde::Deserialize)]
struct LooseEnvelope {
    errors: Vec<LooseError>,
}

#[derive(serde::Deserialize)]
struct LooseError {
    #[serde(default)]
    code: serde_json::Value,
    #[serde(default)]
    message: String,
}

impl LooseEnvelope {
    fn summary(&self) -> String {
        self.errors
            .iter()
            .map(|e| match e.code.as_str() {
                Some(code) => format!("{code}: {}", e.message),
                None => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What the registry said, on one line: its error codes and messages, or the start of its body.
fn status_detail(e: &OciDistributionError) -> String {
    let text = match e {
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .map(|e| {
                let code = serde_json::to_value(&e.code).unwrap_or_default();
                format!("{}: {}", code.as_str().unwrap_or("ERROR"), e.message)
            })
            .collect::<Vec<_>>()
            .join("; "),
        OciDistributionError::ServerError { message, .. } => {
            match serde_json::from_str::<LooseEnvelope>(message) {
                Ok(envelope) => envelope.summary(),
                Err(_) => message.clone(),
            }
        }
        other => other.to_string(),
    };
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut short: String = line.chars().take(200).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    if short.is_empty() {
        "(no details)".to_owned()
    } else {
        short
    }
}

/// The error for a blob beyond the size a caller accepts.
fn too_large(digest: &str, limit: usize) -> OciDistributionError {
    OciDistributionError::GenericError(Some(format!(
        "blob {digest} is larger than the {limit} bytes expected"
    )))
}

/// A manifest as the registry stores it.
#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    /// The exact bytes (their sha256 is the digest).
    pub(crate) bytes: Bytes,
    /// `sha256:...`.
    pub(crate) digest: String,
    /// The `mediaType` field (or the OCI manifest type when absent).
    pub(crate) media_type: String,
}

/// The credentials used for every request of a run, and where they came from.
#[derive(Clone)]
struct Auth {
    auth: RegistryAuth,
    origin: Option<String>,
}

/// Registry access for one `[registry]`.
#[derive(Clone)]
pub(crate) struct RegistryClient {
    /// Made on first use: building it loads the system's root certificates twice (two reqwest clients), and a
    /// run that only reads (every service skipped) never needs it.
    oci: Arc<std::sync::OnceLock<Client>>,
    /// Manifest and blob reads and manifest deletes (which oci-client cannot do), with the registry's auth scheme
    /// learned once (oci-client pings before each request).
    transport: transport::Transport,
    registry: Registry,
    keychain: Arc<dyn Keychain>,
    auth: Arc<OnceCell<Auth>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("registry", &self.registry.url)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client for `registry`, with credentials from `keychain`.
    pub(crate) fn new(
        registry: &Registry,
        keychain: Arc<dyn Keychain>,
    ) -> Result<RegistryClient, RegistryError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| RegistryError::Other {
                reference: registry.url.clone(),
                source: OciDistributionError::from(e),
            })?;
        let transport = transport::Transport::new(http, registry.host(), registry.insecure);
        Ok(RegistryClient {
            oci: Arc::default(),
            transport,
            registry: registry.clone(),
            keychain,
            auth: Arc::new(OnceCell::new()),
        })
    }

    /// The oci-client client (pushes, blob reads, referrers, tag lists), made on first use.
    fn oci(&self) -> Result<&Client, RegistryError> {
        if let Some(c) = self.oci.get() {
            return Ok(c);
        }
        let config = oci_client::client::ClientConfig {
            protocol: if self.registry.insecure {
                oci_client::client::ClientProtocol::HttpsExcept(vec![
                    self.registry.host().to_owned(),
                ])
            } else {
                oci_client::client::ClientProtocol::Https
            },
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(Duration::from_secs(30)),
            // The only blobs pushed are small (the input manifest): one POST and one PUT, no chunks.
            use_monolithic_push: true,
            ..Default::default()
        };
        let client = Client::try_from(config).map_err(|source| RegistryError::Other {
            reference: self.registry.url.clone(),
            source,
        })?;
        Ok(self.oci.get_or_init(|| client))
    }

    /// `registry/repo:tag`.
    pub(crate) fn reference(&self, repo: &str, tag: &str) -> String {
        self.registry.reference(repo, tag)
    }

    /// `registry/repo`.
    pub(crate) fn repository(&self, repo: &str) -> String {
        format!("{}/{repo}", self.registry.url)
    }

    /// `registry/repo@digest`.
    pub(crate) fn by_digest(&self, repo: &str, digest: &str) -> String {
        format!("{}/{repo}@{digest}", self.registry.url)
    }

    /// Credentials, resolved once per run (a credential helper is a program; ECR a network call).
    async fn auth(&self) -> Result<&Auth, RegistryError> {
        self.auth
            .get_or_try_init(|| async {
                let host = self.registry.host();
                match self.keychain.resolve(host).await {
                    Ok(Some(c)) => Ok(Auth {
                        auth: RegistryAuth::Basic(c.username, c.secret.expose().to_owned()),
                        origin: Some(c.source),
                    }),
                    Ok(None) => Ok(Auth {
                        auth: RegistryAuth::Anonymous,
                        origin: None,
                    }),
                    Err(e) => Err(RegistryError::Credentials(e)),
                }
            })
            .await
    }

    fn parse(&self, reference: &str) -> Result<Reference, RegistryError> {
        reference
            .parse()
            .map_err(|_| RegistryError::Reference(reference.to_owned()))
    }

    /// `reference` parsed, with the run's credentials in the client's own store: the client calls that take no
    /// credentials (blob checks and reads, referrers) authenticate from it, which the other calls fill.
    async fn with_stored_auth(&self, reference: &str) -> Result<Reference, RegistryError> {
        let r = self.parse(reference)?;
        let auth = &self.auth().await?.auth;
        self.oci()?
            .store_auth_if_needed(r.resolve_registry(), auth)
            .await;
        Ok(r)
    }

    /// Runs `op` with bounded retries on transient errors, mapping the outcome through the one classification.
    async fn retrying<T, F, Fut>(&self, reference: &str, op: F) -> Result<Option<T>, RegistryError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        let host = || self.registry.host().to_owned();
        loop {
            let e = match op().await {
                Ok(v) => return Ok(Some(v)),
                Err(e) => e,
            };
            let class = classify(&e);
            if matches!(class, Class::RetryStatus(_) | Class::RetryTransport) && attempt < ATTEMPTS
            {
                tracing::debug!("registry request for {reference} failed (attempt {attempt}): {e}");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
                continue;
            }
            return match class {
                Class::NotFound => Ok(None),
                Class::Unauthorized => Err(match &self.auth().await?.origin {
                    Some(origin) => RegistryError::Rejected {
                        host: host(),
                        reference: reference.to_owned(),
                        origin: origin.clone(),
                    },
                    None => RegistryError::NoCredentials {
                        host: host(),
                        reference: reference.to_owned(),
                        looked_in: self.keychain.sources(self.registry.host()),
                    },
                }),
                Class::RetryStatus(code) | Class::Status(code) => Err(RegistryError::Status {
                    host: host(),
                    reference: reference.to_owned(),
                    status: status_text(code),
                    detail: status_detail(&e),
                    attempts: attempt,
                }),
                Class::RetryTransport => Err(RegistryError::Unreachable {
                    host: host(),
                    reference: reference.to_owned(),
                    attempts: attempt,
                    source: e,
                }),
                Class::Fatal => Err(RegistryError::Other {
                    reference: reference.to_owned(),
                    source: e,
                }),
            };
        }
    }

    /// The manifest digest behind `reference` (`registry/repo:tag`), or None when there is no such manifest or
    /// repository. A HEAD request: nothing is checked beyond what the registry says.
    pub(crate) async fn lookup(&self, reference: &str) -> Result<Option<String>, RegistryError> {
        let r = self.parse(reference)?;
        let auth = &self.auth().await?.auth;
        self.retrying(reference, || {
            self.transport.manifest_digest(&r, auth, ACCEPT)
        })
        .await
    }

    /// The manifest behind `reference` (`registry/repo:tag` or `@digest`), or None when there is none. The client
    /// checks the body against the digest the registry reports (and the one in the reference).
    pub(crate) async fn manifest(
        &self,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let r = self.parse(reference)?;
        let auth = &self.auth().await?.auth;
        let Some((bytes, digest)) = self
            .retrying(reference, || self.transport.manifest(&r, auth, ACCEPT))
            .await?
        else {
            return Ok(None);
        };
        // OCI makes `mediaType` optional; an index is then recognized by its `manifests`.
        let json = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
        let media_type = match json.as_ref().and_then(|v| v.get("mediaType")?.as_str()) {
            Some(m) => m.to_owned(),
            None if json.as_ref().is_some_and(|v| v.get("manifests").is_some()) => {
                ACCEPT[1].to_owned()
            }
            None => ACCEPT[0].to_owned(),
        };
        Ok(Some(Manifest {
            bytes,
            digest,
            media_type,
        }))
    }

    /// Whether blob `digest` exists in `repo`.
    pub(crate) async fn blob_exists(
        &self,
        repo: &str,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let reference = self.by_digest(repo, digest);
        let r = self.parse(&reference)?;
        let auth = &self.auth().await?.auth;
        Ok(self
            .retrying(&reference, || self.transport.blob_exists(&r, auth, digest))
            .await?
            .unwrap_or(false))
    }

    /// Blob `digest` of `repo`, checked against its digest; None when the registry has no such blob. A blob larger
    /// than `limit` bytes is an error, found out before more than `limit` bytes are read.
    pub(crate) async fn blob(
        &self,
        repo: &str,
        digest: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        use futures::TryStreamExt;
        let reference = self.by_digest(repo, digest);
        let r = self.with_stored_auth(&reference).await?;
        let oci = self.oci()?;
        self.retrying(&reference, || async {
            let mut stream = oci.pull_blob_stream(&r, digest).await?;
            if stream.content_length.is_some_and(|n| n > limit as u64) {
                return Err(too_large(digest, limit));
            }
            let mut bytes = Vec::new();
            // The client reports a digest mismatch at the end of the stream, as an I/O error around it.
            let unwrap = |e: std::io::Error| {
                if e.get_ref()
                    .is_some_and(|i| i.is::<oci_client::errors::DigestError>())
                {
                    let inner = e.into_inner().expect("checked above");
                    match inner.downcast::<oci_client::errors::DigestError>() {
                        Ok(d) => OciDistributionError::DigestError(*d),
                        Err(other) => OciDistributionError::IoError(std::io::Error::other(other)),
                    }
                } else {
                    OciDistributionError::IoError(e)
                }
            };
            while let Some(chunk) = stream.try_next().await.map_err(unwrap)? {
                if bytes.len() + chunk.len() > limit {
                    return Err(too_large(digest, limit));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(bytes)
        })
        .await
    }

    /// Uploads `data` as blob `digest` of `repo` (a POST and a PUT).
    pub(crate) async fn push_blob(
        &self,
        repo: &str,
        data: Bytes,
        digest: &str,
    ) -> Result<(), RegistryError> {
        let reference = self.by_digest(repo, digest);
        let r = self.parse(&reference)?;
        let auth = &self.auth().await?.auth;
        let oci = self.oci()?;
        self.retrying(&reference, || async {
            oci.auth(&r, auth, RegistryOperation::Push).await?;
            oci.push_blob(&r, data.clone(), digest).await
        })
        .await?;
        Ok(())
    }

    /// The manifests that refer to `repo@subject` (OCI 1.1 referrers) with artifact type `artifact_type`: from the
    /// referrers API, or, when the registry has none (it answers 404), from the referrers tag
    /// `sha256-<hex>`, as the distribution spec falls back. Empty when there are none.
    pub(crate) async fn referrers(
        &self,
        repo: &str,
        subject: &str,
        artifact_type: &str,
    ) -> Result<Vec<oci_client::manifest::ImageIndexEntry>, RegistryError> {
        let reference = self.by_digest(repo, subject);
        let r = self.with_stored_auth(&reference).await?;
        let oci = self.oci()?;
        Ok(self
            .retrying(&reference, || oci.pull_referrers(&r, Some(artifact_type)))
            .await?
            .map(|index| index.manifests)
            .unwrap_or_default())
    }

    /// Stores `manifest` under `reference` (`registry/repo:tag`). Returns the digest the registry reports.
    pub(crate) async fn put_manifest(
        &self,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<String, RegistryError> {
        let dst = self.parse(reference)?;
        let auth = &self.auth().await?.auth;
        let content_type = http::HeaderValue::from_str(&manifest.media_type)
            .map_err(|_| RegistryError::Reference(manifest.media_type.clone()))?;
        let oci = self.oci()?;
        self.retrying(reference, || async {
            oci.auth(&dst, auth, RegistryOperation::Push).await?;
            oci.push_manifest_raw(&dst, manifest.bytes.clone(), content_type.clone())
                .await
        })
        .await?;
        Ok(manifest.digest.clone())
    }

    /// Every tag of `repo` (none when the repository does not exist), page by page.
    pub(crate) async fn tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        const PAGE: usize = 1000;
        let reference = self.repository(repo);
        let r = self.parse(&reference)?;
        let auth = &self.auth().await?.auth;
        let oci = self.oci()?;
        let mut tags: Vec<String> = Vec::new();
        loop {
            let last = tags.last().cloned();
            let Some(page) = self
                .retrying(&reference, || {
                    oci.list_tags(&r, auth, Some(PAGE), last.as_deref())
                })
                .await?
            else {
                return Ok(tags);
            };
            let n = page.tags.len();
            // A registry that ignores `last` would repeat the first page: stop on a tag already seen.
            let fresh: Vec<String> = page
                .tags
                .into_iter()
                .filter(|t| last.as_deref().is_none_or(|l| t.as_str() > l))
                .collect();
            let done = n < PAGE || fresh.is_empty();
            tags.extend(fresh);
            if done {
                return Ok(tags);
            }
        }
    }

    /// Deletes the manifest `digest` of `repo`, and with it every tag on it (the distribution API deletes by
    /// digest only). Returns false when it was not there. Token registries are asked for a token with the
    /// `delete` action; Basic ones get the credentials; neither is ever logged.
    pub(crate) async fn delete_manifest(
        &self,
        repo: &str,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let reference = self.by_digest(repo, digest);
        let r = self.parse(&reference)?;
        let auth = &self.auth().await?.auth;
        let response = self
            .transport
            .delete_manifest(&r, auth)
            .await
            .map_err(|source| RegistryError::Unreachable {
                host: self.registry.host().to_owned(),
                reference: reference.clone(),
                attempts: 1,
                source,
            })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let detail = || match serde_json::from_str::<LooseEnvelope>(&body) {
            Ok(envelope) => envelope.summary(),
            Err(_) => status_text(status.as_u16()),
        };
        let host = || self.registry.host().to_owned();
        match status.as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            // Distribution answers 405 UNSUPPORTED when deletes are off.
            405 => Err(RegistryError::DeleteRefused {
                host: host(),
                reference,
                detail: detail(),
            }),
            401 | 403 => Err(match &self.auth().await?.origin {
                Some(origin) => RegistryError::Rejected {
                    host: host(),
                    reference,
                    origin: origin.clone(),
                },
                None => RegistryError::NoCredentials {
                    host: host(),
                    reference,
                    looked_in: self.keychain.sources(self.registry.host()),
                },
            }),
            code => Err(RegistryError::Status {
                host: host(),
                reference,
                status: status_text(code),
                detail: detail(),
                attempts: 1,
            }),
        }
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    /// `Bearer realm="...",service="...",scope="..."`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// `Basic realm="..."`, or anything else.
    Other,
}

impl Challenge {
    fn parse(header: &str) -> Challenge {
        let Some(params) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        else {
            return Challenge::Other;
        };
        let mut realm = None;
        let mut service = None;
        let mut scope = None;
        // key="value" pairs, commas between them; values may contain commas (scopes do), never quotes.
        let mut rest = params.trim();
        while let Some((key, after)) = rest.split_once('=') {
            let key = key.trim().trim_start_matches(',').trim();
            let (value, next) = match after.strip_prefix('"') {
                Some(quoted) => match quoted.split_once('"') {
                    Some((v, next)) => (v, next),
                    None => (quoted, ""),
                },
                None => after.split_once(',').unwrap_or((after, "")),
            };
            match key {
                "realm" => realm = Some(value.to_owned()),
                "service" => service = Some(value.to_owned()),
                "scope" => scope = Some(value.to_owned()),
                _ => {}
            }
            rest = next;
        }
        match realm {
            Some(realm) => Challenge::Bearer {
                realm,
                service,
                scope,
            },
            None => Challenge::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::errors::{OciEnvelope, OciError};

    fn envelope(code: OciErrorCode) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: "m".into(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "u".into(),
        }
    }

    fn server(code: u16, message: &str) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: message.into(),
        }
    }

    // The registry's answers are real in the integration tests (directly and through the fault-injecting proxy);
    // these are the shapes other registries use for the same answers (ECR, GHCR).
    #[test]
    fn classification() {
        for e in [
            envelope(OciErrorCode::ManifestUnknown),
            envelope(OciErrorCode::NameUnknown),
            server(404, ""),
        ] {
            assert!(matches!(classify(&e), Class::NotFound), "{e}");
        }
        for e in [
            server(401, ""),
            server(403, ""),
            envelope(OciErrorCode::Denied),
        ] {
            assert!(matches!(classify(&e), Class::Unauthorized), "{e}");
        }
        for e in [server(500, ""), server(503, ""), server(429, "")] {
            assert!(matches!(classify(&e), Class::RetryStatus(_)), "{e}");
        }
        assert!(matches!(classify(&server(400, "")), Class::Status(400)));
    }

    #[test]
    fn status_details_are_one_short_line() {
        assert_eq!(status_text(500), "500 Internal Server Error");
        assert_eq!(
            status_detail(&server(
                500,
                r#"{"errors":[{"code":"UNKNOWN","message":"injected"}]}"#
            )),
            "UNKNOWN: injected"
        );
        assert_eq!(
            status_detail(&server(502, "<html>\n  bad\n gateway</html>")),
            "<html> bad gateway</html>"
        );
        assert_eq!(status_detail(&server(500, "")), "(no details)");
        assert!(status_detail(&server(500, &"x".repeat(500))).ends_with('…'));
    }

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:delete,pull""#
            ),
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:delete,pull".into()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"Bearer realm="https://r/t""#),
            Challenge::Bearer {
                realm: "https://r/t".into(),
                service: None,
                scope: None
            }
        );
        assert_eq!(Challenge::parse(r#"Basic realm="x""#), Challenge::Other);
        assert_eq!(Challenge::parse("Bearer error=\"x\""), Challenge::Other);
    }

    #[test]
    fn content_tag_is_a_valid_tag() {
        let tag = content_tag(&Digest([0xab; 32]));
        assert_eq!(tag.len(), 67);
        crate::config::validate_tag(&tag).unwrap();
    }
}
