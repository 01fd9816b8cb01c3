//! Local state under `.build-cache/state/`: what each service's inputs were when it was last built here. Only
//! used to explain decisions (which files changed); the registry is the source of truth for whether to build.

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
    /// The Dockerfile content changed.
    pub dockerfile: bool,
    /// Target, build args, platforms or labels changed.
    pub params: bool,
    /// Dependencies whose digest changed.
    pub deps: Vec<String>,
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
        let dep_names: BTreeSet<&String> = old.deps.keys().chain(new.deps.keys()).collect();
        Changes {
            files,
            dockerfile: old.dockerfile != new.dockerfile,
            params: old.params != new.params,
            deps: dep_names
                .into_iter()
                .filter(|n| old.deps.get(*n) != new.deps.get(*n))
                .cloned()
                .collect(),
        }
    }

    /// Nothing differs in the parts we can name.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && !self.dockerfile && !self.params && self.deps.is_empty()
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
        if self.dockerfile {
            parts.push("Dockerfile changed".to_owned());
        }
        if self.params {
            parts.push("build parameters changed".to_owned());
        }
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
            deps: BTreeMap::new(),
            entries: Vec::new(),
        };
        let store = StateStore::new(&cache_dir);
        store.save("app", &state).unwrap();
        assert_eq!(store.load("app"), Some(state));
        let ignore = std::fs::read_to_string(cache_dir.join(crate::index::GITIGNORE_FILE)).unwrap();
        assert!(ignore.lines().any(|l| l == "*"), "{ignore}");
    }
}
