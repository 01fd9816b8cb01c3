//! The hashing of one walked context, a chunk of entries at a time: the walk runs on its own thread a few chunks
//! ahead, and each chunk gets its content hashes (from the index where still valid, else read, in parallel) and its
//! entry digests (in parallel) before it goes to a [`Sink`] in send order. Memory is bounded by the chunks in
//! flight, not by the context (issue 12: 1M entries must not cost 200 MiB), and on a cold disk the reads of one
//! chunk overlap the walk of the next.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use rayon::prelude::*;

use super::{FileStat, HashError, entry_digest, hash_cached_file, hash_stable_file};
use crate::context::{ContextError, ContextFilter, Entry, EntryKind, walk_each};
use crate::digest::Digest;
use crate::index::Pass;

/// Entries a chunk holds: enough for the parallel steps to spread over the cores, few enough to stay small.
const CHUNK: usize = 2048;
/// Chunks the walk may run ahead of the hashing.
const AHEAD: usize = 4;

/// Threads that read and hash files. Reading many small files cold is mostly waiting on the disk, so more readers
/// than cores help (50k small files read cold: 8.2 s with one reader, 1.7 s with 16).
const READERS: usize = 16;

/// Consecutive hashed entries of a walk, in send order.
pub(super) struct Chunk {
    pub(super) entries: Vec<Entry>,
    /// Per entry, the blake3 of its content (regular files only).
    pub(super) contents: Vec<Option<Digest>>,
    /// Per entry, its digest.
    pub(super) digests: Vec<Digest>,
}

/// Where the chunks of a hashed walk go, in send order.
pub(super) trait Sink {
    fn take(&mut self, chunk: Chunk);
}

/// A sink that keeps everything: the whole list, for a build (the session checks what it sends against it).
#[derive(Default)]
pub(super) struct Listed {
    pub(super) entries: Vec<Entry>,
    pub(super) contents: Vec<Option<Digest>>,
    pub(super) digests: Vec<Digest>,
}

impl Sink for Listed {
    fn take(&mut self, chunk: Chunk) {
        self.entries.extend(chunk.entries);
        self.contents.extend(chunk.contents);
        self.digests.extend(chunk.digests);
    }
}

/// The digest of a sequence of entry digests, folded as they come: the blake3 of their concatenation, and their
/// count (which the service digest puts after it, so that nothing has to be held to know it first).
#[derive(Clone, Default)]
pub struct EntriesDigest {
    hasher: blake3::Hasher,
    count: u64,
}

impl EntriesDigest {
    /// The fold of `digests`.
    pub fn of<'a>(digests: impl IntoIterator<Item = &'a Digest>) -> EntriesDigest {
        let mut fold = EntriesDigest::default();
        for d in digests {
            fold.push(d);
        }
        fold
    }

    fn push(&mut self, d: &Digest) {
        self.hasher.update(&d.0);
        self.count += 1;
    }

    /// The blake3 of the concatenated entry digests.
    pub fn digest(&self) -> Digest {
        self.hasher.finalize().into()
    }

    /// How many entries were folded.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl Sink for EntriesDigest {
    fn take(&mut self, chunk: Chunk) {
        for d in &chunk.digests {
            self.push(d);
        }
    }
}

/// Why the walk thread stopped early.
enum Stop {
    Walk(ContextError),
    /// The hashing side failed and hung up.
    HungUp,
}

impl Stop {
    /// The error to report; a hang-up has the processor's error reported instead.
    fn into_error(self) -> HashError {
        match self {
            Stop::Walk(e) => e.into(),
            Stop::HungUp => unreachable!("the processor's error is returned first"),
        }
    }
}

impl From<ContextError> for Stop {
    fn from(e: ContextError) -> Stop {
        Stop::Walk(e)
    }
}

/// Walks `root` through `filter` and hashes every kept entry into `sink`, looking contents up in (and recording
/// them with) the index `pass`. The first error in send order is the one returned, as a sequential walk would.
///
/// The walk runs on the calling thread (its stats on the caller's rayon pool), and waits for the hashing without
/// blocking a rayon worker (see [`wait_below`]), so any thread may call this, a rayon worker included.
pub(super) fn hash_walk(
    root: &Path,
    filter: &ContextFilter,
    pass: &mut Pass<'_>,
    sink: &mut (dyn Sink + Send),
) -> Result<(), HashError> {
    let in_flight = &AtomicUsize::new(0);
    std::thread::scope(|scope| {
        // A context of one chunk is hashed when its walk ends, on this thread: a monorepo has many small contexts,
        // and a thread each doubled the time of 50 contexts of 2,000 files (issue 12). From a second chunk on, a
        // thread of its own hashes while the walk goes on (on a cold disk, 100k files: 2.9 -> 2.4 s). The walk
        // stays on the caller's thread and pool, its parallel stats joins inside it.
        let mut held = Some((pass, sink));
        let mut processor = None;
        let mut chunk = Vec::with_capacity(CHUNK);
        let walked = walk_each(root, filter, |e| {
            chunk.push(e);
            if chunk.len() < CHUNK {
                return Ok(());
            }
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
            let (tx, handle) = processor.get_or_insert_with(|| {
                let (pass, sink) = held.take().expect("held until the processor starts");
                let (tx, rx) = mpsc::channel::<Vec<Entry>>();
                let handle = scope.spawn(move || {
                    let mut cache = CacheReads::default();
                    rx.iter().try_for_each(|entries| {
                        let hashed = hash_chunk(root, entries, pass, &mut cache, sink);
                        in_flight.fetch_sub(1, Ordering::Release);
                        hashed
                    })
                });
                (tx, handle)
            });
            wait_below(in_flight, AHEAD, handle);
            in_flight.fetch_add(1, Ordering::Acquire);
            tx.send(full).map_err(|_| Stop::HungUp)
        });
        let Some((tx, handle)) = processor else {
            walked.map_err(Stop::into_error)?;
            let (pass, sink) = held.take().expect("no processor took them");
            if !chunk.is_empty() {
                hash_chunk(root, chunk, pass, &mut CacheReads::default(), sink)?;
            }
            return Ok(());
        };
        if walked.is_ok() && !chunk.is_empty() {
            // When this fails, the processor failed: its error comes below.
            let _ = tx.send(chunk);
        }
        // The processor ends when the channel does; on failure it has dropped its end, and the walk stopped.
        drop(tx);
        let hashed = handle
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        // Its error is earlier in send order than the walk's.
        hashed?;
        walked.map_err(Stop::into_error)
    })
}

/// Waits until fewer than `limit` chunks are in flight, or the `processor` has ended (it failed: the send that
/// follows says so). The walk may run on a rayon worker whose pool the hashing needs too, so it must not block the
/// thread: it runs the pool's other jobs meanwhile, or naps briefly.
fn wait_below<T>(
    in_flight: &AtomicUsize,
    limit: usize,
    processor: &std::thread::ScopedJoinHandle<'_, T>,
) {
    while in_flight.load(Ordering::Acquire) >= limit && !processor.is_finished() {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
}

/// Whether files are worth reading from the page cache first ([`hash_cached_file`]): yes until most of a chunk's
/// were not there (a cold disk), then only on every eighth chunk, to notice when they are again.
#[derive(Default)]
struct CacheReads {
    missed_last: bool,
    chunks_since: u32,
}

impl CacheReads {
    fn worth_trying(&mut self) -> bool {
        self.chunks_since += 1;
        !self.missed_last || self.chunks_since.is_multiple_of(8)
    }

    fn tried(&mut self, files: usize, missed: usize) {
        self.missed_last = missed * 2 > files;
        self.chunks_since = 0;
    }
}

/// Hashes one chunk and hands it to `sink`. A file whose status changed since the walk gets its entry updated to
/// what was actually hashed.
fn hash_chunk(
    root: &Path,
    mut entries: Vec<Entry>,
    pass: &mut Pass<'_>,
    cache: &mut CacheReads,
    sink: &mut (dyn Sink + Send),
) -> Result<(), HashError> {
    let mut contents: Vec<Option<Digest>> = entries.iter().map(|e| pass.lookup(e)).collect();
    let files = entries
        .iter()
        .zip(&contents)
        .filter(|(e, c)| unknown(e, c))
        .count();
    if files > 0 && cache.worth_trying() {
        // From the page cache, on the threads that hash; what is not there waits for the readers below.
        read_unknown(root, &mut entries, &mut contents, hash_cached_file)?;
        let missed = entries
            .iter()
            .zip(&contents)
            .filter(|(e, c)| unknown(e, c))
            .count();
        cache.tried(files, missed);
    }
    if entries.iter().zip(&contents).any(|(e, c)| unknown(e, c)) {
        on_readers(|| {
            read_unknown(root, &mut entries, &mut contents, |path, seen| {
                hash_stable_file(path, Some(seen)).map(Some)
            })
        })?;
    }
    for (e, c) in entries.iter().zip(&contents) {
        pass.record(e, c.as_ref());
    }
    let digests = entries
        .par_iter()
        .zip(&contents)
        .with_min_len(256)
        .map(|(e, c)| entry_digest(e, c.as_ref()))
        .collect();
    sink.take(Chunk {
        entries,
        contents,
        digests,
    });
    Ok(())
}

/// Whether `e` is a regular file whose content hash `c` is not known yet.
fn unknown(e: &Entry, c: &Option<Digest>) -> bool {
    e.kind == EntryKind::File && c.is_none()
}

/// Fills in, in parallel, the content hash of each regular file of `entries` that has none in `contents` (same
/// order) with what `read` makes of it (given the status the walk saw; None leaves it unknown), updating the entry
/// to the status that was hashed.
fn read_unknown(
    root: &Path,
    entries: &mut [Entry],
    contents: &mut [Option<Digest>],
    read: impl Fn(&Path, FileStat) -> Result<Option<(Digest, FileStat)>, HashError> + Sync,
) -> Result<(), HashError> {
    entries
        .par_iter_mut()
        .zip(contents)
        .with_min_len(64)
        .try_for_each(|(e, c)| {
            if unknown(e, c)
                && let Some((d, stat)) = read(&e.abs_path(root), FileStat::from_entry(e))?
            {
                stat.apply(e);
                *c = Some(d);
            }
            Ok(())
        })
}

fn reader_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let threads = READERS.max(std::thread::available_parallelism().map_or(1, usize::from));
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("buildopt-hash-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Runs `f` on the reader pool, so that the file reads inside it run on its threads. Only reading waits on the
/// disk: the walk and the digests run on rayon's global pool, one thread a core (on the reader pool a warm run of
/// 100k files spent a quarter of its time switching and yielding between 16 threads on 2 cores: issue 12).
fn on_readers<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match reader_pool() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}
