//! CommitActor: owns the state machine and the state store.
//!
//! It applies committed entries once, in index order, answers the writes
//! waiting on them, serves reads the ElectionActor has confirmed once their
//! read index is applied, and every `commit_interval` flushes what changed to
//! the store on a store thread (so a slow flush never stalls applying). What
//! is not flushed yet is still in the write-ahead log, which recovery replays.
//! A failed flush (a store that is down: MongoDB unreachable) is retried with
//! the newer changes merged in, after a backoff that doubles up to
//! [`MAX_RETRY_BACKOFF`]; meanwhile the node serves from memory and its log.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::prelude::*;
use protocol::{ClientError, LogIndex, Reply, Term};
use tokio::sync::oneshot;
use tracing::{debug, info, info_span, warn};

use crate::election::ElectionActor;
use crate::messages::*;
use crate::runtime::{drop_elsewhere, fatal};
use crate::snapshot::DecodedSnapshot;
use crate::state::StateMachine;
use crate::storage::Store;
use crate::storage::{FlushBatch, StoreError, StoredState};

enum StoreJob {
    /// Write these changes, after any the store failed to write before
    /// (None: only retry those).
    Flush(Option<FlushBatch>),
    Replace(StoredState, oneshot::Sender<Result<(), StoreError>>),
}

/// The store thread finished a flush; on failure, the applied index of the
/// batch it keeps for the next attempt.
#[derive(Message)]
#[rtype(result = "()")]
struct FlushDone(Result<LogIndex, (String, LogIndex)>);

#[derive(Message)]
#[rtype(result = "()")]
struct FlushTick;

/// Longest wait between two attempts of a failed flush (unless `commit_interval` is longer).
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);
/// How long a snapshot install keeps retrying a failing store before the node gives up.
const REPLACE_DEADLINE: Duration = Duration::from_secs(60);

/// Applies committed entries to the state machine, answers the clients waiting
/// on them, and flushes the state store on a thread of its own.
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
    /// Flushes failed in a row, and when the next attempt may start.
    flush_failures: u32,
    retry_at: Option<Instant>,
}

impl CommitActor {
    /// Starts the store thread on `store` and builds the actor around the
    /// recovered `state`. `ctx` is the actor's own (not yet running) context, so
    /// the store thread can report flushes to it. Fails if the thread cannot be started.
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
            .spawn(move || store_loop(store.as_mut(), queue, |result| me.do_send(FlushDone(result))))?;
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
            flush_failures: 0,
            retry_at: None,
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
        if !self.flush_in_flight {
            self.send_flush(false);
        }
    }

    /// Hands the changes since the last flush to the store thread; with
    /// nothing new, only if `even_if_nothing_new` or a flush failed (the store
    /// thread holds what it could not write, and retries it).
    fn send_flush(&mut self, even_if_nothing_new: bool) {
        let fresh = match self.state.take_flush_batch(self.flush_requested) {
            Ok(fresh) => fresh,
            Err(e) => fatal(&format!("state could not be encoded for a flush: {e}")),
        };
        if fresh.is_none() && self.flush_failures == 0 && !even_if_nothing_new {
            return;
        }
        if let Some(batch) = &fresh {
            self.flush_requested = batch.applied_index;
            debug!(
                applied = batch.applied_index,
                upserts = batch.upserts.len(),
                deletes = batch.deletes.len(),
                sessions = batch.session_upserts.len() + batch.session_deletes.len(),
                "flushing state store"
            );
        }
        self.flush_in_flight = true;
        self.send_store_job(StoreJob::Flush(fresh));
    }

    /// Applied entries not in the store yet (they are in the log).
    fn unflushed(&self) -> u64 {
        self.state.applied_index().saturating_sub(self.flushed)
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
        self.view.set_applied(self.state.applied_index());
        ctx.run_interval(self.settings.commit_interval, |_, ctx| ctx.notify(FlushTick));
        // Recovery may have applied nothing new yet, but the store's own point is flushed.
        self.election.do_send(Flushed(self.flushed));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // A clean shutdown flushes what it can, so the next start replays
        // less. A flush still in flight is ahead of this one on the store
        // thread, which carries what it fails to write into this one.
        // Sent even with nothing new: the store thread may hold a failed batch
        // the actor has not heard of yet.
        self.send_flush(true);
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
            // Every waiter at or below this index is settled now. Taken from the
            // front one by one: splitting the map would move every later
            // waiter once per applied entry.
            while let Some(first) = self.waiting.first_entry() {
                if *first.key() > entry.index {
                    break;
                }
                let (index, (term, request_id, responder)) = first.remove_entry();
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
        self.view.set_applied(self.state.applied_index());
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
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
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
                if self.flush_failures > 0 {
                    info!(
                        flushed = self.flushed,
                        failures = self.flush_failures,
                        unflushed = self.unflushed(),
                        "state store flushed again after failures"
                    );
                }
                self.flush_failures = 0;
                self.retry_at = None;
                self.election.do_send(Flushed(self.flushed));
            }
            Err((_, index)) if index <= self.flushed => {
                // Superseded by a snapshot install, which replaced the whole store.
            }
            Err((e, index)) => {
                // The log still holds everything (it is trimmed only up to `flushed`):
                // keep serving and write the same changes again after a backoff.
                self.flush_failures = self.flush_failures.saturating_add(1);
                let backoff = retry_backoff(self.settings.commit_interval, self.flush_failures);
                self.retry_at = Some(Instant::now() + backoff);
                warn!(
                    applied = index,
                    flushed = self.flushed,
                    unflushed = self.unflushed(),
                    failures = self.flush_failures,
                    retry_in_ms = backoff.as_millis() as u64,
                    error = %e,
                    "state store flush failed, will retry"
                );
            }
        }
    }
}

impl Handler<TakeSnapshot> for CommitActor {
    type Result = MessageResult<TakeSnapshot>;

    fn handle(&mut self, _: TakeSnapshot, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.snapshot_source())
    }
}

impl Handler<InstallSnapshot> for CommitActor {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, snapshot: InstallSnapshot, _ctx: &mut Context<Self>) -> Self::Result {
        let _span = self.span().entered();
        let DecodedSnapshot { state, stored } = snapshot.snapshot;
        if (state.applied_index(), state.applied_term()) != (snapshot.index, snapshot.term) {
            let message = format!(
                "snapshot claims ({}, {}) but holds ({}, {})",
                snapshot.index,
                snapshot.term,
                state.applied_index(),
                state.applied_term()
            );
            return Box::pin(async move { Err(message) });
        }
        info!(
            index = snapshot.index,
            keys = state.len(),
            "snapshot installed in memory; writing to the store"
        );
        drop_elsewhere(std::mem::replace(&mut self.state, state));
        self.view.set_applied(self.state.applied_index());
        self.flush_failures = 0;
        self.retry_at = None;
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
        MessageResult(ApplyStatus {
            applied_index: self.state.applied_index(),
            flushed_index: self.flushed,
            flush_failures: u64::from(self.flush_failures),
        })
    }
}

/// The store thread: runs jobs in order and reports each flush's outcome.
/// Changes the store failed to write are kept here, not by the actor, so
/// that every later flush carries them (the last one at shutdown included,
/// even if the actor never hears of the failure).
fn store_loop(
    store: &mut dyn Store,
    queue: mpsc::Receiver<StoreJob>,
    report: impl Fn(Result<LogIndex, (String, LogIndex)>),
) {
    let mut unwritten: Option<FlushBatch> = None;
    for job in queue {
        match job {
            StoreJob::Flush(fresh) => {
                let batch = match (unwritten.take(), fresh) {
                    (Some(failed), Some(fresh)) => failed.then(fresh),
                    (failed, fresh) => match failed.or(fresh) {
                        Some(batch) => batch,
                        None => {
                            // Nothing is unwritten (a snapshot covered it): done.
                            report(Ok(0));
                            continue;
                        }
                    },
                };
                // A store that panics (redb does on some damage) is in an unknown
                // state: stop the node rather than let flushing stop unseen.
                let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.flush(&batch)))
                    .unwrap_or_else(|_| fatal("the state store panicked during a flush"));
                match flushed {
                    Ok(()) => report(Ok(batch.applied_index)),
                    Err(e) => {
                        let index = batch.applied_index;
                        unwritten = Some(batch);
                        report(Err((e.to_string(), index)));
                    }
                }
            }
            StoreJob::Replace(state, done) => {
                // A snapshot is installed only above the commit index, so it
                // holds every change of a failed batch; and such a batch,
                // made against the store before it, must not be written after it.
                unwritten = None;
                let _ = done.send(replace_with_retries(store, &state));
            }
        }
    }
}

/// The wait before the next attempt after `failures` failed flushes in a row:
/// the commit interval, doubled per failure, at most [`MAX_RETRY_BACKOFF`].
fn retry_backoff(commit_interval: Duration, failures: u32) -> Duration {
    let cap = MAX_RETRY_BACKOFF.max(commit_interval);
    let doublings = failures.saturating_sub(1).min(16);
    commit_interval.saturating_mul(1 << doublings).min(cap)
}

/// Installs a snapshot in the store, retrying a failing store (MongoDB down)
/// for up to [`REPLACE_DEADLINE`]: the log may move on only once the store
/// holds the snapshot, so the node waits rather than fails at once.
fn replace_with_retries(store: &mut dyn Store, state: &StoredState) -> Result<(), StoreError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match store.replace(state) {
            Ok(()) => return Ok(()),
            Err(e) if started.elapsed() + backoff < REPLACE_DEADLINE => {
                warn!(
                    index = state.applied_index,
                    retry_in_ms = backoff.as_millis() as u64,
                    error = %e,
                    "snapshot install in the state store failed, will retry"
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that fails its first `failures` flushes and keeps what the others wrote.
    struct FlakyStore {
        failures: usize,
        held: StoredState,
    }

    impl Store for FlakyStore {
        fn load(&mut self) -> Result<StoredState, StoreError> {
            Ok(self.held.clone())
        }

        fn flush(&mut self, batch: &FlushBatch) -> Result<(), StoreError> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(StoreError::Engine("down".into()));
            }
            self.held.absorb(batch);
            Ok(())
        }

        fn replace(&mut self, state: &StoredState) -> Result<(), StoreError> {
            self.held = state.clone();
            Ok(())
        }
    }

    fn batch(index: LogIndex, key: &str, session: u64) -> FlushBatch {
        FlushBatch {
            applied_index: index,
            applied_term: 1,
            upserts: vec![(key.to_string(), index.to_string())],
            session_upserts: vec![(session, vec![index as u8])],
            ..FlushBatch::default()
        }
    }

    #[test]
    fn a_failed_flush_is_carried_into_the_next_one_even_if_nobody_retries_it() {
        let mut store = FlakyStore {
            failures: 1,
            held: StoredState::default(),
        };
        let (jobs, queue) = mpsc::channel();
        // The shutdown case: a flush is in flight when the last one is queued,
        // and the first fails; nobody hears of it before the second runs.
        jobs.send(StoreJob::Flush(Some(batch(2, "a", 1)))).unwrap();
        jobs.send(StoreJob::Flush(Some(batch(3, "b", 2)))).unwrap();
        // A retry with nothing new, after everything was written, is answered too.
        jobs.send(StoreJob::Flush(None)).unwrap();
        drop(jobs);
        let reports = std::cell::RefCell::new(Vec::new());
        store_loop(&mut store, queue, |result| {
            reports.borrow_mut().push(result.map_err(|(_, i)| i))
        });
        assert_eq!(reports.into_inner(), [Err(2), Ok(3), Ok(0)]);
        let mut expected = StoredState::default();
        expected.absorb(&batch(2, "a", 1));
        expected.absorb(&batch(3, "b", 2));
        assert_eq!(
            store.held, expected,
            "the failed batch's keys and sessions were written"
        );
    }

    #[test]
    fn a_snapshot_install_drops_a_failed_batch_it_covers() {
        let mut store = FlakyStore {
            failures: 1,
            held: StoredState::default(),
        };
        let (jobs, queue) = mpsc::channel();
        let (done, _installed) = oneshot::channel();
        jobs.send(StoreJob::Flush(Some(batch(2, "a", 1)))).unwrap();
        let snapshot = StoredState {
            applied_index: 10,
            applied_term: 2,
            ..StoredState::default()
        };
        jobs.send(StoreJob::Replace(snapshot.clone(), done)).unwrap();
        jobs.send(StoreJob::Flush(None)).unwrap();
        drop(jobs);
        store_loop(&mut store, queue, |_| {});
        assert_eq!(store.held, snapshot, "the stale batch is not written over the snapshot");
    }

    #[test]
    fn retry_backoff_doubles_up_to_the_cap() {
        let tick = Duration::from_millis(200);
        let waits: Vec<u64> = (1..=7).map(|n| retry_backoff(tick, n).as_millis() as u64).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(retry_backoff(tick, u32::MAX), MAX_RETRY_BACKOFF);
        // A commit interval above the cap is never shortened.
        let slow = Duration::from_secs(8);
        assert_eq!(retry_backoff(slow, 1), slow);
        assert_eq!(retry_backoff(slow, 5), slow);
    }
}
