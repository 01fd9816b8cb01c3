//! The secrets and SSH agents a build may use (`RUN --mount=type=secret`, `RUN --mount=type=ssh`), written as
//! buildx writes `--secret` and `--ssh`, for the command line and the `secrets` / `ssh` keys of `buildopt.toml`.
//!
//! Only where a value comes from is kept here (a file, a variable, an agent socket, key files), never a value: the
//! session reads a secret when BuildKit asks for it (`session::secrets`). Neither is an input of a service: the
//! Dockerfile names the ids (and is hashed), BuildKit leaves secret values out of its cache keys, and buildopt
//! leaves them out of the input digest, as buildx does.

use std::fmt;
use std::path::{Path, PathBuf};

/// buildx's `--ssh` ID for the agent at `$SSH_AUTH_SOCK`, and the one a `RUN --mount=type=ssh` without `id=` uses.
pub const DEFAULT_SSH_ID: &str = "default";

/// One secret a build may mount: its id (as the Dockerfile's `--mount=type=secret,id=ID` names it) and where its
/// value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The id the Dockerfile asks for.
    pub id: String,
    /// Where the value is read from, when BuildKit asks.
    pub source: SecretSource,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `src=PATH`: the file's bytes.
    File(PathBuf),
    /// `env=VAR`: the variable's value.
    Env(String),
    /// Neither given: the variable named like the id when it is set, else the file named like it (as buildx).
    EnvOrFile {
        /// The variable looked at first.
        var: String,
        /// The file read otherwise.
        file: PathBuf,
    },
}

impl SecretSpec {
    /// Parses buildx's `id=ID[,src=PATH|,env=VAR][,type=file|env]` (comma-separated `key=value` fields, quoted like
    /// CSV when a value holds a comma; `source` for `src`). A relative path is relative to `base`.
    pub fn parse(spec: &str, base: &Path) -> Result<SecretSpec, String> {
        let shape = "expected `id=ID[,src=PATH]` or `id=ID,env=VAR` (buildx's --secret syntax)";
        let (mut id, mut src, mut env, mut kind) = (None, None, None, None);
        for field in crate::dockerfile::go_csv_fields(spec)
            .map_err(|m| format!("secret `{spec}`: {m}; {shape}"))?
        {
            let Some((key, value)) = field.split_once('=') else {
                return Err(format!(
                    "secret `{spec}`: field `{field}` is not `key=value`; {shape}"
                ));
            };
            let slot = match key.to_ascii_lowercase().as_str() {
                "id" => &mut id,
                "src" | "source" => &mut src,
                "env" => &mut env,
                "type" if value == "file" || value == "env" => &mut kind,
                "type" => {
                    return Err(format!(
                        "secret `{spec}`: unknown type `{value}`; use `type=file` or `type=env`"
                    ));
                }
                _ => {
                    return Err(format!(
                        "secret `{spec}`: unknown key `{key}`; the keys are id, src (or source), env and type"
                    ));
                }
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(format!("secret `{spec}`: `{key}` is given twice"));
            }
        }
        let id = id
            .filter(|i| !i.is_empty())
            .ok_or_else(|| format!("secret `{spec}` has no id; {shape}"))?;
        if src.as_deref() == Some("") {
            return Err(format!("secret `{spec}`: src= is empty"));
        }
        let source = match (kind.as_deref(), src, env) {
            (_, Some(_), Some(_)) => {
                return Err(format!(
                    "secret `{spec}`: give either src= (a file) or env= (a variable), not both"
                ));
            }
            (Some("file"), None, Some(_)) => {
                return Err(format!(
                    "secret `{spec}`: `type=file` reads a file: give src=PATH, not env="
                ));
            }
            (_, _, Some(var)) | (Some("env"), Some(var), None) => SecretSource::Env(var),
            (Some("env"), None, None) => SecretSource::Env(id.clone()),
            (_, Some(path), None) => SecretSource::File(base.join(path)),
            (Some("file"), None, None) => SecretSource::File(base.join(&id)),
            (_, None, None) => SecretSource::EnvOrFile {
                var: id.clone(),
                file: base.join(&id),
            },
        };
        if let SecretSource::Env(v) = &source
            && (v.is_empty() || v.contains('='))
        {
            return Err(format!("secret `{spec}`: `{v}` is not a variable name"));
        }
        Ok(SecretSpec { id, source })
    }
}

impl fmt::Display for SecretSpec {
    /// The spec, with the absolute path: `id=npm,src=/work/.npmrc`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            SecretSource::File(p) => write!(f, "id={},src={}", self.id, p.display()),
            SecretSource::Env(v) => write!(f, "id={},env={v}", self.id),
            SecretSource::EnvOrFile { .. } => write!(f, "id={}", self.id),
        }
    }
}

/// One SSH agent a build may forward: its id (the Dockerfile's `--mount=type=ssh,id=ID`, `default` without one)
/// and the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    /// The id the Dockerfile asks for.
    pub id: String,
    /// The agent.
    pub source: SshSource,
}

/// Which agent answers for an SSH id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshSource {
    /// The agent at `$SSH_AUTH_SOCK` (read when the build starts).
    AuthSock,
    /// An agent socket, or private key files that buildopt serves through an agent of its own; which of the two is
    /// decided when the build starts (one path that is a socket is an agent), as buildx decides.
    Paths(Vec<PathBuf>),
}

impl SshSpec {
    /// Parses buildx's `ID` or `ID=SOCKET|KEYFILE[,KEYFILE...]`. A relative path is relative to `base`.
    pub fn parse(spec: &str, base: &Path) -> Result<SshSpec, String> {
        let shape = "expected `default`, `ID` (the agent at $SSH_AUTH_SOCK) or `ID=SOCKET|KEYFILE[,KEYFILE]`";
        let (id, paths) = match spec.split_once('=') {
            None => (spec, None),
            Some((id, paths)) => (id, Some(paths)),
        };
        if id.is_empty() || id.contains(',') {
            return Err(format!("ssh `{spec}`: no id; {shape}"));
        }
        let source = match paths {
            None => SshSource::AuthSock,
            Some(paths) => {
                let paths: Vec<&str> = paths.split(',').collect();
                if paths.iter().any(|p| p.is_empty()) {
                    return Err(format!("ssh `{spec}`: an empty path; {shape}"));
                }
                SshSource::Paths(paths.into_iter().map(|p| base.join(p)).collect())
            }
        };
        Ok(SshSpec {
            id: id.to_owned(),
            source,
        })
    }
}

impl fmt::Display for SshSpec {
    /// The spec, with absolute paths: `github=/home/me/.ssh/deploy`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            SshSource::AuthSock => f.write_str(&self.id),
            SshSource::Paths(paths) => {
                let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                write!(f, "{}={}", self.id, paths.join(","))
            }
        }
    }
}

/// Something listed by id, where a later entry with the same id replaces an earlier one.
pub trait ById {
    /// The id.
    fn id(&self) -> &str;
}

impl ById for SecretSpec {
    fn id(&self) -> &str {
        &self.id
    }
}

impl ById for SshSpec {
    fn id(&self) -> &str {
        &self.id
    }
}

/// `list` with `extra` put over it: an entry of `extra` replaces the one of `list` with its id, or is added.
pub fn merge_by_id<T: ById + Clone>(list: &mut Vec<T>, extra: &[T]) {
    for e in extra {
        match list.iter_mut().find(|x| x.id() == e.id()) {
            Some(slot) => *slot = e.clone(),
            None => list.push(e.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Result<SecretSpec, String> {
        SecretSpec::parse(s, Path::new("/ws"))
    }

    #[test]
    fn secrets_in_buildx_syntax() {
        let file = |id: &str, p: &str| SecretSpec {
            id: id.to_owned(),
            source: SecretSource::File(PathBuf::from(p)),
        };
        let env = |id: &str, v: &str| SecretSpec {
            id: id.to_owned(),
            source: SecretSource::Env(v.to_owned()),
        };
        assert_eq!(secret("id=npm,src=.npmrc"), Ok(file("npm", "/ws/.npmrc")));
        assert_eq!(secret("src=/etc/x,id=npm"), Ok(file("npm", "/etc/x")));
        assert_eq!(secret("id=npm,source=a/b"), Ok(file("npm", "/ws/a/b")));
        assert_eq!(secret("ID=npm,SRC=a"), Ok(file("npm", "/ws/a")));
        assert_eq!(secret("id=tok,env=GH_TOKEN"), Ok(env("tok", "GH_TOKEN")));
        assert_eq!(secret("type=env,id=tok"), Ok(env("tok", "tok")));
        assert_eq!(secret("type=env,id=tok,src=VAR"), Ok(env("tok", "VAR")));
        assert_eq!(secret("type=file,id=tok"), Ok(file("tok", "/ws/tok")));
        assert_eq!(
            secret("id=tok"),
            Ok(SecretSpec {
                id: "tok".to_owned(),
                source: SecretSource::EnvOrFile {
                    var: "tok".to_owned(),
                    file: PathBuf::from("/ws/tok")
                }
            })
        );
        assert_eq!(secret(r#"id=a,"src=x,y""#), Ok(file("a", "/ws/x,y")));
        assert_eq!(
            secret(r#"id=a,"src=say ""hi""""#),
            Ok(file("a", "/ws/say \"hi\""))
        );
        for (bad, why) in [
            ("src=x", "has no id"),
            ("id=,src=x", "has no id"),
            ("id=a,src=x,env=Y", "not both"),
            ("id=a,type=file,env=Y", "type=file"),
            ("id=a,type=ssh", "unknown type `ssh`"),
            ("id=a,dst=/x", "unknown key `dst`"),
            ("id=a,id=b", "given twice"),
            ("id=a,src", "not `key=value`"),
            ("id=a,\"src=x", "extraneous or missing \" in quoted-field"),
            ("id=a,src=x\"y", "bare \" in non-quoted-field"),
            ("id=a,env=", "not a variable"),
            ("id=a,src=", "src= is empty"),
        ] {
            let err = secret(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn ssh_in_buildx_syntax() {
        let ssh = |s: &str| SshSpec::parse(s, Path::new("/ws"));
        assert_eq!(
            ssh("default"),
            Ok(SshSpec {
                id: "default".to_owned(),
                source: SshSource::AuthSock
            })
        );
        assert_eq!(
            ssh("gh=keys/a,/abs/b"),
            Ok(SshSpec {
                id: "gh".to_owned(),
                source: SshSource::Paths(vec!["/ws/keys/a".into(), "/abs/b".into()])
            })
        );
        assert_eq!(
            ssh("default=/run/agent.sock").unwrap().to_string(),
            "default=/run/agent.sock"
        );
        for bad in ["", "=x", "a=", "a=x,,y", "a,b"] {
            assert!(ssh(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn later_entries_replace_by_id() {
        let base = Path::new("/ws");
        let mut list = vec![
            SecretSpec::parse("id=a,src=1", base).unwrap(),
            SecretSpec::parse("id=b,src=2", base).unwrap(),
        ];
        merge_by_id(
            &mut list,
            &[
                SecretSpec::parse("id=b,env=B", base).unwrap(),
                SecretSpec::parse("id=c,env=C", base).unwrap(),
            ],
        );
        let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["id=a,src=/ws/1", "id=b,env=B", "id=c,env=C"]);
    }
}
