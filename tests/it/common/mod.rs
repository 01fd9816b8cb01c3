//! Temporary workspaces built file by file, and a handle on the `buildopt` binary.

#![allow(dead_code)]

pub mod proxy;
pub mod tls;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// A temporary directory holding a workspace.
pub struct Tree {
    dir: tempfile::TempDir,
}

/// A finished process as (exit code, stdout, stderr): -1 when a signal ended it, the output as lossy UTF-8.
pub fn outcome(out: std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Tree {
    pub fn new() -> Tree {
        Tree {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file, creating parent directories.
    pub fn file(self, rel: impl AsRef<Path>, content: impl AsRef<[u8]>) -> Tree {
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        self
    }

    /// Creates a directory (and parents).
    pub fn dir(self, rel: impl AsRef<Path>) -> Tree {
        std::fs::create_dir_all(self.join(rel)).unwrap();
        self
    }

    /// Creates a symlink `rel` -> `target` (not resolved).
    pub fn symlink(self, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> Tree {
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
        self
    }

    /// Sets permission bits.
    pub fn mode(self, rel: impl AsRef<Path>, mode: u32) -> Tree {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// Creates a named pipe.
    pub fn fifo(self, rel: impl AsRef<Path>) -> Tree {
        let status = std::process::Command::new("mkfifo")
            .arg(self.join(rel))
            .status()
            .unwrap();
        assert!(status.success());
        self
    }

    /// A one-service workspace: `buildopt.toml` with service `app` on context `app/`, and its Dockerfile.
    pub fn app(self) -> Tree {
        self.file(
            "buildopt.toml",
            "[registry]\nurl = \"127.0.0.1:5000\"\ninsecure = true\n\n[services.app]\ncontext = \"app\"\nimage = \"test/app\"\n",
        )
        .file("app/Dockerfile", "FROM scratch\nCOPY . /\n")
    }

    /// `buildopt` run in this workspace.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::cargo_bin("buildopt").unwrap();
        cmd.current_dir(self.path())
            .env_remove("BUILDOPT_CONFIG")
            .env_remove("BUILDOPT_COMPOSE_FILE")
            .env_remove("BUILDOPT_LOG");
        cmd
    }

    /// Runs buildopt here with `args`; returns (exit code, stdout, stderr), as [`outcome`] does.
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd().args(args).output().unwrap();
        outcome(out)
    }

    /// Runs buildopt here with `args`, which must succeed; returns stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "buildopt {args:?} failed: {err}");
        out
    }

    /// `buildopt hash --list SERVICE --context`: the whole context after `.dockerignore`, one entry per line (lossy
    /// UTF-8).
    pub fn list(&self, service: &str) -> String {
        self.run_ok(&["hash", "--list", service, "--context"])
    }

    /// `buildopt hash --list SERVICE`: the entries the input digest covers (what the Dockerfile reads).
    pub fn list_read(&self, service: &str) -> String {
        self.run_ok(&["hash", "--list", service])
    }

    /// The digest `buildopt hash SERVICE` prints.
    pub fn digest(&self, service: &str) -> String {
        let text = self.run_ok(&["hash", service]);
        let (name, digest) = text.trim().split_once(' ').unwrap();
        assert_eq!(name, service);
        assert_eq!(digest.len(), 64);
        digest.to_owned()
    }
}

/// Copies a tree, keeping symlinks as symlinks and permission bits.
pub fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let ft = entry.file_type().unwrap();
        let dest = to.join(entry.file_name());
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &dest).unwrap();
        } else if ft.is_dir() {
            copy_tree(&entry.path(), &dest);
        } else if ft.is_file() {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
        if !ft.is_symlink() {
            let mode = entry.metadata().unwrap().permissions().mode();
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

/// Raw bytes of a path, for non-UTF-8 names.
pub fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// The real services `hack/services start` runs, from the environment or its env file.
pub struct Services {
    pub buildkit_addr: String,
    /// The second, modern daemon (dockerd 28's BuildKit). It refuses the `network.host` entitlement: builds on it use
    /// `network = "none"` (RUN steps get a loopback-only network namespace).
    pub buildkit_addr2: String,
    pub registry: String,
    pub base_image: String,
    pub docker_sock: String,
}

impl Services {
    /// Reads the service addresses; fails (never skips) when they are not set up.
    pub fn get() -> Services {
        Services {
            buildkit_addr: env_or_file("BUILDOPT_TEST_BUILDKIT_ADDR"),
            buildkit_addr2: env_or_file("BUILDOPT_TEST_BUILDKIT_ADDR2"),
            registry: env_or_file("BUILDOPT_TEST_REGISTRY"),
            base_image: env_or_file("BUILDOPT_TEST_BASE_IMAGE"),
            docker_sock: env_or_file("BUILDOPT_TEST_DOCKER_SOCK"),
        }
    }

    /// GET on the registry API (`/v2/...`); returns (HTTP status, headers, body).
    pub fn registry_get(&self, path: &str, accept: &str) -> (u16, String, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let headers = dir.path().join("headers");
        let body = dir.path().join("body");
        let out = std::process::Command::new("curl")
            .args(["-sS", "-L", "-o"])
            .arg(&body)
            .arg("-D")
            .arg(&headers)
            .args(["-w", "%{http_code}", "-H"])
            .arg(format!("Accept: {accept}"))
            .arg(format!("http://{}{path}", self.registry))
            .output()
            .expect("curl runs");
        let code = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        (
            code,
            std::fs::read_to_string(&headers).unwrap_or_default(),
            std::fs::read(&body).unwrap_or_default(),
        )
    }

    /// DELETE `path` (`/v2/...`) on the registry; returns the HTTP status (0 when curl got none).
    pub fn registry_delete(&self, path: &str) -> u16 {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "DELETE",
            ])
            .arg(format!("http://{}{path}", self.registry))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// The manifest of `repo:reference` as JSON, or None on 404.
    pub fn manifest(&self, repo: &str, reference: &str) -> Option<serde_json::Value> {
        let accept = "application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.list.v2+json";
        let (code, _, body) =
            self.registry_get(&format!("/v2/{repo}/manifests/{reference}"), accept);
        match code {
            200 => Some(serde_json::from_slice(&body).unwrap()),
            404 => None,
            other => panic!("registry answered {other} for {repo}:{reference}"),
        }
    }

    /// The image manifest of `repo:tag`: the manifest itself, or of an index (attestations) the child with a real
    /// platform.
    pub fn image_manifest(&self, repo: &str, tag: &str) -> serde_json::Value {
        let m = self
            .manifest(repo, tag)
            .unwrap_or_else(|| panic!("no manifest {repo}:{tag}"));
        let Some(children) = m["manifests"].as_array() else {
            return m;
        };
        let child = children
            .iter()
            .find(|d| d["platform"]["os"] != "unknown")
            .expect("an image manifest")["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        self.manifest(repo, &child).unwrap()
    }

    /// `tar -tv` of a gzip layer blob: one line per entry, `mode path[ -> target]`, sorted by path.
    pub fn layer_listing(&self, repo: &str, digest: &str) -> Vec<String> {
        let (code, _, body) = self.registry_get(&format!("/v2/{repo}/blobs/{digest}"), "*/*");
        assert_eq!(code, 200, "blob {digest}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("layer.tgz");
        std::fs::write(&file, body).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvzf")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                // perms owner size date time path...
                let cols: Vec<&str> = l.split_whitespace().collect();
                format!("{} {}", cols[0], cols[5..].join(" "))
            })
            .collect();
        lines.sort_by(|a, b| {
            a.split_once(' ')
                .unwrap()
                .1
                .cmp(b.split_once(' ').unwrap().1)
        });
        lines
    }
}

/// A repository name no other test uses.
pub fn unique_repo(test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "it/{test}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
    .replace('_', "-")
}

/// Serialises tests that change the daemon's cache (prune) against the builds of other tests.
pub fn daemon_lock() -> &'static std::sync::RwLock<()> {
    static LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());
    &LOCK
}

impl Tree {
    /// A workspace of services (name, dependencies), each with context `<name>/` and a fresh repository, building
    /// with the real BuildKit and registry. Returns the tree and the repositories, in order. Dockerfiles are the
    /// caller's.
    pub fn workspace(services: &[(&str, &[&str])]) -> (Tree, Vec<String>) {
        let s = Services::get();
        Tree::workspace_at(&s.registry, &s.buildkit_addr, "host", services)
    }

    /// [`Tree::workspace`] with another registry (e.g. a fault-injecting proxy), daemon and RUN network.
    pub fn workspace_at(
        registry: &str,
        addr: &str,
        network: &str,
        services: &[(&str, &[&str])],
    ) -> (Tree, Vec<String>) {
        let mut toml = format!(
            "[registry]\nurl = \"{registry}\"\ninsecure = true\n\n[buildkit]\naddr = \"{addr}\"\nnetwork = \"{network}\"\n"
        );
        let mut repos = Vec::new();
        for (name, deps) in services {
            let repo = unique_repo(name);
            let deps: Vec<String> = deps.iter().map(|d| format!("\"{d}\"")).collect();
            toml.push_str(&format!(
                "\n[services.{name}]\ncontext = \"{name}\"\nimage = \"{repo}\"\ndepends_on = [{}]\n",
                deps.join(", ")
            ));
            repos.push(repo);
        }
        (Tree::new().file("buildopt.toml", toml), repos)
    }

    /// Services `a`, `b` and `c` (depends on `a`), each `COPY f /` of its own one-byte `f` onto scratch, pushed to
    /// `registry`, built on `addr` with the default network.
    pub fn three_scratch_services(registry: &str, addr: &str) -> (Tree, Vec<String>) {
        let (t, repos) = Tree::workspace_at(
            registry,
            addr,
            "none",
            &[("a", &[]), ("b", &[]), ("c", &["a"])],
        );
        let t = ["a", "b", "c"].iter().fold(t, |t, name| {
            t.file(format!("{name}/Dockerfile"), "FROM scratch\nCOPY f /\n")
                .file(format!("{name}/f"), name)
        });
        (t, repos)
    }

    /// Writes an executable (or any `mode`) file, creating parent directories.
    pub fn file_mode(&self, rel: impl AsRef<Path>, content: impl AsRef<[u8]>, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Appends `text` to the file `rel` (e.g. a key to the last service of `buildopt.toml`).
    pub fn append(&self, rel: impl AsRef<Path>, text: &str) {
        let p = self.join(rel);
        let old = std::fs::read_to_string(&p).unwrap_or_default();
        std::fs::write(&p, old + text).unwrap();
    }

    /// Replaces `from` with `to` in the file `rel`.
    pub fn replace(&self, rel: impl AsRef<Path>, from: &str, to: &str) {
        let p = self.join(rel);
        let old = std::fs::read_to_string(&p).unwrap();
        assert!(old.contains(from), "{from:?} not in {}", p.display());
        std::fs::write(&p, old.replace(from, to)).unwrap();
    }

    /// A workspace whose one service `app` builds `dockerfile` from context `app/` into a fresh repository.
    pub fn buildable(repo: &str, dockerfile: &str) -> Tree {
        Tree::buildable_on(&Services::get().buildkit_addr, "host", repo, dockerfile)
    }

    /// [`Tree::buildable`] on the BuildKit at `addr`, with `[buildkit] network = "<network>"`.
    pub fn buildable_on(addr: &str, network: &str, repo: &str, dockerfile: &str) -> Tree {
        let s = Services::get();
        Tree::new()
            .file(
                "buildopt.toml",
                format!(
                    "[registry]\nurl = \"{}\"\ninsecure = true\n\n[buildkit]\naddr = \"{addr}\"\nnetwork = \"{network}\"\n\n[services.app]\ncontext = \"app\"\nimage = \"{repo}\"\nbuild_args = {{ BASE_IMAGE = \"{}\" }}\n",
                    s.registry, s.base_image
                ),
            )
            .file("app/Dockerfile", dockerfile)
    }

    /// `buildopt -vv build` with plain progress, with credentials only from `env`: HOME is `<tree>/home`, and
    /// neither a docker config nor an AWS profile of this machine is seen. Returns (exit code, stderr).
    pub fn build_isolated(&self, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
        let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(self.join("home")).unwrap();
        let mut cmd = self.cmd();
        cmd.env("HOME", self.join("home"))
            .env_remove("DOCKER_CONFIG")
            .env_remove("AWS_PROFILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd
            .args(["--progress", "plain", "-vv", "build"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `buildopt build` with plain progress; returns (exit code, stdout, stderr).
    pub fn build(&self, args: &[&str]) -> (i32, String, String) {
        let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
        self.run(&[&["--progress", "plain", "build"], args].concat())
    }
}

impl Services {
    /// The second registry, with Basic auth (user `AWS`, the password moto's ECR token carries).
    pub fn auth_registry(&self) -> String {
        env_or_file("BUILDOPT_TEST_AUTH_REGISTRY")
    }
    /// The base image in the auth registry.
    pub fn auth_base_image(&self) -> String {
        env_or_file("BUILDOPT_TEST_AUTH_BASE_IMAGE")
    }
    /// moto's endpoint (ECR API).
    pub fn moto(&self) -> String {
        env_or_file("BUILDOPT_TEST_MOTO_ENDPOINT")
    }

    /// ECR repository names moto knows.
    pub fn moto_repositories(&self) -> Vec<String> {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-X", "POST", "-H", "X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.DescribeRepositories"])
            .args(["-H", "Content-Type: application/x-amz-json-1.1"])
            .args(["-H", "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-west-2/ecr/aws4_request, SignedHeaders=host, Signature=0"])
            .args(["-d", "{}"])
            .arg(format!("{}/", self.moto()))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("moto answers JSON");
        v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["repositoryName"].as_str().unwrap().to_owned())
            .collect()
    }
}

pub fn env_or_file(k: &str) -> String {
    std::env::var(k).ok().unwrap_or_else(|| {
        std::fs::read_to_string("/run/buildopt-test/env")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_owned))
            .unwrap_or_else(|| {
                panic!("{k} is not set: run `hack/services start` (hack/test does) to start the real BuildKit and registry")
            })
    })
}

impl Services {
    /// The digest the registry reports for `repo:tag`.
    pub fn manifest_digest(&self, repo: &str, tag: &str) -> String {
        let accept = "application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.index.v1+json";
        let (code, headers, _) = self.registry_get(&format!("/v2/{repo}/manifests/{tag}"), accept);
        assert_eq!(code, 200);
        headers
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("docker-content-digest:")
                    .then(|| l.split_once(':').unwrap().1.trim().to_owned())
            })
            .expect("digest header")
    }
}

/// (verb, service) of each summary line.
pub fn summary(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter(|l| {
            ["built ", "skipped ", "promoted ", "failed ", "stopped "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().to_owned(), w.next().unwrap().to_owned())
        })
        .collect()
}

pub fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// A buildopt run in the background whose stderr is watched line by line.
pub struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Tree {
    /// Starts `buildopt --progress plain ARGS` here (holding no daemon lock: the caller does when it must).
    pub fn spawn(&self, args: &[&str]) -> Running {
        use std::io::BufRead;
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("buildopt"))
            .current_dir(self.path())
            .env_remove("BUILDOPT_CONFIG")
            .env_remove("BUILDOPT_COMPOSE_FILE")
            .env_remove("BUILDOPT_LOG")
            .args(["--progress", "plain"])
            .args(args)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            reader: Some(reader),
        }
    }
}

impl Running {
    /// Waits until a stderr line contains `text`; panics with what was seen after `secs` seconds.
    pub fn wait_line(&mut self, text: &str, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(text);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no line with {text:?} within {secs}s:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends `signal` (`INT`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the end; returns (exit code, all of stderr).
    pub fn finish(mut self) -> (i32, String) {
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.seen.extend(self.lines.try_iter());
        (code, self.seen.join("\n") + "\n")
    }
}
