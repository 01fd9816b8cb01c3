//! The input digest: stable across copies and mtimes, sensitive to every input BuildKit sees.

use std::time::{Duration, SystemTime};

use crate::common::{Tree, copy_tree};

fn sample() -> Tree {
    Tree::new()
        .app()
        .file("app/src/main.rs", "fn main() {}\n")
        .file("app/src/lib.rs", "pub fn f() {}\n")
        .file("app/run.sh", "#!/bin/sh\n")
        .mode("app/run.sh", 0o755)
        .dir("app/empty")
        .symlink("app/current", "src")
}

#[test]
fn same_tree_elsewhere_gives_the_same_digest() {
    let a = sample();
    let b = Tree::new();
    copy_tree(a.path(), b.path());
    assert_eq!(a.digest("app"), b.digest("app"));
}

#[test]
fn mtimes_do_not_matter() {
    let t = sample();
    let before = t.digest("app");
    let old = SystemTime::now() - Duration::from_secs(3600 * 24 * 400);
    for f in ["app/src/main.rs", "app/run.sh", "app/Dockerfile"] {
        std::fs::File::options()
            .write(true)
            .open(t.join(f))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    assert_eq!(before, t.digest("app"));
}

#[test]
fn every_input_changes_the_digest() {
    let base = sample().digest("app");
    let changed = |f: &dyn Fn(&Tree)| {
        let t = sample();
        f(&t);
        t.digest("app")
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "one byte",
            changed(&|t| std::fs::write(t.join("app/src/lib.rs"), "pub fn g() {}\n").unwrap()),
        ),
        (
            "exec bit",
            changed(&|t| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    t.join("app/src/main.rs"),
                    std::fs::Permissions::from_mode(0o755),
                )
                .unwrap();
            }),
        ),
        (
            "rename",
            changed(&|t| {
                std::fs::rename(t.join("app/src/lib.rs"), t.join("app/src/lib2.rs")).unwrap()
            }),
        ),
        (
            "new empty dir",
            changed(&|t| std::fs::create_dir(t.join("app/empty2")).unwrap()),
        ),
        (
            "link target",
            changed(&|t| {
                std::fs::remove_file(t.join("app/current")).unwrap();
                std::os::unix::fs::symlink("src/main.rs", t.join("app/current")).unwrap();
            }),
        ),
        (
            "dockerfile",
            changed(&|t| {
                std::fs::write(t.join("app/Dockerfile"), "FROM scratch\nCOPY src /\n").unwrap()
            }),
        ),
        (
            "build arg",
            changed(&|t| append(t, "build_args = { MODE = \"release\" }\n")),
        ),
        ("target", changed(&|t| append(t, "target = \"runtime\"\n"))),
        (
            "platform",
            changed(&|t| append(t, "platforms = [\"linux/arm64\"]\n")),
        ),
        (
            "label",
            changed(&|t| append(t, "labels = { team = \"x\" }\n")),
        ),
    ];
    for (what, digest) in &cases {
        assert_ne!(&base, digest, "{what} did not change the digest");
    }
    // ...and no two different changes collide.
    for (i, (a, da)) in cases.iter().enumerate() {
        for (b, db) in &cases[i + 1..] {
            assert_ne!(da, db, "{a} and {b} gave the same digest");
        }
    }
}

#[test]
fn ignored_files_do_not_matter() {
    let t = sample().file("app/.dockerignore", "target\n");
    let before = t.digest("app");
    let t = t.file("app/target/debug/big", "whatever");
    assert_eq!(before, t.digest("app"));
}

#[test]
fn dependency_digest_feeds_dependents() {
    let t = Tree::new()
        .file(
            "buildopt.toml",
            "[services.base]\ncontext = \"base\"\n\n[services.app]\ncontext = \"app\"\ndepends_on = [\"base\"]\n\n[services.other]\ncontext = \"other\"\n",
        )
        .file("base/Dockerfile", "FROM scratch\nCOPY . /\n")
        .file("app/Dockerfile", "FROM scratch\n")
        .file("other/Dockerfile", "FROM scratch\n");
    let (app, other) = (t.digest("app"), t.digest("other"));
    std::fs::write(t.join("base/new"), "x").unwrap();
    assert_ne!(app, t.digest("app"));
    assert_eq!(other, t.digest("other"));
}

#[test]
fn index_makes_no_difference_even_when_corrupt_or_stale() {
    let t = sample();
    let cold = t.digest("app");
    // Files were just written, so they are too recent to be recorded yet; once they are a second old they are.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(cold, t.digest("app"));
    let index = index_file(&t);
    let len = std::fs::metadata(&index).unwrap().len();
    assert!(len > 200, "index should hold records, has {len} bytes");
    assert_eq!(cold, t.digest("app"), "warm run");

    // Same size, same mtime, different content: the index must not hide it (ctime/inode change with a rewrite).
    let content = std::fs::read(t.join("app/src/lib.rs")).unwrap();
    let mut changed = content.clone();
    changed[0] = b'q';
    let mtime = std::fs::metadata(t.join("app/src/lib.rs"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::write(t.join("app/src/lib.rs"), &changed).unwrap();
    std::fs::File::options()
        .write(true)
        .open(t.join("app/src/lib.rs"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_ne!(
        cold,
        t.digest("app"),
        "a rewrite under the same size and mtime went unnoticed"
    );
    std::fs::write(t.join("app/src/lib.rs"), &content).unwrap();
    assert_eq!(cold, t.digest("app"));

    let mut bytes = std::fs::read(&index).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&index, &bytes).unwrap();
    let out = t.cmd().args(["-v", "hash", "app"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&cold));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rebuilding the local hash index"));
    std::fs::write(&index, b"garbage").unwrap();
    assert_eq!(cold, t.digest("app"));
}

/// The index file of the one context hashed in `t` (the index keeps a file per context).
pub(crate) fn index_file(t: &Tree) -> std::path::PathBuf {
    let files: Vec<_> = std::fs::read_dir(t.join(".build-cache/index-v2"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

fn append(t: &Tree, line: &str) {
    let path = t.join("buildopt.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(line);
    std::fs::write(path, text).unwrap();
}

/// `.build-cache/` keeps itself out of git: whatever writes it first also writes its `.gitignore` of `*`, and an
/// edited one stays as it is.
#[test]
fn build_cache_keeps_itself_out_of_git() {
    let t = sample();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(t.path())
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    git(&["init", "-q"]);
    t.digest("app");
    assert!(index_file(&t).is_file(), "the index was written");
    let ignore = std::fs::read_to_string(t.join(".build-cache/.gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "*"), "{ignore}");
    let status = git(&["status", "--porcelain", "--untracked-files=all"]);
    assert!(status.contains("app/Dockerfile"), "{status}");
    assert!(!status.contains(".build-cache"), "{status}");

    std::fs::write(t.join(".build-cache/.gitignore"), "index-v1\n").unwrap();
    t.digest("app");
    assert_eq!(
        std::fs::read_to_string(t.join(".build-cache/.gitignore")).unwrap(),
        "index-v1\n"
    );
}
