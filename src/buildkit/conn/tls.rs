//! `tcp://` connections, with or without TLS, and the words for every way they fail because of TLS (or for want
//! of it), whether at connect time or at the first call.
//!
//! TLS goes through our own rustls client rather than tonic's: tonic's `Identity` ends in rustls's
//! `with_client_auth_cert`, which checks that key and certificate match by parsing the certificate with webpki, and
//! webpki refuses X.509 v1 certificates, what `openssl x509 -req` makes without an extensions file, that buildctl and
//! Go's TLS server accept. Here the client certificate is served as given (the key check reads the public key
//! without webpki); the daemon's certificate is still verified by webpki against the CA and the server name.
//!
//! With TLS 1.3 the client finishes its handshake before the server has looked at the client certificate, so a
//! refusal arrives as an alert on the first read, after tonic considers the channel connected; a TLS port spoken to
//! in plain HTTP/2 likewise just hangs up then. Connections are therefore wrapped in [`Watched`], which, until the
//! daemon has sent its first bytes, turns errors and early ends of stream into an `io::Error` carrying a
//! [`TlsFailure`], and tells [`FirstAnswer`] how the first connection opened, so that `connect` can wait for the
//! daemon's HTTP/2 preface and report such failures itself. [`find_failure`] digs failures out of tonic's error
//! chains for calls that fail later.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName,
    OtherError, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;

use super::{ConnectError, TlsOptions};

/// The flags that configure TLS, for messages that tell to drop them.
const TLS_FLAGS: &str = "--tlscacert, --tlscert, --tlskey and --tlsservername";

/// Why a `tcp://` connection failed because of TLS, or because one side spoke TLS and the other did not, worded as
/// what to change.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsFailure {
    /// The daemon asked for a client certificate and none was configured.
    #[error("the daemon requires a client certificate: pass --tlscert and --tlskey")]
    ClientCertRequired {
        /// The daemon's alert, when it sent one.
        #[source]
        alert: Option<Alert>,
    },
    /// The daemon refused the client certificate.
    #[error(
        "the daemon rejected the client certificate {}: it must be issued by a CA the daemon trusts (buildkitd's --tlscacert) and be valid now",
        cert.display()
    )]
    ClientCertRejected {
        /// The certificate file.
        cert: PathBuf,
        /// The daemon's alert, when it sent one.
        #[source]
        alert: Option<Alert>,
    },
    /// The daemon's certificate is not valid for the name we check.
    #[error("{}", name_mismatch(expected, *name_given, presented))]
    ServerName {
        /// The name checked: `--tlsservername`, else the address's host.
        expected: String,
        /// Whether `--tlsservername` gave it.
        name_given: bool,
        /// The DNS names and IP addresses the certificate is valid for.
        presented: Vec<String>,
    },
    /// The daemon's certificate does not chain to a CA we trust.
    #[error(
        "the daemon's certificate is not signed by {}: pass the CA that issued it with --tlscacert",
        ca.as_ref().map_or("a CA this system trusts".to_owned(), |ca| format!("the CA in {}", ca.display()))
    )]
    UnknownCa {
        /// `--tlscacert`, if given.
        ca: Option<PathBuf>,
    },
    /// The daemon's certificate is X.509 v1, which webpki cannot verify.
    #[error(
        "the daemon's certificate is an X.509 v1 certificate, which cannot be verified: v1 has no subjectAltName to check `{name}` against (buildctl refuses it too). Re-issue it as v3 with a subjectAltName, e.g. `openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -days 365 -out server.pem -extfile <(printf 'subjectAltName={san}')`",
        san = san_for(name)
    )]
    ServerCertV1 {
        /// The name the certificate should be valid for.
        name: String,
    },
    /// The daemon's certificate is refused for another reason (expired, wrong usage, ...).
    #[error("the daemon's certificate is not acceptable")]
    ServerCert {
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// We spoke TLS and the daemon answered without it.
    #[error(
        "the daemon answered the TLS handshake with {answer}, so this port does not use TLS: drop {TLS_FLAGS}, or use the daemon's TLS address"
    )]
    NotTls {
        /// What came back.
        answer: &'static str,
    },
    /// The daemon hung up on our TLS handshake without an alert.
    #[error(
        "the daemon closed the connection during the TLS handshake without a TLS alert: if this port does not use TLS, drop {TLS_FLAGS}"
    )]
    HandshakeClosed,
    /// We spoke plain HTTP/2 and the daemon answered with TLS.
    #[error(
        "the daemon answered with TLS, so this port uses TLS: pass --tlscacert (and --tlscert and --tlskey if it requires client certificates)"
    )]
    ExpectsTls,
    /// We spoke plain HTTP/2 and the daemon hung up without a word, which is what a TLS server does.
    #[error(
        "the daemon closed the connection without answering, as a TLS port does when spoken to without TLS: if it uses TLS, pass --tlscacert (and --tlscert and --tlskey if it requires client certificates)"
    )]
    ClosedWithoutAnswer,
    /// After a completed TLS handshake the daemon hung up before answering, without an alert.
    #[error("{}", closed_after_handshake(cert.as_deref()))]
    ClosedAfterHandshake {
        /// The client certificate we sent, if any.
        cert: Option<PathBuf>,
    },
    /// Any other TLS failure (no common protocol version, ...).
    #[error("the TLS handshake with the daemon failed")]
    Handshake {
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
}

/// A TLS alert the daemon sent, by its RFC 8446 name (rustls's `Display` shows the Rust variant).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the daemon sent the TLS alert {}", alert_name(*.0))]
pub struct Alert(pub AlertDescription);

fn alert_name(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::CertificateRequired => "certificate_required".to_owned(),
        AlertDescription::BadCertificate => "bad_certificate".to_owned(),
        AlertDescription::UnsupportedCertificate => "unsupported_certificate".to_owned(),
        AlertDescription::CertificateRevoked => "certificate_revoked".to_owned(),
        AlertDescription::CertificateExpired => "certificate_expired".to_owned(),
        AlertDescription::CertificateUnknown => "certificate_unknown".to_owned(),
        AlertDescription::UnknownCA => "unknown_ca".to_owned(),
        AlertDescription::AccessDenied => "access_denied".to_owned(),
        AlertDescription::HandshakeFailure => "handshake_failure".to_owned(),
        other => format!("{other:?}"),
    }
}

fn name_mismatch(expected: &str, given: bool, presented: &[String]) -> String {
    let whose = if given {
        "--tlsservername"
    } else {
        "the host in the address"
    };
    let head = format!("the daemon's certificate is not valid for `{expected}` ({whose})");
    match presented {
        [] => format!(
            "{head}: it names no host (no DNS or IP subjectAltName); re-issue it with subjectAltName={}",
            san_for(expected)
        ),
        [one] => format!("{head} but for `{one}`: pass --tlsservername {one}"),
        many => format!(
            "{head} but for {}: pass --tlsservername with one of them",
            many.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn closed_after_handshake(cert: Option<&Path>) -> String {
    let head = "the daemon closed the connection right after the TLS handshake without saying why";
    match cert {
        Some(cert) => format!(
            "{head}: it probably rejected the client certificate {}; check that it is issued by a CA the daemon trusts",
            cert.display()
        ),
        None => head.to_owned(),
    }
}

/// The subjectAltName entry for `name`: `IP:` for addresses, `DNS:` otherwise.
fn san_for(name: &str) -> String {
    if name.parse::<std::net::IpAddr>().is_ok() {
        format!("IP:{name}")
    } else {
        format!("DNS:{name}")
    }
}

/// Finds a [`TlsFailure`] in an error chain. `io::Error` hides the error it carries from `source()` (it returns
/// that error's own source), so each `io::Error` is looked into as well.
pub(crate) fn find_failure<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a TlsFailure> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(f) = e.downcast_ref::<TlsFailure>() {
            return Some(f);
        }
        if let Some(f) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<TlsFailure>())
        {
            return Some(f);
        }
        next = e.source();
    }
    None
}

fn to_io(kind: io::ErrorKind, failure: TlsFailure) -> io::Error {
    io::Error::new(kind, failure)
}

/// How the first connection of a channel opened: `Ok` once the daemon sent its first bytes (its HTTP/2 SETTINGS,
/// which a server sends without waiting for a request), or what went wrong before that.
pub(super) type Opening = Result<(), TlsFailure>;

/// Hands the first connection made through a connector a way to report its [`Opening`]; later connections
/// (tonic reconnects) report nothing.
#[derive(Debug, Clone)]
pub(super) struct FirstAnswer(Arc<Mutex<Option<oneshot::Sender<Opening>>>>);

impl FirstAnswer {
    /// A reporter and where its report arrives.
    pub(super) fn new() -> (FirstAnswer, oneshot::Receiver<Opening>) {
        let (tx, rx) = oneshot::channel();
        (FirstAnswer(Arc::new(Mutex::new(Some(tx)))), rx)
    }

    fn take(&self) -> Option<oneshot::Sender<Opening>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What we know about a TLS setup, to explain its failures.
#[derive(Debug)]
struct Facts {
    cert: Option<PathBuf>,
    ca: Option<PathBuf>,
    /// The name the daemon's certificate is checked against.
    name: String,
    /// Whether `--tlsservername` gave `name`.
    name_given: bool,
}

impl Facts {
    /// Words a rustls error. `requested`: the daemon asked for a client certificate.
    fn classify(&self, e: &rustls::Error, requested: bool) -> TlsFailure {
        match e {
            // TLS 1.3's alert for "no certificate" (Go sends it); TLS 1.2 has none and uses bad_certificate.
            rustls::Error::AlertReceived(alert @ AlertDescription::CertificateRequired) => {
                TlsFailure::ClientCertRequired {
                    alert: Some(Alert(*alert)),
                }
            }
            rustls::Error::AlertReceived(alert) if requested && is_certificate_alert(*alert) => {
                match &self.cert {
                    None => TlsFailure::ClientCertRequired {
                        alert: Some(Alert(*alert)),
                    },
                    Some(cert) => TlsFailure::ClientCertRejected {
                        cert: cert.clone(),
                        alert: Some(Alert(*alert)),
                    },
                }
            }
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            }) => TlsFailure::ServerName {
                expected: self.name.clone(),
                name_given: self.name_given,
                presented: presented.iter().filter_map(|p| presented_name(p)).collect(),
            },
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
                TlsFailure::ServerName {
                    expected: self.name.clone(),
                    name_given: self.name_given,
                    presented: Vec::new(),
                }
            }
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                TlsFailure::UnknownCa {
                    ca: self.ca.clone(),
                }
            }
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other)))
                if other.is::<ServerCertIsV1>() =>
            {
                TlsFailure::ServerCertV1 {
                    name: self.name.clone(),
                }
            }
            rustls::Error::InvalidCertificate(_) => TlsFailure::ServerCert { source: e.clone() },
            _ => TlsFailure::Handshake { source: e.clone() },
        }
    }

    /// Words a failed handshake. `first`: the first bytes the daemon sent, if any.
    fn handshake_failed(&self, e: io::Error, requested: bool, first: &[u8]) -> io::Error {
        tracing::debug!(error = %e, kind = ?e.kind(), requested, first = ?first, "TLS handshake failed");
        if !first.is_empty() && !is_tls_record(first) {
            return to_io(
                io::ErrorKind::InvalidData,
                TlsFailure::NotTls {
                    answer: describe_non_tls(first),
                },
            );
        }
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return to_io(e.kind(), self.classify(tls, requested));
        }
        if is_hang_up(e.kind()) {
            let failure = if requested && self.cert.is_none() {
                TlsFailure::ClientCertRequired { alert: None }
            } else {
                TlsFailure::HandshakeClosed
            };
            return to_io(e.kind(), failure);
        }
        e
    }
}

/// Alerts a TLS server sends about the client's certificate (RFC 8446 §6.2), handshake_failure included because
/// some TLS 1.2 servers send it for a missing certificate.
fn is_certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure
    )
}

/// webpki words the names a certificate presents as `DnsName("x")` or `IpAddress(1.2.3.4)`; keep the names.
fn presented_name(p: &str) -> Option<String> {
    p.strip_prefix("DnsName(\"")
        .and_then(|s| s.strip_suffix("\")"))
        .or_else(|| {
            p.strip_prefix("IpAddress(")
                .and_then(|s| s.strip_suffix(')'))
        })
        .map(str::to_owned)
}

/// A TLS record starts with its content type (change_cipher_spec, alert, handshake, application_data) and major
/// version 3.
fn is_tls_record(first: &[u8]) -> bool {
    matches!(first[0], 0x14..=0x17) && first.get(1).is_none_or(|&v| v == 0x03)
}

fn describe_non_tls(first: &[u8]) -> &'static str {
    // grpc-go and other HTTP/2 servers send a SETTINGS frame (type 4, stream 0) first, without waiting for us.
    if first.len() >= 9 && first[3] == 0x04 && first[5..9] == [0, 0, 0, 0] {
        "plain HTTP/2 (gRPC without TLS)"
    } else if first.starts_with(b"HTTP/") {
        "plain HTTP"
    } else {
        "bytes that are not TLS"
    }
}

fn is_hang_up(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// The marker our verifier puts in a rustls error when the daemon's certificate is v1.
#[derive(Debug, thiserror::Error)]
#[error("the certificate is X.509 v1")]
struct ServerCertIsV1;

/// webpki's verification, except that a v1 end-entity certificate (which webpki refuses with a bare
/// `UnsupportedCertVersion`) is reported as such so that we can say how to re-issue it.
#[derive(Debug)]
struct ServerCert(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| match x509_facts(end_entity) {
                Some((1, _)) => rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(ServerCertIsV1)),
                )),
                _ => e,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.0.root_hint_subjects()
    }
}

/// Serves the client certificate, if any, whenever the daemon asks, and remembers that it asked. Unlike rustls's
/// `with_client_auth_cert`, it never parses the certificate with webpki, so v1 certificates are served too.
#[derive(Debug)]
struct ClientCert {
    key: Option<Arc<CertifiedKey>>,
    requested: Arc<AtomicBool>,
}

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.requested.store(true, Ordering::Relaxed);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// Opens TLS connections to one daemon, with the files of [`TlsOptions`] loaded once.
#[derive(Debug)]
pub(super) struct Connector {
    /// Without a client certificate resolver: each connection gets its own, to know whether the daemon asked.
    config: ClientConfig,
    key: Option<Arc<CertifiedKey>>,
    server_name: ServerName<'static>,
    facts: Arc<Facts>,
}

impl Connector {
    /// Loads the CA (else the system's roots), the client certificate and key, and the name to verify (`host` when
    /// `--tlsservername` is not given).
    pub(super) async fn load(tls: &TlsOptions, host: &str) -> Result<Connector, ConnectError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = match &tls.ca_cert {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path, "CA certificate").await? {
                    roots
                        .add(cert)
                        .map_err(|source| ConnectError::TlsUnusable {
                            path: path.clone(),
                            what: "CA certificate",
                            source,
                        })?;
                }
                roots
            }
            None => system_roots()?,
        };
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| ConnectError::TlsConfig(format!("cannot verify the daemon: {e}")))?;
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::TlsConfig(format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCert(verifier)))
            .with_no_client_auth();
        // gRPC is HTTP/2 only; Go's TLS server (buildkitd) negotiates h2.
        config.alpn_protocols = vec![b"h2".to_vec()];
        // Like buildctl (no ClientSessionCache): every connection does a full handshake, so a daemon that asks for
        // a client certificate always asks and we always know it.
        config.resumption = Resumption::disabled();

        let key = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => Some(Arc::new(load_identity(cert, key, &provider).await?)),
            (None, None) => None,
            _ => {
                return Err(ConnectError::TlsConfig(
                    "--tlscert and --tlskey go together".to_owned(),
                ));
            }
        };
        let (name, name_given) = match &tls.server_name {
            Some(name) => (name.clone(), true),
            // An IPv6 host is bracketed in the address, not in the name.
            None => (
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                false,
            ),
        };
        let server_name = ServerName::try_from(name.clone()).map_err(|_| {
            ConnectError::TlsConfig(format!(
                "`{name}` is not a DNS name or IP address to verify the daemon's certificate against"
            ))
        })?;
        Ok(Connector {
            config,
            key,
            server_name,
            facts: Arc::new(Facts {
                cert: tls.cert.clone(),
                ca: tls.ca_cert.clone(),
                name,
                name_given,
            }),
        })
    }

    /// Connects to `hostport` and completes the TLS handshake. Errors that are about TLS carry a [`TlsFailure`].
    pub(super) async fn connect(
        &self,
        hostport: &str,
        first_answer: &FirstAnswer,
    ) -> io::Result<Watched<TlsStream<Recorder<TcpStream>>>> {
        let report = first_answer.take();
        let tcp = TcpStream::connect(hostport).await?;
        tcp.set_nodelay(true)?;
        let requested = Arc::new(AtomicBool::new(false));
        let mut config = self.config.clone();
        config.client_auth_cert_resolver = Arc::new(ClientCert {
            key: self.key.clone(),
            requested: requested.clone(),
        });
        let first = Arc::new(Mutex::new(Vec::new()));
        let handshake = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(self.server_name.clone(), Recorder::new(tcp, first.clone()))
            .into_fallible()
            .await;
        let requested = requested.load(Ordering::Relaxed);
        // A server that refuses our TLS 1.2 certificate sends its alert and closes with our last flight unread,
        // which resets the connection: our write fails before we read the alert. It is still in the socket.
        let handshake = match handshake {
            Err((e, mut tcp)) if is_hang_up(e.kind()) => match unread_alert(&mut tcp).await {
                Some(alert) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    rustls::Error::AlertReceived(alert),
                )),
                None => Err(e),
            },
            Err((e, _)) => Err(e),
            Ok(stream) => Ok(stream),
        };
        match handshake {
            Ok(stream) => Ok(Watched {
                inner: stream,
                kind: Kind::Tls {
                    facts: self.facts.clone(),
                    requested,
                },
                answered: false,
                report,
            }),
            Err(e) => {
                let first = first.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let e = self.facts.handshake_failed(e, requested, &first);
                if let (Some(report), Some(failure)) = (report, carried(&e)) {
                    let _ = report.send(Err(failure.clone()));
                }
                Err(e)
            }
        }
    }
}

/// A plaintext TLS alert record waiting in `tcp`, as a server sends one before its handshake is done.
async fn unread_alert(tcp: &mut Recorder<TcpStream>) -> Option<AlertDescription> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 4096];
    // Whatever the server sent is already here; the wait only bounds a server that sent nothing.
    let n = tokio::time::timeout(std::time::Duration::from_millis(200), tcp.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let mut records = &buf[..n];
    while let [kind, 0x03, _, len_hi, len_lo, rest @ ..] = records {
        let len = usize::from(*len_hi) << 8 | usize::from(*len_lo);
        let body = rest.get(..len)?;
        if *kind == 0x15 && len == 2 {
            return Some(AlertDescription::from(body[1]));
        }
        records = &rest[len..];
    }
    None
}

/// Connects to `hostport` without TLS; a daemon that answers with TLS (or hangs up) is explained on first read.
pub(super) async fn connect_plain(
    hostport: &str,
    first_answer: &FirstAnswer,
) -> io::Result<Watched<TcpStream>> {
    let report = first_answer.take();
    let tcp = TcpStream::connect(hostport).await?;
    tcp.set_nodelay(true)?;
    Ok(Watched {
        inner: tcp,
        kind: Kind::Plain,
        answered: false,
        report,
    })
}

/// The [`TlsFailure`] an `io::Error` carries.
fn carried(e: &io::Error) -> Option<&TlsFailure> {
    e.get_ref().and_then(|i| i.downcast_ref::<TlsFailure>())
}

async fn read_file(path: &Path) -> Result<Vec<u8>, ConnectError> {
    fs_err::tokio::read(path)
        .await
        .map_err(|source| ConnectError::TlsFile {
            path: path.to_owned(),
            source,
        })
}

fn pem_error(path: &Path, what: &'static str, e: pem::Error) -> ConnectError {
    match e {
        pem::Error::NoItemsFound => ConnectError::TlsPem {
            path: path.to_owned(),
            what,
        },
        source => ConnectError::TlsPemSyntax {
            path: path.to_owned(),
            source,
        },
    }
}

async fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let bytes = read_file(path).await?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, what, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, what, pem::Error::NoItemsFound));
    }
    Ok(certs)
}

fn system_roots() -> Result<RootCertStore, ConnectError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(ConnectError::TlsConfig(
            "no CA certificates found on this system to verify the daemon's certificate: pass --tlscacert"
                .to_owned(),
        ));
    }
    Ok(roots)
}

/// The client certificate chain and its key, checked against each other without webpki.
async fn load_identity(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ConnectError> {
    let chain = read_certs(cert, "certificate").await?;
    let key_bytes = read_file(key).await?;
    let key_der =
        PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| pem_error(key, "private key", e))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|source| ConnectError::TlsUnusable {
            path: key.to_owned(),
            what: "private key",
            source,
        })?;
    let Some((_, spki)) = x509_facts(&chain[0]) else {
        return Err(ConnectError::TlsUnusable {
            path: cert.to_owned(),
            what: "certificate",
            source: rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
        });
    };
    // What rustls's keys_match compares, minus the webpki parse. A key that cannot tell its public half is let
    // through, as rustls does.
    if signing_key
        .public_key()
        .is_some_and(|public| public.as_ref() != spki)
    {
        return Err(ConnectError::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        });
    }
    Ok(CertifiedKey::new(chain, signing_key))
}

/// One DER element: (tag, the whole element, its contents, what follows it).
type DerElement<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Reads one DER element. Single-byte tags only, which is all an X.509 certificate's outer structure uses.
fn der_next(input: &[u8]) -> Option<DerElement<'_>> {
    let (&tag, rest) = input.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &input[..header + len], &rest[..len], &rest[len..]))
}

/// An X.509 certificate's version (1 to 3) and SubjectPublicKeyInfo (DER, with its SEQUENCE header), read without
/// webpki, which refuses v1 certificates outright. RFC 5280 §4.1: Certificate ::= SEQUENCE { tbsCertificate
/// SEQUENCE { [0] version DEFAULT v1, serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ...
/// }, ... }.
fn x509_facts(der: &[u8]) -> Option<(u8, &[u8])> {
    let (0x30, _, cert, _) = der_next(der)? else {
        return None;
    };
    let (0x30, _, tbs, _) = der_next(cert)? else {
        return None;
    };
    let (mut tag, _, contents, mut rest) = der_next(tbs)?;
    let mut version = 1;
    if tag == 0xa0 {
        let (0x02, _, v, _) = der_next(contents)? else {
            return None;
        };
        version = v.last()?.checked_add(1)?;
        (tag, _, _, rest) = der_next(rest)?;
    }
    // serialNumber, then signature, issuer, validity and subject.
    if tag != 0x02 {
        return None;
    }
    for _ in 0..4 {
        let (0x30, _, _, after) = der_next(rest)? else {
            return None;
        };
        rest = after;
    }
    let (0x30, spki, _, _) = der_next(rest)? else {
        return None;
    };
    Some((version, spki))
}

/// Copies the first bytes the daemon sends during the handshake, to tell a plain-TCP port from a TLS one.
#[derive(Debug)]
pub(super) struct Recorder<S> {
    inner: S,
    first: Arc<Mutex<Vec<u8>>>,
}

/// Enough for a TLS record header or an HTTP/2 frame header.
const RECORDED: usize = 16;

impl<S> Recorder<S> {
    fn new(inner: S, first: Arc<Mutex<Vec<u8>>>) -> Recorder<S> {
        Recorder { inner, first }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < RECORDED {
            let got = &buf.filled()[before..];
            let take = got.len().min(RECORDED - first.len());
            first.extend_from_slice(&got[..take]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[derive(Debug)]
enum Kind {
    Plain,
    Tls {
        facts: Arc<Facts>,
        /// The daemon asked for a client certificate during the handshake.
        requested: bool,
    },
}

/// A connection to the daemon that explains its early failures: until the daemon has sent its first bytes, read
/// and write errors and the end of the stream become `io::Error`s carrying a [`TlsFailure`] that says what went
/// wrong (a TLS 1.3 alert about our certificate, a plain port answering TLS, a TLS port hanging up on plain
/// HTTP/2). After that, errors pass through unchanged.
#[derive(Debug)]
pub(super) struct Watched<S> {
    inner: S,
    kind: Kind,
    answered: bool,
    /// Where the first connection reports how it opened.
    report: Option<oneshot::Sender<Opening>>,
}

impl<S> Watched<S> {
    /// What an error (or the end of the stream, `None`) before the daemon's first bytes means; reported as this
    /// connection's opening.
    fn explain(&mut self, e: Option<io::Error>) -> io::Error {
        let e = self.reword(e);
        if let (Some(report), Some(failure)) = (self.report.take(), carried(&e)) {
            let _ = report.send(Err(failure.clone()));
        }
        e
    }

    /// The daemon answered: report it, and pass errors through from now on.
    fn answered(&mut self) {
        self.answered = true;
        if let Some(report) = self.report.take() {
            let _ = report.send(Ok(()));
        }
    }

    fn reword(&self, e: Option<io::Error>) -> io::Error {
        let kind = e
            .as_ref()
            .map_or(io::ErrorKind::UnexpectedEof, io::Error::kind);
        let inner = e.as_ref().and_then(io::Error::get_ref);
        if inner.is_some_and(|i| i.is::<TlsFailure>()) {
            return e.unwrap_or_else(|| io::Error::from(kind));
        }
        let hung_up = e.is_none() || is_hang_up(kind);
        let failure = match &self.kind {
            Kind::Tls { facts, requested } => {
                match inner.and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(tls) => Some(facts.classify(tls, *requested)),
                    None if hung_up => Some(match (&facts.cert, requested) {
                        (None, true) => TlsFailure::ClientCertRequired { alert: None },
                        (cert, _) => TlsFailure::ClosedAfterHandshake { cert: cert.clone() },
                    }),
                    None => None,
                }
            }
            Kind::Plain => hung_up.then_some(TlsFailure::ClosedWithoutAnswer),
        };
        match (failure, e) {
            (Some(failure), _) => to_io(kind, failure),
            (None, Some(e)) => e,
            (None, None) => io::Error::from(kind),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.answered || buf.remaining() == 0 {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if got.is_empty() {
                    return Poll::Ready(Err(self.explain(None)));
                }
                if matches!(self.kind, Kind::Plain) && got.len() >= 2 && is_tls_record(got) {
                    let e = to_io(io::ErrorKind::InvalidData, TlsFailure::ExpectsTls);
                    return Poll::Ready(Err(self.explain(Some(e))));
                }
                self.answered();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.explain(Some(e)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Err(e)) if !self.answered => Poll::Ready(Err(self.write_failed(cx, e))),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(e)) if !self.answered => Poll::Ready(Err(self.write_failed(cx, e))),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Watched<S> {
    /// A write failed before the daemon said anything: its reason (a TLS alert) may be waiting unread, so read it.
    /// The connection is dead either way, so whatever the read consumes is lost to nobody.
    fn write_failed(&mut self, cx: &mut Context<'_>, e: io::Error) -> io::Error {
        let mut scratch = [0u8; 512];
        let mut rb = ReadBuf::new(&mut scratch);
        match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
            Poll::Ready(Err(read)) => self.explain(Some(read)),
            _ => self.explain(Some(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl x509 -req` without `-extfile` (OpenSSL 3.0): X.509 v1, EC P-256.
    const V1_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBIDCBxwIUCsSISG/LTv85FxvT1k459Rjor9QwCgYIKoZIzj0EAwIwEjEQMA4G
A1UEAwwHdGVzdCBDQTAeFw0yNjEyMDIwNDQ1MDNaFw0yNjEyMDMwNDQ1MDNaMBQx
EjAQBgNVBAMMCWJ1aWxka2l0ZDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABA11
52oGXDkTSAWCD/4A0a+BRCHNhuISCQKWzJn91nmV660oerV4+UPqGGvXvnbaGWrc
uMT3v9h0X3Y7+LooEqgwCgYIKoZIzj0EAwIDSAAwRQIhAMxljjrJ0aJ9o8TFvNxT
XDl/ZfASoS3vlR+i/uc2M9B8AiAG2fihKr3kFjulFLi9szKac3f02w17o0ZoaWrE
yMKVPg==
-----END CERTIFICATE-----
";
    const V1_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgYyeTHNvumZ+zmRzF
V+JIdBY6LzFUNjwlB3aqrJnrkZKhRANCAAQNdedqBlw5E0gFgg/+ANGvgUQhzYbi
EgkClsyZ/dZ5leutKHq1ePlD6hhr17522hlq3LjE97/YdF92O/i6KBKo
-----END PRIVATE KEY-----
";
    /// The same with `-extfile` (extendedKeyUsage=clientAuth): v3, another key.
    const V3_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBgDCCASWgAwIBAgIUCsSISG/LTv85FxvT1k459Rjor9MwCgYIKoZIzj0EAwIw
EjEQMA4GA1UEAwwHdGVzdCBDQTAeFw0yNjEyMDIwNDQ1MDNaFw0yNjEyMDMwNDQ1
MDNaMBQxEjAQBgNVBAMMCWJ1aWxka2l0ZDBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABCb3Dq4jvdAMnZBP2q2sRuOaO+6Rz452DrcFj6IsvTb2+beuLWGV/uNGCJfa
cbG6zHC4vlc4gf7Zdxos3pQcSBqjVzBVMBMGA1UdJQQMMAoGCCsGAQUFBwMCMB0G
A1UdDgQWBBTkrBP5aMze9BuPM7empmfMmOHWwDAfBgNVHSMEGDAWgBRSviBRcfq1
MKiu53am1UIKp9oNGjAKBggqhkjOPQQDAgNJADBGAiEAq6VOptOKaUgr7iiOlYRQ
d03TWduyfo/B7GnxUUg8IkMCIQDIXgzgnFAOv5TqFq8p02Lfd8doU0Lf6tq8JwKB
tMPX/w==
-----END CERTIFICATE-----
";

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn facts(cert: Option<&str>) -> Facts {
        Facts {
            cert: cert.map(PathBuf::from),
            ca: Some("ca.pem".into()),
            name: "buildkitd".into(),
            name_given: true,
        }
    }

    #[test]
    fn reads_version_and_public_key_of_v1_and_v3_certificates() {
        let key = rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(PrivateKeyDer::from_pem_slice(V1_KEY.as_bytes()).unwrap())
            .unwrap();
        let v1 = der(V1_CERT);
        let (version, spki) = x509_facts(&v1).unwrap();
        assert_eq!(version, 1);
        assert_eq!(spki, key.public_key().unwrap().as_ref());
        let v3 = der(V3_CERT);
        let (version, spki) = x509_facts(&v3).unwrap();
        assert_eq!(version, 3);
        assert_ne!(spki, key.public_key().unwrap().as_ref());
        assert_eq!(x509_facts(&v1[..v1.len() - 1]), None);
        assert_eq!(x509_facts(b"\x30\x00"), None);
    }

    /// The point of our own TLS client: rustls's own path refuses the v1 certificate before connecting.
    #[test]
    fn rustls_with_client_auth_cert_refuses_v1_which_we_accept() {
        let refused = ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_client_auth_cert(
            vec![der(V1_CERT)],
            PrivateKeyDer::from_pem_slice(V1_KEY.as_bytes()).unwrap(),
        )
        .unwrap_err();
        assert!(
            refused.to_string().contains("UnsupportedCertVersion"),
            "{refused}"
        );

        let dir = tempfile::tempdir().unwrap();
        let (cert, key, v3) = (
            dir.path().join("c.pem"),
            dir.path().join("c.key"),
            dir.path().join("v3.pem"),
        );
        std::fs::write(&cert, V1_CERT).unwrap();
        std::fs::write(&key, V1_KEY).unwrap();
        std::fs::write(&v3, V3_CERT).unwrap();
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(load_identity(&cert, &key, &provider)).unwrap();
        let mismatch = rt
            .block_on(load_identity(&v3, &key, &provider))
            .unwrap_err();
        assert!(
            matches!(mismatch, ConnectError::KeyMismatch { .. }),
            "{mismatch}"
        );
        let not_pem = rt
            .block_on(load_identity(&key, &key, &provider))
            .unwrap_err();
        assert_eq!(
            not_pem.to_string(),
            format!(
                "no certificate in {}: expected a PEM file with a `-----BEGIN CERTIFICATE-----` block",
                key.display()
            )
        );
    }

    #[test]
    fn alerts_about_the_client_certificate() {
        let required = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        let bad = rustls::Error::AlertReceived(AlertDescription::BadCertificate);
        assert!(matches!(
            facts(None).classify(&required, true),
            TlsFailure::ClientCertRequired { .. }
        ));
        // TLS 1.2 has no certificate_required: servers send bad_certificate for a missing one too.
        assert!(matches!(
            facts(None).classify(&bad, true),
            TlsFailure::ClientCertRequired { .. }
        ));
        assert_eq!(
            facts(Some("c.pem")).classify(&bad, true).to_string(),
            "the daemon rejected the client certificate c.pem: it must be issued by a CA the daemon trusts (buildkitd's --tlscacert) and be valid now"
        );
        // An alert about certificates from a daemon that never asked for ours is about something else.
        assert!(matches!(
            facts(Some("c.pem")).classify(&bad, false),
            TlsFailure::Handshake { .. }
        ));
    }

    #[test]
    fn server_certificate_problems() {
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("x").unwrap(),
            presented: vec![
                "DnsName(\"buildkitd\")".into(),
                "IpAddress(10.0.0.1)".into(),
            ],
        });
        assert_eq!(
            facts(None).classify(&name, false).to_string(),
            "the daemon's certificate is not valid for `buildkitd` (--tlsservername) but for `buildkitd`, `10.0.0.1`: pass --tlsservername with one of them"
        );
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert_eq!(
            facts(None).classify(&unknown, false).to_string(),
            "the daemon's certificate is not signed by the CA in ca.pem: pass the CA that issued it with --tlscacert"
        );
        let v1 = rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            ServerCertIsV1,
        ))));
        let text = facts(None).classify(&v1, false).to_string();
        assert!(
            text.starts_with("the daemon's certificate is an X.509 v1 certificate")
                && text.contains("subjectAltName=DNS:buildkitd"),
            "{text}"
        );
    }

    #[test]
    fn tells_plain_http2_from_tls() {
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 5];
        assert!(!is_tls_record(&settings));
        assert_eq!(
            describe_non_tls(&settings),
            "plain HTTP/2 (gRPC without TLS)"
        );
        assert!(is_tls_record(&[0x15, 0x03, 0x03, 0, 2]));
        assert!(is_tls_record(&[0x16]));
    }

    #[test]
    fn failures_are_found_inside_io_errors_in_a_chain() {
        let io = to_io(io::ErrorKind::ConnectionReset, TlsFailure::ExpectsTls);
        let status = tonic::Status::from_error(Box::new(io));
        assert!(matches!(
            find_failure(&status),
            Some(TlsFailure::ExpectsTls)
        ));
    }
}
