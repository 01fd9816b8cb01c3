//! AWS ECR: authorization tokens (served as a [`Keychain`] to the registry client and, through the session, to
//! BuildKit) and repositories that must exist before a push. The token never touches disk or logs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;

use crate::auth::{AuthError, Credential, Keychain, Secret, base64_decode};

/// Refresh a token this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(15 * 60);
/// ECR tokens live 12 hours; never keep one longer than this.
const MAX_TOKEN_AGE: Duration = Duration::from_secs(11 * 3600);
/// A token whose reported expiry is already past (emulators) is reused only briefly.
const STALE_TOKEN_REUSE: Duration = Duration::from_secs(60);

/// An ECR API failure.
#[derive(Debug, thiserror::Error)]
pub enum EcrError {
    /// An API call failed.
    #[error("ECR {operation} failed: {message}")]
    Api {
        /// The operation.
        operation: &'static str,
        /// The SDK's error text (it never contains the token).
        message: String,
    },
    /// The repository does not exist and creating it is off.
    #[error(
        "ECR repository `{0}` does not exist; create it, or set `create_repositories = true` under [registry] in buildopt.toml"
    )]
    MissingRepository(String),
    /// The AWS SDK found no credentials anywhere in its default chain.
    #[error("ECR {operation}: {}", crate::aws::NO_CREDENTIALS_HINT)]
    NoCredentials {
        /// The operation that needed them.
        operation: &'static str,
    },
    /// The token is not `AWS:<password>` base64.
    #[error("ECR returned an authorization token that is not base64 `user:password`")]
    BadToken,
}

/// An ECR authorization token, split into a credential.
#[derive(Debug, Clone)]
pub struct EcrToken {
    /// `AWS` and the password.
    pub credential: Credential,
    /// When ECR says it expires.
    pub expires_at: Option<SystemTime>,
}

/// What a repository check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepositoryState {
    /// It existed; with immutable tags, moving tags like `latest` cannot be pushed.
    Existing {
        /// Tag immutability is on.
        immutable_tags: bool,
    },
    /// It was created now (mutable tags).
    Created,
}

/// The two ECR calls buildopt makes.
#[tonic::async_trait]
pub trait EcrApi: Send + Sync {
    /// GetAuthorizationToken.
    async fn authorization_token(&self) -> Result<EcrToken, EcrError>;
    /// DescribeRepositories, then CreateRepository when missing and `create` is set.
    async fn ensure_repository(
        &self,
        name: &str,
        create: bool,
    ) -> Result<RepositoryState, EcrError>;
}

/// [`EcrApi`] over the AWS SDK with the default credential chain.
#[derive(Debug, Clone)]
pub struct AwsEcr {
    client: aws_sdk_ecr::Client,
}

/// The region in `<account>.dkr.ecr.<region>.amazonaws.com`.
pub fn region_of_host(host: &str) -> Option<String> {
    let parts: Vec<&str> = host.split('.').collect();
    (parts.len() >= 6 && parts[1] == "dkr" && parts[2].starts_with("ecr"))
        .then(|| parts[3].to_owned())
}

impl AwsEcr {
    /// A client for `region` (else the SDK's settings'), at `endpoint` when given (emulators, tests); without it,
    /// the SDK's standard settings say where ECR is (`AWS_ENDPOINT_URL_ECR`, `AWS_ENDPOINT_URL`, the profile's
    /// `endpoint_url`), else AWS.
    pub async fn new(region: Option<String>, endpoint: Option<String>) -> AwsEcr {
        let region = match region {
            Some(r) => crate::aws::RegionSource::Fixed(r),
            None => crate::aws::RegionSource::Default { fallback: None },
        };
        AwsEcr {
            client: aws_sdk_ecr::Client::new(&crate::aws::sdk_config(region, endpoint).await),
        }
    }
}

/// One line for an SDK failure (see [`crate::aws::failure`]), and a missing credential chain as its own error.
fn api_error<E, R>(operation: &'static str, e: aws_sdk_ecr::error::SdkError<E, R>) -> EcrError
where
    E: aws_sdk_ecr::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match crate::aws::failure(&e) {
        crate::aws::Failure::NoCredentials => EcrError::NoCredentials { operation },
        crate::aws::Failure::Service(message) | crate::aws::Failure::Other(message) => {
            EcrError::Api { operation, message }
        }
    }
}

/// One image of a repository, as DescribeImages lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EcrImage {
    /// `sha256:...`.
    pub(crate) digest: String,
    /// Its tags.
    pub(crate) tags: Vec<String>,
    /// When it was pushed, as ECR says.
    pub(crate) pushed_at: Option<SystemTime>,
}

/// BatchDeleteImage takes at most this many image IDs per call.
const DELETE_BATCH: usize = 100;

/// The calls of `buildopt gc` and `buildopt ecr-lifecycle`, on the SDK only: they run against real ECR (or moto),
/// never a fake.
impl AwsEcr {
    /// Every image of `repository`, with its tags and push time (DescribeImages, all pages).
    pub(crate) async fn images(&self, repository: &str) -> Result<Vec<EcrImage>, EcrError> {
        let mut images = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .client
                .describe_images()
                .repository_name(repository)
                .set_next_token(next.take())
                .max_results(1000)
                .send()
                .await
                .map_err(|e| {
                    if e.as_service_error()
                        .is_some_and(|s| s.is_repository_not_found_exception())
                    {
                        EcrError::MissingRepository(repository.to_owned())
                    } else {
                        api_error("DescribeImages", e)
                    }
                })?;
            images.extend(out.image_details().iter().filter_map(|d| {
                Some(EcrImage {
                    digest: d.image_digest()?.to_owned(),
                    tags: d.image_tags().to_vec(),
                    pushed_at: d
                        .image_pushed_at()
                        .and_then(|t| SystemTime::try_from(*t).ok()),
                })
            }));
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => return Ok(images),
            }
        }
    }

    /// Removes `tags` from `repository` (BatchDeleteImage by tag: ECR deletes an image only with its last tag).
    /// Returns the tags it could not remove, each with ECR's reason.
    pub(crate) async fn delete_tags(
        &self,
        repository: &str,
        tags: &[String],
    ) -> Result<Vec<(String, String)>, EcrError> {
        use aws_sdk_ecr::types::ImageIdentifier;
        let mut failed = Vec::new();
        for batch in tags.chunks(DELETE_BATCH) {
            let ids = batch
                .iter()
                .map(|t| ImageIdentifier::builder().image_tag(t).build())
                .collect();
            let out = self
                .client
                .batch_delete_image()
                .repository_name(repository)
                .set_image_ids(Some(ids))
                .send()
                .await
                .map_err(|e| api_error("BatchDeleteImage", e))?;
            for f in out.failures() {
                let tag = f
                    .image_id()
                    .and_then(|i| i.image_tag())
                    .unwrap_or_default()
                    .to_owned();
                let code = f.failure_code().map(|c| c.as_str().to_owned());
                let reason = match (code, f.failure_reason()) {
                    (Some(c), Some(r)) => format!("{c}: {r}"),
                    (Some(c), None) => c,
                    (None, Some(r)) => r.to_owned(),
                    (None, None) => "no reason given".to_owned(),
                };
                failed.push((tag, reason));
            }
        }
        Ok(failed)
    }

    /// The lifecycle policy text of `repository`, or None when it has none.
    pub(crate) async fn lifecycle_policy(
        &self,
        repository: &str,
    ) -> Result<Option<String>, EcrError> {
        match self
            .client
            .get_lifecycle_policy()
            .repository_name(repository)
            .send()
            .await
        {
            Ok(out) => Ok(out.lifecycle_policy_text().map(str::to_owned)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_lifecycle_policy_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_not_found_exception()) =>
            {
                Err(EcrError::MissingRepository(repository.to_owned()))
            }
            Err(e) => Err(api_error("GetLifecyclePolicy", e)),
        }
    }

    /// Sets the lifecycle policy of `repository` to `text`.
    pub(crate) async fn put_lifecycle_policy(
        &self,
        repository: &str,
        text: &str,
    ) -> Result<(), EcrError> {
        self.client
            .put_lifecycle_policy()
            .repository_name(repository)
            .lifecycle_policy_text(text)
            .send()
            .await
            .map_err(|e| api_error("PutLifecyclePolicy", e))?;
        Ok(())
    }
}

#[tonic::async_trait]
impl EcrApi for AwsEcr {
    async fn authorization_token(&self) -> Result<EcrToken, EcrError> {
        let out = self
            .client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| api_error("GetAuthorizationToken", e))?;
        let data = out.authorization_data().first().ok_or(EcrError::BadToken)?;
        let token = data.authorization_token().ok_or(EcrError::BadToken)?;
        let decoded = base64_decode(token)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(EcrError::BadToken)?;
        let (user, password) = decoded.split_once(':').ok_or(EcrError::BadToken)?;
        let expires_at = data
            .expires_at()
            .and_then(|t| SystemTime::try_from(*t).ok());
        Ok(EcrToken {
            credential: Credential {
                username: user.to_owned(),
                secret: Secret::new(password),
                source: "an ECR authorization token (GetAuthorizationToken)".to_owned(),
            },
            expires_at,
        })
    }

    async fn ensure_repository(
        &self,
        name: &str,
        create: bool,
    ) -> Result<RepositoryState, EcrError> {
        use aws_sdk_ecr::types::ImageTagMutability;
        match self
            .client
            .describe_repositories()
            .repository_names(name)
            .send()
            .await
        {
            Ok(out) => {
                let immutable = out
                    .repositories()
                    .first()
                    .and_then(|r| r.image_tag_mutability())
                    .is_some_and(|m| {
                        matches!(
                            m,
                            ImageTagMutability::Immutable
                                | ImageTagMutability::ImmutableWithExclusion
                        )
                    });
                Ok(RepositoryState::Existing {
                    immutable_tags: immutable,
                })
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_repository_not_found_exception()) =>
            {
                if !create {
                    return Err(EcrError::MissingRepository(name.to_owned()));
                }
                self.client
                    .create_repository()
                    .repository_name(name)
                    .image_tag_mutability(ImageTagMutability::Mutable)
                    .send()
                    .await
                    .map_err(|e| api_error("CreateRepository", e))?;
                Ok(RepositoryState::Created)
            }
            Err(e) => Err(api_error("DescribeRepositories", e)),
        }
    }
}

/// Serves the ECR token for one registry host, fetched on first use and refreshed before it expires.
pub struct EcrKeychain {
    api: Arc<dyn EcrApi>,
    host: String,
    cached: Mutex<Option<(Credential, SystemTime)>>,
}

impl EcrKeychain {
    /// A keychain answering for `host` with tokens from `api`.
    pub fn new(api: Arc<dyn EcrApi>, host: &str) -> EcrKeychain {
        EcrKeychain {
            api,
            host: host.to_owned(),
            cached: Mutex::new(None),
        }
    }
}

#[tonic::async_trait]
impl Keychain for EcrKeychain {
    async fn resolve(&self, host: &str) -> Result<Option<Credential>, AuthError> {
        if host != self.host {
            return Ok(None);
        }
        let mut cached = self.cached.lock().await;
        let now = SystemTime::now();
        if let Some((cred, refresh_at)) = &*cached
            && now < *refresh_at
        {
            return Ok(Some(cred.clone()));
        }
        let token = self
            .api
            .authorization_token()
            .await
            .map_err(|e| AuthError::Ecr(Box::new(e)))?;
        let refresh_at = match token.expires_at {
            Some(exp) if exp > now + REFRESH_MARGIN => {
                (exp - REFRESH_MARGIN).min(now + MAX_TOKEN_AGE)
            }
            Some(_) => now + STALE_TOKEN_REUSE,
            None => now + MAX_TOKEN_AGE,
        };
        *cached = Some((token.credential.clone(), refresh_at));
        Ok(Some(token.credential))
    }

    fn sources(&self, host: &str) -> Vec<String> {
        if host == self.host {
            vec!["ECR (GetAuthorizationToken with the AWS SDK's credentials)".to_owned()]
        } else {
            Vec::new()
        }
    }
}

impl crate::error::Classify for EcrError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A token source whose expiry the test controls: real ECR cannot be made to hand out a token that expires in
    /// minutes, so this is the one fake here.
    struct Tokens {
        calls: AtomicUsize,
        expires_in: Duration,
    }

    #[tonic::async_trait]
    impl EcrApi for Tokens {
        async fn authorization_token(&self) -> Result<EcrToken, EcrError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(EcrToken {
                credential: Credential {
                    username: "AWS".into(),
                    secret: Secret::new(format!("pw{n}")),
                    source: "test".into(),
                },
                expires_at: Some(SystemTime::now() + self.expires_in),
            })
        }
        async fn ensure_repository(&self, _: &str, _: bool) -> Result<RepositoryState, EcrError> {
            Ok(RepositoryState::Created)
        }
    }

    #[tokio::test]
    async fn tokens_are_cached_until_shortly_before_expiry() {
        let long = Arc::new(Tokens {
            calls: AtomicUsize::new(0),
            expires_in: Duration::from_secs(12 * 3600),
        });
        let k = EcrKeychain::new(long.clone(), "1.dkr.ecr.x.amazonaws.com");
        let a = k
            .resolve("1.dkr.ecr.x.amazonaws.com")
            .await
            .unwrap()
            .unwrap();
        let b = k
            .resolve("1.dkr.ecr.x.amazonaws.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(long.calls.load(Ordering::SeqCst), 1);
        assert!(k.resolve("other.host").await.unwrap().is_none());

        // A token about to expire is replaced on next use.
        let short = Arc::new(Tokens {
            calls: AtomicUsize::new(0),
            expires_in: Duration::from_secs(60),
        });
        let k = EcrKeychain::new(short.clone(), "h");
        let a = k.resolve("h").await.unwrap().unwrap();
        *k.cached.lock().await = Some((a.clone(), SystemTime::now() - Duration::from_secs(1)));
        let b = k.resolve("h").await.unwrap().unwrap();
        assert_ne!(a.secret, b.secret);
    }

    #[test]
    fn regions_from_hosts() {
        assert_eq!(
            region_of_host("123456789012.dkr.ecr.eu-central-1.amazonaws.com").as_deref(),
            Some("eu-central-1")
        );
        assert_eq!(region_of_host("127.0.0.1:5002"), None);
    }
}
