//! Election safety across many elections, checked from every node's own traces.

use std::collections::BTreeSet;

use integration::{TestCluster, Timers};

const ELECTIONS: usize = 8;

#[tokio::test]
async fn no_two_leaders_in_one_term_across_many_elections() {
    let mut cluster = TestCluster::start("elections", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    let client = cluster.client();
    let mut observed = vec![cluster.wait_for_leader(bound).await];

    for round in 0..ELECTIONS {
        let (old, old_term) = *observed.last().unwrap();
        // A write per term, so the logs (and the vote restriction) matter.
        client
            .put(&format!("round-{round}"), &format!("led by {old} in term {old_term}"))
            .await
            .expect("put");
        cluster.kill(old);
        observed.push(cluster.wait_for_new_leader(old, old_term, bound).await);
        cluster.restart(old);
        // The restarted node must be back in the cluster before the next kill
        // (two nodes are needed to elect the next leader).
        cluster.wait_caught_up(old, bound).await;
    }

    let leaders_by_term = cluster.leaders_by_term();
    let doubles: Vec<_> = leaders_by_term.iter().filter(|(_, nodes)| nodes.len() > 1).collect();
    assert!(doubles.is_empty(), "terms with two leaders: {doubles:?}");
    assert!(
        leaders_by_term.len() > ELECTIONS,
        "only {} leader terms in the traces ({leaders_by_term:?}); the test proves little",
        leaders_by_term.len()
    );
    // What the status polls saw agrees with the traces.
    for (leader, term) in &observed {
        assert_eq!(
            leaders_by_term.get(term),
            Some(&BTreeSet::from([*leader])),
            "status showed node {leader} leading term {term}; traces: {leaders_by_term:?}"
        );
    }
    // And every write survived the eight crashes.
    for round in 0..ELECTIONS {
        let value = client.get(&format!("round-{round}")).await.expect("get");
        assert!(value.is_some_and(|v| v.starts_with("led by")), "round {round}");
    }
}
