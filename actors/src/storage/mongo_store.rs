//! The state store on MongoDB: node N of cluster C keeps its state in the
//! database `<prefix>_<C>_<N>` of a MongoDB server (`[storage] engine = "mongodb"`).
//!
//! # Documents
//!
//! - The data collection (`kv` at first; `kv_<generation>` after a snapshot
//!   install) holds one document per key: `{ _id: key, value, index }`, where
//!   `index` is the applied index of the flush that last wrote the key.
//! - The sessions collection (`sessions`, or `sessions_<generation>` beside
//!   `kv_<generation>`) holds versions of the exactly-once sessions, one row
//!   per client per flush that changed it (see below).
//! - The `meta` collection holds one document, `{ _id: "state", ... }`:
//!   `applied_index`, `applied_term`, `evicted_through` (the sessions'
//!   eviction watermark), `collection` and `generation` (which data
//!   collection is current), and `cluster_id` / `node_id` (so a node never
//!   loads another node's database). Indexes are stored as 64-bit signed
//!   integers. Format 1 (before per-client rows) kept the whole session
//!   table in the meta document as `sessions` (base64); it is read as
//!   [`StoredSessions::legacy_table`], and the first flush rewrites it as rows
//!   with a format 2 meta document.
//!
//! Every write uses write concern `{ w: "majority", j: true }`: it is in the
//! server's journal (of a majority, on a replica set) when it is acknowledged.
//! The only atomic step MongoDB gives without transactions (which need a
//! replica set) is one document, so the meta document is the commit point of
//! every change.
//!
//! # Flush: data first, then the meta document
//!
//! A flush writes the batch's upserts (`update` commands of ordered
//! replacements, the `_id` inside each replacement) and deletes (`delete`
//! commands), then the changed sessions' new versions (below), then replaces
//! the meta document with the batch's applied index. A crash (or a failed
//! write) between the two leaves data
//! newer than the recorded applied index. That is safe: recovery reads the old
//! applied index and the write-ahead log, which is never trimmed past what
//! the meta document records (the node reports a flush only once it
//! returned), replays every entry after it. Each entry writes a whole value or
//! deletes a key, so replaying the entries between the old and the new applied
//! index over a mix of old and new values ends in the new values: a key
//! written in that range gets its last write again, and a key not written
//! there has the same value in both. Nothing is lost and nothing is applied
//! twice in effect. The sessions in force are always those of the recorded
//! applied index (see "Sessions"), so the replayed session writes are
//! recorded once. One imprecision remains: a session write replayed
//! from that window computes its remembered old value from the newer data, so
//! a client that retries exactly that write, after exactly such a crash, may
//! be told a newer old value (its write is still applied once).
//! Retrying a failed flush with the same batch (or a merged one, see
//! [`FlushBatch::then`]) is safe for the same reason: the writes are
//! idempotent.
//!
//! # Sessions: versioned rows, chosen by the meta document
//!
//! Sessions cannot be written like data: replaying the log over a session
//! newer than the recorded applied index would answer a replayed write from
//! that session instead of applying it, and an older value could win. So a
//! flush at applied index F writes each changed session as a new version,
//! `{ _id: "<client>-<F>-<part>", client, flush: F, part, parts, row }` (the
//! row as base64, cut into parts of `ROW_PART_BYTES` so that no session is
//! bounded by a document's 16 MiB; a forgotten session is a tombstone,
//! `parts: 0`), before the meta document. A session's state is its version
//! with the highest `flush` at or below the recorded applied index, so a
//! crash before the meta write leaves the sessions of the old applied index
//! in force, exactly as for the data: the log replays the rest. After the
//! meta write, older versions of the changed sessions (and the tombstones
//! themselves) are deleted by `_id`; the store remembers every version it
//! wrote or read, including those of failed attempts. At start, versions
//! above the applied index (a flush that never reached its meta write) and
//! superseded ones are deleted before anything is written.
//!
//! # Replace (snapshot install): a fresh collection, then switch the pointer
//!
//! The new state goes into fresh collections `kv_<generation + 1>` and
//! `sessions_<generation + 1>` (dropped first if a crashed install left them).
//! Then the meta document switches to them with the snapshot's applied index,
//! in one write. Then the old collections are dropped. A crash before the switch leaves the old state
//! untouched (the half-written collection is dropped by the next install or
//! start); a crash after it leaves the new state and an orphan collection,
//! which the next start drops.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use base64::prelude::{Engine as _, BASE64_STANDARD};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ClientOptions;
use mongodb::sync::{Client, Database};
use tracing::{debug, warn};

use super::{FlushBatch, KvMap, Store, StoreError, StoredSessions, StoredState};

const META: &str = "meta";
const STATE_ID: &str = "state";
const FIRST_COLLECTION: &str = "kv";
const FIRST_SESSIONS: &str = "sessions";
/// Version of the document layout, so a later one can tell: 2 keeps sessions
/// as versioned rows; 1 kept them as one blob in the meta document (read, never written).
const FORMAT: i32 = 2;
const BLOB_SESSIONS_FORMAT: u64 = 1;
/// Most bytes of a session row in one document (base64 makes it 4/3 larger;
/// a document holds 16 MiB).
const ROW_PART_BYTES: usize = 4 << 20;
/// Most statements in one write command (servers take up to 100,000).
const MAX_STATEMENTS: usize = 10_000;
/// About the most bytes of statements in one write command (the limit is 16 MiB).
const MAX_COMMAND_BYTES: usize = 8 << 20;

/// Where and as whom a node keeps its state.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// Connection string; may hold credentials, so it is never logged as is (see [`redact_uri`]).
    pub uri: String,
    /// The node's database (`<prefix>_<cluster id>_<node id>`).
    pub database: String,
    /// The cluster's id: written into the meta document, and checked at every load.
    pub cluster_id: String,
    /// This node's id, written and checked with the cluster id.
    pub node_id: u64,
    /// Bound of server selection and connecting: how long one operation waits for an unreachable server.
    pub timeout: Duration,
}

/// Why [`MongoStore::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection string did not parse.
    #[error("invalid MongoDB URI {uri}: {message}")]
    InvalidUri {
        /// The connection string, secrets redacted.
        uri: String,
        /// The driver's error, secrets scrubbed.
        message: String,
    },
    /// The server did not answer a `ping`, or the client could not be made.
    #[error("cannot reach MongoDB at {uri} (database {database}): {message}")]
    Unreachable {
        /// The connection string, secrets redacted.
        uri: String,
        /// The node's database.
        database: String,
        /// The driver's error, secrets scrubbed.
        message: String,
    },
}

/// The data collection in use, as the meta document names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Active {
    collection: String,
    generation: u64,
}

impl Active {
    /// The sessions collection of this generation.
    fn sessions(&self) -> String {
        match self.generation {
            0 => FIRST_SESSIONS.to_string(),
            generation => format!("{FIRST_SESSIONS}_{generation}"),
        }
    }
}

/// One version of a session row: the flush that wrote it and how many
/// documents it is (a tombstone is one document with `parts: 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RowVersion {
    flush: u64,
    parts: u32,
}

impl RowVersion {
    fn document_ids(self, client: u64) -> impl Iterator<Item = String> {
        (0..self.parts.max(1)).map(move |part| row_id(client, self.flush, part))
    }
}

fn row_id(client: u64, flush: u64, part: u32) -> String {
    format!("{client:016x}-{flush:016x}-{part}")
}

impl Default for Active {
    fn default() -> Self {
        Active {
            collection: FIRST_COLLECTION.to_string(),
            generation: 0,
        }
    }
}

/// The state store on a MongoDB server (see the module documentation for the layout).
pub struct MongoStore {
    db: Database,
    cluster_id: String,
    node_id: u64,
    shown_uri: String,
    /// None until the meta document has been read.
    active: Option<Active>,
    /// Every session row version that may be in the active sessions
    /// collection (written, attempted, or read), by client.
    row_versions: HashMap<u64, BTreeSet<RowVersion>>,
    write_concern: Document,
    /// Fault injection ([`MongoStore::crash_after_commands`]): how many more
    /// write commands may reach the server (None: no limit).
    commands_left: Cell<Option<u64>>,
    /// Whether an injected crash has refused a write command.
    crashed: Cell<bool>,
    // Dropped last: the database handle uses it.
    _client: Client,
}

impl MongoStore {
    /// Connects and checks that the server answers (a `ping` on the node's database).
    pub fn connect(config: &MongoConfig) -> Result<MongoStore, ConnectError> {
        let shown_uri = redact_uri(&config.uri);
        let scrub = |e: mongodb::error::Error| scrub_secrets(&e.to_string(), &config.uri);
        let mut options = ClientOptions::parse(&config.uri)
            .run()
            .map_err(|e| ConnectError::InvalidUri {
                uri: shown_uri.clone(),
                message: scrub(e),
            })?;
        options.app_name = Some(format!("kvs-node-{}", config.node_id));
        options.server_selection_timeout = Some(config.timeout);
        options.connect_timeout = Some(config.timeout);
        let unreachable = |message: String| ConnectError::Unreachable {
            uri: shown_uri.clone(),
            database: config.database.clone(),
            message,
        };
        let client = Client::with_options(options).map_err(|e| unreachable(scrub(e)))?;
        let db = client.database(&config.database);
        db.run_command(doc! { "ping": 1 })
            .run()
            .map_err(|e| unreachable(scrub(e)))?;
        let timeout_ms = i64::try_from(config.timeout.as_millis()).unwrap_or(i64::MAX);
        Ok(MongoStore {
            db,
            cluster_id: config.cluster_id.clone(),
            node_id: config.node_id,
            shown_uri: shown_uri.clone(),
            active: None,
            row_versions: HashMap::new(),
            write_concern: doc! { "w": "majority", "j": true, "wtimeout": timeout_ms },
            commands_left: Cell::new(None),
            crashed: Cell::new(false),
            _client: client,
        })
    }

    /// The URI without secrets, for messages.
    pub fn shown_uri(&self) -> &str {
        &self.shown_uri
    }

    /// Fault injection for tests of a crash between two writes: after
    /// `commands` more write commands (inserts, updates, deletes, drops),
    /// every later one fails without reaching the server, as if the node had
    /// died there. The test then drops this handle and opens a new one.
    pub fn crash_after_commands(&mut self, commands: u64) {
        self.commands_left.set(Some(commands));
    }

    /// Whether the crash set by [`MongoStore::crash_after_commands`] has
    /// refused a write command yet.
    pub fn crashed(&self) -> bool {
        self.crashed.get()
    }

    /// Sends one write command, unless an injected crash has stopped them.
    fn run_write_command(&self, command: Document) -> Result<Document, mongodb::error::Error> {
        match self.commands_left.get() {
            Some(0) => {
                self.crashed.set(true);
                return Err(mongodb::error::Error::custom(
                    "injected crash: no more writes reach the server",
                ));
            }
            Some(left) => self.commands_left.set(Some(left - 1)),
            None => {}
        }
        self.db.run_command(command).run()
    }

    fn engine(&self, e: mongodb::error::Error) -> StoreError {
        StoreError::Engine(format!("MongoDB at {}: {}", self.shown_uri, e))
    }

    fn read_meta(&self) -> Result<Option<Document>, StoreError> {
        self.db
            .collection::<Document>(META)
            .find_one(doc! { "_id": STATE_ID })
            .run()
            .map_err(|e| self.engine(e))
    }

    /// The collection in use (reads the meta document the first time).
    fn active(&mut self) -> Result<Active, StoreError> {
        if let Some(active) = &self.active {
            return Ok(active.clone());
        }
        let active = match self.read_meta()? {
            Some(meta) => self.check_meta(&meta)?,
            None => Active::default(),
        };
        self.active = Some(active.clone());
        Ok(active)
    }

    /// Checks that the meta document is ours and returns the collection it names.
    fn check_meta(&self, meta: &Document) -> Result<Active, StoreError> {
        let format = get_u64(meta, "format")?;
        if format != FORMAT as u64 && format != BLOB_SESSIONS_FORMAT {
            return Err(corrupt(format!(
                "meta document has format {format}; this build reads {BLOB_SESSIONS_FORMAT} and {FORMAT}"
            )));
        }
        let cluster = get_str(meta, "cluster_id")?;
        let node = get_u64(meta, "node_id")?;
        if cluster != self.cluster_id || node != self.node_id {
            return Err(corrupt(format!(
                "database {} holds node {node} of cluster {cluster:?}, not node {} of cluster {:?}",
                self.db.name(),
                self.node_id,
                self.cluster_id
            )));
        }
        let collection = get_str(meta, "collection")?.to_string();
        if !is_data_collection(&collection) {
            return Err(corrupt(format!("meta document names collection {collection:?}")));
        }
        Ok(Active {
            collection,
            generation: get_u64(meta, "generation")?,
        })
    }

    fn meta_document(
        &self,
        active: &Active,
        index: u64,
        term: u64,
        evicted_through: u64,
    ) -> Result<Document, StoreError> {
        Ok(doc! {
            "_id": STATE_ID,
            "format": FORMAT,
            "cluster_id": &self.cluster_id,
            "node_id": to_i64(self.node_id)?,
            "applied_index": to_i64(index)?,
            "applied_term": to_i64(term)?,
            "collection": &active.collection,
            "generation": to_i64(active.generation)?,
            "evicted_through": to_i64(evicted_through)?,
        })
    }

    fn write_meta(&self, meta: Document) -> Result<(), StoreError> {
        let statement = doc! { "q": { "_id": STATE_ID }, "u": meta, "upsert": true };
        self.write(WriteKind::Update, META, vec![statement])
    }

    /// Runs one kind of write command over `statements`, in order, split into
    /// commands of bounded size; fails on any write or write-concern error.
    /// The statements are built as they are sent, one command at a time, so
    /// writing a whole state (a snapshot install) never holds it all as documents.
    fn write(
        &self,
        kind: WriteKind,
        collection: &str,
        statements: impl IntoIterator<Item = Document>,
    ) -> Result<(), StoreError> {
        for chunk in chunks(statements) {
            let count = chunk.len();
            let command = doc! {
                kind.command(): collection,
                kind.field(): chunk,
                "ordered": true,
                "writeConcern": self.write_concern.clone(),
            };
            let reply = self.run_write_command(command).map_err(|e| self.engine(e))?;
            check_reply(&reply, kind, count).map_err(|message| {
                StoreError::Engine(format!(
                    "MongoDB at {}: {} on {}.{collection} failed: {message}",
                    self.shown_uri,
                    kind.command(),
                    self.db.name()
                ))
            })?;
        }
        Ok(())
    }

    fn drop_collection(&self, name: &str) -> Result<(), StoreError> {
        // Dropping a collection that does not exist succeeds on current servers;
        // older ones answer "ns not found", which is the same outcome.
        match self.run_write_command(doc! { "drop": name, "writeConcern": self.write_concern.clone() }) {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("ns not found") => Ok(()),
            Err(e) => Err(self.engine(e)),
        }
    }

    /// Drops data and sessions collections other than the active ones (left
    /// by an interrupted snapshot install).
    fn drop_orphans(&self, active: &Active) {
        let names = match self.db.list_collection_names().run() {
            Ok(names) => names,
            Err(e) => return warn!("cannot list MongoDB collections to drop orphans: {}", self.engine(e)),
        };
        for name in names {
            let orphan = (is_data_collection(&name) && name != active.collection)
                || (is_sessions_collection(&name) && name != active.sessions());
            if orphan {
                match self.drop_collection(&name) {
                    Ok(()) => debug!(collection = %name, "dropped an orphan collection"),
                    Err(e) => warn!(collection = %name, "cannot drop an orphan collection: {e}"),
                }
            }
        }
    }
}

impl Store for MongoStore {
    fn load(&mut self) -> Result<StoredState, StoreError> {
        self.row_versions.clear();
        let Some(meta) = self.read_meta()? else {
            // Nothing was ever flushed; keys written before a first meta write
            // (a crash in between) are replayed from the log over whatever is
            // there. Session rows of such a flush are not in force: discarded.
            let active = Active::default();
            self.active = Some(active.clone());
            let mut state = self.load_data(&active, StoredState::default())?;
            state.sessions = self.load_sessions(&active, 0, true)?;
            return Ok(state);
        };
        let active = self.check_meta(&meta)?;
        self.active = Some(active.clone());
        let applied_index = get_u64(&meta, "applied_index")?;
        let state = StoredState {
            applied_index,
            applied_term: get_u64(&meta, "applied_term")?,
            data: KvMap::new(),
            sessions: if get_u64(&meta, "format")? == BLOB_SESSIONS_FORMAT {
                // Rows beside a format 1 meta document are of a flush that never reached its meta write.
                let mut sessions = self.load_sessions(&active, 0, true)?;
                sessions.legacy_table = BASE64_STANDARD
                    .decode(get_str(&meta, "sessions")?)
                    .map_err(|e| corrupt(format!("meta field \"sessions\" is not base64: {e}")))?;
                sessions
            } else {
                let mut sessions = self.load_sessions(&active, applied_index, false)?;
                sessions.evicted_through = get_u64(&meta, "evicted_through")?;
                sessions
            },
        };
        self.drop_orphans(&active);
        self.load_data(&active, state)
    }

    fn flush(&mut self, batch: &FlushBatch) -> Result<(), StoreError> {
        let active = self.active()?;
        let index = to_i64(batch.applied_index)?;
        let upserts = batch.upserts.iter().map(|(key, value)| {
            // The `_id` is in the replacement too: some compatible servers do not take it from the filter.
            doc! {
                "q": { "_id": key },
                "u": { "_id": key, "value": value, "index": index },
                "upsert": true,
            }
        });
        self.write(WriteKind::Update, &active.collection, upserts)?;
        self.write(WriteKind::Delete, &active.collection, delete_by_id(&batch.deletes))?;

        // New session versions, invisible until the meta document records this applied index.
        let flush = batch.applied_index;
        let mut rows = Vec::new();
        let changed = batch
            .session_upserts
            .iter()
            .map(|(client, row)| (*client, Some(row.as_slice())))
            .chain(batch.session_deletes.iter().map(|client| (*client, None)));
        for (client, row) in changed {
            let version = row_documents(client, flush, row, &mut rows)?;
            // Remembered before the write: a failed write may still have landed.
            self.row_versions.entry(client).or_default().insert(version);
        }
        let statements = rows.into_iter().map(|row| {
            let id = row.get("_id").cloned().unwrap_or(Bson::Null);
            doc! { "q": { "_id": id }, "u": row, "upsert": true }
        });
        self.write(WriteKind::Update, &active.sessions(), statements)?;

        let meta = self.meta_document(&active, batch.applied_index, batch.applied_term, batch.evicted_through)?;
        self.write_meta(meta)?;

        // Committed. What it superseded is garbage; a failure to delete it
        // now leaves it for the next flush of that session or the next start.
        let upserted = batch.session_upserts.iter().map(|(client, _)| (*client, Some(flush)));
        let deleted = batch.session_deletes.iter().map(|client| (*client, None));
        let superseded = self.superseded_rows(upserted.chain(deleted));
        if let Err(e) = self.delete_rows(&active, superseded) {
            warn!("cannot delete superseded session rows (they are ignored, and retried later): {e}");
        }
        Ok(())
    }

    fn replace(&mut self, state: &StoredState) -> Result<(), StoreError> {
        // Read again, not cached: a failed attempt may have switched the meta
        // document before its reply was lost, and a retry that took the
        // cached generation would drop the collections now in force.
        self.active = None;
        let old = self.active()?;
        let generation = old.generation + 1;
        let new = Active {
            collection: format!("kv_{generation}"),
            generation,
        };
        state.check_replaceable()?;
        self.drop_collection(&new.collection)?;
        self.drop_collection(&new.sessions())?;
        let index = to_i64(state.applied_index)?;
        let documents = state
            .data
            .iter()
            .map(|(key, value)| doc! { "_id": key, "value": value, "index": index });
        self.write(WriteKind::Insert, &new.collection, documents)?;
        let mut rows = Vec::new();
        let mut versions: HashMap<u64, BTreeSet<RowVersion>> = HashMap::new();
        for (client, row) in &state.sessions.rows {
            let version = row_documents(*client, state.applied_index, Some(row), &mut rows)?;
            versions.entry(*client).or_default().insert(version);
        }
        self.write(WriteKind::Insert, &new.sessions(), rows)?;
        let meta = self.meta_document(
            &new,
            state.applied_index,
            state.applied_term,
            state.sessions.evicted_through,
        )?;
        self.write_meta(meta)?;
        self.active = Some(new);
        self.row_versions = versions;
        // The switch is done: a failure to drop only leaves an orphan for the next start.
        for collection in [old.collection.clone(), old.sessions()] {
            if let Err(e) = self.drop_collection(&collection) {
                warn!(collection = %collection, "cannot drop a replaced collection: {e}");
            }
        }
        Ok(())
    }
}

/// Appends the documents of `client`'s version written at `flush` (its row
/// cut into parts, or a tombstone for `None`) and returns that version.
fn row_documents(
    client: u64,
    flush: u64,
    row: Option<&[u8]>,
    out: &mut Vec<Document>,
) -> Result<RowVersion, StoreError> {
    let flush_field = to_i64(flush)?;
    let client_field = format!("{client:016x}");
    let Some(row) = row else {
        out.push(doc! { "_id": row_id(client, flush, 0), "client": &client_field, "flush": flush_field, "part": 0, "parts": 0 });
        return Ok(RowVersion { flush, parts: 0 });
    };
    // An empty row is still one part, so it is not taken for a tombstone.
    let pieces: Vec<&[u8]> = if row.is_empty() {
        vec![row]
    } else {
        row.chunks(ROW_PART_BYTES).collect()
    };
    let parts =
        u32::try_from(pieces.len()).map_err(|_| StoreError::Engine(format!("a session row of {} bytes", row.len())))?;
    for (part, piece) in (0u32..).zip(pieces) {
        out.push(doc! {
            "_id": row_id(client, flush, part),
            "client": &client_field,
            "flush": flush_field,
            "part": i64::from(part),
            "parts": i64::from(parts),
            "row": BASE64_STANDARD.encode(piece),
        });
    }
    Ok(RowVersion { flush, parts })
}

/// The session rows read back: every version's parts, by client.
#[derive(Default)]
struct RowVersions {
    clients: HashMap<u64, BTreeMap<RowVersion, BTreeMap<u32, Vec<u8>>>>,
}

impl RowVersions {
    fn add(&mut self, document: &Document) -> Result<(), StoreError> {
        let client = get_str(document, "client")?;
        let client =
            u64::from_str_radix(client, 16).map_err(|_| corrupt(format!("session row with client {client:?}")))?;
        let version = RowVersion {
            flush: get_u64(document, "flush")?,
            parts: u32::try_from(get_u64(document, "parts")?)
                .map_err(|_| corrupt("session row with too many parts".to_string()))?,
        };
        let part = u32::try_from(get_u64(document, "part")?)
            .map_err(|_| corrupt("session row with a part number past 2^32".to_string()))?;
        // Versions are deleted by the ids their fields give, so a row whose
        // id disagrees could outlive its deletion and come back into force.
        let id = row_id(client, version.flush, part);
        if document.get_str("_id").ok() != Some(id.as_str()) || part >= version.parts.max(1) {
            return Err(corrupt(format!(
                "session row {:?} does not match its fields (client {client:016x}, flush {}, part {part} of {})",
                document.get("_id"),
                version.flush,
                version.parts
            )));
        }
        let bytes = if version.parts == 0 {
            Vec::new()
        } else {
            BASE64_STANDARD
                .decode(get_str(document, "row")?)
                .map_err(|e| corrupt(format!("session row is not base64: {e}")))?
        };
        self.clients
            .entry(client)
            .or_default()
            .entry(version)
            .or_default()
            .insert(part, bytes);
        Ok(())
    }
}

impl MongoStore {
    /// Reads the sessions in force at `applied_index` (each client's newest
    /// version at or below it, unless that is a tombstone) and deletes every
    /// other version; with `discard_all`, every row is garbage.
    fn load_sessions(
        &mut self,
        active: &Active,
        applied_index: u64,
        discard_all: bool,
    ) -> Result<StoredSessions, StoreError> {
        let cursor = self
            .db
            .collection::<Document>(&active.sessions())
            .find(doc! {})
            .run()
            .map_err(|e| self.engine(e))?;
        let mut read = RowVersions::default();
        for document in cursor {
            read.add(&document.map_err(|e| self.engine(e))?)?;
        }
        let mut sessions = StoredSessions::default();
        let mut garbage = Vec::new();
        for (client, versions) in read.clients {
            let in_force = if discard_all {
                None
            } else {
                versions.keys().rev().find(|v| v.flush <= applied_index).copied()
            };
            for (version, parts) in versions {
                if Some(version) != in_force {
                    garbage.extend(version.document_ids(client));
                    continue;
                }
                if version.parts == 0 {
                    // A tombstone in force: the session was forgotten. It is garbage too.
                    garbage.extend(version.document_ids(client));
                    continue;
                }
                if parts.len() != version.parts as usize || parts.keys().copied().ne(0..version.parts) {
                    return Err(corrupt(format!(
                        "session of client {client:016x} at flush {} has parts {:?} of {}",
                        version.flush,
                        parts.keys().collect::<Vec<_>>(),
                        version.parts
                    )));
                }
                sessions.rows.insert(client, parts.into_values().flatten().collect());
                self.row_versions.entry(client).or_default().insert(version);
            }
        }
        if !garbage.is_empty() {
            debug!(documents = garbage.len(), "deleting session rows not in force");
            // Deleted before anything new is written, so no later start can take one for current.
            self.write(WriteKind::Delete, &active.sessions(), delete_by_id(garbage))?;
        }
        Ok(sessions)
    }

    /// The versions that `changes` (each client's newly committed version, or
    /// None for a forgotten session) superseded, as document ids; they are
    /// no longer remembered once returned.
    fn superseded_rows(&mut self, changes: impl Iterator<Item = (u64, Option<u64>)>) -> Vec<(u64, RowVersion)> {
        let mut superseded = Vec::new();
        for (client, kept) in changes {
            let Some(versions) = self.row_versions.get_mut(&client) else {
                continue;
            };
            versions.retain(|version| {
                let keep = Some(version.flush) == kept && version.parts > 0;
                if !keep {
                    superseded.push((client, *version));
                }
                keep
            });
            if versions.is_empty() {
                self.row_versions.remove(&client);
            }
        }
        superseded
    }

    /// Deletes these versions; on failure they are remembered again, to be retried.
    fn delete_rows(&mut self, active: &Active, rows: Vec<(u64, RowVersion)>) -> Result<(), StoreError> {
        let ids = rows.iter().flat_map(|(client, version)| version.document_ids(*client));
        let result = self.write(WriteKind::Delete, &active.sessions(), delete_by_id(ids));
        if result.is_err() {
            for (client, version) in rows {
                self.row_versions.entry(client).or_default().insert(version);
            }
        }
        result
    }
}

impl MongoStore {
    fn load_data(&self, active: &Active, mut state: StoredState) -> Result<StoredState, StoreError> {
        let cursor = self
            .db
            .collection::<Document>(&active.collection)
            .find(doc! {})
            .run()
            .map_err(|e| self.engine(e))?;
        let mut ahead = 0u64;
        for document in cursor {
            let document = document.map_err(|e| self.engine(e))?;
            let key = match document.get("_id") {
                Some(Bson::String(key)) => key.clone(),
                other => return Err(corrupt(format!("data document with a non-string _id: {other:?}"))),
            };
            let value = get_str(&document, "value")?.to_string();
            if get_u64(&document, "index")? > state.applied_index {
                ahead += 1;
            }
            state.data.insert(key, value);
        }
        if ahead > 0 {
            // A flush wrote its data but not its meta document: the log replays it.
            warn!(
                keys = ahead,
                applied = state.applied_index,
                "MongoDB holds keys written after the recorded applied index; the log replays them"
            );
        }
        Ok(state)
    }
}

/// Statements deleting the documents with these `_id`s.
fn delete_by_id<S: AsRef<str>>(ids: impl IntoIterator<Item = S>) -> impl Iterator<Item = Document> {
    ids.into_iter()
        .map(|id| doc! { "q": { "_id": id.as_ref() }, "limit": 1 })
}

#[derive(Debug, Clone, Copy)]
enum WriteKind {
    Update,
    Delete,
    Insert,
}

impl WriteKind {
    fn command(self) -> &'static str {
        match self {
            WriteKind::Update => "update",
            WriteKind::Delete => "delete",
            WriteKind::Insert => "insert",
        }
    }

    fn field(self) -> &'static str {
        match self {
            WriteKind::Update => "updates",
            WriteKind::Delete => "deletes",
            WriteKind::Insert => "documents",
        }
    }
}

/// Splits statements, lazily, into commands of at most [`MAX_STATEMENTS`] and about [`MAX_COMMAND_BYTES`].
fn chunks(statements: impl IntoIterator<Item = Document>) -> impl Iterator<Item = Vec<Document>> {
    let mut statements = statements.into_iter().peekable();
    std::iter::from_fn(move || {
        let mut current = Vec::new();
        let mut bytes = 0;
        while let Some(next) = statements.peek() {
            // Keys and values are bounded by the cluster's limits (KiB) and session row parts by
            // ROW_PART_BYTES (about 5.6 MB as base64): each fits a command's 16 MiB.
            let size = approximate_size(next);
            if !current.is_empty() && (current.len() >= MAX_STATEMENTS || bytes + size > MAX_COMMAND_BYTES) {
                break;
            }
            bytes += size;
            current.extend(statements.next());
        }
        (!current.is_empty()).then_some(current)
    })
}

fn approximate_size(document: &Document) -> usize {
    document
        .iter()
        .map(|(name, value)| {
            name.len()
                + 8
                + match value {
                    Bson::String(s) => s.len(),
                    Bson::Document(d) => approximate_size(d),
                    Bson::Binary(b) => b.bytes.len(),
                    _ => 8,
                }
        })
        .sum()
}

/// Checks a write command's reply: `ok`, no write errors, no write-concern
/// error, and (for updates, which all upsert, and inserts) every statement counted.
fn check_reply(reply: &Document, kind: WriteKind, statements: usize) -> Result<(), String> {
    if reply.get("ok").and_then(number) != Some(1) {
        return Err(format!("reply is not ok: {reply}"));
    }
    if let Some(Bson::Array(errors)) = reply.get("writeErrors") {
        if let Some(first) = errors.first() {
            return Err(format!("{} write errors, the first: {first}", errors.len()));
        }
    }
    if let Some(error) = reply.get("writeConcernError") {
        return Err(format!("write concern error: {error}"));
    }
    if matches!(kind, WriteKind::Update | WriteKind::Insert) {
        let counted = reply.get("n").and_then(number).unwrap_or(0);
        if counted != statements as u64 {
            return Err(format!("{statements} statements sent, {counted} done: {reply}"));
        }
    }
    Ok(())
}

/// An integer as servers send it (int32, int64, or a whole double).
fn number(value: &Bson) -> Option<u64> {
    match *value {
        Bson::Int32(n) => u64::try_from(n).ok(),
        Bson::Int64(n) => u64::try_from(n).ok(),
        Bson::Double(n) if n >= 0.0 && n.fract() == 0.0 && n < 2f64.powi(63) => Some(n as u64),
        _ => None,
    }
}

fn get_u64(document: &Document, field: &str) -> Result<u64, StoreError> {
    document
        .get(field)
        .and_then(number)
        .ok_or_else(|| corrupt(format!("field {field:?} is missing or not a non-negative integer")))
}

fn get_str<'a>(document: &'a Document, field: &str) -> Result<&'a str, StoreError> {
    match document.get(field) {
        Some(Bson::String(s)) => Ok(s),
        _ => Err(corrupt(format!("field {field:?} is missing or not a string"))),
    }
}

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Engine(format!("{value} does not fit MongoDB's 64-bit integers")))
}

fn corrupt(message: String) -> StoreError {
    StoreError::Corrupt(format!("MongoDB: {message}"))
}

fn is_data_collection(name: &str) -> bool {
    is_generation_of(name, FIRST_COLLECTION)
}

fn is_sessions_collection(name: &str) -> bool {
    is_generation_of(name, FIRST_SESSIONS)
}

/// `first`, or `first_<digits>`.
fn is_generation_of(name: &str, first: &str) -> bool {
    name.strip_prefix(first).is_some_and(|rest| {
        rest.is_empty()
            || rest
                .strip_prefix('_')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The URI with its password and secret options replaced by `****`, for messages.
pub fn redact_uri(uri: &str) -> String {
    let (scheme, rest) = match uri.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), uri),
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:****@{hosts}"),
            None => format!("{userinfo}@{hosts}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let options: Vec<String> = query
                .split('&')
                .map(|option| match option.split_once('=') {
                    Some((name, _)) if is_secret_option(name) => format!("{name}=****"),
                    _ => option.to_string(),
                })
                .collect();
            format!("{path}?{}", options.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

fn is_secret_option(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token", "authmechanismproperties"]
        .iter()
        .any(|secret| name.contains(secret))
}

/// `text` with every secret of `uri` (password, secret options; raw and
/// percent-decoded) replaced by `****`, for driver messages that might echo them.
fn scrub_secrets(text: &str, uri: &str) -> String {
    let mut secrets: Vec<String> = Vec::new();
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let authority = rest.find(['/', '?']).map_or(rest, |at| &rest[..at]);
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if let Some((_, password)) = userinfo.split_once(':') {
            secrets.push(password.to_string());
        }
    }
    if let Some((_, query)) = rest.split_once('?') {
        for option in query.split('&') {
            if let Some((name, value)) = option.split_once('=') {
                if is_secret_option(name) {
                    secrets.push(value.to_string());
                }
            }
        }
    }
    let mut text = text.to_string();
    for secret in secrets {
        for form in [percent_decode(&secret), secret] {
            if !form.is_empty() {
                text = text.replace(&form, "****");
            }
        }
    }
    text
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_passwords_and_secret_options() {
        assert_eq!(redact_uri("mongodb://127.0.0.1:27017"), "mongodb://127.0.0.1:27017");
        assert_eq!(
            redact_uri("mongodb://kvs:s3cr%40t@db1:27017,db2:27017/admin?replicaSet=rs0"),
            "mongodb://kvs:****@db1:27017,db2:27017/admin?replicaSet=rs0"
        );
        assert_eq!(redact_uri("mongodb://kvs@db1"), "mongodb://kvs@db1");
        assert_eq!(
            redact_uri("mongodb+srv://u:p@x.example/?tlsCertificateKeyFilePassword=k&w=1"),
            "mongodb+srv://u:****@x.example/?tlsCertificateKeyFilePassword=****&w=1"
        );
        assert_eq!(
            scrub_secrets("auth failed for s3cr@t and s3cr%40t", "mongodb://kvs:s3cr%40t@db1"),
            "auth failed for **** and ****"
        );
    }

    #[test]
    fn data_collection_names() {
        assert!(is_data_collection("kv"));
        assert!(is_data_collection("kv_12"));
        assert!(!is_data_collection("kv_"));
        assert!(!is_data_collection("kv_x"));
        assert!(!is_data_collection("meta"));
        assert!(!is_data_collection("kvx"));
        assert!(is_sessions_collection("sessions"));
        assert!(is_sessions_collection("sessions_3"));
        assert!(!is_sessions_collection("sessions_"));
        assert!(!is_sessions_collection("kv_3"));
    }

    #[test]
    fn commands_are_split_by_count_and_size() {
        let small: Vec<Document> = (0..25_000).map(|i| doc! { "_id": i.to_string() }).collect();
        let sizes: Vec<usize> = chunks(small).map(|c| c.len()).collect();
        assert_eq!(sizes, [10_000, 10_000, 5_000]);
        let value = "v".repeat(1 << 20);
        let large: Vec<Document> = (0..20).map(|i| doc! { "_id": i, "value": &value }).collect();
        let split: Vec<Vec<Document>> = chunks(large).collect();
        assert!(split.len() >= 3, "{} commands", split.len());
        assert!(split.iter().all(|c| c.len() <= 8));
        assert_eq!(split.iter().map(Vec::len).sum::<usize>(), 20);
    }

    #[test]
    fn replies_are_checked() {
        let ok = doc! { "ok": 1.0, "n": 2 };
        assert!(check_reply(&ok, WriteKind::Update, 2).is_ok());
        assert!(check_reply(&ok, WriteKind::Update, 3).is_err());
        assert!(check_reply(&doc! { "ok": 1, "n": 0 }, WriteKind::Delete, 3).is_ok());
        assert!(check_reply(&doc! { "ok": 0 }, WriteKind::Delete, 1).is_err());
        let write_error = doc! { "ok": 1, "n": 1, "writeErrors": [{ "index": 1, "code": 11000 }] };
        assert!(check_reply(&write_error, WriteKind::Update, 1).is_err());
        let concern = doc! { "ok": 1, "n": 1, "writeConcernError": { "code": 64 } };
        assert!(check_reply(&concern, WriteKind::Update, 1).is_err());
    }
}
