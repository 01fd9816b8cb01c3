//! The registry as the source of truth: does an image for these inputs exist, and make tags point at it. Manifests
//! only; no blob is ever transferred here. This is the one place that decides what a "not found" looks like.

pub mod ecr;

use std::sync::Arc;
use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::auth::Keychain;
use crate::config::Registry;
use crate::hash::Digest;

/// Attempts for a request that failed with a 5xx or a transport error.
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Manifest media types we accept, so the digest is the one BuildKit pushed.
const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The tag under which the image built from inputs `digest` is kept: `bo-` and the 64 hex digits.
pub fn content_tag(digest: &Digest) -> String {
    format!("bo-{digest}")
}

/// A registry request that failed for good.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 401/403: the credentials are missing, wrong or expired.
    #[error(
        "registry {host} rejected the credentials for {reference}; check `docker login` / the docker config, or for ECR the AWS credentials (tokens expire after 12 hours)"
    )]
    Unauthorized {
        /// Registry host.
        host: String,
        /// What was asked for.
        reference: String,
    },
    /// Connection refused, DNS, TLS, timeouts, 5xx: after retries.
    #[error(
        "registry {host} did not answer for {reference} after {ATTEMPTS} attempts; check that it is reachable (and `insecure` for plain http)"
    )]
    Unreachable {
        /// Registry host.
        host: String,
        /// What was asked for.
        reference: String,
        /// The last error.
        #[source]
        source: OciDistributionError,
    },
    /// Anything else the registry said.
    #[error("registry request for {reference} failed")]
    Other {
        /// What was asked for.
        reference: String,
        /// The error.
        #[source]
        source: OciDistributionError,
    },
    /// Credentials could not be resolved.
    #[error("cannot get credentials for {host}")]
    Credentials {
        /// Registry host.
        host: String,
        /// Why.
        #[source]
        source: crate::auth::AuthError,
    },
    /// The reference is malformed.
    #[error("invalid image reference `{0}`")]
    Reference(String),
}

impl RegistryError {
    /// Setup problems (credentials, reachability) rather than a failure of one service.
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            RegistryError::Unauthorized { .. }
                | RegistryError::Unreachable { .. }
                | RegistryError::Credentials { .. }
        )
    }
}

enum Class {
    NotFound,
    Unauthorized,
    Retry,
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
                )
            }) {
                Class::NotFound
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                Class::Unauthorized
            } else {
                Class::Fatal
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => Class::NotFound,
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        }
        | OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Class::Unauthorized,
        OciDistributionError::ServerError { code, .. } if *code >= 500 || *code == 429 => {
            Class::Retry
        }
        OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => Class::Retry,
        _ => Class::Fatal,
    }
}

/// Registry access for one `[registry]`.
#[derive(Clone)]
pub struct RegistryClient {
    oci: Client,
    registry: Registry,
    keychain: Arc<dyn Keychain>,
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
    pub fn new(
        registry: &Registry,
        keychain: Arc<dyn Keychain>,
    ) -> Result<RegistryClient, RegistryError> {
        let config = oci_client::client::ClientConfig {
            protocol: if registry.insecure {
                oci_client::client::ClientProtocol::HttpsExcept(vec![registry.host().to_owned()])
            } else {
                oci_client::client::ClientProtocol::Https
            },
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        let oci = Client::try_from(config).map_err(|source| RegistryError::Other {
            reference: registry.url.clone(),
            source,
        })?;
        Ok(RegistryClient {
            oci,
            registry: registry.clone(),
            keychain,
        })
    }

    /// `registry/repo:tag`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        self.registry.reference(repo, tag)
    }

    async fn auth(&self) -> Result<RegistryAuth, RegistryError> {
        let host = self.registry.host();
        match self.keychain.resolve(host).await {
            Ok(Some(c)) => Ok(RegistryAuth::Basic(
                c.username,
                c.secret.expose().to_owned(),
            )),
            Ok(None) => Ok(RegistryAuth::Anonymous),
            Err(source) => Err(RegistryError::Credentials {
                host: host.to_owned(),
                source,
            }),
        }
    }

    fn parse(&self, reference: &str) -> Result<Reference, RegistryError> {
        reference
            .parse()
            .map_err(|_| RegistryError::Reference(reference.to_owned()))
    }

    /// Runs `op` with bounded retries on transient errors, mapping the outcome through the one classification.
    async fn retrying<T, F, Fut>(&self, reference: &str, op: F) -> Result<Option<T>, RegistryError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(Some(v)),
                Err(e) => match classify(&e) {
                    Class::NotFound => return Ok(None),
                    Class::Unauthorized => {
                        return Err(RegistryError::Unauthorized {
                            host: self.registry.host().to_owned(),
                            reference: reference.to_owned(),
                        });
                    }
                    Class::Retry if attempt < ATTEMPTS => {
                        tracing::debug!(
                            "registry request for {reference} failed (attempt {attempt}): {e}"
                        );
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                        attempt += 1;
                    }
                    Class::Retry => {
                        return Err(RegistryError::Unreachable {
                            host: self.registry.host().to_owned(),
                            reference: reference.to_owned(),
                            source: e,
                        });
                    }
                    Class::Fatal => {
                        return Err(RegistryError::Other {
                            reference: reference.to_owned(),
                            source: e,
                        });
                    }
                },
            }
        }
    }

    /// The manifest digest behind `reference` (`registry/repo:tag`), or None when there is no such manifest or
    /// repository.
    pub async fn lookup(&self, reference: &str) -> Result<Option<String>, RegistryError> {
        let r = self.parse(reference)?;
        let auth = self.auth().await?;
        self.retrying(reference, || self.oci.fetch_manifest_digest(&r, &auth))
            .await
    }

    /// Points `to` (`registry/repo:tag`) at the manifest `from` (`registry/repo:tag` or `@digest`) by copying the
    /// manifest; no blob moves. Returns the manifest digest.
    pub async fn retag(&self, from: &str, to: &str) -> Result<String, RegistryError> {
        let (src, dst) = (self.parse(from)?, self.parse(to)?);
        let auth = self.auth().await?;
        let Some((body, digest)) = self
            .retrying(from, || self.oci.pull_manifest_raw(&src, &auth, ACCEPT))
            .await?
        else {
            return Err(RegistryError::Other {
                reference: from.to_owned(),
                source: OciDistributionError::ImageManifestNotFoundError(from.to_owned()),
            });
        };
        let media_type = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("mediaType")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| ACCEPT[0].to_owned());
        let content_type = http::HeaderValue::from_str(&media_type)
            .map_err(|_| RegistryError::Reference(media_type.clone()))?;
        self.retrying(to, || async {
            self.oci.auth(&dst, &auth, RegistryOperation::Push).await?;
            self.oci
                .push_manifest_raw(&dst, body.clone(), content_type.clone())
                .await
        })
        .await?;
        Ok(digest)
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
                    message: String::new(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "u".into(),
        }
    }

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: String::new(),
        }
    }

    // The registry's answers are real in the integration tests; these are the shapes other registries use for the
    // same answers (ECR, GHCR), which the loopback registry cannot be made to produce.
    #[test]
    fn not_found_shapes_are_absent() {
        for e in [
            envelope(OciErrorCode::ManifestUnknown),
            envelope(OciErrorCode::NameUnknown),
            server(404),
        ] {
            assert!(matches!(classify(&e), Class::NotFound), "{e}");
        }
        for e in [server(401), server(403), envelope(OciErrorCode::Denied)] {
            assert!(matches!(classify(&e), Class::Unauthorized), "{e}");
        }
        for e in [server(500), server(503), server(429)] {
            assert!(matches!(classify(&e), Class::Retry), "{e}");
        }
        assert!(matches!(classify(&server(400)), Class::Fatal));
    }

    #[test]
    fn content_tag_is_a_valid_tag() {
        let tag = content_tag(&Digest([0xab; 32]));
        assert_eq!(tag.len(), 67);
        crate::config::validate_tag(&tag).unwrap();
    }
}
