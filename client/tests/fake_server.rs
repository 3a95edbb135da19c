//! The client against tiny fake nodes speaking the wire protocol, so redirects,
//! pipelining, retries and exactly-once sessions are checked without a cluster.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kv::{Client, ClientConfig, Error};
use protocol::codec::FrameCodec;
use protocol::limits::MAX_CLIENT_FRAME;
use protocol::{
    ClientError, ClientRequest, ClientResponse, Hello, HelloReply, NodeStatus, Operation, Party, RejectReason, Reply,
    Role, Session,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;

type Conn = Framed<TcpStream, FrameCodec>;

/// The applied index every fake node reports in its handshake.
const APPLIED: u64 = 17;

/// Every test is bounded, so a client bug fails it instead of hanging.
const TEST_LIMIT: Duration = Duration::from_secs(20);

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    (listener, addr)
}

/// Accepts one connection and answers its handshake as node `node_id`.
async fn accept(listener: &TcpListener, node_id: u64) -> Conn {
    let (stream, _) = listener.accept().await.expect("accept");
    let mut conn = Framed::new(stream, protocol::frame_codec(MAX_CLIENT_FRAME));
    let frame = conn.next().await.expect("hello frame").expect("hello read");
    let hello: Hello = protocol::decode(&frame).expect("hello decodes");
    assert_eq!(hello, Hello::new("", Party::Client));
    let reply = HelloReply::Accepted {
        node_id,
        version: protocol::PROTOCOL_VERSION,
        applied_index: APPLIED,
    };
    conn.send(protocol::encode(&reply).expect("encode"))
        .await
        .expect("send hello reply");
    conn
}

async fn recv(conn: &mut Conn) -> Option<ClientRequest> {
    let frame = conn.next().await?.ok()?;
    Some(protocol::decode(&frame).expect("request decodes"))
}

async fn reply(conn: &mut Conn, id: u64, result: Result<Reply, ClientError>) {
    let response = ClientResponse { id, result };
    conn.send(protocol::encode(&response).expect("encode"))
        .await
        .expect("send response");
}

fn session_of(request: &ClientRequest) -> Option<Session> {
    match &request.op {
        Operation::Put { session, .. } | Operation::Delete { session, .. } => *session,
        _ => None,
    }
}

fn key_of(request: &ClientRequest) -> String {
    match &request.op {
        Operation::Get { key } | Operation::Put { key, .. } | Operation::Delete { key, .. } => key.clone(),
        Operation::Status => String::new(),
    }
}

fn config(endpoints: &[&str]) -> ClientConfig {
    ClientConfig::new(endpoints.iter().map(|e| e.to_string()).collect())
}

/// A node that answers every request on every connection with `NotLeader`.
fn spawn_follower(listener: TcpListener, node_id: u64, leader_id: Option<u64>, leader_addr: Option<String>) {
    tokio::spawn(async move {
        loop {
            let mut conn = accept(&listener, node_id).await;
            let leader_addr = leader_addr.clone();
            tokio::spawn(async move {
                while let Some(request) = recv(&mut conn).await {
                    let not_leader = ClientError::NotLeader {
                        leader_id,
                        leader_addr: leader_addr.clone(),
                    };
                    reply(&mut conn, request.id, Err(not_leader)).await;
                }
            });
        }
    });
}

#[tokio::test]
async fn redirect_is_followed_and_pipelined_responses_match_by_id() {
    let (follower, follower_addr) = bind().await;
    let (leader, leader_addr) = bind().await;
    spawn_follower(follower, 1, Some(2), Some(leader_addr.clone()));

    // The leader waits until both writes are in flight on its one connection,
    // then answers them in reverse order.
    let fake_leader = tokio::spawn(async move {
        let mut conn = accept(&leader, 2).await;
        let first = recv(&mut conn).await.expect("first request");
        let second = recv(&mut conn).await.expect("second request");
        for request in [&second, &first] {
            let old = format!("old-{}", key_of(request));
            reply(&mut conn, request.id, Ok(Reply::Value(Some(old)))).await;
        }
        // Keep the connection open while the client reads.
        let _ = recv(&mut conn).await;
        (first, second)
    });

    timeout(TEST_LIMIT, async {
        let client = Client::connect(config(&[&follower_addr])).await.expect("connect");
        assert_eq!(client.connected_endpoint().as_deref(), Some(follower_addr.as_str()));

        let (a, b) = tokio::join!(client.put("k1", "v1"), client.put("k2", "v2"));
        assert_eq!(a.expect("put k1"), Some("old-k1".to_string()));
        assert_eq!(b.expect("put k2"), Some("old-k2".to_string()));
        assert_eq!(client.connected_endpoint().as_deref(), Some(leader_addr.as_str()));
        drop(client);

        let (first, second) = fake_leader.await.expect("fake leader");
        assert_ne!(first.id, second.id);
        let (s1, s2) = (
            session_of(&first).expect("session"),
            session_of(&second).expect("session"),
        );
        assert_eq!(s1.client_id, s2.client_id);
        let mut seqs = [s1.seq, s2.seq];
        seqs.sort_unstable();
        assert_eq!(seqs, [1, 2], "two writes take seqs 1 and 2");
        // Both were in flight together, so neither could ack the other.
        assert_eq!((s1.acked_below, s2.acked_below), (1, 1));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn dropped_connection_is_retried_with_the_same_session() {
    let (listener, addr) = bind().await;
    let fake = tokio::spawn(async move {
        // First attempt: read the write, then drop the connection unanswered.
        let mut conn = accept(&listener, 1).await;
        let lost = recv(&mut conn).await.expect("first attempt");
        drop(conn);

        // The retry arrives on a new connection.
        let mut conn = accept(&listener, 1).await;
        let retry = recv(&mut conn).await.expect("retry");
        reply(&mut conn, retry.id, Ok(Reply::Value(Some("old".into())))).await;

        // The next write and a read on the same connection.
        let next = recv(&mut conn).await.expect("next write");
        reply(&mut conn, next.id, Ok(Reply::Value(None))).await;
        let read = recv(&mut conn).await.expect("read");
        reply(&mut conn, read.id, Ok(Reply::Value(Some("v2".into())))).await;
        let _ = recv(&mut conn).await;
        (lost, retry, next, read)
    });

    timeout(TEST_LIMIT, async {
        let client = Client::connect(config(&[&addr])).await.expect("connect");
        assert_eq!(
            client.put("k", "v1").await.expect("put retried"),
            Some("old".to_string())
        );
        assert_eq!(client.put("k", "v2").await.expect("second put"), None);
        assert_eq!(client.get("k").await.expect("get"), Some("v2".to_string()));
        let client_id = client.client_id();
        drop(client);

        let (lost, retry, next, read) = fake.await.expect("fake node");
        let lost_session = session_of(&lost).expect("write has a session");
        assert_eq!(
            lost_session,
            Session {
                client_id,
                seq: 1,
                acked_below: 1,
                floor: Some(APPLIED),
            }
        );
        assert_eq!(
            session_of(&retry),
            Some(lost_session),
            "retry re-sends the same session"
        );
        assert_eq!(retry.op, lost.op);
        assert_ne!(retry.id, lost.id, "each attempt has its own request id");
        assert_eq!(
            session_of(&next),
            Some(Session {
                client_id,
                seq: 2,
                acked_below: 2,
                floor: Some(APPLIED),
            })
        );
        assert_eq!(read.op, Operation::Get { key: "k".into() });
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn an_expired_session_is_replaced_and_a_write_never_sent_before_goes_again() {
    let (listener, addr) = bind().await;
    let fake = tokio::spawn(async move {
        let mut conn = accept(&listener, 1).await;
        // First write: its only attempt is refused, so it was never applied.
        let refused = recv(&mut conn).await.expect("first attempt");
        reply(
            &mut conn,
            refused.id,
            Err(ClientError::SessionExpired { applied_index: 50 }),
        )
        .await;
        let again = recv(&mut conn).await.expect("the same write in a new session");
        reply(&mut conn, again.id, Ok(Reply::Value(None))).await;
        // Second write: its first attempt is lost (the connection drops), and
        // the retry is refused: it may have been applied, the client must say so.
        let lost = recv(&mut conn).await.expect("second write");
        drop(conn);
        let mut conn = accept(&listener, 1).await;
        let retry = recv(&mut conn).await.expect("its retry");
        reply(
            &mut conn,
            retry.id,
            Err(ClientError::SessionExpired { applied_index: 60 }),
        )
        .await;
        let third = recv(&mut conn).await.expect("third write");
        reply(&mut conn, third.id, Ok(Reply::Value(None))).await;
        (refused, again, lost, retry, third)
    });

    timeout(TEST_LIMIT, async {
        let client = Client::connect(config(&[&addr])).await.expect("connect");
        let first_id = client.client_id();
        assert_eq!(client.put("k", "v1").await.expect("re-sent in a new session"), None);
        let second_id = client.client_id();
        assert_ne!(second_id, first_id);
        let error = client.put("k", "v2").await.expect_err("outcome unknown");
        assert!(matches!(error, Error::SessionLost), "{error:?}");
        assert_eq!(client.put("k", "v3").await.expect("third write"), None);

        let (refused, again, lost, retry, third) = fake.await.expect("fake node");
        let session = |request: &ClientRequest| session_of(request).expect("a write has a session");
        assert_eq!(session(&refused).client_id, first_id);
        assert_eq!(session(&refused).floor, Some(APPLIED));
        assert_eq!(
            session(&again),
            Session {
                client_id: second_id,
                seq: 1,
                acked_below: 1,
                floor: Some(50),
            },
            "a new session, from the index the refusal named"
        );
        assert_eq!(session(&lost), session(&retry));
        assert_ne!(
            session(&third).client_id,
            second_id,
            "the forgotten session is not used again"
        );
        assert_eq!(session(&third).floor, Some(60));
    })
    .await
    .expect("test finished in time");
}

/// NotLeader is a definite refusal (a follower proposes nothing): a write
/// refused that way and then answered SessionExpired was never applied, so it
/// goes again in a new session instead of ending as SessionLost.
#[tokio::test]
async fn a_write_refused_by_a_follower_then_expired_is_sent_again() {
    let (listener, addr) = bind().await;
    let fake = tokio::spawn(async move {
        let mut conn = accept(&listener, 1).await;
        let first = recv(&mut conn).await.expect("first attempt");
        let not_leader = ClientError::NotLeader {
            leader_id: Some(1),
            leader_addr: Some(listener.local_addr().expect("addr").to_string()),
        };
        reply(&mut conn, first.id, Err(not_leader)).await;
        let mut conn = accept(&listener, 1).await;
        let second = recv(&mut conn).await.expect("after the redirect");
        reply(
            &mut conn,
            second.id,
            Err(ClientError::SessionExpired { applied_index: 70 }),
        )
        .await;
        let third = recv(&mut conn).await.expect("in a new session");
        reply(&mut conn, third.id, Ok(Reply::Value(None))).await;
        (second, third)
    });
    timeout(TEST_LIMIT, async {
        let client = Client::connect(config(&[&addr])).await.expect("connect");
        assert_eq!(
            client.put("k", "v").await.expect("applied once, in a new session"),
            None
        );
        let (second, third) = fake.await.expect("fake node");
        let (second, third) = (
            session_of(&second).expect("session"),
            session_of(&third).expect("session"),
        );
        assert_ne!(second.client_id, third.client_id);
        assert_eq!((third.seq, third.floor), (1, Some(70)));
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn unknown_leader_and_unavailable_are_retried_on_other_endpoints() {
    let (follower, follower_addr) = bind().await;
    let (leader, leader_addr) = bind().await;
    spawn_follower(follower, 1, None, None);
    let fake_leader = tokio::spawn(async move {
        let mut conn = accept(&leader, 2).await;
        let first = recv(&mut conn).await.expect("first attempt");
        let unavailable = ClientError::Unavailable {
            message: "no quorum yet".into(),
        };
        reply(&mut conn, first.id, Err(unavailable)).await;
        let second = recv(&mut conn).await.expect("second attempt");
        reply(&mut conn, second.id, Err(ClientError::OutcomeUnknown)).await;
        let third = recv(&mut conn).await.expect("third attempt");
        reply(&mut conn, third.id, Ok(Reply::Value(Some("old".into())))).await;
        let _ = recv(&mut conn).await;
        [first, second, third]
    });

    timeout(TEST_LIMIT, async {
        let client = Client::connect(config(&[&follower_addr, &leader_addr]))
            .await
            .expect("connect");
        assert_eq!(client.connected_endpoint().as_deref(), Some(follower_addr.as_str()));
        assert_eq!(client.delete("k").await.expect("delete"), Some("old".to_string()));
        assert_eq!(client.connected_endpoint().as_deref(), Some(leader_addr.as_str()));
        drop(client);

        let attempts = fake_leader.await.expect("fake leader");
        let sessions: Vec<_> = attempts.iter().map(session_of).collect();
        assert!(sessions[0].is_some());
        assert!(
            sessions.iter().all(|s| *s == sessions[0]),
            "every retry uses one session"
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn non_retryable_errors_are_returned_at_once() {
    let (listener, addr) = bind().await;
    let fake = tokio::spawn(async move {
        let mut conn = accept(&listener, 1).await;
        let mut seen = Vec::new();
        while let Some(request) = recv(&mut conn).await {
            let error = match &request.op {
                Operation::Put { .. } => ClientError::ValueTooLarge { len: 4000, max: 2048 },
                _ => ClientError::EmptyKey,
            };
            reply(&mut conn, request.id, Err(error)).await;
            seen.push(request);
        }
        seen
    });

    timeout(TEST_LIMIT, async {
        let client = Client::connect(config(&[&addr])).await.expect("connect");
        let error = client.put("k", "too big").await.expect_err("refused");
        assert!(matches!(
            error,
            Error::Server(ClientError::ValueTooLarge { len: 4000, max: 2048 })
        ));
        let error = client.get("").await.expect_err("refused");
        assert!(matches!(error, Error::Server(ClientError::EmptyKey)));
        drop(client);
        let seen = fake.await.expect("fake node");
        assert_eq!(seen.len(), 2, "no retries: {seen:?}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn handshake_rejection_is_a_typed_error() {
    let (listener, addr) = bind().await;
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut conn = Framed::new(stream, protocol::frame_codec(MAX_CLIENT_FRAME));
        let _hello = conn.next().await;
        let rejected = HelloReply::Rejected {
            reason: RejectReason::WrongCluster,
            message: "this node does not belong to cluster \"b\"".into(),
        };
        conn.send(protocol::encode(&rejected).expect("encode"))
            .await
            .expect("send");
    });

    let mut config = config(&[&addr]);
    config.cluster_id = "b".into();
    let error = timeout(TEST_LIMIT, Client::connect(config))
        .await
        .expect("test finished in time")
        .expect_err("rejected");
    match error {
        Error::Handshake { endpoint, message } => {
            assert_eq!(endpoint, addr);
            assert!(message.contains("does not belong to cluster"), "{message}");
        }
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

#[tokio::test]
async fn silent_node_makes_the_request_time_out() {
    let (listener, addr) = bind().await;
    tokio::spawn(async move {
        let mut conn = accept(&listener, 1).await;
        // Read requests and never answer.
        while recv(&mut conn).await.is_some() {}
    });

    let mut config = config(&[&addr]);
    config.request_timeout = Duration::from_millis(300);
    let client = Client::connect(config).await.expect("connect");
    let started = tokio::time::Instant::now();
    let error = timeout(TEST_LIMIT, client.put("k", "v"))
        .await
        .expect("test finished in time")
        .expect_err("no answer");
    assert!(matches!(error, Error::Timeout), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn unreachable_cluster_reports_the_connect_error() {
    // A port nobody listens on any more.
    let (listener, addr) = bind().await;
    drop(listener);

    let mut config = config(&[&addr]);
    config.request_timeout = Duration::from_millis(200);
    let error = timeout(TEST_LIMIT, Client::connect(config.clone()))
        .await
        .expect("test finished in time")
        .expect_err("nothing listens");
    assert!(
        matches!(&error, Error::Unreachable { failures } if failures.len() == 1 && failures[0].0 == addr),
        "{error:?}"
    );

    let client = Client::new(config).expect("lazy client");
    let error = timeout(TEST_LIMIT, client.put("k", "v"))
        .await
        .expect("test finished in time")
        .expect_err("nothing listens");
    assert!(
        matches!(error, Error::Unreachable { .. }),
        "never sent, so not a timeout: {error:?}"
    );
}

#[tokio::test]
async fn status_asks_each_endpoint_directly() {
    let (listener, addr) = bind().await;
    let (gone, gone_addr) = bind().await;
    drop(gone);
    let status = NodeStatus {
        node_id: 3,
        role: Role::Follower,
        term: 5,
        leader_id: Some(1),
        leader_addr: Some("127.0.0.1:5000".into()),
        commit_index: 12,
        applied_index: 11,
        flushed_index: 12,
        log_first_index: 1,
        log_last_index: 12,
        unflushed_entries: 0,
        store_flush_failures: 0,
    };
    let answer = status.clone();
    tokio::spawn(async move {
        loop {
            let mut conn = accept(&listener, 3).await;
            while let Some(request) = recv(&mut conn).await {
                assert_eq!(request.op, Operation::Status);
                reply(&mut conn, request.id, Ok(Reply::Status(answer.clone()))).await;
            }
        }
    });

    let mut config = config(&[&addr, &gone_addr]);
    config.request_timeout = Duration::from_secs(2);
    let client = Client::new(config).expect("client");
    timeout(TEST_LIMIT, async {
        assert_eq!(client.status(&addr).await.expect("status"), status);
        let all = client.cluster_status().await;
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, addr);
        assert_eq!(all[0].1.as_ref().expect("first answers"), &status);
        assert_eq!(all[1].0, gone_addr);
        assert!(matches!(all[1].1, Err(Error::Connect { .. })));
    })
    .await
    .expect("test finished in time");
}

/// Runs the kvctl binary against `addr`; returns (exit code, stdout, stderr).
async fn kvctl(addr: &str, args: &[&str]) -> (i32, String, String) {
    kvctl_with_timeout(addr, "3000", args).await
}

async fn kvctl_with_timeout(addr: &str, timeout_ms: &str, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["--endpoints", addr, "--timeout-ms", timeout_ms])
        .args(args)
        .env_remove("KVS_ENDPOINTS")
        .env_remove("KVS_CLUSTER_ID")
        .output()
        .await
        .expect("kvctl runs");
    (
        output.status.code().expect("exit code"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kvctl_output_and_exit_codes() {
    let (listener, addr) = bind().await;
    // A one-node "store": "present" = "yes", everything else missing; "bad" keys are refused.
    tokio::spawn(async move {
        loop {
            let mut conn = accept(&listener, 1).await;
            tokio::spawn(async move {
                while let Some(request) = recv(&mut conn).await {
                    let key = key_of(&request);
                    let result = if key == "bad" {
                        Err(ClientError::EmptyKey)
                    } else if key.len() > 128 {
                        Err(ClientError::KeyTooLarge {
                            len: key.len(),
                            max: 128,
                        })
                    } else if key == "present" {
                        Ok(Reply::Value(Some("yes".into())))
                    } else {
                        Ok(Reply::Value(None))
                    };
                    reply(&mut conn, request.id, result).await;
                }
            });
        }
    });

    timeout(TEST_LIMIT, async {
        assert_eq!(
            kvctl(&addr, &["get", "present"]).await,
            (0, "yes\n".into(), String::new())
        );
        assert_eq!(
            kvctl(&addr, &["get", "absent"]).await,
            (1, String::new(), String::new())
        );
        assert_eq!(
            kvctl(&addr, &["--json", "get", "absent"]).await,
            (1, "{\"key\":\"absent\",\"value\":null}\n".into(), String::new())
        );
        assert_eq!(
            kvctl(&addr, &["put", "present", "v"]).await,
            (0, "yes\n".into(), String::new())
        );
        assert_eq!(
            kvctl(&addr, &["put", "absent", "v"]).await,
            (0, String::new(), String::new())
        );
        let (code, stdout, _) = kvctl(&addr, &["--json", "delete", "present"]).await;
        assert_eq!(code, 0);
        let json: serde_json::Value = serde_json::from_str(&stdout).expect("json output");
        assert_eq!(json, serde_json::json!({"key": "present", "old_value": "yes"}));
        // The flags are global: after the subcommand as well as before it.
        assert_eq!(
            kvctl(&addr, &["get", "absent", "--json"]).await,
            (1, "{\"key\":\"absent\",\"value\":null}\n".into(), String::new())
        );
        // Each cause once, on one line.
        assert_eq!(
            kvctl(&addr, &["get", "bad"]).await,
            (2, String::new(), "kvctl: get \"bad\": key must not be empty\n".into())
        );
        let long = "k".repeat(129);
        let (code, stdout, stderr) = kvctl(&addr, &["put", &long, "v"]).await;
        assert_eq!((code, stdout.as_str()), (2, ""));
        assert_eq!(
            stderr,
            format!("kvctl: put {long:?}: key is 129 bytes, more than the limit of 128\n")
        );
    })
    .await
    .expect("test finished in time");
}

#[tokio::test]
async fn kvctl_fails_at_once_naming_every_endpoint_when_nothing_listens() {
    let mut dead = Vec::new();
    for _ in 0..3 {
        let (listener, addr) = bind().await;
        drop(listener);
        dead.push(addr);
    }
    let endpoints = dead.join(",");
    // A minute's timeout: only failing fast can finish inside TEST_LIMIT.
    let output = timeout(
        TEST_LIMIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .args(["--endpoints", &endpoints, "--timeout-ms", "60000", "get", "foo"])
            .env_remove("KVS_ENDPOINTS")
            .env_remove("KVS_CLUSTER_ID")
            .output(),
    )
    .await
    .expect("kvctl gave up at once, not after its timeout")
    .expect("kvctl runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
    assert!(
        stderr.starts_with("kvctl: get \"foo\": cannot connect to any endpoint: "),
        "{stderr}"
    );
    for addr in &dead {
        assert!(
            stderr.contains(&format!("{addr}: Connection refused")),
            "{addr} not named:\n{stderr}"
        );
    }
}

#[tokio::test]
async fn kvctl_keeps_its_timeout_for_a_cluster_without_a_leader() {
    let (listener, addr) = bind().await;
    spawn_follower(listener, 1, None, None);
    let started = tokio::time::Instant::now();
    let (code, stdout, stderr) = timeout(TEST_LIMIT, kvctl_with_timeout(&addr, "1500", &["get", "foo"]))
        .await
        .expect("test finished in time");
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "a node that answers is retried until the timeout: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connect_once_takes_the_first_endpoint_that_answers_in_one_pass() {
    let dead = {
        let (listener, addr) = bind().await;
        drop(listener);
        addr
    };
    let (first, first_addr) = bind().await;
    let (second, second_addr) = bind().await;
    spawn_follower(first, 1, None, None);
    spawn_follower(second, 2, None, None);

    timeout(TEST_LIMIT, async {
        // Dead endpoints before a live one are skipped; the first live one wins.
        let client = Client::connect_once(config(&[&dead, &first_addr, &second_addr]))
            .await
            .expect("a live endpoint");
        assert_eq!(client.connected_endpoint().as_deref(), Some(first_addr.as_str()));
        let client = Client::connect_once(config(&[&second_addr, &first_addr]))
            .await
            .expect("a live endpoint");
        assert_eq!(client.connected_endpoint().as_deref(), Some(second_addr.as_str()));

        // Nobody answers: one pass, then the connection error, without the
        // retries `connect` makes until its request timeout.
        let mut only_dead = config(&[&dead, &dead]);
        only_dead.request_timeout = Duration::from_secs(60);
        let started = tokio::time::Instant::now();
        let error = Client::connect_once(only_dead).await.expect_err("nothing listens");
        assert!(
            matches!(&error, Error::Unreachable { failures }
                if failures.len() == 2 && failures.iter().all(|(endpoint, _)| *endpoint == dead)),
            "{error:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    })
    .await
    .expect("test finished in time");
}
