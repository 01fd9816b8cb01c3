//! Real builds against the real BuildKit (dockerd's, through `docker://`) and registry that hack/services starts;
//! assertions are on what lands in the registry.

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
    let layers = layers(&s, &repo, "v1");
    assert_eq!(
        s.layer_listing(&repo, &layers[0]),
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
    let rebuild_pruned = |cache_from: &str| {
        t.run_ok(&["prune", "--all"]);
        t.run_ok(&[
            "--progress",
            "plain",
            "build",
            "--force",
            "--cache-from",
            cache_from,
        ]);
        s.manifest(&repo, "latest").unwrap()
    };
    let _exclusive = daemon_lock().write().unwrap_or_else(|p| p.into_inner());
    assert_eq!(
        rebuild_pruned("registry"),
        first,
        "the RUN step ran again instead of coming from the registry cache"
    );
    // Control: without the registry cache, the pruned daemon really runs the step again.
    assert_ne!(rebuild_pruned("none"), first);
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

/// `tcp://` with mutual TLS reaches the real BuildKit: a TLS terminator (what stunnel or a load balancer would be
/// in front of a buildkitd) checks the client certificate and forwards to dockerd's BuildKit.
#[test]
fn mtls_tcp_address_reaches_buildkit() {
    let s = Services::get();
    let dir = tempfile::tempdir().unwrap();
    let certs = crate::common::tls::Certs::generate(dir.path());
    let proxy = crate::common::tls::Terminator::start(&certs, std::path::Path::new(&s.docker_sock));
    let t = Tree::new();
    let addr = format!("tcp://127.0.0.1:{}", proxy.port);
    let (ca, cert, key) = (
        certs.ca.to_str().unwrap(),
        certs.client.to_str().unwrap(),
        certs.client_key.to_str().unwrap(),
    );
    let tls = [
        "--tlscacert",
        ca,
        "--tlscert",
        cert,
        "--tlskey",
        key,
        "--tlsservername",
        "buildkitd",
    ];
    let text = t.run_ok(&[&["doctor", "--addr", &addr][..], &tls].concat());
    assert!(text.contains("platforms: linux/"), "{text}");

    // Without a client certificate the terminator refuses the connection.
    let (code, _, err) = t.run(&[
        "doctor",
        "--addr",
        &addr,
        "--tlscacert",
        ca,
        "--tlsservername",
        "buildkitd",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot connect to BuildKit at {addr}"))
            || err.contains("Info failed"),
        "{err}"
    );
    // And the daemon's certificate is checked against the CA and the server name.
    let (code, _, err) = t.run(
        &[
            &["doctor", "--addr", &addr][..],
            &tls[..6],
            &["--tlsservername", "wrong-name"],
        ]
        .concat(),
    );
    assert_eq!(code, 1, "{err}");
}
