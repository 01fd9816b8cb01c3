//! A BuildKit client: connect, solve a Dockerfile build with a session, follow its status, and the daemon's
//! info, disk usage and prune. No public function takes or returns a generated type.

pub mod conn;
pub(crate) mod details;
pub(crate) mod dockerfile;
pub mod status;

use std::collections::{BTreeMap, HashMap};

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::Channel;

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

/// One cache record.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UsageRecord {
    /// Record ID.
    pub id: String,
    /// Bytes.
    pub size: i64,
    /// In use by a running build.
    pub in_use: bool,
    /// Shared with other records.
    pub shared: bool,
    /// Kind of record.
    pub record_type: String,
    /// Description.
    pub description: String,
}

impl From<pb::UsageRecord> for UsageRecord {
    fn from(r: pb::UsageRecord) -> UsageRecord {
        UsageRecord {
            id: r.id,
            size: r.size,
            in_use: r.in_use,
            shared: r.shared,
            record_type: r.record_type,
            description: r.description,
        }
    }
}

/// Prune options.
#[derive(Debug, Clone, Default)]
pub struct PruneSpec {
    /// Remove everything, not only unused internal records.
    pub all: bool,
    /// Keep this many bytes.
    pub keep_bytes: i64,
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
        let workers = c
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
            .collect();
        Ok(DaemonInfo { version, workers })
    }

    /// Cache records.
    pub async fn disk_usage(&self) -> Result<Vec<UsageRecord>, RpcError> {
        let r = self
            .control
            .clone()
            .disk_usage(pb::DiskUsageRequest::default())
            .await
            .map_err(|s| RpcError::from_status("DiskUsage", s))?;
        Ok(r.into_inner()
            .record
            .into_iter()
            .map(UsageRecord::from)
            .collect())
    }

    /// Prunes the build cache; returns what was removed.
    pub async fn prune(&self, spec: &PruneSpec) -> Result<Vec<UsageRecord>, RpcError> {
        let req = pb::PruneRequest {
            all: spec.all,
            reserved_space: spec.keep_bytes,
            ..Default::default()
        };
        let mut stream = self
            .control
            .clone()
            .prune(req)
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
