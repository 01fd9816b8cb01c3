//! Never a wrong skip, never a false report: the pipeline under races, faults and odd input, against the real
//! daemons and registry (a loopback proxy injects the registry faults and the dropped daemon connection, which the
//! real components cannot be made to produce on demand).
//!
//! See: issue 7.

use std::time::{Duration, Instant};

use crate::common::proxy::{Fault, RegistryProxy, Rule, SocketProxy};
use crate::common::{Services, Tree, copy_tree, daemon_lock, pairs, summary, unique_repo};

/// The manifest digest under `repo:tag`, or None.
fn tag_digest(s: &Services, repo: &str, tag: &str) -> Option<String> {
    s.manifest(repo, tag)?;
    Some(s.manifest_digest(repo, tag))
}

/// The tags of `repo` (none when the repository has no tags).
fn tags(s: &Services, repo: &str) -> Vec<String> {
    let (code, _, body) = s.registry_get(&format!("/v2/{repo}/tags/list"), "*/*");
    if code != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// The files of `repo:tag`'s single layer, `path=content`.
fn layer_files(s: &Services, repo: &str, tag: &str) -> Vec<String> {
    let m = s.manifest(repo, tag).unwrap();
    let digest = m["layers"][0]["digest"].as_str().unwrap();
    let (code, _, body) = s.registry_get(&format!("/v2/{repo}/blobs/{digest}"), "*/*");
    assert_eq!(code, 200);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("l.tgz"), body).unwrap();
    let out = std::process::Command::new("tar")
        .args(["-xzf", "l.tgz", "-O"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    vec![String::from_utf8_lossy(&out.stdout).into_owned()]
}

/// The wrong skip of issue 7: a file edited after hashing but before BuildKit read it was pushed under the content
/// tag of the old inputs, and reverting the file later skipped to that image.
#[test]
fn a_file_edited_during_the_build_is_never_tagged() {
    let s = Services::get();
    let (t, repos) = Tree::workspace(&[("a", &[]), ("b", &["a"])]);
    let t = t
        .file(
            "a/Dockerfile",
            // The repository name keeps the step out of the daemon's cache from earlier runs.
            format!(
                "FROM {}\nRUN echo a-is-running {} && sleep 3\n",
                s.base_image, repos[0]
            ),
        )
        .file("b/Dockerfile", "FROM scratch\nCOPY app.txt /\n")
        .file("b/app.txt", "v1\n");
    let old = t.digest("b");
    let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
    let mut run = t.spawn(&["build"]);
    run.wait_line("a-is-running", 60);
    // b was hashed at the start; BuildKit reads it only once `a` is done.
    std::fs::write(t.join("b/app.txt"), "edited while a ran\n").unwrap();
    let (code, err) = run.finish();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("b/app.txt changed during the build") && err.contains("nothing was tagged"),
        "{err}"
    );
    assert_eq!(
        summary(&err),
        pairs(&[("built", "a"), ("failed", "b")]),
        "{err}"
    );
    // The registry cache BuildKit exported is keyed by content, so it stays right; no image tag was written.
    assert_eq!(tags(&s, &repos[1]), ["cache"], "b got no image tag");
    assert_eq!(tag_digest(&s, &repos[1], &format!("bo-{old}")), None);

    // Back to the hashed content: not a skip to a wrong image, but a build of what is there.
    std::fs::write(t.join("b/app.txt"), "v1\n").unwrap();
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        summary(&err),
        pairs(&[("skipped", "a"), ("built", "b")]),
        "{err}"
    );
    assert_eq!(layer_files(&s, &repos[1], "latest"), ["v1\n"]);
}

/// A content tag whose layer blob is gone would leave `latest` on an image nobody can pull: rebuild instead.
#[test]
fn a_content_tag_with_a_missing_blob_is_rebuilt() {
    let s = Services::get();
    let repo = unique_repo("t-blob");
    let t = Tree::buildable(&repo, "FROM scratch\nCOPY f /\n").file("app/f", "blob");
    assert_eq!(t.build(&[]).0, 0);
    let layer = s.manifest(&repo, "latest").unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.registry_delete(&format!("/v2/{repo}/blobs/{layer}")), 202);

    let plan = t.run_ok(&["plan"]);
    assert!(
        plan.contains("build: the image under the content tag of inputs")
            && plan.contains(&format!("cannot be used: layer blob {layer} is missing")),
        "{plan}"
    );
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary(&err), pairs(&[("built", "app")]), "{err}");
    let (code, _, _) = s.registry_get(&format!("/v2/{repo}/blobs/{layer}"), "*/*");
    assert_eq!(code, 200, "the rebuild pushed the layer again");
}

/// A registry that answers a content tag with 200 and nothing, or with a body that is not a manifest, has no image
/// for the inputs.
#[test]
fn an_empty_or_unreadable_manifest_is_not_a_hit() {
    let s = Services::get();
    let proxy = RegistryProxy::start(&s.registry);
    let (t, _) = Tree::workspace_at(&proxy.addr, &s.buildkit_addr2, "none", &[("app", &[])]);
    let t = t
        .file("app/Dockerfile", "FROM scratch\nCOPY f /\n")
        .file("app/f", "x");
    assert_eq!(t.build(&[]).0, 0);

    proxy.rule(Rule::new("GET", "/manifests/bo-", Fault::EmptyOk));
    let out = t.run_ok(&["plan", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let app = &json["services"][0];
    assert_eq!(app["decision"], "build", "{out}");
    assert!(
        app["reason"]
            .as_str()
            .unwrap()
            .contains("cannot be used: the registry returned an empty manifest"),
        "{out}"
    );
    proxy.clear();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&t.run_ok(&["plan", "--json"])).unwrap()["services"]
            [0]["decision"],
        "skip"
    );
}

/// A skipped service whose promotion fails fails alone (with its dependents); the others still build.
#[test]
fn a_failed_promotion_fails_only_its_service_and_dependents() {
    let s = Services::get();
    let proxy = RegistryProxy::start(&s.registry);
    let (t, repos) = Tree::three_scratch_services(&proxy.addr, &s.buildkit_addr2);
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");

    // a must promote (v1 is new), b must build, c waits on a.
    t.replace(
        "buildopt.toml",
        "[services.a]\ncontext = \"a\"\n",
        "[services.a]\ncontext = \"a\"\ntags = [\"latest\", \"v1\"]\n",
    );
    std::fs::write(t.join("b/f"), "b2").unwrap();
    std::fs::write(t.join("c/f"), "c2").unwrap();
    proxy.rule(Rule::new(
        "PUT",
        format!("/{}/manifests/v1", repos[0]),
        Fault::Status(500, "UNKNOWN"),
    ));
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        summary(&err),
        pairs(&[("failed", "a"), ("built", "b"), ("failed", "c")]),
        "{err}"
    );
    let a = err.lines().find(|l| l.starts_with("failed    a")).unwrap();
    assert!(
        a.contains(&format!(
            "registry {} answered 500 Internal Server Error for {}/{}:v1 (3 attempts): UNKNOWN: injected",
            proxy.addr, proxy.addr, repos[0]
        )),
        "{a}"
    );
    assert!(err.contains("failed    c  dependency `a` failed"), "{err}");
}

/// When the second requested tag cannot be moved, the report says that the first one moved.
#[test]
fn a_partial_tag_move_is_reported_as_it_is() {
    let s = Services::get();
    let proxy = RegistryProxy::start(&s.registry);
    let (t, repos) = Tree::workspace_at(&proxy.addr, &s.buildkit_addr2, "none", &[("app", &[])]);
    let repo = &repos[0];
    let t = t
        .file("app/Dockerfile", "FROM scratch\nCOPY f /\n")
        .file("app/f", "one");
    t.append("buildopt.toml", "tags = [\"latest\", \"v1\"]\n");
    assert_eq!(t.build(&[]).0, 0);
    let one = tag_digest(&s, repo, "latest").unwrap();

    std::fs::write(t.join("app/f"), "two").unwrap();
    proxy.rule(Rule::new(
        "PUT",
        format!("/{repo}/manifests/v1"),
        Fault::Status(500, "UNKNOWN"),
    ));
    let meta = t.join("meta.json");
    let (code, _, err) = t.build(&["--metadata-file", meta.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let two = tag_digest(&s, repo, "latest").unwrap();
    assert_ne!(one, two);
    assert_eq!(tag_digest(&s, repo, "v1").unwrap(), one);
    let line = err.lines().find(|l| l.starts_with("failed")).unwrap();
    assert!(
        line.contains("moved: latest")
            && line.contains(&format!("not moved: v1 (still {})", &one[..19])),
        "{line}"
    );
    assert!(
        err.contains(&format!(
            "tagged {}/{repo}:latest -> {}",
            proxy.addr,
            &two[..19]
        )),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let tags = &v["app"]["buildopt.tags"];
    assert_eq!(tags[0]["state"], "moved", "{v}");
    assert_eq!(tags[1]["state"], "failed", "{v}");
    assert_eq!(tags[1]["now"], one.as_str(), "{v}");
}

/// SIGTERM (like SIGINT) while tags move: the run stops, and the report reads the tags back from the registry.
#[test]
fn sigterm_during_a_tag_move_reports_what_moved() {
    let s = Services::get();
    let proxy = RegistryProxy::start(&s.registry);
    let (t, repos) = Tree::workspace_at(&proxy.addr, &s.buildkit_addr2, "none", &[("app", &[])]);
    let repo = &repos[0];
    let t = t
        .file("app/Dockerfile", "FROM scratch\nCOPY f /\n")
        .file("app/f", "one");
    t.append("buildopt.toml", "tags = [\"latest\", \"v1\"]\n");
    assert_eq!(t.build(&[]).0, 0);
    let one = tag_digest(&s, repo, "latest").unwrap();

    std::fs::write(t.join("app/f"), "two").unwrap();
    proxy.rule(Rule::new(
        "PUT",
        format!("/{repo}/manifests/v1"),
        Fault::Hold,
    ));
    let run = t.spawn(&["build"]);
    assert!(proxy.wait_for_fault(
        "PUT",
        &format!("/{repo}/manifests/v1"),
        Duration::from_secs(60)
    ));
    let stopping = Instant::now();
    run.signal("TERM");
    let (code, err) = run.finish();
    assert!(stopping.elapsed() < Duration::from_secs(10), "{err}");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("interrupted by SIGTERM"), "{err}");
    let two = tag_digest(&s, repo, "latest").unwrap();
    assert_ne!(one, two);
    assert_eq!(tag_digest(&s, repo, "v1").unwrap(), one);
    let line = err
        .lines()
        .find(|l| l.starts_with("stopped"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("moved: latest") && line.contains("not moved: v1"),
        "{line}"
    );
}

/// Two runners build the same inputs at once on two daemons: the first to tag wins, the other uses its image and
/// says so; both succeed and every tag ends on one complete image.
#[test]
fn concurrent_builders_of_the_same_inputs_agree_on_one_image() {
    let s = Services::get();
    let (t, repos) = Tree::workspace(&[("app", &[])]);
    let repo = &repos[0];
    let t = t
        .file(
            "app/Dockerfile",
            format!(
                "FROM {}\nCOPY f /\nRUN sleep 4 && date +%s%N > /built-at\n",
                s.base_image
            ),
        )
        // Unique, so that neither daemon has the RUN step cached from an earlier run.
        .file("app/f", format!("same inputs for {repo}"));
    let second = Tree::new();
    copy_tree(t.path(), second.path());
    let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
    let (meta1, meta2) = (t.join("m.json"), second.join("m.json"));
    let first = t.spawn(&["build", "--metadata-file", meta1.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(2));
    let later = second.spawn(&[
        "build",
        "--addr",
        &s.buildkit_addr2,
        "--network",
        "none",
        "--metadata-file",
        meta2.to_str().unwrap(),
    ]);
    let (code1, err1) = first.finish();
    let (code2, err2) = later.finish();
    assert_eq!((code1, code2), (0, 0), "{err1}\n---\n{err2}");
    let m1: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta1).unwrap()).unwrap();
    let m2: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta2).unwrap()).unwrap();
    let content = m1["app"]["buildopt.content-tag"].as_str().unwrap();
    let winner = tag_digest(&s, repo, content.rsplit(':').next().unwrap()).unwrap();
    assert_eq!(tag_digest(&s, repo, "latest").unwrap(), winner);
    assert_eq!(m1["app"]["containerimage.digest"], winner.as_str(), "{m1}");
    assert_eq!(m2["app"]["containerimage.digest"], winner.as_str(), "{m2}");
    // Whichever tagged first won; the other one says it used that image.
    let adopted = [&m1, &m2].map(|m| m["app"]["buildopt.adopted"] == true);
    assert_eq!(adopted.iter().filter(|a| **a).count(), 1, "{m1}\n{m2}");
    let adopter = if adopted[0] { &err1 } else { &err2 };
    assert!(
        adopter.contains("another build of the same inputs"),
        "{adopter}"
    );
}

/// `source_date_epoch` makes the image a function of its inputs: rebuilt from nothing, it is the same image.
#[test]
fn reproducible_images_are_the_same_when_rebuilt_from_scratch() {
    let s = Services::get();
    let repo = unique_repo("t-repro");
    let t = Tree::buildable(
        &repo,
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY f /\nRUN echo made > /made\n",
    )
    .file("app/f", "reproducible");
    t.append("buildopt.toml", "source_date_epoch = 1700000000\n");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    let first = tag_digest(&s, &repo, "latest").unwrap();
    let _exclusive = daemon_lock().write().unwrap_or_else(|p| p.into_inner());
    t.run_ok(&["prune", "--all", "--yes"]);
    let (code, _, err) = t.run(&[
        "--progress",
        "plain",
        "build",
        "--force",
        "--cache-from",
        "none",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tag_digest(&s, &repo, "latest").unwrap(), first);
}

/// The daemon connection drops mid-build: the error says so, and nothing is tagged.
#[test]
fn a_lost_daemon_is_named_and_nothing_is_tagged() {
    let s = Services::get();
    let proxy = SocketProxy::start(std::path::Path::new(&s.docker_sock));
    let repo = unique_repo("t-lost");
    let addr = format!("docker://{}", proxy.path.display());
    let t = Tree::buildable_on(
        &addr,
        "host",
        &repo,
        &format!(
            "ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN echo step-started {repo} && sleep 20\n"
        ),
    );
    let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
    let mut run = t.spawn(&["build"]);
    run.wait_line("step-started", 60);
    let cut = Instant::now();
    proxy.cut();
    let (code, err) = run.finish();
    assert!(cut.elapsed() < Duration::from_secs(10), "{err}");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "lost the connection to BuildKit at {addr} during the build"
        )),
        "{err}"
    );
    assert!(!err.contains("connection error\n"), "{err}");
    assert_eq!(tags(&s, &repo), Vec::<String>::new());
}

/// A registry 500 says 500, with the registry's own error code.
#[test]
fn a_registry_error_names_its_status_and_code() {
    let s = Services::get();
    let proxy = RegistryProxy::start(&s.registry);
    let (t, repos) = Tree::workspace_at(&proxy.addr, &s.buildkit_addr2, "none", &[("app", &[])]);
    let t = t.file("app/Dockerfile", "FROM scratch\n");
    proxy.rule(Rule::new(
        "GET",
        "/manifests/bo-",
        Fault::Status(500, "UNKNOWN"),
    ));
    let (code, _, err) = t.run(&["plan"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "registry {} answered 500 Internal Server Error for {}/{}:bo-",
            proxy.addr, proxy.addr, repos[0]
        )) && err.contains("(3 attempts): UNKNOWN: injected"),
        "{err}"
    );
    assert!(!err.contains("did not answer"), "{err}");
}

/// A refused cache export is named as such, with what happened to the image.
#[test]
fn a_refused_cache_export_is_reported() {
    let s = Services::get();
    let proxy = RegistryProxy::start(&s.registry);
    let (t, repos) = Tree::workspace_at(&proxy.addr, &s.buildkit_addr2, "none", &[("app", &[])]);
    let t = t
        .file("app/Dockerfile", "FROM scratch\nCOPY f /\n")
        .file("app/f", "cache");
    proxy.rule(Rule::new(
        "PUT",
        "/manifests/cache",
        Fault::Status(500, "UNKNOWN"),
    ));
    let (code, _, err) = t.build(&["--cache-to", "registry"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.lines().all(|l| !l.starts_with("unknown: injected")),
        "a daemon message line without its service: {err}"
    );
    assert!(
        err.contains(&format!(
            "warning: app: exporting the registry cache to {}/{}:cache failed",
            proxy.addr, repos[0]
        )) && err.contains(
            "500 Internal Server Error unknown: injected; the image was still pushed and tagged"
        ),
        "{err}"
    );
    let latest = tag_digest(&s, &repos[0], "latest").expect("latest");
    let plan = t.run_ok(&["plan", "--cache-to", "registry"]);
    assert!(
        plan.contains("its registry cache `cache` does not")
            && plan.contains("the cache is exported without rebuilding the image"),
        "{plan}"
    );
    // With the registry fixed, the next run skips the image and exports only the cache.
    proxy.clear();
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary(&err), pairs(&[("skipped", "app")]), "{err}");
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(tag_digest(&s, &repos[0], "latest"), Some(latest));
    assert!(tag_digest(&s, &repos[0], "cache").is_some(), "{err}");
    let plan = t.run_ok(&["plan"]);
    assert!(!plan.contains("does not"), "{plan}");
}

/// `--metadata-file` in a directory that does not exist fails before anything is built or moved.
#[test]
fn a_bad_metadata_path_fails_before_building() {
    let s = Services::get();
    let repo = unique_repo("t-meta");
    let t = Tree::buildable(&repo, "FROM scratch\nCOPY f /\n").file("app/f", "m");
    let (code, _, err) = t.build(&["--metadata-file", "missing/dir/meta.json"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--metadata-file missing/dir/meta.json: directory missing/dir does not exist"),
        "{err}"
    );
    assert_eq!(tags(&s, &repo), Vec::<String>::new());
    let leftovers: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The daemon refuses `network.host`: said at once, with how to allow it or avoid it.
#[test]
fn a_refused_entitlement_says_how_to_allow_or_avoid_it() {
    let s = Services::get();
    let repo = unique_repo("t-entitlement");
    let t = Tree::buildable_on(&s.buildkit_addr2, "host", &repo, "FROM scratch\n");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("network.host is not allowed"), "{err}");
    assert!(
        err.contains("--allow-insecure-entitlement network.host")
            && err.contains("network = \"default\""),
        "{err}"
    );
}

/// No ANSI colour codes when stderr is not a terminal.
#[test]
fn no_colour_on_a_pipe() {
    let t = Tree::new().app().file("app/f", "x");
    t.run_ok(&["hash"]);
    // A corrupt index is rebuilt with a warning: the warning must be plain text.
    std::fs::write(crate::hash::index_file(&t), b"garbage").unwrap();
    let (code, _, err) = t.run(&["hash"]);
    assert_eq!(code, 0);
    assert!(err.contains("rebuilding the local hash index"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

/// A registry that wants credentials when none were found says where buildopt looked, and does not claim that
/// credentials were rejected.
#[test]
fn no_credentials_is_not_rejected_credentials() {
    let s = Services::get();
    let repo = unique_repo("t-nocreds");
    let t = Tree::new()
        .file(
            "buildopt.toml",
            format!(
                "[registry]\nurl = \"{}\"\ninsecure = true\n[services.app]\ncontext = \"app\"\nimage = \"{repo}\"\n",
                s.auth_registry()
            ),
        )
        .file("app/Dockerfile", "FROM scratch\n");
    std::fs::create_dir_all(t.join("home")).unwrap();
    let out = t
        .cmd()
        .env("HOME", t.join("home"))
        .env_remove("DOCKER_CONFIG")
        .env_remove("BUILDOPT_REGISTRY_USERNAME")
        .args(["plan"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "registry {} requires credentials for {}/{repo}:bo-",
            s.auth_registry(),
            s.auth_registry()
        )) && err.contains(&format!(
            "and none were found (looked in: BUILDOPT_REGISTRY_USERNAME/BUILDOPT_REGISTRY_PASSWORD; docker config {}",
            t.join("home/.docker/config.json").display()
        )),
        "{err}"
    );
    assert!(!err.contains("rejected"), "{err}");
}

/// A `credsStore` helper is a program: it runs once per registry per build, however often BuildKit asks.
#[test]
fn a_credential_helper_runs_once_per_registry_per_run() {
    let s = Services::get();
    let (t, repos) = Tree::workspace_at(
        &s.auth_registry(),
        &s.buildkit_addr,
        "host",
        &[("app", &[])],
    );
    let repo = repos[0].clone();
    let t = t
        // The base image is pulled from, and the image pushed to, the registry that needs the helper's answer.
        .file(
            "app/Dockerfile",
            format!("FROM {}\nCOPY f /\n", s.auth_base_image()),
        )
        .file("app/f", repo.clone());
    let calls = t.join("calls");
    let password = crate::common::env_or_file("BUILDOPT_TEST_AUTH_PASSWORD");
    t.file_mode(
        "bin/docker-credential-counting",
        format!(
            "#!/bin/sh\necho \"$1\" >> {}\nread host\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"AWS\",\"Secret\":\"{password}\"}}' \"$host\"\n",
            calls.display()
        ),
        0o755,
    );
    std::fs::create_dir_all(t.join("docker")).unwrap();
    std::fs::write(t.join("docker/config.json"), r#"{"credsStore":"counting"}"#).unwrap();
    let path = format!(
        "{}:{}",
        t.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (code, err) = t.build_isolated(
        &[
            ("PATH", path.as_str()),
            ("DOCKER_CONFIG", t.join("docker").to_str().unwrap()),
        ],
        &["--cache-to", "registry"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains(&password),
        "the secret leaked into the output"
    );
    let log = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["get"],
        "helper calls: {log}"
    );
}

/// An unusable docker config must not stop a build to a registry that needs no credentials.
#[test]
fn an_unreadable_docker_config_does_not_break_an_anonymous_registry() {
    let repo = unique_repo("t-badconfig");
    let t = Tree::buildable(&repo, "FROM scratch\nCOPY f /\n").file("app/f", "x");
    std::fs::create_dir_all(t.join("docker/config.json")).unwrap(); // a directory: reading it fails
    let (code, err) = t.build_isolated(
        &[("DOCKER_CONFIG", t.join("docker").to_str().unwrap())],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "ignoring docker config {}",
            t.join("docker/config.json").display()
        )),
        "{err}"
    );
}

/// As a user with their own rootless buildkitd, the default address is that one, even when the rootful socket
/// exists too (the user cannot use it).
#[test]
fn a_non_root_user_defaults_to_the_rootless_socket() {
    use std::os::unix::fs::PermissionsExt;
    let t = Tree::new().app();
    let xdg = t.join("xdg");
    std::fs::create_dir_all(xdg.join("buildkit")).unwrap();
    // Stand-ins: connecting to them fails, and the error names the address that was chosen.
    std::fs::write(xdg.join("buildkit/buildkitd.sock"), "").unwrap();
    let rootful = std::path::Path::new("/run/buildkit/buildkitd.sock");
    let made_rootful = !rootful.exists();
    if made_rootful {
        std::fs::create_dir_all(rootful.parent().unwrap()).unwrap();
        std::fs::write(rootful, "").unwrap();
    }
    for dir in [t.path().to_owned(), xdg.clone(), xdg.join("buildkit")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(assert_cmd::cargo::cargo_bin("buildopt"))
        .arg("doctor")
        .current_dir(t.path())
        .env("XDG_RUNTIME_DIR", &xdg)
        .env_remove("BUILDKIT_HOST")
        .output()
        .expect("setpriv (util-linux) runs");
    let as_root = t
        .cmd()
        .arg("doctor")
        .env("XDG_RUNTIME_DIR", &xdg)
        .env_remove("BUILDKIT_HOST")
        .output()
        .unwrap();
    if made_rootful {
        let _ = std::fs::remove_file(rootful);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot connect to BuildKit at unix://{}/buildkit/buildkitd.sock",
            xdg.display()
        )),
        "{err}"
    );
    let err = String::from_utf8_lossy(&as_root.stderr);
    assert!(
        err.contains("cannot connect to BuildKit at unix:///run/buildkit/buildkitd.sock"),
        "{err}"
    );
}
