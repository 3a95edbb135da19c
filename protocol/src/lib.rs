//! The kvs wire format, shared by nodes and clients.
//!
//! Everything that crosses a socket is defined here: the handshake, client
//! requests and responses, the messages nodes exchange, how they are encoded
//! (MessagePack through rmp-serde, maps with field names) and how they are
//! framed (a 4-byte big-endian length before every message). This crate knows
//! nothing of actors or sockets; `WIRE.md` beside it is the description for
//! someone writing a client in another language.

#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod handshake;
pub mod limits;
pub mod peer;

pub use client::{ClientError, ClientRequest, ClientResponse, NodeStatus, Operation, Reply, Role, Session};
pub use codec::{decode, encode, frame_codec, WireError};
pub use handshake::{Hello, HelloReply, Party, RejectReason, MAGIC, PROTOCOL_VERSION};
pub use limits::{MAX_LOG_INDEX, MAX_SNAPSHOT_BYTES, MAX_SNAPSHOT_CHUNK, MAX_TERM, SNAPSHOT_CHUNK_BYTES};
pub use peer::{
    AppendEntries, AppendResponse, Command, Entry, InstallSnapshot, OutOfBounds, PeerEnvelope, PeerMessage,
    PreVoteResponse, SnapshotChunk, SnapshotChunkAck, SnapshotResponse, TermProbe, TermProbeReply, VoteRequest,
    VoteResponse,
};

/// A node's identity within its cluster (the `id` of a `[[nodes]]` entry).
pub type NodeId = u64;
/// A Raft term.
pub type Term = u64;
/// A position in the replicated log; the first entry has index 1, 0 means "none".
pub type LogIndex = u64;
