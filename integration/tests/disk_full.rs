//! A node whose disk fills up (ENOSPC, on a real filesystem: a small tmpfs
//! mounted over its data folder) stops with exit code 70 once its
//! write-ahead log cannot grow, never acknowledges what it could not write,
//! and, given space again, recovers and catches up; the cluster serves
//! throughout and loses no acknowledged write.
//!
//! Needs root (it mounts a filesystem); CI runs as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::{assert_all_readable, pairs, put_all, TestCluster, Timers};

/// The exit code of a node stopped by `fatal` (actors::runtime::EXIT_FATAL).
const EXIT_FATAL: i32 = 70;

/// A tmpfs mounted at a path for the life of the value.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(at: &Path, bytes: u64) -> Mounted {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(at)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs at {} failed", at.display());
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("folder entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a data file");
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read folder")
        .map(|e| e.expect("folder entry").metadata().expect("metadata").len())
        .sum()
}

#[tokio::test]
async fn a_node_whose_disk_fills_stops_and_recovers_without_losing_a_write() {
    if !is_root() {
        eprintln!("SKIPPED: mounting a small filesystem needs root (CI runs as root)");
        return;
    }
    let timers = Timers {
        trim_interval_ms: 600_000,
        ..Timers::default()
    };
    let mut cluster = TestCluster::start("disk-full", 3, timers);
    let bound = cluster.timers().election_bound();
    let (leader, _) = cluster.wait_for_leader(bound).await;
    let client = cluster.client();
    let mut written = put_all(&client, pairs("before", 0..50)).await;
    let victim = cluster.ids().into_iter().find(|&id| id != leader).expect("a follower");
    cluster.wait_caught_up(victim, bound).await;

    // Move the victim's data onto a filesystem with about 1.5 MiB to spare.
    cluster.kill(victim);
    let data = cluster.data_dir(victim);
    let saved = cluster.root().join("saved-data");
    copy_dir(&data, &saved);
    std::fs::remove_dir_all(&data).expect("empty the data folder");
    std::fs::create_dir_all(&data).expect("recreate the data folder");
    let mount = Mounted::tmpfs(&data, dir_bytes(&saved) + (3 << 19));
    copy_dir(&saved, &data);
    cluster.restart(victim);
    cluster.wait_caught_up(victim, bound).await;

    // Values of 2 KiB: the victim's log needs more than the space left.
    let value = "v".repeat(2000);
    let started = Instant::now();
    let mut batch = 0;
    while cluster.is_running(victim) {
        let batch_pairs: Vec<(String, String)> =
            (0..50).map(|i| (format!("full-{batch}-{i}"), value.clone())).collect();
        // Every put is acknowledged: the other two nodes are a majority.
        written.extend(put_all(&client, batch_pairs).await);
        batch += 1;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "node {victim} still runs with a full disk after {batch} batches\n{}",
            cluster.log_tail(victim, 20)
        );
    }
    let exit = cluster.last_exit(victim).expect("the victim exited");
    assert_eq!(
        exit.code(),
        Some(EXIT_FATAL),
        "{exit:?}\n{}",
        cluster.log_tail(victim, 20)
    );
    let trace = cluster.log_text(victim);
    assert!(
        trace.contains("No space left on device"),
        "the trace does not name the cause:\n{}",
        cluster.log_tail(victim, 20)
    );
    assert!(trace.contains("fatal:"), "{}", cluster.log_tail(victim, 20));
    for line in trace
        .lines()
        .filter(|l| l.contains("No space left") || l.contains("fatal:"))
    {
        eprintln!("node {victim}: {line}");
    }

    // Space again: the files move back to an ordinary folder.
    let full = cluster.root().join("full-data");
    copy_dir(&data, &full);
    drop(mount);
    std::fs::remove_dir_all(&data).expect("empty the data folder");
    copy_dir(&full, &data);
    cluster.restart(victim);
    written.extend(put_all(&client, pairs("after", 0..20)).await);
    cluster.wait_caught_up(victim, Duration::from_secs(30)).await;

    // The victim holds everything: with the leader down it is half of the
    // majority that must serve every acknowledged key.
    cluster.kill(leader);
    cluster.wait_for_leader(bound).await;
    assert_all_readable(&client, &written).await;
}
