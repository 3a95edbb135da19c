//! Hostile and malformed input on the client and peer ports: the node answers
//! with a clear refusal or closes the connection, never buffers what a header
//! announces, and goes on serving.

use std::time::Duration;

use bytes::Bytes;
use integration::client::{Client, Error};
use integration::protocol::{
    ClientError, ClientRequest, ClientResponse, HelloReply, Operation, Party, RejectReason, Reply,
};
use integration::raw::{Next, RawConn};
use integration::{resident_kib, TestCluster, Timers};

const CLOSE_LIMIT: Duration = Duration::from_secs(5);
const ONE_GIB: u32 = 1 << 30;

/// Reads until the node closes; every frame it sent before must be a handshake refusal.
async fn expect_refused_and_closed(conn: &mut RawConn, what: &str) -> Vec<(RejectReason, String)> {
    let frames = conn.frames_until_closed(CLOSE_LIMIT).await;
    assert!(frames.len() <= 1, "{what}: {} frames before the close", frames.len());
    frames
        .iter()
        .map(|frame| match integration::protocol::decode::<HelloReply>(frame) {
            Ok(HelloReply::Rejected { reason, message }) => (reason, message),
            other => panic!("{what}: expected a refusal or a close, got {other:?}"),
        })
        .collect()
}

/// A three-node cluster that holds `before` = `hostility`, and the follower
/// the hostile input is aimed at; each test gets its own, so one failure
/// hides no other.
struct Besieged {
    cluster: TestCluster,
    client: Client,
    leader: u64,
    target: u64,
    client_port: String,
    peer_port: String,
    pid: u32,
    rss_before: Option<u64>,
}

impl Besieged {
    async fn start(name: &str) -> Besieged {
        let mut cluster = TestCluster::start(name, 3, Timers::default());
        let bound = cluster.timers().election_bound();
        let (leader, _) = cluster.wait_for_leader(bound).await;
        let client = cluster.client();
        assert_eq!(client.put("before", "hostility").await.expect("put"), None);

        let target = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
        let client_port = cluster.endpoint(target);
        let peer_port = cluster.peer_endpoint(target);
        let pid = cluster.pid(target).expect("target runs");
        let rss_before = resident_kib(pid);
        Besieged {
            cluster,
            client,
            leader,
            target,
            client_port,
            peer_port,
            pid,
            rss_before,
        }
    }

    /// A connection to the target's peer port, past a valid handshake as another node.
    async fn peer_link_as_another_node(&self) -> RawConn {
        let other = self
            .cluster
            .ids()
            .into_iter()
            .find(|&id| id != self.target)
            .expect("another node");
        let mut conn = RawConn::connect(&self.peer_port).await;
        let reply = conn
            .hello(self.cluster.cluster_id(), Party::Peer { node_id: other })
            .await;
        assert!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
        conn
    }

    /// Nothing of it hurt: every node runs, none grew by the announced sizes, the cluster serves.
    async fn assert_unharmed(mut self) {
        let cluster = &mut self.cluster;
        let client = &self.client;
        let bound = cluster.timers().election_bound();
        let leader_now = cluster.wait_for_leader(bound).await.0;
        assert_eq!(client.put("after", "still serving").await.expect("put"), None);
        assert_eq!(client.get("before").await.expect("get").as_deref(), Some("hostility"));
        assert_eq!(
            client.get("after").await.expect("get").as_deref(),
            Some("still serving")
        );
        for id in cluster.ids() {
            assert!(cluster.is_running(id), "node {id} died: {:?}", cluster.last_exit(id));
        }
        if let (Some(before), Some(after)) = (self.rss_before, resident_kib(self.pid)) {
            assert!(
                after < before + 64 * 1024,
                "node {} grew from {before} KiB to {after} KiB resident",
                self.target
            );
        }
        // A connection left open after a valid hello is still a working one.
        let mut conn = RawConn::connect(&cluster.endpoint(leader_now)).await;
        conn.hello(cluster.cluster_id(), Party::Client).await;
        conn.send(&ClientRequest {
            id: 99,
            op: Operation::Status,
        })
        .await
        .expect("send status");
        match conn.next_frame(CLOSE_LIMIT).await {
            Next::Frame(frame) => {
                let response: ClientResponse = integration::protocol::decode(&frame).expect("decodes");
                assert_eq!(response.id, 99);
                assert!(matches!(response.result, Ok(Reply::Status(_))), "{response:?}");
            }
            other => panic!("no status answer: {other:?}"),
        }
    }
}

/// Unframed text (whose first four bytes announce ~1.2 GB), then a well-framed non-hello.
fn garbage_hellos() -> [(&'static str, Vec<u8>); 2] {
    [
        ("http request", b"GET / HTTP/1.1\r\nHost: kvs\r\n\r\n".to_vec()),
        ("framed garbage", {
            let mut b = 16u32.to_be_bytes().to_vec();
            b.extend((0..16u8).map(|i| i.wrapping_mul(37) ^ 0xC1));
            b
        }),
    ]
}

/// Garbage instead of a hello, on the client port and on the peer port: a
/// Malformed refusal or a bare close.
#[tokio::test]
async fn garbage_instead_of_a_hello_is_refused_on_both_ports() {
    let besieged = Besieged::start("hostile-garbage-hello").await;
    for (port, on) in [(&besieged.client_port, ""), (&besieged.peer_port, " on the peer port")] {
        for (kind, bytes) in garbage_hellos() {
            let label = format!("{kind}{on}");
            let mut conn = RawConn::connect(port).await;
            conn.send_bytes(&bytes).await.expect("send garbage");
            for (reason, message) in expect_refused_and_closed(&mut conn, &label).await {
                assert_eq!(reason, RejectReason::Malformed, "{label}: {message}");
            }
        }
    }
    besieged.assert_unharmed().await;
}

/// After a valid handshake: on the client port a frame of garbage MessagePack
/// gets a Malformed answer with id 0 and the connection goes on serving; on
/// the peer port a frame that is no peer message ends that link, and nothing
/// else (every node serves after).
#[tokio::test]
async fn garbage_after_a_handshake_is_answered_malformed_or_ends_the_peer_link() {
    let besieged = Besieged::start("hostile-garbage-frames").await;
    let cluster = &besieged.cluster;
    {
        let mut conn = besieged.peer_link_as_another_node().await;
        conn.send_frame(Bytes::from_static(&[0xc1, 0xff, 0x00, 0x13, 0x37]))
            .await
            .expect("send garbage frame");
        let frames = conn.frames_until_closed(CLOSE_LIMIT).await;
        assert!(frames.is_empty(), "the peer port answered garbage: {frames:?}");
    }
    // An empty cluster id is fine for a client.
    {
        let leader = besieged.leader;
        let mut conn = RawConn::connect(&cluster.endpoint(leader)).await;
        let reply = conn.hello("", Party::Client).await;
        assert!(
            matches!(reply, HelloReply::Accepted { node_id, .. } if node_id == leader),
            "{reply:?}"
        );
        for garbage in [
            Bytes::from_static(&[0xc1, 0xff, 0x00, 0x13, 0x37]),
            Bytes::from_static(b"\x82\xa2id\x05\xa2op\xa4Nope"),
            Bytes::new(),
        ] {
            conn.send_frame(garbage.clone()).await.expect("send garbage frame");
            let response: ClientResponse = conn.recv(CLOSE_LIMIT).await;
            assert_eq!(response.id, 0, "answer to {garbage:?}");
            assert!(
                matches!(response.result, Err(ClientError::Malformed { .. })),
                "answer to {garbage:?}: {response:?}"
            );
        }
        let request = ClientRequest {
            id: 7,
            op: Operation::Get { key: "before".into() },
        };
        conn.send(&request).await.expect("send get");
        let response: ClientResponse = conn.recv(CLOSE_LIMIT).await;
        assert_eq!(
            response,
            ClientResponse {
                id: 7,
                result: Ok(Reply::Value(Some("hostility".into())))
            }
        );
    }
    besieged.assert_unharmed().await;
}

/// A header announcing 1 GiB, before and after a valid handshake, on both
/// ports: the node closes (a client gets a Malformed answer first, at most)
/// and never buffers what the header announces.
#[tokio::test]
async fn a_one_gib_frame_header_closes_the_connection_on_both_ports() {
    let besieged = Besieged::start("hostile-huge-header").await;
    let target = besieged.target;
    for (label, port) in [
        ("client port", &besieged.client_port),
        ("peer port", &besieged.peer_port),
    ] {
        let mut conn = RawConn::connect(port).await;
        conn.send_bytes(&ONE_GIB.to_be_bytes()).await.expect("send header");
        conn.send_bytes(&[0u8; 64]).await.ok();
        let refusals = expect_refused_and_closed(&mut conn, &format!("1 GiB header on the {label}")).await;
        assert!(refusals.is_empty(), "{label}: {refusals:?}");
    }
    {
        let mut conn = RawConn::connect(&besieged.client_port).await;
        let reply = conn.hello("", Party::Client).await;
        assert!(
            matches!(reply, HelloReply::Accepted { node_id, .. } if node_id == target),
            "{reply:?}"
        );
        conn.send_bytes(&ONE_GIB.to_be_bytes()).await.expect("send header");
        let frames = conn.frames_until_closed(CLOSE_LIMIT).await;
        for frame in frames {
            let response: ClientResponse = integration::protocol::decode(&frame).expect("a client response");
            assert_eq!(response.id, 0);
            assert!(
                matches!(response.result, Err(ClientError::Malformed { .. })),
                "{response:?}"
            );
        }
    }
    {
        let mut conn = besieged.peer_link_as_another_node().await;
        conn.send_bytes(&ONE_GIB.to_be_bytes()).await.expect("send header");
        conn.send_bytes(&[7u8; 64]).await.ok();
        let frames = conn.frames_until_closed(CLOSE_LIMIT).await;
        assert!(frames.is_empty(), "the peer port answered a 1 GiB header: {frames:?}");
    }
    besieged.assert_unharmed().await;
}

/// The wrong cluster, on both ports, and each party on the other's port: a
/// refusal naming the reason (and not the cluster id), then the close.
#[tokio::test]
async fn a_wrong_cluster_or_port_in_the_hello_is_refused() {
    let besieged = Besieged::start("hostile-wrong-hello").await;
    let cluster = &besieged.cluster;
    let (client_port, peer_port, leader) = (&besieged.client_port, &besieged.peer_port, besieged.leader);
    for (label, port, party) in [
        ("client port", client_port, Party::Client),
        ("peer port", peer_port, Party::Peer { node_id: leader }),
    ] {
        let mut conn = RawConn::connect(port).await;
        let reply = conn.hello("some-other-cluster", party).await;
        match reply {
            HelloReply::Rejected { reason, message } => {
                assert_eq!(reason, RejectReason::WrongCluster, "{label}: {message}");
                assert!(
                    !message.contains(cluster.cluster_id()),
                    "{label}: the refusal names the cluster id: {message}"
                );
            }
            other => panic!("{label}: a wrong cluster id was accepted: {other:?}"),
        }
        let after = expect_refused_and_closed(&mut conn, label).await;
        assert!(after.is_empty(), "{label}: more after the refusal: {after:?}");
    }
    for (label, port, party) in [
        (
            "peer hello on the client port",
            client_port,
            Party::Peer { node_id: leader },
        ),
        ("client hello on the peer port", peer_port, Party::Client),
    ] {
        let mut conn = RawConn::connect(port).await;
        match conn.hello(cluster.cluster_id(), party).await {
            HelloReply::Rejected { reason, .. } => assert_eq!(reason, RejectReason::WrongPort, "{label}"),
            other => panic!("{label}: accepted: {other:?}"),
        }
        expect_refused_and_closed(&mut conn, label).await;
    }
    besieged.assert_unharmed().await;
}

/// Keys and values over the limits, through the client crate: refused, and nothing stored.
#[tokio::test]
async fn oversized_keys_and_values_are_refused() {
    let besieged = Besieged::start("hostile-limits").await;
    let client = &besieged.client;
    let long_key = "k".repeat(200);
    let long_value = "v".repeat(3000);
    match client.put(&long_key, "x").await {
        Err(Error::Server(ClientError::KeyTooLarge { len: 200, max })) => assert_eq!(max, 128),
        other => panic!("a 200-byte key: {other:?}"),
    }
    match client.put("fine", &long_value).await {
        Err(Error::Server(ClientError::ValueTooLarge { len: 3000, max })) => assert_eq!(max, 2048),
        other => panic!("a 3000-byte value: {other:?}"),
    }
    assert!(
        matches!(
            client.get(&long_key).await,
            Err(Error::Server(ClientError::KeyTooLarge { .. }))
        ),
        "a get of a 200-byte key was not refused"
    );
    assert_eq!(client.get("fine").await.expect("get"), None, "a refused put was stored");
    besieged.assert_unharmed().await;
}

/// Well-formed peer messages with terms and indexes no honest node sends (a
/// RequestVote in term u64::MAX used to wrap every node's term): refused, the
/// cluster's terms stay where they were, and it goes on serving.
#[tokio::test]
async fn huge_terms_and_indexes_from_a_peer_change_nothing() {
    use integration::protocol::{
        AppendEntries, Command, Entry, InstallSnapshot, PeerEnvelope, PeerMessage, SnapshotChunk, SnapshotChunkAck,
        VoteRequest,
    };

    let mut cluster = TestCluster::start("hostile-terms", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    let (leader, term) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    client.put("before", "1").await.expect("put");

    let target = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let mut conn = RawConn::connect(&cluster.peer_endpoint(target)).await;
    let reply = conn.hello(cluster.cluster_id(), Party::Peer { node_id: leader }).await;
    assert!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
    let hostile = [
        (
            u64::MAX,
            PeerMessage::RequestVote(VoteRequest {
                last_log_index: u64::MAX,
                last_log_term: u64::MAX,
            }),
        ),
        (
            u64::MAX - 1,
            PeerMessage::AppendEntries(AppendEntries {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: vec![],
                leader_commit: u64::MAX,
                read_round: u64::MAX,
                trim_to: u64::MAX,
                follower_incarnation: 0,
            }),
        ),
        (
            term,
            PeerMessage::AppendEntries(AppendEntries {
                prev_log_index: u64::MAX - 1,
                prev_log_term: term,
                entries: vec![Entry {
                    index: u64::MAX,
                    term,
                    request_id: 0,
                    command: Command::Noop,
                }],
                leader_commit: u64::MAX,
                read_round: 0,
                trim_to: 0,
                follower_incarnation: 0,
            }),
        ),
        (
            term,
            PeerMessage::InstallSnapshot(InstallSnapshot {
                last_index: u64::MAX,
                last_term: u64::MAX,
                bytes: u64::MAX,
                checksum: 0,
                read_round: 0,
            }),
        ),
        (
            term,
            PeerMessage::SnapshotChunk(SnapshotChunk {
                last_index: u64::MAX,
                last_term: term,
                offset: u64::MAX - 1,
                data: vec![0; 16],
            }),
        ),
        (
            term,
            PeerMessage::SnapshotChunkAck(SnapshotChunkAck {
                last_index: u64::MAX,
                last_term: term,
                next_offset: u64::MAX,
            }),
        ),
    ];
    for (term, message) in hostile {
        let envelope = PeerEnvelope {
            from: leader,
            to: target,
            term,
            message,
        };
        conn.send(&envelope).await.expect("send a hostile peer message");
    }
    // Answers, if any, go over the node's own link to the leader, not this one.
    assert!(matches!(
        conn.next_frame(Duration::from_millis(500)).await,
        Next::Silent | Next::Closed
    ));

    assert_eq!(
        client.put("after", "2").await.expect("put after the hostile messages"),
        None
    );
    let view = cluster.view().await;
    for status in view.statuses() {
        assert!(
            status.term < 1_000,
            "node {} took a hostile term: {}",
            status.node_id,
            status.term
        );
    }
    for id in cluster.ids() {
        assert!(cluster.is_running(id), "node {id} stopped");
        let log = cluster.log_text(id);
        assert!(
            !log.contains("panicked"),
            "node {id} panicked:\n{}",
            cluster.log_tail(id, 30)
        );
    }
    assert!(
        cluster.log_text(target).contains("peer message out of bounds: ignored"),
        "no trace of the refusal:\n{}",
        cluster.log_tail(target, 30)
    );
}

/// The peer port keeps one inbound connection per peer: connections claiming
/// the same node id replace each other, so however many are opened, the node
/// buffers frames for at most one per peer.
#[tokio::test]
async fn one_inbound_connection_per_peer_id() {
    let mut cluster = TestCluster::start("hostile-peer-slots", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;
    let target = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let claimed = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader && id != target)
        .expect("a third node");
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut conn = RawConn::connect(&cluster.peer_endpoint(target)).await;
        let reply = conn.hello(cluster.cluster_id(), Party::Peer { node_id: claimed }).await;
        assert!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
        // A header announcing a frame just under the limit, and a little of its body.
        conn.send_bytes(&(256u32 * 1024 * 1024 - 1).to_be_bytes())
            .await
            .expect("header");
        conn.send_bytes(&[0u8; 1024]).await.expect("some body");
        conns.push(conn);
    }
    // Every connection but the last was closed when the next one arrived.
    let last = conns.pop().expect("twenty connections");
    for (n, mut conn) in conns.into_iter().enumerate() {
        assert!(
            conn.frames_until_closed(CLOSE_LIMIT).await.is_empty(),
            "connection {n} got frames"
        );
    }
    drop(last);
    // The real node's link comes back, and the cluster serves.
    let client = cluster.client();
    assert_eq!(client.put("after", "slots").await.expect("put"), None);
    cluster.wait_caught_up(claimed, bound).await;
}

/// Connections that never say hello, more than the peer port keeps open at
/// once (members + 64): the extra ones are closed at once, the ones kept are
/// closed when their handshake times out, and the cluster serves throughout.
#[tokio::test]
async fn a_flood_of_silent_connections_is_bounded() {
    let mut cluster = TestCluster::start("hostile-flood", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;
    let target = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let mut conns = Vec::new();
    for _ in 0..120 {
        conns.push(RawConn::connect(&cluster.peer_endpoint(target)).await);
    }
    let mut closed_at_once = 0;
    for conn in &mut conns {
        if matches!(conn.next_frame(Duration::from_millis(20)).await, Next::Closed) {
            closed_at_once += 1;
        }
    }
    // 3 members + 64 spare, less the two real peers' links already open.
    assert!(
        (120 - 67..=120 - 65).contains(&closed_at_once),
        "{closed_at_once} of 120 closed at once"
    );
    let client = cluster.client();
    assert_eq!(client.put("during", "flood").await.expect("put"), None);
    assert!(cluster.log_text(target).contains("too many connections open"));
    drop(conns);
    cluster.wait_caught_up(target, bound).await;
}
