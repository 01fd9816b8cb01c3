//! Outputs besides the registry: `type=local,dest=DIR`, `type=tar,dest=FILE`, `type=oci,dest=FILE`,
//! `type=docker,dest=FILE`, in buildx's `--output` syntax. Each becomes one more exporter of the solve, whose result
//! the daemon streams back through the session (`FileSend`), so they work with any daemon, remote ones included.
//! `{service}` in `dest` is replaced by the service name, so one `--output` serves a run of several services.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The placeholder for the service name in `dest`.
pub const SERVICE_PLACEHOLDER: &str = "{service}";

/// What an output writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// The result filesystem as a directory.
    Local,
    /// The result filesystem as one tar file.
    Tar,
    /// An OCI image layout tarball.
    Oci,
    /// A `docker load` tarball.
    Docker,
}

impl OutputKind {
    /// The exporter type BuildKit knows it by.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Local => "local",
            OutputKind::Tar => "tar",
            OutputKind::Oci => "oci",
            OutputKind::Docker => "docker",
        }
    }
}

/// One output, as written (`dest` may hold `{service}` and be relative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// What it writes.
    pub kind: OutputKind,
    /// Where (a directory for `local`, else a file).
    pub dest: String,
    /// Further exporter attributes (`compression=zstd`, `name=...`, `platform-split=false`), passed on.
    pub attrs: BTreeMap<String, String>,
}

impl std::str::FromStr for Output {
    type Err = String;

    /// `type=TYPE,dest=PATH[,KEY=VALUE...]`, or a bare path (a `local` output), as buildx reads `--output`.
    fn from_str(s: &str) -> Result<Output, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an output needs type=TYPE,dest=PATH".to_owned());
        }
        if !s.contains('=') {
            return Ok(Output {
                kind: OutputKind::Local,
                dest: s.to_owned(),
                attrs: BTreeMap::new(),
            });
        }
        let mut kind = None;
        let mut dest = None;
        let mut attrs = BTreeMap::new();
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not KEY=VALUE"))?;
            match k.trim() {
                "type" => {
                    kind = Some(match v {
                        "local" => OutputKind::Local,
                        "tar" => OutputKind::Tar,
                        "oci" => OutputKind::Oci,
                        "docker" => OutputKind::Docker,
                        "image" | "registry" => {
                            return Err(format!(
                                "type={v}: images are pushed to the configured registry already (--push, the default); keep them in the daemon with --no-push"
                            ));
                        }
                        other => {
                            return Err(format!(
                                "unknown output type `{other}` (known: local, tar, oci, docker)"
                            ));
                        }
                    })
                }
                "dest" => dest = Some(v.to_owned()),
                "tar" if v == "false" => {
                    return Err(
                        "tar=false (an OCI layout directory) is not supported; write the tarball and unpack it"
                            .to_owned(),
                    );
                }
                other => {
                    attrs.insert(other.to_owned(), v.to_owned());
                }
            }
        }
        let kind = kind.ok_or_else(|| format!("`{s}` has no type=; e.g. type=oci,dest=out.tar"))?;
        let dest = dest.filter(|d| !d.is_empty()).ok_or_else(|| {
            format!("`{s}` has no dest=; e.g. dest=out/{SERVICE_PLACEHOLDER}.tar")
        })?;
        if dest == "-" {
            return Err("dest=- (stdout) is not supported; name a file".to_owned());
        }
        Ok(Output { kind, dest, attrs })
    }
}

impl Output {
    /// The destination for `service`, relative paths resolved against `base`.
    pub fn dest_for(&self, service: &str, base: &Path) -> PathBuf {
        base.join(self.dest.replace(SERVICE_PLACEHOLDER, service))
    }

    /// The same output with a relative `dest` made absolute against `base`.
    pub fn resolved(mut self, base: &Path) -> Output {
        self.dest = base.join(&self.dest).to_string_lossy().into_owned();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse_as_buildx_reads_them() {
        let o: Output = "type=oci,dest=out/{service}.tar,compression=zstd"
            .parse()
            .unwrap();
        assert_eq!(o.kind, OutputKind::Oci);
        assert_eq!(
            o.dest_for("app", Path::new("/w")),
            Path::new("/w/out/app.tar")
        );
        assert_eq!(o.attrs["compression"], "zstd");
        let bare: Output = "dist".parse().unwrap();
        assert_eq!((bare.kind, bare.dest.as_str()), (OutputKind::Local, "dist"));
        for (bad, says) in [
            ("type=registry", "pushed to the configured registry"),
            ("type=nope,dest=x", "unknown output type"),
            ("type=oci", "no dest="),
            ("dest=x,compression=gzip", "no type="),
            ("type=tar,dest=-", "stdout"),
            ("type=oci,dest=x,tar=false", "tar=false"),
        ] {
            let e = bad.parse::<Output>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
