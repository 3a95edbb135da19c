//! A node whose write-ahead log was torn or corrupted truncates it, starts,
//! and catches up; no acknowledged write is lost. A torn tail of a write that
//! was never synced is cut and the node goes on as usual; a loss of records an
//! fsync had covered makes the node recover before it votes again.
//!
//! The WAL is a sequence of `[u32 LE length][u32 LE CRC-32][payload]` records.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use actors::storage::WalRecord;
use integration::protocol::{Command, Entry};
use integration::{assert_all_readable, open_rw, pairs, put_all, wal_records as records, TestCluster, Timers};

const TRUNCATED: &str = "torn or corrupt write-ahead log tail truncated";
const RECOVERED: &str = "recovered from lost durable state: caught up by a leader; voting again";
const BENIGN: &str = "the cut took only a write that was never synced: nothing acknowledged was lost";
const NOT_VOTING: &str = "the cut took records an fsync had made durable";

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The last 7 bytes are cut off.
    CutTail,
    /// 100 bytes of garbage follow the last record.
    GarbageAppended,
    /// One byte of the last 20 is flipped.
    ByteFlipped,
    /// 7 bytes at the end of the record are zeros (a write the disk lost).
    Zeroed,
}

/// The file's records, decoded.
fn decoded(bytes: &[u8]) -> Vec<(Range<usize>, WalRecord)> {
    records(bytes)
        .into_iter()
        .map(|range| {
            let record = rmp_serde::from_slice(&bytes[range.start + 8..range.end]).expect("a WAL record decodes");
            (range, record)
        })
        .collect()
}

/// The last entry record of the WAL at `path`, once a `Synced` record after
/// it says an fsync covered it (an idle log writes one within 100 ms).
async fn last_entry_recorded_synced(path: &Path) -> Range<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bytes = std::fs::read(path).expect("read wal");
        let all = decoded(&bytes);
        let last_entry = all.iter().rposition(|(_, r)| matches!(r, WalRecord::Entry(_)));
        if let Some(at) = last_entry {
            let end = all[at].0.end as u64;
            let claimed = all[at..]
                .iter()
                .any(|(_, r)| matches!(r, WalRecord::Synced { through } if *through >= end));
            if claimed {
                return all[at].0.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never recorded its last sync",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_at(path: &Path, at: u64, bytes: &[u8]) {
    let mut file = open_rw(path);
    file.seek(SeekFrom::Start(at)).expect("seek");
    file.write_all(bytes).expect("write");
    file.sync_all().expect("sync");
}

/// Damages the WAL the way a crash in the middle of writing one more record
/// would: the record being written was never synced, so never acknowledged.
/// The record is a copy of the last one (a plausible size and shape); then the
/// file's last 7 bytes are cut, garbage is appended, or a byte of the last 20
/// flipped.
/// Returns where the damage starts: every record before it is intact.
fn damage_unacknowledged_tail(path: &Path, how: Damage) -> usize {
    let mut bytes = std::fs::read(path).expect("read wal");
    let all = records(&bytes);
    let end = all.last().map_or(0, |r| r.end);
    assert!(
        end > 0 && bytes[end..].iter().all(|&b| b == 0),
        "{} does not hold whole records followed by zeros",
        path.display()
    );
    // The unacknowledged record is written where the next one would go, over the zeros.
    bytes.truncate(end);
    // A copy of the last entry-sized record (not a small `Synced` one).
    let template = all
        .iter()
        .rev()
        .find(|r| r.len() > 20)
        .expect("a record of more than 20 bytes");
    let last = bytes[template.clone()].to_vec();
    let original = bytes.len();
    match how {
        Damage::CutTail => {
            bytes.extend_from_slice(&last);
            bytes.truncate(bytes.len() - 7);
        }
        Damage::GarbageAppended => {
            bytes.extend((0..100u32).map(|i| (i.wrapping_mul(151) ^ 0xA5) as u8));
        }
        Damage::ByteFlipped => {
            bytes.extend_from_slice(&last);
            let at = bytes.len() - 13;
            bytes[at] ^= 0x5A;
        }
        Damage::Zeroed => unreachable!("zeros after the records are preallocation, not damage"),
    }
    write_at(path, original as u64, &bytes[original..]);
    end
}

/// Damages the acknowledged entry `record` (the disk lost or corrupted data
/// it had reported synced); the records after it stay. Returns where the
/// damage starts.
fn damage_acknowledged_entry(path: &Path, record: Range<usize>, how: Damage) -> usize {
    let bytes = std::fs::read(path).expect("read wal");
    assert!(record.len() > 20, "the entry is only {} bytes", record.len());
    match how {
        Damage::Zeroed => write_at(path, (record.end - 7) as u64, &[0; 7]),
        Damage::ByteFlipped => write_at(path, (record.end - 13) as u64, &[bytes[record.end - 13] ^ 0x5A]),
        Damage::CutTail | Damage::GarbageAppended => unreachable!("not a damage of a record in place"),
    }
    record.start
}

/// Where a test's damage goes: a torn tail of a write never synced, or the
/// last entry, after its sync was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    UnsyncedTail,
    SyncedEntry,
}

/// Damages node `id`'s WAL (the node is down), returning where the damage starts.
fn damage(cluster: &TestCluster, id: u64, target: Target, how: Damage, synced_entry: Range<usize>) -> usize {
    let wal = cluster.wal_path(id);
    match target {
        Target::UnsyncedTail => damage_unacknowledged_tail(&wal, how),
        Target::SyncedEntry => damage_acknowledged_entry(&wal, synced_entry, how),
    }
}

/// For each damage in turn, on alternating followers: write, kill the
/// follower, damage its WAL, restart it; it must start, report the
/// truncation, and catch up, and the cluster must serve every acknowledged key.
/// A synced loss makes it recover before voting; a torn unsynced tail does not.
async fn crash_damage_restart(name: &str, damages: &[Damage], target: Target) {
    // No trimming: a trim rewrites the WAL, and the test compares the records
    // before the damage with what the node kept (on a loaded machine a round
    // can outlast the default 1 s trim interval).
    let timers = Timers {
        trim_interval_ms: 600_000,
        ..Timers::default()
    };
    let mut cluster = TestCluster::start(name, 3, timers);
    let bound = cluster.timers().election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    let mut written = BTreeMap::new();

    for (round, &how) in damages.iter().enumerate() {
        let victim = followers[round % 2];
        written.extend(put_all(&client, pairs(&format!("round{round}"), 0..30)).await);
        // Every write is on the victim's disk before it dies.
        cluster.wait_caught_up(victim, bound).await;
        let wal = cluster.wal_path(victim);
        let synced_entry = last_entry_recorded_synced(&wal).await;
        let truncations_before = cluster.log_events(victim, TRUNCATED).len();
        let recoveries_before = cluster.log_events(victim, RECOVERED).len();
        let resets_before = cluster
            .log_events(victim, "log does not reach the store's applied point: reset it there")
            .len();
        cluster.kill(victim);
        let before = std::fs::read(&wal).expect("read wal");
        let intact = damage(&cluster, victim, target, how, synced_entry);

        cluster.restart(victim);
        let what = format!("node {victim} to answer status after {how:?}");
        let started = cluster
            .wait_until(bound, &what, |view| view.status(victim).cloned())
            .await;
        assert_eq!(started.node_id, victim);
        let events = cluster.log_events(victim, TRUNCATED);
        assert_eq!(
            events.len(),
            truncations_before + 1,
            "{how:?}: node {victim} did not report a truncated tail; its trace:\n{}",
            cluster.log_tail(victim, 20)
        );
        let cut = events.last().and_then(|f| f["bytes"].as_u64()).unwrap_or(0);
        assert!(cut > 0, "{how:?}: truncated {cut} bytes: {events:?}");
        let synced_lost = events.last().and_then(|f| f["synced_lost"].as_bool());
        assert_eq!(synced_lost, Some(target == Target::SyncedEntry), "{how:?}: {events:?}");
        // Every record before the damaged one is kept as it was, and the file
        // is whole records again: the damage is gone, and what the node wrote
        // since (its recovery mark, if any, then catch-up) follows.
        let after = std::fs::read(&wal).expect("read wal");
        let resets = cluster.log_events(victim, "log does not reach the store's applied point: reset it there");
        if resets.len() > resets_before {
            // The store had applied the lost entries: the log restarts at the
            // store's point, in a rewritten file.
            let records = decoded(&after);
            assert!(
                matches!(records.get(1), Some((_, WalRecord::LogStart { .. }))),
                "{how:?}: {records:?}"
            );
        } else {
            assert_eq!(
                after.get(..intact),
                Some(&before[..intact]),
                "{how:?}: records before the damage changed"
            );
        }
        let end = records(&after).last().map_or(0, |last| last.end);
        assert!(
            after[end..].iter().all(|&b| b == 0),
            "{how:?}: the WAL does not hold whole records followed by zeros after recovery"
        );

        assert_all_readable(&client, &written).await;
        // More writes while the victim catches up; then it must have everything.
        written.extend(put_all(&client, pairs(&format!("after{round}"), 0..10)).await);
        cluster.wait_caught_up(victim, Duration::from_secs(20)).await;
        assert!(cluster.is_running(victim), "node {victim} exited after {how:?}");
        if target == Target::UnsyncedTail {
            // Nothing acknowledged was in the cut: no recovery, no vote withheld.
            let trace = cluster.log_text(victim);
            assert!(trace.contains(BENIGN), "{how:?}: {}", cluster.log_tail(victim, 20));
            assert!(!trace.contains(NOT_VOTING), "{how:?}: {}", cluster.log_tail(victim, 20));
            assert_eq!(cluster.log_events(victim, RECOVERED).len(), recoveries_before);
            continue;
        }
        // The cut held acknowledged entries: the victim votes again only once
        // a leader has caught it up (RaftCore, invariant 9).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while cluster.log_events(victim, RECOVERED).len() <= recoveries_before {
            assert!(
                std::time::Instant::now() < deadline,
                "{how:?}: node {victim} never reported the end of its recovery; its trace:\n{}",
                cluster.log_tail(victim, 20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The damaged followers now hold everything: with the leader down they
    // alone form the majority and must still serve every key.
    cluster.kill(leader);
    cluster.wait_for_leader(bound).await;
    assert_all_readable(&client, &written).await;
    for id in followers {
        assert!(cluster.is_running(id), "node {id} exited");
    }
}

#[tokio::test]
async fn torn_wal_tail_is_truncated_and_no_acknowledged_write_is_lost() {
    crash_damage_restart(
        "torn-wal",
        &[Damage::CutTail, Damage::GarbageAppended, Damage::ByteFlipped],
        Target::UnsyncedTail,
    )
    .await;
}

#[tokio::test]
async fn corrupt_acknowledged_wal_entry_is_refetched_from_the_leader() {
    crash_damage_restart(
        "corrupt-acked-wal",
        &[Damage::Zeroed, Damage::ByteFlipped],
        Target::SyncedEntry,
    )
    .await;
}

/// A cluster of one that lost synced records: nobody can answer its term
/// probes, so it must resume at once (it used to stay in recovery forever,
/// serving nothing) and keep every write that survived.
#[tokio::test]
async fn a_single_node_that_lost_synced_records_resumes_and_serves() {
    let mut cluster = TestCluster::start("torn-wal-single", 1, Timers::default());
    let bound = cluster.timers().election_bound();
    cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    let written = put_all(&client, pairs("single", 0..20)).await;
    let synced_entry = last_entry_recorded_synced(&cluster.wal_path(1)).await;
    let bytes = std::fs::read(cluster.wal_path(1)).expect("read wal");
    let damaged_key = match rmp_serde::from_slice(&bytes[synced_entry.start + 8..synced_entry.end]) {
        Ok(WalRecord::Entry(Entry {
            command: Command::Put { key, .. },
            ..
        })) => key,
        other => panic!("the last entry is not a put: {other:?}"),
    };
    cluster.kill(1);
    damage(&cluster, 1, Target::SyncedEntry, Damage::Zeroed, synced_entry);
    cluster.restart(1);
    cluster.wait_for_leader(bound * 2).await;
    assert_eq!(cluster.log_events(1, TRUNCATED).len(), 1, "{}", cluster.log_tail(1, 20));
    assert!(cluster.log_text(1).contains(NOT_VOTING), "{}", cluster.log_tail(1, 20));
    // The last entry is gone (a loss nobody can repair in a cluster of one); the rest is kept.
    let kept: BTreeMap<String, String> = written.into_iter().filter(|(k, _)| *k != damaged_key).collect();
    assert_all_readable(&client, &kept).await;
    assert_eq!(client.put("after", "cut").await.expect("a write after the cut"), None);
}

/// One node loses synced records while another only crashes mid-write (a
/// torn tail of a write never synced), and the third, the only other holder
/// of the last writes, is down. The two must not elect a leader without the
/// third: the torn tail is no loss, so the second node is intact, and the
/// node that lost records waits for every member before it gives up the
/// guarantee. (Both used to count as recovering, and the first recovering
/// answer made each give up at once: they elected a leader without the
/// lost writes, which the third node's return could not bring back.)
#[tokio::test]
async fn a_synced_loss_and_a_torn_tail_together_do_not_lose_an_acknowledged_write() {
    let timers = Timers {
        trim_interval_ms: 600_000,
        ..Timers::default()
    };
    let mut cluster = TestCluster::start("loss-and-torn-tail", 3, timers);
    let bound = cluster.timers().election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    let mut written = put_all(&client, pairs("all-three", 0..20)).await;
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    let (lost, torn) = (followers[0], followers[1]);
    cluster.wait_caught_up(torn, bound).await;
    cluster.kill(torn);
    // Acknowledged by the leader and `lost` only.
    let last_writes = put_all(&client, pairs("two-only", 0..10)).await;
    written.extend(last_writes.clone());
    cluster.wait_caught_up(lost, bound).await;
    let lost_wal = cluster.wal_path(lost);
    let first_of_last = {
        let synced = last_entry_recorded_synced(&lost_wal).await;
        let bytes = std::fs::read(&lost_wal).expect("read wal");
        let entries: Vec<Range<usize>> = decoded(&bytes)
            .into_iter()
            .filter(|(_, r)| matches!(r, WalRecord::Entry(_)))
            .map(|(range, _)| range)
            .filter(|range| range.end <= synced.end)
            .collect();
        // The entry of the first of the last ten writes (each write is one entry).
        entries[entries.len() - last_writes.len()].clone()
    };
    cluster.kill(lost);
    cluster.kill(leader);
    damage(&cluster, lost, Target::SyncedEntry, Damage::Zeroed, first_of_last);
    damage(&cluster, torn, Target::UnsyncedTail, Damage::CutTail, 0..0);

    cluster.restart(lost);
    cluster.restart(torn);
    // Neither may lead: `torn` lacks the last writes, `lost` lost them.
    let deadline = Instant::now() + cluster.timers().election_timeout() * 8;
    while Instant::now() < deadline {
        let view = cluster.view().await;
        assert!(view.leader().is_none(), "a leader without the last writes\n{view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cluster.log_text(torn).contains(BENIGN),
        "{}",
        cluster.log_tail(torn, 20)
    );
    assert!(
        cluster.log_text(lost).contains(NOT_VOTING),
        "{}",
        cluster.log_tail(lost, 20)
    );

    cluster.restart(leader);
    cluster.wait_for_leader(bound * 2).await;
    assert_all_readable(&client, &written).await;
}

/// A follower whose `wal.log` is gone while its state store and data folder
/// remain: its term and vote are lost, so it must not start at term 0 as if
/// new (it could vote twice in a term). It recovers as after a cut tail,
/// catches up, and the cluster keeps every acknowledged write.
#[tokio::test]
async fn a_missing_wal_next_to_an_intact_store_recovers_before_voting() {
    let mut cluster = TestCluster::start("missing-wal", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    let mut written = put_all(&client, pairs("before", 0..30)).await;
    let victim = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    cluster.wait_caught_up(victim, bound).await;
    cluster.kill(victim);
    std::fs::remove_file(cluster.wal_path(victim)).expect("remove wal.log");
    cluster.restart(victim);

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cluster.log_events(victim, RECOVERED).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "node {victim} never ended its recovery; its trace:\n{}",
            cluster.log_tail(victim, 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cluster
            .log_text(victim)
            .contains("the write-ahead log is missing or empty"),
        "the loss was not noticed:\n{}",
        cluster.log_tail(victim, 20)
    );
    written.extend(put_all(&client, pairs("after", 0..10)).await);
    cluster.wait_caught_up(victim, Duration::from_secs(20)).await;
    // With the leader gone, the victim is half of the majority that must serve.
    cluster.kill(leader);
    cluster.wait_for_leader(bound).await;
    assert_all_readable(&client, &written).await;
}
