//! `kvs-node`: one node of a kvs cluster, or (`kvs-node cluster`) a whole local cluster.

mod config;
mod launcher;
mod network;
mod resp;
mod supervisor;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info};

/// A node of the kvs replicated key-value store.
///
/// Give `--id N` to run the node of the cluster file's [[nodes]] entry N, or
/// the `cluster` command to run every node of the file on this machine.
#[derive(Parser)]
#[command(name = "kvs-node", version, about, long_about, subcommand_negates_reqs = true)]
struct Cli {
    /// The cluster file.
    #[arg(long, global = true, default_value = "cluster.toml")]
    config: PathBuf,
    /// Which [[nodes]] entry this process is (required unless the `cluster` command is given).
    #[arg(long, required = true)]
    id: Option<u64>,
    /// Trace format: text for people, json for machines. RUST_LOG filters (default: info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start every node of the cluster file on this machine, as child processes; Ctrl-C stops them all.
    Cluster,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: a trace written to a file or a
    // pipe stays plain text (and NO_COLOR turns them off, as usual).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match (&cli.command, cli.id) {
        (Some(Command::Cluster), _) => launcher::run_cluster(&cli.config, cli.log_format),
        (None, Some(id)) => run_node(&cli.config, id),
        (None, None) => Err(anyhow::anyhow!(
            "give --id N to run one node, or the `cluster` command to run them all"
        )),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            // One line, once: a person reads stderr, a machine reads the JSON traces.
            match cli.log_format {
                LogFormat::Text => eprintln!("kvs-node: {e:#}"),
                LogFormat::Json => error!("{e:#}"),
            }
            std::process::ExitCode::from(2)
        }
    }
}

fn run_node(config_path: &std::path::Path, id: u64) -> anyhow::Result<u8> {
    let file = config::ClusterFile::load(config_path)?;
    let system = actix_rt::System::new();
    system
        .block_on(async {
            supervisor::start_node(&file, id).await?;
            actix::spawn(async {
                wait_for_shutdown_signal().await;
                info!("shutdown requested: stopping actors");
                actix::System::current().stop();
            });
            anyhow::Ok(())
        })
        .context("node failed to start")?;
    let code = system.run_with_code()?;
    info!(code, "node stopped");
    Ok(u8::try_from(code).unwrap_or(1))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
