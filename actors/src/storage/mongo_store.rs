//! The state store on MongoDB: node N of cluster C keeps its state in the
//! database `<prefix>_<C>_<N>` of a MongoDB server (`[storage] engine = "mongodb"`).
//!
//! # Documents
//!
//! - The data collection (`kv` at first; `kv_<generation>` after a snapshot
//!   install) holds one document per key: `{ _id: key, value, index }`, where
//!   `index` is the applied index of the flush that last wrote the key.
//! - The `meta` collection holds one document, `{ _id: "state", ... }`:
//!   `applied_index`, `applied_term`, `sessions` (the state machine's opaque
//!   exactly-once table, as base64 text: some compatible servers cannot
//!   replace a document that holds binary), `collection` and `generation` (which data
//!   collection is current), and `cluster_id` / `node_id` (so a node never
//!   loads another node's database). Indexes are stored as 64-bit signed
//!   integers.
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
//! commands), then replaces the meta document with the batch's applied index
//! and session table. A crash (or a failed write) between the two leaves data
//! newer than the recorded applied index. That is safe: recovery reads the old
//! applied index and the write-ahead log, which is never trimmed past what
//! the meta document records (the node reports a flush only once it
//! returned), replays every entry after it. Each entry writes a whole value or
//! deletes a key, so replaying the entries between the old and the new applied
//! index over a mix of old and new values ends in the new values: a key
//! written in that range gets its last write again, and a key not written
//! there has the same value in both. Nothing is lost and nothing is applied
//! twice in effect. The session table travels with the meta document, so it
//! is always the one of the recorded applied index, and the replayed session
//! writes are recorded once. One imprecision remains: a session write replayed
//! from that window computes its remembered old value from the newer data, so
//! a client that retries exactly that write, after exactly such a crash, may
//! be told a newer old value (its write is still applied once).
//! Retrying a failed flush with the same batch (or a merged one, see
//! [`FlushBatch::then`]) is safe for the same reason: the writes are
//! idempotent.
//!
//! # Replace (snapshot install): a fresh collection, then switch the pointer
//!
//! The new state goes into a fresh collection `kv_<generation + 1>` (dropped
//! first if a crashed install left one). Then the meta document switches to it
//! with the snapshot's applied index and sessions, in one write. Then the old
//! collection is dropped. A crash before the switch leaves the old state
//! untouched (the half-written collection is dropped by the next install or
//! start); a crash after it leaves the new state and an orphan collection,
//! which the next start drops.

use std::time::Duration;

use base64::prelude::{Engine as _, BASE64_STANDARD};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ClientOptions;
use mongodb::sync::{Client, Database};
use tracing::{debug, warn};

use super::{FlushBatch, KvMap, Store, StoreError, StoredState};

const META: &str = "meta";
const STATE_ID: &str = "state";
const FIRST_COLLECTION: &str = "kv";
/// Version of the document layout, so a later one can tell.
const FORMAT: i32 = 1;
/// Most statements in one write command (servers take up to 100,000).
const MAX_STATEMENTS: usize = 10_000;
/// About the most bytes of statements in one write command (the limit is 16 MiB).
const MAX_COMMAND_BYTES: usize = 8 << 20;

/// Where and as whom a node keeps its state.
#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// Connection string; may hold credentials, so it is never logged as is (see [`redact_uri`]).
    pub uri: String,
    pub database: String,
    pub cluster_id: String,
    pub node_id: u64,
    /// Bound of server selection and connecting: how long one operation waits for an unreachable server.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid MongoDB URI {uri}: {message}")]
    InvalidUri { uri: String, message: String },
    #[error("cannot reach MongoDB at {uri} (database {database}): {message}")]
    Unreachable {
        uri: String,
        database: String,
        message: String,
    },
}

/// The data collection in use, as the meta document names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Active {
    collection: String,
    generation: u64,
}

impl Default for Active {
    fn default() -> Self {
        Active {
            collection: FIRST_COLLECTION.to_string(),
            generation: 0,
        }
    }
}

pub struct MongoStore {
    db: Database,
    cluster_id: String,
    node_id: u64,
    shown_uri: String,
    /// None until the meta document has been read.
    active: Option<Active>,
    write_concern: Document,
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
            write_concern: doc! { "w": "majority", "j": true, "wtimeout": timeout_ms },
            _client: client,
        })
    }

    /// The URI without secrets, for messages.
    pub fn shown_uri(&self) -> &str {
        &self.shown_uri
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
        if format != FORMAT as u64 {
            return Err(corrupt(format!(
                "meta document has format {format}; this build reads {FORMAT}"
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

    fn meta_document(&self, active: &Active, index: u64, term: u64, sessions: &[u8]) -> Result<Document, StoreError> {
        Ok(doc! {
            "_id": STATE_ID,
            "format": FORMAT,
            "cluster_id": &self.cluster_id,
            "node_id": to_i64(self.node_id)?,
            "applied_index": to_i64(index)?,
            "applied_term": to_i64(term)?,
            "collection": &active.collection,
            "generation": to_i64(active.generation)?,
            "sessions": BASE64_STANDARD.encode(sessions),
        })
    }

    fn write_meta(&self, meta: Document) -> Result<(), StoreError> {
        let statement = doc! { "q": { "_id": STATE_ID }, "u": meta, "upsert": true };
        self.write(WriteKind::Update, META, vec![statement])
    }

    /// Runs one kind of write command over `statements`, in order, split into
    /// commands of bounded size; fails on any write or write-concern error.
    fn write(&self, kind: WriteKind, collection: &str, statements: Vec<Document>) -> Result<(), StoreError> {
        for chunk in chunks(statements) {
            let count = chunk.len();
            let command = doc! {
                kind.command(): collection,
                kind.field(): chunk,
                "ordered": true,
                "writeConcern": self.write_concern.clone(),
            };
            let reply = self.db.run_command(command).run().map_err(|e| self.engine(e))?;
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
        match self
            .db
            .run_command(doc! { "drop": name, "writeConcern": self.write_concern.clone() })
            .run()
        {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("ns not found") => Ok(()),
            Err(e) => Err(self.engine(e)),
        }
    }

    /// Drops data collections other than the active one (left by an interrupted snapshot install).
    fn drop_orphans(&self, active: &Active) {
        let names = match self.db.list_collection_names().run() {
            Ok(names) => names,
            Err(e) => return warn!("cannot list MongoDB collections to drop orphans: {}", self.engine(e)),
        };
        for name in names {
            if is_data_collection(&name) && name != active.collection {
                match self.drop_collection(&name) {
                    Ok(()) => debug!(collection = %name, "dropped an orphan data collection"),
                    Err(e) => warn!(collection = %name, "cannot drop an orphan data collection: {e}"),
                }
            }
        }
    }
}

impl Store for MongoStore {
    fn load(&mut self) -> Result<StoredState, StoreError> {
        let Some(meta) = self.read_meta()? else {
            // Nothing was ever flushed; keys written before a first meta write
            // (a crash in between) are replayed from the log over whatever is there.
            self.active = Some(Active::default());
            return self.load_data(&Active::default(), StoredState::default());
        };
        let active = self.check_meta(&meta)?;
        self.active = Some(active.clone());
        let state = StoredState {
            applied_index: get_u64(&meta, "applied_index")?,
            applied_term: get_u64(&meta, "applied_term")?,
            data: KvMap::new(),
            sessions: BASE64_STANDARD
                .decode(get_str(&meta, "sessions")?)
                .map_err(|e| corrupt(format!("meta field \"sessions\" is not base64: {e}")))?,
        };
        self.drop_orphans(&active);
        self.load_data(&active, state)
    }

    fn flush(&mut self, batch: &FlushBatch) -> Result<(), StoreError> {
        let active = self.active()?;
        let index = to_i64(batch.applied_index)?;
        let upserts = batch
            .upserts
            .iter()
            .map(|(key, value)| {
                // The `_id` is in the replacement too: some compatible servers do not take it from the filter.
                doc! {
                    "q": { "_id": key },
                    "u": { "_id": key, "value": value, "index": index },
                    "upsert": true,
                }
            })
            .collect();
        self.write(WriteKind::Update, &active.collection, upserts)?;
        let deletes = batch
            .deletes
            .iter()
            .map(|key| doc! { "q": { "_id": key }, "limit": 1 })
            .collect();
        self.write(WriteKind::Delete, &active.collection, deletes)?;
        let meta = self.meta_document(&active, batch.applied_index, batch.applied_term, &batch.sessions)?;
        self.write_meta(meta)
    }

    fn replace(&mut self, state: &StoredState) -> Result<(), StoreError> {
        let old = self.active()?;
        let new = Active {
            collection: format!("kv_{}", old.generation + 1),
            generation: old.generation + 1,
        };
        self.drop_collection(&new.collection)?;
        let index = to_i64(state.applied_index)?;
        let documents = state
            .data
            .iter()
            .map(|(key, value)| doc! { "_id": key, "value": value, "index": index })
            .collect();
        self.write(WriteKind::Insert, &new.collection, documents)?;
        let meta = self.meta_document(&new, state.applied_index, state.applied_term, &state.sessions)?;
        self.write_meta(meta)?;
        self.active = Some(new);
        // The switch is done: a failure to drop only leaves an orphan for the next start.
        if let Err(e) = self.drop_collection(&old.collection) {
            warn!(collection = %old.collection, "cannot drop the replaced data collection: {e}");
        }
        Ok(())
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

/// Splits statements into commands of at most [`MAX_STATEMENTS`] and about [`MAX_COMMAND_BYTES`].
fn chunks(statements: Vec<Document>) -> Vec<Vec<Document>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for statement in statements {
        // Keys and values are bounded by the cluster's limits (KiB), far below a command's 16 MiB.
        let size = approximate_size(&statement);
        if !current.is_empty() && (current.len() >= MAX_STATEMENTS || bytes + size > MAX_COMMAND_BYTES) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(statement);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
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
    name == FIRST_COLLECTION
        || name
            .strip_prefix("kv_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
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
    }

    #[test]
    fn commands_are_split_by_count_and_size() {
        let small: Vec<Document> = (0..25_000).map(|i| doc! { "_id": i.to_string() }).collect();
        let sizes: Vec<usize> = chunks(small).iter().map(Vec::len).collect();
        assert_eq!(sizes, [10_000, 10_000, 5_000]);
        let value = "v".repeat(1 << 20);
        let large: Vec<Document> = (0..20).map(|i| doc! { "_id": i, "value": &value }).collect();
        let split = chunks(large);
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
