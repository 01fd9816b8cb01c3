//! Deploying what changed and keeping registries clean, against the real components: ECS and ECR through moto (the
//! tests create the clusters, task definitions, services and repositories), builds through the real BuildKit, and
//! `gc` on the registry whose deletes are enabled (`BUILDOPT_TEST_DELETE_REGISTRY`, started by hack/services).

use std::process::Command;

use serde_json::{Value, json};
use sha2::Digest as _;

use crate::common::{Services, Tree, daemon_lock, env_or_file, outcome, summary, unique_repo};

/// The registry that allows deletes (a third `docker-registry`, so that no other test's images are ever deleted).
fn delete_registry() -> String {
    env_or_file("BUILDOPT_TEST_DELETE_REGISTRY")
}

/// A name no other test uses, for clusters, services and task definition families.
fn unique(what: &str) -> String {
    unique_repo(what).replace('/', "-")
}

/// One JSON call to moto (`service` is `ecs` or `ecr`); panics with moto's answer when it is not a 200.
fn moto(service: &str, operation: &str, body: Value) -> Value {
    let target = match service {
        "ecs" => "AmazonEC2ContainerServiceV20141113",
        "ecr" => "AmazonEC2ContainerRegistry_V20150921",
        other => panic!("no target prefix for {other}"),
    };
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", "-w", "\n%{http_code}"])
        .args(["-H", &format!("X-Amz-Target: {target}.{operation}")])
        .args(["-H", "Content-Type: application/x-amz-json-1.1"])
        .args(["-H", &format!("Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-west-2/{service}/aws4_request, SignedHeaders=host, Signature=0")])
        .args(["-d", &body.to_string()])
        .arg(format!("{}/", Services::get().moto()))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').expect("status line");
    assert_eq!(code, "200", "moto {service} {operation}: {json}");
    serde_json::from_str(json).unwrap_or(Value::Null)
}

/// An ECS cluster with a service running task definition `family:1`, whose containers are `app` (the one deployed)
/// and `sidecar`, with tags, environment and memory that a deploy must copy. Returns (cluster, service, family).
fn ecs_service(desired: u32) -> (String, String, String) {
    let (cluster, service, family) = (unique("c"), unique("s"), unique("f"));
    moto("ecs", "CreateCluster", json!({ "clusterName": cluster }));
    moto(
        "ecs",
        "RegisterTaskDefinition",
        json!({
            "family": family,
            "containerDefinitions": [
                { "name": "app", "image": "placeholder:1", "memory": 64,
                  "environment": [{ "name": "MODE", "value": "prod" }] },
                { "name": "sidecar", "image": "envoy:1.30", "memory": 32 },
            ],
            "cpu": "256",
            "memory": "512",
            "tags": [{ "key": "team", "value": "shop" }],
        }),
    );
    moto(
        "ecs",
        "CreateService",
        json!({ "cluster": cluster, "serviceName": service, "taskDefinition": format!("{family}:1"),
                "desiredCount": desired }),
    );
    (cluster, service, family)
}

/// The task definition (`family:revision`) the ECS service runs now.
fn running(cluster: &str, service: &str) -> String {
    let v = moto(
        "ecs",
        "DescribeServices",
        json!({ "cluster": cluster, "services": [service] }),
    );
    let arn = v["services"][0]["taskDefinition"]
        .as_str()
        .unwrap_or_else(|| panic!("no service {cluster}/{service}: {v}"));
    arn.rsplit_once('/').unwrap().1.to_owned()
}

/// A task definition and its tags.
fn task_definition(name: &str) -> (Value, Value) {
    let v = moto(
        "ecs",
        "DescribeTaskDefinition",
        json!({ "taskDefinition": name, "include": ["TAGS"] }),
    );
    (v["taskDefinition"].clone(), v["tags"].clone())
}

/// The image of container `name` in task definition `td`.
fn image_of(td: &Value, name: &str) -> String {
    td["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {td}"))["image"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// How many revisions `family` has.
fn revisions(family: &str) -> usize {
    let v = moto(
        "ecs",
        "ListTaskDefinitions",
        json!({ "familyPrefix": family }),
    );
    v["taskDefinitionArns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a.as_str()
                .unwrap()
                .rsplit_once('/')
                .is_some_and(|(_, n)| n.rsplit_once(':').is_some_and(|(f, _)| f == family))
        })
        .count()
}

/// buildopt in `t` with AWS credentials and region for moto, and the endpoints in `env`; HOME is the tree's, so no
/// AWS profile or docker config of this machine is seen. Builds hold the daemon lock. Returns (code, stdout,
/// stderr).
fn aws_run(t: &Tree, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
    std::fs::create_dir_all(t.join("home")).unwrap();
    let mut cmd = t.cmd();
    cmd.env("HOME", t.join("home"))
        .env_remove("DOCKER_CONFIG")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for k in [
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_ECS",
        "AWS_ENDPOINT_URL_ECR",
        "AWS_SESSION_TOKEN",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-west-2");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .arg("--progress")
        .arg("plain")
        .args(args)
        .output()
        .unwrap();
    outcome(out)
}

/// `[services.NAME.deploy.ecs]` for the end of `buildopt.toml`.
fn deploy_table(name: &str, cluster: &str, service: &str) -> String {
    format!(
        "\n[services.{name}.deploy.ecs]\ncluster = \"{cluster}\"\nservice = \"{service}\"\ncontainer = \"app\"\n"
    )
}

/// `build --deploy` registers a revision whose `app` image is `REPO@DIGEST` of what `latest` points to, with
/// everything else copied; a run that changes nothing deploys nothing; without `--deploy` the summary says what
/// would be deployed and how, and `buildopt deploy` does it; a promotion back to an older image deploys that.
#[test]
fn build_deploy_pins_the_new_image_and_a_no_change_run_deploys_nothing() {
    let s = Services::get();
    let (cluster, service, family) = ecs_service(0);
    let (t, repos) = Tree::workspace(&[("app", &[])]);
    let repo = &repos[0];
    t.append("buildopt.toml", &deploy_table("app", &cluster, &service));
    let t = t
        .file("app/Dockerfile", "FROM scratch\nCOPY f /f\n")
        .file("app/f", "one");
    // The ECS endpoint from the SDK's service-specific setting.
    let env = [("AWS_ENDPOINT_URL_ECS", s.moto())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let (code, _, err) = aws_run(&t, &env, &["build", "--deploy"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        summary(&err),
        crate::common::pairs(&[("built", "app")]),
        "{err}"
    );
    let first = s.manifest_digest(repo, "latest");
    assert_eq!(running(&cluster, &service), format!("{family}:2"), "{err}");
    let (td, tags) = task_definition(&format!("{family}:2"));
    assert_eq!(
        image_of(&td, "app"),
        format!("{}/{repo}@{first}", s.registry)
    );
    assert!(
        err.contains(&format!(
            "deployed  app  ECS {cluster}/{service}: task definition {family}:2 (was {family}:1)"
        )),
        "{err}"
    );
    // Everything but that image is copied.
    let (old, old_tags) = task_definition(&format!("{family}:1"));
    assert_eq!(image_of(&td, "sidecar"), "envoy:1.30");
    assert_eq!(
        td["containerDefinitions"][0]["environment"],
        old["containerDefinitions"][0]["environment"]
    );
    assert_eq!((&td["cpu"], &td["memory"]), (&old["cpu"], &old["memory"]));
    assert_eq!(tags, old_tags);
    assert_eq!(tags, json!([{ "key": "team", "value": "shop" }]));

    // Nothing changed: nothing is deployed, no revision registered.
    let (code, _, err) = aws_run(&t, &env, &["build", "--deploy"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        summary(&err),
        crate::common::pairs(&[("skipped", "app")]),
        "{err}"
    );
    assert!(
        err.contains("nothing to deploy: no image changed in this run"),
        "{err}"
    );
    assert_eq!(revisions(&family), 2);
    assert_eq!(running(&cluster, &service), format!("{family}:2"));

    // A change built without --deploy: the summary names the service and the command, and nothing is deployed.
    std::fs::write(t.join("app/f"), "two").unwrap();
    let (code, _, err) = aws_run(&t, &env, &["build"]);
    assert_eq!(code, 0, "{err}");
    let second = s.manifest_digest(repo, "latest");
    assert_ne!(first, second);
    assert!(
        err.contains(&format!(
            "would deploy app  to ECS {cluster}/{service}: {}/{repo}@{second}",
            s.registry
        )),
        "{err}"
    );
    assert!(
        err.contains("deploy them with: buildopt deploy app"),
        "{err}"
    );
    assert_eq!(revisions(&family), 2);

    // `buildopt deploy` deploys what `latest` points to now; again, it finds it in place.
    let (code, out, err) = aws_run(&t, &env, &["deploy"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        running(&cluster, &service),
        format!("{family}:3"),
        "{out}{err}"
    );
    let (td, _) = task_definition(&format!("{family}:3"));
    assert_eq!(
        image_of(&td, "app"),
        format!("{}/{repo}@{second}", s.registry)
    );
    let (code, out, err) = aws_run(&t, &env, &["deploy", "app"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("unchanged app  ECS"), "{out}");
    assert_eq!(revisions(&family), 3);

    // Back to the first inputs: a promotion to another image, which deploys.
    std::fs::write(t.join("app/f"), "one").unwrap();
    let (code, _, err) = aws_run(&t, &env, &["build", "--deploy"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        summary(&err),
        crate::common::pairs(&[("promoted", "app")]),
        "{err}"
    );
    assert_eq!(running(&cluster, &service), format!("{family}:4"), "{err}");
    let (td, _) = task_definition(&format!("{family}:4"));
    assert_eq!(
        image_of(&td, "app"),
        format!("{}/{repo}@{first}", s.registry)
    );
}

/// Of two services built and deployed in one run, the one whose ECS service does not exist fails with the cluster,
/// the service and ECS's error, the run exits 1, and the other is deployed all the same.
#[test]
fn a_failed_deploy_leaves_the_other_services_deployed() {
    let s = Services::get();
    let (cluster, service, family) = ecs_service(0);
    let missing = unique("missing");
    let (t, repos) = Tree::workspace(&[("good", &[]), ("bad", &[])]);
    let toml = std::fs::read_to_string(t.join("buildopt.toml")).unwrap();
    // Each service's deploy table right after its own table.
    let toml = toml.replace(
        "[services.bad]",
        &format!(
            "{}\n[services.bad]",
            deploy_table("good", &cluster, &service)
        ),
    ) + &deploy_table("bad", &cluster, &missing);
    let t = t
        .file("buildopt.toml", toml)
        .file("good/Dockerfile", "FROM scratch\nCOPY f /f\n")
        .file("good/f", "good")
        .file("bad/Dockerfile", "FROM scratch\nCOPY f /f\n")
        .file("bad/f", "bad");
    let (code, _, err) = aws_run(
        &t,
        &[("AWS_ENDPOINT_URL", &s.moto())],
        &["build", "--deploy"],
    );
    assert_eq!(code, 1, "{err}");
    let mut built = summary(&err);
    built.sort();
    assert_eq!(
        built,
        crate::common::pairs(&[("built", "bad"), ("built", "good")]),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "error: deploying `bad` to ECS cluster `{cluster}`, service `{missing}` failed: ECS DescribeServices found no such service in the cluster (MISSING)"
        )),
        "{err}"
    );
    assert!(
        err.contains("the others are deployed; retry with: buildopt deploy bad"),
        "{err}"
    );
    // The good one is deployed.
    assert_eq!(running(&cluster, &service), format!("{family}:2"), "{err}");
    let (td, _) = task_definition(&format!("{family}:2"));
    assert_eq!(
        image_of(&td, "app"),
        format!(
            "{}/{}@{}",
            s.registry,
            repos[0],
            s.manifest_digest(&repos[0], "latest")
        )
    );
}

/// `deploy --wait` follows the service until it is stable: a service of 0 tasks is stable at once; moto never
/// starts tasks, so a service of 1 task never is, and the wait ends at its timeout with a failure that says where
/// the service stands.
#[test]
fn deploy_wait_follows_the_service_and_times_out() {
    let s = Services::get();
    let (cluster, idle, family) = ecs_service(0);
    let (t, _) = Tree::workspace(&[("app", &[])]);
    t.append("buildopt.toml", &deploy_table("app", &cluster, &idle));
    let t = t
        .file("app/Dockerfile", "FROM scratch\nCOPY f /f\n")
        .file("app/f", "wait");
    let env = [("AWS_ENDPOINT_URL", s.moto())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, _, err) = aws_run(&t, &env, &["build"]);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = aws_run(&t, &env, &["deploy", "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("; stable: 1 deployment, 0/0 tasks running"),
        "{out}"
    );
    assert_eq!(running(&cluster, &idle), format!("{family}:2"));

    // The same task definition family, on a service that wants one task.
    let busy = unique("busy");
    moto(
        "ecs",
        "CreateService",
        json!({ "cluster": cluster, "serviceName": busy, "taskDefinition": format!("{family}:1"),
                "desiredCount": 1 }),
    );
    t.replace(
        "buildopt.toml",
        &format!("service = \"{idle}\""),
        &format!("service = \"{busy}\""),
    );
    let (code, _, err) = aws_run(&t, &env, &["deploy", "--wait", "--timeout", "2s"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "waiting   app  ECS {cluster}/{busy}: 1 deployment, 0/1 tasks running"
        )),
        "{err}"
    );
    assert!(
        err.contains(
            "failed: not stable after 2s (1 deployment, 0/1 tasks running); ECS goes on deploying"
        ),
        "{err}"
    );
    // The update itself happened (a third revision of the family: the second is the idle service's).
    assert_eq!(running(&cluster, &busy), format!("{family}:3"));
}

/// Bad deploy and lifecycle settings are refused before anything is built or called, naming the file and line.
#[test]
fn deploy_and_lifecycle_settings_are_checked() {
    let t = Tree::new()
        .file(
            "buildopt.toml",
            "[registry]\nurl = \"127.0.0.1:5000\"\ninsecure = true\n\n[services.app]\ncontext = \"app\"\n\n[services.app.deploy]\n",
        )
        .file("app/Dockerfile", "FROM scratch\n");
    let (code, _, err) = t.run(&["plan", "--local"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("buildopt.toml:8: `services.app.deploy` says nowhere to deploy: add [services.app.deploy.ecs] with `cluster` and `service`"),
        "{err}"
    );

    t.replace(
        "buildopt.toml",
        "[services.app.deploy]\n",
        "[services.app.deploy.ecs]\ncluster = \"prod\"\n",
    );
    let (code, _, err) = t.run(&["plan", "--local"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing field `service`"), "{err}");

    t.replace(
        "buildopt.toml",
        "cluster = \"prod\"\n",
        "cluster = \"prod\"\nservice = \"my service\"\n",
    );
    let (code, _, err) = t.run(&["plan", "--local"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("buildopt.toml:10: `services.app.deploy.ecs.service`: `my service` is not an ECS service name or ARN"), "{err}");

    // --deploy with no service that says where to deploy: exit 2 before anything is built.
    let t = Tree::new().app();
    let (code, _, err) = t.run(&["build", "--deploy"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--deploy: no selected service (app) has a [services.NAME.deploy.ecs] table"),
        "{err}"
    );
    let (code, _, err) = t.run(&["build", "--deploy", "--no-push"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = t.run(&["deploy"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no service in"), "{err}");

    // A lifecycle policy is for ECR only, and keeps at least one image.
    t.replace(
        "buildopt.toml",
        "insecure = true\n",
        "insecure = true\necr_lifecycle = { keep_content_tags = 3 }\n",
    );
    let (code, _, err) = t.run(&["plan", "--local"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(
            "buildopt.toml:4: `registry.ecr_lifecycle`: registry `127.0.0.1:5000` is not ECR"
        ),
        "{err}"
    );
    t.replace(
        "buildopt.toml",
        "insecure = true\n",
        "insecure = true\necr = true\n",
    );
    t.replace(
        "buildopt.toml",
        "keep_content_tags = 3",
        "keep_content_tags = 0",
    );
    let (code, _, err) = t.run(&["plan", "--local"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("`keep_content_tags` must be 1 or more"),
        "{err}"
    );
}

/// Uploads `bytes` as a blob of `repo` in `registry`; returns its digest.
fn push_blob(registry: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
    let out = Command::new("curl")
        .args(["-sS", "-i", "-X", "POST"])
        .arg(format!("http://{registry}/v2/{repo}/blobs/uploads/"))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout);
    let location = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("location:")
                .then(|| l.split_once(':').unwrap().1.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no upload location: {headers}"));
    let sep = if location.contains('?') { '&' } else { '?' };
    put(
        &format!("{location}{sep}digest={digest}"),
        "application/octet-stream",
        bytes,
    );
    digest
}

/// PUT `body` to `url`, which must answer 201 Created.
fn put(url: &str, content_type: &str, body: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
        .args([
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data-binary",
        ])
        .arg(format!("@{}", file.display()))
        .arg(url)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "PUT {url}");
}

/// Puts `manifest` under `reference` (a tag) of `repo`; returns its digest.
fn put_manifest(registry: &str, repo: &str, reference: &str, manifest: &[u8]) -> String {
    put(
        &format!("http://{registry}/v2/{repo}/manifests/{reference}"),
        "application/vnd.oci.image.manifest.v1+json",
        manifest,
    );
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(manifest)))
}

/// An image made on `day` of January 2026 (its config's `created`), without layers, in `repo`; returns its manifest.
fn image_of_day(registry: &str, repo: &str, day: u32) -> Vec<u8> {
    let config = json!({
        "created": format!("2026-01-{day:02}T12:00:00Z"),
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [] },
    })
    .to_string();
    let digest = push_blob(registry, repo, config.as_bytes());
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": config.len() },
        "layers": [],
    })
    .to_string()
    .into_bytes()
}

/// A content tag: `bo-` and 64 hex digits made of `seed`.
fn content_tag(seed: &str) -> String {
    format!("bo-{}", hex::encode(sha2::Sha256::digest(seed.as_bytes())))
}

/// What `tag` of `repo` points at in `registry` (None: no such tag).
fn tag_digest(registry: &str, repo: &str, tag: &str) -> Option<String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-I",
            "-H",
            // Every type BuildKit and buildopt push: without one, distribution 2.8 converts to schema 1.
            "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json",
        ])
        .arg(format!("http://{registry}/v2/{repo}/manifests/{tag}"))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout);
    if !headers.starts_with("HTTP/1.1 200") {
        return None;
    }
    headers.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .starts_with("docker-content-digest:")
            .then(|| l.split_once(':').unwrap().1.trim().to_owned())
    })
}

/// On a registry that deletes, `gc --keep 1` keeps the newest content tag, the one on the same image, and every
/// image a requested tag (`latest`), the cache tag or another tag (`v1`) points to; it deletes only the images all
/// of whose tags are content tags beyond the newest. `--dry-run` deletes nothing; `--older-than` spares the young.
#[test]
fn gc_on_a_registry_with_deletes_keeps_the_newest_and_every_tagged_image() {
    let registry = delete_registry();
    let repo = unique_repo("gc");
    let t = Tree::new()
        .file(
            "buildopt.toml",
            format!("[registry]\nurl = \"{registry}\"\ninsecure = true\n\n[services.app]\ncontext = \"app\"\nimage = \"{repo}\"\n"),
        )
        .file("app/Dockerfile", "FROM scratch\n");
    // Day n's image, content-tagged `c<n>`; day 6's image has two content tags.
    let mut digests = Vec::new();
    for day in 1..=6 {
        let manifest = image_of_day(&registry, &repo, day);
        digests.push(put_manifest(
            &registry,
            &repo,
            &content_tag(&format!("c{day}")),
            &manifest,
        ));
        match day {
            1 => _ = put_manifest(&registry, &repo, "v1", &manifest),
            2 => _ = put_manifest(&registry, &repo, "latest", &manifest),
            3 => _ = put_manifest(&registry, &repo, "cache", &manifest),
            6 => _ = put_manifest(&registry, &repo, &content_tag("c6-again"), &manifest),
            _ => {}
        }
    }
    let exists = |day: usize| tag_digest(&registry, &repo, &digests[day - 1]).is_some();

    let (code, out, err) = t.run(&["gc", "--keep", "1", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("would remove 2 content tags in 1 repository; kept 5"),
        "{out}"
    );
    assert!((1..=6).all(exists), "a dry run deleted: {out}");

    let (code, out, err) = t.run(&["gc", "--keep", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("removed 2 content tags in 1 repository; kept 5"),
        "{out}"
    );
    assert!(
        out.contains("its image is tagged latest (a requested tag)"),
        "{out}"
    );
    assert!(
        out.contains("its image is tagged cache (a cache tag)"),
        "{out}"
    );
    assert!(out.contains("its image is tagged v1"), "{out}");
    assert!(out.contains("its image is that of kept bo-"), "{out}");
    assert!(!exists(4) && !exists(5), "days 4 and 5 are gone: {out}");
    for (day, tag) in [(1, "v1"), (2, "latest"), (3, "cache")] {
        assert_eq!(
            tag_digest(&registry, &repo, tag),
            Some(digests[day - 1].clone()),
            "{tag}"
        );
        assert_eq!(
            tag_digest(&registry, &repo, &content_tag(&format!("c{day}"))),
            Some(digests[day - 1].clone()),
            "content tag of day {day}"
        );
    }
    for tag in [content_tag("c6"), content_tag("c6-again")] {
        assert_eq!(tag_digest(&registry, &repo, &tag), Some(digests[5].clone()));
    }
    assert_eq!(tag_digest(&registry, &repo, &content_tag("c4")), None);

    // With --keep 0 the newest may go too, but not while younger than --older-than.
    let (code, out, err) = t.run(&["gc", "--keep", "0", "--older-than", "36500d"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed 0 content tags"), "{out}");
    assert!(exists(6));
    let (code, out, err) = t.run(&["gc", "--keep", "0", "--older-than", "1d"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed 2 content tags"), "{out}");
    assert!(!exists(6), "{out}");
    assert!((1..=3).all(exists), "tagged images stay: {out}");
}

/// `gc` after real builds: the image `latest` points to keeps its content tag (the next run skips), an old build's
/// content tag is gone (building those inputs again rebuilds), and so is the input manifest stored beside it (the
/// registry has no referrers API: it is listed under the tag `sha256-<hex of the image digest>`).
#[test]
fn gc_after_builds_keeps_what_the_next_build_skips_on() {
    let s = Services::get();
    let (t, repos) = Tree::workspace_at(
        &delete_registry(),
        &s.buildkit_addr,
        "host",
        &[("app", &[])],
    );
    let registry = delete_registry();
    let t = t
        .file("app/Dockerfile", "FROM scratch\nCOPY f /f\n")
        .file("app/f", "old");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    let old = tag_digest(&registry, &repos[0], "latest").unwrap();
    std::fs::write(t.join("app/f"), "new").unwrap();
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    let latest = tag_digest(&registry, &repos[0], "latest").unwrap();
    let referrers = |image: &str| tag_digest(&registry, &repos[0], &image.replace(':', "-"));
    assert!(
        referrers(&old).is_some(),
        "the old image's input manifest is listed"
    );

    let (code, out, err) = t.run(&["gc", "--keep", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("removed 1 content tag in 1 repository"),
        "{out}"
    );
    assert_eq!(
        tag_digest(&registry, &repos[0], "latest"),
        Some(latest.clone())
    );
    assert_eq!(tag_digest(&registry, &repos[0], &old), None);
    assert_eq!(referrers(&old), None, "{out}");
    assert!(referrers(&latest).is_some());
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        summary(&err),
        crate::common::pairs(&[("skipped", "app")]),
        "{err}"
    );
    std::fs::write(t.join("app/f"), "old").unwrap();
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        summary(&err),
        crate::common::pairs(&[("built", "app")]),
        "{err}"
    );
}

/// ECR through moto: `gc` lists images with DescribeImages and removes content tags with BatchDeleteImage by tag;
/// images with a requested tag or anyone's tag keep their content tags, the newest stays, an image whose last tag
/// goes is deleted. The endpoint given in the config wins over `AWS_ENDPOINT_URL_ECR` (here a dead port).
#[test]
fn gc_on_ecr_removes_content_tags_by_tag_and_keeps_tagged_images() {
    let s = Services::get();
    let repo = unique_repo("gc-ecr");
    moto("ecr", "CreateRepository", json!({ "repositoryName": repo }));
    // moto records push times in whole seconds: one image per second, oldest first.
    let put = |n: u32, tags: &[String]| {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
                        "digest": format!("sha256:{}", hex::encode(sha2::Sha256::digest(format!("config {n}")))) },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 2,
                         "digest": format!("sha256:{}", hex::encode(sha2::Sha256::digest(format!("layer {n}")))) }],
        })
        .to_string();
        for tag in tags {
            moto(
                "ecr",
                "PutImage",
                json!({ "repositoryName": repo, "imageManifest": manifest, "imageTag": tag }),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(1100));
    };
    put(1, &[content_tag("e1"), "latest".into()]);
    put(2, &[content_tag("e2")]);
    put(3, &[content_tag("e3"), "pr-7".into()]);
    put(4, &[content_tag("e4")]);
    let t = Tree::new()
        .file(
            "buildopt.toml",
            format!(
                "[registry]\nurl = \"123456789012.dkr.ecr.us-west-2.amazonaws.com\"\necr_endpoint = \"{}\"\n\n[services.app]\ncontext = \"app\"\nimage = \"{repo}\"\n",
                s.moto()
            ),
        )
        .file("app/Dockerfile", "FROM scratch\n");
    let env = [("AWS_ENDPOINT_URL_ECR", "http://127.0.0.1:9")];
    let (code, out, err) = aws_run(&t, &env, &["gc", "--keep", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("removed 1 content tag in 1 repository; kept 3"),
        "{out}"
    );
    assert!(out.contains("its image is tagged pr-7"), "{out}");
    assert!(
        out.contains("its image is tagged latest (a requested tag)"),
        "{out}"
    );
    let images = moto("ecr", "DescribeImages", json!({ "repositoryName": repo }));
    let mut tags: Vec<String> = images["imageDetails"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["imageTags"].as_array().cloned().unwrap_or_default())
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    tags.sort();
    let mut want = vec![
        content_tag("e1"),
        content_tag("e3"),
        content_tag("e4"),
        "latest".to_owned(),
        "pr-7".to_owned(),
    ];
    want.sort();
    assert_eq!(tags, want, "{out}");
    assert_eq!(
        images["imageDetails"].as_array().unwrap().len(),
        3,
        "image 2 is deleted with its last tag"
    );
}

/// The lifecycle policy of `repo` in moto, as JSON.
fn lifecycle(repo: &str) -> Value {
    let v = moto(
        "ecr",
        "GetLifecyclePolicy",
        json!({ "repositoryName": repo }),
    );
    serde_json::from_str(v["lifecyclePolicyText"].as_str().expect("a policy")).unwrap()
}

/// `ecr_lifecycle`: a repository buildopt creates gets the policy (requested and cache tags protected, content
/// tags beyond N expired); `buildopt ecr-lifecycle` applies it to an existing repository and leaves one with a
/// foreign policy alone, with a warning. ECR is found through `AWS_ENDPOINT_URL_ECR`, the SDK's own setting.
#[test]
fn ecr_lifecycle_on_create_and_for_existing_repositories() {
    let s = Services::get();
    let (created, bare, foreign) = (
        unique_repo("lc-new"),
        unique_repo("lc-bare"),
        unique_repo("lc-foreign"),
    );
    moto("ecr", "CreateRepository", json!({ "repositoryName": bare }));
    moto(
        "ecr",
        "CreateRepository",
        json!({ "repositoryName": foreign }),
    );
    let theirs = json!({ "rules": [{ "rulePriority": 1, "description": "expire untagged after 7 days",
        "selection": { "tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days", "countNumber": 7 },
        "action": { "type": "expire" } }] });
    moto(
        "ecr",
        "PutLifecyclePolicy",
        json!({ "repositoryName": foreign, "lifecyclePolicyText": theirs.to_string() }),
    );
    let t = Tree::new()
        .file(
            "buildopt.toml",
            format!(
                "[registry]\nurl = \"{reg}\"\ninsecure = true\necr = true\ncreate_repositories = true\necr_region = \"us-west-2\"\necr_lifecycle = {{ keep_content_tags = 5 }}\n\
                 [buildkit]\naddr = \"{addr}\"\nnetwork = \"host\"\n\
                 [services.app]\ncontext = \"app\"\nimage = \"{created}\"\n\
                 [services.bare]\ncontext = \"app\"\nimage = \"{bare}\"\ntags = [\"stable\"]\n\
                 [services.foreign]\ncontext = \"app\"\nimage = \"{foreign}\"\n",
                reg = s.auth_registry(),
                addr = s.buildkit_addr
            ),
        )
        .file("app/Dockerfile", "FROM scratch\nCOPY f /f\n")
        .file("app/f", "lifecycle");
    let env = [("AWS_ENDPOINT_URL_ECR", s.moto())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, _, err) = aws_run(&t, &env, &["build", "app"]);
    assert_eq!(code, 0, "{err}");
    assert!(s.moto_repositories().contains(&created));
    let policy = lifecycle(&created);
    let rules = policy["rules"].as_array().unwrap();
    let protected: Vec<&Value> = rules
        .iter()
        .filter_map(|r| r["selection"]["tagPatternList"].get(0))
        .collect();
    assert_eq!(protected, [&json!("cache"), &json!("latest")], "{policy}");
    let last = rules.last().unwrap();
    assert_eq!(last["selection"]["tagPrefixList"], json!(["bo-"]));
    assert_eq!(last["selection"]["countNumber"], 5);
    assert!(last["rulePriority"].as_u64() > rules[0]["rulePriority"].as_u64());

    let (code, out, err) = aws_run(&t, &env, &["ecr-lifecycle", "bare", "foreign"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("applied   {bare}")), "{out}");
    assert!(
        err.contains(&format!("warning: ECR repository `{foreign}` has a lifecycle policy that is not buildopt's; left alone")),
        "{err}"
    );
    assert_eq!(lifecycle(&foreign), theirs);
    let policy = lifecycle(&bare);
    assert_eq!(
        policy["rules"][1]["selection"]["tagPatternList"],
        json!(["stable"]),
        "{policy}"
    );
    // Again: nothing to change.
    let (code, out, err) = aws_run(&t, &env, &["ecr-lifecycle", "bare"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("unchanged {bare}")), "{out}");
    // --show changes nothing and says whose each policy is.
    let (code, out, err) = aws_run(&t, &env, &["ecr-lifecycle", "--show", "foreign"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("a policy that is not buildopt's (left alone)"),
        "{out}"
    );
}
