//! Results of runs: one record per (target, workload, clients), printed as a
//! table, JSON or CSV.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::workload::{distribution_name, mix_name, Workload};

/// Latency figures of the successful requests, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub target: String,
    pub workload: String,
    pub distribution: &'static str,
    pub mix: &'static str,
    pub clients: usize,
    /// Open-loop rate asked for, requests per second; `None` for closed loop.
    pub rate: Option<f64>,
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// Successful requests in the measured window.
    pub ops: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub seconds: f64,
    /// Successful requests per second.
    pub throughput: f64,
    pub latency: Latency,
    /// The first error seen, to tell what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl RunResult {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: &str,
        workload: &Workload,
        clients: usize,
        rate: Option<f64>,
        measured: Duration,
        latencies: &Histogram<u64>,
        errors: u64,
        timeouts: u64,
        first_error: Option<String>,
    ) -> RunResult {
        let ops = latencies.len();
        let seconds = measured.as_secs_f64();
        let us = |nanos: u64| nanos as f64 / 1_000.0;
        let latency = if ops == 0 {
            Latency::default()
        } else {
            Latency {
                mean_us: latencies.mean() / 1_000.0,
                p50_us: us(latencies.value_at_quantile(0.50)),
                p90_us: us(latencies.value_at_quantile(0.90)),
                p99_us: us(latencies.value_at_quantile(0.99)),
                p999_us: us(latencies.value_at_quantile(0.999)),
                max_us: us(latencies.max()),
            }
        };
        RunResult {
            target: target.to_string(),
            workload: workload.label(),
            distribution: distribution_name(workload.distribution),
            mix: mix_name(workload.mix),
            clients,
            rate,
            keys: workload.keys,
            key_size: workload.key_size,
            value_size: workload.value_size,
            ops,
            errors,
            timeouts,
            seconds,
            throughput: if seconds > 0.0 { ops as f64 / seconds } else { 0.0 },
            latency,
            first_error,
        }
    }
}

/// Output format of `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

pub fn render(results: &[RunResult], format: Format) -> Result<String, serde_json::Error> {
    Ok(match format {
        Format::Table => table(results),
        Format::Json => serde_json::to_string_pretty(results)? + "\n",
        Format::Csv => csv(results),
    })
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1_000.0)
}

pub fn table(results: &[RunResult]) -> String {
    let mut out = format!(
        "{:<16} {:<14} {:>7} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}\n",
        "target",
        "workload",
        "clients",
        "ops/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "timeouts"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<16} {:<14} {:>7} {:>12.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}",
            r.target,
            r.workload,
            r.clients,
            r.throughput,
            ms(r.latency.p50_us),
            ms(r.latency.p90_us),
            ms(r.latency.p99_us),
            ms(r.latency.p999_us),
            ms(r.latency.max_us),
            r.errors,
            r.timeouts
        );
    }
    for r in results.iter().filter(|r| r.first_error.is_some()) {
        let _ = writeln!(
            out,
            "first error of {} {} at {} clients: {}",
            r.target,
            r.workload,
            r.clients,
            r.first_error.as_deref().unwrap_or_default()
        );
    }
    out
}

pub fn csv(results: &[RunResult]) -> String {
    let mut out = String::from(
        "target,workload,distribution,mix,clients,rate,keys,key_size,value_size,ops,errors,timeouts,seconds,\
         throughput,mean_us,p50_us,p90_us,p99_us,p999_us,max_us\n",
    );
    for r in results {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{:.3},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1}",
            r.target,
            r.workload,
            r.distribution,
            r.mix,
            r.clients,
            r.rate.map(|rate| rate.to_string()).unwrap_or_default(),
            r.keys,
            r.key_size,
            r.value_size,
            r.ops,
            r.errors,
            r.timeouts,
            r.seconds,
            r.throughput,
            r.latency.mean_us,
            r.latency.p50_us,
            r.latency.p90_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.latency.max_us
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Distribution, Mix};

    #[test]
    fn figures_come_from_the_histogram() {
        let workload = Workload {
            distribution: Distribution::Hotcold,
            mix: Mix::Write,
            keys: 10,
            key_size: 16,
            value_size: 8,
        };
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for micros in 1..=1000u64 {
            h.record(micros * 1_000).unwrap();
        }
        let r = RunResult::new("kvs", &workload, 4, None, Duration::from_secs(2), &h, 3, 1, None);
        assert_eq!(r.ops, 1000);
        assert_eq!(r.throughput, 500.0);
        assert!((r.latency.p50_us - 500.0).abs() < 1.0, "{:?}", r.latency);
        assert!((r.latency.p99_us - 990.0).abs() < 1.0, "{:?}", r.latency);
        assert!((r.latency.max_us - 1000.0).abs() < 1.0, "{:?}", r.latency);
        let csv = csv(std::slice::from_ref(&r));
        assert!(csv
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("kvs,hotcold-write,hotcold,write,4,,10,16,8,1000,3,1,2.000,500.0"));
        let table = table(&[r]);
        assert!(table.contains("hotcold-write"), "{table}");
    }
}
