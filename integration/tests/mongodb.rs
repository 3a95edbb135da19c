//! The cluster tests again with `[storage] engine = "mongodb"`, plus MongoDB
//! going down and coming back, and MongoDB unreachable at start.
//!
//! The server is `KVS_TEST_MONGODB_URI` (CI starts nx-27017, a MongoDB
//! wire-protocol server, and sets it; a real MongoDB works too). The
//! down-then-up test starts a private server it can stop: the `nx-27017` at
//! `KVS_TEST_NX27017`, or on the PATH. Without them these tests are skipped,
//! except under CI (`CI` set), where they fail.
//!
//! Each test's databases are named after its cluster id (unique per run) and
//! dropped when it passes; a failed test leaves them for inspection.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use integration::scenarios::{LaggingStage, TrimScenarioEngine, TrimWorkload};
use integration::{
    assert_all_readable, free_ports, pairs, put_all, required_mongodb as required, scenarios,
    test_mongodb_uri as test_uri, Engine, TestCluster, Timers,
};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ClientOptions;

const PREFIX: &str = "kvsit";
/// The nodes' `storage.timeout_ms`: short, so a down server is noticed quickly.
const NODE_TIMEOUT_MS: u64 = 1000;

fn engine(uri: &str) -> Engine {
    Engine::MongoDb {
        uri: uri.to_string(),
        database_prefix: PREFIX.to_string(),
        timeout_ms: NODE_TIMEOUT_MS,
    }
}

fn database(cluster: &TestCluster, id: u64) -> String {
    format!("{PREFIX}_{}_{id}", cluster.cluster_id())
}

async fn mongo(uri: &str) -> mongodb::Client {
    let mut options = ClientOptions::parse(uri).await.expect("parse the test MongoDB URI");
    options.server_selection_timeout = Some(Duration::from_secs(10));
    mongodb::Client::with_options(options).expect("MongoDB client")
}

/// What node `id`'s database holds: the meta document and the data of the collection it names.
async fn stored(mongo: &mongodb::Client, cluster: &TestCluster, id: u64) -> (Document, BTreeMap<String, String>) {
    let db = mongo.database(&database(cluster, id));
    let meta = db
        .collection::<Document>("meta")
        .find_one(doc! { "_id": "state" })
        .await
        .expect("read the meta document")
        .unwrap_or_default();
    let collection = meta.get_str("collection").unwrap_or("kv").to_string();
    let documents: Vec<Document> = db
        .collection::<Document>(&collection)
        .find(doc! {})
        .await
        .expect("read the data")
        .try_collect()
        .await
        .expect("read the data");
    let data = documents
        .into_iter()
        .map(|d| {
            let key = d.get_str("_id").expect("string _id").to_string();
            (key, d.get_str("value").expect("string value").to_string())
        })
        .collect();
    (meta, data)
}

fn applied_index(meta: &Document) -> u64 {
    match meta.get("applied_index") {
        Some(Bson::Int32(n)) => *n as u64,
        Some(Bson::Int64(n)) => *n as u64,
        other => panic!("meta applied_index is {other:?}"),
    }
}

/// Waits until node `id` has flushed everything the leader committed (as of
/// the call) and its database holds exactly `expected`.
async fn wait_store_holds(
    cluster: &mut TestCluster,
    mongo: &mongodb::Client,
    id: u64,
    expected: &BTreeMap<String, String>,
) {
    let target = cluster
        .wait_until(Duration::from_secs(20), "a leader's commit index", |view| {
            view.leader().map(|s| s.commit_index)
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (meta, data) = stored(mongo, cluster, id).await;
        let applied = meta.get("applied_index").map_or(0, |_| applied_index(&meta));
        if applied >= target && data == *expected {
            return;
        }
        if Instant::now() >= deadline {
            let missing: Vec<_> = expected.keys().filter(|k| !data.contains_key(*k)).take(5).collect();
            let extra: Vec<_> = data.keys().filter(|k| !expected.contains_key(*k)).take(5).collect();
            let view = cluster.view().await;
            panic!(
                "node {id}'s database {} does not hold the {} expected keys at index {target}: \
                 meta {meta}, {} keys, missing e.g. {missing:?}, extra e.g. {extra:?}\n{view}",
                database(cluster, id),
                expected.len(),
                data.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn drop_databases(mongo: &mongodb::Client, cluster: &TestCluster) {
    for id in cluster.ids() {
        mongo
            .database(&database(cluster, id))
            .drop()
            .await
            .expect("drop a test database");
    }
}

#[tokio::test]
async fn mongodb_put_get_delete_through_every_node() {
    let Some(uri) = test_uri() else { return };
    let mongo = mongo(&uri).await;
    let mut cluster = TestCluster::start_with_engine("mongo-basic", 3, Timers::default(), &engine(&uri));
    let bound = cluster.timers().election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;

    for id in cluster.ids() {
        // Through the node's own endpoint: followers redirect to the leader.
        let client = cluster.client_for(&[id]);
        let key = format!("key-via-{id}");
        assert_eq!(client.get(&key).await.expect("get"), None);
        assert_eq!(client.put(&key, "one").await.expect("put"), None);
        assert_eq!(client.put(&key, "two").await.expect("put").as_deref(), Some("one"));
        assert_eq!(client.get(&key).await.expect("get").as_deref(), Some("two"));
        assert_eq!(client.delete(&key).await.expect("delete").as_deref(), Some("two"));
        assert_eq!(client.get(&key).await.expect("get"), None);
        assert_eq!(client.put(&key, "kept").await.expect("put"), None);
        let gone = format!("gone-via-{id}");
        client.put(&gone, "x").await.expect("put");
        client.delete(&gone).await.expect("delete");
    }
    let expected: BTreeMap<String, String> = cluster
        .ids()
        .into_iter()
        .map(|id| (format!("key-via-{id}"), "kept".to_string()))
        .collect();
    for id in cluster.ids() {
        wait_store_holds(&mut cluster, &mongo, id, &expected).await;
        let (meta, _) = stored(&mongo, &cluster, id).await;
        assert_eq!(meta.get_str("cluster_id").ok(), Some(cluster.cluster_id()), "{meta}");
        // The embedded engine is not used alongside.
        assert!(
            !cluster.data_dir(id).join("state.redb").exists(),
            "node {id} wrote a redb store"
        );
    }
    let status = cluster.status(leader).await.expect("leader status");
    assert_eq!(status.store_flush_failures, 0, "{status:?}");
    drop_databases(&mongo, &cluster).await;
}

#[tokio::test]
async fn mongodb_leader_kill_keeps_acknowledged_writes() {
    let Some(uri) = test_uri() else { return };
    let mongo = mongo(&uri).await;
    let mut cluster = TestCluster::start_with_engine("mongo-leader-kill", 3, Timers::default(), &engine(&uri));
    let bound = cluster.timers().election_bound();
    let (old_leader, old_term) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    let mut written = put_all(&client, pairs("before", 0..50)).await;

    cluster.kill(old_leader);
    let (new_leader, _) = cluster.wait_for_new_leader(old_leader, old_term, bound).await;
    assert_all_readable(&client, &written).await;
    written.extend(put_all(&client, pairs("after", 0..50)).await);
    assert_all_readable(&client, &written).await;

    // The killed leader recovers from its database and log, and catches up.
    cluster.restart(old_leader);
    let caught_up = cluster.wait_caught_up(old_leader, Duration::from_secs(20)).await;
    assert_eq!(caught_up.leader_id, Some(new_leader));
    for id in cluster.ids() {
        wait_store_holds(&mut cluster, &mongo, id, &written).await;
    }
    drop_databases(&mongo, &cluster).await;
}

#[tokio::test]
async fn mongodb_full_restart_keeps_every_acknowledged_write() {
    let Some(uri) = test_uri() else { return };
    let mongo = mongo(&uri).await;
    let mut cluster = TestCluster::start_with_engine("mongo-restart", 3, Timers::default(), &engine(&uri));
    let written = scenarios::full_restart_keeps_every_acknowledged_write(&mut cluster).await;
    for id in cluster.ids() {
        wait_store_holds(&mut cluster, &mongo, id, &written).await;
    }
    drop_databases(&mongo, &cluster).await;
}

#[tokio::test]
async fn mongodb_node_down_across_trims_catches_up_by_snapshot() {
    let Some(uri) = test_uri() else { return };
    let engine_checks = MongoTrimChecks {
        mongo: mongo(&uri).await,
    };
    let mut cluster =
        TestCluster::start_with_engine("mongo-snapshot", 3, scenarios::frequent_trim_timers(), &engine(&uri));
    let written = scenarios::node_down_across_trims_catches_up_by_snapshot(
        &mut cluster,
        TrimWorkload::DistinctKeysAndDeletes,
        &engine_checks,
    )
    .await;
    for id in cluster.ids() {
        wait_store_holds(&mut cluster, &engine_checks.mongo, id, &written).await;
    }
    drop_databases(&engine_checks.mongo, &cluster).await;
}

/// What the MongoDB engine adds to the node-down-across-trims scenario: the
/// lagging node's database is checked before and after, and a wiped node
/// loses its database too.
struct MongoTrimChecks {
    mongo: mongodb::Client,
}

impl TrimScenarioEngine for MongoTrimChecks {
    // The nodes flush to a server over the network: slower than redb.
    const TRIM_DEADLINE: Duration = Duration::from_secs(40);
    const CATCH_UP_BOUND: Duration = Duration::from_secs(30);

    async fn check_lagging_store(
        &self,
        cluster: &mut TestCluster,
        lagging: u64,
        written: &BTreeMap<String, String>,
        stage: LaggingStage,
    ) {
        // Before going down its database holds the early keys, so the snapshot must replace them.
        wait_store_holds(cluster, &self.mongo, lagging, written).await;
        if stage == LaggingStage::BeforeGoingDown {
            return;
        }
        let (meta, _) = stored(&self.mongo, cluster, lagging).await;
        assert_ne!(
            meta.get_str("collection").ok(),
            Some("kv"),
            "the snapshot went into a fresh collection: {meta}"
        );
        let collections = self
            .mongo
            .database(&database(cluster, lagging))
            .list_collection_names()
            .await
            .expect("list collections");
        assert!(
            !collections.iter().any(|c| c == "kv"),
            "the replaced collection was dropped: {collections:?}"
        );
    }

    async fn wipe_beyond_data_folder(&self, cluster: &TestCluster, id: u64) {
        self.mongo
            .database(&database(cluster, id))
            .drop()
            .await
            .expect("drop the other follower's database");
    }
}

/// An nx-27017 server of the test's own, which it can stop and start again.
struct PrivateServer {
    program: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateServer {
    fn program() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("KVS_TEST_NX27017").filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "KVS_TEST_NX27017 is {}, not a file", path.display());
            return Some(path);
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("nx-27017"))
            .find(|candidate| candidate.is_file())
    }

    fn start(program: PathBuf) -> PrivateServer {
        let mut server = PrivateServer {
            program,
            port: free_ports(1)[0],
            dir: tempfile::Builder::new()
                .prefix("kvs-it-nx27017-")
                .tempdir()
                .expect("a folder for the private server"),
            child: None,
        };
        server.launch();
        server
    }

    fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// Starts the server (on the same port and data as before) and waits until it accepts connections.
    fn launch(&mut self) {
        assert!(self.child.is_none(), "the private server already runs");
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stdout.log"))
            .expect("open the server's output file");
        let mut child = Command::new(&self.program)
            .args(["--host", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--log-file")
            .arg(dir.join("server.log"))
            .arg("--pid-file")
            .arg(dir.join("server.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone a file handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the private server exited with {status}:\n{}",
                    std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the private server did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// SIGKILLs the server: connections drop at once, as when its machine fails.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn mongodb_down_then_up_loses_nothing() {
    let Some(program) = required(
        PrivateServer::program(),
        "nx-27017 is neither at KVS_TEST_NX27017 nor on the PATH",
    ) else {
        return;
    };
    let mut server = PrivateServer::start(program);
    let uri = server.uri();
    let mongo = mongo(&uri).await;
    let mut cluster = TestCluster::start_with_engine("mongo-down-up", 3, Timers::default(), &engine(&uri));
    let bound = cluster.timers().election_bound();
    cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    let mut written = put_all(&client, pairs("up", 0..30)).await;
    for id in cluster.ids() {
        wait_store_holds(&mut cluster, &mongo, id, &written).await;
    }

    server.kill();
    // Writes are still acknowledged: they are in the logs, which do not need MongoDB.
    written.extend(put_all(&client, pairs("down", 0..50)).await);
    for i in 0..5 {
        let key = format!("up-{i:05}");
        client.delete(&key).await.expect("delete while MongoDB is down");
        written.remove(&key);
    }
    for i in 5..10 {
        let key = format!("up-{i:05}");
        client.put(&key, "changed while down").await.expect("put");
        written.insert(key, "changed while down".into());
    }
    assert_all_readable(&client, &written).await;
    // Every node reports its backlog and its failing store.
    let backlog = cluster
        .wait_until(Duration::from_secs(30), "every node to report failed flushes", |view| {
            let statuses: Vec<_> = view.statuses().collect();
            (statuses.len() == view.size
                && statuses
                    .iter()
                    .all(|s| s.store_flush_failures >= 2 && s.unflushed_entries > 0))
            .then(|| statuses.iter().map(|s| s.unflushed_entries).min().unwrap_or(0))
        })
        .await;
    assert!(
        backlog >= 60,
        "backlog of {backlog} entries, expected at least the 60 writes"
    );
    for id in cluster.ids() {
        let failures = cluster.log_events(id, "state store flush failed, will retry");
        assert!(
            failures.iter().any(|f| f["unflushed"].as_u64().is_some_and(|n| n > 0)),
            "node {id} traced no failed flush with its backlog: {failures:?}"
        );
        let text = cluster.log_text(id);
        assert!(text.contains(&uri), "node {id}'s traces do not name the server");
    }

    server.launch();
    cluster
        .wait_until(Duration::from_secs(40), "every node to flush its backlog", |view| {
            let statuses: Vec<_> = view.statuses().collect();
            (statuses.len() == view.size
                && statuses
                    .iter()
                    .all(|s| s.store_flush_failures == 0 && s.unflushed_entries == 0))
            .then_some(())
        })
        .await;
    for id in cluster.ids() {
        assert!(
            !cluster
                .log_events(id, "state store flushed again after failures")
                .is_empty(),
            "node {id} did not trace its recovery"
        );
        wait_store_holds(&mut cluster, &mongo, id, &written).await;
    }

    // And a crash of every node now recovers all of it from MongoDB and the logs.
    for id in cluster.ids() {
        cluster.kill(id);
    }
    for id in cluster.ids() {
        cluster.restart(id);
    }
    cluster.wait_for_leader(bound).await;
    assert_all_readable(&client, &written).await;
}

#[tokio::test]
async fn mongodb_unreachable_at_start_exits_naming_the_uri_without_password() {
    // Nothing listens on this port (it is held by no one once free_ports returns).
    let port = free_ports(1)[0];
    let uri = format!("mongodb://kvs:hunter2@127.0.0.1:{port}/?authSource=admin");
    let shown = format!("mongodb://kvs:****@127.0.0.1:{port}/?authSource=admin");
    let mut cluster = TestCluster::start_with_engine("mongo-unreachable", 1, Timers::default(), &engine(&uri));
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.is_running(1) {
        assert!(Instant::now() < deadline, "the node still runs 30 s after start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let exit = cluster.last_exit(1).expect("exit status");
    assert!(!exit.success(), "the node exited with {exit}");
    let text = cluster.log_text(1);
    assert!(
        text.contains("cannot reach MongoDB") && text.contains(&shown),
        "no message naming {shown}:\n{text}"
    );
    assert!(!text.contains("hunter2"), "the password is in the trace:\n{text}");

    // The same with the URI (and its password) from KVS_MONGODB_URI instead of the file.
    let from_env = format!("mongodb://env-user:s3cr%40t@127.0.0.1:{port}");
    let output = Command::new(integration::node_binary())
        .arg("--config")
        .arg(cluster.config_path())
        .args(["--id", "1"])
        .env("KVS_MONGODB_URI", &from_env)
        .stdin(Stdio::null())
        .output()
        .expect("run kvs-node");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("mongodb://env-user:****@127.0.0.1:{port}")),
        "no message naming the URI from the environment:\n{stderr}"
    );
    assert!(
        !stderr.contains("s3cr") && !stderr.contains("hunter2"),
        "a password is in the output:\n{stderr}"
    );
}
