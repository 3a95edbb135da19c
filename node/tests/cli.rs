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

/// A one-node cluster file with `extra` appended to its [cluster] section.
fn config_with(dir: &Path, cluster_extra: &str, node_extra: &str) -> std::path::PathBuf {
    let path = dir.join("cluster.toml");
    let text = format!(
        "[cluster]\nid = \"cli-test\"\n{cluster_extra}\n\n[[nodes]]\nid = 1\nclient_addr = \"127.0.0.1:1\"\n\
         peer_addr = \"127.0.0.1:2\"\n{node_extra}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The one line kvs-node printed on stderr, checked to be alone.
fn only_line(output: &Output) -> String {
    let text = stderr(output);
    assert_eq!(text.lines().count(), 1, "expected one line on stderr:\n{text}");
    text.trim_end().to_string()
}

#[test]
fn a_misspelt_key_is_refused_naming_the_key_the_file_and_the_closest_key() {
    let cases = [
        (
            "elction_timeout_ms = 1000",
            "",
            "`cluster.elction_timeout_ms`",
            "`cluster.election_timeout_ms`",
        ),
        (
            "",
            "clinet_addr = \"x\"",
            "`nodes[0].clinet_addr`",
            "`nodes[0].client_addr`",
        ),
        ("[storge]\nengine = \"embedded\"", "", "`storge`", "`storage`"),
        (
            "[storage]\nengin = \"embedded\"",
            "",
            "`storage.engin`",
            "`storage.engine`",
        ),
    ];
    for (cluster_extra, node_extra, key, closest) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with(dir.path(), cluster_extra, node_extra);
        let output = kvs_node(&["--config", config.to_str().unwrap(), "--id", "1"]);
        assert_eq!(output.status.code(), Some(2), "started with {key}: {}", stderr(&output));
        let line = only_line(&output);
        assert_eq!(
            line,
            format!(
                "kvs-node: unknown key {key} in {}; the closest known key is {closest}",
                config.display()
            )
        );
        assert!(!dir.path().join("data").exists(), "a refused file still created data/");
    }
}

#[test]
fn a_misspelt_environment_override_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "", "");
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvs-node"));
    command
        .args(["--config", config.to_str().unwrap(), "--id", "1"])
        .env("KVS_CLUSTER__HEARTBEAT_MS", "100")
        // Other programs' KVS_ variables are not overrides and stay allowed.
        .env("KVS_ENDPOINTS", "127.0.0.1:1");
    let output = command.output().expect("kvs-node runs");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        only_line(&output),
        "kvs-node: unknown key `cluster.heartbeat_ms` in the environment variable KVS_CLUSTER__HEARTBEAT_MS; \
         the closest known key is `cluster.heartbeat_interval_ms`"
    );
}

#[test]
fn a_missing_file_is_reported_once_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let output = kvs_node(&["--config", missing.to_str().unwrap(), "--id", "1"]);
    assert_eq!(output.status.code(), Some(2));
    let line = only_line(&output);
    assert_eq!(
        line,
        format!(
            "kvs-node: cannot read {0}: configuration file \"{0}\" not found",
            missing.display()
        )
    );
}

#[test]
fn help_says_that_an_id_or_the_cluster_command_is_required() {
    let output = kvs_node(&["--help"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("--id <ID>") && text.contains("required"), "{text}");
    let output = kvs_node(&[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--id <ID>"), "{}", stderr(&output));
}

#[test]
fn a_known_environment_override_still_applies() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with(dir.path(), "", "");
    let output = Command::new(env!("CARGO_BIN_EXE_kvs-node"))
        .args(["--config", config.to_str().unwrap(), "--id", "1"])
        .env("KVS_CLUSTER__ELECTION_TIMEOUT_MS", "100")
        .output()
        .expect("kvs-node runs");
    assert_eq!(output.status.code(), Some(2));
    // Refused with the overridden value: the override reached the settings.
    assert!(
        only_line(&output).contains("election_timeout_ms (100)"),
        "{}",
        stderr(&output)
    );
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `kvs-node cluster` lists every port of every node, and the `kvctl` hint it
/// prints once a leader is elected works as printed.
#[test]
fn the_cluster_command_lists_every_port_and_prints_a_hint_that_works() {
    use std::io::BufRead;

    let dir = tempfile::tempdir().unwrap();
    let (client, peer, resp) = (free_port(), free_port(), free_port());
    let path = dir.path().join("cluster.toml");
    std::fs::write(
        &path,
        format!(
            "[cluster]\nid = \"cli-launcher\"\nheartbeat_interval_ms = 100\nelection_timeout_ms = 400\n\n\
             [[nodes]]\nid = 1\nclient_addr = \"127.0.0.1:{client}\"\npeer_addr = \"127.0.0.1:{peer}\"\n\
             resp_addr = \"127.0.0.1:{resp}\"\n"
        ),
    )
    .unwrap();
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_kvs-node"))
        .args(["--config", path.to_str().unwrap(), "cluster"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kvs-node cluster starts");
    // Lines arrive on a thread, so a launcher that never elects fails the test in time.
    let (lines, received) = std::sync::mpsc::channel();
    let stdout = launcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let hint = loop {
        match received.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(line) if line.starts_with("try:") => break line,
            Ok(line) => printed.push(line),
            Err(_) => {
                let _ = launcher.kill();
                panic!("no hint within 30 s; printed:\n{}", printed.join("\n"));
            }
        }
    };
    let node_line = printed
        .iter()
        .find(|line| line.starts_with("node 1:"))
        .expect("a line for node 1");
    for port in [client, peer, resp] {
        assert!(
            node_line.contains(&format!("127.0.0.1:{port}")),
            "port {port} missing: {node_line}"
        );
    }

    let words: Vec<&str> = hint.trim_start_matches("try:").split_whitespace().collect();
    let outcome = if words.first() == Some(&"cargo") {
        // kvctl was not built beside kvs-node (`cargo test -p node` alone):
        // the hint is the cargo command that builds and runs it.
        assert!(
            hint.contains("cargo run --release -q -p client --bin kvctl --"),
            "{hint}"
        );
        None
    } else {
        Some(Command::new(words[0]).args(&words[1..]).output())
    };
    let _ = Command::new("kill").arg(launcher.id().to_string()).status();
    let _ = launcher.wait();
    if let Some(output) = outcome {
        let output = output.unwrap_or_else(|e| panic!("the hint {hint:?} does not run: {e}"));
        assert!(
            output.status.success(),
            "the hint {hint:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
