//! Harness of the kvs integration suite: real `kvs-node` processes on loopback.
//!
//! A [`TestCluster`] owns a temporary folder (its `cluster.toml`, every node's
//! data and every node's JSON trace file), a set of free loopback ports and one
//! child process per running node. Dropping it kills every child, so no process
//! outlives its test, even one that panics; after a panic the folder is kept
//! and its path printed, with the tail of every node's trace.
//!
//! Every wait is bounded and, when it gives up, panics with the status of every
//! node.
//!
//! Environment:
//! - `KVS_NODE_BIN`: the `kvs-node` to run (default: `target/<profile>/kvs-node`
//!   beside the test executable);
//! - `KVS_IT_KEEP`: keep every cluster's folder, not only failed ones;
//! - `KVS_IT_RUST_LOG`: the nodes' `RUST_LOG` (default `info`; the tests read
//!   info-level traces, so keep at least that).

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use client::{Client, ClientConfig};
use futures::StreamExt;
use protocol::{NodeStatus, Role};
use rand::Rng;
use tempfile::TempDir;

pub mod chaos;
pub mod linearizability;
pub mod proxy;
pub mod raw;
pub mod scenarios;

pub use client;
pub use protocol;

/// How often waits poll the nodes' status.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// How long a node has to exit after SIGTERM before it is killed and the test fails.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one operation of the clients handed to tests, retries included.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster's timers, in milliseconds. The defaults are short so tests are fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// How often the leader sends heartbeats (`cluster.heartbeat_interval_ms`).
    pub heartbeat_interval_ms: u64,
    /// How long a follower waits for a leader (plus up to 50% jitter) before it starts an
    /// election (`cluster.election_timeout_ms`); must exceed the heartbeat interval.
    pub election_timeout_ms: u64,
    /// How often each node flushes applied changes to its state store
    /// (`cluster.commit_interval_ms`).
    pub commit_interval_ms: u64,
    /// How often the leader trims the logs up to what every live node has
    /// flushed (`cluster.trim_interval_ms`).
    pub trim_interval_ms: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            heartbeat_interval_ms: 50,
            election_timeout_ms: 400,
            commit_interval_ms: 200,
            trim_interval_ms: 1000,
        }
    }
}

impl Timers {
    /// The election timeout as a [`Duration`] (without the nodes' jitter).
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.election_timeout_ms)
    }

    /// A generous bound for electing a leader: ten election timeouts (a few
    /// split votes and a slow, shared CI machine fit in it).
    pub fn election_bound(&self) -> Duration {
        self.election_timeout() * 10
    }
}

/// The state store engine of a test cluster's nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Engine {
    /// redb, in each node's data folder.
    #[default]
    Embedded,
    /// MongoDB at `uri`: node N uses database `<database_prefix>_<cluster id>_<N>`.
    MongoDb {
        /// The MongoDB connection string (`storage.uri`).
        uri: String,
        /// The start of every node's database name (`storage.database_prefix`).
        database_prefix: String,
        /// The nodes' `storage.timeout_ms`.
        timeout_ms: u64,
    },
}

impl Engine {
    /// The `[storage]` section of the cluster file.
    fn storage_section(&self) -> String {
        match self {
            Engine::Embedded => "[storage]\nengine = \"embedded\"\n".to_string(),
            Engine::MongoDb {
                uri,
                database_prefix,
                timeout_ms,
            } => format!(
                "[storage]\nengine = \"mongodb\"\nuri = {uri:?}\ndatabase_prefix = {database_prefix:?}\n\
                 timeout_ms = {timeout_ms}\n"
            ),
        }
    }
}

/// Whether this runs under CI (`CI` set), where tests that need a service fail instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `found`, or None (the test is skipped) when `what` is missing outside CI;
/// under CI a missing service fails the test.
pub fn required_mongodb<T>(found: Option<T>, what: &str) -> Option<T> {
    if found.is_none() {
        assert!(!in_ci(), "{what}: CI must run the MongoDB tests (see .ci/run)");
        eprintln!(
            "skipped: {what}; to run the MongoDB tests: \
             . .ci/nx27017.sh && start_nx27017 && cargo test --release -p integration --test mongodb --test store_contract"
        );
    }
    found
}

/// The MongoDB server of the tests, `KVS_TEST_MONGODB_URI` (see [`required_mongodb`]).
pub fn test_mongodb_uri() -> Option<String> {
    required_mongodb(
        std::env::var("KVS_TEST_MONGODB_URI").ok().filter(|u| !u.is_empty()),
        "KVS_TEST_MONGODB_URI is not set",
    )
}

/// Where the `kvs-node` binary is: `KVS_NODE_BIN`, or beside the test
/// executable's `deps/` folder (`target/<profile>/kvs-node`).
pub fn node_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KVS_NODE_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "KVS_NODE_BIN is set to {}, which is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("the test executable has a folder");
    let name = format!("kvs-node{}", std::env::consts::EXE_SUFFIX);
    // Tests run from target/<profile>/deps/, binaries such as `chaos` from target/<profile>/.
    let beside = dir.join(&name);
    let candidate = if beside.is_file() {
        beside
    } else {
        dir.join("..").join(&name)
    };
    assert!(
        candidate.is_file(),
        "the kvs-node binary is not at {}: run `cargo build -p node` or `cargo test --workspace` first \
         (or set KVS_NODE_BIN)",
        candidate.display()
    );
    candidate
}

/// The trace filter of the nodes: `KVS_IT_RUST_LOG` if set (e.g. `debug` to
/// look into a failure), else `info`, which the tests' trace checks need.
fn node_log_filter() -> String {
    std::env::var("KVS_IT_RUST_LOG").unwrap_or_else(|_| "info".to_string())
}

/// Ports handed out by this process, so two clusters of one test binary never share one.
static PORTS_IN_USE: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
static CLUSTER_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The first port of the kernel's ephemeral range (outgoing connections take their
/// local port from it), if readable.
fn ephemeral_low() -> Option<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// `count` distinct free loopback ports, all held (bound) until every one is chosen.
///
/// Ports are taken below the kernel's ephemeral range when it is known: a port
/// from that range, released while its node is down for a restart, could be
/// taken meanwhile as the local port of some outgoing connection, and the node
/// would then fail to start. Elsewhere, the kernel picks (`127.0.0.1:0`).
pub fn free_ports(count: usize) -> Vec<u16> {
    let mut guard = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    let taken = guard.get_or_insert_with(HashSet::new);
    let mut held: Vec<TcpListener> = Vec::new();
    let mut ports = Vec::new();
    let range = match ephemeral_low() {
        Some(low) if low > 12_000 => Some(10_000..low),
        _ => None,
    };
    let mut rng = rand::thread_rng();
    let mut attempts = 0;
    while ports.len() < count {
        attempts += 1;
        assert!(attempts < 10_000, "cannot find {count} free loopback ports");
        let listener = match &range {
            Some(range) => {
                let port = rng.gen_range(range.clone());
                if taken.contains(&port) {
                    continue;
                }
                match TcpListener::bind(("127.0.0.1", port)) {
                    Ok(listener) => listener,
                    Err(_) => continue,
                }
            }
            None => TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"),
        };
        let port = listener.local_addr().expect("local address").port();
        if taken.contains(&port) {
            continue;
        }
        held.push(listener);
        ports.push(port);
    }
    taken.extend(&ports);
    drop(held);
    ports
}

struct Node {
    id: u64,
    client_addr: String,
    peer_addr: String,
    resp_addr: String,
    child: Option<Child>,
    last_exit: Option<ExitStatus>,
}

/// A cluster of `kvs-node` processes; see the crate documentation.
pub struct TestCluster {
    name: String,
    cluster_id: String,
    dir: Option<TempDir>,
    root: PathBuf,
    config_path: PathBuf,
    /// Per-node cluster files, when peer links are routed through proxies.
    node_configs: BTreeMap<u64, PathBuf>,
    timers: Timers,
    nodes: Vec<Node>,
    binary: PathBuf,
    status_client: Client,
}

impl TestCluster {
    /// Writes the cluster file and starts nodes `1..=n_nodes`. Does not wait for a leader.
    pub fn start(name: &str, n_nodes: usize, timers: Timers) -> TestCluster {
        Self::start_routed(name, n_nodes, timers, &BTreeMap::new())
    }

    /// Like [`TestCluster::start`], but node `a` reaches node `b`'s peer port at
    /// `routes[(a, b)]` where given (a fault proxy the caller starts), so each
    /// node gets a cluster file of its own.
    pub fn start_routed(
        name: &str,
        n_nodes: usize,
        timers: Timers,
        routes: &BTreeMap<(u64, u64), String>,
    ) -> TestCluster {
        Self::launch(name, n_nodes, timers, routes, &Engine::Embedded)
    }

    /// Like [`TestCluster::start`], with the nodes' state store engine chosen.
    pub fn start_with_engine(name: &str, n_nodes: usize, timers: Timers, engine: &Engine) -> TestCluster {
        Self::launch(name, n_nodes, timers, &BTreeMap::new(), engine)
    }

    fn launch(
        name: &str,
        n_nodes: usize,
        timers: Timers,
        routes: &BTreeMap<(u64, u64), String>,
        engine: &Engine,
    ) -> TestCluster {
        assert!(n_nodes > 0, "a cluster needs a node");
        let binary = node_binary();
        let dir = tempfile::Builder::new()
            .prefix(&format!("kvs-it-{name}-"))
            .tempdir()
            .expect("create the cluster's temporary folder");
        let root = dir.path().to_path_buf();
        let cluster_id = format!(
            "it-{name}-{}-{}-{:08x}",
            std::process::id(),
            CLUSTER_COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::thread_rng().gen::<u32>()
        );
        let ports = free_ports(3 * n_nodes);
        let nodes: Vec<Node> = (0..n_nodes)
            .map(|k| Node {
                id: k as u64 + 1,
                client_addr: format!("127.0.0.1:{}", ports[3 * k]),
                peer_addr: format!("127.0.0.1:{}", ports[3 * k + 1]),
                resp_addr: format!("127.0.0.1:{}", ports[3 * k + 2]),
                child: None,
                last_exit: None,
            })
            .collect();

        let text = format!(
            "[cluster]\nid = \"{cluster_id}\"\ndata_dir = {data:?}\ncommit_interval_ms = {}\n\
             heartbeat_interval_ms = {}\nelection_timeout_ms = {}\ntrim_interval_ms = {}\n\n{storage}",
            timers.commit_interval_ms,
            timers.heartbeat_interval_ms,
            timers.election_timeout_ms,
            timers.trim_interval_ms,
            data = root.join("data").display().to_string(),
            storage = engine.storage_section(),
        );
        let members_as_seen_by = |viewer: Option<u64>| {
            let mut members = String::new();
            for node in &nodes {
                let peer_addr = viewer
                    .and_then(|v| routes.get(&(v, node.id)))
                    .unwrap_or(&node.peer_addr);
                members.push_str(&format!(
                    "\n[[nodes]]\nid = {}\nclient_addr = \"{}\"\npeer_addr = \"{}\"\nresp_addr = \"{}\"\n",
                    node.id, node.client_addr, peer_addr, node.resp_addr
                ));
            }
            members
        };
        let config_path = root.join("cluster.toml");
        std::fs::write(&config_path, format!("{text}{}", members_as_seen_by(None))).expect("write cluster.toml");
        let mut node_configs = BTreeMap::new();
        if !routes.is_empty() {
            for node in &nodes {
                let path = root.join(format!("cluster-{}.toml", node.id));
                std::fs::write(&path, format!("{text}{}", members_as_seen_by(Some(node.id))))
                    .expect("write a node's cluster file");
                node_configs.insert(node.id, path);
            }
        }

        let endpoints = nodes.iter().map(|n| n.client_addr.clone()).collect();
        let status_client = Client::new(ClientConfig {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
            ..ClientConfig::new(endpoints)
        })
        .expect("status client");

        let mut cluster = TestCluster {
            name: name.to_string(),
            cluster_id,
            dir: Some(dir),
            root,
            config_path,
            node_configs,
            timers,
            nodes,
            binary,
            status_client,
        };
        for id in cluster.ids() {
            cluster.spawn(id);
        }
        cluster
    }

    /// The name given at start, used in the folder's name, the cluster id and panics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `cluster.id` of the cluster file: the name made unique per process and cluster.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The timers written to the cluster file.
    pub fn timers(&self) -> Timers {
        self.timers
    }

    /// The cluster's temporary folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The shared cluster file, `cluster.toml` in the folder (nodes behind proxies
    /// are started with a cluster file of their own instead).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The ids of every node, running or not: `1..=n_nodes`.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// How many nodes the cluster has, running or not.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("cluster {} has no node {id}", self.name))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        let name = self.name.clone();
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("cluster {name} has no node {id}"))
    }

    /// The client address of node `id`.
    pub fn endpoint(&self, id: u64) -> String {
        self.node(id).client_addr.clone()
    }

    /// The Redis-protocol address of node `id`.
    pub fn resp_endpoint(&self, id: u64) -> String {
        self.node(id).resp_addr.clone()
    }

    /// The peer address of node `id`.
    pub fn peer_endpoint(&self, id: u64) -> String {
        self.node(id).peer_addr.clone()
    }

    /// The client address of every node, in id order.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.client_addr.clone()).collect()
    }

    /// Node `id`'s data folder, `data/<id>` in the cluster's folder.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.root.join("data").join(id.to_string())
    }

    /// Node `id`'s write-ahead log file, `wal.log` in its data folder.
    pub fn wal_path(&self, id: u64) -> PathBuf {
        self.data_dir(id).join("wal.log")
    }

    /// Node `id`'s trace file (its stderr, appended to across restarts).
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.root.join(format!("node-{id}.log"))
    }

    fn spawn(&mut self, id: u64) {
        let log_path = self.log_path(id);
        let config = self.node_configs.get(&id).unwrap_or(&self.config_path).clone();
        let binary = self.binary.clone();
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} is already running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open the node's trace file");
        // A marker between runs, for whoever reads the file after a failure.
        let _ = writeln!(
            log,
            "{{\"harness\":\"starting node {id}\",\"fields\":{{\"message\":\"(harness) process start\"}}}}"
        );
        let mut command = Command::new(&binary);
        command
            .arg("--config")
            .arg(&config)
            .arg("--id")
            .arg(id.to_string())
            .arg("--log-format")
            .arg("json")
            .env("RUST_LOG", node_log_filter())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // The environment overrides the cluster file (KVS_CLUSTER__...): keep the test's out.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("KVS_") {
                command.env_remove(key);
            }
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} for node {id}: {e}", binary.display()));
        node.child = Some(child);
        node.last_exit = None;
    }

    /// Whether node `id`'s process is running (reaps it if it exited).
    pub fn is_running(&mut self, id: u64) -> bool {
        let node = self.node_mut(id);
        let Some(child) = node.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                node.last_exit = Some(status);
                node.child = None;
                false
            }
            Err(e) => panic!("cannot check node {id}'s process: {e}"),
        }
    }

    /// The ids of the nodes whose process is running.
    pub fn running(&mut self) -> Vec<u64> {
        self.ids().into_iter().filter(|&id| self.is_running(id)).collect()
    }

    /// How node `id`'s last process ended, once it has.
    pub fn last_exit(&mut self, id: u64) -> Option<ExitStatus> {
        self.is_running(id);
        self.node(id).last_exit
    }

    /// The process id of node `id`'s last started process; None once it has been
    /// reaped (killed, stopped, or found exited). Does not check whether it still runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(Child::id)
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("kill: node {id} is not running"));
        let _ = child.kill();
        let status = child.wait().expect("reap a killed node");
        node.last_exit = Some(status);
    }

    /// SIGTERMs node `id` and waits (at most [`STOP_TIMEOUT`]) for it to exit.
    pub fn stop(&mut self, id: u64) -> ExitStatus {
        let pid = self.pid(id).unwrap_or_else(|| panic!("stop: node {id} is not running"));
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run `kill -TERM`");
        assert!(sent.success(), "`kill -TERM {pid}` failed for node {id}");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if !self.is_running(id) {
                return self.node(id).last_exit.expect("exit status recorded");
            }
            if Instant::now() >= deadline {
                self.kill(id);
                panic!("node {id} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts node `id` again (SIGKILLing it first if it is running). It recovers from its data folder.
    pub fn restart(&mut self, id: u64) {
        if self.is_running(id) {
            self.kill(id);
        }
        self.spawn(id);
    }

    /// A client over every node's endpoint.
    pub fn client(&self) -> Client {
        self.client_for(&self.ids())
    }

    /// A client over the endpoints of `ids`, in that order.
    pub fn client_for(&self, ids: &[u64]) -> Client {
        let endpoints = ids.iter().map(|&id| self.endpoint(id)).collect();
        Client::new(client_config(endpoints)).expect("client over the cluster's endpoints")
    }

    /// Node `id`'s own status (no redirect), within a second.
    pub async fn status(&self, id: u64) -> Result<NodeStatus, client::Error> {
        self.status_client.status(&self.endpoint(id)).await
    }

    /// The status of every node whose process runs, asked concurrently.
    pub async fn view(&mut self) -> ClusterView {
        let running: Vec<(u64, bool)> = self.ids().into_iter().map(|id| (id, self.is_running(id))).collect();
        let this = &*self;
        let asks = running.into_iter().map(|(id, alive)| async move {
            let status = if alive {
                this.status(id).await.map_err(|e| e.to_string())
            } else {
                let exit = this.node(id).last_exit;
                Err(match exit {
                    Some(status) => format!("not running ({status})"),
                    None => "not running".to_string(),
                })
            };
            NodeState { id, alive, status }
        });
        ClusterView {
            size: self.nodes.len(),
            nodes: futures::future::join_all(asks).await,
        }
    }

    /// Polls the cluster until `check` returns `Some`, or panics after `timeout`
    /// with `what` and every node's status.
    pub async fn wait_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&ClusterView) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            let view = self.view().await;
            if let Some(found) = check(&view) {
                return found;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "cluster {}: timed out after {:?} waiting for {what}\n{view}",
                    self.name,
                    start.elapsed()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits for a leader that a majority of the cluster follows; returns its id and term.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> (u64, u64) {
        self.wait_until(timeout, "a leader followed by a majority", |view| {
            view.leader().map(|s| (s.node_id, s.term))
        })
        .await
    }

    /// Waits for a leader other than `old` in a term above `old_term`.
    pub async fn wait_for_new_leader(&mut self, old: u64, old_term: u64, timeout: Duration) -> (u64, u64) {
        let what = format!("a leader other than node {old}, in a term above {old_term}");
        self.wait_until(timeout, &what, |view| {
            view.leader()
                .filter(|s| s.node_id != old && s.term > old_term)
                .map(|s| (s.node_id, s.term))
        })
        .await
    }

    /// Waits until node `id` has applied everything the leader has committed
    /// (as seen in one poll); returns the node's status.
    pub async fn wait_caught_up(&mut self, id: u64, timeout: Duration) -> NodeStatus {
        let what = format!("node {id} to apply everything the leader committed");
        self.wait_until(timeout, &what, |view| {
            let leader = view.leader()?;
            let node = view.status(id)?;
            (node.applied_index >= leader.commit_index && node.term == leader.term).then(|| node.clone())
        })
        .await
    }

    /// Node `id`'s trace file as text (empty if it does not exist yet).
    pub fn log_text(&self, id: u64) -> String {
        match std::fs::read(self.log_path(id)) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("cannot read node {id}'s trace file: {e}"),
        }
    }

    /// Node `id`'s trace lines that parse as JSON objects.
    pub fn log_lines(&self, id: u64) -> Vec<serde_json::Value> {
        self.log_text(id)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(serde_json::Value::is_object)
            .collect()
    }

    /// The `fields` of node `id`'s trace lines whose message is `message`.
    pub fn log_events(&self, id: u64, message: &str) -> Vec<serde_json::Value> {
        self.log_lines(id)
            .into_iter()
            .filter(|line| line["fields"]["message"] == message)
            .map(|line| line["fields"].clone())
            .collect()
    }

    /// Every node's own trace of becoming leader: term -> the nodes that led it.
    /// Panics on a `role changed` line without a numeric term (a trace format change).
    pub fn leaders_by_term(&self) -> BTreeMap<u64, std::collections::BTreeSet<u64>> {
        let mut leaders: BTreeMap<u64, std::collections::BTreeSet<u64>> = BTreeMap::new();
        for id in self.ids() {
            for fields in self.log_events(id, "role changed") {
                if fields["role"] != "leader" {
                    continue;
                }
                let term = fields["term"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("node {id}: a `role changed` line without a numeric term: {fields}"));
                leaders.entry(term).or_default().insert(id);
            }
        }
        leaders
    }

    /// Keeps the cluster's folder (config, data, traces) after the cluster is dropped.
    pub fn keep_folder(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.root.clone()
    }

    /// The last `count` lines of node `id`'s trace file.
    pub fn log_tail(&self, id: u64, count: usize) -> String {
        let text = self.log_text(id);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(count)..].join("\n")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let failed = std::thread::panicking();
        if failed || std::env::var_os("KVS_IT_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!(
                    "cluster {}{}: its folder (config, data, traces) is kept at {}",
                    self.name,
                    if failed { " failed" } else { "" },
                    path.display()
                );
            }
        }
        if failed {
            for id in self.ids() {
                eprintln!("--- last lines of node {id}'s trace ---\n{}", self.log_tail(id, 15));
            }
        }
    }
}

/// The configuration of the clients handed to tests.
pub fn client_config(endpoints: Vec<String>) -> ClientConfig {
    ClientConfig {
        request_timeout: CLIENT_REQUEST_TIMEOUT,
        ..ClientConfig::new(endpoints)
    }
}

/// One node in a [`ClusterView`].
#[derive(Debug, Clone)]
pub struct NodeState {
    /// The node's id.
    pub id: u64,
    /// Whether its process was running when polled.
    pub alive: bool,
    /// Its own status, or why there is none (the request's error, or that the
    /// process is not running and how it ended).
    pub status: Result<NodeStatus, String>,
}

/// The status of every node at one poll.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// How many nodes the cluster has, down ones included: the base of a majority.
    pub size: usize,
    /// Every node, in id order.
    pub nodes: Vec<NodeState>,
}

impl ClusterView {
    /// Node `id`'s status, if it answered.
    pub fn status(&self, id: u64) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.id == id)?.status.as_ref().ok()
    }

    /// The status of every node that answered.
    pub fn statuses(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes.iter().filter_map(|n| n.status.as_ref().ok())
    }

    /// The leader of the highest term that some node leads, if a majority of
    /// the cluster (itself included) is in that term and names it as leader.
    pub fn leader(&self) -> Option<&NodeStatus> {
        let leader = self
            .statuses()
            .filter(|s| s.role == Role::Leader)
            .max_by_key(|s| s.term)?;
        let followers = self
            .statuses()
            .filter(|s| s.term == leader.term && s.leader_id == Some(leader.node_id))
            .count();
        (followers > self.size / 2).then_some(leader)
    }
}

impl fmt::Display for ClusterView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for node in &self.nodes {
            match &node.status {
                Ok(s) => writeln!(
                    f,
                    "  node {}: {} term {} leader {:?} commit {} applied {} flushed {} log {}..={}",
                    node.id,
                    s.role,
                    s.term,
                    s.leader_id,
                    s.commit_index,
                    s.applied_index,
                    s.flushed_index,
                    s.log_first_index,
                    s.log_last_index
                )?,
                Err(e) => writeln!(
                    f,
                    "  node {}: {} ({e})",
                    node.id,
                    if node.alive { "no status" } else { "down" }
                )?,
            }
        }
        Ok(())
    }
}

/// Writes `key -> value` for every pair, up to 16 at a time; panics on the
/// first failure. Returns what was acknowledged (all of it).
pub async fn put_all(client: &Client, pairs: Vec<(String, String)>) -> BTreeMap<String, String> {
    let results: Vec<_> = futures::stream::iter(pairs.into_iter().map(|(key, value)| async move {
        let result = client.put(&key, &value).await;
        (key, value, result)
    }))
    .buffer_unordered(16)
    .collect()
    .await;
    let mut written = BTreeMap::new();
    for (key, value, result) in results {
        if let Err(e) = result {
            panic!("put {key:?} failed: {e}");
        }
        written.insert(key, value);
    }
    written
}

/// One key/value pair per number in `range`, named after `prefix` (`<prefix>-00042`).
pub fn pairs(prefix: &str, range: std::ops::Range<usize>) -> Vec<(String, String)> {
    range
        .map(|i| (format!("{prefix}-{i:05}"), format!("value of {prefix} number {i}")))
        .collect()
}

/// Reads every key (up to 16 at a time) and panics listing those that are
/// missing or differ.
pub async fn assert_all_readable(client: &Client, expected: &BTreeMap<String, String>) {
    let results: Vec<_> = futures::stream::iter(expected.iter().map(|(key, value)| async move {
        let got = client.get(key).await;
        (key, value, got)
    }))
    .buffer_unordered(16)
    .collect()
    .await;
    let mut wrong = Vec::new();
    for (key, value, got) in results {
        match got {
            Ok(Some(v)) if v == *value => {}
            Ok(other) => wrong.push(format!("{key}: expected {value:?}, read {other:?}")),
            Err(e) => wrong.push(format!("{key}: read failed: {e}")),
        }
    }
    wrong.sort();
    assert!(
        wrong.is_empty(),
        "{} of {} acknowledged keys are wrong, e.g.:\n{}",
        wrong.len(),
        expected.len(),
        wrong.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The resident memory of process `pid` in KiB, where `/proc` tells it.
pub fn resident_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The byte range of every whole record of a WAL file, each
/// `[u32 LE length][u32 LE CRC-32][payload]`, up to the zero length that ends
/// them: the rest of a healthy file is zeroed preallocation.
pub fn wal_records(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    let mut pos = 0;
    while let Some(header) = bytes.get(pos..pos + 8) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let end = pos + 8 + len;
        if len == 0 || end > bytes.len() {
            break;
        }
        found.push(pos..end);
        pos = end;
    }
    found
}

/// Opens a file for reading and writing, for tests that damage a node's files.
pub fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}
