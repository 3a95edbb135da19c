//! A follower whose write-ahead log tail was torn or corrupted truncates it,
//! starts, and catches up; no acknowledged write is lost.
//!
//! The WAL is a sequence of `[u32 LE length][u32 LE CRC-32][payload]` records.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use integration::{assert_all_readable, open_rw, pairs, put_all, wal_records as records, TestCluster, Timers};

const TRUNCATED: &str = "torn or corrupt write-ahead log tail truncated";
const RECOVERED: &str = "recovered from lost durable state: caught up by a leader; voting again";

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The last 7 bytes are cut off.
    CutTail,
    /// 100 bytes of garbage follow the last record.
    GarbageAppended,
    /// One byte of the last 20 is flipped.
    ByteFlipped,
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
fn damage_unacknowledged_tail(path: &Path, how: Damage) {
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
    let last = bytes[all.last().unwrap().clone()].to_vec();
    assert!(last.len() > 20, "the last record is only {} bytes", last.len());
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
    }
    write_at(path, original as u64, &bytes[original..]);
}

/// Damages the last, acknowledged record itself (the disk lost or corrupted
/// data it had reported synced).
fn damage_acknowledged_tail(path: &Path, how: Damage) {
    let file = open_rw(path);
    let bytes = std::fs::read(path).expect("read wal");
    let len = records(&bytes).last().map_or(0, |r| r.end) as u64;
    assert!(len > 100, "{} holds only {len} bytes of records", path.display());
    match how {
        Damage::CutTail => file.set_len(len - 7).expect("truncate"),
        Damage::GarbageAppended => unreachable!("appending garbage keeps every record"),
        Damage::ByteFlipped => {
            let byte = bytes[len as usize - 13] ^ 0x5A;
            write_at(path, len - 13, &[byte]);
        }
    }
    file.sync_all().expect("sync");
}

/// For each damage in turn, on alternating followers: write, kill the
/// follower, damage its WAL, restart it; it must start, report the
/// truncation, and catch up, and the cluster must serve every acknowledged key.
async fn crash_damage_restart(name: &str, damages: &[Damage], damage: fn(&Path, Damage)) {
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
        let truncations_before = cluster.log_events(victim, TRUNCATED).len();
        let recoveries_before = cluster.log_events(victim, RECOVERED).len();
        cluster.kill(victim);
        let wal = cluster.wal_path(victim);
        let before = std::fs::read(&wal).expect("read wal");
        damage(&wal, how);

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
        // Every record before the damaged one is kept as it was, and the file
        // is whole records again: the damage is gone, and what the node wrote
        // since (its recovery mark, then catch-up) follows.
        let after = std::fs::read(&wal).expect("read wal");
        let intact = records(&before).last().map_or(0, |last| last.start);
        assert_eq!(
            after.get(..intact),
            Some(&before[..intact]),
            "{how:?}: records before the damage changed"
        );
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
        // The cut may have held acknowledged entries: the victim votes again
        // only once a leader has caught it up (RaftCore, invariant 9).
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
        damage_unacknowledged_tail,
    )
    .await;
}

#[tokio::test]
async fn corrupt_acknowledged_wal_tail_entry_is_refetched_from_the_leader() {
    crash_damage_restart(
        "corrupt-acked-wal",
        &[Damage::CutTail, Damage::ByteFlipped],
        damage_acknowledged_tail,
    )
    .await;
}

/// A cluster of one whose WAL tail was cut: nobody can answer its term probes,
/// so it must resume at once (it used to stay in recovery forever, serving
/// nothing) and keep every write that survived the cut.
#[tokio::test]
async fn a_single_node_with_a_cut_wal_tail_resumes_and_serves() {
    let mut cluster = TestCluster::start("torn-wal-single", 1, Timers::default());
    let bound = cluster.timers().election_bound();
    cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    let written = put_all(&client, pairs("single", 0..20)).await;
    cluster.kill(1);
    damage_unacknowledged_tail(&cluster.wal_path(1), Damage::CutTail);
    cluster.restart(1);
    cluster.wait_for_leader(bound * 2).await;
    assert_eq!(cluster.log_events(1, TRUNCATED).len(), 1, "{}", cluster.log_tail(1, 20));
    assert_all_readable(&client, &written).await;
    assert_eq!(client.put("after", "cut").await.expect("a write after the cut"), None);
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
