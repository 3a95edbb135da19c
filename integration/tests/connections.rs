//! Hundreds of idle, half-open and half-sent connections: the node keeps
//! serving others and gives every resource back when they go.

use std::time::Duration;

use integration::{client_config, TestCluster, Timers};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// A frame header announcing `len` bytes, followed by `sent` of them.
fn partial_frame(len: u32, sent: usize) -> Vec<u8> {
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(0xA5u8, sent));
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_idle_and_half_open_connections_do_not_stop_the_node() {
    let mut cluster = TestCluster::start("connections", 3, Timers::default());
    cluster.wait_for_leader(cluster.timers().election_bound()).await;
    let client = client::Client::connect(client_config(cluster.endpoints()))
        .await
        .expect("a client");
    client.put("before", "1").await.expect("a put before the flood");
    let pid = cluster.pid(1).expect("node 1 runs");
    let baseline = open_descriptors(pid);
    assert!(baseline > 0, "/proc/{pid}/fd is readable");

    let mut held = Vec::new();
    for i in 0..300 {
        let port = if i % 5 == 0 {
            cluster.peer_endpoint(1)
        } else {
            cluster.endpoint(1)
        };
        let Ok(mut stream) = TcpStream::connect(&port).await else {
            continue;
        };
        match i % 3 {
            0 => {}                                                          // idle: never says hello
            1 => drop(stream.write_all(&partial_frame(40, 3)).await),        // hello cut short
            _ => drop(stream.write_all(&partial_frame(60_000, 1000)).await), // a big frame, half sent
        }
        held.push(stream);
    }
    // Some leave mid-frame at once.
    for stream in held.drain(..100) {
        drop(stream);
    }
    assert!(
        open_descriptors(pid) > baseline + 100,
        "the connections reached the node"
    );

    // The node still serves everyone else, on every path.
    for k in 0..20 {
        let key = format!("during-{k}");
        client.put(&key, "v").await.expect("a put during the flood");
        assert_eq!(
            client.get(&key).await.expect("a get during the flood").as_deref(),
            Some("v")
        );
    }
    let status = client
        .status(&cluster.endpoint(1))
        .await
        .expect("status of the flooded node");
    assert_eq!(status.node_id, 1);

    // Everyone leaves: the node gives the descriptors back.
    drop(held);
    cluster
        .wait_until(Duration::from_secs(15), "the node to release the connections", |_| {
            (open_descriptors(pid) <= baseline + 8).then_some(())
        })
        .await;
    assert_eq!(client.get("before").await.expect("a get after").as_deref(), Some("1"));
    assert!(cluster.is_running(1), "node 1 survived");
}
