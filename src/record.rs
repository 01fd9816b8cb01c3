//! The input manifest: the record of the inputs an image was built from, stored beside the image in the registry
//! (`registry::inputs` puts it there and finds it) so that any runner, also a fresh one without `.build-cache/`,
//! can say what changed since. This module owns its format: what is in it, its JSON, gzip, the size cap and the
//! truncated forms beyond the cap, and the comparison with current inputs.
//!
//! The record holds what the local [`ServiceState`] holds (per context entry its path and digest, the digests of
//! the Dockerfile, the parameters one by one and the dependencies, the input digests) and the derive keys those
//! digests were made with. Contents and parameter values are never in it, only their digests. It only ever
//! explains a decision: whether to build is decided by the content tag alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::hash::{ENTRY_KEY, SERVICE_KEY, ServiceInputs};
use crate::state::{Changes, ServiceState};

/// The version of the format; a reader ignores records of other versions.
pub(crate) const FORMAT: u32 = 1;

/// The cap on a stored record (the compressed blob). Within it every entry is listed by path up to roughly 90,000
/// entries (about 44 bytes each, measured on generated source trees); beyond, as hashes (16 bytes each, about
/// 250,000); beyond that, not at all. Reading never accepts a larger blob.
pub(crate) const MAX_BYTES: usize = 4 << 20;

/// The cap on a record's JSON when read: what a blob of at most [`MAX_BYTES`] may inflate to.
const MAX_INFLATED: u64 = 64 << 20;

/// Derive key of the path hashes of the hashed listing.
const PATH_KEY: &str = "buildopt 2026-12-02 input manifest path v1";

/// The least a listed entry costs compressed: its digest is 32 random bytes, as 64 hex digits.
const MIN_LISTED: usize = 32;
/// The least a hashed entry costs compressed: 16 random bytes.
const MIN_HASHED: usize = 16;

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not gzip, not JSON, or not this format.
    #[error("the input manifest is not readable ({0})")]
    Corrupt(String),
    /// A format version this buildopt does not know.
    #[error("the input manifest has format {0}; this buildopt reads format {FORMAT}")]
    Format(u32),
    /// Larger than any record buildopt writes.
    #[error("the input manifest inflates to more than {} MiB", MAX_INFLATED >> 20)]
    TooLarge,
}

/// The record of one image's inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InputRecord {
    /// [`FORMAT`].
    pub(crate) format: u32,
    /// The service it was built for.
    pub(crate) service: String,
    /// The derive key of the input digests and the parameter digests ([`SERVICE_KEY`]).
    pub(crate) service_key: String,
    /// The derive key of the entry digests ([`ENTRY_KEY`]).
    pub(crate) entry_key: String,
    /// The input digest (what the build reads).
    pub(crate) digest: Digest,
    /// The digest over the whole context.
    pub(crate) context_digest: Digest,
    /// The Dockerfile's digest.
    pub(crate) dockerfile: Digest,
    /// The parameters' digest.
    pub(crate) params: Digest,
    /// Each parameter's digest.
    pub(crate) param_digests: BTreeMap<String, Digest>,
    /// The dependencies' input digests.
    pub(crate) deps: BTreeMap<String, Digest>,
    /// How many entries the context had.
    pub(crate) entry_count: usize,
    /// The blake3 of the entry digests in send order: whether any entry changed, when they are not listed.
    pub(crate) entries_digest: Digest,
    /// The entries, as far as they fit.
    #[serde(flatten)]
    pub(crate) listing: Listing,
}

/// How the context entries are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "listing", rename_all = "lowercase")]
pub(crate) enum Listing {
    /// Every entry: display path and digest, in send order (as in the local state).
    Paths {
        /// `[path, digest]` pairs.
        entries: Vec<(String, Digest)>,
    },
    /// Too many to list by path within [`MAX_BYTES`]: per entry 8 bytes of the blake3 of its path (key
    /// [`PATH_KEY`]) and the first 8 bytes of its digest, in send order, base64. Changed and added files are named
    /// from the current tree; removed ones are counted.
    Hashes {
        /// Base64 of 16 bytes per entry.
        hashes: String,
    },
    /// Not even the hashes fit: only [`InputRecord::entries_digest`] says whether any entry changed.
    None,
}

impl Listing {
    /// `paths`, `hashes` or `none`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Listing::Paths { .. } => "paths",
            Listing::Hashes { .. } => "hashes",
            Listing::None => "none",
        }
    }
}

/// A record ready to store: the gzip bytes and how its entries are kept.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    /// The compressed JSON, at most [`MAX_BYTES`].
    pub(crate) bytes: Vec<u8>,
    /// `paths`, `hashes` or `none`.
    pub(crate) listing: &'static str,
}

impl InputRecord {
    /// The record of freshly hashed inputs, with every entry listed by path.
    pub(crate) fn of(service: &str, inputs: &ServiceInputs) -> InputRecord {
        let state = ServiceState::of(inputs);
        InputRecord {
            format: FORMAT,
            service: service.to_owned(),
            service_key: SERVICE_KEY.to_owned(),
            entry_key: ENTRY_KEY.to_owned(),
            digest: inputs.digest,
            context_digest: inputs.context_digest,
            dockerfile: inputs.dockerfile,
            params: inputs.params,
            param_digests: inputs.param_digests.clone(),
            deps: inputs.deps.clone(),
            entry_count: inputs.entries.len(),
            entries_digest: entries_digest(&inputs.entry_digests),
            listing: Listing::Paths {
                entries: state.entries,
            },
        }
    }

    /// The compressed record of `inputs`, within [`MAX_BYTES`].
    pub(crate) fn encode(service: &str, inputs: &ServiceInputs) -> Encoded {
        InputRecord::encode_within(service, inputs, MAX_BYTES)
    }

    /// The compressed record of `inputs` within `cap` bytes: listed by path if that fits, else by hashes, else
    /// without entries.
    fn encode_within(service: &str, inputs: &ServiceInputs, cap: usize) -> Encoded {
        let mut record = InputRecord::of(service, inputs);
        let n = inputs.entries.len();
        if n * MIN_LISTED <= cap
            && let Some(bytes) = record.compressed(cap)
        {
            return Encoded {
                bytes,
                listing: record.listing.name(),
            };
        }
        if n * MIN_HASHED <= cap {
            let mut raw = Vec::with_capacity(n * 16);
            for (e, d) in inputs.entries.iter().zip(&inputs.entry_digests) {
                raw.extend_from_slice(&path_hash(&e.path));
                raw.extend_from_slice(&d.0[..8]);
            }
            record.listing = Listing::Hashes {
                hashes: base64::engine::general_purpose::STANDARD.encode(raw),
            };
            if let Some(bytes) = record.compressed(cap) {
                return Encoded {
                    bytes,
                    listing: record.listing.name(),
                };
            }
        }
        record.listing = Listing::None;
        let bytes = record
            .compressed(usize::MAX)
            .expect("a record without entries is small");
        Encoded {
            bytes,
            listing: record.listing.name(),
        }
    }

    /// The gzip of the JSON, or None when it exceeds `cap`.
    fn compressed(&self, cap: usize) -> Option<Vec<u8>> {
        let json = serde_json::to_vec(self).expect("a record serializes");
        // No name and no time in the gzip header: the same inputs always make the same blob (and the same
        // artifact digest), so recording them twice stores nothing new.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&json).expect("writing to memory");
        let bytes = gz.finish().expect("writing to memory");
        (bytes.len() <= cap).then_some(bytes)
    }

    /// Reads a compressed record.
    pub(crate) fn decode(gz: &[u8]) -> Result<InputRecord, RecordError> {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .take(MAX_INFLATED + 1)
            .read_to_end(&mut json)
            .map_err(|e| RecordError::Corrupt(e.to_string()))?;
        if json.len() as u64 > MAX_INFLATED {
            return Err(RecordError::TooLarge);
        }
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let version: Version =
            serde_json::from_slice(&json).map_err(|e| RecordError::Corrupt(e.to_string()))?;
        if version.format != FORMAT {
            return Err(RecordError::Format(version.format));
        }
        serde_json::from_slice(&json).map_err(|e| RecordError::Corrupt(e.to_string()))
    }

    /// Whether `now` are the recorded inputs (both digests equal).
    pub(crate) fn same_inputs(&self, now: &ServiceInputs) -> bool {
        self.digest == now.digest && self.context_digest == now.context_digest
    }

    /// What changed from the recorded inputs to `now`, as far as the record can tell; None when its digests were
    /// made with other derive keys (another digest version), so that nothing in it compares.
    pub(crate) fn changes(&self, now: &ServiceInputs) -> Option<Changes> {
        if self.entry_key != ENTRY_KEY || self.service_key != SERVICE_KEY {
            return None;
        }
        let current = ServiceState::of(now);
        let recorded = ServiceState {
            version: 0,
            digest: self.digest,
            context_digest: self.context_digest,
            dockerfile: self.dockerfile,
            params: self.params,
            param_digests: Some(self.param_digests.clone()),
            deps: self.deps.clone(),
            entries: Vec::new(),
        };
        let rest = Changes::of_rest(&recorded, &current);
        Some(match &self.listing {
            Listing::Paths { entries } => Changes::between(
                &ServiceState {
                    entries: entries.clone(),
                    ..recorded
                },
                &current,
            ),
            Listing::Hashes { hashes } => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(hashes)
                    .unwrap_or_default();
                let old: HashMap<[u8; 8], [u8; 8]> = raw
                    .chunks_exact(16)
                    .map(|c| {
                        let (p, d) = c.split_at(8);
                        (
                            p.try_into().expect("8 bytes"),
                            d.try_into().expect("8 bytes"),
                        )
                    })
                    .collect();
                let mut seen = HashSet::new();
                let mut files: Vec<String> = now
                    .entries
                    .iter()
                    .zip(&now.entry_digests)
                    .filter_map(|(e, d)| {
                        let p = path_hash(&e.path);
                        seen.insert(p);
                        let mine: [u8; 8] = d.0[..8].try_into().expect("8 of 32 bytes");
                        (old.get(&p) != Some(&mine)).then(|| e.display_path())
                    })
                    .collect();
                files.sort();
                Changes {
                    files,
                    unnamed: old.keys().filter(|p| !seen.contains(*p)).count(),
                    ..rest
                }
            }
            Listing::None => Changes {
                unlisted: self.entries_digest != entries_digest(&now.entry_digests),
                ..rest
            },
        })
    }
}

/// The first 8 bytes of the keyed blake3 of a path (its raw bytes).
fn path_hash(path: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new_derive_key(PATH_KEY);
    h.update(path);
    h.finalize().as_bytes()[..8]
        .try_into()
        .expect("8 of 32 bytes")
}

/// The blake3 of the entry digests in order.
fn entries_digest(digests: &[Digest]) -> Digest {
    crate::hash::EntriesDigest::of(digests).digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Service `app` of `files`, hashed, with build args `args`.
    fn hashed(files: &[(&str, &str)], args: &[(&str, &str)]) -> (tempfile::TempDir, ServiceInputs) {
        let (dir, _, inputs) = crate::hash::tests::hashed_with_args(files, args);
        (dir, inputs)
    }

    const DOCKERFILE: &str = "FROM scratch\nARG PROFILE\nCOPY src /src\n";

    fn before() -> (tempfile::TempDir, ServiceInputs) {
        hashed(
            &[
                ("Dockerfile", DOCKERFILE),
                ("src/a.rs", "a"),
                ("src/b.rs", "b"),
                ("src/gone.rs", "g"),
                ("README.md", "r"),
            ],
            &[("PROFILE", "debug")],
        )
    }

    fn after() -> (tempfile::TempDir, ServiceInputs) {
        hashed(
            &[
                ("Dockerfile", DOCKERFILE),
                ("src/a.rs", "a2"),
                ("src/b.rs", "b"),
                ("src/new.rs", "n"),
                ("README.md", "r"),
            ],
            &[("PROFILE", "release")],
        )
    }

    #[test]
    fn a_record_round_trips_and_names_what_changed() {
        let (_d, old) = before();
        let encoded = InputRecord::encode("app", &old);
        assert_eq!(encoded.listing, "paths");
        let record = InputRecord::decode(&encoded.bytes).unwrap();
        assert_eq!(record, InputRecord::of("app", &old));
        assert!(record.same_inputs(&old));
        assert_eq!(record.changes(&old).unwrap(), Changes::default());
        // The same inputs make the same bytes (the artifact is stored once).
        assert_eq!(InputRecord::encode("app", &old).bytes, encoded.bytes);

        let (_d, new) = after();
        assert!(!record.same_inputs(&new));
        let changes = record.changes(&new).unwrap();
        assert_eq!(changes.files, ["src/a.rs", "src/gone.rs", "src/new.rs"]);
        assert_eq!(changes.parameters, ["build-arg:PROFILE"]);
        assert!(changes.params && !changes.dockerfile);
        assert_eq!(
            changes.to_string(),
            "3 files changed: src/a.rs, src/gone.rs, src/new.rs; build arg PROFILE changed"
        );
    }

    #[test]
    fn beyond_the_cap_changed_files_are_still_named_and_removed_ones_counted() {
        let (_d, old) = before();
        let (_d2, new) = after();
        let full = InputRecord::encode("app", &old).bytes.len();
        // Too small for paths, large enough for hashes.
        let encoded = InputRecord::encode_within("app", &old, full - 1);
        assert_eq!(encoded.listing, "hashes", "{full}");
        assert!(encoded.bytes.len() < full);
        let changes = InputRecord::decode(&encoded.bytes)
            .unwrap()
            .changes(&new)
            .unwrap();
        assert_eq!(changes.files, ["src/a.rs", "src/new.rs"]);
        assert_eq!(changes.unnamed, 1, "src/gone.rs");
        assert_eq!(changes.parameters, ["build-arg:PROFILE"]);

        // Too small for either: only whether anything changed.
        let encoded = InputRecord::encode_within("app", &old, 8);
        assert_eq!(encoded.listing, "none");
        let record = InputRecord::decode(&encoded.bytes).unwrap();
        let changes = record.changes(&new).unwrap();
        assert!(changes.files.is_empty() && changes.unlisted, "{changes:?}");
        assert!(
            changes.to_string().starts_with(
                "context files changed (the input manifest is too large to list them)"
            ),
            "{changes}"
        );
        assert!(!record.changes(&old).unwrap().unlisted);
    }

    #[test]
    fn records_of_other_formats_or_keys_are_not_compared() {
        let (_d, old) = before();
        let mut record = InputRecord::of("app", &old);
        record.entry_key = "buildopt 2099 context entry v9".into();
        assert_eq!(record.changes(&old), None);

        record.format = FORMAT + 1;
        let bytes = record.compressed(usize::MAX).unwrap();
        assert!(matches!(
            InputRecord::decode(&bytes),
            Err(RecordError::Format(f)) if f == FORMAT + 1
        ));
        assert!(matches!(
            InputRecord::decode(b"not gzip"),
            Err(RecordError::Corrupt(_))
        ));
    }

    #[test]
    fn a_blob_that_inflates_beyond_the_cap_is_refused() {
        // 65 MiB of zeros compress to about 65 KiB.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..65 {
            gz.write_all(&zeros).unwrap();
        }
        let bytes = gz.finish().unwrap();
        assert!(bytes.len() < MAX_BYTES);
        assert!(matches!(
            InputRecord::decode(&bytes),
            Err(RecordError::TooLarge)
        ));
    }
}
