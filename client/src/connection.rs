//! One framed, pipelined TCP connection to a node's client port.
//!
//! After the handshake the socket is split: a writer task drains an mpsc
//! channel of encoded frames, and a reader task decodes [`ClientResponse`]s and
//! completes the `oneshot` waiting for each request id. When either side fails,
//! the connection is marked closed and every pending request is woken with an
//! error so its operation can retry elsewhere.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use protocol::codec::FrameCodec;
use protocol::limits::MAX_CLIENT_FRAME;
use protocol::{ClientResponse, Hello, HelloReply, NodeId, Party};
use tokio::io::AsyncWrite;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::{lock, Error};

/// How many encoded frames may wait for the writer before senders are held back.
const WRITE_QUEUE: usize = 1024;

type Waiter = oneshot::Sender<ClientResponse>;

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
}

impl Shared {
    /// Marks the connection dead and wakes every waiter (their senders are dropped).
    fn close(&self) {
        let waiters = {
            let mut pending = lock(&self.pending);
            pending.closed = true;
            std::mem::take(&mut pending.waiters)
        };
        drop(waiters);
    }
}

/// The socket's write half, written with plain writes only.
///
/// A socket write to a peer that has gone raises SIGPIPE, which kills a
/// process that has not chosen to ignore it: Rust programs ignore it, but the
/// C programs that load this crate as libkv.so usually do not. The standard
/// library's single-buffer write passes `MSG_NOSIGNAL` (the error comes back
/// as `EPIPE` instead); its vectored write (`writev`) cannot. This wrapper
/// reports itself as not vectored, so the framed writer uses plain writes.
pub(crate) struct NoSigpipe(OwnedWriteHalf);

impl AsyncWrite for NoSigpipe {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    // `poll_write_vectored` keeps its default (the first buffer, through
    // `poll_write`), and `is_write_vectored` its default, false.
}

/// An established connection; shared through `Arc` by every request using it.
pub(crate) struct Connection {
    endpoint: String,
    node_id: NodeId,
    /// The node's applied index when it accepted the connection.
    applied_index: protocol::LogIndex,
    frames: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Connection {
    /// Connects to `endpoint`, performs the handshake and starts the I/O tasks,
    /// all within `limit`.
    pub(crate) async fn open(endpoint: &str, cluster_id: &str, limit: Duration) -> Result<Connection, Error> {
        match tokio::time::timeout(limit, Self::open_inner(endpoint, cluster_id)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Connect {
                endpoint: endpoint.to_string(),
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect and handshake took longer than {} ms", limit.as_millis()),
                ),
            }),
        }
    }

    async fn open_inner(endpoint: &str, cluster_id: &str) -> Result<Connection, Error> {
        let stream = TcpStream::connect(endpoint).await.map_err(|source| Error::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?;
        // Small request/response frames: do not let Nagle delay them.
        stream.set_nodelay(true).map_err(|source| Error::Connect {
            endpoint: endpoint.to_string(),
            source,
        })?;
        let (read_half, write_half) = stream.into_split();
        let mut sink = FramedWrite::new(NoSigpipe(write_half), protocol::frame_codec(MAX_CLIENT_FRAME));
        let mut stream = FramedRead::new(read_half, protocol::frame_codec(MAX_CLIENT_FRAME));

        let hello = protocol::encode(&Hello::new(cluster_id, Party::Client))?;
        sink.send(hello).await?;
        let frame = match stream.next().await {
            Some(frame) => frame?,
            None => {
                return Err(Error::ConnectionClosed {
                    endpoint: endpoint.to_string(),
                })
            }
        };
        let (node_id, applied_index) = match protocol::decode::<HelloReply>(&frame)? {
            HelloReply::Accepted {
                node_id, applied_index, ..
            } => (node_id, applied_index),
            HelloReply::Rejected { reason, message } => {
                tracing::debug!(endpoint, ?reason, %message, "handshake rejected");
                return Err(Error::Handshake {
                    endpoint: endpoint.to_string(),
                    message,
                });
            }
        };

        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
        });
        let (frames, queue) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_loop(sink, queue, shared.clone(), endpoint.to_string()));
        let reader = tokio::spawn(read_loop(stream, shared.clone(), endpoint.to_string()));
        tracing::debug!(endpoint, node_id, "connected");
        Ok(Connection {
            endpoint: endpoint.to_string(),
            node_id,
            applied_index,
            frames,
            shared,
            reader,
            writer,
        })
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn applied_index(&self) -> protocol::LogIndex {
        self.applied_index
    }

    pub(crate) fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.shared.pending).closed
    }

    fn closed_error(&self) -> Error {
        Error::ConnectionClosed {
            endpoint: self.endpoint.clone(),
        }
    }

    /// Sends one encoded request with id `id` and waits for the response with
    /// that id. The only failure is the connection closing; a caller that gives
    /// up (drops the future) stops waiting and its slot is removed.
    pub(crate) async fn call(&self, id: u64, frame: Bytes) -> Result<ClientResponse, Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.shared.pending);
            if pending.closed {
                return Err(self.closed_error());
            }
            pending.waiters.insert(id, tx);
        }
        let _slot = SlotGuard {
            shared: &self.shared,
            id,
        };
        if self.frames.send(frame).await.is_err() {
            return Err(self.closed_error());
        }
        rx.await.map_err(|_| self.closed_error())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Nobody waits on this connection any more: stop both tasks, which
        // closes the socket (the writer could be stuck on a peer not reading).
        self.reader.abort();
        self.writer.abort();
    }
}

/// Removes a request's waiter when its caller stops waiting.
struct SlotGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).waiters.remove(&self.id);
    }
}

async fn write_loop(
    mut sink: FramedWrite<NoSigpipe, FrameCodec>,
    mut queue: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
    endpoint: String,
) {
    while let Some(frame) = queue.recv().await {
        // Batch whatever else is already queued into one flush.
        let mut result = sink.feed(frame).await;
        while result.is_ok() {
            match queue.try_recv() {
                Ok(frame) => result = sink.feed(frame).await,
                Err(_) => break,
            }
        }
        if result.is_ok() {
            result = SinkExt::<Bytes>::flush(&mut sink).await;
        }
        if let Err(error) = result {
            tracing::debug!(%endpoint, %error, "write failed; closing connection");
            shared.close();
            return;
        }
    }
}

async fn read_loop(mut stream: FramedRead<OwnedReadHalf, FrameCodec>, shared: Arc<Shared>, endpoint: String) {
    loop {
        let frame = match stream.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => {
                tracing::debug!(%endpoint, %error, "read failed; closing connection");
                break;
            }
            None => {
                tracing::debug!(%endpoint, "server closed the connection");
                break;
            }
        };
        let response: ClientResponse = match protocol::decode(&frame) {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%endpoint, %error, "undecodable response; closing connection");
                break;
            }
        };
        let waiter = lock(&shared.pending).waiters.remove(&response.id);
        match waiter {
            // The receiver may have given up already; nothing to do then.
            Some(waiter) => {
                let _ = waiter.send(response);
            }
            None => tracing::debug!(%endpoint, id = response.id, "response for an abandoned request"),
        }
    }
    shared.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_never_vectored() {
        // A vectored write is `writev`, which cannot suppress SIGPIPE; the
        // framed writer must see a writer that is not vectored.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stream, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_read, write) = stream.expect("connect").into_split();
        let _peer = accepted.expect("accept");
        assert!(
            write.is_write_vectored(),
            "tokio's half is vectored: the wrapper matters"
        );
        assert!(!NoSigpipe(write).is_write_vectored());
    }
}
