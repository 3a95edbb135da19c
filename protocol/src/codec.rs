//! Framing and encoding: one MessagePack value per length-delimited frame.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

/// The largest frame a handshake may use; anything longer is hostile.
pub const MAX_HANDSHAKE_FRAME: usize = 4 * 1024;
/// The largest client frame: a 128-byte key and a 2048-byte value fit many times over,
/// while a client cannot make a node buffer more than this per connection.
pub const MAX_CLIENT_FRAME: usize = 64 * 1024;
/// Default largest peer frame (a batch of entries or a whole snapshot).
pub const DEFAULT_MAX_PEER_FRAME: usize = 256 * 1024 * 1024;

/// Errors of encoding or decoding one message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("message could not be encoded: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// The length-delimited codec every connection uses: a 4-byte big-endian
/// length, then that many bytes. Frames longer than `max_frame` are an error
/// before any of their body is buffered.
pub fn frame_codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame)
        .new_codec()
}

/// Encodes a message as a MessagePack map (field names kept, so other
/// languages can read it without knowing field order).
pub fn encode<T: Serialize>(message: &T) -> Result<Bytes, WireError> {
    Ok(Bytes::from(rmp_serde::to_vec_named(message)?))
}

/// Decodes one message from one frame's bytes. Never panics; allocation is
/// bounded by the frame's length.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, WireError> {
    Ok(rmp_serde::from_slice(frame)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientRequest, Operation, PeerEnvelope};
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    #[test]
    fn request_round_trips_through_a_frame() {
        let request = ClientRequest {
            id: 7,
            op: Operation::Get { key: "k".into() },
        };
        let mut codec = frame_codec(MAX_CLIENT_FRAME);
        let mut buf = BytesMut::new();
        codec.encode(encode(&request).unwrap(), &mut buf).unwrap();
        let frame = codec.decode(&mut buf).unwrap().unwrap();
        let back: ClientRequest = decode(&frame).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn oversized_frame_is_rejected_from_its_header() {
        let mut codec = frame_codec(MAX_CLIENT_FRAME);
        let mut buf = BytesMut::from(&((MAX_CLIENT_FRAME as u32 + 1).to_be_bytes())[..]);
        assert!(codec.decode(&mut buf).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep; the fuzz target does the real search.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..512usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode::<ClientRequest>(&bytes);
            let _ = decode::<PeerEnvelope>(&bytes);
        }
    }
}
