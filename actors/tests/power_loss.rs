//! Durability under power loss: the write-ahead log and the redb state store
//! run on `SimulatedDisk`, which keeps what an fsync made durable apart from
//! what was only written. A workload runs until the power fails at its Nth
//! disk operation, for every N in turn; the disk then keeps any subset of
//! the unsynced writes (the last one kept may be torn), the storage is opened
//! again, and everything it acknowledged (a `sync` or `flush` that returned)
//! must be there. Recovery then goes on writing, and the power fails again.
//!
//! The same checks run on a disk whose fsync lies and on one whose directory
//! fsync lies: they must find lost acknowledged data, which shows they would
//! catch a missing or misplaced fsync. Injected I/O errors (a failed fsync, a
//! failed write) must leave the log refusing or cut, never lying.

use std::collections::BTreeMap;
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use actors::storage::disk::{Faults, Operation, SimulatedDisk};
use actors::storage::{FlushBatch, RedbStore, Store, StoredState, Wal, WalError, WalRecord};
use consensus::HardState;
use protocol::{Command, Entry, LogIndex, Term};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIR: &str = "/node/wal";

/// What the log holds, as the workload wrote it.
#[derive(Debug, Clone, Default, PartialEq)]
struct LogModel {
    hard: HardState,
    start_index: LogIndex,
    start_term: Term,
    entries: Vec<Entry>,
    /// Every entry this generation wrote or started with, compacted or not:
    /// what a file a rewrite did not replace may still hold.
    ever: BTreeMap<LogIndex, Entry>,
}

impl LogModel {
    fn last_index(&self) -> LogIndex {
        self.entries.last().map_or(self.start_index, |e| e.index)
    }
}

fn entry(index: LogIndex, term: Term, size: usize) -> Entry {
    Entry {
        index,
        term,
        request_id: index,
        command: Command::Put {
            key: format!("k{index}"),
            value: "v".repeat(size),
            session: None,
        },
    }
}

/// Keeps each unsynced write with probability one half; the last kept may be torn.
fn random_survivors(rng: &mut StdRng) -> impl FnMut(usize) -> (Vec<bool>, Option<usize>) + '_ {
    move |n| {
        let kept = (0..n).map(|_| rng.gen_bool(0.5)).collect();
        // Any prefix of the last kept write: a header, a page, most of a big write.
        let torn = rng.gen_bool(0.5).then(|| rng.gen_range(0..=64 * 1024));
        (kept, torn)
    }
}

/// Writes to the log until `rounds` are done or the disk fails: batches of
/// entries (synced: acknowledged, or left unsynced), new terms, idle
/// `Synced` records and compactions. `acked` is what a returned sync or
/// rewrite made durable; `written` is everything attempted.
fn log_workload(
    wal: &mut Wal<SimulatedDisk>,
    rng: &mut StdRng,
    rounds: usize,
    acked: &mut LogModel,
    written: &mut LogModel,
) -> Result<(), WalError> {
    for _ in 0..rounds {
        match rng.gen_range(0..100) {
            0..=59 => {
                let mut records = Vec::new();
                if rng.gen_bool(0.2) {
                    written.hard = HardState {
                        term: written.hard.term + 1,
                        voted_for: Some(rng.gen_range(1..=3)),
                        ..written.hard
                    };
                    records.push(WalRecord::HardState(written.hard));
                }
                for _ in 0..rng.gen_range(1..=4) {
                    let e = entry(written.last_index() + 1, written.hard.term, rng.gen_range(0..300));
                    records.push(WalRecord::Entry(e.clone()));
                    written.ever.insert(e.index, e.clone());
                    written.entries.push(e);
                }
                wal.append(&records)?;
                if rng.gen_bool(0.8) {
                    wal.sync()?;
                    *acked = written.clone();
                }
            }
            60..=74 => {
                wal.sync()?;
                *acked = written.clone();
            }
            75..=89 => {
                wal.record_synced()?;
            }
            _ => {
                // Compaction: keep the entries after a new start point.
                let keep_from = written.start_index + (written.entries.len() as u64) / 2;
                let start_term = written
                    .entries
                    .iter()
                    .find(|e| e.index == keep_from)
                    .map_or(written.start_term, |e| e.term);
                let kept: Vec<Entry> = written
                    .entries
                    .iter()
                    .filter(|e| e.index > keep_from)
                    .cloned()
                    .collect();
                // Attempted before it is called: a rewrite can take effect and still fail after.
                written.start_index = keep_from;
                written.start_term = start_term;
                written.entries = kept;
                wal.rewrite(written.hard, keep_from, start_term, &written.entries)?;
                *acked = written.clone();
            }
        }
    }
    Ok(())
}

/// What a reopened log must hold: everything acknowledged, and nothing that was not written.
fn check_log(recovered: &actors::storage::Recovered, acked: &LogModel, written: &LogModel) -> Result<(), String> {
    if let Some(through) = recovered.lost_synced {
        return Err(format!(
            "a power cut was taken for lost synced records (through {through}); it only loses unsynced writes"
        ));
    }
    // Each term has one hard state here (a new term with its vote), so a
    // hard state of the acknowledged or the last written term must be that one.
    let hard = recovered.hard_state;
    let known = (hard.term != acked.hard.term || hard == acked.hard)
        && (hard.term != written.hard.term || hard == written.hard);
    if hard.term < acked.hard.term || hard.term > written.hard.term || !known {
        return Err(format!(
            "hard state {hard:?} after the cut; acknowledged {:?}, written up to {:?}",
            acked.hard, written.hard
        ));
    }
    if recovered.start_index < acked.start_index.min(written.start_index) || recovered.start_index > written.start_index
    {
        return Err(format!(
            "log starts after {} after the cut; acknowledged {}, written {}",
            recovered.start_index, acked.start_index, written.start_index
        ));
    }
    let last = recovered.entries.last().map_or(recovered.start_index, |e| e.index);
    if last < acked.last_index() {
        return Err(format!(
            "the log ends at {last} after the cut, but {} was acknowledged",
            acked.last_index()
        ));
    }
    // Every entry read back is the one written at its index.
    for e in &recovered.entries {
        if written.ever.get(&e.index) != Some(e) {
            return Err(format!("entry {} read back is not the one written: {e:?}", e.index));
        }
    }
    Ok(())
}

/// A model of what was recovered, to go on writing from.
fn recovered_model(recovered: &actors::storage::Recovered) -> LogModel {
    LogModel {
        hard: recovered.hard_state,
        start_index: recovered.start_index,
        start_term: recovered.start_term,
        entries: recovered.entries.clone(),
        ever: recovered.entries.iter().map(|e| (e.index, e.clone())).collect(),
    }
}

/// Runs the log workload on `faults`' disk with the power failing at
/// operation `cut_at`, twice (the second time after recovering from the
/// first), and checks what each reopen finds.
fn log_run(seed: u64, cut_at: u64, faults: &Faults) -> Result<(), String> {
    let dir = Path::new(DIR);
    let disk = SimulatedDisk::new(Faults {
        power_fails_at: Some(cut_at),
        ..faults.clone()
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acked = LogModel::default();
    let mut written = LogModel::default();
    for generation in 0..2 {
        if let Ok((mut wal, _)) = Wal::open_on(disk.clone(), dir, |hard| hard) {
            let _ = log_workload(&mut wal, &mut rng, 60, &mut acked, &mut written);
        }
        if generation == 0 && rng.gen_bool(0.3) {
            // The process is killed, the machine stays up: what it wrote is in
            // the page cache, and the next open counts it all as durable, so
            // it must make it so (the power fails in the next generation).
            disk.crash();
        } else {
            disk.power_cut(random_survivors(&mut rng));
        }
        if rng.gen_bool(0.5) {
            // Recovery itself is cut short by another power failure.
            disk.set_faults(Faults {
                power_fails_at: Some(disk.operations() + rng.gen_range(0..12)),
                ..faults.clone()
            });
            let _ = Wal::open_on(disk.clone(), dir, |hard| hard);
            disk.power_cut(random_survivors(&mut rng));
        }
        let (_, recovered) = Wal::open_on(disk.clone(), dir, |hard| hard)
            .map_err(|e| format!("the log does not open after power cut {generation}: {e}"))?;
        check_log(&recovered, &acked, &written).map_err(|e| format!("after power cut {generation}: {e}"))?;
        // Go on from what survived; the next cut comes at a random later operation.
        acked = recovered_model(&recovered);
        written = acked.clone();
        disk.set_faults(Faults {
            // Often right away: what recovery counted as durable must be so at once.
            power_fails_at: Some(
                disk.operations()
                    + if rng.gen_bool(0.5) {
                        rng.gen_range(1..8)
                    } else {
                        rng.gen_range(1..400)
                    },
            ),
            ..faults.clone()
        });
    }
    Ok(())
}

/// Operations the log workload does when the power never fails.
fn log_operations(seed: u64) -> u64 {
    let disk = SimulatedDisk::default();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut wal, _) = Wal::open_on(disk.clone(), Path::new(DIR), |hard| hard).expect("open");
    log_workload(
        &mut wal,
        &mut rng,
        60,
        &mut LogModel::default(),
        &mut LogModel::default(),
    )
    .expect("no faults");
    disk.operations()
}

/// Runs `run(seed, cut_at)` for every operation `cut_at` of each seed's
/// fault-free workload (`operations(seed)` of them), up to the first
/// violation that `enough` accepts; returns how many ran and the violations.
fn cut_point_violations(
    seeds: std::ops::Range<u64>,
    operations: impl Fn(u64) -> u64,
    run: impl Fn(u64, u64) -> Result<(), String>,
    enough: impl Fn(&str) -> bool,
) -> (u64, Vec<String>) {
    let mut runs = 0;
    let mut violations = Vec::new();
    for seed in seeds {
        for cut_at in 0..=operations(seed) {
            runs += 1;
            if let Err(e) = run(seed, cut_at) {
                let stop = enough(&e);
                violations.push(format!("seed {seed}, power fails at operation {cut_at}: {e}"));
                if stop {
                    return (runs, violations);
                }
            }
        }
    }
    (runs, violations)
}

fn assert_no_violations(runs: u64, violations: &[String]) {
    assert!(
        violations.is_empty(),
        "{} of {runs}:\n{}",
        violations.len(),
        violations[..violations.len().min(5)].join("\n")
    );
}

/// Every cut point of a few seeds of the log workload.
fn log_violations(faults: &Faults, seeds: std::ops::Range<u64>) -> (u64, Vec<String>) {
    cut_point_violations(
        seeds,
        log_operations,
        |seed, cut_at| log_run(seed, cut_at, faults),
        |_| false,
    )
}

#[test]
fn the_log_keeps_everything_acknowledged_at_every_power_cut_point() {
    let (runs, violations) = log_violations(&Faults::default(), 0..4);
    assert!(runs > 400, "only {runs} cut points");
    assert_no_violations(runs, &violations);
}

#[test]
fn a_disk_whose_fsync_lies_loses_acknowledged_entries_and_the_check_sees_it() {
    let lying = Faults {
        lying_fsync: true,
        ..Faults::default()
    };
    let (runs, violations) = log_violations(&lying, 0..2);
    assert!(
        violations.len() * 10 > runs as usize,
        "only {} of {runs} cut points found a loss without fsync",
        violations.len()
    );
}

#[test]
fn a_directory_fsync_that_lies_loses_the_log_and_the_check_sees_it() {
    let lying = Faults {
        lying_dir_sync: true,
        ..Faults::default()
    };
    let (runs, violations) = log_violations(&lying, 0..2);
    assert!(
        !violations.is_empty(),
        "no cut point of {runs} found a loss without directory fsyncs"
    );
}

#[test]
fn a_failed_fsync_poisons_the_log_and_nothing_it_did_not_acknowledge_is_claimed() {
    let dir = Path::new(DIR);
    let disk = SimulatedDisk::default();
    let (mut wal, _) = Wal::open_on(disk.clone(), dir, |hard| hard).expect("open");
    wal.append(&[WalRecord::Entry(entry(1, 1, 10))]).expect("append");
    wal.sync().expect("sync");
    wal.append(&[WalRecord::Entry(entry(2, 1, 10))]).expect("append");
    disk.set_faults(Faults {
        fail_next: Some((Operation::Sync, io::ErrorKind::Other)),
        ..Faults::default()
    });
    assert!(matches!(wal.sync(), Err(WalError::Io(_))));
    // After a failed fsync the kernel may have dropped the dirty pages: never trust a retry.
    assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
    assert!(matches!(
        wal.append(&[WalRecord::Entry(entry(3, 1, 10))]),
        Err(WalError::Poisoned)
    ));
    drop(wal);
    disk.power_cut(|n| (vec![false; n], None));
    let (_, recovered) = Wal::open_on(disk.clone(), dir, |hard| hard).expect("reopen");
    assert_eq!(recovered.entries.iter().map(|e| e.index).collect::<Vec<_>>(), [1]);
    assert_eq!(recovered.lost_synced, None);
}

#[test]
fn a_failed_write_leaves_no_partial_record_and_the_log_goes_on() {
    let dir = Path::new(DIR);
    let disk = SimulatedDisk::default();
    let (mut wal, _) = Wal::open_on(disk.clone(), dir, |hard| hard).expect("open");
    wal.append(&[WalRecord::Entry(entry(1, 1, 10))]).expect("append");
    wal.sync().expect("sync");
    disk.set_faults(Faults {
        fail_next: Some((Operation::Write, io::ErrorKind::StorageFull)),
        ..Faults::default()
    });
    // The disk writes half of it, then fails (ENOSPC).
    let refused = wal.append(&[WalRecord::Entry(entry(2, 1, 4000))]);
    assert!(
        matches!(refused, Err(WalError::Io(ref e)) if e.kind() == io::ErrorKind::StorageFull),
        "{refused:?}"
    );
    // A shorter entry once there is room: it must follow entry 1, not a
    // fragment, and no fragment may be left after it.
    let shorter = entry(2, 1, 10);
    wal.append(&[WalRecord::Entry(shorter.clone())])
        .expect("append after the failure");
    wal.sync().expect("sync");
    drop(wal);
    disk.power_cut(|n| (vec![false; n], None));
    let (_, recovered) = Wal::open_on(disk.clone(), dir, |hard| hard).expect("reopen");
    assert_eq!(recovered.entries.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(recovered.entries[1], shorter);
    assert_eq!(
        recovered.truncated_bytes, 0,
        "the fragment of the failed write was left in the file"
    );
}

// ---- The redb state store on the same disk.

const STATE_DIR: &str = "/node/state";

fn store_batch(rng: &mut StdRng, index: LogIndex) -> FlushBatch {
    let mut batch = FlushBatch {
        applied_index: index,
        applied_term: 1,
        evicted_through: index / 3,
        ..FlushBatch::default()
    };
    for _ in 0..rng.gen_range(1..20) {
        let key = format!("k{}", rng.gen_range(0..50));
        if rng.gen_bool(0.8) {
            batch.upserts.push((key, "v".repeat(rng.gen_range(0..200))));
        } else {
            batch.deletes.push(key);
        }
    }
    for _ in 0..rng.gen_range(0..3) {
        batch
            .session_upserts
            .push((rng.gen_range(0..10), vec![index as u8; 40]));
    }
    batch
}

/// Flushes until `rounds` are done or the disk fails; `acked` holds what
/// returned flushes wrote, `attempted` the flush that failed (it may or may
/// not have committed).
fn store_workload(
    store: &mut RedbStore,
    rng: &mut StdRng,
    acked: &mut StoredState,
    attempted: &mut Option<StoredState>,
) -> Result<(), String> {
    for _ in 0..25 {
        let batch = store_batch(rng, acked.applied_index + 1);
        let mut next = acked.clone();
        next.absorb(&batch);
        *attempted = Some(next.clone());
        store.flush(&batch).map_err(|e| e.to_string())?;
        *acked = next;
        *attempted = None;
    }
    Ok(())
}

/// `faults` take effect once the store is open (a lying fsync before that
/// would only show that a store never synced does not open).
fn store_run(seed: u64, cut_at: u64, faults: &Faults) -> Result<(), String> {
    let disk = SimulatedDisk::new(Faults {
        power_fails_at: Some(cut_at),
        ..Faults::default()
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acked = StoredState::default();
    let mut attempted = None;
    let open = |disk: &SimulatedDisk| RedbStore::open_simulated(disk, Path::new(STATE_DIR)).map_err(|e| e.to_string());
    if let Ok(mut store) = open(&disk) {
        disk.set_faults(Faults {
            power_fails_at: Some(cut_at),
            ..faults.clone()
        });
        let _ = store
            .load()
            .map_err(|e| e.to_string())
            .and_then(|_| store_workload(&mut store, &mut rng, &mut acked, &mut attempted));
    }
    disk.power_cut(random_survivors(&mut rng));
    let mut store = open(&disk).map_err(|e| format!("the store does not open after the power cut: {e}"))?;
    let loaded = store
        .load()
        .map_err(|e| format!("the store does not load after the power cut: {e}"))?;
    if loaded != acked && Some(&loaded) != attempted.as_ref() {
        return Err(format!(
            "the store holds applied index {} after the cut; flushes acknowledged through {}",
            loaded.applied_index, acked.applied_index
        ));
    }
    Ok(())
}

/// Operations the store workload does when the power never fails.
fn store_operations(seed: u64) -> u64 {
    let disk = SimulatedDisk::default();
    let mut store = RedbStore::open_simulated(&disk, Path::new(STATE_DIR)).expect("open");
    store.load().expect("load");
    store_workload(
        &mut store,
        &mut StdRng::seed_from_u64(seed),
        &mut StoredState::default(),
        &mut None,
    )
    .expect("no faults");
    disk.operations()
}

/// Every cut point of a few seeds of the store workload, up to the first
/// violation `enough` accepts. A panic inside redb (it may panic on a file
/// that is damaged enough) is a violation.
fn store_violations(faults: &Faults, seeds: std::ops::Range<u64>, enough: impl Fn(&str) -> bool) -> (u64, Vec<String>) {
    let run = |seed, cut_at| {
        std::panic::catch_unwind(AssertUnwindSafe(|| store_run(seed, cut_at, faults)))
            .unwrap_or_else(|_| Err("redb panicked on what the power cut left".to_string()))
    };
    cut_point_violations(seeds, store_operations, run, enough)
}

#[test]
fn the_state_store_keeps_every_acknowledged_flush_at_every_power_cut_point() {
    let (runs, violations) = store_violations(&Faults::default(), 0..2, |_| false);
    assert!(runs > 100, "only {runs} cut points");
    assert_no_violations(runs, &violations);
}

#[test]
fn a_state_store_whose_fsync_lies_loses_flushes_and_the_check_sees_it() {
    let lying = Faults {
        lying_fsync: true,
        ..Faults::default()
    };
    let lost_flush = |violation: &str| violation.contains("flushes acknowledged through");
    let (runs, violations) = store_violations(&lying, 0..2, lost_flush);
    assert!(
        violations.iter().any(|v| lost_flush(v)),
        "no cut point of {runs} found a lost flush without fsync: {violations:?}"
    );
}
