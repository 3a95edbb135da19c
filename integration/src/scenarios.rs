//! Scenarios run by more than one test, against clusters of either state-store engine.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::{assert_all_readable, pairs, put_all, TestCluster, Timers};

/// Writes, overwrites and deletes; kills the leader and a follower, stops the
/// last node with SIGTERM, restarts all and checks every acknowledged write
/// and delete; then a second round with every node stopped by SIGTERM.
/// Returns what the cluster must hold.
pub async fn full_restart_keeps_every_acknowledged_write(cluster: &mut TestCluster) -> BTreeMap<String, String> {
    let bound = cluster.timers().election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();

    let mut written = put_all(&client, pairs("first", 0..60)).await;
    // Overwrites and deletes must survive too, not only fresh keys.
    for i in 0..10 {
        let key = format!("first-{i:05}");
        assert!(client.put(&key, "overwritten").await.expect("overwrite").is_some());
        written.insert(key, "overwritten".into());
    }
    for i in 10..15 {
        let key = format!("first-{i:05}");
        assert!(client.delete(&key).await.expect("delete").is_some());
        written.remove(&key);
    }
    let deleted: Vec<String> = (10..15).map(|i| format!("first-{i:05}")).collect();

    // The leader and one follower die hard (what was not flushed to the state
    // store comes back from the logs); the last node is asked to stop.
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    cluster.kill(leader);
    cluster.kill(followers[0]);
    let status = cluster.stop(followers[1]);
    assert!(
        status.success(),
        "node {} exited with {status} on SIGTERM",
        followers[1]
    );

    for id in cluster.ids() {
        cluster.restart(id);
    }
    cluster.wait_for_leader(bound).await;
    assert_all_readable(&client, &written).await;
    for key in &deleted {
        assert_eq!(client.get(key).await.expect("get"), None, "deleted key {key} is back");
    }

    // A second round, the other way about: every node stopped with SIGTERM.
    written.extend(put_all(&client, pairs("second", 0..30)).await);
    for id in cluster.ids() {
        let status = cluster.stop(id);
        assert!(status.success(), "node {id} exited with {status} on SIGTERM");
    }
    for id in cluster.ids() {
        cluster.restart(id);
    }
    cluster.wait_for_leader(bound).await;
    assert_all_readable(&client, &written).await;
    written
}

/// The timers for [`node_down_across_trims_catches_up_by_snapshot`]: the
/// leader trims every 300 ms, so a node down for a second misses trimmed entries.
pub fn frequent_trim_timers() -> Timers {
    Timers {
        trim_interval_ms: 300,
        commit_interval_ms: 100,
        ..Timers::default()
    }
}

/// What each batch writes while a follower is down in
/// [`node_down_across_trims_catches_up_by_snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrimWorkload {
    /// 20 new keys a batch: a snapshot of tens of KiB.
    DistinctKeys,
    /// The same `n` keys overwritten by every batch: many log entries, a
    /// snapshot of a few hundred bytes.
    HotKeys(usize),
    /// 20 new keys and the delete of one of the early keys a batch, so the
    /// snapshot must drop keys the lagging node still holds.
    DistinctKeysAndDeletes,
}

/// What a state-store engine adds to [`node_down_across_trims_catches_up_by_snapshot`]:
/// its patience, checks of what the lagging node stores, and the wiping of
/// what a node keeps outside its data folder.
pub trait TrimScenarioEngine {
    /// How long the writer may take to get the leader to trim past the down node.
    const TRIM_DEADLINE: Duration = Duration::from_secs(30);
    /// How long a restarted or wiped node may take to catch up.
    const CATCH_UP_BOUND: Duration = Duration::from_secs(20);

    /// Checks what node `lagging` stores at `stage`, where it must hold `written`.
    fn check_lagging_store(
        &self,
        _cluster: &mut TestCluster,
        _lagging: u64,
        _written: &BTreeMap<String, String>,
        _stage: LaggingStage,
    ) -> impl Future<Output = ()> {
        async {}
    }

    /// Wipes what node `id` (down, its data folder removed) stores elsewhere.
    fn wipe_beyond_data_folder(&self, _cluster: &TestCluster, _id: u64) -> impl Future<Output = ()> {
        async {}
    }
}

/// When [`TrimScenarioEngine::check_lagging_store`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaggingStage {
    /// Caught up with the early writes, about to go down.
    BeforeGoingDown,
    /// Restarted, and caught up by installing a snapshot.
    CaughtUpBySnapshot,
}

/// The embedded engine: its store lives in the data folder, and the scenario's
/// own checks (every key readable) are all it needs.
pub struct EmbeddedEngine;

impl TrimScenarioEngine for EmbeddedEngine {}

/// On a three-node cluster started with [`frequent_trim_timers`]: a follower
/// is down while `workload` is written and the leader trims past it; it must
/// catch up by installing a snapshot. Then it proves it holds the data by
/// being the only copy: it leads, serves every key and rebuilds a wiped node.
/// Returns what the cluster must hold.
pub async fn node_down_across_trims_catches_up_by_snapshot<E: TrimScenarioEngine>(
    cluster: &mut TestCluster,
    workload: TrimWorkload,
    engine: &E,
) -> BTreeMap<String, String> {
    let timers = cluster.timers();
    let bound = timers.election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    let mut written = put_all(&client, pairs("early", 0..20)).await;

    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    // The higher id lags: the other follower is wiped later, and nodes with
    // higher ids time out first (see "Prove the data" below).
    let (other, lagging) = (followers[0], followers[1]);
    let before = cluster.wait_caught_up(lagging, bound).await;
    engine
        .check_lagging_store(cluster, lagging, &written, LaggingStage::BeforeGoingDown)
        .await;
    cluster.kill(lagging);
    let lagging_last = before.log_last_index;

    // Write for more than three trim intervals, until the leader has dropped
    // (well past) the entries the dead node would need next.
    let start = Instant::now();
    let min_duration = Duration::from_millis(3 * timers.trim_interval_ms + 100);
    let mut batch = 0;
    loop {
        match workload {
            TrimWorkload::DistinctKeys => {
                written.extend(put_all(&client, pairs(&format!("batch{batch}"), 0..20)).await)
            }
            TrimWorkload::HotKeys(count) => written.extend(put_all(&client, hot_pairs(batch, count)).await),
            TrimWorkload::DistinctKeysAndDeletes => {
                written.extend(put_all(&client, pairs(&format!("batch{batch}"), 0..20)).await);
                let key = format!("early-{:05}", batch % 20);
                if written.remove(&key).is_some() {
                    client.delete(&key).await.expect("delete");
                }
            }
        }
        batch += 1;
        let view = cluster.view().await;
        let trimmed_past = view
            .leader()
            .is_some_and(|s| s.node_id == leader && s.log_first_index > lagging_last + 10);
        if trimmed_past && start.elapsed() >= min_duration {
            break;
        }
        assert!(
            start.elapsed() < E::TRIM_DEADLINE,
            "the leader did not trim past index {lagging_last} within {:?} of writing\n{view}",
            E::TRIM_DEADLINE
        );
    }
    let leader_status = cluster.status(leader).await.expect("leader status");
    assert!(leader_status.log_first_index > lagging_last + 1, "{leader_status:?}");

    cluster.restart(lagging);
    let caught_up = cluster.wait_caught_up(lagging, E::CATCH_UP_BOUND).await;
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
        "node {lagging} did not install a snapshot beyond index {lagging_last}: {installs:?}"
    );
    engine
        .check_lagging_store(cluster, lagging, &written, LaggingStage::CaughtUpBySnapshot)
        .await;

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
    engine.wipe_beyond_data_folder(cluster, other).await;
    cluster.restart(other);
    let (new_leader, _) = cluster.wait_for_leader(bound).await;
    assert_eq!(new_leader, lagging, "a node without data became leader");
    assert_all_readable(&client, &written).await;
    cluster.wait_caught_up(other, E::CATCH_UP_BOUND).await;

    // Back to three nodes, still serving.
    cluster.restart(leader);
    cluster.wait_caught_up(leader, E::CATCH_UP_BOUND).await;
    written.extend(put_all(&client, pairs("late", 0..10)).await);
    assert_all_readable(&client, &written).await;
    written
}

/// The same `count` keys, with values naming the batch.
fn hot_pairs(batch: usize, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("hot-{i}"), format!("written by batch {batch}")))
        .collect()
}
