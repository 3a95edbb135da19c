//! A CI-sized slice of the fault-injection suite (the long mode is the `chaos` binary).

use std::time::Duration;

use integration::chaos::{run, ChaosOptions};

async fn slice(name: &str, seeds: std::ops::Range<u64>, nodes: usize) {
    for seed in seeds {
        let options = ChaosOptions {
            nodes,
            duration: Duration::from_secs(8),
            ..ChaosOptions::new(name, seed)
        };
        let report = run(&options).await;
        println!("{}", report.line());
        assert!(report.passed(), "{}\nkept: {:?}", report.line(), report.kept);
        assert!(
            report.faults.values().sum::<usize>() >= 3,
            "too few faults: {:?}",
            report.faults
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_stay_linearizable_under_faults() {
    slice("chaos3", 1..3, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_stay_linearizable_under_faults() {
    slice("chaos5", 101..102, 5).await;
}
