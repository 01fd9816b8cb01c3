//! The AWS SDK's configuration, shared by the ECR and ECS clients, and SDK failures in one line.
//!
//! Credentials, region and endpoints come from the SDK's standard settings: the environment (`AWS_PROFILE`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_ECR`, `AWS_ENDPOINT_URL_ECS`, ...), the shared config and
//! credentials files, SSO, web identity and instance roles. An endpoint given in code (`--ecr-endpoint`,
//! `[registry] ecr_endpoint`) wins over all of them, as the SDK orders them.

use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};

/// Where a client's region comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RegionSource {
    /// This region (an ECR registry's host names it).
    Fixed(String),
    /// The SDK's own settings (`AWS_REGION`, the profile), else `fallback`.
    Default {
        /// The region when the SDK's settings name none.
        fallback: Option<String>,
    },
}

/// The SDK configuration for one client, with `endpoint` (when given) overriding the standard settings.
pub(crate) async fn sdk_config(
    region: RegionSource,
    endpoint: Option<String>,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    loader = match region {
        RegionSource::Fixed(r) => loader.region(Region::new(r)),
        RegionSource::Default { fallback } => loader
            .region(RegionProviderChain::default_provider().or_else(fallback.map(Region::new))),
    };
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

/// What an SDK call's failure comes down to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The service answered with an error: its code and message (`ServiceNotFoundException: Service not found.`).
    Service(String),
    /// The credential chain found nothing (a rejected credential is a service error).
    NoCredentials,
    /// Anything else (no answer, a TLS error, a timeout): the distinct messages of the cause chain.
    Other(String),
}

/// One line for an SDK failure: never a `Debug` dump, and never a secret (the SDK's messages contain none).
pub(crate) fn failure<E, R>(e: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    if let Some(service) = e.as_service_error() {
        return Failure::Service(match (service.code(), service.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => service.to_string(),
        });
    }
    let mut parts: Vec<String> = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    let message = parts.join(": ");
    // The service never answered, and the reason was the credential chain.
    if message.contains("credentials") {
        return Failure::NoCredentials;
    }
    Failure::Other(message)
}

/// Where the SDK looked for credentials, and what to do: for errors that say none were found.
pub(crate) const NO_CREDENTIALS_HINT: &str = "no AWS credentials found (looked in the environment, the shared config and credentials files, SSO, web identity, ECS and EC2 instance metadata); set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run `aws sso login`";
