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
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocol::{LogIndex, NodeId, PeerEnvelope, PeerMessage, Term, SNAPSHOT_CHUNK_BYTES};
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
/// Name of the follower's staging file, in its data folder.
const STAGING_FILE: &str = "snapshot.incoming";

/// A snapshot decoded off the actor thread: the state machine and the state
/// the store must hold (sharing one key-value map).
#[derive(Debug)]
pub struct DecodedSnapshot {
    pub state: StateMachine,
    pub stored: StoredState,
}

/// The length and CRC-32 of a whole snapshot, as the seal carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    pub bytes: u64,
    pub checksum: u32,
}

/// What the encoder thread hands the sending task.
#[derive(Debug)]
pub enum Piece {
    Data(Vec<u8>),
    End(Seal),
    Failed(String),
}

/// Cuts what the encoder writes into pieces; blocks when the sender's queue is full.
struct PieceWriter {
    pending: Vec<u8>,
    pieces: mpsc::Sender<Piece>,
    bytes: u64,
    hasher: crc32fast::Hasher,
}

impl PieceWriter {
    fn emit(&mut self, piece: Vec<u8>) -> std::io::Result<()> {
        self.hasher.update(&piece);
        self.bytes = self.bytes.saturating_add(piece.len() as u64);
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
            bytes: 0,
            hasher: crc32fast::Hasher::new(),
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
            Ok(()) => Piece::End(Seal {
                bytes: writer.bytes,
                checksum: writer.hasher.finalize(),
            }),
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
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub index: LogIndex,
    pub last_term: Term,
}

impl Transfer {
    fn chunk(&self, offset: u64, data: Vec<u8>) -> PeerEnvelope {
        PeerEnvelope {
            from: self.from,
            to: self.to,
            term: self.term,
            message: PeerMessage::SnapshotChunk {
                last_index: self.index,
                last_term: self.last_term,
                offset,
                data,
            },
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    #[error("snapshot could not be encoded: {0}")]
    Encode(String),
    #[error("snapshot transfer cancelled")]
    Cancelled,
    #[error("no snapshot bytes acknowledged for {0:?}")]
    Stalled(Duration),
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
                    unacked_bytes += data.len();
                    unacked.push_back((sent_end, data.clone()));
                    sent_end = sent_end.saturating_add(data.len() as u64);
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
                resend_at = Instant::now() + pacing.resend_after;
            }
        }
    }
}

/// A snapshot a follower is receiving: the chunks so far, in a staging file.
#[derive(Debug)]
pub struct Incoming {
    pub transfer: Transfer,
    path: PathBuf,
    file: File,
    next_offset: u64,
    hasher: crc32fast::Hasher,
    /// The seal came and the file is being decoded.
    pub decoding: bool,
}

impl Incoming {
    /// Starts staging a new snapshot in `dir` (replacing any earlier one: a
    /// new file, so that a decoder still reading the old one is undisturbed).
    pub fn start(dir: &Path, transfer: Transfer) -> std::io::Result<Incoming> {
        let path = dir.join(STAGING_FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = File::create_new(&path)?;
        Ok(Incoming {
            transfer,
            path,
            file,
            next_offset: 0,
            hasher: crc32fast::Hasher::new(),
            decoding: false,
        })
    }

    /// Takes the chunk at `offset` if it is the one expected next (others are
    /// repeats, or come after a lost one); returns how many bytes it holds.
    pub fn accept(&mut self, offset: u64, data: &[u8]) -> std::io::Result<u64> {
        if offset == self.next_offset && !self.decoding {
            self.file.write_all(data)?;
            self.hasher.update(data);
            self.next_offset += data.len() as u64;
        }
        Ok(self.next_offset)
    }

    pub fn held(&self) -> u64 {
        self.next_offset
    }

    /// Whether what arrived is the whole snapshot the seal describes.
    pub fn matches(&self, seal: Seal) -> bool {
        self.next_offset == seal.bytes && self.hasher.clone().finalize() == seal.checksum
    }

    /// Opens the staged bytes for decoding.
    pub fn open(&mut self) -> std::io::Result<File> {
        self.file.flush()?;
        File::open(&self.path)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Scratch only; a leftover is removed by the next transfer anyway.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Decodes staged snapshot bytes on a thread of its own; `done` gets the result there.
pub fn spawn_decoder(
    file: File,
    thread_name: String,
    done: impl FnOnce(Result<DecodedSnapshot, String>) + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new().name(thread_name).spawn(move || {
        let decoded = StateMachine::read_snapshot(BufReader::with_capacity(1 << 20, file))
            .map(|(state, stored)| DecodedSnapshot { state, stored })
            .map_err(|e| e.to_string());
        done(decoded);
    })?;
    Ok(())
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
                let PeerMessage::SnapshotChunk { offset, data, .. } = envelope.message else {
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
        let (tx, rx) = std::sync::mpsc::channel();
        spawn_decoder(file, "decode-test".into(), move |r| tx.send(r).unwrap()).unwrap();
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
        // The one chunk went out again at every resend.
        assert!(
            wire.sent.lock().unwrap().len() >= 5,
            "{}",
            wire.sent.lock().unwrap().len()
        );
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
        let path = dir.path().join(STAGING_FILE);
        assert_eq!(std::fs::read(&path).unwrap(), b"abcde");
        drop(incoming);
        assert!(!path.exists(), "the staging file is scratch");
    }
}
