//! The messages the actors exchange, and the few handles they share.
//!
//! Which message carries which term: every log-changing decision is made in
//! the ElectionActor against the core's current term, so only messages that
//! leave it for later use carry a term: `AwaitApply` (the term the entry was
//! proposed in; a different entry committed at that index means the write was
//! lost) and `SnapshotTaken` (the term a snapshot was requested in; a leader
//! that has moved on drops it).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use protocol::{ClientError, Command, Entry, LogIndex, NodeId, NodeStatus, PeerEnvelope, Reply, Role, Term};
use tokio::sync::oneshot;

use crate::snapshot::DecodedSnapshot;
use crate::state::SnapshotSource;
use consensus::Persist;

/// What the node hands its actors: identities, limits and timers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's id.
    pub node_id: NodeId,
    /// The cluster's id; peers and clients must give the same one in their handshake.
    pub cluster_id: String,
    /// Every member: id and client address (for redirects).
    pub members: Vec<(NodeId, String)>,
    /// This node's own data folder (`<data_dir>/<id>`).
    pub data_dir: std::path::PathBuf,
    /// How often the CommitActor flushes applied changes to the state store
    /// (also the first wait before a failed flush is tried again).
    pub commit_interval: Duration,
    /// How often a leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// How long a follower goes without hearing a leader before it asks for
    /// pre-votes: randomized to between 1 and 1.5 times this (times at most
    /// 1 s until a first leader is heard). A leader checks every two of these
    /// that a majority still answers.
    pub election_timeout: Duration,
    /// How often a leader has the logs trimmed up to what every live node has
    /// applied and flushed.
    pub trim_interval: Duration,
    /// How long a client request may wait for its answer before it gets a timeout error.
    pub request_timeout: Duration,
    /// Longest key a client may use, in bytes.
    pub max_key_bytes: usize,
    /// Longest value a client may write, in bytes.
    pub max_value_bytes: usize,
    /// Most entries in one AppendEntries message.
    pub max_batch_entries: usize,
    /// About the most bytes of entries per AppendEntries (kept well under the peer frame limit).
    pub max_batch_bytes: usize,
    /// Most entries sent to one follower and not yet acknowledged.
    pub max_inflight_entries: u64,
}

impl Settings {
    /// Every member's id, this node's included, in configuration order.
    pub fn member_ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|(id, _)| *id).collect()
    }

    /// The address clients reach member `id` at; None if `id` is not a member.
    pub fn client_addr_of(&self, id: NodeId) -> Option<String> {
        self.members
            .iter()
            .find(|(m, _)| *m == id)
            .map(|(_, addr)| addr.clone())
    }

    /// The one "not leader" answer every actor gives: who leads, as far as
    /// this node knows (never itself), and where clients reach it.
    pub fn not_leader(&self, leader: Option<NodeId>) -> ClientError {
        let leader = leader.filter(|&id| id != self.node_id);
        ClientError::NotLeader {
            leader_id: leader,
            leader_addr: leader.and_then(|id| self.client_addr_of(id)),
        }
    }

    /// This node's `status`, from the two actors that each know half of it.
    pub fn node_status(&self, consensus: ConsensusStatus, applied: ApplyStatus) -> NodeStatus {
        NodeStatus {
            node_id: self.node_id,
            role: consensus.role,
            term: consensus.term,
            leader_id: consensus.leader_id,
            leader_addr: consensus.leader_id.and_then(|id| self.client_addr_of(id)),
            commit_index: consensus.commit_index,
            applied_index: applied.applied_index,
            flushed_index: applied.flushed_index,
            unflushed_entries: applied.applied_index.saturating_sub(applied.flushed_index),
            store_flush_failures: applied.flush_failures,
            log_first_index: consensus.log_first_index,
            log_last_index: consensus.log_last_index,
        }
    }
}

/// How actors send to peers. The node implements it over its sockets; actors
/// never see one. Sending never blocks: a message that cannot be queued is
/// dropped, which Raft tolerates (the next heartbeat repeats what matters).
pub trait PeerTransport: Send + Sync + 'static {
    /// Queues `envelope` for the peer `envelope.to`, or drops it if that cannot
    /// be done at once (queue full, peer unknown).
    fn send(&self, envelope: PeerEnvelope);
}

/// The node's current term and role, readable by every actor for its trace
/// spans, and its applied index, told to clients in the handshake.
#[derive(Debug, Default)]
pub struct NodeView {
    term: AtomicU64,
    role: AtomicU8,
    applied: AtomicU64,
}

impl NodeView {
    /// Records the ElectionActor's term and role.
    pub fn set(&self, term: Term, role: Role) {
        self.term.store(term, Ordering::Relaxed);
        let code = match role {
            Role::Follower => 0,
            Role::Candidate => 1,
            Role::Leader => 2,
        };
        self.role.store(code, Ordering::Relaxed);
    }

    /// The current term, as the ElectionActor last set it (0 until then).
    pub fn term(&self) -> Term {
        self.term.load(Ordering::Relaxed)
    }

    /// Only the CommitActor sets it, after applying.
    pub fn set_applied(&self, index: LogIndex) {
        self.applied.store(index, Ordering::Relaxed);
    }

    /// The highest applied index, as the CommitActor last set it (0 until then).
    pub fn applied(&self) -> LogIndex {
        self.applied.load(Ordering::Relaxed)
    }

    /// The current role, as the ElectionActor last set it (Follower until then).
    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Relaxed) {
            2 => Role::Leader,
            1 => Role::Candidate,
            _ => Role::Follower,
        }
    }
}

/// The one [`NodeView`] of a node, shared by its actors and its client connections.
pub type SharedView = Arc<NodeView>;

/// Where the answer to one client request goes.
pub type Responder = oneshot::Sender<Result<Reply, ClientError>>;

// ----- to the ElectionActor -----

/// A message from a peer, already decoded.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerInbound(pub PeerEnvelope);

/// A write from a client.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Propose {
    /// The write to replicate, already checked against the size limits.
    pub command: Command,
    /// The gateway's node-unique id for the request; the entry carries it, for tracing.
    pub request_id: u64,
    /// Gets the result once the entry is applied, or an error (not the leader,
    /// outcome unknown).
    pub responder: Responder,
}

/// A linearizable read from a client.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Read {
    /// The key to read, already checked against `max_key_bytes`.
    pub key: String,
    /// The gateway's node-unique id for the request, for tracing.
    pub request_id: u64,
    /// Gets the value (None: no such key) once a majority confirmed the read and
    /// its read index is applied, or a not-leader error.
    pub responder: Responder,
}

/// Timer events, sent by the HeartbeatActor.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub enum Tick {
    /// Valid only if `generation` is still the ElectionActor's current one.
    ElectionTimeout {
        /// The generation of the [`ArmElectionTimer`] that started this timer.
        generation: u64,
    },
    /// Leader only, every `heartbeat_interval`: send heartbeats.
    Heartbeat,
    /// Leader only, every two election timeouts: step down unless a majority answered.
    QuorumCheck,
    /// Leader only, every `trim_interval`: choose how far to trim the logs.
    Trim,
}

/// The WAL is durable up to this entry.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Persisted {
    /// The last entry now durable.
    pub index: LogIndex,
    /// That entry's term when written: if a different entry is at `index` now,
    /// the core ignores the notice.
    pub term: Term,
}

/// The state store has flushed everything up to this index.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Flushed(pub LogIndex);

/// Consensus-side part of `status`.
#[derive(Message)]
#[rtype(result = "ConsensusStatus")]
pub struct GetConsensusStatus;

/// What the ElectionActor knows for `status`; the CommitActor adds [`ApplyStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsensusStatus {
    /// This node's role.
    pub role: Role,
    /// This node's current term.
    pub term: Term,
    /// The leader of `term` as far as this node knows (possibly itself); None if none is known.
    pub leader_id: Option<NodeId>,
    /// The highest index known to be committed.
    pub commit_index: LogIndex,
    /// The first index after the trimmed part of the log (above `log_last_index`
    /// when the log holds no entry).
    pub log_first_index: LogIndex,
    /// The index of the log's last entry (the trim point when it holds none).
    pub log_last_index: LogIndex,
}

// ----- to the HeartbeatActor -----

/// The ElectionActor's role changed; leaders get heartbeat timers, others an election timer.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct RoleChanged {
    /// The new role.
    pub role: Role,
    /// The term of that role.
    pub term: Term,
}

/// Start the election timer over; a timeout reports `generation`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct ArmElectionTimer {
    /// Sent back in the [`Tick::ElectionTimeout`] of this timer.
    pub generation: u64,
    /// No leader has been heard since this node started: a short timeout, so
    /// a fresh cluster elects its first leader at once (safe with PreVote: a
    /// node joining a cluster that has a leader is refused and disturbs
    /// nothing). Failure detection keeps the full timeout.
    pub at_boot: bool,
}

// ----- to the LogActor -----

/// What the LogActor writes and fsyncs before the messages waiting for it
/// leave (the consensus crate's [`Persist`], taken from one `Ready`).
#[derive(Message, Debug, Default)]
#[rtype(result = "()")]
pub struct LogWrite(pub Persist);

// ----- to the CommitActor -----

/// Committed entries, in order.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Apply(pub Vec<Entry>);

/// Answer this client once the entry at `index` is applied, if it is still of `term`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AwaitApply {
    /// Where the write's entry was appended.
    pub index: LogIndex,
    /// The term it was proposed in; a different entry applied at `index` means
    /// the write was lost, and the client is told the outcome is unknown.
    pub term: Term,
    /// The gateway's node-unique id for the request, for tracing.
    pub request_id: u64,
    /// Gets the write's result once `index` is applied.
    pub responder: Responder,
}

/// A read confirmed by a majority: answer once `index` is applied.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServeRead {
    /// The key to read.
    pub key: String,
    /// The read index: the commit index a majority confirmed; the key is read
    /// once this index is applied.
    pub index: LogIndex,
    /// The gateway's node-unique id for the request, for tracing.
    pub request_id: u64,
    /// Gets the value (None: no such key).
    pub responder: Responder,
}

/// The state as of now, for a lagging follower: an O(1) copy, encoded and
/// streamed elsewhere (see [`crate::snapshot`]).
#[derive(Message)]
#[rtype(result = "SnapshotSource")]
pub struct TakeSnapshot;

/// Replace the state machine and the state store by a snapshot (decoded off
/// the actor thread), durably, before answering.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct InstallSnapshot {
    /// The snapshot's applied index, as the leader's seal gives it; the decoded
    /// state must be at the same point.
    pub index: LogIndex,
    /// The term of the entry at `index`, checked the same way.
    pub term: Term,
    /// The decoded state, for the state machine and for the store.
    pub snapshot: DecodedSnapshot,
}

/// The CommitActor's part of `status`.
#[derive(Message)]
#[rtype(result = "ApplyStatus")]
pub struct GetApplyStatus;

/// What the CommitActor knows for `status`; the ElectionActor adds [`ConsensusStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStatus {
    /// The last entry applied to the state machine.
    pub applied_index: LogIndex,
    /// The last applied index the state store holds durably.
    pub flushed_index: LogIndex,
    /// State-store flushes failed in a row (0: the store is healthy).
    pub flush_failures: u64,
}

// ----- to the ClientGateway -----

/// Who leads now, for redirects.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct LeaderChanged {
    /// The leader of `term` as far as this node knows (its own id if it leads);
    /// None if none is known.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: Term,
    /// This node's role; only a leader takes reads and writes.
    pub role: Role,
}

/// One request from one client connection; the answer goes to `reply`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientCall {
    /// The request as decoded from the connection.
    pub request: protocol::ClientRequest,
    /// The connection's answer channel. Answers carry the request's `id`; one
    /// that finds the channel full (a client not reading) is dropped.
    pub reply: tokio::sync::mpsc::Sender<protocol::ClientResponse>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            node_id: 1,
            cluster_id: "test".into(),
            members: vec![(1, "127.0.0.1:7001".into()), (2, "127.0.0.1:7002".into())],
            data_dir: "data/1".into(),
            commit_interval: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(5),
            election_timeout: Duration::from_secs(8),
            trim_interval: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            max_key_bytes: 1024,
            max_value_bytes: 1024,
            max_batch_entries: 64,
            max_batch_bytes: 1 << 20,
            max_inflight_entries: 1024,
        }
    }

    #[test]
    fn not_leader_names_another_leader_never_this_node() {
        let settings = settings();
        let named = |leader_id: Option<NodeId>, addr: Option<&str>| ClientError::NotLeader {
            leader_id,
            leader_addr: addr.map(String::from),
        };
        assert_eq!(settings.not_leader(Some(2)), named(Some(2), Some("127.0.0.1:7002")));
        assert_eq!(settings.not_leader(Some(1)), named(None, None));
        assert_eq!(settings.not_leader(None), named(None, None));
        // A leader id this node has no address for is still named.
        assert_eq!(settings.not_leader(Some(9)), named(Some(9), None));
    }

    #[test]
    fn status_takes_each_half_from_its_actor() {
        let consensus = ConsensusStatus {
            role: Role::Follower,
            term: 7,
            leader_id: Some(2),
            commit_index: 40,
            log_first_index: 31,
            log_last_index: 42,
        };
        let applied = ApplyStatus {
            applied_index: 38,
            flushed_index: 30,
            flush_failures: 3,
        };
        let status = settings().node_status(consensus, applied);
        assert_eq!(
            status,
            NodeStatus {
                node_id: 1,
                role: Role::Follower,
                term: 7,
                leader_id: Some(2),
                leader_addr: Some("127.0.0.1:7002".into()),
                commit_index: 40,
                applied_index: 38,
                flushed_index: 30,
                log_first_index: 31,
                log_last_index: 42,
                unflushed_entries: 8,
                store_flush_failures: 3,
            }
        );
    }
}
