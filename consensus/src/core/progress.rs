//! What the leader knows of each follower (raft-rs calls it the tracker).

use protocol::{AppendResponse, LogIndex};

#[derive(Debug, Clone, Default)]
pub(super) struct Progress {
    /// Highest index known to be durable on the follower and equal to ours.
    pub(super) match_index: LogIndex,
    /// Next index to send (advanced optimistically when sending: pipelining).
    pub(super) next_index: LogIndex,
    /// What the follower reports as applied and flushed to its state store.
    pub(super) flushed_index: LogIndex,
    /// Heard from during the current quorum-check period.
    pub(super) recently_active: bool,
    /// Heard from since the last trim tick.
    pub(super) active_since_trim: bool,
    /// Highest read round the follower has answered in this term.
    pub(super) read_round: u64,
    /// Heartbeat round at which a snapshot was requested for this follower.
    pub(super) snapshot_requested_at: Option<u64>,
    /// The follower's latest incarnation heard (0: none yet).
    pub(super) incarnation: u64,
}

impl Progress {
    /// Moves this follower's progress by its answer (the leader's log ends at
    /// `last_index`, its read round is `read_round`). False if the answer was
    /// sent before the follower restarted, and so was ignored: what it claims
    /// may be lost.
    pub(super) fn take_response(&mut self, response: &AppendResponse, last_index: LogIndex, read_round: u64) -> bool {
        let incarnation = response.incarnation;
        if incarnation != 0 {
            if incarnation < self.incarnation {
                return false;
            }
            if incarnation > self.incarnation {
                // The follower restarted (or is heard from for the first time):
                // it may have lost entries it had matched.
                self.match_index = 0;
            }
            self.incarnation = incarnation;
        }
        self.recently_active = true;
        self.active_since_trim = true;
        self.flushed_index = self.flushed_index.max(response.flushed_index);
        // A round not started yet cannot have been answered.
        self.read_round = self.read_round.max(response.read_round.min(read_round));
        if response.success {
            self.match_index = self.match_index.max(response.match_index.min(last_index));
            self.next_index = self.next_index.max(self.match_index + 1);
        } else {
            // Back off to the follower's hint. A hint at or below what it was known to
            // hold means it lost durable entries (a corrupt WAL tail it had to cut):
            // believe it, so the entries are sent again rather than never.
            if response.hint <= self.match_index {
                self.match_index = response.hint.saturating_sub(1);
            }
            self.next_index = response.hint.max(self.match_index + 1).min(last_index + 1);
        }
        true
    }
}
