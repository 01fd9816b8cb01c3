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

    /// A pass over the index file of context `root` walked with ignore patterns `scope`, in send order. With `save`,
    /// the file is brought up to date with what the pass records (see [`Pass`]); without, it is only read (a pass
    /// over part of a context must not replace the records of the whole).
    pub fn pass(&self, root: &Path, scope: &[u8], save: bool) -> Pass<'_> {
        let mut pass = Pass {
            index: self,
            file: self.file(root, scope),
            reader: None,
            original: None,
            current: false,
            problem: None,
            save,
            failed: None,
            stale: false,
            matched: 0,
            writer: None,
        };
        let Some((file, id)) = &pass.file else {
            return pass;
        };
        match fs_err::File::open(file) {
            Ok(f) => {
                // A second handle on the same file, for copying its first records when something differs: the
                // path may by then name a newer file (a service sharing this context saved it meanwhile).
                pass.original = f.file().try_clone().ok();
                let mut reader = Records::new(BufReader::with_capacity(64 << 10, f), *id);
                pass.current = reader.next();
                pass.reader = Some(reader);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => pass.problem = Some(format!("cannot read {}: {e}", file.display())),
        }
        pass
    }
}

/// One pass over a context's index file, in send order: [`Pass::lookup`] each entry as the walk produces it, then
/// [`Pass::record`] it with its content hash, then [`Pass::finish`]. Lookups merge with the file's records (no map,
/// nothing held); a saving pass writes a new file only from the first difference on (copying the records that
/// matched before it from the old file), so a pass over unchanged files writes nothing, and memory never grows
/// with the context.
pub struct Pass<'a> {
    index: &'a Index,
    file: Option<(PathBuf, [u8; 32])>,
    reader: Option<Records<BufReader<fs_err::File>>>,
    /// The file `reader` reads, read again (by position, leaving `reader`'s alone) to copy its first records.
    original: Option<std::fs::File>,
    /// Whether `reader` holds a record not yet merged.
    current: bool,
    problem: Option<String>,
    save: bool,
    /// The write that ended the saving, if one failed.
    failed: Option<std::io::Error>,
    /// The file differs from what the entries looked up so far would record.
    stale: bool,
    /// Entries recorded before anything differed: the file's first records, to copy when something does.
    matched: u64,
    writer: Option<Writer>,
}

impl Pass<'_> {
    /// The recorded content hash of `e` (a regular file, the next in send order) if its stat still matches.
    pub fn lookup(&mut self, e: &Entry) -> Option<Digest> {
        if e.kind != EntryKind::File || self.file.is_none() {
            return None;
        }
        let Some(reader) = self.reader.as_mut() else {
            self.stale = true;
            return None;
        };
        // Records before this path are of files that are gone (or no longer regular files).
        while self.current && walk_cmp(&reader.path, &e.path) == std::cmp::Ordering::Less {
            self.stale = true;
            self.current = reader.next();
        }
        if !(self.current && reader.path == e.path) {
            self.stale = true;
            return None;
        }
        let hit = (reader.fingerprint == fingerprint(e)).then_some(reader.digest);
        self.stale |= hit.is_none();
        self.current = reader.next();
        hit
    }

    /// Records `e` (the next entry looked up) with its content hash, if it is a regular file that has one and did
    /// not change too recently to be trusted later. Only a saving pass writes, and only once something differs. A
    /// write that fails ends the saving (the old file stays); [`Pass::finish`] returns the error.
    pub fn record(&mut self, e: &Entry, content: Option<&Digest>) {
        let Some(digest) = content else {
            return;
        };
        if !self.save
            || self.file.is_none()
            || e.kind != EntryKind::File
            || e.ctime_ns >= self.index.now_ns - RACY_WINDOW.as_nanos() as i64
        {
            return;
        }
        if self.writer.is_none() && !self.stale {
            self.matched += 1;
            return;
        }
        let started = match self.writer {
            Some(_) => Ok(()),
            None => self.start_writing(),
        };
        let written = started.and_then(|()| {
            let w = self.writer.as_mut().expect("started");
            w.push(&e.path, fingerprint(e), digest)
        });
        if let Err(e) = written {
            self.abandon(e);
        }
    }

    /// Stops saving after a failed write, removing the temporary file.
    fn abandon(&mut self, error: std::io::Error) {
        if let Some(w) = self.writer.take() {
            drop(w.out);
            let _ = fs_err::remove_file(&w.tmp);
        }
        self.save = false;
        self.failed.get_or_insert(error);
    }

    /// Opens the new file and copies into it the records that matched so far.
    fn start_writing(&mut self) -> std::io::Result<()> {
        let (file, id) = self.file.clone().expect("only a pass with a file writes");
        let mut w = Writer::create(self.index, &file, &id)?;
        if self.matched > 0 {
            let original = self.original.as_ref().ok_or_else(|| {
                std::io::Error::other(format!("{} is no longer open", file.display()))
            })?;
            let from_start = ReadAt {
                file: original,
                at: 0,
            };
            let mut old = Records::new(BufReader::with_capacity(64 << 10, from_start), id);
            for _ in 0..self.matched {
                if !old.next() {
                    return Err(std::io::Error::other(format!(
                        "{} changed while it was read",
                        file.display()
                    )));
                }
                w.push(&old.path, old.fingerprint, &old.digest)?;
            }
        }
        self.writer = Some(w);
        Ok(())
    }

    /// Whether the file differs from what the entries looked up so far would record (records missing, extra or
    /// stale, or the file missing or unreadable); after the last lookup, whether it is worth saving.
    pub fn stale(&self) -> bool {
        self.stale || self.current || self.reader.as_ref().is_none_or(|r| !r.complete())
    }

    /// Ends the pass: a saving pass puts the new file in place if anything differed. Returns why the old file was
    /// not usable, if it was not (corrupt, unreadable), for a warning; an error when the new one could not be
    /// written (the old one then stays).
    pub fn finish(mut self) -> std::io::Result<Option<String>> {
        // Records the walk never reached (files that are gone) or an unreadable file.
        if let Some(reader) = &mut self.reader {
            while self.current {
                self.stale = true;
                self.current = reader.next();
            }
        }
        let problem = self.problem.take().or_else(|| {
            let (file, _) = self.file.as_ref()?;
            let why = self.reader.as_ref()?.problem?;
            Some(format!("{} {why}", file.display()))
        });
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if !self.save || self.file.is_none() {
            return Ok(problem);
        }
        if self.writer.is_none() && self.stale() {
            self.start_writing()?;
        }
        if let Some(w) = self.writer.take() {
            let tmp = w.tmp.clone();
            if let Err(e) = w.finish() {
                let _ = fs_err::remove_file(&tmp);
                return Err(e);
            }
        }
        Ok(problem)
    }
}

/// Reads a file from a position of its own (`pread`), whatever other handles on it do.
struct ReadAt<'a> {
    file: &'a std::fs::File,
    at: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A new index file, written under a temporary name a block at a time and renamed into place when complete.
struct Writer {
    tmp: PathBuf,
    file: PathBuf,
    out: BufWriter<fs_err::File>,
    block: Vec<u8>,
    count: u32,
    prev: Vec<u8>,
}

impl Writer {
    /// Starts the file `file` (with check value `id`), creating the cache directory when missing and removing the
    /// single-file index of earlier versions.
    fn create(index: &Index, file: &Path, id: &[u8; 32]) -> std::io::Result<Writer> {
        let cache = index
            .dir
            .as_deref()
            .expect("an index with a file has a directory");
        create_cache_dir(cache)?;
        fs_err::create_dir_all(cache.join(INDEX_DIR))?;
        match fs_err::remove_file(cache.join(OLD_INDEX_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // Services that share a context and its patterns are hashed in parallel and save the same file: each
        // writes its own temporary file, and the last rename wins (both hold true records).
        static SAVES: AtomicU64 = AtomicU64::new(0);
        let n = SAVES.fetch_add(1, Ordering::Relaxed);
        let tmp = file.with_extension(format!("tmp.{}.{n}", std::process::id()));
        let mut out = BufWriter::with_capacity(64 << 10, fs_err::File::create(&tmp)?);
        out.write_all(MAGIC)?;
        out.write_all(id)?;
        Ok(Writer {
            tmp,
            file: file.to_owned(),
            out,
            block: Vec::with_capacity(64 << 10),
            count: 0,
            prev: Vec::new(),
        })
    }

    fn push(&mut self, path: &[u8], fingerprint: u64, digest: &Digest) -> std::io::Result<()> {
        let shared = self
            .prev
            .iter()
            .zip(path)
            .take_while(|(a, b)| a == b)
            .count();
        varint(&mut self.block, shared as u64);
        varint(&mut self.block, (path.len() - shared) as u64);
        self.block.extend_from_slice(&path[shared..]);
        self.block.extend_from_slice(&fingerprint.to_le_bytes());
        self.block.extend_from_slice(&digest.0);
        self.prev.truncate(shared);
        self.prev.extend_from_slice(&path[shared..]);
        self.count += 1;
        if self.count as usize == BLOCK_RECORDS {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> std::io::Result<()> {
        self.out
            .write_all(&(self.block.len() as u32).to_le_bytes())?;
        self.out.write_all(&self.count.to_le_bytes())?;
        self.out.write_all(&self.block)?;
        self.out
            .write_all(block_sum(self.count, &self.block).as_bytes())?;
        self.block.clear();
        self.count = 0;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        if self.count > 0 {
            self.flush_block()?;
        }
        // The end marker: an empty block.
        self.flush_block()?;
        // No fsync: after a crash a torn file fails its checksums and is rebuilt.
        self.out.flush()?;
        drop(self.out);
        fs_err::rename(&self.tmp, &self.file)
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
    use std::os::unix::fs::MetadataExt;

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

    /// What a read-only pass knows of `entries`.
    struct Known {
        digests: Vec<Option<Digest>>,
        stale: bool,
        problem: Option<String>,
    }

    fn lookup(idx: &Index, root: &Path, scope: &[u8], entries: &[Entry]) -> Known {
        let mut pass = idx.pass(root, scope, false);
        let digests = entries.iter().map(|e| pass.lookup(e)).collect();
        let stale = pass.stale();
        let problem = pass.finish().unwrap();
        Known {
            digests,
            stale,
            problem,
        }
    }

    /// A saving pass over `entries` with `contents`; whether it wrote the file.
    fn save(
        idx: &Index,
        root: &Path,
        scope: &[u8],
        entries: &[Entry],
        contents: &[Option<Digest>],
    ) -> bool {
        let file = idx.file(root, scope).map(|(f, _)| f);
        let before = file
            .as_ref()
            .and_then(|f| std::fs::metadata(f).ok())
            .map(|m| m.ino());
        let mut pass = idx.pass(root, scope, true);
        for (e, c) in entries.iter().zip(contents) {
            pass.lookup(e);
            pass.record(e, c.as_ref());
        }
        pass.finish().unwrap();
        let after = file
            .as_ref()
            .and_then(|f| std::fs::metadata(f).ok())
            .map(|m| m.ino());
        before != after
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
        let known = lookup(&idx, root, b"", &entries);
        assert_eq!(known.digests, vec![None; 4]);
        assert!(known.stale && known.problem.is_none());

        let d = |n| Some(Digest([n; 32]));
        let contents = vec![d(1), None, d(2), d(3)];
        assert!(save(&idx, root, b"", &entries, &contents));
        let known = lookup(&idx, root, b"", &entries);
        assert_eq!(known.digests, contents);
        assert!(!known.stale);

        // Another scope (other ignore patterns) or root has records of its own.
        assert_eq!(lookup(&idx, root, b"x", &entries).digests, vec![None; 4]);
        assert_eq!(
            lookup(&idx, Path::new("/y"), b"", &entries).digests,
            vec![None; 4]
        );

        // A touched file misses; a removed one and a new one make the file stale, the others still hit.
        let mut touched = entries.clone();
        touched[2].mtime_ns += 1;
        let known = lookup(&idx, root, b"", &touched);
        assert_eq!(known.digests, vec![d(1), None, None, d(3)]);
        assert!(known.stale);
        let fewer = vec![file("a", 1), dir("b"), file("b.d", 3)];
        let known = lookup(&idx, root, b"", &fewer);
        assert_eq!(known.digests, vec![d(1), None, d(3)]);
        assert!(known.stale);
        let more = vec![
            file("a", 1),
            file("a2", 7),
            dir("b"),
            file("b/c", 2),
            file("b.d", 3),
        ];
        let known = lookup(&idx, root, b"", &more);
        assert_eq!(known.digests, vec![d(1), None, None, d(2), d(3)]);
        assert!(known.stale);

        // Any flipped byte is caught by a block checksum or the header checks.
        let (path, _) = idx.file(root, b"").unwrap();
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let known = lookup(&idx, root, b"", &entries);
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
        assert!(lookup(&idx, root, b"", &entries).problem.is_some());
    }

    #[test]
    fn many_records_span_blocks() {
        let cache = tempfile::tempdir().unwrap();
        let idx = Index::open(cache.path());
        let entries: Vec<Entry> = (0..3000).map(|i| file(&format!("d/f{i:05}"), i)).collect();
        let contents: Vec<_> = (0..3000)
            .map(|i| Some(Digest([(i % 251) as u8; 32])))
            .collect();
        assert!(save(&idx, Path::new("/r"), b"", &entries, &contents));
        let known = lookup(&idx, Path::new("/r"), b"", &entries);
        assert_eq!(known.digests, contents);
        assert!(!known.stale);
        let (path, _) = idx.file(Path::new("/r"), b"").unwrap();
        let per_entry = std::fs::metadata(&path).unwrap().len() as f64 / 3000.0;
        // 40 bytes of record, plus a front-coded path of a few bytes.
        assert!(per_entry < 48.0, "{per_entry} bytes per entry");

        // Nothing changed: nothing written.
        assert!(!save(&idx, Path::new("/r"), b"", &entries, &contents));
        // A change in the third block: the records before it come from the old file, and the new file is the one a
        // pass from scratch writes.
        let mut changed = entries.clone();
        changed[2700].mtime_ns += 1;
        let mut new_contents = contents.clone();
        new_contents[2700] = Some(Digest([7; 32]));
        assert!(save(&idx, Path::new("/r"), b"", &changed, &new_contents));
        let updated = std::fs::read(&path).unwrap();
        let fresh = tempfile::tempdir().unwrap();
        let scratch = Index::open(fresh.path());
        assert!(save(
            &scratch,
            Path::new("/r"),
            b"",
            &changed,
            &new_contents
        ));
        let (fresh_path, _) = scratch.file(Path::new("/r"), b"").unwrap();
        assert_eq!(updated, std::fs::read(fresh_path).unwrap());
        assert_eq!(
            lookup(&idx, Path::new("/r"), b"", &changed).digests,
            new_contents
        );
        // A file gone at the end is noticed too.
        assert!(save(
            &idx,
            Path::new("/r"),
            b"",
            &changed[..2999],
            &new_contents[..2999]
        ));
        assert!(!lookup(&idx, Path::new("/r"), b"", &changed[..2999]).stale);
    }

    #[test]
    fn records_are_copied_from_the_file_this_pass_read() {
        let cache = tempfile::tempdir().unwrap();
        let idx = Index::open(cache.path());
        let root = Path::new("/x");
        let d = |n| Some(Digest([n; 32]));
        let entries = vec![file("a", 1), file("b/c", 2), file("b.d", 3)];
        assert!(save(&idx, root, b"", &entries, &[d(1), d(2), d(3)]));

        let mut pass = idx.pass(root, b"", true);
        for (e, c) in entries[..2].iter().zip([d(1), d(2)]) {
            assert_eq!(pass.lookup(e), c);
            pass.record(e, c.as_ref());
        }
        // Meanwhile a service sharing this context saves another file in its place.
        assert!(save(&idx, root, b"", &[file("z", 9)], &[d(9)]));
        // Then this pass meets a change: what it copies is what it read, not the newer file.
        let mut changed = entries[2].clone();
        changed.mtime_ns += 1;
        assert_eq!(pass.lookup(&changed), None);
        pass.record(&changed, d(7).as_ref());
        pass.finish().unwrap();
        let now = [entries[0].clone(), entries[1].clone(), changed];
        let known = lookup(&idx, root, b"", &now);
        assert_eq!(known.digests, vec![d(1), d(2), d(7)]);
        assert!(!known.stale);
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
        save(&Index::open(&dir), root.path(), b"", &[], &[]);
        let ignore = dir.join(GITIGNORE_FILE);
        let text = std::fs::read_to_string(&ignore).unwrap();
        assert!(text.lines().any(|l| l == "*"), "{text}");

        std::fs::write(&ignore, "mine\n").unwrap();
        std::fs::write(dir.join(OLD_INDEX_FILE), "old").unwrap();
        // Another context: a file to write.
        assert!(save(
            &Index::open(&dir),
            &root.path().join("other"),
            b"",
            &[],
            &[]
        ));
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
        save(
            &idx,
            Path::new("/r"),
            b"",
            &entries,
            &[Some(Digest([1; 32]))],
        );
        let known = lookup(&idx, Path::new("/r"), b"", &entries);
        assert_eq!(known.digests, vec![None]);
        assert!(known.stale && known.problem.is_none());
    }
}
