//! Local state under `.build-cache/state/`: what each service's inputs were when it was last built here, and what
//! changed since ([`Changes`], also used with the input manifest the registry keeps beside each image, see
//! [`crate::record`]). Only used to explain decisions; the registry is the source of truth for whether to build.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::hash::ServiceInputs;

const STATE_VERSION: u32 = 2;

/// The recorded inputs of one service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceState {
    /// Format version; other versions are ignored.
    pub version: u32,
    /// The input digest.
    pub digest: Digest,
    /// The digest over the whole context.
    pub context_digest: Digest,
    /// Dockerfile digest.
    pub dockerfile: Digest,
    /// Parameters digest.
    pub params: Digest,
    /// Each parameter's digest (None in states recorded before they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_digests: Option<BTreeMap<String, Digest>>,
    /// Dependencies' digests.
    pub deps: BTreeMap<String, Digest>,
    /// The whole context's entries (display path, digest), in send order.
    pub entries: Vec<(String, Digest)>,
}

impl ServiceState {
    /// The state to record for freshly hashed inputs.
    pub fn of(inputs: &ServiceInputs) -> ServiceState {
        ServiceState {
            version: STATE_VERSION,
            digest: inputs.digest,
            context_digest: inputs.context_digest,
            dockerfile: inputs.dockerfile,
            params: inputs.params,
            param_digests: Some(inputs.param_digests.clone()),
            deps: inputs.deps.clone(),
            entries: inputs
                .entries
                .iter()
                .zip(&inputs.entry_digests)
                .map(|(e, d)| (e.display_path(), *d))
                .collect(),
        }
    }
}

/// The state directory of a workspace.
#[derive(Debug, Clone)]
pub struct StateStore {
    cache_dir: PathBuf,
    dir: PathBuf,
}

impl StateStore {
    /// The store under `cache_dir`.
    pub fn new(cache_dir: &Path) -> StateStore {
        StateStore {
            cache_dir: cache_dir.to_owned(),
            dir: cache_dir.join("state"),
        }
    }

    fn file(&self, service: &str) -> PathBuf {
        self.dir.join(format!("{service}.json"))
    }

    /// The last recorded state of `service`; None when absent, unreadable or of another version.
    pub fn load(&self, service: &str) -> Option<ServiceState> {
        let bytes = std::fs::read(self.file(service)).ok()?;
        let state: ServiceState = serde_json::from_slice(&bytes).ok()?;
        (state.version == STATE_VERSION).then_some(state)
    }

    /// Records the state of freshly hashed `inputs` for `service`, unless the recorded one is already theirs: a
    /// no-change run of 50 services of 2,000 files rewrote 9 MB of state (issue 12). The state is a function of
    /// its two digests (the context digest covers every entry, the Dockerfile, the parameters and the
    /// dependencies; the input digest what is read), which open the file in a fixed order: reading its head is
    /// enough to know.
    pub fn record(&self, service: &str, inputs: &ServiceInputs) -> std::io::Result<()> {
        if self.is_current(service, &inputs.digest, &inputs.context_digest) {
            return Ok(());
        }
        self.save(service, &ServiceState::of(inputs))
    }

    /// Whether the recorded state of `service` starts with this version and these digests.
    pub fn is_current(&self, service: &str, digest: &Digest, context_digest: &Digest) -> bool {
        use std::io::Read;
        /// The fields [`ServiceState`] serializes first, in its order.
        #[derive(Serialize)]
        struct Head<'a> {
            version: u32,
            digest: &'a Digest,
            context_digest: &'a Digest,
        }
        let Ok(mut head) = serde_json::to_vec(&Head {
            version: STATE_VERSION,
            digest,
            context_digest,
        }) else {
            return false;
        };
        // `{...}` -> `{...,`: the next field follows.
        head.pop();
        head.push(b',');
        let mut found = vec![0u8; head.len()];
        std::fs::File::open(self.file(service))
            .and_then(|mut f| f.read_exact(&mut found))
            .is_ok_and(|()| found == head)
    }

    /// Records `state` for `service`, atomically.
    pub fn save(&self, service: &str, state: &ServiceState) -> std::io::Result<()> {
        crate::index::create_cache_dir(&self.cache_dir)?;
        fs_err::create_dir_all(&self.dir)?;
        let file = self.file(service);
        let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
        fs_err::write(
            &tmp,
            serde_json::to_vec(state).map_err(std::io::Error::other)?,
        )?;
        fs_err::rename(&tmp, &file)
    }
}

/// What differs between the recorded state and the current inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Changes {
    /// Context paths added, removed or changed, in path order.
    pub files: Vec<String>,
    /// Files removed whose paths the record does not name (a truncated input manifest keeps only hashes of them).
    #[serde(skip_serializing_if = "is_zero")]
    pub unnamed: usize,
    /// Files changed, but the record lists none (an input manifest too large to list entries).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unlisted: bool,
    /// The Dockerfile content changed.
    pub dockerfile: bool,
    /// Target, build args, platforms or labels changed.
    pub params: bool,
    /// Which parameters changed (`build-arg:NAME`, `label:NAME`, `target`, `platforms`, `source-date-epoch`),
    /// when both sides recorded them one by one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
    /// Dependencies whose digest changed.
    pub deps: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// `build arg PROFILE`, `label version`, `target`: a parameter key of [`Changes::parameters`] in words.
pub fn parameter_words(key: &str) -> String {
    if let Some(name) = key.strip_prefix("build-arg:") {
        format!("build arg {name}")
    } else if let Some(name) = key.strip_prefix("label:") {
        format!("label {name}")
    } else if key == "source-date-epoch" {
        "source_date_epoch".to_owned()
    } else if let Some(name) = key.strip_prefix("context:") {
        format!("build context {name}")
    } else if let Some(kind) = key.strip_prefix("attest:") {
        format!("{kind} attestation")
    } else {
        key.to_owned()
    }
}

/// The keys whose values differ between two maps (present in one only included), in key order.
pub(crate) fn changed_keys<V: PartialEq>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
) -> Vec<String> {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

impl Changes {
    /// Compares a recorded state with current inputs.
    pub fn between(old: &ServiceState, new: &ServiceState) -> Changes {
        let old_entries: BTreeMap<&str, &Digest> =
            old.entries.iter().map(|(p, d)| (p.as_str(), d)).collect();
        let new_entries: BTreeMap<&str, &Digest> =
            new.entries.iter().map(|(p, d)| (p.as_str(), d)).collect();
        let paths: BTreeSet<&str> = old_entries
            .keys()
            .chain(new_entries.keys())
            .copied()
            .collect();
        let files = paths
            .into_iter()
            .filter(|p| old_entries.get(p) != new_entries.get(p))
            .map(str::to_owned)
            .collect();
        Changes {
            files,
            ..Changes::of_rest(old, new)
        }
    }

    /// What differs apart from the context entries: Dockerfile, parameters, dependencies.
    pub(crate) fn of_rest(old: &ServiceState, new: &ServiceState) -> Changes {
        let params = old.params != new.params;
        let parameters = match (&old.param_digests, &new.param_digests) {
            (Some(o), Some(n)) if params => changed_keys(o, n),
            _ => Vec::new(),
        };
        Changes {
            dockerfile: old.dockerfile != new.dockerfile,
            params,
            parameters,
            deps: changed_keys(&old.deps, &new.deps),
            ..Changes::default()
        }
    }

    /// Nothing differs in the parts we can name.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.unnamed == 0
            && !self.unlisted
            && !self.dockerfile
            && !self.params
            && self.deps.is_empty()
    }
}

impl Changes {
    /// `3 removed files not named in the record`; `files changed (the record lists none)`.
    pub(crate) fn unnamed_words(&self) -> Option<String> {
        if self.unnamed > 0 {
            let n = self.unnamed;
            Some(format!(
                "{n} file{} removed (not named in the input manifest, which lists only hashes)",
                if n == 1 { "" } else { "s" }
            ))
        } else if self.unlisted {
            Some("context files changed (the input manifest is too large to list them)".to_owned())
        } else {
            None
        }
    }

    /// `build arg PROFILE changed`, one per changed parameter; `build parameters changed` when they are not
    /// known one by one.
    pub(crate) fn parameter_words(&self) -> Vec<String> {
        if !self.params {
            Vec::new()
        } else if self.parameters.is_empty() {
            vec!["build parameters changed".to_owned()]
        } else {
            self.parameters
                .iter()
                .map(|k| format!("{} changed", parameter_words(k)))
                .collect()
        }
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 5;
        let mut parts = Vec::new();
        if !self.files.is_empty() {
            let n = self.files.len();
            let mut s = format!("{n} file{} changed: ", if n == 1 { "" } else { "s" });
            s.push_str(
                &self
                    .files
                    .iter()
                    .take(SHOWN)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            if n > SHOWN {
                s.push_str(&format!(" and {} more", n - SHOWN));
            }
            parts.push(s);
        }
        parts.extend(self.unnamed_words());
        if self.dockerfile {
            parts.push("Dockerfile changed".to_owned());
        }
        parts.extend(self.parameter_words());
        for d in &self.deps {
            parts.push(format!("dependency `{d}` changed"));
        }
        if parts.is_empty() {
            parts.push("inputs changed".to_owned());
        }
        f.write_str(&parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saving_creates_the_cache_dir_with_its_gitignore() {
        let root = tempfile::tempdir().unwrap();
        let cache_dir = root.path().join(".build-cache");
        let state = ServiceState {
            version: STATE_VERSION,
            digest: Digest([1; 32]),
            context_digest: Digest([2; 32]),
            dockerfile: Digest([3; 32]),
            params: Digest([4; 32]),
            param_digests: None,
            deps: BTreeMap::new(),
            entries: Vec::new(),
        };
        let store = StateStore::new(&cache_dir);
        store.save("app", &state).unwrap();
        assert_eq!(store.load("app"), Some(state.clone()));
        // The head of the file says whose state it is.
        assert!(store.is_current("app", &state.digest, &state.context_digest));
        assert!(!store.is_current("app", &state.context_digest, &state.context_digest));
        assert!(!store.is_current("app", &state.digest, &state.digest));
        assert!(!store.is_current("other", &state.digest, &state.context_digest));
        let ignore = std::fs::read_to_string(cache_dir.join(crate::index::GITIGNORE_FILE)).unwrap();
        assert!(ignore.lines().any(|l| l == "*"), "{ignore}");
    }
}
