//! Build progress: merges the BuildKit `Status` stream of each service into a [`BuildState`] and renders
//! it as plain lines or a live view on stderr, or as JSON lines on stdout.
//!
//! The state model follows buildctl's progressui (`shared/buildkit-protocol.md` §7): the daemon re-sends
//! whole vertexes on every change, so the latest record wins; rows appear in the order vertexes first
//! start; log chunks are not line-aligned; and warnings repeat when the daemon splits a large update.
//! Durations come from the daemon's timestamps, never from the local clock, so plain output is
//! reproducible and unaffected by clock skew.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::buildkit::status::{StatusUpdate, Vertex, VertexStatus};
use crate::printer::{Printer, Verbosity};
use crate::report::{BuildReport, ServiceReport};

/// `--progress`: how build progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A live view on a terminal, plain lines otherwise.
    Auto,
    /// A live view.
    Tty,
    /// Plain timestamped lines.
    Plain,
    /// One JSON object per line on stdout.
    Json,
}

/// How many log lines per vertex are kept for the failure report (buildx keeps a similar tail).
const RETAINED_LOG_LINES: usize = 20;
/// A vertex error with this suffix means the vertex was cancelled, not that it failed.
const CANCELED_SUFFIX: &str = "context canceled";
/// Minimum daemon-time gap between two events of one running status item, so downloads don't flood.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// A partial log line longer than this is emitted anyway (e.g. `\r`-driven progress bars).
const MAX_PARTIAL_LINE: usize = 64 * 1024;

/// Where a vertex, or a progress group, is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VertexState {
    /// Running.
    #[serde(rename = "started")]
    Running,
    /// Ran and succeeded.
    Done,
    /// Its result came from the cache.
    Cached,
    /// Failed.
    Error {
        /// The daemon's error message.
        error: String,
    },
    /// Cancelled (its error ends with `context canceled`).
    Canceled,
}

/// A human-relevant transition found by [`BuildState::apply`]; serializes to one `--progress=json`
/// object (without its `service`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// The row (`#N`, 1-based, in display order); `None` only for warnings about a vertex not shown.
    pub index: Option<usize>,
    /// The vertex the event is about; for the start and end of a progress group, the group ID.
    pub digest: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What an [`Event`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A row started or finished.
    Vertex {
        /// Display name.
        name: String,
        /// The new state.
        #[serde(flatten)]
        state: VertexState,
        /// Time spent running, merged over all its runs (zero when it starts).
        #[serde(rename = "duration_ms", serialize_with = "as_millis")]
        duration: Duration,
    },
    /// A complete log line.
    Log {
        /// 1 = stdout, 2 = stderr.
        stream: i64,
        /// Time since the vertex started when the line began.
        #[serde(rename = "elapsed_ms", serialize_with = "as_millis")]
        elapsed: Duration,
        /// The line, without its newline.
        line: String,
    },
    /// A sub-progress item (context transfer, layer push, ...) moved on or completed.
    Status {
        /// The item's name, or its ID when unnamed.
        id: String,
        /// Progress counter, usually bytes.
        current: i64,
        /// Expected total; 0 = unknown.
        total: i64,
        /// Time since the item started.
        #[serde(rename = "elapsed_ms", serialize_with = "as_millis")]
        elapsed: Duration,
        /// Whether the item completed.
        done: bool,
    },
    /// A build warning; each distinct warning is reported once.
    Warning {
        /// Severity as sent by the daemon.
        level: i64,
        /// One-line message.
        short: String,
        /// Longer description, one entry per paragraph.
        detail: Vec<String>,
        /// Documentation link (may be empty).
        url: String,
    },
}

impl Event {
    fn new(index: Option<usize>, digest: &str, kind: EventKind) -> Event {
        let digest = digest.to_owned();
        Event {
            index,
            digest,
            kind,
        }
    }
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One row once started: a vertex, or every vertex of a progress group.
#[derive(Debug, Clone)]
struct Unit {
    /// Vertex digest or group ID.
    id: String,
    name: String,
    group: bool,
    members: Vec<String>,
    index: Option<usize>,
    /// The state last reported; `None` = not started.
    shown: Option<VertexState>,
    /// How many runs its members had when `shown` was last updated.
    runs: usize,
}

#[derive(Debug, Clone)]
struct VertexEntry {
    latest: Vertex,
    /// Runs of this vertex keyed by start time; the value is the completion time.
    intervals: BTreeMap<SystemTime, Option<SystemTime>>,
    unit: usize,
}

impl VertexEntry {
    fn state(&self) -> Option<VertexState> {
        match self.intervals.last_key_value()? {
            (_, None) => Some(VertexState::Running),
            (_, Some(_)) => Some(final_state(&self.latest)),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct LogBuffer {
    /// Unfinished line per stream, with the elapsed time of its first chunk.
    partial: BTreeMap<i64, (Duration, Vec<u8>)>,
    retained: VecDeque<(Duration, String)>,
    /// Lines not returned as events yet: held while the vertex has no row (`index: None`).
    pending: Vec<Event>,
}

impl LogBuffer {
    /// Appends a chunk and returns the lines it completes.
    fn push(&mut self, stream: i64, elapsed: Duration, data: &[u8]) -> Vec<(Duration, String)> {
        let mut lines = Vec::new();
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (at, mut line) = self
                .partial
                .remove(&stream)
                .unwrap_or((elapsed, Vec::new()));
            line.extend_from_slice(&rest[..pos]);
            lines.push((at, decode_line(&line)));
            rest = &rest[pos + 1..];
        }
        if !rest.is_empty() {
            let slot = self.partial.entry(stream).or_insert((elapsed, Vec::new()));
            slot.1.extend_from_slice(rest);
            if slot.1.len() > MAX_PARTIAL_LINE {
                let (at, line) = std::mem::take(slot);
                self.partial.remove(&stream);
                lines.push((at, decode_line(&line)));
            }
        }
        lines
    }

    /// Keeps a complete line for the failure report and emits it, or holds it until the row exists.
    fn line(
        &mut self,
        index: Option<usize>,
        digest: &str,
        stream: i64,
        at: Duration,
        line: String,
    ) {
        self.retained.push_back((at, line.clone()));
        if self.retained.len() > RETAINED_LOG_LINES {
            self.retained.pop_front();
        }
        let log = EventKind::Log {
            stream,
            elapsed: at,
            line,
        };
        self.pending.push(Event::new(index, digest, log));
    }
}

/// (current, done, timestamp) of a status item's last event.
type Emitted = (i64, bool, Option<SystemTime>);
type WarningKey = (String, i64, Vec<u8>, Vec<Vec<u8>>, String);

/// The merged progress state of one build.
#[derive(Debug, Clone, Default)]
pub struct BuildState {
    vertexes: HashMap<String, VertexEntry>,
    units: Vec<Unit>,
    unit_by_key: HashMap<(bool, String), usize>,
    /// Unit positions in display order: row `#N` is `rows[N - 1]`.
    rows: Vec<usize>,
    /// Latest record per (vertex, ID), and (current, done, timestamp) of the last emitted event.
    statuses: HashMap<(String, String), (VertexStatus, Option<Emitted>)>,
    logs: HashMap<String, LogBuffer>,
    warnings: HashSet<WarningKey>,
}

impl BuildState {
    /// Merges one update and returns what changed, in print order: starts, then statuses, logs and
    /// warnings, then completions.
    pub fn apply(&mut self, u: &StatusUpdate) -> Vec<Event> {
        let mut events = Vec::new();
        // Continuation parts of a split update carry only logs and warnings, so an update with
        // vertexes or statuses means finished vertexes get no more output: end their last lines.
        if !u.vertexes.is_empty() || !u.statuses.is_empty() {
            self.flush_partials(true, &mut events);
        }
        let mut touched = Vec::new();
        for v in &u.vertexes {
            let unit = self.merge_vertex(v);
            if !touched.contains(&unit) {
                touched.push(unit);
            }
        }
        let mut finished = Vec::new();
        for unit in touched {
            self.transition(unit, &mut events, &mut finished);
        }
        for s in &u.statuses {
            self.merge_status(s, &mut events);
        }
        for l in &u.logs {
            let start = self
                .vertexes
                .get(&l.vertex)
                .and_then(|e| e.intervals.keys().last());
            let elapsed = since(start.copied(), l.timestamp);
            let index = self.index_of(&l.vertex);
            let buf = self.logs.entry(l.vertex.clone()).or_default();
            for (at, line) in buf.push(l.stream, elapsed, &l.data) {
                buf.line(index, &l.vertex, l.stream, at, line);
            }
            if index.is_some() {
                events.append(&mut buf.pending);
            }
        }
        for w in &u.warnings {
            let key = (
                w.vertex.clone(),
                w.level,
                w.short.clone(),
                w.detail.clone(),
                w.url.clone(),
            );
            if self.warnings.insert(key) {
                let detail = w.detail.iter().map(|d| decode_line(d)).collect();
                let (level, short, url) = (w.level, decode_line(&w.short), w.url.clone());
                let warning = EventKind::Warning {
                    level,
                    short,
                    detail,
                    url,
                };
                events.push(Event::new(self.index_of(&w.vertex), &w.vertex, warning));
            }
        }
        events.extend(finished);
        events
    }

    /// Ends every unfinished log line; call once the status stream is over.
    pub fn flush(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        self.flush_partials(false, &mut events);
        events
    }

    /// For every vertex that failed (cancellations excluded): its name, its last log lines and its
    /// error, boxed like buildx does. `None` when no vertex failed.
    pub fn failure_report(&self) -> Option<String> {
        let mut failed: Vec<(usize, &str, &str, String)> = (self.vertexes.iter())
            .filter_map(|(digest, e)| match final_state(&e.latest) {
                VertexState::Error { error } => {
                    let index = self.units[e.unit].index.unwrap_or(usize::MAX);
                    Some((index, e.latest.name.as_str(), digest.as_str(), error))
                }
                _ => None,
            })
            .collect();
        failed.sort_unstable();
        let blocks = failed.into_iter().map(|(_, name, digest, error)| {
            let mut block = format!("------\n > {name}:\n");
            if let Some(buf) = self.logs.get(digest) {
                let partial = buf.partial.values().map(|(at, l)| (*at, decode_line(l)));
                let lines: Vec<_> = buf.retained.iter().cloned().chain(partial).collect();
                for (at, line) in &lines[lines.len().saturating_sub(RETAINED_LOG_LINES)..] {
                    block.push_str(&format!("{:.3} {line}\n", at.as_secs_f64()));
                }
            }
            block + "------\nERROR: " + &error
        });
        let report = blocks.collect::<Vec<_>>().join("\n");
        (!report.is_empty()).then_some(report)
    }

    /// Name and error of every vertex that failed (cancellations excluded), in row order.
    pub fn errors(&self) -> Vec<(String, String)> {
        let mut failed: Vec<(usize, String, String)> = (self.vertexes.values())
            .filter_map(|e| match final_state(&e.latest) {
                VertexState::Error { error } => {
                    let index = self.units[e.unit].index.unwrap_or(usize::MAX);
                    Some((index, e.latest.name.clone(), error))
                }
                _ => None,
            })
            .collect();
        failed.sort_unstable();
        failed.into_iter().map(|(_, n, e)| (n, e)).collect()
    }

    /// (completed, total) rows, counting vertexes not started yet and each progress group once.
    pub fn counts(&self) -> (usize, usize) {
        let finished = |u| {
            self.unit_state(u)
                .is_some_and(|s| s != VertexState::Running)
        };
        (
            (0..self.units.len()).filter(|&u| finished(u)).count(),
            self.units.len(),
        )
    }

    /// (cached, completed) vertexes, for a cache hit ratio; failed and cancelled vertexes count in
    /// neither.
    pub fn cache_hits(&self) -> (usize, usize) {
        self.vertexes
            .values()
            .fold((0, 0), |(cached, done), e| match e.state() {
                Some(VertexState::Cached) => (cached + 1, done + 1),
                Some(VertexState::Done) => (cached, done + 1),
                _ => (cached, done),
            })
    }

    /// The name of the most recently started row that is still running.
    pub fn current(&self) -> Option<&str> {
        let mut units = self.rows.iter().rev().map(|&u| &self.units[u]);
        units
            .find(|u| u.shown == Some(VertexState::Running))
            .map(|u| u.name.as_str())
    }

    fn index_of(&self, digest: &str) -> Option<usize> {
        self.vertexes
            .get(digest)
            .and_then(|e| self.units[e.unit].index)
    }

    fn merge_vertex(&mut self, v: &Vertex) -> usize {
        let unit = match self.vertexes.get(&v.digest) {
            Some(e) => e.unit,
            None => self.new_member(v),
        };
        let entry = self
            .vertexes
            .entry(v.digest.clone())
            .or_insert_with(|| VertexEntry {
                latest: Vertex::default(),
                intervals: BTreeMap::new(),
                unit,
            });
        entry.latest = v.clone();
        // A cached vertex may come with only `completed` set: a zero-length run.
        if let Some(start) = v.started.or(v.completed) {
            let end = entry.intervals.entry(start).or_insert(None);
            // Keep a completion even if an older record of the run arrives late.
            *end = v.completed.or(*end);
        }
        if !self.units[unit].group {
            self.units[unit].name.clone_from(&v.name);
        }
        unit
    }

    fn new_member(&mut self, v: &Vertex) -> usize {
        let (id, name, group) = match &v.progress_group {
            Some((id, name)) if !id.is_empty() => (id, name, true),
            _ => (&v.digest, &v.name, false),
        };
        let unit = *self
            .unit_by_key
            .entry((group, id.clone()))
            .or_insert_with(|| {
                let (id, name, members) = (id.clone(), name.clone(), Vec::new());
                let unit = Unit {
                    id,
                    name,
                    group,
                    members,
                    index: None,
                    shown: None,
                    runs: 0,
                };
                self.units.push(unit);
                self.units.len() - 1
            });
        self.units[unit].members.push(v.digest.clone());
        unit
    }

    fn members(&self, unit: usize) -> impl Iterator<Item = &VertexEntry> {
        self.units[unit]
            .members
            .iter()
            .filter_map(|d| self.vertexes.get(d))
    }

    /// Running while any member runs; otherwise the first error, else a cancellation, else cached
    /// when every started member was, else done.
    fn unit_state(&self, unit: usize) -> Option<VertexState> {
        let states: Vec<VertexState> = self.members(unit).filter_map(VertexEntry::state).collect();
        let find = |f: fn(&VertexState) -> bool| states.iter().find(|s| f(s)).cloned();
        find(|s| *s == VertexState::Running)
            .or_else(|| find(|s| matches!(s, VertexState::Error { .. })))
            .or_else(|| find(|s| *s == VertexState::Canceled))
            .or_else(|| find(|s| *s == VertexState::Done))
            .or_else(|| states.first().cloned())
    }

    /// Sum of the merged completed runs of every member.
    fn unit_duration(&self, unit: usize) -> Duration {
        let mut spans: Vec<(SystemTime, SystemTime)> = (self.members(unit))
            .flat_map(|e| e.intervals.iter().filter_map(|(s, e)| Some((*s, (*e)?))))
            .collect();
        spans.sort_unstable();
        let (mut total, mut current) = (Duration::ZERO, None::<(SystemTime, SystemTime)>);
        for (start, end) in spans {
            current = match current {
                Some((s, e)) if start <= e => Some((s, e.max(end))),
                Some((s, e)) => {
                    total += e.duration_since(s).unwrap_or_default();
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        total
            + current.map_or(Duration::ZERO, |(s, e)| {
                e.duration_since(s).unwrap_or_default()
            })
    }

    fn transition(&mut self, unit: usize, events: &mut Vec<Event>, finished: &mut Vec<Event>) {
        let Some(now) = self.unit_state(unit) else {
            return;
        };
        let runs = self.members(unit).map(|e| e.intervals.len()).sum();
        let u = &self.units[unit];
        // A finished row that gained a run ran again, even if we only saw the run's completion.
        let rerun = runs != u.runs && !matches!(u.shown, None | Some(VertexState::Running));
        let show_start = match now {
            VertexState::Running => u.shown != Some(VertexState::Running),
            _ => u.shown.is_none() || rerun,
        };
        if u.shown.as_ref() == Some(&now) && !rerun {
            self.units[unit].runs = runs;
            return;
        }
        let index = *self.units[unit].index.get_or_insert_with(|| {
            self.rows.push(unit);
            self.rows.len()
        });
        let (name, id) = (&self.units[unit].name, &self.units[unit].id);
        let vertex = |state, duration| {
            let name = name.clone();
            Event::new(
                Some(index),
                id,
                EventKind::Vertex {
                    name,
                    state,
                    duration,
                },
            )
        };
        if show_start {
            events.push(vertex(VertexState::Running, Duration::ZERO));
        }
        if now != VertexState::Running {
            finished.push(vertex(now.clone(), self.unit_duration(unit)));
        }
        // Output that arrived before the row existed.
        for digest in self.units[unit].members.clone() {
            if let Some(buf) = self.logs.get_mut(&digest) {
                let index = Some(index);
                events.extend(buf.pending.drain(..).map(|e| Event { index, ..e }));
            }
        }
        self.units[unit].shown = Some(now);
        self.units[unit].runs = runs;
    }

    fn merge_status(&mut self, s: &VertexStatus, events: &mut Vec<Event>) {
        // Statuses of unknown vertexes are ignored (§7).
        if !self.vertexes.contains_key(&s.vertex) {
            return;
        }
        let index = self.index_of(&s.vertex);
        let key = (s.vertex.clone(), s.id.clone());
        let (latest, emitted) = self
            .statuses
            .entry(key)
            .or_insert_with(|| (s.clone(), None));
        *latest = s.clone();
        let done = s.completed.is_some();
        let at = s.timestamp.or(s.completed).or(s.started);
        let emit = match *emitted {
            None => true,
            Some((_, true, _)) => false,
            Some(_) if done => true,
            Some((current, _, last)) => s.current != current && since(last, at) >= STATUS_INTERVAL,
        };
        if index.is_none() || !emit {
            return;
        }
        *emitted = Some((s.current, done, at));
        let id = if s.name.is_empty() { &s.id } else { &s.name }.clone();
        let elapsed = since(s.started, s.completed.or(s.timestamp));
        let (current, total) = (s.current, s.total);
        let status = EventKind::Status {
            id,
            current,
            total,
            elapsed,
            done,
        };
        events.push(Event::new(index, &s.vertex, status));
    }

    /// Turns unfinished log lines into lines; with `only_finished`, of finished vertexes only.
    fn flush_partials(&mut self, only_finished: bool, events: &mut Vec<Event>) {
        let finished = |d: &String| {
            let state = self.vertexes.get(d).and_then(VertexEntry::state);
            !only_finished || state.is_some_and(|s| s != VertexState::Running)
        };
        let mut pending: Vec<(Option<usize>, String)> = (self.logs.iter())
            .filter(|(d, buf)| !buf.partial.is_empty() && finished(d))
            .map(|(d, _)| (self.index_of(d), d.clone()))
            .collect();
        pending.sort_unstable();
        for (index, digest) in pending {
            let Some(buf) = self.logs.get_mut(&digest) else {
                continue;
            };
            for (stream, (at, bytes)) in std::mem::take(&mut buf.partial) {
                buf.line(index, &digest, stream, at, decode_line(&bytes));
            }
            if index.is_some() {
                events.append(&mut buf.pending);
            }
        }
    }
}

/// The state of a completed vertex record.
fn final_state(v: &Vertex) -> VertexState {
    match v.error.as_deref().filter(|e| !e.is_empty()) {
        Some(e) if e.ends_with(CANCELED_SUFFIX) => VertexState::Canceled,
        Some(e) => VertexState::Error {
            error: e.to_owned(),
        },
        None if v.cached => VertexState::Cached,
        None => VertexState::Done,
    }
}

/// `to - from`, zero when either is unknown or the clocks disagree.
fn since(from: Option<SystemTime>, to: Option<SystemTime>) -> Duration {
    match (from, to) {
        (Some(from), Some(to)) => to.duration_since(from).unwrap_or_default(),
        _ => Duration::ZERO,
    }
}

fn decode_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\r')
        .to_owned()
}

/// `sha256:0123456789ab`.
fn short_digest(digest: &str) -> &str {
    &digest[..digest.len().min("sha256:".len() + 12)]
}

/// Decimal byte sizes like buildctl: `512B`, `1.20MB`.
pub(crate) fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let (mut value, mut unit) = (n as f64, 0);
    while value.abs() >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.2}{}", UNITS[unit])
    }
}

/// Writes `events` in buildctl's plain format, each line prefixed with `[service]`.
fn write_plain(w: &mut impl Write, service: &str, events: &[Event]) -> io::Result<()> {
    for Event { index, kind, .. } in events {
        let text = match kind {
            EventKind::Vertex {
                name,
                state,
                duration,
            } => match state {
                VertexState::Running => name.clone(),
                VertexState::Done => format!("DONE {:.1}s", duration.as_secs_f64()),
                VertexState::Cached => "CACHED".to_owned(),
                VertexState::Error { error } => format!("ERROR: {error}"),
                VertexState::Canceled => "CANCELED".to_owned(),
            },
            EventKind::Log { elapsed, line, .. } => format!("{:.3} {line}", elapsed.as_secs_f64()),
            EventKind::Status {
                id,
                current,
                total,
                elapsed,
                done,
            } => {
                let amount = match (current, total) {
                    (_, 0) if *current == 0 => String::new(),
                    (_, 0) => format!("{} ", human_bytes(*current)),
                    _ => format!("{} / {} ", human_bytes(*current), human_bytes(*total)),
                };
                let done = if *done { " done" } else { "" };
                format!("{id} {amount}{:.1}s{done}", elapsed.as_secs_f64())
            }
            EventKind::Warning { short, .. } => format!("WARN: {short}"),
        };
        // Every line gets the prefix, so a multi-line daemon message never shows up unattributed.
        let prefix = match index {
            Some(index) => format!("[{service}] #{index} "),
            None => format!("[{service}] "),
        };
        for line in text.split('\n') {
            writeln!(w, "{prefix}{line}")?;
        }
    }
    Ok(())
}

/// One `--progress=json` line: `event`'s fields after the service name.
fn json_line(service: &str, event: &impl Serialize) -> String {
    #[derive(Serialize)]
    struct Line<'a, T> {
        service: &'a str,
        #[serde(flatten)]
        event: &'a T,
    }
    serde_json::to_string(&Line { service, event }).unwrap_or_default()
}

/// How progress is shown, resolved from [`ProgressMode`] and the printer's verbosity.
#[derive(Debug, Clone)]
enum View {
    Quiet,
    Plain,
    Tty(MultiProgress),
    Json,
}

/// Renders the progress of several services' builds, which may run in parallel.
#[derive(Debug, Clone)]
pub struct Progress {
    printer: Printer,
    view: View,
}

impl Progress {
    /// A renderer for `mode`: `Auto` is `Tty` when stderr is a terminal, `Plain` otherwise. Under
    /// `--quiet` nothing is rendered, in any mode, except failure reports.
    pub fn new(mode: ProgressMode, printer: Printer) -> Progress {
        let view = match mode {
            // JSON is a result on stdout, asked for by name: --quiet silences only the human output.
            ProgressMode::Json => View::Json,
            _ if printer.verbosity() == Verbosity::Quiet => View::Quiet,
            ProgressMode::Auto if !io::stderr().is_terminal() => View::Plain,
            ProgressMode::Auto | ProgressMode::Tty => {
                View::Tty(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            }
            ProgressMode::Plain => View::Plain,
        };
        Progress { printer, view }
    }

    /// `--progress json`: a `decision` event per service (`build` or `skip`, with the input digest and why), before
    /// anything runs.
    pub(crate) fn decisions(&self, report: &BuildReport) {
        if !matches!(self.view, View::Json) {
            return;
        }
        #[derive(Serialize)]
        struct Decision<'a> {
            r#type: &'static str,
            decision: &'a str,
            digest: String,
            reason: &'a str,
        }
        let mut out = self.printer.stdout();
        for s in &report.services {
            let event = Decision {
                r#type: "decision",
                decision: s.decision,
                digest: s.digest.to_string(),
                reason: &s.reason,
            };
            let _ = writeln!(out, "{}", json_line(&s.service, &event));
        }
    }

    /// `--progress json`: an `outcome` event when a service ends (`built`, `skipped`, `promoted`, `failed`), with
    /// its image or error.
    pub(crate) fn outcome(&self, s: &ServiceReport) {
        if !matches!(self.view, View::Json) {
            return;
        }
        #[derive(Serialize)]
        struct Outcome<'a> {
            r#type: &'static str,
            status: crate::report::Status,
            #[serde(skip_serializing_if = "Option::is_none")]
            image: Option<&'a String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<&'a String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            location: Option<&'a crate::report::Location>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            warnings: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            builder: Option<&'a String>,
        }
        let event = Outcome {
            r#type: "outcome",
            status: s.status,
            image: s.image.as_ref(),
            error: s.error.as_ref(),
            location: s.location.as_ref(),
            warnings: &s.warnings,
            builder: s.builder.as_ref(),
        };
        let _ = writeln!(self.printer.stdout(), "{}", json_line(&s.service, &event));
    }

    /// `--progress json`: the whole report as the last line, a `summary` object (what `--metadata-file` and the
    /// summary on stderr say, in one place).
    pub(crate) fn summary(&self, report: &BuildReport) {
        if !matches!(self.view, View::Json) {
            return;
        }
        #[derive(Serialize)]
        struct Summary<'a> {
            r#type: &'static str,
            succeeded: bool,
            #[serde(flatten)]
            report: &'a BuildReport,
        }
        let summary = Summary {
            r#type: "summary",
            succeeded: report.succeeded(),
            report,
        };
        let line = serde_json::to_string(&summary).unwrap_or_default();
        let _ = writeln!(self.printer.stdout(), "{line}");
    }

    /// A `warning:` line on stderr, above the live view; written under `--quiet` too (with `--progress json` it goes
    /// to stderr as well: stdout is the event stream).
    pub(crate) fn warning(&self, text: &str) {
        let line = format!("warning: {text}");
        match &self.view {
            View::Tty(multi) => multi.suspend(|| {
                let _ = writeln!(self.printer.errors(), "{line}");
            }),
            _ => {
                let _ = writeln!(self.printer.errors(), "{line}");
            }
        }
    }

    /// Reports a tag move as it happens: a line on stderr (above the live view), or a `tag` event with
    /// `--progress json`. Not under `--quiet`.
    pub fn tag_moved(&self, service: &str, reference: &str, image: &str, from: Option<&str>) {
        let was = from
            .map(|f| format!(" (was {})", short_digest(f)))
            .unwrap_or_default();
        let line = format!(
            "[{service}] tagged {reference} -> {}{was}",
            short_digest(image)
        );
        match &self.view {
            View::Quiet => {}
            View::Plain => {
                let _ = writeln!(self.printer.stderr(), "{line}");
            }
            View::Tty(multi) => {
                let _ = multi.println(line);
            }
            View::Json => {
                #[derive(Serialize)]
                struct Tag<'a> {
                    r#type: &'static str,
                    reference: &'a str,
                    image: &'a str,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    from: Option<&'a str>,
                }
                let tag = Tag {
                    r#type: "tag",
                    reference,
                    image,
                    from,
                };
                let _ = writeln!(self.printer.stdout(), "{}", json_line(service, &tag));
            }
        }
    }

    /// The handle through which the build of service `name` reports progress.
    pub fn service(&self, name: &str) -> ServiceProgress {
        let bar = match &self.view {
            View::Tty(multi) => {
                let template = "{spinner:.cyan} {prefix:.bold}  {wide_msg} {elapsed}";
                let style = ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let bar = multi.add(ProgressBar::new_spinner().with_style(style));
                bar.set_prefix(name.to_owned());
                bar.set_message("waiting for BuildKit");
                bar.enable_steady_tick(Duration::from_millis(120));
                Some(bar)
            }
            _ => None,
        };
        ServiceProgress {
            name: name.to_owned(),
            printer: self.printer,
            view: self.view.clone(),
            bar,
            state: BuildState::default(),
            started: Instant::now(),
        }
    }
}

/// The progress of one service's build: feed it every status update, then finish it.
#[derive(Debug)]
pub struct ServiceProgress {
    name: String,
    printer: Printer,
    view: View,
    bar: Option<ProgressBar>,
    state: BuildState,
    started: Instant,
}

impl ServiceProgress {
    /// Merges `u` and renders what changed.
    pub fn update(&mut self, u: &StatusUpdate) {
        let events = self.state.apply(u);
        self.render(&events);
    }

    /// The merged state so far.
    pub fn state(&self) -> &BuildState {
        &self.state
    }

    /// Ends the view of this build: renders what is left, a summary (live view: one line; JSON: a
    /// `result` object), and on error the failure report, to [`Printer::errors`] even under `--quiet`.
    pub fn finish(mut self, outcome: &Result<(), String>) {
        let events = self.state.flush();
        self.render(&events);
        let elapsed = self.started.elapsed();
        let (cached, completed) = self.state.cache_hits();
        match &self.view {
            View::Json => {
                #[derive(Serialize)]
                struct Summary<'a> {
                    r#type: &'static str,
                    ok: bool,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    error: Option<&'a String>,
                    cached: usize,
                    completed: usize,
                    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
                    duration: Duration,
                }
                let (ok, error) = (outcome.is_ok(), outcome.as_ref().err());
                let summary = Summary {
                    r#type: "result",
                    ok,
                    error,
                    cached,
                    completed,
                    duration: elapsed,
                };
                let _ = writeln!(self.printer.stdout(), "{}", json_line(&self.name, &summary));
            }
            View::Tty(multi) => {
                if let Some(bar) = &self.bar {
                    bar.finish_and_clear();
                }
                let (name, secs) = (&self.name, elapsed.as_secs_f64());
                let _ = multi.println(match outcome {
                    Ok(()) => {
                        format!("✔ {name}  built in {secs:.1}s  ({cached}/{completed} cached)")
                    }
                    Err(_) => format!("✘ {name}  failed after {secs:.1}s"),
                });
            }
            View::Quiet | View::Plain => {}
        }
        let Some(report) = outcome
            .as_ref()
            .err()
            .and_then(|_| self.state.failure_report())
        else {
            return;
        };
        let write = || {
            let _ = writeln!(
                self.printer.errors(),
                "[{}] build failed:\n{report}",
                self.name
            );
        };
        match &self.view {
            View::Tty(multi) => multi.suspend(write),
            _ => write(),
        }
    }

    fn render(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        // One write per update keeps the lines of parallel services whole.
        match &self.view {
            View::Quiet => {}
            View::Plain => {
                let mut buf = Vec::new();
                let _ = write_plain(&mut buf, &self.name, events);
                let _ = self.printer.stderr().write_all(&buf);
            }
            View::Json => {
                let lines: String = events
                    .iter()
                    .map(|e| json_line(&self.name, e) + "\n")
                    .collect();
                let _ = self.printer.stdout().write_all(lines.as_bytes());
            }
            View::Tty(multi) => {
                for event in events {
                    if let EventKind::Warning { short, .. } = &event.kind {
                        let _ = multi.println(format!("! {}  WARN: {short}", self.name));
                    }
                }
                if let Some(bar) = &self.bar {
                    let (done, total) = self.state.counts();
                    let current = self.state.current().unwrap_or_default();
                    bar.set_message(format!("{done}/{total}  {current}"));
                }
            }
        }
    }
}

impl Drop for ServiceProgress {
    /// A build task aborted before `finish` must not leave a spinner behind.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.as_ref().filter(|b| !b.is_finished()) {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::buildkit::status::{VertexLog, VertexWarning};

    /// A daemon timestamp `ms` milliseconds into the build.
    fn at(ms: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms))
    }

    fn vertex(digest: &str, name: &str, started: Option<u64>, completed: Option<u64>) -> Vertex {
        let (started, completed) = (started.and_then(at), completed.and_then(at));
        Vertex {
            digest: digest.into(),
            name: name.into(),
            started,
            completed,
            ..Vertex::default()
        }
    }

    fn failed(digest: &str, name: &str, error: &str) -> Vertex {
        Vertex {
            error: Some(error.into()),
            ..vertex(digest, name, Some(0), Some(500))
        }
    }

    fn log(digest: &str, ms: u64, data: &str) -> VertexLog {
        VertexLog {
            vertex: digest.into(),
            timestamp: at(ms),
            stream: 1,
            data: data.into(),
        }
    }

    fn vertexes(vertexes: Vec<Vertex>) -> StatusUpdate {
        StatusUpdate {
            vertexes,
            ..StatusUpdate::default()
        }
    }

    fn logs(logs: Vec<VertexLog>) -> StatusUpdate {
        StatusUpdate {
            logs,
            ..StatusUpdate::default()
        }
    }

    fn warnings(warnings: Vec<VertexWarning>) -> StatusUpdate {
        StatusUpdate {
            warnings,
            ..StatusUpdate::default()
        }
    }

    fn plain(events: &[Event]) -> String {
        let mut out = Vec::new();
        write_plain(&mut out, "web", events).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rows_follow_first_start_and_late_records_do_not_reopen_a_vertex() {
        let mut s = BuildState::default();
        // b is listed before it runs: no row yet, but it counts towards the total.
        let e = s.apply(&vertexes(vec![
            vertex("b", "B", None, None),
            vertex("a", "A", Some(0), None),
        ]));
        assert_eq!(plain(&e), "[web] #1 A\n");
        assert_eq!(s.counts(), (0, 2));
        let e = s.apply(&vertexes(vec![vertex("b", "B", Some(100), Some(200))]));
        assert_eq!(plain(&e), "[web] #2 B\n[web] #2 DONE 0.1s\n");
        // An older record of b's run (no completion) arriving late changes nothing.
        assert!(
            s.apply(&vertexes(vec![vertex("b", "B", Some(100), None)]))
                .is_empty()
        );
        assert_eq!((s.counts(), s.current()), ((1, 2), Some("A")));
        // First seen already completed, without a start time: a zero-length cached run.
        let cached = Vertex {
            cached: true,
            ..vertex("c", "C", None, Some(300))
        };
        let e = s.apply(&vertexes(vec![
            vertex("a", "A", Some(0), Some(1000)),
            cached,
        ]));
        assert_eq!(
            plain(&e),
            "[web] #3 C\n[web] #1 DONE 1.0s\n[web] #3 CACHED\n"
        );
        assert_eq!(
            (s.counts(), s.cache_hits(), s.current()),
            ((3, 3), (1, 3), None)
        );
    }

    #[test]
    fn a_resent_vertex_is_reported_once_and_reruns_add_up() {
        let mut s = BuildState::default();
        let done = vertex("a", "A", Some(0), Some(1200));
        assert_eq!(s.apply(&vertexes(vec![done.clone()])).len(), 2);
        assert!(s.apply(&vertexes(vec![done.clone(), done])).is_empty());
        // Run again later, seen only once completed: shown again, and the duration sums both runs.
        let e = s.apply(&vertexes(vec![vertex("a", "A", Some(5000), Some(5300))]));
        assert_eq!(plain(&e), "[web] #1 A\n[web] #1 DONE 1.5s\n");
    }

    #[test]
    fn a_progress_group_is_one_row() {
        let mut s = BuildState::default();
        let member = |digest, started, completed| Vertex {
            progress_group: Some(("pg".into(), "pulling alpine".into())),
            ..vertex(digest, digest, started, completed)
        };
        let e = s.apply(&vertexes(vec![
            member("l1", Some(0), None),
            member("l2", Some(100), None),
        ]));
        assert_eq!(plain(&e), "[web] #1 pulling alpine\n");
        assert!(
            s.apply(&vertexes(vec![member("l1", Some(0), Some(500))]))
                .is_empty()
        );
        let e = s.apply(&vertexes(vec![member("l2", Some(100), Some(800))]));
        // Overlapping runs merge: 0..800, not 500 + 700.
        let kind = EventKind::Vertex {
            name: "pulling alpine".into(),
            state: VertexState::Done,
            duration: Duration::from_millis(800),
        };
        assert_eq!(
            e,
            [Event {
                index: Some(1),
                digest: "pg".into(),
                kind
            }]
        );
        assert_eq!((s.counts(), s.cache_hits()), ((1, 1), (0, 2)));
    }

    #[test]
    fn logs_split_mid_line_are_joined() {
        let mut s = BuildState::default();
        // Output before the vertex starts is held until it has a row.
        assert!(s.apply(&logs(vec![log("a", 0, "early\n")])).is_empty());
        let e = s.apply(&vertexes(vec![vertex("a", "A", Some(0), None)]));
        assert_eq!(plain(&e), "[web] #1 A\n[web] #1 0.000 early\n");
        assert!(s.apply(&logs(vec![log("a", 100, "hel")])).is_empty());
        let stderr = VertexLog {
            stream: 2,
            ..log("a", 150, "warn")
        };
        let e = s.apply(&logs(vec![log("a", 200, "lo\r\nwor"), stderr]));
        assert_eq!(plain(&e), "[web] #1 0.100 hello\n");
        let e = s.apply(&logs(vec![log("a", 300, "ld\n\n")]));
        assert_eq!(plain(&e), "[web] #1 0.200 world\n[web] #1 0.300 \n");
        // The unfinished stderr line ends when the next batch shows the vertex is over.
        s.apply(&vertexes(vec![vertex("a", "A", Some(0), Some(400))]));
        let e = s.apply(&vertexes(vec![vertex("b", "B", Some(500), None)]));
        assert_eq!(plain(&e), "[web] #1 0.150 warn\n[web] #2 B\n");
        s.apply(&logs(vec![log("b", 600, "tail")]));
        assert_eq!(plain(&s.flush()), "[web] #2 0.100 tail\n");
        assert!(s.flush().is_empty());
    }

    #[test]
    fn repeated_warnings_are_reported_once() {
        let mut s = BuildState::default();
        s.apply(&vertexes(vec![vertex("a", "A", Some(0), None)]));
        let warning = VertexWarning {
            vertex: "a".into(),
            level: 1,
            short: b"FromAsCasing: 'as' and 'FROM' keywords' casing do not match".to_vec(),
            detail: vec![b"Use consistent casing.".to_vec()],
            url: "https://docs.docker.com/go/dockerfile/rule/from-as-casing/".into(),
        };
        let e = s.apply(&warnings(vec![warning.clone(), warning.clone()]));
        let want = "[web] #1 WARN: FromAsCasing: 'as' and 'FROM' keywords' casing do not match\n";
        assert_eq!(plain(&e), want);
        assert!(s.apply(&warnings(vec![warning.clone()])).is_empty());
        let e = s.apply(&warnings(vec![VertexWarning {
            vertex: "z".into(),
            ..warning
        }]));
        assert_eq!(plain(&e), want.replace("#1 ", ""));
    }

    #[test]
    fn failure_report_has_the_failed_vertex_logs_and_error() {
        let mut s = BuildState::default();
        let error = r#"process "/bin/sh -c false" did not complete successfully: exit code: 1"#;
        s.apply(&vertexes(vec![vertex(
            "a",
            "[1/3] FROM alpine",
            Some(0),
            Some(10),
        )]));
        s.apply(&vertexes(vec![vertex(
            "b",
            "[2/3] RUN false",
            Some(0),
            None,
        )]));
        s.apply(&logs(vec![log("b", 100, "step one\nstep two\nno newline")]));
        assert_eq!(s.failure_report(), None);
        let e = s.apply(&vertexes(vec![failed("b", "[2/3] RUN false", error)]));
        assert_eq!(plain(&e), format!("[web] #2 ERROR: {error}\n"));
        let lines = "0.100 step one\n0.100 step two\n0.100 no newline\n";
        let want = format!("------\n > [2/3] RUN false:\n{lines}------\nERROR: {error}");
        assert_eq!(s.failure_report(), Some(want));
        assert_eq!((s.counts(), s.cache_hits()), ((2, 2), (0, 1)));
    }

    #[test]
    fn failure_report_keeps_the_last_lines_of_each_failed_vertex() {
        let mut s = BuildState::default();
        s.apply(&vertexes(vec![
            vertex("a", "A", Some(0), None),
            vertex("b", "B", Some(0), None),
        ]));
        let text: String = (0..25).map(|i| format!("line {i}\n")).collect();
        s.apply(&logs(vec![log("a", 0, &text)]));
        s.apply(&vertexes(vec![
            failed("b", "B", "boom"),
            failed("a", "A", "bang"),
        ]));
        let a: String = (5..25).map(|i| format!("0.000 line {i}\n")).collect();
        let want =
            format!("------\n > A:\n{a}------\nERROR: bang\n------\n > B:\n------\nERROR: boom");
        assert_eq!(s.failure_report(), Some(want));
    }

    #[test]
    fn a_canceled_vertex_is_not_a_failure() {
        let mut s = BuildState::default();
        let canceled = failed(
            "a",
            "[2/3] RUN sleep 100",
            "failed to solve: context canceled",
        );
        let e = s.apply(&vertexes(vec![canceled]));
        assert_eq!(
            plain(&e),
            "[web] #1 [2/3] RUN sleep 100\n[web] #1 CANCELED\n"
        );
        assert_eq!((s.failure_report(), s.cache_hits()), (None, (0, 0)));
    }

    #[test]
    fn status_items_are_throttled_by_daemon_time() {
        let mut s = BuildState::default();
        s.apply(&vertexes(vec![vertex(
            "a",
            "exporting to image",
            Some(0),
            None,
        )]));
        let status = |current, ms, completed: Option<u64>| StatusUpdate {
            statuses: vec![VertexStatus {
                id: "pushing layers".into(),
                vertex: "a".into(),
                current,
                total: 2_500_000,
                timestamp: at(ms),
                started: at(0),
                completed: completed.and_then(at),
                ..VertexStatus::default()
            }],
            ..StatusUpdate::default()
        };
        let steps = [(0, 0, None), (1000, 500, None), (1_200_000, 1200, None)];
        let mut out: String = steps
            .iter()
            .map(|&(c, ms, done)| plain(&s.apply(&status(c, ms, done))))
            .collect();
        out += &plain(&s.apply(&status(2_500_000, 1800, Some(1800))));
        assert!(s.apply(&status(2_500_000, 1900, Some(1800))).is_empty());
        let want = "[web] #1 pushing layers 0B / 2.50MB 0.0s
[web] #1 pushing layers 1.20MB / 2.50MB 1.2s
[web] #1 pushing layers 2.50MB / 2.50MB 1.8s done
";
        assert_eq!(out, want);
    }

    #[test]
    fn plain_output_of_a_small_build() {
        let mut s = BuildState::default();
        let transfer = |current, ms, completed: Option<u64>| VertexStatus {
            id: "transferring context:".into(),
            vertex: "ctx".into(),
            current,
            timestamp: at(ms),
            started: at(0),
            completed: completed.and_then(at),
            ..VertexStatus::default()
        };
        let warning = VertexWarning {
            vertex: "run".into(),
            short: b"JSONArgsRecommended: JSON arguments recommended for CMD".to_vec(),
            ..VertexWarning::default()
        };
        let (ctx, run) = ("[internal] load build context", "[2/2] RUN make");
        let from = Vertex {
            cached: true,
            ..vertex("from", "[1/2] FROM alpine", Some(10), Some(10))
        };
        let updates = [
            StatusUpdate {
                vertexes: vec![
                    vertex("ctx", ctx, Some(0), None),
                    vertex("run", run, None, None),
                ],
                statuses: vec![transfer(1_200_000, 300, None)],
                ..StatusUpdate::default()
            },
            StatusUpdate {
                vertexes: vec![
                    vertex("ctx", ctx, Some(0), Some(360)),
                    vertex("run", run, Some(400), None),
                ],
                statuses: vec![transfer(1_204_000, 360, Some(360))],
                logs: vec![log("run", 912, "compiling\nlin")],
                ..StatusUpdate::default()
            },
            StatusUpdate {
                logs: vec![log("run", 1500, "king\n")],
                ..warnings(vec![warning.clone()])
            },
            StatusUpdate {
                vertexes: vec![vertex("run", run, Some(400), Some(1600)), from],
                ..warnings(vec![warning])
            },
        ];
        let mut out: String = updates.iter().map(|u| plain(&s.apply(u))).collect();
        out += &plain(&s.flush());
        let want = "\
[web] #1 [internal] load build context
[web] #1 transferring context: 1.20MB 0.3s
[web] #2 [2/2] RUN make
[web] #1 transferring context: 1.20MB 0.4s done
[web] #2 0.512 compiling
[web] #1 DONE 0.4s
[web] #2 0.512 linking
[web] #2 WARN: JSONArgsRecommended: JSON arguments recommended for CMD
[web] #3 [1/2] FROM alpine
[web] #2 DONE 1.2s
[web] #3 CACHED
";
        assert_eq!(out, want);
        assert_eq!((s.counts(), s.cache_hits()), ((3, 3), (1, 3)));
    }

    #[test]
    fn bytes_are_decimal_and_human_sized() {
        let got = [0, 999, 1000, 1_204_000, 3_500_000_000].map(human_bytes);
        assert_eq!(got, ["0B", "999B", "1.00kB", "1.20MB", "3.50GB"]);
    }

    #[test]
    fn json_lines_name_the_service_type_and_state() {
        let json = |kind| {
            let line = json_line(
                "backend",
                &Event {
                    index: Some(2),
                    digest: "sha256:ab".into(),
                    kind,
                },
            );
            serde_json::from_str::<serde_json::Value>(&line).unwrap()
        };
        let state = VertexState::Error {
            error: "exit code: 1".into(),
        };
        let duration = Duration::from_millis(1234);
        let v = json(EventKind::Vertex {
            name: "[2/3] RUN false".into(),
            state,
            duration,
        });
        let want = serde_json::json!({
            "service": "backend", "type": "vertex", "index": 2, "digest": "sha256:ab",
            "name": "[2/3] RUN false", "state": "error", "error": "exit code: 1", "duration_ms": 1234,
        });
        assert_eq!(v, want);
        let duration = Duration::ZERO;
        let v = json(EventKind::Vertex {
            name: "x".into(),
            state: VertexState::Running,
            duration,
        });
        assert_eq!(v["state"], "started");
        let v = json(EventKind::Log {
            stream: 2,
            elapsed: duration,
            line: "hi \"there\"".into(),
        });
        assert_eq!(
            (&v["type"], &v["line"], &v["stream"]),
            (&"log".into(), &"hi \"there\"".into(), &2.into())
        );
    }

    #[test]
    fn service_progress_can_move_into_a_task_and_quiet_renders_nothing() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<ServiceProgress>();
        let progress = Progress::new(ProgressMode::Plain, Printer::new(Verbosity::Quiet));
        let mut svc = progress.service("backend");
        svc.update(&vertexes(vec![vertex("a", "A", Some(0), Some(10))]));
        assert_eq!(svc.state().counts(), (1, 1));
        svc.finish(&Ok(()));
    }
}
