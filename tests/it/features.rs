//! Build secrets and SSH forwarding on the real daemons (both, where RUN steps run) and the real registry: values
//! reach the steps and nothing else (every pushed blob is searched), a missing secret or agent fails its service
//! naming what buildopt looked for, and a real OpenSSH agent answers through the session.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::{Services, Tree, daemon_lock, outcome, summary, unique_repo};

/// (BuildKit address, RUN network) of each daemon: the second refuses `network.host`.
fn daemons() -> Vec<(String, &'static str)> {
    let s = Services::get();
    vec![(s.buildkit_addr, "host"), (s.buildkit_addr2, "none")]
}

/// `buildopt ARGS` in `t` with `env` set and `unset` removed, holding the daemon lock; (exit code, stdout, stderr).
fn run(t: &Tree, env: &[(&str, &str)], unset: &[&str], args: &[&str]) -> (i32, String, String) {
    let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
    let mut cmd = t.cmd();
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let out = cmd.args(args).output().unwrap();
    outcome(out)
}

/// A value no test writes anywhere else.
fn fresh_value(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}-{}-{nanos}-never-anywhere-else", std::process::id())
}

fn sha256_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("data");
    std::fs::write(&f, data).unwrap();
    let out = Command::new("sha256sum").arg(&f).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A blob's bytes, decompressed when gzip.
fn blob(s: &Services, repo: &str, digest: &str) -> Vec<u8> {
    let (code, _, body) = s.registry_get(&format!("/v2/{repo}/blobs/{digest}"), "*/*");
    assert_eq!(code, 200, "blob {digest} of {repo}");
    if !body.starts_with(&[0x1f, 0x8b]) {
        return body;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("blob.gz");
    std::fs::write(&f, &body).unwrap();
    let out = Command::new("gzip").arg("-dc").arg(&f).output().unwrap();
    assert!(out.status.success(), "gunzip {digest}");
    out.stdout
}

/// Every manifest and blob pushed to `repo` under any tag (images, indexes, the registry cache, input manifests),
/// each as (digest, bytes), blobs decompressed.
fn everything_pushed(s: &Services, repo: &str) -> Vec<(String, Vec<u8>)> {
    let (code, _, body) = s.registry_get(&format!("/v2/{repo}/tags/list"), "application/json");
    assert_eq!(code, 200, "tags of {repo}");
    let tags: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut todo: Vec<String> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    assert!(!todo.is_empty());
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    while let Some(reference) = todo.pop() {
        let manifest = s.manifest(repo, &reference).expect("a listed manifest");
        let text = serde_json::to_vec(&manifest).unwrap();
        out.push((reference.clone(), text));
        for child in manifest["manifests"].as_array().into_iter().flatten() {
            let d = child["digest"].as_str().unwrap().to_owned();
            if !seen.contains(&d) {
                seen.push(d.clone());
                todo.push(d);
            }
        }
        let blobs = manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(manifest.get("config"));
        for b in blobs {
            let d = b["digest"].as_str().unwrap().to_owned();
            if !seen.contains(&d) {
                seen.push(d.clone());
                out.push((d.clone(), blob(s, repo, &d)));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The content of `path` in the image `repo:tag` (the last layer that has it).
fn image_file(s: &Services, repo: &str, tag: &str, path: &str) -> Option<String> {
    let m = s.image_manifest(repo, tag);
    let dir = tempfile::tempdir().unwrap();
    let mut found = None;
    for layer in m["layers"].as_array().unwrap() {
        let tar = dir.path().join("layer.tar");
        std::fs::write(&tar, blob(s, repo, layer["digest"].as_str().unwrap())).unwrap();
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(&tar)
            .arg(path)
            .output()
            .unwrap();
        if out.status.success() {
            found = Some(String::from_utf8_lossy(&out.stdout).into_owned());
        }
    }
    found
}

/// The summary line of failed service `svc`.
fn failure(stderr: &str, svc: &str) -> String {
    stderr
        .lines()
        .find(|l| l.starts_with("failed") && l.split_whitespace().nth(1) == Some(svc))
        .unwrap_or_else(|| panic!("no failure of {svc}:\n{stderr}"))
        .to_owned()
}

/// Every file under `dir`, recursively, as (path, bytes).
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

/// Values of secrets reach the steps that mount them (from a file, a variable, a `--set` entry replacing the file's,
/// and `--secret` on the command line) and nowhere else: not in the output, the progress stream, the logs, the
/// metadata file, `.build-cache/`, nor in any blob pushed to the registry (image config and layers, the registry
/// cache, the input manifest, all decompressed). On both daemons.
#[test]
fn secret_values_reach_their_steps_and_nothing_else() {
    let s = Services::get();
    for (addr, network) in daemons() {
        let repo = unique_repo("secrets");
        let file_value = fresh_value("file-secret");
        let env_value = fresh_value("env-secret");
        let cli_value = fresh_value("cli-secret");
        let t = Tree::buildable_on(
            &addr,
            network,
            &repo,
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n\
             RUN --mount=type=secret,id=npm,required sha256sum /run/secrets/npm | cut -d' ' -f1 > /npm.sha256\n\
             RUN --mount=type=secret,id=token,required,target=/tmp/tok sha256sum /tmp/tok | cut -d' ' -f1 > /token.sha256\n\
             RUN --mount=type=secret,id=cli,required sha256sum /run/secrets/cli | cut -d' ' -f1 > /cli.sha256\n\
             RUN --mount=type=secret,id=not-given if [ -e /run/secrets/not-given ]; then echo mounted; else echo absent; fi > /optional\n",
        )
        // The file lives outside the context; the config names it relative to itself.
        .file("secrets/npmrc", &file_value)
        .file("secrets/wrong", "the --set replaces this entry");
        t.append(
            "buildopt.toml",
            "secrets = [\"id=npm,src=secrets/wrong\", \"id=token,env=BUILDOPT_TEST_TOKEN\"]\n",
        );
        let metadata = t.join("metadata.json");
        let (code, stdout, stderr) = run(
            &t,
            &[
                ("BUILDOPT_TEST_TOKEN", &env_value),
                ("BUILDOPT_TEST_CLI", &cli_value),
            ],
            &[],
            &[
                "-vv",
                "--set",
                "app.secrets=id=npm,src=secrets/npmrc",
                "--progress",
                "json",
                "build",
                "--secret",
                "id=cli,env=BUILDOPT_TEST_CLI",
                // The steps must run: an earlier run of this test left them in the daemon's cache.
                "--no-cache",
                "--metadata-file",
                metadata.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{addr}: {stderr}");
        assert_eq!(summary(&stderr), [("built".into(), "app".into())]);

        // Each step got its value (the image holds only their digests).
        let got = |p: &str| image_file(&s, &repo, "latest", p).unwrap_or_default();
        assert_eq!(got("npm.sha256").trim(), sha256_hex(file_value.as_bytes()));
        assert_eq!(got("token.sha256").trim(), sha256_hex(env_value.as_bytes()));
        assert_eq!(got("cli.sha256").trim(), sha256_hex(cli_value.as_bytes()));
        assert_eq!(got("optional").trim(), "absent");

        let pushed = everything_pushed(&s, &repo);
        // The search reads what it should: a digest the steps wrote is found in a decompressed layer.
        let digest = sha256_hex(env_value.as_bytes());
        assert!(
            pushed.iter().any(|(_, b)| contains(b, digest.as_bytes())),
            "the search does not see into the layers"
        );
        let metadata = std::fs::read(&metadata).unwrap();
        let cache = files_under(&t.join(".build-cache"));
        assert!(!cache.is_empty());
        for value in [&file_value, &env_value, &cli_value] {
            let v = value.as_bytes();
            assert!(
                !contains(stdout.as_bytes(), v),
                "{addr}: a secret in the progress stream"
            );
            assert!(
                !contains(stderr.as_bytes(), v),
                "{addr}: a secret in the logs or output"
            );
            assert!(
                !contains(&metadata, v),
                "{addr}: a secret in the metadata file"
            );
            for (path, bytes) in &cache {
                assert!(
                    !contains(bytes, v),
                    "{addr}: a secret in {}",
                    path.display()
                );
            }
            for (what, bytes) in &pushed {
                assert!(
                    !contains(bytes, v),
                    "{addr}: a secret in pushed {what} of {repo}"
                );
            }
        }
    }
}

/// A secret is not an input, as with buildx: a changed value skips the service (the input digest is the same) and
/// even `--force` reuses the step from the cache (BuildKit leaves secret values out of its cache keys); `--force
/// --no-cache` runs it again with the new value.
#[test]
fn a_changed_secret_rebuilds_only_with_force_and_no_cache() {
    let s = Services::get();
    let repo = unique_repo("secret-change");
    let t = Tree::buildable(
        &repo,
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN --mount=type=secret,id=token,required sha256sum /run/secrets/token | cut -d' ' -f1 > /token.sha256\n",
    )
    .file("token.txt", "first value");
    t.append("buildopt.toml", "secrets = [\"id=token,src=token.txt\"]\n");
    let digest = t.digest("app");
    let build = |args: &[&str]| {
        let (code, _, err) = run(
            &t,
            &[],
            &[],
            &[&["--progress", "plain", "build"], args].concat(),
        );
        assert_eq!(code, 0, "{err}");
        err
    };
    // The step must run now (an earlier run of this test cached it), and be cached for `--force` below.
    build(&["--no-cache"]);
    let first = image_file(&s, &repo, "latest", "token.sha256").unwrap();
    assert_eq!(first.trim(), sha256_hex(b"first value"));

    std::fs::write(t.join("token.txt"), "second value").unwrap();
    assert_eq!(t.digest("app"), digest, "a secret's value is not an input");
    let err = build(&[]);
    assert_eq!(summary(&err), [("skipped".into(), "app".into())], "{err}");
    let err = build(&["--force"]);
    assert_eq!(summary(&err), [("built".into(), "app".into())], "{err}");
    assert_eq!(
        image_file(&s, &repo, "latest", "token.sha256").unwrap(),
        first,
        "--force alone reuses the cached step: {err}"
    );
    let err = build(&["--force", "--no-cache"]);
    assert_eq!(summary(&err), [("built".into(), "app".into())], "{err}");
    assert_eq!(
        image_file(&s, &repo, "latest", "token.sha256")
            .unwrap()
            .trim(),
        sha256_hex(b"second value"),
        "{err}"
    );
}

/// Where secrets come from is not an input either: adding, changing or removing sources keeps the digest.
#[test]
fn secret_and_ssh_sources_do_not_change_the_input_digest() {
    let t = Tree::new().app().file(
        "app/Dockerfile",
        "FROM scratch\nRUN --mount=type=secret,id=a --mount=type=ssh true\n",
    );
    let plain = t.digest("app");
    t.append(
        "buildopt.toml",
        "secrets = [\"id=a,src=one.txt\", \"id=b,env=B\"]\nssh = [\"default\", \"gh=keys/k\"]\n",
    );
    assert_eq!(t.digest("app"), plain);
    let out = t.run_ok(&[
        "--set",
        "app.secrets=id=a,src=two.txt",
        "--set",
        "app.ssh=gh=/other",
        "hash",
        "app",
    ]);
    assert_eq!(out.trim(), format!("app {plain}"));
    // The digest does see the Dockerfile, which names the ids.
    std::fs::write(
        t.join("app/Dockerfile"),
        "FROM scratch\nRUN --mount=type=secret,id=c true\n",
    )
    .unwrap();
    assert_ne!(t.digest("app"), plain);
}

/// A required secret that is missing fails its service (exit 1) with the daemon's error and where buildopt looked;
/// one whose file cannot be read fails naming the file; an optional one that is configured but missing is a
/// warning. The other services build. On both daemons.
#[test]
fn missing_secrets_fail_their_service_naming_the_id_and_where_buildopt_looked() {
    let s = Services::get();
    for (addr, network) in daemons() {
        let (t, _) = Tree::workspace_at(
            &s.registry,
            &addr,
            network,
            &[
                ("unknown", &[]),
                ("unset", &[]),
                ("unreadable", &[]),
                ("optional", &[]),
                ("fine", &[]),
            ],
        );
        // Each step differs: BuildKit runs identical steps of concurrent builds once, through either's session (the
        // secret's value is not in the step's cache key).
        let step = |mount: &str, name: &str| {
            format!(
                "FROM {}\nRUN --mount=type=secret,{mount} echo {name}\n",
                s.base_image
            )
        };
        let t = t
            .file("unknown/Dockerfile", step("id=absent,required", "unknown"))
            .file("unset/Dockerfile", step("id=tok,required", "unset"))
            .file("unreadable/Dockerfile", step("id=npm", "unreadable"))
            .file("optional/Dockerfile", step("id=npm", "optional"))
            .file(
                "fine/Dockerfile",
                format!("FROM {}\nRUN true\n", s.base_image),
            )
            .dir("a-directory");
        t.replace(
            "buildopt.toml",
            "[services.unreadable]\n",
            "[services.unreadable]\nsecrets = [\"id=npm,src=a-directory\"]\n",
        );
        t.replace(
            "buildopt.toml",
            "[services.optional]\n",
            "[services.optional]\nsecrets = [\"id=npm,src=gone.txt\"]\n",
        );
        let (code, _, err) = run(
            &t,
            &[],
            &["BUILDOPT_TEST_UNSET_TOKEN"],
            &[
                "--progress",
                "plain",
                "build",
                "--secret",
                "id=tok,env=BUILDOPT_TEST_UNSET_TOKEN",
                "--no-cache",
                "--cache-to",
                "none",
            ],
        );
        assert_eq!(code, 1, "{addr}: {err}");
        let line = |svc: &str| failure(&err, svc);
        let unknown = line("unknown");
        assert!(unknown.contains("unknown/Dockerfile:2"), "{unknown}");
        assert!(
            unknown.contains("secret absent: not found; secret `absent`: no `--secret` or `secrets` entry has this id; give it with `--secret id=absent,src=PATH` or `--secret id=absent,env=VAR`"),
            "{addr}: {unknown}"
        );
        assert!(
            line("unset").contains("secret tok: not found; secret `tok`: environment variable `BUILDOPT_TEST_UNSET_TOKEN` (from `id=tok,env=BUILDOPT_TEST_UNSET_TOKEN`) is not set"),
            "{addr}: {err}"
        );
        // Unreadable fails the step even though the mount is optional.
        assert!(
            line("unreadable").contains(&format!(
                "secret `npm`: cannot read {}: it is a directory",
                t.join("a-directory").display()
            )),
            "{addr}: {err}"
        );
        let mut built: Vec<(String, String)> = summary(&err)
            .into_iter()
            .filter(|(verb, _)| verb == "built")
            .collect();
        built.sort();
        assert_eq!(
            built,
            [
                ("built".into(), "fine".into()),
                ("built".into(), "optional".into())
            ],
            "{addr}: {err}"
        );
        assert!(
            err.contains(&format!(
                "secret `npm`: file {} (from `id=npm,src={}`) does not exist; the step that mounts it ran without it (its mount is optional)",
                t.join("gone.txt").display(),
                t.join("gone.txt").display()
            )),
            "{addr}: {err}"
        );
    }
}

/// A static program that lists the agent's keys and has it sign (`tests/fixtures/ssh/agent-probe.rs`): busybox has
/// no ssh-add, and its nc no unix sockets.
fn agent_probe() -> &'static Path {
    static PROBE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PROBE.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-probe");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ssh/agent-probe.rs");
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let status = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()))
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "target-feature=+crt-static",
                "-C",
                "strip=symbols",
                "-o",
            ])
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("rustc runs");
        assert!(
            status.success(),
            "building the agent probe statically (needs libc6-dev)"
        );
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
}

/// A new ed25519 key pair `dir/name` (mode 0600, as OpenSSH wants) with `comment`; returns its public line
/// (`TYPE BASE64 COMMENT`).
fn keygen(dir: &Path, name: &str, comment: &str) -> String {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(dir.join(name))
        .status()
        .expect("ssh-keygen (openssh-client; hack/test installs it)");
    assert!(status.success());
    std::fs::read_to_string(dir.join(format!("{name}.pub")))
        .unwrap()
        .trim()
        .to_owned()
}

/// A real OpenSSH agent on a socket of its own, holding `keys`; killed when dropped.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path, keys: &[PathBuf]) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client; hack/test installs it)");
        let agent = Agent { child, socket };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&agent.socket).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "ssh-agent did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for key in keys {
            let status = Command::new("ssh-add")
                .arg("-q")
                .arg(key)
                .env("SSH_AUTH_SOCK", &agent.socket)
                .stdin(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "ssh-add {}", key.display());
        }
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes whose command line mentions `text`.
fn processes_mentioning(text: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(text))
        .collect()
}

/// `--ssh default` forwards the agent at `$SSH_AUTH_SOCK` (a real ssh-agent) and `ssh = ["deploy=KEYFILE"]` a key
/// file, through an agent buildopt starts and stops: a step that lists the agent's keys and has it sign sees exactly
/// the key of its id. On both daemons.
#[test]
fn ssh_forwards_the_users_agent_and_key_files() {
    let s = Services::get();
    let keys = tempfile::tempdir().unwrap();
    let user_key = keygen(keys.path(), "user", "user-key");
    let deploy_key = keygen(keys.path(), "deploy", "deploy-key");
    let agent = Agent::start(keys.path(), &[keys.path().join("user")]);
    for (addr, network) in daemons() {
        let repo = unique_repo("ssh");
        let t = Tree::buildable_on(
            &addr,
            network,
            &repo,
            "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n\
             RUN --mount=type=ssh,required --mount=type=bind,source=agent-probe,target=/probe /probe > /default.txt\n\
             RUN --mount=type=ssh,id=deploy,required --mount=type=bind,source=agent-probe,target=/probe /probe > /deploy.txt\n",
        )
        .dir("tmp");
        t.file_mode(
            "app/agent-probe",
            std::fs::read(agent_probe()).unwrap(),
            0o755,
        );
        t.file_mode(
            "keys/deploy",
            std::fs::read(keys.path().join("deploy")).unwrap(),
            0o600,
        );
        t.append("buildopt.toml", "ssh = [\"deploy=keys/deploy\"]\n");
        let tmp = t.join("tmp");
        let (code, _, err) = run(
            &t,
            &[
                ("SSH_AUTH_SOCK", agent.socket.to_str().unwrap()),
                ("TMPDIR", tmp.to_str().unwrap()),
            ],
            &[],
            &[
                "--progress",
                "plain",
                "build",
                "--ssh",
                "default",
                "--no-cache",
            ],
        );
        assert_eq!(code, 0, "{addr}: {err}");
        let got = |p: &str| image_file(&s, &repo, "latest", p).unwrap_or_default();
        assert_eq!(
            got("default.txt"),
            format!("{user_key}\nsigned ssh-ed25519\n"),
            "{addr}"
        );
        assert_eq!(
            got("deploy.txt"),
            format!("{deploy_key}\nsigned ssh-ed25519\n"),
            "{addr}"
        );
        // The agent buildopt started for the key file is gone, with its directory.
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "{addr}: left in TMPDIR"
        );
        assert_eq!(
            processes_mentioning(tmp.to_str().unwrap()),
            Vec::<String>::new()
        );
    }
}

/// An agent that is not there fails its service before the build, naming the id and what is missing; an id the
/// Dockerfile requires and no `--ssh` gives fails the step, saying how to give it. The other services build.
#[test]
fn missing_agents_fail_their_service_clearly() {
    let s = Services::get();
    let (t, _) = Tree::workspace(&[
        ("noenv", &[]),
        ("nofile", &[]),
        ("notgiven", &[]),
        ("fine", &[]),
    ]);
    let step = |id: &str| {
        format!(
            "FROM {}\nRUN --mount=type=ssh,id={id},required true\n",
            s.base_image
        )
    };
    let t = t
        .file("noenv/Dockerfile", step("default"))
        .file("nofile/Dockerfile", step("deploy"))
        .file("notgiven/Dockerfile", step("other"))
        .file(
            "fine/Dockerfile",
            format!("FROM {}\nRUN true\n", s.base_image),
        );
    t.replace(
        "buildopt.toml",
        "[services.noenv]\n",
        "[services.noenv]\nssh = [\"default\"]\n",
    );
    t.replace(
        "buildopt.toml",
        "[services.nofile]\n",
        "[services.nofile]\nssh = [\"deploy=keys/missing\"]\n",
    );
    let (code, _, err) = run(
        &t,
        &[],
        &["SSH_AUTH_SOCK"],
        &[
            "--progress",
            "plain",
            "build",
            "--no-cache",
            "--cache-to",
            "none",
        ],
    );
    assert_eq!(code, 1, "{err}");
    let line = |svc: &str| failure(&err, svc);
    assert!(
        line("noenv").ends_with("SSH `default`: SSH_AUTH_SOCK is not set, so there is no agent to forward; start one (`eval \"$(ssh-agent)\"` and `ssh-add KEYFILE`) or give a socket or key file: `--ssh default=PATH`"),
        "{err}"
    );
    assert!(
        line("nofile").ends_with(&format!(
            "SSH `deploy`: {} (an agent socket or a private key file) does not exist",
            t.join("keys/missing").display()
        )),
        "{err}"
    );
    let notgiven = line("notgiven");
    assert!(notgiven.contains("notgiven/Dockerfile:2"), "{notgiven}");
    assert!(
        notgiven.contains("no SSH agent `other` was given to buildopt: pass `--ssh other` (the agent at $SSH_AUTH_SOCK) or `--ssh other=SOCKET|KEYFILE`, or add it to the service's `ssh` list"),
        "{notgiven}"
    );
    assert!(
        summary(&err).contains(&("built".into(), "fine".into())),
        "{err}"
    );
}

/// A malformed `--secret` or `--ssh` is a usage error (exit 2) naming the flag, before anything is built.
#[test]
fn malformed_flags_are_usage_errors() {
    let t = Tree::new().app();
    for (args, expected) in [
        (
            ["--secret", "src=token.txt"],
            "error: --secret `src=token.txt`: secret `src=token.txt` has no id; expected `id=ID[,src=PATH]` or `id=ID,env=VAR` (buildx's --secret syntax)",
        ),
        (
            ["--secret", "id=a,src=x,env=Y"],
            "error: --secret `id=a,src=x,env=Y`: secret `id=a,src=x,env=Y`: give either src= (a file) or env= (a variable), not both",
        ),
        (
            ["--ssh", "=agent.sock"],
            "error: --ssh `=agent.sock`: ssh `=agent.sock`: no id; expected `default`, `ID` (the agent at $SSH_AUTH_SOCK) or `ID=SOCKET|KEYFILE[,KEYFILE]`",
        ),
    ] {
        let (code, _, err) = t.run(&[&["build"], &args[..]].concat());
        assert_eq!(code, 2, "{err}");
        assert_eq!(err.trim(), expected);
    }
}
