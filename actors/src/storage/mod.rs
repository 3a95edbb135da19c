//! Durable storage of one node: the write-ahead log of the replicated log, and
//! the state store behind one trait.

pub mod disk;
pub mod mongo_store;
pub mod redb_store;
pub mod wal;

use std::collections::{BTreeMap, HashMap};

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
    /// The term of that entry.
    pub applied_term: Term,
    /// Every key and its value.
    pub data: KvMap,
    /// The exactly-once session table.
    pub sessions: StoredSessions,
}

/// The exactly-once session table as a store keeps it: one row per client,
/// encoded by the state machine (opaque here), so that a flush writes only
/// the sessions that changed, never the whole table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredSessions {
    /// Each client's session, by client id.
    pub rows: BTreeMap<u64, Vec<u8>>,
    /// The state machine's eviction watermark (an applied index).
    pub evicted_through: LogIndex,
    /// The whole table as one blob, as versions before per-client rows wrote
    /// it; empty otherwise. When it is not empty it is the table (`rows` and
    /// `evicted_through` are then empty): the state machine reads it and its
    /// first flush rewrites it as rows, removing the blob in the same atomic step.
    pub legacy_table: Vec<u8>,
}

impl StoredState {
    /// Refuses to install a state that carries a blob-era session table: a
    /// replace writes sessions only as rows, so the blob would be lost.
    pub fn check_replaceable(&self) -> Result<(), StoreError> {
        if self.sessions.legacy_table.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Engine(
                "a replacing state carries a blob-era session table; only rows are written".into(),
            ))
        }
    }

    /// What a store holds after it flushed `batch` over this state: the
    /// contract every [`Store::flush`] keeps, and the model its tests check against.
    pub fn absorb(&mut self, batch: &FlushBatch) {
        self.applied_index = batch.applied_index;
        self.applied_term = batch.applied_term;
        for (key, value) in &batch.upserts {
            self.data.insert(key.clone(), value.clone());
        }
        for key in &batch.deletes {
            self.data.remove(key);
        }
        let sessions = &mut self.sessions;
        sessions.rows.extend(batch.session_upserts.iter().cloned());
        for id in &batch.session_deletes {
            sessions.rows.remove(id);
        }
        sessions.evicted_through = batch.evicted_through;
        // A flush writes the table as rows: the blob of an older version is gone.
        sessions.legacy_table.clear();
    }
}

/// The changes applied since the last flush, written atomically with the new applied point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlushBatch {
    /// The last entry whose effect the batch includes; recorded with the changes.
    pub applied_index: LogIndex,
    /// The term of that entry.
    pub applied_term: Term,
    /// Keys written since the last flush, with their current values.
    pub upserts: Vec<(String, String)>,
    /// Keys removed since the last flush.
    pub deletes: Vec<String>,
    /// Sessions changed since the last flush (their whole new row), and
    /// sessions forgotten since then.
    pub session_upserts: Vec<(u64, Vec<u8>)>,
    /// Clients whose sessions were forgotten since the last flush.
    pub session_deletes: Vec<u64>,
    /// The state machine's eviction watermark as of `applied_index`.
    pub evicted_through: LogIndex,
}

impl FlushBatch {
    /// Folds a newer batch into this (older, unwritten) one: the newer change of a key wins.
    pub fn then(self, newer: FlushBatch) -> FlushBatch {
        let mut merged = FlushBatch {
            applied_index: newer.applied_index,
            applied_term: newer.applied_term,
            evicted_through: newer.evicted_through,
            ..FlushBatch::default()
        };
        let mut changes: HashMap<String, Option<String>> = HashMap::new();
        let mut session_changes: HashMap<u64, Option<Vec<u8>>> = HashMap::new();
        for batch in [self, newer] {
            changes.extend(batch.upserts.into_iter().map(|(k, v)| (k, Some(v))));
            changes.extend(batch.deletes.into_iter().map(|k| (k, None)));
            session_changes.extend(batch.session_upserts.into_iter().map(|(id, row)| (id, Some(row))));
            session_changes.extend(batch.session_deletes.into_iter().map(|id| (id, None)));
        }
        (merged.upserts, merged.deletes) = split_changes(changes);
        (merged.session_upserts, merged.session_deletes) = split_changes(session_changes);
        merged
    }
}

/// Splits changes into the writes and the removals.
fn split_changes<K, V>(changes: HashMap<K, Option<V>>) -> (Vec<(K, V)>, Vec<K>) {
    let mut writes = Vec::new();
    let mut removals = Vec::new();
    for (key, value) in changes {
        match value {
            Some(value) => writes.push((key, value)),
            None => removals.push(key),
        }
    }
    (writes, removals)
}

/// Why a state store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation of the store failed.
    #[error("state store I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The engine (redb or MongoDB) reported an error, or the store refused the operation.
    #[error("state store engine failed: {0}")]
    Engine(String),
    /// The store holds data that does not decode, or that belongs to another node.
    #[error("state store holds corrupt data: {0}")]
    Corrupt(String),
}

/// A node's state store. The contract both engines keep, checked by one
/// suite (`integration/tests/store_contract.rs`), with [`StoredState::absorb`]
/// as its model:
///
/// - **Durable on Ok.** After `flush` or `replace` returns Ok, a `load` by a
///   new handle, after any crash, gives the model's state (or a later one).
/// - **The applied point and the sessions move together.** After a crash or
///   a failure during a call, `load` gives the applied index, term, eviction
///   watermark and sessions of the state before the call or of the state
///   after it, never a mix.
/// - **Keys may run ahead, never behind.** redb writes each call in one
///   transaction, so its keys move with the applied point. MongoDB has no
///   transaction: after a crash during a flush, keys the flush wrote may be
///   newer than the recorded applied index. That is safe because every entry
///   after that index is still in the write-ahead log (trimmed only up to
///   what a returned flush recorded), and replaying whole-value writes over
///   newer values ends in the same state (see `mongo_store.rs`).
/// - **A failed flush may be retried**, alone or merged into the next batch
///   ([`FlushBatch::then`]): every write is idempotent.
pub trait Store: Send + 'static {
    /// Reads everything back (at start-up).
    fn load(&mut self) -> Result<StoredState, StoreError>;
    /// Applies one batch of changes together with its applied point.
    fn flush(&mut self, batch: &FlushBatch) -> Result<(), StoreError>;
    /// Replaces the whole content (installing a snapshot).
    fn replace(&mut self, state: &StoredState) -> Result<(), StoreError>;
}
