//! The input digest of a service: a blake3 hash, under a versioned derive key, of everything BuildKit would use to
//! build it. See "How skipping works" in the README for the exact definition; changing it needs a new key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod pipeline;

pub use pipeline::EntriesDigest;
use pipeline::{Listed, hash_walk};

use crate::config::{Inputs, Service};
use crate::context::{
    ContextError, ContextFilter, DockerIgnore, Entry, EntryKind, walk, walk_each,
};
use crate::digest::Digest;
use crate::error::{Classify, ErrorKind};
use crate::index::Index;

/// Derive key of the service digest. Bump on any change to what is hashed or how. (v2: the digest covers the
/// context paths the Dockerfile reads, see [`Reads`]. v3: the entries go in as an [`EntriesDigest`], their count
/// after them, so that a digest can be computed while the context is walked, without holding it.)
pub const SERVICE_KEY: &str = "buildopt 2026-12-02 service inputs v3";
/// Derive key of one context entry's digest.
pub const ENTRY_KEY: &str = "buildopt 2026-11-28 context entry v1";

/// Why a service could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The context could not be selected.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A file kept changing while it was read.
    #[error(
        "{} changed each time it was hashed ({attempts} attempts); stop whatever writes to it, or add it to .dockerignore",
        path.display()
    )]
    Unstable {
        /// The file.
        path: PathBuf,
        /// How often it was read.
        attempts: usize,
    },
    /// A file could not be read.
    #[error("cannot read {}; fix its permissions or add it to .dockerignore", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Everything known about one service's inputs after hashing.
#[derive(Debug, Clone)]
pub struct ServiceInputs {
    /// The input digest: over what the build reads (see [`Reads`]).
    pub digest: Digest,
    /// The digest over the whole context (equal to `digest` when the build reads the whole context).
    pub context_digest: Digest,
    /// What `digest` covers.
    pub reads: Reads,
    /// The indices in `entries` of what the build reads, in send order.
    pub read: Vec<usize>,
    /// The prediction from the Dockerfile (None with `inputs = "context"`).
    pub prediction: Option<crate::dockerfile::Prediction>,
    /// The whole context's entries (after `.dockerignore`) in send order.
    pub entries: Vec<Entry>,
    /// Per entry (same order), the digest of that entry.
    pub entry_digests: Vec<Digest>,
    /// Per entry (same order), the blake3 of its content (regular files only).
    pub contents: Vec<Option<Digest>>,
    /// The `.dockerignore` used.
    pub ignore: DockerIgnore,
    /// Digest of the Dockerfile content.
    pub dockerfile: Digest,
    /// Digest of target, build args, platforms and labels.
    pub params: Digest,
    /// The same parameters one by one (`build-arg:NAME`, `label:NAME`, `target`, `platforms`,
    /// `source-date-epoch`), each value as a digest: what says *which* parameter changed.
    pub param_digests: BTreeMap<String, Digest>,
    /// The digests of direct dependencies, by name.
    pub deps: BTreeMap<String, Digest>,
    /// The named local contexts (`contexts = { NAME = "DIR" }`), each hashed whole.
    pub named: Vec<NamedLocal>,
}

/// A named local build context, hashed whole after its own `.dockerignore` (the frontend sends all of it that a
/// `COPY --from=NAME` or `FROM NAME` can read; no prediction narrows it).
#[derive(Debug, Clone)]
pub struct NamedLocal {
    /// The name the Dockerfile uses.
    pub name: String,
    /// The session's local directory name it is served under.
    pub local: String,
    /// The directory.
    pub dir: PathBuf,
    /// Its `.dockerignore`.
    pub ignore: DockerIgnore,
    /// Its entries after the `.dockerignore`, in send order.
    pub entries: Vec<Entry>,
    /// Per entry, the blake3 of its content (regular files).
    pub contents: Vec<Option<Digest>>,
    /// The digest over its entries.
    pub digest: Digest,
}

/// The session's local name for the named context `name`: fixed per name, never `context` or `dockerfile`, and safe
/// as gRPC metadata whatever the name holds.
pub fn named_local(name: &str) -> String {
    format!("named-{}", &Digest::of(name.as_bytes()).to_string()[..16])
}

/// Hashes the named local contexts of `svc`; with `keep`, keeping their entries (for the session to check what it
/// sends), else only their digests.
fn hash_named(
    svc: &Service,
    index: &Index,
    own: &[PathBuf],
    keep: bool,
) -> Result<Vec<NamedLocal>, HashError> {
    let mut out = Vec::new();
    for (name, dir) in named_dirs(svc) {
        let ignore = DockerIgnore::load_dir(dir)?;
        let (digest, entries, contents) = if keep {
            let mut listed = Listed::default();
            hash_context(dir, &ignore, own, index, &mut listed)?;
            let digest = named_digest(&EntriesDigest::of(&listed.digests));
            (digest, listed.entries, listed.contents)
        } else {
            let mut fold = EntriesDigest::default();
            hash_context(dir, &ignore, own, index, &mut fold)?;
            (named_digest(&fold), Vec::new(), Vec::new())
        };
        out.push(NamedLocal {
            name: name.clone(),
            local: named_local(name),
            dir: dir.clone(),
            ignore,
            entries,
            contents,
            digest,
        });
    }
    Ok(out)
}

/// The digests of the direct dependencies of `svc`, by name, from `deps` (which holds every one of them).
fn own_deps(svc: &Service, deps: &BTreeMap<String, Digest>) -> BTreeMap<String, Digest> {
    svc.depends_on
        .iter()
        .map(|name| (name.clone(), deps[name]))
        .collect()
}

/// The Dockerfile of `svc`.
fn read_dockerfile(svc: &Service) -> Result<Vec<u8>, HashError> {
    fs_err::read(&svc.dockerfile).map_err(|source| HashError::Read {
        path: svc.dockerfile.clone(),
        source,
    })
}

/// The local directories among the named contexts of `svc`, by name.
fn named_dirs(svc: &Service) -> impl Iterator<Item = (&String, &PathBuf)> {
    svc.contexts.iter().filter_map(|(name, ctx)| match ctx {
        crate::config::NamedContext::Local(dir) => Some((name, dir)),
        _ => None,
    })
}

/// The digest of a named local context from its entries.
fn named_digest(entries: &EntriesDigest) -> Digest {
    let mut f = Fields::new(SERVICE_KEY);
    f.bytes(b"named local")
        .bytes(&entries.digest().0)
        .u64(entries.count());
    f.finish()
}

/// Walks and hashes the context `dir` after `ignore` into `sink`, saving its index file.
fn hash_context(
    dir: &Path,
    ignore: &DockerIgnore,
    own: &[PathBuf],
    index: &Index,
    sink: &mut (dyn pipeline::Sink + Send),
) -> Result<(), HashError> {
    let filter = ignore.filter()?.hide_own(dir, own);
    hash_filtered(dir, &filter, &ignore.patterns, index, true, sink)
}

/// Walks and hashes `dir` through `filter` into `sink`, with the index file of `dir` and ignore patterns `patterns`
/// (saved only with `save`: a walk of part of a context must not replace the records of the whole).
fn hash_filtered(
    dir: &Path,
    filter: &ContextFilter,
    patterns: &[Vec<u8>],
    index: &Index,
    save: bool,
    sink: &mut (dyn pipeline::Sink + Send),
) -> Result<(), HashError> {
    let mut pass = index.pass(dir, &index_scope(patterns), save);
    hash_walk(dir, filter, &mut pass, sink)?;
    match pass.finish() {
        Ok(None) => {}
        Ok(Some(why)) => tracing::warn!("rebuilding the local hash index: {why}"),
        Err(e) => tracing::warn!("could not save the local hash index: {e}"),
    }
    Ok(())
}

/// A length-prefixed field writer, so that no two different inputs can encode to the same bytes.
struct Fields(blake3::Hasher);

impl Fields {
    fn new(key: &str) -> Fields {
        Fields(blake3::Hasher::new_derive_key(key))
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.update(&v.to_le_bytes());
        self
    }
    fn finish(&self) -> Digest {
        Digest(*self.0.finalize().as_bytes())
    }
}

/// Which part of the context a service's digest covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "covers", rename_all = "lowercase")]
pub enum Reads {
    /// The whole context after `.dockerignore`, and why (`inputs = "context"`, `COPY . .`, a fallback).
    Context {
        /// In words.
        why: String,
    },
    /// The paths the Dockerfile frontend will ask for (its `FollowPaths`), as predicted from the Dockerfile.
    Paths {
        /// The predicted follow paths, sorted and cleaned as the frontend sends them.
        followpaths: Vec<String>,
    },
    /// The build reads nothing from the context.
    Nothing,
}

/// Selects and hashes the context of `svc`, then folds in its Dockerfile, parameters and the digests of its
/// dependencies (`deps` must hold every name in `svc.depends_on`). `own` are buildopt's state directories, never
/// part of a context.
///
/// Two digests come out: one over the whole context (`context_digest`), and the input digest (`digest`) over what
/// the build reads, as predicted from the Dockerfile (the same when it reads the whole context). The whole context
/// is always hashed (the local index makes that cheap) so that a misprediction can fall back to it and `plan` can
/// say which changed files the build does not read.
pub fn hash_service(
    svc: &Service,
    deps: &BTreeMap<String, Digest>,
    index: &Index,
    own: &[PathBuf],
) -> Result<ServiceInputs, HashError> {
    let ignore = DockerIgnore::load(&svc.context, &svc.dockerfile)?;
    let mut listed = Listed::default();
    hash_context(&svc.context, &ignore, own, index, &mut listed)?;
    let Listed {
        entries,
        contents,
        digests: entry_digests,
    } = listed;

    let dockerfile_bytes = read_dockerfile(svc)?;
    let dockerfile = Digest::of(&dockerfile_bytes);
    let named = hash_named(svc, index, own, true)?;
    let params = params_digest(svc, &named);
    let param_digests = param_digests(svc, &named);
    let own_deps = own_deps(svc, deps);

    let (reads, read, prediction) = what_is_read(svc, &dockerfile_bytes, &ignore, &entries, own);

    let context_digest = service_digest(
        &Reads::Context { why: String::new() },
        &EntriesDigest::of(&entry_digests),
        &dockerfile,
        &params,
        &own_deps,
    );
    let digest = match &reads {
        Reads::Context { .. } => context_digest,
        _ => service_digest(
            &reads,
            &EntriesDigest::of(read.iter().map(|&i| &entry_digests[i])),
            &dockerfile,
            &params,
            &own_deps,
        ),
    };
    Ok(ServiceInputs {
        digest,
        context_digest,
        reads,
        read,
        prediction,
        entries,
        entry_digests,
        contents,
        ignore,
        dockerfile,
        params,
        param_digests,
        deps: own_deps,
        named,
    })
}

/// The input digest of `svc`, as [`hash_service`] computes it, without holding its context: the entries are
/// hashed as the walk produces them and folded away (issue 12: memory stays flat however large the context). For
/// `buildopt hash`; a build needs the lists [`hash_service`] keeps.
pub fn digest_service(
    svc: &Service,
    deps: &BTreeMap<String, Digest>,
    index: &Index,
    own: &[PathBuf],
) -> Result<Digest, HashError> {
    let ignore = DockerIgnore::load(&svc.context, &svc.dockerfile)?;
    // The whole context first, as hash_service does: it keeps the index of the whole context current.
    let mut whole = EntriesDigest::default();
    hash_context(&svc.context, &ignore, own, index, &mut whole)?;
    let dockerfile_bytes = read_dockerfile(svc)?;
    let named = hash_named(svc, index, own, false)?;
    let (dockerfile, params) = (Digest::of(&dockerfile_bytes), params_digest(svc, &named));
    let own_deps = own_deps(svc, deps);
    let digest = |reads: &Reads, entries: &EntriesDigest| {
        service_digest(reads, entries, &dockerfile, &params, &own_deps)
    };
    let (reads, _) = predicted(svc, &dockerfile_bytes);
    let followpaths = match &reads {
        Reads::Context { .. } => return Ok(digest(&reads, &whole)),
        Reads::Nothing => return Ok(digest(&reads, &EntriesDigest::default())),
        Reads::Paths { followpaths } => followpaths,
    };
    // What the session sends for the follow paths, walked again through its own filter (the index is read, not
    // saved: these are part of the context); the whole context when the paths do not resolve, as hash_service.
    let context = || digest(&Reads::Context { why: String::new() }, &whole);
    let Some(filter) = read_filter(svc, &ignore, followpaths, own) else {
        return Ok(context());
    };
    let mut read = EntriesDigest::default();
    match hash_filtered(
        &svc.context,
        &filter,
        &ignore.patterns,
        index,
        false,
        &mut read,
    ) {
        Ok(()) => Ok(digest(&reads, &read)),
        Err(HashError::Context(_)) => Ok(context()),
        Err(e) => Err(e),
    }
}

/// What the build of `svc` reads of its context as predicted from its Dockerfile (unless `inputs = "context"`), and
/// the prediction.
fn predicted(svc: &Service, dockerfile: &[u8]) -> (Reads, Option<crate::dockerfile::Prediction>) {
    let prediction = match svc.inputs {
        Inputs::Context => None,
        Inputs::Dockerfile => Some(predict_service(svc, dockerfile)),
    };
    let reads = match prediction.as_ref().map(|p| (p, p.reads())) {
        None => Reads::Context {
            why: "`inputs = \"context\"`".to_owned(),
        },
        Some((p, crate::dockerfile::Reads::Whole)) => Reads::Context {
            why: match p.fallback() {
                Some(f) => format!("the Dockerfile is not fully understood ({f})"),
                None => "the build reads the whole context".to_owned(),
            },
        },
        Some((_, crate::dockerfile::Reads::Nothing)) => Reads::Nothing,
        Some((_, crate::dockerfile::Reads::Paths(paths))) => Reads::Paths {
            followpaths: paths.iter().map(|p| p.path.clone()).collect(),
        },
    };
    (reads, prediction)
}

/// What the build of `svc` reads of its context (`entries`, the whole context after `.dockerignore`): the
/// prediction from the Dockerfile (unless `inputs = "context"`), and the indices of the entries it covers.
fn what_is_read(
    svc: &Service,
    dockerfile: &[u8],
    ignore: &DockerIgnore,
    entries: &[Entry],
    own: &[PathBuf],
) -> (Reads, Vec<usize>, Option<crate::dockerfile::Prediction>) {
    let (mut reads, prediction) = predicted(svc, dockerfile);
    // The entries the build reads: what the session will send for those follow paths (the same filter), found in
    // the whole context's list so that their digests are the ones computed for it.
    let read: Vec<usize> = match &reads {
        Reads::Context { .. } => (0..entries.len()).collect(),
        Reads::Nothing => Vec::new(),
        Reads::Paths { followpaths } => {
            match read_entries(svc, ignore, entries, followpaths, own) {
                Some(read) => read,
                None => {
                    reads = Reads::Context {
                        why: "the entries the Dockerfile reads changed while they were listed"
                            .to_owned(),
                    };
                    (0..entries.len()).collect()
                }
            }
        }
    };
    (reads, read, prediction)
}

/// Hands the entries of `svc` that its input digest covers (all of the context after `.dockerignore` with
/// `whole`) to `visit` in send order, as the walk finds them (nothing is held), and says what they are; for `hash
/// --list`, without hashing anything. Follow paths are listed as the session sends them: the walk through their
/// filter.
pub fn list_entries<E: From<HashError> + From<ContextError>>(
    svc: &Service,
    own: &[PathBuf],
    whole: bool,
    visit: impl FnMut(Entry) -> Result<(), E>,
) -> Result<Reads, E> {
    let ignore = DockerIgnore::load(&svc.context, &svc.dockerfile)?;
    let reads = if whole {
        Reads::Context {
            why: "the whole context".to_owned(),
        }
    } else {
        predicted(svc, &read_dockerfile(svc)?).0
    };
    let (reads, filter) = match reads {
        Reads::Nothing => return Ok(reads),
        Reads::Paths { ref followpaths } => match read_filter(svc, &ignore, followpaths, own) {
            Some(filter) => (reads, filter),
            None => {
                let why = "the follow paths do not resolve".to_owned();
                let whole = ignore.filter()?.hide_own(&svc.context, own);
                (Reads::Context { why }, whole)
            }
        },
        Reads::Context { .. } => {
            let whole = ignore.filter()?.hide_own(&svc.context, own);
            (reads, whole)
        }
    };
    walk_each(&svc.context, &filter, visit)?;
    Ok(reads)
}

/// The input digest: what is covered (whole context, follow paths, nothing), the covered entries' digests, the
/// Dockerfile, the parameters and the dependencies' digests.
fn service_digest(
    reads: &Reads,
    entries: &EntriesDigest,
    dockerfile: &Digest,
    params: &Digest,
    deps: &BTreeMap<String, Digest>,
) -> Digest {
    let mut f = Fields::new(SERVICE_KEY);
    match reads {
        Reads::Context { .. } => {
            f.bytes(b"context");
        }
        Reads::Nothing => {
            f.bytes(b"nothing");
        }
        Reads::Paths { followpaths } => {
            f.bytes(b"paths").u64(followpaths.len() as u64);
            for p in followpaths {
                f.bytes(p.as_bytes());
            }
        }
    }
    f.bytes(&entries.digest().0).u64(entries.count());
    f.0.update(&dockerfile.0);
    f.0.update(&params.0);
    f.u64(deps.len() as u64);
    for (name, d) in deps {
        f.bytes(name.as_bytes()).bytes(&d.0);
    }
    f.finish()
}

/// The prediction for every platform of `svc` (one when it names none); platforms that would read different paths
/// fall back to the whole context.
fn predict_service(svc: &Service, dockerfile: &[u8]) -> crate::dockerfile::Prediction {
    use crate::dockerfile::{Fallback, FallbackReason, PredictOptions, Prediction, predict_with};
    let options = |platform| PredictOptions {
        target: svc.target.as_deref(),
        build_args: &svc.build_args,
        build_platform: None,
        target_platform: platform,
    };
    if svc.platforms.len() <= 1 {
        return predict_with(
            dockerfile,
            &options(svc.platforms.first().map(String::as_str)),
        );
    }
    let all: Vec<Prediction> = svc
        .platforms
        .iter()
        .map(|p| predict_with(dockerfile, &options(Some(p))))
        .collect();
    if all.windows(2).all(|w| w[0] == w[1]) {
        all.into_iter().next().expect("two or more platforms")
    } else {
        Prediction::Fallback(Fallback {
            line: None,
            instruction: None,
            reason: FallbackReason::Unsupported(
                "the platforms of this service read different context paths".to_owned(),
            ),
        })
    }
}

/// The indices, in `entries` (the whole context), of what the session sends for `followpaths`; None when the two
/// walks disagree (the tree changed in between).
fn read_entries(
    svc: &Service,
    ignore: &DockerIgnore,
    entries: &[Entry],
    followpaths: &[String],
    own: &[PathBuf],
) -> Option<Vec<usize>> {
    let sent = walk(&svc.context, &read_filter(svc, ignore, followpaths, own)?).ok()?;
    let position: std::collections::HashMap<&[u8], usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.as_slice(), i))
        .collect();
    sent.iter()
        .map(|e| position.get(e.path.as_slice()).copied())
        .collect()
}

/// The filter of what the session sends of the context of `svc` for `followpaths`; None when the follow paths do
/// not resolve (the tree changed meanwhile).
fn read_filter(
    svc: &Service,
    ignore: &DockerIgnore,
    followpaths: &[String],
    own: &[PathBuf],
) -> Option<ContextFilter> {
    let follow: Vec<Vec<u8>> = followpaths.iter().map(|p| p.as_bytes().to_vec()).collect();
    let filter =
        crate::context::transfer_filter(&svc.context, &[], &ignore.patterns, &follow).ok()?;
    Some(filter.hide_own(&svc.context, own))
}

/// The context of `svc` as BuildKit gets it: its `.dockerignore` and the kept entries in send order. `own` are
/// buildopt's state directories, never part of a context.
pub fn select_context(
    svc: &Service,
    own: &[PathBuf],
) -> Result<(DockerIgnore, Vec<Entry>), ContextError> {
    let ignore = DockerIgnore::load(&svc.context, &svc.dockerfile)?;
    let entries = walk(&svc.context, &ignore.filter()?.hide_own(&svc.context, own))?;
    Ok((ignore, entries))
}

fn params_digest(svc: &Service, named: &[NamedLocal]) -> Digest {
    let mut f = Fields::new(SERVICE_KEY);
    f.bytes(b"params");
    match &svc.target {
        Some(t) => f.u64(1).bytes(t.as_bytes()),
        None => f.u64(0),
    };
    for map in [&svc.build_args, &svc.labels] {
        f.u64(map.len() as u64);
        for (k, v) in map {
            f.bytes(k.as_bytes()).bytes(v.as_bytes());
        }
    }
    f.u64(svc.platforms.len() as u64);
    for p in &svc.platforms {
        f.bytes(p.as_bytes());
    }
    // Only when set, so that the digests of services without it stay what they were.
    if let Some(epoch) = svc.source_date_epoch {
        f.bytes(b"source_date_epoch").u64(epoch);
    }
    if !svc.contexts.is_empty() {
        f.bytes(b"contexts").u64(svc.contexts.len() as u64);
        for (name, value) in named_values(svc, named) {
            f.bytes(name.as_bytes()).bytes(&value);
        }
    }
    if svc.attest.any() {
        f.bytes(b"attest");
        for a in [&svc.attest.provenance, &svc.attest.sbom] {
            match a {
                Some(p) => f.u64(1).bytes(p.as_bytes()),
                None => f.u64(0),
            };
        }
    }
    f.finish()
}

/// Each named context of `svc` as hashed: a kind-tagged value (the service, the remote source, or the digest of a
/// local directory's entries).
fn named_values(svc: &Service, named: &[NamedLocal]) -> Vec<(String, Vec<u8>)> {
    use crate::config::NamedContext;
    svc.contexts
        .iter()
        .map(|(name, ctx)| {
            let value = match ctx {
                NamedContext::Service(other) => [b"service:", other.as_bytes()].concat(),
                NamedContext::Remote(source) => [b"remote:", source.as_bytes()].concat(),
                NamedContext::Local(_) => {
                    let digest = named
                        .iter()
                        .find(|n| &n.name == name)
                        .map(|n| n.digest.0)
                        .unwrap_or_default();
                    [b"local:".as_slice(), &digest].concat()
                }
            };
            (name.clone(), value)
        })
        .collect()
}

/// Each parameter of [`params_digest`] on its own, keyed by what it is, its value as a digest (build args can be
/// sensitive, and the record of them is stored in the registry). Not part of the input digest: only used to say
/// which parameter changed.
pub(crate) fn param_digests(svc: &Service, named: &[NamedLocal]) -> BTreeMap<String, Digest> {
    let mut out = BTreeMap::new();
    let mut put = |key: String, v: &[u8]| {
        let mut f = Fields::new(SERVICE_KEY);
        f.bytes(b"param").bytes(key.as_bytes()).bytes(v);
        out.insert(key, f.finish());
    };
    if let Some(t) = &svc.target {
        put("target".to_owned(), t.as_bytes());
    }
    for (k, v) in &svc.build_args {
        put(format!("build-arg:{k}"), v.as_bytes());
    }
    for (k, v) in &svc.labels {
        put(format!("label:{k}"), v.as_bytes());
    }
    if !svc.platforms.is_empty() {
        put("platforms".to_owned(), svc.platforms.join("\n").as_bytes());
    }
    if let Some(epoch) = svc.source_date_epoch {
        put("source-date-epoch".to_owned(), &epoch.to_le_bytes());
    }
    for (name, value) in named_values(svc, named) {
        put(format!("context:{name}"), &value);
    }
    if let Some(p) = &svc.attest.provenance {
        put("attest:provenance".to_owned(), p.as_bytes());
    }
    if let Some(p) = &svc.attest.sbom {
        put("attest:sbom".to_owned(), p.as_bytes());
    }
    out
}

/// The digest of one entry: kind, path, permission bits, and the content hash (files) or link target (symlinks) or
/// device numbers (devices). A socket hashes as the empty regular file BuildKit receives for it. Times, owners and
/// inode numbers are left out, so a fresh clone of the same tree hashes the same.
pub fn entry_digest(e: &Entry, content: Option<&Digest>) -> Digest {
    // Deriving the key costs as much as hashing a short entry: derive it once.
    static KEYED: std::sync::OnceLock<blake3::Hasher> = std::sync::OnceLock::new();
    let mut f = Fields(KEYED.get_or_init(|| Fields::new(ENTRY_KEY).0).clone());
    match &e.kind {
        EntryKind::Dir => f.bytes(b"dir"),
        EntryKind::File | EntryKind::Socket => f.bytes(b"file"),
        EntryKind::Symlink(_) => f.bytes(b"symlink"),
        EntryKind::Fifo => f.bytes(b"fifo"),
        EntryKind::Device { char: true, .. } => f.bytes(b"char device"),
        EntryKind::Device { char: false, .. } => f.bytes(b"block device"),
    };
    f.bytes(&e.path).u64(u64::from(e.mode));
    match &e.kind {
        EntryKind::Dir | EntryKind::Fifo => {}
        EntryKind::File => {
            f.u64(e.size);
            f.0.update(&content.expect("files have a content hash").0);
        }
        EntryKind::Socket => {
            f.u64(0);
            f.0.update(blake3::hash(b"").as_bytes());
        }
        EntryKind::Symlink(target) => {
            f.bytes(target);
        }
        EntryKind::Device { major, minor, .. } => {
            f.u64(*major).u64(*minor);
        }
    }
    f.finish()
}

/// The index scope of a context walked with ignore patterns `patterns`: two services that share a directory but
/// ignore different files keep separate records instead of overwriting each other's.
fn index_scope(patterns: &[Vec<u8>]) -> Vec<u8> {
    let mut scope = Vec::new();
    for p in patterns {
        scope.extend_from_slice(&(p.len() as u64).to_le_bytes());
        scope.extend_from_slice(p);
    }
    scope
}

/// Reads beyond this size go through blake3's multi-threaded update, a buffer at a time.
const LARGE_READ: usize = 4 << 20;
/// How often a file that changes while it is read is read again before giving up.
const HASH_ATTEMPTS: usize = 3;

/// The status fields that tell whether a file changed between two looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStat {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
}

impl FileStat {
    fn of(meta: &std::fs::Metadata) -> FileStat {
        use std::os::unix::fs::MetadataExt;
        FileStat {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            ino: meta.ino(),
        }
    }

    fn from_entry(e: &Entry) -> FileStat {
        FileStat {
            size: e.size,
            mtime_ns: e.mtime_ns,
            ctime_ns: e.ctime_ns,
            ino: e.ino,
        }
    }

    fn apply(&self, e: &mut Entry) {
        e.size = self.size;
        e.mtime_ns = self.mtime_ns;
        e.ctime_ns = self.ctime_ns;
        e.ino = self.ino;
    }
}

/// The blake3 of a file's bytes and the status they belong to. The file is read through an ordinary buffer (a
/// memory map would kill the process with SIGBUS if the file were truncated meanwhile), and its status is compared
/// before and after: when the two differ, or the byte count does not match the size, the file changed while it was
/// read and is read again, a few times, before this gives up with an error naming it.
///
/// `seen` is the status the walk took, if any: it serves as the first "before" (a change since then shows in the
/// status after, ctime included), which saves a system call a file; reading stops at its size for the same reason.
pub(crate) fn hash_stable_file(
    path: &Path,
    mut seen: Option<FileStat>,
) -> Result<(Digest, FileStat), HashError> {
    use std::io::Read;
    let read_err = |source| HashError::Read {
        path: path.to_owned(),
        source,
    };
    for _ in 0..HASH_ATTEMPTS {
        let mut file = fs_err::File::open(path).map_err(read_err)?;
        let before = match seen.take() {
            Some(stat) => stat,
            None => FileStat::of(&file.metadata().map_err(read_err)?),
        };
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; (before.size as usize).clamp(1, LARGE_READ)];
        let mut total = 0u64;
        // Up to the size: a file that grew shows it in its status after, without one more read to see the end.
        while total < before.size {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            };
            if n >= LARGE_READ {
                hasher.update_rayon(&buf[..n]);
            } else {
                hasher.update(&buf[..n]);
            }
            total += n as u64;
        }
        let after = FileStat::of(&file.metadata().map_err(read_err)?);
        if before == after && total == after.size {
            return Ok((hasher.finalize().into(), after));
        }
        tracing::debug!(
            "{} changed while it was hashed; reading it again",
            path.display()
        );
    }
    Err(HashError::Unstable {
        path: path.to_owned(),
        attempts: HASH_ATTEMPTS,
    })
}

/// Files up to this size are first read without waiting on the disk (see [`hash_cached_file`]).
const CACHED_READ: u64 = 1 << 20;

/// The first attempt of [`hash_stable_file`] for a file the walk saw with status `seen`, made without waiting on the
/// disk: one `preadv2` with `RWF_NOWAIT`, which reads only what the page cache holds. None when that is not the
/// whole file, or the file changed, or the kernel cannot say (the caller then reads it with [`hash_stable_file`] on
/// the reader pool). On a fresh clone the files are in the page cache, and reading them on the threads that hash
/// spares the hop to the readers, which on 2 cores is a tenth of the run (issue 12).
pub(crate) fn hash_cached_file(
    path: &Path,
    seen: FileStat,
) -> Result<Option<(Digest, FileStat)>, HashError> {
    if seen.size > CACHED_READ {
        return Ok(None);
    }
    let read_err = |source| HashError::Read {
        path: path.to_owned(),
        source,
    };
    let file = fs_err::File::open(path).map_err(read_err)?;
    let mut buf = vec![0u8; seen.size as usize];
    if !buf.is_empty() {
        let read = rustix::io::preadv2(
            file.file(),
            &mut [std::io::IoSliceMut::new(&mut buf)],
            0,
            rustix::io::ReadWriteFlags::NOWAIT,
        );
        if read.map_or(true, |n| n as u64 != seen.size) {
            // EAGAIN (not all cached), EOPNOTSUPP or ENOSYS (cannot tell), a short read (partly cached, or
            // shrunk), any error: the ordinary read path reads it again and reports what is wrong.
            return Ok(None);
        }
    }
    let after = FileStat::of(&file.metadata().map_err(read_err)?);
    if after != seen {
        return Ok(None);
    }
    Ok(Some((Digest::of(&buf), after)))
}

/// Something the session sent is not what was hashed: the inputs changed while the build ran, so its image is not
/// the image of the hashed inputs and must not get their content tag.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} changed during the build ({what}); nothing was tagged. Run again to build what is there now",
    path.display()
)]
pub struct ChangedDuringBuild {
    /// The file, directory or link.
    pub path: PathBuf,
    /// How it differs from what was hashed.
    pub what: String,
}

impl Classify for ChangedDuringBuild {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Failure
    }
}

impl ServiceInputs {
    /// Checks that every entry the session sent for `svc` is the entry that was hashed: same kind, permission bits,
    /// link target and size, and for files the same content (the blake3 of the bytes that went out, when the daemon
    /// asked for them; otherwise the same size and modification time, which is what the daemon compared to reuse
    /// its earlier copy). The Dockerfile and the ignore file are checked against their hashes too.
    pub fn check_sent(
        &self,
        svc: &Service,
        transfers: &[crate::session::Transfer],
    ) -> Result<(), ChangedDuringBuild> {
        use std::collections::HashMap;
        let index = |entries: &'_ [Entry]| -> HashMap<Vec<u8>, usize> {
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.path.clone(), i))
                .collect()
        };
        let expected = index(&self.entries);
        // Per named local context: its entries, contents, position index and ignore file.
        let named: Vec<_> = self
            .named
            .iter()
            .map(|n| {
                let ignore = n
                    .ignore
                    .read_from
                    .as_ref()
                    .and_then(|p| std::fs::canonicalize(p).ok());
                (n, index(&n.entries), ignore)
            })
            .collect();
        let dockerfile = std::fs::canonicalize(&svc.dockerfile).ok();
        // The file the patterns were read from, as the daemon resolves the ignore file (not the host's kernel).
        let ignore = self
            .ignore
            .read_from
            .as_ref()
            .and_then(|p| std::fs::canonicalize(p).ok());
        for t in transfers {
            for (id, sent) in t.entries.iter().enumerate() {
                let abs = sent.abs_path(&t.root);
                let changed = |what: String| ChangedDuringBuild {
                    path: abs.clone(),
                    what,
                };
                let content = t.sent.get(&(id as u32));
                // A socket is sent as a file that cannot be opened, as fsutil sends it: empty by design.
                if let Some(c) = content
                    && let Some(error) = &c.error
                    && sent.kind != EntryKind::Socket
                {
                    return Err(changed(format!("it could not be sent: {error}")));
                }
                let named_here = named.iter().find(|(n, ..)| n.local == t.local);
                // Files known by their whole-file hash: the Dockerfile, the ignore files.
                let mut known = vec![
                    (&dockerfile, Some(self.dockerfile)),
                    (&ignore, self.ignore.digest),
                ];
                if let Some((n, _, named_ignore)) = named_here {
                    known.push((named_ignore, n.ignore.digest));
                }
                // Resolving a path costs system calls: only for names that can be one of these files.
                let named = |p: &Option<PathBuf>| {
                    p.as_ref()
                        .and_then(|p| p.file_name())
                        .is_some_and(|n| Some(n) == abs.file_name())
                };
                if sent.kind == EntryKind::File && known.iter().any(|(p, _)| named(p)) {
                    let real = std::fs::canonicalize(&abs).ok();
                    if let Some((_, Some(digest))) =
                        known.iter().find(|(p, _)| p.is_some() && **p == real)
                    {
                        if let Some(c) = content
                            && c.digest != *digest
                        {
                            return Err(changed(
                                "its content differs from what was hashed".to_owned(),
                            ));
                        }
                        continue;
                    }
                }
                let (entries, contents, expected) = match named_here {
                    Some((n, expected, _)) => (&n.entries, &n.contents, expected),
                    None if t.local == crate::session::LOCAL_CONTEXT => {
                        (&self.entries, &self.contents, &expected)
                    }
                    // Other files of the Dockerfile's directory are not read by the build.
                    None => continue,
                };
                let Some(&i) = expected.get(sent.path.as_slice()) else {
                    return Err(changed(
                        "it was sent but is not among the hashed inputs".to_owned(),
                    ));
                };
                let hashed = &entries[i];
                match (&hashed.kind, &sent.kind) {
                    (EntryKind::Symlink(a), EntryKind::Symlink(b)) if a != b => {
                        return Err(changed("its link target changed".to_owned()));
                    }
                    (a, b) if a != b => return Err(changed("its type changed".to_owned())),
                    _ => {}
                }
                if hashed.mode != sent.mode {
                    return Err(changed(format!(
                        "its mode changed from {:o} to {:o}",
                        hashed.mode, sent.mode
                    )));
                }
                if sent.kind == EntryKind::File {
                    match content {
                        Some(c) if c.size != hashed.size || Some(c.digest) != contents[i] => {
                            return Err(changed(format!(
                                "{} bytes were hashed, {} different bytes were sent",
                                hashed.size, c.size
                            )));
                        }
                        Some(_) => {}
                        None if sent.size != hashed.size || sent.mtime_ns != hashed.mtime_ns => {
                            return Err(changed(
                                "its size or modification time differs from when it was hashed"
                                    .to_owned(),
                            ));
                        }
                        None => {}
                    }
                }
            }
        }
        Ok(())
    }
}

impl Classify for HashError {
    fn kind(&self) -> ErrorKind {
        match self {
            HashError::Context(e) => e.kind(),
            HashError::Unstable { .. } | HashError::Read { .. } => ErrorKind::Failure,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::session::{SentContent, Transfer};

    /// A service `app` in a temporary directory, hashed.
    fn hashed(files: &[(&str, &str)]) -> (tempfile::TempDir, Service, ServiceInputs) {
        hashed_with_args(files, &[])
    }

    /// A service `app` of `files` in a temporary directory, with build args `args`, hashed.
    pub(crate) fn hashed_with_args(
        files: &[(&str, &str)],
        args: &[(&str, &str)],
    ) -> (tempfile::TempDir, Service, ServiceInputs) {
        let dir = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        let svc = Service {
            name: "app".into(),
            context: dir.path().to_owned(),
            dockerfile: dir.path().join("Dockerfile"),
            image: "app".into(),
            tags: vec!["latest".into()],
            cache_tag: "cache".into(),
            cache_mode: crate::config::CacheMode::Max,
            cache_from: vec!["cache".into()],
            target: None,
            build_args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            platforms: Vec::new(),
            depends_on: Vec::new(),
            labels: BTreeMap::new(),
            source_date_epoch: None,
            inputs: Inputs::Dockerfile,
            contexts: BTreeMap::new(),
            attest: Default::default(),
            outputs: Vec::new(),
            secrets: Vec::new(),
            ssh: Vec::new(),
            deploy: None,
        };
        let inputs = hash_service(&svc, &BTreeMap::new(), &Index::disabled(), &[]).unwrap();
        (dir, svc, inputs)
    }

    /// What the session would send now for local `context`, every file's content included.
    fn sent_now(svc: &Service) -> Transfer {
        let entries = walk(&svc.context, &crate::context::ContextFilter::all()).unwrap();
        let sent = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == EntryKind::File)
            .map(|(id, e)| {
                let bytes = std::fs::read(e.abs_path(&svc.context)).unwrap();
                let content = SentContent {
                    size: bytes.len() as u64,
                    digest: Digest::of(&bytes),
                    error: None,
                };
                (id as u32, content)
            })
            .collect();
        Transfer {
            local: crate::session::LOCAL_CONTEXT.to_owned(),
            root: svc.context.clone(),
            entries,
            sent,
            ..Transfer::default()
        }
    }

    #[test]
    fn what_was_sent_is_checked_against_what_was_hashed() {
        let (dir, svc, inputs) = hashed(&[("Dockerfile", "FROM scratch\n"), ("a.txt", "one")]);
        inputs.check_sent(&svc, &[sent_now(&svc)]).unwrap();

        // Edited after hashing, with the content asked for: caught by the content hash.
        std::fs::write(dir.path().join("a.txt"), "two").unwrap();
        let err = inputs.check_sent(&svc, &[sent_now(&svc)]).unwrap_err();
        assert!(
            err.to_string().contains("a.txt changed during the build"),
            "{err}"
        );

        // Not asked for (the daemon reused its copy) but changed since hashing: caught by size and time.
        let mut t = sent_now(&svc);
        t.sent.clear();
        assert!(inputs.check_sent(&svc, &[t]).is_err());
        std::fs::write(dir.path().join("a.txt"), "one").unwrap();

        // A new file that was not hashed.
        std::fs::write(dir.path().join("b.txt"), "new").unwrap();
        let err = inputs.check_sent(&svc, &[sent_now(&svc)]).unwrap_err();
        assert!(
            err.to_string().contains("not among the hashed inputs"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("b.txt")).unwrap();

        // A mode change.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("a.txt"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let err = inputs.check_sent(&svc, &[sent_now(&svc)]).unwrap_err();
        assert!(err.to_string().contains("its mode changed"), "{err}");

        // The Dockerfile, sent from its own directory.
        std::fs::set_permissions(
            dir.path().join("a.txt"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
        let mut df2 = sent_now(&svc);
        df2.local = crate::session::LOCAL_DOCKERFILE.to_owned();
        let err = inputs.check_sent(&svc, &[df2]).unwrap_err();
        assert!(
            err.to_string()
                .contains("Dockerfile changed during the build"),
            "{err}"
        );
    }

    #[test]
    fn a_stale_status_from_the_walk_is_read_again_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "now longer than it was").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let mut seen = FileStat::of(&meta);
        // What the walk saw before the file was rewritten: shorter and older.
        seen.size = 3;
        seen.ctime_ns -= 1;
        let (digest, stat) = hash_stable_file(&path, Some(seen)).unwrap();
        assert_eq!(digest, Digest::of(b"now longer than it was"));
        assert_eq!(stat, FileStat::of(&meta));
        // The read from the page cache does not trust it either, and gives the file to the ordinary read.
        assert!(hash_cached_file(&path, seen).unwrap().is_none());
        // With the true status (and the file just written, so cached) it reads the file itself.
        let (digest, stat) = hash_cached_file(&path, FileStat::of(&meta))
            .unwrap()
            .unwrap();
        assert_eq!(digest, Digest::of(b"now longer than it was"));
        assert_eq!(stat, FileStat::of(&meta));
    }

    /// The streaming digest (`buildopt hash`) is the digest a build computes from its lists, for every kind of
    /// coverage, with named local contexts, with and without the index, and over contexts larger than a chunk.
    #[test]
    fn the_streaming_digest_is_the_listed_one() {
        let many: Vec<(String, String)> = (0..3000)
            .map(|i| (format!("src/m{}/f{i}.rs", i % 7), format!("fn f{i}() {{}}")))
            .collect();
        let mut files: Vec<(&str, &str)> =
            many.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
        files.extend([
            ("README.md", "read me"),
            ("lib/a.txt", "a"),
            ("ctx/x", "x"),
            ("Dockerfile", "FROM scratch\n"),
        ]);
        let dockerfiles = [
            ("paths", "FROM scratch\nCOPY src/m3 /m3\nCOPY lib /lib\n"),
            ("context", "FROM scratch\nCOPY . /\n"),
            ("nothing", "FROM scratch\nENV A=1\n"),
            (
                "named",
                "FROM scratch\nCOPY --from=extra x /x\nCOPY src /src\n",
            ),
        ];
        for (what, dockerfile) in dockerfiles {
            let (dir, mut svc, _) = hashed_with_args(&files, &[("A", "1")]);
            std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
            if what == "named" {
                svc.contexts.insert(
                    "extra".into(),
                    crate::config::NamedContext::Local(dir.path().join("ctx")),
                );
            }
            let cache = tempfile::tempdir().unwrap();
            for index in [
                Index::disabled(),
                Index::open(cache.path()),
                Index::open(cache.path()),
            ] {
                let listed = hash_service(&svc, &BTreeMap::new(), &index, &[]).unwrap();
                let streamed = digest_service(&svc, &BTreeMap::new(), &index, &[]).unwrap();
                assert_eq!(listed.digest, streamed, "{what}");
                let expect_whole = what == "context";
                assert_eq!(
                    listed.digest == listed.context_digest,
                    expect_whole,
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn a_file_that_keeps_changing_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![1u8; 16 << 20]).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u8;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n = n.wrapping_add(1);
                    // Truncate and regrow: a memory map of this file would fault.
                    std::fs::write(&path, vec![n; (8 << 20) + usize::from(n)]).unwrap();
                }
            })
        };
        let got = (0..20)
            .map(|_| hash_stable_file(&path, None))
            .collect::<Vec<_>>();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        // Every attempt either saw one version whose status did not change while it was read, or said the file kept
        // changing; none crashed (with a memory map, this process would have died of SIGBUS).
        for r in got {
            match r {
                Ok(_) => {}
                Err(HashError::Unstable { attempts, .. }) => assert_eq!(attempts, HASH_ATTEMPTS),
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        let (digest, _) = hash_stable_file(&path, None).unwrap();
        assert_eq!(digest, Digest::of(&std::fs::read(&path).unwrap()));
    }
}
