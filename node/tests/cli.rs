//! The `kvs-node` command line: help, and clear refusals of bad start-ups.
//!
//! Having an integration test here also makes `cargo test --workspace` build
//! the `kvs-node` binary, which the `integration` suite runs.

use std::path::Path;
use std::process::{Command, Output};

fn kvs_node(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvs-node"));
    command.args(args).env("RUST_LOG", "info");
    // The environment overrides the cluster file (KVS_CLUSTER__...): keep it out.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("KVS_") {
            command.env_remove(key);
        }
    }
    command.output().expect("kvs-node runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_exits_zero_and_mentions_the_cluster_command() {
    let output = kvs_node(&["--help"]);
    assert!(output.status.success(), "--help failed: {:?}", output.status);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("cluster"), "--help does not mention `cluster`:\n{text}");
    assert!(text.contains("--config"), "--help does not mention --config:\n{text}");
}

#[test]
fn a_missing_config_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-cluster.toml");
    let output = kvs_node(&["--config", missing.to_str().unwrap(), "--id", "1"]);
    assert!(!output.status.success(), "started without a config file");
    let text = stderr(&output);
    assert!(
        text.contains("no-such-cluster.toml"),
        "the error does not name the missing file:\n{text}"
    );
}

fn write_config(dir: &Path, heartbeat_ms: u64, election_ms: u64) -> std::path::PathBuf {
    let path = dir.join("cluster.toml");
    let text = format!(
        r#"
[cluster]
id = "cli-test"
data_dir = "data"
heartbeat_interval_ms = {heartbeat_ms}
election_timeout_ms = {election_ms}

[[nodes]]
id = 1
client_addr = "127.0.0.1:1"
peer_addr = "127.0.0.1:2"
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn an_election_timeout_not_above_the_heartbeat_is_refused() {
    for (heartbeat, election) in [(500, 500), (900, 800)] {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), heartbeat, election);
        let output = kvs_node(&["--config", config.to_str().unwrap(), "--id", "1"]);
        assert!(
            !output.status.success(),
            "started with heartbeat {heartbeat} ms and election timeout {election} ms"
        );
        let text = stderr(&output);
        assert!(
            text.contains("election_timeout_ms") && text.contains("heartbeat_interval_ms"),
            "the error does not say which settings are wrong:\n{text}"
        );
        assert!(
            !dir.path().join("data").exists(),
            "a refused configuration still created the data folder"
        );
    }
}
