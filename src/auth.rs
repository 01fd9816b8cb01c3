//! Registry credentials: a [`Keychain`] resolves a registry host to a username and secret. Secrets are wrapped so
//! they cannot be printed by accident.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

/// A secret string whose `Debug` and `Display` are redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A username and its secret for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// User name (`AWS` for ECR).
    pub username: String,
    /// Password or token.
    pub secret: Secret,
}

/// Why credentials could not be found.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// ECR did not hand out a token.
    #[error("cannot get an ECR authorization token: {0}")]
    Ecr(String),
    /// The docker config could not be read or parsed.
    #[error("cannot use docker config {}: {reason}", path.display())]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the secret).
        reason: String,
    },
}

/// A source of registry credentials.
#[tonic::async_trait]
pub trait Keychain: Send + Sync {
    /// Credentials for `host` (`host[:port]`), or None for anonymous access.
    async fn resolve(&self, host: &str) -> Result<Option<Credential>, AuthError>;
}

/// Fixed credentials per host.
#[derive(Debug, Clone, Default)]
pub struct StaticKeychain(pub HashMap<String, Credential>);

#[tonic::async_trait]
impl Keychain for StaticKeychain {
    async fn resolve(&self, host: &str) -> Result<Option<Credential>, AuthError> {
        Ok(self.0.get(host).cloned())
    }
}

/// Docker's `config.json` (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`): its `auths` entries.
#[derive(Debug, Clone)]
pub struct DockerConfigKeychain {
    path: Option<PathBuf>,
}

impl DockerConfigKeychain {
    /// The keychain of the current user's docker config, if there is one.
    pub fn from_env() -> DockerConfigKeychain {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        DockerConfigKeychain {
            path: dir.map(|d| d.join("config.json")),
        }
    }
}

#[tonic::async_trait]
impl Keychain for DockerConfigKeychain {
    async fn resolve(&self, host: &str) -> Result<Option<Credential>, AuthError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let bytes = match tokio::fs::read(path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(AuthError::DockerConfig {
                    path: path.clone(),
                    reason: e.to_string(),
                });
            }
        };
        let bad = |reason: &str| AuthError::DockerConfig {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let config: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| bad("not valid JSON"))?;
        let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else {
            return Ok(None);
        };
        // Keys may be bare hosts or URLs (`https://index.docker.io/v1/`).
        let entry = auths.iter().find(|(k, _)| {
            let k = k
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            k.split('/').next() == Some(host)
        });
        let Some((_, entry)) = entry else {
            return Ok(None);
        };
        let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
            return Ok(None);
        };
        let decoded = base64_decode(auth).ok_or_else(|| bad("an `auth` entry is not base64"))?;
        let decoded =
            String::from_utf8(decoded).map_err(|_| bad("an `auth` entry is not UTF-8"))?;
        let (user, secret) = decoded
            .split_once(':')
            .ok_or_else(|| bad("an `auth` entry is not `user:password`"))?;
        Ok(Some(Credential {
            username: user.to_owned(),
            secret: Secret::new(secret),
        }))
    }
}

/// Tries keychains in order; the first that knows the host answers.
pub struct MultiKeychain(pub Vec<Box<dyn Keychain>>);

#[tonic::async_trait]
impl Keychain for MultiKeychain {
    async fn resolve(&self, host: &str) -> Result<Option<Credential>, AuthError> {
        for k in &self.0 {
            if let Some(c) = k.resolve(host).await? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}

/// Standard base64 (with or without padding).
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim().trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        match chunk.len() {
            4 => out.extend_from_slice(&bytes[1..4]),
            3 => out.extend_from_slice(&bytes[1..3]),
            2 => out.push(bytes[1]),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let c = Credential {
            username: "AWS".into(),
            secret: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.secret.to_string(), "<redacted>");
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("QVdTOnB3").unwrap(), b"AWS:pw");
        assert_eq!(base64_decode("QVdTOnB3ZA==").unwrap(), b"AWS:pwd");
        assert!(base64_decode("!!").is_none());
    }

    #[tokio::test]
    async fn docker_config_auths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"127.0.0.1:5002":{"auth":"QVdTOnB3"},"https://index.docker.io/v1/":{"auth":"eDp5"}}}"#,
        )
        .unwrap();
        let k = DockerConfigKeychain {
            path: Some(dir.path().join("config.json")),
        };
        let c = k.resolve("127.0.0.1:5002").await.unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.secret.expose()), ("AWS", "pw"));
        assert!(k.resolve("index.docker.io").await.unwrap().is_some());
        assert!(k.resolve("other").await.unwrap().is_none());
    }
}
