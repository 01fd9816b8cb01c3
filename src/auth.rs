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

/// A username and its secret for one registry, and where they came from (for error messages; never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// User name (`AWS` for ECR).
    pub username: String,
    /// Password or token.
    pub secret: Secret,
    /// Where the credential was found, e.g. `docker config /root/.docker/config.json (auths)`.
    pub source: String,
}

/// Why credentials could not be found.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// ECR did not hand out a token (the ECR error says what to do).
    #[error(transparent)]
    Ecr(Box<dyn std::error::Error + Send + Sync>),
    /// The docker config could not be read or parsed.
    #[error("cannot use docker config {}: {reason}", path.display())]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the secret).
        reason: String,
    },
}

impl crate::error::Classify for AuthError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Usage
    }
}

/// A source of registry credentials.
#[tonic::async_trait]
pub trait Keychain: Send + Sync {
    /// Credentials for `host` (`host[:port]`), or None for anonymous access.
    async fn resolve(&self, host: &str) -> Result<Option<Credential>, AuthError>;

    /// Where this keychain looks for `host`'s credentials, for "none found" messages.
    fn sources(&self, host: &str) -> Vec<String>;
}

/// Fixed credentials per host (the session's tests).
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub struct StaticKeychain(pub HashMap<String, Credential>);

#[cfg(test)]
#[tonic::async_trait]
impl Keychain for StaticKeychain {
    async fn resolve(&self, host: &str) -> Result<Option<Credential>, AuthError> {
        Ok(self.0.get(host).cloned())
    }

    fn sources(&self, _: &str) -> Vec<String> {
        vec!["fixed credentials".to_owned()]
    }
}

/// Docker's `config.json` (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`): `credHelpers`, `credsStore`
/// and `auths`, as the docker CLI reads them. Each host is resolved once per run: a credential helper is a program,
/// and a build asks for the same host many times.
#[derive(Debug)]
pub struct DockerConfigKeychain {
    path: Option<PathBuf>,
    /// Where `docker-credential-*` programs are; None: `$PATH`, as for the docker CLI.
    helpers_dir: Option<PathBuf>,
    resolved: tokio::sync::Mutex<HashMap<String, Option<Credential>>>,
    /// Why the config could not be used, once it was found unusable (it is then ignored).
    unusable: std::sync::Mutex<Option<String>>,
}

impl DockerConfigKeychain {
    /// The keychain of the current user's docker config, if there is one.
    pub fn from_env() -> DockerConfigKeychain {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        DockerConfigKeychain::at(dir.map(|d| d.join("config.json")), None)
    }

    fn at(path: Option<PathBuf>, helpers_dir: Option<PathBuf>) -> DockerConfigKeychain {
        DockerConfigKeychain {
            path,
            helpers_dir,
            resolved: tokio::sync::Mutex::new(HashMap::new()),
            unusable: std::sync::Mutex::new(None),
        }
    }

    /// Reads the config; an unreadable or malformed one is reported once and then treated as absent, so that
    /// anonymous registries keep working.
    async fn config(&self, path: &std::path::Path) -> Option<serde_json::Value> {
        let problem = match tokio::fs::read(path).await {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(v) => return Some(v),
                Err(e) => format!("not valid JSON ({e})"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => e.to_string(),
        };
        let mut unusable = self.unusable.lock().unwrap_or_else(|p| p.into_inner());
        if unusable.is_none() {
            tracing::warn!(
                "ignoring docker config {}: {problem}; registries that need its credentials will refuse access",
                path.display()
            );
            *unusable = Some(problem);
        }
        None
    }

    async fn lookup(&self, host: &str) -> Result<Option<Credential>, AuthError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let Some(config) = self.config(path).await else {
            return Ok(None);
        };
        let bad = |reason: String| AuthError::DockerConfig {
            path: path.clone(),
            reason,
        };
        // As the docker CLI: a per-registry credential helper, else the default store, else `auths`.
        let helper = config
            .get("credHelpers")
            .and_then(|h| h.as_object())
            .and_then(|h| h.iter().find(|(k, _)| key_host(k) == host))
            .and_then(|(_, v)| v.as_str())
            .or_else(|| config.get("credsStore").and_then(|v| v.as_str()))
            .filter(|h| !h.is_empty());
        if let Some(helper) = helper {
            return credential_helper(self.helpers_dir.as_deref(), helper, host)
                .await
                .map_err(bad);
        }
        let entry = config
            .get("auths")
            .and_then(|a| a.as_object())
            .and_then(|a| a.iter().find(|(k, _)| key_host(k) == host));
        let Some(auth) = entry
            .and_then(|(_, e)| e.get("auth"))
            .and_then(|a| a.as_str())
        else {
            return Ok(None);
        };
        let decoded = base64_decode(auth)
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| {
                bad(format!(
                    "the `auth` entry for {host} is not base64 of UTF-8 text"
                ))
            })?;
        let (user, secret) = decoded.split_once(':').ok_or_else(|| {
            bad(format!(
                "the `auth` entry for {host} is not `user:password`"
            ))
        })?;
        Ok(Some(Credential {
            username: user.to_owned(),
            secret: Secret::new(secret),
            source: format!("docker config {} (auths)", path.display()),
        }))
    }
}

#[tonic::async_trait]
impl Keychain for DockerConfigKeychain {
    async fn resolve(&self, host: &str) -> Result<Option<Credential>, AuthError> {
        let mut resolved = self.resolved.lock().await;
        if let Some(known) = resolved.get(host) {
            return Ok(known.clone());
        }
        let found = self.lookup(host).await?;
        resolved.insert(host.to_owned(), found.clone());
        Ok(found)
    }

    fn sources(&self, _: &str) -> Vec<String> {
        let Some(path) = &self.path else {
            return vec!["a docker config (neither $DOCKER_CONFIG nor $HOME is set)".to_owned()];
        };
        let unusable = self.unusable.lock().unwrap_or_else(|p| p.into_inner());
        vec![match &*unusable {
            Some(problem) => format!("docker config {} (unusable: {problem})", path.display()),
            None => format!("docker config {}", path.display()),
        }]
    }
}

/// The host of a docker config key: keys may be bare hosts or URLs (`https://index.docker.io/v1/`).
fn key_host(key: &str) -> &str {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    k.split('/').next().unwrap_or(k)
}

/// Runs `docker-credential-<helper> get` with the host on stdin, as the docker CLI does. "Not found" is anonymous.
async fn credential_helper(
    dir: Option<&std::path::Path>,
    helper: &str,
    host: &str,
) -> Result<Option<Credential>, String> {
    use tokio::io::AsyncWriteExt;
    let program = format!("docker-credential-{helper}");
    let exe = dir.map_or_else(|| PathBuf::from(&program), |d| d.join(&program));
    let mut child = tokio::process::Command::new(exe)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run credential helper `{program}`: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(host.as_bytes())
            .await
            .map_err(|e| format!("`{program}`: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("`{program}`: {e}"))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        // The helper's own words, never its stdout on success (that holds the secret).
        return Err(format!(
            "credential helper `{program}` failed for {host}: {}",
            msg.trim()
        ));
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct HelperOutput {
        username: String,
        secret: String,
    }
    let parsed: HelperOutput = serde_json::from_slice(&out.stdout).map_err(|_| {
        format!("credential helper `{program}` did not print {{\"Username\", \"Secret\"}} JSON")
    })?;
    Ok(Some(Credential {
        username: parsed.username,
        secret: Secret::new(parsed.secret),
        source: format!("credential helper `{program}`"),
    }))
}

/// Credentials from the environment for one registry host: `BUILDOPT_REGISTRY_USERNAME` and
/// `BUILDOPT_REGISTRY_PASSWORD` (both must be set).
#[derive(Debug, Clone)]
pub struct EnvKeychain {
    host: String,
    credential: Option<Credential>,
}

/// The environment variables [`EnvKeychain`] reads.
pub const ENV_USERNAME: &str = "BUILDOPT_REGISTRY_USERNAME";
/// See [`ENV_USERNAME`].
pub const ENV_PASSWORD: &str = "BUILDOPT_REGISTRY_PASSWORD";

impl EnvKeychain {
    /// Reads the environment, answering for `host`.
    pub fn from_env(host: &str) -> EnvKeychain {
        let credential = match (std::env::var(ENV_USERNAME), std::env::var(ENV_PASSWORD)) {
            (Ok(u), Ok(p)) if !u.is_empty() && !p.is_empty() => Some(Credential {
                username: u,
                secret: Secret::new(p),
                source: format!("{ENV_USERNAME} and {ENV_PASSWORD}"),
            }),
            _ => None,
        };
        EnvKeychain {
            host: host.to_owned(),
            credential,
        }
    }
}

#[tonic::async_trait]
impl Keychain for EnvKeychain {
    async fn resolve(&self, host: &str) -> Result<Option<Credential>, AuthError> {
        Ok(self.credential.clone().filter(|_| host == self.host))
    }

    fn sources(&self, host: &str) -> Vec<String> {
        if host == self.host {
            vec![format!("{ENV_USERNAME}/{ENV_PASSWORD}")]
        } else {
            Vec::new()
        }
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

    fn sources(&self, host: &str) -> Vec<String> {
        self.0.iter().flat_map(|k| k.sources(host)).collect()
    }
}

/// Standard base64, with or without padding (docker configs and ECR tokens use both).
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim().trim_end_matches('='))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let c = Credential {
            username: "AWS".into(),
            secret: Secret::new("hunter2"),
            source: "test".into(),
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
        let k = DockerConfigKeychain::at(Some(dir.path().join("config.json")), None);
        let c = k.resolve("127.0.0.1:5002").await.unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.secret.expose()), ("AWS", "pw"));
        assert!(k.resolve("index.docker.io").await.unwrap().is_some());
        assert!(k.resolve("other").await.unwrap().is_none());
    }

    /// A real credential helper program (the protocol is stdin host -> stdout JSON), run once per host.
    #[tokio::test]
    async fn docker_config_credential_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-buildopttest");
        let calls = dir.path().join("calls");
        std::fs::write(
            &helper,
            format!("#!/bin/sh\necho call >> {}\nread host\nif [ \"$host\" = reg.example ]; then printf '{{\"ServerURL\":\"%s\",\"Username\":\"u\",\"Secret\":\"s3\"}}' \"$host\"; else echo 'credentials not found in native keychain'; exit 1; fi\n", calls.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"credHelpers":{"reg.example":"buildopttest"},"auths":{"reg.example":{"auth":"eDp5"}}}"#).unwrap();
        let k = || {
            DockerConfigKeychain::at(
                Some(dir.path().join("config.json")),
                Some(dir.path().to_owned()),
            )
        };
        let keychain = k();
        for _ in 0..5 {
            let c = keychain.resolve("reg.example").await.unwrap().unwrap();
            assert_eq!((c.username.as_str(), c.secret.expose()), ("u", "s3"));
            assert_eq!(
                c.source,
                "credential helper `docker-credential-buildopttest`"
            );
        }
        assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 1);

        std::fs::write(
            dir.path().join("config.json"),
            r#"{"credsStore":"buildopttest"}"#,
        )
        .unwrap();
        assert!(k().resolve("other.example").await.unwrap().is_none());
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"credsStore":"missing-helper"}"#,
        )
        .unwrap();
        let err = k().resolve("x").await.unwrap_err().to_string();
        assert!(
            err.contains("cannot run credential helper `docker-credential-missing-helper`"),
            "{err}"
        );
    }

    /// An unusable docker config must not break registries that need no credentials.
    #[tokio::test]
    async fn unusable_docker_config_is_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::create_dir(&path).unwrap(); // reading it fails (EISDIR)
        let k = DockerConfigKeychain::at(Some(path.clone()), None);
        assert!(k.resolve("127.0.0.1:5000").await.unwrap().is_none());
        let sources = k.sources("127.0.0.1:5000").join("; ");
        assert!(sources.contains("(unusable: "), "{sources}");
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, "{not json").unwrap();
        let k = DockerConfigKeychain::at(Some(path), None);
        assert!(k.resolve("127.0.0.1:5000").await.unwrap().is_none());
        assert!(
            k.sources("h")[0].contains("not valid JSON"),
            "{:?}",
            k.sources("h")
        );
    }
}
