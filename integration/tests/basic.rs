//! Reads and writes through every node: followers redirect, the client follows.

use integration::client::{Client, Error};
use integration::{client_config, TestCluster, Timers};

#[tokio::test]
async fn put_get_delete_through_every_node() {
    let mut cluster = TestCluster::start("basic", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;

    let mut clients = Vec::new();
    for id in cluster.ids() {
        // The node's endpoint alone: a follower answers NotLeader with the
        // leader's address, and the client must follow it.
        let client = Client::connect(client_config(vec![cluster.endpoint(id)]))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to node {id}: {e}"));
        let key = format!("key-via-{id}");
        let role = if id == leader { "leader" } else { "follower" };
        let ctx = format!("through node {id} ({role})");

        assert_eq!(client.get(&key).await.expect("get"), None, "{ctx}: fresh key");
        assert_eq!(client.put(&key, "one").await.expect("put"), None, "{ctx}: first put");
        assert_eq!(client.get(&key).await.expect("get").as_deref(), Some("one"), "{ctx}");
        assert_eq!(
            client.put(&key, "two").await.expect("put").as_deref(),
            Some("one"),
            "{ctx}: overwrite returns the old value"
        );
        assert_eq!(client.get(&key).await.expect("get").as_deref(), Some("two"), "{ctx}");
        assert_eq!(
            client.delete(&key).await.expect("delete").as_deref(),
            Some("two"),
            "{ctx}: delete returns the removed value"
        );
        assert_eq!(client.get(&key).await.expect("get"), None, "{ctx}: deleted");
        assert_eq!(
            client.delete(&key).await.expect("delete"),
            None,
            "{ctx}: delete of a missing key"
        );
        assert_eq!(
            client.put(&key, "kept").await.expect("put"),
            None,
            "{ctx}: put after delete"
        );
        // The empty key is refused, not stored.
        assert!(
            matches!(
                client.put("", "x").await,
                Err(Error::Server(integration::protocol::ClientError::EmptyKey))
            ),
            "{ctx}: empty key accepted"
        );
        clients.push(client);
    }

    // Every client sees what the others wrote.
    for (k, client) in clients.iter().enumerate() {
        for id in cluster.ids() {
            assert_eq!(
                client.get(&format!("key-via-{id}")).await.expect("get").as_deref(),
                Some("kept"),
                "client {k} reading node {id}'s key"
            );
        }
    }

    // And every node has applied the writes (reads go through the leader, so look at the status).
    let last = cluster.status(leader).await.expect("leader status").commit_index;
    for id in cluster.ids() {
        let status = cluster.wait_caught_up(id, bound).await;
        assert!(status.applied_index >= last, "node {id} did not apply up to {last}");
    }
}

#[tokio::test]
async fn keys_and_values_at_the_size_limits_replicate_to_every_node() {
    let mut cluster = TestCluster::start("limits", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    cluster.wait_for_leader(bound).await;
    let client = cluster.client();

    // The largest accepted key and value (128 and 2048 bytes), written
    // concurrently so the leader batches several into one replication message.
    let pairs: Vec<(String, String)> = (0..24)
        .map(|i| {
            let key = format!("{i:03}{}", "k".repeat(125));
            let value = format!("{i:03}{}", char::from(b'a' + (i % 26) as u8).to_string().repeat(2045));
            (key, value)
        })
        .collect();
    assert!(pairs.iter().all(|(k, v)| k.len() == 128 && v.len() == 2048));
    let written = integration::put_all(&client, pairs).await;
    integration::assert_all_readable(&client, &written).await;
    for id in cluster.ids() {
        cluster.wait_caught_up(id, bound).await;
    }
}
