//! The client side of a BuildKit session: a gRPC *server* we run over a byte stream the daemon dials into, serving
//! health checks, file sync of the local directories, registry credentials, the build's secrets and its SSH agents.

mod auth;
mod content;
mod filesend;
mod filesync;
mod secrets;
mod ssh;
pub(crate) mod stream;

pub(crate) use content::unpack_layout;
pub use filesend::{Received, Sink};
pub use secrets::MissingSecret;
pub use ssh::{SshAgents, SshError};

#[cfg(test)]
pub(crate) use filesync::SentContent;
pub use filesync::Transfer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::{Request, Response, Status};

use crate::auth::Keychain;
use crate::config::mounts::SecretSpec;
use crate::proto::{self, grpc::health::v1 as health};

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

impl crate::error::Classify for SessionError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Failure
    }
}

/// One session: its ID, the directories it may send, and where credentials come from.
#[derive(Clone)]
pub struct Session {
    id: String,
    shared_key: String,
    dirs: Arc<HashMap<String, PathBuf>>,
    own: Arc<Vec<PathBuf>>,
    keychain: Arc<dyn Keychain>,
    log: filesync::TransferLog,
    outputs: filesend::Outputs,
    stores: Arc<HashMap<String, PathBuf>>,
    secrets: secrets::SecretStore,
    ssh: Arc<SshAgents>,
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
            own: Arc::new(Vec::new()),
            keychain,
            log: Default::default(),
            outputs: Default::default(),
            stores: Default::default(),
            secrets: Default::default(),
            ssh: Default::default(),
        }
    }

    /// Receives the outputs that go to the client, by exporter index (`"0"`, `"1"`, ...).
    pub fn with_outputs(mut self, sinks: HashMap<String, Sink>) -> Session {
        self.outputs = filesend::Outputs::new(sinks);
        self
    }

    /// Serves OCI layouts (directories with `index.json` and `blobs/`) to the daemon, by store ID (`oci:STORE`).
    pub fn with_stores(mut self, stores: HashMap<String, PathBuf>) -> Session {
        self.stores = Arc::new(stores);
        self
    }

    /// What arrived for each output so far.
    pub fn received(&self) -> Vec<Received> {
        self.outputs.received()
    }

    /// Serves these secrets (by id) to the build; none by default. Their values are read when the daemon asks.
    pub fn with_secrets(mut self, specs: Vec<SecretSpec>) -> Session {
        self.secrets = secrets::SecretStore::new(specs);
        self
    }

    /// Forwards these SSH agents (by id) to the build; none by default. The session keeps them (and the agents
    /// buildopt started for key files) until its last clone is dropped.
    pub fn with_ssh(mut self, agents: SshAgents) -> Session {
        self.ssh = Arc::new(agents);
        self
    }

    /// The secrets the daemon asked for and did not get, and where buildopt looked.
    pub fn missing_secrets(&self) -> Vec<MissingSecret> {
        self.secrets.missing()
    }

    /// What the session's file sync sent so far, one record per DiffCopy call, in the order they started.
    pub fn transfers(&self) -> Vec<Transfer> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    /// Never sends these directories (buildopt's own state) from any local directory, as the hasher leaves them
    /// out too.
    pub fn hide_own(mut self, own: Vec<PathBuf>) -> Session {
        self.own = Arc::new(own);
        self
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
                    own: self.own.clone(),
                    log: self.log.clone(),
                },
            )
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(proto::moby::filesync::v1::auth_server::AuthServer::new(
            auth::AuthService {
                keychain: self.keychain.clone(),
            },
        ))
        .add_service(filesend::FileSendServer::new(self.outputs.clone()))
        .add_service(
            proto::containerd::services::content::v1::content_server::ContentServer::new(
                content::ContentService {
                    stores: self.stores.clone(),
                },
            )
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            proto::moby::buildkit::secrets::v1::secrets_server::SecretsServer::new(
                secrets::SecretsService {
                    store: self.secrets.clone(),
                },
            )
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            proto::moby::sshforward::v1::ssh_server::SshServer::new(ssh::SshService {
                agents: self.ssh.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        );
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

/// The session served over an in-memory pipe, with this test playing the daemon (an HTTP/2 gRPC client).
#[cfg(test)]
mod pipe_tests {
    use std::sync::Mutex;

    use prost::bytes::Bytes;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::transport::{Channel, Endpoint, Uri};

    use super::*;
    use crate::auth::{Credential, Secret, StaticKeychain};
    use crate::proto::fsutil::types::{Packet, packet::PacketType};
    use crate::proto::moby::filesync::v1::{
        CredentialsRequest, GetTokenAuthorityRequest, auth_client::AuthClient,
        file_sync_client::FileSyncClient,
    };

    async fn connect(
        session: Session,
    ) -> (Channel, tokio::task::JoinHandle<Result<(), SessionError>>) {
        let (daemon_side, client_side) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(session.serve(client_side));
        let slot = Mutex::new(Some(daemon_side));
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let io = slot.lock().unwrap().take();
                async move {
                    io.map(TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("only one connection"))
                }
            }))
            .await
            .unwrap();
        (channel, serve)
    }

    fn session(dir: &std::path::Path) -> Session {
        let creds = StaticKeychain(HashMap::from([(
            "registry.test".to_owned(),
            Credential {
                username: "AWS".to_owned(),
                secret: Secret::new("pw"),
                source: "test".to_owned(),
            },
        )]));
        Session::new(
            HashMap::from([(LOCAL_CONTEXT.to_owned(), dir.to_owned())]),
            Arc::new(creds),
            "key".to_owned(),
        )
    }

    #[tokio::test]
    async fn diffcopy_sends_the_selection_and_requested_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/sub")).unwrap();
        std::fs::create_dir_all(root.join("node_modules/keep")).unwrap();
        std::fs::write(root.join("a/sub/big.bin"), vec![7u8; 600_000]).unwrap();
        std::fs::write(root.join("a-b"), "x").unwrap();
        std::fs::write(root.join("node_modules/drop.js"), "").unwrap();
        std::fs::write(root.join("node_modules/keep/k.js"), "k").unwrap();
        std::os::unix::fs::symlink("a-b", root.join("link")).unwrap();
        let sent = session(root);
        let (channel, _serve) = connect(sent.clone()).await;

        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("dir-name", "context".parse().unwrap());
        req.metadata_mut()
            .append("exclude-patterns", "node_modules".parse().unwrap());
        req.metadata_mut()
            .append("exclude-patterns", "!node_modules/keep".parse().unwrap());
        let mut stream = FileSyncClient::new(channel)
            .diff_copy(req)
            .await
            .unwrap()
            .into_inner();

        let mut stats = Vec::new();
        loop {
            let p = stream.message().await.unwrap().unwrap();
            assert_eq!(p.r#type, PacketType::PacketStat as i32);
            match p.stat {
                Some(s) => stats.push(s),
                None => break,
            }
        }
        let listed: Vec<(String, u32, String)> = stats
            .iter()
            .map(|s| {
                (
                    String::from_utf8_lossy(&s.path).into_owned(),
                    s.mode,
                    String::from_utf8_lossy(&s.linkname).into_owned(),
                )
            })
            .collect();
        let dir_mode = (1 << 31) | 0o755;
        assert_eq!(
            listed.iter().map(|(p, ..)| p.as_str()).collect::<Vec<_>>(),
            [
                "a",
                "a/sub",
                "a/sub/big.bin",
                "a-b",
                "link",
                "node_modules",
                "node_modules/keep",
                "node_modules/keep/k.js"
            ]
        );
        assert_eq!(listed[0].1, dir_mode);
        assert_eq!(listed[4].1 & (1 << 27), 1 << 27, "symlink bit");
        assert_eq!(listed[4].2, "a-b");
        assert!(stats.iter().all(|s| s.uid == 0 && s.gid == 0));

        // Ask for two files by their index in the STAT sequence (IDs count every entry).
        for id in [2u32, 7] {
            tx.send(Packet {
                r#type: PacketType::PacketReq as i32,
                id,
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let mut data: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut done = 0;
        while done < 2 {
            let p = stream.message().await.unwrap().unwrap();
            assert_eq!(p.r#type, PacketType::PacketData as i32);
            assert!(p.data.len() <= 256 * 1024);
            if p.data.is_empty() {
                done += 1;
            } else {
                data.entry(p.id).or_default().extend_from_slice(&p.data);
            }
        }
        assert_eq!(
            data[&2].len(),
            600_000,
            "a file larger than one chunk arrives whole"
        );
        assert_eq!(data[&7], b"k");
        tx.send(Packet {
            r#type: PacketType::PacketFin as i32,
            ..Default::default()
        })
        .await
        .unwrap();
        let fin = stream.message().await.unwrap().unwrap();
        assert_eq!(fin.r#type, PacketType::PacketFin as i32);
        drop(tx);
        assert!(
            stream.message().await.unwrap().is_none(),
            "the call ends OK after FIN"
        );
        // The session's record of the transfer, which the build compares with what it hashed.
        let log = sent.transfers();
        assert_eq!(log.len(), 1);
        assert_eq!(
            (log[0].local.as_str(), log[0].entries.len()),
            ("context", 8)
        );
        let mut ids: Vec<u32> = log[0].sent.keys().copied().collect();
        ids.sort_unstable();
        assert_eq!(ids, [2, 7]);
        assert_eq!(log[0].sent[&2].size, 600_000);
        assert_eq!(
            log[0].sent[&2].digest,
            crate::digest::Digest::of(&[7u8; 600_000])
        );
        assert_eq!(log[0].sent[&7].digest, crate::digest::Digest::of(b"k"));
        assert_eq!(log[0].sent[&7].error, None);

        // An unknown ID is refused.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (channel, _serve) = connect(session(root)).await;
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("dir-name", "context".parse().unwrap());
        let mut stream = FileSyncClient::new(channel)
            .diff_copy(req)
            .await
            .unwrap()
            .into_inner();
        tx.send(Packet {
            r#type: PacketType::PacketReq as i32,
            id: 999,
            data: Bytes::new(),
            ..Default::default()
        })
        .await
        .unwrap();
        let err = loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("expected an error"),
                Err(e) => break e,
            }
        };
        assert!(err.message().contains("invalid file id 999"), "{err}");
    }

    #[tokio::test]
    async fn unknown_dir_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let (channel, _serve) = connect(session(dir.path())).await;
        let (_tx, rx) = tokio::sync::mpsc::channel::<Packet>(1);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("dir-name", "secrets".parse().unwrap());
        let err = FileSyncClient::new(channel)
            .diff_copy(req)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), "no access allowed to dir \"secrets\"");
    }

    #[tokio::test]
    async fn auth_serves_credentials_and_no_token_authority() {
        let dir = tempfile::tempdir().unwrap();
        let (channel, _serve) = connect(session(dir.path())).await;
        let mut auth = AuthClient::new(channel);
        let known = auth
            .credentials(CredentialsRequest {
                host: "registry.test".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (known.username.as_str(), known.secret.as_str()),
            ("AWS", "pw")
        );
        let unknown = auth
            .credentials(CredentialsRequest {
                host: "other".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(unknown.username.is_empty() && unknown.secret.is_empty());
        let err = auth
            .get_token_authority(GetTokenAuthorityRequest {
                host: "registry.test".into(),
                salt: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::Unimplemented,
            "the daemon falls back to Credentials only on UNIMPLEMENTED"
        );
    }

    #[tokio::test]
    async fn secrets_come_from_files_and_variables_and_misses_say_where_buildopt_looked() {
        use crate::proto::moby::buildkit::secrets::v1::{
            GetSecretRequest, secrets_client::SecretsClient,
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("tok"), "s3cret\n").unwrap();
        std::fs::create_dir(root.join("adir")).unwrap();
        std::fs::write(root.join("big"), vec![b'x'; 500 * 1024 + 1]).unwrap();
        let unset = "BUILDOPT_TEST_NEVER_SET_7F3A";
        assert!(std::env::var_os(unset).is_none());
        let specs = [
            "id=file,src=tok".to_owned(),
            "id=env,env=PATH".to_owned(),
            "id=tok".to_owned(),
            format!("id=unset,env={unset}"),
            "id=gone,src=nope".to_owned(),
            "id=adir,src=adir".to_owned(),
            "id=big,src=big".to_owned(),
        ]
        .iter()
        .map(|s| SecretSpec::parse(s, root).unwrap())
        .collect();
        let served = session(root).with_secrets(specs);
        let (channel, _serve) = connect(served.clone()).await;
        let mut client = SecretsClient::new(channel);
        let mut get = async |id: &str| {
            client
                .get_secret(GetSecretRequest {
                    id: id.to_owned(),
                    annotations: Default::default(),
                })
                .await
                .map(|r| r.into_inner().data)
        };
        assert_eq!(get("file").await.unwrap(), b"s3cret\n");
        assert_eq!(
            get("env").await.unwrap(),
            std::env::var("PATH").unwrap().into_bytes()
        );
        // Only an id: the file of that name, as no variable `tok` is set.
        assert_eq!(get("tok").await.unwrap(), b"s3cret\n");
        for id in ["unset", "gone", "never-configured"] {
            let err = get(id).await.unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::NotFound,
                "{id}: the daemon reads only NOT_FOUND as missing"
            );
        }
        // There but unreadable: an error the daemon shows, naming the file and never holding its bytes.
        let err = get("adir").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            err.message(),
            format!(
                "secret `adir`: cannot read {}: it is a directory",
                root.join("adir").display()
            )
        );
        let err = get("big").await.unwrap_err();
        assert_eq!(
            err.message(),
            format!(
                "secret `big`: {} is 512001 bytes; a secret may have at most 500 KiB (as with buildx)",
                root.join("big").display()
            )
        );
        let missing: Vec<String> = served
            .missing_secrets()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            missing,
            [
                format!("secret `unset`: environment variable `{unset}` (from `id=unset,env={unset}`) is not set"),
                format!(
                    "secret `gone`: file {} (from `id=gone,src={}`) does not exist",
                    root.join("nope").display(),
                    root.join("nope").display()
                ),
                "secret `never-configured`: no `--secret` or `secrets` entry has this id; give it with `--secret id=never-configured,src=PATH` or `--secret id=never-configured,env=VAR`".to_owned(),
            ]
        );
    }

    /// A real OpenSSH agent, started by the session for a key file, answers through ForwardAgent.
    #[tokio::test]
    async fn ssh_relays_each_connection_to_the_agent_holding_the_key_file() {
        use crate::config::mounts::SshSpec;
        use crate::proto::moby::sshforward::v1::{
            BytesMessage, CheckAgentRequest, ssh_client::SshClient,
        };
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_test");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "unit-test", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen (openssh-client; hack/test installs it)");
        assert!(made.success());
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let blob = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            public.split_whitespace().nth(1).unwrap(),
        )
        .unwrap();

        let agents = SshAgents::prepare(&[SshSpec::parse("deploy=id_test", dir.path()).unwrap()])
            .await
            .unwrap();
        let agent_dir = agents.sockets["deploy"].parent().unwrap().to_owned();
        assert!(agent_dir.is_dir());
        let served = session(dir.path()).with_ssh(agents);
        let (channel, serve) = connect(served.clone()).await;
        let mut client = SshClient::new(channel);
        client
            .check_agent(CheckAgentRequest {
                id: "deploy".into(),
            })
            .await
            .unwrap();
        // An empty id is `default`, which this session does not have.
        let err = client
            .check_agent(CheckAgentRequest { id: String::new() })
            .await
            .unwrap_err();
        assert!(
            err.message()
                .starts_with("no SSH agent `default` was given to buildopt"),
            "{err}"
        );

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut()
            .insert(ssh::SSH_ID_HEADER, "deploy".parse().unwrap());
        let mut stream = client.forward_agent(req).await.unwrap().into_inner();
        // SSH_AGENTC_REQUEST_IDENTITIES, sent in two messages: the stream is bytes, not agent messages.
        for part in [&[0u8, 0, 0][..], &[1, 11]] {
            tx.send(BytesMessage {
                data: part.to_vec(),
            })
            .await
            .unwrap();
        }
        let mut answer = Vec::new();
        while answer.len() < 4
            || answer.len() < 4 + u32::from_be_bytes(answer[..4].try_into().unwrap()) as usize
        {
            answer.extend(stream.message().await.unwrap().expect("more bytes").data);
        }
        // SSH_AGENT_IDENTITIES_ANSWER, one key: its blob, then its comment.
        let mut want = vec![12, 0, 0, 0, 1];
        want.extend((blob.len() as u32).to_be_bytes());
        want.extend(&blob);
        want.extend(9u32.to_be_bytes());
        want.extend(b"unit-test");
        assert_eq!(&answer[4..], &want[..]);
        // The daemon closes its side: the agent closes the connection, and the call ends OK.
        drop(tx);
        assert!(stream.message().await.unwrap().is_none());

        // The agent buildopt started goes with the session.
        serve.abort();
        let _ = serve.await;
        drop(client);
        drop(served);
        assert!(
            !agent_dir.exists(),
            "{} is left behind",
            agent_dir.display()
        );
    }
}
