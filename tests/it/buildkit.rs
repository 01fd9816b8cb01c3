//! Real builds against the real BuildKit (dockerd's, through `docker://`) and registry that hack/services starts;
//! assertions are on what lands in the registry.

use crate::common::tls::{Certs, Terminator, flags};
use crate::common::{Services, Tree, daemon_lock, unique_repo};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The layers of `repo:tag`'s single-platform manifest.
fn layers(s: &Services, repo: &str, tag: &str) -> Vec<String> {
    let m = s
        .manifest(repo, tag)
        .unwrap_or_else(|| panic!("no manifest {repo}:{tag}"));
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// The entries of the first layer of `repo:tag` (see [`Services::layer_listing`]).
fn first_layer_listing(s: &Services, repo: &str, tag: &str) -> Vec<String> {
    s.layer_listing(repo, &layers(s, repo, tag)[0])
}

#[test]
fn copied_context_equals_the_selection() {
    let s = Services::get();
    let repo = unique_repo("context");
    let t = Tree::buildable(&repo, "FROM scratch\nCOPY . /ctx/\n")
        .file(
            "app/.dockerignore",
            "node_modules\n!node_modules/keep/**\n*.log\n!keep.log\n/build\n",
        )
        .file("app/src/main.rs", "fn main() {}\n")
        .file("app/run.sh", "#!/bin/sh\necho hi\n")
        .mode("app/run.sh", 0o755)
        .file("app/node_modules/a.js", "")
        .file("app/node_modules/keep/k.js", "k")
        .file("app/x.log", "")
        .file("app/keep.log", "kept")
        .file("app/build/out", "")
        .file("app/sub/build/out", "nested")
        .dir("app/empty")
        .symlink("app/link-to-src", "src")
        .symlink("app/link-outside", "/etc/passwd");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");

    let layers = layers(&s, &repo, "latest");
    assert_eq!(layers.len(), 1);
    let listing = s.layer_listing(&repo, &layers[0]);
    // Every selected entry, under /ctx, with its type and mode; and nothing else.
    let expected: Vec<String> = t.list("app").lines().map(|l| format!("ctx/{l}")).collect();
    let got: Vec<String> = listing
        .iter()
        .map(|l| {
            l.split_once(' ')
                .unwrap()
                .1
                .split(" -> ")
                .next()
                .unwrap()
                .to_owned()
        })
        .filter(|p| p != "ctx/")
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(got, expected_sorted);
    let line = |p: &str| {
        listing
            .iter()
            .find(|l| l.ends_with(p) || l.contains(&format!(" {p} -> ")))
            .unwrap_or_else(|| panic!("{p} not in {listing:#?}"))
            .clone()
    };
    assert!(
        line("ctx/run.sh").starts_with("-rwxr-xr-x"),
        "{}",
        line("ctx/run.sh")
    );
    assert!(line("ctx/src/main.rs").starts_with("-rw-r--r--"));
    assert_eq!(
        line("ctx/link-outside").split_once(' ').unwrap().1,
        "ctx/link-outside -> /etc/passwd"
    );
    assert_eq!(
        line("ctx/link-to-src").split_once(' ').unwrap().1,
        "ctx/link-to-src -> src"
    );
    assert!(line("ctx/empty/").starts_with('d'));
}

#[test]
fn special_files_reach_buildkit_as_fsutil_sends_them() {
    // The daemon creates the fifo (ModeNamedPipe) and gets the socket as an empty regular file (fsutil clears the
    // socket bit and its open fails); the image holds both, as `docker build` would give them.
    let s = Services::get();
    let repo = unique_repo("special");
    let t = Tree::buildable(&repo, "FROM scratch\nCOPY . /ctx/\n")
        .file("app/a", "x")
        .fifo("app/pipe");
    let _listener = std::os::unix::net::UnixListener::bind(t.join("app/sock")).unwrap();
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    let layers = layers(&s, &repo, "latest");
    let listing = s.layer_listing(&repo, &layers[0]);
    let line = |p: &str| {
        listing
            .iter()
            .find(|l| l.ends_with(p))
            .unwrap_or_else(|| panic!("{p} not in {listing:#?}"))
            .clone()
    };
    assert!(line("ctx/pipe").starts_with('p'), "{listing:#?}");
    assert!(line("ctx/sock").starts_with('-'), "{listing:#?}");
}

#[test]
fn multi_stage_with_run_steps_pushes_every_tag() {
    let s = Services::get();
    let repo = unique_repo("multistage");
    let t = Tree::buildable(
        &repo,
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE} AS build\nCOPY greeting.txt /in/\nRUN mkdir /out && tr a-z A-Z < /in/greeting.txt > /out/loud.txt\n\nFROM scratch\nCOPY --from=build /out/ /\n",
    )
    .file("app/greeting.txt", "hello\n");
    let toml =
        std::fs::read_to_string(t.join("buildopt.toml")).unwrap() + "tags = [\"latest\", \"v1\"]\n";
    std::fs::write(t.join("buildopt.toml"), toml).unwrap();
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("built"), "{err}");
    let latest = s.manifest(&repo, "latest").expect("latest pushed");
    assert_eq!(s.manifest(&repo, "v1"), Some(latest.clone()));
    assert_eq!(
        first_layer_listing(&s, &repo, "v1"),
        vec!["-rw-r--r-- loud.txt".to_owned()]
    );
}

#[test]
fn registry_cache_is_an_oci_image_manifest_and_survives_a_pruned_daemon() {
    let s = Services::get();
    let repo = unique_repo("cache");
    // The RUN step records when it ran: the image digest stays the same only if that step came from a cache.
    let t = Tree::buildable(
        &repo,
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY input.txt /\nRUN date +%s%N > /ran-at\n",
    )
    .file("app/input.txt", format!("{repo}\n"));
    let (code, _, err) = t.build(&["--cache-to", "registry"]);
    assert_eq!(code, 0, "{err}");
    let first = s.manifest(&repo, "latest").unwrap();
    let cache = s
        .manifest(&repo, "cache")
        .expect("cache pushed under :cache");
    assert_eq!(cache["mediaType"], OCI_MANIFEST, "{cache}");
    assert!(cache["layers"].as_array().is_some_and(|l| !l.is_empty()));

    // On an emptied daemon, a forced rebuild either gets the RUN step from the registry cache or runs it again.
    // Returns the image and the build's output (to tell why when the step was not taken from the cache).
    let rebuild_pruned = |cache_from: &str| {
        let pruned = t.run_ok(&["prune", "--all", "--yes"]);
        let (code, _, err) = t.run(&[
            "--progress",
            "plain",
            "build",
            "--force",
            "--cache-from",
            cache_from,
        ]);
        assert_eq!(code, 0, "{err}");
        (
            s.manifest(&repo, "latest").unwrap(),
            format!("{pruned}\n{err}"),
        )
    };
    let _exclusive = daemon_lock().write().unwrap_or_else(|p| p.into_inner());
    let (image, log) = rebuild_pruned("registry");
    assert_eq!(
        image, first,
        "the RUN step ran again instead of coming from the registry cache:\n{log}"
    );
    // Control: without the registry cache, the pruned daemon really runs the step again.
    assert_ne!(rebuild_pruned("none").0, first);
}

#[test]
fn failing_run_step_shows_the_error_and_pushes_nothing() {
    let s = Services::get();
    let repo = unique_repo("failing");
    let t = Tree::buildable(
        &repo,
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo about to fail && exit 3\n",
    );
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("about to fail"),
        "the step's output is shown: {err}"
    );
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("failed") && l.contains(" app ")),
        "{err}"
    );
    assert_eq!(s.manifest(&repo, "latest"), None);
}

#[test]
fn dependency_failure_skips_dependents_but_not_others() {
    let s = Services::get();
    let (t, repos) = Tree::workspace(&[("base", &[]), ("app", &["base"]), ("other", &[])]);
    let [base, app, other] = [&repos[0], &repos[1], &repos[2]];
    let t = t
        .file(
            "base/Dockerfile",
            format!("FROM {}\nRUN exit 1\n", s.base_image),
        )
        .file(
            "app/Dockerfile",
            format!("FROM {}/{base}:latest\n", s.registry),
        )
        .file("other/Dockerfile", "FROM scratch\nCOPY Dockerfile /\n");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("failed    app ") && l.ends_with("dependency `base` failed")),
        "{err}"
    );
    assert!(
        s.manifest(other, "latest").is_some(),
        "independent service still built: {err}"
    );
    assert_eq!(s.manifest(app, "latest"), None);
}

#[test]
fn unreachable_daemon_is_a_clear_error() {
    let t = Tree::new().app();
    let (code, _, err) = t.run(&["build", "--addr", "unix:///nonexistent/buildkitd.sock"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot connect to BuildKit at unix:///nonexistent/buildkitd.sock: check that buildkitd is running"),
        "{err}"
    );
    let (code, _, err) = t.run(&["doctor", "--addr", "tcp://127.0.0.1:1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot connect to BuildKit at tcp://127.0.0.1:1"),
        "{err}"
    );
    let (code, _, err) = t.run(&["doctor", "--addr", "http://127.0.0.1:1"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unsupported BuildKit address `http://127.0.0.1:1`"),
        "{err}"
    );
}

#[test]
fn doctor_and_du_talk_to_the_daemon() {
    let s = Services::get();
    let t = Tree::new();
    let text = t.run_ok(&["doctor", "--addr", &s.buildkit_addr]);
    assert!(text.contains("version:"), "{text}");
    assert!(text.contains("platforms: linux/"), "{text}");
    assert!(
        t.run_ok(&["du", "--addr", &s.buildkit_addr])
            .contains("total:")
    );
}

/// The session carried over `Control.Session` (as with standalone buildkitd) instead of dockerd's `POST /session`.
#[test]
fn session_over_control_session_works_too() {
    let s = Services::get();
    let repo = unique_repo("control-session");
    let t =
        Tree::buildable(&repo, "FROM scratch\nCOPY . /ctx/\n").file("app/x", "over the byte pipe");
    let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
    let out = t
        .cmd()
        .env("BUILDOPT_DOCKER_SESSION", "control")
        .args(["--progress", "plain", "build"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layers = s.manifest(&repo, "latest").unwrap()["layers"].clone();
    let listing = s.layer_listing(&repo, layers[0]["digest"].as_str().unwrap());
    assert!(listing.iter().any(|l| l.ends_with(" ctx/x")), "{listing:?}");
}

/// `doctor` against `addr` with `flags`, which must fail as a configuration error (exit code 2: the certificates,
/// names or TLS settings are the caller's to fix) with one clear line: it contains
/// `expected`, and no tonic or `Debug` rendering shows anywhere. Returns stderr.
fn assert_clear_failure(t: &Tree, addr: &str, flags: &[&str], expected: &str) -> String {
    let (code, _, err) = t.run(&[&["doctor", "--addr", addr][..], flags].concat());
    assert_eq!(code, 2, "{err}");
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("error: "), "{err}");
    assert!(
        first.contains(expected),
        "want {expected:?} in the first line:\n{err}"
    );
    for dump in [
        "Status {",
        "transport error",
        "code: '",
        "source: ",
        "Error(",
        "Custom {",
        "kind: ",
        "Some(",
    ] {
        assert!(!err.contains(dump), "{dump:?} in {err}");
    }
    for line in err.lines().skip(1) {
        assert!(line.starts_with("  Caused by: "), "{err}");
    }
    err
}

/// `tcp://` with mutual TLS reaches the real BuildKit through a Go TLS terminator (Go's crypto/tls, as buildkitd
/// uses) that requires and verifies client certificates, with a v3 client certificate and with a v1 one.
// See: SRE report: a v1 client certificate (`openssl x509 -req` without `-extfile`), which buildctl and Go's TLS
// server accept, failed with `invalid peer certificate: UnsupportedCertVersion` before connecting, because rustls's
// `with_client_auth_cert` parses the certificate with webpki.
#[test]
fn mtls_tcp_address_reaches_buildkit_with_v3_and_v1_client_certificates() {
    let s = Services::get();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    let daemon = Terminator::tls(&certs.server, Some(&certs.ca), false, &s.docker_sock);
    let t = Tree::new();
    for client in [&certs.client, &certs.client_v1] {
        let tls = flags(&certs.ca, Some(client), Some("buildkitd"));
        let (code, out, err) = t.run(&[&["doctor", "--addr", &daemon.addr()][..], &tls].concat());
        assert_eq!(code, 0, "{}: {err}\n{}", client.cert(), daemon.log());
        assert!(out.contains("platforms: linux/"), "{out}");
    }
}

/// Every way the client side of mutual TLS can be wrong gets one line that says what to change, whether the
/// daemon reports it after the handshake (TLS 1.3) or during it (TLS 1.2).
#[test]
fn mtls_client_side_mistakes_are_clear_errors() {
    let s = Services::get();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    let t = Tree::new();
    let ca = certs.ca.cert();
    for tls12 in [false, true] {
        let daemon = Terminator::tls(&certs.server, Some(&certs.ca), tls12, &s.docker_sock);
        let addr = daemon.addr();
        let err = assert_clear_failure(
            &t,
            &addr,
            &flags(&certs.ca, None, Some("buildkitd")),
            "the daemon requires a client certificate: pass --tlscert and --tlskey",
        );
        assert!(
            err.starts_with(&format!("error: cannot connect to BuildKit at {addr}: ")),
            "{err}"
        );
        assert_clear_failure(
            &t,
            &addr,
            &flags(&certs.ca, Some(&certs.stranger), Some("buildkitd")),
            &format!(
                "the daemon rejected the client certificate {}: it must be issued by a CA the daemon trusts",
                certs.stranger.cert()
            ),
        );
    }

    // Mistakes found before connecting, each naming the file.
    let daemon = Terminator::tls(&certs.server, Some(&certs.ca), false, &s.docker_sock);
    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let (cert, key, other_key) = (
        certs.client.cert(),
        certs.client.key(),
        certs.client_v1.key(),
    );
    for (cert, key, expected) in [
        (
            cert,
            other_key,
            format!("the client certificate {cert} does not match the private key {other_key}"),
        ),
        (
            key,
            key,
            format!(
                "no certificate in {key}: expected a PEM file with a `-----BEGIN CERTIFICATE-----` block"
            ),
        ),
        (
            cert,
            cert,
            format!(
                "no private key in {cert}: expected a PEM file with a `-----BEGIN PRIVATE KEY-----` block"
            ),
        ),
        (cert, missing, format!("cannot read TLS file {missing}")),
    ] {
        let flags = ["--tlscacert", ca, "--tlscert", cert, "--tlskey", key];
        let err = assert_clear_failure(&t, &daemon.addr(), &flags, &expected);
        if key == missing {
            assert!(err.contains("No such file or directory"), "{err}");
        }
    }
}

/// The daemon's certificate is checked against the CA and the server name, and each mismatch says what to pass.
#[test]
fn mtls_server_certificate_mismatches_are_clear_errors() {
    let s = Services::get();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    let daemon = Terminator::tls(&certs.server, Some(&certs.ca), false, &s.docker_sock);
    let t = Tree::new();
    let addr = daemon.addr();
    let client = Some(&certs.client);
    assert_clear_failure(
        &t,
        &addr,
        &flags(&certs.ca, client, Some("wrong-name")),
        "the daemon's certificate is not valid for `wrong-name` (--tlsservername) but for `buildkitd`: pass --tlsservername buildkitd",
    );
    assert_clear_failure(
        &t,
        &addr,
        &flags(&certs.ca, client, None),
        "the daemon's certificate is not valid for `127.0.0.1` (the host in the address) but for `buildkitd`",
    );
    assert_clear_failure(
        &t,
        &addr,
        &flags(&certs.other_ca, client, Some("buildkitd")),
        &format!(
            "the daemon's certificate is not signed by the CA in {}: pass the CA that issued it with --tlscacert",
            certs.other_ca.cert()
        ),
    );
}

/// A v1 server certificate cannot be verified (no subjectAltName); the error says how to re-issue it.
#[test]
fn v1_server_certificate_gets_reissue_advice() {
    let s = Services::get();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    let daemon = Terminator::tls(&certs.server_v1, Some(&certs.ca), false, &s.docker_sock);
    let err = assert_clear_failure(
        &Tree::new(),
        &daemon.addr(),
        &flags(&certs.ca, Some(&certs.client), Some("buildkitd")),
        "the daemon's certificate is an X.509 v1 certificate, which cannot be verified",
    );
    assert!(
        err.contains("Re-issue it as v3 with a subjectAltName")
            && err.contains("-extfile <(printf 'subjectAltName=DNS:buildkitd')"),
        "{err}"
    );
}

/// TLS to a plain-TCP port and plain TCP to a TLS port are named as such, with the flags to change.
#[test]
fn tls_and_plain_port_mix_ups_are_named() {
    let s = Services::get();
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(dir.path());
    let t = Tree::new();

    let plain = Terminator::plain(&s.docker_sock);
    assert!(
        t.run_ok(&["doctor", "--addr", &plain.addr()])
            .contains("platforms: linux/")
    );
    assert_clear_failure(
        &t,
        &plain.addr(),
        &flags(&certs.ca, Some(&certs.client), Some("buildkitd")),
        "the daemon answered the TLS handshake with plain HTTP/2 (gRPC without TLS), so this port does not use TLS: drop --tlscacert, --tlscert, --tlskey and --tlsservername",
    );

    for client_ca in [Some(&certs.ca), None] {
        let tls = Terminator::tls(&certs.server, client_ca, false, &s.docker_sock);
        assert_clear_failure(
            &t,
            &tls.addr(),
            &[],
            "the daemon closed the connection without answering, as a TLS port does when spoken to without TLS: if it uses TLS, pass --tlscacert",
        );
    }
}

/// The second, modern daemon (dockerd 28's BuildKit) answers `doctor` with its version and a linux worker.
#[test]
#[expect(
    clippy::print_stdout,
    reason = "the version the daemon reports is worth seeing in the test output"
)]
fn second_daemon_doctor_reports_version_and_platform() {
    let s = Services::get();
    let text = Tree::new().run_ok(&["doctor", "--addr", &s.buildkit_addr2]);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("version:"))
        .unwrap_or_else(|| panic!("no version line: {text}"))
        .trim();
    println!("BuildKit at {}: version {version}", s.buildkit_addr2);
    assert!(
        !version.is_empty() && !version.starts_with("unknown"),
        "{text}"
    );
    assert!(text.contains("platforms: linux/"), "{text}");
}

/// A `FROM scratch` image built through the second daemon lands in the registry. That daemon refuses the
/// `network.host` entitlement (like a standalone buildkitd), so the build asks for no network.
#[test]
fn second_daemon_builds_into_the_registry() {
    let s = Services::get();
    let repo = unique_repo("daemon2");
    let t = Tree::buildable_on(
        &s.buildkit_addr2,
        "none",
        &repo,
        "FROM scratch\nCOPY hello.txt /\n",
    )
    .file("app/hello.txt", "from the second daemon\n");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        first_layer_listing(&s, &repo, "latest"),
        vec!["-rw-r--r-- hello.txt".to_owned()]
    );
}

/// The second daemon refuses a solve that asks for the `network.host` entitlement, with BuildKit's own words.
#[test]
fn second_daemon_refuses_network_host() {
    let s = Services::get();
    let repo = unique_repo("daemon2-host");
    let t = Tree::buildable_on(&s.buildkit_addr2, "host", &repo, "FROM scratch\nCOPY x /\n")
        .file("app/x", "");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "granting entitlement network.host is not allowed by build daemon configuration"
        ),
        "{err}"
    );
    assert_eq!(s.manifest(&repo, "latest"), None);
}
