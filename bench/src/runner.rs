//! Runs one workload against one target with N concurrent clients, and
//! measures it.
//!
//! Closed loop (the default): every client sends its next request as soon as
//! the previous one is answered. Open loop (`rate`): the clients together aim
//! at `rate` requests per second, each on a fixed schedule, and a request's
//! latency counts from when it was due, not from when it was sent, so a
//! stalled store is not flattered by the requests it delayed (coordinated
//! omission).
//!
//! A warm-up runs first and is not measured. Failed requests and requests
//! that passed `op_timeout` are counted apart and left out of the latency
//! figures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::report::RunResult;
use crate::target::{Session, Target, TargetError};
use crate::workload::{Op, Workload};

/// Largest latency the histograms hold; slower requests are recorded as this.
const MAX_LATENCY: Duration = Duration::from_secs(60);

/// How long a run lasts: a number of measured requests, or a time.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    Ops(u64),
    Duration(Duration),
}

#[derive(Debug, Clone)]
pub struct RunSpec {
    pub clients: usize,
    pub length: Length,
    pub warmup: Duration,
    /// Requests per second for all clients together (open loop); `None`: closed loop.
    pub rate: Option<f64>,
    /// A request still unanswered after this counts as a timeout.
    pub op_timeout: Duration,
    pub seed: u64,
    /// Draw a progress bar (only where stderr is a terminal).
    pub progress: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("client {client} cannot connect: {source}")]
    Connect {
        client: usize,
        #[source]
        source: TargetError,
    },
    #[error("the latency histogram cannot be made: {0}")]
    Histogram(String),
    #[error("a client task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// What one client measured.
struct ClientTally {
    latencies: Histogram<u64>,
    errors: u64,
    timeouts: u64,
    first_error: Option<String>,
}

/// Runs `workload` against `target` as `spec` says. `target_name` labels the result.
pub async fn run<T: Target>(
    target: Arc<T>,
    target_name: &str,
    workload: &Workload,
    spec: &RunSpec,
) -> Result<RunResult, RunError> {
    let clients = spec.clients.max(1);
    // Connect every client before the clock starts.
    let mut sessions = Vec::with_capacity(clients);
    for client in 0..clients {
        let session = target
            .connect()
            .await
            .map_err(|source| RunError::Connect { client, source })?;
        sessions.push(session);
    }

    let progress = progress_bar(spec);
    let started = Instant::now();
    let measure_from = started + spec.warmup;
    let stop = Arc::new(AtomicBool::new(false));
    let claimed = Arc::new(AtomicU64::new(0));
    let per_client_interval = spec
        .rate
        .filter(|rate| *rate > 0.0)
        .map(|rate| Duration::from_secs_f64(clients as f64 / rate));

    let mut tasks = Vec::with_capacity(clients);
    for (index, session) in sessions.into_iter().enumerate() {
        let client = ClientLoop {
            workload: workload.clone(),
            rng: SmallRng::seed_from_u64(spec.seed.wrapping_add(index as u64)),
            measure_from,
            length: spec.length,
            op_timeout: spec.op_timeout,
            interval: per_client_interval,
            // Spread the open-loop schedules over one interval.
            first_due: started
                + per_client_interval.map_or(Duration::ZERO, |i| i.mul_f64(index as f64 / clients as f64)),
            stop: Arc::clone(&stop),
            claimed: Arc::clone(&claimed),
            progress: progress.clone(),
        };
        tasks.push(tokio::spawn(client.run(session)));
    }
    if let Length::Duration(length) = spec.length {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            tokio::time::sleep_until((measure_from + length).into()).await;
            stop.store(true, Ordering::Relaxed);
        });
    }

    let mut latencies = new_histogram()?;
    let (mut errors, mut timeouts, mut first_error) = (0, 0, None);
    for task in tasks {
        let tally = task.await??;
        latencies
            .add(&tally.latencies)
            .map_err(|e| RunError::Histogram(e.to_string()))?;
        errors += tally.errors;
        timeouts += tally.timeouts;
        first_error = first_error.or(tally.first_error);
    }
    let measured = Instant::now().saturating_duration_since(measure_from);
    progress.finish_and_clear();
    Ok(RunResult::new(
        target_name,
        workload,
        clients,
        spec.rate,
        measured,
        &latencies,
        errors,
        timeouts,
        first_error,
    ))
}

fn new_histogram() -> Result<Histogram<u64>, RunError> {
    Histogram::new_with_bounds(1, MAX_LATENCY.as_nanos() as u64, 3).map_err(|e| RunError::Histogram(e.to_string()))
}

fn progress_bar(spec: &RunSpec) -> ProgressBar {
    if !spec.progress {
        return ProgressBar::hidden();
    }
    // `ProgressBar::new` draws to stderr, and nothing when it is not a terminal.
    let bar = match spec.length {
        Length::Ops(ops) => ProgressBar::new(ops),
        Length::Duration(_) => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} {wide_bar} {pos}/{len} ops {per_sec}")
    {
        bar.set_style(style);
    }
    bar
}

struct ClientLoop {
    workload: Workload,
    rng: SmallRng,
    measure_from: Instant,
    length: Length,
    op_timeout: Duration,
    interval: Option<Duration>,
    first_due: Instant,
    stop: Arc<AtomicBool>,
    claimed: Arc<AtomicU64>,
    progress: ProgressBar,
}

impl ClientLoop {
    async fn run<S: Session>(mut self, mut session: S) -> Result<ClientTally, RunError> {
        let mut tally = ClientTally {
            latencies: new_histogram()?,
            errors: 0,
            timeouts: 0,
            first_error: None,
        };
        // The same value for every write of this client: generating 256
        // random bytes per request would cost more than some targets' requests.
        let value = self.workload.value(&mut self.rng);
        let mut due = self.first_due;
        while !self.stop.load(Ordering::Relaxed) {
            if self.interval.is_some() {
                tokio::time::sleep_until(due.into()).await;
            }
            let measuring = Instant::now() >= self.measure_from;
            if measuring && !self.claim() {
                break;
            }
            let op = self.workload.next_op(&mut self.rng);
            // Open loop: latency from when the request was due.
            let start = if self.interval.is_some() { due } else { Instant::now() };
            let outcome = match op {
                Op::Get(key) => {
                    let key = self.workload.key(key);
                    tokio::time::timeout(self.op_timeout, session.get(&key))
                        .await
                        .map(|r| r.map(drop))
                }
                Op::Put(key) => {
                    let key = self.workload.key(key);
                    tokio::time::timeout(self.op_timeout, session.put(&key, &value)).await
                }
            };
            let took = Instant::now().saturating_duration_since(start);
            if let Some(interval) = self.interval {
                due += interval;
            }
            if !measuring {
                continue;
            }
            match outcome {
                Ok(Ok(())) => {
                    let nanos = (took.as_nanos() as u64).clamp(1, MAX_LATENCY.as_nanos() as u64);
                    tally.latencies.saturating_record(nanos);
                }
                Ok(Err(error)) => {
                    tally.errors += 1;
                    tally.first_error.get_or_insert_with(|| error.to_string());
                }
                Err(_elapsed) => tally.timeouts += 1,
            }
            self.progress.inc(1);
        }
        Ok(tally)
    }

    /// Takes one measured request from the run's budget; false once it is spent.
    fn claim(&self) -> bool {
        match self.length {
            Length::Ops(ops) => {
                let taken = self.claimed.fetch_add(1, Ordering::Relaxed);
                if taken >= ops {
                    self.stop.store(true, Ordering::Relaxed);
                    return false;
                }
                true
            }
            Length::Duration(_) => true,
        }
    }
}
