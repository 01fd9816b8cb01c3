//! The full pipeline: the registry decides (content tags), requested tags move only after success, ECR through
//! moto, and bad input fails clearly without moving anything.

use crate::common::{Services, Tree, copy_tree, pairs, summary, unique_repo};

/// A workspace with services `base`, `app` (depends on `base`, `FROM` its image) and `other`.
fn three_services(s: &Services) -> (Tree, [String; 3]) {
    let (t, repos) = Tree::workspace(&[("base", &[]), ("app", &["base"]), ("other", &[])]);
    let t = t
        .file(
            "base/Dockerfile",
            format!("FROM {}\nCOPY base.txt /\n", s.base_image),
        )
        .file("base/base.txt", "base v1\n")
        .file(
            "app/Dockerfile",
            format!(
                "FROM {}/{}:latest\nCOPY app.txt /\nRUN cat /base.txt /app.txt > /both.txt\n",
                s.registry, repos[0]
            ),
        )
        .file("app/app.txt", "app v1\n")
        .file("other/Dockerfile", "FROM scratch\nCOPY other.txt /\n")
        .file("other/other.txt", "other v1\n");
    (t, repos.try_into().expect("three repositories"))
}

#[test]
fn unchanged_services_are_skipped_on_a_fresh_clone_without_buildkit() {
    let s = Services::get();
    let (t, [base, ..]) = three_services(&s);
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    let latest = s.manifest(&base, "latest").unwrap();

    // A fresh clone: no .build-cache, and BuildKit unreachable, so any solve would fail.
    let clone = Tree::new();
    copy_tree(t.path(), clone.path());
    std::fs::remove_dir_all(clone.join(".build-cache")).unwrap();
    let (code, _, err) = clone.build(&["--addr", "unix:///nonexistent/buildkitd.sock"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        summary(&err),
        pairs(&[
            ("skipped", "base"),
            ("skipped", "app"),
            ("skipped", "other")
        ]),
        "{err}"
    );
    assert_eq!(s.manifest(&base, "latest").unwrap(), latest);
}

#[test]
fn a_change_rebuilds_the_service_and_its_dependents_only() {
    let s = Services::get();
    let (t, [base, app, other]) = three_services(&s);
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    let other_latest = s.manifest(&other, "latest").unwrap();

    std::fs::write(t.join("base/base.txt"), "base v2\n").unwrap();
    // The registry decides; the input manifest of the image `latest` points at says what changed.
    let plan = t.run_ok(&["plan"]);
    assert!(plan.contains("build: no image for inputs"), "{plan}");
    assert!(
        plan.contains(&format!(
            "since latest ({}): base.txt changed; read by COPY base.txt / in stage stage-0 (line 2)",
            &s.manifest_digest(&base, "latest")[..19]
        )),
        "{plan}"
    );
    assert!(plan.contains("dependency `base` changed"), "{plan}");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        summary(&err),
        pairs(&[("built", "base"), ("built", "app"), ("skipped", "other")]),
        "{err}"
    );
    assert_eq!(s.manifest(&other, "latest").unwrap(), other_latest);
    // app was built on the base of this run (pinned by digest), whose layers it shares.
    let base_layers = s.manifest(&base, "latest").unwrap()["layers"].clone();
    let app_layers = s.manifest(&app, "latest").unwrap()["layers"].clone();
    assert_eq!(app_layers[1], base_layers[1], "app is on the new base");

    std::fs::write(t.join("app/app.txt"), "app v2\n").unwrap();
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        summary(&err),
        pairs(&[("skipped", "base"), ("built", "app"), ("skipped", "other")]),
        "{err}"
    );
}

#[test]
fn a_failed_build_never_moves_latest() {
    let s = Services::get();
    let repo = unique_repo("p-fail");
    let t = Tree::buildable(
        &repo,
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY f /\nRUN test -s /f\n",
    )
    .file("app/f", "ok");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    let latest = s.manifest(&repo, "latest").unwrap();
    let tags_before = s.registry_get(&format!("/v2/{repo}/tags/list"), "*/*").2;

    std::fs::write(t.join("app/f"), "").unwrap();
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        s.manifest(&repo, "latest").unwrap(),
        latest,
        "latest moved after a failed build"
    );
    assert_eq!(
        s.registry_get(&format!("/v2/{repo}/tags/list"), "*/*").2,
        tags_before,
        "no tag was pushed"
    );
}

#[test]
fn returning_to_earlier_inputs_promotes_without_building() {
    let s = Services::get();
    let repo = unique_repo("p-promote");
    let t = Tree::buildable(&repo, "FROM scratch\nCOPY f /\n").file("app/f", "one");
    assert_eq!(t.build(&[]).0, 0);
    let one = s.manifest(&repo, "latest").unwrap();
    std::fs::write(t.join("app/f"), "two").unwrap();
    assert_eq!(t.build(&[]).0, 0);
    assert_ne!(s.manifest(&repo, "latest").unwrap(), one);

    std::fs::write(t.join("app/f"), "one").unwrap();
    let (code, _, err) = t.build(&["--addr", "unix:///nonexistent/buildkitd.sock"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary(&err), pairs(&[("promoted", "app")]), "{err}");
    assert_eq!(s.manifest(&repo, "latest").unwrap(), one);

    // A new tag in the config is not an input: it is promoted too.
    let toml = std::fs::read_to_string(t.join("buildopt.toml")).unwrap()
        + "tags = [\"latest\", \"stable\"]\n";
    std::fs::write(t.join("buildopt.toml"), toml).unwrap();
    let (code, _, err) = t.build(&["--addr", "unix:///nonexistent/buildkitd.sock"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.manifest(&repo, "stable").unwrap(), one);
}

#[test]
fn dry_run_and_plan_ask_the_registry_and_change_nothing() {
    let s = Services::get();
    let repo = unique_repo("p-dry");
    let t = Tree::buildable(&repo, "FROM scratch\nCOPY f /\n").file("app/f", "x");
    let (code, out, err) = t.build(&["--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("build app  no image for inputs"), "{out}");
    assert_eq!(s.manifest(&repo, "latest"), None);

    assert_eq!(t.build(&[]).0, 0);
    let out = t.cmd().args(["plan", "--json"]).output().unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["services"][0]["decision"], "skip");
    assert_eq!(
        json["services"][0]["image"],
        s.manifest_digest(&repo, "latest")
    );

    // The default build exported the registry cache too; with `--cache-to none`, the plan does not look for it.
    assert!(s.manifest(&repo, "cache").is_some());
    let out = t.run_ok(&["plan", "--cache-to", "none"]);
    assert!(out.contains("skip: image for inputs"), "{out}");
}

#[test]
fn metadata_file_describes_each_service() {
    let s = Services::get();
    let repo = unique_repo("p-meta");
    let t = Tree::buildable(&repo, "FROM scratch\nCOPY f /\n").file("app/f", "x");
    let meta = t.join("meta.json");
    let (code, _, err) = t.build(&["--metadata-file", meta.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let app = &v["app"];
    assert_eq!(app["buildopt.decision"], "built");
    assert_eq!(
        app["containerimage.digest"],
        s.manifest_digest(&repo, "latest")
    );
    assert_eq!(app["image.name"], format!("{}/{repo}:latest", s.registry));
    assert_eq!(app["buildopt.input-digest"].as_str().unwrap().len(), 64);
    assert!(app["buildopt.duration-ms"].as_u64().is_some());

    let (code, _, _) = t.build(&["--metadata-file", meta.to_str().unwrap()]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(v["app"]["buildopt.decision"], "skipped");
}

#[test]
fn unreachable_registry_is_a_clear_error() {
    let t = Tree::new()
        .file("buildopt.toml", "[registry]\nurl = \"127.0.0.1:1\"\ninsecure = true\n[services.app]\ncontext = \"app\"\n")
        .file("app/Dockerfile", "FROM scratch\n");
    let out = t
        .cmd()
        .args(["build", "--addr", "unix:///nonexistent/buildkitd.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("registry 127.0.0.1:1 did not answer"), "{err}");
}

#[test]
fn wrong_credentials_are_a_clear_error_and_never_printed() {
    let s = Services::get();
    let repo = unique_repo("p-creds");
    let t = Tree::new()
        .file(
            "buildopt.toml",
            format!("[registry]\nurl = \"{}\"\ninsecure = true\n[services.app]\ncontext = \"app\"\nimage = \"{repo}\"\n", s.auth_registry()),
        )
        .file("app/Dockerfile", "FROM scratch\n")
        // base64("AWS:not-the-password")
        .file("docker/config.json", format!(r#"{{"auths":{{"{}":{{"auth":"QVdTOm5vdC10aGUtcGFzc3dvcmQ="}}}}}}"#, s.auth_registry()));
    let out = t
        .cmd()
        .env("DOCKER_CONFIG", t.join("docker"))
        .args([
            "-vv",
            "build",
            "--addr",
            "unix:///nonexistent/buildkitd.sock",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "registry {} rejected the credentials",
            s.auth_registry()
        )),
        "{err}"
    );
    assert!(
        !err.contains("not-the-password") && !err.contains("QVdTOm5vdC10aGUtcGFzc3dvcmQ"),
        "secret in output: {err}"
    );
}

/// ECR through moto: the token is fetched with the AWS SDK, served to the registry client and, through the
/// session, to BuildKit (which pulls the base image and pushes with it); repositories are created.
#[test]
fn ecr_token_repositories_and_a_second_run_that_skips() {
    let s = Services::get();
    let repo = unique_repo("ecr");
    let config = |create: bool, repo: &str| {
        format!(
            "[registry]\nurl = \"{reg}\"\ninsecure = true\necr = true\ncreate_repositories = {create}\necr_endpoint = \"{moto}\"\necr_region = \"us-west-2\"\n\
             [buildkit]\naddr = \"{addr}\"\nnetwork = \"host\"\n\
             [services.app]\ncontext = \"app\"\nimage = \"{repo}\"\n",
            reg = s.auth_registry(),
            moto = s.moto(),
            addr = s.buildkit_addr
        )
    };
    let t = Tree::new()
        .file("buildopt.toml", config(true, &repo))
        .file(
            "app/Dockerfile",
            format!("FROM {}\nCOPY f /\nRUN cat /f\n", s.auth_base_image()),
        )
        .file("app/f", "ecr");
    let aws = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let run = |t: &Tree, args: &[&str]| {
        t.build_isolated(&aws, &[&["--cache-to", "registry"][..], args].concat())
    };
    let (code, err) = run(&t, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        s.moto_repositories().contains(&repo),
        "repository created in ECR"
    );
    assert!(
        !err.contains("123456789012-auth-token"),
        "the token leaked into the output"
    );
    assert!(
        summary(&err).contains(&("built".to_owned(), "app".to_owned())),
        "{err}"
    );
    // The input manifest went beside the image with the same credentials.
    assert!(!err.contains("warning: app:"), "{err}");

    let (code, err) = run(&t, &["--addr", "unix:///nonexistent/buildkitd.sock"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary(&err), pairs(&[("skipped", "app")]), "{err}");

    // A repository that does not exist, with creation off: a clear error, nothing built.
    let missing = unique_repo("ecr-missing");
    std::fs::write(t.join("buildopt.toml"), config(false, &missing)).unwrap();
    let (code, err) = run(&t, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("ECR repository `{missing}` does not exist")),
        "{err}"
    );
    assert!(!s.moto_repositories().contains(&missing));
}

#[test]
fn ctrl_c_cancels_the_build_and_pushes_nothing() {
    use std::io::BufRead;
    let s = Services::get();
    let repo = unique_repo("p-cancel");
    let t = Tree::buildable(
        &repo,
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo started-sleeping && sleep 6\n",
    );
    let _shared = crate::common::daemon_lock()
        .read()
        .unwrap_or_else(|p| p.into_inner());
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("buildopt"))
        .current_dir(t.path())
        .args(["--progress", "plain", "build"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("started-sleeping") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the RUN step started");
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    let code = child.wait().unwrap().code();
    let err = reader.join().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?} to stop",
        started.elapsed()
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    // Nothing was pushed, then or later: had the daemon not cancelled the build with the call, the step would end
    // within 6 s and push.
    std::thread::sleep(std::time::Duration::from_secs(9));
    let (code, _, body) = s.registry_get(&format!("/v2/{repo}/tags/list"), "*/*");
    assert!(
        code == 404 || !String::from_utf8_lossy(&body).contains("\"tags\":[\""),
        "{code} {}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn immutable_ecr_repository_gets_a_warning() {
    let s = Services::get();
    let repo = unique_repo("ecr-immutable");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-X", "POST", "-H", "X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.CreateRepository"])
        .args(["-H", "Content-Type: application/x-amz-json-1.1"])
        .args(["-H", "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-west-2/ecr/aws4_request, SignedHeaders=host, Signature=0"])
        .args(["-d", &format!(r#"{{"repositoryName":"{repo}","imageTagMutability":"IMMUTABLE"}}"#)])
        .arg(format!("{}/", s.moto()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("IMMUTABLE"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let t = Tree::new()
        .file(
            "buildopt.toml",
            format!(
                "[registry]\nurl = \"{}\"\ninsecure = true\necr = true\necr_endpoint = \"{}\"\necr_region = \"us-west-2\"\n[services.app]\ncontext = \"app\"\nimage = \"{repo}\"\n",
                s.auth_registry(),
                s.moto()
            ),
        )
        .file("app/Dockerfile", "FROM scratch\n");
    let out = t
        .cmd()
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .args(["build", "--dry-run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "warning: ECR repository `{repo}` has immutable tags"
        )),
        "{err}"
    );
}

/// Credentials from the environment reach both the registry client and, through the session, BuildKit (which
/// pulls the base image from and pushes to a registry that requires them).
#[test]
fn environment_credentials_for_a_password_registry() {
    let s = Services::get();
    let (t, _) = Tree::workspace_at(
        &s.auth_registry(),
        &s.buildkit_addr,
        "host",
        &[("app", &[])],
    );
    let t = t.file(
        "app/Dockerfile",
        format!("FROM {}\nRUN echo env > /creds\n", s.auth_base_image()),
    );
    let run = |password: &str| {
        t.build_isolated(
            &[
                ("BUILDOPT_REGISTRY_USERNAME", "AWS"),
                ("BUILDOPT_REGISTRY_PASSWORD", password),
            ],
            &[],
        )
    };
    let (code, err) = run(&crate::common::env_or_file("BUILDOPT_TEST_AUTH_PASSWORD"));
    assert_eq!(code, 0, "{err}");
    assert!(
        summary(&err).contains(&("built".to_owned(), "app".to_owned())),
        "{err}"
    );
    let (code, err) = run("wrong-password");
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("wrong-password"), "secret in output: {err}");
}

#[test]
fn json_progress_is_one_object_per_line_on_stdout() {
    let repo = unique_repo("p-json");
    let t = Tree::buildable(&repo, "FROM scratch\nCOPY f /\n").file("app/f", "x");
    let _shared = crate::common::daemon_lock()
        .read()
        .unwrap_or_else(|p| p.into_inner());
    let (code, out, err) = t.run(&["--progress", "json", "build"]);
    assert_eq!(code, 0, "{err}");
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let (last, events) = events.split_last().unwrap();
    assert_eq!(last["type"], "summary", "{out}");
    assert_eq!(last["succeeded"], true, "{out}");
    assert!(events.iter().all(|e| e["service"] == "app"), "{out}");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "vertex" && e["state"] == "done"),
        "{out}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "result" && e["ok"] == true),
        "{out}"
    );
}

/// Without any AWS credentials, `plan` against ECR says so in one line, with the fix, and nothing from the SDK.
// See: issue 7 (5 KB of SDK warnings and a Debug dump).
#[test]
fn no_aws_credentials_is_one_line_with_the_fix() {
    let s = Services::get();
    let t = Tree::new()
        .file(
            "buildopt.toml",
            format!(
                "[registry]\nurl = \"{}\"\ninsecure = true\necr = true\necr_endpoint = \"{}\"\necr_region = \"us-west-2\"\n[services.app]\ncontext = \"app\"\n",
                s.auth_registry(),
                s.moto()
            ),
        )
        .file("app/Dockerfile", "FROM scratch\n");
    std::fs::create_dir_all(t.join("home")).unwrap();
    let mut cmd = t.cmd();
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .env("HOME", t.join("home"))
        // No instance metadata service to ask: the same answer as a machine whose metadata service says no.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .arg("plan")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ECR GetAuthorizationToken: no AWS credentials found")
            && err.contains("set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
    assert!(!err.contains("WARN") && !err.contains('{'), "{err}");
}

/// A no-change build on a fresh clone asks the registry how it authenticates once, not before every request, and
/// every other request is about an image of the run.
// See: issue 12 (oci-client pinged `/v2/` before each request on an anonymous registry: 600 requests for 50 skipped
// services instead of 301).
#[test]
fn a_no_change_build_pings_the_registry_once() {
    let s = Services::get();
    let proxy = crate::common::proxy::RegistryProxy::start(&s.registry);
    let (t, repos) = Tree::three_scratch_services(&proxy.addr, &s.buildkit_addr2);
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");

    let clone = Tree::new();
    copy_tree(t.path(), clone.path());
    std::fs::remove_dir_all(clone.join(".build-cache")).unwrap();
    let before = proxy.log().len();
    let (code, _, err) = clone.build(&["--addr", "unix:///nonexistent/buildkitd.sock"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        summary(&err),
        pairs(&[("skipped", "a"), ("skipped", "b"), ("skipped", "c")]),
        "{err}"
    );
    let requests: Vec<String> = proxy.log()[before..]
        .iter()
        .map(|(l, _)| l.clone())
        .collect();
    let pings = requests.iter().filter(|l| l.as_str() == "GET /v2/").count();
    assert_eq!(pings, 1, "{requests:#?}");
    for l in requests.iter().filter(|l| l.as_str() != "GET /v2/") {
        assert!(
            repos.iter().any(|r| l.contains(&format!("/v2/{r}/"))),
            "{l} is not about an image of the run: {requests:#?}"
        );
    }
}
