//! The state store on redb: one database file `<dir>/state.redb`.
//!
//! Tables: `kv` (&str -> &str) holds the data; `meta` (&str -> &[u8]) holds
//! `applied_index` and `applied_term` (u64 big-endian) and `sessions` (opaque
//! blob). Every write is one transaction committed with redb's default
//! durability, which fsyncs before `commit` returns.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::{FlushBatch, Store, StoreError, StoredState};

const DB_FILE: &str = "state.redb";
const KV: TableDefinition<&str, &str> = TableDefinition::new("kv");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const APPLIED_INDEX: &str = "applied_index";
const APPLIED_TERM: &str = "applied_term";
const SESSIONS: &str = "sessions";

pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens the store in `dir`, creating the directory and database if missing.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join(DB_FILE)).map_err(engine)?;
        Ok(RedbStore { db })
    }
}

/// redb has one error type per operation; all convert into `redb::Error`.
fn engine(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Engine(e.into().to_string())
}

fn write_meta(
    table: &mut redb::Table<'_, &str, &[u8]>,
    index: u64,
    term: u64,
    sessions: &[u8],
) -> Result<(), StoreError> {
    table
        .insert(APPLIED_INDEX, index.to_be_bytes().as_slice())
        .map_err(engine)?;
    table
        .insert(APPLIED_TERM, term.to_be_bytes().as_slice())
        .map_err(engine)?;
    table.insert(SESSIONS, sessions).map_err(engine)?;
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

        match txn.open_table(META) {
            Ok(meta) => {
                state.applied_index = read_u64(&meta, APPLIED_INDEX)?;
                state.applied_term = read_u64(&meta, APPLIED_TERM)?;
                if let Some(sessions) = meta.get(SESSIONS).map_err(engine)? {
                    state.sessions = sessions.value().to_vec();
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
            let mut meta = txn.open_table(META).map_err(engine)?;
            write_meta(&mut meta, batch.applied_index, batch.applied_term, &batch.sessions)?;
        }
        // Dropping an uncommitted transaction on any error above aborts it.
        txn.commit().map_err(engine)
    }

    fn replace(&mut self, state: &StoredState) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        // Deleting the table drops every old key in one step; it is recreated below.
        txn.delete_table(KV).map_err(engine)?;
        {
            let mut kv = txn.open_table(KV).map_err(engine)?;
            for (key, value) in &state.data {
                kv.insert(key.as_str(), value.as_str()).map_err(engine)?;
            }
            let mut meta = txn.open_table(META).map_err(engine)?;
            write_meta(&mut meta, state.applied_index, state.applied_term, &state.sessions)?;
        }
        txn.commit().map_err(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::KvMap;

    fn strings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn map(pairs: &[(&str, &str)]) -> KvMap {
        strings(pairs).into_iter().collect()
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
    fn flush_survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(tmp.path()).unwrap();
        store
            .flush(&FlushBatch {
                applied_index: 7,
                applied_term: 2,
                upserts: strings(&[("a", "1"), ("b", "2")]),
                deletes: vec![],
                sessions: vec![1, 2, 3],
            })
            .unwrap();
        store
            .flush(&FlushBatch {
                applied_index: u64::MAX - 1,
                applied_term: 1 << 40,
                upserts: strings(&[("b", "22"), ("c", "3")]),
                deletes: vec![],
                sessions: vec![9],
            })
            .unwrap();
        drop(store);

        let mut store = RedbStore::open(tmp.path()).unwrap();
        assert_eq!(
            store.load().unwrap(),
            StoredState {
                applied_index: u64::MAX - 1,
                applied_term: 1 << 40,
                data: map(&[("a", "1"), ("b", "22"), ("c", "3")]),
                sessions: vec![9],
            }
        );
    }

    #[test]
    fn deletes_remove_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(tmp.path()).unwrap();
        store
            .flush(&FlushBatch {
                applied_index: 1,
                applied_term: 1,
                upserts: strings(&[("a", "1"), ("b", "2"), ("c", "3")]),
                ..FlushBatch::default()
            })
            .unwrap();
        store
            .flush(&FlushBatch {
                applied_index: 2,
                applied_term: 1,
                upserts: vec![],
                // Deleting a missing key is not an error.
                deletes: vec!["b".into(), "missing".into()],
                sessions: vec![],
            })
            .unwrap();
        drop(store);

        let state = RedbStore::open(tmp.path()).unwrap().load().unwrap();
        assert_eq!(state.data, map(&[("a", "1"), ("c", "3")]));
        assert_eq!((state.applied_index, state.applied_term), (2, 1));
    }

    #[test]
    fn replace_drops_keys_not_in_new_state() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = RedbStore::open(tmp.path()).unwrap();
        store
            .flush(&FlushBatch {
                applied_index: 5,
                applied_term: 1,
                upserts: strings(&[("old", "x"), ("kept", "old")]),
                deletes: vec![],
                sessions: vec![1, 1],
            })
            .unwrap();
        let snapshot = StoredState {
            applied_index: 40,
            applied_term: 3,
            data: map(&[("kept", "new"), ("fresh", "y")]),
            sessions: vec![4, 5, 6],
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
