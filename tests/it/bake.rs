//! Bake-level build features: `FROM <service>`, named build contexts, attestations.

use crate::common::{Services, Tree, daemon_lock, summary};

/// Every path in every layer of `repo:tag` (a single-platform image manifest).
fn files(s: &Services, repo: &str, tag: &str) -> Vec<String> {
    let m = s.image_manifest(repo, tag);
    let mut out: Vec<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| s.layer_listing(repo, l["digest"].as_str().unwrap()))
        .map(|l| l.split_once(' ').unwrap().1.to_owned())
        .filter(|p| !p.ends_with('/'))
        .collect();
    out.sort();
    out
}

fn build(t: &Tree, args: &[&str]) -> String {
    let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
    let (code, _, err) = t.run(&[&["--progress", "plain", "build"], args].concat());
    assert_eq!(code, 0, "{err}");
    err
}

/// `FROM base` names the service `base` of this run (pinned to the image it just built); `contexts` adds a local
/// directory (hashed with its own `.dockerignore`) and another service under names the Dockerfile uses.
#[test]
fn from_a_service_by_name_and_named_contexts() {
    let s = Services::get();
    let (t, repos) = Tree::workspace(&[("base", &[]), ("tool", &[]), ("app", &["base"])]);
    let t = t
        .file("base/Dockerfile", "FROM scratch\nCOPY base.txt /\n")
        .file("base/base.txt", "base v1")
        .file("tool/Dockerfile", "FROM scratch\nCOPY tool.txt /\n")
        .file("tool/tool.txt", "tool")
        .file(
            "app/Dockerfile",
            "FROM base\nCOPY --from=assets a.txt /\nCOPY --from=helper /tool.txt /from-tool.txt\nCOPY app.txt /\n",
        )
        .file("app/app.txt", "app")
        .file("assets/a.txt", "a v1")
        .file("assets/ignored.txt", "not sent")
        .file("assets/.dockerignore", "ignored.txt\n");
    t.append(
        "buildopt.toml",
        "contexts = { assets = \"assets\", helper = \"service:tool\" }\n",
    );
    let err = build(&t, &[]);
    assert_eq!(summary(&err).len(), 3, "{err}");
    assert_eq!(
        files(&s, &repos[2], "latest"),
        ["a.txt", "app.txt", "base.txt", "from-tool.txt"],
        "{err}"
    );

    // A file the named context's .dockerignore leaves out is not an input; one it keeps is.
    std::fs::write(t.join("assets/ignored.txt"), "still not sent").unwrap();
    let plan = t.run_ok(&["plan"]);
    assert!(plan.contains("app") && !plan.contains("build:"), "{plan}");
    std::fs::write(t.join("assets/a.txt"), "a v2").unwrap();
    std::fs::write(t.join("base/base.txt"), "base v2").unwrap();
    let plan = t.run_ok(&["plan"]);
    assert!(plan.contains("build context assets changed"), "{plan}");
    let err = build(&t, &[]);
    assert!(
        summary(&err).contains(&("built".to_owned(), "app".to_owned())),
        "{err}"
    );
    // The new base, not whatever `latest` pointed at before: pinned by digest.
    let base_layer = s.manifest(&repos[0], "latest").unwrap()["layers"][0]["digest"].clone();
    let app = s.manifest(&repos[2], "latest").unwrap();
    assert_eq!(app["layers"][0]["digest"], base_layer, "{app}");
}

/// A bad named context is a configuration error naming the key.
#[test]
fn a_bad_named_context_names_the_key() {
    let (t, _) = Tree::workspace(&[("app", &[])]);
    let t = t.file("app/Dockerfile", "FROM scratch\n");
    for (value, expect) in [
        ("\"service:nosuch\"", "no other service `nosuch`"),
        ("\"missing-dir\"", "no directory there"),
        ("\"oci-layout://x@sha256:00\"", "serves no OCI layout"),
    ] {
        let t = Tree::new()
            .file(
                "buildopt.toml",
                std::fs::read_to_string(t.join("buildopt.toml")).unwrap(),
            )
            .file("app/Dockerfile", "FROM scratch\n");
        t.append("buildopt.toml", &format!("contexts = {{ x = {value} }}\n"));
        let (code, _, err) = t.run(&["plan", "--local"]);
        assert_eq!(code, 2, "{value}: {err}");
        assert!(
            err.contains("`services.app.contexts`") && err.contains(expect),
            "{value}: {err}"
        );
    }
}

/// `attest = { provenance = "mode=max" }` pushes an index with the provenance attestation manifest beside the image;
/// the content tag points at the index, and the next run skips it.
#[test]
fn provenance_is_attached_to_the_pushed_image() {
    let s = Services::get();
    let (t, repos) = Tree::workspace(&[("app", &[])]);
    let t = t
        .file("app/Dockerfile", "FROM scratch\nCOPY f /\n")
        .file("app/f", "attested");
    t.append("buildopt.toml", "attest = { provenance = \"mode=max\" }\n");
    build(&t, &[]);
    let index = s.manifest(&repos[0], "latest").unwrap();
    let manifests = index["manifests"].as_array().expect("an index");
    let attestation = manifests
        .iter()
        .find(|d| d["annotations"]["vnd.docker.reference.type"] == "attestation-manifest")
        .unwrap_or_else(|| panic!("no attestation manifest: {index}"));
    let m = s
        .manifest(&repos[0], attestation["digest"].as_str().unwrap())
        .unwrap();
    assert!(
        m["layers"].as_array().unwrap().iter().any(|l| {
            l["annotations"]["in-toto.io/predicate-type"]
                .as_str()
                .is_some_and(|p| p.starts_with("https://slsa.dev/provenance/"))
        }),
        "{m}"
    );
    assert_eq!(files(&s, &repos[0], "latest"), ["f"]);
    let err = build(&t, &[]);
    assert_eq!(
        summary(&err),
        [("skipped".to_owned(), "app".to_owned())],
        "{err}"
    );
    // Turning it off is a different build.
    let plan = t.run_ok(&["plan", "--set", "app.attest.provenance=false"]);
    assert!(plan.contains("provenance attestation changed"), "{plan}");
    // --provenance is `*.attest.provenance`, and a --set naming the service wins over it.
    let plan = t.run_ok(&["plan", "--provenance", "false"]);
    assert!(plan.contains("provenance attestation changed"), "{plan}");
    let plan = t.run_ok(&[
        "plan",
        "--provenance",
        "false",
        "--set",
        "app.attest.provenance=mode=max",
    ]);
    assert!(plan.contains("skip: image for inputs"), "{plan}");
}

/// `--output` writes each type (directory, tar, OCI and docker tarballs) for every service (`{service}` in dest),
/// and a skipped service's outputs come from its existing image: the same OCI manifest as when it was built.
#[test]
fn outputs_are_written_for_built_and_skipped_services() {
    let (t, _) = Tree::workspace(&[("one", &[]), ("two", &[])]);
    let t = t
        .file("one/Dockerfile", "FROM scratch\nCOPY f /\nCOPY sub /sub\n")
        .file("one/f", "one")
        .file("one/sub/s", "sub")
        .file("two/Dockerfile", "FROM scratch\nCOPY f /\n")
        .file("two/f", "two");
    let args = [
        "-o",
        "type=local,dest=out/{service}",
        "-o",
        "type=tar,dest=out/{service}.fs.tar",
        "-o",
        "type=oci,dest=out/{service}.oci.tar",
        "-o",
        "type=docker,dest=out/{service}.docker.tar",
    ];
    let err = build(&t, &args);
    let read = |p: &str| std::fs::read_to_string(t.join(p)).unwrap();
    assert_eq!(read("out/one/sub/s"), "sub", "{err}");
    assert_eq!(read("out/two/f"), "two");
    let tar_list = |p: &str| {
        let out = std::process::Command::new("tar")
            .arg("-tf")
            .arg(t.join(p))
            .output()
            .unwrap();
        assert!(out.status.success(), "{p}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(tar_list("out/one.fs.tar").lines().any(|l| l == "sub/s"));
    assert!(
        tar_list("out/one.oci.tar")
            .lines()
            .any(|l| l == "index.json")
    );
    assert!(
        tar_list("out/two.docker.tar")
            .lines()
            .any(|l| l == "manifest.json")
    );
    let index = |p: &str| {
        let out = std::process::Command::new("tar")
            .arg("-xOf")
            .arg(t.join(p))
            .arg("index.json")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["manifests"][0]["digest"].clone()
    };
    let built = index("out/one.oci.tar");

    std::fs::remove_dir_all(t.join("out")).unwrap();
    let err = build(&t, &args);
    assert_eq!(
        summary(&err),
        [
            ("skipped".to_owned(), "one".to_owned()),
            ("skipped".to_owned(), "two".to_owned())
        ],
        "{err}"
    );
    assert_eq!(read("out/one/f"), "one", "{err}");
    assert_eq!(index("out/one.oci.tar"), built, "{err}");

    // One dest for two services is refused before anything is built.
    let (code, _, err) = t.run(&["build", "-o", "type=oci,dest=out/x.tar"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("put `{service}` in dest"), "{err}");
}

/// `--no-push` writes nothing to the registry and still builds a dependent (`FROM base`): the base comes to the
/// dependent's build as an OCI layout served through the session. On both daemons.
#[test]
fn no_push_builds_dependents_without_the_registry() {
    let s = Services::get();
    for (addr, network) in [(&s.buildkit_addr, "host"), (&s.buildkit_addr2, "none")] {
        let (t, repos) = Tree::workspace_at(
            &s.registry,
            addr,
            network,
            &[("base", &[]), ("app", &["base"])],
        );
        let t = t
            .file("base/Dockerfile", "FROM scratch\nCOPY b.txt /\n")
            .file("base/b.txt", "base")
            .file("app/Dockerfile", "FROM base\nCOPY a.txt /\n")
            .file("app/a.txt", "app");
        let err = build(&t, &["--no-push", "-o", "type=local,dest=out/{service}"]);
        assert_eq!(
            summary(&err),
            [
                ("built".to_owned(), "base".to_owned()),
                ("built".to_owned(), "app".to_owned())
            ],
            "{addr}: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(t.join("out/app/b.txt")).unwrap(),
            "base",
            "{addr}: {err}"
        );
        for repo in &repos {
            let (code, _, _) = s.registry_get(&format!("/v2/{repo}/tags/list"), "*/*");
            assert_eq!(code, 404, "{addr}: --no-push wrote to {repo}");
        }
    }
}

/// `--load` puts the image into the Docker Engine under its requested tags, for a build and for a skip.
#[test]
fn load_puts_the_image_into_docker() {
    let s = Services::get();
    let (t, repos) = Tree::workspace(&[("app", &[])]);
    let t = t
        .file("app/Dockerfile", "FROM scratch\nCOPY f /\n")
        .file("app/f", "loaded");
    let sock = s
        .buildkit_addr
        .strip_prefix("docker://")
        .expect("the first daemon is dockerd")
        .to_owned();
    let tagged = || {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--unix-socket", &sock, "http://docker/images/json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = format!("{}/{}:latest", s.registry, repos[0]);
        v.as_array().unwrap().iter().any(|i| {
            i["RepoTags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| *t == *want))
        })
    };
    assert!(!tagged());
    let err = build(&t, &["--load"]);
    assert!(err.contains("Loaded image"), "{err}");
    assert!(tagged(), "{err}");
}
