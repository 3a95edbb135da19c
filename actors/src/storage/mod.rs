//! Durable storage of one node: the write-ahead log of the replicated log, and
//! the state store behind one trait.

pub mod mongo_store;
pub mod redb_store;
pub mod wal;

use std::collections::HashMap;

use protocol::{LogIndex, Term};

pub use mongo_store::{MongoConfig, MongoStore};
pub use redb_store::RedbStore;
pub use wal::{Recovered, Wal, WalError, WalRecord};

/// The key-value map, ordered by key. A persistent map: a clone shares the
/// whole tree and costs O(1), so a snapshot of millions of keys is taken
/// without stopping the actor that owns the map, and encoded elsewhere.
pub type KvMap = imbl::OrdMap<String, String>;

/// Everything a state store holds durably.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredState {
    /// The last log entry whose effect is included.
    pub applied_index: LogIndex,
    pub applied_term: Term,
    pub data: KvMap,
    /// The exactly-once session table, encoded by the state machine (opaque here).
    pub sessions: Vec<u8>,
}

/// The changes applied since the last flush, written atomically with the new applied point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushBatch {
    pub applied_index: LogIndex,
    pub applied_term: Term,
    pub upserts: Vec<(String, String)>,
    pub deletes: Vec<String>,
    pub sessions: Vec<u8>,
}

impl FlushBatch {
    /// Folds a newer batch into this (older, unwritten) one: the newer change of a key wins.
    pub fn then(self, newer: FlushBatch) -> FlushBatch {
        let mut changes: HashMap<String, Option<String>> = HashMap::new();
        for batch in [self, newer.clone()] {
            changes.extend(batch.upserts.into_iter().map(|(k, v)| (k, Some(v))));
            changes.extend(batch.deletes.into_iter().map(|k| (k, None)));
        }
        let mut merged = FlushBatch {
            applied_index: newer.applied_index,
            applied_term: newer.applied_term,
            sessions: newer.sessions,
            ..FlushBatch::default()
        };
        for (key, value) in changes {
            match value {
                Some(value) => merged.upserts.push((key, value)),
                None => merged.deletes.push(key),
            }
        }
        merged
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("state store engine failed: {0}")]
    Engine(String),
    #[error("state store holds corrupt data: {0}")]
    Corrupt(String),
}

/// A node's state store. Every method is durable when it returns Ok: a crash
/// afterwards loses nothing it wrote, and a crash during it leaves the
/// previous state intact (each call is one atomic transaction).
pub trait Store: Send + 'static {
    /// Reads everything back (at start-up).
    fn load(&mut self) -> Result<StoredState, StoreError>;
    /// Applies one batch of changes together with its applied point.
    fn flush(&mut self, batch: &FlushBatch) -> Result<(), StoreError>;
    /// Replaces the whole content (installing a snapshot).
    fn replace(&mut self, state: &StoredState) -> Result<(), StoreError>;
}
