//! LogActor: the one owner of the write-ahead log file.
//!
//! Writes run on a dedicated thread so an fsync never stalls the actors. The
//! thread drains every `Persist` queued while the previous fsync ran, writes
//! them all, and makes them durable with one fsync (group commit). Only then
//! does it send the replies that promised durability (vote grants, append
//! acknowledgements) and tell the ElectionActor how far the log is durable.
//! One file, one writer, one fsync path: writes become durable in the order
//! the core decided them.
//!
//! Writing on the actor's own thread instead (no hand-off, two thread
//! wake-ups fewer per write) was measured and not kept: a little faster for
//! one client, but a fifth to a third slower at 64 clients, on followers as
//! well as leaders, since a node blocked in fsync cannot take the next
//! entries meanwhile (docs/PERFORMANCE.md, "What changed the figures").

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::prelude::*;
use protocol::{LogIndex, Term};
use tracing::{debug, error, info, info_span};

use crate::election::ElectionActor;
use crate::messages::{LogWrite, PeerTransport, Persisted, SharedView};
use crate::runtime::fatal;
use crate::storage::{Wal, WalError, WalRecord};
use consensus::Persist;

/// Hands each [`LogWrite`] to the thread that writes and fsyncs the write-ahead log.
pub struct LogActor {
    jobs: Option<mpsc::Sender<Persist>>,
    writer: Option<JoinHandle<()>>,
}

/// The WAL thread stopped on an error: durability can no longer be promised.
#[derive(Message)]
#[rtype(result = "()")]
struct WalFailed(String);

impl LogActor {
    /// Starts the writer thread on an opened WAL. `ctx` is the LogActor's own
    /// (not yet running) context, so the thread can report failures to it.
    pub fn new(
        node_id: protocol::NodeId,
        wal: Wal,
        election: Addr<ElectionActor>,
        transport: Arc<dyn PeerTransport>,
        view: SharedView,
        ctx: &Context<Self>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel();
        let me = ctx.address();
        let writer = std::thread::Builder::new()
            .name(format!("wal-{node_id}"))
            .spawn(move || {
                let mut writer = WalWriter {
                    node_id,
                    wal,
                    election,
                    transport,
                    view,
                };
                if let Err(e) = writer.run(queue) {
                    me.do_send(WalFailed(e.to_string()));
                }
            })?;
        Ok(LogActor {
            jobs: Some(jobs),
            writer: Some(writer),
        })
    }
}

impl Actor for LogActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // Closing the queue lets the writer finish what it has and exit.
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Handler<LogWrite> for LogActor {
    type Result = ();

    fn handle(&mut self, LogWrite(persist): LogWrite, _ctx: &mut Context<Self>) {
        let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.send(persist).is_ok());
        if !sent {
            fatal("the write-ahead log writer has stopped");
        }
    }
}

impl Handler<WalFailed> for LogActor {
    type Result = ();

    fn handle(&mut self, WalFailed(reason): WalFailed, ctx: &mut Context<Self>) {
        error!("write-ahead log failed: {reason}");
        self.jobs.take();
        ctx.stop();
        fatal("write-ahead log failed");
    }
}

/// How long the log is idle before it records, with an fsync of its own, that
/// its last write was synced (so a later loss of it is seen as a loss).
const IDLE_SYNCED_MARK: Duration = Duration::from_millis(100);

struct WalWriter {
    node_id: protocol::NodeId,
    wal: Wal,
    election: Addr<ElectionActor>,
    transport: Arc<dyn PeerTransport>,
    view: SharedView,
}

impl WalWriter {
    fn run(&mut self, queue: mpsc::Receiver<Persist>) -> Result<(), WalError> {
        let mut records = Vec::new();
        // Jobs without records (a follower's answers to heartbeats) keep
        // coming while nothing is written: idleness is time since a write.
        let mut last_write = Instant::now();
        loop {
            if last_write.elapsed() >= IDLE_SYNCED_MARK && self.wal.record_synced()? {
                debug!(
                    synced = self.wal.len_bytes(),
                    "idle write-ahead log: synced length recorded"
                );
            }
            let first = match queue.recv_timeout(IDLE_SYNCED_MARK) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            batch.extend(queue.try_iter());
            let span = info_span!("log", node = self.node_id, term = self.view.term(), role = %self.view.role());
            let _span = span.enter();
            let started = Instant::now();
            let mut durable: Option<(LogIndex, Term)> = None;
            let mut entry_count = 0usize;
            for persist in &mut batch {
                if let Some(hard) = persist.hard_state {
                    records.push(WalRecord::HardState(hard));
                }
                entry_count += persist.entries.len();
                durable = persist.last_written().or(durable);
                records.extend(persist.entries.drain(..).map(WalRecord::Entry));
                if let Some(rewrite) = persist.rewrite.take() {
                    // Everything queued so far is in the core's log, hence in the rewrite.
                    self.wal.append(&records)?;
                    records.clear();
                    self.wal.rewrite(
                        rewrite.hard_state,
                        rewrite.start_index,
                        rewrite.start_term,
                        &rewrite.entries,
                    )?;
                    info!(
                        start = rewrite.start_index,
                        kept = rewrite.entries.len(),
                        bytes = self.wal.len_bytes(),
                        "write-ahead log compacted"
                    );
                }
            }
            if !records.is_empty() {
                self.wal.append(&records)?;
                records.clear();
                last_write = Instant::now();
            }
            self.wal.sync()?;
            debug!(
                jobs = batch.len(),
                entries = entry_count,
                micros = started.elapsed().as_micros() as u64,
                "wal group commit"
            );
            for persist in batch {
                for message in persist.then_send {
                    self.transport.send(message);
                }
            }
            if let Some((index, term)) = durable {
                self.election.do_send(Persisted { index, term });
            }
        }
        Ok(())
    }
}
