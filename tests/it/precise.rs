//! Precise inputs end to end: a service rebuilds only when a file its build can read changed, and when BuildKit
//! asks for more than the Dockerfile shows, the image is tagged for the whole context instead (a rebuild, never a
//! wrong skip).
//!
//! See: issue 13.

use crate::common::{Services, Tree, pairs, summary};

const NO_BUILDKIT: &str = "unix:///nonexistent/buildkitd.sock";

/// A service whose Dockerfile reads `src/` and `Cargo.toml`, and a context that holds more.
fn rust_like() -> (Tree, String) {
    let (t, repos) = Tree::workspace(&[("app", &[])]);
    let t = t
        .file(
            "app/Dockerfile",
            "FROM scratch AS build\nARG SRC=src\nCOPY Cargo.toml /app/\nCOPY ${SRC} /app/src\n\nFROM scratch\nCOPY --from=build /app /app\n",
        )
        .file("app/Cargo.toml", "[package]\nname = \"app\"\n")
        .file("app/src/main.rs", "fn main() {}\n")
        .file("app/README.md", "# app\n")
        .file("app/tests/fixture.json", "{}\n");
    (t, repos[0].clone())
}

#[test]
fn an_unread_file_skips_and_a_read_file_rebuilds() {
    let (t, _) = rust_like();
    insta::assert_snapshot!(t.list_read("app"), @r"
    Cargo.toml
    src/
    src/main.rs
    ");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");

    // Edits the build cannot read: skipped, with BuildKit unreachable (no solve at all).
    std::fs::write(t.join("app/README.md"), "# app, edited\n").unwrap();
    std::fs::write(t.join("app/tests/fixture.json"), "{\"edited\": true}\n").unwrap();
    let plan = t.run_ok(&["plan"]);
    assert!(
        plan.contains("skip: image for inputs")
            && plan.contains("README.md changed; the build does not read it")
            && plan.contains("tests/fixture.json changed; the build does not read it"),
        "{plan}"
    );
    let (code, _, err) = t.build(&["--addr", NO_BUILDKIT]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary(&err), pairs(&[("skipped", "app")]), "{err}");

    // An edit it reads: rebuilt, and the plan says which instruction reads it.
    std::fs::write(t.join("app/src/main.rs"), "fn main() { println!(); }\n").unwrap();
    let plan = t.run_ok(&["plan"]);
    assert!(
        plan.contains("src/main.rs changed; read by COPY ${SRC} /app/src in stage build (line 4)"),
        "{plan}"
    );
    let (code, _, err) = t.build(&["--addr", NO_BUILDKIT]);
    assert_eq!(code, 1, "a read file changed, so it must build: {err}");
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(summary(&err), pairs(&[("built", "app")]), "{err}");
}

/// `inputs = "context"` keeps the whole context as the input, as before.
#[test]
fn inputs_context_rebuilds_on_any_file() {
    let (t, _) = rust_like();
    t.append("buildopt.toml", "inputs = \"context\"\n");
    assert_eq!(t.list_read("app"), t.list("app"));
    assert_eq!(t.build(&[]).0, 0);
    std::fs::write(t.join("app/README.md"), "# edited\n").unwrap();
    let plan = t.run_ok(&["plan"]);
    assert!(plan.contains("build: no image for inputs"), "{plan}");
    assert!(plan.contains("README.md changed"), "{plan}");
}

/// A base image's ONBUILD trigger makes BuildKit read a file the dependent's Dockerfile does not name: the
/// prediction cannot see it. The build says so and tags the image for the whole context; the next run skips on
/// that tag, and an edit of the file the trigger reads rebuilds.
#[test]
fn a_misprediction_tags_for_the_whole_context() {
    let s = Services::get();
    let (t, repos) = Tree::workspace(&[("base", &[]), ("app", &["base"])]);
    let t = t
        .file(
            "base/Dockerfile",
            "FROM scratch\nCOPY base.txt /\nONBUILD COPY extra.txt /extra.txt\n",
        )
        .file("base/base.txt", "base\n")
        .file(
            "app/Dockerfile",
            format!("FROM {}/{}:latest\nCOPY app.txt /\n", s.registry, repos[0]),
        )
        .file("app/app.txt", "app\n")
        .file("app/extra.txt", "read by the trigger\n")
        .file("app/notes.txt", "read by nothing\n");
    insta::assert_snapshot!(t.list_read("app"), @"app.txt");
    let meta = t.join("meta.json");
    let (code, _, err) = t.build(&["--metadata-file", meta.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "warning: app: BuildKit asked for `extra.txt`, which the Dockerfile does not show"
        ),
        "{err}"
    );
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let tagged = m["app"]["buildopt.content-tag"]
        .as_str()
        .unwrap()
        .to_owned();
    let precise = m["app"]["buildopt.input-digest"].as_str().unwrap();
    assert!(
        !tagged.ends_with(precise),
        "tagged for the whole context: {tagged}"
    );

    // Nothing changed: skipped on the whole context's tag.
    let (code, _, err) = t.build(&["--addr", NO_BUILDKIT]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        summary(&err),
        pairs(&[("skipped", "base"), ("skipped", "app")]),
        "{err}"
    );
    // The file only the trigger reads changed: no skip (the precise digest alone would have skipped).
    std::fs::write(t.join("app/extra.txt"), "changed\n").unwrap();
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        summary(&err),
        pairs(&[("skipped", "base"), ("built", "app")]),
        "{err}"
    );
}
