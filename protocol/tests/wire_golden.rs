//! The wire bytes of every peer message, pinned: a change of the Rust types
//! (renaming fields, turning variants into named structs) must leave these
//! bytes as they are, or it is a protocol change and needs a new
//! `PROTOCOL_VERSION`. Entries are also what the write-ahead log stores.
//!
//! To see the bytes of a new message: `cargo test -p protocol --test
//! wire_golden -- --nocapture` prints every sample's hex on a mismatch.

use protocol::{
    encode, AppendEntries, AppendResponse, Command, Entry, InstallSnapshot, PeerEnvelope, PeerMessage, PreVoteResponse,
    Session, SnapshotChunk, SnapshotChunkAck, SnapshotResponse, TermProbe, TermProbeReply, VoteRequest, VoteResponse,
};

fn entry(index: u64, command: Command) -> Entry {
    Entry {
        index,
        term: 3,
        request_id: 77,
        command,
    }
}

fn envelope(message: PeerMessage) -> PeerEnvelope {
    PeerEnvelope {
        from: 1,
        to: 2,
        term: 9,
        message,
    }
}

/// One sample of each message and command, with every field set.
fn samples() -> Vec<(&'static str, PeerEnvelope)> {
    let session = Some(Session {
        client_id: 0xfeed,
        seq: 5,
        acked_below: 4,
        floor: Some(12),
    });
    vec![
        (
            "RequestVote",
            envelope(PeerMessage::RequestVote(VoteRequest {
                last_log_index: 40,
                last_log_term: 8,
            })),
        ),
        (
            "VoteResponse",
            envelope(PeerMessage::VoteResponse(VoteResponse { granted: true })),
        ),
        (
            "PreVote",
            envelope(PeerMessage::PreVote(VoteRequest {
                last_log_index: 40,
                last_log_term: 8,
            })),
        ),
        (
            "PreVoteResponse",
            envelope(PeerMessage::PreVoteResponse(PreVoteResponse {
                term: 10,
                granted: false,
            })),
        ),
        (
            "AppendEntries",
            envelope(PeerMessage::AppendEntries(AppendEntries {
                prev_log_index: 40,
                prev_log_term: 8,
                entries: vec![
                    entry(41, Command::Noop),
                    entry(
                        42,
                        Command::Put {
                            key: "k".into(),
                            value: "v".into(),
                            session,
                        },
                    ),
                    entry(
                        43,
                        Command::Delete {
                            key: "k".into(),
                            session: None,
                        },
                    ),
                ],
                leader_commit: 39,
                read_round: 6,
                trim_to: 20,
                follower_incarnation: 2,
            })),
        ),
        (
            "AppendResponse",
            envelope(PeerMessage::AppendResponse(AppendResponse {
                success: true,
                match_index: 43,
                hint: 0,
                read_round: 6,
                flushed_index: 30,
                incarnation: 2,
            })),
        ),
        (
            "SnapshotChunk",
            envelope(PeerMessage::SnapshotChunk(SnapshotChunk {
                last_index: 100,
                last_term: 8,
                offset: 1 << 20,
                data: vec![0, 1, 2, 255],
            })),
        ),
        (
            "SnapshotChunkAck",
            envelope(PeerMessage::SnapshotChunkAck(SnapshotChunkAck {
                last_index: 100,
                last_term: 8,
                next_offset: (1 << 20) + 4,
            })),
        ),
        (
            "InstallSnapshot",
            envelope(PeerMessage::InstallSnapshot(InstallSnapshot {
                last_index: 100,
                last_term: 8,
                bytes: (1 << 20) + 4,
                checksum: 0xdead_beef,
                read_round: 7,
            })),
        ),
        (
            "SnapshotResponse",
            envelope(PeerMessage::SnapshotResponse(SnapshotResponse {
                last_index: 100,
                read_round: 7,
                incarnation: 2,
            })),
        ),
        (
            "TermProbe",
            envelope(PeerMessage::TermProbe(TermProbe {
                incarnation: 5,
                round: 3,
            })),
        ),
        (
            "TermProbeReply",
            envelope(PeerMessage::TermProbeReply(TermProbeReply {
                incarnation: 5,
                round: 3,
                recovering: true,
            })),
        ),
    ]
}

/// The bytes as the protocol-3 types encoded them.
#[rustfmt::skip]
const GOLDEN: &[(&str, &str)] = &[
    ("RequestVote", "84a466726f6d01a2746f02a47465726d09a76d65737361676581ab52657175657374566f746582ae6c6173745f6c6f675f696e64657828ad6c6173745f6c6f675f7465726d08"),
    ("VoteResponse", "84a466726f6d01a2746f02a47465726d09a76d65737361676581ac566f7465526573706f6e736581a76772616e746564c3"),
    ("PreVote", "84a466726f6d01a2746f02a47465726d09a76d65737361676581a7507265566f746582ae6c6173745f6c6f675f696e64657828ad6c6173745f6c6f675f7465726d08"),
    ("PreVoteResponse", "84a466726f6d01a2746f02a47465726d09a76d65737361676581af507265566f7465526573706f6e736582a47465726d0aa76772616e746564c2"),
    ("AppendEntries", "84a466726f6d01a2746f02a47465726d09a76d65737361676581ad417070656e64456e747269657387ae707265765f6c6f675f696e64657828ad707265765f6c6f675f7465726d08a7656e74726965739384a5696e64657829a47465726d03aa726571756573745f69644da7636f6d6d616e64a44e6f6f7084a5696e6465782aa47465726d03aa726571756573745f69644da7636f6d6d616e6481a350757483a36b6579a16ba576616c7565a176a773657373696f6e84a9636c69656e745f6964cdfeeda373657105ab61636b65645f62656c6f7704a5666c6f6f720c84a5696e6465782ba47465726d03aa726571756573745f69644da7636f6d6d616e6481a644656c65746582a36b6579a16ba773657373696f6ec0ad6c65616465725f636f6d6d697427aa726561645f726f756e6406a77472696d5f746f14b4666f6c6c6f7765725f696e6361726e6174696f6e02"),
    ("AppendResponse", "84a466726f6d01a2746f02a47465726d09a76d65737361676581ae417070656e64526573706f6e736586a773756363657373c3ab6d617463685f696e6465782ba468696e7400aa726561645f726f756e6406ad666c75736865645f696e6465781eab696e6361726e6174696f6e02"),
    ("SnapshotChunk", "84a466726f6d01a2746f02a47465726d09a76d65737361676581ad536e617073686f744368756e6b84aa6c6173745f696e64657864a96c6173745f7465726d08a66f6666736574ce00100000a464617461c404000102ff"),
    ("SnapshotChunkAck", "84a466726f6d01a2746f02a47465726d09a76d65737361676581b0536e617073686f744368756e6b41636b83aa6c6173745f696e64657864a96c6173745f7465726d08ab6e6578745f6f6666736574ce00100004"),
    ("InstallSnapshot", "84a466726f6d01a2746f02a47465726d09a76d65737361676581af496e7374616c6c536e617073686f7485aa6c6173745f696e64657864a96c6173745f7465726d08a56279746573ce00100004a8636865636b73756dcedeadbeefaa726561645f726f756e6407"),
    ("SnapshotResponse", "84a466726f6d01a2746f02a47465726d09a76d65737361676581b0536e617073686f74526573706f6e736583aa6c6173745f696e64657864aa726561645f726f756e6407ab696e6361726e6174696f6e02"),
    ("TermProbe", "84a466726f6d01a2746f02a47465726d09a76d65737361676581a95465726d50726f626582ab696e6361726e6174696f6e05a5726f756e6403"),
    ("TermProbeReply", "84a466726f6d01a2746f02a47465726d09a76d65737361676581ae5465726d50726f62655265706c7983ab696e6361726e6174696f6e05a5726f756e6403aa7265636f766572696e67c3"),
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_peer_message_keeps_its_wire_bytes() {
    let mut actual = Vec::new();
    for (name, sample) in samples() {
        let bytes = encode(&sample).expect("a sample encodes");
        let decoded: PeerEnvelope = protocol::decode(&bytes).expect("a sample decodes");
        assert_eq!(decoded, sample, "{name} does not round-trip");
        actual.push((name, hex(&bytes)));
    }
    let expected: Vec<(&str, String)> = GOLDEN.iter().map(|(n, h)| (*n, h.to_string())).collect();
    if actual != expected {
        for (name, bytes) in &actual {
            println!("    (\"{name}\", \"{bytes}\"),");
        }
        panic!("the wire bytes of a peer message changed (new bytes printed above)");
    }
}

/// A peer of an earlier version sends no incarnation fields: such a frame
/// still decodes, with the incarnations 0 ("unknown"). The frames are the
/// golden ones with the field cut out and the map's length one less.
#[test]
fn frames_without_incarnations_decode_with_zero() {
    let golden = |name: &str| GOLDEN.iter().find(|(n, _)| *n == name).expect("a golden frame").1;
    let without = |name: &str, map_header: (&str, &str), field: &str| {
        let hex = golden(name);
        assert!(hex.ends_with(field), "{name} ends with its incarnation");
        let hex = hex[..hex.len() - field.len()].replacen(map_header.0, map_header.1, 1);
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        protocol::decode::<PeerEnvelope>(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let samples: std::collections::HashMap<&str, PeerEnvelope> = samples().into_iter().collect();
    let incarnation = "ab696e6361726e6174696f6e02"; // "incarnation": 2
    let follower_incarnation = "b4666f6c6c6f7765725f696e6361726e6174696f6e02"; // "follower_incarnation": 2

    let decoded = without(
        "AppendEntries",
        ("ad417070656e64456e747269657387", "ad417070656e64456e747269657386"),
        follower_incarnation,
    );
    let PeerMessage::AppendEntries(mut expected) = samples["AppendEntries"].message.clone() else {
        unreachable!()
    };
    expected.follower_incarnation = 0;
    assert_eq!(decoded.message, PeerMessage::AppendEntries(expected));

    let decoded = without(
        "AppendResponse",
        ("ae417070656e64526573706f6e736586", "ae417070656e64526573706f6e736585"),
        incarnation,
    );
    let PeerMessage::AppendResponse(mut expected) = samples["AppendResponse"].message.clone() else {
        unreachable!()
    };
    expected.incarnation = 0;
    assert_eq!(decoded.message, PeerMessage::AppendResponse(expected));

    let decoded = without(
        "SnapshotResponse",
        (
            "b0536e617073686f74526573706f6e736583",
            "b0536e617073686f74526573706f6e736582",
        ),
        incarnation,
    );
    let PeerMessage::SnapshotResponse(mut expected) = samples["SnapshotResponse"].message.clone() else {
        unreachable!()
    };
    expected.incarnation = 0;
    assert_eq!(decoded.message, PeerMessage::SnapshotResponse(expected));
}
