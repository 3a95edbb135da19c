//! The C library `libkv.so` and the C programs of `client/c/`, compiled with
//! the system's C compiler (`cc`, or `$CC`) against `client/include/kv.h`, and
//! run against real clusters.
//!
//! The library is the `libkv.so` that cargo built together with the client
//! library this test links (`target/<profile>/deps/libkv.so`, so a plain
//! `cargo test --workspace` provides it), else `target/<profile>/libkv.so`
//! (`cargo build -p client`), or `KVS_LIBKV` if set. Each test copies it into
//! its own folder, so a concurrent rebuild cannot change it under a running
//! program.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use integration::{free_ports, TestCluster, Timers};

/// How long one C program may run before the test kills it and fails.
const PROGRAM_LIMIT: Duration = Duration::from_secs(120);
/// The library's per-call retry deadline in these tests (`KVS_TIMEOUT_MS`).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

const INVALID_KEY: &str = "Invalid key: Keys must be printable ASCII (without '[' or ']') and ≤ 128 bytes";
const INVALID_VALUE: &str = "Invalid value: Values must be printable ASCII and ≤ 2048 bytes";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the integration crate is inside the workspace")
        .to_path_buf()
}

/// Where `libkv.so` is; see the module documentation.
fn library_path() -> PathBuf {
    if let Some(path) = std::env::var_os("KVS_LIBKV") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "KVS_LIBKV is set to {}, which is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable has a folder");
    let name = format!("{}kv{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let candidates = [deps.join(&name), deps.join("..").join(&name)];
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} is not at {} nor {}: run `cargo build --release -p client` \
                 (or `cargo test --workspace`), or set KVS_LIBKV",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// A folder with a private copy of the library and the programs compiled against it.
struct CBuild {
    dir: tempfile::TempDir,
}

impl CBuild {
    fn new(name: &str) -> CBuild {
        let dir = tempfile::Builder::new()
            .prefix(&format!("kvs-c-{name}-"))
            .tempdir()
            .expect("create the test's folder");
        let library = library_path();
        let file_name = library.file_name().expect("the library has a file name");
        std::fs::copy(&library, dir.path().join(file_name))
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", library.display()));
        CBuild { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Compiles `client/c/<program>.c` with warnings as errors; returns the executable.
    fn compile(&self, program: &str) -> PathBuf {
        let root = workspace_root();
        let source = root.join("client").join("c").join(format!("{program}.c"));
        let output = self.path().join(program);
        let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
        let mut command = std::process::Command::new(&cc);
        command
            .args([
                "-std=c11",
                "-O1",
                "-Wall",
                "-Wextra",
                "-pedantic",
                "-Werror",
                "-pthread",
            ])
            .arg("-I")
            .arg(root.join("client").join("include"))
            .arg(&source)
            .arg("-o")
            .arg(&output)
            .arg("-L")
            .arg(self.path())
            .arg("-lkv")
            .arg(format!("-Wl,-rpath,{}", self.path().display()));
        let result = match command.output() {
            Ok(result) => result,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "the C compiler {cc:?} is not installed: these tests compile client/c/*.c with it \
                 (install a C toolchain, e.g. `apt-get install gcc`, or set CC)"
            ),
            Err(e) => panic!("cannot run the C compiler {cc:?}: {e}"),
        };
        assert!(
            result.status.success(),
            "compiling {} failed ({}):\n{}{}",
            source.display(),
            result.status,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        output
    }
}

/// How a C program ended.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn assert_success(&self, what: &str) {
        assert_eq!(self.code, Some(0), "{what} failed:\n{self}");
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?} after {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.took, self.stdout, self.stderr
        )
    }
}

/// Starts `program` with `args`, the library's per-call deadline
/// (`KVS_TIMEOUT_MS`) set to `call_timeout`.
fn spawn(program: &Path, args: &[String], call_timeout: Duration) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env("KVS_TIMEOUT_MS", call_timeout.as_millis().to_string())
        .env_remove("KVS_CLUSTER_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}

/// Waits for a program started by [`spawn`], at most [`PROGRAM_LIMIT`].
async fn finish(child: tokio::process::Child, started: Instant) -> Run {
    let output = tokio::time::timeout(PROGRAM_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("a C program ran longer than {PROGRAM_LIMIT:?}; killed it"))
        .expect("wait for a C program");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: started.elapsed(),
    }
}

async fn run(program: &Path, args: &[String]) -> Run {
    run_with_timeout(program, args, CALL_TIMEOUT).await
}

async fn run_with_timeout(program: &Path, args: &[String], call_timeout: Duration) -> Run {
    let started = Instant::now();
    finish(spawn(program, args, call_timeout), started).await
}

fn lines_with(text: &str, needle: &str) -> usize {
    text.lines().filter(|line| line.contains(needle)).count()
}

#[tokio::test]
async fn header_matches_the_library_and_calls_fail_cleanly_without_a_server() {
    let build = CBuild::new("header");
    // Compiled with -Werror: each function is assigned to a pointer of the
    // original's exact type, so a drifting prototype fails here.
    let program = build.compile("header_check");
    let dead = format!("127.0.0.1:{}", free_ports(1)[0]);
    let result = run(&program, std::slice::from_ref(&dead)).await;
    result.assert_success("header_check");
    assert!(result.stdout.contains("all checks passed"), "{result}");
    assert!(!result.stdout.contains("Connected to server"), "{result}");
    // Invalid input is reported with the original's words; the rest of stderr
    // says why each other call failed.
    assert_eq!(lines_with(&result.stderr, INVALID_KEY), 3, "{result}");
    assert_eq!(lines_with(&result.stderr, INVALID_VALUE), 2, "{result}");
    // Every endpoint tried is named with its error, on one line.
    assert!(
        result.stderr.contains(&format!(
            "cannot connect to any endpoint: {dead}: Connection refused (os error 111); {dead}: Connection refused"
        )),
        "{result}"
    );
    assert!(result.stderr.contains("not initialized"), "{result}");
}

#[tokio::test]
async fn correctness_program_passes_the_original_cases() {
    let build = CBuild::new("correctness");
    let program = build.compile("correctness");
    let mut cluster = TestCluster::start("c-correctness", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;

    // A follower first: the library connects there and must find the leader itself.
    let mut order: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    order.push(leader);
    let servers: Vec<String> = order.iter().map(|&id| cluster.endpoint(id)).collect();
    let started = Instant::now();
    let child = spawn(&program, &servers, CALL_TIMEOUT);
    let pid = child.id().expect("the program's pid");
    let result = finish(child, started).await;
    result.assert_success("correctness");

    for case in 1..=11 {
        assert!(
            result.stdout.contains(&format!("Test Case {case}: ")),
            "case {case} missing:\n{result}"
        );
    }
    assert_eq!(lines_with(&result.stdout, "✓ Passed"), 14, "{result}");
    assert_eq!(lines_with(&result.stdout, "✗ Failed"), 0, "{result}");
    assert!(result.stdout.contains("Old Value: TestValue\n"), "{result}");
    assert!(result.stdout.contains("Updated Value: NewValue\n"), "{result}");
    // Printed once per successful kv_init, for the first server in the list.
    let connected = format!("Connected to server: {}", servers[0]);
    assert_eq!(lines_with(&result.stdout, "Connected to server"), 2, "{result}");
    assert_eq!(lines_with(&result.stdout, &connected), 2, "{result}");
    // Exactly the original's messages for cases 7 and 8, and the refused
    // second kv_init; nothing else on stderr.
    assert_eq!(lines_with(&result.stderr, INVALID_KEY), 1, "{result}");
    assert_eq!(lines_with(&result.stderr, INVALID_VALUE), 1, "{result}");
    assert_eq!(result.stderr.lines().count(), 3, "{result}");
    assert!(result.stderr.contains("already initialized"), "{result}");

    // What the program wrote is in the store, as the Rust client reads it.
    let client = cluster.client();
    let key = format!("TestKey-{pid}");
    assert_eq!(client.get(&key).await.expect("get").as_deref(), Some("NewValue"));
    assert_eq!(client.get(&format!("NonExistentKey-{pid}")).await.expect("get"), None);
    assert_eq!(
        client.get("Invalid[Key]").await.expect("get"),
        None,
        "an invalid key was stored"
    );
}

#[tokio::test]
async fn recovery_program_reads_back_after_the_leader_is_killed() {
    let build = CBuild::new("recovery");
    let program = build.compile("recovery");
    let mut cluster = TestCluster::start("c-recovery", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;

    let mut args = vec!["put".to_string()];
    args.extend(cluster.endpoints());
    run(&program, &args).await.assert_success("recovery put");

    // kill -9 the leader, and at once ask the others: the library must wait
    // for and find the new leader by itself.
    cluster.kill(leader);
    let survivors: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != leader).collect();
    let mut args = vec!["get".to_string()];
    args.extend(survivors.iter().map(|&id| cluster.endpoint(id)));
    let result = run(&program, &args).await;
    result.assert_success("recovery get");
    assert!(
        result.stdout.contains("Expected Result: Yesssir, Got: Yesssir"),
        "{result}"
    );
    assert!(result.stdout.contains("Stored Value: Yesssir"), "{result}");
    assert!(
        !result.stdout.contains(&cluster.endpoint(leader)),
        "connected to the dead leader?\n{result}"
    );

    // With one node of three left there is no majority: kv_get keeps trying
    // for KVS_TIMEOUT_MS, then answers -1; the program does not hang.
    cluster.kill(survivors[0]);
    let args = vec!["get".to_string(), cluster.endpoint(survivors[1])];
    let short = Duration::from_secs(3);
    let result = run_with_timeout(&program, &args, short).await;
    assert_eq!(result.code, Some(1), "a read without a majority succeeded:\n{result}");
    assert!(result.stdout.contains("kv_get returned -1"), "{result}");
    assert!(result.stdout.contains("kv_init succeeded"), "{result}");
    assert!(result.took >= short, "gave up before KVS_TIMEOUT_MS:\n{result}");
    assert!(
        result.took < short + Duration::from_secs(15),
        "kept trying far past KVS_TIMEOUT_MS:\n{result}"
    );
}

/// One workload line of the performance program.
#[derive(Debug)]
struct PerfLine {
    name: String,
    ops: u64,
    elapsed_ns: u64,
    throughput: f64,
    avg_us: f64,
    p99_us: f64,
    errors: u64,
}

/// Parses `NAME: N ops in T ns, throughput = X ops/sec, avg latency = Y µs,
/// p99 latency = Z µs, errors = E`.
fn parse_perf_line(line: &str) -> Option<PerfLine> {
    let (name, rest) = line.split_once(": ")?;
    let (ops, rest) = rest.split_once(" ops in ")?;
    let (elapsed, rest) = rest.split_once(" ns, throughput = ")?;
    let (throughput, rest) = rest.split_once(" ops/sec, avg latency = ")?;
    let (avg, rest) = rest.split_once(" µs, p99 latency = ")?;
    let (p99, errors) = rest.split_once(" µs, errors = ")?;
    Some(PerfLine {
        name: name.to_string(),
        ops: ops.parse().ok()?,
        elapsed_ns: elapsed.parse().ok()?,
        throughput: throughput.parse().ok()?,
        avg_us: avg.parse().ok()?,
        p99_us: p99.parse().ok()?,
        errors: errors.parse().ok()?,
    })
}

fn perf_lines(result: &Run) -> Vec<PerfLine> {
    result
        .stdout
        .lines()
        .filter(|line| line.contains(" ops in "))
        .map(|line| parse_perf_line(line).unwrap_or_else(|| panic!("malformed result line {line:?}:\n{result}")))
        .collect()
}

fn check_perf(result: &Run, ops: u64) {
    // The numbers, for whoever runs with --nocapture.
    eprintln!("{}", result.stdout);
    result.assert_success("perf");
    assert!(
        result
            .stdout
            .contains("Performance Test: Uniformly Random Distribution"),
        "{result}"
    );
    assert!(
        result.stdout.contains("Performance Test: Hot/Cold Distribution"),
        "{result}"
    );
    let lines = perf_lines(result);
    let names: Vec<&str> = lines.iter().map(|line| line.name.as_str()).collect();
    assert_eq!(names, ["Uniform Random", "Hot/Cold"], "{result}");
    for line in &lines {
        assert_eq!(line.ops, ops, "{line:?}");
        assert_eq!(line.errors, 0, "{line:?}");
        assert!(line.elapsed_ns > 0 && line.throughput > 0.0, "{line:?}");
        assert!(line.avg_us > 0.0 && line.p99_us > 0.0, "{line:?}");
        // Throughput and elapsed time tell the same story (to rounding).
        let expected = line.ops as f64 * 1e9 / line.elapsed_ns as f64;
        assert!((line.throughput - expected).abs() <= expected * 0.01 + 0.01, "{line:?}");
    }
}

#[tokio::test]
async fn perf_program_runs_both_workloads_without_errors() {
    let build = CBuild::new("perf");
    let program = build.compile("perf");
    let mut cluster = TestCluster::start("c-perf", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    cluster.wait_for_leader(bound).await;
    let servers = cluster.endpoints();

    // As the original: one thread.
    let mut args: Vec<String> = ["-n", "500", "-k", "100"].map(String::from).to_vec();
    args.extend(servers.iter().cloned());
    let result = run(&program, &args).await;
    check_perf(&result, 500);

    // Four threads sharing the library at once.
    let mut args: Vec<String> = ["-n", "400", "-k", "50", "-t", "4"].map(String::from).to_vec();
    args.extend(servers.iter().cloned());
    let result = run(&program, &args).await;
    check_perf(&result, 400);

    // The keys hold what the program wrote (the values name their key).
    let client = cluster.client();
    let mut found = 0;
    for k in 0..50 {
        if let Some(value) = client.get(&format!("perf-key-{k}")).await.expect("get") {
            assert!(value.starts_with(&format!("value-{k}-")), "perf-key-{k} = {value:?}");
            found += 1;
        }
    }
    assert!(found > 0, "no perf key was written");
}

#[tokio::test]
async fn library_follows_the_leader_through_a_failover_under_load() {
    let build = CBuild::new("failover");
    let program = build.compile("perf");
    let mut cluster = TestCluster::start("c-failover", 3, Timers::default());
    let bound = cluster.timers().election_bound();
    let (leader, term) = cluster.wait_for_leader(bound).await;
    let start_index = cluster.status(leader).await.expect("leader status").commit_index;

    let mut args: Vec<String> = ["-n", "3000", "-k", "200", "-t", "4", "-w", "uniform"]
        .map(String::from)
        .to_vec();
    args.extend(cluster.endpoints());
    let started = Instant::now();
    let mut child = spawn(&program, &args, CALL_TIMEOUT);

    // Kill the leader once the program's writes are flowing.
    cluster
        .wait_until(
            Duration::from_secs(30),
            "the perf program's writes to be committed",
            |view| {
                view.status(leader)
                    .filter(|status| status.commit_index >= start_index + 100)
                    .map(|_| ())
            },
        )
        .await;
    assert!(
        child.try_wait().expect("check the program").is_none(),
        "the program finished before the leader was killed: the test proves nothing"
    );
    cluster.kill(leader);
    cluster.wait_for_new_leader(leader, term, bound).await;

    let result = finish(child, started).await;
    eprintln!("{}", result.stdout);
    let lines = perf_lines(&result);
    assert_eq!(lines.len(), 1, "{result}");
    assert_eq!(lines[0].ops, 3000, "{result}");
    assert_eq!(lines[0].errors, 0, "calls failed across the failover:\n{result}");
    result.assert_success("perf across a failover");
}
