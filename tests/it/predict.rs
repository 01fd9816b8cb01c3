//! The Dockerfile reader's predictions against what the real daemons ask for: every case of
//! `tests/fixtures/dockerfiles/` is built on both daemons, and the `followpaths` of the main `context` transfer
//! (from `--metadata-file`) must equal the prediction exactly, or the case must be one where the prediction falls
//! back to the whole context.
//!
//! A case is a directory: its `Dockerfile`, the context files next to it, and `case.toml` (not part of the context):
//! what it shows (a leading comment), `target`, `[build_args]`, `expect = "fallback"` for the cases that must fall
//! back, `[rejected_by] <daemon> = "<error text>"` where a daemon's frontend rejects the Dockerfile before reading the
//! context, and `unobservable = "<why>"` where the daemons cannot run the build here. `@BASE_IMAGE@` and `@REGISTRY@`
//! in the Dockerfile and in build arguments are replaced by the test services' base image and registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use buildopt::for_tests::{PredictOptions, Prediction, predict_with};

use crate::common::{Services, Tree, copy_tree};

/// The two daemons: (label, address, RUN network they allow).
fn daemons(s: &Services) -> [(&'static str, String, &'static str); 2] {
    [
        ("docker26", s.buildkit_addr.clone(), "host"),
        ("docker28", s.buildkit_addr2.clone(), "none"),
    ]
}

struct Case {
    name: String,
    dir: PathBuf,
    dockerfile: String,
    target: Option<String>,
    build_args: BTreeMap<String, String>,
    expect_fallback: bool,
    rejected_by: BTreeMap<String, String>,
    unobservable: Option<String>,
}

fn load_cases(s: &Services) -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dockerfiles");
    let fill = |text: &str| {
        text.replace("@BASE_IMAGE@", &s.base_image)
            .replace("@REGISTRY@", &s.registry)
    };
    let mut cases: Vec<Case> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|dir| {
            let meta: toml::Table = std::fs::read_to_string(dir.join("case.toml"))
                .unwrap()
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let strings = |key: &str| -> BTreeMap<String, String> {
                meta.get(key)
                    .and_then(|v| v.as_table())
                    .map(|t| {
                        t.iter()
                            .map(|(k, v)| (k.clone(), fill(v.as_str().unwrap())))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let string = |key: &str| meta.get(key).map(|v| v.as_str().unwrap().to_owned());
            Case {
                name: dir.file_name().unwrap().to_string_lossy().into_owned(),
                dockerfile: fill(&std::fs::read_to_string(dir.join("Dockerfile")).unwrap()),
                target: string("target"),
                build_args: strings("build_args"),
                expect_fallback: string("expect").as_deref() == Some("fallback"),
                rejected_by: strings("rejected_by"),
                unobservable: string("unobservable"),
                dir,
            }
        })
        .collect();
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    cases
}

/// What one build showed.
struct Observed {
    code: i32,
    /// The `followpaths` of the main context transfer; `None` when there was none.
    main: Option<Vec<String>>,
    error: String,
}

/// Builds the case on one daemon (forced, not pushed) and reads what the daemon asked for.
fn build(s: &Services, case: &Case, daemon: &str, addr: &str, network: &str) -> Observed {
    let mut service = toml::Table::new();
    service.insert("context".into(), "app".into());
    service.insert(
        "image".into(),
        format!("it/predict-{}-{daemon}", case.name).into(),
    );
    if let Some(t) = &case.target {
        service.insert("target".into(), t.clone().into());
    }
    let args: toml::Table = case
        .build_args
        .iter()
        .map(|(k, v)| (k.clone(), toml::Value::from(v.clone())))
        .collect();
    service.insert("build_args".into(), args.into());
    let config = toml::toml! {
        [registry]
        url = (s.registry.clone())
        insecure = true
        [buildkit]
        addr = (addr)
        network = (network)
    };
    let mut config = config;
    config.insert(
        "services".into(),
        toml::Table::from_iter([("app".to_owned(), toml::Value::from(service))]).into(),
    );
    let t = Tree::new().file("buildopt.toml", toml::to_string(&config).unwrap());
    copy_tree(&case.dir, &t.join("app"));
    std::fs::remove_file(t.join("app/case.toml")).unwrap();
    std::fs::write(t.join("app/Dockerfile"), &case.dockerfile).unwrap();
    let meta = t.join("meta.json");
    let (code, _, err) = t.build(&[
        "--no-push",
        "--force",
        "--metadata-file",
        meta.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&meta).unwrap_or_else(|e| panic!("{}: no metadata ({e}): {err}", case.name)),
    )
    .unwrap();
    let app = &v["app"];
    let mut contexts: Vec<Vec<String>> = app["buildopt.transfers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|t| t["local"] == "context")
        .map(|t| {
            let paths: Vec<String> = t["followpaths"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_owned())
                .collect();
            // The `.dockerignore` fetch comes first and carries no patterns; tell it by that.
            let ignore_fetch = paths == [".dockerignore"] && t.get("exclude").is_none();
            if ignore_fetch { None } else { Some(paths) }
        })
        .enumerate()
        .filter_map(|(i, p)| match p {
            None if i == 0 => None,
            None => Some(vec![".dockerignore".to_owned()]),
            Some(p) => Some(p),
        })
        .collect();
    contexts.dedup();
    assert!(
        contexts.len() <= 1,
        "{}: {daemon} asked for the context more than once, differently: {contexts:?}",
        case.name
    );
    Observed {
        code,
        main: contexts.pop(),
        error: app["buildopt.error"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// How a case fared on one daemon.
#[derive(Clone, PartialEq)]
enum Outcome {
    Exact,
    /// With what the daemon asked for, which the report shows.
    FellBack(String),
    Rejected,
    Unobservable,
    Mismatch(String),
}

fn judge(case: &Case, daemon: &str, p: &Prediction, o: &Observed) -> Outcome {
    let seen = match &o.main {
        None => "no context transfer".to_owned(),
        Some(f) if f.is_empty() => "the whole context".to_owned(),
        Some(f) => format!("{f:?}"),
    };
    let mismatch = |why: &str| {
        Outcome::Mismatch(format!(
            "{why}; predicted: {p}; daemon asked for {seen} (exit {}, {})",
            o.code, o.error
        ))
    };
    if let Some(text) = case.rejected_by.get(daemon) {
        return if o.code != 0 && o.error.contains(text.as_str()) && o.main.is_none() {
            Outcome::Rejected
        } else {
            mismatch(&format!("expected {daemon} to reject it with `{text}`"))
        };
    }
    if case.expect_fallback {
        return if p.fallback().is_some() {
            Outcome::FellBack(if o.main.is_none() && o.code != 0 {
                format!("rejected: {}", o.error)
            } else {
                seen
            })
        } else {
            mismatch("expected a fallback")
        };
    }
    if let Some(f) = p.fallback() {
        return mismatch(&format!("fell back unexpectedly ({f})"));
    }
    if case.unobservable.is_some() {
        return if o.main.is_none() && o.code != 0 {
            Outcome::Unobservable
        } else {
            mismatch("expected the build to fail before reading the context")
        };
    }
    if matches!(p, Prediction::Nothing) && o.code != 0 {
        // Only a build that got through tells that the context was never asked for.
        return mismatch("the build failed, so `nothing` is not confirmed");
    }
    if p.agrees_with(o.main.as_deref()) {
        Outcome::Exact
    } else {
        mismatch("the prediction differs")
    }
}

/// Every corpus case on both daemons; prints the table of outcomes and fails on any mismatch.
#[test]
#[expect(
    clippy::print_stdout,
    reason = "the table of outcomes per case and daemon is the report of this test"
)]
fn corpus_predictions_match_both_daemons() {
    let s = Services::get();
    let cases = load_cases(&s);
    assert!(cases.len() >= 25, "only {} cases", cases.len());
    let platform = match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        other => panic!("no platform for {other}"),
    };
    let predictions: Vec<Prediction> = cases
        .iter()
        .map(|c| {
            predict_with(
                c.dockerfile.as_bytes(),
                &PredictOptions {
                    target: c.target.as_deref(),
                    build_args: &c.build_args,
                    build_platform: Some(platform),
                    target_platform: None,
                },
            )
        })
        .collect();
    let daemons = daemons(&s);
    let jobs: Vec<(usize, usize)> = (0..cases.len())
        .flat_map(|c| (0..daemons.len()).map(move |d| (c, d)))
        .collect();
    let next = Mutex::new(jobs.into_iter());
    let results: Mutex<BTreeMap<(usize, usize), Outcome>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                loop {
                    let Some((c, d)) = next.lock().unwrap().next() else {
                        break;
                    };
                    let (label, addr, network) = &daemons[d];
                    let observed = build(&s, &cases[c], label, addr, network);
                    let outcome = judge(&cases[c], label, &predictions[c], &observed);
                    results.lock().unwrap().insert((c, d), outcome);
                }
            });
        }
    });
    let results = results.into_inner().unwrap();

    let word = |o: &Outcome| match o {
        Outcome::Exact => "exact",
        Outcome::FellBack(_) => "fell back",
        Outcome::Rejected => "rejected",
        Outcome::Unobservable => "not observable",
        Outcome::Mismatch(_) => "MISMATCH",
    };
    let width = cases.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut table = format!(
        "{:width$}  {:14}  {:14}  prediction\n",
        "case", daemons[0].0, daemons[1].0
    );
    let mut mismatches = Vec::new();
    for (c, case) in cases.iter().enumerate() {
        let outcomes: Vec<&Outcome> = (0..daemons.len()).map(|d| &results[&(c, d)]).collect();
        let shown = predictions[c].to_string().replace('\n', "; ");
        writeln!(
            table,
            "{:width$}  {:14}  {:14}  {shown}",
            case.name,
            word(outcomes[0]),
            word(outcomes[1])
        )
        .unwrap();
        for (d, o) in outcomes.iter().enumerate() {
            if let Outcome::Mismatch(why) = o {
                mismatches.push(format!("{} on {}: {why}", case.name, daemons[d].0));
            }
        }
    }
    writeln!(
        table,
        "\nwhat the daemons asked for where the prediction fell back:"
    )
    .unwrap();
    for ((c, d), o) in &results {
        if let Outcome::FellBack(seen) = o {
            let seen: String = seen.chars().take(160).collect();
            writeln!(table, "  {} on {}: {seen}", cases[*c].name, daemons[*d].0).unwrap();
        }
    }
    for (d, (label, _, _)) in daemons.iter().enumerate() {
        let count = |w: &str| {
            (0..cases.len())
                .filter(|c| word(&results[&(*c, d)]) == w)
                .count()
        };
        writeln!(
            table,
            "{label}: {} predicted exactly, {} fell back, {} rejected by the daemon, {} not observable, {} mismatched",
            count("exact"),
            count("fell back"),
            count("rejected"),
            count("not observable"),
            count("MISMATCH"),
        )
        .unwrap();
    }
    println!("{table}");
    assert!(
        mismatches.is_empty(),
        "{}\n\n{table}",
        mismatches.join("\n")
    );
}
