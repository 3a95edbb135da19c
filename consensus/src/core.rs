//! The consensus rules as a pure, synchronous state machine.
//!
//! `RaftCore` does no I/O and reads no clock. Callers feed it events (a peer
//! message, a timer, a proposal, a read, "these entries are now durable") and
//! then take a [`Ready`] that says what to persist, what to send, what is now
//! committed and which reads are now safe. Every rule of Raft's safety
//! argument lives here, so each one is a unit test without sockets.
//!
//! This file holds the roles, elections and the follower's side of
//! replication; beside it, each in its own file: the leader's view of each
//! follower (`progress.rs`), the leader's side of replication and commit
//! (`replication.rs`), ReadIndex rounds (`read_only.rs`) and recovery from
//! lost durable state (`recovery.rs`). The majority rule is `crate::quorum`.
//!
//! Invariants kept by the core (numbered as in ARCHITECTURE.md, "Invariants"):
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
    PreVoteResponse, Role, SnapshotResponse, Term, TermProbe, VoteRequest, VoteResponse,
};

/// An `AppendResponse` hint that suggests nothing: a success, or a refusal
/// that only tells a stale leader our term.
const NO_HINT: LogIndex = 0;

use self::progress::Progress;
use self::read_only::ReadRounds;
use self::recovery::DataLossRecovery;
use self::replication::AppendKind;
use crate::log::MemLog;

mod progress;
mod read_only;
mod recovery;
mod replication;

/// Term and vote: what must be durable before any message depending on it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct HardState {
    /// The node's current term; it never decreases.
    pub term: Term,
    /// The node this one voted for in `term` (None: no vote yet).
    pub voted_for: Option<NodeId>,
    /// Recovering from lost durable state (invariant 9). Absent from records
    /// written before it existed, hence the default.
    #[serde(default)]
    pub recovering: bool,
}

/// Tunables of the core that are not timers (timers belong to the caller).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This node's id.
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
    /// The index the snapshot's state is applied up to; the log restarts after it.
    pub index: LogIndex,
    /// The term of the entry at `index`.
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

/// One node's Raft state machine: feed it events, then carry out the [`Ready`]
/// from [`RaftCore::take_ready`].
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
    /// Leader: read-confirmation rounds and the reads waiting on them (invariant 8).
    reads: ReadRounds,
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
            reads: ReadRounds::default(),
            term_start_index: 0,
            trim_to: 0,
            heartbeat_rounds: 0,
            recovery: hard.recovering.then(DataLossRecovery::default),
            ready: Ready::default(),
        }
    }

    // ----- observers -----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }
    /// The current term.
    pub fn term(&self) -> Term {
        self.hard.term
    }
    /// The term, vote and recovery flag now in force.
    pub fn hard_state(&self) -> HardState {
        self.hard
    }
    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The leader of the current term if this node knows it (itself while leading).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// The highest log index known to be committed.
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }
    /// The in-memory log.
    pub fn log(&self) -> &MemLog {
        &self.log
    }
    /// The highest log index known to be durable on this node's own disk.
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
        self.reads.round = 0;
        self.reads.open = false;
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

    // ----- timers -----

    /// The leader's heartbeat timer fired.
    pub fn heartbeat(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        self.heartbeat_rounds += 1;
        self.broadcast_append(AppendKind::Heartbeat);
    }

    /// Called periodically while leading (the node calls it every two
    /// election timeouts): a leader that has not heard from a majority since
    /// the last call steps down, so a minority side of a
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
