//! Replication, leader side: what each follower is sent, how its answers
//! move its progress, and when an entry commits (invariant 6, stated in
//! `core.rs`).

use protocol::{
    AppendEntries, AppendResponse, Entry, InstallSnapshot, LogIndex, NodeId, PeerMessage, Role, SnapshotResponse, Term,
};

use super::{RaftCore, NO_HINT};
use crate::quorum;

/// Why an AppendEntries is being considered for one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AppendKind {
    /// Periodic or for a read round: something must go, even with no entries.
    Heartbeat,
    /// After a rejection: resend from the new next index (nothing while a snapshot is due).
    Probe,
    /// Only if there are new entries the follower may take.
    NewEntries,
}

impl RaftCore {
    pub(super) fn broadcast_append(&mut self, mode: AppendKind) {
        let peers: Vec<NodeId> = self.peers().collect();
        for peer in peers {
            self.send_append(peer, mode);
        }
    }

    pub(super) fn send_append(&mut self, peer: NodeId, mode: AppendKind) {
        let Some(progress) = self.progress.get(&peer) else {
            return;
        };
        let next = progress.next_index;
        if next <= self.log.start_index() {
            self.request_snapshot(peer);
            if mode == AppendKind::Heartbeat {
                // Keep the follower's election timer quiet while its snapshot is on the way.
                let (prev_log_index, prev_log_term) = (self.log.start_index(), self.log.start_term());
                self.push_append(peer, prev_log_index, prev_log_term, Vec::new());
            }
            return;
        }
        let in_flight = next.saturating_sub(progress.match_index + 1);
        let has_new = next <= self.log.last_index();
        let can_send = has_new && in_flight < self.config.max_inflight_entries;
        if !can_send && mode == AppendKind::NewEntries {
            return;
        }
        let entries = if can_send {
            self.log
                .slice_bounded(next, self.config.max_batch_entries, self.config.max_batch_bytes)
        } else {
            Vec::new()
        };
        let prev_log_index = next - 1;
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            self.request_snapshot(peer);
            return;
        };
        if let (Some(last), Some(progress)) = (entries.last(), self.progress.get_mut(&peer)) {
            progress.next_index = last.index + 1;
        }
        self.push_append(peer, prev_log_index, prev_log_term, entries);
    }

    pub(super) fn push_append(
        &mut self,
        peer: NodeId,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
    ) {
        let message = PeerMessage::AppendEntries(AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.commit,
            read_round: self.reads.round,
            trim_to: self.trim_to,
            follower_incarnation: self.progress.get(&peer).map_or(0, |p| p.incarnation),
        });
        let envelope = self.envelope(peer, message);
        self.ready.messages.push(envelope);
    }

    pub(super) fn request_snapshot(&mut self, peer: NodeId) {
        let round = self.heartbeat_rounds;
        let retry = self.config.snapshot_retry_rounds;
        let Some(progress) = self.progress.get_mut(&peer) else {
            return;
        };
        let due = match progress.snapshot_requested_at {
            None => true,
            Some(at) => round >= at + retry,
        };
        if due {
            progress.snapshot_requested_at = Some(round);
            self.ready.snapshots_needed.push(peer);
        }
    }

    /// The caller has streamed `peer` a snapshot of the state (applied up to
    /// `index`, of `term`; `bytes` long with CRC-32 `checksum`), taken while
    /// this core was in `taken_in_term`: seal it with an `InstallSnapshot`.
    pub fn send_snapshot(&mut self, peer: NodeId, taken_in_term: Term, index: LogIndex, term: Term, seal: (u64, u32)) {
        if self.role != Role::Leader || self.hard.term != taken_in_term || !self.progress.contains_key(&peer) {
            return;
        }
        let (bytes, checksum) = seal;
        let message = PeerMessage::InstallSnapshot(InstallSnapshot {
            last_index: index,
            last_term: term,
            bytes,
            checksum,
            read_round: self.reads.round,
        });
        let envelope = self.envelope(peer, message);
        self.ready.messages.push(envelope);
    }

    pub(super) fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let mut matched: Vec<LogIndex> = self.progress.values().map(|p| p.match_index).collect();
        matched.push(self.durable);
        let majority_index = quorum::agreed(matched, self.quorum());
        // Invariant 6: only an entry of the current term commits by counting.
        if majority_index > self.commit && self.log.term(majority_index) == Some(self.hard.term) {
            self.advance_commit(majority_index);
            if self.commit >= self.term_start_index && !self.reads.early.is_empty() {
                for id in std::mem::take(&mut self.reads.early) {
                    self.queue_read(id);
                }
            }
        }
    }

    pub(super) fn advance_commit(&mut self, index: LogIndex) {
        let index = index.min(self.log.last_index());
        if index <= self.commit {
            return;
        }
        self.commit = index;
        // Invariant 7: release each committed entry once, in order.
        let from = self.released + 1;
        if from <= index {
            let count = (index - from + 1) as usize;
            self.ready.committed.extend(self.log.slice(from, count));
            self.released = index;
        }
    }

    pub(super) fn on_append_response(&mut self, from: NodeId, response: AppendResponse) {
        if self.role != Role::Leader {
            return;
        }
        let (last_index, read_round) = (self.log.last_index(), self.reads.round);
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        if !progress.take_response(&response, last_index, read_round) {
            return;
        }
        if response.success {
            self.maybe_commit();
        }
        let mode = if response.success {
            AppendKind::NewEntries
        } else {
            AppendKind::Probe
        };
        self.send_append(from, mode);
        if self.reads.open {
            self.confirm_reads();
        }
    }

    pub(super) fn on_snapshot_response(&mut self, from: NodeId, response: SnapshotResponse) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(progress) = self.progress.get_mut(&from) {
            progress.snapshot_requested_at = None;
        }
        // The follower now holds everything up to the snapshot, durably.
        self.on_append_response(
            from,
            AppendResponse {
                success: true,
                match_index: response.last_index,
                hint: NO_HINT,
                read_round: response.read_round,
                flushed_index: response.last_index,
                incarnation: response.incarnation,
            },
        );
    }
}
