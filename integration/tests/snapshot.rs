//! A node that was down while the leader trimmed its log catches up from a snapshot.

use integration::scenarios::{self, EmbeddedEngine, TrimWorkload};
use integration::TestCluster;

/// A small state (a few keys overwritten again and again: many log entries,
/// a snapshot of a few hundred bytes).
#[tokio::test]
async fn node_down_across_trims_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start("snapshot", 3, scenarios::frequent_trim_timers());
    scenarios::node_down_across_trims_catches_up_by_snapshot(&mut cluster, TrimWorkload::HotKeys(5), &EmbeddedEngine)
        .await;
}

/// Thousands of distinct keys: a snapshot of tens of KiB.
#[tokio::test]
async fn node_down_across_trims_catches_up_by_a_large_snapshot() {
    let mut cluster = TestCluster::start("large-snapshot", 3, scenarios::frequent_trim_timers());
    scenarios::node_down_across_trims_catches_up_by_snapshot(&mut cluster, TrimWorkload::DistinctKeys, &EmbeddedEngine)
        .await;
}
