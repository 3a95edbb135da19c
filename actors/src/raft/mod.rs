//! Raft's rules as a pure core (no I/O, no clock), and the in-memory log it reasons about.

mod core;
mod log;
mod quorum;

pub use self::core::{CoreConfig, HardState, RaftCore, ReadId, Ready, SnapshotToInstall};
pub use self::log::{encoded_size_estimate, MemLog};

#[cfg(test)]
mod tests;
