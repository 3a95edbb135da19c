//! The inside of one kvs node.
//!
//! - [`raft`]: Raft's rules as a pure state machine (no I/O, no clock).
//! - [`storage`]: the write-ahead log and the state store trait with its embedded engine.
//! - the five actors, one per file, that run the core and own the node's state.

pub mod raft;
// pub mod storage; (being written)
