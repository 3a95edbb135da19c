//! `kvs-node cluster`: every node of the cluster file as a child process on this machine.
//!
//! Prints where each node listens and, once elected, who leads. A node that
//! exits on its own is reported and started again (it recovers from its data
//! folder); Ctrl-C or SIGTERM stops them all.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use client::{Client, ClientConfig};
use protocol::Role;
use tokio::process::{Child, Command};

use crate::config::ClusterFile;
use crate::LogFormat;

struct Member {
    id: u64,
    child: Child,
}

fn spawn_node(config: &Path, id: u64, format: LogFormat) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the kvs-node executable")?;
    let format = match format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    Command::new(exe)
        .arg("--config")
        .arg(config)
        .arg("--id")
        .arg(id.to_string())
        .arg("--log-format")
        .arg(format)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start node {id}"))
}

/// How to run `kvctl` from here, as printed in the hint: the binary beside
/// this one if it was built (`cargo build --release -p client`), otherwise the
/// cargo command that builds and runs it from the workspace.
fn kvctl_command() -> String {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("kvctl")))
        .filter(|kvctl| kvctl.is_file());
    match beside {
        Some(kvctl) => {
            // Shorter when it lies under the working folder, as after `cargo run`.
            let relative = std::env::current_dir()
                .ok()
                .and_then(|here| kvctl.strip_prefix(here).ok().map(Path::to_path_buf));
            relative.unwrap_or(kvctl).display().to_string()
        }
        None => "cargo run --release -q -p client --bin kvctl --".to_string(),
    }
}

pub fn run_cluster(config: &Path, format: LogFormat) -> anyhow::Result<u8> {
    let file = ClusterFile::load(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut members = Vec::new();
        for node in &file.nodes {
            members.push(Member {
                id: node.id,
                child: spawn_node(config, node.id, format)?,
            });
            let resp = node
                .resp_addr
                .as_ref()
                .map_or_else(String::new, |addr| format!(", Redis protocol on {addr}"));
            println!(
                "node {}: clients on {}, peers on {}{resp}, data in {}",
                node.id,
                node.client_addr,
                node.peer_addr,
                file.data_dir().join(node.id.to_string()).display()
            );
        }
        let kvctl = kvctl_command();
        let endpoints: Vec<String> = file.nodes.iter().map(|n| n.client_addr.clone()).collect();
        let mut probe_config = ClientConfig::new(endpoints.clone());
        probe_config.cluster_id = file.cluster.id.clone();
        let probe = Client::new(probe_config)?;
        let mut announced: Option<(u64, u64)> = None;
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = crate::wait_for_shutdown_signal() => break,
                _ = ticker.tick() => {
                    for member in &mut members {
                        if let Ok(Some(status)) = member.child.try_wait() {
                            eprintln!("node {} exited ({status}); starting it again", member.id);
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            member.child = spawn_node(config, member.id, format)?;
                        }
                    }
                    for (endpoint, status) in probe.cluster_status().await {
                        if let Ok(status) = status {
                            if status.role == Role::Leader && announced != Some((status.node_id, status.term)) {
                                announced = Some((status.node_id, status.term));
                                println!("leader: node {} at {endpoint} (term {})", status.node_id, status.term);
                                println!("try:    {kvctl} --endpoints {} put hello world", endpoints.join(","));
                            }
                        }
                    }
                }
            }
        }
        println!("stopping the cluster");
        for member in &mut members {
            if let Some(pid) = member.child.id() {
                // SIGTERM lets each node flush and close its files.
                let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
            }
        }
        for member in &mut members {
            if tokio::time::timeout(Duration::from_secs(10), member.child.wait())
                .await
                .is_err()
            {
                let _ = member.child.kill().await;
            }
        }
        anyhow::Ok(0)
    })
}
