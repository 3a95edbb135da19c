//! CommitActor: owns the state machine and the state store.
//!
//! It applies committed entries once, in index order, answers the writes
//! waiting on them, serves reads the ElectionActor has confirmed once their
//! read index is applied, and every `commit_interval` flushes what changed to
//! the store on a store thread (so a slow flush never stalls applying). What
//! is not flushed yet is still in the write-ahead log, which recovery replays.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use actix::prelude::*;
use protocol::{ClientError, LogIndex, Reply, Term};
use tokio::sync::oneshot;
use tracing::{debug, info, info_span, warn};

use crate::election::{fatal, ElectionActor};
use crate::messages::*;
use crate::state::StateMachine;
use crate::storage::Store;
use crate::storage::{FlushBatch, StoreError, StoredState};

enum StoreJob {
    Flush(FlushBatch),
    Replace(StoredState, oneshot::Sender<Result<(), StoreError>>),
}

/// The store thread finished a flush; a failed batch comes back to be retried.
#[derive(Message)]
#[rtype(result = "()")]
struct FlushDone(Result<LogIndex, (String, FlushBatch)>);

#[derive(Message)]
#[rtype(result = "()")]
struct FlushTick;

pub struct CommitActor {
    settings: Arc<Settings>,
    view: SharedView,
    state: StateMachine,
    election: Addr<ElectionActor>,
    store_jobs: Option<mpsc::Sender<StoreJob>>,
    store_thread: Option<JoinHandle<()>>,
    /// Writes waiting for their entry: index -> (term proposed in, request id, responder).
    waiting: BTreeMap<LogIndex, (Term, u64, Responder)>,
    /// Confirmed reads waiting for their read index to be applied.
    reads: BTreeMap<LogIndex, Vec<(String, u64, Responder)>>,
    flushed: LogIndex,
    /// Highest index handed to the store thread (a flush in flight or done).
    flush_requested: LogIndex,
    flush_in_flight: bool,
    /// A batch the store failed to write: it goes out again with the next one.
    failed_batch: Option<FlushBatch>,
}

impl CommitActor {
    pub fn new(
        settings: Arc<Settings>,
        view: SharedView,
        state: StateMachine,
        mut store: Box<dyn Store>,
        election: Addr<ElectionActor>,
        ctx: &Context<Self>,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<StoreJob>();
        let me = ctx.address();
        let store_thread = std::thread::Builder::new()
            .name(format!("store-{}", settings.node_id))
            .spawn(move || {
                for job in queue {
                    match job {
                        StoreJob::Flush(batch) => {
                            let result = match store.flush(&batch) {
                                Ok(()) => Ok(batch.applied_index),
                                Err(e) => Err((e.to_string(), batch)),
                            };
                            me.do_send(FlushDone(result));
                        }
                        StoreJob::Replace(state, done) => {
                            let _ = done.send(store.replace(&state));
                        }
                    }
                }
            })?;
        let flushed = state.applied_index();
        Ok(CommitActor {
            settings,
            view,
            state,
            election,
            store_jobs: Some(jobs),
            store_thread: Some(store_thread),
            waiting: BTreeMap::new(),
            reads: BTreeMap::new(),
            flushed,
            flush_requested: flushed,
            flush_in_flight: false,
            failed_batch: None,
        })
    }

    fn span(&self) -> tracing::Span {
        info_span!("commit", node = self.settings.node_id, term = self.view.term(), role = %self.view.role())
    }

    fn serve_ready_reads(&mut self) {
        let applied = self.state.applied_index();
        let later = self.reads.split_off(&(applied + 1));
        let ready = std::mem::replace(&mut self.reads, later);
        for (key, request_id, responder) in ready.into_values().flatten() {
            debug!(request_id, "read served");
            let _ = responder.send(Ok(Reply::Value(self.state.get(&key))));
        }
    }

    fn start_flush(&mut self) {
        if self.flush_in_flight {
            return;
        }
        let fresh = match self.state.take_flush_batch(self.flush_requested) {
            Ok(fresh) => fresh,
            Err(e) => return fatal(&format!("state could not be encoded for a flush: {e}")),
        };
        let batch = match (self.failed_batch.take(), fresh) {
            (Some(failed), Some(fresh)) => failed.then(fresh),
            (Some(failed), None) => failed,
            (None, Some(fresh)) => fresh,
            (None, None) => return,
        };
        self.flush_requested = batch.applied_index;
        self.flush_in_flight = true;
        debug!(
            applied = batch.applied_index,
            upserts = batch.upserts.len(),
            deletes = batch.deletes.len(),
            "flushing state store"
        );
        self.send_store_job(StoreJob::Flush(batch));
    }

    fn send_store_job(&mut self, job: StoreJob) {
        let sent = self.store_jobs.as_ref().is_some_and(|jobs| jobs.send(job).is_ok());
        if !sent {
            fatal("the state store thread has stopped");
        }
    }
}

impl Actor for CommitActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let _span = self.span().entered();
        info!(
            applied = self.state.applied_index(),
            keys = self.state.len(),
            "commit actor started"
        );
        ctx.run_interval(self.settings.commit_interval, |_, ctx| ctx.notify(FlushTick));
        // Recovery may have applied nothing new yet, but the store's own point is flushed.
        self.election.do_send(Flushed(self.flushed));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // A clean shutdown flushes what it can, so the next start replays less.
        self.flush_in_flight = false;
        self.start_flush();
        self.store_jobs.take();
        if let Some(thread) = self.store_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Handler<Apply> for CommitActor {
    type Result = ();

    fn handle(&mut self, Apply(entries): Apply, _ctx: &mut Context<Self>) {
        let _span = self.span().entered();
        for entry in &entries {
            let Some(result) = self.state.apply(entry) else {
                continue;
            };
            if entry.request_id != 0 {
                debug!(request_id = entry.request_id, index = entry.index, "entry applied");
            }
            // Every waiter at or below this index is settled now.
            let later = self.waiting.split_off(&(entry.index + 1));
            let settled = std::mem::replace(&mut self.waiting, later);
            for (index, (term, request_id, responder)) in settled {
                let answer = if index == entry.index && term == entry.term {
                    result.clone().map(Reply::Value)
                } else {
                    // A different entry was committed at this index: ours was lost.
                    debug!(request_id, index, "proposal superseded by another leader's entry");
                    Err(ClientError::OutcomeUnknown)
                };
                let _ = responder.send(answer);
            }
        }
        self.serve_ready_reads();
    }
}

impl Handler<AwaitApply> for CommitActor {
    type Result = ();

    fn handle(&mut self, wait: AwaitApply, _ctx: &mut Context<Self>) {
        if wait.index <= self.state.applied_index() {
            // Already applied without us watching (a snapshot replaced it).
            let _ = wait.responder.send(Err(ClientError::OutcomeUnknown));
            return;
        }
        if let Some((_, request_id, old)) = self
            .waiting
            .insert(wait.index, (wait.term, wait.request_id, wait.responder))
        {
            debug!(request_id, "an older proposal at the same index was superseded");
            let _ = old.send(Err(ClientError::OutcomeUnknown));
        }
    }
}

impl Handler<ServeRead> for CommitActor {
    type Result = ();

    fn handle(&mut self, read: ServeRead, _ctx: &mut Context<Self>) {
        self.reads
            .entry(read.index)
            .or_default()
            .push((read.key, read.request_id, read.responder));
        self.serve_ready_reads();
    }
}

impl Handler<FlushTick> for CommitActor {
    type Result = ();

    fn handle(&mut self, _: FlushTick, _ctx: &mut Context<Self>) {
        let _span = self.span().entered();
        self.start_flush();
    }
}

impl Handler<FlushDone> for CommitActor {
    type Result = ();

    fn handle(&mut self, FlushDone(result): FlushDone, _ctx: &mut Context<Self>) {
        let _span = self.span().entered();
        self.flush_in_flight = false;
        match result {
            Ok(index) => {
                self.flushed = self.flushed.max(index);
                debug!(flushed = self.flushed, "state store flushed");
                self.election.do_send(Flushed(self.flushed));
            }
            Err((_, batch)) if batch.applied_index <= self.flushed => {
                // Superseded by a snapshot install, which replaced the whole store.
            }
            Err((e, batch)) => {
                // The log still holds everything (it is trimmed only up to `flushed`):
                // keep serving and write the same changes again at the next tick.
                warn!(
                    applied = batch.applied_index,
                    "state store flush failed, will retry: {e}"
                );
                self.failed_batch = Some(match self.failed_batch.take() {
                    Some(newer) => batch.then(newer),
                    None => batch,
                });
            }
        }
    }
}

impl Handler<TakeSnapshot> for CommitActor {
    type Result = Result<SnapshotTaken, String>;

    fn handle(&mut self, _: TakeSnapshot, _ctx: &mut Context<Self>) -> Self::Result {
        let started = Instant::now();
        let data = self.state.snapshot().map_err(|e| e.to_string())?;
        debug!(micros = started.elapsed().as_micros() as u64, "snapshot encoded");
        Ok(SnapshotTaken {
            index: self.state.applied_index(),
            term: self.state.applied_term(),
            data,
        })
    }
}

impl Handler<InstallSnapshot> for CommitActor {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, snapshot: InstallSnapshot, _ctx: &mut Context<Self>) -> Self::Result {
        let _span = self.span().entered();
        let stored = match StateMachine::decode_snapshot(&snapshot.data) {
            Ok(stored) if stored.applied_index == snapshot.index && stored.applied_term == snapshot.term => stored,
            Ok(stored) => {
                let message = format!(
                    "snapshot claims ({}, {}) but holds ({}, {})",
                    snapshot.index, snapshot.term, stored.applied_index, stored.applied_term
                );
                return Box::pin(async move { Err(message) });
            }
            Err(e) => {
                let message = e.to_string();
                return Box::pin(async move { Err(message) });
            }
        };
        let state = match StateMachine::from_stored(stored.clone()) {
            Ok(state) => state,
            Err(e) => {
                let message = e.to_string();
                return Box::pin(async move { Err(message) });
            }
        };
        info!(
            index = snapshot.index,
            keys = state.len(),
            "snapshot installed in memory; writing to the store"
        );
        self.state = state;
        self.failed_batch = None;
        // Writes waiting at or below the snapshot were settled elsewhere; we cannot tell their answer.
        let later = self.waiting.split_off(&(snapshot.index + 1));
        for (_, (_, _, responder)) in std::mem::replace(&mut self.waiting, later) {
            let _ = responder.send(Err(ClientError::OutcomeUnknown));
        }
        self.serve_ready_reads();
        self.flushed = snapshot.index;
        self.flush_requested = snapshot.index;
        let (done, finished) = oneshot::channel();
        self.send_store_job(StoreJob::Replace(stored, done));
        let election = self.election.clone();
        let index = snapshot.index;
        Box::pin(async move {
            match finished.await {
                Ok(Ok(())) => {
                    election.do_send(Flushed(index));
                    Ok(())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("state store thread stopped".to_string()),
            }
        })
    }
}

impl Handler<GetApplyStatus> for CommitActor {
    type Result = MessageResult<GetApplyStatus>;

    fn handle(&mut self, _: GetApplyStatus, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult((self.state.applied_index(), self.flushed))
    }
}
