//! The local content index under `.build-cache/`: per walked context, (path, stat fingerprint) -> content hash, so a
//! run over unchanged files reads none of them. Also the creation of `.build-cache/` itself, with the `.gitignore`
//! that keeps it out of git.
//!
//! It is only an accelerator. A missing, stale or corrupt index changes no result: a record is trusted only when the
//! fingerprint of every stat field (size, mtime, ctime, inode, device) still matches, files whose status changed
//! within the last second are never recorded (a change in the same clock tick would leave ctime equal; ctime, unlike
//! mtime, cannot be set back by tools), and a block that fails its checksum is dropped with everything after it.
//!
//! Layout (issue 12: a monorepo context of 100k files must not cost more than its walk): one file per context
//! directory and ignore-pattern set under `index-v2/`, so that hashing one context reads and writes only its own
//! records. A file holds the context's regular files in send order (the order the walk produces them), so a lookup
//! is a merge of two sorted lists with no map, and each record is 40 bytes (an 8-byte stat fingerprint and the
//! 32-byte content hash) after its path, front-coded against the previous one. Records come in checksummed blocks,
//! read and written a block at a time, so memory does not grow with the index. A file is rewritten only when
//! something in it changed.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::context::{Entry, EntryKind};
use crate::digest::Digest;

const MAGIC: &[u8; 8] = b"BOIDX\x00\x00\x02";
/// The directory of index files, relative to the cache directory.
pub const INDEX_DIR: &str = "index-v2";
/// The single-file index of earlier versions, removed when found.
const OLD_INDEX_FILE: &str = "index-v1";
/// The ignore file that keeps the cache directory out of git, relative to the cache directory.
pub const GITIGNORE_FILE: &str = ".gitignore";
/// Its content: `*` ignores everything in the directory, the ignore file included, so the directory keeps itself
/// out of git without an entry in the repository's own `.gitignore` (as pytest and mypy do with their caches).
const GITIGNORE: &str = "# Created by buildopt: local state, never committed.\n*\n";
/// Files whose ctime is more recent than this are hashed but not recorded.
const RACY_WINDOW: Duration = Duration::from_secs(1);
/// Records per block: a block is the unit of reading, writing and checksumming (about 64 KiB).
const BLOCK_RECORDS: usize = 1280;
/// A block longer than this is corrupt (a record is at most 10 + 10 + 4096 + 40 bytes).
const MAX_BLOCK: usize = BLOCK_RECORDS * 4200;

/// The local content index: a directory of per-context index files (see the module docs).
#[derive(Debug)]
pub struct Index {
    dir: Option<PathBuf>,
    now_ns: i64,
}

/// What the index knew about one context's entries.
#[derive(Debug)]
pub struct Known {
    /// Per entry (same order as the entries looked up), the recorded content hash where the stat still matches.
    pub digests: Vec<Option<Digest>>,
    /// The index file for this context differs from what the entries would record (records missing, extra or
    /// stale, or the file unreadable): it is worth saving.
    pub stale: bool,
    /// Why the file was not usable, if it was not (corrupt, unreadable).
    pub problem: Option<String>,
}

impl Index {
    /// An index that remembers nothing and is never saved.
    pub fn disabled() -> Index {
        Index::with(None)
    }

    /// The index in `cache_dir` (it need not exist). Nothing is read until a context is looked up.
    pub fn open(cache_dir: &Path) -> Index {
        Index::with(Some(cache_dir.to_owned()))
    }

    fn with(dir: Option<PathBuf>) -> Index {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Index { dir, now_ns }
    }

    /// The index file of context `root` walked with ignore patterns `scope`, and the check value it starts with.
    fn file(&self, root: &Path, scope: &[u8]) -> Option<(PathBuf, [u8; 32])> {
        let dir = self.dir.as_ref()?;
        let mut h = blake3::Hasher::new_derive_key("buildopt 2026-12-02 index scope v2");
        let root = root.as_os_str().as_bytes();
        h.update(&(root.len() as u64).to_le_bytes());
        h.update(root);
        h.update(scope);
        let id = *h.finalize().as_bytes();
        Some((dir.join(INDEX_DIR).join(hex::encode(&id[..16])), id))
    }

    /// The recorded content hashes of the regular files among `entries` (in send order, as the walk of `root` with
    /// ignore patterns `scope` produced them) whose stat fields still match.
    pub fn lookup(&self, root: &Path, scope: &[u8], entries: &[Entry]) -> Known {
        let mut known = Known {
            digests: vec![None; entries.len()],
            stale: true,
            problem: None,
        };
        let Some((file, id)) = self.file(root, scope) else {
            known.stale = false;
            return known;
        };
        let mut reader = match fs_err::File::open(&file) {
            Ok(f) => Records::new(BufReader::with_capacity(64 << 10, f), id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return known,
            Err(e) => {
                known.problem = Some(format!("cannot read {}: {e}", file.display()));
                return known;
            }
        };
        let mut stale = false;
        let mut rec = reader.next();
        for (e, slot) in entries.iter().zip(&mut known.digests) {
            if e.kind != EntryKind::File {
                continue;
            }
            // Records before this path are of files that are gone (or no longer regular files).
            while rec && walk_cmp(&reader.path, &e.path) == std::cmp::Ordering::Less {
                stale = true;
                rec = reader.next();
            }
            if rec && reader.path == e.path {
                if reader.fingerprint == fingerprint(e) {
                    *slot = Some(reader.digest);
                } else {
                    stale = true;
                }
                rec = reader.next();
            } else {
                stale = true;
            }
        }
        if rec || !reader.complete() {
            stale = true;
        }
        if let Some(why) = reader.problem {
            known.problem = Some(format!("{} {why}", file.display()));
        }
        known.stale = stale;
        known
    }

    /// Writes the index file of context `root` (ignore patterns `scope`) atomically: a record for each regular file
    /// among `entries` with a content hash in `contents` (same order), except files that changed too recently to be
    /// trusted later. Also removes the single-file index of earlier versions.
    pub fn save(
        &self,
        root: &Path,
        scope: &[u8],
        entries: &[Entry],
        contents: &[Option<Digest>],
    ) -> std::io::Result<()> {
        let Some((file, id)) = self.file(root, scope) else {
            return Ok(());
        };
        let cache = self
            .dir
            .as_deref()
            .expect("an index with a file has a directory");
        create_cache_dir(cache)?;
        fs_err::create_dir_all(cache.join(INDEX_DIR))?;
        match fs_err::remove_file(cache.join(OLD_INDEX_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let racy = self.now_ns - RACY_WINDOW.as_nanos() as i64;
        // Services that share a context and its patterns are hashed in parallel and save the same file: each
        // writes its own temporary file, and the last rename wins (both hold true records).
        static SAVES: AtomicU64 = AtomicU64::new(0);
        let n = SAVES.fetch_add(1, Ordering::Relaxed);
        let tmp = file.with_extension(format!("tmp.{}.{n}", std::process::id()));
        let mut w = BufWriter::with_capacity(64 << 10, fs_err::File::create(&tmp)?);
        w.write_all(MAGIC)?;
        w.write_all(&id)?;
        let mut block = Vec::with_capacity(64 << 10);
        let mut count = 0u32;
        let mut prev: &[u8] = &[];
        let flush = |w: &mut BufWriter<fs_err::File>, block: &mut Vec<u8>, count: &mut u32| {
            w.write_all(&(block.len() as u32).to_le_bytes())?;
            w.write_all(&count.to_le_bytes())?;
            w.write_all(block)?;
            w.write_all(block_sum(*count, block).as_bytes())?;
            block.clear();
            *count = 0;
            std::io::Result::Ok(())
        };
        for (e, c) in entries.iter().zip(contents) {
            let Some(digest) = c else { continue };
            if e.kind != EntryKind::File || e.ctime_ns >= racy {
                continue;
            }
            let shared = prev.iter().zip(&e.path).take_while(|(a, b)| a == b).count();
            varint(&mut block, shared as u64);
            varint(&mut block, (e.path.len() - shared) as u64);
            block.extend_from_slice(&e.path[shared..]);
            block.extend_from_slice(&fingerprint(e).to_le_bytes());
            block.extend_from_slice(&digest.0);
            prev = &e.path;
            count += 1;
            if count as usize == BLOCK_RECORDS {
                flush(&mut w, &mut block, &mut count)?;
            }
        }
        if count > 0 {
            flush(&mut w, &mut block, &mut count)?;
        }
        // The end marker: an empty block.
        flush(&mut w, &mut block, &mut count)?;
        // No fsync: after a crash a torn file fails its checksums and is rebuilt.
        w.flush()?;
        drop(w);
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

/// A 64-bit fingerprint of the stat fields that say whether a file may have changed. Two different stat tuples
/// give the same fingerprint with a chance of about 2^-64, which is what the record saves over storing all five.
fn fingerprint(e: &Entry) -> u64 {
    // splitmix64's finalizer over a running mix of the fields: every input bit reaches every output bit.
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    [e.size, e.mtime_ns as u64, e.ctime_ns as u64, e.ino, e.dev]
        .iter()
        .fold(0x9e37_79b9_7f4a_7c15, |h: u64, &v| {
            mix(h.wrapping_add(v).wrapping_add(0x9e37_79b9_7f4a_7c15))
        })
}

/// Send order: depth-first, siblings in byte order; the same as comparing the paths with `/` below every other byte.
fn walk_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let key = |c: &u8| if *c == b'/' { 0 } else { u16::from(*c) + 1 };
    a.iter().map(key).cmp(b.iter().map(key))
}

fn block_sum(count: u32, payload: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(&count.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The records of one index file, a verified block at a time; the current one in `path`, `fingerprint`, `digest`.
struct Records<R> {
    input: R,
    block: Vec<u8>,
    pos: usize,
    left: u32,
    path: Vec<u8>,
    fingerprint: u64,
    digest: Digest,
    started: bool,
    ended: bool,
    problem: Option<&'static str>,
    id: [u8; 32],
}

impl<R: Read> Records<R> {
    fn new(input: R, id: [u8; 32]) -> Records<R> {
        Records {
            input,
            block: Vec::new(),
            pos: 0,
            left: 0,
            path: Vec::new(),
            fingerprint: 0,
            digest: Digest([0; 32]),
            started: false,
            ended: false,
            problem: None,
            id,
        }
    }

    /// Whether the file was read to its end marker without a problem.
    fn complete(&self) -> bool {
        self.ended && self.problem.is_none()
    }

    fn fail(&mut self, why: &'static str) -> bool {
        self.problem.get_or_insert(why);
        self.ended = false;
        self.left = 0;
        false
    }

    /// Moves to the next record; false at the end or at the first problem.
    fn next(&mut self) -> bool {
        if self.problem.is_some() {
            return false;
        }
        if !self.started {
            self.started = true;
            let mut head = [0u8; 40];
            if self.input.read_exact(&mut head).is_err() || &head[..8] != MAGIC {
                return self.fail("is corrupt");
            }
            if head[8..] != self.id {
                return self.fail("belongs to another context");
            }
        }
        while self.left == 0 {
            if self.ended {
                return false;
            }
            let mut head = [0u8; 8];
            if self.input.read_exact(&mut head).is_err() {
                return self.fail("is truncated");
            }
            let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
            let count = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
            if len > MAX_BLOCK {
                return self.fail("is corrupt");
            }
            self.block.resize(len, 0);
            let mut sum = [0u8; 32];
            if self.input.read_exact(&mut self.block).is_err()
                || self.input.read_exact(&mut sum).is_err()
            {
                return self.fail("is truncated");
            }
            if block_sum(count, &self.block).as_bytes() != &sum {
                return self.fail("is corrupt");
            }
            if len == 0 && count == 0 {
                self.ended = true;
                return false;
            }
            self.pos = 0;
            self.left = count;
        }
        if self.record().is_none() {
            return self.fail("is corrupt");
        }
        self.left -= 1;
        true
    }

    fn record(&mut self) -> Option<()> {
        let shared = usize::try_from(self.varint()?).ok()?;
        let len = usize::try_from(self.varint()?).ok()?;
        if shared > self.path.len() {
            return None;
        }
        let suffix = self.take(len)?;
        self.path.truncate(shared);
        self.path.extend_from_slice(&self.block[suffix]);
        let fp = self.take(8)?;
        self.fingerprint = u64::from_le_bytes(self.block[fp].try_into().ok()?);
        let digest = self.take(32)?;
        self.digest = Digest(self.block[digest].try_into().ok()?);
        Some(())
    }

    /// The range of the next `n` bytes of the block, consumed.
    fn take(&mut self, n: usize) -> Option<std::ops::Range<usize>> {
        let end = self.pos.checked_add(n)?;
        (end <= self.block.len()).then_some(())?;
        let range = self.pos..end;
        self.pos = end;
        Some(range)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let at = self.take(1)?.start;
            let b = self.block[at];
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, ino: u64) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            size: 3,
            mtime_ns: 1_000,
            ctime_ns: 2_000,
            ino,
            dev: 9,
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            kind: EntryKind::Dir,
            ..file(path, 1)
        }
    }

    #[test]
    fn roundtrip_staleness_and_corruption() {
        let cache = tempfile::tempdir().unwrap();
        let idx = Index::open(cache.path());
        let root = Path::new("/x");
        let entries = vec![file("a", 1), dir("b"), file("b/c", 2), file("b.d", 3)];
        let known = idx.lookup(root, b"", &entries);
        assert_eq!(known.digests, vec![None; 4]);
        assert!(known.stale && known.problem.is_none());

        let d = |n| Some(Digest([n; 32]));
        let contents = vec![d(1), None, d(2), d(3)];
        idx.save(root, b"", &entries, &contents).unwrap();
        let known = idx.lookup(root, b"", &entries);
        assert_eq!(known.digests, contents);
        assert!(!known.stale);

        // Another scope (other ignore patterns) or root has records of its own.
        assert_eq!(idx.lookup(root, b"x", &entries).digests, vec![None; 4]);
        assert_eq!(
            idx.lookup(Path::new("/y"), b"", &entries).digests,
            vec![None; 4]
        );

        // A touched file misses; a removed one and a new one make the file stale, the others still hit.
        let mut touched = entries.clone();
        touched[2].mtime_ns += 1;
        let known = idx.lookup(root, b"", &touched);
        assert_eq!(known.digests, vec![d(1), None, None, d(3)]);
        assert!(known.stale);
        let fewer = vec![file("a", 1), dir("b"), file("b.d", 3)];
        let known = idx.lookup(root, b"", &fewer);
        assert_eq!(known.digests, vec![d(1), None, d(3)]);
        assert!(known.stale);
        let more = vec![
            file("a", 1),
            file("a2", 7),
            dir("b"),
            file("b/c", 2),
            file("b.d", 3),
        ];
        let known = idx.lookup(root, b"", &more);
        assert_eq!(known.digests, vec![d(1), None, None, d(2), d(3)]);
        assert!(known.stale);

        // Any flipped byte is caught by a block checksum or the header checks.
        let (path, _) = idx.file(root, b"").unwrap();
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let known = idx.lookup(root, b"", &entries);
            assert!(known.stale, "flipped byte {i} went unnoticed");
            assert!(known.problem.is_some(), "flipped byte {i} went unnoticed");
            for (got, want) in known.digests.iter().zip(&contents) {
                assert!(
                    got.is_none() || got == want,
                    "flipped byte {i} gave a wrong digest"
                );
            }
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(idx.lookup(root, b"", &entries).problem.is_some());
    }

    #[test]
    fn many_records_span_blocks() {
        let cache = tempfile::tempdir().unwrap();
        let idx = Index::open(cache.path());
        let entries: Vec<Entry> = (0..3000).map(|i| file(&format!("d/f{i:05}"), i)).collect();
        let contents: Vec<_> = (0..3000)
            .map(|i| Some(Digest([(i % 251) as u8; 32])))
            .collect();
        idx.save(Path::new("/r"), b"", &entries, &contents).unwrap();
        let known = idx.lookup(Path::new("/r"), b"", &entries);
        assert_eq!(known.digests, contents);
        assert!(!known.stale);
        let (path, _) = idx.file(Path::new("/r"), b"").unwrap();
        let per_entry = std::fs::metadata(path).unwrap().len() as f64 / 3000.0;
        // 40 bytes of record, plus a front-coded path of a few bytes.
        assert!(per_entry < 48.0, "{per_entry} bytes per entry");
    }

    #[test]
    fn send_order_compares_like_the_walk() {
        use std::cmp::Ordering::*;
        assert_eq!(walk_cmp(b"a/b", b"a.txt"), Less);
        assert_eq!(walk_cmp(b"a", b"a/b"), Less);
        assert_eq!(walk_cmp(b"a/z", b"ab"), Less);
        assert_eq!(walk_cmp(b"b", b"a/z"), Greater);
        assert_eq!(walk_cmp(b"x", b"x"), Equal);
    }

    #[test]
    fn saving_creates_the_cache_dir_with_a_gitignore_and_keeps_an_existing_one() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(".build-cache");
        Index::open(&dir).save(root.path(), b"", &[], &[]).unwrap();
        let ignore = dir.join(GITIGNORE_FILE);
        let text = std::fs::read_to_string(&ignore).unwrap();
        assert!(text.lines().any(|l| l == "*"), "{text}");

        std::fs::write(&ignore, "mine\n").unwrap();
        std::fs::write(dir.join(OLD_INDEX_FILE), "old").unwrap();
        Index::open(&dir).save(root.path(), b"", &[], &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&ignore).unwrap(), "mine\n");
        assert!(
            !dir.join(OLD_INDEX_FILE).exists(),
            "the old index is removed"
        );
    }

    #[test]
    fn recent_files_are_not_recorded() {
        let cache = tempfile::tempdir().unwrap();
        let idx = Index::open(cache.path());
        let mut e = file("a", 1);
        e.ctime_ns = idx.now_ns;
        let entries = vec![e];
        idx.save(Path::new("/r"), b"", &entries, &[Some(Digest([1; 32]))])
            .unwrap();
        let known = idx.lookup(Path::new("/r"), b"", &entries);
        assert_eq!(known.digests, vec![None]);
        assert!(known.stale && known.problem.is_none());
    }
}
