//! The solve of one service with BuildKit's Dockerfile frontend: frontend attributes, the image exporter and the
//! registry cache. When pushing, the image is pushed **by digest only** (`push-by-digest`): buildopt writes every
//! tag itself afterwards, the content tag only once it has checked that what the session sent is what it hashed.

use std::collections::BTreeMap;

use super::{CacheEntry, ExporterSpec, SolveSpec};
use crate::config::{NamedContext, Registry, Service};

/// The frontend every service is built with.
pub(crate) const FRONTEND: &str = "dockerfile.v0";
/// The entitlement `RUN` steps need for the host's network.
pub(crate) const NETWORK_HOST: &str = "network.host";

/// RUN steps' network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NetworkMode {
    /// The daemon's default (a sandbox network).
    #[default]
    Default,
    /// The host's network (needs the `network.host` entitlement).
    Host,
    /// No network.
    None,
}

impl NetworkMode {
    /// `default`, `host` or `none`, as in the config file.
    pub(crate) fn parse(s: &str) -> Option<NetworkMode> {
        match s {
            "default" => Some(NetworkMode::Default),
            "host" => Some(NetworkMode::Host),
            "none" => Some(NetworkMode::None),
            _ => None,
        }
    }
}

/// A dependency of a solve: the service and the image it resolved to in this run (built or found).
#[derive(Debug, Clone)]
pub(crate) struct Dependency {
    /// The service.
    pub(crate) service: Service,
    /// Its image's manifest (or index) digest.
    pub(crate) image: String,
    /// Where the image is when it was not pushed (`--no-push`): an OCI layout the session serves to the daemon.
    pub(crate) layout: Option<LocalImage>,
}

/// An image in an OCI layout on this machine, served through the session's content store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalImage {
    /// The store ID (`oci-layout://STORE@DIGEST`; the session routes `oci:STORE` to the layout).
    pub(crate) store: String,
    /// The layout directory (`index.json`, `blobs/`).
    pub(crate) dir: std::path::PathBuf,
    /// The image's manifest digest in the layout.
    pub(crate) digest: String,
}

/// Everything about one service's solve that is not in its [`Service`].
#[derive(Debug, Clone)]
pub(crate) struct DockerfileSolve<'a> {
    /// The service.
    pub(crate) service: &'a Service,
    /// Where images and caches go.
    pub(crate) registry: &'a Registry,
    /// Push the image (by digest) instead of keeping it in the daemon.
    pub(crate) push: bool,
    /// Export the registry cache under the service's cache tag (with its mode).
    pub(crate) cache_export: bool,
    /// Registry caches to import, as whole references (only those that exist: a missing one shows as a failed
    /// step).
    pub(crate) cache_imports: &'a [String],
    /// Produce the image (false: only the cache export, for an image that exists but whose cache does not).
    pub(crate) image: bool,
    /// RUN steps' network.
    pub(crate) network: NetworkMode,
    /// The dependencies and the image each resolved to in this run.
    pub(crate) deps: &'a [Dependency],
    /// The stage names of the Dockerfile (a named context of the same name would replace the stage).
    pub(crate) stages: &'a [String],
    /// Further exporters (outputs to the client), after the image's.
    pub(crate) outputs: &'a [ExporterSpec],
    /// Run every step, ignoring BuildKit's cache.
    pub(crate) no_cache: bool,
}

/// The solve that writes `outputs` from an image that exists (a skipped service's), without building anything: a
/// Dockerfile `FROM IMAGE@DIGEST` (served from a directory holding only it) for the service's platforms.
pub(crate) fn materialize(reference: String, svc: &Service, outputs: &[ExporterSpec]) -> SolveSpec {
    let mut attrs = BTreeMap::from([("filename".to_owned(), "Dockerfile".to_owned())]);
    if !svc.platforms.is_empty() {
        attrs.insert("platform".to_owned(), svc.platforms.join(","));
    }
    SolveSpec {
        reference,
        frontend: FRONTEND.to_owned(),
        frontend_attrs: attrs,
        exporters: outputs.to_vec(),
        cache_exports: Vec::new(),
        cache_imports: Vec::new(),
        entitlements: Vec::new(),
    }
}

/// Whether `name` is looked up as written: the frontend reads `FROM NAME` as the short form of a lowercase image
/// reference.
fn is_context_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

impl DockerfileSolve<'_> {
    /// The solve request for build `reference`.
    pub(crate) fn spec(&self, reference: String) -> SolveSpec {
        let svc = self.service;
        let reg = self.registry;
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
        if let Some(epoch) = svc.source_date_epoch {
            attrs.insert("build-arg:SOURCE_DATE_EPOCH".to_owned(), epoch.to_string());
        }
        // A dependency is pinned by digest (built in this run or found by its content tag), so `FROM <its image>`
        // and `FROM <service name>` never pull a stale tag.
        // One that was not pushed is read from the OCI layout this session serves.
        let pinned = |dep: &str| {
            self.deps
                .iter()
                .find(|d| d.service.name == dep)
                .map(|d| match &d.layout {
                    Some(l) => format!("oci-layout://{}@{}", l.store, l.digest),
                    None => format!("docker-image://{}/{}@{}", reg.url, d.service.image, d.image),
                })
        };
        for dep in self.deps.iter().map(|d| &d.service) {
            let Some(pinned) = pinned(&dep.name) else {
                continue;
            };
            attrs.insert(format!("context:{}/{}", reg.url, dep.image), pinned.clone());
            for tag in &dep.tags {
                attrs.insert(
                    format!("context:{}", reg.reference(&dep.image, tag)),
                    pinned.clone(),
                );
            }
            // `FROM base` for service `base`, unless a stage is called that: the context would replace the stage.
            if is_context_name(&dep.name) && !self.stages.contains(&dep.name) {
                attrs.insert(format!("context:{}", dep.name), pinned);
            }
        }
        for (name, ctx) in &svc.contexts {
            let value = match ctx {
                NamedContext::Service(other) => match pinned(other) {
                    Some(p) => p,
                    None => continue,
                },
                NamedContext::Remote(source) => source.clone(),
                NamedContext::Local(_) => format!("local:{}", crate::hash::named_local(name)),
            };
            attrs.insert(format!("context:{name}"), value);
        }
        if self.no_cache {
            // Every stage (a value would name stages).
            attrs.insert("no-cache".to_owned(), String::new());
        }
        if let Some(p) = &svc.attest.provenance {
            attrs.insert("attest:provenance".to_owned(), p.clone());
        }
        if let Some(p) = &svc.attest.sbom {
            attrs.insert("attest:sbom".to_owned(), p.clone());
        }
        let mut entitlements = Vec::new();
        match self.network {
            NetworkMode::Default => {}
            NetworkMode::Host => {
                attrs.insert("force-network-mode".to_owned(), "host".to_owned());
                entitlements.push(NETWORK_HOST.to_owned());
            }
            NetworkMode::None => {
                attrs.insert("force-network-mode".to_owned(), "none".to_owned());
            }
        }

        let insecure = reg
            .insecure
            .then(|| ("registry.insecure".to_owned(), "true".to_owned()));
        let mut exporter: BTreeMap<String, String> = if self.push {
            // A bare repository: BuildKit pushes the manifest by digest, without any tag.
            [
                ("name".to_owned(), format!("{}/{}", reg.url, svc.image)),
                ("push".to_owned(), "true".to_owned()),
                ("push-by-digest".to_owned(), "true".to_owned()),
            ]
            .into()
        } else {
            let names: Vec<String> = svc
                .tags
                .iter()
                .map(|t| reg.reference(&svc.image, t))
                .collect();
            // OCI media types, as the `oci` exporter writes the layout dependents read (`--no-push`), so both
            // exporters produce the same manifest digest.
            [
                ("name".to_owned(), names.join(",")),
                ("push".to_owned(), "false".to_owned()),
                ("oci-mediatypes".to_owned(), "true".to_owned()),
            ]
            .into()
        };
        if svc.source_date_epoch.is_some() {
            // File times inside new layers too, so the same inputs give the same layer digests everywhere.
            exporter.insert("rewrite-timestamp".to_owned(), "true".to_owned());
        }
        exporter.extend(insecure.clone());

        let cache_ref = reg.reference(&svc.image, &svc.cache_tag);
        let mut cache_exports = Vec::new();
        if self.cache_export && self.push {
            let mut attrs: BTreeMap<String, String> = [
                ("ref", cache_ref.as_str()),
                ("mode", svc.cache_mode.as_str()),
                // ECR (and BuildKit < v0.21's default) need the image-manifest form.
                ("image-manifest", "true"),
                ("oci-mediatypes", "true"),
                // A refused cache export must not fail a build whose image is fine; buildopt reports it instead.
                ("ignore-error", "true"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            attrs.extend(insecure.clone());
            cache_exports.push(CacheEntry {
                kind: "registry".to_owned(),
                attrs,
            });
        }
        let cache_imports = self
            .cache_imports
            .iter()
            .map(|r| {
                let mut attrs: BTreeMap<String, String> = [("ref".to_owned(), r.clone())].into();
                attrs.extend(insecure.clone());
                CacheEntry {
                    kind: "registry".to_owned(),
                    attrs,
                }
            })
            .collect();
        SolveSpec {
            reference,
            frontend: FRONTEND.to_owned(),
            frontend_attrs: attrs,
            exporters: if self.image {
                vec![ExporterSpec {
                    kind: "image".to_owned(),
                    attrs: exporter,
                }]
            } else {
                Vec::new()
            }
            .into_iter()
            .chain(self.outputs.iter().cloned())
            .collect(),
            cache_exports,
            cache_imports,
            entitlements,
        }
    }
}
