//! What must be durable before a `Ready`'s waiting messages may leave.
//!
//! The caller's log writer takes one [`Persist`] per `Ready`, writes it in
//! order, fsyncs once, and only then sends `then_send` and reports the last
//! entry written back to the core (`RaftCore::persisted`). Invariants 1 and 2
//! rest on that order: a term, a vote or an acknowledged entry is on disk
//! before any message that depends on it leaves the node.

use protocol::{Entry, LogIndex, PeerEnvelope, Term};

use crate::core::{HardState, RaftCore, Ready};

/// A compaction or snapshot install: the whole durable log is replaced by
/// this state, atomically (write, fsync, rename), so a crash halfway loses no
/// durable entry past the new start.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The hard state in force when the rewrite was taken.
    pub hard_state: HardState,
    /// The log starts after this index...
    pub start_index: LogIndex,
    /// ...whose entry had this term.
    pub start_term: Term,
    /// Every entry after the start point.
    pub entries: Vec<Entry>,
}

/// Writes, in this order, then one fsync, then `then_send` leaves and the
/// core hears `persisted` for the last entry written.
#[derive(Debug, Default)]
pub struct Persist {
    /// A new term or vote, written first.
    pub hard_state: Option<HardState>,
    /// Entries to append; each replaces whatever the log held at its index and after.
    pub entries: Vec<Entry>,
    /// A whole-log replacement, written last (it already holds `entries`).
    pub rewrite: Option<Rewrite>,
    /// Messages that may leave only once all of the above is durable.
    pub then_send: Vec<PeerEnvelope>,
}

impl Persist {
    /// The last log position this request makes durable, if it writes any.
    pub fn last_written(&self) -> Option<(LogIndex, Term)> {
        match &self.rewrite {
            // The rewrite comes last and holds the whole log.
            Some(rewrite) => Some(
                rewrite
                    .entries
                    .last()
                    .map_or((rewrite.start_index, rewrite.start_term), |e| (e.index, e.term)),
            ),
            None => self.entries.last().map(|e| (e.index, e.term)),
        }
    }
}

impl RaftCore {
    /// What the log writer must write for `ready` (taking its writes and the
    /// messages that wait for them), or None if nothing must wait for the disk.
    ///
    /// Trimming and snapshot installs replace the whole durable log by the
    /// core's log: the core has already dropped the entries before the new
    /// start, so only a rewrite can say where the durable log now starts.
    pub fn take_persist(&self, ready: &mut Ready) -> Option<Persist> {
        if ready.nothing_to_persist() && ready.after_persist.is_empty() {
            return None;
        }
        let replace_log = ready.compact_to.is_some() || ready.log_reset.is_some();
        let rewrite = replace_log.then(|| {
            let log = self.log();
            Rewrite {
                hard_state: self.hard_state(),
                start_index: log.start_index(),
                start_term: log.start_term(),
                entries: log.slice(log.first_index(), usize::MAX),
            }
        });
        Some(Persist {
            hard_state: ready.hard_state.take(),
            entries: std::mem::take(&mut ready.entries),
            rewrite,
            then_send: std::mem::take(&mut ready.after_persist),
        })
    }
}
