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
        floor: Some(0),
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
    assert!(matches!(
        put(&mut conn, 6, "k", "v1", session(1, 2)).await,
        Err(ClientError::SessionExpired { .. })
    ));
    assert_eq!(client.get("k").await.expect("get").as_deref(), Some("v2"));

    // The client crate's own sessions: a plain overwrite still returns the true old value.
    assert_eq!(client.put("k", "v3").await.expect("put").as_deref(), Some("v2"));
}

/// A refused write never bricks a client: its first write refused (too large,
/// so never in the log), the client's next writes still apply (they used to
/// get `SessionExpired` forever, since the server had never seen the session
/// the client had counted past).
#[tokio::test]
async fn a_refused_first_write_does_not_break_later_writes() {
    let mut cluster = TestCluster::start("exactly-once-refused", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    let refused = client.put("big", &"x".repeat(3000)).await;
    assert!(
        matches!(
            refused,
            Err(integration::client::Error::Server(ClientError::ValueTooLarge { .. }))
        ),
        "{refused:?}"
    );
    let refused = client.put(&"k".repeat(200), "v").await;
    assert!(matches!(
        refused,
        Err(integration::client::Error::Server(ClientError::KeyTooLarge { .. }))
    ));
    assert_eq!(client.put("a", "b").await.expect("a write after the refusals"), None);
    assert_eq!(client.put("c", "d").await.expect("and another"), None);
    assert_eq!(client.put("a", "e").await.expect("an overwrite").as_deref(), Some("b"));

    // A session the cluster does not know, with history the cluster never
    // saw and a floor at its applied index: taken as new, applied once.
    let leader = cluster.wait_for_leader(bound).await.0;
    let applied = cluster.status(leader).await.expect("status").applied_index;
    let mut conn = connect(&cluster, leader).await;
    let stranger = Session {
        client_id: 0x5eed_0000_0000_0002,
        seq: 9,
        acked_below: 9,
        floor: Some(applied),
    };
    assert_eq!(put(&mut conn, 1, "s", "1", stranger).await, Ok(None));
    assert_eq!(
        put(&mut conn, 2, "s", "1", stranger).await,
        Ok(None),
        "a retry gets the first answer"
    );
    assert_eq!(client.get("s").await.expect("get").as_deref(), Some("1"));
}
