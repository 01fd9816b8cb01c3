//! The session's `Secrets.GetSecret`: the value of a secret the build mounts (`RUN --mount=type=secret`), read from
//! its file or variable when the daemon asks for it, and sent to the daemon only.
//!
//! A value is never logged, never put in an error, and never kept: it is read for the answer and dropped with it.
//! An id without a source, or a source that is not there (a variable that is not set, a file that does not exist),
//! is answered `NOT_FOUND`, which the daemon reads as "secret missing": an optional mount goes on without it, a
//! required one fails its step. The session records where it looked, so that the build can say so. A file that is
//! there but cannot be read, or is too large, fails the step, also for an optional mount, naming the file.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tonic::{Request, Response, Status};

use crate::config::mounts::{SecretSource, SecretSpec};
use crate::proto::moby::buildkit::secrets::v1 as pb;

/// The largest value served: buildx's limit (`secretsprovider.MaxSecretSize`), so that what builds with buildx
/// builds with buildopt and the other way round.
pub(crate) const MAX_SECRET_SIZE: u64 = 500 * 1024;

/// A secret the daemon asked for and did not get, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSecret {
    /// The id asked for.
    pub id: String,
    /// Where buildopt looked, or None when no source has this id.
    pub looked: Option<String>,
}

impl std::fmt::Display for MissingSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.looked {
            Some(looked) => write!(f, "secret `{}`: {looked}", self.id),
            None => write!(
                f,
                "secret `{}`: no `--secret` or `secrets` entry has this id; give it with `--secret id={},src=PATH` or `--secret id={},env=VAR`",
                self.id, self.id, self.id
            ),
        }
    }
}

/// The secrets one session serves, and the record of those it could not.
#[derive(Debug, Clone, Default)]
pub(crate) struct SecretStore {
    specs: Arc<Vec<SecretSpec>>,
    missing: Arc<Mutex<Vec<MissingSecret>>>,
}

impl SecretStore {
    pub(crate) fn new(specs: Vec<SecretSpec>) -> SecretStore {
        SecretStore {
            specs: Arc::new(specs),
            missing: Default::default(),
        }
    }

    /// The secrets asked for and not found so far, each id once, in the order first asked.
    pub(crate) fn missing(&self) -> Vec<MissingSecret> {
        self.missing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self, miss: MissingSecret) {
        let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
        if !missing.iter().any(|m| m.id == miss.id) {
            missing.push(miss);
        }
    }

    /// The value of `id`: Ok(None) when it is missing (and recorded), Err when its file cannot be read.
    async fn value(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        let Some(spec) = self.specs.iter().find(|s| s.id == id) else {
            self.record(MissingSecret {
                id: id.to_owned(),
                looked: None,
            });
            return Ok(None);
        };
        let found = match &spec.source {
            SecretSource::Env(var) => env_value(var)
                .ok_or_else(|| format!("environment variable `{var}` (from `{spec}`) is not set")),
            SecretSource::File(path) => match read_file(id, path).await? {
                Some(v) => Ok(v),
                None => Err(format!(
                    "file {} (from `{spec}`) does not exist",
                    path.display()
                )),
            },
            SecretSource::EnvOrFile { var, file } => match env_value(var) {
                Some(v) => Ok(v),
                None => match read_file(id, file).await? {
                    Some(v) => Ok(v),
                    None => Err(format!(
                        "`{spec}` names neither a set environment variable `{var}` nor an existing file {}",
                        file.display()
                    )),
                },
            },
        };
        match found {
            Ok(v) => Ok(Some(v)),
            Err(looked) => {
                self.record(MissingSecret {
                    id: id.to_owned(),
                    looked: Some(looked),
                });
                Ok(None)
            }
        }
    }
}

fn env_value(var: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStringExt;
    std::env::var_os(var).map(OsStringExt::into_vec)
}

/// The file's bytes; None when it does not exist. The error names the file and never holds any of its bytes.
async fn read_file(id: &str, path: &Path) -> Result<Option<Vec<u8>>, String> {
    let cannot =
        |e: &dyn std::fmt::Display| format!("secret `{id}`: cannot read {}: {e}", path.display());
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cannot(&e)),
    };
    if meta.is_dir() {
        return Err(cannot(&"it is a directory"));
    }
    if meta.len() > MAX_SECRET_SIZE {
        return Err(format!(
            "secret `{id}`: {} is {} bytes; a secret may have at most {} KiB (as with buildx)",
            path.display(),
            meta.len(),
            MAX_SECRET_SIZE / 1024
        ));
    }
    match tokio::fs::read(path).await {
        Ok(v) if v.len() as u64 > MAX_SECRET_SIZE => Err(format!(
            "secret `{id}`: {} grew past {} KiB while being read",
            path.display(),
            MAX_SECRET_SIZE / 1024
        )),
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(cannot(&e)),
    }
}

pub(crate) struct SecretsService {
    pub(crate) store: SecretStore,
}

#[tonic::async_trait]
impl pb::secrets_server::Secrets for SecretsService {
    // The id only: never the request's annotations or the answer.
    #[tracing::instrument(skip_all, fields(id = %req.get_ref().id))]
    async fn get_secret(
        &self,
        req: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        let id = &req.get_ref().id;
        match self.store.value(id).await {
            Ok(Some(data)) => {
                tracing::debug!("serving secret `{id}` ({} bytes)", data.len());
                Ok(Response::new(pb::GetSecretResponse { data }))
            }
            // The daemon reads NOT_FOUND as "missing" and drops the message; the store keeps it for the report.
            Ok(None) => Err(Status::not_found(format!("secret {id} not found"))),
            // Any other code fails the step with this message.
            Err(message) => Err(Status::failed_precondition(message)),
        }
    }
}
