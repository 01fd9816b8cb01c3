//! `buildopt build`: hash, ask the registry which inputs already have an image, point requested tags at those, and
//! build the rest through BuildKit in dependency order (independent ones in parallel). A build pushes only its
//! content tag; requested tags move only after it succeeded, so a failed or cancelled build never moves `latest`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::task::JoinSet;

use super::{CACHE_DIR, ExitStatus, UsageError, hash_all, registry_setup, select};
use crate::auth::Keychain;
use crate::buildkit::{CacheEntry, Client, ExporterSpec, SolveSpec};
use crate::cli::args::{BuildArgs, CacheMode, NetworkMode, ProgressMode};
use crate::config::{Registry, Service, Workspace};
use crate::hash::{Digest, ServiceInputs};
use crate::plan::{Decision, ServicePlan, plan_remote, short_image};
use crate::printer::Printer;
use crate::progress::{Progress, ServiceProgress};
use crate::registry::{RegistryClient, RegistryError, content_tag};
use crate::session::{LOCAL_CONTEXT, LOCAL_DOCKERFILE, Session, new_id};
use crate::state::{ServiceState, StateStore};

/// How long the status stream may keep draining after the solve returned.
const STATUS_DRAIN: Duration = Duration::from_secs(5);

/// Options that are the same for every service of a run.
struct RunOptions {
    registry: Registry,
    push: bool,
    cache_to: CacheMode,
    cache_from: CacheMode,
    network: NetworkMode,
    keychain: Arc<dyn Keychain>,
    client: RegistryClient,
    own: Vec<PathBuf>,
}

/// How one service ended.
#[derive(Debug, Clone)]
enum Outcome {
    Built {
        image: String,
        promoted: Vec<String>,
        elapsed: Duration,
        cache_hits: (usize, usize),
    },
    Skipped {
        image: String,
        promoted: Vec<String>,
        elapsed: Duration,
    },
    Failed {
        error: String,
        elapsed: Duration,
    },
    DependencyFailed {
        dependency: String,
    },
}

pub(super) fn run(
    ws: &Workspace,
    args: &BuildArgs,
    printer: Printer,
    progress: ProgressMode,
) -> anyhow::Result<ExitStatus> {
    let Some(registry) = ws.registry.clone() else {
        return Err(UsageError(format!(
            "{}: `buildopt build` needs a [registry] with a `url`",
            ws.config_path.display()
        ))
        .into());
    };
    let started = Instant::now();
    let services: Vec<Service> = select(ws, &args.services)?.into_iter().cloned().collect();
    let refs: Vec<&Service> = services.iter().collect();
    let inputs = hash_all(ws, &refs)?;
    let network = args
        .network
        .unwrap_or(match ws.buildkit_network.as_deref() {
            Some("host") => NetworkMode::Host,
            Some("none") => NetworkMode::None,
            _ => NetworkMode::Default,
        });
    let push = !args.no_push;
    let store = StateStore::new(&ws.root.join(CACHE_DIR));
    let result = super::block_on(async {
        let (keychain, client) = registry_setup(
            &registry,
            args.ecr_endpoint.as_deref(),
            &refs,
            push,
            printer,
        )
        .await?;
        let opts = Arc::new(RunOptions {
            registry: registry.clone(),
            push,
            cache_to: args.cache_to,
            cache_from: args.cache_from,
            network,
            keychain,
            client,
            own: super::own_dirs(ws),
        });
        let check_cache = push && args.cache_to == CacheMode::Registry;
        let plans = plan_remote(
            &opts.client,
            &refs,
            &inputs,
            &store,
            check_cache,
            args.force,
        )
        .await?;
        report_plan(printer, &plans)?;
        if args.dry_run {
            return Ok::<_, anyhow::Error>(Some((plans, HashMap::new())));
        }
        let progress = Progress::new(progress, printer);
        let daemon = &args.daemon;
        let work = run_plan(
            daemon,
            ws,
            &services,
            &inputs,
            &plans,
            &opts,
            &progress,
            usize::from(args.jobs),
        );
        tokio::select! {
            outcomes = work => Ok(Some((plans, outcomes?))),
            _ = tokio::signal::ctrl_c() => Ok(None),
        }
    });
    let Some((plans, outcomes)) = result? else {
        writeln!(
            printer.errors(),
            "error: interrupted: builds in progress were cancelled; no tag was moved for them"
        )?;
        return Ok(ExitStatus::Failure);
    };
    if args.dry_run {
        return Ok(ExitStatus::Success);
    }

    let mut failed = false;
    let mut out = printer.stderr();
    let width = services.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut metadata = serde_json::Map::new();
    for ((svc, inp), plan) in services.iter().zip(&inputs).zip(&plans) {
        let outcome = &outcomes[&svc.name];
        if matches!(outcome, Outcome::Built { .. } | Outcome::Skipped { .. })
            && let Err(e) = store.save(&svc.name, &ServiceState::of(inp))
        {
            tracing::warn!("could not record the local state of `{}`: {e}", svc.name);
        }
        let line = match outcome {
            Outcome::Built {
                image,
                elapsed,
                promoted,
                ..
            } => format!(
                "built     {:width$}  {}  {:.1}s{}",
                svc.name,
                short_image(image),
                elapsed.as_secs_f64(),
                if promoted.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", promoted.join(", "))
                }
            ),
            Outcome::Skipped {
                image,
                promoted,
                elapsed,
            } if !promoted.is_empty() => format!(
                "promoted  {:width$}  {}  {:.1}s  ({} -> image for inputs {})",
                svc.name,
                short_image(image),
                elapsed.as_secs_f64(),
                promoted.join(", "),
                inp.digest.short()
            ),
            Outcome::Skipped { image, elapsed, .. } => {
                format!(
                    "skipped   {:width$}  {}  {:.1}s  (unchanged)",
                    svc.name,
                    short_image(image),
                    elapsed.as_secs_f64()
                )
            }
            Outcome::Failed { error, .. } => {
                failed = true;
                format!("failed    {:width$}  {error}", svc.name)
            }
            Outcome::DependencyFailed { dependency } => {
                failed = true;
                format!(
                    "failed    {:width$}  dependency `{dependency}` failed",
                    svc.name
                )
            }
        };
        writeln!(out, "{line}")?;
        metadata.insert(
            svc.name.clone(),
            service_metadata(svc, inp, plan, outcome, &registry, push),
        );
    }
    writeln!(out, "total     {:.1}s", started.elapsed().as_secs_f64())?;
    if let Some(path) = &args.metadata_file {
        write_metadata(path, &serde_json::Value::Object(metadata))?;
    }
    Ok(if failed {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}

fn report_plan(printer: Printer, plans: &[ServicePlan]) -> std::io::Result<()> {
    let mut out = printer.stderr();
    let width = plans.iter().map(|p| p.service.len()).max().unwrap_or(0);
    for p in plans {
        writeln!(
            out,
            "{:5} {:width$}  {}",
            p.decision.as_str(),
            p.service,
            p.reason
        )?;
    }
    Ok(())
}

fn service_metadata(
    svc: &Service,
    inp: &ServiceInputs,
    plan: &ServicePlan,
    outcome: &Outcome,
    registry: &Registry,
    push: bool,
) -> serde_json::Value {
    let names: Vec<String> = svc
        .tags
        .iter()
        .map(|t| registry.reference(&svc.image, t))
        .collect();
    let (decision, image, elapsed, error, ratio) = match outcome {
        Outcome::Built {
            image,
            elapsed,
            cache_hits,
            ..
        } => {
            let ratio = (cache_hits.1 > 0).then(|| cache_hits.0 as f64 / cache_hits.1 as f64);
            ("built", Some(image), Some(elapsed), None, ratio)
        }
        Outcome::Skipped {
            image,
            promoted,
            elapsed,
        } => (
            if promoted.is_empty() {
                "skipped"
            } else {
                "promoted"
            },
            Some(image),
            Some(elapsed),
            None,
            None,
        ),
        Outcome::Failed { error, elapsed } => {
            ("failed", None, Some(elapsed), Some(error.clone()), None)
        }
        Outcome::DependencyFailed { dependency } => (
            "failed",
            None,
            None,
            Some(format!("dependency `{dependency}` failed")),
            None,
        ),
    };
    serde_json::json!({
        "containerimage.digest": image,
        "image.name": names.join(","),
        "buildopt.decision": decision,
        "buildopt.reason": plan.reason,
        "buildopt.input-digest": inp.digest.to_string(),
        "buildopt.content-tag": push.then(|| registry.reference(&svc.image, &content_tag(&inp.digest))),
        "buildopt.tags": svc.tags,
        "buildopt.duration-ms": elapsed.map(|d| d.as_millis() as u64),
        "buildopt.cache-hit-ratio": ratio,
        "buildopt.error": error,
    })
}

fn write_metadata(path: &PathBuf, value: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    fs_err::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    fs_err::rename(&tmp, path)?;
    Ok(())
}

/// Moves each requested tag that does not already point at `image` to it. Returns the tags moved.
async fn promote(
    client: &RegistryClient,
    svc: &Service,
    source: &str,
    image: &str,
) -> Result<Vec<String>, RegistryError> {
    let mut moved = Vec::new();
    for tag in &svc.tags {
        let target = client.reference(&svc.image, tag);
        if client.lookup(&target).await?.as_deref() == Some(image) {
            continue;
        }
        client.retag(source, &target).await?;
        moved.push(tag.clone());
    }
    Ok(moved)
}

/// Carries out the plan: skipped services get their tags promoted, the rest are built (connecting to BuildKit only
/// if something is to be built).
#[allow(clippy::too_many_arguments)]
async fn run_plan(
    daemon: &crate::cli::args::DaemonArgs,
    ws: &Workspace,
    services: &[Service],
    inputs: &[ServiceInputs],
    plans: &[ServicePlan],
    opts: &Arc<RunOptions>,
    progress: &Progress,
    jobs: usize,
) -> anyhow::Result<HashMap<String, Outcome>> {
    let mut outcomes: HashMap<String, Outcome> = HashMap::new();
    let mut images: BTreeMap<String, String> = BTreeMap::new();
    for ((svc, inp), plan) in services.iter().zip(inputs).zip(plans) {
        if plan.decision != Decision::Skip {
            continue;
        }
        let started = Instant::now();
        let image = plan.image.clone().expect("a skip has an image");
        let source = opts.client.reference(&svc.image, &content_tag(&inp.digest));
        let promoted = if opts.push {
            promote(&opts.client, svc, &source, &image).await?
        } else {
            Vec::new()
        };
        images.insert(svc.name.clone(), image.clone());
        outcomes.insert(
            svc.name.clone(),
            Outcome::Skipped {
                image,
                promoted,
                elapsed: started.elapsed(),
            },
        );
    }
    let to_build: Vec<usize> = (0..services.len())
        .filter(|&i| plans[i].decision == Decision::Build)
        .collect();
    if to_build.is_empty() {
        return Ok(outcomes);
    }
    let client = super::daemon::connect(daemon, Some(ws)).await?;
    schedule(
        &client,
        services,
        inputs,
        to_build,
        opts,
        progress,
        jobs,
        &mut outcomes,
        &mut images,
    )
    .await;
    Ok(outcomes)
}

/// Runs the builds: a service starts once all its dependencies have an image, at most `jobs` at a time.
#[allow(clippy::too_many_arguments)]
async fn schedule(
    client: &Client,
    services: &[Service],
    inputs: &[ServiceInputs],
    mut pending: Vec<usize>,
    opts: &Arc<RunOptions>,
    progress: &Progress,
    jobs: usize,
    outcomes: &mut HashMap<String, Outcome>,
    images: &mut BTreeMap<String, String>,
) {
    let mut running = JoinSet::new();
    loop {
        // Services whose dependency failed fail too, without building.
        pending.retain(|&i| {
            let svc = &services[i];
            let failed_dep = svc.depends_on.iter().find(|d| {
                matches!(
                    outcomes.get(*d),
                    Some(Outcome::Failed { .. } | Outcome::DependencyFailed { .. })
                )
            });
            match failed_dep {
                Some(dep) => {
                    outcomes.insert(
                        svc.name.clone(),
                        Outcome::DependencyFailed {
                            dependency: dep.clone(),
                        },
                    );
                    false
                }
                None => true,
            }
        });
        while running.len() < jobs {
            let Some(pos) = pending.iter().position(|&i| {
                services[i]
                    .depends_on
                    .iter()
                    .all(|d| images.contains_key(d))
            }) else {
                break;
            };
            let i = pending.remove(pos);
            let svc = services[i].clone();
            let deps: Vec<(Service, String)> = svc
                .depends_on
                .iter()
                .map(|d| {
                    (
                        services
                            .iter()
                            .find(|s| &s.name == d)
                            .expect("dependencies are selected")
                            .clone(),
                        images[d].clone(),
                    )
                })
                .collect();
            let (client, opts) = (client.clone(), opts.clone());
            let digest = inputs[i].digest;
            let sp = progress.service(&svc.name);
            running.spawn(async move {
                let started = Instant::now();
                let result = build_one(&client, &svc, digest, &deps, &opts, sp).await;
                (svc.name.clone(), result, started.elapsed())
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (name, result, elapsed) = match joined {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("a build task failed: {e}");
                continue;
            }
        };
        match result {
            Ok((image, promoted, cache_hits)) => {
                images.insert(name.clone(), image.clone());
                outcomes.insert(
                    name,
                    Outcome::Built {
                        image,
                        promoted,
                        elapsed,
                        cache_hits,
                    },
                );
            }
            Err(error) => {
                outcomes.insert(name, Outcome::Failed { error, elapsed });
            }
        }
    }
}

/// A stable key per machine and context, so the daemon can reuse the previous upload of this context.
fn shared_key(svc: &Service) -> String {
    let machine = std::fs::read("/etc/machine-id").unwrap_or_default();
    let mut h = blake3::Hasher::new();
    h.update(&machine);
    h.update(svc.context.as_os_str().as_encoded_bytes());
    Digest(*h.finalize().as_bytes()).short()
}

/// The solve for one service.
fn solve_spec(
    svc: &Service,
    digest: &Digest,
    deps: &[(Service, String)],
    opts: &RunOptions,
) -> SolveSpec {
    let reg = &opts.registry;
    let insecure = || [("registry.insecure".to_owned(), "true".to_owned())];
    let mut attrs = BTreeMap::new();
    let filename = svc
        .dockerfile
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    attrs.insert("filename".to_owned(), filename);
    if let Some(t) = &svc.target {
        attrs.insert("target".to_owned(), t.clone());
    }
    if !svc.platforms.is_empty() {
        attrs.insert("platform".to_owned(), svc.platforms.join(","));
    }
    for (k, v) in &svc.build_args {
        attrs.insert(format!("build-arg:{k}"), v.clone());
    }
    for (k, v) in &svc.labels {
        attrs.insert(format!("label:{k}"), v.clone());
    }
    // A dependency is pinned by digest (built in this run or found by its content tag), so `FROM <its image>` never
    // pulls a stale tag.
    for (dep, image) in deps {
        let pinned = format!("docker-image://{}/{}@{image}", reg.url, dep.image);
        attrs.insert(format!("context:{}/{}", reg.url, dep.image), pinned.clone());
        for tag in &dep.tags {
            attrs.insert(
                format!("context:{}", reg.reference(&dep.image, tag)),
                pinned.clone(),
            );
        }
    }
    let mut entitlements = Vec::new();
    match opts.network {
        NetworkMode::Default => {}
        NetworkMode::Host => {
            attrs.insert("force-network-mode".to_owned(), "host".to_owned());
            entitlements.push("network.host".to_owned());
        }
        NetworkMode::None => {
            attrs.insert("force-network-mode".to_owned(), "none".to_owned());
        }
    }
    // Pushing: only the content tag; the requested tags are moved after the build succeeded.
    let names: Vec<String> = if opts.push {
        vec![reg.reference(&svc.image, &content_tag(digest))]
    } else {
        svc.tags
            .iter()
            .map(|t| reg.reference(&svc.image, t))
            .collect()
    };
    let mut exporter: BTreeMap<String, String> = [
        ("name".to_owned(), names.join(",")),
        ("push".to_owned(), opts.push.to_string()),
    ]
    .into();
    let cache_ref = reg.reference(&svc.image, &svc.cache_tag);
    let mut cache_export: BTreeMap<String, String> = [
        ("ref", cache_ref.as_str()),
        ("mode", "max"),
        ("image-manifest", "true"),
        ("oci-mediatypes", "true"),
        ("ignore-error", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut cache_import: BTreeMap<String, String> = [("ref".to_owned(), cache_ref.clone())].into();
    if reg.insecure {
        exporter.extend(insecure());
        cache_export.extend(insecure());
        cache_import.extend(insecure());
    }
    SolveSpec {
        reference: new_id(),
        frontend: "dockerfile.v0".to_owned(),
        frontend_attrs: attrs,
        exporters: vec![ExporterSpec {
            kind: "image".to_owned(),
            attrs: exporter,
        }],
        cache_exports: match opts.cache_to {
            CacheMode::Registry if opts.push => vec![CacheEntry {
                kind: "registry".to_owned(),
                attrs: cache_export,
            }],
            _ => Vec::new(),
        },
        cache_imports: match opts.cache_from {
            CacheMode::Registry => vec![CacheEntry {
                kind: "registry".to_owned(),
                attrs: cache_import,
            }],
            CacheMode::None => Vec::new(),
        },
        entitlements,
    }
}

/// Builds one service, then (when pushing) verifies its content tag and moves the requested tags to it. Returns
/// the image digest, the tags moved and the cache hits, or the error to show.
async fn build_one(
    client: &Client,
    svc: &Service,
    digest: Digest,
    deps: &[(Service, String)],
    opts: &RunOptions,
    mut progress: ServiceProgress,
) -> Result<(String, Vec<String>, (usize, usize)), String> {
    let dockerfile_dir: PathBuf = svc
        .dockerfile
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| svc.context.clone());
    let dirs = HashMap::from([
        (LOCAL_CONTEXT.to_owned(), svc.context.clone()),
        (LOCAL_DOCKERFILE.to_owned(), dockerfile_dir),
    ]);
    let session =
        Session::new(dirs, opts.keychain.clone(), shared_key(svc)).hide_own(opts.own.clone());
    let session_id = session.id().to_owned();
    let mut spec = solve_spec(svc, &digest, deps, opts);
    // Import the registry cache only when it exists: a missing one is normal on a first build, and BuildKit would
    // report it as a failed step.
    if !spec.cache_imports.is_empty() {
        let cache_ref = opts.registry.reference(&svc.image, &svc.cache_tag);
        if !matches!(opts.client.lookup(&cache_ref).await, Ok(Some(_))) {
            spec.cache_imports.clear();
        }
    }

    // The status stream is followed on its own task; its handle is kept and it is dropped if it outlives the build.
    let status = {
        let client = client.clone();
        let reference = spec.reference.clone();
        tokio::spawn(async move {
            if let Ok(mut stream) = client.status(&reference).await {
                while let Some(Ok(update)) = stream.next().await {
                    progress.update(&update);
                }
            }
            progress
        })
    };
    let result = tokio::select! {
        r = client.solve(&spec, &session_id) => r.map_err(|e| e.to_string()),
        r = client.run_session(session) => Err(match r {
            Ok(()) => "the daemon closed the session before the build finished".to_owned(),
            Err(e) => format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()),
        }),
    };
    let mut status = status;
    let progress = match tokio::time::timeout(STATUS_DRAIN, &mut status).await {
        Ok(Ok(p)) => Some(p),
        Ok(Err(_)) => None,
        Err(_) => {
            status.abort();
            None
        }
    };
    let cache_hits = progress
        .as_ref()
        .map(|p| p.state().cache_hits())
        .unwrap_or_default();
    let result = result.and_then(|outcome| {
        outcome
            .image_digest()
            .map(str::to_owned)
            .ok_or_else(|| "BuildKit returned no image digest".to_owned())
    });
    let result = match result {
        Ok(image) if opts.push => {
            let source = opts.registry.reference(&svc.image, &content_tag(&digest));
            verify_and_promote(&opts.client, svc, &source, &image)
                .await
                .map(|promoted| (image, promoted, cache_hits))
        }
        Ok(image) => Ok((image, Vec::new(), cache_hits)),
        Err(e) => Err(e),
    };
    if let Some(p) = progress {
        p.finish(&result.as_ref().map(|_| ()).map_err(Clone::clone));
    }
    result
}

async fn verify_and_promote(
    client: &RegistryClient,
    svc: &Service,
    source: &str,
    image: &str,
) -> Result<Vec<String>, String> {
    match client.lookup(source).await {
        Ok(Some(found)) if found == image => {}
        Ok(Some(found)) => {
            return Err(format!(
                "the registry has {found} under {source}, not the image just built ({image})"
            ));
        }
        Ok(None) => {
            return Err(format!(
                "BuildKit reported a push, but the registry has no {source}"
            ));
        }
        Err(e) => return Err(format!("{e:#}")),
    }
    promote(client, svc, source, image)
        .await
        .map_err(|e| format!("{e}"))
}
