//! The state store on redb: one database file `<dir>/state.redb`.
//!
//! Tables: `kv` (&str -> &str) holds the data; `sessions` (u64 -> &[u8])
//! holds one row per exactly-once session (opaque, encoded by the state
//! machine); `meta` (&str -> &[u8]) holds `applied_index`, `applied_term` and
//! `evicted_through` (u64 big-endian). Versions before per-session rows kept
//! the whole session table as one blob under the meta key `sessions`; it is
//! read as [`StoredSessions::legacy_table`](super::StoredSessions::legacy_table) and removed by the first flush,
//! which writes the rows in the same transaction. Every write is one
//! transaction committed with redb's default durability, which fsyncs before
//! `commit` returns, so the rows and the applied point always agree.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::disk::{Disk, OsDisk, SimulatedDisk};
use super::{FlushBatch, Store, StoreError, StoredState};

const DB_FILE: &str = "state.redb";
/// A database being created, before it is renamed to [`DB_FILE`].
const NEW_DB_FILE: &str = "state.redb.new";
const KV: TableDefinition<&str, &str> = TableDefinition::new("kv");
const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const APPLIED_INDEX: &str = "applied_index";
const APPLIED_TERM: &str = "applied_term";
const EVICTED_THROUGH: &str = "evicted_through";
/// The meta key of the whole-table blob of older versions.
const LEGACY_SESSIONS: &str = "sessions";

/// The state store in one redb database file, `<dir>/state.redb`.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens the store in `dir`, creating the directory and database if missing.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        let db = open_or_create(&OsDisk, dir, |path| Database::create(path).map_err(engine))?;
        Ok(RedbStore { db })
    }

    /// The same store on a simulated disk that loses power (for tests).
    pub fn open_simulated(disk: &SimulatedDisk, dir: &Path) -> Result<RedbStore, StoreError> {
        let db = open_or_create(disk, dir, |path| {
            redb::Builder::new()
                .create_with_backend(disk.open(path)?)
                .map_err(engine)
        })?;
        Ok(RedbStore { db })
    }
}

/// Opens `<dir>/state.redb` with `open_db`, first creating it whole if it
/// is missing (or empty: a crash before redb wrote its header): made under
/// another name and renamed, so that a crash during creation leaves no
/// half-made database, which would never open again. Then the directory is
/// synced, at every open, not only after a creation: a process killed right
/// after the rename, or a store made by an older version, may have a name
/// that is not durable yet, and a power cut could take the store with it
/// once the log was trimmed on its strength.
fn open_or_create<D: Disk>(
    disk: &D,
    dir: &Path,
    open_db: impl Fn(&Path) -> Result<Database, StoreError>,
) -> Result<Database, StoreError> {
    disk.create_dir_all(dir)?;
    let path = dir.join(DB_FILE);
    if disk.file_len(&path)?.unwrap_or(0) == 0 {
        let fresh = dir.join(NEW_DB_FILE);
        match disk.remove_file(&fresh) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        drop(open_db(&fresh)?);
        disk.rename(&fresh, &path)?;
    }
    disk.sync_dir(dir)?;
    open_db(&path)
}

/// redb has one error type per operation; all convert into `redb::Error`.
fn engine(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Engine(e.into().to_string())
}

/// Records the applied point and the eviction watermark, and removes the
/// blob-era session table (its content is written as rows in the same transaction).
fn write_meta(
    table: &mut redb::Table<'_, &str, &[u8]>,
    index: u64,
    term: u64,
    evicted_through: u64,
) -> Result<(), StoreError> {
    for (key, value) in [
        (APPLIED_INDEX, index),
        (APPLIED_TERM, term),
        (EVICTED_THROUGH, evicted_through),
    ] {
        table.insert(key, value.to_be_bytes().as_slice()).map_err(engine)?;
    }
    table.remove(LEGACY_SESSIONS).map_err(engine)?;
    Ok(())
}

fn read_u64(table: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<u64, StoreError> {
    let Some(value) = table.get(key).map_err(engine)? else {
        return Ok(0);
    };
    let bytes: [u8; 8] = value
        .value()
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("meta {key} is {} bytes, not 8", value.value().len())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl Store for RedbStore {
    fn load(&mut self) -> Result<StoredState, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let mut state = StoredState::default();

        match txn.open_table(KV) {
            Ok(kv) => {
                for item in kv.iter().map_err(engine)? {
                    let (key, value) = item.map_err(engine)?;
                    state.data.insert(key.value().to_owned(), value.value().to_owned());
                }
            }
            // Nothing was ever written.
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(engine(e)),
        }

        match txn.open_table(SESSIONS) {
            Ok(sessions) => {
                for item in sessions.iter().map_err(engine)? {
                    let (id, row) = item.map_err(engine)?;
                    state.sessions.rows.insert(id.value(), row.value().to_vec());
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(engine(e)),
        }

        match txn.open_table(META) {
            Ok(meta) => {
                state.applied_index = read_u64(&meta, APPLIED_INDEX)?;
                state.applied_term = read_u64(&meta, APPLIED_TERM)?;
                state.sessions.evicted_through = read_u64(&meta, EVICTED_THROUGH)?;
                if let Some(blob) = meta.get(LEGACY_SESSIONS).map_err(engine)? {
                    state.sessions.legacy_table = blob.value().to_vec();
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(engine(e)),
        }
        Ok(state)
    }

    fn flush(&mut self, batch: &FlushBatch) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut kv = txn.open_table(KV).map_err(engine)?;
            for (key, value) in &batch.upserts {
                kv.insert(key.as_str(), value.as_str()).map_err(engine)?;
            }
            for key in &batch.deletes {
                kv.remove(key.as_str()).map_err(engine)?;
            }
            let mut sessions = txn.open_table(SESSIONS).map_err(engine)?;
            for (id, row) in &batch.session_upserts {
                sessions.insert(*id, row.as_slice()).map_err(engine)?;
            }
            for id in &batch.session_deletes {
                sessions.remove(*id).map_err(engine)?;
            }
            let mut meta = txn.open_table(META).map_err(engine)?;
            write_meta(
                &mut meta,
                batch.applied_index,
                batch.applied_term,
                batch.evicted_through,
            )?;
        }
        // Dropping an uncommitted transaction on any error above aborts it.
        txn.commit().map_err(engine)
    }

    fn replace(&mut self, state: &StoredState) -> Result<(), StoreError> {
        state.check_replaceable()?;
        let txn = self.db.begin_write().map_err(engine)?;
        // Deleting a table drops every old row in one step; it is recreated below.
        txn.delete_table(KV).map_err(engine)?;
        txn.delete_table(SESSIONS).map_err(engine)?;
        {
            let mut kv = txn.open_table(KV).map_err(engine)?;
            for (key, value) in &state.data {
                kv.insert(key.as_str(), value.as_str()).map_err(engine)?;
            }
            let mut sessions = txn.open_table(SESSIONS).map_err(engine)?;
            for (id, row) in &state.sessions.rows {
                sessions.insert(*id, row.as_slice()).map_err(engine)?;
            }
            let mut meta = txn.open_table(META).map_err(engine)?;
            write_meta(
                &mut meta,
                state.applied_index,
                state.applied_term,
                state.sessions.evicted_through,
            )?;
        }
        txn.commit().map_err(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{KvMap, StoredSessions};

    fn strings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn map(pairs: &[(&str, &str)]) -> KvMap {
        strings(pairs).into_iter().collect()
    }

    fn rows(pairs: &[(u64, &[u8])]) -> Vec<(u64, Vec<u8>)> {
        pairs.iter().map(|(id, row)| (*id, row.to_vec())).collect()
    }

    #[test]
    fn empty_store_loads_default() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let mut store = RedbStore::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), StoredState::default());
        assert!(dir.join(DB_FILE).exists());
        drop(store);
        let mut store = RedbStore::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), StoredState::default());
    }

    #[test]
    fn flushes_survive_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(tmp.path()).unwrap();
        let mut expected = StoredState::default();
        let batches = [
            FlushBatch {
                applied_index: 7,
                applied_term: 2,
                upserts: strings(&[("a", "1"), ("b", "2"), ("gone", "x")]),
                session_upserts: rows(&[(1, &[1, 2, 3]), (2, &[4]), (u64::MAX, &[5])]),
                evicted_through: 3,
                ..FlushBatch::default()
            },
            FlushBatch {
                applied_index: u64::MAX - 1,
                applied_term: 1 << 40,
                upserts: strings(&[("b", "22"), ("c", "3")]),
                // Deleting a missing key or session is not an error.
                deletes: vec!["gone".into(), "missing".into()],
                session_upserts: rows(&[(2, &[44])]),
                session_deletes: vec![1, 99],
                evicted_through: 6,
            },
        ];
        for batch in &batches {
            store.flush(batch).unwrap();
            expected.absorb(batch);
        }
        drop(store);

        let loaded = RedbStore::open(tmp.path()).unwrap().load().unwrap();
        assert_eq!(loaded, expected);
        assert_eq!(loaded.data, map(&[("a", "1"), ("b", "22"), ("c", "3")]));
        assert_eq!(
            loaded.sessions.rows.into_iter().collect::<Vec<_>>(),
            rows(&[(2, &[44]), (u64::MAX, &[5])])
        );
        assert_eq!(loaded.sessions.evicted_through, 6);
    }

    #[test]
    fn a_blob_era_session_table_is_read_then_replaced_by_rows() {
        let tmp = tempfile::tempdir().unwrap();
        {
            // What the previous version wrote: the whole table under the meta key `sessions`.
            let store = RedbStore::open(tmp.path()).unwrap();
            let txn = store.db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert(APPLIED_INDEX, 9u64.to_be_bytes().as_slice()).unwrap();
                meta.insert(APPLIED_TERM, 2u64.to_be_bytes().as_slice()).unwrap();
                meta.insert(LEGACY_SESSIONS, [7u8, 7, 7].as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let mut store = RedbStore::open(tmp.path()).unwrap();
        let mut loaded = store.load().unwrap();
        assert_eq!((loaded.applied_index, loaded.applied_term), (9, 2));
        assert_eq!(loaded.sessions.legacy_table, vec![7, 7, 7]);
        assert!(loaded.sessions.rows.is_empty());

        let batch = FlushBatch {
            applied_index: 9,
            applied_term: 2,
            session_upserts: rows(&[(5, &[1])]),
            ..FlushBatch::default()
        };
        store.flush(&batch).unwrap();
        loaded.absorb(&batch);
        drop(store);
        let reloaded = RedbStore::open(tmp.path()).unwrap().load().unwrap();
        assert_eq!(reloaded, loaded);
        assert!(reloaded.sessions.legacy_table.is_empty());
    }

    #[test]
    fn replace_drops_keys_and_sessions_not_in_new_state() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(tmp.path()).unwrap();
        store
            .flush(&FlushBatch {
                applied_index: 5,
                applied_term: 1,
                upserts: strings(&[("old", "x"), ("kept", "old")]),
                session_upserts: rows(&[(1, &[1]), (2, &[2])]),
                ..FlushBatch::default()
            })
            .unwrap();
        let snapshot = StoredState {
            applied_index: 40,
            applied_term: 3,
            data: map(&[("kept", "new"), ("fresh", "y")]),
            sessions: StoredSessions {
                rows: rows(&[(2, &[22]), (3, &[3])]).into_iter().collect(),
                evicted_through: 30,
                legacy_table: Vec::new(),
            },
        };
        store.replace(&snapshot).unwrap();
        assert_eq!(store.load().unwrap(), snapshot);
        drop(store);

        let mut store = RedbStore::open(tmp.path()).unwrap();
        assert_eq!(store.load().unwrap(), snapshot);

        // Replacing with an empty state empties the store.
        store.replace(&StoredState::default()).unwrap();
        drop(store);
        assert_eq!(
            RedbStore::open(tmp.path()).unwrap().load().unwrap(),
            StoredState::default()
        );
    }
}
