//! A BuildKit client: connect, solve a Dockerfile build with a session, follow its status, and the daemon's
//! info, disk usage and prune. No public function takes or returns a generated type.

pub mod conn;
pub(crate) mod details;
pub(crate) mod dockerfile;
pub mod fleet;
pub mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::Channel;
#[cfg(test)]
use tonic::transport::Endpoint;

use crate::proto::moby::buildkit::v1 as pb;
use crate::proto::moby::buildkit::v1::control_client::ControlClient;
pub use conn::{Addr, ConnectError, TlsOptions};
pub use details::SourceLocation;
pub use status::StatusUpdate;

use crate::session::{Session, SessionError, stream::Pipe};

const MAX_MESSAGE: usize = 16 << 20;

/// A failed RPC, with the daemon's message.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The call failed.
    #[error("{call} failed: {message}")]
    Status {
        /// Which call.
        call: &'static str,
        /// The daemon's error message.
        message: String,
        /// gRPC code.
        code: tonic::Code,
        /// Where in the Dockerfile the failure is, when BuildKit said.
        location: Option<SourceLocation>,
    },
}

impl RpcError {
    fn from_status(call: &'static str, s: tonic::Status) -> RpcError {
        RpcError::Status {
            call,
            message: conn::status_message(&s),
            code: s.code(),
            location: details::source_location(s.details()),
        }
    }

    /// Where in the Dockerfile the failure is, when BuildKit said.
    pub fn location(&self) -> Option<&SourceLocation> {
        let RpcError::Status { location, .. } = self;
        location.as_ref()
    }

    /// Whether the call failed because the connection to the daemon failed (the daemon stopped, restarted or was
    /// never reached), rather than because of what was asked.
    pub fn is_transport(&self) -> bool {
        let RpcError::Status { code, message, .. } = self;
        match code {
            tonic::Code::Unavailable => true,
            tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled => [
                "transport error",
                "connection",
                "broken pipe",
                "h2 protocol error",
                "stream closed",
            ]
            .iter()
            .any(|m| message.to_ascii_lowercase().contains(m)),
            _ => false,
        }
    }
}

impl crate::error::Classify for RpcError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Failure
    }
}

/// A cache import or export entry (`type=registry,ref=...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// Cache backend type.
    pub kind: String,
    /// Its attributes.
    pub attrs: BTreeMap<String, String>,
}

/// An output of a solve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterSpec {
    /// Exporter type (`image`).
    pub kind: String,
    /// Its attributes.
    pub attrs: BTreeMap<String, String>,
}

/// One frontend solve.
#[derive(Debug, Clone, Default)]
pub struct SolveSpec {
    /// Build reference (also used to follow its status).
    pub reference: String,
    /// Frontend (`dockerfile.v0`).
    pub frontend: String,
    /// Frontend attributes.
    pub frontend_attrs: BTreeMap<String, String>,
    /// Outputs.
    pub exporters: Vec<ExporterSpec>,
    /// Cache exports.
    pub cache_exports: Vec<CacheEntry>,
    /// Cache imports.
    pub cache_imports: Vec<CacheEntry>,
    /// Entitlements (`network.host`).
    pub entitlements: Vec<String>,
}

/// What a successful solve returned.
#[derive(Debug, Clone, Default)]
pub struct SolveOutcome {
    /// The exporters' response (`containerimage.digest`, ...).
    pub exporter_response: HashMap<String, String>,
}

impl SolveOutcome {
    /// The pushed image's manifest digest.
    pub fn image_digest(&self) -> Option<&str> {
        self.exporter_response
            .get("containerimage.digest")
            .map(String::as_str)
    }
}

/// Daemon facts for `buildopt doctor`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DaemonInfo {
    /// BuildKit version, when the daemon reports it (v0.11+).
    pub version: Option<String>,
    /// Workers.
    pub workers: Vec<WorkerInfo>,
}

/// One worker.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerInfo {
    /// Worker ID.
    pub id: String,
    /// `os/arch[/variant]` it can build.
    pub platforms: Vec<String>,
    /// Worker labels.
    pub labels: BTreeMap<String, String>,
}

/// BuildKit's record type for its own bookkeeping (`client.UsageRecordTypeInternal`); kept by prune unless `all`.
const RECORD_TYPE_INTERNAL: &str = "internal";
/// BuildKit's record type for frontend images (`client.UsageRecordTypeFrontend`); kept by prune unless `all`.
const RECORD_TYPE_FRONTEND: &str = "frontend";
/// What BuildKit calls a record without a type (`client.UsageRecordTypeRegular`).
const RECORD_TYPE_REGULAR: &str = "regular";

/// One cache record.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UsageRecord {
    /// Record ID.
    pub id: String,
    /// Bytes.
    pub size: i64,
    /// In use by a running build, or the parent of a record that is.
    pub in_use: bool,
    /// Shared with something outside BuildKit's cache (an image in the daemon's image store).
    pub shared: bool,
    /// Still being written to.
    pub mutable: bool,
    /// Kind of record (`regular`, `source.local`, `exec.cachemount`, `internal`, ...).
    pub record_type: String,
    /// Description.
    pub description: String,
    /// When it was created, if known.
    pub created_at: Option<SystemTime>,
    /// When a build last used it; None when none has since it was created.
    pub last_used_at: Option<SystemTime>,
    /// How many times builds used it.
    pub usage_count: i64,
    /// The records it builds on; each stays until every record on top of it is gone.
    pub parents: Vec<String>,
}

/// A protobuf timestamp, or None for an absent one and for Go's zero time (year 1), which means "never".
fn system_time(ts: Option<prost_types::Timestamp>) -> Option<SystemTime> {
    SystemTime::try_from(ts?).ok().filter(|t| *t > UNIX_EPOCH)
}

impl From<pb::UsageRecord> for UsageRecord {
    fn from(r: pb::UsageRecord) -> UsageRecord {
        // Daemons before v0.10 name their one parent in the deprecated field only.
        let parents = if !r.parents.is_empty() {
            r.parents
        } else if !r.parent.is_empty() {
            vec![r.parent]
        } else {
            Vec::new()
        };
        UsageRecord {
            id: r.id,
            size: r.size,
            in_use: r.in_use,
            shared: r.shared,
            mutable: r.mutable,
            record_type: if r.record_type.is_empty() {
                RECORD_TYPE_REGULAR.to_owned()
            } else {
                r.record_type
            },
            description: r.description,
            created_at: system_time(r.created_at),
            last_used_at: system_time(r.last_used_at),
            usage_count: r.usage_count,
            parents,
        }
    }
}

/// What to prune, in BuildKit's own terms: a record goes only when it passes every criterion. The default removes
/// every unused record that is not internal, frontend or shared, as `buildctl prune` does.
#[derive(Debug, Clone, Default)]
pub struct PruneSpec {
    /// Also remove internal and frontend records and records shared with images (default: false).
    pub all: bool,
    /// Keep records a build used more recently than this (default: zero, nothing is kept for its age).
    pub keep_duration: Duration,
    /// Keep this many bytes of cache, removing the least recently and least often used records first (default: 0, no
    /// budget).
    pub keep_bytes: i64,
    /// containerd-style filters (`type==source.local`), matched as DiskUsage matches them; a record must match one of
    /// them (default: none, every record matches).
    pub filters: Vec<String>,
}

impl PruneSpec {
    /// The Prune request, with `filter` for the filters (see [`Client::prune`]).
    fn request(&self, filter: Vec<String>) -> pb::PruneRequest {
        pb::PruneRequest {
            filter,
            all: self.all,
            keep_duration: i64::try_from(self.keep_duration.as_nanos()).unwrap_or(i64::MAX),
            // Field 4 is `keepBytes` up to v0.16. From v0.17 on, the budget is max(maxUsedSpace, reservedSpace) and some
            // versions ignore reservedSpace alone, so the same budget goes in both.
            reserved_space: self.keep_bytes,
            max_used_space: self.keep_bytes,
            min_free_space: 0,
        }
    }

    /// What a prune with this spec would remove from `records`, a complete (unfiltered) disk usage listing, with
    /// `matching` the IDs that the disk usage of [`PruneSpec::filters`] lists (None without filters).
    ///
    /// BuildKit has no dry run, so this replays its cache manager's prune loop (`cache/manager.go`: `prune`,
    /// `sortDeleteRecords`) on the listing: only records no build uses and no remaining record builds on; with a
    /// budget, while the unshared total is at least `keep_bytes`, one record at a time in least-recently and
    /// least-often used order; without one, everything eligible, pass after pass, as records on top go. A build
    /// running meanwhile can change the answer.
    pub fn simulate(
        &self,
        records: &[UsageRecord],
        matching: Option<&HashSet<String>>,
        now: SystemTime,
    ) -> Vec<UsageRecord> {
        let index: HashMap<&str, usize> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.as_str(), i))
            .collect();
        let parents_of = |i: usize| {
            records[i]
                .parents
                .iter()
                .filter_map(|p| index.get(p.as_str()).copied())
                .collect::<Vec<_>>()
        };
        // A record holds a reference on each parent until it is removed itself.
        let mut holders = vec![0usize; records.len()];
        for i in 0..records.len() {
            for p in parents_of(i) {
                holders[p] += 1;
            }
        }
        let cutoff = now.checked_sub(self.keep_duration);
        let eligible = |r: &UsageRecord| {
            let kept_type = r.record_type == RECORD_TYPE_INTERNAL
                || r.record_type == RECORD_TYPE_FRONTEND
                || r.shared;
            let recent = !self.keep_duration.is_zero()
                && r.last_used_at.zip(cutoff).is_some_and(|(t, c)| t > c);
            !r.in_use
                && (self.all || !kept_type)
                && !recent
                && matching.is_none_or(|m| m.contains(&r.id))
        };
        let budget = self.keep_bytes != 0;
        let mut total: i64 = if budget {
            records.iter().filter(|r| !r.shared).map(|r| r.size).sum()
        } else {
            0
        };
        let mut removed = vec![false; records.len()];
        let mut out = Vec::new();
        loop {
            if budget && total < self.keep_bytes {
                break;
            }
            let mut candidates: Vec<usize> = (0..records.len())
                .filter(|&i| !removed[i] && holders[i] == 0 && eligible(&records[i]))
                .collect();
            if candidates.is_empty() {
                break;
            }
            if budget {
                gc_order(&mut candidates, records);
                candidates.truncate(1);
            }
            for i in candidates {
                removed[i] = true;
                total -= records[i].size;
                for p in parents_of(i) {
                    holders[p] -= 1;
                }
                out.push(records[i].clone());
            }
        }
        out
    }
}

/// Sorts `candidates` (indexes into `records`) as BuildKit's `sortDeleteRecords` does: by the sum of each record's
/// rank in last use (never used first) and in use count, each scaled to 0..=1.
fn gc_order(candidates: &mut [usize], records: &[UsageRecord]) {
    let mut last_used_rank = HashMap::new();
    candidates.sort_by_key(|&i| records[i].last_used_at);
    let (mut max_last_used, mut latest) = (0usize, None);
    for &i in candidates.iter() {
        if let Some(t) = records[i].last_used_at
            && latest.is_none_or(|l| t > l)
        {
            latest = Some(t);
            max_last_used += 1;
        }
        last_used_rank.insert(i, max_last_used);
    }
    let mut count_rank = HashMap::new();
    candidates.sort_by_key(|&i| records[i].usage_count);
    let (mut max_count, mut count) = (0usize, 0i64);
    for &i in candidates.iter() {
        if records[i].usage_count != count {
            count = records[i].usage_count;
            max_count += 1;
        }
        count_rank.insert(i, max_count);
    }
    let scaled = |rank: usize, max: usize| {
        if max == 0 {
            0.0
        } else {
            rank as f64 / max as f64
        }
    };
    let score =
        |i: &usize| scaled(last_used_rank[i], max_last_used) + scaled(count_rank[i], max_count);
    candidates.sort_by(|a, b| score(a).total_cmp(&score(b)));
}

/// A connected client.
#[derive(Debug, Clone)]
pub struct Client {
    control: ControlClient<Channel>,
    addr: Addr,
    session_over_control: bool,
}

impl Client {
    /// Connects to `addr`.
    pub async fn connect(addr: &Addr, tls: &TlsOptions) -> Result<Client, ConnectError> {
        let channel = conn::connect(addr, tls).await?;
        Ok(Client {
            control: ControlClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            addr: addr.clone(),
            session_over_control: false,
        })
    }

    /// On dockerd, carry sessions over `Control.Session` too instead of `POST /session` (both reach the same session
    /// manager; standalone buildkitd always uses `Control.Session`).
    pub fn session_over_control(mut self, yes: bool) -> Client {
        self.session_over_control = yes;
        self
    }

    /// The address this client is connected to.
    pub fn addr(&self) -> &Addr {
        &self.addr
    }

    /// Version and workers.
    pub async fn info(&self) -> Result<DaemonInfo, RpcError> {
        let mut c = self.control.clone();
        let version = match c.info(pb::InfoRequest {}).await {
            Ok(r) => r
                .into_inner()
                .buildkit_version
                .map(|v| v.version)
                .filter(|v| !v.is_empty()),
            Err(s) if s.code() == tonic::Code::Unimplemented => None,
            Err(s) => return Err(RpcError::from_status("Info", s)),
        };
        let workers = self.workers().await?;
        Ok(DaemonInfo { version, workers })
    }

    /// The daemon's workers (also the cheapest call that proves a daemon answers as BuildKit).
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, RpcError> {
        Ok(self
            .control
            .clone()
            .list_workers(pb::ListWorkersRequest::default())
            .await
            .map_err(|s| RpcError::from_status("ListWorkers", s))?
            .into_inner()
            .record
            .into_iter()
            .map(|w| WorkerInfo {
                id: w.id,
                platforms: w
                    .platforms
                    .into_iter()
                    .map(|p| {
                        let mut s = format!("{}/{}", p.os, p.architecture);
                        if !p.variant.is_empty() {
                            s.push('/');
                            s.push_str(&p.variant);
                        }
                        s
                    })
                    .collect(),
                labels: w.labels.into_iter().collect(),
            })
            .collect())
    }

    /// A client whose channel connects on first use (unit tests of placement, which never call it).
    #[cfg(test)]
    pub(crate) fn lazy(addr: &Addr) -> Client {
        let channel = Endpoint::from_static("http://localhost").connect_lazy();
        Client {
            control: ControlClient::new(channel),
            addr: addr.clone(),
            session_over_control: false,
        }
    }

    /// Cache records; with `filters` (containerd-style), only those matching one of them.
    pub async fn disk_usage(&self, filters: &[String]) -> Result<Vec<UsageRecord>, RpcError> {
        let r = self
            .control
            .clone()
            .disk_usage(pb::DiskUsageRequest {
                filter: filters.to_vec(),
                ..Default::default()
            })
            .await
            .map_err(|s| RpcError::from_status("DiskUsage", s))?;
        Ok(r.into_inner()
            .record
            .into_iter()
            .map(UsageRecord::from)
            .collect())
    }

    /// The IDs of the records `filters` match, as DiskUsage matches them; None without filters.
    async fn matching(&self, filters: &[String]) -> Result<Option<HashSet<String>>, RpcError> {
        if filters.is_empty() {
            return Ok(None);
        }
        let listed = self.disk_usage(filters).await?;
        Ok(Some(listed.into_iter().map(|r| r.id).collect()))
    }

    /// What [`Client::prune`] with `spec` would remove now, computed from the disk usage (see
    /// [`PruneSpec::simulate`]); removes nothing.
    pub async fn prune_preview(&self, spec: &PruneSpec) -> Result<Vec<UsageRecord>, RpcError> {
        let records = self.disk_usage(&[]).await?;
        let matching = self.matching(&spec.filters).await?;
        Ok(spec.simulate(&records, matching.as_ref(), SystemTime::now()))
    }

    /// Prunes the build cache; returns what was removed.
    ///
    /// Filters are matched by DiskUsage and the matching records pruned by ID: before v0.14 (moby/buildkit#4877)
    /// Prune matched filters against records without their description, so `description~=...` removed nothing
    /// there while `du` listed records for it. A filter that matches nothing removes nothing.
    pub async fn prune(&self, spec: &PruneSpec) -> Result<Vec<UsageRecord>, RpcError> {
        let filter = match self.matching(&spec.filters).await? {
            // Without any filter, Prune would consider every record.
            Some(ids) if ids.is_empty() => return Ok(Vec::new()),
            Some(ids) => ids.into_iter().map(|id| format!("id=={id}")).collect(),
            None => Vec::new(),
        };
        let mut stream = self
            .control
            .clone()
            .prune(spec.request(filter))
            .await
            .map_err(|s| RpcError::from_status("Prune", s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = stream
            .message()
            .await
            .map_err(|s| RpcError::from_status("Prune", s))?
        {
            out.push(r.into());
        }
        Ok(out)
    }

    /// Runs `session` until the daemon or we close it; drop the future to close it. On dockerd this is `POST
    /// /session` (what buildx uses: one HTTP/2 connection on the socket); on buildkitd the `Control.Session` byte pipe.
    pub async fn run_session(&self, session: Session) -> Result<(), SessionError> {
        if let (Addr::Docker(sock), false) = (&self.addr, self.session_over_control) {
            let io = conn::docker_session_upgrade(sock, &session.metadata())
                .await
                .map_err(|e| SessionError::Connection(Box::new(e)))?;
            return session.serve(io).await;
        }
        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(64);
        let outbound = ReceiverStream::new(out_rx).map(|data| pb::BytesMessage { data });
        let mut req = tonic::Request::new(outbound);
        for (k, v) in session.metadata() {
            let value = AsciiMetadataValue::try_from(v.as_str())
                .map_err(|e| SessionError::Connection(Box::new(e)))?;
            req.metadata_mut()
                .append(AsciiMetadataKey::from_static(k), value);
        }
        let inbound = self
            .control
            .clone()
            .session(req)
            .await
            .map_err(|s| SessionError::Connection(conn::status_error(s)))?
            .into_inner()
            .map(|m| m.map(|m| m.data));
        session.serve(Pipe::new(inbound, out_tx)).await
    }

    /// Follows the status of build `reference` until it ends.
    pub async fn status(
        &self,
        reference: &str,
    ) -> Result<impl Stream<Item = Result<StatusUpdate, RpcError>> + use<>, RpcError> {
        let stream = self
            .control
            .clone()
            .status(pb::StatusRequest {
                r#ref: reference.to_owned(),
            })
            .await
            .map_err(|s| RpcError::from_status("Status", s))?
            .into_inner();
        Ok(stream.map(|r| {
            r.map(StatusUpdate::from)
                .map_err(|s| RpcError::from_status("Status", s))
        }))
    }

    /// Solves `spec` in session `session_id`; returns when the build (and its push) finished.
    pub async fn solve(
        &self,
        spec: &SolveSpec,
        session_id: &str,
    ) -> Result<SolveOutcome, RpcError> {
        let req = solve_request(spec, session_id);
        let r = self
            .control
            .clone()
            .solve(req)
            .await
            .map_err(|s| RpcError::from_status("Solve", s))?;
        Ok(SolveOutcome {
            exporter_response: r.into_inner().exporter_response,
        })
    }
}

fn cache_json(entries: &[CacheEntry]) -> String {
    serde_json::to_string(
        &entries
            .iter()
            .map(|e| serde_json::json!({ "Type": e.kind, "Attrs": e.attrs }))
            .collect::<Vec<_>>(),
    )
    .expect("cache entries serialize")
}

fn solve_request(spec: &SolveSpec, session_id: &str) -> pb::SolveRequest {
    let mut frontend_attrs: HashMap<String, String> =
        spec.frontend_attrs.clone().into_iter().collect();
    // Frontend builds read cache imports from this attribute, not from Cache.Imports.
    if !spec.cache_imports.is_empty() {
        frontend_attrs.insert("cache-imports".to_owned(), cache_json(&spec.cache_imports));
    }
    let to_pb = |e: &CacheEntry| pb::CacheOptionsEntry {
        r#type: e.kind.clone(),
        attrs: e.attrs.clone().into_iter().collect(),
    };
    let exporters: Vec<pb::Exporter> = spec
        .exporters
        .iter()
        .map(|e| pb::Exporter {
            r#type: e.kind.clone(),
            attrs: e.attrs.clone().into_iter().collect(),
        })
        .collect();
    // Daemons before v0.13 read only the single legacy exporter fields.
    let (legacy_type, legacy_attrs) = exporters
        .first()
        .map(|e| (e.r#type.clone(), e.attrs.clone()))
        .unwrap_or_default();
    pb::SolveRequest {
        r#ref: spec.reference.clone(),
        exporter_deprecated: legacy_type,
        exporter_attrs_deprecated: legacy_attrs,
        session: session_id.to_owned(),
        frontend: spec.frontend.clone(),
        frontend_attrs,
        cache: Some(pb::CacheOptions {
            exports: spec.cache_exports.iter().map(to_pb).collect(),
            imports: spec.cache_imports.iter().map(to_pb).collect(),
            ..Default::default()
        }),
        entitlements: spec.entitlements.clone(),
        exporters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A record `id` of `size` bytes on `parents`, last used `hours_ago` (None: never) and `uses` times.
    fn record(
        id: &str,
        size: i64,
        parents: &[&str],
        hours_ago: Option<u64>,
        uses: i64,
    ) -> UsageRecord {
        UsageRecord {
            id: id.to_owned(),
            size,
            record_type: RECORD_TYPE_REGULAR.to_owned(),
            last_used_at: hours_ago.map(|h| now() - HOUR * h as u32),
            usage_count: uses,
            parents: parents.iter().map(|p| (*p).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn ids(records: &[UsageRecord]) -> Vec<&str> {
        records.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn prune_request_sends_the_budget_as_keep_bytes_and_as_max_used_space() {
        let spec = PruneSpec {
            all: true,
            keep_duration: 48 * HOUR,
            keep_bytes: 2_000_000_000,
            filters: vec!["type==regular".into()],
        };
        let r = spec.request(vec!["id==a".into()]);
        assert!(r.all);
        assert_eq!(r.keep_duration, 48 * 3600 * 1_000_000_000);
        assert_eq!(
            (r.reserved_space, r.max_used_space, r.min_free_space),
            (2_000_000_000, 2_000_000_000, 0)
        );
        assert_eq!(r.filter, ["id==a"]);
    }

    #[test]
    fn usage_record_takes_the_deprecated_parent_and_names_the_untyped_regular() {
        let r = UsageRecord::from(pb::UsageRecord {
            id: "b".into(),
            parent: "a".into(),
            last_used_at: Some(prost_types::Timestamp {
                seconds: -62_135_596_800,
                nanos: 0,
            }),
            ..Default::default()
        });
        assert_eq!(r.parents, ["a"]);
        assert_eq!(r.record_type, "regular");
        assert_eq!(r.last_used_at, None, "Go's zero time means never");
    }

    #[test]
    fn simulated_prune_keeps_recent_in_use_internal_and_shared_records() {
        let mut records = vec![
            record("old", 10, &[], Some(100), 1),
            record("fresh", 10, &[], Some(1), 1),
            record("never", 10, &[], None, 0),
            record("busy", 10, &[], Some(100), 1),
            record("internal", 10, &[], Some(100), 1),
            record("frontend", 10, &[], Some(100), 1),
            record("shared", 10, &[], Some(100), 1),
        ];
        records[3].in_use = true;
        records[4].record_type = RECORD_TYPE_INTERNAL.into();
        records[5].record_type = RECORD_TYPE_FRONTEND.into();
        records[6].shared = true;
        let spec = PruneSpec {
            keep_duration: 48 * HOUR,
            ..Default::default()
        };
        // BuildKit keeps a record for its age only when it has a last use.
        assert_eq!(ids(&spec.simulate(&records, None, now())), ["old", "never"]);
        let all = PruneSpec {
            all: true,
            ..spec.clone()
        };
        assert_eq!(
            ids(&all.simulate(&records, None, now())),
            ["old", "never", "internal", "frontend", "shared"]
        );
        let everything = PruneSpec {
            all: true,
            ..Default::default()
        };
        assert_eq!(
            everything.simulate(&records, None, now()).len(),
            6,
            "all but the busy one"
        );
        let matching = HashSet::from(["old".to_owned(), "fresh".to_owned()]);
        assert_eq!(
            ids(&spec.simulate(&records, Some(&matching), now())),
            ["old"]
        );
    }

    #[test]
    fn simulated_prune_removes_a_parent_only_after_every_record_on_it() {
        let records = vec![
            record("base", 10, &[], Some(100), 1),
            record("mid", 10, &["base"], Some(100), 1),
            record("top", 10, &["mid"], Some(100), 1),
            record("kept-child", 10, &["other"], Some(1), 1),
            record("other", 10, &[], Some(100), 1),
        ];
        let spec = PruneSpec {
            keep_duration: 48 * HOUR,
            ..Default::default()
        };
        assert_eq!(
            ids(&spec.simulate(&records, None, now())),
            ["top", "mid", "base"]
        );
        // A parent the filter does not match stays, and so does everything below it.
        let matching = HashSet::from(["base".to_owned(), "top".to_owned()]);
        assert_eq!(
            ids(&spec.simulate(&records, Some(&matching), now())),
            ["top"]
        );
    }

    #[test]
    fn simulated_prune_with_a_budget_goes_least_recently_and_least_often_used_first_until_under_it()
    {
        let mut records = vec![
            record("a", 100, &[], Some(10), 5),
            record("b", 100, &[], Some(30), 1),
            record("c", 100, &[], Some(20), 1),
            record("d", 100, &[], None, 0),
            record("shared", 1000, &[], Some(50), 1),
        ];
        records[4].shared = true;
        let spec = PruneSpec {
            keep_bytes: 250,
            ..Default::default()
        };
        // Unshared total 400: remove until under 250.
        assert_eq!(ids(&spec.simulate(&records, None, now())), ["d", "b"]);
        let spec = PruneSpec {
            keep_bytes: 401,
            ..Default::default()
        };
        assert!(
            spec.simulate(&records, None, now()).is_empty(),
            "already under the budget"
        );
    }

    #[test]
    fn solve_request_fills_new_and_legacy_exporters_and_cache_imports() {
        let spec = SolveSpec {
            reference: "r".into(),
            frontend: "dockerfile.v0".into(),
            exporters: vec![ExporterSpec {
                kind: "image".into(),
                attrs: [("name".to_owned(), "x:latest".to_owned())].into(),
            }],
            cache_imports: vec![CacheEntry {
                kind: "registry".into(),
                attrs: [("ref".to_owned(), "x:cache".to_owned())].into(),
            }],
            ..Default::default()
        };
        let r = solve_request(&spec, "s");
        assert_eq!(r.exporters.len(), 1);
        assert_eq!(r.exporter_deprecated, "image");
        assert_eq!(r.exporter_attrs_deprecated["name"], "x:latest");
        assert_eq!(
            r.frontend_attrs["cache-imports"],
            r#"[{"Attrs":{"ref":"x:cache"},"Type":"registry"}]"#
        );
        assert_eq!(r.cache.unwrap().imports.len(), 1);
    }
}
