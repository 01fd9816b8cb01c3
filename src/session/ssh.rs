//! The session's `SSH` service: forwards `RUN --mount=type=ssh` to an SSH agent on this machine.
//!
//! Before a build, [`SshAgents::prepare`] turns each `--ssh` / `ssh` entry into an agent socket: `$SSH_AUTH_SOCK`,
//! a socket given by path, or, for private key files, a real OpenSSH `ssh-agent` that buildopt starts holding just
//! those keys (buildx runs an agent of its own in-process instead; an OpenSSH agent does the key handling and the
//! signing, so buildopt holds no key and no crypto code). An agent that is not there fails the service before its
//! solve, naming the id and the path.
//!
//! During the build the daemon calls `CheckAgent(ID)` when a step with the mount runs, and `ForwardAgent` once per
//! connection a process in the step opens on its socket, with the id in the `buildkit.ssh.id` header. Each such
//! call is relayed byte for byte to a new connection to the agent (the agent protocol, unframed), as BuildKit's
//! own `raw` mode does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::mounts::{DEFAULT_SSH_ID, SshSource, SshSpec};
use crate::proto::moby::sshforward::v1 as pb;

/// The request header of `ForwardAgent` naming the id (never empty there).
pub(crate) const SSH_ID_HEADER: &str = "buildkit.ssh.id";
/// The environment variable holding the user's agent socket.
pub const AUTH_SOCK_ENV: &str = "SSH_AUTH_SOCK";
/// Read size on the agent connection (Go reads 32 KiB; agent messages are small).
const READ_CHUNK: usize = 32 * 1024;
/// How long a started `ssh-agent` may take to create its socket.
const AGENT_START: Duration = Duration::from_secs(10);

/// Why the agent of an SSH id cannot be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// `--ssh ID` without a path, and no agent in the environment.
    #[error(
        "SSH `{id}`: {AUTH_SOCK_ENV} is not set, so there is no agent to forward; start one (`eval \"$(ssh-agent)\"` and `ssh-add KEYFILE`) or give a socket or key file: `--ssh {id}=PATH`"
    )]
    NoAuthSock {
        /// The id.
        id: String,
    },
    /// The socket or key file is not there.
    #[error("SSH `{id}`: {} ({what}) does not exist", path.display())]
    Missing {
        /// The id.
        id: String,
        /// The path.
        path: PathBuf,
        /// Where the path came from.
        what: &'static str,
    },
    /// The socket or key file cannot be looked at.
    #[error("SSH `{id}`: cannot read {}", path.display())]
    Unreadable {
        /// The id.
        id: String,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A socket that no agent answers on.
    #[error("SSH `{id}`: no agent answers on {} ({what}); is it still running?", path.display())]
    Unreachable {
        /// The id.
        id: String,
        /// The socket.
        path: PathBuf,
        /// Where the path came from.
        what: &'static str,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// `$SSH_AUTH_SOCK` names something else than a socket.
    #[error("SSH `{id}`: {} ({AUTH_SOCK_ENV}) is not a socket", path.display())]
    NotSocket {
        /// The id.
        id: String,
        /// The path.
        path: PathBuf,
    },
    /// A path among several that is not a key file.
    #[error(
        "SSH `{id}`: {} is not a private key file (several paths are key files; an agent socket must be the only path)",
        path.display()
    )]
    NotKeyFile {
        /// The id.
        id: String,
        /// The path.
        path: PathBuf,
    },
    /// `ssh-agent` or `ssh-keygen` could not be run.
    #[error(
        "SSH `{id}`: serving key files needs OpenSSH's `{program}`, which could not be run; install OpenSSH's client (Debian: openssh-client), or load the keys into an agent yourself and pass `--ssh {id}=SOCKET`"
    )]
    NoOpenSsh {
        /// The id.
        id: String,
        /// The program.
        program: &'static str,
        /// Why it did not run.
        #[source]
        source: std::io::Error,
    },
    /// The agent buildopt started did not come up.
    #[error("SSH `{id}`: the ssh-agent started for its key files {message}")]
    AgentStart {
        /// The id.
        id: String,
        /// What happened.
        message: String,
    },
    /// OpenSSH refused a key file.
    #[error("SSH `{id}`: key file {} cannot be used: {message}{}", path.display(), passphrase_hint(.message, .id))]
    Key {
        /// The id.
        id: String,
        /// The key file.
        path: PathBuf,
        /// What OpenSSH said.
        message: String,
    },
}

/// A key with a passphrase cannot be unlocked in the middle of a build.
fn passphrase_hint(message: &str, id: &str) -> String {
    if message.contains("passphrase") {
        format!(
            "; buildopt does not ask for passphrases (as buildx): load the key into your agent (`ssh-add KEYFILE`) and pass `--ssh {id}` or `--ssh {id}=$SSH_AUTH_SOCK`"
        )
    } else {
        String::new()
    }
}

/// The agents of one build, by id, ready to forward. The agents buildopt started for key files stop when this is
/// dropped.
#[derive(Debug, Default)]
pub struct SshAgents {
    pub(super) sockets: HashMap<String, PathBuf>,
    started: Vec<KeyAgent>,
}

impl SshAgents {
    /// Finds or starts the agent of each spec; fails on the first that is not there.
    pub async fn prepare(specs: &[SshSpec]) -> Result<SshAgents, SshError> {
        let mut agents = SshAgents::default();
        for spec in specs {
            let id = spec.id.clone();
            let socket = match &spec.source {
                SshSource::AuthSock => {
                    let path = std::env::var_os(AUTH_SOCK_ENV)
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .ok_or_else(|| SshError::NoAuthSock { id: id.clone() })?;
                    match tokio::fs::metadata(&path).await {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Err(SshError::Missing {
                                id,
                                path,
                                what: "the agent socket SSH_AUTH_SOCK names",
                            });
                        }
                        Err(source) => return Err(SshError::Unreadable { id, path, source }),
                        Ok(m) if !is_socket(&m) => return Err(SshError::NotSocket { id, path }),
                        Ok(_) => {}
                    }
                    check_socket(&id, &path, "the agent socket SSH_AUTH_SOCK names").await?;
                    path
                }
                SshSource::Paths(paths) => {
                    let mut keys = Vec::new();
                    let mut socket = None;
                    for path in paths {
                        match tokio::fs::metadata(path).await {
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                                return Err(SshError::Missing {
                                    id,
                                    path: path.clone(),
                                    what: "an agent socket or a private key file",
                                });
                            }
                            Err(source) => {
                                return Err(SshError::Unreadable {
                                    id,
                                    path: path.clone(),
                                    source,
                                });
                            }
                            Ok(m) if is_socket(&m) && paths.len() == 1 => {
                                socket = Some(path.clone());
                            }
                            Ok(m) if !m.is_file() => {
                                return Err(SshError::NotKeyFile {
                                    id,
                                    path: path.clone(),
                                });
                            }
                            Ok(_) => keys.push(path.clone()),
                        }
                    }
                    match socket {
                        Some(path) => {
                            check_socket(&id, &path, "an agent socket").await?;
                            path
                        }
                        None => {
                            let agent = KeyAgent::start(&id, &keys).await?;
                            let path = agent.socket.clone();
                            agents.started.push(agent);
                            path
                        }
                    }
                }
            };
            agents.sockets.insert(spec.id.clone(), socket);
        }
        Ok(agents)
    }
}

fn is_socket(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    m.file_type().is_socket()
}

async fn check_socket(id: &str, path: &Path, what: &'static str) -> Result<(), SshError> {
    UnixStream::connect(path)
        .await
        .map(drop)
        .map_err(|source| SshError::Unreachable {
            id: id.to_owned(),
            path: path.to_owned(),
            what,
            source,
        })
}

/// An OpenSSH `ssh-agent` buildopt started, holding the key files of one id, in a directory of its own (mode
/// 0700). Dropping it kills the agent and removes the directory.
#[derive(Debug)]
struct KeyAgent {
    socket: PathBuf,
    dir: PathBuf,
    _agent: tokio::process::Child,
}

impl Drop for KeyAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl KeyAgent {
    async fn start(id: &str, keys: &[PathBuf]) -> Result<KeyAgent, SshError> {
        // Each key is checked first with an empty passphrase: `ssh-keygen -P ""` never prompts, while `ssh-add`
        // would ask on the terminal in the middle of the build.
        for key in keys {
            openssh(id, key, "ssh-keygen", |cmd| {
                cmd.arg("-y").args(["-P", ""]).arg("-f").arg(key);
            })
            .await?;
        }
        let dir = std::env::temp_dir().join(format!("buildopt-ssh-{}", super::new_id()));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| SshError::AgentStart {
                    id: id.to_owned(),
                    message: format!("could not get a directory: {}: {e}", dir.display()),
                })?;
        }
        let socket = dir.join("agent.sock");
        // Own it before anything can fail, so that the directory goes on every path.
        let spawned = openssh_command("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .kill_on_drop(true)
            .spawn();
        let agent = match spawned {
            Ok(child) => child,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(SshError::NoOpenSsh {
                    id: id.to_owned(),
                    program: "ssh-agent",
                    source,
                });
            }
        };
        let mut agent = KeyAgent {
            socket,
            dir,
            _agent: agent,
        };
        let started = std::time::Instant::now();
        while UnixStream::connect(&agent.socket).await.is_err() {
            if let Ok(Some(status)) = agent._agent.try_wait() {
                return Err(SshError::AgentStart {
                    id: id.to_owned(),
                    message: format!("exited ({status})"),
                });
            }
            if started.elapsed() > AGENT_START {
                return Err(SshError::AgentStart {
                    id: id.to_owned(),
                    message: format!(
                        "did not open {} within {}s",
                        agent.socket.display(),
                        AGENT_START.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for key in keys {
            openssh(id, key, "ssh-add", |cmd| {
                cmd.arg("-q").arg(key).env(AUTH_SOCK_ENV, &agent.socket);
            })
            .await?;
        }
        Ok(agent)
    }
}

/// Runs an OpenSSH program on key file `key` of SSH `id`, without a terminal to prompt on or a program to ask for
/// passphrases; a failure is OpenSSH's message.
async fn openssh(
    id: &str,
    key: &Path,
    program: &'static str,
    args: impl FnOnce(&mut tokio::process::Command),
) -> Result<(), SshError> {
    let mut cmd = openssh_command(program);
    args(&mut cmd);
    let out = cmd.output().await.map_err(|source| SshError::NoOpenSsh {
        id: id.to_owned(),
        program,
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SshError::Key {
            id: id.to_owned(),
            path: key.to_owned(),
            message: said(&out.stderr),
        })
    }
}

fn openssh_command(program: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .env("SSH_ASKPASS_REQUIRE", "never")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY");
    cmd
}

/// What a program said on stderr, on one line.
fn said(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        "it failed without a message".to_owned()
    } else {
        text
    }
}

/// Serves CheckAgent and ForwardAgent for the prepared agents.
pub(crate) struct SshService {
    pub(crate) agents: Arc<SshAgents>,
}

impl SshService {
    fn socket(&self, id: &str) -> Result<&Path, Status> {
        // The daemon sends an empty id for a mount without `id=`.
        let id = if id.is_empty() { DEFAULT_SSH_ID } else { id };
        self.agents.sockets.get(id).map(PathBuf::as_path).ok_or_else(|| {
            Status::not_found(format!(
                "no SSH agent `{id}` was given to buildopt: pass `--ssh {id}` (the agent at ${AUTH_SOCK_ENV}) or `--ssh {id}=SOCKET|KEYFILE`, or add it to the service's `ssh` list"
            ))
        })
    }
}

/// The bytes of one agent connection going back to the daemon, owning the task that relays them: when the daemon
/// goes away and the server drops the stream, the relay stops too.
pub(crate) struct Relay {
    messages: ReceiverStream<Result<pb::BytesMessage, Status>>,
    task: tokio::task::AbortHandle,
}

impl futures::Stream for Relay {
    type Item = Result<pb::BytesMessage, Status>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.messages).poll_next(cx)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tonic::async_trait]
impl pb::ssh_server::Ssh for SshService {
    #[tracing::instrument(skip_all, fields(id = %req.get_ref().id))]
    async fn check_agent(
        &self,
        req: Request<pb::CheckAgentRequest>,
    ) -> Result<Response<pb::CheckAgentResponse>, Status> {
        self.socket(&req.get_ref().id)?;
        Ok(Response::new(pb::CheckAgentResponse {}))
    }

    type ForwardAgentStream = Relay;

    async fn forward_agent(
        &self,
        req: Request<Streaming<pb::BytesMessage>>,
    ) -> Result<Response<Relay>, Status> {
        let id = req
            .metadata()
            .get(SSH_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let socket = self.socket(&id)?;
        let agent = UnixStream::connect(socket).await.map_err(|e| {
            Status::unavailable(format!(
                "SSH `{id}`: cannot connect to the agent at {}: {e}",
                socket.display()
            ))
        })?;
        tracing::debug!("forwarding a connection to SSH agent `{id}`");
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(relay(req.into_inner(), agent, tx));
        Ok(Response::new(Relay {
            messages: ReceiverStream::new(rx),
            task: task.abort_handle(),
        }))
    }
}

/// Copies the daemon's messages to the agent and the agent's bytes back, one message per read. The daemon closing
/// its side closes the agent connection's write side; the agent closing the connection ends the call.
async fn relay(
    mut from_daemon: Streaming<pb::BytesMessage>,
    agent: UnixStream,
    to_daemon: mpsc::Sender<Result<pb::BytesMessage, Status>>,
) {
    let (mut rd, mut wr) = agent.into_split();
    let upstream = async move {
        loop {
            match from_daemon.message().await {
                Ok(Some(m)) => {
                    if wr.write_all(&m.data).await.is_err() {
                        return false;
                    }
                }
                Ok(None) => {
                    let _ = wr.shutdown().await;
                    return true;
                }
                // The daemon dropped the call.
                Err(_) => return false,
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let message = match rd.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => Ok(pb::BytesMessage {
                    data: buf[..n].to_vec(),
                }),
                Err(e) => Err(Status::unavailable(format!(
                    "reading from the SSH agent: {e}"
                ))),
            };
            let failed = message.is_err();
            if to_daemon.send(message).await.is_err() || failed {
                return;
            }
        }
    };
    tokio::pin!(downstream);
    tokio::select! {
        () = &mut downstream => {}
        closed = upstream => {
            if closed {
                downstream.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_agents_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let spec = |s: &str| SshSpec::parse(s, dir.path()).unwrap();
        let err = SshAgents::prepare(&[spec("gh=nope")]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "SSH `gh`: {} (an agent socket or a private key file) does not exist",
                dir.path().join("nope").display()
            )
        );
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let err = SshAgents::prepare(&[spec("gh=d")]).await.unwrap_err();
        assert!(
            err.to_string().contains("is not a private key file"),
            "{err}"
        );
        // A socket file no agent listens on any more.
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let err = SshAgents::prepare(&[spec("gh=stale.sock")])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no agent answers on"), "{err}");
    }

    #[tokio::test]
    async fn a_key_that_is_not_a_key_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_test");
        std::fs::write(&key, "not a key\n").unwrap();
        let spec = SshSpec::parse("deploy=id_test", dir.path()).unwrap();
        let err = SshAgents::prepare(&[spec]).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "SSH `deploy`: key file {} cannot be used: ",
                key.display()
            )),
            "{text}"
        );
    }
}
