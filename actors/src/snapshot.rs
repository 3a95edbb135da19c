//! Snapshots on the move: how a leader streams the whole state to a follower
//! whose next entries it has already trimmed, and how the follower takes it.
//!
//! The bytes never travel in one frame, and no actor encodes or decodes them:
//! - The leader takes an O(1) copy of the state ([`SnapshotSource`]) and
//!   [`spawn_encoder`] encodes it on a thread of its own into pieces of
//!   [`SNAPSHOT_CHUNK_BYTES`]. [`stream_snapshot`], an async task, sends them
//!   as `SnapshotChunk`s with at most [`WINDOW_BYTES`] unacknowledged (the
//!   encoder waits when the window is full: memory stays bounded however
//!   large the state), and sends again what stays unacknowledged. When every
//!   byte is acknowledged, the core seals the transfer with an
//!   `InstallSnapshot` carrying the length and a CRC-32 of the whole.
//! - The follower appends each chunk that comes next to a staging file
//!   ([`Incoming`]) and acknowledges how much it holds. On the seal it checks
//!   length and checksum, [`spawn_decoder`] decodes the file on a thread of
//!   its own, and only then does its core act on the seal.
//!
//! Nothing here is durable, and nothing needs to be: the staging file is
//! scratch (a crash mid-transfer loses it, and the leader starts again). A
//! snapshot becomes durable through the store's `replace`, which completes
//! before the follower's log is reset to the snapshot (see the ElectionActor).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use protocol::{LogIndex, NodeId, PeerEnvelope, PeerMessage, SnapshotChunk, Term, SNAPSHOT_CHUNK_BYTES};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::messages::PeerTransport;
use crate::state::{SnapshotSource, StateMachine};
use crate::storage::StoredState;

/// Most snapshot bytes sent and not yet acknowledged, per transfer.
pub const WINDOW_BYTES: usize = 4 * SNAPSHOT_CHUNK_BYTES;

/// When unacknowledged chunks go out again, and when a transfer is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Unacknowledged chunks are sent again after this long without an acknowledgement.
    pub resend_after: Duration,
    /// A transfer with no acknowledged progress for this long is given up.
    pub stall_limit: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            resend_after: Duration::from_secs(1),
            stall_limit: Duration::from_secs(30),
        }
    }
}

/// Most resends of the unacknowledged window in a row, before the wait
/// between them stops doubling (1, 2, 4, 8 s, then 8 s).
const RESEND_DOUBLINGS: u32 = 3;

impl Pacing {
    /// The wait before the `n`th resend in a row (0: the first).
    fn resend_wait(&self, n: u32) -> Duration {
        self.resend_after.saturating_mul(1 << n.min(RESEND_DOUBLINGS))
    }
}

/// The follower's staging files, in its data folder, are
/// `snapshot-<n>.incoming`: a new name per transfer, so that dropping a
/// replaced transfer never removes its successor's file.
const STAGING_PREFIX: &str = "snapshot-";
const STAGING_SUFFIX: &str = ".incoming";

/// A snapshot decoded off the actor thread: the state machine and the state
/// the store must hold (sharing one key-value map).
#[derive(Debug)]
pub struct DecodedSnapshot {
    /// The state machine, to replace the CommitActor's.
    pub state: StateMachine,
    /// The same state as the store must hold it (sessions encoded as rows).
    pub stored: StoredState,
}

/// The length and CRC-32 of a whole snapshot, as the seal carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// Length of the whole snapshot, in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE, as `crc32fast` computes it) of the whole snapshot.
    pub checksum: u32,
}

/// The running length and CRC-32 of snapshot bytes: kept by the encoder as
/// it writes them, by the follower as it stages them, and by the decoder as
/// it reads them back, each to compare with (or make) the seal.
#[derive(Debug, Clone, Default)]
struct SealSum {
    bytes: u64,
    hasher: crc32fast::Hasher,
}

impl SealSum {
    fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes = self.bytes.saturating_add(data.len() as u64);
    }

    fn seal(&self) -> Seal {
        Seal {
            bytes: self.bytes,
            checksum: self.hasher.clone().finalize(),
        }
    }
}

/// What the encoder thread hands the sending task.
#[derive(Debug)]
pub enum Piece {
    /// The next bytes of the encoding: [`SNAPSHOT_CHUNK_BYTES`] bytes, or fewer for the last piece.
    Data(Vec<u8>),
    /// Encoding finished; the seal of every byte sent before it.
    End(Seal),
    /// Encoding failed, for this reason; nothing follows.
    Failed(String),
}

/// Cuts what the encoder writes into pieces; blocks when the sender's queue is full.
struct PieceWriter {
    pending: Vec<u8>,
    pieces: mpsc::Sender<Piece>,
    sum: SealSum,
}

impl PieceWriter {
    fn emit(&mut self, piece: Vec<u8>) -> std::io::Result<()> {
        self.sum.update(&piece);
        self.pieces
            .blocking_send(Piece::Data(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "snapshot transfer cancelled"))
    }
}

impl Write for PieceWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(data);
        while self.pending.len() >= SNAPSHOT_CHUNK_BYTES {
            let rest = self.pending.split_off(SNAPSHOT_CHUNK_BYTES);
            let piece = std::mem::replace(&mut self.pending, rest);
            self.emit(piece)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes `source` on a thread of its own; its pieces come out of the returned queue.
pub fn spawn_encoder(source: SnapshotSource, thread_name: String) -> std::io::Result<mpsc::Receiver<Piece>> {
    // Two pieces queued besides the window: the encoder stays just ahead of the network.
    let (pieces, queue) = mpsc::channel(2);
    std::thread::Builder::new().name(thread_name).spawn(move || {
        let mut writer = PieceWriter {
            pending: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
            pieces: pieces.clone(),
            sum: SealSum::default(),
        };
        let encoded = source.encode_into(&mut writer).map_err(|e| e.to_string());
        let last = std::mem::take(&mut writer.pending);
        let finished = encoded.and_then(|()| {
            if last.is_empty() {
                Ok(())
            } else {
                writer.emit(last).map_err(|e| e.to_string())
            }
        });
        let end = match finished {
            Ok(()) => Piece::End(writer.sum.seal()),
            Err(e) => Piece::Failed(e),
        };
        // A cancelled transfer has dropped the queue; nobody is left to tell.
        let _ = pieces.blocking_send(end);
    })?;
    Ok(queue)
}

/// Which snapshot goes where: the sender, the follower, the leader's term,
/// and the snapshot's applied point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// The leader sending the snapshot.
    pub from: NodeId,
    /// The follower receiving it.
    pub to: NodeId,
    /// The leader's term when the transfer started; chunks and acknowledgements
    /// of another term are not this transfer's.
    pub term: Term,
    /// The snapshot's applied index (the last entry it includes).
    pub index: LogIndex,
    /// The term of the entry at `index`.
    pub last_term: Term,
}

impl Transfer {
    fn chunk(&self, offset: u64, data: Vec<u8>) -> PeerEnvelope {
        PeerEnvelope {
            from: self.from,
            to: self.to,
            term: self.term,
            message: PeerMessage::SnapshotChunk(SnapshotChunk {
                last_index: self.index,
                last_term: self.last_term,
                offset,
                data,
            }),
        }
    }
}

/// Why a snapshot transfer ended without a seal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    /// The encoder failed, or stopped without finishing.
    #[error("snapshot could not be encoded: {0}")]
    Encode(String),
    /// The ElectionActor closed the acknowledgement queue: the transfer was dropped.
    #[error("snapshot transfer cancelled")]
    Cancelled,
    /// No new byte was acknowledged for this long (the pacing's stall limit).
    #[error("no snapshot bytes acknowledged for {0:?}")]
    Stalled(Duration),
    /// An acknowledgement went back below an earlier one: the follower lost its staged bytes.
    #[error("the follower no longer holds what it acknowledged (restarted?)")]
    FollowerRestarted,
}

/// Sends the pieces of one snapshot to `transfer.to`, keeping at most
/// [`WINDOW_BYTES`] unacknowledged; `acks` brings the follower's
/// acknowledgements (how many bytes it holds). Ends with the seal once every
/// byte is acknowledged, or with an error; closing `acks` cancels it.
pub async fn stream_snapshot(
    transfer: Transfer,
    transport: Arc<dyn PeerTransport>,
    mut pieces: mpsc::Receiver<Piece>,
    mut acks: mpsc::Receiver<u64>,
    pacing: Pacing,
) -> Result<Seal, TransferError> {
    // Sent and not yet acknowledged: (offset, bytes), in order.
    let mut unacked: std::collections::VecDeque<(u64, Vec<u8>)> = Default::default();
    let mut unacked_bytes = 0usize;
    let mut sent_end = 0u64;
    let mut acked = 0u64;
    let mut seal: Option<Seal> = None;
    let mut last_progress = Instant::now();
    let mut resend_at = Instant::now() + pacing.resend_after;
    // Resends since the last progress: each waits twice as long, so a stalled
    // link queues a few copies of the window, not one per second.
    let mut resends = 0u32;
    loop {
        if let Some(seal) = seal {
            if acked >= seal.bytes {
                return Ok(seal);
            }
        }
        let window_open = seal.is_none() && unacked_bytes < WINDOW_BYTES;
        tokio::select! {
            piece = pieces.recv(), if window_open => match piece {
                Some(Piece::Data(data)) => {
                    transport.send(transfer.chunk(sent_end, data.clone()));
                    let len = data.len();
                    unacked.push_back((sent_end, data));
                    unacked_bytes += len;
                    sent_end = sent_end.saturating_add(len as u64);
                    resend_at = Instant::now() + pacing.resend_after;
                }
                Some(Piece::End(end)) => seal = Some(end),
                Some(Piece::Failed(e)) => return Err(TransferError::Encode(e)),
                None => return Err(TransferError::Encode("the encoder stopped".into())),
            },
            ack = acks.recv() => {
                let Some(next_offset) = ack else {
                    return Err(TransferError::Cancelled);
                };
                if next_offset < acked {
                    return Err(TransferError::FollowerRestarted);
                }
                if next_offset > acked {
                    acked = next_offset.min(sent_end);
                    last_progress = Instant::now();
                    resends = 0;
                    resend_at = last_progress + pacing.resend_after;
                    while unacked.front().is_some_and(|(offset, data)| offset + data.len() as u64 <= acked) {
                        if let Some((_, data)) = unacked.pop_front() {
                            unacked_bytes -= data.len();
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(resend_at) => {
                if last_progress.elapsed() >= pacing.stall_limit {
                    return Err(TransferError::Stalled(pacing.stall_limit));
                }
                // Lost on a link that went down, or dropped from a full queue: again.
                for (offset, data) in &unacked {
                    transport.send(transfer.chunk(*offset, data.clone()));
                }
                resends = resends.saturating_add(1);
                resend_at = Instant::now() + pacing.resend_wait(resends);
            }
        }
    }
}

/// A snapshot a follower is receiving: the chunks so far, in a staging file.
#[derive(Debug)]
pub struct Incoming {
    /// The transfer the staged bytes belong to; chunks of any other are not staged here.
    pub transfer: Transfer,
    path: PathBuf,
    file: File,
    /// What is staged: its length is the offset expected next.
    staged: SealSum,
    /// The seal came and the file is being decoded.
    pub decoding: bool,
}

impl Incoming {
    /// Starts staging a new snapshot in a new file in `dir`.
    pub fn start(dir: &Path, transfer: Transfer) -> std::io::Result<Incoming> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{STAGING_PREFIX}{n}{STAGING_SUFFIX}"));
        let file = File::options().read(true).write(true).create_new(true).open(&path)?;
        Ok(Incoming {
            transfer,
            path,
            file,
            staged: SealSum::default(),
            decoding: false,
        })
    }

    /// Takes the chunk at `offset` if it is the one expected next (others are
    /// repeats, or come after a lost one); returns how many bytes it holds.
    pub fn accept(&mut self, offset: u64, data: &[u8]) -> std::io::Result<u64> {
        let end = self.held().saturating_add(data.len() as u64);
        if end > protocol::MAX_SNAPSHOT_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a snapshot past {} bytes", protocol::MAX_SNAPSHOT_BYTES),
            ));
        }
        if offset == self.held() && !self.decoding {
            self.file.write_all(data)?;
            self.staged.update(data);
        }
        Ok(self.held())
    }

    /// How many bytes are staged: also the offset of the next chunk expected.
    pub fn held(&self) -> u64 {
        self.staged.bytes
    }

    /// Whether what arrived is the whole snapshot the seal describes.
    pub fn matches(&self, seal: Seal) -> bool {
        self.staged.seal() == seal
    }

    /// The staged bytes, from their start, for decoding (the same open file:
    /// nothing is reopened by name). Nothing more is appended after this.
    pub fn open(&mut self) -> std::io::Result<File> {
        self.decoding = true;
        self.file.flush()?;
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Scratch only; one left by a crash is removed at the next start.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes staging files left by an earlier run (a crash, or an exit that
/// ran no destructors): they are scratch, and can be large.
pub fn discard_staged(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(STAGING_PREFIX) && name.ends_with(STAGING_SUFFIX) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Counts and checksums what the decoder reads, so the bytes decoded are
/// the bytes the seal describes (not only the bytes that were staged).
struct Checked<R> {
    inner: R,
    sum: SealSum,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sum.update(&buf[..n]);
        Ok(n)
    }
}

/// Decodes staged snapshot bytes on a thread of its own, checking them
/// against `seal` as they are read; `done` gets the result there.
pub fn spawn_decoder(
    file: File,
    seal: Seal,
    thread_name: String,
    done: impl FnOnce(Result<DecodedSnapshot, String>) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || done(decode(file, seal)))?;
    Ok(())
}

fn decode(file: File, seal: Seal) -> Result<DecodedSnapshot, String> {
    let mut reader = Checked {
        inner: BufReader::with_capacity(1 << 20, file),
        sum: SealSum::default(),
    };
    let (state, stored) = StateMachine::read_snapshot(&mut reader).map_err(|e| e.to_string())?;
    // Bytes after the encoded state would be garbage the seal still covers.
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| e.to_string())?;
    let read = reader.sum.seal();
    if read != seal {
        return Err(format!("read back {read:?}, but the seal says {seal:?}"));
    }
    Ok(DecodedSnapshot { state, stored })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use protocol::{Command, Entry};

    use super::*;

    /// Delivers to a follower's staging file what the leader sends, except
    /// the chunks `drop` picks, and acknowledges the rest.
    struct Wire {
        sent: Mutex<Vec<PeerEnvelope>>,
    }

    impl PeerTransport for Wire {
        fn send(&self, envelope: PeerEnvelope) {
            self.sent.lock().unwrap().push(envelope);
        }
    }

    const QUICK: Pacing = Pacing {
        resend_after: Duration::from_millis(50),
        stall_limit: Duration::from_millis(500),
    };

    fn state_with(keys: usize) -> StateMachine {
        let mut state = StateMachine::default();
        for i in 1..=keys {
            state.apply(&Entry {
                index: i as u64,
                term: 2,
                request_id: 0,
                command: Command::Put {
                    key: format!("key{i:06}"),
                    value: "v".repeat(256),
                    session: None,
                },
            });
        }
        state
    }

    /// A leader's side of a transfer of `keys` keys: encoding has started.
    fn leader_with(keys: usize) -> (Transfer, Arc<Wire>, mpsc::Receiver<Piece>) {
        let state = state_with(keys);
        let transfer = Transfer {
            from: 1,
            to: 2,
            term: 3,
            index: state.applied_index(),
            last_term: 2,
        };
        let wire = Arc::new(Wire {
            sent: Mutex::new(Vec::new()),
        });
        let pieces = spawn_encoder(state.snapshot_source(), "encode-test".into()).unwrap();
        (transfer, wire, pieces)
    }

    /// Streams a snapshot of `keys` keys to a staging file, losing every
    /// chunk for which `lose` says so on its first sending; returns what the
    /// follower decoded.
    async fn transfer(keys: usize, lose: impl Fn(usize) -> bool) -> DecodedSnapshot {
        let dir = tempfile::tempdir().unwrap();
        let (transfer, wire, pieces) = leader_with(keys);
        let (ack_tx, acks) = mpsc::channel(64);
        let mut sender = Box::pin(stream_snapshot(transfer, wire.clone(), pieces, acks, QUICK));
        let mut incoming = Incoming::start(dir.path(), transfer).unwrap();
        let mut seen = 0usize;
        let seal = loop {
            tokio::select! {
                result = &mut sender => break result.unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            let sent: Vec<PeerEnvelope> = std::mem::take(&mut *wire.sent.lock().unwrap());
            for envelope in sent {
                let PeerMessage::SnapshotChunk(SnapshotChunk { offset, data, .. }) = envelope.message else {
                    panic!("not a chunk: {envelope:?}");
                };
                assert!(data.len() <= SNAPSHOT_CHUNK_BYTES);
                seen += 1;
                if lose(seen) {
                    continue;
                }
                let held = incoming.accept(offset, &data).unwrap();
                ack_tx.send(held).await.unwrap();
            }
        };
        assert!(incoming.matches(seal), "{seal:?} but {} bytes held", incoming.held());
        let mut wrong = seal;
        wrong.checksum ^= 1;
        assert!(!incoming.matches(wrong));
        let file = incoming.open().unwrap();
        assert_eq!(
            decode(file.try_clone().unwrap(), wrong).map(|_| ()),
            Err(format!("read back {seal:?}, but the seal says {wrong:?}"))
        );
        let mut file = file;
        file.seek(SeekFrom::Start(0)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        spawn_decoder(file, seal, "decode-test".into(), move |r| tx.send(r).unwrap()).unwrap();
        rx.recv().unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_state_of_many_chunks_arrives_whole() {
        // 20,000 keys of 256 bytes: about 5 MiB, more than one window.
        let decoded = transfer(20_000, |_| false).await;
        assert_eq!(decoded.state.len(), 20_000);
        assert_eq!(decoded.stored.data.len(), 20_000);
        assert_eq!(decoded.state.applied_index(), 20_000);
        assert_eq!(decoded.state.get("key012345"), Some("v".repeat(256)));
    }

    #[tokio::test]
    async fn lost_chunks_are_sent_again() {
        // The 2nd and 5th chunks sent are lost; everything after them in the
        // window is refused (out of order) until they come again.
        let decoded = transfer(20_000, |n| n == 2 || n == 5).await;
        assert_eq!(decoded.state.len(), 20_000);
        assert_eq!(decoded.state.get("key019999"), Some("v".repeat(256)));
    }

    #[tokio::test]
    async fn a_follower_that_never_answers_stalls_the_transfer() {
        let (transfer, wire, pieces) = leader_with(10);
        let (_ack_tx, acks) = mpsc::channel(1);
        let result = stream_snapshot(transfer, wire.clone(), pieces, acks, QUICK).await;
        assert_eq!(result, Err(TransferError::Stalled(QUICK.stall_limit)));
        // The one chunk went out again at every resend, each after twice the
        // wait of the one before: at 0, 50, 150 and 350 ms of the 500.
        let sent = wire.sent.lock().unwrap().len();
        assert!((3..=5).contains(&sent), "{sent} sendings");
    }

    #[tokio::test]
    async fn an_acknowledgement_going_backwards_ends_the_transfer() {
        let (transfer, wire, pieces) = leader_with(20_000);
        let (ack_tx, acks) = mpsc::channel(4);
        let sender = tokio::spawn(stream_snapshot(transfer, wire.clone(), pieces, acks, QUICK));
        while wire.sent.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ack_tx.send(SNAPSHOT_CHUNK_BYTES as u64).await.unwrap();
        ack_tx.send(0).await.unwrap();
        assert_eq!(sender.await.unwrap(), Err(TransferError::FollowerRestarted));
    }

    #[test]
    fn staging_takes_only_the_next_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let transfer = Transfer {
            from: 1,
            to: 2,
            term: 1,
            index: 5,
            last_term: 1,
        };
        let mut incoming = Incoming::start(dir.path(), transfer).unwrap();
        assert_eq!(incoming.accept(3, b"late").unwrap(), 0);
        assert_eq!(incoming.accept(0, b"abc").unwrap(), 3);
        assert_eq!(incoming.accept(0, b"abc").unwrap(), 3, "a repeat is not appended twice");
        assert_eq!(incoming.accept(3, b"de").unwrap(), 5);
        let seal = Seal {
            bytes: 5,
            checksum: crc32fast::hash(b"abcde"),
        };
        assert!(incoming.matches(seal));
        let path = incoming.path.clone();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcde");
        // A new transfer replacing this one keeps its own file.
        let next = Incoming::start(dir.path(), Transfer { term: 2, ..transfer }).unwrap();
        drop(incoming);
        assert!(!path.exists(), "the staging file is scratch");
        assert!(
            next.path.exists(),
            "dropping the old transfer removed the new one's file"
        );
        // What a crash leaves behind goes at the next start.
        std::mem::forget(next);
        std::fs::write(dir.path().join("unrelated"), b"kept").unwrap();
        assert_eq!(discard_staged(dir.path()).unwrap(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
