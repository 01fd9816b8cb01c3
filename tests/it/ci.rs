//! Made for CI: variables, overrides, branch caches.

use crate::common::{Services, Tree, daemon_lock, outcome, unique_repo};

/// The tags of `repo`, sorted (none when the repository has no tags).
fn tags(s: &Services, repo: &str) -> Vec<String> {
    let (code, _, body) = s.registry_get(&format!("/v2/{repo}/tags/list"), "*/*");
    if code != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut tags: Vec<String> = v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    tags.sort();
    tags
}

/// The tags of `repo` that are not buildopt's own (content tags, input manifest fallback tags).
fn named_tags(s: &Services, repo: &str) -> Vec<String> {
    tags(s, repo)
        .into_iter()
        .filter(|t| !t.starts_with("bo-") && !t.starts_with("sha256-"))
        .collect()
}

/// The labels in the image config of `repo:tag`.
fn labels(s: &Services, repo: &str, tag: &str) -> serde_json::Value {
    let m = s.manifest(repo, tag).expect("manifest");
    let digest = m["config"]["digest"].as_str().unwrap();
    let (code, _, body) = s.registry_get(&format!("/v2/{repo}/blobs/{digest}"), "*/*");
    assert_eq!(code, 200);
    let config: serde_json::Value = serde_json::from_slice(&body).unwrap();
    config["config"]["Labels"].clone()
}

/// A one-service workspace whose Dockerfile labels the image with its build args, and `extra` appended to the
/// service's table.
fn labelled(repo: &str, extra: &str) -> Tree {
    let t = Tree::buildable(
        repo,
        "FROM scratch\nARG REV\nARG PRICE\nLABEL rev=$REV price=$PRICE\nCOPY f /\n",
    )
    .file("app/f", repo);
    t.append("buildopt.toml", extra);
    t
}

/// Runs `buildopt --progress plain build ARGS` with `env` set; returns (exit code, stderr).
fn build_with(t: &Tree, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
    let mut cmd = t.cmd();
    for k in [
        "GIT_SHA",
        "CHANNEL",
        "BRANCH",
        "BUILDOPT_SET",
        "BUILDOPT_TAG",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd
        .args(["--progress", "plain", "build"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `${VAR}`, `${VAR:-default}` and `$$` reach tags and build args; tags are checked after substitution; an unset
/// variable is a configuration error naming file, line, key and variable, and nothing is pushed.
#[test]
fn variables_reach_tags_and_build_args() {
    let s = Services::get();
    let repo = unique_repo("ci-vars");
    let t = labelled(&repo, "tags = [\"${GIT_SHA}\", \"${CHANNEL:-stable}\"]\n");
    t.replace(
        "buildopt.toml",
        "build_args = {",
        "build_args = { REV = \"${GIT_SHA}\", PRICE = \"$$5\",",
    );

    let (code, err) = build_with(&t, &[], &[]);
    assert_eq!(code, 2, "{err}");
    let line = std::fs::read_to_string(t.join("buildopt.toml"))
        .unwrap()
        .lines()
        .position(|l| l.starts_with("build_args ="))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("buildopt.toml:{line}"))
            && err.contains("`services.app.build_args.REV`")
            && err.contains("variable `GIT_SHA` is not set"),
        "{err}"
    );
    let (code, err) = build_with(&t, &[("GIT_SHA", "not a tag!")], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`not a tag!`"), "{err}");
    assert_eq!(tags(&s, &repo), Vec::<String>::new());

    let (code, err) = build_with(&t, &[("GIT_SHA", "abc123")], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(named_tags(&s, &repo), ["abc123", "cache", "stable"]);
    let labels = labels(&s, &repo, "abc123");
    assert_eq!(labels["rev"], "abc123", "{labels}");
    assert_eq!(labels["price"], "$5", "{labels}");
}

/// `--set` (also from BUILDOPT_SET) overrides any key of one or every service and is validated like the file;
/// `--tag` adds tags; `tags = []` pushes the content tag only.
#[test]
fn overrides_set_keys_and_add_tags() {
    let s = Services::get();
    let repo = unique_repo("ci-set");
    let t = labelled(&repo, "tags = []\n");

    let (code, err) = build_with(
        &t,
        &[(
            "BUILDOPT_SET",
            "app.build_args.PRICE=7;app.build_args.REV=env",
        )],
        &["--cache-to", "none"],
    );
    assert_eq!(code, 0, "{err}");
    let only: Vec<String> = tags(&s, &repo)
        .into_iter()
        .filter(|t| !t.starts_with("sha256-"))
        .collect();
    assert!(
        only.len() == 1 && only[0].starts_with("bo-"),
        "tags = [] pushes the content tag only: {only:?}"
    );
    let labels_env = labels(&s, &repo, &only[0]);
    assert_eq!(labels_env["price"], "7", "{labels_env}");
    assert_eq!(labels_env["rev"], "env", "{labels_env}");

    // Flags replace BUILDOPT_SET (as any flag replaces its environment variable).
    let (code, err) = build_with(
        &t,
        &[("BUILDOPT_SET", "app.build_args.PRICE=7")],
        &[
            "--set",
            "*.tags=one,two",
            "--set",
            "app.build_args.REV=r2",
            "--tag",
            "extra",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        named_tags(&s, &repo),
        ["cache", "extra", "one", "two"],
        "{err}"
    );
    let labels = labels(&s, &repo, "one");
    assert_eq!(labels["rev"], "r2", "{labels}");
    assert_eq!(labels["price"], "", "{labels}");

    // Validated like the file, and named by the flag.
    for (set, expect) in [
        ("app.platforms=linux/nope", "linux/nope"),
        ("app.colour=red", "colour"),
        ("nosuch.tags=x", "nosuch"),
        ("app.tags", "SERVICE.KEY=VALUE"),
    ] {
        let (code, err) = build_with(&t, &[], &["--set", set]);
        assert_eq!(code, 2, "--set {set}: {err}");
        assert!(
            err.contains(&format!("--set `{set}`")) && err.contains(expect),
            "--set {set}: {err}"
        );
    }
}

/// A branch build imports the main branch's cache (`cache_from = ["cache-${BRANCH}", "cache-main"]`) on an emptied
/// daemon, and exports its own.
#[test]
fn a_branch_build_reads_the_main_branch_cache() {
    let s = Services::get();
    let repo = unique_repo("ci-branch");
    // The RUN step records when it ran: its layer is the same only if it came from a cache.
    let t = Tree::buildable(
        &repo,
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY input.txt /\nRUN date +%s%N > /ran-at\nCOPY late.txt /\n",
    )
    .file("app/input.txt", format!("{repo}\n"))
    .file("app/late.txt", "main\n");
    t.append(
        "buildopt.toml",
        "tags = [\"${BRANCH}\"]\ncache_to = { tag = \"cache-${BRANCH}\", mode = \"max\" }\ncache_from = [\"cache-${BRANCH}\", \"cache-main\"]\n",
    );
    let (code, err) = build_with(&t, &[("BRANCH", "main")], &[]);
    assert_eq!(code, 0, "{err}");
    let main = s.manifest(&repo, "main").unwrap();
    assert!(s.manifest(&repo, "cache-main").is_some());

    std::fs::write(t.join("app/late.txt"), "feature\n").unwrap();
    let _exclusive = daemon_lock().write().unwrap_or_else(|p| p.into_inner());
    let feature = |args: &[&str]| {
        t.cmd()
            .env("BRANCH", "feature")
            .args(args)
            .output()
            .unwrap()
    };
    let pruned = feature(&["prune", "--all", "--yes"]);
    assert!(pruned.status.success(), "{pruned:?}");
    let pruned = String::from_utf8_lossy(&pruned.stdout).into_owned();
    let out = feature(&["--progress", "plain", "build"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let feature = s.manifest(&repo, "feature").unwrap();
    let run_layer = |m: &serde_json::Value| {
        let layers = m["layers"].as_array().unwrap();
        layers[layers.len() - 2]["digest"].clone()
    };
    assert_ne!(main["layers"], feature["layers"]);
    assert_eq!(
        run_layer(&main),
        run_layer(&feature),
        "the RUN step ran again instead of coming from cache-main:\n{pruned}\n{err}"
    );
    assert!(s.manifest(&repo, "cache-feature").is_some());
}

/// On GitHub Actions: step outputs per service and as lists, a job summary table, an `::error` annotation at the
/// failing Dockerfile line; none of the output files (nor `--metadata-file`) is build context, even inside one.
#[test]
fn github_outputs_summary_and_annotations() {
    let s = Services::get();
    let (t, repos) = Tree::workspace(&[("a", &[]), ("b", &[])]);
    let t = t
        .file("a/Dockerfile", "FROM scratch\nCOPY . /\n")
        .file("a/f", "a")
        .file("b/Dockerfile", "FROM scratch\nCOPY f /\nCOPY missing /\n")
        .file("b/f", "b");
    let run = |args: &[&str]| {
        let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
        let out = t
            .cmd()
            .env("GITHUB_ACTIONS", "true")
            .env("GITHUB_OUTPUT", t.join("a/github-output"))
            .env("GITHUB_STEP_SUMMARY", t.join("a/step-summary.md"))
            .env("GITHUB_WORKSPACE", t.path())
            .args([
                "--progress",
                "json",
                "build",
                "--metadata-file",
                "a/meta.json",
            ])
            .args(args)
            .output()
            .unwrap();
        outcome(out)
    };
    let outputs = || {
        let text = std::fs::read_to_string(t.join("a/github-output")).unwrap();
        std::fs::remove_file(t.join("a/github-output")).unwrap();
        text.lines()
            .map(|l| l.split_once('=').unwrap())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };

    let (code, stdout, err) = run(&[]);
    assert_eq!(code, 1, "{err}");
    let a = s.manifest_digest(&repos[0], "latest");
    let out = outputs();
    assert_eq!(
        out["a-image"],
        format!("{}/{}:latest@{a}", s.registry, repos[0]),
        "{out:?}"
    );
    assert_eq!(out["a-digest"], a);
    assert_eq!(out["a-status"], "built");
    assert_eq!(
        (out["b-status"].as_str(), out["b-image"].as_str()),
        ("failed", "")
    );
    assert_eq!(out["built"], r#"["a"]"#);
    assert_eq!(out["skipped"], "[]");
    assert_eq!(out["failed"], r#"["b"]"#);
    let annotation = err
        .lines()
        .find(|l| l.starts_with("::error "))
        .unwrap_or_else(|| panic!("no annotation: {err}"));
    assert!(
        annotation.starts_with("::error file=b/Dockerfile,line=3,title=buildopt%3A b failed::"),
        "{annotation}"
    );
    assert!(
        err.contains("failed    b  b/Dockerfile:3: "),
        "the summary names the line too: {err}"
    );
    let summary = std::fs::read_to_string(t.join("a/step-summary.md")).unwrap();
    assert!(
        summary.starts_with("### buildopt: 1 built, 0 skipped, 1 failed")
            && summary.contains("| Service | Status | Image | Reason | Time |")
            && summary.contains(&format!(
                "| a | built | `{}/{}:latest@{a}` | no image for inputs",
                s.registry, repos[0]
            ))
            && summary.contains("| b | failed |  | b/Dockerfile:3: "),
        "{summary}"
    );
    // --progress json: decisions first, an outcome per service, the summary object last; every line JSON.
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of = |ty: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["type"] == ty).collect()
    };
    assert_eq!(of("decision").len(), 2, "{stdout}");
    assert!(of("decision").iter().all(|e| e["decision"] == "build"));
    let outcomes: Vec<(String, String)> = of("outcome")
        .iter()
        .map(|e| {
            (
                e["service"].as_str().unwrap().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&("a".into(), "built".into()))
            && outcomes.contains(&("b".into(), "failed".into())),
        "{outcomes:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["type"], "summary", "{stdout}");
    assert_eq!(last["succeeded"], false);
    assert_eq!(last["services"][1]["location"]["line"], 3);

    // The outputs written inside a's context did not change its inputs: a is skipped.
    t.replace("b/Dockerfile", "COPY missing /\n", "");
    let (code, _, err) = run(&[]);
    assert_eq!(code, 0, "{err}");
    let out = outputs();
    assert_eq!(out["a-status"], "skipped", "{err}");
    assert_eq!(out["b-status"], "built");
    assert_eq!(out["skipped"], r#"["a"]"#);
    assert_eq!(out["built"], r#"["b"]"#);
    assert!(!err.contains("::error"), "{err}");
}

/// `-q` still prints the summary lines; `--dry-run` prints the plan to stdout, like `plan`.
#[test]
fn quiet_keeps_the_summary_and_dry_run_writes_stdout() {
    let repo = unique_repo("ci-quiet");
    let t = Tree::buildable(&repo, "FROM scratch\nCOPY f /\n").file("app/f", "q");
    let (code, stdout, err) = t.run(&["build", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.starts_with("build app  no image for inputs"),
        "{stdout}"
    );
    let (code, stdout, err) = t.run(&["-q", "build"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout, "");
    assert!(
        err.lines().any(|l| l.starts_with("built     app  sha256:")),
        "{err}"
    );
    assert!(
        !err.contains("no image for inputs"),
        "the plan is not the summary: {err}"
    );
}
