//! Client library for kvs, a replicated key-value store.
//!
//! A [`Client`] keeps one shared, pipelined connection to the node it believes
//! is the leader. Every operation retries on its own until its deadline
//! ([`ClientConfig::request_timeout`]): it follows `NotLeader` redirects, tries
//! the other endpoints while no leader is known, and re-sends after lost
//! connections, `Unavailable` and `OutcomeUnknown`. Writes carry an
//! exactly-once session (`client_id`, `seq`, `acked_below`); a retried write
//! re-sends the same `(client_id, seq)`, so it is applied at most once.
//!
//! The package is `client`; its library is named `kv` because it is also the
//! C library `libkv.so` (the original system's C API, in [`ffi`]). The other
//! crates of the workspace depend on it under the name `client`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kv::Error> {
//! let client = kv::Client::connect(kv::ClientConfig::new(vec!["127.0.0.1:5000".into()])).await?;
//! let old = client.put("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?.as_deref(), Some("hello"));
//! # let _ = old; Ok(()) }
//! ```

#![warn(missing_docs)]

mod connection;
pub mod ffi;
mod session;
pub mod validate;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use protocol::limits::MAX_CLIENT_FRAME;
use protocol::{ClientError, ClientRequest, NodeStatus, Operation, Reply, Session, WireError};
use rand::Rng;
use tokio::time::Instant;

use crate::connection::Connection;
use crate::session::{SessionTracker, WriteSlot};

/// Longest a single attempt waits for its answer before the connection is
/// abandoned and the request re-sent (bounded by the operation's deadline).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause between retries; it doubles on each retry up to [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_millis(20);
/// Longest pause between retries.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// How to reach a cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Client addresses (`host:port`) of the nodes; any subset is enough, the
    /// leader is found through redirects.
    pub endpoints: Vec<String>,
    /// The cluster id sent in the handshake; empty is accepted by every node.
    pub cluster_id: String,
    /// Limit for connecting to one endpoint, handshake included.
    pub connect_timeout: Duration,
    /// Overall deadline of one operation, retries included.
    pub request_timeout: Duration,
    /// Give up at once, with [`Error::Unreachable`], when one pass over the
    /// endpoints finds every one refusing connections and nothing was sent
    /// yet, instead of retrying until `request_timeout`. For one-shot tools
    /// (`kvctl`); long-lived clients keep `false` to ride out a restart of the
    /// whole cluster. A cluster that is up but has no leader still gets the
    /// whole timeout.
    pub fail_fast_when_unreachable: bool,
}

impl ClientConfig {
    /// A configuration with an empty cluster id, a 2 s connect timeout and a
    /// 10 s request timeout.
    pub fn new(endpoints: Vec<String>) -> Self {
        ClientConfig {
            endpoints,
            cluster_id: String::new(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            fail_fast_when_unreachable: false,
        }
    }
}

/// Everything an operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request for a reason retrying cannot fix
    /// (`KeyTooLarge`, `ValueTooLarge`, `EmptyKey`, `Malformed`,
    /// `SessionBacklogFull`): it was not applied.
    #[error(transparent)]
    Server(#[from] ClientError),
    /// The server forgot this write's exactly-once session after an earlier
    /// attempt of the write had been sent: it may or may not have been
    /// applied (at most once). Later writes go to a new session.
    #[error("the write's exactly-once session expired after it was sent: it may or may not have been applied")]
    SessionLost,
    /// No connection could be made. Returned by an operation only when it never
    /// managed to send its request, so a write failing this way was not applied.
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// The socket error, or a timeout of the connection and handshake together.
        #[source]
        source: std::io::Error,
    },
    /// A whole pass over the endpoints connected to none; each endpoint with
    /// its error, in the order tried. Like `Connect`, only returned when the
    /// request was never sent, so a write failing this way was not applied.
    #[error("cannot connect to any endpoint: {}", describe_failures(.failures))]
    Unreachable {
        /// Each endpoint tried, with its error.
        failures: Vec<(String, std::io::Error)>,
    },
    /// A node refused the handshake (wrong cluster id, unsupported version, ...).
    #[error("{endpoint} refused the handshake: {message}")]
    Handshake {
        /// The node that refused.
        endpoint: String,
        /// The node's reason.
        message: String,
    },
    /// The operation's deadline passed. For a write the outcome is unknown: it
    /// may or may not have been applied (at most once).
    #[error("request timed out (a write may or may not have been applied)")]
    Timeout,
    /// The configuration names no endpoint.
    #[error("no endpoints configured")]
    NoEndpoints,
    /// The connection was closed before the answer arrived.
    #[error("connection to {endpoint} closed")]
    ConnectionClosed {
        /// The endpoint of the connection.
        endpoint: String,
    },
    /// The encoded request would not fit in a client frame.
    #[error("request is {len} bytes encoded, more than the frame limit of {max}")]
    FrameTooLarge {
        /// The encoded request's length, in bytes.
        len: usize,
        /// The client frame limit, in bytes.
        max: usize,
    },
    /// The server answered with a reply of the wrong kind.
    #[error("unexpected reply from the server: {0}")]
    UnexpectedReply(String),
    /// A socket error during the handshake, after the connection was made.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    /// A message could not be encoded, or a node's handshake reply could not be decoded.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// `a:1: connection refused; b:2: connection refused`.
fn describe_failures(failures: &[(String, std::io::Error)]) -> String {
    let described: Vec<String> = failures
        .iter()
        .map(|(endpoint, error)| format!("{endpoint}: {error}"))
        .collect();
    described.join("; ")
}

/// An error and its causes on one line (`a: b: c`), as `{:#}` prints an
/// anyhow chain: for messages on stderr and in `kvctl`'s output.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// A handle to a kvs cluster. Cheap to clone; all clones share one connection
/// and one exactly-once session, and may be used from many tasks at once.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    next_request_id: AtomicU64,
    sessions: Mutex<SessionTracker>,
    slot: tokio::sync::Mutex<Slot>,
    /// Mirror of the slot's endpoint, readable without awaiting.
    connected: Mutex<Option<String>>,
}

/// The shared connection and how to find the next one.
struct Slot {
    conn: Option<Arc<Connection>>,
    /// Bumped whenever `conn` changes, so a stale failure report cannot drop a
    /// connection another task has just made.
    generation: u64,
    /// A leader address learned from a redirect, tried first on reconnect.
    preferred: Option<String>,
    /// Index into the endpoints where the next search starts.
    cursor: usize,
}

/// The three data operations, before a session is attached.
enum Request<'a> {
    Get { key: &'a str },
    Put { key: &'a str, value: &'a str },
    Delete { key: &'a str },
}

impl Request<'_> {
    fn is_write(&self) -> bool {
        !matches!(self, Request::Get { .. })
    }

    fn operation(&self, session: Option<Session>) -> Operation {
        match self {
            Request::Get { key } => Operation::Get { key: key.to_string() },
            Request::Put { key, value } => Operation::Put {
                key: key.to_string(),
                value: value.to_string(),
                session,
            },
            Request::Delete { key } => Operation::Delete {
                key: key.to_string(),
                session,
            },
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.config.endpoints)
            .field("client_id", &self.client_id())
            .field("connected", &self.connected_endpoint())
            .finish()
    }
}

impl Client {
    /// Creates a client without connecting; the first operation connects.
    /// Fails only when no endpoint is configured.
    pub fn new(mut config: ClientConfig) -> Result<Client, Error> {
        config.endpoints = config
            .endpoints
            .iter()
            .map(|endpoint| endpoint.trim().to_string())
            .filter(|endpoint| !endpoint.is_empty())
            .collect();
        if config.endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let client_id = rand::thread_rng().gen::<u64>();
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                next_request_id: AtomicU64::new(1),
                sessions: Mutex::new(SessionTracker::new(client_id)),
                slot: tokio::sync::Mutex::new(Slot {
                    conn: None,
                    generation: 0,
                    preferred: None,
                    cursor: 0,
                }),
                connected: Mutex::new(None),
            }),
        })
    }

    /// Creates a client and connects to the first endpoint (in order) that
    /// accepts the handshake, cycling through them with backoff until
    /// `request_timeout`. A handshake rejection with no endpoint accepting is
    /// returned at once; otherwise the last connection error is.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let client = Client::new(config)?;
        let deadline = Instant::now() + client.inner.config.request_timeout;
        let mut backoff = Backoff::new();
        let mut last_error = None;
        loop {
            match client.inner.current_connection(deadline).await {
                Ok(_) => return Ok(client),
                Err(error @ Error::Handshake { .. }) => return Err(error),
                Err(error) if client.inner.fails_fast(&error) => return Err(error),
                // The deadline passed: report why the earlier tries failed.
                Err(Error::Timeout) => return Err(last_error.unwrap_or(Error::Timeout)),
                Err(error) => {
                    if Instant::now() >= deadline {
                        return Err(error);
                    }
                    last_error = Some(error);
                    backoff.wait(deadline).await;
                }
            }
        }
    }

    /// Creates a client and makes one pass over the endpoints, in order,
    /// giving each `connect_timeout` to accept the connection and the
    /// handshake; the first that does becomes the shared connection (see
    /// [`Client::connected_endpoint`]). No endpoint is tried twice: if none
    /// answers, the pass's error is returned (a handshake rejection if there
    /// was one, else the last connection error).
    pub async fn connect_once(config: ClientConfig) -> Result<Client, Error> {
        let client = Client::new(config)?;
        let config = &client.inner.config;
        let tries = u32::try_from(config.endpoints.len()).unwrap_or(u32::MAX);
        // Room for every endpoint's full connect timeout, so only the
        // endpoints themselves end the pass.
        let pass = config
            .connect_timeout
            .saturating_mul(tries)
            .saturating_add(Duration::from_secs(1))
            .min(Duration::from_secs(86_400));
        client.inner.current_connection(Instant::now() + pass).await?;
        Ok(client)
    }

    /// Stores `value` under `key`; returns the value it replaced.
    pub async fn put(&self, key: &str, value: &str) -> Result<Option<String>, Error> {
        expect_value(self.execute(Request::Put { key, value }).await?)
    }

    /// Reads `key` through the leader.
    pub async fn get(&self, key: &str) -> Result<Option<String>, Error> {
        expect_value(self.execute(Request::Get { key }).await?)
    }

    /// Removes `key`; returns the value it had.
    pub async fn delete(&self, key: &str) -> Result<Option<String>, Error> {
        expect_value(self.execute(Request::Delete { key }).await?)
    }

    /// The status of the node at `endpoint`, over a connection of its own
    /// (no redirect, no retry), within `request_timeout`.
    pub async fn status(&self, endpoint: &str) -> Result<NodeStatus, Error> {
        let config = &self.inner.config;
        let deadline = Instant::now() + config.request_timeout;
        let conn = Connection::open(
            endpoint,
            &config.cluster_id,
            config.connect_timeout.min(config.request_timeout),
        )
        .await?;
        let id = self.inner.next_request_id();
        let frame = encode_request(&ClientRequest {
            id,
            op: Operation::Status,
        })?;
        let response = tokio::time::timeout_at(deadline, conn.call(id, frame))
            .await
            .map_err(|_| Error::Timeout)??;
        match response.result? {
            Reply::Status(status) => Ok(status),
            other => Err(Error::UnexpectedReply(format!("{other:?} to a status request"))),
        }
    }

    /// The status of every configured endpoint, asked concurrently, in the
    /// order of the configuration.
    pub async fn cluster_status(&self) -> Vec<(String, Result<NodeStatus, Error>)> {
        let asks = self.inner.config.endpoints.iter().map(|endpoint| async move {
            let status = self.status(endpoint).await;
            (endpoint.clone(), status)
        });
        futures::future::join_all(asks).await
    }

    /// The endpoint of the shared connection, if one is open.
    pub fn connected_endpoint(&self) -> Option<String> {
        lock(&self.inner.connected).clone()
    }

    /// The id of the exactly-once session new writes go to (random; a new
    /// one is chosen when the cluster has forgotten the old one).
    pub fn client_id(&self) -> u64 {
        lock(&self.inner.sessions).current_id()
    }

    /// The configuration in use (endpoints trimmed, empty ones dropped).
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Runs one operation to completion: retries, redirects and reconnects
    /// until it gets a final answer or its deadline passes.
    async fn execute(&self, request: Request<'_>) -> Result<Reply, Error> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.config.request_timeout;
        let mut seq = request.is_write().then(|| SeqGuard::begin(inner));
        // An attempt of this write's current slot was sent and its outcome is
        // unknown (no answer, OutcomeUnknown, Unavailable): it may be applied.
        // NotLeader is definite: a follower proposes nothing.
        let mut maybe_applied = false;
        let mut backoff = Backoff::new();
        let mut sent = false;
        let mut redirects = 0u32;
        let mut last_error: Option<Error> = None;

        loop {
            if Instant::now() >= deadline {
                return Err(give_up(sent, last_error));
            }
            let (conn, generation) = match inner.current_connection(deadline).await {
                Ok(found) => found,
                Err(error @ Error::Handshake { .. }) => return Err(error),
                Err(error) if !sent && inner.fails_fast(&error) => return Err(error),
                Err(Error::Timeout) => continue,
                Err(error) => {
                    last_error = Some(error);
                    backoff.wait(deadline).await;
                    continue;
                }
            };

            let session = seq.as_ref().map(|guard| {
                let (acked_below, floor) = lock(&inner.sessions).send(guard.slot);
                Session {
                    client_id: guard.slot.client_id,
                    seq: guard.slot.seq,
                    acked_below,
                    floor: Some(floor),
                }
            });
            let id = inner.next_request_id();
            let frame = encode_request(&ClientRequest {
                id,
                op: request.operation(session),
            })?;
            let limit = ATTEMPT_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
            sent = true;
            let response = match tokio::time::timeout(limit, conn.call(id, frame)).await {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => {
                    maybe_applied = true;
                    tracing::debug!(endpoint = conn.endpoint(), %error, "attempt failed; reconnecting");
                    inner.invalidate(generation, deadline).await;
                    last_error = Some(error);
                    backoff.wait(deadline).await;
                    continue;
                }
                Err(_) => {
                    maybe_applied = true;
                    tracing::debug!(
                        endpoint = conn.endpoint(),
                        "no answer in time; abandoning the connection"
                    );
                    inner.invalidate(generation, deadline).await;
                    last_error = Some(Error::Timeout);
                    continue;
                }
            };

            match response.result {
                Ok(reply) => return Ok(reply),
                Err(ClientError::NotLeader {
                    leader_addr: Some(leader),
                    ..
                }) => {
                    tracing::debug!(from = conn.endpoint(), to = %leader, "redirected to the leader");
                    inner.redirect(generation, leader, deadline).await;
                    redirects += 1;
                    // Follow the first redirect at once; pause on later ones in
                    // case nodes disagree about who leads.
                    if redirects > 1 {
                        backoff.wait(deadline).await;
                    }
                }
                Err(error @ ClientError::NotLeader { leader_addr: None, .. }) => {
                    tracing::debug!(endpoint = conn.endpoint(), "leader unknown; trying another endpoint");
                    inner.invalidate(generation, deadline).await;
                    last_error = Some(Error::Server(error));
                    backoff.wait(deadline).await;
                }
                Err(error @ (ClientError::Unavailable { .. } | ClientError::OutcomeUnknown)) => {
                    maybe_applied = true;
                    tracing::debug!(endpoint = conn.endpoint(), %error, "retrying");
                    last_error = Some(Error::Server(error));
                    backoff.wait(deadline).await;
                }
                Err(ClientError::SessionExpired { applied_index }) => {
                    let Some(guard) = seq.as_mut() else {
                        return Err(Error::UnexpectedReply("SessionExpired to a read".into()));
                    };
                    lock(&inner.sessions).expired(guard.slot.client_id, applied_index);
                    if maybe_applied {
                        return Err(Error::SessionLost);
                    }
                    // Every attempt so far was refused outright: the write was
                    // never applied. Send it again in the new session.
                    tracing::debug!(applied_index, "session expired; starting a new one");
                    guard.restart();
                }
                Err(error) => return Err(Error::Server(error)),
            }
        }
    }
}

impl Inner {
    fn next_request_id(&self) -> u64 {
        self.next_request_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether `error` ends an operation at once under
    /// `fail_fast_when_unreachable`: every endpoint refused (an endpoint that
    /// timed out may be a live node behind a slow link, so it does not count).
    fn fails_fast(&self, error: &Error) -> bool {
        self.config.fail_fast_when_unreachable
            && matches!(error, Error::Unreachable { failures }
                if failures.iter().all(|(_, error)| error.kind() != std::io::ErrorKind::TimedOut))
    }

    /// The shared connection, opening one if there is none (or it died). Only
    /// one task connects at a time; the others wait and then share its result.
    async fn current_connection(&self, deadline: Instant) -> Result<(Arc<Connection>, u64), Error> {
        let mut slot = tokio::time::timeout_at(deadline, self.slot.lock())
            .await
            .map_err(|_| Error::Timeout)?;
        if let Some(conn) = &slot.conn {
            if !conn.is_closed() {
                return Ok((conn.clone(), slot.generation));
            }
            self.drop_connection(&mut slot);
        }

        let endpoints = &self.config.endpoints;
        let preferred = slot.preferred.take();
        let mut candidates: Vec<String> = preferred.iter().cloned().collect();
        candidates.extend(
            (0..endpoints.len())
                .map(|k| endpoints[(slot.cursor + k) % endpoints.len()].clone())
                .filter(|endpoint| Some(endpoint) != preferred.as_ref()),
        );

        let mut failures = Vec::new();
        let mut handshake_error = None;
        let mut other_error = None;
        let tried_all = candidates.len();
        for endpoint in candidates {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let limit = self.config.connect_timeout.min(remaining);
            match Connection::open(&endpoint, &self.config.cluster_id, limit).await {
                Ok(conn) => {
                    let conn = Arc::new(conn);
                    if let Some(index) = endpoints.iter().position(|e| *e == endpoint) {
                        slot.cursor = index;
                    }
                    lock(&self.sessions).heard_applied(conn.applied_index());
                    slot.conn = Some(conn.clone());
                    slot.generation += 1;
                    *lock(&self.connected) = Some(endpoint);
                    tracing::debug!(endpoint = conn.endpoint(), node_id = conn.node_id(), "using connection");
                    return Ok((conn, slot.generation));
                }
                Err(error @ Error::Handshake { .. }) => {
                    tracing::debug!(%endpoint, %error, "handshake rejected");
                    handshake_error = Some(error);
                }
                Err(Error::Connect { endpoint, source }) => {
                    tracing::debug!(%endpoint, error = %source, "cannot connect");
                    failures.push((endpoint, source));
                }
                Err(error) => {
                    tracing::debug!(%endpoint, %error, "cannot connect");
                    other_error = Some(error);
                }
            }
        }
        if let Some(error) = handshake_error {
            return Err(error);
        }
        if failures.len() == tried_all {
            return Err(Error::Unreachable { failures });
        }
        if let Some(error) = other_error {
            return Err(error);
        }
        // The deadline cut the pass short: the last failure, or a timeout.
        match failures.pop() {
            Some((endpoint, source)) => Err(Error::Connect { endpoint, source }),
            None => Err(Error::Timeout),
        }
    }

    /// Forgets the shared connection and moves the search to the next endpoint.
    fn drop_connection(&self, slot: &mut Slot) {
        slot.conn = None;
        slot.generation += 1;
        slot.cursor = (slot.cursor + 1) % self.config.endpoints.len();
        *lock(&self.connected) = None;
    }

    /// The connection of `generation` failed (or its node knows no leader):
    /// drop it unless it has been replaced already. If another task holds the
    /// slot past the deadline, it is reconnecting anyway: nothing to do.
    async fn invalidate(&self, generation: u64, deadline: Instant) {
        let Ok(mut slot) = tokio::time::timeout_at(deadline, self.slot.lock()).await else {
            return;
        };
        if slot.generation == generation {
            self.drop_connection(&mut slot);
        }
    }

    /// The node behind the connection of `generation` named `leader`: connect
    /// there next, unless the connection has been replaced already.
    async fn redirect(&self, generation: u64, leader: String, deadline: Instant) {
        let Ok(mut slot) = tokio::time::timeout_at(deadline, self.slot.lock()).await else {
            return;
        };
        if slot.generation == generation {
            slot.conn = None;
            slot.generation += 1;
            slot.preferred = Some(leader);
            *lock(&self.connected) = None;
        }
    }
}

/// A write's session and sequence number, released from the in-flight set
/// however the operation ends (answer, error, timeout or the caller dropping
/// the future).
struct SeqGuard<'a> {
    inner: &'a Inner,
    slot: WriteSlot,
}

impl<'a> SeqGuard<'a> {
    fn begin(inner: &'a Inner) -> Self {
        let slot = lock(&inner.sessions).begin();
        SeqGuard { inner, slot }
    }

    /// Gives up this slot (its write was provably never applied) for the
    /// next one of the current session.
    fn restart(&mut self) {
        let mut sessions = lock(&self.inner.sessions);
        sessions.finish(self.slot);
        self.slot = sessions.begin();
    }
}

impl Drop for SeqGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.sessions).finish(self.slot);
    }
}

/// Exponential backoff with jitter, never sleeping past a deadline.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: BACKOFF_START }
    }

    async fn wait(&mut self, deadline: Instant) {
        let jitter_ms = {
            let half = u64::try_from(self.next.as_millis() / 2).unwrap_or(0);
            rand::thread_rng().gen_range(0..=half)
        };
        let until = (Instant::now() + self.next + Duration::from_millis(jitter_ms)).min(deadline);
        tokio::time::sleep_until(until).await;
        self.next = (self.next * 2).min(BACKOFF_MAX);
    }
}

/// The error an operation ends with once its deadline passed: the last
/// connection error if the request never left, otherwise a timeout (for a
/// write, outcome unknown).
fn give_up(sent: bool, last_error: Option<Error>) -> Error {
    match last_error {
        Some(
            error @ (Error::Connect { .. } | Error::Unreachable { .. } | Error::ConnectionClosed { .. } | Error::Io(_)),
        ) if !sent => error,
        _ => Error::Timeout,
    }
}

fn encode_request(request: &ClientRequest) -> Result<bytes::Bytes, Error> {
    let frame = protocol::encode(request)?;
    if frame.len() > MAX_CLIENT_FRAME {
        return Err(Error::FrameTooLarge {
            len: frame.len(),
            max: MAX_CLIENT_FRAME,
        });
    }
    Ok(frame)
}

fn expect_value(reply: Reply) -> Result<Option<String>, Error> {
    match reply {
        Reply::Value(value) => Ok(value),
        other => Err(Error::UnexpectedReply(format!("{other:?} to a data request"))),
    }
}

/// Locks a std mutex, ignoring poisoning (no critical section here can leave
/// its data half-updated).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults() {
        let config = ClientConfig::new(vec!["a:1".into()]);
        assert_eq!(config.cluster_id, "");
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn new_rejects_an_empty_endpoint_list() {
        assert!(matches!(
            Client::new(ClientConfig::new(vec![" ".into(), String::new()])),
            Err(Error::NoEndpoints)
        ));
        let client = Client::new(ClientConfig::new(vec![" a:1 ".into(), "".into(), "b:2".into()]));
        let client = client.expect("endpoints given");
        assert_eq!(client.config().endpoints, vec!["a:1".to_string(), "b:2".to_string()]);
        assert_eq!(client.connected_endpoint(), None);
    }

    #[test]
    fn client_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Client>();
        fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
        assert_error::<Error>();
    }

    #[test]
    fn seq_guard_releases_in_flight_seq_when_dropped() {
        let client = Client::new(ClientConfig::new(vec!["a:1".into()])).expect("endpoints given");
        let inner = &client.inner;
        let first = SeqGuard::begin(inner);
        let second = SeqGuard::begin(inner);
        assert_eq!((first.slot.seq, second.slot.seq), (1, 2));
        let id = client.client_id();
        drop(second);
        assert_eq!(lock(&inner.sessions).send(first.slot).0, 1);
        drop(first);
        let third = SeqGuard::begin(inner);
        assert_eq!(third.slot, WriteSlot { client_id: id, seq: 3 });
        assert_eq!(lock(&inner.sessions).send(third.slot).0, 3);
    }

    #[test]
    fn give_up_reports_connect_errors_only_if_nothing_was_sent() {
        let refused = || Error::Connect {
            endpoint: "a:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(matches!(give_up(false, Some(refused())), Error::Connect { .. }));
        assert!(matches!(give_up(true, Some(refused())), Error::Timeout));
        assert!(matches!(give_up(false, None), Error::Timeout));
    }

    #[test]
    fn oversized_request_is_refused_before_sending() {
        let request = ClientRequest {
            id: 1,
            op: Operation::Put {
                key: "k".into(),
                value: "x".repeat(MAX_CLIENT_FRAME + 1),
                session: None,
            },
        };
        assert!(matches!(encode_request(&request), Err(Error::FrameTooLarge { .. })));
    }
}
