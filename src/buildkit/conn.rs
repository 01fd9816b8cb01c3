//! BuildKit addresses and connections: `unix://`, `tcp://` (optionally mTLS, see [`tls`]), and `docker://`
//! (dockerd's embedded BuildKit, reached by upgrading `POST /grpc` on the Docker socket to h2c), and the words for
//! a call that failed below gRPC.

mod tls;

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio_util::either::Either;
use tonic::transport::{Channel, Endpoint, Uri};

pub use tls::TlsFailure;

/// The default Docker socket for `docker://`.
pub const DEFAULT_DOCKER_SOCK: &str = "/var/run/docker.sock";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where BuildKit listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// A unix socket of buildkitd.
    Unix(PathBuf),
    /// `host:port` over TCP.
    Tcp(String),
    /// dockerd's embedded BuildKit through this Docker socket.
    Docker(PathBuf),
}

/// An address that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    /// Not one of the supported schemes.
    #[error(
        "unsupported BuildKit address `{0}`: use unix:///path, tcp://host:port or docker://[/path/to/docker.sock]"
    )]
    Unsupported(String),
}

impl FromStr for Addr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Addr, AddrError> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(AddrError::Unsupported(s.to_owned()));
            }
            Ok(Addr::Unix(PathBuf::from(path)))
        } else if let Some(hostport) = s.strip_prefix("tcp://") {
            let hostport = hostport.trim_end_matches('/');
            if hostport
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(AddrError::Unsupported(s.to_owned()));
            }
            Ok(Addr::Tcp(hostport.to_owned()))
        } else if let Some(path) = s.strip_prefix("docker://") {
            Ok(Addr::Docker(PathBuf::from(if path.is_empty() {
                DEFAULT_DOCKER_SOCK
            } else {
                path
            })))
        } else {
            Err(AddrError::Unsupported(s.to_owned()))
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "unix://{}", p.display()),
            Addr::Tcp(h) => write!(f, "tcp://{h}"),
            Addr::Docker(p) => write!(f, "docker://{}", p.display()),
        }
    }
}

impl Addr {
    /// The address to use when none is configured, as buildctl picks it: for a non-root user, the user's rootless
    /// buildkitd (`$XDG_RUNTIME_DIR/buildkit/buildkitd.sock`) when it is there; otherwise the rootful socket (and
    /// the rootless one when only it exists).
    pub fn default_local() -> Addr {
        let rootful = Path::new(ROOTFUL_SOCKET);
        let rootless = std::env::var_os("XDG_RUNTIME_DIR")
            .map(|run| Path::new(&run).join("buildkit/buildkitd.sock"))
            .filter(|p| p.exists());
        match rootless {
            Some(rootless) if !is_root() || !rootful.exists() => Addr::Unix(rootless),
            _ => Addr::Unix(rootful.to_owned()),
        }
    }
}

/// The rootful buildkitd socket.
pub const ROOTFUL_SOCKET: &str = "/run/buildkit/buildkitd.sock";

/// Whether this process runs as root: `/proc/self` belongs to the effective user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl crate::error::Classify for AddrError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Usage
    }
}

impl crate::error::Classify for ConnectError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            ConnectError::Unreachable { .. } => crate::error::ErrorKind::Failure,
            // Certificates, keys, names and TLS settings are the caller's to fix.
            _ => crate::error::ErrorKind::Usage,
        }
    }
}

/// TLS files for `tcp://` (like buildctl's `--tlscacert`, `--tlscert`, `--tlskey`, `--tlsservername`).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificate (PEM) that signed the daemon's certificate.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    pub key: Option<PathBuf>,
    /// Server name to verify instead of the host.
    pub server_name: Option<String>,
}

impl TlsOptions {
    fn enabled(&self) -> bool {
        self.ca_cert.is_some()
            || self.cert.is_some()
            || self.key.is_some()
            || self.server_name.is_some()
    }
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket or host did not answer.
    #[error("cannot connect to BuildKit at {addr}: {hint}")]
    Unreachable {
        /// The address.
        addr: String,
        /// What to check.
        hint: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The daemon and we disagree about TLS: certificates, names, or whether to speak it at all.
    #[error("cannot connect to BuildKit at {addr}: {failure}")]
    Tls {
        /// The address.
        addr: String,
        /// What went wrong, worded as what to change.
        #[source]
        failure: TlsFailure,
    },
    /// A TLS file could not be read.
    #[error("cannot read TLS file {}", path.display())]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file holds no PEM block of the kind it should.
    #[error("no {what} in {}: expected a PEM file with a `-----BEGIN {}-----` block", path.display(), pem_label(what))]
    TlsPem {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
    },
    /// A TLS file is not valid PEM.
    #[error("{} is not a valid PEM file", path.display())]
    TlsPemSyntax {
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate or key that cannot be used (broken encoding, unsupported key type).
    #[error("cannot use the {what} in {}", path.display())]
    TlsUnusable {
        /// The file.
        path: PathBuf,
        /// What it holds.
        what: &'static str,
        /// Why it cannot be used.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate was not issued for the client key.
    #[error(
        "the client certificate {} does not match the private key {}: pass the key the certificate was issued for",
        cert.display(),
        key.display()
    )]
    KeyMismatch {
        /// `--tlscert`.
        cert: PathBuf,
        /// `--tlskey`.
        key: PathBuf,
    },
    /// TLS options given for a non-TCP address, or a client cert without its key.
    #[error("{0}")]
    TlsConfig(String),
}

fn pem_label(what: &str) -> &'static str {
    if what.ends_with("key") {
        "PRIVATE KEY"
    } else {
        "CERTIFICATE"
    }
}

/// Opens a gRPC channel to BuildKit at `addr`.
pub async fn connect(addr: &Addr, tls: &TlsOptions) -> Result<Channel, ConnectError> {
    let unreachable = |hint: String| {
        let addr = addr.to_string();
        move |source: Box<dyn std::error::Error + Send + Sync>| ConnectError::Unreachable {
            addr,
            hint,
            source,
        }
    };
    if tls.enabled() && !matches!(addr, Addr::Tcp(_)) {
        return Err(ConnectError::TlsConfig(format!(
            "TLS options apply to tcp:// addresses only, not {addr}"
        )));
    }
    // The URI is only used for the `:authority` header on socket connectors; the daemon ignores it.
    match addr {
        Addr::Unix(path) => {
            let path = path.clone();
            let hint = format!(
                "check that buildkitd is running and listening on {}",
                path.display()
            );
            Endpoint::from_static("http://localhost")
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .map_err(|e| unreachable(hint)(Box::new(e)))
        }
        Addr::Docker(sock) => {
            let sock = sock.clone();
            let hint = format!(
                "check that dockerd is running with its socket at {} and that its API allows BuildKit (POST /grpc)",
                sock.display()
            );
            Endpoint::from_static("http://docker")
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let sock = sock.clone();
                    async move { docker_grpc_upgrade(&sock).await.map(TokioIo::new) }
                }))
                .await
                .map_err(|e| unreachable(hint)(Box::new(e)))
        }
        Addr::Tcp(hostport) => {
            let hint = format!(
                "check that buildkitd listens on tcp://{hostport} and that the TLS settings match"
            );
            // TLS is ours, not tonic's (see `tls`), so the URI says http either way; the daemon ignores it.
            let endpoint = Endpoint::from_shared(format!("http://{hostport}"))
                .map_err(|e| unreachable(hint.clone())(Box::new(e)))?
                .connect_timeout(CONNECT_TIMEOUT);
            // tonic considers the channel connected once it has sent its HTTP/2 preface; a refused TLS 1.3 client
            // certificate or a TLS port spoken to in plain text shows only when the daemon answers. Wait for that.
            let (first_answer, mut opening) = tls::FirstAnswer::new();
            let connector = if tls.enabled() {
                let host = hostport
                    .rsplit_once(':')
                    .map_or(hostport.as_str(), |(h, _)| h);
                Some(std::sync::Arc::new(tls::Connector::load(tls, host).await?))
            } else {
                None
            };
            let hostport = hostport.clone();
            let connected = endpoint
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let (connector, hostport, first_answer) =
                        (connector.clone(), hostport.clone(), first_answer.clone());
                    async move {
                        let io = match connector {
                            Some(c) => Either::Left(c.connect(&hostport, &first_answer).await?),
                            None => {
                                Either::Right(tls::connect_plain(&hostport, &first_answer).await?)
                            }
                        };
                        Ok::<_, std::io::Error>(TokioIo::new(io))
                    }
                }))
                .await;
            let tls_failure = |failure: TlsFailure| ConnectError::Tls {
                addr: addr.to_string(),
                failure,
            };
            match connected {
                // No word within the timeout, or a first connection that ended unread: the calls will tell.
                Ok(channel) => match tokio::time::timeout(CONNECT_TIMEOUT, opening).await {
                    Ok(Ok(Err(failure))) => Err(tls_failure(failure)),
                    _ => Ok(channel),
                },
                Err(e) => match tls::find_failure(&e)
                    .cloned()
                    .or_else(|| opening.try_recv().ok().and_then(Result::err))
                {
                    Some(failure) => Err(tls_failure(failure)),
                    None => Err(unreachable(hint)(Box::new(e))),
                },
            }
        }
    }
}

/// What a failed call says, for people: the daemon's own message, or, when the call failed below gRPC (TLS, TCP,
/// HTTP/2), what went wrong there. tonic's words for those are "transport error", and its `Display` of a status
/// prints the cause's `Debug`.
pub(crate) fn status_message(status: &tonic::Status) -> String {
    let Some(source) = std::error::Error::source(status) else {
        return status.message().to_owned();
    };
    if let Some(failure) = tls::find_failure(source) {
        return failure.to_string();
    }
    // The innermost cause names what happened ("Connection reset by peer"); the layers above it add only
    // "transport error", "connection error" and the like.
    let mut innermost: &(dyn std::error::Error + 'static) = source;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    format!("the connection to BuildKit failed: {innermost}")
}

/// [`status_message`] as an error, for error chains: a [`TlsFailure`] keeps its own causes.
pub(crate) fn status_error(status: tonic::Status) -> Box<dyn std::error::Error + Send + Sync> {
    match std::error::Error::source(&status).and_then(tls::find_failure) {
        Some(failure) => Box::new(failure.clone()),
        None => Box::new(CallFailed(status_message(&status))),
    }
}

/// A failed call, as [`status_message`] words it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CallFailed(String);

/// Upgrades a new connection to the Docker socket to h2c on `/grpc` and returns it, ready for HTTP/2.
async fn docker_grpc_upgrade(sock: &Path) -> std::io::Result<Prefixed<UnixStream>> {
    let mut stream = UnixStream::connect(sock).await?;
    stream
        .write_all(b"POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n")
        .await?;
    let (status, rest) = read_http_head(&mut stream).await?;
    if !status.starts_with("HTTP/1.1 101") {
        return Err(std::io::Error::other(format!(
            "dockerd refused the BuildKit upgrade: {status}"
        )));
    }
    Ok(Prefixed::new(rest, stream))
}

/// Opens a session on dockerd the way buildx does: `POST /session` upgraded to h2c, with the session metadata as
/// canonical `X-Docker-Expose-Session-*` headers. After the 101 the daemon is the HTTP/2 client and we serve.
pub(crate) async fn docker_session_upgrade(
    sock: &Path,
    metadata: &[(&str, String)],
) -> std::io::Result<Prefixed<UnixStream>> {
    let mut req = String::from(
        "POST /session HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n",
    );
    for (key, value) in metadata {
        if value.contains(['\r', '\n']) {
            return Err(std::io::Error::other(format!(
                "invalid session header value for {key}"
            )));
        }
        req.push_str(&format!("{}: {value}\r\n", canonical_header(key)));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    let mut stream = UnixStream::connect(sock).await?;
    stream.write_all(req.as_bytes()).await?;
    let (status, rest) = read_http_head(&mut stream).await?;
    if !status.starts_with("HTTP/1.1 101") {
        return Err(std::io::Error::other(format!(
            "dockerd refused the session upgrade: {status}"
        )));
    }
    Ok(Prefixed::new(rest, stream))
}

/// `x-docker-expose-session-uuid` -> `X-Docker-Expose-Session-Uuid` (Go's `http.CanonicalHeaderKey`).
fn canonical_header(key: &str) -> String {
    key.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(first) => {
                    first.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase()
                }
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Reads an HTTP/1.1 response head; returns its status line and the bytes read past the head.
pub(crate) async fn read_http_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head.lines().next().unwrap_or_default().to_owned();
            return Ok((status, buf[end + 4..].to_vec()));
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("HTTP response head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed during HTTP upgrade",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A stream whose first bytes were already read (the bytes after an HTTP upgrade's head belong to HTTP/2).
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The version of the Docker Engine at `sock` (`GET /version`), e.g. `26.1.5+dfsg1`.
pub(crate) async fn docker_engine_version(sock: &Path) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(sock).await?;
    stream
        .write_all(b"GET /version HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .await?;
    let (status, mut body) = read_http_head(&mut stream).await?;
    stream.read_to_end(&mut body).await?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "the Docker Engine answered {status}"
        )));
    }
    // The body may be chunk-framed: the JSON object is the one line that is one.
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find_map(|v| v["Version"].as_str().map(str::to_owned))
        .ok_or_else(|| std::io::Error::other("no Version in the Docker Engine's answer"))
}

/// Loads a `docker load` tarball into the Docker Engine at `sock` (`POST /images/load`); returns what it loaded
/// (`Loaded image: REF` lines), or its error.
pub(crate) async fn docker_load(sock: &Path, tarball: &Path) -> std::io::Result<Vec<String>> {
    let size = tokio::fs::metadata(tarball).await?.len();
    let mut stream = UnixStream::connect(sock).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("connecting to the Docker Engine at {}: {e}", sock.display()),
        )
    })?;
    let head = format!(
        "POST /images/load?quiet=1 HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut file = tokio::fs::File::open(tarball).await?;
    tokio::io::copy(&mut file, &mut stream).await?;
    let (status, mut body) = read_http_head(&mut stream).await?;
    stream.read_to_end(&mut body).await?;
    let text = String::from_utf8_lossy(&body);
    // The body is a stream of JSON objects (possibly chunk-framed): pick out the messages.
    let mut loaded = Vec::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
            continue;
        };
        if let Some(e) = v["errorDetail"]["message"].as_str().or(v["error"].as_str()) {
            return Err(std::io::Error::other(format!("docker load: {e}")));
        }
        if let Some(s) = v["stream"].as_str() {
            loaded.extend(s.lines().map(str::to_owned).filter(|l| !l.is_empty()));
        }
    }
    if !status.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "docker load: the Docker Engine answered {status}: {}",
            text.trim()
        )));
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_headers() {
        assert_eq!(
            canonical_header("x-docker-expose-session-grpc-method"),
            "X-Docker-Expose-Session-Grpc-Method"
        );
    }

    #[test]
    fn parses_addresses() {
        assert_eq!(
            "unix:///run/x.sock".parse::<Addr>().unwrap(),
            Addr::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "tcp://10.0.0.1:1234".parse::<Addr>().unwrap(),
            Addr::Tcp("10.0.0.1:1234".into())
        );
        assert_eq!(
            "docker://".parse::<Addr>().unwrap(),
            Addr::Docker(DEFAULT_DOCKER_SOCK.into())
        );
        assert_eq!(
            "docker:///x/d.sock".parse::<Addr>().unwrap(),
            Addr::Docker("/x/d.sock".into())
        );
        for bad in ["http://x", "tcp://x", "tcp://:1", "unix://", "/run/x.sock"] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn status_messages_name_what_failed_below_grpc() {
        // The daemon's own errors come without a source: their message is the whole story.
        assert_eq!(
            status_message(&tonic::Status::unknown("no such ref")),
            "no such ref"
        );
        let reset = tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(
            status_message(&reset),
            "the connection to BuildKit failed: connection reset"
        );
        let refused = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TlsFailure::ExpectsTls,
        )));
        assert_eq!(status_message(&refused), TlsFailure::ExpectsTls.to_string());
        assert!(status_error(refused).is::<TlsFailure>());
    }

    #[tokio::test]
    async fn upgrade_keeps_bytes_after_the_head() {
        let (mut a, b) = tokio::io::duplex(1024);
        a.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\nPRI *")
            .await
            .unwrap();
        let mut b = b;
        let (status, rest) = read_http_head(&mut b).await.unwrap();
        assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
        let mut p = Prefixed::new(rest, b);
        let mut got = [0u8; 5];
        p.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PRI *");
    }
}
