//! The session's `FileSync.DiffCopy`: we are the fsutil *sender*. The daemon names a local directory and sends the
//! include/exclude patterns; we walk it with the same selection code the hasher uses, stream one STAT per entry
//! (then an empty STAT), answer REQs with DATA chunks ending in an empty DATA, and finish on the FIN handshake.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::context::{Entry, EntryKind, transfer_filter, walk};
use crate::digest::Digest;
use crate::proto::fsutil::types::{Packet, Stat, packet::PacketType};
use crate::proto::moby::filesync::v1 as pb;

/// Read size for DATA packets. Go reads 32 KiB at a time; the receiver takes any size up to the 16 MiB message
/// limit, and fewer, larger packets cost less per byte.
const CHUNK: usize = 256 * 1024;
/// Reader threads per transfer (reads of small files mostly wait on the disk when it is cold).
const FILE_WORKERS: usize = 8;

/// Go `os.FileMode` bits.
mod go_mode {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const NAMED_PIPE: u32 = 1 << 25;
    pub const CHAR_DEVICE: u32 = 1 << 21;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const STICKY: u32 = 1 << 20;
}

/// The Go `FileMode` of an entry (not the Unix `st_mode`, whose type bits Go does not understand), as fsutil sends
/// it: a socket's `ModeSocket` bit is cleared, so it goes out as a regular file.
pub(crate) fn go_file_mode(e: &Entry) -> u32 {
    let mut m = e.mode & 0o777;
    if e.mode & 0o4000 != 0 {
        m |= go_mode::SETUID;
    }
    if e.mode & 0o2000 != 0 {
        m |= go_mode::SETGID;
    }
    if e.mode & 0o1000 != 0 {
        m |= go_mode::STICKY;
    }
    match e.kind {
        EntryKind::Dir => m | go_mode::DIR,
        EntryKind::Symlink(_) => m | go_mode::SYMLINK,
        EntryKind::File | EntryKind::Socket => m,
        EntryKind::Fifo => m | go_mode::NAMED_PIPE,
        EntryKind::Device { char: false, .. } => m | go_mode::DEVICE,
        EntryKind::Device { char: true, .. } => m | go_mode::DEVICE | go_mode::CHAR_DEVICE,
    }
}

fn stat_of(e: &Entry) -> Stat {
    Stat {
        path: e.path.clone(),
        mode: go_file_mode(e),
        // Like the Go client: owners are not sent (`resetUIDAndGID`).
        uid: 0,
        gid: 0,
        size: i64::try_from(e.size).unwrap_or(i64::MAX),
        mod_time: e.mtime_ns,
        linkname: match &e.kind {
            EntryKind::Symlink(t) => t.clone(),
            _ => Vec::new(),
        },
        devmajor: match e.kind {
            EntryKind::Device { major, .. } => i64::try_from(major).unwrap_or(i64::MAX),
            _ => 0,
        },
        devminor: match e.kind {
            EntryKind::Device { minor, .. } => i64::try_from(minor).unwrap_or(i64::MAX),
            _ => 0,
        },
        ..Stat::default()
    }
}

fn packet(ty: PacketType) -> Packet {
    Packet {
        r#type: ty as i32,
        ..Packet::default()
    }
}

/// The packets of one transfer, owning the task that produces them: when the daemon goes away and the server drops
/// the stream, the transfer stops too.
pub(crate) struct TransferStream {
    packets: ReceiverStream<Result<Packet, Status>>,
    task: tokio::task::AbortHandle,
}

impl futures::Stream for TransferStream {
    type Item = Result<Packet, Status>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.packets).poll_next(cx)
    }
}

impl Drop for TransferStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves DiffCopy for a fixed set of named directories, logging what it sends.
pub(crate) struct FileSyncService {
    pub(crate) dirs: Arc<HashMap<String, PathBuf>>,
    pub(crate) own: Arc<Vec<PathBuf>>,
    pub(crate) log: TransferLog,
}

/// Values of a metadata key, URL-query-decoded when `<key>-encoded` is `1`. Bytes, not text: a pattern may hold
/// invalid UTF-8, which the daemon percent-encodes.
fn metadata_values(md: &MetadataMap, key: &str) -> Vec<Vec<u8>> {
    let encoded = md
        .get(format!("{key}-encoded"))
        .is_some_and(|v| v.as_bytes() == b"1");
    md.get_all(key)
        .iter()
        .map(|v| {
            let raw = v.as_bytes();
            if encoded {
                query_unescape(raw)
            } else {
                raw.to_vec()
            }
        })
        .collect()
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte.
fn query_unescape(b: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = b
        .iter()
        .map(|&c| if c == b'+' { b' ' } else { c })
        .collect();
    percent_encoding::percent_decode(&spaced).collect()
}

/// What one DiffCopy call sent: the entries (with the status they had when sent) and, for each file whose content
/// the daemon asked for, the size and blake3 of the bytes that actually went out. The build compares this with what
/// it hashed before it writes any tag.
#[derive(Debug, Clone, Default)]
pub struct Transfer {
    /// The local name the daemon asked for (`context`, `dockerfile`).
    pub local: String,
    /// The directory it names.
    pub root: PathBuf,
    /// What the daemon asked for: `followpaths`, `include-patterns` and `exclude-patterns`, as sent.
    pub followpaths: Vec<String>,
    /// See [`Transfer::followpaths`].
    pub include: Vec<String>,
    /// See [`Transfer::followpaths`].
    pub exclude: Vec<String>,
    /// Every entry sent as a STAT, in order (an entry's index is its file ID).
    pub entries: Vec<Entry>,
    /// Content sent, by file ID.
    pub sent: HashMap<u32, SentContent>,
}

/// The content of one file as it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentContent {
    /// Bytes sent.
    pub size: u64,
    /// Their blake3.
    pub digest: Digest,
    /// Set when the file could not be read: the daemon got `size` bytes and an error or an empty file.
    pub error: Option<String>,
}

/// Every transfer of a session, in the order they started.
pub(crate) type TransferLog = Arc<Mutex<Vec<Arc<Mutex<Transfer>>>>>;

#[tonic::async_trait]
impl pb::file_sync_server::FileSync for FileSyncService {
    type DiffCopyStream = TransferStream;
    type TarStreamStream = ReceiverStream<Result<Packet, Status>>;

    #[tracing::instrument(skip_all)]
    async fn diff_copy(
        &self,
        req: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        let md = req.metadata();
        let name = metadata_values(md, "dir-name")
            .into_iter()
            .next()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .unwrap_or_default();
        let Some(root) = self.dirs.get(&name).cloned() else {
            return Err(Status::not_found(format!(
                "no access allowed to dir \"{name}\""
            )));
        };
        let include = metadata_values(md, "include-patterns");
        let followpaths = metadata_values(md, "followpaths");
        let exclude = metadata_values(md, "exclude-patterns");
        tracing::debug!(dir = %name, ?include, ?exclude, ?followpaths, "DiffCopy");
        let filter = transfer_filter(&root, &include, &exclude, &followpaths)
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?
            .hide_own(&root, &self.own);
        let walk_root = root.clone();
        let entries = tokio::task::spawn_blocking(move || walk(&walk_root, &filter))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("{e}")))?;

        let mut files: HashMap<u32, (PathBuf, u64)> = HashMap::new();
        for (id, e) in entries.iter().enumerate() {
            // A socket is requested like a file; opening it fails and it is sent empty, as fsutil does.
            if matches!(e.kind, EntryKind::File | EntryKind::Socket) {
                files.insert(id as u32, (e.abs_path(&root), e.size));
            }
        }
        let text = |v: &[Vec<u8>]| -> Vec<String> {
            v.iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect()
        };
        let record = Arc::new(Mutex::new(Transfer {
            local: name,
            root,
            followpaths: text(&followpaths),
            include: text(&include),
            exclude: text(&exclude),
            entries: entries.clone(),
            sent: HashMap::new(),
        }));
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record.clone());
        let (tx, rx) = mpsc::channel(128);
        let inbound = req.into_inner();
        // The transfer runs on its own task; it ends when the daemon finishes (FIN) or goes away, and the response
        // stream ends with it.
        let task = tokio::spawn(transfer(entries, files, inbound, tx, record));
        Ok(Response::new(TransferStream {
            packets: ReceiverStream::new(rx),
            task: task.abort_handle(),
        }))
    }

    async fn tar_stream(
        &self,
        _: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::TarStreamStream>, Status> {
        Err(Status::unimplemented("only diffcopy is supported"))
    }
}

async fn transfer(
    entries: Vec<Entry>,
    files: HashMap<u32, (PathBuf, u64)>,
    mut inbound: Streaming<Packet>,
    tx: mpsc::Sender<Result<Packet, Status>>,
    record: Arc<Mutex<Transfer>>,
) {
    let stats = {
        let tx = tx.clone();
        async move {
            for e in &entries {
                let p = Packet {
                    r#type: PacketType::PacketStat as i32,
                    stat: Some(stat_of(e)),
                    ..Packet::default()
                };
                if tx.send(Ok(p)).await.is_err() {
                    return;
                }
            }
            // End of list: a STAT with no stat at all (not an empty one).
            let _ = tx.send(Ok(packet(PacketType::PacketStat))).await;
        }
    };
    let requests = async {
        let mut files = files;
        // A fixed set of blocking readers, fed REQs in the order they come: no task, semaphore or thread hop per
        // file (issue 12: 20,000 small files cost 170k futex calls and one socket write each).
        let (jobs, queue) = std::sync::mpsc::channel::<(u32, PathBuf, u64)>();
        let queue = Arc::new(Mutex::new(queue));
        let mut readers = tokio::task::JoinSet::new();
        let reader = |readers: &mut tokio::task::JoinSet<()>| {
            let (queue, tx, record) = (queue.clone(), tx.clone(), record.clone());
            readers.spawn_blocking(move || {
                loop {
                    let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((id, path, size)) = job else { return };
                    let sent = send_file(id, &path, size, &tx);
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .sent
                        .insert(id, sent);
                }
            });
        };
        loop {
            let p = match inbound.message().await {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("DiffCopy receive failed: {e}");
                    return;
                }
            };
            match PacketType::try_from(p.r#type) {
                Ok(PacketType::PacketReq) => {
                    let Some((path, size)) = files.remove(&p.id) else {
                        let _ = tx
                            .send(Err(Status::invalid_argument(format!(
                                "invalid file id {}",
                                p.id
                            ))))
                            .await;
                        return;
                    };
                    // Readers start with the first requests (a transfer the daemon has cached asks for none).
                    if readers.len() < FILE_WORKERS {
                        reader(&mut readers);
                    }
                    // The readers hold the queue until this sender is dropped.
                    let _ = jobs.send((p.id, path, size));
                }
                Ok(PacketType::PacketFin) => {
                    drop(jobs);
                    while readers.join_next().await.is_some() {}
                    let _ = tx.send(Ok(packet(PacketType::PacketFin))).await;
                    return;
                }
                Ok(PacketType::PacketErr) => {
                    let msg = String::from_utf8_lossy(&p.data).into_owned();
                    let _ = tx
                        .send(Err(Status::aborted(format!("error from receiver: {msg}"))))
                        .await;
                    return;
                }
                _ => {
                    let _ = tx
                        .send(Err(Status::invalid_argument(format!(
                            "unexpected packet type {}",
                            p.r#type
                        ))))
                        .await;
                    return;
                }
            }
        }
    };
    tokio::join!(stats, requests);
}

/// Streams one file as DATA packets, then the empty DATA that ends it; returns what went out, hashed on the way.
/// Runs on a blocking reader thread. At most `size` bytes (the size the STAT said) are read: one read for a file
/// that fits a chunk, and no read that only finds the end. Of a file that grew since, the first `size` bytes are
/// sent; of one that shrank, what is left. Either way the digest says what went out, and the build compares it with
/// what it hashed before tagging anything.
fn send_file(
    id: u32,
    path: &std::path::Path,
    size: u64,
    tx: &mpsc::Sender<Result<Packet, Status>>,
) -> SentContent {
    use std::io::Read;
    let data = |bytes: Bytes| Packet {
        r#type: PacketType::PacketData as i32,
        id,
        data: bytes,
        ..Packet::default()
    };
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    let outcome = |hasher: &blake3::Hasher, total, error| SentContent {
        size: total,
        digest: hasher.finalize().into(),
        error,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        // As in fsutil: a file that cannot be opened is sent empty.
        Err(e) => {
            tracing::warn!("cannot open {} for sending: {e}", path.display());
            let _ = tx.blocking_send(Ok(data(Bytes::new())));
            return outcome(&hasher, total, Some(format!("cannot open: {e}")));
        }
    };
    while total < size {
        let want = usize::try_from(size - total).map_or(CHUNK, |n| n.min(CHUNK));
        let mut buf = vec![0; want];
        let mut filled = 0;
        let read = loop {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled == want {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = read {
            let msg = format!("read {}: {e}", path.display());
            let err = Packet {
                r#type: PacketType::PacketErr as i32,
                data: Bytes::from(msg.clone()),
                ..Packet::default()
            };
            let _ = tx.blocking_send(Ok(err));
            let _ = tx.blocking_send(Err(Status::internal(msg.clone())));
            return outcome(&hasher, total, Some(msg));
        }
        buf.truncate(filled);
        hasher.update(&buf);
        total += filled as u64;
        if filled > 0 && tx.blocking_send(Ok(data(Bytes::from(buf)))).is_err() {
            return outcome(
                &hasher,
                total,
                Some("the daemon stopped reading".to_owned()),
            );
        }
        if filled < want {
            // It shrank.
            break;
        }
    }
    // End of file: a DATA packet with empty data.
    let _ = tx.blocking_send(Ok(data(Bytes::new())));
    outcome(&hasher, total, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_modes() {
        let e = |kind, mode| Entry {
            path: b"x".to_vec(),
            kind,
            mode,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
            dev: 0,
        };
        assert_eq!(go_file_mode(&e(EntryKind::File, 0o644)), 420);
        assert_eq!(go_file_mode(&e(EntryKind::File, 0o755)), 493);
        assert_eq!(go_file_mode(&e(EntryKind::Dir, 0o755)), 2147484141);
        assert_eq!(
            go_file_mode(&e(EntryKind::Symlink(b"t".to_vec()), 0o777)),
            134218239
        );
        assert_eq!(go_file_mode(&e(EntryKind::File, 0o4755)), 8389101);
        assert_eq!(go_file_mode(&e(EntryKind::Fifo, 0o644)), (1 << 25) | 0o644);
        assert_eq!(go_file_mode(&e(EntryKind::Socket, 0o755)), 0o755);
        let dev = |char| EntryKind::Device {
            char,
            major: 1,
            minor: 3,
        };
        assert_eq!(
            go_file_mode(&e(dev(true), 0o666)),
            (1 << 26) | (1 << 21) | 0o666
        );
        assert_eq!(go_file_mode(&e(dev(false), 0o660)), (1 << 26) | 0o660);
    }

    #[test]
    fn unescape() {
        assert_eq!(query_unescape(b"caf%C3%A9+x%2"), "café x%2".as_bytes());
        assert_eq!(query_unescape(b"a%FF"), b"a\xff");
    }
}
