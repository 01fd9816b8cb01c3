//! Compose files as the config: the same inputs as the equivalent `buildopt.toml`, real builds of `service:`
//! contexts, and mistakes named by compose file and line.

use std::path::Path;

use crate::common::{Services, Tree, copy_tree, outcome, pairs, summary, unique_repo};

/// A copy of examples/shop (without local state), for runs that write `.build-cache/`.
fn shop() -> Tree {
    let t = Tree::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shop");
    copy_tree(&example, t.path());
    let _ = std::fs::remove_dir_all(t.join(".build-cache"));
    t
}

/// Runs buildopt in `t` with `REGISTRY` unset (the example's default registry is the test registry).
fn run(t: &Tree, args: &[&str]) -> (i32, String, String) {
    let out = t.cmd().env_remove("REGISTRY").args(args).output().unwrap();
    outcome(out)
}

fn run_ok(t: &Tree, args: &[&str]) -> String {
    let (code, out, err) = run(t, args);
    assert_eq!(code, 0, "buildopt {args:?} failed: {err}");
    out
}

/// examples/shop/compose.yaml and examples/shop/buildopt.toml are the same config: the same input digests, the same
/// entries read, the same plan; and a build from the compose file pushes the images the TOML then skips.
#[test]
fn shop_compose_file_is_its_buildopt_toml() {
    let s = Services::get();
    let t = shop();
    let toml = ["--config", "buildopt.toml"];
    let compose = ["--file", "compose.yaml"];
    let hashes = run_ok(&t, &[&toml[..], &["hash"]].concat());
    assert_eq!(hashes.lines().count(), 2, "{hashes}");
    assert_eq!(run_ok(&t, &[&compose[..], &["hash"]].concat()), hashes);
    for service in ["backend", "frontend"] {
        for extra in [&[][..], &["--context"][..]] {
            let args =
                |config: &[&'static str]| [config, &["hash", "--list", service], extra].concat();
            assert_eq!(
                run_ok(&t, &args(&compose)),
                run_ok(&t, &args(&toml)),
                "{service} {extra:?}"
            );
        }
    }
    let plan = |config: &[&str]| run_ok(&t, &[config, &["plan", "--local", "--json"]].concat());
    assert_eq!(plan(&compose), plan(&toml));

    // The real build, into fresh repositories of the test registry (set on both configs alike).
    let backend = unique_repo("compose-shop-backend");
    let frontend = unique_repo("compose-shop-frontend");
    let sets = [
        "--set".to_owned(),
        format!("backend.image={backend}"),
        "--set".to_owned(),
        format!("frontend.image={frontend}"),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let build = |config: &[&str]| {
        let _shared = crate::common::daemon_lock()
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let (code, _, err) = run(
            &t,
            &[
                config,
                &sets,
                &["--progress", "plain", "build", "--addr", &s.buildkit_addr],
            ]
            .concat(),
        );
        assert_eq!(code, 0, "{err}");
        err
    };
    let err = build(&compose);
    assert_eq!(
        summary(&err),
        pairs(&[("built", "backend"), ("built", "frontend")]),
        "{err}"
    );
    let latest = s.manifest(&frontend, "latest").expect("frontend:latest");
    assert_eq!(s.manifest(&frontend, "0.7.0"), Some(latest), "build.tags");
    assert!(s.manifest(&frontend, "cache").is_some(), "the cache tag");
    assert!(s.manifest(&backend, "latest").is_some());
    let config_digest = s.image_manifest(&frontend, "latest")["config"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, _, config) = s.registry_get(&format!("/v2/{frontend}/blobs/{config_digest}"), "*/*");
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        config["config"]["Labels"]["com.example.team"], "storefront",
        "build.labels"
    );

    // Same inputs: what the compose file pushed is what the TOML would build.
    let err = build(&toml);
    assert_eq!(
        summary(&err),
        pairs(&[("skipped", "backend"), ("skipped", "frontend")]),
        "{err}"
    );
}

/// `additional_contexts: {base: service:base}` makes `base` a dependency: built first, its image of this run (pinned
/// by digest) is `FROM base`, and a change in it rebuilds both. Variables come from `.env`, the environment first;
/// `dockerfile_inline` is the Dockerfile, its text an input.
#[test]
fn a_service_context_builds_on_the_image_of_this_run() {
    let s = Services::get();
    let base = unique_repo("compose-base");
    let app = unique_repo("compose-app");
    let compose = format!(
        "services:\n  app:\n    image: ${{REGISTRY}}/{app}:${{TAG}}\n    build:\n      context: app\n      additional_contexts:\n        - base=service:base\n      network: none\n  base:\n    image: ${{REGISTRY}}/{base}\n    build:\n      context: base\n      dockerfile_inline: |\n        FROM scratch\n        COPY base.txt /\n  db:\n    image: postgres:16\n"
    );
    let t = Tree::new()
        .file("compose.yaml", compose)
        .file(
            ".env",
            format!("REGISTRY={}\nTAG=from-dotenv\n", s.registry),
        )
        .file("app/Dockerfile", "FROM base\nCOPY app.txt /\n")
        .file("app/app.txt", "app")
        .file("base/base.txt", "base v1");
    let build = || {
        let _shared = crate::common::daemon_lock()
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let out = t
            .cmd()
            .env_remove("REGISTRY")
            .env("TAG", "from-env")
            .args(["--progress", "plain", "build", "--addr", &s.buildkit_addr])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{err}");
        summary(&err)
    };
    assert_eq!(build(), pairs(&[("built", "base"), ("built", "app")]));
    let layer = |repo: &str, tag: &str| -> Vec<String> {
        s.image_manifest(repo, tag)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect()
    };
    let app_layers = layer(&app, "from-env");
    assert_eq!(app_layers.len(), 2);
    assert_eq!(app_layers[0], layer(&base, "latest")[0], "FROM base");
    assert!(
        s.manifest(&app, "from-dotenv").is_none(),
        "the environment wins"
    );

    assert_eq!(build(), pairs(&[("skipped", "base"), ("skipped", "app")]));

    std::fs::write(t.join("base/base.txt"), "base v2").unwrap();
    assert_eq!(build(), pairs(&[("built", "base"), ("built", "app")]));
    let app_layers = layer(&app, "from-env");
    assert_eq!(app_layers[0], layer(&base, "latest")[0], "the new base");

    // The inline Dockerfile is an input like a file's content.
    t.replace(
        "compose.yaml",
        "COPY base.txt /",
        "COPY base.txt /copied.txt",
    );
    let plan = t
        .cmd()
        .env_remove("REGISTRY")
        .env("TAG", "from-env")
        .arg("plan")
        .output()
        .unwrap();
    let plan =
        String::from_utf8_lossy(&plan.stderr).into_owned() + &String::from_utf8_lossy(&plan.stdout);
    assert!(plan.contains("Dockerfile changed"), "{plan}");
}

/// Mistakes in a compose file are usage errors (exit 2) naming the compose file, the line and the compose key;
/// keys that do not change the image are warnings, and runtime keys are not mentioned.
#[test]
fn compose_mistakes_name_the_file_and_line() {
    let t = Tree::new()
        .file(
            "compose.yaml",
            "services:\n  app:\n    image: 127.0.0.1:5000/app\n    ports: [\"80:80\"]\n    build:\n      context: app\n      shm_size: 2g\n      extra_hosts:\n        - db:10.0.0.2\n",
        )
        .file("app/Dockerfile", "FROM scratch\n");
    let (code, _, err) = t.run(&["plan", "--local"]);
    assert_eq!(code, 2, "{err}");
    let at = t.path().canonicalize().unwrap();
    let err = err
        .replace(&at.display().to_string(), "[ROOT]")
        .replace(&t.path().display().to_string(), "[ROOT]");
    assert!(
        err.starts_with(
            "error: [ROOT]/compose.yaml:8: `services.app.build.extra_hosts` is not supported"
        ),
        "{err}"
    );

    t.replace(
        "compose.yaml",
        "      extra_hosts:\n        - db:10.0.0.2\n",
        "",
    );
    let (code, out, err) = t.run(&["hash"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("app "), "{out}");
    assert!(
        err.contains("compose.yaml:7: `services.app.build.shm_size` is not applied"),
        "{err}"
    );
    assert!(!err.contains("ports"), "{err}");

    // A type that does not fit is named with its line.
    t.replace(
        "compose.yaml",
        "context: app\n",
        "context: app\n      platforms: linux/amd64\n",
    );
    let (code, _, err) = t.run(&["hash"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("compose.yaml:7: `services.app.build.platforms` must be a list, not a string"),
        "{err}"
    );
}
