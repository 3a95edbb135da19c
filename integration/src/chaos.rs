//! Fault injection with a linearizability check, in the manner of Jepsen and
//! etcd's robustness tests.
//!
//! A run starts a real cluster whose peer links all pass through fault
//! proxies, lets several clients (each its own connection and exactly-once
//! session) run a random mix of get, put and delete over a few keys, and
//! meanwhile a nemesis kills and restarts nodes (the leader favoured), pauses
//! them (SIGSTOP/SIGCONT), cuts links (one node isolated, the leader isolated,
//! one-way cuts, a bridge node, a cut and a kill at once), tears the tail of a node's write-ahead log
//! before restarting it, and restarts the whole cluster. Then everything is
//! healed, every key is read once more, and the history is checked:
//! linearizable per key (so no acknowledged write is lost and no read is
//! stale), at most one leader per term (from the nodes' own traces), no
//! node's commit or applied index ever went back within one process (from
//! status polls between faults), and some operations succeeded while faults
//! were active (a vacuous run fails).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{Client, ClientConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::linearizability::{check, Call, Operation, Outcome, Verdict};
use crate::proxy::LinkProxy;
use crate::{free_ports, TestCluster, Timers};

/// What one chaos [`run`] does.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The test cluster's name (see [`TestCluster::name`]).
    pub name: String,
    /// Seeds the nemesis's choices and, derived from it, each client's choice
    /// of operations and keys.
    pub seed: u64,
    /// How many nodes the cluster has.
    pub nodes: usize,
    /// How many concurrent clients issue operations.
    pub clients: usize,
    /// How many keys the clients share (`key0`, `key1`, ...): fewer keys, more contention.
    pub keys: usize,
    /// How long faults are injected.
    pub duration: Duration,
}

impl ChaosOptions {
    /// Three nodes, four clients, four keys and ten seconds of faults.
    pub fn new(name: &str, seed: u64) -> Self {
        ChaosOptions {
            name: name.to_string(),
            seed,
            nodes: 3,
            clients: 4,
            keys: 4,
            duration: Duration::from_secs(10),
        }
    }
}

/// One fault the nemesis injected, with when it was active (ns since the run began).
#[derive(Debug, Clone)]
pub struct FaultEvent {
    /// The kind of fault, e.g. `kill`, `isolate` or `torn-wal`.
    pub kind: &'static str,
    /// Which nodes or links it hit; empty for `restart-all`.
    pub detail: String,
    /// When the nemesis began injecting it, in ns since the run began.
    pub from: u64,
    /// When the nemesis had undone it, in ns since the run began.
    pub to: u64,
}

/// What one chaos [`run`] found.
#[derive(Debug)]
pub struct ChaosReport {
    /// The run's [`ChaosOptions::seed`].
    pub seed: u64,
    /// How many operations the history holds: the clients' (failed reads left
    /// out) and the final reads.
    pub operations: usize,
    /// How many of them got an answer (the rest have an unknown outcome).
    pub succeeded: usize,
    /// How many answered operations overlapped an active fault.
    pub succeeded_during_faults: usize,
    /// How many faults of each kind were injected.
    pub faults: BTreeMap<&'static str, usize>,
    /// Empty when the run passed.
    pub violations: Vec<String>,
    /// Where the nodes' data and traces were kept (only after a violation).
    pub kept: Option<PathBuf>,
}

impl ChaosReport {
    /// Whether the run found no violation.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A one-line summary: seed, counts, faults, and `ok` or the violations.
    pub fn line(&self) -> String {
        format!(
            "seed {}: {} ops, {} ok, {} ok during faults, faults {:?}: {}",
            self.seed,
            self.operations,
            self.succeeded,
            self.succeeded_during_faults,
            self.faults,
            if self.passed() {
                "ok".to_string()
            } else {
                format!("VIOLATION: {}", self.violations.join("; "))
            }
        )
    }
}

fn timers() -> Timers {
    Timers {
        heartbeat_interval_ms: 40,
        election_timeout_ms: 300,
        commit_interval_ms: 150,
        trim_interval_ms: 1000,
    }
}

struct Recorder {
    started: Instant,
    history: Mutex<Vec<Operation>>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }
}

fn worker_client(endpoints: Vec<String>) -> Client {
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::new(endpoints)
    };
    Client::new(config).expect("a client over the cluster's endpoints")
}

/// One client's random operations until `stop`. Returns the client (its
/// sessions have lived through every fault) and the definite refusals it got:
/// with valid keys and values, any is a defect.
async fn worker(
    id: usize,
    seed: u64,
    keys: usize,
    endpoints: Vec<String>,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> (Client, Vec<String>) {
    let client = worker_client(endpoints);
    let mut refusals = Vec::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut written = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("key{}", rng.gen_range(0..keys));
        let roll = rng.gen_range(0..10);
        let invoked = recorder.now();
        let (call, result) = match roll {
            0..=4 => (Call::Get, client.get(&key).await),
            5..=8 => {
                written += 1;
                let value = format!("c{id}-{written}");
                let result = client.put(&key, &value).await;
                (Call::Put(value), result)
            }
            _ => (Call::Delete, client.delete(&key).await),
        };
        let completed = recorder.now();
        if let Err(refusal @ crate::client::Error::Server(_)) = &result {
            refusals.push(format!("client {id}: {key}: {refusal}"));
        }
        let (outcome, completed) = match (result, &call) {
            (Ok(value), _) => (Outcome::Returned(value), Some(completed)),
            // A failed read changed nothing: leave it out.
            (Err(_), Call::Get) => continue,
            // A failed write may still have been applied.
            (Err(_), _) => (Outcome::Unknown, None),
        };
        let operation = Operation {
            client: id,
            key,
            call,
            outcome,
            invoked,
            completed,
        };
        if let Ok(mut history) = recorder.history.lock() {
            history.push(operation);
        }
    }
    (client, refusals)
}

/// Each node process's commit and applied indexes, which must never go back
/// while the process lives (a restart may resume from the store's flushed point).
#[derive(Default)]
struct Progress {
    seen: BTreeMap<(u64, u32), (u64, u64)>,
    samples: usize,
    violations: Vec<String>,
}

impl Progress {
    async fn observe(&mut self, cluster: &mut TestCluster) {
        let view = cluster.view().await;
        for node in view.nodes {
            let (Ok(status), Some(pid)) = (node.status, cluster.pid(node.id)) else {
                continue;
            };
            let now = (status.commit_index, status.applied_index);
            if let Some(&before) = self.seen.get(&(node.id, pid)) {
                if now.0 < before.0 || now.1 < before.1 {
                    self.violations.push(format!(
                        "node {} (pid {pid}) went back from commit/applied {before:?} to {now:?}",
                        node.id
                    ));
                }
            }
            self.seen.insert((node.id, pid), now);
            self.samples += 1;
        }
    }
}

struct Nemesis {
    rng: StdRng,
    proxies: BTreeMap<(u64, u64), LinkProxy>,
    events: Vec<FaultEvent>,
}

impl Nemesis {
    fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.unblock();
        }
    }

    fn cut(&self, from: u64, to: u64) {
        if let Some(proxy) = self.proxies.get(&(from, to)) {
            proxy.block();
        }
    }

    fn isolate(&self, node: u64, ids: &[u64]) {
        for &other in ids {
            if other != node {
                self.cut(node, other);
                self.cut(other, node);
            }
        }
    }

    /// Two different nodes, `from` and `to`, for a one-way cut.
    fn distinct_pair(&mut self, ids: &[u64]) -> (u64, u64) {
        let from = ids[self.rng.gen_range(0..ids.len())];
        let others: Vec<u64> = ids.iter().copied().filter(|&id| id != from).collect();
        (from, others[self.rng.gen_range(0..others.len())])
    }

    async fn leader_or_any(&mut self, cluster: &mut TestCluster) -> u64 {
        let running = cluster.running();
        let leader = cluster.view().await.leader().map(|s| s.node_id);
        match leader {
            Some(id) if self.rng.gen_bool(0.7) => id,
            _ if running.is_empty() => 1,
            _ => running[self.rng.gen_range(0..running.len())],
        }
    }

    /// Injects one fault, waits it out and undoes it.
    async fn strike(&mut self, cluster: &mut TestCluster, recorder: &Recorder) {
        let ids = cluster.ids();
        let timeout = Duration::from_millis(timers().election_timeout_ms);
        let from = recorder.now();
        let hold = Duration::from_millis(self.rng.gen_range(300..1500));
        let (kind, detail) = match self.rng.gen_range(0..9) {
            0 | 1 => {
                let victim = self.leader_or_any(cluster).await;
                cluster.kill(victim);
                tokio::time::sleep(hold).await;
                cluster.restart(victim);
                ("kill", format!("node {victim}"))
            }
            2 => {
                let victim = self.leader_or_any(cluster).await;
                let paused = cluster.pid(victim).map(|pid| signal(pid, "-STOP"));
                tokio::time::sleep(timeout * 2 + hold).await;
                if let Some(pid) = cluster.pid(victim) {
                    signal(pid, "-CONT");
                }
                ("pause", format!("node {victim} (stopped: {})", paused.unwrap_or(false)))
            }
            3 => {
                let victim = self.leader_or_any(cluster).await;
                self.isolate(victim, &ids);
                tokio::time::sleep(hold + timeout).await;
                self.heal();
                ("isolate", format!("node {victim}"))
            }
            4 => {
                let (a, b) = self.distinct_pair(&ids);
                self.cut(a, b);
                tokio::time::sleep(hold + timeout).await;
                self.heal();
                ("one-way", format!("{a} -/-> {b}"))
            }
            5 => {
                // A bridge: the others split in two halves that only the bridge joins.
                let bridge = ids[self.rng.gen_range(0..ids.len())];
                let others: Vec<u64> = ids.iter().copied().filter(|&i| i != bridge).collect();
                let (left, right) = others.split_at(others.len() / 2);
                for &a in left {
                    for &b in right {
                        self.cut(a, b);
                        self.cut(b, a);
                    }
                }
                tokio::time::sleep(hold + timeout).await;
                self.heal();
                ("bridge", format!("node {bridge} between {left:?} and {right:?}"))
            }
            6 => {
                let victim = ids[self.rng.gen_range(0..ids.len())];
                cluster.kill(victim);
                let cut = self.rng.gen_range(1..24u64);
                let torn = tear_tail(&cluster.wal_path(victim), cut);
                tokio::time::sleep(hold / 2).await;
                cluster.restart(victim);
                ("torn-wal", format!("node {victim}, last {cut} bytes cut: {torn}"))
            }
            7 => {
                // Two faults at once: a link cut one way, then the leader (or
                // any node) killed while the cut lasts.
                let (a, b) = self.distinct_pair(&ids);
                self.cut(a, b);
                tokio::time::sleep(hold / 2).await;
                let victim = self.leader_or_any(cluster).await;
                cluster.kill(victim);
                tokio::time::sleep(hold + timeout).await;
                cluster.restart(victim);
                tokio::time::sleep(hold / 2).await;
                self.heal();
                ("cut+kill", format!("{a} -/-> {b}, then node {victim} killed"))
            }
            _ => {
                for id in cluster.running() {
                    cluster.kill(id);
                }
                tokio::time::sleep(hold / 3).await;
                for id in ids {
                    cluster.restart(id);
                }
                ("restart-all", String::new())
            }
        };
        self.events.push(FaultEvent {
            kind,
            detail,
            from,
            to: recorder.now(),
        });
    }
}

fn signal(pid: u32, which: &str) -> bool {
    std::process::Command::new("kill")
        .arg(which)
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// Cuts the last `bytes` bytes of a WAL's records (a write torn by the crash).
fn tear_tail(path: &std::path::Path, bytes: u64) -> bool {
    let Ok(content) = std::fs::read(path) else { return false };
    let end = crate::wal_records(&content).last().map_or(0, |r| r.end) as u64;
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) else {
        return false;
    };
    file.set_len(end.saturating_sub(bytes)).is_ok()
}

/// One chaos run. Never panics on a violation: the report says what broke.
pub async fn run(options: &ChaosOptions) -> ChaosReport {
    let ids: Vec<u64> = (1..=options.nodes as u64).collect();
    let pairs: Vec<(u64, u64)> = ids
        .iter()
        .flat_map(|&a| ids.iter().filter(move |&&b| b != a).map(move |&b| (a, b)))
        .collect();
    let proxy_ports = free_ports(pairs.len());
    let routes: BTreeMap<(u64, u64), String> = pairs
        .iter()
        .zip(&proxy_ports)
        .map(|(&pair, port)| (pair, format!("127.0.0.1:{port}")))
        .collect();
    let mut cluster = TestCluster::start_routed(&options.name, options.nodes, timers(), &routes);
    let mut proxies = BTreeMap::new();
    for (&(from, to), listen) in &routes {
        let proxy = LinkProxy::start(listen, cluster.peer_endpoint(to))
            .await
            .unwrap_or_else(|e| panic!("fault proxy {from}->{to} on {listen}: {e}"));
        proxies.insert((from, to), proxy);
    }
    let bound = timers().election_bound() * 4;
    cluster.wait_for_leader(bound).await;

    let recorder = Arc::new(Recorder {
        started: Instant::now(),
        history: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..options.clients)
        .map(|id| {
            tokio::spawn(worker(
                id,
                options.seed.wrapping_mul(1000).wrapping_add(id as u64),
                options.keys,
                cluster.endpoints(),
                recorder.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let mut nemesis = Nemesis {
        rng: StdRng::seed_from_u64(options.seed),
        proxies,
        events: Vec::new(),
    };
    let mut progress = Progress::default();
    let deadline = Instant::now() + options.duration;
    while Instant::now() < deadline {
        let calm = Duration::from_millis(nemesis.rng.gen_range(100..700));
        tokio::time::sleep(calm).await;
        progress.observe(&mut cluster).await;
        nemesis.strike(&mut cluster, &recorder).await;
        progress.observe(&mut cluster).await;
    }

    // Heal everything, let the cluster settle, then stop the clients and read every key.
    nemesis.heal();
    for id in cluster.ids() {
        if !cluster.is_running(id) {
            cluster.restart(id);
        }
    }
    cluster.wait_for_leader(bound).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut clients = Vec::new();
    let mut refusals = Vec::new();
    for worker in workers {
        if let Ok((client, refused)) = worker.await {
            clients.push(client);
            refusals.extend(refused);
        }
    }
    let reader = worker_client(cluster.endpoints());
    progress.observe(&mut cluster).await;
    let mut violations = std::mem::take(&mut progress.violations);
    violations.extend(
        refusals
            .into_iter()
            .map(|r| format!("definite refusal of a valid request: {r}")),
    );
    // Permanent loss of availability: every client that lived through the
    // faults must write again once the cluster is healed.
    for (id, client) in clients.iter().enumerate() {
        if let Err(e) = client.put(&format!("after-heal-{id}"), "1").await {
            violations.push(format!("client {id} cannot write after healing: {e}"));
        }
    }
    if progress.samples == 0 {
        violations.push("no node status could be read during the run".into());
    }
    for k in 0..options.keys {
        let key = format!("key{k}");
        let invoked = recorder.now();
        match reader.get(&key).await {
            Ok(value) => {
                let completed = recorder.now();
                if let Ok(mut history) = recorder.history.lock() {
                    history.push(Operation {
                        client: usize::MAX,
                        key,
                        call: Call::Get,
                        outcome: Outcome::Returned(value),
                        invoked,
                        completed: Some(completed),
                    });
                }
            }
            Err(e) => violations.push(format!("final read of {key} failed after healing: {e}")),
        }
    }

    let history = recorder.history.lock().map(|h| h.clone()).unwrap_or_default();
    let in_fault = |op: &Operation| {
        let done = op.completed.unwrap_or(u64::MAX);
        nemesis.events.iter().any(|f| op.invoked < f.to && done > f.from)
    };
    let succeeded: Vec<&Operation> = history.iter().filter(|op| op.completed.is_some()).collect();
    let succeeded_during_faults = succeeded.iter().filter(|op| in_fault(op)).count();
    if succeeded_during_faults == 0 {
        violations.push("no operation succeeded while faults were active: the run proves nothing".into());
    }
    match check(&history, 20_000_000) {
        Verdict::Linearizable => {}
        Verdict::GaveUp { key } => violations.push(format!("linearizability of {key} could not be decided in budget")),
        Verdict::Violation { key, mut operations } => {
            operations.sort_by_key(|op| op.invoked);
            let first = operations.first().map_or(0, |op| op.invoked);
            let last = operations
                .iter()
                .map(|op| op.completed.unwrap_or(op.invoked))
                .max()
                .unwrap_or(0);
            let mut report = format!("history of {key} is not linearizable:");
            for op in &operations {
                report.push_str(&format!(
                    "\n    client {:>3} {:>9.3}ms..{:>9} {:?} -> {:?}",
                    op.client,
                    op.invoked as f64 / 1e6,
                    op.completed.map_or("?".into(), |c| format!("{:.3}ms", c as f64 / 1e6)),
                    op.call,
                    op.outcome
                ));
            }
            report.push_str("\n  faults overlapping it:");
            for fault in nemesis.events.iter().filter(|f| f.from < last && f.to > first) {
                report.push_str(&format!(
                    "\n    {:>9.3}ms..{:>9.3}ms {} {}",
                    fault.from as f64 / 1e6,
                    fault.to as f64 / 1e6,
                    fault.kind,
                    fault.detail
                ));
            }
            violations.push(report);
        }
    }
    let doubles: Vec<_> = cluster
        .leaders_by_term()
        .into_iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .collect();
    if !doubles.is_empty() {
        violations.push(format!("terms with two leaders: {doubles:?}"));
    }
    let mut faults = BTreeMap::new();
    for event in &nemesis.events {
        *faults.entry(event.kind).or_default() += 1;
    }
    let kept = (!violations.is_empty()).then(|| cluster.keep_folder());
    ChaosReport {
        seed: options.seed,
        operations: history.len(),
        succeeded: succeeded.len(),
        succeeded_during_faults,
        faults,
        violations,
        kept,
    }
}
