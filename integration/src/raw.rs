//! A bare TCP connection speaking (or deliberately not speaking) the wire
//! protocol, for tests that send what no well-behaved client would.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use protocol::codec::FrameCodec;
use protocol::limits::MAX_CLIENT_FRAME;
use protocol::{Hello, HelloReply, Party};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// What reading the next frame gave.
#[derive(Debug)]
pub enum Next {
    /// A whole frame's payload, without its length prefix.
    Frame(Bytes),
    /// The far end closed the connection (or reset it).
    Closed,
    /// Nothing arrived in time.
    Silent,
}

/// A TCP connection to a node's client or peer port, with no handshake done
/// for it: the test sends whatever bytes, frames or messages it wants.
pub struct RawConn {
    framed: Framed<TcpStream, FrameCodec>,
}

impl RawConn {
    /// Connects to `addr` (panics if that fails or takes over 5 s). Frames are capped at
    /// [`MAX_CLIENT_FRAME`] both ways; [`RawConn::send_bytes`] is not.
    pub async fn connect(addr: &str) -> RawConn {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("set nodelay");
        RawConn {
            framed: Framed::new(stream, protocol::frame_codec(MAX_CLIENT_FRAME)),
        }
    }

    /// Writes `bytes` as they are, without framing.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = self.framed.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await
    }

    /// Sends one frame holding `payload`.
    pub async fn send_frame(&mut self, payload: Bytes) -> std::io::Result<()> {
        self.framed.send(payload).await
    }

    /// Sends `message` encoded the way nodes expect (a MessagePack map in a frame).
    pub async fn send<T: Serialize>(&mut self, message: &T) -> std::io::Result<()> {
        self.send_frame(protocol::encode(message).expect("encodes")).await
    }

    /// The next frame, or why there is none within `limit`.
    pub async fn next_frame(&mut self, limit: Duration) -> Next {
        match tokio::time::timeout(limit, self.framed.next()).await {
            Err(_) => Next::Silent,
            Ok(None) | Ok(Some(Err(_))) => Next::Closed,
            Ok(Some(Ok(frame))) => Next::Frame(frame.freeze()),
        }
    }

    /// The next frame decoded as `T`; panics if there is none in `limit` or it does not decode.
    pub async fn recv<T: DeserializeOwned>(&mut self, limit: Duration) -> T {
        match self.next_frame(limit).await {
            Next::Frame(frame) => protocol::decode(&frame)
                .unwrap_or_else(|e| panic!("a {} expected, got undecodable bytes: {e}", std::any::type_name::<T>())),
            other => panic!("a {} expected, got {other:?}", std::any::type_name::<T>()),
        }
    }

    /// Reads frames until the far end closes; panics if it has not closed within `limit`.
    pub async fn frames_until_closed(&mut self, limit: Duration) -> Vec<Bytes> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Next::Frame(frame) => frames.push(frame),
                Next::Closed => return frames,
                Next::Silent => panic!(
                    "the node kept the connection open for {limit:?} (frames received: {})",
                    frames.len()
                ),
            }
        }
    }

    /// Sends a hello and returns the node's answer.
    pub async fn hello(&mut self, cluster_id: &str, party: Party) -> HelloReply {
        self.send(&Hello::new(cluster_id, party)).await.expect("send hello");
        self.recv(Duration::from_secs(5)).await
    }
}
