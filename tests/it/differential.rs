//! Differential test: `buildopt hash --list` against the Go oracle (hack/oracle), which computes the context with
//! BuildKit's own libraries (patternmatcher, ignorefile, fsutil, continuity). Random trees and ignore files from a
//! seeded generator; both must print the same entries in the same order, or both refuse (buildopt with exit 2,
//! the oracle with exit 3).
//!
//! `BUILDOPT_DIFF_CASES=N` and `BUILDOPT_DIFF_SEED=S` run more cases or other seeds; a failure prints the seed, the
//! tree, the ignore file bytes and both outputs.

use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::Tree;

const DEFAULT_CASES: u64 = 300;
const DEFAULT_SEED: u64 = 0x6275_696c_646f_7074;

/// The oracle binary: `$BUILDOPT_TEST_ORACLE`, else where `hack/oracle/build` puts it. Fails (never skips) when
/// it is missing.
pub fn oracle() -> PathBuf {
    let path = std::env::var_os("BUILDOPT_TEST_ORACLE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/go-oracle/oracle"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "the Go oracle is missing at {}: run `hack/oracle/build` (hack/test does), or set BUILDOPT_TEST_ORACLE",
        path.display()
    );
    path
}

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn buildopt_selects_what_buildkit_go_code_selects() {
    let oracle = oracle();
    let cases = env_u64("BUILDOPT_DIFF_CASES", DEFAULT_CASES);
    let seed = env_u64("BUILDOPT_DIFF_SEED", DEFAULT_SEED);
    let workers = 2;
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let oracle = &oracle;
                s.spawn(move || {
                    (w..cases)
                        .step_by(workers as usize)
                        .filter_map(|i| run_case(oracle, seed.wrapping_add(i)).err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ from BuildKit's Go code (base seed {seed}); the first ones:\n\n{}",
        failures.len(),
        failures
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

/// One case: generate, run both, compare. Err is the report.
pub fn run_case(oracle: &Path, seed: u64) -> Result<(), String> {
    let mut g = Gen {
        rng: fastrand::Rng::with_seed(seed),
        names: Vec::new(),
        paths: Vec::new(),
    };
    let (tree, dockerfile) = g.workspace();
    compare(oracle, &tree, &dockerfile).map_err(|report| {
        format!("seed {seed} (BUILDOPT_DIFF_SEED={seed} BUILDOPT_DIFF_CASES=1)\n{report}")
    })
}

/// Runs `buildopt hash --list app` and the oracle on a workspace whose service `app` has context `app/` and the
/// Dockerfile `dockerfile` (relative to the workspace). Err is a report of the difference.
pub fn compare(oracle: &Path, tree: &Tree, dockerfile: &Path) -> Result<(), String> {
    let mut cmd = tree.cmd();
    let ours = cmd
        .args(["hash", "--list", "app"])
        .output()
        .expect("buildopt runs");
    let theirs = Command::new(oracle)
        .arg(tree.join("app"))
        .arg(tree.join(dockerfile))
        .output()
        .expect("oracle runs");
    let same = match (ours.status.code(), theirs.status.code()) {
        (Some(0), Some(0)) => ours.stdout == theirs.stdout,
        (Some(2), Some(3)) => true,
        _ => false,
    };
    if same {
        return Ok(());
    }
    let mut r = String::from("tree:\n");
    describe(&tree.join("app"), Path::new(""), &mut r);
    let _ = writeln!(r, "Dockerfile: {}", dockerfile.display());
    let mut specific = dockerfile.as_os_str().to_owned();
    specific.push(".dockerignore");
    for ignore in [Path::new("app/.dockerignore"), Path::new(&specific)] {
        if let Ok(bytes) = std::fs::read(tree.join(ignore)) {
            let _ = writeln!(
                r,
                "{} bytes: {:?}",
                ignore.display(),
                bytes.escape_ascii().to_string()
            );
        }
    }
    let _ = writeln!(
        r,
        "buildopt (exit {:?}):\n{}{}\noracle (exit {:?}):\n{}{}",
        ours.status.code(),
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&ours.stderr),
        theirs.status.code(),
        String::from_utf8_lossy(&theirs.stdout),
        String::from_utf8_lossy(&theirs.stderr),
    );
    Err(r)
}

/// A listing of the generated tree for the failure report.
fn describe(root: &Path, rel: &Path, out: &mut String) {
    let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let abs = root.join(&rel);
        let shown = rel.as_os_str().as_bytes().escape_ascii().to_string();
        let meta = std::fs::symlink_metadata(&abs).expect("lstat");
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&abs).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {shown} -> {}",
                target.as_os_str().as_bytes().escape_ascii()
            );
        } else if ft.is_dir() {
            let _ = writeln!(out, "  {shown}/");
            describe(root, &rel, out);
        } else if ft.is_file() {
            let _ = writeln!(out, "  {shown} ({} bytes)", meta.len());
        } else {
            let _ = writeln!(out, "  {shown} (special)");
        }
    }
}

/// Names the generator draws from: realistic ones, and every character class the matching treats specially.
const NAMES: &[&[u8]] = &[
    b"node_modules",
    b"build",
    b"dist",
    b"src",
    b"keep.txt",
    b"keep-me",
    b"a.log",
    b"debug.log",
    b"README.md",
    b"README-secret.md",
    b".git",
    b".env",
    b".hidden",
    b"-dash",
    b"--x",
    b"x y",
    b"trailing ",
    "日本".as_bytes(),
    "café".as_bytes(),
    "é".as_bytes(),
    b"a[b]",
    b"[x]",
    b"st*r",
    b"q?",
    b"back\\slash",
    b"!bang",
    b"#hash",
    b"new\nline",
    b"\xff\xfe",
    b"bad\xe2\x82",
    b"tab\tx",
    b"a.b",
    b"{c}",
    b"a|b",
    b"$d",
    b"(p)",
    b"+plus",
    b"^c",
    b"...",
    b"Dockerfile.dockerignore",
    b".dockerignore",
    b"temp1",
    b"temp12",
    b"a",
    b"b",
    b"ab",
    b"x7",
    b"dockerfile",
];

struct Gen {
    rng: fastrand::Rng,
    /// Every name used, to build patterns from.
    names: Vec<Vec<u8>>,
    /// Every path created (relative to the context), to build patterns and symlink targets from.
    paths: Vec<Vec<u8>>,
}

impl Gen {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.usize(..items.len())]
    }

    fn bytes(&mut self, items: &[&[u8]]) -> Vec<u8> {
        items[self.rng.usize(..items.len())].to_vec()
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.u32(..100) < percent
    }

    fn name(&mut self) -> Vec<u8> {
        let name = if self.chance(75) {
            self.bytes(NAMES)
        } else {
            let len = self.rng.usize(1..5);
            (0..len)
                .map(|_| *self.pick(b"abcxyz.-_09".as_slice()))
                .collect()
        };
        self.names.push(name.clone());
        name
    }

    /// The workspace: buildopt.toml, the context `app/` with a Dockerfile, a random tree, ignore files. Returns
    /// the tree and the Dockerfile's path relative to it.
    fn workspace(&mut self) -> (Tree, PathBuf) {
        // Beside the context, the Dockerfile may have any name, glob characters included: fsutil's followpaths
        // resolution then treats `<name>.dockerignore` as a pattern.
        let dockerfile = if self.chance(20) {
            let name = self.bytes(&[
                b"app.Dockerfile",
                b"Dockerfile",
                b"a*.Dockerfile",
                b"[ab].Dockerfile",
                b"q?",
            ]);
            format!("docker/{}", String::from_utf8_lossy(&name))
        } else {
            "app/Dockerfile".to_owned()
        };
        let toml = format!("[services.app]\ncontext = \"app\"\ndockerfile = \"{dockerfile}\"\n");
        let tree = Tree::new()
            .file("buildopt.toml", toml)
            .file(&dockerfile, "FROM scratch\nCOPY . /\n")
            .file("outside.ignore", "Dockerfile\n")
            .dir("app");
        if dockerfile.starts_with("docker/") && self.chance(50) {
            // Names the globs match, so that the pattern reading of `<name>.dockerignore` makes a difference.
            for sibling in [
                "ab.Dockerfile.dockerignore",
                "a.Dockerfile.dockerignore",
                "qq.dockerignore",
            ] {
                let _ = std::fs::write(tree.join("docker").join(sibling), "a\nb\n");
            }
        }
        let app = tree.join("app");
        self.fill(&app, &[], 0);
        self.ignore_files(&tree, Path::new(&dockerfile));
        (tree, PathBuf::from(dockerfile))
    }

    fn fill(&mut self, root: &Path, rel: &[u8], depth: usize) {
        let n = self.rng.usize(0..if depth == 0 { 9 } else { 6 });
        for _ in 0..n {
            let name = self.name();
            let child = if rel.is_empty() {
                name.clone()
            } else {
                [rel, b"/", &name].concat()
            };
            let abs = root.join(std::ffi::OsStr::from_bytes(&child));
            if std::fs::symlink_metadata(&abs).is_ok() || child == b"Dockerfile" {
                continue;
            }
            let roll = self.rng.u32(..100);
            let made = if roll < 55 {
                std::fs::write(&abs, &name).is_ok()
            } else if roll < 75 && depth < 3 {
                let ok = std::fs::create_dir(&abs).is_ok();
                if ok {
                    self.paths.push(child.clone());
                    self.fill(root, &child, depth + 1);
                }
                ok
            } else if roll < 88 {
                let target = self.symlink_target(&child);
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &abs).is_ok()
            } else if roll < 94 {
                Command::new("mkfifo")
                    .arg(&abs)
                    .status()
                    .is_ok_and(|s| s.success())
            } else {
                // The socket file stays after the listener is dropped.
                std::os::unix::net::UnixListener::bind(&abs).is_ok()
            };
            if made {
                self.paths.push(child);
            }
        }
    }

    /// Inside, outside, looping, dangling, absolute (rooted at the context for BuildKit) targets.
    fn symlink_target(&mut self, link: &[u8]) -> Vec<u8> {
        let existing = if self.paths.is_empty() {
            b"a".to_vec()
        } else {
            self.pick(&self.paths.clone()).clone()
        };
        let depth = link.iter().filter(|&&b| b == b'/').count();
        let up = b"../".repeat(depth);
        match self.rng.u32(..9) {
            0 => [up.as_slice(), &existing].concat(),
            1 => [b"/".as_slice(), &existing].concat(),
            2 => link.rsplit(|&b| b == b'/').next().unwrap_or(b"x").to_vec(), // itself: a loop
            3 => [up.as_slice(), b"../outside.ignore"].concat(),
            4 => b"nowhere".to_vec(),
            5 => b".".to_vec(),
            6 => [up.as_slice(), b".dockerignore"].concat(),
            7 => b"/absent-dir/x".to_vec(),
            _ => existing,
        }
    }

    fn ignore_files(&mut self, tree: &Tree, dockerfile: &Path) {
        let mut specific = tree.join(dockerfile).into_os_string();
        specific.push(".dockerignore");
        let specific = PathBuf::from(specific);
        let default = tree.join("app/.dockerignore");
        for (path, percent) in [(default, 80), (specific, 25)] {
            if std::fs::symlink_metadata(&path).is_ok() {
                let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
            }
            if !self.chance(percent) {
                continue;
            }
            // Both ignore files sit one directory below the workspace, beside which `outside.ignore` is.
            let up = "../";
            match self.rng.u32(..20) {
                0 => {
                    let _ = std::fs::create_dir(&path);
                }
                1 => {
                    let _ = std::os::unix::fs::symlink(path.file_name().unwrap_or_default(), &path);
                }
                2 => {
                    let _ = std::os::unix::fs::symlink(format!("{up}outside.ignore"), &path);
                }
                3 => {
                    let content = self.ignore_content();
                    let _ = std::fs::write(path.with_file_name("real.ignore"), content);
                    let _ = std::os::unix::fs::symlink("real.ignore", &path);
                }
                4 => {
                    let _ = std::fs::write(&path, b"");
                }
                _ => {
                    let content = self.ignore_content();
                    let _ = std::fs::write(&path, content);
                }
            }
        }
    }

    fn ignore_content(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let crlf = self.chance(20);
        let lines = self.rng.usize(0..12);
        for i in 0..lines {
            if self.chance(10) {
                out.extend_from_slice(b"\xef\xbb\xbf");
            }
            let line = match self.rng.u32(..100) {
                0..=9 => self.bytes(REALISTIC),
                10..=13 => [b"# ".as_slice(), &self.name()].concat(),
                14 => Vec::new(),
                15 if i > 0 && self.chance(10) => vec![b'a'; 64 * 1024],
                _ => self.pattern(),
            };
            out.extend_from_slice(&line);
            if self.chance(8) {
                out.extend_from_slice(b"  ");
            }
            if i + 1 < lines || self.chance(70) {
                out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
        }
        out
    }

    /// A pattern built from names in the tree, mutated with wildcards and every special construct.
    fn pattern(&mut self) -> Vec<u8> {
        let mut p = Vec::new();
        match self.rng.u32(..10) {
            0 => p.push(b'!'),
            1 => p.extend_from_slice(b"/"),
            2 => p.extend_from_slice(b"./"),
            3 => p.extend_from_slice(b"! "),
            _ => {}
        }
        // Often a whole path of the tree, so that patterns match (and exceptions re-include) real entries.
        let whole: Vec<Vec<u8>> = if !self.paths.is_empty() && self.chance(40) {
            let path = self.pick(&self.paths.clone()).clone();
            path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect()
        } else {
            Vec::new()
        };
        let segments = if whole.is_empty() {
            self.rng.usize(1..4)
        } else {
            whole.len()
        };
        for s in 0..segments {
            if s > 0 {
                p.push(b'/');
            }
            let base = if let Some(seg) = whole.get(s) {
                seg.clone()
            } else if !self.paths.is_empty() && self.chance(60) {
                let path = self.pick(&self.paths.clone()).clone();
                path.rsplit(|&b| b == b'/').next().unwrap_or(b"x").to_vec()
            } else {
                self.name()
            };
            for &b in &base {
                if self.chance(8) {
                    let t = self.bytes(TOKENS);
                    p.extend_from_slice(&t);
                } else {
                    p.push(b);
                }
            }
            if self.chance(25) {
                let t = self.bytes(TOKENS);
                p.extend_from_slice(&t);
            }
        }
        if self.chance(15) {
            let t = self.bytes(&[b"/**", b"/*", b"**", b"/", b"/."]);
            p.extend_from_slice(&t);
        }
        p
    }
}

/// Lines people write.
const REALISTIC: &[&[u8]] = &[
    b"node_modules",
    b"**/*.log",
    b"!keep*",
    b"/build",
    b"./dist/",
    b"*.md",
    b"!README*.md",
    b"README-secret.md",
    b"*/temp*",
    b"*/*/temp*",
    b"temp?",
    b".git",
    b"**/.env",
    b"*",
    b"!**/*.txt",
    b"**",
    b".dockerignore",
    b"Dockerfile",
    b"src/**",
    b"!src/keep.txt",
];

/// Wildcards and the constructs whose Go meaning differs from a naive reading.
const TOKENS: &[&[u8]] = &[
    b"*",
    b"**",
    b"?",
    b"[a-c]",
    b"[!x]",
    b"[^x]",
    b"[a-]",
    b"[]a]",
    b"[",
    b"]",
    b"\\",
    b"\\*",
    b"|",
    b"{2}",
    b"{1,3}",
    b"{,2}",
    b"{01}",
    b"{1001}",
    b"^",
    b"$",
    b"\\d",
    b"\\w",
    b"\\s",
    b"\\b",
    b"\\<",
    b"\\Q",
    b"\\E",
    b"[[:alpha:]]",
    b"[[::]]",
    b"[[a-c]]",
    b"[&&b]",
    b"\\p{L}",
    b"\\pN",
    b"\\p{Greek}",
    b"\\p{Zl}",
    b"\\P{Cs}",
    b"\\p{greek}",
    b"\\u0041",
    b"\\x41",
    b"\\0",
    b"(?i)",
    b"\t",
    b"\x01",
    b"\x7f",
    "é".as_bytes(),
    b"\xff",
    b"\xef\xbb\xbf",
    b".",
    b"..",
    b"#",
    b"!",
    b" ",
];

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[test]
fn single_patterns_match_as_patternmatcher_matches() {
    // Denser than the tree cases: many patterns, each against many paths, in one oracle process (`oracle match`).
    use buildopt::context::PatternMatcher;
    use std::io::Write as _;
    let cases = env_u64("BUILDOPT_DIFF_CASES", DEFAULT_CASES) * 20;
    let seed = env_u64("BUILDOPT_DIFF_SEED", DEFAULT_SEED);
    let mut g = Gen {
        rng: fastrand::Rng::with_seed(seed),
        names: Vec::new(),
        paths: Vec::new(),
    };
    let mut input = String::new();
    let mut ours = String::new();
    let mut shown = Vec::new();
    for _ in 0..cases {
        // Paths as the walk produces them: clean, relative, no `.` or `..` segments.
        g.paths = (0..8)
            .map(|_| {
                let segments = g.rng.usize(1..4);
                let names: Vec<Vec<u8>> = (0..segments).map(|_| g.name()).collect();
                names.join(&b'/')
            })
            .filter(|p| !p.split(|&b| b == b'/').any(|s| s == b"." || s == b".."))
            .collect();
        let mut pattern = if g.chance(10) {
            g.bytes(REALISTIC)
        } else {
            g.pattern()
        };
        // A lone exception never matches; test the pattern itself.
        while pattern.first() == Some(&b'!') {
            pattern.remove(0);
        }
        if pattern.is_empty() {
            continue;
        }
        let _ = write!(input, "{}", hex(&pattern));
        match PatternMatcher::new([&pattern]) {
            Err(_) => ours.push('N'),
            Ok(pm) => {
                for path in &g.paths {
                    ours.push(match pm.matches_or_parent_matches(path) {
                        Ok(true) => '1',
                        Ok(false) => '0',
                        Err(_) => 'E',
                    });
                }
            }
        }
        if ours.ends_with('N') {
            input.push('\n');
        } else {
            for path in &g.paths {
                let _ = write!(input, " {}", hex(path));
            }
            input.push('\n');
        }
        ours.push('\n');
        shown.push((pattern, g.paths.clone()));
    }
    let mut child = Command::new(oracle())
        .arg("match")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("oracle runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("oracle output");
    writer.join().expect("writer").expect("write cases");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = String::from_utf8(out.stdout).expect("ASCII");
    let mut differ = Vec::new();
    for ((o, t), (pattern, paths)) in ours.lines().zip(theirs.lines()).zip(&shown) {
        if o != t {
            differ.push(format!(
                "pattern {:?}: buildopt {o}, patternmatcher {t} for paths {:?}",
                pattern.escape_ascii().to_string(),
                paths
                    .iter()
                    .map(|p| p.escape_ascii().to_string())
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert_eq!(ours.lines().count(), theirs.lines().count());
    assert!(
        differ.is_empty(),
        "{} of {} patterns differ (seed {seed}):\n{}",
        differ.len(),
        shown.len(),
        differ[..differ.len().min(10)].join("\n")
    );
}

#[test]
fn embedded_unicode_tables_are_go_s() {
    // `\p{..}` in a pattern uses Go's tables, embedded in buildopt; the oracle prints them from the Go it is built
    // with. A Go upgrade that changes them shows up here (regenerate with `target/go-oracle/oracle tables`).
    let out = Command::new(oracle())
        .arg("tables")
        .output()
        .expect("oracle runs");
    assert!(out.status.success());
    let embedded =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/context/go_unicode.txt"))
            .expect("embedded tables");
    assert!(
        out.stdout == embedded,
        "src/context/go_unicode.txt differs from `oracle tables`: regenerate it with `target/go-oracle/oracle tables > src/context/go_unicode.txt`"
    );
}
