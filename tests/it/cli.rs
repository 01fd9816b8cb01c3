//! The command line: config errors name file, line and key with exit code 2; `plan` explains decisions.

use buildopt::config::Workspace;
use buildopt::hash::hash_service;
use buildopt::index::Index;
use buildopt::state::{ServiceState, StateStore};

use crate::common::Tree;

/// Runs `buildopt hash` on a workspace with this config and returns (exit code, stderr with the temp dir masked).
fn config_error(toml: &str) -> (i32, String) {
    let t = Tree::new()
        .file("buildopt.toml", toml)
        .file("app/Dockerfile", "FROM scratch\n");
    let out = t.cmd().arg("hash").output().unwrap();
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&t.path().display().to_string(), "[TEMP]");
    (out.status.code().unwrap(), stderr)
}

#[test]
fn unknown_key() {
    let (code, err) = config_error("[services.app]\ncontext = \"app\"\ncontxt = \"x\"\n");
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: [TEMP]/buildopt.toml:3: unknown field `contxt`"),
        "{err}"
    );
}

#[test]
fn missing_context() {
    let (code, err) = config_error("[services.app]\ncontext = \"nope\"\n");
    assert_eq!(code, 2);
    insta::assert_snapshot!(err, @"error: [TEMP]/buildopt.toml:2: `services.app.context`: context directory `nope` does not exist; fix the path (it is relative to [TEMP])");
}

#[test]
fn dependency_cycle() {
    let (code, err) = config_error(
        "[services.a]\ncontext = \"app\"\ndepends_on = [\"b\"]\n\n[services.b]\ncontext = \"app\"\ndepends_on = [\"a\"]\n",
    );
    assert_eq!(code, 2);
    insta::assert_snapshot!(err, @"error: [TEMP]/buildopt.toml:7: dependency cycle: a -> b -> a; remove one of these `depends_on` entries");
}

#[test]
fn unknown_dependency() {
    let (code, err) = config_error("[services.app]\ncontext = \"app\"\n\ndepends_on = [\"db\"]\n");
    assert_eq!(code, 2);
    insta::assert_snapshot!(err, @"error: [TEMP]/buildopt.toml:4: `services.app.depends_on`: unknown service `db`; define [services.db] or remove it");
}

#[test]
fn invalid_image_name() {
    let (code, err) = config_error("[services.app]\ncontext = \"app\"\nimage = \"Team/App\"\n");
    assert_eq!(code, 2);
    insta::assert_snapshot!(err, @"error: [TEMP]/buildopt.toml:3: `services.app.image`: invalid image name `Team/App`: an image name is lowercase path components like `team/api` (letters, digits, and `.`, `_`, `-` between them)");
}

// See: issue 7 (config accepted that should not be).
#[test]
fn platforms_must_be_known_and_listed_once() {
    let (code, err) =
        config_error("[services.app]\ncontext = \"app\"\nplatforms = [\"linux/amd46\"]\n");
    assert_eq!(code, 2);
    insta::assert_snapshot!(err, @"error: [TEMP]/buildopt.toml:3: `services.app.platforms`: invalid platform `linux/amd46`: unknown architecture `amd46` (known: 386, amd64, arm, arm64, loong64, mips, mips64, mips64le, mipsle, ppc64, ppc64le, riscv64, s390x, wasm)");
    let many = vec!["\"linux/amd64\""; 2001].join(", ");
    let (code, err) = config_error(&format!(
        "[services.app]\ncontext = \"app\"\nplatforms = [{many}]\n"
    ));
    assert_eq!(code, 2);
    assert!(
        err.contains("platform `linux/amd64` is listed twice; remove one"),
        "{err}"
    );
}

#[test]
fn content_tags_are_buildopts_alone() {
    let (code, err) =
        config_error("[services.app]\ncontext = \"app\"\ntags = [\"latest\", \"bo-1\"]\n");
    assert_eq!(code, 2);
    insta::assert_snapshot!(err, @"error: [TEMP]/buildopt.toml:3: `services.app.tags`: tag `bo-1` starts with `bo-`, which is reserved for buildopt's content tags; choose another tag");
}

#[test]
fn the_cache_tag_is_not_a_requested_tag() {
    let (code, err) = config_error(
        "[services.app]\ncontext = \"app\"\ntags = [\"latest\"]\ncache_tag = \"latest\"\n",
    );
    assert_eq!(code, 2);
    insta::assert_snapshot!(err, @"error: [TEMP]/buildopt.toml:4: `services.app.cache_tag`: `latest` is also a requested tag: the cache would overwrite the image (or the image the cache); use another tag");
    let (code, err) = config_error("[services.app]\ncontext = \"app\"\ntags = [\"cache\"]\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("`cache` is a requested tag and the default cache tag"),
        "{err}"
    );
}

#[test]
fn toml_syntax_error() {
    let (code, err) = config_error("[services.app\ncontext = \"app\"\n");
    assert_eq!(code, 2);
    assert!(err.starts_with("error: [TEMP]/buildopt.toml:1: "), "{err}");
}

#[test]
fn bad_dockerignore_line_is_exit_2_with_its_line() {
    let t = Tree::new().app().file("app/.dockerignore", "ok\n\n[oops\n");
    let out = t.cmd().arg("hash").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("app/.dockerignore:3: invalid pattern `[oops`"),
        "{err}"
    );
}

#[test]
fn unknown_service_and_missing_config() {
    let t = Tree::new().app();
    let out = t.cmd().args(["hash", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service `nope`"));

    let empty = Tree::new();
    let out = empty.cmd().arg("plan").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no buildopt.toml (or compose.yaml) in"));
}

#[test]
fn config_is_found_from_a_subdirectory() {
    let t = Tree::new().app().dir("app/deep/er");
    let out = t
        .cmd()
        .current_dir(t.join("app/deep/er"))
        .arg("hash")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("app "));
}

/// Records the current inputs of every service as the local state, as a successful build does.
fn record(t: &Tree) {
    let ws = Workspace::load(&t.join("buildopt.toml")).unwrap();
    let store = StateStore::new(&t.join(".build-cache"));
    let mut deps = std::collections::BTreeMap::new();
    for svc in &ws.services {
        let inputs =
            hash_service(svc, &deps, &Index::disabled(), &[t.join(".build-cache")]).unwrap();
        deps.insert(svc.name.clone(), inputs.digest);
        store.save(&svc.name, &ServiceState::of(&inputs)).unwrap();
    }
}

#[test]
fn plan_explains_decisions() {
    let t = Tree::new()
        .file(
            "buildopt.toml",
            "[services.base]\ncontext = \"base\"\n\n[services.api]\ncontext = \"api\"\ndepends_on = [\"base\"]\n\n[services.web]\ncontext = \"web\"\n",
        )
        .file("base/Dockerfile", "FROM scratch\nCOPY . /\n")
        .file("api/Dockerfile", "FROM scratch AS build\nCOPY src /src\n")
        .file("api/src/main.rs", "")
        .file("api/README.md", "")
        .file("web/Dockerfile", "FROM scratch\n");
    let plan = |t: &Tree| {
        let out = t.cmd().arg("plan").output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        // Mask the short digests.
        text.lines()
            .map(|l| {
                let name = l.split(' ').next().unwrap();
                let rest = l[name.len()..].trim_start();
                let (_digest, rest) = rest.split_once("  ").unwrap();
                format!("{name} [DIGEST] {rest}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    insta::assert_snapshot!(plan(&t), @r"
    base [DIGEST] build: no previous state
    api [DIGEST] build: no previous state
    web [DIGEST] build: no previous state
    ");
    record(&t);
    insta::assert_snapshot!(plan(&t), @r"
    base [DIGEST] skip: inputs unchanged since the last local build
    api [DIGEST] skip: inputs unchanged since the last local build
    web [DIGEST] skip: inputs unchanged since the last local build
    ");
    // A file only the context holds (the build does not read it) is no reason to build.
    std::fs::write(t.join("api/README.md"), "edited").unwrap();
    insta::assert_snapshot!(plan(&t).lines().nth(1).unwrap(), @"api [DIGEST] skip: the inputs the build reads are those of the last local build; README.md changed; the build does not read it");
    let t = t
        .file("base/new.txt", "x")
        .file("api/src/main.rs", "fn main() {}")
        .file("api/src/extra.rs", "")
        .file("web/Dockerfile", "FROM scratch\nLABEL x=y\n");
    insta::assert_snapshot!(plan(&t), @r"
    base [DIGEST] build: new.txt changed; read by COPY . / in stage stage-0 (line 2)
    api [DIGEST] build: README.md changed; the build does not read it; src/extra.rs changed; read by COPY src /src in stage build (line 2); src/main.rs changed; read by COPY src /src in stage build (line 2); dependency `base` changed
    web [DIGEST] build: Dockerfile changed
    ");

    let out = t.cmd().args(["plan", "--json", "web"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let web = &json["services"][0];
    assert_eq!(web["service"], "web");
    assert_eq!(web["decision"], "build");
    assert_eq!(web["changes"]["dockerfile"], true);
    assert_eq!(web["digest"].as_str().unwrap().len(), 64);
}
