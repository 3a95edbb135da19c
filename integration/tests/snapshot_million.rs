//! A follower whose data folder is deleted catches up from a snapshot of a
//! million keys of 256 bytes (about 280 MB), streamed in chunks, while the
//! cluster goes on serving with no election.
//!
//! Before snapshots were streamed, the leader sent the whole state in one
//! frame: over the frame limit at this size, so the follower never caught up,
//! kept campaigning, and the cluster stopped serving (92 elections in 90 s).

use std::time::{Duration, Instant};

use futures::StreamExt;
use integration::{TestCluster, Timers};

const KEYS: usize = 1_000_000;
const VALUE_BYTES: usize = 256;
/// Puts in flight while loading (one client, pipelined on its connections).
const LOAD_CONCURRENCY: usize = 512;

fn key(i: usize) -> String {
    format!("million-{i:07}")
}

fn value(i: usize) -> String {
    let mut value = format!("{i:07}-");
    value.extend(std::iter::repeat_n('v', VALUE_BYTES - value.len()));
    value
}

#[tokio::test]
async fn a_wiped_follower_catches_up_from_a_million_keys_with_no_election() {
    // Production-like proportions, scaled down: the election timeout is many
    // heartbeats, and trimming runs often enough to leave the follower behind.
    let timers = Timers {
        heartbeat_interval_ms: 100,
        election_timeout_ms: 1500,
        commit_interval_ms: 500,
        trim_interval_ms: 2000,
    };
    let mut cluster = TestCluster::start("million", 3, timers);
    let bound = timers.election_bound();
    let (leader, term) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();

    let started = Instant::now();
    let failures: Vec<String> = futures::stream::iter(0..KEYS)
        .map(|i| {
            let client = &client;
            async move {
                client
                    .put(&key(i), &value(i))
                    .await
                    .err()
                    .map(|e| format!("{}: {e}", key(i)))
            }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .filter_map(|failure| async move { failure })
        .take(10)
        .collect()
        .await;
    assert!(failures.is_empty(), "puts failed while loading: {failures:?}");
    eprintln!("loaded {KEYS} keys in {:?}", started.elapsed());

    let wiped = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    cluster.wait_caught_up(wiped, Duration::from_secs(60)).await;
    cluster.kill(wiped);
    std::fs::remove_dir_all(cluster.data_dir(wiped)).expect("delete the follower's data folder");
    // The leader has trimmed its log: the wiped node can only get a snapshot.
    let leader_status = cluster
        .wait_until(Duration::from_secs(30), "the leader to trim its log", |view| {
            view.status(leader).filter(|s| s.log_first_index > 1).cloned()
        })
        .await;

    cluster.restart(wiped);
    let restarted = Instant::now();
    // Keep writing while the follower catches up: every put must succeed,
    // each within the client's request timeout.
    let mut written = 0usize;
    let mut slowest = Duration::ZERO;
    let caught_up = loop {
        let put_started = Instant::now();
        client
            .put(&format!("during-{written}"), "x")
            .await
            .unwrap_or_else(|e| panic!("a put failed while the follower caught up: {e}"));
        slowest = slowest.max(put_started.elapsed());
        written += 1;
        let view = cluster.view().await;
        let done = view
            .status(wiped)
            .is_some_and(|s| s.applied_index >= leader_status.commit_index);
        if done {
            break view;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(240),
            "node {wiped} did not catch up within 240 s\n{view}\n{}",
            cluster.log_tail(wiped, 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "node {wiped} caught up in {:?}; {written} puts meanwhile, the slowest {slowest:?}",
        restarted.elapsed()
    );

    // No election: the leader and the term never changed, on any node.
    for node in &caught_up.nodes {
        let status = node.status.as_ref().expect("every node answers");
        assert_eq!(
            (status.term, status.leader_id),
            (term, Some(leader)),
            "node {} moved on from term {term} (leader {leader})\n{caught_up}",
            node.id
        );
    }
    let installs = cluster.log_events(wiped, "installing snapshot from the leader");
    assert_eq!(installs.len(), 1, "{installs:?}");
    let decoded = cluster.log_events(wiped, "snapshot decoded");
    assert!(
        decoded
            .iter()
            .any(|f| f["keys"].as_u64().is_some_and(|k| k >= KEYS as u64)),
        "{decoded:?}"
    );

    // The data is on the wiped node: with the others down it is the only copy
    // but a majority needs two, so bring back one node with its data wiped
    // too. The caught-up node must lead (an empty log cannot win against it)
    // and serve the keys.
    let other = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader && id != wiped)
        .expect("the other follower");
    cluster.kill(leader);
    cluster.kill(other);
    std::fs::remove_dir_all(cluster.data_dir(other)).expect("delete the other follower's data folder");
    cluster.restart(other);
    let (new_leader, _) = cluster.wait_for_leader(Duration::from_secs(60)).await;
    assert_eq!(new_leader, wiped, "a node without data became leader");
    for i in [0, 1, KEYS / 2, KEYS - 2, KEYS - 1] {
        assert_eq!(client.get(&key(i)).await.expect("get"), Some(value(i)), "{}", key(i));
    }
    assert_eq!(client.get("during-0").await.expect("get"), Some("x".to_string()));
}
