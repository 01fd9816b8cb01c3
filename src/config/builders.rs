//! `[buildkit]`'s builders: `addr` as one address or a list, or `[[buildkit.builders]]` tables with per-builder TLS
//! settings and `max_parallel`. Checked here (addresses parse, TLS only on `tcp://`, a certificate with its key, no
//! address twice), each error naming the file, line and key.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{ConfigError, Locator};
use crate::buildkit::Addr;

/// `[buildkit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BuildkitToml {
    addr: Option<Spanned<AddrToml>>,
    builders: Option<Spanned<Vec<Spanned<BuilderToml>>>>,
    pub(super) network: Option<Spanned<String>>,
}

/// `addr = "unix:///..."` or `addr = ["tcp://a:1234", "tcp://b:1234"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AddrToml {
    One(String),
    Many(Vec<String>),
}

/// One `[[buildkit.builders]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuilderToml {
    addr: Spanned<String>,
    tls_ca: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    max_parallel: Option<Spanned<i64>>,
}

/// One configured builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builder {
    /// Its address, as written (checked to parse).
    pub addr: String,
    /// CA certificate (PEM) that signed the daemon's certificate (absolute).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS (absolute).
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS (absolute).
    pub tls_key: Option<PathBuf>,
    /// Server name to verify instead of the host.
    pub server_name: Option<String>,
    /// Builds at once on this builder; None: only `--jobs` limits.
    pub max_parallel: Option<usize>,
}

impl Builder {
    /// A builder at `addr` with no settings of its own.
    pub fn at(addr: impl Into<String>) -> Builder {
        Builder {
            addr: addr.into(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            server_name: None,
            max_parallel: None,
        }
    }

    /// Whether it has TLS settings of its own.
    pub fn has_tls(&self) -> bool {
        self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.server_name.is_some()
    }
}

/// The builders `[buildkit]` lists (none: the caller's default), checked; TLS paths made absolute against `root`.
pub(super) fn builders(
    toml: Option<&BuildkitToml>,
    root: &Path,
    at: &Locator<'_>,
) -> Result<Vec<Builder>, ConfigError> {
    let Some(toml) = toml else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(Builder, std::ops::Range<usize>)> = Vec::new();
    match (&toml.addr, &toml.builders) {
        (Some(_), Some(tables)) => {
            return Err(at.err(
                tables.span(),
                "`buildkit.addr` and `[[buildkit.builders]]` both list builders; use one of them (a \
                 `[[buildkit.builders]]` table per address, when any needs TLS settings or max_parallel)"
                    .to_owned(),
            ));
        }
        (Some(addr), None) => {
            let span = addr.span();
            let list = match addr.get_ref() {
                AddrToml::One(a) => vec![a.clone()],
                AddrToml::Many(list) => list.clone(),
            };
            if list.is_empty() {
                return Err(at.err(
                    span,
                    "`buildkit.addr`: the list is empty; name at least one address, or remove the key for the \
                     default"
                        .to_owned(),
                ));
            }
            for a in list {
                check_addr(&a)
                    .map_err(|m| at.err(span.clone(), format!("`buildkit.addr`: {m}")))?;
                out.push((Builder::at(a), span.clone()));
            }
        }
        (None, Some(tables)) => {
            if tables.get_ref().is_empty() {
                return Err(at.err(
                    tables.span(),
                    "`buildkit.builders`: the list is empty; add a `[[buildkit.builders]]` table with an `addr`"
                        .to_owned(),
                ));
            }
            for (n, table) in tables.get_ref().iter().enumerate() {
                let key = |k: &str| format!("`buildkit.builders[{n}].{k}`");
                let t = table.get_ref();
                let addr = t.addr.get_ref();
                let parsed = check_addr(addr)
                    .map_err(|m| at.err(t.addr.span(), format!("{}: {m}", key("addr"))))?;
                let path = |p: &Option<Spanned<String>>| p.as_ref().map(|p| root.join(p.get_ref()));
                let builder = Builder {
                    addr: addr.clone(),
                    tls_ca: path(&t.tls_ca),
                    tls_cert: path(&t.tls_cert),
                    tls_key: path(&t.tls_key),
                    server_name: t.server_name.as_ref().map(|s| s.get_ref().clone()),
                    max_parallel: match &t.max_parallel {
                        None => None,
                        Some(m) => Some(
                            usize::try_from(*m.get_ref())
                                .ok()
                                .filter(|m| *m >= 1)
                                .ok_or_else(|| {
                                    at.err(
                                        m.span(),
                                        format!(
                                            "{}: {} builds at once; use 1 or more, or remove the key for no limit \
                                             but --jobs",
                                            key("max_parallel"),
                                            m.get_ref()
                                        ),
                                    )
                                })?,
                        ),
                    },
                };
                if builder.has_tls() && !matches!(parsed, Addr::Tcp(_)) {
                    let first = [&t.tls_ca, &t.tls_cert, &t.tls_key, &t.server_name]
                        .into_iter()
                        .flatten()
                        .next()
                        .map_or(table.span(), Spanned::span);
                    return Err(at.err(
                        first,
                        format!(
                            "`buildkit.builders[{n}]`: TLS settings apply to tcp:// addresses only, not {addr}; \
                             remove them or use the daemon's tcp:// address"
                        ),
                    ));
                }
                match (&t.tls_cert, &t.tls_key) {
                    (Some(c), None) => {
                        return Err(at.err(
                            c.span(),
                            format!(
                                "{}: a client certificate needs its key: set {}",
                                key("tls_cert"),
                                key("tls_key")
                            ),
                        ));
                    }
                    (None, Some(k)) => {
                        return Err(at.err(
                            k.span(),
                            format!(
                                "{}: a client key needs its certificate: set {}",
                                key("tls_key"),
                                key("tls_cert")
                            ),
                        ));
                    }
                    _ => {}
                }
                out.push((builder, table.span()));
            }
        }
        (None, None) => {}
    }
    for (i, (b, span)) in out.iter().enumerate() {
        let canonical = |a: &str| a.parse::<Addr>().map(|a| a.to_string()).unwrap_or_default();
        if out[..i]
            .iter()
            .any(|(other, _)| canonical(&other.addr) == canonical(&b.addr))
        {
            return Err(at.err(
                span.clone(),
                format!(
                    "`buildkit`: builder {} is listed twice; list each daemon once",
                    b.addr
                ),
            ));
        }
    }
    Ok(out.into_iter().map(|(b, _)| b).collect())
}

fn check_addr(addr: &str) -> Result<Addr, String> {
    addr.parse::<Addr>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Workspace;

    fn parse(buildkit: &str) -> Result<Vec<Builder>, String> {
        let text = format!("[buildkit]\n{buildkit}");
        Workspace::parse(&text, Path::new("/ws/buildopt.toml"), Path::new("/ws"))
            .map(|ws| ws.builders)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn addr_is_one_address_or_a_list() {
        assert_eq!(
            parse("addr = \"unix:///run/b.sock\"\n").unwrap(),
            [Builder::at("unix:///run/b.sock")]
        );
        assert_eq!(
            parse("addr = [\"tcp://a:1234\", \"docker://\"]\n").unwrap(),
            [Builder::at("tcp://a:1234"), Builder::at("docker://")]
        );
        assert_eq!(parse("network = \"none\"\n").unwrap(), []);
    }

    #[test]
    fn builder_tables_take_tls_settings_relative_to_the_file_and_max_parallel() {
        let got = parse(
            "[[buildkit.builders]]\naddr = \"tcp://b0:1234\"\ntls_ca = \"certs/ca.pem\"\ntls_cert = \"certs/c.pem\"\n\
             tls_key = \"/abs/c.key\"\nserver_name = \"buildkitd\"\nmax_parallel = 2\n\n\
             [[buildkit.builders]]\naddr = \"unix:///run/b.sock\"\n",
        )
        .unwrap();
        assert_eq!(
            got[0],
            Builder {
                addr: "tcp://b0:1234".into(),
                tls_ca: Some("/ws/certs/ca.pem".into()),
                tls_cert: Some("/ws/certs/c.pem".into()),
                tls_key: Some("/abs/c.key".into()),
                server_name: Some("buildkitd".into()),
                max_parallel: Some(2),
            }
        );
        assert_eq!(got[1], Builder::at("unix:///run/b.sock"));
    }

    #[test]
    fn mistakes_name_the_line_and_key() {
        for (text, expected) in [
            (
                "addr = \"http://x\"\n",
                "buildopt.toml:2: `buildkit.addr`: unsupported BuildKit address `http://x`",
            ),
            (
                "addr = []\n",
                "buildopt.toml:2: `buildkit.addr`: the list is empty",
            ),
            (
                "addr = \"tcp://a:1\"\n[[buildkit.builders]]\naddr = \"tcp://b:1\"\n",
                "`buildkit.addr` and `[[buildkit.builders]]` both list builders",
            ),
            (
                "[[buildkit.builders]]\naddr = \"unix:///b.sock\"\ntls_ca = \"ca.pem\"\n",
                "buildopt.toml:4: `buildkit.builders[0]`: TLS settings apply to tcp:// addresses only, not unix:///b.sock",
            ),
            (
                "[[buildkit.builders]]\naddr = \"tcp://b:1\"\ntls_cert = \"c.pem\"\n",
                "buildopt.toml:4: `buildkit.builders[0].tls_cert`: a client certificate needs its key",
            ),
            (
                "[[buildkit.builders]]\naddr = \"tcp://b:1\"\nmax_parallel = 0\n",
                "buildopt.toml:4: `buildkit.builders[0].max_parallel`: 0 builds at once; use 1 or more",
            ),
            (
                "[[buildkit.builders]]\naddr = \"tcp://b:1\"\nport = 1\n",
                "unknown field `port`",
            ),
            (
                "addr = [\"docker://\", \"docker:///var/run/docker.sock\"]\n",
                "builder docker:///var/run/docker.sock is listed twice",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
