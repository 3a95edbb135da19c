//! The replicated state machine: the key-value map and the exactly-once session table.
//!
//! Applying the same committed entries in the same order gives the same state
//! on every node; nothing here reads a clock or a random number, so session
//! eviction too is the same everywhere.
//!
//! Sessions. A write carrying a [`Session`] is applied once per
//! `(client_id, seq)`: its answer is remembered until the client acknowledges
//! it (`acked_below`), and a retry gets the remembered answer. The table is
//! bounded ([`MAX_SESSIONS`] sessions, [`MAX_SESSION_BYTES`] of answers, at
//! most [`MAX_SESSION_BACKLOG`] unacknowledged answers per session); past the
//! bounds the least recently active session is forgotten, and
//! `evicted_through` keeps the highest log index at which any forgotten
//! session was active. Safety argument: a write of a session that is not in
//! the table is accepted as the start of a new session only if its `floor`
//! (an applied index the client heard of before the session's first write,
//! so below every entry of the session) is at or above `evicted_through`. A
//! session that had been applied and then forgotten was active at an index
//! above its floor, which made `evicted_through` exceed that floor: so its late
//! retries are refused (`SessionExpired`), never applied a second time.
//!
//! Entries written before sessions had a floor (`floor: None`, protocol
//! version 1) are applied by that version's rule, unchanged, so that a node
//! replaying them after the upgrade ends where a node that applied them
//! before it did: an unknown session with `acked_below > 1` is refused, the
//! table is bounded by count only, and the watermark does not move.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use protocol::{ClientError, Command, Entry, LogIndex, Session, Term};
use serde::{Deserialize, Serialize};

use crate::storage::{FlushBatch, KvMap, StoredSessions, StoredState};

/// Most client sessions remembered; the least recently active is forgotten first.
pub const MAX_SESSIONS: usize = 50_000;
/// Most bytes of remembered answers, over all sessions (each answer counts
/// its value's length plus `ANSWER_OVERHEAD`). Small enough that the whole
/// table stays cheap to copy into a snapshot.
/// These bounds are replicated rules: changing one changes what a replayed
/// entry does, so they change only with the protocol version.
pub const MAX_SESSION_BYTES: usize = 8 << 20;
/// Most unacknowledged answers one session may hold: a write with
/// `seq >= acked_below + MAX_SESSION_BACKLOG` is refused, not applied.
pub const MAX_SESSION_BACKLOG: u64 = 1024;
/// What one remembered answer costs besides its value, for [`MAX_SESSION_BYTES`].
const ANSWER_OVERHEAD: usize = 32;

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

fn answer_bytes(answer: &Option<String>) -> usize {
    answer.as_ref().map_or(0, String::len) + ANSWER_OVERHEAD
}

impl ClientSession {
    fn bytes(&self) -> usize {
        self.results.values().map(answer_bytes).sum()
    }
}

/// The session table as versions before per-client rows persisted it (one blob).
#[derive(Debug, Default, Deserialize)]
struct SessionTable {
    sessions: HashMap<u64, ClientSession>,
    evicted_through: LogIndex,
}

/// Why a snapshot or a session table could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A snapshot, a session row or a blob-era session table did not decode.
    #[error("snapshot or session table could not be decoded: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A snapshot or a session row could not be encoded.
    #[error("snapshot could not be encoded: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// The snapshot format sent to lagging followers: one MessagePack value,
/// streamed (its bytes are cut into chunks by the transfer, not here).
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotImage {
    applied_index: LogIndex,
    applied_term: Term,
    data: KvMap,
    sessions: HashMap<u64, ClientSession>,
    #[serde(default)]
    evicted_through: LogIndex,
}

/// The key-value map, the session table and the applied point. Only
/// [`StateMachine::apply`] changes its content; a snapshot replaces it whole.
#[derive(Debug, Default)]
pub struct StateMachine {
    data: KvMap,
    sessions: HashMap<u64, ClientSession>,
    /// `(last_index, client_id)` of every session: the eviction order.
    by_activity: BTreeSet<(LogIndex, u64)>,
    /// Bytes of remembered answers over all sessions.
    session_bytes: usize,
    /// The highest log index at which a forgotten session was active.
    evicted_through: LogIndex,
    applied_index: LogIndex,
    applied_term: Term,
    /// Keys changed since the last flush.
    dirty: HashSet<String>,
    /// Sessions changed or forgotten since the last flush.
    dirty_sessions: HashSet<u64>,
}

/// Decodes a session table persisted as one blob (before per-client rows);
/// tables written before the eviction watermark existed are a bare map of sessions.
fn decode_legacy_table(bytes: &[u8]) -> Result<SessionTable, StateError> {
    match rmp_serde::from_slice::<SessionTable>(bytes) {
        Ok(table) => Ok(table),
        Err(_) => Ok(SessionTable {
            sessions: rmp_serde::from_slice(bytes)?,
            evicted_through: 0,
        }),
    }
}

impl StateMachine {
    /// The state machine of what a store loaded. A blob-era session table is
    /// marked to be rewritten as rows by the first flush.
    pub fn from_stored(stored: StoredState) -> Result<Self, StateError> {
        let legacy = !stored.sessions.legacy_table.is_empty();
        let stale_rows: Vec<u64> = if legacy {
            stored.sessions.rows.keys().copied().collect()
        } else {
            Vec::new()
        };
        let table = if legacy {
            decode_legacy_table(&stored.sessions.legacy_table)?
        } else {
            let mut sessions = HashMap::with_capacity(stored.sessions.rows.len());
            for (id, row) in &stored.sessions.rows {
                sessions.insert(*id, rmp_serde::from_slice::<ClientSession>(row)?);
            }
            SessionTable {
                sessions,
                evicted_through: stored.sessions.evicted_through,
            }
        };
        let mut state = StateMachine::from_parts((stored.applied_index, stored.applied_term), stored.data, table);
        if legacy {
            // The first flush rewrites the blob as one row per session, and
            // deletes any row beside it (left by a newer version before a
            // downgrade wrote the blob again): the blob is the table.
            state.dirty_sessions = state.sessions.keys().copied().collect();
            state.dirty_sessions.extend(stale_rows);
        }
        Ok(state)
    }

    fn from_parts(applied: (LogIndex, Term), data: KvMap, table: SessionTable) -> Self {
        let by_activity = table.sessions.iter().map(|(id, s)| (s.last_index, *id)).collect();
        let session_bytes = table.sessions.values().map(ClientSession::bytes).sum();
        StateMachine {
            data,
            sessions: table.sessions,
            by_activity,
            session_bytes,
            evicted_through: table.evicted_through,
            applied_index: applied.0,
            applied_term: applied.1,
            dirty: HashSet::new(),
            dirty_sessions: HashSet::new(),
        }
    }

    /// The last entry applied (0: none).
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    /// The term of that entry (0: none).
    pub fn applied_term(&self) -> Term {
        self.applied_term
    }

    /// The value of `key`; None if there is no such key.
    pub fn get(&self, key: &str) -> Option<String> {
        self.data.get(key).cloned()
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// How many sessions are remembered, and the eviction watermark.
    pub fn session_count(&self) -> (usize, LogIndex) {
        (self.sessions.len(), self.evicted_through)
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
        write: impl FnOnce(&mut KvMap, &mut HashSet<String>) -> Option<String>,
    ) -> ApplyResult {
        let Some(session) = session else {
            return Ok(write(&mut self.data, &mut self.dirty));
        };
        let expired = Err(ClientError::SessionExpired {
            applied_index: self.applied_index,
        });
        let id = session.client_id;
        if !self.sessions.contains_key(&id) {
            match session.floor {
                // Written before floors existed (an entry from before the
                // upgrade, replayed from a log): the rule of that version,
                // unchanged, so that every node applies it the same way.
                None => {
                    if session.acked_below > 1 {
                        return expired;
                    }
                    if self.sessions.len() >= MAX_SESSIONS {
                        self.evict_oldest(None, false);
                    }
                }
                Some(floor) => {
                    if floor < self.evicted_through {
                        // A session forgotten after it was active above this
                        // floor could be this one: the write may have been
                        // applied before.
                        return expired;
                    }
                    // A refused first write leaves no session behind, so
                    // requests cannot grow the table past its bounds.
                    if session.seq < session.acked_below {
                        return expired;
                    }
                    if session.seq >= session.acked_below.saturating_add(MAX_SESSION_BACKLOG) {
                        return Err(ClientError::SessionBacklogFull {
                            max: MAX_SESSION_BACKLOG,
                        });
                    }
                }
            }
            self.sessions.insert(id, ClientSession::default());
            self.by_activity.insert((0, id));
        }
        self.dirty_sessions.insert(id);
        let Some(record) = self.sessions.get_mut(&id) else {
            return expired;
        };
        self.by_activity.remove(&(record.last_index, id));
        record.last_index = index;
        self.by_activity.insert((index, id));
        if session.acked_below > record.acked_below {
            record.acked_below = session.acked_below;
            // The client has its answers below `acked_below`: forget them.
            while let Some(first) = record.results.first_entry() {
                if *first.key() >= session.acked_below {
                    break;
                }
                self.session_bytes = self.session_bytes.saturating_sub(answer_bytes(&first.remove()));
            }
        }
        if session.seq < record.acked_below {
            return expired;
        }
        if let Some(previous) = record.results.get(&session.seq) {
            return Ok(previous.clone());
        }
        let bounded = session.floor.is_some();
        if bounded && session.seq >= record.acked_below.saturating_add(MAX_SESSION_BACKLOG) {
            return Err(ClientError::SessionBacklogFull {
                max: MAX_SESSION_BACKLOG,
            });
        }
        let old = write(&mut self.data, &mut self.dirty);
        self.session_bytes = self.session_bytes.saturating_add(answer_bytes(&old));
        record.results.insert(session.seq, old.clone());
        if bounded {
            while self.sessions.len() > MAX_SESSIONS || self.session_bytes > MAX_SESSION_BYTES {
                if !self.evict_oldest(Some(id), true) {
                    break;
                }
            }
        }
        Ok(old)
    }

    /// Forgets the least recently active session other than `keep` (the one
    /// just active); with `raise_watermark`, records where it was last active.
    /// Returns whether there was one to forget.
    fn evict_oldest(&mut self, keep: Option<u64>, raise_watermark: bool) -> bool {
        let Some(&(last_index, id)) = self.by_activity.iter().find(|(_, id)| Some(*id) != keep) else {
            return false;
        };
        self.by_activity.remove(&(last_index, id));
        if let Some(evicted) = self.sessions.remove(&id) {
            self.session_bytes = self.session_bytes.saturating_sub(evicted.bytes());
        }
        self.dirty_sessions.insert(id);
        if raise_watermark {
            self.evicted_through = self.evicted_through.max(last_index);
        }
        true
    }

    /// The changes since the last call, or None if nothing changed and the
    /// applied point is still `last_flushed` (no-ops move the applied point
    /// too). Only the sessions that changed are encoded, each on its own.
    pub fn take_flush_batch(&mut self, last_flushed: LogIndex) -> Result<Option<FlushBatch>, StateError> {
        if self.dirty.is_empty() && self.dirty_sessions.is_empty() && self.applied_index == last_flushed {
            return Ok(None);
        }
        let mut batch = FlushBatch {
            applied_index: self.applied_index,
            applied_term: self.applied_term,
            evicted_through: self.evicted_through,
            ..FlushBatch::default()
        };
        for key in self.dirty.drain() {
            match self.data.get(&key) {
                Some(value) => batch.upserts.push((key, value.clone())),
                None => batch.deletes.push(key),
            }
        }
        for id in self.dirty_sessions.drain() {
            match self.sessions.get(&id) {
                Some(session) => batch.session_upserts.push((id, rmp_serde::to_vec(session)?)),
                None => batch.session_deletes.push(id),
            }
        }
        Ok(Some(batch))
    }

    /// The whole state as of now, for a lagging follower: the key-value map
    /// is shared, not copied (O(1)); the session table (bounded by
    /// [`MAX_SESSION_BYTES`]) is copied. Encode it with
    /// [`SnapshotSource::encode_into`], on another thread.
    pub fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource(SnapshotImage {
            applied_index: self.applied_index,
            applied_term: self.applied_term,
            data: self.data.clone(),
            sessions: self.sessions.clone(),
            evicted_through: self.evicted_through,
        })
    }

    /// Decodes a snapshot, read as a stream, into the state machine it
    /// describes and the state the store should hold (sharing one map).
    pub fn read_snapshot(reader: impl std::io::Read) -> Result<(StateMachine, StoredState), StateError> {
        let image: SnapshotImage = rmp_serde::decode::from_read(reader)?;
        let mut rows = BTreeMap::new();
        for (id, session) in &image.sessions {
            rows.insert(*id, rmp_serde::to_vec(session)?);
        }
        let stored = StoredState {
            applied_index: image.applied_index,
            applied_term: image.applied_term,
            data: image.data.clone(),
            sessions: StoredSessions {
                rows,
                evicted_through: image.evicted_through,
                legacy_table: Vec::new(),
            },
        };
        let table = SessionTable {
            sessions: image.sessions,
            evicted_through: image.evicted_through,
        };
        let state = StateMachine::from_parts((image.applied_index, image.applied_term), image.data, table);
        Ok((state, stored))
    }
}

/// The state at one applied point, detached from the state machine.
#[derive(Debug)]
pub struct SnapshotSource(SnapshotImage);

impl SnapshotSource {
    /// The last entry the snapshot includes.
    pub fn applied_index(&self) -> LogIndex {
        self.0.applied_index
    }

    /// The term of that entry.
    pub fn applied_term(&self) -> Term {
        self.0.applied_term
    }

    /// Writes the snapshot's bytes (what [`StateMachine::read_snapshot`] reads) to `out`.
    pub fn encode_into(&self, out: &mut impl std::io::Write) -> Result<(), StateError> {
        Ok(rmp_serde::encode::write(out, &self.0)?)
    }
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
        session_from(client_id, seq, acked_below, 0)
    }

    fn session_from(client_id: u64, seq: u64, acked_below: u64, floor: LogIndex) -> Option<Session> {
        Some(Session {
            client_id,
            seq,
            acked_below,
            floor: Some(floor),
        })
    }

    /// A session as written before floors existed (protocol version 1).
    fn legacy(client_id: u64, seq: u64, acked_below: u64) -> Option<Session> {
        Some(Session {
            client_id,
            seq,
            acked_below,
            floor: None,
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
            Some(Err(ClientError::SessionExpired { applied_index: 3 }))
        );
        assert_eq!(sm.get("k").as_deref(), Some("b"));
    }

    #[test]
    fn an_unknown_session_whose_first_writes_never_arrived_is_accepted() {
        // Writes 1 to 6 were refused before the log (too large, no leader...):
        // the session is new here however far its client has counted.
        let mut sm = StateMachine::default();
        assert_eq!(sm.apply(&put(1, "k", "a", session(5, 7, 7))), Some(Ok(None)));
        assert_eq!(sm.get("k").as_deref(), Some("a"));
    }

    /// Applies one write for each of `count` fresh sessions, from index `from`.
    fn crowd(sm: &mut StateMachine, from: LogIndex, count: u64) -> LogIndex {
        for n in 0..count {
            sm.apply(&put(from + n, "crowd", "x", session(1_000_000 + from + n, 1, 1)));
        }
        from + count
    }

    #[test]
    fn a_retried_first_write_of_an_evicted_session_is_refused_not_applied_twice() {
        let mut sm = StateMachine::default();
        sm.apply(&put(1, "k", "0", None));
        // Session 7's first write is applied; its answer is lost.
        assert_eq!(
            sm.apply(&put(2, "k", "a", session(7, 1, 1))),
            Some(Ok(Some("0".into())))
        );
        sm.apply(&put(3, "k", "b", None));
        // A crowd of new clients pushes it out.
        let next = crowd(&mut sm, 4, MAX_SESSIONS as u64);
        assert_eq!(sm.session_count(), (MAX_SESSIONS, 2));
        // Its retry must not be applied again: "a" would overwrite "b".
        assert_eq!(
            sm.apply(&put(next, "k", "a", session(7, 1, 1))),
            Some(Err(ClientError::SessionExpired { applied_index: next }))
        );
        assert_eq!(sm.get("k").as_deref(), Some("b"));
        // A new session from the index the refusal named is accepted.
        assert_eq!(
            sm.apply(&put(next + 1, "k", "c", session_from(8, 1, 1, next))),
            Some(Ok(Some("b".into())))
        );
        // A session that began before an eviction and is unknown: refused too.
        assert_eq!(
            sm.apply(&put(next + 2, "k", "d", session_from(9, 1, 1, 1))),
            Some(Err(ClientError::SessionExpired {
                applied_index: next + 2
            }))
        );
    }

    #[test]
    fn refused_first_writes_leave_no_session_behind() {
        let mut sm = StateMachine::default();
        for id in 0..100 {
            // seq below its own acked_below, and seq beyond the backlog.
            assert!(matches!(
                sm.apply(&put(2 * id + 1, "k", "v", session(id, 0, 1))),
                Some(Err(ClientError::SessionExpired { .. }))
            ));
            assert!(matches!(
                sm.apply(&put(
                    2 * id + 2,
                    "k",
                    "v",
                    session(1000 + id, MAX_SESSION_BACKLOG + 1, 1)
                )),
                Some(Err(ClientError::SessionBacklogFull { .. }))
            ));
        }
        assert_eq!(sm.session_count(), (0, 0));
        assert_eq!(sm.get("k"), None);
    }

    #[test]
    fn entries_from_before_floors_keep_their_old_rule() {
        let mut sm = StateMachine::default();
        // An unknown session with history is refused, as version 1 did...
        assert!(matches!(
            sm.apply(&put(1, "k", "a", legacy(5, 7, 7))),
            Some(Err(ClientError::SessionExpired { .. }))
        ));
        // ...a fresh one is taken, retries answer once...
        assert_eq!(sm.apply(&put(2, "k", "a", legacy(6, 1, 1))), Some(Ok(None)));
        assert_eq!(sm.apply(&put(3, "k", "a", legacy(6, 1, 1))), Some(Ok(None)));
        // ...and evictions by version-1 entries do not move the watermark.
        crowd_legacy(&mut sm, 4, MAX_SESSIONS as u64);
        assert_eq!(sm.session_count(), (MAX_SESSIONS, 0));
        assert_eq!(sm.get("k").as_deref(), Some("a"));
    }

    fn crowd_legacy(sm: &mut StateMachine, from: LogIndex, count: u64) {
        for n in 0..count {
            sm.apply(&put(from + n, "crowd", "x", legacy(1_000_000 + from + n, 1, 1)));
        }
    }

    #[test]
    fn a_session_may_not_hold_more_than_its_backlog() {
        let mut sm = StateMachine::default();
        let last = MAX_SESSION_BACKLOG;
        for seq in 1..=last {
            assert_eq!(
                sm.apply(&put(seq, "k", "v", session(3, seq, 1))).map(|r| r.is_ok()),
                Some(true)
            );
        }
        assert_eq!(
            sm.apply(&put(last + 1, "k", "beyond", session(3, last + 1, 1))),
            Some(Err(ClientError::SessionBacklogFull {
                max: MAX_SESSION_BACKLOG
            }))
        );
        assert_eq!(sm.get("k").as_deref(), Some("v"), "the refused write was not applied");
        // Acknowledging the backlog makes room.
        assert_eq!(
            sm.apply(&put(last + 2, "k", "room", session(3, last + 1, last + 1))),
            Some(Ok(Some("v".into())))
        );
    }

    #[test]
    fn remembered_answers_are_bounded_in_bytes() {
        let mut sm = StateMachine::default();
        let big = "v".repeat(2048);
        // Each write remembers the previous big value as its answer.
        let writes = MAX_SESSION_BYTES / (big.len() + ANSWER_OVERHEAD) + 10;
        for n in 0..writes as u64 {
            sm.apply(&put(n + 1, "k", &big, session(n + 1, 1, 1)));
        }
        assert!(sm.session_bytes <= MAX_SESSION_BYTES, "{}", sm.session_bytes);
        let (count, watermark) = sm.session_count();
        assert!(
            count < writes && watermark > 0,
            "{count} sessions, watermark {watermark}"
        );
        // The accounting matches what is held.
        let held: usize = sm.sessions.values().map(ClientSession::bytes).sum();
        assert_eq!(held, sm.session_bytes);
    }

    #[test]
    fn the_eviction_watermark_survives_flushes_snapshots_and_old_tables() {
        let mut sm = StateMachine::default();
        let next = crowd(&mut sm, 1, MAX_SESSIONS as u64 + 1);
        let watermark = sm.session_count().1;
        assert_eq!(watermark, 1);
        let batch = sm.take_flush_batch(0).unwrap().unwrap();
        let mut stored = StoredState::default();
        stored.absorb(&batch);
        let mut reloaded = StateMachine::from_stored(stored).unwrap();
        assert_eq!(reloaded.session_count(), (MAX_SESSIONS, watermark));
        let (copy, _) = StateMachine::read_snapshot(&snapshot_bytes(&sm)[..]).unwrap();
        assert_eq!(copy.session_count(), (MAX_SESSIONS, watermark));
        // Still enforced after the reload.
        assert!(matches!(
            reloaded.apply(&put(next, "k", "v", session(4, 1, 1))),
            Some(Err(ClientError::SessionExpired { .. }))
        ));

        // A table written before the watermark existed: a bare map of sessions.
        let old: HashMap<u64, ClientSession> = HashMap::from([(
            5,
            ClientSession {
                results: BTreeMap::from([(1, Some("a".into()))]),
                acked_below: 1,
                last_index: 3,
            },
        )]);
        let stored = StoredState {
            sessions: StoredSessions {
                legacy_table: rmp_serde::to_vec(&old).unwrap(),
                ..StoredSessions::default()
            },
            ..StoredState::default()
        };
        let mut upgraded = StateMachine::from_stored(stored).unwrap();
        assert_eq!(upgraded.session_count(), (1, 0));
        assert_eq!(
            upgraded.apply(&put(4, "k", "b", session(5, 1, 1))),
            Some(Ok(Some("a".into())))
        );
    }

    /// A blob-era table with a watermark, as the previous version flushed it.
    #[derive(Serialize)]
    struct LegacyTable {
        sessions: HashMap<u64, ClientSession>,
        evicted_through: LogIndex,
    }

    #[test]
    fn a_blob_table_is_rewritten_as_rows_by_the_first_flush() {
        let mut sm = StateMachine::default();
        for id in 1..=20 {
            sm.apply(&put(id, &format!("k{id}"), "v", session(id, 1, 1)));
        }
        sm.evicted_through = 3;
        let blob = rmp_serde::to_vec(&LegacyTable {
            sessions: sm.sessions.clone(),
            evicted_through: sm.evicted_through,
        })
        .unwrap();
        let mut stored = StoredState {
            applied_index: 20,
            applied_term: 1,
            data: sm.data.clone(),
            sessions: StoredSessions {
                legacy_table: blob,
                // A row a newer version left before a downgrade wrote the blob again.
                rows: BTreeMap::from([(999, vec![0xc0])]),
                ..StoredSessions::default()
            },
        };
        let mut upgraded = StateMachine::from_stored(stored.clone()).unwrap();
        assert_eq!(upgraded.session_count(), (20, 3));
        // Nothing new was applied, yet the first flush writes every session as
        // a row, and deletes the row the blob does not hold.
        let batch = upgraded.take_flush_batch(20).unwrap().unwrap();
        assert_eq!(batch.session_upserts.len(), 20);
        assert_eq!(batch.session_deletes, [999]);
        assert_eq!(batch.evicted_through, 3);
        stored.absorb(&batch);
        assert!(stored.sessions.legacy_table.is_empty());
        assert!(upgraded.take_flush_batch(20).unwrap().is_none());
        let mut reloaded = StateMachine::from_stored(stored).unwrap();
        assert_eq!(reloaded.session_count(), (20, 3));
        assert_eq!(reloaded.sessions, sm.sessions);
        // Retries are still answered from the table, not applied again.
        assert_eq!(
            reloaded.apply(&put(21, "k7", "again", session(7, 1, 1))),
            Some(Ok(None))
        );
        assert_eq!(reloaded.get("k7").as_deref(), Some("v"));
    }

    #[test]
    fn a_flush_writes_only_the_sessions_that_changed() {
        let mut sm = StateMachine::default();
        let mut stored = StoredState::default();
        for id in 1..=1000 {
            sm.apply(&put(id, "k", "v", session(id, 1, 1)));
        }
        stored.absorb(&sm.take_flush_batch(0).unwrap().unwrap());
        assert_eq!(stored.sessions.rows.len(), 1000);

        // One session writes again; nothing else changes.
        sm.apply(&put(1001, "k", "w", session(17, 2, 2)));
        let batch = sm.take_flush_batch(1000).unwrap().unwrap();
        assert_eq!(batch.session_upserts.len(), 1);
        assert_eq!(batch.session_upserts[0].0, 17);
        assert!(batch.session_deletes.is_empty());
        stored.absorb(&batch);

        // A forgotten session is a removed row.
        crowd(&mut sm, 2000, MAX_SESSIONS as u64);
        let batch = sm.take_flush_batch(1001).unwrap().unwrap();
        assert!(!batch.session_deletes.is_empty());
        stored.absorb(&batch);
        let reloaded = StateMachine::from_stored(stored).unwrap();
        assert_eq!(reloaded.sessions, sm.sessions);
        assert_eq!(reloaded.session_count(), sm.session_count());
    }

    fn snapshot_bytes(sm: &StateMachine) -> Vec<u8> {
        let mut bytes = Vec::new();
        sm.snapshot_source().encode_into(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_truncated_or_corrupt_snapshot_is_an_error_not_a_panic() {
        let mut sm = StateMachine::default();
        for i in 1..=50 {
            sm.apply(&put(i, &format!("key{i}"), "value", session(i, 1, 1)));
        }
        let bytes = snapshot_bytes(&sm);
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(StateMachine::read_snapshot(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[0] ^= 0xff;
        assert!(StateMachine::read_snapshot(&flipped[..]).is_err());
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
        let source = sm.snapshot_source();
        // Later writes do not reach a snapshot already taken.
        sm.apply(&put(2, "later", "x", None));
        let mut bytes = Vec::new();
        source.encode_into(&mut bytes).unwrap();
        let (mut copy, stored) = StateMachine::read_snapshot(&bytes[..]).unwrap();
        assert_eq!((stored.applied_index, stored.data.len()), (1, 1));
        assert_eq!(copy.applied_index(), 1);
        assert_eq!(copy.get("later"), None);
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
