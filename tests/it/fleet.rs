//! A fleet of builders: the two real daemons (dockerd 26's BuildKit and dockerd 28's) as one fleet. Services spread
//! over both by their names, an unreachable builder is skipped, a daemon lost mid-build (its connection cut by a
//! loopback proxy, as a daemon that dies would cut it, without killing a daemon other tests use) has its services
//! finished on the other with correct images, per-builder TLS settings reach each daemon through the Go TLS
//! terminator, and `doctor`, `du` and `prune` cover every builder.
//!
//! Which builder a service prefers is computed here from the documented placement rule (README, "A fleet of
//! builders"), independently of buildopt's code, and the tests name services so that each builder gets some.
//!
//! See: issue 11.

use crate::common::proxy::SocketProxy;
use crate::common::tls::{Certs, Terminator};
use crate::common::{Services, Tree, daemon_lock, unique_repo};

/// The builders (indexes into `addrs`) in the order `service` prefers them: by the first 8 bytes (big-endian) of
/// blake3 in derive-key mode over `ADDR\nSERVICE`, highest first.
fn ranking(addrs: &[&str], service: &str) -> Vec<usize> {
    let score = |addr: &str| {
        let mut h = blake3::Hasher::new_derive_key("buildopt 2026-12-10 builder placement v1");
        h.update(format!("{addr}\n{service}").as_bytes());
        u64::from_be_bytes(h.finalize().as_bytes()[..8].try_into().unwrap())
    };
    let mut order: Vec<usize> = (0..addrs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(score(addrs[i])));
    order
}

/// `n` service names whose first choice among `addrs` is builder `first`.
fn preferring(addrs: &[&str], first: usize, n: usize, prefix: &str) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|name| ranking(addrs, name)[0] == first)
        .take(n)
        .collect()
}

/// A workspace whose services (name, Dockerfile) each build from context `<name>/` into a fresh repository, with
/// `buildkit` as the `[buildkit]` table's body (RUN steps without a network: the second daemon refuses the host's).
/// Returns the tree and each service's repository.
fn fleet_workspace(buildkit: &str, services: &[(String, String)]) -> (Tree, Vec<String>) {
    let s = Services::get();
    let mut toml = format!(
        "[registry]\nurl = \"{}\"\ninsecure = true\n\n[buildkit]\nnetwork = \"none\"\n{buildkit}\n",
        s.registry
    );
    let mut tree = Tree::new();
    let mut repos = Vec::new();
    for (name, dockerfile) in services {
        let repo = unique_repo(name);
        toml.push_str(&format!(
            "\n[services.{name}]\ncontext = \"{name}\"\nimage = \"{repo}\"\nbuild_args = {{ BASE_IMAGE = \"{}\" }}\n",
            s.base_image
        ));
        tree = tree.file(format!("{name}/Dockerfile"), dockerfile);
        repos.push(repo);
    }
    (tree.file("buildopt.toml", toml), repos)
}

/// `addr = [...]` for `addrs`.
fn addr_list(addrs: &[&str]) -> String {
    let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("addr = [{}]\n", quoted.join(", "))
}

/// A Dockerfile whose image holds `/who` naming the service and its repository (so each build is new).
fn dockerfile(name: &str, repo_hint: &str) -> String {
    format!("ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN echo {name} {repo_hint} > /who\n")
}

/// Names with their Dockerfiles.
fn with_dockerfiles(names: &[String], tag: &str) -> Vec<(String, String)> {
    let hint = unique_repo(tag);
    names
        .iter()
        .map(|n| (n.clone(), dockerfile(n, &hint)))
        .collect()
}

/// The metadata file of a run, by service.
fn metadata(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn builder_of(meta: &serde_json::Value, service: &str) -> String {
    meta[service]["buildopt.builder"]
        .as_str()
        .unwrap_or_else(|| panic!("no builder for {service}: {meta}"))
        .to_owned()
}

/// Each service goes to the builder its name ranks first, so both daemons build; the summary, the metadata file and
/// `--progress json` say which; a rebuild goes to the same builders (placement is stable).
#[test]
fn services_spread_over_both_daemons_by_their_names() {
    let s = Services::get();
    let addrs = [s.buildkit_addr.as_str(), s.buildkit_addr2.as_str()];
    let (on0, on1) = (
        preferring(&addrs, 0, 2, "spread-a"),
        preferring(&addrs, 1, 2, "spread-b"),
    );
    let names: Vec<String> = on0.iter().chain(&on1).cloned().collect();
    let (t, repos) = fleet_workspace(&addr_list(&addrs), &with_dockerfiles(&names, "spread"));
    let meta_path = t.join("meta.json");
    let (code, _, err) = t.build(&["--metadata-file", meta_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let meta = metadata(&meta_path);
    for (name, repo) in names.iter().zip(&repos) {
        let want = if on0.contains(name) {
            addrs[0]
        } else {
            addrs[1]
        };
        assert_eq!(builder_of(&meta, name), want, "{name}: {err}");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("built     {name} "))
                    && l.contains(&format!("  on {want}"))),
            "{name} on {want} in the summary: {err}"
        );
        assert_eq!(
            Some(s.manifest_digest(repo, "latest")),
            meta[name.as_str()]["containerimage.digest"]
                .as_str()
                .map(str::to_owned),
            "{name}"
        );
    }

    // Again, forced: the same builders, and the JSON outcome events say so.
    let out = {
        let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
        t.cmd()
            .args(["--progress", "json", "build", "--force"])
            .output()
            .unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcomes: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "outcome")
        .collect();
    assert_eq!(outcomes.len(), names.len(), "{outcomes:?}");
    for o in &outcomes {
        let name = o["service"].as_str().unwrap();
        assert_eq!(o["status"], "built", "{o}");
        assert_eq!(
            o["builder"].as_str(),
            Some(builder_of(&meta, name).as_str()),
            "{o}"
        );
    }
}

/// An unreachable address in the list is a warning and its services build on the others; a run with nothing to
/// build probes no builder at all; with no builder reachable, each address and its error is named (exit 1), from
/// repeated `--addr` flags and from a comma-separated `BUILDKIT_HOST` alike.
#[test]
fn an_unreachable_builder_is_skipped_and_only_a_run_that_builds_probes() {
    let s = Services::get();
    let dir = tempfile::tempdir().unwrap();
    let gone = format!("unix://{}/gone.sock", dir.path().display());
    let gone2 = format!("unix://{}/gone2.sock", dir.path().display());
    let addrs = [gone.as_str(), s.buildkit_addr2.as_str()];
    let names: Vec<String> = preferring(&addrs, 0, 2, "gone")
        .into_iter()
        .chain(preferring(&addrs, 1, 1, "up"))
        .collect();
    let (t, repos) = fleet_workspace(&addr_list(&addrs), &with_dockerfiles(&names, "unreach"));
    let meta_path = t.join("meta.json");
    let (code, _, err) = t.build(&["--metadata-file", meta_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "warning: builder skipped, its services go to the others: cannot connect to BuildKit at {gone}: check that buildkitd is running"
        )),
        "{err}"
    );
    let meta = metadata(&meta_path);
    for (name, repo) in names.iter().zip(&repos) {
        assert_eq!(builder_of(&meta, name), s.buildkit_addr2, "{name}");
        assert!(s.manifest(repo, "latest").is_some(), "{name}");
    }

    // Nothing to build: no probe, so no word of the unreachable builder.
    let (code, _, err) = t.build(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.lines().filter(|l| l.starts_with("skipped ")).count() == names.len(),
        "{err}"
    );
    assert!(!err.contains("warning"), "{err}");

    // None reachable: every address and why, once per failed service.
    let expected = format!(
        "none of the 2 BuildKit builders is reachable: cannot connect to BuildKit at {gone}: check that buildkitd is running and listening on"
    );
    let (code, _, err) = t.build(&["--force", "--addr", &gone, "--addr", &gone2]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&expected), "{err}");
    assert!(
        err.contains(&format!("; cannot connect to BuildKit at {gone2}: ")),
        "{err}"
    );
    let out = {
        let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
        t.cmd()
            .env("BUILDKIT_HOST", format!("{gone},{gone2}"))
            .args(["--progress", "plain", "build", "--force"])
            .output()
            .unwrap()
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&expected), "{err}");
}

/// A daemon lost mid-build (every connection to it cut, as when it dies): each of its services is retried once on
/// the next builder in its ranking, which builds it; the images in the registry are those of the retries, and the
/// report says what happened. The lost attempt tagged nothing: the only images are the retries'.
#[test]
fn a_daemon_lost_mid_build_has_its_services_finished_on_the_other() {
    let s = Services::get();
    let proxy = SocketProxy::start(std::path::Path::new(&s.docker_sock));
    let lost = format!("docker://{}", proxy.path.display());
    let addrs = [lost.as_str(), s.buildkit_addr2.as_str()];
    let hint = unique_repo("lost");
    let doomed = preferring(&addrs, 0, 2, "lost");
    let other = preferring(&addrs, 1, 1, "stays");
    let services: Vec<(String, String)> = doomed
        .iter()
        .map(|n| {
            let df = format!(
                "ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN echo step-started {n} {hint} && sleep 6 && echo {n} > /built\n"
            );
            (n.clone(), df)
        })
        .chain(other.iter().map(|n| (n.clone(), dockerfile(n, &hint))))
        .collect();
    let (t, repos) = fleet_workspace(&addr_list(&addrs), &services);
    let meta_path = t.join("meta.json");
    let _shared = daemon_lock().read().unwrap_or_else(|p| p.into_inner());
    let mut run = t.spawn(&["build", "--metadata-file", meta_path.to_str().unwrap()]);
    run.wait_line("step-started", 120);
    proxy.cut();
    let (code, err) = run.finish();
    assert_eq!(code, 0, "{err}");
    let meta = metadata(&meta_path);
    for (name, repo) in doomed.iter().zip(&repos) {
        assert_eq!(builder_of(&meta, name), s.buildkit_addr2, "{name}");
        let note = format!(
            "builder {lost} was lost during the build; nothing from that attempt was tagged, and it ran again on {}",
            s.buildkit_addr2
        );
        // Said when it happens, and in the summary.
        let live = format!(
            "warning: {name}: builder {lost} was lost during the build; building it again on {}",
            s.buildkit_addr2
        );
        assert!(err.contains(&live), "{err}");
        assert!(err.contains(&format!("warning: {name}: {note}")), "{err}");
        assert!(
            meta[name.as_str()]["buildopt.warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w.as_str() == Some(note.as_str())),
            "{meta}"
        );
        // The image under `latest` and the content tag is the retry's, and holds what its build wrote.
        let image = meta[name.as_str()]["containerimage.digest"]
            .as_str()
            .unwrap();
        assert_eq!(s.manifest_digest(repo, "latest"), image, "{name}");
        let content_tag = meta[name.as_str()]["buildopt.content-tag"]
            .as_str()
            .unwrap();
        let (_, tag) = content_tag.rsplit_once(':').unwrap();
        assert_eq!(s.manifest_digest(repo, tag), image, "{name}");
        let layers = s.manifest(repo, "latest").unwrap()["layers"].clone();
        let last = layers.as_array().unwrap().last().unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        let listing = s.layer_listing(repo, &last);
        assert!(
            listing.iter().any(|l| l.ends_with(" built")),
            "{name}: {listing:?}"
        );
    }
    assert_eq!(builder_of(&meta, &other[0]), s.buildkit_addr2);
    assert!(s.manifest(&repos[2], "latest").is_some());
}

/// `[[buildkit.builders]]` tables carry each builder's own TLS settings: two daemons behind Go TLS terminators with
/// different CAs, each requiring a client certificate of its own CA, both build (one set of settings for both would
/// leave one unreachable and its service on the other).
#[test]
fn per_builder_tls_settings_reach_each_daemon() {
    let s = Services::get();
    let (dir0, dir1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (certs0, certs1) = (Certs::generate(dir0.path()), Certs::generate(dir1.path()));
    let t0 = Terminator::tls(&certs0.server, Some(&certs0.ca), false, &s.docker_sock);
    let t1 = Terminator::tls(
        &certs1.server,
        Some(&certs1.ca),
        false,
        &std::env::var("BUILDOPT_TEST_DOCKER_SOCK2").unwrap_or_else(|_| {
            s.buildkit_addr2
                .strip_prefix("docker://")
                .expect("the second daemon is docker://")
                .to_owned()
        }),
    );
    let (a0, a1) = (t0.addr(), t1.addr());
    let addrs = [a0.as_str(), a1.as_str()];
    let table = |addr: &str, certs: &Certs| {
        format!(
            "\n[[buildkit.builders]]\naddr = \"{addr}\"\ntls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nserver_name = \"buildkitd\"\n",
            certs.ca.cert(),
            certs.client.cert(),
            certs.client.key()
        )
    };
    let names: Vec<String> = preferring(&addrs, 0, 1, "tls-a")
        .into_iter()
        .chain(preferring(&addrs, 1, 1, "tls-b"))
        .collect();
    let buildkit = table(&a0, &certs0) + &table(&a1, &certs1);
    let (t, repos) = fleet_workspace(&buildkit, &with_dockerfiles(&names, "tls"));
    let meta_path = t.join("meta.json");
    let (code, _, err) = t.build(&["--metadata-file", meta_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}\n{}\n{}", t0.log(), t1.log());
    assert!(!err.contains("warning: builder skipped"), "{err}");
    let meta = metadata(&meta_path);
    assert_eq!(builder_of(&meta, &names[0]), a0, "{err}");
    assert_eq!(builder_of(&meta, &names[1]), a1, "{err}");
    for repo in &repos {
        assert!(s.manifest(repo, "latest").is_some(), "{repo}");
    }

    // doctor with the same config: both daemons, each through its own TLS settings.
    let text = t.run_ok(&["doctor"]);
    for a in addrs {
        assert!(text.contains(&format!("address:  {a}\n")), "{text}");
    }
}

/// A builder at its `max_parallel` sends the next build to the next builder in the service's ranking; `--jobs` stays
/// the limit of the whole run (with `--jobs 1` both builds wait for the preferred builder, one after the other).
#[test]
fn a_full_builder_passes_the_next_build_on_and_jobs_stays_global() {
    let s = Services::get();
    let addrs = [s.buildkit_addr.as_str(), s.buildkit_addr2.as_str()];
    let names = preferring(&addrs, 0, 2, "full");
    let buildkit: String = addrs
        .iter()
        .map(|a| format!("\n[[buildkit.builders]]\naddr = \"{a}\"\nmax_parallel = 1\n"))
        .collect();
    let (t, _) = fleet_workspace(&buildkit, &with_dockerfiles(&names, "full"));
    let meta_path = t.join("meta.json");
    let (code, _, err) = t.build(&["--metadata-file", meta_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let meta = metadata(&meta_path);
    let mut used: Vec<String> = names.iter().map(|n| builder_of(&meta, n)).collect();
    used.sort();
    let mut both: Vec<String> = addrs.iter().map(|a| (*a).to_owned()).collect();
    both.sort();
    assert_eq!(used, both, "one on each: {err}");

    let (code, _, err) = t.build(&[
        "--force",
        "--jobs",
        "1",
        "--metadata-file",
        meta_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let meta = metadata(&meta_path);
    for n in &names {
        assert_eq!(builder_of(&meta, n), addrs[0], "{n}: {err}");
    }
}

/// `doctor` reports every builder (both daemons' BuildKit and Docker Engine versions), `du` and `prune --dry-run`
/// list each builder's cache under its address; an unreachable builder is an error naming it, after the others.
#[test]
#[expect(
    clippy::print_stdout,
    reason = "the versions the daemons report are worth seeing in the test output"
)]
fn doctor_du_and_prune_cover_every_builder() {
    let s = Services::get();
    let t = Tree::new();
    let (a0, a1) = (s.buildkit_addr.as_str(), s.buildkit_addr2.as_str());
    let text = t.run_ok(&["doctor", "--addr", a0, "--addr", a1]);
    println!("{text}");
    let values = |key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .collect()
    };
    assert_eq!(values("address:"), [a0, a1], "{text}");
    assert_eq!(values("version:").len(), 2, "{text}");
    let engines = values("engine:");
    assert_eq!(engines.len(), 2, "{text}");
    assert!(
        engines[0].starts_with("Docker Engine 26.") && engines[1].starts_with("Docker Engine 28."),
        "{engines:?}"
    );

    let du = t.run_ok(&["du", "--addr", &format!("{a0},{a1}")]);
    let builders: Vec<&str> = du
        .lines()
        .filter_map(|l| l.strip_prefix("builder: "))
        .collect();
    assert_eq!(builders, [a0, a1], "{du}");
    assert!(
        du.trim_end()
            .lines()
            .last()
            .unwrap()
            .ends_with("records on 2 builders"),
        "{du}"
    );

    let dry = t.run_ok(&["prune", "--dry-run", "--addr", a0, "--addr", a1]);
    assert_eq!(
        dry.lines()
            .filter(|l| l.starts_with("would remove "))
            .count(),
        2,
        "{dry}"
    );
    assert_eq!(
        dry.lines().filter(|l| l.starts_with("builder: ")).count(),
        2,
        "{dry}"
    );

    let gone = "unix:///nonexistent/fleet.sock";
    let (code, out, err) = t.run(&["doctor", "--addr", a0, "--addr", gone]);
    assert_eq!(code, 1, "{err}");
    assert!(out.contains(&format!("address:  {a0}\n")), "{out}");
    assert!(
        err.contains(&format!(
            "error: cannot connect to BuildKit at {gone}: check that buildkitd is running"
        )),
        "{err}"
    );
}
