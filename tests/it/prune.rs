//! `prune` and `du` against the real BuildKit (dockerd's): what the defaults keep, `--all`'s confirmation, the dry
//! run against the real prune, and filters. Tests that prune hold the daemon lock for writing, and prune only their
//! own records (by `--filter`): the daemon is shared.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use crate::common::{Tree, daemon_lock, unique_repo};

/// A built workspace whose build left two RUN records that only this test has.
struct Marked {
    t: Tree,
    /// In the descriptions of those records (and of no other).
    marker: String,
    /// `description~=<marker>`.
    filter: String,
    /// Their IDs.
    ours: BTreeSet<String>,
}

/// Builds a [`Marked`] workspace (the caller holds the daemon lock). The RUN steps are in a stage the image only
/// copies from, so their records are in no image: records of the image's own layers are shared with dockerd's image
/// store, which a default prune keeps anyway.
fn marked(test: &str) -> Marked {
    let repo = unique_repo(test);
    let marker = repo.replace('/', "-");
    let t = Tree::buildable(
        &repo,
        &format!(
            "ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}} AS scratchpad\nRUN echo {marker} > /a\nRUN echo {marker}-2 >> /a\n\
             FROM ${{BASE_IMAGE}}\nCOPY --from=scratchpad /a /\n"
        ),
    );
    build(&t, &[]);
    let filter = format!("description~={marker}");
    let ours = du(&t, &[&filter]);
    assert_eq!(ours.len(), 2, "{ours:?}");
    Marked {
        t,
        marker,
        filter,
        ours,
    }
}

/// Builds `t` with plain progress (the caller holds the daemon lock); returns stderr.
fn build(t: &Tree, args: &[&str]) -> String {
    let (code, _, err) = t.run(&[&["--progress", "plain", "build"], args].concat());
    assert_eq!(code, 0, "{err}");
    err
}

/// The record IDs of a `du` or `prune` listing, in its order.
fn listed(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("ID "))
        .skip(1)
        .take_while(|l| {
            !l.starts_with("total:")
                && !l.starts_with("removed ")
                && !l.starts_with("would remove ")
        })
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

/// The IDs of the records `du --filter FILTER...` lists.
fn du(t: &Tree, filters: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["du"];
    for f in filters {
        args.extend(["--filter", f]);
    }
    listed(&t.run_ok(&args)).into_iter().collect()
}

fn set(ids: Vec<String>) -> BTreeSet<String> {
    ids.into_iter().collect()
}

/// Runs `shell` (which names buildopt as `$BUILDOPT`) in `t` under `script`, on a pseudo-terminal of 24 rows and
/// `cols` columns, with `input` typed on it; returns (exit code, everything the terminal showed).
fn on_terminal(t: &Tree, cols: u16, shell: &str, input: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new("script")
        .args([
            "-qec",
            &format!("stty rows 24 cols {cols}; {shell}"),
            "/dev/null",
        ])
        .current_dir(t.path())
        .env("BUILDOPT", assert_cmd::cargo::cargo_bin("buildopt"))
        .env_remove("BUILDOPT_CONFIG")
        .env_remove("BUILDOPT_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    (out.status.code().unwrap_or(-1), text)
}

// See: issue "`buildopt prune` with no flags removed every cache record (89 records, 5.27 MB) with no prompt".
#[test]
fn prune_without_flags_keeps_fresh_cache_and_a_rebuild_is_cached() {
    let _exclusive = daemon_lock().write().unwrap_or_else(|p| p.into_inner());
    let Marked {
        t,
        marker,
        filter,
        ours,
    } = marked("prune-default");

    let (code, out, err) = t.run(&["prune"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed "), "{out}");
    assert!(
        err.contains("keeping records in use, used in the last 48h, or internal, frontend or shared with an image"),
        "{err}"
    );
    assert_eq!(
        du(&t, &[&filter]),
        ours,
        "the default prune removed fresh records"
    );
    // The 48h alone keeps them, without the storage budget.
    t.run_ok(&["prune", "--keep-storage", "0"]);
    assert_eq!(
        du(&t, &[&filter]),
        ours,
        "--keep-storage 0 removed fresh records"
    );

    let log = build(&t, &["--force"]);
    let step = log
        .lines()
        .find(|l| l.ends_with(&format!("RUN echo {marker} > /a")))
        .unwrap_or_else(|| panic!("no RUN step in:\n{log}"));
    let vertex = step.split_whitespace().nth(1).unwrap();
    assert!(
        log.lines().any(|l| l == format!("[app] {vertex} CACHED")),
        "the RUN step ran again:\n{log}"
    );

    // Control: nothing keeps them once age and size are not reasons to, so the default really did keep them; and
    // the dry run names exactly what the real prune then removes.
    let nothing_kept = [
        "--keep-duration",
        "0",
        "--keep-storage",
        "0",
        "--filter",
        &filter,
    ];
    let dry = t.run_ok(&[&["prune", "--dry-run"][..], &nothing_kept].concat());
    assert_eq!(set(listed(&dry)), ours, "{dry}");
    assert!(
        dry.contains("would remove 2 records") && dry.contains("computed from the disk usage"),
        "{dry}"
    );
    assert_eq!(du(&t, &[&filter]), ours, "the dry run removed records");
    let real = t.run_ok(&[&["prune"][..], &nothing_kept].concat());
    assert_eq!(
        listed(&real),
        listed(&dry),
        "dry run:\n{dry}\nprune:\n{real}"
    );
    assert!(real.contains("removed 2 records"), "{real}");
    assert!(du(&t, &[&filter]).is_empty());
}

#[test]
fn prune_all_asks_on_a_terminal_and_needs_yes_elsewhere() {
    let _exclusive = daemon_lock().write().unwrap_or_else(|p| p.into_inner());
    let Marked {
        t, filter, ours, ..
    } = marked("prune-all");

    // No terminal (assert_cmd gives stdin and stderr pipes) and no --yes: refused, before touching the daemon.
    let (code, out, err) = t.run(&["prune", "--all"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        err,
        "error: prune --all removes unused cache records of every kind, however recent unless --keep-duration \
         says otherwise, and stdin or stderr is not a terminal to ask on: pass --yes to confirm (--dry-run lists \
         what would go)\n"
    );
    assert_eq!(du(&t, &[&filter]), ours);

    // On a terminal it asks; anything but yes keeps everything.
    let (code, screen) = on_terminal(&t, 200, "exec \"$BUILDOPT\" prune --all", "n\n");
    assert_eq!(code, 1, "{screen}");
    assert!(
        screen.contains(" unused cache records (") && screen.contains("Remove them? [y/N] "),
        "{screen}"
    );
    assert!(screen.contains("nothing was removed"), "{screen}");
    assert_eq!(du(&t, &[&filter]), ours);

    let (code, screen) = on_terminal(
        &t,
        200,
        &format!("exec \"$BUILDOPT\" prune --all --filter '{filter}'"),
        "y\n",
    );
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("prune --all would remove 2 unused cache records ("),
        "{screen}"
    );
    assert!(screen.contains("removed 2 records"), "{screen}");
    assert!(du(&t, &[&filter]).is_empty());
}

#[test]
fn du_filters_and_cuts_descriptions_only_on_a_terminal() {
    // Shared: the records must outlive the build until du has listed them, and nothing here prunes.
    let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
    let Marked {
        t,
        marker,
        filter,
        ours,
    } = marked("du");
    let text = t.run_ok(&["du", "--filter", &filter]);
    assert_eq!(set(listed(&text)), ours, "{text}");
    assert!(
        text.lines().last().unwrap().ends_with(" in 2 records"),
        "{text}"
    );
    let long = format!("mount / from exec /bin/sh -c echo {marker} > /a");
    assert!(
        text.lines().any(|l| l.ends_with(&long)),
        "not whole in a pipe:\n{text}"
    );
    assert!(du(&t, &[]).is_superset(&ours));
    // Repeated filters: records matching any; commas: all.
    let one = ours.iter().next().unwrap();
    assert_eq!(du(&t, &[&filter, &format!("id=={one}")]), ours);
    assert_eq!(
        du(&t, &[&format!("{filter},id=={one}")]),
        BTreeSet::from([one.clone()])
    );
    let none = t.run_ok(&["du", "--filter", "id==no-such-record"]);
    assert!(none.ends_with("total: 0B in 0 records\n"), "{none}");

    let (code, screen) = on_terminal(
        &t,
        100,
        &format!("exec \"$BUILDOPT\" du --filter '{filter}'"),
        "",
    );
    assert_eq!(code, 0, "{screen}");
    assert_eq!(set(listed(&screen)), ours, "{screen}");
    for line in screen.lines() {
        assert!(
            line.chars().count() <= 100,
            "{line:?} is wider than the terminal"
        );
    }
    assert!(
        screen
            .lines()
            .any(|l| l.contains("mount / from exec") && l.ends_with('…')),
        "{screen}"
    );
    let (_, whole) = on_terminal(
        &t,
        100,
        &format!("exec \"$BUILDOPT\" du --no-trunc --filter '{filter}'"),
        "",
    );
    assert!(whole.lines().any(|l| l.ends_with(&long)), "{whole}");
}
