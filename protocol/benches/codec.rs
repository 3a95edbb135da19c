//! The per-request cost of the wire format: encoding a client request into a
//! length-delimited frame, and decoding it back.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use protocol::limits::MAX_CLIENT_FRAME;
use protocol::{ClientRequest, Operation, Session};
use std::hint::black_box;
use tokio_util::codec::{Decoder, Encoder};

fn put_request() -> ClientRequest {
    ClientRequest {
        id: 42,
        op: Operation::Put {
            key: "k000000000012345".into(),
            value: "v".repeat(256),
            session: Some(Session {
                client_id: 7,
                seq: 1000,
                acked_below: 990,
                floor: Some(12_345),
            }),
        },
    }
}

fn codec(c: &mut Criterion) {
    let request = put_request();
    let frame = protocol::encode(&request).expect("encodes");
    let mut group = c.benchmark_group("client frame");
    group.throughput(Throughput::Bytes(frame.len() as u64));

    group.bench_function("encode put (256-byte value) into a frame", |b| {
        let mut codec = protocol::frame_codec(MAX_CLIENT_FRAME);
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            let payload = protocol::encode(black_box(&request)).expect("encodes");
            codec.encode(payload, &mut out).expect("fits");
        })
    });

    let mut framed = BytesMut::new();
    protocol::frame_codec(MAX_CLIENT_FRAME)
        .encode(frame, &mut framed)
        .expect("fits");
    group.bench_function("decode put (256-byte value) from a frame", |b| {
        let mut codec = protocol::frame_codec(MAX_CLIENT_FRAME);
        b.iter(|| {
            let mut input = framed.clone();
            let payload = codec.decode(&mut input).expect("valid").expect("whole frame");
            let decoded: ClientRequest = protocol::decode(black_box(&payload)).expect("decodes");
            black_box(decoded);
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
