//! The Redis-protocol port (`resp_addr`): a Redis client library works
//! against any node, sees the same data as the native client, keeps working
//! across a leader's death, and hostile bytes get an error, not a crash.

use std::io::{Read, Write};
use std::time::Duration;

use integration::{TestCluster, Timers};
use redis::AsyncCommands;

async fn redis_at(addr: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://{addr}/")).expect("redis url");
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the RESP port {addr}: {e}"))
}

#[tokio::test]
async fn redis_clients_use_kvs_through_any_node_and_across_a_failover() {
    let mut cluster = TestCluster::start("resp", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    let (leader, term) = cluster.wait_for_leader(bound).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    let native = cluster.client();

    // Through a follower's RESP port: the gateway reaches the leader itself.
    let mut via_follower = redis_at(&cluster.resp_endpoint(follower)).await;
    let pong: String = redis::cmd("PING").query_async(&mut via_follower).await.expect("PING");
    assert_eq!(pong, "PONG");
    let () = via_follower.set("greeting", "hello").await.expect("SET");
    let got: Option<String> = via_follower.get("greeting").await.expect("GET");
    assert_eq!(got.as_deref(), Some("hello"));
    // The same data as the native client's, both ways.
    assert_eq!(
        native.get("greeting").await.expect("native get").as_deref(),
        Some("hello")
    );
    native
        .put("native-key", "from the native client")
        .await
        .expect("native put");
    let mut via_leader = redis_at(&cluster.resp_endpoint(leader)).await;
    let got: Option<String> = via_leader.get("native-key").await.expect("GET");
    assert_eq!(got.as_deref(), Some("from the native client"));

    let found: i64 = redis::cmd("EXISTS")
        .arg("greeting")
        .arg("native-key")
        .arg("missing")
        .query_async(&mut via_leader)
        .await
        .expect("EXISTS");
    assert_eq!(found, 2);
    let removed: i64 = via_leader.del(&["native-key", "missing"]).await.expect("DEL");
    assert_eq!(removed, 1);
    assert_eq!(native.get("native-key").await.expect("native get"), None);
    let missing: Option<String> = via_follower.get("native-key").await.expect("GET");
    assert_eq!(missing, None);

    // What kvs does not do is refused with a Redis error, and the connection goes on.
    let options: redis::RedisResult<()> = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .arg("EX")
        .arg("10")
        .query_async(&mut via_follower)
        .await;
    assert!(options.is_err(), "SET with options was accepted");
    let unknown: redis::RedisResult<()> = redis::cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .query_async(&mut via_follower)
        .await;
    let unknown = unknown.expect_err("HSET was accepted");
    assert!(unknown.to_string().contains("unknown command"), "{unknown}");
    let too_big = "x".repeat(4096);
    let refused: redis::RedisResult<()> = via_follower.set("big", &too_big).await;
    assert!(refused.is_err(), "a value over the node's limit was accepted");
    let got: Option<String> = via_follower.get("greeting").await.expect("GET after errors");
    assert_eq!(got.as_deref(), Some("hello"));

    // The leader dies: the surviving nodes' RESP ports keep serving, and
    // every acknowledged write is still there.
    for k in 0..20 {
        let () = via_follower.set(format!("before-{k}"), k).await.expect("SET");
    }
    cluster.kill(leader);
    drop(via_leader);
    cluster.wait_for_new_leader(leader, term, bound * 3).await;
    for k in 0..20 {
        let got: Option<String> = via_follower
            .get(format!("before-{k}"))
            .await
            .expect("GET after failover");
        assert_eq!(got, Some(k.to_string()), "before-{k} after the leader died");
    }
    let () = via_follower.set("after", "failover").await.expect("SET after failover");
    assert_eq!(
        native.get("after").await.expect("native get").as_deref(),
        Some("failover")
    );
}

/// Sends `bytes` on a fresh connection and returns what comes back before
/// the node closes it (or a second passes).
fn exchange(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
    stream.write_all(bytes).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

#[tokio::test]
async fn hostile_bytes_on_the_resp_port_get_errors_and_the_node_serves_on() {
    let mut cluster = TestCluster::start("resp-hostile", 1, Timers::default());
    let bound = cluster.timers().election_bound();
    cluster.wait_for_leader(bound).await;
    let addr = cluster.resp_endpoint(1);

    let protocol_errors: [&[u8]; 4] = [
        b"*1\r\n$-5\r\n",
        b"*99999999999999999999999\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\nkXY",
        b"*1\r\n:1\r\n",
    ];
    for input in protocol_errors {
        let answer = exchange(&addr, input);
        assert!(
            answer.starts_with(b"-ERR Protocol error"),
            "{:?} got {:?}",
            String::from_utf8_lossy(input),
            String::from_utf8_lossy(&answer)
        );
    }
    // A bulk length over the bound is refused before its bytes arrive.
    let answer = exchange(&addr, b"*1\r\n$1000000000\r\n");
    assert!(
        answer.starts_with(b"-ERR Protocol error"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // Not UTF-8, and an inline command: errors and answers, connection kept.
    let answer = exchange(&addr, b"*2\r\n$3\r\nGET\r\n$2\r\n\xff\xfe\r\nPING\r\n");
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "-ERR kvs keys and values are UTF-8 text\r\n+PONG\r\n"
    );
    let mut garbage = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..4096 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        garbage.push(state as u8);
    }
    let _ = exchange(&addr, &garbage);

    assert!(cluster.is_running(1), "the node died on hostile RESP input");
    let mut conn = redis_at(&addr).await;
    let () = conn.set("still", "here").await.expect("SET after hostile input");
    let got: Option<String> = conn.get("still").await.expect("GET");
    assert_eq!(got.as_deref(), Some("here"));
}

/// The RESP gateway shares one client per node: a refused first SET on a
/// fresh gateway used to break every later SET of every RESP user of that
/// node (`ERR the exactly-once session for this write has expired`).
#[tokio::test]
async fn a_refused_set_does_not_break_the_gateway() {
    let mut cluster = TestCluster::start("resp-refused", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    cluster.wait_for_leader(bound).await;
    let mut redis = redis_at(&cluster.resp_endpoint(1)).await;
    let refused: redis::RedisResult<()> = redis.set("big", "x".repeat(3000)).await;
    assert!(refused.is_err(), "a value over the limit was accepted");
    let () = redis.set("a", "b").await.expect("SET after a refused SET");
    let () = redis.set("c", "d").await.expect("and another");
    let got: Option<String> = redis.get("a").await.expect("GET");
    assert_eq!(got.as_deref(), Some("b"));
}
