//! A node that was down while the leader trimmed its log catches up from a snapshot.

use std::time::{Duration, Instant};

use integration::{assert_all_readable, pairs, put_all, TestCluster, Timers};

/// A small state (a few keys overwritten again and again: many log entries,
/// a snapshot of a few hundred bytes).
#[tokio::test]
async fn node_down_across_trims_catches_up_by_snapshot() {
    down_across_trims("snapshot", 5).await;
}

/// Thousands of distinct keys: a snapshot of tens of KiB.
#[tokio::test]
async fn node_down_across_trims_catches_up_by_a_large_snapshot() {
    down_across_trims("large-snapshot", 0).await;
}

/// Writes batches of 20 keys (all distinct if `hot_keys` is 0, else the same
/// `hot_keys` keys over and over) while a follower is down and the leader trims.
async fn down_across_trims(name: &str, hot_keys: usize) {
    let timers = Timers {
        trim_interval_ms: 300,
        commit_interval_ms: 100,
        ..Timers::default()
    };
    let mut cluster = TestCluster::start(name, 3, timers);
    let bound = timers.election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    let mut written = put_all(&client, pairs("early", 0..20)).await;

    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    // The higher id lags: the other follower is wiped later, and nodes with
    // higher ids time out first (see "Prove the data" below).
    let (other, lagging) = (followers[0], followers[1]);
    let before = cluster.wait_caught_up(lagging, bound).await;
    cluster.kill(lagging);
    let lagging_last = before.log_last_index;

    // Write for more than three trim intervals, until the leader has dropped
    // (well past) the entries the dead node would need next.
    let start = Instant::now();
    let min_duration = Duration::from_millis(3 * timers.trim_interval_ms + 100);
    let mut batch = 0;
    loop {
        let batch_pairs = if hot_keys == 0 {
            pairs(&format!("batch{batch}"), 0..20)
        } else {
            hot_pairs(batch, hot_keys)
        };
        written.extend(put_all(&client, batch_pairs).await);
        batch += 1;
        let view = cluster.view().await;
        let trimmed_past = view
            .leader()
            .is_some_and(|s| s.node_id == leader && s.log_first_index > lagging_last + 10);
        if trimmed_past && start.elapsed() >= min_duration {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the leader did not trim past index {lagging_last} within 30 s of writing\n{view}"
        );
    }
    let leader_status = cluster.status(leader).await.expect("leader status");
    assert!(leader_status.log_first_index > lagging_last + 1, "{leader_status:?}");

    cluster.restart(lagging);
    let caught_up = cluster.wait_caught_up(lagging, Duration::from_secs(20)).await;
    assert!(
        caught_up.applied_index >= leader_status.commit_index,
        "node {lagging}: {caught_up:?}"
    );
    let installs = cluster.log_events(lagging, "installing snapshot from the leader");
    assert!(
        !installs.is_empty(),
        "node {lagging} caught up without installing a snapshot; its trace:\n{}",
        cluster.log_tail(lagging, 30)
    );
    assert!(
        installs
            .iter()
            .any(|f| f["index"].as_u64().is_some_and(|i| i > lagging_last)),
        "no snapshot beyond index {lagging_last}: {installs:?}"
    );

    // Prove the data is on the caught-up node: with the leader down and the
    // other follower's data gone, the caught-up node is the only copy and must
    // lead (an empty log cannot win an election against it), serve every key,
    // and rebuild the wiped node. (The wiped node has the lower id, so the
    // caught-up node usually times out first: with the roles swapped the
    // election can take many rounds, as the wiped node keeps starting
    // elections it cannot win.)
    cluster.kill(leader);
    cluster.kill(other);
    std::fs::remove_dir_all(cluster.data_dir(other)).expect("wipe the other follower's data");
    cluster.restart(other);
    let (new_leader, _) = cluster.wait_for_leader(bound).await;
    assert_eq!(new_leader, lagging, "a node without data became leader");
    assert_all_readable(&client, &written).await;
    cluster.wait_caught_up(other, Duration::from_secs(20)).await;

    // Back to three nodes, still serving.
    cluster.restart(leader);
    cluster.wait_caught_up(leader, Duration::from_secs(20)).await;
    written.extend(put_all(&client, pairs("late", 0..10)).await);
    assert_all_readable(&client, &written).await;
}

/// The same `count` keys, with values naming the batch.
fn hot_pairs(batch: usize, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("hot-{i}"), format!("written by batch {batch}")))
        .collect()
}
