//! Framing and encoding: one MessagePack value per length-delimited frame.

use bytes::{Buf, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Errors of encoding or decoding one message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A frame did not hold a valid message of the expected type.
    #[error("malformed message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A message could not be encoded.
    #[error("message could not be encoded: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// The length-delimited codec every connection uses: a 4-byte big-endian
/// length, then that many bytes. Frames longer than `max_frame` are an error
/// before any of their body is buffered.
pub fn frame_codec(max_frame: usize) -> FrameCodec {
    FrameCodec {
        inner: LengthDelimitedCodec::builder()
            .length_field_length(4)
            .big_endian()
            .max_frame_length(max_frame)
            .new_codec(),
        max_frame,
    }
}

/// Length-delimited frames whose announced length reserves nothing: unlike
/// `LengthDelimitedCodec`, which reserves a whole frame as soon as its header
/// arrives, the buffer here grows only with the bytes that actually arrive.
/// So a peer that sends a header announcing 255 MiB, on any number of
/// connections, costs a few bytes each, not 255 MiB each.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max_frame: usize,
}

/// Bytes of the length header.
const HEADER: usize = 4;

impl FrameCodec {
    /// The largest frame payload, in bytes (the 4-byte header not counted), that
    /// this codec decodes or encodes.
    pub fn max_frame_length(&self) -> usize {
        self.max_frame
    }

    /// Changes the largest frame payload accepted (nodes raise it after the handshake).
    pub fn set_max_frame_length(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
        self.inner.set_max_frame_length(max_frame);
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        let Some(header) = src.get(..HEADER) else {
            return Ok(None);
        };
        let mut length = [0u8; HEADER];
        length.copy_from_slice(header);
        let length = u32::from_be_bytes(length) as usize;
        if length > self.max_frame {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame of {length} bytes is over the limit of {}", self.max_frame),
            ));
        }
        if src.len() - HEADER < length {
            return Ok(None); // wait for the body, reserving nothing for it
        }
        src.advance(HEADER);
        Ok(Some(src.split_to(length)))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        self.inner.encode(frame, dst)
    }
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
    use crate::limits::{DEFAULT_MAX_PEER_FRAME, MAX_CLIENT_FRAME};
    use crate::{ClientRequest, Operation, PeerEnvelope};

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
    fn an_announced_length_reserves_nothing() {
        let mut codec = frame_codec(DEFAULT_MAX_PEER_FRAME);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((DEFAULT_MAX_PEER_FRAME as u32 - 1).to_be_bytes()));
        buf.extend_from_slice(&[7u8; 100]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() < 64 * 1024, "reserved {} bytes", buf.capacity());
        // Frames split at every byte still come out whole, one by one.
        let mut wire = BytesMut::new();
        for payload in [&b"abc"[..], b"", b"defgh"] {
            codec.encode(Bytes::copy_from_slice(payload), &mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[byte]);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                frames.push(frame.to_vec());
            }
        }
        assert_eq!(frames, vec![b"abc".to_vec(), vec![], b"defgh".to_vec()]);
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
