//! The client side of a BuildKit session: a gRPC *server* we run over a byte stream the daemon dials into, serving
//! health checks, file sync of the local directories, and registry credentials.

mod auth;
mod filesync;
pub(crate) mod stream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::{Request, Response, Status};

use crate::auth::Keychain;
use crate::buildkit::proto::{self, grpc::health::v1 as health};

/// Metadata keys the daemon reads when the session is opened (gRPC form of `X-Docker-Expose-Session-*`).
pub(crate) mod headers {
    /// Session ID.
    pub const UUID: &str = "x-docker-expose-session-uuid";
    /// Free-form name (read by daemons up to v0.15).
    pub const NAME: &str = "x-docker-expose-session-name";
    /// Key under which the daemon keeps earlier transfers, for incremental context uploads.
    pub const SHARED_KEY: &str = "x-docker-expose-session-sharedkey";
    /// One value per served gRPC method.
    pub const METHOD: &str = "x-docker-expose-session-grpc-method";
}

/// Local directory names the Dockerfile frontend asks for.
pub const LOCAL_CONTEXT: &str = "context";
/// The directory holding the Dockerfile.
pub const LOCAL_DOCKERFILE: &str = "dockerfile";
const MAX_MESSAGE: usize = 16 << 20;

/// Why a session ended badly.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The HTTP/2 connection failed.
    #[error("session connection failed")]
    Connection(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One session: its ID, the directories it may send, and where credentials come from.
#[derive(Clone)]
pub struct Session {
    id: String,
    shared_key: String,
    dirs: Arc<HashMap<String, PathBuf>>,
    keychain: Arc<dyn Keychain>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A new session serving `dirs` (local name -> directory). `shared_key` should be stable per machine and
    /// context so the daemon can reuse earlier transfers.
    pub fn new(
        dirs: HashMap<String, PathBuf>,
        keychain: Arc<dyn Keychain>,
        shared_key: String,
    ) -> Session {
        Session {
            id: new_id(),
            shared_key,
            dirs: Arc::new(dirs),
            keychain,
        }
    }

    /// The session ID (goes into `SolveRequest.Session`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The metadata that opens this session, in order.
    pub(crate) fn metadata(&self) -> Vec<(&'static str, String)> {
        let mut md = vec![
            (headers::UUID, self.id.clone()),
            (headers::NAME, "buildopt".to_owned()),
            (headers::SHARED_KEY, self.shared_key.clone()),
        ];
        md.extend(served_methods().into_iter().map(|m| (headers::METHOD, m)));
        md
    }

    /// Serves the session's gRPC services over `io` until the daemon closes it.
    pub async fn serve<IO>(self, io: IO) -> Result<(), SessionError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let routes = tonic::service::Routes::new(
            health::health_server::HealthServer::new(HealthService)
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            proto::moby::filesync::v1::file_sync_server::FileSyncServer::new(
                filesync::FileSyncService {
                    dirs: self.dirs.clone(),
                },
            )
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(proto::moby::filesync::v1::auth_server::AuthServer::new(
            auth::AuthService {
                keychain: self.keychain.clone(),
            },
        ));
        let service = TowerToHyperService::new(routes);
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(None)
            .serve_connection(TokioIo::new(io), service)
            .await
            .map_err(|e| SessionError::Connection(Box::new(e)))
    }
}

/// Every method of every service we serve, as `/<package>.<Service>/<Method>`, from the compiled descriptors.
pub(crate) fn served_methods() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET)
        .expect("build.rs writes a valid descriptor set");
    let mut out = Vec::new();
    for file in &set.file {
        for svc in &file.service {
            for m in &svc.method {
                out.push(format!("/{}.{}/{}", file.package(), svc.name(), m.name()));
            }
        }
    }
    out
}

/// 25 lowercase base36 characters, like BuildKit's `identity.NewID` (and never a `:`).
pub(crate) fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    if let Ok(seed) = std::fs::read("/proc/sys/kernel/random/uuid") {
        h.update(&seed);
    }
    let bytes = h.finalize();
    let mut n = u128::from_le_bytes(bytes.as_bytes()[..16].try_into().expect("16 bytes"));
    let mut s = String::with_capacity(25);
    for _ in 0..25 {
        s.push(char::from_digit((n % 36) as u32, 36).expect("base36 digit"));
        n /= 36;
    }
    s
}

struct HealthService;

#[tonic::async_trait]
impl health::health_server::Health for HealthService {
    async fn check(
        &self,
        _: Request<health::HealthCheckRequest>,
    ) -> Result<Response<health::HealthCheckResponse>, Status> {
        Ok(Response::new(health::HealthCheckResponse {
            status: health::health_check_response::ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = tokio_stream::Empty<Result<health::HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _: Request<health::HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch is not served"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_the_served_methods() {
        let m = served_methods();
        for path in [
            "/grpc.health.v1.Health/Check",
            "/moby.filesync.v1.FileSync/DiffCopy",
            "/moby.filesync.v1.Auth/Credentials",
        ] {
            assert!(m.iter().any(|x| x == path), "{path} missing from {m:?}");
        }
    }

    #[test]
    fn ids_are_base36_and_unique() {
        let (a, b) = (new_id(), new_id());
        assert_eq!(a.len(), 25);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(a, b);
    }
}
