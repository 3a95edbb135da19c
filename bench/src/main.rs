//! `kvs-bench`: the same workloads against kvs, etcd and Redis, measured the same way.
//!
//! `kvs-bench run` measures one target; `kvs-bench compare` starts kvs, etcd
//! and Redis on this machine and runs everything side by side. See
//! docs/PERFORMANCE.md, "The tool: `kvs-bench`".

mod compare;
mod plot;
mod report;
mod runner;
mod services;
mod target;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use report::Format;
use runner::{Length, RunSpec};
use target::{Etcd, Kind, Kvs, Redis, Session, Target};
use workload::{Distribution, Mix, Workload};

#[derive(Parser)]
#[command(
    name = "kvs-bench",
    version,
    about = "Benchmarks kvs, etcd and Redis with the same workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs workloads against one running target.
    Run(RunArgs),
    /// Starts kvs, etcd and Redis here and compares them side by side.
    Compare(compare::CompareArgs),
    /// Measures what bounds a write here: fsync latency of the disk holding
    /// a folder (appending, and into preallocated space) and a loopback round trip.
    Fsync {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value = "kvs")]
    target: Kind,
    /// Addresses of the target: kvs `host:port` list, etcd URLs, or one Redis URL.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:5000,127.0.0.1:5001,127.0.0.1:5002"
    )]
    endpoints: Vec<String>,
    /// Key distributions to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "uniform")]
    distribution: Vec<Distribution>,
    /// Operation mixes to run: read (GET), write (PUT), mixed (50/50).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "mixed")]
    mix: Vec<Mix>,
    /// Concurrent clients (one connection each); several counts run one after another.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    clients: Vec<usize>,
    /// Measured requests per run (all clients together).
    #[arg(long, conflicts_with = "duration")]
    ops: Option<u64>,
    /// Measured time per run (default 10s unless --ops is given).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Unmeasured time before each run.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Open loop: requests per second for all clients together (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 16)]
    key_size: usize,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Write every key once before measuring.
    #[arg(long)]
    preload: bool,
    /// A request unanswered after this counts as a timeout.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    op_timeout: Duration,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the results as JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print the results as CSV.
    #[arg(long)]
    csv: bool,
    /// Draw throughput and latency by client count into this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// `500ms`, `10s`, `2m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Writes every key of `workload` once, with `clients` connections.
pub async fn preload<T: Target>(target: Arc<T>, workload: &Workload, clients: usize, seed: u64) -> anyhow::Result<()> {
    let clients = clients.clamp(1, workload.keys.max(1) as usize);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let mut session = target.connect().await.context("connecting to preload")?;
        let workload = workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
            let value = workload.value(&mut rng);
            let mut key = client as u64;
            while key < workload.keys {
                session
                    .put(&workload.key(key), &value)
                    .await
                    .with_context(|| format!("preloading key {key}"))?;
                key += clients as u64;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn run_target<T: Target>(target: T, name: &str, args: &RunArgs) -> anyhow::Result<Vec<report::RunResult>> {
    let target = Arc::new(target);
    let workloads: Vec<Workload> = args
        .distribution
        .iter()
        .flat_map(|&distribution| {
            args.mix.iter().map(move |&mix| Workload {
                distribution,
                mix,
                keys: args.keys,
                key_size: args.key_size,
                value_size: args.value_size,
            })
        })
        .collect();
    if args.preload {
        if let Some(first) = workloads.first() {
            eprintln!("preloading {} keys", args.keys);
            preload(Arc::clone(&target), first, 64, args.seed).await?;
        }
    }
    let length = match (args.ops, args.duration) {
        (Some(ops), _) => Length::Ops(ops),
        (None, Some(duration)) => Length::Duration(duration),
        (None, None) => Length::Duration(Duration::from_secs(10)),
    };
    let mut results = Vec::new();
    for workload in &workloads {
        for &clients in &args.clients {
            let spec = RunSpec {
                clients,
                length,
                warmup: args.warmup,
                rate: args.rate,
                op_timeout: args.op_timeout,
                seed: args.seed,
                progress: true,
            };
            results.push(runner::run(Arc::clone(&target), name, workload, &spec).await?);
        }
    }
    Ok(results)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let results = match args.target {
        Kind::Kvs => {
            let target = Kvs {
                endpoints: args.endpoints.clone(),
                request_timeout: args.op_timeout,
            };
            run_target(target, "kvs", &args).await?
        }
        Kind::Etcd => {
            let target = Etcd {
                endpoints: args.endpoints.clone(),
            };
            run_target(target, "etcd", &args).await?
        }
        Kind::Redis => {
            let url = args.endpoints.first().cloned().unwrap_or_default();
            let url = if url.starts_with("redis://") {
                url
            } else {
                format!("redis://{url}/")
            };
            run_target(Redis { url }, "redis", &args).await?
        }
    };
    let format = if args.json {
        Format::Json
    } else if args.csv {
        Format::Csv
    } else {
        Format::Table
    };
    print!("{}", report::render(&results, format)?);
    if let Some(path) = &args.plot {
        plot::draw(&results, path)?;
        eprintln!("plot: {}", path.display());
    }
    let failed: u64 = results.iter().map(|r| r.errors + r.timeouts).sum();
    if failed > 0 {
        eprintln!("{failed} requests failed or timed out");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Compare(args) => compare::compare(args).await,
        Command::Fsync { dir, count } => {
            println!("{}", services::Floor::measure(&dir, count)?.describe());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
