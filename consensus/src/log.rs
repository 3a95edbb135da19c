//! The in-memory view of the replicated log that the consensus core reasons about.
//!
//! The durable copy lives in the write-ahead log (the actors crate's `storage::wal`); this one holds
//! the entries after the last trim point, which the core needs for the
//! consistency check and for sending to followers.

use std::collections::VecDeque;

use protocol::{Command, Entry, LogIndex, Term};

/// An upper estimate of an entry's encoded size, for batching by bytes.
pub fn encoded_size_estimate(entry: &Entry) -> usize {
    let payload = match &entry.command {
        Command::Noop => 0,
        Command::Put { key, value, .. } => key.len() + value.len(),
        Command::Delete { key, .. } => key.len(),
    };
    payload + 128
}

/// The entries after the last trim or snapshot point, and that point's index
/// and term.
#[derive(Debug, Clone, Default)]
pub struct MemLog {
    /// Index and term of the last entry dropped by trimming or replaced by a snapshot.
    start_index: LogIndex,
    start_term: Term,
    entries: VecDeque<Entry>,
}

impl MemLog {
    /// A log whose entries up to `start_index` (of `start_term`) are gone, followed by `entries`.
    pub fn new(start_index: LogIndex, start_term: Term, entries: Vec<Entry>) -> Self {
        let mut log = MemLog {
            start_index,
            start_term,
            entries: VecDeque::new(),
        };
        for entry in entries {
            if entry.index > start_index {
                log.truncate_from(entry.index);
                if entry.index == log.last_index() + 1 {
                    log.entries.push_back(entry);
                }
            }
        }
        log
    }

    /// The index of the last entry dropped by trimming or replaced by a snapshot (0: none).
    pub fn start_index(&self) -> LogIndex {
        self.start_index
    }

    /// The term of the entry at `start_index`.
    pub fn start_term(&self) -> Term {
        self.start_term
    }

    /// `start_index + 1`: the index of the first entry, whether or not it is held yet.
    pub fn first_index(&self) -> LogIndex {
        self.start_index + 1
    }

    /// The index of the last entry held (`start_index` if none is).
    pub fn last_index(&self) -> LogIndex {
        self.start_index + self.entries.len() as LogIndex
    }

    /// The term of the last entry held (`start_term` if none is).
    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.start_term, |e| e.term)
    }

    /// The term of the entry at `index`, if this log still knows it.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.start_index {
            Some(self.start_term)
        } else if index > self.start_index && index <= self.last_index() {
            Some(self.entries[(index - self.first_index()) as usize].term)
        } else {
            None
        }
    }

    /// The entry at `index`, if held (None at or before the start point).
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index > self.start_index && index <= self.last_index() {
            Some(&self.entries[(index - self.first_index()) as usize])
        } else {
            None
        }
    }

    /// Entries from `from` on, at most `max` of them.
    pub fn slice(&self, from: LogIndex, max: usize) -> Vec<Entry> {
        self.slice_bounded(from, max, usize::MAX)
    }

    /// Entries from `from` on, at most `max` of them and about `max_bytes`
    /// (always at least one, so an entry larger than the budget still moves).
    pub fn slice_bounded(&self, from: LogIndex, max: usize, max_bytes: usize) -> Vec<Entry> {
        if from <= self.start_index || from > self.last_index() {
            return Vec::new();
        }
        let skip = (from - self.first_index()) as usize;
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for entry in self.entries.iter().skip(skip).take(max) {
            bytes += encoded_size_estimate(entry);
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// The first index of the run of entries that has `term` and ends at `index`:
    /// a follower's hint that lets the leader skip a whole conflicting term at once.
    pub fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term(index) else {
            return index;
        };
        let mut first = index;
        while first > self.first_index() && self.term(first - 1) == Some(term) {
            first -= 1;
        }
        first
    }

    /// Appends one entry that must directly follow the last one.
    pub fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.entries.push_back(entry);
    }

    /// Drops every entry at `index` and after.
    pub fn truncate_from(&mut self, index: LogIndex) {
        if index <= self.start_index {
            self.entries.clear();
        } else if index <= self.last_index() {
            self.entries.truncate((index - self.first_index()) as usize);
        }
    }

    /// Drops entries up to and including `index` (trimming), remembering its term.
    pub fn compact_to(&mut self, index: LogIndex) {
        if index <= self.start_index || index > self.last_index() {
            return;
        }
        let Some(term) = self.term(index) else { return };
        let drop = (index - self.start_index) as usize;
        self.entries.drain(..drop);
        self.start_index = index;
        self.start_term = term;
    }

    /// Replaces the whole log by a snapshot's end point.
    pub fn reset_to(&mut self, index: LogIndex, term: Term) {
        self.entries.clear();
        self.start_index = index;
        self.start_term = term;
    }

    /// Makes the log continue the state store, which is applied up to
    /// (`applied`, `applied_term`): if the store already holds a snapshot the
    /// log never recorded (a crash between installing it and rewriting the
    /// log), the log restarts at the store's applied point. Returns true if it did.
    pub fn reconcile(&mut self, applied: LogIndex, applied_term: Term) -> bool {
        if applied > 0 && self.term(applied) != Some(applied_term) {
            self.reset_to(applied, applied_term);
            true
        } else {
            false
        }
    }

    /// The number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held (the start point may still be above 0).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: LogIndex, term: Term) -> Entry {
        Entry {
            index,
            term,
            request_id: 0,
            command: Command::Noop,
        }
    }

    #[test]
    fn terms_are_known_from_the_start_point_to_the_end() {
        let log = MemLog::new(3, 2, vec![e(4, 2), e(5, 3)]);
        assert_eq!(log.term(2), None);
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.term(5), Some(3));
        assert_eq!(log.term(6), None);
        assert_eq!((log.first_index(), log.last_index(), log.last_term()), (4, 5, 3));
    }

    #[test]
    fn recovery_replays_rewrites_of_a_suffix() {
        // A later record for index 5 replaces the old 5 and everything after it.
        let log = MemLog::new(0, 0, vec![e(1, 1), e(2, 1), e(3, 1), e(2, 2), e(3, 2)]);
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(2), Some(2));
        assert_eq!(log.term(1), Some(1));
    }

    #[test]
    fn compaction_keeps_the_term_of_the_dropped_tail() {
        let mut log = MemLog::new(0, 0, vec![e(1, 1), e(2, 1), e(3, 2)]);
        log.compact_to(2);
        assert_eq!((log.start_index(), log.start_term(), log.len()), (2, 1, 1));
        assert_eq!(log.slice(1, 10), vec![]);
        assert_eq!(log.slice(3, 10), vec![e(3, 2)]);
    }

    #[test]
    fn slices_are_bounded_by_bytes_but_never_empty() {
        let big = |index| Entry {
            index,
            term: 1,
            request_id: 0,
            command: Command::Put {
                key: "k".into(),
                value: "v".repeat(1000),
                session: None,
            },
        };
        let log = MemLog::new(0, 0, (1..=10).map(big).collect());
        assert_eq!(log.slice_bounded(1, 100, 3000).len(), 2);
        assert_eq!(log.slice_bounded(1, 100, 10).len(), 1);
        assert_eq!(log.slice_bounded(1, 3, usize::MAX).len(), 3);
    }

    #[test]
    fn hint_skips_a_whole_term() {
        let log = MemLog::new(0, 0, vec![e(1, 1), e(2, 2), e(3, 2), e(4, 2)]);
        assert_eq!(log.first_index_of_term_at(4), 2);
        assert_eq!(log.first_index_of_term_at(1), 1);
    }
}
