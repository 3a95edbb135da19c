//! ElectionActor: hosts the consensus core and is the only place where term,
//! vote, role, the in-memory log and the commit index change.
//!
//! Raft's safety argument needs those to change together, so they live in one
//! actor (see ARCHITECTURE.md). Everything else reaches the core as a message:
//! peer messages, timer ticks, proposals, reads, durability notices. After
//! each event this actor hands out what the core decided: writes to the
//! LogActor (with the replies that must wait for them), committed entries to
//! the CommitActor, timer changes to the HeartbeatActor, leadership to the
//! ClientGateway.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use protocol::{ClientError, NodeId, NodeStatus, PeerMessage, Role, Term};
use tracing::{debug, error, info, info_span, warn};

use crate::commit::CommitActor;
use crate::gateway::ClientGateway;
use crate::heartbeat::HeartbeatActor;
use crate::log::LogActor;
use crate::messages::*;
use crate::raft::{RaftCore, ReadId, Ready};
use crate::state::StateMachine;

pub struct ElectionActor {
    settings: Arc<Settings>,
    core: RaftCore,
    view: SharedView,
    transport: Arc<dyn PeerTransport>,
    log: Addr<LogActor>,
    commit: Addr<CommitActor>,
    heartbeat: Addr<HeartbeatActor>,
    gateway: Addr<ClientGateway>,
    /// Election timers carry this; a timer from an older generation is ignored.
    generation: u64,
    reads: HashMap<ReadId, (String, u64, Responder)>,
    next_read: ReadId,
    ready_scheduled: bool,
    /// Role, term and leader as last announced to the other actors.
    announced: (Role, Term, Option<NodeId>),
    /// A leader (this node or another) has been heard since the node started.
    leader_seen: bool,
}

/// Handle a batch of proposals and reads as one replication round.
#[derive(Message)]
#[rtype(result = "()")]
struct ProcessReady;

pub struct ElectionLinks {
    pub log: Addr<LogActor>,
    pub commit: Addr<CommitActor>,
    pub heartbeat: Addr<HeartbeatActor>,
    pub gateway: Addr<ClientGateway>,
}

impl ElectionActor {
    pub fn new(
        settings: Arc<Settings>,
        core: RaftCore,
        view: SharedView,
        transport: Arc<dyn PeerTransport>,
        links: ElectionLinks,
    ) -> Self {
        let announced = (core.role(), core.term(), core.leader());
        ElectionActor {
            settings,
            core,
            view,
            transport,
            log: links.log,
            commit: links.commit,
            heartbeat: links.heartbeat,
            gateway: links.gateway,
            generation: 0,
            reads: HashMap::new(),
            next_read: 1,
            ready_scheduled: false,
            announced,
            leader_seen: false,
        }
    }

    fn span(&self) -> tracing::Span {
        info_span!("election", node = self.settings.node_id, term = self.core.term(), role = %self.core.role())
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if !self.ready_scheduled {
            self.ready_scheduled = true;
            // Delivered after the messages already queued: proposals arriving
            // together share one AppendEntries and one fsync.
            ctx.notify(ProcessReady);
        }
    }

    fn not_leader(&self) -> ClientError {
        let leader = self.core.leader().filter(|&id| id != self.settings.node_id);
        ClientError::NotLeader {
            leader_id: leader,
            leader_addr: leader.and_then(|id| self.settings.client_addr_of(id)),
        }
    }

    /// Hands out everything the core decided.
    fn process(&mut self, ctx: &mut Context<Self>) {
        let mut ready = self.core.take_ready();
        self.announce(ctx);
        if let Some(snapshot) = ready.install_snapshot.take() {
            // The store must hold the snapshot before the log forgets what it
            // replaces, and nothing else may reach the log in between: wait.
            info!(
                index = snapshot.index,
                term = snapshot.term,
                "installing snapshot from the leader"
            );
            let install = self.commit.send(InstallSnapshot {
                index: snapshot.index,
                term: snapshot.term,
                data: snapshot.data,
            });
            ctx.wait(install.into_actor(self).map(move |result, act, ctx| match result {
                Ok(Ok(())) => act.dispatch(ready, ctx),
                Ok(Err(e)) => fatal(&format!("snapshot install failed: {e}")),
                Err(e) => fatal(&format!("commit actor unreachable: {e}")),
            }));
            return;
        }
        self.dispatch(ready, ctx);
    }

    fn dispatch(&mut self, mut ready: Ready, ctx: &mut Context<Self>) {
        for message in ready.messages.drain(..) {
            self.transport.send(message);
        }
        if let Some(persist) = persist_request(&self.core, &mut ready) {
            if let Some(rewrite) = &persist.rewrite {
                info!(
                    log_start = rewrite.start_index,
                    kept = rewrite.entries.len(),
                    "log trimmed"
                );
            }
            self.log.do_send(persist);
        }
        if !ready.committed.is_empty() {
            if let Some(last) = ready.committed.last() {
                debug!(commit = last.index, count = ready.committed.len(), "entries committed");
            }
            self.commit.do_send(Apply(ready.committed));
        }
        for (id, index) in ready.reads {
            if let Some((key, request_id, responder)) = self.reads.remove(&id) {
                self.commit.do_send(ServeRead {
                    key,
                    index,
                    request_id,
                    responder,
                });
            }
        }
        for id in ready.failed_reads {
            if let Some((_, _, responder)) = self.reads.remove(&id) {
                let _ = responder.send(Err(self.not_leader()));
            }
        }
        for peer in ready.snapshots_needed {
            self.send_snapshot(peer, ctx);
        }
        if ready.reset_election_timer {
            self.arm_election_timer();
        }
    }

    fn arm_election_timer(&mut self) {
        self.generation += 1;
        self.leader_seen |= self.core.leader().is_some();
        self.heartbeat.do_send(ArmElectionTimer {
            generation: self.generation,
            at_boot: !self.leader_seen,
        });
    }

    /// Tells the other actors when role, term or leader changed.
    fn announce(&mut self, _ctx: &mut Context<Self>) {
        let now = (self.core.role(), self.core.term(), self.core.leader());
        if now == self.announced {
            return;
        }
        let (role, term, leader) = now;
        let was_leader = self.announced.0 == Role::Leader;
        if (role, leader) != (self.announced.0, self.announced.2) {
            info!(%role, term, leader = ?leader, "role changed");
        }
        self.announced = now;
        self.leader_seen |= leader.is_some();
        self.view.set(term, role);
        self.heartbeat.do_send(RoleChanged { role, term });
        self.gateway.do_send(LeaderChanged { leader, term, role });
        // A deposed leader needs an election timer again. A mere term change must not
        // restart it: a candidate that cannot win (a stale log) would otherwise keep
        // silencing the nodes that could.
        if was_leader && role != Role::Leader {
            self.arm_election_timer();
        }
    }

    fn send_snapshot(&mut self, peer: NodeId, ctx: &mut Context<Self>) {
        let term = self.core.term();
        info!(peer, "follower needs entries already trimmed: sending a snapshot");
        let take = self.commit.send(TakeSnapshot);
        ctx.spawn(take.into_actor(self).map(move |result, act, ctx| match result {
            Ok(Ok(snapshot)) => {
                let _span = act.span().entered();
                info!(
                    peer,
                    index = snapshot.index,
                    bytes = snapshot.data.len(),
                    "snapshot taken"
                );
                act.core
                    .send_snapshot(peer, term, snapshot.index, snapshot.term, snapshot.data);
                act.process(ctx);
            }
            Ok(Err(e)) => warn!(peer, "snapshot could not be taken: {e}"),
            Err(e) => warn!(peer, "commit actor unreachable for a snapshot: {e}"),
        }));
    }
}

/// What the LogActor must write for `ready` (taking its writes and the
/// messages that wait for them), or None if nothing must wait for the disk.
///
/// Trimming and snapshot installs replace the whole durable log by the core's
/// log, atomically (the WAL's rewrite is write, fsync, rename): a crash halfway
/// must not lose durable entries past the new start.
pub fn persist_request(core: &RaftCore, ready: &mut Ready) -> Option<Persist> {
    if ready.nothing_to_persist() && ready.after_persist.is_empty() {
        return None;
    }
    let replace_log = ready.compact_to.is_some() || ready.log_reset.is_some();
    let rewrite = replace_log.then(|| {
        let log = core.log();
        Rewrite {
            hard_state: core.hard_state(),
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

/// Exit code of a node stopped by [`fatal`].
pub const EXIT_FATAL: i32 = 70;

/// A failure this node cannot recover from without losing durability: the
/// process exits at once rather than go on unsafely. Not `System::stop`: that
/// lets every actor go on handling what is queued in its mailbox (and, say,
/// acknowledge appends against a log that just failed) until the system winds
/// down. Exiting without running destructors loses nothing: only what was
/// fsynced was ever acknowledged, and the next start recovers from the files.
pub(crate) fn fatal(reason: &str) -> ! {
    error!("fatal: {reason}; stopping the node");
    std::process::exit(EXIT_FATAL)
}

impl Actor for ElectionActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Context<Self>) {
        let _span = self.span().entered();
        info!(
            last_index = self.core.log().last_index(),
            commit = self.core.commit_index(),
            "election actor started"
        );
        self.view.set(self.core.term(), self.core.role());
        self.heartbeat.do_send(RoleChanged {
            role: self.core.role(),
            term: self.core.term(),
        });
        self.arm_election_timer();
    }
}

impl Handler<PeerInbound> for ElectionActor {
    type Result = ();

    fn handle(&mut self, PeerInbound(envelope): PeerInbound, ctx: &mut Context<Self>) {
        let _span = self.span().entered();
        if let PeerMessage::InstallSnapshot {
            last_index,
            last_term,
            data,
            ..
        } = &envelope.message
        {
            // Check a snapshot before the core acts on it: once the core has reset its
            // log, a snapshot the store cannot take would leave the node no way back.
            match StateMachine::decode_snapshot(data) {
                Ok(stored) if (stored.applied_index, stored.applied_term) == (*last_index, *last_term) => {}
                _ => {
                    warn!(
                        from = envelope.from,
                        last_index, "undecodable or inconsistent snapshot ignored"
                    );
                    return;
                }
            }
        }
        self.core.step(envelope);
        self.process(ctx);
    }
}

impl Handler<Tick> for ElectionActor {
    type Result = ();

    fn handle(&mut self, tick: Tick, ctx: &mut Context<Self>) {
        let _span = self.span().entered();
        match tick {
            Tick::ElectionTimeout { generation } => {
                if generation != self.generation || self.core.role() == Role::Leader {
                    return; // a timer that raced a reset
                }
                if self.core.is_recovering() {
                    info!("recovering from lost durable state: asking the peers for the cluster's term");
                } else {
                    info!(
                        last_index = self.core.log().last_index(),
                        last_term = self.core.log().last_term(),
                        "election timeout: asking the peers for pre-votes"
                    );
                }
                self.core.election_timeout();
            }
            Tick::Heartbeat => self.core.heartbeat(),
            Tick::QuorumCheck => {
                self.core.check_quorum();
                if self.core.role() != Role::Leader {
                    warn!("lost contact with a majority: stepping down");
                }
            }
            Tick::Trim => self.core.trim_tick(),
        }
        self.process(ctx);
    }
}

impl Handler<Propose> for ElectionActor {
    type Result = ();

    fn handle(&mut self, propose: Propose, ctx: &mut Context<Self>) {
        let _span = self.span().entered();
        match self.core.propose(propose.command, propose.request_id) {
            Some((index, term)) => {
                debug!(request_id = propose.request_id, index, "proposal appended");
                self.commit.do_send(AwaitApply {
                    index,
                    term,
                    request_id: propose.request_id,
                    responder: propose.responder,
                });
                self.schedule(ctx);
            }
            None => {
                let _ = propose.responder.send(Err(self.not_leader()));
            }
        }
    }
}

impl Handler<Read> for ElectionActor {
    type Result = ();

    fn handle(&mut self, read: Read, ctx: &mut Context<Self>) {
        let id = self.next_read;
        self.next_read += 1;
        self.reads.insert(id, (read.key, read.request_id, read.responder));
        self.core.read(id);
        self.schedule(ctx);
    }
}

impl Handler<ProcessReady> for ElectionActor {
    type Result = ();

    fn handle(&mut self, _: ProcessReady, ctx: &mut Context<Self>) {
        self.ready_scheduled = false;
        let _span = self.span().entered();
        self.core.replicate();
        self.process(ctx);
    }
}

impl Handler<Persisted> for ElectionActor {
    type Result = ();

    fn handle(&mut self, persisted: Persisted, ctx: &mut Context<Self>) {
        self.core.persisted(persisted.index, persisted.term);
        self.process(ctx);
    }
}

impl Handler<Flushed> for ElectionActor {
    type Result = ();

    fn handle(&mut self, Flushed(index): Flushed, _ctx: &mut Context<Self>) {
        self.core.set_flushed(index);
    }
}

impl Handler<GetConsensusStatus> for ElectionActor {
    type Result = MessageResult<GetConsensusStatus>;

    fn handle(&mut self, _: GetConsensusStatus, _ctx: &mut Context<Self>) -> Self::Result {
        let leader_id = self.core.leader();
        let log = self.core.log();
        MessageResult(NodeStatus {
            node_id: self.settings.node_id,
            role: self.core.role(),
            term: self.core.term(),
            leader_id,
            leader_addr: leader_id.and_then(|id| self.settings.client_addr_of(id)),
            commit_index: self.core.commit_index(),
            applied_index: 0,
            flushed_index: 0,
            unflushed_entries: 0,
            store_flush_failures: 0,
            log_first_index: log.first_index(),
            log_last_index: log.last_index(),
        })
    }
}
