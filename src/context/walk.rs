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

struct Dir {
    entry: Entry,
    emitted: bool,
    include: MatchInfo,
    exclude: MatchInfo,
}

struct Walker<'a> {
    filter: &'a ContextFilter,
    stack: Vec<Dir>,
    out: Vec<Entry>,
}

/// Walks `root` through `filter`, returning the kept entries in send order. Fails where fsutil's walk fails,
/// including on a pattern whose regexp does not compile when it is first evaluated.
pub fn walk(root: &Path, filter: &ContextFilter) -> Result<Vec<Entry>, ContextError> {
    let mut w = Walker {
        filter,
        stack: Vec::new(),
        out: Vec::new(),
    };
    w.dir(root, &[], false)?;
    Ok(w.out)
}

impl Walker<'_> {
    fn dir(&mut self, abs: &Path, rel: &[u8], only_walked: bool) -> Result<(), ContextError> {
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
            Err(e) => return Err(io(e)),
        };
        let mut names = Vec::new();
        for child in read {
            names.push(child.map_err(io)?.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let mut path = rel.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_bytes());
            self.child(&abs.join(&name), path)?;
        }
        Ok(())
    }

    fn child(&mut self, abs: &Path, path: Vec<u8>) -> Result<(), ContextError> {
        if self.filter.is_hidden(&path) {
            return Ok(());
        }
        let meta = fs_err::symlink_metadata(abs).map_err(|source| ContextError::Io {
            path: abs.to_owned(),
            source,
        })?;
        let ft = meta.file_type();
        let is_dir = ft.is_dir();
        let parent = self.stack.last();
        let mut skip = false;

        let mut include_info = MatchInfo::default();
        if let Some(include) = self.filter.include() {
            let (m, info) = include
                .matches_using_parent_results(&path, parent.map(|d| &d.include))
                .map_err(|e| self.filter.pattern_failed("include", e.index, e.error))?;
            include_info = info;
            if !m {
                if is_dir && self.filter.only_prefix_includes() {
                    let could_match = include
                        .patterns()
                        .iter()
                        .filter(|p| !p.is_exclusion())
                        .any(|p| dir_prefix_of(p.without_trailing_glob(), &path));
                    if !could_match {
                        return Ok(());
                    }
                }
                skip = true;
            }
        }
        let mut exclude_info = MatchInfo::default();
        if let Some(exclude) = self.filter.exclude() {
            let (m, info) = exclude
                .matches_using_parent_results(&path, parent.map(|d| &d.exclude))
                .map_err(|e| self.filter.pattern_failed("exclude", e.index, e.error))?;
            exclude_info = info;
            if m {
                if is_dir && self.filter.only_prefix_exclude_exceptions() {
                    let could_reinclude = exclude.has_exclusions()
                        && exclude
                            .patterns()
                            .iter()
                            .filter(|p| p.is_exclusion())
                            .any(|p| dir_prefix_of(p.without_trailing_glob(), &path));
                    if !could_reinclude {
                        return Ok(());
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
            let target = fs_err::read_link(abs).map_err(|source| ContextError::Io {
                path: abs.to_owned(),
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
        if !skip {
            self.emit_parents();
            self.out.push(entry.clone());
        }
        if is_dir {
            self.stack.push(Dir {
                entry,
                emitted: !skip,
                include: include_info,
                exclude: exclude_info,
            });
            let result = self.dir(
                abs,
                &self
                    .stack
                    .last()
                    .map(|d| d.entry.path.clone())
                    .unwrap_or_default(),
                skip,
            );
            self.stack.pop();
            result?;
        }
        Ok(())
    }

    /// Emits the directories above the current entry that were walked without being kept, outermost first.
    fn emit_parents(&mut self) {
        for dir in &mut self.stack {
            if !dir.emitted {
                dir.emitted = true;
                self.out.push(dir.entry.clone());
            }
        }
    }
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
