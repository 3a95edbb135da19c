//! Linearizable reads by ReadIndex (invariant 8, stated in `core.rs`).
//!
//! A read arriving at the leader waits for a confirmation round that started
//! after it arrived: the leader numbers its rounds, every AppendEntries
//! carries the current one, and a read is released once a majority (the
//! leader included) has answered its round, at the commit index the leader
//! had when the read arrived. Reads that arrive while a round is open share
//! the next one, so a burst of reads costs one round. A new leader's reads
//! also wait until its no-op is committed: before that, its commit index may
//! lag entries an earlier leader committed.

use protocol::{LogIndex, Role};

use super::{AppendKind, RaftCore, ReadId};
use crate::quorum;

/// The leader's read rounds and the reads waiting on them.
#[derive(Debug, Default)]
pub(super) struct ReadRounds {
    /// The last read-confirmation round started (0: none in this term).
    pub(super) round: u64,
    /// Whether that round still waits for a majority.
    pub(super) open: bool,
    /// Reads waiting for their round.
    pub(super) pending: Vec<PendingRead>,
    /// Reads queued before the leader committed its no-op.
    pub(super) early: Vec<ReadId>,
}

#[derive(Debug, Clone)]
pub(super) struct PendingRead {
    pub(super) id: ReadId,
    pub(super) round: u64,
    pub(super) index: LogIndex,
}

impl RaftCore {
    /// A linearizable read arrived (ReadIndex). Reads are batched: all reads
    /// that arrive while a confirmation round is open share the next round.
    pub fn read(&mut self, id: ReadId) {
        if self.role != Role::Leader {
            self.ready.failed_reads.push(id);
            return;
        }
        if self.commit < self.term_start_index {
            self.reads.early.push(id);
            return;
        }
        self.queue_read(id);
    }

    pub(super) fn queue_read(&mut self, id: ReadId) {
        // The round that confirms this read must start after it arrived: if one
        // is open, this read waits for the next.
        self.reads.pending.push(PendingRead {
            id,
            round: self.reads.round + 1,
            index: self.commit,
        });
        if !self.reads.open {
            self.start_read_round();
        }
    }

    pub(super) fn start_read_round(&mut self) {
        self.reads.round += 1;
        self.reads.open = true;
        if self.quorum() == 1 {
            self.confirm_reads();
        } else {
            self.broadcast_append(AppendKind::Heartbeat);
        }
    }

    pub(super) fn confirm_reads(&mut self) {
        let mut rounds: Vec<u64> = self.progress.values().map(|p| p.read_round).collect();
        rounds.push(self.reads.round); // the leader confirms its own round
        let confirmed = quorum::agreed(rounds, self.quorum());
        let (ready, waiting): (Vec<_>, Vec<_>) = self.reads.pending.drain(..).partition(|r| r.round <= confirmed);
        self.reads.pending = waiting;
        self.ready.reads.extend(ready.into_iter().map(|r| (r.id, r.index)));
        if confirmed >= self.reads.round {
            self.reads.open = false;
            if !self.reads.pending.is_empty() {
                self.start_read_round();
            }
        }
    }

    pub(super) fn fail_all_reads(&mut self) {
        let failed = self
            .reads
            .pending
            .drain(..)
            .map(|r| r.id)
            .chain(self.reads.early.drain(..));
        self.ready.failed_reads.extend(failed);
        self.reads.open = false;
    }
}
