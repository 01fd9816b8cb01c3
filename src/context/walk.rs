//! The canonical entry list of a context: depth-first, siblings in byte order, parents before children, exactly
//! the order and selection fsutil's filtered walk produces (and the order BuildKit's receiver checks).
//!
//! This is a small walker of its own rather than `ignore::WalkBuilder`: Docker's matching needs each directory's
//! per-pattern results to be handed to its children, and a directory that is excluded but may hold `!`-re-included
//! entries is walked without being emitted, then emitted lazily when something below it is kept. Both need state
//! along the current path that an entry predicate cannot carry.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::pattern::MatchInfo;
use super::{ContextError, ContextFilter};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link, with its target exactly as `readlink` returns it. Never followed.
    Symlink(Vec<u8>),
    /// A named pipe. fsutil sends it with `ModeNamedPipe` and no content.
    Fifo,
    /// A Unix socket. fsutil clears the socket bit, so it goes out as a regular file whose open fails: the
    /// receiver gets an empty file.
    Socket,
    /// A block or character device, with the device numbers fsutil computes from `st_rdev`. No content.
    Device {
        /// A character device (Go `ModeCharDevice`), else a block device.
        char: bool,
        /// `(rdev >> 8) & 0xfff`, as fsutil's `major`.
        major: u64,
        /// `(rdev & 0xff) | ((rdev >> 12) & 0xfff00)`, as fsutil's `minor`.
        minor: u64,
    },
}

/// One entry of a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the context root, `/`-separated, as raw bytes (names need not be UTF-8).
    pub path: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
    /// Permission and special bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// `st_size`: bytes (files), target length (symlinks), 0 (directories); what fsutil sends.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch (for the local index only).
    pub ctime_ns: i64,
    /// Inode number (for the local index only).
    pub ino: u64,
    /// Device number (for the local index only).
    pub dev: u64,
}

impl Entry {
    /// The path for humans: lossy UTF-8, with a trailing `/` for directories.
    pub fn display_path(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.path).into_owned();
        if self.kind == EntryKind::Dir {
            s.push('/');
        }
        s
    }

    /// The line `hash --list` prints: the path (a directory's with a trailing `/`), quoted when it holds a control
    /// byte, `"`, `\\` or invalid UTF-8 (see [`super::quote_path`]).
    pub fn list_line(&self) -> Vec<u8> {
        let mut p = self.path.clone();
        if self.kind == EntryKind::Dir {
            p.push(b'/');
        }
        super::quote_path(&p)
    }

    /// Absolute path of this entry under `root`.
    pub fn abs_path(&self, root: &Path) -> PathBuf {
        root.join(std::ffi::OsStr::from_bytes(&self.path))
    }
}

/// A directory's per-pattern results, handed to its children.
#[derive(Default)]
struct Parent {
    include: MatchInfo,
    exclude: MatchInfo,
}

/// What the filter made of one child of a directory.
enum Child {
    /// Filtered out (with everything below it).
    Skip,
    /// Looked at: the entry, whether it is kept itself, and for a directory what its children inherit.
    Seen(Entry, bool, Option<Parent>),
}

/// Directories with at least this many children stat them in parallel; smaller ones are not worth a task.
const PARALLEL_CHILDREN: usize = 16;

/// Walks `root` through `filter`, returning the kept entries in send order. Fails where fsutil's walk fails,
/// including on a pattern whose regexp does not compile when it is first evaluated.
pub fn walk(root: &Path, filter: &ContextFilter) -> Result<Vec<Entry>, ContextError> {
    let mut out = Vec::new();
    walk_each(root, filter, |e| {
        out.push(e);
        Ok::<(), ContextError>(())
    })?;
    Ok(out)
}

/// Walks `root` through `filter`, handing each kept entry to `visit` in send order, so that nothing but the current
/// directory's children and the path down to it is held (issue 12: memory must not grow with the context). Stops at
/// the first error of `visit` or of the walk, in send order: the one a sequential walk would return.
///
/// The children of a directory are stat'ed and matched in parallel (on the caller's rayon pool); `visit` is called
/// by the calling thread.
pub fn walk_each<E: From<ContextError>>(
    root: &Path,
    filter: &ContextFilter,
    visit: impl FnMut(Entry) -> Result<(), E>,
) -> Result<(), E> {
    let mut walker = Walker {
        filter,
        pending: Vec::new(),
        visit,
    };
    walker.dir(root, &[], None, false)
}

/// The state of one walk.
struct Walker<'f, F> {
    filter: &'f ContextFilter,
    /// Directories walked only for `!` exceptions (excluded themselves), outermost first, not yet handed on: each
    /// goes out just before the first kept entry below it, or not at all.
    pending: Vec<Entry>,
    visit: F,
}

impl<F> Walker<'_, F> {
    /// Hands `entry` on, after the pending directories above it.
    fn emit<E>(&mut self, entry: Entry) -> Result<(), E>
    where
        F: FnMut(Entry) -> Result<(), E>,
    {
        for dir in std::mem::take(&mut self.pending) {
            (self.visit)(dir)?;
        }
        (self.visit)(entry)
    }

    /// Hands on what is kept below directory `abs` (at `rel`), in send order.
    fn dir<E: From<ContextError>>(
        &mut self,
        abs: &Path,
        rel: &[u8],
        parent: Option<&Parent>,
        only_walked: bool,
    ) -> Result<(), E>
    where
        F: FnMut(Entry) -> Result<(), E>,
    {
        let filter = self.filter;
        let io = |source| ContextError::Io {
            path: abs.to_owned(),
            source,
        };
        let read = match fs_err::read_dir(abs) {
            Ok(read) => read,
            // fsutil tolerates a permission error on a directory it only walks for `!` exceptions.
            Err(e) if only_walked && e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Ok(());
            }
            Err(e) => return Err(io(e).into()),
        };
        let mut names = Vec::new();
        for child in read {
            let child = child.map_err(io)?;
            names.push((child.file_name(), child));
        }
        names.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let visit = |(name, dirent): &(std::ffi::OsString, fs_err::DirEntry)| {
            let mut path = Vec::with_capacity(rel.len() + 1 + name.len());
            path.extend_from_slice(rel);
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            child(filter, abs, name, dirent, path, parent)
        };
        let children = if names.len() >= PARALLEL_CHILDREN {
            names.par_iter().with_max_len(8).map(visit).collect()
        } else {
            names.iter().map(visit).collect::<Vec<_>>()
        };
        drop(names);
        for c in children {
            let Child::Seen(entry, kept, inherit) = c? else {
                continue;
            };
            let Some(inherit) = inherit else {
                if kept {
                    self.emit(entry)?;
                }
                continue;
            };
            let sub = abs.join(std::ffi::OsStr::from_bytes(
                entry.path.rsplit(|&b| b == b'/').next().unwrap_or_default(),
            ));
            let rel = entry.path.clone();
            // A directory walked only for `!` exceptions waits in `pending` until something below it is kept, and is
            // dropped when nothing is.
            let depth = self.pending.len();
            if kept {
                self.emit(entry)?;
            } else {
                self.pending.push(entry);
            }
            self.dir(&sub, &rel, Some(&inherit), !kept)?;
            self.pending.truncate(depth);
        }
        Ok(())
    }
}

/// Stats and matches one child `name` of directory `dir`.
fn child(
    filter: &ContextFilter,
    dir: &Path,
    name: &std::ffi::OsStr,
    dirent: &fs_err::DirEntry,
    path: Vec<u8>,
    parent: Option<&Parent>,
) -> Result<Child, ContextError> {
    if filter.is_hidden(&path) {
        return Ok(Child::Skip);
    }
    // lstat relative to the directory being read (`fstatat` on its descriptor): the kernel resolves one name, not
    // every component of the absolute path again.
    let meta = dirent.metadata().map_err(|source| ContextError::Io {
        path: dir.join(name),
        source,
    })?;
    let ft = meta.file_type();
    let is_dir = ft.is_dir();
    let mut skip = false;

    let mut include_info = MatchInfo::default();
    if let Some(include) = filter.include() {
        let (m, info) = include
            .matches_using_parent_results(&path, parent.map(|d| &d.include))
            .map_err(|e| filter.pattern_failed("include", e.index, e.error))?;
        include_info = info;
        if !m {
            if is_dir && filter.only_prefix_includes() {
                let could_match = include
                    .patterns()
                    .iter()
                    .filter(|p| !p.is_exclusion())
                    .any(|p| dir_prefix_of(p.without_trailing_glob(), &path));
                if !could_match {
                    return Ok(Child::Skip);
                }
            }
            skip = true;
        }
    }
    let mut exclude_info = MatchInfo::default();
    if let Some(exclude) = filter.exclude() {
        let (m, info) = exclude
            .matches_using_parent_results(&path, parent.map(|d| &d.exclude))
            .map_err(|e| filter.pattern_failed("exclude", e.index, e.error))?;
        exclude_info = info;
        if m {
            if is_dir && filter.only_prefix_exclude_exceptions() {
                let could_reinclude = exclude.has_exclusions()
                    && exclude
                        .patterns()
                        .iter()
                        .filter(|p| p.is_exclusion())
                        .any(|p| dir_prefix_of(p.without_trailing_glob(), &path));
                if !could_reinclude {
                    return Ok(Child::Skip);
                }
            }
            skip = true;
        }
    }

    let kind = if is_dir {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else if ft.is_symlink() {
        let abs = dir.join(name);
        let target = fs_err::read_link(&abs).map_err(|source| ContextError::Io {
            path: abs.clone(),
            source,
        })?;
        EntryKind::Symlink(target.into_os_string().into_vec())
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_socket() {
        EntryKind::Socket
    } else {
        let rdev = meta.rdev();
        EntryKind::Device {
            char: ft.is_char_device(),
            major: (rdev >> 8) & 0xfff,
            minor: (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
        }
    };
    let entry = Entry {
        size: match kind {
            EntryKind::Dir => 0,
            _ => meta.len(),
        },
        path,
        kind,
        mode: meta.mode() & 0o7777,
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        ino: meta.ino(),
        dev: meta.dev(),
    };
    let inherit = is_dir.then_some(Parent {
        include: include_info,
        exclude: exclude_info,
    });
    Ok(Child::Seen(entry, !skip, inherit))
}

/// fsutil's test: can a pattern (without its trailing glob) name something inside directory `dir`?
fn dir_prefix_of(pattern: &[u8], dir: &[u8]) -> bool {
    let mut p = pattern.to_vec();
    p.push(b'/');
    let mut d = dir.to_vec();
    d.push(b'/');
    p.starts_with(&d)
}

use std::os::unix::ffi::OsStringExt;
