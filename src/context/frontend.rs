//! How the Dockerfile frontend reads a file from a local directory: the client sends what fsutil's followpaths
//! resolution selects (`FollowLinks`, then a walk with the result as include patterns), and the daemon reads the file
//! from that copy with continuity's `fs.RootPath` (symlinks followed inside the root, absolute targets taken
//! relative to it, `..` clamped at it). Emulated here on the list of entries that would be sent, so that a
//! `.dockerignore` that is a symlink, a directory or a loop is read (or not) exactly as BuildKit reads it.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use super::gostr::{clean, glob_match};
use super::{ContextError, ContextFilter, EntryKind, walk};

/// Reads `file` (relative to `dir`) as the frontend would from a copy of `dir` sent with `followpaths`: the bytes
/// and the real file they come from (where `file` resolves inside `dir`), or `Ok(None)` when that read fails.
/// `shown` names the file in errors.
pub(super) fn read_from_copy(
    dir: &Path,
    followpaths: &[Vec<u8>],
    file: &[u8],
    shown: &Path,
) -> Result<Option<(Vec<u8>, std::path::PathBuf)>, ContextError> {
    let refused = |reason: String| ContextError::IgnoreTransfer {
        path: shown.to_owned(),
        reason,
    };
    if !dir.is_dir() {
        return Ok(None);
    }
    let filter = transfer_filter(dir, &[], &[], followpaths).map_err(|e| match e {
        ContextError::Io { .. } => e,
        e => refused(e.to_string()),
    })?;
    let entries = walk(dir, &filter).map_err(|e| match e {
        ContextError::Io { .. } => e,
        e => refused(e.to_string()),
    })?;
    let copy: HashMap<&[u8], &EntryKind> = entries
        .iter()
        .map(|e| (e.path.as_slice(), &e.kind))
        .collect();
    let Some(resolved) = root_path(&copy, file) else {
        return Ok(None);
    };
    let path = dir.join(std::ffi::OsStr::from_bytes(&resolved));
    match copy.get(resolved.as_slice()) {
        // The sender sends a file it cannot open as an empty one.
        Some(EntryKind::File) => Ok(Some((fs_err::read(&path).unwrap_or_default(), path))),
        // The sender clears a socket's type bit; opening it fails, so the daemon gets an empty file.
        Some(EntryKind::Socket) => Ok(Some((Vec::new(), path))),
        Some(EntryKind::Fifo | EntryKind::Device { .. }) => Err(ContextError::IgnoreSpecialFile {
            path: shown.to_owned(),
        }),
        _ => Ok(None),
    }
}

/// The filter fsutil's `NewFilterFS` builds for a transfer of `root`: the include patterns, plus what `followpaths`
/// resolves to, and the exclude patterns.
pub(crate) fn transfer_filter(
    root: &Path,
    include: &[Vec<u8>],
    exclude: &[Vec<u8>],
    followpaths: &[Vec<u8>],
) -> Result<ContextFilter, ContextError> {
    let mut include = include.to_vec();
    if !followpaths.is_empty()
        && let Some(targets) = follow_links(root, followpaths)?
    {
        include.extend(targets);
        include = dedupe_paths(include).unwrap_or_default();
    }
    ContextFilter::new(&include, exclude)
}

/// fsutil's `FollowLinks`: each path, walked from the root component by component, with every symlink met
/// resolved inside the root (recursively) and wildcards in a component expanded. Returns the visited symlinks and
/// final paths, sorted and deduplicated, or None when one of them is the root itself (then nothing is filtered).
fn follow_links(root: &Path, paths: &[Vec<u8>]) -> Result<Option<Vec<Vec<u8>>>, ContextError> {
    let mut resolved = BTreeSet::new();
    for p in paths {
        append(root, p, &mut resolved)?;
    }
    Ok(dedupe_paths(resolved.into_iter().collect()))
}

/// fsutil's `dedupePaths` (meant for a sorted list): drops a path under the one kept before it; None when one is
/// the root.
fn dedupe_paths(paths: Vec<Vec<u8>>) -> Option<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut last: Vec<u8> = Vec::new();
    for s in paths {
        if s == b"." {
            return None;
        }
        if s.starts_with(&[last.as_slice(), b"/"].concat()) {
            continue;
        }
        last = s.clone();
        out.push(s);
    }
    Some(out)
}

/// `filepath.Join(a, b)`.
fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Vec::new(),
        (true, false) => clean(b),
        (false, true) => clean(a),
        (false, false) => clean(&[a, b"/", b].concat()),
    }
}

/// `filepath.Dir(p)` for a clean relative path.
fn dir_of(p: &[u8]) -> Vec<u8> {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => clean(&p[..i]),
        None => b".".to_vec(),
    }
}

fn base_of(p: &[u8]) -> &[u8] {
    p.iter()
        .rposition(|&b| b == b'/')
        .map_or(p, |i| &p[i + 1..])
}

fn append(root: &Path, p: &[u8], resolved: &mut BTreeSet<Vec<u8>>) -> Result<(), ContextError> {
    let mut p = join(b".", p);
    let mut current = b".".to_vec();
    loop {
        let (first, rest) = match p.iter().position(|&b| b == b'/') {
            Some(i) => (p[..i].to_vec(), p[i + 1..].to_vec()),
            None => (p.clone(), Vec::new()),
        };
        current = join(&current, &first);
        let targets = read_symlink(root, &current, true)?;
        p = rest;
        if (p.is_empty() || targets.is_some()) && resolved.contains(&current) {
            return Ok(());
        }
        if let Some(targets) = targets {
            resolved.insert(current);
            for t in targets {
                append(root, &join(&t, &p), resolved)?;
            }
            return Ok(());
        }
        if p.is_empty() {
            resolved.insert(current);
            return Ok(());
        }
    }
}

/// fsutil's `readSymlink`: the root-relative targets of `p` if it is a symlink (or, with wildcards in its last
/// component, of the matching symlinks beside it), None otherwise.
fn read_symlink(
    root: &Path,
    p: &[u8],
    wildcard: bool,
) -> Result<Option<Vec<Vec<u8>>>, ContextError> {
    let io = |path: &Path, source| ContextError::Io {
        path: path.to_owned(),
        source,
    };
    let base = base_of(p);
    if wildcard && contains_wildcards(base) {
        let dir = dir_of(p);
        let abs = root.join(std::ffi::OsStr::from_bytes(&dir));
        let mut names = match fs_err::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() => match fs_err::read_dir(&abs) {
                Ok(rd) => rd
                    .map(|e| e.map(|e| e.file_name().into_vec()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| io(&abs, e))?,
                Err(e) => return Err(io(&abs, e)),
            },
            _ => return Ok(None),
        };
        names.sort();
        let mut out: Option<Vec<Vec<u8>>> = None;
        for name in names {
            if glob_match(base, &name) == Ok(true)
                && let Some(t) = read_symlink(root, &join(&dir, &name), false)?
            {
                out.get_or_insert_with(Vec::new).extend(t);
            }
        }
        return Ok(out);
    }
    if p == b"." || p == b"/" {
        return Ok(None);
    }
    let abs = root.join(std::ffi::OsStr::from_bytes(p));
    let meta = match fs_err::symlink_metadata(&abs) {
        Ok(m) => m,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io(&abs, e)),
    };
    if !meta.file_type().is_symlink() {
        return Ok(None);
    }
    let link = fs_err::read_link(&abs).map_err(|e| io(&abs, e))?;
    let link = clean(link.as_os_str().as_bytes());
    if link.starts_with(b"/") {
        return Ok(Some(vec![link]));
    }
    Ok(Some(vec![join(b"/", &join(&dir_of(p), &link))]))
}

fn contains_wildcards(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// Symlinks continuity follows before giving up (`errTooManyLinks`).
const MAX_LINKS: usize = 255;

/// continuity's `fs.RootPath` on the daemon's copy (`copy`: sent path -> kind): the root-relative path `path`
/// resolves to, or None where RootPath fails. Its intermediate `lstat` calls go through the kernel, which follows
/// symlinks in directory components itself; that is emulated with absolute targets and `..` above the root
/// treated as leaving the copy (not found).
fn root_path(copy: &HashMap<&[u8], &EntryKind>, path: &[u8]) -> Option<Vec<u8>> {
    let mut path = path.to_vec();
    let mut walked = 0;
    loop {
        let before = walked;
        let newpath = walk_links(copy, &path, &mut walked)?;
        path = newpath;
        if before == walked {
            let rooted = join(b"/", &path);
            if path == rooted {
                return Some(rooted[1..].to_vec());
            }
            path = rooted;
        }
    }
}

/// continuity's `walkLinks`.
fn walk_links(
    copy: &HashMap<&[u8], &EntryKind>,
    path: &[u8],
    walked: &mut usize,
) -> Option<Vec<u8>> {
    // filepath.Split: dir keeps its trailing separator.
    let split = path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    let (dir, file) = path.split_at(split);
    if dir.is_empty() {
        return walk_link(copy, file, walked).map(|(p, _)| p);
    }
    if file.is_empty() {
        if dir == b"/" {
            return Some(dir.to_vec());
        }
        return walk_links(copy, &dir[..dir.len() - 1], walked);
    }
    let newdir = walk_links(copy, dir, walked)?;
    let (newpath, is_link) = walk_link(copy, &join(&newdir, file), walked)?;
    if !is_link || newpath.starts_with(b"/") {
        return Some(newpath);
    }
    Some(join(&newdir, &newpath))
}

/// continuity's `walkLink`: (the link target, true) if `path` is a symlink in the copy, else (the rooted path,
/// false).
fn walk_link(
    copy: &HashMap<&[u8], &EntryKind>,
    path: &[u8],
    walked: &mut usize,
) -> Option<(Vec<u8>, bool)> {
    if *walked > MAX_LINKS {
        return None;
    }
    let path = join(b"/", path);
    if path == b"/" {
        return Some((path, false));
    }
    match kernel_lstat(copy, &path[1..]) {
        Lstat::Missing => Some((path, false)),
        Lstat::Failed => None,
        Lstat::Found(EntryKind::Symlink(target)) => {
            *walked += 1;
            Some((target.clone(), true))
        }
        Lstat::Found(_) => Some((path, false)),
    }
}

enum Lstat<'a> {
    Found(&'a EntryKind),
    Missing,
    Failed,
}

/// `lstat(root/path)` in the copy: symlinks in the directory components are followed as the kernel does.
fn kernel_lstat<'a>(copy: &HashMap<&[u8], &'a EntryKind>, path: &[u8]) -> Lstat<'a> {
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|s| !s.is_empty())
        .collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Lstat::Missing;
    };
    let mut hops = 0;
    let Some(dir) = resolve_dir(copy, Vec::new(), dirs, &mut hops) else {
        return Lstat::Missing;
    };
    let full = if dir.is_empty() {
        last.to_vec()
    } else {
        [dir.as_slice(), b"/", last].concat()
    };
    if hops > 40 {
        return Lstat::Failed;
    }
    match copy.get(full.as_slice()) {
        Some(kind) => Lstat::Found(kind),
        None => Lstat::Missing,
    }
}

/// Follows `parts` from directory `at` as the kernel does: the physical directory reached, or None if it does not
/// exist, leaves the copy or loops.
fn resolve_dir(
    copy: &HashMap<&[u8], &EntryKind>,
    mut at: Vec<u8>,
    parts: &[&[u8]],
    hops: &mut usize,
) -> Option<Vec<u8>> {
    for part in parts {
        match *part {
            b"." => continue,
            b".." => {
                if at.is_empty() {
                    return None; // above the copy's root
                }
                at = dir_of(&at);
                if at == b"." {
                    at.clear();
                }
                continue;
            }
            _ => {}
        }
        let next = if at.is_empty() {
            part.to_vec()
        } else {
            [at.as_slice(), b"/", part].concat()
        };
        match copy.get(next.as_slice()) {
            Some(EntryKind::Dir) => at = next,
            Some(EntryKind::Symlink(target)) => {
                *hops += 1;
                if *hops > 40 || target.starts_with(b"/") {
                    return None;
                }
                let tparts: Vec<&[u8]> = target
                    .split(|&b| b == b'/')
                    .filter(|s| !s.is_empty())
                    .collect();
                at = resolve_dir(copy, at, &tparts, hops)?;
            }
            _ => return None,
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_links_resolves_symlinks_and_wildcards_like_fsutil() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a2"), "").unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink("d/../target", root.join("a1")).unwrap();
        std::os::unix::fs::symlink("/d/x", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let paths = |ps: &[&str]| ps.iter().map(|p| p.as_bytes().to_vec()).collect::<Vec<_>>();
        // `a?` matches the symlink a1 (whose target is taken lexically and rooted) and the file a2 (no target).
        assert_eq!(
            follow_links(root, &paths(&["a?"])).unwrap(),
            Some(paths(&["a?", "target"]))
        );
        // Absolute targets are relative to the root; a loop ends; a path under a kept one is dropped.
        assert_eq!(
            follow_links(root, &paths(&["abs", "loop", "d/x/y"])).unwrap(),
            Some(paths(&["abs", "d/x", "loop"]))
        );
        // A link to the root means no filter at all.
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        assert_eq!(follow_links(root, &paths(&["up"])).unwrap(), None);
    }

    #[test]
    fn root_path_follows_links_inside_the_root() {
        let kinds = [
            (&b"a"[..], EntryKind::Symlink(b"/b/../c".to_vec())),
            (b"c", EntryKind::File),
            (b"loop", EntryKind::Symlink(b"loop".to_vec())),
            (b"up", EntryKind::Symlink(b"../../c".to_vec())),
            (b"d", EntryKind::Dir),
            (b"d/x", EntryKind::Symlink(b"../c".to_vec())),
        ];
        let copy: HashMap<&[u8], &EntryKind> = kinds.iter().map(|(p, k)| (*p, k)).collect();
        assert_eq!(root_path(&copy, b"a"), Some(b"c".to_vec()));
        assert_eq!(root_path(&copy, b"loop"), None);
        assert_eq!(root_path(&copy, b"up"), Some(b"c".to_vec()));
        assert_eq!(root_path(&copy, b"d/x"), Some(b"c".to_vec()));
        assert_eq!(root_path(&copy, b"missing"), Some(b"missing".to_vec()));
    }
}
