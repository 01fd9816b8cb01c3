//! The local content index under `.build-cache/`: (path, size, mtime, ctime, inode, device) -> content hash, so a
//! run over unchanged files reads none of them. Also the creation of `.build-cache/` itself, with the `.gitignore`
//! that keeps it out of git.
//!
//! It is only an accelerator. A missing, stale or corrupt index changes no result: records are trusted only when
//! every stat field still matches, files whose status changed within the last second are never recorded (a change
//! in the same clock tick would leave ctime equal; ctime, unlike mtime, cannot be set back by tools), and a file
//! that fails its checksum is discarded and rebuilt.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::context::Entry;
use crate::digest::Digest;

const MAGIC: &[u8; 8] = b"BOIDX\x00\x00\x01";
/// The index file, relative to the cache directory.
pub const INDEX_FILE: &str = "index-v1";
/// The ignore file that keeps the cache directory out of git, relative to the cache directory.
pub const GITIGNORE_FILE: &str = ".gitignore";
/// Its content: `*` ignores everything in the directory, the ignore file included, so the directory keeps itself
/// out of git without an entry in the repository's own `.gitignore` (as pytest and mypy do with their caches).
const GITIGNORE: &str = "# Created by buildopt: local state, never committed.\n*\n";
/// Files whose ctime is more recent than this are hashed but not recorded.
const RACY_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
    digest: Digest,
}

impl Record {
    fn of(e: &Entry, digest: Digest) -> Record {
        Record {
            size: e.size,
            mtime_ns: e.mtime_ns,
            ctime_ns: e.ctime_ns,
            ino: e.ino,
            dev: e.dev,
            digest,
        }
    }
}

/// What happened when the index was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexStatus {
    /// No index, or none asked for.
    Absent,
    /// Loaded with this many records.
    Loaded(usize),
    /// The file was unreadable or corrupt and is being rebuilt.
    Discarded(String),
}

/// A loaded index plus the records made during this run.
#[derive(Debug)]
pub struct Index {
    file: Option<PathBuf>,
    loaded: HashMap<PathBuf, Record>,
    hits: Mutex<HashSet<PathBuf>>,
    fresh: Mutex<HashMap<PathBuf, Record>>,
    status: IndexStatus,
    now_ns: i64,
}

impl Index {
    /// An index that remembers nothing and is never saved.
    pub fn disabled() -> Index {
        Index::with(None, HashMap::new(), IndexStatus::Absent)
    }

    /// Opens the index in `cache_dir` (it need not exist).
    pub fn open(cache_dir: &Path) -> Index {
        let file = cache_dir.join(INDEX_FILE);
        let (loaded, status) = match std::fs::read(&file) {
            Ok(bytes) => match decode(&bytes) {
                Some(map) => {
                    let n = map.len();
                    (map, IndexStatus::Loaded(n))
                }
                None => (
                    HashMap::new(),
                    IndexStatus::Discarded(format!("{} is corrupt", file.display())),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (HashMap::new(), IndexStatus::Absent)
            }
            Err(e) => (
                HashMap::new(),
                IndexStatus::Discarded(format!("cannot read {}: {e}", file.display())),
            ),
        };
        Index::with(Some(file), loaded, status)
    }

    fn with(file: Option<PathBuf>, loaded: HashMap<PathBuf, Record>, status: IndexStatus) -> Index {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Index {
            file,
            loaded,
            hits: Mutex::new(HashSet::new()),
            fresh: Mutex::new(HashMap::new()),
            status,
            now_ns,
        }
    }

    /// How opening went.
    pub fn status(&self) -> &IndexStatus {
        &self.status
    }

    /// The recorded hash of `path`, if its stat fields still match `e`.
    pub fn lookup(&self, path: &Path, e: &Entry) -> Option<Digest> {
        let rec = self.loaded.get(path)?;
        if *rec != Record::of(e, rec.digest) {
            return None;
        }
        self.hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned());
        Some(rec.digest)
    }

    /// Records a freshly computed hash (unless the file changed too recently to be trusted later).
    pub fn insert(&self, path: &Path, e: &Entry, digest: Digest) {
        let racy = self.now_ns - RACY_WINDOW.as_nanos() as i64;
        if e.ctime_ns >= racy {
            return;
        }
        self.fresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned(), Record::of(e, digest));
    }

    /// Writes the index atomically: this run's records, plus earlier records outside `walked` roots. Records under
    /// a walked root that were not used are dropped (the file is gone or ignored now).
    pub fn save(self, walked: &[PathBuf]) -> std::io::Result<()> {
        let Some(file) = self.file else { return Ok(()) };
        let hits = self.hits.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut all: HashMap<PathBuf, Record> = self
            .loaded
            .into_iter()
            .filter(|(p, _)| hits.contains(p) || !walked.iter().any(|root| p.starts_with(root)))
            .collect();
        all.extend(self.fresh.into_inner().unwrap_or_else(|p| p.into_inner()));
        if let Some(dir) = file.parent() {
            create_cache_dir(dir)?;
        }
        let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
        fs_err::write(&tmp, encode(&all))?;
        fs_err::rename(&tmp, &file)
    }
}

/// Creates the cache directory `dir` (and its parents) when missing, and gives it its `.gitignore` when that is
/// missing. Every writer into the cache directory calls this first. An existing `.gitignore` is left as it is: its
/// owner may have changed it on purpose.
pub fn create_cache_dir(dir: &Path) -> std::io::Result<()> {
    fs_err::create_dir_all(dir)?;
    // create_new: two runs at once must not both write, and an existing file is never truncated.
    match fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(GITIGNORE_FILE))
    {
        Ok(mut file) => std::io::Write::write_all(&mut file, GITIGNORE.as_bytes()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn encode(map: &HashMap<PathBuf, Record>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + map.len() * 120);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(map.len() as u64).to_le_bytes());
    for (path, r) in map {
        let p = path.as_os_str().as_bytes();
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(&r.size.to_le_bytes());
        out.extend_from_slice(&r.mtime_ns.to_le_bytes());
        out.extend_from_slice(&r.ctime_ns.to_le_bytes());
        out.extend_from_slice(&r.ino.to_le_bytes());
        out.extend_from_slice(&r.dev.to_le_bytes());
        out.extend_from_slice(&r.digest.0);
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<HashMap<PathBuf, Record>> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if blake3::hash(body).as_bytes() != sum || !body.starts_with(MAGIC) {
        return None;
    }
    let mut r = Reader(&body[MAGIC.len()..]);
    let n = r.u64()?;
    let mut map = HashMap::with_capacity(usize::try_from(n).ok()?.min(1 << 24));
    for _ in 0..n {
        let len = r.u32()? as usize;
        let path = PathBuf::from(std::ffi::OsString::from_vec(r.take(len)?.to_vec()));
        let rec = Record {
            size: r.u64()?,
            mtime_ns: r.u64()? as i64,
            ctime_ns: r.u64()? as i64,
            ino: r.u64()?,
            dev: r.u64()?,
            digest: Digest(r.take(32)?.try_into().ok()?),
        };
        map.insert(path, rec);
    }
    r.0.is_empty().then_some(map)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::EntryKind;

    fn entry() -> Entry {
        Entry {
            path: b"a".to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            size: 3,
            mtime_ns: 1_000,
            ctime_ns: 2_000,
            ino: 7,
            dev: 9,
        }
    }

    #[test]
    fn roundtrip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path());
        assert_eq!(idx.status(), &IndexStatus::Absent);
        let d = Digest([5; 32]);
        idx.insert(Path::new("/x/a"), &entry(), d);
        idx.save(&[]).unwrap();

        let idx = Index::open(dir.path());
        assert_eq!(idx.status(), &IndexStatus::Loaded(1));
        assert_eq!(idx.lookup(Path::new("/x/a"), &entry()), Some(d));
        let mut touched = entry();
        touched.mtime_ns += 1;
        assert_eq!(idx.lookup(Path::new("/x/a"), &touched), None);

        let file = dir.path().join(INDEX_FILE);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let idx = Index::open(dir.path());
        assert!(matches!(idx.status(), IndexStatus::Discarded(_)));
        assert_eq!(idx.lookup(Path::new("/x/a"), &entry()), None);
    }

    #[test]
    fn saving_creates_the_cache_dir_with_a_gitignore_and_keeps_an_existing_one() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(".build-cache");
        Index::open(&dir).save(&[]).unwrap();
        let ignore = dir.join(GITIGNORE_FILE);
        let text = std::fs::read_to_string(&ignore).unwrap();
        assert!(text.lines().any(|l| l == "*"), "{text}");

        std::fs::write(&ignore, "mine\n").unwrap();
        Index::open(&dir).save(&[]).unwrap();
        assert_eq!(std::fs::read_to_string(&ignore).unwrap(), "mine\n");
    }

    #[test]
    fn recent_files_are_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path());
        let mut e = entry();
        e.ctime_ns = idx.now_ns;
        idx.insert(Path::new("/x/a"), &e, Digest([1; 32]));
        idx.save(&[]).unwrap();
        assert_eq!(Index::open(dir.path()).status(), &IndexStatus::Loaded(0));
    }
}
