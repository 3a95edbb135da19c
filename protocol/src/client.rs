//! Messages between a client and any node's client port.
//!
//! A client may send many requests on one connection without waiting; each
//! response carries the `id` of its request and may arrive out of order.

use serde::{Deserialize, Serialize};

use crate::{LogIndex, NodeId, Term};

/// Exactly-once identity of a write: the state machine remembers the outcome of
/// each `(client_id, seq)` until the client says (through `acked_below`) that it
/// has seen every answer below that sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session's id, chosen at random by the client.
    pub client_id: u64,
    /// The write's number within the session: 1, 2, 3, ...
    pub seq: u64,
    /// The lowest `seq` whose answer the client has not received yet (the next
    /// `seq` if none is outstanding); the cluster may forget answers below it.
    pub acked_below: u64,
    /// A log index below every entry of this session: an applied index the
    /// client heard of before it sent the session's first write. A node that
    /// does not know the session accepts it as new only if no session active
    /// after this point has been evicted (then this one cannot have been).
    /// `None` in entries written before floors existed (protocol version 1).
    #[serde(default)]
    pub floor: Option<LogIndex>,
}

/// What a client asks a node to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// Read the value of `key`, through the leader (linearizable).
    Get {
        /// The key to read.
        key: String,
    },
    /// Store `value` under `key`; answered with the value it replaced.
    Put {
        /// The key to write.
        key: String,
        /// The value to store.
        value: String,
        /// The write's exactly-once identity; `None` applies the write each time it arrives.
        session: Option<Session>,
    },
    /// Remove `key`; answered with the value it had.
    Delete {
        /// The key to remove.
        key: String,
        /// The write's exactly-once identity; `None` applies the write each time it arrives.
        session: Option<Session>,
    },
    /// The receiving node's own [`NodeStatus`]; any node answers, no redirect.
    Status,
}

/// One request on a client connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// Chosen by the client; the response carries it back, so answers may come
    /// out of order (0 is the id of the answer to an undecodable frame).
    pub id: u64,
    /// What to do.
    pub op: Operation,
}

/// A node's role in Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader, or waits for one (also while asking for pre-votes).
    Follower,
    /// Asks for votes to lead a new term.
    Candidate,
    /// Leads its term: takes writes and serves reads.
    Leader,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}

/// What `status` tells about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The answering node's id.
    pub node_id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader of its term as far as it knows, possibly itself (None: none known).
    pub leader_id: Option<NodeId>,
    /// The client address (`host:port`) of `leader_id`, from the cluster configuration.
    pub leader_addr: Option<String>,
    /// The highest log index it knows to be committed.
    pub commit_index: LogIndex,
    /// The highest log index its state machine has applied.
    pub applied_index: LogIndex,
    /// The highest applied index written to its state store.
    pub flushed_index: LogIndex,
    /// The index of the first entry in its log; the ones before were trimmed or
    /// replaced by a snapshot (one above `log_last_index` when the log holds none).
    pub log_first_index: LogIndex,
    /// The index of the last entry in its log, committed or not.
    pub log_last_index: LogIndex,
    /// Applied entries not yet written to the state store (they are in the log):
    /// `applied_index - flushed_index`. Grows while the store is unreachable.
    /// Absent from older nodes' answers, hence the default.
    #[serde(default)]
    pub unflushed_entries: u64,
    /// State-store flushes failed in a row (0 when the store is healthy).
    #[serde(default)]
    pub store_flush_failures: u64,
}

/// The successful answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The value read, or the old value a put or delete replaced (None: there was none).
    Value(Option<String>),
    /// The answering node's status, for `Operation::Status`.
    Status(NodeStatus),
}

/// Typed failures a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClientError {
    /// This node does not lead: send the request to the leader. Not applied.
    #[error("this node is not the leader (leader: {leader_addr:?})")]
    NotLeader {
        /// The leader this node knows of, never itself (None: not known, as during an election).
        leader_id: Option<NodeId>,
        /// The leader's client address (`host:port`), if known.
        leader_addr: Option<String>,
    },
    /// The key is longer than the cluster's `max_key_bytes`. Not applied.
    #[error("key is {len} bytes, more than the limit of {max}")]
    KeyTooLarge {
        /// The key's length, in bytes.
        len: usize,
        /// The cluster's limit, in bytes.
        max: usize,
    },
    /// The value is longer than the cluster's `max_value_bytes`. Not applied.
    #[error("value is {len} bytes, more than the limit of {max}")]
    ValueTooLarge {
        /// The value's length, in bytes.
        len: usize,
        /// The cluster's limit, in bytes.
        max: usize,
    },
    /// The key is empty. Not applied.
    #[error("key must not be empty")]
    EmptyKey,
    /// The request is not valid (an undecodable frame, or a request that makes no
    /// sense). Not applied.
    #[error("malformed request: {message}")]
    Malformed {
        /// What is wrong, for people.
        message: String,
    },
    /// The node lost track of the write before its outcome was known (leadership
    /// changed, or no outcome within the node's request timeout): it may or may
    /// not be applied. Retry with the same session.
    #[error(
        "leadership changed before the write was committed; it may or may not be applied, retry with the same session"
    )]
    OutcomeUnknown,
    /// The write was not applied now; an earlier attempt of it may have been.
    /// A new session may start from `applied_index` (its `floor`).
    #[error("the exactly-once session of this write has expired")]
    SessionExpired {
        /// The node's applied index: the `floor` for a new session.
        applied_index: LogIndex,
    },
    /// The session already has `max` writes whose answers the client has not
    /// acknowledged; this one was not applied.
    #[error("the exactly-once session has {max} unacknowledged writes")]
    SessionBacklogFull {
        /// The most unacknowledged writes a session may have.
        max: u64,
    },
    /// The node cannot serve the request now (a read not confirmed in time, the
    /// node shutting down): retry later or elsewhere.
    #[error("cluster unavailable: {message}")]
    Unavailable {
        /// Why, for people.
        message: String,
    },
}

/// The answer to one [`ClientRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientResponse {
    /// The `id` of the request answered (0 when its frame could not be decoded).
    pub id: u64,
    /// The reply, or why the request failed.
    pub result: Result<Reply, ClientError>,
}
