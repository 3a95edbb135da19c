//! Recovery from lost durable state (invariant 9, stated in `core.rs`).
//!
//! A node whose write-ahead log lost synced records at restart may have lost
//! entries it acknowledged or a vote it cast. Until it is caught up it neither
//! votes nor campaigns: it asks every peer which term the cluster is in
//! (`TermProbe`), takes that term with its vote spent once enough intact
//! peers answered that every quorum holds one of them, and votes again once a
//! leader of that term has provably brought its log up to a commit index of
//! the leader's own term.

use std::collections::BTreeMap;

use protocol::{LogIndex, NodeId, PeerMessage, Term, TermProbe, TermProbeReply};

use super::{HardState, RaftCore};

/// Progress of a recovery from lost durable state (invariant 9).
#[derive(Debug, Default)]
pub(super) struct DataLossRecovery {
    /// The current probe round: only answers to it count.
    pub(super) round: u64,
    /// Peers that answered this round's `TermProbe`: their term, and whether they are recovering too.
    pub(super) answers: BTreeMap<NodeId, (Term, bool)>,
    /// The cluster's term, once enough peers answered.
    pub(super) learned_term: Option<Term>,
    /// A leader's commit index that reaches into that leader's own term (so
    /// it covers every entry committed before that term, and every entry the
    /// leader itself committed), and up to which this node's log matches the
    /// leader's. The node votes again once this much of its log is durable.
    pub(super) caught_up_to: Option<LogIndex>,
}

impl RaftCore {
    /// Whether this node takes entries (or a snapshot) from a leader now:
    /// not while it recovers and does not know the cluster's term yet.
    pub fn takes_entries(&self) -> bool {
        self.recovery.as_ref().is_none_or(|r| r.learned_term.is_some())
    }

    /// Intact peers (not recovering themselves) that must answer one probe
    /// round before the node knows the cluster's term: enough that every
    /// quorum holds one of them besides this node.
    pub(super) fn probe_answers_needed(&self) -> usize {
        self.config.members.len() - self.quorum() + 1
    }

    pub(super) fn on_term_probe_reply(&mut self, from: NodeId, term: Term, reply: TermProbeReply) {
        let (question, peer_recovering) = ((reply.incarnation, reply.round), reply.recovering);
        let incarnation = self.config.incarnation;
        let Some(recovery) = self.recovery.as_mut() else {
            return;
        };
        if question != (incarnation, recovery.round) {
            return; // an answer to an older question: its facts may have changed since
        }
        recovery.answers.insert(from, (term, peer_recovering));
        let intact: Vec<Term> = recovery.answers.values().filter(|(_, r)| !r).map(|(t, _)| *t).collect();
        let answered = intact.len();
        let recovering_nodes = 1 + recovery.answers.values().filter(|(_, r)| *r).count();
        // Only an intact node's term is known to cover what a quorum did.
        let known_term = intact.iter().copied().max().unwrap_or(0);
        let any_term = recovery.answers.values().map(|(t, _)| *t).max().unwrap_or(0);
        let learned = recovery.learned_term;
        let members = self.config.members.len();
        let everyone_answered = recovery.answers.len() + 1 >= members;
        if learned.is_none() && answered >= self.probe_answers_needed() {
            let term = self.spend_vote_in(known_term);
            if let Some(recovery) = self.recovery.as_mut() {
                recovery.learned_term = Some(term);
            }
            tracing::info!(
                term,
                "recovering from lost durable state: learned the cluster's term; \
                 waiting for a leader to catch this node up before it votes again"
            );
        }
        if everyone_answered && members - recovering_nodes < self.quorum() {
            // No quorum of intact nodes exists: nobody can restore what was lost,
            // and waiting would stop the cluster for good. The vote stays spent
            // in the highest term heard, at least. Only once every member has
            // answered this round: a silent one may be intact and hold what a
            // quorum acknowledged, and giving up early (two nodes recovering, one
            // down) could elect a leader without it. Waiting costs availability
            // until that node is back; giving up could cost acknowledged writes.
            if learned.is_none() {
                self.spend_vote_in(any_term);
            }
            tracing::warn!(
                recovering_nodes,
                members,
                "too many nodes lost durable state: resuming with what survived \
                 (acknowledged writes may be lost)"
            );
            self.end_recovery();
            return;
        }
        self.maybe_end_recovery();
    }

    /// Moves to `term` (if higher) with the vote spent: a vote this node cast
    /// in that term may be among what it lost. Returns the term it is in.
    pub(super) fn spend_vote_in(&mut self, term: Term) -> Term {
        let term = term.max(self.hard.term);
        let voted_for = if term == self.hard.term {
            self.hard.voted_for.or(Some(self.config.id))
        } else {
            Some(self.config.id)
        };
        if term > self.hard.term {
            self.become_follower(term, None);
        }
        self.set_hard_state(HardState {
            term,
            voted_for,
            recovering: self.hard.recovering,
        });
        term
    }

    /// After a successful append from the leader of the current term: notes
    /// how far this node's log now provably holds what the leader committed.
    /// Only an append the leader sent after it heard this incarnation counts:
    /// an older one may carry a commit index from before an entry that this
    /// node acknowledged and then lost.
    pub(super) fn note_caught_up(&mut self, leader_commit: LogIndex, match_index: LogIndex, follower_incarnation: u64) {
        let term = self.hard.term;
        if follower_incarnation != self.config.incarnation {
            return;
        }
        let Some(recovery) = self.recovery.as_mut() else {
            return;
        };
        // Our log equals the leader's through `match_index`; it must reach the
        // leader's commit, and that commit must be in the leader's own term.
        if recovery.learned_term.is_some_and(|learned| term >= learned)
            && recovery.caught_up_to.is_none()
            && match_index >= leader_commit
            && self.log.term(leader_commit) == Some(term)
        {
            recovery.caught_up_to = Some(leader_commit);
        }
        self.maybe_end_recovery();
    }

    /// Ends the recovery once the log is durable up to `caught_up_to`.
    pub(super) fn maybe_end_recovery(&mut self) {
        let Some(index) = self.recovery.as_ref().and_then(|r| r.caught_up_to) else {
            return;
        };
        if self.durable >= index {
            tracing::info!(
                term = self.hard.term,
                durable = self.durable,
                "recovered from lost durable state: caught up by a leader; voting again"
            );
            self.end_recovery();
        }
    }

    pub(super) fn end_recovery(&mut self) {
        self.recovery = None;
        self.set_hard_state(HardState {
            recovering: false,
            ..self.hard
        });
    }

    pub(super) fn on_term_probe(&mut self, from: NodeId, probe: TermProbe) {
        let reply = self.envelope(
            from,
            PeerMessage::TermProbeReply(TermProbeReply {
                incarnation: probe.incarnation,
                round: probe.round,
                recovering: self.recovery.is_some(),
            }),
        );
        // It carries our term, which the probe may just have raised.
        self.ready.after_persist.push(reply);
    }
}
