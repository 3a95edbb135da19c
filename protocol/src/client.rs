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
    pub client_id: u64,
    pub seq: u64,
    pub acked_below: u64,
    /// A log index below every entry of this session: an applied index the
    /// client heard of before it sent the session's first write. A node that
    /// does not know the session accepts it as new only if no session active
    /// after this point has been evicted (then this one cannot have been).
    /// `None` in entries written before floors existed (protocol version 1).
    #[serde(default)]
    pub floor: Option<LogIndex>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: String,
        session: Option<Session>,
    },
    Delete {
        key: String,
        session: Option<Session>,
    },
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    pub id: u64,
    pub op: Operation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Follower,
    Candidate,
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
    pub node_id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader_id: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub flushed_index: LogIndex,
    pub log_first_index: LogIndex,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The value read, or the old value a put or delete replaced (None: there was none).
    Value(Option<String>),
    Status(NodeStatus),
}

/// Typed failures a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClientError {
    #[error("this node is not the leader (leader: {leader_addr:?})")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("key is {len} bytes, more than the limit of {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value is {len} bytes, more than the limit of {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("key must not be empty")]
    EmptyKey,
    #[error("malformed request: {message}")]
    Malformed { message: String },
    #[error(
        "leadership changed before the write was committed; it may or may not be applied, retry with the same session"
    )]
    OutcomeUnknown,
    /// The write was not applied now; an earlier attempt of it may have been.
    /// A new session may start from `applied_index` (its `floor`).
    #[error("the exactly-once session of this write has expired")]
    SessionExpired { applied_index: LogIndex },
    /// The session already has `max` writes whose answers the client has not
    /// acknowledged; this one was not applied.
    #[error("the exactly-once session has {max} unacknowledged writes")]
    SessionBacklogFull { max: u64 },
    #[error("cluster unavailable: {message}")]
    Unavailable { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientResponse {
    pub id: u64,
    pub result: Result<Reply, ClientError>,
}
