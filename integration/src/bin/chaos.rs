//! `chaos`: the long fault-injection run.
//!
//! `cargo run --release -p integration --bin chaos -- --runs 200 --duration 60s`
//! prints one line per run and a summary; it exits 1 if any run found a violation.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use integration::chaos::{run, ChaosOptions};

#[derive(Parser)]
#[command(about = "Fault injection against a real kvs cluster, with a linearizability check")]
struct Cli {
    /// How many runs (each a fresh cluster).
    #[arg(long, default_value_t = 10)]
    runs: u64,
    /// How long each run injects faults, e.g. 60s or 500ms.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the first run; run k uses seed + k.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Nodes per cluster (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Keys the clients share (few keys, many collisions).
    #[arg(long, default_value_t = 4)]
    keys: usize,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let value: u64 = number.parse().map_err(|_| format!("not a duration: {text}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(60 * value)),
        _ => Err(format!("unknown unit in {text} (use ms, s or m)")),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (mut operations, mut during_faults, mut violations) = (0, 0, 0);
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    for k in 0..cli.runs {
        let options = ChaosOptions {
            nodes: cli.nodes,
            clients: cli.clients,
            keys: cli.keys,
            duration: cli.duration,
            ..ChaosOptions::new("chaos", cli.seed + k)
        };
        let seed = options.seed;
        // A run that panics (a cluster that never elects a leader, say) is a
        // failure to report with its seed, not the end of the long mode.
        let report = match tokio::spawn(async move { run(&options).await }).await {
            Ok(report) => report,
            Err(failure) => {
                println!("run seed {seed}: FAILED, the harness stopped: {failure}");
                violations += 1;
                continue;
            }
        };
        println!("{}", report.line());
        if let Some(kept) = &report.kept {
            println!("  nodes' data and traces kept in {}", kept.display());
        }
        operations += report.succeeded;
        during_faults += report.succeeded_during_faults;
        violations += usize::from(!report.passed());
        for (kind, count) in report.faults {
            *faults.entry(kind).or_default() += count;
        }
    }
    println!(
        "summary: runs {}, operations {operations}, operations during faults {during_faults}, faults {faults:?}, violations {violations}",
        cli.runs
    );
    if violations == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5h").is_err());
    }
}
