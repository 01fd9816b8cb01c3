//! `buildopt doctor`, `du` and `prune`: the daemon's health, cache usage, and selective cache pruning.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{Context as _, Error, ExitStatus};
use crate::buildkit::fleet::BuilderSpec;
use crate::buildkit::{Addr, Client, ConnectError, PruneSpec, TlsOptions, UsageRecord};
use crate::cli::args::{DaemonArgs, DuArgs, PruneArgs};
use crate::config::{Builder, Workspace};
use crate::printer::{Printer, Verbosity};
use crate::progress::human_bytes;

/// The Docker Engine `--load` loads into: the first builder's own when it is `docker://`, else `DOCKER_HOST`
/// (`unix://` only), else `/var/run/docker.sock`; checked to exist.
pub(super) fn docker_engine(args: &DaemonArgs, ws: &Workspace) -> Result<PathBuf, Error> {
    let builder = match args.addr.first() {
        Some(a) => Some(a.as_str()),
        None => ws.builders.first().map(|b| b.addr.as_str()),
    }
    .and_then(|a| a.parse::<Addr>().ok());
    let sock = match builder {
        Some(Addr::Docker(path)) => path,
        _ => match std::env::var("DOCKER_HOST") {
            Ok(h) if !h.is_empty() => match h.strip_prefix("unix://") {
                Some(p) => PathBuf::from(p),
                None => {
                    return Err(Error::usage(format!(
                        "--load: DOCKER_HOST={h} is not a unix:// socket; buildopt loads only into a local Docker Engine"
                    )));
                }
            },
            _ => PathBuf::from("/var/run/docker.sock"),
        },
    };
    if !sock.exists() {
        return Err(Error::usage(format!(
            "--load: no Docker Engine socket at {}; start Docker, or set DOCKER_HOST=unix:///path/to/docker.sock",
            sock.display()
        )));
    }
    Ok(sock)
}

/// The builders of a command: `--addr` (repeatable; `BUILDKIT_HOST`, comma-separated), else the config's
/// `[buildkit]` builders, else the local default. A builder keeps the TLS settings and `max_parallel` of its
/// `[[buildkit.builders]]` table (also when `--addr` names it); the TLS flags apply to every `tcp://` builder
/// without settings of its own. Addresses are only parsed here: nothing connects.
pub(super) fn builders(
    args: &DaemonArgs,
    ws: Option<&Workspace>,
) -> Result<Vec<BuilderSpec>, Error> {
    let configured: &[Builder] = ws.map(|w| w.builders.as_slice()).unwrap_or_default();
    let chosen: Vec<Builder> = if !args.addr.is_empty() {
        args.addr
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(|a| {
                configured
                    .iter()
                    .find(|b| same_addr(&b.addr, a))
                    .cloned()
                    .unwrap_or_else(|| Builder::at(a))
            })
            .collect()
    } else {
        configured.to_vec()
    };
    let flags = TlsOptions {
        ca_cert: args.tlscacert.clone(),
        cert: args.tlscert.clone(),
        key: args.tlskey.clone(),
        server_name: args.tlsservername.clone(),
    };
    let flags_given = flags.ca_cert.is_some()
        || flags.cert.is_some()
        || flags.key.is_some()
        || flags.server_name.is_some();
    // A debugging and test knob: on dockerd, run the session over Control.Session as with buildkitd.
    let over_control = std::env::var_os("BUILDOPT_DOCKER_SESSION").is_some_and(|v| v == "control");
    let mut specs: Vec<BuilderSpec> = Vec::new();
    for b in &chosen {
        let addr: Addr = b.addr.parse()?;
        if let Some(other) = specs.iter().find(|s| s.addr == addr) {
            return Err(Error::usage(format!(
                "builder {} is given twice (as {}); list each daemon once",
                b.addr, other.addr
            )));
        }
        let tls = if b.has_tls() {
            TlsOptions {
                ca_cert: b.tls_ca.clone(),
                cert: b.tls_cert.clone(),
                key: b.tls_key.clone(),
                server_name: b.server_name.clone(),
            }
        } else if matches!(addr, Addr::Tcp(_)) {
            flags.clone()
        } else {
            TlsOptions::default()
        };
        specs.push(BuilderSpec {
            addr,
            tls,
            max_parallel: b.max_parallel,
            session_over_control: over_control,
        });
    }
    if specs.is_empty() {
        specs.push(BuilderSpec {
            addr: Addr::default_local(),
            tls: TlsOptions::default(),
            max_parallel: None,
            session_over_control: over_control,
        });
    }
    if flags_given && !specs.iter().any(|s| matches!(s.addr, Addr::Tcp(_))) {
        let addrs: Vec<String> = specs.iter().map(|s| s.addr.to_string()).collect();
        return Err(Error::usage(format!(
            "TLS options apply to tcp:// addresses only, not {}",
            addrs.join(", ")
        )));
    }
    Ok(specs)
}

/// Whether two address strings name the same daemon (`docker://` is `docker:///var/run/docker.sock`).
fn same_addr(a: &str, b: &str) -> bool {
    match (a.parse::<Addr>(), b.parse::<Addr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Connects to every builder at once; a client or the error of each, in order.
async fn connect_all(specs: &[BuilderSpec]) -> Vec<Result<Client, ConnectError>> {
    futures::future::join_all(specs.iter().map(|s| async {
        Ok(Client::connect(&s.addr, &s.tls)
            .await?
            .session_over_control(s.session_over_control))
    }))
    .await
}

/// Runs `each` on every builder in turn, after connecting to all at once. With one builder, its error is the
/// command's, as it always was. With several, `each` is told to head its output with the builder's address; a
/// builder that fails gets an `error:` line naming it and the others go on; the command then fails (exit 1, or 2
/// when every failure is the caller's to fix: an address, a certificate).
async fn on_every_builder(
    specs: &[BuilderSpec],
    printer: Printer,
    mut each: impl AsyncFnMut(&Client, bool) -> Result<ExitStatus, Error>,
) -> Result<ExitStatus, Error> {
    let clients = connect_all(specs).await;
    let several = specs.len() > 1;
    if !several {
        let client = clients.into_iter().next().expect("one builder")?;
        return each(&client, false).await;
    }
    let mut worst = ExitStatus::Success;
    for (spec, client) in specs.iter().zip(clients) {
        let result = match client {
            Ok(c) => each(&c, true).await,
            Err(e) => Err(e.into()),
        };
        let status = match result {
            Ok(status) => status,
            Err(e) => {
                let causes: Vec<String> = e.chain().map(ToString::to_string).collect();
                let mut line = causes.first().cloned().unwrap_or_default();
                for c in causes.iter().skip(1) {
                    if !line.contains(c.as_str()) {
                        line.push_str(": ");
                        line.push_str(c);
                    }
                }
                if !line.contains(&spec.addr.to_string()) {
                    line = format!("builder {}: {line}", spec.addr);
                }
                writeln!(printer.errors(), "error: {line}")?;
                e.status()
            }
        };
        worst = match (worst, status) {
            (ExitStatus::Failure, _) | (_, ExitStatus::Failure) => ExitStatus::Failure,
            (ExitStatus::Error, _) | (_, ExitStatus::Error) => ExitStatus::Error,
            _ => ExitStatus::Success,
        };
    }
    Ok(worst)
}

pub(super) async fn doctor(
    args: &DaemonArgs,
    ws: Option<&Workspace>,
    printer: Printer,
) -> Result<ExitStatus, Error> {
    let specs = builders(args, ws)?;
    let mut first = true;
    on_every_builder(&specs, printer, async |client, _| {
        let info = client
            .info()
            .await
            .context("asking BuildKit for its version and workers")?;
        let mut out = printer.stdout();
        if !std::mem::take(&mut first) {
            writeln!(out)?;
        }
        writeln!(out, "address:  {}", client.addr())?;
        writeln!(
            out,
            "version:  {}",
            info.version
                .as_deref()
                .unwrap_or("unknown (Info is not served: BuildKit < v0.11)")
        )?;
        // dockerd's embedded BuildKit reports the version it was stamped with, which distribution builds leave at
        // v0.0.0+unknown: the Engine's version says which BuildKit it embeds.
        if let Addr::Docker(sock) = client.addr()
            && let Ok(engine) = crate::buildkit::conn::docker_engine_version(sock).await
        {
            writeln!(out, "engine:   Docker Engine {engine}")?;
        }
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
    })
    .await
}

pub(super) async fn du(
    args: &DuArgs,
    ws: Option<&Workspace>,
    printer: Printer,
) -> Result<ExitStatus, Error> {
    check_filters(&args.filter)?;
    let specs = builders(&args.daemon, ws)?;
    let table = Table {
        in_use: true,
        width: table_width(args.no_trunc, printer),
        now: SystemTime::now(),
    };
    let (mut total, mut count, mut first) = (0i64, 0usize, true);
    let status = on_every_builder(&specs, printer, async |client, several| {
        let mut records = client.disk_usage(&args.filter).await?;
        records.sort_by_key(|r| std::cmp::Reverse(r.size));
        let mut out = printer.stdout();
        if several {
            if !std::mem::take(&mut first) {
                writeln!(out)?;
            }
            writeln!(out, "builder: {}", client.addr())?;
        }
        table.write(&mut out, &records)?;
        let size: i64 = records.iter().map(|r| r.size).sum();
        writeln!(
            out,
            "total: {} in {} records",
            human_bytes(size),
            records.len()
        )?;
        total += size;
        count += records.len();
        Ok(ExitStatus::Success)
    })
    .await?;
    if specs.len() > 1 {
        writeln!(
            printer.stdout(),
            "\ntotal: {} in {count} records on {} builders",
            human_bytes(total),
            specs.len()
        )?;
    }
    Ok(status)
}

/// What `prune` keeps by default: records a build used within this long. BuildKit's first default GC policy keeps
/// even the most easily rebuilt records (local contexts, cache mounts, git checkouts) for 48 hours
/// (`DefaultGCPolicy` in BuildKit's worker package). Shown in `prune --help`.
const DEFAULT_KEEP_DURATION: &str = "48h";
/// What `prune` keeps by default: this much cache. BuildKit reserves 2GB for its cache when it cannot size its disk
/// (`defaultReservedSpaceBytes`), and a client cannot size the daemon's disk either. Shown in `prune --help`.
const DEFAULT_KEEP_STORAGE: &str = "2GB";

/// The refusal of `prune --all` without `--yes` where buildopt cannot ask.
const NEEDS_YES: &str = "prune --all removes unused cache records of every kind, however recent unless \
--keep-duration says otherwise, and stdin or stderr is not a terminal to ask on: pass --yes to confirm (--dry-run \
lists what would go)";

pub(super) async fn prune(
    args: &PruneArgs,
    ws: Option<&Workspace>,
    printer: Printer,
) -> Result<ExitStatus, Error> {
    let spec = prune_spec(args)?;
    let ask = args.all && !args.dry_run && !args.yes;
    // Checked before connecting: a script that forgot --yes must learn it without touching the daemon.
    if ask && !(io::stdin().is_terminal() && io::stderr().is_terminal()) {
        return Err(Error::usage(NEEDS_YES));
    }
    let builders = builders(&args.daemon, ws)?;
    let several = builders.len() > 1;
    let table = Table {
        in_use: false,
        width: table_width(false, printer),
        now: SystemTime::now(),
    };
    writeln!(printer.stderr(), "{}", kept(&spec))?;
    let mut first = true;
    let mut header = |out: &mut dyn Write, client: &Client| -> io::Result<()> {
        if several {
            if !std::mem::take(&mut first) {
                writeln!(out)?;
            }
            writeln!(out, "builder: {}", client.addr())?;
        }
        Ok(())
    };
    if args.dry_run || ask {
        let (mut records, mut bytes) = (0usize, 0i64);
        let status = on_every_builder(&builders, printer, async |client, _| {
            let doomed = client
                .prune_preview(&spec)
                .await
                .context("listing the cache to see what prune would remove")?;
            let size: i64 = doomed.iter().map(|r| r.size).sum();
            (records, bytes) = (records + doomed.len(), bytes + size);
            if args.dry_run {
                let mut out = printer.stdout();
                header(&mut out, client)?;
                table.write(&mut out, &doomed)?;
                writeln!(
                    out,
                    "would remove {} records, {} (a dry run, computed from the disk usage with prune's criteria: \
                     BuildKit has no dry run)",
                    doomed.len(),
                    human_bytes(size)
                )?;
            }
            Ok(ExitStatus::Success)
        })
        .await?;
        if args.dry_run || status != ExitStatus::Success {
            return Ok(status);
        }
        let on = if several {
            format!(" on {} builders", builders.len())
        } else {
            String::new()
        };
        let question = format!(
            "prune --all would remove {records} unused cache records ({}){on}, BuildKit's internal ones too. Remove them?",
            human_bytes(bytes)
        );
        if !confirm(&question, printer).await? {
            writeln!(printer.errors(), "nothing was removed")?;
            return Ok(ExitStatus::Failure);
        }
    }
    on_every_builder(&builders, printer, async |client, _| {
        // In the order BuildKit removed them, as the dry run lists them: records before the ones they build on.
        let removed = client.prune(&spec).await?;
        let mut out = printer.stdout();
        header(&mut out, client)?;
        table.write(&mut out, &removed)?;
        writeln!(
            out,
            "removed {} records, {} reclaimed",
            removed.len(),
            human_bytes(removed.iter().map(|r| r.size).sum())
        )?;
        Ok(ExitStatus::Success)
    })
    .await
}

/// The prune the flags ask for: the defaults apply only without --all, so that --all means everything unused.
fn prune_spec(args: &PruneArgs) -> Result<PruneSpec, Error> {
    check_filters(&args.filter)?;
    let or_default = |given: &Option<String>, default: &'static str| match given {
        Some(v) => Some(v.clone()),
        None if args.all => None,
        None => Some(default.to_owned()),
    };
    let keep_duration = match or_default(&args.keep_duration, DEFAULT_KEEP_DURATION) {
        Some(s) => parse_duration(&s).ok_or_else(|| {
            Error::usage(format!(
                "invalid --keep-duration `{s}`: use e.g. 48h, 90m, 7d or 1h30m (0 keeps nothing for its age)"
            ))
        })?,
        None => Duration::ZERO,
    };
    let keep_bytes = match or_default(&args.keep_storage, DEFAULT_KEEP_STORAGE) {
        Some(s) => parse_size(&s).ok_or_else(|| {
            Error::usage(format!(
                "invalid --keep-storage `{s}`: use e.g. 10GB or 512MiB (0 for no budget)"
            ))
        })?,
        None => 0,
    };
    Ok(PruneSpec {
        all: args.all,
        keep_duration,
        keep_bytes,
        filters: args.filter.clone(),
    })
}

/// Refuses the filters docker and buildx take but BuildKit does not: BuildKit would match nothing with them and
/// quietly remove (or list) nothing.
fn check_filters(filters: &[String]) -> Result<(), Error> {
    for filter in filters {
        for condition in filter.split(',') {
            let field = condition
                .split(['=', '!', '~'])
                .next()
                .unwrap_or_default()
                .trim();
            if matches!(field, "until" | "unused-for") {
                return Err(Error::usage(format!(
                    "--filter `{filter}`: `{field}` is a docker filter, not a BuildKit one: use --keep-duration"
                )));
            }
        }
    }
    Ok(())
}

/// One line on what `spec` keeps, so that a prune that removes little explains itself.
fn kept(spec: &PruneSpec) -> String {
    let mut kept = vec!["in use".to_owned()];
    if !spec.keep_duration.is_zero() {
        kept.push(format!(
            "used in the last {}",
            show_duration(spec.keep_duration)
        ));
    }
    if !spec.filters.is_empty() {
        kept.push("not matching --filter".to_owned());
    }
    if !spec.all {
        kept.push("internal, frontend or shared with an image (--all removes these)".to_owned());
    }
    let last = kept.pop().unwrap_or_default();
    let mut line = if kept.is_empty() {
        format!("keeping records {last}")
    } else {
        format!("keeping records {}, or {last}", kept.join(", "))
    };
    if spec.keep_bytes != 0 {
        line.push_str(&format!(
            "; stopping once the cache is under {}",
            human_bytes(spec.keep_bytes)
        ));
    }
    line
}

/// Asks `question` on stderr and reads the answer from stdin; only `y` or `yes` agree.
async fn confirm(question: &str, printer: Printer) -> Result<bool, Error> {
    {
        let mut err = printer.errors();
        write!(err, "{question} [y/N] ")?;
        err.flush()?;
    }
    // A blocking read, off the runtime's worker threads.
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(io::Error::other)??;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// How wide the record tables may be: the terminal's width when stdout is one, else unlimited (a pipe or a file gets
/// every description whole, as does `--no-trunc` or `-v`).
fn table_width(no_trunc: bool, printer: Printer) -> Option<usize> {
    if no_trunc || printer.verbosity() >= Verbosity::Verbose || !io::stdout().is_terminal() {
        return None;
    }
    terminal_size::terminal_size_of(io::stdout())
        .map(|(w, _)| usize::from(w.0))
        .filter(|w| *w > 0)
}

/// The record listing of `du` and `prune`.
struct Table {
    /// With an IN USE column (du; prune never removes records in use).
    in_use: bool,
    /// Cut each line to this many characters (by cutting the description).
    width: Option<usize>,
    /// For the LAST USED column.
    now: SystemTime,
}

impl Table {
    fn write(&self, out: &mut impl Write, records: &[UsageRecord]) -> io::Result<()> {
        let line = |id: &str, size: &str, in_use: &str, last: &str, description: &str| {
            let head = if self.in_use {
                format!("{id:<28} {size:>10}  {in_use:<6}  {last:>9}  ")
            } else {
                format!("{id:<28} {size:>10}  {last:>9}  ")
            };
            let room = self
                .width
                .map(|w| w.saturating_sub(head.chars().count()).max(MIN_DESCRIPTION));
            format!("{head}{}", cut(description, room))
        };
        writeln!(
            out,
            "{}",
            line("ID", "SIZE", "IN USE", "LAST USED", "DESCRIPTION").trim_end()
        )?;
        for r in records {
            let id: String = r.id.chars().take(28).collect();
            let text = line(
                &id,
                &human_bytes(r.size),
                if r.in_use { "yes" } else { "" },
                &ago(self.now, r.last_used_at),
                &r.description,
            );
            writeln!(out, "{}", text.trim_end())?;
        }
        Ok(())
    }
}

/// The fewest description characters a cut line keeps, however narrow the terminal.
const MIN_DESCRIPTION: usize = 12;

/// `text` cut to `room` characters, ending in `…` when cut.
fn cut(text: &str, room: Option<usize>) -> std::borrow::Cow<'_, str> {
    match room {
        Some(room) if text.chars().count() > room => {
            let kept: String = text.chars().take(room.saturating_sub(1)).collect();
            format!("{kept}…").into()
        }
        _ => text.into(),
    }
}

/// How long ago `t` was, in its largest unit (`35s`, `12m`, `5h`, `3d`); `-` when never.
pub(super) fn ago(now: SystemTime, t: Option<SystemTime>) -> String {
    let Some(t) = t else { return "-".to_owned() };
    let secs = now.duration_since(t).unwrap_or_default().as_secs();
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..172_800 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// A keep duration as the flag would take it (`48h`, `90m`, `45s`).
fn show_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// `48h`, `90m`, `7d`, `1h30m`, `1.5h`, `45s`, `2w`; `0` alone.
pub(super) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut secs = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            _ => return None,
        };
        secs += number * unit;
        rest = &rest[unit_end..];
    }
    (!s.is_empty())
        .then(|| Duration::try_from_secs_f64(secs).ok())
        .flatten()
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
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::args::{Cli, Command};

    fn specs(args: &[&str], config: Option<&str>) -> Result<Vec<BuilderSpec>, Error> {
        let cli = Cli::try_parse_from([&["buildopt", "doctor"][..], args].concat()).unwrap();
        let Command::Doctor(args) = cli.command else {
            unreachable!()
        };
        let ws = config.map(|c| {
            Workspace::parse(
                c,
                std::path::Path::new("/ws/buildopt.toml"),
                std::path::Path::new("/ws"),
            )
            .unwrap()
        });
        builders(&args, ws.as_ref())
    }

    fn addrs(specs: &[BuilderSpec]) -> Vec<String> {
        specs.iter().map(|s| s.addr.to_string()).collect()
    }

    #[test]
    fn addr_flags_replace_the_config_and_keep_a_named_builder_s_settings() {
        let config = "[[buildkit.builders]]\naddr = \"tcp://b0:1234\"\ntls_ca = \"ca.pem\"\nmax_parallel = 3\n\n\
                      [[buildkit.builders]]\naddr = \"unix:///run/b1.sock\"\n";
        assert_eq!(
            addrs(&specs(&[], Some(config)).unwrap()),
            ["tcp://b0:1234", "unix:///run/b1.sock"]
        );
        let got = specs(&["--addr", "tcp://b0:1234,tcp://other:1"], Some(config)).unwrap();
        assert_eq!(addrs(&got), ["tcp://b0:1234", "tcp://other:1"]);
        assert_eq!(
            got[0].tls.ca_cert.as_deref(),
            Some(std::path::Path::new("/ws/ca.pem"))
        );
        assert_eq!(got[0].max_parallel, Some(3));
        assert_eq!(
            (got[1].tls.ca_cert.as_ref(), got[1].max_parallel),
            (None, None)
        );
        let repeated = specs(&["--addr", "docker://", "--addr", "unix:///b.sock"], None).unwrap();
        assert_eq!(
            addrs(&repeated),
            ["docker:///var/run/docker.sock", "unix:///b.sock"]
        );
    }

    #[test]
    fn tls_flags_go_to_tcp_builders_without_settings_of_their_own() {
        let config = "[[buildkit.builders]]\naddr = \"tcp://b0:1234\"\ntls_ca = \"ca.pem\"\n\n\
                      [[buildkit.builders]]\naddr = \"tcp://b1:1234\"\n\n\
                      [[buildkit.builders]]\naddr = \"docker://\"\n";
        let got = specs(&["--tlscacert", "/flag/ca.pem"], Some(config)).unwrap();
        let ca = |i: usize| got[i].tls.ca_cert.clone();
        assert_eq!(ca(0), Some("/ws/ca.pem".into()));
        assert_eq!(ca(1), Some("/flag/ca.pem".into()));
        assert_eq!(ca(2), None);
        let err = specs(&["--addr", "docker://", "--tlscacert", "/ca.pem"], None).unwrap_err();
        assert_eq!(err.status(), ExitStatus::Error);
        assert!(
            err.to_string().contains(
                "TLS options apply to tcp:// addresses only, not docker:///var/run/docker.sock"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_bad_or_repeated_address_is_a_usage_error() {
        let err = specs(&["--addr", "tcp://a:1,http://x"], None).unwrap_err();
        assert_eq!(err.status(), ExitStatus::Error);
        assert!(
            err.to_string()
                .contains("unsupported BuildKit address `http://x`"),
            "{err}"
        );
        let err = specs(&["--addr", "docker://,docker:///var/run/docker.sock"], None).unwrap_err();
        assert_eq!(err.status(), ExitStatus::Error);
        assert!(err.to_string().contains("is given twice"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10GB"), Some(10_000_000_000));
        assert_eq!(parse_size("512MiB"), Some(512 * 1024 * 1024));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("x"), None);
        assert_eq!(human_bytes(1_234_000), "1.23MB");
        assert_eq!(human_bytes(12), "12B");
    }

    #[test]
    fn durations() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(parse_duration("48h"), Some(h(48)));
        assert_eq!(parse_duration("7d"), Some(h(168)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2w"), Some(h(336)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in ["", "48", "h", "5y", "-1h", "1h 30m"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert_eq!(show_duration(h(48)), "48h");
        assert_eq!(show_duration(Duration::from_secs(90)), "90s");
        assert_eq!(show_duration(Duration::from_secs(300)), "5m");
    }

    fn spec(args: &[&str]) -> Result<PruneSpec, Error> {
        let cli = Cli::try_parse_from([&["buildopt", "prune"][..], args].concat()).unwrap();
        let Command::Prune(args) = cli.command else {
            unreachable!()
        };
        prune_spec(&args)
    }

    #[test]
    fn prune_defaults_keep_recent_cache_and_a_budget_but_not_with_all() {
        let default = spec(&[]).unwrap();
        assert!(!default.all);
        assert_eq!(default.keep_duration, Duration::from_secs(48 * 3600));
        assert_eq!(default.keep_bytes, 2_000_000_000);
        let all = spec(&["--all"]).unwrap();
        assert!(all.all);
        assert_eq!((all.keep_duration, all.keep_bytes), (Duration::ZERO, 0));
        let given = spec(&["--all", "--keep-duration", "24h", "--keep-storage", "10GB"]).unwrap();
        assert_eq!(given.keep_duration, Duration::from_secs(24 * 3600));
        assert_eq!(given.keep_bytes, 10_000_000_000);
        let none = spec(&[
            "--keep-duration",
            "0",
            "--keep-storage",
            "0",
            "--filter",
            "type==regular",
        ])
        .unwrap();
        assert_eq!((none.keep_duration, none.keep_bytes), (Duration::ZERO, 0));
        assert_eq!(none.filters, ["type==regular"]);
    }

    #[test]
    fn prune_refuses_bad_values_and_docker_only_filters() {
        for (args, expected) in [
            (
                &["--keep-duration", "2 days"][..],
                "invalid --keep-duration `2 days`",
            ),
            (
                &["--keep-storage", "lots"][..],
                "invalid --keep-storage `lots`",
            ),
            (
                &["--filter", "until=24h"][..],
                "`until` is a docker filter, not a BuildKit one: use --keep-duration",
            ),
            (
                &["--filter", "type==regular,unused-for=1h"][..],
                "`unused-for` is a docker filter",
            ),
        ] {
            let err = spec(args).unwrap_err();
            assert_eq!(err.status(), ExitStatus::Error);
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    /// `--help` states the defaults that [`prune_spec`] applies.
    #[test]
    fn prune_help_shows_the_defaults_in_force() {
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("prune")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(
            help.contains(&format!("[default: {DEFAULT_KEEP_DURATION},")),
            "{help}"
        );
        assert!(
            help.contains(&format!("[default: {DEFAULT_KEEP_STORAGE},")),
            "{help}"
        );
        let about = cli
            .find_subcommand("prune")
            .unwrap()
            .get_about()
            .unwrap()
            .to_string();
        let short = |s: &str| s.trim_end_matches('B').to_owned() + "B";
        assert!(
            about.contains(&format!("unused for {DEFAULT_KEEP_DURATION}")),
            "{about}"
        );
        assert!(about.contains(&short(DEFAULT_KEEP_STORAGE)), "{about}");
    }

    #[test]
    fn kept_line_says_what_stays() {
        assert_eq!(
            kept(&spec(&[]).unwrap()),
            "keeping records in use, used in the last 48h, or internal, frontend or shared with an image (--all \
             removes these); stopping once the cache is under 2.00GB"
        );
        assert_eq!(kept(&spec(&["--all"]).unwrap()), "keeping records in use");
        assert_eq!(
            kept(&spec(&["--all", "--filter", "private"]).unwrap()),
            "keeping records in use, or not matching --filter"
        );
    }

    #[test]
    fn descriptions_are_cut_to_the_room_left() {
        assert_eq!(cut("abcdef", Some(6)), "abcdef");
        assert_eq!(cut("abcdefg", Some(6)), "abcde…");
        assert_eq!(cut("äöüäöüä", Some(4)), "äöü…");
        assert_eq!(cut("abcdefg", None), "abcdefg");
        let r = UsageRecord {
            id: "r1".into(),
            size: 1000,
            description: "mount / from exec /bin/sh -c a long command line".into(),
            ..Default::default()
        };
        let table = |width| Table {
            in_use: true,
            width,
            now: SystemTime::now(),
        };
        let mut out = Vec::new();
        table(Some(80))
            .write(&mut out, std::slice::from_ref(&r))
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .ends_with("  mount / from exec /…"),
            "{text}"
        );
        let mut out = Vec::new();
        table(None).write(&mut out, &[r]).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("a long command line\n")
        );
    }

    #[test]
    fn ages() {
        let now = SystemTime::now();
        let ago_secs = |s: u64| ago(now, Some(now - Duration::from_secs(s)));
        assert_eq!(ago_secs(5), "5s ago");
        assert_eq!(ago_secs(300), "5m ago");
        assert_eq!(ago_secs(47 * 3600), "47h ago");
        assert_eq!(ago_secs(3 * 86_400), "3d ago");
        assert_eq!(ago(now, None), "-");
    }
}
