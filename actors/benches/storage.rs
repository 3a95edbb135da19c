//! The hot pieces of a write on one node: appending entries to the
//! write-ahead log (with and without the fsync that group commit shares), and
//! applying an entry to the state machine.

use std::hint::black_box;

use actors::state::StateMachine;
use actors::storage::{StoredState, Wal, WalRecord};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use protocol::{Command, Entry, Session};

fn put(index: u64, key: u64) -> Entry {
    Entry {
        index,
        term: 1,
        request_id: index,
        command: Command::Put {
            key: format!("k{key:015}"),
            value: "v".repeat(256),
            session: Some(Session {
                client_id: key % 64,
                seq: index,
                acked_below: index.saturating_sub(1),
                floor: Some(0),
            }),
        },
    }
}

fn wal(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (mut wal, _) = Wal::open(dir.path()).expect("open a fresh WAL");
    let mut next = 1u64;
    let mut group = c.benchmark_group("wal");
    for batch in [1u64, 64] {
        group.throughput(Throughput::Elements(batch));
        group.bench_function(format!("append {batch} entries (no fsync)"), |b| {
            b.iter_batched(
                || {
                    let records: Vec<WalRecord> = (0..batch).map(|i| WalRecord::Entry(put(next + i, i))).collect();
                    next += batch;
                    records
                },
                |records| wal.append(black_box(&records)).expect("append"),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("append {batch} entries and fsync"), |b| {
            b.iter_batched(
                || {
                    let records: Vec<WalRecord> = (0..batch).map(|i| WalRecord::Entry(put(next + i, i))).collect();
                    next += batch;
                    records
                },
                |records| {
                    wal.append(black_box(&records)).expect("append");
                    wal.sync().expect("fsync");
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn apply(c: &mut Criterion) {
    let stored = StoredState {
        applied_index: 0,
        applied_term: 0,
        data: Default::default(),
        sessions: Default::default(),
    };
    let mut state = StateMachine::from_stored(stored).expect("empty state");
    let mut index = 0u64;
    let mut group = c.benchmark_group("state machine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("apply a put with a session (10k keys)", |b| {
        b.iter_batched(
            || {
                index += 1;
                put(index, index % 10_000)
            },
            |entry| black_box(state.apply(&entry)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, wal, apply);
criterion_main!(benches);
