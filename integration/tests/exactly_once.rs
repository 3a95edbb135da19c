//! A retried write (same client id and sequence number) is applied once and
//! answered with the value it really replaced, even from a new leader.

use std::time::Duration;

use integration::protocol::{ClientError, ClientRequest, ClientResponse, HelloReply, Operation, Party, Reply, Session};
use integration::raw::RawConn;
use integration::{TestCluster, Timers};

const ANSWER_LIMIT: Duration = Duration::from_secs(5);

async fn connect(cluster: &TestCluster, id: u64) -> RawConn {
    let mut conn = RawConn::connect(&cluster.endpoint(id)).await;
    let reply = conn.hello(cluster.cluster_id(), Party::Client).await;
    assert!(matches!(reply, HelloReply::Accepted { .. }), "{reply:?}");
    conn
}

async fn put(
    conn: &mut RawConn,
    id: u64,
    key: &str,
    value: &str,
    session: Session,
) -> Result<Option<String>, ClientError> {
    let request = ClientRequest {
        id,
        op: Operation::Put {
            key: key.into(),
            value: value.into(),
            session: Some(session),
        },
    };
    conn.send(&request).await.expect("send put");
    let response: ClientResponse = conn.recv(ANSWER_LIMIT).await;
    assert_eq!(response.id, id);
    response.result.map(|reply| match reply {
        Reply::Value(value) => value,
        other => panic!("a put answered {other:?}"),
    })
}

#[tokio::test]
async fn exactly_once_retry_returns_true_old_value() {
    let mut cluster = TestCluster::start("exactly-once", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    let (leader, term) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    assert_eq!(client.put("k", "v0").await.expect("put"), None);

    let mut conn = connect(&cluster, leader).await;
    let session = |seq, acked_below| Session {
        client_id: 0x5eed_0000_0000_0001,
        seq,
        acked_below,
    };
    assert_eq!(put(&mut conn, 1, "k", "v1", session(1, 1)).await, Ok(Some("v0".into())));
    // The answer was "lost": the same write again gets the same answer, and is not applied twice.
    assert_eq!(put(&mut conn, 2, "k", "v1", session(1, 1)).await, Ok(Some("v0".into())));
    assert_eq!(client.get("k").await.expect("get").as_deref(), Some("v1"));

    // The remembered answer is replicated state: a new leader gives it too.
    cluster.kill(leader);
    let (new_leader, _) = cluster.wait_for_new_leader(leader, term, bound).await;
    let mut conn = connect(&cluster, new_leader).await;
    assert_eq!(put(&mut conn, 3, "k", "v1", session(1, 1)).await, Ok(Some("v0".into())));
    assert_eq!(client.get("k").await.expect("get").as_deref(), Some("v1"));

    // The next write of the session, acknowledging the first.
    assert_eq!(put(&mut conn, 4, "k", "v2", session(2, 2)).await, Ok(Some("v1".into())));
    assert_eq!(put(&mut conn, 5, "k", "v2", session(2, 2)).await, Ok(Some("v1".into())));
    // The first is forgotten now; re-sending it must not apply it again.
    assert_eq!(
        put(&mut conn, 6, "k", "v1", session(1, 2)).await,
        Err(ClientError::SessionExpired)
    );
    assert_eq!(client.get("k").await.expect("get").as_deref(), Some("v2"));

    // The client crate's own sessions: a plain overwrite still returns the true old value.
    assert_eq!(client.put("k", "v3").await.expect("put").as_deref(), Some("v2"));
}
