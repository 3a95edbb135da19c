//! Messages between nodes: Raft's RPCs plus what trimming and reads need.

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_LOG_INDEX, MAX_SNAPSHOT_BYTES, MAX_SNAPSHOT_CHUNK, MAX_TERM};
use crate::{LogIndex, NodeId, Session, Term};

/// A state-machine command carried by a log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Appended by every new leader so it can commit an entry of its own term.
    Noop,
    /// Store `value` under `key`.
    Put {
        /// The key written.
        key: String,
        /// The value stored.
        value: String,
        /// The client's exactly-once session for this write, if it sent one.
        session: Option<Session>,
    },
    /// Remove `key`.
    Delete {
        /// The key removed.
        key: String,
        /// The client's exactly-once session for this write, if it sent one.
        session: Option<Session>,
    },
}

/// One entry of the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its position in the log (the first entry is 1).
    pub index: LogIndex,
    /// The term of the leader that appended it.
    pub term: Term,
    /// The gateway's id for the client request that caused the entry (0 for none),
    /// so one write can be followed through every node's traces.
    pub request_id: u64,
    /// What applying it does.
    pub command: Command,
}

/// Every peer message carries its sender and the sender's current term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEnvelope {
    /// The sending node.
    pub from: NodeId,
    /// The node it is meant for; any other node ignores it.
    pub to: NodeId,
    /// The sender's current term (for a `PreVote`, the term it proposes).
    pub term: Term,
    /// The message itself.
    pub message: PeerMessage,
}

/// What one node says to another. Each message is a named struct of its own,
/// so a handler takes one value, not its fields one by one. The encoding is
/// that of the struct variants these replaced, byte for byte
/// (`tests/wire_golden.rs` pins it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Vote for me in the envelope's term.
    RequestVote(VoteRequest),
    /// The answer to a `RequestVote`.
    VoteResponse(VoteResponse),
    /// Would you vote for me in the envelope's term (Raft thesis 9.6)? Changes
    /// nothing on either side: no term is raised and no vote is spent, so a
    /// node cut off from the others cannot depose a healthy leader when it
    /// returns. The envelope's term is the term the sender proposes.
    PreVote(VoteRequest),
    /// The answer to a `PreVote`.
    PreVoteResponse(PreVoteResponse),
    /// Entries for a follower to append, from the leader; none in a heartbeat.
    AppendEntries(AppendEntries),
    /// The answer to an `AppendEntries` (and the refusal of a stale snapshot message).
    AppendResponse(AppendResponse),
    /// One piece of a snapshot the leader streams to a follower.
    SnapshotChunk(SnapshotChunk),
    /// The answer to a `SnapshotChunk`.
    SnapshotChunkAck(SnapshotChunkAck),
    /// The leader's seal on a fully streamed snapshot: install it.
    InstallSnapshot(InstallSnapshot),
    /// The answer to an `InstallSnapshot`.
    SnapshotResponse(SnapshotResponse),
    /// Which term is the cluster in? From a node recovering from lost durable state.
    TermProbe(TermProbe),
    /// The answer to a `TermProbe`.
    TermProbeReply(TermProbeReply),
}

/// A vote or pre-vote request: where the candidate's log ends, for Raft's
/// up-to-date check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    /// The index of the last entry in the candidate's log.
    pub last_log_index: LogIndex,
    /// The term of the last entry in the candidate's log.
    pub last_log_term: Term,
}

/// The answer to a `RequestVote`, in the envelope's term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    /// Whether the vote was given.
    pub granted: bool,
}

/// The answer to the `PreVote` for `term`; the envelope's term is the
/// answering node's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    /// The term the pre-candidate proposed.
    pub term: Term,
    /// Whether the answering node would vote for the sender in that term.
    pub granted: bool,
}

/// Replication and heartbeat. `read_round` numbers the leader's read
/// confirmations; `trim_to` is the index every node may drop its log up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries {
    /// The index of the entry just before `entries` in the leader's log.
    pub prev_log_index: LogIndex,
    /// The term of that entry, for the follower's consistency check.
    pub prev_log_term: Term,
    /// The entries after `prev_log_index`, one by one.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
    /// The leader's current read-confirmation round (0: none started in its term).
    pub read_round: u64,
    /// The index every node may drop its log up to (each no further than its
    /// own state store has flushed).
    pub trim_to: LogIndex,
    /// The recipient's incarnation as the leader last heard it (0: not yet).
    #[serde(default)]
    pub follower_incarnation: u64,
}

/// On success `match_index` is the last index known to equal the leader's;
/// on failure `hint` is where the follower suggests the leader retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    /// Whether the follower's log matched at `prev_log_index` and took the entries.
    pub success: bool,
    /// On success, the last index known to equal the leader's log; 0 on failure.
    pub match_index: LogIndex,
    /// On failure, the index to retry from (0: no suggestion, the refusal only
    /// tells a stale leader the newer term); 0 on success.
    pub hint: LogIndex,
    /// The leader's read round this answers.
    pub read_round: u64,
    /// How far the sender's state store has applied and flushed (for trimming).
    pub flushed_index: LogIndex,
    /// The sender's incarnation: it grows at every process start, so the
    /// leader can drop answers from before a restart (0: unknown).
    #[serde(default)]
    pub incarnation: u64,
}

/// One piece of the snapshot (the whole state as of `last_index`) that the
/// leader streams to a node whose missing entries it has already trimmed.
/// Pieces are placed by byte offset; the follower keeps only the piece it
/// expects next and answers every piece with a `SnapshotChunkAck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The index the snapshot's state is applied up to; names the snapshot.
    pub last_index: LogIndex,
    /// The term of the entry at `last_index`.
    pub last_term: Term,
    /// Where `data` starts in the snapshot.
    pub offset: u64,
    /// The piece's bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The follower holds the first `next_offset` bytes of snapshot `last_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunkAck {
    /// The snapshot acknowledged (its `last_index`).
    pub last_index: LogIndex,
    /// The snapshot's `last_term`.
    pub last_term: Term,
    /// How many bytes of the snapshot the follower holds (0: none, the leader starts over).
    pub next_offset: u64,
}

/// The streamed snapshot is complete: `bytes` long, with CRC-32 `checksum`
/// over all of it. The follower installs it if what it holds matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshot {
    /// The index the snapshot's state is applied up to.
    pub last_index: LogIndex,
    /// The term of the entry at `last_index`.
    pub last_term: Term,
    /// The snapshot's total length, in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the whole snapshot.
    pub checksum: u32,
    /// The leader's current read round, as in `AppendEntries`.
    pub read_round: u64,
}

/// The follower holds the state up to `last_index`, durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResponse {
    /// The index up to which the follower now holds the state.
    pub last_index: LogIndex,
    /// The read round of the `InstallSnapshot` answered.
    pub read_round: u64,
    /// As in `AppendResponse`.
    #[serde(default)]
    pub incarnation: u64,
}

/// From a node that lost durable state (its write-ahead log's tail was
/// cut at restart): which term is the cluster in? Every node answers.
/// `incarnation` and `round` name the question, so that an answer to an
/// older one is never taken for an answer to this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermProbe {
    /// The sender's incarnation (see `AppendResponse::incarnation`).
    pub incarnation: u64,
    /// The probe's round within that incarnation: a new one at each election timeout.
    pub round: u64,
}

/// The answer to `TermProbe`, echoing its names: the sender's term is the
/// envelope's; `recovering` says the sender is itself recovering from lost state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermProbeReply {
    /// The `incarnation` of the probe answered.
    pub incarnation: u64,
    /// The `round` of the probe answered.
    pub round: u64,
    /// Whether the sender is itself recovering from lost durable state.
    pub recovering: bool,
}

/// A peer message carrying a term or an index no honest node can send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value} is beyond the limit of {limit}")]
pub struct OutOfBounds {
    /// The name of the field that is out of bounds.
    pub field: &'static str,
    /// The value it had.
    pub value: u64,
    /// The largest value allowed.
    pub limit: u64,
}

fn within(field: &'static str, value: u64, limit: u64) -> Result<(), OutOfBounds> {
    if value > limit {
        return Err(OutOfBounds { field, value, limit });
    }
    Ok(())
}

impl PeerEnvelope {
    /// Checks every term against [`MAX_TERM`] and every log index against
    /// [`MAX_LOG_INDEX`], so that no arithmetic on them can overflow.
    pub fn check_bounds(&self) -> Result<(), OutOfBounds> {
        let term = |field, value| within(field, value, MAX_TERM);
        let index = |field, value| within(field, value, MAX_LOG_INDEX);
        term("term", self.term)?;
        match &self.message {
            PeerMessage::RequestVote(vote) | PeerMessage::PreVote(vote) => {
                index("last_log_index", vote.last_log_index)?;
                term("last_log_term", vote.last_log_term)
            }
            PeerMessage::AppendEntries(append) => {
                index("prev_log_index", append.prev_log_index)?;
                term("prev_log_term", append.prev_log_term)?;
                index("leader_commit", append.leader_commit)?;
                index("trim_to", append.trim_to)?;
                append.entries.iter().try_for_each(|entry| {
                    index("entry index", entry.index)?;
                    term("entry term", entry.term)
                })
            }
            PeerMessage::AppendResponse(response) => {
                index("match_index", response.match_index)?;
                index("hint", response.hint)?;
                index("flushed_index", response.flushed_index)
            }
            PeerMessage::InstallSnapshot(seal) => {
                index("last_index", seal.last_index)?;
                term("last_term", seal.last_term)?;
                within("bytes", seal.bytes, MAX_SNAPSHOT_BYTES)
            }
            PeerMessage::SnapshotChunk(chunk) => {
                index("last_index", chunk.last_index)?;
                term("last_term", chunk.last_term)?;
                within("chunk length", chunk.data.len() as u64, MAX_SNAPSHOT_CHUNK as u64)?;
                // Both are bounded now, so the sum cannot overflow.
                within("offset", chunk.offset, MAX_SNAPSHOT_BYTES)?;
                within("chunk end", chunk.offset + chunk.data.len() as u64, MAX_SNAPSHOT_BYTES)
            }
            PeerMessage::SnapshotChunkAck(ack) => {
                index("last_index", ack.last_index)?;
                term("last_term", ack.last_term)?;
                within("next_offset", ack.next_offset, MAX_SNAPSHOT_BYTES)
            }
            PeerMessage::SnapshotResponse(response) => index("last_index", response.last_index),
            PeerMessage::PreVoteResponse(response) => term("proposed term", response.term),
            PeerMessage::VoteResponse(_) | PeerMessage::TermProbe(_) | PeerMessage::TermProbeReply(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::SNAPSHOT_CHUNK_BYTES;

    fn envelope(term: Term, message: PeerMessage) -> PeerEnvelope {
        PeerEnvelope {
            from: 1,
            to: 2,
            term,
            message,
        }
    }

    #[test]
    fn terms_and_indexes_beyond_the_limits_are_refused() {
        let vote = |term, last_log_index, last_log_term| {
            envelope(
                term,
                PeerMessage::RequestVote(VoteRequest {
                    last_log_index,
                    last_log_term,
                }),
            )
            .check_bounds()
        };
        assert_eq!(vote(MAX_TERM, MAX_LOG_INDEX, MAX_TERM), Ok(()));
        assert_eq!(vote(u64::MAX, 0, 0).unwrap_err().field, "term");
        assert_eq!(vote(1, MAX_LOG_INDEX + 1, 0).unwrap_err().field, "last_log_index");
        assert_eq!(vote(1, 0, MAX_TERM + 1).unwrap_err().field, "last_log_term");

        let entry = |index, term| Entry {
            index,
            term,
            request_id: 0,
            command: Command::Noop,
        };
        let append = |entries| {
            envelope(
                1,
                PeerMessage::AppendEntries(AppendEntries {
                    prev_log_index: 0,
                    prev_log_term: 0,
                    entries,
                    leader_commit: 0,
                    read_round: u64::MAX,
                    trim_to: 0,
                    follower_incarnation: u64::MAX,
                }),
            )
            .check_bounds()
        };
        assert_eq!(append(vec![entry(1, 1)]), Ok(()));
        assert_eq!(
            append(vec![entry(1, 1), entry(u64::MAX, 1)]).unwrap_err().field,
            "entry index"
        );
        assert_eq!(append(vec![entry(1, u64::MAX)]).unwrap_err().field, "entry term");
        let snapshot = |last_index, bytes| {
            envelope(
                1,
                PeerMessage::InstallSnapshot(InstallSnapshot {
                    last_index,
                    last_term: 1,
                    bytes,
                    checksum: 0,
                    read_round: 0,
                }),
            )
            .check_bounds()
        };
        assert_eq!(snapshot(u64::MAX, 0).unwrap_err().field, "last_index");
        assert_eq!(snapshot(1, MAX_SNAPSHOT_BYTES + 1).unwrap_err().field, "bytes");
        let chunk = |offset, len| {
            envelope(
                1,
                PeerMessage::SnapshotChunk(SnapshotChunk {
                    last_index: 1,
                    last_term: 1,
                    offset,
                    data: vec![0; len],
                }),
            )
            .check_bounds()
        };
        assert_eq!(chunk(0, SNAPSHOT_CHUNK_BYTES), Ok(()));
        assert_eq!(chunk(0, MAX_SNAPSHOT_CHUNK + 1).unwrap_err().field, "chunk length");
        assert_eq!(chunk(u64::MAX, 1).unwrap_err().field, "offset");
        assert_eq!(chunk(MAX_SNAPSHOT_BYTES, 1).unwrap_err().field, "chunk end");
    }

    #[test]
    fn snapshot_chunks_travel_as_bytes_not_arrays_of_integers() {
        let chunk = PeerMessage::SnapshotChunk(SnapshotChunk {
            last_index: 1,
            last_term: 1,
            offset: 0,
            data: vec![0xff; 4096],
        });
        let encoded = rmp_serde::to_vec(&chunk).unwrap();
        // A MessagePack integer array would take two bytes per 0xff byte.
        assert!(encoded.len() < 4096 + 64, "{} bytes", encoded.len());
        assert_eq!(rmp_serde::from_slice::<PeerMessage>(&encoded).unwrap(), chunk);
    }
}
