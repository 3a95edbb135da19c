//! Raft's rules as a pure core: no I/O, no clock, nothing async.
//!
//! Callers (the actors crate, the deterministic simulation) feed a
//! [`RaftCore`] events and carry out the [`Ready`] it returns: what to
//! persist ([`Persist`]), what to send, what is committed, which reads are
//! safe. The crate depends on the wire types and nothing that does I/O, so
//! every rule is a unit test without sockets.

#![warn(missing_docs)]

mod core;
mod log;
mod persist;
mod quorum;

pub use self::core::{CoreConfig, HardState, RaftCore, ReadId, Ready, SnapshotToInstall};
pub use self::log::{encoded_size_estimate, MemLog};
pub use self::persist::{Persist, Rewrite};

#[cfg(test)]
mod tests;
