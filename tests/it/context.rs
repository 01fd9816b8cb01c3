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
    let out = t
        .cmd()
        .args(["hash", "--list", "app", "--context"])
        .output()
        .unwrap();
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
    // The whole context after `.dockerignore`, and the part of it the Dockerfile reads (the input digest's).
    for (flags, golden) in [
        (&["--context"][..], "expected-context"),
        (&[][..], "expected-read"),
    ] {
        for service in ["backend", "frontend"] {
            let out = assert_cmd::Command::cargo_bin("buildopt")
                .unwrap()
                .arg("--config")
                .arg(root.join("buildopt.toml"))
                .args(["hash", "--list", service])
                .args(flags)
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
                std::fs::read_to_string(root.join(format!("{golden}/{service}.txt"))).unwrap();
            assert_eq!(
                files,
                expected.lines().collect::<Vec<_>>(),
                "{golden} {service}"
            );
        }
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

/// Both must agree on `t` (a `Tree::app()` workspace): the same list, or both refusing.
fn assert_agrees_with_buildkit(t: &Tree) {
    let oracle = crate::differential::oracle();
    if let Err(report) =
        crate::differential::compare(&oracle, t, std::path::Path::new("app/Dockerfile"))
    {
        panic!("differs from BuildKit's Go code:\n{report}");
    }
}

/// `buildopt hash --list app`, checked against the Go oracle.
fn list_checked(t: &Tree) -> String {
    assert_agrees_with_buildkit(t);
    t.list("app")
}

/// `buildopt hash app`, which must be refused (exit 2) as the oracle refuses; returns stderr.
fn refused_checked(t: &Tree) -> String {
    assert_agrees_with_buildkit(t);
    let (code, _, stderr) = t.run(&["hash", "app"]);
    assert_eq!(code, 2, "{stderr}");
    stderr
}

#[test]
fn bar_and_braces_are_regexp_syntax_once_a_pattern_has_a_wildcard() {
    // patternmatcher only escapes `.+()$`: `a*|b` becomes the Go regexp `^a[^/]*|b$`, so it also matches any path
    // ending in `b` (`sub`); `?x{2}` needs `xx`. Without a wildcard the pattern is compared as plain bytes.
    let t = Tree::new()
        .app()
        .file("app/.dockerignore", "a*|b\n?x{2}\nplain|{1}\n")
        .file("app/sub/job", "")
        .file("app/zxx", "")
        .file("app/zx{2}", "")
        .file("app/plain|{1}", "")
        .file("app/keep", "");
    insta::assert_snapshot!(list_checked(&t), @r"
    .dockerignore
    Dockerfile
    keep
    zx{2}
    ");
}

#[test]
fn go_regexp_escapes_and_classes() {
    // `\d` is ASCII-only in Go, `\<` a literal `<`, `[[a-c]]` a class followed by a literal `]`, `[a-]` matches `-`
    // (filepath.Match would reject `[a-]`, but it stops checking at `x`, which cannot match ".").
    let t = Tree::new()
        .app()
        .file("app/.dockerignore", "?\\d\n*\\<\n?[[a-c]]\nx*[a-]\n")
        .file("app/x1", "")
        .file("app/x٣", "")
        .file("app/x<", "")
        .file("app/xb]", "")
        .file("app/xb", "")
        .file("app/x-", "");
    insta::assert_snapshot!(list_checked(&t), @r"
    .dockerignore
    Dockerfile
    xb
    x٣
    ");
}

#[test]
fn double_star_does_not_cross_a_newline() {
    // `**` in the middle becomes `(.*/)?` in Go, and Go's `.` does not match `\n`: only `a/x/c` goes.
    let t = Tree::new()
        .app()
        .file("app/.dockerignore", "a/**/c\n")
        .file("app/a/x/c", "")
        .file("app/a/x\ny/c", "");
    insta::assert_snapshot!(list_checked(&t), @r#"
    .dockerignore
    Dockerfile
    a/
    a/x/
    "a/x\ny/"
    "a/x\ny/c"
    "#);
}

#[test]
fn invalid_utf8_is_kept_and_matched_one_byte_per_rune() {
    // ignorefile.ReadAll keeps the bytes; Go's regexp sees each invalid byte of a name as one U+FFFD, so `?` matches
    // one of them, and a truncated sequence is two.
    use std::os::unix::ffi::OsStrExt;
    let t = Tree::new()
        .app()
        .file("app/.dockerignore", b"caf\xe9*\nx?y\n");
    for name in [
        &b"caf\xe9.txt"[..],
        b"x\xffy",
        b"x\xe2\x82y",
        b"caf\xc3\xa9",
    ] {
        std::fs::write(t.join("app").join(std::ffi::OsStr::from_bytes(name)), "").unwrap();
    }
    insta::assert_snapshot!(list_checked(&t), @r#"
    .dockerignore
    Dockerfile
    café
    "x\xe2\x82y"
    "#);
}

#[test]
fn an_invalid_regexp_fails_only_when_it_is_evaluated() {
    // filepath.Match(p, ".") stops at the first chunk that cannot match ".", so `x*[` passes patternmatcher.New;
    // its regexp is compiled at first use. As an exception after a pattern that never matches, it is never used.
    let t = Tree::new()
        .app()
        .file("app/.dockerignore", "nothing\n!x*[\n")
        .file("app/x", "");
    insta::assert_snapshot!(list_checked(&t), @r"
    .dockerignore
    Dockerfile
    x
    ");
    // As a normal pattern it is evaluated on the first entry: BuildKit's client fails the transfer.
    std::fs::write(t.join("app/.dockerignore"), "# c\nx*[\n").unwrap();
    let stderr = refused_checked(&t);
    assert!(
        stderr.contains("app/.dockerignore:2: invalid pattern `x*[`"),
        "{stderr}"
    );
}

#[test]
fn a_line_of_64_kib_is_refused() {
    // ignorefile.ReadAll uses a bufio.Scanner: a line of 64 KiB or more fails the frontend.
    let mut content = b"a\n".to_vec();
    content.extend(vec![b'x'; 64 * 1024]);
    let t = Tree::new().app().file("app/.dockerignore", &content);
    let stderr = refused_checked(&t);
    assert!(
        stderr.contains("app/.dockerignore:2: line is 64 KiB or longer"),
        "{stderr}"
    );
    // One byte shorter is fine.
    std::fs::write(t.join("app/.dockerignore"), &content[..content.len() - 1]).unwrap();
    list_checked(&t);
}

#[test]
fn control_characters_are_refused_unless_the_patterns_get_encoded() {
    // The daemon sends the patterns as gRPC metadata, raw when all are ASCII, and grpc-go refuses a control byte:
    // dockerd 26 fails with `header key "exclude-patterns" contains value with non-printable ASCII characters`.
    // With one non-ASCII pattern BuildKit percent-encodes them all, and the tab travels.
    let t = Tree::new()
        .app()
        .file("app/.dockerignore", "ok\nx\ty*\n")
        .file("app/x\tyz", "");
    let stderr = refused_checked(&t);
    assert!(
        stderr.contains("app/.dockerignore:2: pattern `x\\ty*` holds a control character"),
        "{stderr}"
    );
    std::fs::write(t.join("app/.dockerignore"), "é\nx\ty*\n").unwrap();
    insta::assert_snapshot!(list_checked(&t), @r"
    .dockerignore
    Dockerfile
    ");
}

#[test]
fn an_ignore_file_that_cannot_be_read_means_no_patterns() {
    // The frontend ignores every error reading `.dockerignore` from its copy: a directory, a symlink loop, or a
    // symlink whose target (taken relative to the context root) was not sent.
    for setup in ["dir", "loop", "outside"] {
        let t = Tree::new().app().file("app/a", "").file("outside", "a\n");
        match setup {
            "dir" => std::fs::create_dir(t.join("app/.dockerignore")).unwrap(),
            "loop" => {
                std::os::unix::fs::symlink(".dockerignore", t.join("app/.dockerignore")).unwrap()
            }
            _ => std::os::unix::fs::symlink("../outside", t.join("app/.dockerignore")).unwrap(),
        }
        let listed = list_checked(&t);
        assert!(listed.contains("\na\n"), "{setup}: {listed}");
    }
    // `../x` from the context root is `/x`, i.e. `x` in the context: that file is the ignore file.
    let t = Tree::new()
        .app()
        .file("app/x", "x\n")
        .symlink("app/.dockerignore", "../x");
    insta::assert_snapshot!(list_checked(&t), @r"
    .dockerignore
    Dockerfile
    ");
}

#[test]
fn an_empty_dockerfile_specific_ignore_file_still_wins() {
    // ReadFile of `<Dockerfile>.dockerignore` succeeds, so `.dockerignore` is never read.
    let t = Tree::new()
        .app()
        .file("app/Dockerfile.dockerignore", "")
        .file("app/.dockerignore", "a\n")
        .file("app/a", "");
    insta::assert_snapshot!(list_checked(&t), @r"
    .dockerignore
    Dockerfile
    Dockerfile.dockerignore
    a
    ");
}
