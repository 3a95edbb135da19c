//! Arbitrary bytes into the frame decoder and the message decoders of both
//! ports: never a panic, never a buffer beyond the frame limit, always progress.

use bytes::BytesMut;
use proptest::prelude::*;
use protocol::limits::{MAX_CLIENT_FRAME, MAX_HANDSHAKE_FRAME};
use protocol::{decode, frame_codec, ClientRequest, ClientResponse, Hello, HelloReply, PeerEnvelope};
use tokio_util::codec::Decoder;

/// Feeds `bytes` to a decoder in `chunk`-sized pieces, as a socket would, and
/// decodes every complete frame as each message type a node or client reads.
fn feed(bytes: &[u8], chunk: usize, max_frame: usize) {
    let mut codec = frame_codec(max_frame);
    let mut buffer = BytesMut::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max_frame);
                    let _ = decode::<Hello>(&frame);
                    let _ = decode::<HelloReply>(&frame);
                    let _ = decode::<ClientRequest>(&frame);
                    let _ = decode::<ClientResponse>(&frame);
                    let _ = decode::<PeerEnvelope>(&frame);
                }
                Ok(None) => break,
                // A broken stream: the connection is closed here, nothing more is read.
                Err(_) => return,
            }
        }
        // Only what the socket delivered is buffered (plus the reservation for
        // one frame of at most the limit), never what a header merely claims.
        assert!(
            buffer.capacity() <= max_frame + 4 + bytes.len(),
            "capacity {}",
            buffer.capacity()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
        feed(&bytes, chunk, MAX_HANDSHAKE_FRAME);
        feed(&bytes, chunk, MAX_CLIENT_FRAME);
    }

    #[test]
    fn framed_garbage_never_panics(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
        let mut bytes = Vec::new();
        for payload in &payloads {
            bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            bytes.extend_from_slice(payload);
        }
        feed(&bytes, 7, MAX_CLIENT_FRAME);
    }
}

#[test]
fn a_header_beyond_the_limit_is_refused_before_any_buffering() {
    let mut codec = frame_codec(MAX_CLIENT_FRAME);
    let mut buffer = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
    assert!(codec.decode(&mut buffer).is_err());
    assert!(buffer.capacity() < 1024, "nothing was reserved for the claimed 4 GiB");
}
