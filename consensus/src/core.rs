//! The consensus rules as a pure, synchronous state machine.
//!
//! `RaftCore` does no I/O and reads no clock. Callers feed it events (a peer
//! message, a timer, a proposal, a read, "these entries are now durable") and
//! then take a [`Ready`] that says what to persist, what to send, what is now
//! committed and which reads are now safe. Every rule of Raft's safety
//! argument lives here, so each one is a unit test without sockets.
//!
//! Invariants kept here (numbers as in `shared/notes/raft-on-actors.md`):
//! 1. `term` never decreases. Any change to term or vote is reported in
//!    `Ready::hard_state`, and every message that depends on it is in
//!    `Ready::after_persist`, which the caller sends only once the hard state
//!    is durable.
//! 2. One vote per term: `voted_for` is set once per term and only cleared
//!    when the term grows.
//! 3. A message from an older term never changes the log, commit or role.
//! 4. A higher term in any message makes this node a follower of that term
//!    before the message is otherwise handled.
//! 5. A follower appends only after the prev-index/term check, truncates only
//!    a conflicting suffix, and never a committed entry.
//! 6. The leader commits only an entry of its own term that is durable on a
//!    majority; its own copy counts only after `persisted` says so.
//! 7. Committed entries are released once, in index order.
//! 8. A read is released only after a majority has answered a heartbeat round
//!    that started after the read arrived, and only once the leader has
//!    committed an entry of its term (its no-op).
//!
//! 9. A node that lost durable state (its WAL tail was cut at restart, so
//!    entries it acknowledged or a vote it cast may be gone) neither votes
//!    nor campaigns, nor accepts entries, until it has learned the cluster's
//!    term from enough peers that every quorum includes one of them; it then
//!    takes that term with its vote spent and accepts entries only from
//!    leaders of that term or later. It votes again once its durable log
//!    matches such a leader's up to a commit index of that leader's own term:
//!    that prefix holds every entry committed before the loss. The state is in
//!    `HardState::recovering`, so a crash meanwhile resumes it. If so many
//!    nodes report the same loss that no quorum of intact nodes exists, the
//!    guarantee is gone anyway and the node resumes with what survived,
//!    saying so.
//!
//! 10. PreVote (Raft thesis 9.6): an election timeout first asks the peers
//!     whether they would vote in the next term, raising nothing; only a
//!     quorum of yeses starts a real election. A node grants a pre-vote only
//!     if it has not heard from a leader since its own election timer last
//!     fired (leader stickiness), so a node cut off from the others neither
//!     raises its term while away nor deposes a healthy leader on its return.
//!     Pre-votes change no term and spend no vote, so invariants 1 and 2 are
//!     untouched.
//!
//! The original system's "longest log, then highest id" preference is a
//! tie-break only: it shapes who times out first (see `HeartbeatActor`), never
//! who may win. Votes follow Raft's up-to-date rule.

use std::collections::{BTreeMap, BTreeSet};

use protocol::{
    AppendEntries, AppendResponse, Command, Entry, InstallSnapshot, LogIndex, NodeId, PeerEnvelope, PeerMessage,
    PreVoteResponse, Role, SnapshotResponse, Term, TermProbe, TermProbeReply, VoteRequest, VoteResponse,
};

/// An `AppendResponse` hint that suggests nothing: a success, or a refusal
/// that only tells a stale leader our term.
const NO_HINT: LogIndex = 0;

use super::log::MemLog;
use super::quorum;

/// Term and vote: what must be durable before any message depending on it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
    /// Recovering from lost durable state (invariant 9). Absent from records
    /// written before it existed, hence the default.
    #[serde(default)]
    pub recovering: bool,
}

/// Tunables of the core that are not timers (timers belong to the caller).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub id: NodeId,
    /// Every voting member, this node included.
    pub members: Vec<NodeId>,
    /// Most entries in one AppendEntries.
    pub max_batch_entries: usize,
    /// About the most bytes of entries in one AppendEntries (it must fit the peer frame limit).
    pub max_batch_bytes: usize,
    /// Most entries sent to a follower but not yet acknowledged.
    pub max_inflight_entries: u64,
    /// Heartbeat rounds after which an unanswered snapshot is sent again.
    pub snapshot_retry_rounds: u64,
    /// Grows at every start of this node (the caller uses its start time):
    /// answers sent before a restart are told apart from answers after it.
    pub incarnation: u64,
}

/// Identifies a read waiting for leadership confirmation.
pub type ReadId = u64;

/// A snapshot a follower must install before answering the leader. Its
/// bytes never pass through the core: the caller streamed them in chunks,
/// checked them against the leader's seal and decoded them before it handed
/// the core the `InstallSnapshot` that produced this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotToInstall {
    pub index: LogIndex,
    pub term: Term,
}

/// What the caller must do after feeding the core an event.
#[derive(Debug, Default)]
pub struct Ready {
    /// Persist this term and vote before sending `after_persist`.
    pub hard_state: Option<HardState>,
    /// A snapshot to install in the state store (before the log is reset to it).
    pub install_snapshot: Option<SnapshotToInstall>,
    /// The log now starts after this point (index, term): after installing the snapshot,
    /// replace the durable log by the core's whole log, atomically.
    pub log_reset: Option<(LogIndex, Term)>,
    /// Entries to write; each replaces whatever the log held at its index and after.
    pub entries: Vec<Entry>,
    /// Entries up to here may be dropped from the durable log.
    pub compact_to: Option<LogIndex>,
    /// Messages that may leave now (the leader's replication does not wait for its own disk).
    pub messages: Vec<PeerEnvelope>,
    /// Messages that may leave only after everything above is durable.
    pub after_persist: Vec<PeerEnvelope>,
    /// Newly committed entries, in order, to apply.
    pub committed: Vec<Entry>,
    /// Reads now safe to serve once the state store has applied the given index.
    pub reads: Vec<(ReadId, LogIndex)>,
    /// Reads that cannot be served here any more (leadership lost).
    pub failed_reads: Vec<ReadId>,
    /// Followers that need a snapshot, because their next entry has been trimmed.
    pub snapshots_needed: Vec<NodeId>,
    /// The election timer must start over (heard from a leader, granted a vote, started an election).
    pub reset_election_timer: bool,
}

impl Ready {
    /// True when nothing must be written before `after_persist` may be sent.
    pub fn nothing_to_persist(&self) -> bool {
        self.hard_state.is_none()
            && self.install_snapshot.is_none()
            && self.log_reset.is_none()
            && self.entries.is_empty()
            && self.compact_to.is_none()
    }
}

/// Why an AppendEntries is being considered for one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppendKind {
    /// Periodic or for a read round: something must go, even with no entries.
    Heartbeat,
    /// After a rejection: resend from the new next index (nothing while a snapshot is due).
    Probe,
    /// Only if there are new entries the follower may take.
    NewEntries,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    /// Highest index known to be durable on the follower and equal to ours.
    match_index: LogIndex,
    /// Next index to send (advanced optimistically when sending: pipelining).
    next_index: LogIndex,
    /// What the follower reports as applied and flushed to its state store.
    flushed_index: LogIndex,
    /// Heard from during the current quorum-check period.
    recently_active: bool,
    /// Heard from since the last trim tick.
    active_since_trim: bool,
    /// Highest read round the follower has answered in this term.
    read_round: u64,
    /// Heartbeat round at which a snapshot was requested for this follower.
    snapshot_requested_at: Option<u64>,
    /// The follower's latest incarnation heard (0: none yet).
    incarnation: u64,
}

/// Progress of a recovery from lost durable state (invariant 9).
#[derive(Debug, Default)]
struct DataLossRecovery {
    /// The current probe round: only answers to it count.
    round: u64,
    /// Peers that answered this round's `TermProbe`: their term, and whether they are recovering too.
    answers: BTreeMap<NodeId, (Term, bool)>,
    /// The cluster's term, once enough peers answered.
    learned_term: Option<Term>,
    /// A leader's commit index that reaches into that leader's own term (so
    /// it covers every entry committed before that term, and every entry the
    /// leader itself committed), and up to which this node's log matches the
    /// leader's. The node votes again once this much of its log is durable.
    caught_up_to: Option<LogIndex>,
}

#[derive(Debug, Clone)]
struct PendingRead {
    id: ReadId,
    round: u64,
    index: LogIndex,
}

#[derive(Debug)]
pub struct RaftCore {
    config: CoreConfig,
    hard: HardState,
    role: Role,
    leader: Option<NodeId>,
    log: MemLog,
    commit: LogIndex,
    /// Index up to which committed entries were handed out (invariant 7).
    released: LogIndex,
    /// Highest index known durable on this node's own disk.
    durable: LogIndex,
    /// Highest index this node's state store has flushed.
    flushed: LogIndex,
    votes: BTreeSet<NodeId>,
    /// Pre-candidate: the term proposed and who would vote for it (PreVote).
    prevotes: Option<(Term, BTreeSet<NodeId>)>,
    /// Heard from the leader since the election timer last fired: while so,
    /// this node refuses pre-votes (leader stickiness, thesis 9.6).
    leader_contact: bool,
    progress: BTreeMap<NodeId, Progress>,
    /// Leader: the last read-confirmation round started, and whether it is still open.
    read_round: u64,
    read_round_open: bool,
    pending_reads: Vec<PendingRead>,
    /// Reads queued before the leader committed its no-op.
    early_reads: Vec<ReadId>,
    /// Leader: index of its no-op; reads wait until it is committed.
    term_start_index: LogIndex,
    /// Leader: index every node may trim its log up to.
    trim_to: LogIndex,
    heartbeat_rounds: u64,
    /// Set while recovering from lost durable state (invariant 9).
    recovery: Option<DataLossRecovery>,
    ready: Ready,
}

impl RaftCore {
    /// A core restored from durable state: hard state, the log (from its trim
    /// or snapshot point on), and the index the state store has already applied.
    pub fn new(config: CoreConfig, hard: HardState, log: MemLog, applied: LogIndex) -> Self {
        let durable = log.last_index();
        let start = log.start_index().max(applied);
        RaftCore {
            config,
            hard,
            role: Role::Follower,
            leader: None,
            commit: start,
            released: start,
            durable,
            flushed: applied,
            log,
            votes: BTreeSet::new(),
            prevotes: None,
            leader_contact: false,
            progress: BTreeMap::new(),
            read_round: 0,
            read_round_open: false,
            pending_reads: Vec::new(),
            early_reads: Vec::new(),
            term_start_index: 0,
            trim_to: 0,
            heartbeat_rounds: 0,
            recovery: hard.recovering.then(DataLossRecovery::default),
            ready: Ready::default(),
        }
    }

    // ----- observers -----

    pub fn id(&self) -> NodeId {
        self.config.id
    }
    pub fn term(&self) -> Term {
        self.hard.term
    }
    pub fn hard_state(&self) -> HardState {
        self.hard
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }
    pub fn log(&self) -> &MemLog {
        &self.log
    }
    pub fn durable_index(&self) -> LogIndex {
        self.durable
    }
    /// Recovering from lost durable state: not voting, not campaigning (invariant 9).
    pub fn is_recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// Takes what the last events asked for.
    pub fn take_ready(&mut self) -> Ready {
        std::mem::take(&mut self.ready)
    }

    fn quorum(&self) -> usize {
        self.config.members.len() / 2 + 1
    }

    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.config.id;
        self.config.members.iter().copied().filter(move |&id| id != me)
    }

    fn envelope(&self, to: NodeId, message: PeerMessage) -> PeerEnvelope {
        PeerEnvelope {
            from: self.config.id,
            to,
            term: self.hard.term,
            message,
        }
    }

    fn set_hard_state(&mut self, hard: HardState) {
        if hard != self.hard {
            self.hard = hard;
            self.ready.hard_state = Some(hard);
        }
    }

    // ----- role changes -----

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.hard.term {
            // Invariant 2: the vote belongs to the old term.
            self.set_hard_state(HardState {
                term,
                voted_for: None,
                recovering: self.hard.recovering,
            });
        }
        if self.role == Role::Leader {
            self.fail_all_reads();
            self.progress.clear();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.prevotes = None;
    }

    fn fail_all_reads(&mut self) {
        let failed = self
            .pending_reads
            .drain(..)
            .map(|r| r.id)
            .chain(self.early_reads.drain(..));
        self.ready.failed_reads.extend(failed);
        self.read_round_open = false;
    }

    /// The election timer fired (the caller has already discarded stale timers).
    pub fn election_timeout(&mut self) {
        if self.role == Role::Leader {
            return;
        }
        if self.recovery.is_some() && self.config.members.len() == 1 {
            // A cluster of one: nobody can ever answer a probe, and waiting
            // would stop it for good. Resume, as when a majority reports the
            // same loss (`on_term_probe_reply`). With two nodes the first answer
            // both tells the term and shows that no intact majority exists.
            tracing::warn!(
                members = self.config.members.len(),
                "too many nodes lost durable state: resuming with what survived \
                 (acknowledged writes may be lost)"
            );
            self.spend_vote_in(self.hard.term);
            self.end_recovery();
        }
        if let Some(recovery) = self.recovery.as_mut() {
            // Invariant 9: no campaign; ask (again) which term the cluster is in,
            // in a new round, so that only fresh answers count.
            recovery.round += 1;
            recovery.answers.clear();
            let probe = PeerMessage::TermProbe(TermProbe {
                incarnation: self.config.incarnation,
                round: recovery.round,
            });
            let probes: Vec<_> = self.peers().map(|peer| self.envelope(peer, probe.clone())).collect();
            self.ready.messages.extend(probes);
            self.ready.reset_election_timer = true;
            return;
        }
        // Terms taken from peers are at most MAX_TERM, so this cannot overflow;
        // past MAX_TERM no node would accept our messages anyway.
        let term = self.hard.term + 1;
        self.ready.reset_election_timer = true;
        if term > protocol::MAX_TERM {
            tracing::error!(term = self.hard.term, "term limit reached: not campaigning");
            return;
        }
        // PreVote: ask first whether a quorum would vote in `term`, raising
        // nothing. The leader, if any, went quiet: forget it.
        self.leader_contact = false;
        self.become_follower(self.hard.term, None);
        self.prevotes = Some((term, BTreeSet::from([self.config.id])));
        if self.quorum() == 1 {
            self.campaign();
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        let asks: Vec<_> = self
            .peers()
            .map(|peer| {
                let mut ask = self.envelope(
                    peer,
                    PeerMessage::PreVote(VoteRequest {
                        last_log_index,
                        last_log_term,
                    }),
                );
                ask.term = term;
                ask
            })
            .collect();
        self.ready.messages.extend(asks);
    }

    /// A quorum would vote: a real election in the next term (the term and the
    /// self-vote are persisted before the vote requests leave).
    fn campaign(&mut self) {
        self.prevotes = None;
        let term = self.hard.term + 1;
        if term > protocol::MAX_TERM {
            return;
        }
        self.set_hard_state(HardState {
            term,
            voted_for: Some(self.config.id),
            recovering: false,
        });
        self.role = Role::Candidate;
        self.leader = None;
        self.votes = BTreeSet::from([self.config.id]);
        self.ready.reset_election_timer = true;
        if self.votes.len() >= self.quorum() {
            self.become_leader();
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        let requests: Vec<_> = self
            .peers()
            .map(|peer| {
                self.envelope(
                    peer,
                    PeerMessage::RequestVote(VoteRequest {
                        last_log_index,
                        last_log_term,
                    }),
                )
            })
            .collect();
        // Invariant 1: the new term and self-vote are durable before anyone hears of them.
        self.ready.after_persist.extend(requests);
    }

    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.votes.clear();
        let next_index = self.log.last_index() + 1;
        self.progress = self
            .peers()
            .map(|peer| {
                (
                    peer,
                    Progress {
                        next_index,
                        recently_active: true,
                        ..Progress::default()
                    },
                )
            })
            .collect();
        self.read_round = 0;
        self.read_round_open = false;
        // A leader may only count replicas of entries of its own term (invariant 6),
        // so it appends a no-op at once; reads wait for it to commit.
        self.term_start_index = self.append_local(Command::Noop, 0);
        self.broadcast_append(AppendKind::Heartbeat);
        self.maybe_commit();
    }

    // ----- client-facing events -----

    /// Appends a command if this node leads; returns its (index, term).
    pub fn propose(&mut self, command: Command, request_id: u64) -> Option<(LogIndex, Term)> {
        if self.role != Role::Leader {
            return None;
        }
        let index = self.append_local(command, request_id);
        Some((index, self.hard.term))
    }

    fn append_local(&mut self, command: Command, request_id: u64) -> LogIndex {
        let entry = Entry {
            index: self.log.last_index() + 1,
            term: self.hard.term,
            request_id,
            command,
        };
        let index = entry.index;
        self.log.push(entry.clone());
        self.ready.entries.push(entry);
        index
    }

    /// Sends whatever followers are missing (call after a batch of proposals).
    pub fn replicate(&mut self) {
        if self.role == Role::Leader {
            self.broadcast_append(AppendKind::NewEntries);
            self.maybe_commit();
        }
    }

    /// A linearizable read arrived (ReadIndex). Reads are batched: all reads
    /// that arrive while a confirmation round is open share the next round.
    pub fn read(&mut self, id: ReadId) {
        if self.role != Role::Leader {
            self.ready.failed_reads.push(id);
            return;
        }
        if self.commit < self.term_start_index {
            self.early_reads.push(id);
            return;
        }
        self.queue_read(id);
    }

    fn queue_read(&mut self, id: ReadId) {
        // The round that confirms this read must start after it arrived: if one
        // is open, this read waits for the next.
        self.pending_reads.push(PendingRead {
            id,
            round: self.read_round + 1,
            index: self.commit,
        });
        if !self.read_round_open {
            self.start_read_round();
        }
    }

    fn start_read_round(&mut self) {
        self.read_round += 1;
        self.read_round_open = true;
        if self.quorum() == 1 {
            self.confirm_reads();
        } else {
            self.broadcast_append(AppendKind::Heartbeat);
        }
    }

    fn confirm_reads(&mut self) {
        let mut rounds: Vec<u64> = self.progress.values().map(|p| p.read_round).collect();
        rounds.push(self.read_round); // the leader confirms its own round
        let confirmed = quorum::agreed(rounds, self.quorum());
        let (ready, waiting): (Vec<_>, Vec<_>) = self.pending_reads.drain(..).partition(|r| r.round <= confirmed);
        self.pending_reads = waiting;
        self.ready.reads.extend(ready.into_iter().map(|r| (r.id, r.index)));
        if confirmed >= self.read_round {
            self.read_round_open = false;
            if !self.pending_reads.is_empty() {
                self.start_read_round();
            }
        }
    }

    // ----- timers -----

    /// The leader's heartbeat timer fired.
    pub fn heartbeat(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        self.heartbeat_rounds += 1;
        self.broadcast_append(AppendKind::Heartbeat);
    }

    /// Called once per election timeout while leading: a leader that has not
    /// heard from a majority in that time steps down, so a minority side of a
    /// partition stops claiming leadership.
    pub fn check_quorum(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let active = 1 + self.progress.values().filter(|p| p.recently_active).count();
        for progress in self.progress.values_mut() {
            progress.recently_active = false;
        }
        if active < self.quorum() {
            let term = self.hard.term;
            self.become_follower(term, None);
        }
    }

    /// The trim timer fired: the leader picks the index every live node has
    /// applied and flushed; everyone, itself included, drops its log up to it.
    /// Nodes that did not answer since the last tick are left out (they will
    /// catch up through a snapshot) so one dead node cannot stop trimming.
    pub fn trim_tick(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let live: Vec<LogIndex> = self
            .progress
            .values()
            .filter(|p| p.active_since_trim)
            .map(|p| p.flushed_index)
            .collect();
        for progress in self.progress.values_mut() {
            progress.active_since_trim = false;
        }
        if live.is_empty() && !self.progress.is_empty() {
            return; // heard from nobody: no basis to trim on
        }
        let live_min = live.into_iter().min().unwrap_or(self.flushed);
        self.trim_to = self.trim_to.max(live_min.min(self.flushed).min(self.commit));
        self.compact(self.trim_to);
    }

    /// This node's state store has flushed everything up to `index`.
    pub fn set_flushed(&mut self, index: LogIndex) {
        self.flushed = self.flushed.max(index);
    }

    fn compact(&mut self, upto: LogIndex) {
        // Never drop what this node's own store could not rebuild after a crash.
        let upto = upto.min(self.flushed).min(self.commit).min(self.durable);
        if upto > self.log.start_index() {
            self.log.compact_to(upto);
            self.ready.compact_to = Some(upto);
        }
    }

    // ----- durability -----

    /// The log is durable up to `index`, whose entry had `term` when written.
    pub fn persisted(&mut self, index: LogIndex, term: Term) {
        // A durability notice for entries that were replaced meanwhile says nothing
        // about the entries now at those indexes (invariant 6).
        if self.log.term(index) == Some(term) && index > self.durable {
            self.durable = index;
            if self.role == Role::Leader {
                self.maybe_commit();
            }
            self.maybe_end_recovery();
        }
    }

    // ----- recovery from lost durable state (invariant 9) -----

    /// Intact peers (not recovering themselves) that must answer one probe
    /// round before the node knows the cluster's term: enough that every
    /// quorum holds one of them besides this node.
    /// Whether this node takes entries (or a snapshot) from a leader now:
    /// not while it recovers and does not know the cluster's term yet.
    pub fn takes_entries(&self) -> bool {
        self.recovery.as_ref().is_none_or(|r| r.learned_term.is_some())
    }

    fn probe_answers_needed(&self) -> usize {
        self.config.members.len() - self.quorum() + 1
    }

    fn on_term_probe_reply(&mut self, from: NodeId, term: Term, reply: TermProbeReply) {
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
    fn spend_vote_in(&mut self, term: Term) -> Term {
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
    fn note_caught_up(&mut self, leader_commit: LogIndex, match_index: LogIndex, follower_incarnation: u64) {
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
    fn maybe_end_recovery(&mut self) {
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

    fn end_recovery(&mut self) {
        self.recovery = None;
        self.set_hard_state(HardState {
            recovering: false,
            ..self.hard
        });
    }

    // ----- replication, leader side -----

    fn broadcast_append(&mut self, mode: AppendKind) {
        let peers: Vec<NodeId> = self.peers().collect();
        for peer in peers {
            self.send_append(peer, mode);
        }
    }

    fn send_append(&mut self, peer: NodeId, mode: AppendKind) {
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

    fn push_append(&mut self, peer: NodeId, prev_log_index: LogIndex, prev_log_term: Term, entries: Vec<Entry>) {
        let message = PeerMessage::AppendEntries(AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.commit,
            read_round: self.read_round,
            trim_to: self.trim_to,
            follower_incarnation: self.progress.get(&peer).map_or(0, |p| p.incarnation),
        });
        let envelope = self.envelope(peer, message);
        self.ready.messages.push(envelope);
    }

    fn request_snapshot(&mut self, peer: NodeId) {
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
            read_round: self.read_round,
        });
        let envelope = self.envelope(peer, message);
        self.ready.messages.push(envelope);
    }

    fn maybe_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let mut matched: Vec<LogIndex> = self.progress.values().map(|p| p.match_index).collect();
        matched.push(self.durable);
        let majority_index = quorum::agreed(matched, self.quorum());
        // Invariant 6: only an entry of the current term commits by counting.
        if majority_index > self.commit && self.log.term(majority_index) == Some(self.hard.term) {
            self.advance_commit(majority_index);
            if self.commit >= self.term_start_index && !self.early_reads.is_empty() {
                for id in std::mem::take(&mut self.early_reads) {
                    self.queue_read(id);
                }
            }
        }
    }

    fn advance_commit(&mut self, index: LogIndex) {
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

    fn on_append_response(&mut self, from: NodeId, response: AppendResponse) {
        let AppendResponse {
            success,
            match_index,
            hint,
            read_round,
            flushed_index: flushed,
            incarnation,
        } = response;
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        if incarnation != 0 {
            if incarnation < progress.incarnation {
                return; // sent before the follower restarted: what it claims may be lost
            }
            if incarnation > progress.incarnation {
                // The follower restarted (or is heard from for the first time):
                // it may have lost entries it had matched.
                progress.match_index = 0;
            }
            progress.incarnation = incarnation;
        }
        progress.recently_active = true;
        progress.active_since_trim = true;
        progress.flushed_index = progress.flushed_index.max(flushed);
        // A round not started yet cannot have been answered.
        progress.read_round = progress.read_round.max(read_round.min(self.read_round));
        if success {
            progress.match_index = progress.match_index.max(match_index.min(last_index));
            progress.next_index = progress.next_index.max(progress.match_index + 1);
        } else {
            // Back off to the follower's hint. A hint at or below what it was known to
            // hold means it lost durable entries (a corrupt WAL tail it had to cut):
            // believe it, so the entries are sent again rather than never.
            if hint <= progress.match_index {
                progress.match_index = hint.saturating_sub(1);
            }
            progress.next_index = hint.max(progress.match_index + 1).min(last_index + 1);
        }
        if success {
            self.maybe_commit();
        }
        let mode = if success {
            AppendKind::NewEntries
        } else {
            AppendKind::Probe
        };
        self.send_append(from, mode);
        if self.read_round_open {
            self.confirm_reads();
        }
    }

    // ----- peer messages -----

    /// Handles one message from a peer.
    pub fn step(&mut self, envelope: PeerEnvelope) {
        if envelope.to != self.config.id
            || !self.config.members.contains(&envelope.from)
            || envelope.from == self.config.id
        {
            return;
        }
        // Network input: a term or index past the limits is forged or corrupt,
        // and taking it could overflow `term + 1` or index arithmetic later.
        if let Err(error) = envelope.check_bounds() {
            tracing::error!(from = envelope.from, %error, "peer message out of bounds: ignored");
            return;
        }
        let from = envelope.from;
        // Invariant 4: a newer term makes us its follower before anything else;
        // but a pre-vote's term is only proposed, and changes nothing.
        let proposal = matches!(envelope.message, PeerMessage::PreVote(_));
        if envelope.term > self.hard.term && !proposal {
            let leader = match envelope.message {
                PeerMessage::AppendEntries(_) | PeerMessage::InstallSnapshot(_) | PeerMessage::SnapshotChunk(_) => {
                    Some(from)
                }
                _ => None,
            };
            self.become_follower(envelope.term, leader);
        }
        let stale = envelope.term < self.hard.term;
        match envelope.message {
            PeerMessage::RequestVote(request) => self.on_request_vote(from, stale, request),
            PeerMessage::PreVote(request) => self.on_pre_vote(from, envelope.term, request),
            PeerMessage::PreVoteResponse(response) => self.on_pre_vote_response(from, response),
            PeerMessage::VoteResponse(response) => {
                if !stale {
                    self.on_vote_response(from, response);
                }
            }
            PeerMessage::AppendEntries(_) | PeerMessage::InstallSnapshot(_) | PeerMessage::SnapshotChunk(_)
                if !self.takes_entries() =>
            {
                // Invariant 9: until the cluster's term is known, this may be a
                // deposed leader that this node, before its loss, had already
                // left behind. Take nothing from it; the leader will retry.
            }
            PeerMessage::TermProbe(probe) => self.on_term_probe(from, probe),
            PeerMessage::TermProbeReply(reply) => self.on_term_probe_reply(from, envelope.term, reply),
            PeerMessage::AppendEntries(append) => {
                if stale {
                    // Invariant 3: tell the old leader our term; change nothing.
                    self.refuse_append(from, NO_HINT, append.read_round);
                } else {
                    self.on_append_entries(from, append);
                }
            }
            PeerMessage::AppendResponse(response) => {
                if !stale {
                    self.on_append_response(from, response);
                }
            }
            PeerMessage::InstallSnapshot(seal) => {
                if stale {
                    self.refuse_append(from, NO_HINT, seal.read_round);
                } else {
                    self.on_install_snapshot(from, seal);
                }
            }
            // The chunks' bytes are the caller's to keep (the caller steps the
            // core with them taken out); to the core a chunk is the leader
            // speaking, and it keeps this node from starting an election.
            PeerMessage::SnapshotChunk(_) => {
                if stale {
                    self.refuse_append(from, NO_HINT, 0);
                } else if self.role != Role::Leader {
                    self.accept_leader(from);
                }
            }
            // Only the caller's transfer needs it; a newer term in it was taken above.
            PeerMessage::SnapshotChunkAck(_) => {}
            PeerMessage::SnapshotResponse(response) => {
                if !stale {
                    self.on_snapshot_response(from, response);
                }
            }
        }
    }

    fn on_pre_vote_response(&mut self, from: NodeId, response: PreVoteResponse) {
        // Matched by the proposed term, not the envelope's: a node behind us
        // in term may grant, and that counts.
        let quorum = self.quorum();
        if let Some((proposed, votes)) = self.prevotes.as_mut() {
            if response.granted && *proposed == response.term {
                votes.insert(from);
                if votes.len() >= quorum {
                    tracing::info!(term = response.term, "pre-votes from a majority: starting an election");
                    self.campaign();
                }
            }
        }
    }

    fn on_vote_response(&mut self, from: NodeId, response: VoteResponse) {
        if response.granted && self.role == Role::Candidate {
            self.votes.insert(from);
            if self.votes.len() >= self.quorum() {
                self.become_leader();
            }
        }
    }

    fn on_term_probe(&mut self, from: NodeId, probe: TermProbe) {
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

    fn on_snapshot_response(&mut self, from: NodeId, response: SnapshotResponse) {
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

    fn on_request_vote(&mut self, candidate: NodeId, stale: bool, request: VoteRequest) {
        // Invariant 2 and the up-to-date check, against the log as it is now.
        let up_to_date = self.log_is_behind_or_equal(request);
        let free = self.hard.voted_for.is_none() || self.hard.voted_for == Some(candidate);
        // Invariant 9: a node that lost durable state may have voted already, or
        // lost entries that make this candidate look up to date.
        let granted = !stale && free && up_to_date && self.role != Role::Leader && self.recovery.is_none();
        if granted {
            self.set_hard_state(HardState {
                term: self.hard.term,
                voted_for: Some(candidate),
                recovering: false,
            });
            self.ready.reset_election_timer = true;
        }
        let reply = self.envelope(candidate, PeerMessage::VoteResponse(VoteResponse { granted }));
        self.ready.after_persist.push(reply);
    }

    /// Raft's up-to-date check, against the log as it is now: a candidate whose
    /// log ends where `request` says holds at least as much.
    fn log_is_behind_or_equal(&self, request: VoteRequest) -> bool {
        (request.last_log_term, request.last_log_index) >= (self.log.last_term(), self.log.last_index())
    }

    /// Grants a pre-vote to a candidate that would get this node's real vote
    /// in `proposed` (a later term, an up-to-date log) if this node has not
    /// heard from a leader since its election timer last fired. Changes no state.
    fn on_pre_vote(&mut self, candidate: NodeId, proposed: Term, request: VoteRequest) {
        let up_to_date = self.log_is_behind_or_equal(request);
        let granted = proposed > self.hard.term
            && up_to_date
            && !self.leader_contact
            && self.role != Role::Leader
            && self.recovery.is_none();
        let reply = self.envelope(
            candidate,
            PeerMessage::PreVoteResponse(PreVoteResponse {
                term: proposed,
                granted,
            }),
        );
        // It carries our term, which must be durable before anyone hears of it.
        self.ready.after_persist.push(reply);
    }

    /// Refuses an append (or a stale snapshot seal), suggesting the leader
    /// retry from `hint` ([`NO_HINT`] when the leader is only told our term).
    fn refuse_append(&mut self, to: NodeId, hint: LogIndex, read_round: u64) {
        self.reply_append(to, false, 0, hint, read_round);
    }

    /// Says this node's log equals the leader's through `match_index`.
    fn accept_append(&mut self, to: NodeId, match_index: LogIndex, read_round: u64) {
        self.reply_append(to, true, match_index, NO_HINT, read_round);
    }

    fn reply_append(&mut self, to: NodeId, success: bool, match_index: LogIndex, hint: LogIndex, read_round: u64) {
        let message = PeerMessage::AppendResponse(AppendResponse {
            success,
            match_index,
            hint,
            read_round,
            flushed_index: self.flushed,
            incarnation: self.config.incarnation,
        });
        let reply = self.envelope(to, message);
        // A success claims durability of the entries it matched, so it waits for the disk.
        self.ready.after_persist.push(reply);
    }

    fn accept_leader(&mut self, leader: NodeId) {
        // Same term: a candidate that hears from the term's leader steps back.
        if self.role != Role::Follower || self.leader != Some(leader) {
            let term = self.hard.term;
            self.become_follower(term, Some(leader));
        }
        self.prevotes = None;
        self.leader_contact = true;
        self.ready.reset_election_timer = true;
    }

    fn on_append_entries(&mut self, leader: NodeId, append: AppendEntries) {
        let AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
            read_round,
            trim_to,
            follower_incarnation,
        } = append;
        if self.role == Role::Leader {
            // Two leaders in one term cannot happen; refuse rather than corrupt.
            tracing::error!(
                leader,
                term = self.hard.term,
                "append from another leader of my own term: ignored"
            );
            return;
        }
        // Entries must follow prev one by one, in terms no newer than the leader's: anything
        // else is a corrupt or forged message, and must not touch the log.
        let contiguous = entries
            .iter()
            .enumerate()
            .all(|(i, e)| prev_log_index.checked_add(i as LogIndex + 1) == Some(e.index) && e.term <= self.hard.term);
        let terms_ordered = entries.windows(2).all(|w| w[0].term <= w[1].term)
            && entries.first().is_none_or(|e| e.term >= prev_log_term);
        if !contiguous || !terms_ordered {
            tracing::warn!(leader, "malformed AppendEntries ignored");
            return;
        }
        self.accept_leader(leader);
        let start = self.log.start_index();
        // Entries at or before our start point are committed and already here.
        let (prev_log_index, prev_log_term, entries) = if prev_log_index < start {
            let rest: Vec<Entry> = entries.into_iter().filter(|e| e.index > start).collect();
            (start, self.log.start_term(), rest)
        } else {
            (prev_log_index, prev_log_term, entries)
        };
        match self.log.term(prev_log_index) {
            None => {
                let hint = self.log.last_index() + 1;
                self.refuse_append(leader, hint, read_round);
                return;
            }
            Some(term) if term != prev_log_term => {
                let hint = self.log.first_index_of_term_at(prev_log_index).max(self.commit + 1);
                self.refuse_append(leader, hint, read_round);
                return;
            }
            Some(_) => {}
        }
        let match_index = prev_log_index + entries.len() as LogIndex;
        // Invariant 5: skip entries we already hold, truncate only at the first conflict.
        let held = entries
            .iter()
            .take_while(|e| self.log.term(e.index) == Some(e.term))
            .count();
        let mut new_entries = entries.into_iter().skip(held).peekable();
        if let Some(first) = new_entries.peek() {
            if first.index <= self.commit {
                tracing::error!(
                    index = first.index,
                    commit = self.commit,
                    "leader asked to overwrite a committed entry: refused"
                );
                self.refuse_append(leader, self.commit + 1, read_round);
                return;
            }
            self.log.truncate_from(first.index);
            self.durable = self.durable.min(first.index - 1);
        }
        for entry in new_entries {
            self.log.push(entry.clone());
            self.ready.entries.push(entry);
        }
        self.advance_commit(leader_commit.min(match_index));
        self.compact(trim_to);
        self.note_caught_up(leader_commit, match_index, follower_incarnation);
        self.accept_append(leader, match_index, read_round);
    }

    fn on_install_snapshot(&mut self, leader: NodeId, seal: InstallSnapshot) {
        let (index, term, read_round) = (seal.last_index, seal.last_term, seal.read_round);
        if self.role == Role::Leader {
            return;
        }
        self.accept_leader(leader);
        if index <= self.commit {
            // Already have all of it: just say so.
            let reply = self.envelope(
                leader,
                PeerMessage::SnapshotResponse(SnapshotResponse {
                    last_index: self.commit,
                    read_round,
                    incarnation: self.config.incarnation,
                }),
            );
            self.ready.after_persist.push(reply);
            return;
        }
        if self.log.term(index) == Some(term) {
            // Our log already continues the snapshot: keep the suffix (Raft §7).
            self.log.compact_to(index);
        } else {
            self.log.reset_to(index, term);
        }
        self.durable = self.durable.min(self.log.last_index());
        self.commit = index;
        self.released = index;
        self.flushed = index;
        self.ready.install_snapshot = Some(SnapshotToInstall { index, term });
        // The caller rewrites the whole durable log to the new start and any kept suffix,
        // atomically: a crash must not lose durable entries past the snapshot.
        self.ready.log_reset = Some((index, term));
        self.ready.entries.clear();
        let reply = self.envelope(
            leader,
            PeerMessage::SnapshotResponse(SnapshotResponse {
                last_index: index,
                read_round,
                incarnation: self.config.incarnation,
            }),
        );
        self.ready.after_persist.push(reply);
    }
}
