//! The write-ahead log of one node: its term, vote and replicated log, in one
//! append-only file `<dir>/wal.log`.
//!
//! # Format
//!
//! The file is a sequence of records, each
//!
//! ```text
//! [u32 LE payload length][u32 LE CRC-32 of the payload][payload]
//! ```
//!
//! where the payload is a [`WalRecord`] encoded with `rmp_serde::to_vec`
//! (compact MessagePack) and the CRC is `crc32fast`'s (IEEE). A payload is at
//! most [`MAX_RECORD_BYTES`].
//!
//! # Preallocation
//!
//! The file is grown ahead of the records in steps of [`PREALLOC_BYTES`] of
//! written zeros, and records are written into that zeroed space. An fsync
//! then only has the new data to write: the file's size and block map do not
//! change, so the inode is not written with every commit (measured: a small
//! fdatasync takes about a quarter less time, and the whole write path with it).
//! The end of the records is therefore marked by a zero length, which no
//! record has (a payload is a non-empty MessagePack value). Invariant: every
//! byte after the last record is zero. Open checks it; a tail that breaks it
//! is cut like any torn tail.
//!
//! # Replay
//!
//! Records are applied in file order: the last `HardState` wins, `LogStart`
//! drops every entry and moves the start point, and an `Entry` replaces the
//! log at its index and after. The first record that is torn, fails its
//! checksum, does not decode or would leave a gap in the log ends the valid
//! prefix: the file is cut there, since nothing after it can be trusted.
//!
//! # Torn tails and lost synced records
//!
//! A crash can only tear what was written after the last completed fsync,
//! and nothing after that fsync was acknowledged: cutting such a tail loses
//! nothing anyone was promised. Losing records an fsync had covered (a disk
//! that lied, or corrupted them later) is another matter: the node may have
//! acknowledged entries or cast a vote that are gone (RaftCore, invariant 9).
//! To tell the two apart, the file records what was synced: every write
//! after an fsync begins with a `Synced { through }` record, the length of
//! the file that fsync made durable, and an idle log writes one on its own
//! ([`Wal::record_synced`]). At open, damage at offset X is a lost synced
//! record if any intact `Synced` record after X claims `through > X`: the
//! damaged bytes were covered by an fsync that completed. Otherwise the
//! damage is a torn unsynced tail (or lies in the last synced write with
//! nothing written after it, which no record can reveal).
//!
//! # Compaction
//!
//! [`Wal::rewrite`] writes the whole state to `wal.log.tmp`, syncs it and
//! renames it over `wal.log`. A `wal.log.tmp` found at open is the remnant of
//! a rewrite that never reached its rename, so it is deleted.

use std::io;
use std::path::{Path, PathBuf};

use protocol::{Entry, LogIndex, Term};

use super::disk::{Disk, DiskFile, OsDisk};
use consensus::HardState;

/// Largest payload accepted, on write and on replay (a larger length is corruption).
pub const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

const HEADER_BYTES: usize = 8;
const WAL_FILE: &str = "wal.log";
const TMP_FILE: &str = "wal.log.tmp";
/// How far ahead of the records the file is grown with zeros. Growing stalls
/// the writer for one write and fsync of this many bytes (about 2 ms here).
/// Measured at 64 clients, 4 MiB steps made p99.9 worse; 256 KiB and 1 MiB
/// steps did not differ beyond noise.
pub const PREALLOC_BYTES: u64 = 1024 * 1024;
/// Capacity the reusable buffer keeps between calls; one huge batch should not pin its memory.
const KEEP_BUF_BYTES: usize = 1024 * 1024;

/// One record of the log file; the module documentation says how replay applies each.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WalRecord {
    /// Term, vote and the recovery flag; the last one in the file wins.
    HardState(HardState),
    /// The log now starts after (index, term): everything before is trimmed or in a snapshot; drops all entries.
    LogStart {
        /// The last index trimmed (or included in a snapshot); the next entry is `index + 1`.
        index: LogIndex,
        /// The term of the entry at `index`.
        term: Term,
    },
    /// An entry; it replaces whatever the log held at its index and after.
    Entry(Entry),
    /// The first `through` bytes of this file were made durable by an fsync
    /// that completed (see "Torn tails and lost synced records").
    Synced {
        /// A length of this file from its start, in bytes.
        through: u64,
    },
}

/// Largest payload of a `Synced` record (what the scan after damage looks for).
const MAX_SYNCED_PAYLOAD: usize = 24;

/// Why a write-ahead log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file operation failed.
    #[error("write-ahead log I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// A record did not encode as MessagePack.
    #[error("write-ahead log record could not be encoded: {0}")]
    Encode(String),
    /// A record's payload, of this many bytes, is over [`MAX_RECORD_BYTES`].
    #[error("write-ahead log record of {0} bytes exceeds the {MAX_RECORD_BYTES} byte limit")]
    RecordTooLarge(usize),
    /// An earlier write or sync failed, so what the file holds is unknown
    /// (after a failed fsync the kernel may have dropped dirty pages).
    #[error("write-ahead log is unusable after an earlier failure")]
    Poisoned,
}

/// What replaying the log at open found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    /// The last `HardState` record, default if none.
    pub hard_state: HardState,
    /// From the last `LogStart` (0 if none).
    pub start_index: LogIndex,
    /// The term of the entry at `start_index` (0 if none).
    pub start_term: Term,
    /// The log after the start point: contiguous, in index order.
    pub entries: Vec<Entry>,
    /// Bytes cut off after the valid records: a torn or corrupt tail, with
    /// the zeros after it. Zero when the records end cleanly.
    pub truncated_bytes: u64,
    /// The cut took bytes an fsync had made durable: the highest synced
    /// length a record after the damage claims. None for a torn unsynced tail.
    pub lost_synced: Option<u64>,
}

/// The log on a [`Disk`]: the real file system unless a test runs it on a
/// simulated one that loses power.
pub struct Wal<D: Disk = OsDisk> {
    disk: D,
    dir: PathBuf,
    file: D::File,
    /// End of the records: where the next one is written.
    len: u64,
    /// Size of the file; `len..allocated` is zeros.
    allocated: u64,
    /// Reused across appends so a busy log does not allocate per batch.
    buf: Vec<u8>,
    poisoned: bool,
    /// Bytes were appended since the last fsync. A sync with nothing new is
    /// skipped: a follower answering a read round or a heartbeat has nothing
    /// to make durable, and an fsync would cost it a disk flush.
    unsynced: bool,
    /// Length of the records at the last completed fsync.
    synced_len: u64,
    /// The highest `through` of a `Synced` record written to the file.
    recorded_synced: u64,
}

impl Wal {
    /// Opens (creating dir and file if missing), replays every record, verifies checksums, and if
    /// the tail is torn or corrupt, truncates the file at the start of the first bad record.
    pub fn open(dir: &Path) -> Result<(Wal, Recovered), WalError> {
        Wal::open_on(OsDisk, dir, |hard| hard)
    }

    /// [`Wal::open`], and if the cut takes synced records, `mark` rewrites
    /// the hard state in the same step: the file is replaced atomically by
    /// the valid records followed by the marked hard state. A crash before
    /// that replacement leaves the damaged file, found again at the next
    /// open; so the cut is never durable without the mark. A torn unsynced
    /// tail is cut without a mark: nothing in it was acknowledged.
    pub fn open_marking_damage(
        dir: &Path,
        mark: impl FnOnce(HardState) -> HardState,
    ) -> Result<(Wal, Recovered), WalError> {
        Wal::open_on(OsDisk, dir, mark)
    }
}

impl<D: Disk> Wal<D> {
    /// [`Wal::open_marking_damage`] on `disk`.
    pub fn open_on(
        disk: D,
        dir: &Path,
        mark: impl FnOnce(HardState) -> HardState,
    ) -> Result<(Wal<D>, Recovered), WalError> {
        disk.create_dir_all(dir)?;
        match disk.remove_file(&dir.join(TMP_FILE)) {
            Ok(()) => tracing::warn!(dir = %dir.display(), "removed a stale {TMP_FILE} left by an unfinished rewrite"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }

        let path = dir.join(WAL_FILE);
        let mut file = disk.open(&path)?;
        // The file's directory entry must be durable, or synced records could
        // vanish with it: a new file, or a rewrite whose rename a killed
        // process never synced, would bring the old file back after a power cut.
        disk.sync_dir(dir)?;

        let mut bytes = file.read_all()?;
        let (mut recovered, valid, mut recorded_synced) = replay(&bytes);
        let total = bytes.len() as u64;
        let mut len = valid;
        let mut allocated = total;
        let tail = &bytes[valid as usize..];
        if tail.iter().any(|&byte| byte != 0) {
            // Not the zeros preallocation leaves: a torn or corrupt record. Cut
            // it, zeros included, so no stale record can ever follow new ones.
            recovered.truncated_bytes = total - valid;
            recovered.lost_synced = synced_claim_after(&bytes, valid as usize);
            tracing::warn!(
                path = %path.display(),
                offset = valid,
                bytes = total - valid,
                synced_through = recovered.lost_synced,
                "write-ahead log has a torn or corrupt tail; truncating it"
            );
            bytes.truncate(valid as usize);
            if recovered.lost_synced.is_some() {
                let marked = mark(recovered.hard_state);
                if marked != recovered.hard_state {
                    encode_into(&mut bytes, &WalRecord::HardState(marked))?;
                    recovered.hard_state = marked;
                }
            }
            // The claims cut with the tail are gone from the file.
            recorded_synced = recorded_synced.min(bytes.len() as u64);
            // Synced before its rename, like every replacement.
            write_tmp(&disk, dir, &bytes)?;
            file = install_tmp(&disk, dir)?;
            len = bytes.len() as u64;
            allocated = len + PREALLOC_BYTES;
        } else {
            // What a killed process wrote may still be only in the page cache:
            // the core will count all of it as durable, so make it so before
            // anything is acknowledged on that basis.
            file.sync_all()?;
        }

        let wal = Wal {
            disk,
            dir: dir.to_path_buf(),
            file,
            len,
            allocated,
            buf: Vec::new(),
            poisoned: false,
            unsynced: false,
            // Synced just above, or written by `write_tmp`, synced too.
            synced_len: len,
            recorded_synced,
        };
        Ok((wal, recovered))
    }

    /// Appends records with buffered writes (no fsync).
    pub fn append(&mut self, records: &[WalRecord]) -> Result<(), WalError> {
        self.check_usable()?;
        self.buf.clear();
        let claim = self.synced_len;
        if claim > self.recorded_synced {
            encode_into(&mut self.buf, &WalRecord::Synced { through: claim })?;
        }
        for record in records {
            encode_into(&mut self.buf, record)?;
        }
        let end = self.len + self.buf.len() as u64;
        let written = self
            .grow_to(end)
            .and_then(|()| self.file.write_all_at(&self.buf, self.len));
        if let Err(e) = written {
            // A partial record left in place would make replay drop every later record, so cut it.
            match self.file.set_len(self.len) {
                Ok(()) => self.allocated = self.len,
                Err(_) => self.poisoned = true,
            }
            return Err(e.into());
        }
        self.len += self.buf.len() as u64;
        self.recorded_synced = self.recorded_synced.max(claim);
        self.unsynced |= !self.buf.is_empty();
        self.buf.clear();
        self.buf.shrink_to(KEEP_BUF_BYTES);
        Ok(())
    }

    /// Makes sure the file holds zeros up to at least `end`, growing it a step ahead.
    fn grow_to(&mut self, end: u64) -> io::Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        let target = end + PREALLOC_BYTES;
        write_zeros(&self.file, self.allocated, target)?;
        self.allocated = target;
        // The new size must reach the disk with the next fsync even if no record does.
        self.unsynced = true;
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_usable()?;
        if !self.unsynced {
            return Ok(());
        }
        if let Err(e) = self.file.sync_data() {
            // A retried fsync can report success for pages the kernel already dropped.
            self.poisoned = true;
            return Err(e.into());
        }
        self.unsynced = false;
        self.synced_len = self.len;
        Ok(())
    }

    /// When nothing else is being written: records that the file is synced
    /// through its end, with a `Synced` record of its own (and an fsync), so
    /// that losing the last write later is seen as a loss, not a torn tail.
    /// Returns whether it wrote one.
    pub fn record_synced(&mut self) -> Result<bool, WalError> {
        if self.unsynced || self.synced_len <= self.recorded_synced {
            return Ok(false);
        }
        self.append(&[])?;
        self.sync()?;
        // Only the record itself is past what it claims, and it is no loss.
        self.recorded_synced = self.synced_len;
        Ok(true)
    }

    /// Compaction: atomically replaces the file by one holding just `hard`, the start point and `entries`.
    pub fn rewrite(
        &mut self,
        hard: HardState,
        start_index: LogIndex,
        start_term: Term,
        entries: &[Entry],
    ) -> Result<(), WalError> {
        self.check_usable()?;
        self.buf.clear();
        encode_into(&mut self.buf, &WalRecord::HardState(hard))?;
        encode_into(
            &mut self.buf,
            &WalRecord::LogStart {
                index: start_index,
                term: start_term,
            },
        )?;
        for entry in entries {
            // Cloned one at a time so the transient copy stays one entry, not the whole log.
            encode_into(&mut self.buf, &WalRecord::Entry(entry.clone()))?;
        }

        let len = self.buf.len() as u64;
        write_tmp(&self.disk, &self.dir, &self.buf)?;
        // Up to here a failure leaves the old file in charge; from the rename on it does not.
        match install_tmp(&self.disk, &self.dir) {
            Ok(file) => {
                self.file = file;
                // The new file was synced before its rename; the old one's unsynced tail is in it.
                self.unsynced = false;
                self.synced_len = len;
                self.recorded_synced = 0;
                self.len = len;
                self.allocated = len + PREALLOC_BYTES;
                self.buf.clear();
                self.buf.shrink_to(KEEP_BUF_BYTES);
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(e.into())
            }
        }
    }

    /// Length of the records in bytes (the file is longer by its zeroed preallocation).
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    fn check_usable(&self) -> Result<(), WalError> {
        if self.poisoned {
            Err(WalError::Poisoned)
        } else {
            Ok(())
        }
    }
}

/// Appends one framed record to `buf`.
fn encode_into(buf: &mut Vec<u8>, record: &WalRecord) -> Result<(), WalError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_BYTES]);
    if let Err(e) = rmp_serde::encode::write(buf, record) {
        buf.truncate(start);
        return Err(WalError::Encode(e.to_string()));
    }
    let payload_len = buf.len() - start - HEADER_BYTES;
    if payload_len > MAX_RECORD_BYTES {
        // Replay would reject it, and with it everything after.
        buf.truncate(start);
        return Err(WalError::RecordTooLarge(payload_len));
    }
    let crc = crc32fast::hash(&buf[start + HEADER_BYTES..]);
    // Fits: payload_len <= MAX_RECORD_BYTES < u32::MAX.
    buf[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buf[start + 4..start + HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Replays `bytes`, returning the state, the length of the valid prefix and
/// the highest synced length its `Synced` records claim.
fn replay(bytes: &[u8]) -> (Recovered, u64, u64) {
    let mut rec = Recovered::default();
    let mut pos = 0usize;
    let mut synced = 0u64;
    while let Some((record, next)) = read_record(bytes, pos) {
        match record {
            WalRecord::Synced { through } => synced = synced.max(through),
            WalRecord::HardState(hard) => rec.hard_state = hard,
            WalRecord::LogStart { index, term } => {
                rec.start_index = index;
                rec.start_term = term;
                rec.entries.clear();
            }
            WalRecord::Entry(entry) => {
                // Valid indexes are start+1 ..= last+1; anything else means the file is not what was written.
                let Some(offset) = rec
                    .start_index
                    .checked_add(1)
                    .and_then(|first| entry.index.checked_sub(first))
                else {
                    break;
                };
                let Ok(offset) = usize::try_from(offset) else {
                    break;
                };
                if offset > rec.entries.len() {
                    break;
                }
                rec.entries.truncate(offset);
                rec.entries.push(entry);
            }
        }
        pos = next;
    }
    (rec, pos as u64, synced)
}

/// The highest length an intact `Synced` record after the damage at
/// `damage` claims, if it is beyond the damage: then an fsync had covered
/// the damaged bytes. Records after damage are found by trying every offset;
/// only small payloads are decoded, so the scan is linear in the tail.
fn synced_claim_after(bytes: &[u8], damage: usize) -> Option<u64> {
    let mut claim: Option<u64> = None;
    let mut pos = damage.saturating_add(1);
    while pos.saturating_add(HEADER_BYTES) < bytes.len() {
        let Some((len, _)) = read_header(bytes, pos) else {
            break;
        };
        if (1..=MAX_SYNCED_PAYLOAD).contains(&len) {
            if let Some((WalRecord::Synced { through }, _)) = read_record(bytes, pos) {
                if through > damage as u64 {
                    claim = claim.max(Some(through));
                }
            }
        }
        pos += 1;
    }
    claim
}

/// Writes `content` and a zeroed preallocation to `<dir>/wal.log.tmp`, synced.
fn write_tmp(disk: &impl Disk, dir: &Path, content: &[u8]) -> io::Result<()> {
    let out = disk.create(&dir.join(TMP_FILE))?;
    out.write_all_at(content, 0)?;
    let len = content.len() as u64;
    write_zeros(&out, len, len + PREALLOC_BYTES)?;
    out.sync_all()
}

/// Renames `wal.log.tmp` over `wal.log`, makes the rename durable, and opens the result.
fn install_tmp<D: Disk>(disk: &D, dir: &Path) -> io::Result<D::File> {
    let path = dir.join(WAL_FILE);
    disk.rename(&dir.join(TMP_FILE), &path)?;
    disk.sync_dir(dir)?;
    disk.open(&path)
}

/// Writes zeros over `from..to` of `file` (real blocks, not a hole: a hole
/// would be allocated, and the inode written, by the first fsync into it).
fn write_zeros(file: &impl DiskFile, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Decodes the record at `pos`, with the offset after it; `None` if it is
/// missing, torn or corrupt, or if `pos` is the end (a zero length).
fn read_record(bytes: &[u8], pos: usize) -> Option<(WalRecord, usize)> {
    let (len, crc) = read_header(bytes, pos)?;
    if len == 0 || len > MAX_RECORD_BYTES {
        return None;
    }
    let start = pos + HEADER_BYTES;
    let end = start.checked_add(len)?;
    let payload = bytes.get(start..end)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let record = rmp_serde::from_slice(payload).ok()?;
    Some((record, end))
}

/// The payload length and CRC of the record header at `pos`, if there is one.
fn read_header(bytes: &[u8], pos: usize) -> Option<(usize, u32)> {
    let header = bytes.get(pos..pos.checked_add(HEADER_BYTES)?)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    Some((len, crc))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use protocol::Command;

    use super::*;

    fn entry(index: LogIndex, term: Term) -> Entry {
        Entry {
            index,
            term,
            request_id: index * 100,
            command: Command::Put {
                key: format!("k{index}"),
                value: format!("v{index}-{term}"),
                session: None,
            },
        }
    }

    fn hard(term: Term, voted_for: Option<u64>) -> HardState {
        HardState {
            term,
            voted_for,
            recovering: false,
        }
    }

    fn entries(range: std::ops::RangeInclusive<LogIndex>, term: Term) -> Vec<Entry> {
        range.map(|i| entry(i, term)).collect()
    }

    fn records(entries: &[Entry]) -> Vec<WalRecord> {
        entries.iter().cloned().map(WalRecord::Entry).collect()
    }

    fn wal_path(dir: &Path) -> PathBuf {
        dir.join(WAL_FILE)
    }

    /// Writes `records` into a new WAL in `dir`, syncs and closes it; returns the records' length.
    fn write_log(dir: &Path, records: &[WalRecord]) -> u64 {
        let (mut wal, _) = Wal::open(dir).unwrap();
        wal.append(records).unwrap();
        wal.sync().unwrap();
        wal.len_bytes()
    }

    fn reopen(dir: &Path) -> Recovered {
        let (_, rec) = Wal::open(dir).unwrap();
        rec
    }

    /// Record boundaries of the file, from its own framing, up to the zero length that ends them.
    fn boundaries(bytes: &[u8]) -> Vec<usize> {
        let mut out = vec![0];
        let mut pos = 0;
        while pos + HEADER_BYTES <= bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            pos += HEADER_BYTES + len;
            out.push(pos);
        }
        out
    }

    /// The file's records without the zeroed preallocation after them (checked to be zeros).
    fn read_records(dir: &Path) -> Vec<u8> {
        let mut bytes = fs::read(wal_path(dir)).unwrap();
        let end = *boundaries(&bytes).last().unwrap();
        assert!(bytes[end..].iter().all(|&b| b == 0), "non-zero bytes after the records");
        bytes.truncate(end);
        bytes
    }

    #[test]
    fn empty_dir_recovers_default_and_creates_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("node");
        let (wal, rec) = Wal::open(&dir).unwrap();
        assert_eq!(rec, Recovered::default());
        assert_eq!(wal.len_bytes(), 0);
        assert!(wal_path(&dir).exists());
    }

    #[test]
    fn round_trip_across_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(tmp.path()).unwrap();
        let mut recs = vec![WalRecord::HardState(hard(1, Some(2)))];
        recs.extend(records(&entries(1..=3, 1)));
        wal.append(&recs).unwrap();
        wal.append(&[WalRecord::HardState(hard(2, None))]).unwrap();
        wal.append(&records(&[entry(4, 2)])).unwrap();
        wal.sync().unwrap();
        let len = wal.len_bytes();
        assert_eq!(len, read_records(tmp.path()).len() as u64);
        assert!(fs::metadata(wal_path(tmp.path())).unwrap().len() > len);
        drop(wal);

        let (wal, rec) = Wal::open(tmp.path()).unwrap();
        let mut want = entries(1..=3, 1);
        want.push(entry(4, 2));
        assert_eq!(
            rec,
            Recovered {
                hard_state: hard(2, None),
                start_index: 0,
                start_term: 0,
                entries: want,
                truncated_bytes: 0,
                lost_synced: None,
            }
        );
        assert_eq!(wal.len_bytes(), len);
    }

    #[test]
    fn entry_replaces_suffix() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(tmp.path()).unwrap();
        wal.append(&records(&entries(1..=5, 1))).unwrap();
        // A new leader's entry at 3 overrides 3, 4 and 5.
        wal.append(&records(&[entry(3, 2)])).unwrap();
        wal.append(&records(&[entry(4, 2)])).unwrap();
        wal.sync().unwrap();
        drop(wal);

        let rec = reopen(tmp.path());
        assert_eq!(rec.entries, vec![entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)]);
        assert_eq!(rec.truncated_bytes, 0);
    }

    #[test]
    fn log_start_drops_earlier_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(tmp.path()).unwrap();
        wal.append(&records(&entries(1..=5, 1))).unwrap();
        wal.append(&[WalRecord::LogStart { index: 10, term: 3 }]).unwrap();
        wal.append(&records(&entries(11..=12, 3))).unwrap();
        wal.sync().unwrap();
        drop(wal);

        let rec = reopen(tmp.path());
        assert_eq!(rec.start_index, 10);
        assert_eq!(rec.start_term, 3);
        assert_eq!(rec.entries, entries(11..=12, 3));
        assert_eq!(rec.truncated_bytes, 0);
    }

    #[test]
    fn torn_tail_is_truncated_at_every_offset_and_append_continues() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_log(
            dir,
            &[
                vec![WalRecord::HardState(hard(1, Some(1)))],
                records(&entries(1..=3, 1)),
            ]
            .concat(),
        );
        let full = read_records(dir);
        let bounds = boundaries(&full);
        assert_eq!(bounds.len(), 5);
        let last_start = bounds[3];

        // Every cut inside the last record: header only partly there, header whole but payload short.
        let cuts: Vec<usize> = (last_start + 1..full.len()).collect();
        assert!(cuts.len() > HEADER_BYTES);
        for cut in cuts {
            fs::write(wal_path(dir), &full[..cut]).unwrap();
            let (mut wal, rec) = Wal::open(dir).unwrap();
            assert_eq!(rec.hard_state, hard(1, Some(1)), "cut at {cut}");
            assert_eq!(rec.entries, entries(1..=2, 1), "cut at {cut}");
            assert_eq!(rec.truncated_bytes, (cut - last_start) as u64, "cut at {cut}");
            assert_eq!(wal.len_bytes(), last_start as u64);
            assert_eq!(read_records(dir).len() as u64, last_start as u64);

            // Appending after the cut lands right after the last good record.
            wal.append(&records(&[entry(3, 2), entry(4, 2)])).unwrap();
            wal.sync().unwrap();
            drop(wal);
            let rec = reopen(dir);
            assert_eq!(rec.entries, vec![entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)]);
            assert_eq!(rec.truncated_bytes, 0);
        }

        // A cut inside an earlier record loses everything from there on.
        fs::write(wal_path(dir), &full[..bounds[2] + 3]).unwrap();
        let rec = reopen(dir);
        assert_eq!(rec.entries, entries(1..=1, 1));
        assert_eq!(rec.truncated_bytes, 3);
    }

    #[test]
    fn flipped_payload_byte_fails_checksum() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_log(dir, &records(&entries(1..=3, 1)));
        let mut bytes = read_records(dir);
        let bounds = boundaries(&bytes);
        let last_start = bounds[2];
        let flip_at = bytes.len() - 2;
        bytes[flip_at] ^= 0x01;
        fs::write(wal_path(dir), &bytes).unwrap();

        let rec = reopen(dir);
        assert_eq!(rec.entries, entries(1..=2, 1));
        assert_eq!(rec.truncated_bytes, (bytes.len() - last_start) as u64);
        assert_eq!(read_records(dir).len() as u64, last_start as u64);
    }

    #[test]
    fn corrupt_middle_record_drops_everything_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_log(
            dir,
            &[
                records(&entries(1..=3, 1)),
                vec![WalRecord::HardState(hard(5, Some(3)))],
            ]
            .concat(),
        );
        let mut bytes = read_records(dir);
        let bounds = boundaries(&bytes);
        bytes[bounds[1] + HEADER_BYTES] ^= 0x80;
        fs::write(wal_path(dir), &bytes).unwrap();

        let rec = reopen(dir);
        assert_eq!(rec.entries, entries(1..=1, 1));
        assert_eq!(rec.hard_state, HardState::default());
        assert_eq!(rec.truncated_bytes, (bytes.len() - bounds[1]) as u64);
    }

    #[test]
    fn garbage_tail_is_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let good_len = write_log(
            dir,
            &[
                vec![WalRecord::HardState(hard(3, Some(1)))],
                records(&entries(1..=2, 3)),
            ]
            .concat(),
        );

        let garbage_tails: [&[u8]; 4] = [
            // Length far beyond MAX_RECORD_BYTES.
            &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1, 2, 3],
            // Plausible length that runs past EOF.
            &[0x10, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1],
            // Zeros then something: not what preallocation leaves.
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            // Too short for a header.
            &[7, 7, 7],
        ];
        for tail in garbage_tails {
            let mut bytes = read_records(dir);
            bytes.extend_from_slice(tail);
            fs::write(wal_path(dir), &bytes).unwrap();
            let (wal, rec) = Wal::open(dir).unwrap();
            assert_eq!(rec.hard_state, hard(3, Some(1)));
            assert_eq!(rec.entries, entries(1..=2, 3));
            assert_eq!(rec.truncated_bytes, tail.len() as u64, "tail {tail:?}");
            assert_eq!(wal.len_bytes(), good_len);
            assert_eq!(read_records(dir).len() as u64, good_len);
        }
    }

    #[test]
    fn zeros_after_the_records_are_preallocation_not_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let len = write_log(dir, &records(&entries(1..=2, 1)));

        let (mut wal, rec) = Wal::open(dir).unwrap();
        assert_eq!(rec.entries, entries(1..=2, 1));
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(wal.len_bytes(), len);
        // The next record goes right after the last one, into the zeros.
        let size = fs::metadata(wal_path(dir)).unwrap().len();
        wal.append(&records(&[entry(3, 1)])).unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert_eq!(fs::metadata(wal_path(dir)).unwrap().len(), size);
        assert_eq!(reopen(dir).entries, entries(1..=3, 1));
    }

    #[test]
    fn log_grows_past_its_preallocation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = Wal::open(dir).unwrap();
        let big = |index: LogIndex| Entry {
            index,
            term: 1,
            request_id: 0,
            command: Command::Put {
                key: format!("k{index}"),
                value: "v".repeat(100 * 1024),
                session: None,
            },
        };
        // About 2.5 preallocation steps, written a few records at a time.
        let count = (PREALLOC_BYTES * 5 / 2 / (100 * 1024)) as LogIndex;
        for first in (1..=count).step_by(7) {
            let batch: Vec<Entry> = (first..=(first + 6).min(count)).map(big).collect();
            wal.append(&records(&batch)).unwrap();
            wal.sync().unwrap();
        }
        let len = wal.len_bytes();
        drop(wal);
        assert!(fs::metadata(wal_path(dir)).unwrap().len() > len);
        let rec = reopen(dir);
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(rec.entries, (1..=count).map(big).collect::<Vec<_>>());
    }

    #[test]
    fn stale_record_after_the_zeros_is_cut_and_never_replayed() {
        // A valid record beyond the end marker (a crash tore the batch before
        // it) must not come back once new records fill the gap before it.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let len = write_log(dir, &records(&entries(1..=2, 1))) as usize;
        let mut stale = Vec::new();
        encode_into(&mut stale, &WalRecord::Entry(entry(3, 1))).unwrap();
        let mut bytes = fs::read(wal_path(dir)).unwrap();
        let at = len + stale.len();
        bytes[at..at + stale.len()].copy_from_slice(&stale);
        fs::write(wal_path(dir), &bytes).unwrap();

        let (mut wal, rec) = Wal::open(dir).unwrap();
        assert_eq!(rec.entries, entries(1..=2, 1));
        assert!(rec.truncated_bytes > 0);
        // Exactly one record's worth fills the gap, so the stale one would line up.
        wal.append(&records(&[entry(3, 2)])).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let rec = reopen(dir);
        assert_eq!(rec.entries, vec![entry(1, 1), entry(2, 1), entry(3, 2)]);
        assert_eq!(rec.truncated_bytes, 0);
    }

    fn mark(hard: HardState) -> HardState {
        HardState {
            recovering: true,
            ..hard
        }
    }

    /// Hard state and entries 1..=3 synced, then entries 4..=5 synced (their
    /// write begins with a `Synced` record claiming the first write). Returns
    /// the file's records and where the first write ended.
    fn two_synced_writes(dir: &Path) -> (Vec<u8>, usize) {
        let (mut wal, _) = Wal::open(dir).unwrap();
        wal.append(
            &[
                vec![WalRecord::HardState(hard(4, Some(2)))],
                records(&entries(1..=3, 4)),
            ]
            .concat(),
        )
        .unwrap();
        wal.sync().unwrap();
        let first = wal.len_bytes() as usize;
        wal.append(&records(&entries(4..=5, 4))).unwrap();
        wal.sync().unwrap();
        drop(wal);
        (read_records(dir), first)
    }

    #[test]
    fn a_lost_synced_record_is_told_from_a_torn_tail_and_marked_in_one_step() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut bytes, first) = two_synced_writes(dir);
        // Entry 3, inside the first synced write, is corrupted (a disk that lied).
        let entry3 = boundaries(&bytes)[3];
        assert!(entry3 < first);
        bytes[entry3 + HEADER_BYTES + 2] ^= 0x40;
        fs::write(wal_path(dir), &bytes).unwrap();

        let (wal, rec) = Wal::open_marking_damage(dir, mark).unwrap();
        assert!(rec.truncated_bytes > 0);
        assert_eq!(rec.lost_synced, Some(first as u64));
        assert_eq!(rec.hard_state, mark(hard(4, Some(2))));
        assert_eq!(rec.entries, entries(1..=2, 4));
        // Killed right after the open: the mark is already in the file, and the damage gone.
        drop(wal);
        let rec = reopen(dir);
        assert_eq!((rec.truncated_bytes, rec.lost_synced), (0, None));
        assert_eq!(rec.hard_state, mark(hard(4, Some(2))));
        assert_eq!(rec.entries, entries(1..=2, 4));
        // A clean open does not mark.
        let (_, rec) = Wal::open_marking_damage(dir, |hard| HardState { term: 99, ..hard }).unwrap();
        assert_eq!(rec.hard_state.term, 4);
    }

    #[test]
    fn a_torn_unsynced_tail_is_cut_without_a_mark() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut bytes, _) = two_synced_writes(dir);
        let intact = bytes.len();
        // A third write, cut by the crash before its fsync: its `Synced` record
        // (claiming the second write) is whole, the entry after it torn.
        let mut third = Vec::new();
        encode_into(&mut third, &WalRecord::Synced { through: intact as u64 }).unwrap();
        encode_into(&mut third, &WalRecord::Entry(entry(6, 4))).unwrap();
        bytes.extend_from_slice(&third[..third.len() - 3]);
        fs::write(wal_path(dir), &bytes).unwrap();

        let (_, rec) = Wal::open_marking_damage(dir, mark).unwrap();
        assert!(rec.truncated_bytes > 0);
        assert_eq!(rec.lost_synced, None);
        assert_eq!(rec.hard_state, hard(4, Some(2)), "not marked");
        assert_eq!(rec.entries, entries(1..=5, 4));
    }

    #[test]
    fn an_idle_log_records_its_last_sync_so_losing_that_write_is_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = Wal::open(dir).unwrap();
        wal.append(&records(&entries(1..=3, 2))).unwrap();
        wal.sync().unwrap();
        let synced = wal.len_bytes();
        assert!(wal.record_synced().unwrap());
        assert!(!wal.record_synced().unwrap(), "nothing new to record");
        drop(wal);
        let mut bytes = read_records(dir);
        let last_entry = boundaries(&bytes)[2];
        bytes[last_entry + HEADER_BYTES + 2] ^= 0x40;
        fs::write(wal_path(dir), &bytes).unwrap();
        let (_, rec) = Wal::open_marking_damage(dir, mark).unwrap();
        assert_eq!(rec.lost_synced, Some(synced));
        assert!(rec.hard_state.recovering);
        assert_eq!(rec.entries, entries(1..=2, 2));
    }

    #[test]
    fn a_synced_record_is_small_enough_for_the_scan() {
        let mut buf = Vec::new();
        encode_into(&mut buf, &WalRecord::Synced { through: u64::MAX }).unwrap();
        assert!(buf.len() - HEADER_BYTES <= MAX_SYNCED_PAYLOAD, "{} bytes", buf.len());
    }

    #[test]
    fn log_start_at_the_last_index_does_not_overflow() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut bytes = Vec::new();
        encode_into(
            &mut bytes,
            &WalRecord::LogStart {
                index: u64::MAX,
                term: 1,
            },
        )
        .unwrap();
        let start_len = bytes.len();
        encode_into(&mut bytes, &WalRecord::Entry(entry(7, 1))).unwrap();
        fs::write(wal_path(dir), &bytes).unwrap();
        let (wal, rec) = Wal::open(dir).unwrap();
        assert_eq!(rec.start_index, u64::MAX);
        assert!(rec.entries.is_empty());
        assert_eq!(wal.len_bytes(), start_len as u64);
    }

    #[test]
    fn valid_checksum_with_undecodable_payload_is_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_log(dir, &records(&[entry(1, 1)]));
        let payload = [0xc1u8, 0x00, 0x01]; // 0xc1 is never used in MessagePack.
        let mut bytes = read_records(dir);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        fs::write(wal_path(dir), &bytes).unwrap();

        let rec = reopen(dir);
        assert_eq!(rec.entries, vec![entry(1, 1)]);
        assert_eq!(rec.truncated_bytes, (HEADER_BYTES + payload.len()) as u64);
    }

    #[test]
    fn gap_in_entries_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = Wal::open(dir).unwrap();
        wal.append(&records(&entries(1..=2, 1))).unwrap();
        let before_gap = wal.len_bytes();
        // Index 4 after 2 skips 3; the hard state behind it must not be trusted either.
        wal.append(&records(&[entry(4, 1)])).unwrap();
        wal.append(&[WalRecord::HardState(hard(9, Some(9)))]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let total = fs::metadata(wal_path(dir)).unwrap().len();

        let rec = reopen(dir);
        assert_eq!(rec.entries, entries(1..=2, 1));
        assert_eq!(rec.hard_state, HardState::default());
        assert_eq!(rec.truncated_bytes, total - before_gap);
    }

    #[test]
    fn entry_at_or_before_log_start_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = Wal::open(dir).unwrap();
        wal.append(&[WalRecord::LogStart { index: 5, term: 2 }]).unwrap();
        let good = wal.len_bytes();
        wal.append(&records(&[entry(5, 2)])).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let total = fs::metadata(wal_path(dir)).unwrap().len();

        let rec = reopen(dir);
        assert_eq!((rec.start_index, rec.start_term), (5, 2));
        assert!(rec.entries.is_empty());
        assert_eq!(rec.truncated_bytes, total - good);
    }

    #[test]
    fn rewrite_keeps_only_given_state_and_survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = Wal::open(dir).unwrap();
        wal.append(&[WalRecord::HardState(hard(1, Some(1)))]).unwrap();
        wal.append(&records(&entries(1..=20, 1))).unwrap();
        wal.sync().unwrap();
        let before = wal.len_bytes();

        wal.rewrite(hard(4, Some(2)), 15, 1, &entries(16..=20, 1)).unwrap();
        assert!(wal.len_bytes() < before);
        assert_eq!(wal.len_bytes(), read_records(dir).len() as u64);
        assert!(!dir.join(TMP_FILE).exists());
        // Appends after a rewrite go to the new file.
        wal.append(&records(&[entry(21, 4)])).unwrap();
        wal.sync().unwrap();
        drop(wal);

        let rec = reopen(dir);
        let mut want = entries(16..=20, 1);
        want.push(entry(21, 4));
        assert_eq!(
            rec,
            Recovered {
                hard_state: hard(4, Some(2)),
                start_index: 15,
                start_term: 1,
                entries: want,
                truncated_bytes: 0,
                lost_synced: None,
            }
        );
    }

    #[test]
    fn rewrite_with_no_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = Wal::open(dir).unwrap();
        wal.append(&records(&entries(1..=3, 1))).unwrap();
        wal.rewrite(hard(2, None), 3, 1, &[]).unwrap();
        drop(wal);

        let rec = reopen(dir);
        assert_eq!(rec.hard_state, hard(2, None));
        assert_eq!((rec.start_index, rec.start_term), (3, 1));
        assert!(rec.entries.is_empty());
    }

    #[test]
    fn stale_tmp_file_is_removed_and_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (mut wal, _) = Wal::open(dir).unwrap();
        wal.append(&records(&entries(1..=2, 1))).unwrap();
        wal.sync().unwrap();
        drop(wal);

        // A complete-looking tmp file from a rewrite that crashed before its rename.
        let mut stale = Vec::new();
        encode_into(&mut stale, &WalRecord::LogStart { index: 50, term: 7 }).unwrap();
        fs::write(dir.join(TMP_FILE), &stale).unwrap();

        let rec = reopen(dir);
        assert_eq!(rec.start_index, 0);
        assert_eq!(rec.entries, entries(1..=2, 1));
        assert!(!dir.join(TMP_FILE).exists());
    }

    #[test]
    fn random_bytes_never_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // Small xorshift so the test is deterministic without extra dependencies.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200 {
            let len = (next() % 300) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            fs::write(wal_path(dir), &bytes).unwrap();
            let (wal, rec) = Wal::open(dir).unwrap();
            let valid = wal.len_bytes() as usize;
            if bytes[valid..].iter().all(|&b| b == 0) {
                assert_eq!(rec.truncated_bytes, 0, "round {round}");
            } else {
                assert_eq!(valid as u64 + rec.truncated_bytes, len as u64, "round {round}");
            }
        }
    }

    #[test]
    fn oversized_record_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(tmp.path()).unwrap();
        let big = Entry {
            index: 1,
            term: 1,
            request_id: 0,
            command: Command::Put {
                key: "k".into(),
                value: "x".repeat(MAX_RECORD_BYTES + 1),
                session: None,
            },
        };
        let err = wal.append(&[WalRecord::Entry(big)]).unwrap_err();
        assert!(matches!(err, WalError::RecordTooLarge(_)), "{err:?}");
        assert_eq!(wal.len_bytes(), 0);
        wal.append(&records(&[entry(1, 1)])).unwrap();
        drop(wal);
        assert_eq!(reopen(tmp.path()).entries, vec![entry(1, 1)]);
    }

    /// The bytes of every record kind, framed, pinned: the file format must
    /// not change by accident (a changed type would make old logs unreadable,
    /// and replay would cut them as torn).
    #[test]
    fn every_record_keeps_its_bytes_on_disk() {
        let session = Some(protocol::Session {
            client_id: 0xfeed,
            seq: 5,
            acked_below: 4,
            floor: Some(12),
        });
        let samples = [
            (
                "HardState",
                WalRecord::HardState(HardState {
                    term: 9,
                    voted_for: Some(2),
                    recovering: true,
                }),
            ),
            ("LogStart", WalRecord::LogStart { index: 40, term: 8 }),
            (
                "Entry",
                WalRecord::Entry(Entry {
                    index: 41,
                    term: 9,
                    request_id: 77,
                    command: Command::Put {
                        key: "k".into(),
                        value: "v".into(),
                        session,
                    },
                }),
            ),
            ("Synced", WalRecord::Synced { through: 1 << 20 }),
        ];
        let mut actual = Vec::new();
        for (name, record) in &samples {
            let mut bytes = Vec::new();
            encode_into(&mut bytes, record).unwrap();
            assert_eq!(read_record(&bytes, 0).map(|(r, _)| r).as_ref(), Some(record), "{name}");
            actual.push((*name, bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()));
        }
        let expected: Vec<(&str, String)> = WAL_GOLDEN.iter().map(|(n, h)| (*n, h.to_string())).collect();
        if actual != expected {
            for (name, bytes) in &actual {
                println!("        (\"{name}\", \"{bytes}\"),");
            }
            panic!("the on-disk bytes of a WAL record changed (new bytes printed above)");
        }
    }

    #[rustfmt::skip]
    const WAL_GOLDEN: &[(&str, &str)] = &[
        ("HardState", "0f00000078fbcff581a9486172645374617465930902c3"),
        ("LogStart", "0d000000ce52b60281a84c6f675374617274922808"),
        ("Entry", "1c0000004cad5f1d81a5456e7472799429094d81a350757493a16ba17694cdfeed05040c"),
        ("Synced", "0e000000415db76381a653796e63656491ce00100000"),
    ];
}
