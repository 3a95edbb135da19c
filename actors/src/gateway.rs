//! ClientGateway: where client requests enter the node.
//!
//! It validates each request, gives it a node-unique request id (the id that
//! follows a write through every actor's traces), redirects clients of a
//! follower to the leader, and hands reads and writes to the ElectionActor.
//! Answers go back on the connection's own channel, tagged with the client's
//! request id, so one connection may have many requests in flight.

use std::sync::Arc;

use actix::prelude::*;
use protocol::limits;
use protocol::{ClientError, ClientRequest, ClientResponse, Command, NodeId, Operation, Reply, Role, Term};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, info_span};

use crate::commit::CommitActor;
use crate::election::ElectionActor;
use crate::messages::*;

/// Checks client requests, gives each a node-unique request id, and forwards
/// them to the ElectionActor, or redirects them to the leader.
pub struct ClientGateway {
    settings: Arc<Settings>,
    view: SharedView,
    election: Addr<ElectionActor>,
    commit: Addr<CommitActor>,
    leader: Option<NodeId>,
    role: Role,
    term: Term,
    next_request: u64,
}

impl ClientGateway {
    /// A gateway that knows no leader and takes itself for a follower in term 0
    /// until the first [`LeaderChanged`].
    pub fn new(
        settings: Arc<Settings>,
        view: SharedView,
        election: Addr<ElectionActor>,
        commit: Addr<CommitActor>,
    ) -> Self {
        ClientGateway {
            settings,
            view,
            election,
            commit,
            leader: None,
            role: Role::Follower,
            term: 0,
            next_request: 0,
        }
    }

    fn not_leader(&self) -> ClientError {
        self.settings.not_leader(self.leader)
    }

    fn check_key(&self, key: &str) -> Result<(), ClientError> {
        limits::check_key(key, self.settings.max_key_bytes)
    }

    fn check_value(&self, value: &str) -> Result<(), ClientError> {
        limits::check_value(value, self.settings.max_value_bytes)
    }

    /// Checks limits and turns a write into the command it proposes.
    fn command_for(&self, op: Operation) -> Result<Command, ClientError> {
        match op {
            Operation::Put { key, value, session } => {
                self.check_key(&key)?;
                self.check_value(&value)?;
                Ok(Command::Put { key, value, session })
            }
            Operation::Delete { key, session } => {
                self.check_key(&key)?;
                Ok(Command::Delete { key, session })
            }
            Operation::Get { .. } | Operation::Status => Err(ClientError::Malformed {
                message: "not a write".into(),
            }),
        }
    }
}

impl Actor for ClientGateway {
    type Context = Context<Self>;
}

impl Supervised for ClientGateway {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        let _span =
            info_span!("gateway", node = self.settings.node_id, term = self.view.term(), role = %self.view.role())
                .entered();
        info!("client gateway restarting");
    }
}

impl Handler<LeaderChanged> for ClientGateway {
    type Result = ();

    fn handle(&mut self, change: LeaderChanged, _ctx: &mut Context<Self>) {
        self.leader = change.leader;
        self.role = change.role;
        self.term = change.term;
    }
}

/// Sends one answer back to its connection, whenever it is ready.
fn answer(reply: mpsc::Sender<ClientResponse>, id: u64, result: Result<Reply, ClientError>) {
    // A full or closed connection channel means the client is gone or not reading.
    let _ = reply.try_send(ClientResponse { id, result });
}

/// Answers once the actors have, or with `lost` if they have not within `timeout`
/// (or dropped the request: shutting down, leadership lost before it was settled).
fn answer_when_done(
    reply: mpsc::Sender<ClientResponse>,
    id: u64,
    request_id: u64,
    answered: oneshot::Receiver<Result<Reply, ClientError>>,
    timeout: std::time::Duration,
    lost: ClientError,
) {
    actix::spawn(async move {
        let result = match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(lost),
        };
        debug!(request_id, ok = result.is_ok(), "request answered");
        answer(reply, id, result);
    });
}

impl Handler<ClientCall> for ClientGateway {
    type Result = ();

    fn handle(&mut self, call: ClientCall, _ctx: &mut Context<Self>) {
        let ClientCall {
            request: ClientRequest { id, op },
            reply,
        } = call;
        self.next_request += 1;
        let request_id = (self.settings.node_id << 48) | (self.next_request & 0xFFFF_FFFF_FFFF);
        let span = info_span!("gateway", node = self.settings.node_id, term = self.term, role = %self.role, request_id);
        let _span = span.enter();
        let timeout = self.settings.request_timeout;
        match op {
            Operation::Status => {
                let consensus = self.election.send(GetConsensusStatus);
                let applied = self.commit.send(GetApplyStatus);
                let settings = self.settings.clone();
                actix::spawn(async move {
                    let result = match (consensus.await, applied.await) {
                        (Ok(consensus), Ok(applied)) => Ok(Reply::Status(settings.node_status(consensus, applied))),
                        _ => Err(ClientError::Unavailable {
                            message: "node is shutting down".into(),
                        }),
                    };
                    answer(reply, id, result);
                });
            }
            Operation::Get { key } => {
                if let Err(e) = self.check_key(&key) {
                    return answer(reply, id, Err(e));
                }
                if self.role != Role::Leader {
                    return answer(reply, id, Err(self.not_leader()));
                }
                debug!(key_len = key.len(), "read");
                let (responder, answered) = oneshot::channel();
                self.election.do_send(Read {
                    key,
                    request_id,
                    responder,
                });
                let lost = ClientError::Unavailable {
                    message: "read not confirmed by a majority in time".into(),
                };
                answer_when_done(reply, id, request_id, answered, timeout, lost);
            }
            op => {
                let command = match self.command_for(op) {
                    Ok(command) => command,
                    Err(e) => return answer(reply, id, Err(e)),
                };
                if self.role != Role::Leader {
                    return answer(reply, id, Err(self.not_leader()));
                }
                debug!("write received");
                let (responder, answered) = oneshot::channel();
                self.election.do_send(Propose {
                    command,
                    request_id,
                    responder,
                });
                answer_when_done(reply, id, request_id, answered, timeout, ClientError::OutcomeUnknown);
            }
        }
    }
}
