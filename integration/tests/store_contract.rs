//! The state store contract (`actors::storage::Store`), one suite for both
//! engines: redb in a temporary folder, and MongoDB at `KVS_TEST_MONGODB_URI`
//! (CI starts nx-27017; outside CI the MongoDB cases are skipped without it).
//!
//! The model is `StoredState::absorb`: after any sequence of flushes and
//! replaces, a store reopened from scratch loads exactly what the model holds.
//! Then the MongoDB engine's own crash cases: session rows of a flush that
//! never reached its meta write are not in force, a crash between any two of
//! a flush's or a replace's writes leaves what the contract allows and the
//! replayed call repairs it, and a format 1 store (the session table as one
//! blob) is read and rewritten as rows. (redb writes each call in one
//! transaction; `actors/tests/power_loss.rs` cuts its writes at every point.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actors::storage::{FlushBatch, MongoConfig, MongoStore, RedbStore, Store, StoredSessions, StoredState};
use base64::prelude::{Engine as _, BASE64_STANDARD};
use integration::test_mongodb_uri;
use mongodb::bson::{doc, Document};

/// Opens a fresh handle on the same storage each call, as a restart does.
type Reopen = Box<dyn Fn() -> Box<dyn Store>>;

/// A store handle that is closed and opened again to check what it holds (a
/// restart); redb allows one open handle per file.
struct Restartable {
    reopen: Reopen,
    store: Option<Box<dyn Store>>,
}

impl Restartable {
    fn new(reopen: Reopen) -> Restartable {
        let mut store = reopen();
        store.load().expect("load");
        Restartable {
            reopen,
            store: Some(store),
        }
    }

    fn store(&mut self) -> &mut dyn Store {
        match &mut self.store {
            Some(store) => store.as_mut(),
            None => unreachable!("a store is open between restarts"),
        }
    }

    /// Closes the store, opens it again and returns what it loads; later calls use the new handle.
    fn restart(&mut self) -> StoredState {
        drop(self.store.take());
        let mut store = (self.reopen)();
        let loaded = store.load().expect("load after reopening");
        self.store = Some(store);
        loaded
    }
}

fn strings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn rows(pairs: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
    pairs.to_vec()
}

/// Flushes `batch` into the store and the model, then checks that the restarted store loads the model.
fn flush_and_check(store: &mut Restartable, model: &mut StoredState, batch: &FlushBatch) {
    store.store().flush(batch).expect("flush");
    model.absorb(batch);
    assert_reloads(store, model);
}

fn assert_reloads(store: &mut Restartable, model: &StoredState) {
    let loaded = store.restart();
    assert_eq!(
        (
            loaded.applied_index,
            loaded.applied_term,
            loaded.sessions.evicted_through
        ),
        (model.applied_index, model.applied_term, model.sessions.evicted_through)
    );
    assert_eq!(loaded.data, model.data, "data");
    assert_eq!(
        loaded.sessions.rows.keys().collect::<Vec<_>>(),
        model.sessions.rows.keys().collect::<Vec<_>>(),
        "session clients"
    );
    assert!(loaded == *model, "session rows differ");
}

/// The cases every engine keeps.
fn contract(reopen: Reopen) {
    let mut store = Restartable::new(reopen);
    assert_eq!(store.restart(), StoredState::default(), "an empty store");
    let mut model = StoredState::default();

    // Data and sessions, the watermark, a session bigger than a MongoDB
    // document (6 MiB), an empty row, and the largest client id.
    let big: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
    let first = FlushBatch {
        applied_index: 10,
        applied_term: 2,
        upserts: strings(&[("a", "1"), ("b", "2"), ("gone", "x")]),
        session_upserts: rows(&[
            (1, vec![1, 2, 3]),
            (2, big.clone()),
            (3, Vec::new()),
            (u64::MAX, vec![9]),
        ]),
        evicted_through: 4,
        ..FlushBatch::default()
    };
    flush_and_check(&mut store, &mut model, &first);

    // Overwrites, deletions (of missing keys and sessions too), a session shrinking.
    let second = FlushBatch {
        applied_index: 20,
        applied_term: 3,
        upserts: strings(&[("b", "22"), ("c", "3")]),
        deletes: vec!["gone".into(), "never-there".into()],
        session_upserts: rows(&[(2, vec![2; 10]), (4, vec![4])]),
        session_deletes: vec![1, 77],
        evicted_through: 9,
    };
    flush_and_check(&mut store, &mut model, &second);

    // A batch written again, merged with the next one (as a retry after a
    // failed flush sends it), is idempotent.
    let third = FlushBatch {
        applied_index: 30,
        applied_term: 3,
        upserts: strings(&[("a", "111")]),
        session_upserts: rows(&[(1, vec![1, 1]), (u64::MAX, big.clone())]),
        session_deletes: vec![4],
        evicted_through: 9,
        ..FlushBatch::default()
    };
    store.store().flush(&third).expect("flush");
    let fourth = FlushBatch {
        applied_index: 31,
        applied_term: 3,
        deletes: vec!["a".into()],
        session_upserts: rows(&[(4, vec![44])]),
        session_deletes: vec![u64::MAX],
        evicted_through: 12,
        ..FlushBatch::default()
    };
    flush_and_check(&mut store, &mut model, &third.clone().then(fourth));

    // A session forgotten and then started again.
    let fifth = FlushBatch {
        applied_index: 40,
        applied_term: 4,
        session_deletes: vec![2],
        evicted_through: 12,
        ..FlushBatch::default()
    };
    flush_and_check(&mut store, &mut model, &fifth);
    let sixth = FlushBatch {
        applied_index: 41,
        applied_term: 4,
        session_upserts: rows(&[(2, vec![2, 2, 2])]),
        evicted_through: 12,
        ..FlushBatch::default()
    };
    flush_and_check(&mut store, &mut model, &sixth);

    // Replace (a snapshot install) drops every key and session not in the new
    // state, and later flushes go on from it; a second replace too.
    for generation in 1..=2u64 {
        let snapshot = StoredState {
            applied_index: 100 * generation,
            applied_term: 5 + generation,
            data: strings(&[("c", "snap"), ("fresh", "y")]).into_iter().collect(),
            sessions: StoredSessions {
                rows: rows(&[(2, vec![20 + generation as u8]), (5, big.clone())])
                    .into_iter()
                    .collect(),
                evicted_through: 50 * generation,
                legacy_table: Vec::new(),
            },
        };
        store.store().replace(&snapshot).expect("replace");
        model = snapshot;
        assert_reloads(&mut store, &model);
        let after = FlushBatch {
            applied_index: 100 * generation + 1,
            applied_term: 5 + generation,
            upserts: strings(&[("after", "z")]),
            session_upserts: rows(&[(6, vec![6])]),
            session_deletes: vec![5],
            evicted_through: 50 * generation,
            ..FlushBatch::default()
        };
        flush_and_check(&mut store, &mut model, &after);
    }

    // Replacing with an empty state empties the store.
    store
        .store()
        .replace(&StoredState::default())
        .expect("replace with nothing");
    assert_reloads(&mut store, &StoredState::default());
}

#[test]
fn redb_keeps_the_store_contract() {
    let folder = tempfile::tempdir().expect("temporary folder");
    let path = folder.path().join("state");
    contract(Box::new(move || {
        Box::new(RedbStore::open(&path).expect("open redb")) as Box<dyn Store>
    }));
}

/// A database of its own for one test, dropped when the test passes.
struct TestDatabase {
    uri: String,
    name: String,
    client: mongodb::sync::Client,
}

const CLUSTER_ID: &str = "contract";

impl TestDatabase {
    fn new(case: &str) -> Option<TestDatabase> {
        let uri = test_mongodb_uri()?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("kvsct_{case}_{}_{nanos}", std::process::id());
        let client = mongodb::sync::Client::with_uri_str(&uri).expect("MongoDB client");
        Some(TestDatabase { uri, name, client })
    }

    fn config(&self) -> MongoConfig {
        MongoConfig {
            uri: self.uri.clone(),
            database: self.name.clone(),
            cluster_id: CLUSTER_ID.to_string(),
            node_id: 1,
            timeout: Duration::from_secs(10),
        }
    }

    fn reopen(&self) -> Reopen {
        let config = self.config();
        Box::new(move || Box::new(MongoStore::connect(&config).expect("connect to MongoDB")) as Box<dyn Store>)
    }

    fn collection(&self, name: &str) -> mongodb::sync::Collection<Document> {
        self.client.database(&self.name).collection(name)
    }

    fn count(&self, collection: &str) -> u64 {
        self.collection(collection)
            .count_documents(doc! {})
            .run()
            .expect("count documents")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = self.client.database(&self.name).drop().run();
        }
    }
}

#[test]
fn mongodb_keeps_the_store_contract() {
    let Some(database) = TestDatabase::new("contract") else {
        return;
    };
    contract(database.reopen());
}

/// A session row document as a flush writes it (see actors/src/storage/mongo_store.rs).
fn row_document(client: u64, flush: u64, row: Option<&[u8]>) -> Document {
    let mut document = doc! {
        "_id": format!("{client:016x}-{flush:016x}-0"),
        "client": format!("{client:016x}"),
        "flush": flush as i64,
        "part": 0i64,
        "parts": i64::from(row.is_some()),
    };
    if let Some(row) = row {
        document.insert("row", BASE64_STANDARD.encode(row));
    }
    document
}

#[test]
fn mongodb_session_rows_of_a_flush_that_never_reached_its_meta_write_are_not_in_force() {
    let Some(database) = TestDatabase::new("unfinished") else {
        return;
    };
    let mut store = Restartable::new(database.reopen());
    let mut model = StoredState::default();
    let committed = FlushBatch {
        applied_index: 10,
        applied_term: 1,
        upserts: strings(&[("k", "v")]),
        session_upserts: rows(&[(1, vec![1]), (2, vec![2])]),
        evicted_through: 3,
        ..FlushBatch::default()
    };
    flush_and_check(&mut store, &mut model, &committed);
    assert_eq!(
        database.count("sessions"),
        2,
        "one row per session once superseded rows are deleted"
    );

    // What a flush at index 15 leaves when the node dies before its meta
    // write: a newer version of session 1, a tombstone of session 2, a new session 3.
    let unfinished = [
        row_document(1, 15, Some(&[1, 1, 1])),
        row_document(2, 15, None),
        row_document(3, 15, Some(&[3])),
    ];
    database
        .collection("sessions")
        .insert_many(unfinished)
        .run()
        .expect("insert the rows of an unfinished flush");

    // The log replays from index 10, over the sessions of index 10.
    let loaded = store.restart();
    assert!(
        loaded == model,
        "the sessions of applied index 10 are in force: {loaded:?}"
    );
    assert_eq!(
        database.count("sessions"),
        2,
        "the unfinished flush's rows are deleted at start"
    );

    // The replayed flush reaches index 15 with its own content.
    let replayed = FlushBatch {
        applied_index: 15,
        applied_term: 1,
        session_upserts: rows(&[(1, vec![1, 5])]),
        session_deletes: vec![2],
        evicted_through: 3,
        ..FlushBatch::default()
    };
    flush_and_check(&mut store, &mut model, &replayed);
    assert_eq!(
        database.count("sessions"),
        1,
        "the tombstone and the old versions are deleted"
    );
}

#[test]
fn mongodb_a_format_1_store_is_read_then_rewritten_as_rows() {
    let Some(database) = TestDatabase::new("format1") else {
        return;
    };
    let blob = vec![0x81, 0xa1, b's', 0x80];
    // What the previous version wrote: the session table as base64 in the meta document.
    database
        .collection("meta")
        .insert_one(doc! {
            "_id": "state",
            "format": 1,
            "cluster_id": CLUSTER_ID,
            "node_id": 1i64,
            "applied_index": 7i64,
            "applied_term": 2i64,
            "collection": "kv",
            "generation": 0i64,
            "sessions": BASE64_STANDARD.encode(&blob),
        })
        .run()
        .expect("write a format 1 meta document");
    database
        .collection("kv")
        .insert_one(doc! { "_id": "k", "value": "v", "index": 7i64 })
        .run()
        .expect("write a key");
    let mut store = Restartable::new(database.reopen());
    let mut model = store.restart();
    assert_eq!((model.applied_index, model.applied_term), (7, 2));
    assert_eq!(model.sessions.legacy_table, blob);
    assert_eq!(model.data.get("k").map(String::as_str), Some("v"));

    // The state machine's first flush writes every session as a row.
    let rewrite = FlushBatch {
        applied_index: 7,
        applied_term: 2,
        session_upserts: rows(&[(5, vec![5]), (6, vec![6])]),
        evicted_through: 1,
        ..FlushBatch::default()
    };
    flush_and_check(&mut store, &mut model, &rewrite);
    let meta = database
        .collection("meta")
        .find_one(doc! { "_id": "state" })
        .run()
        .expect("read the meta document")
        .expect("a meta document");
    assert_eq!(meta.get_i32("format").ok(), Some(2), "{meta}");
    assert!(meta.get("sessions").is_none(), "the blob is gone: {meta}");
}

/// A call a crash may interrupt.
enum Call {
    Flush(FlushBatch),
    Replace(StoredState),
}

impl Call {
    fn run(&self, store: &mut dyn Store) -> Result<(), actors::storage::StoreError> {
        match self {
            Call::Flush(batch) => store.flush(batch),
            Call::Replace(state) => store.replace(state),
        }
    }

    fn applied_to(&self, before: &StoredState) -> StoredState {
        match self {
            Call::Flush(batch) => {
                let mut after = before.clone();
                after.absorb(batch);
                after
            }
            Call::Replace(state) => state.clone(),
        }
    }
}

/// For every point between two of `call`'s write commands: a store at
/// `setup` crashes there; reopened, it holds the applied point and sessions
/// of before or after the call, never a mix, and each key holds its value of
/// before or after (keys may run ahead; a replace switches all at once). The
/// node then replays the call (its entries are still in the log), which
/// brings the store to exactly the state after it.
fn crash_between_any_two_writes(case: &str, setup: &FlushBatch, call: &Call) {
    let mut before = StoredState::default();
    before.absorb(setup);
    let after = call.applied_to(&before);
    let point = |s: &StoredState| (s.applied_index, s.applied_term, s.sessions.clone());
    for crash_at in 0u64.. {
        let Some(database) = TestDatabase::new(&format!("{case}{crash_at}")) else {
            return;
        };
        let reopen = database.reopen();
        let mut store = reopen();
        store.load().expect("load");
        store.flush(setup).expect("the set-up flush");
        drop(store);

        let mut crashing = MongoStore::connect(&database.config()).expect("connect to MongoDB");
        crashing.load().expect("load");
        crashing.crash_after_commands(crash_at);
        let outcome = call.run(&mut crashing);
        let crashed = crashing.crashed();
        drop(crashing);

        let mut store = reopen();
        let loaded = store.load().expect("load after the crash");
        let at = format!("{case}, crash after {crash_at} write commands ({outcome:?})");
        assert!(
            point(&loaded) == point(&before) || point(&loaded) == point(&after),
            "{at}: applied point and sessions are a mix: {loaded:?}"
        );
        if outcome.is_ok() {
            assert!(loaded == after, "{at}: a call that returned Ok is durable: {loaded:?}");
        }
        match call {
            Call::Replace(_) => assert!(loaded == before || loaded == after, "{at}: {loaded:?}"),
            Call::Flush(_) => {
                let keys = before.data.keys().chain(after.data.keys()).chain(loaded.data.keys());
                for key in keys {
                    let value = loaded.data.get(key);
                    assert!(
                        value == before.data.get(key) || value == after.data.get(key),
                        "{at}: key {key:?} holds {value:?}"
                    );
                }
            }
        }

        call.run(store.as_mut()).expect("the replayed call");
        drop(store);
        let mut store = reopen();
        let repaired = store.load().expect("load after the replay");
        assert!(
            repaired == after,
            "{at}: the replay ends at the state after the call: {repaired:?}"
        );
        if !crashed {
            assert!(crash_at > 0, "the call writes at least once");
            return;
        }
    }
}

fn crash_setup() -> FlushBatch {
    FlushBatch {
        applied_index: 10,
        applied_term: 1,
        upserts: strings(&[("a", "1"), ("b", "2"), ("c", "3")]),
        session_upserts: rows(&[(1, vec![1]), (2, vec![2])]),
        evicted_through: 1,
        ..FlushBatch::default()
    }
}

#[test]
fn mongodb_a_crash_between_any_two_writes_of_a_flush_is_repaired_by_the_replay() {
    let flush = FlushBatch {
        applied_index: 20,
        applied_term: 2,
        upserts: strings(&[("a", "11"), ("d", "4")]),
        deletes: vec!["b".into()],
        session_upserts: rows(&[(1, vec![1, 1]), (3, vec![3])]),
        session_deletes: vec![2],
        evicted_through: 2,
    };
    crash_between_any_two_writes("crashflush", &crash_setup(), &Call::Flush(flush));
}

#[test]
fn mongodb_a_crash_between_any_two_writes_of_a_replace_is_repaired_by_the_replay() {
    let snapshot = StoredState {
        applied_index: 50,
        applied_term: 3,
        data: strings(&[("c", "snap"), ("e", "5")]).into_iter().collect(),
        sessions: StoredSessions {
            rows: rows(&[(2, vec![22]), (4, vec![4])]).into_iter().collect(),
            evicted_through: 3,
            legacy_table: Vec::new(),
        },
    };
    crash_between_any_two_writes("crashreplace", &crash_setup(), &Call::Replace(snapshot));
}
