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
use crate::state::{StateError, StateMachine};
use crate::storage::{Store, StoreError, Wal, WalError};
use consensus::{CoreConfig, HardState, MemLog, RaftCore};

/// Why a node could not be rebuilt from its disk.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The write-ahead log could not be opened, repaired or rewritten.
    #[error("write-ahead log: {0}")]
    Wal(#[from] WalError),
    /// The state store could not be read.
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    /// The stored session table did not decode.
    #[error("state: {0}")]
    State(#[from] StateError),
    /// The incarnation file could not be written durably.
    #[error("cannot record this start's incarnation in the data folder: {0}")]
    Incarnation(#[from] std::io::Error),
    /// Snapshot staging files of an earlier run could not be listed or removed.
    #[error("cannot remove the snapshot staging files an earlier run left: {0}")]
    Staging(std::io::Error),
    /// The store's applied index is below the log's start point: the entries in
    /// between are in neither.
    #[error(
        "the state store is at index {applied} but the log starts after {start}: entries in between are lost; \
         refusing to start (restore the data folder or wipe it to rejoin as a new node)"
    )]
    StoreBehindLog {
        /// The store's applied index.
        applied: LogIndex,
        /// The log's start point: the last index trimmed from it.
        start: LogIndex,
    },
}

/// What [`recover`] rebuilt, for the actors to take over.
pub struct Recovered {
    /// The opened and repaired write-ahead log, for the LogActor.
    pub wal: Wal,
    /// The state store it read, for the CommitActor.
    pub store: Box<dyn Store>,
    /// The consensus core with the recovered term, vote and log, for the ElectionActor.
    pub core: RaftCore,
    /// The state machine as of the store's applied index, for the CommitActor.
    pub state: StateMachine,
}

/// Rebuilds the node in `settings.data_dir` from its write-ahead log and
/// `store`: opens the log and cuts a damaged tail (a cut that took synced
/// records, or a blank log where the node ran before, puts the core in
/// recovery), removes stale snapshot staging files, aligns the log with the
/// store's applied point, and records this start's incarnation.
pub fn recover(settings: &Settings, mut store: Box<dyn Store>) -> Result<Recovered, RecoveryError> {
    // Written at every start: its presence says this node has run here before.
    let started_before = settings.data_dir.join(INCARNATION_FILE).exists();
    // A cut may take entries this node acknowledged or a vote it cast: it
    // recovers before it votes again (RaftCore, invariant 9). The mark goes
    // into the file in the same atomic step as the cut, so a crash at any
    // point either finds the damage again or resumes the recovery.
    let (mut wal, from_wal) = Wal::open_marking_damage(&settings.data_dir, |hard| HardState {
        recovering: true,
        ..hard
    })?;
    if from_wal.truncated_bytes > 0 {
        warn!(
            bytes = from_wal.truncated_bytes,
            synced_lost = from_wal.lost_synced.is_some(),
            "torn or corrupt write-ahead log tail truncated"
        );
        match from_wal.lost_synced {
            Some(through) => warn!(
                synced_through = through,
                "the cut took records an fsync had made durable: not voting until the cluster's \
                 term is known and a leader has caught this node up"
            ),
            None => info!("the cut took only a write that was never synced: nothing acknowledged was lost"),
        }
    }
    let staged = crate::snapshot::discard_staged(&settings.data_dir).map_err(RecoveryError::Staging)?;
    if staged > 0 {
        info!(files = staged, "removed snapshot staging files left by an earlier run");
    }
    let blank_wal = from_wal.hard_state == HardState::default()
        && from_wal.start_index == 0
        && from_wal.start_term == 0
        && from_wal.entries.is_empty();
    let stored = store.load()?;
    let (applied, applied_term) = (stored.applied_index, stored.applied_term);
    if applied < from_wal.start_index {
        return Err(RecoveryError::StoreBehindLog {
            applied,
            start: from_wal.start_index,
        });
    }
    let mut log = MemLog::new(from_wal.start_index, from_wal.start_term, from_wal.entries);
    if log.reconcile(applied, applied_term) {
        warn!(
            applied,
            applied_term, "log does not reach the store's applied point: reset it there"
        );
        wal.rewrite(from_wal.hard_state, applied, applied_term, &[])?;
    }
    // A log with no record at all (missing, or emptied) next to a node that
    // has run before lost its term and vote: starting at term 0 could vote
    // twice in a term. Recover as after a cut tail (invariant 9), and record
    // that first, so a crash now resumes the recovery.
    let mut hard_state = from_wal.hard_state;
    if blank_wal && (applied > 0 || started_before) {
        warn!(
            applied,
            "the write-ahead log is missing or empty, but this node has run here before: \
             its term and vote are lost; not voting until the cluster's term is known \
             and a leader has caught this node up"
        );
        hard_state.recovering = true;
        // A blank log holds no entry; after `MemLog::reconcile` it starts at the store's point.
        wal.rewrite(hard_state, log.start_index(), log.start_term(), &[])?;
    }
    info!(
        term = hard_state.term,
        voted_for = ?hard_state.voted_for,
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
        incarnation: start_incarnation(&settings.data_dir)?,
    };
    let core = RaftCore::new(config, hard_state, log, applied);
    let state = StateMachine::from_stored(stored)?;
    Ok(Recovered {
        wal,
        store,
        core,
        state,
    })
}

/// Where the last start's incarnation is kept.
const INCARNATION_FILE: &str = "incarnation";

/// This start's incarnation: above the last start's (kept in the data folder),
/// and normally the wall clock in microseconds, so that a lost or damaged file
/// still gives a number above every earlier start unless the clock went back
/// too. Never 0, which means "unknown" on the wire. Written durably before the
/// node says anything, since leaders drop answers from a lower incarnation.
fn start_incarnation(dir: &std::path::Path) -> Result<u64, std::io::Error> {
    let path = dir.join(INCARNATION_FILE);
    let last = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
    let incarnation = clock.max(last.saturating_add(1)).max(1);
    let tmp = dir.join(format!("{INCARNATION_FILE}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, incarnation.to_string().as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(incarnation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_start_has_a_higher_incarnation_even_if_the_clock_went_back() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let first = start_incarnation(dir.path()).expect("first");
        let second = start_incarnation(dir.path()).expect("second");
        assert!(second > first, "{second} after {first}");
        // A clock far behind the last start (the file says a later time).
        let ahead = u64::MAX / 2;
        std::fs::write(dir.path().join(INCARNATION_FILE), ahead.to_string()).expect("write");
        assert_eq!(start_incarnation(dir.path()).expect("third"), ahead + 1);
        // A damaged file falls back to the clock.
        std::fs::write(dir.path().join(INCARNATION_FILE), "garbage").expect("write");
        assert!(start_incarnation(dir.path()).expect("fourth") > 1);
    }
}
