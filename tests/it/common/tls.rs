//! Test certificates (made with the openssl CLI, v3 or v1) and the Go TLS terminator (hack/tls-terminator) that
//! stands in for a buildkitd on tcp:// in front of dockerd's BuildKit. It is Go's crypto/tls, as in buildkitd, so
//! alerts, their timing and what certificates pass are the real server's, not those of the Rust stack under test.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (hack/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A P-256 key pair, which every TLS stack here accepts.
const NEW_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A certificate and its key, as PEM files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Issued {
    pub fn cert(&self) -> &str {
        self.cert.to_str().unwrap()
    }
    pub fn key(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

/// A self-signed CA that issues certificates in a directory.
pub struct Ca {
    dir: PathBuf,
    name: String,
    pub cert: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let subject = format!("/CN=buildopt test {name}");
        let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
        openssl(
            dir,
            &[
                &["req", "-x509"][..],
                &NEW_KEY,
                &[
                    "-keyout", &key, "-out", &cert, "-subj", &subject, "-days", "1",
                ],
            ]
            .concat(),
        );
        Ca {
            dir: dir.to_owned(),
            name: name.to_owned(),
            cert: dir.join(cert),
        }
    }

    pub fn cert(&self) -> &str {
        self.cert.to_str().unwrap()
    }

    /// Issues `name` with subject CN `cn`. With `extensions` (an `-extfile`'s lines) the certificate is X.509 v3;
    /// without, `openssl x509 -req` makes a v1 certificate (OpenSSL 3.0, Debian 12), which is checked, since newer
    /// OpenSSL versions add extensions of their own.
    pub fn issue(&self, name: &str, cn: &str, extensions: Option<&str>) -> Issued {
        let dir = &self.dir;
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let subject = format!("/CN={cn}");
        openssl(
            dir,
            &[
                &["req"][..],
                &NEW_KEY,
                &["-keyout", &key, "-out", &csr, "-subj", &subject],
            ]
            .concat(),
        );
        let (ca_cert, ca_key) = (format!("{}.pem", self.name), format!("{}.key", self.name));
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
        ];
        if let Some(lines) = extensions {
            std::fs::write(dir.join(&ext), lines).unwrap();
            args.extend(["-extfile", &ext]);
        }
        openssl(dir, &args);
        let text = openssl(dir, &["x509", "-noout", "-text", "-in", &pem]);
        let want = if extensions.is_some() {
            "Version: 3 (0x2)"
        } else {
            "Version: 1 (0x0)"
        };
        assert!(text.contains(want), "{pem} is not {want}:\n{text}");
        Issued {
            cert: dir.join(pem),
            key: dir.join(key),
        }
    }
}

/// What a standalone buildkitd set up with `--tlscacert/--tlscert/--tlskey` and its clients would have.
pub struct Certs {
    pub ca: Ca,
    /// A CA that issued neither the daemon's certificate nor the clients'.
    pub other_ca: Ca,
    /// The daemon's certificate: v3, subjectAltName DNS:buildkitd.
    pub server: Issued,
    /// The daemon's certificate as v1 (CN=buildkitd, no subjectAltName).
    pub server_v1: Issued,
    /// A client certificate: v3, extendedKeyUsage clientAuth.
    pub client: Issued,
    /// A client certificate as `openssl x509 -req` makes it without an extensions file: v1.
    pub client_v1: Issued,
    /// A client certificate issued by `other_ca`.
    pub stranger: Issued,
}

impl Certs {
    pub fn generate(dir: &Path) -> Certs {
        let ca = Ca::new(dir, "ca");
        let other_ca = Ca::new(dir, "other-ca");
        Certs {
            server: ca.issue(
                "server",
                "buildkitd",
                Some("subjectAltName=DNS:buildkitd\nextendedKeyUsage=serverAuth\n"),
            ),
            server_v1: ca.issue("server-v1", "buildkitd", None),
            client: ca.issue("client", "client", Some("extendedKeyUsage=clientAuth\n")),
            client_v1: ca.issue("client-v1", "client-v1", None),
            stranger: other_ca.issue(
                "stranger",
                "stranger",
                Some("extendedKeyUsage=clientAuth\n"),
            ),
            ca,
            other_ca,
        }
    }
}

/// buildopt's TLS flags: `--tlscacert ca`, then `--tlscert`/`--tlskey` of `client`, then `--tlsservername`, each
/// when given.
pub fn flags<'a>(
    ca: &'a Ca,
    client: Option<&'a Issued>,
    server_name: Option<&'a str>,
) -> Vec<&'a str> {
    let mut flags = vec!["--tlscacert", ca.cert()];
    if let Some(client) = client {
        flags.extend(["--tlscert", client.cert(), "--tlskey", client.key()]);
    }
    if let Some(name) = server_name {
        flags.extend(["--tlsservername", name]);
    }
    flags
}

/// The terminator binary: `$BUILDOPT_TLS_TERMINATOR` (hack/test sets it), else built (cached) by
/// hack/tls-terminator/build.
fn terminator_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("BUILDOPT_TLS_TERMINATOR") {
            return PathBuf::from(path);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/tls-terminator/build");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed (hack/test installs Go and builds it):\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// A running terminator: TCP on 127.0.0.1, TLS (Go's crypto/tls) or plain, forwarding to dockerd's BuildKit through
/// `POST /grpc` upgraded to h2c. Killed on drop.
pub struct Terminator {
    pub port: u16,
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Terminator {
    /// TLS with `server`'s certificate; with `client_ca`, client certificates are required and verified against
    /// it (Go's `RequireAndVerifyClientCert`, as buildkitd does with --tlscacert). `tls12`: at most TLS 1.2.
    pub fn tls(
        server: &Issued,
        client_ca: Option<&Ca>,
        tls12: bool,
        docker_sock: &str,
    ) -> Terminator {
        let mut args = vec!["-cert", server.cert(), "-key", server.key()];
        if let Some(ca) = client_ca {
            args.extend(["-cacert", ca.cert()]);
        }
        if tls12 {
            args.push("-tls12");
        }
        Terminator::start(&args, docker_sock)
    }

    /// Plain TCP, like `buildkitd --addr tcp://...` without TLS.
    pub fn plain(docker_sock: &str) -> Terminator {
        Terminator::start(&[], docker_sock)
    }

    fn start(args: &[&str], docker_sock: &str) -> Terminator {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(terminator_binary())
            .args(args)
            .args(["-docker-sock", docker_sock])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "tls-terminator did not start: {line:?}\n{}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                )
            });
        Terminator { port, child, log }
    }

    pub fn addr(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// What the terminator logged (refused handshakes and the like), for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Terminator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
