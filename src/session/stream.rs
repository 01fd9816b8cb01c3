//! The `Control.Session` byte pipe as one `AsyncRead + AsyncWrite`: every `BytesMessage` from the daemon is the next
//! run of bytes of its HTTP/2 client, and every write of our HTTP/2 server goes out as one `BytesMessage`.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

/// Largest single outgoing message: far below the 16 MiB gRPC limit.
const MAX_CHUNK: usize = 1 << 20;

/// Bytes in from a stream of chunks, bytes out to a channel of chunks.
pub(crate) struct Pipe<S> {
    inbound: S,
    pending: Vec<u8>,
    pos: usize,
    outbound: PollSender<Vec<u8>>,
}

impl<S> Pipe<S> {
    /// A pipe reading chunks from `inbound` and sending written bytes to `outbound`.
    pub(crate) fn new(inbound: S, outbound: mpsc::Sender<Vec<u8>>) -> Pipe<S> {
        Pipe {
            inbound,
            pending: Vec::new(),
            pos: 0,
            outbound: PollSender::new(outbound),
        }
    }
}

impl<S, E> AsyncRead for Pipe<S>
where
    S: Stream<Item = Result<Vec<u8>, E>> + Unpin,
    E: std::fmt::Display,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if self.pos < self.pending.len() {
                let n = buf.remaining().min(self.pending.len() - self.pos);
                let start = self.pos;
                buf.put_slice(&self.pending[start..start + n]);
                self.pos += n;
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inbound).poll_next(cx)) {
                Some(Ok(chunk)) => {
                    self.pending = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        e.to_string(),
                    )));
                }
                // End of stream: EOF.
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<S: Unpin> AsyncWrite for Pipe<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let broken =
            || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "session stream closed");
        ready!(self.outbound.poll_reserve(cx)).map_err(|_| broken())?;
        let n = buf.len().min(MAX_CHUNK);
        self.outbound
            .send_item(buf[..n].to_vec())
            .map_err(|_| broken())?;
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.outbound.close();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn chunks_become_a_byte_stream_and_back() {
        let inbound =
            futures::stream::iter(vec![Ok::<_, String>(b"hel".to_vec()), Ok(b"lo".to_vec())]);
        let (tx, mut rx) = mpsc::channel(4);
        let mut pipe = Pipe::new(inbound, tx);
        let mut s = String::new();
        pipe.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello");
        pipe.write_all(b"out").await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), b"out");
    }
}
