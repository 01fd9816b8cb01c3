//! `buildopt build`: hash, then build services through BuildKit in dependency order (independent ones in
//! parallel), push, and report. A failing service fails itself and its dependents; the others finish.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::task::JoinSet;

use super::{CACHE_DIR, ExitStatus, UsageError, hash_all, select};
use crate::auth::{DockerConfigKeychain, Keychain, MultiKeychain};
use crate::buildkit::{CacheEntry, Client, ExporterSpec, SolveSpec};
use crate::cli::args::{BuildArgs, CacheMode, NetworkMode, ProgressMode};
use crate::config::{Registry, Service, Workspace};
use crate::hash::{Digest, ServiceInputs};
use crate::printer::Printer;
use crate::progress::{Progress, ServiceProgress};
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
}

/// How one service ended.
#[derive(Debug)]
enum Outcome {
    Built { digest: String, elapsed: Duration },
    Failed { error: String },
    DependencyFailed { dependency: String },
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
    let services: Vec<Service> = select(ws, &args.services)?.into_iter().cloned().collect();
    let refs: Vec<&Service> = services.iter().collect();
    let inputs = hash_all(ws, &refs, printer)?;
    let network = args
        .network
        .unwrap_or(match ws.buildkit_network.as_deref() {
            Some("host") => NetworkMode::Host,
            Some("none") => NetworkMode::None,
            _ => NetworkMode::Default,
        });
    let opts = Arc::new(RunOptions {
        registry,
        push: !args.no_push,
        cache_to: args.cache_to,
        cache_from: args.cache_from,
        network,
        keychain: Arc::new(MultiKeychain(vec![Box::new(
            DockerConfigKeychain::from_env(),
        )])),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let client = super::daemon::connect(&args.daemon, Some(ws)).await?;
        let progress = Progress::new(progress, printer);
        tokio::select! {
            outcomes = schedule(&client, &services, &inputs, &opts, &progress, usize::from(args.jobs)) => Ok(Some(outcomes)),
            _ = tokio::signal::ctrl_c() => Ok::<_, anyhow::Error>(None),
        }
    });
    // Pending pushes or RPCs must not hold the exit (the daemon cancels a build whose Solve call is gone).
    runtime.shutdown_background();
    let Some(outcomes) = result? else {
        writeln!(
            printer.errors(),
            "error: interrupted; builds in progress were cancelled and no tag was pushed after that"
        )?;
        return Ok(ExitStatus::Failure);
    };

    let store = StateStore::new(&ws.root.join(CACHE_DIR));
    let mut out = printer.stderr();
    let width = services.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut failed = false;
    for (svc, inp) in services.iter().zip(&inputs) {
        match &outcomes[&svc.name] {
            Outcome::Built { digest, elapsed } => {
                if let Err(e) = store.save(&svc.name, &ServiceState::of(inp)) {
                    tracing::warn!("could not record the local state of `{}`: {e}", svc.name);
                }
                writeln!(
                    out,
                    "built   {:width$}  {digest}  {:.1}s",
                    svc.name,
                    elapsed.as_secs_f64()
                )?;
            }
            Outcome::Failed { error } => {
                failed = true;
                writeln!(out, "failed  {:width$}  {error}", svc.name)?;
            }
            Outcome::DependencyFailed { dependency } => {
                failed = true;
                writeln!(
                    out,
                    "skipped {:width$}  dependency `{dependency}` failed",
                    svc.name
                )?;
            }
        }
    }
    Ok(if failed {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    })
}

/// Runs the builds: a service starts once all its dependencies are built, at most `jobs` at a time.
async fn schedule(
    client: &Client,
    services: &[Service],
    inputs: &[ServiceInputs],
    opts: &Arc<RunOptions>,
    progress: &Progress,
    jobs: usize,
) -> HashMap<String, Outcome> {
    let mut outcomes: HashMap<String, Outcome> = HashMap::new();
    let mut digests: BTreeMap<String, String> = BTreeMap::new();
    let mut pending: Vec<usize> = (0..services.len()).collect();
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
                    .all(|d| digests.contains_key(d))
            }) else {
                break;
            };
            let i = pending.remove(pos);
            let svc = services[i].clone();
            let deps: BTreeMap<String, (Service, String)> = svc
                .depends_on
                .iter()
                .map(|d| {
                    let dep = services
                        .iter()
                        .find(|s| &s.name == d)
                        .expect("dependencies are selected")
                        .clone();
                    (d.clone(), (dep, digests[d].clone()))
                })
                .collect();
            let (client, opts) = (client.clone(), opts.clone());
            let input_digest = inputs[i].digest;
            let sp = progress.service(&svc.name);
            running.spawn(async move {
                let started = Instant::now();
                let result = build_one(&client, &svc, input_digest, &deps, &opts, sp).await;
                (
                    svc.name.clone(),
                    result.map(|digest| (digest, started.elapsed())),
                )
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (name, result) = match joined {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("a build task failed: {e}");
                continue;
            }
        };
        match result {
            Ok((digest, elapsed)) => {
                digests.insert(name.clone(), digest.clone());
                outcomes.insert(name, Outcome::Built { digest, elapsed });
            }
            Err(error) => {
                outcomes.insert(name, Outcome::Failed { error });
            }
        }
    }
    outcomes
}

/// `registry/image:tag`.
fn image_ref(registry: &Registry, image: &str, tag: &str) -> String {
    format!("{}/{image}:{tag}", registry.url)
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
    deps: &BTreeMap<String, (Service, String)>,
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
    // A dependency built in this run is pinned by digest, so `FROM <its image>` never pulls a stale tag.
    for (dep, digest) in deps.values() {
        let pinned = format!("docker-image://{}/{}@{digest}", reg.url, dep.image);
        attrs.insert(format!("context:{}/{}", reg.url, dep.image), pinned.clone());
        for tag in &dep.tags {
            attrs.insert(
                format!("context:{}", image_ref(reg, &dep.image, tag)),
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
    let names: Vec<String> = svc
        .tags
        .iter()
        .map(|t| image_ref(reg, &svc.image, t))
        .collect();
    let mut exporter: BTreeMap<String, String> = [
        ("name".to_owned(), names.join(",")),
        ("push".to_owned(), opts.push.to_string()),
    ]
    .into();
    let cache_ref = image_ref(reg, &svc.image, &svc.cache_tag);
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

/// Builds one service; returns the pushed image digest, or the error to show.
async fn build_one(
    client: &Client,
    svc: &Service,
    _input: Digest,
    deps: &BTreeMap<String, (Service, String)>,
    opts: &RunOptions,
    mut progress: ServiceProgress,
) -> Result<String, String> {
    let dockerfile_dir: PathBuf = svc
        .dockerfile
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| svc.context.clone());
    let dirs = HashMap::from([
        (LOCAL_CONTEXT.to_owned(), svc.context.clone()),
        (LOCAL_DOCKERFILE.to_owned(), dockerfile_dir),
    ]);
    let session = Session::new(dirs, opts.keychain.clone(), shared_key(svc));
    let session_id = session.id().to_owned();
    let spec = solve_spec(svc, deps, opts);

    // The status stream is followed on its own task; its handle is kept and it is aborted if it outlives the build.
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
    let progress = match tokio::time::timeout(STATUS_DRAIN, status).await {
        Ok(Ok(p)) => Some(p),
        _ => None,
    };
    let result = result.and_then(|outcome| match outcome.image_digest() {
        Some(d) => Ok(d.to_owned()),
        None => Err("BuildKit returned no image digest".to_owned()),
    });
    if let Some(p) = progress {
        p.finish(&result.as_ref().map(|_| ()).map_err(Clone::clone));
    }
    result
}
