//! The inside of one kvs node.
//!
//! - [`raft`]: Raft's rules as a pure state machine (no I/O, no clock).
//! - [`storage`]: the write-ahead log and the state store trait with its embedded engine.
//! - [`state`]: the replicated state machine (key-value map and exactly-once sessions).
//! - the five actors, one per file: [`election`], [`heartbeat`], [`log`], [`commit`], [`gateway`],
//!   talking only through the messages in [`messages`].
//! - [`recovery`]: rebuilding a node from its disk at start-up.

pub mod commit;
pub mod election;
pub mod gateway;
pub mod heartbeat;
pub mod log;
pub mod messages;
pub mod raft;
pub mod recovery;
pub mod snapshot;
pub mod state;
pub mod storage;

pub use commit::CommitActor;
pub use election::{ElectionActor, ElectionLinks};
pub use gateway::ClientGateway;
pub use heartbeat::HeartbeatActor;
pub use log::LogActor;
