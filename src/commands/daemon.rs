//! `buildopt doctor`, `du` and `prune`: the daemon's health, cache usage, and selective cache pruning.

use std::io::Write;

use super::{Context as _, Error, ExitStatus};
use crate::buildkit::{Addr, Client, PruneSpec, TlsOptions};
use crate::cli::args::{DaemonArgs, PruneArgs};
use crate::config::Workspace;
use crate::printer::Printer;
use crate::progress::human_bytes;

/// Why the daemon could not be reached: a bad address, or the connection.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectFailure {
    /// The address is not one buildopt understands.
    #[error(transparent)]
    Addr(#[from] crate::buildkit::conn::AddrError),
    /// The connection failed.
    #[error(transparent)]
    Connect(#[from] crate::buildkit::ConnectError),
}

impl crate::error::Classify for ConnectFailure {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            ConnectFailure::Addr(e) => e.kind(),
            ConnectFailure::Connect(e) => e.kind(),
        }
    }
}

/// Resolves the address (flag or `BUILDKIT_HOST`, then config, then the local default) and connects.
pub(super) async fn connect(
    args: &DaemonArgs,
    ws: Option<&Workspace>,
) -> Result<Client, ConnectFailure> {
    let addr: Addr = match args
        .addr
        .as_deref()
        .or(ws.and_then(|w| w.buildkit_addr.as_deref()))
    {
        Some(a) => a.parse()?,
        None => Addr::default_local(),
    };
    let tls = TlsOptions {
        ca_cert: args.tlscacert.clone(),
        cert: args.tlscert.clone(),
        key: args.tlskey.clone(),
        server_name: args.tlsservername.clone(),
    };
    // A debugging and test knob: on dockerd, run the session over Control.Session as with buildkitd.
    let over_control = std::env::var_os("BUILDOPT_DOCKER_SESSION").is_some_and(|v| v == "control");
    Ok(Client::connect(&addr, &tls)
        .await?
        .session_over_control(over_control))
}

pub(super) async fn doctor(
    args: &DaemonArgs,
    ws: Option<&Workspace>,
    printer: Printer,
) -> Result<ExitStatus, Error> {
    let client = connect(args, ws).await?;
    let info = client
        .info()
        .await
        .context("asking BuildKit for its version and workers")?;
    let mut out = printer.stdout();
    writeln!(out, "address:  {}", client.addr())?;
    writeln!(
        out,
        "version:  {}",
        info.version
            .as_deref()
            .unwrap_or("unknown (Info is not served: BuildKit < v0.11)")
    )?;
    for w in &info.workers {
        writeln!(out, "worker:   {}", w.id)?;
        writeln!(out, "  platforms: {}", w.platforms.join(", "))?;
        for key in ["executor", "snapshotter", "network"] {
            if let Some(v) = w
                .labels
                .get(&format!("org.mobyproject.buildkit.worker.{key}"))
            {
                writeln!(out, "  {key}: {v}")?;
            }
        }
    }
    if info.workers.is_empty() {
        writeln!(out, "warning:  the daemon has no workers; builds will fail")?;
        return Ok(ExitStatus::Failure);
    }
    Ok(ExitStatus::Success)
}

pub(super) async fn du(
    args: &DaemonArgs,
    ws: Option<&Workspace>,
    printer: Printer,
) -> Result<ExitStatus, Error> {
    let client = connect(args, ws).await?;
    let mut records = client.disk_usage().await?;
    records.sort_by_key(|r| std::cmp::Reverse(r.size));
    let mut out = printer.stdout();
    writeln!(
        out,
        "{:<28} {:>10}  {:<7} DESCRIPTION",
        "ID", "SIZE", "IN USE"
    )?;
    let mut total = 0i64;
    for r in &records {
        total += r.size;
        writeln!(
            out,
            "{:<28} {:>10}  {:<7} {}",
            r.id.chars().take(28).collect::<String>(),
            human_bytes(r.size),
            if r.in_use { "yes" } else { "" },
            r.description
        )?;
    }
    writeln!(
        out,
        "total: {} in {} records",
        human_bytes(total),
        records.len()
    )?;
    Ok(ExitStatus::Success)
}

pub(super) async fn prune(
    args: &PruneArgs,
    ws: Option<&Workspace>,
    printer: Printer,
) -> Result<ExitStatus, Error> {
    let keep_bytes = match &args.keep_storage {
        Some(s) => parse_size(s).ok_or_else(|| {
            Error::usage(format!(
                "invalid --keep-storage `{s}`: use e.g. 10GB or 512MiB"
            ))
        })?,
        None => 0,
    };
    let client = connect(&args.daemon, ws).await?;
    let removed = client
        .prune(&PruneSpec {
            all: args.all,
            keep_bytes,
        })
        .await?;
    let total: i64 = removed.iter().map(|r| r.size).sum();
    writeln!(
        printer.stdout(),
        "removed {} records, {} reclaimed",
        removed.len(),
        human_bytes(total)
    )?;
    Ok(ExitStatus::Success)
}

/// `10GB`, `512MiB`, `1000` (bytes).
fn parse_size(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        _ => return None,
    };
    Some((num * mult) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10GB"), Some(10_000_000_000));
        assert_eq!(parse_size("512MiB"), Some(512 * 1024 * 1024));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("x"), None);
        assert_eq!(human_bytes(1_234_000), "1.23MB");
        assert_eq!(human_bytes(12), "12B");
    }
}
