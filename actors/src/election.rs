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
use std::time::{Duration, Instant};

use actix::prelude::*;
use protocol::{
    ClientError, NodeId, PeerEnvelope, PeerMessage, Role, SnapshotChunk, SnapshotChunkAck, SnapshotResponse, Term,
};
use tokio::sync::mpsc;
use tracing::{debug, error, info, info_span, warn};

use crate::commit::CommitActor;
use crate::gateway::ClientGateway;
use crate::heartbeat::HeartbeatActor;
use crate::log::LogActor;
use crate::messages::*;
use crate::runtime::{drop_elsewhere, fatal};
use crate::snapshot::{self, DecodedSnapshot, Incoming, Pacing, Seal, Transfer};
use consensus::{RaftCore, ReadId, Ready};

/// Hosts the consensus core: feeds it every event and hands out what it decides.
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
    /// As leader: the snapshots being streamed to followers, or sealed and
    /// waiting for the follower's answer.
    outgoing: HashMap<NodeId, Outgoing>,
    /// As follower: the snapshot being received from the leader.
    incoming: Option<Incoming>,
    /// A decoded snapshot, for the core's install decision made right after.
    decoded: Option<DecodedSnapshot>,
}

/// A snapshot this leader is sending to one follower.
struct Outgoing {
    transfer: Transfer,
    stage: OutgoingStage,
}

enum OutgoingStage {
    /// Taking the snapshot from the CommitActor.
    Taking,
    /// Streaming: the follower's acknowledgements go to the sending task.
    Streaming(mpsc::Sender<u64>),
    /// Every byte acknowledged and the seal sent; waiting for the install.
    Sealed(Seal, Instant),
}

/// How long a sealed snapshot waits for the follower's install (decoding
/// and writing millions of keys) before a new one may replace it.
const SEALED_PATIENCE: Duration = Duration::from_secs(120);

/// A follower's staged snapshot, decoded off the actor thread.
#[derive(Message)]
#[rtype(result = "()")]
struct SnapshotDecoded {
    transfer: Transfer,
    seal: PeerEnvelope,
    result: Result<DecodedSnapshot, String>,
}

/// Handle a batch of proposals and reads as one replication round.
#[derive(Message)]
#[rtype(result = "()")]
struct ProcessReady;

/// The other four actors, which the ElectionActor sends to.
pub struct ElectionLinks {
    /// Gets what must be made durable, with the replies that wait for it.
    pub log: Addr<LogActor>,
    /// Gets committed entries, writes to answer once applied, confirmed reads,
    /// snapshot requests and snapshot installs.
    pub commit: Addr<CommitActor>,
    /// Gets role changes and election timer re-arms.
    pub heartbeat: Addr<HeartbeatActor>,
    /// Gets leadership changes, for redirects.
    pub gateway: Addr<ClientGateway>,
}

impl ElectionActor {
    /// Wraps the recovered `core`. Nothing runs until the actor starts, which
    /// announces the role and arms the first election timer.
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
            outgoing: HashMap::new(),
            incoming: None,
            decoded: None,
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
        self.settings.not_leader(self.core.leader())
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
            // The core acts on a seal only right after its snapshot was decoded.
            let decoded = match self.decoded.take() {
                Some(decoded)
                    if (decoded.state.applied_index(), decoded.state.applied_term())
                        == (snapshot.index, snapshot.term) =>
                {
                    decoded
                }
                _ => fatal("the core installs a snapshot this node has not decoded"),
            };
            let install = self.commit.send(InstallSnapshot {
                index: snapshot.index,
                term: snapshot.term,
                snapshot: decoded,
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
        if let Some(persist) = self.core.take_persist(&mut ready) {
            if let Some(rewrite) = &persist.rewrite {
                info!(
                    log_start = rewrite.start_index,
                    kept = rewrite.entries.len(),
                    "log trimmed"
                );
            }
            self.log.do_send(LogWrite(persist));
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
        let (was_leader, was_term) = (self.announced.0 == Role::Leader, self.announced.1);
        if (role, leader) != (self.announced.0, self.announced.2) {
            info!(%role, term, leader = ?leader, "role changed");
        }
        self.announced = now;
        self.leader_seen |= leader.is_some();
        if role != Role::Leader || term != was_term {
            // Transfers belong to the announced leadership they started in.
            // Dropping one closes its acknowledgements: its task ends.
            self.outgoing.clear();
        }
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

    /// The core wants `peer` to get a snapshot: start streaming one, unless
    /// one is on its way (then a sealed one is sealed again, in case the seal
    /// was lost).
    fn send_snapshot(&mut self, peer: NodeId, ctx: &mut Context<Self>) {
        let term = self.core.term();
        match self.outgoing.get(&peer) {
            Some(Outgoing {
                transfer,
                stage: OutgoingStage::Sealed(seal, at),
            }) if at.elapsed() < SEALED_PATIENCE => {
                let (transfer, seal) = (*transfer, *seal);
                self.core.send_snapshot(
                    peer,
                    term,
                    transfer.index,
                    transfer.last_term,
                    (seal.bytes, seal.checksum),
                );
                self.schedule(ctx);
                return;
            }
            Some(Outgoing {
                stage: OutgoingStage::Taking | OutgoingStage::Streaming(_),
                ..
            }) => return,
            _ => {}
        }
        info!(peer, "follower needs entries already trimmed: sending a snapshot");
        let placeholder = Transfer {
            from: self.settings.node_id,
            to: peer,
            term,
            index: 0,
            last_term: 0,
        };
        self.outgoing.insert(
            peer,
            Outgoing {
                transfer: placeholder,
                stage: OutgoingStage::Taking,
            },
        );
        let take = self.commit.send(TakeSnapshot);
        ctx.spawn(take.into_actor(self).map(move |result, act, ctx| {
            let _span = act.span().entered();
            let taking = act
                .outgoing
                .get(&peer)
                .is_some_and(|o| o.transfer == placeholder && matches!(o.stage, OutgoingStage::Taking));
            if !taking || act.core.role() != Role::Leader || act.core.term() != term {
                return; // leadership moved on meanwhile
            }
            let source = match result {
                Ok(source) => source,
                Err(e) => {
                    act.outgoing.remove(&peer);
                    warn!(peer, "commit actor unreachable for a snapshot: {e}");
                    return;
                }
            };
            let transfer = Transfer {
                index: source.applied_index(),
                last_term: source.applied_term(),
                ..placeholder
            };
            let name = format!("snapshot-to-{peer}");
            let pieces = match snapshot::spawn_encoder(source, name) {
                Ok(pieces) => pieces,
                Err(e) => {
                    act.outgoing.remove(&peer);
                    warn!(peer, "cannot start encoding a snapshot: {e}");
                    return;
                }
            };
            info!(peer, index = transfer.index, "snapshot taken: streaming it");
            let (acks, ack_queue) = mpsc::channel(64);
            act.outgoing.insert(
                peer,
                Outgoing {
                    transfer,
                    stage: OutgoingStage::Streaming(acks),
                },
            );
            let stream =
                snapshot::stream_snapshot(transfer, act.transport.clone(), pieces, ack_queue, Pacing::default());
            ctx.spawn(
                stream
                    .into_actor(act)
                    .map(move |result, act, ctx| act.snapshot_streamed(transfer, result, ctx)),
            );
        }));
    }

    /// A snapshot stream ended: every byte acknowledged (seal it), or failed.
    fn snapshot_streamed(
        &mut self,
        transfer: Transfer,
        result: Result<Seal, snapshot::TransferError>,
        ctx: &mut Context<Self>,
    ) {
        let _span = self.span().entered();
        if self.outgoing.get(&transfer.to).map(|o| o.transfer) != Some(transfer) {
            return; // cancelled, or replaced by a newer transfer
        }
        match result {
            Ok(seal) => {
                info!(
                    peer = transfer.to,
                    index = transfer.index,
                    bytes = seal.bytes,
                    "snapshot streamed: sealing it"
                );
                if let Some(outgoing) = self.outgoing.get_mut(&transfer.to) {
                    outgoing.stage = OutgoingStage::Sealed(seal, Instant::now());
                }
                self.core.send_snapshot(
                    transfer.to,
                    transfer.term,
                    transfer.index,
                    transfer.last_term,
                    (seal.bytes, seal.checksum),
                );
                self.process(ctx);
            }
            Err(e) => {
                self.outgoing.remove(&transfer.to);
                warn!(
                    peer = transfer.to,
                    index = transfer.index,
                    "snapshot transfer failed: {e}"
                );
            }
        }
    }

    /// A follower acknowledged snapshot bytes: tell the sending task.
    fn on_snapshot_ack(&mut self, from: NodeId, term: Term, ack: SnapshotChunkAck) {
        let SnapshotChunkAck {
            last_index: index,
            last_term,
            next_offset,
        } = ack;
        if self.core.role() != Role::Leader || term != self.core.term() {
            return;
        }
        let Some(outgoing) = self.outgoing.get(&from) else {
            return;
        };
        if (outgoing.transfer.index, outgoing.transfer.last_term) != (index, last_term) {
            return;
        }
        match &outgoing.stage {
            // A full queue drops the acknowledgement; a later one carries as much.
            OutgoingStage::Streaming(acks) => {
                let _ = acks.try_send(next_offset);
            }
            OutgoingStage::Sealed(seal, _) if next_offset < seal.bytes => {
                info!(peer = from, "the follower lost a sealed snapshot: it gets a new one");
                self.outgoing.remove(&from);
            }
            _ => {}
        }
    }

    /// Tells the leader how many bytes of its snapshot this node holds.
    fn ack_snapshot(&self, leader: NodeId, index: u64, last_term: Term, next_offset: u64) {
        self.transport.send(PeerEnvelope {
            from: self.settings.node_id,
            to: leader,
            term: self.core.term(),
            message: PeerMessage::SnapshotChunkAck(SnapshotChunkAck {
                last_index: index,
                last_term,
                next_offset,
            }),
        });
    }

    /// A chunk from the leader: the core hears the leader (its bytes taken
    /// out); the bytes go to the staging file if this node now follows that
    /// leader in the chunk's term and needs the snapshot.
    fn on_snapshot_chunk(&mut self, mut envelope: PeerEnvelope, ctx: &mut Context<Self>) {
        // Its bounds, bytes included, were checked on arrival (PeerInbound).
        let PeerMessage::SnapshotChunk(SnapshotChunk {
            last_index,
            last_term,
            offset,
            data,
        }) = &mut envelope.message
        else {
            return;
        };
        let (index, last_term, offset, data) = (*last_index, *last_term, *offset, std::mem::take(data));
        let (from, term) = (envelope.from, envelope.term);
        self.core.step(envelope);
        self.process(ctx);
        let following = self.core.role() == Role::Follower && self.core.leader() == Some(from);
        if !following || !self.core.takes_entries() || self.core.term() != term || index <= self.core.commit_index() {
            return;
        }
        let transfer = Transfer {
            from,
            to: self.settings.node_id,
            term,
            index,
            last_term,
        };
        if self.incoming.as_ref().map(|i| i.transfer) != Some(transfer) {
            self.incoming = None;
            if offset != 0 {
                // The start of this snapshot is not here (this node restarted): start again.
                self.ack_snapshot(from, index, last_term, 0);
                return;
            }
            info!(leader = from, index, "receiving a snapshot from the leader");
            match Incoming::start(&self.settings.data_dir, transfer) {
                Ok(incoming) => self.incoming = Some(incoming),
                Err(e) => {
                    warn!("cannot stage a snapshot: {e}");
                    return;
                }
            }
        }
        let Some(incoming) = self.incoming.as_mut() else {
            return;
        };
        match incoming.accept(offset, &data) {
            Ok(held) => self.ack_snapshot(from, index, last_term, held),
            Err(e) => {
                warn!("cannot stage a snapshot chunk: {e}");
                self.incoming = None;
                self.ack_snapshot(from, index, last_term, 0);
            }
        }
    }

    /// The leader's seal: if the staged bytes match it, decode them off the
    /// actor thread, and let the core act on the seal once they are decoded.
    /// A seal the core needs no bytes for (stale, or nothing new) goes straight in.
    fn on_snapshot_seal(&mut self, envelope: PeerEnvelope, ctx: &mut Context<Self>) {
        let PeerMessage::InstallSnapshot(protocol::InstallSnapshot {
            last_index,
            last_term,
            bytes,
            checksum,
            ..
        }) = envelope.message
        else {
            return;
        };
        // Stale, or nothing new: the core answers without the bytes. (A seal of a
        // newer term cannot have its bytes here: the chunks would have raised
        // this node's term. It falls through to "not held".)
        if envelope.term < self.core.term() || last_index <= self.core.commit_index() {
            self.core.step(envelope);
            self.process(ctx);
            return;
        }
        let transfer = Transfer {
            from: envelope.from,
            to: self.settings.node_id,
            term: envelope.term,
            index: last_index,
            last_term,
        };
        let seal = Seal { bytes, checksum };
        let Some(incoming) = self.incoming.as_mut().filter(|i| i.transfer == transfer) else {
            warn!(
                leader = envelope.from,
                last_index, "a snapshot seal for bytes this node does not hold"
            );
            self.ack_snapshot(envelope.from, last_index, last_term, 0);
            return;
        };
        if incoming.decoding {
            return; // a repeated seal
        }
        if !incoming.matches(seal) {
            warn!(
                leader = envelope.from,
                last_index,
                held = incoming.held(),
                bytes,
                "staged snapshot does not match its seal: discarded"
            );
            self.incoming = None;
            self.ack_snapshot(envelope.from, last_index, last_term, 0);
            return;
        }
        let me = ctx.address();
        let name = format!("snapshot-from-{}", envelope.from);
        let started = incoming.open().and_then(|file| {
            snapshot::spawn_decoder(file, seal, name, move |result| {
                me.do_send(SnapshotDecoded {
                    transfer,
                    seal: envelope,
                    result,
                });
            })
        });
        if let Err(e) = started {
            warn!("cannot decode the staged snapshot: {e}");
            self.incoming = None;
        } else {
            info!(index = last_index, bytes, "snapshot received whole: decoding it");
        }
    }
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
        if let Err(error) = envelope.check_bounds() {
            error!(from = envelope.from, %error, "peer message out of bounds: ignored");
            return;
        }
        match envelope.message {
            PeerMessage::SnapshotChunk(_) => return self.on_snapshot_chunk(envelope, ctx),
            // A snapshot is checked and decoded before the core acts on it: once the
            // core has reset its log, a snapshot the store cannot take would leave
            // the node no way back.
            PeerMessage::InstallSnapshot(_) => return self.on_snapshot_seal(envelope, ctx),
            PeerMessage::SnapshotChunkAck(ack) => self.on_snapshot_ack(envelope.from, envelope.term, ack),
            PeerMessage::SnapshotResponse(SnapshotResponse { last_index, .. }) => {
                // Only an answer to this leader's transfer ends it (a late answer to
                // an earlier one must not cancel a new one).
                let answered = self.core.role() == Role::Leader
                    && envelope.term == self.core.term()
                    && self
                        .outgoing
                        .get(&envelope.from)
                        .is_some_and(|o| last_index >= o.transfer.index);
                if answered {
                    self.outgoing.remove(&envelope.from);
                }
            }
            _ => {}
        }
        self.core.step(envelope);
        self.process(ctx);
    }
}

impl Handler<SnapshotDecoded> for ElectionActor {
    type Result = ();

    fn handle(&mut self, decoded: SnapshotDecoded, ctx: &mut Context<Self>) {
        let _span = self.span().entered();
        let PeerMessage::InstallSnapshot(protocol::InstallSnapshot {
            last_index, last_term, ..
        }) = decoded.seal.message
        else {
            return;
        };
        let current = self
            .incoming
            .as_ref()
            .is_some_and(|i| i.decoding && i.transfer == decoded.transfer);
        if !current {
            drop_elsewhere(decoded.result);
            return; // a newer transfer replaced it
        }
        self.incoming = None;
        let failure = match decoded.result {
            Ok(snapshot)
                if (snapshot.state.applied_index(), snapshot.state.applied_term()) == (last_index, last_term) =>
            {
                info!(index = last_index, keys = snapshot.state.len(), "snapshot decoded");
                self.decoded = Some(snapshot);
                self.core.step(decoded.seal);
                self.process(ctx);
                // Not taken by an install (the term moved on meanwhile): dropped.
                drop_elsewhere(self.decoded.take());
                return;
            }
            Ok(snapshot) => {
                drop_elsewhere(snapshot);
                "its applied point differs from the seal's".to_string()
            }
            Err(e) => e,
        };
        warn!(
            leader = decoded.seal.from,
            last_index, "staged snapshot undecodable, discarded: {failure}"
        );
        self.ack_snapshot(decoded.seal.from, last_index, last_term, 0);
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
        let log = self.core.log();
        MessageResult(ConsensusStatus {
            role: self.core.role(),
            term: self.core.term(),
            leader_id: self.core.leader(),
            commit_index: self.core.commit_index(),
            log_first_index: log.first_index(),
            log_last_index: log.last_index(),
        })
    }
}
