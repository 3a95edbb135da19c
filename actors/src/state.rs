//! The replicated state machine: the key-value map and the exactly-once session table.
//!
//! Applying the same committed entries in the same order gives the same state
//! on every node; nothing here reads a clock or a random number, so session
//! eviction too is the same everywhere.

use std::collections::{BTreeMap, HashMap, HashSet};

use protocol::{ClientError, Command, Entry, LogIndex, Session, Term};
use serde::{Deserialize, Serialize};

use crate::storage::{FlushBatch, StoredState};

/// Most client sessions remembered; the least recently used is forgotten first.
pub const MAX_SESSIONS: usize = 50_000;

/// What applying one entry answered.
pub type ApplyResult = Result<Option<String>, ClientError>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClientSession {
    /// Answers of writes at or above `acked_below`, by sequence number.
    results: BTreeMap<u64, Option<String>>,
    acked_below: u64,
    /// Log index of the last write of this client (for eviction order).
    last_index: LogIndex,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("snapshot or session table could not be decoded: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("snapshot could not be encoded: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// The snapshot format sent to lagging followers.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotImage {
    applied_index: LogIndex,
    applied_term: Term,
    data: HashMap<String, String>,
    sessions: HashMap<u64, ClientSession>,
}

#[derive(Debug, Default)]
pub struct StateMachine {
    data: HashMap<String, String>,
    sessions: HashMap<u64, ClientSession>,
    applied_index: LogIndex,
    applied_term: Term,
    /// Keys changed since the last flush.
    dirty: HashSet<String>,
    sessions_dirty: bool,
}

impl StateMachine {
    pub fn from_stored(stored: StoredState) -> Result<Self, StateError> {
        let sessions = if stored.sessions.is_empty() {
            HashMap::new()
        } else {
            rmp_serde::from_slice(&stored.sessions)?
        };
        Ok(StateMachine {
            data: stored.data,
            sessions,
            applied_index: stored.applied_index,
            applied_term: stored.applied_term,
            dirty: HashSet::new(),
            sessions_dirty: false,
        })
    }

    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    pub fn applied_term(&self) -> Term {
        self.applied_term
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.data.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Applies one committed entry. Entries at or below the applied index are
    /// ignored (they are already in the state, e.g. after a snapshot).
    pub fn apply(&mut self, entry: &Entry) -> Option<ApplyResult> {
        if entry.index <= self.applied_index {
            return None;
        }
        self.applied_index = entry.index;
        self.applied_term = entry.term;
        let result = match &entry.command {
            Command::Noop => Ok(None),
            Command::Put { key, value, session } => self.exactly_once(*session, entry.index, |data, dirty| {
                dirty.insert(key.clone());
                data.insert(key.clone(), value.clone())
            }),
            Command::Delete { key, session } => self.exactly_once(*session, entry.index, |data, dirty| {
                dirty.insert(key.clone());
                data.remove(key)
            }),
        };
        Some(result)
    }

    fn exactly_once(
        &mut self,
        session: Option<Session>,
        index: LogIndex,
        write: impl FnOnce(&mut HashMap<String, String>, &mut HashSet<String>) -> Option<String>,
    ) -> ApplyResult {
        let Some(session) = session else {
            return Ok(write(&mut self.data, &mut self.dirty));
        };
        self.sessions_dirty = true;
        let known = self.sessions.contains_key(&session.client_id);
        if !known && session.acked_below > 1 {
            // The client has history we no longer remember: we cannot tell whether
            // this write was applied before, so we must not apply it again.
            return Err(ClientError::SessionExpired);
        }
        if !known {
            self.evict_if_full();
        }
        let record = self.sessions.entry(session.client_id).or_default();
        record.last_index = index;
        if session.acked_below > record.acked_below {
            record.acked_below = session.acked_below;
            // The client has its answers below `acked_below`: forget them.
            while let Some(first) = record.results.first_entry() {
                if *first.key() >= session.acked_below {
                    break;
                }
                first.remove();
            }
        }
        if session.seq < record.acked_below {
            return Err(ClientError::SessionExpired);
        }
        if let Some(previous) = record.results.get(&session.seq) {
            return Ok(previous.clone());
        }
        let old = write(&mut self.data, &mut self.dirty);
        if let Some(record) = self.sessions.get_mut(&session.client_id) {
            record.results.insert(session.seq, old.clone());
        }
        Ok(old)
    }

    fn evict_if_full(&mut self) {
        if self.sessions.len() < MAX_SESSIONS {
            return;
        }
        let oldest = self
            .sessions
            .iter()
            .min_by_key(|(id, s)| (s.last_index, **id))
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.sessions.remove(&id);
        }
    }

    /// The changes since the last call, or None if nothing changed and the
    /// applied point is still `last_flushed` (no-ops move the applied point too).
    pub fn take_flush_batch(&mut self, last_flushed: LogIndex) -> Result<Option<FlushBatch>, StateError> {
        if self.dirty.is_empty() && !self.sessions_dirty && self.applied_index == last_flushed {
            return Ok(None);
        }
        let mut batch = FlushBatch {
            applied_index: self.applied_index,
            applied_term: self.applied_term,
            sessions: rmp_serde::to_vec(&self.sessions)?,
            ..FlushBatch::default()
        };
        for key in self.dirty.drain() {
            match self.data.get(&key) {
                Some(value) => batch.upserts.push((key, value.clone())),
                None => batch.deletes.push(key),
            }
        }
        self.sessions_dirty = false;
        Ok(Some(batch))
    }

    /// The whole state, for a lagging follower.
    pub fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        let image = SnapshotImageRef {
            applied_index: self.applied_index,
            applied_term: self.applied_term,
            data: &self.data,
            sessions: &self.sessions,
        };
        Ok(rmp_serde::to_vec(&image)?)
    }

    /// Decodes a snapshot into the state it describes, as the store should hold it.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<StoredState, StateError> {
        let image: SnapshotImage = rmp_serde::from_slice(bytes)?;
        Ok(StoredState {
            applied_index: image.applied_index,
            applied_term: image.applied_term,
            data: image.data,
            sessions: rmp_serde::to_vec(&image.sessions)?,
        })
    }
}

/// Borrowing twin of `SnapshotImage`, so taking a snapshot copies the map once (into bytes).
#[derive(Serialize)]
struct SnapshotImageRef<'a> {
    applied_index: LogIndex,
    applied_term: Term,
    data: &'a HashMap<String, String>,
    sessions: &'a HashMap<u64, ClientSession>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(index: LogIndex, key: &str, value: &str, session: Option<Session>) -> Entry {
        Entry {
            index,
            term: 1,
            request_id: 0,
            command: Command::Put {
                key: key.into(),
                value: value.into(),
                session,
            },
        }
    }

    fn session(client_id: u64, seq: u64, acked_below: u64) -> Option<Session> {
        Some(Session {
            client_id,
            seq,
            acked_below,
        })
    }

    #[test]
    fn put_and_delete_return_the_old_value() {
        let mut sm = StateMachine::default();
        assert_eq!(sm.apply(&put(1, "a", "1", None)), Some(Ok(None)));
        assert_eq!(sm.apply(&put(2, "a", "2", None)), Some(Ok(Some("1".into()))));
        let delete = Entry {
            index: 3,
            term: 1,
            request_id: 0,
            command: Command::Delete {
                key: "a".into(),
                session: None,
            },
        };
        assert_eq!(sm.apply(&delete), Some(Ok(Some("2".into()))));
        assert_eq!(sm.get("a"), None);
        assert_eq!(sm.applied_index(), 3);
    }

    #[test]
    fn a_retried_write_is_applied_once_and_returns_the_first_answer() {
        let mut sm = StateMachine::default();
        sm.apply(&put(1, "k", "old", None));
        assert_eq!(
            sm.apply(&put(2, "k", "new", session(9, 1, 1))),
            Some(Ok(Some("old".into())))
        );
        // The same write again (a retry after a failover) at a later index.
        sm.apply(&put(3, "k", "other", None));
        assert_eq!(
            sm.apply(&put(4, "k", "new", session(9, 1, 1))),
            Some(Ok(Some("old".into())))
        );
        assert_eq!(sm.get("k").as_deref(), Some("other"), "the retry changed nothing");
    }

    #[test]
    fn answers_are_forgotten_once_acknowledged() {
        let mut sm = StateMachine::default();
        sm.apply(&put(1, "k", "a", session(9, 1, 1)));
        sm.apply(&put(2, "k", "b", session(9, 2, 2)));
        assert_eq!(
            sm.apply(&put(3, "k", "c", session(9, 1, 2))),
            Some(Err(ClientError::SessionExpired))
        );
        assert_eq!(sm.get("k").as_deref(), Some("b"));
    }

    #[test]
    fn an_unknown_session_with_history_is_refused() {
        let mut sm = StateMachine::default();
        assert_eq!(
            sm.apply(&put(1, "k", "a", session(5, 7, 7))),
            Some(Err(ClientError::SessionExpired))
        );
        assert_eq!(sm.get("k"), None);
    }

    #[test]
    fn entries_already_applied_are_skipped() {
        let mut sm = StateMachine::default();
        sm.apply(&put(1, "k", "a", None));
        assert_eq!(sm.apply(&put(1, "k", "b", None)), None);
        assert_eq!(sm.get("k").as_deref(), Some("a"));
    }

    #[test]
    fn snapshot_carries_data_sessions_and_applied_point() {
        let mut sm = StateMachine::default();
        sm.apply(&put(1, "k", "a", session(3, 1, 1)));
        let stored = StateMachine::decode_snapshot(&sm.snapshot().unwrap()).unwrap();
        let mut copy = StateMachine::from_stored(stored).unwrap();
        assert_eq!(copy.applied_index(), 1);
        assert_eq!(copy.get("k").as_deref(), Some("a"));
        // The session survived: a retry is not applied again.
        assert_eq!(copy.apply(&put(2, "k", "b", session(3, 1, 1))), Some(Ok(None)));
        assert_eq!(copy.get("k").as_deref(), Some("a"));
    }

    #[test]
    fn flush_batches_hold_only_changes() {
        let mut sm = StateMachine::default();
        sm.apply(&put(1, "a", "1", None));
        sm.apply(&put(2, "b", "1", None));
        let batch = sm.take_flush_batch(0).unwrap().unwrap();
        assert_eq!(batch.applied_index, 2);
        assert_eq!(batch.upserts.len(), 2);
        assert!(sm.take_flush_batch(2).unwrap().is_none());
        let noop = Entry {
            index: 3,
            term: 2,
            request_id: 0,
            command: Command::Noop,
        };
        sm.apply(&noop);
        let batch = sm.take_flush_batch(2).unwrap().unwrap();
        assert_eq!((batch.applied_index, batch.upserts.len()), (3, 0));
    }
}
