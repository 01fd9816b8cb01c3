//! An OCI image layout served to the daemon through the session: containerd's content store `Info` and `Read`
//! (protocol doc §9.4), so that a named context `oci-layout://STORE@sha256:...` reads an image that was never
//! pushed (a dependency built with `--no-push`). The daemon names the layout by the first
//! `buildkit-attachable-store-id` header (`oci:STORE`), asks `Info` for a blob, then reads it in chunks.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::proto::containerd::services::content::v1 as pb;

const STORE_ID: &str = "buildkit-attachable-store-id";
/// Largest data message sent.
const CHUNK: u64 = 1 << 20;

/// The layouts of a session, by store ID (`oci:STORE`).
#[derive(Debug, Clone, Default)]
pub(crate) struct ContentService {
    pub(crate) stores: Arc<HashMap<String, PathBuf>>,
}

impl ContentService {
    /// The blob file for `digest` in the layout the request names.
    fn blob<T>(&self, req: &Request<T>, digest: &str) -> Result<PathBuf, Status> {
        let store = req
            .metadata()
            .get(STORE_ID)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::invalid_argument(format!("{STORE_ID} is missing")))?;
        let layout = self
            .stores
            .get(store)
            .ok_or_else(|| Status::not_found(format!("no content store {store}")))?;
        let (alg, hex) = digest
            .split_once(':')
            .filter(|(a, h)| {
                *a == "sha256" && h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .ok_or_else(|| Status::invalid_argument(format!("not a sha256 digest: {digest}")))?;
        let path = layout.join("blobs").join(alg).join(hex);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Status::not_found(format!("{digest} not found")))
        }
    }
}

#[tonic::async_trait]
impl pb::content_server::Content for ContentService {
    async fn info(
        &self,
        req: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let digest = req.get_ref().digest.clone();
        let path = self.blob(&req, &digest)?;
        let size = std::fs::metadata(&path)
            .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?
            .len();
        Ok(Response::new(pb::InfoResponse {
            info: Some(pb::Info {
                digest,
                size: i64::try_from(size).unwrap_or(i64::MAX),
                ..pb::Info::default()
            }),
        }))
    }

    type ReadStream = ReceiverStream<Result<pb::ReadContentResponse, Status>>;

    /// Sends exactly `min(size, blob size - offset)` bytes from `offset` (`size` 0: to the end), in chunks.
    async fn read(
        &self,
        req: Request<pb::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let r = req.get_ref().clone();
        let path = self.blob(&req, &r.digest)?;
        let mut file = std::fs::File::open(&path)
            .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?
            .len();
        let offset = u64::try_from(r.offset)
            .ok()
            .filter(|o| *o <= len)
            .ok_or_else(|| Status::out_of_range(format!("offset {} of {len} bytes", r.offset)))?;
        let want = match u64::try_from(r.size).unwrap_or(0) {
            0 => len - offset,
            n => n.min(len - offset),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let send = |m: Result<pb::ReadContentResponse, Status>| tx.blocking_send(m).is_ok();
            if let Err(e) = file.seek(SeekFrom::Start(offset)) {
                send(Err(Status::internal(e.to_string())));
                return;
            }
            let mut at = offset;
            while at < offset + want {
                let n = CHUNK.min(offset + want - at) as usize;
                let mut buf = vec![0u8; n];
                if let Err(e) = file.read_exact(&mut buf) {
                    send(Err(Status::internal(e.to_string())));
                    return;
                }
                let msg = pb::ReadContentResponse {
                    offset: i64::try_from(at).unwrap_or(i64::MAX),
                    data: buf,
                };
                if !send(Ok(msg)) {
                    return;
                }
                at += n as u64;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Unpacks an OCI layout tarball (what BuildKit's `oci` exporter sends) into `dir`: only `oci-layout`, `index.json`
/// and `blobs/sha256/<hex>` files, each blob checked against its name. Returns the digest of the one manifest (or
/// index) that `index.json` lists.
pub(crate) fn unpack_layout(
    tarball: &std::path::Path,
    dir: &std::path::Path,
) -> std::io::Result<String> {
    use sha2::Digest as _;
    use std::io::{Error, ErrorKind, Read as _};
    let bad = |m: String| Error::new(ErrorKind::InvalidData, m);
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    let mut archive = tar::Archive::new(std::fs::File::open(tarball)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let path = path.trim_start_matches("./").to_owned();
        let (target, expect) = match path.as_str() {
            "oci-layout" | "index.json" => (dir.join(&path), None),
            p => match p.strip_prefix("blobs/sha256/") {
                Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    (dir.join(p), Some(hex.to_ascii_lowercase()))
                }
                _ => return Err(bad(format!("unexpected file {p} in the OCI layout"))),
            },
        };
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        if let Some(hex) = expect
            && hex::encode(sha2::Sha256::digest(&bytes)) != hex
        {
            return Err(bad(format!("blob {path} does not match its digest")));
        }
        std::fs::write(target, bytes)?;
    }
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)
        .map_err(|e| bad(format!("index.json: {e}")))?;
    match index["manifests"].as_array().map(Vec::as_slice) {
        Some([one]) => one["digest"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad("index.json: a manifest without a digest".to_owned())),
        _ => Err(bad("index.json does not list exactly one image".to_owned())),
    }
}
