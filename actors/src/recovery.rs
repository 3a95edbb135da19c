//! Start-up: rebuilds a node's consensus core and state machine from disk.
//!
//! The write-ahead log gives term, vote and the log after its start point;
//! the state store gives the state as of its applied index. Entries after the
//! applied index are applied again once the cluster confirms them committed
//! (they are still in the log: the log is only ever trimmed up to what the
//! store has flushed).

use protocol::LogIndex;
use tracing::{info, warn};

use crate::messages::Settings;
use crate::raft::{CoreConfig, MemLog, RaftCore};
use crate::state::{StateError, StateMachine};
use crate::storage::{Store, StoreError, Wal, WalError, WalRecord};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("write-ahead log: {0}")]
    Wal(#[from] WalError),
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error(
        "the state store is at index {applied} but the log starts after {start}: entries in between are lost; \
         refusing to start (restore the data folder or wipe it to rejoin as a new node)"
    )]
    StoreBehindLog { applied: LogIndex, start: LogIndex },
}

/// Makes the log continue the store: if the store already holds a snapshot
/// the log never recorded (a crash between installing it and rewriting the
/// log), the log restarts at the store's applied point. Returns true if it did.
pub fn reconcile(log: &mut MemLog, applied: LogIndex, applied_term: protocol::Term) -> bool {
    if applied > 0 && log.term(applied) != Some(applied_term) {
        log.reset_to(applied, applied_term);
        true
    } else {
        false
    }
}

pub struct Recovered {
    pub wal: Wal,
    pub store: Box<dyn Store>,
    pub core: RaftCore,
    pub state: StateMachine,
}

pub fn recover(settings: &Settings, mut store: Box<dyn Store>) -> Result<Recovered, RecoveryError> {
    let (mut wal, mut from_wal) = Wal::open(&settings.data_dir)?;
    if from_wal.truncated_bytes > 0 {
        warn!(
            bytes = from_wal.truncated_bytes,
            "torn or corrupt write-ahead log tail truncated"
        );
        // The cut may have taken entries this node acknowledged or a vote it
        // cast: it recovers before it votes again (RaftCore, invariant 9). The
        // mark is durable first, so a crash during the recovery resumes it.
        if !from_wal.hard_state.recovering {
            from_wal.hard_state.recovering = true;
            wal.append(&[WalRecord::HardState(from_wal.hard_state)])?;
            wal.sync()?;
        }
        warn!("not voting until the cluster's term is known and a leader has caught this node up");
    }
    let stored = store.load()?;
    let (applied, applied_term) = (stored.applied_index, stored.applied_term);
    if applied < from_wal.start_index {
        return Err(RecoveryError::StoreBehindLog {
            applied,
            start: from_wal.start_index,
        });
    }
    let mut log = MemLog::new(from_wal.start_index, from_wal.start_term, from_wal.entries);
    if reconcile(&mut log, applied, applied_term) {
        warn!(
            applied,
            applied_term, "log does not reach the store's applied point: reset it there"
        );
        wal.rewrite(from_wal.hard_state, applied, applied_term, &[])?;
    }
    info!(
        term = from_wal.hard_state.term,
        voted_for = ?from_wal.hard_state.voted_for,
        log_start = log.start_index(),
        log_last = log.last_index(),
        applied,
        "recovered from disk"
    );
    let config = CoreConfig {
        id: settings.node_id,
        members: settings.member_ids(),
        max_batch_entries: settings.max_batch_entries,
        max_batch_bytes: settings.max_batch_bytes,
        max_inflight_entries: settings.max_inflight_entries,
        // A lost snapshot is sent again after about two election timeouts.
        snapshot_retry_rounds: (2 * settings.election_timeout.as_millis()
            / settings.heartbeat_interval.as_millis().max(1))
        .max(3) as u64,
        incarnation: start_incarnation(),
    };
    let core = RaftCore::new(config, from_wal.hard_state, log, applied);
    let state = StateMachine::from_stored(stored)?;
    Ok(Recovered {
        wal,
        store,
        core,
        state,
    })
}

/// This start's incarnation: the wall clock in microseconds, which grows from
/// one start to the next (a restart takes far longer than any clock step a
/// synchronized clock makes). Never 0, which means "unknown" on the wire.
fn start_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
        .max(1)
}
