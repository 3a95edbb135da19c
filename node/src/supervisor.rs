//! Starts one node: recovers it from disk, wires its five actors, opens its ports.
//!
//! Wiring order matters only for addresses: contexts are created first so
//! every actor can be handed the addresses of the others. The HeartbeatActor
//! and the ClientGateway hold no state that disk does not, so they run under
//! actix's `Supervisor` and are restarted (with a trace) if they stop. The
//! ElectionActor, LogActor and CommitActor hold the node's durable truth; if
//! one of them fails, the node stops with a non-zero exit code and recovers
//! from disk when started again, rather than continuing with half its state.

use std::sync::Arc;

use ::actors::messages::{NodeView, Settings};
use ::actors::startup::{recover, Recovered};
use ::actors::storage::mongo_store::redact_uri;
use ::actors::storage::{MongoStore, RedbStore, Store};
use ::actors::{ClientGateway, CommitActor, ElectionActor, ElectionLinks, HeartbeatActor, LogActor};
use actix::prelude::*;
use anyhow::Context as _;
use tokio::net::TcpListener;
use tracing::info;

use crate::config::ClusterFile;
use crate::network::{run_peer_link, serve_clients, serve_peers, PeerNetwork};
use crate::resp::serve_resp;

/// Runs inside the actix System: returns once the node is serving.
pub async fn start_node(file: &ClusterFile, id: protocol::NodeId) -> anyhow::Result<()> {
    let settings: Arc<Settings> = file.settings_for(id)?;
    let me = file.node(id)?.clone();
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data folder {}", settings.data_dir.display()))?;
    // Bind first: a port in use is the most common start-up error, report it before touching disk.
    let peer_listener = TcpListener::bind(&me.peer_addr)
        .await
        .with_context(|| format!("cannot listen for peers on {}", me.peer_addr))?;
    let client_listener = TcpListener::bind(&me.client_addr)
        .await
        .with_context(|| format!("cannot listen for clients on {}", me.client_addr))?;
    let resp_listener = match &me.resp_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for Redis-protocol clients on {addr}"))?,
        ),
        None => None,
    };

    // On a thread of its own: the MongoDB driver's blocking calls may not run inside this async runtime.
    let recovered = std::thread::scope(|scope| {
        scope
            .spawn(|| open_and_recover(file, id, &settings))
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the recovery thread panicked")))
    })?;

    let peers: Vec<(protocol::NodeId, String)> = file
        .nodes
        .iter()
        .filter(|n| n.id != id)
        .map(|n| (n.id, n.peer_addr.clone()))
        .collect();
    let (transport, links) = PeerNetwork::new(&peers);
    let view = Arc::new(NodeView::default());
    let client_view = view.clone();

    let election_ctx = Context::<ElectionActor>::new();
    let election = election_ctx.address();

    let log_ctx = Context::<LogActor>::new();
    let log_actor = LogActor::new(
        id,
        recovered.wal,
        election.clone(),
        transport.clone(),
        view.clone(),
        &log_ctx,
    )?;
    let log = log_ctx.run(log_actor);

    let commit_ctx = Context::<CommitActor>::new();
    let commit_actor = CommitActor::new(
        settings.clone(),
        view.clone(),
        recovered.state,
        recovered.store,
        election.clone(),
        &commit_ctx,
    )?;
    let commit = commit_ctx.run(commit_actor);

    let heartbeat = {
        let (settings, view, election) = (settings.clone(), view.clone(), election.clone());
        Supervisor::start(move |_| HeartbeatActor::new(settings, view, election))
    };
    let gateway = {
        let (settings, view, election, commit) = (settings.clone(), view.clone(), election.clone(), commit.clone());
        Supervisor::start(move |_| ClientGateway::new(settings, view, election, commit))
    };

    let links_to = ElectionLinks {
        log,
        commit,
        heartbeat,
        gateway: gateway.clone(),
    };
    election_ctx.run(ElectionActor::new(
        settings.clone(),
        recovered.core,
        view,
        transport,
        links_to,
    ));

    for link in links {
        actix::spawn(run_peer_link(
            id,
            settings.cluster_id.clone(),
            file.cluster.max_peer_frame_bytes,
            link,
        ));
    }
    let members = settings.member_ids();
    actix::spawn(serve_peers(
        peer_listener,
        id,
        settings.cluster_id.clone(),
        members,
        file.cluster.max_peer_frame_bytes,
        election,
    ));
    actix::spawn(serve_clients(
        client_listener,
        id,
        settings.cluster_id.clone(),
        client_view,
        gateway,
    ));
    if let Some(listener) = resp_listener {
        // This node first: the gateway reaches the leader through it.
        let mut endpoints = vec![me.client_addr.clone()];
        endpoints.extend(file.nodes.iter().filter(|n| n.id != id).map(|n| n.client_addr.clone()));
        actix::spawn(serve_resp(listener, endpoints, settings.cluster_id.clone()));
        info!(node = id, resp_addr = ?me.resp_addr, "Redis-protocol gateway serving");
    }
    info!(
        node = id,
        client_addr = %me.client_addr,
        peer_addr = %me.peer_addr,
        data_dir = %settings.data_dir.display(),
        storage = %file.storage.engine,
        "node serving"
    );
    Ok(())
}

/// Opens the configured state store and rebuilds the node from it and the log.
fn open_and_recover(file: &ClusterFile, id: protocol::NodeId, settings: &Settings) -> anyhow::Result<Recovered> {
    let store: Box<dyn Store> = match file.storage.engine.as_str() {
        "mongodb" => {
            let config = file.mongodb_config(id)?;
            info!(uri = %redact_uri(&config.uri), database = %config.database, "connecting to MongoDB");
            Box::new(MongoStore::connect(&config)?)
        }
        _ => Box::new(RedbStore::open(&settings.data_dir).context("cannot open the state store")?),
    };
    recover(settings, store).context("recovery from disk failed")
}
