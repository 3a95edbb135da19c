//! Exactly-once bookkeeping for writes.
//!
//! Every put or delete takes the next sequence number of the client's current
//! session. The server remembers the outcome of each `(client_id, seq)` until
//! the client reports, through `acked_below`, that it has received every
//! answer below that number. A write counts as answered once the caller got
//! *any* final result for it (value, error or timeout): it will never be
//! re-sent after that, so the server may forget it.
//!
//! A session also has a `floor`, fixed when its first write is sent: the
//! highest applied index the client has heard of by then (see
//! `protocol::Session::floor`). When the server has forgotten a session
//! (`SessionExpired`) or the session has as many unanswered writes as the
//! server keeps, the client moves on to a new session, with a new random id;
//! writes still in flight in the old one finish there.

use std::collections::{BTreeSet, HashMap};

use protocol::LogIndex;
use rand::Rng;

/// Most writes of one session waiting for their answer. The server keeps
/// `state::MAX_SESSION_BACKLOG` (1024) per session; a full window moves the
/// client to a new session instead of being refused.
pub(crate) const SESSION_WINDOW: u64 = 1000;

/// The session a write belongs to and its sequence number in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteSlot {
    pub client_id: u64,
    pub seq: u64,
}

#[derive(Debug, Clone)]
struct SessionState {
    next_seq: u64,
    in_flight: BTreeSet<u64>,
    /// Fixed when the first write of the session is sent.
    floor: Option<LogIndex>,
}

impl SessionState {
    fn new(floor: Option<LogIndex>) -> Self {
        SessionState {
            next_seq: 1,
            in_flight: BTreeSet::new(),
            floor,
        }
    }

    fn acked_below(&self) -> u64 {
        self.in_flight.first().copied().unwrap_or(self.next_seq)
    }
}

/// The client's sessions: the current one, and older ones that still have
/// writes in flight.
#[derive(Debug, Clone)]
pub(crate) struct SessionTracker {
    current: u64,
    sessions: HashMap<u64, SessionState>,
    /// The highest applied index heard from any node: the next floor.
    applied_hint: LogIndex,
}

impl SessionTracker {
    pub(crate) fn new(client_id: u64) -> Self {
        SessionTracker {
            current: client_id,
            sessions: HashMap::from([(client_id, SessionState::new(None))]),
            applied_hint: 0,
        }
    }

    /// The id of the session new writes go to.
    pub(crate) fn current_id(&self) -> u64 {
        self.current
    }

    /// A node told us it has applied up to `index`.
    pub(crate) fn heard_applied(&mut self, index: LogIndex) {
        self.applied_hint = self.applied_hint.max(index);
    }

    /// Assigns the next sequence number of the current session (first moving
    /// to a new session if this one's window is full) and marks it in flight.
    pub(crate) fn begin(&mut self) -> WriteSlot {
        let full = self
            .sessions
            .get(&self.current)
            .is_none_or(|s| s.next_seq.saturating_sub(s.acked_below()) >= SESSION_WINDOW);
        if full {
            self.start_new_session(None);
        }
        let client_id = self.current;
        let session = self
            .sessions
            .entry(client_id)
            .or_insert_with(|| SessionState::new(None));
        let seq = session.next_seq;
        session.next_seq += 1;
        session.in_flight.insert(seq);
        WriteSlot { client_id, seq }
    }

    /// What to send with an attempt of `slot`'s write: `(acked_below, floor)`.
    /// The floor is fixed here if this is the session's first send.
    pub(crate) fn send(&mut self, slot: WriteSlot) -> (u64, LogIndex) {
        let hint = self.applied_hint;
        match self.sessions.get_mut(&slot.client_id) {
            Some(session) => {
                let floor = *session.floor.get_or_insert(hint);
                (session.acked_below(), floor)
            }
            // Unreachable: a slot's session lives while the slot is in flight.
            // Floor 0 is below everything, so the server refuses rather than
            // re-applies if it does not know the session.
            None => (slot.seq, 0),
        }
    }

    /// The caller has its answer for `slot`; it will not be re-sent.
    pub(crate) fn finish(&mut self, slot: WriteSlot) {
        let Some(session) = self.sessions.get_mut(&slot.client_id) else {
            return;
        };
        session.in_flight.remove(&slot.seq);
        if slot.client_id != self.current && session.in_flight.is_empty() {
            self.sessions.remove(&slot.client_id);
        }
    }

    /// The server no longer knows session `client_id` and has applied up to
    /// `applied_index`: later writes go to a new session whose floor is at
    /// least that.
    pub(crate) fn expired(&mut self, client_id: u64, applied_index: LogIndex) {
        self.heard_applied(applied_index);
        if client_id == self.current {
            self.start_new_session(Some(self.applied_hint));
        }
    }

    fn start_new_session(&mut self, floor: Option<LogIndex>) {
        let old = self.current;
        if self.sessions.get(&old).is_some_and(|s| s.in_flight.is_empty()) {
            self.sessions.remove(&old);
        }
        let mut id = rand::thread_rng().gen::<u64>();
        while id == old || self.sessions.contains_key(&id) {
            id = rand::thread_rng().gen::<u64>();
        }
        self.current = id;
        self.sessions.insert(id, SessionState::new(floor));
    }

    /// `acked_below` of session `client_id` (for tests and traces).
    #[cfg(test)]
    pub(crate) fn acked_below(&self, client_id: u64) -> Option<u64> {
        self.sessions.get(&client_id).map(SessionState::acked_below)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish_seq(tracker: &mut SessionTracker, seq: u64) {
        let client_id = tracker.current_id();
        tracker.finish(WriteSlot { client_id, seq });
    }

    #[test]
    fn fresh_session_acks_below_one() {
        let tracker = SessionTracker::new(9);
        assert_eq!(tracker.acked_below(9), Some(1));
    }

    #[test]
    fn sequential_writes_advance_acked_below() {
        let mut tracker = SessionTracker::new(9);
        let slot = tracker.begin();
        assert_eq!(slot, WriteSlot { client_id: 9, seq: 1 });
        assert_eq!(tracker.send(slot), (1, 0));
        tracker.finish(slot);
        assert_eq!(tracker.acked_below(9), Some(2));
        let slot = tracker.begin();
        assert_eq!(slot.seq, 2);
        tracker.finish(slot);
        assert_eq!(tracker.acked_below(9), Some(3));
    }

    #[test]
    fn out_of_order_completion_holds_acked_below_at_oldest_pending() {
        let mut tracker = SessionTracker::new(9);
        let seqs: Vec<u64> = (0..5).map(|_| tracker.begin().seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        for seq in [3, 5, 2] {
            finish_seq(&mut tracker, seq);
        }
        assert_eq!(tracker.acked_below(9), Some(1));
        finish_seq(&mut tracker, 1);
        assert_eq!(tracker.acked_below(9), Some(4));
        assert_eq!(tracker.begin().seq, 6);
        assert_eq!(tracker.acked_below(9), Some(4));
        finish_seq(&mut tracker, 4);
        finish_seq(&mut tracker, 6);
        assert_eq!(tracker.acked_below(9), Some(7));
    }

    #[test]
    fn finishing_twice_or_unknown_seq_is_harmless() {
        let mut tracker = SessionTracker::new(9);
        let a = tracker.begin();
        let b = tracker.begin();
        tracker.finish(a);
        tracker.finish(a);
        finish_seq(&mut tracker, 42);
        assert_eq!(tracker.acked_below(9), Some(b.seq));
        tracker.finish(b);
        assert_eq!(tracker.acked_below(9), Some(3));
    }

    #[test]
    fn the_floor_is_fixed_at_the_first_send() {
        let mut tracker = SessionTracker::new(9);
        tracker.heard_applied(40);
        let first = tracker.begin();
        let second = tracker.begin();
        assert_eq!(tracker.send(first).1, 40);
        tracker.heard_applied(90);
        assert_eq!(tracker.send(second).1, 40, "later writes keep the session's floor");
        assert_eq!(tracker.send(first).1, 40, "and so do retries");
    }

    #[test]
    fn an_expired_session_is_replaced_and_its_writes_in_flight_finish_in_it() {
        let mut tracker = SessionTracker::new(9);
        let old = tracker.begin();
        tracker.send(old);
        tracker.expired(9, 120);
        let new = tracker.begin();
        assert_ne!(new.client_id, 9);
        assert_eq!(new.seq, 1);
        assert_eq!(
            tracker.send(new),
            (1, 120),
            "the new floor is the index the refusal named"
        );
        // The old write still answers in its own session, which then goes away.
        assert_eq!(tracker.send(old), (1, 0));
        tracker.finish(old);
        assert_eq!(tracker.acked_below(9), None);
        // A late expiry of an old session does not replace the current one.
        tracker.expired(9, 130);
        assert_eq!(tracker.current_id(), new.client_id);
    }

    #[test]
    fn a_full_window_moves_new_writes_to_a_new_session() {
        let mut tracker = SessionTracker::new(9);
        let stuck = tracker.begin();
        for _ in 1..SESSION_WINDOW {
            let slot = tracker.begin();
            tracker.finish(slot);
        }
        // seq 1 is still unanswered: the server would refuse seq 1 + 1024.
        let next = tracker.begin();
        assert_ne!(next.client_id, 9);
        assert_eq!(tracker.acked_below(9), Some(stuck.seq));
        tracker.finish(stuck);
        assert_eq!(tracker.acked_below(9), None);
    }
}
