//! The file operations durable storage relies on, behind one trait, so that
//! tests can run the write-ahead log and the state store on a disk that
//! loses power.
//!
//! [`OsDisk`] is the real file system. [`SimulatedDisk`] keeps, for every
//! file, what an fsync made durable apart from what was only written, and
//! every directory entry apart from what a directory fsync made durable.
//! [`SimulatedDisk::power_cut`] then drops what was not durable, keeping an
//! arbitrary subset of the unsynced writes (a disk may write back any of its
//! dirty pages, in any order, before it stops; the last one kept may be torn).
//! It can also stop at the Nth operation (the power fails there: that and
//! every later operation fail until the cut), lie about fsync (as a disk
//! with a volatile write cache does, or as code with a missing fsync
//! behaves), skip directory fsyncs, and fail an operation with an I/O error.
//! A test that runs storage on it, cuts power at every operation in turn and
//! checks that everything acknowledged survived catches a missing or
//! misplaced fsync.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// A file system, as far as durable storage uses one.
pub trait Disk: Send + 'static {
    /// An open file of this file system.
    type File: DiskFile;
    /// Creates `dir` and any missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The length of the file at `path`, None if there is none.
    fn file_len(&self, path: &Path) -> io::Result<Option<u64>>;
    /// Removes a file; `NotFound` if there is none.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Opens a file for reading and writing, creating it (empty) if missing.
    fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Creates a file, or truncates the one there, for writing.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Replaces `to` by `from` atomically (durable only after [`Disk::sync_dir`]).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file.
pub trait DiskFile: Send + 'static {
    /// Reads the whole content. Call it on a handle just opened: the real file
    /// reads from its current position.
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    /// Writes `data` at `offset`, growing the file if needed; not durable before a sync.
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Cuts or extends (with zeros) the file to `len` bytes; not durable before a sync.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's content durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's content and metadata durable (fsync).
    fn sync_all(&self) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsDisk;

impl Disk for OsDisk {
    type File = File;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn file_len(&self, path: &Path) -> io::Result<Option<u64>> {
        match fs::metadata(path) {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn open(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().write(true).create(true).truncate(true).open(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

impl DiskFile for File {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, data, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }
}

/// What kind of operation a [`SimulatedDisk`] is asked to do (for injected errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// [`DiskFile::write_all_at`].
    Write,
    /// [`DiskFile::set_len`].
    SetLen,
    /// [`DiskFile::sync_data`] or [`DiskFile::sync_all`].
    Sync,
    /// [`Disk::sync_dir`].
    SyncDir,
    /// [`Disk::rename`].
    Rename,
    /// Anything else: creating, opening, removing, reading, asking a length.
    Other,
}

/// Faults a [`SimulatedDisk`] injects.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// The power fails at this operation (counted from 0 over the disk's
    /// life): it and every later one fail until [`SimulatedDisk::power_cut`].
    pub power_fails_at: Option<u64>,
    /// fsync returns success without making anything durable.
    pub lying_fsync: bool,
    /// Directory fsyncs return success without making entries durable.
    pub lying_dir_sync: bool,
    /// The next operation of this kind fails with this error kind (EIO,
    /// ENOSPC...), once; the data of a failed write or sync is not durable.
    pub fail_next: Option<(Operation, io::ErrorKind)>,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    /// What a power cut leaves.
    durable: Vec<u8>,
    /// What reads see now.
    current: Vec<u8>,
    /// Changes since the last fsync, in order (a power cut keeps a subset).
    unsynced: Vec<Change>,
}

#[derive(Debug, Clone)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

impl Change {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            Change::Write { offset, data } => {
                let start = *offset as usize;
                let end = start + data.len();
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[start..end].copy_from_slice(data);
            }
            Change::SetLen(len) => bytes.resize(*len as usize, 0),
        }
    }
}

#[derive(Debug, Default)]
struct DiskState {
    /// Ordered, so that a power cut visits files in the same order every run
    /// (a seeded test replays exactly).
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    /// Directory entries now, and as a power cut leaves them.
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    operations: u64,
    powered: bool,
    faults: Faults,
}

impl DiskState {
    /// Counts an operation and says whether it may run.
    fn begin(&mut self, kind: Operation) -> io::Result<()> {
        let n = self.operations;
        self.operations += 1;
        if self.faults.power_fails_at.is_some_and(|at| n >= at) {
            self.powered = false;
        }
        if !self.powered {
            return Err(io::Error::other("simulated power failure"));
        }
        if let Some((failing, error)) = self.faults.fail_next {
            if failing == kind {
                self.faults.fail_next = None;
                return Err(io::Error::new(error, format!("simulated {error} on {kind:?}")));
            }
        }
        Ok(())
    }

    /// Drops files no name points at and gives every named file a new inode
    /// number, so that handles opened before (a process that is gone) fail.
    fn renumber(&mut self) {
        let named: BTreeSet<u64> = self
            .names
            .values()
            .chain(self.durable_names.values())
            .copied()
            .collect();
        self.inodes.retain(|id, _| named.contains(id));
        let mut renumbered = BTreeMap::new();
        for (old, inode) in std::mem::take(&mut self.inodes) {
            renumbered.insert(old, self.next_inode);
            self.inodes.insert(self.next_inode, inode);
            self.next_inode += 1;
        }
        for id in self.names.values_mut().chain(self.durable_names.values_mut()) {
            if let Some(&new) = renumbered.get(id) {
                *id = new;
            }
        }
    }

    /// An empty file named `path` (the name not durable yet); returns its inode.
    fn new_file(&mut self, path: &Path) -> u64 {
        let id = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(id, Inode::default());
        self.names.insert(path.to_path_buf(), id);
        id
    }

    fn inode(&mut self, id: u64) -> io::Result<&mut Inode> {
        self.inodes
            .get_mut(&id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "simulated file is gone"))
    }
}

/// A disk in memory that loses power (see the module documentation). Clones share the disk.
#[derive(Debug, Clone)]
pub struct SimulatedDisk {
    state: Arc<Mutex<DiskState>>,
}

impl Default for SimulatedDisk {
    fn default() -> Self {
        SimulatedDisk::new(Faults::default())
    }
}

impl SimulatedDisk {
    /// An empty, powered disk that will inject `faults`.
    pub fn new(faults: Faults) -> SimulatedDisk {
        SimulatedDisk {
            state: Arc::new(Mutex::new(DiskState {
                powered: true,
                faults,
                ..DiskState::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A panicking test thread cannot leave the model half-changed: every change is one statement.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Operations done so far (to enumerate the points a power cut can hit).
    pub fn operations(&self) -> u64 {
        self.lock().operations
    }

    /// Replaces the faults to inject from now on (the operation count goes on).
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The power fails and comes back: every file holds what was durable
    /// plus a subset of its unsynced changes chosen by `keep` (called with
    /// the number of unsynced changes, it returns, for each, whether it
    /// reached the disk, and how many bytes of the last kept write did: None
    /// for all of it); directory entries are what was durable. Open handles
    /// are stale afterwards (their operations fail). Faults are cleared.
    pub fn power_cut(&self, mut keep: impl FnMut(usize) -> (Vec<bool>, Option<usize>)) {
        let mut state = self.lock();
        let state = &mut *state;
        for inode in state.inodes.values_mut() {
            let mut bytes = std::mem::take(&mut inode.durable);
            let changes = std::mem::take(&mut inode.unsynced);
            let (kept, torn) = keep(changes.len());
            let last_kept = kept.iter().rposition(|&k| k);
            for (n, change) in changes.iter().enumerate() {
                if !kept.get(n).copied().unwrap_or(false) {
                    continue;
                }
                match (change, torn) {
                    (Change::Write { offset, data }, Some(cut)) if Some(n) == last_kept => Change::Write {
                        offset: *offset,
                        data: data[..cut.min(data.len())].to_vec(),
                    }
                    .apply(&mut bytes),
                    _ => change.apply(&mut bytes),
                }
            }
            inode.current = bytes.clone();
            inode.durable = bytes;
        }
        state.names = state.durable_names.clone();
        state.renumber();
        state.powered = true;
        state.faults = Faults::default();
    }

    /// The process is killed but the machine stays up: every file keeps
    /// what was written (the page cache survives), and names stay as they
    /// are, but nothing more becomes durable by it; open handles are stale.
    /// Faults are cleared.
    pub fn crash(&self) {
        let mut state = self.lock();
        let state = &mut *state;
        state.renumber();
        state.powered = true;
        state.faults = Faults::default();
    }

    /// What a file holds now (for tests).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let id = state.names.get(path)?;
        state.inodes.get(id).map(|inode| inode.current.clone())
    }
}

impl Disk for SimulatedDisk {
    type File = SimulatedFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(Operation::Other)?;
        state.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn file_len(&self, path: &Path) -> io::Result<Option<u64>> {
        let mut state = self.lock();
        state.begin(Operation::Other)?;
        let Some(&id) = state.names.get(path) else {
            return Ok(None);
        };
        Ok(Some(state.inode(id)?.current.len() as u64))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(Operation::Other)?;
        match state.names.remove(path) {
            Some(_) => Ok(()),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no such simulated file")),
        }
    }

    fn open(&self, path: &Path) -> io::Result<SimulatedFile> {
        let mut state = self.lock();
        state.begin(Operation::Other)?;
        let inode = match state.names.get(path) {
            Some(&id) => id,
            None => state.new_file(path),
        };
        Ok(SimulatedFile {
            disk: self.clone(),
            inode,
        })
    }

    fn create(&self, path: &Path) -> io::Result<SimulatedFile> {
        let mut state = self.lock();
        state.begin(Operation::Other)?;
        // A new inode: what the old name pointed at stays as it was until the name is durable.
        let inode = state.new_file(path);
        Ok(SimulatedFile {
            disk: self.clone(),
            inode,
        })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(Operation::Rename)?;
        let id = state
            .names
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such simulated file"))?;
        state.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.begin(Operation::SyncDir)?;
        if state.faults.lying_dir_sync {
            return Ok(());
        }
        let in_dir = |path: &Path| path.parent() == Some(dir);
        let state = &mut *state;
        state.durable_names.retain(|path, _| !in_dir(path));
        for (path, id) in &state.names {
            if in_dir(path) {
                state.durable_names.insert(path.clone(), *id);
            }
        }
        Ok(())
    }
}

/// A file of a [`SimulatedDisk`].
#[derive(Debug)]
pub struct SimulatedFile {
    disk: SimulatedDisk,
    inode: u64,
}

impl SimulatedFile {
    fn change(&self, kind: Operation, change: Change) -> io::Result<()> {
        let mut state = self.disk.lock();
        let allowed = state.begin(kind);
        if let (Err(error), Change::Write { offset, data }) = (&allowed, &change) {
            if state.powered {
                // An injected write error: as on Linux, part of the data may
                // have been written before it (here, the first half).
                let partial = Change::Write {
                    offset: *offset,
                    data: data[..data.len() / 2].to_vec(),
                };
                let inode = state.inode(self.inode)?;
                partial.apply(&mut inode.current);
                inode.unsynced.push(partial);
                return Err(io::Error::new(error.kind(), error.to_string()));
            }
        }
        allowed?;
        let inode = state.inode(self.inode)?;
        change.apply(&mut inode.current);
        inode.unsynced.push(change);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.disk.lock();
        state.begin(Operation::Sync)?;
        let lying = state.faults.lying_fsync;
        let inode = state.inode(self.inode)?;
        if !lying {
            inode.durable = inode.current.clone();
            inode.unsynced.clear();
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let mut state = self.disk.lock();
        state.begin(Operation::Other)?;
        Ok(state.inode(self.inode)?.current.len() as u64)
    }
}

impl DiskFile for SimulatedFile {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut state = self.disk.lock();
        state.begin(Operation::Other)?;
        Ok(state.inode(self.inode)?.current.clone())
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.change(
            Operation::Write,
            Change::Write {
                offset,
                data: data.to_vec(),
            },
        )
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.change(Operation::SetLen, Change::SetLen(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }
}

impl redb::StorageBackend for SimulatedFile {
    fn len(&self) -> Result<u64, io::Error> {
        SimulatedFile::len(self)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let mut state = self.disk.lock();
        state.begin(Operation::Other)?;
        let bytes = &state.inode(self.inode)?.current;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let source = bytes
            .get(start..start.saturating_add(out.len()))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of a simulated file"))?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        DiskFile::set_len(self, len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.sync()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.write_all_at(data, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep_nothing(n: usize) -> (Vec<bool>, Option<usize>) {
        (vec![false; n], None)
    }

    #[test]
    fn a_power_cut_keeps_only_what_was_synced_and_durably_named() {
        let disk = SimulatedDisk::default();
        let dir = Path::new("/d");
        let a = disk.open(&dir.join("a")).unwrap();
        a.write_all_at(b"synced", 0).unwrap();
        a.sync_data().unwrap();
        disk.sync_dir(dir).unwrap();
        a.write_all_at(b"-lost", 6).unwrap();
        let b = disk.create(&dir.join("b")).unwrap();
        b.write_all_at(b"b", 0).unwrap();
        b.sync_all().unwrap();
        // b's content is durable, its name is not.
        disk.power_cut(keep_nothing);
        assert_eq!(disk.contents(&dir.join("a")).as_deref(), Some(&b"synced"[..]));
        assert_eq!(disk.contents(&dir.join("b")), None);
        // The old handle is stale.
        assert!(a.write_all_at(b"x", 0).is_err());
    }

    #[test]
    fn a_rename_is_durable_only_after_its_directory_is_synced() {
        for synced in [false, true] {
            let disk = SimulatedDisk::default();
            let dir = Path::new("/d");
            let old = disk.open(&dir.join("log")).unwrap();
            old.write_all_at(b"old", 0).unwrap();
            old.sync_all().unwrap();
            disk.sync_dir(dir).unwrap();
            let new = disk.create(&dir.join("log.tmp")).unwrap();
            new.write_all_at(b"new", 0).unwrap();
            new.sync_all().unwrap();
            disk.rename(&dir.join("log.tmp"), &dir.join("log")).unwrap();
            if synced {
                disk.sync_dir(dir).unwrap();
            }
            disk.power_cut(keep_nothing);
            let expected: &[u8] = if synced { b"new" } else { b"old" };
            assert_eq!(disk.contents(&dir.join("log")).as_deref(), Some(expected));
        }
    }

    #[test]
    fn unsynced_writes_survive_in_any_subset_and_the_last_kept_may_be_torn() {
        let disk = SimulatedDisk::default();
        let path = Path::new("/d/f");
        let file = disk.open(path).unwrap();
        disk.sync_dir(Path::new("/d")).unwrap();
        file.write_all_at(b"aaaa", 0).unwrap();
        file.write_all_at(b"bbbb", 4).unwrap();
        file.write_all_at(b"cccc", 8).unwrap();
        disk.power_cut(|n| {
            assert_eq!(n, 3);
            (vec![true, false, true], Some(2))
        });
        assert_eq!(disk.contents(path).as_deref(), Some(&b"aaaa\0\0\0\0cc"[..]));
    }

    #[test]
    fn injected_faults_fail_the_operation_they_name() {
        let disk = SimulatedDisk::default();
        let file = disk.open(Path::new("/d/f")).unwrap();
        disk.set_faults(Faults {
            fail_next: Some((Operation::Sync, io::ErrorKind::Other)),
            ..Faults::default()
        });
        file.write_all_at(b"x", 0).unwrap();
        assert!(file.sync_data().is_err());
        assert!(file.sync_data().is_ok(), "the fault fires once");

        let at = disk.operations() + 1;
        disk.set_faults(Faults {
            power_fails_at: Some(at),
            ..Faults::default()
        });
        file.write_all_at(b"y", 1).unwrap();
        assert!(file.write_all_at(b"z", 2).is_err());
        assert!(file.sync_data().is_err(), "no power, no operation");
    }
}
