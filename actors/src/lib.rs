//! The inside of one kvs node, around the consensus core (the `consensus` crate).
//!
//! - [`storage`]: the write-ahead log, the state store contract and its two
//!   engines (redb, MongoDB), and the file trait faults are injected through.
//! - [`state`]: the replicated state machine (key-value map and exactly-once sessions).
//! - the five actors, one per file: [`election`], [`heartbeat`], [`log`], [`commit`], [`gateway`],
//!   talking only through the messages in [`messages`].
//! - [`startup`]: rebuilding a node from its disk at start-up.
//! - [`runtime`]: how a node stops when it cannot go on safely.

#![warn(missing_docs)]

pub mod commit;
pub mod election;
pub mod gateway;
pub mod heartbeat;
pub mod log;
pub mod messages;
pub mod runtime;
pub mod snapshot;
pub mod startup;
pub mod state;
pub mod storage;

pub use commit::CommitActor;
pub use election::{ElectionActor, ElectionLinks};
pub use gateway::ClientGateway;
pub use heartbeat::HeartbeatActor;
pub use log::LogActor;
