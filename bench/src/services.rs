//! The servers `kvs-bench compare` starts on loopback: a 3-node kvs, a
//! 3-member etcd, and Redis with an append-only file. Each lives in a folder
//! of its own under the comparison's work folder and is killed when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

/// How long a server gets to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Child processes that are killed when this is dropped.
pub struct Processes {
    name: String,
    children: Vec<Child>,
}

impl Processes {
    fn new(name: &str) -> Processes {
        Processes {
            name: name.to_string(),
            children: Vec::new(),
        }
    }

    fn spawn(&mut self, mut command: Command, log: &Path) -> anyhow::Result<()> {
        let out = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let program = format!("{:?}", command.as_std().get_program());
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {program} for {}", self.name))?;
        self.children.push(child);
        Ok(())
    }

    /// Fails if a child has exited (it would not answer anyway).
    fn check_running(&mut self, logs: &Path) -> anyhow::Result<()> {
        for child in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited early ({status}); see the logs in {}",
                    self.name,
                    logs.display()
                );
            }
        }
        Ok(())
    }

    /// Kills every child and waits for it.
    pub async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `ready` succeeds, checking that the processes still run.
async fn wait_ready<F, Fut>(processes: &mut Processes, logs: &Path, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        processes.check_running(logs)?;
        let attempt = tokio::time::timeout(Duration::from_secs(5), ready()).await;
        match attempt {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if Instant::now() >= deadline => {
                return Err(e.context(format!("{} did not become ready in {START_TIMEOUT:?}", processes.name)))
            }
            Err(_) if Instant::now() >= deadline => {
                bail!("{} did not become ready in {START_TIMEOUT:?}", processes.name)
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A program on `PATH` or at an absolute path.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.is_absolute() {
        return path.is_file().then(|| path.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

// ----- kvs -----

/// The `kvs-node` binary: `KVS_NODE_BIN`, or beside this executable.
pub fn kvs_node_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("KVS_NODE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot find kvs-bench's own path")?;
    let beside = exe.with_file_name(format!("kvs-node{}", std::env::consts::EXE_SUFFIX));
    if beside.is_file() {
        Ok(beside)
    } else {
        bail!(
            "kvs-node is not beside kvs-bench ({}): build it with `cargo build --release -p node`, or set KVS_NODE_BIN",
            beside.display()
        )
    }
}

/// Starts a 3-node kvs cluster with the embedded engine and default
/// durability (fsync before every acknowledgement, default commit and trim
/// intervals). Only the heartbeat and election timers are shortened, so that
/// the first leader is elected in seconds rather than after 8 s or more.
/// Returns the processes and the client addresses.
pub async fn start_kvs(work: &Path) -> anyhow::Result<(Processes, Vec<String>)> {
    let binary = kvs_node_binary()?;
    let dir = work.join("kvs");
    std::fs::create_dir_all(&dir)?;
    let mut text = format!(
        "[cluster]\nid = \"kvs-bench\"\ndata_dir = {:?}\nheartbeat_interval_ms = 500\nelection_timeout_ms = 2000\n\n\
         [storage]\nengine = \"embedded\"\n",
        dir.join("data").display().to_string()
    );
    let mut endpoints = Vec::new();
    for id in 1..=3 {
        let client = format!("127.0.0.1:{}", free_port()?);
        let peer = format!("127.0.0.1:{}", free_port()?);
        text.push_str(&format!(
            "\n[[nodes]]\nid = {id}\nclient_addr = \"{client}\"\npeer_addr = \"{peer}\"\n"
        ));
        endpoints.push(client);
    }
    let config = dir.join("cluster.toml");
    std::fs::write(&config, text)?;
    let mut processes = Processes::new("kvs");
    for id in 1..=3 {
        let mut command = Command::new(&binary);
        command
            .arg("--config")
            .arg(&config)
            .arg("--id")
            .arg(id.to_string())
            .env("RUST_LOG", "warn");
        processes.spawn(command, &dir.join(format!("node-{id}.log")))?;
    }
    let probe = endpoints.clone();
    wait_ready(&mut processes, &dir, || {
        let endpoints = probe.clone();
        async move {
            let client = client::Client::connect(client::ClientConfig::new(endpoints)).await?;
            client.put("kvs-bench-ready", "1").await?;
            Ok(())
        }
    })
    .await?;
    Ok((processes, endpoints))
}

// ----- etcd -----

/// Starts a 3-member etcd on loopback with its default durability (fsync of
/// its WAL before a write is acknowledged). Returns the client URLs.
pub async fn start_etcd(work: &Path, program: &Path) -> anyhow::Result<(Processes, Vec<String>)> {
    let dir = work.join("etcd");
    std::fs::create_dir_all(&dir)?;
    let members: Vec<(String, u16, u16)> = (1..=3)
        .map(|i| Ok((format!("m{i}"), free_port()?, free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let initial_cluster = members
        .iter()
        .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut processes = Processes::new("etcd");
    for (name, client, peer) in &members {
        let mut command = Command::new(program);
        command
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(dir.join(name))
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{client}"))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{client}"))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{peer}"))
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("kvs-bench");
        processes.spawn(command, &dir.join(format!("{name}.log")))?;
    }
    let endpoints: Vec<String> = members
        .iter()
        .map(|(_, client, _)| format!("http://127.0.0.1:{client}"))
        .collect();
    let probe = endpoints.clone();
    wait_ready(&mut processes, &dir, || {
        let endpoints = probe.clone();
        async move {
            let mut client = crate::target::connect_etcd(&endpoints).await?;
            crate::target::Session::put(&mut client, "kvs-bench-ready", "1").await?;
            Ok(())
        }
    })
    .await?;
    Ok((processes, endpoints))
}

// ----- Redis -----

/// Starts Redis with `appendonly yes` and `appendfsync <fsync>` (`always` or
/// `everysec`), no RDB snapshots. Returns its URL.
pub async fn start_redis(work: &Path, program: &Path, fsync: &str) -> anyhow::Result<(Processes, String)> {
    let dir = work.join(format!("redis-{fsync}"));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let mut processes = Processes::new(&format!("redis (appendfsync {fsync})"));
    let mut command = Command::new(program);
    command
        .arg("--port")
        .arg(port.to_string())
        .arg("--bind")
        .arg("127.0.0.1")
        .arg("--dir")
        .arg(&dir)
        .arg("--appendonly")
        .arg("yes")
        .arg("--appendfsync")
        .arg(fsync)
        .arg("--save")
        .arg("")
        .arg("--daemonize")
        .arg("no");
    processes.spawn(command, &dir.join("redis.log"))?;
    let url = format!("redis://127.0.0.1:{port}/");
    let probe = url.clone();
    wait_ready(&mut processes, &dir, || {
        let url = probe.clone();
        async move {
            let client = redis::Client::open(url.as_str())?;
            let mut connection = client.get_multiplexed_async_connection().await?;
            let () = redis::cmd("SET")
                .arg("kvs-bench-ready")
                .arg("1")
                .query_async(&mut connection)
                .await?;
            Ok(())
        }
    })
    .await?;
    Ok((processes, url))
}

// ----- the machine's floor -----

/// Latency figures of a probe, in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub count: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Latency {
    fn from_micros(mut micros: Vec<f64>) -> Latency {
        micros.sort_by(f64::total_cmp);
        let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize];
        Latency {
            count: micros.len(),
            mean_us: micros.iter().sum::<f64>() / micros.len() as f64,
            p50_us: at(0.5),
            p99_us: at(0.99),
        }
    }
}

/// How the fsync probe writes before each `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncProbe {
    /// Appends to the file: the size changes, so the inode is written too
    /// (the usual way to measure a disk for a log, as etcd's docs do with fio).
    Append,
    /// Overwrites zeros written (and synced) beforehand: only the data is
    /// written, as with kvs's preallocated write-ahead log.
    Preallocated,
}

/// Latency of writing `record_size` bytes to a file and calling `fdatasync`,
/// `count` times, in the folder `dir` (on the disk the servers use).
pub fn measure_fsync(dir: &Path, count: usize, record_size: usize, probe: FsyncProbe) -> anyhow::Result<Latency> {
    use std::os::unix::fs::FileExt as _;
    let count = count.max(1);
    let path = dir.join("fsync-probe");
    let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    if probe == FsyncProbe::Preallocated {
        file.write_all_at(&vec![0; count * record_size], 0)?;
        file.sync_all()?;
    }
    let record = vec![b'x'; record_size];
    let mut micros = Vec::with_capacity(count);
    for i in 0..count {
        let start = Instant::now();
        file.write_all_at(&record, (i * record_size) as u64)?;
        file.sync_data()?;
        micros.push(start.elapsed().as_secs_f64() * 1e6);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(Latency::from_micros(micros))
}

/// Round trip of a `message_size`-byte message over loopback TCP between two
/// threads, `count` times: the cost of one network hop there and back on
/// this machine, without any server logic.
pub fn measure_loopback_round_trip(count: usize, message_size: usize) -> anyhow::Result<Latency> {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buf = vec![0; message_size];
        loop {
            match stream.read_exact(&mut buf) {
                Ok(()) => stream.write_all(&buf)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let message = vec![b'x'; message_size];
    let mut answer = vec![0; message_size];
    let mut micros = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        let start = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut answer)?;
        micros.push(start.elapsed().as_secs_f64() * 1e6);
    }
    drop(stream);
    match echo.join() {
        Ok(result) => result?,
        Err(_) => bail!("the echo thread panicked"),
    }
    Ok(Latency::from_micros(micros))
}

/// What this machine allows one replicated write at best, measured now: the
/// parts no implementation can skip. A client's request and answer (one
/// round trip), the leader's entry to a follower and its acknowledgement
/// (another), and the follower's fsync; the leader's own fsync runs in
/// parallel. Loopback TCP between threads stands for the hops, and a
/// preallocated-file fsync for the disk, both without any server logic.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Floor {
    pub fsync_append: Latency,
    pub fsync_preallocated: Latency,
    pub round_trip: Latency,
}

impl Floor {
    /// `fsyncs` of each kind, and more round trips (they are cheap).
    pub fn measure(dir: &Path, fsyncs: usize) -> anyhow::Result<Floor> {
        Ok(Floor {
            fsync_append: measure_fsync(dir, fsyncs, 64, FsyncProbe::Append).context("measuring fsync latency")?,
            fsync_preallocated: measure_fsync(dir, fsyncs, 64, FsyncProbe::Preallocated)
                .context("measuring fsync latency")?,
            round_trip: measure_loopback_round_trip(5_000, 300).context("measuring loopback round trips")?,
        })
    }

    /// Two round trips and one fsync, from the p50s.
    pub fn replicated_write_us(&self) -> f64 {
        2.0 * self.round_trip.p50_us + self.fsync_preallocated.p50_us
    }

    /// `us` in fsyncs of this disk (the p50 of an appending fdatasync).
    pub fn in_fsyncs(&self, us: f64) -> f64 {
        us / self.fsync_append.p50_us.max(f64::MIN_POSITIVE)
    }

    pub fn describe(&self) -> String {
        format!(
            "fsync (fdatasync of a 64-byte append) on this disk: p50 {:.0} us, mean {:.0} us, p99 {:.0} us\n\
             fsync of a 64-byte write into preallocated space: p50 {:.0} us, mean {:.0} us, p99 {:.0} us\n\
             loopback TCP round trip (300 bytes, thread to thread): p50 {:.0} us, mean {:.0} us, p99 {:.0} us\n\
             floor of one replicated write (2 round trips + 1 preallocated fsync, p50s): {:.0} us = {:.2} x fsync p50",
            self.fsync_append.p50_us,
            self.fsync_append.mean_us,
            self.fsync_append.p99_us,
            self.fsync_preallocated.p50_us,
            self.fsync_preallocated.mean_us,
            self.fsync_preallocated.p99_us,
            self.round_trip.p50_us,
            self.round_trip.mean_us,
            self.round_trip.p99_us,
            self.replicated_write_us(),
            self.in_fsyncs(self.replicated_write_us()),
        )
    }
}
