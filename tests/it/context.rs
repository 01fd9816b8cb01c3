//! Golden entry lists: what `buildopt hash --list` selects must be what BuildKit's file sync would send.

use crate::common::Tree;

#[test]
fn docker_documented_examples() {
    let t = Tree::new()
        .app()
        .file(
            "app/.dockerignore",
            "# comment\n*/temp*\n*/*/temp*\ntemp?\n*.md\n!README*.md\nREADME-secret.md\n",
        )
        .file("app/somedir/temporary.txt", "")
        .file("app/somedir/temp", "")
        .file("app/somedir/sub/temp.txt", "")
        .file("app/somedir/sub/keep.txt", "")
        .file("app/temp1", "")
        .file("app/temp12", "")
        .file("app/README.md", "")
        .file("app/README-secret.md", "")
        .file("app/CHANGES.md", "")
        .file("app/docs/guide.md", "");
    insta::assert_snapshot!(t.list("app"), @r"
    .dockerignore
    Dockerfile
    README.md
    docs/
    docs/guide.md
    somedir/
    somedir/sub/
    somedir/sub/keep.txt
    temp12
    ");
}

#[test]
fn plain_name_is_anchored_but_double_star_is_not() {
    let tree = |ignore: &str| {
        Tree::new()
            .app()
            .file("app/.dockerignore", ignore)
            .file("app/foo/a", "")
            .file("app/x/foo/b", "")
            .file("app/x/foobar", "")
    };
    insta::assert_snapshot!(tree("foo\n").list("app"), @r"
    .dockerignore
    Dockerfile
    x/
    x/foo/
    x/foo/b
    x/foobar
    ");
    insta::assert_snapshot!(tree("**/foo\n").list("app"), @r"
    .dockerignore
    Dockerfile
    x/
    x/foobar
    ");
}

#[test]
fn exception_reincludes_inside_excluded_dir() {
    let t = Tree::new()
        .app()
        .file("app/.dockerignore", "node_modules\n!node_modules/keep/**\n")
        .file("app/node_modules/a.js", "")
        .file("app/node_modules/keep/k.js", "")
        .file("app/node_modules/keep/sub/s.js", "")
        .dir("app/node_modules/empty")
        .file("app/src/app.js", "");
    // The excluded directories are sent only as the parents of what is re-included.
    insta::assert_snapshot!(t.list("app"), @r"
    .dockerignore
    Dockerfile
    node_modules/
    node_modules/keep/
    node_modules/keep/k.js
    node_modules/keep/sub/
    node_modules/keep/sub/s.js
    src/
    src/app.js
    ");
}

#[test]
fn wildcard_exception_walks_excluded_dirs() {
    let t = Tree::new()
        .app()
        .file("app/.dockerignore", "*\n!**/*.keep\n")
        .file("app/a/b/c.keep", "")
        .file("app/a/b/c.drop", "")
        .file("app/top.keep", "");
    insta::assert_snapshot!(t.list("app"), @r"
    a/
    a/b/
    a/b/c.keep
    top.keep
    ");
}

#[test]
fn last_match_wins() {
    let t = Tree::new()
        .app()
        .file(
            "app/.dockerignore",
            "*.log\n!important.log\nimportant.log\n!debug.log\n",
        )
        .file("app/important.log", "")
        .file("app/debug.log", "")
        .file("app/other.log", "");
    insta::assert_snapshot!(t.list("app"), @r"
    .dockerignore
    Dockerfile
    debug.log
    ");
}

#[test]
fn leading_slash_and_dot_slash_are_the_root() {
    let t = Tree::new()
        .app()
        .file("app/.dockerignore", "/build\n./dist/\n")
        .file("app/build/out", "")
        .file("app/dist/out", "")
        .file("app/sub/build/out", "")
        .file("app/sub/dist/out", "");
    insta::assert_snapshot!(t.list("app"), @r"
    .dockerignore
    Dockerfile
    sub/
    sub/build/
    sub/build/out
    sub/dist/
    sub/dist/out
    ");
}

#[test]
fn dockerfile_specific_ignore_file_wins() {
    let t = Tree::new()
        .file(
            "buildopt.toml",
            "[services.app]\ncontext = \"app\"\ndockerfile = \"docker/app.Dockerfile\"\n",
        )
        .file("docker/app.Dockerfile", "FROM scratch\n")
        .file("docker/app.Dockerfile.dockerignore", "b\n")
        .file("app/.dockerignore", "a\n")
        .file("app/a", "")
        .file("app/b", "");
    insta::assert_snapshot!(t.list("app"), @r"
    .dockerignore
    a
    ");
}

#[test]
fn symlinks_are_sent_as_links_never_followed() {
    let t = Tree::new()
        .app()
        .file("app/real/inner.txt", "x")
        .symlink("app/link-file", "real/inner.txt")
        .symlink("app/link-dir", "real")
        .symlink("app/link-outside", "/etc")
        .symlink("app/dangling", "nowhere");
    insta::assert_snapshot!(t.list("app"), @r"
    Dockerfile
    dangling
    link-dir
    link-file
    link-outside
    real/
    real/inner.txt
    ");
    // The hash covers link targets, so retargeting a link changes it; nothing outside the context is read.
    let before = t.digest("app");
    std::fs::remove_file(t.join("app/link-outside")).unwrap();
    std::os::unix::fs::symlink("/usr", t.join("app/link-outside")).unwrap();
    assert_ne!(before, t.digest("app"));
}

#[test]
fn empty_dirs_are_kept_unless_excluded() {
    let t = Tree::new()
        .app()
        .file("app/.dockerignore", "gone\n")
        .dir("app/empty")
        .dir("app/gone");
    insta::assert_snapshot!(t.list("app"), @r"
    .dockerignore
    Dockerfile
    empty/
    ");
}

#[test]
fn special_files_are_part_of_the_context() {
    // fsutil sends a fifo (ModeNamedPipe, no content) and a socket (socket bit cleared: an empty regular file on
    // the daemon's side), so they are listed and hashed like any entry.
    let t = Tree::new().app().file("app/a", "").fifo("app/pipe");
    let _listener = std::os::unix::net::UnixListener::bind(t.join("app/sock")).unwrap();
    insta::assert_snapshot!(t.list("app"), @r"
    Dockerfile
    a
    pipe
    sock
    ");
    let out = t.cmd().args(["hash", "app"]).output().unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The fifo is hashed: removing it changes the digest.
    let before = t.digest("app");
    std::fs::remove_file(t.join("app/pipe")).unwrap();
    assert_ne!(before, t.digest("app"));
}

#[test]
fn names_that_need_it_are_listed_quoted() {
    use std::os::unix::ffi::OsStrExt;
    let t = Tree::new().app().file("app/café \\\"q\".txt", "");
    for name in [&b"caf\xe9.txt"[..], b"new\nline", b"tab\there"] {
        std::fs::write(t.join("app").join(std::ffi::OsStr::from_bytes(name)), "x").unwrap();
    }
    let out = t.cmd().args(["hash", "--list", "app"]).output().unwrap();
    assert!(out.status.success());
    // Valid UTF-8 stays raw; a control byte, `"`, `\` or invalid UTF-8 makes the line a quoted string.
    insta::assert_snapshot!(String::from_utf8(out.stdout).unwrap(), @r#"
    Dockerfile
    "café \\\"q\".txt"
    "caf\xe9.txt"
    "new\nline"
    "tab\there"
    "#);
}

#[test]
fn byte_order_puts_dir_children_before_later_siblings() {
    // fsutil's order: a directory's subtree comes before its next sibling, even when that sibling sorts between
    // `a` and `a/...` as a full string (`a-b`, `a.txt`).
    let t = Tree::new()
        .app()
        .file("app/a/z", "")
        .file("app/a-b", "")
        .file("app/a.txt", "")
        .file("app/B", "");
    insta::assert_snapshot!(t.list("app"), @r"
    B
    Dockerfile
    a/
    a/z
    a-b
    a.txt
    ");
}

#[test]
fn unreadable_file_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let t = Tree::new()
        .app()
        .file("app/secret.txt", "x")
        .mode("app/secret.txt", 0o000);
    // Root reads anything, so drop to `nobody` for this run when we are root.
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let out = if is_root {
        for dir in [t.path().to_owned(), t.join("app")] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(assert_cmd::cargo::cargo_bin("buildopt"))
            .args(["hash", "app"])
            .current_dir(t.path())
            .output()
            .expect("setpriv (util-linux) runs")
    } else {
        t.cmd().args(["hash", "app"]).output().unwrap()
    };
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: hashing service `app`"), "{stderr}");
    assert!(
        stderr.contains("secret.txt; fix its permissions or add it to .dockerignore"),
        "{stderr}"
    );
}

#[test]
fn own_cache_dir_is_never_part_of_the_context() {
    // A service whose context is the workspace root: its .build-cache must not feed its own digest.
    let t = Tree::new()
        .file("buildopt.toml", "[services.root]\ncontext = \".\"\n")
        .file("Dockerfile", "FROM scratch\n")
        .file("src/a", "");
    let first = t.digest("root");
    assert!(t.join(".build-cache").is_dir());
    assert_eq!(first, t.digest("root"));
    insta::assert_snapshot!(t.list("root"), @r"
    Dockerfile
    buildopt.toml
    src/
    src/a
    ");
}

#[test]
fn example_repository_contexts_match_their_golden_lists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shop");
    for service in ["backend", "frontend"] {
        let out = assert_cmd::Command::cargo_bin("buildopt")
            .unwrap()
            .arg("--config")
            .arg(root.join("buildopt.toml"))
            .args(["hash", "--list", service])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut files: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.ends_with('/'))
            .map(str::to_owned)
            .collect();
        files.sort();
        let expected =
            std::fs::read_to_string(root.join(format!("expected-context/{service}.txt"))).unwrap();
        assert_eq!(files, expected.lines().collect::<Vec<_>>(), "{service}");
    }
}

#[test]
fn gitignore_is_not_applied_and_hidden_files_are_included() {
    let t = Tree::new()
        .app()
        .file("app/.gitignore", "secret.env\nbuild/\n")
        .file("app/secret.env", "")
        .file("app/build/out", "")
        .file("app/.hidden/x", "");
    insta::assert_snapshot!(t.list("app"), @r"
    .gitignore
    .hidden/
    .hidden/x
    Dockerfile
    build/
    build/out
    secret.env
    ");
}
