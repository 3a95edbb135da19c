//! Scenarios run by more than one test, against clusters of either state-store engine.

use std::collections::BTreeMap;

use crate::{assert_all_readable, pairs, put_all, TestCluster};

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
