//! The node's sockets: the peer links and the client port.
//!
//! Every connection starts with the versioned handshake; frames are bounded
//! (a small limit until the handshake is accepted, then the port's own);
//! undecodable input gets a clear error and the node goes on serving.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actors::messages::{ClientCall, PeerInbound, PeerTransport, SharedView};
use actors::{ClientGateway, ElectionActor};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use protocol::codec::FrameCodec;
use protocol::limits::{MAX_CLIENT_FRAME, MAX_HANDSHAKE_FRAME};
use protocol::{
    decode, encode, frame_codec, ClientError, ClientRequest, ClientResponse, Hello, HelloReply, NodeId, Party,
    PeerEnvelope, RejectReason, PROTOCOL_VERSION,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::Framed;
use tracing::{debug, info, warn};

/// Peer messages queued per peer while its link is slow or down; beyond this they are dropped.
const PEER_QUEUE: usize = 8192;
/// Requests one client connection may have in flight.
const CLIENT_IN_FLIGHT: usize = 1024;
/// Requests all client connections together may have in flight. A request
/// and its answer each fit one client frame ([`MAX_CLIENT_FRAME`], 64 KiB; a
/// key and a value fit half of one), so what requests in flight hold is
/// bounded by this many frames (8192 x 64 KiB = 512 MiB) however many
/// connections send them. A connection waiting for room reads nothing more:
/// its sender meets TCP flow control.
const NODE_IN_FLIGHT: usize = 8192;
/// How long the far end has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections open at once on the client port (and on the RESP port):
/// each may buffer one client frame ([`MAX_CLIENT_FRAME`]) and its answers.
pub const MAX_CLIENT_CONNECTIONS: usize = 4096;
/// Most connections open at once on the peer port besides one per peer:
/// before its handshake a connection buffers at most [`MAX_HANDSHAKE_FRAME`],
/// after it only one per peer id stays (see [`InboundPeers`]), buffering at
/// most one peer frame. So the peer port holds at most
/// `(members - 1) x max_peer_frame_bytes` plus this many small buffers.
pub const MAX_SPARE_PEER_CONNECTIONS: usize = 64;

/// Outgoing peer links: one queue and one connection per peer.
pub struct PeerNetwork {
    queues: HashMap<NodeId, mpsc::Sender<PeerEnvelope>>,
}

impl PeerTransport for PeerNetwork {
    fn send(&self, envelope: PeerEnvelope) {
        if let Some(queue) = self.queues.get(&envelope.to) {
            if queue.try_send(envelope).is_err() {
                debug!("peer queue full or closed: message dropped");
            }
        }
    }
}

pub struct PeerLink {
    pub peer: NodeId,
    pub addr: String,
    queue: mpsc::Receiver<PeerEnvelope>,
}

impl PeerNetwork {
    /// Queues for every peer; the links that drain them start with [`run_peer_link`].
    pub fn new(peers: &[(NodeId, String)]) -> (Arc<Self>, Vec<PeerLink>) {
        let mut queues = HashMap::new();
        let mut links = Vec::new();
        for (peer, addr) in peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            queues.insert(*peer, tx);
            links.push(PeerLink {
                peer: *peer,
                addr: addr.clone(),
                queue: rx,
            });
        }
        (Arc::new(PeerNetwork { queues }), links)
    }
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("wire: {0}")]
    Wire(#[from] protocol::WireError),
    #[error("handshake refused: {0}")]
    Refused(String),
    #[error("connection closed during handshake")]
    Closed,
    #[error("handshake timed out")]
    Timeout,
}

/// Keeps one outgoing connection to a peer alive and drains its queue into it.
pub async fn run_peer_link(me: NodeId, cluster_id: String, max_frame: usize, mut link: PeerLink) {
    let mut backoff = Duration::from_millis(20);
    loop {
        match connect_peer(me, &cluster_id, &link.addr, max_frame).await {
            Ok(mut framed) => {
                info!(peer = link.peer, addr = %link.addr, "peer link up");
                backoff = Duration::from_millis(20);
                if let Err(e) = pump(&mut framed, &mut link.queue).await {
                    info!(peer = link.peer, "peer link down: {e}");
                }
            }
            Err(e) => debug!(peer = link.peer, addr = %link.addr, "cannot reach peer: {e}"),
        }
        // Messages queued while down are stale by now; Raft re-sends what matters.
        while link.queue.try_recv().is_ok() {}
        if link.queue.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

async fn connect_peer(
    me: NodeId,
    cluster_id: &str,
    addr: &str,
    max_frame: usize,
) -> Result<Framed<TcpStream, FrameCodec>, LinkError> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| LinkError::Timeout)??;
    stream.set_nodelay(true)?;
    let mut framed = Framed::new(stream, frame_codec(MAX_HANDSHAKE_FRAME));
    framed
        .send(encode(&Hello::new(cluster_id, Party::Peer { node_id: me }))?)
        .await?;
    let reply = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next())
        .await
        .map_err(|_| LinkError::Timeout)?
        .ok_or(LinkError::Closed)??;
    match decode::<HelloReply>(&reply)? {
        HelloReply::Accepted { .. } => {
            // The small limit guarded the handshake; peer messages may be as large as the peer accepts.
            framed.codec_mut().set_max_frame_length(max_frame);
            Ok(framed)
        }
        HelloReply::Rejected { message, .. } => Err(LinkError::Refused(message)),
    }
}

/// Writes queued messages, as many per flush as are waiting.
async fn pump(
    framed: &mut Framed<TcpStream, FrameCodec>,
    queue: &mut mpsc::Receiver<PeerEnvelope>,
) -> Result<(), LinkError> {
    loop {
        tokio::select! {
            message = queue.recv() => {
                let Some(message) = message else { return Ok(()) };
                framed.feed(encode(&message)?).await?;
                while let Ok(more) = queue.try_recv() {
                    framed.feed(encode(&more)?).await?;
                }
                SinkExt::<Bytes>::flush(framed).await?;
            }
            // The far end never writes on this link; reading tells us when it closes.
            incoming = framed.next() => {
                if incoming.is_none() {
                    return Err(LinkError::Closed);
                }
            }
        }
    }
}

/// Accepts connections on `listener` forever, each served by `serve` on a
/// task of its own, at most `limit` at once: one more is closed at once, with
/// a trace (a flood of idle connections must not exhaust memory or file
/// descriptors). A failed accept (out of file descriptors, say) is traced
/// and retried after a pause rather than ending the port.
pub async fn accept_loop<F, Fut>(listener: TcpListener, port: &'static str, limit: usize, mut serve: F)
where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let open = Arc::new(Semaphore::new(limit));
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => match open.clone().try_acquire_owned() {
                Ok(permit) => {
                    let served = serve(stream, remote);
                    actix::spawn(async move {
                        served.await;
                        drop(permit);
                    });
                }
                Err(_) => warn!(%remote, limit, "{port} port: too many connections open; closing a new one"),
            },
            Err(e) => {
                warn!("{port} accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts peer connections and feeds their messages to the ElectionActor.
pub async fn serve_peers(
    listener: TcpListener,
    me: NodeId,
    cluster_id: String,
    members: Vec<NodeId>,
    max_frame: usize,
    election: Addr<ElectionActor>,
) {
    let inbound = InboundPeers::default();
    let limit = members.len() + MAX_SPARE_PEER_CONNECTIONS;
    accept_loop(listener, "peer", limit, |stream, remote| {
        let (cluster_id, members, election) = (cluster_id.clone(), members.clone(), election.clone());
        let inbound = inbound.clone();
        async move {
            let accepted = peer_connection(stream, me, &cluster_id, &members, max_frame, election, &inbound).await;
            if let Err(e) = accepted {
                info!(%remote, "peer connection closed: {e}");
            }
        }
    })
    .await
}

/// The one inbound connection kept per peer: a newer one (the peer
/// reconnected, or someone claims its id) closes the older, so the frames
/// being received on the peer port never exceed one per peer.
#[derive(Clone, Default)]
struct InboundPeers {
    current: Arc<std::sync::Mutex<HashMap<NodeId, InboundSlot>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

/// A registered connection's generation, and how to tell it it was replaced.
type InboundSlot = (u64, tokio::sync::oneshot::Sender<()>);

impl InboundPeers {
    /// Registers a connection of `peer`; the receiver fires when a newer one replaces it.
    fn register(&self, peer: NodeId) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let generation = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (replace, replaced) = tokio::sync::oneshot::channel();
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, older)) = current.insert(peer, (generation, replace)) {
            let _ = older.send(());
        }
        (generation, replaced)
    }

    fn unregister(&self, peer: NodeId, generation: u64) {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.get(&peer).is_some_and(|(g, _)| *g == generation) {
            current.remove(&peer);
        }
    }
}

/// Reads and checks the opening hello; answers it. Returns who connected.
async fn accept_handshake(
    framed: &mut Framed<TcpStream, FrameCodec>,
    me: NodeId,
    cluster_id: &str,
    expect_peer: bool,
    members: &[NodeId],
    applied_index: protocol::LogIndex,
) -> Result<Party, LinkError> {
    let frame = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next())
        .await
        .map_err(|_| LinkError::Timeout)?
        .ok_or(LinkError::Closed)??;
    let verdict = match decode::<Hello>(&frame) {
        Err(e) => Err((RejectReason::Malformed, format!("expected a kvs hello: {e}"))),
        Ok(hello) => hello.check(cluster_id, expect_peer).and_then(|()| match hello.party {
            Party::Peer { node_id } if node_id == me || !members.contains(&node_id) => Err((
                RejectReason::UnknownNode,
                format!("node {node_id} is not a peer of node {me} in this cluster"),
            )),
            party => Ok(party),
        }),
    };
    match verdict {
        Ok(party) => {
            framed
                .send(encode(&HelloReply::Accepted {
                    node_id: me,
                    version: PROTOCOL_VERSION,
                    applied_index,
                })?)
                .await?;
            Ok(party)
        }
        Err((reason, message)) => {
            let _ = framed
                .send(encode(&HelloReply::Rejected {
                    reason,
                    message: message.clone(),
                })?)
                .await;
            Err(LinkError::Refused(message))
        }
    }
}

async fn peer_connection(
    stream: TcpStream,
    me: NodeId,
    cluster_id: &str,
    members: &[NodeId],
    max_frame: usize,
    election: Addr<ElectionActor>,
    inbound: &InboundPeers,
) -> Result<(), LinkError> {
    stream.set_nodelay(true)?;
    let mut framed = Framed::new(stream, frame_codec(MAX_HANDSHAKE_FRAME));
    let Party::Peer { node_id: peer } = accept_handshake(&mut framed, me, cluster_id, true, members, 0).await? else {
        return Err(LinkError::Refused("not a peer".into()));
    };
    framed.codec_mut().set_max_frame_length(max_frame);
    debug!(peer, "peer connected");
    let (generation, replaced) = inbound.register(peer);
    let result = read_peer_frames(&mut framed, me, peer, &election, replaced).await;
    inbound.unregister(peer, generation);
    result
}

async fn read_peer_frames(
    framed: &mut Framed<TcpStream, FrameCodec>,
    me: NodeId,
    peer: NodeId,
    election: &Addr<ElectionActor>,
    mut replaced: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), LinkError> {
    loop {
        let frame = tokio::select! {
            _ = &mut replaced => {
                info!(peer, "peer connection replaced by a newer one from the same node");
                return Ok(());
            }
            frame = framed.next() => frame,
        };
        let Some(frame) = frame else {
            return Ok(());
        };
        let envelope: PeerEnvelope = decode(&frame?)?;
        if envelope.from != peer || envelope.to != me {
            warn!(
                peer,
                from = envelope.from,
                to = envelope.to,
                "peer message with a forged sender or wrong recipient: closing"
            );
            return Err(LinkError::Refused("forged sender".into()));
        }
        // Waits until the ElectionActor has handled it: one message in flight
        // per link, so a fast or hostile peer is slowed by TCP's own flow
        // control instead of filling the actor's mailbox without bound.
        if election.send(PeerInbound(envelope)).await.is_err() {
            return Err(LinkError::Closed);
        }
    }
}

/// The in-flight allowance of one client connection: a slot of its own
/// (at most [`CLIENT_IN_FLIGHT`]) and one of the node's ([`NODE_IN_FLIGHT`])
/// per request. Every node slot taken is given back, when the request's
/// answer is written or, for requests never answered, when the connection ends.
struct InFlight {
    node: Arc<Semaphore>,
    connection: Semaphore,
    /// Node slots this connection holds.
    held: std::sync::atomic::AtomicUsize,
}

impl InFlight {
    fn new(node: Arc<Semaphore>) -> InFlight {
        InFlight {
            node,
            connection: Semaphore::new(CLIENT_IN_FLIGHT),
            held: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Waits for a slot for one more request; false once the node is shutting down.
    async fn take(&self) -> bool {
        let Ok(own) = self.connection.acquire().await else {
            return false;
        };
        let Ok(node) = self.node.acquire().await else {
            return false;
        };
        own.forget();
        node.forget();
        self.held.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        true
    }

    /// Gives back the slots of `answered` requests (never more than are held:
    /// an answer to no request, such as a framing error, returns nothing).
    fn give_back(&self, answered: usize) {
        use std::sync::atomic::Ordering;
        let previous = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held - held.min(answered))
            })
            .unwrap_or_default();
        let returned = previous.min(answered);
        self.connection.add_permits(returned);
        self.node.add_permits(returned);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Requests whose answers were never written: their node slots go back.
        self.node.add_permits(*self.held.get_mut());
    }
}

/// Accepts client connections and hands their requests to the ClientGateway.
pub async fn serve_clients(
    listener: TcpListener,
    me: NodeId,
    cluster_id: String,
    view: SharedView,
    gateway: Addr<ClientGateway>,
) {
    let node_in_flight = Arc::new(Semaphore::new(NODE_IN_FLIGHT));
    accept_loop(listener, "client", MAX_CLIENT_CONNECTIONS, |stream, remote| {
        let (cluster_id, view, gateway) = (cluster_id.clone(), view.clone(), gateway.clone());
        let in_flight = Arc::new(InFlight::new(node_in_flight.clone()));
        async move {
            match client_connection(stream, me, &cluster_id, &view, gateway, in_flight).await {
                Ok(()) => debug!(%remote, "client disconnected"),
                Err(e) => info!(%remote, "client connection closed: {e}"),
            }
        }
    })
    .await
}

async fn client_connection(
    stream: TcpStream,
    me: NodeId,
    cluster_id: &str,
    view: &SharedView,
    gateway: Addr<ClientGateway>,
    in_flight: Arc<InFlight>,
) -> Result<(), LinkError> {
    stream.set_nodelay(true)?;
    let mut framed = Framed::new(stream, frame_codec(MAX_HANDSHAKE_FRAME));
    accept_handshake(&mut framed, me, cluster_id, false, &[], view.applied()).await?;
    framed.codec_mut().set_max_frame_length(MAX_CLIENT_FRAME);
    let (mut sink, mut frames) = framed.split();
    let (reply, mut replies) = mpsc::channel::<ClientResponse>(CLIENT_IN_FLIGHT + 16);
    let writer_permits = in_flight.clone();
    let writer = actix::spawn(async move {
        while let Some(response) = replies.recv().await {
            let bytes: Bytes = match encode(&response) {
                Ok(bytes) => bytes,
                Err(e) => {
                    warn!("response could not be encoded: {e}");
                    continue;
                }
            };
            let mut result = sink.feed(bytes).await;
            let mut answered = 1;
            while let (Ok(()), Ok(more)) = (&result, replies.try_recv()) {
                answered += 1;
                result = match encode(&more) {
                    Ok(bytes) => sink.feed(bytes).await,
                    Err(_) => Ok(()),
                };
            }
            writer_permits.give_back(answered);
            if result.is_err() || SinkExt::<Bytes>::flush(&mut sink).await.is_err() {
                break;
            }
        }
    });
    let outcome = loop {
        let Some(frame) = frames.next().await else { break Ok(()) };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                // The framing is lost (e.g. an oversized frame): say why, then close.
                let message = format!("bad frame: {e}");
                let _ = reply
                    .send(ClientResponse {
                        id: 0,
                        result: Err(ClientError::Malformed {
                            message: message.clone(),
                        }),
                    })
                    .await;
                break Err(LinkError::Refused(message));
            }
        };
        if !in_flight.take().await {
            break Ok(());
        }
        match decode::<ClientRequest>(&frame) {
            Ok(request) => gateway.do_send(ClientCall {
                request,
                reply: reply.clone(),
            }),
            Err(e) => {
                // The frame boundary is intact, so the connection can go on.
                let _ = reply.try_send(ClientResponse {
                    id: 0,
                    result: Err(ClientError::Malformed { message: e.to_string() }),
                });
            }
        }
    };
    drop(reply);
    let _ = writer.await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_connections_share_the_node_in_flight_bound_and_give_every_slot_back() {
        let node = Arc::new(Semaphore::new(3));
        let first = InFlight::new(node.clone());
        let second = InFlight::new(node.clone());
        assert!(first.take().await && first.take().await && second.take().await);
        assert_eq!(node.available_permits(), 0);
        // The node's bound holds across connections: a fourth request waits.
        let waiting = tokio::time::timeout(Duration::from_millis(50), second.take()).await;
        assert!(waiting.is_err(), "a request past the node's bound must wait");

        // An answer to no request (a framing error) gives nothing back.
        first.give_back(3);
        assert_eq!(node.available_permits(), 2);
        assert_eq!(first.connection.available_permits(), CLIENT_IN_FLIGHT);
        first.give_back(1);
        assert_eq!(node.available_permits(), 2);

        // A connection that ends with a request unanswered returns its slot.
        drop(second);
        assert_eq!(node.available_permits(), 3);
        drop(first);
        assert_eq!(node.available_permits(), 3);
    }

    #[tokio::test]
    async fn one_connection_is_bounded_by_its_own_slots() {
        let node = Arc::new(Semaphore::new(NODE_IN_FLIGHT));
        let connection = InFlight::new(node.clone());
        for _ in 0..CLIENT_IN_FLIGHT {
            assert!(connection.take().await);
        }
        let waiting = tokio::time::timeout(Duration::from_millis(50), connection.take()).await;
        assert!(
            waiting.is_err(),
            "request {} of one connection must wait",
            CLIENT_IN_FLIGHT + 1
        );
        assert_eq!(node.available_permits(), NODE_IN_FLIGHT - CLIENT_IN_FLIGHT);
        connection.give_back(1);
        assert!(connection.take().await);
    }
}
