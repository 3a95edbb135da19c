//! The core's rules, one test per rule, without sockets or clocks.

use std::collections::{BTreeMap, VecDeque};

use protocol::{
    AppendEntries, AppendResponse, Command, Entry, LogIndex, NodeId, PeerEnvelope, PeerMessage, PreVoteResponse, Role,
    Term, TermProbe, TermProbeReply, VoteRequest, VoteResponse,
};

use super::*;

fn config(id: NodeId, members: &[NodeId]) -> CoreConfig {
    CoreConfig {
        id,
        members: members.to_vec(),
        max_batch_entries: 64,
        max_batch_bytes: 1 << 20,
        max_inflight_entries: 1024,
        snapshot_retry_rounds: 5,
        incarnation: INCARNATION,
    }
}

/// Every test core's incarnation; appends in tests are addressed to it.
const INCARNATION: u64 = 7;

fn entry(index: LogIndex, term: Term) -> Entry {
    Entry {
        index,
        term,
        request_id: 0,
        command: Command::Put {
            key: format!("k{index}"),
            value: format!("v{term}"),
            session: None,
        },
    }
}

fn core_with_log(id: NodeId, members: &[NodeId], term: Term, entries: Vec<Entry>) -> RaftCore {
    let hard = HardState {
        term,
        voted_for: None,
        recovering: false,
    };
    RaftCore::new(config(id, members), hard, MemLog::new(0, 0, entries), 0)
}

fn envelope(from: NodeId, to: NodeId, term: Term, message: PeerMessage) -> PeerEnvelope {
    PeerEnvelope {
        from,
        to,
        term,
        message,
    }
}

fn vote_request(from: NodeId, to: NodeId, term: Term, last_log_index: LogIndex, last_log_term: Term) -> PeerEnvelope {
    envelope(
        from,
        to,
        term,
        PeerMessage::RequestVote(VoteRequest {
            last_log_index,
            last_log_term,
        }),
    )
}

fn granted(ready: &Ready) -> Option<bool> {
    ready.after_persist.iter().find_map(|m| match m.message {
        PeerMessage::VoteResponse(VoteResponse { granted }) => Some(granted),
        _ => None,
    })
}

/// The node's election timer fires and `grants` answer its pre-vote with a
/// yes: a quorum of them starts the real election.
fn win_pre_vote(node: &mut RaftCore, grants: &[NodeId]) {
    node.election_timeout();
    let proposed = node.term() + 1;
    for &peer in grants {
        let answer = PeerMessage::PreVoteResponse(PreVoteResponse {
            term: proposed,
            granted: true,
        });
        node.step(envelope(peer, node.id(), node.term(), answer));
    }
}

fn append(
    from: NodeId,
    to: NodeId,
    term: Term,
    prev: (LogIndex, Term),
    entries: Vec<Entry>,
    commit: LogIndex,
) -> PeerEnvelope {
    envelope(
        from,
        to,
        term,
        PeerMessage::AppendEntries(AppendEntries {
            prev_log_index: prev.0,
            prev_log_term: prev.1,
            entries,
            leader_commit: commit,
            read_round: 0,
            trim_to: 0,
            follower_incarnation: INCARNATION,
        }),
    )
}

fn append_reply(ready: &Ready) -> Option<(bool, LogIndex, LogIndex)> {
    ready.after_persist.iter().find_map(|m| match m.message {
        PeerMessage::AppendResponse(AppendResponse {
            success,
            match_index,
            hint,
            ..
        }) => Some((success, match_index, hint)),
        _ => None,
    })
}

// ----- vote granting -----

#[test]
fn vote_is_granted_once_per_term_and_persisted_before_the_reply() {
    let mut node = core_with_log(1, &[1, 2, 3], 1, vec![]);
    node.step(vote_request(2, 1, 2, 0, 0));
    let ready = node.take_ready();
    assert_eq!(granted(&ready), Some(true));
    assert_eq!(
        ready.hard_state,
        Some(HardState {
            term: 2,
            voted_for: Some(2),
            recovering: false,
        })
    );
    assert!(
        ready.messages.is_empty(),
        "a vote reply must wait for the hard state to be durable"
    );

    node.step(vote_request(3, 1, 2, 0, 0));
    let ready = node.take_ready();
    assert_eq!(granted(&ready), Some(false), "second candidate of the same term");
    assert_eq!(ready.hard_state, None);

    node.step(vote_request(2, 1, 2, 0, 0));
    assert_eq!(
        granted(&node.take_ready()),
        Some(true),
        "the same candidate may ask again"
    );
}

#[test]
fn vote_requires_a_log_at_least_as_up_to_date() {
    let log = vec![entry(1, 1), entry(2, 2)];
    // (candidate last index, last term, granted?)
    let table = [
        (2, 2, true),  // equal
        (3, 2, true),  // longer, same term
        (1, 3, true),  // shorter but newer term
        (1, 2, false), // shorter, same term
        (5, 1, false), // longer but older term
    ];
    for (index, term, expect) in table {
        let mut node = core_with_log(1, &[1, 2, 3], 2, log.clone());
        node.step(vote_request(2, 1, 3, index, term));
        assert_eq!(
            granted(&node.take_ready()),
            Some(expect),
            "candidate log ({index}, {term})"
        );
    }
}

#[test]
fn stale_term_vote_is_refused_and_changes_nothing() {
    let mut node = core_with_log(1, &[1, 2, 3], 5, vec![]);
    node.step(vote_request(2, 1, 4, 10, 4));
    let ready = node.take_ready();
    assert_eq!(granted(&ready), Some(false));
    assert_eq!(ready.hard_state, None);
    assert_eq!(
        ready.after_persist[0].term, 5,
        "the refusal tells the candidate our term"
    );
}

#[test]
fn higher_term_clears_the_vote_and_demotes_a_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.nodes.get_mut(&1).unwrap().step(vote_request(2, 1, 9, 0, 0));
    let node = &cluster.nodes[&1];
    assert_eq!(node.role(), Role::Follower);
    assert_eq!(node.term(), 9);
    // Node 1's log is longer than (0, 0): the vote is refused even in the new term.
    assert_eq!(node.hard_state().voted_for, None);
}

#[test]
fn election_timeout_asks_for_pre_votes_first_and_raises_nothing() {
    let mut node = core_with_log(1, &[1, 2, 3], 3, vec![entry(1, 3)]);
    node.election_timeout();
    let ready = node.take_ready();
    assert_eq!(ready.hard_state, None, "a pre-vote raises no term and spends no vote");
    assert_eq!(node.term(), 3);
    assert_eq!(node.role(), Role::Follower);
    let asked: Vec<(NodeId, Term)> = ready
        .messages
        .iter()
        .filter(|m| {
            m.message
                == PeerMessage::PreVote(VoteRequest {
                    last_log_index: 1,
                    last_log_term: 3,
                })
        })
        .map(|m| (m.to, m.term))
        .collect();
    assert_eq!(asked, vec![(2, 4), (3, 4)], "the term proposed is the next one");
    // Refusals, or yeses for another proposal, start nothing.
    node.step(envelope(
        2,
        1,
        3,
        PeerMessage::PreVoteResponse(PreVoteResponse {
            term: 4,
            granted: false,
        }),
    ));
    node.step(envelope(
        3,
        1,
        3,
        PeerMessage::PreVoteResponse(PreVoteResponse { term: 9, granted: true }),
    ));
    assert_eq!((node.term(), node.role()), (3, Role::Follower));
}

#[test]
fn election_timeout_persists_term_and_self_vote_before_asking() {
    let mut node = core_with_log(1, &[1, 2, 3], 3, vec![entry(1, 3)]);
    win_pre_vote(&mut node, &[2]);
    let ready = node.take_ready();
    assert_eq!(
        ready.hard_state,
        Some(HardState {
            term: 4,
            voted_for: Some(1),
            recovering: false,
        })
    );
    assert_eq!(ready.after_persist.len(), 2);
    for request in &ready.after_persist {
        assert_eq!(
            request.message,
            PeerMessage::RequestVote(VoteRequest {
                last_log_index: 1,
                last_log_term: 3
            })
        );
    }
    assert_eq!(node.role(), Role::Candidate);
}

// ----- log matching -----

#[test]
fn append_with_a_missing_prev_entry_is_refused_with_a_hint() {
    let mut node = core_with_log(2, &[1, 2, 3], 1, vec![entry(1, 1)]);
    node.step(append(1, 2, 1, (3, 1), vec![entry(4, 1)], 0));
    assert_eq!(append_reply(&node.take_ready()), Some((false, 0, 2)));
    assert_eq!(node.log().last_index(), 1);
}

#[test]
fn append_with_a_conflicting_prev_term_is_refused_and_hints_the_term_start() {
    let mut node = core_with_log(2, &[1, 2, 3], 3, vec![entry(1, 1), entry(2, 2), entry(3, 2)]);
    node.step(append(1, 2, 3, (3, 3), vec![entry(4, 3)], 0));
    assert_eq!(append_reply(&node.take_ready()), Some((false, 0, 2)));
    assert_eq!(node.log().last_index(), 3, "a refused append changes nothing");
}

#[test]
fn conflicting_suffix_is_truncated_and_replaced() {
    let mut node = core_with_log(2, &[1, 2, 3], 3, vec![entry(1, 1), entry(2, 2), entry(3, 2)]);
    node.step(append(1, 2, 3, (1, 1), vec![entry(2, 3)], 0));
    let ready = node.take_ready();
    assert_eq!(append_reply(&ready), Some((true, 2, 0)));
    assert_eq!(ready.entries, vec![entry(2, 3)]);
    assert_eq!(node.log().last_index(), 2);
    assert_eq!(node.log().term(2), Some(3));
}

#[test]
fn an_old_duplicate_append_does_not_truncate_newer_entries() {
    let mut node = core_with_log(2, &[1, 2, 3], 1, vec![entry(1, 1), entry(2, 1), entry(3, 1)]);
    // A delayed copy of an earlier message: entries already present, nothing may be lost.
    node.step(append(1, 2, 1, (0, 0), vec![entry(1, 1)], 0));
    let ready = node.take_ready();
    assert_eq!(append_reply(&ready), Some((true, 1, 0)));
    assert!(ready.entries.is_empty());
    assert_eq!(node.log().last_index(), 3);
}

#[test]
fn committed_entries_are_never_truncated() {
    let mut node = core_with_log(2, &[1, 2, 3], 2, vec![entry(1, 1), entry(2, 2)]);
    node.step(append(1, 2, 2, (2, 2), vec![], 2));
    assert_eq!(node.commit_index(), 2);
    node.take_ready();
    // A (buggy or forged) leader of the same term tries to rewrite index 2.
    node.step(append(1, 2, 2, (1, 1), vec![entry(2, 1)], 2));
    let ready = node.take_ready();
    assert_eq!(append_reply(&ready).map(|r| r.0), Some(false));
    assert_eq!(node.log().term(2), Some(2));
}

#[test]
fn stale_leader_append_changes_nothing() {
    let mut node = core_with_log(2, &[1, 2, 3], 5, vec![entry(1, 1)]);
    node.step(append(1, 2, 4, (1, 1), vec![entry(2, 4)], 2));
    let ready = node.take_ready();
    assert_eq!(append_reply(&ready).map(|r| r.0), Some(false));
    assert_eq!(ready.after_persist[0].term, 5);
    assert_eq!(node.log().last_index(), 1);
    assert_eq!(node.commit_index(), 0);
    assert!(!ready.reset_election_timer);
}

#[test]
fn follower_commit_is_bounded_by_what_the_leader_proved_matches() {
    // The follower holds a stale entry at 3 (term 1) that the leader does not have.
    let mut node = core_with_log(2, &[1, 2, 3], 2, vec![entry(1, 1), entry(2, 1), entry(3, 1)]);
    node.step(append(1, 2, 2, (1, 1), vec![], 5));
    assert_eq!(node.commit_index(), 1, "only index 1 is proven to match");
    assert!(node.take_ready().committed.iter().all(|e| e.index == 1));
}

// ----- commit counting -----

#[test]
fn leader_commits_only_after_its_own_fsync_and_a_majority() {
    let mut leader = core_with_log(1, &[1, 2, 3], 0, vec![]);
    win_pre_vote(&mut leader, &[2]);
    leader.take_ready();
    leader.step(envelope(
        2,
        1,
        1,
        PeerMessage::VoteResponse(VoteResponse { granted: true }),
    ));
    assert_eq!(leader.role(), Role::Leader);
    let ready = leader.take_ready();
    assert_eq!(ready.entries.len(), 1, "the no-op of the new term");
    // Follower 2 acknowledges the no-op, but the leader's own write is not durable yet.
    leader.step(append_response(2, 1, 1, true, 1));
    assert_eq!(leader.commit_index(), 0);
    leader.persisted(1, 1);
    assert_eq!(leader.commit_index(), 1);
    assert_eq!(leader.take_ready().committed.len(), 1);
}

fn append_response(from: NodeId, to: NodeId, term: Term, success: bool, match_index: LogIndex) -> PeerEnvelope {
    envelope(
        from,
        to,
        term,
        PeerMessage::AppendResponse(AppendResponse {
            success,
            match_index,
            hint: 0,
            read_round: 0,
            flushed_index: 0,
            incarnation: INCARNATION,
        }),
    )
}

#[test]
fn entries_of_an_earlier_term_do_not_commit_by_counting() {
    // Raft paper figure 8: the leader of term 4 holds an entry of term 2 at index 2.
    let mut leader = core_with_log(1, &[1, 2, 3, 4, 5], 3, vec![entry(1, 1), entry(2, 2)]);
    win_pre_vote(&mut leader, &[2, 3]);
    for peer in [2, 3] {
        leader.step(envelope(
            peer,
            1,
            4,
            PeerMessage::VoteResponse(VoteResponse { granted: true }),
        ));
    }
    assert_eq!(leader.role(), Role::Leader);
    leader.persisted(2, 2);
    // A majority holds index 2 (term 2) but not the leader's no-op at 3.
    for peer in [2, 3] {
        leader.step(append_response(peer, 1, 4, true, 2));
    }
    assert_eq!(leader.commit_index(), 0);
    leader.persisted(3, 4);
    for peer in [2, 3] {
        leader.step(append_response(peer, 1, 4, true, 3));
    }
    assert_eq!(
        leader.commit_index(),
        3,
        "the term-4 no-op commits, and index 2 with it"
    );
}

#[test]
fn a_follower_that_lost_acknowledged_entries_gets_them_again() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for i in 0..5 {
        cluster.nodes.get_mut(&1).unwrap().propose(Command::Noop, i).unwrap();
        cluster.nodes.get_mut(&1).unwrap().replicate();
    }
    cluster.run();
    let last = cluster.nodes[&1].log().last_index();
    // Node 3 restarts with the tail of its WAL cut off (a corrupt last record).
    let members = [1, 2, 3];
    let node3 = &cluster.nodes[&3];
    let kept: Vec<Entry> = node3.log().slice(1, (last - 2) as usize);
    let hard = node3.hard_state();
    cluster
        .nodes
        .insert(3, RaftCore::new(config(3, &members), hard, MemLog::new(0, 0, kept), 0));
    for _ in 0..3 {
        cluster.nodes.get_mut(&1).unwrap().heartbeat();
        cluster.run();
    }
    assert_eq!(cluster.nodes[&3].log().last_index(), last);
}

#[test]
fn responses_from_an_old_term_do_not_advance_commit() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let term = cluster.nodes[&1].term();
    let leader = cluster.nodes.get_mut(&1).unwrap();
    leader.propose(Command::Noop, 0);
    let commit = leader.commit_index();
    leader.persisted(leader.log().last_index(), term);
    leader.step(append_response(2, 1, term - 1, true, 10));
    assert_eq!(leader.commit_index(), commit);
}

// ----- reads -----

#[test]
fn read_waits_for_a_majority_round_started_after_it() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let leader = cluster.nodes.get_mut(&1).unwrap();
    leader.take_ready();
    leader.read(7);
    let ready = leader.take_ready();
    assert!(ready.reads.is_empty());
    let round = ready
        .messages
        .iter()
        .find_map(|m| match m.message {
            PeerMessage::AppendEntries(AppendEntries { read_round, .. }) => Some(read_round),
            _ => None,
        })
        .expect("a confirmation round is broadcast");
    // An answer to an earlier round does not count.
    let term = leader.term();
    let reply = |from, read_round| {
        envelope(
            from,
            1,
            term,
            PeerMessage::AppendResponse(AppendResponse {
                success: true,
                match_index: 1,
                hint: 0,
                read_round,
                flushed_index: 0,
                incarnation: INCARNATION,
            }),
        )
    };
    leader.step(reply(2, round - 1));
    assert!(leader.take_ready().reads.is_empty());
    leader.step(reply(2, round));
    let commit = leader.commit_index();
    assert_eq!(leader.take_ready().reads, vec![(7, commit)]);
}

#[test]
fn pending_reads_fail_when_leadership_is_lost() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let leader = cluster.nodes.get_mut(&1).unwrap();
    leader.take_ready();
    leader.read(1);
    leader.take_ready();
    let term = leader.term();
    leader.step(append(2, 1, term + 1, (0, 0), vec![], 0));
    let ready = leader.take_ready();
    assert_eq!(ready.failed_reads, vec![1]);
    assert!(ready.reads.is_empty());
}

#[test]
fn leader_without_a_majority_steps_down_on_check_quorum() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let leader = cluster.nodes.get_mut(&1).unwrap();
    leader.check_quorum(); // clears the marks set when it was elected
    leader.check_quorum();
    assert_eq!(leader.role(), Role::Follower);
}

// ----- a small deterministic cluster -----

/// Cores wired by a queue; persistence is immediate, messages are delivered in order.
struct Cluster {
    nodes: BTreeMap<NodeId, RaftCore>,
    queue: VecDeque<PeerEnvelope>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    down: Vec<NodeId>,
    /// (leader, follower) pairs for which a snapshot was asked.
    snapshot_requests: Vec<(NodeId, NodeId)>,
}

impl Cluster {
    fn new(members: &[NodeId]) -> Self {
        let nodes = members
            .iter()
            .map(|&id| (id, core_with_log(id, members, 0, vec![])))
            .collect();
        Cluster {
            nodes,
            queue: VecDeque::new(),
            applied: BTreeMap::new(),
            down: vec![],
            snapshot_requests: vec![],
        }
    }

    fn drain(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        loop {
            let ready = node.take_ready();
            self.snapshot_requests
                .extend(ready.snapshots_needed.iter().map(|&peer| (id, peer)));
            if ready.nothing_to_persist()
                && ready.messages.is_empty()
                && ready.after_persist.is_empty()
                && ready.committed.is_empty()
            {
                break;
            }
            if let Some(last) = ready.entries.last() {
                node.persisted(last.index, last.term);
            }
            self.applied.entry(id).or_default().extend(ready.committed);
            self.queue.extend(ready.messages);
            self.queue.extend(ready.after_persist);
        }
    }

    fn run(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.drain(id);
        }
        let mut deliveries = 0;
        while let Some(message) = self.queue.pop_front() {
            deliveries += 1;
            assert!(deliveries < 100_000, "messages never stop flowing (a retry storm)");
            if self.down.contains(&message.to) || self.down.contains(&message.from) {
                continue;
            }
            let to = message.to;
            if let Some(node) = self.nodes.get_mut(&to) {
                node.step(message);
            }
            self.drain(to);
        }
    }

    /// Node `id` wins an election. The other live followers' election timers
    /// have fired first (their own pre-votes lost in the network): a follower
    /// that still hears from a leader would refuse to pre-vote.
    fn elect(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(&other, node)| other != id && !self.down.contains(&other) && node.role() != Role::Leader)
            .map(|(&other, _)| other)
            .collect();
        for other in others {
            let node = self.nodes.get_mut(&other).unwrap();
            node.election_timeout();
            node.take_ready();
        }
        self.nodes.get_mut(&id).unwrap().election_timeout();
        self.run();
        assert_eq!(self.nodes[&id].role(), Role::Leader);
    }
}

#[test]
fn a_cluster_elects_replicates_and_applies_the_same_entries_everywhere() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(2);
    for i in 0..5 {
        let command = Command::Put {
            key: format!("k{i}"),
            value: "v".into(),
            session: None,
        };
        cluster.nodes.get_mut(&2).unwrap().propose(command, i).unwrap();
        cluster.nodes.get_mut(&2).unwrap().replicate();
    }
    cluster.run();
    // One more heartbeat carries the final commit index to the followers.
    cluster.nodes.get_mut(&2).unwrap().heartbeat();
    cluster.run();
    let reference = cluster.applied[&2].clone();
    assert_eq!(reference.len(), 6, "no-op plus five puts");
    for id in [1, 3] {
        assert_eq!(cluster.applied[&id], reference, "node {id} applied the same entries");
    }
}

#[test]
fn a_new_leader_keeps_every_committed_entry() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let command = Command::Put {
        key: "k".into(),
        value: "v".into(),
        session: None,
    };
    let (index, _) = cluster.nodes.get_mut(&1).unwrap().propose(command, 1).unwrap();
    cluster.nodes.get_mut(&1).unwrap().replicate();
    cluster.run();
    assert!(cluster.nodes[&1].commit_index() >= index);
    cluster.down.push(1);
    cluster.elect(3);
    let new_leader = &cluster.nodes[&3];
    assert!(new_leader.log().entry(index).is_some_and(|e| e.term == 1));
}

#[test]
fn a_lagging_follower_is_brought_up_to_date_across_a_conflict() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    // Node 3 misses several entries.
    cluster.down.push(3);
    for i in 0..10 {
        cluster.nodes.get_mut(&1).unwrap().propose(Command::Noop, i).unwrap();
        cluster.nodes.get_mut(&1).unwrap().replicate();
    }
    cluster.run();
    cluster.down.clear();
    cluster.nodes.get_mut(&1).unwrap().heartbeat();
    cluster.run();
    cluster.nodes.get_mut(&1).unwrap().heartbeat();
    cluster.run();
    assert_eq!(
        cluster.nodes[&3].log().last_index(),
        cluster.nodes[&1].log().last_index()
    );
    assert_eq!(cluster.nodes[&3].commit_index(), cluster.nodes[&1].commit_index());
}

#[test]
fn trimmed_entries_are_replaced_by_a_snapshot_request() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.down.push(3);
    for i in 0..10 {
        cluster.nodes.get_mut(&1).unwrap().propose(Command::Noop, i).unwrap();
        cluster.nodes.get_mut(&1).unwrap().replicate();
    }
    cluster.run();
    // Node 3 answered before it went down: the first tick still waits for it.
    cluster.nodes.get_mut(&1).unwrap().trim_tick();
    assert_eq!(cluster.nodes[&1].log().first_index(), 1);
    for node in cluster.nodes.values_mut() {
        node.set_flushed(11);
    }
    cluster.nodes.get_mut(&1).unwrap().heartbeat();
    cluster.run();
    let leader = cluster.nodes.get_mut(&1).unwrap();
    assert_eq!((leader.commit_index(), leader.durable_index()), (11, 11));
    leader.trim_tick(); // node 3 answered nothing since the last tick: left out
    let ready = leader.take_ready();
    assert_eq!(ready.compact_to, Some(11));
    assert_eq!(leader.log().first_index(), 12);
    cluster.down.clear();
    cluster.nodes.get_mut(&1).unwrap().heartbeat();
    cluster.run();
    assert_eq!(cluster.snapshot_requests, vec![(1, 3)]);
}

// ----- invariant 9: recovery from lost durable state -----

/// Node `id` restarted after its WAL tail was cut: term `term`, vote lost, log `entries`.
fn recovering_core(id: NodeId, members: &[NodeId], term: Term, entries: Vec<Entry>) -> RaftCore {
    let hard = HardState {
        term,
        voted_for: None,
        recovering: true,
    };
    let mut core = RaftCore::new(config(id, members), hard, MemLog::new(0, 0, entries), 0);
    // Its first election timeout sends probe round 1.
    core.election_timeout();
    core.take_ready();
    core
}

/// An answer to probe round 1 of the test incarnation.
fn probe_reply(from: NodeId, to: NodeId, term: Term, recovering: bool) -> PeerEnvelope {
    envelope(
        from,
        to,
        term,
        PeerMessage::TermProbeReply(TermProbeReply {
            incarnation: INCARNATION,
            round: 1,
            recovering,
        }),
    )
}

#[test]
fn a_node_that_lost_durable_state_neither_votes_nor_campaigns_but_probes() {
    let mut node = recovering_core(1, &[1, 2, 3], 2, vec![entry(1, 1)]);
    assert!(node.is_recovering());
    // A candidate whose log looks up to date to what survived: refused.
    node.step(vote_request(2, 1, 3, 1, 1));
    assert_eq!(granted(&node.take_ready()), Some(false));
    // Its election timer asks the peers for their term instead of campaigning.
    node.election_timeout();
    let ready = node.take_ready();
    assert_eq!(node.role(), Role::Follower);
    assert_eq!(ready.hard_state, None);
    let probed: Vec<NodeId> = ready
        .messages
        .iter()
        .filter(|m| {
            m.message
                == PeerMessage::TermProbe(TermProbe {
                    incarnation: INCARNATION,
                    round: 2,
                })
        })
        .map(|m| m.to)
        .collect();
    assert_eq!(probed, vec![2, 3]);
    assert!(ready.reset_election_timer);
}

#[test]
fn until_the_term_is_known_no_entries_are_taken_even_from_a_newer_leader() {
    // Before its loss the node may have been in term 9; a leader of term 5
    // could be one it had already left behind.
    let mut node = recovering_core(1, &[1, 2, 3], 3, vec![entry(1, 1)]);
    node.step(append(2, 1, 5, (1, 1), vec![entry(2, 5)], 2));
    let ready = node.take_ready();
    assert!(append_reply(&ready).is_none(), "no answer, no ack");
    assert_eq!(node.log().last_index(), 1);
    // One answer of two needed (3 members): still unknown.
    node.step(probe_reply(3, 1, 9, false));
    node.step(append(2, 1, 5, (1, 1), vec![entry(2, 5)], 2));
    assert!(append_reply(&node.take_ready()).is_none());
    node.step(probe_reply(2, 1, 5, false));
    let ready = node.take_ready();
    // The highest term heard, with the vote spent (it may have voted in it).
    assert_eq!(
        ready.hard_state,
        Some(HardState {
            term: 9,
            voted_for: Some(1),
            recovering: true,
        })
    );
    // The term-5 leader is now stale: its entries are refused.
    node.step(append(2, 1, 5, (1, 1), vec![entry(2, 5)], 2));
    assert_eq!(append_reply(&node.take_ready()).map(|r| r.0), Some(false));
    assert_eq!(node.log().last_index(), 1);
    assert!(node.is_recovering());
}

#[test]
fn voting_resumes_only_once_a_leader_commit_of_its_own_term_is_durable_here() {
    let mut node = recovering_core(1, &[1, 2, 3], 4, vec![entry(1, 1), entry(2, 4)]);
    node.step(probe_reply(2, 1, 4, false));
    node.step(probe_reply(3, 1, 4, false));
    node.take_ready();
    assert!(node.is_recovering());
    // The leader of term 4 still holds entry 3 (lost here) and committed it.
    // A heartbeat that matches only up to 2: not yet caught up, although the
    // log already holds an entry of term 4.
    node.step(append(2, 1, 4, (2, 4), vec![], 3));
    assert!(append_reply(&node.take_ready()).is_some_and(|r| r.0));
    assert!(node.is_recovering(), "index 3 of term 4 is not here yet");
    // Entry 3 comes back; the leader's commit (3, term 4) is matched.
    node.step(append(2, 1, 4, (2, 4), vec![entry(3, 4)], 3));
    let ready = node.take_ready();
    assert!(append_reply(&ready).is_some_and(|r| r.0));
    assert!(node.is_recovering(), "entry 3 is not durable yet");
    node.persisted(3, 4);
    assert!(!node.is_recovering());
    assert_eq!(node.take_ready().hard_state.map(|h| h.recovering), Some(false));
    // Now an up-to-date candidate of a new term gets the vote.
    node.step(vote_request(3, 1, 5, 3, 4));
    assert_eq!(granted(&node.take_ready()), Some(true));
}

#[test]
fn a_restart_during_recovery_resumes_it() {
    let mut node = recovering_core(1, &[1, 2, 3], 4, vec![entry(1, 1)]);
    node.step(probe_reply(2, 1, 4, false));
    node.step(probe_reply(3, 1, 4, false));
    let hard = node.take_ready().hard_state.expect("the learned term is persisted");
    assert!(hard.recovering);
    let restarted = RaftCore::new(config(1, &[1, 2, 3]), hard, MemLog::new(0, 0, vec![entry(1, 1)]), 0);
    assert!(restarted.is_recovering());
}

#[test]
fn recovery_is_given_up_when_no_quorum_of_intact_nodes_exists() {
    // Three members, two of them (this one and node 2) lost state: no intact
    // majority can ever catch them up, so waiting would stop the cluster.
    let mut node = recovering_core(1, &[1, 2, 3], 4, vec![entry(1, 1)]);
    node.step(probe_reply(2, 1, 4, true));
    // Node 3 has not answered: it may be intact and hold what was acknowledged.
    assert!(node.is_recovering(), "gave up before every member answered");
    node.step(probe_reply(3, 1, 4, false));
    assert!(!node.is_recovering());
    node.take_ready();
    // Its vote in the highest term heard stays spent: it may have cast it already.
    assert_eq!(node.hard_state().voted_for, Some(1));
    node.step(vote_request(3, 1, 4, 9, 9));
    assert_eq!(granted(&node.take_ready()), Some(false));
    // It keeps its vote spent in the term it learned, and campaigns in the next.
    win_pre_vote(&mut node, &[3]);
    assert_eq!(node.role(), Role::Candidate);
    assert_eq!(node.term(), 5);
    // With one peer recovering of five members, it waits instead.
    let mut node = recovering_core(1, &[1, 2, 3, 4, 5], 4, vec![entry(1, 1)]);
    node.step(probe_reply(2, 1, 4, true));
    node.step(probe_reply(3, 1, 4, false));
    node.step(probe_reply(4, 1, 4, false));
    assert!(node.is_recovering());
}

#[test]
fn every_node_answers_a_term_probe_after_persisting_its_term() {
    let mut node = core_with_log(2, &[1, 2, 3], 3, vec![]);
    node.step(envelope(
        1,
        2,
        5,
        PeerMessage::TermProbe(TermProbe {
            incarnation: 3,
            round: 9,
        }),
    ));
    let ready = node.take_ready();
    assert_eq!(ready.hard_state.map(|h| h.term), Some(5));
    assert!(ready.messages.is_empty());
    assert_eq!(ready.after_persist.len(), 1);
    assert_eq!(ready.after_persist[0].term, 5);
    assert_eq!(
        ready.after_persist[0].message,
        PeerMessage::TermProbeReply(TermProbeReply {
            incarnation: 3,
            round: 9,
            recovering: false
        })
    );
}

#[test]
fn only_fresh_answers_from_intact_peers_tell_the_term() {
    let mut node = recovering_core(1, &[1, 2, 3, 4, 5], 4, vec![entry(1, 1)]);
    // An answer to another round, or another incarnation's question, is ignored.
    let stale_round = PeerMessage::TermProbeReply(TermProbeReply {
        incarnation: INCARNATION,
        round: 0,
        recovering: false,
    });
    let other_incarnation = PeerMessage::TermProbeReply(TermProbeReply {
        incarnation: INCARNATION - 1,
        round: 1,
        recovering: false,
    });
    node.step(envelope(2, 1, 4, stale_round));
    node.step(envelope(3, 1, 4, other_incarnation));
    // A recovering peer's answer does not count: its term may be among what it lost.
    node.step(probe_reply(4, 1, 4, true));
    node.step(probe_reply(5, 1, 4, false));
    node.step(probe_reply(2, 1, 4, false));
    assert_eq!(node.take_ready().hard_state, None, "two intact answers of three needed");
    node.step(probe_reply(3, 1, 6, false));
    let hard = node.take_ready().hard_state.expect("the term is learned");
    assert_eq!((hard.term, hard.voted_for, hard.recovering), (6, Some(1), true));
    // A new round forgets the old answers.
    let mut node = recovering_core(1, &[1, 2, 3], 4, vec![entry(1, 1)]);
    node.step(probe_reply(2, 1, 4, false));
    node.election_timeout();
    node.take_ready();
    node.step(probe_reply(3, 1, 4, false));
    assert_eq!(
        node.take_ready().hard_state,
        None,
        "the round-1 answer of node 2 no longer counts"
    );
}

#[test]
fn recovery_ends_only_on_an_append_addressed_to_this_incarnation() {
    let mut node = recovering_core(1, &[1, 2, 3], 4, vec![entry(1, 1), entry(2, 4)]);
    node.step(probe_reply(2, 1, 4, false));
    node.step(probe_reply(3, 1, 4, false));
    node.take_ready();
    // A heartbeat the leader sent before it heard this incarnation: its commit
    // index may predate an entry this node acknowledged and lost.
    let mut old = append(2, 1, 4, (2, 4), vec![], 2);
    if let PeerMessage::AppendEntries(AppendEntries {
        follower_incarnation, ..
    }) = &mut old.message
    {
        *follower_incarnation = INCARNATION - 1;
    }
    node.step(old);
    assert!(append_reply(&node.take_ready()).is_some_and(|r| r.0));
    assert!(node.is_recovering());
    node.step(append(2, 1, 4, (2, 4), vec![], 2));
    assert!(!node.is_recovering());
}

#[test]
fn a_leader_drops_answers_from_before_a_follower_restarted() {
    let mut leader = core_with_log(1, &[1, 2, 3], 1, vec![]);
    win_pre_vote(&mut leader, &[2]);
    leader.step(envelope(
        2,
        1,
        2,
        PeerMessage::VoteResponse(VoteResponse { granted: true }),
    ));
    assert_eq!(leader.role(), Role::Leader);
    leader.persisted(1, 2);
    leader.take_ready();
    let index = leader.propose(Command::Noop, 9).expect("leader").0;
    leader.persisted(index, 2);
    leader.take_ready();
    let answer = |incarnation, match_index| {
        envelope(
            3,
            1,
            2,
            PeerMessage::AppendResponse(AppendResponse {
                success: true,
                match_index,
                hint: 0,
                read_round: 0,
                flushed_index: 0,
                incarnation,
            }),
        )
    };
    // Node 3 answers from its new incarnation (it matched only the no-op)...
    leader.step(answer(20, 1));
    assert_eq!(leader.commit_index(), 1);
    // ... then an answer it sent before it restarted arrives: not counted.
    leader.step(answer(10, index));
    assert_eq!(leader.commit_index(), 1, "a pre-restart answer committed an entry");
    leader.step(answer(20, index));
    assert_eq!(leader.commit_index(), index);
    // The appends now carry the incarnation heard.
    leader.propose(Command::Noop, 10);
    leader.replicate();
    let to_3 = leader
        .take_ready()
        .messages
        .into_iter()
        .find(|m| m.to == 3)
        .expect("an append to node 3");
    assert!(matches!(
        to_3.message,
        PeerMessage::AppendEntries(AppendEntries {
            follower_incarnation: 20,
            ..
        })
    ));
}

// ----- hostile terms and indexes -----

#[test]
fn a_term_beyond_the_limit_changes_nothing() {
    let mut node = core_with_log(1, &[1, 2, 3], 3, vec![entry(1, 1)]);
    for term in [protocol::MAX_TERM + 1, u64::MAX] {
        node.step(vote_request(2, 1, term, u64::MAX, term));
        node.step(append(2, 1, term, (1, 1), vec![], 1));
        let ready = node.take_ready();
        assert_eq!(node.term(), 3, "term {term} was taken");
        assert!(
            ready.hard_state.is_none() && ready.after_persist.is_empty(),
            "{ready:?}"
        );
    }
    // An index past the limit, in an otherwise honest term, is ignored too.
    node.step(append(2, 1, 3, (1, 1), vec![entry(u64::MAX, 3)], u64::MAX));
    assert!(append_reply(&node.take_ready()).is_none());
    assert_eq!(node.log().last_index(), 1);
}

#[test]
fn a_node_at_the_term_limit_neither_overflows_nor_reuses_a_term() {
    let mut node = core_with_log(1, &[1, 2, 3], 1, vec![]);
    // The largest term allowed is taken...
    node.step(vote_request(2, 1, protocol::MAX_TERM, 0, 0));
    assert_eq!(node.term(), protocol::MAX_TERM);
    node.take_ready();
    // ...and an election from there would need a term past it: no campaign.
    node.election_timeout();
    let ready = node.take_ready();
    assert_eq!(node.term(), protocol::MAX_TERM);
    assert_eq!(node.role(), Role::Follower);
    assert!(
        ready.hard_state.is_none() && ready.after_persist.is_empty(),
        "{ready:?}"
    );
}

#[test]
fn a_single_node_that_lost_durable_state_resumes_at_its_first_timeout() {
    // Nobody can answer a probe: waiting would keep it in recovery forever.
    let hard = HardState {
        term: 4,
        voted_for: None,
        recovering: true,
    };
    let mut node = RaftCore::new(config(1, &[1]), hard, MemLog::new(0, 0, vec![entry(1, 1)]), 0);
    assert!(node.is_recovering());
    node.election_timeout();
    let ready = node.take_ready();
    assert!(!node.is_recovering());
    // The vote of term 4 may have been lost: it stays spent, so the node
    // campaigns in a new term, which it wins alone.
    let hard = ready.hard_state.expect("the end of the recovery is persisted");
    assert!(!hard.recovering);
    assert!(hard.term > 4 || hard.voted_for == Some(1), "{hard:?}");
    assert_eq!(node.role(), Role::Leader);
    assert!(node.term() > 4);
}

#[test]
fn a_node_of_two_that_lost_durable_state_resumes_too() {
    let hard = HardState {
        term: 4,
        voted_for: None,
        recovering: true,
    };
    let mut node = RaftCore::new(config(1, &[1, 2]), hard, MemLog::new(0, 0, vec![entry(1, 1)]), 0);
    node.election_timeout();
    node.take_ready();
    assert!(node.is_recovering(), "its peer can tell it the term: it asks first");
    node.step(probe_reply(2, 1, 9, false));
    node.take_ready();
    assert!(!node.is_recovering());
    assert_eq!(node.term(), 9, "the term it learned, with its vote spent");
    assert_eq!(node.hard_state().voted_for, Some(1));
}

// ----- PreVote (invariant 10) -----

#[test]
fn a_pre_vote_is_refused_while_the_leader_is_heard_and_changes_nothing() {
    let mut follower = core_with_log(2, &[1, 2, 3], 5, vec![entry(1, 5)]);
    follower.step(append(1, 2, 5, (1, 5), vec![], 1));
    follower.take_ready();
    // A node that was cut off asks, proposing a far higher term.
    let ask = |term| {
        envelope(
            3,
            2,
            term,
            PeerMessage::PreVote(VoteRequest {
                last_log_index: 1,
                last_log_term: 5,
            }),
        )
    };
    follower.step(ask(40));
    let ready = follower.take_ready();
    assert_eq!(ready.hard_state, None);
    assert_eq!((follower.term(), follower.leader()), (5, Some(1)), "the leader is kept");
    let answer = ready.after_persist.iter().find_map(|m| match m.message {
        PeerMessage::PreVoteResponse(PreVoteResponse { term, granted }) => Some((m.term, term, granted)),
        _ => None,
    });
    assert_eq!(answer, Some((5, 40, false)), "refused, with this node's own term");
    // Once its own timer fired (no leader heard since), it would vote.
    follower.election_timeout();
    follower.take_ready();
    follower.step(ask(40));
    let ready = follower.take_ready();
    assert!(ready.after_persist.iter().any(|m| matches!(
        m.message,
        PeerMessage::PreVoteResponse(PreVoteResponse {
            term: 40,
            granted: true
        })
    )));
    assert_eq!(follower.term(), 5, "still no term raised");
    // Never for a stale log or a term not ahead.
    follower.step(envelope(
        3,
        2,
        40,
        PeerMessage::PreVote(VoteRequest {
            last_log_index: 0,
            last_log_term: 0,
        }),
    ));
    follower.step(ask(5));
    let refusals = follower
        .take_ready()
        .after_persist
        .iter()
        .filter(|m| {
            matches!(
                m.message,
                PeerMessage::PreVoteResponse(PreVoteResponse { granted: false, .. })
            )
        })
        .count();
    assert_eq!(refusals, 2);
}

#[test]
fn an_isolated_node_does_not_raise_its_term_and_rejoins_without_deposing_the_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let term = cluster.nodes[&1].term();
    // Node 3 is cut off; its timer fires again and again.
    cluster.down.push(3);
    for _ in 0..20 {
        cluster.nodes.get_mut(&3).unwrap().election_timeout();
        cluster.run();
        cluster.nodes.get_mut(&1).unwrap().heartbeat();
        cluster.run();
    }
    assert_eq!(cluster.nodes[&3].term(), term, "pre-votes raised no term");
    // It returns and times out once more before hearing the leader: the
    // others hear the leader, refuse, and the leader stays.
    cluster.down.clear();
    cluster.nodes.get_mut(&3).unwrap().election_timeout();
    cluster.run();
    assert_eq!(cluster.nodes[&1].role(), Role::Leader);
    assert_eq!(cluster.nodes[&1].term(), term);
    cluster.nodes.get_mut(&1).unwrap().heartbeat();
    cluster.run();
    assert_eq!(cluster.nodes[&3].leader(), Some(1));
}
