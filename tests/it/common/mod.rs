//! Temporary workspaces built file by file, and a handle on the `buildopt` binary.

#![allow(dead_code)]

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// A temporary directory holding a workspace.
pub struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    pub fn new() -> Tree {
        Tree {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file, creating parent directories.
    pub fn file(self, rel: impl AsRef<Path>, content: impl AsRef<[u8]>) -> Tree {
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        self
    }

    /// Creates a directory (and parents).
    pub fn dir(self, rel: impl AsRef<Path>) -> Tree {
        std::fs::create_dir_all(self.join(rel)).unwrap();
        self
    }

    /// Creates a symlink `rel` -> `target` (not resolved).
    pub fn symlink(self, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> Tree {
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
        self
    }

    /// Sets permission bits.
    pub fn mode(self, rel: impl AsRef<Path>, mode: u32) -> Tree {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// Creates a named pipe.
    pub fn fifo(self, rel: impl AsRef<Path>) -> Tree {
        let status = std::process::Command::new("mkfifo")
            .arg(self.join(rel))
            .status()
            .unwrap();
        assert!(status.success());
        self
    }

    /// A one-service workspace: `buildopt.toml` with service `app` on context `app/`, and its Dockerfile.
    pub fn app(self) -> Tree {
        self.file(
            "buildopt.toml",
            "[registry]\nurl = \"127.0.0.1:5000\"\ninsecure = true\n\n[services.app]\ncontext = \"app\"\nimage = \"test/app\"\n",
        )
        .file("app/Dockerfile", "FROM scratch\nCOPY . /\n")
    }

    /// `buildopt` run in this workspace.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::cargo_bin("buildopt").unwrap();
        cmd.current_dir(self.path()).env_remove("BUILDOPT_CONFIG").env_remove("BUILDOPT_LOG");
        cmd
    }

    /// `buildopt hash --list SERVICE`, one entry per line (lossy UTF-8).
    pub fn list(&self, service: &str) -> String {
        let out = self.cmd().args(["hash", "--list", service]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The digest `buildopt hash SERVICE` prints.
    pub fn digest(&self, service: &str) -> String {
        let out = self.cmd().args(["hash", service]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let (name, digest) = text.trim().split_once(' ').unwrap();
        assert_eq!(name, service);
        assert_eq!(digest.len(), 64);
        digest.to_owned()
    }
}

/// Copies a tree, keeping symlinks as symlinks and permission bits.
pub fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let ft = entry.file_type().unwrap();
        let dest = to.join(entry.file_name());
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &dest).unwrap();
        } else if ft.is_dir() {
            copy_tree(&entry.path(), &dest);
        } else if ft.is_file() {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
        if !ft.is_symlink() {
            let mode = entry.metadata().unwrap().permissions().mode();
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

/// Raw bytes of a path, for non-UTF-8 names.
pub fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}
