//! `kvs-bench compare`: the whole side-by-side in one run on this machine.
//!
//! Starts each system in turn (so they never compete for the CPU), preloads
//! the keys, runs every workload at every client count against it, and stops
//! it. Then prints one table with each figure and the ratios kvs/etcd and
//! kvs/redis, the fsync latency of this disk measured in the same run, and
//! where kvs stands against the project's targets.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::report::RunResult;
use crate::runner::{self, Length, RunSpec};
use crate::services::{self, Floor};
use crate::target::{Etcd, Kvs, Redis, Target};
use crate::workload::{Distribution, Mix, Workload};

/// Labels of the compared systems, as they appear in results.
pub const KVS: &str = "kvs";
pub const ETCD: &str = "etcd";
pub const REDIS_ALWAYS: &str = "redis-always";
pub const REDIS_EVERYSEC: &str = "redis-everysec";

#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Client counts to run every workload at.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Measured time of each run.
    #[arg(long, value_parser = crate::parse_duration, default_value = "5s")]
    pub duration: Duration,
    /// Unmeasured time before each run.
    #[arg(long, value_parser = crate::parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Keys preloaded and used by the workloads.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Systems to compare (kvs always runs).
    #[arg(long, value_delimiter = ',', default_value = "etcd,redis-always,redis-everysec")]
    pub against: Vec<String>,
    /// Key distributions to run.
    #[arg(long, value_delimiter = ',', default_value = "uniform,hotcold")]
    pub distributions: Vec<Distribution>,
    /// Operation mixes to run.
    #[arg(long, value_delimiter = ',', default_value = "write,read,mixed")]
    pub mixes: Vec<Mix>,
    /// Where the picture goes.
    #[arg(long, default_value = "kvs-bench-compare.png")]
    pub plot: PathBuf,
    /// Also write every result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write every result as CSV here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Folder for the servers' data and logs (default: a temporary folder, removed afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Install etcd-server and redis-server with apt-get when they are missing.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub install: bool,
    #[arg(long, default_value = "etcd")]
    pub etcd_bin: String,
    #[arg(long, default_value = "redis-server")]
    pub redis_bin: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    for name in &args.against {
        if ![ETCD, REDIS_ALWAYS, REDIS_EVERYSEC].contains(&name.as_str()) {
            bail!("--against: unknown system {name:?} (etcd, redis-always, redis-everysec)");
        }
    }
    let wants_redis = args.against.iter().any(|a| a.starts_with("redis"));
    let etcd_bin = if args.against.iter().any(|a| a == ETCD) {
        Some(program_or_install(&args.etcd_bin, "etcd-server", args.install)?)
    } else {
        None
    };
    let redis_bin = if wants_redis {
        Some(program_or_install(&args.redis_bin, "redis-server", args.install)?)
    } else {
        None
    };

    let temp;
    let work: PathBuf = match &args.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("kvs-bench-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    eprintln!("work folder: {}", work.display());

    let floor = services::Floor::measure(&work, 2_000)?;
    eprintln!("{}", floor.describe());

    let mut results = Vec::new();
    {
        let (processes, endpoints) = services::start_kvs(&work).await?;
        let target = Arc::new(Kvs {
            endpoints,
            request_timeout: Duration::from_secs(10),
        });
        let outcome = run_all(KVS, target, &args, &mut results).await;
        processes.stop().await;
        outcome?;
    }
    if let Some(etcd_bin) = &etcd_bin {
        let (processes, endpoints) = services::start_etcd(&work, etcd_bin).await?;
        let outcome = run_all(ETCD, Arc::new(Etcd { endpoints }), &args, &mut results).await;
        processes.stop().await;
        outcome?;
    }
    if let Some(redis_bin) = &redis_bin {
        for (label, fsync_mode) in [(REDIS_ALWAYS, "always"), (REDIS_EVERYSEC, "everysec")] {
            if !args.against.iter().any(|a| a == label) {
                continue;
            }
            let (processes, url) = services::start_redis(&work, redis_bin, fsync_mode).await?;
            let outcome = run_all(label, Arc::new(Redis { url }), &args, &mut results).await;
            processes.stop().await;
            outcome?;
        }
    }

    print!("{}", comparison_table(&results));
    println!();
    print!("{}", goals(&results, &floor));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, crate::report::csv(&results))?;
    }
    crate::plot::draw(&results, &args.plot)?;
    println!("plot: {}", args.plot.display());
    Ok(())
}

fn program_or_install(name: &str, package: &str, install: bool) -> anyhow::Result<PathBuf> {
    if let Some(path) = services::find_program(name) {
        return Ok(path);
    }
    if !install {
        bail!("{name} is not installed (Debian package {package}); install it or pass --install true");
    }
    eprintln!("{name} is missing: apt-get install -y {package}");
    let status = std::process::Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get install {package} failed ({status})");
    }
    // Debian's etcd-server and redis-server start a system service; the comparison uses its own.
    let service = if package == "etcd-server" { "etcd" } else { package };
    let _ = std::process::Command::new("service")
        .args([service, "stop"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    services::find_program(name).with_context(|| format!("{name} is still not on PATH after installing {package}"))
}

fn workloads(args: &CompareArgs) -> Vec<Workload> {
    let mut list = Vec::new();
    for &distribution in &args.distributions {
        for &mix in &args.mixes {
            list.push(Workload {
                distribution,
                mix,
                keys: args.keys,
                key_size: args.key_size,
                value_size: args.value_size,
            });
        }
    }
    list
}

async fn run_all<T: Target>(
    label: &str,
    target: Arc<T>,
    args: &CompareArgs,
    results: &mut Vec<RunResult>,
) -> anyhow::Result<()> {
    let template = workloads(args).into_iter().next().context("no workload chosen")?;
    eprintln!("{label}: preloading {} keys", args.keys);
    crate::preload(Arc::clone(&target), &template, 64, args.seed)
        .await
        .with_context(|| format!("preloading {label}"))?;
    for workload in workloads(args) {
        for &clients in &args.clients {
            let spec = RunSpec {
                clients,
                length: Length::Duration(args.duration),
                warmup: args.warmup,
                rate: None,
                op_timeout: Duration::from_secs(10),
                seed: args.seed,
                progress: true,
            };
            let result = runner::run(Arc::clone(&target), label, &workload, &spec).await?;
            eprintln!(
                "{label:<15} {:<14} {clients:>3} clients: {:>9.0} ops/s  p99 {:>8.3} ms  errors {} timeouts {}",
                result.workload,
                result.throughput,
                result.latency.p99_us / 1e3,
                result.errors,
                result.timeouts
            );
            results.push(result);
        }
    }
    Ok(())
}

fn find<'a>(results: &'a [RunResult], target: &str, workload: &str, clients: usize) -> Option<&'a RunResult> {
    results
        .iter()
        .find(|r| r.target == target && r.workload == workload && r.clients == clients)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// One row per workload and client count: throughput of each system, the
/// ratios, and p99 latencies.
pub fn comparison_table(results: &[RunResult]) -> String {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for r in results {
        if !keys.contains(&(r.workload.clone(), r.clients)) {
            keys.push((r.workload.clone(), r.clients));
        }
    }
    let mut out = format!(
        "{:<14} {:>7} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} | {:>8} {:>8} {:>8}\n",
        "workload",
        "clients",
        "kvs ops/s",
        "etcd",
        "redis-al",
        "redis-es",
        "kvs/etcd",
        "kvs/r-al",
        "kvs p99",
        "etcd p99",
        "r-al p99"
    );
    for (workload, clients) in keys {
        let ops = |t: &str| find(results, t, &workload, clients).map(|r| r.throughput);
        let p99 = |t: &str| find(results, t, &workload, clients).map(|r| r.latency.p99_us / 1e3);
        let _ = writeln!(
            out,
            "{workload:<14} {clients:>7} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} | {:>8} {:>8} {:>8}",
            cell(ops(KVS), 0),
            cell(ops(ETCD), 0),
            cell(ops(REDIS_ALWAYS), 0),
            cell(ops(REDIS_EVERYSEC), 0),
            ratio(ops(KVS), ops(ETCD)),
            ratio(ops(KVS), ops(REDIS_ALWAYS)),
            cell(p99(KVS), 3),
            cell(p99(ETCD), 3),
            cell(p99(REDIS_ALWAYS), 3),
        );
    }
    out.push_str("(ops/s: successful requests per second; p99 in ms; redis-al/es: appendfsync always/everysec)\n");
    out
}

/// Where kvs stands against the targets of the performance issue, from this run's figures.
pub fn goals(results: &[RunResult], floor: &Floor) -> String {
    let mut out = String::from("targets (this run):\n");
    let most_clients = results.iter().map(|r| r.clients).max().unwrap_or(0);
    let line = |out: &mut String, what: String, met: Option<bool>| {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let _ = writeln!(out, "  {verdict:<12} {what}");
    };
    for mix in ["write", "read"] {
        for distribution in ["uniform", "hotcold"] {
            let workload = format!("{distribution}-{mix}");
            let kvs = find(results, KVS, &workload, most_clients).map(|r| r.throughput);
            let etcd = find(results, ETCD, &workload, most_clients).map(|r| r.throughput);
            let x = kvs.zip(etcd).map(|(k, e)| k / e.max(f64::MIN_POSITIVE));
            line(
                &mut out,
                format!(
                    "{workload} at {most_clients} clients >= 2x etcd: kvs/etcd = {}",
                    x.map_or("-".into(), |x| format!("{x:.2}"))
                ),
                x.map(|x| x >= 2.0),
            );
        }
    }
    for r in results.iter().filter(|r| r.target == KVS && r.clients == most_clients) {
        let etcd = find(results, ETCD, &r.workload, most_clients).map(|e| e.latency.p99_us);
        line(
            &mut out,
            format!(
                "{} p99 at {most_clients} clients <= etcd's: {:.3} ms vs {} ms",
                r.workload,
                r.latency.p99_us / 1e3,
                etcd.map_or("-".into(), |e| format!("{:.3}", e / 1e3))
            ),
            etcd.map(|e| r.latency.p99_us <= e),
        );
    }
    let sequential = find(results, KVS, "uniform-write", 1).map(|r| r.latency.mean_us);
    let fsyncs = sequential.map(|us| floor.in_fsyncs(us));
    line(
        &mut out,
        format!(
            "one client, sequential PUT <= 1.5 fsyncs: mean {} us = {} x fsync p50 ({:.0} us); \
             this machine's floor is {:.0} us = {:.2} x",
            cell(sequential, 0),
            cell(fsyncs, 2),
            floor.fsync_append.p50_us,
            floor.replicated_write_us(),
            floor.in_fsyncs(floor.replicated_write_us()),
        ),
        fsyncs.map(|f| f <= 1.5),
    );
    out
}
