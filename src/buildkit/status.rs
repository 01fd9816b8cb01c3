//! BuildKit's `Status` stream in our own types, so the rest of the code never sees generated messages.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::proto::moby::buildkit::v1 as pb;

/// One `StatusResponse`.
#[derive(Debug, Clone, Default)]
pub struct StatusUpdate {
    /// Vertexes that changed (the whole record each time).
    pub vertexes: Vec<Vertex>,
    /// Sub-progress items.
    pub statuses: Vec<VertexStatus>,
    /// Output chunks.
    pub logs: Vec<VertexLog>,
    /// Warnings (repeated across split messages).
    pub warnings: Vec<VertexWarning>,
}

/// A build step.
#[derive(Debug, Clone, Default)]
pub struct Vertex {
    /// Vertex ID.
    pub digest: String,
    /// Display name.
    pub name: String,
    /// Came from the cache.
    pub cached: bool,
    /// When it started.
    pub started: Option<SystemTime>,
    /// When it completed.
    pub completed: Option<SystemTime>,
    /// Error, if it failed.
    pub error: Option<String>,
    /// (id, name) of the row this vertex is shown in.
    pub progress_group: Option<(String, String)>,
}

/// Progress of an item inside a vertex.
#[derive(Debug, Clone, Default)]
pub struct VertexStatus {
    /// Item ID, unique within the vertex.
    pub id: String,
    /// Owning vertex.
    pub vertex: String,
    /// Display name.
    pub name: String,
    /// Progress counter (bytes, usually).
    pub current: i64,
    /// Total, 0 when unknown.
    pub total: i64,
    /// Time of this update.
    pub timestamp: Option<SystemTime>,
    /// Start.
    pub started: Option<SystemTime>,
    /// Completion.
    pub completed: Option<SystemTime>,
}

/// A chunk of a step's output (not line aligned).
#[derive(Debug, Clone, Default)]
pub struct VertexLog {
    /// Owning vertex.
    pub vertex: String,
    /// When.
    pub timestamp: Option<SystemTime>,
    /// 1 stdout, 2 stderr.
    pub stream: i64,
    /// Raw bytes.
    pub data: Vec<u8>,
}

/// A warning about a step.
#[derive(Debug, Clone, Default)]
pub struct VertexWarning {
    /// Owning vertex.
    pub vertex: String,
    /// Level.
    pub level: i64,
    /// One-line message.
    pub short: Vec<u8>,
    /// Details.
    pub detail: Vec<Vec<u8>>,
    /// Documentation link.
    pub url: String,
}

fn time(ts: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    let ts = ts?;
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

impl From<pb::StatusResponse> for StatusUpdate {
    fn from(r: pb::StatusResponse) -> StatusUpdate {
        StatusUpdate {
            vertexes: r
                .vertexes
                .into_iter()
                .map(|v| Vertex {
                    digest: v.digest,
                    name: v.name,
                    cached: v.cached,
                    started: time(v.started),
                    completed: time(v.completed),
                    error: (!v.error.is_empty()).then_some(v.error),
                    progress_group: v.progress_group.map(|g| (g.id, g.name)),
                })
                .collect(),
            statuses: r
                .statuses
                .into_iter()
                .map(|s| VertexStatus {
                    id: s.id,
                    vertex: s.vertex,
                    name: s.name,
                    current: s.current,
                    total: s.total,
                    timestamp: time(s.timestamp),
                    started: time(s.started),
                    completed: time(s.completed),
                })
                .collect(),
            logs: r
                .logs
                .into_iter()
                .map(|l| VertexLog {
                    vertex: l.vertex,
                    timestamp: time(l.timestamp),
                    stream: l.stream,
                    data: l.msg,
                })
                .collect(),
            warnings: r
                .warnings
                .into_iter()
                .map(|w| VertexWarning {
                    vertex: w.vertex,
                    level: w.level,
                    short: w.short,
                    detail: w.detail,
                    url: w.url,
                })
                .collect(),
        }
    }
}
