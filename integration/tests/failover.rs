//! Crashes of the leader and of the whole cluster lose no acknowledged write.

use std::time::{Duration, Instant};

use integration::{assert_all_readable, pairs, put_all, scenarios, TestCluster, Timers};

#[tokio::test]
async fn leader_kill_elects_new_leader_and_keeps_acknowledged_writes() {
    let mut cluster = TestCluster::start("leader-kill", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    let (old_leader, old_term) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();

    let mut written = put_all(&client, pairs("before", 0..50)).await;

    cluster.kill(old_leader);
    let killed_at = Instant::now();
    let (new_leader, new_term) = cluster.wait_for_new_leader(old_leader, old_term, bound).await;
    let took = killed_at.elapsed();
    assert_ne!(new_leader, old_leader);
    assert!(new_term > old_term, "term did not grow: {old_term} -> {new_term}");
    assert!(took <= bound, "the election took {took:?}, more than {bound:?}");

    assert_all_readable(&client, &written).await;
    written.extend(put_all(&client, pairs("after", 0..50)).await);
    assert_all_readable(&client, &written).await;

    cluster.restart(old_leader);
    let caught_up = cluster.wait_caught_up(old_leader, Duration::from_secs(20)).await;
    assert_eq!(
        caught_up.leader_id,
        Some(new_leader),
        "the restarted node follows someone else"
    );
    assert!(
        caught_up.log_last_index >= caught_up.applied_index,
        "restarted node: {caught_up:?}"
    );
    // Still one cluster: the restarted node's return did not disturb the writes.
    assert_all_readable(&client, &written).await;
}

#[tokio::test]
async fn full_restart_keeps_every_acknowledged_write() {
    let mut cluster = TestCluster::start("full-restart", 3, Timers::default());
    scenarios::full_restart_keeps_every_acknowledged_write(&mut cluster).await;
}

#[tokio::test]
async fn restarted_node_catches_up_after_many_writes() {
    // No trimming during the test: the node must catch up from the leader's log, not from a snapshot.
    let timers = Timers {
        trim_interval_ms: 600_000,
        ..Timers::default()
    };
    let mut cluster = TestCluster::start("catch-up", 3, timers);
    let bound = timers.election_bound();
    let (leader, term) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    let follower = cluster.ids().into_iter().find(|&id| id != leader).unwrap();
    cluster.kill(follower);
    let written = put_all(&client, pairs("missed", 0..200)).await;

    // A new term while the node is down, so whoever leads knows nothing of it
    // and must find (from its rejection) that it misses all 200 entries.
    cluster.kill(leader);
    cluster.restart(leader);
    let (new_leader, _) = cluster
        .wait_until(bound, "a leader in a later term", |view| {
            view.leader().filter(|s| s.term > term).map(|s| (s.node_id, s.term))
        })
        .await;
    cluster.restart(follower);
    let status = cluster.wait_caught_up(follower, Duration::from_secs(20)).await;
    assert_eq!(status.log_first_index, 1, "the node was sent a snapshot: {status:?}");
    assert!(
        cluster
            .log_events(follower, "installing snapshot from the leader")
            .is_empty(),
        "the node installed a snapshot"
    );
    // The caught-up node and the leader alone must serve everything.
    let other = cluster
        .ids()
        .into_iter()
        .find(|&id| id != new_leader && id != follower)
        .unwrap();
    cluster.kill(other);
    assert_all_readable(&client, &written).await;
}
