//! Messages between nodes: Raft's RPCs plus what trimming and reads need.

use serde::{Deserialize, Serialize};

use crate::{LogIndex, NodeId, Session, Term};

/// A state-machine command carried by a log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Appended by every new leader so it can commit an entry of its own term.
    Noop,
    Put {
        key: String,
        value: String,
        session: Option<Session>,
    },
    Delete {
        key: String,
        session: Option<Session>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub index: LogIndex,
    pub term: Term,
    /// The gateway's id for the client request that caused the entry (0 for none),
    /// so one write can be followed through every node's traces.
    pub request_id: u64,
    pub command: Command,
}

/// Every peer message carries its sender and the sender's current term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEnvelope {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub message: PeerMessage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    RequestVote {
        last_log_index: LogIndex,
        last_log_term: Term,
    },
    VoteResponse {
        granted: bool,
    },
    /// Replication and heartbeat. `read_round` numbers the leader's read
    /// confirmations; `trim_to` is the index every node may drop its log up to.
    AppendEntries {
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
        read_round: u64,
        trim_to: LogIndex,
        /// The recipient's incarnation as the leader last heard it (0: not yet).
        #[serde(default)]
        follower_incarnation: u64,
    },
    /// On success `match_index` is the last index known to equal the leader's;
    /// on failure `hint` is where the follower suggests the leader retries.
    AppendResponse {
        success: bool,
        match_index: LogIndex,
        hint: LogIndex,
        read_round: u64,
        flushed_index: LogIndex,
        /// The sender's incarnation: it grows at every process start, so the
        /// leader can drop answers from before a restart (0: unknown).
        #[serde(default)]
        incarnation: u64,
    },
    /// The whole state store as of `last_index`, for a node whose missing
    /// entries the leader has already trimmed.
    InstallSnapshot {
        last_index: LogIndex,
        last_term: Term,
        data: Vec<u8>,
        read_round: u64,
    },
    SnapshotResponse {
        last_index: LogIndex,
        read_round: u64,
        /// As in `AppendResponse`.
        #[serde(default)]
        incarnation: u64,
    },
    /// From a node that lost durable state (its write-ahead log's tail was
    /// cut at restart): which term is the cluster in? Every node answers.
    /// `incarnation` and `round` name the question, so that an answer to an
    /// older one is never taken for an answer to this one.
    TermProbe {
        incarnation: u64,
        round: u64,
    },
    /// The answer to `TermProbe`, echoing its names: the sender's term is the
    /// envelope's; `recovering` says the sender is itself recovering from lost state.
    TermProbeReply {
        incarnation: u64,
        round: u64,
        recovering: bool,
    },
}
