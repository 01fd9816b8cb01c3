//! Receiving an exporter's output from the daemon: `/moby.filesync.v1.FileSend/DiffCopy` (protocol doc §9.3).
//!
//! The daemon calls it once per output that goes to the client, naming which output by the
//! `buildkit-attachable-exporter-id` header (its index in the solve's exporters). What the frames are depends on
//! the exporter: fsutil `Packet`s for `local` (a directory tree, with the roles of the context upload swapped:
//! the daemon sends STATs, buildopt asks for the files), `BytesMessage` chunks for `tar`, `oci` and `docker` (one
//! file). No header says which, so the method is served with a raw codec and each frame is decoded by the kind of
//! output buildopt asked for at that index.
//!
//! Files go to a temporary name beside their destination and are renamed into place once complete, so a failed
//! build never leaves half a tarball under the name a later step reads.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use prost::Message as _;
use prost::bytes::{Buf, BufMut, Bytes};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Request, Response, Status, Streaming};

use crate::proto::fsutil::types::{Packet, packet::PacketType};
use crate::proto::moby::filesync::v1::BytesMessage;

/// The gRPC path the daemon calls.
pub(crate) const DIFF_COPY: &str = "/moby.filesync.v1.FileSend/DiffCopy";
/// The header naming the output (its index in the exporters of the solve).
const EXPORTER_ID: &str = "buildkit-attachable-exporter-id";
const MAX_MESSAGE: usize = 16 << 20;

/// Where one output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// One file (`tar`, `oci`, `docker` exporters).
    File(PathBuf),
    /// A directory tree, merged into what is there (`local` exporter).
    Directory(PathBuf),
}

/// What arrived for one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The exporter index.
    pub id: String,
    /// Where it went.
    pub sink: Sink,
    /// Bytes written.
    pub bytes: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The outputs of a session, by exporter index, and what arrived for each.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outputs {
    sinks: Arc<HashMap<String, Sink>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Outputs {
    pub(crate) fn new(sinks: HashMap<String, Sink>) -> Outputs {
        Outputs {
            sinks: Arc::new(sinks),
            received: Arc::default(),
        }
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self, r: Received) {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(r);
    }

    /// The sink for a call: the one its header names, or the only one when the header is missing.
    fn sink_for(&self, md: &tonic::metadata::MetadataMap) -> Result<(String, Sink), Status> {
        let id = md.get(EXPORTER_ID).and_then(|v| v.to_str().ok());
        match id {
            Some(id) => self
                .sinks
                .get(id)
                .map(|s| (id.to_owned(), s.clone()))
                .ok_or_else(|| Status::not_found(format!("no output with exporter id {id}"))),
            None if self.sinks.len() == 1 => {
                let (id, s) = self.sinks.iter().next().expect("one sink");
                Ok((id.clone(), s.clone()))
            }
            None => Err(Status::invalid_argument(format!(
                "{EXPORTER_ID} is missing and this session has {} outputs",
                self.sinks.len()
            ))),
        }
    }
}

/// Frames as they are: the bytes of one gRPC message, undecoded.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The FileSend service for a session's outputs.
#[derive(Debug, Clone)]
pub(crate) struct FileSendServer {
    outputs: Outputs,
}

impl FileSendServer {
    pub(crate) fn new(outputs: Outputs) -> FileSendServer {
        FileSendServer { outputs }
    }
}

impl tonic::server::NamedService for FileSendServer {
    const NAME: &'static str = "moby.filesync.v1.FileSend";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type ResponseStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

impl<B> tower::Service<http::Request<B>> for FileSendServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != DIFF_COPY {
            let status = Status::unimplemented(format!("{} is not served", req.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let method = DiffCopy(self.outputs.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_max_message_size_config(Some(MAX_MESSAGE), Some(MAX_MESSAGE));
            Ok(grpc.streaming(method, req).await)
        })
    }
}

struct DiffCopy(Outputs);

impl tonic::server::StreamingService<Bytes> for DiffCopy {
    type Response = Bytes;
    type ResponseStream = ResponseStream;
    type Future = BoxFuture<Result<Response<ResponseStream>, Status>>;

    fn call(&mut self, req: Request<Streaming<Bytes>>) -> Self::Future {
        let outputs = self.0.clone();
        Box::pin(async move {
            let (id, sink) = outputs.sink_for(req.metadata())?;
            let frames = req.into_inner();
            match sink.clone() {
                Sink::File(dest) => {
                    // The daemon half-closes after the last chunk and waits for the status: receive it all first.
                    let result = receive_file(frames, &dest).await;
                    outputs.record(Received {
                        id,
                        sink,
                        bytes: *result.as_ref().unwrap_or(&0),
                        error: result.as_ref().err().map(|e| e.message().to_owned()),
                    });
                    result?;
                    let done: ResponseStream = Box::pin(futures::stream::empty());
                    Ok(Response::new(done))
                }
                Sink::Directory(dest) => {
                    let (tx, rx) = tokio::sync::mpsc::channel(64);
                    tokio::spawn(async move {
                        let result = receive_directory(frames, &dest, &tx).await;
                        outputs.record(Received {
                            id,
                            sink,
                            bytes: *result.as_ref().unwrap_or(&0),
                            error: result.as_ref().err().map(|e| e.message().to_owned()),
                        });
                        if let Err(e) = result {
                            let _ = tx.send(Err(e)).await;
                        }
                    });
                    let stream: ResponseStream = Box::pin(ReceiverStream::new(rx));
                    Ok(Response::new(stream))
                }
            }
        })
    }
}

/// `.<name>.part.<pid>` beside `dest`.
fn part_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.part.{}", std::process::id()))
}

fn io_status(what: &str, path: &Path, e: std::io::Error) -> Status {
    Status::internal(format!("{what} {}: {e}", path.display()))
}

/// Appends every `BytesMessage` chunk to a temporary file, then renames it to `dest`. Returns the size.
async fn receive_file(mut frames: Streaming<Bytes>, dest: &Path) -> Result<u64, Status> {
    let part = part_path(dest);
    let result = async {
        let mut file = std::fs::File::create(&part).map_err(|e| io_status("creating", &part, e))?;
        let mut size = 0u64;
        while let Some(frame) = frames.message().await? {
            let chunk = BytesMessage::decode(frame)
                .map_err(|e| Status::invalid_argument(format!("not a BytesMessage: {e}")))?;
            size += chunk.data.len() as u64;
            file.write_all(&chunk.data)
                .map_err(|e| io_status("writing", &part, e))?;
        }
        file.sync_all()
            .map_err(|e| io_status("writing", &part, e))?;
        std::fs::rename(&part, dest).map_err(|e| io_status("renaming into", dest, e))?;
        Ok(size)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Go `os.FileMode` type bits.
const GO_DIR: u32 = 1 << 31;
const GO_SYMLINK: u32 = 1 << 27;
const GO_TYPE: u32 =
    GO_DIR | GO_SYMLINK | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19);

/// A path of the stream, relative and clean, as a path below `dest`; None for anything else.
fn below(dest: &Path, raw: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let rel = Path::new(std::ffi::OsStr::from_bytes(raw));
    let rebuilt: PathBuf = rel.components().collect();
    let clean = !raw.is_empty()
        && rel.components().all(|c| matches!(c, Component::Normal(_)))
        && rebuilt.as_os_str().as_bytes() == raw;
    clean.then(|| dest.join(rel))
}

/// Removes what is at `path` unless it is a directory (a symlink to one counts as a link: it is removed, so nothing
/// is written through it).
fn clear(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The fsutil receive side: STATs come in, every regular file is asked for by ID, its DATA written, and once all
/// are in a FIN is sent; the daemon's FIN ends it. Entries are written into `dest` (merged with what is there);
/// every parent must have come as a directory STAT first, so nothing is written outside `dest` or through a link.
async fn receive_directory(
    mut frames: Streaming<Bytes>,
    dest: &Path,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, Status>>,
) -> Result<u64, Status> {
    use std::os::unix::fs::PermissionsExt;
    let send = |p: Packet| {
        let tx = tx.clone();
        async move {
            tx.send(Ok(Bytes::from(p.encode_to_vec())))
                .await
                .map_err(|_| Status::cancelled("the daemon went away"))
        }
    };
    let packet = |ty: PacketType, id: u32| Packet {
        r#type: ty as i32,
        id,
        ..Packet::default()
    };
    std::fs::create_dir_all(dest).map_err(|e| io_status("creating", dest, e))?;
    let mut dirs: Vec<PathBuf> = vec![dest.to_owned()];
    let mut next_id = 0u32;
    let mut pending: HashMap<u32, (PathBuf, u32, i64)> = HashMap::new();
    let mut open: HashMap<u32, std::fs::File> = HashMap::new();
    let mut stats_done = false;
    let mut fin_sent = false;
    let mut bytes = 0u64;
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    while let Some(frame) = frames.message().await? {
        let p = Packet::decode(frame)
            .map_err(|e| Status::invalid_argument(format!("not a Packet: {e}")))?;
        match PacketType::try_from(p.r#type) {
            Ok(PacketType::PacketStat) => match p.stat {
                None => stats_done = true,
                Some(stat) => {
                    let id = next_id;
                    next_id += 1;
                    let path = below(dest, &stat.path).ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "refusing path {:?}: not relative and clean",
                            String::from_utf8_lossy(&stat.path)
                        ))
                    })?;
                    let parent = path.parent().unwrap_or(dest);
                    if !dirs.iter().any(|d| d == parent) {
                        return Err(Status::invalid_argument(format!(
                            "{} came before its directory",
                            path.display()
                        )));
                    }
                    let perm = stat.mode & 0o777;
                    if stat.mode & GO_DIR != 0 {
                        clear(&path).map_err(|e| io_status("replacing", &path, e))?;
                        std::fs::create_dir_all(&path)
                            .map_err(|e| io_status("creating", &path, e))?;
                        dirs.push(path.clone());
                        dir_modes.push((path, perm));
                    } else if stat.mode & GO_SYMLINK != 0 {
                        clear(&path).map_err(|e| io_status("replacing", &path, e))?;
                        use std::os::unix::ffi::OsStrExt;
                        let target = std::ffi::OsStr::from_bytes(&stat.linkname);
                        std::os::unix::fs::symlink(target, &path)
                            .map_err(|e| io_status("creating the link", &path, e))?;
                    } else if stat.mode & GO_TYPE == 0 && !stat.linkname.is_empty() {
                        // A hard link to an earlier file of the stream.
                        let from = below(dest, &stat.linkname).ok_or_else(|| {
                            Status::invalid_argument("a hard link outside the output")
                        })?;
                        clear(&path).map_err(|e| io_status("replacing", &path, e))?;
                        std::fs::hard_link(&from, &path)
                            .map_err(|e| io_status("linking", &path, e))?;
                    } else if stat.mode & GO_TYPE == 0 {
                        clear(&path).map_err(|e| io_status("replacing", &path, e))?;
                        pending.insert(id, (path, perm, stat.mod_time));
                        send(packet(PacketType::PacketReq, id)).await?;
                    } else {
                        tracing::debug!("output: skipping special file {}", path.display());
                    }
                }
            },
            Ok(PacketType::PacketData) => {
                let id = p.id;
                if p.data.is_empty() {
                    let (path, perm, mtime) = pending.remove(&id).ok_or_else(|| {
                        Status::invalid_argument(format!("data for unknown file {id}"))
                    })?;
                    let file = match open.remove(&id) {
                        Some(f) => f,
                        None => std::fs::File::create(&path)
                            .map_err(|e| io_status("creating", &path, e))?,
                    };
                    file.set_permissions(std::fs::Permissions::from_mode(perm))
                        .map_err(|e| io_status("writing", &path, e))?;
                    if let Ok(ns) = u64::try_from(mtime) {
                        let when = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
                        let _ = file.set_modified(when);
                    }
                } else {
                    let path = &pending
                        .get(&id)
                        .ok_or_else(|| {
                            Status::invalid_argument(format!("data for unknown file {id}"))
                        })?
                        .0;
                    let file = match open.entry(id) {
                        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::hash_map::Entry::Vacant(v) => v.insert(
                            std::fs::File::create(path)
                                .map_err(|e| io_status("creating", path, e))?,
                        ),
                    };
                    bytes += p.data.len() as u64;
                    file.write_all(&p.data)
                        .map_err(|e| io_status("writing", path, e))?;
                }
            }
            Ok(PacketType::PacketFin) => break,
            Ok(PacketType::PacketErr) => {
                return Err(Status::aborted(format!(
                    "the daemon failed the output: {}",
                    String::from_utf8_lossy(&p.data)
                )));
            }
            Ok(PacketType::PacketReq) | Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unexpected packet type {}",
                    p.r#type
                )));
            }
        }
        if stats_done && pending.is_empty() && !fin_sent {
            send(packet(PacketType::PacketFin, 0)).await?;
            fin_sent = true;
        }
    }
    if !(stats_done && pending.is_empty()) {
        return Err(Status::aborted(
            "the output ended before every file arrived",
        ));
    }
    // Directory modes last, so a read-only directory does not stop its own files from being written.
    for (path, perm) in dir_modes.into_iter().rev() {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perm))
            .map_err(|e| io_status("writing", &path, e))?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_relative_paths_are_below_the_destination() {
        let dest = Path::new("/out");
        assert_eq!(below(dest, b"a/b"), Some(PathBuf::from("/out/a/b")));
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../x",
            b"a/../../x",
            b"a//b",
            b"./a",
            b"a/",
        ] {
            assert_eq!(below(dest, bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
