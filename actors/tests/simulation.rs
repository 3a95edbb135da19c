//! Deterministic simulation of the consensus core.
//!
//! Several `RaftCore`s are wired by an in-memory network under a seeded
//! scheduler that delivers messages in any order, drops and duplicates them,
//! partitions links, fires timers in adversarial orders, completes disk
//! writes late, and crashes nodes (losing what was not yet durable) and
//! restarts them from what was. The core and what it asks to persist come
//! from the `consensus` crate, as in a node: the durable log is built from the
//! same `RaftCore::take_persist` the ElectionActor hands the LogActor, and a
//! restart uses the same `MemLog::reconcile` as start-up; the state machine is
//! the actors crate's own `StateMachine`. After every step the invariants are
//! checked; the same seed replays the same run exactly.
//!
//! `cargo test -p actors --test simulation` runs a CI-sized slice.
//! Long mode: `KVS_SIM_SEEDS=100000 KVS_SIM_STEPS=5000 cargo test --release -p actors
//! --test simulation -- --ignored --nocapture` prints the seed of any failure.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use actors::state::{ApplyResult, StateMachine};
use actors::storage::StoredState;
use consensus::{CoreConfig, HardState, MemLog, Persist, RaftCore};
use protocol::{Command, Entry, LogIndex, NodeId, PeerEnvelope, Role, Session, Term};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Node {
    id: NodeId,
    core: Option<RaftCore>,
    /// What the WAL holds durably.
    wal_hard: HardState,
    wal_log: MemLog,
    /// Writes handed to the disk but not yet durable (lost on crash).
    pending: VecDeque<Persist>,
    /// The state store's durable applied point.
    store: (LogIndex, Term),
    /// Applied in memory (lost on crash, back to `store` on restart).
    applied: (LogIndex, Term),
    /// The real state machine, as of `applied`.
    state: StateMachine,
    /// The state store's content as of `store`: what the state machine's
    /// flush batches (its keys and session rows) and snapshot installs left,
    /// as the store contract (`StoredState::absorb`) has it.
    stored: StoredState,
    /// Hard states written before the current one, newest last: what a cut
    /// WAL tail falls back to.
    older_hard: Vec<HardState>,
}

/// Which faults beyond the ordinary ones a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DurableLoss {
    /// Durable data is never lost (the fsync model).
    Never,
    /// Some restarts find the WAL's tail cut, durable entries and hard
    /// states included, and recover as `startup::recover` does: marked
    /// recovering (invariant 9).
    Recovered,
    /// The same cuts, but the node restarts as if nothing was lost: the
    /// simulation must catch what that breaks.
    Ignored,
}

#[derive(Default)]
struct Stats {
    committed: usize,
    acknowledged: usize,
    reads: usize,
    elections: usize,
    crashes: usize,
    snapshots: usize,
    durable_losses: usize,
    /// Reads whose value was checked against the committed history.
    values_checked: usize,
    /// Answers to session writes checked against their first application.
    session_answers_checked: usize,
    /// Committed retries of a session write already applied (not applied again).
    session_retries_committed: usize,
}

fn encode_state(state: &StateMachine) -> Vec<u8> {
    let mut bytes = Vec::new();
    state
        .snapshot_source()
        .encode_into(&mut bytes)
        .expect("a state encodes");
    bytes
}

/// The state machine and the store content a snapshot install leaves.
fn decode_snapshot(bytes: &[u8]) -> Result<(StateMachine, StoredState), String> {
    if bytes.is_empty() {
        return Ok((StateMachine::default(), StoredState::default()));
    }
    StateMachine::read_snapshot(bytes).map_err(|e| format!("a snapshot does not decode: {e}"))
}

/// Clients writing through exactly-once sessions. Each has one write in
/// flight at most and retries it (same sequence number) until it is answered,
/// from whichever leader it reaches: the retries that exactly-once exists for.
const SESSION_CLIENTS: u64 = 3;

#[derive(Debug, Default, Clone)]
struct SessionClient {
    /// The sequence number of the write in flight, or of the next one.
    seq: u64,
    /// The write in flight: key and value.
    in_flight: Option<(String, String)>,
}

struct Sim {
    rng: StdRng,
    nodes: Vec<Node>,
    config: CoreConfig,
    network: Vec<PeerEnvelope>,
    blocked: HashSet<(NodeId, NodeId)>,
    /// Index -> (term, request id) of the entry applied there, by whoever applied it first.
    applied_everywhere: BTreeMap<LogIndex, (Term, u64)>,
    durable_loss: DurableLoss,
    /// Incarnations handed out so far (the first start of every node is 1).
    incarnations: u64,
    /// Index -> the highest term any node had when that entry was first applied: every
    /// leader of a later term was elected after the commit and must hold the entry.
    committed_by_term: BTreeMap<LogIndex, Term>,
    leaders: HashMap<Term, NodeId>,
    /// Proposals awaiting their answer: request id -> (proposer, index, term).
    proposals: HashMap<u64, (NodeId, LogIndex, Term)>,
    /// Highest index of a write whose client got a success answer.
    acknowledged_up_to: LogIndex,
    /// Reads in flight: id -> acknowledged_up_to when the read was issued.
    reads: HashMap<u64, (LogIndex, String)>,
    /// Reads released by a leader's core, waiting (as in the CommitActor)
    /// until that node has applied their read index: (node, index, key).
    waiting_reads: Vec<(usize, LogIndex, String)>,
    /// Every committed write of each key, in index order: what a node that
    /// has applied up to an index must read. A session write counts once,
    /// at its first committed entry; its retries change nothing.
    history: HashMap<String, Vec<(LogIndex, Option<String>)>>,
    session_clients: Vec<SessionClient>,
    /// (client, seq) of every session write applied, with the old value its
    /// first application found: the answer every attempt of it must get.
    session_answers: HashMap<(u64, u64), Option<String>>,
    /// Proposals of session writes: request id -> (client, seq).
    session_proposals: HashMap<u64, (u64, u64)>,
    /// Snapshots as the real state machine encodes them, by applied index.
    snapshot_bytes: HashMap<LogIndex, Vec<u8>>,
    next_request: u64,
    trace: Vec<String>,
    stats: Stats,
}

fn config_for(members: &[NodeId]) -> CoreConfig {
    CoreConfig {
        id: 0,
        members: members.to_vec(),
        max_batch_entries: 3,
        max_batch_bytes: 1 << 20,
        max_inflight_entries: 8,
        snapshot_retry_rounds: 3,
        incarnation: 1,
    }
}

impl Sim {
    fn new(seed: u64, members: usize, durable_loss: DurableLoss) -> Self {
        let ids: Vec<NodeId> = (1..=members as NodeId).collect();
        let config = config_for(&ids);
        let nodes = ids
            .iter()
            .map(|&id| {
                let mut node = Node {
                    id,
                    core: None,
                    wal_hard: HardState::default(),
                    wal_log: MemLog::default(),
                    pending: VecDeque::new(),
                    store: (0, 0),
                    applied: (0, 0),
                    state: StateMachine::default(),
                    stored: StoredState::default(),
                    older_hard: Vec::new(),
                };
                node.core = Some(RaftCore::new(
                    CoreConfig { id, ..config.clone() },
                    HardState::default(),
                    MemLog::default(),
                    0,
                ));
                node
            })
            .collect();
        Sim {
            rng: StdRng::seed_from_u64(seed),
            nodes,
            config,
            network: Vec::new(),
            blocked: HashSet::new(),
            durable_loss,
            incarnations: 1,
            applied_everywhere: BTreeMap::new(),
            committed_by_term: BTreeMap::new(),
            leaders: HashMap::new(),
            proposals: HashMap::new(),
            acknowledged_up_to: 0,
            reads: HashMap::new(),
            waiting_reads: Vec::new(),
            history: HashMap::new(),
            session_clients: vec![
                SessionClient {
                    seq: 1,
                    in_flight: None
                };
                SESSION_CLIENTS as usize
            ],
            session_answers: HashMap::new(),
            session_proposals: HashMap::new(),
            snapshot_bytes: HashMap::new(),
            next_request: 1,
            trace: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn log(&mut self, line: String) {
        if self.trace.len() > 400 {
            self.trace.remove(0);
        }
        self.trace.push(line);
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].core.is_some())
            .collect()
    }

    fn leaders_now(&self) -> Vec<usize> {
        self.live()
            .into_iter()
            .filter(|&i| self.nodes[i].core.as_ref().is_some_and(|c| c.role() == Role::Leader))
            .collect()
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.rng.gen_range(0..items.len())])
        }
    }

    /// Hands out what node `i`'s core decided, as the actors would.
    fn process(&mut self, i: usize) -> Result<(), String> {
        for _ in 0..100 {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return Ok(());
            };
            let mut ready = core.take_ready();
            let empty = ready.nothing_to_persist()
                && ready.messages.is_empty()
                && ready.after_persist.is_empty()
                && ready.committed.is_empty()
                && ready.reads.is_empty()
                && ready.snapshots_needed.is_empty()
                && ready.install_snapshot.is_none();
            if empty {
                return Ok(());
            }
            self.network.append(&mut ready.messages);
            if let Some(snapshot) = ready.install_snapshot.take() {
                // The CommitActor replaces the store durably before the log moves.
                let index = snapshot.index;
                if index > 0 && !self.applied_everywhere.contains_key(&index) {
                    return Err(format!(
                        "node {} got a snapshot at {index}, beyond anything applied",
                        i + 1
                    ));
                }
                let bytes = self.snapshot_bytes.get(&index).cloned().unwrap_or_default();
                let (state, stored) = decode_snapshot(&bytes)?;
                if state.applied_index() != index {
                    return Err(format!(
                        "node {}: the snapshot at {index} holds state applied to {}",
                        i + 1,
                        state.applied_index()
                    ));
                }
                self.nodes[i].state = state;
                self.nodes[i].stored = stored;
                self.nodes[i].store = (snapshot.index, snapshot.term);
                self.nodes[i].applied = (snapshot.index, snapshot.term);
                self.stats.snapshots += 1;
            }
            let core = self.nodes[i].core.as_ref().ok_or("core vanished")?;
            if let Some(persist) = core.take_persist(&mut ready) {
                self.nodes[i].pending.push_back(persist);
            }
            for entry in std::mem::take(&mut ready.committed) {
                self.apply(i, &entry)?;
            }
            for (read, index) in std::mem::take(&mut ready.reads) {
                let (needed, key) = self.reads.remove(&read).ok_or("unknown read released")?;
                if index < needed {
                    return Err(format!(
                        "stale read: node {} released read {read} at index {index}, but a write at {needed} was acknowledged before the read arrived",
                        i + 1
                    ));
                }
                self.waiting_reads.push((i, index, key));
                self.stats.reads += 1;
            }
            self.serve_reads(i)?;
            for read in std::mem::take(&mut ready.failed_reads) {
                self.reads.remove(&read);
            }
            for peer in std::mem::take(&mut ready.snapshots_needed) {
                let (index, term) = self.nodes[i].applied;
                let bytes = encode_state(&self.nodes[i].state);
                self.snapshot_bytes.insert(index, bytes);
                let core = self.nodes[i].core.as_mut().ok_or("core vanished")?;
                let current = core.term();
                core.send_snapshot(peer, current, index, term, (0, 0));
            }
        }
        Err(format!("node {} never settled", i + 1))
    }

    /// The write of request `request`: a plain put, or a session client's
    /// write (its retry, if its last one is unanswered).
    fn next_write(&mut self, request: u64) -> Command {
        let client = request % (SESSION_CLIENTS + 1);
        let Some(state) = self.session_clients.get_mut(client as usize) else {
            return Command::Put {
                key: format!("k{}", request % 4),
                value: request.to_string(),
                session: None,
            };
        };
        let (key, value) = state
            .in_flight
            .get_or_insert_with(|| (format!("k{}", (request / 5) % 4), format!("s{client}.{}", state.seq)))
            .clone();
        let session = Session {
            client_id: client + 1,
            seq: state.seq,
            // One write in flight: every earlier one is answered.
            acked_below: state.seq,
            floor: Some(0),
        };
        self.session_proposals.insert(request, (client, state.seq));
        Command::Put {
            key,
            value,
            session: Some(session),
        }
    }

    fn apply(&mut self, i: usize, entry: &Entry) -> Result<(), String> {
        let node = &mut self.nodes[i];
        if entry.index <= node.applied.0 {
            return Ok(());
        }
        if entry.index != node.applied.0 + 1 {
            return Err(format!(
                "node {} applied {} after {}: out of order",
                node.id, entry.index, node.applied.0
            ));
        }
        node.applied = (entry.index, entry.term);
        let answer = node.state.apply(entry);
        let id = node.id;
        match self.applied_everywhere.get(&entry.index) {
            Some(&(term, request)) if (term, request) != (entry.term, entry.request_id) => {
                return Err(format!(
                    "node {id} applied ({}, {}, req {}) at an index where another node applied ({term}, req {request})",
                    entry.index, entry.term, entry.request_id
                ));
            }
            Some(_) => {}
            None => {
                let highest_term = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.core.as_ref().map(|c| c.term()))
                    .max();
                self.committed_by_term.insert(entry.index, highest_term.unwrap_or(0));
                // Nodes apply in index order, so the first to apply an index has
                // applied all before it: the history grows in index order.
                match &entry.command {
                    Command::Put { key, value, session } => {
                        let writes = self.history.entry(key.clone()).or_default();
                        let old = writes.last().and_then(|(_, value)| value.clone());
                        let first = match session {
                            Some(s) => {
                                let attempt = (s.client_id - 1, s.seq);
                                let first = !self.session_answers.contains_key(&attempt);
                                self.session_answers.entry(attempt).or_insert(old);
                                if !first {
                                    self.stats.session_retries_committed += 1;
                                }
                                first
                            }
                            None => true,
                        };
                        if first {
                            writes.push((entry.index, Some(value.clone())));
                        }
                    }
                    Command::Delete { key, .. } => {
                        self.history.entry(key.clone()).or_default().push((entry.index, None));
                    }
                    Command::Noop => {}
                }
                self.applied_everywhere
                    .insert(entry.index, (entry.term, entry.request_id));
                self.stats.committed += 1;
            }
        }
        // The proposer answers its client once it applies its own entry.
        if let Some(&(proposer, index, term)) = self.proposals.get(&entry.request_id) {
            if proposer == id && index == entry.index && term == entry.term {
                self.proposals.remove(&entry.request_id);
                self.check_session_answer(id, entry, answer)?;
                self.acknowledged_up_to = self.acknowledged_up_to.max(index);
                self.stats.acknowledged += 1;
            }
        }
        Ok(())
    }

    /// Checks the answer a session write's attempt got: the old value its
    /// first application found, however many attempts were applied and
    /// whatever crashes, restarts and snapshots came between. Then its client
    /// moves on to its next write.
    fn check_session_answer(&mut self, node: NodeId, entry: &Entry, answer: Option<ApplyResult>) -> Result<(), String> {
        let Some((client, seq)) = self.session_proposals.remove(&entry.request_id) else {
            return Ok(());
        };
        let expected = self.session_answers.get(&(client, seq)).cloned();
        if answer != expected.clone().map(Ok) {
            return Err(format!(
                "node {node} answered session write (client {}, seq {seq}) at index {} with {answer:?}; \
                 its first application found {expected:?}",
                client + 1,
                entry.index
            ));
        }
        self.stats.session_answers_checked += 1;
        if let Some(state) = self.session_clients.get_mut(client as usize) {
            if state.seq == seq {
                state.seq += 1;
                state.in_flight = None;
            }
        }
        Ok(())
    }

    /// Serves node `i`'s released reads whose index it has applied, and checks
    /// each value against the committed history at the node's applied index.
    fn serve_reads(&mut self, i: usize) -> Result<(), String> {
        let applied = self.nodes[i].applied.0;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting_reads)
            .into_iter()
            .partition(|(node, index, _)| *node == i && *index <= applied);
        self.waiting_reads = waiting;
        for (_, index, key) in ready {
            let got = self.nodes[i].state.get(&key);
            let expected = self
                .history
                .get(&key)
                .and_then(|writes| writes.iter().rev().find(|(at, _)| *at <= applied))
                .and_then(|(_, value)| value.clone());
            if got != expected {
                return Err(format!(
                    "node {} read {key} = {got:?} at applied index {applied} (read index {index}), \
                     but the committed history says {expected:?}",
                    i + 1
                ));
            }
            self.stats.values_checked += 1;
        }
        Ok(())
    }

    fn complete_persist(&mut self, i: usize) -> Result<(), String> {
        let Some(persist) = self.nodes[i].pending.pop_front() else {
            return Ok(());
        };
        let last = persist.last_written();
        let node = &mut self.nodes[i];
        if let Some(hard) = persist.hard_state {
            node.older_hard.push(node.wal_hard);
            if node.older_hard.len() > 4 {
                node.older_hard.remove(0);
            }
            node.wal_hard = hard;
        }
        for entry in &persist.entries {
            node.wal_log.truncate_from(entry.index);
            if entry.index == node.wal_log.last_index() + 1 {
                node.wal_log.push(entry.clone());
            } else {
                return Err(format!("node {} wrote a non-contiguous entry {}", node.id, entry.index));
            }
        }
        if let Some(rewrite) = &persist.rewrite {
            node.wal_hard = rewrite.hard_state;
            node.wal_log = MemLog::new(rewrite.start_index, rewrite.start_term, rewrite.entries.clone());
        }
        self.network.extend(persist.then_send);
        if let (Some((index, term)), Some(core)) = (last, self.nodes[i].core.as_mut()) {
            core.persisted(index, term);
        }
        self.process(i)
    }

    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.core = None;
        node.pending.clear();
        self.waiting_reads.retain(|(node, _, _)| *node != i);
        self.stats.crashes += 1;
        let id = node.id;
        self.log(format!("crash {id}"));
    }

    fn restart(&mut self, i: usize) {
        // Every start is a new incarnation, greater than all before it.
        self.incarnations += 1;
        let config = CoreConfig {
            id: self.nodes[i].id,
            incarnation: self.incarnations,
            ..self.config.clone()
        };
        if self.durable_loss != DurableLoss::Never && self.may_lose_durable_state(i) && self.rng.gen_bool(0.15) {
            self.cut_durable_tail(i);
        }
        let node = &mut self.nodes[i];
        let mut log = node.wal_log.clone();
        if log.reconcile(node.store.0, node.store.1) {
            node.wal_log = log.clone();
        }
        node.applied = node.store;
        node.state = StateMachine::from_stored(node.stored.clone()).expect("the stored state decodes");
        node.core = Some(RaftCore::new(config, node.wal_hard, log, node.store.0));
        let id = node.id;
        self.log(format!("restart {id}"));
    }

    /// The fault model under which no acknowledged write may be lost: a
    /// minority of nodes recovering from lost durable state at once. Beyond
    /// it, nodes resume with what survived (invariant 9), and loss is
    /// possible, as in any replicated store.
    fn may_lose_durable_state(&self, i: usize) -> bool {
        if self.durable_loss == DurableLoss::Ignored {
            // Nothing marks an ignored loss as pending: let one node alone lose
            // state, so what breaks is the missing rule, not a majority's loss.
            return i == 0;
        }
        let recovering =
            |node: &Node| node.wal_hard.recovering || node.core.as_ref().is_some_and(RaftCore::is_recovering);
        let others = (0..self.nodes.len())
            .filter(|&j| j != i && recovering(&self.nodes[j]))
            .count();
        let minority = (self.nodes.len() - 1) / 2;
        others < minority
    }

    /// The WAL's last records are gone, though they were durable: up to
    /// three entries, and the hard states written among them.
    fn cut_durable_tail(&mut self, i: usize) {
        let cut_entries = self.rng.gen_range(0..=3u64);
        let cut_hard = self.rng.gen_range(0..=self.nodes[i].older_hard.len().min(2));
        let node = &mut self.nodes[i];
        let keep = node
            .wal_log
            .last_index()
            .saturating_sub(cut_entries)
            .max(node.wal_log.start_index());
        let cut = node.wal_log.last_index() - keep;
        node.wal_log.truncate_from(keep + 1);
        for _ in 0..cut_hard {
            if let Some(older) = node.older_hard.pop() {
                node.wal_hard = older;
            }
        }
        if cut == 0 && cut_hard == 0 {
            return;
        }
        if self.durable_loss == DurableLoss::Recovered {
            node.wal_hard.recovering = true;
        }
        let id = node.id;
        self.stats.durable_losses += 1;
        self.log(format!(
            "node {id} lost {cut} durable entries and {cut_hard} hard states"
        ));
    }

    fn step(&mut self) -> Result<(), String> {
        let roll = self.rng.gen_range(0..1000);
        let live = self.live();
        let leaders = self.leaders_now();
        match roll {
            0..=399 => {
                if !self.network.is_empty() {
                    let k = self.rng.gen_range(0..self.network.len());
                    let message = self.network.swap_remove(k);
                    let to = (message.to - 1) as usize;
                    if self.blocked.contains(&(message.from, message.to)) {
                        return Ok(());
                    }
                    if let Some(core) = self.nodes[to].core.as_mut() {
                        core.step(message);
                        self.process(to)?;
                    }
                }
            }
            400..=419 => {
                if !self.network.is_empty() {
                    let k = self.rng.gen_range(0..self.network.len());
                    self.network.swap_remove(k);
                }
            }
            420..=434 => {
                if !self.network.is_empty() {
                    let k = self.rng.gen_range(0..self.network.len());
                    let copy = self.network[k].clone();
                    self.network.push(copy);
                }
            }
            435..=619 => {
                let waiting: Vec<usize> = live
                    .iter()
                    .copied()
                    .filter(|&i| !self.nodes[i].pending.is_empty())
                    .collect();
                if let Some(i) = self.pick(&waiting) {
                    self.complete_persist(i)?;
                }
            }
            620..=659 => {
                // Election timeouts: rare while a leader is about, frequent when none is.
                if !leaders.is_empty() && self.rng.gen_bool(0.8) {
                    return self.check();
                }
                let followers: Vec<usize> = live.iter().copied().filter(|i| !leaders.contains(i)).collect();
                if let Some(i) = self.pick(&followers) {
                    self.log(format!("election timeout {}", i + 1));
                    self.stats.elections += 1;
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.election_timeout();
                    }
                    self.process(i)?;
                }
            }
            660..=729 => {
                if let Some(i) = self.pick(&leaders) {
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.heartbeat();
                    }
                    self.process(i)?;
                }
            }
            730..=739 => {
                if let Some(i) = self.pick(&leaders) {
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.check_quorum();
                    }
                    self.process(i)?;
                }
            }
            740..=759 => {
                if let Some(i) = self.pick(&leaders) {
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.trim_tick();
                    }
                    self.process(i)?;
                }
            }
            760..=799 => {
                // The CommitActor flushes the store, durably, and tells the core.
                if let Some(i) = self.pick(&live) {
                    let node = &mut self.nodes[i];
                    let batch = node
                        .state
                        .take_flush_batch(node.store.0)
                        .map_err(|e| format!("node {} cannot encode a flush: {e}", node.id))?;
                    if let Some(batch) = batch {
                        node.stored.absorb(&batch);
                    }
                    node.store = node.applied;
                    let flushed = node.store.0;
                    if let Some(core) = node.core.as_mut() {
                        core.set_flushed(flushed);
                    }
                }
            }
            800..=919 => {
                if let Some(i) = self.pick(&leaders) {
                    let request = self.next_request;
                    self.next_request += 1;
                    let command = self.next_write(request);
                    let id = self.nodes[i].id;
                    if let Some((index, term)) = self.nodes[i].core.as_mut().and_then(|c| c.propose(command, request)) {
                        self.proposals.insert(request, (id, index, term));
                    }
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.replicate();
                    }
                    self.process(i)?;
                }
            }
            920..=969 => {
                if let Some(i) = self.pick(&leaders) {
                    let read = self.next_request;
                    self.next_request += 1;
                    // From the request id, not the scheduler's random stream, so
                    // that a seed replays the schedule it always did.
                    let key = format!("k{}", (read / 3) % 4);
                    self.reads.insert(read, (self.acknowledged_up_to, key));
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.read(read);
                    }
                    self.process(i)?;
                }
            }
            970..=974 => {
                // Crash, favouring leaders.
                let target = if self.rng.gen_bool(0.5) {
                    self.pick(&leaders)
                } else {
                    self.pick(&live)
                };
                if let Some(i) = target {
                    self.crash(i);
                }
            }
            975..=986 => {
                let down: Vec<usize> = (0..self.nodes.len()).filter(|i| !live.contains(i)).collect();
                if let Some(i) = self.pick(&down) {
                    self.restart(i);
                    self.process(i)?;
                }
            }
            987..=991 => {
                let n = self.nodes.len() as NodeId;
                let a = self.rng.gen_range(1..=n);
                let b = self.rng.gen_range(1..=n);
                if a != b {
                    self.blocked.insert((a, b));
                    if self.rng.gen_bool(0.5) {
                        self.blocked.insert((b, a));
                    }
                    self.log(format!("block {a}->{b}"));
                }
            }
            992..=996 => {
                self.blocked.clear();
                self.log("heal".into());
            }
            _ => {
                // A leader isolated from everyone.
                if let Some(i) = self.pick(&leaders) {
                    let id = self.nodes[i].id;
                    for other in 1..=self.nodes.len() as NodeId {
                        if other != id {
                            self.blocked.insert((id, other));
                            self.blocked.insert((other, id));
                        }
                    }
                    self.log(format!("isolate leader {id}"));
                }
            }
        }
        self.check()
    }

    fn check(&mut self) -> Result<(), String> {
        // At most one leader per term.
        for i in self.leaders_now() {
            let core = self.nodes[i].core.as_ref().ok_or("core vanished")?;
            let (term, id) = (core.term(), core.id());
            match self.leaders.get(&term) {
                Some(&other) if other != id => {
                    return Err(format!("two leaders in term {term}: {other} and {id}"));
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                    if self.trace.len() > 400 {
                        self.trace.remove(0);
                    }
                    self.trace.push(format!("leader {id} term {term}"));
                }
            }
            // Leader completeness: every entry applied anywhere is in the leader's log
            // (or below its start point, inside its store).
            let log = core.log();
            for (&index, &(term_at, _)) in self.applied_everywhere.range(log.first_index()..) {
                let elected_after_commit = self.committed_by_term.get(&index).is_some_and(|&t| term > t);
                if elected_after_commit && log.term(index) != Some(term_at) {
                    return Err(format!(
                        "leader {id} (term {term}) lacks committed entry ({index}, {term_at}): has {:?}",
                        log.term(index)
                    ));
                }
            }
        }
        // Log matching: logs that agree on an entry agree on everything before it.
        let live = self.live();
        for (a, &i) in live.iter().enumerate() {
            for &j in &live[a + 1..] {
                let (Some(x), Some(y)) = (self.nodes[i].core.as_ref(), self.nodes[j].core.as_ref()) else {
                    continue;
                };
                let (x, y) = (x.log(), y.log());
                let low = x.first_index().max(y.first_index());
                let high = x.last_index().min(y.last_index());
                let agree = (low..=high).rev().find(|&k| x.term(k) == y.term(k));
                if let Some(k) = agree {
                    for m in low..=k {
                        if x.entry(m) != y.entry(m) {
                            return Err(format!(
                                "logs of {} and {} agree at {k} but differ at {m}",
                                i + 1,
                                j + 1
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn heal_and_settle(&mut self) -> Result<(), String> {
        self.blocked.clear();
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() {
                self.restart(i);
            }
        }
        // Let a leader emerge and bring everyone up to date, with no more faults.
        for _round in 0..200 {
            for i in 0..self.nodes.len() {
                while !self.nodes[i].pending.is_empty() {
                    self.complete_persist(i)?;
                }
            }
            let mut deliveries = 0;
            while let Some(message) = self.network.pop() {
                deliveries += 1;
                if deliveries > 100_000 {
                    return Err("messages never stop flowing after healing (a message storm)".into());
                }
                let to = (message.to - 1) as usize;
                if let Some(core) = self.nodes[to].core.as_mut() {
                    core.step(message);
                    self.process(to)?;
                }
                while !self.nodes[to].pending.is_empty() {
                    self.complete_persist(to)?;
                }
            }
            let leaders = self.leaders_now();
            if leaders.is_empty() {
                let i = self.rng.gen_range(0..self.nodes.len());
                if let Some(core) = self.nodes[i].core.as_mut() {
                    core.election_timeout();
                }
                self.process(i)?;
            } else {
                for &i in &leaders {
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.heartbeat();
                    }
                    self.process(i)?;
                }
                // A recovering node's election timer keeps running: it probes.
                for i in 0..self.nodes.len() {
                    if let Some(core) = self.nodes[i].core.as_mut().filter(|c| c.is_recovering()) {
                        core.election_timeout();
                        self.process(i)?;
                    }
                }
            }
            self.check()?;
        }
        let leaders = self.leaders_now();
        let &[leader] = leaders.as_slice() else {
            return Err(format!("no single leader after healing: {leaders:?}"));
        };
        let commit = self.nodes[leader].core.as_ref().map_or(0, |c| c.commit_index());
        for node in &self.nodes {
            if node.applied.0 < commit {
                return Err(format!(
                    "node {} stuck at {} after healing (leader commit {commit})",
                    node.id, node.applied.0
                ));
            }
        }
        Ok(())
    }
}

fn run(seed: u64, members: usize, steps: usize) -> Result<Stats, String> {
    run_with(seed, members, steps, DurableLoss::Recovered)
}

fn run_with(seed: u64, members: usize, steps: usize, durable_loss: DurableLoss) -> Result<Stats, String> {
    let mut sim = Sim::new(seed, members, durable_loss);
    let outcome = (0..steps)
        .try_for_each(|_| sim.step())
        .and_then(|()| sim.heal_and_settle());
    match outcome {
        Ok(()) => Ok(sim.stats),
        Err(violation) => {
            let tail = sim
                .trace
                .iter()
                .rev()
                .take(30)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ");
            Err(format!(
                "seed {seed} ({members} nodes): {violation}\n  last events:\n  {tail}"
            ))
        }
    }
}

fn run_many(seeds: std::ops::Range<u64>, members: usize, steps: usize) -> Stats {
    let mut total = Stats::default();
    for seed in seeds {
        match run(seed, members, steps) {
            Ok(stats) => {
                total.committed += stats.committed;
                total.acknowledged += stats.acknowledged;
                total.reads += stats.reads;
                total.values_checked += stats.values_checked;
                total.session_answers_checked += stats.session_answers_checked;
                total.session_retries_committed += stats.session_retries_committed;
                total.elections += stats.elections;
                total.crashes += stats.crashes;
                total.snapshots += stats.snapshots;
                total.durable_losses += stats.durable_losses;
            }
            Err(report) => panic!("{report}"),
        }
    }
    total
}

fn assert_not_vacuous(stats: &Stats) {
    eprintln!(
        "acknowledged {} ({} session answers checked, {} committed session retries), reads {} ({} values checked), \
         elections {}, crashes {}, snapshots {}, durable losses {}",
        stats.acknowledged,
        stats.session_answers_checked,
        stats.session_retries_committed,
        stats.reads,
        stats.values_checked,
        stats.elections,
        stats.crashes,
        stats.snapshots,
        stats.durable_losses
    );
    assert!(
        stats.acknowledged > 500,
        "too few acknowledged writes: {}",
        stats.acknowledged
    );
    assert!(stats.reads > 100, "too few reads: {}", stats.reads);
    assert!(
        stats.values_checked > 100,
        "too few read values checked: {}",
        stats.values_checked
    );
    assert!(
        stats.session_answers_checked > 100,
        "too few session answers checked: {}",
        stats.session_answers_checked
    );
    assert!(
        stats.session_retries_committed > 10,
        "too few committed session retries: {}",
        stats.session_retries_committed
    );
    assert!(stats.crashes > 50, "too few crashes: {}", stats.crashes);
    assert!(stats.snapshots > 0, "no snapshot was ever installed");
    assert!(
        stats.durable_losses > 10,
        "too few durable losses: {}",
        stats.durable_losses
    );
}

#[test]
fn without_the_recovery_rule_a_lost_durable_tail_is_caught() {
    // The same cuts of durable WAL tails, with the node restarting as if
    // nothing was lost: the invariants must break, or the simulation could
    // not tell that invariant 9 matters.
    let caught = (0..400u64).find_map(|seed| run_with(seed, 3, 3000, DurableLoss::Ignored).err());
    let report = caught.expect("no seed of 400 caught a node that forgot durable state");
    eprintln!("caught, as it must be:\n{report}");
}

#[test]
fn three_nodes_keep_every_invariant_under_faults() {
    let stats = run_many(0..1000, 3, 3000);
    assert_not_vacuous(&stats);
}

#[test]
fn five_nodes_keep_every_invariant_under_faults() {
    let stats = run_many(10_000..10_800, 5, 3000);
    assert_not_vacuous(&stats);
}

#[test]
fn clusters_of_one_two_and_four_keep_every_invariant_under_faults() {
    // One and two nodes have no minority that may lose durable state; four
    // may lose one. Each must still elect, acknowledge and read.
    for (members, seeds) in [(1, 20_000..20_200), (2, 21_000..21_300), (4, 22_000..22_400)] {
        let stats = run_many(seeds, members, 3000);
        eprintln!(
            "{members} nodes: acknowledged {}, reads {}, elections {}, crashes {}, durable losses {}",
            stats.acknowledged, stats.reads, stats.elections, stats.crashes, stats.durable_losses
        );
        assert!(
            stats.acknowledged > 500,
            "{members} nodes: {} acknowledged",
            stats.acknowledged
        );
        assert!(stats.reads > 100, "{members} nodes: {} reads", stats.reads);
        assert!(stats.crashes > 50, "{members} nodes: {} crashes", stats.crashes);
        if members == 4 {
            assert!(
                stats.durable_losses > 10,
                "4 nodes: {} durable losses",
                stats.durable_losses
            );
        }
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run(42, 3, 1000).map(|s| (s.committed, s.acknowledged, s.reads, s.crashes));
    let b = run(42, 3, 1000).map(|s| (s.committed, s.acknowledged, s.reads, s.crashes));
    assert_eq!(a, b);
}

#[test]
#[ignore = "long mode: KVS_SIM_SEEDS and KVS_SIM_STEPS"]
fn long_simulation() {
    let seeds: u64 = std::env::var("KVS_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let steps: usize = std::env::var("KVS_SIM_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000);
    let start = std::time::Instant::now();
    let three = run_many(0..seeds, 3, steps);
    let five = run_many(1 << 32..(1 << 32) + seeds / 2, 5, steps);
    println!(
        "{} + {} seeds x {steps} steps in {:?}: acknowledged {} + {}, reads {} + {}, crashes {} + {}, \
         session answers checked {} + {}, committed session retries {} + {}, violations 0",
        seeds,
        seeds / 2,
        start.elapsed(),
        three.acknowledged,
        five.acknowledged,
        three.reads,
        five.reads,
        three.crashes,
        five.crashes,
        three.session_answers_checked,
        five.session_answers_checked,
        three.session_retries_committed,
        five.session_retries_committed
    );
}
