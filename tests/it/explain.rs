//! What changed, said on any runner: each build stores the record of its inputs (the input manifest) beside its
//! image in the registry, as an OCI artifact whose subject is the image, and `plan` on a fresh clone compares with
//! the record of the image `latest` points at. Against the real registry (Debian's `docker-registry` 2.8, which has
//! no referrers API, so the referrers tag `sha256-<hex>` lists the artifact); faults through the loopback proxy.
//!
//! See: the issue "A fresh CI runner only says `no image for inputs 4a3541955f8c`, never which files changed".

use crate::common::proxy::{Fault, RegistryProxy, Rule};
use crate::common::{Services, Tree, copy_tree, pairs, summary};

const ARTIFACT_TYPE: &str = "application/vnd.buildopt.inputs.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A service whose build reads `src/` only (stage `build`, line 3), with a build arg, and a context that holds more.
fn service(t: Tree) -> Tree {
    t.file(
        "app/Dockerfile",
        "FROM scratch AS build\nARG PROFILE\nCOPY src ./src\n\nFROM scratch\nCOPY --from=build /src /src\n",
    )
    .file("app/src/main.rs", "fn main() {}\n")
    .file("app/src/routes.rs", "// routes\n")
    .file("app/README.md", "# app\n")
}

/// A copy of `t` as a fresh CI runner sees it: no `.build-cache/`.
fn fresh_clone(t: &Tree) -> Tree {
    let clone = Tree::new();
    copy_tree(t.path(), clone.path());
    let _ = std::fs::remove_dir_all(clone.join(".build-cache"));
    clone
}

/// `plan --json`'s object for the one service.
fn plan_json(t: &Tree) -> serde_json::Value {
    let out = t.run_ok(&["plan", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["services"][0].clone()
}

/// The body of `GET /v2/<repo>/<what>`, which must answer 200.
fn get(s: &Services, repo: &str, what: &str, accept: &str) -> Vec<u8> {
    let (code, _, body) = s.registry_get(&format!("/v2/{repo}/{what}"), accept);
    assert_eq!(code, 200, "{what}: {}", String::from_utf8_lossy(&body));
    body
}

/// `gzip -dc` of `bytes`: the record is plain gzip, readable without buildopt.
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gzip -dc failed");
    out.stdout
}

/// The case: a fresh runner (no `.build-cache/`) names the changed file and the instruction that reads it,
/// from the artifact every OCI client can find (checked here with curl and gzip alone).
#[test]
fn a_fresh_clone_says_which_file_changed_and_which_instruction_reads_it() {
    let s = Services::get();
    let (t, repos) = Tree::workspace(&[("app", &[])]);
    let repo = &repos[0];
    let t = service(t);
    t.append("buildopt.toml", "build_args = { PROFILE = \"debug\" }\n");
    let built_for = t.digest("app");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning:"), "{err}");
    let latest = s.manifest_digest(repo, "latest");

    // The artifact, as any OCI client finds it on a registry without the referrers API: the referrers tag.
    let index: serde_json::Value = serde_json::from_slice(&get(
        &s,
        repo,
        &format!("manifests/{}", latest.replace(':', "-")),
        INDEX,
    ))
    .unwrap();
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{index}");
    assert_eq!(listed[0]["artifactType"], ARTIFACT_TYPE, "{index}");
    let artifact_digest = listed[0]["digest"].as_str().unwrap();
    let artifact: serde_json::Value = serde_json::from_slice(&get(
        &s,
        repo,
        &format!("manifests/{artifact_digest}"),
        MANIFEST,
    ))
    .unwrap();
    assert_eq!(artifact["artifactType"], ARTIFACT_TYPE, "{artifact}");
    assert_eq!(artifact["subject"]["digest"], latest.as_str(), "{artifact}");
    assert_eq!(
        artifact["config"]["mediaType"], "application/vnd.oci.empty.v1+json",
        "{artifact}"
    );
    let layer = &artifact["layers"][0];
    assert_eq!(
        layer["mediaType"], "application/vnd.buildopt.inputs.v1.json+gzip",
        "{artifact}"
    );
    // The annotations (also in the referrers list) name the blob, so readers skip the artifact manifest.
    assert_eq!(listed[0]["annotations"], artifact["annotations"], "{index}");
    assert_eq!(
        artifact["annotations"]["vnd.buildopt.inputs.blob"], layer["digest"],
        "{artifact}"
    );
    let blob = get(
        &s,
        repo,
        &format!("blobs/{}", layer["digest"].as_str().unwrap()),
        "*/*",
    );
    assert_eq!(blob.len() as u64, layer["size"].as_u64().unwrap());
    let record: serde_json::Value = serde_json::from_slice(&gunzip(&blob)).unwrap();
    assert_eq!(record["format"], 1, "{record}");
    assert_eq!(record["service"], "app", "{record}");
    assert_eq!(record["digest"], built_for.as_str(), "{record}");
    assert_eq!(record["listing"], "paths", "{record}");
    let paths: Vec<&str> = record["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "Dockerfile",
            "README.md",
            "src/",
            "src/main.rs",
            "src/routes.rs"
        ],
        "{record}"
    );
    assert!(
        record["param_digests"]["build-arg:PROFILE"].is_string(),
        "{record}"
    );

    // A fresh runner, one file changed: the plan names it and the instruction that reads it, with no local state.
    let clone = fresh_clone(&t);
    std::fs::write(clone.join("app/src/routes.rs"), "// routes, edited\n").unwrap();
    let short = &latest[..19];
    let expected = format!(
        "since latest ({short}): src/routes.rs changed; read by COPY src ./src in stage build (line 3)"
    );
    let plan = clone.run_ok(&["plan"]);
    assert!(plan.contains("build: no image for inputs"), "{plan}");
    assert!(plan.contains(&expected), "{plan}");
    let (code, out, err) = clone.build(&["--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&expected), "{out}");
    assert!(
        !clone.join(".build-cache/state").exists(),
        "the explanation came from the registry"
    );
    let json = plan_json(&clone);
    assert_eq!(json["since"]["source"], "registry", "{json}");
    assert_eq!(json["since"]["tag"], "latest", "{json}");
    assert_eq!(json["since"]["image"], latest.as_str(), "{json}");
    assert_eq!(json["changes"]["files"][0], "src/routes.rs", "{json}");

    // An unread file and a build arg too: each said as what it is.
    std::fs::write(clone.join("app/README.md"), "# app, edited\n").unwrap();
    clone.replace("buildopt.toml", "\"debug\"", "\"release\"");
    let plan = clone.run_ok(&["plan"]);
    assert!(
        plan.contains(&format!(
            "since latest ({short}): README.md changed; the build does not read it; src/routes.rs changed; read by COPY src ./src in stage build (line 3); build arg PROFILE changed"
        )),
        "{plan}"
    );
}

/// An image without a record (built before input manifests existed, or by another tool): the local state says what
/// changed where there is one; a fresh runner gives the plain reason.
#[test]
fn without_a_record_in_the_registry_the_plan_falls_back_to_the_local_state() {
    let s = Services::get();
    let (t, repos) = Tree::workspace(&[("app", &[])]);
    let repo = &repos[0];
    let t = service(t);
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    // As if built before input manifests existed: the referrers index goes (a tag of 2.8 goes with its manifest).
    let tag = s.manifest_digest(repo, "latest").replace(':', "-");
    let index = s.manifest_digest(repo, &tag);
    assert_eq!(
        s.registry_delete(&format!("/v2/{repo}/manifests/{index}")),
        202
    );
    assert_eq!(s.manifest(repo, &tag), None);

    std::fs::write(t.join("app/src/routes.rs"), "// edited\n").unwrap();
    let clone = fresh_clone(&t);
    // Here, the last local build says it.
    let plan = t.run_ok(&["plan"]);
    assert!(
        plan.contains("since the last local build: src/routes.rs changed; read by COPY src ./src in stage build (line 3)"),
        "{plan}"
    );
    assert_eq!(plan_json(&t)["since"]["source"], "local");
    // On a fresh runner, nothing can: the plain reason.
    let plan = clone.run_ok(&["plan"]);
    let reason = plan.trim_end().split_once("build: ").unwrap().1;
    assert!(
        reason.starts_with("no image for inputs") && !reason.contains(';'),
        "{plan}"
    );
    let json = plan_json(&clone);
    assert!(
        json.get("since").is_none() && json.get("changes").is_none(),
        "{json}"
    );
}

/// Storing the input manifest is never worth a failed build: a refused write is a warning, and the plan of a fresh
/// runner then gives the plain reason.
#[test]
fn a_refused_input_manifest_is_a_warning_not_a_failure() {
    let s = Services::get();
    let proxy = RegistryProxy::start(&s.registry);
    let (t, repos) = Tree::workspace_at(&proxy.addr, &s.buildkit_addr2, "none", &[("app", &[])]);
    let repo = &repos[0];
    let t = service(t);
    proxy.rule(Rule::new(
        "PUT",
        format!("/{repo}/manifests/sha256-"),
        Fault::Status(500, "UNKNOWN"),
    ));
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary(&err), pairs(&[("built", "app")]), "{err}");
    assert!(
        err.contains("warning: app: storing the input manifest beside the image failed (registry")
            && err.contains("500 Internal Server Error")
            && err.contains("a runner without local state cannot say what changed"),
        "{err}"
    );
    assert!(proxy.wait_for_fault(
        "PUT",
        "/manifests/sha256-",
        std::time::Duration::from_secs(1)
    ));
    let latest = s.manifest_digest(repo, "latest");
    assert_eq!(s.manifest(repo, &latest.replace(':', "-")), None);

    proxy.clear();
    let clone = fresh_clone(&t);
    std::fs::write(clone.join("app/src/routes.rs"), "// edited\n").unwrap();
    let plan = clone.run_ok(&["plan"]);
    assert!(
        plan.contains("build: no image for inputs") && !plan.contains("since"),
        "{plan}"
    );
}

/// What reading the record costs: nothing for a service that is skipped; for one to be built, on a registry
/// without the referrers API, four requests (the tag, the referrers API's 404, the referrers tag, the blob). (The
/// `GET /v2/` that learns how the registry authenticates is not counted: it is one per run, see
/// `pipeline::a_no_change_build_pings_the_registry_once`.)
#[test]
fn the_record_is_read_only_for_services_to_build_in_four_requests() {
    let s = Services::get();
    let proxy = RegistryProxy::start(&s.registry);
    let (t, repos) = Tree::workspace_at(
        &proxy.addr,
        &s.buildkit_addr2,
        "none",
        &[("app", &[]), ("other", &[])],
    );
    let (app, other) = (&repos[0], &repos[1]);
    let t = service(t)
        .file("other/Dockerfile", "FROM scratch\nCOPY f /\n")
        .file("other/f", "other\n");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");

    let clone = fresh_clone(&t);
    std::fs::write(clone.join("app/src/routes.rs"), "// edited\n").unwrap();
    let before = proxy.log().len();
    let plan = clone.run_ok(&["plan"]);
    assert!(plan.contains("since latest"), "{plan}");
    let log: Vec<String> = proxy.log()[before..]
        .iter()
        .map(|(l, _)| l.clone())
        .filter(|l| l != "GET /v2/")
        .collect();
    let of = |repo: &str| -> Vec<&str> {
        let prefix = format!("/v2/{repo}/");
        log.iter()
            .filter(|l| l.contains(&prefix))
            .map(String::as_str)
            .collect()
    };
    // The cache tag is asked for beside the content tag (it matters only if an image for the inputs exists, and
    // asking at once saves a round trip on every skip): for a service that builds, one request in vain.
    let cache_head = format!("HEAD /v2/{app}/manifests/cache");
    let mut app_requests = of(app);
    assert_eq!(
        app_requests.iter().filter(|l| **l == cache_head).count(),
        1,
        "{log:#?}"
    );
    app_requests.retain(|l| *l != cache_head);
    let latest = s.manifest_digest(app, "latest");
    // The content tags of the inputs and of the whole context (the build reads less than the context): absent.
    assert!(
        app_requests[..2]
            .iter()
            .all(|l| l.starts_with(&format!("GET /v2/{app}/manifests/bo-"))),
        "{log:#?}"
    );
    assert_eq!(
        app_requests[2..],
        [
            format!("HEAD /v2/{app}/manifests/latest"),
            format!("GET /v2/{app}/referrers/{latest}"),
            format!("GET /v2/{app}/manifests/{}", latest.replace(':', "-")),
            format!("GET /v2/{app}/blobs/{}", record_blob(&s, app, &latest)),
        ],
        "{log:#?}"
    );
    // `other` is skipped: its image is checked (manifest, blobs), nothing of its input manifest is asked for.
    assert!(
        of(other)
            .iter()
            .all(|l| l.starts_with(&format!("GET /v2/{other}/manifests/bo-"))
                || l.starts_with(&format!("HEAD /v2/{other}/blobs/"))
                || *l == format!("HEAD /v2/{other}/manifests/cache")),
        "{log:#?}"
    );
}

/// The record blob of the image `digest` of `repo`, as the referrers tag lists it.
fn record_blob(s: &Services, repo: &str, digest: &str) -> String {
    let index: serde_json::Value = serde_json::from_slice(&get(
        s,
        repo,
        &format!("manifests/{}", digest.replace(':', "-")),
        INDEX,
    ))
    .unwrap();
    index["manifests"][0]["annotations"]["vnd.buildopt.inputs.blob"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Another tool's referrers in the referrers tag (a signature, say) stay when buildopt adds its own, and a new
/// record of the same image (a forced rebuild after an unread file changed) is the one read.
#[test]
fn the_referrers_tag_keeps_other_entries() {
    let s = Services::get();
    let (t, repos) = Tree::workspace(&[("app", &[])]);
    let repo = &repos[0];
    let t = service(t);
    // A reproducible image, so that the forced rebuild below is the same image.
    t.append("buildopt.toml", "source_date_epoch = 0\n");
    assert_eq!(t.build(&[]).0, 0);
    let latest = s.manifest_digest(repo, "latest");
    let tag = latest.replace(':', "-");
    let mut index: serde_json::Value =
        serde_json::from_slice(&get(&s, repo, &format!("manifests/{tag}"), INDEX)).unwrap();
    // A foreign entry, with a field buildopt does not know.
    let foreign = serde_json::json!({
        "mediaType": MANIFEST,
        "digest": latest,
        "size": 1,
        "artifactType": "application/vnd.example.signature",
        "data": "e30=",
    });
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .insert(0, foreign.clone());
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), serde_json::to_vec(&index).unwrap()).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
        .args(["-H", &format!("Content-Type: {INDEX}"), "--data-binary"])
        .arg(format!("@{}", body.path().display()))
        .arg(format!("http://{}/v2/{repo}/manifests/{tag}", s.registry))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201");

    // Same image (the build reads nothing that changed, and the daemon has it cached), new record.
    std::fs::write(t.join("app/README.md"), "# app, edited\n").unwrap();
    let (code, _, err) = t.build(&["--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(s.manifest_digest(repo, "latest"), latest, "{err}");
    let index: serde_json::Value =
        serde_json::from_slice(&get(&s, repo, &format!("manifests/{tag}"), INDEX)).unwrap();
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{index}");
    assert_eq!(listed[0], foreign, "{index}");

    // The newer record is the one compared with: only the file changed since it is named.
    let clone = fresh_clone(&t);
    std::fs::write(clone.join("app/src/main.rs"), "fn main() { }\n").unwrap();
    let plan = clone.run_ok(&["plan"]);
    assert!(
        plan.contains("src/main.rs changed; read by") && !plan.contains("README.md"),
        "{plan}"
    );
}
